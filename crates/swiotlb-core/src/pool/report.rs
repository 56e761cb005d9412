//! What a failed request and a failure report say about the pool's free space: the
//! snapshot behind [`Error::PoolFull`]'s cause and the [`PoolReport`] a kernel prints when
//! DMA fails. Everything here runs on cold paths only (after a search failed, or on demand),
//! taking each area's lock in turn; nothing here is on the map, unmap or sync path.

use super::area::{AreaState, Slot};
use super::search::{Plan, longest_run, seg_free, seg_joined};
use super::{BouncePool, IO_TLB_SEGSIZE, MAX_AREAS};
use crate::addr::PhysAddr;
use crate::error::{Error, FreeSpace, FullCause};
use crate::hooks::PhysMemory;
use crate::lock::atomic::Ordering;
use arrayvec::ArrayVec;
use core::fmt;

/// One area of a [`PoolReport`]: read under the area's lock, so its figures agree with each
/// other (`used + free.free` is the area's slot count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AreaReport {
    /// Slots in use, pad slots included.
    pub used: usize,
    /// The largest `used` of this area since construction or the last
    /// [`reset_high_water`](BouncePool::reset_high_water) (exact for the area).
    pub high_water: usize,
    /// Its free slots and longest free run.
    pub free: FreeSpace,
}

/// A report of a pool's occupancy for a kernel to print when DMA fails
/// ([`BouncePool::report`]): per pool and per area, slots in use, the high-water mark and
/// the free space with its longest run, and the pool's failure counts.
///
/// Allocation-free: the areas are kept in a fixed array of [`MAX_AREAS`] entries (32 bytes
/// each on 64-bit targets, about 2 KiB in all), so a report can be built and printed from
/// any context that may take the area locks. `Display` prints one line for the pool and one
/// per area (see `docs/capacity.md` for an example).
///
/// A snapshot: each area is read under its own lock, one after the other, so with other CPUs
/// mapping meanwhile the areas' figures are of slightly different moments (each area's are
/// consistent); the pool's `used` and `free` are the areas' sums.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolReport {
    /// The first byte of the pool.
    pub start: PhysAddr,
    /// One past the last byte.
    pub end: PhysAddr,
    /// Slots in the pool.
    pub nslabs: usize,
    /// Slots in each area.
    pub area_nslabs: usize,
    /// Slots in use: the sum of the areas'.
    pub used: usize,
    /// The pool-wide high-water mark ([`Stats::high_water`](super::Stats::high_water)),
    /// at least `used`.
    pub high_water: usize,
    /// The upper bound of the true peak
    /// ([`Stats::high_water_bound`](super::Stats::high_water_bound)).
    pub high_water_bound: usize,
    /// Free slots (the areas' sum) and the longest free run of any area.
    pub free: FreeSpace,
    /// Requests that failed for want of a free run ([`Stats::fail_full`](super::Stats)).
    pub fail_full: u64,
    /// Requests that failed for their size ([`Stats::fail_too_large`](super::Stats)).
    pub fail_too_large: u64,
    areas: ArrayVec<AreaReport, MAX_AREAS>,
}

impl PoolReport {
    /// The areas, in order.
    #[must_use]
    pub fn areas(&self) -> &[AreaReport] {
        &self.areas
    }
}

impl fmt::Display for AreaReport {
    /// `used U (slots), high-water H (slots), free F (slots), largest free run ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "used {} (slots), high-water {} (slots), {}",
            self.used, self.high_water, self.free
        )
    }
}

impl fmt::Display for PoolReport {
    /// A line for the pool, then one line per area, each after a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "swiotlb pool {:#x}-{:#x}: total {} (slots) in {} areas, used {} (slots), \
             high-water {} (slots, at most {}), {}; failed: {} full, {} too large",
            self.start,
            self.end,
            self.nslabs,
            self.areas.len(),
            self.used,
            self.high_water,
            self.high_water_bound,
            self.free,
            self.fail_full,
            self.fail_too_large,
        )?;
        for (i, a) in self.areas.iter().enumerate() {
            write!(f, "\n  area {i}: total {} (slots), {a}", self.area_nslabs)?;
        }
        Ok(())
    }
}

impl<M: PhysMemory, S: AsRef<[Slot]>> BouncePool<M, S> {
    /// The free space of area `a` (the caller holds its lock, `st`): its free slots and the
    /// longest free run an allocation could take: inside a segment's bitmap, or across
    /// joined segments (capped at the pool's longest run, [`BouncePool::max_run_slots`]).
    fn area_space(&self, slots: &[Slot], a: usize, st: &AreaState) -> FreeSpace {
        let segs = self.area_segs();
        let first = a * segs;
        let mut largest_run = 0;
        // The free run reaching the current segment's start across joins.
        let mut open = 0;
        for seg in first..first + segs {
            let free = seg_free(slots, segs, seg);
            largest_run = largest_run.max(longest_run(free));
            // CAST: trailing_ones() and leading_ones() are at most 128.
            if free == u128::MAX {
                open += IO_TLB_SEGSIZE;
            } else {
                largest_run = largest_run.max(open + free.trailing_ones() as usize);
                open = free.leading_ones() as usize;
            }
            if !seg_joined(slots, segs, seg) {
                largest_run = largest_run.max(open);
                open = 0;
            }
            if largest_run >= self.run_cap {
                break;
            }
        }
        let largest_run = largest_run.min(self.run_cap);
        FreeSpace {
            free: self.area_nslabs - st.used,
            largest_run,
        }
    }

    /// The error of a request of `plan` that no area could hold: a request longer than the
    /// device's segment boundary allows ([`Error::ExceedsSegment`], whatever the pool's
    /// state), else [`Error::PoolFull`] with the pool's free space read under each area's
    /// lock in turn and the cause it implies.
    #[cold]
    #[inline(never)]
    pub(super) fn full_error(&self, slots: &[Slot], plan: &Plan) -> Error {
        let (max_slots, shift) = plan.boundary();
        if plan.nslots as u64 > max_slots || plan.nslots > self.boundary_run_cap(max_slots, shift) {
            // CAST: usize fits in u64.
            return self.exceeds_segment(plan.alloc_size as u64, max_slots, shift);
        }
        let mut free = FreeSpace::default();
        for (a, area) in self.areas.iter().enumerate() {
            let st = area.lock.lock();
            let s = self.area_space(slots, a, &st);
            drop(st);
            free.free += s.free;
            free.largest_run = free.largest_run.max(s.largest_run);
        }
        let cause = if free.free < plan.nslots {
            FullCause::Exhausted
        } else {
            FullCause::Fragmented
        };
        Error::PoolFull {
            size: plan.alloc_size,
            needed: plan.nslots,
            total: self.nslabs,
            used: self.nslabs - free.free,
            free,
            cause,
        }
    }

    /// The free space of the whole pool now: free slots and the longest free run, read
    /// under each area's lock in turn (a snapshot, as [`PoolReport`]'s). `None` if the
    /// metadata storage shrank.
    #[must_use]
    pub fn free_space(&self) -> Option<FreeSpace> {
        let slots = self.slots().ok()?;
        let mut free = FreeSpace::default();
        for (a, area) in self.areas.iter().enumerate() {
            let st = area.lock.lock();
            let s = self.area_space(slots, a, &st);
            drop(st);
            free.free += s.free;
            free.largest_run = free.largest_run.max(s.largest_run);
        }
        Some(free)
    }

    /// A report of the pool's occupancy, for a kernel to print when DMA fails (see
    /// [`PoolReport`]). Takes each area's lock in turn, and walks each area's free bitmaps
    /// (one per 256 KiB segment): for a cold path (after a failure, or on demand), never the
    /// map path. `None` if the metadata storage shrank.
    #[must_use]
    pub fn report(&self) -> Option<PoolReport> {
        let slots = self.slots().ok()?;
        let stats = self.stats();
        let mut r = PoolReport {
            start: self.start,
            end: self.end,
            nslabs: self.nslabs,
            area_nslabs: self.area_nslabs,
            used: 0,
            high_water: 0,
            high_water_bound: stats.high_water_bound,
            free: FreeSpace::default(),
            fail_full: stats.fail_full,
            fail_too_large: stats.fail_too_large,
            areas: ArrayVec::new(),
        };
        for (a, area) in self.areas.iter().enumerate() {
            let st = area.lock.lock();
            let free = self.area_space(slots, a, &st);
            let ar = AreaReport {
                used: st.used,
                high_water: st.high,
                free,
            };
            drop(st);
            r.used += ar.used;
            r.free.free += free.free;
            r.free.largest_run = r.free.largest_run.max(free.largest_run);
            r.areas.push(ar);
        }
        // Keep the documented orders against the areas read after `stats`.
        let mark = self.stats.high_water.load(Ordering::Relaxed);
        r.high_water = stats.high_water.max(mark).max(r.used);
        r.high_water_bound = r.high_water_bound.max(r.high_water);
        Some(r)
    }

    /// The report of area `index` alone (see [`report`](Self::report)); `None` past the
    /// last area or if the metadata storage shrank.
    #[must_use]
    pub fn area_report(&self, index: usize) -> Option<AreaReport> {
        let slots = self.slots().ok()?;
        let area = self.areas.get(index)?;
        let st = area.lock.lock();
        Some(AreaReport {
            used: st.used,
            high_water: st.high,
            free: self.area_space(slots, index, &st),
        })
    }
}
