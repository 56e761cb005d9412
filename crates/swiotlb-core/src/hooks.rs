//! The hooks a platform implements: how the CPU reaches physical memory ([`PhysMemory`]) and
//! how addresses translate, memory is made contiguous and caches are maintained
//! ([`Platform`]).
//!
//! The core walks and decides; the implementer provides. `swiotlb-core` knows nothing of
//! Xen: the Xen platforms live in the `swiotlb-xen-x86-pv` and `swiotlb-xen-arm64` crates,
//! and a kernel without Xen (shared-memory bouncing for TDX/SEV, restricted DMA pools) can
//! implement these traits trivially.

use crate::addr::{Bfn, BusAddr, Pfn, PhysAddr};
use crate::dma::{Device, DmaDirection};

/// How the CPU reaches physical memory for bounce copies.
///
/// A kernel implements this with its linear map (see [`crate::LinearMap`]); the simulator
/// implements it over its machine memory. Copies go through raw memory, never through
/// `&[u8]`/`&mut [u8]`, because a device may be writing the memory concurrently.
///
/// # Implementation safety
///
/// - [`copy`](Self::copy) copies exactly `len` bytes from the CPU's view of `src..src+len` to
///   `dst..dst+len` and touches no other memory.
/// - [`fill`](Self::fill) writes exactly `len` bytes at `dst..dst+len` and nothing else.
/// - Both may be called from several CPUs at once on disjoint ranges.
pub unsafe trait PhysMemory: Sync {
    /// Copies `len` bytes from `src` to `dst`.
    ///
    /// # Safety
    ///
    /// Both ranges must be memory this `PhysMemory` can reach, must not overlap, and must not
    /// be covered by any live Rust reference. The caller must have the right to read `src` and
    /// write `dst` for the duration of the call.
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize);

    /// Writes `byte` to `len` bytes at `dst`.
    ///
    /// # Safety
    ///
    /// As for [`copy`](Self::copy), for the destination range.
    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize);
}

/// An error reported by a platform hook.
///
/// The variants carry the values involved so that a log line says what failed without a
/// debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// A hypercall (or the platform's equivalent) returned an error.
    #[error("{op} failed with errno {errno}")]
    Hypercall {
        /// The operation, e.g. `"XENMEM_exchange"`.
        op: &'static str,
        /// The positive errno (`22` for EINVAL).
        errno: i32,
    },
    /// A frame has no valid bus translation.
    #[error("{pfn} has no bus translation")]
    NoTranslation {
        /// The frame.
        pfn: Pfn,
    },
    /// An allocation order beyond what the platform supports.
    #[error("order {order} exceeds the supported maximum {max}")]
    OrderTooLarge {
        /// The order asked for.
        order: u32,
        /// The largest supported order.
        max: u32,
    },
    /// An address that is not aligned as the operation requires.
    #[error("{addr} is not aligned to {align:#x}")]
    Misaligned {
        /// The address.
        addr: PhysAddr,
        /// The alignment required.
        align: u64,
    },
    /// An address limit outside what the platform accepts.
    #[error("address bits {bits} outside {min}..={max}")]
    AddressBits {
        /// The bits asked for.
        bits: u32,
        /// Smallest accepted.
        min: u32,
        /// Largest accepted.
        max: u32,
    },
    /// The operation does not exist on this platform or in this configuration.
    #[error("not supported: {what}")]
    Unsupported {
        /// What is not supported.
        what: &'static str,
    },
    /// A resource (table, scratch space) is exhausted.
    #[error("out of {what}")]
    Exhausted {
        /// What ran out.
        what: &'static str,
    },
}

/// Translation, contiguity and cache-maintenance hooks of a platform.
///
/// All frame arguments are 4 KiB Xen frames ([`crate::addr::XEN_PAGE_SIZE`]).
///
/// # Implementation safety
///
/// The DMA engine hands the results of these methods to devices. An implementation must:
/// - return from [`pfn_to_bfn`](Self::pfn_to_bfn) the bus frame through which a device reaches
///   the very memory the CPU reaches at that physical frame, or `None`;
/// - return from [`bfn_to_local_pfn`](Self::bfn_to_local_pfn) a frame only if it is the
///   guest's own frame whose translation is that bus frame (never for foreign frames);
/// - make [`create_contiguous_region`](Self::create_contiguous_region) return the bus address
///   of a region that really is bus-contiguous and below the limit asked for;
/// - be callable from several CPUs at once (it is `Sync`), serialising internally where it
///   changes shared state.
pub unsafe trait Platform: Sync {
    /// Translates a guest frame to the bus frame a device uses for it. `None` when the frame
    /// has no valid translation (e.g. an invalid P2M entry).
    fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn>;

    /// Translates a bus frame back to the guest's own frame. `None` for frames that are not
    /// the guest's own (foreign, unknown).
    fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn>;

    /// A platform reason to bounce a mapping that is otherwise reachable (Linux's
    /// `xen_arch_need_swiotlb`). The default is never.
    fn needs_bounce(&self, dev: &Device, phys: PhysAddr, bus: BusAddr) -> bool {
        let _ = (dev, phys, bus);
        false
    }

    /// Cache maintenance before the device accesses `len` bytes that the CPU reaches at
    /// `phys` and the device at `bus`. Called only for non-coherent devices. The default does
    /// nothing (coherent platforms).
    fn sync_for_device(
        &self,
        dev: &Device,
        phys: PhysAddr,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        let _ = (dev, phys, bus, len, dir);
        Ok(())
    }

    /// Cache maintenance before the CPU reads what the device wrote. Called only for
    /// non-coherent devices. The default does nothing.
    fn sync_for_cpu(
        &self,
        dev: &Device,
        phys: PhysAddr,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        let _ = (dev, phys, bus, len, dir);
        Ok(())
    }

    /// Makes the `2^order` frames starting at `phys` bus-contiguous and below
    /// `2^address_bits`, and returns the bus address of `phys`. The contents are zeroed.
    ///
    /// On error the region is as before (same frames, same mappings).
    ///
    /// # Safety
    ///
    /// `phys` must be aligned to `4 KiB << order`, and the caller must own the region
    /// exclusively: nothing else (CPU reference or device) may access it during the call.
    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, PlatformError>;

    /// Gives back a region made contiguous by
    /// [`create_contiguous_region`](Self::create_contiguous_region). The contents are zeroed.
    ///
    /// # Safety
    ///
    /// As for `create_contiguous_region`, and the region must have been made contiguous with
    /// the same `order`.
    unsafe fn destroy_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
    ) -> Result<(), PlatformError>;
}
