//! A small machine exercising every unsafe path of the simulator (guest pointers decoded
//! from hypercall arguments, `PhysMemory` copies), sized so that Miri runs it in seconds:
//! `MIRIFLAGS=-Zmiri-permissive-provenance cargo +nightly miri test -p xen-sim --test miri`
//! (hypercall arguments are integers, so the simulator turns them back into pointers with
//! `with_exposed_provenance`: strict provenance cannot apply to this interface).

mod common;

use common::*;
use swiotlb_core::{BusAddr, DmaMask, PhysAddr, PhysMemory};
use xen_abi::{GNTMAP_HOST_MAP, GNTST_OKAY, GnttabMapGrantRef, GnttabUnmapGrantRef, UVMF_INVLPG};
use xen_sim::{INVALID_ENTRY, SimConfig, Xen};

fn tiny() -> SimConfig {
    SimConfig::x86_pv()
        .with_low(16 << 20, 1024)
        .with_high(1 << 32, 0)
        .with_dom0_pages(512)
        .with_domu_pages(8)
}

#[test]
fn unsafe_paths_on_a_tiny_machine() {
    let xen = Xen::new(tiny());
    let (g, d) = (xen.pv_guest(), xen.dom0());
    xen.check_invariants().unwrap();
    // Exchange through multicalls and the exchange structure.
    let buf = g.alloc_aligned(4, 4);
    let mfn = create_contiguous(&g, &d, buf, 2, 32).unwrap();
    assert_eq!(mfn % 4, 0);
    // PhysMemory through the page table.
    g.fill_pattern(buf, 8192, 1);
    let mem = g.memory();
    // SAFETY: disjoint halves of a buffer no reference covers.
    unsafe { mem.copy(PhysAddr::new(buf.as_u64() + 8192), buf, 8192) };
    assert!(g.check_pattern(PhysAddr::new(buf.as_u64() + 8192), 8192, 1));
    // SAFETY: as above.
    unsafe { mem.fill(buf, 0, 100) };
    // Grant map and unmap through the grant structures.
    let r = xen.domu_grant(1)[0];
    let page = g.alloc_pages(1);
    assert_eq!(uvm(&d, g.va_of(page), 0, UVMF_INVLPG), 0);
    g.p2m()[(page.as_u64() / PAGE) as usize]
        .store(INVALID_ENTRY, std::sync::atomic::Ordering::Relaxed);
    let mut m = [GnttabMapGrantRef {
        host_addr: g.va_of(page),
        flags: GNTMAP_HOST_MAP,
        ref_: r,
        dom: 1,
        ..Default::default()
    }];
    assert_eq!(map_grants(&d, &mut m), 0);
    assert_eq!(m[0].status, GNTST_OKAY);
    let mut u = [GnttabUnmapGrantRef {
        host_addr: g.va_of(page),
        dev_bus_addr: 0,
        handle: m[0].handle,
        status: 0,
    }];
    assert_eq!(unmap_grants(&d, &mut u), 0);
    assert_eq!(u[0].status, GNTST_OKAY);
    // A device.
    let dev = xen.device(DmaMask::BITS_32, false);
    dev.write(BusAddr::new(mfn << 12), &[1, 2, 3]).unwrap();
    assert_eq!(cache_flush(&d, mfn << 12, 0, 64, 3), 0);
    xen.check_invariants().unwrap();
}
