//! `cargo xtask ci`: the project's checks, in a fixed order, each timed and summarised.
//!
//! The step list is data ([`steps`]): a new check is one more entry there. A check that is
//! promised but not built yet is listed in [`PLANNED`] until it exists.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{self, ExitCode};
use std::time::{Duration, Instant};

use crate::{fuzz, layering, loom, readme, release, soak, xen_qemu};

/// The `no_std` crates, built for every bare-metal target. The list is fixed on purpose: a
/// crate that stops building for a kernel target is a failure, not something to skip.
pub const NO_STD_CRATES: &[&str] = &[
    "swiotlb-core",
    "xen-abi",
    "swiotlb-xen-x86-pv",
    "swiotlb-xen-arm64",
    "swiotlb-xen",
    "swiotlb-xen-virtio",
];

/// The crates whose tests also run as an aarch64 Linux binary under user-mode QEMU.
pub const AARCH64_TEST_CRATES: &[&str] = &["swiotlb-core", "xen-abi"];

/// The cargo arguments of the main job, which `bash .ci/demo` (through `cargo xtask demo`)
/// and the `demo` step run: the simulated dom0 backend (`examples/sim-dom0`), a few thousand
/// verified transfers on x86 PV and on arm64. A debug build: the `test` step has built it
/// already, and the run takes a few seconds.
pub const DEMO_ARGS: &[&str] = &["run", "-p", "sim-dom0"];

/// The Miri flags of the `miri` step (the pool's own pointer work).
pub const MIRI_FLAGS: &str = "-Zmiri-strict-provenance";

/// The Miri flags of steps whose tests hand pointers to a hypercall as integers, which the
/// simulator turns back into pointers (`with_exposed_provenance`): strict provenance cannot
/// apply to that interface.
pub const MIRI_FLAGS_HYPERCALL: &str = "-Zmiri-permissive-provenance";

/// Steps that belong in this list once the code they check exists, with what they will do.
pub const PLANNED: &[(&str, &str)] = &[];

/// How `cargo xtask ci` was asked to run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Leave out the Miri steps (they need a nightly toolchain and are the slowest).
    pub skip_miri: bool,
    /// Run only these steps (all when empty), still in the fixed order.
    pub only: Vec<&'static str>,
}

/// What a step does.
enum Action {
    /// Runs `cargo [+toolchain] args...` in the workspace root with extra environment.
    Cargo {
        /// A rustup toolchain to use instead of the pinned one.
        toolchain: Option<&'static str>,
        /// The arguments after `cargo`.
        args: Vec<String>,
        /// Environment variables set for the command.
        env: Vec<(&'static str, OsString)>,
    },
    /// Runs a check inside this process.
    Check(fn(&Path) -> Result<(), String>),
}

/// One named CI step.
struct Step {
    /// The name used by `--only` and in the summary.
    name: &'static str,
    /// One line saying what the step checks.
    about: &'static str,
    /// What the step runs.
    action: Action,
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The step ran and succeeded.
    Passed,
    /// The step ran and failed, or could not be started.
    Failed,
    /// The step was left out by an option.
    Skipped,
}

/// A step's outcome and how long it took.
#[derive(Debug)]
struct StepResult {
    /// The step's name.
    name: &'static str,
    /// How it ended.
    outcome: Outcome,
    /// Wall-clock time spent (zero when skipped).
    elapsed: Duration,
}

/// Turns a list of string literals into owned arguments.
fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// `cargo SUBCOMMAND -p P1 -p P2 ... --target TARGET`.
fn per_target(subcommand: &str, packages: &[&str], target: &str) -> Vec<String> {
    let mut out = args(&[subcommand]);
    for package in packages {
        out.extend(args(&["-p", package]));
    }
    out.extend(args(&["--target", target]));
    out
}

/// `cargo build` of every `no_std` crate for `target`.
fn no_std_build(target: &str) -> Vec<String> {
    per_target("build", NO_STD_CRATES, target)
}

/// A Miri step's action: `cargo +nightly miri test ARGS` with `flags` first in `MIRIFLAGS`,
/// then whatever the developer already had there.
fn miri(test_args: &[&str], flags: &str) -> Action {
    let mut miri_flags = OsString::from(flags);
    if let Some(extra) = std::env::var_os("MIRIFLAGS").filter(|v| !v.is_empty()) {
        miri_flags.push(" ");
        miri_flags.push(extra);
    }
    let mut all = args(&["miri", "test"]);
    all.extend(args(test_args));
    Action::Cargo {
        toolchain: Some("nightly"),
        args: all,
        env: vec![("MIRIFLAGS", miri_flags)],
    }
}

/// The steps, in the order they run.
fn steps() -> Vec<Step> {
    let cargo = |args: Vec<String>| Action::Cargo {
        toolchain: None,
        args,
        env: Vec::new(),
    };
    vec![
        Step {
            name: "readme",
            about: "the README names both commands, .ci/run runs the test command, doc links resolve",
            action: Action::Check(readme::check_workspace),
        },
        Step {
            name: "layering",
            about: "library crates depend only downwards; no_std crates only on the allowed crates",
            action: Action::Check(layering::check_workspace),
        },
        Step {
            name: "fmt",
            about: "formatting",
            action: cargo(args(&["fmt", "--all", "--", "--check"])),
        },
        Step {
            name: "clippy",
            about: "lints on every crate and target, warnings denied",
            action: cargo(args(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])),
        },
        Step {
            name: "test",
            about: "unit and integration tests of the whole workspace on the host (the doc \
                    tests run in `docs`)",
            action: cargo(args(&[
                "test",
                "--workspace",
                "--lib",
                "--bins",
                "--tests",
                "--examples",
            ])),
        },
        Step {
            name: "demo",
            about: "the main job (the README's demo command) runs to completion",
            action: cargo(args(DEMO_ARGS)),
        },
        Step {
            name: "no-std-x86_64",
            about: "the no_std crates build for x86_64-unknown-none",
            action: cargo(no_std_build("x86_64-unknown-none")),
        },
        Step {
            name: "no-std-aarch64",
            about: "the no_std crates build for aarch64-unknown-none",
            action: cargo(no_std_build("aarch64-unknown-none")),
        },
        Step {
            name: "test-aarch64",
            about: "core and ABI tests as aarch64 Linux binaries under qemu-user",
            action: cargo(per_target(
                "test",
                AARCH64_TEST_CRATES,
                "aarch64-unknown-linux-gnu",
            )),
        },
        Step {
            name: "docs",
            about: "rustdoc with warnings denied on both kernel targets and the host, and the doc tests",
            action: Action::Check(release::docs_ci),
        },
        Step {
            name: "package",
            about: "every published crate packages and builds from its .crate, in dependency order",
            action: Action::Check(release::package_ci),
        },
        Step {
            name: "msrv",
            about: "the library crates check with the declared rust-version's toolchain",
            action: Action::Check(release::msrv_ci),
        },
        Step {
            name: "miri",
            about: "swiotlb-core's unit and integration tests under Miri with strict provenance \
                    (not the doc tests: their example machine leaks its RAM on purpose, and \
                    the unsafe code they call is the unit tests')",
            action: miri(&["-p", "swiotlb-core", "--lib", "--tests"], MIRI_FLAGS),
        },
        Step {
            name: "miri-arm64",
            about: "the arm64 foreign table under Miri with strict provenance (its lock is swiotlb-core's, in the miri step)",
            action: miri(
                &["-p", "swiotlb-xen-arm64", "--lib", "--", "foreign::"],
                MIRI_FLAGS,
            ),
        },
        Step {
            name: "miri-x86-pv",
            about: "the x86 PV platform's unsafe paths on a tiny simulated machine under Miri",
            action: miri(
                &["-p", "swiotlb-xen-x86-pv", "--test", "miri"],
                MIRI_FLAGS_HYPERCALL,
            ),
        },
        Step {
            name: "miri-sim",
            about: "the simulator's pointer decoding and memory copies under Miri",
            action: miri(&["-p", "xen-sim", "--test", "miri"], MIRI_FLAGS_HYPERCALL),
        },
        Step {
            name: "loom",
            about: "loom models of the pool, the foreign table and the x86 PV platform (locks, sequence range, interrupt re-entry)",
            action: Action::Check(loom::ci),
        },
        Step {
            name: "fuzz-smoke",
            about: "every cargo-fuzz target runs briefly, checking data and invariants",
            action: Action::Check(fuzz::ci),
        },
        Step {
            name: "soak-smoke",
            about: "a one-minute soak on both simulated machines with faults armed, foreign pages and a full pool",
            action: Action::Check(soak::ci),
        },
        Step {
            name: "xen-qemu",
            about: "the x86_64 PV and aarch64 dom0 kernels boot on real Xen 4.17 and 4.20 under \
                    QEMU, drive real devices and PASS with their pinned check counts",
            action: Action::Check(xen_qemu::ci),
        },
        Step {
            name: "xen-qemu-mutants",
            about: "kernels built with deliberate library faults boot on real Xen and every one \
                    FAILs",
            action: Action::Check(xen_qemu::ci_mutants),
        },
    ]
}

/// Checks that `name` is a step and returns the step list's own copy of it.
pub fn step_name(name: &str) -> Result<&'static str, String> {
    let all = steps();
    all.iter()
        .find(|s| s.name == name)
        .map(|s| s.name)
        .ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|s| s.name).collect();
            let planned = if PLANNED.iter().any(|(p, _)| *p == name) {
                " (it is planned, not yet a step)"
            } else {
                ""
            };
            format!(
                "unknown step `{name}`{planned}; the steps are: {}",
                known.join(", ")
            )
        })
}

/// Prints the steps and the planned ones.
pub fn print_steps() {
    for step in steps() {
        println!("{:<16} {}", step.name, step.about);
    }
    for (name, about) in PLANNED {
        println!("{name:<16} (planned, not yet a step) {about}");
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// The command line of a cargo step, for the step header.
fn describe(action: &Action) -> String {
    match action {
        Action::Cargo {
            toolchain,
            args,
            env,
        } => {
            let mut line = String::new();
            for (key, value) in env {
                let _ = write!(line, "{key}={} ", value.to_string_lossy());
            }
            line.push_str("cargo");
            if let Some(toolchain) = toolchain {
                let _ = write!(line, " +{toolchain}");
            }
            for arg in args {
                let _ = write!(line, " {arg}");
            }
            line
        }
        Action::Check(_) => "(built-in check)".to_owned(),
    }
}

/// Runs one step in `root`, reporting why it failed on stderr.
fn run_step(action: &Action, root: &Path) -> Outcome {
    match action {
        Action::Cargo {
            toolchain,
            args,
            env,
        } => {
            let mut command = process::Command::new("cargo");
            if let Some(toolchain) = toolchain {
                command.arg(format!("+{toolchain}"));
            }
            command.args(args).current_dir(root);
            for (key, value) in env {
                command.env(key, value);
            }
            match command.status() {
                Ok(status) if status.success() => Outcome::Passed,
                Ok(status) => {
                    eprintln!("xtask: `{}` exited with {status}", describe(action));
                    Outcome::Failed
                }
                Err(err) => {
                    eprintln!("xtask: could not start cargo: {err}");
                    Outcome::Failed
                }
            }
        }
        Action::Check(check) => match check(root) {
            Ok(()) => Outcome::Passed,
            Err(message) => {
                eprintln!("xtask: {message}");
                Outcome::Failed
            }
        },
    }
}

/// Runs the main job in the workspace root with `extra` arguments for it, and returns its
/// exit status.
pub fn run_demo(extra: &[String]) -> ExitCode {
    let mut all = args(DEMO_ARGS);
    if !extra.is_empty() {
        all.push("--".to_owned());
        all.extend_from_slice(extra);
    }
    let action = Action::Cargo {
        toolchain: None,
        args: all,
        env: Vec::new(),
    };
    match run_step(&action, &workspace_root()) {
        Outcome::Passed => ExitCode::SUCCESS,
        Outcome::Failed | Outcome::Skipped => ExitCode::FAILURE,
    }
}

/// Whether the step called `name` runs under Miri (and so is left out by `--skip-miri`).
fn is_miri(name: &str) -> bool {
    name == "miri" || name.starts_with("miri-")
}

/// Whether `options` select the step called `name`.
fn selected(options: &Options, name: &str) -> bool {
    let listed = options.only.is_empty() || options.only.contains(&name);
    listed && !(options.skip_miri && is_miri(name))
}

/// The summary table and the closing `N passed, M failed` line.
fn summary(results: &[StepResult]) -> String {
    let count = |outcome| results.iter().filter(|r| r.outcome == outcome).count();
    let mut out = String::from("==> summary\n");
    let _ = writeln!(out, "  {:<16} {:<8} {:>8}", "step", "result", "seconds");
    for result in results {
        let (word, seconds) = match result.outcome {
            Outcome::Passed => ("pass", format!("{:.1}", result.elapsed.as_secs_f64())),
            Outcome::Failed => ("FAIL", format!("{:.1}", result.elapsed.as_secs_f64())),
            Outcome::Skipped => ("skipped", "-".to_owned()),
        };
        let _ = writeln!(out, "  {:<16} {word:<8} {seconds:>8}", result.name);
    }
    let total: Duration = results.iter().map(|r| r.elapsed).sum();
    let _ = writeln!(
        out,
        "  {:<16} {:<8} {:>8.1}",
        "total",
        "",
        total.as_secs_f64()
    );
    let skipped = count(Outcome::Skipped);
    let _ = write!(
        out,
        "ci: {} passed, {} failed",
        count(Outcome::Passed),
        count(Outcome::Failed)
    );
    if skipped > 0 {
        let _ = write!(out, ", {skipped} skipped");
    }
    out.push('\n');
    out
}

/// Runs the selected steps in order, prints the summary and returns the exit status.
pub fn run(options: &Options) -> ExitCode {
    let root = workspace_root();
    let all = steps();
    let total = all.iter().filter(|s| selected(options, s.name)).count();
    let mut results = Vec::with_capacity(all.len());
    let mut index = 0;
    for step in &all {
        if !selected(options, step.name) {
            results.push(StepResult {
                name: step.name,
                outcome: Outcome::Skipped,
                elapsed: Duration::ZERO,
            });
            continue;
        }
        index += 1;
        println!(
            "\n==> [{index}/{total}] {}: {}\n    {}",
            step.name,
            step.about,
            describe(&step.action)
        );
        let start = Instant::now();
        let outcome = run_step(&step.action, &root);
        let elapsed = start.elapsed();
        println!(
            "==> {} {} in {:.1} s",
            step.name,
            if outcome == Outcome::Passed {
                "passed"
            } else {
                "FAILED"
            },
            elapsed.as_secs_f64()
        );
        results.push(StepResult {
            name: step.name,
            outcome,
            elapsed,
        });
    }
    print!("\n{}", summary(&results));
    if results.iter().any(|r| r.outcome == Outcome::Failed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_are_unique_and_ordered_as_documented() {
        let names: Vec<&str> = steps().iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "readme",
                "layering",
                "fmt",
                "clippy",
                "test",
                "demo",
                "no-std-x86_64",
                "no-std-aarch64",
                "test-aarch64",
                "docs",
                "package",
                "msrv",
                "miri",
                "miri-arm64",
                "miri-x86-pv",
                "miri-sim",
                "loom",
                "fuzz-smoke",
                "soak-smoke",
                "xen-qemu",
                "xen-qemu-mutants"
            ]
        );
        for (name, _) in PLANNED {
            assert!(!names.contains(name), "{name} is both planned and a step");
        }
    }

    #[test]
    fn readme_ci_table_lists_every_step_in_order() {
        let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
        let table = readme
            .split("| step | what it runs |")
            .nth(1)
            .expect("README.md has the CI step table");
        let rows: Vec<&str> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with("| `"))
            .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
            .collect();
        let names: Vec<&str> = steps().iter().map(|s| s.name).collect();
        assert_eq!(rows, names, "README.md's CI table and the step list differ");
    }

    #[test]
    fn no_std_build_names_every_crate_and_the_target() {
        let line = no_std_build("aarch64-unknown-none").join(" ");
        assert_eq!(
            line,
            "build -p swiotlb-core -p xen-abi -p swiotlb-xen-x86-pv -p swiotlb-xen-arm64 \
             -p swiotlb-xen -p swiotlb-xen-virtio --target aarch64-unknown-none"
        );
    }

    #[test]
    fn miri_step_uses_nightly_and_strict_provenance() {
        let all = steps();
        let miri = all.iter().find(|s| s.name == "miri").unwrap();
        let line = describe(&miri.action);
        assert!(
            line.starts_with("MIRIFLAGS=-Zmiri-strict-provenance"),
            "{line}"
        );
        assert!(
            line.contains("cargo +nightly miri test -p swiotlb-core"),
            "{line}"
        );
        for step in all.iter().filter(|s| is_miri(s.name)) {
            let line = describe(&step.action);
            assert!(line.contains("cargo +nightly miri test -p "), "{line}");
            let permissive = line.starts_with("MIRIFLAGS=-Zmiri-permissive-provenance");
            let hypercalls = matches!(step.name, "miri-x86-pv" | "miri-sim");
            assert_eq!(permissive, hypercalls, "{line}");
        }
    }

    #[test]
    fn selection_honours_only_and_skip_miri() {
        let everything = Options::default();
        assert!(selected(&everything, "miri"));
        assert!(selected(&everything, "fmt"));

        let no_miri = Options {
            skip_miri: true,
            only: Vec::new(),
        };
        assert!(!selected(&no_miri, "miri"));
        assert!(!selected(&no_miri, "miri-sim"));
        assert!(selected(&no_miri, "test"));

        let only = Options {
            skip_miri: false,
            only: vec!["fmt", "miri"],
        };
        assert!(selected(&only, "fmt"));
        assert!(selected(&only, "miri"));
        assert!(!selected(&only, "clippy"));
    }

    #[test]
    fn summary_counts_steps_and_ends_with_the_plain_line() {
        let results = [
            StepResult {
                name: "fmt",
                outcome: Outcome::Passed,
                elapsed: Duration::from_millis(1500),
            },
            StepResult {
                name: "clippy",
                outcome: Outcome::Failed,
                elapsed: Duration::from_secs(20),
            },
            StepResult {
                name: "miri",
                outcome: Outcome::Skipped,
                elapsed: Duration::ZERO,
            },
        ];
        let text = summary(&results);
        assert!(
            text.contains("fmt              pass          1.5"),
            "{text}"
        );
        assert!(
            text.contains("clippy           FAIL         20.0"),
            "{text}"
        );
        assert!(
            text.contains("miri             skipped         -"),
            "{text}"
        );
        assert_eq!(
            text.lines().last(),
            Some("ci: 1 passed, 1 failed, 1 skipped")
        );
    }

    #[test]
    fn summary_without_skips_has_no_skipped_count() {
        let results = [StepResult {
            name: "fmt",
            outcome: Outcome::Passed,
            elapsed: Duration::ZERO,
        }];
        assert_eq!(
            summary(&results).lines().last(),
            Some("ci: 1 passed, 0 failed")
        );
    }

    #[test]
    fn every_step_is_a_step_name() {
        assert_eq!(step_name("loom"), Ok("loom"));
        assert_eq!(step_name("xen-qemu"), Ok("xen-qemu"));
        assert!(step_name("lint").is_err());
    }

    #[test]
    fn failing_check_is_a_failed_step() {
        fn fails(_: &Path) -> Result<(), String> {
            Err("no".to_owned())
        }
        assert_eq!(
            run_step(&Action::Check(fails), Path::new(".")),
            Outcome::Failed
        );
    }
}
