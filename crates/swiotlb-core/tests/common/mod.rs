//! A pool over one heap allocation, followed by memory for original buffers, reached only
//! through raw pointers (as a device and a CPU would).

#![allow(dead_code)]

pub mod model;

use swiotlb_core::pool::IO_TLB_SIZE;
use swiotlb_core::{BouncePool, LinearMap, PhysAddr, Slot};

pub const POOL_BASE: u64 = 0x4000_0000;

pub type Pool = BouncePool<LinearMap, Vec<Slot>>;

pub struct Fixture {
    base: *mut u8,
    len: usize,
    pub pool: Pool,
}

// SAFETY: the fixture's memory is reached only through raw pointers, by callers that keep
// their accesses disjoint (each thread owns its originals; the pool owns its slots).
unsafe impl Sync for Fixture {}
// SAFETY: as for `Sync`; the allocation is freed once, in `Drop`.
unsafe impl Send for Fixture {}

impl Fixture {
    pub fn new(nslabs: usize, nareas: usize, orig_bytes: usize) -> Self {
        let len = nslabs * IO_TLB_SIZE + orig_bytes;
        let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        // SAFETY: `base..base + len` is one allocation freed only in `Drop`, after the pool.
        let mem = unsafe { LinearMap::new(base, PhysAddr::new(POOL_BASE), len) };
        let storage = (0..nslabs).map(|_| Slot::new()).collect();
        // SAFETY: the pool range is the start of the allocation and used by the pool alone.
        let pool = unsafe { Pool::new(mem, PhysAddr::new(POOL_BASE), nslabs, nareas, storage) }
            .expect("valid configuration");
        Self { base, len, pool }
    }

    /// The physical address of byte `off` of the original region.
    pub fn orig(&self, off: u64) -> PhysAddr {
        PhysAddr::new(self.pool.end().as_u64() + off)
    }

    fn ptr(&self, addr: PhysAddr, len: usize) -> *mut u8 {
        let off = usize::try_from(addr.as_u64() - POOL_BASE).unwrap();
        assert!(off + len <= self.len, "{addr}+{len:#x} outside the fixture");
        // SAFETY: checked to be inside the allocation.
        unsafe { self.base.add(off) }
    }

    pub fn write(&self, addr: PhysAddr, bytes: &[u8]) {
        // SAFETY: inside the allocation; no reference covers it.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(addr, bytes.len()), bytes.len())
        }
    }

    pub fn read(&self, addr: PhysAddr, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: inside the allocation; no reference covers it.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(addr, len), v.as_mut_ptr(), len) }
        v
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: `base` came from `Box::into_raw` of a slice of `len` bytes.
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(self.base, self.len)) });
    }
}
