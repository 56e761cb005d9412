//! # swiotlb-core
//!
//! A `no_std` software IO TLB: the address types, the DMA vocabulary, the slot-based bounce
//! pool and the platform hooks that Xen (or any other platform) implements.
//!
//! - [`addr`]: [`PhysAddr`], [`BusAddr`], [`Pfn`], [`Bfn`], never silently mixed.
//! - [`dma`]: [`DmaDirection`], [`DmaAttrs`], [`DmaMask`], [`Device`].
//! - [`pool`]: [`BouncePool`], Linux's swiotlb pool: 2 KiB slots in 128-slot segments, areas
//!   with their own locks, `min_align_mask`/`alloc_align_mask`/segment-boundary rules,
//!   copy-in at every map, partial syncs, clamped copies, statistics, typed errors.
//! - [`hooks`]: the [`PhysMemory`] and [`Platform`] traits a kernel or a platform implements;
//!   [`LinearMap`] is a ready `PhysMemory` over one contiguous mapped region.
//! - [`lock`]: the spin locks of the workspace (the pool's areas, the arm64 foreign table,
//!   the x86 PV platform) and [`IrqHook`], through which they mask interrupts; it lists
//!   which entry points are interrupt-safe.
//!
//! This crate knows nothing of Xen. The Xen translation and contiguity hooks live in
//! `swiotlb-xen-x86-pv` and `swiotlb-xen-arm64`; users normally depend on the `swiotlb-xen`
//! facade. `docs/semantics.md` in the repository compares every pool rule with Linux's.
//!
//! ## Example
//!
//! A pool over a heap buffer, reached through [`LinearMap`]; the buffer also holds the
//! original the "driver" maps.
//!
//! ```
//! use swiotlb_core::{BouncePool, Device, DmaAttrs, DmaDirection, DmaMask, LinearMap, PhysAddr, Slot};
//!
//! const NSLABS: usize = 128; // One segment: 256 KiB.
//! let len = NSLABS * 2048 + 4096;
//! let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
//! // SAFETY: `base..base + len` is one live allocation, freed at the end after the pool is
//! // dropped, and no reference to it exists meanwhile.
//! let mem = unsafe { LinearMap::new(base, PhysAddr::new(0x10_0000), len) };
//! let slots: Vec<Slot> = (0..NSLABS).map(|_| Slot::new()).collect();
//! // SAFETY: the first NSLABS * 2 KiB of the region belong to the pool alone.
//! let pool = unsafe { BouncePool::new(mem, PhysAddr::new(0x10_0000), NSLABS, 1, slots) }?;
//!
//! // The original buffer sits right after the pool; fill it as the CPU would.
//! let orig = pool.end();
//! // SAFETY: the 4 KiB after the pool are inside the allocation and not referenced.
//! unsafe { core::ptr::write_bytes(base.add(NSLABS * 2048), 0xab, 100) };
//!
//! let dev = Device::new(DmaMask::BITS_32).with_min_align_mask(0xfff);
//! // SAFETY: `orig..orig + 100` stays valid and unreferenced until the unmap.
//! let tlb = unsafe {
//!     pool.map(&dev, orig, 100, 0, DmaDirection::Bidirectional, DmaAttrs::empty(), 0)
//! }?;
//! assert!(pool.contains(tlb));
//! assert_eq!(tlb.as_u64() & 0xfff, orig.as_u64() & 0xfff); // min_align_mask kept.
//! assert_eq!(pool.stats().used, 1);
//!
//! pool.unmap(&dev, tlb, 100, DmaDirection::Bidirectional, DmaAttrs::empty())?;
//! assert_eq!(
//!     pool.unmap(&dev, tlb, 100, DmaDirection::Bidirectional, DmaAttrs::empty()),
//!     Err(swiotlb_core::Error::NotMapped { addr: tlb }), // Double unmap is caught.
//! );
//! drop(pool);
//! // SAFETY: `base` came from `Box::into_raw` of `len` bytes and the pool is gone.
//! drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(base, len)) });
//! # Ok::<(), swiotlb_core::Error>(())
//! ```
//!
//! ## Features
//!
//! - `alloc`: `BouncePool::new_boxed`, which allocates the slot metadata on the heap.
//!   Without it the caller provides the storage (an array such as
//!   `[const { Slot::new() }; N]`, a `&'static [Slot]`, or any `AsRef<[Slot]>`).
//! - `std`: implies `alloc`; needed by the `pool-demo` example.
//!
//! The crate is `no_std` and needs no heap by default; it builds for `x86_64-unknown-none`
//! and `aarch64-unknown-none`.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The loom build is a test configuration, not something a reader of the API chooses.
#![cfg_attr(docsrs, doc(auto_cfg(hide(loom))))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod addr;
pub mod dma;
pub mod engine;
pub mod errno;
pub mod error;
pub mod hooks;
pub mod linear;
pub mod lock;
pub mod pool;

pub use addr::{Bfn, BusAddr, Pfn, PhysAddr, XEN_PAGE_SHIFT, XEN_PAGE_SIZE};
pub use dma::{Device, DmaAttrs, DmaDirection, DmaMask};
pub use engine::{
    CoherentAlloc, DmaEngine, DmaError, EngineStats, NoPageAllocator, PageAllocator, SgEntry,
    SgError,
};
pub use error::{Error, FreeSpace, FullCause};
pub use hooks::{DamagedBy, PhysMemory, Platform, PlatformError, Stranded, StrandedFrame};
pub use linear::LinearMap;
pub use lock::IrqHook;
pub use pool::{
    AreaReport, BouncePool, DeviceLive, LiveReport, PoolReport, Slot, Stats, max_mapping_size,
    slots_with_ages,
};
