//! # x86_64-pv-dom0
//!
//! A bare-metal x86_64 kernel that Xen boots as its PV dom0 and that checks swiotlb-xen
//! against the real hypervisor: real `syscall` hypercalls, the P2M Xen hands over in
//! `start_info`, Xen's read-only M2P, real `XENMEM_exchange`, and QEMU's `edu` PCI device
//! doing DMA at the bus addresses the engine returns (the `dev-` checks), and a
//! `virtio-blk-pci` disk driven by virtio-drivers over the `swiotlb-xen-virtio` adapter. It prints one line
//! per check (`XEN-QEMU x86_64 check <name>: ok ...` or `...: FAIL ...`) on Xen's console,
//! then `XEN-QEMU x86_64 xen-<major>.<minor>: PASS (N checks, D device DMA checks)` or
//! `...: FAIL (...)`, and shuts the machine down. `cargo xtask xen-qemu x86_64` builds it, boots it under QEMU and reads the
//! verdict; `docs/real-xen.md` describes the checks.
//!
//! Built for `x86_64-unknown-none` it is the kernel (linked by `link.ld`, entered at
//! `_start` with `start_info` in `%rsi`). Built for the host, as the workspace's `cargo
//! clippy` and `cargo test` do, it is a program that only says what it is, so that the
//! kernel's code is still type-checked and linted on every host build.

#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(not(target_os = "none"), allow(dead_code))]
#![allow(
    clippy::result_large_err,
    reason = "a failed check returns its message as a 512-byte line: the kernel has no heap, \
              and the stack has room"
)]

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
mod boot;
#[cfg(target_arch = "x86_64")]
mod checks;
#[cfg(target_arch = "x86_64")]
mod console;
#[cfg(target_arch = "x86_64")]
mod devdma;
#[cfg(target_arch = "x86_64")]
mod dma;
#[cfg(target_arch = "x86_64")]
mod edu;
#[cfg(target_arch = "x86_64")]
mod grow;
#[cfg(target_arch = "x86_64")]
mod hyp;
#[cfg(target_arch = "x86_64")]
mod mmu;
#[cfg(target_arch = "x86_64")]
mod pages;
#[cfg(target_arch = "x86_64")]
mod pci;
#[cfg(target_arch = "x86_64")]
mod virtio;

/// The virtual address of pseudo-physical frame 0: the `.note.Xen` VIRT_BASE, and the
/// `VIRT_BASE` of `link.ld`.
pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;

#[cfg(not(target_os = "none"))]
fn main() {
    println!(
        "x86_64-pv-dom0 is a Xen PV dom0 kernel: build it with \
         `--target x86_64-unknown-none` and boot it with `cargo xtask xen-qemu x86_64`"
    );
}
