//! Printing on Xen's console with `console_io(CONSOLEIO_write)`, one line per call.

use core::fmt::{self, Write};

use arrayvec::ArrayString;

/// A line of at most 512 bytes; longer output is cut (and marked with `...`).
pub type Line = ArrayString<512>;

/// Formats `args` into a [`Line`], cutting it if it is too long.
pub fn format(args: fmt::Arguments<'_>) -> Line {
    let mut line = Line::new();
    if line.write_fmt(args).is_err() {
        line.truncate(line.len().saturating_sub(3));
        let _ = line.try_push_str("...");
    }
    line
}

/// Prints `args` and a newline on Xen's console. Errors are ignored: there is nowhere else
/// to report them.
pub fn line(args: fmt::Arguments<'_>) {
    let mut text = format(args);
    if text.try_push('\n').is_err() {
        text.pop();
        text.push('\n');
    }
    let _ = xen_abi::ops::console_write(&crate::hyp::Native, text.as_bytes());
}

/// `println!` on Xen's console.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {
        $crate::console::line(format_args!($($arg)*))
    };
}

/// `format!` into a [`Line`].
#[macro_export]
macro_rules! fmt_line {
    ($($arg:tt)*) => {
        $crate::console::format(format_args!($($arg)*))
    };
}
