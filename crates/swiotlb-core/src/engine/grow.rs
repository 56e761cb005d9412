//! Pools that grow and shrink at run time: when a bounce finds the pool full, the engine
//! adds a pool of the kernel's pages made bus-contiguous below the device's mask, and gives
//! idle ones back after a quiet period ([`DmaEngine::reclaim`]).
//!
//! The kernel decides whether and how far the engine grows: a [`GrowthHook`] gives pages
//! (only from a reserve set aside beforehand in atomic context) and slot metadata, and
//! [`GrowthLimits`] bound the total, the chunk size and the number of pools. The state lives
//! in a [`Growth`] the engine owns or borrows ([`DmaEngine::with_growth`]); without one
//! ([`NoGrowth`], the default) the engine never grows and nothing here runs.
//!
//! # Finding a grown pool
//!
//! Unmap and sync know only the bus address. The first pool is checked first, as before
//! (nothing here is on its path). Any other own address is looked up in a table of the
//! grown pools sorted by address, read under a sequence counter (no write by a reader) and
//! searched by bisection: the cost is `log2` of the number of pools (at most
//! [`MAX_GROWN_POOLS`], so at most 5 steps), not one step per pool.
//!
//! # Memory safety of a lookup racing a shrink
//!
//! A grown pool lives in one of [`MAX_GROWN_POOLS`] fixed entries of the [`Growth`], which
//! are never freed while the engine lives: a shrink only *retires* an entry (its pages go
//! back, its pool value and its slot metadata stay) and a later growth reuses it. Every use
//! of an entry's pool (map, unmap, sync) first raises the entry's `users` count and then
//! reads its state, both sequentially consistent; only a state of `LIVE` lets it touch the
//! pool. A shrink (or a growth reusing the entry) first moves the state away from `LIVE` and
//! then reads `users`: in the single total order of those four operations either the user
//! saw the new state and stays away, or the shrink saw the user and backs off. So the pool
//! value is only replaced, and its pages only given back, when no user is inside it and none
//! can enter, and a user that found the entry through a stale table checks that the pool
//! still contains its address (it retries the lookup otherwise). Only one CPU grows or
//! shrinks at a time (the `busy` flag), so entries are never written concurrently.
//!
//! The `users` counts are written on every map, unmap and sync of a grown pool, each in its
//! own 128-byte line; the first pool's path writes none of them.

use super::error::{BounceReason, DmaError};
use super::{DmaEngine, PageAllocator};
use crate::addr::{BusAddr, PhysAddr, XEN_PAGE_SHIFT, XEN_PAGE_SIZE};
use crate::dma::{Device, DmaAttrs, DmaDirection};
use crate::error::Error as PoolError;
use crate::hooks::{PhysMemory, Platform, PlatformError};
use crate::lock::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use crate::lock::{IrqHook, spin_wait};
use crate::pool::{
    BouncePool, IO_TLB_SEGMENT_BYTES, IO_TLB_SIZE, LiveReport, PoolReport, Slot, limit_nareas,
    slots_with_ages,
};
use core::cell::UnsafeCell;
use core::ptr::NonNull;

/// The most pools a [`Growth`] adds (besides the first pool).
pub const MAX_GROWN_POOLS: usize = 16;

/// The kernel's side of growth: pages for new pools and metadata for their slots.
///
/// # Implementation safety
///
/// - [`alloc_pages`](Self::alloc_pages) returns the first byte of `2^order` physically
///   contiguous 4 KiB pages of the kernel's RAM, aligned to `4 KiB << order`, owned by the
///   engine until given back with [`free_pages`](Self::free_pages) or
///   [`quarantine`](Self::quarantine), that the first pool's [`PhysMemory`] reaches and the
///   platform's `create_contiguous_region` may exchange. With `atomic` it must not sleep and
///   may only hand out pages of a reserve set aside beforehand.
/// - [`alloc_slots`](Self::alloc_slots) returns storage used by nothing else, for ever.
/// - All may be called from several CPUs at once.
pub unsafe trait GrowthHook: Sync {
    /// Whether the caller runs in atomic context (Linux's `!preemptible()`): interrupts,
    /// spin locks held. The engine then asks [`alloc_pages`](Self::alloc_pages) and
    /// [`alloc_slots`](Self::alloc_slots) with `atomic` and does not fall back to the heap.
    fn in_atomic(&self) -> bool;

    /// Allocates `2^order` contiguous, naturally aligned pages; with `atomic`, only from the
    /// reserve. `None` when there are none.
    fn alloc_pages(&self, order: u32, atomic: bool) -> Option<PhysAddr>;

    /// Gives back pages from [`alloc_pages`](Self::alloc_pages) (their contents and their
    /// bus frames are as the platform's `destroy_contiguous_region` left them).
    ///
    /// # Safety
    ///
    /// `phys` and `order` are those of one live allocation of this hook, used by nothing.
    unsafe fn free_pages(&self, phys: PhysAddr, order: u32);

    /// Takes a block the platform left damaged out of use for good
    /// ([`PlatformError::RegionDamaged`]); the engine never touches it again. The default
    /// keeps nothing (the block leaks: the safe choice).
    fn quarantine(&self, phys: PhysAddr, order: u32) {
        let _ = (phys, order);
    }

    /// Metadata for `nslabs` slots of a new pool, kept by the engine for its lifetime and
    /// reused by later pools. `None` (the default) lets the engine allocate it on the heap
    /// with feature `alloc` outside atomic context. When the first pool records mapping ages
    /// ([`DmaEngine::set_mapping_clock`]), `nslabs` is
    /// [`slots_with_ages`](crate::slots_with_ages) of the pool's slot count: the records
    /// come after the slots.
    fn alloc_slots(&self, nslabs: usize, atomic: bool) -> Option<&'static [Slot]> {
        let _ = (nslabs, atomic);
        None
    }
}

// SAFETY: forwards to `H`.
unsafe impl<H: GrowthHook + ?Sized> GrowthHook for &H {
    fn in_atomic(&self) -> bool {
        (**self).in_atomic()
    }
    fn alloc_pages(&self, order: u32, atomic: bool) -> Option<PhysAddr> {
        (**self).alloc_pages(order, atomic)
    }
    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).free_pages(phys, order) }
    }
    fn quarantine(&self, phys: PhysAddr, order: u32) {
        (**self).quarantine(phys, order);
    }
    fn alloc_slots(&self, nslabs: usize, atomic: bool) -> Option<&'static [Slot]> {
        (**self).alloc_slots(nslabs, atomic)
    }
}

/// No growth: the engine's default. As a hook it hands out nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoGrowth;

// SAFETY: hands out nothing.
unsafe impl GrowthHook for NoGrowth {
    fn in_atomic(&self) -> bool {
        true
    }
    fn alloc_pages(&self, _order: u32, _atomic: bool) -> Option<PhysAddr> {
        None
    }
    unsafe fn free_pages(&self, _phys: PhysAddr, _order: u32) {}
}

/// Where an engine's growth state is: [`NoGrowth`], a [`Growth`] by value, borrowed, or
/// (feature `alloc`) boxed.
pub trait PoolGrowth<M: PhysMemory> {
    /// The kernel's hook.
    type Hook: GrowthHook;
    /// The growth state, if the engine may grow.
    fn growth(&self) -> Option<&Growth<Self::Hook, M>>;
    /// The memory hook of a grown pool: a copy of the first pool's (`None` for
    /// [`NoGrowth`], which never grows).
    fn pool_memory(&self, first: &M) -> Option<M>;
}

impl<M: PhysMemory> PoolGrowth<M> for NoGrowth {
    type Hook = NoGrowth;
    #[inline(always)]
    fn growth(&self) -> Option<&Growth<NoGrowth, M>> {
        None
    }
    fn pool_memory(&self, _first: &M) -> Option<M> {
        None
    }
}

impl<H: GrowthHook, M: PhysMemory + Clone> PoolGrowth<M> for Growth<H, M> {
    type Hook = H;
    #[inline]
    fn growth(&self) -> Option<&Growth<H, M>> {
        Some(self)
    }
    fn pool_memory(&self, first: &M) -> Option<M> {
        Some(first.clone())
    }
}

impl<H: GrowthHook, M: PhysMemory + Clone> PoolGrowth<M> for &Growth<H, M> {
    type Hook = H;
    #[inline]
    fn growth(&self) -> Option<&Growth<H, M>> {
        Some(self)
    }
    fn pool_memory(&self, first: &M) -> Option<M> {
        Some(first.clone())
    }
}

#[cfg(feature = "alloc")]
impl<H: GrowthHook, M: PhysMemory + Clone> PoolGrowth<M> for alloc::boxed::Box<Growth<H, M>> {
    type Hook = H;
    #[inline]
    fn growth(&self) -> Option<&Growth<H, M>> {
        Some(self)
    }
    fn pool_memory(&self, first: &M) -> Option<M> {
        Some(first.clone())
    }
}

/// The kernel's limits on growth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowthLimits {
    /// The most bytes of grown pools alive at once.
    pub max_bytes: u64,
    /// The size of each grown pool: a power of two of at least 256 KiB (one segment).
    pub chunk_bytes: usize,
    /// The most grown pools alive at once (at most [`MAX_GROWN_POOLS`]).
    pub max_pools: usize,
    /// How long (in the units of [`DmaEngine::reclaim`]'s `now`) a grown pool must stay
    /// idle before it is given back.
    pub quiet_period: u64,
    /// The highest address bits a grown pool may use, whatever the device's mask (32 by
    /// default, so that a pool grown for any device serves 32-bit devices too).
    pub address_bits: u32,
    /// How many times a map that finds another CPU growing checks again whether it is done
    /// before failing with [`GrowthError::Busy`] (the bounded wait). 0 fails at once.
    pub busy_spins: u32,
    /// Whether a mapping longer than a chunk holds gets a *transient* pool of its own: one
    /// bus-contiguous block of the smallest power-of-two size that holds it (within
    /// `max_bytes` and `max_pools`, like any grown pool), used by no other mapping and given
    /// back at its unmap (at the next [`DmaEngine::reclaim`] when the unmap runs in atomic
    /// context, where [`GrowthHook::free_pages`] may not be called). On by default.
    pub transient: bool,
}

impl GrowthLimits {
    /// Limits of `max_bytes` in chunks of `chunk_bytes`, with [`MAX_GROWN_POOLS`] pools, a
    /// quiet period of 1, 32 address bits, a wait of 1000 spins and transient pools.
    #[must_use]
    pub const fn new(max_bytes: u64, chunk_bytes: usize) -> Self {
        Self {
            max_bytes,
            chunk_bytes,
            max_pools: MAX_GROWN_POOLS,
            quiet_period: 1,
            address_bits: 32,
            busy_spins: 1000,
            transient: true,
        }
    }

    /// With or without transient pools for mappings longer than a chunk holds
    /// ([`transient`](Self::transient)).
    #[must_use]
    pub const fn with_transient(mut self, on: bool) -> Self {
        self.transient = on;
        self
    }

    /// With at most `n` grown pools.
    #[must_use]
    pub const fn with_max_pools(mut self, n: usize) -> Self {
        self.max_pools = n;
        self
    }

    /// With a quiet period of `t`.
    #[must_use]
    pub const fn with_quiet_period(mut self, t: u64) -> Self {
        self.quiet_period = t;
        self
    }

    /// With grown pools below `2^bits`.
    #[must_use]
    pub const fn with_address_bits(mut self, bits: u32) -> Self {
        self.address_bits = bits;
        self
    }

    /// Whether the chunk size is valid: a power of two of at least 256 KiB.
    #[must_use]
    pub const fn is_valid(&self) -> bool {
        let c = self.chunk_bytes;
        c.is_power_of_two() && c >= IO_TLB_SEGMENT_BYTES
    }

    /// The order of a chunk (`chunk_bytes = 4 KiB << order`), if the chunk size is valid.
    fn order(&self) -> Option<u32> {
        let c = self.chunk_bytes;
        // CAST: the order of a usize is below 64.
        (c.is_power_of_two() && c >= IO_TLB_SEGMENT_BYTES)
            .then(|| c.trailing_zeros() - XEN_PAGE_SHIFT)
    }

    /// The order of the transient pool for a mapping of `size` bytes for `dev`: the smallest
    /// above the chunk's whose pool holds it, if transient pools are on and any order does
    /// (a mapping beyond [`MAX_RUN_SLOTS`](crate::pool::MAX_RUN_SLOTS) slots, or cut by the
    /// device's segment boundary, fits none).
    fn transient_order(&self, dev: &Device, size: usize) -> Option<u32> {
        let chunk = self.order()?;
        if !self.transient {
            return None;
        }
        let max_run = crate::pool::MAX_RUN_SLOTS * IO_TLB_SIZE;
        (chunk + 1..usize::BITS - XEN_PAGE_SHIFT)
            .take_while(|&o| order_bytes(o) <= 2 * max_run)
            .find(|&o| crate::pool::chunk_max_mapping_size(dev, order_bytes(o)) >= size)
    }

    /// The longest mapping a pool grown for `dev` could hold: a transient one as large as
    /// `max_bytes` allows, or a chunk.
    pub(super) fn max_mapping_size(&self, dev: &Device) -> usize {
        let chunk = crate::pool::chunk_max_mapping_size(dev, self.chunk_bytes);
        if !self.transient || !self.is_valid() {
            return chunk;
        }
        // The largest power of two within `max_bytes` (at least the chunk, to be useful).
        let cap = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        if cap < self.chunk_bytes {
            return chunk;
        }
        let largest = 1usize << (usize::BITS - 1 - cap.leading_zeros());
        chunk.max(crate::pool::chunk_max_mapping_size(dev, largest))
    }
}

/// Why the engine did not add a pool: the `cause` of [`DmaError::Growth`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrowthError {
    /// The limits are not valid (a chunk that is not a power of two of at least 256 KiB).
    #[error("growth limits invalid: chunk of {chunk_bytes:#x} bytes")]
    InvalidLimits {
        /// The chunk size.
        chunk_bytes: usize,
    },
    /// The grown pools already number [`GrowthLimits::max_pools`].
    #[error("growth refused: {pools} pools already grown (limit {max})")]
    PoolLimit {
        /// Grown pools alive.
        pools: usize,
        /// The limit.
        max: usize,
    },
    /// Another chunk would exceed [`GrowthLimits::max_bytes`].
    #[error("growth refused: {grown:#x} bytes grown, a chunk of {chunk:#x} exceeds {max:#x}")]
    ByteLimit {
        /// Bytes of grown pools alive.
        grown: u64,
        /// The chunk size.
        chunk: usize,
        /// The limit.
        max: u64,
    },
    /// Another CPU was growing or shrinking for longer than the bounded wait.
    #[error("growth busy on another CPU")]
    Busy,
    /// The engine has no first pool (growth copies its memory hook and areas).
    #[error("growth needs a first pool")]
    NoFirstPool,
    /// The hook had no pages (in atomic context: the reserve is empty).
    #[error("no pages of order {order} for growth (atomic: {atomic})")]
    NoPages {
        /// The order asked for.
        order: u32,
        /// Whether it was asked in atomic context.
        atomic: bool,
    },
    /// No slot metadata (the hook had none and the heap was not allowed or not built in).
    #[error("no slot metadata for {nslabs} slots (atomic: {atomic})")]
    NoSlots {
        /// The slots asked for.
        nslabs: usize,
        /// Whether it was asked in atomic context.
        atomic: bool,
    },
    /// The hook's pages were not aligned to their size.
    #[error("growth pages at {phys} are not aligned to order {order}")]
    Misaligned {
        /// The pages.
        phys: PhysAddr,
        /// Their order.
        order: u32,
    },
    /// `create_contiguous_region` failed (the hypercall and errno are in `source`); the
    /// pages went back to the hook.
    #[error("making a chunk contiguous below 2^{address_bits} failed: {source}")]
    Contiguous {
        /// The address limit asked for.
        address_bits: u32,
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// The platform left the chunk damaged; it was handed to [`GrowthHook::quarantine`]
    /// (which is told its address).
    #[error("a growth chunk was damaged: {source}")]
    Damaged {
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// The contiguous region is not below the limit asked for (a platform that broke its
    /// promise); it was given back.
    #[error("grown region {phys} at bus {bus} is beyond 2^{address_bits}")]
    Unreachable {
        /// The pages.
        phys: PhysAddr,
        /// Their bus address.
        bus: BusAddr,
        /// The limit.
        address_bits: u32,
    },
    /// Building the pool or checking its translation failed (a bug of the platform).
    #[error("the grown pool at {phys} could not be built")]
    Pool {
        /// The pages.
        phys: PhysAddr,
    },
}

/// Counters of a [`Growth`] ([`DmaEngine::growth_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrowthStats {
    /// Pools added since the engine was built.
    pub pools_added: u64,
    /// Pools given back (or quarantined after damage) since.
    pub pools_removed: u64,
    /// Grown pools alive now.
    pub live_pools: usize,
    /// Bytes of grown pools alive now.
    pub bytes: u64,
    /// The most bytes of grown pools alive at once.
    pub peak_bytes: u64,
    /// Growths refused by the limits.
    pub refused: u64,
    /// Growths that failed (no pages, no metadata, the platform).
    pub failed: u64,
    /// Give-backs that failed (the pool stayed alive) or left pages damaged.
    pub give_back_failures: u64,
    /// Slots in use in the grown pools.
    pub used_slots: usize,
    /// Transient pools added (each for one mapping longer than a chunk holds; also counted
    /// in `pools_added`).
    pub transient_added: u64,
    /// Transient pools alive now (also counted in `live_pools`).
    pub transient_live: usize,
    /// Pools grown smaller than the limits' chunk because the platform refused the chunk's
    /// order (x86 PV: above the domain's `memop-max-order`) or the hook had no pages of it
    /// (also counted in `pools_added`).
    pub smaller_chunks: u64,
}

/// What one [`DmaEngine::reclaim`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReclaimReport {
    /// Pools given back.
    pub removed: usize,
    /// Grown pools still alive.
    pub remaining: usize,
    /// Another CPU was growing or shrinking: nothing was done.
    pub busy: bool,
    /// The last give-back that failed: the pool stays alive and is tried again next time
    /// (or, damaged, was quarantined and counted in `removed`).
    pub error: Option<PlatformError>,
}

/// Entry states.
const EMPTY: u8 = 0;
const LIVE: u8 = 1;
const RETIRING: u8 = 2;

/// The users/state protocol of one grown pool's entry (the module's memory-safety
/// argument), on its own so that the loom models in `tests/loom.rs` check this code.
///
/// A user [`enter`](Self::enter)s (and later [`leave`](Self::leave)s) to touch the entry's
/// pool; the one holder of the growth's `busy` flag [`publish`](Self::publish)es a pool it
/// has written, [`retire`](Self::retire)s a live one before changing it or giving its pages
/// back, and then [`empty`](Self::empty)s or [`revive`](Self::revive)s it. Both sides
/// write one word, then a sequentially consistent fence, then read the other's word: in the
/// fences' total order one comes first, so either the user sees the entry retiring and
/// stays out, or the retire sees the user and backs off (both may back off; neither may
/// miss the other). Not part of the stable API.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct EntryGate {
    users: AtomicUsize,
    state: AtomicU8,
}

impl EntryGate {
    crate::lock::const_fn_unless_loom! {
        /// An empty entry: no pool, nobody inside.
        #[must_use]
        pub fn new() -> Self {
            Self {
                users: AtomicUsize::new(0),
                state: AtomicU8::new(EMPTY),
            }
        }
    }

    /// Raises `users`, then reads the state: `true` if the entry is live (the caller may
    /// read its pool until [`leave`](Self::leave), and no writer changes it meanwhile).
    pub fn enter(&self) -> bool {
        self.users.fetch_add(1, Ordering::Relaxed);
        // Orders the raise before the read of the state, against the fence of `retire`
        // between its state change and its read of `users`.
        fence(Ordering::SeqCst);
        // Acquire: a live state was published (release) after the pool was written.
        if self.state.load(Ordering::Acquire) == LIVE {
            return true;
        }
        self.users.fetch_sub(1, Ordering::Release);
        false
    }

    /// Ends a use begun by a successful [`enter`](Self::enter).
    pub fn leave(&self) {
        // Release: the user's reads of the pool happen before a retire that sees zero.
        self.users.fetch_sub(1, Ordering::Release);
    }

    /// The state (`EMPTY`, `LIVE` or `RETIRING`), a snapshot.
    #[must_use]
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }

    /// Whether a retire is under way: for a user [`enter`](Self::enter) turned away, which
    /// then waits for the retire to back off or finish.
    #[must_use]
    pub fn retiring(&self) -> bool {
        self.state.load(Ordering::Acquire) == RETIRING
    }

    /// Whether the state is live (a snapshot; only [`enter`](Self::enter) makes a use safe).
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.state() == LIVE
    }

    /// Moves a live entry to retiring, then reads `users`: `true` when nobody is inside and
    /// nobody can enter (the caller may change the pool, then [`empty`](Self::empty) or
    /// [`revive`](Self::revive) the entry); `false` when it was not live, or a user is
    /// inside (the entry is live again). The holder of `busy` only.
    pub fn retire(&self) -> bool {
        if self
            .state
            .compare_exchange(LIVE, RETIRING, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Orders the state change before the read of `users` (see `enter`): either this
        // read sees a user's raise, or that user's read of the state sees RETIRING.
        fence(Ordering::SeqCst);
        // Acquire: pairs with the release of every user that has left.
        if self.users.load(Ordering::Acquire) != 0 {
            self.state.store(LIVE, Ordering::Release);
            return false;
        }
        true
    }

    /// A retired entry is live again, its pool unchanged. The holder of `busy` only.
    pub fn revive(&self) {
        self.state.store(LIVE, Ordering::SeqCst);
    }

    /// A retired entry's pool is gone. The holder of `busy` only.
    pub fn empty(&self) {
        self.state.store(EMPTY, Ordering::SeqCst);
    }

    /// An empty entry whose pool the caller has just written goes live: every user that
    /// enters sees the write. The holder of `busy` only.
    pub fn publish(&self) {
        self.state.store(LIVE, Ordering::SeqCst);
    }
}

/// The slot storage of a grown pool: kept by its entry for the engine's lifetime.
pub struct GrownSlots {
    ptr: NonNull<Slot>,
    len: usize,
}

// SAFETY: a shared slice of `Slot`s (which are `Sync`) that outlives every pool using it.
unsafe impl Send for GrownSlots {}
// SAFETY: as above.
unsafe impl Sync for GrownSlots {}

impl AsRef<[Slot]> for GrownSlots {
    fn as_ref(&self) -> &[Slot] {
        // SAFETY: `ptr` and `len` come from a live slice that the entry keeps until the
        // `Growth` drops, after every pool using it.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// The chunk behind an entry; written only by the holder of `busy` while the entry is not
/// `LIVE`.
#[derive(Clone, Copy, Debug, Default)]
struct Chunk {
    phys: PhysAddr,
    /// `4 KiB << order` bytes: the limits' chunk, or a transient pool's own size.
    order: u32,
    exchanged: bool,
    /// Reclaim's view: when the pool was first seen idle, and its map count then.
    idle_since: Option<u64>,
    maps_seen: u64,
}

/// One grown pool's place. Never freed while the `Growth` lives (see the module's SAFETY
/// argument).
#[repr(align(128))]
struct Entry<M: PhysMemory> {
    gate: EntryGate,
    /// The highest bus address of the live pool (maps pick pools their mask covers).
    bus_top: AtomicU64,
    /// The live pool is transient: it holds the one mapping it was grown for, and no map
    /// searching for room enters it. Written by the holder of `busy` before the publish.
    transient: AtomicBool,
    pool: UnsafeCell<Option<BouncePool<M, GrownSlots>>>,
    chunk: UnsafeCell<Chunk>,
    /// The slot metadata: `(ptr, len, from the heap)`.
    slots: UnsafeCell<Option<(NonNull<Slot>, usize, bool)>>,
}

impl<M: PhysMemory> Entry<M> {
    crate::lock::const_fn_unless_loom! {
        fn new() -> Self {
            Self {
                gate: EntryGate::new(),
                bus_top: AtomicU64::new(0),
                transient: AtomicBool::new(false),
                pool: UnsafeCell::new(None),
                chunk: UnsafeCell::new(Chunk {
                    phys: PhysAddr::ZERO,
                    order: 0,
                    exchanged: false,
                    idle_since: None,
                    maps_seen: 0,
                }),
                slots: UnsafeCell::new(None),
            }
        }
    }
}

/// The entries of a new [`Growth`], all empty.
#[cfg(not(loom))]
const fn no_entries<M: PhysMemory>() -> [Entry<M>; MAX_GROWN_POOLS] {
    [const { Entry::new() }; MAX_GROWN_POOLS]
}

/// The entries of a new [`Growth`] (loom's atomics have no `const` constructor).
#[cfg(loom)]
fn no_entries<M: PhysMemory>() -> [Entry<M>; MAX_GROWN_POOLS] {
    core::array::from_fn(|_| Entry::new())
}

/// A use of a live entry's pool: `users` stays raised until it drops.
pub(super) struct Inside<'a, M: PhysMemory> {
    id: usize,
    entry: &'a Entry<M>,
    pool: &'a BouncePool<M, GrownSlots>,
}

impl<M: PhysMemory> Inside<'_, M> {
    pub(super) fn pool(&self) -> &BouncePool<M, GrownSlots> {
        self.pool
    }
}

impl<M: PhysMemory> Drop for Inside<'_, M> {
    fn drop(&mut self) {
        self.entry.gate.leave();
    }
}

/// The sorted table of live grown pools, read under a sequence counter.
struct Index {
    seq: AtomicUsize,
    len: AtomicUsize,
    starts: [AtomicU64; MAX_GROWN_POOLS],
    ends: [AtomicU64; MAX_GROWN_POOLS],
    ids: [AtomicU8; MAX_GROWN_POOLS],
}

impl Index {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            seq: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            starts: [const { AtomicU64::new(0) }; MAX_GROWN_POOLS],
            ends: [const { AtomicU64::new(0) }; MAX_GROWN_POOLS],
            ids: [const { AtomicU8::new(0) }; MAX_GROWN_POOLS],
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Self {
            seq: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            starts: core::array::from_fn(|_| AtomicU64::new(0)),
            ends: core::array::from_fn(|_| AtomicU64::new(0)),
            ids: core::array::from_fn(|_| AtomicU8::new(0)),
        }
    }

    /// The entry whose range holds `phys` in a consistent snapshot, and the snapshot's
    /// sequence number. Writes nothing.
    fn find(&self, phys: u64) -> (Option<usize>, usize) {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                spin_wait();
                continue;
            }
            let n = self.len.load(Ordering::Relaxed).min(MAX_GROWN_POOLS);
            // Bisection: the first entry whose start is above `phys`.
            let (mut lo, mut hi) = (0usize, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.starts[mid].load(Ordering::Relaxed) <= phys {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let found = (lo > 0 && phys < self.ends[lo - 1].load(Ordering::Relaxed))
                .then(|| usize::from(self.ids[lo - 1].load(Ordering::Relaxed)));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return (found, s1);
            }
        }
    }

    /// Rewrites the table (the holder of `busy` only), with interrupts masked so that an
    /// interrupt-time reader on this CPU never waits for it.
    fn write(
        &self,
        irq: IrqHook,
        f: impl FnOnce(&mut arrayvec::ArrayVec<(u64, u64, u8), MAX_GROWN_POOLS>),
    ) {
        let n = self.len.load(Ordering::Relaxed).min(MAX_GROWN_POOLS);
        let mut v: arrayvec::ArrayVec<(u64, u64, u8), MAX_GROWN_POOLS> = (0..n)
            .map(|i| {
                (
                    self.starts[i].load(Ordering::Relaxed),
                    self.ends[i].load(Ordering::Relaxed),
                    self.ids[i].load(Ordering::Relaxed),
                )
            })
            .collect();
        f(&mut v);
        v.sort_unstable_by_key(|e| e.0);
        let state = irq.save();
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (i, &(a, b, id)) in v.iter().enumerate() {
            self.starts[i].store(a, Ordering::Relaxed);
            self.ends[i].store(b, Ordering::Relaxed);
            self.ids[i].store(id, Ordering::Relaxed);
        }
        self.len.store(v.len(), Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
        irq.restore(state);
    }
}

/// The growth state of an engine: the kernel's hook, its limits, and the grown pools.
///
/// About `MAX_GROWN_POOLS` pools' worth of inline state (each a [`BouncePool`] value with
/// its areas: some 16 KiB), so a kernel keeps it in a `static` or on the heap and gives the
/// engine a reference or a box.
pub struct Growth<H, M: PhysMemory> {
    hook: H,
    limits: GrowthLimits,
    entries: [Entry<M>; MAX_GROWN_POOLS],
    index: Index,
    /// Held by the one CPU growing or shrinking.
    busy: AtomicBool,
    /// The entry that took the last mapping the first pool could not (a hint where the
    /// search of the grown pools starts; written only when it changes).
    last: AtomicUsize,
    added: AtomicU64,
    transient_added: AtomicU64,
    smaller: AtomicU64,
    removed: AtomicU64,
    bytes: AtomicU64,
    peak: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    give_back_failures: AtomicU64,
}

// SAFETY: the entries' cells are written only by the holder of `busy` while no user is
// inside (the module's argument); everything else is atomics and the `Sync` hook.
unsafe impl<H: Sync, M: PhysMemory + Send + Sync> Sync for Growth<H, M> {}
// SAFETY: owns its pools (whose memory hooks are `Send`) and the slot storage.
unsafe impl<H: Send, M: PhysMemory + Send> Send for Growth<H, M> {}

impl<H, M: PhysMemory> core::fmt::Debug for Growth<H, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Growth")
            .field("limits", &self.limits)
            .field("live", &self.index.len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<H, M: PhysMemory> Drop for Growth<H, M> {
    fn drop(&mut self) {
        for e in &mut self.entries {
            // The pool goes first: it uses the storage.
            *e.pool.get_mut() = None;
            if let Some(old) = e.slots.get_mut().take() {
                // SAFETY: the entry's storage; its pool was just dropped.
                unsafe { free_heap_slots(old) };
            }
        }
    }
}

/// Slot metadata from the heap (feature `alloc`, outside atomic context): `(ptr, len, true)`.
fn heap_slots(nslabs: usize, atomic: bool) -> Option<(NonNull<Slot>, usize, bool)> {
    #[cfg(feature = "alloc")]
    if !atomic {
        let b: alloc::boxed::Box<[Slot]> = (0..nslabs).map(|_| Slot::new()).collect();
        let raw = alloc::boxed::Box::into_raw(b);
        // SAFETY: `Box::into_raw` never returns null.
        let ptr = unsafe { NonNull::new_unchecked(raw.cast::<Slot>()) };
        return Some((ptr, nslabs, true));
    }
    let _ = (nslabs, atomic);
    None
}

/// Frees slot metadata of [`heap_slots`] (the hook's own is the hook's: kept).
///
/// # Safety
///
/// The storage is an entry's, and the pool that used it is gone.
unsafe fn free_heap_slots((ptr, len, heap): (NonNull<Slot>, usize, bool)) {
    if !heap {
        return;
    }
    #[cfg(feature = "alloc")]
    // SAFETY: heap storage came from `Box::into_raw` of a boxed slice of `len` slots, and
    // its only user (the pool) is gone (the callers' promise).
    drop(unsafe {
        alloc::boxed::Box::from_raw(core::ptr::slice_from_raw_parts_mut(ptr.as_ptr(), len))
    });
    #[cfg(not(feature = "alloc"))]
    let _ = (ptr, len);
}

impl<H: GrowthHook, M: PhysMemory> Growth<H, M> {
    crate::lock::const_fn_unless_loom! {
        /// Growth through `hook` within `limits` (`max_pools` is capped at
        /// [`MAX_GROWN_POOLS`]). Invalid limits make every growth fail with
        /// [`GrowthError::InvalidLimits`].
        ///
        /// A `Growth` is large (its [`MAX_GROWN_POOLS`] pool entries: about 260 KiB), so a
        /// kernel puts it in a `static` (this is a `const fn`) or on the heap rather than on
        /// a small kernel stack, and hands the engine a reference.
        ///
        /// # Examples
        ///
        /// See [`DmaEngine::with_growth`].
        #[must_use]
        pub fn new(hook: H, limits: GrowthLimits) -> Self {
            let max_pools = if limits.max_pools < MAX_GROWN_POOLS {
                limits.max_pools
            } else {
                MAX_GROWN_POOLS
            };
            Self {
                hook,
                limits: GrowthLimits { max_pools, ..limits },
                entries: no_entries(),
                index: Index::new(),
                busy: AtomicBool::new(false),
                last: AtomicUsize::new(0),
                added: AtomicU64::new(0),
                transient_added: AtomicU64::new(0),
                smaller: AtomicU64::new(0),
                removed: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                give_back_failures: AtomicU64::new(0),
            }
        }
    }

    /// The kernel's hook.
    #[must_use]
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> GrowthLimits {
        self.limits
    }

    /// Enters entry `id` if it is live.
    fn enter(&self, id: usize) -> Option<Inside<'_, M>> {
        let entry = self.entries.get(id)?;
        if !entry.gate.enter() {
            return None;
        }
        // SAFETY: the entry is live and `users` is raised, so the holder of `busy` does not
        // write the cell until this `Inside` drops (module argument); it holds a pool.
        let pool = unsafe { &*entry.pool.get() }.as_ref()?;
        Some(Inside { id, entry, pool })
    }

    /// The grown pool holding `phys`, entered.
    fn lookup(&self, phys: PhysAddr) -> Option<Inside<'_, M>> {
        loop {
            let (id, seq) = self.index.find(phys.as_u64());
            let inside = id.and_then(|id| self.enter(id));
            match inside {
                Some(i) if i.pool.contains(phys) => return Some(i),
                _ => {
                    // A stale snapshot (the entry was retired or reused since): look again,
                    // unless the table has not changed, in which case `phys` is in no pool,
                    // or the entry is retiring: a reclaim is checking it, and either backs
                    // off (live again) or rewrites the table next, with interrupts masked
                    // (so no lookup on its own CPU waits for it here).
                    if self.index.seq.load(Ordering::Acquire) == seq {
                        let retiring = id.is_some_and(|id| self.entries[id].gate.retiring());
                        if !retiring {
                            return None;
                        }
                        spin_wait();
                    }
                }
            }
        }
    }

    /// Takes the `busy` flag, waiting at most `spins` checks.
    fn take_busy(&self, spins: u32) -> Option<BusyGuard<'_>> {
        let mut n = 0;
        loop {
            if self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return Some(BusyGuard(&self.busy));
            }
            if n >= spins {
                return None;
            }
            n += 1;
            spin_wait();
        }
    }

    fn live_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.gate.state() != EMPTY)
            .count()
    }

    fn stats(&self) -> GrowthStats {
        let (mut used, mut transient) = (0, 0);
        for id in 0..MAX_GROWN_POOLS {
            if let Some(i) = self.enter(id) {
                used += i.pool.stats().used;
                transient += usize::from(i.entry.transient.load(Ordering::Relaxed));
            }
        }
        GrowthStats {
            pools_added: self.added.load(Ordering::Relaxed),
            pools_removed: self.removed.load(Ordering::Relaxed),
            live_pools: self.live_count(),
            bytes: self.bytes.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            give_back_failures: self.give_back_failures.load(Ordering::Relaxed),
            used_slots: used,
            transient_added: self.transient_added.load(Ordering::Relaxed),
            transient_live: transient,
            smaller_chunks: self.smaller.load(Ordering::Relaxed),
        }
    }

    /// Slot metadata for entry `e` (held `busy`): its own from an earlier pool, the hook's,
    /// or the heap's.
    fn slots_for(&self, e: &Entry<M>, nslabs: usize, atomic: bool) -> Option<GrownSlots> {
        // SAFETY: only the holder of `busy` touches `slots` (and `Drop`, which has `&mut`).
        let slots = unsafe { &mut *e.slots.get() };
        if let Some((ptr, len, _)) = *slots
            && len >= nslabs
        {
            return Some(GrownSlots { ptr, len });
        }
        // None yet, or too few for this pool (a transient pool longer than the chunks the
        // entry held before): new storage, then the old goes.
        let new = match self.hook.alloc_slots(nslabs, atomic) {
            Some(s) if s.len() >= nslabs => Some((NonNull::from(s).cast::<Slot>(), s.len(), false)),
            _ => heap_slots(nslabs, atomic),
        }?;
        // SAFETY: the entry is EMPTY and we hold `busy`: no user is inside its pool (a user
        // enters only a LIVE entry) and no other writer exists. The old pool value goes
        // first: it points at the old storage.
        unsafe { *e.pool.get() = None };
        if let Some(old) = slots.replace(new) {
            // SAFETY: the entry's storage, whose pool was just dropped.
            unsafe { free_heap_slots(old) };
        }
        Some(GrownSlots {
            ptr: new.0,
            len: new.1,
        })
    }
}

/// The `busy` flag, released on drop.
struct BusyGuard<'a>(&'a AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<P, M, S, A, G> DmaEngine<P, M, S, A, G>
where
    P: Platform,
    M: PhysMemory,
    S: AsRef<[Slot]>,
    A: PageAllocator,
    G: PoolGrowth<M>,
{
    /// The engine with `growth`: a bounce that finds the pools full adds a pool through the
    /// growth's hook, and [`reclaim`](Self::reclaim) gives idle ones back. `growth` is a
    /// [`Growth`] by value, a reference to one, or (feature `alloc`) a box.
    ///
    /// Grown pools serve streaming maps ([`map_page`](Self::map_page),
    /// [`map_sg`](Self::map_sg) and [`map_buffer`](Self::map_buffer)). A map grows on
    /// [`PoolError::PoolFull`], and for a mapping longer than the first pool can hold
    /// ([`PoolError::TooLarge`], [`PoolError::ExceedsSegment`]); a mapping longer than a
    /// chunk holds gets a transient pool of its own ([`GrowthLimits::transient`]), given
    /// back at its unmap. When growth is refused or fails the error is [`DmaError::Growth`], which says
    /// why growth did not help. Each grown pool is `chunk_bytes` of the hook's pages, made
    /// bus-contiguous below `2^min(mask bits, limits.address_bits)` with
    /// [`Platform::create_contiguous_region`] (unless already so: an arm64 dom0's pages
    /// below the limit), its segments joined, with as many areas as the first pool unless an
    /// area would be too short for the mapping it is grown for.
    ///
    /// # Examples
    ///
    /// A machine whose first pool holds 256 KiB: a second 256 KiB mapping grows a pool of
    /// 256 KiB; once both are unmapped and a quiet period has passed, `reclaim` gives the
    /// grown pool back.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::{Growth, GrowthLimits};
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let limits = GrowthLimits::new(1 << 20, 256 << 10)
    ///     .with_quiet_period(10)
    ///     .with_address_bits(64); // the examples' spare pages lie above 4 GiB
    /// // About 260 KiB: a kernel keeps it in a `static` (`Growth::new` is `const`).
    /// let growth = Box::new(Growth::new(GrowPages::new(), limits));
    /// let engine = engine.with_growth(&*growth);
    /// let dev = Device::new(DmaMask::FULL).with_force_bounce(true);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// // SAFETY: the buffers are the machine's memory, covered by no reference until the unmaps.
    /// let a = unsafe { engine.map_page(&dev, m.high(0), 256 << 10, dir, none) }?;
    /// // SAFETY: as above. The first pool is full: this one grows a pool.
    /// let b = unsafe { engine.map_page(&dev, m.high(64), 256 << 10, dir, none) }?;
    /// assert_eq!(engine.growth_stats().map(|s| s.pools_added), Some(1));
    /// engine.unmap_page(&dev, b, 256 << 10, dir, none)?; // found in the grown pool
    /// engine.unmap_page(&dev, a, 256 << 10, dir, none)?;
    /// assert_eq!(engine.reclaim(100).removed, 0); // idle from now on
    /// assert_eq!(engine.reclaim(110).removed, 1); // after the quiet period
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_growth<G2: PoolGrowth<M>>(self, growth: G2) -> DmaEngine<P, M, S, A, G2> {
        DmaEngine {
            platform: self.platform,
            pool: self.pool,
            pool_bus_top: self.pool_bus_top,
            pages: self.pages,
            cpu_hint: self.cpu_hint,
            counters: self.counters,
            growth,
        }
    }

    /// The growth state, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::{Growth, GrowthLimits};
    ///
    /// let (engine, _m) = machine();
    /// assert!(engine.growth().is_none());
    /// let limits = GrowthLimits::new(1 << 20, 256 << 10);
    /// // About 260 KiB: a kernel keeps it in a `static` (`Growth::new` is `const`).
    /// let growth = Box::new(Growth::new(GrowPages::new(), limits));
    /// let engine = engine.with_growth(&*growth);
    /// assert_eq!(engine.growth().map(|g| g.limits().chunk_bytes), Some(256 << 10));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn growth(&self) -> Option<&Growth<G::Hook, M>> {
        self.growth.growth()
    }

    /// The growth counters (pools added and removed, bytes and their peak, failures), or
    /// `None` without growth. Cold: enters every grown pool to count its slots in use.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::{Growth, GrowthLimits};
    ///
    /// let (engine, _m) = machine();
    /// let limits = GrowthLimits::new(1 << 20, 256 << 10);
    /// // About 260 KiB: a kernel keeps it in a `static` (`Growth::new` is `const`).
    /// let growth = Box::new(Growth::new(GrowPages::new(), limits));
    /// let engine = engine.with_growth(&*growth);
    /// let s = engine.growth_stats().expect("growth");
    /// assert_eq!((s.pools_added, s.live_pools, s.peak_bytes), (0, 0, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn growth_stats(&self) -> Option<GrowthStats> {
        self.growth.growth().map(Growth::stats)
    }

    /// Calls `f` with the report ([`BouncePool::report`]) of each live grown pool, in the
    /// order of the engine's table of grown pools, and returns how many it reported: what
    /// [`pool_report`](Self::pool_report) says of the first pool, for the others. Each
    /// report is built on the stack (about 2 KiB) while its pool is entered (so no reclaim
    /// gives the pool back in the middle), then handed to `f`. Cold, as the first pool's
    /// report.
    pub fn grown_pool_reports(&self, mut f: impl FnMut(&PoolReport)) -> usize {
        let Some(g) = self.growth.growth() else {
            return 0;
        };
        let mut n = 0;
        for id in 0..MAX_GROWN_POOLS {
            if let Some(r) = g.enter(id).and_then(|i| i.pool.report()) {
                f(&r);
                n += 1;
            }
        }
        n
    }

    /// The live mappings and coherent allocations of the first pool and of every live grown
    /// pool, per device, with the age of each device's oldest at `now` (a reading of the
    /// first pool's clock): see [`BouncePool::live_mappings`]. `None` if the first pool
    /// records no ages ([`BouncePool::set_mapping_clock`]; grown pools take its clock).
    /// Cold: it reads every slot's state under each area lock in turn.
    #[must_use]
    pub fn live_mappings(&self, now: u64) -> Option<LiveReport> {
        let mut r = self.pool.as_ref()?.live_mappings(now)?;
        if let Some(g) = self.growth.growth() {
            for id in 0..MAX_GROWN_POOLS {
                if let Some(i) = g.enter(id) {
                    let _ = i.pool.add_live_mappings(&mut r);
                }
            }
        }
        Some(r)
    }

    /// Gives back the grown pools that have been idle for the quiet period
    /// ([`GrowthLimits::quiet_period`]): for the kernel to call from a timer, with `now` in
    /// any monotonic unit the limits use.
    ///
    /// A pool is idle when no slot of it is in use and no map went to it since the previous
    /// call saw it idle (its map count is compared, so the map path writes nothing for
    /// this). A pool found idle for at least the quiet period is retired (it takes no new
    /// mapping), checked once more for mappings (a map that raced in puts it back), removed
    /// from the lookup table, made non-contiguous again with
    /// [`Platform::destroy_contiguous_region`] if it was exchanged, and its pages go back
    /// to [`GrowthHook::free_pages`]; its entry and slot metadata stay for a later pool. A
    /// failed give-back leaves the pool alive (tried again next call); one that damages the
    /// pages hands them to [`GrowthHook::quarantine`]. Nothing is done while another CPU
    /// grows or shrinks (`busy` in the report). Never called from the map path.
    ///
    /// # Examples
    ///
    /// See [`with_growth`](Self::with_growth); without growth there is nothing to do:
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// let (engine, _m) = machine();
    /// assert_eq!(engine.reclaim(0).removed, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reclaim(&self, now: u64) -> ReclaimReport {
        let mut report = ReclaimReport::default();
        let Some(g) = self.growth.growth() else {
            return report;
        };
        let Some(_busy) = g.take_busy(0) else {
            report.busy = true;
            report.remaining = g.live_count();
            return report;
        };
        for (id, e) in g.entries.iter().enumerate() {
            if e.gate.state() != LIVE {
                continue;
            }
            // SAFETY: we hold `busy`, the only writer of the cells; the pool is live.
            let Some(pool) = (unsafe { &*e.pool.get() }).as_ref() else {
                continue;
            };
            // SAFETY: as above; `chunk` is read and written only by the holder of `busy`.
            let chunk = unsafe { &mut *e.chunk.get() };
            let st = pool.stats();
            if st.used > 0 {
                chunk.idle_since = None;
                continue;
            }
            // A transient pool goes as soon as its mapping has (an unmap in atomic context
            // left it here); a chunk after the quiet period.
            if !e.transient.load(Ordering::Relaxed) {
                if chunk.idle_since.is_none() || chunk.maps_seen != st.maps {
                    chunk.idle_since = Some(now);
                    chunk.maps_seen = st.maps;
                }
                let Some(since) = chunk.idle_since else {
                    continue;
                };
                if now.saturating_sub(since) < g.limits.quiet_period {
                    continue;
                }
            }
            match self.release(g, id) {
                Release::Stayed => {}
                Release::Removed(err) => {
                    report.removed += 1;
                    report.error = err.or(report.error);
                }
                Release::Kept(err) => report.error = Some(err),
            }
        }
        report.remaining = g.live_count();
        report
    }

    /// Gives back the idle pool of live entry `id` (the caller holds `busy`): retires it (no
    /// new user from here on; back off if one is inside or a mapping lives), removes it from
    /// the lookup table, and gives its chunk back.
    fn release(&self, g: &Growth<G::Hook, M>, id: usize) -> Release {
        let e = &g.entries[id];
        let irq = self.irq();
        // SAFETY: the caller holds `busy`, the only writer of the cells.
        let Some(pool) = (unsafe { &*e.pool.get() }).as_ref() else {
            return Release::Stayed;
        };
        // SAFETY: as above; `chunk` is read and written only by the holder of `busy`.
        let chunk = unsafe { &mut *e.chunk.get() };
        // A lookup that meets the entry retiring waits for the back-off or the table's
        // rewrite (`lookup`), so interrupts stay masked from here to either: no lookup on
        // this CPU can wait for it.
        let masked = irq.save();
        if !e.gate.retire() {
            irq.restore(masked);
            return Release::Stayed;
        }
        if pool.stats().used != 0 {
            e.gate.revive();
            irq.restore(masked);
            return Release::Stayed;
        }
        let (phys, order, exchanged) = (chunk.phys, chunk.order, chunk.exchanged);
        g.index.write(irq, |v| v.retain(|x| usize::from(x.2) != id));
        irq.restore(masked);
        let err = match self.give_back(g, phys, order, exchanged) {
            Ok(()) => None,
            Err(GiveBack::Kept(err)) => {
                // Still contiguous and ours: alive again, tried next time.
                // CAST: a chunk id is below MAX_GROWN_POOLS <= 255.
                g.index.write(irq, |v| {
                    let _ = v.try_push((pool.start().as_u64(), pool.end().as_u64(), id as u8));
                });
                e.gate.revive();
                return Release::Kept(err);
            }
            Err(GiveBack::Damaged(err)) => Some(err),
        };
        chunk.idle_since = None;
        e.gate.empty();
        // CAST: usize fits in u64.
        g.bytes
            .fetch_sub(order_bytes(order) as u64, Ordering::Relaxed);
        g.removed.fetch_add(1, Ordering::Relaxed);
        Release::Removed(err)
    }

    /// After an unmap from a grown pool: a transient pool goes back now that its mapping
    /// has, unless the unmap runs in atomic context (the hook may not free pages there) or
    /// another CPU grows or shrinks (the next [`reclaim`](Self::reclaim) gives it back).
    pub(super) fn unmapped_from(&self, inside: Inside<'_, M>) {
        if !inside.entry.transient.load(Ordering::Relaxed) {
            return;
        }
        let id = inside.id;
        drop(inside);
        let Some(g) = self.growth.growth() else {
            return;
        };
        if g.hook.in_atomic() {
            return;
        }
        if let Some(_busy) = g.take_busy(0)
            && g.entries[id].transient.load(Ordering::Relaxed)
            && g.entries[id].gate.is_live()
        {
            // A failed give-back keeps the pool for `reclaim` to try again (and counts it).
            let _ = self.release(g, id);
        }
    }

    /// The interrupt hook of the first pool (used for the grown pools and the table).
    fn irq(&self) -> IrqHook {
        self.pool
            .as_ref()
            .map_or(IrqHook::NONE, BouncePool::irq_hook)
    }

    /// Gives a chunk back: the exchange (if any), then the pages to the hook.
    fn give_back(
        &self,
        g: &Growth<G::Hook, M>,
        phys: PhysAddr,
        order: u32,
        exchanged: bool,
    ) -> Result<(), GiveBack> {
        if exchanged {
            // SAFETY: the chunk was made contiguous with this order and nothing uses it.
            if let Err(err) = unsafe { self.platform.destroy_contiguous_region(phys, order) } {
                g.give_back_failures.fetch_add(1, Ordering::Relaxed);
                if err.damage().is_some() {
                    g.hook.quarantine(phys, order);
                    return Err(GiveBack::Damaged(err));
                }
                return Err(GiveBack::Kept(err));
            }
        }
        // SAFETY: the hook's pages of this order, used by nothing any more.
        unsafe { g.hook.free_pages(phys, order) };
        Ok(())
    }

    /// The grown pool holding the bounce address `tlb`, entered (`None` without growth).
    #[inline]
    pub(super) fn grown_lookup(&self, tlb: PhysAddr) -> Option<Inside<'_, M>> {
        self.growth.growth()?.lookup(tlb)
    }

    /// The bounce of a map that the first pool refused with `first`: into a grown pool with
    /// room, a new one, or for a mapping longer than a chunk holds a transient pool of its
    /// own. Returns the bus address (the bounce finished: translated, checked, maintained,
    /// counted).
    ///
    /// # Safety
    ///
    /// As the entry point's (`map_page` or `map_buffer`) for `b`'s original.
    pub(super) unsafe fn map_grown<B: Bouncer<M>>(
        &self,
        req: &Request<'_>,
        b: &B,
        first: PoolError,
    ) -> Result<BusAddr, DmaError> {
        let (dev, size) = (req.dev, req.size);
        let Some(g) = self.growth.growth() else {
            return Err(b.refused(req, first));
        };
        // A full first pool, or a mapping longer than it can hold: a grown pool is one
        // bus-contiguous chunk, so it holds what the first pool's segments or areas cut
        // (the grown pool's own checks have the last word); longer ones get a transient
        // pool if any size holds them.
        if !matches!(
            first,
            PoolError::PoolFull { .. }
                | PoolError::TooLarge { .. }
                | PoolError::ExceedsSegment { .. }
        ) {
            return Err(b.refused(req, first));
        }
        let bits = dev.dma_mask.bits().min(g.limits.address_bits);
        if size > crate::pool::chunk_max_mapping_size(dev, g.limits.chunk_bytes) {
            let Some(order) = g.limits.transient_order(dev, size) else {
                return Err(b.refused(req, first));
            };
            // SAFETY: the caller's promise, passed on.
            return unsafe { self.map_transient(g, req, b, bits, order) };
        }
        let covered = |e: &Entry<M>| {
            let top = e.bus_top.load(Ordering::Relaxed);
            dev.dma_mask.covers(BusAddr::new(top), 1)
        };
        // Entries a search for room may enter: live, not transient, reached by the device.
        let open = |id: usize| {
            let e = &g.entries[id];
            // A hint first: entering writes the entry's line, so only live entries are.
            if !e.gate.is_live() || e.transient.load(Ordering::Relaxed) {
                return None;
            }
            g.enter(id).filter(|_| covered(e))
        };
        // From the pool that took the last grown mapping: with room in one pool only, the
        // maps go there first instead of searching every full pool before it.
        let start = g.last.load(Ordering::Relaxed);
        for k in 0..MAX_GROWN_POOLS {
            let id = (start + k) % MAX_GROWN_POOLS;
            if let Some(inside) = open(id) {
                // SAFETY: the caller's promise, passed on.
                // Full, or smaller than a chunk (grown after a refused order) and too
                // small for this mapping: the next pool, then growth.
                match unsafe { self.map_into(&inside, req, b) } {
                    Err(
                        DmaError::Bounce {
                            source:
                                PoolError::PoolFull { .. }
                                | PoolError::TooLarge { .. }
                                | PoolError::ExceedsSegment { .. },
                            ..
                        }
                        | DmaError::BufferBounce {
                            source:
                                Some(
                                    PoolError::PoolFull { .. }
                                    | PoolError::TooLarge { .. }
                                    | PoolError::ExceedsSegment { .. },
                                ),
                            ..
                        },
                    ) => {}
                    r => {
                        if r.is_ok() && k != 0 {
                            g.last.store(id, Ordering::Relaxed);
                        }
                        return r;
                    }
                }
            }
        }
        let grown = match g.take_busy(g.limits.busy_spins) {
            Some(busy) => {
                let r = g.limits.order().map_or(
                    Err(GrowthError::InvalidLimits {
                        chunk_bytes: g.limits.chunk_bytes,
                    }),
                    |order| self.grow_fitting(g, dev, bits, size, order),
                );
                drop(busy);
                r
            }
            None => Err(GrowthError::Busy),
        };
        let grown = match grown {
            Ok(id) => {
                g.last.store(id, Ordering::Relaxed);
                id
            }
            Err(cause) => {
                g.count_failure(&cause);
                // Another CPU may have grown meanwhile (Busy) or freed room: one more try.
                for id in 0..MAX_GROWN_POOLS {
                    if let Some(inside) = open(id) {
                        // SAFETY: the caller's promise, passed on.
                        if let Ok(bus) = unsafe { self.map_into(&inside, req, b) } {
                            return Ok(bus);
                        }
                    }
                }
                return Err(DmaError::Growth { size, cause });
            }
        };
        let Some(inside) = g.enter(grown) else {
            return Err(b.refused(req, first));
        };
        // SAFETY: the caller's promise, passed on.
        unsafe { self.map_into(&inside, req, b) }
    }

    /// [`grow`](Self::grow) of a chunk of `order`, and when the platform refuses that order
    /// (Xen's `memop-max-order`: [`PlatformError::OrderRefused`] from the exchange, then
    /// [`PlatformError::OrderTooLarge`] without a hypercall, each naming the largest order it
    /// takes) or the hook has no pages of it, of a smaller chunk: the order the platform
    /// named (or one less for missing pages), down to the smallest whose pool still holds
    /// `size` bytes for `dev`. A pool grown smaller is counted in
    /// [`GrowthStats::smaller_chunks`]. The failures before the last attempt left nothing
    /// behind (`grow` gives the pages back), so only the last one is the caller's error.
    fn grow_fitting(
        &self,
        g: &Growth<G::Hook, M>,
        dev: &Device,
        bits: u32,
        size: usize,
        chunk_order: u32,
    ) -> Result<usize, GrowthError> {
        let segment_order = IO_TLB_SEGMENT_BYTES.trailing_zeros() - XEN_PAGE_SHIFT;
        let smallest = (segment_order..chunk_order)
            .find(|&o| crate::pool::chunk_max_mapping_size(dev, order_bytes(o)) >= size)
            .unwrap_or(chunk_order);
        let mut order = chunk_order;
        loop {
            let r = self.grow(g, bits, size, order, false);
            let next = match &r {
                Err(GrowthError::Contiguous {
                    source:
                        PlatformError::OrderRefused { max, .. }
                        | PlatformError::OrderTooLarge { max, .. },
                    ..
                }) => (*max).min(order.saturating_sub(1)),
                Err(GrowthError::NoPages { .. }) => order.saturating_sub(1),
                Ok(_) if order < chunk_order => {
                    g.smaller.fetch_add(1, Ordering::Relaxed);
                    return r;
                }
                _ => return r,
            };
            if next < smallest || next >= order {
                return r;
            }
            order = next;
        }
    }

    /// A mapping longer than a chunk holds, in a transient pool of `4 KiB << order` grown
    /// for it alone. The map happens while this CPU still holds `busy`, so no reclaim gives
    /// the new pool back first; if it fails the pool goes back at once.
    ///
    /// # Safety
    ///
    /// As [`map_grown`](Self::map_grown).
    unsafe fn map_transient<B: Bouncer<M>>(
        &self,
        g: &Growth<G::Hook, M>,
        req: &Request<'_>,
        b: &B,
        bits: u32,
        order: u32,
    ) -> Result<BusAddr, DmaError> {
        let size = req.size;
        let Some(_busy) = g.take_busy(g.limits.busy_spins) else {
            let cause = GrowthError::Busy;
            g.count_failure(&cause);
            return Err(DmaError::Growth { size, cause });
        };
        let id = match self.grow(g, bits, size, order, true) {
            Ok(id) => id,
            Err(cause) => {
                g.count_failure(&cause);
                return Err(DmaError::Growth { size, cause });
            }
        };
        let r = match g.enter(id) {
            // SAFETY: the caller's promise, passed on.
            Some(inside) => unsafe { self.map_into(&inside, req, b) },
            None => Err(DmaError::Growth {
                size,
                cause: GrowthError::Pool {
                    phys: PhysAddr::ZERO,
                },
            }),
        };
        if r.is_err() {
            // Nothing lives in it: back at once (a failed give-back leaves it to `reclaim`).
            let _ = self.release(g, id);
        }
        r
    }

    /// A bounce into one grown pool, finished as in the first pool.
    ///
    /// # Safety
    ///
    /// As [`map_grown`](Self::map_grown).
    unsafe fn map_into<B: Bouncer<M>>(
        &self,
        inside: &Inside<'_, M>,
        req: &Request<'_>,
        b: &B,
    ) -> Result<BusAddr, DmaError> {
        let pool = inside.pool();
        // SAFETY: the caller vouches for the original; the hook's pages are reachable by the
        // pool's memory (the hook's contract).
        let tlb = unsafe { b.take(pool, req, (self.cpu_hint)()) }
            .map_err(|source| b.refused(req, source))?;
        self.finish_in(pool, req, b, tlb)
    }

    /// Adds a pool of `4 KiB << order` below `2^bits` for a mapping of `need` bytes (the
    /// caller holds `busy`), transient (one area, for that mapping alone) or not; returns
    /// its entry.
    fn grow(
        &self,
        g: &Growth<G::Hook, M>,
        bits: u32,
        need: usize,
        order: u32,
        transient: bool,
    ) -> Result<usize, GrowthError> {
        let limits = g.limits;
        let first = self.pool.as_ref().ok_or(GrowthError::NoFirstPool)?;
        let pools = g.live_count();
        if pools >= limits.max_pools {
            return Err(GrowthError::PoolLimit {
                pools,
                max: limits.max_pools,
            });
        }
        let bytes = order_bytes(order);
        // CAST: usize fits in u64.
        let chunk = bytes as u64;
        let grown = g.bytes.load(Ordering::Relaxed);
        if grown.saturating_add(chunk) > limits.max_bytes {
            return Err(GrowthError::ByteLimit {
                grown,
                chunk: bytes,
                max: limits.max_bytes,
            });
        }
        let nslabs = bytes / IO_TLB_SIZE;
        // A grown pool records its mappings' ages as the first does: its metadata then holds
        // the records too.
        let clock = first.mapping_clock();
        let meta = if clock.is_some() {
            slots_with_ages(nslabs)
        } else {
            nslabs
        };
        // An empty entry, one whose slot metadata is large enough first (a transient pool
        // may need more than the entries' chunks had).
        let holds = |e: &Entry<M>| {
            // SAFETY: only the holder of `busy` writes `slots`.
            unsafe { &*e.slots.get() }.is_none_or(|(_, len, _)| len >= meta)
        };
        let empty = |e: &&Entry<M>| e.gate.state() == EMPTY;
        let (id, e) = g
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| empty(e))
            .find(|(_, e)| holds(e))
            .or_else(|| g.entries.iter().enumerate().find(|(_, e)| empty(e)))
            .ok_or(GrowthError::PoolLimit {
                pools,
                max: limits.max_pools,
            })?;
        let atomic = g.hook.in_atomic();
        let slots = g.slots_for(e, meta, atomic).ok_or(GrowthError::NoSlots {
            nslabs: meta,
            atomic,
        })?;
        let phys = g
            .hook
            .alloc_pages(order, atomic)
            .ok_or(GrowthError::NoPages { order, atomic })?;
        let free = || {
            // SAFETY: the pages were just allocated with this order and nothing else uses
            // them (each path calls this once, instead of using them).
            unsafe { g.hook.free_pages(phys, order) }
        };
        if !phys.is_aligned(chunk) || phys.checked_last(chunk).is_none() {
            free();
            return Err(GrowthError::Misaligned { phys, order });
        }
        let limit_ok = |b: BusAddr| {
            bits >= 64
                || b.as_u64()
                    .checked_add(chunk - 1)
                    .is_some_and(|t| t >> bits == 0)
        };
        let (bus, exchanged) = match self.contiguous_bus(phys, chunk) {
            Ok(b) if limit_ok(b) && b.is_aligned(IO_TLB_SEGMENT_BYTES as u64) => (b, false),
            _ => {
                // SAFETY: the pages are the hook's, aligned to their size, used by nobody.
                match unsafe { self.platform.create_contiguous_region(phys, order, bits) } {
                    Ok(b) => (b, true),
                    Err(source) if source.damage().is_some() => {
                        g.hook.quarantine(phys, order);
                        return Err(GrowthError::Damaged { source });
                    }
                    Err(source) => {
                        free();
                        return Err(GrowthError::Contiguous {
                            address_bits: bits,
                            source,
                        });
                    }
                }
            }
        };
        let undo = |err: GrowthError| match self.give_back(g, phys, order, exchanged) {
            Err(GiveBack::Damaged(source)) => GrowthError::Damaged { source },
            Err(GiveBack::Kept(_)) => {
                // Still contiguous: the pages are the domain's own all the same, so they go
                // back to the kernel rather than stay lost.
                free();
                err
            }
            Ok(()) => err,
        };
        if !limit_ok(bus) {
            return Err(undo(GrowthError::Unreachable {
                phys,
                bus,
                address_bits: bits,
            }));
        }
        // As many areas as the first pool, unless an area would be too short for the
        // mapping this growth is for (a run never crosses an area; one slot of slack for
        // the kept offset).
        let mut nareas = if transient {
            1
        } else {
            limit_nareas(first.nareas(), nslabs)
        };
        while nareas > 1 && (nslabs / nareas - 1) * IO_TLB_SIZE < need {
            nareas /= 2;
        }
        let Some(mem) = self.growth.pool_memory(first.memory()) else {
            return Err(undo(GrowthError::Pool { phys }));
        };
        // SAFETY: the chunk is the hook's pages, given to this pool alone until it is given
        // back, and reached by the first pool's memory (the hook's contract).
        let pool = unsafe { BouncePool::new(mem, phys, nslabs, nareas, slots) };
        let Ok(mut pool) = pool else {
            return Err(undo(GrowthError::Pool { phys }));
        };
        pool.set_irq_hook(first.irq_hook());
        if let Some(clock) = clock
            && pool.set_mapping_clock(clock).is_err()
        {
            return Err(undo(GrowthError::Pool { phys }));
        }
        let Ok(top) = super::check_pool(&self.platform, &pool) else {
            return Err(undo(GrowthError::Pool { phys }));
        };
        // The chunk is one bus-contiguous range: its segments are joined, so a grown pool
        // holds mappings up to its size (less what an area or the device's boundary cuts).
        super::learn_joins(&self.platform, &mut pool);
        // SAFETY: the entry is EMPTY and we hold `busy`: no user is inside it (a user enters
        // only a LIVE entry) and no other writer exists.
        unsafe {
            *e.pool.get() = Some(pool);
            *e.chunk.get() = Chunk {
                phys,
                order,
                exchanged,
                idle_since: None,
                maps_seen: 0,
            };
        }
        e.bus_top.store(top.as_u64(), Ordering::Relaxed);
        e.transient.store(transient, Ordering::Relaxed);
        let end = phys.as_u64() + chunk;
        // CAST: ids are below MAX_GROWN_POOLS <= 255.
        g.index.write(self.irq(), |v| {
            let _ = v.try_push((phys.as_u64(), end, id as u8));
        });
        e.gate.publish();
        let now = g.bytes.fetch_add(chunk, Ordering::Relaxed) + chunk;
        g.peak.fetch_max(now, Ordering::Relaxed);
        g.added.fetch_add(1, Ordering::Relaxed);
        if transient {
            g.transient_added.fetch_add(1, Ordering::Relaxed);
        }
        Ok(id)
    }
}

/// The bytes of `2^order` pages.
const fn order_bytes(order: u32) -> usize {
    1 << (order + XEN_PAGE_SHIFT)
}

/// What [`DmaEngine::release`] did with a pool.
enum Release {
    /// Still alive: a user was inside or a mapping lives.
    Stayed,
    /// Given back (with the error when the give-back damaged it: quarantined).
    Removed(Option<PlatformError>),
    /// The give-back failed; the pool is alive again.
    Kept(PlatformError),
}

/// The parameters of a streaming map the grown pools may take.
pub(super) struct Request<'a> {
    pub(super) dev: &'a Device,
    pub(super) size: usize,
    pub(super) dir: DmaDirection,
    pub(super) attrs: DmaAttrs,
    pub(super) reason: BounceReason,
}

/// The original of a streaming map, and how a pool takes and gives back its bounce: a
/// `map_page`'s physical range ([`PageOriginal`]) or a `map_buffer`'s pointer.
pub(super) trait Bouncer<M: PhysMemory> {
    /// Takes slots in `pool` and copies the original in; the bounce address.
    ///
    /// # Safety
    ///
    /// As the entry point's for the original.
    unsafe fn take<S: AsRef<[Slot]>>(
        &self,
        pool: &BouncePool<M, S>,
        req: &Request<'_>,
        cpu: usize,
    ) -> Result<PhysAddr, PoolError>;

    /// Gives back slots `take` just took, copying nothing back.
    fn undo<S: AsRef<[Slot]>>(&self, pool: &BouncePool<M, S>, req: &Request<'_>, tlb: PhysAddr);

    /// The error of a bounce the pools refused with `source`.
    fn refused(&self, req: &Request<'_>, source: PoolError) -> DmaError;
}

/// The original of a `map_page`: `req.size` bytes at a physical address.
pub(super) struct PageOriginal(pub(super) PhysAddr);

impl<M: PhysMemory> Bouncer<M> for PageOriginal {
    unsafe fn take<S: AsRef<[Slot]>>(
        &self,
        pool: &BouncePool<M, S>,
        req: &Request<'_>,
        cpu: usize,
    ) -> Result<PhysAddr, PoolError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { pool.map(req.dev, self.0, req.size, 0, req.dir, req.attrs, cpu) }
    }

    fn undo<S: AsRef<[Slot]>>(&self, pool: &BouncePool<M, S>, req: &Request<'_>, tlb: PhysAddr) {
        let attrs = req.attrs | DmaAttrs::SKIP_CPU_SYNC;
        let _ = pool.unmap(req.dev, tlb, req.size, req.dir, attrs);
    }

    fn refused(&self, req: &Request<'_>, source: PoolError) -> DmaError {
        DmaError::Bounce {
            phys: self.0,
            size: req.size,
            reason: req.reason,
            source,
        }
    }
}

impl<H: GrowthHook, M: PhysMemory> Growth<H, M> {
    /// Counts a growth that did not happen: refused by the limits, or failed.
    fn count_failure(&self, cause: &GrowthError) {
        let counter = match cause {
            GrowthError::PoolLimit { .. } | GrowthError::ByteLimit { .. } => &self.refused,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a give-back failed.
enum GiveBack {
    /// The region is still contiguous and ours.
    Kept(PlatformError),
    /// The region is damaged and quarantined.
    Damaged(PlatformError),
}

const _: () = assert!(MAX_GROWN_POOLS <= 255);
const _: () = assert!(XEN_PAGE_SIZE == 4096);
