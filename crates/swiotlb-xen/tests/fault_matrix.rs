//! The fault-injection matrix on the simulated Xen: every hypercall of the facade's pool
//! initialisation, of the coherent allocations' create and destroy contiguous region, of
//! grant-map recording and of foreign cache maintenance fails, at every step, with each
//! plausible errno (and Xen's partial results: partial exchanges, failing multicall entries,
//! grant statuses). After each case:
//!
//! - the simulator's invariants hold (P2M, M2P, page tables and frame ownership agree) and
//!   there is no TLB or cache violation;
//! - no machine frame is lost or leaked: the machine's free frames and dom0's local P2M
//!   entries are what they were, the page allocator has every page back, the pool every
//!   slot, the foreign table exactly the live grant mappings;
//! - an error names what failed: the hypercall (by Xen's name) and the injected errno;
//! - the faults that damage a region (a page Xen refuses to map in the batch and in the
//!   retry, [`Fault::MapRefused`]; an exchange that loses frames part-way,
//!   [`Fault::ExchangeLosesFrames`]) end in a "region damaged" error that counts every
//!   stranded page and lists the first, the block is quarantined (never given back to the
//!   page allocator, the next allocation does not touch it and does not fault), and the
//!   only frames missing are the stranded pages' (those Xen took are free again).
//!
//! Each test prints its matrix size (`cargo test -- --nocapture`).

mod common;

use common::grants::GrantMapper;
use common::{Arm, PAGE, Pv, SEGMENT, check, pattern, pool_used};
use std::error::Error as StdError;
use swiotlb_core::engine::{CoherentFreeError, DmaError};
use swiotlb_core::{
    Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr, Platform, PlatformError, Slot, Stranded,
};
use swiotlb_xen::init::{InitError, InitOptions, init, release};
use xen_abi::{
    GNTST_BAD_GNTREF, GNTST_GENERAL_ERROR, GNTST_NO_DEVICE_SPACE, GNTST_PERMISSION_DENIED,
};
use xen_sim::{Counters, Fault, SimOp, Xen};

/// The errnos a hypercall of these paths plausibly returns: EPERM, ENOMEM, EFAULT, EBUSY,
/// EINVAL, ENOSYS.
const ERRNOS: [i32; 6] = [1, 12, 14, 16, 22, 38];
/// The grant statuses a map can plausibly report.
const STATUSES: [i16; 4] = [
    GNTST_GENERAL_ERROR,
    GNTST_BAD_GNTREF,
    GNTST_NO_DEVICE_SPACE,
    GNTST_PERMISSION_DENIED,
];

/// The operations whose failure the matrix injects, when a clean run performs them.
const OPS: [SimOp; 9] = [
    SimOp::MemoryExchange,
    SimOp::MemoryOther,
    SimOp::Multicall,
    SimOp::UpdateVaMapping,
    SimOp::MmuUpdate,
    SimOp::MmuextOp,
    SimOp::GrantMap,
    SimOp::GrantUnmap,
    SimOp::CacheFlush,
];

/// The performances of an operation done `n` times that the matrix fails: all of them up to
/// 48, else the first 16, the last 16 and 16 spread evenly between (the page-by-page
/// `update_va_mapping`s of a 1 MiB pool number 512, and each costs a whole initialisation).
fn steps(n: u64) -> Vec<u64> {
    if n <= 48 {
        return (1..=n).collect();
    }
    let mut v: Vec<u64> = (1..=16).chain(n - 15..=n).collect();
    v.extend((1..=16).map(|i| 16 + i * (n - 32) / 17));
    v.sort_unstable();
    v.dedup();
    v
}

/// Every fault for a sequence whose clean run made `c`: each counted operation failing at
/// each of its performances (see [`steps`]) with each errno; each multicall with its first, second and
/// last entry failing; each exchange completing only part of its extents; each grant map
/// reporting each failure status.
fn faults(c: &Counters, exchange_extents: u64) -> Vec<Fault> {
    let mut v = Vec::new();
    for op in OPS {
        for nth in steps(c.count(op)) {
            for errno in ERRNOS {
                v.push(Fault::FailNth { op, nth, errno });
            }
        }
    }
    for nth_multicall in steps(c.count(SimOp::Multicall)) {
        for entry in [0, 1, 31] {
            v.push(Fault::MulticallEntry {
                nth_multicall,
                entry,
                errno: 22,
            });
        }
    }
    for nth in 1..=c.count(SimOp::MemoryExchange) {
        for done_extents in [
            0,
            1,
            exchange_extents / 2,
            exchange_extents.saturating_sub(1),
        ] {
            v.push(Fault::PartialExchange { nth, done_extents });
        }
    }
    for nth in 1..=c.count(SimOp::GrantMap) {
        for status in STATUSES {
            v.push(Fault::GrantMap { nth, status });
        }
    }
    v.extend(damaging_faults(c, exchange_extents));
    v
}

/// The faults that leave a region damaged: each mapping `update_va_mapping` refused for good
/// (about half of the clean run's `update_va_mapping`s map a page, the others unmap), and
/// each exchange losing the frames it stole after the first 0, 1, half or all but one.
fn damaging_faults(c: &Counters, exchange_extents: u64) -> Vec<Fault> {
    let mut v = Vec::new();
    for nth in steps(c.count(SimOp::UpdateVaMapping) / 2) {
        v.push(Fault::MapRefused { nth, errno: 14 });
    }
    for nth in 1..=c.count(SimOp::MemoryExchange) {
        for kept in [
            0,
            1,
            exchange_extents / 2,
            exchange_extents.saturating_sub(1),
        ] {
            v.push(Fault::ExchangeLosesFrames { nth, kept });
        }
    }
    v
}

/// Pages of `[phys, phys + 4 KiB << order)` without a translation, and the stranded pages
/// an error reports: every one counted, the first listed, all inside the region and without
/// a translation.
#[track_caller]
fn assert_reports_every_stranded_page<P: Platform>(
    platform: &P,
    phys: PhysAddr,
    order: u32,
    stranded: &Stranded,
    fault: &Fault,
) {
    let first = phys.frame().as_u64();
    let untranslated: Vec<u64> = (first..first + (1 << order))
        .filter(|&p| platform.pfn_to_bfn(swiotlb_core::Pfn::new(p)).is_none())
        .collect();
    assert_eq!(
        stranded.count(),
        untranslated.len() as u64,
        "{fault:?}: {stranded}"
    );
    let listed: Vec<u64> = stranded.listed().map(|f| f.pfn.as_u64()).collect();
    assert_eq!(
        listed.len() as u64,
        stranded
            .count()
            .min(swiotlb_core::hooks::STRANDED_LISTED as u64),
        "{fault:?}"
    );
    assert_eq!(
        listed,
        untranslated[..listed.len()],
        "{fault:?}: listed in order"
    );
    assert!(stranded.flushed(), "{fault:?}: the TLB must be flushed");
}

/// The errno a fault injects, if it names one.
fn errno_of(f: &Fault) -> Option<i32> {
    match *f {
        Fault::FailNth { errno, .. } | Fault::MulticallEntry { errno, .. } => Some(errno),
        Fault::MapRefused { errno, .. } => Some(errno),
        Fault::PartialExchange { .. } | Fault::ExchangeLosesFrames { .. } => Some(12),
        Fault::GrantMap { .. } => None,
    }
}

/// The first `PlatformError::Hypercall` in an error's source chain, as (op, errno).
fn hypercall_in(e: &(dyn StdError + 'static)) -> Option<(&'static str, i32)> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<PlatformError>() {
            Some(PlatformError::Hypercall { op, errno }) => return Some((op, *errno)),
            Some(PlatformError::RegionDamaged { op, errno, .. }) => {
                return Some((op.name(), *errno));
            }
            _ => {}
        }
        cur = err.source();
    }
    None
}

/// Asserts that an error names a hypercall and the injected errno, in its values and in
/// its message.
#[track_caller]
fn assert_names_failure(e: &(dyn StdError + 'static), fault: &Fault) {
    let (op, errno) =
        hypercall_in(e).unwrap_or_else(|| panic!("{fault:?}: {e:?} names no hypercall"));
    assert!(!op.is_empty());
    if let Some(want) = errno_of(fault) {
        assert_eq!(errno, want, "{fault:?}: {e}");
    }
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    // The errno is printed with its name, as `ENOMEM (12)`.
    assert!(
        msg.contains(op) && msg.contains(&format!("({errno})")),
        "{fault:?}: {msg}"
    );
}

/// Counts of a matrix: cases, and how many ended in success or in an error.
#[derive(Debug, Default)]
struct Tally {
    cases: usize,
    ok: usize,
    err: usize,
    /// Of the errors, those that left a region damaged (and quarantined).
    damaged: usize,
    /// Cases whose fault never fired (the run took another path): not counted as tested.
    unreached: usize,
}

impl Tally {
    fn report(&self, what: &str) {
        eprintln!(
            "fault matrix, {what}: {} cases ({} succeeded after the fault, {} failed cleanly \
             of which {} left a region damaged and quarantined, {} not reached)",
            self.cases, self.ok, self.err, self.damaged, self.unreached
        );
        assert!(self.cases > 0, "{what}: {self:?}");
        assert!(
            self.unreached * 10 <= self.cases,
            "{what}: too many faults never fired: {self:?}"
        );
    }
}

/// The frame accounting of a machine: free frames, and (x86 PV) dom0's local P2M entries.
fn frames(xen: &Xen, pv: Option<&Pv>) -> (u64, u64) {
    (xen.free_frames(), pv.map_or(0, Pv::local_entries))
}

const POOL_BYTES: usize = 1 << 20;

/// One pool initialisation on a fresh x86 PV machine (the path depends on which frames are
/// free, so every case starts from the same state), with `fault` injected: checks the
/// machine afterwards, releases what a successful initialisation exchanged, and returns
/// whether the fault fired, the hypercall counters of the initialisation alone, and its
/// outcome.
fn pool_init_case(fault: Option<Fault>) -> (bool, Counters, Result<(), InitError>) {
    let pv = Pv::new();
    let pages = (POOL_BYTES as u64) / PAGE;
    let pool = pv.guest.alloc_aligned(pages, pages);
    let before = frames(&pv.xen, Some(&pv));
    let storage: Box<[Slot]> = (0..POOL_BYTES / 2048).map(|_| Slot::new()).collect();
    pv.xen.reset_counters();
    if let Some(f) = fault {
        pv.xen.inject(f);
    }
    // SAFETY: the region is fresh dom0 memory given to the pool alone.
    let r = unsafe {
        init(
            common::sim::pv_platform(&pv.xen, &pv.guest),
            pv.guest.memory(),
            pool,
            POOL_BYTES,
            storage,
            swiotlb_core::engine::NoPageAllocator,
            InitOptions::default(),
        )
    };
    let fired = pv.xen.pending_faults().is_empty();
    let counters = pv.xen.counters();
    pv.xen.clear_faults();
    pv.xen.check_invariants().expect("simulator invariants");
    assert_eq!(pv.xen.tlb_violations(), [], "{fault:?}");
    let r = match r {
        Ok((engine, report)) => {
            assert!(
                report.bytes >= InitOptions::default().min_bytes as _,
                "{report:?}"
            );
            assert!(engine.pool_bus_top().unwrap().as_u64() < 1 << 32);
            engine.pool().unwrap().check_invariants().unwrap();
            let (platform, _, _) = engine.into_parts();
            // SAFETY: the engine is gone; the pool's memory is no longer used.
            unsafe { release(&platform, &report) }.expect("release");
            Ok(())
        }
        Err(e) => {
            if let InitError::GiveBack { phys, order, .. } = e {
                // Left exchanged, as documented: the caller gives it back.
                let p = common::sim::pv_platform(&pv.xen, &pv.guest);
                // SAFETY: the chunk is the failed initialisation's, unused.
                unsafe { p.destroy_contiguous_region(phys, order) }.expect("give back");
            }
            Err(e)
        }
    };
    // No frame lost or duplicated beyond the stranded pages the error reports: those
    // without a frame of dom0's any more, and those whose frame Xen took (free again).
    let stranded = match &r {
        Err(InitError::Damaged {
            phys,
            order,
            source,
        }) => {
            let s = *source.damage().expect("a damaged chunk names its damage");
            let p = common::sim::pv_platform(&pv.xen, &pv.guest);
            let f = fault.expect("damage needs a fault");
            assert_reports_every_stranded_page(&p, *phys, *order, &s, &f);
            // The damaged chunk lies in the pool region, which is otherwise as before.
            assert!(*phys >= pool && phys.as_u64() < pool.as_u64() + POOL_BYTES as u64);
            s.count()
        }
        _ => 0,
    };
    let lost = pv.xen.lost_frames().len() as u64;
    assert_eq!(
        frames(&pv.xen, Some(&pv)),
        (before.0 + lost, before.1 - stranded),
        "{fault:?}: a frame was lost"
    );
    (fired, counters, r)
}

/// Every hypercall of the pool initialisation (x86 PV, a 1 MiB pool, its chunks made
/// contiguous at rising address limits) fails at every step: the initialisation either
/// succeeds (retrying at a higher address limit) and releases everything afterwards, or
/// fails with nothing exchanged left behind and an error naming the hypercall and errno.
#[test]
fn pool_init_fault_matrix_x86_pv() {
    let (_, clean, r) = pool_init_case(None);
    r.expect("clean init");
    assert!(clean.count(SimOp::MemoryExchange) > 0, "{clean:?}");
    let mut t = Tally::default();
    for fault in faults(&clean, 64) {
        t.cases += 1;
        let (fired, _, r) = pool_init_case(Some(fault));
        if !fired {
            t.unreached += 1;
        }
        match r {
            Ok(()) => t.ok += 1,
            Err(e) => {
                t.err += 1;
                let damaging = matches!(
                    fault,
                    Fault::MapRefused { .. } | Fault::ExchangeLosesFrames { .. }
                );
                if let InitError::Damaged { .. } = e {
                    assert!(damaging, "{fault:?}: {e:?}");
                    t.damaged += 1;
                } else {
                    assert!(
                        matches!(e, InitError::Exhausted { .. } | InitError::GiveBack { .. }),
                        "{fault:?}: {e:?}"
                    );
                    // A damaging fault that fired is never reported as an ordinary failure.
                    assert!(!damaging || !fired, "{fault:?}: {e:?}");
                }
                assert_names_failure(&e, &fault);
            }
        }
    }
    assert!(t.damaged > 0, "no damage reached: {t:?}");
    t.report("pool init (x86 PV, 1 MiB)");
}

/// The same initialisation with two faults at once (the fault and the retry that follows
/// it both fail), so that the error paths run: a clean error, nothing left exchanged.
#[test]
fn pool_init_double_fault_matrix_x86_pv() {
    let pv = Pv::new();
    let pool = pv.guest.alloc_aligned(256, 256);
    let before = frames(&pv.xen, Some(&pv));
    let mut t = Tally::default();
    for op in [SimOp::MemoryExchange, SimOp::Multicall] {
        for errno in ERRNOS {
            // Every performance of the op fails: the initialisation must give up.
            t.cases += 1;
            pv.xen.clear_faults();
            for nth in 1..=1000 {
                pv.xen.inject(Fault::FailNth { op, nth, errno });
            }
            let storage: Box<[Slot]> = (0..POOL_BYTES / 2048).map(|_| Slot::new()).collect();
            // SAFETY: as in the single-fault matrix.
            let r = unsafe {
                init(
                    common::sim::pv_platform(&pv.xen, &pv.guest),
                    pv.guest.memory(),
                    pool,
                    POOL_BYTES,
                    storage,
                    swiotlb_core::engine::NoPageAllocator,
                    InitOptions::default(),
                )
            };
            pv.xen.clear_faults();
            pv.xen.check_invariants().expect("simulator invariants");
            match r {
                Ok((engine, report)) => {
                    t.ok += 1;
                    let (platform, _, _) = engine.into_parts();
                    // SAFETY: the engine is gone.
                    unsafe { release(&platform, &report) }.expect("release");
                }
                Err(e) => {
                    t.err += 1;
                    let fault = Fault::FailNth { op, nth: 1, errno };
                    assert!(
                        matches!(e, InitError::Exhausted { .. }),
                        "{op:?} {errno}: {e:?}"
                    );
                    assert_names_failure(&e, &fault);
                }
            }
            assert_eq!(frames(&pv.xen, Some(&pv)), before, "{op:?} {errno}: frames");
        }
    }
    t.report("pool init, every exchange or multicall failing (x86 PV)");
    assert_eq!(
        t.err, t.cases,
        "an initialisation succeeded without hypercalls"
    );
}

/// Coherent allocations that need an exchange (x86 PV, a 32-bit coherent mask, 16 KiB on
/// dom0's scrambled pages): every hypercall of `create_contiguous_region` fails at every
/// step, then every hypercall of `destroy_contiguous_region` at the free. Each case runs on
/// a fresh machine, so that each allocation really exchanges.
#[test]
fn coherent_create_and_destroy_fault_matrix_x86_pv() {
    let dev = Device::new(DmaMask::FULL).with_coherent_mask(DmaMask::BITS_32);
    let size = 16 * 1024;

    // The clean create and destroy, to count their hypercalls.
    let (create, destroy) = {
        let pv = Pv::new();
        let engine = pv.engine(SEGMENT * 4);
        pv.xen.reset_counters();
        let a = engine.alloc_coherent(&dev, size).expect("clean alloc");
        assert!(a.is_exchanged(), "the test needs an exchanging allocation");
        let create = pv.xen.counters();
        pv.xen.reset_counters();
        // SAFETY: nothing uses the allocation.
        unsafe { engine.free_coherent(&dev, a) }.expect("clean free");
        (create, pv.xen.counters())
    };

    let mut t = Tally::default();
    for fault in faults(&create, 4) {
        t.cases += 1;
        let pv = Pv::new();
        let engine = pv.engine(SEGMENT * 4);
        let before = frames(&pv.xen, Some(&pv));
        pv.xen.inject(fault);
        let r = engine.alloc_coherent(&dev, size);
        if !pv.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        pv.xen.clear_faults();
        check(&pv.xen, &engine, &[]);
        let mut stranded = 0;
        match r {
            Ok(a) => {
                t.ok += 1;
                // SAFETY: nothing uses the allocation.
                unsafe { engine.free_coherent(&dev, a) }.expect("free");
            }
            Err(DmaError::CoherentDamaged {
                phys,
                order,
                source,
            }) => {
                t.err += 1;
                t.damaged += 1;
                let e = DmaError::CoherentDamaged {
                    phys,
                    order,
                    source,
                };
                assert_names_failure(&e, &fault);
                let s = source.damage().expect("damage");
                assert_reports_every_stranded_page(engine.platform(), phys, order, s, &fault);
                stranded = s.count();
                assert_damaged_block_is_quarantined(&engine, &dev, phys, order, &fault);
            }
            Err(e) => {
                t.err += 1;
                assert!(
                    matches!(e, DmaError::CoherentContiguous { .. }),
                    "{fault:?}: {e:?}"
                );
                assert_names_failure(&e, &fault);
            }
        }
        assert_eq!(
            engine.pages().in_use(),
            engine.pages().quarantined_pages(),
            "{fault:?}: pages leaked"
        );
        let lost = pv.xen.lost_frames().len() as u64;
        assert_eq!(
            frames(&pv.xen, Some(&pv)),
            (before.0 + lost, before.1 - stranded),
            "{fault:?}: a frame was lost"
        );
    }
    assert!(t.damaged > 0, "no damage reached: {t:?}");
    t.report("coherent create_contiguous_region (x86 PV, order 2)");

    let mut t = Tally::default();
    for fault in faults(&destroy, 4) {
        t.cases += 1;
        let pv = Pv::new();
        let engine = pv.engine(SEGMENT * 4);
        let before = frames(&pv.xen, Some(&pv));
        let a = engine.alloc_coherent(&dev, size).expect("alloc");
        pv.xen.inject(fault);
        // SAFETY: nothing uses the allocation.
        let r = unsafe { engine.free_coherent(&dev, a) };
        if !pv.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        pv.xen.clear_faults();
        check(&pv.xen, &engine, &[]);
        let mut stranded = 0;
        match r {
            Ok(()) => t.ok += 1,
            Err(CoherentFreeError {
                alloc,
                source: source @ DmaError::CoherentDamaged { .. },
            }) => {
                t.err += 1;
                t.damaged += 1;
                assert_names_failure(&source, &fault);
                let DmaError::CoherentDamaged {
                    phys,
                    order,
                    source: ref p,
                } = source
                else {
                    unreachable!()
                };
                let s = p.damage().expect("damage");
                assert_reports_every_stranded_page(engine.platform(), phys, order, s, &fault);
                stranded = s.count();
                assert!(alloc.is_quarantined(), "{fault:?}");
                // Freeing the record again touches nothing.
                // SAFETY: as above.
                let again = unsafe { engine.free_coherent(&dev, alloc) };
                assert!(
                    matches!(
                        again,
                        Err(CoherentFreeError {
                            source: DmaError::CoherentNotAllocated { .. },
                            ..
                        })
                    ),
                    "{fault:?}: {again:?}"
                );
                assert_damaged_block_is_quarantined(&engine, &dev, phys, order, &fault);
            }
            Err(CoherentFreeError { alloc, source }) => {
                t.err += 1;
                assert!(
                    matches!(source, DmaError::CoherentDestroy { .. }),
                    "{fault:?}: {source:?}"
                );
                assert_names_failure(&source, &fault);
                // The allocation came back intact: freeing it again works.
                assert_eq!(engine.pages().in_use(), 4);
                // SAFETY: as above.
                unsafe { engine.free_coherent(&dev, alloc) }.expect("second free");
            }
        }
        assert_eq!(
            engine.pages().in_use(),
            engine.pages().quarantined_pages(),
            "{fault:?}: pages leaked"
        );
        let lost = pv.xen.lost_frames().len() as u64;
        assert_eq!(
            frames(&pv.xen, Some(&pv)),
            (before.0 + lost, before.1 - stranded),
            "{fault:?}: a frame was lost"
        );
    }
    assert!(t.damaged > 0, "no damage reached: {t:?}");
    t.report("coherent destroy_contiguous_region (x86 PV, order 2)");
}

/// After a coherent block was reported damaged: the page allocator quarantined it and never
/// saw it freed, and the next allocations (as many as the allocator has room for) neither
/// get it nor fault.
#[track_caller]
fn assert_damaged_block_is_quarantined(
    engine: &common::PvEngine<'_>,
    dev: &Device,
    phys: PhysAddr,
    order: u32,
    fault: &Fault,
) {
    let pages = engine.pages();
    assert_eq!(pages.quarantined(), [(phys, order)], "{fault:?}");
    assert!(
        !pages.freed().contains(&(phys, order)),
        "{fault:?}: the damaged block was freed"
    );
    let mut allocs = Vec::new();
    while let Ok(a) = engine.alloc_coherent(dev, 16 * 1024) {
        assert_ne!(a.phys(), phys, "{fault:?}: the damaged block was reused");
        allocs.push(a);
    }
    assert!(
        !allocs.is_empty(),
        "{fault:?}: no allocation after the damage"
    );
    for a in allocs {
        // SAFETY: nothing uses the allocation.
        unsafe { engine.free_coherent(dev, a) }.expect("free after the damage");
    }
}

/// Grant-map recording (arm64): a batch of 4 grants, every map element and every unmap
/// element failing with each status or errno. A failed batch leaves nothing mapped and
/// nothing in the foreign table; a failed unmap keeps exactly the entries still mapped.
#[test]
fn grant_map_recording_fault_matrix_arm64() {
    let arm = Arm::new();
    let domid = arm.xen.domu().id();
    let refs = arm.xen.domu_grant(4);
    let before = frames(&arm.xen, None);

    arm.xen.reset_counters();
    let grants = arm.grants(4);
    let mapped = grants.map(domid, &refs).expect("clean map");
    let map_counts = arm.xen.counters();
    arm.xen.reset_counters();
    grants.unmap(&mapped).expect("clean unmap");
    let unmap_counts = arm.xen.counters();
    assert!(arm.table.is_empty());

    let mut t = Tally::default();
    for fault in faults(&map_counts, 0) {
        t.cases += 1;
        let grants = arm.grants(4);
        arm.xen.inject(fault);
        let r = grants.map(domid, &refs);
        if !arm.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        arm.xen.clear_faults();
        arm.xen.check_invariants().expect("simulator invariants");
        match r {
            Ok(m) => {
                t.ok += 1;
                assert_eq!(arm.table.len(), 4);
                grants.unmap(&m).expect("unmap");
            }
            Err(e) => {
                t.err += 1;
                assert!(e.0.contains("GNTTABOP_map_grant_ref"), "{fault:?}: {e}");
                assert_eq!(grants.in_use(), 0, "{fault:?}: window pages kept");
            }
        }
        assert!(
            arm.table.is_empty(),
            "{fault:?}: {:?}",
            arm.table.read().entries()
        );
        assert_eq!(frames(&arm.xen, None), before, "{fault:?}: frames");
    }
    t.report("grant map + record (arm64, 4 grants)");

    let mut t = Tally::default();
    for fault in faults(&unmap_counts, 0) {
        t.cases += 1;
        let grants = arm.grants(4);
        let m = grants.map(domid, &refs).expect("map");
        arm.xen.inject(fault);
        let r = grants.unmap(&m);
        if !arm.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        arm.xen.clear_faults();
        arm.xen.check_invariants().expect("simulator invariants");
        match r {
            Ok(()) => t.ok += 1,
            Err(e) => {
                t.err += 1;
                assert!(e.0.contains("GNTTABOP_unmap_grant_ref"), "{fault:?}: {e}");
                // Exactly the grants still mapped stay in the table; unmap them.
                let still: Vec<_> = m
                    .iter()
                    .filter(|g| arm.table.lookup(g.phys.frame()).is_some())
                    .copied()
                    .collect();
                assert!(
                    !still.is_empty(),
                    "{fault:?}: an unmap failed, yet nothing is kept"
                );
                for g in &still {
                    assert_eq!(arm.table.lookup(g.phys.frame()), Some(g.machine.frame()));
                }
                grants.unmap(&still).expect("unmapping the rest");
            }
        }
        assert!(arm.table.is_empty(), "{fault:?}");
        assert_eq!(frames(&arm.xen, None), before, "{fault:?}: frames");
    }
    t.report("grant unmap + clear (arm64, 4 grants)");
}

/// Cache maintenance of foreign pages (arm64, a non-coherent device, `GNTTABOP_cache_flush`
/// available): every flush of a map and of an unmap fails with each errno. A failed map
/// leaves nothing mapped; a failed unmap still completes the unmap; the error names
/// `GNTTABOP_cache_flush` and the errno, and the failures are counted.
#[test]
fn foreign_cache_maintenance_fault_matrix_arm64() {
    let arm = Arm::new();
    let engine = arm.engine(SEGMENT * 4);
    let sdev = arm.xen.device(DmaMask::FULL, false);
    let dev = sdev.core_device();
    let domid = arm.xen.domu().id();
    let refs = arm.xen.domu_grant(2);
    let grants = arm.grants(2);
    let m = grants.map(domid, &refs).expect("map grants");
    let domu = arm.xen.domu_guest();
    let none = DmaAttrs::empty();

    // One bidirectional mapping of both pages (two frames, so two flushes each way).
    let g = m[0];
    let len = 4096;
    let roundtrip = |fault_at_map: Option<Fault>, fault_at_unmap: Option<Fault>| {
        let data = pattern(7, len);
        domu.write_page(g.gref, 0, &data).unwrap();
        if let Some(f) = fault_at_map {
            arm.xen.inject(f);
        }
        // SAFETY: the foreign page stays mapped until after the unmap.
        let r = unsafe { engine.map_page(&dev, g.phys, len, DmaDirection::Bidirectional, none) };
        arm.xen.clear_faults();
        let bus = match r {
            Ok(bus) => bus,
            Err(e) => return Err(("map", e)),
        };
        common::same(&sdev.read(bus, len).unwrap(), &data, "device read");
        let back = pattern(8, len);
        sdev.write(bus, &back).unwrap();
        if let Some(f) = fault_at_unmap {
            arm.xen.inject(f);
        }
        let r = engine.unmap_page(&dev, bus, len, DmaDirection::Bidirectional, none);
        arm.xen.clear_faults();
        r.map_err(|e| ("unmap", e))
    };
    arm.xen.reset_counters();
    roundtrip(None, None).expect("clean round trip");
    let c = arm.xen.counters();
    let flushes = c.count(SimOp::CacheFlush);
    assert!(flushes >= 2, "{c:?}");

    let mut t = Tally::default();
    for nth in 1..=flushes {
        for errno in ERRNOS {
            for at_map in [true, false] {
                t.cases += 1;
                let fault = Fault::FailNth {
                    op: SimOp::CacheFlush,
                    nth,
                    errno,
                };
                let failures = engine.stats().cache_failures;
                let r = if at_map {
                    roundtrip(Some(fault), None)
                } else {
                    roundtrip(None, Some(fault))
                };
                assert_eq!(pool_used(&engine), 0, "{fault:?}: slots leaked");
                arm.xen.clear_cache_violations();
                arm.xen.check_invariants().unwrap();
                match r {
                    Ok(()) => t.ok += 1,
                    Err((_, e)) => {
                        t.err += 1;
                        assert!(
                            matches!(e, DmaError::CacheMaintenance { .. }),
                            "{fault:?}: {e:?}"
                        );
                        assert_names_failure(&e, &fault);
                        let (op, _) = hypercall_in(&e).unwrap();
                        assert!(op.contains("cache_flush"), "{fault:?}: {op}");
                        assert_eq!(engine.stats().cache_failures, failures + 1);
                    }
                }
            }
        }
    }
    t.report("foreign cache maintenance (arm64, map and unmap)");
    grants.unmap(&m).unwrap();
    assert!(arm.table.is_empty());
}

/// The arm64 probe at initialisation (`xen_version` for the features, a zeroed
/// `GNTTABOP_cache_flush` to see whether Xen has it): `xen_version` failing with each errno
/// is an error naming the errno; the cache-flush probe is never an error: `ENOSYS` means "no
/// cache flush" (foreign pages for non-coherent devices are then bounced), any other errno
/// means the operation exists (Linux's rule).
#[test]
fn arm64_probe_fault_matrix() {
    use swiotlb_xen_arm64::{Arm64Config, Arm64InitError, DomainMapping, ProbeOptions};
    let arm = Arm::new();
    arm.xen.reset_counters();
    let clean = Arm64Config::probe(&arm.dom0, ProbeOptions::initial_domain()).unwrap();
    assert!(clean.cache_flush && clean.mapping == DomainMapping::Direct);
    let c = arm.xen.counters();
    assert_eq!(
        (c.count(SimOp::XenVersion), c.count(SimOp::CacheFlush)),
        (1, 1),
        "{c:?}"
    );
    let mut t = Tally::default();
    for op in [SimOp::XenVersion, SimOp::CacheFlush] {
        for errno in ERRNOS {
            t.cases += 1;
            arm.xen.inject(Fault::FailNth { op, nth: 1, errno });
            let r = Arm64Config::probe(&arm.dom0, ProbeOptions::initial_domain());
            if !arm.xen.pending_faults().is_empty() {
                t.unreached += 1;
            }
            arm.xen.clear_faults();
            arm.xen.check_invariants().unwrap();
            match (op, r) {
                (SimOp::XenVersion, Err(e @ Arm64InitError::Features(_))) => {
                    t.err += 1;
                    assert!(e.to_string().contains(&errno.to_string()), "{errno}: {e}");
                }
                (SimOp::CacheFlush, Ok(cfg)) => {
                    t.ok += 1;
                    // As Linux's xen_mm_init: only ENOSYS means "not there"; any other
                    // answer to the zeroed request means the operation exists.
                    assert_eq!(cfg.cache_flush, errno != 38, "{errno}");
                    assert_eq!(cfg.mapping, DomainMapping::Direct);
                }
                (op, r) => panic!("{op:?} {errno}: {r:?}"),
            }
        }
    }
    t.report("arm64 probe (xen_version, GNTTABOP_cache_flush)");
}
