//! # swiotlb-xen-virtio
//!
//! A [`virtio_drivers::Hal`] over the swiotlb-xen DMA engine ([`DmaEngine`] of
//! `swiotlb-core`, re-exported by the `swiotlb-xen` facade), so that virtio-drivers' device
//! drivers (`VirtIOBlk`, `VirtIONet`, ...) run on Xen: on an x86 PV dom0, whose devices see
//! machine addresses that are not its pseudo-physical ones, and on an arm64 dom0, where a
//! non-coherent device or a grant-mapped page needs cache maintenance or bouncing.
//!
//! [`SwiotlbHal<K>`] implements the `Hal` methods on the engine:
//!
//! | `Hal` method | engine |
//! |---|---|
//! | `dma_alloc` | [`DmaEngine::alloc_coherent`] (exchanged below the device's coherent mask when needed), CPU pointer from [`SwiotlbKernel::phys_to_virt`] |
//! | `dma_dealloc` | [`DmaEngine::free_coherent_at`], from the bus address and the CPU pointer's physical address (checked: a double free returns an error) |
//! | `share` | [`DmaEngine::map_buffer`]: direct when the device reaches the buffer, bounced otherwise (the engine decides) |
//! | `unshare` | [`DmaEngine::unmap_buffer`]: copies a bounced buffer back for `DeviceToDriver` |
//! | `mmio_phys_to_virt` | [`SwiotlbKernel::mmio_phys_to_virt`] |
//!
//! ## What the kernel implements
//!
//! `Hal`'s methods have no `self`, so everything the adapter needs comes from a type the
//! kernel names, through associated functions: the [`SwiotlbKernel`] trait. It gives the
//! engine (a `&'static`, built once at boot, e.g. in a once-cell), the [`Device`] that
//! describes the virtio device (its DMA masks, whether it is cache-coherent), and the
//! kernel's address translation (its linear map: [`SwiotlbKernel::phys_to_virt`] and
//! [`SwiotlbKernel::virt_to_phys`]) and MMIO mapping. The driver then uses
//! `SwiotlbHal<TheKernel>` as its `Hal`. A kernel with two virtio devices of different
//! masks implements the trait for two types.
//!
//! The engine's pool memory must implement [`BufferMemory`] (the engine copies bounced
//! buffers through virtio-drivers' own pointers; [`LinearMap`](swiotlb_core::LinearMap)
//! does), and its page allocator must keep the records of
//! [`PageAllocator::block_state`], without which
//! `dma_dealloc` refuses to free.
//!
//! The crate is `no_std`, needs no heap (virtio-drivers is used without its `alloc`
//! feature) and builds for `x86_64-unknown-none` and `aarch64-unknown-none`.
//!
//! ## Example
//!
//! A kernel without Xen (1:1 translation, one contiguous RAM region reached through
//! [`LinearMap`](swiotlb_core::LinearMap)); a Xen kernel names its platform instead (the
//! facade's `native::Platform`).
//!
//! ```no_run
//! use core::ptr::NonNull;
//! use std::sync::OnceLock;
//! use swiotlb_core::engine::{DmaEngine, PageAllocator};
//! use swiotlb_core::{Bfn, Device, DmaMask, LinearMap, Pfn, PhysAddr, Platform, PlatformError, Slot};
//! use swiotlb_xen_virtio::{SwiotlbHal, SwiotlbKernel};
//!
//! /// Bus addresses are physical addresses.
//! struct Identity;
//! // SAFETY: the identity is this machine's translation, and RAM is bus-contiguous.
//! unsafe impl Platform for Identity {
//!     fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn> { Some(Bfn::new(pfn.as_u64())) }
//!     fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> { Some(Pfn::new(bfn.as_u64())) }
//!     unsafe fn create_contiguous_region(&self, phys: PhysAddr, _: u32, _: u32)
//!         -> Result<swiotlb_core::BusAddr, PlatformError> {
//!         Ok(swiotlb_core::BusAddr::new(phys.as_u64()))
//!     }
//!     unsafe fn destroy_contiguous_region(&self, _: PhysAddr, _: u32) -> Result<(), PlatformError> {
//!         Ok(())
//!     }
//! }
//!
//! /// The kernel's page allocator, which keeps `block_state` records.
//! struct Pages;
//! # // SAFETY: a stub for the example; a kernel's allocator upholds the contract.
//! # unsafe impl PageAllocator for Pages {
//! #     fn alloc_pages(&self, _: u32) -> Option<PhysAddr> { None }
//! #     unsafe fn free_pages(&self, _: PhysAddr, _: u32) {}
//! # }
//!
//! type Engine = DmaEngine<Identity, LinearMap, &'static [Slot], Pages>;
//! /// Set once at boot, after the pool is built.
//! static ENGINE: OnceLock<Engine> = OnceLock::new();
//! /// The virtio device: 64-bit DMA, cache-coherent.
//! static VIRTIO: Device = Device::new(DmaMask::FULL);
//! /// The kernel's linear map: physical address `p` at virtual `LINEAR + p`.
//! const LINEAR: usize = 0xffff_8000_0000_0000;
//!
//! struct Kernel;
//! // SAFETY: one engine for ever, the linear map's translations both ways, MMIO mapped by
//! // the kernel's page tables.
//! unsafe impl SwiotlbKernel for Kernel {
//!     type Platform = Identity;
//!     type Memory = LinearMap;
//!     type Slots = &'static [Slot];
//!     type Pages = Pages;
//!
//!     fn engine() -> &'static Engine {
//!         ENGINE.get().expect("the DMA engine is set up at boot")
//!     }
//!     fn device() -> &'static Device {
//!         &VIRTIO
//!     }
//!     fn phys_to_virt(phys: PhysAddr, _len: usize) -> NonNull<u8> {
//!         // CAST: physical addresses of RAM fit usize on a 64-bit kernel.
//!         let addr = LINEAR + phys.as_u64() as usize;
//!         NonNull::new(core::ptr::with_exposed_provenance_mut(addr)).expect("not null")
//!     }
//!     fn virt_to_phys(buf: NonNull<[u8]>) -> Option<PhysAddr> {
//!         // CAST: usize fits in u64.
//!         let addr = buf.cast::<u8>().as_ptr().addr();
//!         addr.checked_sub(LINEAR).map(|p| PhysAddr::new(p as u64))
//!     }
//!     unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
//!         // CAST: as above; the kernel maps MMIO in its linear map too.
//!         Self::phys_to_virt(PhysAddr::new(paddr), 0)
//!     }
//! }
//!
//! // The driver: virtio-drivers' block driver over the kernel's transport.
//! type Blk<T> = virtio_drivers::device::blk::VirtIOBlk<SwiotlbHal<Kernel>, T>;
//! ```
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

use core::marker::PhantomData;
use core::ptr::NonNull;

use swiotlb_core::engine::{BufferMemory, DmaEngine, DmaError, PageAllocator};
use swiotlb_core::{BusAddr, Device, DmaAttrs, DmaDirection, PhysAddr, Platform, Slot};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE};

pub use virtio_drivers;

/// What a kernel gives [`SwiotlbHal`]: its DMA engine, the virtio device's description and
/// its address translation, all through associated functions (virtio-drivers' [`Hal`] has no
/// `self`).
///
/// # Implementation safety
///
/// - [`engine`](Self::engine) always returns the same engine; its pool memory reaches the
///   pool and its platform translates the kernel's memory (as [`DmaEngine::new`] requires).
///   Its page allocator keeps [`PageAllocator::block_state`] records (else `dma_dealloc`
///   fails and leaks).
/// - [`device`](Self::device) always describes the device that the drivers using
///   `SwiotlbHal<Self>` drive (its masks, coherence, IOMMU).
/// - [`phys_to_virt`](Self::phys_to_virt) returns, for the first byte of a coherent
///   allocation of the engine's page allocator, a pointer through which the CPU reads and
///   writes those `len` bytes (the kernel's linear map), aligned as `phys` is within a 4 KiB
///   page, valid until the allocation is freed, and used by nobody but the driver given it.
/// - [`virt_to_phys`](Self::virt_to_phys) returns `Some(p)` only if the CPU reaches
///   `[p, p + buf.len())` of the kernel's own memory at `buf` (the buffer is in the linear
///   map, physically contiguous), and for a pointer from `phys_to_virt` the address it was
///   given; `None` otherwise (the buffer is then bounced).
/// - [`mmio_phys_to_virt`](Self::mmio_phys_to_virt) upholds the implementation safety of
///   [`Hal::mmio_phys_to_virt`].
pub unsafe trait SwiotlbKernel: 'static {
    /// The engine's platform (the facade's `native::Platform` on real Xen).
    type Platform: Platform + 'static;
    /// The engine's pool memory.
    type Memory: BufferMemory + 'static;
    /// The engine's slot storage.
    type Slots: AsRef<[Slot]> + 'static;
    /// The engine's page allocator.
    type Pages: PageAllocator + 'static;

    /// The engine, built once at boot.
    fn engine() -> &'static DmaEngine<Self::Platform, Self::Memory, Self::Slots, Self::Pages>;

    /// The virtio device as the engine sees it: DMA mask, coherent mask, cache coherence,
    /// IOMMU.
    fn device() -> &'static Device;

    /// Where the CPU reaches `len` bytes of the kernel's memory at physical address `phys`
    /// (the linear map).
    fn phys_to_virt(phys: PhysAddr, len: usize) -> NonNull<u8>;

    /// The physical address of a buffer the CPU reaches at `buf`, if it lies in the kernel's
    /// linear map; `None` otherwise.
    fn virt_to_phys(buf: NonNull<[u8]>) -> Option<PhysAddr>;

    /// Maps `size` bytes of MMIO at `paddr` for the driver: [`Hal::mmio_phys_to_virt`].
    ///
    /// # Safety
    ///
    /// As for [`Hal::mmio_phys_to_virt`]: `paddr` and `size` describe a valid MMIO region.
    unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> NonNull<u8>;

    /// Called when `share` or `unshare` fails, which virtio-drivers' [`Hal`] cannot report
    /// (the pool is full, a cache operation failed, the bus address is not a live
    /// mapping). The default panics with the engine's error; a kernel may log more first.
    fn dma_failed(op: HalOp, err: DmaError) -> ! {
        panic!("swiotlb-xen-virtio: {op:?} failed: {err}")
    }
}

/// The [`Hal`] operation that failed, for [`SwiotlbKernel::dma_failed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalOp {
    /// [`Hal::share`].
    Share,
    /// [`Hal::unshare`].
    Unshare,
}

/// `errno` values [`SwiotlbHal::dma_dealloc`](Hal::dma_dealloc) returns (negated): the
/// handle was refused (not a live allocation, wrong bus address, a CPU pointer outside the
/// linear map, an allocator without records).
pub const EINVAL: i32 = 22;
/// `errno` value (negated) when the platform could not give an exchanged region back; the
/// allocation is still live.
pub const EIO: i32 = 5;

/// virtio-drivers' [`Hal`] over the swiotlb-xen DMA engine of kernel `K`.
///
/// A type, never a value: the driver names it (`VirtIOBlk<SwiotlbHal<K>, T>`).
#[derive(Debug)]
pub struct SwiotlbHal<K>(PhantomData<fn() -> K>);

/// The engine's direction for virtio-drivers' buffer direction.
#[must_use]
pub const fn dma_direction(direction: BufferDirection) -> DmaDirection {
    match direction {
        BufferDirection::DriverToDevice => DmaDirection::ToDevice,
        BufferDirection::DeviceToDriver => DmaDirection::FromDevice,
        BufferDirection::Both => DmaDirection::Bidirectional,
    }
}

// SAFETY: `dma_alloc` returns the engine's coherent allocations (zeroed, contiguous and
// reachable by the device at the returned bus address, which is never 0) through the
// kernel's linear map, which `SwiotlbKernel` promises is a valid, unaliased, page-aligned
// pointer for a page-aligned allocation; `share` returns the bus address at which the
// device reaches the buffer or its bounce copy, and `unshare` copies a bounce back through
// the driver's pointer before freeing it.
unsafe impl<K: SwiotlbKernel> Hal for SwiotlbHal<K> {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (u64, NonNull<u8>) {
        let _ = direction;
        const FAILED: (u64, NonNull<u8>) = (0, NonNull::dangling());
        let Some(size) = pages.checked_mul(PAGE_SIZE) else {
            return FAILED;
        };
        let (engine, dev) = (K::engine(), K::device());
        let Ok(alloc) = engine.alloc_coherent(dev, size) else {
            return FAILED;
        };
        let (phys, bus) = (alloc.phys(), alloc.bus());
        if bus == BusAddr::ZERO {
            // virtio-drivers takes bus address 0 for a failure and would never free it.
            // SAFETY: just allocated, seen by nobody.
            let _ = unsafe { engine.free_coherent(dev, alloc) };
            return FAILED;
        }
        // The record is not kept: `dma_dealloc` frees from the addresses, which the engine
        // checks against the page allocator's records.
        let _ = alloc;
        (bus.as_u64(), K::phys_to_virt(phys, size))
    }

    unsafe fn dma_dealloc(paddr: u64, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let Some(size) = pages.checked_mul(PAGE_SIZE) else {
            return -EINVAL;
        };
        let Some(phys) = K::virt_to_phys(NonNull::slice_from_raw_parts(vaddr, size)) else {
            return -EINVAL;
        };
        // SAFETY: virtio-drivers' caller promises the memory is no longer used (its `Dma` is
        // being dropped); the engine checks that the addresses are a live allocation.
        let r =
            unsafe { K::engine().free_coherent_at(K::device(), phys, BusAddr::new(paddr), size) };
        match r {
            Ok(()) => 0,
            Err(DmaError::CoherentDestroy { .. }) => -EIO,
            Err(_) => -EINVAL,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> NonNull<u8> {
        // SAFETY: the caller's promise, passed on.
        unsafe { K::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> u64 {
        let phys = K::virt_to_phys(buffer);
        // SAFETY: virtio-drivers keeps the buffer valid and untouched by the device's other
        // users until `unshare`, and accessed by no other thread during this call; `phys`
        // is the kernel's translation of it.
        let r = unsafe {
            K::engine().map_buffer(
                K::device(),
                buffer,
                phys,
                dma_direction(direction),
                DmaAttrs::empty(),
            )
        };
        match r {
            Ok(bus) => bus.as_u64(),
            Err(err) => K::dma_failed(HalOp::Share, err),
        }
    }

    unsafe fn unshare(paddr: u64, buffer: NonNull<[u8]>, direction: BufferDirection) {
        // SAFETY: `paddr` comes from `share` of this buffer (virtio-drivers' promise), which
        // nobody else accesses during this call.
        let r = unsafe {
            K::engine().unmap_buffer(
                K::device(),
                BusAddr::new(paddr),
                buffer,
                dma_direction(direction),
                DmaAttrs::empty(),
            )
        };
        if let Err(err) = r {
            K::dma_failed(HalOp::Unshare, err);
        }
    }
}
