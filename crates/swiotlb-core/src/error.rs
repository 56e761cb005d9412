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
    /// A mapping larger than `max_mapping_size(dev)`.
    #[error("size {size:#x} exceeds the maximum mapping size {max:#x}")]
    TooLarge {
        /// The size asked for.
        size: usize,
        /// The device's maximum mapping size.
        max: usize,
    },
    /// The allocation, after the kept offset and the alignment round-up, needs more slots
    /// than one 128-slot segment holds.
    #[error(
        "allocation of {alloc_size:#x} bytes (with offset and alignment) exceeds a segment of {max:#x}"
    )]
    ExceedsSegment {
        /// Bytes needed including the kept offset and alignment round-up.
        alloc_size: u64,
        /// Bytes in one segment (256 KiB).
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
    /// No run of free slots satisfies the request in any area.
    #[error(
        "swiotlb buffer is full (sz: {size} bytes), total {total} (slots), used {used} (slots)"
    )]
    PoolFull {
        /// The mapping size asked for.
        size: usize,
        /// Slots in the pool.
        total: usize,
        /// Slots in use when the search gave up.
        used: usize,
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
