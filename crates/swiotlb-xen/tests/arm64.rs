//! The DMA engine on a simulated arm64 dom0 (1:1): a 32-bit and a 64-bit device, pages
//! granted by the domU and mapped in dom0's foreign window, non-coherent devices under the
//! simulator's cache model (with and without `GNTTABOP_cache_flush`), IOMMU devices, forced
//! bouncing, scatter-gather lists and coherent allocations. Every byte the device reads or
//! writes is checked, and the simulator's and the pool's invariants after every step.

mod common;

use common::grants::{GrantMapper, MappedGrant};
use common::*;
use swiotlb_core::engine::{BounceReason, DmaError, SgEntry};
use swiotlb_core::{BusAddr, Device, DmaAttrs, DmaDirection, DmaMask, Error, PhysAddr};
use xen_sim::{CacheViolationKind, SimConfig, SimOp};

const MIB: u64 = 1 << 20;
const GIB4: u64 = 1 << 32;

/// dom0 RAM at or above 4 GiB: bank 0 (below 4 GiB) is skipped by asking for more pages
/// than it has left.
fn high_ram(arm: &Arm, pages: u64) -> PhysAddr {
    let (_, bank0) = arm.guest.ram_banks()[0];
    let p = arm.guest.alloc_pages(bank0 / PAGE - 16);
    assert!(p.as_u64() >= GIB4, "bank 1 lies above 4 GiB");
    assert!(pages <= bank0 / PAGE - 16);
    p
}

/// The domU grants `n` pages and dom0 maps them in its foreign window.
fn foreign(arm: &Arm, n: usize) -> (common::grants::ArmGrants<'_, Storage>, Vec<MappedGrant>) {
    let refs = arm.xen.domu_grant(n);
    let grants = arm.grants(n);
    let mapped = grants.map(arm.xen.domu().id(), &refs).expect("map grants");
    assert_eq!(arm.table.len(), n);
    (grants, mapped)
}

/// The foreign page's data goes to the device and the device's data comes back to the domU,
/// for `dev` (the simulated `sdev`). Returns whether the mapping was bounced.
fn foreign_roundtrip(
    arm: &Arm,
    engine: &ArmEngine<'_>,
    sdev: &xen_sim::SimDevice,
    dev: &Device,
    g: &MappedGrant,
    seed: u64,
) -> bool {
    let domu = arm.xen.domu_guest();
    let data = pattern(seed, 4096);
    domu.write_page(g.gref, 0, &data).unwrap();
    let none = DmaAttrs::empty();
    // SAFETY: the foreign page stays mapped until after the unmap.
    let bus = unsafe { engine.map_page(dev, g.phys, 4096, DmaDirection::ToDevice, none) }.unwrap();
    let bounced = is_bounced(engine, bus);
    if !bounced {
        assert_eq!(
            bus, g.machine,
            "a foreign page is used at its machine address"
        );
    }
    same(
        &sdev.read(bus, 4096).unwrap(),
        &data,
        "the device read the domU's page",
    );
    engine
        .unmap_page(dev, bus, 4096, DmaDirection::ToDevice, none)
        .unwrap();
    check(&arm.xen, engine, &[sdev]);
    let back = pattern(seed + 1, 4096);
    // SAFETY: as above.
    let bus =
        unsafe { engine.map_page(dev, g.phys, 4096, DmaDirection::FromDevice, none) }.unwrap();
    assert_eq!(is_bounced(engine, bus), bounced);
    sdev.write(bus, &back).unwrap();
    engine
        .unmap_page(dev, bus, 4096, DmaDirection::FromDevice, none)
        .unwrap();
    same(&domu.read_page(g.gref).unwrap(), &back, "the domU received");
    check(&arm.xen, engine, &[sdev]);
    bounced
}

#[test]
fn a_32_bit_device_bounces_memory_above_4_gib_and_a_64_bit_device_does_not() {
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    let d32 = arm.xen.device(DmaMask::BITS_32, true);
    let d64 = arm.xen.device(DmaMask::FULL, true);
    let low = arm.guest.alloc_pages(16);
    let high = high_ram(&arm, 16);
    for (buf, len) in [(low, 40_000), (high, 40_000), (high, 100)] {
        let phys = at(buf, 300);
        let s = exercise(
            &arm.xen,
            &engine,
            &d32,
            &d32.core_device(),
            &arm.mem,
            phys,
            len,
            1,
            &no_iommu,
        );
        assert_eq!(s.bounced, [buf == high; 3], "32-bit device at {phys}");
        let s = exercise(
            &arm.xen,
            &engine,
            &d64,
            &d64.core_device(),
            &arm.mem,
            phys,
            len,
            2,
            &no_iommu,
        );
        assert_eq!(s.bounced, [false; 3], "64-bit device");
        assert_eq!(s.bus, [BusAddr::new(phys.as_u64()); 3], "1:1");
    }
    let st = engine.stats();
    assert_eq!(st.bounced_by_reason[BounceReason::OutsideMask.index()], 6);
    assert_eq!(st.bounced_maps, 6);
}

#[test]
fn foreign_pages_are_used_at_their_machine_address_or_bounced() {
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    let d32 = arm.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    let (grants, mapped) = foreign(&arm, 24);
    let mut seen = [0, 0];
    for (i, g) in mapped.iter().enumerate() {
        assert_ne!(
            g.phys.as_u64(),
            g.machine.as_u64(),
            "a foreign frame is not 1:1"
        );
        let bounced = foreign_roundtrip(&arm, &engine, &d32, &dev, g, i as u64 * 2);
        assert_eq!(bounced, g.machine.as_u64() >= GIB4, "frame {}", g.machine);
        seen[usize::from(bounced)] += 1;
    }
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "frames on both sides of 4 GiB: {seen:?}"
    );
    // Neighbours in the window are not machine neighbours: a buffer across two is bounced.
    let s = exercise(
        &arm.xen,
        &engine,
        &d32,
        &dev,
        &arm.mem,
        at(mapped[0].phys, 4000),
        200,
        9,
        &no_iommu,
    );
    assert_eq!(s.bounced, [true; 3]);
    assert!(engine.stats().bounced_by_reason[BounceReason::NotContiguous.index()] >= 3);
    grants.unmap(&mapped).unwrap();
    assert!(arm.table.is_empty());
    check(&arm.xen, &engine, &[&d32]);
}

#[test]
fn a_non_coherent_device_leaves_no_cache_violation() {
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    let d32 = arm.xen.device(DmaMask::BITS_32, false);
    let dev = d32.core_device();
    assert!(!dev.coherent);
    // Own memory below and above 4 GiB (direct with the kernel's cache maintenance, and
    // bounced), every direction and the syncs.
    let low = arm.guest.alloc_pages(4);
    let high = high_ram(&arm, 4);
    for (buf, bounced) in [(low, false), (high, true)] {
        let s = exercise(
            &arm.xen,
            &engine,
            &d32,
            &dev,
            &arm.mem,
            at(buf, 64),
            3 * 4096,
            3,
            &no_iommu,
        );
        assert_eq!(s.bounced, [bounced; 3]);
    }
    // Foreign pages: direct ones are maintained through GNTTABOP_cache_flush.
    let (grants, mapped) = foreign(&arm, 16);
    let flushes = arm.xen.counters().count(SimOp::CacheFlush);
    let mut direct = 0;
    for (i, g) in mapped.iter().enumerate() {
        if !foreign_roundtrip(&arm, &engine, &d32, &dev, g, 40 + 2 * i as u64) {
            direct += 1;
        }
    }
    assert!(direct > 0);
    assert!(
        arm.xen.counters().count(SimOp::CacheFlush) - flushes >= 2 * direct,
        "every direct foreign mapping is flushed at map and unmap"
    );
    grants.unmap(&mapped).unwrap();
    check(&arm.xen, &engine, &[&d32]);
}

#[test]
fn the_cache_model_catches_a_skipped_sync() {
    // The control experiment: the same transfer without the cache maintenance is caught, so
    // the absence of violations elsewhere means something.
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    let d64 = arm.xen.device(DmaMask::FULL, false);
    let dev = d64.core_device();
    let buf = arm.guest.alloc_pages(1);
    arm.mem.write(buf, &pattern(1, 4096));
    let attrs = DmaAttrs::SKIP_CPU_SYNC;
    // SAFETY: the buffer is the test's until the unmap.
    let bus = unsafe { engine.map_page(&dev, buf, 4096, DmaDirection::ToDevice, attrs) }.unwrap();
    d64.read(bus, 4096).unwrap();
    engine
        .unmap_page(&dev, bus, 4096, DmaDirection::ToDevice, attrs)
        .unwrap();
    let v = arm.xen.cache_violations();
    assert!(
        !v.is_empty()
            && v.iter()
                .all(|v| v.kind == CacheViolationKind::DeviceReadDirty),
        "{v:?}"
    );
}

#[test]
fn without_gnttabop_cache_flush_foreign_pages_are_bounced_for_non_coherent_devices() {
    let arm = Arm::with_config(SimConfig::arm64().with_cache_flush(false));
    let engine = arm.engine(MIB);
    assert!(!engine.platform().config().cache_flush);
    let probes = arm.xen.counters().count(SimOp::CacheFlush);
    let d64 = arm.xen.device(DmaMask::FULL, false);
    let (grants, mapped) = foreign(&arm, 4);
    for (i, g) in mapped.iter().enumerate() {
        assert!(foreign_roundtrip(
            &arm,
            &engine,
            &d64,
            &d64.core_device(),
            g,
            2 * i as u64
        ));
    }
    assert_eq!(
        engine.stats().bounced_by_reason[BounceReason::Platform.index()],
        8
    );
    // Own pages are still direct, maintained by the kernel's cache operations.
    let buf = arm.guest.alloc_pages(1);
    let s = exercise(
        &arm.xen,
        &engine,
        &d64,
        &d64.core_device(),
        &arm.mem,
        buf,
        4096,
        5,
        &no_iommu,
    );
    assert_eq!(s.bounced, [false; 3]);
    // A coherent device needs no maintenance: foreign pages are direct.
    let coherent = arm.xen.device(DmaMask::FULL, true);
    assert!(!foreign_roundtrip(
        &arm,
        &engine,
        &coherent,
        &coherent.core_device(),
        &mapped[0],
        99
    ));
    assert_eq!(
        arm.xen.counters().count(SimOp::CacheFlush),
        probes,
        "no cache flush after the probe"
    );
    grants.unmap(&mapped).unwrap();
    check(&arm.xen, &engine, &[&d64, &coherent]);
}

#[test]
fn iommu_and_forced_bouncing() {
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    // Behind an IOMMU, a 32-bit device is given guest addresses as they are, even above
    // 4 GiB here (the IOMMU maps them; the simulated device stands for its far side).
    let behind = arm.xen.device(DmaMask::FULL, true);
    let dev = Device::new(DmaMask::FULL).with_iommu(true);
    let high = high_ram(&arm, 2);
    let maps = engine.stats().pool.unwrap().maps;
    let s = exercise(
        &arm.xen,
        &engine,
        &behind,
        &dev,
        &arm.mem,
        at(high, 8),
        5000,
        1,
        &no_iommu,
    );
    assert_eq!(s.bounced, [false; 3]);
    assert_eq!(s.bus, [BusAddr::new(high.as_u64() + 8); 3]);
    assert_eq!(
        engine.stats().pool.unwrap().maps,
        maps,
        "the pool was not touched"
    );
    // Forced bouncing bounces even low, contiguous memory.
    let d32 = arm.xen.device(DmaMask::BITS_32, false);
    let forced = d32.core_device().with_force_bounce(true);
    let low = arm.guest.alloc_pages(2);
    let s = exercise(
        &arm.xen,
        &engine,
        &d32,
        &forced,
        &arm.mem,
        at(low, 1),
        6000,
        2,
        &no_iommu,
    );
    assert_eq!(s.bounced, [true; 3]);
    assert_eq!(
        engine.stats().bounced_by_reason[BounceReason::Forced.index()],
        3
    );
}

#[test]
fn scatter_gather_lists_of_own_and_foreign_pages() {
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    let d32 = arm.xen.device(DmaMask::BITS_32, false);
    let dev = d32.core_device();
    let (grants, mapped) = foreign(&arm, 6);
    let low = arm.guest.alloc_pages(4);
    let high = high_ram(&arm, 4);
    let domu = arm.xen.domu_guest();
    let mut sg: Vec<SgEntry> = mapped
        .iter()
        .map(|g| SgEntry::new(at(g.phys, 512), 3072))
        .chain([SgEntry::new(at(low, 100), 9000), SgEntry::new(high, 8192)])
        .collect();
    // Block write: the domU's and dom0's data reach the device.
    let datas: Vec<Vec<u8>> = sg
        .iter()
        .enumerate()
        .map(|(i, e)| pattern(i as u64, e.length))
        .collect();
    for (i, (e, d)) in sg.iter().zip(&datas).enumerate() {
        match mapped.get(i) {
            Some(g) => domu.write_page(g.gref, 512, d).unwrap(),
            None => arm.mem.write(e.phys, d),
        }
    }
    // SAFETY: the buffers stay mapped and unreferenced until unmap_sg.
    unsafe { engine.map_sg(&dev, &mut sg, DmaDirection::ToDevice, DmaAttrs::empty()) }.unwrap();
    check(&arm.xen, &engine, &[&d32]);
    for (e, d) in sg.iter().zip(&datas) {
        same(
            &d32.read(e.dma_address, e.dma_length).unwrap(),
            d,
            "the device read",
        );
    }
    engine
        .unmap_sg(&dev, &sg, DmaDirection::ToDevice, DmaAttrs::empty())
        .unwrap();
    check(&arm.xen, &engine, &[&d32]);
    // Block read: the device's data reach the domU and dom0.
    for e in &mut sg {
        *e = SgEntry::new(e.phys, e.length);
    }
    // SAFETY: as above.
    unsafe { engine.map_sg(&dev, &mut sg, DmaDirection::FromDevice, DmaAttrs::empty()) }.unwrap();
    let back: Vec<Vec<u8>> = sg
        .iter()
        .enumerate()
        .map(|(i, e)| pattern(100 + i as u64, e.length))
        .collect();
    for (e, d) in sg.iter().zip(&back) {
        d32.write(e.dma_address, d).unwrap();
    }
    engine
        .unmap_sg(&dev, &sg, DmaDirection::FromDevice, DmaAttrs::empty())
        .unwrap();
    for (i, (e, d)) in sg.iter().zip(&back).enumerate() {
        let got = match mapped.get(i) {
            Some(g) => domu.read_page(g.gref).unwrap()[512..512 + e.length].to_vec(),
            None => {
                let mut b = vec![0u8; e.length];
                arm.mem.read(e.phys, &mut b);
                b
            }
        };
        same(&got, d, "after the sg unmap");
    }
    check(&arm.xen, &engine, &[&d32]);
    // A failure in the middle: an entry above 4 GiB must be bounced and is larger than any
    // bounce (one byte more than the pool's longest run of bus-contiguous segments allows);
    // what was mapped before it is unmapped, and every slot comes back.
    let used = pool_used(&engine);
    let too_large = engine.max_mapping_size(&dev) + 1;
    let mut bad = [
        SgEntry::new(high, 4096),
        SgEntry::new(mapped[0].phys, 4096),
        SgEntry::new(at(high, 8192), too_large),
        SgEntry::new(low, 64),
    ];
    // SAFETY: as above.
    let err = unsafe {
        engine.map_sg(
            &dev,
            &mut bad,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
    }
    .unwrap_err();
    assert_eq!((err.index, err.unwound), (2, 2));
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
    assert_eq!(pool_used(&engine), used);
    check(&arm.xen, &engine, &[&d32]);
    grants.unmap(&mapped).unwrap();
    assert!(arm.table.is_empty());
}

#[test]
fn coherent_allocations_are_direct() {
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    let d32 = arm.xen.device(DmaMask::BITS_32, true);
    let dev = d32.core_device();
    for (i, size) in [64usize, 4096, 20_000, 65536].into_iter().enumerate() {
        let a = engine.alloc_coherent(&dev, size).unwrap();
        assert!(!a.is_exchanged(), "1:1 memory needs no exchange");
        assert_eq!(a.bus().as_u64(), a.phys().as_u64());
        assert!(a.bus().as_u64() + size as u64 <= GIB4);
        let data = pattern(i as u64, size);
        arm.mem.write(a.phys(), &data);
        same(&d32.read(a.bus(), size).unwrap(), &data, "the device read");
        // SAFETY: nothing uses the allocation any more.
        unsafe { engine.free_coherent(&dev, a) }.unwrap();
        check(&arm.xen, &engine, &[&d32]);
    }
    assert_eq!(engine.pages().in_use(), 0);
    assert_eq!(arm.xen.counters().count(SimOp::MemoryExchange), 0);
    assert!(engine.dma_supported(&dev, DmaMask::BITS_32));
}

#[test]
fn partial_syncs_move_only_the_bytes_asked_for() {
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    let d32 = arm.xen.device(DmaMask::BITS_32, false);
    let dev = d32.core_device();
    let low = arm.guest.alloc_pages(2);
    let high = high_ram(&arm, 2);
    for (buf, bounced) in [(low, false), (high, true)] {
        let len = 8192;
        let before = pattern(1, len);
        arm.mem.write(buf, &before);
        // SAFETY: the buffer is the test's until the unmap.
        let bus = unsafe {
            engine.map_page(
                &dev,
                buf,
                len,
                DmaDirection::Bidirectional,
                DmaAttrs::empty(),
            )
        }
        .unwrap();
        assert_eq!(is_bounced(&engine, bus), bounced);
        // The device writes the whole buffer; the CPU syncs 1 KiB in the middle only.
        let written = pattern(2, len);
        d32.write(bus, &written).unwrap();
        let (off, n) = (2048usize, 1024usize);
        engine
            .sync_single_for_cpu(
                &dev,
                BusAddr::new(bus.as_u64() + off as u64),
                n,
                DmaDirection::Bidirectional,
            )
            .unwrap();
        let mut got = vec![0u8; n];
        arm.mem.read(at(buf, off as u64), &mut got);
        same(&got, &written[off..off + n], "the synced bytes");
        if bounced {
            // The rest is not copied back yet.
            let mut rest = vec![0u8; 1024];
            arm.mem.read(at(buf, 5000), &mut rest);
            same(&rest, &before[5000..6024], "bytes outside the sync");
        }
        // The CPU changes 512 bytes and syncs them for the device.
        let mine = pattern(3, 512);
        arm.mem.write(at(buf, 4096), &mine);
        engine
            .sync_single_for_device(
                &dev,
                BusAddr::new(bus.as_u64() + 4096),
                512,
                DmaDirection::Bidirectional,
            )
            .unwrap();
        same(
            &d32.read(BusAddr::new(bus.as_u64() + 4096), 512).unwrap(),
            &mine,
            "the device read after sync_single_for_device",
        );
        engine
            .unmap_page(
                &dev,
                bus,
                len,
                DmaDirection::Bidirectional,
                DmaAttrs::empty(),
            )
            .unwrap();
        check(&arm.xen, &engine, &[&d32]);
    }
}

#[test]
fn concurrent_foreign_and_local_mappings_for_a_non_coherent_device() {
    let arm = Arm::new();
    let engine = arm.engine(2 * MIB);
    let d32 = arm.xen.device(DmaMask::BITS_32, false);
    let dev = d32.core_device();
    let (grants, mapped) = foreign(&arm, 16);
    let locals: Vec<PhysAddr> = (0..4).map(|_| arm.guest.alloc_pages(4)).collect();
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (engine, d32, mem) = (&engine, &d32, arm.mem.clone());
            let mine = &mapped[t * 4..t * 4 + 4];
            let local = locals[t];
            s.spawn(move || {
                for i in 0..40u64 {
                    let (phys, len) = if i % 2 == 0 {
                        (mine[(i / 2) as usize % 4].phys, 4096)
                    } else {
                        (at(local, (i * 97) % 4096), 8000)
                    };
                    let data = pattern((t as u64) << 32 | i, len);
                    mem.write(phys, &data);
                    // SAFETY: the buffer is this thread's alone.
                    let bus = unsafe {
                        engine.map_page(&dev, phys, len, DmaDirection::ToDevice, DmaAttrs::empty())
                    }
                    .unwrap();
                    same(&d32.read(bus, len).unwrap(), &data, "the device read");
                    engine
                        .unmap_page(&dev, bus, len, DmaDirection::ToDevice, DmaAttrs::empty())
                        .unwrap();
                }
            });
        }
    });
    check(&arm.xen, &engine, &[&d32]);
    assert_eq!(pool_used(&engine), 0);
    grants.unmap(&mapped).unwrap();
    assert!(arm.table.is_empty());
}

/// Issue 15's size: far past a 64-byte bounce, past the 1 MiB pool and the pages after it.
const OVERSIZE: usize = 0x14_2000;

#[test]
fn oversize_unmaps_and_syncs_discard_no_dirty_line_outside_the_mapping() {
    let arm = Arm::new();
    let engine = arm.engine(MIB);
    let pool_start = engine.pool().unwrap().start();
    let d64 = arm.xen.device(DmaMask::FULL, false);
    let dev = d64.core_device();
    let bounce = dev.with_force_bounce(true);
    assert!(!dev.coherent);
    // A buffer and a guard page right after it; the CPU's writes to the guard sit dirty in
    // its cache (the simulator's cache model) until something cleans them.
    let buf = arm.guest.alloc_pages(1);
    let guard = arm.guest.alloc_pages(1);
    assert_eq!(guard.as_u64(), buf.as_u64() + PAGE);
    assert!(guard.as_u64() + PAGE <= pool_start.as_u64() + OVERSIZE as u64);
    let dirty_guard = |seed| arm.mem.write(guard, &pattern(seed, PAGE as usize));
    let guard_intact = |seed, what: &str| {
        let mut got = vec![0; PAGE as usize];
        arm.mem.read(guard, &mut got);
        same(&got, &pattern(seed, PAGE as usize), what);
        check(&arm.xen, &engine, &[&d64]);
    };
    let none = DmaAttrs::empty();
    let bidi = DmaDirection::Bidirectional;
    arm.mem.write(buf, &pattern(1, 64));

    // A 64-byte bounce (in the pool's first slot) unmapped with 1.3 MiB.
    dirty_guard(10);
    // SAFETY: the buffer is the test's until the unmap.
    let bus = unsafe { engine.map_page(&bounce, buf, 64, bidi, none) }.unwrap();
    assert!(is_bounced(&engine, bus));
    d64.write(bus, &pattern(2, 64)).unwrap();
    engine
        .unmap_page(&bounce, bus, OVERSIZE, bidi, none)
        .unwrap();
    let mut got = vec![0; 64];
    arm.mem.read(buf, &mut got);
    same(&got, &pattern(2, 64), "the mapping came back");
    guard_intact(10, "the guard after an oversize unmap");

    // A sync of a pool address that was never mapped: an error, and nothing touched.
    dirty_guard(11);
    let never = BusAddr::new(pool_start.as_u64() + 0x8_0000);
    for r in [
        engine.sync_single_for_cpu(&dev, never, OVERSIZE, bidi),
        engine.sync_single_for_device(&dev, never, OVERSIZE, bidi),
        engine.unmap_page(&dev, never, OVERSIZE, bidi, none),
    ] {
        assert!(
            matches!(
                r,
                Err(DmaError::Pool {
                    source: Error::NotMapped { .. },
                    ..
                })
            ),
            "{r:?}"
        );
    }
    // The stale address of the first bounce, too.
    assert!(
        engine
            .sync_single_for_cpu(&bounce, bus, OVERSIZE, bidi)
            .is_err()
    );
    guard_intact(11, "the guard after syncs of unmapped pool addresses");

    // An oversize sync of a live bounce is clamped to it.
    dirty_guard(12);
    // SAFETY: as above.
    let bus = unsafe { engine.map_page(&bounce, buf, 64, bidi, none) }.unwrap();
    d64.write(bus, &pattern(3, 64)).unwrap();
    engine
        .sync_single_for_cpu(&bounce, bus, OVERSIZE, bidi)
        .unwrap();
    arm.mem.read(buf, &mut got);
    same(&got, &pattern(3, 64), "the synced bytes");
    engine.unmap_page(&bounce, bus, 64, bidi, none).unwrap();
    guard_intact(12, "the guard after an oversize sync");

    // A direct mapping is not recorded: its oversize unmap and syncs clean and invalidate,
    // so the dirty guard survives them too.
    dirty_guard(13);
    // SAFETY: as above.
    let bus = unsafe { engine.map_page(&dev, buf, 64, bidi, none) }.unwrap();
    assert!(!is_bounced(&engine, bus));
    engine
        .sync_single_for_cpu(&dev, bus, OVERSIZE, bidi)
        .unwrap();
    engine
        .sync_single_for_device(&dev, bus, OVERSIZE, bidi)
        .unwrap();
    engine.unmap_page(&dev, bus, OVERSIZE, bidi, none).unwrap();
    guard_intact(13, "the guard after a direct oversize unmap");
    assert_eq!(pool_used(&engine), 0);
}

/// The arm64 platform, counting the frames the engine asks about: each `pfn_to_bfn` and
/// `bfn_to_local_pfn` counts one, each `contiguous_run`, `local_run` and cache hook one per
/// call (the work a run costs the platform). Panics past `limit`, so a walk proportional to
/// an absurd size fails at once instead of running for years.
struct Counting<'a> {
    inner: ArmPlatform<'a>,
    calls: std::sync::atomic::AtomicU64,
    limit: std::sync::atomic::AtomicU64,
}

impl Counting<'_> {
    fn count(&self) {
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let limit = self.limit.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            n <= limit,
            "the engine asked about more than {limit} frames"
        );
    }
}

// SAFETY: every answer is the arm64 platform's; only the counting is added.
unsafe impl swiotlb_core::Platform for Counting<'_> {
    fn pfn_to_bfn(&self, pfn: swiotlb_core::Pfn) -> Option<swiotlb_core::Bfn> {
        self.count();
        self.inner.pfn_to_bfn(pfn)
    }
    fn bfn_to_local_pfn(&self, bfn: swiotlb_core::Bfn) -> Option<swiotlb_core::Pfn> {
        self.count();
        self.inner.bfn_to_local_pfn(bfn)
    }
    fn contiguous_run(
        &self,
        pfn: swiotlb_core::Pfn,
        max_frames: u64,
    ) -> Option<(swiotlb_core::Bfn, u64)> {
        self.count();
        self.inner.contiguous_run(pfn, max_frames)
    }
    fn local_run(
        &self,
        bfn: swiotlb_core::Bfn,
        max_frames: u64,
    ) -> (Option<swiotlb_core::Pfn>, u64) {
        self.count();
        self.inner.local_run(bfn, max_frames)
    }
    fn needs_bounce(&self, dev: &Device, phys: PhysAddr, bus: BusAddr) -> bool {
        self.inner.needs_bounce(dev, phys, bus)
    }
    fn sync_for_device(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), swiotlb_core::PlatformError> {
        self.count();
        self.inner.sync_for_device(dev, phys, bus, len, dir)
    }
    fn sync_for_cpu(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), swiotlb_core::PlatformError> {
        self.count();
        self.inner.sync_for_cpu(dev, phys, bus, len, dir)
    }
    fn sync_for_device_preserving(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), swiotlb_core::PlatformError> {
        self.count();
        self.inner
            .sync_for_device_preserving(dev, phys, bus, len, dir)
    }
    fn sync_for_cpu_preserving(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), swiotlb_core::PlatformError> {
        self.count();
        self.inner.sync_for_cpu_preserving(dev, phys, bus, len, dir)
    }
    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, swiotlb_core::PlatformError> {
        // SAFETY: the caller's promise, passed on.
        unsafe {
            self.inner
                .create_contiguous_region(phys, order, address_bits)
        }
    }
    unsafe fn destroy_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
    ) -> Result<(), swiotlb_core::PlatformError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.inner.destroy_contiguous_region(phys, order) }
    }
}

/// An engine over the [`Counting`] arm64 platform with a 1 MiB pool, its count reset.
fn counting_engine(arm: &Arm) -> SimEngine<Counting<'_>, SimPages> {
    let n = MIB / PAGE;
    let pool = arm.guest.alloc_aligned(n, n.next_power_of_two());
    let pages = SimPages::arm(&arm.guest, 64);
    let counting = Counting {
        inner: arm.platform(),
        calls: std::sync::atomic::AtomicU64::new(0),
        limit: std::sync::atomic::AtomicU64::new(u64::MAX),
    };
    let engine = build_engine(counting, arm.mem.clone(), pool, MIB, pages);
    engine
        .platform()
        .calls
        .store(0, std::sync::atomic::Ordering::Relaxed);
    engine
}

/// Issue 15's defect 5 on the unmap and sync side: the cache maintenance of a direct
/// mapping of a non-coherent device, known only by its bus address, walked the caller's
/// size frame by frame (`bfn_to_local_pfn` per 4 KiB), so a size of 2^60 bytes ran for
/// years. Now a range the mask cannot cover is refused before any walk, and a covered one is
/// walked by runs: a handful of platform calls, whatever the size.
#[test]
fn an_absurd_size_to_unmap_or_sync_a_direct_mapping_costs_a_few_platform_calls() {
    let arm = Arm::new();
    // Foreign pages in dom0's window: a range from RAM meets them far above.
    let (grants, mapped) = foreign(&arm, 2);
    let engine = counting_engine(&arm);
    let none = DmaAttrs::empty();
    let bidi = DmaDirection::Bidirectional;
    let buf = arm.guest.alloc_pages(1);
    let reset = |e: &SimEngine<Counting<'_>, SimPages>| {
        e.platform()
            .calls
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    };
    for (mask, absurd) in [
        (DmaMask::BITS_32, 1usize << 40),
        (DmaMask::BITS_32, usize::MAX - buf.as_u64() as usize),
        (DmaMask::FULL, 1usize << 60),
        (DmaMask::FULL, usize::MAX - buf.as_u64() as usize),
    ] {
        let sdev = arm.xen.device(mask, false);
        let dev = sdev.core_device();
        // SAFETY: the buffer is the test's until the unmap.
        let bus = unsafe { engine.map_page(&dev, buf, 64, bidi, none) }.unwrap();
        assert!(!is_bounced(&engine, bus));
        reset(&engine);
        engine
            .platform()
            .limit
            .store(16, std::sync::atomic::Ordering::Relaxed);
        type Op<'a> = &'a dyn Fn() -> Result<(), DmaError>;
        let ops: [(&str, Op<'_>); 3] = [
            ("sync for the CPU", &|| {
                engine.sync_single_for_cpu(&dev, bus, absurd, bidi)
            }),
            ("sync for the device", &|| {
                engine.sync_single_for_device(&dev, bus, absurd, bidi)
            }),
            ("unmap", &|| {
                engine.unmap_page(&dev, bus, absurd, bidi, none)
            }),
        ];
        for (what, op) in ops {
            let r = op();
            let calls = reset(&engine);
            if mask == DmaMask::BITS_32 {
                // Beyond what the mask can address: refused before any walk.
                assert!(
                    matches!(r, Err(DmaError::NotADirectMapping { size, .. }) if size == absurd),
                    "{mask:?} {what}: {r:?}"
                );
                // One translation back: whether the address is the pool's.
                assert_eq!(calls, 1, "{mask:?} {what}: a walk before the mask check");
            } else {
                // Walked by runs: dom0's RAM bank is maintained (clean and invalidate, so
                // nothing is discarded), then the hole after it is not RAM nor granted, and
                // Xen refuses its GNTTABOP_cache_flush.
                assert!(
                    matches!(r, Err(DmaError::CacheMaintenance { .. })),
                    "{mask:?} {what}: {r:?}"
                );
                assert!(calls <= 8, "{mask:?} {what}: {calls} platform calls");
            }
        }
        engine
            .platform()
            .limit
            .store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
        engine.unmap_page(&dev, bus, 64, bidi, none).unwrap();
        check(&arm.xen, &engine, &[&sdev]);
    }
    assert_eq!(pool_used(&engine), 0);
    drop(engine);
    grants.unmap(&mapped).unwrap();
}

#[test]
fn an_absurd_size_costs_a_few_platform_calls_not_one_per_frame() {
    let arm = Arm::new();
    // Foreign pages in dom0's window, far above its RAM: a 2^60-byte range from RAM meets
    // them.
    let (grants, mapped) = foreign(&arm, 2);
    let engine = counting_engine(&arm);
    let buf = arm.guest.alloc_pages(1);
    let absurd = 1usize << 60;
    let reset = |e: &SimEngine<Counting<'_>, SimPages>| {
        e.platform()
            .calls
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    };
    // From here on the engine may ask about 16 frames per map (building it walked the
    // pool's 256 frames; `counting_engine` reset the count).
    engine
        .platform()
        .limit
        .store(16, std::sync::atomic::Ordering::Relaxed);
    reset(&engine);
    let none = DmaAttrs::empty();
    let bidi = DmaDirection::Bidirectional;
    for (mask, reason) in [
        // The mask cannot cover 2^60 bytes: refused before any walk.
        (DmaMask::BITS_32, BounceReason::OutsideMask),
        // A 64-bit mask covers it: the walk meets the foreign pages after one run of RAM.
        (DmaMask::FULL, BounceReason::NotContiguous),
    ] {
        let dev = Device::new(mask);
        // SAFETY: refused before any memory is reached (asserted).
        let r = unsafe { engine.map_page(&dev, buf, absurd, bidi, none) };
        assert!(
            matches!(
                r,
                Err(DmaError::Bounce {
                    source: Error::TooLarge { .. },
                    reason: got,
                    ..
                }) if got == reason
            ),
            "{mask:?}: {r:?}"
        );
        let calls = reset(&engine);
        assert!(calls <= 4, "{mask:?}: {calls} platform calls");
    }
    assert_eq!(pool_used(&engine), 0);
    check(&arm.xen, &engine, &[]);
    drop(engine);
    grants.unmap(&mapped).unwrap();
}

#[test]
fn a_2_mib_map_spans_the_pools_segments_for_a_non_coherent_device() {
    let arm = Arm::new();
    // dom0 is 1:1, so the whole 4 MiB pool is bus-contiguous.
    let engine = arm.engine(4 * MIB);
    let d32 = arm.xen.device(DmaMask::BITS_32, false);
    let dev = d32.core_device();
    assert_eq!(engine.max_mapping_size(&dev), 4 << 20);
    let len = 2 << 20;
    // Above 4 GiB: bounced for the 32-bit device, with cache maintenance over the whole
    // bounce buffer (the simulator's cache model checks it).
    let buf = high_ram(&arm, 512);
    let s = exercise(
        &arm.xen, &engine, &d32, &dev, &arm.mem, buf, len, 5, &no_iommu,
    );
    assert_eq!(s.bounced, [true; 3]);
    assert!(s.bus.iter().all(|b| b.as_u64() + len as u64 <= GIB4));
    // One byte past the pool is too large.
    let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    // SAFETY: the buffer is dom0's, covered by no reference; the map fails.
    let err = unsafe { engine.map_page(&dev, buf, (4 << 20) + 1, dir, none) }.unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::Bounce {
                source: Error::TooLarge { max: 0x40_0000, .. },
                ..
            }
        ),
        "{err}"
    );
    check(&arm.xen, &engine, &[&d32]);
}
