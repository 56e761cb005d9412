//! The errors of the DMA engine.

use crate::addr::{BusAddr, PhysAddr};
use crate::dma::DmaMask;
use crate::error::Error as PoolError;
use crate::hooks::PlatformError;
use core::fmt;

/// Why a streaming mapping could not be direct and had to go through the bounce pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BounceReason {
    /// The device asks for every mapping to be bounced ([`crate::Device::force_bounce`]).
    Forced,
    /// A 4 KiB frame of the range has no bus translation.
    Untranslatable,
    /// The range is not bus-contiguous (Linux's `range_straddles_page_boundary`).
    NotContiguous,
    /// The bus range is not inside the device's DMA mask (Linux's `!dma_capable`).
    OutsideMask,
    /// The platform asks for it ([`crate::Platform::needs_bounce`], Linux's
    /// `xen_arch_need_swiotlb`).
    Platform,
}

impl BounceReason {
    /// Every reason, in the order of [`crate::engine::EngineStats::bounced_by_reason`].
    pub const ALL: [Self; 5] = [
        Self::Forced,
        Self::Untranslatable,
        Self::NotContiguous,
        Self::OutsideMask,
        Self::Platform,
    ];

    /// The index of this reason in [`Self::ALL`].
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Self::Forced => 0,
            Self::Untranslatable => 1,
            Self::NotContiguous => 2,
            Self::OutsideMask => 3,
            Self::Platform => 4,
        }
    }
}

impl fmt::Display for BounceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Forced => "bouncing is forced for the device",
            Self::Untranslatable => "a frame has no bus translation",
            Self::NotContiguous => "the range is not bus-contiguous",
            Self::OutsideMask => "the range is outside the device's DMA mask",
            Self::Platform => "the platform requires bouncing",
        })
    }
}

/// Why a DMA engine operation failed.
///
/// Every variant carries the addresses, sizes and limits involved. After an error of a map
/// nothing stays mapped; after an error of an unmap the mapping is gone anyway unless the
/// variant says otherwise (see each method).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DmaError {
    /// A map, unmap, sync or allocation of zero bytes.
    #[error("zero-sized DMA request")]
    ZeroSize,
    /// `phys + size` overflows the physical address space.
    #[error("{phys}+{size:#x} overflows the physical address space")]
    AddressOverflow {
        /// The start address.
        phys: PhysAddr,
        /// The size.
        size: usize,
    },
    /// `bus + size` overflows the bus address space.
    #[error("{bus}+{size:#x} overflows the bus address space")]
    BusOverflow {
        /// The start address.
        bus: BusAddr,
        /// The size.
        size: usize,
    },
    /// An unmap or sync of a bus range outside the bounce pool (so of a direct mapping) that
    /// the device's mask does not cover: no direct mapping can be there (every one was checked
    /// against the mask when it was made), so the range is refused before any cache
    /// maintenance or walk, however large `size` is. Nothing changed.
    #[error("{bus}+{size:#x} is outside the device mask {mask}: not a direct mapping")]
    NotADirectMapping {
        /// The bus address.
        bus: BusAddr,
        /// The size.
        size: usize,
        /// The device's DMA mask.
        mask: DmaMask,
    },
    /// A mapping that cannot be bounced (MMIO, or a device behind an IOMMU) lies outside the
    /// device's mask, or has no bus translation (`bus` is then `None`).
    #[error("{phys}+{size:#x} is not reachable by the device (bus {bus:?}, mask {mask})")]
    Unreachable {
        /// The physical address.
        phys: PhysAddr,
        /// Its bus address, if it has one.
        bus: Option<BusAddr>,
        /// The size.
        size: usize,
        /// The device's DMA mask.
        mask: DmaMask,
    },
    /// The mapping must be bounced but the engine has no bounce pool.
    #[error("{phys}+{size:#x} must be bounced ({reason}) but there is no bounce pool")]
    NoPool {
        /// The physical address.
        phys: PhysAddr,
        /// The size.
        size: usize,
        /// Why it must be bounced.
        reason: BounceReason,
    },
    /// The bounce pool refused the mapping (full, too large, bad alignment masks...).
    #[error("bouncing {phys}+{size:#x} ({reason}) failed: {source}")]
    Bounce {
        /// The physical address.
        phys: PhysAddr,
        /// The size.
        size: usize,
        /// Why it had to be bounced.
        reason: BounceReason,
        /// The pool's error.
        #[source]
        source: PoolError,
    },
    /// The pools were full and growing another was refused by the kernel's limits or failed
    /// (`cause`, with the hypercall and errno when the platform failed). Nothing stays
    /// mapped and nothing is lost: pages that went to the growth hook came back to it (or to
    /// its quarantine, after damage). The first pool's own refusal is counted in its
    /// statistics (`fail_full`) and shown by [`pool_report`](crate::engine::DmaEngine::pool_report);
    /// it is not carried here, to keep the error small on the map path.
    #[error("bouncing {size:#x} bytes: the pools are full and growing one failed: {cause}")]
    Growth {
        /// The size.
        size: usize,
        /// Why no pool was added.
        #[source]
        cause: super::GrowthError,
    },
    /// The bounce buffer's bus address is outside the device's mask (Linux's second
    /// `dma_capable` check); the bounce slots were given back.
    #[error("bounce buffer {tlb} (bus {bus}) +{size:#x} is outside the device mask {mask}")]
    BounceUnreachable {
        /// The bounce buffer's physical address.
        tlb: PhysAddr,
        /// Its bus address.
        bus: BusAddr,
        /// The size.
        size: usize,
        /// The device's DMA mask.
        mask: DmaMask,
    },
    /// The bounce buffer's frame has no bus translation (the pool's frames changed after the
    /// engine checked them); the bounce slots were given back.
    #[error("bounce buffer {tlb} has no bus translation")]
    BounceUntranslatable {
        /// The bounce buffer's physical address.
        tlb: PhysAddr,
    },
    /// The platform's cache maintenance failed.
    #[error("cache maintenance of {bus}+{size:#x} ({}) failed: {source}", CpuAddr(*.phys))]
    CacheMaintenance {
        /// The physical address handed to the platform; `None` for foreign bytes known
        /// only by their bus address (see [`crate::Platform::sync_for_device`]).
        phys: Option<PhysAddr>,
        /// The bus address handed to the platform.
        bus: BusAddr,
        /// The size.
        size: usize,
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// The pool refused an unmap or a sync of a bounced mapping (double unmap, an address
    /// inside a mapping, a sync past its start...).
    #[error("bounce buffer {tlb} (bus {bus}): {source}")]
    Pool {
        /// The bus address given.
        bus: BusAddr,
        /// The bounce buffer address it translates to.
        tlb: PhysAddr,
        /// The pool's error.
        #[source]
        source: PoolError,
    },
    /// A coherent allocation larger than the largest order the engine accepts.
    #[error("coherent allocation of {size:#x} bytes is too large")]
    CoherentTooLarge {
        /// The size asked for.
        size: usize,
    },
    /// The kernel's page allocator had no `2^order` pages.
    #[error("no memory for a coherent allocation of {size:#x} bytes (order {order})")]
    CoherentNoMemory {
        /// The size asked for.
        size: usize,
        /// The order asked of the page allocator.
        order: u32,
    },
    /// The kernel's page allocator returned a block not aligned to its size.
    #[error("page allocator returned {phys}, not aligned for order {order}")]
    CoherentMisaligned {
        /// The block's address.
        phys: PhysAddr,
        /// The order asked for.
        order: u32,
    },
    /// Making a coherent allocation bus-contiguous below the coherent mask failed; the pages
    /// were given back to the allocator.
    #[error("making {phys} (order {order}) contiguous below 2^{address_bits} failed: {source}")]
    CoherentContiguous {
        /// The block's address.
        phys: PhysAddr,
        /// Its order.
        order: u32,
        /// The address limit asked for.
        address_bits: u32,
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// Making a coherent allocation contiguous, or giving its exchange back, failed and
    /// left the block damaged ([`PlatformError::RegionDamaged`]: `source` lists the stranded
    /// frames). The block was handed to
    /// [`PageAllocator::quarantine`](crate::engine::PageAllocator::quarantine) and is never
    /// freed nor used again.
    #[error("coherent block {phys} (order {order}) is damaged and quarantined: {source}")]
    CoherentDamaged {
        /// The block's address.
        phys: PhysAddr,
        /// Its order.
        order: u32,
        /// The platform's error, a [`PlatformError::RegionDamaged`].
        #[source]
        source: PlatformError,
    },
    /// A coherent allocation is still not below the device's coherent mask; it was given
    /// back.
    #[error("coherent buffer {phys} (bus {bus:?}) +{size:#x} is outside the coherent mask {mask}")]
    CoherentUnreachable {
        /// The block's address.
        phys: PhysAddr,
        /// Its bus address, if it has one.
        bus: Option<BusAddr>,
        /// The size.
        size: usize,
        /// The device's coherent DMA mask.
        mask: DmaMask,
    },
    /// Giving back a contiguous region at free failed; the allocation was handed back to
    /// the caller (see [`crate::engine::CoherentFreeError`]).
    #[error("giving back the contiguous region {phys} (order {order}) failed: {source}")]
    CoherentDestroy {
        /// The block's address.
        phys: PhysAddr,
        /// Its order.
        order: u32,
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// [`free_coherent_at`](crate::engine::DmaEngine::free_coherent_at) was called with a
    /// page allocator that keeps no records ([`crate::engine::PageAllocator::block_state`]
    /// answers `None`); nothing was freed.
    #[error("the page allocator keeps no records: cannot free {phys} (order {order}) by address")]
    CoherentNoRecords {
        /// The address given.
        phys: PhysAddr,
        /// The order of the size given.
        order: u32,
    },
    /// The address given to
    /// [`free_coherent_at`](crate::engine::DmaEngine::free_coherent_at) is not the start of a
    /// live allocation of that order (a double free, an address inside an allocation, a size
    /// of another order); nothing was freed.
    #[error("{phys} is not a live coherent allocation of order {order}")]
    CoherentNotAllocated {
        /// The address given.
        phys: PhysAddr,
        /// The order of the size given.
        order: u32,
    },
    /// The bus address given to
    /// [`free_coherent_at`](crate::engine::DmaEngine::free_coherent_at) is not the one the
    /// allocation's pages translate to (`expected` is `None` when they are not
    /// bus-contiguous); nothing was freed.
    #[error("coherent buffer {phys} +{size:#x} is at bus {expected:?}, not {bus}")]
    CoherentMismatch {
        /// The CPU address given.
        phys: PhysAddr,
        /// The bus address given.
        bus: BusAddr,
        /// The size given.
        size: usize,
        /// The bus address the pages translate to, if they are bus-contiguous.
        expected: Option<BusAddr>,
    },
    /// A buffer the CPU reaches at no known physical address must be bounced
    /// ([`map_buffer`](crate::engine::DmaEngine::map_buffer)), but there is no bounce pool
    /// (`source` is `None`) or the pool refused.
    #[error("bouncing a buffer of {size:#x} bytes with no physical address failed ({source:?})")]
    BufferBounce {
        /// The size.
        size: usize,
        /// The pool's error, if there is a pool.
        source: Option<PoolError>,
    },
    /// The bus address given to
    /// [`unmap_buffer`](crate::engine::DmaEngine::unmap_buffer) lies in the bounce pool but
    /// does not start a live buffer mapping; nothing was copied or freed.
    #[error("bounce buffer {tlb} (bus {bus}) +{size:#x} is not a live buffer mapping")]
    BufferNotMapped {
        /// The bus address given.
        bus: BusAddr,
        /// The bounce address it translates to.
        tlb: PhysAddr,
        /// The size given.
        size: usize,
    },
}

/// Why a scatter-gather operation failed.
///
/// For [`map_sg`](crate::engine::DmaEngine::map_sg): the entry that failed, why, how many
/// entries before it were unmapped again, and how many of those unmaps failed in turn (zero
/// unless the platform's cache maintenance fails). For the unmap and sync loops, which go on
/// after a failing entry: the first failing entry, its error and the number of entries that
/// failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "scatter-gather entry {index} failed ({failures} failed in all, {unwound} unwound): {source}"
)]
pub struct SgError {
    /// The index of the (first) entry that failed.
    pub index: usize,
    /// Its error.
    #[source]
    pub source: DmaError,
    /// `map_sg`: entries mapped before `index` and unmapped again. Zero for the other loops.
    pub unwound: usize,
    /// Entries whose operation failed: for `map_sg` 1 plus the unwinding unmaps that failed;
    /// for the other loops every failing entry.
    pub failures: usize,
}

/// Why the engine refused its bounce pool at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineInitError {
    /// A frame of the pool has no bus translation.
    #[error("bounce pool frame at {phys} has no bus translation")]
    NoTranslation {
        /// The frame's address.
        phys: PhysAddr,
    },
    /// A 256 KiB segment of the pool is not bus-contiguous (a bounce buffer may span it).
    #[error("bounce pool segment {segment} at {phys} is not bus-contiguous")]
    SegmentNotContiguous {
        /// The segment's index.
        segment: usize,
        /// The segment's address.
        phys: PhysAddr,
    },
}

/// Displays the CPU address of a cache-maintenance range, or that it is unknown.
struct CpuAddr(Option<PhysAddr>);

impl fmt::Display for CpuAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(phys) => write!(f, "at {phys}"),
            None => f.write_str("foreign, CPU address unknown"),
        }
    }
}
