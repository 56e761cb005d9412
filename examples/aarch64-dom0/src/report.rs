//! One line per check, and the verdict line the harness looks for.

use core::fmt::{self, Write};

/// The verdict line's prefix; the harness fails unless `PASS` follows it.
pub const VERDICT_PREFIX: &str = "XEN-QEMU aarch64: ";

/// The prefix of every check line; the harness counts the lines whose status is `ok`.
pub const CHECK_PREFIX: &str = "XEN-QEMU aarch64 check ";

/// Counts checks and failures and prints one line per check to `W`.
#[derive(Debug)]
pub struct Report<W> {
    out: W,
    checks: u32,
    failed: u32,
}

impl<W: Write> Report<W> {
    /// A report printing to `out`.
    pub const fn new(out: W) -> Self {
        Self {
            out,
            checks: 0,
            failed: 0,
        }
    }

    /// Records a check named `name` (no `": "` in it) that passed if `ok`. Prints
    /// `XEN-QEMU aarch64 check NN-name: ok detail` or `...: FAIL detail` (the detail says what
    /// was seen either way). Returns `ok`.
    pub fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments<'_>) -> bool {
        self.checks += 1;
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

    /// Prints the verdict line: `XEN-QEMU aarch64: PASS (N checks)` or
    /// `XEN-QEMU aarch64: FAIL (F of N checks failed)`.
    pub fn finish(&mut self) -> bool {
        let passed = self.passed();
        let _ = if passed {
            writeln!(self.out, "{VERDICT_PREFIX}PASS ({} checks)", self.checks)
        } else {
            writeln!(
                self.out,
                "{VERDICT_PREFIX}FAIL ({} of {} checks failed)",
                self.failed, self.checks
            )
        };
        passed
    }

    /// Prints the verdict line for a run that stopped early, whatever the counts say.
    pub fn abort(&mut self, why: fmt::Arguments<'_>) {
        let _ = writeln!(
            self.out,
            "{VERDICT_PREFIX}FAIL (stopped after {} checks: {why})",
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
        assert!(r.finish());
        assert!(r.out().ends_with(
            "XEN-QEMU aarch64 check 01-one: ok fine\nXEN-QEMU aarch64: PASS (1 checks)\n"
        ));
        assert!(!r.check("two", false, format_args!("rc {}", -22)));
        assert!(!r.finish());
        assert!(
            r.out()
                .contains("XEN-QEMU aarch64 check 02-two: FAIL rc -22\n")
        );
        assert!(
            r.out()
                .ends_with("XEN-QEMU aarch64: FAIL (1 of 2 checks failed)\n")
        );
        assert_eq!((r.checks(), r.failed()), (2, 1));
    }
}
