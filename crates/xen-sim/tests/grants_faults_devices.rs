//! Grant map/unmap statuses, fault injection, DMA devices and the small hypercalls, on an
//! x86 PV machine.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use swiotlb_core::{BusAddr, DmaMask, PhysAddr};
use xen_abi::{
    GNTMAP_CONTAINS_PTE, GNTMAP_DEVICE_MAP, GNTMAP_HOST_MAP, GNTMAP_READONLY, GNTST_BAD_DEV_ADDR,
    GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_BAD_HANDLE, GNTST_GENERAL_ERROR, GNTST_NO_SPACE,
    GNTST_OKAY, GnttabMapGrantRef, GnttabUnmapGrantRef, HYPERVISOR_CONSOLE_IO, HYPERVISOR_SCHED_OP,
    HYPERVISOR_XEN_VERSION, Hypercall, MulticallEntry, SCHEDOP_SHUTDOWN, SHUTDOWN_POWEROFF,
    UVMF_INVLPG, XENFEAT_DIRECT_MAPPED, XENVER_GET_FEATURES, XENVER_VERSION,
};
use xen_sim::{DmaFault, Fault, INVALID_ENTRY, P2M_FOREIGN_BIT, SimConfig, SimError, SimOp, Xen};

fn map_op(host_addr: u64, flags: u32, gref: u32, dom: u16) -> GnttabMapGrantRef {
    GnttabMapGrantRef {
        host_addr,
        flags,
        ref_: gref,
        dom,
        ..Default::default()
    }
}

#[test]
fn grant_map_and_unmap_through_the_linear_map() {
    let xen = Xen::new(SimConfig::x86_pv());
    let (g, d, u) = (xen.pv_guest(), xen.dom0(), xen.domu_guest());
    let refs = u.grant_pages(2);
    u.write_page(refs[0], 100, b"from the domU").unwrap();
    let frame = u.frame(refs[0]).unwrap().as_u64();
    // A ballooned page of dom0: zapped, P2M INVALID.
    let page = g.alloc_pages(1);
    let pfn = page.as_u64() / PAGE;
    assert_eq!(uvm(&d, g.va_of(page), 0, UVMF_INVLPG), 0);
    g.p2m()[pfn as usize].store(INVALID_ENTRY, Ordering::Relaxed);
    let mut ops = [map_op(g.va_of(page), GNTMAP_HOST_MAP, refs[0], 1)];
    assert_eq!(map_grants(&d, &mut ops), 0);
    assert_eq!(ops[0].status, GNTST_OKAY);
    assert_eq!(ops[0].dev_bus_addr, frame << 12);
    xen.check_invariants().unwrap();
    g.p2m()[pfn as usize].store(frame | P2M_FOREIGN_BIT, Ordering::Relaxed);
    xen.check_invariants().unwrap();
    let mut buf = [0u8; 13];
    g.read(PhysAddr::new(page.as_u64() + 100), &mut buf);
    assert_eq!(&buf, b"from the domU");
    // The domU cannot take the page back while it is mapped.
    assert_eq!(
        u.revoke(refs[0]),
        Err(SimError::GrantInUse { gref: refs[0] })
    );
    // Unmap: wrong handle, wrong dev_bus_addr, wrong host address, then right.
    let handle = ops[0].handle;
    let unmap = |host_addr, dev_bus_addr, handle| GnttabUnmapGrantRef {
        host_addr,
        dev_bus_addr,
        handle,
        status: 0,
    };
    let mut u_ops = [
        unmap(g.va_of(page), 0, handle + 7),
        unmap(g.va_of(page), (frame + 1) << 12, handle),
        unmap(g.va_of(page) + PAGE, 0, handle),
    ];
    assert_eq!(unmap_grants(&d, &mut u_ops), 0);
    let st: Vec<i16> = u_ops.iter().map(|o| o.status).collect();
    assert_eq!(
        st,
        [GNTST_BAD_HANDLE, GNTST_BAD_DEV_ADDR, GNTST_GENERAL_ERROR]
    );
    g.p2m()[pfn as usize].store(INVALID_ENTRY, Ordering::Relaxed);
    let mut u_ops = [unmap(g.va_of(page), frame << 12, handle)];
    assert_eq!(unmap_grants(&d, &mut u_ops), 0);
    assert_eq!(u_ops[0].status, GNTST_OKAY);
    assert_eq!(g.pte(pfn), Some(0));
    xen.check_invariants().unwrap();
    // A second unmap of the same handle.
    assert_eq!(unmap_grants(&d, &mut u_ops), 0);
    assert_eq!(u_ops[0].status, GNTST_BAD_HANDLE);
    u.revoke(refs[0]).unwrap();
    let c = xen.counters();
    assert_eq!(c.count(SimOp::GrantMap), 1);
    assert_eq!(c.count(SimOp::GrantUnmap), 5);
}

#[test]
fn grant_map_statuses() {
    let xen = Xen::new(SimConfig::x86_pv());
    let (g, d, u) = (xen.pv_guest(), xen.dom0(), xen.domu_guest());
    let r = u.grant_pages(1)[0];
    let ro = u.grant_page(5, 0, true).unwrap();
    let to_other = u.grant_page(6, 7, false).unwrap();
    let va = g.va_of(g.alloc_pages(1));
    let mut ops = [
        map_op(va, 0, r, 1),                      // neither host nor device map
        map_op(va, GNTMAP_HOST_MAP, r, 9),        // no such domain
        map_op(va, GNTMAP_HOST_MAP, 4000, 1),     // ref beyond the table
        map_op(va, GNTMAP_HOST_MAP, 3, 1),        // reserved, never granted
        map_op(va, GNTMAP_HOST_MAP, ro, 1),       // r/o grant mapped writable
        map_op(va, GNTMAP_HOST_MAP, to_other, 1), // granted to another domain
        map_op(g.linear_base() - PAGE, GNTMAP_HOST_MAP, r, 1), // va outside the linear map
        map_op(0, GNTMAP_DEVICE_MAP, r, 1),       // device map only: fine on x86
        map_op(
            g.pte_machine_addr(va_pfn(&g, va)),
            GNTMAP_HOST_MAP | GNTMAP_CONTAINS_PTE | GNTMAP_READONLY,
            ro,
            1,
        ),
    ];
    assert_eq!(map_grants(&d, &mut ops), 0);
    let st: Vec<i16> = ops.iter().map(|o| o.status).collect();
    assert_eq!(
        st,
        [
            GNTST_BAD_GNTREF,
            GNTST_BAD_DOMAIN,
            GNTST_BAD_GNTREF,
            GNTST_GENERAL_ERROR,
            GNTST_GENERAL_ERROR,
            GNTST_GENERAL_ERROR,
            GNTST_GENERAL_ERROR,
            GNTST_OKAY,
            GNTST_OKAY,
        ]
    );
    assert_eq!(ops[7].dev_bus_addr, u.frame(r).unwrap().as_u64() << 12);
    // The read-only mapping replaced the PTE: writable remaps of the frame are refused.
    let ro_frame = u.frame(ro).unwrap().as_u64();
    assert_eq!(g.pte(va_pfn(&g, va)), Some(ro_frame << 12 | 1));
    assert_eq!(uvm(&d, va, ro_frame << 12 | PTE_P_RW, 0), -1);
    // Injected failure of the next map.
    xen.inject(Fault::GrantMap {
        nth: 1,
        status: GNTST_NO_SPACE,
    });
    let mut ops = [
        map_op(0, GNTMAP_DEVICE_MAP, r, 1),
        map_op(0, GNTMAP_DEVICE_MAP, r, 1),
    ];
    assert_eq!(map_grants(&d, &mut ops), 0);
    assert_eq!((ops[0].status, ops[1].status), (GNTST_NO_SPACE, GNTST_OKAY));
    assert!(xen.pending_faults().is_empty());
}

fn va_pfn(g: &xen_sim::PvGuest, va: u64) -> u64 {
    (va - g.linear_base()) / PAGE
}

#[test]
fn fail_nth_and_multicall_entry_faults() {
    let xen = Xen::new(SimConfig::x86_pv());
    let (g, d) = (xen.pv_guest(), xen.dom0());
    let a = g.alloc_pages(4);
    let va = |i: u64| g.va_of(PhysAddr::new(a.as_u64() + i * PAGE));
    let mfn = |i: u64| p2m(&g, a.as_u64() / PAGE + i);
    xen.inject(Fault::FailNth {
        op: SimOp::UpdateVaMapping,
        nth: 2,
        errno: 12,
    });
    xen.inject(Fault::MulticallEntry {
        nth_multicall: 1,
        entry: 3,
        errno: 16,
    });
    let mut e: Vec<MulticallEntry> = (0..4)
        .map(|i| uvm_entry(va(i), mfn(i) << 12 | PTE_P_RW, 0))
        .collect();
    assert_eq!(multicall(&d, &mut e), 0);
    let r: Vec<i64> = e.iter().map(|e| e.result).collect();
    assert_eq!(r, [0, -12, 0, -16]);
    assert!(xen.pending_faults().is_empty());
    // A failing exchange (FailNth) changes nothing.
    xen.inject(Fault::FailNth {
        op: SimOp::MemoryExchange,
        nth: 1,
        errno: 1,
    });
    assert_eq!(
        create_contiguous(&g, &d, g.alloc_aligned(8, 8), 3, 32),
        Err(-1)
    );
    xen.check_invariants().unwrap();
}

#[test]
fn partial_exchange_reports_progress_and_stays_consistent() {
    let xen = Xen::new(SimConfig::x86_pv());
    let (g, d) = (xen.pv_guest(), xen.dom0());
    let a = g.alloc_pages(4);
    let pfn0 = a.as_u64() / PAGE;
    let old: Vec<u64> = (0..4).map(|i| p2m(&g, pfn0 + i)).collect();
    for i in 0..4 {
        assert_eq!(uvm(&d, g.va_of(PhysAddr::new((pfn0 + i) * PAGE)), 0, 0), 0);
        g.p2m()[(pfn0 + i) as usize].store(INVALID_ENTRY, Ordering::Relaxed);
    }
    xen.inject(Fault::PartialExchange {
        nth: 1,
        done_extents: 2,
    });
    let mut inp = old.clone();
    let mut out: Vec<u64> = (0..4).map(|i| pfn0 + i).collect();
    let (rc, done) = exchange(&d, &mut inp, 0, &mut out, 0, 32);
    assert_eq!((rc, done), (-12, 2));
    // The done part is done: new frames in out[0..2] with the M2P set, old frames freed.
    for i in 0..2 {
        assert_ne!(out[i], pfn0 + i as u64);
        assert_eq!(m2p(&g, out[i]), pfn0 + i as u64);
        assert_eq!(xen.owner_of(swiotlb_core::Bfn::new(old[i])), None);
    }
    // The rest is untouched.
    assert_eq!(&out[2..], &[pfn0 + 2, pfn0 + 3]);
    for (i, &frame) in old.iter().enumerate().skip(2) {
        assert_eq!(xen.owner_of(swiotlb_core::Bfn::new(frame)), Some(0));
        assert_eq!(m2p(&g, frame), pfn0 + i as u64);
    }
    // The guest remaps what it has: new frames for the done part, old ones for the rest.
    let now = [out[0], out[1], old[2], old[3]];
    for i in 0..4u64 {
        let flags = if i == 3 { UVMF_INVLPG } else { 0 };
        assert_eq!(
            uvm(
                &d,
                g.va_of(PhysAddr::new((pfn0 + i) * PAGE)),
                now[i as usize] << 12 | PTE_P_RW,
                flags
            ),
            0
        );
        g.p2m()[(pfn0 + i) as usize].store(now[i as usize], Ordering::Relaxed);
    }
    xen.check_invariants().unwrap();
    // Continuing from nr_exchanged finishes the job.
    let mut rest_in = [old[2], old[3]];
    let mut rest_out = [pfn0 + 2, pfn0 + 3];
    for i in 2..4u64 {
        assert_eq!(uvm(&d, g.va_of(PhysAddr::new((pfn0 + i) * PAGE)), 0, 0), 0);
        g.p2m()[(pfn0 + i) as usize].store(INVALID_ENTRY, Ordering::Relaxed);
    }
    assert_eq!(exchange(&d, &mut rest_in, 0, &mut rest_out, 0, 32), (0, 2));
    xen.check_invariants().unwrap();
}

#[test]
fn devices_reach_memory_by_bus_address_within_their_mask() {
    let xen = Xen::new(SimConfig::x86_pv());
    let g = xen.pv_guest();
    let dev32 = xen.device(DmaMask::BITS_32, true);
    let dev64 = xen.device(DmaMask::FULL, true);
    // Find a dom0 page above 4 GiB and one below.
    let (mut hi, mut lo) = (None, None);
    for pfn in 256..g.nr_pages() {
        let m = p2m(&g, pfn);
        if m << 12 >= 1 << 32 {
            hi.get_or_insert(pfn);
        } else {
            lo.get_or_insert(pfn);
        }
    }
    let (hi, lo) = (hi.unwrap(), lo.unwrap());
    g.fill_pattern(PhysAddr::new(hi * PAGE), 4096, 1);
    let hi_bus = BusAddr::new(p2m(&g, hi) << 12);
    let lo_bus = BusAddr::new(p2m(&g, lo) << 12);
    // Beyond the mask: a fault, nothing read or written.
    let f = dev32.write(hi_bus, &[0u8; 16]).unwrap_err();
    assert!(matches!(f, DmaFault::BeyondMask { write: true, .. }));
    assert!(g.check_pattern(PhysAddr::new(hi * PAGE), 4096, 1));
    assert_eq!(dev32.faults(), vec![f]);
    assert_eq!(dev32.bytes_written(), 0);
    // Straddling the mask's end.
    assert!(dev32.read(BusAddr::new((1 << 32) - 8), 16).is_err());
    // The 64-bit device reaches it.
    let data = dev64.read(hi_bus, 4096).unwrap();
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == xen_sim::pattern_byte(1, i))
    );
    dev32.write(lo_bus, b"dma!").unwrap();
    let mut b = [0u8; 4];
    g.read(PhysAddr::new(lo * PAGE), &mut b);
    assert_eq!(&b, b"dma!");
    assert_eq!((dev32.bytes_written(), dev64.bytes_read()), (4, 4096));
    // A free frame, and an address with no RAM.
    assert!(matches!(
        dev32.read(BusAddr::new(16 << 20), 4),
        Err(DmaFault::NotOwned { .. })
    ));
    assert!(matches!(
        dev32.read(BusAddr::new(0x1000), 4),
        Err(DmaFault::NoMemory { .. })
    ));
    assert!(
        xen.cache_violations().is_empty(),
        "coherent devices are outside the cache model"
    );
}

#[test]
fn version_features_console_and_shutdown() {
    let xen = Xen::new(SimConfig::x86_pv());
    let d = xen.dom0();
    // SAFETY: no pointer.
    let v = unsafe {
        d.hypercall(
            HYPERVISOR_XEN_VERSION,
            [u64::from(XENVER_VERSION), 0, 0, 0, 0],
        )
    };
    assert_eq!(v, 4 << 16 | 17);
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
    assert_eq!(
        fi[1] & (1 << XENFEAT_DIRECT_MAPPED),
        0,
        "x86 PV is not direct mapped"
    );
    let mut msg = *b"hello from dom0\n";
    // SAFETY: `msg` is live.
    let rc = unsafe {
        d.hypercall(
            HYPERVISOR_CONSOLE_IO,
            [0, msg.len() as u64, addr(msg.as_mut_ptr()), 0, 0],
        )
    };
    assert_eq!(rc, 0);
    let mut msg2 = *b"hi\n";
    // SAFETY: `msg2` is live.
    unsafe {
        xen.domu()
            .hypercall(HYPERVISOR_CONSOLE_IO, [0, 3, addr(msg2.as_mut_ptr()), 0, 0])
    };
    assert_eq!(xen.console_output(), "hello from dom0\n(d1) hi\n");
    let mut reason = SHUTDOWN_POWEROFF;
    // SAFETY: `reason` is a live sched_shutdown.
    let rc = unsafe {
        d.hypercall(
            HYPERVISOR_SCHED_OP,
            [u64::from(SCHEDOP_SHUTDOWN), addr(&mut reason), 0, 0, 0],
        )
    };
    assert_eq!(rc, 0);
    assert_eq!(xen.shutdown_reason(), Some(SHUTDOWN_POWEROFF));
    // SAFETY: an unknown hypercall takes no pointer.
    assert_eq!(unsafe { d.hypercall(40, [0; 5]) }, -38);
    let c = xen.counters();
    assert_eq!(
        (
            c.count(SimOp::XenVersion),
            c.count(SimOp::ConsoleIo),
            c.count(SimOp::Other)
        ),
        (2, 2, 1)
    );
    xen.reset_counters();
    assert_eq!(xen.counters().traps(), 0);
}

#[test]
fn x86_cache_flush_and_frames_xen_keeps() {
    let xen = Xen::new(SimConfig::x86_pv());
    let (g, d) = (xen.pv_guest(), xen.dom0());
    let p = g.alloc_pages(1);
    let bus = g.machine_addr(p).unwrap().as_u64();
    assert_eq!(cache_flush(&d, 0, 0, 0, 0), 0);
    assert_eq!(cache_flush(&d, bus, 0, 64, xen_abi::GNTTAB_CACHE_CLEAN), 0);
    // x86 Xen has no invalidate-only primitive.
    assert_eq!(
        cache_flush(&d, bus, 0, 64, xen_abi::GNTTAB_CACHE_INVAL),
        -95
    );
    // Frames Xen took for itself are not DMA targets.
    assert!(xen.hog_free_frames_below(32 << 20) > 0);
    let dev = xen.device(DmaMask::BITS_32, true);
    assert!(matches!(
        dev.read(BusAddr::new(16 << 20), 8),
        Err(DmaFault::NotOwned { .. })
    ));
    assert_eq!(
        xen.owner_of(swiotlb_core::Bfn::new((16 << 20) >> 12)),
        Some(xen_abi::DOMID_XEN)
    );
    xen.check_invariants().unwrap();
}

/// Xen 4.21 builds `GNTTABOP_cache_flush` for Arm only: on x86 every use of it, the zeroed
/// probe included, is `-ENOSYS` (as on a Xen that never had it); on arm64 it stays.
#[test]
fn x86_xen_4_21_has_no_gnttabop_cache_flush() {
    for (major, minor, present) in [(4, 17, true), (4, 20, true), (4, 21, false), (5, 0, false)] {
        let xen = Xen::new(SimConfig::x86_pv().with_xen_version(major, minor));
        let (g, d) = (xen.pv_guest(), xen.dom0());
        let bus = g.machine_addr(g.alloc_pages(1)).unwrap().as_u64();
        let want = |rc: i64| if present { rc } else { -38 };
        assert_eq!(cache_flush(&d, 0, 0, 0, 0), want(0), "{major}.{minor}");
        assert_eq!(
            cache_flush(&d, bus, 0, 64, xen_abi::GNTTAB_CACHE_CLEAN),
            want(0),
            "{major}.{minor}"
        );
        assert_eq!(xen_abi::ops::cache_flush_probe(&d), present);
        assert_eq!(xen.counters().count(SimOp::CacheFlush), 3);
        xen.check_invariants().unwrap();
    }
    let arm = Xen::new(SimConfig::arm64().with_xen_version(4, 21));
    assert_eq!(cache_flush(&arm.dom0(), 0, 0, 0, 0), 0);
}
