//! The DMA mapping engine: Linux's swiotlb-xen `dma_map_ops`, generic over the platform
//! hooks.
//!
//! [`DmaEngine`] owns a [`Platform`] (translation, contiguity, cache maintenance), an
//! optional [`BouncePool`] and a [`PageAllocator`] (the kernel's pages for coherent
//! allocations and its `pfn_valid`), and offers the kernel's operations under their kernel
//! names: [`map_page`](DmaEngine::map_page), [`unmap_page`](DmaEngine::unmap_page),
//! [`sync_single_for_cpu`](DmaEngine::sync_single_for_cpu),
//! [`sync_single_for_device`](DmaEngine::sync_single_for_device),
//! [`map_sg`](DmaEngine::map_sg), [`unmap_sg`](DmaEngine::unmap_sg),
//! [`sync_sg_for_cpu`](DmaEngine::sync_sg_for_cpu),
//! [`sync_sg_for_device`](DmaEngine::sync_sg_for_device),
//! [`alloc_coherent`](DmaEngine::alloc_coherent),
//! [`free_coherent`](DmaEngine::free_coherent), [`dma_supported`](DmaEngine::dma_supported)
//! and [`max_mapping_size`](DmaEngine::max_mapping_size); and for callers that keep only
//! addresses and pointers (virtio-drivers' `Hal`):
//! [`free_coherent_at`](DmaEngine::free_coherent_at), [`map_buffer`](DmaEngine::map_buffer)
//! and [`unmap_buffer`](DmaEngine::unmap_buffer).
//!
//! ## The decision
//!
//! A streaming map is **direct** (the bus address of the buffer itself) when the device is
//! behind an IOMMU, the mapping is of MMIO ([`DmaAttrs::MMIO`]), or every 4 KiB frame of the
//! range translates, the frames are bus-contiguous, the bus range is inside the device's
//! mask, the platform does not ask to bounce and bouncing is not forced. Otherwise it is
//! **bounced**: slots are taken from the pool, the original is copied in, the bounce
//! address is translated and checked against the mask again (and given back with a
//! [`DmaError::BounceUnreachable`] if still out of reach).
//!
//! Unmaps and syncs find out from the bus address alone whether a mapping was bounced, as
//! Linux's `xen_swiotlb_find_pool`: the bus frame is translated back to the domain's own
//! frame ([`Platform::bfn_to_local_pfn`]) and looked up in the pool's range.
//!
//! Cache maintenance (non-coherent devices only) follows Linux's order: map and sync for
//! the device copy first, then clean; unmap and sync for the CPU invalidate first, then
//! copy back. [`DmaAttrs::SKIP_CPU_SYNC`] skips the maintenance and the copy-back at
//! unmap, as in Linux (the copy-in at map always happens). For a direct mapping the engine
//! hands the platform the physical address of each run of the domain's own frames, and each
//! run of frames that are not the domain's own RAM (foreign pages) with no physical address
//! (`None`): the platform maintains those by bus address, as Linux's `xen_dma_sync_for_cpu`
//! does for a DMA address that is not `pfn_valid`.

mod buffer;
mod coherent;
mod error;
mod grow;
mod pages;
mod sg;
mod stats;
#[cfg(test)]
mod tests;

pub use crate::hooks::BufferMemory;
pub use coherent::{CoherentAlloc, CoherentFreeError, MAX_COHERENT_ORDER};
pub use error::{BounceReason, DmaError, EngineInitError, SgError};
#[doc(hidden)]
pub use grow::EntryGate;
pub use grow::{
    Growth, GrowthError, GrowthHook, GrowthLimits, GrowthStats, MAX_GROWN_POOLS, NoGrowth,
    PoolGrowth, ReclaimReport,
};
pub use pages::{BlockState, NoPageAllocator, PageAllocator};
pub use sg::SgEntry;
pub use stats::EngineStats;

use crate::addr::{BusAddr, Pfn, PhysAddr, XEN_PAGE_SIZE};
use crate::dma::{Device, DmaAttrs, DmaDirection, DmaMask};
use crate::hooks::{PhysMemory, Platform};
use crate::pool::{BouncePool, IO_TLB_SEGMENT_BYTES, PoolReport, Slot};
use grow::Bouncer as _;
use stats::{Counters, ShardedCounters, bump};

/// The CPU hint used when none is given: always area 0 first.
fn cpu_zero() -> usize {
    0
}

/// Which cache hook to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CacheOp {
    ForDevice,
    ForCpu,
}

/// A DMA mapping engine over platform `P`, with an optional bounce pool over memory `M`
/// with slot storage `S`, and the kernel's page allocator `A`.
///
/// All operations take `&self` and may run on many CPUs at once; the pool and the platform
/// do their own locking.
///
/// Every method has an example. They run on a small machine without Xen, whose bus addresses
/// are its physical addresses: 2 MiB of heap memory around 4 GiB, with the pool (256 KiB)
/// and some buffers below 4 GiB (`m.low(i)`, which a 32-bit device reaches directly), a
/// page allocator that keeps records, and buffers above 4 GiB (`m.high(i)`, bounced for a
/// 32-bit device). `machine()` builds it with an engine; `m.write`/`m.read` are the CPU's
/// accesses and `m.device_read`/`m.device_write` the device's. Its code is
/// `src/engine/doc_setup.rs` of this crate. The `swiotlb-xen` crate's examples run on the
/// `xen-sim` simulator of a Xen machine.
///
/// # Invariants
///
/// When there is a pool, every 4 KiB frame of it translates through the platform, each
/// 256 KiB segment is bus-contiguous, each segment the pool has joined to the next is
/// bus-contiguous with it, and `pool_bus_top` is the highest bus address of the pool
/// (checked and learnt by [`new`](Self::new)).
pub struct DmaEngine<
    P,
    M: PhysMemory,
    S: AsRef<[Slot]> = &'static [Slot],
    A = NoPageAllocator,
    G = NoGrowth,
> {
    platform: P,
    pool: Option<BouncePool<M, S>>,
    pool_bus_top: Option<BusAddr>,
    pages: A,
    cpu_hint: fn() -> usize,
    counters: ShardedCounters,
    /// The grown pools and the kernel's growth hook ([`DmaEngine::with_growth`]).
    growth: G,
}

impl<P, M: PhysMemory, S: AsRef<[Slot]>, A, G> core::fmt::Debug for DmaEngine<P, M, S, A, G> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaEngine")
            .field("pool", &self.pool)
            .field("pool_bus_top", &self.pool_bus_top)
            .finish_non_exhaustive()
    }
}

impl<P, M, S, A> DmaEngine<P, M, S, A>
where
    P: Platform,
    M: PhysMemory,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    /// Builds an engine. With a pool, checks that every frame of it translates and that
    /// each 256 KiB segment is bus-contiguous (a bounce buffer may lie anywhere in a
    /// segment), records the pool's highest bus address for
    /// [`dma_supported`](Self::dma_supported), and tells the pool which segments are
    /// bus-contiguous with the next ([`BouncePool::set_segment_joins`], from
    /// [`Platform::contiguous_run`] across each boundary; any joins the pool had are
    /// replaced): a bounce mapping may then span them, up to
    /// [`max_mapping_size`](Self::max_mapping_size). Without a pool every mapping that
    /// needs bouncing fails with [`DmaError::NoPool`].
    ///
    /// The CPU hint is 0 (see [`with_cpu_hint`](Self::with_cpu_hint)).
    ///
    /// # Errors
    ///
    /// [`EngineInitError::NoTranslation`], [`EngineInitError::SegmentNotContiguous`].
    ///
    /// # Safety
    ///
    /// - The pool's physical addresses, the addresses later given to the map operations
    ///   and those of `pages` are in the platform's physical address space, and the pool's
    ///   [`PhysMemory`] reaches every buffer later mapped (it copies them).
    /// - The translations of the pool's frames do not change while the engine lives.
    ///
    /// # Examples
    ///
    /// An engine over a 256 KiB pool of the examples' machine (bus addresses are physical
    /// addresses there; a kernel passes its platform and page allocator), and one without a pool.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{BouncePool, Device, DmaAttrs, DmaDirection, DmaEngine, DmaError};
    /// use swiotlb_core::{DmaMask, LinearMap, NoPageAllocator, PhysAddr, Slot};
    ///
    /// let m = bare_machine();
    /// let slots: Vec<Slot> = (0..128).map(|_| Slot::new()).collect();
    /// // SAFETY: the pool's 256 KiB at RAM_BASE are its own; `m.memory()` reaches all the RAM.
    /// let pool = unsafe { BouncePool::new(m.memory(), PhysAddr::new(RAM_BASE), 128, 1, slots) }?;
    /// // SAFETY: the identity is the machine's translation; the pool and the buffers are its RAM.
    /// let engine = unsafe { DmaEngine::new(Identity, Some(pool), NoPageAllocator) }?;
    /// assert_eq!(engine.pool_bus_top().map(|b| b.as_u64()), Some(RAM_BASE + (256 << 10) - 1));
    ///
    /// // Without a pool, what needs bouncing fails.
    /// // SAFETY: as above.
    /// let direct_only: DmaEngine<_, LinearMap> =
    ///     unsafe { DmaEngine::new(Identity, None, NoPageAllocator) }?;
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// // SAFETY: the buffer is the machine's memory, covered by no reference.
    /// let r = unsafe { direct_only.map_page(&dev, m.high(0), 64, dir, none) };
    /// assert!(matches!(r, Err(DmaError::NoPool { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn new(
        platform: P,
        pool: Option<BouncePool<M, S>>,
        pages: A,
    ) -> Result<Self, EngineInitError> {
        let mut pool = pool;
        let pool_bus_top = match &mut pool {
            Some(p) => {
                let top = check_pool(&platform, p)?;
                learn_joins(&platform, p);
                Some(top)
            }
            None => None,
        };
        // INVARIANT: `check_pool` verified translation, contiguity and the top;
        // `learn_joins` joined only bus-contiguous segments.
        Ok(Self {
            platform,
            pool,
            pool_bus_top,
            pages,
            cpu_hint: cpu_zero,
            counters: ShardedCounters::default(),
            growth: NoGrowth,
        })
    }
}

impl<P, M, S, A, G> DmaEngine<P, M, S, A, G>
where
    P: Platform,
    M: PhysMemory,
    S: AsRef<[Slot]>,
    A: PageAllocator,
    G: PoolGrowth<M>,
{
    /// Sets the interrupt hook of the engine's pool (see [`crate::lock::IrqHook`]): every
    /// pool lock masks local interrupts through it, so that the map, unmap and sync entry
    /// points may be called from interrupt handlers. A kernel that builds its pool through
    /// the facade's `init` sets the hook here. Without a pool this does nothing.
    ///
    /// # Examples
    ///
    /// A kernel that maps from interrupt handlers passes its `local_irq_save` and
    /// `local_irq_restore` (here they only count).
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use core::sync::atomic::{AtomicUsize, Ordering};
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask, IrqHook};
    ///
    /// static SAVES: AtomicUsize = AtomicUsize::new(0);
    /// fn save() -> usize {
    ///     SAVES.fetch_add(1, Ordering::Relaxed);
    ///     0 // the previous interrupt state
    /// }
    /// fn restore(_state: usize) {}
    ///
    /// let (engine, m) = machine();
    /// let engine = engine.with_irq_hook(IrqHook::new(save, restore));
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let none = DmaAttrs::empty();
    /// // SAFETY: the buffer is the machine's memory, covered by no reference until the unmap.
    /// let bus = unsafe { engine.map_page(&dev, m.high(0), 64, DmaDirection::ToDevice, none) }?;
    /// engine.unmap_page(&dev, bus, 64, DmaDirection::ToDevice, none)?;
    /// // The pool's area lock masked interrupts at the map and at the unmap.
    /// assert!(SAVES.load(Ordering::Relaxed) >= 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_irq_hook(mut self, hook: crate::lock::IrqHook) -> Self {
        if let Some(pool) = &mut self.pool {
            pool.set_irq_hook(hook);
        }
        self
    }

    /// Sets the function giving the current CPU number, which picks the pool area a bounce
    /// searches first (Linux uses `raw_smp_processor_id()`).
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    ///
    /// fn this_cpu() -> usize {
    ///     0 // the kernel's `raw_smp_processor_id()`
    /// }
    /// let (engine, _m) = machine();
    /// let engine = engine.with_cpu_hint(this_cpu);
    /// assert_eq!(engine.stats().bounced_maps, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_cpu_hint(mut self, cpu: fn() -> usize) -> Self {
        self.cpu_hint = cpu;
        self
    }

    /// Makes the engine record, for every bounce mapping and pool allocation from now on,
    /// its device's [`tag`](Device::tag) and `clock`'s reading, so that
    /// [`live_mappings`](Self::live_mappings) can say which device holds how many mappings
    /// and for how long (a leak's oldest age grows from one report to the next, a burst's
    /// does not). The records go in the first pool's metadata storage, which must then hold
    /// [`slots_with_ages`](crate::slots_with_ages)`(nslabs)` slots, and in every pool grown
    /// afterwards (whose metadata the engine asks for at that length); pools grown before
    /// the call are not counted. `clock` is called on the map path, in interrupt context
    /// too: it must be safe there and cheap (a counter register). Without it the map pays
    /// one branch. See [`BouncePool::set_mapping_clock`].
    ///
    /// # Errors
    ///
    /// [`PoolError::StorageTooSmall`](crate::Error::StorageTooSmall) with the length
    /// needed (nothing changed). An engine without a pool has nothing to record: `Ok`.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// static NOW: AtomicU64 = AtomicU64::new(0);
    /// fn clock() -> u64 {
    ///     NOW.load(Ordering::Relaxed) // the kernel's TSC or CNTVCT_EL0
    /// }
    /// // The machine's pool storage has `slots_with_ages(128)` slots.
    /// let (mut engine, m) = machine();
    /// engine.set_mapping_clock(clock)?;
    /// let (nic, disk) = (Device::new(DmaMask::BITS_32).with_tag(1), Device::new(DmaMask::BITS_32).with_tag(2));
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// // SAFETY: the buffers are the machine's memory, covered by no reference until the unmap.
    /// let old = unsafe { engine.map_page(&disk, m.high(0), 4096, dir, none) }?;
    /// NOW.store(1000, Ordering::Relaxed);
    /// // SAFETY: as above.
    /// let new = unsafe { engine.map_page(&nic, m.high(1), 1500, dir, none) }?;
    /// let live = engine.live_mappings(1200).expect("the pool records ages");
    /// assert_eq!(live.device(2).map(|d| (d.mappings, d.oldest)), Some((1, 1200)));
    /// assert_eq!(live.device(1).map(|d| (d.bytes, d.oldest)), Some((1500, 200)));
    /// engine.unmap_page(&disk, old, 4096, dir, none)?;
    /// assert_eq!(engine.live_mappings(1300).unwrap().device(2), None);
    /// engine.unmap_page(&nic, new, 1500, dir, none)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_mapping_clock(
        &mut self,
        clock: crate::pool::MappingClock,
    ) -> Result<(), crate::Error> {
        match &mut self.pool {
            Some(pool) => pool.set_mapping_clock(clock),
            None => Ok(()),
        }
    }

    /// The platform.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Bfn, Pfn, Platform};
    ///
    /// let (engine, _m) = machine();
    /// // The engine's translation is its platform's (the identity on the examples' machine).
    /// let pfn = Pfn::new(0x10_0000);
    /// assert_eq!(engine.platform().pfn_to_bfn(pfn), Some(Bfn::new(0x10_0000)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The bounce pool, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::PhysAddr;
    ///
    /// let (engine, _m) = machine();
    /// let pool = engine.pool().expect("built with a pool");
    /// assert_eq!(pool.stats().nslabs, 128);
    /// assert!(pool.contains(PhysAddr::new(RAM_BASE)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn pool(&self) -> Option<&BouncePool<M, S>> {
        self.pool.as_ref()
    }

    /// A report of the bounce pool's occupancy, for the kernel to print when a mapping
    /// fails: per pool and area, the slots in use, the high-water mark and the longest free
    /// run ([`BouncePool::report`]; cold, it takes each area lock in turn). `None` without a
    /// pool. A [`DmaError::Bounce`] says why one mapping failed (its `source`: too large for
    /// the device, or a full pool, exhausted or fragmented); the report shows the pool as a
    /// whole. See the project's `docs/capacity.md`.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::DmaError;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask, Error, FullCause};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// // SAFETY: the buffers are the machine's memory, covered by no reference until the unmap.
    /// let a = unsafe { engine.map_page(&dev, m.high(0), 200 << 10, dir, none) }?;
    /// // SAFETY: as above; the map fails.
    /// let err = unsafe { engine.map_page(&dev, m.high(64), 100 << 10, dir, none) };
    /// let Err(DmaError::Bounce { source: Error::PoolFull { cause, free, .. }, .. }) = err else {
    ///     panic!("{err:?}");
    /// };
    /// assert_eq!((cause, free.free), (FullCause::Exhausted, 28));
    /// let report = engine.pool_report().expect("built with a pool");
    /// assert_eq!((report.used, report.high_water, report.fail_full), (100, 100, 1));
    /// assert!(format!("{report}").starts_with("swiotlb pool"));
    /// engine.unmap_page(&dev, a, 200 << 10, dir, none)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn pool_report(&self) -> Option<PoolReport> {
        self.pool.as_ref().and_then(BouncePool::report)
    }

    /// The page allocator.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::{BlockState, PageAllocator};
    /// use swiotlb_core::{Device, DmaMask};
    ///
    /// let (engine, _m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let buf = engine.alloc_coherent(&dev, 4096)?;
    /// // The kernel's allocator keeps the records of its blocks.
    /// let state = engine.pages().block_state(buf.phys(), 0);
    /// assert_eq!(state, Some(BlockState::Allocated { exchanged: false }));
    /// // SAFETY: neither the CPU nor the device uses the buffer any more.
    /// unsafe { engine.free_coherent(&dev, buf) }?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn pages(&self) -> &A {
        &self.pages
    }

    /// The highest bus address of the pool (its last byte), if there is a pool.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::DmaMask;
    ///
    /// let (engine, _m) = machine();
    /// let top = engine.pool_bus_top().expect("a pool");
    /// assert_eq!(top.as_u64(), RAM_BASE + (256 << 10) - 1);
    /// assert!(DmaMask::BITS_32.covers(top, 1)); // a 32-bit device reaches every bounce buffer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn pool_bus_top(&self) -> Option<BusAddr> {
        self.pool_bus_top
    }

    /// The counters of the calling CPU (by the CPU hint): the only ones its operations
    /// write.
    #[inline]
    fn counters(&self) -> &Counters {
        self.counters.shard((self.cpu_hint)())
    }

    /// A snapshot of the engine's counters (summed over the per-CPU shards) and its
    /// pool's.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::engine::BounceReason;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// // SAFETY: the buffers are the machine's memory, covered by no reference until the unmaps.
    /// let direct = unsafe { engine.map_page(&dev, m.low(0), 64, dir, none) }?;
    /// // SAFETY: as above.
    /// let bounced = unsafe { engine.map_page(&dev, m.high(0), 64, dir, none) }?;
    /// let s = engine.stats();
    /// assert_eq!((s.direct_maps, s.bounced_maps), (1, 1));
    /// assert_eq!(s.bounced_by_reason[BounceReason::OutsideMask.index()], 1);
    /// assert_eq!(s.pool.map(|p| p.used), Some(1));
    /// engine.unmap_page(&dev, direct, 64, dir, none)?;
    /// engine.unmap_page(&dev, bounced, 64, dir, none)?;
    /// assert_eq!(engine.stats().pool.map(|p| p.used), Some(0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn stats(&self) -> EngineStats {
        self.counters
            .snapshot(self.pool.as_ref().map(BouncePool::stats))
    }

    /// Takes the engine apart, giving back the platform, the pool and the page allocator.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    ///
    /// let (engine, _m) = machine();
    /// let (_platform, pool, _pages) = engine.into_parts();
    /// let pool = pool.expect("a pool");
    /// assert_eq!(pool.stats().used, 0); // nothing mapped: the pool's memory may be given back
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn into_parts(self) -> (P, Option<BouncePool<M, S>>, A) {
        (self.platform, self.pool, self.pages)
    }

    /// Linux's `xen_swiotlb_dma_supported`: whether a device with `mask` can use this
    /// engine, i.e. reach every byte of the bounce pool (its real highest bus address, not a
    /// pseudo-physical limit). Always `true` without a pool or for a device behind an
    /// IOMMU.
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaMask};
    ///
    /// let (engine, _m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// assert!(engine.dma_supported(&dev, DmaMask::BITS_32)); // the pool lies below 4 GiB
    /// let mask24 = DmaMask::from_bits(24).expect("a mask");
    /// assert!(!engine.dma_supported(&dev, mask24));
    /// assert!(engine.dma_supported(&dev.with_iommu(true), mask24));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn dma_supported(&self, dev: &Device, mask: DmaMask) -> bool {
        if dev.behind_iommu {
            return true;
        }
        self.pool_bus_top
            .is_none_or(|top| top.as_u64() <= mask.as_u64())
    }

    /// Linux's `swiotlb_max_mapping_size`, for this engine's pool: the largest streaming
    /// mapping that can be bounced for `dev` ([`BouncePool::max_mapping_size`]). Linux's
    /// answer is 256 KiB less the device's `min_align_mask` rounded up to a slot, whatever
    /// the pool; here it is that formula on the longest run of bus-contiguous segments the
    /// pool has ([`new`](Self::new) learns them), cut by the device's
    /// `seg_boundary_mask`. A pool made contiguous in 4 MiB chunks maps 4 MiB for a device
    /// without a boundary, 64 KiB for one with a 64 KiB boundary, and a pool whose
    /// segments are each alone on the bus 256 KiB, Linux's value. With growth
    /// ([`with_growth`](Self::with_growth)) it is at least what a pool of one grown chunk
    /// holds for `dev` (`GrowthLimits::chunk_bytes`, cut the same way): a mapping the first
    /// pool cannot hold grows one. Larger direct mappings still work; without a pool there
    /// is no limit (`usize::MAX`).
    ///
    /// # Examples
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaMask};
    ///
    /// let (engine, _m) = machine();
    /// // The examples' pool is one segment, so Linux's values.
    /// assert_eq!(engine.max_mapping_size(&Device::new(DmaMask::BITS_32)), 256 << 10);
    /// let nvme = Device::new(DmaMask::FULL).with_min_align_mask(0xfff);
    /// assert_eq!(engine.max_mapping_size(&nvme), 252 << 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn max_mapping_size(&self, dev: &Device) -> usize {
        let first = self
            .pool
            .as_ref()
            .map_or(usize::MAX, |p| p.max_mapping_size(dev));
        // With growth, a mapping the first pool cannot hold grows a pool of one chunk, or a
        // transient one.
        match self.growth.growth() {
            Some(g) if self.pool.is_some() && g.limits().is_valid() => {
                first.max(g.limits().max_mapping_size(dev))
            }
            _ => first,
        }
    }

    /// Linux's `xen_swiotlb_map_page` (`map_phys`): maps `size` bytes at `phys` for `dev`
    /// and returns the bus address the device must use.
    ///
    /// Direct or bounced as the [module documentation](self) says. For a non-coherent device
    /// the platform's `sync_for_device` runs on what the device will access (the buffer or
    /// the bounce buffer) after the copy-in, unless [`DmaAttrs::SKIP_CPU_SYNC`].
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroSize`], [`DmaError::AddressOverflow`], [`DmaError::Unreachable`]
    /// (MMIO or IOMMU out of reach), [`DmaError::NoPool`], [`DmaError::Bounce`],
    /// [`DmaError::BounceUnreachable`], [`DmaError::BounceUntranslatable`],
    /// [`DmaError::CacheMaintenance`]. Nothing stays mapped after an error.
    ///
    /// # Safety
    ///
    /// - `[phys, phys + size)` must be memory of the domain that the pool's [`PhysMemory`]
    ///   reaches and that stays valid until the mapping is unmapped.
    /// - The engine reads it during this call and [`sync_single_for_device`], and writes it
    ///   during [`sync_single_for_cpu`] and [`unmap_page`] (a bounced mapping); nobody else
    ///   may access it during those calls. In between the device may access it directly:
    ///   the CPU must not write it while the device may read it, nor access it while the
    ///   device may write it.
    /// - Those copies go through the [`PhysMemory`]'s own pointers, which a Rust reference
    ///   to the buffer does not survive: no reference to the range may be used after one of
    ///   them (make references again after the unmap). A caller that keeps references to
    ///   its buffer across the mapping, such as virtio-drivers, uses
    ///   [`map_buffer`](Self::map_buffer), which copies through the caller's pointer.
    ///
    /// [`sync_single_for_device`]: Self::sync_single_for_device
    /// [`sync_single_for_cpu`]: Self::sync_single_for_cpu
    /// [`unmap_page`]: Self::unmap_page
    ///
    /// # Examples
    ///
    /// A 32-bit device and two buffers: one below 4 GiB, mapped directly, and one above,
    /// bounced (copied into the pool, which the device reaches).
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// let (low, high) = (m.low(0), m.high(0));
    /// m.write(low, b"direct");
    /// m.write(high, b"bounced");
    /// // SAFETY: the buffers are the machine's memory, covered by no reference until the unmaps.
    /// let a = unsafe { engine.map_page(&dev, low, 6, dir, none) }?;
    /// // SAFETY: as above.
    /// let b = unsafe { engine.map_page(&dev, high, 7, dir, none) }?;
    /// assert_eq!(a.as_u64(), low.as_u64()); // the buffer's own bus address
    /// assert!(m.bounced(b));
    /// assert_eq!(m.device_read(a, 6), b"direct");
    /// assert_eq!(m.device_read(b, 7), b"bounced");
    /// engine.unmap_page(&dev, a, 6, dir, none)?;
    /// engine.unmap_page(&dev, b, 7, dir, none)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn map_page(
        &self,
        dev: &Device,
        phys: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        // SAFETY: the caller's promise, passed on.
        unsafe { self.map_inner(dev, phys, size, dir, attrs) }
            .inspect_err(|_| bump(&self.counters().map_failures))
    }

    /// # Safety
    ///
    /// As [`map_page`](Self::map_page).
    unsafe fn map_inner(
        &self,
        dev: &Device,
        phys: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        // CAST: usize fits in u64.
        let len = size as u64;
        if phys.checked_last(len).is_none() {
            return Err(DmaError::AddressOverflow { phys, size });
        }
        let reason = match self.try_direct(dev, phys, size, dir, attrs)? {
            Ok(bus) => return Ok(bus),
            Err(reason) => reason,
        };
        let Some(pool) = &self.pool else {
            return Err(DmaError::NoPool { phys, size, reason });
        };
        let req = grow::Request {
            dev,
            size,
            dir,
            attrs,
            reason,
        };
        let orig = grow::PageOriginal(phys);
        // SAFETY: the caller vouches for the original range until the unmap, and the pool's
        // memory reaches it (`new`'s contract).
        let tlb = match unsafe { orig.take(pool, &req, (self.cpu_hint)()) } {
            Ok(tlb) => tlb,
            // A full pool may grow (`grow.rs`); without growth this is the pool's error.
            Err(first) => {
                // SAFETY: the caller's promise, passed on.
                return unsafe { self.map_grown(&req, &orig, first) };
            }
        };
        self.finish_in(pool, &req, &orig, tlb)
    }

    /// The end of a bounce `b` just took at `tlb` in `pool` (the first or a grown one):
    /// [`finish_bounce`](Self::finish_bounce), and on error the slots go back (the unmap
    /// cannot fail; nothing is copied back: the device never saw the address).
    fn finish_in<S2: AsRef<[Slot]>, B: grow::Bouncer<M>>(
        &self,
        pool: &BouncePool<M, S2>,
        req: &grow::Request<'_>,
        b: &B,
        tlb: PhysAddr,
    ) -> Result<BusAddr, DmaError> {
        let cache = !req.dev.coherent && !req.attrs.contains(DmaAttrs::SKIP_CPU_SYNC);
        self.finish_bounce(req.dev, tlb, req.size, req.dir, cache, req.reason)
            .inspect_err(|_| b.undo(pool, req, tlb))
    }

    /// The end of a bounce: translates the bounce address, checks it against the mask, runs
    /// the cache hook for the device (when `cache`) and counts the bounce. The caller gives
    /// the slots back on error.
    fn finish_bounce(
        &self,
        dev: &Device,
        tlb: PhysAddr,
        size: usize,
        dir: DmaDirection,
        cache: bool,
        reason: BounceReason,
    ) -> Result<BusAddr, DmaError> {
        let Some(bus) = self.phys_to_bus(tlb) else {
            return Err(DmaError::BounceUntranslatable { tlb });
        };
        // CAST: usize fits in u64.
        if !dev.dma_mask.covers(bus, size as u64) {
            return Err(DmaError::BounceUnreachable {
                tlb,
                bus,
                size,
                mask: dev.dma_mask,
            });
        }
        if cache {
            self.cache(dev, Some(tlb), bus, size, dir, CacheOp::ForDevice)?;
        }
        self.counters().bounced(reason);
        Ok(bus)
    }

    /// The direct part of a map of `size > 0` bytes at `phys` (the range does not wrap):
    /// `Ok(Ok(bus))` when mapped directly (cache maintenance done, counted), `Ok(Err(reason))`
    /// when it must be bounced, `Err` when it can be neither.
    fn try_direct(
        &self,
        dev: &Device,
        phys: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<Result<BusAddr, BounceReason>, DmaError> {
        // CAST: usize fits in u64.
        let len = size as u64;
        let cache = !dev.coherent && !attrs.contains(DmaAttrs::SKIP_CPU_SYNC);
        if attrs.contains(DmaAttrs::MMIO) || dev.behind_iommu {
            // Never bounced. Behind an IOMMU the I/O address is the physical one (the IOMMU
            // translates for the domain); MMIO is translated but must be contiguous.
            // The mask on the first frame's address before the walk, as for `direct_bus`.
            let bus = if dev.behind_iommu {
                Some(BusAddr::new(phys.as_u64()))
            } else {
                match self.first_bus(phys) {
                    Ok(first) if dev.dma_mask.covers(first, len) => {
                        self.contiguous_from(phys, len, first).ok()
                    }
                    first => first.ok(),
                }
            };
            let bus = match bus {
                Some(b) if dev.dma_mask.covers(b, len) => b,
                bus => {
                    return Err(DmaError::Unreachable {
                        phys,
                        bus,
                        size,
                        mask: dev.dma_mask,
                    });
                }
            };
            if cache && !attrs.contains(DmaAttrs::MMIO) {
                self.cache(dev, Some(phys), bus, size, dir, CacheOp::ForDevice)?;
            }
            bump(&self.counters().direct_maps);
            return Ok(Ok(bus));
        }
        match self.direct_bus(dev, phys, len) {
            Ok(bus) => {
                if cache {
                    self.cache(dev, Some(phys), bus, size, dir, CacheOp::ForDevice)?;
                }
                bump(&self.counters().direct_maps);
                Ok(Ok(bus))
            }
            Err(reason) => Ok(Err(reason)),
        }
    }

    /// Linux's `xen_swiotlb_unmap_page`: ends the mapping of `size` bytes at `bus`.
    ///
    /// For a non-coherent device the platform's `sync_for_cpu` runs first (unless
    /// [`DmaAttrs::SKIP_CPU_SYNC`]); then a bounced mapping is copied back (for
    /// [`DmaDirection::FromDevice`] and [`DmaDirection::Bidirectional`], unless
    /// `SKIP_CPU_SYNC`) and its slots freed. A direct mapping needs nothing else.
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroSize`], [`DmaError::BusOverflow`], [`DmaError::Pool`] (not a live
    /// bounce mapping: a double unmap, an address inside a mapping; nothing changed),
    /// [`DmaError::NotADirectMapping`] (outside the pool and beyond what the device's mask
    /// covers, refused before any walk however large `size` is; nothing changed), and
    /// [`DmaError::CacheMaintenance`], after which a bounced mapping is still copied back
    /// and freed (the mapping is gone; the copied bytes may be stale).
    ///
    /// # Examples
    ///
    /// A receive buffer above 4 GiB: the device writes the bounce buffer, the unmap copies it
    /// back and frees the slots; a second unmap is refused.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::FromDevice, DmaAttrs::empty());
    /// let buf = m.high(1);
    /// // SAFETY: the buffer is the machine's memory, covered by no reference until the unmap.
    /// let bus = unsafe { engine.map_page(&dev, buf, 5, dir, none) }?;
    /// m.device_write(bus, b"reply");
    /// engine.unmap_page(&dev, bus, 5, dir, none)?;
    /// assert_eq!(m.read(buf, 5), b"reply");
    /// assert!(engine.unmap_page(&dev, bus, 5, dir, none).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unmap_page(
        &self,
        dev: &Device,
        bus: BusAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        self.unmap_inner(dev, bus, size, dir, attrs)
            .inspect_err(|_| bump(&self.counters().unmap_sync_failures))
    }

    fn unmap_inner(
        &self,
        dev: &Device,
        bus: BusAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), DmaError> {
        self.check_bus(bus, size)?;
        let cache = !dev.coherent && !attrs.intersects(DmaAttrs::SKIP_CPU_SYNC | DmaAttrs::MMIO);
        match self.find_bounce(dev, bus) {
            Found::First(pool, tlb) => {
                return self.unmap_bounced(pool, dev, bus, tlb, size, dir, attrs, cache);
            }
            Found::Grown(inside, tlb) => {
                let r = self.unmap_bounced(inside.pool(), dev, bus, tlb, size, dir, attrs, cache);
                self.unmapped_from(inside);
                return r;
            }
            Found::No => {}
        }
        self.check_direct(dev, bus, size)?;
        if cache {
            self.cache_direct(dev, bus, size, dir, CacheOp::ForCpu)?;
        }
        bump(&self.counters().direct_unmaps);
        Ok(())
    }

    /// The unmap of a bounce at `tlb` in `pool` (the first or a grown one).
    #[allow(clippy::too_many_arguments)]
    fn unmap_bounced<S2: AsRef<[Slot]>>(
        &self,
        pool: &BouncePool<M, S2>,
        dev: &Device,
        bus: BusAddr,
        tlb: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
        cache: bool,
    ) -> Result<(), DmaError> {
        let pool_err = |source| DmaError::Pool { bus, tlb, source };
        // The pool finds and claims the mapping first; the maintenance then covers the
        // mapping's own bytes only, however large `size` is.
        let cache_result = if cache {
            pool.unmap_maintained(dev, tlb, size, dir, attrs, |t, len| {
                self.cache(dev, Some(t), bus, len, dir, CacheOp::ForCpu)
            })
        } else {
            pool.unmap(dev, tlb, size, dir, attrs).map(Ok)
        }
        .map_err(pool_err)?;
        bump(&self.counters().bounced_unmaps);
        cache_result
    }

    /// Linux's `xen_swiotlb_sync_single_for_cpu`: makes the device's writes to
    /// `[bus, bus + size)` visible to the CPU. Cache maintenance first (non-coherent
    /// devices), then, for a bounced mapping, the copy back (for `FromDevice` and
    /// `Bidirectional`). `bus` may point inside a mapping (a partial sync).
    ///
    /// # Errors
    ///
    /// [`DmaError::ZeroSize`], [`DmaError::BusOverflow`], [`DmaError::CacheMaintenance`]
    /// (nothing copied), [`DmaError::Pool`] (not inside a live bounce mapping),
    /// [`DmaError::NotADirectMapping`] (outside the pool and beyond the device's mask; no
    /// walk, nothing changed).
    ///
    /// The cache maintenance of a direct mapping (non-coherent devices) walks the caller's
    /// range by runs ([`Platform::local_run`], [`PageAllocator::pfn_valid_run`]) through the
    /// preserving hooks: an oversize range costs the runs it meets and discards nothing.
    ///
    /// # Examples
    ///
    /// The CPU reads what the device wrote so far without ending the mapping, then gives the
    /// buffer back to the device.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::FromDevice, DmaAttrs::empty());
    /// let buf = m.high(2);
    /// // SAFETY: the buffer is the machine's memory, covered by no reference until the unmap.
    /// let bus = unsafe { engine.map_page(&dev, buf, 4096, dir, none) }?;
    /// m.device_write(bus, b"first");
    /// engine.sync_single_for_cpu(&dev, bus, 4096, dir)?;
    /// assert_eq!(m.read(buf, 5), b"first");
    /// engine.sync_single_for_device(&dev, bus, 4096, dir)?;
    /// m.device_write(bus, b"second");
    /// engine.unmap_page(&dev, bus, 4096, dir, none)?;
    /// assert_eq!(m.read(buf, 6), b"second");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sync_single_for_cpu(
        &self,
        dev: &Device,
        bus: BusAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.sync_inner(dev, bus, size, dir, CacheOp::ForCpu)
            .inspect_err(|_| bump(&self.counters().unmap_sync_failures))
    }

    /// Linux's `xen_swiotlb_sync_single_for_device`: makes the CPU's writes to
    /// `[bus, bus + size)` visible to the device. For a bounced mapping the copy first (for
    /// `ToDevice` and `Bidirectional`), then cache maintenance (non-coherent devices).
    ///
    /// # Errors
    ///
    /// As [`sync_single_for_cpu`](Self::sync_single_for_cpu); a cache error comes after
    /// the copy.
    ///
    /// # Examples
    ///
    /// The CPU rewrites a mapped transmit buffer and hands it to the device again.
    ///
    /// ```
    /// # mod doc { include!("doc_setup.rs"); } use doc::*;
    /// use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    ///
    /// let (engine, m) = machine();
    /// let dev = Device::new(DmaMask::BITS_32);
    /// let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    /// let buf = m.high(3);
    /// m.write(buf, b"old");
    /// // SAFETY: the buffer is the machine's memory, covered by no reference until the unmap.
    /// let bus = unsafe { engine.map_page(&dev, buf, 3, dir, none) }?;
    /// assert_eq!(m.device_read(bus, 3), b"old");
    /// engine.sync_single_for_cpu(&dev, bus, 3, dir)?;
    /// m.write(buf, b"new");
    /// engine.sync_single_for_device(&dev, bus, 3, dir)?;
    /// assert_eq!(m.device_read(bus, 3), b"new");
    /// engine.unmap_page(&dev, bus, 3, dir, none)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sync_single_for_device(
        &self,
        dev: &Device,
        bus: BusAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        self.sync_inner(dev, bus, size, dir, CacheOp::ForDevice)
            .inspect_err(|_| bump(&self.counters().unmap_sync_failures))
    }

    fn sync_inner(
        &self,
        dev: &Device,
        bus: BusAddr,
        size: usize,
        dir: DmaDirection,
        op: CacheOp,
    ) -> Result<(), DmaError> {
        self.check_bus(bus, size)?;
        let cache = !dev.coherent;
        match self.find_bounce(dev, bus) {
            Found::First(pool, tlb) => {
                return self.sync_bounced(pool, dev, bus, tlb, size, dir, op);
            }
            Found::Grown(inside, tlb) => {
                return self.sync_bounced(inside.pool(), dev, bus, tlb, size, dir, op);
            }
            Found::No => {}
        }
        self.check_direct(dev, bus, size)?;
        if cache {
            self.cache_direct(dev, bus, size, dir, op)
        } else {
            Ok(())
        }
    }

    /// The sync of a bounce at `tlb` in `pool` (the first or a grown one).
    #[allow(clippy::too_many_arguments)]
    fn sync_bounced<S2: AsRef<[Slot]>>(
        &self,
        pool: &BouncePool<M, S2>,
        dev: &Device,
        bus: BusAddr,
        tlb: PhysAddr,
        size: usize,
        dir: DmaDirection,
        op: CacheOp,
    ) -> Result<(), DmaError> {
        let cache = !dev.coherent;
        let pool_err = |source| DmaError::Pool { bus, tlb, source };
        // The pool validates the address and clamps the range to the mapping before the
        // maintenance runs (before its copy for the CPU, after it for the device).
        let maintain = |t: PhysAddr, len: usize| self.cache(dev, Some(t), bus, len, dir, op);
        match (op, cache) {
            (CacheOp::ForCpu, true) => pool.sync_for_cpu_maintained(dev, tlb, size, dir, maintain),
            (CacheOp::ForDevice, true) => {
                pool.sync_for_device_maintained(dev, tlb, size, dir, maintain)
            }
            (CacheOp::ForCpu, false) => pool.sync_for_cpu(dev, tlb, size, dir).map(Ok),
            (CacheOp::ForDevice, false) => pool.sync_for_device(dev, tlb, size, dir).map(Ok),
        }
        .map_err(pool_err)?
    }

    /// Where the bounce at `bus` lives: the first pool (checked first, as before growth),
    /// a grown pool (entered: it cannot be given back until the use ends), or none.
    #[inline]
    fn find_bounce(&self, dev: &Device, bus: BusAddr) -> Found<'_, M, S> {
        let Some(pool) = self.pool.as_ref() else {
            return Found::No;
        };
        if dev.behind_iommu {
            return Found::No;
        }
        let Some(pfn) = self.platform.bfn_to_local_pfn(bus.frame()) else {
            return Found::No;
        };
        let phys = bus.with_phys_frame(pfn);
        if pool.contains(phys) {
            return Found::First(pool, phys);
        }
        match self.grown_lookup(phys) {
            Some(inside) => Found::Grown(inside, phys),
            None => Found::No,
        }
    }

    /// Checks a bus range given to an unmap or sync.
    fn check_bus(&self, bus: BusAddr, size: usize) -> Result<(), DmaError> {
        if size == 0 {
            return Err(DmaError::ZeroSize);
        }
        // CAST: usize fits in u64.
        if bus.checked_last(size as u64).is_none() {
            return Err(DmaError::BusOverflow { bus, size });
        }
        Ok(())
    }

    /// The bus address of `phys` (its frame's translation plus the offset).
    #[inline]
    fn phys_to_bus(&self, phys: PhysAddr) -> Option<BusAddr> {
        self.platform
            .pfn_to_bfn(phys.frame())
            .map(|b| phys.with_bus_frame(b))
    }

    /// The bus address of `[phys, phys + len)` if every frame translates and the frames are
    /// bus-contiguous (the negation of Linux's `range_straddles_page_boundary`). `len > 0`
    /// and the range does not wrap.
    ///
    /// The first frame's translation comes first (`first`, from
    /// [`first_bus`](Self::first_bus)); the walk goes by runs
    /// ([`Platform::contiguous_run`]), so it costs the number of runs, not of frames.
    fn contiguous_from(
        &self,
        phys: PhysAddr,
        len: u64,
        first: BusAddr,
    ) -> Result<BusAddr, BounceReason> {
        let pfn0 = phys.frame();
        let b0 = first.frame();
        // The caller checked that the range does not wrap.
        let last = PhysAddr::new(phys.as_u64() + (len - 1)).frame();
        // Cannot overflow: `last >= pfn0`, and fewer than 2^52 frames.
        let total = last.as_u64() - pfn0.as_u64() + 1;
        let mut done = 0u64;
        while done < total {
            // Cannot overflow: `pfn0 + done <= last`.
            let pfn = Pfn::new(pfn0.as_u64() + done);
            let (b, n) = self
                .platform
                .contiguous_run(pfn, total - done)
                .ok_or(BounceReason::Untranslatable)?;
            if Some(b) != b0.checked_add(done) {
                return Err(BounceReason::NotContiguous);
            }
            // A platform that answers more than asked is held to what was asked.
            done += n.clamp(1, total - done);
        }
        Ok(first)
    }

    /// [`contiguous_from`](Self::contiguous_from) with the first frame translated here.
    fn contiguous_bus(&self, phys: PhysAddr, len: u64) -> Result<BusAddr, BounceReason> {
        let first = self.first_bus(phys)?;
        self.contiguous_from(phys, len, first)
    }

    /// The bus address of `phys` by its first frame alone: the address a contiguous range
    /// from `phys` would have.
    #[inline]
    fn first_bus(&self, phys: PhysAddr) -> Result<BusAddr, BounceReason> {
        self.phys_to_bus(phys).ok_or(BounceReason::Untranslatable)
    }

    /// The direct-mapping decision for a device not behind an IOMMU: the bus address, or
    /// why the mapping must be bounced.
    ///
    /// In Linux's order (`dma_capable` before `range_straddles_page_boundary`): the mask
    /// and the size are checked on the first frame's bus address before any walk, so a
    /// size the device could never reach costs one translation, not one per frame.
    #[inline]
    fn direct_bus(&self, dev: &Device, phys: PhysAddr, len: u64) -> Result<BusAddr, BounceReason> {
        if dev.force_bounce {
            return Err(BounceReason::Forced);
        }
        let first = self.first_bus(phys)?;
        if !dev.dma_mask.covers(first, len) {
            return Err(BounceReason::OutsideMask);
        }
        let bus = self.contiguous_from(phys, len, first)?;
        if self.platform.needs_bounce(dev, phys, bus) {
            return Err(BounceReason::Platform);
        }
        Ok(bus)
    }

    /// Runs a cache hook of the platform over a range; `phys` is `None` for foreign bytes
    /// known only by their bus address (see [`Platform::sync_for_device`]).
    fn cache(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        size: usize,
        dir: DmaDirection,
        op: CacheOp,
    ) -> Result<(), DmaError> {
        self.cache_hook(dev, phys, bus, size, dir, op, false)
    }

    /// [`cache`](Self::cache), through the platform's preserving hooks when `preserve`: for
    /// a range the engine cannot check against a mapping, maintenance that never discards
    /// data the CPU wrote ([`Platform::sync_for_cpu_preserving`]).
    #[allow(clippy::too_many_arguments)]
    fn cache_hook(
        &self,
        dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        size: usize,
        dir: DmaDirection,
        op: CacheOp,
        preserve: bool,
    ) -> Result<(), DmaError> {
        let p = &self.platform;
        let r = match (op, preserve) {
            (CacheOp::ForDevice, false) => p.sync_for_device(dev, phys, bus, size, dir),
            (CacheOp::ForCpu, false) => p.sync_for_cpu(dev, phys, bus, size, dir),
            (CacheOp::ForDevice, true) => p.sync_for_device_preserving(dev, phys, bus, size, dir),
            (CacheOp::ForCpu, true) => p.sync_for_cpu_preserving(dev, phys, bus, size, dir),
        };
        r.map_err(|source| {
            bump(&self.counters().cache_failures);
            DmaError::CacheMaintenance {
                phys,
                bus,
                size,
                source,
            }
        })
    }

    /// Runs a cache hook over a direct mapping known only by its bus address, in runs: the
    /// domain's own frames (translated back, `pfn_valid`, physically consecutive) with their
    /// physical address, and consecutive other frames (foreign pages) with `None`.
    ///
    /// A direct mapping is not recorded, so nothing says that `[bus, bus + size)` is the
    /// caller's: the range goes to the platform's preserving hooks
    /// ([`Platform::sync_for_cpu_preserving`], [`Platform::sync_for_device_preserving`]),
    /// which clean and invalidate where the plain hooks would only invalidate. A size too
    /// large cannot discard anybody's data, it only costs time, and little of it: the range
    /// is walked by runs ([`Platform::local_run`], [`PageAllocator::pfn_valid_run`]), not
    /// frame by frame, so its cost is the number of runs it meets (the caller checked it
    /// against the device's mask). The walk stops at the first run the platform refuses to
    /// maintain (on arm64, memory that is neither the domain's RAM nor a granted page).
    fn cache_direct(
        &self,
        dev: &Device,
        bus: BusAddr,
        size: usize,
        dir: DmaDirection,
        op: CacheOp,
    ) -> Result<(), DmaError> {
        if dev.behind_iommu {
            // The I/O address is the physical address.
            let phys = Some(PhysAddr::new(bus.as_u64()));
            return self.cache_hook(dev, phys, bus, size, dir, op, true);
        }
        // CAST: usize fits in u64.
        let len = size as u64;
        // The caller checked that the range does not wrap.
        let last = BusAddr::new(bus.as_u64() + (len - 1)).frame();
        // The run not yet handed over: (physical start or None for foreign, bus start,
        // length).
        let mut run: Option<(Option<PhysAddr>, BusAddr, u64)> = None;
        let mut done = 0u64;
        while done < len {
            // Cannot overflow: the caller checked `bus + len`.
            let b = BusAddr::new(bus.as_u64() + done);
            // Frames of the range from `b`'s on: at least 1, since `b <= last byte`.
            let frames = last.as_u64() - b.frame().as_u64() + 1;
            // A platform or allocator that answers more than asked is held to what was asked.
            let (local, n) = self.platform.local_run(b.frame(), frames);
            let n = n.clamp(1, frames);
            let (local, n) = match local {
                Some(p) => {
                    let (valid, m) = self.pages.pfn_valid_run(p, n);
                    (valid.then_some(p), m.clamp(1, n))
                }
                None => (None, n),
            };
            // The bytes of those `n` frames inside the range (`n * 4 KiB` saturates only for
            // a range of the whole address space, whose rest is then all of it).
            let chunk = n
                .saturating_mul(XEN_PAGE_SIZE)
                .saturating_sub(b.frame_offset())
                .min(len - done);
            let local = local.map(|p| b.with_phys_frame(p));
            run = match (run, local) {
                // Bus addresses of a run are consecutive by construction; a local run also
                // needs consecutive physical addresses, a foreign run nothing more.
                (Some((Some(rp), rb, rl)), Some(p))
                    if rp.as_u64().checked_add(rl) == Some(p.as_u64()) =>
                {
                    Some((Some(rp), rb, rl + chunk))
                }
                (Some((None, rb, rl)), None) => Some((None, rb, rl + chunk)),
                (prev, phys) => {
                    if let Some((rp, rb, rl)) = prev {
                        self.cache_hook(dev, rp, rb, to_usize(rl), dir, op, true)?;
                    }
                    Some((phys, b, chunk))
                }
            };
            done += chunk;
        }
        if let Some((rp, rb, rl)) = run {
            self.cache_hook(dev, rp, rb, to_usize(rl), dir, op, true)?;
        }
        Ok(())
    }

    /// Checks the bus range of an unmap or sync that is not in the pool, which can only be
    /// a direct mapping: the map checked every direct mapping against the device's mask, so
    /// a range the mask does not cover is no mapping at all. Refused before any walk, so an
    /// absurd size costs nothing.
    fn check_direct(&self, dev: &Device, bus: BusAddr, size: usize) -> Result<(), DmaError> {
        // CAST: usize fits in u64.
        if dev.dma_mask.covers(bus, size as u64) {
            Ok(())
        } else {
            Err(DmaError::NotADirectMapping {
                bus,
                size,
                mask: dev.dma_mask,
            })
        }
    }
}

/// The answer of [`DmaEngine::find_bounce`].
enum Found<'a, M: PhysMemory, S: AsRef<[Slot]>> {
    First(&'a BouncePool<M, S>, PhysAddr),
    Grown(grow::Inside<'a, M>, PhysAddr),
    No,
}

/// A length known to come from a `usize`.
#[inline]
fn to_usize(len: u64) -> usize {
    // CAST: every caller passes a part of a range whose length was a usize.
    len as usize
}

/// Tells `pool` which of its segments are bus-contiguous with the next under `platform`:
/// segment `s` is joined to `s + 1` when the frames from the last of `s` to the first of
/// `s + 1` form one bus-contiguous run ([`Platform::contiguous_run`]). Each segment is
/// bus-contiguous already ([`check_pool`]), so a run of joined segments is one
/// bus-contiguous range.
///
/// A storage that shrank (the only error of `set_segment_joins`) leaves the pool without
/// joins, and failing every operation anyway.
fn learn_joins<P: Platform, M: PhysMemory, S: AsRef<[Slot]>>(
    platform: &P,
    pool: &mut BouncePool<M, S>,
) {
    let start = pool.start().as_u64();
    // CAST: 256 KiB fits in u64.
    let seg_bytes = IO_TLB_SEGMENT_BYTES as u64;
    let _ = pool.set_segment_joins(|seg| {
        // CAST: segment indices fit in u64; the boundary lies inside the pool.
        let boundary = start + (seg as u64 + 1) * seg_bytes;
        let last = PhysAddr::new(boundary - 1).frame();
        let next = PhysAddr::new(boundary).frame();
        // One frame when the boundary is inside a frame (a pool start not 4 KiB aligned).
        let want = next.as_u64() - last.as_u64() + 1;
        platform
            .contiguous_run(last, want)
            .is_some_and(|(_, n)| n >= want)
    });
}

/// Checks what [`DmaEngine::new`] requires of a pool under `platform` (every frame
/// translates, each 256 KiB segment is bus-contiguous) and returns the pool's highest bus
/// address (its last byte). Lets a caller check before handing the platform to the engine.
///
/// # Errors
///
/// [`EngineInitError::NoTranslation`], [`EngineInitError::SegmentNotContiguous`].
pub fn check_pool<P: Platform, M: PhysMemory, S: AsRef<[Slot]>>(
    platform: &P,
    pool: &BouncePool<M, S>,
) -> Result<BusAddr, EngineInitError> {
    let start = pool.start().as_u64();
    let end = pool.end().as_u64();
    let mut top = BusAddr::ZERO;
    // CAST: 256 KiB fits in u64.
    let seg_bytes = IO_TLB_SEGMENT_BYTES as u64;
    let mut seg_start = start;
    let mut segment = 0usize;
    while seg_start < end {
        // The pool holds whole segments (its constructor checked `nslabs`).
        let seg_end = (seg_start + seg_bytes).min(end);
        let seg_phys = PhysAddr::new(seg_start);
        // A pool start only 2 KiB-aligned still starts its frame at the frame boundary.
        let first = seg_phys.frame();
        let last = PhysAddr::new(seg_end - 1).frame();
        let b0 = platform
            .pfn_to_bfn(first)
            .ok_or(EngineInitError::NoTranslation {
                phys: first.start(),
            })?;
        for i in 0..=(last.as_u64() - first.as_u64()) {
            let pfn = Pfn::new(first.as_u64() + i);
            let b = platform
                .pfn_to_bfn(pfn)
                .ok_or(EngineInitError::NoTranslation { phys: pfn.start() })?;
            if Some(b.as_u64()) != b0.as_u64().checked_add(i) {
                return Err(EngineInitError::SegmentNotContiguous {
                    segment,
                    phys: seg_phys,
                });
            }
        }
        let seg_top = PhysAddr::new(seg_end - 1).with_bus_frame(
            // Cannot overflow: checked_add succeeded for every frame above.
            crate::addr::Bfn::new(b0.as_u64() + (last.as_u64() - first.as_u64())),
        );
        top = top.max(seg_top);
        seg_start = seg_end;
        segment += 1;
    }
    Ok(top)
}
