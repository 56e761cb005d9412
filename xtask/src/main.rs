//! Project automation, run as `cargo xtask <command>` (the alias is in `.cargo/config.toml`).
//!
//! Commands:
//!
//! - `ci`: every check the project promises, in order, each timed, then a summary table and a
//!   closing `N passed, M failed` line. All steps run even when one fails; the exit status is
//!   non-zero if any failed. `--skip-miri` leaves out the Miri step, `--only STEP` (repeatable)
//!   runs only the named steps, `--list` prints the steps.
//! - `demo`: the main job, which the README's demo command runs; arguments after `--` go to it.
//! - `xen-qemu [ARCH] [--xen VERSION]`: boot the bare-metal dom0 examples on each real Xen
//!   release under QEMU and read their verdicts; `xen-qemu mutants` requires every kernel
//!   built with a deliberate fault to fail ([`xen_qemu`]).
//! - `bench [--quick] [--runs N] [--svg-dir DIR]`: the comparative benchmarks, each figure's
//!   median, min and max over N runs, one JSON line per figure ([`bench`]).
//! - `fuzz [--smoke] [--cmin]`: the cargo-fuzz targets, or minimizing their corpus
//!   ([`fuzz`]).
//! - `soak --minutes N` (or `--seconds N`): concurrent map/unmap/sync on the simulator,
//!   with faults, foreign pages and a full pool, every byte verified ([`soak`]).
//! - `help`: usage.
//!
//! The tool has no dependencies: it spawns `cargo` (and `cargo +nightly` for Miri) in the
//! workspace root and reads the README to check that the documented commands still exist.

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod fuzz;
mod layering;
mod loom;
mod readme;
mod release;
mod soak;
mod xen_qemu;

use std::process::ExitCode;

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Run the CI steps with the given options.
    Ci(ci::Options),
    /// Run the main job with these arguments.
    Demo(Vec<String>),
    /// Run one of the tools below with its own arguments.
    Tool(Tool, Vec<String>),
    /// List the CI steps.
    ListSteps,
    /// Print usage.
    Help,
}

/// The commands that parse their own arguments, each in its own module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    /// `xen-qemu`: [`xen_qemu::run`].
    XenQemu,
    /// `bench`: [`bench::run`].
    Bench,
    /// `fuzz`: [`fuzz::run`].
    Fuzz,
    /// `soak`: [`soak::run`].
    Soak,
}

impl Tool {
    /// The tool a command name selects.
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "xen-qemu" => Some(Self::XenQemu),
            "bench" => Some(Self::Bench),
            "fuzz" => Some(Self::Fuzz),
            "soak" => Some(Self::Soak),
            _ => None,
        }
    }

    /// Runs the tool with its arguments.
    fn run(self, args: &[String]) -> ExitCode {
        match self {
            Self::XenQemu => xen_qemu::run(args),
            Self::Bench => bench::run(args),
            Self::Fuzz => fuzz::run(args),
            Self::Soak => soak::run(args),
        }
    }
}

/// Usage text, printed by `help` and after a command-line error.
const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  ci [--skip-miri] [--only STEP]...   run the CI steps in order (all of them by default)
  ci --list                            list the CI steps
  demo [-- ARGS]                       run the main job (the README's demo command)
  xen-qemu [ARCH] [--xen VERSION]      boot the dom0 examples on real Xen (4.17, 4.20) under QEMU
  xen-qemu mutants [ARCH]              every kernel built with a deliberate fault must FAIL
  bench [--quick] [--runs N] [--svg-dir DIR]
                                       comparative benchmarks, N runs, one JSON line per figure
  fuzz [--smoke] [--cmin]              run the cargo-fuzz targets (or minimize the corpus)
  soak --minutes N | --seconds N       concurrent map/unmap/sync on the simulator
  help                                 print this text

`--only` may be given several times; the steps still run in their fixed order.";

/// Parses the arguments after the program name.
fn parse_args<I, S>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut args = args.into_iter();
    let Some(command) = args.next() else {
        return Ok(Command::Help);
    };
    match command.as_ref() {
        "help" | "-h" | "--help" => Ok(Command::Help),
        "demo" => {
            let rest: Vec<String> = args.map(|a| a.as_ref().to_owned()).collect();
            let rest = match rest.split_first() {
                Some((first, tail)) if first == "--" => tail.to_vec(),
                _ => rest,
            };
            Ok(Command::Demo(rest))
        }
        "ci" => {
            let mut options = ci::Options::default();
            let mut list = false;
            while let Some(arg) = args.next() {
                match arg.as_ref() {
                    "-h" | "--help" => return Ok(Command::Help),
                    "--skip-miri" => options.skip_miri = true,
                    "--list" => list = true,
                    "--only" => {
                        let name = args
                            .next()
                            .ok_or_else(|| "--only needs a step name".to_owned())?;
                        options.only.push(ci::step_name(name.as_ref())?);
                    }
                    other => return Err(format!("unknown option for `ci`: {other}")),
                }
            }
            if list {
                Ok(Command::ListSteps)
            } else {
                Ok(Command::Ci(options))
            }
        }
        other => match Tool::from_name(other) {
            Some(tool) => Ok(Command::Tool(
                tool,
                args.map(|a| a.as_ref().to_owned()).collect(),
            )),
            None => Err(format!("unknown command: {other}")),
        },
    }
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::ListSteps) => {
            ci::print_steps();
            ExitCode::SUCCESS
        }
        Ok(Command::Ci(options)) => ci::run(&options),
        Ok(Command::Demo(extra)) => ci::run_demo(&extra),
        Ok(Command::Tool(tool, args)) => tool.run(&args),
        Err(message) => {
            eprintln!("xtask: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_prints_help() {
        assert_eq!(parse_args::<_, &str>([]), Ok(Command::Help));
    }

    #[test]
    fn ci_without_options_runs_everything() {
        assert_eq!(parse_args(["ci"]), Ok(Command::Ci(ci::Options::default())));
    }

    #[test]
    fn ci_options_are_parsed() {
        let parsed = parse_args(["ci", "--skip-miri", "--only", "fmt", "--only", "clippy"]);
        assert_eq!(
            parsed,
            Ok(Command::Ci(ci::Options {
                skip_miri: true,
                only: vec!["fmt", "clippy"],
            }))
        );
    }

    #[test]
    fn unknown_step_is_rejected_with_its_name() {
        let err = parse_args(["ci", "--only", "lint"]).unwrap_err();
        assert!(err.contains("lint"), "{err}");
        assert!(
            err.contains("clippy"),
            "the error lists the known steps: {err}"
        );
    }

    #[test]
    fn only_without_name_is_rejected() {
        assert!(parse_args(["ci", "--only"]).is_err());
    }

    #[test]
    fn ci_answers_help() {
        assert_eq!(parse_args(["ci", "--help"]), Ok(Command::Help));
        assert_eq!(parse_args(["ci", "--only", "fmt", "-h"]), Ok(Command::Help));
    }

    #[test]
    fn unknown_command_and_option_are_rejected() {
        assert!(parse_args(["build"]).is_err());
        assert!(parse_args(["ci", "--fast"]).is_err());
    }

    #[test]
    fn demo_passes_its_arguments_on() {
        assert_eq!(parse_args(["demo"]), Ok(Command::Demo(Vec::new())));
        assert_eq!(
            parse_args(["demo", "--", "--slots", "64"]),
            Ok(Command::Demo(vec!["--slots".to_owned(), "64".to_owned()]))
        );
        assert_eq!(
            parse_args(["demo", "-v"]),
            Ok(Command::Demo(vec!["-v".to_owned()]))
        );
    }

    #[test]
    fn tools_take_their_own_arguments() {
        assert_eq!(
            parse_args(["xen-qemu", "all"]),
            Ok(Command::Tool(Tool::XenQemu, vec!["all".to_owned()]))
        );
        assert_eq!(
            parse_args(["bench", "--quick"]),
            Ok(Command::Tool(Tool::Bench, vec!["--quick".to_owned()]))
        );
        assert_eq!(
            parse_args(["soak", "--minutes", "1"]),
            Ok(Command::Tool(
                Tool::Soak,
                vec!["--minutes".to_owned(), "1".to_owned()]
            ))
        );
        assert_eq!(
            parse_args(["fuzz"]),
            Ok(Command::Tool(Tool::Fuzz, Vec::new()))
        );
    }

    #[test]
    fn list_is_recognised() {
        assert_eq!(parse_args(["ci", "--list"]), Ok(Command::ListSteps));
    }
}
