//! The CI steps that keep the published crates publishable: `docs` (rustdoc with warnings
//! denied on every target a crate is documented for, and the doc tests), `package` (`cargo
//! package` of every published crate, verified in dependency order) and `msrv` (the library
//! crates checked with the oldest Rust the manifests declare).

use std::path::Path;
use std::process::Command;

use crate::ci::NO_STD_CRATES;

/// The crates published on crates.io: the `no_std` library crates and the simulator their
/// tests and examples run on.
pub const PUBLISHED_CRATES: &[&str] = &[
    "swiotlb-core",
    "xen-abi",
    "xen-sim",
    "swiotlb-xen-x86-pv",
    "swiotlb-xen-arm64",
    "swiotlb-xen",
    "swiotlb-xen-virtio",
];

/// The kernel targets every `no_std` crate is documented and checked for.
pub const KERNEL_TARGETS: &[&str] = &["x86_64-unknown-none", "aarch64-unknown-none"];

/// The kernel target the `msrv` step checks besides the host (an x86_64 Linux machine).
pub const MSRV_KERNEL_TARGET: &str = "aarch64-unknown-none";

/// The features that show every item in the documentation (as `[package.metadata.docs.rs]`
/// asks docs.rs for).
pub const DOC_FEATURES: &str = "swiotlb-core/alloc,swiotlb-xen-arm64/alloc,swiotlb-xen/alloc";

/// One cargo command of a step: its arguments and `RUSTDOCFLAGS`, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct CargoRun {
    /// A rustup toolchain (`+1.88`), or `None` for the pinned one.
    pub toolchain: Option<String>,
    /// The arguments after `cargo`.
    pub args: Vec<String>,
    /// `RUSTDOCFLAGS` for the command.
    pub rustdocflags: Option<&'static str>,
}

impl CargoRun {
    /// A command of the pinned toolchain.
    fn new(args: Vec<String>) -> Self {
        Self {
            toolchain: None,
            args,
            rustdocflags: None,
        }
    }

    /// The command line, for the log.
    pub fn describe(&self) -> String {
        let mut line = String::new();
        if let Some(flags) = self.rustdocflags {
            line.push_str(&format!("RUSTDOCFLAGS=\"{flags}\" "));
        }
        line.push_str("cargo");
        if let Some(toolchain) = &self.toolchain {
            line.push_str(&format!(" +{toolchain}"));
        }
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }

    /// Runs the command in `root`.
    fn run(&self, root: &Path) -> Result<(), String> {
        println!("--> {}", self.describe());
        let mut command = Command::new("cargo");
        if let Some(toolchain) = &self.toolchain {
            command.arg(format!("+{toolchain}"));
        }
        command.args(&self.args).current_dir(root);
        if let Some(flags) = self.rustdocflags {
            command.env("RUSTDOCFLAGS", flags);
        }
        let status = command
            .status()
            .map_err(|e| format!("could not start cargo: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{}` exited with {status}", self.describe()))
        }
    }
}

/// `SUBCOMMAND -p P1 -p P2 ...`.
fn with_packages(subcommand: &[&str], packages: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = subcommand.iter().map(|s| (*s).to_owned()).collect();
    for package in packages {
        out.push("-p".to_owned());
        out.push((*package).to_owned());
    }
    out
}

/// The commands of the `docs` step: rustdoc with warnings denied for the `no_std` crates
/// on both kernel targets (with the features docs.rs shows) and for `xen-sim` on the host,
/// then the doc tests of the crates with aarch64-only examples for aarch64, and those of
/// the whole workspace with those features on the host (the `test` step leaves the doc
/// tests to this one, so that each runs once).
pub fn docs_commands() -> Vec<CargoRun> {
    let mut runs = Vec::new();
    for target in KERNEL_TARGETS {
        let mut args = with_packages(&["doc", "--no-deps"], NO_STD_CRATES);
        args.extend(["--features", DOC_FEATURES, "--target", target].map(str::to_owned));
        runs.push(CargoRun {
            rustdocflags: Some("-D warnings"),
            ..CargoRun::new(args)
        });
    }
    runs.push(CargoRun {
        rustdocflags: Some("-D warnings"),
        ..CargoRun::new(with_packages(&["doc", "--no-deps"], &["xen-sim"]))
    });
    // The doc tests that compile only for aarch64 (the facade's arm64 kernel example and
    // `native` module, arm64's trap), as Linux binaries under qemu-user.
    let mut arm64 = with_packages(&["test", "--doc"], AARCH64_DOCTEST_CRATES);
    arm64.extend(
        [
            "--features",
            DOC_FEATURES,
            "--target",
            AARCH64_DOCTEST_TARGET,
        ]
        .map(str::to_owned),
    );
    runs.push(CargoRun::new(arm64));
    let doctests = ["test", "--doc", "--workspace", "--features", DOC_FEATURES]
        .map(str::to_owned)
        .to_vec();
    runs.push(CargoRun::new(doctests));
    runs
}

/// The crates whose doc tests also run for aarch64: those with examples only that
/// architecture compiles.
pub const AARCH64_DOCTEST_CRATES: &[&str] = &["swiotlb-xen-arm64", "swiotlb-xen"];

/// The target of the aarch64 doc tests (linked with the cross compiler, run under qemu-user,
/// as the `test-aarch64` step's tests).
pub const AARCH64_DOCTEST_TARGET: &str = "aarch64-unknown-linux-gnu";

/// The command of the `package` step: every published crate packaged and verified (built
/// from its `.crate` file), in dependency order, each one's workspace dependencies resolved
/// from the packages made before it. `--allow-dirty` lets the step run on a working copy
/// with uncommitted changes; what it checks does not depend on them being committed.
pub fn package_command() -> CargoRun {
    let mut args = with_packages(&["package"], PUBLISHED_CRATES);
    args.push("--allow-dirty".to_owned());
    CargoRun::new(args)
}

/// The `rust-version` of the workspace manifest's `[workspace.package]`.
pub fn workspace_rust_version(manifest: &str) -> Result<String, String> {
    let mut in_section = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((key, value)) = line.split_once('=')
            && key.trim() == "rust-version"
        {
            let version = value.trim().trim_matches('"');
            if version.is_empty() || !version.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return Err(format!("rust-version `{version}` is not a version"));
            }
            return Ok(version.to_owned());
        }
    }
    Err("Cargo.toml has no rust-version in [workspace.package]".to_owned())
}

/// The commands of the `msrv` step for `version`: install that toolchain (minimal, with
/// `aarch64-unknown-none`; rustup does nothing when it is present), then check the published
/// crates on the host (which builds x86_64's native trap) and the `no_std` ones on
/// `aarch64-unknown-none` (arm64's). That is every line of library code; whether the crates
/// stay `no_std` on `x86_64-unknown-none` is the `no-std-x86_64` step's business.
pub fn msrv_commands(version: &str) -> (Vec<String>, Vec<CargoRun>) {
    let install = [
        "toolchain",
        "install",
        version,
        "--profile",
        "minimal",
        "--target",
        MSRV_KERNEL_TARGET,
    ]
    .map(str::to_owned)
    .to_vec();
    let mut kernel = with_packages(&["check"], NO_STD_CRATES);
    kernel.extend(["--target".to_owned(), MSRV_KERNEL_TARGET.to_owned()]);
    let runs = [with_packages(&["check"], PUBLISHED_CRATES), kernel]
        .into_iter()
        .map(|args| CargoRun {
            toolchain: Some(version.to_owned()),
            ..CargoRun::new(args)
        })
        .collect();
    (install, runs)
}

/// The `docs` step.
pub fn docs_ci(root: &Path) -> Result<(), String> {
    docs_commands().iter().try_for_each(|run| run.run(root))
}

/// The `package` step. The verification resolves every crate's dependencies afresh against
/// crates.io, so a failed download fails it: a failure is retried once (both outputs are in
/// the log), and a second one fails the step.
pub fn package_ci(root: &Path) -> Result<(), String> {
    package_command().run(root).or_else(|first| {
        eprintln!("package: failed ({first}); once more, in case a download failed");
        package_command()
            .run(root)
            .map_err(|second| format!("{second} (the first try: {first})"))
    })
}

/// The `msrv` step.
pub fn msrv_ci(root: &Path) -> Result<(), String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("cannot read Cargo.toml: {e}"))?;
    let version = workspace_rust_version(&manifest)?;
    let (install, runs) = msrv_commands(&version);
    println!("--> rustup {}", install.join(" "));
    let status = Command::new("rustup")
        .args(&install)
        .status()
        .map_err(|e| format!("could not start rustup: {e}"))?;
    if !status.success() {
        return Err(format!("rustup {} exited with {status}", install.join(" ")));
    }
    runs.iter().try_for_each(|run| run.run(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace root.
    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
    }

    #[test]
    fn docs_deny_warnings_on_both_kernel_targets_and_the_host() {
        let lines: Vec<String> = docs_commands().iter().map(CargoRun::describe).collect();
        for target in KERNEL_TARGETS {
            let line = lines
                .iter()
                .find(|l| l.ends_with(&format!("--target {target}")))
                .unwrap_or_else(|| panic!("no doc run for {target}: {lines:?}"));
            assert!(line.starts_with("RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps"));
            for krate in NO_STD_CRATES {
                assert!(line.contains(&format!("-p {krate} ")), "{krate}: {line}");
            }
        }
        assert!(
            lines.contains(
                &"RUSTDOCFLAGS=\"-D warnings\" cargo doc --no-deps -p xen-sim".to_owned()
            )
        );
        let arm64 = &lines[lines.len() - 2];
        assert_eq!(
            arm64,
            &format!(
                "cargo test --doc -p swiotlb-xen-arm64 -p swiotlb-xen --features {DOC_FEATURES} \
                 --target aarch64-unknown-linux-gnu"
            )
        );
        // Every crate's doc tests, once: the `test` step leaves them out.
        let doctests = lines.last().unwrap();
        assert!(
            doctests.starts_with("cargo test --doc --workspace"),
            "{doctests}"
        );
    }

    #[test]
    fn package_names_every_published_crate() {
        let line = package_command().describe();
        assert_eq!(
            line,
            "cargo package -p swiotlb-core -p xen-abi -p xen-sim -p swiotlb-xen-x86-pv \
             -p swiotlb-xen-arm64 -p swiotlb-xen -p swiotlb-xen-virtio --allow-dirty"
        );
    }

    #[test]
    fn msrv_is_read_from_the_workspace_package() {
        let manifest = "[workspace]\nmembers = []\n\n[workspace.package]\nversion = \"0.1.0\"\n\
                        rust-version = \"1.88\"\n\n[other]\nrust-version = \"9\"\n";
        assert_eq!(workspace_rust_version(manifest), Ok("1.88".to_owned()));
        assert!(workspace_rust_version("[package]\nrust-version = \"1.88\"\n").is_err());
        assert!(
            workspace_rust_version("[workspace.package]\nrust-version = \"stable\"\n").is_err()
        );
        let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        let version = workspace_rust_version(&manifest).unwrap();
        let (install, runs) = msrv_commands(&version);
        assert_eq!(
            install.join(" "),
            format!("toolchain install {version} --profile minimal --target aarch64-unknown-none")
        );
        assert_eq!(runs.len(), 2);
        assert!(
            runs[1]
                .describe()
                .ends_with("--target aarch64-unknown-none")
        );
        assert!(
            runs.iter()
                .all(|r| r.toolchain.as_deref() == Some(version.as_str()))
        );
        assert!(runs.iter().all(|r| r.args[0] == "check"));
    }

    #[test]
    fn every_published_crate_is_a_no_std_crate_or_the_simulator() {
        for krate in NO_STD_CRATES {
            assert!(PUBLISHED_CRATES.contains(krate), "{krate}");
        }
        assert_eq!(PUBLISHED_CRATES.len(), NO_STD_CRATES.len() + 1);
    }

    /// The crate directories of the workspace whose manifests name a published crate.
    fn published_dirs() -> Vec<std::path::PathBuf> {
        let mut dirs = Vec::new();
        for parent in ["crates", "arch"] {
            for entry in std::fs::read_dir(root().join(parent)).unwrap() {
                let dir = entry.unwrap().path();
                let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
                    continue;
                };
                let name = manifest
                    .lines()
                    .find_map(|l| l.strip_prefix("name = "))
                    .map(|n| n.trim_matches('"').to_owned());
                if name.is_some_and(|n| PUBLISHED_CRATES.contains(&n.as_str())) {
                    dirs.push(dir);
                }
            }
        }
        dirs
    }

    #[test]
    fn published_crates_carry_the_license_texts_and_docs_rs_metadata() {
        let dirs = published_dirs();
        assert_eq!(dirs.len(), PUBLISHED_CRATES.len(), "{dirs:?}");
        for file in ["LICENSE-MIT", "LICENSE-APACHE"] {
            let text = std::fs::read(root().join(file)).unwrap();
            for dir in &dirs {
                let copy = std::fs::read(dir.join(file))
                    .unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()));
                assert!(
                    copy == text,
                    "{}/{file} differs from the root's",
                    dir.display()
                );
            }
        }
        for dir in &dirs {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            for needed in [
                "[package.metadata.docs.rs]",
                "rustdoc-args = [\"--cfg\", \"docsrs\"]",
                "keywords = ",
                "categories = ",
                "documentation = \"https://docs.rs/",
            ] {
                assert!(manifest.contains(needed), "{}: no {needed}", dir.display());
            }
            assert!(!manifest.contains("publish = false"), "{}", dir.display());
        }
    }
}
