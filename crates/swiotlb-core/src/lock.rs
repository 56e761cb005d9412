//! The locks of the workspace: a spin lock ([`SpinLock`]), a writer-preferring reader-writer
//! spin lock ([`RwSpinLock`]), a sequence counter over a range of frames ([`SeqRange`]), the
//! interrupt hook every lock masks local interrupts through ([`IrqHook`]), and the shims that
//! turn all of them into loom's types under `--cfg loom`.
//!
//! The bounce pool's areas, the arm64 foreign table and the x86 PV platform all use these
//! locks, so one set of models (unit tests, Miri, loom) covers every critical section of the
//! workspace.
//!
//! # Interrupt context
//!
//! A spin lock taken in interrupt context deadlocks if the interrupt arrived on a CPU that
//! holds the same lock in process context: the handler spins for a holder that cannot run
//! until the handler returns. A writer-preferring reader-writer lock adds a subtler case: a
//! process-context reader holds the lock, a writer on another CPU waits (and so holds off new
//! readers), and an interrupt on the reader's CPU takes the lock shared: it waits for the
//! writer, which waits for the interrupted reader.
//!
//! A library cannot mask interrupts itself, so the kernel supplies an [`IrqHook`]: how to
//! mask local interrupts and return the previous state, and how to restore it. Every lock
//! here calls [`IrqHook::save`] before its first attempt to take the lock and
//! [`IrqHook::restore`] after releasing it (Linux's `spin_lock_irqsave`,
//! `read_lock_irqsave` and `write_lock_irqsave`). Interrupts stay masked while the lock
//! spins: a writer that has announced itself must not let an interrupt-time reader in behind
//! it on its own CPU. The default, [`IrqHook::NONE`], does nothing, which is right for
//! kernels that never call the crates from interrupt handlers.
//!
//! With a hook that masks, these entry points may be called from interrupt context:
//!
//! - the bounce pool (`BouncePool`): `map`, `unmap`, `sync_for_device`, `sync_for_cpu`,
//!   `alloc`, `free`, `free_count`, `stats`. Critical sections are a slot search and metadata
//!   updates; every copy (map's copy-in, unmap's copy-back, the syncs) runs outside the lock
//!   with interrupts as the caller had them. One condition: `unmap` waits for the syncs of
//!   the same mapping that are copying, so an interrupt handler must not unmap a mapping
//!   whose sync it may have interrupted on the same CPU. The DMA API forbids a sync that
//!   races the unmap of its mapping anyway.
//! - the arm64 foreign table (`ForeignTable`): `lookup`, `entry_containing`,
//!   `is_bus_contiguous`, `first_overlap`, `read`, `capacity` (readers) and `insert`,
//!   `remove`, `clear`, `record_grant_maps`, `clear_grant_unmaps` (writers); `len` and
//!   `is_empty` take no lock. A view from `read` must still not be held across other calls
//!   of the table on the same CPU (a nested reader waits for a waiting writer).
//! - the x86 PV platform's contiguous-region lock (`create_contiguous`,
//!   `destroy_contiguous`), which is held across hypercalls; its translations take no lock
//!   (a [`SeqRange`] read never waits for a transition to end).
//!
//! Without a masking hook (the default) none of the locking entry points may be called from
//! interrupt context.
//!
//! Guards are not [`Send`]: the state saved by an interrupt-masking hook belongs to the CPU
//! that saved it, so a guard must be dropped on the thread (CPU) that took it. A guard is
//! [`Sync`] only when `T` is, since it hands out `&T` to whoever shares it:
//!
//! ```compile_fail
//! use core::cell::Cell;
//! use swiotlb_core::lock::SpinLock;
//!
//! fn shared<T: Sync>(_: &T) {}
//! let lock = SpinLock::new(Cell::new(0u32));
//! let guard = lock.lock();
//! shared(&guard); // A guard over a `Cell` must not be shared between threads.
//! ```
//!
//! ```compile_fail
//! use swiotlb_core::lock::SpinLock;
//!
//! fn sent<T: Send>(_: T) {}
//! let lock = SpinLock::new(0u32);
//! sent(lock.lock()); // A guard must be released where it was taken.
//! ```
//!
//! ```compile_fail
//! use swiotlb_core::lock::RwSpinLock;
//!
//! fn sent<T: Send>(_: T) {}
//! let lock = RwSpinLock::new(0u32);
//! sent(lock.read()); // Nor may a reader's guard move to another thread.
//! ```
//!
//! ```compile_fail
//! use swiotlb_core::lock::RwSpinLock;
//!
//! fn sent<T: Send>(_: T) {}
//! let lock = RwSpinLock::new(0u32);
//! sent(lock.write()); // Nor a writer's.
//! ```
//!
//! With a `Sync` value the guards are shared as usual:
//!
//! ```
//! use swiotlb_core::lock::{RwSpinLock, SpinLock};
//!
//! fn shared<T: Sync>(_: &T) {}
//! let lock = SpinLock::new(0u32);
//! shared(&lock.lock());
//! let rw = RwSpinLock::new(0u32);
//! shared(&rw.read());
//! shared(&rw.write());
//! ```
//!
//! # Loom
//!
//! Built with `RUSTFLAGS="--cfg loom"`, the locks' cells and atomics (and those of every user
//! that takes its atomics from [`atomic`]) are loom's, so the loom models explore every
//! interleaving of the critical sections and the lock-free accesses beside them. Normal
//! builds use `core`'s types.

use self::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use core::fmt;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

#[cfg(not(loom))]
use core::cell::UnsafeCell;
#[cfg(loom)]
use loom::cell::UnsafeCell;

/// The atomic types of the locks and their users: `core`'s, or loom's under `--cfg loom`.
pub mod atomic {
    pub use core::sync::atomic::Ordering;
    #[cfg(not(loom))]
    pub use core::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, fence,
    };
    #[cfg(loom)]
    pub use loom::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, fence,
    };
}

/// Declares a `const fn` in normal builds and a plain `fn` under `--cfg loom`, whose atomics
/// have no `const` constructors. The `cfg` is evaluated in the crate that uses the macro, so
/// it must be built with the same `--cfg loom` setting (one `RUSTFLAGS` for the workspace).
#[doc(hidden)]
#[macro_export]
macro_rules! const_fn_unless_loom {
    ($(#[$attr:meta])* $vis:vis fn $($rest:tt)*) => {
        #[cfg(not(loom))]
        $(#[$attr])* $vis const fn $($rest)*
        #[cfg(loom)]
        $(#[$attr])* $vis fn $($rest)*
    };
}
#[doc(inline)]
pub use crate::const_fn_unless_loom;

/// The body of a spin-wait loop: a CPU hint, or under `--cfg loom` a yield to the model's
/// scheduler (a loom model must not spin).
#[inline]
pub fn spin_wait() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// How the kernel masks local interrupts around a critical section: `save` masks them and
/// returns the previous state, `restore` puts that state back (Linux's `local_irq_save` and
/// `local_irq_restore`).
///
/// The locks call `save` on the CPU that takes the lock and `restore`, with the value `save`
/// returned, on the same CPU after releasing it; saves nest as a kernel's do. A hook that
/// does not really mask costs no memory safety, only the deadlocks described in the
/// [module documentation](self).
///
/// ```
/// use swiotlb_core::lock::{IrqHook, SpinLock};
///
/// // A kernel's hook; here a counter stands in for the interrupt flag.
/// static MASKED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);
/// fn save() -> usize {
///     MASKED.swap(1, core::sync::atomic::Ordering::Relaxed)
/// }
/// fn restore(prev: usize) {
///     MASKED.store(prev, core::sync::atomic::Ordering::Relaxed);
/// }
///
/// let lock = SpinLock::new(0u32).with_irq_hook(IrqHook::new(save, restore));
/// {
///     let _guard = lock.lock();
///     assert_eq!(MASKED.load(core::sync::atomic::Ordering::Relaxed), 1);
/// }
/// assert_eq!(MASKED.load(core::sync::atomic::Ordering::Relaxed), 0);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct IrqHook {
    /// The kernel's two functions, `None` for [`IrqHook::NONE`]: a lock with no hook then
    /// makes no indirect call at all (a predicted branch instead of two calls per
    /// critical section).
    fns: Option<IrqFns>,
}

/// An [`IrqHook`]'s save and restore functions.
type IrqFns = (fn() -> usize, fn(usize));

impl IrqHook {
    /// A hook that masks nothing, for kernels that never call the crates from interrupt
    /// context.
    pub const NONE: Self = Self { fns: None };

    /// A hook from the kernel's two functions.
    #[must_use]
    pub const fn new(save: fn() -> usize, restore: fn(usize)) -> Self {
        Self {
            fns: Some((save, restore)),
        }
    }

    /// Masks local interrupts and returns the previous state.
    #[inline]
    #[must_use]
    pub fn save(&self) -> usize {
        match self.fns {
            Some((save, _)) => save(),
            None => 0,
        }
    }

    /// Restores the state `save` returned.
    #[inline]
    pub fn restore(&self, state: usize) {
        if let Some((_, restore)) = self.fns {
            restore(state);
        }
    }
}

impl Default for IrqHook {
    fn default() -> Self {
        Self::NONE
    }
}

/// Makes a guard neither `Send` nor (without an explicit impl) `Sync`.
type NotSendSync = PhantomData<*mut ()>;

/// A test-and-test-and-set spin lock owning a `T`, masking interrupts through its
/// [`IrqHook`] while held.
///
/// # Invariants
///
/// `value` is only accessed through a [`SpinLockGuard`], and at most one guard exists at a
/// time: a guard exists exactly while `locked` is `true` and was set by that guard's
/// [`SpinLock::lock`] or [`SpinLock::try_lock`] call.
pub struct SpinLock<T> {
    locked: AtomicBool,
    irq: IrqHook,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time (see the invariant),
// so sharing the lock between threads only ever moves `T` between them, which `T: Send`
// permits.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    const_fn_unless_loom! {
        /// Creates an unlocked lock owning `value`, with [`IrqHook::NONE`].
        pub fn new(value: T) -> Self {
            Self {
                locked: AtomicBool::new(false),
                irq: IrqHook::NONE,
                value: UnsafeCell::new(value),
            }
        }
    }

    /// The lock with `hook` as its interrupt hook.
    #[must_use]
    pub const fn with_irq_hook(mut self, hook: IrqHook) -> Self {
        self.irq = hook;
        self
    }

    /// Sets the interrupt hook.
    pub const fn set_irq_hook(&mut self, hook: IrqHook) {
        self.irq = hook;
    }

    /// The interrupt hook.
    #[must_use]
    pub const fn irq_hook(&self) -> IrqHook {
        self.irq
    }

    /// Masks interrupts, spins until the lock is free, takes it and returns a guard that
    /// releases it and restores interrupts on drop.
    #[inline]
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let saved = self.irq.save();
        loop {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                // INVARIANT: this call set `locked`, so it creates the only guard.
                return SpinLockGuard::new(self, saved);
            }
            while self.locked.load(Ordering::Relaxed) {
                spin_wait();
            }
        }
    }

    /// Takes the lock if it is free, without spinning; interrupts are as before on `None`.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let saved = self.irq.save();
        if self
            .locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            // INVARIANT: this call set `locked`, so it creates the only guard.
            Some(SpinLockGuard::new(self, saved))
        } else {
            self.irq.restore(saved);
            None
        }
    }
}

impl<T> fmt::Debug for SpinLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpinLock")
            .field("locked", &self.locked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Exclusive access to the value of a [`SpinLock`]; releases the lock, then restores
/// interrupts, when dropped.
///
/// Not [`Send`] (interrupts are restored on the CPU that masked them); [`Sync`] only for
/// `T: Sync`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
    /// What the interrupt hook's `save` returned when the lock was taken.
    saved: usize,
    _not_send: NotSendSync,
    /// Under `--cfg loom`, the access loom tracks for as long as the guard lives.
    #[cfg(loom)]
    access: core::mem::ManuallyDrop<loom::cell::MutPtr<T>>,
}

// SAFETY: sharing a guard between threads shares only `&T` (through `Deref`), which
// `T: Sync` permits; the guard's own fields are read-only through `&self`.
unsafe impl<T: Sync> Sync for SpinLockGuard<'_, T> {}

impl<'a, T> SpinLockGuard<'a, T> {
    /// The guard of `lock`, which the caller has just taken after saving `saved`.
    #[inline]
    fn new(lock: &'a SpinLock<T>, saved: usize) -> Self {
        Self {
            lock,
            saved,
            _not_send: PhantomData,
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
        self.lock.irq.restore(self.saved);
    }
}

/// How many reader counts an [`RwSpinLock`] keeps, each on its own cache line: a reader
/// counts itself in the one of its CPU ([`RwSpinLock::with_cpu_hint`]), so readers on
/// different CPUs write different lines. Fewer under loom, whose atomics are much larger (the
/// models use two CPUs).
#[cfg(not(loom))]
pub const READER_SHARDS: usize = 8;
/// How many reader counts an [`RwSpinLock`] keeps (two under loom).
#[cfg(loom)]
pub const READER_SHARDS: usize = 2;

/// A value alone on a 128-byte line (two 64-byte lines: adjacent-line prefetchers pull pairs).
#[repr(align(128))]
struct Line<T>(T);

/// The CPU hint of a lock built without one: every reader counts in the first shard.
const fn cpu_zero() -> usize {
    0
}

/// Set in a reader count while a writer holds the lock or waits for its readers to leave.
const WRITER: usize = 1 << (usize::BITS - 1);
/// The bits of a reader count that count readers.
const READERS: usize = !WRITER;

/// A writer-preferring reader-writer spin lock protecting a `T`, masking interrupts through
/// its [`IrqHook`] while held or awaited, whose readers write only their own CPU's line.
///
/// Readers do not block each other and a writer does not starve. The state is split so that
/// the read path writes no line another CPU's reader writes (the per-CPU reader counts of
/// Linux's `percpu_rw_semaphore` and of the old `brlock`): [`READER_SHARDS`] words, each on
/// its own 128-byte line, each counting the readers of its CPUs (shard
/// `cpu_hint() % READER_SHARDS`, see [`with_cpu_hint`](Self::with_cpu_hint)) in its low bits,
/// with a `WRITER` bit on top.
///
/// - A reader adds one to its shard; if the word it replaced had `WRITER` set, it takes the
///   one back and waits (writer preference). So taking a read lock is one atomic add on the
///   reader's own line and releasing it one atomic subtract; the default hint (0) puts every
///   reader on one line, as a single counter would.
/// - A writer sets `WRITER` in the first shard (an atomic or: whoever finds it clear is the
///   one writer), then in every other shard, then waits until every shard counts no reader.
///   Every step is a read-modify-write of the shard itself, so reader and writer are ordered
///   by the shard's modification order: either the writer's `fetch_or` saw the reader's
///   add (and the writer waits for its subtract) or the reader's add saw `WRITER` (and the
///   reader backs off).
/// - Releasing the write lock clears `WRITER` in every shard but the first, then in the
///   first (which lets the next writer in).
///
/// # Invariants
///
/// The low bits of each shard count its live [`ReadGuard`]s plus the readers between their
/// add and their back-off. `WRITER` is set in the first shard exactly while a writer holds
/// the lock or is taking or releasing it, and a [`WriteGuard`] is live only after every shard
/// had `WRITER` set and was seen with no reader, so then no [`ReadGuard`] is live. `value` is
/// accessed shared only through read guards and exclusively only through the write guard.
pub struct RwSpinLock<T> {
    readers: [Line<AtomicUsize>; READER_SHARDS],
    cpu: fn() -> usize,
    irq: IrqHook,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to several threads at once (needs `T: Sync`) and `&mut T` to
// one thread at a time, possibly another than the one that created it (needs `T: Send`).
unsafe impl<T: Send + Sync> Sync for RwSpinLock<T> {}
// SAFETY: moving the lock moves the `T` it owns.
unsafe impl<T: Send> Send for RwSpinLock<T> {}

/// The reader counts of a new lock, all zero.
#[cfg(not(loom))]
const fn no_readers() -> [Line<AtomicUsize>; READER_SHARDS] {
    [const { Line(AtomicUsize::new(0)) }; READER_SHARDS]
}

/// The reader counts of a new lock, all zero (loom's atomics have no `const` constructor).
#[cfg(loom)]
fn no_readers() -> [Line<AtomicUsize>; READER_SHARDS] {
    core::array::from_fn(|_| Line(AtomicUsize::new(0)))
}

impl<T> RwSpinLock<T> {
    const_fn_unless_loom! {
        /// Creates an unlocked lock around `value`, with [`IrqHook::NONE`] and every reader
        /// counting in the first shard.
        #[must_use]
        pub fn new(value: T) -> Self {
            Self {
                readers: no_readers(),
                cpu: cpu_zero,
                irq: IrqHook::NONE,
                value: UnsafeCell::new(value),
            }
        }
    }

    /// The lock with `hook` as its interrupt hook.
    #[must_use]
    pub const fn with_irq_hook(mut self, hook: IrqHook) -> Self {
        self.irq = hook;
        self
    }

    /// Sets the interrupt hook.
    pub const fn set_irq_hook(&mut self, hook: IrqHook) {
        self.irq = hook;
    }

    /// The interrupt hook.
    #[must_use]
    pub const fn irq_hook(&self) -> IrqHook {
        self.irq
    }

    /// The lock with `cpu` as its CPU hint: a reader counts itself in shard
    /// `cpu() % READER_SHARDS`, called after interrupts are masked. The hint only spreads
    /// the readers' writes over lines (any value is correct; two CPUs with the same shard
    /// share a line, as all do with the default). A kernel passes its current-CPU number
    /// (Linux's `raw_smp_processor_id()`), as for the engine's `with_cpu_hint`.
    #[must_use]
    pub const fn with_cpu_hint(mut self, cpu: fn() -> usize) -> Self {
        self.cpu = cpu;
        self
    }

    /// Sets the CPU hint (see [`with_cpu_hint`](Self::with_cpu_hint)).
    pub const fn set_cpu_hint(&mut self, cpu: fn() -> usize) {
        self.cpu = cpu;
    }

    /// Masks interrupts and takes the lock shared, spinning while a writer holds it or waits
    /// for it.
    pub fn read(&self) -> ReadGuard<'_, T> {
        let saved = self.irq.save();
        let shard = (self.cpu)() % READER_SHARDS;
        while !self.try_read_raw(shard) {
            spin_wait();
        }
        // INVARIANT: the shard now counts this guard.
        ReadGuard::new(self, saved, shard)
    }

    /// Takes the lock shared if no writer holds it or waits for it; interrupts are as
    /// before on `None`.
    pub fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        let saved = self.irq.save();
        let shard = (self.cpu)() % READER_SHARDS;
        if self.try_read_raw(shard) {
            // INVARIANT: the shard now counts this guard.
            Some(ReadGuard::new(self, saved, shard))
        } else {
            self.irq.restore(saved);
            None
        }
    }

    /// One attempt to join the readers of `shard`; true if the shard now counts the caller,
    /// false (and the count as before) if a writer holds the lock or waits for it.
    fn try_read_raw(&self, shard: usize) -> bool {
        let count = &self.readers[shard].0;
        // Acquire: pairs with the release of the last writer's clearing of `WRITER` here.
        // The count cannot reach `WRITER`: that would take 2^63 live guards.
        if count.fetch_add(1, Ordering::Acquire) & WRITER == 0 {
            return true;
        }
        count.fetch_sub(1, Ordering::Relaxed);
        false
    }

    /// Masks interrupts and takes the lock exclusively, spinning until the readers and any
    /// other writer leave. While it waits, new readers are held off.
    pub fn write(&self) -> WriteGuard<'_, T> {
        let saved = self.irq.save();
        let (first, rest) = self.readers.split_first().expect("at least one shard");
        // Acquire: pairs with the previous writer's release of the first shard.
        while first.0.fetch_or(WRITER, Ordering::Acquire) & WRITER != 0 {
            spin_wait();
        }
        for shard in rest {
            shard.0.fetch_or(WRITER, Ordering::Relaxed);
        }
        for shard in &self.readers {
            // Acquire: pairs with each leaving reader's release, so its reads happen before
            // this writer's writes. A read-modify-write always reads the latest count.
            while shard.0.fetch_add(0, Ordering::Acquire) & READERS != 0 {
                spin_wait();
            }
        }
        // INVARIANT: every shard has `WRITER` set and was seen with no reader after it was
        // set: no reader holds the lock and none can enter until the guard drops.
        WriteGuard::new(self, saved)
    }

    /// Whether a writer holds the lock or waits for it (a snapshot, for tests and models).
    #[must_use]
    pub fn writer_pending(&self) -> bool {
        self.readers[0].0.load(Ordering::Relaxed) & WRITER != 0
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

/// Shared access to the value of an [`RwSpinLock`]; releases the lock, then restores
/// interrupts, when dropped.
///
/// Not [`Send`] (interrupts are restored on the CPU that masked them); [`Sync`] only for
/// `T: Sync`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ReadGuard<'a, T> {
    lock: &'a RwSpinLock<T>,
    /// What the interrupt hook's `save` returned when the lock was taken.
    saved: usize,
    /// The reader count this guard is in.
    shard: usize,
    _not_send: NotSendSync,
    /// Under `--cfg loom`, the shared access loom tracks for as long as the guard lives.
    #[cfg(loom)]
    access: core::mem::ManuallyDrop<loom::cell::ConstPtr<T>>,
}

// SAFETY: sharing a read guard shares only `&T`, which `T: Sync` permits.
unsafe impl<T: Sync> Sync for ReadGuard<'_, T> {}

impl<'a, T> ReadGuard<'a, T> {
    /// The guard of a shared lock the caller has just taken in `shard` after saving `saved`.
    fn new(lock: &'a RwSpinLock<T>, saved: usize, shard: usize) -> Self {
        Self {
            lock,
            saved,
            shard,
            _not_send: PhantomData,
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
        // INVARIANT: this guard leaves its reader count.
        self.lock.readers[self.shard]
            .0
            .fetch_sub(1, Ordering::Release);
        self.lock.irq.restore(self.saved);
    }
}

/// Exclusive access to the value of an [`RwSpinLock`]; releases the lock, then restores
/// interrupts, when dropped.
///
/// Not [`Send`] (interrupts are restored on the CPU that masked them); [`Sync`] only for
/// `T: Sync`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct WriteGuard<'a, T> {
    lock: &'a RwSpinLock<T>,
    /// What the interrupt hook's `save` returned when the lock was taken.
    saved: usize,
    _not_send: NotSendSync,
    /// Under `--cfg loom`, the exclusive access loom tracks for as long as the guard lives.
    #[cfg(loom)]
    access: core::mem::ManuallyDrop<loom::cell::MutPtr<T>>,
}

// SAFETY: sharing a write guard shares only `&T` (through `Deref`), which `T: Sync` permits.
unsafe impl<T: Sync> Sync for WriteGuard<'_, T> {}

impl<'a, T> WriteGuard<'a, T> {
    /// The guard of an exclusive lock the caller has just taken after saving `saved`.
    fn new(lock: &'a RwSpinLock<T>, saved: usize) -> Self {
        Self {
            lock,
            saved,
            _not_send: PhantomData,
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
        // INVARIANT: `WRITER` is cleared in every shard, the first last (the next writer
        // starts there, so it finds the others clear); readers and that writer may enter.
        // Release: the readers and the next writer acquire this writer's changes.
        let (first, rest) = self.lock.readers.split_first().expect("at least one shard");
        for shard in rest {
            shard.0.fetch_and(!WRITER, Ordering::Release);
        }
        first.0.fetch_and(!WRITER, Ordering::Release);
        self.lock.irq.restore(self.saved);
    }
}

/// A sequence counter marking the range of frames whose translation is being changed (the
/// x86 PV platform's contiguous regions; Linux's `p2m_generation` plays the same role for
/// its P2M updates).
///
/// One writer at a time (the caller serialises writers, e.g. with a [`SpinLock`]) opens a
/// transition, changes the entries of its range and closes it. Readers take no lock and
/// never wait for a transition to end: [`read`](Self::read) retries a lookup that a
/// transition opened or closed under, and reports a frame inside an open transition as
/// unknown. So reads are safe in interrupt context, even on the CPU of the writer.
///
/// # Invariants
///
/// `seq` is odd exactly while a transition is open; `first` and `count` describe that
/// transition's range while `seq` is odd.
#[derive(Debug, Default)]
pub struct SeqRange {
    seq: AtomicU64,
    first: AtomicU64,
    count: AtomicU64,
}

impl SeqRange {
    const_fn_unless_loom! {
        /// No transition open.
        #[must_use]
        pub fn new() -> Self {
            Self {
                seq: AtomicU64::new(0),
                first: AtomicU64::new(0),
                count: AtomicU64::new(0),
            }
        }
    }

    /// Opens a transition of `count` frames from `first`. The caller is the only writer and
    /// has no transition open.
    pub fn open(&self, first: u64, count: u64) {
        self.first.store(first, Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
        // INVARIANT: the range is published before `seq` turns odd (release), and the fence
        // orders every later entry write after the odd value.
        self.seq.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
    }

    /// Closes the open transition. The caller is the writer that opened it.
    pub fn close(&self) {
        fence(Ordering::SeqCst);
        // INVARIANT: every entry write of the transition is ordered before the even value.
        self.seq.fetch_add(1, Ordering::Release);
    }

    /// Runs `lookup` (reads of the entries) and returns its result, or `None` if the frame it
    /// returns (the first element) lies in a transition that was open while it ran. Retries
    /// when a transition opened or closed during the lookup; it never waits for a transition
    /// to end.
    pub fn read<F>(&self, mut lookup: F) -> Option<(u64, u64)>
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
                spin_wait();
                continue;
            }
            return match res {
                Some((pfn, _)) if pfn >= first && pfn - first < count => None,
                other => other,
            };
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::cell::Cell;
    use std::sync::Arc;
    use std::thread;
    use std::vec;
    use std::vec::Vec;

    std::thread_local! {
        /// This thread's stand-in for the CPU's interrupt flag: true while masked.
        static MASKED: Cell<bool> = const { Cell::new(false) };
        /// How often this thread's hook saved.
        static SAVES: Cell<usize> = const { Cell::new(0) };
    }

    fn save() -> usize {
        SAVES.with(|s| s.set(s.get() + 1));
        usize::from(MASKED.with(|m| m.replace(true)))
    }

    fn restore(prev: usize) {
        MASKED.with(|m| m.set(prev != 0));
    }

    const HOOK: IrqHook = IrqHook::new(save, restore);

    fn masked() -> bool {
        MASKED.with(Cell::get)
    }

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
        let lock = Arc::new(SpinLock::new(0u64).with_irq_hook(HOOK));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    for _ in 0..iters {
                        let mut g = lock.lock();
                        assert!(masked(), "the lock is held with interrupts enabled");
                        // A non-atomic read-modify-write: lost updates would show a race.
                        let v = *g;
                        *g = v + 1;
                    }
                    assert!(!masked(), "interrupts stayed masked after the unlock");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread panicked");
        }
        assert_eq!(*lock.lock(), threads * iters);
    }

    #[test]
    fn spin_lock_masks_while_held_and_restores_nested_state() {
        let a = SpinLock::new(()).with_irq_hook(HOOK);
        let mut b = SpinLock::new(());
        b.set_irq_hook(HOOK);
        assert!(!masked());
        let ga = a.lock();
        assert!(masked());
        {
            let _gb = b.lock();
            assert!(masked());
        }
        assert!(masked(), "the inner unlock unmasked under the outer lock");
        assert!(a.try_lock().is_none());
        assert!(masked(), "a failed try_lock changed the state");
        drop(ga);
        assert!(!masked());
        // The default hook does nothing.
        let saves = SAVES.with(Cell::get);
        drop(SpinLock::new(()).lock());
        assert_eq!(SAVES.with(Cell::get), saves);
    }

    #[test]
    fn rw_lock_masks_readers_and_writers() {
        let lock = RwSpinLock::new(1u32).with_irq_hook(HOOK);
        {
            let r = lock.read();
            assert!(masked());
            assert_eq!(*r, 1);
            let r2 = lock.try_read().expect("readers share");
            drop(r2);
            assert!(masked(), "the inner reader unmasked under the outer one");
        }
        assert!(!masked());
        {
            let mut w = lock.write();
            assert!(masked());
            *w = 2;
            assert!(lock.try_read().is_none());
            assert!(masked());
        }
        assert!(!masked());
        assert_eq!(*lock.read(), 2);
        assert!(!masked());
    }

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
            assert!(lock.writer_pending());
        }
        assert!(!lock.writer_pending());
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
        while !lock.writer_pending() {
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
        let lock = Arc::new(RwSpinLock::new((0u64, 0u64)).with_irq_hook(HOOK));
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
                    assert!(!masked());
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let writers = (threads as u64).div_ceil(2);
        assert_eq!(lock.read().0, writers * iters);
    }

    std::thread_local! {
        static CPU: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    }

    fn this_cpu() -> usize {
        CPU.with(core::cell::Cell::get)
    }

    #[test]
    fn readers_of_different_cpus_count_on_different_lines() {
        let lock = RwSpinLock::new(0u32).with_cpu_hint(this_cpu);
        let lines: Vec<usize> = lock
            .readers
            .iter()
            .map(|l| (&raw const l.0).addr())
            .collect();
        for pair in lines.windows(2) {
            assert!(pair[1] - pair[0] >= 128, "two reader counts share a line");
        }
        let counts = |lock: &RwSpinLock<u32>| -> Vec<usize> {
            lock.readers
                .iter()
                .map(|l| l.0.load(Ordering::Relaxed) & READERS)
                .collect()
        };
        CPU.with(|c| c.set(3));
        let a = lock.read();
        CPU.with(|c| c.set(3 + READER_SHARDS));
        let b = lock.read();
        CPU.with(|c| c.set(5));
        let c = lock.try_read().unwrap();
        let mut want = vec![0; READER_SHARDS];
        want[3] = 2;
        want[5] = 1;
        assert_eq!(counts(&lock), want, "each reader in its CPU's shard");
        drop((a, b, c));
        assert_eq!(counts(&lock), vec![0; READER_SHARDS]);
        // Without a hint every reader counts in the first shard, as one counter would.
        let plain = RwSpinLock::new(0u32);
        let _r = plain.read();
        assert_eq!(plain.readers[0].0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_writer_waits_for_readers_of_every_shard() {
        let lock = Arc::new(RwSpinLock::new(0u32).with_cpu_hint(this_cpu));
        CPU.with(|c| c.set(READER_SHARDS - 1));
        let reader = lock.read();
        let l2 = Arc::clone(&lock);
        let writer = thread::spawn(move || {
            CPU.with(|c| c.set(0));
            *l2.write() += 1;
        });
        while !lock.writer_pending() && !writer.is_finished() {
            thread::yield_now();
        }
        // The writer has announced itself and must still be waiting for the last shard.
        for _ in 0..100 {
            thread::yield_now();
        }
        assert_eq!(
            *reader, 0,
            "the writer entered while a reader held the lock"
        );
        assert!(
            !writer.is_finished(),
            "the writer did not wait for the last shard"
        );
        drop(reader);
        writer.join().unwrap();
        assert_eq!(*lock.read(), 1);
    }

    #[test]
    fn concurrent_counter_on_many_shards() {
        let (threads, iters) = if cfg!(miri) { (3, 20) } else { (4, 2000) };
        let lock = Arc::new(
            RwSpinLock::new((0u64, 0u64))
                .with_irq_hook(HOOK)
                .with_cpu_hint(this_cpu),
        );
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let lock = Arc::clone(&lock);
                thread::spawn(move || {
                    CPU.with(|c| c.set(i));
                    for _ in 0..iters {
                        if i == 0 {
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
        assert_eq!(lock.read().0, iters);
    }

    #[test]
    fn transition_hides_only_its_range() {
        let t = SeqRange::new();
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
        let t = SeqRange::new();
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
}
