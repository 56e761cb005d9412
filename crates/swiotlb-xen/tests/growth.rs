//! Pools that grow and shrink at run time, on the simulated Xen (x86 PV and arm64): growth
//! on a full pool, lookup of grown mappings at unmap and sync, shrinking after the quiet
//! period and never while mapped, atomic context limited to the reserve, the limits, and
//! the error when growth fails. After each test every page is back and no frame is lost.

mod common;

use common::sim::SimGrowth;
use common::{Arm, PAGE, Pv, SEGMENT, pattern};
use swiotlb_core::engine::{DmaEngine, DmaError, Growth, GrowthError, GrowthLimits, PageAllocator};
use swiotlb_core::{
    BusAddr, Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr, Platform, PlatformError, Slot,
};
use xen_sim::{Fault, SimMemory, SimOp};

type GEngine<P, A> = DmaEngine<P, SimMemory, Box<[Slot]>, A, Box<Growth<SimGrowth, SimMemory>>>;

const CHUNK: usize = 1 << 20;

fn dev() -> Device {
    Device::new(DmaMask::BITS_32).with_force_bounce(true)
}

fn limits() -> GrowthLimits {
    GrowthLimits::new(8 << 20, CHUNK).with_quiet_period(10)
}

/// The bounce address behind a bus address.
fn tlb<P: Platform, A: PageAllocator>(e: &GEngine<P, A>, bus: BusAddr) -> PhysAddr {
    let pfn = e
        .platform()
        .bfn_to_local_pfn(bus.frame())
        .expect("own frame");
    bus.with_phys_frame(pfn)
}

fn in_first<P: Platform, A: PageAllocator>(e: &GEngine<P, A>, bus: BusAddr) -> bool {
    e.pool().expect("pool").contains(tlb(e, bus))
}

/// Fills the 1 MiB first pool with four 256 KiB mappings of `buf`.
fn fill<P: Platform, A: PageAllocator>(e: &GEngine<P, A>, buf: PhysAddr) -> Vec<BusAddr> {
    (0..4)
        .map(|i| {
            let p = PhysAddr::new(buf.as_u64() + i * SEGMENT);
            // SAFETY: the buffer is dom0 memory nothing else uses until the unmap.
            let b = unsafe {
                e.map_page(
                    &dev(),
                    p,
                    SEGMENT as usize,
                    DmaDirection::ToDevice,
                    DmaAttrs::empty(),
                )
            }
            .expect("fits the first pool");
            assert!(in_first(e, b));
            b
        })
        .collect()
}

fn unmap_all<P: Platform, A: PageAllocator>(e: &GEngine<P, A>, v: &[BusAddr]) {
    for &b in v {
        e.unmap_page(
            &dev(),
            b,
            SEGMENT as usize,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
        .expect("unmap");
    }
}

/// The body of the growth test on either platform: a full pool grows, the grown mapping is
/// found by unmap and sync, data goes both ways, the pool shrinks after the quiet period
/// only.
fn grow_and_shrink<P: Platform, A: PageAllocator>(
    e: &GEngine<P, A>,
    mem: &SimMemory,
    buf: PhysAddr,
) {
    let first = fill(e, buf);
    let orig = PhysAddr::new(buf.as_u64() + 4 * SEGMENT);
    let data = pattern(7, 100_000);
    mem.write(orig, &data);
    let dir = DmaDirection::Bidirectional;
    // SAFETY: as in `fill`.
    let b = unsafe { e.map_page(&dev(), orig, data.len(), dir, DmaAttrs::empty()) }
        .expect("the engine grows a pool");
    assert!(!in_first(e, b), "mapped in the first pool");
    assert!(DmaMask::BITS_32.covers(b, data.len() as u64));
    let s = e.growth_stats().unwrap();
    assert_eq!((s.pools_added, s.live_pools, s.bytes), (1, 1, CHUNK as u64));
    // The bounce holds the original.
    let t = tlb(e, b);
    let mut got = vec![0; data.len()];
    mem.read(t, &mut got);
    assert_eq!(got, data);
    // The device writes; a sync for the CPU finds the grown mapping and copies back.
    mem.write(t, b"device wrote this");
    e.sync_single_for_cpu(&dev(), b, data.len(), dir)
        .expect("sync of a grown mapping");
    let mut head = [0u8; 17];
    mem.read(orig, &mut head);
    assert_eq!(&head, b"device wrote this");
    // Not while mapped, however long idle the clock says.
    assert_eq!(e.reclaim(1000).removed, 0);
    assert_eq!(e.reclaim(5000).removed, 0);
    mem.write(t, b"second write");
    e.unmap_page(&dev(), b, data.len(), dir, DmaAttrs::empty())
        .expect("unmap of a grown mapping");
    let mut head = [0u8; 12];
    mem.read(orig, &mut head);
    assert_eq!(&head, b"second write");
    // A second unmap is refused by the grown pool, not taken for a direct mapping.
    let again = e.unmap_page(&dev(), b, data.len(), dir, DmaAttrs::empty());
    assert!(matches!(again, Err(DmaError::Pool { .. })), "{again:?}");
    // Quiet period: seen idle at 6000, not given back before 6010.
    assert_eq!(e.reclaim(6000).removed, 0);
    assert_eq!(e.reclaim(6009).removed, 0);
    let r = e.reclaim(6010);
    assert_eq!((r.removed, r.remaining), (1, 0));
    let s = e.growth_stats().unwrap();
    assert_eq!(
        (s.pools_added, s.pools_removed, s.live_pools, s.peak_bytes),
        (1, 1, 0, CHUNK as u64)
    );
    assert_eq!(
        e.growth().unwrap().hook().in_use(),
        0,
        "pages not given back"
    );
    // The grown pool is gone: its address is no bounce any more.
    unmap_all(e, &first);
}

#[test]
fn grows_on_pool_full_finds_grown_mappings_and_shrinks_x86_pv() {
    let pv = Pv::new();
    let before = (pv.xen.free_frames(), pv.local_entries());
    {
        let hook = SimGrowth::pv(&pv.guest, 1024, 256);
        let e = pv
            .engine(4 * SEGMENT)
            .with_growth(Box::new(Growth::new(hook, limits())));
        let buf = pv.guest.alloc_pages(2 * 256);
        grow_and_shrink(&e, &pv.guest.memory(), buf);
        pv.xen.check_invariants().expect("invariants");
    }
    // Every frame the exchanges took came back (the first pool's chunks are still held).
    let after = (pv.xen.free_frames(), pv.local_entries());
    assert_eq!(after.1, before.1, "a local frame was lost");
}

#[test]
fn grows_on_pool_full_finds_grown_mappings_and_shrinks_arm64() {
    let arm = Arm::new();
    let hook = SimGrowth::arm(&arm.guest, 1024, 256);
    let e = arm
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits())));
    let buf = arm.guest.alloc_pages(2 * 256);
    grow_and_shrink(&e, &arm.mem, buf);
    arm.xen.check_invariants().expect("invariants");
}

#[test]
fn without_growth_the_full_pool_fails_as_before() {
    let pv = Pv::new();
    let e = pv.engine(4 * SEGMENT);
    let buf = pv.guest.alloc_pages(2 * 256);
    let v: Vec<_> = (0..4)
        .map(|i| {
            let p = PhysAddr::new(buf.as_u64() + i * SEGMENT);
            // SAFETY: as in `fill`.
            unsafe {
                e.map_page(
                    &dev(),
                    p,
                    SEGMENT as usize,
                    DmaDirection::ToDevice,
                    DmaAttrs::empty(),
                )
            }
            .unwrap()
        })
        .collect();
    let p = PhysAddr::new(buf.as_u64() + 4 * SEGMENT);
    // SAFETY: as above.
    let r = unsafe { e.map_page(&dev(), p, 4096, DmaDirection::ToDevice, DmaAttrs::empty()) };
    assert!(matches!(r, Err(DmaError::Bounce { .. })), "{r:?}");
    for b in v {
        e.unmap_page(
            &dev(),
            b,
            SEGMENT as usize,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
        .unwrap();
    }
}

/// A map in the grown pool between two reclaims restarts the quiet period.
#[test]
fn a_map_in_the_quiet_period_restarts_it() {
    let pv = Pv::new();
    let hook = SimGrowth::pv(&pv.guest, 1024, 256);
    let e = pv
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits())));
    let buf = pv.guest.alloc_pages(2 * 256);
    let first = fill(&e, buf);
    let p = PhysAddr::new(buf.as_u64() + 4 * SEGMENT);
    let map = || {
        // SAFETY: as in `fill`.
        let b = unsafe { e.map_page(&dev(), p, 4096, DmaDirection::ToDevice, DmaAttrs::empty()) }
            .unwrap();
        assert!(!in_first(&e, b));
        e.unmap_page(&dev(), b, 4096, DmaDirection::ToDevice, DmaAttrs::empty())
            .unwrap();
    };
    map();
    assert_eq!(e.reclaim(0).removed, 0);
    map(); // busy again at 5, idle again by the next look
    assert_eq!(e.reclaim(10).removed, 0, "the map at 5 restarts the period");
    assert_eq!(e.reclaim(19).removed, 0);
    assert_eq!(e.reclaim(20).removed, 1);
    unmap_all(&e, &first);
    assert_eq!(e.growth().unwrap().hook().in_use(), 0);
}

#[test]
fn atomic_context_grows_only_from_the_reserve() {
    let pv = Pv::new();
    // A reserve of one chunk (256 pages).
    let hook = SimGrowth::pv(&pv.guest, 1024, 256);
    let e = pv
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits().with_quiet_period(0))));
    let buf = pv.guest.alloc_pages(2 * 256);
    let first = fill(&e, buf);
    let p = PhysAddr::new(buf.as_u64() + 4 * SEGMENT);
    let hook = e.growth().unwrap().hook();
    hook.set_atomic(true);
    // No slot metadata yet, and the heap is not for atomic context.
    // SAFETY: as in `fill`.
    let r = unsafe { e.map_page(&dev(), p, 4096, DmaDirection::ToDevice, DmaAttrs::empty()) };
    assert!(
        matches!(
            r,
            Err(DmaError::Growth {
                cause: GrowthError::NoSlots { atomic: true, .. },
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(hook.in_use(), 0);
    // Grown once outside atomic context (from the ordinary pages), then given back: the
    // entry keeps its metadata.
    hook.set_atomic(false);
    // SAFETY: as above.
    let b =
        unsafe { e.map_page(&dev(), p, 4096, DmaDirection::ToDevice, DmaAttrs::empty()) }.unwrap();
    assert!(hook.pages.contains(tlb(&e, b)));
    assert_eq!(hook.reserve.in_use(), 0);
    e.unmap_page(&dev(), b, 4096, DmaDirection::ToDevice, DmaAttrs::empty())
        .unwrap();
    assert_eq!(e.reclaim(0).removed, 1);
    // In atomic context the reserve's chunk, and nothing else.
    hook.set_atomic(true);
    // SAFETY: as above.
    let b =
        unsafe { e.map_page(&dev(), p, 4096, DmaDirection::ToDevice, DmaAttrs::empty()) }.unwrap();
    assert!(hook.reserve.contains(tlb(&e, b)), "not from the reserve");
    assert_eq!(hook.pages.in_use(), 0);
    // The reserve is used up: the next growth fails with the reason (the next free entry has
    // no metadata yet, which atomic context cannot allocate either), and the ordinary pages
    // stay untouched.
    let q = PhysAddr::new(buf.as_u64() + 5 * SEGMENT);
    let big: Vec<_> = (0..4)
        .map(|i| {
            let x = PhysAddr::new(q.as_u64() + i * SEGMENT / 4);
            // SAFETY: as above.
            unsafe {
                e.map_page(
                    &dev(),
                    x,
                    SEGMENT as usize,
                    DmaDirection::ToDevice,
                    DmaAttrs::empty(),
                )
            }
        })
        .collect();
    let last = big.last().unwrap();
    assert!(
        matches!(
            last,
            Err(DmaError::Growth {
                cause: GrowthError::NoPages { atomic: true, .. }
                    | GrowthError::NoSlots { atomic: true, .. },
                ..
            })
        ),
        "{last:?}"
    );
    assert_eq!(hook.pages.in_use(), 0);
    for m in big.into_iter().flatten() {
        e.unmap_page(
            &dev(),
            m,
            SEGMENT as usize,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
        )
        .unwrap();
    }
    e.unmap_page(&dev(), b, 4096, DmaDirection::ToDevice, DmaAttrs::empty())
        .unwrap();
    assert_eq!(e.reclaim(0).removed, 1);
    assert_eq!(hook.in_use(), 0);
    unmap_all(&e, &first);
}

#[test]
fn limits_are_honoured() {
    for (lim, want_pools) in [
        (GrowthLimits::new(8 << 20, CHUNK).with_max_pools(2), 2u64),
        (GrowthLimits::new(3 << 20, CHUNK), 3),
    ] {
        let pv = Pv::new();
        let hook = SimGrowth::pv(&pv.guest, 2048, 256);
        let e = pv
            .engine(4 * SEGMENT)
            .with_growth(Box::new(Growth::new(hook, lim.with_quiet_period(0))));
        let buf = pv.guest.alloc_pages(16 * 64);
        let mut live = fill(&e, buf);
        let mut err = None;
        for i in 4..40 {
            let p = PhysAddr::new(buf.as_u64() + i * SEGMENT);
            // SAFETY: as in `fill`.
            match unsafe {
                e.map_page(
                    &dev(),
                    p,
                    SEGMENT as usize,
                    DmaDirection::ToDevice,
                    DmaAttrs::empty(),
                )
            } {
                Ok(b) => live.push(b),
                Err(x) => {
                    err = Some(x);
                    break;
                }
            }
        }
        let s = e.growth_stats().unwrap();
        assert_eq!(s.pools_added, want_pools);
        assert_eq!(live.len() as u64, 4 + 4 * want_pools);
        match err {
            Some(DmaError::Growth {
                cause: GrowthError::PoolLimit { pools: 2, max: 2 },
                ..
            }) if want_pools == 2 => {}
            Some(DmaError::Growth {
                cause: GrowthError::ByteLimit { grown, max, .. },
                ..
            }) if want_pools == 3 => {
                assert_eq!((grown, max), (3 << 20, 3 << 20));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.growth_stats().unwrap().refused, 1);
        unmap_all(&e, &live);
        assert_eq!(e.reclaim(0).removed as u64, want_pools);
        assert_eq!(e.growth().unwrap().hook().in_use(), 0);
    }
}

#[test]
fn failed_growth_names_the_hypercall_and_gives_the_pages_back_x86_pv() {
    let pv = Pv::new();
    let hook = SimGrowth::pv(&pv.guest, 1024, 256);
    let e = pv
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits())));
    let buf = pv.guest.alloc_pages(2 * 256);
    let first = fill(&e, buf);
    let before = (pv.xen.free_frames(), pv.local_entries());
    pv.xen.inject(Fault::FailNth {
        op: SimOp::MemoryExchange,
        nth: 1,
        errno: 12,
    });
    let p = PhysAddr::new(buf.as_u64() + 4 * SEGMENT);
    // SAFETY: as in `fill`.
    let r = unsafe { e.map_page(&dev(), p, 4096, DmaDirection::ToDevice, DmaAttrs::empty()) };
    let Err(DmaError::Growth {
        cause:
            GrowthError::Contiguous {
                source,
                address_bits,
                ..
            },
        ..
    }) = &r
    else {
        panic!("{r:?}");
    };
    assert_eq!(*address_bits, 32);
    assert_eq!(
        *source,
        PlatformError::Hypercall {
            op: "XENMEM_exchange",
            errno: 12
        }
    );
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("XENMEM_exchange failed with ENOMEM (12)"),
        "{msg}"
    );
    assert_eq!(e.growth().unwrap().hook().in_use(), 0, "pages kept");
    assert_eq!(
        (pv.xen.free_frames(), pv.local_entries()),
        before,
        "frames lost"
    );
    assert_eq!(e.growth_stats().unwrap().failed, 1);
    pv.xen.check_invariants().unwrap();
    // Without the fault it grows.
    // SAFETY: as above.
    let b =
        unsafe { e.map_page(&dev(), p, 4096, DmaDirection::ToDevice, DmaAttrs::empty()) }.unwrap();
    e.unmap_page(&dev(), b, 4096, DmaDirection::ToDevice, DmaAttrs::empty())
        .unwrap();
    unmap_all(&e, &first);
    let _ = PAGE;
}

/// Many threads map and unmap in grown pools while another reclaims with no quiet period:
/// every byte comes back, nothing is lost.
#[test]
fn lookups_racing_reclaim_stay_correct() {
    let pv = Pv::new();
    let hook = SimGrowth::pv(&pv.guest, 2048, 256);
    let e = pv
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits().with_quiet_period(0))));
    let buf = pv.guest.alloc_pages(2 * 256);
    let first = fill(&e, buf);
    let mem = pv.guest.memory();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut mappers = Vec::new();
        for t in 0..3u64 {
            let (e, mem) = (&e, mem.clone());
            mappers.push(s.spawn(move || {
                let p = PhysAddr::new(buf.as_u64() + 4 * SEGMENT + t * 16 * PAGE);
                for i in 0..150u64 {
                    let data = pattern(t * 1000 + i, 8192);
                    mem.write(p, &data);
                    let dir = DmaDirection::Bidirectional;
                    // A reclaim holding the growth flag makes a growth fail with `Busy`
                    // after the bounded wait; the caller may retry.
                    let b = loop {
                        // SAFETY: each thread's buffer is its own.
                        let r = unsafe { e.map_page(&dev(), p, 8192, dir, DmaAttrs::empty()) };
                        match r {
                            Err(DmaError::Growth {
                                cause: GrowthError::Busy,
                                ..
                            }) => std::thread::yield_now(),
                            r => break r.unwrap(),
                        }
                    };
                    let t2 = tlb(e, b);
                    let mut got = vec![0; 8192];
                    mem.read(t2, &mut got);
                    assert_eq!(got, data);
                    e.sync_single_for_cpu(&dev(), b, 8192, dir).unwrap();
                    e.unmap_page(&dev(), b, 8192, dir, DmaAttrs::empty())
                        .unwrap();
                }
            }));
        }
        s.spawn(|| {
            let mut now = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                e.reclaim(now);
                now += 1;
                std::thread::yield_now();
            }
        });
        let results: Vec<_> = mappers.into_iter().map(|m| m.join()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in results {
            r.expect("mapper");
        }
    });
    unmap_all(&e, &first);
    e.reclaim(u64::MAX - 1);
    e.reclaim(u64::MAX);
    assert_eq!(e.growth_stats().unwrap().live_pools, 0);
    assert_eq!(e.growth().unwrap().hook().in_use(), 0);
    pv.xen.check_invariants().unwrap();
}

/// A mapping longer than a chunk holds gets a transient pool of its own, the smallest power
/// of two that holds it: data goes both ways through it, no other mapping enters it, and it
/// goes back at the unmap (with the hook in atomic context, at the next reclaim, whatever
/// the quiet period). Nothing is lost.
fn transient<P: Platform, A: PageAllocator>(e: &GEngine<P, A>, mem: &SimMemory, buf: PhysAddr) {
    let hook = e.growth().unwrap().hook();
    let dir = DmaDirection::Bidirectional;
    // 1.5 MiB: more than a 1 MiB chunk holds, so a transient pool of 2 MiB.
    let size = 3 * CHUNK / 2;
    assert!(
        e.max_mapping_size(&dev()) >= 8 << 20,
        "max_bytes is the limit"
    );
    let data = pattern(11, size);
    mem.write(buf, &data);
    for atomic_unmap in [false, true] {
        // SAFETY: as in `fill`.
        let b = unsafe { e.map_page(&dev(), buf, size, dir, DmaAttrs::empty()) }
            .expect("a transient pool");
        assert!(!in_first(e, b));
        assert!(DmaMask::BITS_32.covers(b, size as u64));
        let s = e.growth_stats().unwrap();
        assert_eq!((s.transient_live, s.live_pools), (1, 1), "{s:?}");
        assert_eq!(s.bytes, 2 * CHUNK as u64, "{s:?}");
        let t = tlb(e, b);
        let mut got = vec![0; size];
        mem.read(t, &mut got);
        assert_eq!(got, data, "the bounce holds the original");
        // A small mapping that must grow does not go into the transient pool.
        let first = fill(e, PhysAddr::new(buf.as_u64() + 2 * CHUNK as u64));
        let p = PhysAddr::new(buf.as_u64() + 3 * CHUNK as u64);
        // SAFETY: as in `fill`.
        let small = unsafe { e.map_page(&dev(), p, 4096, dir, DmaAttrs::empty()) }.unwrap();
        let st = tlb(e, small);
        assert!(!in_first(e, small));
        assert!(
            st < t || st.as_u64() >= t.as_u64() + 2 * CHUNK as u64,
            "a second mapping in the transient pool"
        );
        e.unmap_page(&dev(), small, 4096, dir, DmaAttrs::empty())
            .unwrap();
        unmap_all(e, &first);
        // The device writes the end; the unmap copies it back.
        mem.write(PhysAddr::new(t.as_u64() + size as u64 - 4), b"tail");
        hook.set_atomic(atomic_unmap);
        e.unmap_page(&dev(), b, size, dir, DmaAttrs::empty())
            .expect("unmap of a transient mapping");
        hook.set_atomic(false);
        let mut tail = [0u8; 4];
        mem.read(PhysAddr::new(buf.as_u64() + size as u64 - 4), &mut tail);
        assert_eq!(&tail, b"tail");
        mem.write(
            PhysAddr::new(buf.as_u64() + size as u64 - 4),
            &data[size - 4..],
        );
        let s = e.growth_stats().unwrap();
        if atomic_unmap {
            assert_eq!(s.transient_live, 1, "freed in atomic context: {s:?}");
            let r = e.reclaim(0);
            assert_eq!((r.removed, r.error), (1, None), "{r:?}");
        }
        let s = e.growth_stats().unwrap();
        assert_eq!(s.transient_live, 0, "{s:?}");
        // The small mapping's chunk stays for its quiet period (begun by the reclaim at 0
        // after an atomic unmap); then everything is back.
        let early = e.reclaim(1000).removed;
        assert_eq!(early, usize::from(atomic_unmap));
        assert_eq!(early + e.reclaim(2000).removed, 1);
        assert_eq!(hook.in_use(), 0, "pages not given back");
    }
    let s = e.growth_stats().unwrap();
    assert_eq!((s.transient_added, s.pools_added), (2, 4), "{s:?}");
}

#[test]
fn a_mapping_longer_than_a_chunk_gets_a_transient_pool_x86_pv() {
    let pv = Pv::new();
    let before = (pv.xen.free_frames(), pv.local_entries());
    {
        let hook = SimGrowth::pv(&pv.guest, 1024, 256);
        let e = pv
            .engine(4 * SEGMENT)
            .with_growth(Box::new(Growth::new(hook, limits())));
        let buf = pv.guest.alloc_pages(4 * 256);
        transient(&e, &pv.guest.memory(), buf);
        pv.xen.check_invariants().expect("invariants");
    }
    let after = (pv.xen.free_frames(), pv.local_entries());
    assert_eq!(after.1, before.1, "a local frame was lost");
}

#[test]
fn a_mapping_longer_than_a_chunk_gets_a_transient_pool_arm64() {
    let arm = Arm::new();
    let hook = SimGrowth::arm(&arm.guest, 1024, 256);
    let e = arm
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits())));
    let buf = arm.guest.alloc_pages(4 * 256);
    transient(&e, &arm.mem, buf);
    arm.xen.check_invariants().expect("invariants");
}

/// Without transient pools a mapping longer than a chunk fails as the first pool refused
/// it, and nothing is grown.
#[test]
fn without_transient_pools_a_mapping_longer_than_a_chunk_fails() {
    let pv = Pv::new();
    let hook = SimGrowth::pv(&pv.guest, 1024, 256);
    let e = pv
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits().with_transient(false))));
    assert_eq!(e.max_mapping_size(&dev()), CHUNK);
    let buf = pv.guest.alloc_pages(4 * 256);
    let size = 3 * CHUNK / 2;
    // SAFETY: as in `fill`.
    let r = unsafe { e.map_page(&dev(), buf, size, DmaDirection::ToDevice, DmaAttrs::empty()) };
    assert!(matches!(r, Err(DmaError::Bounce { .. })), "{r:?}");
    assert_eq!(e.growth_stats().unwrap().pools_added, 0);
}

/// `map_buffer` grows too, and `unmap_buffer` finds its mapping in the grown pool.
#[test]
fn map_buffer_grows_and_unmap_buffer_finds_the_grown_mapping() {
    let pv = Pv::new();
    let hook = SimGrowth::pv(&pv.guest, 1024, 256);
    let e = pv
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits())));
    let buf = pv.guest.alloc_pages(2 * 256);
    let first = fill(&e, buf);
    let mut packet = pattern(3, 5000);
    let ptr = core::ptr::NonNull::from(&mut packet[..]);
    let dir = DmaDirection::Bidirectional;
    // SAFETY: `packet` stays valid and is touched by nobody until the unmap.
    let b = unsafe { e.map_buffer(&dev(), ptr, None, dir, DmaAttrs::empty()) }
        .expect("map_buffer grows a pool");
    assert!(!in_first(&e, b));
    assert_eq!(e.growth_stats().unwrap().pools_added, 1);
    let t = tlb(&e, b);
    pv.guest.memory().write(t, b"from the device");
    // SAFETY: the mapping of `ptr` made above.
    unsafe { e.unmap_buffer(&dev(), b, ptr, dir, DmaAttrs::empty()) }
        .expect("unmap_buffer of a grown mapping");
    assert_eq!(&packet[..15], b"from the device");
    // SAFETY: as above; the mapping is gone, so this is refused by the grown pool.
    let again = unsafe { e.unmap_buffer(&dev(), b, ptr, dir, DmaAttrs::empty()) };
    assert!(
        matches!(again, Err(DmaError::BufferNotMapped { .. })),
        "{again:?}"
    );
    unmap_all(&e, &first);
    assert_eq!(e.reclaim(0).removed, 0);
    assert_eq!(e.reclaim(100).removed, 1);
    assert_eq!(e.growth().unwrap().hook().in_use(), 0);
}

/// Xen refuses the chunk's order (dom0's `memop-max-order` of 7, 512 KiB, below the 1 MiB
/// chunk): the engine grows a 512 KiB pool instead, where a map that fits goes; a map that
/// only a whole chunk could hold fails with the refusal, and nothing is lost.
#[test]
fn a_refused_chunk_order_grows_a_smaller_pool_x86_pv() {
    let pv = Pv::with_config(xen_sim::SimConfig::x86_pv().with_max_orders(7, 7));
    let hook = SimGrowth::pv(&pv.guest, 1024, 256);
    let e = pv
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits())));
    let buf = pv.guest.alloc_pages(2 * 256);
    let first = fill(&e, buf);
    let before = (pv.xen.free_frames(), pv.local_entries());
    let p = PhysAddr::new(buf.as_u64() + 4 * SEGMENT);
    let data = pattern(11, 300 << 10);
    pv.guest.memory().write(p, &data);
    let dir = DmaDirection::ToDevice;
    // SAFETY: as in `fill`.
    let b = unsafe { e.map_page(&dev(), p, data.len(), dir, DmaAttrs::empty()) }
        .expect("a smaller pool holds 300 KiB");
    assert!(!in_first(&e, b));
    let mut got = vec![0; data.len()];
    pv.guest.memory().read(tlb(&e, b), &mut got);
    assert_eq!(got, data, "bounce contents");
    let s = e.growth_stats().unwrap();
    assert_eq!(
        (s.pools_added, s.smaller_chunks, s.bytes, s.failed),
        (1, 1, 512 << 10, 0)
    );
    // 768 KiB fits a 1 MiB chunk (joined segments) but no pool of an order Xen allows.
    let big = 768 << 10;
    // SAFETY: as in `fill`.
    let r = unsafe { e.map_page(&dev(), p, big, dir, DmaAttrs::empty()) };
    let Err(DmaError::Growth {
        cause: GrowthError::Contiguous { source, .. },
        ..
    }) = &r
    else {
        panic!("{r:?}");
    };
    assert!(
        matches!(
            source,
            PlatformError::OrderTooLarge { max: 7, .. }
                | PlatformError::OrderRefused { max: 7, .. }
        ),
        "{source:?}"
    );
    e.unmap_page(&dev(), b, data.len(), dir, DmaAttrs::empty())
        .unwrap();
    unmap_all(&e, &first);
    let r = e.reclaim(0);
    let r = if r.removed == 0 { e.reclaim(1000) } else { r };
    assert_eq!((r.removed, r.remaining), (1, 0));
    assert_eq!(e.growth().unwrap().hook().in_use(), 0, "pages kept");
    assert_eq!(
        (pv.xen.free_frames(), pv.local_entries()),
        before,
        "frames lost"
    );
    pv.xen.check_invariants().unwrap();
}

/// The hook has no block of the chunk's order (512 KiB of pages for a 1 MiB chunk): the
/// engine grows a 512 KiB pool from what it has; when that is full and the hook has nothing
/// left that holds the mapping, the map fails naming the order it last asked for.
#[test]
fn a_hook_without_a_chunk_of_pages_grows_a_smaller_pool_arm64() {
    let arm = Arm::new();
    let hook = SimGrowth::arm(&arm.guest, 128, 64);
    let e = arm
        .engine(4 * SEGMENT)
        .with_growth(Box::new(Growth::new(hook, limits())));
    let buf = arm.guest.alloc_pages(2 * 256);
    let first = fill(&e, buf);
    let p = PhysAddr::new(buf.as_u64() + 4 * SEGMENT);
    let len = 300 << 10;
    let data = pattern(12, len);
    arm.mem.write(p, &data);
    let dir = DmaDirection::ToDevice;
    // SAFETY: as in `fill`.
    let b = unsafe { e.map_page(&dev(), p, len, dir, DmaAttrs::empty()) }
        .expect("a smaller pool holds 300 KiB");
    let mut got = vec![0; len];
    arm.mem.read(tlb(&e, b), &mut got);
    assert_eq!(got, data, "bounce contents");
    let s = e.growth_stats().unwrap();
    assert_eq!(
        (s.pools_added, s.smaller_chunks, s.bytes),
        (1, 1, 512 << 10)
    );
    // SAFETY: as in `fill`.
    let r = unsafe { e.map_page(&dev(), p, len, dir, DmaAttrs::empty()) };
    assert!(
        matches!(
            r,
            Err(DmaError::Growth {
                cause: GrowthError::NoPages { order: 7, .. },
                ..
            })
        ),
        "{r:?}"
    );
    e.unmap_page(&dev(), b, len, dir, DmaAttrs::empty())
        .unwrap();
    unmap_all(&e, &first);
    let r = e.reclaim(0);
    let r = if r.removed == 0 { e.reclaim(1000) } else { r };
    assert_eq!((r.removed, r.remaining), (1, 0));
    assert_eq!(e.growth().unwrap().hook().in_use(), 0, "pages kept");
    arm.xen.check_invariants().expect("invariants");
}

static AGE_NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn age_clock() -> u64 {
    AGE_NOW.load(std::sync::atomic::Ordering::Relaxed)
}

/// Live mappings per device, with their ages, across the first pool, a grown chunk and a
/// transient pool: the grown pools take the first pool's clock and record as it does.
#[test]
fn live_mappings_and_pool_reports_span_the_first_grown_and_transient_pools_x86_pv() {
    let pv = Pv::new();
    let before = pv.local_entries();
    {
        let hook = SimGrowth::pv(&pv.guest, 2048, 256);
        let mut e = pv.engine(4 * SEGMENT);
        e.set_mapping_clock(age_clock)
            .expect("storage for the records");
        let e = e.with_growth(Box::new(Growth::new(hook, limits())));
        let buf = pv.guest.alloc_pages(4 * 256);
        let at = |t: u64| AGE_NOW.store(t, std::sync::atomic::Ordering::Relaxed);
        let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
        // Device 0 (the default tag) fills the first pool at 10.
        at(10);
        let first = fill(&e, buf);
        // Device 5 grows a 1 MiB chunk at 40; device 9 a 1.5 MiB transient pool at 70.
        at(40);
        let disk = dev().with_tag(5);
        let p = PhysAddr::new(buf.as_u64() + CHUNK as u64);
        // SAFETY: as in `fill`.
        let small = unsafe { e.map_page(&disk, p, 4096, dir, none) }.expect("grows a chunk");
        at(70);
        let gpu = dev().with_tag(9);
        let big = 3 * CHUNK / 2;
        let q = PhysAddr::new(buf.as_u64() + 2 * CHUNK as u64);
        // SAFETY: as in `fill`.
        let large = unsafe { e.map_page(&gpu, q, big, dir, none) }.expect("a transient pool");
        assert!(!in_first(&e, small) && !in_first(&e, large));
        let s = e.growth_stats().unwrap();
        assert_eq!((s.live_pools, s.transient_live), (2, 1), "{s:?}");
        let live = e.live_mappings(100).expect("the engine records ages");
        let got: Vec<_> = live
            .devices()
            .iter()
            .map(|d| (d.tag, d.mappings, d.bytes, d.oldest))
            .collect();
        assert_eq!(
            got,
            [
                (0, 4, 4 * SEGMENT, 90),
                (5, 1, 4096, 60),
                (9, 1, big as u64, 30)
            ],
            "{live}"
        );
        // The grown pools' own reports: the chunk's two slots, the transient pool's 768.
        let mut used = Vec::new();
        let n = e.grown_pool_reports(|r| used.push((r.nslabs, r.used)));
        used.sort_unstable();
        assert_eq!((n, used), (2, vec![(512, 2), (1024, 768)]));
        // The transient pool goes at its unmap, and its mapping leaves the report.
        e.unmap_page(&gpu, large, big, dir, none).unwrap();
        e.unmap_page(&disk, small, 4096, dir, none).unwrap();
        unmap_all(&e, &first);
        assert_eq!(e.live_mappings(200).unwrap().mappings(), 0);
        assert_eq!(e.grown_pool_reports(|r| assert_eq!(r.used, 0)), 1);
        assert_eq!(e.reclaim(1000).removed + e.reclaim(2000).removed, 1);
        pv.xen.check_invariants().expect("invariants");
    }
    assert_eq!(pv.local_entries(), before, "a local frame was lost");
}
