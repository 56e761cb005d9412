//! # swiotlb-xen-arm64
//!
//! The arm64 dom0 platform of swiotlb-xen: [`swiotlb_core::Platform`] for a domain that Xen
//! maps 1:1 (guest physical = machine for its own memory), as Linux's `arch/arm/xen` does.
//!
//! What it provides:
//!
//! - [`ForeignTable`]: the foreign-mapping table (pfn, mfn, number of pages) for the pages
//!   dom0 grant-maps from other domains; sorted, O(log n) lookups under a reader-writer spin
//!   lock, bounded without a heap ([`BoundedForeignTable`], whose storage type
//!   [`BoundedForeignStorage`] names the platform's `S`) or, with the `alloc` feature,
//!   unbounded (`UnboundedForeignTable`); overlapping entries are refused.
//! - [`ForeignTable::record_grant_maps`] / [`ForeignTable::clear_grant_unmaps`]: recording
//!   the results of `GNTTABOP_map_grant_ref` and clearing after `GNTTABOP_unmap_grant_ref`,
//!   unmapping at once what cannot be recorded (the XSA-361 lesson).
//! - [`Arm64Platform`]: `pfn_to_bfn` (identity unless foreign), the bounce decision (foreign
//!   page, non-coherent device, no `GNTTABOP_cache_flush`), cache maintenance per 4 KiB frame
//!   (local frames through the kernel's [`CacheOps`], foreign frames through
//!   `GNTTABOP_cache_flush`, in Linux's direction rules), contiguous regions as the 1:1
//!   identity. [`Arm64Config::probe`] asks Xen for `XENFEAT_direct_mapped` and probes the
//!   cache flush with a zeroed request.
//! - [`NativeHypercall`] (aarch64 only): the `hvc #0xEA1` trap.
//!
//! What it does not do: it does not map grants itself (the kernel's backend drivers do, and
//! hand the results over), it does not support non-direct-mapped domains beyond refusing to
//! translate (their devices must sit behind an IOMMU), and it has no
//! `GNTTAB_CACHE_SOURCE_GREF` path (Xen does not implement it).
//!
//! Everything but the trap is plain Rust, built and tested on any host against `xen-sim`.
//!
//! ## Example
//!
//! ```
//! use swiotlb_core::{BusAddr, Device, DmaMask, Pfn, PhysAddr, PhysMemory, Platform};
//! use swiotlb_xen_arm64::{
//!     Arm64Config, Arm64Platform, BoundedForeignTable, DomainMapping, NoCacheOps,
//! };
//! # struct NoHypervisor;
//! # // SAFETY: never reads or writes memory; every call fails with ENOSYS.
//! # unsafe impl xen_abi::Hypercall for NoHypervisor {
//! #     unsafe fn hypercall(&self, _op: u32, _args: [u64; 5]) -> i64 { -38 }
//! # }
//! # struct NoMemory;
//! # // SAFETY: touches no memory at all (this example never zeroes a region).
//! # unsafe impl PhysMemory for NoMemory {
//! #     unsafe fn copy(&self, _: PhysAddr, _: PhysAddr, _: usize) {}
//! #     unsafe fn fill(&self, _: PhysAddr, _: u8, _: usize) {}
//! # }
//!
//! static FOREIGN: BoundedForeignTable<4096> = BoundedForeignTable::new();
//!
//! let xen = NoHypervisor; // `NativeHypercall` in a real aarch64 dom0
//! let config = Arm64Config::new(DomainMapping::Direct, true);
//! // SAFETY: the example's "hypervisor" and "memory" are inert and no device sees the
//! // answers; a kernel vouches here that Xen maps it 1:1 and that its `PhysMemory` reaches its
//! // RAM.
//! let platform = unsafe { Arm64Platform::new(&xen, &FOREIGN, NoCacheOps, &NoMemory, config) };
//!
//! // A grant-mapped page at dom0 frame 0x48000 whose machine frame is 0x7a123.
//! // SAFETY: in a real kernel this follows a successful GNTTABOP_map_grant_ref.
//! unsafe { FOREIGN.insert(Pfn::new(0x48000), swiotlb_core::Bfn::new(0x7a123), 1) }.unwrap();
//! assert_eq!(platform.pfn_to_bfn(Pfn::new(0x48000)).map(|b| b.as_u64()), Some(0x7a123));
//! assert_eq!(platform.pfn_to_bfn(Pfn::new(0x60000)).map(|b| b.as_u64()), Some(0x60000));
//!
//! // With GNTTABOP_cache_flush, a foreign page is not bounced even for a non-coherent device.
//! let dev = Device::new(DmaMask::FULL).with_coherent(false);
//! let phys = PhysAddr::new(0x4800_0010);
//! let bus = BusAddr::new(0x7a12_3010);
//! assert!(!platform.needs_bounce(&dev, phys, bus));
//! ```

// `NativeHypercall` exists on aarch64 only; elsewhere the crate documentation links to its page
// on docs.rs (built for `aarch64-unknown-none`).
#![cfg_attr(target_arch = "aarch64", doc = "[`NativeHypercall`]: NativeHypercall")]
#![cfg_attr(
    not(target_arch = "aarch64"),
    doc = "[`NativeHypercall`]: https://docs.rs/swiotlb-xen-arm64/latest/swiotlb_xen_arm64/struct.NativeHypercall.html"
)]
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The loom build is a test configuration, not something a reader of the API chooses.
#![cfg_attr(docsrs, doc(auto_cfg(hide(loom))))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
extern crate std;

mod cache;
pub mod foreign;
mod grant;
mod hcall;
mod platform;
#[cfg(test)]
mod testutil;

#[cfg(target_arch = "aarch64")]
mod native;

pub use cache::{CacheOps, NoCacheOps};
pub use foreign::{
    BoundedForeignStorage, BoundedForeignTable, EntryStorage, ForeignEntry, ForeignTable,
    ForeignTableError, ForeignTableView,
};
#[cfg(feature = "alloc")]
pub use foreign::{UnboundedForeignStorage, UnboundedForeignTable};
pub use grant::{GrantMapSummary, GrantUnmapSummary, INVALID_GRANT_HANDLE};
#[cfg(target_arch = "aarch64")]
pub use native::NativeHypercall;
pub use platform::{
    Arm64Config, Arm64InitError, Arm64Platform, DomainMapping, MAX_CONTIG_ORDER, ProbeOptions,
};
