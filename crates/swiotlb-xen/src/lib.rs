//! Xen DMA bounce buffering for Rust kernels (work in progress).
#![no_std]
