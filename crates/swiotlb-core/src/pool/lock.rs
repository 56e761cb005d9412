//! A minimal `no_std` spin lock for the per-area critical sections.
//!
//! The critical sections it protects are a few dozen instructions long (a bitmap search and
//! some metadata stores); copies never run under it on the map and unmap paths.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

/// A test-and-test-and-set spin lock owning a `T`.
///
/// # Invariants
///
/// `value` is only accessed through a [`SpinLockGuard`], and at most one guard exists at a
/// time: a guard exists exactly while `locked` is `true` and was set by that guard's
/// [`SpinLock::lock`] call.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time (see the invariant),
// so sharing the lock between threads only ever moves `T` between them, which `T: Send`
// permits.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// Creates an unlocked lock owning `value`.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Spins until the lock is free, takes it and returns a guard that releases it on drop.
    #[inline]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // INVARIANT: this call set `locked`, so it creates the only guard.
                return SpinLockGuard { lock: self };
            }
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    /// Takes the lock if it is free, without spinning.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            // INVARIANT: this call set `locked`, so it creates the only guard.
            .map(|_| SpinLockGuard { lock: self })
    }
}

/// Exclusive access to the value of a [`SpinLock`]; releases the lock when dropped.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: a guard exists only while its lock is held by it (type invariant), so no
        // other reference to the value exists.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn lock_excludes_and_try_lock_fails_while_held() {
        let lock = SpinLock::new(5u32);
        {
            let mut g = lock.lock();
            *g += 1;
            assert!(lock.try_lock().is_none());
        }
        assert_eq!(*lock.try_lock().expect("lock is free"), 6);
    }

    #[test]
    fn lock_counts_from_many_threads() {
        let threads = if cfg!(miri) { 3 } else { 4 };
        let iters = if cfg!(miri) { 50 } else { 10_000 };
        let lock = Arc::new(SpinLock::new(0u64));
        let handles: std::vec::Vec<_> = (0..threads)
            .map(|_| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    for _ in 0..iters {
                        let mut g = lock.lock();
                        // A non-atomic read-modify-write: lost updates would show a race.
                        let v = *g;
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread panicked");
        }
        assert_eq!(*lock.lock(), threads * iters);
    }
}
