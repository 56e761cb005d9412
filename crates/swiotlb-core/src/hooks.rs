//! The hooks a platform implements: how the CPU reaches physical memory ([`PhysMemory`]) and
//! how addresses translate, memory is made contiguous and caches are maintained
//! ([`Platform`]).
//!
//! The core walks and decides; the implementer provides. `swiotlb-core` knows nothing of
//! Xen: the Xen platforms live in the `swiotlb-xen-x86-pv` and `swiotlb-xen-arm64` crates,
//! and a kernel without Xen (shared-memory bouncing for TDX/SEV, restricted DMA pools) can
//! implement these traits trivially.

use core::ptr::NonNull;

use crate::addr::{Bfn, BusAddr, Pfn, PhysAddr};
use crate::dma::{Device, DmaDirection};
use crate::errno::Named;

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

/// A [`PhysMemory`] that also copies between physical memory and a caller's buffer given
/// by pointer, what [`DmaEngine::map_buffer`](crate::engine::DmaEngine::map_buffer) and
/// [`DmaEngine::unmap_buffer`](crate::engine::DmaEngine::unmap_buffer) need of the pool's memory
/// (the pool's [`map_buffer`](crate::pool::BouncePool::map_buffer) copies through it).
///
/// # Implementation safety
///
/// - [`copy_from_buffer`](Self::copy_from_buffer) reads exactly `len` bytes through `src`
///   (with `src`'s provenance, never through another pointer to the same bytes) and writes
///   exactly `dst..dst + len`; [`copy_to_buffer`](Self::copy_to_buffer) the reverse.
/// - Both may be called from several CPUs at once on disjoint ranges.
pub unsafe trait BufferMemory: PhysMemory {
    /// Copies `len` bytes from the buffer at `src` to physical memory at `dst`.
    ///
    /// # Safety
    ///
    /// `dst..dst + len` must be memory this `PhysMemory` reaches, not covered by any live
    /// Rust reference, which the caller has the right to write; `src` must be valid for
    /// reads of `len` bytes, not written by anyone during the call, and not overlap `dst`.
    unsafe fn copy_from_buffer(&self, dst: PhysAddr, src: NonNull<u8>, len: usize);

    /// Copies `len` bytes from physical memory at `src` to the buffer at `dst`.
    ///
    /// # Safety
    ///
    /// `src..src + len` must be memory this `PhysMemory` reaches, not covered by any live
    /// Rust reference, which the caller has the right to read; `dst` must be valid for
    /// writes of `len` bytes, not accessed by anyone else during the call, and not overlap
    /// `src`.
    unsafe fn copy_to_buffer(&self, dst: NonNull<u8>, src: PhysAddr, len: usize);
}

/// A borrowed [`PhysMemory`] is one: the pool and a platform (or two pools) can share one
/// description of the kernel's memory, built once.
///
/// ```
/// use swiotlb_core::{BouncePool, LinearMap, PhysAddr, PhysMemory, Slot};
///
/// fn reaches<M: PhysMemory>(_: &M) {}
///
/// let mut ram = vec![0u8; 256 << 10];
/// // SAFETY: `ram` outlives the map and the pool, and no reference to it is used meanwhile.
/// let linear = unsafe { LinearMap::new(ram.as_mut_ptr(), PhysAddr::new(0x10_0000), ram.len()) };
/// let slots: Vec<Slot> = (0..128).map(|_| Slot::new()).collect();
/// // SAFETY: the whole region is the pool's.
/// let pool = unsafe { BouncePool::new(&linear, PhysAddr::new(0x10_0000), 128, 1, slots) }?;
/// reaches(&linear); // still usable by whatever else needs the kernel's memory
/// assert_eq!(pool.memory().phys_base(), PhysAddr::new(0x10_0000));
/// # drop(pool);
/// # drop(ram);
/// # Ok::<(), swiotlb_core::Error>(())
/// ```
// SAFETY: every method forwards to `M`, which upholds the contract.
unsafe impl<M: PhysMemory + ?Sized> PhysMemory for &M {
    #[inline]
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).copy(dst, src, len) }
    }

    #[inline]
    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).fill(dst, byte, len) }
    }
}

/// A borrowed [`BufferMemory`] is one, as for [`PhysMemory`].
// SAFETY: every method forwards to `M`, which upholds the contract.
unsafe impl<M: BufferMemory + ?Sized> BufferMemory for &M {
    #[inline]
    unsafe fn copy_from_buffer(&self, dst: PhysAddr, src: NonNull<u8>, len: usize) {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).copy_from_buffer(dst, src, len) }
    }

    #[inline]
    unsafe fn copy_to_buffer(&self, dst: NonNull<u8>, src: PhysAddr, len: usize) {
        // SAFETY: the caller's promise, passed on.
        unsafe { (**self).copy_to_buffer(dst, src, len) }
    }
}

/// An error reported by a platform hook.
///
/// The variants carry the values involved so that a log line says what failed without a
/// debugger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// A hypercall (or the platform's equivalent) returned an error. Displayed with the
    /// errno's name, as `xen_abi::XenError` is: `XENMEM_exchange failed with ENOMEM (12)`.
    #[error("{op} failed with {}", Named(i64::from(*.errno)))]
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
    /// The hypervisor refused an operation for its order and did nothing (x86 PV:
    /// `XENMEM_exchange` above the domain's `memop-max-order`, `EPERM`). The platform
    /// remembers it: from now on an order above `max` fails with
    /// [`OrderTooLarge`](Self::OrderTooLarge) before any hypercall.
    #[error(
        "{op} of order {order} failed with {}: above the domain's limit, orders above \
         {max} are no longer asked",
        Named(i64::from(*.errno))
    )]
    OrderRefused {
        /// The operation, e.g. `"XENMEM_exchange"`.
        op: &'static str,
        /// The positive errno (`1` for EPERM).
        errno: i32,
        /// The order refused.
        order: u32,
        /// The largest order the platform asks from now on.
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
    /// The operation failed and left the region **not as before**: some of its frames are
    /// stranded (unmapped, with no valid translation, and either still the domain's but at
    /// no pseudo-physical address, or given up to the hypervisor), or a TLB flush the
    /// region needed could not be done. The region must never be freed to the page
    /// allocator nor reused: the caller quarantines it (the DMA engine hands a coherent
    /// block to [`PageAllocator::quarantine`](crate::engine::PageAllocator::quarantine)).
    #[error(
        "{op} failed with {}; the region is damaged: {stranded}",
        Named(i64::from(*.errno))
    )]
    RegionDamaged {
        /// The step that failed.
        op: DamagedBy,
        /// The positive errno.
        errno: i32,
        /// The stranded frames.
        stranded: Stranded,
    },
}

/// The step of a contiguous-region operation that left a region damaged
/// ([`PlatformError::RegionDamaged`]); a one-byte name, so that the error stays small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DamagedBy {
    /// Mapping a page to its frame failed, even retried alone (x86 PV's
    /// `update_va_mapping` of the remap).
    Remap,
    /// The exchange of frames failed part-way and left pages with no frame (x86 PV's
    /// `XENMEM_exchange`).
    Exchange,
    /// The TLB flush that had to follow the change failed.
    Flush,
}

impl DamagedBy {
    /// The operation's name, as a log line shows it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Remap => "update_va_mapping (remap)",
            Self::Exchange => "XENMEM_exchange (partial)",
            Self::Flush => "TLB flush",
        }
    }
}

impl core::fmt::Display for DamagedBy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// How many stranded frames a [`Stranded`] lists one by one (it counts all of them).
pub const STRANDED_LISTED: usize = 3;

/// One stranded page of a damaged region: its pseudo-physical frame, left without a
/// translation, and the bus (machine) frame that still belongs to the domain and that the
/// page should have been mapped to, if any (`None`: the hypervisor kept the frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrandedFrame {
    /// The page left unmapped.
    pub pfn: Pfn,
    /// The frame it should map, still the domain's; `None` when no frame is left for it.
    pub bfn: Option<Bfn>,
}

/// The stranded pages of a damaged region ([`PlatformError::RegionDamaged`]): every one is
/// counted, the first [`STRANDED_LISTED`] are listed with their frames.
///
/// The storage is bounded so that errors stay `Copy` and small (no heap in the library);
/// the pages beyond the listed ones are the region's other pages without a translation
/// (their `pfn_to_bfn` answers `None`), which a kernel that wants them back finds by
/// walking the quarantined region. `flushed` says whether the TLB flush that had to follow
/// the failure was done; a region with no stranded page can still be damaged by a missing
/// flush (stale translations of frames it gave up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stranded {
    count: u32,
    len: u8,
    flushed: bool,
    /// `(pfn, bfn)` of the listed pages, `u64::MAX` for no bfn (kept raw so that the error
    /// stays small).
    frames: [(u64, u64); STRANDED_LISTED],
}

impl Default for Stranded {
    fn default() -> Self {
        Self::new()
    }
}

impl Stranded {
    /// No stranded page, TLB flushed.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            count: 0,
            len: 0,
            flushed: true,
            frames: [(u64::MAX, u64::MAX); STRANDED_LISTED],
        }
    }

    /// Records one more stranded page (listed while there is room; the count saturates at
    /// `u32::MAX`, far above the 2^20 pages of the largest region).
    pub fn push(&mut self, pfn: Pfn, bfn: Option<Bfn>) {
        if let Some(f) = self.frames.get_mut(usize::from(self.len)) {
            *f = (pfn.as_u64(), bfn.map_or(u64::MAX, Bfn::as_u64));
            self.len += 1;
        }
        self.count = self.count.saturating_add(1);
    }

    /// Records whether the TLB flush after the failure was done.
    pub fn set_flushed(&mut self, flushed: bool) {
        self.flushed = flushed;
    }

    /// Every stranded page, listed or not.
    #[must_use]
    pub const fn count(&self) -> u64 {
        self.count as u64
    }

    /// The first [`STRANDED_LISTED`] of them, in the order they were found.
    pub fn listed(&self) -> impl Iterator<Item = StrandedFrame> + '_ {
        self.frames[..usize::from(self.len)]
            .iter()
            .map(|&(pfn, bfn)| StrandedFrame {
                pfn: Pfn::try_new(pfn).unwrap_or(Pfn::MAX),
                bfn: Bfn::try_new(bfn).filter(|_| bfn != u64::MAX),
            })
    }

    /// Whether every stranded page is listed.
    #[must_use]
    pub const fn is_complete(&self) -> bool {
        self.count == self.len as u32
    }

    /// Whether the TLB flush after the failure was done.
    #[must_use]
    pub const fn flushed(&self) -> bool {
        self.flushed
    }

    /// Whether the region is damaged at all: a stranded page or a missing flush.
    #[must_use]
    pub const fn is_damage(&self) -> bool {
        self.count != 0 || !self.flushed
    }
}

impl core::fmt::Display for Stranded {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} pages stranded", self.count)?;
        for (i, s) in self.listed().enumerate() {
            f.write_str(if i == 0 { " (" } else { ", " })?;
            match s.bfn {
                Some(b) => write!(f, "{} -> {b}", s.pfn)?,
                None => write!(f, "{} -> no frame", s.pfn)?,
            }
        }
        if self.len > 0 {
            let more = self.count - u32::from(self.len);
            if more > 0 {
                write!(f, ", {more} more")?;
            }
            f.write_str(")")?;
        }
        if !self.flushed {
            f.write_str(", TLB not flushed")?;
        }
        Ok(())
    }
}

/// The errno a platform reports when no memory satisfies an allocation (`ENOMEM`).
pub const ENOMEM: i32 = 12;

impl PlatformError {
    /// Whether the platform had no memory to satisfy the request (a hypercall failed with
    /// [`ENOMEM`]): asking again with a higher address limit, or a smaller size, may succeed.
    pub const fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::Hypercall { errno: ENOMEM, .. })
    }

    /// The largest order the platform accepts, when the error says the order was too large
    /// ([`OrderTooLarge`](Self::OrderTooLarge), or [`OrderRefused`](Self::OrderRefused) by
    /// the hypervisor): a smaller order may succeed.
    pub const fn order_limit(&self) -> Option<u32> {
        match self {
            Self::OrderTooLarge { max, .. } | Self::OrderRefused { max, .. } => Some(*max),
            _ => None,
        }
    }

    /// The stranded pages when the operation left its region damaged
    /// ([`RegionDamaged`](Self::RegionDamaged)): the region must then be quarantined, never
    /// freed nor reused.
    pub const fn damage(&self) -> Option<&Stranded> {
        match self {
            Self::RegionDamaged { stranded, .. } => Some(stranded),
            _ => None,
        }
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
/// - answer [`contiguous_run`](Self::contiguous_run) as `pfn_to_bfn` answers frame by frame,
///   and [`local_run`](Self::local_run) as `bfn_to_local_pfn` does;
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

    /// The run of bus frames from `bfn` that translate back alike: `(Some(pfn), n)` when each
    /// of the `n` frames `bfn + i` translates back ([`bfn_to_local_pfn`](Self::bfn_to_local_pfn))
    /// to `pfn + i`, `(None, n)` when none of them translates back. `1 <= n <= max_frames`
    /// (`max_frames` is at least 1); the run may stop short of a longer one (the engine asks
    /// again from where it stopped), but never beyond the first frame that breaks it.
    ///
    /// The engine walks the bus range of a direct mapping by these runs when it maintains the
    /// caches of a non-coherent device at unmap and sync time (it has only the bus address
    /// then), so the cost of a range is the number of runs, not of frames: a caller's absurd
    /// size does not become a walk of 2^52 frames. The default asks
    /// [`bfn_to_local_pfn`](Self::bfn_to_local_pfn) frame by frame up to the first break; a
    /// platform that knows runs (a 1:1 translation, the end of its M2P) answers one in a
    /// step.
    fn local_run(&self, bfn: Bfn, max_frames: u64) -> (Option<Pfn>, u64) {
        let first = self.bfn_to_local_pfn(bfn);
        let mut n = 1;
        while n < max_frames {
            let Some(b) = bfn.checked_add(n) else {
                break;
            };
            let next = self.bfn_to_local_pfn(b);
            let same = match first {
                Some(p) => next.is_some() && next == p.checked_add(n),
                None => next.is_none(),
            };
            if !same {
                break;
            }
            n += 1;
        }
        (first, n)
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
    /// On error the region is as before (same frames, same mappings), or still usable memory
    /// of the domain (every page mapped to a frame of its own), except after
    /// [`PlatformError::RegionDamaged`]: then pages of the region are left without a frame
    /// or a flush was missed, and the caller must quarantine the region (never free it to
    /// the page allocator, never use it again).
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
    /// search and is returned. After an error the region is as
    /// [`create_contiguous_region`](Self::create_contiguous_region) leaves it (quarantined
    /// after [`PlatformError::RegionDamaged`]).
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
    /// On error the region is still contiguous and may be given back again, except after
    /// [`PlatformError::RegionDamaged`], after which it must be quarantined.
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
    fn local_run(&self, bfn: Bfn, max_frames: u64) -> (Option<Pfn>, u64) {
        (**self).local_run(bfn, max_frames)
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
    fn platform_errors_name_the_errno_as_xen_errors_do() {
        use std::string::ToString;
        assert_eq!(
            NO_MEMORY.to_string(),
            "XENMEM_exchange failed with ENOMEM (12)"
        );
        let odd = PlatformError::Hypercall {
            op: "x",
            errno: 4000,
        };
        assert_eq!(odd.to_string(), "x failed with errno 4000");
        let mut s = Stranded::new();
        for p in 1..=5 {
            s.push(Pfn::new(p), (p % 2 == 0).then(|| Bfn::new(p + 100)));
        }
        s.set_flushed(false);
        let e = PlatformError::RegionDamaged {
            op: DamagedBy::Remap,
            errno: 14,
            stranded: s,
        };
        assert_eq!(
            e.to_string(),
            "update_va_mapping (remap) failed with EFAULT (14); the region is damaged: 5 pages \
             stranded (pfn 0x1 -> no frame, pfn 0x2 -> bfn 0x66, pfn 0x3 -> no frame, 2 more), \
             TLB not flushed"
        );
        assert_eq!(e.damage().map(Stranded::count), Some(5));
        assert!(!s.is_complete() && s.is_damage());
        assert_eq!(NO_MEMORY.damage(), None);
        let refused = PlatformError::OrderRefused {
            op: "XENMEM_exchange",
            errno: 1,
            order: 12,
            max: 11,
        };
        assert_eq!(
            refused.to_string(),
            "XENMEM_exchange of order 12 failed with EPERM (1): above the domain's limit, \
             orders above 11 are no longer asked"
        );
        assert_eq!(refused.order_limit(), Some(11));
        let too_large = PlatformError::OrderTooLarge { order: 12, max: 9 };
        assert_eq!(too_large.order_limit(), Some(9));
        assert_eq!(NO_MEMORY.order_limit(), None);
    }

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
