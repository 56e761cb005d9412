//! Coherent allocations: Linux's `xen_swiotlb_alloc_coherent`/`xen_swiotlb_free_coherent`.

use super::DmaEngine;
use super::error::DmaError;
use super::pages::{BlockState, PageAllocator};
use super::stats::bump;
use crate::addr::{BusAddr, PhysAddr, XEN_PAGE_SHIFT, XEN_PAGE_SIZE};
use crate::dma::Device;
use crate::hooks::{PhysMemory, Platform};
use crate::pool::Slot;

/// The largest order [`DmaEngine::alloc_coherent`] asks of the page allocator (a block of
/// `4 KiB << order` bytes must have a 64-bit size).
pub const MAX_COHERENT_ORDER: u32 = 63 - XEN_PAGE_SHIFT;

/// A coherent allocation: memory both the CPU (at [`phys`](Self::phys)) and the device (at
/// [`bus`](Self::bus)) use without syncs.
///
/// The value is the allocation's record: it remembers whether the memory was exchanged
/// (made contiguous) so that [`DmaEngine::free_coherent`] gives the exchange back, and since
/// it is neither `Clone` nor `Copy` it can be freed only once. Dropping it leaks the pages
/// (they stay allocated and, if exchanged, contiguous); give it to `free_coherent`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a coherent allocation must be given back with free_coherent"]
pub struct CoherentAlloc {
    phys: PhysAddr,
    bus: BusAddr,
    size: usize,
    order: u32,
    exchanged: bool,
    /// The block was quarantined by a failed free (the platform damaged it): it is no
    /// allocation any more, and freeing the record again does nothing.
    quarantined: bool,
}

impl CoherentAlloc {
    /// The physical address of the first byte (the CPU's side).
    #[must_use]
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }

    /// The bus address of the first byte (the device's side, Linux's `dma_handle`).
    #[must_use]
    pub fn bus(&self) -> BusAddr {
        self.bus
    }

    /// The size asked for.
    #[must_use]
    pub fn size(&self) -> usize {
        self.size
    }

    /// The order of the block behind it (`4 KiB << order` bytes).
    #[must_use]
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Whether the block was made contiguous with `create_contiguous_region` (and will be
    /// given back with `destroy_contiguous_region`).
    #[must_use]
    pub fn is_exchanged(&self) -> bool {
        self.exchanged
    }

    /// Whether a failed [`DmaEngine::free_coherent`] quarantined the block
    /// ([`DmaError::CoherentDamaged`]): the record then stands for no memory and can only be
    /// dropped.
    #[must_use]
    pub fn is_quarantined(&self) -> bool {
        self.quarantined
    }
}

/// A failed [`DmaEngine::free_coherent`]: the error and the allocation, handed back so that
/// nothing is leaked unknowingly (the caller may retry or keep it). After
/// [`DmaError::CoherentDamaged`] the block is quarantined
/// ([`CoherentAlloc::is_quarantined`]) and the record is only dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("freeing the coherent allocation at {} failed: {source}", alloc.phys)]
pub struct CoherentFreeError {
    /// The allocation: still allocated and still contiguous, unless it is quarantined.
    pub alloc: CoherentAlloc,
    /// Why the platform refused to give the region back.
    #[source]
    pub source: DmaError,
}

/// Linux's `get_order`: the smallest order whose block holds `size` bytes (`size > 0`).
fn get_order(size: usize) -> Option<u32> {
    // CAST: usize fits in u64.
    let frames = (size as u64).div_ceil(XEN_PAGE_SIZE);
    let order = frames.next_power_of_two().trailing_zeros();
    (order <= MAX_COHERENT_ORDER && frames.checked_next_power_of_two().is_some()).then_some(order)
}

impl<P, M, S, A, G> DmaEngine<P, M, S, A, G>
where
    P: Platform,
    M: PhysMemory,
    S: AsRef<[Slot]>,
    A: PageAllocator,
    G: super::PoolGrowth<M>,
{
    /// Linux's `xen_swiotlb_alloc_coherent`: allocates `size` bytes (rounded up to a
    /// power-of-two number of 4 KiB pages) that `dev` reaches without bouncing, zeroed.
    ///
    /// The pages come from the [`PageAllocator`]. If they are not bus-contiguous, not
    /// below the device's coherent mask, or naturally aligned physically but not on the
    /// bus (Linux's `range_requires_alignment`), they are made contiguous with
    /// [`Platform::create_contiguous_region`] below `2^coherent_mask.bits()`, which the
    /// returned [`CoherentAlloc`] records. On arm64 (1:1) and for devices behind an IOMMU
    /// they are used as they are.
    ///
    /// The order is bounded only by the platform: the x86 PV platform makes any order Xen
    /// allows the domain contiguous with one exchange (Xen's `memop-max-order`: 18, 1 GiB,
    /// for a dom0 with x86's defaults, 9 for a domU), where Linux's
    /// `xen_create_contiguous_region` refused every order above 9 (`MAX_CONTIG_ORDER`) until
    /// 2025.
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroSize`], [`DmaError::CoherentTooLarge`],
    /// [`DmaError::CoherentNoMemory`], [`DmaError::CoherentMisaligned`],
    /// [`DmaError::CoherentContiguous`], [`DmaError::CoherentUnreachable`]: the pages are
    /// given back. A block of an order the platform cannot make contiguous in one piece is
    /// `CoherentContiguous` naming the largest order it can: with
    /// [`PlatformError::OrderRefused`](crate::PlatformError::OrderRefused) when the
    /// hypervisor refused it (x86 PV: `XENMEM_exchange` with `EPERM`, above the domain's
    /// `memop-max-order`), which the platform remembers, and with
    /// [`PlatformError::OrderTooLarge`](crate::PlatformError::OrderTooLarge), without a
    /// hypercall, for every later allocation of that order. [`DmaError::CoherentDamaged`]: the platform left the block damaged
    /// (pages without a frame, [`PlatformError::RegionDamaged`](crate::PlatformError)), so
    /// it is handed to [`PageAllocator::quarantine`] instead and never used again; the same
    /// happens to a block whose exchange cannot be undone after `CoherentUnreachable`.
    ///
    /// # Examples
    ///
    /// A descriptor ring both sides use without syncs.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let ring = engine.alloc_coherent(&dev, 8192)?;
    /// assert!(DmaMask::BITS_32.covers(ring.bus(), 8192));
    /// assert_eq!(m.read(ring.phys(), 8192), vec![0; 8192]); // zeroed
    /// m.write(ring.phys(), b"descriptor");
    /// assert_eq!(m.device_read(ring.bus(), 10), b"descriptor");
    /// // SAFETY: neither the CPU nor the device uses the ring any more.
    /// unsafe { engine.free_coherent(&dev, ring) }?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn alloc_coherent(&self, dev: &Device, size: usize) -> Result<CoherentAlloc, DmaError> {
        let r = self.alloc_inner(dev, size);
        match &r {
            Ok(a) => {
                bump(&self.counters().coherent_allocs);
                if a.exchanged {
                    bump(&self.counters().coherent_exchanged);
                }
            }
            Err(_) => bump(&self.counters().coherent_failures),
        }
        r
    }

    fn alloc_inner(&self, dev: &Device, size: usize) -> Result<CoherentAlloc, DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let order = get_order(size).ok_or(DmaError::CoherentTooLarge { size })?;
        let block = XEN_PAGE_SIZE << order;
        let phys = self
            .pages
            .alloc_pages(order)
            .ok_or(DmaError::CoherentNoMemory { size, order })?;
        let give_back = |err: DmaError| {
            // SAFETY: the block was just allocated with this order and nobody else uses it.
            unsafe { self.pages.free_pages(phys, order) };
            err
        };
        if !phys.is_aligned(block) || phys.checked_last(block).is_none() {
            return Err(give_back(DmaError::CoherentMisaligned { phys, order }));
        }
        // Linux checks `size` rounded up to 4 KiB against the mask.
        let len = (size as u64).div_ceil(XEN_PAGE_SIZE) * XEN_PAGE_SIZE;
        let mask = dev.coherent_dma_mask;
        let unreachable = |bus| DmaError::CoherentUnreachable {
            phys,
            bus,
            size,
            mask,
        };
        if dev.behind_iommu {
            let bus = BusAddr::new(phys.as_u64());
            if !mask.covers(bus, len) {
                return Err(give_back(unreachable(Some(bus))));
            }
            return Ok(CoherentAlloc {
                phys,
                bus,
                size,
                order,
                exchanged: false,
                quarantined: false,
            });
        }
        if let Ok(bus) = self.contiguous_bus(phys, block)
            && mask.covers(bus, len)
            && bus.is_aligned(block)
        {
            return Ok(CoherentAlloc {
                phys,
                bus,
                size,
                order,
                exchanged: false,
                quarantined: false,
            });
        }
        let address_bits = mask.bits();
        // SAFETY: the block was just allocated, is aligned to its size (checked above) and
        // is used by nobody else.
        let bus = unsafe {
            self.platform
                .create_contiguous_region(phys, order, address_bits)
        }
        .map_err(|source| {
            if source.damage().is_some() {
                // Pages of the block have no frame (or a flush was missed): handing it back
                // would give the next user a page that faults. It is never used again.
                self.pages.quarantine(phys, order);
                return DmaError::CoherentDamaged {
                    phys,
                    order,
                    source,
                };
            }
            give_back(DmaError::CoherentContiguous {
                phys,
                order,
                address_bits,
                source,
            })
        })?;
        if !mask.covers(bus, len) {
            // The platform broke its promise; undo the exchange before giving the pages
            // back. If even that fails, the block is not as it was: quarantine it.
            // SAFETY: the region was made contiguous with this order just above.
            if unsafe { self.platform.destroy_contiguous_region(phys, order) }.is_ok() {
                return Err(give_back(unreachable(Some(bus))));
            }
            self.pages.quarantine(phys, order);
            return Err(unreachable(Some(bus)));
        }
        self.pages.set_exchanged(phys, order);
        Ok(CoherentAlloc {
            phys,
            bus,
            size,
            order,
            exchanged: true,
            quarantined: false,
        })
    }

    /// Linux's `xen_swiotlb_free_coherent`: gives back the exchange (if the allocation was
    /// made contiguous) and then the pages.
    ///
    /// Unlike Linux, which leaks the pages when the handle looks wrong, the record says
    /// exactly what to undo; if the platform cannot give the region back, the allocation is
    /// returned in the error, still allocated, for the caller to retry or keep.
    ///
    /// # Errors
    ///
    /// [`CoherentFreeError`] with [`DmaError::CoherentDestroy`] (the allocation is intact
    /// and may be freed again), with [`DmaError::CoherentDamaged`] (the platform damaged the
    /// block: it was handed to [`PageAllocator::quarantine`] and the record is marked
    /// [quarantined](CoherentAlloc::is_quarantined)), or with
    /// [`DmaError::CoherentNotAllocated`] for a record already quarantined.
    ///
    /// # Safety
    ///
    /// `alloc` must come from this engine's [`alloc_coherent`](Self::alloc_coherent), and
    /// neither the CPU (no reference) nor any device may use the memory any more.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaMask};
    ///
    /// let (engine, _m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let buf = engine.alloc_coherent(&dev, 4096)?;
    /// // Reachable as allocated: nothing to give back to the platform.
    /// assert!(!buf.is_exchanged());
    /// // SAFETY: neither the CPU nor the device uses the buffer any more.
    /// unsafe { engine.free_coherent(&dev, buf) }?;
    /// assert_eq!(engine.stats().coherent_frees, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[expect(
        clippy::result_large_err,
        reason = "the error hands the allocation record back with a damage report (136 \
                  bytes); freeing is a cold path and the library has no heap to box it"
    )]
    pub unsafe fn free_coherent(
        &self,
        dev: &Device,
        alloc: CoherentAlloc,
    ) -> Result<(), CoherentFreeError> {
        let _ = dev;
        if alloc.quarantined {
            bump(&self.counters().coherent_failures);
            return Err(CoherentFreeError {
                source: DmaError::CoherentNotAllocated {
                    phys: alloc.phys,
                    order: alloc.order,
                },
                alloc,
            });
        }
        if alloc.exchanged {
            // SAFETY: the record says the region was made contiguous with this order, and
            // the caller guarantees nobody uses it.
            let r = unsafe {
                self.platform
                    .destroy_contiguous_region(alloc.phys, alloc.order)
            };
            if let Err(source) = r {
                bump(&self.counters().coherent_failures);
                if source.damage().is_some() {
                    self.pages.quarantine(alloc.phys, alloc.order);
                    let (phys, order) = (alloc.phys, alloc.order);
                    return Err(CoherentFreeError {
                        source: DmaError::CoherentDamaged {
                            phys,
                            order,
                            source,
                        },
                        alloc: CoherentAlloc {
                            quarantined: true,
                            ..alloc
                        },
                    });
                }
                return Err(CoherentFreeError {
                    source: DmaError::CoherentDestroy {
                        phys: alloc.phys,
                        order: alloc.order,
                        source,
                    },
                    alloc,
                });
            }
        }
        // SAFETY: the block came from this engine's allocator with this order (caller's
        // promise) and nobody uses it.
        unsafe { self.pages.free_pages(alloc.phys, alloc.order) };
        bump(&self.counters().coherent_frees);
        Ok(())
    }

    /// [`free_coherent`](Self::free_coherent) from the addresses alone: frees the coherent
    /// allocation of `size` bytes that the CPU reaches at `phys` and `dev` at `bus`, as
    /// Linux's `xen_swiotlb_free_coherent` does from `(vaddr, dma_handle, size)`.
    ///
    /// This is for callers that keep only the two addresses (virtio-drivers' `dma_dealloc`,
    /// a C-style `dma_free_coherent`). What the [`CoherentAlloc`] record would say comes from
    /// the page allocator, which keeps Linux's per-page `PageXenRemapped` bit
    /// ([`PageAllocator::block_state`], [`PageAllocator::set_exchanged`]), and the handle is
    /// checked before anything is freed: the allocator must know `phys` as a live block of
    /// the order of `size`, and the block must translate to exactly `bus` (bus-contiguous;
    /// the physical address itself for a device behind an IOMMU).
    ///
    /// # Errors
    ///
    /// Nothing is freed after any of these: [`DmaError::ZeroSize`],
    /// [`DmaError::CoherentTooLarge`], [`DmaError::CoherentNoRecords`] (the allocator keeps
    /// no records), [`DmaError::CoherentNotAllocated`] (a double free, an address inside an
    /// allocation, a size of another order), [`DmaError::CoherentMismatch`] (a bus address
    /// that is not the allocation's), and [`DmaError::CoherentDestroy`] (the platform could
    /// not give the exchange back; the allocation is still live and may be freed again).
    ///
    /// # Safety
    ///
    /// Neither the CPU (no reference, no pointer used afterwards) nor any device may use the
    /// memory any more, no other free of the same allocation may run at the same time, and
    /// `dev` must describe the device it was allocated for (whether it is behind an IOMMU).
    /// The addresses themselves are checked.
    ///
    /// # Examples
    ///
    /// A caller that kept only the two addresses; a second free is refused, since the
    /// allocator's records say the block is free.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaError, DmaMask};
    ///
    /// let (engine, _m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (phys, bus) = {
    ///     let buf = engine.alloc_coherent(&dev, 4096)?;
    ///     (buf.phys(), buf.bus())
    /// };
    /// // SAFETY: neither the CPU nor the device uses the buffer any more.
    /// unsafe { engine.free_coherent_at(&dev, phys, bus, 4096) }?;
    /// // SAFETY: as above (and the addresses are checked).
    /// let again = unsafe { engine.free_coherent_at(&dev, phys, bus, 4096) };
    /// assert!(matches!(again, Err(DmaError::CoherentNotAllocated { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn free_coherent_at(
        &self,
        dev: &Device,
        phys: PhysAddr,
        bus: BusAddr,
        size: usize,
    ) -> Result<(), DmaError> {
        let alloc = self
            .coherent_record(dev, phys, bus, size)
            .inspect_err(|_| bump(&self.counters().coherent_failures))?;
        // SAFETY: the record was rebuilt from the allocator's and the platform's answers for
        // a live allocation of this engine; the caller guarantees nobody uses it.
        unsafe { self.free_coherent(dev, alloc) }.map_err(|e| e.source)
    }

    /// The [`CoherentAlloc`] that [`free_coherent_at`](Self::free_coherent_at) frees, after
    /// its checks.
    fn coherent_record(
        &self,
        dev: &Device,
        phys: PhysAddr,
        bus: BusAddr,
        size: usize,
    ) -> Result<CoherentAlloc, DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        let order = get_order(size).ok_or(DmaError::CoherentTooLarge { size })?;
        let exchanged = match self.pages.block_state(phys, order) {
            None => return Err(DmaError::CoherentNoRecords { phys, order }),
            Some(BlockState::Free) => return Err(DmaError::CoherentNotAllocated { phys, order }),
            Some(BlockState::Allocated { exchanged }) => exchanged,
        };
        let block = XEN_PAGE_SIZE << order;
        let expected = if dev.behind_iommu {
            Some(BusAddr::new(phys.as_u64()))
        } else if phys.checked_last(block).is_some() {
            self.contiguous_bus(phys, block).ok()
        } else {
            None
        };
        if expected != Some(bus) {
            return Err(DmaError::CoherentMismatch {
                phys,
                bus,
                size,
                expected,
            });
        }
        Ok(CoherentAlloc {
            phys,
            bus,
            size,
            order,
            exchanged,
            quarantined: false,
        })
    }
}
