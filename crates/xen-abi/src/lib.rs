//! # xen-abi
//!
//! The part of the Xen hypercall ABI that a DMA layer needs, for `no_std` guests on x86_64
//! (PV) and aarch64: hypercall and sub-op numbers, the `#[repr(C)]` structures with the
//! field names of Xen's public headers (a Rust keyword gets a trailing underscore, as bindgen
//! does), guest handles, compile-time layout assertions, the [`Hypercall`] trait through which
//! every hypercall goes, and typed wrappers returning [`XenError`].
//!
//! Layouts are those of Xen 4.17's public headers with
//! `__XEN_INTERFACE_VERSION__ = 0x00040e00`; a test compiles a C program against Debian's
//! `libxen-dev` and compares every size, offset and constant.

//!
//! # What is here
//!
//! - [`consts`]: hypercall numbers and the `XENMEM_*`, `GNTTABOP_*`, `GNTMAP_*`, `GNTST_*`,
//!   `GNTTAB_CACHE_*`, `MMU_*`, `MMUEXT_*`, `UVMF_*`, `XENFEAT_*`, `XENVER_*`, `SCHEDOP_*`,
//!   `SHUTDOWN_*`, `CONSOLEIO_*` and `DOMID_*` constants, and the `XENMEMF_*` flags as
//!   [`XenMemFlags`].
//! - [`structs`]: the structures, with small constructors such as
//!   [`MulticallEntry::update_va_mapping`].
//! - [`Hypercall`]: the one entry point. The native traps are in the architecture crates.
//! - [`ops`]: typed wrappers such as [`ops::memory_exchange`], [`ops::grant_map`],
//!   [`ops::cache_flush`] and [`ops::has_feature`].
//! - [`error`]: [`XenError`] (operation and [`Errno`]) and [`GntStatus`].
//!
//! Only 64-bit little-endian targets (x86_64 and aarch64) are supported; the layout
//! assertions are compiled for them.
//!
//! # Example
//!
//! A fake hypervisor that knows only `XENVER_version`, and a typed call through it:
//!
//! ```
//! use xen_abi::{ops, Errno, Hypercall, HYPERVISOR_XEN_VERSION, XENVER_VERSION};
//!
//! struct Fake;
//!
//! // SAFETY: `hypercall` reads and writes no memory at all.
//! unsafe impl Hypercall for Fake {
//!     unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
//!         if op == HYPERVISOR_XEN_VERSION && args[0] == u64::from(XENVER_VERSION) {
//!             (4 << 16) | 17
//!         } else {
//!             -38 // ENOSYS
//!         }
//!     }
//! }
//!
//! let v = ops::xen_version(&Fake).unwrap();
//! assert_eq!((v.major, v.minor), (4, 17));
//!
//! let err = ops::get_features(&Fake, 0).unwrap_err();
//! assert_eq!(err.errno, Errno::ENOSYS);
//! assert_eq!(err.to_string(), "XENVER_get_features: ENOSYS (38)");
//! ```

#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod consts;
pub mod error;
pub mod ops;
pub mod structs;

pub use consts::*;
pub use error::{Errno, GntStatus, XenError, check, check_zero};
pub use structs::*;

/// The single entry point of every hypercall.
///
/// The native implementations (the `syscall` trap of an x86_64 PV guest, `hvc #0xEA1` on
/// aarch64) live in the architecture crates; the simulator in `xen-sim` implements it by
/// decoding the same structures.
///
/// # Implementation safety
///
/// An implementation performs hypercall `op` with the five arguments in order and returns
/// Xen's result unchanged (`0` or a positive value on success, `-errno` on failure). It must
/// not read or write memory other than what Xen's definition of `op` reads or writes through
/// pointers in the arguments. An answer of
/// [`pte_machine_addr`](Self::pte_machine_addr) other than `None` is the machine address of
/// the 8-byte L1 page-table entry that maps the page of `va` in this domain's address space,
/// and stays so for as long as the mapping exists: x86 PV platforms write that entry with
/// `mmu_update`.
pub unsafe trait Hypercall {
    /// Performs hypercall number `op` (for example [`HYPERVISOR_MEMORY_OP`]) with up to five
    /// arguments (unused ones are zero) and returns Xen's result.
    ///
    /// # Safety
    ///
    /// Every pointer passed in `args` must be valid for the reads and writes Xen performs for
    /// `op`, for the duration of the call, and the operation must be one the guest is allowed
    /// to perform on memory it owns (an exchange or remap changes what the guest's addresses
    /// reach).
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64;

    /// The machine address of the L1 page-table entry that maps virtual address `va` (an
    /// x86 PV kernel walks its page tables for it), or `None` when the implementation does
    /// not know it, the default.
    ///
    /// An x86 PV platform that knows the entries of its linear map writes many of them in
    /// one `mmu_update` (`MMU_NORMAL_PT_UPDATE`, which names an entry by machine address);
    /// without them it changes each mapping by virtual address with `update_va_mapping`,
    /// one multicall entry per page, as Linux does.
    fn pte_machine_addr(&self, va: u64) -> Option<u64> {
        let _ = va;
        None
    }
}
