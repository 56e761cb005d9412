//! `cargo xtask bench` (being built).

use std::process::ExitCode;

/// Runs the command with its arguments.
pub fn run(args: &[String]) -> ExitCode {
    let _ = args;
    eprintln!("xtask bench: not built yet");
    ExitCode::FAILURE
}
