//! The facade's Xen pool initialisation on the simulated machine: the pool made contiguous
//! below 4 GiB with fewer exchanges than Linux's one per segment, halved when memory below
//! 4 GiB is short, refused cleanly when there is none, and given back without losing a
//! machine frame.

mod common;

use common::*;
use swiotlb_core::{BusAddr, DmaMask, Platform, Slot};
use swiotlb_xen::init::{self, InitError, InitOptions, InitReport};
use xen_sim::SimOp;

const MIB: u64 = 1 << 20;
const GIB4: u64 = 1 << 32;

/// Checks that every page of every chunk is where the report says on the bus, below 4 GiB.
fn assert_chunks_contiguous(pv: &Pv, r: &InitReport) {
    let mut covered = 0;
    for c in &r.chunks {
        assert_eq!(
            c.bus.as_u64() % c.bytes(),
            0,
            "chunk naturally aligned on the bus"
        );
        for p in 0..c.bytes() / PAGE {
            assert_eq!(
                pv.machine(at(c.phys, p * PAGE)).as_u64(),
                c.bus.as_u64() + p * PAGE
            );
        }
        assert!(c.bus.as_u64() + c.bytes() <= GIB4);
        covered += c.bytes();
    }
    assert_eq!(covered, r.bytes as u64, "the chunks cover the pool");
}

/// Takes the engine apart and gives the pool back.
fn release<P: Platform>(engine: SimEngine<P, SimPages>, report: &InitReport) {
    let (platform, pool, _) = engine.into_parts();
    drop(pool);
    // SAFETY: the engine and pool are gone; the chunks were not given back before.
    unsafe { init::release(&platform, report) }.expect("release");
}

#[test]
fn x86_pv_pool_is_contiguous_below_4_gib_and_given_back() {
    let pv = Pv::new();
    let free = pv.xen.free_frames();
    let before = pv.xen.counters();
    let pool = pv.guest.alloc_aligned(1024, 1024);
    let pages = SimPages::pv(&pv.guest, 16);
    let (engine, report) = init_engine(
        sim::pv_platform(&pv.xen, &pv.guest),
        pv.guest.memory(),
        pool,
        4 * MIB,
        pages,
    );
    assert_eq!(report.bytes, 4 << 20);
    assert_eq!(report.halvings, 0);
    assert_chunks_contiguous(&pv, &report);
    let exchanges =
        pv.xen.counters().count(SimOp::MemoryExchange) - before.count(SimOp::MemoryExchange);
    // Each create call asks for rising limits, one exchange each, until one fits.
    assert!(exchanges >= u64::from(report.create_calls), "{exchanges}");
    let done = u64::from(report.create_calls - report.create_failures);
    assert_eq!(done, report.exchanged().count() as u64);
    assert!(
        done < 16,
        "fewer successful exchanges than Linux's one per segment: {done}"
    );
    // Linux pays an unmapping and a remapping of its segment for every limit it tries;
    // here a failed limit costs its exchange alone: every other trap is one `mmu_update`
    // list of the unmapping or the remapping of a chunk made contiguous (the remap's last
    // list in a multicall with the TLB flush).
    let traps = pv.xen.counters().traps() - before.traps();
    let batches: u64 = report
        .exchanged()
        .map(|c| (1u64 << c.order).div_ceil(swiotlb_xen::x86_pv::MMU_BATCH as u64))
        .sum();
    assert_eq!(report.create_failures, 0);
    assert_eq!(
        traps - exchanges,
        2 * batches,
        "one unmapping and one remapping per chunk"
    );
    let multicalls = pv.xen.counters().count(SimOp::Multicall) - before.count(SimOp::Multicall);
    assert_eq!(multicalls, report.exchanged().count() as u64);
    // dma_supported answers from the pool's real top.
    assert_eq!(engine.pool_bus_top(), Some(report.bus_top));
    let dev = pv.xen.device(DmaMask::BITS_32, true);
    let bits = 64 - report.bus_top.as_u64().leading_zeros();
    assert!(engine.dma_supported(&dev.core_device(), DmaMask::from_bits(bits).unwrap()));
    assert!(!engine.dma_supported(&dev.core_device(), DmaMask::from_bits(bits - 1).unwrap()));
    // The pool works: a page above 4 GiB bounces through it, every byte checked.
    let buf = pv.guest.alloc_pages(32);
    let high = (0..32)
        .map(|i| at(buf, i * PAGE))
        .find(|&p| pv.machine(p).as_u64() >= GIB4)
        .unwrap();
    let s = exercise(
        &pv.xen,
        &engine,
        &dev,
        &dev.core_device(),
        &pv.guest.memory(),
        high,
        4096,
        1,
        &no_iommu,
    );
    assert_eq!(s.bounced, [true; 3]);
    release(engine, &report);
    check_nothing_lost(&pv, free);
}

fn check_nothing_lost(pv: &Pv, free_before: u64) {
    pv.xen.check_invariants().unwrap();
    assert_eq!(pv.xen.free_frames(), free_before, "no machine frame lost");
    assert_eq!(
        pv.local_entries(),
        pv.guest.nr_pages(),
        "every pfn has its own frame"
    );
}

#[test]
fn x86_pv_pool_is_halved_when_memory_below_4_gib_is_short() {
    let pv = Pv::new();
    // Only [46 MiB, 48 MiB) stays free and contiguous below 4 GiB (besides dom0's and the
    // domU's scattered holes).
    pv.xen.hog_free_frames_below(46 * MIB);
    let free = pv.xen.free_frames();
    let pool = pv.guest.alloc_aligned(1024, 1024);
    let (engine, report) = init_engine(
        sim::pv_platform(&pv.xen, &pv.guest),
        pv.guest.memory(),
        pool,
        4 * MIB,
        SimPages::pv(&pv.guest, 16),
    );
    assert!(report.halvings >= 1, "{report:?}");
    assert!(
        report.bytes < 4 << 20 && report.bytes >= 1 << 20,
        "{report:?}"
    );
    assert_eq!(report.nslabs, report.bytes / 2048);
    assert_chunks_contiguous(&pv, &report);
    let dev = pv.xen.device(DmaMask::BITS_32, true);
    let buf = pv.guest.alloc_pages(4);
    let s = exercise(
        &pv.xen,
        &engine,
        &dev,
        &dev.core_device(),
        &pv.guest.memory(),
        at(buf, 100),
        3 * 4096,
        1,
        &no_iommu,
    );
    assert_eq!(s.bounced, [true; 3]);
    release(engine, &report);
    check_nothing_lost(&pv, free);
}

#[test]
fn x86_pv_init_fails_cleanly_without_memory_below_4_gib() {
    let pv = Pv::new();
    pv.xen.hog_free_frames_below(GIB4);
    let free = pv.xen.free_frames();
    let pool = pv.guest.alloc_aligned(1024, 1024);
    let storage: Box<[Slot]> = (0..2048).map(|_| Slot::new()).collect();
    // SAFETY: as `init_engine`.
    let r = unsafe {
        init::init(
            sim::pv_platform(&pv.xen, &pv.guest),
            pv.guest.memory(),
            pool,
            4 << 20,
            storage,
            SimPages::pv(&pv.guest, 16),
            InitOptions::default(),
        )
    };
    let Err(err) = r else {
        panic!("init succeeded without memory below 4 GiB")
    };
    assert!(matches!(err, InitError::Exhausted { .. }), "{err}");
    check_nothing_lost(&pv, free);
}

#[test]
fn arm64_pool_needs_no_exchange() {
    let arm = Arm::new();
    let before = arm.xen.counters();
    let pool = arm.guest.alloc_aligned(1024, 1024);
    let (engine, report) = init_engine(
        arm.platform(),
        arm.mem.clone(),
        pool,
        4 * MIB,
        SimPages::arm(&arm.guest, 16),
    );
    assert_eq!((report.create_calls, report.halvings), (0, 0));
    assert_eq!(report.exchanged().count(), 0);
    assert_eq!(
        report.bus_top,
        BusAddr::new(pool.as_u64() + 4 * MIB - 1),
        "1:1"
    );
    let after = arm.xen.counters();
    assert_eq!(
        after.count(SimOp::MemoryExchange),
        before.count(SimOp::MemoryExchange)
    );
    // The pool works: memory above 4 GiB bounces through it for a 32-bit device.
    let dev = arm.xen.device(DmaMask::BITS_32, true);
    let (bank1, _) = arm.guest.ram_banks()[1];
    assert!(bank1.as_u64() >= GIB4);
    let high = arm.guest.alloc_pages(arm.guest.ram_banks()[0].1 / PAGE);
    assert!(high.as_u64() >= GIB4);
    let s = exercise(
        &arm.xen,
        &engine,
        &dev,
        &dev.core_device(),
        &arm.mem,
        at(high, 8),
        5000,
        1,
        &no_iommu,
    );
    assert_eq!(s.bounced, [true; 3]);
    release(engine, &report);
    arm.xen.check_invariants().unwrap();
}
