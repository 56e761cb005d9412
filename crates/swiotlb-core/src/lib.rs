//! # swiotlb-core
//!
//! A `no_std` software IO TLB: the address types, the DMA vocabulary, the slot-based bounce
//! pool and the platform hooks that Xen (or any other platform) implements.
//!
//! This crate knows nothing of Xen. The Xen translation and contiguity hooks live in
//! `swiotlb-xen-x86-pv` and `swiotlb-xen-arm64`; users normally depend on the `swiotlb-xen`
//! facade.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod addr;
pub mod dma;
pub mod error;
pub mod hooks;
pub mod linear;
pub mod pool;

pub use addr::{Bfn, BusAddr, Pfn, PhysAddr, XEN_PAGE_SHIFT, XEN_PAGE_SIZE};
pub use dma::{Device, DmaAttrs, DmaDirection, DmaMask};
pub use error::Error;
pub use hooks::{PhysMemory, Platform, PlatformError};
pub use linear::LinearMap;
pub use pool::{BouncePool, Slot, Stats, max_mapping_size};
