//! Errors: [`Errno`] values returned by Xen, [`XenError`] naming the operation that failed,
//! and [`GntStatus`] for the per-entry `GNTST_*` codes of grant operations.

use core::fmt;

/// An errno value as Xen returns it, negated (`-EINVAL` comes back as `Errno::EINVAL`).
///
/// Xen's public `errno.h` uses Linux's numbers for all values named here. Values without a
/// name are kept as they are and shown as `errno N`.
///
/// A value of zero or below never comes from Xen as an error: it marks a result that was not
/// negative but broke the operation's contract (for example a positive return where Xen
/// defines only 0), and holds that result negated; see [`XenError::unexpected`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(i64);

macro_rules! errnos {
    ($($name:ident = $val:expr, $what:expr;)*) => {
        impl Errno {
            $(
                #[doc = concat!("`", stringify!($name), "` (", stringify!($val), "): ", $what, ".")]
                pub const $name: Self = Self($val);
            )*

            /// The C name of the value (`"EINVAL"`), if it is one of the named ones.
            #[must_use]
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

// Xen's public `errno.h` (Linux's numbers). `swiotlb-core`, which knows nothing of Xen,
// names the same numbers for its `PlatformError`; the x86-pv crate's tests check that the
// two tables agree.
errnos! {
    EPERM = 1, "operation not permitted";
    ENOENT = 2, "no such entry";
    ESRCH = 3, "no such domain or process";
    EINTR = 4, "interrupted";
    EIO = 5, "I/O error";
    ENXIO = 6, "no such device or address";
    E2BIG = 7, "argument list too long";
    EBADF = 9, "bad file descriptor";
    EAGAIN = 11, "try again";
    ENOMEM = 12, "out of memory";
    EACCES = 13, "permission denied";
    EFAULT = 14, "bad address";
    EBUSY = 16, "busy";
    EEXIST = 17, "exists";
    EXDEV = 18, "cross-device link";
    ENODEV = 19, "no such device";
    EINVAL = 22, "invalid argument";
    ENOSPC = 28, "no space left";
    ERANGE = 34, "result out of range";
    EDEADLK = 35, "deadlock would occur";
    ENAMETOOLONG = 36, "name too long";
    ENOSYS = 38, "operation not implemented";
    ENOTEMPTY = 39, "not empty";
    ENODATA = 61, "no data";
    ETIME = 62, "timer expired";
    EBADMSG = 74, "bad message";
    EOVERFLOW = 75, "value too large";
    EILSEQ = 84, "illegal sequence";
    ERESTART = 85, "restart the call";
    ENOTSOCK = 88, "not a socket";
    EOPNOTSUPP = 95, "operation not supported";
    EADDRINUSE = 98, "address in use";
    EADDRNOTAVAIL = 99, "address not available";
    ENOBUFS = 105, "no buffer space";
    EISCONN = 106, "already connected";
    ENOTCONN = 107, "not connected";
    ETIMEDOUT = 110, "timed out";
    ECONNREFUSED = 111, "connection refused";
}

impl Errno {
    /// An errno value (positive for a real errno).
    #[must_use]
    pub const fn new(value: i64) -> Self {
        Self(value)
    }

    /// The value.
    #[must_use]
    pub const fn value(self) -> i64 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None if self.0 > 0 => write!(f, "errno {}", self.0),
            // The value holds an unexpected non-negative result, negated.
            None => write!(f, "unexpected result {}", self.0.unsigned_abs()),
        }
    }
}

/// A hypercall that failed: the operation (Xen's name for it, such as `"XENMEM_exchange"`)
/// and the errno.
///
/// Displayed as `XENMEM_exchange: EINVAL (22)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{op}: {errno}")]
pub struct XenError {
    /// The operation, by Xen's name (`XENMEM_exchange`, `GNTTABOP_cache_flush`, ...).
    pub op: &'static str,
    /// Why it failed.
    pub errno: Errno,
}

impl XenError {
    /// An error of `op` with `errno`.
    #[must_use]
    pub const fn new(op: &'static str, errno: Errno) -> Self {
        Self { op, errno }
    }

    /// A result of `op` that is not negative but breaks the operation's contract (for example
    /// a positive value where Xen returns only 0, or more entries done than were asked for).
    /// The errno holds `-rc`, which is shown as `unexpected result N`.
    #[must_use]
    pub const fn unexpected(op: &'static str, rc: i64) -> Self {
        Self {
            op,
            errno: Errno(rc.saturating_neg()),
        }
    }

    /// Whether the error is `errno`.
    #[must_use]
    pub fn is(&self, errno: Errno) -> bool {
        self.errno == errno
    }
}

/// Turns a raw hypercall result into a `Result`: a non-negative `rc` is `Ok(rc)`, a
/// negative one is `Err` with errno `-rc`.
///
/// # Errors
///
/// [`XenError`] with `op` and `-rc` when `rc < 0`.
pub const fn check(op: &'static str, rc: i64) -> Result<u64, XenError> {
    if rc < 0 {
        // `saturating_neg` keeps `i64::MIN` representable; Xen never returns it.
        Err(XenError::new(op, Errno(rc.saturating_neg())))
    } else {
        // CAST: rc is non-negative, so the conversion is lossless.
        Ok(rc as u64)
    }
}

/// Like [`check`] for operations that return 0 on success and nothing else.
///
/// # Errors
///
/// [`XenError`] with `-rc` when `rc < 0`, or [`XenError::unexpected`] when `rc > 0`.
pub const fn check_zero(op: &'static str, rc: i64) -> Result<(), XenError> {
    match check(op, rc) {
        Ok(0) => Ok(()),
        Ok(_) => Err(XenError::unexpected(op, rc)),
        Err(e) => Err(e),
    }
}

/// A `GNTST_*` status of one grant-table entry (the `status` field Xen writes back).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GntStatus(pub i16);

macro_rules! gntst {
    ($($name:ident = $c:ident, $cname:expr;)*) => {
        impl GntStatus {
            $(
                #[doc = concat!("`", $cname, "`.")]
                pub const $name: Self = Self(crate::consts::$c);
            )*

            /// Xen's name of the status (`"GNTST_bad_gntref"`), if it is a known one.
            #[must_use]
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(crate::consts::$c => Some($cname),)*
                    _ => None,
                }
            }
        }
    };
}

gntst! {
    OKAY = GNTST_OKAY, "GNTST_okay";
    GENERAL_ERROR = GNTST_GENERAL_ERROR, "GNTST_general_error";
    BAD_DOMAIN = GNTST_BAD_DOMAIN, "GNTST_bad_domain";
    BAD_GNTREF = GNTST_BAD_GNTREF, "GNTST_bad_gntref";
    BAD_HANDLE = GNTST_BAD_HANDLE, "GNTST_bad_handle";
    BAD_VIRT_ADDR = GNTST_BAD_VIRT_ADDR, "GNTST_bad_virt_addr";
    BAD_DEV_ADDR = GNTST_BAD_DEV_ADDR, "GNTST_bad_dev_addr";
    NO_DEVICE_SPACE = GNTST_NO_DEVICE_SPACE, "GNTST_no_device_space";
    PERMISSION_DENIED = GNTST_PERMISSION_DENIED, "GNTST_permission_denied";
    BAD_PAGE = GNTST_BAD_PAGE, "GNTST_bad_page";
    BAD_COPY_ARG = GNTST_BAD_COPY_ARG, "GNTST_bad_copy_arg";
    ADDRESS_TOO_BIG = GNTST_ADDRESS_TOO_BIG, "GNTST_address_too_big";
    EAGAIN = GNTST_EAGAIN, "GNTST_eagain";
    NO_SPACE = GNTST_NO_SPACE, "GNTST_no_space";
}

impl GntStatus {
    /// Whether the status is `GNTST_okay`.
    #[must_use]
    pub const fn is_okay(self) -> bool {
        self.0 == crate::consts::GNTST_OKAY
    }

    /// `Ok(())` for `GNTST_okay`, the status as the error otherwise.
    ///
    /// # Errors
    ///
    /// The status itself when it is not `GNTST_okay`.
    pub const fn ok(self) -> Result<(), Self> {
        if self.is_okay() { Ok(()) } else { Err(self) }
    }
}

impl From<i16> for GntStatus {
    fn from(v: i16) -> Self {
        Self(v)
    }
}

impl fmt::Debug for GntStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for GntStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "GNTST {}", self.0),
        }
    }
}

impl core::error::Error for GntStatus {}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn display_names_the_op_and_errno() {
        let e = XenError::new("XENMEM_exchange", Errno::EINVAL);
        assert_eq!(e.to_string(), "XENMEM_exchange: EINVAL (22)");
        assert_eq!(Errno::new(4000).to_string(), "errno 4000");
        assert_eq!(
            XenError::unexpected("XENMEM_exchange", 3).to_string(),
            "XENMEM_exchange: unexpected result 3"
        );
    }

    #[test]
    fn named_errnos_have_linux_values() {
        for (e, v, n) in [
            (Errno::EPERM, 1, "EPERM"),
            (Errno::ENOENT, 2, "ENOENT"),
            (Errno::ESRCH, 3, "ESRCH"),
            (Errno::EAGAIN, 11, "EAGAIN"),
            (Errno::ENOMEM, 12, "ENOMEM"),
            (Errno::EFAULT, 14, "EFAULT"),
            (Errno::EBUSY, 16, "EBUSY"),
            (Errno::EEXIST, 17, "EEXIST"),
            (Errno::EINVAL, 22, "EINVAL"),
            (Errno::ENOSPC, 28, "ENOSPC"),
            (Errno::ENOSYS, 38, "ENOSYS"),
            (Errno::EILSEQ, 84, "EILSEQ"),
            (Errno::EOPNOTSUPP, 95, "EOPNOTSUPP"),
        ] {
            assert_eq!(e.value(), v);
            assert_eq!(e.name(), Some(n));
        }
        assert_eq!(Errno::new(200).name(), None);
    }

    #[test]
    fn check_maps_results() {
        assert_eq!(check("op", 0), Ok(0));
        assert_eq!(check("op", 7), Ok(7));
        assert_eq!(check("op", -12), Err(XenError::new("op", Errno::ENOMEM)));
        assert_eq!(check("op", -4000).unwrap_err().errno.value(), 4000);
        assert_eq!(check("op", i64::MIN).unwrap_err().errno.value(), i64::MAX);
        assert_eq!(check_zero("op", 0), Ok(()));
        assert_eq!(check_zero("op", 1), Err(XenError::unexpected("op", 1)));
        assert!(check_zero("op", -95).unwrap_err().is(Errno::EOPNOTSUPP));
    }

    #[test]
    fn gnttab_status_names() {
        assert_eq!(GntStatus::BAD_GNTREF.to_string(), "GNTST_bad_gntref (-3)");
        assert_eq!(GntStatus(-99).to_string(), "GNTST -99");
        assert_eq!(GntStatus::from(-13), GntStatus::NO_SPACE);
        assert!(GntStatus::OKAY.ok().is_ok());
        assert_eq!(GntStatus::EAGAIN.ok(), Err(GntStatus::EAGAIN));
        for v in -13..=0 {
            assert!(GntStatus(v).name().is_some(), "GNTST {v} has no name");
        }
    }
}
