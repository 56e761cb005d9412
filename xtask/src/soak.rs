//! `cargo xtask soak --minutes N [--threads T]`: concurrent map/unmap/sync with random
//! sizes, directions, attributes and devices through one engine on the simulated Xen (x86 PV,
//! then arm64), every byte verified, the invariants checked with every thread paused every
//! ten seconds. It runs the `soak` example of `swiotlb-xen` in release mode, which prints the
//! progress and a summary, and fails on the first wrong byte or broken invariant.

use std::process::{Command, ExitCode};

/// The arguments of the `soak` example: `--minutes N` (required, a positive number) and
/// optionally `--threads T`.
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
            "--minutes" => minutes = Some(value(it.next())?),
            "--threads" => {
                let t = value(it.next())?;
                out.extend(["--threads".to_owned(), t.to_string()]);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let minutes = minutes.ok_or("usage: cargo xtask soak --minutes N [--threads T]")?;
    out.extend(["--minutes".to_owned(), minutes.to_string()]);
    Ok(out)
}

/// Runs the command with its arguments.
pub fn run(args: &[String]) -> ExitCode {
    let example = match example_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("xtask soak: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    .args(&example);
    println!(
        "cargo run --release -p swiotlb-xen --example soak -- {}",
        example.join(" ")
    );
    match cmd.status() {
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
    fn minutes_are_required_and_positive() {
        assert_eq!(
            example_args(&s(&["--minutes", "15"])),
            Ok(s(&["--minutes", "15"]))
        );
        assert_eq!(
            example_args(&s(&["--threads", "2", "--minutes", "1"])),
            Ok(s(&["--threads", "2", "--minutes", "1"]))
        );
        assert!(example_args(&[]).is_err());
        assert!(example_args(&s(&["--minutes", "0"])).is_err());
        assert!(example_args(&s(&["--minutes", "x"])).is_err());
        assert!(example_args(&s(&["--hours", "1"])).is_err());
    }
}
