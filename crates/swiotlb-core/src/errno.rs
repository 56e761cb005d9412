//! The errno names of [`PlatformError`](crate::PlatformError): a table of Linux's errno
//! numbers, so that an error reads `ENOMEM (12)` here as `xen_abi::XenError` does.
//!
//! This crate knows nothing of Xen (the workspace's layering), so it does not take the
//! names from `xen-abi`, whose `Errno` names the same numbers from Xen's public `errno.h`;
//! the x86-pv crate, which converts one into the other, tests that the two tables agree
//! for every number. [`for_each_errno!`](crate::for_each_errno) hands the table to a macro
//! of the caller's.

/// Calls the macro `$callback` with every row of the errno table, as
/// `NAME = value, "what it means";` (Linux's numbers, the ones Xen's `errno.h` uses).
///
/// ```
/// macro_rules! count {
///     ($($name:ident = $val:expr, $what:expr;)*) => { [$($val),*].len() };
/// }
/// assert!(swiotlb_core::for_each_errno!(count) > 30);
/// ```
#[macro_export]
macro_rules! for_each_errno {
    ($callback:ident) => {
        $callback! {
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
    };
}

macro_rules! name_fn {
    ($($name:ident = $val:expr, $what:expr;)*) => {
        /// The C name of a positive errno (`name(12) == Some("ENOMEM")`), if the table has it.
        #[must_use]
        pub const fn name(errno: i64) -> Option<&'static str> {
            match errno {
                $($val => Some(stringify!($name)),)*
                _ => None,
            }
        }
    };
}

for_each_errno!(name_fn);

/// Displays a positive errno as `ENOMEM (12)`, or `errno N` when the table has no name
/// for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Named(pub i64);

impl core::fmt::Display for Named {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match name(self.0) {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn names_and_display() {
        assert_eq!(name(12), Some("ENOMEM"));
        assert_eq!(name(22), Some("EINVAL"));
        assert_eq!(name(8), None);
        assert_eq!(Named(12).to_string(), "ENOMEM (12)");
        assert_eq!(Named(4000).to_string(), "errno 4000");
    }
}
