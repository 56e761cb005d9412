//! Streaming mappings of a caller's buffer given by pointer: [`DmaEngine::map_buffer`] and
//! [`DmaEngine::unmap_buffer`].
//!
//! [`map_page`](DmaEngine::map_page) copies a bounced mapping through the pool's
//! [`PhysMemory`], whose pointers are not derived from the caller's. That is fine for memory
//! the kernel reaches only through its linear map, but not for a buffer the caller holds a
//! Rust reference to (virtio-drivers keeps the `&mut [u8]` it shares): a copy through an
//! unrelated pointer invalidates that reference under Rust's aliasing rules. These entry
//! points take the buffer as a `NonNull<[u8]>` and make every copy of its bytes through that
//! pointer ([`BufferMemory`]), so the caller's references stay valid, and they accept a
//! buffer with no known physical address (a stack outside the linear map, or host memory in
//! a simulator), which is always bounced.
//!
//! A bounced buffer takes a coherent-style allocation of the pool ([`BouncePool::alloc`]:
//! no original is recorded, since the engine never copies through a physical address for
//! it), aligned to its size rounded up to a power-of-two number of 4 KiB pages. So a buffer
//! mapping is unmapped with [`unmap_buffer`](DmaEngine::unmap_buffer), never with
//! [`unmap_page`](DmaEngine::unmap_page) (which refuses it), and a device's
//! `min_align_mask` is not kept for it.

use core::ptr::NonNull;

use super::error::{BounceReason, DmaError};
use super::pages::PageAllocator;
use super::stats::bump;
use super::{CacheOp, DmaEngine};
use crate::addr::{BusAddr, PhysAddr};
use crate::dma::{Device, DmaAttrs, DmaDirection};
use crate::hooks::{PhysMemory, Platform};
use crate::linear::LinearMap;
use crate::pool::{BouncePool, IO_TLB_SHIFT, Slot};

/// A [`PhysMemory`] that also copies between physical memory and a caller's buffer given
/// by pointer, what [`DmaEngine::map_buffer`] and [`DmaEngine::unmap_buffer`] need of the
/// pool's memory.
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

// SAFETY: both copies are one `copy_nonoverlapping` between the caller's pointer and a
// pointer derived from `base` at the range's offset (inside the region by the contract).
unsafe impl BufferMemory for LinearMap {
    unsafe fn copy_from_buffer(&self, dst: PhysAddr, src: NonNull<u8>, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: the contract makes `dst` reachable (inside the region), unreferenced and
        // disjoint from `src`, which is valid for reads.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr(dst, len), len) }
    }

    unsafe fn copy_to_buffer(&self, dst: NonNull<u8>, src: PhysAddr, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: as above, the other way.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(src, len), dst.as_ptr(), len) }
    }
}

impl<P, M, S, A> DmaEngine<P, M, S, A>
where
    P: Platform,
    M: BufferMemory,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    /// [`map_page`](Self::map_page) for a buffer the caller reaches at `buf` (and, if
    /// known, the CPU at physical address `phys`): returns the bus address the device must
    /// use for `buf.len()` bytes.
    ///
    /// With a physical address the decision is the one of `map_page` (direct when the
    /// device reaches the buffer as it is). Without one (`phys` is `None`) the buffer is
    /// always bounced ([`BounceReason::Untranslatable`]). A bounce copies the whole buffer
    /// in through `buf`, whatever the direction. [`DmaAttrs::MMIO`] and a device behind an
    /// IOMMU are never bounced, as for `map_page`: without a physical address they fail
    /// with [`DmaError::Unreachable`].
    ///
    /// # Errors
    ///
    /// As [`map_page`](Self::map_page); without a physical address
    /// [`DmaError::BufferBounce`] instead of [`DmaError::NoPool`] and [`DmaError::Bounce`].
    /// Nothing stays mapped after an error.
    ///
    /// # Safety
    ///
    /// - `buf` must be valid for reads of `buf.len()` bytes, and for writes too if `dir`
    ///   lets the device write, until the mapping is unmapped.
    /// - `phys`, if given, is the physical address of the first byte of `buf`, and
    ///   `[phys, phys + buf.len())` is memory of the domain that the CPU reaches at `buf`.
    /// - Nobody else accesses the buffer during this call (the engine reads it through
    ///   `buf`), nor during [`unmap_buffer`](Self::unmap_buffer) (which writes it through
    ///   the pointer it is given). In between, the CPU may hold references to it but must
    ///   not write it while the device may read it directly, and must not access it while
    ///   the device may write it.
    pub unsafe fn map_buffer(
        &self,
        dev: &Device,
        buf: NonNull<[u8]>,
        phys: Option<PhysAddr>,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.map_buffer_inner(dev, buf, phys, dir, attrs) }
            .inspect_err(|_| bump(&self.counters.map_failures))
    }

    /// # Safety
    ///
    /// As [`map_buffer`](Self::map_buffer).
    unsafe fn map_buffer_inner(
        &self,
        dev: &Device,
        buf: NonNull<[u8]>,
        phys: Option<PhysAddr>,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        let size = buf.len();
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let reason = match phys {
            Some(phys) => {
                // CAST: usize fits in u64.
                if phys.checked_last(size as u64).is_none() {
                    return Err(DmaError::AddressOverflow { phys, size });
                }
                match self.try_direct(dev, phys, size, dir, attrs)? {
                    Ok(bus) => return Ok(bus),
                    Err(reason) => reason,
                }
            }
            None if attrs.contains(DmaAttrs::MMIO) || dev.behind_iommu => {
                return Err(DmaError::Unreachable {
                    phys: PhysAddr::ZERO,
                    bus: None,
                    size,
                    mask: dev.dma_mask,
                });
            }
            None => BounceReason::Untranslatable,
        };
        let refused = |source| match phys {
            Some(phys) => match source {
                Some(source) => DmaError::Bounce {
                    phys,
                    size,
                    reason,
                    source,
                },
                None => DmaError::NoPool { phys, size, reason },
            },
            None => DmaError::BufferBounce { size, source },
        };
        let Some(pool) = &self.pool else {
            return Err(refused(None));
        };
        let tlb = pool
            .alloc(dev, size, (self.cpu_hint)())
            .map_err(|e| refused(Some(e)))?;
        // The copy-in happens for every direction, as for `map_page` (CVE-2022-0854).
        // SAFETY: the slots were just allocated for this call alone, inside the pool, which
        // its memory reaches; the caller vouches for `buf` for reads and for no other access
        // during this call.
        unsafe { pool.memory().copy_from_buffer(tlb, buf.cast(), size) };
        let cache = !dev.coherent && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC);
        self.finish_bounce(dev, tlb, size, dir, cache, reason)
            .inspect_err(|_| {
                // Just allocated by this call: the free cannot fail.
                let _ = pool.free(dev, tlb);
            })
    }

    /// [`unmap_page`](Self::unmap_page) for a mapping made by
    /// [`map_buffer`](Self::map_buffer): ends the mapping of `buf.len()` bytes at `bus`.
    ///
    /// For a non-coherent device the platform's `sync_for_cpu` runs first (unless
    /// [`DmaAttrs::SKIP_CPU_SYNC`]); then a bounced buffer is copied back through `buf`
    /// (for [`DmaDirection::FromDevice`] and [`DmaDirection::Bidirectional`], unless
    /// `SKIP_CPU_SYNC`) and its slots freed.
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroSize`], [`DmaError::BusOverflow`], [`DmaError::BufferNotMapped`]
    /// (the bus address is in the pool but not in an allocated bounce buffer of that size;
    /// nothing changed), [`DmaError::Pool`] (it is not the start of a buffer mapping: the
    /// copy-back happened, nothing was freed), and [`DmaError::CacheMaintenance`], after
    /// which a bounced buffer is still copied back and freed.
    ///
    /// # Safety
    ///
    /// `bus`, `buf.len()` and `dir` must be those of a live mapping made by
    /// [`map_buffer`](Self::map_buffer), and `buf` must point at that buffer, valid for
    /// writes and not accessed by anyone else during this call.
    pub unsafe fn unmap_buffer(
        &self,
        dev: &Device,
        bus: BusAddr,
        buf: NonNull<[u8]>,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.unmap_buffer_inner(dev, bus, buf, dir, attrs) }
            .inspect_err(|_| bump(&self.counters.unmap_sync_failures))
    }

    /// # Safety
    ///
    /// As [`unmap_buffer`](Self::unmap_buffer).
    unsafe fn unmap_buffer_inner(
        &self,
        dev: &Device,
        bus: BusAddr,
        buf: NonNull<[u8]>,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        let size = buf.len();
        self.check_bus(bus, size)?;
        let cache = !dev.coherent && !attrs.intersects(DmaAttrs::SKIP_CPU_SYNC | DmaAttrs::MMIO);
        let Some((pool, tlb)) = self.bounce_phys(dev, bus) else {
            if cache {
                self.cache_direct(dev, bus, size, dir, CacheOp::ForCpu)?;
            }
            bump(&self.counters.direct_unmaps);
            return Ok(());
        };
        if !buffer_slots_in_use(pool, tlb, size) {
            return Err(DmaError::BufferNotMapped { bus, tlb, size });
        }
        let cache_result = if cache {
            self.cache(dev, Some(tlb), bus, size, dir, CacheOp::ForCpu)
        } else {
            Ok(())
        };
        if dir.from_device() && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) {
            // SAFETY: the slots are allocated (checked above) to this mapping (the caller's
            // promise), inside the pool; `buf` is valid for writes and accessed by nobody
            // else during this call.
            unsafe { pool.memory().copy_to_buffer(buf.cast(), tlb, size) };
        }
        pool.free(dev, tlb)
            .map_err(|source| DmaError::Pool { bus, tlb, source })?;
        bump(&self.counters.bounced_unmaps);
        cache_result
    }
}

/// Whether `[tlb, tlb + size)` starts at a slot boundary, lies in the pool and its first and
/// last slots are allocated: what a bounce buffer of [`DmaEngine::map_buffer`] looks like.
fn buffer_slots_in_use<M: PhysMemory, S: AsRef<[Slot]>>(
    pool: &BouncePool<M, S>,
    tlb: PhysAddr,
    size: usize,
) -> bool {
    let Some(off) = tlb.offset_from(pool.start()) else {
        return false;
    };
    // CAST: usize fits in u64.
    let Some(end) = tlb.checked_add(size as u64) else {
        return false;
    };
    if off & ((1 << IO_TLB_SHIFT) - 1) != 0 || end > pool.end() {
        return false;
    }
    // CAST: offsets inside the pool fit usize (the pool's slot count does).
    let first = (off >> IO_TLB_SHIFT) as usize;
    // CAST: as above; `size > 0` and the range ends inside the pool.
    let last = ((off + (size as u64 - 1)) >> IO_TLB_SHIFT) as usize;
    pool.free_count(first) == Some(0) && pool.free_count(last) == Some(0)
}
