//! The x86 PV platform against the simulated Xen machine: contiguous regions at every
//! address limit Linux's fixup tries, data zeroed where it must be and kept where it must
//! be, the simulator's invariants after every step, and fault injection at every hypercall
//! of create and destroy.

use std::sync::atomic::Ordering;

use swiotlb_core::{Bfn, Pfn, PhysAddr, Platform, PlatformError};
use swiotlb_xen_x86_pv::{X86PvError, X86PvPlatform, p2m};
use xen_sim::{Domain, Fault, PvGuest, SimConfig, SimMemory, SimOp, Xen};

const PAGE: u64 = 4096;
const ENOMEM: i32 = 12;

type Pv<'a> = X86PvPlatform<'a, Domain, SimMemory>;

fn machine() -> (Xen, PvGuest) {
    let xen = Xen::new(SimConfig::x86_pv());
    let g = xen.pv_guest();
    (xen, g)
}

fn platform<'a>(xen: &Xen, g: &'a PvGuest) -> Pv<'a> {
    platform_by(xen, g, Path::Pte)
}

/// How the platform changes the region's mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The kernel locates its PTEs: `mmu_update` lists.
    Pte,
    /// It does not: multicalls of `update_va_mapping`, Linux's way.
    Va,
}

const PATHS: [Path; 2] = [Path::Pte, Path::Va];

fn platform_by<'a>(xen: &Xen, g: &'a PvGuest, path: Path) -> Pv<'a> {
    let dom0 = match path {
        Path::Pte => xen.dom0(),
        Path::Va => xen.dom0().without_pte_addresses(),
    };
    // SAFETY: the simulator's P2M, M2P, linear map and memory of dom0, and dom0's
    // hypercalls; the tests change only regions they allocated.
    unsafe { X86PvPlatform::new(g.p2m(), g.m2p(), g.linear_base(), dom0, g.memory()) }
}

/// The traps of one unmapping or remapping of `n` pages, by path: `mmu_update` lists of
/// `MMU_BATCH` (the remap's last one in a multicall with the flush), or multicalls of
/// `MC_BATCH`.
fn batches(path: Path, n: u64) -> u64 {
    let per = match path {
        Path::Pte => swiotlb_xen_x86_pv::MMU_BATCH,
        Path::Va => swiotlb_xen_x86_pv::MC_BATCH,
    };
    n.div_ceil(per as u64)
}

fn pfn0(phys: PhysAddr) -> u64 {
    phys.as_u64() / PAGE
}

/// The machine frames the page table maps the `n` pages at `phys` to.
fn frames(g: &PvGuest, phys: PhysAddr, n: u64) -> Vec<Option<u64>> {
    (0..n)
        .map(|i| {
            g.machine_addr(PhysAddr::new(phys.as_u64() + i * PAGE))
                .map(|b| b.as_u64() / PAGE)
        })
        .collect()
}

/// The number of valid local P2M entries: with the frame count the simulator checks, equal
/// to dom0's page count exactly when no frame is lost.
fn local_entries(g: &PvGuest) -> u64 {
    g.p2m()
        .iter()
        .filter(|e| {
            matches!(
                p2m::P2mEntry::decode(e.load(Ordering::Relaxed)),
                p2m::P2mEntry::Local(_)
            )
        })
        .count() as u64
}

/// Everything a test checks after every step.
fn check(xen: &Xen, g: &PvGuest) {
    xen.check_invariants().expect("simulator invariants");
    assert_eq!(local_entries(g), g.nr_pages(), "a frame was lost");
    assert!(
        xen.tlb_violations().is_empty(),
        "{:?}",
        xen.tlb_violations()
    );
}

fn is_zero(g: &PvGuest, phys: PhysAddr, len: usize) -> bool {
    let mut buf = vec![0xa5u8; len];
    g.read(phys, &mut buf);
    buf.iter().all(|&b| b == 0)
}

/// Asserts that the region is mapped to a contiguous extent at `bus`, below `2^bits`, and
/// that P2M, M2P and page table agree.
fn assert_contiguous(pv: &Pv<'_>, g: &PvGuest, phys: PhysAddr, order: u32, bus: u64, bits: u32) {
    let n = 1u64 << order;
    assert_eq!(bus % (PAGE << order), 0, "extent not naturally aligned");
    assert!(
        bus + (n * PAGE) <= 1u64 << bits,
        "extent {bus:#x} not below 2^{bits}"
    );
    assert!(pv.is_bus_contiguous(phys, n * PAGE));
    for i in 0..n {
        let pfn = Pfn::new(pfn0(phys) + i);
        let bfn = Bfn::new(bus / PAGE + i);
        assert_eq!(pv.pfn_to_bfn(pfn), Some(bfn));
        assert_eq!(pv.bfn_to_local_pfn(bfn), Some(pfn));
        assert_eq!(
            g.machine_addr(pfn.start()).map(|b| b.as_u64() / PAGE),
            Some(bfn.as_u64())
        );
    }
}

#[test]
fn the_p2m_is_scrambled_and_translates_through_the_m2p() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    let buf = g.alloc_aligned(64, 64);
    assert!(
        !pv.is_bus_contiguous(buf, 64 * PAGE),
        "the simulator should scramble"
    );
    assert!(
        pv.is_bus_contiguous(buf, PAGE),
        "one frame is always contiguous"
    );
    assert!(pv.is_bus_contiguous(buf, 0));
    for pfn in 0..g.nr_pages() {
        let pfn = Pfn::new(pfn);
        let bfn = pv.pfn_to_bfn(pfn).expect("every dom0 page has a frame");
        assert_eq!(pv.bfn_to_local_pfn(bfn), Some(pfn));
    }
    // A free frame (M2P INVALID) is not local; a pfn beyond the P2M is identity.
    let free = (0..g.m2p().len() as u64)
        .find(|&m| g.m2p()[m as usize].load(Ordering::Relaxed) == p2m::INVALID_M2P_ENTRY)
        .unwrap();
    assert_eq!(pv.bfn_to_local_pfn(Bfn::new(free)), None);
    let beyond = Pfn::new(g.nr_pages() + 5);
    assert_eq!(pv.pfn_to_bfn(beyond), Some(Bfn::new(beyond.as_u64())));
    check(&xen, &g);
}

#[test]
fn create_at_rising_address_bits_like_the_fixup_then_destroy() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    for order in 0..=6u32 {
        let n = 1u64 << order;
        // Guard pages on both sides keep their contents.
        let before = g.alloc_pages(1);
        let buf = g.alloc_aligned(n, n);
        let after = g.alloc_pages(1);
        g.fill_pattern(before, PAGE as usize, 1);
        g.fill_pattern(after, PAGE as usize, 2);
        g.fill_pattern(buf, (n * PAGE) as usize, 3);
        let original = frames(&g, buf, n);

        let mut done = None;
        for bits in 18..=32u32 {
            // SAFETY: the test owns `buf` exclusively.
            match unsafe { pv.create_contiguous_region(buf, order, bits) } {
                Ok(bus) => {
                    done = Some((bits, bus.as_u64()));
                    break;
                }
                Err(e) => {
                    assert_eq!(
                        e,
                        PlatformError::Hypercall {
                            op: "XENMEM_exchange",
                            errno: ENOMEM
                        },
                        "order {order} bits {bits}"
                    );
                    // Same frames, same mappings, zeroed contents.
                    assert_eq!(frames(&g, buf, n), original);
                    assert!(is_zero(&g, buf, (n * PAGE) as usize));
                    check(&xen, &g);
                }
            }
        }
        let (bits, bus) = done.expect("some limit up to 32 bits succeeds");
        assert!(bits > 18, "the machine has no RAM below 256 KiB");
        check(&xen, &g);
        assert_contiguous(&pv, &g, buf, order, bus, bits);
        assert!(is_zero(&g, buf, (n * PAGE) as usize));
        assert!(g.check_pattern(before, PAGE as usize, 1));
        assert!(g.check_pattern(after, PAGE as usize, 2));
        // The old frames are no longer the domain's.
        for m in original.iter().flatten() {
            if *m < bus / PAGE || *m >= bus / PAGE + n {
                assert_eq!(pv.bfn_to_local_pfn(Bfn::new(*m)), None);
            }
        }
        // The region is usable: write, then destroy (which zeroes).
        g.fill_pattern(buf, (n * PAGE) as usize, 4);
        assert!(g.check_pattern(buf, (n * PAGE) as usize, 4));
        // SAFETY: as above.
        unsafe { pv.destroy_contiguous_region(buf, order) }.unwrap();
        check(&xen, &g);
        assert!(is_zero(&g, buf, (n * PAGE) as usize));
        assert!(g.check_pattern(before, PAGE as usize, 1));
        assert!(g.check_pattern(after, PAGE as usize, 2));
        let given = frames(&g, buf, n);
        assert!(given.iter().all(Option::is_some));
        for (i, m) in given.iter().enumerate() {
            let pfn = Pfn::new(pfn0(buf) + i as u64);
            assert_eq!(pv.pfn_to_bfn(pfn).map(Bfn::as_u64), *m);
        }
        // The extent went back to Xen: its frames are no longer dom0's.
        if order > 0 {
            let extent: Vec<u64> = (0..n).map(|i| bus / PAGE + i).collect();
            assert!(extent.iter().any(|m| !given.contains(&Some(*m))));
        }
    }
}

#[test]
fn exchanges_at_every_limit_from_18_to_32_bits_succeed_or_fail_cleanly() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    let lowest_ram = xen.config().low_base;
    for bits in 18..=32u32 {
        let buf = g.alloc_aligned(16, 16);
        // SAFETY: the test owns `buf` exclusively.
        let r = unsafe { pv.create_contiguous(buf, 4, bits) };
        check(&xen, &g);
        if (1u64 << bits) <= lowest_ram {
            assert!(
                matches!(
                    r,
                    Err(X86PvError::ExchangeFailed {
                        errno: ENOMEM,
                        nr_exchanged: 0,
                        nr_extents: 16
                    })
                ),
                "{bits}: {r:?}"
            );
        } else {
            let bus = r.unwrap().as_u64();
            assert_contiguous(&pv, &g, buf, 4, bus, bits);
            // SAFETY: as above.
            unsafe { pv.destroy_contiguous(buf, 4) }.unwrap();
            check(&xen, &g);
        }
    }
}

#[test]
fn rising_limits_unmap_and_remap_once_and_pay_one_exchange_per_refused_limit() {
    for path in PATHS {
        rising_limits_by(path);
    }
}

fn rising_limits_by(path: Path) {
    let (xen, g) = machine();
    let pv = platform_by(&xen, &g, path);
    // Memory starts at 16 MiB (2^24): limits 18..=24 are refused, 25 fits an order-6 extent.
    let lowest_ram = xen.config().low_base;
    let fits = (18..=32u32).find(|&b| (1u64 << b) > lowest_ram).unwrap();
    let order = 6;
    let n = 1u64 << order;
    let buf = g.alloc_aligned(n, n);
    g.fill_pattern(buf, (n * PAGE) as usize, 3);
    xen.reset_counters();
    // SAFETY: the test owns `buf` exclusively.
    let (bus, bits) = unsafe { pv.create_contiguous_rising(buf, order, 18, 32) }.unwrap();
    check(&xen, &g);
    assert_eq!(bits, fits);
    assert_contiguous(&pv, &g, buf, order, bus.as_u64(), bits);
    assert!(is_zero(&g, buf, (n * PAGE) as usize));
    let c = xen.counters();
    let exchanges = u64::from(fits - 18) + 1;
    assert_eq!(c.count(SimOp::MemoryExchange), exchanges);
    assert_eq!(
        c.traps(),
        2 * batches(path, n) + exchanges,
        "{path:?}: one unmapping, one remapping"
    );
    let (ptes, uvms) = match path {
        Path::Pte => (2 * n, 0),
        Path::Va => (0, 2 * n),
    };
    assert_eq!(
        (c.count(SimOp::MmuUpdate), c.count(SimOp::UpdateVaMapping)),
        (ptes, uvms),
        "{path:?}"
    );
    // The trait method takes the same path.
    let buf2 = g.alloc_aligned(n, n);
    // SAFETY: as above.
    let r = unsafe { Platform::create_contiguous_region_rising(&pv, buf2, order, fits, 32) };
    assert_eq!(r.map(|(_, b)| b), Ok(fits));
    check(&xen, &g);
    // No limit fits: every limit is tried once, then the original frames come back.
    let buf3 = g.alloc_aligned(n, n);
    let before = frames(&g, buf3, n);
    xen.reset_counters();
    // SAFETY: as above.
    let r = unsafe { pv.create_contiguous_rising(buf3, order, 18, fits - 1) };
    assert!(
        matches!(r, Err(X86PvError::ExchangeFailed { errno: ENOMEM, .. })),
        "{r:?}"
    );
    assert_eq!(frames(&g, buf3, n), before);
    assert_eq!(
        xen.counters().count(SimOp::MemoryExchange),
        u64::from(fits - 18)
    );
    assert_eq!(
        xen.counters().traps(),
        2 * batches(path, n) + u64::from(fits - 18)
    );
    check(&xen, &g);
    // An empty or impossible range is refused before any hypercall.
    xen.reset_counters();
    // SAFETY: as above.
    let r = unsafe { pv.create_contiguous_rising(buf3, order, 30, 29) };
    assert!(matches!(r, Err(X86PvError::AddressBits { .. })), "{r:?}");
    // SAFETY: as above.
    let r = unsafe { pv.create_contiguous_rising(buf3, order, 17, 32) };
    assert!(
        matches!(r, Err(X86PvError::AddressBits { bits: 17, .. })),
        "{r:?}"
    );
    assert_eq!(xen.counters().traps(), 0);
    for b in [buf, buf2] {
        // SAFETY: as above.
        unsafe { pv.destroy_contiguous(b, order) }.unwrap();
    }
    check(&xen, &g);
}

#[test]
fn large_orders_use_no_scratch_and_follow_xen_s_limit() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    for order in [10u32, 12] {
        let n = 1u64 << order;
        let buf = g.alloc_aligned(n, n);
        g.fill_pattern(buf, (n * PAGE) as usize, 9);
        // SAFETY: the test owns `buf` exclusively.
        let bus = unsafe { pv.create_contiguous(buf, order, 32) }
            .unwrap()
            .as_u64();
        check(&xen, &g);
        assert_contiguous(&pv, &g, buf, order, bus, 32);
        assert!(is_zero(&g, buf, (n * PAGE) as usize));
        // SAFETY: as above.
        unsafe { pv.destroy_contiguous(buf, order) }.unwrap();
        check(&xen, &g);
    }
    // Above dom0's limit (here 10), Xen refuses with EPERM: nothing changes, and the
    // platform remembers the limit.
    let xen = Xen::new(SimConfig::x86_pv().with_max_orders(9, 10));
    let g = xen.pv_guest();
    let pv = platform(&xen, &g);
    let buf = g.alloc_aligned(2048, 2048);
    let before = frames(&g, buf, 2048);
    // SAFETY: as above.
    let r = unsafe { pv.create_contiguous(buf, 11, 32) };
    assert_eq!(r, Err(X86PvError::OrderRefused { order: 11, max: 10 }));
    assert_eq!(frames(&g, buf, 2048), before);
    check(&xen, &g);
}

/// Xen's `memop-max-order` is learnt from its `EPERM` and remembered: the refused order is
/// asked once (unmap, one exchange, remap), later attempts fail before any hypercall, an
/// order at the limit still works, and no frame is lost.
#[test]
fn the_order_xen_refuses_is_learnt_once_and_remembered() {
    let xen = Xen::new(SimConfig::x86_pv().with_max_orders(9, 10));
    let g = xen.pv_guest();
    let free = xen.free_frames();
    for path in PATHS {
        let pv = platform_by(&xen, &g, path);
        assert_eq!(pv.max_order(), swiotlb_xen_x86_pv::XEN_MAX_ORDER);
        let n = 1u64 << 12;
        let buf = g.alloc_aligned(n, n);
        g.fill_pattern(buf, (n * PAGE) as usize, 4);
        let before = frames(&g, buf, n);
        xen.reset_counters();
        // SAFETY: the test owns `buf` exclusively.
        let r = unsafe { pv.create_contiguous(buf, 12, 32) };
        assert_eq!(r, Err(X86PvError::OrderRefused { order: 12, max: 11 }));
        let c = xen.counters();
        assert_eq!(c.count(SimOp::MemoryExchange), 1, "{path:?}");
        assert_eq!(c.traps(), 2 * batches(path, n) + 1, "{path:?}");
        assert_eq!(pv.max_order(), 11);
        assert_eq!(
            frames(&g, buf, n),
            before,
            "{path:?}: the region is as it was"
        );
        check(&xen, &g);
        // The same order again: refused by the platform, no hypercall.
        xen.reset_counters();
        // SAFETY: as above.
        let r = unsafe { pv.create_contiguous_region(buf, 12, 32) };
        assert_eq!(r, Err(PlatformError::OrderTooLarge { order: 12, max: 11 }));
        assert_eq!(xen.counters().traps(), 0);
        // One below: Xen refuses it too (the limit is 10), and the platform learns 10.
        // SAFETY: as above.
        let r = unsafe { pv.create_contiguous(buf, 11, 32) };
        assert_eq!(r, Err(X86PvError::OrderRefused { order: 11, max: 10 }));
        assert_eq!(pv.max_order(), 10);
        // At the limit: one exchange, contiguous, and given back.
        xen.reset_counters();
        // SAFETY: as above.
        let bus = unsafe { pv.create_contiguous(buf, 10, 32) }.unwrap();
        assert_eq!(xen.counters().count(SimOp::MemoryExchange), 1);
        assert_contiguous(&pv, &g, buf, 10, bus.as_u64(), 32);
        check(&xen, &g);
        // SAFETY: as above.
        unsafe { pv.destroy_contiguous(buf, 10) }.unwrap();
        assert_eq!(pv.max_order(), 10, "a success does not raise the limit");
        check(&xen, &g);
    }
    assert_eq!(xen.free_frames(), free, "no machine frame lost");
}

/// An `EPERM` that is not about the order (order 0: Xen's limit is never below 0) teaches
/// nothing, and a configured maximum below the learnt one is kept.
#[test]
fn an_eperm_at_order_0_is_not_an_order_limit() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g).with_max_order(14);
    let buf = g.alloc_aligned(1, 1);
    xen.inject(Fault::FailNth {
        op: SimOp::MemoryExchange,
        nth: 1,
        errno: 1,
    });
    // SAFETY: the test owns `buf` exclusively.
    let r = unsafe { pv.create_contiguous(buf, 0, 32) };
    assert!(
        matches!(r, Err(X86PvError::ExchangeFailed { errno: 1, .. })),
        "{r:?}"
    );
    assert_eq!(pv.max_order(), 14);
    check(&xen, &g);
}

#[test]
fn arguments_are_checked_before_any_hypercall() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g).with_max_order(12);
    let buf = g.alloc_aligned(4, 4);
    xen.reset_counters();
    // SAFETY: every call below fails its checks before touching the region.
    unsafe {
        assert_eq!(
            pv.create_contiguous(buf, 13, 40),
            Err(X86PvError::OrderTooLarge { order: 13, max: 12 })
        );
        let odd = PhysAddr::new(buf.as_u64() + PAGE);
        assert_eq!(
            pv.create_contiguous(odd, 1, 32),
            Err(X86PvError::Misaligned {
                phys: odd,
                align: 2 * PAGE
            })
        );
        assert_eq!(
            pv.create_contiguous(buf, 2, 13),
            Err(X86PvError::AddressBits {
                bits: 13,
                min: 14,
                max: 64
            })
        );
        assert_eq!(
            pv.create_contiguous(buf, 2, 65),
            Err(X86PvError::AddressBits {
                bits: 65,
                min: 14,
                max: 64
            })
        );
        let end = PhysAddr::new(g.nr_pages() * PAGE);
        assert!(matches!(
            pv.create_contiguous(end, 0, 32),
            Err(X86PvError::BeyondP2m { .. })
        ));
        // A scattered region is not a contiguous one to destroy.
        assert!(matches!(
            pv.destroy_contiguous(buf, 2),
            Err(X86PvError::NotContiguous { .. })
        ));
        // A page without a local frame cannot be exchanged.
        let saved = g.p2m()[pfn0(buf) as usize].swap(p2m::foreign_frame(5), Ordering::Relaxed);
        assert!(matches!(
            pv.create_contiguous(buf, 0, 32),
            Err(X86PvError::NotLocal { .. })
        ));
        g.p2m()[pfn0(buf) as usize].store(saved, Ordering::Relaxed);
    }
    assert_eq!(xen.counters().traps(), 0);
    check(&xen, &g);
}

/// The hypercall counts of one create (or destroy) of an order-6 region.
#[derive(Debug, Clone, Copy)]
struct Counts {
    multicalls: u64,
    uvms: u64,
    exchanges: u64,
    /// `mmu_update` requests.
    ptes: u64,
    /// `mmu_update` calls: traps that are neither multicalls nor exchanges.
    mmu_calls: u64,
}

fn counts(xen: &Xen) -> Counts {
    let c = xen.counters();
    let (multicalls, exchanges) = (c.count(SimOp::Multicall), c.count(SimOp::MemoryExchange));
    Counts {
        multicalls,
        uvms: c.count(SimOp::UpdateVaMapping),
        exchanges,
        ptes: c.count(SimOp::MmuUpdate),
        mmu_calls: c.traps() - multicalls - exchanges,
    }
}

/// Every fault to inject into a sequence with these counts.
fn faults(c: Counts) -> Vec<Fault> {
    let mut v = Vec::new();
    for errno in [22, 12, 14] {
        for nth in 1..=c.uvms {
            v.push(Fault::FailNth {
                op: SimOp::UpdateVaMapping,
                nth,
                errno,
            });
        }
        for nth in 1..=c.multicalls {
            v.push(Fault::FailNth {
                op: SimOp::Multicall,
                nth,
                errno,
            });
        }
        for nth in 1..=c.exchanges {
            v.push(Fault::FailNth {
                op: SimOp::MemoryExchange,
                nth,
                errno,
            });
        }
    }
    // A request in the middle of an mmu_update list (the zap's or the remap's) fails.
    for errno in [22, 14] {
        for nth in 1..=c.ptes {
            v.push(Fault::FailNth {
                op: SimOp::MmuUpdate,
                nth,
                errno,
            });
        }
    }
    // Xen preempts a list part-way: its continuation, or a -ERESTART the guest resubmits.
    for nth in 1..=c.mmu_calls + c.multicalls {
        for after in [0, 1, N / 2, N - 1] {
            for restart in [false, true] {
                v.push(Fault::MmuUpdatePreempted {
                    nth,
                    after,
                    restart,
                });
            }
        }
    }
    for nth_multicall in 1..=c.multicalls {
        for entry in [0, 1, 31] {
            v.push(Fault::MulticallEntry {
                nth_multicall,
                entry,
                errno: 22,
            });
        }
    }
    for done_extents in [0, 1, 32, 63, 64] {
        v.push(Fault::PartialExchange {
            nth: 1,
            done_extents,
        });
    }
    v
}

const ORDER: u32 = 6;
const N: u64 = 1 << ORDER;

#[test]
fn a_fault_at_any_hypercall_of_create_leaves_the_guest_consistent() {
    for path in PATHS {
        a_fault_at_any_hypercall_of_create_by(path);
    }
}

/// The clean counts of an order-6 create or destroy: one zap, one exchange, one remap.
fn assert_clean(path: Path, clean: Counts) {
    let expected = match path {
        // An mmu_update list for the zap, a multicall of the remap's list and the flush.
        Path::Pte => (1, 0, 1, 2 * N, 1),
        Path::Va => (4, 2 * N, 1, 0, 0),
    };
    assert_eq!(
        (
            clean.multicalls,
            clean.uvms,
            clean.exchanges,
            clean.ptes,
            clean.mmu_calls
        ),
        expected,
        "{path:?}: {clean:?}"
    );
}

fn a_fault_at_any_hypercall_of_create_by(path: Path) {
    let (xen, g) = machine();
    let pv = platform_by(&xen, &g, path);
    let buf = g.alloc_aligned(N, N);
    let guard = g.alloc_pages(1);
    g.fill_pattern(guard, PAGE as usize, 7);

    xen.reset_counters();
    // SAFETY: the test owns `buf` exclusively.
    unsafe { pv.create_contiguous(buf, ORDER, 32) }.unwrap();
    let clean = counts(&xen);
    assert_clean(path, clean);
    // SAFETY: as above.
    unsafe { pv.destroy_contiguous(buf, ORDER) }.unwrap();
    check(&xen, &g);

    let mut outcomes = [0u32; 2];
    for fault in faults(clean) {
        let before = frames(&g, buf, N);
        g.fill_pattern(buf, (N * PAGE) as usize, 8);
        xen.clear_faults();
        xen.inject(fault);
        // SAFETY: as above.
        let r = unsafe { pv.create_contiguous(buf, ORDER, 32) };
        xen.clear_faults();
        check(&xen, &g);
        assert!(g.check_pattern(guard, PAGE as usize, 7), "{fault:?}");
        assert!(
            is_zero(&g, buf, (N * PAGE) as usize),
            "{fault:?}: not zeroed"
        );
        match r {
            Ok(bus) => {
                outcomes[0] += 1;
                assert_contiguous(&pv, &g, buf, ORDER, bus.as_u64(), 32);
                // SAFETY: as above.
                unsafe { pv.destroy_contiguous(buf, ORDER) }.unwrap();
                check(&xen, &g);
            }
            Err(e) => {
                outcomes[1] += 1;
                assert!(
                    matches!(
                        e,
                        X86PvError::ZapFailed { .. } | X86PvError::ExchangeFailed { .. }
                    ),
                    "{fault:?}: {e:?}"
                );
                // The original frames, mapped as before.
                assert_eq!(frames(&g, buf, N), before, "{fault:?}");
            }
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

#[test]
fn a_fault_at_any_hypercall_of_destroy_leaves_the_guest_consistent() {
    for path in PATHS {
        a_fault_at_any_hypercall_of_destroy_by(path);
    }
}

fn a_fault_at_any_hypercall_of_destroy_by(path: Path) {
    let (xen, g) = machine();
    let pv = platform_by(&xen, &g, path);
    let buf = g.alloc_aligned(N, N);
    let guard = g.alloc_pages(1);
    g.fill_pattern(guard, PAGE as usize, 7);

    // SAFETY: the test owns `buf` exclusively.
    unsafe { pv.create_contiguous(buf, ORDER, 32) }.unwrap();
    xen.reset_counters();
    // SAFETY: as above.
    unsafe { pv.destroy_contiguous(buf, ORDER) }.unwrap();
    let clean = counts(&xen);
    assert_clean(path, clean);

    let mut outcomes = [0u32; 2];
    for fault in faults(clean) {
        // SAFETY: as above.
        let bus = unsafe { pv.create_contiguous(buf, ORDER, 32) }
            .unwrap_or_else(|e| panic!("setting up {fault:?}: {e:?}"))
            .as_u64();
        g.fill_pattern(buf, (N * PAGE) as usize, 8);
        xen.inject(fault);
        // SAFETY: as above.
        let r = unsafe { pv.destroy_contiguous(buf, ORDER) };
        xen.clear_faults();
        check(&xen, &g);
        assert!(g.check_pattern(guard, PAGE as usize, 7), "{fault:?}");
        assert!(
            is_zero(&g, buf, (N * PAGE) as usize),
            "{fault:?}: not zeroed"
        );
        match r {
            Ok(()) => outcomes[0] += 1,
            Err(e) => {
                outcomes[1] += 1;
                assert!(
                    matches!(
                        e,
                        X86PvError::ZapFailed { .. } | X86PvError::ExchangeFailed { .. }
                    ),
                    "{fault:?}: {e:?}"
                );
                // Still the contiguous extent, so it can be given back later.
                assert_contiguous(&pv, &g, buf, ORDER, bus, 32);
                // SAFETY: as above.
                unsafe { pv.destroy_contiguous(buf, ORDER) }.unwrap();
                check(&xen, &g);
            }
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

#[test]
fn translations_of_other_pages_hold_while_regions_change_on_other_threads() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    let regions: Vec<PhysAddr> = (0..2).map(|_| g.alloc_aligned(16, 16)).collect();
    let watched = g.alloc_pages(64);
    let expect: Vec<(Pfn, Bfn)> = (0..64)
        .map(|i| {
            let pfn = Pfn::new(pfn0(watched) + i);
            (pfn, pv.pfn_to_bfn(pfn).unwrap())
        })
        .collect();
    std::thread::scope(|s| {
        for &r in &regions {
            let pv = &pv;
            s.spawn(move || {
                for _ in 0..20 {
                    // SAFETY: each thread owns its region exclusively.
                    unsafe {
                        pv.create_contiguous(r, 4, 32).unwrap();
                        pv.destroy_contiguous(r, 4).unwrap();
                    }
                }
            });
        }
        let pv = &pv;
        let expect = &expect;
        s.spawn(move || {
            for _ in 0..200 {
                for &(pfn, bfn) in expect {
                    assert_eq!(pv.pfn_to_bfn(pfn), Some(bfn));
                    assert_eq!(pv.bfn_to_local_pfn(bfn), Some(pfn));
                }
            }
        });
    });
    check(&xen, &g);
}

#[test]
fn a_remap_that_fails_twice_strands_the_page_with_an_invalid_p2m_entry() {
    for path in PATHS {
        a_remap_that_fails_twice_by(path);
    }
}

fn a_remap_that_fails_twice_by(path: Path) {
    let (xen, g) = machine();
    let pv = platform_by(&xen, &g, path);
    let buf = g.alloc_aligned(N, N);
    let (op, retry) = match path {
        // The 65th request is the first of the remap's list (after 64 zaps); Xen stops the
        // list there and the page is retried alone at once, as the 66th.
        Path::Pte => (SimOp::MmuUpdate, 66),
        // The 65th update_va_mapping is the first remap entry (after 64 zaps); its retry
        // alone comes after the 32 entries of that batch, as the 97th.
        Path::Va => (SimOp::UpdateVaMapping, 97),
    };
    for nth in [65, retry] {
        xen.inject(Fault::FailNth { op, nth, errno: 22 });
    }
    // SAFETY: the test owns `buf` exclusively.
    let r = unsafe { pv.create_contiguous(buf, ORDER, 32) };
    let Err(X86PvError::RemapFailed {
        errno: 22,
        stranded,
    }) = r
    else {
        panic!("{r:?}");
    };
    assert_eq!(stranded.count(), 1);
    assert!(stranded.flushed() && stranded.is_complete());
    let first = stranded.listed().next().unwrap();
    assert_eq!(first.pfn, buf.frame());
    let mfn = first.bfn.unwrap().as_u64();
    xen.check_invariants().unwrap();
    assert!(xen.tlb_violations().is_empty());
    assert_eq!(
        g.p2m()[pfn0(buf) as usize].load(Ordering::Relaxed),
        p2m::INVALID_P2M_ENTRY
    );
    assert_eq!(pv.pfn_to_bfn(buf.frame()), None);
    // The frame is still dom0's: the error names it, and the kernel can map it again.
    assert_eq!(xen.owner_of(Bfn::new(mfn)), Some(0));
    assert_eq!(local_entries(&g), g.nr_pages() - 1);
    // The other pages are mapped to the rest of the extent.
    for i in 1..N {
        let p = Pfn::new(pfn0(buf) + i);
        assert_eq!(pv.pfn_to_bfn(p), Some(Bfn::new(mfn + i)));
    }
    // Through the trait, the region is reported damaged, not as before.
    let e = PlatformError::from(X86PvError::RemapFailed {
        errno: 22,
        stranded,
    });
    assert_eq!(e.damage(), Some(&stranded));
}

/// Pages Xen keeps refusing to map ([`Fault::MapRefused`]: the batch entry and the retry
/// alone both fail) are every one stranded and reported, with the frame each should map;
/// when the refused page is the last one (whose entry flushes the TLB), the platform
/// flushes explicitly. Every other frame is where it should be: frames are conserved.
#[test]
fn pages_refused_in_the_batch_and_the_retry_are_all_reported_and_the_tlb_is_flushed() {
    for path in PATHS {
        pages_refused_by(path);
    }
}

fn pages_refused_by(path: Path) {
    let (xen, g) = machine();
    let pv = platform_by(&xen, &g, path);
    let buf = g.alloc_aligned(N, N);
    let before = local_entries(&g);
    let free = xen.free_frames();
    // The remap's mappings are the first present-PTE updates of the create: page 0, page
    // 40 and the last page (the flushing entry) are refused for good.
    for nth in [1, 41, N] {
        xen.inject(Fault::MapRefused { nth, errno: 14 });
    }
    xen.reset_counters();
    // SAFETY: the test owns `buf` exclusively.
    let r = unsafe { pv.create_contiguous(buf, ORDER, 32) };
    assert!(xen.pending_faults().is_empty(), "every refusal fired");
    xen.clear_faults();
    let Err(X86PvError::RemapFailed {
        errno: 14,
        stranded,
    }) = r
    else {
        panic!("{r:?}");
    };
    let pages: Vec<u64> = stranded
        .listed()
        .map(|f| f.pfn.as_u64() - pfn0(buf))
        .collect();
    assert_eq!(pages, [0, 40, N - 1]);
    assert_eq!(stranded.count(), 3);
    assert!(stranded.is_complete());
    // By VA the last entry (the flushing one) failed in the batch and alone, so the TLB was
    // flushed explicitly; by PTE the flush is its own entry beside the list.
    assert!(stranded.flushed());
    assert_eq!(xen.counters().count(SimOp::MmuextOp), 1);
    assert!(xen.tlb_violations().is_empty());
    xen.check_invariants().expect("simulator invariants");
    // Every stranded page has an INVALID entry and its frame (the extent's) is still
    // dom0's; nothing else moved.
    for f in stranded.listed() {
        assert_eq!(pv.pfn_to_bfn(f.pfn), None);
        assert_eq!(xen.owner_of(f.bfn.unwrap()), Some(0));
    }
    assert_eq!(local_entries(&g), before - 3);
    assert_eq!(xen.free_frames(), free);
    assert!(matches!(
        PlatformError::from(X86PvError::RemapFailed {
            errno: 14,
            stranded
        }),
        PlatformError::RegionDamaged { .. }
    ));
}

/// An exchange that loses frames part-way ([`Fault::ExchangeLosesFrames`]) leaves pages
/// without a frame: every one is counted (the unresolved pages), the region is reported
/// damaged, and the only frames dom0 lost are those Xen took.
#[test]
fn an_exchange_that_loses_frames_reports_every_unresolved_page() {
    /// Every stranded page the platform's hook was given, in order.
    static SEEN: std::sync::Mutex<Vec<swiotlb_core::hooks::StrandedFrame>> =
        std::sync::Mutex::new(Vec::new());
    fn record(f: swiotlb_core::hooks::StrandedFrame) {
        SEEN.lock().unwrap().push(f);
    }
    for destroy in [false, true] {
        let (xen, g) = machine();
        let pv = platform(&xen, &g).with_stranded_hook(record);
        SEEN.lock().unwrap().clear();
        let buf = g.alloc_aligned(N, N);
        if destroy {
            // SAFETY: the test owns `buf` exclusively.
            unsafe { pv.create_contiguous(buf, ORDER, 32) }.unwrap();
        }
        let before = local_entries(&g);
        xen.inject(Fault::ExchangeLosesFrames { nth: 1, kept: 10 });
        // SAFETY: as above.
        let r = unsafe {
            if destroy {
                pv.destroy_contiguous(buf, ORDER)
            } else {
                pv.create_contiguous(buf, ORDER, 32).map(|_| ())
            }
        };
        assert!(xen.pending_faults().is_empty());
        let Err(X86PvError::PartialExchange {
            unresolved,
            stranded,
            ..
        }) = r
        else {
            panic!("destroy {destroy}: {r:?}");
        };
        let lost = xen.lost_frames();
        assert_eq!(lost.len() as u64, N - 10);
        assert_eq!((unresolved, stranded.count()), (N - 10, N - 10));
        assert!(stranded.flushed());
        // The hook saw every one of them, the error lists the first ones.
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(seen.len() as u64, N - 10, "destroy {destroy}");
        for (k, f) in seen.iter().enumerate() {
            assert_eq!((f.pfn.as_u64(), f.bfn), (pfn0(buf) + 10 + k as u64, None));
        }
        // The first pages listed are the first unresolved ones, with no frame left.
        let listed: Vec<_> = stranded.listed().collect();
        assert_eq!(listed.len(), swiotlb_core::hooks::STRANDED_LISTED);
        for (k, f) in listed.iter().enumerate() {
            assert_eq!(f.pfn.as_u64(), pfn0(buf) + 10 + k as u64);
            assert_eq!(f.bfn, None);
        }
        // The invariants count exactly the frames Xen took as lost.
        xen.check_invariants().expect("simulator invariants");
        assert!(xen.tlb_violations().is_empty());
        assert_eq!(local_entries(&g), before - (N - 10));
        for i in 0..N {
            let p = Pfn::new(pfn0(buf) + i);
            assert_eq!(pv.pfn_to_bfn(p).is_some(), i < 10, "page {i}");
        }
        let e = PlatformError::from(r.unwrap_err());
        assert_eq!(e.damage().map(|s| s.count()), Some(N - 10), "{e}");
        assert!(e.to_string().contains("ENOMEM (12)"), "{e}");
    }
}

#[test]
fn contiguous_runs_agree_with_the_p2m_and_cover_the_identity_space_in_one_step() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    // What a frame-by-frame walk of `pfn_to_bfn` says.
    let reference = |pfn: u64, max: u64| {
        let b0 = pv.pfn_to_bfn(Pfn::new(pfn))?;
        let n = (1..max)
            .find(|&i| pv.pfn_to_bfn(Pfn::new(pfn + i)) != b0.checked_add(i))
            .unwrap_or(max);
        Some((b0, n))
    };
    for pfn in 0..g.nr_pages() {
        for max in [1, 3, 64] {
            assert_eq!(
                pv.contiguous_run(Pfn::new(pfn), max),
                reference(pfn, max),
                "pfn {pfn:#x}, max {max}"
            );
        }
    }
    // A region made contiguous is one run.
    let phys = g.alloc_aligned(16, 16);
    // SAFETY: the region was just allocated for this test alone.
    unsafe { pv.create_contiguous(phys, 4, 32) }.unwrap();
    let (_, n) = pv.contiguous_run(Pfn::new(pfn0(phys)), 1 << 40).unwrap();
    assert!(n >= 16, "{n}");
    // Past the P2M every frame is an identity frame: one run of any length, in one step.
    let past = g.p2m().len() as u64 + 5;
    assert_eq!(
        pv.contiguous_run(Pfn::new(past), 1 << 40),
        Some((Bfn::new(past), 1 << 40))
    );
    check(&xen, &g);
}

/// A request that fails in the middle of the zap's `mmu_update` list: Xen stops the list
/// there (pages 0..40 unmapped, 40.. still mapped), the platform maps every page back to
/// its frame and names page 40.
#[test]
fn a_zap_that_fails_in_the_middle_of_its_list_restores_every_page() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    let buf = g.alloc_aligned(N, N);
    let before = frames(&g, buf, N);
    xen.inject(Fault::FailNth {
        op: SimOp::MmuUpdate,
        nth: 41,
        errno: 22,
    });
    xen.reset_counters();
    // SAFETY: the test owns `buf` exclusively.
    let r = unsafe { pv.create_contiguous(buf, ORDER, 32) };
    let Err(X86PvError::ZapFailed { pfn, errno: 22 }) = r else {
        panic!("{r:?}");
    };
    assert_eq!(pfn.as_u64(), pfn0(buf) + 40);
    assert_eq!(frames(&g, buf, N), before);
    check(&xen, &g);
    // The zap's list, then the restoring remap of the 40 pages Xen unmapped (the rest were
    // never touched): one list and its flush, no exchange.
    let c = counts(&xen);
    assert_eq!((c.exchanges, c.mmu_calls, c.multicalls), (0, 1, 1), "{c:?}");
    assert_eq!(c.ptes, 40 + 1 + 40, "{c:?}");
}

/// A remap request that fails in the middle of its list, and again alone: only that page is
/// stranded; the rest of the list is resubmitted and every other page is mapped.
#[test]
fn a_remap_that_fails_in_the_middle_of_its_list_strands_that_page_only() {
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    let buf = g.alloc_aligned(N, N);
    // 64 zaps, then the remap's 41st request (page 40) and its retry alone, the 106th.
    for nth in [N + 41, N + 42] {
        xen.inject(Fault::FailNth {
            op: SimOp::MmuUpdate,
            nth,
            errno: 14,
        });
    }
    xen.reset_counters();
    // SAFETY: the test owns `buf` exclusively.
    let r = unsafe { pv.create_contiguous(buf, ORDER, 32) };
    let Err(X86PvError::RemapFailed {
        errno: 14,
        stranded,
    }) = r
    else {
        panic!("{r:?}");
    };
    let pages: Vec<u64> = stranded
        .listed()
        .map(|f| f.pfn.as_u64() - pfn0(buf))
        .collect();
    assert_eq!(pages, [40]);
    assert!(stranded.flushed() && stranded.is_complete());
    let mfn40 = stranded.listed().next().unwrap().bfn.unwrap().as_u64();
    for i in (0..N).filter(|&i| i != 40) {
        let p = Pfn::new(pfn0(buf) + i);
        assert_eq!(pv.pfn_to_bfn(p), Some(Bfn::new(mfn40 - 40 + i)), "page {i}");
        assert_eq!(
            g.machine_addr(p.start()).map(|b| b.as_u64() / PAGE),
            Some(mfn40 - 40 + i)
        );
    }
    assert_eq!(pv.pfn_to_bfn(Pfn::new(pfn0(buf) + 40)), None);
    xen.check_invariants().unwrap();
    assert!(xen.tlb_violations().is_empty());
    // The zap's list; the remap's list with the flush; page 40 alone; the rest resubmitted.
    let c = counts(&xen);
    assert_eq!((c.mmu_calls, c.multicalls, c.exchanges), (3, 1, 1), "{c:?}");
}

/// Xen preempts a long list: with its continuation the guest sees nothing but one more
/// trap; with a `-ERESTART` the platform resubmits the rest from the `done` count. Either
/// way the region ends contiguous, at the cost of one more trap.
#[test]
fn a_preempted_list_is_continued_or_resubmitted_from_its_done_count() {
    let order = 10;
    let n = 1u64 << order;
    let (xen, g) = machine();
    let pv = platform(&xen, &g);
    let buf = g.alloc_aligned(n, n);
    xen.reset_counters();
    // SAFETY: the test owns `buf` exclusively.
    let bus = unsafe { pv.create_contiguous(buf, order, 32) }.unwrap();
    let clean = xen.counters().traps();
    assert_eq!(clean, 2 * batches(Path::Pte, n) + 1);
    // SAFETY: as above.
    unsafe { pv.destroy_contiguous(buf, order) }.unwrap();
    for restart in [false, true] {
        // The zap's second list and the remap's last one (in its multicall), part-way.
        let last = 2 * batches(Path::Pte, n);
        for nth in [2, last] {
            xen.inject(Fault::MmuUpdatePreempted {
                nth,
                after: 50,
                restart,
            });
        }
        xen.reset_counters();
        // SAFETY: as above.
        let bus = unsafe { pv.create_contiguous(buf, order, 32) }.unwrap();
        assert!(xen.pending_faults().is_empty());
        check(&xen, &g);
        assert_contiguous(&pv, &g, buf, order, bus.as_u64(), 32);
        assert_eq!(xen.counters().traps(), clean + 2, "restart {restart}");
        assert_eq!(xen.counters().count(SimOp::MmuUpdate), 2 * n);
        // SAFETY: as above.
        unsafe { pv.destroy_contiguous(buf, order) }.unwrap();
    }
    let _ = bus;
    check(&xen, &g);
}
