//! # aarch64-dom0
//!
//! Two small bare-metal kernels for `aarch64-unknown-none` that run on the real Xen 4.17
//! hypervisor under QEMU (`cargo xtask xen-qemu aarch64` builds and boots them):
//!
//! - `aarch64-dom0`, a 1:1 (direct-mapped) dom0 that uses the `swiotlb-xen` facade natively
//!   (the arm64 platform with the `hvc` trap, `swiotlb_xen::init` for the bounce pool, the
//!   DMA engine): it checks `XENFEAT_direct_mapped`, probes `GNTTABOP_cache_flush`,
//!   grant-maps pages of the domU, records them in the foreign table, maps them for a
//!   non-coherent device (bus address = the machine address, cache flushes by the real
//!   hypercall), verifies the domU's data, unmaps and clears, and checks that
//!   `XENMEM_exchange` is refused and the identity path is used. It prints one line per check and `XEN-QEMU aarch64: PASS (N checks)` or
//!   `FAIL`.
//! - `aarch64-domu`, a dom0less domU that fills a few pages with a known pattern, grants them
//!   to dom0 with a v1 grant table, and prints through its emulated PL011 (`DOM1: ...` on
//!   Xen's console).
//!
//! This library holds what both share: the boot code (Image header, entry, exception
//! vectors), the identity map that turns the MMU and caches on, the data pattern, the
//! shared layout constants and the check report. The pure parts (descriptors, pattern,
//! report) are plain Rust and are tested on the host; the rest only exists on the bare-metal
//! target.

#![cfg_attr(target_os = "none", no_std)]

pub mod edu;
pub mod fdt;
pub mod layout;
pub mod mmu;
pub mod pattern;
pub mod report;

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
pub mod boot;
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
pub mod cpu;
