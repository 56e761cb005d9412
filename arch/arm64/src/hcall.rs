//! The few hypercalls this crate makes, marshalled through [`xen_abi::Hypercall`].

use xen_abi::{
    GNTTABOP_CACHE_FLUSH, GNTTABOP_UNMAP_GRANT_REF, GnttabCacheFlush, GnttabUnmapGrantRef,
    HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_XEN_VERSION, Hypercall, XENVER_GET_FEATURES,
};

/// `ENOSYS`: the hypercall or sub-operation does not exist.
pub(crate) const ENOSYS: i32 = 38;

/// `struct xen_feature_info` (8 bytes): one 32-bit word of the feature bitmap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct XenFeatureInfo {
    /// IN: which 32-bit word.
    submap_idx: u32,
    /// OUT: the word.
    submap: u32,
}

const _: () = assert!(core::mem::size_of::<XenFeatureInfo>() == 8);

/// Turns Xen's result into `Ok(value)` or `Err(errno)` (a positive errno).
pub(crate) fn check(ret: i64) -> Result<i64, i32> {
    if ret >= 0 {
        Ok(ret)
    } else {
        // A result below -i32::MAX is not an errno Xen returns; saturate rather than wrap.
        Err(ret
            .checked_neg()
            .and_then(|e| i32::try_from(e).ok())
            .unwrap_or(i32::MAX))
    }
}

/// The argument word for a pointer handed to Xen.
fn arg<T>(p: *mut T) -> u64 {
    // CAST: usize is at most 64 bits on every supported target; the provenance is exposed so
    // that a simulated hypervisor may turn the word back into a pointer.
    p.expose_provenance() as u64
}

/// `XENVER_get_features` for word `submap_idx` of the feature bitmap.
pub(crate) fn get_features<H: Hypercall + ?Sized>(hyp: &H, submap_idx: u32) -> Result<u32, i32> {
    let mut info = XenFeatureInfo {
        submap_idx,
        submap: 0,
    };
    // SAFETY: `info` is a live, writable `xen_feature_info` for the whole call, which is all
    // XENVER_get_features reads and writes; it changes nothing else.
    let ret = unsafe {
        hyp.hypercall(
            HYPERVISOR_XEN_VERSION,
            [u64::from(XENVER_GET_FEATURES), arg(&raw mut info), 0, 0, 0],
        )
    };
    check(ret).map(|_| info.submap)
}

/// `GNTTABOP_cache_flush` of one request.
pub(crate) fn cache_flush<H: Hypercall + ?Sized>(
    hyp: &H,
    req: &mut GnttabCacheFlush,
) -> Result<(), i32> {
    // SAFETY: `req` is a live `gnttab_cache_flush` for the whole call and the count is 1.
    // Cache maintenance changes no memory contents and no mapping.
    let ret = unsafe {
        hyp.hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            [u64::from(GNTTABOP_CACHE_FLUSH), arg(req), 1, 0, 0],
        )
    };
    check(ret).map(|_| ())
}

/// How an unmap failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnmapFailure {
    /// The hypercall itself failed with this errno.
    Hypercall(i32),
    /// The hypercall succeeded but the request's status is this `GNTST_*` code.
    Status(i16),
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
    // SAFETY: `req` is a live `gnttab_unmap_grant_ref` for the whole call and the count is 1;
    // the caller guarantees the mapping may go.
    let ret = unsafe {
        hyp.hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            [u64::from(GNTTABOP_UNMAP_GRANT_REF), arg(req), 1, 0, 0],
        )
    };
    check(ret).map_err(UnmapFailure::Hypercall)?;
    if req.status == xen_abi::GNTST_OKAY {
        Ok(())
    } else {
        Err(UnmapFailure::Status(req.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_maps_results() {
        assert_eq!(check(0), Ok(0));
        assert_eq!(check(5), Ok(5));
        assert_eq!(check(-38), Err(38));
        assert_eq!(check(i64::MIN), Err(i32::MAX));
    }
}
