//! Host memory standing in for physical memory: one heap allocation placed at a notional
//! physical base. Pools reach it through a [`swiotlb_core::LinearMap`] over
//! [`HostMemory::as_mut_ptr`] (see [`crate::harness::linear_map`]), as a kernel's linear map
//! reaches RAM; tests read and write it with [`HostMemory::write`] and [`HostMemory::read`].

use core::ptr::NonNull;
use std::alloc::{Layout, alloc_zeroed, dealloc};

use swiotlb_core::PhysAddr;

/// Why a [`HostMemory`] could not be created or accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostMemoryError {
    /// The size is zero, the alignment not a power of two, or the range wraps.
    #[error("bad region: base {base}, {len:#x} bytes, alignment {align:#x}")]
    BadRegion {
        /// The notional physical base.
        base: PhysAddr,
        /// The length.
        len: usize,
        /// The alignment asked for.
        align: usize,
    },
    /// The allocator refused.
    #[error("out of host memory for {len:#x} bytes")]
    OutOfMemory {
        /// The length.
        len: usize,
    },
    /// An access outside the region.
    #[error("{addr}+{len:#x} is outside the region")]
    OutOfRange {
        /// The address.
        addr: PhysAddr,
        /// The length.
        len: usize,
    },
}

/// A zeroed heap region of `len` bytes that answers to physical addresses
/// `base..base + len`.
///
/// # Invariants
///
/// `ptr` points to an allocation of `layout`, with `layout.size() == len > 0`, owned by this
/// value; `base + len` does not overflow.
#[derive(Debug)]
pub struct HostMemory {
    /// Notional physical address of the first byte.
    base: PhysAddr,
    /// The allocation.
    ptr: NonNull<u8>,
    /// Its length.
    len: usize,
    /// Its layout, for deallocation.
    layout: Layout,
}

// SAFETY: `HostMemory` owns its allocation; every access goes through raw-pointer copies whose
// callers promise (by the `unsafe` contracts here and of `LinearMap`) that concurrent
// accesses are disjoint.
unsafe impl Send for HostMemory {}
// SAFETY: as for `Send`.
unsafe impl Sync for HostMemory {}

impl HostMemory {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two) at notional physical
    /// address `base`.
    ///
    /// # Errors
    ///
    /// [`HostMemoryError::BadRegion`] for a zero size, a bad alignment or a wrapping range;
    /// [`HostMemoryError::OutOfMemory`] if the allocator fails.
    pub fn new(base: PhysAddr, len: usize, align: usize) -> Result<Self, HostMemoryError> {
        let bad = HostMemoryError::BadRegion { base, len, align };
        // CAST: usize fits u64.
        if len == 0 || base.checked_add(len as u64).is_none() {
            return Err(bad);
        }
        let layout = Layout::from_size_align(len, align).map_err(|_| bad)?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(HostMemoryError::OutOfMemory { len })?;
        // INVARIANT: fresh allocation of `layout`; the range was checked above.
        Ok(Self {
            base,
            ptr,
            len,
            layout,
        })
    }

    /// The notional physical address of the first byte.
    #[must_use]
    pub fn base(&self) -> PhysAddr {
        self.base
    }

    /// The region's length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The host address of the first byte, to describe the region to a
    /// [`swiotlb_core::LinearMap`]. Accesses through it must follow the same rules as
    /// [`write`](Self::write) and [`read`](Self::read).
    #[must_use]
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Whether the region is empty (never: construction refuses a zero size).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host pointer for `addr..addr + len`, if the range lies in the region.
    fn translate(&self, addr: PhysAddr, len: usize) -> Result<*mut u8, HostMemoryError> {
        let out = HostMemoryError::OutOfRange { addr, len };
        let off = addr.offset_from(self.base).ok_or(out)?;
        let off = usize::try_from(off).map_err(|_| out)?;
        if off.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(out);
        }
        // SAFETY: `off + len <= self.len`, so the result stays inside the allocation.
        Ok(unsafe { self.ptr.as_ptr().add(off) })
    }

    /// Copies `data` into the region at `addr`.
    ///
    /// # Errors
    ///
    /// [`HostMemoryError::OutOfRange`] if the range is not inside the region.
    ///
    /// # Safety
    ///
    /// No other access (copy, device, another thread) may touch the range during the call.
    pub unsafe fn write(&self, addr: PhysAddr, data: &[u8]) -> Result<(), HostMemoryError> {
        let dst = self.translate(addr, data.len())?;
        // SAFETY: `dst` has room for `data.len()` bytes (checked by `translate`); `data` is a
        // Rust slice, which cannot overlap the raw allocation's unreferenced bytes; the caller
        // excludes concurrent access.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Copies bytes at `addr` out of the region into `out`.
    ///
    /// # Errors
    ///
    /// [`HostMemoryError::OutOfRange`] if the range is not inside the region.
    ///
    /// # Safety
    ///
    /// No other access may write the range during the call.
    pub unsafe fn read(&self, addr: PhysAddr, out: &mut [u8]) -> Result<(), HostMemoryError> {
        let src = self.translate(addr, out.len())?;
        // SAFETY: as in `write`, in the other direction.
        unsafe { core::ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: by the type invariant `ptr` was allocated with `layout` and is owned here.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let m = HostMemory::new(PhysAddr::new(0x1000_0000), 0x4000, 4096).unwrap();
        let a = PhysAddr::new(0x1000_0ff0);
        // SAFETY: single-threaded test, nothing else touches the region.
        unsafe {
            m.write(a, &[1, 2, 3, 4]).unwrap();
            let mut out = [0; 4];
            m.read(a, &mut out).unwrap();
            assert_eq!(out, [1, 2, 3, 4]);
            assert_eq!(
                m.write(PhysAddr::new(0x1000_3fff), &[0, 0]),
                Err(HostMemoryError::OutOfRange {
                    addr: PhysAddr::new(0x1000_3fff),
                    len: 2
                })
            );
            assert!(m.read(PhysAddr::new(0x0fff_ffff), &mut out).is_err());
        }
        assert!(HostMemory::new(PhysAddr::new(0), 0, 8).is_err());
        assert!(HostMemory::new(PhysAddr::new(u64::MAX), 2, 8).is_err());
        assert!(HostMemory::new(PhysAddr::new(0), 8, 3).is_err());
    }
}
