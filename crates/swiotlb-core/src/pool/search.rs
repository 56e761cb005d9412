//! The slot search and the free-slot bookkeeping.
//!
//! Linux keeps, per slot, the number of free slots from it to the end of its segment, and
//! searches an area slot by slot (stepping by the alignment stride). This port keeps the same
//! information as one 128-bit free bitmap per segment. A search then treats a segment at a
//! time: it skips a segment that has fewer free slots than needed in O(1), and finds every
//! position in a segment where a long enough free run starts, with the right alignment, with
//! a handful of shifts and ands. The alignment, minimum-alignment and segment-boundary rules
//! are those of Linux's `swiotlb_search_pool_area`, checked on the same addresses.
//!
//! Beyond Linux: where the pool was told that a segment is bus-contiguous with the next one
//! (a *join*, [`super::BouncePool::set_segment_joins`]), a run may cross from one into the
//! other. A request of more than a segment is searched only among the free runs of joined
//! segments ([`search_joined`]); a request of at most a segment is searched segment by
//! segment as in Linux, and only when that finds nothing in an area with joins, among the
//! runs that cross a join. A pool without joins searches exactly as before.

use super::area::Slot;
use super::{IO_TLB_SEGSIZE, IO_TLB_SHIFT, IO_TLB_SIZE, PAGE_SIZE};
use crate::error::Error;
use crate::lock::atomic::AtomicU8;
use crate::lock::atomic::Ordering;

/// The slot geometry and alignment constraints of one request, computed before any lock is
/// taken.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// Slots to take, pad slots included (Linux's `nr_slots(alloc_size)`).
    pub(crate) nslots: usize,
    /// Bytes to take: the size plus the kept offset, rounded up to the alignment (Linux's
    /// `ALIGN(mapping_size + offset, alloc_align_mask + 1)`, the size its "swiotlb buffer is
    /// full" message prints).
    pub(crate) alloc_size: usize,
    /// Whole slots in front of the first data slot.
    pub(crate) pad: usize,
    /// The offset of the data inside the first data slot (below 2 KiB).
    pub(crate) small_off: u16,
    /// Candidate first slots are `g` with `g % stride == phase` (global slot indices).
    stride: u64,
    phase: u64,
    /// Segment boundary in slots (`get_max_slots(boundary_mask)`) and the pool's offset
    /// inside a boundary, in slots.
    max_slots: u64,
    shift: u64,
}

/// Whether `mask` is of the form `2^n - 1` (zero included).
#[inline]
pub(crate) const fn is_low_mask(mask: u64) -> bool {
    mask & mask.wrapping_add(1) == 0
}

impl Plan {
    /// Computes the plan of a request of `size` bytes whose original starts at `orig`
    /// (`None` for a coherent allocation), for a pool starting at `pool_start` whose longest
    /// run is `max_run` slots (a segment, 128, unless segments are joined).
    ///
    /// Mirrors `swiotlb_tbl_map_single` (offset and size) and the set-up part of
    /// `swiotlb_search_pool_area` (alignment, stride, boundary). An allocation longer than
    /// `max_run` slots is [`Error::ExceedsSegment`] with `max_run` in bytes as its `max` (the
    /// pool narrows it to the device's).
    #[inline]
    pub(crate) fn new(
        pool_start: u64,
        min_align_mask: u64,
        seg_boundary_mask: u64,
        orig: Option<u64>,
        size: usize,
        alloc_align_mask: u64,
        max_run: usize,
    ) -> Result<Self, Error> {
        if !is_low_mask(alloc_align_mask) {
            return Err(Error::InvalidMask {
                what: "alloc_align_mask",
                mask: alloc_align_mask,
            });
        }
        if !is_low_mask(min_align_mask) {
            return Err(Error::InvalidMask {
                what: "min_align_mask",
                mask: min_align_mask,
            });
        }
        if !is_low_mask(seg_boundary_mask) {
            return Err(Error::InvalidMask {
                what: "seg_boundary_mask",
                mask: seg_boundary_mask,
            });
        }
        // CAST: max_run <= MAX_RUN_SLOTS.
        let run_bytes = (max_run as u64) << IO_TLB_SHIFT;
        let io_tlb_mask = IO_TLB_SIZE as u64 - 1;
        let orig_raw = orig.unwrap_or(0);
        // swiotlb_align_offset(dev, alloc_align_mask, orig).
        let offset = orig_raw & min_align_mask & (alloc_align_mask | io_tlb_mask);
        // CAST: usize is at most 64 bits on every supported target.
        let alloc_size = (size as u64)
            .checked_add(offset)
            .and_then(|s| s.checked_add(alloc_align_mask))
            .map(|s| s & !alloc_align_mask)
            .filter(|&s| s <= run_bytes)
            .ok_or(Error::ExceedsSegment {
                alloc_size: (size as u64)
                    .saturating_add(offset)
                    .saturating_add(alloc_align_mask)
                    & !alloc_align_mask,
                max: run_bytes,
            })?;
        // CAST: alloc_size <= max_run slots, so the slot count is at most MAX_RUN_SLOTS.
        let nslots = alloc_size.div_ceil(IO_TLB_SIZE as u64) as usize;

        // The search's alignment: page alignment for large streaming maps when no mask asks
        // otherwise, at least slot alignment, and the min_align bits above that.
        let mut align = alloc_align_mask;
        if align == 0 && min_align_mask == 0 && alloc_size >= PAGE_SIZE {
            align = PAGE_SIZE - 1;
        }
        align |= io_tlb_mask;
        let iotlb_align = if orig.is_some() {
            min_align_mask & !align
        } else {
            0
        };
        // Both are low masks, so their union is one too and the stride a power of two.
        let m = align | iotlb_align;
        let stride = (m >> IO_TLB_SHIFT) + 1;
        let target = (orig_raw & iotlb_align) >> IO_TLB_SHIFT;
        let phase = target.wrapping_sub(pool_start >> IO_TLB_SHIFT) & (stride - 1);
        let max_slots = (seg_boundary_mask >> IO_TLB_SHIFT) + 1;
        let shift = (pool_start & seg_boundary_mask) >> IO_TLB_SHIFT;
        Ok(Self {
            nslots,
            // CAST: alloc_size <= max_run slots (at most 64 MiB).
            alloc_size: alloc_size as usize,
            // CAST: offset < alloc_size, so pad < nslots; small_off < 2048.
            pad: (offset >> IO_TLB_SHIFT) as usize,
            small_off: (offset & io_tlb_mask) as u16,
            stride,
            phase,
            max_slots,
            shift,
        })
    }

    /// The mask of positions in the segment starting at global slot `base` that satisfy
    /// the alignment rules.
    #[inline]
    fn aligned_positions(&self, base: u64) -> u128 {
        let seg = IO_TLB_SEGSIZE as u64;
        let p0 = self.phase.wrapping_sub(base) & (self.stride - 1);
        if p0 >= seg {
            return 0;
        }
        if self.stride >= seg {
            return 1u128 << p0;
        }
        if self.stride == 1 {
            return u128::MAX;
        }
        // A bit every `stride` positions, starting at 0, then moved to `p0`.
        let mut pattern: u128 = 1;
        let mut width = self.stride;
        while width < seg {
            pattern |= pattern << width;
            width <<= 1;
        }
        pattern << p0
    }

    /// The device's segment boundary in slots and the pool's offset inside a boundary
    /// window, in slots: what [`super::BouncePool`] needs to tell the longest run the device
    /// can ever get.
    pub(crate) fn boundary(&self) -> (u64, u64) {
        (self.max_slots, self.shift)
    }

    /// The lowest start `g` in `[a, b - nslots]` (global slot indices) of a run of this
    /// request: aligned (`g % stride == phase`) and not crossing the device's boundary.
    #[inline]
    fn place(&self, a: usize, b: usize) -> Option<usize> {
        let n = self.nslots as u64;
        // CAST: slot indices fit in u64.
        let (a, b) = (a as u64, b as u64);
        let last = b.checked_sub(n)?;
        let align_up = |x: u64| x + (self.phase.wrapping_sub(x) & (self.stride - 1));
        let mut g = align_up(a);
        // Stride and boundary are both powers of two. If the first candidate crosses a
        // boundary, the first one of the next boundary window is the best left: every
        // window's first candidate sits at the same offset in it (the stride divides the
        // window), or every candidate sits at the same offset in its window (the window
        // divides the stride). So if that one crosses too, none fits.
        for _ in 0..2 {
            if g > last {
                return None;
            }
            if !self.spans_boundary(g) {
                // CAST: g <= last < b, a slot index.
                return Some(g as usize);
            }
            let w = self.shift.wrapping_add(g) & (self.max_slots - 1);
            g = align_up(g + (self.max_slots - w));
        }
        None
    }

    /// Whether a run of this request may start at global slot `g`: inside one segment,
    /// aligned, not crossing the device's boundary, and every slot free in the bitmaps of a
    /// pool of areas of `area_segs` segments. The same rules [`search_area`] applies to each
    /// candidate it finds, for one candidate given in advance. `g` may be any value (a slot
    /// past the pool, [`super::area::NO_REUSE`]): then the answer is `false`. The caller
    /// holds the lock of `g`'s area.
    #[inline]
    pub(crate) fn fits_at(&self, slots: &[Slot], area_segs: usize, g: usize) -> bool {
        let n = self.nslots;
        let p = g % IO_TLB_SEGSIZE;
        // CAST: slot indices fit in u64.
        let g64 = g as u64;
        if g >= slots.len()
            || p + n > IO_TLB_SEGSIZE
            || g64.wrapping_sub(self.phase) & (self.stride - 1) != 0
            || n as u64 > self.max_slots
            || self.spans_boundary(g64)
        {
            return false;
        }
        let mask = run_mask(p, n);
        seg_free(slots, area_segs, g / IO_TLB_SEGSIZE) & mask == mask
    }

    /// Linux's `iommu_is_span_boundary` for a run of `nslots` starting at global slot `g`.
    #[inline]
    fn spans_boundary(&self, g: u64) -> bool {
        let s = self.shift.wrapping_add(g) & (self.max_slots - 1);
        s + self.nslots as u64 > self.max_slots
    }
}

/// The slot whose `free_bits` holds the low half of segment `seg`'s free bitmap (the high
/// half is in the next slot), for areas of `area_segs` segments: the bitmaps of an area's
/// segments are adjacent, in the metadata of the area's own first slots, so that a search
/// reads one cache line per segment and the bitmaps of an area share no cache line with the
/// metadata of another area (which another CPU writes).
#[inline]
pub(crate) fn bitmap_slot(seg: usize, area_segs: usize) -> usize {
    let rel = if area_segs.is_power_of_two() {
        seg & (area_segs - 1)
    } else {
        seg % area_segs
    };
    (seg - rel) * IO_TLB_SEGSIZE + 2 * rel
}

/// Whether segment `seg` is joined to the next one (see [`Slot`]'s `join`).
#[inline]
pub(crate) fn seg_joined(slots: &[Slot], area_segs: usize, seg: usize) -> bool {
    slots[bitmap_slot(seg, area_segs)]
        .join
        .load(Ordering::Relaxed)
        != 0
}

/// The join flag of segment `seg` (see [`Slot`]'s `join`).
pub(crate) fn join_flag(slots: &[Slot], area_segs: usize, seg: usize) -> &AtomicU8 {
    &slots[bitmap_slot(seg, area_segs)].join
}

/// The free bitmap of segment `seg` in a pool of areas of `area_segs` segments.
#[inline]
pub(crate) fn seg_free(slots: &[Slot], area_segs: usize, seg: usize) -> u128 {
    let w = bitmap_slot(seg, area_segs);
    let lo = slots[w].free_bits.load(Ordering::Relaxed);
    let hi = slots[w + 1].free_bits.load(Ordering::Relaxed);
    u128::from(lo) | (u128::from(hi) << 64)
}

/// Stores the free bitmap of segment `seg`.
#[inline]
pub(crate) fn set_seg_free(slots: &[Slot], area_segs: usize, seg: usize, bits: u128) {
    let w = bitmap_slot(seg, area_segs);
    // CAST: deliberate truncation to the low and high halves.
    slots[w].free_bits.store(bits as u64, Ordering::Relaxed);
    slots[w + 1]
        .free_bits
        .store((bits >> 64) as u64, Ordering::Relaxed);
}

/// The mask of `n` bits starting at bit `p` (with `p + n <= 128`).
#[inline]
pub(crate) fn run_mask(p: usize, n: usize) -> u128 {
    let ones = if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    };
    ones << p
}

/// The positions where a run of at least `n` set bits of `free` starts (runs end at bit
/// 127, the end of the segment, as Linux's free counts do).
#[inline]
pub(crate) fn run_starts(free: u128, n: usize) -> u128 {
    let mut r = free;
    let mut k = 1;
    while k < n {
        let t = core::cmp::min(k, n - k);
        r &= r >> t;
        k += t;
    }
    r
}

/// The length of the longest run of set bits of a segment's free bitmap.
pub(crate) fn longest_run(free: u128) -> usize {
    let mut x = free;
    let mut best = 0;
    while x != 0 {
        // The next run starts at the lowest set bit; skip the zeros below it.
        x >>= x.trailing_zeros();
        let ones = x.trailing_ones();
        best = best.max(ones);
        // A shift by 128 (a full bitmap) leaves nothing.
        x = x.checked_shr(ones).unwrap_or(0);
    }
    // CAST: at most 128.
    best as usize
}

/// Searches the area of `area_nslabs` slots starting at global slot `area_base` for a run
/// matching `plan`, starting with the segment that holds the area-relative slot `index`.
/// Returns the global index of the first slot of the run. The caller holds the area lock.
///
/// `joined`: whether the pool has joined segments. Then a request of more than a segment is
/// searched by [`search_joined`] only, and one of at most a segment segment by segment first
/// and by `search_joined` when that finds nothing. Without joins (Linux's pool) a run never
/// crosses a segment.
pub(crate) fn search_area(
    slots: &[Slot],
    area_base: usize,
    area_nslabs: usize,
    index: usize,
    plan: &Plan,
    joined: bool,
) -> Option<usize> {
    let n = plan.nslots;
    if plan.nslots as u64 > plan.max_slots {
        return None;
    }
    if n > IO_TLB_SEGSIZE {
        return if joined {
            search_joined(slots, area_base, area_nslabs, index, plan)
        } else {
            None
        };
    }
    let nsegs = area_nslabs / IO_TLB_SEGSIZE;
    let first_seg = area_base / IO_TLB_SEGSIZE;
    // `index` is below `area_nslabs`, so this is a segment of the area.
    let start = index / IO_TLB_SEGSIZE;
    for i in 0..nsegs {
        let mut rel = start + i;
        if rel >= nsegs {
            rel -= nsegs;
        }
        let seg = first_seg + rel;
        let free = seg_free(slots, nsegs, seg);
        // A full segment is skipped on one test. (No population count: without the
        // `popcnt` target feature, which a portable kernel build cannot assume, it is a
        // software routine costing more than `run_starts` itself.)
        if free == 0 {
            continue;
        }
        let base = seg * IO_TLB_SEGSIZE;
        // CAST: slot indices fit in u64.
        let mut cand = run_starts(free, n) & plan.aligned_positions(base as u64);
        while cand != 0 {
            // CAST: trailing_zeros() < 128.
            let p = cand.trailing_zeros() as usize;
            let g = base + p;
            if !plan.spans_boundary(g as u64) {
                return Some(g);
            }
            cand &= cand - 1;
        }
    }
    if joined {
        return search_joined(slots, area_base, area_nslabs, index, plan);
    }
    None
}

/// The search of runs that may cross joined segments: walks the area's segments in order,
/// following each free run that reaches a segment's end across the joins (a run ends at a
/// taken slot, at a segment not joined to the next, and at the area's end), and places the
/// request in it with [`Plan::place`]. Only runs touching a segment's end are followed: a
/// run inside one segment is shorter than a segment, and the segment-by-segment search has
/// seen those.
///
/// Returns the lowest fitting start at or after the segment holding `index` (as the
/// segment-by-segment search starts there), else the lowest before it. Costs two bitmap
/// words and a join flag per segment of the area (the cache line of each segment's bitmap),
/// for requests of more than a segment or after the segment-by-segment search failed.
#[cold]
pub(crate) fn search_joined(
    slots: &[Slot],
    area_base: usize,
    area_nslabs: usize,
    index: usize,
    plan: &Plan,
) -> Option<usize> {
    let nsegs = area_nslabs / IO_TLB_SEGSIZE;
    let first_seg = area_base / IO_TLB_SEGSIZE;
    let from = area_base + index / IO_TLB_SEGSIZE * IO_TLB_SEGSIZE;
    let mut before = None;
    // The lowest fit in the free run [a, b) at or after `from` (the search is over), else
    // the first fit before `from` is remembered.
    let mut try_run = |a: usize, b: usize| -> Option<usize> {
        if b > from
            && let Some(g) = plan.place(a.max(from), b)
        {
            return Some(g);
        }
        // Nothing at or after `from` in this run, so its lowest fit (if any) is before it.
        if a < from && before.is_none() {
            before = plan.place(a, b);
        }
        None
    };
    // The start of the free run that reaches the current segment's start.
    let mut open: Option<usize> = None;
    for rel in 0..nsegs {
        let seg = first_seg + rel;
        let base = seg * IO_TLB_SEGSIZE;
        let free = seg_free(slots, nsegs, seg);
        if free == u128::MAX {
            open.get_or_insert(base);
        } else {
            // CAST: trailing_ones() and leading_ones() < 128 here.
            let head = free.trailing_ones() as usize;
            let run = if head > 0 {
                Some(open.unwrap_or(base))
            } else {
                open
            };
            if let Some(a) = run
                && let Some(g) = try_run(a, base + head)
            {
                return Some(g);
            }
            let tail = free.leading_ones() as usize;
            open = (tail > 0).then(|| base + IO_TLB_SEGSIZE - tail);
        }
        if (rel + 1 == nsegs || !seg_joined(slots, nsegs, seg))
            && let Some(a) = open.take()
            && let Some(g) = try_run(a, base + IO_TLB_SEGSIZE)
        {
            return Some(g);
        }
    }
    before
}

/// Marks `n` slots from global slot `g` as taken in the free bitmaps.
#[inline]
pub(crate) fn take_run(slots: &[Slot], area_segs: usize, g: usize, n: usize) {
    if g % IO_TLB_SEGSIZE + n > IO_TLB_SEGSIZE {
        return mark_joined_run(slots, area_segs, g, n, false);
    }
    let seg = g / IO_TLB_SEGSIZE;
    let bits = seg_free(slots, area_segs, seg);
    let mask = run_mask(g % IO_TLB_SEGSIZE, n);
    debug_assert_eq!(bits & mask, mask, "taking slots that are not free");
    set_seg_free(slots, area_segs, seg, bits & !mask);
}

/// Marks `n` slots from global slot `g` as free in the free bitmaps.
#[inline]
pub(crate) fn give_run(slots: &[Slot], area_segs: usize, g: usize, n: usize) {
    if g % IO_TLB_SEGSIZE + n > IO_TLB_SEGSIZE {
        return mark_joined_run(slots, area_segs, g, n, true);
    }
    let seg = g / IO_TLB_SEGSIZE;
    let bits = seg_free(slots, area_segs, seg);
    let mask = run_mask(g % IO_TLB_SEGSIZE, n);
    debug_assert_eq!(bits & mask, 0, "freeing slots that are free");
    set_seg_free(slots, area_segs, seg, bits | mask);
}

/// [`take_run`] (`free` false) or [`give_run`] (`free` true) of a run that crosses segments,
/// segment by segment.
#[cold]
fn mark_joined_run(slots: &[Slot], area_segs: usize, mut g: usize, mut n: usize, free: bool) {
    while n > 0 {
        let seg = g / IO_TLB_SEGSIZE;
        let p = g % IO_TLB_SEGSIZE;
        let len = n.min(IO_TLB_SEGSIZE - p);
        let bits = seg_free(slots, area_segs, seg);
        let mask = run_mask(p, len);
        let bits = if free {
            debug_assert_eq!(bits & mask, 0, "freeing slots that are free");
            bits | mask
        } else {
            debug_assert_eq!(bits & mask, mask, "taking slots that are not free");
            bits & !mask
        };
        set_seg_free(slots, area_segs, seg, bits);
        g += len;
        n -= len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_starts_finds_runs_within_the_segment() {
        let free: u128 = 0b1110_0111_1000;
        assert_eq!(run_starts(free, 1), free);
        assert_eq!(run_starts(free, 3), 0b0010_0001_1000);
        assert_eq!(run_starts(free, 4), 0b0000_0000_1000);
        assert_eq!(run_starts(free, 5), 0);
        assert_eq!(run_starts(u128::MAX, 128), 1);
        assert_eq!(run_starts(u128::MAX, 127), 0b11);
        assert_eq!(run_starts(u128::MAX << 1, 128), 0);
    }

    #[test]
    fn longest_run_measures_the_longest_free_run() {
        assert_eq!(longest_run(0), 0);
        assert_eq!(longest_run(u128::MAX), 128);
        assert_eq!(longest_run(u128::MAX << 1), 127);
        assert_eq!(longest_run(u128::MAX >> 1), 127);
        assert_eq!(longest_run(0b1110_0111_1000), 4);
        assert_eq!(longest_run(0b1010_1010), 1);
        assert_eq!(longest_run((1u128 << 127) | 0b11), 2);
        assert_eq!(longest_run(run_mask(40, 50) | run_mask(100, 20)), 50);
    }

    #[test]
    fn aligned_positions_follow_stride_and_phase() {
        let plan = Plan::new(0, 0, u64::MAX, Some(0), 4096, 0, 128).unwrap();
        // A 4 KiB streaming map is page aligned: every second slot.
        assert_eq!(plan.stride, 2);
        let m = plan.aligned_positions(0);
        assert_eq!(m.count_ones(), 64);
        assert_eq!(m & 0b11, 0b01);
        // NVMe: bit 11 of the original must be kept.
        let plan = Plan::new(0, 0xfff, u64::MAX, Some(0x1800), 100, 0, 128).unwrap();
        assert_eq!(plan.stride, 2);
        assert_eq!(plan.aligned_positions(0) & 0b11, 0b10);
        assert_eq!(plan.small_off, 0);
        // A stride beyond a segment selects at most one position per segment.
        let plan = Plan::new(0, (1 << 20) - 1, u64::MAX, Some(0), 100, 0, 128).unwrap();
        assert_eq!(plan.aligned_positions(0), 1);
        assert_eq!(plan.aligned_positions(128), 0);
        assert_eq!(plan.aligned_positions(512), 1);
    }

    #[test]
    fn plan_rejects_non_low_masks_and_oversized_allocations() {
        assert!(matches!(
            Plan::new(0, 0, u64::MAX, Some(0), 1, 0x1000, 128),
            Err(Error::InvalidMask {
                what: "alloc_align_mask",
                ..
            })
        ));
        assert!(matches!(
            Plan::new(0, 0x1001, u64::MAX, Some(0), 1, 0, 128),
            Err(Error::InvalidMask {
                what: "min_align_mask",
                ..
            })
        ));
        assert!(matches!(
            Plan::new(0, 0, 0xf0, Some(0), 1, 0, 128),
            Err(Error::InvalidMask {
                what: "seg_boundary_mask",
                ..
            })
        ));
        assert!(matches!(
            Plan::new(0, 0, u64::MAX, Some(0x7ff), 256 * 1024, u64::MAX, 128),
            Err(Error::ExceedsSegment { .. })
        ));
    }
}
