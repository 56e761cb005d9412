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

use core::cell::UnsafeCell;
use core::fmt;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicUsize, Ordering};

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
    /// Creates an unlocked lock around `value`.
    #[must_use]
    pub const fn new(value: T) -> Self {
        Self {
            state: AtomicUsize::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the lock shared, spinning while a writer holds it or waits for it.
    pub fn read(&self) -> ReadGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_read() {
                return guard;
            }
            core::hint::spin_loop();
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
            .map(|_| ReadGuard { lock: self })
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
                    return WriteGuard { lock: self };
                }
            } else if state & WRITER_WAITING == 0 {
                self.state.fetch_or(WRITER_WAITING, Ordering::Relaxed);
            }
            core::hint::spin_loop();
        }
    }

    /// Returns the value through an exclusive borrow (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
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
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: a live read guard means no write guard is live (type invariant), so no
        // `&mut T` exists while this shared borrow does.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // INVARIANT: this guard leaves the reader count.
        self.lock.state.fetch_sub(1, Ordering::Release);
    }
}

/// Exclusive access to the value of an [`RwSpinLock`]; releases the lock when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct WriteGuard<'a, T> {
    lock: &'a RwSpinLock<T>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the write guard is the only guard alive (type invariant).
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write guard is the only guard alive (type invariant), and `&mut self`
        // makes this borrow unique among the guard's own borrows.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // INVARIANT: WRITER is cleared; a WRITER_WAITING bit set by another writer stays.
        self.lock.state.fetch_and(!WRITER, Ordering::Release);
    }
}

#[cfg(test)]
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
