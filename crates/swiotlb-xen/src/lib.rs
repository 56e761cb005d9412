//! # swiotlb-xen
//!
//! Xen DMA bounce buffering for Rust kernels: the `dma_map_ops` that Linux's
//! `drivers/xen/swiotlb-xen.c` gives an x86 PV dom0 and an arm64 1:1 dom0, as a `no_std`
//! library with no heap.
//!
//! A Xen guest without an IOMMU hands devices **bus (machine) addresses**. Its memory is
//! contiguous pseudo-physically but not on the bus (x86 PV), it may hold other domains'
//! pages (grant maps), and a 32-bit device cannot reach most of it. This crate maps each
//! DMA buffer directly when the device can reach it as it is, and otherwise **bounces** it
//! through a pool of low, bus-contiguous memory, with the copies, cache maintenance and
//! error handling Linux does, and without Linux's `BUG_ON`s.
//!
//! - [`DmaEngine`] (from `swiotlb-core`): `map_page`, `unmap_page`, `map_sg`, `unmap_sg`,
//!   `sync_single_for_cpu`/`_for_device`, `sync_sg_for_cpu`/`_for_device`,
//!   `alloc_coherent`, `free_coherent`, `dma_supported`, `max_mapping_size`; and for
//!   callers that keep only addresses and pointers (virtio-drivers' `Hal`, see the
//!   `swiotlb-xen-virtio` crate): `free_coherent_at`, `map_buffer`, `unmap_buffer`.
//! - [`init`]: Xen's pool initialisation (Linux's `xen_swiotlb_fixup`, with fewer
//!   hypercalls): the pool made bus-contiguous below 4 GiB in large chunks, halved on
//!   failure down to 1 MiB, and a report of what it took.
//! - [`native`]: the platform of the architecture being built, chosen by `cfg_if!`
//!   (x86_64: x86 PV, aarch64: arm64); both [`x86_pv`] and [`arm64`] stay usable on any host,
//!   for tests against the `xen-sim` simulator.
//!
//! ## Example
//!
//! An x86 PV dom0 on the simulator (a real kernel passes its P2M, Xen's M2P, its linear map
//! and [`native::Hypercall`] instead): a 1 MiB pool made contiguous below 4 GiB, a 32-bit
//! device, and a buffer it cannot reach, bounced and verified byte for byte.
//!
//! ```
//! use swiotlb_xen::init::{init, InitOptions};
//! use swiotlb_xen::x86_pv::X86PvPlatform;
//! use swiotlb_xen::{DmaAttrs, DmaDirection, DmaMask, NoPageAllocator, Slot};
//! use xen_sim::{SimConfig, Xen};
//!
//! let xen = Xen::new(SimConfig::x86_pv());
//! let guest = xen.pv_guest();
//! // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
//! let platform = unsafe {
//!     X86PvPlatform::new(guest.p2m(), guest.m2p(), guest.linear_base(), xen.dom0(), guest.memory())
//! };
//!
//! let pool = guest.alloc_aligned(256, 256); // 1 MiB, aligned to its size
//! let storage: Vec<Slot> = (0..512).map(|_| Slot::new()).collect();
//! // SAFETY: the pool pages are given to the engine alone; `guest.memory()` reaches all of
//! // dom0's memory.
//! let (engine, report) = unsafe {
//!     init(platform, guest.memory(), pool, 1 << 20, storage, NoPageAllocator, InitOptions::default())
//! }?;
//! assert_eq!(report.bytes, 1 << 20);
//! // One 1 MiB chunk, exchanged below the lowest address limit that has room for it
//! // (Linux exchanges every 256 KiB segment on its own).
//! assert_eq!(report.chunks.len(), 1);
//! assert!(report.bus_top.as_u64() < 1 << 32);
//!
//! let dev = xen.device(DmaMask::BITS_32, true);
//! assert!(engine.dma_supported(&dev.core_device(), DmaMask::BITS_32));
//! let buf = guest.alloc_pages(4);
//! guest.fill_pattern(buf, 10_000, 7);
//! // SAFETY: the buffer is the simulator's memory, reached by no Rust reference.
//! let bus = unsafe {
//!     engine.map_page(&dev.core_device(), buf, 10_000, DmaDirection::ToDevice, DmaAttrs::empty())
//! }?;
//! let seen = dev.read(bus, 10_000).expect("the device reaches the bus address");
//! assert!(seen.iter().enumerate().all(|(i, &b)| b == xen_sim::pattern_byte(7, i)));
//! engine.unmap_page(&dev.core_device(), bus, 10_000, DmaDirection::ToDevice, DmaAttrs::empty())?;
//! xen.check_invariants().expect("P2M, M2P and page tables agree");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Platforms
//!
//! | target | [`native::Platform`] | notes |
//! |---|---|---|
//! | `x86_64` | [`x86_pv::X86PvPlatform`] | 64-bit PV guests (dom0, or a domU with passthrough): P2M/M2P translation, `XENMEM_exchange` for contiguous memory; devices are cache-coherent |
//! | `aarch64` | [`arm64::Arm64Platform`] | 1:1 (direct-mapped) dom0: identity translation except grant-mapped foreign pages; cache maintenance through the kernel's hook and `GNTTABOP_cache_flush` |
//! | other | — | `compile_error!` |
//!
//! HVM and PVH guests do not need this crate (their devices see guest-physical addresses,
//! or sit behind an IOMMU).
//!
//! The engine is generic over the platform hooks, so any [`Platform`] works; the native
//! selection only names the types a kernel of that architecture uses.
//!
//! ## Feature flags
//!
//! - `alloc`: heap-backed helpers: `BouncePool::new_boxed` and arm64's
//!   `UnboundedForeignTable`. Off by default; nothing in the data path allocates.
//!
//! The crate and both platform crates build for `x86_64-unknown-none` and
//! `aarch64-unknown-none`.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(test)]
extern crate std;

pub mod init;

pub use swiotlb_core;
pub use swiotlb_core::engine::{
    BlockState, BounceReason, BufferMemory, CoherentAlloc, CoherentFreeError, DmaError,
    EngineInitError, EngineStats, NoPageAllocator, PageAllocator, SgEntry, SgError,
};
pub use swiotlb_core::{
    Bfn, BouncePool, BusAddr, Device, DmaAttrs, DmaDirection, DmaEngine, DmaMask, LinearMap, Pfn,
    PhysAddr, PhysMemory, Platform, PlatformError, Slot,
};
/// The arm64 dom0 platform (`swiotlb-xen-arm64`), available on every host.
pub use swiotlb_xen_arm64 as arm64;
/// The x86 PV platform (`swiotlb-xen-x86-pv`), available on every host.
pub use swiotlb_xen_x86_pv as x86_pv;

cfg_if::cfg_if! {
    if #[cfg(target_arch = "x86_64")] {
        /// The platform of the architecture being built: x86 PV on `x86_64`.
        ///
        /// Every architecture's `native` module defines the same names: `ARCH`, `Hypercall`
        /// (the trap) and `Platform<'a, M, ..>` (the platform type with the native trap,
        /// `M` the kernel's [`PhysMemory`](crate::PhysMemory) first), built with
        /// `unsafe { Platform::new(..) }` from what the architecture's boot gives. What
        /// follows `M`, and what `new` takes, differ because the platforms do:
        ///
        /// | | x86 PV (this module) | arm64 |
        /// |---|---|---|
        /// | alias | `Platform<'a, M>` | `Platform<'a, M, C, S>`: `C` the cache hook, `S` the foreign table's storage |
        /// | `new` takes | the P2M, the M2P, the linear map's base, `Hypercall` by value, `M` by value | `&Hypercall`, `&'a` foreign table, `C`, `&'a M`, a configuration (or `probe` asks Xen) |
        /// | from | `start_info` ([`x86_pv::boot`](crate::x86_pv::boot)) | the device tree (RAM banks, `dma-coherent`) and Xen's features |
        ///
        /// `M` by value here and by reference on arm64: pass `&MEMORY` here too (a
        /// borrowed [`PhysMemory`](crate::PhysMemory) is one) and both take the same
        /// `static`, which [`init`](crate::init::init) can take as well.
        ///
        /// ```no_run
        /// use core::sync::atomic::AtomicU64;
        /// use swiotlb_xen::native;
        /// use swiotlb_xen::x86_pv::boot;
        /// use swiotlb_xen::LinearMap;
        ///
        /// /// The kernel's direct map of all RAM (Linux's `PAGE_OFFSET`).
        /// const LINEAR_BASE: u64 = 0xffff_8880_0000_0000;
        ///
        /// /// # Safety
        /// ///
        /// /// `start_info` is the page Xen passed in `%rsi`; `memory` reaches all of RAM at
        /// /// the physical addresses of the P2M's frames.
        /// unsafe fn platform(start_info: *const u8, memory: &'static LinearMap)
        ///     -> native::Platform<'static, &'static LinearMap>
        /// {
        ///     // SAFETY: the caller's promise; the M2P is where Xen says.
        ///     let p2m: &'static [AtomicU64] = unsafe { boot::p2m_from_start_info(start_info) };
        ///     let (m2p_start, m2p_entries) = boot::m2p_location(&native::Hypercall);
        ///     // SAFETY: Xen maps the M2P read-only there.
        ///     let m2p = unsafe { boot::m2p_at(m2p_start, m2p_entries) };
        ///     // SAFETY: the tables are this domain's and Xen's, RAM is mapped at LINEAR_BASE.
        ///     unsafe { native::Platform::new(p2m, m2p, LINEAR_BASE, native::Hypercall, memory) }
        /// }
        /// ```
        #[cfg_attr(docsrs, doc(cfg(target_arch = "x86_64")))]
        pub mod native {
            /// The architecture's name.
            pub const ARCH: &str = "x86-pv";
            /// The native trap: `syscall` into Xen.
            pub use swiotlb_xen_x86_pv::NativeHypercall as Hypercall;
            /// The x86 PV platform with the native trap; `M` is the kernel's
            /// [`PhysMemory`](crate::PhysMemory) (a `&'a` reference to a shared one works).
            pub type Platform<'a, M> = swiotlb_xen_x86_pv::X86PvPlatform<'a, Hypercall, M>;
        }
    } else if #[cfg(target_arch = "aarch64")] {
        /// The platform of the architecture being built: arm64 dom0 on `aarch64`.
        ///
        /// Every architecture's `native` module defines the same names: `ARCH`, `Hypercall`
        /// (the trap) and `Platform<'a, M, ..>` (the platform type with the native trap,
        /// `M` the kernel's [`PhysMemory`](crate::PhysMemory) first), built with
        /// `unsafe { Platform::new(..) }` (or `Platform::probe`, which asks Xen for the
        /// configuration). What follows `M`, and what `new` takes, differ because the
        /// platforms do:
        ///
        /// | | x86 PV | arm64 (this module) |
        /// |---|---|---|
        /// | alias | `Platform<'a, M>` | `Platform<'a, M, C, S>`: `C` the cache hook, `S` the foreign table's storage ([`ForeignStorage<N>`](ForeignStorage)) |
        /// | `new` takes | the P2M, the M2P, the linear map's base, `Hypercall` by value, `M` by value | `&Hypercall`, `&'a` foreign table, `C`, `&'a M`, a configuration (or `probe` asks Xen) |
        /// | from | `start_info` | the device tree (RAM banks, `dma-coherent`) and Xen's features |
        ///
        /// ```no_run
        /// use swiotlb_xen::arm64::{BoundedForeignTable, CacheOps, ProbeOptions};
        /// use swiotlb_xen::{native, LinearMap, PhysAddr};
        ///
        /// /// The kernel's cache maintenance by physical address (`dc cvac`, `dc ivac`,
        /// /// `dc civac` over its linear map, then `dsb sy`).
        /// struct KernelCache;
        /// impl CacheOps for KernelCache {
        ///     fn clean(&self, phys: PhysAddr, len: usize) { /* dc cvac ... */ }
        ///     fn invalidate(&self, phys: PhysAddr, len: usize) { /* dc ivac ... */ }
        ///     fn clean_invalidate(&self, phys: PhysAddr, len: usize) { /* dc civac ... */ }
        /// }
        ///
        /// /// Grant-mapped pages of other domains, recorded by the backends.
        /// static FOREIGN: BoundedForeignTable<1024> = BoundedForeignTable::new();
        ///
        /// type Platform = native::Platform<'static, LinearMap, KernelCache, native::ForeignStorage<1024>>;
        ///
        /// /// # Safety
        /// ///
        /// /// `memory` reaches all of dom0's RAM (the device tree's banks) at their
        /// /// physical addresses.
        /// unsafe fn platform(memory: &'static LinearMap) -> Platform {
        ///     // SAFETY: the trap is this domain's; the mapping comes from Xen's features.
        ///     let probed = unsafe {
        ///         native::Platform::probe(&native::Hypercall, &FOREIGN, KernelCache, memory,
        ///                                 ProbeOptions::initial_domain())
        ///     };
        ///     probed.expect("XENVER_get_features")
        /// }
        /// ```
        #[cfg_attr(docsrs, doc(cfg(target_arch = "aarch64")))]
        pub mod native {
            /// The architecture's name.
            pub const ARCH: &str = "arm64";
            /// The native trap: `hvc #0xEA1`.
            pub use swiotlb_xen_arm64::NativeHypercall as Hypercall;
            /// The storage of a bounded foreign table of `N` entries, to name `S` with.
            pub use swiotlb_xen_arm64::BoundedForeignStorage as ForeignStorage;
            /// The arm64 platform with the native trap; `M` is the kernel's
            /// [`PhysMemory`](crate::PhysMemory) (borrowed for `'a`), `C` its cache hook,
            /// `S` the foreign table's storage.
            pub type Platform<'a, M, C, S> =
                swiotlb_xen_arm64::Arm64Platform<'a, Hypercall, C, M, S>;
        }
    } else {
        compile_error!(
            "swiotlb-xen supports x86_64 (x86 PV guests) and aarch64 (arm64 dom0) only"
        );
    }
}
