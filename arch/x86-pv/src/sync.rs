//! The two synchronisation pieces of the platform: a spin lock that serialises
//! `create`/`destroy` (Linux's `xen_reservation_lock`), and a sequence counter that lets the
//! lock-free translations recognise the frames of a region in transition (Linux's
//! `p2m_generation` plays the same role for its P2M updates).

use core::hint::spin_loop;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

/// A test-and-test-and-set spin lock without data.
///
/// It does not disable interrupts: a kernel that calls `create`/`destroy` from interrupt
/// context must mask interrupts around the call, as Linux's `spin_lock_irqsave` would.
#[derive(Debug, Default)]
pub(crate) struct SpinLock {
    locked: AtomicBool,
}

/// Holds a [`SpinLock`]; releases it on drop.
#[derive(Debug)]
pub(crate) struct SpinGuard<'a> {
    lock: &'a SpinLock,
}

impl SpinLock {
    /// An unlocked lock.
    pub(crate) const fn new() -> Self {
        Self {
            locked: AtomicBool::new(false),
        }
    }

    /// Spins until the lock is taken.
    pub(crate) fn lock(&self) -> SpinGuard<'_> {
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return SpinGuard { lock: self };
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_loop();
            }
        }
    }
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// Marks the pfn range whose P2M entries and mappings are being changed.
///
/// # Invariants
///
/// `seq` is odd exactly while a transition is open; `first` and `count` describe that
/// transition's range while `seq` is odd. Only the holder of the platform's [`SpinLock`]
/// opens and closes transitions.
#[derive(Debug, Default)]
pub(crate) struct Transition {
    seq: AtomicU64,
    first: AtomicU64,
    count: AtomicU64,
}

impl Transition {
    /// No transition open.
    pub(crate) const fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            first: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Opens a transition of `count` frames from `first`. The caller holds the lock.
    pub(crate) fn open(&self, first: u64, count: u64) {
        self.first.store(first, Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
        // INVARIANT: the range is published before `seq` turns odd (release), and the fence
        // orders every later P2M write after the odd value.
        self.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
    }

    /// Closes the open transition. The caller holds the lock.
    pub(crate) fn close(&self) {
        fence(Ordering::SeqCst);
        // INVARIANT: every P2M write of the transition is ordered before the even value.
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// Runs `lookup` (reads of the P2M/M2P) and returns its result, or `None` if the pfn it
    /// returns lies in a transition that was open while it ran. Retries when a transition
    /// opened or closed during the lookup; it never waits for a transition to end.
    pub(crate) fn read<F>(&self, mut lookup: F) -> Option<(u64, u64)>
    where
        F: FnMut() -> Option<(u64, u64)>,
    {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            let (first, count) = if s1 % 2 == 1 {
                (
                    self.first.load(Ordering::Relaxed),
                    self.count.load(Ordering::Relaxed),
                )
            } else {
                (0, 0)
            };
            let res = lookup();
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) != s1 {
                spin_loop();
                continue;
            }
            return match res {
                Some((pfn, _)) if pfn >= first && pfn - first < count => None,
                other => other,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_hides_only_its_range() {
        let t = Transition::new();
        assert_eq!(t.read(|| Some((5, 50))), Some((5, 50)));
        t.open(4, 2);
        assert_eq!(t.read(|| Some((5, 50))), None);
        assert_eq!(t.read(|| Some((4, 40))), None);
        assert_eq!(t.read(|| Some((6, 60))), Some((6, 60)));
        assert_eq!(t.read(|| Some((3, 30))), Some((3, 30)));
        t.close();
        assert_eq!(t.read(|| Some((5, 50))), Some((5, 50)));
    }

    #[test]
    fn read_retries_when_a_transition_opens_during_the_lookup() {
        let t = Transition::new();
        let mut calls = 0;
        let r = t.read(|| {
            calls += 1;
            if calls == 1 {
                t.open(0, 10);
            }
            Some((3, 33))
        });
        assert_eq!(calls, 2);
        assert_eq!(r, None);
    }

    #[test]
    fn lock_excludes() {
        let l = SpinLock::new();
        let g = l.lock();
        assert!(l.locked.load(Ordering::Relaxed));
        drop(g);
        assert!(!l.locked.load(Ordering::Relaxed));
        let _g = l.lock();
    }
}
