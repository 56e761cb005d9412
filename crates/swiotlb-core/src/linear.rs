//! [`LinearMap`]: a [`PhysMemory`] over one contiguous CPU-addressable region.

use crate::addr::PhysAddr;
use core::ptr::NonNull;

use crate::hooks::{BufferMemory, PhysMemory};

/// A [`PhysMemory`] over the region `[phys_base, phys_base + len)`, which the CPU reaches at
/// `base..base + len` (a kernel's linear map, or a heap buffer in tests and tools).
///
/// Copies and fills are `ptr::copy_nonoverlapping` and `ptr::write_bytes` at offsets from
/// `base`, so pointer provenance is that of `base` (Miri's strict provenance accepts it).
///
/// # Contract
///
/// Callers of [`PhysMemory::copy`] and [`PhysMemory::fill`] must stay inside the region.
/// Ranges outside it are a caller bug caught by `debug_assert!` in debug builds; the pool
/// only passes ranges it has validated against the region it was built over.
#[derive(Clone, Debug)]
pub struct LinearMap {
    base: *mut u8,
    phys_base: PhysAddr,
    len: usize,
}

// SAFETY: `LinearMap` is a description of a region, not an owner of data. Its `unsafe`
// methods put the burden of avoiding races on their callers (disjoint ranges from several
// CPUs are allowed by the `PhysMemory` contract), so moving or sharing the description
// between threads is sound.
unsafe impl Send for LinearMap {}
// SAFETY: as for `Send`.
unsafe impl Sync for LinearMap {}

impl LinearMap {
    /// Describes the region of `len` bytes at `base`, which has physical address
    /// `phys_base`.
    ///
    /// # Safety
    ///
    /// - `base..base + len` must be valid for reads and writes for as long as the map (or a
    ///   pool using it) is used, and must be a single allocation (or a single mapping) so
    ///   that offsets from `base` stay in bounds.
    /// - No Rust reference may cover bytes of the region while a copy or fill touches them.
    /// - `phys_base + len` must not overflow.
    pub unsafe fn new(base: *mut u8, phys_base: PhysAddr, len: usize) -> Self {
        debug_assert!(phys_base.checked_add(len as u64).is_some());
        Self {
            base,
            phys_base,
            len,
        }
    }

    /// The physical address of the first byte of the region.
    #[must_use]
    pub fn phys_base(&self) -> PhysAddr {
        self.phys_base
    }

    /// The length of the region in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `[addr, addr + len)` lies inside the region.
    #[must_use]
    pub fn covers(&self, addr: PhysAddr, len: usize) -> bool {
        match addr.offset_from(self.phys_base) {
            // CAST: usize is at most 64 bits on every supported target.
            Some(off) => off
                .checked_add(len as u64)
                .is_some_and(|end| end <= self.len as u64),
            None => false,
        }
    }

    /// The CPU pointer of `addr`, which must be covered by the region.
    ///
    /// # Safety
    ///
    /// `[addr, addr + len)` must lie inside the region.
    pub(crate) unsafe fn ptr(&self, addr: PhysAddr, len: usize) -> *mut u8 {
        debug_assert!(
            self.covers(addr, len),
            "LinearMap: {addr}+{len:#x} outside the region"
        );
        // CAST: the offset is below `self.len`, a `usize`, by the caller's contract.
        let off = addr.as_u64().wrapping_sub(self.phys_base.as_u64()) as usize;
        // SAFETY: the caller guarantees the range is inside the region, so `off` is within
        // the allocation `base` points into (constructor contract).
        unsafe { self.base.add(off) }
    }
}

// SAFETY: `copy` copies exactly `len` bytes between the two ranges and `fill` writes exactly
// `len` bytes, both through raw pointers derived from `base` at the ranges' offsets; neither
// creates references, so calls on disjoint ranges from several CPUs do not conflict.
unsafe impl PhysMemory for LinearMap {
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: the `PhysMemory::copy` contract makes both ranges reachable (inside the
        // region), non-overlapping and free of live references.
        unsafe {
            let d = self.ptr(dst, len);
            let s = self.ptr(src, len);
            core::ptr::copy_nonoverlapping(s, d, len);
        }
    }

    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: the `PhysMemory::fill` contract makes the range reachable (inside the
        // region) and free of live references.
        unsafe { core::ptr::write_bytes(self.ptr(dst, len), byte, len) }
    }
}

// SAFETY: both copies are one `copy_nonoverlapping` between the caller's pointer and a
// pointer derived from `base` at the range's offset (inside the region by the contract).
unsafe impl BufferMemory for LinearMap {
    unsafe fn copy_from_buffer(&self, dst: PhysAddr, src: NonNull<u8>, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: the contract makes `dst` reachable (inside the region), unreferenced and
        // disjoint from `src`, which is valid for reads.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr(dst, len), len) }
    }

    unsafe fn copy_to_buffer(&self, dst: NonNull<u8>, src: PhysAddr, len: usize) {
        if len == 0 {
            return;
        }
        // SAFETY: as above, the other way.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(src, len), dst.as_ptr(), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_map_copies_and_fills_at_offsets() {
        let mut buf = std::vec![0u8; 64];
        // SAFETY: `buf` outlives `map` and is only touched through `map` until the reads at
        // the end, after the last copy.
        let map = unsafe { LinearMap::new(buf.as_mut_ptr(), PhysAddr::new(0x1000), 64) };
        assert!(map.covers(PhysAddr::new(0x1000), 64));
        assert!(!map.covers(PhysAddr::new(0x1000), 65));
        assert!(!map.covers(PhysAddr::new(0xfff), 1));
        // SAFETY: both ranges are inside the region and disjoint.
        unsafe {
            map.fill(PhysAddr::new(0x1000), 0xab, 8);
            map.copy(PhysAddr::new(0x1020), PhysAddr::new(0x1004), 4);
        }
        assert_eq!(&buf[..8], &[0xab; 8]);
        assert_eq!(&buf[0x20..0x24], &[0xab; 4]);
        assert_eq!(buf[0x24], 0);
    }

    #[test]
    fn a_borrowed_linear_map_reaches_the_same_memory() {
        fn through<M: BufferMemory>(m: M, dst: PhysAddr, src: PhysAddr) {
            // SAFETY: both ranges are inside the test's region, disjoint and unreferenced.
            unsafe {
                m.fill(src, 0x5a, 4);
                m.copy(dst, src, 4);
            }
        }
        let mut buf = std::vec![0u8; 64];
        let mut out = [0u8; 4];
        // SAFETY: `buf` outlives `map` and is only read at the end, after the last copy.
        let map = unsafe { LinearMap::new(buf.as_mut_ptr(), PhysAddr::new(0x2000), 64) };
        // The pool and a platform may each hold `&map`: one description, built once.
        through::<&LinearMap>(&map, PhysAddr::new(0x2010), PhysAddr::new(0x2000));
        let shared = &map;
        through::<&&LinearMap>(&shared, PhysAddr::new(0x2020), PhysAddr::new(0x2010));
        let dst = NonNull::from(&mut out).cast::<u8>();
        // SAFETY: `out` is a live 4-byte buffer no one else touches; the source is inside.
        unsafe { BufferMemory::copy_to_buffer(&shared, dst, PhysAddr::new(0x2020), 4) };
        assert_eq!(out, [0x5a; 4]);
        assert_eq!(&buf[0x20..0x24], &[0x5a; 4]);
    }
}
