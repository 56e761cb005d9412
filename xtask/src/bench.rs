//! `cargo xtask bench [--quick]`: the comparative benchmarks of `crates/swiotlb-bench`.
//!
//! Builds and runs the `bench-report` binary in release mode. It prints one JSON object per
//! line per figure (`{"key":…,"value":…,"unit":…,…}`, format in `swiotlb_bench::report`);
//! without `--quick` it also prints the Markdown tables of `docs/performance.md` and
//! regenerates the SVG plots in `docs/perf/`. `--quick` measures only the headline figures
//! with short batches (well under two minutes, build included, on the project's 2-CPU
//! machine) and leaves the plots alone.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The command's usage.
const USAGE: &str = "usage: cargo xtask bench [--quick]";

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    /// Only the headline figures.
    quick: bool,
}

/// Parses the arguments; `Err` carries the message to print (usage for `--help`).
fn parse(args: &[String]) -> Result<Options, String> {
    let mut quick = false;
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("xtask bench: unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Options { quick })
}

/// The cargo arguments that run the report for `o`, writing plots under `root`.
fn cargo_args(o: &Options, root: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--release",
        "-p",
        "swiotlb-bench",
        "--bin",
        "bench-report",
        "--",
    ]
    .map(str::to_owned)
    .to_vec();
    if o.quick {
        v.push("--quick".to_owned());
    } else {
        v.push("--svg-dir".to_owned());
        v.push(root.join("docs").join("perf").display().to_string());
    }
    v
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Runs the command with its arguments.
pub fn run(args: &[String]) -> ExitCode {
    let o = match parse(args) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return if args.iter().any(|a| a == "-h" || a == "--help") {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let root = workspace_root();
    let t0 = Instant::now();
    let status = Command::new("cargo")
        .args(cargo_args(&o, &root))
        .current_dir(&root)
        .status();
    let secs = t0.elapsed().as_secs_f64();
    match status {
        Ok(s) if s.success() => {
            eprintln!("xtask bench: finished in {secs:.1} s (build included)");
            ExitCode::SUCCESS
        }
        Ok(s) => {
            eprintln!("xtask bench: bench-report exited with {s} after {secs:.1} s");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask bench: could not start cargo: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses() {
        assert_eq!(parse(&[]), Ok(Options { quick: false }));
        assert_eq!(parse(&args(&["--quick"])), Ok(Options { quick: true }));
        assert!(parse(&args(&["--fast"])).unwrap_err().contains("--fast"));
        assert_eq!(parse(&args(&["--help"])), Err(USAGE.to_owned()));
    }

    #[test]
    fn quick_draws_no_plots_and_full_writes_docs_perf() {
        let root = Path::new("/r");
        let q = cargo_args(&Options { quick: true }, root);
        assert_eq!(q.last().map(String::as_str), Some("--quick"));
        assert!(q.contains(&"--release".to_owned()));
        let f = cargo_args(&Options { quick: false }, root);
        let i = f.iter().position(|a| a == "--svg-dir").unwrap();
        assert_eq!(Path::new(&f[i + 1]), root.join("docs").join("perf"));
    }
}
