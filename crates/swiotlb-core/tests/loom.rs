//! Loom models of the pool's concurrent parts (the area locks, the lock-free slot states,
//! the syncs that pin a mapping and copy outside the lock, the per-area and pool-wide
//! counters, interrupt re-entry through the pool's interrupt hook) and of the protocol of
//! the x86 PV platform's lock and sequence range (the platform itself has its own models in
//! `arch/x86-pv/tests/loom.rs`), with two threads (plus the main one) in every interleaving
//! loom can reach within its preemption bound.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p swiotlb-core --release --test loom`
//! (`cargo xtask ci --only loom` sets `LOOM_MAX_PREEMPTIONS` to keep it short).

#![cfg(loom)]

mod common;

use common::Fixture;
use loom::sync::Arc;
use loom::thread;
use swiotlb_core::lock::atomic::{AtomicU64, Ordering};
use swiotlb_core::lock::{SeqRange, SpinLock};
use swiotlb_core::{
    BouncePool, Device, DmaAttrs, DmaDirection, DmaMask, Error, LinearMap, PhysAddr, PhysMemory,
    Slot,
};

/// One segment: the smallest pool.
const NSLABS: usize = 128;

/// A loom model with room for the pool's set-up (hundreds of atomic stores by one thread).
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

fn dev() -> Device {
    Device::new(DmaMask::FULL)
}

/// Maps `data` at `orig` bidirectionally, lets the "device" overwrite it with `reply`, and
/// unmaps; returns what the original holds afterwards.
fn round_trip(f: &Fixture, orig: PhysAddr, data: &[u8], reply: &[u8], cpu: usize) -> Vec<u8> {
    f.write(orig, data);
    let d = dev();
    // SAFETY: each caller passes an original no other thread uses.
    let tlb = unsafe {
        f.pool.map(
            &d,
            orig,
            data.len(),
            0,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
            cpu,
        )
    }
    .expect("map");
    assert_eq!(f.read(tlb, data.len()), data, "bounce copy-in");
    f.write(tlb, reply);
    f.pool
        .unmap(
            &d,
            tlb,
            data.len(),
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
        .expect("unmap");
    f.read(orig, data.len())
}

fn assert_idle(f: &Fixture, maps: u64) {
    f.pool.check_invariants().expect("pool invariants");
    let s = f.pool.stats();
    assert_eq!(s.used, 0, "{s:?}");
    assert_eq!((s.maps, s.unmaps), (maps, maps), "{s:?}");
    assert!(s.high_water >= 1, "{s:?}");
}

/// Two threads map and unmap through the same area (one lock): each gets its own slots and
/// its own bytes back, and the counters add up.
#[test]
fn two_threads_share_one_area() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 2 * 4096));
        let handles: Vec<_> = (0..2u8)
            .map(|t| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    let orig = f.orig(u64::from(t) * 4096);
                    let back = round_trip(&f, orig, &[t + 1; 64], &[t + 10; 64], 0);
                    assert_eq!(back, vec![t + 10; 64], "thread {t} got another's bytes");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_idle(&f, 2);
    });
}

/// Two threads map and unmap in two areas (two locks, shared pool-wide counters): the final
/// counters are exact.
#[test]
fn two_threads_in_two_areas() {
    model(|| {
        let f = Arc::new(Fixture::new(2 * NSLABS, 2, 2 * 4096));
        let handles: Vec<_> = (0..2u8)
            .map(|t| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    let orig = f.orig(u64::from(t) * 4096);
                    let back = round_trip(&f, orig, &[t + 1; 32], &[t + 20; 32], usize::from(t));
                    assert_eq!(back, vec![t + 20; 32]);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_idle(&f, 2);
    });
}

/// The main thread reads the lock-free statistics while another maps and unmaps: no counter
/// of the snapshot exceeds what was done, and the final counters are exact.
///
/// The snapshot is consistent per counter only (as `Stats` documents): loom finds
/// interleavings where it shows the unmap but not yet the map (two relaxed counters read in
/// the other order than written), so `unmaps <= maps` is not asserted.
#[test]
fn stats_reader_during_map_and_unmap() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 4096));
        let worker = {
            let f = Arc::clone(&f);
            thread::spawn(move || {
                let back = round_trip(&f, f.orig(0), &[1; 32], &[2; 32], 0);
                assert_eq!(back, vec![2; 32]);
            })
        };
        let s = f.pool.stats();
        assert!(s.used <= 1 && s.maps <= 1 && s.unmaps <= 1, "{s:?}");
        assert!(s.bytes_bounced <= 2 * 32 && s.high_water <= 1, "{s:?}");
        worker.join().unwrap();
        assert_idle(&f, 1);
    });
}

/// An unmap and a sync of the same mapping race: the sync either copies before the unmap
/// claims the mapping or fails with `NotMapped`; it never copies after the unmap's copy-back
/// (which would overwrite the original the driver owns again).
#[test]
fn sync_racing_unmap_never_copies_after_it() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 4096));
        let d = dev();
        let orig = f.orig(0);
        f.write(orig, &[1; 16]);
        // SAFETY: the original belongs to this model alone.
        let tlb = unsafe {
            f.pool.map(
                &d,
                orig,
                16,
                0,
                DmaDirection::FromDevice,
                DmaAttrs::empty(),
                0,
            )
        }
        .unwrap();
        f.write(tlb, &[2; 16]); // The device's data.
        let syncer = {
            let f = Arc::clone(&f);
            thread::spawn(move || {
                f.pool
                    .sync_for_cpu(&dev(), tlb, 16, DmaDirection::FromDevice)
            })
        };
        let unmapper = {
            let f = Arc::clone(&f);
            thread::spawn(move || {
                f.pool
                    .unmap(&dev(), tlb, 16, DmaDirection::FromDevice, DmaAttrs::empty())
            })
        };
        unmapper.join().unwrap().expect("unmap");
        // The driver owns the original again and writes it.
        f.write(orig, &[3; 16]);
        match syncer.join().unwrap() {
            Ok(()) | Err(Error::NotMapped { .. }) => {}
            Err(e) => panic!("sync gave {e:?}"),
        }
        assert_eq!(
            f.read(orig, 16),
            vec![3; 16],
            "a sync copied after the unmap"
        );
        assert_idle(&f, 1);
    });
}

/// Two threads unmap the same mapping: exactly one succeeds, the other gets `NotMapped`,
/// and the slots are freed once.
#[test]
fn double_unmap_from_two_threads_frees_once() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 4096));
        let orig = f.orig(0);
        // SAFETY: the original belongs to this model alone.
        let tlb = unsafe {
            f.pool.map(
                &dev(),
                orig,
                100,
                0,
                DmaDirection::ToDevice,
                DmaAttrs::empty(),
                0,
            )
        }
        .unwrap();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    f.pool
                        .unmap(&dev(), tlb, 100, DmaDirection::ToDevice, DmaAttrs::empty())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        assert!(
            results.contains(&Err(Error::NotMapped { addr: tlb })),
            "{results:?}"
        );
        assert_idle(&f, 1);
        assert_eq!(f.pool.stats().fail_not_mapped, 1);
    });
}

/// Two threads each want the whole (one-segment) pool: exactly one gets it, the other gets
/// `PoolFull`, and the failure is counted once.
#[test]
fn contention_for_the_last_slots() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 2 * 256 * 1024));
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    let orig = f.orig(t * 256 * 1024);
                    // SAFETY: each thread's original is its own.
                    unsafe {
                        f.pool.map(
                            &dev(),
                            orig,
                            256 * 1024,
                            0,
                            DmaDirection::ToDevice,
                            DmaAttrs::SKIP_CPU_SYNC,
                            0,
                        )
                    }
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won: Vec<PhysAddr> = results.iter().filter_map(|r| r.ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(Error::PoolFull { .. }))),
            "{results:?}"
        );
        let s = f.pool.stats();
        assert_eq!((s.used, s.maps, s.fail_full), (NSLABS, 1, 1), "{s:?}");
        f.pool
            .unmap(
                &dev(),
                won[0],
                256 * 1024,
                DmaDirection::ToDevice,
                DmaAttrs::empty(),
            )
            .unwrap();
        assert_idle(&f, 1);
    });
}

/// Coherent allocations and frees from two threads: the alloc/free counters (pool-wide
/// read-modify-writes) and the area's used count stay exact.
#[test]
fn coherent_alloc_and_free_from_two_threads() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    let a = f.pool.alloc(&dev(), 4096, 0).expect("alloc");
                    assert_eq!(f.read(a, 4096), vec![0; 4096], "not zeroed");
                    f.write(a, &[9; 4096]);
                    f.pool.free(&dev(), a).expect("free");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        f.pool.check_invariants().unwrap();
        let s = f.pool.stats();
        assert_eq!((s.used, s.allocs, s.frees), (0, 2, 2), "{s:?}");
    });
}

/// The x86 PV platform's protocol for a region in transition: writers serialised by a
/// [`SpinLock`] open a [`SeqRange`], rewrite the range's entries (the P2M) and close it;
/// a lock-free reader's lookup of a frame returns its old or its new entry, or `None` while
/// the frame is in transition, never a torn pair; and a lookup outside the range is never
/// hidden. The entries are a pair per frame so that a torn read would show.
#[test]
fn seq_range_readers_never_see_a_half_done_transition() {
    model(|| {
        struct P2m {
            lock: SpinLock<()>,
            seq: SeqRange,
            /// Frame 0's entry, in two halves; frame 1's entry.
            lo: AtomicU64,
            hi: AtomicU64,
            other: AtomicU64,
        }
        let p = Arc::new(P2m {
            lock: SpinLock::new(()),
            seq: SeqRange::new(),
            lo: AtomicU64::new(10),
            hi: AtomicU64::new(10),
            other: AtomicU64::new(7),
        });
        let writers: Vec<_> = [20u64, 30]
            .into_iter()
            .map(|v| {
                let p = Arc::clone(&p);
                thread::spawn(move || {
                    let _guard = p.lock.lock();
                    p.seq.open(0, 1);
                    p.lo.store(v, Ordering::Relaxed);
                    p.hi.store(v, Ordering::Relaxed);
                    p.seq.close();
                })
            })
            .collect();
        let got = p.seq.read(|| {
            let lo = p.lo.load(Ordering::Relaxed);
            let hi = p.hi.load(Ordering::Relaxed);
            // A torn pair reads as an entry no writer wrote.
            Some((0, if lo == hi { lo } else { u64::MAX }))
        });
        match got {
            None | Some((0, 10 | 20 | 30)) => {}
            other => panic!("a reader saw a half-done transition: {other:?}"),
        }
        let outside = p.seq.read(|| Some((1, p.other.load(Ordering::Relaxed))));
        assert_eq!(
            outside,
            Some((1, 7)),
            "a frame outside the transition was hidden"
        );
        for w in writers {
            w.join().unwrap();
        }
        let last = p.seq.read(|| Some((0, p.lo.load(Ordering::Relaxed))));
        assert!(matches!(last, Some((0, 20 | 30))), "{last:?}");
        assert_eq!(p.lo.load(Ordering::Relaxed), p.hi.load(Ordering::Relaxed));
    });
}

/// A [`LinearMap`] whose copies start with an atomic access, a point where loom can preempt
/// the copying thread, so that other threads can run between a sync's release of the area
/// lock and its copy (a plain copy is invisible to loom and would happen at once).
struct YieldingMemory(LinearMap, loom::sync::atomic::AtomicUsize);

// SAFETY: every call is forwarded unchanged to the `LinearMap`.
unsafe impl PhysMemory for YieldingMemory {
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        self.1.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe { self.0.copy(dst, src, len) }
    }

    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.fill(dst, byte, len) }
    }
}

/// A pool over [`YieldingMemory`] and the allocation behind it.
struct SlowPool {
    base: *mut u8,
    len: usize,
    pool: BouncePool<YieldingMemory, Vec<Slot>>,
}

// SAFETY: the memory is reached only through the pool and raw pointers, by threads that keep
// their accesses disjoint (as `common::Fixture`).
unsafe impl Sync for SlowPool {}
// SAFETY: as for `Sync`; the allocation is freed once, in `Drop`.
unsafe impl Send for SlowPool {}

impl SlowPool {
    fn new() -> Self {
        let len = NSLABS * 2048 + 4096;
        let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        let mem = YieldingMemory(
            // SAFETY: `base..base + len` is one allocation freed only in `Drop`, after the
            // pool.
            unsafe { LinearMap::new(base, PhysAddr::new(0x10_0000), len) },
            loom::sync::atomic::AtomicUsize::new(0),
        );
        let storage = (0..NSLABS).map(|_| Slot::new()).collect();
        // SAFETY: the pool range is the start of the allocation and used by the pool alone.
        let pool =
            unsafe { BouncePool::new(mem, PhysAddr::new(0x10_0000), NSLABS, 1, storage) }.unwrap();
        Self { base, len, pool }
    }

    fn at(&self, addr: PhysAddr) -> *mut u8 {
        let off = usize::try_from(addr.as_u64() - 0x10_0000).unwrap();
        assert!(off < self.len);
        // SAFETY: checked to be inside the allocation.
        unsafe { self.base.add(off) }
    }
}

impl Drop for SlowPool {
    fn drop(&mut self) {
        // SAFETY: `base` came from `Box::into_raw` of a slice of `len` bytes.
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(self.base, self.len)) });
    }
}

/// A sync copies outside the area lock while an unmap of the same mapping runs: the unmap
/// waits for the pinned copy, so the sync's bytes never land in the original after the unmap
/// has returned it to the driver, and the slots are not freed under the copy.
#[test]
fn sync_copying_outside_the_lock_holds_off_the_unmap() {
    model(|| {
        let p = Arc::new(SlowPool::new());
        let d = dev();
        let orig = p.pool.end();
        // SAFETY: the original is the model's own.
        let tlb = unsafe {
            p.pool.map(
                &d,
                orig,
                1,
                0,
                DmaDirection::FromDevice,
                DmaAttrs::empty(),
                0,
            )
        }
        .unwrap();
        // SAFETY: inside the allocation; the "device" writes its byte.
        unsafe { p.at(tlb).write(2) };
        let syncer = {
            let p = Arc::clone(&p);
            thread::spawn(move || {
                p.pool
                    .sync_for_cpu(&dev(), tlb, 1, DmaDirection::FromDevice)
            })
        };
        p.pool
            .unmap(&d, tlb, 1, DmaDirection::FromDevice, DmaAttrs::empty())
            .unwrap();
        // The driver owns the original again and writes it.
        // SAFETY: inside the allocation; the pool no longer touches the original.
        unsafe { p.at(orig).write(3) };
        match syncer.join().unwrap() {
            Ok(()) | Err(Error::NotMapped { .. }) => {}
            Err(e) => panic!("sync gave {e:?}"),
        }
        // SAFETY: inside the allocation; every thread that wrote it has been joined.
        let byte = unsafe { p.at(orig).read() };
        assert_eq!(byte, 3, "a sync copied after the unmap");
        p.pool.check_invariants().unwrap();
        assert_eq!(p.pool.stats().used, 0);
    });
}

loom::thread_local! {
    /// The modelled CPU's interrupt flag: true while local interrupts are masked. Each loom
    /// thread is one CPU.
    static MASKED: core::cell::Cell<bool> = core::cell::Cell::new(false);
    /// Interrupt points left on this CPU before [`RAISE`] is raised.
    static COUNTDOWN: core::cell::Cell<usize> = core::cell::Cell::new(0);
    /// The interrupt this CPU raises at its `COUNTDOWN`-th interrupt point.
    static RAISE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        std::cell::RefCell::new(None);
    /// An interrupt raised while interrupts were masked, delivered at the restore.
    static PENDING: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        std::cell::RefCell::new(None);
}

/// Runs a handler as a CPU does: with interrupts masked.
fn deliver(handler: Box<dyn FnOnce()>) {
    MASKED.with(|m| m.set(true));
    handler();
    MASKED.with(|m| m.set(false));
}

/// A point where an interrupt may arrive: the pending one is raised once its countdown runs
/// out, delivered at once if interrupts are enabled and at the restore if they are masked.
fn interrupt_point() {
    let now = COUNTDOWN.with(|c| {
        let n = c.get();
        c.set(n.saturating_sub(1));
        n == 1
    });
    if !now {
        return;
    }
    let Some(h) = RAISE.with(|r| r.borrow_mut().take()) else {
        return;
    };
    if MASKED.with(core::cell::Cell::get) {
        PENDING.with(|p| *p.borrow_mut() = Some(h));
    } else {
        deliver(h);
    }
}

/// The kernel's `local_irq_save` in the model. An interrupt may arrive just before the mask
/// takes effect (the CPU is about to take the lock: it is delivered at once), or just after
/// it (the CPU is about to take, or holds, the lock: it stays pending until the restore).
fn irq_save() -> usize {
    interrupt_point();
    let prev = usize::from(MASKED.with(|m| m.replace(true)));
    interrupt_point();
    prev
}

/// The kernel's `local_irq_restore` in the model: restoring enabled interrupts delivers a
/// pending interrupt.
fn irq_restore(prev: usize) {
    MASKED.with(|m| m.set(prev != 0));
    if prev == 0
        && let Some(h) = PENDING.with(|p| p.borrow_mut().take())
    {
        deliver(h);
    }
}

/// A [`LinearMap`] whose copies are interrupt points (they run outside the area lock, with
/// interrupts as the caller had them) and loom scheduling points.
struct IrqMemory(LinearMap, loom::sync::atomic::AtomicUsize);

// SAFETY: every call is forwarded unchanged to the `LinearMap`.
unsafe impl PhysMemory for IrqMemory {
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        self.1.fetch_add(1, Ordering::Relaxed);
        interrupt_point();
        // SAFETY: forwarded from the caller.
        unsafe { self.0.copy(dst, src, len) }
    }

    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.fill(dst, byte, len) }
    }
}

/// A one-area pool over [`IrqMemory`] with the model's interrupt hook, and 3 pages of
/// originals after it.
struct IrqPool {
    base: *mut u8,
    len: usize,
    pool: BouncePool<IrqMemory, Vec<Slot>>,
}

// SAFETY: as for `SlowPool`: threads keep their accesses disjoint.
unsafe impl Sync for IrqPool {}
// SAFETY: as for `Sync`; the allocation is freed once, in `Drop`.
unsafe impl Send for IrqPool {}

impl IrqPool {
    fn new() -> Self {
        let len = NSLABS * 2048 + 3 * 4096;
        let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        let mem = IrqMemory(
            // SAFETY: `base..base + len` is one allocation freed only in `Drop`, after the
            // pool.
            unsafe { LinearMap::new(base, PhysAddr::new(0x10_0000), len) },
            loom::sync::atomic::AtomicUsize::new(0),
        );
        let storage = (0..NSLABS).map(|_| Slot::new()).collect();
        // SAFETY: the pool range is the start of the allocation and used by the pool alone.
        let mut pool =
            unsafe { BouncePool::new(mem, PhysAddr::new(0x10_0000), NSLABS, 1, storage) }.unwrap();
        pool.set_irq_hook(swiotlb_core::IrqHook::new(irq_save, irq_restore));
        Self { base, len, pool }
    }

    fn at(&self, addr: PhysAddr) -> *mut u8 {
        let off = usize::try_from(addr.as_u64() - 0x10_0000).unwrap();
        assert!(off < self.len);
        // SAFETY: checked to be inside the allocation.
        unsafe { self.base.add(off) }
    }

    fn write(&self, addr: PhysAddr, bytes: &[u8]) {
        // SAFETY: inside the allocation (checked for the first byte; the models stay in
        // their page); no reference covers it.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at(addr), bytes.len()) }
    }

    fn read(&self, addr: PhysAddr, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: as for `write`.
        unsafe { core::ptr::copy_nonoverlapping(self.at(addr), v.as_mut_ptr(), len) }
        v
    }

    /// Original page `i`.
    fn orig(&self, i: u64) -> PhysAddr {
        PhysAddr::new(self.pool.end().as_u64() + i * 4096)
    }

    /// A bidirectional round trip of 16 bytes of `tag` at original page `i`: the bounce gets
    /// the CPU's bytes, the "device" writes its own, a sync for the CPU and the unmap bring
    /// them back. Asserts every byte on the way.
    fn round_trip(&self, i: u64, tag: u8) {
        let (orig, dir, none) = (self.orig(i), DmaDirection::Bidirectional, DmaAttrs::empty());
        self.write(orig, &[tag; 16]);
        // SAFETY: each caller passes an original no other CPU or handler uses.
        let tlb = unsafe { self.pool.map(&dev(), orig, 16, 0, dir, none, 0) }.expect("map");
        assert_eq!(self.read(tlb, 16), [tag; 16], "bounce copy-in of {tag}");
        self.write(tlb, &[tag + 100; 16]);
        self.pool.sync_for_cpu(&dev(), tlb, 16, dir).expect("sync");
        assert_eq!(
            self.read(orig, 16),
            [tag + 100; 16],
            "sync for the CPU of {tag}"
        );
        self.pool.unmap(&dev(), tlb, 16, dir, none).expect("unmap");
        assert_eq!(self.read(orig, 16), [tag + 100; 16], "unmap of {tag}");
    }
}

impl Drop for IrqPool {
    fn drop(&mut self) {
        // SAFETY: `base` came from `Box::into_raw` of a slice of `len` bytes.
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(self.base, self.len)) });
    }
}

/// Interrupt re-entry through the pool's interrupt hook. CPU 0 maps, syncs and unmaps in
/// its one area while CPU 1 does the same; an interrupt arrives on CPU 0 at its `n`-th
/// interrupt point (just before a lock is taken: delivered at once; once interrupts are
/// masked for a lock: delivered at the restore after the lock is released; or in a copy,
/// outside the lock) and its handler maps, syncs and unmaps through the same area. The
/// hook masks interrupts for as long as an area lock is held or awaited, so the handler
/// never spins for a lock its own CPU holds (which loom would report as a model that cannot
/// make progress); every byte of the three round trips is its own (no torn or crossed
/// copy), and the counters are exact.
#[test]
fn interrupt_time_map_with_the_hook_never_deadlocks() {
    for n in [1, 2, 3, 6] {
        model(move || {
            // CPU 0, on a stack large enough for the pool and for the handler's round trip
            // nested in its own (loom's main thread has a small one).
            let cpu0 = thread::Builder::new()
                .stack_size(4 << 20)
                .spawn(move || interrupted_round_trip(n))
                .unwrap();
            cpu0.join().unwrap();
        });
    }
}

/// The body of [`interrupt_time_map_with_the_hook_never_deadlocks`] on CPU 0.
fn interrupted_round_trip(n: usize) {
    let p = Arc::new(IrqPool::new());
    let other = {
        let p = Arc::clone(&p);
        thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || p.round_trip(1, 2))
            .unwrap()
    };
    let ran = std::rc::Rc::new(core::cell::Cell::new(false));
    {
        let (p, ran) = (Arc::clone(&p), ran.clone());
        COUNTDOWN.with(|c| c.set(n));
        RAISE.with(|r| {
            *r.borrow_mut() = Some(Box::new(move || {
                p.round_trip(2, 3);
                ran.set(true);
            }));
        });
    }
    p.round_trip(0, 1);
    assert!(ran.get(), "the interrupt at point {n} was not delivered");
    assert!(
        !MASKED.with(core::cell::Cell::get),
        "interrupts left masked"
    );
    other.join().unwrap();
    p.pool.check_invariants().unwrap();
    let s = p.pool.stats();
    assert_eq!((s.used, s.maps, s.unmaps), (0, 3, 3), "{s:?}");
}

/// A grown pool's entry as the models see it: the engine's gate and a cell standing for the
/// pool value (loom tracks every access to it).
struct ModelEntry {
    gate: swiotlb_core::engine::EntryGate,
    pool: loom::cell::UnsafeCell<u64>,
}

// SAFETY: the cell is accessed as the gate's protocol allows (what the models check).
unsafe impl Sync for ModelEntry {}

impl ModelEntry {
    fn live(value: u64) -> Self {
        let e = Self {
            gate: swiotlb_core::engine::EntryGate::new(),
            pool: loom::cell::UnsafeCell::new(value),
        };
        e.gate.publish();
        e
    }

    /// A user: enters, reads the pool, leaves. `None` when turned away (the engine's lookup
    /// then retries while `EntryGate::retiring` says a retire is under way: a wait for
    /// another CPU that loom's bounded model cannot run to its end).
    fn use_pool(&self) -> Option<u64> {
        if !self.gate.enter() {
            return None;
        }
        // SAFETY: inside the gate (the protocol under test).
        let v = self.pool.with(|p| unsafe { *p });
        self.gate.leave();
        Some(v)
    }
}

/// A user racing reclaim's retire of the same grown pool: the user reads the pool only
/// while the retire has not replaced it, and the retire replaces it only when no user is
/// inside (loom reports any overlap of the read and the write). A user turned away saw the
/// entry retiring; a retire that backed off leaves the entry live.
#[test]
fn grown_pool_user_racing_retire_never_overlaps_the_replacement() {
    model(|| {
        let e = Arc::new(ModelEntry::live(7));
        let user = {
            let e = Arc::clone(&e);
            thread::spawn(move || e.use_pool())
        };
        let retired = e.gate.retire();
        if retired {
            // SAFETY: retired: nobody is inside and nobody can enter.
            e.pool.with_mut(|p| unsafe { *p = 0 });
            e.gate.empty();
        }
        if let Some(v) = user.join().unwrap() {
            assert_eq!(v, 7, "a user read a pool being replaced");
        }
        if !retired {
            assert!(
                e.gate.is_live(),
                "a retire that backed off left the entry dead: state {}",
                e.gate.state()
            );
        }
    });
}

/// A user racing the growth that publishes a pool into an empty entry (reusing it): the
/// user either stays out or sees the whole new pool, never the old value or a torn write.
#[test]
fn grown_pool_user_racing_a_publish_sees_the_whole_pool() {
    model(|| {
        let e = Arc::new(ModelEntry::live(1));
        // The entry is retired and emptied first, as reclaim does.
        assert!(e.gate.retire());
        e.gate.empty();
        let user = {
            let e = Arc::clone(&e);
            thread::spawn(move || e.use_pool())
        };
        // SAFETY: empty: nobody can enter.
        e.pool.with_mut(|p| unsafe { *p = 42 });
        e.gate.publish();
        if let Some(v) = user.join().unwrap() {
            assert_eq!(v, 42, "a user saw the pool before it was published");
        }
    });
}
