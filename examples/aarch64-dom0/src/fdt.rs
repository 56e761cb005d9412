//! Just enough of a flattened device tree reader for dom0: the RAM banks Xen gave it
//! (`/memory*` nodes) and the PCI host bridge's configuration space and 32-bit memory
//! window (the `pci-host-ecam-generic` node's `reg` and `ranges`).
//!
//! Xen builds dom0's device tree with `#address-cells = <2>` and `#size-cells = <2>` at the
//! root, and copies the host bridge node from the host's tree (three address cells for PCI
//! addresses). The reader walks the structure block once per question; it never trusts an
//! offset or a length it has not checked against the blob, and answers `None` (or no
//! banks) for anything malformed. It is plain Rust, tested on the host with blobs built by
//! the tests.

/// The magic at the start of a flattened device tree (big endian).
pub const FDT_MAGIC: u32 = 0xd00d_feed;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// The most RAM banks [`Fdt::memory_banks`] reports.
pub const MAX_BANKS: usize = 8;

/// A physical address range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// The first address.
    pub base: u64,
    /// The size in bytes.
    pub size: u64,
}

impl Range {
    /// The address just past the range (saturating).
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether `[addr, addr + len)` lies inside the range.
    #[must_use]
    pub const fn contains(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.base && end <= self.end(),
            None => false,
        }
    }
}

/// RAM banks, in the order the device tree lists them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Banks {
    /// The banks; only the first `len` are meaningful.
    pub list: [Range; MAX_BANKS],
    /// How many banks there are.
    pub len: usize,
}

impl Banks {
    /// The banks as a slice.
    #[must_use]
    pub fn as_slice(&self) -> &[Range] {
        &self.list[..self.len]
    }

    /// Whether `[addr, addr + len)` lies inside one bank.
    #[must_use]
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        self.as_slice().iter().any(|b| b.contains(addr, len))
    }
}

/// What dom0 needs to know about a generic ECAM PCI host bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHost {
    /// The configuration space (ECAM), from `reg`.
    pub ecam: Range,
    /// The first bus number the ECAM covers (`bus-range`, 0 if absent).
    pub first_bus: u32,
    /// The 32-bit non-prefetchable memory window, from `ranges` (space code 0b10): the CPU
    /// address range.
    pub mem32: Range,
    /// The PCI (bus) address of the window's start.
    pub mem32_pci: u64,
}

/// A flattened device tree in memory.
#[derive(Clone, Copy, Debug)]
pub struct Fdt<'a> {
    blob: &'a [u8],
    structs: &'a [u8],
    strings: &'a [u8],
}

/// One property seen during a walk: the node's depth (the root is 1), its name, and the
/// property's name and value.
struct Prop<'a> {
    depth: usize,
    node: &'a [u8],
    name: &'a [u8],
    value: &'a [u8],
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a number of `cells` 32-bit cells (1 or 2) at cell index `at`.
fn cells(value: &[u8], at: usize, cells: usize) -> Option<u64> {
    match cells {
        1 => be32(value, at * 4).map(u64::from),
        2 => Some((u64::from(be32(value, at * 4)?) << 32) | u64::from(be32(value, at * 4 + 4)?)),
        _ => None,
    }
}

impl<'a> Fdt<'a> {
    /// Checks the header of `blob` and the bounds of its structure and strings blocks.
    #[must_use]
    pub fn new(blob: &'a [u8]) -> Option<Self> {
        if be32(blob, 0)? != FDT_MAGIC {
            return None;
        }
        let total = usize::try_from(be32(blob, 4)?).ok()?;
        let blob = blob.get(..total)?;
        let block = |off_at: usize, len_at: usize| -> Option<&'a [u8]> {
            let off = usize::try_from(be32(blob, off_at)?).ok()?;
            let len = usize::try_from(be32(blob, len_at)?).ok()?;
            blob.get(off..off.checked_add(len)?)
        };
        // off_dt_struct at 8, off_dt_strings at 12, size_dt_strings at 32, size_dt_struct
        // at 36.
        Some(Self {
            blob,
            structs: block(8, 36)?,
            strings: block(12, 32)?,
        })
    }

    /// The blob's total size.
    #[must_use]
    pub fn size(&self) -> usize {
        self.blob.len()
    }

    fn string(&self, off: usize) -> Option<&'a [u8]> {
        let s = self.strings.get(off..)?;
        let nul = s.iter().position(|&b| b == 0)?;
        Some(&s[..nul])
    }

    /// Calls `f` for every property, in order; stops early (returning `false`) on malformed
    /// input.
    fn walk(&self, mut f: impl FnMut(&Prop<'a>)) -> bool {
        let s = self.structs;
        let mut at = 0usize;
        let mut depth = 0usize;
        let mut names: [&[u8]; 8] = [&[]; 8];
        loop {
            let Some(token) = be32(s, at) else {
                return false;
            };
            at += 4;
            match token {
                FDT_BEGIN_NODE => {
                    let Some(rest) = s.get(at..) else {
                        return false;
                    };
                    let Some(nul) = rest.iter().position(|&b| b == 0) else {
                        return false;
                    };
                    if depth < names.len() {
                        names[depth] = &rest[..nul];
                    }
                    depth += 1;
                    at = (at + nul + 1 + 3) & !3;
                }
                FDT_END_NODE => {
                    let Some(d) = depth.checked_sub(1) else {
                        return false;
                    };
                    depth = d;
                }
                FDT_PROP => {
                    let (Some(len), Some(nameoff)) = (be32(s, at), be32(s, at + 4)) else {
                        return false;
                    };
                    at += 8;
                    // CAST: u32 to usize on a 64-bit (or 32-bit) target is lossless.
                    let len = len as usize;
                    let (Some(value), Some(name)) = (
                        s.get(at..at.saturating_add(len)),
                        self.string(nameoff as usize),
                    ) else {
                        return false;
                    };
                    let node = if depth == 0 {
                        &[][..]
                    } else {
                        names[(depth - 1).min(names.len() - 1)]
                    };
                    f(&Prop {
                        depth,
                        node,
                        name,
                        value,
                    });
                    at = (at + len + 3) & !3;
                }
                FDT_NOP => {}
                FDT_END => return depth == 0,
                _ => return false,
            }
        }
    }

    /// The RAM banks of every `memory` node under the root (the root's
    /// `#address-cells`/`#size-cells`, 2 and 2 by default), at most [`MAX_BANKS`].
    #[must_use]
    pub fn memory_banks(&self) -> Banks {
        let (ac, sc) = self.root_cells();
        let mut banks = Banks::default();
        let entry = ac + sc;
        self.walk(|p| {
            let is_memory = p.depth == 2
                && (p.node == b"memory" || p.node.starts_with(b"memory@"))
                && p.name == b"reg";
            if !is_memory {
                return;
            }
            let n = p.value.len() / (4 * entry);
            for i in 0..n {
                let (Some(base), Some(size)) = (
                    cells(p.value, i * entry, ac),
                    cells(p.value, i * entry + ac, sc),
                ) else {
                    continue;
                };
                if size > 0 && banks.len < MAX_BANKS {
                    banks.list[banks.len] = Range { base, size };
                    banks.len += 1;
                }
            }
        });
        banks
    }

    /// The root's `#address-cells` and `#size-cells` (2 and 2 if absent).
    fn root_cells(&self) -> (usize, usize) {
        let (mut ac, mut sc) = (2, 2);
        self.walk(|p| {
            if p.depth == 1 {
                let v = be32(p.value, 0).map(|v| v as usize);
                match (p.name, v) {
                    (b"#address-cells", Some(v)) => ac = v,
                    (b"#size-cells", Some(v)) => sc = v,
                    _ => {}
                }
            }
        });
        (ac, sc)
    }

    /// Calls `f` with the register range of every `virtio_mmio@...` node under the root
    /// whose `compatible` is `virtio,mmio`, in the tree's order.
    pub fn virtio_mmio(&self, mut f: impl FnMut(Range)) {
        let (ac, sc) = self.root_cells();
        let mut current: &[u8] = &[];
        let (mut compatible, mut reg, mut done) = (false, None, false);
        self.walk(|p| {
            if p.depth != 2 || !p.node.starts_with(b"virtio_mmio@") {
                return;
            }
            if p.node != current {
                current = p.node;
                (compatible, reg, done) = (false, None, false);
            }
            match p.name {
                b"compatible" => {
                    compatible = p.value.split(|&b| b == 0).any(|c| c == b"virtio,mmio");
                }
                b"reg" => {
                    reg = cells(p.value, 0, ac)
                        .zip(cells(p.value, ac, sc))
                        .map(|(base, size)| Range { base, size });
                }
                _ => {}
            }
            if let (true, Some(r), false) = (compatible, reg, done) {
                done = true;
                f(r);
            }
        });
    }

    /// The first PCI host bridge under the root whose node is named `pcie@...` and whose
    /// `compatible` is `pci-host-ecam-generic`, with a 32-bit memory window.
    #[must_use]
    pub fn pci_host(&self) -> Option<PciHost> {
        let (ac, sc) = self.root_cells();
        let mut current: &[u8] = &[];
        let mut generic = false;
        let mut reg = None;
        let mut ranges: Option<&[u8]> = None;
        let mut first_bus = 0;
        let mut found = None;
        self.walk(|p| {
            if found.is_some() || p.depth != 2 || !p.node.starts_with(b"pcie@") {
                return;
            }
            if p.node != current {
                current = p.node;
                generic = false;
                reg = None;
                ranges = None;
                first_bus = 0;
            }
            match p.name {
                b"compatible" => {
                    generic = p
                        .value
                        .split(|&b| b == 0)
                        .any(|c| c == b"pci-host-ecam-generic");
                }
                b"reg" => {
                    reg = cells(p.value, 0, ac)
                        .zip(cells(p.value, ac, sc))
                        .map(|(base, size)| Range { base, size });
                }
                b"ranges" => ranges = Some(p.value),
                b"bus-range" => first_bus = be32(p.value, 0).unwrap_or(0),
                _ => {}
            }
            if let (true, Some(ecam), Some(r)) = (generic, reg, ranges) {
                // Each entry: 3 PCI address cells (space code, high, low), the parent's
                // address cells, the size cells.
                let entry = 3 + ac + sc;
                for i in 0..r.len() / (4 * entry) {
                    let e = i * entry;
                    let (Some(space), Some(pci), Some(cpu), Some(size)) = (
                        be32(r, e * 4),
                        cells(r, e + 1, 2),
                        cells(r, e + 3, ac),
                        cells(r, e + 3 + ac, sc),
                    ) else {
                        continue;
                    };
                    // ss = 0b10: 32-bit memory space.
                    if (space >> 24) & 3 == 2 {
                        found = Some(PciHost {
                            ecam,
                            first_bus,
                            mem32: Range { base: cpu, size },
                            mem32_pci: pci,
                        });
                        return;
                    }
                }
            }
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a device tree blob from a list of tokens.
    enum T<'a> {
        Begin(&'a str),
        End,
        Prop(&'a str, Vec<u8>),
    }

    fn cells_be(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    fn blob(tokens: &[T<'_>]) -> Vec<u8> {
        let mut structs = Vec::new();
        let mut strings: Vec<u8> = Vec::new();
        let pad = |v: &mut Vec<u8>| {
            while !v.len().is_multiple_of(4) {
                v.push(0);
            }
        };
        for t in tokens {
            match t {
                T::Begin(name) => {
                    structs.extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
                    structs.extend_from_slice(name.as_bytes());
                    structs.push(0);
                    pad(&mut structs);
                }
                T::End => structs.extend_from_slice(&FDT_END_NODE.to_be_bytes()),
                T::Prop(name, value) => {
                    let off = strings.len() as u32;
                    strings.extend_from_slice(name.as_bytes());
                    strings.push(0);
                    structs.extend_from_slice(&FDT_PROP.to_be_bytes());
                    structs.extend_from_slice(&(value.len() as u32).to_be_bytes());
                    structs.extend_from_slice(&off.to_be_bytes());
                    structs.extend_from_slice(value);
                    pad(&mut structs);
                }
            }
        }
        structs.extend_from_slice(&FDT_END.to_be_bytes());
        let header = 40u32;
        let off_struct = header;
        let off_strings = header + structs.len() as u32;
        let total = off_strings + strings.len() as u32;
        let mut out = Vec::new();
        for v in [
            FDT_MAGIC,
            total,
            off_struct,
            off_strings,
            0,
            17,
            16,
            0,
            strings.len() as u32,
            structs.len() as u32,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&structs);
        out.extend_from_slice(&strings);
        out
    }

    fn dom0_tree() -> Vec<u8> {
        blob(&[
            T::Begin(""),
            T::Prop("#address-cells", cells_be(&[2])),
            T::Prop("#size-cells", cells_be(&[2])),
            T::Begin("chosen"),
            T::Prop("bootargs", b"dom0\0".to_vec()),
            T::End,
            T::Begin("memory@50000000"),
            T::Prop("device_type", b"memory\0".to_vec()),
            T::Prop(
                "reg",
                cells_be(&[
                    0,
                    0x5000_0000,
                    0,
                    0xb000_0000,
                    1,
                    0x6000_0000,
                    0,
                    0x1000_0000,
                ]),
            ),
            T::End,
            T::Begin("pcie@10000000"),
            T::Prop("compatible", b"pci-host-ecam-generic\0".to_vec()),
            T::Prop("bus-range", cells_be(&[0, 0xff])),
            T::Prop(
                "ranges",
                cells_be(&[
                    0x0100_0000,
                    0,
                    0,
                    0,
                    0x3eff_0000,
                    0,
                    0x1_0000, // I/O
                    0x0200_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x2eff_0000, // mem32
                    0x0300_0000,
                    0x80,
                    0,
                    0x80,
                    0,
                    0x80,
                    0, // mem64
                ]),
            ),
            T::Prop("reg", cells_be(&[0x40, 0x1000_0000, 0, 0x1000_0000])),
            T::Begin("child@0"),
            T::Prop("reg", cells_be(&[1, 2, 3, 4])),
            T::End,
            T::End,
            // QEMU's order: reg before compatible.
            T::Begin("virtio_mmio@a000000"),
            T::Prop("dma-coherent", Vec::new()),
            T::Prop("reg", cells_be(&[0, 0x0a00_0000, 0, 0x200])),
            T::Prop("compatible", b"virtio,mmio\0".to_vec()),
            T::End,
            // Not a virtio transport by its compatible.
            T::Begin("virtio_mmio@a000200"),
            T::Prop("compatible", b"other\0".to_vec()),
            T::Prop("reg", cells_be(&[0, 0x0a00_0200, 0, 0x200])),
            T::End,
            T::Begin("virtio_mmio@a000400"),
            T::Prop("compatible", b"virtio,mmio\0".to_vec()),
            T::Prop("reg", cells_be(&[0, 0x0a00_0400, 0, 0x200])),
            T::Prop("interrupts", cells_be(&[0, 0x12, 1])),
            T::End,
            T::End,
        ])
    }

    #[test]
    fn lists_the_virtio_mmio_transports_once_each() {
        let b = dom0_tree();
        let fdt = Fdt::new(&b).unwrap();
        let mut found = Vec::new();
        fdt.virtio_mmio(|r| found.push(r));
        assert_eq!(
            found,
            [
                Range {
                    base: 0x0a00_0000,
                    size: 0x200
                },
                Range {
                    base: 0x0a00_0400,
                    size: 0x200
                }
            ]
        );
    }

    #[test]
    fn reads_banks_and_the_host_bridge() {
        let b = dom0_tree();
        let fdt = Fdt::new(&b).unwrap();
        assert_eq!(fdt.size(), b.len());
        let banks = fdt.memory_banks();
        assert_eq!(
            banks.as_slice(),
            &[
                Range {
                    base: 0x5000_0000,
                    size: 0xb000_0000
                },
                Range {
                    base: 0x1_6000_0000,
                    size: 0x1000_0000
                }
            ]
        );
        assert!(banks.contains(0x1_6000_0000, 0x1000));
        assert!(!banks.contains(0xffff_f000, 0x2000));
        assert_eq!(
            fdt.pci_host(),
            Some(PciHost {
                ecam: Range {
                    base: 0x40_1000_0000,
                    size: 0x1000_0000
                },
                first_bus: 0,
                mem32: Range {
                    base: 0x1000_0000,
                    size: 0x2eff_0000
                },
                mem32_pci: 0x1000_0000,
            })
        );
    }

    #[test]
    fn malformed_blobs_give_nothing() {
        let mut b = dom0_tree();
        assert!(Fdt::new(&b[..30]).is_none());
        b[0] = 0;
        assert!(Fdt::new(&b).is_none());
        let mut b = dom0_tree();
        // An unknown token in the structure block stops the walk.
        b[40..44].copy_from_slice(&7u32.to_be_bytes());
        let fdt = Fdt::new(&b).unwrap();
        assert_eq!(fdt.memory_banks().len, 0);
        assert_eq!(fdt.pci_host(), None);
        let none = blob(&[T::Begin(""), T::End]);
        let fdt = Fdt::new(&none).unwrap();
        assert_eq!(fdt.memory_banks().len, 0);
        assert_eq!(fdt.pci_host(), None);
    }
}
