//! `cargo xtask soak --minutes N [--threads T]`: concurrent map/unmap/sync with random
//! sizes, directions, attributes and devices through one engine on the simulated Xen (x86 PV,
//! then arm64), with coherent allocations, foreign pages (arm64), a simulator fault kept
//! armed and a pool filled to the last slot again and again; every byte verified, the
//! invariants checked with every thread paused every ten seconds, the frames counted at the
//! end. It runs the `soak` example of `swiotlb-xen` in release mode, which prints the
//! progress and a summary (mappings and elapsed time), and fails on the first wrong byte,
//! lost frame or broken invariant.
//!
//! The `soak-smoke` CI step ([`ci`]) runs the same for [`SMOKE_SECONDS`] seconds with
//! [`SMOKE_THREADS`] threads.

use std::path::Path;
use std::process::{Command, ExitCode};

/// Seconds of the `soak-smoke` CI step (half on each machine).
pub const SMOKE_SECONDS: u64 = 60;
/// Worker threads of the `soak-smoke` CI step.
pub const SMOKE_THREADS: u64 = 2;

/// The arguments of the `soak` example: `--minutes N` or `--seconds N` (one required, a
/// positive number) and optionally `--threads T`.
pub fn example_args(args: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut minutes = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = |v: Option<&String>| -> Result<u64, String> {
            v.and_then(|v| v.parse().ok())
                .filter(|&n: &u64| n > 0)
                .ok_or_else(|| format!("{a} needs a positive number"))
        };
        match a.as_str() {
            "--minutes" => minutes = Some(("--minutes", value(it.next())?)),
            "--seconds" => minutes = Some(("--seconds", value(it.next())?)),
            "--threads" => {
                let t = value(it.next())?;
                out.extend(["--threads".to_owned(), t.to_string()]);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let (unit, n) = minutes.ok_or("--minutes or --seconds is required")?;
    out.extend([unit.to_owned(), n.to_string()]);
    Ok(out)
}

/// The `cargo` command that runs the example with `example` arguments.
fn command(example: &[String]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "--release",
        "-p",
        "swiotlb-xen",
        "--example",
        "soak",
        "--",
    ])
    .args(example);
    println!(
        "cargo run --release -p swiotlb-xen --example soak -- {}",
        example.join(" ")
    );
    cmd
}

/// The `soak-smoke` CI step: a one-minute soak with faults, foreign pages and a full pool.
pub fn ci(root: &Path) -> Result<(), String> {
    let example = example_args(&[
        "--seconds".to_owned(),
        SMOKE_SECONDS.to_string(),
        "--threads".to_owned(),
        SMOKE_THREADS.to_string(),
    ])?;
    let status = command(&example)
        .current_dir(root)
        .status()
        .map_err(|e| format!("soak: could not start cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("soak: failed ({status})"))
    }
}

/// Usage text, for `--help` and after a usage error.
pub const USAGE: &str = "usage: cargo xtask soak (--minutes N | --seconds N) [--threads T]";

/// Runs the command with its arguments: `--help` prints the usage; a usage error exits 2.
pub fn run(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let example = match example_args(args) {
        Ok(a) => a,
        Err(e) => {
            // A usage error, as for every tool of the project.
            eprintln!("xtask soak: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match command(&example).status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("xtask soak: failed ({s})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask soak: could not start cargo: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn help_answers_and_usage_errors_exit_2() {
        assert_eq!(run(&s(&["--help"])), ExitCode::SUCCESS);
        assert_eq!(run(&s(&[])), ExitCode::from(2));
        assert_eq!(run(&s(&["--minutes", "0"])), ExitCode::from(2));
    }

    #[test]
    fn minutes_are_required_and_positive() {
        assert_eq!(
            example_args(&s(&["--minutes", "15"])),
            Ok(s(&["--minutes", "15"]))
        );
        assert_eq!(
            example_args(&s(&["--threads", "2", "--minutes", "1"])),
            Ok(s(&["--threads", "2", "--minutes", "1"]))
        );
        assert_eq!(
            example_args(&s(&["--seconds", "60", "--threads", "2"])),
            Ok(s(&["--threads", "2", "--seconds", "60"]))
        );
        assert!(example_args(&[]).is_err());
        assert!(example_args(&s(&["--minutes", "0"])).is_err());
        assert!(example_args(&s(&["--minutes", "x"])).is_err());
        assert!(example_args(&s(&["--hours", "1"])).is_err());
    }
}
