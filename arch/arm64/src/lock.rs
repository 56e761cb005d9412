//! A writer-preferring reader-writer spin lock for `no_std`.
//!
//! The foreign table is read on every DMA map (translation) and written only when grants are
//! mapped or unmapped, so readers must not block each other and a writer must not starve.
//! [`RwSpinLock`] gives exactly that with one `AtomicUsize`:
//!
//! - bit `WRITER` is set while a writer holds the lock;
//! - bit `WRITER_WAITING` is set while a writer waits: new readers stay out until it has
//!   had its turn (writer preference);
//! - the remaining low bits count the readers holding the lock.
//!
//! # Interrupts
//!
//! The lock spins and does not mask interrupts (a library cannot). A reader that interrupts a
//! writer on the same CPU, or a writer that interrupts a reader, spins forever. Linux takes
//! this lock with `read_lock_irqsave`/`write_lock_irqsave`; a kernel that translates
//! addresses from interrupt context must likewise mask local interrupts around the calls
//! that take the lock, or at least around the writers and never write from interrupt
//! context.

//!
//! # Loom
//!
//! Built with `RUSTFLAGS="--cfg loom"`, the lock's cell and atomics (and the foreign table's
//! length, through [`atomic`]) are loom's, so the loom models in `tests/loom.rs` explore the
//! interleavings of readers, writers and the lock-free emptiness check.

use self::atomic::{AtomicUsize, Ordering};
use core::fmt;
use core::ops::{Deref, DerefMut};

#[cfg(not(loom))]
use core::cell::UnsafeCell;
#[cfg(loom)]
use loom::cell::UnsafeCell;

/// The atomic types of the lock and the foreign table: `core`'s, or loom's under
/// `--cfg loom`.
pub(crate) mod atomic {
    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::AtomicUsize;
    pub(crate) use core::sync::atomic::Ordering;
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::AtomicUsize;
}

/// Declares a `const fn` in normal builds and a plain `fn` under `--cfg loom`, whose atomics
/// have no `const` constructors.
macro_rules! const_fn_unless_loom {
    ($(#[$attr:meta])* $vis:vis fn $($rest:tt)*) => {
        #[cfg(not(loom))]
        $(#[$attr])* $vis const fn $($rest)*
        #[cfg(loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
pub(crate) use const_fn_unless_loom;

/// The body of a spin-wait loop: a CPU hint, or under `--cfg loom` a yield to the model's
/// scheduler (a loom model must not spin).
#[inline]
fn spin_wait() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// Set while a writer holds the lock.
const WRITER: usize = 1 << (usize::BITS - 1);
/// Set while a writer waits for the readers to leave.
const WRITER_WAITING: usize = 1 << (usize::BITS - 2);
/// The bits counting readers.
const READERS: usize = !(WRITER | WRITER_WAITING);

/// A reader-writer spin lock protecting a `T`.
///
/// # Invariants
///
/// `state & READERS` is the number of live [`ReadGuard`]s; `state & WRITER` is set iff one
/// [`WriteGuard`] is live, and then the reader count is zero. `value` is accessed shared only
/// through read guards and exclusively only through the write guard.
pub struct RwSpinLock<T> {
    state: AtomicUsize,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to several threads at once (needs `T: Sync`) and `&mut T` to
// one thread at a time, possibly another than the one that created it (needs `T: Send`).
unsafe impl<T: Send + Sync> Sync for RwSpinLock<T> {}
// SAFETY: moving the lock moves the `T` it owns.
unsafe impl<T: Send> Send for RwSpinLock<T> {}

impl<T> RwSpinLock<T> {
    const_fn_unless_loom! {
        /// Creates an unlocked lock around `value`.
        #[must_use]
        pub fn new(value: T) -> Self {
            Self {
                state: AtomicUsize::new(0),
                value: UnsafeCell::new(value),
            }
        }
    }

    /// Takes the lock shared, spinning while a writer holds it or waits for it.
    pub fn read(&self) -> ReadGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_read() {
                return guard;
            }
            spin_wait();
        }
    }

    /// Takes the lock shared if no writer holds it or waits for it.
    pub fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        let state = self.state.load(Ordering::Relaxed);
        // The reader count cannot reach the flag bits: that would take 2^62 live guards.
        if state & (WRITER | WRITER_WAITING) != 0 || state & READERS == READERS {
            return None;
        }
        self.state
            .compare_exchange(state, state + 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            // INVARIANT: the reader count now includes this guard.
            .map(|_| ReadGuard::new(self))
    }

    /// Takes the lock exclusively, spinning until the readers and any other writer leave.
    /// While it waits, new readers are held off.
    pub fn write(&self) -> WriteGuard<'_, T> {
        loop {
            let state = self.state.load(Ordering::Relaxed);
            if state & (WRITER | READERS) == 0 {
                // Clearing WRITER_WAITING here is harmless: another waiting writer sets it
                // again on its next iteration.
                if self
                    .state
                    .compare_exchange_weak(state, WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    // INVARIANT: no reader and no other writer; WRITER is now set.
                    return WriteGuard::new(self);
                }
            } else if state & WRITER_WAITING == 0 {
                self.state.fetch_or(WRITER_WAITING, Ordering::Relaxed);
            }
            spin_wait();
        }
    }

    /// Returns the value through an exclusive borrow (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(not(loom))]
        let value = self.value.get_mut();
        // SAFETY: `&mut self` excludes every other access for the borrow's lifetime.
        #[cfg(loom)]
        let value = unsafe { &mut *self.value.with_mut(|p| p) };
        value
    }

    /// Consumes the lock and returns the value.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: Default> Default for RwSpinLock<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for RwSpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_read() {
            Some(guard) => f.debug_tuple("RwSpinLock").field(&*guard).finish(),
            None => f.write_str("RwSpinLock(<locked>)"),
        }
    }
}

/// Shared access to the value of an [`RwSpinLock`]; releases the lock when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ReadGuard<'a, T> {
    lock: &'a RwSpinLock<T>,
    /// Under `--cfg loom`, the shared access loom tracks for as long as the guard lives.
    #[cfg(loom)]
    access: core::mem::ManuallyDrop<loom::cell::ConstPtr<T>>,
}

impl<'a, T> ReadGuard<'a, T> {
    /// The guard of a shared lock the caller has just taken.
    fn new(lock: &'a RwSpinLock<T>) -> Self {
        Self {
            lock,
            #[cfg(loom)]
            access: core::mem::ManuallyDrop::new(lock.value.get()),
        }
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        #[cfg(not(loom))]
        let ptr = self.lock.value.get().cast_const();
        #[cfg(loom)]
        let ptr = self.access.with(|p| p);
        // SAFETY: a live read guard means no write guard is live (type invariant), so no
        // `&mut T` exists while this shared borrow does.
        unsafe { &*ptr }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: `access` is dropped here once and not used again: the access ends before
        // the lock is released.
        #[cfg(loom)]
        unsafe {
            core::mem::ManuallyDrop::drop(&mut self.access);
        }
        // INVARIANT: this guard leaves the reader count.
        self.lock.state.fetch_sub(1, Ordering::Release);
    }
}

/// Exclusive access to the value of an [`RwSpinLock`]; releases the lock when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct WriteGuard<'a, T> {
    lock: &'a RwSpinLock<T>,
    /// Under `--cfg loom`, the exclusive access loom tracks for as long as the guard lives.
    #[cfg(loom)]
    access: core::mem::ManuallyDrop<loom::cell::MutPtr<T>>,
}

impl<'a, T> WriteGuard<'a, T> {
    /// The guard of an exclusive lock the caller has just taken.
    fn new(lock: &'a RwSpinLock<T>) -> Self {
        Self {
            lock,
            #[cfg(loom)]
            access: core::mem::ManuallyDrop::new(lock.value.get_mut()),
        }
    }

    /// A pointer to the value.
    fn ptr(&self) -> *mut T {
        #[cfg(not(loom))]
        let ptr = self.lock.value.get();
        #[cfg(loom)]
        let ptr = self.access.with(|p| p);
        ptr
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the write guard is the only guard alive (type invariant).
        unsafe { &*self.ptr() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write guard is the only guard alive (type invariant), and `&mut self`
        // makes this borrow unique among the guard's own borrows.
        unsafe { &mut *self.ptr() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: `access` is dropped here once and not used again: the access ends before
        // the lock is released.
        #[cfg(loom)]
        unsafe {
            core::mem::ManuallyDrop::drop(&mut self.access);
        }
        // INVARIANT: WRITER is cleared; a WRITER_WAITING bit set by another writer stays.
        self.lock.state.fetch_and(!WRITER, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    #[test]
    fn readers_share_writer_excludes() {
        let lock = RwSpinLock::new(5u32);
        let a = lock.read();
        let b = lock.read();
        assert_eq!(*a + *b, 10);
        assert!(lock.try_read().is_some());
        drop((a, b));
        {
            let mut w = lock.write();
            *w = 7;
            assert!(lock.try_read().is_none(), "a reader got in beside a writer");
        }
        assert_eq!(*lock.read(), 7);
        assert_eq!(lock.into_inner(), 7);
    }

    #[test]
    fn waiting_writer_holds_off_new_readers() {
        let lock = Arc::new(RwSpinLock::new(0u32));
        let reader = lock.read();
        let l2 = Arc::clone(&lock);
        let writer = thread::spawn(move || {
            *l2.write() += 1;
        });
        // Wait until the writer has announced itself.
        while lock.state.load(Ordering::Relaxed) & WRITER_WAITING == 0 {
            thread::yield_now();
        }
        assert!(
            lock.try_read().is_none(),
            "a new reader overtook a waiting writer"
        );
        drop(reader);
        writer.join().unwrap();
        assert_eq!(*lock.read(), 1);
    }

    #[test]
    fn concurrent_counter() {
        let (threads, iters) = if cfg!(miri) { (3, 20) } else { (4, 2000) };
        let lock = Arc::new(RwSpinLock::new((0u64, 0u64)));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    for _ in 0..iters {
                        if i % 2 == 0 {
                            let mut g = lock.write();
                            g.0 += 1;
                            g.1 += 1;
                        } else {
                            let g = lock.read();
                            assert_eq!(g.0, g.1, "a reader saw a half-done write");
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let writers = (threads as u64).div_ceil(2);
        assert_eq!(lock.read().0, writers * iters);
    }
}
