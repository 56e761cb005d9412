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

/// How many shards of counters an engine keeps: the CPU hint picks one, modulo this.
pub(crate) const COUNTER_SHARDS: usize = 8;

/// The live counters, in [`COUNTER_SHARDS`] shards: each operation counts in the shard of
/// its CPU hint ([`DmaEngine::with_cpu_hint`](super::DmaEngine::with_cpu_hint)), so CPUs
/// with different hints (modulo the shard count) never write the same cache line; a
/// snapshot sums the shards. With the default hint (always 0) every CPU counts in shard 0.
#[derive(Debug, Default)]
pub(crate) struct ShardedCounters {
    shards: [Counters; COUNTER_SHARDS],
}

impl ShardedCounters {
    /// The shard of CPU hint `cpu`.
    #[inline]
    pub(crate) fn shard(&self, cpu: usize) -> &Counters {
        &self.shards[cpu % COUNTER_SHARDS]
    }

    /// The sums of the shards, with the pool's statistics.
    pub(crate) fn snapshot(&self, pool: Option<Stats>) -> EngineStats {
        let mut s = EngineStats {
            pool,
            ..EngineStats::default()
        };
        for c in &self.shards {
            c.add_to(&mut s);
        }
        s
    }
}

/// One shard of the live counters, on its own pair of cache lines (128 bytes, which x86's
/// adjacent-line prefetcher fetches together).
#[derive(Debug, Default)]
#[repr(align(128))]
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

    /// Adds this shard's counts to `s`.
    fn add_to(&self, s: &mut EngineStats) {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (i, c) in self.bounced.iter().enumerate() {
            s.bounced_by_reason[i] += r(c);
            s.bounced_maps += r(c);
        }
        s.direct_maps += r(&self.direct_maps);
        s.map_failures += r(&self.map_failures);
        s.direct_unmaps += r(&self.direct_unmaps);
        s.bounced_unmaps += r(&self.bounced_unmaps);
        s.unmap_sync_failures += r(&self.unmap_sync_failures);
        s.cache_failures += r(&self.cache_failures);
        s.sg_maps += r(&self.sg_maps);
        s.sg_failures += r(&self.sg_failures);
        s.coherent_allocs += r(&self.coherent_allocs);
        s.coherent_exchanged += r(&self.coherent_exchanged);
        s.coherent_frees += r(&self.coherent_frees);
        s.coherent_failures += r(&self.coherent_failures);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_apart_and_summed() {
        assert_eq!(core::mem::align_of::<Counters>(), 128);
        assert_eq!(core::mem::size_of::<Counters>() % 128, 0);
        let c = ShardedCounters::default();
        // CPUs 0 and 1 count in different shards, on different line pairs.
        let (s0, s1) = (c.shard(0), c.shard(1));
        let gap = (core::ptr::from_ref(s1).addr()).abs_diff(core::ptr::from_ref(s0).addr());
        assert!(gap >= 128);
        bump(&s0.direct_maps);
        bump(&s1.direct_maps);
        bump(&c.shard(COUNTER_SHARDS + 1).direct_maps);
        c.shard(3).bounced(BounceReason::ALL[1]);
        bump(&c.shard(7).coherent_frees);
        let s = c.snapshot(None);
        assert_eq!((s.direct_maps, s.bounced_maps, s.coherent_frees), (3, 1, 1));
        assert_eq!(s.bounced_by_reason[BounceReason::ALL[1].index()], 1);
    }
}
