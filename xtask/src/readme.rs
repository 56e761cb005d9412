//! The promise that the README's two commands work: it names them on lines of their own, the
//! scripts they run exist, and `.ci/run` (what CI runs) runs exactly the test command. Also
//! that the documentation's relative links (in `README.md` and `docs/*.md`) lead to files
//! that exist.

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

/// The relative link targets of a Markdown text, without `#fragment`s, outside code blocks.
/// Links with a scheme (`https:`, `mailto:`) and links to a fragment of the same page are
/// left out.
fn relative_links(markdown: &str) -> Vec<&str> {
    let mut links = Vec::new();
    let mut in_code_block = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
            continue;
        }
        if in_code_block {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = rest[..end].split('#').next().unwrap_or("").trim();
            rest = &rest[end..];
            if !target.is_empty() && !target.contains(':') {
                links.push(target);
            }
        }
    }
    links
}

/// Checks that every relative link in `README.md` and `docs/*.md` names an existing path.
fn check_links(root: &Path) -> Result<(), String> {
    let mut pages = vec![root.join("README.md")];
    if let Ok(entries) = std::fs::read_dir(root.join("docs")) {
        let mut docs: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        pages.extend(docs);
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page)
            .map_err(|err| format!("cannot read {}: {err}", page.display()))?;
        let dir = page.parent().unwrap_or(root);
        for link in relative_links(&text) {
            if !dir.join(link).exists() {
                let name = page.strip_prefix(root).unwrap_or(page);
                broken.push(format!("{} links to missing {link}", name.display()));
            }
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(broken.join("; "))
    }
}

/// Runs [`check`] on the workspace at `root`, checks that the scripts the commands name
/// exist, and that the documentation's relative links resolve.
pub fn check_workspace(root: &Path) -> Result<(), String> {
    for command in [DEMO_COMMAND, TEST_COMMAND] {
        let script = command.trim_start_matches("bash ");
        if !root.join(script).is_file() {
            return Err(format!("`{command}` names {script}, which does not exist"));
        }
    }
    check(&read(root, "README.md")?, &read(root, ".ci/run")?)?;
    check_links(root)
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
    fn relative_links_skip_schemes_fragments_and_code() {
        let text = "See [a](docs/a.md#intro), [b](https://x.org/b.md), [c](#top), \
                    [d](../LICENSE) and [e]( docs/e.md ).\n```\n[f](nowhere.md)\n```\n";
        assert_eq!(
            relative_links(text),
            ["docs/a.md", "../LICENSE", "docs/e.md"]
        );
    }

    #[test]
    fn broken_link_is_reported_with_its_page() {
        let dir = std::env::temp_dir().join(format!("xtask-links-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("docs")).unwrap();
        std::fs::write(dir.join("README.md"), "[ok](docs/a.md)\n").unwrap();
        std::fs::write(
            dir.join("docs/a.md"),
            "[gone](missing.md) [up](../README.md)\n",
        )
        .unwrap();
        let result = check_links(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let err = result.unwrap_err();
        assert!(err.contains("a.md links to missing missing.md"), "{err}");
        assert!(!err.contains("README"), "{err}");
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
