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
use common::sim::SimGrowth;
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
    // The first `mmu_update` lists preempted at their start and after one request, continued
    // by Xen or returned with -ERESTART (their number is at most the traps').
    if c.count(SimOp::MmuUpdate) > 0 {
        for nth in 1..=c.traps().min(4) {
            for after in [0, 1] {
                for restart in [false, true] {
                    v.push(Fault::MmuUpdatePreempted {
                        nth,
                        after,
                        restart,
                    });
                }
            }
        }
    }
    v.extend(damaging_faults(c, exchange_extents));
    v
}

/// The page-table writes of a clean run that map a page: about half of its
/// `update_va_mapping`s and `mmu_update` requests (the others unmap).
fn mappings(c: &Counters) -> u64 {
    (c.count(SimOp::UpdateVaMapping) + c.count(SimOp::MmuUpdate)) / 2
}

/// The faults that leave a region damaged: each mapping page-table write refused for good
/// (see [`mappings`]), and
/// each exchange losing the frames it stole after the first 0, 1, half or all but one.
fn damaging_faults(c: &Counters, exchange_extents: u64) -> Vec<Fault> {
    let mut v = Vec::new();
    for nth in steps(mappings(c)) {
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
    fault: &dyn std::fmt::Debug,
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
        Fault::GrantMap { .. } | Fault::MmuUpdatePreempted { .. } => None,
    }
}

/// The first `PlatformError::Hypercall` in an error's source chain, as (op, errno).
fn hypercall_in(e: &(dyn StdError + 'static)) -> Option<(&'static str, i32)> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<PlatformError>() {
            Some(
                PlatformError::Hypercall { op, errno }
                | PlatformError::OrderRefused { op, errno, .. },
            ) => return Some((op, *errno)),
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

/// What a pool initialisation did with its chunks, as seen by the platform it called: the
/// chunks made contiguous and not given back, the chunks left damaged, and the give-backs
/// (`destroy_contiguous_region`) attempted and failed. The oracle for "after an error every
/// chunk was given back except the one the error names".
#[derive(Debug, Default)]
struct LedgerState {
    outstanding: std::collections::BTreeSet<(u64, u32)>,
    damaged: std::collections::BTreeSet<(u64, u32)>,
    give_backs: usize,
    give_back_failures: usize,
    give_backs_damaged: usize,
}

/// The x86 PV platform of the simulator, keeping a [`LedgerState`].
struct Ledger<'a> {
    inner: common::SimPv<'a>,
    state: std::sync::Mutex<LedgerState>,
}

impl Ledger<'_> {
    fn state(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn created(&self, phys: PhysAddr, order: u32, r: &Result<impl Sized, PlatformError>) {
        let mut st = self.state();
        match r {
            Ok(_) => assert!(st.outstanding.insert((phys.as_u64(), order)), "made twice"),
            Err(e) if e.damage().is_some() => {
                st.damaged.insert((phys.as_u64(), order));
            }
            Err(_) => {}
        }
    }
}

// SAFETY: every answer and every change is the x86 PV platform's; only the bookkeeping is
// added.
unsafe impl Platform for Ledger<'_> {
    fn pfn_to_bfn(&self, pfn: swiotlb_core::Pfn) -> Option<swiotlb_core::Bfn> {
        self.inner.pfn_to_bfn(pfn)
    }
    fn bfn_to_local_pfn(&self, bfn: swiotlb_core::Bfn) -> Option<swiotlb_core::Pfn> {
        self.inner.bfn_to_local_pfn(bfn)
    }
    fn contiguous_run(
        &self,
        pfn: swiotlb_core::Pfn,
        max_frames: u64,
    ) -> Option<(swiotlb_core::Bfn, u64)> {
        self.inner.contiguous_run(pfn, max_frames)
    }
    fn local_run(
        &self,
        bfn: swiotlb_core::Bfn,
        max_frames: u64,
    ) -> (Option<swiotlb_core::Pfn>, u64) {
        self.inner.local_run(bfn, max_frames)
    }
    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<swiotlb_core::BusAddr, PlatformError> {
        // SAFETY: the caller's promise, passed on.
        let r = unsafe {
            self.inner
                .create_contiguous_region(phys, order, address_bits)
        };
        self.created(phys, order, &r);
        r
    }
    unsafe fn create_contiguous_region_rising(
        &self,
        phys: PhysAddr,
        order: u32,
        min_bits: u32,
        max_bits: u32,
    ) -> Result<(swiotlb_core::BusAddr, u32), PlatformError> {
        // SAFETY: the caller's promise, passed on.
        let r = unsafe {
            self.inner
                .create_contiguous_region_rising(phys, order, min_bits, max_bits)
        };
        self.created(phys, order, &r);
        r
    }
    unsafe fn destroy_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
    ) -> Result<(), PlatformError> {
        // SAFETY: the caller's promise, passed on.
        let r = unsafe { self.inner.destroy_contiguous_region(phys, order) };
        let mut st = self.state();
        let key = (phys.as_u64(), order);
        assert!(
            st.outstanding.contains(&key),
            "gave back {key:x?}, never made"
        );
        st.give_backs += 1;
        match &r {
            Ok(()) => {
                st.outstanding.remove(&key);
            }
            Err(e) => {
                st.give_back_failures += 1;
                if e.damage().is_some() {
                    st.give_backs_damaged += 1;
                    st.outstanding.remove(&key);
                    st.damaged.insert(key);
                }
            }
        }
        r
    }
}

/// What [`pool_init_run`] saw.
struct InitRun {
    /// Whether every injected fault fired.
    fired: bool,
    /// How many of the injected faults never fired.
    unfired: usize,
    /// The hypercall counters of the initialisation alone.
    counters: Counters,
    /// Give-backs the initialisation attempted, and how many failed (and were damaged).
    give_backs: usize,
    give_back_failures: usize,
    give_backs_damaged: usize,
    result: Result<(), InitError>,
}

/// One pool initialisation on a fresh x86 PV machine (the path depends on which frames are
/// free, so every case starts from the same state), with `faults` injected at once: checks
/// the machine afterwards, releases what a successful initialisation exchanged (or what an
/// error names as not given back), and returns what happened.
///
/// Checked after every case: the simulator's invariants, no TLB violation, the chunks the
/// platform still holds exchanged or damaged are exactly those the result names (all of a
/// success's exchanged chunks, the one chunk of `GiveBack` or `Damaged`, nothing else), and
/// no frame is lost or duplicated beyond the stranded pages a damage report counts.
fn pool_init_run(faults: &[Fault], bytes: usize, options: InitOptions) -> InitRun {
    let pv = Pv::new();
    let pages = (bytes as u64) / PAGE;
    let pool = pv.guest.alloc_aligned(pages, pages);
    let before = frames(&pv.xen, Some(&pv));
    let storage: Box<[Slot]> = (0..bytes / 2048).map(|_| Slot::new()).collect();
    let ledger = Ledger {
        inner: common::sim::pv_platform(&pv.xen, &pv.guest),
        state: Default::default(),
    };
    pv.xen.reset_counters();
    for &f in faults {
        pv.xen.inject(f);
    }
    // SAFETY: the region is fresh dom0 memory given to the pool alone.
    let r = unsafe {
        init(
            &ledger,
            pv.guest.memory(),
            pool,
            bytes,
            storage,
            swiotlb_core::engine::NoPageAllocator,
            options,
        )
    };
    let unfired = pv.xen.pending_faults().len();
    let fired = unfired == 0;
    let counters = pv.xen.counters();
    pv.xen.clear_faults();
    pv.xen.check_invariants().expect("simulator invariants");
    assert_eq!(pv.xen.tlb_violations(), [], "{faults:?}");
    let (give_backs, give_back_failures, give_backs_damaged) = {
        let st = ledger.state();
        (st.give_backs, st.give_back_failures, st.give_backs_damaged)
    };
    let held = |st: &LedgerState| (st.outstanding.clone(), st.damaged.clone());
    let one =
        |phys: &PhysAddr, order: &u32| std::collections::BTreeSet::from([(phys.as_u64(), *order)]);
    let none = std::collections::BTreeSet::new;
    let r = match r {
        Ok((engine, report)) => {
            assert!(report.bytes >= options.min_bytes, "{report:?}");
            assert!(engine.pool_bus_top().unwrap().as_u64() < 1 << 32);
            engine.pool().unwrap().check_invariants().unwrap();
            let exchanged = report
                .exchanged()
                .map(|c| (c.phys.as_u64(), c.order))
                .collect();
            assert_eq!(
                held(&ledger.state()),
                (exchanged, none()),
                "{faults:?}: the report's chunks are not what the platform holds"
            );
            let (platform, _, _) = engine.into_parts();
            // SAFETY: the engine is gone; the pool's memory is no longer used.
            unsafe { release(&platform, &report) }.expect("release");
            Ok(())
        }
        Err(e) => {
            let (outstanding, damaged) = held(&ledger.state());
            let (named_out, not_given_back, named_damaged) = match &e {
                InitError::GiveBack {
                    phys,
                    order,
                    failed,
                    ..
                } => (Some((phys.as_u64(), *order)), *failed, none()),
                InitError::Damaged {
                    phys,
                    order,
                    not_given_back,
                    ..
                } => (None, *not_given_back, one(phys, order)),
                _ => (None, 0, none()),
            };
            // Every chunk left behind is named or counted: the damaged one exactly, the
            // ones not given back by number (the first of them by name).
            assert_eq!(
                (damaged, outstanding.len() as u32),
                (named_damaged, not_given_back),
                "{faults:?}: {e:?} does not name what the initialisation left behind: \
                 {outstanding:x?} still exchanged"
            );
            assert!(
                named_out.is_none_or(|c| outstanding.contains(&c)),
                "{faults:?}: {e:?}"
            );
            // Left exchanged, as documented: the caller gives them back.
            for (phys, order) in outstanding {
                // SAFETY: the chunk is the failed initialisation's, unused.
                unsafe { ledger.destroy_contiguous_region(PhysAddr::new(phys), order) }
                    .expect("give back");
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
            ..
        }) => {
            let s = *source.damage().expect("a damaged chunk names its damage");
            assert_reports_every_stranded_page(&ledger.inner, *phys, *order, &s, &faults);
            // The damaged chunk lies in the pool region, which is otherwise as before.
            assert!(*phys >= pool && phys.as_u64() < pool.as_u64() + bytes as u64);
            s.count()
        }
        _ => 0,
    };
    let lost = pv.xen.lost_frames().len() as u64;
    assert_eq!(
        frames(&pv.xen, Some(&pv)),
        (before.0 + lost, before.1 - stranded),
        "{faults:?}: a frame was lost"
    );
    InitRun {
        fired,
        unfired,
        counters,
        give_backs,
        give_back_failures,
        give_backs_damaged,
        result: r,
    }
}

/// [`pool_init_run`] of the default 1 MiB pool with at most one fault.
fn pool_init_case(fault: Option<Fault>) -> (bool, Counters, Result<(), InitError>) {
    let run = pool_init_run(fault.as_slice(), POOL_BYTES, InitOptions::default());
    (run.fired, run.counters, run.result)
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
    // A multicall failing as a whole is survived (its list is resubmitted alone), so the
    // page-table op that must give up is `mmu_update` (every request failing).
    for op in [SimOp::MemoryExchange, SimOp::MmuUpdate] {
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
    t.report("pool init, every exchange or mmu_update failing (x86 PV)");
    assert_eq!(
        t.err, t.cases,
        "an initialisation succeeded without hypercalls"
    );
}

/// `k` of the performances `1..=n`: all of them up to `k`, else the first, the last and
/// `k - 2` spread evenly between.
fn spread(n: u64, k: u64) -> Vec<u64> {
    if n <= k {
        return (1..=n).collect();
    }
    let mut v: Vec<u64> = (0..k).map(|i| 1 + i * (n - 1) / (k - 1)).collect();
    v.dedup();
    v
}

/// The second faults of a two-fault case, for a run (with its first fault) that made `c`:
/// each counted operation failing at `k` of its performances (see [`spread`]) with EINVAL
/// (exchanges with ENOMEM too, which moves to the next address limit), each multicall's first and last entry, each exchange completing nothing or
/// half, and the damaging faults at the same steps.
fn sampled_faults(c: &Counters, exchange_extents: u64, k: u64) -> Vec<Fault> {
    let mut v = Vec::new();
    for op in OPS {
        let errnos: &[i32] = if op == SimOp::MemoryExchange {
            &[12, 22]
        } else {
            &[22]
        };
        for nth in spread(c.count(op), k) {
            for &errno in errnos {
                v.push(Fault::FailNth { op, nth, errno });
            }
        }
    }
    for nth_multicall in spread(c.count(SimOp::Multicall), k) {
        for entry in [0, 31] {
            v.push(Fault::MulticallEntry {
                nth_multicall,
                entry,
                errno: 22,
            });
        }
    }
    for nth in spread(c.count(SimOp::MemoryExchange), k) {
        v.push(Fault::PartialExchange {
            nth,
            done_extents: exchange_extents / 2,
        });
        for kept in [0, exchange_extents / 2] {
            v.push(Fault::ExchangeLosesFrames { nth, kept });
        }
    }
    for nth in spread(mappings(c), k) {
        v.push(Fault::MapRefused { nth, errno: 14 });
    }
    v
}

/// Asserts that an error names a hypercall and the errno of one of the injected faults.
#[track_caller]
fn assert_names_one_of(e: &(dyn StdError + 'static), faults: &[Fault]) {
    let (_, errno) =
        hypercall_in(e).unwrap_or_else(|| panic!("{faults:?}: {e:?} names no hypercall"));
    let f = faults
        .iter()
        .find(|f| errno_of(f).is_none_or(|want| want == errno))
        .unwrap_or_else(|| panic!("{faults:?}: {e} names errno {errno}, not injected"));
    assert_names_failure(e, f);
}

/// Counts of a two-fault matrix, beyond [`Tally`]'s.
#[derive(Debug, Default)]
struct GiveBackTally {
    /// Cases in which only one of the two faults fired (the other's step never came: the
    /// first changed the path). Counted as cases, not as two-fault cases.
    one_fired: usize,
    /// Cases in which the initialisation gave chunks back.
    gave_back: usize,
    /// Cases in which a give-back failed and was named by `GiveBack`.
    give_back_failed: usize,
    /// Cases in which a give-back left its chunk damaged, named by `Damaged`.
    give_back_damaged: usize,
}

/// Every pair (a first fault of `firsts`, a second fault from [`sampled_faults`] of the run
/// with the first) in one pool initialisation of `bytes` with `options`; each case checked
/// by [`pool_init_run`], and its error named by one of the two faults.
fn two_fault_matrix(
    bytes: usize,
    options: InitOptions,
    firsts: &[Fault],
    k: u64,
) -> (Tally, GiveBackTally) {
    let mut t = Tally::default();
    let mut g = GiveBackTally::default();
    for &first in firsts {
        let alone = pool_init_run(&[first], bytes, options);
        assert!(alone.fired, "{first:?} never fired");
        let extents = 1 << SEGMENT_ORDER_IN_TEST;
        for second in sampled_faults(&alone.counters, extents, k) {
            if second == first {
                continue;
            }
            let pair = [first, second];
            t.cases += 1;
            let run = pool_init_run(&pair, bytes, options);
            match run.unfired {
                0 => {}
                1 => g.one_fired += 1,
                _ => t.unreached += 1,
            }
            if run.give_backs > 0 {
                g.gave_back += 1;
            }
            let damaging = pair.iter().any(|f| {
                matches!(
                    f,
                    Fault::MapRefused { .. } | Fault::ExchangeLosesFrames { .. }
                )
            });
            match run.result {
                Ok(()) => t.ok += 1,
                Err(e) => {
                    t.err += 1;
                    match e {
                        InitError::Damaged { .. } => {
                            assert!(damaging, "{pair:?}: {e:?}");
                            t.damaged += 1;
                            if run.give_backs_damaged > 0 {
                                g.give_back_damaged += 1;
                            }
                        }
                        InitError::GiveBack { .. } => {
                            assert!(run.give_back_failures > 0, "{pair:?}: {e:?}");
                            g.give_back_failed += 1;
                        }
                        InitError::Exhausted { .. } => {
                            assert_eq!(run.give_back_failures, 0, "{pair:?}: {e:?}");
                        }
                        e => panic!("{pair:?}: {e:?}"),
                    }
                    assert_names_one_of(&e, &pair);
                }
            }
        }
    }
    (t, g)
}

/// The order of the chunks of the give-back matrices (a segment each).
const SEGMENT_ORDER_IN_TEST: u32 = 6;

/// Two independent faults in one pool initialisation (x86 PV, 1 MiB): the first exchange
/// refused (`ENOMEM`: the chunk is split in two) or the first remap multicall entry failing
/// (the retry alone remaps it), then a second fault at a sample of every later step: an
/// exchange fault plus a remap fault, two exchange faults, a refused page after a split,
/// an exchange losing frames after a retry. Each case recovers or fails cleanly, names
/// one of its faults, leaves nothing exchanged that the error does not name, and loses no
/// frame.
#[test]
fn pool_init_two_fault_matrix_x86_pv() {
    two_faults(3);
}

/// [`pool_init_two_fault_matrix_x86_pv`] with 8 steps of each operation instead of 3.
#[test]
#[ignore = "slow: about 40 s in debug; the default matrix samples 3 steps per operation"]
fn pool_init_two_fault_matrix_x86_pv_wide() {
    two_faults(8);
}

fn two_faults(k: u64) {
    let firsts = [
        Fault::FailNth {
            op: SimOp::MemoryExchange,
            nth: 1,
            errno: 12,
        },
        // A request in the middle of the first chunk's zap list (of 128).
        Fault::FailNth {
            op: SimOp::MmuUpdate,
            nth: 100,
            errno: 22,
        },
    ];
    let (t, g) = two_fault_matrix(POOL_BYTES, InitOptions::default(), &firsts, k);
    assert!(t.ok > 0 && t.err > 0 && t.damaged > 0, "{t:?}");
    t.report(&format!(
        "pool init, two faults (x86 PV, 1 MiB, {k} steps per op; both fired in {})",
        t.cases - g.one_fired - t.unreached
    ));
}

/// The give-back paths of the pool initialisation (x86 PV, chunks of one segment): a pool
/// of 1 MiB whose last chunk fails (`EINVAL`), so that the three made before are given
/// back and the result is `Exhausted`; a pool of 2 MiB (at least 1 MiB) whose last chunk
/// fails, so that it is halved and the three chunks past the new end are given back; and
/// in each a second fault at a sample of every step, the give-backs' own exchanges and
/// remaps included. A give-back that fails is named by `GiveBack` (the caller gives the
/// chunk back); one that leaves its chunk damaged is named by `Damaged` (the caller
/// quarantines it); every other chunk is given back.
#[test]
fn pool_init_give_back_fault_matrix_x86_pv() {
    give_back(3);
}

/// [`pool_init_give_back_fault_matrix_x86_pv`] with 8 steps of each operation instead of 3.
#[test]
#[ignore = "slow: about 40 s in debug; the default matrix samples 3 steps per operation"]
fn pool_init_give_back_fault_matrix_x86_pv_wide() {
    give_back(8);
}

fn give_back(k: u64) {
    let options = InitOptions::default().with_max_order(SEGMENT_ORDER_IN_TEST);
    let mut total = Tally::default();
    let mut gtotal = GiveBackTally::default();
    for (bytes, min) in [(POOL_BYTES, POOL_BYTES), (2 * POOL_BYTES, POOL_BYTES)] {
        let options = options.with_min_bytes(min);
        let clean = pool_init_run(&[], bytes, options);
        clean.result.expect("clean init");
        let last = Fault::FailNth {
            op: SimOp::MemoryExchange,
            nth: clean.counters.count(SimOp::MemoryExchange),
            errno: 22,
        };
        let alone = pool_init_run(&[last], bytes, options);
        assert_eq!(alone.give_backs, 3, "{bytes:#x}: three chunks given back");
        assert_eq!(alone.give_back_failures, 0);
        match (bytes == min, &alone.result) {
            (true, Err(InitError::Exhausted { .. })) | (false, Ok(())) => {}
            (_, r) => panic!("{bytes:#x}: {r:?}"),
        }
        let (t, g) = two_fault_matrix(bytes, options, &[last], k);
        total.cases += t.cases;
        total.ok += t.ok;
        total.err += t.err;
        total.damaged += t.damaged;
        total.unreached += t.unreached;
        gtotal.one_fired += g.one_fired;
        gtotal.gave_back += g.gave_back;
        gtotal.give_back_failed += g.give_back_failed;
        gtotal.give_back_damaged += g.give_back_damaged;
    }
    assert!(
        gtotal.gave_back > 0 && gtotal.give_back_failed > 0 && gtotal.give_back_damaged > 0,
        "a give-back path not reached: {gtotal:?}"
    );
    eprintln!(
        "  give-back paths: {} cases gave chunks back, {} named a failed give-back, {} a damaged one",
        gtotal.gave_back, gtotal.give_back_failed, gtotal.give_back_damaged
    );
    total.report(&format!(
        "pool init give-back, two faults (x86 PV, 1 and 2 MiB in segments, {k} steps per op; \
         both fired in {})",
        total.cases - gtotal.one_fired - total.unreached
    ));
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

/// Foreign cache maintenance failing at sync time (arm64, a non-coherent device, a granted
/// page mapped direct, maintained by `GNTTABOP_cache_flush`): every flush of
/// `sync_single_for_cpu` and of `sync_single_for_device` fails with each errno. The sync
/// reports `CacheMaintenance` naming the hypercall and errno, counted as a cache failure
/// and an unmap/sync failure; the mapping stays usable (a clean sync and the unmap work
/// afterwards, the device's data reaches the page). Then a scatter-gather list of the
/// foreign page (direct) and a page above 4 GiB (bounced for a 32-bit device) whose unmap
/// and sync for the CPU fail at the foreign entry's flush: the bounced entry is still
/// copied back and, at the unmap, released (the pool is empty), and the error names entry 0.
#[test]
fn foreign_cache_flush_at_sync_fault_matrix_arm64() {
    use swiotlb_core::engine::SgEntry;
    let arm = Arm::new();
    let engine = arm.engine(SEGMENT * 4);
    let sdev = arm.xen.device(DmaMask::BITS_32, false);
    let dev = sdev.core_device();
    let domid = arm.xen.domu().id();
    let refs = arm.xen.domu_grant(1);
    let grants = arm.grants(1);
    let m = grants.map(domid, &refs).expect("map grants");
    let domu = arm.xen.domu_guest();
    let g = m[0];
    let len = 4096;
    let bi = DmaDirection::Bidirectional;
    let none = DmaAttrs::empty();
    let before = frames(&arm.xen, None);

    domu.write_page(g.gref, 0, &pattern(3, len)).unwrap();
    // SAFETY: the foreign page stays mapped until after every unmap below.
    let bus = unsafe { engine.map_page(&dev, g.phys, len, bi, none) }.expect("map");
    assert!(
        !common::is_bounced(&engine, bus),
        "the test needs a direct mapping"
    );
    let sync = |for_cpu: bool| {
        if for_cpu {
            engine.sync_single_for_cpu(&dev, bus, len, bi)
        } else {
            engine.sync_single_for_device(&dev, bus, len, bi)
        }
    };
    let mut t = Tally::default();
    for for_cpu in [true, false] {
        arm.xen.reset_counters();
        sync(for_cpu).expect("clean sync");
        let flushes = arm.xen.counters().count(SimOp::CacheFlush);
        assert!(flushes >= 1, "a sync of a foreign page must flush");
        for nth in 1..=flushes {
            for errno in ERRNOS {
                t.cases += 1;
                let fault = Fault::FailNth {
                    op: SimOp::CacheFlush,
                    nth,
                    errno,
                };
                let s0 = engine.stats();
                arm.xen.inject(fault);
                let r = sync(for_cpu);
                if !arm.xen.pending_faults().is_empty() {
                    t.unreached += 1;
                }
                arm.xen.clear_faults();
                arm.xen.clear_cache_violations();
                arm.xen.check_invariants().unwrap();
                let e = r.expect_err("a failed flush is an error");
                t.err += 1;
                assert!(
                    matches!(e, DmaError::CacheMaintenance { .. }),
                    "{fault:?}: {e:?}"
                );
                assert_names_failure(&e, &fault);
                let s1 = engine.stats();
                assert_eq!(s1.cache_failures, s0.cache_failures + 1, "{fault:?}");
                assert_eq!(
                    s1.unmap_sync_failures,
                    s0.unmap_sync_failures + 1,
                    "{fault:?}"
                );
                // The mapping is still live: the device writes, a clean sync shows it.
                let data = pattern(100 + nth, len);
                sdev.write(bus, &data).unwrap();
                engine.sync_single_for_cpu(&dev, bus, len, bi).unwrap();
                common::same(&domu.read_page(g.gref).unwrap(), &data, "after the retry");
                assert_eq!(frames(&arm.xen, None), before, "{fault:?}: frames");
            }
        }
    }
    engine.unmap_page(&dev, bus, len, bi, none).expect("unmap");

    // A list of the foreign page (direct) and a bounced page: the failing flush of entry 0
    // does not stop entry 1 from being synced and unmapped.
    let (_, bank0) = arm.guest.ram_banks()[0];
    let high = arm.guest.alloc_pages(bank0 / PAGE - 16);
    assert!(high.as_u64() >= 1 << 32);
    for unmap in [false, true] {
        t.cases += 1;
        let mut sg = [SgEntry::new(g.phys, len), SgEntry::new(high, 3000)];
        // SAFETY: both pages stay mapped and unused by the CPU until the unmap.
        unsafe { engine.map_sg(&dev, &mut sg, bi, none) }.expect("map_sg");
        assert!(common::is_bounced(&engine, sg[1].dma_address));
        let data = pattern(77, 3000);
        sdev.write(sg[1].dma_address, &data).unwrap();
        let fault = Fault::FailNth {
            op: SimOp::CacheFlush,
            nth: 1,
            errno: 12,
        };
        arm.xen.inject(fault);
        let r = if unmap {
            engine.unmap_sg(&dev, &sg, bi, none)
        } else {
            engine.sync_sg_for_cpu(&dev, &sg, bi)
        };
        assert!(arm.xen.pending_faults().is_empty(), "{fault:?} never fired");
        arm.xen.clear_faults();
        arm.xen.clear_cache_violations();
        let e = r.expect_err("the flush failed");
        t.err += 1;
        assert_eq!((e.index, e.failures), (0, 1), "{e:?}");
        assert!(matches!(e.source, DmaError::CacheMaintenance { .. }));
        assert_names_failure(&e.source, &fault);
        let mut back = vec![0; 3000];
        arm.mem.read(high, &mut back);
        common::same(
            &back,
            &data,
            "the bounced entry after the failed list operation",
        );
        if unmap {
            assert_eq!(pool_used(&engine), 0, "the bounced entry was not released");
        } else {
            assert_eq!(pool_used(&engine), 2, "two slots for 3000 bytes");
            engine.unmap_sg(&dev, &sg, bi, none).expect("unmap_sg");
        }
        arm.xen.check_invariants().unwrap();
    }
    assert_eq!(pool_used(&engine), 0);
    t.report("foreign cache maintenance at sync and list unmap (arm64)");
    grants.unmap(&m).unwrap();
    assert!(arm.table.is_empty());
    assert_eq!(frames(&arm.xen, None), before, "frames");
}

/// The XSA-361 path (arm64): a grant Xen mapped that the foreign table cannot record (the
/// table is full) is unmapped at once; its request's handle becomes
/// `INVALID_GRANT_HANDLE` (Xen frees the handle at the unmap and may reuse it) and its
/// status `GNTST_general_error`, so the caller neither uses the page for DMA nor unmaps by
/// the stale handle. Cells: the immediate unmap succeeding (the grant is unmapped: the
/// domU can revoke it), and failing with each errno (counted as `unmap_failed`; the grant
/// stays mapped, handle and status as before; the test unmaps it by the original handle).
/// No frame is lost and the table keeps exactly its entries.
#[test]
fn xsa_361_immediate_unmap_fault_matrix_arm64() {
    use swiotlb_xen_arm64::{BoundedForeignTable, ForeignTableError, INVALID_GRANT_HANDLE};
    use xen_abi::{GNTMAP_HOST_MAP, GNTST_OKAY, GnttabMapGrantRef, GnttabUnmapGrantRef, ops};
    let arm = Arm::new();
    let table = BoundedForeignTable::<2>::new();
    let full =
        common::grants::ArmGrants::new(&table, &arm.dom0, arm.guest.foreign_window_base(), 2);
    let domid = arm.xen.domu().id();
    let refs = arm.xen.domu_grant(2);
    let kept = full.map(domid, &refs).expect("fill the table");
    assert_eq!(table.len(), 2);
    let before = frames(&arm.xen, None);
    let entries = table.read().entries().to_vec();
    let host = arm.guest.foreign_window_base().as_u64() + 2 * PAGE;
    let domu = arm.xen.domu_guest();

    let mut t = Tally::default();
    let cells: Vec<Option<Fault>> = std::iter::once(None)
        .chain(ERRNOS.map(|errno| {
            Some(Fault::FailNth {
                op: SimOp::GrantUnmap,
                nth: 1,
                errno,
            })
        }))
        .collect();
    for fault in cells {
        t.cases += 1;
        let gref = arm.xen.domu_grant(1)[0];
        let mut reqs = [GnttabMapGrantRef::new(host, GNTMAP_HOST_MAP, gref, domid)];
        // SAFETY: maps at a window page nothing uses.
        unsafe { ops::grant_map(&arm.dom0, &mut reqs) }.expect("Xen maps the grant");
        assert_eq!(reqs[0].status, GNTST_OKAY);
        let (handle, machine) = (reqs[0].handle, reqs[0].dev_bus_addr);
        if let Some(f) = fault {
            arm.xen.inject(f);
        }
        // SAFETY: `reqs` is the unchanged result of that map, not used yet.
        let s = unsafe { table.record_grant_maps(&mut reqs, &arm.dom0) };
        if !arm.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        arm.xen.clear_faults();
        arm.xen.check_invariants().expect("simulator invariants");
        // The immediate unmap ran: the request is failed and its handle invalid.
        assert_eq!((s.recorded, s.failed), (0, 1), "{fault:?}: {s:?}");
        assert_eq!(
            s.first_error,
            Some(ForeignTableError::Full { capacity: 2 }),
            "{fault:?}"
        );
        assert_eq!(
            reqs[0].handle, INVALID_GRANT_HANDLE,
            "{fault:?}: stale handle"
        );
        assert_eq!(reqs[0].status, GNTST_GENERAL_ERROR, "{fault:?}: status");
        assert_eq!(
            table.read().entries(),
            &entries[..],
            "{fault:?}: table changed"
        );
        match fault {
            None => {
                t.ok += 1;
                assert_eq!(s.unmap_failed, 0);
                domu.revoke(gref).expect("the grant is no longer mapped");
            }
            Some(_) => {
                t.err += 1;
                assert_eq!(
                    s.unmap_failed, 1,
                    "{fault:?}: the failed unmap is not counted"
                );
                assert!(
                    domu.revoke(gref).is_err(),
                    "{fault:?}: the grant should still be mapped"
                );
                // The caller's clean-up: by the handle it kept from Xen's answer.
                let mut un = [GnttabUnmapGrantRef::new(host, machine, handle)];
                // SAFETY: the mapping is ours and unused.
                unsafe { ops::grant_unmap(&arm.dom0, &mut un) }.expect("unmap by hand");
                domu.revoke(gref).expect("unmapped now");
            }
        }
        assert_eq!(frames(&arm.xen, None), before, "{fault:?}: frames");
    }
    t.report("XSA-361 immediate unmap (arm64, full foreign table)");
    full.unmap(&kept).expect("unmap the table's grants");
    assert!(table.is_empty());
}

// ----- Growth and reclaim (engine/grow.rs) -----

/// The engine with growth through a [`SimGrowth`] on either platform.
type GrowEngine<P> = swiotlb_core::engine::DmaEngine<
    P,
    xen_sim::SimMemory,
    Box<[Slot]>,
    common::SimPages,
    Box<swiotlb_core::engine::Growth<SimGrowth, xen_sim::SimMemory>>,
>;

/// A grown pool's size in the matrix: one segment (order 6), the smallest chunk.
const GROW_CHUNK: usize = SEGMENT as usize;
/// Pages of a grown chunk: the extents of its exchange.
const GROW_EXTENTS: u64 = GROW_CHUNK as u64 / PAGE;

fn grow_dev() -> Device {
    Device::new(DmaMask::BITS_32).with_force_bounce(true)
}

/// Growth of 256 KiB chunks, up to 4 MiB, given back at the first reclaim that finds a
/// pool idle.
fn grow_limits() -> swiotlb_core::engine::GrowthLimits {
    swiotlb_core::engine::GrowthLimits::new(4 << 20, GROW_CHUNK).with_quiet_period(0)
}

/// The bounce address behind `bus`.
fn grow_tlb<P: Platform>(e: &GrowEngine<P>, bus: swiotlb_core::BusAddr) -> PhysAddr {
    let pfn = e
        .platform()
        .bfn_to_local_pfn(bus.frame())
        .expect("an own frame");
    bus.with_phys_frame(pfn)
}

fn in_first_pool<P: Platform>(e: &GrowEngine<P>, bus: swiotlb_core::BusAddr) -> bool {
    e.pool().expect("pool").contains(grow_tlb(e, bus))
}

fn grow_map<P: Platform>(
    e: &GrowEngine<P>,
    p: PhysAddr,
    size: usize,
) -> Result<swiotlb_core::BusAddr, DmaError> {
    // SAFETY: the buffers are dom0 memory nothing else uses until their unmap.
    unsafe {
        e.map_page(
            &grow_dev(),
            p,
            size,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
    }
}

fn grow_unmap<P: Platform>(e: &GrowEngine<P>, b: swiotlb_core::BusAddr, size: usize) {
    e.unmap_page(
        &grow_dev(),
        b,
        size,
        DmaDirection::ToDevice,
        DmaAttrs::empty(),
    )
    .expect("unmap");
}

/// Fills the 1 MiB first pool with four 256 KiB mappings at `buf`.
fn grow_fill<P: Platform>(e: &GrowEngine<P>, buf: PhysAddr) -> Vec<swiotlb_core::BusAddr> {
    (0..4)
        .map(|i| {
            let b = grow_map(
                e,
                PhysAddr::new(buf.as_u64() + i * SEGMENT),
                SEGMENT as usize,
            )
            .expect("fits the first pool");
            assert!(in_first_pool(e, b));
            b
        })
        .collect()
}

/// The simulator's and the pools' invariants (the first pool and every grown one: their
/// slot counts are checked through the stats), and no cache or TLB violation.
#[track_caller]
fn grow_check<P: Platform>(xen: &Xen, e: &GrowEngine<P>, fault: &dyn std::fmt::Debug) {
    xen.check_invariants()
        .unwrap_or_else(|v| panic!("{fault:?}: simulator invariants: {v:?}"));
    e.pool()
        .expect("pool")
        .check_invariants()
        .unwrap_or_else(|v| panic!("{fault:?}: pool invariants: {v:?}"));
    assert_eq!(xen.cache_violations(), [], "{fault:?}: cache violations");
    assert_eq!(xen.tlb_violations(), [], "{fault:?}: TLB violations");
}

/// After a fault, with the fault gone: the first pool still maps (a slot freed and taken
/// again), and growth works again (a new pool, not on a quarantined block). Then everything
/// is unmapped and given back: every page of the hook is back except the quarantined ones.
#[track_caller]
fn grow_after<P: Platform>(
    xen: &Xen,
    e: &GrowEngine<P>,
    buf: PhysAddr,
    mut first: Vec<swiotlb_core::BusAddr>,
    order_refused: bool,
    fault: &dyn std::fmt::Debug,
) {
    let hook = e.growth().expect("growth").hook();
    let q = hook.pages.quarantined();
    grow_unmap(e, first.pop().expect("a mapping"), SEGMENT as usize);
    let again = grow_map(
        e,
        PhysAddr::new(buf.as_u64() + 3 * SEGMENT),
        SEGMENT as usize,
    )
    .unwrap_or_else(|err| panic!("{fault:?}: the first pool no longer maps: {err}"));
    assert!(in_first_pool(e, again), "{fault:?}");
    first.push(again);
    let added = e.growth_stats().expect("growth").pools_added;
    let live = e.growth_stats().expect("growth").live_pools;
    let p = PhysAddr::new(buf.as_u64() + 5 * SEGMENT);
    // Grows when no grown pool is alive (one the case left alive and idle takes it
    // otherwise).
    let r = grow_map(e, p, 4096);
    if order_refused && live == 0 {
        // Xen refused the chunk's order with EPERM: the platform keeps that limit for good
        // (x86 PV's learnt `max_order`), so growth of this chunk size fails with it, named.
        assert!(
            matches!(
                r,
                Err(DmaError::Growth {
                    cause: swiotlb_core::engine::GrowthError::Contiguous {
                        source: PlatformError::OrderTooLarge { .. }
                            | PlatformError::OrderRefused { .. },
                        ..
                    },
                    ..
                })
            ),
            "{fault:?}: {r:?}"
        );
        for b in first {
            grow_unmap(e, b, SEGMENT as usize);
        }
        assert_eq!(e.reclaim(1 << 40).remaining, 0, "{fault:?}");
        assert_eq!(hook.in_use(), hook.quarantined_pages(), "{fault:?}");
        grow_check(xen, e, fault);
        return;
    }
    let g = r.unwrap_or_else(|err| panic!("{fault:?}: no growth once the fault is gone: {err}"));
    assert!(!in_first_pool(e, g), "{fault:?}");
    let t = grow_tlb(e, g);
    assert!(
        !q.iter()
            .any(|&(qp, o)| t >= qp && t.as_u64() < qp.as_u64() + (PAGE << o)),
        "{fault:?}: a quarantined block was used again"
    );
    if live == 0 {
        assert_eq!(
            e.growth_stats().expect("growth").pools_added,
            added + 1,
            "{fault:?}"
        );
    }
    grow_check(xen, e, fault);
    grow_unmap(e, g, 4096);
    for b in first {
        grow_unmap(e, b, SEGMENT as usize);
    }
    let r = e.reclaim(1 << 40);
    assert_eq!((r.remaining, r.error), (0, None), "{fault:?}: {r:?}");
    assert_eq!(
        hook.in_use(),
        hook.quarantined_pages(),
        "{fault:?}: grown pages not given back"
    );
    grow_check(xen, e, fault);
}

/// Whether the x86 PV platform has learnt from Xen that a chunk's order is refused.
fn order_refused(e: &GrowEngine<common::SimPv<'_>>) -> bool {
    e.platform().max_order() < GROW_CHUNK.trailing_zeros() - 12
}

/// The frames a damage report strands and the quarantined block it names: the hook holds
/// exactly that block in quarantine (one chunk), never freed, and every stranded page is
/// counted. Returns the stranded count.
#[track_caller]
fn grow_damage<P: Platform>(
    e: &GrowEngine<P>,
    source: &PlatformError,
    fault: &dyn std::fmt::Debug,
) -> u64 {
    grow_damage_of(e, source, GROW_CHUNK.trailing_zeros() - 12, fault)
}

/// [`grow_damage`] for a block of `order` (a transient pool's).
#[track_caller]
fn grow_damage_of<P: Platform>(
    e: &GrowEngine<P>,
    source: &PlatformError,
    order: u32,
    fault: &dyn std::fmt::Debug,
) -> u64 {
    let hook = e.growth().expect("growth").hook();
    let q = hook.pages.quarantined();
    assert_eq!(q.len(), 1, "{fault:?}: quarantined {q:x?}");
    let (phys, o) = q[0];
    assert_eq!(o, order, "{fault:?}");
    assert!(
        !hook.pages.freed().contains(&(phys, order)),
        "{fault:?}: the damaged chunk was freed"
    );
    let s = source.damage().expect("damage");
    assert_reports_every_stranded_page(e.platform(), phys, order, s, fault);
    s.count()
}

/// Every fallible step of a growth and of its give-back on the x86 PV simulator: each
/// hypercall of `create_contiguous_region` (the `XENMEM_exchange`, the multicalls of
/// `update_va_mapping`s and the `mmu_update`s of the remap) and of
/// `destroy_contiguous_region` failing at every step with every errno, partial exchanges,
/// preempted `mmu_update` lists, and the damaging faults (a page Xen refuses to map, an
/// exchange losing frames). After each case: the machine is consistent, the error is a
/// [`GrowthError`] naming the hypercall and errno (or, at reclaim, the report's error), a
/// damaged chunk is quarantined by the hook and never freed, the first pool still maps and
/// growth works again once the fault is gone, and no frame is lost beyond the stranded
/// pages.
#[test]
fn growth_and_reclaim_fault_matrix_x86_pv() {
    use swiotlb_core::engine::{Growth, GrowthError};
    fn setup(pv: &Pv) -> (GrowEngine<common::SimPv<'_>>, PhysAddr) {
        let hook = SimGrowth::pv(&pv.guest, 1024, 64);
        let e = pv
            .engine(4 * SEGMENT)
            .with_growth(Box::new(Growth::new(hook, grow_limits())));
        let buf = pv.guest.alloc_pages(8 * 64);
        (e, buf)
    }
    // The clean growth and give-back, to count their hypercalls.
    let (grow_counts, give_back_counts) = {
        let pv = Pv::new();
        let (e, buf) = setup(&pv);
        let first = grow_fill(&e, buf);
        pv.xen.reset_counters();
        let b = grow_map(&e, PhysAddr::new(buf.as_u64() + 4 * SEGMENT), 4096).expect("grows");
        assert!(!in_first_pool(&e, b));
        let grow = pv.xen.counters();
        grow_unmap(&e, b, 4096);
        pv.xen.reset_counters();
        assert_eq!(e.reclaim(0).removed, 1);
        let give_back = pv.xen.counters();
        for b in first {
            grow_unmap(&e, b, SEGMENT as usize);
        }
        (grow, give_back)
    };
    assert!(
        grow_counts.count(SimOp::MemoryExchange) > 0,
        "{grow_counts:?}"
    );
    assert!(
        give_back_counts.count(SimOp::MemoryExchange) > 0,
        "{give_back_counts:?}"
    );

    let mut t = Tally::default();
    for fault in faults(&grow_counts, GROW_EXTENTS) {
        t.cases += 1;
        let pv = Pv::new();
        let (e, buf) = setup(&pv);
        let before = frames(&pv.xen, Some(&pv));
        let first = grow_fill(&e, buf);
        pv.xen.inject(fault);
        let r = grow_map(&e, PhysAddr::new(buf.as_u64() + 4 * SEGMENT), 4096);
        if !pv.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        pv.xen.clear_faults();
        grow_check(&pv.xen, &e, &fault);
        let hook = e.growth().expect("growth").hook();
        let mut stranded = 0;
        match r {
            Ok(b) => {
                t.ok += 1;
                assert!(!in_first_pool(&e, b), "{fault:?}");
                grow_unmap(&e, b, 4096);
            }
            Err(
                ref err @ DmaError::Growth {
                    cause: GrowthError::Damaged { ref source },
                    ..
                },
            ) => {
                t.err += 1;
                t.damaged += 1;
                assert_names_failure(err, &fault);
                stranded = grow_damage(&e, source, &fault);
                assert_eq!(e.growth_stats().expect("growth").live_pools, 0);
            }
            Err(
                ref err @ DmaError::Growth {
                    cause: GrowthError::Contiguous { address_bits, .. },
                    ..
                },
            ) => {
                t.err += 1;
                assert_eq!(address_bits, 32, "{fault:?}");
                assert_names_failure(err, &fault);
                assert_eq!(hook.in_use(), 0, "{fault:?}: the chunk was not given back");
                assert_eq!(e.growth_stats().expect("growth").failed, 1, "{fault:?}");
            }
            Err(err) => panic!("{fault:?}: {err:?}"),
        }
        grow_after(&pv.xen, &e, buf, first, order_refused(&e), &fault);
        let lost = pv.xen.lost_frames().len() as u64;
        assert_eq!(
            frames(&pv.xen, Some(&pv)),
            (before.0 + lost, before.1 - stranded),
            "{fault:?}: a frame was lost"
        );
    }
    assert!(t.damaged > 0, "no damage reached: {t:?}");
    t.report("growth create_contiguous_region (x86 PV, 256 KiB chunk, order 6)");
    let grow_cases = t.cases;

    let mut t = Tally::default();
    for fault in faults(&give_back_counts, GROW_EXTENTS) {
        t.cases += 1;
        let pv = Pv::new();
        let (e, buf) = setup(&pv);
        let before = frames(&pv.xen, Some(&pv));
        let first = grow_fill(&e, buf);
        let b = grow_map(&e, PhysAddr::new(buf.as_u64() + 4 * SEGMENT), 4096).expect("grows");
        grow_unmap(&e, b, 4096);
        pv.xen.inject(fault);
        let r = e.reclaim(0);
        if !pv.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        pv.xen.clear_faults();
        grow_check(&pv.xen, &e, &fault);
        let hook = e.growth().expect("growth").hook();
        let stats = e.growth_stats().expect("growth");
        let mut stranded = 0;
        match r.error {
            None => {
                t.ok += 1;
                assert_eq!((r.removed, r.remaining), (1, 0), "{fault:?}: {r:?}");
                assert_eq!(hook.in_use(), 0, "{fault:?}");
            }
            Some(ref err) if err.damage().is_some() => {
                t.err += 1;
                t.damaged += 1;
                assert_names_failure(err, &fault);
                assert_eq!((r.removed, r.remaining), (1, 0), "{fault:?}: {r:?}");
                assert_eq!(stats.give_back_failures, 1, "{fault:?}");
                stranded = grow_damage(&e, err, &fault);
            }
            Some(ref err) => {
                t.err += 1;
                assert_names_failure(err, &fault);
                // Kept: still contiguous, alive, found by lookups and mapped into again.
                assert_eq!((r.removed, r.remaining), (0, 1), "{fault:?}: {r:?}");
                assert_eq!(stats.give_back_failures, 1, "{fault:?}");
                let b = grow_map(&e, PhysAddr::new(buf.as_u64() + 4 * SEGMENT), 4096)
                    .unwrap_or_else(|x| panic!("{fault:?}: the kept pool does not map: {x}"));
                assert!(!in_first_pool(&e, b), "{fault:?}");
                assert_eq!(e.growth_stats().expect("growth").pools_added, 1);
                grow_unmap(&e, b, 4096);
                let r = e.reclaim(1);
                assert_eq!((r.removed, r.error), (1, None), "{fault:?}: retried: {r:?}");
                assert_eq!(hook.in_use(), 0, "{fault:?}");
            }
        }
        grow_after(&pv.xen, &e, buf, first, order_refused(&e), &fault);
        let lost = pv.xen.lost_frames().len() as u64;
        assert_eq!(
            frames(&pv.xen, Some(&pv)),
            (before.0 + lost, before.1 - stranded),
            "{fault:?}: a frame was lost"
        );
    }
    assert!(t.damaged > 0, "no damage reached: {t:?}");
    t.report("reclaim destroy_contiguous_region (x86 PV, 256 KiB chunk, order 6)");
    eprintln!(
        "fault matrix, growth and reclaim (x86 PV): {} cases",
        grow_cases + t.cases
    );
}

/// The hook's refusals, as cells of the growth matrix.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// In atomic context with no slot metadata yet (the heap is not for atomic context).
    Slots,
    /// The hook's pages are used up (one chunk's worth, held by the first grown pool).
    Pages,
}

/// One refusal cell on a fresh machine whose hook has one chunk of pages: the map fails
/// with the [`GrowthError`] naming the refusal, nothing is taken from the hook, and once
/// the refusal is gone the engine maps and grows again, every page comes back.
fn refusal_cell<P: Platform>(xen: &Xen, e: &GrowEngine<P>, buf: PhysAddr, refusal: Refusal) {
    use swiotlb_core::engine::GrowthError;
    let hook = e.growth().expect("growth").hook();
    let first = grow_fill(e, buf);
    let base = buf.as_u64() + 4 * SEGMENT;
    let mut held = Vec::new();
    if let Refusal::Slots = refusal {
        hook.set_atomic(true);
    }
    let err = loop {
        match grow_map(e, PhysAddr::new(base + held.len() as u64 * PAGE), 4096) {
            Ok(b) => {
                assert!(matches!(refusal, Refusal::Pages), "{refusal:?}: grew");
                assert!(!in_first_pool(e, b));
                held.push(b);
            }
            Err(err) => break err,
        }
    };
    grow_check(xen, e, &refusal);
    match (refusal, &err) {
        (
            Refusal::Slots,
            DmaError::Growth {
                cause: GrowthError::NoSlots { atomic: true, .. },
                ..
            },
        ) => assert_eq!(hook.in_use(), 0, "pages taken"),
        (
            Refusal::Pages,
            DmaError::Growth {
                cause: GrowthError::NoPages { atomic: false, .. },
                ..
            },
        ) => {
            assert!(!held.is_empty());
            assert_eq!(e.growth_stats().expect("growth").live_pools, 1);
        }
        _ => panic!("{refusal:?}: {err:?}"),
    }
    assert_eq!(e.growth_stats().expect("growth").failed, 1, "{refusal:?}");
    assert!(err.to_string().contains("growing one failed"), "{err}");
    // The refusal goes away: atomic context ends, the held pool is given back.
    hook.set_atomic(false);
    for b in held {
        grow_unmap(e, b, 4096);
    }
    assert_eq!(e.reclaim(0).remaining, 0);
    assert_eq!(hook.in_use(), 0, "{refusal:?}");
    grow_after(xen, e, buf, first, false, &refusal);
}

/// Growth on the arm64 simulator, and the hook's refusals on both platforms: an arm64
/// dom0's pages below the limit are bus-contiguous already (no exchange), so its growth
/// and give-back make no hypercall the matrix could fail (checked here: if a clean growth
/// ever made one, its faults would join the matrix). The refusals (no slot metadata in
/// atomic context, no pages) fail with the named [`GrowthError`], take nothing, and leave
/// the engine mapping and growing once they are gone.
#[test]
fn growth_hook_refusal_and_arm64_fault_matrix() {
    // Several `Growth`s (some 256 KiB each, built on the stack) in one debug frame.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(refusal_and_arm64)
        .expect("thread")
        .join()
        .expect("matrix");
}

fn refusal_and_arm64() {
    use swiotlb_core::engine::Growth;
    let mut t = Tally::default();
    // arm64: the hypercalls of a clean growth and give-back.
    {
        let arm = Arm::new();
        let hook = SimGrowth::arm(&arm.guest, 64, 64);
        let e = arm
            .engine(4 * SEGMENT)
            .with_growth(Box::new(Growth::new(hook, grow_limits())));
        let buf = arm.guest.alloc_pages(8 * 64);
        let first = grow_fill(&e, buf);
        arm.xen.reset_counters();
        let b = grow_map(&e, PhysAddr::new(buf.as_u64() + 4 * SEGMENT), 4096).expect("grows");
        grow_unmap(&e, b, 4096);
        assert_eq!(e.reclaim(0).removed, 1);
        let c = arm.xen.counters();
        for op in OPS {
            assert_eq!(c.count(op), 0, "arm64 growth made a {op:?}: add its faults");
        }
        for b in first {
            grow_unmap(&e, b, SEGMENT as usize);
        }
    }
    for refusal in [Refusal::Slots, Refusal::Pages] {
        t.cases += 2;
        t.err += 2;
        let pv = Pv::new();
        let before = frames(&pv.xen, Some(&pv));
        {
            let hook = SimGrowth::pv(&pv.guest, 64, 64);
            let e = pv
                .engine(4 * SEGMENT)
                .with_growth(Box::new(Growth::new(hook, grow_limits())));
            let buf = pv.guest.alloc_pages(8 * 64);
            refusal_cell(&pv.xen, &e, buf, refusal);
        }
        assert_eq!(
            frames(&pv.xen, Some(&pv)).1,
            before.1,
            "{refusal:?}: frames"
        );
        let arm = Arm::new();
        let before = frames(&arm.xen, None);
        let hook = SimGrowth::arm(&arm.guest, 64, 64);
        let e = arm
            .engine(4 * SEGMENT)
            .with_growth(Box::new(Growth::new(hook, grow_limits())));
        let buf = arm.guest.alloc_pages(8 * 64);
        refusal_cell(&arm.xen, &e, buf, refusal);
        assert_eq!(frames(&arm.xen, None), before, "{refusal:?}: frames");
    }
    t.report("growth hook refusals (x86 PV and arm64: no slots, no pages)");
}

/// A transient pool's size in the matrix: 512 KiB (order 7), for a 300 KiB mapping that a
/// 256 KiB chunk cannot hold.
const TRANSIENT_BYTES: usize = 2 * GROW_CHUNK;
const TRANSIENT_MAP: usize = 300 << 10;

/// Every fallible step of a transient pool on the x86 PV simulator: each hypercall of its
/// `create_contiguous_region` at the map and of its `destroy_contiguous_region` at the
/// unmap failing at every step with every errno, partial exchanges, preempted lists and the
/// damaging faults. After each case: the machine is consistent, a failed map names the
/// hypercall and took nothing (a damaged block is quarantined, never freed), a failed
/// give-back at unmap leaves the pool for `reclaim` (which gives it back once the fault is
/// gone) or quarantines it, the unmap itself always succeeds, and no frame is lost beyond
/// the stranded pages.
#[test]
fn transient_pool_fault_matrix_x86_pv() {
    use swiotlb_core::engine::{Growth, GrowthError};
    fn setup(pv: &Pv) -> (GrowEngine<common::SimPv<'_>>, PhysAddr) {
        let hook = SimGrowth::pv(&pv.guest, 1024, 64);
        let e = pv
            .engine(4 * SEGMENT)
            .with_growth(Box::new(Growth::new(hook, grow_limits())));
        let buf = pv.guest.alloc_pages(8 * 64);
        (e, buf)
    }
    // The transient mapping's original, after the four that fill the first pool.
    let tbuf = |buf: PhysAddr| PhysAddr::new(buf.as_u64() + 4 * SEGMENT);
    let order = TRANSIENT_BYTES.trailing_zeros() - 12;
    let extents = TRANSIENT_BYTES as u64 / PAGE;
    let transient_live =
        |e: &GrowEngine<common::SimPv<'_>>| e.growth_stats().expect("growth").transient_live;
    let (map_counts, unmap_counts) = {
        let pv = Pv::new();
        let (e, buf) = setup(&pv);
        let first = grow_fill(&e, buf);
        pv.xen.reset_counters();
        let b = grow_map(&e, tbuf(buf), TRANSIENT_MAP).expect("a transient pool");
        assert!(!in_first_pool(&e, b));
        assert_eq!(transient_live(&e), 1);
        let map = pv.xen.counters();
        pv.xen.reset_counters();
        grow_unmap(&e, b, TRANSIENT_MAP);
        assert_eq!(transient_live(&e), 0, "not given back at unmap");
        let unmap = pv.xen.counters();
        for b in first {
            grow_unmap(&e, b, SEGMENT as usize);
        }
        (map, unmap)
    };
    assert!(
        map_counts.count(SimOp::MemoryExchange) > 0,
        "{map_counts:?}"
    );
    assert!(
        unmap_counts.count(SimOp::MemoryExchange) > 0,
        "{unmap_counts:?}"
    );

    let mut t = Tally::default();
    for fault in faults(&map_counts, extents) {
        t.cases += 1;
        let pv = Pv::new();
        let (e, buf) = setup(&pv);
        let before = frames(&pv.xen, Some(&pv));
        let first = grow_fill(&e, buf);
        pv.xen.inject(fault);
        let r = grow_map(&e, tbuf(buf), TRANSIENT_MAP);
        if !pv.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        pv.xen.clear_faults();
        grow_check(&pv.xen, &e, &fault);
        let hook = e.growth().expect("growth").hook();
        let mut stranded = 0;
        match r {
            Ok(b) => {
                t.ok += 1;
                grow_unmap(&e, b, TRANSIENT_MAP);
            }
            Err(
                ref err @ DmaError::Growth {
                    cause: GrowthError::Damaged { ref source },
                    ..
                },
            ) => {
                t.err += 1;
                t.damaged += 1;
                assert_names_failure(err, &fault);
                stranded = grow_damage_of(&e, source, order, &fault);
            }
            Err(
                ref err @ DmaError::Growth {
                    cause: GrowthError::Contiguous { .. },
                    ..
                },
            ) => {
                t.err += 1;
                assert_names_failure(err, &fault);
                assert_eq!(hook.in_use(), 0, "{fault:?}: the block was not given back");
            }
            Err(err) => panic!("{fault:?}: {err:?}"),
        }
        assert_eq!(transient_live(&e), 0, "{fault:?}");
        assert_eq!(hook.in_use(), hook.quarantined_pages(), "{fault:?}");
        for b in first {
            grow_unmap(&e, b, SEGMENT as usize);
        }
        grow_check(&pv.xen, &e, &fault);
        let lost = pv.xen.lost_frames().len() as u64;
        assert_eq!(
            frames(&pv.xen, Some(&pv)),
            (before.0 + lost, before.1 - stranded),
            "{fault:?}: a frame was lost"
        );
    }
    assert!(t.damaged > 0, "no damage reached: {t:?}");
    t.report("transient pool create_contiguous_region (x86 PV, 512 KiB, order 7)");
    let map_cases = t.cases;

    let mut t = Tally::default();
    for fault in faults(&unmap_counts, extents) {
        t.cases += 1;
        let pv = Pv::new();
        let (e, buf) = setup(&pv);
        let before = frames(&pv.xen, Some(&pv));
        let first = grow_fill(&e, buf);
        let b = grow_map(&e, tbuf(buf), TRANSIENT_MAP).expect("a transient pool");
        pv.xen.inject(fault);
        // The unmap succeeds whatever the give-back does.
        grow_unmap(&e, b, TRANSIENT_MAP);
        if !pv.xen.pending_faults().is_empty() {
            t.unreached += 1;
        }
        pv.xen.clear_faults();
        grow_check(&pv.xen, &e, &fault);
        let hook = e.growth().expect("growth").hook();
        let stats = e.growth_stats().expect("growth");
        let mut stranded = 0;
        if stats.give_back_failures == 0 {
            t.ok += 1;
            assert_eq!(stats.transient_live, 0, "{fault:?}: {stats:?}");
            assert_eq!(hook.in_use(), 0, "{fault:?}");
        } else if hook.quarantined_pages() > 0 {
            t.err += 1;
            t.damaged += 1;
            assert_eq!(stats.transient_live, 0, "{fault:?}: {stats:?}");
            let q = hook.pages.quarantined();
            assert_eq!(q.len(), 1, "{fault:?}: quarantined {q:x?}");
            assert_eq!(q[0].1, order, "{fault:?}");
            assert!(
                !hook.pages.freed().contains(&q[0]),
                "{fault:?}: the damaged block was freed"
            );
            // The unmap reports nothing (the mapping is gone either way): the stranded
            // pages are the block's pages left without a translation.
            let first = q[0].0.frame().as_u64();
            stranded = (first..first + (1 << order))
                .filter(|&p| e.platform().pfn_to_bfn(swiotlb_core::Pfn::new(p)).is_none())
                .count() as u64;
            assert!(stranded > 0, "{fault:?}: quarantined with nothing stranded");
        } else {
            t.err += 1;
            // Kept: still contiguous and alive; the next reclaim gives it back.
            assert_eq!(stats.transient_live, 1, "{fault:?}: {stats:?}");
            let r = e.reclaim(0);
            assert_eq!((r.removed, r.error), (1, None), "{fault:?}: retried: {r:?}");
            assert_eq!(hook.in_use(), 0, "{fault:?}");
        }
        assert_eq!(transient_live(&e), 0, "{fault:?}");
        for b in first {
            grow_unmap(&e, b, SEGMENT as usize);
        }
        grow_check(&pv.xen, &e, &fault);
        let lost = pv.xen.lost_frames().len() as u64;
        assert_eq!(
            frames(&pv.xen, Some(&pv)),
            (before.0 + lost, before.1 - stranded),
            "{fault:?}: a frame was lost"
        );
    }
    assert!(t.damaged > 0, "no damage reached: {t:?}");
    t.report("transient pool give-back at unmap (x86 PV, 512 KiB, order 7)");
    eprintln!(
        "fault matrix, transient pools (x86 PV): {} cases",
        map_cases + t.cases
    );
}
