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
//! ## Example on the simulator
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
//! ## In a kernel: x86 PV
//!
//! What an x86_64 PV dom0 writes (the example compiles for `x86_64` targets): at boot, the
//! tables from `start_info` ([`x86_pv::boot`]), its memory, the platform and the pool, and the
//! engine in a `static`; then, in the drivers, streaming maps with their syncs and a coherent
//! allocation. `Once` is the cell of [The engine in a static](#the-engine-in-a-static).
//!
//! ```no_run
//! # #[cfg(target_arch = "x86_64")]
//! # mod kernel {
//! # mod once { include!("doc/once.rs"); }
//! # use once::Once;
//! # struct KernelPages;
//! # // SAFETY: hands out nothing.
//! # unsafe impl swiotlb_xen::PageAllocator for KernelPages {
//! #     fn alloc_pages(&self, _: u32) -> Option<PhysAddr> { None }
//! #     unsafe fn free_pages(&self, _: PhysAddr, _: u32) {}
//! # }
//! use core::sync::atomic::AtomicU64;
//! use swiotlb_xen::init::{init, InitOptions};
//! use swiotlb_xen::x86_pv::boot;
//! use swiotlb_xen::{native, Device, DmaAttrs, DmaDirection, DmaEngine, DmaError, DmaMask};
//! use swiotlb_xen::{IrqHook, LinearMap, PhysAddr, Slot};
//!
//! /// The kernel maps all of RAM here: pfn `p` at `LINEAR_BASE + p * 4096`.
//! const LINEAR_BASE: u64 = 0xffff_8880_0000_0000;
//! /// The bounce pool: 64 MiB, one `Slot` per 2 KiB.
//! const POOL_BYTES: usize = 64 << 20;
//! static SLOTS: [Slot; POOL_BYTES / 2048] = [const { Slot::new() }; POOL_BYTES / 2048];
//! /// The kernel's page allocator, for coherent allocations ("What your kernel provides").
//! static PAGES: KernelPages = KernelPages;
//!
//! type Memory = &'static LinearMap;
//! type Engine = DmaEngine<native::Platform<'static, Memory>, Memory, &'static [Slot], &'static KernelPages>;
//! /// The kernel's memory, described once and shared by the platform and the pool.
//! static MEMORY: Once<LinearMap> = Once::new();
//! static ENGINE: Once<Engine> = Once::new();
//!
//! fn irq_save() -> usize { /* pushfq; pop; cli */ 0 }
//! fn irq_restore(_flags: usize) { /* push; popfq */ }
//! /// Interrupt handlers map DMA too: every lock masks interrupts through this.
//! const IRQ: IrqHook = IrqHook::new(irq_save, irq_restore);
//! fn this_cpu() -> usize { /* from the per-CPU area */ 0 }
//!
//! /// At boot, on the boot CPU.
//! ///
//! /// # Safety
//! ///
//! /// `start_info` is the page Xen passed in `%rsi`; all of RAM is mapped at `LINEAR_BASE`;
//! /// `pool` is `POOL_BYTES` of RAM aligned to its size, given to the engine for good.
//! pub unsafe fn dma_init(start_info: *const u8, pool: PhysAddr, ncpus: usize) {
//!     // SAFETY: the caller's promise: `start_info` and the P2M it names are Xen's.
//!     let p2m: &'static [AtomicU64] = unsafe { boot::p2m_from_start_info(start_info) };
//!     let (m2p_start, m2p_entries) = boot::m2p_location(&native::Hypercall);
//!     // SAFETY: Xen maps the M2P read-only where it says.
//!     let m2p = unsafe { boot::m2p_at(m2p_start, m2p_entries) };
//!     let ram = p2m.len() * 4096;
//!     // SAFETY: RAM is mapped at LINEAR_BASE, and DMA buffers are copied only through it.
//!     let linear = unsafe { LinearMap::new(LINEAR_BASE as *mut u8, PhysAddr::new(0), ram) };
//!     let _ = MEMORY.set(linear);
//!     let memory = MEMORY.get().expect("just set");
//!     // SAFETY: the P2M is this domain's, the M2P Xen's, RAM is mapped at LINEAR_BASE.
//!     let platform = unsafe {
//!         native::Platform::new(p2m, m2p, LINEAR_BASE, native::Hypercall, memory)
//!     }
//!     .with_irq_hook(IRQ);
//!     let options = InitOptions::default().with_nareas(ncpus);
//!     // SAFETY: the pool is the engine's alone; `memory` reaches it and every DMA buffer.
//!     let built = unsafe { init(platform, memory, pool, POOL_BYTES, &SLOTS[..], &PAGES, options) };
//!     let (engine, _report) = built.expect("Xen has no contiguous memory below 4 GiB");
//!     let _ = ENGINE.set(engine.with_irq_hook(IRQ).with_cpu_hint(this_cpu));
//! }
//!
//! /// A driver's receive: the device writes `len` bytes at `buf`; the CPU looks at the header
//! /// before the transfer ends, then gets the whole buffer at the unmap.
//! pub fn receive(dev: &Device, buf: PhysAddr, len: usize) -> Result<(), DmaError> {
//!     let engine = ENGINE.get().expect("dma_init ran");
//!     let (dir, none) = (DmaDirection::FromDevice, DmaAttrs::empty());
//!     // SAFETY: `buf` is the driver's RAM, untouched by the CPU until the unmap.
//!     let bus = unsafe { engine.map_page(dev, buf, len, dir, none) }?;
//!     // ... hand `bus` to the device; on its first interrupt:
//!     engine.sync_single_for_cpu(dev, bus, 64, dir)?;
//!     // ... read the header at `buf`, then give the buffer back to the device:
//!     engine.sync_single_for_device(dev, bus, 64, dir)?;
//!     // ... on completion:
//!     engine.unmap_page(dev, bus, len, dir, none)
//! }
//!
//! /// A descriptor ring, shared with the device without syncs.
//! pub fn ring(dev: &Device) -> Result<(), DmaError> {
//!     let engine = ENGINE.get().expect("dma_init ran");
//!     let ring = engine.alloc_coherent(dev, 16 << 10)?;
//!     // ... the CPU writes at `ring.phys()`, the device at `ring.bus()`; at teardown:
//!     // SAFETY: neither the CPU nor the device uses the ring any more.
//!     unsafe { engine.free_coherent(dev, ring) }.map_err(|e| e.source)
//! }
//!
//! /// A 32-bit PCI device (devices are cache-coherent on x86).
//! pub fn nic() -> Device {
//!     Device::new(DmaMask::BITS_32)
//! }
//! # }
//! ```
//!
//! ## In a kernel: arm64
//!
//! What an aarch64 dom0 writes (the example compiles for `aarch64` targets): Xen maps it 1:1,
//! so its platform needs no tables, but the foreign table of the pages it grant-maps from
//! other domains, its cache maintenance for non-coherent devices, and what the device tree
//! says (the RAM banks, each device's mask and `dma-coherent`). A scatter-gather list for a
//! non-coherent device, with its syncs.
//!
//! ```no_run
//! # #[cfg(target_arch = "aarch64")]
//! # mod kernel {
//! # mod once { include!("doc/once.rs"); }
//! # use once::Once;
//! # struct KernelPages;
//! # // SAFETY: hands out nothing.
//! # unsafe impl swiotlb_xen::PageAllocator for KernelPages {
//! #     fn alloc_pages(&self, _: u32) -> Option<PhysAddr> { None }
//! #     unsafe fn free_pages(&self, _: PhysAddr, _: u32) {}
//! # }
//! use swiotlb_xen::arm64::{BoundedForeignTable, CacheOps, ProbeOptions};
//! use swiotlb_xen::init::{init, InitOptions};
//! use swiotlb_xen::{native, Device, DmaAttrs, DmaDirection, DmaEngine, DmaMask, IrqHook};
//! use swiotlb_xen::{LinearMap, PhysAddr, SgEntry, SgError, Slot};
//!
//! /// The kernel maps RAM here: physical `p` at `PAGE_OFFSET + p`.
//! const PAGE_OFFSET: u64 = 0xffff_0000_0000_0000;
//! const POOL_BYTES: usize = 64 << 20;
//! static SLOTS: [Slot; POOL_BYTES / 2048] = [const { Slot::new() }; POOL_BYTES / 2048];
//! static PAGES: KernelPages = KernelPages;
//!
//! fn irq_save() -> usize { /* mrs daif; msr daifset, #3 */ 0 }
//! fn irq_restore(_daif: usize) { /* msr daif */ }
//! const IRQ: IrqHook = IrqHook::new(irq_save, irq_restore);
//! fn this_cpu() -> usize { /* from tpidr_el1 */ 0 }
//!
//! /// Pages other domains granted, as the backends map them (`record_grant_maps`).
//! static FOREIGN: BoundedForeignTable<4096> =
//!     BoundedForeignTable::new().with_irq_hook(IRQ).with_cpu_hint(this_cpu);
//!
//! /// Cache maintenance of dom0's own memory by physical address, over the linear map.
//! struct KernelCache;
//! impl CacheOps for KernelCache {
//!     fn clean(&self, phys: PhysAddr, len: usize) { /* dc cvac per line; dsb sy */ }
//!     fn invalidate(&self, phys: PhysAddr, len: usize) { /* dc ivac per line; dsb sy */ }
//!     fn clean_invalidate(&self, phys: PhysAddr, len: usize) { /* dc civac per line; dsb sy */ }
//! }
//!
//! type Platform = native::Platform<'static, LinearMap, KernelCache, native::ForeignStorage<4096>>;
//! type Engine = DmaEngine<Platform, &'static LinearMap, &'static [Slot], &'static KernelPages>;
//! static MEMORY: Once<LinearMap> = Once::new();
//! static ENGINE: Once<Engine> = Once::new();
//!
//! /// At boot, on the boot CPU.
//! ///
//! /// # Safety
//! ///
//! /// `ram` is the device tree's memory bank (base, size), mapped at `PAGE_OFFSET + base`, in
//! /// which every DMA buffer lies; `pool` is `POOL_BYTES` of it, below 4 GiB and aligned to its
//! /// size, given to the engine for good.
//! pub unsafe fn dma_init(ram: (u64, u64), pool: PhysAddr, ncpus: usize) {
//!     let base = (PAGE_OFFSET + ram.0) as *mut u8;
//!     // SAFETY: the caller's promise: the bank is mapped there.
//!     let _ = MEMORY.set(unsafe { LinearMap::new(base, PhysAddr::new(ram.0), ram.1 as usize) });
//!     let memory = MEMORY.get().expect("just set");
//!     // SAFETY: the trap is this domain's; Xen says whether it maps dom0 1:1 and has
//!     // GNTTABOP_cache_flush; `memory` reaches the RAM where regions are made.
//!     let platform = unsafe {
//!         native::Platform::probe(&native::Hypercall, &FOREIGN, KernelCache, memory,
//!                                 ProbeOptions::initial_domain())
//!     }
//!     .expect("XENVER_get_features");
//!     let options = InitOptions::default().with_nareas(ncpus);
//!     // SAFETY: the pool is the engine's alone; `memory` reaches it and every DMA buffer.
//!     let built = unsafe { init(platform, memory, pool, POOL_BYTES, &SLOTS[..], &PAGES, options) };
//!     let (engine, _report) = built.expect("a pool below 4 GiB");
//!     let _ = ENGINE.set(engine.with_irq_hook(IRQ).with_cpu_hint(this_cpu));
//! }
//!
//! /// A device as the device tree describes it: `dma-ranges` give the mask, and without
//! /// `dma-coherent` it does not snoop the CPU's caches.
//! pub fn device(mask_bits: u32, dma_coherent: bool) -> Device {
//!     Device::new(DmaMask::from_bits(mask_bits).unwrap_or(DmaMask::BITS_32))
//!         .with_coherent(dma_coherent)
//! }
//!
//! /// A block write from two buffers: cleaned to memory for the device (or bounced, for a
//! /// foreign page without GNTTABOP_cache_flush, or a buffer above the device's mask).
//! pub fn write_blocks(dev: &Device, a: PhysAddr, b: PhysAddr) -> Result<(), SgError> {
//!     let engine = ENGINE.get().expect("dma_init ran");
//!     let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
//!     let mut sg = [SgEntry::new(a, 4096), SgEntry::new(b, 512)];
//!     // SAFETY: both buffers are the driver's RAM (or mapped grants), not written until the
//!     // unmap.
//!     unsafe { engine.map_sg(dev, &mut sg, dir, none) }?;
//!     // ... hand each `dma_address`/`dma_length` to the device; the CPU rewrites `b` between
//!     // two commands:
//!     engine.sync_sg_for_cpu(dev, &sg[1..], dir)?;
//!     // ... write at `b`, then:
//!     engine.sync_sg_for_device(dev, &sg[1..], dir)?;
//!     // ... on completion:
//!     engine.unmap_sg(dev, &sg, dir, none)
//! }
//! # }
//! ```
//!
//! ## The engine in a static
//!
//! Drivers reach the engine from anywhere, interrupt handlers included, so a kernel keeps it in
//! a `static` set once at boot. `std::sync::OnceLock` is not there in `no_std`; a once-cell
//! from `core`'s atomics is a few lines (the examples above use this one):
//!
//! ```
//! # use swiotlb_xen::init::{init, InitOptions};
//! # use swiotlb_xen::x86_pv::X86PvPlatform;
//! # use swiotlb_xen::{DmaEngine, NoPageAllocator, Slot};
//! # use xen_sim::{Domain, SimConfig, SimMemory, Xen};
//! #
//! use core::cell::UnsafeCell;
//! use core::mem::MaybeUninit;
//! use core::sync::atomic::{AtomicU8, Ordering};
//!
//! /// A value set once (at boot) and read from then on, on any CPU.
//! pub struct Once<T> {
//!     state: AtomicU8,
//!     value: UnsafeCell<MaybeUninit<T>>,
//! }
//!
//! const EMPTY: u8 = 0;
//! const WRITING: u8 = 1;
//! const READY: u8 = 2;
//!
//! // SAFETY: the one caller that moves `state` from EMPTY to WRITING writes `value`, and
//! // readers see it only after READY is stored (Release) and loaded (Acquire); it never changes
//! // again, so sharing the cell shares `&T` (`T: Sync`) of a value made on another CPU
//! // (`T: Send`).
//! unsafe impl<T: Send + Sync> Sync for Once<T> {}
//!
//! impl<T> Once<T> {
//!     /// An empty cell, for a `static`.
//!     pub const fn new() -> Self {
//!         Self {
//!             state: AtomicU8::new(EMPTY),
//!             value: UnsafeCell::new(MaybeUninit::uninit()),
//!         }
//!     }
//!
//!     /// Sets the value, or gives it back if the cell was set already.
//!     pub fn set(&self, value: T) -> Result<(), T> {
//!         let claim =
//!             self.state
//!                 .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Relaxed);
//!         if claim.is_err() {
//!             return Err(value);
//!         }
//!         // SAFETY: this call alone claimed the empty cell, and no reader looks before READY.
//!         unsafe { (*self.value.get()).write(value) };
//!         self.state.store(READY, Ordering::Release);
//!         Ok(())
//!     }
//!
//!     /// The value, once set.
//!     pub fn get(&self) -> Option<&T> {
//!         // SAFETY: READY is stored after the value is written, and the value never changes.
//!         (self.state.load(Ordering::Acquire) == READY)
//!             .then(|| unsafe { (*self.value.get()).assume_init_ref() })
//!     }
//! }
//!
//! // On the simulator, whose machine lives as long as the program here:
//! type Platform = X86PvPlatform<'static, Domain, SimMemory>;
//! static ENGINE: Once<DmaEngine<Platform, SimMemory, Vec<Slot>>> = Once::new();
//!
//! let xen: &'static Xen = Box::leak(Box::new(Xen::new(SimConfig::x86_pv())));
//! let guest = Box::leak(Box::new(xen.pv_guest()));
//! // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
//! let platform = unsafe {
//!     Platform::new(guest.p2m(), guest.m2p(), guest.linear_base(), xen.dom0(), guest.memory())
//! };
//! let pool = guest.alloc_aligned(256, 256);
//! let slots: Vec<Slot> = (0..512).map(|_| Slot::new()).collect();
//! let options = InitOptions::default();
//! // SAFETY: the pool's pages are the engine's alone; `guest.memory()` reaches all of dom0.
//! let (engine, _) = unsafe {
//!     init(platform, guest.memory(), pool, 1 << 20, slots, NoPageAllocator, options)
//! }?;
//! assert!(ENGINE.set(engine).is_ok());
//! assert!(ENGINE.get().is_some_and(|e| e.pool_bus_top().is_some()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## What your kernel provides
//!
//! - **[`PhysMemory`]**: how the CPU reaches physical memory, for the bounce copies and for
//!   zeroing regions. [`LinearMap`] is one over one mapped range (a kernel's direct map);
//!   a kernel with several RAM banks implements the trait over its own map. [`BufferMemory`]
//!   adds copies through a caller's pointer ([`DmaEngine::map_buffer`]); `LinearMap` has it.
//!   A borrowed `PhysMemory` is one, so one `static` serves the platform and the pool.
//! - **[`PageAllocator`]**: the kernel's pages for [`DmaEngine::alloc_coherent`]
//!   (`alloc_pages`, `free_pages`: zeroed, naturally aligned power-of-two blocks), `pfn_valid`
//!   (which frames are the domain's own RAM, for cache maintenance of direct mappings), and the
//!   records of its blocks: `set_exchanged` and `block_state` answering a [`BlockState`]
//!   (Linux's `PageXenRemapped`), which [`DmaEngine::free_coherent_at`] needs to free from the
//!   addresses alone (virtio-drivers' `dma_dealloc` does); `quarantine` takes a block the
//!   platform damaged out of use. [`NoPageAllocator`] has no pages.
//! - **[`CacheOps`](arm64::CacheOps)** (arm64): cache maintenance of dom0's own memory by
//!   physical address for non-coherent devices: `clean` (`dc cvac`), `invalidate`
//!   (`dc ivac`, cleaning partial lines first) and `clean_invalidate` (`dc civac`, for
//!   ranges the engine cannot check against a mapping: a direct mapping's unmap and sync),
//!   each followed by `dsb sy`. [`NoCacheOps`](arm64::NoCacheOps) if every device is
//!   coherent: maintenance of local pages is then refused, not skipped. Foreign pages are
//!   maintained through Xen (`GNTTABOP_cache_flush`).
//! - **The foreign table's storage** (arm64): a
//!   [`BoundedForeignTable<N>`](arm64::BoundedForeignTable) in a `static` holds `N` entries,
//!   each a run of consecutive grant-mapped pages; `N` bounds the grant maps recorded at once
//!   (a map that does not fit is undone at once, not left untracked). Name the platform's `S`
//!   with [`BoundedForeignStorage<N>`](arm64::BoundedForeignStorage) (`native::ForeignStorage`
//!   on aarch64). With `alloc`, `UnboundedForeignTable` grows on the heap. The backends hand
//!   their `GNTTABOP_map_grant_ref` and `unmap_grant_ref` results to
//!   [`record_grant_maps`](arm64::ForeignTable::record_grant_maps) and
//!   [`clear_grant_unmaps`](arm64::ForeignTable::clear_grant_unmaps).
//! - **Slot storage**: one [`Slot`] per 2 KiB of pool, so a pool of `N` bytes needs
//!   `N / 2048` slots (512 for the smallest pool, 1 MiB; 32768 for Linux's default 64 MiB), each
//!   `size_of::<Slot>()` bytes: a `static [Slot; N / 2048]` (`[const { Slot::new() }; _]`),
//!   a `&'static [Slot]`, or any `AsRef<[Slot]>` at least that long. The pool itself is a
//!   multiple of 256 KiB, aligned to 256 KiB; aligned to its size, [`init`](init::init) makes
//!   it contiguous in one exchange.
//! - **The interrupt hook** [`IrqHook`]: the kernel's `local_irq_save` and
//!   `local_irq_restore`, given to the engine ([`DmaEngine::with_irq_hook`], for the pool's
//!   locks), to the x86 PV platform (`X86PvPlatform::with_irq_hook`) and to the arm64 foreign
//!   table (`with_irq_hook`, `const` for a `static`). See the next section.
//! - **Optionally** the CPU number ([`DmaEngine::with_cpu_hint`]), which spreads bounces over
//!   the pool's areas ([`InitOptions::with_nareas`](init::InitOptions::with_nareas)) and the
//!   engine's counters over their shards; on arm64 the foreign table's `with_cpu_hint` too,
//!   which puts each CPU's lookups on its own reader count.
//!
//! ## Interrupt context and locking
//!
//! Every operation takes `&self` and may run on many CPUs at once. The locks are spin locks
//! ([`swiotlb_core::lock`]): the pool has one per area, the arm64 foreign table a
//! writer-preferring reader-writer lock with per-CPU reader counts, the x86 PV platform one around
//! `create_contiguous`/`destroy_contiguous` (held across `XENMEM_exchange`, as Linux's
//! `xen_reservation_lock`). No copy and no cache maintenance runs under a pool lock.
//!
//! A spin lock taken in an interrupt handler deadlocks if the interrupted code on the same CPU
//! holds it, so every lock masks local interrupts through the kernel's [`IrqHook`] while held
//! (Linux's `spin_lock_irqsave`). With the hook set on the engine (its pool), the foreign table
//! and the x86 PV platform:
//!
//! - **interrupt-safe**: `map_page`, `unmap_page`, `sync_single_for_cpu`/`_for_device`,
//!   `map_sg`, `unmap_sg`, `sync_sg_for_cpu`/`_for_device`, `map_buffer`, `unmap_buffer`,
//!   `dma_supported`, `max_mapping_size`, `stats`; x86 PV translations take no lock at all. One
//!   condition: an interrupt handler must not unmap a mapping whose sync it may have
//!   interrupted on the same CPU (the unmap waits for the sync's copy); the DMA API forbids a
//!   sync racing the unmap of its mapping anyway.
//! - **process context**, as in Linux: `alloc_coherent`, `free_coherent`, `free_coherent_at`
//!   (they call the kernel's page allocator, and on x86 PV make hypercalls under the platform's
//!   lock), [`init`](init::init) and [`release`](init::release).
//!
//! Without a masking hook (the default, [`IrqHook::NONE`]) no entry point may be called from
//! interrupt context. The details, and the loom models that check them:
//! <https://docs.rs/swiotlb-core/latest/swiotlb_core/lock/index.html#interrupt-context>.
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
    Bfn, BouncePool, BusAddr, Device, DmaAttrs, DmaDirection, DmaEngine, DmaMask, IrqHook,
    LinearMap, Pfn, PhysAddr, PhysMemory, Platform, PlatformError, Slot,
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
        /// `M` the kernel's [`PhysMemory`] first), built with
        /// `unsafe { Platform::new(..) }` from what the architecture's boot gives. What
        /// follows `M`, and what `new` takes, differ because the platforms do:
        ///
        /// | | x86 PV (this module) | arm64 |
        /// |---|---|---|
        /// | alias | `Platform<'a, M>` | `Platform<'a, M, C, S>`: `C` the cache hook, `S` the foreign table's storage |
        /// | `new` takes | the P2M, the M2P, the linear map's base, `Hypercall` by value, `M` by value | `&Hypercall`, `&'a` foreign table, `C`, `&'a M`, a configuration (or `probe` asks Xen) |
        /// | from | `start_info` ([`x86_pv::boot`]) | the device tree (RAM banks, `dma-coherent`) and Xen's features |
        ///
        /// `M` by value here and by reference on arm64: pass `&MEMORY` here too (a
        /// borrowed [`PhysMemory`] is one) and both take the same
        /// `static`, which [`init`](init::init) can take as well.
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
        /// `M` the kernel's [`PhysMemory`] first), built with
        /// `unsafe { Platform::new(..) }` (or `Platform::probe`, which asks Xen for the
        /// configuration). What follows `M`, and what `new` takes, differ because the
        /// platforms do:
        ///
        /// | | x86 PV | arm64 (this module) |
        /// |---|---|---|
        /// | alias | `Platform<'a, M>` | `Platform<'a, M, C, S>`: `C` the cache hook, `S` the foreign table's storage ([`ForeignStorage<N>`](crate::native::ForeignStorage)) |
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

#[cfg(test)]
mod tests {
    use std::string::String;
    use std::vec::Vec;

    /// The front page: the `//!` lines of this file, without their prefix.
    fn front_page() -> String {
        include_str!("lib.rs")
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.strip_prefix("//! ").unwrap_or(&l[3..]))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Markdown with the hidden lines of its code blocks left out, as a reader sees it.
    fn visible(markdown: &str) -> String {
        let mut in_code = false;
        let mut out = Vec::new();
        for line in markdown.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if !(in_code && (line == "#" || line.starts_with("# "))) {
                out.push(line);
            }
        }
        out.join("\n")
    }

    /// The contents of the Rust code blocks of `markdown`.
    fn rust_blocks(markdown: &str) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut current: Option<Vec<&str>> = None;
        for line in markdown.lines() {
            match (&mut current, line.starts_with("```")) {
                (None, true) if line.starts_with("```rust") => current = Some(Vec::new()),
                (Some(lines), true) => {
                    blocks.push(lines.join("\n"));
                    current = None;
                }
                (Some(lines), false) => lines.push(line),
                _ => {}
            }
        }
        blocks
    }

    #[test]
    fn the_front_page_shows_the_once_cell_its_kernel_examples_include() {
        let once = include_str!("doc/once.rs").trim_end();
        assert!(
            front_page().contains(once),
            "the once-cell of \"The engine in a static\" differs from src/doc/once.rs"
        );
    }

    #[test]
    fn the_readme_examples_are_the_front_page_examples() {
        let page = visible(&front_page());
        let blocks = rust_blocks(include_str!("../README.md"));
        assert_eq!(
            blocks.len(),
            4,
            "the simulator's, x86 PV's, arm64's and the static's"
        );
        for block in blocks {
            let first = block.lines().next().unwrap_or_default();
            assert!(
                page.contains(&block),
                "a README example (starting `{first}`) is not the front page's"
            );
        }
    }
}
