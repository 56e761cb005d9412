//! Shared helpers of the simulator's tests: hypercalls built from the ABI structures, and
//! Linux's `xen_create_contiguous_region` sequence written the way a PV kernel does it.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use swiotlb_core::PhysAddr;
use xen_abi::{
    DOMID_SELF, GNTTABOP_CACHE_FLUSH, GNTTABOP_MAP_GRANT_REF, GNTTABOP_UNMAP_GRANT_REF,
    GnttabCacheFlush, GnttabCacheFlushA, GnttabMapGrantRef, GnttabUnmapGrantRef, GuestHandle,
    HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_MEMORY_OP, HYPERVISOR_MMU_UPDATE, HYPERVISOR_MULTICALL,
    HYPERVISOR_UPDATE_VA_MAPPING, Hypercall, MmuUpdate, MulticallEntry, UVMF_ALL, UVMF_INVLPG,
    UVMF_TLB_FLUSH, XENMEM_EXCHANGE, XenMemoryExchange, XenMemoryReservation, XenPfn,
};
use xen_sim::{Domain, INVALID_ENTRY, PvGuest};

use std::sync::atomic::Ordering;

pub const PAGE: u64 = 4096;
pub const PTE_P_RW: u64 = 0b11;

pub fn addr<T>(p: *mut T) -> u64 {
    p.expose_provenance() as u64
}

/// `XENMEM_exchange` of `inp` (order `in_order` extents) for `out.len()` extents of
/// `out_order` below `2^bits`; returns `(rc, nr_exchanged)`.
pub fn exchange(
    dom: &Domain,
    inp: &mut [XenPfn],
    in_order: u32,
    out: &mut [XenPfn],
    out_order: u32,
    bits: u8,
) -> (i64, u64) {
    let mut x = XenMemoryExchange {
        in_: XenMemoryReservation {
            extent_start: GuestHandle::new(inp.as_mut_ptr()),
            nr_extents: inp.len() as u64,
            extent_order: in_order,
            mem_flags: 0,
            domid: DOMID_SELF,
        },
        out: XenMemoryReservation {
            extent_start: GuestHandle::new(out.as_mut_ptr()),
            nr_extents: out.len() as u64,
            extent_order: out_order,
            mem_flags: u32::from(bits),
            domid: DOMID_SELF,
        },
        nr_exchanged: 0,
    };
    let rc = raw_exchange(dom, &mut x);
    (rc, x.nr_exchanged)
}

pub fn raw_exchange(dom: &Domain, x: &mut XenMemoryExchange) -> i64 {
    // SAFETY: `x` and its lists are live and valid for the call.
    unsafe {
        dom.hypercall(
            HYPERVISOR_MEMORY_OP,
            [u64::from(XENMEM_EXCHANGE), addr(x), 0, 0, 0],
        )
    }
}

pub fn uvm(dom: &Domain, va: u64, pte: u64, flags: u64) -> i64 {
    // SAFETY: update_va_mapping takes no pointer.
    unsafe { dom.hypercall(HYPERVISOR_UPDATE_VA_MAPPING, [va, pte, flags, 0, 0]) }
}

pub fn uvm_entry(va: u64, pte: u64, flags: u64) -> MulticallEntry {
    MulticallEntry {
        op: u64::from(HYPERVISOR_UPDATE_VA_MAPPING),
        result: 0,
        args: [va, pte, flags, 0, 0, 0],
    }
}

pub fn multicall(dom: &Domain, entries: &mut [MulticallEntry]) -> i64 {
    // SAFETY: the entries are live; their arguments carry no pointers or live ones.
    unsafe {
        dom.hypercall(
            HYPERVISOR_MULTICALL,
            [addr(entries.as_mut_ptr()), entries.len() as u64, 0, 0, 0],
        )
    }
}

pub fn mmu_update(dom: &Domain, reqs: &mut [MmuUpdate]) -> (i64, u32) {
    let mut done = 0u32;
    // SAFETY: the requests and the counter are live.
    let rc = unsafe {
        dom.hypercall(
            HYPERVISOR_MMU_UPDATE,
            [
                addr(reqs.as_mut_ptr()),
                reqs.len() as u64,
                addr(&mut done),
                u64::from(DOMID_SELF),
                0,
            ],
        )
    };
    (rc, done)
}

pub fn map_grants(dom: &Domain, ops: &mut [GnttabMapGrantRef]) -> i64 {
    // SAFETY: the ops are live.
    unsafe {
        dom.hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            [
                u64::from(GNTTABOP_MAP_GRANT_REF),
                addr(ops.as_mut_ptr()),
                ops.len() as u64,
                0,
                0,
            ],
        )
    }
}

pub fn unmap_grants(dom: &Domain, ops: &mut [GnttabUnmapGrantRef]) -> i64 {
    // SAFETY: the ops are live.
    unsafe {
        dom.hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            [
                u64::from(GNTTABOP_UNMAP_GRANT_REF),
                addr(ops.as_mut_ptr()),
                ops.len() as u64,
                0,
                0,
            ],
        )
    }
}

pub fn cache_flush(dom: &Domain, bus: u64, offset: u16, length: u16, op: u32) -> i64 {
    let mut cf = GnttabCacheFlush {
        a: GnttabCacheFlushA { dev_bus_addr: bus },
        offset,
        length,
        op,
    };
    // SAFETY: `cf` is live.
    unsafe {
        dom.hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            [u64::from(GNTTABOP_CACHE_FLUSH), addr(&mut cf), 1, 0, 0],
        )
    }
}

pub fn p2m(g: &PvGuest, pfn: u64) -> u64 {
    g.p2m()[pfn as usize].load(Ordering::Relaxed)
}

pub fn m2p(g: &PvGuest, mfn: u64) -> u64 {
    g.m2p()[mfn as usize].load(Ordering::Relaxed)
}

/// Linux's `xen_create_contiguous_region`: zap (multicall of update_va_mapping to 0, P2M
/// INVALID), exchange `2^order` order-0 frames for one order-`order` extent below
/// `2^bits`, remap (new frames on success, old ones on failure; global flush on the last
/// entry). Returns the first MFN of the extent, or the exchange's rc.
pub fn create_contiguous(
    g: &PvGuest,
    dom: &Domain,
    phys: PhysAddr,
    order: u32,
    bits: u8,
) -> Result<u64, i64> {
    let n = 1u64 << order;
    let pfn0 = phys.as_u64() / PAGE;
    let mut in_frames: Vec<u64> = (0..n).map(|i| p2m(g, pfn0 + i)).collect();
    let mut zap: Vec<MulticallEntry> = (0..n)
        .map(|i| uvm_entry(g.va_of(PhysAddr::new((pfn0 + i) * PAGE)), 0, 0))
        .collect();
    assert_eq!(multicall(dom, &mut zap), 0);
    assert!(zap.iter().all(|e| e.result == 0), "zap failed: {zap:?}");
    for i in 0..n {
        g.p2m()[(pfn0 + i) as usize].store(INVALID_ENTRY, Ordering::Relaxed);
    }
    let mut out = [pfn0];
    let (rc, done) = exchange(dom, &mut in_frames, 0, &mut out, order, bits);
    let ok = rc == 0 && done == n;
    let target: Vec<u64> = if ok {
        (0..n).map(|i| out[0] + i).collect()
    } else {
        in_frames.clone()
    };
    let last_flags = if order == 0 {
        UVMF_INVLPG | UVMF_ALL
    } else {
        UVMF_TLB_FLUSH | UVMF_ALL
    };
    let mut remap: Vec<MulticallEntry> = (0..n)
        .map(|i| {
            let flags = if i == n - 1 { last_flags } else { 0 };
            uvm_entry(
                g.va_of(PhysAddr::new((pfn0 + i) * PAGE)),
                target[i as usize] << 12 | PTE_P_RW,
                flags,
            )
        })
        .collect();
    assert_eq!(multicall(dom, &mut remap), 0);
    assert!(
        remap.iter().all(|e| e.result == 0),
        "remap failed: {remap:?}"
    );
    for i in 0..n {
        g.p2m()[(pfn0 + i) as usize].store(target[i as usize], Ordering::Relaxed);
    }
    if ok { Ok(out[0]) } else { Err(rc) }
}
