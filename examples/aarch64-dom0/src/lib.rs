//! # aarch64-dom0
//!
//! Two small bare-metal kernels for `aarch64-unknown-none` that run on the real Xen
//! hypervisor (Debian's 4.17 and 4.20) under QEMU (`cargo xtask xen-qemu aarch64` builds and
//! boots them), next to QEMU's `edu` PCI device as a real DMA master with a 32-bit mask:
//!
//! - `aarch64-dom0`, a 1:1 (direct-mapped) dom0 that uses the `swiotlb-xen` facade natively
//!   (the arm64 platform with the `hvc` trap, `swiotlb_xen::init` for the bounce pool, the
//!   DMA engine). It reads its RAM banks (one below 4 GiB, one above) and the PCI host bridge
//!   from the device tree Xen gives it, checks `XENFEAT_direct_mapped`, probes
//!   `GNTTABOP_cache_flush`, grant-maps pages of the domU, records them in the foreign
//!   table, checks the cache-maintenance hypercalls with Xen's exact answers, and then has
//!   the `edu` device move real bytes at the bus addresses the engine returns: own buffers
//!   below the mask (direct) and above it (bounced, both directions, a partial sync, a
//!   scatter-gather list), a coherent allocation, and the domU's granted pages (bounced
//!   where the domU's machine frame is above the mask, direct where it is below), including
//!   the reply the domU checks and acknowledges. It prints one line per check and
//!   `XEN-QEMU aarch64 xen-<major>.<minor>: PASS (N checks, D device DMA checks)` or `FAIL`.
//! - `aarch64-domu`, a dom0less domU that fills a few pages with a known pattern (one of
//!   them traded for a frame below 4 GiB with `XENMEM_populate_physmap`), grants them to
//!   dom0 with a v1 grant table, waits for the device's reply and acknowledges it, and
//!   prints through its emulated PL011 (`DOM1: ...` on Xen's console).
//!
//! This library holds what both share: the boot code (Image header, entry, exception
//! vectors), the identity map that turns the MMU and caches on, a minimal device-tree
//! reader, the `edu` device's registers, the data pattern, the shared layout constants and
//! the check report. The pure parts (descriptors, device tree, `edu` arithmetic, pattern,
//! report) are plain Rust and are tested on the host; the rest only exists on the
//! bare-metal target. `README.md` describes the machine, the memory layout and the checks.

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
