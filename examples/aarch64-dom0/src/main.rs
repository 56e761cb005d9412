//! `aarch64-dom0`: a bare-metal 1:1 dom0 that exercises swiotlb-xen's arm64 platform with
//! real hypercalls on Xen 4.17 and 4.20 and real DMA by QEMU's `edu` device (see the
//! library's documentation, the example's `README.md` and `docs/real-xen.md`).
//!
//! On the host this builds to a stub.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "aarch64-dom0 is a bare-metal kernel for aarch64-unknown-none; \
         run it with `cargo xtask xen-qemu aarch64`"
    );
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod dom0;
