//! The few hypercalls this crate makes, through `xen_abi`'s typed wrappers, and how their
//! errors become [`PlatformError`]s.

use swiotlb_core::PlatformError;
use xen_abi::{GntStatus, GnttabCacheFlush, GnttabUnmapGrantRef, Hypercall, XenError, ops};

/// A Xen error as the platform hooks report it.
pub(crate) fn platform_error(e: XenError) -> PlatformError {
    PlatformError::Hypercall {
        op: e.op,
        // A value beyond i32 is not an errno Xen returns; saturate rather than wrap.
        errno: i32::try_from(e.errno.value()).unwrap_or(i32::MAX),
    }
}

/// `GNTTABOP_cache_flush` of one request.
///
/// # Safety
///
/// As for [`ops::cache_flush`]: an invalidate discards what the CPU wrote to the range and did
/// not clean, so the caller must mean that.
pub(crate) unsafe fn cache_flush<H: Hypercall + ?Sized>(
    hyp: &H,
    req: &mut GnttabCacheFlush,
) -> Result<(), XenError> {
    // SAFETY: forwarded from the caller.
    unsafe { ops::cache_flush(hyp, req) }
}

/// How an unmap failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnmapFailure {
    /// The hypercall itself failed.
    Hypercall(XenError),
    /// The hypercall succeeded but the request's status is not `GNTST_okay`.
    Status(GntStatus),
}

/// `GNTTABOP_unmap_grant_ref` of one request; `Ok` only if the hypercall and the request's
/// status both succeeded.
///
/// # Safety
///
/// `req` must name a grant mapping this domain made and that nothing uses any more: once
/// unmapped, `req.host_addr` no longer reaches the granted page.
pub(crate) unsafe fn unmap_grant<H: Hypercall + ?Sized>(
    hyp: &H,
    req: &mut GnttabUnmapGrantRef,
) -> Result<(), UnmapFailure> {
    // SAFETY: the caller guarantees the mapping may go.
    unsafe { ops::grant_unmap(hyp, core::slice::from_mut(req)) }
        .map_err(UnmapFailure::Hypercall)?;
    GntStatus(req.status).ok().map_err(UnmapFailure::Status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::Errno;

    #[test]
    fn xen_errors_keep_op_and_errno() {
        let e = XenError::new("GNTTABOP_cache_flush", Errno::EINVAL);
        assert_eq!(
            platform_error(e),
            PlatformError::Hypercall {
                op: "GNTTABOP_cache_flush",
                errno: 22
            }
        );
        let odd = XenError::new("x", Errno::new(i64::MAX));
        assert!(matches!(
            platform_error(odd),
            PlatformError::Hypercall {
                errno: i32::MAX,
                ..
            }
        ));
    }
}
