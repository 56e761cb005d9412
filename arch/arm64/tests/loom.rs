//! Loom models of the foreign table: lookups (with their lock-free emptiness fast path)
//! racing inserts and removes, writers racing writers, and an interrupt-time lookup nested in
//! a lookup of the same CPU while a writer waits (with and without the interrupt hook), in
//! every interleaving loom reaches within its preemption bound.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p swiotlb-xen-arm64 --release --test loom`.

#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;
use swiotlb_core::{Bfn, Pfn};
use swiotlb_xen_arm64::{BoundedForeignTable, ForeignTableError};

type Table = BoundedForeignTable<4>;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// Inserts an entry; the models own every frame they name.
fn insert(t: &Table, pfn: u64, mfn: u64, n: u64) -> Result<(), ForeignTableError> {
    // SAFETY: no DMA happens in the model; the translations are only compared.
    unsafe { t.insert(Pfn::new(pfn), Bfn::new(mfn), n) }
}

/// A lookup racing an insert sees nothing or the right frame, and once the writer has
/// published the insert (a release store the reader acquires), the lock-free emptiness check
/// cannot hide it.
#[test]
fn lookup_racing_insert_sees_nothing_or_the_right_frame() {
    model(|| {
        let t = Arc::new(Table::new());
        let published = Arc::new(AtomicBool::new(false));
        let writer = {
            let (t, published) = (Arc::clone(&t), Arc::clone(&published));
            thread::spawn(move || {
                insert(&t, 0x100, 0x9000, 2).unwrap();
                published.store(true, Ordering::Release);
            })
        };
        let seen_published = published.load(Ordering::Acquire);
        let got = t.lookup(Pfn::new(0x101));
        assert!(
            got.is_none() || got == Some(Bfn::new(0x9001)),
            "wrong translation {got:?}"
        );
        if seen_published {
            assert_eq!(got, Some(Bfn::new(0x9001)), "a published entry was missed");
        }
        writer.join().unwrap();
        assert_eq!(t.lookup(Pfn::new(0x100)), Some(Bfn::new(0x9000)));
        assert_eq!(t.len(), 1);
    });
}

/// A lookup racing a remove sees the entry or nothing, and the bus-contiguity answer for
/// the two frames matches whichever state it saw.
#[test]
fn lookup_racing_remove() {
    model(|| {
        let t = Arc::new(Table::new());
        insert(&t, 0x10, 0x5000, 1).unwrap();
        insert(&t, 0x11, 0x7000, 1).unwrap();
        let writer = {
            let t = Arc::clone(&t);
            thread::spawn(move || {
                // SAFETY: as for `insert`.
                unsafe { t.remove(Pfn::new(0x10)) }.unwrap();
            })
        };
        let view = t.read();
        let first = view.lookup(Pfn::new(0x10));
        let contiguous = view.is_bus_contiguous(Pfn::new(0x10), 2);
        drop(view);
        match first {
            Some(b) => {
                assert_eq!(b, Bfn::new(0x5000));
                assert!(!contiguous, "0x5000 and 0x7000 are not contiguous");
            }
            // Removed: frame 0x10 is 1:1 again and 0x11 still foreign.
            None => assert!(!contiguous),
        }
        writer.join().unwrap();
        assert_eq!(t.lookup(Pfn::new(0x10)), None);
        assert_eq!(t.lookup(Pfn::new(0x11)), Some(Bfn::new(0x7000)));
        assert_eq!(t.len(), 1);
    });
}

/// Two writers insert overlapping entries: exactly one wins, the other gets `Overlap`
/// naming the winner, and the table holds the winner only.
#[test]
fn overlapping_inserts_one_wins() {
    model(|| {
        let t = Arc::new(Table::new());
        let handles: Vec<_> = [(0x20u64, 0x1000u64), (0x21, 0x2000)]
            .into_iter()
            .map(|(pfn, mfn)| {
                let t = Arc::clone(&t);
                thread::spawn(move || insert(&t, pfn, mfn, 2))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        let winner = t.read().entries().to_vec();
        assert_eq!(winner.len(), 1);
        let lost = results.iter().find_map(|r| r.err()).unwrap();
        assert!(
            matches!(lost, ForeignTableError::Overlap { existing, .. } if existing == winner[0]),
            "{lost:?}"
        );
        assert_eq!(t.len(), 1);
    });
}

/// Two writers insert disjoint entries while a reader looks both up: both land, sorted, and
/// the reader never sees a wrong frame.
#[test]
fn disjoint_inserts_both_land_sorted() {
    model(|| {
        let t = Arc::new(Table::new());
        let handles: Vec<_> = [(0x40u64, 0x3000u64), (0x30, 0x4000)]
            .into_iter()
            .map(|(pfn, mfn)| {
                let t = Arc::clone(&t);
                thread::spawn(move || insert(&t, pfn, mfn, 1))
            })
            .collect();
        for (pfn, mfn) in [(0x40, 0x3000), (0x30, 0x4000)] {
            let got = t.lookup(Pfn::new(pfn));
            assert!(got.is_none() || got == Some(Bfn::new(mfn)), "{got:?}");
        }
        for h in handles {
            h.join().unwrap().unwrap();
        }
        let pfns: Vec<u64> = t
            .read()
            .entries()
            .iter()
            .map(|e| e.pfn().as_u64())
            .collect();
        assert_eq!(pfns, [0x30, 0x40]);
        assert_eq!(t.len(), 2);
    });
}

loom::thread_local! {
    /// The modelled CPU's interrupt flag: true while local interrupts are masked. Each loom
    /// thread is one CPU.
    static MASKED: core::cell::Cell<bool> = core::cell::Cell::new(false);
}

/// The kernel's `local_irq_save` in the model.
fn irq_save() -> usize {
    usize::from(MASKED.with(|m| m.replace(true)))
}

/// The kernel's `local_irq_restore` in the model.
fn irq_restore(prev: usize) {
    MASKED.with(|m| m.set(prev != 0));
}

/// How often the modelled interrupt handler tries the lock before it declares a deadlock.
/// Each failed try yields, which lets another thread run, so a writer that can make progress
/// gets far more steps than it needs to take and release the lock.
const HANDLER_TRIES: usize = 16;

/// The interrupt handler: a lookup that spins a bounded number of times on the table's lock.
/// `None` means it would have spun for ever.
fn interrupt_lookup(t: &Table) -> Option<Option<Bfn>> {
    for _ in 0..HANDLER_TRIES {
        if let Some(view) = t.try_read() {
            return Some(view.lookup(Pfn::new(0x100)));
        }
        thread::yield_now();
    }
    None
}

/// One CPU does a process-context lookup under the table's shared lock, and an interrupt
/// arrives in the middle of it whose handler looks up too, while a writer on the other CPU
/// inserts. The interrupt is delivered at once if interrupts are enabled, or when they are
/// restored (after the outer view is dropped) if the table's hook masked them. Returns
/// whether the handler got its lookup.
fn nested_lookup_while_a_writer_waits(hook: Option<swiotlb_core::IrqHook>) -> bool {
    let mut table = Table::new();
    if let Some(hook) = hook {
        table.set_irq_hook(hook);
    }
    let t = Arc::new(table);
    insert(&t, 0x100, 0x9000, 1).unwrap();
    let writer = {
        let t = Arc::clone(&t);
        thread::spawn(move || insert(&t, 0x200, 0xa000, 1).unwrap())
    };
    let view = t.read();
    // The interrupt arrives here.
    let delivered_now = !MASKED.with(core::cell::Cell::get);
    let nested_now = delivered_now.then(|| interrupt_lookup(&t));
    assert_eq!(view.lookup(Pfn::new(0x100)), Some(Bfn::new(0x9000)));
    drop(view);
    // Restoring interrupts delivers a pending interrupt.
    let nested = nested_now.unwrap_or_else(|| interrupt_lookup(&t));
    let ok = nested == Some(Some(Bfn::new(0x9000)));
    if ok {
        writer.join().unwrap();
        assert_eq!(t.len(), 2);
    }
    ok
}

/// With the kernel's interrupt hook, the table's readers mask interrupts: the handler's
/// lookup runs only after the interrupted reader has left, so a waiting writer cannot trap
/// it, and it never deadlocks.
#[test]
fn interrupt_lookup_with_the_hook_never_deadlocks() {
    model(|| {
        let hook = swiotlb_core::IrqHook::new(irq_save, irq_restore);
        assert!(
            nested_lookup_while_a_writer_waits(Some(hook)),
            "the interrupt-time lookup deadlocked although interrupts were masked"
        );
        assert!(
            !MASKED.with(core::cell::Cell::get),
            "interrupts left masked"
        );
    });
}

/// Without the hook, loom finds the deadlock: the writer announces itself while the
/// process-context reader holds the lock, the handler's nested reader then waits for the
/// writer, and the writer for the interrupted reader.
#[test]
#[should_panic(expected = "deadlocked")]
fn interrupt_lookup_without_the_hook_deadlocks() {
    model(|| {
        assert!(
            nested_lookup_while_a_writer_waits(None),
            "the interrupt-time lookup deadlocked behind a waiting writer"
        );
    });
}

loom::thread_local! {
    /// The model's stand-in for the current CPU number.
    static CPU: core::cell::Cell<usize> = core::cell::Cell::new(0);
}

fn this_cpu() -> usize {
    CPU.with(core::cell::Cell::get)
}

/// With a CPU hint, readers on two CPUs count on two lines; a writer replacing an entry
/// must wait for both, so a view never sees half of a change: both frames of the two-page
/// entry, or neither, and never the entry the writer removes next to the one it inserts.
/// Loom's cell tracking reports any access of the entries while the writer has them.
#[test]
fn readers_on_two_cpus_and_a_writer_see_whole_changes() {
    model(|| {
        let t = Arc::new(Table::new().with_cpu_hint(this_cpu));
        insert(&t, 0x20, 0x3000, 1).unwrap();
        let writer = {
            let t = Arc::clone(&t);
            thread::spawn(move || {
                CPU.with(|c| c.set(0));
                // SAFETY: as for `insert`.
                unsafe { t.remove(Pfn::new(0x20)) }.unwrap();
                insert(&t, 0x100, 0x9000, 2).unwrap();
            })
        };
        let reader = {
            let t = Arc::clone(&t);
            thread::spawn(move || {
                CPU.with(|c| c.set(1));
                let view = t.read();
                let (a, b) = (view.lookup(Pfn::new(0x100)), view.lookup(Pfn::new(0x101)));
                drop(view);
                assert_eq!(a.is_some(), b.is_some(), "half of an entry: {a:?} {b:?}");
            })
        };
        CPU.with(|c| c.set(0));
        let old = t.lookup(Pfn::new(0x20));
        assert!(old.is_none() || old == Some(Bfn::new(0x3000)));
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(t.lookup(Pfn::new(0x101)), Some(Bfn::new(0x9001)));
        assert_eq!(t.lookup(Pfn::new(0x20)), None);
    });
}
