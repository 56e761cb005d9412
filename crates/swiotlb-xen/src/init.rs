//! The Xen pool initialisation policy (Linux's `xen_swiotlb_fixup` and the halving retry of
//! `swiotlb_init_remap`, improved): make a bounce pool bus-contiguous and DMA-reachable,
//! build the [`BouncePool`] and the [`DmaEngine`] over it, and report what it took.
//!
//! For a pool of `bytes` at `phys` (aligned to a 256 KiB segment):
//!
//! 1. The pool is cut into naturally aligned power-of-two **chunks**, each as large as the
//!    pseudo-physical alignment of its start, the remaining size and the order cap allow
//!    (never smaller than a segment). A chunk that is already bus-contiguous, aligned to a
//!    segment on the bus and below `2^max_address_bits` is kept as it is, with no
//!    hypercall (the arm64 1:1 case, or memory Xen handed out contiguous).
//! 2. Any other chunk is made contiguous with
//!    [`Platform::create_contiguous_region_rising`], with `address_bits` rising from the
//!    smallest that fits the chunk up to [`InitOptions::max_address_bits`] (32, Linux's
//!    `MAX_DMA_BITS`), never going back down for later chunks (as Linux). On x86 PV the
//!    chunk is unmapped and remapped once around all the limits it tries, so a refused
//!    limit costs one `XENMEM_exchange` (Linux pays the unmapping and remapping of its
//!    segment again for every limit). An "order too large" answer (`OrderTooLarge`,
//!    `OrderRefused`, or `EPERM` from `XENMEM_exchange`) lowers the order cap for good; no room below the
//!    highest limit for a chunk larger than a segment splits it.
//! 3. When even a segment cannot be made contiguous, the pool is **halved** (keeping whole
//!    segments): chunks beyond the new end are given back with
//!    [`Platform::destroy_contiguous_region`], chunks inside it are kept, and the work goes
//!    on from the end of the last kept chunk, down to [`InitOptions::min_bytes`] (1 MiB).
//!    A pool that needs more than [`MAX_CHUNKS`] chunks is halved the same way.
//! 4. The pool and the engine are built; the engine checks every segment again and records
//!    the pool's real highest bus address for `dma_supported`.
//!
//! Linux makes one `XENMEM_exchange` per 256 KiB segment (64 for 16 MiB), each with its
//! unmapping and remapping. A pool aligned to its size is one chunk per power of two of its
//! size (one for 16 MiB). On the simulator's x86 PV dom0 that is 0.12 exchanges and 16.1
//! hypercall traps per MiB for 16 MiB, against 4.44 and 20.4 for one exchange per segment
//! (`init::tests::sim::hypercalls_per_mib_against_one_exchange_per_segment`); what is left
//! is the unmapping and remapping themselves, 32 pages per multicall as Linux batches them.
//!
//! After any error everything exchanged so far has been given back, except what the error
//! names and counts: a damaged chunk ([`InitError::Damaged`], which takes precedence) and
//! the chunks whose give-back failed ([`InitError::GiveBack`] names the first and counts
//! them all; `Damaged` counts them). Giving back goes on after a failing chunk.

#[cfg(test)]
mod tests;

use arrayvec::ArrayVec;
use swiotlb_core::engine::{EngineInitError, check_pool};
use swiotlb_core::pool::{IO_TLB_SEGMENT_BYTES, IO_TLB_SIZE};
use swiotlb_core::{
    BouncePool, BusAddr, DmaEngine, PageAllocator, PhysAddr, PhysMemory, Platform, PlatformError,
    Slot, XEN_PAGE_SHIFT, XEN_PAGE_SIZE,
};

/// The order of a 256 KiB segment in 4 KiB frames.
pub const SEGMENT_ORDER: u32 = 6;
/// The smallest pool the halving settles for by default (Linux: 1 MiB, 512 slots).
pub const MIN_POOL_BYTES: usize = 1 << 20;
/// Linux's `MAX_DMA_BITS`: the highest address limit asked of Xen.
pub const MAX_DMA_BITS: u32 = 32;
/// The most chunks an [`InitReport`] records; a pool needing more (tiny order caps on a
/// huge pool) is halved until it fits.
pub const MAX_CHUNKS: usize = 64;
/// The default order cap: 4096 frames (16 MiB), Xen's default limit for a hardware domain
/// that is not also the control domain (`memop-max-order`'s hwdom value; an x86 dom0 is
/// both and may go to 18). Orders above the domain's limit are refused by Xen with `EPERM`
/// (`PlatformError::OrderRefused` on x86 PV), which lowers the cap anyway.
pub const DEFAULT_MAX_ORDER: u32 = 12;

const EPERM: i32 = 1;
// CAST: 256 KiB fits in u64.
const SEGMENT: u64 = IO_TLB_SEGMENT_BYTES as u64;

/// Options of [`init`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InitOptions {
    /// Pool areas (locks); a power of two, lowered until each area is whole segments.
    /// Default 1; kernels use their CPU count.
    pub nareas: usize,
    /// The smallest pool the halving accepts (default [`MIN_POOL_BYTES`]).
    pub min_bytes: usize,
    /// The largest chunk order tried first (default [`DEFAULT_MAX_ORDER`]; at least
    /// [`SEGMENT_ORDER`]).
    pub max_order: u32,
    /// The highest address limit asked for (default [`MAX_DMA_BITS`]; taken between 18, a
    /// segment's, and 64). Chunks are never larger than the limit allows.
    pub max_address_bits: u32,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            nareas: 1,
            min_bytes: MIN_POOL_BYTES,
            max_order: DEFAULT_MAX_ORDER,
            max_address_bits: MAX_DMA_BITS,
        }
    }
}

impl InitOptions {
    /// Sets the number of areas.
    ///
    /// # Examples
    ///
    /// ```
    /// use swiotlb_xen::init::InitOptions;
    ///
    /// // Eight areas (locks): a CPU count, lowered to whole segments per area.
    /// let options = InitOptions::default().with_nareas(8);
    /// assert_eq!(options.nareas, 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_nareas(mut self, nareas: usize) -> Self {
        self.nareas = nareas;
        self
    }

    /// Sets the smallest acceptable pool.
    ///
    /// # Examples
    ///
    /// ```
    /// use swiotlb_xen::init::InitOptions;
    ///
    /// // Halve a pool that cannot be made contiguous no further than 2 MiB.
    /// let options = InitOptions::default().with_min_bytes(2 << 20);
    /// assert_eq!(options.min_bytes, 2 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_min_bytes(mut self, bytes: usize) -> Self {
        self.min_bytes = bytes;
        self
    }

    /// Sets the largest chunk order tried.
    ///
    /// # Examples
    ///
    /// ```
    /// use swiotlb_xen::init::InitOptions;
    ///
    /// // Ask Xen for chunks of at most 2 MiB (a domain without I/O capabilities).
    /// let options = InitOptions::default().with_max_order(9);
    /// assert_eq!(options.max_order, 9);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_max_order(mut self, order: u32) -> Self {
        self.max_order = order;
        self
    }

    /// Sets the highest address limit asked for.
    ///
    /// # Examples
    ///
    /// ```
    /// use swiotlb_xen::init::InitOptions;
    ///
    /// // A device that reaches 1 GiB: the pool below it.
    /// let options = InitOptions::default().with_max_address_bits(30);
    /// assert_eq!(options.max_address_bits, 30);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_max_address_bits(mut self, bits: u32) -> Self {
        self.max_address_bits = bits;
        self
    }
}

/// One chunk of the pool: `4 KiB << order` bytes at `phys`, bus-contiguous at `bus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's first byte.
    pub phys: PhysAddr,
    /// Its bus address.
    pub bus: BusAddr,
    /// Its order in 4 KiB frames.
    pub order: u32,
    /// The address limit it was exchanged below, or `None` if it was already contiguous and
    /// kept as it was (nothing to give back).
    pub address_bits: Option<u32>,
}

impl Chunk {
    /// The chunk's size in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// # use swiotlb_xen::init::{init, InitOptions};
    /// # use swiotlb_xen::x86_pv::X86PvPlatform;
    /// # use swiotlb_xen::{NoPageAllocator, Slot};
    /// # use xen_sim::{SimConfig, Xen};
    /// #
    /// # let xen = Xen::new(SimConfig::x86_pv());
    /// # let guest = xen.pv_guest();
    /// # // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
    /// # let platform = unsafe {
    /// #     let (p2m, m2p, base) = (guest.p2m(), guest.m2p(), guest.linear_base());
    /// #     X86PvPlatform::new(p2m, m2p, base, xen.dom0(), guest.memory())
    /// # };
    /// # let pool = guest.alloc_aligned(1024, 1024);
    /// # let slots: Vec<Slot> = (0..2048).map(|_| Slot::new()).collect();
    /// # // SAFETY: the pool's pages are the engine's alone; `guest.memory()` reaches all of dom0.
    /// # let (engine, report) = unsafe {
    /// #     let options = InitOptions::default();
    /// #     init(platform, guest.memory(), pool, 4 << 20, slots, NoPageAllocator, options)
    /// # }?;
    ///
    /// let total: u64 = report.chunks.iter().map(|c| c.bytes()).sum();
    /// assert_eq!(total, 4 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn bytes(&self) -> u64 {
        XEN_PAGE_SIZE << self.order
    }

    /// Whether the chunk was made contiguous (and must be given back at teardown).
    ///
    /// # Examples
    ///
    /// ```
    /// # use swiotlb_xen::init::{init, InitOptions};
    /// # use swiotlb_xen::x86_pv::X86PvPlatform;
    /// # use swiotlb_xen::{NoPageAllocator, Slot};
    /// # use xen_sim::{SimConfig, Xen};
    /// #
    /// # let xen = Xen::new(SimConfig::x86_pv());
    /// # let guest = xen.pv_guest();
    /// # // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
    /// # let platform = unsafe {
    /// #     let (p2m, m2p, base) = (guest.p2m(), guest.m2p(), guest.linear_base());
    /// #     X86PvPlatform::new(p2m, m2p, base, xen.dom0(), guest.memory())
    /// # };
    /// # let pool = guest.alloc_aligned(1024, 1024);
    /// # let slots: Vec<Slot> = (0..2048).map(|_| Slot::new()).collect();
    /// # // SAFETY: the pool's pages are the engine's alone; `guest.memory()` reaches all of dom0.
    /// # let (engine, report) = unsafe {
    /// #     let options = InitOptions::default();
    /// #     init(platform, guest.memory(), pool, 4 << 20, slots, NoPageAllocator, options)
    /// # }?;
    ///
    /// let chunk = report.chunks[0];
    /// assert!(chunk.is_exchanged()); // `release` gives it back to Xen
    /// assert_eq!(chunk.bytes(), 4 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn is_exchanged(&self) -> bool {
        self.address_bits.is_some()
    }
}

/// What [`init`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct InitReport {
    /// The pool's first byte.
    pub phys: PhysAddr,
    /// The size asked for.
    pub requested_bytes: usize,
    /// The size of the pool built (after any halving).
    pub bytes: usize,
    /// Its slots.
    pub nslabs: usize,
    /// The chunks of the pool, in address order.
    pub chunks: ArrayVec<Chunk, MAX_CHUNKS>,
    /// Calls of `create_contiguous_region` (each one `XENMEM_exchange` plus the remapping
    /// multicalls on x86 PV), successful or not.
    pub create_calls: u32,
    /// Of those, the ones that failed.
    pub create_failures: u32,
    /// Calls of `destroy_contiguous_region` (chunks given back after a halving).
    pub destroy_calls: u32,
    /// Times the pool was halved.
    pub halvings: u32,
    /// The pool's highest bus address (its last byte).
    pub bus_top: BusAddr,
}

impl InitReport {
    /// The chunks that were exchanged (not kept as they were).
    ///
    /// # Examples
    ///
    /// ```
    /// # use swiotlb_xen::init::{init, InitOptions};
    /// # use swiotlb_xen::x86_pv::X86PvPlatform;
    /// # use swiotlb_xen::{NoPageAllocator, Slot};
    /// # use xen_sim::{SimConfig, Xen};
    /// #
    /// # let xen = Xen::new(SimConfig::x86_pv());
    /// # let guest = xen.pv_guest();
    /// # // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
    /// # let platform = unsafe {
    /// #     let (p2m, m2p, base) = (guest.p2m(), guest.m2p(), guest.linear_base());
    /// #     X86PvPlatform::new(p2m, m2p, base, xen.dom0(), guest.memory())
    /// # };
    /// # let pool = guest.alloc_aligned(1024, 1024);
    /// # let slots: Vec<Slot> = (0..2048).map(|_| Slot::new()).collect();
    /// # // SAFETY: the pool's pages are the engine's alone; `guest.memory()` reaches all of dom0.
    /// # let (engine, report) = unsafe {
    /// #     let options = InitOptions::default();
    /// #     init(platform, guest.memory(), pool, 4 << 20, slots, NoPageAllocator, options)
    /// # }?;
    ///
    /// // On x86 PV the pool's pages had to be exchanged for machine-contiguous ones.
    /// assert!(report.exchanged().count() >= 1);
    /// assert!(report.exchanged().all(|c| c.address_bits.is_some()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exchanged(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter().filter(|c| c.is_exchanged())
    }

    /// The highest address limit any chunk needed, if any was exchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// # use swiotlb_xen::init::{init, InitOptions};
    /// # use swiotlb_xen::x86_pv::X86PvPlatform;
    /// # use swiotlb_xen::{NoPageAllocator, Slot};
    /// # use xen_sim::{SimConfig, Xen};
    /// #
    /// # let xen = Xen::new(SimConfig::x86_pv());
    /// # let guest = xen.pv_guest();
    /// # // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
    /// # let platform = unsafe {
    /// #     let (p2m, m2p, base) = (guest.p2m(), guest.m2p(), guest.linear_base());
    /// #     X86PvPlatform::new(p2m, m2p, base, xen.dom0(), guest.memory())
    /// # };
    /// # let pool = guest.alloc_aligned(1024, 1024);
    /// # let slots: Vec<Slot> = (0..2048).map(|_| Slot::new()).collect();
    /// # // SAFETY: the pool's pages are the engine's alone; `guest.memory()` reaches all of dom0.
    /// # let (engine, report) = unsafe {
    /// #     let options = InitOptions::default();
    /// #     init(platform, guest.memory(), pool, 4 << 20, slots, NoPageAllocator, options)
    /// # }?;
    ///
    /// // The lowest limit that had room, never above the default 32 bits.
    /// let bits = report.max_address_bits_used().expect("a chunk was exchanged");
    /// assert!((22..=32).contains(&bits));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn max_address_bits_used(&self) -> Option<u32> {
        self.chunks.iter().filter_map(|c| c.address_bits).max()
    }

    /// The smallest and largest chunk orders.
    ///
    /// # Examples
    ///
    /// ```
    /// # use swiotlb_xen::init::{init, InitOptions};
    /// # use swiotlb_xen::x86_pv::X86PvPlatform;
    /// # use swiotlb_xen::{NoPageAllocator, Slot};
    /// # use xen_sim::{SimConfig, Xen};
    /// #
    /// # let xen = Xen::new(SimConfig::x86_pv());
    /// # let guest = xen.pv_guest();
    /// # // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
    /// # let platform = unsafe {
    /// #     let (p2m, m2p, base) = (guest.p2m(), guest.m2p(), guest.linear_base());
    /// #     X86PvPlatform::new(p2m, m2p, base, xen.dom0(), guest.memory())
    /// # };
    /// # let pool = guest.alloc_aligned(1024, 1024);
    /// # let slots: Vec<Slot> = (0..2048).map(|_| Slot::new()).collect();
    /// # // SAFETY: the pool's pages are the engine's alone; `guest.memory()` reaches all of dom0.
    /// # let (engine, report) = unsafe {
    /// #     let options = InitOptions::default();
    /// #     init(platform, guest.memory(), pool, 4 << 20, slots, NoPageAllocator, options)
    /// # }?;
    ///
    /// // 4 MiB aligned to its size: one chunk of order 10 (1024 frames).
    /// assert_eq!(report.order_range(), Some((10, 10)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn order_range(&self) -> Option<(u32, u32)> {
        let min = self.chunks.iter().map(|c| c.order).min()?;
        let max = self.chunks.iter().map(|c| c.order).max()?;
        Some((min, max))
    }
}

/// Why [`init`] (or [`release`]) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The pool's start is not aligned to a 256 KiB segment.
    #[error("pool start {phys} is not aligned to {align:#x}")]
    Misaligned {
        /// The pool's start.
        phys: PhysAddr,
        /// The alignment needed.
        align: u64,
    },
    /// The size is not a whole number of segments, or overflows.
    #[error("pool size {bytes:#x} is not a non-zero multiple of 256 KiB")]
    BadSize {
        /// The size asked for.
        bytes: usize,
    },
    /// The pool asked for is smaller than the minimum.
    #[error("pool size {bytes:#x} is below the minimum {min:#x}")]
    TooSmall {
        /// The size asked for.
        bytes: usize,
        /// The minimum.
        min: usize,
    },
    /// Not even the minimum pool could be made contiguous: Linux's "Failed to get contiguous
    /// memory for DMA from Xen! You either: don't have the permissions, do not have enough
    /// free memory under 4GB, or the hypervisor does not support the mapping exchange".
    /// Everything exchanged was given back.
    #[error(
        "no contiguous memory for a {min:#x}-byte pool below 2^{address_bits} (last: {phys}, order {order}: {source})"
    )]
    Exhausted {
        /// The minimum size that failed.
        min: usize,
        /// The address limit last tried.
        address_bits: u32,
        /// The chunk that failed last.
        phys: PhysAddr,
        /// Its order.
        order: u32,
        /// The platform's last error.
        #[source]
        source: PlatformError,
    },
    /// Making the chunk at `phys` contiguous failed and left it damaged
    /// ([`PlatformError::RegionDamaged`]: pages without a frame, each counted and the first
    /// listed in `source`). Every other chunk exchanged was given back; this one is not as
    /// before and must never be freed to the kernel's page allocator nor reused: the
    /// caller quarantines `[phys, phys + 4 KiB << order)` (the rest of the pool region is
    /// the caller's again, as before).
    ///
    /// The chunk is damaged either by making it contiguous or by giving it back after
    /// another error. It takes precedence over a failed give-back: `not_given_back` counts
    /// the other chunks whose give-back failed meanwhile (they stay exchanged, as after
    /// [`InitError::GiveBack`]: usable memory, contiguous below the limit).
    #[error(
        "pool chunk {phys} (order {order}) is damaged and must be quarantined ({not_given_back} other chunks not given back): {source}"
    )]
    Damaged {
        /// The chunk.
        phys: PhysAddr,
        /// Its order.
        order: u32,
        /// Other chunks whose give-back failed (they stay exchanged, not damaged).
        not_given_back: u32,
        /// The platform's error, a [`PlatformError::RegionDamaged`].
        #[source]
        source: PlatformError,
    },
    /// A chunk could not be given back (after a halving, after an error, or in
    /// [`release`]); it stays exchanged (its pages mapped and translated, contiguous below
    /// the limit) and is the caller's to deal with. `failed` counts every chunk whose
    /// give-back failed, this one (the first) included; the others stay exchanged too.
    #[error(
        "giving back the chunk {phys} (order {order}) failed ({failed} chunks not given back): {source}"
    )]
    GiveBack {
        /// The first chunk that could not be given back.
        phys: PhysAddr,
        /// Its order.
        order: u32,
        /// Chunks not given back, this one included (at least 1).
        failed: u32,
        /// The platform's error.
        #[source]
        source: PlatformError,
    },
    /// The bounce pool refused the configuration (areas, storage).
    #[error("bounce pool: {0}")]
    Pool(#[source] swiotlb_core::Error),
    /// The engine refused the pool (a frame without translation, a segment not
    /// contiguous).
    #[error("engine: {0}")]
    Engine(#[source] EngineInitError),
}

/// What [`init`] returns: the engine over the new pool and the report, or the error.
pub type InitResult<P, M, S, A> = Result<(DmaEngine<P, M, S, A>, InitReport), InitError>;

/// How a failed chunk is handled.
enum Next {
    /// Try the same chunk again (a higher limit, or a smaller order).
    Retry,
    /// Give up on this chunk: halve the pool.
    Halve(PlatformError),
}

/// The fix-up loop's state.
struct Fixup<'p, P> {
    platform: &'p P,
    start: u64,
    end: u64,
    cursor: u64,
    bits: u32,
    cap: u32,
    max_bits: u32,
    report: InitReport,
}

impl<P: Platform> Fixup<'_, P> {
    /// The chunk order at the cursor.
    fn order(&self) -> u32 {
        let align = self.cursor.trailing_zeros().saturating_sub(XEN_PAGE_SHIFT);
        let remaining = self.end - self.cursor;
        let fits = (63 - remaining.leading_zeros()).saturating_sub(XEN_PAGE_SHIFT);
        align.min(fits).min(self.cap).max(SEGMENT_ORDER)
    }

    /// The bus address of the chunk if it can be kept as it is.
    fn usable_as_is(&self, phys: PhysAddr, order: u32) -> Option<BusAddr> {
        let n = 1u64 << order;
        let b0 = self.platform.pfn_to_bfn(phys.frame())?;
        for i in 1..n {
            let pfn = phys.frame().checked_add(i)?;
            if self.platform.pfn_to_bfn(pfn)?.as_u64() != b0.as_u64().checked_add(i)? {
                return None;
            }
        }
        let bus = b0.start();
        let last = bus.checked_last(XEN_PAGE_SIZE << order)?;
        let below = self.max_bits >= 64 || last.as_u64() >> self.max_bits == 0;
        (bus.is_aligned(SEGMENT) && below).then_some(bus)
    }

    /// Works on the chunk at the cursor. The error comes with the order of the chunk that
    /// failed last.
    fn step(&mut self) -> Result<(), (PlatformError, u32)> {
        let phys = PhysAddr::new(self.cursor);
        let mut order = self.order();
        if self.report.chunks.is_full() {
            return Err((
                PlatformError::Exhausted {
                    what: "chunk records (InitReport::chunks)",
                },
                order,
            ));
        }
        if let Some(bus) = self.usable_as_is(phys, order) {
            self.report.chunks.push(Chunk {
                phys,
                bus,
                order,
                address_bits: None,
            });
            self.cursor += XEN_PAGE_SIZE << order;
            return Ok(());
        }
        loop {
            let bytes = XEN_PAGE_SIZE << order;
            let min_bits = self.bits.max(order + XEN_PAGE_SHIFT);
            let r = if min_bits > self.max_bits {
                // The chunk cannot lie below the highest limit at all.
                Err(PlatformError::AddressBits {
                    bits: min_bits,
                    min: min_bits,
                    max: self.max_bits,
                })
            } else {
                self.report.create_calls += 1;
                // SAFETY: the chunk is part of the pool region the caller of `init` owns
                // exclusively, aligned to its size (its order never exceeds the cursor's
                // alignment).
                unsafe {
                    self.platform.create_contiguous_region_rising(
                        phys,
                        order,
                        min_bits,
                        self.max_bits,
                    )
                }
            };
            let err = match r {
                Ok((bus, bits)) if bus.is_aligned(SEGMENT) && bus.checked_last(bytes).is_some() => {
                    self.bits = bits;
                    self.report.chunks.push(Chunk {
                        phys,
                        bus,
                        order,
                        address_bits: Some(bits),
                    });
                    self.cursor += bytes;
                    return Ok(());
                }
                Ok(_) => {
                    // A platform that breaks its promise: give it back and stop.
                    // SAFETY: just made contiguous with this order.
                    let _ = unsafe { self.platform.destroy_contiguous_region(phys, order) };
                    self.report.destroy_calls += 1;
                    self.report.create_failures += 1;
                    return Err((
                        PlatformError::Misaligned {
                            addr: phys,
                            align: SEGMENT,
                        },
                        order,
                    ));
                }
                Err(e) => e,
            };
            if min_bits <= self.max_bits {
                self.report.create_failures += 1;
            }
            if err.damage().is_some() {
                // The chunk is not as before: no retry and no halving touches it again.
                return Err((err, order));
            }
            match self.classify(err, order) {
                // A smaller chunk (the cap went down).
                Next::Retry => order = self.order(),
                Next::Halve(e) => return Err((e, order)),
            }
        }
    }

    /// Decides what to do after `err` for a chunk of `order` that was tried at every limit
    /// from the current one to the highest.
    fn classify(&mut self, err: PlatformError, order: u32) -> Next {
        if let Some(max) = err.order_limit() {
            self.cap = self.cap.min(max.max(SEGMENT_ORDER));
        }
        // Xen refuses an order beyond the domain's limit with EPERM; no limit had room for
        // an extent this large (ENOMEM); or it cannot lie below the highest limit at all. A
        // smaller chunk may still fit; for a segment, the pool is halved.
        let smaller_may_fit = err.is_out_of_memory()
            || matches!(
                err,
                PlatformError::OrderTooLarge { .. }
                    | PlatformError::OrderRefused { .. }
                    | PlatformError::Hypercall { errno: EPERM, .. }
                    | PlatformError::AddressBits { .. }
            );
        if smaller_may_fit && order > SEGMENT_ORDER {
            self.cap = self.cap.min(order - 1);
            return Next::Retry;
        }
        Next::Halve(err)
    }

    /// Gives back every exchanged chunk that ends past `new_end`, going on after a failure,
    /// and records what could not be given back in `left`.
    fn give_back_from(&mut self, new_end: u64, left: &mut LeftBehind) {
        while let Some(c) = self.report.chunks.last().copied() {
            if c.phys.as_u64() + c.bytes() <= new_end {
                break;
            }
            self.report.chunks.pop();
            if c.is_exchanged() {
                self.report.destroy_calls += 1;
                // SAFETY: the chunk was made contiguous with this order by this fix-up and
                // is still owned exclusively by it.
                let r = unsafe { self.platform.destroy_contiguous_region(c.phys, c.order) };
                if let Err(source) = r {
                    left.add(c.phys, c.order, source);
                }
            }
        }
    }
}

/// What giving chunks back left behind: the first damaged chunk (a give-back that damaged
/// it, or the chunk whose creation did), the first chunk not given back, and how many
/// chunks were not given back.
#[derive(Default)]
struct LeftBehind {
    damaged: Option<(PhysAddr, u32, PlatformError)>,
    not_given_back: Option<(PhysAddr, u32, PlatformError)>,
    failed: u32,
}

impl LeftBehind {
    /// Records a chunk whose give-back failed with `source`.
    fn add(&mut self, phys: PhysAddr, order: u32, source: PlatformError) {
        if source.damage().is_some() && self.damaged.is_none() {
            self.damaged = Some((phys, order, source));
            return;
        }
        // A second damaged chunk can only be counted; it is not given back either.
        self.failed += 1;
        self.not_given_back.get_or_insert((phys, order, source));
    }

    /// The error naming what is left, if anything: a damaged chunk first (it must be
    /// quarantined), else the first chunk not given back.
    fn into_error(self) -> Option<InitError> {
        if let Some((phys, order, source)) = self.damaged {
            return Some(InitError::Damaged {
                phys,
                order,
                not_given_back: self.failed,
                source,
            });
        }
        self.not_given_back
            .map(|(phys, order, source)| InitError::GiveBack {
                phys,
                order,
                failed: self.failed,
                source,
            })
    }
}

/// Initialises swiotlb-xen over the pool region `[phys, phys + bytes)`: makes it
/// bus-contiguous per the [module policy](self), builds the [`BouncePool`] (slot metadata
/// in `storage`, copies through `mem`) and the [`DmaEngine`], and reports what it did.
///
/// # Errors
///
/// [`InitError::Misaligned`], [`InitError::BadSize`], [`InitError::TooSmall`],
/// [`InitError::Exhausted`], [`InitError::Damaged`], [`InitError::GiveBack`],
/// [`InitError::Pool`], [`InitError::Engine`]. After an error every chunk exchanged has been
/// given back, except the chunks counted by `GiveBack` (the first named) or by `Damaged`'s
/// `not_given_back`, and the rest of the region is as before, except the chunk named by
/// `Damaged`, which must be quarantined.
///
/// # Safety
///
/// - `[phys, phys + bytes)` is memory of the domain that the caller gives to the pool for
///   the engine's lifetime (and, after [`release`], back): no Rust reference to it, no
///   other user;
/// - `mem` reaches that memory and every buffer later mapped, by physical address, in the
///   platform's physical address space, as does `pages`;
/// - the translation of the region's frames changes only through this function (and
///   [`release`]) while the engine lives.
///
/// # Examples
///
/// A 4 MiB pool for an x86 PV dom0 on the `xen-sim` simulator (a kernel passes its own
/// tables, [`native::Hypercall`](crate::native), its memory and its page allocator), with 4
/// areas, one per CPU; and its teardown.
///
/// ```
/// use swiotlb_xen::init::{init, release, InitOptions};
/// use swiotlb_xen::x86_pv::X86PvPlatform;
/// use swiotlb_xen::{NoPageAllocator, Slot};
/// use xen_sim::{SimConfig, Xen};
///
/// let xen = Xen::new(SimConfig::x86_pv());
/// let guest = xen.pv_guest();
/// // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
/// let platform = unsafe {
///     let (p2m, m2p, base) = (guest.p2m(), guest.m2p(), guest.linear_base());
///     X86PvPlatform::new(p2m, m2p, base, xen.dom0(), guest.memory())
/// };
/// let pool = guest.alloc_aligned(1024, 1024); // 4 MiB, aligned to its size: one chunk
/// let slots: Vec<Slot> = (0..2048).map(|_| Slot::new()).collect(); // one per 2 KiB
/// let options = InitOptions::default().with_nareas(4);
/// // SAFETY: the pool's pages are the engine's alone; `guest.memory()` reaches all of dom0.
/// let (engine, report) = unsafe {
///     init(platform, guest.memory(), pool, 4 << 20, slots, NoPageAllocator, options)
/// }?;
/// assert_eq!((report.bytes, report.nslabs, report.halvings), (4 << 20, 2048, 0));
/// assert_eq!(report.chunks.len(), 1);
/// assert!(report.bus_top.as_u64() < 1 << 32);
/// assert_eq!(engine.pool_bus_top(), Some(report.bus_top));
///
/// // At teardown, with the engine gone, the exchanged chunks go back to Xen.
/// let (platform, _pool, _pages) = engine.into_parts();
/// // SAFETY: nothing uses the pool any more.
/// unsafe { release(&platform, &report) }?;
/// xen.check_invariants().expect("P2M, M2P and page tables agree");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub unsafe fn init<P, M, S, A>(
    platform: P,
    mem: M,
    phys: PhysAddr,
    bytes: usize,
    storage: S,
    pages: A,
    options: InitOptions,
) -> InitResult<P, M, S, A>
where
    P: Platform,
    M: PhysMemory,
    S: AsRef<[Slot]>,
    A: PageAllocator,
{
    if !phys.is_aligned(SEGMENT) {
        return Err(InitError::Misaligned {
            phys,
            align: SEGMENT,
        });
    }
    // CAST: usize fits in u64.
    let end = phys.checked_add(bytes as u64);
    let Some(end) = end.filter(|_| bytes != 0 && bytes.is_multiple_of(IO_TLB_SEGMENT_BYTES)) else {
        return Err(InitError::BadSize { bytes });
    };
    let min = options.min_bytes.max(IO_TLB_SEGMENT_BYTES);
    if bytes < min {
        return Err(InitError::TooSmall { bytes, min });
    }
    // Limits between a segment's (18 bits) and the address space's.
    let max_bits = options
        .max_address_bits
        .clamp(SEGMENT_ORDER + XEN_PAGE_SHIFT, 64);
    // The mutant of `cargo xtask xen-qemu mutants`: the caller's limit is ignored (no limit
    // at all), so the pool is not made reachable for a device with a smaller mask.
    #[cfg(swiotlb_mutant = "pool_above_mask")]
    let max_bits = {
        let _ = max_bits;
        64
    };
    let mut fx = Fixup {
        platform: &platform,
        start: phys.as_u64(),
        end: end.as_u64(),
        cursor: phys.as_u64(),
        #[cfg(not(swiotlb_mutant = "pool_above_mask"))]
        bits: SEGMENT_ORDER + XEN_PAGE_SHIFT,
        #[cfg(swiotlb_mutant = "pool_above_mask")]
        bits: max_bits,
        // A chunk must fit below the limit: the cap never exceeds `max_bits - 12`.
        cap: options
            .max_order
            .clamp(SEGMENT_ORDER, max_bits - XEN_PAGE_SHIFT),
        max_bits,
        report: InitReport {
            phys,
            requested_bytes: bytes,
            bytes,
            nslabs: 0,
            chunks: ArrayVec::new(),
            create_calls: 0,
            create_failures: 0,
            destroy_calls: 0,
            halvings: 0,
            bus_top: BusAddr::ZERO,
        },
    };
    while fx.cursor < fx.end {
        let Err((source, order)) = fx.step() else {
            continue;
        };
        let mut left = LeftBehind::default();
        if source.damage().is_some() {
            // The platform left the chunk at the cursor damaged: give back every chunk made
            // so far and name it, for the caller to quarantine (a give-back failing
            // meanwhile is counted, never hides the damage).
            left.damaged = Some((PhysAddr::new(fx.cursor), order, source));
            fx.give_back_from(fx.start, &mut left);
            return Err(left.into_error().expect("a damaged chunk is named"));
        }
        let size = fx.end - fx.start;
        let half = (size / 2) / SEGMENT * SEGMENT;
        // CAST: `min` is a usize.
        if half < min as u64 {
            let failed_at = PhysAddr::new(fx.cursor);
            fx.give_back_from(fx.start, &mut left);
            return Err(left.into_error().unwrap_or(InitError::Exhausted {
                min,
                address_bits: fx.max_bits,
                phys: failed_at,
                order,
                source,
            }));
        }
        let new_end = fx.start + half;
        fx.give_back_from(new_end, &mut left);
        if left.failed > 0 || left.damaged.is_some() {
            // Give back the rest too, then name what stayed.
            fx.give_back_from(fx.start, &mut left);
            return Err(left.into_error().expect("a failed give-back is named"));
        }
        fx.end = new_end;
        fx.report.halvings += 1;
        fx.cursor = fx
            .report
            .chunks
            .last()
            .map_or(fx.start, |c| c.phys.as_u64() + c.bytes());
    }
    let size = fx.end - fx.start;
    // CAST: `size` is at most the `bytes` asked for.
    let size = size as usize;
    fx.report.bytes = size;
    fx.report.nslabs = size / IO_TLB_SIZE;
    let nslabs = fx.report.nslabs;
    let mut report = fx.report;
    // SAFETY: the caller gives the region to the pool alone, and `mem` reaches it.
    let built = unsafe { BouncePool::new(mem, phys, nslabs, options.nareas, storage) }
        .map_err(InitError::Pool)
        .and_then(|pool| match check_pool(&platform, &pool) {
            Ok(_) => Ok(pool),
            Err(e) => Err(InitError::Engine(e)),
        });
    let pool = match built {
        Ok(p) => p,
        Err(e) => {
            // SAFETY: no pool and no engine exist; the chunks are unused.
            unsafe { release(&platform, &report) }?;
            return Err(e);
        }
    };
    // SAFETY: the caller's promises cover the engine's contract: pool, buffers and pages
    // are in the platform's space and the pool's translations no longer change.
    let engine =
        unsafe { DmaEngine::new(platform, Some(pool), pages) }.map_err(InitError::Engine)?;
    report.bus_top = engine.pool_bus_top().unwrap_or(BusAddr::ZERO);
    Ok((engine, report))
}

/// Gives back every exchanged chunk of a pool built by [`init`] (the teardown of a pool
/// whose engine is gone, or tests checking that nothing leaks). Goes on after a failing
/// chunk.
///
/// # Errors
///
/// [`InitError::GiveBack`] for the first chunk that could not be given back (counting them
/// all), or [`InitError::Damaged`] for the first a give-back left damaged (to quarantine).
///
/// # Safety
///
/// Nothing uses the pool any more (the engine is dropped or never maps again, no device
/// holds a bounce address), and `report` describes chunks of `platform` not given back
/// yet.
///
/// # Examples
///
/// ```
/// use swiotlb_xen::init::release;
/// # use swiotlb_xen::init::{init, InitOptions};
/// # use swiotlb_xen::x86_pv::X86PvPlatform;
/// # use swiotlb_xen::{NoPageAllocator, Slot};
/// # use xen_sim::{SimConfig, Xen};
/// #
/// # let xen = Xen::new(SimConfig::x86_pv());
/// # let guest = xen.pv_guest();
/// # // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
/// # let platform = unsafe {
/// #     let (p2m, m2p, base) = (guest.p2m(), guest.m2p(), guest.linear_base());
/// #     X86PvPlatform::new(p2m, m2p, base, xen.dom0(), guest.memory())
/// # };
/// # let pool = guest.alloc_aligned(1024, 1024);
/// # let slots: Vec<Slot> = (0..2048).map(|_| Slot::new()).collect();
/// # // SAFETY: the pool's pages are the engine's alone; `guest.memory()` reaches all of dom0.
/// # let (engine, report) = unsafe {
/// #     let options = InitOptions::default();
/// #     init(platform, guest.memory(), pool, 4 << 20, slots, NoPageAllocator, options)
/// # }?;
///
/// let frames_before = xen.free_frames();
/// let (platform, _pool, _pages) = engine.into_parts();
/// // SAFETY: the engine is gone and no device holds a bounce address.
/// unsafe { release(&platform, &report) }?;
/// // Xen got its contiguous frames back, in exchange for the pool's pages' frames.
/// assert_eq!(xen.free_frames(), frames_before);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub unsafe fn release<P: Platform>(platform: &P, report: &InitReport) -> Result<(), InitError> {
    let mut left = LeftBehind::default();
    for c in report.exchanged() {
        // SAFETY: the caller guarantees nobody uses the chunk, which `init` made contiguous
        // with this order.
        if let Err(source) = unsafe { platform.destroy_contiguous_region(c.phys, c.order) } {
            left.add(c.phys, c.order, source);
        }
    }
    left.into_error().map_or(Ok(()), Err)
}
