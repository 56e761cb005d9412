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

#![no_std]

pub mod consts;
pub mod structs;

pub use consts::*;
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
/// pointers in the arguments.
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
}
