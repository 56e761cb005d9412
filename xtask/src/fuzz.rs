//! `cargo xtask fuzz [--smoke] [--seconds N] [--cmin] [TARGET...]`: the cargo-fuzz targets
//! of `fuzz/`.
//!
//! - `pool_model`: the bounce pool against its model (shared with `tests/model.rs`);
//! - `foreign_table`: the arm64 foreign table fed arbitrary grant-map and unmap results;
//! - `engine_sim`: the DMA engine, set up by the facade's pool initialisation, on the
//!   simulated Xen (x86 PV and arm64) with arbitrary devices, buffers, scatter-gather
//!   lists, misused mappings (oversize, outside, stale), injected faults and foreign pages.
//!
//! Each target checks data and invariants, not only "no crash"; any failed check is a
//! crash, saved under `fuzz/artifacts/TARGET/`. The targets are built with debug assertions
//! on, by `cargo +nightly fuzz` (install it with `cargo install cargo-fuzz --locked`;
//! `.ci/setup` does), in a `fuzz` directory of their own under the target directory.
//!
//! Every run starts from the minimized corpus committed in `fuzz/corpus/TARGET/` ([`SEED_DIR`])
//! and writes what it finds to a working corpus under the target directory
//! (`fuzz/corpus/TARGET/` there), so the repository's corpus changes only when asked:
//! `--cmin` merges the working corpus into the committed one with `cargo fuzz cmin` (the
//! smallest set of inputs covering the same edges, a set cover; hit counts are left out so that the
//! committed corpus stays at a few dozen small files) and runs nothing else.
//!
//! `--smoke` (the `fuzz-smoke` CI step) runs every target for [`SMOKE_SECONDS`]; otherwise
//! each runs for `--seconds N` (default [`DEFAULT_SECONDS`]). The summary gives each target's
//! executions (libFuzzer's `stat::number_of_executed_units`, or its `#N DONE` line) and rate,
//! and libFuzzer's last status line (coverage, corpus).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// The fuzz targets, in the order they run.
pub const TARGETS: &[&str] = &["pool_model", "foreign_table", "engine_sim"];
/// Seconds per target of the smoke run.
pub const SMOKE_SECONDS: u64 = 15;
/// Seconds per target of a plain run.
pub const DEFAULT_SECONDS: u64 = 300;
/// The committed, minimized corpus of each target, relative to the workspace root.
pub const SEED_DIR: &str = "fuzz/corpus";

/// What to run.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    /// Seconds per target.
    pub seconds: u64,
    /// The targets.
    pub targets: Vec<String>,
    /// Minimize the working corpus into the committed one instead of fuzzing.
    pub cmin: bool,
}

/// Parses `[--smoke] [--seconds N] [--cmin] [TARGET...]`.
pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut seconds = DEFAULT_SECONDS;
    let mut targets = Vec::new();
    let mut cmin = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => seconds = SMOKE_SECONDS,
            "--cmin" => cmin = true,
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
    Ok(Options {
        seconds,
        targets,
        cmin,
    })
}

/// The largest input libFuzzer tries for `target`.
fn max_len(target: &str) -> usize {
    // The engine target's inputs are step lists of at most 12 steps.
    if target == "engine_sim" { 512 } else { 4096 }
}

/// The libFuzzer arguments of one run.
pub fn libfuzzer_args(target: &str, seconds: u64) -> Vec<String> {
    let mut args = vec![
        format!("-max_total_time={seconds}"),
        format!("-max_len={}", max_len(target)),
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

/// What libFuzzer reported at the end of one run.
#[derive(Debug, PartialEq, Eq)]
pub struct RunStats {
    /// Inputs executed.
    pub executions: u64,
    /// libFuzzer's last status line (`#N DONE cov: ... corp: ...`), if any.
    pub done: Option<String>,
}

/// Reads the executions from libFuzzer's output: its final statistics
/// (`stat::number_of_executed_units: N`, printed with `-print_final_stats=1`) or else the
/// count of its `#N DONE` line. `None` if neither is there.
pub fn parse_stats(stderr: &str) -> Option<RunStats> {
    let done = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with('#') && l.contains("DONE"))
        .map(|l| l.trim().to_owned());
    let from_stats = stderr.lines().rev().find_map(|l| {
        l.trim()
            .strip_prefix("stat::number_of_executed_units:")
            .and_then(|v| v.trim().parse().ok())
    });
    let from_done = done
        .as_deref()
        .and_then(|l| l.strip_prefix('#')?.split_whitespace().next()?.parse().ok());
    let executions = from_stats.or(from_done)?;
    Some(RunStats { executions, done })
}

/// Runs `cargo +nightly fuzz ARGS` in `fuzz/`, building into the fuzz target directory.
fn cargo_fuzz(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .arg("fuzz")
        .args(args)
        .current_dir(root.join("fuzz"))
        .env("CARGO_TARGET_DIR", target_dir(root));
    c
}

fn build(root: &Path) -> Result<(), String> {
    println!("cargo +nightly fuzz build --debug-assertions");
    let status = cargo_fuzz(root, &["build", "--debug-assertions"])
        .status()
        .map_err(|e| format!("fuzz: could not start `cargo +nightly fuzz` ({e}); run .ci/setup"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("fuzz: the build failed ({status})"))
    }
}

/// The working corpus of `target`, under the target directory.
fn work_corpus(root: &Path, target: &str) -> PathBuf {
    target_dir(root).join("corpus").join(target)
}

/// Builds and runs the targets, each from its committed corpus; returns a summary line per
/// target and the total of executions.
fn fuzz(root: &Path, options: &Options) -> Result<(Vec<String>, u64), String> {
    build(root)?;
    let mut summary = Vec::new();
    let mut total = 0;
    for t in &options.targets {
        let work = work_corpus(root, t);
        std::fs::create_dir_all(&work)
            .map_err(|e| format!("fuzz: cannot create {}: {e}", work.display()))?;
        let seed = root.join(SEED_DIR).join(t);
        let work_s = work.to_string_lossy().into_owned();
        let seed_s = seed.to_string_lossy().into_owned();
        // New inputs go to the first corpus directory (the working one); the committed
        // corpus is only read.
        let mut args = vec!["run", "--debug-assertions", t.as_str(), work_s.as_str()];
        if seed.is_dir() {
            args.push(seed_s.as_str());
        }
        args.push("--");
        let lf = libfuzzer_args(t, options.seconds);
        args.extend(lf.iter().map(String::as_str));
        println!("cargo +nightly fuzz {}", args.join(" "));
        let out = cargo_fuzz(root, &args)
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
        let stats = parse_stats(&err)
            .ok_or_else(|| format!("fuzz: {t}: libFuzzer printed no execution count"))?;
        total += stats.executions;
        summary.push(format!(
            "{t}: {} executions in {} s ({} per second) | {}",
            stats.executions,
            options.seconds,
            stats.executions / options.seconds.max(1),
            stats.done.as_deref().unwrap_or("(no DONE line)")
        ));
    }
    Ok((summary, total))
}

/// Merges each target's working corpus into its committed one and minimizes the result
/// with `cargo fuzz cmin`; returns a line per target with the number of inputs kept.
fn cmin(root: &Path, options: &Options) -> Result<Vec<String>, String> {
    build(root)?;
    let mut summary = Vec::new();
    for t in &options.targets {
        let seed = root.join(SEED_DIR).join(t);
        std::fs::create_dir_all(&seed)
            .map_err(|e| format!("fuzz: cannot create {}: {e}", seed.display()))?;
        let work = work_corpus(root, t);
        if let Ok(entries) = std::fs::read_dir(&work) {
            for e in entries.flatten() {
                let to = seed.join(e.file_name());
                if !to.exists() {
                    std::fs::copy(e.path(), &to)
                        .map_err(|err| format!("fuzz: copy {}: {err}", e.path().display()))?;
                }
            }
        }
        let seed_s = seed.to_string_lossy().into_owned();
        let max = format!("-max_len={}", max_len(t));
        let args = [
            "cmin",
            "--debug-assertions",
            t.as_str(),
            seed_s.as_str(),
            "--",
            max.as_str(),
            "-rss_limit_mb=4096",
            // Edges only, not hit counts, and the smallest set cover of them: a corpus of a
            // few dozen inputs per target, not hundreds.
            "-use_counters=0",
            "-set_cover_merge=1",
        ];
        println!("cargo +nightly fuzz {}", args.join(" "));
        let status = cargo_fuzz(root, &args)
            .status()
            .map_err(|e| format!("fuzz: could not start cmin of {t}: {e}"))?;
        if !status.success() {
            return Err(format!("fuzz: cmin of {t} failed ({status})"));
        }
        let (n, bytes) = std::fs::read_dir(&seed)
            .map_err(|e| format!("fuzz: read {}: {e}", seed.display()))?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .fold((0u64, 0u64), |(n, b), m| (n + 1, b + m.len()));
        summary.push(format!("{t}: {n} inputs, {bytes} bytes in {SEED_DIR}/{t}"));
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

/// Usage text, for `--help` and after a usage error.
pub const USAGE: &str = "usage: cargo xtask fuzz [--smoke | --seconds N] [--cmin] [TARGET...]
  TARGET: pool_model, foreign_table, engine_sim (default: all)
  --smoke: 15 s a target, as the CI step; --cmin: minimize the committed corpus";

/// Runs the command with its arguments: `--help` prints the usage; a usage error exits 2.
pub fn run(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            // A usage error, as for every tool of the project.
            eprintln!("xtask fuzz: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if options.cmin {
        return match cmin(&root(), &options) {
            Ok(summary) => {
                println!("==> fuzz corpus minimized");
                for line in summary {
                    println!("  {line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("xtask {e}");
                ExitCode::FAILURE
            }
        };
    }
    match fuzz(&root(), &options) {
        Ok((summary, total)) => {
            print_summary(&options, &summary, total);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_summary(options: &Options, summary: &[String], total: u64) {
    println!(
        "==> fuzz summary ({} s per target, from the corpus in {SEED_DIR}/)",
        options.seconds
    );
    for line in summary {
        println!("  {line}");
    }
    println!(
        "  {} targets, {total} executions, no failing input",
        summary.len()
    );
}

/// The `fuzz-smoke` CI step: every fuzz target runs briefly from the committed corpus.
pub fn ci(root: &Path) -> Result<(), String> {
    let options = parse(&["--smoke".to_owned()])?;
    let (summary, total) = fuzz(root, &options)?;
    print_summary(&options, &summary, total);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn help_answers_and_usage_errors_exit_2() {
        let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
        assert_eq!(run(&s(&["-h"])), ExitCode::SUCCESS);
        assert_eq!(run(&s(&["--bogus"])), ExitCode::from(2));
        assert_eq!(run(&s(&["--seconds", "0"])), ExitCode::from(2));
    }

    #[test]
    fn parses_smoke_seconds_and_targets() {
        let all: Vec<String> = TARGETS.iter().map(|t| (*t).to_owned()).collect();
        assert_eq!(
            parse(&s(&["--smoke"])),
            Ok(Options {
                seconds: SMOKE_SECONDS,
                targets: all.clone(),
                cmin: false,
            })
        );
        assert!(parse(&s(&["--cmin", "engine_sim"])).unwrap().cmin);
        assert_eq!(
            parse(&s(&["--seconds", "60", "pool_model"])),
            Ok(Options {
                seconds: 60,
                targets: s(&["pool_model"]),
                cmin: false,
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

    #[test]
    fn executions_come_from_the_final_stats_or_the_done_line() {
        let out = "#4096\tpulse  cov: 10 ft: 20 corp: 5/50b\n\
                   #5075\tDONE   cov: 492 ft: 2144 corp: 392/21Kb lim: 4096 exec/s: 338 rss: 80Mb\n\
                   Done 5075 runs in 15 second(s)\n\
                   stat::number_of_executed_units: 5076\n\
                   stat::average_exec_per_sec:     338\n";
        let st = parse_stats(out).unwrap();
        assert_eq!(st.executions, 5076);
        assert!(st.done.unwrap().starts_with("#5075\tDONE"));
        let no_stats = "#204\tDONE   cov: 1 ft: 2 corp: 3/4b\nDone 204 runs in 15 second(s)\n";
        assert_eq!(parse_stats(no_stats).unwrap().executions, 204);
        assert_eq!(parse_stats("INFO: Seed: 1\n"), None);
    }

    #[test]
    fn every_target_has_a_small_committed_corpus() {
        for t in TARGETS {
            let dir = root().join(SEED_DIR).join(t);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .flatten()
                .collect();
            assert!(!files.is_empty(), "{t}: empty corpus");
            assert!(
                files.len() <= 64,
                "{t}: {} inputs, minimize it",
                files.len()
            );
            for f in &files {
                let len = f.metadata().unwrap().len();
                assert!(
                    len <= max_len(t) as u64,
                    "{t}: {:?} is {len} bytes",
                    f.path()
                );
            }
        }
    }
}
