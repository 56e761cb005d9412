//! Engine statistics.

use super::error::BounceReason;
use crate::pool::Stats;
use core::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a [`DmaEngine`](super::DmaEngine)'s counters, with its pool's.
///
/// Counters are read without stopping the engine: each is a consistent value, not all of
/// them together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineStats {
    /// Streaming maps returned without bouncing (IOMMU, MMIO or reachable ranges).
    pub direct_maps: u64,
    /// Streaming maps that went through the bounce pool.
    pub bounced_maps: u64,
    /// Bounced maps by reason, indexed by [`BounceReason::index`].
    pub bounced_by_reason: [u64; 5],
    /// Streaming maps that failed (whatever the error).
    pub map_failures: u64,
    /// Unmaps of direct mappings (no pool involved).
    pub direct_unmaps: u64,
    /// Unmaps of bounced mappings that the pool accepted.
    pub bounced_unmaps: u64,
    /// Unmaps and syncs that failed.
    pub unmap_sync_failures: u64,
    /// Calls to the platform's cache maintenance that failed.
    pub cache_failures: u64,
    /// Scatter-gather lists mapped.
    pub sg_maps: u64,
    /// Scatter-gather lists that failed to map (and were unwound).
    pub sg_failures: u64,
    /// Coherent allocations made.
    pub coherent_allocs: u64,
    /// Coherent allocations that needed `create_contiguous_region`.
    pub coherent_exchanged: u64,
    /// Coherent allocations given back.
    pub coherent_frees: u64,
    /// Coherent allocations that failed.
    pub coherent_failures: u64,
    /// The pool's statistics (bytes bounced, high-water mark...), if the engine has a pool.
    pub pool: Option<Stats>,
}

/// The live counters. Kept on their own cache line, away from the engine's read-mostly
/// fields.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Counters {
    pub(crate) direct_maps: AtomicU64,
    pub(crate) bounced: [AtomicU64; 5],
    pub(crate) map_failures: AtomicU64,
    pub(crate) direct_unmaps: AtomicU64,
    pub(crate) bounced_unmaps: AtomicU64,
    pub(crate) unmap_sync_failures: AtomicU64,
    pub(crate) cache_failures: AtomicU64,
    pub(crate) sg_maps: AtomicU64,
    pub(crate) sg_failures: AtomicU64,
    pub(crate) coherent_allocs: AtomicU64,
    pub(crate) coherent_exchanged: AtomicU64,
    pub(crate) coherent_frees: AtomicU64,
    pub(crate) coherent_failures: AtomicU64,
}

#[inline]
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn bounced(&self, reason: BounceReason) {
        bump(&self.bounced[reason.index()]);
    }

    pub(crate) fn snapshot(&self, pool: Option<Stats>) -> EngineStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let by_reason = [0, 1, 2, 3, 4].map(|i| r(&self.bounced[i]));
        EngineStats {
            direct_maps: r(&self.direct_maps),
            bounced_maps: by_reason.iter().sum(),
            bounced_by_reason: by_reason,
            map_failures: r(&self.map_failures),
            direct_unmaps: r(&self.direct_unmaps),
            bounced_unmaps: r(&self.bounced_unmaps),
            unmap_sync_failures: r(&self.unmap_sync_failures),
            cache_failures: r(&self.cache_failures),
            sg_maps: r(&self.sg_maps),
            sg_failures: r(&self.sg_failures),
            coherent_allocs: r(&self.coherent_allocs),
            coherent_exchanged: r(&self.coherent_exchanged),
            coherent_frees: r(&self.coherent_frees),
            coherent_failures: r(&self.coherent_failures),
            pool,
        }
    }
}
