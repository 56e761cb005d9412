//! `cargo xtask xen-qemu`: boots the bare-metal dom0 examples on the real Xen hypervisor
//! under QEMU, on every Xen release of the matrix, and reads their verdicts; `mutants`
//! boots kernels built with deliberate faults and requires every one to fail.
//!
//! Each architecture module builds its example ([`Build`] says where and with which
//! flags), fetches what a release needs (Debian's Xen hypervisor package, downloaded and
//! unpacked into the ignored build directory, never installed; [`fetch_xen_deb`]), boots the
//! kernel under `timeout` with the serial console captured to a log file, and checks the
//! verdict with [`verdict`]: every check line says `ok`, the final line
//! `XEN-QEMU <arch> xen-<version>: PASS (N checks, D device DMA checks)` names the release
//! that booted, N and D equal the lines counted and the numbers the harness pins for the
//! architecture, and QEMU never printed `EDU: clamping DMA` (the `edu` device was handed an
//! address outside its DMA mask and really accessed other memory).
//!
//! ```text
//! cargo xtask xen-qemu [ARCH] [--xen VERSION]   boot the matrix (default: all, all)
//! cargo xtask xen-qemu mutants [ARCH] [--xen VERSION] [--mutant NAME]
//!                                               every mutant must fail (default xen 4.17)
//! ARCH: x86_64 (or x86-pv), aarch64 (or arm64), all     VERSION: 4.17, 4.20, all
//! ```
//!
//! The helpers shared by both architectures live here: [`build_dir`], [`ensure_tools`],
//! [`fetch_xen_deb`], [`unpack_deb`], [`build_example`], [`boot`] and [`verdict`].

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod aarch64;
mod disk;
mod x86_64;

/// A Xen release of the matrix: Debian's hypervisor packages of one suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct XenRelease {
    /// The version as the packages and `XENVER_version` name it (`major.minor`).
    pub version: &'static str,
    /// The Debian suite that ships it.
    pub suite: &'static str,
}

impl XenRelease {
    /// The hypervisor package for Debian architecture `debarch` (`amd64`, `arm64`).
    pub(crate) fn package(&self, debarch: &str) -> String {
        format!("xen-hypervisor-{}-{debarch}", self.version)
    }

    /// The release's build directory for `arch` (packages, the unpacked hypervisor, console
    /// logs): `<target dir>/xen-qemu/<arch>/xen-<version>`, created if missing.
    pub(crate) fn dir(&self, root: &Path, arch: &str) -> Result<PathBuf, String> {
        let dir = build_dir(root, arch)?.join(format!("xen-{}", self.version));
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(dir)
    }
}

/// The releases, oldest first: Debian 12's Xen 4.17 and Debian 13's Xen 4.20.
pub(crate) const RELEASES: &[XenRelease] = &[
    XenRelease {
        version: "4.17",
        suite: "bookworm",
    },
    XenRelease {
        version: "4.20",
        suite: "trixie",
    },
];

/// An architecture of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arch {
    /// The x86_64 PV dom0 (`examples/x86_64-pv-dom0`).
    X86_64,
    /// The arm64 1:1 dom0 with a granting domU (`examples/aarch64-dom0`).
    Aarch64,
}

impl Arch {
    /// Every architecture, in the order `all` runs them.
    const ALL: [Self; 2] = [Self::X86_64, Self::Aarch64];

    /// The name in the verdict lines.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// The architectures a command-line name selects: the verdict name, the platform's
    /// name (`x86-pv`, `arm64`, as the other tools take them), or `all`.
    fn parse(name: &str) -> Option<Vec<Self>> {
        match name {
            "all" => Some(Self::ALL.to_vec()),
            "x86_64" | "x86-pv" | "x86" => Some(vec![Self::X86_64]),
            "aarch64" | "arm64" => Some(vec![Self::Aarch64]),
            _ => None,
        }
    }

    /// The numbers of checks and of device DMA checks the kernel must print.
    const fn expected(self) -> (usize, usize) {
        match self {
            Self::X86_64 => (x86_64::EXPECTED_CHECKS, x86_64::EXPECTED_DEVICE_CHECKS),
            Self::Aarch64 => (aarch64::EXPECTED_CHECKS, aarch64::EXPECTED_DEVICE_CHECKS),
        }
    }

    /// Builds the architecture's kernel (and what it boots with) as `build` says.
    fn prepare(self, root: &Path, build: &Build) -> Result<Box<dyn Kernel>, String> {
        match self {
            Self::X86_64 => Ok(Box::new(x86_64::prepare(root, build)?)),
            Self::Aarch64 => Ok(Box::new(aarch64::prepare(root, build)?)),
        }
    }
}

/// A built kernel that can boot on a Xen release.
pub(crate) trait Kernel {
    /// Boots on `release` (fetching its hypervisor if needed) and returns what the console
    /// printed; the console is written to `log`.
    fn boot(&self, root: &Path, release: &XenRelease, log: &Path) -> Result<Boot, String>;

    /// Checks of the architecture's own after a boot on `release` whose console passed
    /// [`verdict`] (the domU spoke, the disk holds what the kernel wrote); returns a note
    /// for the summary line.
    fn after_pass(
        &self,
        root: &Path,
        release: &XenRelease,
        console: &str,
    ) -> Result<String, String> {
        let _ = (root, release, console);
        Ok(String::new())
    }
}

/// How a kernel is built: where, and with which extra compiler flags.
#[derive(Clone, Debug)]
pub(crate) struct Build {
    /// Cargo's target directory for the build.
    pub target_dir: PathBuf,
    /// Extra `RUSTFLAGS` (a mutant's `--cfg`), appended to the environment's.
    pub rustflags: Option<String>,
    /// Where the harness puts what it makes from the build (images, device trees).
    pub out: PathBuf,
    /// QEMU's time limit per boot: a passing boot takes seconds, so this only catches a
    /// hang. Shorter for mutants, which may hang by design (a driver polling a ring the
    /// device wrote at another address) and must not cost the CI two minutes each.
    pub limit: Duration,
}

/// QEMU's time limit for an ordinary boot.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// QEMU's time limit for a mutant's boot (a passing boot takes under 10 s under TCG on
/// this kind of machine, 20 s when it is loaded).
const MUTANT_BOOT_LIMIT: Duration = Duration::from_secs(45);

impl Build {
    /// The ordinary build: the workspace's target directory, no extra flags; outputs go to
    /// the architecture's build directory.
    fn normal(root: &Path, arch: Arch) -> Result<Self, String> {
        Ok(Self {
            target_dir: target_dir(root),
            rustflags: None,
            out: build_dir(root, arch.name())?,
            limit: BOOT_LIMIT,
        })
    }

    /// The build of `mutant`: `--cfg swiotlb_mutant="<name>"`, in a target directory of
    /// its own (so the ordinary build stays cached), outputs under `mutants/<name>`.
    fn mutant(root: &Path, arch: Arch, mutant: &Mutant) -> Result<Self, String> {
        let out = build_dir(root, arch.name())?
            .join("mutants")
            .join(mutant.name);
        fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
        Ok(Self {
            target_dir: target_dir(root).join("mutants").join(mutant.name),
            rustflags: Some(format!("--cfg swiotlb_mutant=\"{}\"", mutant.name)),
            out,
            limit: MUTANT_BOOT_LIMIT,
        })
    }
}

/// A deliberate fault, compiled into the library only under `--cfg swiotlb_mutant="<name>"`
/// (which only `cargo xtask xen-qemu mutants` sets). Every one must make the real-Xen run
/// fail: a check that a mutant survives proves nothing about the fault it stands for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mutant {
    /// The cfg value, as the library's `#[cfg(swiotlb_mutant = "...")]` spells it.
    pub name: &'static str,
    /// The architectures whose code it changes.
    pub arches: &'static [Arch],
    /// What it breaks.
    pub what: &'static str,
}

/// The mutants. Their code is in the library crates (and, for a pool above the mask on
/// arm64, in the kernel that places the pool); `docs/real-xen.md` lists which checks kill
/// each.
pub(crate) const MUTANTS: &[Mutant] = &[
    Mutant {
        name: "crosswise_remap",
        arches: &[Arch::X86_64],
        what: "after an exchange, the kernel mapping of page i gets the machine frame of \
               page i^1 (P2M and bus addresses stay right)",
    },
    Mutant {
        name: "foreign_off_by_one",
        arches: &[Arch::Aarch64],
        what: "a foreign page's bus address is one frame past the one Xen granted",
    },
    Mutant {
        name: "mask_off_by_one",
        arches: &[Arch::X86_64, Arch::Aarch64],
        what: "the DMA mask check lets through one address bit more than the mask has",
    },
    Mutant {
        name: "no_copy_back",
        arches: &[Arch::X86_64, Arch::Aarch64],
        what: "a bounced FromDevice mapping is never copied back to the original",
    },
    Mutant {
        name: "slot_offset",
        arches: &[Arch::X86_64, Arch::Aarch64],
        what: "the bounce address is 64 bytes past the data's place in its slot",
    },
    Mutant {
        name: "pool_above_mask",
        arches: &[Arch::X86_64, Arch::Aarch64],
        what: "pool init ignores the caller's address limit, so the bounce pool is not \
               below the device's mask (on arm64 the kernel also places the pool in its bank \
               above 4 GiB: a 1:1 dom0 cannot move memory)",
    },
];

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// Boot the matrix of these architectures and releases.
    Matrix(Vec<Arch>, Vec<XenRelease>),
    /// Boot every mutant of these architectures (or only the named one) on these releases.
    Mutants(Vec<Arch>, Vec<XenRelease>, Option<&'static str>),
    /// Print the usage.
    Help,
}

/// The usage text.
const USAGE: &str = "usage: cargo xtask xen-qemu [ARCH] [--xen VERSION]\n       \
     cargo xtask xen-qemu mutants [ARCH] [--xen VERSION] [--mutant NAME]\n\
     ARCH: x86_64 (or x86-pv), aarch64 (or arm64), all (default)\n\
     VERSION: 4.17, 4.20 or all (default: all for the matrix, 4.17 for mutants)\n\
     The matrix boots each kernel on each Xen release and pins its check counts; mutants\n\
     boots kernels built with deliberate faults and fails unless every one FAILs.";

/// Parses the arguments after `xen-qemu`.
fn parse(args: &[String]) -> Result<Request, String> {
    let mut mutants = false;
    let mut arches = None;
    let mut releases = None;
    let mut only = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" | "help" => return Ok(Request::Help),
            "mutants" if !mutants && arches.is_none() => mutants = true,
            "--mutant" if mutants => {
                let name = it.next().ok_or("--mutant needs a mutant's name")?;
                let m = MUTANTS.iter().find(|m| m.name == name).ok_or_else(|| {
                    let known: Vec<&str> = MUTANTS.iter().map(|m| m.name).collect();
                    format!("unknown mutant `{name}` ({})", known.join(", "))
                })?;
                only = Some(m.name);
            }
            "--xen" => {
                let v = it
                    .next()
                    .ok_or("--xen needs a version (4.17, 4.20 or all)")?;
                releases = Some(parse_releases(v)?);
            }
            other if other.starts_with("--xen=") => {
                releases = Some(parse_releases(&other["--xen=".len()..])?);
            }
            other if arches.is_none() && !other.starts_with('-') => {
                arches = Some(Arch::parse(other).ok_or_else(|| {
                    format!(
                        "unknown architecture `{other}` (x86_64 or x86-pv, aarch64 or \
                         arm64, all)"
                    )
                })?);
            }
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    let arches = arches.unwrap_or_else(|| Arch::ALL.to_vec());
    Ok(if mutants {
        Request::Mutants(arches, releases.unwrap_or_else(|| vec![RELEASES[0]]), only)
    } else {
        Request::Matrix(arches, releases.unwrap_or_else(|| RELEASES.to_vec()))
    })
}

/// The releases a `--xen` value selects.
fn parse_releases(v: &str) -> Result<Vec<XenRelease>, String> {
    if v == "all" {
        return Ok(RELEASES.to_vec());
    }
    RELEASES
        .iter()
        .find(|r| r.version == v)
        .map(|r| vec![*r])
        .ok_or_else(|| {
            let known: Vec<&str> = RELEASES.iter().map(|r| r.version).collect();
            format!("unknown Xen version `{v}` ({} or all)", known.join(", "))
        })
}

/// Runs the command with its arguments (see the module documentation).
pub fn run(args: &[String]) -> ExitCode {
    let request = match parse(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xtask xen-qemu: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let root = workspace_root();
    let result = match request {
        Request::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Request::Matrix(arches, releases) => run_matrix(&root, &arches, &releases),
        Request::Mutants(arches, releases, only) => run_mutants(&root, &arches, &releases, only),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask xen-qemu: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The `xen-qemu` CI step: every kernel boots on every release and passes.
pub fn ci(root: &Path) -> Result<(), String> {
    run_matrix(root, &Arch::ALL, RELEASES)
}

/// The `xen-qemu-mutants` CI step: every mutant fails on the oldest release.
pub fn ci_mutants(root: &Path) -> Result<(), String> {
    run_mutants(root, &Arch::ALL, &RELEASES[..1], None)
}

/// The outcome of one kernel on one release.
struct Cell {
    arch: Arch,
    release: XenRelease,
    /// `Ok(summary)` or `Err(reason)`.
    result: Result<String, String>,
}

/// Builds and boots every selected architecture on every selected release (all of them,
/// even after a failure), prints the matrix, and reports the failures together.
fn run_matrix(root: &Path, arches: &[Arch], releases: &[XenRelease]) -> Result<(), String> {
    let mut cells = Vec::new();
    for &arch in arches {
        let start = Instant::now();
        println!("==> xen-qemu {}: build", arch.name());
        let kernel = Build::normal(root, arch).and_then(|b| arch.prepare(root, &b));
        println!(
            "==> xen-qemu {}: built in {:.1} s",
            arch.name(),
            start.elapsed().as_secs_f64()
        );
        for release in releases {
            let result = match &kernel {
                Ok(k) => boot_and_judge(root, arch, k.as_ref(), release, None),
                Err(e) => Err(format!("build: {e}")),
            };
            match &result {
                Ok(s) => println!(
                    "==> xen-qemu {} xen-{}: PASS {s}",
                    arch.name(),
                    release.version
                ),
                Err(_) => println!(
                    "==> xen-qemu {} xen-{}: FAILED",
                    arch.name(),
                    release.version
                ),
            }
            cells.push(Cell {
                arch,
                release: *release,
                result,
            });
        }
    }
    println!("{}", matrix_table(&cells, releases));
    let failures: Vec<String> = cells
        .iter()
        .filter_map(|c| {
            c.result
                .as_ref()
                .err()
                .map(|e| format!("{} xen-{}: {e}", c.arch.name(), c.release.version))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// Boots `kernel` on `release` and judges the console: `Ok(summary)` when it passed.
/// `log_name` overrides the console log's file name (mutants keep one log each).
fn boot_and_judge(
    root: &Path,
    arch: Arch,
    kernel: &dyn Kernel,
    release: &XenRelease,
    log_name: Option<&str>,
) -> Result<String, String> {
    let dir = release.dir(root, arch.name())?;
    let log = dir.join(log_name.unwrap_or("console.log"));
    let run = kernel.boot(root, release, &log)?;
    let context = |e: String| {
        format!(
            "{e}\n(console: {}{}; last lines:)\n{}",
            log.display(),
            if run.timed_out {
                ", QEMU timed out"
            } else {
                ""
            },
            tail(&run.console, 25)
        )
    };
    let v =
        verdict(arch.name(), release.version, &run.console, arch.expected()).map_err(context)?;
    let note = kernel
        .after_pass(root, release, &run.console)
        .map_err(context)?;
    if run.timed_out {
        return Err(format!(
            "the kernel passed {} checks but QEMU did not exit in time (console: {})",
            v.checks,
            log.display()
        ));
    }
    Ok(format!(
        "({} checks, {} device DMA checks{note}); QEMU ran {:.1} s (console: {})",
        v.checks,
        v.device,
        run.elapsed.as_secs_f64(),
        log.display()
    ))
}

/// The matrix as a table: one row per architecture, one column per release.
fn matrix_table(cells: &[Cell], releases: &[XenRelease]) -> String {
    let mut out = String::from("xen-qemu matrix:\n");
    let _ = write!(out, "{:<10}", "");
    for r in releases {
        let _ = write!(out, " {:<42}", format!("xen-{}", r.version));
    }
    let mut arches: Vec<Arch> = cells.iter().map(|c| c.arch).collect();
    arches.dedup();
    for arch in arches {
        let _ = write!(out, "\n{:<10}", arch.name());
        for r in releases {
            let text = match cells.iter().find(|c| c.arch == arch && c.release == *r) {
                Some(Cell { result: Ok(s), .. }) => {
                    format!("PASS {}", s.split(';').next().unwrap_or(""))
                }
                Some(Cell { result: Err(_), .. }) => "FAIL".to_owned(),
                None => "-".to_owned(),
            };
            let _ = write!(out, " {text:<42}");
        }
    }
    out
}

/// Builds and boots every mutant that touches a selected architecture, on every selected
/// release, and fails unless every boot fails. Prints `mutants: K/N killed`.
fn run_mutants(
    root: &Path,
    arches: &[Arch],
    releases: &[XenRelease],
    only: Option<&str>,
) -> Result<(), String> {
    let mut killed = 0usize;
    let mut total = 0usize;
    let mut problems = Vec::new();
    for mutant in MUTANTS.iter().filter(|m| only.is_none_or(|o| o == m.name)) {
        for &arch in arches.iter().filter(|a| mutant.arches.contains(a)) {
            let label = format!("{} on {}", mutant.name, arch.name());
            println!("==> mutant {label}: {}", mutant.what);
            let start = Instant::now();
            let kernel =
                match Build::mutant(root, arch, mutant).and_then(|b| arch.prepare(root, &b)) {
                    Ok(k) => k,
                    Err(e) => {
                        // A mutant that does not build proves nothing: that is the harness's
                        // failure, not a kill.
                        problems.push(format!("{label}: build failed: {e}"));
                        continue;
                    }
                };
            for release in releases {
                total += 1;
                let log = format!("mutant-{}.log", mutant.name);
                match boot_and_judge(root, arch, kernel.as_ref(), release, Some(&log)) {
                    Ok(summary) => {
                        println!(
                            "==> mutant {label} xen-{}: SURVIVED {summary}",
                            release.version
                        );
                        problems.push(format!("{label} xen-{}: survived", release.version));
                    }
                    Err(reason) => {
                        killed += 1;
                        let console =
                            fs::read_to_string(release.dir(root, arch.name())?.join(&log))
                                .unwrap_or_default();
                        let failed = failed_checks(arch.name(), &console);
                        let why = if failed.is_empty() {
                            reason.lines().next().unwrap_or("").trim().to_owned()
                        } else {
                            format!("failed checks: {}", failed.join(", "))
                        };
                        println!(
                            "==> mutant {label} xen-{}: killed in {:.1} s ({why})",
                            release.version,
                            start.elapsed().as_secs_f64()
                        );
                    }
                }
            }
        }
    }
    println!("mutants: {killed}/{total} killed");
    if problems.is_empty() && total > 0 {
        Ok(())
    } else if total == 0 && problems.is_empty() {
        Err("no mutant applies to the selected architectures".to_owned())
    } else {
        Err(problems.join("\n"))
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
pub(crate) fn run_quiet(command: &mut Command, what: &str) -> Result<String, String> {
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

/// The `.deb` of `release`'s hypervisor for Debian architecture `debarch` in `dir`: one
/// already there, or one downloaded with `apt-get download` (no installation).
///
/// When the release's suite and `debarch` are the machine's own, the machine's package
/// lists serve. Otherwise (the arm64 package, or another suite such as Debian 13's
/// `trixie`) the harness keeps lists of its own in `dir/apt-lists`: for another
/// architecture it passes apt that architecture, and for another suite a sources list of
/// its own naming the machine's own Debian archive with that suite. The machine's dpkg
/// architectures, sources and lists are never changed.
pub(crate) fn fetch_xen_deb(
    dir: &Path,
    release: &XenRelease,
    debarch: &str,
) -> Result<PathBuf, String> {
    let package = release.package(debarch);
    if let Some(deb) = find_deb(dir, &package)? {
        return Ok(deb);
    }
    let own_suite = machine_codename().as_deref() == Some(release.suite);
    let own_arch = run_quiet(
        Command::new("dpkg").arg("--print-architecture"),
        "dpkg --print-architecture",
    )?
    .trim()
        == debarch;
    let mut options = Vec::new();
    if !(own_suite && own_arch) {
        let lists = dir.join("apt-lists");
        fs::create_dir_all(lists.join("partial"))
            .map_err(|e| format!("creating {}: {e}", lists.display()))?;
        options.push(format!("-oAPT::Architecture={debarch}"));
        options.push(format!("-oAPT::Architectures={debarch}"));
        options.push(format!("-oDir::State::Lists={}", lists.display()));
        if !own_suite {
            let sources = dir.join("sources.list");
            let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
            let signed = if keyring.is_file() {
                format!("[signed-by={}] ", keyring.display())
            } else {
                String::new()
            };
            let line = format!(
                "deb {signed}{} {} main\n",
                debian_archive_uri()?,
                release.suite
            );
            fs::write(&sources, line).map_err(|e| format!("writing {}: {e}", sources.display()))?;
            options.push(format!("-oDir::Etc::SourceList={}", sources.display()));
            options.push("-oDir::Etc::SourceParts=/dev/null".to_owned());
        }
        println!(
            "xen-qemu: apt-get update ({} {debarch} lists in {})",
            release.suite,
            lists.display()
        );
        let start = Instant::now();
        let mut update = Command::new("apt-get");
        update
            .args(&options)
            .args(["-q", "update"])
            .stdin(Stdio::null());
        run_quiet(
            &mut update,
            &format!("apt-get update ({} {debarch})", release.suite),
        )?;
        println!(
            "xen-qemu: lists updated in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    fetch_deb(dir, &package, &options)
}

/// The machine's Debian codename (`VERSION_CODENAME` of `/etc/os-release`).
fn machine_codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

/// The URI of the Debian archive the machine's own apt sources use for its base suite,
/// from `apt-get indextargets`, so that another suite is fetched from the same place.
fn debian_archive_uri() -> Result<String, String> {
    let mut command = Command::new("apt-get");
    command
        .args(["indextargets", "--format", "$(REPO_URI) $(RELEASE)"])
        .stdin(Stdio::null());
    let out = run_quiet(&mut command, "apt-get indextargets")?;
    let codename = machine_codename().unwrap_or_default();
    let entries: Vec<(&str, &str)> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    entries
        .iter()
        .find(|(_, release)| *release == codename)
        .or_else(|| {
            entries
                .iter()
                .find(|(uri, _)| uri.trim_end_matches('/').ends_with("/debian"))
        })
        .map(|(uri, _)| (*uri).to_owned())
        .ok_or_else(|| {
            "no Debian archive in the machine's apt sources (apt-get indextargets; run \
             `apt-get update` first)"
                .to_owned()
        })
}

/// The `.deb` of `package` in `dir`: one already there (`<package>_*.deb`), or one
/// downloaded with `apt-get [apt_options] download <package>` (no installation; works as
/// any user).
fn fetch_deb(dir: &Path, package: &str, apt_options: &[String]) -> Result<PathBuf, String> {
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

/// Builds the binary of example package `package` for `target` in release mode as `build`
/// says (its target directory and extra `RUSTFLAGS`) and returns the path of the ELF.
pub(crate) fn build_example(
    root: &Path,
    package: &str,
    target: &str,
    build: &Build,
) -> Result<PathBuf, String> {
    let start = Instant::now();
    let mut command = Command::new("cargo");
    command
        .args(["build", "--release", "-p", package, "--target", target])
        .env("CARGO_TARGET_DIR", &build.target_dir)
        .current_dir(root);
    if let Some(extra) = &build.rustflags {
        let mut flags = std::env::var("RUSTFLAGS").unwrap_or_default();
        if !flags.is_empty() {
            flags.push(' ');
        }
        flags.push_str(extra);
        command.env("RUSTFLAGS", flags);
    }
    let status = command
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build -p {package} --target {target} exited with {status}"
        ));
    }
    let elf = build.target_dir.join(target).join("release").join(package);
    if !elf.is_file() {
        return Err(format!("cargo build produced no {}", elf.display()));
    }
    println!(
        "xen-qemu: built {package} for {target}{} in {:.1} s",
        build
            .rustflags
            .as_deref()
            .map(|f| format!(" with {f}"))
            .unwrap_or_default(),
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

/// What QEMU's `edu` device prints when it was told to DMA outside its mask and used the
/// clamped (wrong) address instead.
pub(crate) const EDU_CLAMP: &str = "EDU: clamping DMA";

/// The counts a passing console showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Check lines, all `ok`.
    pub checks: usize,
    /// The device DMA checks among them (names starting with `dev-`).
    pub device: usize,
}

/// A check's name without its optional `NN-` number.
fn unnumbered(name: &str) -> &str {
    let bytes = name.as_bytes();
    if bytes.len() > 3 && bytes[..2].iter().all(u8::is_ascii_digit) && bytes[2] == b'-' {
        &name[3..]
    } else {
        name
    }
}

/// Whether check `name` (after its optional `NN-` number) is a device DMA check.
fn is_device_check(name: &str) -> bool {
    unnumbered(name).starts_with("dev-")
}

/// The names of the checks of `arch` that did not say `ok` on `console`, without their
/// `NN-` numbers, each once, in order.
fn failed_checks(arch: &str, console: &str) -> Vec<String> {
    let check = check_prefix(arch);
    let mut names: Vec<String> = Vec::new();
    for line in console.lines() {
        let Some(at) = line.find(&check) else {
            continue;
        };
        let Some((name, status)) = line[at + check.len()..].split_once(": ") else {
            continue;
        };
        let name = unnumbered(name);
        if !status.starts_with("ok") && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Reads the verdict of `arch` booted on Xen `version` from a console log. Succeeds only if
/// the console holds `XEN-QEMU <arch> xen-<version>: PASS (N checks, D device DMA checks)`,
/// no FAIL verdict, no failed check line, exactly N check lines that say `ok` of which D are
/// device DMA checks, `(N, D)` equal to `expected`, and no `EDU: clamping DMA` line. Lines
/// may carry a prefix (Xen's timestamps), so markers are searched anywhere in a line.
pub(crate) fn verdict(
    arch: &str,
    version: &str,
    console: &str,
    expected: (usize, usize),
) -> Result<Verdict, String> {
    let check = check_prefix(arch);
    let head = format!("XEN-QEMU {arch} xen-");
    let legacy_fail = format!("XEN-QEMU {arch}: FAIL");
    let mut ok = 0usize;
    let mut device = 0usize;
    let mut failed = Vec::new();
    let mut claimed = None;
    for line in console.lines() {
        if let Some(at) = line.find(&check) {
            let rest = &line[at + check.len()..];
            match rest.split_once(": ") {
                Some((name, status)) if status.starts_with("ok") => {
                    ok += 1;
                    device += usize::from(is_device_check(name));
                }
                _ => failed.push(rest.trim().to_owned()),
            }
        } else if line.contains(EDU_CLAMP) {
            failed.push(format!(
                "the device DMAed outside its mask: {}",
                line.trim()
            ));
        } else if line.contains(&legacy_fail) {
            failed.push(line.trim().to_owned());
        } else if let Some(at) = line.find(&head) {
            let rest = &line[at + head.len()..];
            let (seen, outcome) = rest
                .split_once(": ")
                .ok_or_else(|| format!("malformed verdict line: {line}"))?;
            if seen != version {
                failed.push(format!(
                    "the kernel reports Xen {seen} but the harness booted Xen {version}"
                ));
            }
            if let Some(counts) = outcome.strip_prefix("PASS (") {
                claimed = Some(
                    parse_counts(counts).ok_or_else(|| format!("malformed PASS line: {line}"))?,
                );
            } else {
                failed.push(line.trim().to_owned());
            }
        }
    }
    if !failed.is_empty() {
        return Err(format!("failed checks:\n  {}", failed.join("\n  ")));
    }
    let Some((n, d)) = claimed else {
        return Err(format!(
            "no `XEN-QEMU {arch} xen-{version}: PASS` line ({ok} checks said ok)"
        ));
    };
    if n != ok || d != device || n == 0 {
        return Err(format!(
            "the PASS line claims {n} checks ({d} device DMA checks) but {ok} check lines \
             said ok ({device} device DMA checks)"
        ));
    }
    if (n, d) != expected {
        return Err(format!(
            "{n} checks ({d} device DMA checks) passed but the harness expects {} ({}): a \
             check went missing or was added without pinning it in xtask/src/xen_qemu/{arch}.rs",
            expected.0, expected.1
        ));
    }
    Ok(Verdict {
        checks: n,
        device: d,
    })
}

/// Parses `N checks, D device DMA checks)`.
fn parse_counts(text: &str) -> Option<(usize, usize)> {
    let (n, rest) = text.split_once(" checks, ")?;
    let (d, _) = rest.split_once(" device DMA checks)")?;
    Some((n.parse().ok()?, d.parse().ok()?))
}

/// The last `n` lines of `text`, for error messages.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &str = "(XEN) boot\nXEN-QEMU x86_64 check a: ok fine\n\
        [  1.0] XEN-QEMU x86_64 check dev-b: ok 3 frames\n\
        XEN-QEMU x86_64 xen-4.17: PASS (2 checks, 1 device DMA checks)\n";

    #[test]
    fn verdict_needs_the_pass_line_matching_ok_lines_and_the_pinned_counts() {
        assert_eq!(
            verdict("x86_64", "4.17", PASS, (2, 1)),
            Ok(Verdict {
                checks: 2,
                device: 1
            })
        );
        // The other architecture's lines do not count.
        assert!(verdict("aarch64", "4.17", PASS, (2, 1)).is_err());
        // Another release than the one booted.
        let err = verdict("x86_64", "4.20", PASS, (2, 1)).unwrap_err();
        assert!(err.contains("reports Xen 4.17"), "{err}");
        // Pinned counts: one check fewer, or one device check fewer, fails.
        assert!(
            verdict("x86_64", "4.17", PASS, (3, 1))
                .unwrap_err()
                .contains("expects 3")
        );
        assert!(verdict("x86_64", "4.17", PASS, (2, 2)).is_err());
        let short = "XEN-QEMU x86_64 check a: ok\nXEN-QEMU x86_64 xen-4.17: PASS (2 checks, 0 device DMA checks)\n";
        assert!(
            verdict("x86_64", "4.17", short, (2, 0))
                .unwrap_err()
                .contains("claims 2")
        );
        let failed = "XEN-QEMU x86_64 check a: FAIL bad\nXEN-QEMU x86_64 xen-4.17: PASS (1 checks, 0 device DMA checks)\n";
        assert!(
            verdict("x86_64", "4.17", failed, (1, 0))
                .unwrap_err()
                .contains("a: FAIL bad")
        );
        let none = "XEN-QEMU x86_64 check a: ok\n(XEN) crash\n";
        assert!(
            verdict("x86_64", "4.17", none, (1, 0))
                .unwrap_err()
                .contains("no `XEN-QEMU x86_64 xen-4.17: PASS`")
        );
        let fail = "XEN-QEMU x86_64 check a: ok\nXEN-QEMU x86_64 xen-4.17: FAIL (1 of 2)\n";
        assert!(verdict("x86_64", "4.17", fail, (1, 0)).is_err());
        let zero = "XEN-QEMU x86_64 xen-4.17: PASS (0 checks, 0 device DMA checks)\n";
        assert!(verdict("x86_64", "4.17", zero, (0, 0)).is_err());
    }

    #[test]
    fn a_clamped_device_access_fails_the_run() {
        let clamped =
            format!("{PASS}EDU: clamping DMA 0x0000000110000000 to 0x0000000000000000!\n");
        let err = verdict("x86_64", "4.17", &clamped, (2, 1)).unwrap_err();
        assert!(err.contains("outside its mask"), "{err}");
    }

    #[test]
    fn failed_checks_are_listed_once_without_numbers() {
        let console = "XEN-QEMU aarch64 check 01-a: ok\nXEN-QEMU aarch64 check 02-dev-b: FAIL x\n\
                       XEN-QEMU aarch64 check 02-dev-b: FAIL y\nXEN-QEMU aarch64 check c: FAIL\n";
        assert_eq!(failed_checks("aarch64", console), ["dev-b", "c"]);
    }

    #[test]
    fn device_checks_are_named_dev_after_an_optional_number() {
        assert!(is_device_check("dev-direct"));
        assert!(is_device_check("07-dev-foreign-write"));
        assert!(!is_device_check("07-grant-map"));
        assert!(!is_device_check("device"));
    }

    #[test]
    fn arguments_select_arches_releases_and_mutants() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            parse(&args("")),
            Ok(Request::Matrix(Arch::ALL.to_vec(), RELEASES.to_vec()))
        );
        assert_eq!(
            parse(&args("arm64 --xen 4.20")),
            Ok(Request::Matrix(vec![Arch::Aarch64], vec![RELEASES[1]]))
        );
        assert_eq!(
            parse(&args("mutants x86-pv")),
            Ok(Request::Mutants(
                vec![Arch::X86_64],
                vec![RELEASES[0]],
                None
            ))
        );
        assert_eq!(
            parse(&args("mutants arm64 --mutant no_copy_back --xen all")),
            Ok(Request::Mutants(
                vec![Arch::Aarch64],
                RELEASES.to_vec(),
                Some("no_copy_back")
            ))
        );
        assert_eq!(parse(&args("--help")), Ok(Request::Help));
        assert!(parse(&args("sparc")).is_err());
        assert!(parse(&args("all --xen 9.9")).is_err());
        assert!(parse(&args("all x86_64")).is_err());
        assert!(parse(&args("mutants --mutant nothing")).is_err());
        assert!(parse(&args("--mutant no_copy_back")).is_err());
    }

    #[test]
    fn every_mutant_is_declared_to_the_compiler() {
        let manifest = include_str!("../../../Cargo.toml");
        for m in MUTANTS {
            assert!(
                manifest.contains(&format!("\"{}\"", m.name)),
                "mutant {} is not in the workspace's check-cfg values",
                m.name
            );
        }
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
