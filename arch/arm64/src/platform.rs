//! The arm64 dom0 platform: [`swiotlb_core::Platform`] for a 1:1 (direct-mapped) domain.

use crate::cache::{self, CacheOps, LocalOp, Maintenance};
use crate::foreign::{EntryStorage, ForeignTable};
use crate::grant::{GrantMapSummary, GrantUnmapSummary};
use crate::hcall;
use swiotlb_core::{
    Bfn, BusAddr, Device, DmaDirection, Pfn, PhysAddr, PhysMemory, Platform, PlatformError,
    XEN_PAGE_SHIFT, XEN_PAGE_SIZE,
};
use xen_abi::{
    GnttabCacheFlush, GnttabMapGrantRef, GnttabUnmapGrantRef, Hypercall, XENFEAT_DIRECT_MAPPED,
    XENFEAT_NOT_DIRECT_MAPPED, XenError, ops,
};

/// The largest order [`Platform::create_contiguous_region`] accepts: a region of
/// `4 KiB << order` bytes must be expressible in 64 bits.
pub const MAX_CONTIG_ORDER: u32 = 63 - XEN_PAGE_SHIFT;

/// How the domain's memory relates to machine memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainMapping {
    /// Xen reports `XENFEAT_direct_mapped`: guest physical equals machine for own memory.
    Direct,
    /// Xen reports neither `XENFEAT_direct_mapped` nor `XENFEAT_not_direct_mapped` (Xen
    /// before 4.15), and the kernel said it is the initial domain, which such Xen maps 1:1.
    AssumedDirect,
    /// Xen reports `XENFEAT_not_direct_mapped`, or neither feature for a domain other than the
    /// initial one. Bus addresses are then unknown without an IOMMU: the platform translates
    /// nothing (devices must sit behind an IOMMU) and makes no contiguous region.
    NotDirect,
}

impl DomainMapping {
    /// Whether own memory is mapped 1:1.
    #[inline]
    #[must_use]
    pub const fn is_direct(self) -> bool {
        matches!(self, Self::Direct | Self::AssumedDirect)
    }
}

/// What the kernel tells the probe that Xen cannot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ProbeOptions {
    /// Whether this is the initial domain (dom0). Only used on Xen too old to report
    /// `XENFEAT_direct_mapped`, where dom0 is 1:1 and other domains are not (Linux's
    /// `xen_swiotlb_detect`).
    pub initial_domain: bool,
}

impl ProbeOptions {
    /// Options for the initial domain (dom0).
    #[must_use]
    pub const fn initial_domain() -> Self {
        Self {
            initial_domain: true,
        }
    }
}

/// What the platform knows about the hypervisor, from [`Arm64Config::probe`] or set by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Arm64Config {
    /// How own memory is mapped.
    pub mapping: DomainMapping,
    /// Whether Xen has `GNTTABOP_cache_flush` (Linux's `hypercall_cflush`). Without it,
    /// foreign pages used by non-coherent devices are bounced.
    pub cache_flush: bool,
}

impl Arm64Config {
    /// A configuration stated by the kernel rather than probed.
    #[must_use]
    pub const fn new(mapping: DomainMapping, cache_flush: bool) -> Self {
        Self {
            mapping,
            cache_flush,
        }
    }

    /// Asks Xen: `XENVER_get_features` for the mapping, and a zeroed `GNTTABOP_cache_flush`
    /// request for the cache flush (Linux's `xen_mm_init`). Xen answers a request of length 0
    /// with success when the operation exists; any answer but `-ENOSYS` counts as present.
    ///
    /// # Errors
    ///
    /// [`Arm64InitError::Features`] if `XENVER_get_features` fails.
    pub fn probe<H: Hypercall + ?Sized>(
        hyp: &H,
        options: ProbeOptions,
    ) -> Result<Self, Arm64InitError> {
        let features = ops::get_features(hyp, 0).map_err(Arm64InitError::Features)?;
        let has = |bit: u32| features & (1 << bit) != 0;
        let mapping = if has(XENFEAT_DIRECT_MAPPED) {
            DomainMapping::Direct
        } else if has(XENFEAT_NOT_DIRECT_MAPPED) || !options.initial_domain {
            DomainMapping::NotDirect
        } else {
            DomainMapping::AssumedDirect
        };
        let cache_flush = ops::cache_flush_probe(hyp);
        Ok(Self {
            mapping,
            cache_flush,
        })
    }
}

/// Why the platform could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Arm64InitError {
    /// `XENVER_get_features` failed.
    #[error("cannot read Xen's features: {0}")]
    Features(XenError),
}

/// The arm64 dom0 platform: 1:1 translation except for the frames in the foreign table,
/// bouncing of foreign pages for non-coherent devices when Xen lacks `GNTTABOP_cache_flush`,
/// cache maintenance per 4 KiB frame (local frames through `C`, foreign frames through
/// Xen), and contiguous regions as the identity.
///
/// - `H` makes hypercalls (`NativeHypercall` on aarch64, a simulator in tests);
/// - `C` maintains the caches of local memory ([`crate::NoCacheOps`] if all devices are
///   coherent);
/// - `M` reaches physical memory; [`Platform::create_contiguous_region`] zeroes through it, so
///   it must reach every region passed there;
/// - `S` is the foreign table's storage.
///
/// Foreign detection follows Linux: a frame is foreign when its bus frame differs from its
/// physical frame (`XEN_PFN_DOWN(phys) != XEN_PFN_DOWN(dma_to_phys(dev_addr))`).
pub struct Arm64Platform<'a, H: ?Sized, C, M: ?Sized, S> {
    hyp: &'a H,
    table: &'a ForeignTable<S>,
    cache: C,
    mem: &'a M,
    config: Arm64Config,
}

impl<'a, H, C, M, S> Arm64Platform<'a, H, C, M, S>
where
    H: Hypercall + Sync + ?Sized,
    C: CacheOps,
    M: PhysMemory + ?Sized,
    S: EntryStorage + Send + Sync,
{
    /// Assembles a platform from a configuration (probed with [`Arm64Config::probe`], or
    /// stated by the kernel).
    ///
    /// # Safety
    ///
    /// The platform's answers go to devices, so what it is built from must be true:
    /// - `config.mapping` describes this domain (a stated [`DomainMapping::Direct`] or
    ///   [`DomainMapping::AssumedDirect`] only if Xen really maps its own memory 1:1);
    /// - `hyp` makes this domain's hypercalls to the Xen it runs on;
    /// - `mem` reaches every region later passed to
    ///   [`Platform::create_contiguous_region`] and [`Platform::destroy_contiguous_region`]
    ///   (dom0's RAM), which they zero through it.
    #[must_use]
    pub const unsafe fn new(
        hyp: &'a H,
        table: &'a ForeignTable<S>,
        cache: C,
        mem: &'a M,
        config: Arm64Config,
    ) -> Self {
        Self {
            hyp,
            table,
            cache,
            mem,
            config,
        }
    }

    /// Probes Xen ([`Arm64Config::probe`]) and assembles the platform.
    ///
    /// # Errors
    ///
    /// As [`Arm64Config::probe`].
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new), except that the configuration comes from Xen.
    pub unsafe fn probe(
        hyp: &'a H,
        table: &'a ForeignTable<S>,
        cache: C,
        mem: &'a M,
        options: ProbeOptions,
    ) -> Result<Self, Arm64InitError> {
        let config = Arm64Config::probe(hyp, options)?;
        // SAFETY: the configuration is Xen's answer; the caller vouches for `hyp` and `mem`.
        Ok(unsafe { Self::new(hyp, table, cache, mem, config) })
    }

    /// The configuration in force.
    #[must_use]
    pub const fn config(&self) -> Arm64Config {
        self.config
    }

    /// The foreign table.
    #[must_use]
    pub const fn table(&self) -> &'a ForeignTable<S> {
        self.table
    }

    /// Whether the `len` bytes from `phys` are contiguous on the bus (Linux's
    /// `!range_straddles_page_boundary`). False when the domain is not direct-mapped or the
    /// range wraps.
    #[must_use]
    pub fn is_bus_contiguous(&self, phys: PhysAddr, len: u64) -> bool {
        if !self.config.mapping.is_direct() {
            return false;
        }
        let frames = swiotlb_core::addr::frames_spanned(phys.frame_offset(), len);
        phys.checked_last(len.max(1)).is_some()
            && self.table.is_bus_contiguous(phys.frame(), frames)
    }

    /// [`ForeignTable::record_grant_maps`] through this platform's hypercalls.
    ///
    /// # Safety
    ///
    /// As for [`ForeignTable::record_grant_maps`], with the maps made through the same `H`.
    pub unsafe fn record_grant_maps(&self, ops: &mut [GnttabMapGrantRef]) -> GrantMapSummary {
        // SAFETY: the caller's promise is the one `record_grant_maps` needs.
        unsafe { self.table.record_grant_maps(ops, self.hyp) }
    }

    /// [`ForeignTable::clear_grant_unmaps`].
    ///
    /// # Safety
    ///
    /// As for [`ForeignTable::clear_grant_unmaps`].
    pub unsafe fn clear_grant_unmaps(&self, ops: &[GnttabUnmapGrantRef]) -> GrantUnmapSummary {
        // SAFETY: the caller's promise is the one `clear_grant_unmaps` needs.
        unsafe { self.table.clear_grant_unmaps(ops) }
    }

    /// `GNTTABOP_cache_flush` of `len` bytes (within one 4 KiB frame) at `bus`.
    fn flush_foreign(&self, bus: BusAddr, len: u64, op: u32) -> Result<(), PlatformError> {
        if !self.config.cache_flush {
            return Err(PlatformError::Unsupported {
                what: "cache maintenance of foreign pages without GNTTABOP_cache_flush",
            });
        }
        debug_assert!(bus.frame_offset() + len <= XEN_PAGE_SIZE);
        // CAST: the offset is below 4096 and the length at most 4096 (one frame), so both fit
        // in 16 bits.
        let (offset, length) = (bus.frame_offset() as u16, len as u16);
        let mut req =
            GnttabCacheFlush::by_bus_addr(bus.frame().start().as_u64(), offset, length, op);
        // SAFETY: an invalidate without a clean (`op` is GNTTAB_CACHE_INVAL alone) comes only
        // from the plain hooks, whose range the engine checked to be part of a DMA mapping
        // being synced: it discards CPU-written data only where the DMA API gives the device
        // the last word, which is what the caller of the sync asked for. A range nobody
        // checked comes through the preserving hooks, which add GNTTAB_CACHE_CLEAN: nothing
        // is discarded.
        unsafe { hcall::cache_flush(self.hyp, &mut req) }.map_err(hcall::platform_error)
    }

    /// Runs `m` over `len` bytes at device address `bus` (CPU address `phys` when known),
    /// frame by frame: runs of local frames go to the kernel's cache hook in one call, each
    /// foreign 4 KiB frame to Xen (`GNTTABOP_cache_flush` by bus address).
    ///
    /// A frame is foreign when the CPU address is unknown (`phys` is `None`: the engine met a
    /// bus frame that is not dom0's RAM, Linux's `!pfn_valid` case) or when its bus frame
    /// differs from its physical frame. Behind an IOMMU the bus address is an I/O virtual
    /// address and says nothing about ownership; dom0 then reaches every frame, foreign ones
    /// included, through its own mapping of `phys`, so the whole range goes to the kernel's
    /// hook (and a range without `phys` cannot be maintained).
    fn maintain(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        m: Maintenance,
    ) -> Result<(), PlatformError> {
        let Ok(len) = u64::try_from(len) else {
            return Err(PlatformError::Unsupported {
                what: "a sync longer than 2^64 bytes",
            });
        };
        if len == 0 {
            return Ok(());
        }
        const WRAPS: PlatformError = PlatformError::Unsupported {
            what: "a sync range that wraps past the end of the address space",
        };
        if phys.is_some_and(|p| p.checked_last(len).is_none()) {
            return Err(WRAPS);
        }
        if dev.behind_iommu {
            return match phys {
                Some(p) => self.maintain_local(p, len, m.local),
                None => Err(PlatformError::Unsupported {
                    what: "cache maintenance by I/O virtual address alone behind an IOMMU",
                }),
            };
        }
        if bus.checked_last(len).is_none() {
            return Err(WRAPS);
        }
        if phys.is_some_and(|p| p.frame_offset() != bus.frame_offset()) {
            return Err(PlatformError::Unsupported {
                what: "a sync whose physical and bus addresses differ in frame offset",
            });
        }
        // `phys` and `bus` have the same offset in their frame, so the frames of `phys + i`
        // and `bus + i` are a constant distance apart: either every frame of the range is
        // local (the same number) and goes to the kernel's cache hook in one call, whatever
        // its length, or none is and each is flushed by bus address.
        if let Some(p) = phys.filter(|p| p.frame().as_u64() == bus.frame().as_u64()) {
            return self.maintain_local(p, len, m.local);
        }
        let mut done = 0u64;
        while done < len {
            // Cannot overflow: checked_last above bounds bus + len.
            let b = BusAddr::new(bus.as_u64() + done);
            let chunk = (len - done).min(XEN_PAGE_SIZE - b.frame_offset());
            self.flush_foreign(b, chunk, m.foreign)?;
            done += chunk;
        }
        Ok(())
    }

    /// Hands a run of local bytes to the kernel's cache hook.
    fn maintain_local(&self, phys: PhysAddr, len: u64, op: LocalOp) -> Result<(), PlatformError> {
        if !C::AVAILABLE {
            return Err(PlatformError::Unsupported {
                what: "cache maintenance of local pages with NoCacheOps",
            });
        }
        // The run is part of a range whose length came in as a usize.
        let len = usize::try_from(len).map_err(|_| PlatformError::Unsupported {
            what: "a cache-maintenance run longer than usize",
        })?;
        op.run(&self.cache, phys, len);
        Ok(())
    }

    /// Checks what both contiguous-region hooks need, and returns the region's size in bytes.
    fn check_region(&self, phys: PhysAddr, order: u32) -> Result<u64, PlatformError> {
        if !self.config.mapping.is_direct() {
            return Err(PlatformError::Unsupported {
                what: "contiguous regions in a domain that is not direct-mapped",
            });
        }
        if order > MAX_CONTIG_ORDER {
            return Err(PlatformError::OrderTooLarge {
                order,
                max: MAX_CONTIG_ORDER,
            });
        }
        let size = XEN_PAGE_SIZE << order;
        if !phys.is_aligned(size) {
            return Err(PlatformError::Misaligned {
                addr: phys,
                align: size,
            });
        }
        Ok(size)
    }

    /// Zeroes a region the caller owns.
    ///
    /// # Safety
    ///
    /// The caller owns `[phys, phys + size)` exclusively and `M` reaches it.
    unsafe fn zero(&self, phys: PhysAddr, size: u64) -> Result<(), PlatformError> {
        let len = usize::try_from(size).map_err(|_| PlatformError::Unsupported {
            what: "a region larger than the address space",
        })?;
        // SAFETY: the caller owns the region exclusively and `M` reaches it.
        unsafe { self.mem.fill(phys, 0, len) };
        Ok(())
    }
}

// SAFETY:
// - pfn_to_bfn returns the identity for own frames of a direct-mapped domain (Xen's 1:1
//   mapping, which the unsafe constructors make the kernel vouch for), the recorded machine
//   frame for foreign frames (whose correctness the unsafe table mutators make the kernel
//   promise), and nothing when the domain is not direct-mapped;
// - bfn_to_local_pfn answers only frames whose translation is that very bus frame and that
//   are not in the foreign table;
// - create_contiguous_region returns the identity of a 1:1 region of own (non-foreign)
//   frames, which is bus-contiguous, after checking it lies below the limit;
// - every method is callable concurrently: shared state is the foreign table (locked) and
//   immutable configuration; `H`, `C` and `M` are `Sync`.
unsafe impl<H, C, M, S> Platform for Arm64Platform<'_, H, C, M, S>
where
    H: Hypercall + Sync + ?Sized,
    C: CacheOps,
    M: PhysMemory + ?Sized,
    S: EntryStorage + Send + Sync,
{
    fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn> {
        if !self.config.mapping.is_direct() {
            return None;
        }
        match self.table.lookup(pfn) {
            // The mutant of `cargo xtask xen-qemu mutants`: a foreign page's bus frame is
            // one past the frame Xen granted.
            #[cfg(swiotlb_mutant = "foreign_off_by_one")]
            Some(mfn) => Bfn::try_new(mfn.as_u64() + 1),
            #[cfg(not(swiotlb_mutant = "foreign_off_by_one"))]
            Some(mfn) => Some(mfn),
            // 1:1: the bus frame of an own frame is the same number.
            None => Bfn::try_new(pfn.as_u64()),
        }
    }

    /// One answer per run: a foreign frame's run ends with its foreign-table entry, an own
    /// frame's run is 1:1 up to the next entry (a binary search), so a range of any size
    /// costs the number of entries it meets, not of frames.
    fn contiguous_run(&self, pfn: Pfn, max_frames: u64) -> Option<(Bfn, u64)> {
        let bfn = self.pfn_to_bfn(pfn)?;
        // Frames up to the largest frame number, and at least the one asked for.
        let room = Pfn::MAX.as_u64() - pfn.as_u64() + 1;
        let max = max_frames.clamp(1, room);
        let run = match self.table.entry_containing(pfn) {
            // Cannot underflow: the entry contains `pfn`.
            Some(e) => e.pfn().as_u64() + e.nr_pages() - pfn.as_u64(),
            None => match self.table.first_overlap(pfn, max) {
                Some(e) => e.pfn().as_u64() - pfn.as_u64(),
                None => max,
            },
        };
        Some((bfn, run.clamp(1, max)))
    }

    /// The identity, as Linux's `bfn_to_local_pfn` on Arm, except that a frame which holds a
    /// foreign page in dom0 (and so translates elsewhere) is not answered. Like Linux, this
    /// does not know which frames are RAM: a foreign machine frame outside dom0's memory comes
    /// back as a frame number dom0 does not have, and the caller decides by comparing with
    /// its own ranges (Linux's `pfn_valid`; the DMA engine's pool-range check).
    fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> {
        if !self.config.mapping.is_direct() {
            return None;
        }
        let pfn = Pfn::try_new(bfn.as_u64())?;
        match self.table.lookup(pfn) {
            Some(_) => None,
            None => Some(pfn),
        }
    }

    /// One answer per run, as [`contiguous_run`](Platform::contiguous_run): the frame
    /// numbers of a foreign-table entry do not translate back (the run ends with the entry),
    /// every other frame translates back to itself up to the next entry (a binary search).
    fn local_run(&self, bfn: Bfn, max_frames: u64) -> (Option<Pfn>, u64) {
        // Frames up to the largest frame number, and at least the one asked for.
        let room = Bfn::MAX.as_u64() - bfn.as_u64() + 1;
        let max = max_frames.clamp(1, room);
        if !self.config.mapping.is_direct() {
            return (None, max);
        }
        // Pfn and Bfn share their range.
        let pfn = Pfn::new(bfn.as_u64());
        match self.table.entry_containing(pfn) {
            // Cannot underflow: the entry contains `pfn`.
            Some(e) => (
                None,
                (e.pfn().as_u64() + e.nr_pages() - pfn.as_u64()).clamp(1, max),
            ),
            None => {
                let run = self
                    .table
                    .first_overlap(pfn, max)
                    .map_or(max, |e| e.pfn().as_u64() - pfn.as_u64());
                (Some(pfn), run.clamp(1, max))
            }
        }
    }

    /// Linux's `xen_arch_need_swiotlb`: a foreign page (its bus frame differs from its
    /// physical frame), a non-coherent device, and no `GNTTABOP_cache_flush` to maintain the
    /// page's cache. Only the first frame is checked; contiguity is checked separately.
    fn needs_bounce(&self, dev: &Device, phys: PhysAddr, bus: BusAddr) -> bool {
        !self.config.cache_flush
            && !dev.coherent
            && !dev.behind_iommu
            && phys.frame().as_u64() != bus.frame().as_u64()
    }

    fn sync_for_device(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        if dev.coherent {
            return Ok(());
        }
        self.maintain(dev, phys, bus, len, cache::for_device(dir))
    }

    fn sync_for_cpu(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        if dev.coherent {
            return Ok(());
        }
        match cache::for_cpu(dir) {
            Some(m) => self.maintain(dev, phys, bus, len, m),
            None => Ok(()),
        }
    }

    /// As [`sync_for_device`](Platform::sync_for_device), with a foreign page's
    /// `GNTTAB_CACHE_INVAL` made `GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL`: nothing is
    /// discarded.
    fn sync_for_device_preserving(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        if dev.coherent {
            return Ok(());
        }
        self.maintain(dev, phys, bus, len, cache::for_device(dir).preserving())
    }

    /// As [`sync_for_cpu`](Platform::sync_for_cpu), with clean and invalidate instead of
    /// invalidate: local frames through [`CacheOps::clean_invalidate`], foreign ones with
    /// `GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL`. Nothing is discarded.
    fn sync_for_cpu_preserving(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        if dev.coherent {
            return Ok(());
        }
        match cache::for_cpu(dir) {
            Some(m) => self.maintain(dev, phys, bus, len, m.preserving()),
            None => Ok(()),
        }
    }

    /// The 1:1 identity: checks the region (direct-mapped domain, order, alignment, below
    /// `2^address_bits`, no foreign frame), zeroes it and returns `phys` as the bus address.
    /// Nothing is exchanged: `XENMEM_exchange` does not exist on arm64.
    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, PlatformError> {
        let size = self.check_region(phys, order)?;
        // Cannot fail: phys is aligned to size, a power of two no larger than 2^63.
        let last = phys.checked_last(size).ok_or(PlatformError::Misaligned {
            addr: phys,
            align: size,
        })?;
        let needed = u64::BITS - last.as_u64().leading_zeros();
        if address_bits < needed.max(1) || address_bits > u64::BITS {
            return Err(PlatformError::AddressBits {
                bits: address_bits,
                min: needed.max(1),
                max: u64::BITS,
            });
        }
        if self.table.first_overlap(phys.frame(), 1 << order).is_some() {
            return Err(PlatformError::Unsupported {
                what: "a contiguous region over grant-mapped (foreign) frames",
            });
        }
        // SAFETY: the caller owns the region exclusively (this function's contract), and the
        // constructor's contract makes `M` reach it.
        unsafe { self.zero(phys, size)? };
        // 1:1: the bus address of own memory is its physical address.
        Ok(BusAddr::new(phys.as_u64()))
    }

    /// Nothing to give back for an identity region: checks it as
    /// [`create_contiguous_region`](Self::create_contiguous_region) does and zeroes it.
    unsafe fn destroy_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
    ) -> Result<(), PlatformError> {
        let size = self.check_region(phys, order)?;
        // SAFETY: as in create_contiguous_region.
        unsafe { self.zero(phys, size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoCacheOps;
    use crate::foreign::BoundedForeignTable;
    use crate::testutil::TableTestExt;
    use std::sync::Mutex;
    use std::vec::Vec;
    use swiotlb_core::DmaMask;
    use xen_abi::{
        GNTTAB_CACHE_CLEAN, GNTTAB_CACHE_INVAL, GNTTABOP_CACHE_FLUSH, HYPERVISOR_GRANT_TABLE_OP,
        HYPERVISOR_XEN_VERSION, XENVER_GET_FEATURES,
    };

    /// A recorded `GNTTABOP_cache_flush` request: (dev_bus_addr, offset, length, op).
    type Flush = (u64, u16, u16, u32);

    /// Answers XENVER_get_features and GNTTABOP_cache_flush, recording every flush.
    struct FakeXen {
        features: Result<u32, i64>,
        flush_ret: i64,
        flushes: Mutex<Vec<Flush>>,
    }

    impl FakeXen {
        fn new(features: u32, flush_ret: i64) -> Self {
            Self {
                features: Ok(features),
                flush_ret,
                flushes: Mutex::new(Vec::new()),
            }
        }
        fn flushes(&self) -> Vec<Flush> {
            core::mem::take(&mut *self.flushes.lock().unwrap())
        }
    }

    // SAFETY: reads and writes only the one structure each supported call points at.
    unsafe impl Hypercall for FakeXen {
        unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
            // CAST: the test host is 64-bit.
            let addr = args[1] as usize;
            match (op, args[0]) {
                (HYPERVISOR_XEN_VERSION, cmd) if cmd == u64::from(XENVER_GET_FEATURES) => {
                    let p = core::ptr::with_exposed_provenance_mut::<[u32; 2]>(addr);
                    // SAFETY: the code under test passes a live xen_feature_info.
                    let info = unsafe { &mut *p };
                    assert_eq!(info[0], 0, "only submap 0 is asked for");
                    match self.features {
                        Ok(f) => {
                            info[1] = f;
                            0
                        }
                        Err(e) => e,
                    }
                }
                (HYPERVISOR_GRANT_TABLE_OP, cmd) if cmd == u64::from(GNTTABOP_CACHE_FLUSH) => {
                    assert_eq!(args[2], 1, "one request per call");
                    let p = core::ptr::with_exposed_provenance::<GnttabCacheFlush>(addr);
                    // SAFETY: the code under test passes a live request.
                    let req = unsafe { *p };
                    // SAFETY: every bit pattern is a valid u64.
                    let a = unsafe { req.a.dev_bus_addr };
                    self.flushes
                        .lock()
                        .unwrap()
                        .push((a, req.offset, req.length, req.op));
                    self.flush_ret
                }
                _ => panic!("unexpected hypercall {op} {args:?}"),
            }
        }
    }

    /// A local cache operation seen by the kernel hook.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Clean(u64, usize),
        Inval(u64, usize),
        CleanInval(u64, usize),
    }

    #[derive(Default)]
    struct RecordingCache(Mutex<Vec<Seen>>);

    impl RecordingCache {
        fn take(&self) -> Vec<Seen> {
            core::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl CacheOps for &RecordingCache {
        fn clean(&self, phys: PhysAddr, len: usize) {
            self.0.lock().unwrap().push(Seen::Clean(phys.as_u64(), len));
        }
        fn invalidate(&self, phys: PhysAddr, len: usize) {
            self.0.lock().unwrap().push(Seen::Inval(phys.as_u64(), len));
        }
        fn clean_invalidate(&self, phys: PhysAddr, len: usize) {
            self.0
                .lock()
                .unwrap()
                .push(Seen::CleanInval(phys.as_u64(), len));
        }
    }

    /// Records fills instead of touching memory.
    #[derive(Default)]
    struct FakeMem(Mutex<Vec<(u64, u8, usize)>>);

    // SAFETY: touches no memory at all.
    unsafe impl PhysMemory for FakeMem {
        unsafe fn copy(&self, _dst: PhysAddr, _src: PhysAddr, _len: usize) {
            panic!("the platform never copies");
        }
        unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
            self.0.lock().unwrap().push((dst.as_u64(), byte, len));
        }
    }

    /// [`Arm64Platform::new`] over the fakes.
    fn fake_platform<'a, C: CacheOps, S: EntryStorage + Send + Sync>(
        xen: &'a FakeXen,
        table: &'a ForeignTable<S>,
        cache: C,
        mem: &'a FakeMem,
        config: Arm64Config,
    ) -> Arm64Platform<'a, FakeXen, C, FakeMem, S> {
        // SAFETY: no device sees these answers and FakeMem touches no memory.
        unsafe { Arm64Platform::new(xen, table, cache, mem, config) }
    }

    /// [`Arm64Platform::probe`] over the fakes.
    fn fake_probe<'a, C: CacheOps, S: EntryStorage + Send + Sync>(
        xen: &'a FakeXen,
        table: &'a ForeignTable<S>,
        cache: C,
        mem: &'a FakeMem,
        options: ProbeOptions,
    ) -> Result<Arm64Platform<'a, FakeXen, C, FakeMem, S>, Arm64InitError> {
        // SAFETY: as in `fake_platform`.
        unsafe { Arm64Platform::probe(xen, table, cache, mem, options) }
    }

    const DIRECT: u32 = 1 << XENFEAT_DIRECT_MAPPED;
    const ENOSYS: i64 = -38;

    fn noncoherent() -> Device {
        Device::new(DmaMask::FULL).with_coherent(false)
    }

    #[test]
    fn probe_reads_features_and_cache_flush() {
        let opts = ProbeOptions::default();
        let dom0 = ProbeOptions::initial_domain();
        let cases = [
            (DIRECT, 0, opts, DomainMapping::Direct, true),
            (DIRECT, ENOSYS, opts, DomainMapping::Direct, false),
            // Linux counts any answer but ENOSYS as "present".
            (DIRECT, -22, opts, DomainMapping::Direct, true),
            (
                1 << XENFEAT_NOT_DIRECT_MAPPED,
                0,
                dom0,
                DomainMapping::NotDirect,
                true,
            ),
            (0, 0, dom0, DomainMapping::AssumedDirect, true),
            (0, 0, opts, DomainMapping::NotDirect, true),
        ];
        for (features, flush_ret, options, mapping, cache_flush) in cases {
            let xen = FakeXen::new(features, flush_ret);
            let config = Arm64Config::probe(&xen, options).unwrap();
            assert_eq!(config, Arm64Config::new(mapping, cache_flush));
            // The probe is one all-zero request.
            assert_eq!(xen.flushes(), [(0, 0, 0, 0)]);
        }
        let mut xen = FakeXen::new(0, 0);
        xen.features = Err(ENOSYS);
        assert_eq!(
            Arm64Config::probe(&xen, dom0),
            Err(Arm64InitError::Features(XenError::new(
                "XENVER_get_features",
                xen_abi::Errno::ENOSYS
            )))
        );
    }

    #[test]
    fn translation_is_identity_unless_foreign() {
        let xen = FakeXen::new(DIRECT, 0);
        let table = BoundedForeignTable::<8>::new();
        let mem = FakeMem::default();
        let p = fake_probe(&xen, &table, NoCacheOps, &mem, ProbeOptions::default()).unwrap();
        table.ins(Pfn::new(0x48000), Bfn::new(0x7a123), 2).unwrap();
        assert_eq!(p.pfn_to_bfn(Pfn::new(0x60000)), Some(Bfn::new(0x60000)));
        assert_eq!(p.pfn_to_bfn(Pfn::new(0x48001)), Some(Bfn::new(0x7a124)));
        assert_eq!(
            p.bfn_to_local_pfn(Bfn::new(0x60000)),
            Some(Pfn::new(0x60000))
        );
        // Frame 0x48000 holds a foreign page: no bus frame maps back to it as own memory.
        assert_eq!(p.bfn_to_local_pfn(Bfn::new(0x48000)), None);
        assert!(p.is_bus_contiguous(PhysAddr::new(0x4800_0800), 0x1000));
        assert!(!p.is_bus_contiguous(PhysAddr::new(0x47ff_f800), 0x1000));
        assert!(!p.is_bus_contiguous(PhysAddr::new(u64::MAX - 10), 100));

        let not_direct = fake_platform(
            &xen,
            &table,
            NoCacheOps,
            &mem,
            Arm64Config::new(DomainMapping::NotDirect, true),
        );
        assert_eq!(not_direct.pfn_to_bfn(Pfn::new(0x60000)), None);
        assert_eq!(not_direct.bfn_to_local_pfn(Bfn::new(0x60000)), None);
        assert!(!not_direct.is_bus_contiguous(PhysAddr::new(0x6000_0000), 10));
    }

    #[test]
    fn bounce_only_foreign_noncoherent_without_cache_flush() {
        let xen = FakeXen::new(DIRECT, 0);
        let table = BoundedForeignTable::<8>::new();
        let mem = FakeMem::default();
        let local = (PhysAddr::new(0x6000_0010), BusAddr::new(0x6000_0010));
        let foreign = (PhysAddr::new(0x4800_0010), BusAddr::new(0x7a12_3010));
        for cache_flush in [true, false] {
            let config = Arm64Config::new(DomainMapping::Direct, cache_flush);
            let p = fake_platform(&xen, &table, NoCacheOps, &mem, config);
            let nc = noncoherent();
            let coherent = Device::new(DmaMask::FULL);
            assert!(!p.needs_bounce(&nc, local.0, local.1));
            assert!(!p.needs_bounce(&coherent, foreign.0, foreign.1));
            assert!(!p.needs_bounce(&nc.with_iommu(true), foreign.0, foreign.1));
            assert_eq!(p.needs_bounce(&nc, foreign.0, foreign.1), !cache_flush);
        }
    }

    fn platform<'a>(
        xen: &'a FakeXen,
        table: &'a BoundedForeignTable<8>,
        cache: &'a RecordingCache,
        mem: &'a FakeMem,
        cache_flush: bool,
    ) -> Arm64Platform<'a, FakeXen, &'a RecordingCache, FakeMem, ArrayVecStorage> {
        let config = Arm64Config::new(DomainMapping::Direct, cache_flush);
        fake_platform(xen, table, cache, mem, config)
    }

    type ArrayVecStorage = arrayvec::ArrayVec<crate::ForeignEntry, 8>;

    #[test]
    fn foreign_pages_are_flushed_per_frame_with_exact_offsets() {
        let (xen, table, cache, mem) = (
            FakeXen::new(DIRECT, 0),
            BoundedForeignTable::<8>::new(),
            RecordingCache::default(),
            FakeMem::default(),
        );
        table.ins(Pfn::new(0x48000), Bfn::new(0x7a123), 3).unwrap();
        let p = platform(&xen, &table, &cache, &mem, true);
        let dev = noncoherent();
        let phys = PhysAddr::new(0x4800_0800);
        let bus = BusAddr::new(0x7a12_3800);
        // 0x800 bytes of the first frame, a whole frame, 0x800 bytes of the third.
        let expect = |op| {
            [
                (0x7a12_3000, 0x800, 0x800, op),
                (0x7a12_4000, 0, 0x1000, op),
                (0x7a12_5000, 0, 0x800, op),
            ]
        };
        for (dir, op) in [
            (DmaDirection::ToDevice, GNTTAB_CACHE_CLEAN),
            (DmaDirection::Bidirectional, GNTTAB_CACHE_CLEAN),
            (DmaDirection::FromDevice, GNTTAB_CACHE_INVAL),
        ] {
            p.sync_for_device(&dev, Some(phys), bus, 0x2000, dir)
                .unwrap();
            assert_eq!(xen.flushes(), expect(op), "for device, {dir:?}");
        }
        p.sync_for_cpu(&dev, Some(phys), bus, 0x2000, DmaDirection::ToDevice)
            .unwrap();
        assert_eq!(xen.flushes(), []);
        for dir in [DmaDirection::FromDevice, DmaDirection::Bidirectional] {
            p.sync_for_cpu(&dev, Some(phys), bus, 0x2000, dir).unwrap();
            assert_eq!(
                xen.flushes(),
                expect(GNTTAB_CACHE_INVAL),
                "for cpu, {dir:?}"
            );
        }
        // A short range inside one frame.
        p.sync_for_device(
            &dev,
            Some(PhysAddr::new(0x4800_1ffc)),
            BusAddr::new(0x7a12_4ffc),
            4,
            DmaDirection::ToDevice,
        )
        .unwrap();
        assert_eq!(xen.flushes(), [(0x7a12_4000, 0xffc, 4, GNTTAB_CACHE_CLEAN)]);
        assert!(
            cache.take().is_empty(),
            "foreign frames never go to the kernel hook"
        );
    }

    #[test]
    fn unknown_cpu_addresses_are_foreign_and_flushed_by_bus_address_per_frame() {
        let (xen, table, cache, mem) = (
            FakeXen::new(DIRECT, 0),
            BoundedForeignTable::<8>::new(),
            RecordingCache::default(),
            FakeMem::default(),
        );
        // No foreign table entry: `None` alone makes the range foreign, even where the bus
        // frame number is one dom0 could own.
        let p = platform(&xen, &table, &cache, &mem, true);
        let dev = noncoherent();
        let bus = BusAddr::new(0x6000_0f00);
        p.sync_for_device(&dev, None, bus, 0x1200, DmaDirection::ToDevice)
            .unwrap();
        assert_eq!(
            xen.flushes(),
            [
                (0x6000_0000, 0xf00, 0x100, GNTTAB_CACHE_CLEAN),
                (0x6000_1000, 0, 0x1000, GNTTAB_CACHE_CLEAN),
                (0x6000_2000, 0, 0x100, GNTTAB_CACHE_CLEAN),
            ]
        );
        p.sync_for_cpu(&dev, None, bus, 0x10, DmaDirection::FromDevice)
            .unwrap();
        assert_eq!(
            xen.flushes(),
            [(0x6000_0000, 0xf00, 0x10, GNTTAB_CACHE_INVAL)]
        );
        p.sync_for_cpu(&dev, None, bus, 0x10, DmaDirection::ToDevice)
            .unwrap();
        assert_eq!(xen.flushes(), []);
        // The last bus frame of the 64-bit space is a frame like any other.
        let top = BusAddr::new(u64::MAX - 0xf);
        p.sync_for_device(&dev, None, top, 0x10, DmaDirection::ToDevice)
            .unwrap();
        assert_eq!(
            xen.flushes(),
            [(0xffff_ffff_ffff_f000, 0xff0, 0x10, GNTTAB_CACHE_CLEAN)]
        );
        assert!(cache.take().is_empty(), "never the kernel hook");

        let unsupported = |r| matches!(r, Err(PlatformError::Unsupported { .. }));
        let to = DmaDirection::ToDevice;
        // Wrapping, behind an IOMMU (an IOVA alone names no memory), no cache-flush op.
        assert!(unsupported(p.sync_for_device(&dev, None, top, 0x11, to)));
        assert!(unsupported(p.sync_for_device(
            &dev.with_iommu(true),
            None,
            bus,
            0x10,
            to
        )));
        let no_flush = platform(&xen, &table, &cache, &mem, false);
        assert!(unsupported(
            no_flush.sync_for_device(&dev, None, bus, 0x10, to)
        ));
        assert_eq!(xen.flushes(), []);
        // A coherent device needs nothing, known address or not.
        p.sync_for_device(&Device::new(DmaMask::FULL), None, bus, 0x10, to)
            .unwrap();
        assert_eq!(xen.flushes(), []);
    }

    #[test]
    fn local_pages_go_to_the_kernel_hook_in_one_run() {
        let (xen, table, cache, mem) = (
            FakeXen::new(DIRECT, 0),
            BoundedForeignTable::<8>::new(),
            RecordingCache::default(),
            FakeMem::default(),
        );
        let p = platform(&xen, &table, &cache, &mem, true);
        let dev = noncoherent();
        let a = PhysAddr::new(0x6000_0123);
        let b = BusAddr::new(0x6000_0123);
        for dir in [
            DmaDirection::ToDevice,
            DmaDirection::FromDevice,
            DmaDirection::Bidirectional,
        ] {
            p.sync_for_device(&dev, Some(a), b, 0x3000, dir).unwrap();
            assert_eq!(cache.take(), [Seen::Clean(0x6000_0123, 0x3000)]);
        }
        p.sync_for_cpu(&dev, Some(a), b, 0x3000, DmaDirection::ToDevice)
            .unwrap();
        assert_eq!(cache.take(), []);
        p.sync_for_cpu(&dev, Some(a), b, 0x3000, DmaDirection::FromDevice)
            .unwrap();
        assert_eq!(cache.take(), [Seen::Inval(0x6000_0123, 0x3000)]);
        // Behind an IOMMU the bus address is an IOVA: everything is maintained locally.
        let iova = BusAddr::new(0x1000_0123);
        p.sync_for_device(
            &dev.with_iommu(true),
            Some(a),
            iova,
            0x10,
            DmaDirection::ToDevice,
        )
        .unwrap();
        assert_eq!(cache.take(), [Seen::Clean(0x6000_0123, 0x10)]);
        // Coherent devices and empty ranges need nothing.
        p.sync_for_device(
            &Device::new(DmaMask::FULL),
            Some(a),
            b,
            0x10,
            DmaDirection::ToDevice,
        )
        .unwrap();
        p.sync_for_device(&dev, Some(a), b, 0, DmaDirection::ToDevice)
            .unwrap();
        assert_eq!(cache.take(), []);
        assert_eq!(xen.flushes(), []);
    }

    #[test]
    fn preserving_hooks_clean_wherever_the_plain_ones_invalidate() {
        let (xen, table, cache, mem) = (
            FakeXen::new(DIRECT, 0),
            BoundedForeignTable::<8>::new(),
            RecordingCache::default(),
            FakeMem::default(),
        );
        table.ins(Pfn::new(0x48001), Bfn::new(0x7a123), 1).unwrap();
        let p = platform(&xen, &table, &cache, &mem, true);
        let dev = noncoherent();
        let local = (PhysAddr::new(0x6000_0f00), BusAddr::new(0x6000_0f00));
        let foreign = (PhysAddr::new(0x4800_1f00), BusAddr::new(0x7a12_3f00));
        let both = GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL;
        for dir in [DmaDirection::FromDevice, DmaDirection::Bidirectional] {
            for (phys, bus) in [local, foreign] {
                p.sync_for_cpu_preserving(&dev, Some(phys), bus, 0x100, dir)
                    .unwrap();
            }
            assert_eq!(cache.take(), [Seen::CleanInval(0x6000_0f00, 0x100)]);
            assert_eq!(xen.flushes(), [(0x7a12_3000, 0xf00, 0x100, both)]);
        }
        p.sync_for_cpu_preserving(&dev, Some(local.0), local.1, 0x100, DmaDirection::ToDevice)
            .unwrap();
        assert_eq!((cache.take(), xen.flushes()), (Vec::new(), Vec::new()));
        for (phys, bus) in [local, foreign] {
            p.sync_for_device_preserving(&dev, Some(phys), bus, 0x100, DmaDirection::FromDevice)
                .unwrap();
        }
        assert_eq!(cache.take(), [Seen::Clean(0x6000_0f00, 0x100)]);
        assert_eq!(xen.flushes(), [(0x7a12_3000, 0xf00, 0x100, both)]);
        p.sync_for_device_preserving(&dev, None, local.1, 0x10, DmaDirection::ToDevice)
            .unwrap();
        assert_eq!(
            xen.flushes(),
            [(0x6000_0000, 0xf00, 0x10, GNTTAB_CACHE_CLEAN)]
        );
        // Coherent devices need nothing.
        let coherent = Device::new(DmaMask::FULL);
        p.sync_for_cpu_preserving(
            &coherent,
            Some(local.0),
            local.1,
            0x100,
            DmaDirection::FromDevice,
        )
        .unwrap();
        assert_eq!((cache.take(), xen.flushes()), (Vec::new(), Vec::new()));
    }

    #[test]
    fn maintenance_errors_are_reported() {
        let (table, cache, mem) = (
            BoundedForeignTable::<8>::new(),
            RecordingCache::default(),
            FakeMem::default(),
        );
        let dev = noncoherent();
        let phys = PhysAddr::new(0x4800_0000);
        let bus = BusAddr::new(0x7a12_3000);
        let to = DmaDirection::ToDevice;

        let failing = FakeXen::new(DIRECT, -22);
        let p = platform(&failing, &table, &cache, &mem, true);
        assert_eq!(
            p.sync_for_device(&dev, Some(phys), bus, 0x2000, to),
            Err(PlatformError::Hypercall {
                op: "GNTTABOP_cache_flush",
                errno: 22
            })
        );
        assert_eq!(failing.flushes().len(), 1, "stops at the first failure");

        let xen = FakeXen::new(DIRECT, 0);
        let no_flush = platform(&xen, &table, &cache, &mem, false);
        assert!(matches!(
            no_flush.sync_for_device(&dev, Some(phys), bus, 0x10, to),
            Err(PlatformError::Unsupported { .. })
        ));
        assert_eq!(xen.flushes(), []);

        let p = platform(&xen, &table, &cache, &mem, true);
        assert!(matches!(
            p.sync_for_device(&dev, Some(phys), BusAddr::new(0x7a12_3008), 0x10, to),
            Err(PlatformError::Unsupported { .. })
        ));
        assert!(matches!(
            p.sync_for_device(
                &dev,
                Some(PhysAddr::new(u64::MAX - 4)),
                BusAddr::new(u64::MAX - 4),
                16,
                to
            ),
            Err(PlatformError::Unsupported { .. })
        ));

        let none = fake_platform(
            &xen,
            &table,
            NoCacheOps,
            &mem,
            Arm64Config::new(DomainMapping::Direct, true),
        );
        let local = PhysAddr::new(0x6000_0000);
        assert!(matches!(
            none.sync_for_device(&dev, Some(local), BusAddr::new(0x6000_0000), 0x10, to),
            Err(PlatformError::Unsupported { .. })
        ));
        assert_eq!(cache.take(), []);
    }

    #[test]
    fn contiguous_regions_are_the_identity() {
        let (xen, table, cache, mem) = (
            FakeXen::new(DIRECT, 0),
            BoundedForeignTable::<8>::new(),
            RecordingCache::default(),
            FakeMem::default(),
        );
        table.ins(Pfn::new(0x48002), Bfn::new(0x7a123), 1).unwrap();
        let p = platform(&xen, &table, &cache, &mem, true);
        let create = |p: &dyn Platform, phys: PhysAddr, order, bits| {
            // SAFETY: FakeMem touches no memory, so the regions need no owner.
            unsafe { p.create_contiguous_region(phys, order, bits) }
        };
        let bus = create(&p, PhysAddr::new(0x6004_0000), 6, 32);
        assert_eq!(
            bus,
            Ok(BusAddr::new(0x6004_0000)),
            "the DMA address is always set"
        );
        assert_eq!(
            mem.0.lock().unwrap().pop(),
            Some((0x6004_0000, 0, 0x4_0000))
        );
        assert_eq!(
            create(&p, PhysAddr::new(0x6000_1000), 6, 32),
            Err(PlatformError::Misaligned {
                addr: PhysAddr::new(0x6000_1000),
                align: 0x4_0000
            })
        );
        assert_eq!(
            create(&p, PhysAddr::new(0x1_0000_0000), 0, 32),
            Err(PlatformError::AddressBits {
                bits: 32,
                min: 33,
                max: 64
            })
        );
        assert_eq!(
            create(&p, PhysAddr::new(0), 0, 65),
            Err(PlatformError::AddressBits {
                bits: 65,
                min: 12,
                max: 64
            })
        );
        assert_eq!(
            create(&p, PhysAddr::ZERO, MAX_CONTIG_ORDER + 1, 64),
            Err(PlatformError::OrderTooLarge { order: 52, max: 51 })
        );
        // The region 0x48000..0x48004 holds a foreign frame.
        assert!(matches!(
            create(&p, PhysAddr::new(0x4800_0000), 2, 64),
            Err(PlatformError::Unsupported { .. })
        ));
        assert_eq!(
            {
                // SAFETY: as for `create`.
                unsafe { p.destroy_contiguous_region(PhysAddr::new(0x6004_0000), 6) }
            },
            Ok(())
        );
        assert_eq!(
            mem.0.lock().unwrap().pop(),
            Some((0x6004_0000, 0, 0x4_0000))
        );
        assert!(
            mem.0.lock().unwrap().is_empty(),
            "failed calls zero nothing"
        );

        let not_direct = fake_platform(
            &xen,
            &table,
            &cache,
            &mem,
            Arm64Config::new(DomainMapping::NotDirect, true),
        );
        assert!(matches!(
            create(&not_direct, PhysAddr::new(0x6004_0000), 0, 64),
            Err(PlatformError::Unsupported { .. })
        ));
    }
}
