//! Streaming mappings of a caller's buffer given by pointer: [`DmaEngine::map_buffer`] and
//! [`DmaEngine::unmap_buffer`].
//!
//! [`map_page`](DmaEngine::map_page) copies a bounced mapping through the pool's
//! [`PhysMemory`](crate::PhysMemory), whose pointers are not derived from the caller's. That is fine for memory
//! the kernel reaches only through its linear map, but not for a buffer the caller holds a
//! Rust reference to (virtio-drivers keeps the `&mut [u8]` it shares): a copy through an
//! unrelated pointer invalidates that reference under Rust's aliasing rules. These entry
//! points take the buffer as a `NonNull<[u8]>` and make every copy of its bytes through that
//! pointer ([`BufferMemory`]), so the caller's references stay valid, and they accept a
//! buffer with no known physical address (a stack outside the linear map, or host memory in
//! a simulator), which is always bounced.
//!
//! A bounced buffer is a streaming mapping of the pool like any other
//! ([`BouncePool::map_buffer`](crate::pool::BouncePool::map_buffer)): the same slot search,
//! alignment, `min_align_mask` offset keeping, statistics and always-copy-in as
//! `map_page`, with the copies made through the buffer's pointer. The pool records no
//! physical original for it, so a buffer mapping is unmapped with
//! [`unmap_buffer`](DmaEngine::unmap_buffer), never with
//! [`unmap_page`](DmaEngine::unmap_page) or synced with the `sync_single_*` calls (which
//! refuse it).

use core::ptr::NonNull;

use super::error::{BounceReason, DmaError};
use super::grow::{Bouncer, Request};
use super::pages::PageAllocator;
use super::stats::bump;
use super::{CacheOp, DmaEngine, Found};
use crate::addr::{BusAddr, PhysAddr};
use crate::dma::{Device, DmaAttrs, DmaDirection};
use crate::error::Error as PoolError;
use crate::hooks::{BufferMemory, Platform};
use crate::pool::{BouncePool, Slot};

impl<P, M, S, A, G> DmaEngine<P, M, S, A, G>
where
    P: Platform,
    M: BufferMemory,
    S: AsRef<[Slot]>,
    A: PageAllocator,
    G: super::PoolGrowth<M>,
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
    ///
    /// # Examples
    ///
    /// A buffer the caller holds as a Rust value, with no physical address the engine could
    /// use (host memory here; a stack buffer outside the linear map in a kernel): bounced, every
    /// copy made through the caller's pointer.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use core::ptr::NonNull;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// let mut packet = *b"a packet";
    /// let buf = NonNull::from(&mut packet[..]);
    /// // SAFETY: `packet` stays valid and is written by nobody until the unmap.
    /// let bus = unsafe { engine.map_buffer(&dev, buf, None, dir, none) }?;
    /// assert!(m.bounced(bus));
    /// assert_eq!(m.device_read(bus, 8), b"a packet");
    /// // SAFETY: the mapping of `buf` made above; nobody else touches `packet` meanwhile.
    /// unsafe { engine.unmap_buffer(&dev, bus, buf, dir, none) }?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
            .inspect_err(|_| bump(&self.counters().map_failures))
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
        let req = Request {
            dev,
            size,
            dir,
            attrs,
            reason,
        };
        let orig = BufferOriginal { buf, phys };
        let Some(pool) = &self.pool else {
            return Err(orig.error(&req, None));
        };
        // The copy-in happens for every direction, as for `map_page` (CVE-2022-0854).
        // SAFETY: the caller vouches for `buf` for reads and for no other access during this
        // call; it is the caller's memory, not the pool's.
        let tlb = match unsafe { orig.take(pool, &req, (self.cpu_hint)()) } {
            Ok(tlb) => tlb,
            // A full pool may grow, as for `map_page`.
            // SAFETY: the caller's promise, passed on.
            Err(first) => return unsafe { self.map_grown(&req, &orig, first) },
        };
        self.finish_in(pool, &req, &orig, tlb)
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
    /// (the bus address is in the pool but does not start a live buffer mapping: a double
    /// unmap, a mapping of `map_page`, an address inside a mapping; nothing was copied or
    /// freed), [`DmaError::Pool`] (another refusal of the pool, likewise), and
    /// [`DmaError::CacheMaintenance`], after which a bounced buffer is still copied back and
    /// freed.
    ///
    /// # Safety
    ///
    /// `bus`, `buf.len()` and `dir` must be those of a live mapping made by
    /// [`map_buffer`](Self::map_buffer), and `buf` must point at that buffer, valid for
    /// writes and not accessed by anyone else during this call.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use core::ptr::NonNull;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::FromDevice, DmaAttrs::empty());
    /// let mut reply = [0u8; 5];
    /// let buf = NonNull::from(&mut reply[..]);
    /// // SAFETY: `reply` stays valid and is touched by nobody until the unmap.
    /// let bus = unsafe { engine.map_buffer(&dev, buf, None, dir, none) }?;
    /// m.device_write(bus, b"reply");
    /// // SAFETY: the mapping of `buf` made above; nobody else touches `reply` meanwhile.
    /// unsafe { engine.unmap_buffer(&dev, bus, buf, dir, none) }?;
    /// assert_eq!(&reply, b"reply");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
            .inspect_err(|_| bump(&self.counters().unmap_sync_failures))
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
        match self.find_bounce(dev, bus) {
            // SAFETY: the caller's promise, passed on.
            Found::First(pool, tlb) => unsafe {
                self.unmap_buffer_in(pool, dev, bus, tlb, buf, dir, attrs, cache)
            },
            Found::Grown(inside, tlb) => {
                // SAFETY: the caller's promise, passed on.
                let r = unsafe {
                    self.unmap_buffer_in(inside.pool(), dev, bus, tlb, buf, dir, attrs, cache)
                };
                self.unmapped_from(inside);
                r
            }
            Found::No => {
                if cache {
                    self.cache_direct(dev, bus, size, dir, CacheOp::ForCpu)?;
                }
                bump(&self.counters().direct_unmaps);
                Ok(())
            }
        }
    }

    /// The unmap of a buffer bounce at `tlb` in `pool` (the first or a grown one).
    ///
    /// # Safety
    ///
    /// As [`unmap_buffer`](Self::unmap_buffer).
    #[allow(clippy::too_many_arguments)]
    unsafe fn unmap_buffer_in<S2: AsRef<[Slot]>>(
        &self,
        pool: &BouncePool<M, S2>,
        dev: &Device,
        bus: BusAddr,
        tlb: PhysAddr,
        buf: NonNull<[u8]>,
        dir: DmaDirection,
        attrs: DmaAttrs,
        cache: bool,
    ) -> Result<(), DmaError> {
        let size = buf.len();
        let pool_err = |source| match source {
            PoolError::NotMapped { .. } => DmaError::BufferNotMapped { bus, tlb, size },
            source => DmaError::Pool { bus, tlb, source },
        };
        // The pool finds and claims the mapping first; the maintenance then covers the
        // mapping's own bytes only, however long `buf` is.
        // SAFETY: `buf` is valid for writes and accessed by nobody else during this call (the
        // caller's promise); the pool checks that `tlb` starts a live buffer mapping.
        let cache_result = unsafe {
            if cache {
                pool.unmap_buffer_maintained(dev, tlb, buf, dir, attrs, |t, len| {
                    self.cache(dev, Some(t), bus, len, dir, CacheOp::ForCpu)
                })
            } else {
                pool.unmap_buffer(dev, tlb, buf, dir, attrs).map(Ok)
            }
        }
        .map_err(pool_err)?;
        bump(&self.counters().bounced_unmaps);
        cache_result
    }
}

/// The original of a `map_buffer`: the caller's pointer, and its physical address if known.
struct BufferOriginal {
    buf: NonNull<[u8]>,
    phys: Option<PhysAddr>,
}

impl BufferOriginal {
    /// The error of a refused bounce (`None`: there is no pool).
    fn error(&self, req: &Request<'_>, source: Option<PoolError>) -> DmaError {
        let (size, reason) = (req.size, req.reason);
        match (self.phys, source) {
            (Some(phys), Some(source)) => DmaError::Bounce {
                phys,
                size,
                reason,
                source,
            },
            (Some(phys), None) => DmaError::NoPool { phys, size, reason },
            (None, source) => DmaError::BufferBounce { size, source },
        }
    }
}

impl<M: BufferMemory> Bouncer<M> for BufferOriginal {
    unsafe fn take<S: AsRef<[Slot]>>(
        &self,
        pool: &BouncePool<M, S>,
        req: &Request<'_>,
        cpu: usize,
    ) -> Result<PhysAddr, PoolError> {
        // SAFETY: the caller's promise (`map_buffer`'s), passed on.
        unsafe { pool.map_buffer(req.dev, self.buf, self.phys, 0, cpu) }
    }

    fn undo<S: AsRef<[Slot]>>(&self, pool: &BouncePool<M, S>, req: &Request<'_>, tlb: PhysAddr) {
        let attrs = req.attrs | DmaAttrs::SKIP_CPU_SYNC;
        // SAFETY: the mapping was just made by `take` of this buffer; nothing is written
        // through `buf` (SKIP_CPU_SYNC).
        let _ = unsafe { pool.unmap_buffer(req.dev, tlb, self.buf, req.dir, attrs) };
    }

    fn refused(&self, req: &Request<'_>, source: PoolError) -> DmaError {
        self.error(req, Some(source))
    }
}
