//! The x86_64 half of `xen-qemu`: Debian's Xen 4.17 hypervisor boots the
//! `examples/x86_64-pv-dom0` kernel as its PV dom0 under QEMU (TCG).

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{boot, build_dir, build_example, ensure_tools, fetch_deb, tail, unpack_deb, verdict};

/// The architecture's name in the verdict lines.
const ARCH: &str = "x86_64";
/// The hypervisor package (about 2 MB).
const XEN_PACKAGE: &str = "xen-hypervisor-4.17-amd64";
/// The gzipped multiboot ELF in the package; QEMU's `-kernel` needs it unzipped.
const XEN_GZ: &str = "boot/xen-4.17-amd64.gz";
/// The example's package name.
const EXAMPLE: &str = "x86_64-pv-dom0";
/// QEMU's time limit: a boot takes seconds, so this only catches a hang.
const LIMIT: Duration = Duration::from_secs(120);
/// RAM given to QEMU: more than 4 GiB, so that Xen has machine memory above the 32-bit
/// boundary and dom0's frames can lie there.
pub(crate) const QEMU_MEMORY: &str = "6G";
/// Xen's command line.
pub(crate) const XEN_CMDLINE: &str = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all \
     dom0_mem=512M,max:512M console_timestamps=boot";

/// Fetches the hypervisor, builds the kernel, boots it and checks the verdict.
pub fn run(root: &Path) -> Result<(), String> {
    ensure_tools(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("timeout", "coreutils"),
        ("dpkg", "dpkg"),
        ("apt-get", "apt"),
        ("gunzip", "gzip"),
    ])?;
    let dir = build_dir(root, ARCH)?;
    let fetch = Instant::now();
    let deb = fetch_deb(&dir, XEN_PACKAGE, &[])?;
    let gz = unpack_deb(&deb, &dir.join("pkg"), XEN_GZ)?;
    let xen = dir.join("xen-4.17-amd64");
    if !xen.is_file() {
        gunzip(&gz, &xen)?;
    }
    println!(
        "xen-qemu: hypervisor ready in {:.1} s: {}",
        fetch.elapsed().as_secs_f64(),
        xen.display()
    );
    let kernel = build_example(root, EXAMPLE, "x86_64-unknown-none")?;
    let argv = command_line(&xen, &kernel);
    let log = dir.join("console.log");
    let run = boot(&argv, LIMIT, &log)?;
    let checks = verdict(ARCH, &run.console).map_err(|e| {
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
    })?;
    if run.timed_out {
        return Err(format!(
            "the kernel passed {checks} checks but QEMU did not exit within {} s (console: {})",
            LIMIT.as_secs(),
            log.display()
        ));
    }
    println!(
        "xen-qemu: XEN-QEMU {ARCH}: PASS ({checks} checks); QEMU ran {:.1} s (console: {})",
        run.elapsed.as_secs_f64(),
        log.display()
    );
    Ok(())
}

/// QEMU's command line: Xen as the multiboot kernel, the dom0 ELF as its first module.
fn command_line(xen: &Path, kernel: &Path) -> Vec<OsString> {
    let mut argv: Vec<OsString> = [
        "qemu-system-x86_64",
        "-m",
        QEMU_MEMORY,
        "-smp",
        "1",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    argv.push(xen.into());
    argv.push("-append".into());
    argv.push(XEN_CMDLINE.into());
    argv.push("-initrd".into());
    argv.push(kernel.into());
    argv
}

/// `gunzip -c gz > out`.
fn gunzip(gz: &Path, out: &Path) -> Result<(), String> {
    let file =
        std::fs::File::create(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let status = std::process::Command::new("gunzip")
        .arg("-c")
        .arg(gz)
        .stdout(file)
        .status()
        .map_err(|e| format!("could not start gunzip: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        let _ = std::fs::remove_file(out);
        Err(format!("gunzip {} exited with {status}", gz.display()))
    }
}
