//! The `loom` CI step: the loom models of the concurrent parts, built with `--cfg loom`.
//!
//! - `swiotlb-core`'s `tests/loom.rs`: the pool's area locks, slot states and counters
//!   (map/unmap/sync/alloc/free from two threads, a concurrent statistics reader, a sync
//!   copying outside the lock while its mapping is unmapped), and the x86 PV platform's lock
//!   and sequence range (`swiotlb_core::lock::SeqRange`: no torn or wrongly hidden lookup);
//! - `swiotlb-xen-arm64`'s `tests/loom.rs`: the foreign table's lookups racing inserts and
//!   removes, writers racing writers, and an interrupt-time lookup nested in a lookup while a
//!   writer waits (no deadlock with the interrupt hook; the deadlock shown without it);
//! - `swiotlb-xen-x86-pv`'s `tests/loom.rs`: the platform itself (its P2M and M2P entries are
//!   loom atomics under `--cfg loom`) making regions contiguous and giving them back against
//!   a model of Xen's exchange, racing lookups on another CPU (never the frame Xen took,
//!   never a half-done region), and interrupts raised inside the exchange while the lock is
//!   held: lookups that never wait, and a handler that takes the lock (no deadlock with the
//!   interrupt hook; the deadlock shown without it).
//!
//! The models run in release mode with at most [`MAX_PREEMPTIONS`] preemptions per execution
//! (unless `LOOM_MAX_PREEMPTIONS` is already set), which keeps the step well under two
//! minutes on two cores. They build in a `loom` directory of their own under the target
//! directory, so the `--cfg loom` flags do not invalidate the other steps' builds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The preemption bound the CI step uses.
pub const MAX_PREEMPTIONS: &str = "2";

/// The packages with loom models, each with a `tests/loom.rs`.
pub const PACKAGES: &[&str] = &["swiotlb-core", "swiotlb-xen-arm64", "swiotlb-xen-x86-pv"];

/// The `cargo` arguments of the step.
pub fn cargo_args() -> Vec<String> {
    let mut args = vec!["test".to_owned(), "--release".to_owned()];
    for p in PACKAGES {
        args.push("-p".to_owned());
        args.push((*p).to_owned());
    }
    args.extend(["--test".to_owned(), "loom".to_owned()]);
    args
}

/// The target directory of the loom build: `loom` under the usual one.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("loom")
}

/// Runs the loom models.
pub fn ci(root: &Path) -> Result<(), String> {
    let preemptions =
        std::env::var("LOOM_MAX_PREEMPTIONS").unwrap_or_else(|_| MAX_PREEMPTIONS.to_owned());
    let mut rustflags = std::env::var("RUSTFLAGS").unwrap_or_default();
    if !rustflags.split_whitespace().any(|f| f == "loom") {
        rustflags = format!("{rustflags} --cfg loom").trim().to_owned();
    }
    let args = cargo_args();
    println!(
        "RUSTFLAGS=\"{rustflags}\" LOOM_MAX_PREEMPTIONS={preemptions} cargo {}",
        args.join(" ")
    );
    let status = Command::new("cargo")
        .args(&args)
        .current_dir(root)
        .env("RUSTFLAGS", &rustflags)
        .env("LOOM_MAX_PREEMPTIONS", &preemptions)
        .env("CARGO_TARGET_DIR", target_dir(root))
        .status()
        .map_err(|e| format!("loom: could not start cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("loom: the models failed ({status})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_model_in_release() {
        let args = cargo_args();
        assert_eq!(args[..2], ["test", "--release"]);
        for p in PACKAGES {
            assert!(args.windows(2).any(|w| w[0] == "-p" && w[1] == *p), "{p}");
        }
        assert!(args.ends_with(&["--test".to_owned(), "loom".to_owned()]));
    }
}
