//! The error type of the bounce pool.

use crate::addr::PhysAddr;

/// Why a pool operation or the pool's construction failed.
///
/// Every variant carries the values involved. After any error the pool is exactly as it was
/// before the call (no slot taken or freed, no byte copied), except for the failure counters
/// in [`crate::pool::Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A map, unmap, sync or allocation of zero bytes.
    #[error("zero-sized request")]
    ZeroSize,
    /// A mapping larger than Linux's `max_mapping_size(dev)` and than the pool's
    /// ([`BouncePool::max_mapping_size`](crate::BouncePool::max_mapping_size): larger with
    /// joined segments).
    #[error("size {size:#x} exceeds the maximum mapping size {max:#x}")]
    TooLarge {
        /// The size asked for.
        size: usize,
        /// The device's maximum mapping size in this pool.
        max: usize,
    },
    /// The allocation, after the kept offset and the alignment round-up, needs more slots
    /// than the longest run the device can get: one 128-slot segment, or a run of joined
    /// segments, cut where it crosses the device's boundary (`seg_boundary_mask + 1`
    /// bytes): a request too large for this device, which fails however idle the pool is
    /// (Linux answers the boundary case with "swiotlb buffer is full").
    #[error(
        "allocation of {alloc_size:#x} bytes (with offset and alignment) exceeds the longest run of {max:#x}"
    )]
    ExceedsSegment {
        /// Bytes needed including the kept offset and alignment round-up.
        alloc_size: u64,
        /// The largest run a request of this device can take in this pool, in bytes: a
        /// segment (256 KiB) or a run of joined segments, cut by its segment boundaries.
        max: u64,
    },
    /// `addr + size` overflows the physical address space.
    #[error("{addr}+{size:#x} overflows the address space")]
    AddressOverflow {
        /// The start address.
        addr: PhysAddr,
        /// The size.
        size: usize,
    },
    /// No run of free slots satisfies the request in any area. The message starts with
    /// Linux's "swiotlb buffer is full" line, with the same values, and goes on with the
    /// cause.
    ///
    /// `cause` tells an exhausted pool (fewer free slots than the request needs) from a
    /// fragmented one (enough free slots, but no run of them that the request's size,
    /// alignment and boundary rules accept). The figures after `size` are a snapshot taken
    /// once the search has failed (on the failure path only), under each area's lock in
    /// turn: other CPUs may map and unmap meanwhile, so with concurrent unmaps they can show
    /// room the search did not find (a `Fragmented` cause with a `largest_free_run` of at
    /// least `needed`). `used + free.free == total` always holds.
    #[error(
        "swiotlb buffer is full (sz: {size} bytes), total {total} (slots), used {used} (slots): \
         {cause}, {needed} slots needed, {free}"
    )]
    PoolFull {
        /// The allocation size, as Linux prints it: the request plus the kept offset
        /// (`orig & min_align_mask & (alloc_align_mask | 0x7ff)`: 2 KiB or more only with an
        /// `alloc_align_mask`, kept in pad slots), rounded up to `alloc_align_mask + 1`
        /// (Linux's `ALIGN(mapping_size + offset, alloc_align_mask + 1)`). For a coherent
        /// allocation, the size rounded up to its alignment.
        size: usize,
        /// Slots the allocation needs (`size` in slots, pad slots included).
        needed: usize,
        /// Slots in the pool.
        total: usize,
        /// Slots in use in the snapshot.
        used: usize,
        /// The free slots and the largest free run in the snapshot.
        free: FreeSpace,
        /// Exhausted or fragmented.
        cause: FullCause,
    },
    /// A map whose original `[addr, addr + size)` overlaps the pool itself: bouncing it
    /// would copy between overlapping ranges (and could overwrite other mappings' slots).
    #[error("the original {addr}+{size:#x} lies inside the bounce pool")]
    OriginalInPool {
        /// The original's first byte.
        addr: PhysAddr,
        /// The size.
        size: usize,
    },
    /// An address that is not inside the pool.
    #[error("{addr} is not inside the bounce pool")]
    NotInPool {
        /// The address.
        addr: PhysAddr,
    },
    /// An address inside the pool that is not what the operation needs: not the start of a
    /// live mapping (unmap, free), not inside a live mapping's data (sync), a pad slot, a
    /// free slot, or a mapping already being unmapped (double unmap).
    #[error("{addr} is not a live mapping of the bounce pool")]
    NotMapped {
        /// The address.
        addr: PhysAddr,
    },
    /// A sync whose start lies inside a mapping's slots but outside its data.
    #[error("sync of {addr}+{size:#x} outside the mapping {start}..{end}")]
    SyncOutOfRange {
        /// The sync address.
        addr: PhysAddr,
        /// The sync size.
        size: usize,
        /// The first byte of the mapping's data in the pool.
        start: PhysAddr,
        /// One past the last byte of the mapping's data in the pool.
        end: PhysAddr,
    },
    /// A mask that is not of the form `2^n - 1` (zero allowed where noted).
    #[error("{what} {mask:#x} is not of the form 2^n - 1")]
    InvalidMask {
        /// Which mask (`"alloc_align_mask"`, `"min_align_mask"`, `"seg_boundary_mask"`).
        what: &'static str,
        /// The mask.
        mask: u64,
    },
    /// A slot count that is zero, not a multiple of 128, or too large to address.
    #[error("slot count {nslabs} is not a non-zero multiple of 128 within the address space")]
    InvalidSlotCount {
        /// The slot count.
        nslabs: usize,
    },
    /// A pool start that is not 2 KiB-aligned.
    #[error("pool start {start} is not aligned to 2 KiB")]
    MisalignedStart {
        /// The start address.
        start: PhysAddr,
    },
    /// An area count that is zero, not a power of two, or above the supported maximum.
    #[error("area count {nareas} is not a power of two in 1..={max}")]
    InvalidAreaCount {
        /// The area count asked for.
        nareas: usize,
        /// The largest supported count ([`crate::pool::MAX_AREAS`]).
        max: usize,
    },
    /// Metadata storage with fewer entries than slots: at construction, or later if the
    /// storage's `as_ref` returns a shorter slice than it did (every operation then fails
    /// with this error and touches nothing).
    #[error("metadata storage holds {have} slots, the pool needs {need}")]
    StorageTooSmall {
        /// Entries in the storage.
        have: usize,
        /// Slots in the pool.
        need: usize,
    },
}

/// Why no free run fit a request ([`Error::PoolFull`]'s `cause`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FullCause {
    /// Fewer free slots in the whole pool than the request needs: the pool is too small for
    /// the load (or mappings leak); only unmaps or a larger pool help.
    Exhausted,
    /// Enough free slots in the pool, but no free run inside one segment of one area that
    /// is long enough and satisfies the request's alignment (`min_align_mask`,
    /// `alloc_align_mask`, page alignment) and segment boundary: the free space is scattered.
    /// [`FreeSpace::largest_run`] says how long the longest run is; when it is at least the
    /// request's length, the alignment or boundary rules ruled out every run of that length.
    Fragmented,
}

impl core::fmt::Display for FullCause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Exhausted => "exhausted",
            Self::Fragmented => "fragmented",
        })
    }
}

/// The free space of a pool or area: free slots and the longest run of them.
///
/// A run crosses a 128-slot segment only where the pool joined it to the next (as an
/// allocation can, see [`BouncePool::set_segment_joins`](crate::BouncePool::set_segment_joins)),
/// so `largest_run` is at most [`IO_TLB_SEGSIZE`](crate::pool::IO_TLB_SEGSIZE) in a pool
/// without joins, however idle, and at most the pool's
/// [`max_run_slots`](crate::BouncePool::max_run_slots) in one with joins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FreeSpace {
    /// Free slots.
    pub free: usize,
    /// The longest run of free slots an allocation could take: inside one segment, or
    /// across joined segments.
    pub largest_run: usize,
}

impl FreeSpace {
    /// The longest free run in bytes: the largest allocation (offset and alignment
    /// round-up included) that could still fit, ignoring alignment.
    #[must_use]
    pub const fn largest_run_bytes(&self) -> usize {
        self.largest_run.saturating_mul(crate::pool::IO_TLB_SIZE)
    }

    /// The fragmentation of the free space in thousandths:
    /// `1000 * (1 - largest_run / min(free, 128))`, rounded down; 0 with no free slot.
    ///
    /// 0 means the longest free run is as long as the free space allows (all of it, or a
    /// whole segment, the run every pool guarantees; joined runs are not asked for), so an
    /// idle pool of any size is at 0; near
    /// 1000 means the free slots are scattered in short runs (one free slot in every
    /// second slot of a large pool gives 992). The plain `1 - largest_run / free` would call
    /// an idle pool of more than one segment fragmented, hence the cap at a segment.
    #[must_use]
    pub const fn fragmentation_permille(&self) -> u32 {
        let cap = if self.free < crate::pool::IO_TLB_SEGSIZE {
            self.free
        } else {
            crate::pool::IO_TLB_SEGSIZE
        };
        if cap == 0 || self.largest_run >= cap {
            return 0;
        }
        // CAST: the quotient is below 1000.
        ((cap - self.largest_run) * 1000 / cap) as u32
    }
}

impl core::fmt::Display for FreeSpace {
    /// `free F (slots), largest free run R (slots, B bytes), fragmentation 0.xyz`.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let p = self.fragmentation_permille();
        write!(
            f,
            "free {} (slots), largest free run {} (slots, {} bytes), fragmentation {}.{:03}",
            self.free,
            self.largest_run,
            self.largest_run_bytes(),
            p / 1000,
            p % 1000
        )
    }
}
