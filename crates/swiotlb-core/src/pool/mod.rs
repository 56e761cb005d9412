//! The slot-based bounce pool (Linux's `io_tlb_pool` with `swiotlb_tbl_map_single`,
//! `swiotlb_tbl_unmap_single`, the single syncs and `swiotlb_alloc`/`swiotlb_free`).
//!
//! The pool is a physically contiguous region split into 2 KiB slots, grouped in 128-slot
//! segments, and divided into a power-of-two number of areas, each a whole number of
//! segments with its own lock. As in Linux no mapping crosses a segment (so none exceeds
//! 256 KiB), unless the pool is told that segments are *joined* (bus-contiguous with the next
//! one, [`BouncePool::set_segment_joins`], which the DMA engine learns from its platform):
//! then a mapping may span joined segments of one area, up to [`MAX_RUN_SLOTS`]. A map
//! takes a run of free slots in the area chosen from the CPU hint (falling through to the
//! others), records where the original bytes live, and copies the original into the pool
//! whatever the direction. Metadata lives out of band in [`Slot`] storage the caller
//! provides; every copy goes through the [`PhysMemory`] hook.
//!
//! The project's `docs/semantics.md` compares each rule with Linux's.

mod ages;
mod area;
mod report;
mod search;
mod stats;
#[cfg(test)]
mod tests;

pub use crate::lock::{IrqHook, SpinLock, SpinLockGuard};
pub use ages::{DeviceLive, LiveReport, MAX_REPORTED_DEVICES, MappingClock, slots_with_ages};
pub use area::Slot;
pub use report::{AreaReport, PoolReport};
pub use stats::Stats;

use crate::addr::PhysAddr;
use crate::dma::{Device, DmaAttrs, DmaDirection};
use crate::error::Error;
use crate::hooks::{BufferMemory, PhysMemory};
use crate::lock::atomic::Ordering;
use crate::lock::spin_wait;
use area::{Area, INVALID_PHYS, bump, state};
use arrayvec::ArrayVec;
use core::ptr::NonNull;
use search::{Plan, give_run, search_area, seg_free, take_run};
use stats::GlobalStats;

/// log2 of the slot size (Linux's `IO_TLB_SHIFT`).
pub const IO_TLB_SHIFT: u32 = 11;
/// The slot size in bytes (Linux's `IO_TLB_SIZE`, 2 KiB).
pub const IO_TLB_SIZE: usize = 1 << IO_TLB_SHIFT;
/// Slots per segment (Linux's `IO_TLB_SEGSIZE`); no mapping crosses a segment.
pub const IO_TLB_SEGSIZE: usize = 128;
/// Bytes per segment: the largest possible allocation (256 KiB).
pub const IO_TLB_SEGMENT_BYTES: usize = IO_TLB_SEGSIZE * IO_TLB_SIZE;
/// The longest run of slots a pool with joined segments gives one mapping or allocation:
/// 256 segments, 64 MiB. The metadata's slot counts and indices (`u16`) hold it with room to
/// spare, and no device asks for a bounce buffer that large.
pub const MAX_RUN_SLOTS: usize = 256 * IO_TLB_SEGSIZE;
/// The default pool size in slots (Linux's 64 MiB default).
pub const IO_TLB_DEFAULT_SLABS: usize = (64 << 20) >> IO_TLB_SHIFT;
/// The smallest pool Linux settles for when halving on failure (1 MiB).
pub const IO_TLB_MIN_SLABS: usize = (1 << 20) >> IO_TLB_SHIFT;
/// The page size behind the "streaming maps of a page or more are page aligned" rule.
pub const PAGE_SIZE: u64 = 4096;
/// The largest number of areas a pool supports.
#[cfg(not(loom))]
pub const MAX_AREAS: usize = 64;
/// The largest number of areas a pool supports: fewer under loom, whose atomics are so much
/// larger than `core`'s that 64 inline areas overflow a model thread's stack (the models
/// use at most two).
#[cfg(loom)]
pub const MAX_AREAS: usize = 4;

const SLOT_MASK: u64 = IO_TLB_SIZE as u64 - 1;

/// Linux's `swiotlb_max_mapping_size(dev)`: 256 KiB less `min_align_mask` rounded up to a
/// whole slot. With NVMe's `0xfff` that is 252 KiB.
///
/// That is what every pool can map for `dev` (a pool without joined segments, exactly);
/// [`BouncePool::max_mapping_size`] is what one pool can.
#[must_use]
pub const fn max_mapping_size(dev: &Device) -> usize {
    run_less_min_align(IO_TLB_SEGMENT_BYTES, dev.min_align_mask)
}

/// Linux's formula on a run of `run` bytes: the run less `min_align_mask` rounded up to a
/// whole slot, 0 if the mask reaches the run.
const fn run_less_min_align(run: usize, m: u64) -> usize {
    if m == 0 {
        return run;
    }
    // roundup(m, 2048) without overflow: masks at or above the run leave nothing.
    // CAST: usize fits in u64.
    if m >= run as u64 {
        return 0;
    }
    // CAST: m < run here.
    let round = (m as usize).div_ceil(IO_TLB_SIZE) * IO_TLB_SIZE;
    run.saturating_sub(round)
}

/// The longest mapping `dev` could get in a pool of one area over one bus-contiguous chunk
/// of `chunk_bytes` aligned to its size (a pool the engine grows for a long mapping): the
/// chunk, capped at [`MAX_RUN_SLOTS`] and cut by the device's segment boundary, less
/// `min_align_mask` as Linux's formula.
pub(crate) const fn chunk_max_mapping_size(dev: &Device, chunk_bytes: usize) -> usize {
    let mut run = chunk_bytes;
    if run > MAX_RUN_SLOTS * IO_TLB_SIZE {
        run = MAX_RUN_SLOTS * IO_TLB_SIZE;
    }
    let mask = dev.seg_boundary_mask;
    // A boundary window shorter than the chunk; the chunk's alignment puts whole windows in it.
    // CAST: usize fits in u64.
    if search::is_low_mask(mask) && mask < run as u64 {
        // CAST: mask < run, a usize.
        run = mask as usize + 1;
    }
    run_less_min_align(run, dev.min_align_mask)
}

/// Linux's `limit_nareas` with this port's invariant: halves `nareas` until every area is a
/// whole, equal number of segments.
#[must_use]
pub const fn limit_nareas(nareas: usize, nslabs: usize) -> usize {
    let segs = nslabs / IO_TLB_SEGSIZE;
    let mut n = nareas;
    while n > 1 && (segs < n || !segs.is_multiple_of(n)) {
        n /= 2;
    }
    n
}

/// A slot-based bounce pool over `[start, start + nslabs * 2 KiB)`.
///
/// `M` reaches the memory (the pool's and the originals'); `S` holds one [`Slot`] per slot
/// (an array, a `&'static [Slot]`, or with feature `alloc` a `Box<[Slot]>`). `S::as_ref`
/// must return the same slice every time.
///
/// All methods take `&self` and may be called from many CPUs at once. Each area has a spin
/// lock held only for the slot search and metadata updates; no copy runs under it. A sync
/// validates the mapping and pins it (its first slot's `busy` count) under the area lock and
/// copies outside it; an unmap claims the mapping under the lock (after which no sync can pin
/// it), waits for the pinned syncs to finish, then copies back outside the lock and frees the
/// slots under it. So a sync never runs alongside an unmap's copy-back, and none runs after
/// the unmap returns.
///
/// The area locks mask interrupts through the pool's [`IrqHook`]
/// ([`set_irq_hook`](Self::set_irq_hook)); with a hook that masks, every method may be called
/// from interrupt context, under the condition [`crate::lock`] states.
///
/// # Invariants
///
/// - `nslabs` is a non-zero multiple of 128, `nareas` a power of two dividing
///   `nslabs / 128`, `area_nslabs = nslabs / nareas`, and `storage` holds at least `nslabs`
///   slots.
/// - Bit `i` of segment `s`'s free bitmap is set exactly when slot `128 s + i` is free; the
///   free slots of an area number `area_nslabs - used`, and each area's `used` mirror equals
///   its locked `used` whenever the lock is free.
/// - Every allocated run lies inside one area, inside one segment or inside segments each
///   joined to the next, and is at most [`MAX_RUN_SLOTS`] long. No segment is joined to
///   the first segment of another area; `run_cap` is the longest run of joined segments
///   (at most `MAX_RUN_SLOTS`, 128 without joins) and `joined` says whether any segment is.
pub struct BouncePool<M: PhysMemory, S: AsRef<[Slot]> = &'static [Slot]> {
    mem: M,
    storage: S,
    start: PhysAddr,
    end: PhysAddr,
    nslabs: usize,
    area_nslabs: usize,
    run_cap: usize,
    joined: bool,
    areas: ArrayVec<Area, MAX_AREAS>,
    stats: GlobalStats,
    /// The clock of the mapping records ([`ages`]), if the pool keeps them.
    clock: Option<MappingClock>,
}

impl<M: PhysMemory, S: AsRef<[Slot]>> core::fmt::Debug for BouncePool<M, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BouncePool")
            .field("start", &self.start)
            .field("end", &self.end)
            .field("nslabs", &self.nslabs)
            .field("nareas", &self.areas.len())
            .finish_non_exhaustive()
    }
}

/// The hook of the unmaps and syncs that maintain nothing.
type NoMaintenance = fn(PhysAddr, usize) -> Result<(), core::convert::Infallible>;

/// Where a sync's bytes are: the original address, the pool address and the length.
struct SyncRange {
    orig: PhysAddr,
    len: usize,
    /// The first data slot of the mapping.
    head: usize,
}

#[cfg(feature = "alloc")]
impl<M: PhysMemory> BouncePool<M, alloc::boxed::Box<[Slot]>> {
    /// As [`new`](BouncePool::new), with the metadata storage allocated on the heap.
    ///
    /// # Errors
    ///
    /// As for [`new`](BouncePool::new).
    ///
    /// # Safety
    ///
    /// As for [`new`](BouncePool::new).
    pub unsafe fn new_boxed(
        mem: M,
        start: PhysAddr,
        nslabs: usize,
        nareas: usize,
    ) -> Result<Self, Error> {
        let storage: alloc::boxed::Box<[Slot]> = (0..nslabs).map(|_| Slot::new()).collect();
        // SAFETY: forwarded from the caller.
        unsafe { Self::new(mem, start, nslabs, nareas, storage) }
    }
}

impl<M: PhysMemory, S: AsRef<[Slot]>> BouncePool<M, S> {
    /// Builds a pool of `nslabs` 2 KiB slots starting at `start`, split into `nareas` areas,
    /// with its metadata in `storage`, and zeroes the pool memory through `mem`.
    ///
    /// `nslabs` must be a non-zero multiple of 128 and `start` 2 KiB-aligned. The Xen layer
    /// aligns its pool to a segment (256 KiB) so that pseudo-physical and machine addresses
    /// agree in every bit the alignment rules look at. `nareas` must be a power of two up to
    /// [`MAX_AREAS`]; it is lowered (as Linux's `limit_nareas`) until each area is a whole
    /// number of segments. `storage` must hold at least `nslabs` slots; their previous
    /// contents do not matter.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSlotCount`], [`Error::MisalignedStart`], [`Error::InvalidAreaCount`],
    /// [`Error::StorageTooSmall`].
    ///
    /// # Safety
    ///
    /// `[start, start + nslabs * 2 KiB)` must be memory `mem` reaches, owned by the pool
    /// alone for the pool's lifetime: no Rust reference to it, and no other user, except
    /// devices given pool addresses by this pool.
    pub unsafe fn new(
        mem: M,
        start: PhysAddr,
        nslabs: usize,
        nareas: usize,
        storage: S,
    ) -> Result<Self, Error> {
        // CAST: usize is at most 64 bits on every supported target.
        let bytes = (nslabs as u64).checked_mul(IO_TLB_SIZE as u64);
        let end = bytes.and_then(|b| start.checked_add(b));
        let end = match end {
            Some(end) if nslabs != 0 && nslabs.is_multiple_of(IO_TLB_SEGSIZE) => end,
            _ => return Err(Error::InvalidSlotCount { nslabs }),
        };
        let byte_len = nslabs
            .checked_mul(IO_TLB_SIZE)
            .ok_or(Error::InvalidSlotCount { nslabs })?;
        if !start.is_aligned(IO_TLB_SIZE as u64) {
            return Err(Error::MisalignedStart { start });
        }
        if nareas == 0 || !nareas.is_power_of_two() || nareas > MAX_AREAS {
            return Err(Error::InvalidAreaCount {
                nareas,
                max: MAX_AREAS,
            });
        }
        let have = storage.as_ref().len();
        if have < nslabs {
            return Err(Error::StorageTooSmall { have, need: nslabs });
        }
        let nareas = limit_nareas(nareas, nslabs);
        let mut areas = ArrayVec::new();
        for _ in 0..nareas {
            areas.push(Area::new());
        }
        let slots = &storage.as_ref()[..nslabs];
        let area_nslabs = nslabs / nareas;
        // Two bitmap words per segment at the start of each area (`search::bitmap_slot`).
        let nwords = 2 * (area_nslabs / IO_TLB_SEGSIZE);
        for (i, slot) in slots.iter().enumerate() {
            slot.clear();
            // Every slot starts free: both bitmap words of each segment are all ones.
            let word = if i % area_nslabs < nwords {
                u64::MAX
            } else {
                0
            };
            slot.free_bits.store(word, Ordering::Relaxed);
        }
        // SAFETY: the caller gives the pool exclusive use of this range, which `mem`
        // reaches.
        unsafe { mem.fill(start, 0, byte_len) };
        Ok(Self {
            mem,
            storage,
            start,
            end,
            nslabs,
            area_nslabs,
            run_cap: IO_TLB_SEGSIZE,
            joined: false,
            areas,
            stats: GlobalStats::default(),
            clock: None,
        })
    }

    /// Tells the pool which segments are bus-contiguous with the next: `joined(s)` for each
    /// segment `s` but the last says whether segment `s + 1` continues segment `s` on the bus
    /// (and in the pool's physical memory, which is contiguous). From then on a mapping or
    /// allocation may span joined segments of one area, up to [`MAX_RUN_SLOTS`] (64 MiB):
    /// a 2 MiB map fits in eight joined segments. Every alignment, offset and boundary rule
    /// still holds; a run never crosses an area (`joined` is not asked for an area's last
    /// segment), nor a segment that is not joined to the next. Replaces any earlier joins.
    ///
    /// Without this call (or with `|_| false`) no run crosses a segment: Linux's pool.
    /// The DMA engine calls it from what its platform says of the pool's bus addresses
    /// ([`DmaEngine::new`](crate::DmaEngine::new)).
    ///
    /// Requests of at most a segment are still searched segment by segment first, as
    /// without joins; only if that finds nothing in an area are runs across its joins tried,
    /// and only requests of more than a segment search the joins directly. So the cost of
    /// small maps does not change.
    ///
    /// # Errors
    ///
    /// [`Error::StorageTooSmall`] if the storage shrank (nothing changed).
    pub fn set_segment_joins(
        &mut self,
        mut joined: impl FnMut(usize) -> bool,
    ) -> Result<(), Error> {
        let area_segs = self.area_segs();
        let nsegs = self.nslabs / IO_TLB_SEGSIZE;
        let slots = self.slots()?;
        let (mut any, mut cap, mut len) = (false, 0, 0);
        for seg in 0..nsegs {
            len += 1;
            let j = !(seg + 1).is_multiple_of(area_segs) && joined(seg);
            search::join_flag(slots, area_segs, seg).store(u8::from(j), Ordering::Relaxed);
            any |= j;
            if !j {
                cap = cap.max(len);
                len = 0;
            }
        }
        self.joined = any;
        self.run_cap = (cap * IO_TLB_SEGSIZE).min(MAX_RUN_SLOTS);
        Ok(())
    }

    /// The pool with the joins of [`set_segment_joins`](Self::set_segment_joins).
    ///
    /// # Errors
    ///
    /// As for [`set_segment_joins`](Self::set_segment_joins).
    pub fn with_segment_joins(mut self, joined: impl FnMut(usize) -> bool) -> Result<Self, Error> {
        self.set_segment_joins(joined)?;
        Ok(self)
    }

    /// Whether segment `seg` is joined to the next (see
    /// [`set_segment_joins`](Self::set_segment_joins)); `false` past the pool.
    #[must_use]
    pub fn segment_joined(&self, seg: usize) -> bool {
        match self.slots() {
            Ok(slots) if seg < self.nslabs / IO_TLB_SEGSIZE => {
                search::seg_joined(slots, self.area_segs(), seg)
            }
            _ => false,
        }
    }

    /// The longest run of slots one mapping or allocation can take in this pool, whatever
    /// the device: a segment (128) without joins, else the longest run of joined segments
    /// of an area, at most [`MAX_RUN_SLOTS`].
    #[must_use]
    pub fn max_run_slots(&self) -> usize {
        self.run_cap
    }

    /// Sets the interrupt hook of the area locks: how to mask local interrupts while one is
    /// held (see [`crate::lock`]). The default, [`IrqHook::NONE`], masks nothing; a kernel that
    /// maps, unmaps or syncs from interrupt handlers must set its own.
    pub fn set_irq_hook(&mut self, hook: IrqHook) {
        for area in &mut self.areas {
            area.lock.set_irq_hook(hook);
        }
    }

    /// The pool with `hook` as the interrupt hook of its area locks; see
    /// [`set_irq_hook`](Self::set_irq_hook).
    #[must_use]
    pub fn with_irq_hook(mut self, hook: IrqHook) -> Self {
        self.set_irq_hook(hook);
        self
    }

    /// The interrupt hook of the area locks.
    #[must_use]
    pub fn irq_hook(&self) -> IrqHook {
        self.areas
            .first()
            .map_or(IrqHook::NONE, |a| a.lock.irq_hook())
    }

    /// The slot metadata. `S::as_ref` must return the same slice every time; if a storage
    /// breaks that and returns fewer than `nslabs` slots, every operation fails with
    /// [`Error::StorageTooSmall`] instead of panicking (and touches nothing).
    #[inline]
    fn slots(&self) -> Result<&[Slot], Error> {
        let all = self.storage.as_ref();
        all.get(..self.nslabs).ok_or(Error::StorageTooSmall {
            have: all.len(),
            need: self.nslabs,
        })
    }

    /// The first byte of the pool.
    #[must_use]
    pub fn start(&self) -> PhysAddr {
        self.start
    }

    /// One past the last byte of the pool.
    #[must_use]
    pub fn end(&self) -> PhysAddr {
        self.end
    }

    /// The number of 2 KiB slots.
    #[must_use]
    pub fn nslabs(&self) -> usize {
        self.nslabs
    }

    /// The number of areas (after [`limit_nareas`]).
    #[must_use]
    pub fn nareas(&self) -> usize {
        self.areas.len()
    }

    /// The memory hook the pool copies through.
    #[must_use]
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Whether `phys` lies inside the pool (Linux's `swiotlb_find_pool` for one pool).
    #[must_use]
    pub fn contains(&self, phys: PhysAddr) -> bool {
        self.start <= phys && phys < self.end
    }

    /// The largest streaming mapping this pool could ever hold for `dev`, however idle:
    /// Linux's formula ([`max_mapping_size`]) on the longest run the device can get here
    /// instead of a segment. That run is the longest run of joined segments of one area
    /// ([`max_run_slots`](Self::max_run_slots): 256 KiB without joins), cut where it
    /// crosses the device's `seg_boundary_mask + 1`; less `min_align_mask` rounded up to a
    /// slot. For a pool without joins and a device whose boundary is at least a segment,
    /// exactly Linux's `swiotlb_max_mapping_size`.
    ///
    /// A map larger than this is [`Error::TooLarge`] with this value as `max` (checked
    /// after Linux's bound, so that maps up to 256 KiB pay nothing for it).
    #[must_use]
    pub fn max_mapping_size(&self, dev: &Device) -> usize {
        let run = self.device_run_cap(dev) * IO_TLB_SIZE;
        run_less_min_align(run, dev.min_align_mask)
    }

    /// The longest run `dev` can ever get in this pool (see
    /// [`max_mapping_size`](Self::max_mapping_size)), in slots. Invalid masks give the
    /// pool's cap (every request of such a device fails on the mask).
    fn device_run_cap(&self, dev: &Device) -> usize {
        let mask = dev.seg_boundary_mask;
        if !search::is_low_mask(mask) {
            return self.run_cap;
        }
        let max_slots = (mask >> IO_TLB_SHIFT) + 1;
        let shift = (self.start.as_u64() & mask) >> IO_TLB_SHIFT;
        self.boundary_run_cap(max_slots, shift)
    }

    /// The longest run of a joined group of segments (or one segment) inside one window of
    /// a boundary of `max_slots` slots, the pool's start being `shift` slots into a window;
    /// at most `run_cap`. Walks the join flags only when a boundary falls inside the pool.
    #[cold]
    fn boundary_run_cap(&self, max_slots: u64, shift: u64) -> usize {
        // CAST: slot counts fit in u64.
        if shift.saturating_add(self.nslabs as u64) <= max_slots {
            return self.run_cap;
        }
        let Ok(slots) = self.slots() else {
            return 0;
        };
        let area_segs = self.area_segs();
        let nsegs = self.nslabs / IO_TLB_SEGSIZE;
        let mut best = 0u64;
        let mut a = 0usize;
        for seg in 0..nsegs {
            if search::seg_joined(slots, area_segs, seg) {
                continue;
            }
            // The group [a, b) of slots.
            let b = (seg + 1) * IO_TLB_SEGSIZE;
            // CAST: slot indices fit in u64.
            let (ga, gb) = (a as u64, b as u64);
            let w = shift.wrapping_add(ga) & (max_slots - 1);
            let first_end = ga + (max_slots - w);
            let longest = if first_end >= gb {
                gb - ga
            } else {
                (first_end - ga).max(max_slots.min(gb - first_end))
            };
            best = best.max(longest);
            a = b;
        }
        // CAST: at most run_cap, a slot count.
        best.min(self.run_cap as u64) as usize
    }

    /// [`Error::ExceedsSegment`] for an allocation of `alloc_size` bytes, with the longest
    /// run the device (its boundary `max_slots` and `shift`, as in a [`Plan`]) can get.
    #[cold]
    fn exceeds_segment(&self, alloc_size: u64, max_slots: u64, shift: u64) -> Error {
        let run = self.boundary_run_cap(max_slots, shift);
        Error::ExceedsSegment {
            alloc_size,
            // CAST: a slot count times 2 KiB fits in u64.
            max: (run as u64) << IO_TLB_SHIFT,
        }
    }

    /// `e`, with the `max` of an [`Error::ExceedsSegment`] set to the longest run `dev` can
    /// get in this pool.
    #[cold]
    fn narrow_exceeds(&self, dev: &Device, e: Error) -> Error {
        match e {
            Error::ExceedsSegment { alloc_size, .. } => Error::ExceedsSegment {
                alloc_size,
                // CAST: a slot count times 2 KiB fits in u64.
                max: (self.device_run_cap(dev) as u64) << IO_TLB_SHIFT,
            },
            e => e,
        }
    }

    /// [`Error::TooLarge`] when `size` is beyond [`max_mapping_size`](Self::max_mapping_size)
    /// (called only for sizes beyond Linux's bound).
    #[cold]
    #[inline(never)]
    fn too_large(&self, dev: &Device, size: usize) -> Result<(), Error> {
        let max = self.max_mapping_size(dev);
        if size > max {
            Err(Error::TooLarge { size, max })
        } else {
            Ok(())
        }
    }

    /// A snapshot of the statistics: the sums of the areas' counters (each read without its
    /// lock), and the high-water marks described at [`Stats::high_water`].
    #[must_use]
    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            nslabs: self.nslabs,
            nareas: self.areas.len(),
            ..Stats::default()
        };
        for a in &self.areas {
            s.used += a.used.load(Ordering::Relaxed);
            s.high_water_bound += a.high.load(Ordering::Relaxed);
            s.maps += a.maps.load(Ordering::Relaxed);
            s.unmaps += a.unmaps.load(Ordering::Relaxed);
            s.syncs += a.syncs.load(Ordering::Relaxed);
            s.allocs += a.allocs.load(Ordering::Relaxed);
            s.frees += a.frees.load(Ordering::Relaxed);
            s.bytes_bounced += a.bytes_bounced.load(Ordering::Relaxed);
            s.overflow_attempts += a.overflow_attempts.load(Ordering::Relaxed);
            s.fail_full += a.fails.full.load(Ordering::Relaxed);
            s.fail_too_large += a.fails.too_large.load(Ordering::Relaxed);
            s.fail_invalid += a.fails.invalid.load(Ordering::Relaxed);
            s.fail_not_mapped += a.fails.not_mapped.load(Ordering::Relaxed);
        }
        let mark = self.stats.high_water.load(Ordering::Relaxed);
        s.high_water = mark.max(s.used);
        // The areas' maxima were read at slightly different times from the mark; keep the
        // documented order `high_water <= high_water_bound`.
        s.high_water_bound = s.high_water_bound.max(s.high_water);
        s
    }

    /// Resets the high-water marks to the current use (writing 0 to debugfs
    /// `io_tlb_used_hiwater`): each area's own maximum, under its lock, and the pool-wide
    /// mark.
    pub fn reset_high_water(&self) {
        for a in &self.areas {
            let mut st = a.lock.lock();
            st.high = st.used;
            a.high.store(st.high, Ordering::Relaxed);
        }
        self.stats.high_water.store(self.used(), Ordering::Relaxed);
    }

    /// Slots in use: the sum of the areas' counts (each read without its lock). Reads every
    /// area's line: not for the map/unmap path.
    fn used(&self) -> usize {
        self.areas
            .iter()
            .map(|a| a.used.load(Ordering::Relaxed))
            .sum()
    }

    /// Counts a failed map or allocation in the area of the CPU hint `cpu`.
    #[cold]
    fn fail_cpu(&self, cpu: usize, err: Error) -> Error {
        self.areas[cpu & (self.areas.len() - 1)].fails.count(err)
    }

    /// Counts a failed unmap, sync or free in the area of `addr` (the first area for an
    /// address outside the pool).
    #[cold]
    fn fail_at(&self, addr: PhysAddr, err: Error) -> Error {
        let a = self.slot_index(addr).map_or(0, |i| self.area_of(i));
        self.areas[a].fails.count(err)
    }

    /// Linux's free count of slot `index` (its `list` field): the number of free slots from
    /// it to the end of its segment without a gap, 0 for a taken slot; `None` past the pool.
    /// Takes the slot's area lock.
    #[must_use]
    pub fn free_count(&self, index: usize) -> Option<usize> {
        if index >= self.nslabs {
            return None;
        }
        let slots = self.slots().ok()?;
        let _guard = self.areas[self.area_of(index)].lock.lock();
        let free = seg_free(slots, self.area_segs(), index / IO_TLB_SEGSIZE);
        // CAST: trailing_ones() <= 128.
        Some((free >> (index % IO_TLB_SEGSIZE)).trailing_ones() as usize)
    }

    /// Segments per area.
    #[inline]
    fn area_segs(&self) -> usize {
        self.area_nslabs / IO_TLB_SEGSIZE
    }

    /// The area of slot `idx` (no division for one area or power-of-two area sizes).
    #[inline]
    fn area_of(&self, idx: usize) -> usize {
        if self.areas.len() == 1 {
            0
        } else if self.area_nslabs.is_power_of_two() {
            idx >> self.area_nslabs.trailing_zeros()
        } else {
            idx / self.area_nslabs
        }
    }

    /// The slot index of a pool address, or `NotInPool`.
    #[inline]
    fn slot_index(&self, addr: PhysAddr) -> Result<usize, Error> {
        match addr.offset_from(self.start) {
            // CAST: the offset is below nslabs * 2 KiB, which fits in usize.
            Some(off) if addr < self.end => Ok((off >> IO_TLB_SHIFT) as usize),
            _ => Err(Error::NotInPool { addr }),
        }
    }

    /// The pool address of slot `index` plus `offset`.
    #[inline]
    fn slot_addr(&self, index: usize, offset: u64) -> PhysAddr {
        // CAST: index < nslabs; the sum stays below `end`, which did not overflow.
        PhysAddr::new(self.start.as_u64() + ((index as u64) << IO_TLB_SHIFT) + offset)
    }

    /// Searches the areas from the one of `cpu`, takes a run matching `plan` and fills its
    /// metadata: a streaming mapping (`mapping`, of the original at `orig`, or of a buffer
    /// known by pointer when `orig` is `None`) or a coherent allocation. Returns the index of
    /// the first data slot.
    fn find_slots(
        &self,
        plan: &Plan,
        cpu: usize,
        mapping: bool,
        orig: Option<PhysAddr>,
        size: usize,
        tag: u16,
    ) -> Result<usize, Error> {
        let nareas = self.areas.len();
        // Read before any lock is taken; `None` without a clock (one branch).
        let stamp = self.clock.map(|clock| clock());
        let first_area = cpu & (nareas - 1);
        let slots = self.slots()?;
        for i in 0..nareas {
            let a = (first_area + i) & (nareas - 1);
            let area = &self.areas[a];
            let mut st = area.lock.lock();
            if plan.nslots > self.area_nslabs - st.used {
                continue;
            }
            let base = a * self.area_nslabs;
            // The run this area freed last, if it suits (the same placement rules as the
            // search's candidates): no search, and slots whose lines are still cached.
            let g = if plan.fits_at(slots, self.area_segs(), st.reuse) {
                st.reuse
            } else {
                match search_area(slots, base, self.area_nslabs, st.index, plan, self.joined) {
                    Some(g) => g,
                    None => continue,
                }
            };
            take_run(slots, self.area_segs(), g, plan.nslots);
            let head = g + plan.pad;
            for s in &slots[g..head] {
                s.state.store(state::PAD, Ordering::Relaxed);
            }
            let orig_raw = orig.map_or(INVALID_PHYS, PhysAddr::as_u64);
            for (k, s) in slots[head..g + plan.nslots].iter().enumerate() {
                // CAST: k < nslots <= MAX_RUN_SLOTS, below u16::MAX.
                let k16 = k as u16;
                let o = orig.map_or(INVALID_PHYS, |o| {
                    o.as_u64().saturating_add((k as u64) << IO_TLB_SHIFT)
                });
                s.orig.store(o, Ordering::Relaxed);
                s.offset.store(plan.small_off, Ordering::Relaxed);
                s.k.store(k16, Ordering::Relaxed);
                if k > 0 {
                    s.state.store(state::BODY, Ordering::Relaxed);
                }
            }
            let h = &slots[head];
            h.orig.store(orig_raw, Ordering::Relaxed);
            // CAST: size <= MAX_RUN_SLOTS * 2 KiB (64 MiB) and pad < nslots <= MAX_RUN_SLOTS,
            // below u16::MAX.
            h.size.store(size as u32, Ordering::Relaxed);
            h.pad.store(plan.pad as u16, Ordering::Relaxed);
            h.nslots.store(plan.nslots as u16, Ordering::Relaxed);
            let head_state = if mapping {
                bump(&area.maps, 1);
                // CAST: usize fits in u64.
                bump(&area.bytes_bounced, size as u64);
                state::RESERVED
            } else {
                bump(&area.allocs, 1);
                state::COHERENT
            };
            if let Some(time) = stamp
                && let Some(tail) = self.records()
            {
                ages::record(tail, head, tag, time);
            }
            h.state.store(head_state, Ordering::Release);
            let mut next = g - base + plan.nslots;
            if next >= self.area_nslabs {
                next = 0;
            }
            st.index = next;
            st.used += plan.nslots;
            area.used.store(st.used, Ordering::Relaxed);
            // Only an area that exceeds its own maximum can take the pool past its mark, so
            // only then is the pool-wide use summed (see `Stats::high_water`).
            let new_high = st.used > st.high;
            if new_high {
                st.high = st.used;
                area.high.store(st.high, Ordering::Relaxed);
            }
            drop(st);
            if new_high {
                self.stats.raise_high_water(self.used());
            }
            return Ok(head);
        }
        Err(self.full_error(slots, plan))
    }

    /// Frees the run whose first data slot is `head` in `slots` (the pool's metadata). The
    /// caller holds the area lock.
    fn release(&self, slots: &[Slot], head: usize, st: &mut area::AreaState) {
        let h = &slots[head];
        let pad = usize::from(h.pad.load(Ordering::Relaxed));
        let n = usize::from(h.nslots.load(Ordering::Relaxed));
        let first = head - pad;
        for s in &slots[first..first + n] {
            s.release();
        }
        give_run(slots, self.area_segs(), first, n);
        st.reuse = first;
        st.used -= n;
        self.areas[self.area_of(first)]
            .used
            .store(st.used, Ordering::Relaxed);
    }

    /// Maps `size` bytes at `orig` for a device: takes slots, records the original and
    /// copies it into the pool (whatever the direction, even with
    /// [`DmaAttrs::SKIP_CPU_SYNC`]). Returns the pool address the device must use (Linux's
    /// `swiotlb_tbl_map_single`; the caller translates it to a bus address).
    ///
    /// The pool address keeps the bits of `orig` selected by `dev.min_align_mask` (whole
    /// pad slots are put in front when the kept offset is 2 KiB or more), the allocation is
    /// aligned to `alloc_align_mask + 1` (page-aligned for maps of 4 KiB or more when neither
    /// mask asks otherwise) and does not cross `dev.seg_boundary_mask + 1`. `cpu` picks the
    /// first area to search.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::TooLarge`], [`Error::AddressOverflow`],
    /// [`Error::OriginalInPool`] (any byte of the original lies inside the pool),
    /// [`Error::InvalidMask`], [`Error::ExceedsSegment`], [`Error::PoolFull`],
    /// [`Error::StorageTooSmall`] (the storage shrank). The pool is unchanged after an
    /// error.
    ///
    /// # Safety
    ///
    /// `[orig, orig + size)` must be memory the pool's [`PhysMemory`] reaches, must stay
    /// valid until the mapping is unmapped, and must not be covered by any Rust reference
    /// until then (the pool reads it now and writes it at sync-for-CPU and unmap).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn map(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        alloc_align_mask: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
        cpu: usize,
    ) -> Result<PhysAddr, Error> {
        // The copy-in happens for every direction and attribute (CVE-2022-0854).
        let _ = (dir, attrs);
        let r = self.map_inner(dev, orig, size, alloc_align_mask, cpu);
        r.map_err(|e| self.fail_cpu(cpu, e))
    }

    #[inline]
    fn map_inner(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        alloc_align_mask: u64,
        cpu: usize,
    ) -> Result<PhysAddr, Error> {
        // SAFETY: the caller of `map` vouches for the original range, which the pool's
        // memory reaches; `dst` is a range of slots this mapping owns.
        self.map_with(
            dev,
            orig,
            true,
            Some(orig),
            size,
            alloc_align_mask,
            cpu,
            |dst| unsafe {
                self.mem.copy(dst, orig, size);
            },
        )
    }

    /// The mapping half both kinds of original share: checks (an original at a known
    /// physical address, `phys_known`, must not overlap the pool), plans (the original's
    /// bits kept are those of `align_src`), takes slots recording `orig` (`None`: a buffer
    /// known only by pointer), copies the original in with `copy_in(data_place)` and
    /// publishes the mapping.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn map_with(
        &self,
        dev: &Device,
        align_src: PhysAddr,
        phys_known: bool,
        orig: Option<PhysAddr>,
        size: usize,
        alloc_align_mask: u64,
        cpu: usize,
        copy_in: impl FnOnce(PhysAddr),
    ) -> Result<PhysAddr, Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        // Linux's bound first: every pool holds that much, so small maps go no further.
        if size > max_mapping_size(dev) {
            self.too_large(dev, size)?;
        }
        // CAST: usize fits in u64.
        let Some(last) = align_src.checked_last(size as u64) else {
            return Err(Error::AddressOverflow {
                addr: align_src,
                size,
            });
        };
        // Bouncing the pool's own memory would copy between overlapping ranges (and into
        // the slots of other mappings). A buffer known only by pointer has no physical
        // address to compare (`align_src` is then the pointer's).
        if phys_known && align_src < self.end && last >= self.start {
            return Err(Error::OriginalInPool {
                addr: align_src,
                size,
            });
        }
        let plan = Plan::new(
            self.start.as_u64(),
            dev.min_align_mask,
            dev.seg_boundary_mask,
            Some(align_src.as_u64()),
            size,
            alloc_align_mask,
            self.run_cap,
        )
        .map_err(|e| self.narrow_exceeds(dev, e))?;
        let head = self.find_slots(&plan, cpu, true, orig, size, dev.tag)?;
        let tlb = self.slot_addr(head, u64::from(plan.small_off));
        // The slots are ours (RESERVED), so the pool range `tlb..tlb + size`, which lies
        // inside the allocation, is touched by nobody else.
        copy_in(data_place(tlb));
        // The slots were just found in this metadata, so it is long enough.
        if let Some(h) = self.slots()?.get(head) {
            h.state.store(state::HEAD, Ordering::Release);
        }
        Ok(tlb)
    }

    /// Unmaps the mapping that starts at `tlb_addr` (as returned by [`map`](Self::map)):
    /// copies `size` bytes back to the original for [`DmaDirection::FromDevice`] and
    /// [`DmaDirection::Bidirectional`] unless [`DmaAttrs::SKIP_CPU_SYNC`], then frees the
    /// slots (Linux's `swiotlb_tbl_unmap_single`).
    ///
    /// The number of slots comes from the metadata, not from `size`. `size` is the length
    /// copied back: it should be the mapped size; a larger value is clamped to the mapping
    /// and counted in [`Stats::overflow_attempts`], a smaller one copies back only that
    /// prefix.
    ///
    /// # Ownership
    ///
    /// By address, as Linux's: the pool checks that `tlb_addr` starts a live mapping, but
    /// cannot tell its owner's call from a stale one (an address unmapped before and since
    /// handed to another mapping), which would unmap the other owner's mapping. That is not
    /// memory-unsafe (every copy stays inside a live mapping and the original its mapper
    /// vouched for) but is a bug of the caller; the DMA engine unmaps by the device's bus
    /// address, as the kernel's DMA API does. A caller that keeps the mapping uses
    /// [`map_owned`](Self::map_owned) and [`unmap_owned`](Self::unmap_owned), whose token
    /// makes a stale unmap impossible to write.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::NotInPool`], and [`Error::NotMapped`] when `tlb_addr`
    /// is not the start of a live mapping (a double unmap, an address inside a mapping or
    /// in a pad slot, a coherent allocation). The pool is unchanged after an error.
    pub fn unmap(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), Error> {
        let _ = dev;
        self.unmap_inner(tlb_addr, size, dir, attrs, None::<NoMaintenance>)
            .map(|Ok(())| ())
            .map_err(|e| self.fail_at(tlb_addr, e))
    }

    /// [`unmap`](Self::unmap) for a layer that maintains caches (a non-coherent device):
    /// once the mapping is found and claimed, and before the copy back, `maintain` runs on
    /// the pool range of the mapping that the unmap covers, `[tlb_addr, tlb_addr + len)` with
    /// `len` the smaller of `size` and the mapped size. So cache maintenance never reaches
    /// past the mapping's own slots, whatever `size` says, and never runs for an address that
    /// is not the start of a live mapping.
    ///
    /// `maintain` runs outside the area lock, while no sync of the mapping can run. Its
    /// error does not stop the unmap: the copy back and the freeing happen anyway and the
    /// error comes back as the inner `Err`.
    ///
    /// # Errors
    ///
    /// The outer `Err` as for [`unmap`](Self::unmap) (`maintain` did not run, the pool is
    /// unchanged); the inner `Err` is `maintain`'s.
    pub fn unmap_maintained<E>(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        maintain: impl FnOnce(PhysAddr, usize) -> Result<(), E>,
    ) -> Result<Result<(), E>, Error> {
        let _ = dev;
        self.unmap_inner(tlb_addr, size, dir, attrs, Some(maintain))
            .map_err(|e| self.fail_at(tlb_addr, e))
    }

    #[inline]
    fn unmap_inner<E>(
        &self,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        maintain: Option<impl FnOnce(PhysAddr, usize) -> Result<(), E>>,
    ) -> Result<Result<(), E>, Error> {
        // SAFETY: the mapper of a physical original vouched for it until this unmap; `src`
        // lies in the claimed mapping.
        self.unmap_with(
            tlb_addr,
            size,
            dir,
            attrs,
            false,
            maintain,
            |orig, src, len| unsafe {
                self.mem.copy(orig, src, len);
            },
        )
    }

    /// The unmapping half both kinds of original share: validates that `tlb_addr` starts a
    /// live mapping of that kind (`buffer`: mapped by [`map_buffer`](Self::map_buffer)),
    /// claims it, waits for syncs, runs `maintain` on the part of the mapping the unmap
    /// covers, copies back with `copy_back_with(orig, data_place, len)` (`orig` is the
    /// recorded original, invalid for a buffer) and frees the slots.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn unmap_with<E>(
        &self,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        buffer: bool,
        maintain: Option<impl FnOnce(PhysAddr, usize) -> Result<(), E>>,
        copy_back_with: impl FnOnce(PhysAddr, PhysAddr, usize),
    ) -> Result<Result<(), E>, Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let idx = self.slot_index(tlb_addr)?;
        let not_mapped = Error::NotMapped { addr: tlb_addr };
        let slots = self.slots()?;
        let h = &slots[idx];
        let in_slot = (tlb_addr.as_u64() - self.start.as_u64()) & SLOT_MASK;
        // The mutant of `cargo xtask xen-qemu mutants`: a FromDevice mapping is never
        // copied back at unmap.
        #[cfg(swiotlb_mutant = "no_copy_back")]
        let copy_back =
            dir == DmaDirection::Bidirectional && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC);
        #[cfg(not(swiotlb_mutant = "no_copy_back"))]
        let copy_back = dir.from_device() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC);
        let area = &self.areas[self.area_of(idx)];
        let mut st = area.lock.lock();
        if h.state.load(Ordering::Relaxed) != state::HEAD
            || u64::from(h.offset.load(Ordering::Relaxed)) != in_slot
            || (h.orig.load(Ordering::Relaxed) == INVALID_PHYS) != buffer
        {
            return Err(not_mapped);
        }
        if !copy_back && maintain.is_none() && h.busy.load(Ordering::Acquire) == 0 {
            // Nothing to copy or maintain and no sync copying: validate and free in one
            // critical section.
            let overflow = size > h.size.load(Ordering::Relaxed) as usize;
            self.release(slots, idx, &mut st);
            bump(&area.unmaps, 1);
            if overflow {
                bump(&area.overflow_attempts, 1);
            }
            drop(st);
            return Ok(Ok(()));
        }
        // Claim the mapping under the area lock: from here no sync can pin it (syncs pin only
        // a HEAD mapping, under the lock) and no other unmap can touch it.
        h.state.store(state::UNMAPPING, Ordering::Relaxed);
        drop(st);
        // Wait for the syncs that pinned it before the claim; their copies happen before
        // what follows (release decrement, acquire load).
        while h.busy.load(Ordering::Acquire) != 0 {
            spin_wait();
        }
        let msize = h.size.load(Ordering::Relaxed) as usize;
        let overflow = size > msize;
        let len = size.min(msize);
        // The cache maintenance covers the mapping only (CVE-2024-35814's class: never the
        // caller's `size` past it).
        let maintained = maintain.map_or(Ok(()), |m| m(tlb_addr, len));
        if copy_back {
            // The mapping is claimed and no sync copies it any more, so its slots stay
            // allocated and the copy-back runs alone; `len` is within the mapping in the pool
            // and within the original.
            let orig = PhysAddr::new(h.orig.load(Ordering::Relaxed));
            copy_back_with(orig, data_place(tlb_addr), len);
        }
        let mut st = area.lock.lock();
        self.release(slots, idx, &mut st);
        bump(&area.unmaps, 1);
        if copy_back {
            // CAST: usize fits in u64.
            bump(&area.bytes_bounced, len as u64);
        }
        if overflow {
            bump(&area.overflow_attempts, 1);
        }
        drop(st);
        Ok(maintained)
    }

    /// Validates a sync of `[tlb_addr, tlb_addr + size)` and returns the original range and
    /// the clamped length. The caller holds the area lock of `idx`.
    fn sync_range(
        &self,
        idx: usize,
        tlb_addr: PhysAddr,
        size: usize,
        area: &Area,
    ) -> Result<SyncRange, Error> {
        let slots = self.slots()?;
        let not_mapped = Error::NotMapped { addr: tlb_addr };
        let s = &slots[idx];
        let k = match s.state.load(Ordering::Acquire) {
            state::HEAD => 0,
            state::BODY => usize::from(s.k.load(Ordering::Relaxed)),
            _ => return Err(not_mapped),
        };
        let head = idx.checked_sub(k).ok_or(not_mapped)?;
        let h = &slots[head];
        // A buffer mapping (no physical original) is synced by nobody through here.
        if h.state.load(Ordering::Acquire) != state::HEAD
            || h.orig.load(Ordering::Relaxed) == INVALID_PHYS
        {
            return Err(not_mapped);
        }
        let small_off = u64::from(h.offset.load(Ordering::Relaxed));
        let msize = u64::from(h.size.load(Ordering::Relaxed));
        let data_start = self.slot_addr(head, small_off);
        // The position of `tlb_addr` in the mapping's data (Linux's signed tlb_offset,
        // taken from the first data slot so that it is never negative inside the data).
        let pos = tlb_addr.as_u64() - data_start.as_u64().min(tlb_addr.as_u64());
        if tlb_addr < data_start || pos >= msize {
            return Err(Error::SyncOutOfRange {
                addr: tlb_addr,
                size,
                start: data_start,
                end: PhysAddr::new(data_start.as_u64() + msize),
            });
        }
        let remaining = msize - pos;
        // CAST: usize fits in u64.
        let len = if size as u64 > remaining {
            bump(&area.overflow_attempts, 1);
            // CAST: remaining <= the mapping's size, a usize.
            remaining as usize
        } else {
            size
        };
        Ok(SyncRange {
            orig: PhysAddr::new(h.orig.load(Ordering::Relaxed) + pos),
            len,
            head,
        })
    }

    /// Validates a sync of `[tlb_addr, tlb_addr + size)`, clamps it to the mapping, pins the
    /// mapping and copies (`copy`: original to pool when `to_pool`, pool to original
    /// otherwise). `maintain` runs on the clamped pool range while the mapping is pinned:
    /// after the copy to the pool, before the copy from it (skipping that copy if it fails).
    fn sync<E>(
        &self,
        tlb_addr: PhysAddr,
        size: usize,
        copy: bool,
        to_pool: bool,
        maintain: Option<impl FnOnce(PhysAddr, usize) -> Result<(), E>>,
    ) -> Result<Result<(), E>, Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let idx = self.slot_index(tlb_addr)?;
        let area = &self.areas[self.area_of(idx)];
        let guard = area.lock.lock();
        let r = self.sync_range(idx, tlb_addr, size, area)?;
        bump(&area.syncs, 1);
        if !copy && maintain.is_none() {
            return Ok(Ok(()));
        }
        if copy {
            // Counted under the lock (its only writer), before a failing `maintain` may
            // cancel a copy from the pool.
            // CAST: usize fits in u64.
            bump(&area.bytes_bounced, r.len as u64);
        }
        // Pin the mapping so that an unmap waits for this copy and maintenance; with the count
        // saturated (65535 syncs of one mapping at once), work under the lock instead.
        let head = &self.slots()?[r.head];
        let pinned = head.busy.load(Ordering::Relaxed) < u16::MAX;
        let guard = if pinned {
            head.busy.fetch_add(1, Ordering::Relaxed);
            drop(guard);
            None
        } else {
            Some(guard)
        };
        let do_copy = || {
            if !copy {
                return;
            }
            // SAFETY: the mapping is pinned (or its area lock held), so an unmap waits for
            // this copy before it copies back or frees the slots; both ranges lie within the
            // mapping (pool side) and the original the mapper vouched for until unmap.
            unsafe {
                if to_pool {
                    self.mem.copy(data_place(tlb_addr), r.orig, r.len);
                } else {
                    self.mem.copy(r.orig, data_place(tlb_addr), r.len);
                }
            }
        };
        let mut maintain = maintain.map(|m| move || m(tlb_addr, r.len));
        let maintained = if to_pool {
            do_copy();
            maintain.take().map_or(Ok(()), |m| m())
        } else {
            let res = maintain.take().map_or(Ok(()), |m| m());
            if res.is_ok() {
                do_copy();
            }
            res
        };
        if pinned {
            // The copy happens before an unmap's acquire load sees the count drop.
            head.busy.fetch_sub(1, Ordering::Release);
        }
        drop(guard);
        Ok(maintained)
    }

    /// Makes the device see the CPU's writes: copies original to pool for
    /// [`DmaDirection::ToDevice`] and [`DmaDirection::Bidirectional`], nothing for
    /// [`DmaDirection::FromDevice`] (Linux's `__swiotlb_sync_single_for_device`).
    ///
    /// `tlb_addr` may point anywhere inside a mapping's data (a partial sync); the original
    /// bytes at the same position are copied. A range past the end of the mapping is
    /// clamped and counted in [`Stats::overflow_attempts`].
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::NotInPool`], [`Error::NotMapped`],
    /// [`Error::SyncOutOfRange`] (an address in the first slot before the data). The
    /// address is validated whatever the direction.
    pub fn sync_for_device(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<(), Error> {
        let _ = dev;
        self.sync(tlb_addr, size, dir.to_device(), true, None::<NoMaintenance>)
            .map(|Ok(())| ())
            .map_err(|e| self.fail_at(tlb_addr, e))
    }

    /// [`sync_for_device`](Self::sync_for_device) for a layer that maintains caches: after
    /// the copy, `maintain` runs on the synced pool range clamped to the mapping (the range
    /// the copy covers), while the mapping is pinned. It runs for every direction, and never
    /// for an address that is not inside a live mapping.
    ///
    /// # Errors
    ///
    /// The outer `Err` as for [`sync_for_device`](Self::sync_for_device) (nothing copied,
    /// `maintain` did not run); the inner `Err` is `maintain`'s.
    pub fn sync_for_device_maintained<E>(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
        maintain: impl FnOnce(PhysAddr, usize) -> Result<(), E>,
    ) -> Result<Result<(), E>, Error> {
        let _ = dev;
        self.sync(tlb_addr, size, dir.to_device(), true, Some(maintain))
            .map_err(|e| self.fail_at(tlb_addr, e))
    }

    /// Makes the CPU see the device's writes: copies pool to original for
    /// [`DmaDirection::FromDevice`] and [`DmaDirection::Bidirectional`], nothing for
    /// [`DmaDirection::ToDevice`] (Linux's `__swiotlb_sync_single_for_cpu`).
    ///
    /// Partial syncs and clamping as for [`sync_for_device`](Self::sync_for_device).
    ///
    /// # Errors
    ///
    /// As for [`sync_for_device`](Self::sync_for_device).
    pub fn sync_for_cpu(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<(), Error> {
        let _ = dev;
        self.sync(
            tlb_addr,
            size,
            dir.from_device(),
            false,
            None::<NoMaintenance>,
        )
        .map(|Ok(())| ())
        .map_err(|e| self.fail_at(tlb_addr, e))
    }

    /// [`sync_for_cpu`](Self::sync_for_cpu) for a layer that maintains caches: before the
    /// copy, `maintain` runs on the synced pool range clamped to the mapping (the range the
    /// copy covers), while the mapping is pinned; if it fails nothing is copied. It runs for
    /// every direction, and never for an address that is not inside a live mapping.
    ///
    /// # Errors
    ///
    /// The outer `Err` as for [`sync_for_cpu`](Self::sync_for_cpu) (nothing copied,
    /// `maintain` did not run); the inner `Err` is `maintain`'s (nothing copied).
    pub fn sync_for_cpu_maintained<E>(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
        maintain: impl FnOnce(PhysAddr, usize) -> Result<(), E>,
    ) -> Result<Result<(), E>, Error> {
        let _ = dev;
        self.sync(tlb_addr, size, dir.from_device(), false, Some(maintain))
            .map_err(|e| self.fail_at(tlb_addr, e))
    }

    /// Allocates `size` bytes of pool memory for coherent use (Linux's `swiotlb_alloc`, for
    /// restricted pools): aligned to the size rounded up to a power-of-two number of 4 KiB
    /// pages, within the device's segment boundary, zeroed, with no original and no copies.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::ExceedsSegment`], [`Error::InvalidMask`],
    /// [`Error::PoolFull`].
    pub fn alloc(&self, dev: &Device, size: usize, cpu: usize) -> Result<PhysAddr, Error> {
        self.alloc_inner(dev, size, cpu)
            .map_err(|e| self.fail_cpu(cpu, e))
    }

    fn alloc_inner(&self, dev: &Device, size: usize, cpu: usize) -> Result<PhysAddr, Error> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        if size > self.run_cap * IO_TLB_SIZE {
            // CAST: usize fits in u64.
            let e = Error::ExceedsSegment {
                alloc_size: size as u64,
                max: 0,
            };
            return Err(self.narrow_exceeds(dev, e));
        }
        // (1 << (get_order(size) + PAGE_SHIFT)) - 1.
        // CAST: usize fits in u64.
        let align = (size as u64).div_ceil(PAGE_SIZE).next_power_of_two() * PAGE_SIZE - 1;
        let plan = Plan::new(
            self.start.as_u64(),
            dev.min_align_mask,
            dev.seg_boundary_mask,
            None,
            size,
            align,
            self.run_cap,
        )
        .map_err(|e| self.narrow_exceeds(dev, e))?;
        let head = self.find_slots(&plan, cpu, false, None, size, dev.tag)?;
        let addr = self.slot_addr(head, 0);
        // SAFETY: the slots are ours (COHERENT, returned to nobody yet), inside the pool.
        unsafe { self.mem.fill(addr, 0, size) };
        Ok(addr)
    }

    /// Frees a coherent allocation made by [`alloc`](Self::alloc) (Linux's `swiotlb_free`).
    ///
    /// By address, with [`unmap`](Self::unmap)'s caveat on ownership: a stale call frees
    /// whatever allocation starts there now; [`alloc_owned`](Self::alloc_owned) and
    /// [`free_owned`](Self::free_owned) make that impossible.
    ///
    /// # Errors
    ///
    /// [`Error::NotInPool`], [`Error::NotMapped`] when `addr` is not the start of a live
    /// coherent allocation. The pool is unchanged after an error.
    pub fn free(&self, dev: &Device, addr: PhysAddr) -> Result<(), Error> {
        let _ = dev;
        self.free_inner(addr).map_err(|e| self.fail_at(addr, e))
    }

    fn free_inner(&self, addr: PhysAddr) -> Result<(), Error> {
        let idx = self.slot_index(addr)?;
        let area = &self.areas[self.area_of(idx)];
        let slots = self.slots()?;
        let mut st = area.lock.lock();
        let h = &slots[idx];
        let in_slot = (addr.as_u64() - self.start.as_u64()) & SLOT_MASK;
        if h.state.load(Ordering::Acquire) != state::COHERENT || in_slot != 0 {
            return Err(Error::NotMapped { addr });
        }
        self.release(slots, idx, &mut st);
        bump(&area.frees, 1);
        drop(st);
        Ok(())
    }

    /// [`map`](Self::map) with an ownership token: the returned [`PoolMapping`] is the only
    /// handle to the mapping and [`unmap_owned`](Self::unmap_owned) consumes it, so a stale
    /// or second unmap cannot be written, and a token of another pool is refused.
    ///
    /// # Errors
    ///
    /// As for [`map`](Self::map).
    ///
    /// # Safety
    ///
    /// As for [`map`](Self::map).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn map_owned(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        alloc_align_mask: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
        cpu: usize,
    ) -> Result<PoolMapping, Error> {
        // SAFETY: the caller's promise is `map`'s.
        let tlb = unsafe { self.map(dev, orig, size, alloc_align_mask, dir, attrs, cpu) }?;
        Ok(PoolMapping {
            tlb,
            size,
            pool: self.identity(),
        })
    }

    /// Unmaps the mapping of `mapping` as [`unmap`](Self::unmap) does with its address and
    /// mapped size. On an error the token comes back (the mapping is untouched).
    ///
    /// # Errors
    ///
    /// [`Error::NotMapped`] for a token of another pool, and [`unmap`](Self::unmap)'s.
    pub fn unmap_owned(
        &self,
        dev: &Device,
        mapping: PoolMapping,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), (PoolMapping, Error)> {
        if mapping.pool != self.identity() {
            let e = self.fail_at(mapping.tlb, Error::NotMapped { addr: mapping.tlb });
            return Err((mapping, e));
        }
        self.unmap(dev, mapping.tlb, mapping.size, dir, attrs)
            .map_err(|e| (mapping, e))
    }

    /// [`alloc`](Self::alloc) with an ownership token, consumed by
    /// [`free_owned`](Self::free_owned).
    ///
    /// # Errors
    ///
    /// As for [`alloc`](Self::alloc).
    pub fn alloc_owned(&self, dev: &Device, size: usize, cpu: usize) -> Result<PoolAlloc, Error> {
        let addr = self.alloc(dev, size, cpu)?;
        Ok(PoolAlloc {
            addr,
            size,
            pool: self.identity(),
        })
    }

    /// Frees the allocation of `alloc`; on an error the token comes back.
    ///
    /// # Errors
    ///
    /// [`Error::NotMapped`] for a token of another pool, and [`free`](Self::free)'s.
    pub fn free_owned(&self, dev: &Device, alloc: PoolAlloc) -> Result<(), (PoolAlloc, Error)> {
        if alloc.pool != self.identity() {
            let e = self.fail_at(alloc.addr, Error::NotMapped { addr: alloc.addr });
            return Err((alloc, e));
        }
        self.free(dev, alloc.addr).map_err(|e| (alloc, e))
    }

    /// What tells this pool's tokens from another's: the address of its metadata (two live
    /// pools never share it) and its start.
    fn identity(&self) -> (usize, PhysAddr) {
        let slots = self.storage.as_ref();
        (slots.as_ptr().addr(), self.start)
    }

    /// Checks the pool's internal invariants, taking each area lock in turn: the free
    /// bitmaps agree with the slot states, every area's `used` matches its bitmaps, every
    /// allocation lies in one area, in one segment or across joined segments only, no
    /// longer than the pool's longest run, with consistent metadata, no segment is joined
    /// across an area, and the pool-wide `used` is the sum of the areas'. Meant for tests and debugging; call it while no operation
    /// is in flight for the `used` sum to be exact.
    ///
    /// # Errors
    ///
    /// A description of the first violation found, with the slot index involved.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let slots = self.slots().map_err(|_| InvariantViolation {
            slot: 0,
            what: "the metadata storage holds fewer slots than the pool",
        })?;
        let nsegs = self.nslabs / IO_TLB_SEGSIZE;
        for seg in (self.area_segs() - 1..nsegs).step_by(self.area_segs()) {
            if search::seg_joined(slots, self.area_segs(), seg) {
                return Err(InvariantViolation {
                    slot: seg * IO_TLB_SEGSIZE,
                    what: "the last segment of an area is joined to the next",
                });
            }
        }
        let mut total = 0;
        for (a, area) in self.areas.iter().enumerate() {
            let st = area.lock.lock();
            let base = a * self.area_nslabs;
            let mut used = 0;
            let mut i = base;
            while i < base + self.area_nslabs {
                let free = seg_free(slots, self.area_segs(), i / IO_TLB_SEGSIZE);
                let is_free = free >> (i % IO_TLB_SEGSIZE) & 1 == 1;
                let s = &slots[i];
                let stt = s.state.load(Ordering::Acquire);
                if is_free != (stt == state::FREE) {
                    return Err(InvariantViolation {
                        slot: i,
                        what: "free bitmap disagrees with the slot state",
                    });
                }
                if is_free {
                    if s.orig.load(Ordering::Relaxed) != INVALID_PHYS {
                        return Err(InvariantViolation {
                            slot: i,
                            what: "free slot with an original address",
                        });
                    }
                    i += 1;
                    continue;
                }
                // The start of an allocation: pad slots, then the first data slot.
                let mut pad = 0;
                while i + pad < slots.len()
                    && slots[i + pad].state.load(Ordering::Acquire) == state::PAD
                {
                    pad += 1;
                }
                let head = i + pad;
                let h = slots.get(head).ok_or(InvariantViolation {
                    slot: i,
                    what: "pad slots at the end of the pool",
                })?;
                let hs = h.state.load(Ordering::Acquire);
                if !matches!(
                    hs,
                    state::HEAD | state::RESERVED | state::UNMAPPING | state::COHERENT
                ) {
                    return Err(InvariantViolation {
                        slot: head,
                        what: "allocation without a first data slot",
                    });
                }
                let n = usize::from(h.nslots.load(Ordering::Relaxed));
                if usize::from(h.pad.load(Ordering::Relaxed)) != pad || n <= pad {
                    return Err(InvariantViolation {
                        slot: head,
                        what: "pad or slot count disagrees with the slots",
                    });
                }
                if n > self.run_cap {
                    return Err(InvariantViolation {
                        slot: i,
                        what: "allocation longer than the pool's longest run",
                    });
                }
                if i + n > base + self.area_nslabs {
                    return Err(InvariantViolation {
                        slot: i,
                        what: "allocation crosses an area",
                    });
                }
                // Every segment boundary the allocation crosses must be a join.
                let (s0, s1) = (i / IO_TLB_SEGSIZE, (i + n - 1) / IO_TLB_SEGSIZE);
                if (s0..s1).any(|s| !search::seg_joined(slots, self.area_segs(), s)) {
                    return Err(InvariantViolation {
                        slot: i,
                        what: "allocation crosses a segment that is not joined to the next",
                    });
                }
                for (k, s) in slots[head + 1..i + n].iter().enumerate() {
                    if s.state.load(Ordering::Acquire) != state::BODY
                        || usize::from(s.k.load(Ordering::Relaxed)) != k + 1
                    {
                        return Err(InvariantViolation {
                            slot: head + 1 + k,
                            what: "data slot with a wrong state or index",
                        });
                    }
                }
                used += n;
                i += n;
            }
            if used != st.used {
                return Err(InvariantViolation {
                    slot: base,
                    what: "area used count disagrees with its slots",
                });
            }
            total += used;
        }
        if total != self.used() {
            return Err(InvariantViolation {
                slot: 0,
                what: "pool used count disagrees with the areas",
            });
        }
        Ok(())
    }
}

impl<M: BufferMemory, S: AsRef<[Slot]>> BouncePool<M, S> {
    /// [`map`](Self::map) for an original the caller reaches at `buf` (and the CPU at
    /// physical address `phys` if known): the same slot search, alignment, offset keeping,
    /// statistics and always-copy-in, with the copy made through `buf`
    /// ([`BufferMemory::copy_from_buffer`]) so that the caller's references to the buffer
    /// stay valid. The bits of the original `dev.min_align_mask` keeps are those of `phys`,
    /// or of `buf`'s address when there is no physical address.
    ///
    /// A buffer mapping records no physical original: it is synced by nobody and unmapped
    /// only by [`unmap_buffer`](Self::unmap_buffer) ([`unmap`](Self::unmap) and the syncs
    /// answer [`Error::NotMapped`] for it, as `unmap_buffer` does for a mapping of `map`).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map). The pool is unchanged after an error.
    ///
    /// # Safety
    ///
    /// `buf` must be valid for reads of `buf.len()` bytes, not written by anyone during this
    /// call and not overlapping the pool.
    pub unsafe fn map_buffer(
        &self,
        dev: &Device,
        buf: NonNull<[u8]>,
        phys: Option<PhysAddr>,
        alloc_align_mask: u64,
        cpu: usize,
    ) -> Result<PhysAddr, Error> {
        let size = buf.len();
        // CAST: usize fits in u64.
        let align_src = phys.unwrap_or(PhysAddr::new(buf.cast::<u8>().as_ptr().addr() as u64));
        // SAFETY: the caller vouches for `buf`; `dst` is a range of slots this mapping owns.
        let r = self.map_with(
            dev,
            align_src,
            phys.is_some(),
            None,
            size,
            alloc_align_mask,
            cpu,
            |dst| unsafe {
                self.mem.copy_from_buffer(dst, buf.cast(), size);
            },
        );
        r.map_err(|e| self.fail_cpu(cpu, e))
    }

    /// [`unmap`](Self::unmap) for a mapping of [`map_buffer`](Self::map_buffer): copies the
    /// mapping back through `buf` ([`BufferMemory::copy_to_buffer`]) for
    /// [`DmaDirection::FromDevice`] and [`DmaDirection::Bidirectional`] unless
    /// [`DmaAttrs::SKIP_CPU_SYNC`], then frees the slots. `buf.len()` bytes are copied, at
    /// most the mapped size (a larger length is clamped and counted in
    /// [`Stats::overflow_attempts`]).
    ///
    /// # Errors
    ///
    /// [`Error::ZeroSize`], [`Error::NotInPool`], and [`Error::NotMapped`] when `tlb_addr`
    /// is not the start of a live buffer mapping. The pool is unchanged after an error.
    ///
    /// # Safety
    ///
    /// `buf` must be valid for writes of `buf.len()` bytes, accessed by nobody else during
    /// this call and not overlapping the pool.
    pub unsafe fn unmap_buffer(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        buf: NonNull<[u8]>,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), Error> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.unmap_buffer_inner(dev, tlb_addr, buf, dir, attrs, None::<NoMaintenance>) }
            .map(|Ok(())| ())
    }

    /// [`unmap_buffer`](Self::unmap_buffer) for a layer that maintains caches, as
    /// [`unmap_maintained`](Self::unmap_maintained) is for [`unmap`](Self::unmap): `maintain`
    /// runs on the mapping's own pool range (at most `buf.len()` bytes), once the mapping is
    /// found and claimed and before the copy back.
    ///
    /// # Errors
    ///
    /// The outer `Err` as for [`unmap_buffer`](Self::unmap_buffer) (`maintain` did not run,
    /// the pool is unchanged); the inner `Err` is `maintain`'s.
    ///
    /// # Safety
    ///
    /// As for [`unmap_buffer`](Self::unmap_buffer).
    pub unsafe fn unmap_buffer_maintained<E>(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        buf: NonNull<[u8]>,
        dir: DmaDirection,
        attrs: DmaAttrs,
        maintain: impl FnOnce(PhysAddr, usize) -> Result<(), E>,
    ) -> Result<Result<(), E>, Error> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.unmap_buffer_inner(dev, tlb_addr, buf, dir, attrs, Some(maintain)) }
    }

    /// # Safety
    ///
    /// As for [`unmap_buffer`](Self::unmap_buffer).
    unsafe fn unmap_buffer_inner<E>(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        buf: NonNull<[u8]>,
        dir: DmaDirection,
        attrs: DmaAttrs,
        maintain: Option<impl FnOnce(PhysAddr, usize) -> Result<(), E>>,
    ) -> Result<Result<(), E>, Error> {
        let _ = dev;
        // SAFETY: the caller vouches for `buf` for `buf.len()` bytes, and `len` is at most
        // that; `src` lies in the claimed mapping.
        let r = self.unmap_with(
            tlb_addr,
            buf.len(),
            dir,
            attrs,
            true,
            maintain,
            |_, src, len| unsafe {
                self.mem.copy_to_buffer(buf.cast(), src, len);
            },
        );
        r.map_err(|e| self.fail_at(tlb_addr, e))
    }
}

/// The ownership token of a streaming mapping ([`BouncePool::map_owned`]): neither `Clone`
/// nor `Copy`, so the mapping is unmapped at most once, by its owner
/// ([`BouncePool::unmap_owned`]). Dropping it leaks the slots.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a pool mapping must be unmapped with unmap_owned"]
pub struct PoolMapping {
    tlb: PhysAddr,
    size: usize,
    pool: (usize, PhysAddr),
}

impl PoolMapping {
    /// The pool address the device uses (as [`BouncePool::map`] returns it).
    #[must_use]
    pub fn addr(&self) -> PhysAddr {
        self.tlb
    }

    /// The mapped size.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }
}

/// The ownership token of a coherent pool allocation ([`BouncePool::alloc_owned`]), freed
/// at most once with [`BouncePool::free_owned`]. Dropping it leaks the slots.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a pool allocation must be freed with free_owned"]
pub struct PoolAlloc {
    addr: PhysAddr,
    size: usize,
    pool: (usize, PhysAddr),
}

impl PoolAlloc {
    /// The allocation's first byte.
    #[must_use]
    pub fn addr(&self) -> PhysAddr {
        self.addr
    }

    /// The size asked for.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }
}

/// A broken pool invariant found by [`BouncePool::check_invariants`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pool invariant broken at slot {slot}: {what}")]
pub struct InvariantViolation {
    /// The slot where the violation was found.
    pub slot: usize,
    /// What is wrong.
    pub what: &'static str,
}

/// Where the bytes of the bounce address `tlb` are kept in the pool: `tlb` itself. (Under
/// the mutant `slot_offset` of `cargo xtask xen-qemu mutants`, 64 bytes further on, so that
/// the CPU's copies agree with each other but not with what the device is given.)
#[inline]
const fn data_place(tlb: PhysAddr) -> PhysAddr {
    #[cfg(swiotlb_mutant = "slot_offset")]
    return PhysAddr::new(tlb.as_u64() + 64);
    #[cfg(not(swiotlb_mutant = "slot_offset"))]
    tlb
}
