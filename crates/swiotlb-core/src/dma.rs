//! The DMA vocabulary: directions, attributes, masks and the device description.

use crate::addr::BusAddr;
use core::fmt;

/// The direction of a streaming DMA transfer.
///
/// There is no `None` variant: Linux's `DMA_NONE` is a bug trap (`BUG_ON(dir == DMA_NONE)`),
/// and here an invalid direction cannot be expressed at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DmaDirection {
    /// The device reads memory (`DMA_TO_DEVICE`).
    ToDevice,
    /// The device writes memory (`DMA_FROM_DEVICE`).
    FromDevice,
    /// The device may read and write (`DMA_BIDIRECTIONAL`).
    Bidirectional,
}

impl DmaDirection {
    /// Whether the device may read the buffer (data must reach the device at map and
    /// sync-for-device time).
    #[inline]
    #[must_use]
    pub const fn to_device(self) -> bool {
        matches!(self, Self::ToDevice | Self::Bidirectional)
    }

    /// Whether the device may write the buffer (data must come back at unmap and
    /// sync-for-cpu time).
    #[inline]
    #[must_use]
    pub const fn from_device(self) -> bool {
        matches!(self, Self::FromDevice | Self::Bidirectional)
    }

    /// The value Linux's `dma_map_benchmark` uses for this direction
    /// (BIDIRECTIONAL 0, TO_DEVICE 1, FROM_DEVICE 2).
    #[inline]
    #[must_use]
    pub const fn linux_value(self) -> u32 {
        match self {
            Self::Bidirectional => 0,
            Self::ToDevice => 1,
            Self::FromDevice => 2,
        }
    }
}

bitflags::bitflags! {
    /// Attributes of a mapping, as Linux's `DMA_ATTR_*`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct DmaAttrs: u32 {
        /// Do not copy between the original and the bounce buffer at unmap (and skip cache
        /// maintenance); the caller syncs explicitly. Map still copies (CVE-2022-0854).
        const SKIP_CPU_SYNC = 1 << 0;
        /// Do not report a mapping failure (the caller has a fallback).
        const NO_WARN = 1 << 1;
        /// Weak ordering is allowed (accepted and ignored; kept for kernel parity).
        const WEAK_ORDERING = 1 << 2;
        /// Write combining is allowed (accepted and ignored; kept for kernel parity).
        const WRITE_COMBINE = 1 << 3;
        /// The mapping is of MMIO, not RAM: never bounced, never cache-maintained.
        const MMIO = 1 << 4;
    }
}

/// A DMA addressing mask: the device can reach bus addresses `0..=mask`.
///
/// # Invariants
///
/// The mask is of the form `2^n - 1` with `1 <= n <= 64`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct DmaMask(u64);

impl DmaMask {
    /// A device that reaches the whole 64-bit bus.
    pub const FULL: Self = Self(u64::MAX);
    /// A 32-bit device (the classic case swiotlb exists for).
    pub const BITS_32: Self = Self(u32::MAX as u64);

    /// The mask `DMA_BIT_MASK(bits)`; `None` unless `1 <= bits <= 64`.
    #[inline]
    #[must_use]
    pub const fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            0 => None,
            64 => Some(Self::FULL),
            // INVARIANT: 1 <= bits < 64 gives 2^bits - 1.
            b if b < 64 => Some(Self((1u64 << b) - 1)),
            _ => None,
        }
    }

    /// Accepts a raw mask if it is of the form `2^n - 1`, `n >= 1`.
    #[inline]
    #[must_use]
    pub const fn try_from_raw(mask: u64) -> Option<Self> {
        if mask != 0 && mask & mask.wrapping_add(1) == 0 {
            Some(Self(mask))
        } else {
            None
        }
    }

    /// The raw mask value.
    #[inline]
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The number of address bits (`fls64(mask)`).
    #[inline]
    #[must_use]
    pub const fn bits(self) -> u32 {
        64 - self.0.leading_zeros()
    }

    /// Linux's `dma_capable`: whether every byte of `[addr, addr + len)` is at or below the
    /// mask. A zero-length or wrapping range is not capable.
    #[inline]
    #[must_use]
    pub const fn covers(self, addr: BusAddr, len: u64) -> bool {
        match addr.checked_last(len) {
            // The mutant of `cargo xtask xen-qemu mutants`: one address bit more than the
            // mask has (a 28-bit device taken for a 29-bit one).
            #[cfg(swiotlb_mutant = "mask_off_by_one")]
            Some(last) => last.as_u64() <= (self.0 << 1 | 1),
            #[cfg(not(swiotlb_mutant = "mask_off_by_one"))]
            Some(last) => last.as_u64() <= self.0,
            None => false,
        }
    }
}

impl fmt::Debug for DmaMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmaMask({:#x})", self.0)
    }
}

impl fmt::Display for DmaMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What the DMA layer needs to know about one device.
///
/// A plain value the kernel fills in per device (Linux keeps these in `struct device`).
/// Build it with [`Device::new`] and the `with_*` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Device {
    /// Streaming DMA mask.
    pub dma_mask: DmaMask,
    /// Mask for coherent allocations.
    pub coherent_dma_mask: DmaMask,
    /// Low address bits the device needs preserved between original and bounce buffer
    /// (`dma_get_min_align_mask`; NVMe uses `0xfff`). Zero for none.
    pub min_align_mask: u64,
    /// Segment boundary mask (`dma_get_seg_boundary`): no mapping may cross a
    /// `mask + 1`-byte boundary. All ones for none. Must be `2^n - 1`.
    pub seg_boundary_mask: u64,
    /// Whether the device snoops CPU caches (no cache maintenance needed).
    pub coherent: bool,
    /// Whether the device sits behind an IOMMU that translates for this guest (no
    /// translation and no bouncing needed).
    pub behind_iommu: bool,
    /// Bounce every streaming mapping (Linux's `swiotlb=force`), for testing and isolation.
    pub force_bounce: bool,
    /// The kernel's name for the device in reports of live mappings (a bus/device/function
    /// number, an index in its device table): a pool that records ages
    /// ([`BouncePool::set_mapping_clock`](crate::BouncePool::set_mapping_clock)) counts each
    /// live mapping under its device's tag ([`LiveReport`](crate::LiveReport)). 0 by default;
    /// nothing else reads it.
    pub tag: u16,
}

impl Device {
    /// A coherent device without an IOMMU, with the same streaming and coherent mask, no
    /// minimum alignment and no segment boundary.
    #[inline]
    #[must_use]
    pub const fn new(dma_mask: DmaMask) -> Self {
        Self {
            dma_mask,
            coherent_dma_mask: dma_mask,
            min_align_mask: 0,
            seg_boundary_mask: u64::MAX,
            coherent: true,
            behind_iommu: false,
            force_bounce: false,
            tag: 0,
        }
    }

    /// Sets the device's tag in reports of live mappings ([`Device::tag`]).
    #[inline]
    #[must_use]
    pub const fn with_tag(mut self, tag: u16) -> Self {
        self.tag = tag;
        self
    }

    /// Sets the coherent DMA mask.
    #[inline]
    #[must_use]
    pub const fn with_coherent_mask(mut self, mask: DmaMask) -> Self {
        self.coherent_dma_mask = mask;
        self
    }

    /// Sets the minimum alignment mask.
    #[inline]
    #[must_use]
    pub const fn with_min_align_mask(mut self, mask: u64) -> Self {
        self.min_align_mask = mask;
        self
    }

    /// Sets the segment boundary mask (`2^n - 1`).
    #[inline]
    #[must_use]
    pub const fn with_seg_boundary_mask(mut self, mask: u64) -> Self {
        self.seg_boundary_mask = mask;
        self
    }

    /// Sets whether the device is cache-coherent.
    #[inline]
    #[must_use]
    pub const fn with_coherent(mut self, coherent: bool) -> Self {
        self.coherent = coherent;
        self
    }

    /// Sets whether the device is behind an IOMMU.
    #[inline]
    #[must_use]
    pub const fn with_iommu(mut self, behind_iommu: bool) -> Self {
        self.behind_iommu = behind_iommu;
        self
    }

    /// Sets whether every streaming mapping is bounced.
    #[inline]
    #[must_use]
    pub const fn with_force_bounce(mut self, force: bool) -> Self {
        self.force_bounce = force;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(DmaMask::from_bits(32), Some(DmaMask::BITS_32));
        assert_eq!(DmaMask::from_bits(64), Some(DmaMask::FULL));
        assert_eq!(DmaMask::from_bits(0), None);
        assert_eq!(DmaMask::from_bits(65), None);
        assert_eq!(DmaMask::BITS_32.bits(), 32);
        assert_eq!(
            DmaMask::try_from_raw(0xfff),
            Some(DmaMask::from_bits(12).unwrap())
        );
        assert_eq!(DmaMask::try_from_raw(0x1000), None);
        assert_eq!(DmaMask::try_from_raw(0), None);
        let m = DmaMask::BITS_32;
        assert!(m.covers(BusAddr::new(0xffff_f000), 0x1000));
        assert!(!m.covers(BusAddr::new(0xffff_f000), 0x1001));
        assert!(!m.covers(BusAddr::new(0), 0));
        assert!(!DmaMask::FULL.covers(BusAddr::new(u64::MAX), 2));
    }

    #[test]
    fn directions() {
        assert!(DmaDirection::ToDevice.to_device());
        assert!(!DmaDirection::ToDevice.from_device());
        assert!(
            DmaDirection::Bidirectional.to_device() && DmaDirection::Bidirectional.from_device()
        );
        assert_eq!(DmaDirection::FromDevice.linux_value(), 2);
    }
}
