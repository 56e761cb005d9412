//! Address and frame-number newtypes.
//!
//! Four address spaces meet in a Xen guest and none of them may silently turn into another:
//!
//! | Type | Space | Unit |
//! |---|---|---|
//! | [`PhysAddr`] | the guest's (pseudo-)physical addresses | byte |
//! | [`BusAddr`] | what a device puts on the bus (machine address on Xen) | byte |
//! | [`Pfn`] | guest (pseudo-)physical frame number | 4 KiB frame |
//! | [`Bfn`] | bus (machine) frame number | 4 KiB frame |
//!
//! Frames are always 4 KiB ([`XEN_PAGE_SIZE`]), whatever the kernel's own page size, because
//! Xen's frames are. Conversions between the spaces are named methods of the platform hooks;
//! conversions between an address and its frame are named methods here.
//!
//! Arithmetic is checked: `checked_add` returns `None` on overflow and the alignment helpers
//! return `None` when rounding up would overflow. No operator mixes spaces.

use core::fmt;

/// log2 of the Xen frame size.
pub const XEN_PAGE_SHIFT: u32 = 12;
/// Size of a Xen frame in bytes (always 4 KiB).
pub const XEN_PAGE_SIZE: u64 = 1 << XEN_PAGE_SHIFT;
/// Mask of the offset bits inside a Xen frame.
pub const XEN_PAGE_OFFSET_MASK: u64 = XEN_PAGE_SIZE - 1;

macro_rules! byte_address {
    ($(#[$doc:meta])* $name:ident, $frame:ident, $space:literal) => {
        $(#[$doc])*
        ///
        /// # Invariants
        ///
        /// None beyond being a 64-bit value: every `u64` is a representable address. Whether an
        /// address is backed by memory is for the platform to say.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The zero address.
            pub const ZERO: Self = Self(0);

            /// Creates an address from its raw value.
            #[inline]
            #[must_use]
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// Returns the raw value.
            #[inline]
            #[must_use]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// Adds `bytes`, returning `None` on overflow.
            #[inline]
            #[must_use]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Subtracts `bytes`, returning `None` on underflow.
            #[inline]
            #[must_use]
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Returns `self - base` in bytes, or `None` if `base > self`.
            #[inline]
            #[must_use]
            pub const fn offset_from(self, base: Self) -> Option<u64> {
                self.0.checked_sub(base.0)
            }

            /// Returns the address of the last byte of a range of `len` bytes starting here,
            /// or `None` if `len` is zero or the range wraps past the end of the space.
            #[inline]
            #[must_use]
            pub const fn checked_last(self, len: u64) -> Option<Self> {
                if len == 0 {
                    return None;
                }
                match self.0.checked_add(len - 1) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Rounds down to a multiple of `align`, which must be a power of two
            /// (`None` otherwise).
            #[inline]
            #[must_use]
            pub const fn align_down(self, align: u64) -> Option<Self> {
                if !align.is_power_of_two() {
                    return None;
                }
                Some(Self(self.0 & !(align - 1)))
            }

            /// Rounds up to a multiple of `align`, which must be a power of two. `None` if it
            /// is not, or if rounding up overflows.
            #[inline]
            #[must_use]
            pub const fn align_up(self, align: u64) -> Option<Self> {
                if !align.is_power_of_two() {
                    return None;
                }
                match self.0.checked_add(align - 1) {
                    Some(v) => Some(Self(v & !(align - 1))),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `align` (a power of two; `false` if not).
            #[inline]
            #[must_use]
            pub const fn is_aligned(self, align: u64) -> bool {
                align.is_power_of_two() && self.0 & (align - 1) == 0
            }

            /// The offset of this address inside its 4 KiB frame.
            #[inline]
            #[must_use]
            pub const fn frame_offset(self) -> u64 {
                self.0 & XEN_PAGE_OFFSET_MASK
            }

            /// The 4 KiB frame containing this address.
            #[inline]
            #[must_use]
            pub const fn frame(self) -> $frame {
                $frame(self.0 >> XEN_PAGE_SHIFT)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($space, " {:#x}"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

macro_rules! frame_number {
    ($(#[$doc:meta])* $name:ident, $addr:ident, $space:literal) => {
        $(#[$doc])*
        ///
        /// # Invariants
        ///
        /// The value is below 2^52, so that the frame's first byte has a 64-bit address.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The largest representable frame number (its last byte is `u64::MAX`).
            pub const MAX: Self = Self(u64::MAX >> XEN_PAGE_SHIFT);

            /// Creates a frame number; `None` if its address would not fit in 64 bits.
            #[inline]
            #[must_use]
            pub const fn try_new(raw: u64) -> Option<Self> {
                if raw > Self::MAX.0 {
                    None
                } else {
                    // INVARIANT: checked just above.
                    Some(Self(raw))
                }
            }

            /// Creates a frame number.
            ///
            /// # Panics
            ///
            /// If `raw` exceeds [`Self::MAX`]; use [`Self::try_new`] for untrusted values.
            #[inline]
            #[must_use]
            #[track_caller]
            pub const fn new(raw: u64) -> Self {
                match Self::try_new(raw) {
                    Some(f) => f,
                    None => panic!(concat!(stringify!($name), " out of range")),
                }
            }

            /// Returns the raw frame number.
            #[inline]
            #[must_use]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// The address of the first byte of the frame.
            #[inline]
            #[must_use]
            pub const fn start(self) -> $addr {
                $addr::new(self.0 << XEN_PAGE_SHIFT)
            }

            /// Adds `frames`, returning `None` past [`Self::MAX`].
            #[inline]
            #[must_use]
            pub const fn checked_add(self, frames: u64) -> Option<Self> {
                match self.0.checked_add(frames) {
                    Some(v) => Self::try_new(v),
                    None => None,
                }
            }

            /// Subtracts `frames`, returning `None` on underflow.
            #[inline]
            #[must_use]
            pub const fn checked_sub(self, frames: u64) -> Option<Self> {
                match self.0.checked_sub(frames) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($space, " {:#x}"), self.0)
            }
        }
    };
}

byte_address!(
    /// A guest physical address (pseudo-physical on x86 PV, intermediate-physical on Arm).
    PhysAddr, Pfn, "phys"
);
byte_address!(
    /// A bus address: what a device uses for DMA (a machine address under Xen without an
    /// IOMMU).
    BusAddr, Bfn, "bus"
);
frame_number!(
    /// A guest (pseudo-)physical frame number, in 4 KiB frames.
    Pfn, PhysAddr, "pfn"
);
frame_number!(
    /// A bus (machine) frame number, in 4 KiB frames. On x86 PV this is the MFN.
    Bfn, BusAddr, "bfn"
);

impl PhysAddr {
    /// Builds the bus address of this physical address given the bus frame its frame maps
    /// to: `bfn.start() + self.frame_offset()`.
    #[inline]
    #[must_use]
    pub const fn with_bus_frame(self, bfn: Bfn) -> BusAddr {
        BusAddr::new(bfn.start().as_u64() | self.frame_offset())
    }
}

impl BusAddr {
    /// Builds the physical address of this bus address given the physical frame its frame
    /// maps to: `pfn.start() + self.frame_offset()`.
    #[inline]
    #[must_use]
    pub const fn with_phys_frame(self, pfn: Pfn) -> PhysAddr {
        PhysAddr::new(pfn.start().as_u64() | self.frame_offset())
    }
}

/// The number of 4 KiB frames touched by `len` bytes starting at an address with in-frame
/// offset `offset`. Zero for `len == 0`.
#[inline]
#[must_use]
pub const fn frames_spanned(offset: u64, len: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let offset = offset & XEN_PAGE_OFFSET_MASK;
    // Cannot overflow: offset < 4096 and the division keeps the sum in range.
    (len / XEN_PAGE_SIZE)
        + (((len % XEN_PAGE_SIZE) + offset + XEN_PAGE_OFFSET_MASK) >> XEN_PAGE_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_helpers() {
        let a = PhysAddr::new(0x1234);
        assert_eq!(a.align_down(0x1000), Some(PhysAddr::new(0x1000)));
        assert_eq!(a.align_up(0x1000), Some(PhysAddr::new(0x2000)));
        assert_eq!(a.align_up(3), None);
        assert!(PhysAddr::new(0x2000).is_aligned(0x1000));
        assert!(!a.is_aligned(0x1000));
        assert!(!a.is_aligned(0));
        assert_eq!(PhysAddr::new(u64::MAX).align_up(0x1000), None);
    }

    #[test]
    fn checked_arithmetic() {
        assert_eq!(PhysAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(PhysAddr::new(1).checked_sub(2), None);
        assert_eq!(PhysAddr::new(10).checked_last(0), None);
        assert_eq!(
            PhysAddr::new(u64::MAX).checked_last(1),
            Some(PhysAddr::new(u64::MAX))
        );
        assert_eq!(PhysAddr::new(u64::MAX).checked_last(2), None);
        assert_eq!(
            BusAddr::new(0x3000).offset_from(BusAddr::new(0x1000)),
            Some(0x2000)
        );
        assert_eq!(BusAddr::new(0x1000).offset_from(BusAddr::new(0x3000)), None);
    }

    #[test]
    fn frames() {
        let a = PhysAddr::new(0x5_1234);
        assert_eq!(a.frame(), Pfn::new(0x51));
        assert_eq!(a.frame_offset(), 0x234);
        assert_eq!(a.with_bus_frame(Bfn::new(0x99)), BusAddr::new(0x9_9234));
        assert_eq!(Pfn::try_new(u64::MAX), None);
        assert_eq!(Pfn::MAX.checked_add(1), None);
        assert_eq!(Bfn::new(7).start(), BusAddr::new(0x7000));
        assert_eq!(frames_spanned(0, 0), 0);
        assert_eq!(frames_spanned(0, 1), 1);
        assert_eq!(frames_spanned(0, 4096), 1);
        assert_eq!(frames_spanned(1, 4096), 2);
        assert_eq!(frames_spanned(4095, 2), 2);
        assert_eq!(frames_spanned(0, 8192), 2);
    }
}
