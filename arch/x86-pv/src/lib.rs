//! # swiotlb-xen-x86-pv
//!
//! The x86 PV platform of swiotlb-xen: [`X86PvPlatform`] implements
//! [`swiotlb_core::Platform`] for a 64-bit paravirtualised Xen guest (typically dom0).
//!
//! - **Translation.** Pseudo-physical frames (pfn) differ from machine frames (mfn, the bus
//!   frames devices use). The kernel's P2M (`start_info.mfn_list`) translates pfn to mfn
//!   with Linux's encodings ([`p2m`]: INVALID = all ones, FOREIGN = bit 63, IDENTITY = bit
//!   62); Xen's M2P translates back, with the round-trip check that rejects foreign frames
//!   (`bfn_to_local_pfn`). [`X86PvPlatform::is_bus_contiguous`] checks every 4 KiB frame.
//! - **Contiguous regions.** `create_contiguous_region` zeroes the region, unmaps it
//!   (multicalls of `update_va_mapping`), exchanges its `2^order` frames for one extent
//!   below `2^address_bits` (`XENMEM_exchange`), maps the pages to the new frames (the last
//!   entry flushes the TLB on all CPUs) and updates the P2M. `destroy_contiguous_region`
//!   is the reverse exchange. Every failure is rolled back; see [`X86PvError`] for the state
//!   each error leaves.
//! - **No heap, no order cap of 2 MiB.** The exchange's frame lists are the region's own
//!   P2M entries (Xen reads them from guest memory), so any order Xen allows works with
//!   only a 32-entry multicall batch on the stack. The limit Xen sets for the domain
//!   (`memop-max-order`, 18 for a dom0 by default) is learnt from its `EPERM` and
//!   remembered ([`X86PvPlatform::max_order`]).
//! - **Boot.** [`boot`] finds the tables: the P2M from `start_info`, the M2P where
//!   `XENMEM_machphys_mapping` says (or Linux's fixed fallback).
//! - **The trap.** [`NativeHypercall`] issues `syscall` (only on `x86_64`); the simulator in
//!   `xen-sim` implements the same [`xen_abi::Hypercall`] trait for tests.
//!
//! Not supported: 32-bit PV guests, auto-translated guests (PVH/HVM use the identity
//! translation and need no exchange), and the kernel's own P2M maintenance (ballooning,
//! grant-map P2M updates), which stays with the kernel.
//!
//! The protocol, the rollbacks and the no-heap design are described in the project's
//! `docs/x86-pv.md`.
//!
//! ## Example
//!
//! ```
//! use core::sync::atomic::AtomicU64;
//! use swiotlb_core::{Bfn, PhysAddr, PhysMemory, Pfn, Platform};
//! use swiotlb_xen_x86_pv::{X86PvPlatform, p2m};
//!
//! struct NoXen;
//! // SAFETY: performs no hypercall and touches no memory.
//! unsafe impl xen_abi::Hypercall for NoXen {
//!     unsafe fn hypercall(&self, _op: u32, _args: [u64; 5]) -> i64 {
//!         -38 // ENOSYS
//!     }
//! }
//! struct NoMemory;
//! // SAFETY: touches no memory; this example never zeroes a region.
//! unsafe impl PhysMemory for NoMemory {
//!     unsafe fn copy(&self, _dst: PhysAddr, _src: PhysAddr, _len: usize) {}
//!     unsafe fn fill(&self, _dst: PhysAddr, _byte: u8, _len: usize) {}
//! }
//!
//! // pfn 0 -> mfn 7, pfn 1 -> mfn 3, pfn 2 is a foreign frame, pfn 3 is invalid.
//! let p2m_table = [7, 3, p2m::foreign_frame(9), p2m::INVALID_P2M_ENTRY].map(AtomicU64::new);
//! let mut m2p_raw = [p2m::INVALID_M2P_ENTRY; 10];
//! m2p_raw[7] = 0;
//! m2p_raw[3] = 1;
//! let m2p_table = m2p_raw.map(AtomicU64::new);
//! // SAFETY: the tables are consistent, nothing is mapped, and no region is ever changed.
//! let xen = unsafe {
//!     X86PvPlatform::new(&p2m_table, &m2p_table, 0xffff_8880_0000_0000, NoXen, NoMemory)
//! };
//! assert_eq!(xen.pfn_to_bfn(Pfn::new(1)), Some(Bfn::new(3)));
//! assert_eq!(xen.pfn_to_bfn(Pfn::new(2)), Some(Bfn::new(9)));
//! assert_eq!(xen.pfn_to_bfn(Pfn::new(3)), None);
//! assert_eq!(xen.bfn_to_local_pfn(Bfn::new(7)), Some(Pfn::new(0)));
//! assert_eq!(xen.bfn_to_local_pfn(Bfn::new(9)), None); // foreign
//! assert!(!xen.is_bus_contiguous(PhysAddr::new(0), 8192));
//! ```

// `NativeHypercall` exists on x86_64 only; elsewhere the crate documentation links to its page
// on docs.rs (built for `x86_64-unknown-none`).
#![cfg_attr(target_arch = "x86_64", doc = "[`NativeHypercall`]: NativeHypercall")]
#![cfg_attr(
    not(target_arch = "x86_64"),
    doc = "[`NativeHypercall`]: https://docs.rs/swiotlb-xen-x86-pv/latest/swiotlb_xen_x86_pv/struct.NativeHypercall.html"
)]
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod boot;
mod error;
#[cfg(target_arch = "x86_64")]
mod native;
pub mod p2m;
mod platform;

pub use error::X86PvError;
#[cfg(target_arch = "x86_64")]
pub use native::NativeHypercall;
pub use platform::{
    DEFAULT_PTE_FLAGS, MC_BATCH, MMU_BATCH, PTE_ACCESSED, PTE_DIRTY, PTE_MFN_MASK, PTE_NX,
    PTE_PRESENT, PTE_RW, X86PvPlatform, XEN_MAX_ORDER,
};
