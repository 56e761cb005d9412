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

/// The errno a platform reports when no memory satisfies an allocation (`ENOMEM`).
pub const ENOMEM: i32 = 12;

impl PlatformError {
    /// Whether the platform had no memory to satisfy the request (a hypercall failed with
    /// [`ENOMEM`]): asking again with a higher address limit, or a smaller size, may succeed.
    pub const fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::Hypercall { errno: ENOMEM, .. })
    }
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
/// - answer [`contiguous_run`](Self::contiguous_run) as `pfn_to_bfn` answers frame by frame;
/// - never discard data the CPU wrote in [`sync_for_device_preserving`] and
///   [`sync_for_cpu_preserving`]: where the plain hooks invalidate, these clean and
///   invalidate (a platform whose plain hooks never invalidate, such as one whose devices are
///   all coherent, keeps the defaults, which call the plain hooks);
/// - be callable from several CPUs at once (it is `Sync`), serialising internally where it
///   changes shared state.
///
/// [`sync_for_device_preserving`]: Self::sync_for_device_preserving
/// [`sync_for_cpu_preserving`]: Self::sync_for_cpu_preserving
pub unsafe trait Platform: Sync {
    /// Translates a guest frame to the bus frame a device uses for it. `None` when the frame
    /// has no valid translation (e.g. an invalid P2M entry).
    fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn>;

    /// Translates a bus frame back to the guest's own frame. `None` for frames that are not
    /// the guest's own (foreign, unknown).
    fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn>;

    /// The bus-contiguous run of frames that starts at `pfn`: `Some((bfn, n))` with
    /// `1 <= n <= max_frames` when `pfn` translates to `bfn` and each of the `n` frames
    /// `pfn + i` to `bfn + i`; `None` when `pfn` has no translation. The run may stop short
    /// of a longer one (the engine asks again from where it stopped), but never beyond the
    /// first frame that breaks it. `max_frames` is at least 1.
    ///
    /// The engine's contiguity check (Linux's `range_straddles_page_boundary`) walks a range
    /// by runs through this, so its cost is the number of runs rather than of frames. The
    /// default asks [`pfn_to_bfn`](Self::pfn_to_bfn) frame by frame up to the first break; a
    /// platform that knows runs (a 1:1 translation, a table of ranges) answers one in a
    /// step.
    fn contiguous_run(&self, pfn: Pfn, max_frames: u64) -> Option<(Bfn, u64)> {
        let b0 = self.pfn_to_bfn(pfn)?;
        let mut n = 1;
        while n < max_frames {
            let next = pfn.checked_add(n).and_then(|p| self.pfn_to_bfn(p));
            if next.is_none() || next != b0.checked_add(n) {
                break;
            }
            n += 1;
        }
        Some((b0, n))
    }

    /// A platform reason to bounce a mapping that is otherwise reachable (Linux's
    /// `xen_arch_need_swiotlb`). The default is never.
    fn needs_bounce(&self, dev: &Device, phys: PhysAddr, bus: BusAddr) -> bool {
        let _ = (dev, phys, bus);
        false
    }

    /// Cache maintenance before the device accesses `len` bytes that the device reaches at
    /// `bus` and the CPU at `phys`. Called only for non-coherent devices. The default does
    /// nothing (coherent platforms).
    ///
    /// # The `phys` argument
    ///
    /// - `Some(p)`: the CPU reaches the range at `p..p + len`, and `p` and `bus` have the same
    ///   offset in their 4 KiB frame. The range may still hold foreign pages: on a platform
    ///   where a frame's bus and physical frame numbers differ for foreign pages (arm64
    ///   dom0), the platform decides frame by frame.
    /// - `None`: the CPU address of these bytes is not known. The engine passes `None` only
    ///   for a direct mapping at unmap or sync time (when it has only the bus address),
    ///   only for bytes whose bus frames are not the domain's own RAM (the bus frame does not
    ///   translate back with [`bfn_to_local_pfn`](Self::bfn_to_local_pfn), or translates to a
    ///   frame the kernel's page allocator says is not RAM: Linux's `!pfn_valid` branch of
    ///   `xen_dma_sync_for_device`), and never for a device behind an IOMMU. Every frame of
    ///   the range is then foreign and can only be maintained by bus address (on arm64,
    ///   `GNTTABOP_cache_flush`); the range may span several frames. A platform that cannot
    ///   maintain memory by bus address returns an error.
    fn sync_for_device(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        let _ = (dev, phys, bus, len, dir);
        Ok(())
    }

    /// Cache maintenance before the CPU reads what the device wrote. Called only for
    /// non-coherent devices. The default does nothing.
    ///
    /// `phys` is as for [`sync_for_device`](Self::sync_for_device): `None` when the CPU
    /// address is not known and every frame of the range is foreign.
    fn sync_for_cpu(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        let _ = (dev, phys, bus, len, dir);
        Ok(())
    }

    /// [`sync_for_device`](Self::sync_for_device) for a range the engine cannot check
    /// against a mapping: the sync of a **direct** mapping, whose extent is only the
    /// caller's word (the engine records no direct mapping), so the range may cover other
    /// owners' memory. The hook must not discard data the CPU wrote: where
    /// `sync_for_device` invalidates (on arm64, a foreign page for
    /// [`DmaDirection::FromDevice`]), this cleans and invalidates. Cleaning is always
    /// allowed.
    ///
    /// The default calls `sync_for_device`, which is right only for a platform whose
    /// `sync_for_device` never invalidates (see the trait's implementation safety).
    fn sync_for_device_preserving(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        self.sync_for_device(dev, phys, bus, len, dir)
    }

    /// [`sync_for_cpu`](Self::sync_for_cpu) for a range the engine cannot check against a
    /// mapping: the unmap or sync of a **direct** mapping, with the caller's size. The hook
    /// must not discard data the CPU wrote: where `sync_for_cpu` invalidates, this cleans
    /// and invalidates (arm64's `dc civac`, `GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL`). For a
    /// range that really is the mapping, the effect is the invalidate's: a non-coherent
    /// device's buffer holds no dirty line the CPU still needs while the device owns it.
    ///
    /// The default calls `sync_for_cpu`, which is right only for a platform whose
    /// `sync_for_cpu` never invalidates (see the trait's implementation safety).
    fn sync_for_cpu_preserving(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        self.sync_for_cpu(dev, phys, bus, len, dir)
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

    /// Makes the `2^order` frames starting at `phys` bus-contiguous below the lowest limit
    /// `2^bits`, for `bits` rising from `min_bits` to `max_bits`, that the platform can
    /// satisfy; returns the bus address of `phys` and the `bits` used. The contents are
    /// zeroed.
    ///
    /// The next limit is tried only when the platform reports that it has no memory below
    /// the current one ([`PlatformError::is_out_of_memory`]); any other error ends the
    /// search and is returned. After an error the region is as before.
    ///
    /// The default calls [`create_contiguous_region`](Self::create_contiguous_region) once
    /// per limit. A platform whose attempts are expensive to set up and undo overrides it to
    /// pay for that once: on x86 PV every attempt unmaps and remaps the whole region around
    /// its one `XENMEM_exchange`, so the override keeps the region unmapped while it asks
    /// for rising limits, and a refused limit costs one hypercall instead of
    /// `2 * 2^order / 32 + 1`.
    ///
    /// # Errors
    ///
    /// [`PlatformError::AddressBits`] when `min_bits > max_bits`; otherwise the error of the
    /// last attempt.
    ///
    /// # Safety
    ///
    /// As for [`create_contiguous_region`](Self::create_contiguous_region).
    unsafe fn create_contiguous_region_rising(
        &self,
        phys: PhysAddr,
        order: u32,
        min_bits: u32,
        max_bits: u32,
    ) -> Result<(BusAddr, u32), PlatformError> {
        if min_bits > max_bits {
            return Err(PlatformError::AddressBits {
                bits: min_bits,
                min: min_bits,
                max: max_bits,
            });
        }
        let mut bits = min_bits;
        loop {
            // SAFETY: the caller's contract is `create_contiguous_region`'s.
            match unsafe { self.create_contiguous_region(phys, order, bits) } {
                Ok(bus) => return Ok((bus, bits)),
                Err(e) if e.is_out_of_memory() && bits < max_bits => bits += 1,
                Err(e) => return Err(e),
            }
        }
    }

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

/// A borrowed platform is a platform: an engine may own its platform or borrow it (for
/// example to give chunks back through it after the engine is gone).
// SAFETY: every method forwards to `P`, which upholds the contract.
unsafe impl<P: Platform + ?Sized> Platform for &P {
    #[inline]
    fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn> {
        (**self).pfn_to_bfn(pfn)
    }

    #[inline]
    fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> {
        (**self).bfn_to_local_pfn(bfn)
    }

    #[inline]
    fn contiguous_run(&self, pfn: Pfn, max_frames: u64) -> Option<(Bfn, u64)> {
        (**self).contiguous_run(pfn, max_frames)
    }

    #[inline]
    fn needs_bounce(&self, dev: &Device, phys: PhysAddr, bus: BusAddr) -> bool {
        (**self).needs_bounce(dev, phys, bus)
    }

    fn sync_for_device(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        (**self).sync_for_device(dev, phys, bus, len, dir)
    }

    fn sync_for_cpu(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        (**self).sync_for_cpu(dev, phys, bus, len, dir)
    }

    fn sync_for_device_preserving(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        (**self).sync_for_device_preserving(dev, phys, bus, len, dir)
    }

    fn sync_for_cpu_preserving(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        (**self).sync_for_cpu_preserving(dev, phys, bus, len, dir)
    }

    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, PlatformError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).create_contiguous_region(phys, order, address_bits) }
    }

    unsafe fn create_contiguous_region_rising(
        &self,
        phys: PhysAddr,
        order: u32,
        min_bits: u32,
        max_bits: u32,
    ) -> Result<(BusAddr, u32), PlatformError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).create_contiguous_region_rising(phys, order, min_bits, max_bits) }
    }

    unsafe fn destroy_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
    ) -> Result<(), PlatformError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).destroy_contiguous_region(phys, order) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU32, Ordering};
    use std::vec::Vec;

    /// A platform with memory only at and above `2^floor_bits`, which records every limit
    /// asked for; `fail` replaces the answer below the floor.
    struct Floor {
        floor_bits: u32,
        fail: PlatformError,
        asked: std::sync::Mutex<Vec<u32>>,
        calls: AtomicU32,
    }

    // SAFETY: test-only platform; nothing reaches a device.
    unsafe impl Platform for Floor {
        fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn> {
            Some(Bfn::new(pfn.as_u64()))
        }
        fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> {
            Some(Pfn::new(bfn.as_u64()))
        }
        unsafe fn create_contiguous_region(
            &self,
            phys: PhysAddr,
            _order: u32,
            address_bits: u32,
        ) -> Result<BusAddr, PlatformError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.asked.lock().unwrap().push(address_bits);
            if address_bits < self.floor_bits {
                Err(self.fail)
            } else {
                Ok(BusAddr::new(phys.as_u64()))
            }
        }
        unsafe fn destroy_contiguous_region(
            &self,
            _phys: PhysAddr,
            _order: u32,
        ) -> Result<(), PlatformError> {
            Ok(())
        }
    }

    fn floor(floor_bits: u32, fail: PlatformError) -> Floor {
        Floor {
            floor_bits,
            fail,
            asked: std::sync::Mutex::new(Vec::new()),
            calls: AtomicU32::new(0),
        }
    }

    const NO_MEMORY: PlatformError = PlatformError::Hypercall {
        op: "XENMEM_exchange",
        errno: ENOMEM,
    };

    #[test]
    fn rising_tries_each_limit_until_one_fits() {
        let p = floor(24, NO_MEMORY);
        // SAFETY: the test platform touches no memory.
        let r = unsafe { p.create_contiguous_region_rising(PhysAddr::new(0x4_0000), 6, 18, 32) };
        assert_eq!(r, Ok((BusAddr::new(0x4_0000), 24)));
        assert_eq!(*p.asked.lock().unwrap(), [18, 19, 20, 21, 22, 23, 24]);
    }

    #[test]
    fn rising_stops_at_the_top_with_the_last_error() {
        let p = floor(40, NO_MEMORY);
        // SAFETY: the test platform touches no memory.
        let r = unsafe { p.create_contiguous_region_rising(PhysAddr::new(0), 0, 30, 32) };
        assert_eq!(r, Err(NO_MEMORY));
        assert_eq!(*p.asked.lock().unwrap(), [30, 31, 32]);
    }

    #[test]
    fn rising_gives_up_at_once_on_errors_other_than_no_memory() {
        let einval = PlatformError::Hypercall {
            op: "XENMEM_exchange",
            errno: 22,
        };
        let p = floor(40, einval);
        // SAFETY: the test platform touches no memory.
        let r = unsafe { p.create_contiguous_region_rising(PhysAddr::new(0), 0, 20, 32) };
        assert_eq!(r, Err(einval));
        assert_eq!(p.calls.load(Ordering::Relaxed), 1);
        assert!(!einval.is_out_of_memory());
        assert!(NO_MEMORY.is_out_of_memory());
    }

    #[test]
    fn rising_rejects_an_empty_range_without_a_call() {
        let p = floor(0, NO_MEMORY);
        // SAFETY: the test platform touches no memory.
        let r = unsafe {
            <&Floor as Platform>::create_contiguous_region_rising(&&p, PhysAddr::new(0), 0, 33, 32)
        };
        assert!(matches!(
            r,
            Err(PlatformError::AddressBits { bits: 33, .. })
        ));
        assert_eq!(p.calls.load(Ordering::Relaxed), 0);
    }
}
