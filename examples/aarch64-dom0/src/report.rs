//! One line per check, and the verdict line the harness looks for.

use core::fmt::{self, Write};

/// The verdict line's prefix; the Xen version (`xen-4.17`), `: ` and `PASS` or `FAIL`
/// follow it.
pub const VERDICT_PREFIX: &str = "XEN-QEMU aarch64 ";

/// The prefix (after the `NN-` number) of a device DMA check's name: a check that moves real
/// bytes through a real device and verifies them through the CPU.
pub const DEVICE_CHECK_PREFIX: &str = "dev-";

/// The prefix of every check line; the harness counts the lines whose status is `ok`.
pub const CHECK_PREFIX: &str = "XEN-QEMU aarch64 check ";

/// Counts checks, device DMA checks and failures and prints one line per check to `W`.
#[derive(Debug)]
pub struct Report<W> {
    out: W,
    checks: u32,
    device: u32,
    failed: u32,
    xen: Option<(u32, u32)>,
}

impl<W: Write> Report<W> {
    /// A report printing to `out`.
    pub const fn new(out: W) -> Self {
        Self {
            out,
            checks: 0,
            device: 0,
            failed: 0,
            xen: None,
        }
    }

    /// Records the Xen version (`XENVER_version`) the verdict line names.
    pub fn set_xen_version(&mut self, major: u32, minor: u32) {
        self.xen = Some((major, minor));
    }

    fn write_verdict_head(&mut self) {
        let _ = match self.xen {
            Some((major, minor)) => write!(self.out, "{VERDICT_PREFIX}xen-{major}.{minor}: "),
            None => write!(self.out, "{VERDICT_PREFIX}xen-unknown: "),
        };
    }

    /// Records a check named `name` (no `": "` in it) that passed if `ok`. Prints
    /// `XEN-QEMU aarch64 check NN-name: ok detail` or `...: FAIL detail` (the detail says what
    /// was seen either way). A name starting with [`DEVICE_CHECK_PREFIX`] counts as a
    /// device DMA check. Returns `ok`.
    pub fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments<'_>) -> bool {
        self.checks += 1;
        if name.starts_with(DEVICE_CHECK_PREFIX) {
            self.device += 1;
        }
        let word = if ok { "ok" } else { "FAIL" };
        if !ok {
            self.failed += 1;
        }
        // A console that cannot print loses the line, not the count.
        let _ = writeln!(
            self.out,
            "{CHECK_PREFIX}{:02}-{name}: {word} {detail}",
            self.checks
        );
        ok
    }

    /// Prints an informational line (not a check).
    pub fn note(&mut self, args: fmt::Arguments<'_>) {
        let _ = writeln!(self.out, "{args}");
    }

    /// How many checks ran.
    #[must_use]
    pub const fn checks(&self) -> u32 {
        self.checks
    }

    /// How many of them are device DMA checks.
    #[must_use]
    pub const fn device_checks(&self) -> u32 {
        self.device
    }

    /// How many checks failed.
    #[must_use]
    pub const fn failed(&self) -> u32 {
        self.failed
    }

    /// Whether every check passed (and at least one ran).
    #[must_use]
    pub const fn passed(&self) -> bool {
        self.failed == 0 && self.checks > 0
    }

    /// Prints the verdict line:
    /// `XEN-QEMU aarch64 xen-<major>.<minor>: PASS (N checks, D device DMA checks)` or
    /// `... : FAIL (F of N checks failed, D device DMA checks)` (`xen-unknown` if the version
    /// was never recorded, which also fails).
    pub fn finish(&mut self) -> bool {
        let passed = self.passed() && self.xen.is_some();
        self.write_verdict_head();
        let _ = if passed {
            writeln!(
                self.out,
                "PASS ({} checks, {} device DMA checks)",
                self.checks, self.device
            )
        } else {
            writeln!(
                self.out,
                "FAIL ({} of {} checks failed, {} device DMA checks)",
                self.failed, self.checks, self.device
            )
        };
        passed
    }

    /// Prints the verdict line for a run that stopped early, whatever the counts say.
    pub fn abort(&mut self, why: fmt::Arguments<'_>) {
        self.write_verdict_head();
        let _ = writeln!(
            self.out,
            "FAIL (stopped after {} checks: {why})",
            self.checks
        );
    }

    /// The sink.
    pub fn out(&mut self) -> &mut W {
        &mut self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_prints_the_verdict() {
        let mut r = Report::new(String::new());
        assert!(!r.passed(), "no check is not a pass");
        assert!(r.check("one", true, format_args!("fine")));
        assert!(r.passed());
        assert!(!r.finish(), "no Xen version is not a pass");
        assert!(r.out().ends_with(
            "XEN-QEMU aarch64 xen-unknown: FAIL (0 of 1 checks failed, 0 device DMA checks)\n"
        ));
        r.set_xen_version(4, 17);
        assert!(r.check("dev-direct", true, format_args!("moved")));
        assert!(r.finish());
        assert!(r.out().ends_with(
            "XEN-QEMU aarch64 check 02-dev-direct: ok moved\n\
             XEN-QEMU aarch64 xen-4.17: PASS (2 checks, 1 device DMA checks)\n"
        ));
        assert!(!r.check("two", false, format_args!("rc {}", -22)));
        assert!(!r.finish());
        assert!(
            r.out()
                .contains("XEN-QEMU aarch64 check 03-two: FAIL rc -22\n")
        );
        assert!(r.out().ends_with(
            "XEN-QEMU aarch64 xen-4.17: FAIL (1 of 3 checks failed, 1 device DMA checks)\n"
        ));
        assert_eq!((r.checks(), r.device_checks(), r.failed()), (3, 1, 1));
        r.abort(format_args!("no grants"));
        assert!(
            r.out()
                .ends_with("XEN-QEMU aarch64 xen-4.17: FAIL (stopped after 3 checks: no grants)\n")
        );
    }
}
