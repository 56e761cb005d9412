//! The x86_64 half of `xen-qemu`: Debian's Xen hypervisor (each release of the matrix)
//! boots the `examples/x86_64-pv-dom0` kernel as its PV dom0 under QEMU (TCG).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    Boot, Build, Kernel, XenRelease, boot, build_example, disk, ensure_tools, fetch_xen_deb,
    unpack_deb,
};

/// The architecture's name in the verdict lines.
const ARCH: &str = "x86_64";
/// The example's package name.
const EXAMPLE: &str = "x86_64-pv-dom0";
/// RAM given to QEMU. With 512 MiB Xen keeps the low quarter (its DMA zone) for last and
/// builds a 320 MiB dom0 from the top down, so dom0 owns machine RAM both above the `edu`
/// device's 28-bit mask (its first pfns, the kernel image) and below it (its last pfns),
/// and Xen still has free frames below the mask for exchanges.
pub(crate) const QEMU_MEMORY: &str = "512M";
/// Xen's command line.
pub(crate) const XEN_CMDLINE: &str = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all \
     dom0_mem=320M,max:320M console_timestamps=boot";
/// The `edu` device and its DMA mask (28 bits, QEMU's default, named so the kernel's
/// `edu::DMA_MASK_BITS` visibly matches it).
pub(crate) const EDU_DEVICE: &str = "edu,dma_mask=0xfffffff";
/// The virtio disk: a modern-only (virtio 1.0) PCI function, as virtio-drivers'
/// `PciTransport` drives it.
pub(crate) const VIRTIO_BLK_DEVICE: &str = "virtio-blk-pci,disable-legacy=on";

/// The number of check lines the kernel must print.
pub(crate) const EXPECTED_CHECKS: usize = 35;
/// How many of them are device DMA checks (names starting with `dev-`).
pub(crate) const EXPECTED_DEVICE_CHECKS: usize = 13;

/// The built kernel.
pub(crate) struct X86Kernel {
    /// The PV dom0 ELF.
    elf: PathBuf,
    /// QEMU's time limit per boot ([`Build::limit`]).
    limit: Duration,
}

/// Builds the kernel as `build` says.
pub(crate) fn prepare(root: &Path, build: &Build) -> Result<X86Kernel, String> {
    ensure_tools(&[
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("timeout", "coreutils"),
        ("dpkg", "dpkg"),
        ("apt-get", "apt"),
        ("gunzip", "gzip"),
    ])?;
    let elf = build_example(root, EXAMPLE, "x86_64-unknown-none", build)?;
    Ok(X86Kernel {
        elf,
        limit: build.limit,
    })
}

impl Kernel for X86Kernel {
    fn boot(&self, root: &Path, release: &XenRelease, log: &Path) -> Result<Boot, String> {
        let xen = hypervisor(root, release)?;
        let image = disk::image_path(root, release, ARCH)?;
        disk::create(&image)?;
        let argv = command_line(&xen, &self.elf, &image);
        boot(&argv, self.limit, log)
    }

    fn after_pass(
        &self,
        root: &Path,
        release: &XenRelease,
        _console: &str,
    ) -> Result<String, String> {
        disk::check(&disk::image_path(root, release, ARCH)?)
    }
}

/// The release's hypervisor, fetched and unpacked if missing: the package's gzipped
/// multiboot ELF, gunzipped next to it (QEMU's `-kernel` needs it unzipped).
fn hypervisor(root: &Path, release: &XenRelease) -> Result<PathBuf, String> {
    let dir = release.dir(root, ARCH)?;
    let name = format!("xen-{}-amd64", release.version);
    let xen = dir.join(&name);
    if xen.is_file() {
        return Ok(xen);
    }
    let fetch = Instant::now();
    let deb = fetch_xen_deb(&dir, release, "amd64")?;
    let gz = unpack_deb(&deb, &dir.join("pkg"), &format!("boot/{name}.gz"))?;
    gunzip(&gz, &xen)?;
    println!(
        "xen-qemu: hypervisor ready in {:.1} s: {}",
        fetch.elapsed().as_secs_f64(),
        xen.display()
    );
    Ok(xen)
}

/// QEMU's command line: Xen as the multiboot kernel, the dom0 ELF as its first module, the
/// `edu` device and the virtio disk with `image`.
fn command_line(xen: &Path, kernel: &Path, image: &Path) -> Vec<OsString> {
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
        "-device",
        EDU_DEVICE,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    argv.extend(disk::qemu_args(image, VIRTIO_BLK_DEVICE));
    argv.push("-kernel".into());
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
