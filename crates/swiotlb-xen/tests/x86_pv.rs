//! The DMA engine on a simulated x86 PV dom0: a scrambled P2M, 32-bit and 64-bit devices,
//! buffers that straddle machine discontinuities, foreign pages, IOMMU devices, forced
//! bouncing, scatter-gather lists (with a failure in the middle) and coherent allocations.
//! Every byte the device reads or writes is checked, and the simulator's and the pool's
//! invariants after every step.

mod common;

use common::*;
use swiotlb_core::engine::{BounceReason, DmaError, SgEntry};
use swiotlb_core::{
    BusAddr, DmaAttrs, DmaDirection, DmaMask, Error, PhysAddr, Platform, PlatformError,
};
use xen_sim::SimOp;

const MIB: u64 = 1 << 20;
const GIB4: u64 = 1 << 32;

/// The first page of `pages` pages at `buf` whose frame lies below (or at or above) 4 GiB.
fn page_where(pv: &Pv, buf: PhysAddr, pages: u64, low: bool) -> PhysAddr {
    (0..pages)
        .map(|i| at(buf, i * PAGE))
        .find(|&p| (pv.machine(p).as_u64() < GIB4) == low)
        .expect("the scrambled P2M has frames in both regions")
}

#[test]
fn a_32_bit_device_bounces_what_it_cannot_reach_and_a_64_bit_device_does_not() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let d64 = pv.xen.device(DmaMask::FULL, true);
    let buf = pv.guest.alloc_pages(64);
    let cpu = pv.guest.memory();
    for (low, offset, len) in [
        (true, 0, 4096),
        (false, 0, 4096),
        (true, 100, 1000),
        (false, 3000, 1096),
    ] {
        let page = page_where(&pv, buf, 64, low);
        let phys = at(page, offset);
        let machine = pv.machine(phys);
        let s = exercise(
            &pv.xen,
            &engine,
            &d32,
            &d32.core_device(),
            &cpu,
            phys,
            len,
            offset,
            &no_iommu,
        );
        assert_eq!(s.bounced[0], !low, "32-bit device, frame {machine}");
        if low {
            assert_eq!(s.bus[0], machine, "a reachable page is used where it is");
        } else {
            assert!(s.bus.iter().all(|b| b.as_u64() + len as u64 <= GIB4));
        }
        let s = exercise(
            &pv.xen,
            &engine,
            &d64,
            &d64.core_device(),
            &cpu,
            phys,
            len,
            offset,
            &no_iommu,
        );
        assert_eq!(s.bounced, [false; 3], "64-bit device");
        assert_eq!(s.bus, [machine; 3]);
    }
    let st = engine.stats();
    assert_eq!(st.bounced_by_reason[BounceReason::OutsideMask.index()], 6);
    assert_eq!(st.bounced_maps, 6);
    assert_eq!(st.direct_maps, 18);
    assert_eq!(st.map_failures + st.unmap_sync_failures, 0);
}

#[test]
fn buffers_that_straddle_a_machine_discontinuity_are_bounced() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let d64 = pv.xen.device(DmaMask::FULL, true);
    let dev = d64.core_device();
    let cpu = pv.guest.memory();
    // 16 scrambled pages: no two neighbours are machine neighbours here.
    let buf = pv.guest.alloc_pages(16);
    assert!(!engine.platform().is_bus_contiguous(buf, 16 * PAGE));
    for (offset, len) in [(4000, 200), (0, 8192), (2048, 60 * 1024)] {
        let s = exercise(
            &pv.xen,
            &engine,
            &d64,
            &dev,
            &cpu,
            at(buf, offset),
            len,
            offset,
            &no_iommu,
        );
        assert_eq!(s.bounced, [true; 3], "{len} bytes at +{offset}");
    }
    assert_eq!(
        engine.stats().bounced_by_reason[BounceReason::NotContiguous.index()],
        9
    );
    // The same straddle over two pages made machine-contiguous is direct.
    let pair = pv.guest.alloc_aligned(2, 2);
    // SAFETY: the pages are the test's and unused.
    let bus = unsafe { engine.platform().create_contiguous_region(pair, 1, 40) }.unwrap();
    let s = exercise(
        &pv.xen,
        &engine,
        &d64,
        &dev,
        &cpu,
        at(pair, 4000),
        200,
        9,
        &no_iommu,
    );
    assert_eq!(s.bounced, [false; 3]);
    assert_eq!(s.bus[0].as_u64(), bus.as_u64() + 4000);
    // SAFETY: as above; made contiguous with order 1.
    unsafe { engine.platform().destroy_contiguous_region(pair, 1) }.unwrap();
    check(&pv.xen, &engine, &[&d64]);
    assert_eq!(pv.local_entries(), pv.guest.nr_pages());
}

#[test]
fn foreign_pages_granted_by_the_domu() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    let domu = pv.xen.domu_guest();
    let refs = domu.grant_pages(24);
    let grants = grants::PvGrants::new(&pv.guest, &pv.dom0, 24).unwrap();
    use grants::GrantMapper;
    let mapped = grants.map(pv.xen.domu().id(), &refs).unwrap();
    check(&pv.xen, &engine, &[&d32]);
    let (mut low, mut high) = (0, 0);
    for (i, g) in mapped.iter().enumerate() {
        // The domU's data reaches the device; the device's data reaches the domU.
        let data = pattern(100 + i as u64, 4096);
        domu.write_page(g.gref, 0, &data).unwrap();
        // SAFETY: the foreign page stays mapped until after the unmap.
        let bus = unsafe {
            engine.map_page(
                &dev,
                g.phys,
                4096,
                DmaDirection::ToDevice,
                DmaAttrs::empty(),
            )
        }
        .unwrap();
        let reachable = g.machine.as_u64() < GIB4;
        assert_eq!(
            is_bounced(&engine, bus),
            !reachable,
            "foreign frame {}",
            g.machine
        );
        if reachable {
            low += 1;
            assert_eq!(
                bus, g.machine,
                "a reachable foreign page is used where it is"
            );
        } else {
            high += 1;
        }
        same(&d32.read(bus, 4096).unwrap(), &data, "the device read");
        engine
            .unmap_page(&dev, bus, 4096, DmaDirection::ToDevice, DmaAttrs::empty())
            .unwrap();
        let back = pattern(200 + i as u64, 4096);
        // SAFETY: as above.
        let bus = unsafe {
            engine.map_page(
                &dev,
                g.phys,
                4096,
                DmaDirection::FromDevice,
                DmaAttrs::empty(),
            )
        }
        .unwrap();
        d32.write(bus, &back).unwrap();
        engine
            .unmap_page(&dev, bus, 4096, DmaDirection::FromDevice, DmaAttrs::empty())
            .unwrap();
        same(&domu.read_page(g.gref).unwrap(), &back, "the domU received");
        check(&pv.xen, &engine, &[&d32]);
    }
    assert!(low > 0 && high > 0, "{low} low, {high} high foreign frames");
    // Two foreign pages side by side in dom0 are not machine neighbours: a buffer across
    // them is bounced, and both halves arrive.
    let s = exercise(
        &pv.xen,
        &engine,
        &d32,
        &dev,
        &pv.guest.memory(),
        at(mapped[0].phys, 3000),
        2000,
        7,
        &no_iommu,
    );
    assert_eq!(s.bounced, [true; 3]);
    grants.unmap(&mapped).unwrap();
    grants.restore().unwrap();
    check(&pv.xen, &engine, &[&d32]);
    assert_eq!(pv.local_entries(), pv.guest.nr_pages(), "a frame was lost");
}

#[test]
fn a_device_behind_an_iommu_gets_the_physical_address() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    // A 32-bit device behind an IOMMU: it uses 32-bit addresses (IOVAs, here the guest's
    // own), which the IOMMU translates to machine addresses anywhere; the simulated device
    // stands for the IOMMU's side and reaches all machine memory.
    let behind = pv.xen.device(DmaMask::FULL, true);
    let dev = swiotlb_core::Device::new(DmaMask::BITS_32).with_iommu(true);
    let buf = pv.guest.alloc_pages(16);
    assert!(buf.as_u64() + 16 * PAGE <= GIB4);
    // The IOMMU translates the guest's addresses page by page to machine addresses.
    let iommu = |bus: BusAddr, len: usize| {
        let mut out = Vec::new();
        let mut a = bus.as_u64();
        let end = a + len as u64;
        while a < end {
            let n = (PAGE - a % PAGE).min(end - a);
            out.push((pv.machine(PhysAddr::new(a)), n as usize));
            a += n;
        }
        out
    };
    let used = engine.stats().pool.unwrap().maps;
    let s = exercise(
        &pv.xen,
        &engine,
        &behind,
        &dev,
        &pv.guest.memory(),
        at(buf, 512),
        15 * 4096,
        3,
        &iommu,
    );
    assert!(
        (0..16).any(|i| pv.machine(at(buf, i * PAGE)).as_u64() >= GIB4),
        "some pages lie beyond the device's own reach"
    );
    assert_eq!(s.bounced, [false; 3]);
    assert_eq!(
        s.bus,
        [BusAddr::new(buf.as_u64() + 512); 3],
        "no translation"
    );
    assert_eq!(
        engine.stats().pool.unwrap().maps,
        used,
        "the pool was not touched"
    );
    assert!(engine.dma_supported(&dev, DmaMask::from_bits(16).unwrap()));
}

#[test]
fn forced_bouncing_bounces_even_what_the_device_reaches() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let d64 = pv.xen.device(DmaMask::FULL, true);
    let dev = d64.core_device().with_force_bounce(true);
    let page = pv.guest.alloc_pages(1);
    let copied = engine.stats().pool.unwrap().bytes_bounced;
    let s = exercise(
        &pv.xen,
        &engine,
        &d64,
        &dev,
        &pv.guest.memory(),
        at(page, 10),
        3000,
        5,
        &no_iommu,
    );
    assert_eq!(s.bounced, [true; 3]);
    let st = engine.stats();
    assert_eq!(st.bounced_by_reason[BounceReason::Forced.index()], 3);
    assert!(st.pool.unwrap().bytes_bounced - copied >= 3 * 3000);
}

#[test]
fn scatter_gather_lists_map_verify_and_unwind() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    let cpu = pv.guest.memory();
    let buf = pv.guest.alloc_pages(32);
    let low = page_where(&pv, buf, 32, true);
    let high = page_where(&pv, buf, 32, false);
    let mut sg = [
        SgEntry::new(low, 4096),
        SgEntry::new(at(high, 512), 1024),
        SgEntry::new(at(buf, 4096 * 8 + 3000), 9000),
        SgEntry::new(at(buf, 4096 * 30 + 100), 64),
    ];
    let in_reach = |p: PhysAddr| pv.machine(p).as_u64() < GIB4;
    let expect_bounced = [false, true, true, !in_reach(sg[3].phys)];
    let datas: Vec<Vec<u8>> = sg
        .iter()
        .enumerate()
        .map(|(i, e)| pattern(i as u64, e.length))
        .collect();
    for (e, d) in sg.iter().zip(&datas) {
        cpu.write(e.phys, d);
    }
    // SAFETY: the buffers are the test's until unmap_sg.
    let n =
        unsafe { engine.map_sg(&dev, &mut sg, DmaDirection::ToDevice, DmaAttrs::empty()) }.unwrap();
    assert_eq!(n, 4);
    check(&pv.xen, &engine, &[&d32]);
    for (e, d) in sg.iter().zip(&datas) {
        assert_eq!(e.dma_length, e.length);
        same(
            &d32.read(e.dma_address, e.dma_length).unwrap(),
            d,
            "the device read",
        );
    }
    assert_eq!(
        [0, 1, 2, 3].map(|i| is_bounced(&engine, sg[i].dma_address)),
        expect_bounced
    );
    engine
        .unmap_sg(&dev, &sg, DmaDirection::ToDevice, DmaAttrs::empty())
        .unwrap();
    assert_eq!(pool_used(&engine), 0);
    check(&pv.xen, &engine, &[&d32]);

    // From the device, with a partial sync of the list before the unmap.
    let mut sg2 = [sg[1], sg[2]].map(|e| SgEntry::new(e.phys, e.length));
    // SAFETY: as above.
    unsafe { engine.map_sg(&dev, &mut sg2, DmaDirection::FromDevice, DmaAttrs::empty()) }.unwrap();
    let back: Vec<Vec<u8>> = sg2
        .iter()
        .enumerate()
        .map(|(i, e)| pattern(50 + i as u64, e.length))
        .collect();
    for (e, d) in sg2.iter().zip(&back) {
        d32.write(e.dma_address, d).unwrap();
    }
    engine
        .sync_sg_for_cpu(&dev, &sg2, DmaDirection::FromDevice)
        .unwrap();
    for (e, d) in sg2.iter().zip(&back) {
        let mut got = vec![0u8; e.length];
        cpu.read(e.phys, &mut got);
        same(&got, d, "after sync_sg_for_cpu");
    }
    engine
        .unmap_sg(&dev, &sg2, DmaDirection::FromDevice, DmaAttrs::empty())
        .unwrap();
    check(&pv.xen, &engine, &[&d32]);

    // A failure in the middle: the third entry cannot be bounced (one byte longer than the
    // pool's longest bus-contiguous run), the two before it are unmapped again and the pool
    // is as it was.
    let used = pool_used(&engine);
    let big = pv.guest.alloc_pages(80);
    let mut sg3 = [
        SgEntry::new(high, 2048),
        SgEntry::new(at(buf, 4096 * 20), 20_000),
        SgEntry::new(big, engine.max_mapping_size(&dev) + 1),
        SgEntry::new(low, 512),
    ];
    // SAFETY: as above.
    let err = unsafe { engine.map_sg(&dev, &mut sg3, DmaDirection::ToDevice, DmaAttrs::empty()) }
        .unwrap_err();
    assert_eq!((err.index, err.unwound, err.failures), (2, 2, 1));
    assert!(
        matches!(
            err.source,
            DmaError::Bounce {
                source: Error::TooLarge { .. } | Error::ExceedsSegment { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(sg3[..=2].iter().all(|e| e.dma_length == 0));
    assert_eq!(
        pool_used(&engine),
        used,
        "the unwinding gave every slot back"
    );
    check(&pv.xen, &engine, &[&d32]);
    assert_eq!(engine.stats().sg_failures, 1);
}

#[test]
fn a_full_pool_fails_an_sg_list_in_the_middle_and_unwinds() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    let buf = pv.guest.alloc_pages(5 * 64);
    // Five scrambled 256 KiB buffers need five segments; the pool has four.
    let mut sg: Vec<SgEntry> = (0..5)
        .map(|i| SgEntry::new(at(buf, i * 256 * 1024), 256 * 1024))
        .collect();
    let free_before: Vec<_> = (0..4)
        .map(|i| engine.pool().unwrap().free_count(i))
        .collect();
    // SAFETY: the buffers are the test's.
    let err = unsafe { engine.map_sg(&dev, &mut sg, DmaDirection::ToDevice, DmaAttrs::empty()) }
        .unwrap_err();
    assert_eq!((err.index, err.unwound), (4, 4));
    assert!(
        matches!(
            err.source,
            DmaError::Bounce {
                source: Error::PoolFull { .. },
                ..
            }
        ),
        "{err}"
    );
    let free_after: Vec<_> = (0..4)
        .map(|i| engine.pool().unwrap().free_count(i))
        .collect();
    assert_eq!(free_after, free_before);
    assert_eq!(pool_used(&engine), 0);
    check(&pv.xen, &engine, &[&d32]);
}

#[test]
fn coherent_allocations_are_contiguous_below_the_mask_and_given_back() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    let cpu = pv.guest.memory();
    let free_before = pv.xen.free_frames();
    let exchanges_before = pv.xen.counters().count(SimOp::MemoryExchange);
    let mut allocs = Vec::new();
    for (i, size) in [100usize, 4096, 5000, 16384, 40_000, 65536]
        .into_iter()
        .enumerate()
    {
        let a = engine.alloc_coherent(&dev, size).unwrap();
        let pages = 1u64 << a.order();
        assert!(
            a.bus().as_u64() + pages * PAGE <= GIB4,
            "below the coherent mask"
        );
        assert_eq!(
            a.bus().as_u64() % (pages * PAGE),
            0,
            "naturally aligned on the bus"
        );
        for p in 0..pages {
            assert_eq!(
                pv.machine(at(a.phys(), p * PAGE)).as_u64(),
                a.bus().as_u64() + p * PAGE,
                "bus-contiguous"
            );
        }
        let mut zero = vec![0xffu8; size];
        cpu.read(a.phys(), &mut zero);
        assert!(zero.iter().all(|&b| b == 0), "zeroed");
        // Both sides see each other's writes without syncs.
        let data = pattern(i as u64, size);
        cpu.write(a.phys(), &data);
        same(&d32.read(a.bus(), size).unwrap(), &data, "the device read");
        let back = pattern(10 + i as u64, size);
        d32.write(a.bus(), &back).unwrap();
        let mut got = vec![0u8; size];
        cpu.read(a.phys(), &mut got);
        same(&got, &back, "the CPU read");
        check(&pv.xen, &engine, &[&d32]);
        allocs.push(a);
    }
    let st = engine.stats();
    assert!(
        st.coherent_exchanged >= 4,
        "the scrambled P2M needs exchanges: {st:?}"
    );
    let exchanged = allocs.iter().filter(|a| a.is_exchanged()).count() as u64;
    assert_eq!(
        pv.xen.counters().count(SimOp::MemoryExchange) - exchanges_before,
        exchanged
    );
    for a in allocs {
        // SAFETY: nothing uses the allocation any more.
        unsafe { engine.free_coherent(&dev, a) }.unwrap();
        check(&pv.xen, &engine, &[&d32]);
    }
    assert_eq!(engine.pages().in_use(), 0);
    assert_eq!(
        pv.xen.counters().count(SimOp::MemoryExchange) - exchanges_before,
        2 * exchanged,
        "every exchange given back"
    );
    assert_eq!(pv.xen.free_frames(), free_before, "no machine frame lost");
    assert_eq!(
        pv.local_entries(),
        pv.guest.nr_pages(),
        "every pfn has its own frame"
    );
    // A one-page allocation for a 64-bit device needs no exchange.
    let d64 = pv.xen.device(DmaMask::FULL, true).core_device();
    let a = engine.alloc_coherent(&d64, 4096).unwrap();
    assert!(!a.is_exchanged());
    // SAFETY: unused.
    unsafe { engine.free_coherent(&d64, a) }.unwrap();
}

/// The `mmu_update` lists of one unmapping or remapping of `pages` pages.
fn mmu_lists(pages: u64) -> u64 {
    pages.div_ceil(swiotlb_xen_x86_pv::MMU_BATCH as u64)
}

/// Linux's `xen_create_contiguous_region` for `2^order` pages, `(traps, exchanges)`: before
/// 2025 nothing above its `MAX_CONTIG_ORDER` (9; `-ENOMEM` before any hypercall, so its
/// `alloc_coherent` of more than 2 MiB fails); since the 2025 growable `discontig_frames`,
/// any order, with a zap and a remap of one `update_va_mapping` per page in multicalls of 32
/// (`MC_BATCH`) around one `XENMEM_exchange`, paid again on every attempt Xen refuses.
fn linux_contiguous_region(order: u32, since_2025: bool) -> Option<(u64, u64)> {
    (since_2025 || order <= 9).then(|| (2 * (1u64 << order).div_ceil(32) + 1, 1))
}

/// A 4 MiB (order-10) coherent allocation on a dom0 whose Xen allows order 18 (x86's
/// default `memop-max-order` for the control domain): one batched `XENMEM_exchange` of 1024
/// order-0 frames for one order-10 extent, with the unmapping and remapping in `mmu_update`
/// lists of 128. Linux before 2025 refuses the order (its `MAX_CONTIG_ORDER` is 9); since
/// 2025 it makes the same single exchange with four times the traps around it.
#[test]
fn a_4_mib_coherent_allocation_is_one_exchange_on_a_dom0_that_xen_allows() {
    let pv = Pv::new();
    let engine = pv.engine_with_pages(MIB, 2048);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    let free = pv.xen.free_frames();
    let size = 4 << 20;
    pv.xen.reset_counters();
    let a = engine.alloc_coherent(&dev, size).unwrap();
    let c = pv.xen.counters();
    let (exchanges, traps) = (c.count(SimOp::MemoryExchange), c.traps());
    assert_eq!(a.order(), 10);
    assert!(a.is_exchanged());
    assert_eq!(exchanges, 1, "one batched exchange");
    assert_eq!(traps, 2 * mmu_lists(1024) + 1, "unmap, exchange, remap");
    assert_eq!(linux_contiguous_region(10, false), None, "old Linux cannot");
    let (linux_traps, linux_exchanges) = linux_contiguous_region(10, true).unwrap();
    println!(
        "order-10 coherent allocation: {traps} hypercalls, {exchanges} XENMEM_exchange; \
         Linux before 2025: refused (MAX_CONTIG_ORDER 9); since 2025: {linux_traps} \
         hypercalls, {linux_exchanges} XENMEM_exchange"
    );
    assert_eq!(exchanges, linux_exchanges);
    assert_eq!(
        4 * (traps - 1),
        linux_traps - 1,
        "lists of 128 against multicalls of 32"
    );
    assert!(a.bus().as_u64() + size as u64 <= GIB4);
    assert_eq!(
        a.bus().as_u64() % size as u64,
        0,
        "naturally aligned on the bus"
    );
    for p in (0..1024).map(|p| p * PAGE) {
        assert_eq!(pv.machine(at(a.phys(), p)).as_u64(), a.bus().as_u64() + p);
    }
    let data = pattern(3, size);
    pv.guest.memory().write(a.phys(), &data);
    same(&d32.read(a.bus(), size).unwrap(), &data, "the device read");
    check(&pv.xen, &engine, &[&d32]);
    // SAFETY: nothing uses the allocation any more.
    unsafe { engine.free_coherent(&dev, a) }.unwrap();
    assert_eq!(pv.xen.counters().count(SimOp::MemoryExchange), 2);
    check(&pv.xen, &engine, &[&d32]);
    assert_eq!(pv.xen.free_frames(), free, "no machine frame lost");
    assert_eq!(pv.local_entries(), pv.guest.nr_pages());
}

/// On a dom0 whose Xen allows order 9 only (`memop-max-order=9,9,9,9`), a 4 MiB coherent
/// allocation fails naming the limit Xen taught (one refused exchange, the region
/// restored, the pages given back), the next one fails the same way without a hypercall
/// (Linux since 2025 pays the zap, the exchange and the remap again, 65 traps, every time),
/// 2 MiB still works, and no frame or page is lost.
#[test]
fn a_coherent_allocation_above_the_domains_limit_fails_naming_it_once_learnt() {
    let pv = Pv::with_config(xen_sim::SimConfig::x86_pv().with_memop_max_order(9, 9, 9, 9));
    let engine = pv.engine_with_pages(MIB, 2048);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    let free = pv.xen.free_frames();
    // First Xen's refusal (named, with the limit now remembered), then the platform's own.
    let refused = |e: &DmaError, attempt| match e {
        DmaError::CoherentContiguous {
            order: 10, source, ..
        } => {
            let named = if attempt == 0 {
                PlatformError::OrderRefused {
                    op: "XENMEM_exchange",
                    errno: 1,
                    order: 10,
                    max: 9,
                }
            } else {
                PlatformError::OrderTooLarge { order: 10, max: 9 }
            };
            *source == named && source.order_limit() == Some(9)
        }
        _ => false,
    };
    for attempt in 0..2 {
        pv.xen.reset_counters();
        let e = engine.alloc_coherent(&dev, 4 << 20).unwrap_err();
        assert!(refused(&e, attempt), "attempt {attempt}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("order 10") && msg.contains(" 9"), "{msg}");
        println!("attempt {attempt}: {msg}");
        let c = pv.xen.counters();
        let expected = if attempt == 0 {
            (1, 2 * mmu_lists(1024) + 1)
        } else {
            (0, 0)
        };
        assert_eq!(
            (c.count(SimOp::MemoryExchange), c.traps()),
            expected,
            "attempt {attempt}"
        );
        assert_eq!(engine.pages().in_use(), 0, "the pages were given back");
        assert!(engine.pages().quarantined().is_empty());
        check(&pv.xen, &engine, &[&d32]);
        assert_eq!(pv.xen.free_frames(), free, "no machine frame lost");
        assert_eq!(pv.local_entries(), pv.guest.nr_pages());
    }
    assert_eq!(engine.platform().max_order(), 9);
    let a = engine.alloc_coherent(&dev, 2 << 20).unwrap();
    assert!(a.is_exchanged() && a.order() == 9);
    // SAFETY: nothing uses the allocation any more.
    unsafe { engine.free_coherent(&dev, a) }.unwrap();
    assert_eq!(engine.stats().coherent_failures, 2);
    check(&pv.xen, &engine, &[&d32]);
    assert_eq!(pv.xen.free_frames(), free, "no machine frame lost");
}

/// Xen 4.21 removed `GNTTABOP_cache_flush` on x86 (`-ENOSYS`, the answer of a Xen that
/// never had it). That is normal here: x86 DMA is cache-coherent and the x86 PV platform
/// never asks for it, so bounced and direct maps, syncs and coherent allocations behave on
/// 4.21 exactly as on 4.20, with no `GNTTABOP_cache_flush` at all.
#[test]
fn xen_4_21_without_gnttabop_cache_flush_is_normal_on_x86() {
    let mut seen = Vec::new();
    for (major, minor) in [(4, 20), (4, 21)] {
        let pv = Pv::with_config(xen_sim::SimConfig::x86_pv().with_xen_version(major, minor));
        assert_eq!(
            xen_abi::ops::cache_flush_probe(&pv.dom0),
            (major, minor) < (4, 21),
            "{major}.{minor}"
        );
        let engine = pv.engine(MIB);
        pv.xen.reset_counters();
        let d32 = pv.xen.device(DmaMask::BITS_32, true);
        let buf = pv.guest.alloc_pages(64);
        let mut bounced = Vec::new();
        for low in [true, false] {
            let phys = at(page_where(&pv, buf, 64, low), 100);
            let s = exercise(
                &pv.xen,
                &engine,
                &d32,
                &d32.core_device(),
                &pv.guest.memory(),
                phys,
                1000,
                7,
                &no_iommu,
            );
            bounced.push(s.bounced);
        }
        let a = engine.alloc_coherent(&d32.core_device(), 16384).unwrap();
        // SAFETY: nothing uses the allocation any more.
        unsafe { engine.free_coherent(&d32.core_device(), a) }.unwrap();
        check(&pv.xen, &engine, &[&d32]);
        assert_eq!(
            pv.xen.counters().count(SimOp::CacheFlush),
            0,
            "{major}.{minor}"
        );
        let st = engine.stats();
        assert_eq!(st.map_failures + st.unmap_sync_failures, 0);
        seen.push(bounced);
    }
    assert_eq!(seen[0], seen[1], "the same decisions on 4.20 and 4.21");
}

#[test]
fn dma_supported_answers_from_the_pools_real_bus_addresses() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let top = engine.pool_bus_top().unwrap().as_u64();
    let dev = pv.xen.device(DmaMask::BITS_32, true).core_device();
    assert!(top < GIB4);
    assert!(engine.dma_supported(&dev, DmaMask::BITS_32));
    let bits = 64 - top.leading_zeros();
    assert!(engine.dma_supported(&dev, DmaMask::from_bits(bits).unwrap()));
    assert!(!engine.dma_supported(&dev, DmaMask::from_bits(bits - 1).unwrap()));
    // The 1 MiB pool is one machine-contiguous chunk: a mapping may span all of it.
    assert_eq!(engine.max_mapping_size(&dev), 1024 * 1024);
    assert_eq!(
        engine.max_mapping_size(&dev.with_min_align_mask(0xfff)),
        1024 * 1024 - 4096
    );
    // Linux's answer for any pool.
    assert_eq!(swiotlb_core::max_mapping_size(&dev), 256 * 1024);
}

#[test]
fn the_coherent_mask_not_the_streaming_mask_bounds_coherent_allocations() {
    let pv = Pv::new();
    let engine = pv.engine(MIB);
    let sdev = pv.xen.device(DmaMask::FULL, true);
    // A 64-bit device whose coherent allocations must lie below 4 GiB (as many NICs).
    let dev = sdev.core_device().with_coherent_mask(DmaMask::BITS_32);
    let free = pv.xen.free_frames();
    let allocs: Vec<_> = (0..8)
        .map(|_| engine.alloc_coherent(&dev, 8192).unwrap())
        .collect();
    for (i, a) in allocs.iter().enumerate() {
        assert!(a.bus().as_u64() + 8192 <= GIB4, "{i}: {}", a.bus());
        let data = pattern(i as u64, 8192);
        sdev.write(a.bus(), &data).unwrap();
        let mut got = vec![0u8; 8192];
        pv.guest.read(a.phys(), &mut got);
        same(&got, &data, "the CPU read");
    }
    assert!(allocs.iter().any(|a| a.is_exchanged()));
    // Streaming maps still use the 64-bit mask: a page above 4 GiB is direct.
    let buf = pv.guest.alloc_pages(32);
    let high = (0..32)
        .map(|i| at(buf, i * PAGE))
        .find(|&p| pv.machine(p).as_u64() >= GIB4)
        .unwrap();
    let s = exercise(
        &pv.xen,
        &engine,
        &sdev,
        &dev,
        &pv.guest.memory(),
        high,
        4096,
        3,
        &no_iommu,
    );
    assert_eq!(s.bounced, [false; 3]);
    for a in allocs {
        // SAFETY: nothing uses the allocation any more.
        unsafe { engine.free_coherent(&dev, a) }.unwrap();
    }
    check(&pv.xen, &engine, &[&sdev]);
    assert_eq!(pv.xen.free_frames(), free);
    assert_eq!(pv.local_entries(), pv.guest.nr_pages());
}

#[test]
fn concurrent_maps_and_coherent_allocations_from_several_cpus() {
    let pv = Pv::new();
    let engine = pv.engine(2 * MIB);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    let bufs: Vec<PhysAddr> = (0..4).map(|_| pv.guest.alloc_pages(8)).collect();
    std::thread::scope(|s| {
        for (t, &buf) in bufs.iter().enumerate() {
            let (engine, d32, cpu) = (&engine, &d32, pv.guest.memory());
            s.spawn(move || {
                for i in 0..60u64 {
                    let len = 512 + (i as usize * 997 + t * 131) % (7 * 4096);
                    let phys = at(buf, (i * 61) % 4096);
                    let seed = (t as u64) << 32 | i;
                    let data = pattern(seed, len);
                    cpu.write(phys, &data);
                    // SAFETY: the buffer is this thread's alone.
                    let bus = unsafe {
                        engine.map_page(
                            &dev,
                            phys,
                            len,
                            DmaDirection::Bidirectional,
                            DmaAttrs::empty(),
                        )
                    }
                    .unwrap();
                    same(&d32.read(bus, len).unwrap(), &data, "the device read");
                    let back = pattern(seed ^ 0xffff, len);
                    d32.write(bus, &back).unwrap();
                    engine
                        .unmap_page(
                            &dev,
                            bus,
                            len,
                            DmaDirection::Bidirectional,
                            DmaAttrs::empty(),
                        )
                        .unwrap();
                    let mut got = vec![0u8; len];
                    cpu.read(phys, &mut got);
                    same(&got, &back, "the CPU read");
                    if i % 10 == 0 {
                        // Exchanges from several CPUs at once.
                        let a = engine.alloc_coherent(&dev, 16384).unwrap();
                        assert!(a.bus().as_u64() + 16384 <= GIB4);
                        // SAFETY: unused.
                        unsafe { engine.free_coherent(&dev, a) }.unwrap();
                    }
                }
            });
        }
    });
    check(&pv.xen, &engine, &[&d32]);
    assert_eq!(pool_used(&engine), 0);
    assert_eq!(pv.local_entries(), pv.guest.nr_pages());
    let st = engine.stats();
    assert_eq!(st.direct_maps + st.bounced_maps, 240);
    assert_eq!(st.coherent_allocs, st.coherent_frees);
}

/// The longest mapping a pool of init's `report` can hold for a device without boundary or
/// alignment mask: the longest run of chunks each bus-contiguous with the next.
fn longest_bus_run(report: &swiotlb_xen::init::InitReport) -> u64 {
    let (mut best, mut run, mut next_bus) = (0, 0, None);
    for c in &report.chunks {
        run = if Some(c.bus.as_u64()) == next_bus {
            run + c.bytes()
        } else {
            c.bytes()
        };
        best = best.max(run);
        next_bus = Some(c.bus.as_u64() + c.bytes());
    }
    best
}

#[test]
fn a_2_mib_map_spans_the_segments_of_a_machine_contiguous_chunk() {
    let pv = Pv::new();
    let (engine, report) = pv.engine_with(4 * MIB, swiotlb_xen::init::InitOptions::default());
    // One 4 MiB chunk made machine-contiguous: a mapping may span all of it.
    assert_eq!(longest_bus_run(&report), 4 * MIB);
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    assert_eq!(engine.max_mapping_size(&dev), 4 << 20);
    assert_eq!(
        engine.max_mapping_size(&dev.with_min_align_mask(0xfff)),
        (4 << 20) - 4096
    );
    // A 64 KiB boundary still caps it.
    assert_eq!(
        engine.max_mapping_size(&dev.with_seg_boundary_mask(0xffff)),
        64 << 10
    );
    // 2 MiB of scattered frames (the P2M is scrambled): bounced, in every direction, every
    // byte checked each way, syncs included, and every invariant after each step.
    let len = 2 << 20;
    let buf = pv.guest.alloc_pages(512);
    let cpu = pv.guest.memory();
    let s = exercise(&pv.xen, &engine, &d32, &dev, &cpu, buf, len, 3, &no_iommu);
    assert_eq!(s.bounced, [true; 3]);
    for b in s.bus {
        assert!(b.as_u64() + len as u64 <= GIB4);
        assert_eq!(
            b.as_u64() % 4096,
            0,
            "a map of a page or more is page aligned"
        );
    }
    // Two fit at once; a third finds the pool exhausted.
    let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    let other = pv.guest.alloc_pages(512);
    // SAFETY: the buffers are dom0's, covered by no reference until the unmaps.
    let a = unsafe { engine.map_page(&dev, buf, len, dir, none) }.unwrap();
    // SAFETY: as above.
    let b = unsafe { engine.map_page(&dev, other, len, dir, none) }.unwrap();
    assert_eq!(pool_used(&engine), 2048);
    // SAFETY: as above; the map fails.
    let err = unsafe { engine.map_page(&dev, buf, len, dir, none) }.unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::Bounce {
                source: Error::PoolFull {
                    cause: swiotlb_core::FullCause::Exhausted,
                    ..
                },
                ..
            }
        ),
        "{err}"
    );
    engine.unmap_page(&dev, a, len, dir, none).unwrap();
    engine.unmap_page(&dev, b, len, dir, none).unwrap();
    assert_eq!(pool_used(&engine), 0);
    check(&pv.xen, &engine, &[&d32]);
}

#[test]
fn a_pool_of_separate_chunks_maps_no_more_than_its_longest_bus_run() {
    let pv = Pv::new();
    // Chunks of one segment (order 6), each exchanged on its own: whether two neighbours
    // are machine-contiguous is up to Xen's allocator. The engine must say what the chunks
    // allow, no more.
    let options = swiotlb_xen::init::InitOptions::default().with_max_order(6);
    let (engine, report) = pv.engine_with(MIB, options);
    assert_eq!(report.chunks.len(), 4);
    let longest = longest_bus_run(&report) as usize;
    let d32 = pv.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    assert_eq!(engine.max_mapping_size(&dev), longest);
    let nvme = dev.with_min_align_mask(0xfff);
    assert_eq!(engine.max_mapping_size(&nvme), longest - 4096);
    // One byte more is too large, with that maximum, however idle the pool.
    let buf = pv.guest.alloc_pages(300);
    let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    // SAFETY: the buffer is dom0's, covered by no reference; the map fails.
    let err = unsafe { engine.map_page(&dev, buf, longest + 1, dir, none) }.unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::Bounce {
                source: Error::TooLarge { size, max },
                ..
            } if size == longest + 1 && max == longest
        ),
        "{err}"
    );
    // Four areas of one segment each: no run crosses an area, whatever the chunks.
    let pv = Pv::new();
    let options = swiotlb_xen::init::InitOptions::default().with_nareas(4);
    let (engine, report) = pv.engine_with(MIB, options);
    assert_eq!(longest_bus_run(&report), MIB);
    let dev = pv.xen.device(DmaMask::BITS_32, true).core_device();
    assert_eq!(engine.max_mapping_size(&dev), 256 << 10);
    let buf = pv.guest.alloc_pages(80);
    // SAFETY: as above; the map fails.
    let err = unsafe { engine.map_page(&dev, buf, 300 << 10, dir, none) }.unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::Bounce {
                source: Error::TooLarge { max: 0x4_0000, .. },
                ..
            }
        ),
        "{err}"
    );
    check(&pv.xen, &engine, &[]);
}
