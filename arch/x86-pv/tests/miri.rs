//! Every unsafe path of the platform on a machine small enough for Miri: the exchange with
//! the P2M as its frame list (read by Xen for create, written by Xen for destroy), the
//! multicall batches, zeroing through `PhysMemory`, and a rollback.
//! `MIRIFLAGS=-Zmiri-permissive-provenance cargo +nightly miri test -p swiotlb-xen-x86-pv --test miri`
//! (hypercall arguments are integers, which the simulator turns back into pointers).

use swiotlb_core::{Bfn, Pfn, Platform};
use swiotlb_xen_x86_pv::{X86PvError, X86PvPlatform};
use xen_sim::{Fault, SimConfig, SimOp, Xen};

#[test]
fn create_destroy_and_a_rollback_on_a_tiny_machine() {
    let xen = Xen::new(
        SimConfig::x86_pv()
            .with_low(16 << 20, 1024)
            .with_high(1 << 32, 0)
            .with_dom0_pages(512)
            .with_domu_pages(8),
    );
    let g = xen.pv_guest();
    // SAFETY: the simulator's dom0 tables, linear map, memory and hypercalls.
    let pv =
        unsafe { X86PvPlatform::new(g.p2m(), g.m2p(), g.linear_base(), xen.dom0(), g.memory()) };
    let buf = g.alloc_aligned(4, 4);
    g.fill_pattern(buf, 4 * 4096, 1);
    // SAFETY: the test owns `buf` exclusively.
    let bus = unsafe { pv.create_contiguous_region(buf, 2, 32) }.unwrap();
    xen.check_invariants().unwrap();
    assert_eq!(bus.as_u64() % (4 * 4096), 0);
    assert!(pv.is_bus_contiguous(buf, 4 * 4096));
    assert_eq!(
        pv.bfn_to_local_pfn(Bfn::new(bus.as_u64() / 4096 + 3)),
        Some(Pfn::new(buf.as_u64() / 4096 + 3))
    );
    // SAFETY: as above.
    unsafe { pv.destroy_contiguous_region(buf, 2) }.unwrap();
    xen.check_invariants().unwrap();
    xen.inject(Fault::FailNth {
        op: SimOp::MemoryExchange,
        nth: 1,
        errno: 12,
    });
    // SAFETY: as above.
    let r = unsafe { pv.create_contiguous(buf, 2, 32) };
    assert!(
        matches!(r, Err(X86PvError::ExchangeFailed { errno: 12, .. })),
        "{r:?}"
    );
    xen.check_invariants().unwrap();
}
