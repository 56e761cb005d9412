//! The errors of the x86 PV platform.

use swiotlb_core::hooks::{DamagedBy, Stranded};
use swiotlb_core::{Pfn, PhysAddr, PlatformError};

/// An error of [`X86PvPlatform`](crate::X86PvPlatform)'s contiguous-region operations.
///
/// Every variant that follows a hypercall says what state the region was left in. Each page
/// of the region is either mapped to a frame the domain owns with a matching P2M entry, or
/// unmapped with an INVALID P2M entry (a *stranded* page), which only
/// [`RemapFailed`](Self::RemapFailed) and [`PartialExchange`](Self::PartialExchange) can
/// report, with every stranded page counted and the first
/// [`STRANDED_LISTED`](swiotlb_core::hooks::STRANDED_LISTED) listed with the frame still the
/// domain's that they should map (none for a page whose frame Xen kept). A region with a
/// stranded page, or whose TLB flush failed, is damaged: it converts to
/// [`PlatformError::RegionDamaged`] and must be quarantined, never freed nor reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum X86PvError {
    /// The order is above the platform's maximum: the one set with
    /// [`X86PvPlatform::with_max_order`](crate::X86PvPlatform::with_max_order), or the
    /// limit learnt from Xen ([`X86PvPlatform::max_order`](crate::X86PvPlatform::max_order)).
    /// Nothing was done (no hypercall).
    #[error("order {order} exceeds the supported maximum {max}")]
    OrderTooLarge {
        /// The order asked for.
        order: u32,
        /// The largest accepted order.
        max: u32,
    },
    /// Xen refused the exchange with `EPERM` and exchanged nothing: the order is above the
    /// domain's `memop-max-order`. The original frames were remapped, so the region is as
    /// before, and the platform now accepts orders up to `max` only (a later create of this
    /// order fails with [`OrderTooLarge`](Self::OrderTooLarge) without a hypercall). A
    /// region of this order cannot be made contiguous in one piece on this Xen.
    #[error(
        "XENMEM_exchange of order {order} refused with EPERM (above the domain's \
         memop-max-order); the original frames were remapped and orders above {max} are no \
         longer asked"
    )]
    OrderRefused {
        /// The order Xen refused.
        order: u32,
        /// The largest order the platform asks from now on.
        max: u32,
    },
    /// The region does not start on a `4 KiB << order` boundary.
    #[error("{phys} is not aligned to {align:#x}")]
    Misaligned {
        /// The start of the region.
        phys: PhysAddr,
        /// The alignment required.
        align: u64,
    },
    /// The address limit cannot hold an extent of the order, or exceeds 64 bits.
    #[error("address bits {bits} outside {min}..={max}")]
    AddressBits {
        /// The bits asked for.
        bits: u32,
        /// The smallest accepted (`12 + order`).
        min: u32,
        /// The largest accepted (64).
        max: u32,
    },
    /// The region reaches beyond the P2M.
    #[error("{frames} frames from {first} reach beyond the P2M of {p2m_len} entries")]
    BeyondP2m {
        /// The first frame of the region.
        first: Pfn,
        /// The frames in the region.
        frames: u64,
        /// The P2M's length.
        p2m_len: u64,
    },
    /// A page of the region is not backed by a frame of the domain (its P2M entry is
    /// INVALID, FOREIGN or IDENTITY), so it cannot be exchanged.
    #[error("{pfn} has P2M entry {entry:#x}, not a local frame")]
    NotLocal {
        /// The page.
        pfn: Pfn,
        /// Its raw P2M entry.
        entry: u64,
    },
    /// `destroy` was given a region that is not machine-contiguous.
    #[error("{pfn} maps frame {found:#x} where the contiguous region needs {expected:#x}")]
    NotContiguous {
        /// The first page out of line.
        pfn: Pfn,
        /// The frame a contiguous region would have there.
        expected: u64,
        /// The frame it has.
        found: u64,
    },
    /// Unmapping the region (the zap) failed; the pages already unmapped were mapped again
    /// to their frames, so the region is as before.
    #[error("unmapping {pfn} failed with errno {errno}; the region was restored")]
    ZapFailed {
        /// The first page whose unmapping failed.
        pfn: Pfn,
        /// The positive errno.
        errno: i32,
    },
    /// `XENMEM_exchange` exchanged nothing; the original frames were mapped again, so the
    /// region is as before.
    #[error(
        "XENMEM_exchange failed with errno {errno} ({nr_exchanged} of {nr_extents} extents); \
         the original frames were remapped"
    )]
    ExchangeFailed {
        /// The positive errno (`EIO` if Xen returned 0 without doing the exchange).
        errno: i32,
        /// Xen's progress report.
        nr_exchanged: u64,
        /// Input extents asked for.
        nr_extents: u64,
    },
    /// `XENMEM_exchange` reported partial progress, or lost frames. Each page was mapped to
    /// the frame the M2P assigns it (a new one if Xen exchanged it, the original otherwise);
    /// pages with no such frame were left unmapped with an INVALID P2M entry (`unresolved`
    /// of them), and `stranded` lists every page left unmapped (those, and any whose
    /// mapping failed). The region is damaged when `stranded` is not empty.
    #[error(
        "XENMEM_exchange did {nr_exchanged} of {nr_extents} extents (errno {errno}); \
         pages remapped to the frames Xen assigned, {unresolved} left without a frame: \
         {stranded}"
    )]
    PartialExchange {
        /// The positive errno Xen returned (0 if none).
        errno: i32,
        /// Xen's progress report.
        nr_exchanged: u64,
        /// Input extents asked for.
        nr_extents: u64,
        /// Pages left unmapped with an INVALID P2M entry because no frame is theirs.
        unresolved: u64,
        /// Every page left unmapped, and whether the TLB was flushed.
        stranded: Stranded,
    },
    /// Mapping a page failed even when retried alone, or the final TLB flush failed even
    /// retried and done explicitly (`MMUEXT_TLB_FLUSH_ALL`): the failing pages were left
    /// unmapped with an INVALID P2M entry, every other page is mapped. `stranded` counts
    /// them all and lists the first with the frame each should map (still the domain's,
    /// for the kernel to map later). A create that reports this did exchange the region.
    #[error("remapping failed with errno {errno}: {stranded}")]
    RemapFailed {
        /// The positive errno of the first mapping that failed.
        errno: i32,
        /// The pages left unmapped, and whether the TLB was flushed.
        stranded: Stranded,
    },
    /// Xen returned an extent that is not aligned to its order or not below the limit. The
    /// region is mapped to it (consistent), but the caller's requirement is not met.
    #[error("Xen returned frame {mfn:#x} for an order-{order} extent below 2^{bits}")]
    ExtentOutOfRange {
        /// The first frame returned.
        mfn: u64,
        /// The order.
        order: u32,
        /// The address limit asked for.
        bits: u32,
    },
}

/// `EIO`, for a damaging exchange that reported no errno.
const EIO: i32 = 5;
/// `EPERM`, Xen's answer to an exchange above the domain's order limit.
const EPERM: i32 = 1;

impl From<X86PvError> for PlatformError {
    fn from(e: X86PvError) -> Self {
        match e {
            X86PvError::OrderTooLarge { order, max } => Self::OrderTooLarge { order, max },
            X86PvError::OrderRefused { order, max } => Self::OrderRefused {
                op: "XENMEM_exchange",
                errno: EPERM,
                order,
                max,
            },
            X86PvError::Misaligned { phys, align } => Self::Misaligned { addr: phys, align },
            X86PvError::AddressBits { bits, min, max } => Self::AddressBits { bits, min, max },
            X86PvError::BeyondP2m { first, .. } => Self::NoTranslation { pfn: first },
            X86PvError::NotLocal { pfn, .. } => Self::NoTranslation { pfn },
            X86PvError::NotContiguous { .. } => Self::Unsupported {
                what: "destroying a region that is not machine-contiguous",
            },
            X86PvError::ZapFailed { errno, .. } => Self::Hypercall {
                op: "update_va_mapping (unmap)",
                errno,
            },
            X86PvError::ExchangeFailed { errno, .. } => Self::Hypercall {
                op: "XENMEM_exchange",
                errno,
            },
            X86PvError::PartialExchange {
                errno, stranded, ..
            } if stranded.is_damage() => Self::RegionDamaged {
                op: DamagedBy::Exchange,
                errno: if errno == 0 { EIO } else { errno },
                stranded,
            },
            X86PvError::PartialExchange { errno, .. } => Self::Hypercall {
                op: "XENMEM_exchange (partial)",
                errno,
            },
            X86PvError::RemapFailed { errno, stranded } => Self::RegionDamaged {
                op: if stranded.count() == 0 {
                    DamagedBy::Flush
                } else {
                    DamagedBy::Remap
                },
                errno,
                stranded,
            },
            X86PvError::ExtentOutOfRange { .. } => Self::Exhausted {
                what: "machine memory below the address limit",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `swiotlb-core` (which knows nothing of Xen) and `xen-abi` name the errnos with tables
    /// of their own; a `XenError` turned into a `PlatformError` must read the same.
    #[test]
    fn the_core_and_abi_errno_tables_agree() {
        for n in -5..=4200 {
            assert_eq!(
                swiotlb_core::errno::name(n),
                xen_abi::Errno::new(n).name(),
                "errno {n}"
            );
        }
        let named = (1..=4200).filter(|&n| xen_abi::Errno::new(n).name().is_some());
        assert!(named.count() >= 38);
    }

    #[test]
    fn platform_errors_keep_the_values_and_name_the_operation() {
        let pfn = Pfn::new(7);
        assert_eq!(
            PlatformError::from(X86PvError::OrderTooLarge { order: 21, max: 20 }),
            PlatformError::OrderTooLarge { order: 21, max: 20 }
        );
        assert_eq!(
            PlatformError::from(X86PvError::OrderRefused { order: 12, max: 11 }),
            PlatformError::OrderRefused {
                op: "XENMEM_exchange",
                errno: 1,
                order: 12,
                max: 11
            }
        );
        let phys = PhysAddr::new(0x1000);
        assert_eq!(
            PlatformError::from(X86PvError::Misaligned {
                phys,
                align: 0x2000
            }),
            PlatformError::Misaligned {
                addr: phys,
                align: 0x2000
            }
        );
        assert_eq!(
            PlatformError::from(X86PvError::NotLocal { pfn, entry: !0 }),
            PlatformError::NoTranslation { pfn }
        );
        assert_eq!(
            PlatformError::from(X86PvError::ZapFailed { pfn, errno: 22 }),
            PlatformError::Hypercall {
                op: "update_va_mapping (unmap)",
                errno: 22
            }
        );
        assert_eq!(
            PlatformError::from(X86PvError::ExchangeFailed {
                errno: 12,
                nr_exchanged: 0,
                nr_extents: 64
            }),
            PlatformError::Hypercall {
                op: "XENMEM_exchange",
                errno: 12
            }
        );
        let mut stranded = Stranded::new();
        stranded.push(pfn, Some(swiotlb_core::Bfn::new(3)));
        assert_eq!(
            PlatformError::from(X86PvError::RemapFailed {
                errno: 14,
                stranded
            }),
            PlatformError::RegionDamaged {
                op: DamagedBy::Remap,
                errno: 14,
                stranded
            }
        );
        // A partial exchange that left every page with a frame of its own is no damage.
        assert_eq!(
            PlatformError::from(X86PvError::PartialExchange {
                errno: 12,
                nr_exchanged: 1,
                nr_extents: 2,
                unresolved: 0,
                stranded: Stranded::new()
            }),
            PlatformError::Hypercall {
                op: "XENMEM_exchange (partial)",
                errno: 12
            }
        );
    }
}
