//! The virtio-blk disk of both kernels: an image of known content that the harness makes
//! before each boot (in the ignored build directory) and checks after it.
//!
//! The content is `xen-qemu-disk`'s (one definition for the harness and both kernels):
//! generation 0 when the harness writes the image; the kernel reads sectors and checks them,
//! writes `WRITE_SECTORS` sectors of generation 1 from `WRITE_FIRST`, and reads them back. After a passing boot [`check`] requires exactly those sectors to hold
//! generation 1 and every other sector to be as made: a write at a wrong bus address, a
//! bounce not copied, or a wrong sector all show here, outside the kernel's own view.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::XenRelease;

use xen_qemu_disk::{
    SECTOR_SIZE as SECTOR, SECTORS, WRITE_FIRST, WRITE_SECTORS, byte as disk_byte,
};

/// The disk image of a boot of `arch` on `release` (made fresh before each boot).
pub(crate) fn image_path(root: &Path, release: &XenRelease, arch: &str) -> Result<PathBuf, String> {
    Ok(release.dir(root, arch)?.join("disk.img"))
}

/// The image's bytes in generation 0.
fn image() -> Vec<u8> {
    (0..SECTORS)
        .flat_map(|s| (0..SECTOR).map(move |i| disk_byte(0, s, i)))
        .collect()
}

/// Writes a fresh image at `path`.
pub(crate) fn create(path: &Path) -> Result<(), String> {
    std::fs::write(path, image()).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Checks the image at `path` after a boot: the kernel's sectors hold generation 1, every
/// other sector generation 0. Returns a note for the summary.
pub(crate) fn check(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    check_bytes(&bytes)?;
    Ok(format!(
        ", disk: sectors {WRITE_FIRST}..{} as the kernel wrote them, the other {} untouched",
        WRITE_FIRST + WRITE_SECTORS,
        SECTORS - WRITE_SECTORS
    ))
}

/// [`check`] on the image's bytes.
fn check_bytes(bytes: &[u8]) -> Result<(), String> {
    let want = SECTORS as usize * SECTOR;
    if bytes.len() != want {
        return Err(format!(
            "the disk image has {} bytes, expected {want}",
            bytes.len()
        ));
    }
    let written = WRITE_FIRST..WRITE_FIRST + WRITE_SECTORS;
    let mut wrong = Vec::new();
    for (s, sector) in (0..SECTORS).zip(bytes.chunks(SECTOR)) {
        let generation = u8::from(written.contains(&s));
        if let Some(i) = (0..SECTOR).find(|&i| sector[i] != disk_byte(generation, s, i)) {
            wrong.push(format!(
                "sector {s} byte {i}: {:#x}, expected {:#x} (generation {generation})",
                sector[i],
                disk_byte(generation, s, i)
            ));
        }
    }
    match wrong.len() {
        0 => Ok(()),
        n => Err(format!(
            "the disk image after the boot: {n} sector(s) wrong, first: {}",
            wrong[..n.min(4)].join("; ")
        )),
    }
}

/// QEMU's arguments for the image at `path` as the virtio-blk `device` (e.g.
/// `virtio-blk-pci,disable-legacy=on`).
pub(crate) fn qemu_args(path: &Path, device: &str) -> Vec<OsString> {
    let mut drive = OsString::from("file=");
    drive.push(path);
    drive.push(",if=none,format=raw,id=vd0");
    vec![
        "-drive".into(),
        drive,
        "-device".into(),
        format!("{device},drive=vd0").into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel does to the image.
    fn written_by_kernel() -> Vec<u8> {
        let mut bytes = image();
        for s in WRITE_FIRST..WRITE_FIRST + WRITE_SECTORS {
            for i in 0..SECTOR {
                bytes[s as usize * SECTOR + i] = disk_byte(1, s, i);
            }
        }
        bytes
    }

    #[test]
    fn the_image_after_the_kernels_write_passes() {
        assert_eq!(check_bytes(&written_by_kernel()), Ok(()));
    }

    #[test]
    fn an_unwritten_image_fails() {
        let e = check_bytes(&image()).unwrap_err();
        assert!(e.contains("32 sector(s) wrong"), "{e}");
    }

    #[test]
    fn one_byte_anywhere_or_a_shifted_write_fails() {
        let mut bytes = written_by_kernel();
        bytes[1000 * SECTOR + 17] ^= 1;
        assert!(
            check_bytes(&bytes)
                .unwrap_err()
                .contains("sector 1000 byte 17")
        );
        // The kernel's sectors written one sector too far.
        let mut bytes = image();
        for s in WRITE_FIRST + 1..WRITE_FIRST + WRITE_SECTORS + 1 {
            for i in 0..SECTOR {
                bytes[s as usize * SECTOR + i] = disk_byte(1, s - 1, i);
            }
        }
        assert!(check_bytes(&bytes).is_err());
        assert!(check_bytes(&bytes[..SECTOR]).is_err());
    }

    #[test]
    fn the_drive_is_named_for_the_device() {
        let args = qemu_args(Path::new("/x/disk.img"), "virtio-blk-device");
        assert_eq!(args[1], "file=/x/disk.img,if=none,format=raw,id=vd0");
        assert_eq!(args[3], "virtio-blk-device,drive=vd0");
    }
}
