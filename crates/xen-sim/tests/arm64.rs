//! arm64 semantics: the 1:1 dom0, grant maps through stage 2, `GNTTABOP_cache_flush`
//! argument checks as real Xen 4.17 answered them, and the cache model.

mod common;

use common::*;
use swiotlb_core::{BusAddr, DmaMask, PhysAddr};
use xen_abi::{
    GNTMAP_DEVICE_MAP, GNTMAP_HOST_MAP, GNTST_GENERAL_ERROR, GNTST_OKAY, GNTTAB_CACHE_CLEAN,
    GNTTAB_CACHE_INVAL, GNTTAB_CACHE_SOURCE_GREF, GnttabMapGrantRef, GnttabUnmapGrantRef,
    HYPERVISOR_XEN_VERSION, Hypercall, MmuUpdate, XENFEAT_DIRECT_MAPPED, XENVER_GET_FEATURES,
};
use xen_sim::{CacheViolationKind, SimConfig, SimOp, Xen};

fn arm() -> Xen {
    Xen::new(SimConfig::arm64())
}

fn map_foreign(xen: &Xen, ipa: PhysAddr, gref: u32) -> GnttabMapGrantRef {
    let mut ops = [GnttabMapGrantRef {
        host_addr: ipa.as_u64(),
        flags: GNTMAP_HOST_MAP,
        ref_: gref,
        dom: 1,
        ..Default::default()
    }];
    assert_eq!(map_grants(&xen.dom0(), &mut ops), 0);
    ops[0]
}

#[test]
fn dom0_is_direct_mapped_and_pv_only_calls_are_refused() {
    let xen = arm();
    let (g, d) = (xen.arm_guest(), xen.dom0());
    xen.check_invariants().unwrap();
    let banks = g.ram_banks();
    assert_eq!(banks.len(), 2);
    assert!(banks[0].0.as_u64() < 1 << 32 && banks[1].0.as_u64() >= 1 << 32);
    let p = g.alloc_pages(1);
    assert_eq!(g.stage2_lookup(p), Some(BusAddr::new(p.as_u64())));
    assert!(g.is_ram(p) && !g.is_ram(g.foreign_window_base()));
    let mut fi = [0u32, 0];
    // SAFETY: `fi` is a live xen_feature_info.
    let rc = unsafe {
        d.hypercall(
            HYPERVISOR_XEN_VERSION,
            [
                u64::from(XENVER_GET_FEATURES),
                addr(fi.as_mut_ptr()),
                0,
                0,
                0,
            ],
        )
    };
    assert_eq!(rc, 0);
    assert_ne!(fi[1] & (1 << XENFEAT_DIRECT_MAPPED), 0);
    // XENMEM_exchange is PV-only: -EOPNOTSUPP, as real Xen 4.17 on arm64 answered.
    let mut inp = [p.as_u64() >> 12];
    let mut out = [p.as_u64() >> 12];
    assert_eq!(exchange(&d, &mut inp, 0, &mut out, 0, 32), (-95, 0));
    assert_eq!(uvm(&d, 0, 0, 0), -38);
    assert_eq!(mmu_update(&d, &mut [MmuUpdate::default()]).0, -38);
    assert_eq!(xen.counters().count(SimOp::MemoryExchange), 1);
}

#[test]
fn grant_map_appears_in_the_foreign_window_through_stage2() {
    let xen = arm();
    let (g, d, u) = (xen.arm_guest(), xen.dom0(), xen.domu_guest());
    let r = u.grant_pages(1)[0];
    u.write_page(r, 0, b"granted").unwrap();
    let frame = u.frame(r).unwrap();
    let ipa = g.foreign_window_base();
    let op = map_foreign(&xen, ipa, r);
    assert_eq!(op.status, GNTST_OKAY);
    // dev_bus_addr is returned for a host-only map, and is the real machine address.
    assert_eq!(op.dev_bus_addr, frame.as_u64() << 12);
    assert_ne!(op.dev_bus_addr, ipa.as_u64());
    assert_eq!(g.stage2_lookup(ipa), Some(BusAddr::new(op.dev_bus_addr)));
    let mut b = [0u8; 7];
    g.read(ipa, &mut b);
    assert_eq!(&b, b"granted");
    xen.check_invariants().unwrap();
    // Device map is refused on arm64; so is a host address outside the window, or taken.
    let mut ops = [
        GnttabMapGrantRef {
            host_addr: ipa.as_u64() + PAGE,
            flags: GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP,
            ref_: r,
            dom: 1,
            ..Default::default()
        },
        GnttabMapGrantRef {
            host_addr: 0,
            flags: GNTMAP_DEVICE_MAP,
            ref_: r,
            dom: 1,
            ..Default::default()
        },
        GnttabMapGrantRef {
            host_addr: g.alloc_pages(1).as_u64(),
            flags: GNTMAP_HOST_MAP,
            ref_: r,
            dom: 1,
            ..Default::default()
        },
        GnttabMapGrantRef {
            host_addr: ipa.as_u64(),
            flags: GNTMAP_HOST_MAP,
            ref_: r,
            dom: 1,
            ..Default::default()
        },
    ];
    assert_eq!(map_grants(&d, &mut ops), 0);
    assert!(
        ops.iter().all(|o| o.status == GNTST_GENERAL_ERROR),
        "{ops:?}"
    );
    // Unmap removes the stage-2 entry.
    let mut un = [GnttabUnmapGrantRef {
        host_addr: ipa.as_u64(),
        dev_bus_addr: op.dev_bus_addr,
        handle: op.handle,
        status: 0,
    }];
    assert_eq!(unmap_grants(&d, &mut un), 0);
    assert_eq!(un[0].status, GNTST_OKAY);
    assert_eq!(g.stage2_lookup(ipa), None);
    xen.check_invariants().unwrap();
}

#[test]
fn cache_flush_checks_match_real_xen() {
    let xen = arm();
    let (g, d, u) = (xen.arm_guest(), xen.dom0(), xen.domu_guest());
    let own = g.alloc_pages(1).as_u64();
    let ci = GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL;
    // The zeroed probe.
    assert_eq!(cache_flush(&d, 0, 0, 0, 0), 0);
    // Own page, CLEAN|INVAL: 0. offset + length over 4096: -EINVAL. Bad op bits.
    assert_eq!(cache_flush(&d, own, 0, 4096, ci), 0);
    assert_eq!(cache_flush(&d, own, 4000, 200, ci), -22);
    assert_eq!(cache_flush(&d, own, 4096, 0, ci), -22);
    assert_eq!(cache_flush(&d, own, 0, 64, 1 << 5), -22);
    assert_eq!(
        cache_flush(
            &d,
            own,
            0,
            64,
            GNTTAB_CACHE_SOURCE_GREF | GNTTAB_CACHE_CLEAN
        ),
        -22
    );
    // Length 0 or op 0 returns 0 before looking at the address.
    assert_eq!(cache_flush(&d, 0x1000, 0, 0, ci), 0);
    // A foreign page: refused until mapped, accepted while mapped, refused after unmap.
    let r = u.grant_pages(1)[0];
    let foreign = u.frame(r).unwrap().as_u64() << 12;
    assert_eq!(cache_flush(&d, foreign, 0, 64, GNTTAB_CACHE_CLEAN), -22);
    let op = map_foreign(&xen, g.foreign_window_base(), r);
    assert_eq!(cache_flush(&d, foreign, 0, 64, GNTTAB_CACHE_CLEAN), 0);
    let mut un = [GnttabUnmapGrantRef {
        host_addr: op.host_addr,
        dev_bus_addr: 0,
        handle: op.handle,
        status: 0,
    }];
    assert_eq!(unmap_grants(&d, &mut un), 0);
    assert_eq!(cache_flush(&d, foreign, 0, 64, GNTTAB_CACHE_CLEAN), -22);
    // A free frame: no owner (-EPERM); not RAM: -EINVAL.
    let free = {
        let mut a = 0;
        for f in ((1u64 << 32) >> 12)..((1u64 << 32) >> 12) + 16384 {
            if xen.owner_of(swiotlb_core::Bfn::new(f)).is_none() {
                a = f << 12;
                break;
            }
        }
        a
    };
    assert_ne!(free, 0);
    assert_eq!(cache_flush(&d, free, 0, 64, ci), -1);
    assert_eq!(cache_flush(&d, 0x1000, 0, 64, ci), -22);
    // An old Xen without the op.
    let old = Xen::new(SimConfig::arm64().with_cache_flush(false));
    assert_eq!(cache_flush(&old.dom0(), 0, 0, 0, 0), -38);
}

#[test]
fn cache_model_catches_a_missing_clean_and_a_missing_inval() {
    let xen = arm();
    let g = xen.arm_guest();
    let dev = xen.device(DmaMask::BITS_32, false);
    let p = g.alloc_pages(2);
    let bus = BusAddr::new(p.as_u64());
    // CPU writes, the device reads without a CLEAN: caught.
    g.fill_pattern(p, 4096, 5);
    dev.read(bus, 4096).unwrap();
    let v = dev.violations();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, CacheViolationKind::DeviceReadDirty);
    xen.clear_cache_violations();
    // With the CLEAN: clean.
    g.fill_pattern(p, 4096, 5);
    g.cache_clean(p, 4096);
    assert_eq!(
        dev.read(bus, 4096).unwrap()[10],
        xen_sim::pattern_byte(5, 10)
    );
    assert!(xen.cache_violations().is_empty());
    // The device writes, the CPU reads without an INVAL: caught.
    dev.write(bus, &[1u8; 256]).unwrap();
    let mut b = [0u8; 256];
    g.read(p, &mut b);
    let v = xen.cache_violations();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].kind, CacheViolationKind::CpuReadStale);
    assert_eq!(v[0].phys, Some(p));
    xen.clear_cache_violations();
    // With the INVAL: clean, and the CPU sees the device's data.
    dev.write(bus, &[2u8; 256]).unwrap();
    g.cache_invalidate(p, 256);
    g.read(p, &mut b);
    assert_eq!(b, [2u8; 256]);
    assert!(xen.cache_violations().is_empty());
    // Invalidating dirty data without a clean loses it: the device would read old memory.
    g.write(PhysAddr::new(p.as_u64() + 4096), &[3u8; 64]);
    g.cache_invalidate(PhysAddr::new(p.as_u64() + 4096), 64);
    dev.read(BusAddr::new(p.as_u64() + 4096), 64).unwrap();
    assert_eq!(
        dev.violations()[0].kind,
        CacheViolationKind::DeviceReadDiscarded
    );
    xen.clear_cache_violations();
    // The device writing over lines the CPU still holds dirty.
    g.write(p, &[4u8; 8]);
    dev.write(bus, &[5u8; 8]).unwrap();
    assert_eq!(
        dev.violations()[0].kind,
        CacheViolationKind::DeviceWriteOverDirty
    );
    // A coherent device is outside the model.
    xen.clear_cache_violations();
    let coherent = xen.device(DmaMask::BITS_32, true);
    g.write(p, &[6u8; 64]);
    coherent.read(bus, 64).unwrap();
    coherent.write(bus, &[7u8; 64]).unwrap();
    g.read(p, &mut b[..64]);
    assert!(xen.cache_violations().is_empty());
}

#[test]
fn cache_flush_hypercall_cleans_foreign_pages_for_the_model() {
    let xen = arm();
    let (g, d, u) = (xen.arm_guest(), xen.dom0(), xen.domu_guest());
    let dev = xen.device(DmaMask::FULL, false);
    let r = u.grant_pages(1)[0];
    let ipa = g.foreign_window_base();
    let op = map_foreign(&xen, ipa, r);
    // dom0 writes the foreign page, cleans it by machine address, the device reads: fine.
    g.fill_pattern(ipa, 4096, 8);
    assert_eq!(
        cache_flush(&d, op.dev_bus_addr, 0, 4096, GNTTAB_CACHE_CLEAN),
        0
    );
    dev.read(BusAddr::new(op.dev_bus_addr), 4096).unwrap();
    assert!(dev.violations().is_empty());
    // The device writes, dom0 invalidates only part: reading the rest is caught.
    dev.write(BusAddr::new(op.dev_bus_addr), &[9u8; 4096])
        .unwrap();
    assert_eq!(
        cache_flush(&d, op.dev_bus_addr, 0, 2048, GNTTAB_CACHE_INVAL),
        0
    );
    let mut b = vec![0u8; 2048];
    g.read(ipa, &mut b);
    assert!(xen.cache_violations().is_empty());
    g.read(PhysAddr::new(ipa.as_u64() + 2048), &mut b);
    assert_eq!(xen.cache_violations().len(), 1);
    assert_eq!(xen.counters().count(SimOp::CacheFlush), 2);
}

#[test]
fn device_mask_applies_to_the_high_bank() {
    let xen = arm();
    let g = xen.arm_guest();
    let high = g.ram_banks()[1].0;
    let dev = xen.device(DmaMask::BITS_32, true);
    assert!(dev.read(BusAddr::new(high.as_u64()), 64).is_err());
    assert_eq!(dev.faults().len(), 1);
    assert!(
        xen.device(DmaMask::FULL, true)
            .read(BusAddr::new(high.as_u64()), 64)
            .is_ok()
    );
}

#[test]
#[should_panic(expected = "foreign-window")]
fn cpu_access_to_an_unmapped_window_page_panics() {
    let xen = arm();
    let g = xen.arm_guest();
    let mut b = [0u8; 1];
    g.read(g.foreign_window_base(), &mut b);
}
