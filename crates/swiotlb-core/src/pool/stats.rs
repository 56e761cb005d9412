//! Pool statistics.

use crate::error::Error;
use crate::lock::atomic::{AtomicU64, AtomicUsize, Ordering};

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
    /// [`reset_high_water`](super::BouncePool::reset_high_water) (`io_tlb_used_hiwater`).
    pub high_water: usize,
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

/// The pool-wide counters (the per-area ones live in the areas).
#[derive(Debug, Default)]
pub(crate) struct GlobalStats {
    pub(crate) high_water: AtomicUsize,
    pub(crate) allocs: AtomicU64,
    pub(crate) frees: AtomicU64,
    pub(crate) fail_full: AtomicU64,
    pub(crate) fail_too_large: AtomicU64,
    pub(crate) fail_invalid: AtomicU64,
    pub(crate) fail_not_mapped: AtomicU64,
}

impl GlobalStats {
    /// Raises the high-water mark to `now` if it is higher (Linux's
    /// `inc_used_and_hiwater`). The mark is read-mostly, so this is a plain load on the
    /// fast path.
    #[inline]
    pub(crate) fn raise_high_water(&self, now: usize) {
        if now > self.high_water.load(Ordering::Relaxed) {
            self.high_water.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// Counts a failure by its cause and passes the error on.
    #[cold]
    pub(crate) fn fail(&self, err: Error) -> Error {
        let counter = match err {
            Error::PoolFull { .. } => &self.fail_full,
            Error::TooLarge { .. } | Error::ExceedsSegment { .. } => &self.fail_too_large,
            Error::NotInPool { .. } | Error::NotMapped { .. } | Error::SyncOutOfRange { .. } => {
                &self.fail_not_mapped
            }
            _ => &self.fail_invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        err
    }
}
