//! arm64 dom0 platform for swiotlb-xen (work in progress).
#![no_std]
