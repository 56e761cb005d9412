//! Pool statistics.

#[cfg(doc)]
use crate::error::Error;
use crate::lock::atomic::{AtomicUsize, Ordering};

/// A snapshot of a pool's statistics ([`super::BouncePool::stats`]).
///
/// Counters are read without stopping the pool, so a snapshot taken while other CPUs map and
/// unmap is a consistent value of each counter, not of all of them together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Slots in the pool (debugfs `io_tlb_nslabs`).
    pub nslabs: usize,
    /// Areas in the pool.
    pub nareas: usize,
    /// Slots in use, pad slots included (debugfs `io_tlb_used`).
    pub used: usize,
    /// The largest `used` seen since construction or the last
    /// [`reset_high_water`](super::BouncePool::reset_high_water) (`io_tlb_used_hiwater`),
    /// as far as the pool can tell without a pool-wide counter on the map path.
    ///
    /// Exact for a pool of one area. With several areas, each area keeps its own maximum
    /// and the pool-wide mark is raised only when an area exceeds its own maximum (to the
    /// sum of all areas' uses read at that moment) or by the snapshot itself (to the
    /// current `used`). It therefore misses a pool-wide peak reached while every area
    /// stays at or below its own earlier maximum: with several areas it is a lower bound
    /// of the true peak (up to the areas' uses being read one after the other while other
    /// CPUs map), and the true peak lies between it and
    /// [`high_water_bound`](Self::high_water_bound). Linux keeps an exact mark with a
    /// pool-wide atomic updated by every map, the shared cache line this pool avoids.
    pub high_water: usize,
    /// The sum of every area's own largest use since construction or the last reset: an
    /// upper bound of the true pool-wide peak (each area's use never exceeded its maximum).
    /// Equal to [`high_water`](Self::high_water) for a pool of one area.
    pub high_water_bound: usize,
    /// Successful streaming maps.
    pub maps: u64,
    /// Successful unmaps.
    pub unmaps: u64,
    /// Successful syncs (either direction, copying or not).
    pub syncs: u64,
    /// Successful coherent allocations.
    pub allocs: u64,
    /// Successful coherent frees.
    pub frees: u64,
    /// Bytes copied between original buffers and the pool, both ways.
    pub bytes_bounced: u64,
    /// Unmaps and syncs whose size went past the end of the mapping; their copies were
    /// clamped to the mapping (Linux's "Buffer overflow detected").
    pub overflow_attempts: u64,
    /// Requests that failed because no free run fit ([`Error::PoolFull`]).
    pub fail_full: u64,
    /// Requests that failed for their size ([`Error::TooLarge`], [`Error::ExceedsSegment`]).
    pub fail_too_large: u64,
    /// Requests with invalid arguments ([`Error::ZeroSize`], [`Error::AddressOverflow`],
    /// [`Error::InvalidMask`]).
    pub fail_invalid: u64,
    /// Unmaps, syncs and frees of addresses that are not live mappings
    /// ([`Error::NotInPool`], [`Error::NotMapped`], [`Error::SyncOutOfRange`]).
    pub fail_not_mapped: u64,
}

/// The one pool-wide statistic: the high-water mark, written only when an area's use
/// exceeds that area's own previous maximum (rare once the pool has warmed up), never on the
/// steady map/unmap path.
#[derive(Debug, Default)]
pub(crate) struct GlobalStats {
    pub(crate) high_water: AtomicUsize,
}

impl GlobalStats {
    /// Raises the high-water mark to `now` if it is higher.
    #[cold]
    pub(crate) fn raise_high_water(&self, now: usize) {
        if now > self.high_water.load(Ordering::Relaxed) {
            self.high_water.fetch_max(now, Ordering::Relaxed);
        }
    }
}
