//! An adversarial device ([`xen_sim::Adversary`]) against the engine on both simulated
//! machines: it writes the bounce slot while the CPU syncs or unmaps (at the copy points of
//! the pool's copies: before, half-way and after, and from another thread), and writes what
//! it was never given: neighbouring slots, the rest of the page, the whole pool.
//!
//! What must hold, whatever it writes:
//!
//! - nothing outside a mapping changes in the CPU's memory: the buffers and the pages
//!   around them carry guard patterns, compared byte for byte (by machine address, so the
//!   check itself does not go through the code under test) after every operation, with only
//!   the mapping's own bytes excluded, and for a to-device mapping not even those;
//! - no pool metadata is corrupted: the slot metadata lives out of band (the `Slot` storage
//!   is host memory no simulated device can address, separate from the pool's memory), so
//!   after the device scribbled over every byte of the pool `BouncePool::check_invariants`
//!   holds, the pool's counters are unchanged and every live mapping unmaps correctly, its
//!   slots freed.
//!
//! The tests print how many cases and device writes they made (`-- --nocapture`).

mod common;

use common::{Arm, PAGE, Pv, SEGMENT, SimEngine, check, pool_used};
use std::sync::Arc;
use swiotlb_core::engine::PageAllocator;
use swiotlb_core::{BusAddr, Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr, Platform};
use xen_sim::{Adversary, SimMemory, Xen};

/// A machine under attack: the engine, the CPU's memory, how to reach a guest-physical
/// page by machine address, and a guarded buffer region.
struct Target<'e, P: Platform, A: PageAllocator> {
    xen: &'e Xen,
    engine: &'e SimEngine<P, A>,
    cpu: SimMemory,
    machine: &'e dyn Fn(PhysAddr) -> BusAddr,
    /// The buffers and their neighbourhood: `BUF_PAGES` pages, all guarded.
    region: PhysAddr,
}

const BUF_PAGES: u64 = 24;
const REGION: usize = (BUF_PAGES * PAGE) as usize;

/// The mappings each test makes: offset in the region, length, direction, min_align_mask.
const MAPPINGS: [(u64, usize, DmaDirection, u64); 6] = [
    (0x10, 100, DmaDirection::FromDevice, 0),
    (0x1340, 5000, DmaDirection::Bidirectional, 0xfff),
    (0x4000, 64, DmaDirection::ToDevice, 0),
    (0x6007, 20_000, DmaDirection::FromDevice, 0),
    (0xc000, 4096, DmaDirection::Bidirectional, 0x7ff),
    (0xe123, 3000, DmaDirection::ToDevice, 0xfff),
];

/// A sync or unmap of the test.
type Op<'a> = dyn Fn() -> Result<(), swiotlb_core::engine::DmaError> + 'a;

/// A live mapping of the test.
#[derive(Clone, Copy, Debug)]
struct Live {
    phys: PhysAddr,
    len: usize,
    dir: DmaDirection,
    bus: BusAddr,
    dev: Device,
}

impl<P: Platform, A: PageAllocator> Target<'_, P, A> {
    /// Reads guest-physical memory by machine address (raw, outside the cache model and
    /// the CPU's page table).
    fn raw(&self, phys: PhysAddr, len: usize) -> Vec<u8> {
        common::guard::read_raw(self.xen, self.machine, phys, len)
    }

    /// The guarded buffer region.
    fn guarded(&self) -> common::guard::Guarded<'_> {
        common::guard::Guarded {
            xen: self.xen,
            machine: self.machine,
            start: self.region,
            len: REGION,
        }
    }

    fn region_bytes(&self) -> Vec<u8> {
        self.guarded().bytes()
    }

    /// The bus range of every page of the pool.
    fn pool_pages(&self) -> Vec<(BusAddr, usize)> {
        let pool = self.engine.pool().unwrap();
        let first = pool.start().frame().as_u64();
        let last = pool.end().frame().as_u64();
        (first..last)
            .map(|pfn| {
                let bfn = self
                    .engine
                    .platform()
                    .pfn_to_bfn(swiotlb_core::Pfn::new(pfn))
                    .unwrap();
                (bfn.start(), PAGE as usize)
            })
            .collect()
    }

    /// The bus ranges around a bounced mapping: the pages of its slots and one page on
    /// either side (neighbouring slots, the rest of the page), inside the pool.
    fn around(&self, l: &Live) -> Vec<(BusAddr, usize)> {
        let pool = self.engine.pool().unwrap();
        let tlb = self.tlb(l.bus).unwrap();
        let lo = tlb.as_u64().saturating_sub(PAGE).max(pool.start().as_u64()) & !(PAGE - 1);
        // CAST: usize fits u64.
        let hi = (tlb.as_u64() + l.len as u64 + PAGE).min(pool.end().as_u64());
        (lo / PAGE..hi.div_ceil(PAGE))
            .map(|pfn| {
                let bfn = self
                    .engine
                    .platform()
                    .pfn_to_bfn(swiotlb_core::Pfn::new(pfn))
                    .unwrap();
                (bfn.start(), PAGE as usize)
            })
            .collect()
    }

    /// The pool address of a bounce bus address.
    fn tlb(&self, bus: BusAddr) -> Option<PhysAddr> {
        let pfn = self.engine.platform().bfn_to_local_pfn(bus.frame())?;
        let p = bus.with_phys_frame(pfn);
        self.engine.pool().unwrap().contains(p).then_some(p)
    }

    /// Fills the region with its guard pattern (through the CPU).
    fn guard(&self) {
        self.guarded().fill(&self.cpu, 0x6a);
    }

    /// Maps every entry of [`MAPPINGS`] for `dev` (forced to bounce).
    fn map_all(&self, dev: &Device) -> Vec<Live> {
        MAPPINGS
            .iter()
            .map(|&(off, len, dir, align)| {
                let d = dev.with_force_bounce(true).with_min_align_mask(align);
                let phys = PhysAddr::new(self.region.as_u64() + off);
                // SAFETY: the region is the test's, unreferenced; unmapped below.
                let bus = unsafe { self.engine.map_page(&d, phys, len, dir, DmaAttrs::empty()) }
                    .expect("map");
                assert!(self.tlb(bus).is_some(), "forced bouncing");
                Live {
                    phys,
                    len,
                    dir,
                    bus,
                    dev: d,
                }
            })
            .collect()
    }

    /// Asserts that the region is `before` outside `l` (and, for a to-device mapping, inside
    /// it too); where the CPU may receive data (`l`'s bytes), they must be `want` if given.
    #[track_caller]
    fn assert_guarded(&self, before: &[u8], l: &Live, want: Option<&[u8]>, what: &str) {
        let n = if l.dir == DmaDirection::ToDevice {
            0
        } else {
            l.len
        };
        self.guarded().assert_unchanged(
            before,
            &[(l.phys, n)],
            &format!("{what}: outside the mapping"),
        );
        if let Some(w) = want {
            common::same(&self.raw(l.phys, l.len), w, &format!("{what}: the mapping"));
        }
    }
}

/// Runs `body` on an x86 PV and an arm64 machine.
macro_rules! both_machines {
    (|$t:ident, $name:ident| $body:block) => {{
        {
            let pv = Pv::new();
            let engine = pv.engine(SEGMENT * 4);
            let machine = |p: PhysAddr| pv.machine(p);
            let $t = Target {
                xen: &pv.xen,
                engine: &engine,
                cpu: pv.guest.memory(),
                machine: &machine,
                region: pv.guest.alloc_pages(BUF_PAGES),
            };
            let $name = "x86 PV";
            $body
        }
        {
            let arm = Arm::new();
            let engine = arm.engine(SEGMENT * 4);
            let machine = |p: PhysAddr| BusAddr::new(p.as_u64());
            let $t = Target {
                xen: &arm.xen,
                engine: &engine,
                cpu: arm.mem.clone(),
                machine: &machine,
                region: arm.guest.alloc_pages(BUF_PAGES),
            };
            let $name = "arm64";
            $body
        }
    }};
}

/// The device scribbles over every byte of the pool while six mappings are live. The
/// pool's invariants and counters are as before; each mapping then unmaps correctly, its
/// original receiving exactly what its bounce holds (from-device and bidirectional) or
/// nothing (to-device), and no other byte of the CPU's memory changes.
#[test]
fn scribbling_over_the_whole_pool_corrupts_no_metadata() {
    let mut cases = 0;
    both_machines!(|t, name| {
        let sdev = t.xen.device(DmaMask::FULL, true);
        let dev = sdev.core_device();
        let adv = Adversary::new(sdev.clone());
        t.guard();
        let live = t.map_all(&dev);
        let pool = t.engine.pool().unwrap();
        let stats = pool.stats();
        adv.aim(t.pool_pages());
        adv.strike();
        assert_eq!(
            sdev.faults(),
            [],
            "{name}: the device reached the whole pool"
        );
        // The pool's memory is all the device's now; the metadata is not in it.
        pool.check_invariants()
            .expect("pool invariants after the scribble");
        assert_eq!(pool.stats(), stats, "{name}: the pool's counters changed");
        check(t.xen, t.engine, &[&sdev]);
        let mut expect = t.region_bytes();
        for l in &live {
            let before = t.region_bytes();
            let bounce = t.raw(t.tlb(l.bus).unwrap(), l.len);
            t.engine
                .unmap_page(&l.dev, l.bus, l.len, l.dir, DmaAttrs::empty())
                .unwrap_or_else(|e| panic!("{name}: {l:?}: {e}"));
            let want = (l.dir != DmaDirection::ToDevice).then_some(&bounce[..]);
            t.assert_guarded(&before, l, want, name);
            if let Some(w) = want {
                // CAST: offsets inside the region.
                let off = (l.phys.as_u64() - t.region.as_u64()) as usize;
                expect[off..off + l.len].copy_from_slice(w);
            }
            pool.check_invariants().unwrap();
            cases += 1;
        }
        common::same(&t.region_bytes(), &expect, name);
        assert_eq!(pool_used(t.engine), 0, "{name}: slots left");
        check(t.xen, t.engine, &[&sdev]);
    });
    eprintln!("adversarial device, whole-pool scribble: {cases} mappings unmapped after it");
}

/// The device writes the bounce slot, its neighbours and the rest of their pages at every
/// copy point (before, half-way, after) of every sync and unmap: full and partial syncs
/// both ways, unmaps with and without `SKIP_CPU_SYNC`. After each operation only the
/// mapping's own bytes of the CPU's memory may have changed, the pool's invariants hold,
/// and the other live mappings unmap correctly at the end.
#[test]
fn a_device_writing_at_every_copy_point_changes_nothing_outside_the_mapping() {
    let mut cases = 0;
    let mut strikes = 0;
    both_machines!(|t, name| {
        let sdev = t.xen.device(DmaMask::FULL, true);
        let dev = sdev.core_device();
        let adv = Adversary::new(sdev.clone());
        t.guard();
        let live = t.map_all(&dev);
        adv.install(t.xen);
        let pool = t.engine.pool().unwrap();
        for (i, l) in live.iter().enumerate() {
            adv.aim(t.around(l));
            let half = l.len / 2;
            let mid = BusAddr::new(l.bus.as_u64() + half as u64);
            let ops: [(&str, &Op<'_>); 5] = [
                ("sync for the CPU", &|| {
                    t.engine.sync_single_for_cpu(&l.dev, l.bus, l.len, l.dir)
                }),
                ("partial sync for the CPU", &|| {
                    t.engine
                        .sync_single_for_cpu(&l.dev, mid, l.len - half, l.dir)
                }),
                ("sync for the device", &|| {
                    t.engine.sync_single_for_device(&l.dev, l.bus, l.len, l.dir)
                }),
                ("oversize sync for the CPU", &|| {
                    t.engine
                        .sync_single_for_cpu(&l.dev, l.bus, l.len + (1 << 20), l.dir)
                }),
                ("unmap", &|| {
                    let attrs = if i % 2 == 0 {
                        DmaAttrs::empty()
                    } else {
                        DmaAttrs::SKIP_CPU_SYNC
                    };
                    t.engine.unmap_page(&l.dev, l.bus, l.len, l.dir, attrs)
                }),
            ];
            for (what, op) in ops {
                let before = t.region_bytes();
                op().unwrap_or_else(|e| panic!("{name}: {what} of {l:?}: {e}"));
                t.assert_guarded(&before, l, None, &format!("{name}: {what} of {l:?}"));
                pool.check_invariants().unwrap();
                cases += 1;
            }
        }
        t.xen.on_cpu_copy(None);
        strikes += adv.strikes();
        assert!(
            adv.strikes() > 0,
            "{name}: the copy points were never reached"
        );
        assert_eq!(pool_used(t.engine), 0);
        assert_eq!(sdev.faults(), []);
        check(t.xen, t.engine, &[&sdev]);
    });
    eprintln!("adversarial device, writes at copy points: {cases} operations, {strikes} strikes");
}

/// The device scribbles over the whole pool from another thread, without pause, while the
/// CPU maps, syncs and unmaps: the same guarantees, under real concurrency.
#[test]
fn a_device_scribbling_from_another_thread_changes_nothing_outside_the_mapping() {
    let mut cases = 0;
    let mut strikes = 0;
    both_machines!(|t, name| {
        let sdev = t.xen.device(DmaMask::FULL, true);
        let dev = sdev.core_device();
        let adv = Adversary::new(sdev.clone());
        adv.aim(t.pool_pages());
        t.guard();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let scribbler = {
                let adv = Arc::clone(&adv);
                let stop = &stop;
                s.spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        adv.strike();
                    }
                })
            };
            for round in 0..2 {
                let live = t.map_all(&dev);
                for l in &live {
                    let before = t.region_bytes();
                    // At least one scribble over the live mapping's bounce before the sync.
                    let s0 = adv.strikes();
                    while adv.strikes() < s0 + 2 {
                        std::thread::yield_now();
                    }
                    t.engine
                        .sync_single_for_cpu(&l.dev, l.bus, l.len, l.dir)
                        .unwrap();
                    t.engine
                        .unmap_page(&l.dev, l.bus, l.len, l.dir, DmaAttrs::empty())
                        .unwrap();
                    t.assert_guarded(&before, l, None, &format!("{name}: round {round}"));
                    cases += 1;
                }
                t.engine.pool().unwrap().check_invariants().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            scribbler.join().unwrap();
        });
        strikes += adv.strikes();
        assert!(
            adv.strikes() >= 2 * 2 * MAPPINGS.len() as u64,
            "{name}: the device never ran"
        );
        assert_eq!(pool_used(t.engine), 0);
        check(t.xen, t.engine, &[&sdev]);
    });
    eprintln!(
        "adversarial device, another thread: {cases} mappings synced and unmapped, {strikes} \
         whole-pool scribbles"
    );
}
