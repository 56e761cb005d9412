//! # xen-qemu-disk
//!
//! The virtio-blk disk of the real-Xen runs (`cargo xtask xen-qemu`): the harness makes an
//! image of [`SECTORS`] sectors whose byte `i` of sector `s` is [`byte`]`(0, s, i)` before
//! each boot; the kernels (`examples/x86_64-pv-dom0`, `examples/aarch64-dom0`) read sectors
//! through virtio-drivers and check them, write [`WRITE_SECTORS`] sectors of generation 1
//! from [`WRITE_FIRST`], read them back, and after the boot the harness checks that exactly
//! those sectors changed, to exactly that. One definition for the three, so they cannot
//! drift apart.

#![no_std]

/// The image's size in sectors (1 MiB); the kernels check the capacity they see.
pub const SECTORS: u64 = 2048;
/// A sector's size.
pub const SECTOR_SIZE: usize = 512;
/// The first sector the kernels write.
pub const WRITE_FIRST: u64 = 64;
/// How many sectors they write (16 KiB: one request, bounced).
pub const WRITE_SECTORS: u64 = 32;

/// Byte `i` of sector `sector` in generation `generation` (0: as the harness makes the
/// image, 1: as the kernels write it). Every sector differs from its neighbours (at 1, 256
/// and 1024 sectors) and from its other generation, so a read of the wrong sector, a stale
/// bounce or a write that did not happen cannot pass.
#[must_use]
pub fn byte(generation: u8, sector: u64, i: usize) -> u8 {
    // CAST: the low byte of each term is what counts.
    let mix = (sector.wrapping_mul(31) as usize)
        .wrapping_add(i.wrapping_mul(7))
        .wrapping_add(usize::from(generation) * 101) as u8;
    mix ^ ((sector >> 8) as u8).wrapping_mul(0x3b)
}

/// The first byte of `buf` (sectors `first..` of generation `generation`) that is wrong:
/// `(sector, offset in the sector, found, expected)`.
#[must_use]
pub fn first_mismatch(buf: &[u8], generation: u8, first: u64) -> Option<(u64, usize, u8, u8)> {
    buf.iter().enumerate().find_map(|(i, &got)| {
        // CAST: a buffer's sector count fits u64.
        let sector = first + (i / SECTOR_SIZE) as u64;
        let want = byte(generation, sector, i % SECTOR_SIZE);
        (got != want).then_some((sector, i % SECTOR_SIZE, got, want))
    })
}

/// Fills `buf` with sectors `first..` of generation `generation`.
pub fn fill(buf: &mut [u8], generation: u8, first: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        // CAST: as in `first_mismatch`.
        *b = byte(
            generation,
            first + (i / SECTOR_SIZE) as u64,
            i % SECTOR_SIZE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_differ_from_their_neighbours_and_between_generations() {
        for s in 0..SECTORS {
            for t in [s + 1, s + 256, s + 1024] {
                if t < SECTORS {
                    assert!((0..SECTOR_SIZE).any(|i| byte(0, s, i) != byte(0, t, i)));
                }
            }
            assert!((0..SECTOR_SIZE).all(|i| byte(0, s, i) != byte(1, s, i)));
        }
    }

    #[test]
    fn fill_then_check_round_trips_and_one_wrong_byte_is_found() {
        let mut buf = [0u8; 3 * SECTOR_SIZE];
        fill(&mut buf, 1, 70);
        assert_eq!(first_mismatch(&buf, 1, 70), None);
        assert!(first_mismatch(&buf, 1, 71).is_some());
        assert!(first_mismatch(&buf, 0, 70).is_some());
        buf[SECTOR_SIZE + 5] ^= 0x10;
        let (sector, at, _, _) = first_mismatch(&buf, 1, 70).unwrap();
        assert_eq!((sector, at), (71, 5));
    }
}
