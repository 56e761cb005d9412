//! The aarch64 half of `xen-qemu`: Debian's Xen hypervisor for arm64 (each release of the
//! matrix) boots the
//! `examples/aarch64-dom0` kernel as its 1:1 dom0, next to the example's granting domU as a
//! dom0less domain, on QEMU's `virt` machine (TCG, GICv3, EL2).
//!
//! Steps: fetch the arm64 hypervisor package without adding the architecture to dpkg (an
//! `apt-get update` into a private lists directory, then `apt-get download`: see
//! [`fetch_xen_deb`]), unpack it;
//! build both kernels for `aarch64-unknown-none` and turn the ELFs into raw arm64 Images; dump
//! QEMU's device tree and add Xen's command line, the dom0 module and the domU node to
//! `/chosen`; boot under `timeout`; read the verdict.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    Boot, Build, Kernel, XenRelease, boot, build_example, disk, ensure_tools, fetch_xen_deb,
    unpack_deb,
};

/// The architecture's name in the verdict lines.
const ARCH: &str = "aarch64";
/// The example's package; its binaries are the dom0 and the domU.
const EXAMPLE: &str = "aarch64-dom0";
/// The domU binary of the example package.
const DOMU_BIN: &str = "aarch64-domu";
/// The bare-metal target.
const TARGET: &str = "aarch64-unknown-none";
/// QEMU's machine: GICv3 and EL2 for Xen.
const MACHINE: &str = "virt,gic-version=3,virtualization=on";
/// RAM given to QEMU: `virt`'s RAM starts at 1 GiB, so 5 GiB reach 6 GiB, 2 GiB of them
/// above 4 GiB. With `dom0_mem=3G` Xen then gives dom0 all the RAM it can below 4 GiB as its
/// first 1:1 bank (0x50000000..0x100000000, where the dom0 kernel is linked) and the rest
/// above 4 GiB, out of reach of the 32-bit `edu` device.
const QEMU_MEMORY: &str = "5G";
/// Xen's command line (in the device tree's `xen,xen-bootargs`). `bootscrub=0`: scrubbing
/// gigabytes under TCG would take longer than the whole run.
const XEN_CMDLINE: &str = "console=dtuart dtuart=/pl011@9000000 loglvl=all guest_loglvl=all \
     dom0_mem=3G,max:3G bootscrub=0 console_timestamps=boot";
/// The DMA master of the device checks: QEMU's `edu` PCI device on `virt`'s host bridge,
/// with a 32-bit DMA mask (the default 28 bits reach no RAM on `virt`).
const EDU_DEVICE: &str = "edu,dma_mask=0xffffffff";
/// The virtio disk, on one of `virt`'s virtio-mmio transports (the device tree lists them
/// all, with or without a device, so the dumped tree needs no disk).
const VIRTIO_BLK_DEVICE: &str = "virtio-blk-device";
/// Where QEMU loads the dom0 Image for Xen to find as a boot module.
const DOM0_ADDR: u64 = 0x4900_0000;
/// Where QEMU loads the domU Image.
const DOMU_ADDR: u64 = 0x4a00_0000;
/// The domU's memory in KiB (128 MiB): `examples/aarch64-dom0`'s `layout::DOMU_MEMORY`,
/// which the domU relies on to find the last page of its RAM.
const DOMU_MEMORY_KIB: u64 = 128 * 1024;
/// The arm64 Image magic at offset 56.
const IMAGE_MAGIC: &[u8; 4] = b"ARM\x64";

/// The number of check lines the kernel must print.
pub(crate) const EXPECTED_CHECKS: usize = 53;
/// How many of them are device DMA checks (names starting with `dev-`): the `edu` device's
/// transfers, direct, bounced, partially synced, scatter-gather, coherent, and to and from
/// the domU's granted pages; the virtio disk's reads (direct, bounced) and bounced write.
pub(crate) const EXPECTED_DEVICE_CHECKS: usize = 14;

/// The built kernels and the device tree they boot with.
pub(crate) struct Aarch64Kernel {
    /// The dom0 Image.
    dom0: PathBuf,
    /// The domU Image.
    domu: PathBuf,
    /// QEMU's device tree with Xen's nodes added.
    dtb: PathBuf,
    /// QEMU's time limit per boot ([`Build::limit`]).
    limit: Duration,
}

/// Builds both kernels as `build` says, turns them into Images and writes the device tree.
pub(crate) fn prepare(root: &Path, build: &Build) -> Result<Aarch64Kernel, String> {
    ensure_tools(&[
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("dtc", "device-tree-compiler"),
        ("timeout", "coreutils"),
        ("dpkg", "dpkg"),
        ("apt-get", "apt"),
    ])?;
    let start = Instant::now();
    let dom0_elf = build_example(root, EXAMPLE, TARGET, build)?;
    let domu_elf = dom0_elf.with_file_name(DOMU_BIN);
    let dom0 = build.out.join("dom0.img");
    let domu = build.out.join("domu.img");
    let dom0_len = write_image(&dom0_elf, &dom0)?;
    let domu_len = write_image(&domu_elf, &domu)?;
    let dtb = make_dtb(&build.out, dom0_len, domu_len)?;
    println!(
        "xen-qemu: images (dom0 {dom0_len} bytes, domU {domu_len} bytes) and device tree \
         ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(Aarch64Kernel {
        dom0,
        domu,
        dtb,
        limit: build.limit,
    })
}

impl Kernel for Aarch64Kernel {
    fn boot(&self, root: &Path, release: &XenRelease, log: &Path) -> Result<Boot, String> {
        let xen = hypervisor(root, release)?;
        let image = disk::image_path(root, release, ARCH)?;
        disk::create(&image)?;
        let mut argv = command_line(&xen, &self.dtb, &self.dom0, &self.domu);
        argv.extend(disk::qemu_args(&image, VIRTIO_BLK_DEVICE));
        boot(&argv, self.limit, log)
    }

    /// The domU must have printed (Xen relays its console as `DOM1: ...`), and the disk
    /// must hold what dom0 wrote.
    fn after_pass(
        &self,
        root: &Path,
        release: &XenRelease,
        console: &str,
    ) -> Result<String, String> {
        let domu_lines = console.lines().filter(|l| l.contains("DOM1: ")).count();
        if domu_lines == 0 {
            return Err("dom0 passed but the domU printed nothing".to_owned());
        }
        let disk = disk::check(&disk::image_path(root, release, ARCH)?)?;
        Ok(format!(", {domu_lines} domU lines{disk}"))
    }
}

/// The release's hypervisor Image, fetched and unpacked if missing.
fn hypervisor(root: &Path, release: &XenRelease) -> Result<PathBuf, String> {
    let dir = release.dir(root, ARCH)?;
    let image = format!("boot/xen-{}-arm64", release.version);
    let xen = dir.join("pkg").join(&image);
    if xen.is_file() {
        return Ok(xen);
    }
    let fetch = Instant::now();
    let deb = fetch_xen_deb(&dir, release, "arm64")?;
    unpack_deb(&deb, &dir.join("pkg"), &image)?;
    println!(
        "xen-qemu: hypervisor ready in {:.1} s: {}",
        fetch.elapsed().as_secs_f64(),
        xen.display()
    );
    Ok(xen)
}

/// Turns the kernel ELF at `elf` into a raw arm64 Image at `out`; returns its length.
fn write_image(elf: &Path, out: &Path) -> Result<u64, String> {
    let bytes = fs::read(elf).map_err(|e| format!("reading {}: {e}", elf.display()))?;
    let image = elf_to_image(&bytes).map_err(|e| format!("{}: {e}", elf.display()))?;
    fs::write(out, &image).map_err(|e| format!("writing {}: {e}", out.display()))?;
    // CAST: an image is far below 2^64 bytes.
    Ok(image.len() as u64)
}

/// The loadable bytes of a little-endian ELF64 image (what `objcopy -O binary` gives): every
/// `PT_LOAD` segment's file bytes placed at its physical address relative to the lowest
/// one, gaps zero-filled, `.bss` (no file bytes) left out. The image must start at the entry
/// point with the arm64 Image header (`ARM\x64` at offset 56).
fn elf_to_image(elf: &[u8]) -> Result<Vec<u8>, String> {
    let u16_at = |at: usize| -> Result<u64, String> {
        elf.get(at..at + 2)
            .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| format!("truncated ELF at {at:#x}"))
    };
    let u32_at = |at: usize| -> Result<u64, String> {
        elf.get(at..at + 4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .ok_or_else(|| format!("truncated ELF at {at:#x}"))
    };
    let u64_at = |at: usize| -> Result<u64, String> {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| format!("truncated ELF at {at:#x}"))
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not a little-endian ELF64 file".to_owned());
    }
    let entry = u64_at(24)?;
    let phoff = to_usize(u64_at(32)?)?;
    let phentsize = to_usize(u16_at(54)?)?;
    let phnum = to_usize(u16_at(56)?)?;
    // (physical address, file offset, file size) of each PT_LOAD with file bytes.
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != 1 {
            continue;
        }
        let (offset, paddr, filesz) = (u64_at(ph + 8)?, u64_at(ph + 24)?, u64_at(ph + 32)?);
        if filesz > 0 {
            segments.push((paddr, to_usize(offset)?, to_usize(filesz)?));
        }
    }
    let base = segments
        .iter()
        .map(|s| s.0)
        .min()
        .ok_or("no loadable segment")?;
    if base != entry {
        return Err(format!(
            "the image starts at {base:#x} but the entry point is {entry:#x}"
        ));
    }
    let end = segments
        .iter()
        .map(|&(p, _, n)| p - base + n as u64)
        .max()
        .unwrap_or(0);
    let mut image = vec![0u8; to_usize(end)?];
    for (paddr, offset, size) in segments {
        let at = to_usize(paddr - base)?;
        let src = elf
            .get(offset..offset + size)
            .ok_or_else(|| format!("segment at {offset:#x}+{size:#x} past the end of the file"))?;
        image[at..at + size].copy_from_slice(src);
    }
    if image.get(56..60) != Some(&IMAGE_MAGIC[..]) {
        return Err("no arm64 Image header (ARM\\x64 at offset 56)".to_owned());
    }
    Ok(image)
}

fn to_usize(v: u64) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{v:#x} does not fit in usize"))
}

/// QEMU's machine arguments (with the `edu` device), shared by the device-tree dump and the
/// boot.
fn machine_args() -> Vec<OsString> {
    [
        "-machine",
        MACHINE,
        "-cpu",
        "cortex-a57",
        "-smp",
        "2",
        "-m",
        QEMU_MEMORY,
        "-device",
        EDU_DEVICE,
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

/// Dumps QEMU's device tree, adds Xen's nodes to `/chosen` and compiles it to `xen.dtb`.
fn make_dtb(dir: &Path, dom0_len: u64, domu_len: u64) -> Result<std::path::PathBuf, String> {
    let virt = dir.join("virt.dtb");
    let mut dump = Command::new("qemu-system-aarch64");
    let mut machine = machine_args();
    machine[1] = OsString::from(format!("{MACHINE},dumpdtb={}", virt.display()));
    dump.args(&machine)
        .args(["-nographic", "-monitor", "none"])
        .stdin(Stdio::null());
    run_checked(&mut dump, "qemu-system-aarch64 dumpdtb")?;
    let mut decompile = Command::new("dtc");
    decompile.args(["-q", "-I", "dtb", "-O", "dts"]).arg(&virt);
    let dts = run_checked(&mut decompile, "dtc -I dtb")?;
    let patched = add_xen_nodes(&dts, dom0_len, domu_len)?;
    let dts_path = dir.join("xen.dts");
    fs::write(&dts_path, patched).map_err(|e| format!("writing {}: {e}", dts_path.display()))?;
    let dtb = dir.join("xen.dtb");
    let mut compile = Command::new("dtc");
    compile
        .args(["-q", "-I", "dts", "-O", "dtb", "-o"])
        .arg(&dtb)
        .arg(&dts_path);
    run_checked(&mut compile, "dtc -I dts")?;
    Ok(dtb)
}

/// Runs `command` and returns its stdout, or an error with its stderr.
fn run_checked(command: &mut Command, what: &str) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("{what}: could not start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds to the `/chosen` node of a decompiled device tree what Xen reads there: its command
/// line (`xen,xen-bootargs`), the dom0 kernel module, and a dom0less domain `domU1` with
/// one vCPU, [`DOMU_MEMORY_KIB`] of memory, an emulated PL011 and its kernel module. The
/// properties go after `/chosen`'s own (dtc wants properties before subnodes).
fn add_xen_nodes(dts: &str, dom0_len: u64, domu_len: u64) -> Result<String, String> {
    let chosen = dts
        .find("\tchosen {")
        .ok_or("the device tree has no /chosen node")?;
    let close = chosen
        + dts[chosen..]
            .find("\n\t};")
            .ok_or("the /chosen node is not closed")?;
    let nodes = format!(
        r#"
		xen,xen-bootargs = "{XEN_CMDLINE}";
		#address-cells = <0x02>;
		#size-cells = <0x02>;

		module@{DOM0_ADDR:x} {{
			compatible = "multiboot,kernel", "multiboot,module";
			reg = <0x00 {DOM0_ADDR:#x} 0x00 {dom0_len:#x}>;
			bootargs = "dom0";
		}};

		domU1 {{
			compatible = "xen,domain";
			#address-cells = <0x02>;
			#size-cells = <0x02>;
			memory = <0x00 {DOMU_MEMORY_KIB:#x}>;
			cpus = <0x01>;
			vpl011;

			module@{DOMU_ADDR:x} {{
				compatible = "multiboot,kernel", "multiboot,module";
				reg = <0x00 {DOMU_ADDR:#x} 0x00 {domu_len:#x}>;
				bootargs = "domU";
			}};
		}};"#
    );
    Ok(format!("{}{nodes}{}", &dts[..close], &dts[close..]))
}

/// QEMU's command line: Xen as the kernel with the patched device tree, both Images loaded
/// raw where the device tree says.
fn command_line(xen: &Path, dtb: &Path, dom0: &Path, domu: &Path) -> Vec<OsString> {
    let mut argv = vec![OsString::from("qemu-system-aarch64")];
    argv.extend(machine_args());
    for a in [
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ] {
        argv.push(a.into());
    }
    argv.push("-kernel".into());
    argv.push(xen.into());
    argv.push("-dtb".into());
    argv.push(dtb.into());
    for (img, addr) in [(dom0, DOM0_ADDR), (domu, DOMU_ADDR)] {
        argv.push("-device".into());
        argv.push(format!("loader,file={},addr={addr:#x},force-raw=on", img.display()).into());
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64: two PT_LOAD segments with file bytes and one without (`.bss`).
    fn elf(entry: u64, segs: &[(u64, &[u8])]) -> Vec<u8> {
        let phoff = 64usize;
        let phnum = segs.len() + 1;
        let mut data_at = phoff + 56 * phnum;
        let mut out = vec![0u8; data_at];
        out[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut blobs = Vec::new();
        for (i, (paddr, bytes)) in segs.iter().enumerate() {
            let ph = phoff + 56 * i;
            out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
            out[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            data_at += bytes.len();
            blobs.extend_from_slice(bytes);
        }
        // The .bss segment: memory but no file bytes.
        let ph = phoff + 56 * segs.len();
        out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        out[ph + 24..ph + 32].copy_from_slice(&0x6010_0000u64.to_le_bytes());
        out.extend_from_slice(&blobs);
        out
    }

    fn header() -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[56..60].copy_from_slice(IMAGE_MAGIC);
        h
    }

    #[test]
    fn image_places_segments_and_fills_gaps() {
        let h = header();
        let file = elf(0x6000_0000, &[(0x6000_0000, &h), (0x6000_0100, b"data")]);
        let image = elf_to_image(&file).unwrap();
        assert_eq!(image.len(), 0x104);
        assert_eq!(&image[56..60], IMAGE_MAGIC);
        assert!(image[64..0x100].iter().all(|&b| b == 0));
        assert_eq!(&image[0x100..], b"data");
    }

    #[test]
    fn bad_images_are_refused() {
        let h = header();
        assert!(elf_to_image(b"not an elf").is_err());
        let moved = elf(0x6000_0040, &[(0x6000_0000, &h)]);
        assert!(elf_to_image(&moved).unwrap_err().contains("entry point"));
        let plain = elf(0x6000_0000, &[(0x6000_0000, &[0u8; 64])]);
        assert!(elf_to_image(&plain).unwrap_err().contains("Image header"));
        let mut cut = elf(0x6000_0000, &[(0x6000_0000, &h)]);
        cut.truncate(cut.len() - 8);
        assert!(elf_to_image(&cut).unwrap_err().contains("past the end"));
    }

    #[test]
    fn xen_nodes_go_at_the_end_of_chosen() {
        let dts =
            "/ {\n\tchosen {\n\t\tstdout-path = \"/pl011@9000000\";\n\t};\n\n\tfoo {\n\t};\n};\n";
        let out = add_xen_nodes(dts, 0x1000, 0x200).unwrap();
        let chosen = &out[out.find("chosen {").unwrap()..out.find("foo {").unwrap()];
        assert!(chosen.find("stdout-path").unwrap() < chosen.find("xen,xen-bootargs").unwrap());
        assert!(chosen.contains("reg = <0x00 0x49000000 0x00 0x1000>;"));
        assert!(chosen.contains("reg = <0x00 0x4a000000 0x00 0x200>;"));
        assert!(chosen.contains("memory = <0x00 0x20000>;"));
        assert!(chosen.contains("dom0_mem=3G"));
        assert!(add_xen_nodes("/ {\n};\n", 1, 1).is_err());
    }
}
