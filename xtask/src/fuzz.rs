//! `cargo xtask fuzz [--smoke] [--seconds N] [TARGET...]`: the cargo-fuzz targets of `fuzz/`.
//!
//! - `pool_model`: the bounce pool against its model (shared with `tests/model.rs`);
//! - `foreign_table`: the arm64 foreign table fed arbitrary grant-map and unmap results;
//! - `engine_sim`: the DMA engine, set up by the facade's pool initialisation, on the
//!   simulated Xen (x86 PV and arm64) with arbitrary devices, buffers and scatter-gather
//!   lists.
//!
//! Each target checks data and invariants, not only "no crash"; any failed check is a
//! crash, saved under `fuzz/artifacts/TARGET/`. The corpus grows in `fuzz/corpus/TARGET/`
//! (not committed). The targets are built with debug assertions on, by
//! `cargo +nightly fuzz` (install it with `cargo install cargo-fuzz --locked`; `.ci/setup`
//! does), in a `fuzz` directory of their own under the target directory.
//!
//! `--smoke` (the `fuzz-smoke` CI step) runs every target for [`SMOKE_SECONDS`]; otherwise
//! each runs for `--seconds N` (default [`DEFAULT_SECONDS`]). The last line libFuzzer prints
//! for each target (runs, coverage, corpus) is repeated in a summary.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The fuzz targets, in the order they run.
pub const TARGETS: &[&str] = &["pool_model", "foreign_table", "engine_sim"];
/// Seconds per target of the smoke run.
pub const SMOKE_SECONDS: u64 = 15;
/// Seconds per target of a plain run.
pub const DEFAULT_SECONDS: u64 = 300;

/// What to run.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// Seconds per target.
    pub seconds: u64,
    /// The targets.
    pub targets: Vec<String>,
}

/// Parses `[--smoke] [--seconds N] [TARGET...]`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => seconds = SMOKE_SECONDS,
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                seconds = v
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("--seconds: not a positive number: {v}"))?;
            }
            t if TARGETS.contains(&t) => targets.push(t.to_owned()),
            other => {
                return Err(format!(
                    "unknown argument {other} (targets: {})",
                    TARGETS.join(", ")
                ));
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    Ok(Options { seconds, targets })
}

/// The libFuzzer arguments of one run.
pub fn libfuzzer_args(target: &str, seconds: u64) -> Vec<String> {
    // The engine target's inputs are step lists of at most 12 steps.
    let max_len = if target == "engine_sim" { 512 } else { 4096 };
    let mut args = vec![
        format!("-max_total_time={seconds}"),
        format!("-max_len={max_len}"),
        "-rss_limit_mb=4096".to_owned(),
        "-print_final_stats=1".to_owned(),
    ];
    if target == "engine_sim" {
        // Slow per input: without this, libFuzzer's length control keeps its inputs at a
        // step or two for minutes.
        args.push("-len_control=0".to_owned());
    }
    args
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("fuzz")
}

/// Builds and runs the targets; returns a summary line per target.
fn fuzz(root: &Path, options: &Options) -> Result<Vec<String>, String> {
    let fuzz_dir = root.join("fuzz");
    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.arg("+nightly")
            .arg("fuzz")
            .args(args)
            .current_dir(&fuzz_dir)
            .env("CARGO_TARGET_DIR", target_dir(root));
        c
    };
    println!("cargo +nightly fuzz build --debug-assertions");
    let status = cargo(&["build", "--debug-assertions"])
        .status()
        .map_err(|e| format!("fuzz: could not start `cargo +nightly fuzz` ({e}); run .ci/setup"))?;
    if !status.success() {
        return Err(format!("fuzz: the build failed ({status})"));
    }
    let mut summary = Vec::new();
    for t in &options.targets {
        let mut args = vec!["run", "--debug-assertions", t.as_str(), "--"];
        let lf = libfuzzer_args(t, options.seconds);
        args.extend(lf.iter().map(String::as_str));
        println!("cargo +nightly fuzz {}", args.join(" "));
        let out = cargo(&args)
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("fuzz: could not start {t}: {e}"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        eprint!("{}", tail(&err, 40));
        if !out.status.success() {
            return Err(format!(
                "fuzz: {t} found a failing input (see fuzz/artifacts/{t}/)"
            ));
        }
        let done = err
            .lines()
            .rev()
            .find(|l| l.contains("DONE"))
            .unwrap_or("(no final line)");
        let runs = err
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("");
        summary.push(format!("{t}: {} | {}", done.trim(), runs.trim()));
    }
    Ok(summary)
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

fn root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent()
        .map_or_else(|| dir.to_path_buf(), Path::to_path_buf)
}

/// Runs the command with its arguments.
pub fn run(args: &[String]) -> ExitCode {
    let options = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask fuzz: {e}");
            return ExitCode::FAILURE;
        }
    };
    match fuzz(&root(), &options) {
        Ok(summary) => {
            println!("==> fuzz summary ({} s per target)", options.seconds);
            for line in summary {
                println!("  {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask {e}");
            ExitCode::FAILURE
        }
    }
}

/// The `fuzz-smoke` CI step: every fuzz target runs briefly.
pub fn ci(root: &Path) -> Result<(), String> {
    let options = parse(&["--smoke".to_owned()])?;
    for line in fuzz(root, &options)? {
        println!("  {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn parses_smoke_seconds_and_targets() {
        let all: Vec<String> = TARGETS.iter().map(|t| (*t).to_owned()).collect();
        assert_eq!(
            parse(&s(&["--smoke"])),
            Ok(Options {
                seconds: SMOKE_SECONDS,
                targets: all.clone()
            })
        );
        assert_eq!(
            parse(&s(&["--seconds", "60", "pool_model"])),
            Ok(Options {
                seconds: 60,
                targets: s(&["pool_model"])
            })
        );
        assert_eq!(parse(&[]).unwrap().seconds, DEFAULT_SECONDS);
        assert!(parse(&s(&["--seconds", "0"])).is_err());
        assert!(parse(&s(&["--seconds"])).is_err());
        assert!(parse(&s(&["nope"])).is_err());
    }

    #[test]
    fn every_target_has_a_time_limit_and_a_length() {
        for t in TARGETS {
            let a = libfuzzer_args(t, 7);
            assert!(a.contains(&"-max_total_time=7".to_owned()), "{a:?}");
            assert!(a.iter().any(|x| x.starts_with("-max_len=")));
        }
    }

    #[test]
    fn every_target_is_declared_in_the_fuzz_manifest() {
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t}");
            assert!(
                root().join(format!("fuzz/fuzz_targets/{t}.rs")).exists(),
                "{t}"
            );
        }
    }
}
