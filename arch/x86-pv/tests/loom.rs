//! Loom models of the x86 PV platform itself (not a copy of its protocol): its spin lock
//! and its sequence range (`swiotlb_core::lock::SeqRange`) around `create_contiguous` and
//! `destroy_contiguous`, racing lock-free translations on another CPU, and interrupts
//! raised on the CPU that holds the lock, with and without the kernel's interrupt hook.
//!
//! Under `--cfg loom` the platform's P2M and M2P entries are loom's atomics (the platform
//! takes its atomics from `swiotlb_core::lock::atomic`), so loom tracks every entry a
//! lookup reads and every entry the platform or "Xen" writes, with their orderings. Xen is
//! a small model ([`LoomXen`]): `multicall` and `update_va_mapping` succeed (page tables are
//! not modelled), `XENMEM_exchange` moves frames between the domain and a free list and
//! rewrites the M2P, as Xen's `memory_exchange` does, and an interrupt may be raised in the
//! middle of it, while the platform holds its lock with a transition open.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p swiotlb-xen-x86-pv --release --test loom`
//! (`cargo xtask ci --only loom` runs it with the other models).

#![cfg(loom)]

use std::cell::{Cell, RefCell};

use loom::sync::Mutex;
use loom::sync::atomic::AtomicBool;
use loom::thread;
use swiotlb_core::lock::IrqHook;
use swiotlb_core::lock::atomic::{AtomicU64, Ordering};
use swiotlb_core::{Bfn, BusAddr, Pfn, PhysAddr, PhysMemory, Platform};
use swiotlb_xen_x86_pv::X86PvPlatform;
use xen_abi::{
    HYPERVISOR_MEMORY_OP, HYPERVISOR_MMUEXT_OP, HYPERVISOR_MULTICALL, HYPERVISOR_UPDATE_VA_MAPPING,
    Hypercall, MulticallEntry, XENMEM_EXCHANGE, XenMemoryExchange, XenMemoryReservation,
};

const INVALID: u64 = !0;
/// Entries of the model's M2P (machine frames 0..16).
const M2P_LEN: usize = 16;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

loom::thread_local! {
    /// The modelled CPU's interrupt flag: true while local interrupts are masked. Each loom
    /// thread is one CPU.
    static MASKED: Cell<bool> = Cell::new(false);
    /// The interrupt the next exchange on this CPU raises.
    static RAISE: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    /// An interrupt raised while interrupts were masked, delivered when they are restored.
    static PENDING: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
}

/// Runs an interrupt handler as a CPU does: with interrupts masked.
fn deliver(handler: Box<dyn FnOnce()>) {
    MASKED.with(|m| m.set(true));
    handler();
    MASKED.with(|m| m.set(false));
}

/// The kernel's `local_irq_save` in the model.
fn irq_save() -> usize {
    usize::from(MASKED.with(|m| m.replace(true)))
}

/// The kernel's `local_irq_restore` in the model: restoring enabled interrupts delivers a
/// pending one.
fn irq_restore(prev: usize) {
    MASKED.with(|m| m.set(prev != 0));
    if prev == 0
        && let Some(h) = PENDING.with(|p| p.borrow_mut().take())
    {
        deliver(h);
    }
}

/// Where an interrupt may arrive: at once if interrupts are enabled, at the restore if not.
fn interrupt_point() {
    let Some(h) = RAISE.with(|r| r.borrow_mut().take()) else {
        return;
    };
    if MASKED.with(Cell::get) {
        PENDING.with(|p| *p.borrow_mut() = Some(h));
    } else {
        deliver(h);
    }
}

/// The model's Xen: one domain's P2M (written by the platform, and by Xen through the
/// exchange's output list) and the M2P, with a list of free machine frames.
struct LoomXen {
    p2m: &'static [AtomicU64],
    m2p: &'static [AtomicU64],
    free: Mutex<Vec<u64>>,
    /// Set (sequentially consistent) once an exchange has taken the domain's frames.
    exchanged: AtomicBool,
}

impl LoomXen {
    /// Entry `i` of a guest frame list: a P2M entry (a loom atomic, which is what the
    /// platform hands Xen under `--cfg loom`) or a plain word of the caller's.
    ///
    /// # Safety
    ///
    /// `h` is a list of at least `i + 1` entries.
    unsafe fn list(&self, h: *mut u64) -> GuestList {
        let p2m = self.p2m.as_ptr_range();
        let at = h.cast_const().cast::<AtomicU64>();
        if p2m.contains(&at) {
            GuestList::P2m(at)
        } else {
            GuestList::Plain(h)
        }
    }

    /// Takes `n` free frames, contiguous and aligned to `n` when `n > 1`.
    fn take(&self, n: u64) -> Option<Vec<u64>> {
        let mut free = self.free.lock().unwrap();
        free.sort_unstable();
        let first = if n == 1 {
            *free.first()?
        } else {
            *free
                .iter()
                .find(|&&f| f % n == 0 && (0..n).all(|i| free.contains(&(f + i))))?
        };
        let got: Vec<u64> = if n == 1 {
            vec![first]
        } else {
            (first..first + n).collect()
        };
        free.retain(|f| !got.contains(f));
        Some(got)
    }

    fn exchange(&self, x: &mut XenMemoryExchange) -> i64 {
        let frames = |r: &XenMemoryReservation| 1u64 << r.extent_order;
        // SAFETY: the platform passes lists of `nr_extents` entries.
        let (inp, out) = unsafe {
            (
                self.list(x.in_.extent_start.as_ptr()),
                self.list(x.out.extent_start.as_ptr()),
            )
        };
        let mut given = Vec::new();
        for e in 0..x.in_.nr_extents {
            // SAFETY: inside the list.
            let base = unsafe { inp.get(e) };
            given.extend((0..frames(&x.in_)).map(|j| base + j));
        }
        let per = frames(&x.out);
        let mut new = Vec::new();
        for _ in 0..x.out.nr_extents {
            let Some(f) = self.take(per) else {
                return -12;
            };
            new.push(f);
        }
        for &f in &given {
            self.m2p[f as usize].store(INVALID, Ordering::SeqCst);
        }
        self.free.lock().unwrap().extend(&given);
        for (e, f) in (0u64..).zip(&new) {
            // SAFETY: inside the list; the output list holds the extents' GPFNs.
            let gpfn = unsafe { out.get(e) };
            for (j, &m) in (0u64..).zip(f) {
                self.m2p[m as usize].store(gpfn + j, Ordering::SeqCst);
            }
            // SAFETY: as above.
            unsafe { out.set(e, f[0]) };
        }
        x.nr_exchanged = x.in_.nr_extents;
        self.exchanged.store(true, Ordering::SeqCst);
        interrupt_point();
        0
    }
}

/// A guest frame list as the model's Xen reads and writes it.
#[derive(Clone, Copy)]
enum GuestList {
    P2m(*const AtomicU64),
    Plain(*mut u64),
}

impl GuestList {
    /// # Safety
    ///
    /// Entry `i` exists.
    unsafe fn get(self, i: u64) -> u64 {
        match self {
            // SAFETY: the caller's promise; P2M entries are atomics.
            Self::P2m(p) => unsafe { (*p.add(i as usize)).load(Ordering::SeqCst) },
            // SAFETY: the caller's promise; the platform's local list.
            Self::Plain(p) => unsafe { p.add(i as usize).read() },
        }
    }

    /// # Safety
    ///
    /// Entry `i` exists.
    unsafe fn set(self, i: u64, v: u64) {
        match self {
            // SAFETY: the caller's promise.
            Self::P2m(p) => unsafe { (*p.add(i as usize)).store(v, Ordering::SeqCst) },
            // SAFETY: the caller's promise.
            Self::Plain(p) => unsafe { p.add(i as usize).write(v) },
        }
    }
}

// SAFETY: the model's Xen dereferences only the pointers the platform passes, as Xen does.
unsafe impl Hypercall for &LoomXen {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        match op {
            HYPERVISOR_MULTICALL => {
                let entries =
                    core::ptr::with_exposed_provenance_mut::<MulticallEntry>(args[0] as usize);
                for i in 0..args[1] as usize {
                    // SAFETY: the platform passes `args[1]` entries.
                    unsafe { (*entries.add(i)).result = 0 };
                }
                0
            }
            HYPERVISOR_UPDATE_VA_MAPPING | HYPERVISOR_MMUEXT_OP => 0,
            HYPERVISOR_MEMORY_OP if args[0] == u64::from(XENMEM_EXCHANGE) => {
                let x =
                    core::ptr::with_exposed_provenance_mut::<XenMemoryExchange>(args[1] as usize);
                // SAFETY: the platform passes a live exchange.
                self.exchange(unsafe { &mut *x })
            }
            _ => -38,
        }
    }
}

/// Zeroing is not modelled.
struct NoMemory;

// SAFETY: touches no memory.
unsafe impl PhysMemory for NoMemory {
    unsafe fn copy(&self, _dst: PhysAddr, _src: PhysAddr, _len: usize) {}
    unsafe fn fill(&self, _dst: PhysAddr, _byte: u8, _len: usize) {}
}

type Pv = X86PvPlatform<'static, &'static LoomXen, NoMemory>;

/// A machine with the P2M `p2m` (its M2P consistent with it) and the free frames `free`,
/// and the platform over it (with `hook`). Leaked: each loom execution builds its own.
fn machine(p2m: &[u64], free: &[u64], hook: IrqHook) -> (&'static LoomXen, &'static Pv) {
    let m2p: Vec<AtomicU64> = (0..M2P_LEN).map(|_| AtomicU64::new(INVALID)).collect();
    for (pfn, &mfn) in (0u64..).zip(p2m) {
        m2p[mfn as usize].store(pfn, Ordering::Relaxed);
    }
    let p2m: Vec<AtomicU64> = p2m.iter().map(|&m| AtomicU64::new(m)).collect();
    let xen: &'static LoomXen = Box::leak(Box::new(LoomXen {
        p2m: Box::leak(p2m.into_boxed_slice()),
        m2p: Box::leak(m2p.into_boxed_slice()),
        free: Mutex::new(free.to_vec()),
        exchanged: AtomicBool::new(false),
    }));
    // SAFETY: the model's tables and Xen; the models change only the regions they pass.
    let pv = unsafe { X86PvPlatform::new(xen.p2m, xen.m2p, 0, xen, NoMemory) };
    (xen, Box::leak(Box::new(pv.with_irq_hook(hook))))
}

fn mfn(pv: &Pv, pfn: u64) -> Option<u64> {
    pv.pfn_to_mfn(Pfn::new(pfn)).map(Bfn::as_u64)
}

fn run(pv: &Pv, pfn: u64) -> Option<(u64, u64)> {
    pv.contiguous_run(Pfn::new(pfn), 2)
        .map(|(b, n)| (b.as_u64(), n))
}

/// `create_contiguous` of pfns 0-1 (frames 10 and 13, given up for the extent 4-5) races
/// lookups on another CPU. A lookup sees the old frame, the new one or nothing (the region
/// is in transition); once the exchange has taken frame 10 (and the lookup began after
/// that) never frame 10, which Xen may already have given to another domain; a
/// contiguity check sees the old state or the new one, never a mix; the neighbour (pfn 2)
/// is never hidden.
#[test]
fn lookups_racing_create_never_see_a_frame_given_up() {
    model(|| {
        let (xen, pv) = machine(&[10, 13, 7], &[4, 5], IrqHook::NONE);
        let writer = thread::spawn(move || {
            // SAFETY: the region is the writer's alone; no device uses it.
            unsafe { pv.create_contiguous(PhysAddr::new(0), 1, 32) }
        });
        let gone = xen.exchanged.load(Ordering::SeqCst);
        let first = mfn(pv, 0);
        assert!(matches!(first, None | Some(10 | 4)), "pfn 0 -> {first:?}");
        if gone {
            assert_ne!(
                first,
                Some(10),
                "a lookup after the exchange got the frame given up"
            );
        }
        let r = run(pv, 0);
        assert!(
            matches!(r, None | Some((10, 1) | (4, 2))),
            "a contiguity check saw a half-done region: {r:?}"
        );
        assert_eq!(mfn(pv, 2), Some(7), "the neighbour was hidden");
        let bus = writer.join().unwrap().expect("create");
        assert_eq!(bus, BusAddr::new(4 << 12));
        assert_eq!((mfn(pv, 0), mfn(pv, 1)), (Some(4), Some(5)));
        assert_eq!(pv.mfn_to_local_pfn(Bfn::new(5)), Some(Pfn::new(1)));
        assert_eq!(pv.mfn_to_local_pfn(Bfn::new(13)), None);
    });
}

/// `destroy_contiguous` of pfns 0-1 (the extent 4-5, given back for frames 10 and 13)
/// races reverse lookups on another CPU: frame 5 translates back to pfn 1 or to nothing,
/// and to nothing once the exchange has taken it; pfn 1 is frame 5, 13 or in transition.
#[test]
fn lookups_racing_destroy_never_see_a_frame_given_up() {
    model(|| {
        let (xen, pv) = machine(&[4, 5, 7], &[10, 13], IrqHook::NONE);
        let writer = thread::spawn(move || {
            // SAFETY: the region is the writer's alone; no device uses it.
            unsafe { pv.destroy_contiguous(PhysAddr::new(0), 1) }
        });
        let gone = xen.exchanged.load(Ordering::SeqCst);
        let back = pv.mfn_to_local_pfn(Bfn::new(5));
        let second = mfn(pv, 1);
        assert!(matches!(back, None | Some(_)));
        if let Some(p) = back {
            assert_eq!(p, Pfn::new(1));
        }
        assert!(matches!(second, None | Some(5 | 13)), "pfn 1 -> {second:?}");
        if gone {
            assert_eq!(back, None, "frame 5 translated back after Xen took it");
            assert_ne!(
                second,
                Some(5),
                "a lookup after the exchange got the frame given up"
            );
        }
        assert_eq!(pv.mfn_to_local_pfn(Bfn::new(7)), Some(Pfn::new(2)));
        writer.join().unwrap().expect("destroy");
        assert_eq!((mfn(pv, 0), mfn(pv, 1)), (Some(10), Some(13)));
        assert_eq!(pv.mfn_to_local_pfn(Bfn::new(5)), None);
    });
}

/// An interrupt arrives on the CPU that is in the middle of `create_contiguous` (inside the
/// exchange, lock held, transition open), without an interrupt hook, while another CPU waits
/// for the lock to change a second region. The handler's translations take no lock and
/// never wait for the transition: the region reads as in transition, the rest as it is.
#[test]
fn interrupt_time_lookups_never_wait_for_the_transition() {
    model(|| {
        let (_, pv) = machine(&[10, 13, 11, 14, 7], &[4, 5, 2, 3], IrqHook::NONE);
        let other = thread::spawn(move || {
            // SAFETY: pfns 2-3 are this CPU's alone.
            unsafe { pv.create_contiguous(PhysAddr::new(2 << 12), 1, 32) }
        });
        let seen = std::rc::Rc::new(Cell::new(None));
        let s = seen.clone();
        RAISE.with(|r| {
            *r.borrow_mut() = Some(Box::new(move || {
                s.set(Some((mfn(pv, 0), mfn(pv, 4))));
            }));
        });
        // SAFETY: pfns 0-1 are this CPU's alone.
        let bus = unsafe { pv.create_contiguous(PhysAddr::new(0), 1, 32) }.expect("create");
        assert_eq!(
            seen.get(),
            Some((None, Some(7))),
            "the interrupt's lookups inside the transition"
        );
        let b = other.join().unwrap().expect("create of the second region");
        let mut got = [bus.as_u64() >> 12, b.as_u64() >> 12];
        got.sort_unstable();
        assert_eq!(got, [2, 4]);
    });
}

/// The handler of an interrupt raised inside `create_contiguous` (lock held) makes another
/// region contiguous, which takes the same lock. With the kernel's hook the lock masks
/// interrupts, so the interrupt is delivered when the lock is released and interrupts are
/// restored: the handler gets the lock, and both regions end contiguous. Another CPU
/// translates meanwhile.
fn nested_create(hook: IrqHook) {
    let (_, pv) = machine(&[10, 13, 11, 14, 7], &[4, 5, 2, 3], hook);
    let reader = thread::spawn(move || {
        let r = mfn(pv, 4);
        assert_eq!(r, Some(7), "the neighbour was hidden");
    });
    let done = std::rc::Rc::new(Cell::new(None));
    let d = done.clone();
    RAISE.with(|r| {
        *r.borrow_mut() = Some(Box::new(move || {
            // SAFETY: pfns 2-3 are the handler's alone.
            let b = unsafe { pv.create_contiguous(PhysAddr::new(2 << 12), 1, 32) };
            d.set(Some(b.map(|b| b.as_u64() >> 12)));
        }));
    });
    // SAFETY: pfns 0-1 are this CPU's alone.
    let bus = unsafe { pv.create_contiguous(PhysAddr::new(0), 1, 32) }.expect("create");
    assert!(!MASKED.with(Cell::get), "interrupts left masked");
    let nested = done.get().expect("the interrupt was never delivered");
    // The interrupted create got the first free extent (2-3), the handler's the next.
    assert_eq!((bus.as_u64() >> 12, nested), (2, Ok(4)));
    assert_eq!((mfn(pv, 2), mfn(pv, 3)), (Some(4), Some(5)));
    reader.join().unwrap();
}

#[test]
fn interrupt_taking_the_lock_with_the_hook_never_deadlocks() {
    model(|| nested_create(IrqHook::new(irq_save, irq_restore)));
}

/// Without the hook the handler runs inside the exchange and spins for the lock its own CPU
/// holds: loom finds no way for it to make progress.
#[test]
#[should_panic(expected = "branches")]
fn interrupt_taking_the_lock_without_the_hook_deadlocks() {
    model(|| nested_create(IrqHook::NONE));
}
