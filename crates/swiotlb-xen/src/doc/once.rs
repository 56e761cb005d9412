use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, Ordering};

/// A value set once (at boot) and read from then on, on any CPU.
pub struct Once<T> {
    state: AtomicU8,
    value: UnsafeCell<MaybeUninit<T>>,
}

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

// SAFETY: the one caller that moves `state` from EMPTY to WRITING writes `value`, and
// readers see it only after READY is stored (Release) and loaded (Acquire); it never changes
// again, so sharing the cell shares `&T` (`T: Sync`) of a value made on another CPU
// (`T: Send`).
unsafe impl<T: Send + Sync> Sync for Once<T> {}

impl<T> Once<T> {
    /// An empty cell, for a `static`.
    pub const fn new() -> Self {
        Self {
            state: AtomicU8::new(EMPTY),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Sets the value, or gives it back if the cell was set already.
    pub fn set(&self, value: T) -> Result<(), T> {
        let claim =
            self.state
                .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed);
        if claim.is_err() {
            return Err(value);
        }
        // SAFETY: this call alone claimed the empty cell, and no reader looks before READY.
        unsafe { (*self.value.get()).write(value) };
        self.state.store(READY, Ordering::Release);
        Ok(())
    }

    /// The value, once set.
    pub fn get(&self) -> Option<&T> {
        // SAFETY: READY is stored after the value is written, and the value never changes.
        (self.state.load(Ordering::Acquire) == READY)
            .then(|| unsafe { (*self.value.get()).assume_init_ref() })
    }
}
