//! `cargo xtask soak` (being built).

use std::process::ExitCode;

/// Runs the command with its arguments.
pub fn run(args: &[String]) -> ExitCode {
    let _ = args;
    eprintln!("xtask soak: not built yet");
    ExitCode::FAILURE
}
