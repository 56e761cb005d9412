//! # swiotlb-bench
//!
//! Benchmarks of the `swiotlb-core` bounce pool and the `swiotlb-xen` facade against what a
//! kernel developer would otherwise use:
//!
//! - [`linux`]: a straightforward port of Linux's swiotlb slot allocator (search, free-count
//!   lists, areas, bounce), which is both the performance baseline and the test oracle;
//! - [`peers`]: `buddy_system_allocator` and `bitmap-allocator`, each turned into a bounce
//!   pool doing the same copies;
//! - a plain `memcpy` of the same size, the floor no bounce mapping can beat.
//!
//! [`host::HostMemory`] stands in for physical memory on the host, and [`harness`] holds what
//! every measurement shares (the fragmented fill, the [`harness::BenchPool`] view of a pool,
//! the CPU-time timing loop). [`compare`] measures the pools in turns and checks that each
//! really bounces the data; [`fixup`] and [`sim`] count the Xen pool initialisation's
//! hypercalls on `xen-sim` (Linux's scheme and the facade's); [`growth`] counts and times
//! pools grown and given back at run time there, and the latency with grown pools alive;
//! [`foreign`] times arm64's
//! foreign table against a `BTreeMap`; [`suite`] runs it all for `cargo xtask bench`, with
//! [`report`] (JSON lines with `serde_json`, each figure's median, min and max over the runs;
//! tables) and [`svg`] (plots with `plotters`, the spread drawn). [`mapbench`] is Linux's
//! `dma_map_benchmark`, the `dma-map-bench` binary. `benches/pool.rs` runs the pool cases
//! under criterion; `tests/oracle.rs` checks the real pool against the Linux port.
//!
//! ```
//! use swiotlb_bench::harness::linear_map;
//! use swiotlb_bench::host::HostMemory;
//! use swiotlb_bench::linux::LinuxPool;
//! use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr};
//!
//! let mem = HostMemory::new(PhysAddr::new(0x8000_0000), 2 << 20, 4096).unwrap();
//! // SAFETY: the map does not outlive `mem`.
//! let map = unsafe { linear_map(&mem) };
//! // SAFETY: the first MiB of `mem` is given to the pool alone.
//! let pool = unsafe { LinuxPool::new(&map, mem.base(), 512, 1) }.unwrap();
//! let orig = PhysAddr::new(0x8010_0010);
//! let dev = Device::new(DmaMask::BITS_32);
//! // SAFETY: single-threaded; the original lies in `mem` outside the pool.
//! unsafe {
//!     mem.write(orig, b"hello").unwrap();
//!     let m = pool
//!         .map_single(&dev, orig, 5, 0, DmaDirection::ToDevice, DmaAttrs::empty())
//!         .unwrap();
//!     let mut seen = [0; 5];
//!     mem.read(m.tlb_addr, &mut seen).unwrap();
//!     assert_eq!(&seen, b"hello");
//!     pool.unmap_single(&dev, m.tlb_addr, 5, DmaDirection::ToDevice, DmaAttrs::empty())
//!         .unwrap();
//! }
//! assert_eq!(pool.used(), 0);
//! ```

pub mod compare;
pub mod fixup;
pub mod foreign;
pub mod growth;
pub mod harness;
pub mod host;
pub mod linux;
pub mod mapbench;
pub mod peers;
pub mod report;
pub mod rng;
pub mod sim;
pub mod suite;
pub mod svg;
