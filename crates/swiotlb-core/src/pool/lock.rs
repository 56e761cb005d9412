//! A minimal `no_std` spin lock for the per-area critical sections.
//!
//! The critical sections it protects are a few dozen instructions long (a bitmap search and
//! some metadata stores); copies never run under it on the map and unmap paths.

//!
//! # Loom
//!
//! Built with `RUSTFLAGS="--cfg loom"`, the pool's lock, cell and atomics are loom's (see
//! [`atomic`]), so the loom models in `tests/loom.rs` explore every interleaving of the
//! pool's critical sections and lock-free accesses. Normal builds use `core`'s types.

use self::atomic::{AtomicBool, Ordering};
use core::ops::{Deref, DerefMut};

#[cfg(not(loom))]
use core::cell::UnsafeCell;
#[cfg(loom)]
use loom::cell::UnsafeCell;

/// The atomic types the pool uses: `core`'s, or loom's under `--cfg loom`.
pub(crate) mod atomic {
    pub(crate) use core::sync::atomic::Ordering;
    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
    };
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
    };
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
pub(crate) fn spin_wait() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

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
    const_fn_unless_loom! {
        /// Creates an unlocked lock owning `value`.
        pub fn new(value: T) -> Self {
            Self {
                locked: AtomicBool::new(false),
                value: UnsafeCell::new(value),
            }
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
                return SpinLockGuard::new(self);
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_wait();
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
            .map(|_| SpinLockGuard::new(self))
    }
}

/// Exclusive access to the value of a [`SpinLock`]; releases the lock when dropped.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
    /// Under `--cfg loom`, the access loom tracks for as long as the guard lives.
    #[cfg(loom)]
    access: core::mem::ManuallyDrop<loom::cell::MutPtr<T>>,
}

impl<'a, T> SpinLockGuard<'a, T> {
    /// The guard of `lock`, which the caller has just taken.
    #[inline]
    fn new(lock: &'a SpinLock<T>) -> Self {
        Self {
            lock,
            #[cfg(loom)]
            access: core::mem::ManuallyDrop::new(lock.value.get_mut()),
        }
    }

    /// A pointer to the value.
    #[inline]
    fn ptr(&self) -> *mut T {
        #[cfg(not(loom))]
        let ptr = self.lock.value.get();
        #[cfg(loom)]
        let ptr = self.access.with(|p| p);
        ptr
    }
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: a guard exists only while its lock is held by it (type invariant), so no
        // other reference to the value exists.
        unsafe { &*self.ptr() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes this the only access through the guard.
        unsafe { &mut *self.ptr() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `access` is dropped here once and not used again: the access ends before
        // the lock is released.
        #[cfg(loom)]
        unsafe {
            core::mem::ManuallyDrop::drop(&mut self.access);
        }
        self.lock.locked.store(false, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
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
