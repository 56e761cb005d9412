//! The promise that the README's two commands work: it names them on lines of their own, the
//! scripts they run exist, and `.ci/run` (what CI runs) runs exactly the test command.

use std::path::Path;

/// The README's command that sets a machine up and runs the main job.
pub const DEMO_COMMAND: &str = "bash .ci/demo";

/// The README's command that sets a machine up and runs every test.
pub const TEST_COMMAND: &str = "bash .ci/test";

/// Whether `text` has a line that is exactly `command`, ignoring surrounding whitespace and
/// an `exec ` prefix.
fn has_command_line(text: &str, command: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim();
        line.strip_prefix("exec ").unwrap_or(line).trim() == command
    })
}

/// Checks the README's text and `.ci/run`'s text, naming every broken promise.
pub fn check(readme: &str, ci_run: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    for command in [DEMO_COMMAND, TEST_COMMAND] {
        if !has_command_line(readme, command) {
            problems.push(format!("README.md has no line `{command}`"));
        }
    }
    if !has_command_line(ci_run, TEST_COMMAND) {
        problems.push(format!(".ci/run does not run `{TEST_COMMAND}`"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Reads a file of the workspace, naming it in the error.
fn read(root: &Path, relative: &str) -> Result<String, String> {
    std::fs::read_to_string(root.join(relative))
        .map_err(|err| format!("cannot read {relative}: {err}"))
}

/// Runs [`check`] on the workspace at `root`, and checks that the scripts the commands name
/// exist.
pub fn check_workspace(root: &Path) -> Result<(), String> {
    for command in [DEMO_COMMAND, TEST_COMMAND] {
        let script = command.trim_start_matches("bash ");
        if !root.join(script).is_file() {
            return Err(format!("`{command}` names {script}, which does not exist"));
        }
    }
    check(&read(root, "README.md")?, &read(root, ".ci/run")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_keeps_its_promises() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check_workspace(root).unwrap();
    }

    #[test]
    fn commands_on_their_own_lines_pass() {
        let readme = "# x\n\n```sh\nbash .ci/demo\n  bash .ci/test\n```\n";
        let run = "#!/usr/bin/env bash\nset -e\nexec bash .ci/test\n";
        assert_eq!(check(readme, run), Ok(()));
    }

    #[test]
    fn missing_or_changed_commands_are_named() {
        let run = "exec bash .ci/test\n";
        let err = check("bash .ci/test\n", run).unwrap_err();
        assert!(err.contains(DEMO_COMMAND), "{err}");

        let err = check("run `bash .ci/demo` and bash .ci/test --fast\n", run).unwrap_err();
        assert!(
            err.contains(DEMO_COMMAND) && err.contains(TEST_COMMAND),
            "{err}"
        );

        let err = check("bash .ci/demo\nbash .ci/test\n", "cargo xtask ci\n").unwrap_err();
        assert!(err.contains(".ci/run"), "{err}");
    }
}
