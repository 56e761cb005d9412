//! The foreign-mapping table: which of dom0's frames hold another domain's pages, and where
//! those pages really are.
//!
//! An arm64 dom0 is mapped 1:1 (its frame `n` is machine frame `n`), except for the pages it
//! grant-maps from other domains: those sit at some dom0 frame while their machine frame is
//! elsewhere. Linux keeps them in an rbtree of `(pfn, mfn, nr_pages)` under an rwlock
//! (`arch/arm/xen/p2m.c`). This module keeps them in an array sorted by `pfn`:
//!
//! - lookup is a binary search, O(log n), under a shared lock whose readers, given a CPU hint
//!   ([`ForeignTable::with_cpu_hint`]), write only their own CPU's cache line (translation
//!   runs on every DMA map), with a lock-free fast path when the table is empty;
//! - insert and remove keep the array sorted (O(log n) search plus a `memmove` of the tail);
//! - entries never overlap: adding one that overlaps is an error
//!   ([`ForeignTableError::Overlap`]), never a silent overwrite.
//!
//! One generic [`ForeignTable`] works over two storages: [`BoundedForeignTable`] keeps up to
//! `N` entries in an [`ArrayVec`] without a heap (a `static` works, see
//! [`BoundedForeignTable::new`]); with the `alloc` feature, `UnboundedForeignTable` keeps
//! them in a `Vec` and reports allocation failure as an error.

use arrayvec::ArrayVec;
use core::fmt;
use swiotlb_core::lock::atomic::{AtomicUsize, Ordering};
use swiotlb_core::lock::{IrqHook, ReadGuard, RwSpinLock, const_fn_unless_loom};
use swiotlb_core::{Bfn, Pfn};

#[cfg(feature = "alloc")]
use alloc::vec::Vec;

/// The exclusive end (raw frame number) of a range; at most `Pfn::MAX + 1`, so it fits.
type FrameEnd = u64;

/// One foreign mapping: `nr_pages` frames from `pfn` hold the machine frames from `mfn`.
///
/// # Invariants
///
/// `nr_pages >= 1`, and both `pfn + nr_pages - 1` and `mfn + nr_pages - 1` are valid frame
/// numbers (at most [`Pfn::MAX`] and [`Bfn::MAX`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ForeignEntry {
    pfn: Pfn,
    mfn: Bfn,
    nr_pages: u64,
}

impl ForeignEntry {
    /// Describes `nr_pages` dom0 frames from `pfn` holding the machine frames from `mfn`.
    ///
    /// # Errors
    ///
    /// [`ForeignTableError::ZeroPages`] for `nr_pages == 0`, [`ForeignTableError::Overflow`]
    /// if either range passes the largest frame number.
    pub const fn new(pfn: Pfn, mfn: Bfn, nr_pages: u64) -> Result<Self, ForeignTableError> {
        if nr_pages == 0 {
            return Err(ForeignTableError::ZeroPages { pfn });
        }
        let fits =
            pfn.checked_add(nr_pages - 1).is_some() && mfn.checked_add(nr_pages - 1).is_some();
        if !fits {
            return Err(ForeignTableError::Overflow { pfn, mfn, nr_pages });
        }
        // INVARIANT: checked just above.
        Ok(Self { pfn, mfn, nr_pages })
    }

    /// The first dom0 frame.
    #[inline]
    #[must_use]
    pub const fn pfn(&self) -> Pfn {
        self.pfn
    }

    /// The machine (bus) frame of the first dom0 frame.
    #[inline]
    #[must_use]
    pub const fn mfn(&self) -> Bfn {
        self.mfn
    }

    /// The number of frames.
    #[inline]
    #[must_use]
    pub const fn nr_pages(&self) -> u64 {
        self.nr_pages
    }

    /// The raw frame number one past the last dom0 frame.
    #[inline]
    const fn end(&self) -> FrameEnd {
        // Cannot overflow: the invariant bounds it by Pfn::MAX + 1 < 2^52.
        self.pfn.as_u64() + self.nr_pages
    }

    /// Whether `pfn` is one of this entry's dom0 frames.
    #[inline]
    #[must_use]
    pub const fn contains(&self, pfn: Pfn) -> bool {
        pfn.as_u64() >= self.pfn.as_u64() && pfn.as_u64() < self.end()
    }

    /// The machine frame of `pfn`, if it is one of this entry's frames.
    #[inline]
    #[must_use]
    pub const fn translate(&self, pfn: Pfn) -> Option<Bfn> {
        if self.contains(pfn) {
            // Cannot fail: the invariant makes every mfn of the entry valid.
            self.mfn.checked_add(pfn.as_u64() - self.pfn.as_u64())
        } else {
            None
        }
    }
}

impl fmt::Debug for ForeignEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ForeignEntry({:#x}..+{} -> mfn {:#x})",
            self.pfn.as_u64(),
            self.nr_pages,
            self.mfn.as_u64()
        )
    }
}

impl fmt::Display for ForeignEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} + {} frames -> {}", self.pfn, self.nr_pages, self.mfn)
    }
}

/// Why the foreign table refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForeignTableError {
    /// An entry of zero frames.
    #[error("foreign entry at {pfn} has no frames")]
    ZeroPages {
        /// Its first frame.
        pfn: Pfn,
    },
    /// An entry whose dom0 or machine range passes the largest frame number.
    #[error("foreign entry {pfn} -> {mfn} of {nr_pages} frames passes the largest frame number")]
    Overflow {
        /// Its first dom0 frame.
        pfn: Pfn,
        /// Its first machine frame.
        mfn: Bfn,
        /// Its size in frames.
        nr_pages: u64,
    },
    /// The new entry overlaps one already in the table.
    #[error("foreign entry {new} overlaps {existing}")]
    Overlap {
        /// The entry refused.
        new: ForeignEntry,
        /// The entry in the table it overlaps.
        existing: ForeignEntry,
    },
    /// A bounded table is full.
    #[error("foreign table full ({capacity} entries)")]
    Full {
        /// The table's capacity.
        capacity: usize,
    },
    /// An unbounded table could not grow.
    #[error("out of memory growing the foreign table beyond {len} entries")]
    OutOfMemory {
        /// The number of entries when growing failed.
        len: usize,
    },
    /// No entry starts at (or contains) this frame.
    #[error("no foreign entry at {pfn}")]
    NotFound {
        /// The frame asked for.
        pfn: Pfn,
    },
    /// The frame lies inside an entry but is not its first frame; remove the entry by its
    /// first frame.
    #[error("{pfn} lies inside foreign entry {entry} and is not its first frame")]
    NotEntryStart {
        /// The frame asked for.
        pfn: Pfn,
        /// The entry containing it.
        entry: ForeignEntry,
    },
}

mod sealed {
    /// Keeps [`super::EntryStorage`] implementable only here: the table's correctness (and
    /// with it what devices are told) depends on the storage behaving as documented.
    pub trait Sealed {}
}

/// Where a [`ForeignTable`] keeps its entries: an [`ArrayVec`] (bounded, no heap) or, with
/// the `alloc` feature, a `Vec`. Sealed: the table relies on exactly these behaviours.
pub trait EntryStorage: sealed::Sealed {
    /// The entries, in the order the table keeps them.
    fn entries(&self) -> &[ForeignEntry];

    /// The maximum number of entries, or `None` if only memory limits it.
    fn capacity_limit(&self) -> Option<usize>;

    /// Inserts `entry` at `index` (`index <= len`), shifting the tail up.
    ///
    /// # Errors
    ///
    /// [`ForeignTableError::Full`] or [`ForeignTableError::OutOfMemory`]; the storage is then
    /// unchanged.
    fn try_insert_at(&mut self, index: usize, entry: ForeignEntry)
    -> Result<(), ForeignTableError>;

    /// Removes and returns the entry at `index`, or `None` if `index >= len`.
    fn remove_at(&mut self, index: usize) -> Option<ForeignEntry>;

    /// Removes every entry.
    fn clear_all(&mut self);
}

impl<const N: usize> sealed::Sealed for ArrayVec<ForeignEntry, N> {}

impl<const N: usize> EntryStorage for ArrayVec<ForeignEntry, N> {
    fn entries(&self) -> &[ForeignEntry] {
        self.as_slice()
    }

    fn capacity_limit(&self) -> Option<usize> {
        Some(N)
    }

    fn try_insert_at(
        &mut self,
        index: usize,
        entry: ForeignEntry,
    ) -> Result<(), ForeignTableError> {
        if index > self.len() {
            // The table never asks this; refuse rather than let ArrayVec panic.
            return Err(ForeignTableError::Full { capacity: N });
        }
        self.try_insert(index, entry)
            .map_err(|_| ForeignTableError::Full { capacity: N })
    }

    fn remove_at(&mut self, index: usize) -> Option<ForeignEntry> {
        self.pop_at(index)
    }

    fn clear_all(&mut self) {
        self.clear();
    }
}

#[cfg(feature = "alloc")]
impl sealed::Sealed for Vec<ForeignEntry> {}

#[cfg(feature = "alloc")]
impl EntryStorage for Vec<ForeignEntry> {
    fn entries(&self) -> &[ForeignEntry] {
        self.as_slice()
    }

    fn capacity_limit(&self) -> Option<usize> {
        None
    }

    fn try_insert_at(
        &mut self,
        index: usize,
        entry: ForeignEntry,
    ) -> Result<(), ForeignTableError> {
        if index > self.len() {
            // The table never asks this; refuse rather than let Vec panic.
            return Err(ForeignTableError::OutOfMemory { len: self.len() });
        }
        self.try_reserve(1)
            .map_err(|_| ForeignTableError::OutOfMemory { len: self.len() })?;
        self.insert(index, entry);
        Ok(())
    }

    fn remove_at(&mut self, index: usize) -> Option<ForeignEntry> {
        (index < self.len()).then(|| self.remove(index))
    }

    fn clear_all(&mut self) {
        self.clear();
    }
}

/// The table of foreign mappings of a 1:1 dom0.
///
/// Safe to share between CPUs: lookups take a shared lock and do not block each other;
/// [`insert`](Self::insert) and [`remove`](Self::remove) take it exclusively (a
/// writer-preferring [`RwSpinLock`], whose readers count on their own CPU's cache line once
/// the table has a CPU hint: [`with_cpu_hint`](Self::with_cpu_hint)). Both mask local interrupts through the table's
/// [`IrqHook`] ([`set_irq_hook`](Self::set_irq_hook), [`with_irq_hook`](Self::with_irq_hook));
/// with a hook that masks, every method may be called from interrupt context (see
/// [`swiotlb_core::lock`]). Without one, an interrupt-time lookup nested in a lookup of the
/// same CPU deadlocks as soon as a writer waits.
///
/// # Invariants
///
/// The entries are sorted by `pfn` and no two overlap. `len` equals the number of entries
/// whenever the lock is free.
pub struct ForeignTable<S> {
    entries: RwSpinLock<S>,
    len: AtomicUsize,
}

/// The storage of a [`BoundedForeignTable`]: up to `N` entries in place, without a heap.
///
/// It is the `S` of [`ForeignTable<S>`] and of the platform, so a kernel names its platform
/// and engine types with it and needs no `arrayvec` dependency of its own:
///
/// ```
/// use swiotlb_xen_arm64::{Arm64Platform, BoundedForeignStorage, BoundedForeignTable};
/// use swiotlb_xen_arm64::ForeignTable;
///
/// static FOREIGN: BoundedForeignTable<64> = BoundedForeignTable::new();
/// let table: &ForeignTable<BoundedForeignStorage<64>> = &FOREIGN;
/// assert_eq!(table.capacity(), Some(64));
///
/// // The platform of a kernel with its hypercall `H`, cache hook `C` and memory `M`:
/// type KernelPlatform<H, C, M> = Arm64Platform<'static, H, C, M, BoundedForeignStorage<64>>;
/// ```
pub type BoundedForeignStorage<const N: usize> = ArrayVec<ForeignEntry, N>;

/// A foreign table of at most `N` entries, without a heap.
pub type BoundedForeignTable<const N: usize> = ForeignTable<BoundedForeignStorage<N>>;

/// The storage of an [`UnboundedForeignTable`] (feature `alloc`).
#[cfg(feature = "alloc")]
pub type UnboundedForeignStorage = Vec<ForeignEntry>;

/// A foreign table limited only by memory (feature `alloc`).
#[cfg(feature = "alloc")]
pub type UnboundedForeignTable = ForeignTable<UnboundedForeignStorage>;

impl<const N: usize> ForeignTable<ArrayVec<ForeignEntry, N>> {
    const_fn_unless_loom! {
        /// An empty table of capacity `N`, usable in a `static`:
        ///
        /// ```
        /// use swiotlb_xen_arm64::BoundedForeignTable;
        /// static FOREIGN: BoundedForeignTable<1024> = BoundedForeignTable::new();
        /// assert!(FOREIGN.is_empty());
        /// assert_eq!(FOREIGN.capacity(), Some(1024));
        /// ```
        #[must_use]
        pub fn new() -> Self {
            Self {
                entries: RwSpinLock::new(ArrayVec::new_const()),
                len: AtomicUsize::new(0),
            }
        }
    }
}

impl<const N: usize> Default for ForeignTable<ArrayVec<ForeignEntry, N>> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "alloc")]
impl ForeignTable<Vec<ForeignEntry>> {
    const_fn_unless_loom! {
        /// An empty table that grows on the heap.
        #[must_use]
        pub fn new() -> Self {
            Self {
                entries: RwSpinLock::new(Vec::new()),
                len: AtomicUsize::new(0),
            }
        }
    }

    /// An empty table with room for `capacity` entries before it allocates again.
    ///
    /// # Errors
    ///
    /// [`ForeignTableError::OutOfMemory`] if the allocation fails.
    pub fn try_with_capacity(capacity: usize) -> Result<Self, ForeignTableError> {
        let mut v = Vec::new();
        v.try_reserve(capacity)
            .map_err(|_| ForeignTableError::OutOfMemory { len: 0 })?;
        Ok(Self {
            entries: RwSpinLock::new(v),
            len: AtomicUsize::new(0),
        })
    }
}

#[cfg(feature = "alloc")]
impl Default for ForeignTable<Vec<ForeignEntry>> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> ForeignTable<S> {
    /// The table with `hook` as the interrupt hook of its lock, usable in a `static`:
    ///
    /// ```
    /// use swiotlb_core::IrqHook;
    /// use swiotlb_xen_arm64::BoundedForeignTable;
    /// # fn local_irq_save() -> usize { 0 }
    /// # fn local_irq_restore(_: usize) {}
    /// static FOREIGN: BoundedForeignTable<1024> = BoundedForeignTable::new()
    ///     .with_irq_hook(IrqHook::new(local_irq_save, local_irq_restore));
    /// assert!(FOREIGN.lookup(swiotlb_core::Pfn::new(1)).is_none());
    /// ```
    #[must_use]
    pub const fn with_irq_hook(mut self, hook: IrqHook) -> Self {
        self.entries.set_irq_hook(hook);
        self
    }

    /// Sets the interrupt hook of the table's lock: how to mask local interrupts while
    /// readers and writers hold or await it (see [`swiotlb_core::lock`]). The default,
    /// [`IrqHook::NONE`], masks nothing.
    pub const fn set_irq_hook(&mut self, hook: IrqHook) {
        self.entries.set_irq_hook(hook);
    }

    /// The interrupt hook of the table's lock.
    #[must_use]
    pub const fn irq_hook(&self) -> IrqHook {
        self.entries.irq_hook()
    }

    /// The table with `cpu` as the CPU hint of its lock, usable in a `static`: each lookup
    /// counts itself as a reader on its own CPU's cache line (one of
    /// [`READER_SHARDS`](swiotlb_core::lock::READER_SHARDS)), so lookups on different CPUs,
    /// which every DMA map makes while the table is not empty, write no shared line. Without
    /// a hint every lookup counts on the same line. The hint is called with interrupts
    /// masked (through the table's hook); any value is correct.
    ///
    /// ```
    /// use swiotlb_xen_arm64::BoundedForeignTable;
    /// # fn smp_processor_id() -> usize { 0 }
    /// static FOREIGN: BoundedForeignTable<1024> =
    ///     BoundedForeignTable::new().with_cpu_hint(smp_processor_id);
    /// assert!(FOREIGN.lookup(swiotlb_core::Pfn::new(1)).is_none());
    /// ```
    #[must_use]
    pub const fn with_cpu_hint(mut self, cpu: fn() -> usize) -> Self {
        self.entries.set_cpu_hint(cpu);
        self
    }

    /// Sets the CPU hint of the table's lock (see [`with_cpu_hint`](Self::with_cpu_hint)).
    pub const fn set_cpu_hint(&mut self, cpu: fn() -> usize) {
        self.entries.set_cpu_hint(cpu);
    }
}

impl<S: EntryStorage> ForeignTable<S> {
    /// Adds a foreign mapping of `nr_pages` frames from `pfn` to machine frames from `mfn`
    /// (Linux's `__set_phys_to_machine_multi` with a valid mfn).
    ///
    /// # Errors
    ///
    /// As [`ForeignEntry::new`]; [`ForeignTableError::Overlap`] if any of the frames is
    /// already in the table (the table is then unchanged); [`ForeignTableError::Full`] or
    /// [`ForeignTableError::OutOfMemory`] when there is no room.
    ///
    /// # Safety
    ///
    /// Translations from this table are handed to devices. For as long as the entry stays in
    /// the table, the `nr_pages` frames from `pfn` must be mapped to the machine frames from
    /// `mfn` (as a grant mapping of this domain with `GNTMAP_host_map` is), or be used for no
    /// DMA at all.
    pub unsafe fn insert(
        &self,
        pfn: Pfn,
        mfn: Bfn,
        nr_pages: u64,
    ) -> Result<(), ForeignTableError> {
        // SAFETY: the caller's promise for these frames is the one `insert_entry` needs.
        unsafe { self.insert_entry(ForeignEntry::new(pfn, mfn, nr_pages)?) }
    }

    /// Adds `entry`; see [`insert`](Self::insert).
    ///
    /// # Errors
    ///
    /// As for [`insert`](Self::insert).
    ///
    /// # Safety
    ///
    /// As for [`insert`](Self::insert).
    pub unsafe fn insert_entry(&self, entry: ForeignEntry) -> Result<(), ForeignTableError> {
        let mut guard = self.entries.write();
        let entries = guard.entries();
        if let Some(existing) = find_overlap(entries, entry.pfn, entry.end()) {
            return Err(ForeignTableError::Overlap {
                new: entry,
                existing,
            });
        }
        let index = entries.partition_point(|e| e.pfn < entry.pfn);
        guard.try_insert_at(index, entry)?;
        // INVARIANT: sorted and disjoint (checked above); `len` follows under the lock.
        self.len.store(guard.entries().len(), Ordering::Release);
        Ok(())
    }

    /// Removes the entry whose first frame is `pfn` and returns it (Linux's
    /// `__set_phys_to_machine_multi` with `INVALID_P2M_ENTRY`, which however removes the
    /// entry containing `pfn` wherever it starts).
    ///
    /// # Errors
    ///
    /// [`ForeignTableError::NotEntryStart`] if `pfn` lies inside an entry that starts
    /// earlier (nothing is removed), [`ForeignTableError::NotFound`] if no entry contains it.
    ///
    /// # Safety
    ///
    /// Once removed, the frames translate 1:1 again. The caller must ensure that from now on
    /// they are used for DMA only if they really hold dom0's own memory again (the grant is
    /// unmapped and the frames repopulated), or not at all.
    pub unsafe fn remove(&self, pfn: Pfn) -> Result<ForeignEntry, ForeignTableError> {
        let mut guard = self.entries.write();
        let entries = guard.entries();
        let index = entries.partition_point(|e| e.pfn <= pfn);
        let Some(index) = index.checked_sub(1) else {
            return Err(ForeignTableError::NotFound { pfn });
        };
        let entry = entries[index];
        if entry.pfn != pfn {
            return Err(if entry.contains(pfn) {
                ForeignTableError::NotEntryStart { pfn, entry }
            } else {
                ForeignTableError::NotFound { pfn }
            });
        }
        let removed = guard
            .remove_at(index)
            .ok_or(ForeignTableError::NotFound { pfn })?;
        self.len.store(guard.entries().len(), Ordering::Release);
        Ok(removed)
    }

    /// Removes every entry.
    ///
    /// # Safety
    ///
    /// As for [`remove`](Self::remove), for every entry.
    pub unsafe fn clear(&self) {
        let mut guard = self.entries.write();
        guard.clear_all();
        self.len.store(0, Ordering::Release);
    }

    /// The machine frame of `pfn` if it is a foreign frame, `None` if it is dom0's own (Linux's
    /// `__pfn_to_mfn`, with the emptiness fast path of `pfn_to_bfn`).
    #[inline]
    #[must_use]
    pub fn lookup(&self, pfn: Pfn) -> Option<Bfn> {
        if self.is_empty() {
            return None;
        }
        self.read().lookup(pfn)
    }

    /// The entry containing `pfn`, if any.
    #[must_use]
    pub fn entry_containing(&self, pfn: Pfn) -> Option<ForeignEntry> {
        if self.is_empty() {
            return None;
        }
        self.read().entry_containing(pfn)
    }

    /// Whether the `nr_frames` frames from `first` are contiguous on the bus once translated
    /// (Linux's `!range_straddles_page_boundary`). Always true for fewer than two frames; false
    /// if the range passes the largest frame number.
    #[must_use]
    pub fn is_bus_contiguous(&self, first: Pfn, nr_frames: u64) -> bool {
        if nr_frames <= 1 {
            return true;
        }
        if first.checked_add(nr_frames - 1).is_none() {
            return false;
        }
        if self.is_empty() {
            return true;
        }
        self.read().is_bus_contiguous(first, nr_frames)
    }

    /// The first entry overlapping the `nr_frames` frames from `first`, if any.
    #[must_use]
    pub fn first_overlap(&self, first: Pfn, nr_frames: u64) -> Option<ForeignEntry> {
        if nr_frames == 0 || self.is_empty() {
            return None;
        }
        let end = first.as_u64().saturating_add(nr_frames);
        find_overlap(self.read().entries(), first, end)
    }

    /// Takes the shared lock for several lookups in a row.
    ///
    /// Do not call other methods of the table (or a platform using it) while holding the
    /// view: if a writer is waiting, the nested shared lock waits for it, and it waits for
    /// the view to be dropped. Local interrupts stay masked (through the table's hook) until
    /// the view is dropped, so an interrupt handler cannot nest a lookup inside it.
    pub fn read(&self) -> ForeignTableView<'_, S> {
        ForeignTableView {
            guard: self.entries.read(),
        }
    }

    /// Takes the shared lock if no writer holds it or waits for it, without spinning: for an
    /// interrupt handler that would rather fail than wait.
    pub fn try_read(&self) -> Option<ForeignTableView<'_, S>> {
        self.entries
            .try_read()
            .map(|guard| ForeignTableView { guard })
    }

    /// The number of entries (a snapshot).
    #[inline]
    #[must_use]
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether the table has no entry (a snapshot, read without the lock).
    #[inline]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The maximum number of entries, `None` for a table limited only by memory.
    #[must_use]
    pub fn capacity(&self) -> Option<usize> {
        self.entries.read().capacity_limit()
    }
}

impl<S: EntryStorage> fmt::Debug for ForeignTable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForeignTable")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// The table under its shared lock: consistent lookups until dropped.
#[must_use = "the lock is released as soon as the view is dropped"]
pub struct ForeignTableView<'a, S> {
    guard: ReadGuard<'a, S>,
}

impl<S: EntryStorage> ForeignTableView<'_, S> {
    /// The entries, sorted by first frame.
    #[must_use]
    pub fn entries(&self) -> &[ForeignEntry] {
        self.guard.entries()
    }

    /// The entry containing `pfn`, if any.
    #[must_use]
    pub fn entry_containing(&self, pfn: Pfn) -> Option<ForeignEntry> {
        let entries = self.entries();
        let index = entries.partition_point(|e| e.pfn <= pfn).checked_sub(1)?;
        let entry = entries[index];
        entry.contains(pfn).then_some(entry)
    }

    /// The machine frame of `pfn` if it is a foreign frame.
    #[must_use]
    pub fn lookup(&self, pfn: Pfn) -> Option<Bfn> {
        self.entry_containing(pfn)?.translate(pfn)
    }

    /// See [`ForeignTable::is_bus_contiguous`]. Walks the entries the range meets, not its
    /// frames: O(log n + entries in the range).
    #[must_use]
    pub fn is_bus_contiguous(&self, first: Pfn, nr_frames: u64) -> bool {
        if nr_frames <= 1 {
            return true;
        }
        if first.checked_add(nr_frames - 1).is_none() {
            return false;
        }
        let entries = self.entries();
        let mut cur = first.as_u64();
        // Cannot overflow: checked above that the last frame is valid.
        let end = cur + nr_frames;
        let mut index = entries.partition_point(|e| e.pfn.as_u64() <= cur);
        let mut expected: Option<u64> = None;
        while cur < end {
            let (bus, segment_end) = match index.checked_sub(1).map(|i| entries[i]) {
                Some(e) if e.end() > cur => (e.mfn.as_u64() + (cur - e.pfn.as_u64()), e.end()),
                _ => (
                    cur,
                    entries.get(index).map_or(FrameEnd::MAX, |e| e.pfn.as_u64()),
                ),
            };
            if expected.is_some_and(|x| x != bus) {
                return false;
            }
            let segment_end = segment_end.min(end);
            // Cannot overflow: both ranges are bounded by 2^52 (entry invariant).
            expected = Some(bus + (segment_end - cur));
            cur = segment_end;
            while entries.get(index).is_some_and(|e| e.pfn.as_u64() <= cur) {
                index += 1;
            }
        }
        true
    }
}

/// The first entry overlapping the frames `[pfn, end)` of a sorted, disjoint slice.
fn find_overlap(entries: &[ForeignEntry], pfn: Pfn, end: FrameEnd) -> Option<ForeignEntry> {
    let index = entries.partition_point(|e| e.pfn < pfn);
    if let Some(prev) = index.checked_sub(1).map(|i| entries[i])
        && prev.end() > pfn.as_u64()
    {
        return Some(prev);
    }
    entries
        .get(index)
        .copied()
        .filter(|next| next.pfn.as_u64() < end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TableTestExt;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::thread;
    use std::vec::Vec;

    std::thread_local! {
        /// This thread's stand-in for the CPU's interrupt flag and how often it was masked.
        static IRQ: core::cell::Cell<(bool, usize)> = const { core::cell::Cell::new((false, 0)) };
    }

    fn irq_save() -> usize {
        let (masked, n) = IRQ.with(core::cell::Cell::get);
        IRQ.with(|c| c.set((true, n + 1)));
        usize::from(masked)
    }

    fn irq_restore(prev: usize) {
        IRQ.with(|c| c.set((prev != 0, c.get().1)));
    }

    static HOOKED: BoundedForeignTable<4> =
        BoundedForeignTable::new().with_irq_hook(IrqHook::new(irq_save, irq_restore));

    #[test]
    fn readers_and_writers_mask_through_the_hook() {
        let saves = IRQ.with(core::cell::Cell::get).1;
        irq_restore(HOOKED.irq_hook().save());
        assert_eq!(
            IRQ.with(core::cell::Cell::get),
            (false, saves + 1),
            "no hook"
        );
        let saves = saves + 1;
        HOOKED.ins(Pfn::new(0x10), Bfn::new(0x99), 1).unwrap();
        assert_eq!(HOOKED.lookup(Pfn::new(0x10)), Some(Bfn::new(0x99)));
        {
            let view = HOOKED.read();
            assert!(
                IRQ.with(core::cell::Cell::get).0,
                "a view left interrupts enabled"
            );
            assert_eq!(view.entries().len(), 1);
        }
        // SAFETY: a test table no device sees.
        unsafe { HOOKED.clear() };
        let (masked, n) = IRQ.with(core::cell::Cell::get);
        assert!(!masked, "interrupts left masked");
        assert_eq!(
            n,
            saves + 4,
            "insert, lookup, read and clear each mask once"
        );
        let mut t = BoundedForeignTable::<1>::new();
        assert_eq!(t.irq_hook().save(), 0, "the default hook masks nothing");
        t.set_irq_hook(IrqHook::new(irq_save, irq_restore));
        assert_eq!(t.lookup(Pfn::new(1)), None);
        t.ins(Pfn::new(1), Bfn::new(2), 1).unwrap();
        assert_eq!(IRQ.with(core::cell::Cell::get).1, saves + 5);
    }

    fn pfn(n: u64) -> Pfn {
        Pfn::new(n)
    }
    fn bfn(n: u64) -> Bfn {
        Bfn::new(n)
    }

    #[test]
    fn empty_table_translates_nothing() {
        let t = BoundedForeignTable::<4>::new();
        assert!(t.is_empty());
        assert_eq!(t.lookup(pfn(0)), None);
        assert!(t.is_bus_contiguous(pfn(10), 100));
        assert_eq!(t.first_overlap(pfn(0), 10), None);
    }

    #[test]
    fn lookup_inside_multi_page_entries() {
        let t = BoundedForeignTable::<8>::new();
        t.ins(pfn(0x100), bfn(0x9000), 4).unwrap();
        t.ins(pfn(0x50), bfn(0x7000), 1).unwrap();
        t.ins(pfn(0x200), bfn(0x1), 16).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.lookup(pfn(0xff)), None);
        assert_eq!(t.lookup(pfn(0x100)), Some(bfn(0x9000)));
        assert_eq!(t.lookup(pfn(0x102)), Some(bfn(0x9002)));
        assert_eq!(t.lookup(pfn(0x103)), Some(bfn(0x9003)));
        assert_eq!(t.lookup(pfn(0x104)), None);
        assert_eq!(t.lookup(pfn(0x50)), Some(bfn(0x7000)));
        assert_eq!(t.lookup(pfn(0x20f)), Some(bfn(0x10)));
        assert_eq!(t.lookup(pfn(0x210)), None);
        let view = t.read();
        let starts: Vec<u64> = view.entries().iter().map(|e| e.pfn().as_u64()).collect();
        assert_eq!(starts, [0x50, 0x100, 0x200]);
    }

    #[test]
    fn overlap_is_refused_and_table_unchanged() {
        let t = BoundedForeignTable::<8>::new();
        t.ins(pfn(10), bfn(100), 5).unwrap(); // frames 10..15
        for (p, n) in [(10, 1), (14, 1), (8, 3), (12, 10), (5, 100)] {
            let err = t.ins(pfn(p), bfn(500), n).unwrap_err();
            assert!(
                matches!(err, ForeignTableError::Overlap { existing, .. } if existing.pfn() == pfn(10)),
                "({p}, {n}) gave {err:?}"
            );
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(pfn(12)), Some(bfn(102)));
        // Adjacent on both sides is fine.
        t.ins(pfn(9), bfn(1), 1).unwrap();
        t.ins(pfn(15), bfn(2), 1).unwrap();
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn invalid_entries_are_refused() {
        let t = BoundedForeignTable::<8>::new();
        assert_eq!(
            t.ins(pfn(1), bfn(1), 0),
            Err(ForeignTableError::ZeroPages { pfn: pfn(1) })
        );
        assert!(matches!(
            t.ins(Pfn::MAX, bfn(1), 2),
            Err(ForeignTableError::Overflow { .. })
        ));
        assert!(matches!(
            t.ins(pfn(1), Bfn::MAX, 2),
            Err(ForeignTableError::Overflow { .. })
        ));
        t.ins(Pfn::MAX, Bfn::MAX, 1).unwrap();
        assert_eq!(t.lookup(Pfn::MAX), Some(Bfn::MAX));
        assert!(!t.is_bus_contiguous(Pfn::MAX, 2));
    }

    #[test]
    fn bounded_capacity_is_an_error() {
        let t = BoundedForeignTable::<16>::new();
        for i in 0..16 {
            t.ins(pfn(i * 2), bfn(1000 + i), 1).unwrap();
        }
        assert_eq!(
            t.ins(pfn(1), bfn(5), 1),
            Err(ForeignTableError::Full { capacity: 16 })
        );
        assert_eq!(t.len(), 16);
        // Every entry is still there and still right.
        for i in 0..16 {
            assert_eq!(t.lookup(pfn(i * 2)), Some(bfn(1000 + i)));
            assert_eq!(t.lookup(pfn(i * 2 + 1)), None);
        }
        t.rm(pfn(6)).unwrap();
        t.ins(pfn(1), bfn(5), 1).unwrap();
        assert_eq!(t.len(), 16);
    }

    #[cfg_attr(miri, ignore)]
    #[test]
    fn bounded_table_full_at_tens_of_thousands() {
        const N: usize = 65_536;
        // 1.5 MiB: a static, as a kernel would place it, not the test thread's stack.
        static TABLE: BoundedForeignTable<N> = BoundedForeignTable::new();
        let t = &TABLE;
        for i in 0..N as u64 {
            t.ins(pfn(0x80000 + 2 * i), bfn(0x200000 + i), 1).unwrap();
        }
        assert_eq!(t.len(), N);
        assert_eq!(
            t.ins(pfn(0x10), bfn(1), 1),
            Err(ForeignTableError::Full { capacity: N })
        );
        let last = 0x80000 + 2 * (N as u64 - 1);
        assert_eq!(t.lookup(pfn(0x80000)), Some(bfn(0x200000)));
        assert_eq!(t.lookup(pfn(last)), Some(bfn(0x200000 + N as u64 - 1)));
        assert_eq!(t.lookup(pfn(last + 1)), None);
        assert_eq!(t.lookup(pfn(0x80001)), None);
        // Freeing one slot in the middle makes room for one more, in order.
        t.rm(pfn(0x80000 + 2 * 1000)).unwrap();
        t.ins(pfn(0x80000 + 2 * 1000 + 1), bfn(7), 1).unwrap();
        assert_eq!(t.lookup(pfn(0x80000 + 2 * 1000 + 1)), Some(bfn(7)));
        assert_eq!(
            t.lookup(pfn(0x80000 + 2 * 1001)),
            Some(bfn(0x200000 + 1001))
        );
        let view = t.read();
        assert!(view.entries().windows(2).all(|w| w[0].pfn() < w[1].pfn()));
        drop(view);
        t.clr();
        assert!(t.is_empty());
    }

    #[test]
    fn remove_by_first_frame() {
        let t = BoundedForeignTable::<8>::new();
        t.ins(pfn(10), bfn(100), 3).unwrap();
        assert_eq!(
            t.rm(pfn(11)),
            Err(ForeignTableError::NotEntryStart {
                pfn: pfn(11),
                entry: ForeignEntry::new(pfn(10), bfn(100), 3).unwrap()
            })
        );
        assert_eq!(
            t.rm(pfn(13)),
            Err(ForeignTableError::NotFound { pfn: pfn(13) })
        );
        assert_eq!(
            t.rm(pfn(9)),
            Err(ForeignTableError::NotFound { pfn: pfn(9) })
        );
        let e = t.rm(pfn(10)).unwrap();
        assert_eq!((e.pfn(), e.mfn(), e.nr_pages()), (pfn(10), bfn(100), 3));
        assert!(t.is_empty());
        assert_eq!(t.lookup(pfn(10)), None);
        assert_eq!(
            t.rm(pfn(10)),
            Err(ForeignTableError::NotFound { pfn: pfn(10) })
        );
    }

    #[test]
    fn bus_contiguity() {
        let t = BoundedForeignTable::<8>::new();
        // Frames 10..12 -> 500..502, 12..14 -> 502..504: contiguous across two entries.
        t.ins(pfn(10), bfn(500), 2).unwrap();
        t.ins(pfn(12), bfn(502), 2).unwrap();
        // Frame 20 -> 21: identity frame 19 then foreign 20 is not contiguous (19 -> 19, 20 -> 21).
        t.ins(pfn(20), bfn(21), 1).unwrap();
        assert!(t.is_bus_contiguous(pfn(10), 4));
        assert!(t.is_bus_contiguous(pfn(11), 2));
        assert!(!t.is_bus_contiguous(pfn(9), 2));
        assert!(!t.is_bus_contiguous(pfn(13), 2));
        assert!(t.is_bus_contiguous(pfn(0), 10));
        assert!(!t.is_bus_contiguous(pfn(19), 2));
        // 20 -> 21 then identity 21 -> 21: not contiguous either.
        assert!(!t.is_bus_contiguous(pfn(20), 2));
        assert!(t.is_bus_contiguous(pfn(20), 1));
        // A foreign entry that happens to continue the identity run is contiguous.
        t.ins(pfn(30), bfn(30), 1).unwrap();
        assert!(t.is_bus_contiguous(pfn(28), 5));
        assert_eq!(t.first_overlap(pfn(0), 11).map(|e| e.pfn()), Some(pfn(10)));
        assert_eq!(t.first_overlap(pfn(14), 6), None);
    }

    #[cfg(feature = "alloc")]
    #[test]
    fn unbounded_table_grows() {
        let t = UnboundedForeignTable::try_with_capacity(4).unwrap();
        assert_eq!(t.capacity(), None);
        for i in (0..1000u64).rev() {
            t.ins(pfn(i * 3), bfn(i), 2).unwrap();
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.lookup(pfn(2997)), Some(bfn(999)));
        assert_eq!(t.lookup(pfn(2998)), Some(bfn(1000)));
        assert_eq!(t.lookup(pfn(2999)), None);
        t.clr();
        assert!(t.is_empty());
    }

    #[cfg(feature = "alloc")]
    #[cfg_attr(miri, ignore)]
    #[test]
    fn hundred_thousand_entries() {
        // Entries of 1 to 3 frames with gaps, as grant mappings of several backends leave.
        let t = UnboundedForeignTable::new();
        let mut starts = Vec::new();
        let mut next = 0x40000u64;
        for i in 0..100_000u64 {
            let n = 1 + i % 3;
            t.ins(pfn(next), bfn(0x100_0000 + i * 4), n).unwrap();
            starts.push((next, n, 0x100_0000 + i * 4));
            next += n + i % 2;
        }
        assert_eq!(t.len(), 100_000);
        let view = t.read();
        for (k, &(p, n, m)) in starts.iter().enumerate().step_by(7) {
            assert_eq!(view.lookup(pfn(p)), Some(bfn(m)), "entry {k}");
            assert_eq!(
                view.lookup(pfn(p + n - 1)),
                Some(bfn(m + n - 1)),
                "entry {k}"
            );
            if k % 2 == 1 {
                // Odd entries are followed by a one-frame gap.
                assert_eq!(view.lookup(pfn(p + n)), None, "gap after entry {k}");
            }
        }
        drop(view);
        // Removing from the middle keeps the rest intact.
        let (p, _, _) = starts[50_000];
        t.rm(pfn(p)).unwrap();
        assert_eq!(t.lookup(pfn(p)), None);
        let (p, _, m) = starts[50_001];
        assert_eq!(t.lookup(pfn(p)), Some(bfn(m)));
    }

    #[test]
    fn concurrent_readers_and_a_writer() {
        // Frames 0..64 are always mapped; a writer adds and removes 1000.. underneath.
        let (rounds, reads) = if cfg!(miri) { (5, 5) } else { (500, 2000) };
        let t = Arc::new(BoundedForeignTable::<256>::new());
        for i in 0..64 {
            t.ins(pfn(i * 4), bfn(0x10_0000 + i), 1).unwrap();
        }
        let writer = {
            let t = Arc::clone(&t);
            thread::spawn(move || {
                for r in 0..rounds {
                    let p = pfn(1000 + (r % 50));
                    t.ins(p, bfn(0x20_0000 + r), 1).unwrap();
                    assert_eq!(t.rm(p).unwrap().mfn(), bfn(0x20_0000 + r));
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let t = Arc::clone(&t);
                thread::spawn(move || {
                    for k in 0..reads {
                        let i = k % 64;
                        assert_eq!(t.lookup(pfn(i * 4)), Some(bfn(0x10_0000 + i)));
                        assert_eq!(t.lookup(pfn(i * 4 + 1)), None);
                        if let Some(b) = t.lookup(pfn(1000 + k % 50)) {
                            assert!(b.as_u64() >= 0x20_0000);
                        }
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(t.len(), 64);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Insert(u64, u64, u64),
            Remove(u64),
            Lookup(u64),
            Contig(u64, u64),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0..200u64, 0..1000u64, 1..6u64).prop_map(|(p, m, n)| Op::Insert(p, m, n)),
                (0..200u64).prop_map(Op::Remove),
                (0..210u64).prop_map(Op::Lookup),
                (0..200u64, 0..12u64).prop_map(|(p, n)| Op::Contig(p, n)),
            ]
        }

        /// The model: frame -> (entry start, mfn), one key per frame.
        fn model_lookup(m: &BTreeMap<u64, (u64, u64)>, p: u64) -> Option<u64> {
            m.get(&p).map(|&(_, mfn)| mfn)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            // Proptest persists failures through the file system, which Miri isolates.
            #[cfg_attr(miri, ignore)]
            #[test]
            fn matches_btreemap_model(ops in proptest::collection::vec(op(), 1..80)) {
                let t = BoundedForeignTable::<32>::new();
                let mut m: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
                let mut starts: BTreeMap<u64, u64> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Insert(p, mfn, n) => {
                            let overlaps = (p..p + n).any(|f| m.contains_key(&f));
                            let res = t.ins(pfn(p), bfn(mfn), n);
                            if overlaps {
                                let is_overlap = matches!(res, Err(ForeignTableError::Overlap { .. }));
                                prop_assert!(is_overlap);
                            } else if starts.len() == 32 {
                                prop_assert_eq!(res, Err(ForeignTableError::Full { capacity: 32 }));
                            } else {
                                prop_assert_eq!(res, Ok(()));
                                for k in 0..n {
                                    m.insert(p + k, (p, mfn + k));
                                }
                                starts.insert(p, n);
                            }
                        }
                        Op::Remove(p) => {
                            let res = t.rm(pfn(p));
                            if let Some(n) = starts.remove(&p) {
                                prop_assert_eq!(res.map(|e| e.nr_pages()), Ok(n));
                                for k in 0..n {
                                    m.remove(&(p + k));
                                }
                            } else {
                                prop_assert!(res.is_err());
                            }
                        }
                        Op::Lookup(p) => {
                            prop_assert_eq!(t.lookup(pfn(p)).map(Bfn::as_u64), model_lookup(&m, p));
                        }
                        Op::Contig(p, n) => {
                            let tr = |f: u64| model_lookup(&m, f).unwrap_or(f);
                            let expect = (1..n).all(|k| tr(p + k) == tr(p) + k);
                            prop_assert_eq!(t.is_bus_contiguous(pfn(p), n), expect);
                        }
                    }
                    prop_assert_eq!(t.len(), starts.len());
                }
            }
        }
    }
}
