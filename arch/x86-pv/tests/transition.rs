//! What a concurrent reader sees while a region is in transition: a hypercall wrapper calls
//! back into the platform right after `XENMEM_exchange` returns, when the region's P2M
//! entries hold freed frames (create) or Xen's answers before the remap (destroy).

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use swiotlb_core::{Bfn, Pfn, Platform};
use swiotlb_xen_x86_pv::X86PvPlatform;
use xen_abi::{HYPERVISOR_MEMORY_OP, Hypercall, XENMEM_EXCHANGE};
use xen_sim::{Domain, SimConfig, SimMemory, Xen};

type Pv<'a> = X86PvPlatform<'a, Hooked, SimMemory>;

/// What the hook saw: for each page of the region, `pfn_to_bfn`, and for each frame the P2M
/// held, `bfn_to_local_pfn`.
type Seen = Vec<(Option<Bfn>, Option<Pfn>)>;

/// dom0's hypercalls, with a callback after every exchange.
struct Hooked {
    dom: Domain,
    pv: Arc<AtomicPtr<()>>,
    region: (u64, u64),
    seen: Arc<Mutex<Vec<Seen>>>,
    p2m: &'static [std::sync::atomic::AtomicU64],
}

// SAFETY: forwards every hypercall unchanged to the simulator's dom0; the callback only
// reads the platform's translations.
unsafe impl Hypercall for Hooked {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        // SAFETY: the caller's contract, passed on.
        let rc = unsafe { self.dom.hypercall(op, args) };
        if op == HYPERVISOR_MEMORY_OP && args[0] == u64::from(XENMEM_EXCHANGE) {
            let p = self.pv.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: the pointer was set to the live platform that is making this call.
                let pv = unsafe { &*p.cast::<Pv<'static>>() };
                let (first, n) = self.region;
                let seen = (first..first + n)
                    .map(|pfn| {
                        let raw = self.p2m[pfn as usize].load(Ordering::Relaxed);
                        (
                            pv.pfn_to_bfn(Pfn::new(pfn)),
                            Bfn::try_new(raw).and_then(|b| pv.bfn_to_local_pfn(b)),
                        )
                    })
                    .collect();
                self.seen.lock().unwrap().push(seen);
            }
        }
        rc
    }
}

#[test]
fn pages_in_transition_do_not_translate_in_either_direction() {
    let xen = Xen::new(SimConfig::x86_pv());
    // The tables live as long as the test; leaking the guest handle gives them 'static.
    let g: &'static xen_sim::PvGuest = Box::leak(Box::new(xen.pv_guest()));
    let buf = g.alloc_aligned(8, 8);
    let other = g.alloc_pages(1);
    let pfn0 = buf.as_u64() / 4096;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let slot = Arc::new(AtomicPtr::new(std::ptr::null_mut()));
    let hooked = Hooked {
        dom: xen.dom0(),
        pv: Arc::clone(&slot),
        region: (pfn0, 8),
        seen: Arc::clone(&seen),
        p2m: g.p2m(),
    };
    // SAFETY: the simulator's dom0 tables, linear map, memory and hypercalls.
    let pv: Pv<'static> =
        unsafe { X86PvPlatform::new(g.p2m(), g.m2p(), g.linear_base(), hooked, g.memory()) };
    slot.store((&raw const pv).cast_mut().cast(), Ordering::Release);

    let other_bfn = pv.pfn_to_bfn(other.frame()).unwrap();
    // SAFETY: the test owns `buf` exclusively.
    let bus = unsafe { pv.create_contiguous_region(buf, 3, 32) }.unwrap();
    // SAFETY: as above.
    unsafe { pv.destroy_contiguous_region(buf, 3) }.unwrap();
    xen.check_invariants().unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "one exchange each for create and destroy");
    for (step, pages) in seen.iter().enumerate() {
        for (i, (bfn, pfn)) in pages.iter().enumerate() {
            assert_eq!(
                *bfn, None,
                "step {step}, page {i}: pfn_to_bfn in transition"
            );
            assert_eq!(
                *pfn, None,
                "step {step}, page {i}: bfn_to_local_pfn in transition"
            );
        }
    }
    // Without the transition record, the destroy step's P2M words were Xen's new frames,
    // whose M2P names the region: they would have been reported local before their remap.
    // After the calls, everything translates again.
    assert_eq!(pv.pfn_to_bfn(other.frame()), Some(other_bfn));
    assert_eq!(pv.bfn_to_local_pfn(other_bfn), Some(other.frame()));
    for i in 0..8 {
        let pfn = Pfn::new(pfn0 + i);
        let bfn = pv.pfn_to_bfn(pfn).unwrap();
        assert_eq!(pv.bfn_to_local_pfn(bfn), Some(pfn));
        assert_ne!(
            bfn.as_u64(),
            bus.as_u64() / 4096 + i,
            "the extent went back to Xen"
        );
    }
    slot.store(std::ptr::null_mut(), Ordering::Release);
}
