//! `cargo xtask xen-qemu [x86_64|aarch64|all]`: boots the bare-metal dom0 examples on the real
//! Xen hypervisor under QEMU and reads their verdicts (issue 7).
//!
//! Each architecture module fetches what it needs (Debian's Xen hypervisor package, downloaded
//! and unpacked into the ignored build directory, never installed), builds its example, boots
//! it under `timeout` with the serial console captured to a log file, and checks the verdict:
//! every check line the kernel printed says `ok`, and the final line
//! `XEN-QEMU <arch>: PASS (N checks)` appears with N equal to the number of `ok` lines.
//!
//! The helpers shared by both architectures live here: [`build_dir`], [`ensure_tools`],
//! [`fetch_deb`], [`unpack_deb`], [`build_example`], [`boot`] and [`verdict`].

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod aarch64;
mod x86_64;

/// The architectures, in the order `all` runs them.
const ARCHES: &[&str] = &["x86_64", "aarch64"];

/// Runs the command with its arguments: `[x86_64|aarch64|all]`, default `all`.
pub fn run(args: &[String]) -> ExitCode {
    let which = match args {
        [] => "all",
        [one] => one.as_str(),
        _ => {
            eprintln!("usage: cargo xtask xen-qemu [x86_64|aarch64|all]");
            return ExitCode::from(2);
        }
    };
    let selected: Vec<&str> = match which {
        "all" => ARCHES.to_vec(),
        a if ARCHES.contains(&a) => vec![a],
        other => {
            eprintln!("xtask xen-qemu: unknown architecture `{other}` (x86_64, aarch64 or all)");
            return ExitCode::from(2);
        }
    };
    match run_arches(&workspace_root(), &selected) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask xen-qemu: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The `xen-qemu` CI step: every example boots and prints its PASS line.
pub fn ci(root: &Path) -> Result<(), String> {
    run_arches(root, ARCHES)
}

/// Runs every selected architecture (all of them, even after a failure) and reports the
/// failures together.
fn run_arches(root: &Path, arches: &[&str]) -> Result<(), String> {
    let mut failures = Vec::new();
    for arch in arches {
        let start = Instant::now();
        println!("==> xen-qemu {arch}");
        let result = match *arch {
            "x86_64" => x86_64::run(root),
            "aarch64" => aarch64::run(root),
            other => Err(format!("unknown architecture {other}")),
        };
        let secs = start.elapsed().as_secs_f64();
        match result {
            Ok(()) => println!("==> xen-qemu {arch}: PASS in {secs:.1} s"),
            Err(e) => {
                println!("==> xen-qemu {arch}: FAILED in {secs:.1} s");
                failures.push(format!("{arch}: {e}"));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// The workspace root: the parent of the xtask crate's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// Cargo's target directory for the workspace at `root`: `CARGO_TARGET_DIR` (relative to
/// `root` if relative) or `root/target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The harness's build directory for `arch` (`<target dir>/xen-qemu/<arch>`), created if
/// missing. Downloaded packages, unpacked hypervisors, device trees and console logs go
/// there; it is inside the target directory, which git ignores.
pub(crate) fn build_dir(root: &Path, arch: &str) -> Result<PathBuf, String> {
    let dir = target_dir(root).join("xen-qemu").join(arch);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Whether `program` is found on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Makes sure every `(program, debian_package)` pair is usable: a program missing from
/// `PATH` has its package installed with `apt-get install` (as root, or through `sudo -n`);
/// without either, the error names the packages and `.ci/setup`.
pub(crate) fn ensure_tools(tools: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut command = if is_root {
        Command::new("apt-get")
    } else if on_path("sudo") {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    } else {
        return Err(format!(
            "missing packages {missing:?} and not root: run `.ci/setup` (or apt-get install them)"
        ));
    };
    println!("xen-qemu: apt-get install {}", missing.join(" "));
    command
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .stdin(Stdio::null());
    run_quiet(&mut command, "apt-get install")?;
    Ok(())
}

/// Runs `command`, returning its stdout; on failure the error carries `what`, the status and
/// the command's stderr.
fn run_quiet(command: &mut Command, what: &str) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The `.deb` of `package` in `dir`: one already there (`<package>_*.deb`), or one
/// downloaded with `apt-get [apt_options] download <package>` (no installation; works as
/// any user). `apt_options` are passed before `download`, e.g. the arm64 architecture and
/// lists directory options of `../shared/REAL-XEN.md`.
pub(crate) fn fetch_deb(
    dir: &Path,
    package: &str,
    apt_options: &[String],
) -> Result<PathBuf, String> {
    if let Some(deb) = find_deb(dir, package)? {
        return Ok(deb);
    }
    println!("xen-qemu: apt-get download {package}");
    let start = Instant::now();
    let mut command = Command::new("apt-get");
    command
        .args(apt_options)
        .args(["-q", "download", package])
        .current_dir(dir)
        .stdin(Stdio::null());
    run_quiet(&mut command, &format!("apt-get download {package}"))?;
    let deb = find_deb(dir, package)?.ok_or_else(|| {
        format!(
            "apt-get download {package} left no .deb in {}",
            dir.display()
        )
    })?;
    println!(
        "xen-qemu: downloaded {} in {:.1} s",
        deb.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(deb)
}

/// The first `<package>_*.deb` in `dir`, if any.
fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>, String> {
    let prefix = format!("{package}_");
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

/// Unpacks `deb` into `dest` with `dpkg -x` (no installation), unless `dest/marker` (a path
/// relative to `dest` that the package contains) already exists. Returns `dest/marker`.
pub(crate) fn unpack_deb(deb: &Path, dest: &Path, marker: &str) -> Result<PathBuf, String> {
    let wanted = dest.join(marker);
    if wanted.exists() {
        return Ok(wanted);
    }
    let mut command = Command::new("dpkg");
    command.arg("-x").arg(deb).arg(dest);
    run_quiet(&mut command, &format!("dpkg -x {}", deb.display()))?;
    if wanted.exists() {
        Ok(wanted)
    } else {
        Err(format!("{} has no {marker}", deb.display()))
    }
}

/// Builds the binary of example package `package` for `target` in release mode (cargo
/// inherits `CARGO_TARGET_DIR`) and returns the path of the ELF.
pub(crate) fn build_example(root: &Path, package: &str, target: &str) -> Result<PathBuf, String> {
    let start = Instant::now();
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", package, "--target", target])
        .current_dir(root)
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build -p {package} --target {target} exited with {status}"
        ));
    }
    let elf = target_dir(root).join(target).join("release").join(package);
    if !elf.is_file() {
        return Err(format!("cargo build produced no {}", elf.display()));
    }
    println!(
        "xen-qemu: built {package} for {target} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(elf)
}

/// What one boot printed, and how long it took.
#[derive(Debug)]
pub(crate) struct Boot {
    /// Everything QEMU wrote to stdout and stderr (the serial console), lossily decoded.
    pub console: String,
    /// Wall-clock time from spawning QEMU to its exit.
    pub elapsed: Duration,
    /// Whether `timeout` had to stop QEMU.
    pub timed_out: bool,
}

/// Runs `argv` (QEMU and its arguments) under `timeout --kill-after=5 <limit>`, with stdin
/// closed and stdout and stderr (the serial console) written to `log`. QEMU's exit status
/// carries no verdict, so only a failure to start is an error here; the caller reads the
/// console with [`verdict`].
pub(crate) fn boot(argv: &[OsString], limit: Duration, log: &Path) -> Result<Boot, String> {
    let (program, args) = argv.split_first().ok_or("boot: empty command line")?;
    let out = fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cloning {}: {e}", log.display()))?;
    println!("xen-qemu: {}", shell_line(argv));
    let start = Instant::now();
    let status = Command::new("timeout")
        .arg("--kill-after=5")
        .arg(format!("{}", limit.as_secs().max(1)))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| format!("could not start timeout/{}: {e}", program.to_string_lossy()))?;
    let elapsed = start.elapsed();
    let bytes = fs::read(log).map_err(|e| format!("reading {}: {e}", log.display()))?;
    // `timeout` exits with 124 when the limit hit, 137 when it had to kill.
    let timed_out = matches!(status.code(), Some(124 | 137));
    Ok(Boot {
        console: String::from_utf8_lossy(&bytes).into_owned(),
        elapsed,
        timed_out,
    })
}

/// `argv` as one shell-like line, for the log and the docs.
pub(crate) fn shell_line(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains([' ', '"', '\'', ',']) {
                format!("'{s}'")
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The marker of a check line: `XEN-QEMU <arch> check <name>: ok <details>` or
/// `... : FAIL <details>`.
pub(crate) fn check_prefix(arch: &str) -> String {
    format!("XEN-QEMU {arch} check ")
}

/// Reads the verdict of `arch` from a console log. Succeeds with the number of checks only
/// if the console holds `XEN-QEMU <arch>: PASS (N checks)`, no `XEN-QEMU <arch>: FAIL`, no
/// failed check line, and exactly N check lines that say `ok`. Lines may carry a prefix
/// (Xen's timestamps), so markers are searched anywhere in a line.
pub(crate) fn verdict(arch: &str, console: &str) -> Result<usize, String> {
    let check = check_prefix(arch);
    let pass = format!("XEN-QEMU {arch}: PASS (");
    let fail = format!("XEN-QEMU {arch}: FAIL");
    let mut ok = 0usize;
    let mut failed = Vec::new();
    let mut claimed = None;
    for line in console.lines() {
        if let Some(at) = line.find(&check) {
            let rest = &line[at + check.len()..];
            match rest.split_once(": ") {
                Some((_, status)) if status.starts_with("ok") => ok += 1,
                _ => failed.push(rest.trim().to_owned()),
            }
        } else if line.contains(&fail) {
            failed.push(line.trim().to_owned());
        } else if let Some(at) = line.find(&pass) {
            let n = line[at + pass.len()..]
                .split_once(" checks)")
                .and_then(|(n, _)| n.parse::<usize>().ok());
            claimed = Some(n.ok_or_else(|| format!("malformed PASS line: {line}"))?);
        }
    }
    if !failed.is_empty() {
        return Err(format!("failed checks:\n  {}", failed.join("\n  ")));
    }
    match claimed {
        None => Err(format!(
            "no `XEN-QEMU {arch}: PASS` line ({ok} checks said ok)"
        )),
        Some(n) if n != ok || n == 0 => Err(format!(
            "the PASS line claims {n} checks but {ok} check lines said ok"
        )),
        Some(n) => Ok(n),
    }
}

/// The last `n` lines of `text`, for error messages.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_needs_the_pass_line_and_matching_ok_lines() {
        let good = "(XEN) boot\nXEN-QEMU x86_64 check a: ok fine\n\
                    [  1.0] XEN-QEMU x86_64 check b: ok 3 frames\nXEN-QEMU x86_64: PASS (2 checks)\n";
        assert_eq!(verdict("x86_64", good), Ok(2));
        // The other architecture's lines do not count.
        assert!(verdict("aarch64", good).is_err());
        let short = "XEN-QEMU x86_64 check a: ok\nXEN-QEMU x86_64: PASS (2 checks)\n";
        assert!(verdict("x86_64", short).unwrap_err().contains("claims 2"));
        let failed = "XEN-QEMU x86_64 check a: FAIL bad\nXEN-QEMU x86_64: PASS (1 checks)\n";
        assert!(
            verdict("x86_64", failed)
                .unwrap_err()
                .contains("a: FAIL bad")
        );
        let none = "XEN-QEMU x86_64 check a: ok\n(XEN) crash\n";
        assert!(
            verdict("x86_64", none)
                .unwrap_err()
                .contains("no `XEN-QEMU x86_64: PASS`")
        );
        let verdict_fail = "XEN-QEMU x86_64 check a: ok\nXEN-QEMU x86_64: FAIL (1 of 2)\n";
        assert!(verdict("x86_64", verdict_fail).is_err());
        assert!(verdict("x86_64", "XEN-QEMU x86_64: PASS (0 checks)\n").is_err());
    }

    #[test]
    fn shell_line_quotes_what_needs_it() {
        let argv: Vec<OsString> = ["qemu", "-append", "a b", "x,y"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(shell_line(&argv), "qemu -append 'a b' 'x,y'");
    }
}
