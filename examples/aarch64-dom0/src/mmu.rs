//! An identity map with 1 GiB and 2 MiB blocks, and turning the MMU and caches on.
//!
//! Xen enters a guest kernel with the MMU off, where every data access is to Device memory:
//! an unaligned access faults, and `memcpy` makes unaligned accesses. Both kernels therefore
//! build an identity map (4 KiB granule, 39-bit virtual addresses, translation starting at
//! level 1) and turn the MMU and the caches on before they run anything else. The map is
//! the identity, so addresses given to Xen and to the DMA layer are physical addresses.
//!
//! The descriptor encoding is plain Rust, tested on the host; `enable` and `publish` (which
//! makes entries added later visible) are the only parts that touch system registers.

/// Memory attributes of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    /// Normal memory, inner and outer write-back, inner shareable (`MAIR` index 0).
    Normal,
    /// Device-nGnRnE memory, never executable (`MAIR` index 1).
    Device,
}

/// `MAIR_EL1`: index 0 = Normal write-back read/write-allocate, index 1 = Device-nGnRnE.
pub const MAIR: u64 = 0xff;

/// `TCR_EL1`: T0SZ = 25 (39-bit VA, start at level 1), inner/outer write-back walks, inner
/// shareable, 4 KiB granule, TTBR1 walks disabled (EPD1), 40-bit intermediate physical
/// addresses (IPS = 0b010).
pub const TCR: u64 = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);

/// The size a level-1 block maps.
pub const BLOCK_1G: u64 = 1 << 30;
/// The size a level-2 block maps.
pub const BLOCK_2M: u64 = 1 << 21;
/// The highest address + 1 the map covers (39-bit VA).
pub const VA_LIMIT: u64 = 1 << 39;

const VALID: u64 = 1;
const TABLE: u64 = 1 << 1;
const ATTR_INDEX_SHIFT: u64 = 2;
const SH_INNER: u64 = 3 << 8;
const AF: u64 = 1 << 10;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;

/// A block descriptor (level 1 or 2) mapping `addr` with `attr`, read/write at EL1.
#[must_use]
pub const fn block(addr: u64, attr: Attr) -> u64 {
    match attr {
        Attr::Normal => addr | VALID | SH_INNER | AF,
        Attr::Device => addr | VALID | (1 << ATTR_INDEX_SHIFT) | AF | PXN | UXN,
    }
}

/// A table descriptor pointing at the next-level table at `addr`.
#[must_use]
pub const fn table(addr: u64) -> u64 {
    addr | VALID | TABLE
}

/// Why a region cannot be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The start or the size is not a multiple of the block size used.
    Misaligned {
        /// The region's start.
        addr: u64,
        /// The region's size.
        size: u64,
    },
    /// The region ends beyond [`VA_LIMIT`].
    OutOfRange {
        /// The region's start.
        addr: u64,
    },
    /// A 2 MiB region falls in a gigabyte that has no level-2 table.
    NoLevel2 {
        /// The region's start.
        addr: u64,
    },
}

/// A level-1 table and one level-2 table (for the gigabyte that needs finer blocks), as
/// plain arrays: filled by [`IdMap::map_1g`] / [`IdMap::map_2m`] and then installed.
#[repr(C, align(4096))]
#[derive(Debug)]
pub struct IdMap {
    /// The level-1 table (one entry per GiB).
    pub l1: [u64; 512],
    /// The level-2 table (one entry per 2 MiB of the gigabyte `l2_gib`).
    pub l2: [u64; 512],
    /// The gigabyte the level-2 table covers, if any.
    pub l2_gib: Option<usize>,
}

impl IdMap {
    /// An empty map.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            l1: [0; 512],
            l2: [0; 512],
            l2_gib: None,
        }
    }

    /// Maps `[addr, addr + size)` 1:1 with 1 GiB blocks.
    ///
    /// # Errors
    ///
    /// [`MapError`] if the region is not 1 GiB aligned or ends past [`VA_LIMIT`].
    pub fn map_1g(&mut self, addr: u64, size: u64, attr: Attr) -> Result<(), MapError> {
        check(addr, size, BLOCK_1G)?;
        let mut a = addr;
        while a < addr + size {
            // CAST: below VA_LIMIT, the index is below 512.
            self.l1[(a / BLOCK_1G) as usize] = block(a, attr);
            a += BLOCK_1G;
        }
        Ok(())
    }

    /// Maps every gigabyte that `[addr, addr + size)` touches 1:1 with 1 GiB blocks
    /// (rounding out to gigabytes), for regions such as a PCI host bridge's configuration
    /// space or memory window whose alignment the device tree decides.
    ///
    /// # Errors
    ///
    /// [`MapError::OutOfRange`] if the region ends past [`VA_LIMIT`].
    pub fn map_covering(&mut self, addr: u64, size: u64, attr: Attr) -> Result<(), MapError> {
        let end = addr
            .checked_add(size.max(1))
            .ok_or(MapError::OutOfRange { addr })?;
        let start = addr & !(BLOCK_1G - 1);
        let end = end
            .checked_add(BLOCK_1G - 1)
            .ok_or(MapError::OutOfRange { addr })?
            & !(BLOCK_1G - 1);
        self.map_1g(start, end - start, attr)
    }

    /// The attributes of the block that maps `addr`, if a valid block (of either level)
    /// maps it.
    #[must_use]
    pub fn attr_at(&self, addr: u64) -> Option<Attr> {
        if addr >= VA_LIMIT {
            return None;
        }
        // CAST: below VA_LIMIT, the index is below 512.
        let gib = (addr / BLOCK_1G) as usize;
        let mut d = self.l1[gib];
        if d & (VALID | TABLE) == VALID | TABLE {
            if self.l2_gib != Some(gib) {
                return None;
            }
            // CAST: the remainder is below 512.
            d = self.l2[((addr % BLOCK_1G) / BLOCK_2M) as usize];
        }
        if d & (VALID | TABLE) != VALID {
            return None;
        }
        Some(if (d >> ATTR_INDEX_SHIFT) & 7 == 1 {
            Attr::Device
        } else {
            Attr::Normal
        })
    }

    /// Gives the gigabyte containing `addr` a level-2 table; `l2_phys` is the physical
    /// address of [`IdMap::l2`]. Existing entries of the level-2 table are kept.
    ///
    /// # Errors
    ///
    /// [`MapError::OutOfRange`] past [`VA_LIMIT`].
    pub fn split_gib(&mut self, addr: u64, l2_phys: u64) -> Result<(), MapError> {
        if addr >= VA_LIMIT {
            return Err(MapError::OutOfRange { addr });
        }
        // CAST: below VA_LIMIT, the index is below 512.
        let gib = (addr / BLOCK_1G) as usize;
        self.l1[gib] = table(l2_phys);
        self.l2_gib = Some(gib);
        Ok(())
    }

    /// Maps `[addr, addr + size)` 1:1 with 2 MiB blocks, inside the gigabyte given to
    /// [`IdMap::split_gib`].
    ///
    /// # Errors
    ///
    /// [`MapError`] if the region is not 2 MiB aligned or leaves that gigabyte.
    pub fn map_2m(&mut self, addr: u64, size: u64, attr: Attr) -> Result<(), MapError> {
        check(addr, size, BLOCK_2M)?;
        let mut a = addr;
        while a < addr + size {
            // CAST: below VA_LIMIT, the quotient is below 512.
            let gib = (a / BLOCK_1G) as usize;
            if self.l2_gib != Some(gib) {
                return Err(MapError::NoLevel2 { addr: a });
            }
            // CAST: the remainder is below 512.
            self.l2[((a % BLOCK_1G) / BLOCK_2M) as usize] = block(a, attr);
            a += BLOCK_2M;
        }
        Ok(())
    }
}

impl Default for IdMap {
    fn default() -> Self {
        Self::new()
    }
}

fn check(addr: u64, size: u64, block: u64) -> Result<(), MapError> {
    if !addr.is_multiple_of(block) || !size.is_multiple_of(block) {
        return Err(MapError::Misaligned { addr, size });
    }
    match addr.checked_add(size) {
        Some(end) if end <= VA_LIMIT => Ok(()),
        _ => Err(MapError::OutOfRange { addr }),
    }
}

/// Installs `map` (TTBR0), invalidates the TLB and turns on the MMU, the data cache and the
/// instruction cache; alignment checking stays off.
///
/// # Safety
///
/// Must run once, at EL1 with the MMU off, on the boot CPU. `map` must map 1:1 (as Normal
/// memory) everything the kernel touches from now on: its image, `.bss` (stack included),
/// and `map` itself; it must stay where it is, unchanged, for as long as the MMU is on.
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
pub unsafe fn enable(map: &IdMap) {
    let base = core::ptr::from_ref(map) as u64;
    let len = core::mem::size_of::<IdMap>() as u64;
    // SAFETY: the tables were written with the MMU (and so the data cache) off. Invalidating
    // their lines by address removes any stale copy the walker could otherwise hit once it
    // walks cacheably; `dc ivac` on memory the kernel owns has no other effect. Then the
    // registers are programmed in the architecture's order (MAIR, TCR, TTBR0, TLB
    // invalidate, barriers, SCTLR), which the caller allows by the contract above.
    unsafe {
        let mut line = base;
        while line < base + len {
            core::arch::asm!("dc ivac, {}", in(reg) line, options(nostack));
            line += 64;
        }
        core::arch::asm!(
            "dsb sy",
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            "mrs {tmp}, sctlr_el1",
            // M (0), C (2), I (12) on; A (1) off.
            "orr {tmp}, {tmp}, #(1 << 0)",
            "orr {tmp}, {tmp}, #(1 << 2)",
            "orr {tmp}, {tmp}, #(1 << 12)",
            "bic {tmp}, {tmp}, #(1 << 1)",
            "msr sctlr_el1, {tmp}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) TCR,
            ttbr = in(reg) base,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}

/// Makes entries that [`IdMap`] gained after `enable` visible to the table walker: the
/// stores complete, the TLB is invalidated (it holds no invalid entries, but this keeps the
/// rule simple) and the pipeline refetches.
///
/// # Safety
///
/// The new entries must only have replaced invalid ones (no live mapping changed), and
/// `map` must be the map `enable` installed.
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
pub unsafe fn publish(map: &IdMap) {
    let _ = map;
    // SAFETY: barriers and a local TLB invalidation; by the contract no live translation
    // changes, so nothing the kernel relies on goes away.
    unsafe {
        core::arch::asm!(
            "dsb ishst",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_encode_attributes() {
        // Normal: valid block, AttrIndx 0, inner shareable, access flag.
        assert_eq!(block(0x4000_0000, Attr::Normal), 0x4000_0701);
        // Device: AttrIndx 1, access flag, never executable.
        assert_eq!(
            block(0x0900_0000, Attr::Device),
            0x0900_0405 | (1 << 53) | (1 << 54)
        );
        assert_eq!(table(0x6001_2000), 0x6001_2003);
        // TCR: T0SZ 25 and 40-bit IPS.
        assert_eq!(TCR & 0x3f, 25);
        assert_eq!((TCR >> 32) & 7, 2);
    }

    #[test]
    fn maps_gigabytes_and_two_megabyte_blocks() {
        let mut m = IdMap::new();
        m.map_1g(0x4000_0000, 2 * BLOCK_1G, Attr::Normal).unwrap();
        assert_eq!(m.l1[1], block(0x4000_0000, Attr::Normal));
        assert_eq!(m.l1[2], block(0x8000_0000, Attr::Normal));
        assert_eq!(m.l1[3], 0);
        m.split_gib(0, 0x7000_0000).unwrap();
        assert_eq!(m.l1[0], table(0x7000_0000));
        m.map_2m(0x2200_0000, BLOCK_2M, Attr::Device).unwrap();
        m.map_2m(0x3800_0000, BLOCK_2M, Attr::Normal).unwrap();
        assert_eq!(
            m.l2[0x2200_0000 / BLOCK_2M as usize],
            block(0x2200_0000, Attr::Device)
        );
        assert_eq!(
            m.l2[0x3800_0000 / BLOCK_2M as usize],
            block(0x3800_0000, Attr::Normal)
        );
        assert_eq!(m.l2.iter().filter(|&&d| d != 0).count(), 2);
    }

    #[test]
    fn covering_maps_round_out_and_attributes_read_back() {
        let mut m = IdMap::new();
        m.map_covering(0x40_1000_0000, 0x1000_0000, Attr::Device)
            .unwrap();
        m.map_covering(0x5000_0000, 0xb000_0000 + 0x1000, Attr::Normal)
            .unwrap();
        assert_eq!(m.attr_at(0x40_1fff_ffff), Some(Attr::Device));
        assert_eq!(m.attr_at(0x4000_0000), Some(Attr::Normal));
        assert_eq!(m.attr_at(0x1_3fff_ffff), Some(Attr::Normal));
        assert_eq!(m.attr_at(0x1_4000_0000), None);
        assert_eq!(m.attr_at(0), None);
        m.split_gib(0, 0x7000_0000).unwrap();
        assert_eq!(m.attr_at(0x0900_0000), None);
        m.map_2m(0x0900_0000 & !(BLOCK_2M - 1), BLOCK_2M, Attr::Device)
            .unwrap();
        assert_eq!(m.attr_at(0x0900_0000), Some(Attr::Device));
        assert_eq!(m.attr_at(VA_LIMIT), None);
        assert!(m.map_covering(VA_LIMIT - 1, 2, Attr::Normal).is_err());
        assert!(m.map_covering(u64::MAX, 1, Attr::Normal).is_err());
    }

    #[test]
    fn bad_regions_are_refused() {
        let mut m = IdMap::new();
        assert_eq!(
            m.map_1g(0x4000_1000, BLOCK_1G, Attr::Normal),
            Err(MapError::Misaligned {
                addr: 0x4000_1000,
                size: BLOCK_1G
            })
        );
        assert_eq!(
            m.map_1g(VA_LIMIT - BLOCK_1G, 2 * BLOCK_1G, Attr::Normal),
            Err(MapError::OutOfRange {
                addr: VA_LIMIT - BLOCK_1G
            })
        );
        assert_eq!(
            m.map_2m(0x2200_0000, BLOCK_2M, Attr::Device),
            Err(MapError::NoLevel2 { addr: 0x2200_0000 })
        );
        assert!(m.split_gib(VA_LIMIT, 0).is_err());
        assert_eq!(m.l1, [0; 512]);
    }
}
