//! x86 PV platform for swiotlb-xen (work in progress).
#![no_std]
