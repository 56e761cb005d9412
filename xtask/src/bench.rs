//! `cargo xtask bench [--quick] [--runs N] [--svg-dir DIR]`: the comparative benchmarks of
//! `crates/swiotlb-bench`.
//!
//! Builds and runs the `bench-report` binary in release mode. Every figure is measured
//! `--runs N` times (default 5, 3 with `--quick`) and printed as one JSON object per line
//! with its median, min and max (`{"key":…,"value":…,"min":…,"median":…,"max":…,"runs":…,
//! "unit":…,…}`, format in `swiotlb_bench::report`); without `--quick` it also prints the
//! Markdown tables of `docs/performance.md` and regenerates the SVG plots, in `docs/perf/`
//! unless `--svg-dir` names another directory. `--quick` measures only the headline figures
//! with short batches (about a minute, build included, on the project's 2-CPU machine) and
//! leaves the plots alone.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The command's usage.
const USAGE: &str = "usage: cargo xtask bench [--quick] [--runs N] [--svg-dir DIR]

  --quick        only the headline figures (short batches, no tables, no plots)
  --runs N       measure every figure N times (1..=100; default 5, 3 with --quick);
                 each is reported as its median, min and max
  --svg-dir DIR  where the full run writes its plots (default docs/perf)";

/// The most runs (as `bench-report` accepts).
const MAX_RUNS: u32 = 100;

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    /// Only the headline figures.
    quick: bool,
    /// Runs, if given.
    runs: Option<u32>,
    /// Where the plots go, if not `docs/perf`.
    svg_dir: Option<PathBuf>,
}

/// Parses the arguments; `Err` carries the message to print (usage for `--help`).
fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--runs" => {
                let v = it.next().map(String::as_str).unwrap_or_default();
                match v.parse::<u32>() {
                    Ok(n) if (1..=MAX_RUNS).contains(&n) => o.runs = Some(n),
                    _ => {
                        return Err(format!(
                            "xtask bench: --runs {v:?}: expected a count in 1..={MAX_RUNS}\n{USAGE}"
                        ));
                    }
                }
            }
            "--svg-dir" => match it.next() {
                Some(d) => o.svg_dir = Some(PathBuf::from(d)),
                None => return Err(format!("xtask bench: --svg-dir needs a directory\n{USAGE}")),
            },
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("xtask bench: unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(o)
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
    if let Some(n) = o.runs {
        v.push("--runs".to_owned());
        v.push(n.to_string());
    }
    if o.quick {
        v.push("--quick".to_owned());
    } else {
        let dir = o
            .svg_dir
            .as_ref()
            .map_or_else(|| root.join("docs").join("perf"), |d| root.join(d));
        v.push("--svg-dir".to_owned());
        v.push(dir.display().to_string());
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
        Err(msg) if msg == USAGE => {
            println!("{msg}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
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
        assert_eq!(parse(&[]), Ok(Options::default()));
        let q = parse(&args(&["--quick"])).unwrap();
        assert!(q.quick && q.runs.is_none());
        let o = parse(&args(&["--runs", "5", "--svg-dir", "out"])).unwrap();
        assert_eq!(o.runs, Some(5));
        assert_eq!(o.svg_dir, Some(PathBuf::from("out")));
        assert!(parse(&args(&["--fast"])).unwrap_err().contains("--fast"));
        assert_eq!(parse(&args(&["--help"])), Err(USAGE.to_owned()));
        for bad in [
            &["--runs", "0"][..],
            &["--runs", "101"],
            &["--runs"],
            &["--runs", "-1"],
        ] {
            let e = parse(&args(bad)).unwrap_err();
            assert!(e.contains("1..=100"), "{bad:?}: {e}");
        }
        assert!(parse(&args(&["--svg-dir"])).is_err());
    }

    #[test]
    fn quick_draws_no_plots_and_full_writes_docs_perf() {
        let root = Path::new("/r");
        let q = cargo_args(
            &Options {
                quick: true,
                ..Options::default()
            },
            root,
        );
        assert_eq!(q.last().map(String::as_str), Some("--quick"));
        assert!(q.contains(&"--release".to_owned()));
        assert!(!q.contains(&"--runs".to_owned()));
        let f = cargo_args(&Options::default(), root);
        let i = f.iter().position(|a| a == "--svg-dir").unwrap();
        assert_eq!(Path::new(&f[i + 1]), root.join("docs").join("perf"));
        let r = cargo_args(
            &Options {
                runs: Some(3),
                svg_dir: Some(PathBuf::from("elsewhere")),
                ..Options::default()
            },
            root,
        );
        let i = r.iter().position(|a| a == "--runs").unwrap();
        assert_eq!(r[i + 1], "3");
        let i = r.iter().position(|a| a == "--svg-dir").unwrap();
        assert_eq!(Path::new(&r[i + 1]), root.join("elsewhere"));
    }
}
