//! x86 PV semantics through the ABI structures: P2M/M2P, `XENMEM_exchange`,
//! `update_va_mapping`, `mmu_update`, `multicall`, and the invariant checker.

mod common;

use common::*;
use swiotlb_core::PhysAddr;
use xen_abi::{
    DOMID_SELF, GuestHandle, HYPERVISOR_MULTICALL, HYPERVISOR_XEN_VERSION, MMU_MACHPHYS_UPDATE,
    MmuUpdate, MulticallEntry, UVMF_ALL, UVMF_INVLPG, UVMF_TLB_FLUSH, XenMemoryExchange,
    XenMemoryReservation,
};
use xen_sim::{INVALID_ENTRY, SimConfig, SimOp, Violation, Xen};

const ENOMEM: i64 = -12;
const EINVAL: i64 = -22;
const EPERM: i64 = -1;
const EFAULT: i64 = -14;
const ENOSYS: i64 = -38;

fn machine() -> (Xen, xen_sim::PvGuest, xen_sim::Domain) {
    let xen = Xen::new(SimConfig::x86_pv());
    let g = xen.pv_guest();
    let d = xen.dom0();
    (xen, g, d)
}

#[test]
fn boot_state_is_consistent_and_scrambled() {
    let (xen, g, _) = machine();
    xen.check_invariants().unwrap();
    assert_eq!(g.nr_pages(), 16384);
    let mfns: Vec<u64> = (0..g.nr_pages()).map(|p| p2m(&g, p)).collect();
    let adjacent = mfns.windows(2).filter(|w| w[1] == w[0] + 1).count();
    assert!(
        adjacent < 50,
        "P2M not scrambled: {adjacent} machine-adjacent neighbours"
    );
    assert!(
        mfns.iter().any(|&m| m << 12 >= 1 << 32),
        "no dom0 frame above 4 GiB"
    );
    assert!(
        mfns.iter().any(|&m| m << 12 < 1 << 32),
        "no dom0 frame below 4 GiB"
    );
    for (pfn, &mfn) in mfns.iter().enumerate().take(100) {
        assert_eq!(m2p(&g, mfn), pfn as u64);
        assert_eq!(g.pte(pfn as u64), Some(mfn << 12 | PTE_P_RW));
    }
    assert!(xen.free_frames_below(1 << 32) >= 4096);
}

#[test]
fn exchange_64_frames_for_an_aligned_order6_extent_below_4g() {
    let (xen, g, d) = machine();
    let buf = g.alloc_aligned(64, 64);
    let pfn0 = buf.as_u64() / PAGE;
    let old: Vec<u64> = (0..64).map(|i| p2m(&g, pfn0 + i)).collect();
    g.fill_pattern(buf, 64 * 4096, 7);
    xen.reset_counters();
    let mfn = create_contiguous(&g, &d, buf, 6, 32).unwrap();
    xen.check_invariants().unwrap();
    assert_eq!(mfn % 64, 0, "extent not naturally aligned");
    assert!((mfn + 64) << 12 <= 1 << 32, "extent not below 4 GiB");
    for i in 0..64 {
        assert_eq!(p2m(&g, pfn0 + i), mfn + i);
        assert_eq!(m2p(&g, mfn + i), pfn0 + i, "M2P not updated by Xen");
        assert_eq!(
            m2p(&g, old[i as usize]),
            INVALID_ENTRY,
            "freed frame keeps an M2P entry"
        );
        assert_eq!(xen.owner_of(swiotlb_core::Bfn::new(old[i as usize])), None);
    }
    // Xen scrubbed the old frames and hands out zeroed ones: nothing leaks.
    let mut page = vec![0xffu8; 4096];
    assert!(xen.read_machine(swiotlb_core::BusAddr::new(old[0] << 12), &mut page));
    assert!(page.iter().all(|&b| b == 0));
    g.read(buf, &mut page);
    assert!(page.iter().all(|&b| b == 0));
    let c = xen.counters();
    assert_eq!(c.count(SimOp::MemoryExchange), 1);
    assert_eq!(c.count(SimOp::UpdateVaMapping), 128);
    assert_eq!(c.count(SimOp::Multicall), 2);
    assert_eq!(c.traps(), 3);
    assert_eq!(c.exchanged_frames(), 64);
    assert_eq!(c.by_name("XENMEM_exchange"), 1);
    assert!(xen.tlb_violations().is_empty());
}

#[test]
fn fixup_style_rising_address_bits_gets_the_lowest_memory() {
    let (xen, g, d) = machine();
    let buf = g.alloc_aligned(64, 64);
    // The low region starts at 16 MiB: nothing fits below 2^18 .. 2^24.
    let mut bits = 18u8;
    let mfn = loop {
        match create_contiguous(&g, &d, buf, 6, bits) {
            Ok(m) => break m,
            Err(rc) => {
                assert_eq!(rc, ENOMEM, "at {bits} bits");
                xen.check_invariants().unwrap();
                bits += 1;
                assert!(bits <= 32);
            }
        }
    };
    assert_eq!(bits, 25);
    assert_eq!(mfn << 12, 16 << 20, "lowest fitting extent expected");
    xen.check_invariants().unwrap();
}

#[test]
fn enomem_when_nothing_fits_leaves_a_consistent_rolled_back_state() {
    let (xen, g, d) = machine();
    let buf = g.alloc_aligned(64, 64);
    g.fill_pattern(buf, 64 * 4096, 3);
    let pfn0 = buf.as_u64() / PAGE;
    let before: Vec<u64> = (0..64).map(|i| p2m(&g, pfn0 + i)).collect();
    assert!(xen.hog_free_frames_below(1 << 32) > 0);
    assert_eq!(create_contiguous(&g, &d, buf, 6, 32), Err(ENOMEM));
    xen.check_invariants().unwrap();
    let after: Vec<u64> = (0..64).map(|i| p2m(&g, pfn0 + i)).collect();
    assert_eq!(before, after);
    assert!(
        g.check_pattern(buf, 64 * 4096, 3),
        "rollback lost the contents"
    );
    // Without a limit there is still memory above 4 GiB.
    assert!(create_contiguous(&g, &d, buf, 6, 0).is_ok());
    xen.check_invariants().unwrap();
}

#[test]
fn exchange_refuses_mapped_and_foreign_frames() {
    let (xen, g, d) = machine();
    let buf = g.alloc_pages(1);
    let pfn = buf.as_u64() / PAGE;
    let mfn = p2m(&g, pfn);
    // Still mapped in the linear map: steal_page fails.
    let mut inp = [mfn];
    let mut out = [pfn];
    assert_eq!(exchange(&d, &mut inp, 0, &mut out, 0, 32), (EINVAL, 0));
    assert_eq!(out, [pfn], "out list touched on failure");
    xen.check_invariants().unwrap();
    // A frame of the domU, and a free frame.
    let domu_frame = xen
        .domu_guest()
        .frame(xen.domu_grant(1)[0])
        .unwrap()
        .as_u64();
    let mut inp = [domu_frame];
    assert_eq!(exchange(&d, &mut inp, 0, &mut out, 0, 0).0, EINVAL);
    let mut inp = [(16 << 20) >> 12];
    assert_eq!(xen.owner_of(swiotlb_core::Bfn::new(inp[0])), None);
    assert_eq!(exchange(&d, &mut inp, 0, &mut out, 0, 0).0, EINVAL);
    // Not RAM at all.
    let mut inp = [0x10];
    assert_eq!(exchange(&d, &mut inp, 0, &mut out, 0, 0).0, EINVAL);
    xen.check_invariants().unwrap();
}

#[test]
fn exchange_argument_checks() {
    let (xen, _g, d) = machine();
    let mut inp = vec![0u64; 64];
    let mut out = vec![0u64; 1];
    // Unequal sizes.
    assert_eq!(exchange(&d, &mut inp, 0, &mut out, 5, 32).0, EINVAL);
    // Orders beyond the limits (dom0: 18 with I/O caps; domU: 9).
    let mut one = [0u64];
    assert_eq!(exchange(&d, &mut one, 19, &mut [0u64], 19, 0).0, EPERM);
    assert_eq!(
        exchange(&xen.domu(), &mut one, 10, &mut [0u64], 10, 0).0,
        EPERM
    );
    // As Xen's memory_exchange, the order is checked first: unequal sizes above the limit
    // are EPERM, not EINVAL.
    assert_eq!(exchange(&d, &mut inp, 0, &mut out, 19, 32).0, EPERM);
    // nr_exchanged beyond in.nr_extents, mismatched and foreign domids, null lists.
    let mk = |inp: &mut [u64], out: &mut [u64]| XenMemoryExchange {
        in_: XenMemoryReservation {
            extent_start: GuestHandle::new(inp.as_mut_ptr()),
            nr_extents: inp.len() as u64,
            extent_order: 0,
            mem_flags: 0,
            domid: DOMID_SELF,
        },
        out: XenMemoryReservation {
            extent_start: GuestHandle::new(out.as_mut_ptr()),
            nr_extents: out.len() as u64,
            extent_order: 0,
            mem_flags: 0,
            domid: DOMID_SELF,
        },
        nr_exchanged: 0,
    };
    let (mut a, mut b) = ([0u64; 2], [0u64; 2]);
    let mut x = mk(&mut a, &mut b);
    x.nr_exchanged = 3;
    assert_eq!(raw_exchange(&d, &mut x), EINVAL);
    let mut x = mk(&mut a, &mut b);
    x.out.domid = 1;
    assert_eq!(raw_exchange(&d, &mut x), EINVAL);
    let mut x = mk(&mut a, &mut b);
    x.in_.domid = 1;
    x.out.domid = 1;
    assert_eq!(raw_exchange(&d, &mut x), EPERM);
    let mut x = mk(&mut a, &mut b);
    x.in_.extent_start = GuestHandle::null();
    assert_eq!(raw_exchange(&d, &mut x), EFAULT);
    // All extents already exchanged: nothing to do.
    let mut x = mk(&mut a, &mut b);
    x.nr_exchanged = 2;
    assert_eq!(raw_exchange(&d, &mut x), 0);
    xen.check_invariants().unwrap();
}

#[test]
fn reverse_exchange_scatters_a_contiguous_extent() {
    let (xen, g, d) = machine();
    let buf = g.alloc_aligned(64, 64);
    let pfn0 = buf.as_u64() / PAGE;
    let first = create_contiguous(&g, &d, buf, 6, 32).unwrap();
    // Linux's xen_destroy_contiguous_region: zap, 1 x order 6 -> 64 x order 0, remap.
    let mut zap: Vec<MulticallEntry> = (0..64)
        .map(|i| uvm_entry(g.va_of(PhysAddr::new((pfn0 + i) * PAGE)), 0, 0))
        .collect();
    assert_eq!(multicall(&d, &mut zap), 0);
    for i in 0..64 {
        g.p2m()[(pfn0 + i) as usize].store(INVALID_ENTRY, std::sync::atomic::Ordering::Relaxed);
    }
    xen.check_invariants().unwrap();
    let mut inp = [first];
    let mut out: Vec<u64> = (0..64).map(|i| pfn0 + i).collect();
    assert_eq!(exchange(&d, &mut inp, 6, &mut out, 0, 0), (0, 1));
    for (i, &mfn) in out.iter().enumerate() {
        let flags = if i == 63 {
            UVMF_TLB_FLUSH | UVMF_ALL
        } else {
            0
        };
        assert_eq!(
            uvm(
                &d,
                g.va_of(PhysAddr::new((pfn0 + i as u64) * PAGE)),
                mfn << 12 | PTE_P_RW,
                flags
            ),
            0
        );
        g.p2m()[pfn0 as usize + i].store(mfn, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(m2p(&g, mfn), pfn0 + i as u64);
    }
    xen.check_invariants().unwrap();
    assert!(xen.tlb_violations().is_empty());
}

#[test]
fn update_va_mapping_checks_and_remaps() {
    let (xen, g, d) = machine();
    let a = g.alloc_pages(2);
    let (pa, pb) = (a.as_u64() / PAGE, a.as_u64() / PAGE + 1);
    let (ma, mb) = (p2m(&g, pa), p2m(&g, pb));
    g.fill_pattern(PhysAddr::new(pb * PAGE), 4096, 9);
    let va = g.va_of(a);
    // Outside the linear map, a frame dom0 does not own, a free frame, a bad flush type.
    assert_eq!(
        uvm(&d, g.linear_base() - PAGE, ma << 12 | PTE_P_RW, 0),
        EINVAL
    );
    assert_eq!(
        uvm(
            &d,
            g.va_of(PhysAddr::new(g.nr_pages() * PAGE)),
            ma << 12 | PTE_P_RW,
            0
        ),
        EINVAL
    );
    let domu_frame = xen
        .domu_guest()
        .frame(xen.domu_grant(1)[0])
        .unwrap()
        .as_u64();
    assert_eq!(uvm(&d, va, domu_frame << 12 | PTE_P_RW, 0), EINVAL);
    assert_eq!(uvm(&d, va, ((16 << 20) >> 12) << 12 | PTE_P_RW, 0), EINVAL);
    assert_eq!(uvm(&d, va, ma << 12 | PTE_P_RW, 3), EINVAL);
    assert_eq!(
        g.pte(pa),
        Some(ma << 12 | PTE_P_RW),
        "a refused update changed the PTE"
    );
    // The domU has no page table to change.
    assert_eq!(uvm(&xen.domu(), va, 0, 0), EINVAL);
    // Point pa's va at pb's frame: the CPU now reaches pb's contents there.
    assert_eq!(uvm(&d, va, mb << 12 | PTE_P_RW, UVMF_INVLPG | UVMF_ALL), 0);
    assert!(g.check_pattern(a, 4096, 9));
    // The P2M no longer matches the page table.
    assert!(matches!(
        xen.check_invariants(),
        Err(Violation::PteP2mMismatch { .. })
    ));
    assert_eq!(uvm(&d, va, ma << 12 | PTE_P_RW, UVMF_INVLPG), 0);
    xen.check_invariants().unwrap();
    assert!(xen.tlb_violations().is_empty());
}

#[test]
fn a_remap_without_flush_is_recorded_as_a_stale_tlb_access() {
    let (xen, g, d) = machine();
    let a = g.alloc_pages(1);
    let pa = a.as_u64() / PAGE;
    let ma = p2m(&g, pa);
    assert_eq!(uvm(&d, g.va_of(a), 0, 0), 0);
    assert_eq!(uvm(&d, g.va_of(a), ma << 12 | PTE_P_RW, 0), 0);
    let mut b = [0u8; 8];
    g.read(a, &mut b);
    let v = xen.tlb_violations();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].pfn, pa);
    assert_eq!(xen.counters().tlb_flushes(), 0);
}

#[test]
#[should_panic(expected = "not present")]
fn cpu_access_to_a_zapped_page_panics() {
    let (_xen, g, d) = machine();
    let a = g.alloc_pages(1);
    assert_eq!(uvm(&d, g.va_of(a), 0, UVMF_INVLPG), 0);
    let mut b = [0u8; 1];
    g.read(a, &mut b);
}

#[test]
fn invariant_checker_catches_guest_mistakes() {
    let (xen, g, d) = machine();
    let a = g.alloc_pages(2);
    let (pa, pb) = (a.as_u64() / PAGE, a.as_u64() / PAGE + 1);
    let (ma, mb) = (p2m(&g, pa), p2m(&g, pb));
    let set =
        |pfn: u64, v: u64| g.p2m()[pfn as usize].store(v, std::sync::atomic::Ordering::Relaxed);
    // Zapped but the P2M still says the frame.
    assert_eq!(uvm(&d, g.va_of(a), 0, UVMF_INVLPG), 0);
    assert!(
        matches!(xen.check_invariants(), Err(Violation::ZappedNotInvalid { pfn, .. }) if pfn == pa)
    );
    set(pa, INVALID_ENTRY);
    xen.check_invariants().unwrap();
    assert_eq!(uvm(&d, g.va_of(a), ma << 12 | PTE_P_RW, UVMF_INVLPG), 0);
    set(pa, ma);
    // Two pfns naming one frame; a P2M entry naming another domain's frame.
    set(pb, ma);
    assert!(xen.check_invariants().is_err());
    let domu_frame = xen
        .domu_guest()
        .frame(xen.domu_grant(1)[0])
        .unwrap()
        .as_u64();
    set(pb, domu_frame);
    assert!(matches!(
        xen.check_invariants(),
        Err(Violation::P2mNotOwned { .. })
    ));
    set(pb, mb);
    xen.check_invariants().unwrap();
}

#[test]
fn mmu_update_normal_pt_update_and_machphys() {
    let (xen, g, d) = machine();
    let a = g.alloc_pages(1);
    let pa = a.as_u64() / PAGE;
    let ma = p2m(&g, pa);
    let mut reqs = [
        MmuUpdate {
            ptr: g.pte_machine_addr(pa),
            val: 0,
        },
        MmuUpdate {
            ptr: g.pte_machine_addr(pa),
            val: ma << 12 | PTE_P_RW,
        },
        MmuUpdate {
            ptr: ma << 12 | MMU_MACHPHYS_UPDATE,
            val: pa,
        },
    ];
    assert_eq!(mmu_update(&d, &mut reqs), (0, 3));
    xen.check_invariants().unwrap();
    // A bad PTE address stops the batch; the count says how far it went.
    let mut reqs = [
        MmuUpdate {
            ptr: g.pte_machine_addr(pa),
            val: ma << 12 | PTE_P_RW,
        },
        MmuUpdate {
            ptr: 0x1000,
            val: 0,
        },
        MmuUpdate {
            ptr: g.pte_machine_addr(pa),
            val: 0,
        },
    ];
    assert_eq!(mmu_update(&d, &mut reqs), (EINVAL, 1));
    // MACHPHYS_UPDATE of a frame dom0 does not own.
    let mut reqs = [MmuUpdate {
        ptr: ((16 << 20) >> 12 << 12) | MMU_MACHPHYS_UPDATE,
        val: 1,
    }];
    assert_eq!(mmu_update(&d, &mut reqs), (EINVAL, 0));
    assert_eq!(g.pte(pa), Some(ma << 12 | PTE_P_RW));
    assert_eq!(xen.counters().count(SimOp::MmuUpdate), 6);
    xen.check_invariants().unwrap();
}

#[test]
fn multicall_runs_entries_in_order_and_reports_each_result() {
    let (xen, g, d) = machine();
    let a = g.alloc_pages(1);
    let ma = p2m(&g, a.as_u64() / PAGE);
    let mut e = [
        uvm_entry(g.va_of(a), 0, 0),
        uvm_entry(g.linear_base() - PAGE, 0, 0),
        MulticallEntry {
            op: 99,
            result: 0,
            args: [0; 6],
        },
        MulticallEntry {
            op: u64::from(HYPERVISOR_MULTICALL),
            result: 0,
            args: [0; 6],
        },
        MulticallEntry {
            op: u64::from(HYPERVISOR_XEN_VERSION),
            result: 0,
            args: [0; 6],
        },
        uvm_entry(g.va_of(a), ma << 12 | PTE_P_RW, UVMF_TLB_FLUSH | UVMF_ALL),
    ];
    assert_eq!(multicall(&d, &mut e), 0);
    let results: Vec<i64> = e.iter().map(|e| e.result).collect();
    assert_eq!(results, [0, EINVAL, ENOSYS, EINVAL, 4 << 16 | 17, 0]);
    xen.check_invariants().unwrap();
    assert_eq!(xen.counters().tlb_flushes(), 1);
}

#[test]
fn dom0_may_exchange_above_order_9_and_the_limits_are_configurable() {
    let (xen, g, d) = machine();
    let buf = g.alloc_aligned(1024, 1024);
    let mfn = create_contiguous(&g, &d, buf, 10, 32).unwrap();
    assert_eq!(mfn % 1024, 0);
    xen.check_invariants().unwrap();
    let strict = Xen::new(SimConfig::x86_pv().with_max_orders(9, 9));
    let (g2, d2) = (strict.pv_guest(), strict.dom0());
    let buf = g2.alloc_aligned(1024, 1024);
    let free = strict.free_frames();
    assert_eq!(create_contiguous(&g2, &d2, buf, 10, 32), Err(EPERM));
    assert_eq!(strict.free_frames(), free, "nothing exchanged");
    strict.check_invariants().unwrap();
    // memop-max-order=9,4,11,4: dom0 (control and hardware domain) gets the largest, 11.
    let booted = Xen::new(SimConfig::x86_pv().with_memop_max_order(9, 4, 11, 4));
    let (g3, d3) = (booted.pv_guest(), booted.dom0());
    let buf = g3.alloc_aligned(4096, 4096);
    assert_eq!(create_contiguous(&g3, &d3, buf, 12, 32), Err(EPERM));
    assert!(create_contiguous(&g3, &d3, buf, 11, 32).is_ok());
    let mut one = [0u64];
    assert_eq!(
        exchange(&booted.domu(), &mut one, 10, &mut [0u64], 10, 0).0,
        EPERM
    );
    booted.check_invariants().unwrap();
}

#[test]
fn the_domu_exchanges_its_own_frames() {
    let (xen, _g, _d) = machine();
    let u = xen.domu_guest();
    let r = u.grant_pages(4);
    let frames: Vec<u64> = r.iter().map(|&r| u.frame(r).unwrap().as_u64()).collect();
    for &r in &r {
        u.revoke(r).unwrap();
    }
    let mut inp = frames.clone();
    let mut out = [0u64];
    // The domU's pages 0..4 (granted in order) become one order-2 extent at pfn 0.
    assert_eq!(exchange(&xen.domu(), &mut inp, 0, &mut out, 2, 32), (0, 4));
    assert_eq!(out[0] % 4, 0);
    let r = u.grant_page(1, 0, false).unwrap();
    assert_eq!(u.frame(r).unwrap().as_u64(), out[0] + 1);
    xen.check_invariants().unwrap();
}

#[test]
fn memory_is_shared_safely_between_threads() {
    use swiotlb_core::PhysMemory;
    let (xen, g, d) = machine();
    let bufs: Vec<PhysAddr> = (0..4).map(|_| g.alloc_aligned(8, 8)).collect();
    std::thread::scope(|s| {
        for (t, &b) in bufs.iter().enumerate() {
            let (g, d) = (g.clone(), d.clone());
            s.spawn(move || {
                let mem = g.memory();
                for round in 0..20u64 {
                    g.fill_pattern(b, 4 * 4096, round);
                    // SAFETY: the two halves of this thread's buffer are disjoint and no
                    // reference covers them.
                    unsafe { mem.copy(PhysAddr::new(b.as_u64() + 4 * 4096), b, 4 * 4096) };
                    assert!(g.check_pattern(PhysAddr::new(b.as_u64() + 4 * 4096), 4 * 4096, round));
                    if round % 5 == 0 {
                        assert!(create_contiguous(&g, &d, b, 3, 32).is_ok(), "thread {t}");
                    }
                }
            });
        }
    });
    xen.check_invariants().unwrap();
    assert_eq!(xen.counters().count(SimOp::MemoryExchange), 16);
}

#[test]
fn mmuext_op_flushes_the_tlb() {
    use xen_abi::{HYPERVISOR_MMUEXT_OP, Hypercall};
    let (xen, g, d) = machine();
    let a = g.alloc_pages(2);
    let pa = a.as_u64() / PAGE;
    let (ma, mb) = (p2m(&g, pa), p2m(&g, pa + 1));
    let mmuext = |ops: &mut [[u64; 3]]| {
        let mut done = 0u32;
        // SAFETY: the ops and the counter are live.
        let rc = unsafe {
            d.hypercall(
                HYPERVISOR_MMUEXT_OP,
                [
                    addr(ops.as_mut_ptr()),
                    ops.len() as u64,
                    addr(&mut done),
                    u64::from(DOMID_SELF),
                    0,
                ],
            )
        };
        (rc, done)
    };
    // Zap and remap without flushing, then MMUEXT_INVLPG_ALL for one page and
    // MMUEXT_TLB_FLUSH_ALL for the rest.
    for (p, m) in [(pa, ma), (pa + 1, mb)] {
        let va = g.va_of(PhysAddr::new(p * PAGE));
        assert_eq!(uvm(&d, va, 0, 0), 0);
        assert_eq!(uvm(&d, va, m << 12 | PTE_P_RW, 0), 0);
    }
    assert_eq!(mmuext(&mut [[11, g.va_of(a), 0]]), (0, 1));
    let mut b = [0u8; 1];
    g.read(a, &mut b);
    assert!(xen.tlb_violations().is_empty());
    assert_eq!(mmuext(&mut [[10, 0, 0], [99, 0, 0]]), (ENOSYS, 1));
    g.read(PhysAddr::new((pa + 1) * PAGE), &mut b);
    assert!(xen.tlb_violations().is_empty());
    assert_eq!(xen.counters().count("mmuext_op"), 3);
    assert_eq!(xen.counters().tlb_flushes(), 2);
    xen.check_invariants().unwrap();
}

#[test]
fn machines_are_deterministic_per_seed() {
    let p2m_of = |seed| {
        let xen = Xen::new(SimConfig::x86_pv().with_seed(seed));
        let g = xen.pv_guest();
        (0..64).map(|p| p2m(&g, p)).collect::<Vec<_>>()
    };
    assert_eq!(p2m_of(1), p2m_of(1));
    assert_ne!(p2m_of(1), p2m_of(2));
    let xen = Xen::new(SimConfig::x86_pv());
    let dev = xen
        .device(swiotlb_core::DmaMask::BITS_32, false)
        .core_device();
    assert_eq!(
        dev,
        swiotlb_core::Device::new(swiotlb_core::DmaMask::BITS_32).with_coherent(false)
    );
    assert!(Xen::try_new(SimConfig::x86_pv().with_low(0, 16)).is_err());
    assert!(Xen::try_new(SimConfig::x86_pv().with_dom0_pages(1 << 20)).is_err());
}

#[test]
fn a_linux_style_fixup_of_an_8_mib_pool() {
    let (xen, g, d) = machine();
    let pool = g.alloc_aligned(2048, 64);
    let mut bits = 18u8;
    let mut starts = Vec::new();
    for seg in 0..32u64 {
        let phys = PhysAddr::new(pool.as_u64() + seg * 64 * PAGE);
        loop {
            match create_contiguous(&g, &d, phys, 6, bits) {
                Ok(mfn) => {
                    starts.push(mfn);
                    break;
                }
                Err(rc) => {
                    assert_eq!(rc, ENOMEM);
                    assert!(bits < 32, "segment {seg} found no memory below 4 GiB");
                    bits += 1;
                }
            }
        }
    }
    xen.check_invariants().unwrap();
    for (seg, &mfn) in starts.iter().enumerate() {
        assert_eq!(mfn % 64, 0);
        assert!((mfn + 64) << 12 <= 1 << 32);
        for i in 0..64 {
            assert_eq!(p2m(&g, pool.as_u64() / PAGE + seg as u64 * 64 + i), mfn + i);
        }
    }
    // 32 successful segments of 3 traps each, plus 7 failing attempts (18..=24 bits).
    let c = xen.counters();
    assert_eq!(c.count(SimOp::MemoryExchange), 32 + 7);
    assert_eq!(c.traps(), 3 * (32 + 7));
    assert!((c.traps_per_mib(8 << 20) - 117.0 / 8.0).abs() < 1e-9);
}
