//! Hypercalls of the pool's Xen fixup, counted by the simulator.
//!
//! [`linux_fixup`] runs Linux's `xen_swiotlb_fixup` scheme (`reference/linux-swiotlb-xen.md`
//! §2.5) with this project's x86 PV platform on `xen-sim`: one `XENMEM_exchange` per
//! 256 KiB segment (`Platform::create_contiguous_region` of order 6, the call the facade
//! makes), address bits starting at 18 and rising by one on each failure, never reset
//! between segments, up to 32, each segment zapped and remapped page by page in multicalls
//! of 32 `update_va_mapping` entries (the platform's path for a kernel that does not locate
//! its PTEs, [`xen_sim::Domain::without_pte_addresses`]). The simulator counts
//! every trap (a multicall is one trap however many entries it carries), so the count
//! includes the failed attempts, the zap and remap multicalls and the exchanges, as on a
//! real machine.
//!
//! The facade's own pool initialisation ([`crate::sim::facade_fixup`]) is measured on the
//! same machine with the same counters, so both figures count the same thing.

use std::sync::atomic::Ordering;

use swiotlb_core::{PhysAddr, Platform};
use swiotlb_xen_x86_pv::{X86PvPlatform, p2m};
use xen_sim::{Counters, PvGuest, SimConfig, SimOp, Xen};

/// Bytes of the pool both fixups make contiguous: 32 MiB, half of dom0 on the default
/// machine, more than its low memory below 2^25 (so the address bits must rise).
pub const FIXUP_POOL_BYTES: u64 = 32 << 20;

/// Bytes of one segment (128 slots of 2 KiB).
pub const SEGMENT_BYTES: u64 = 256 << 10;
/// The order of one segment in 4 KiB pages.
pub const SEGMENT_ORDER: u32 = 6;
/// The widest address Linux's fixup tries.
pub const MAX_DMA_BITS: u32 = 32;

/// Where a fixup's pool lies in dom0's pseudo-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolAlign {
    /// Aligned to its size rounded up to a power of two, as the facade's docs advise: the
    /// facade can then make it contiguous in chunks as large as it allows.
    Natural,
    /// Aligned to one segment (256 KiB) and to nothing larger: Linux's pool, which Linux's
    /// fixup needs aligned only to the segment each `XENMEM_exchange` replaces.
    SegmentOnly,
}

/// Allocates `bytes` (a whole number of pages) of dom0 memory on `g` placed as `align`
/// says. [`PoolAlign::SegmentOnly`] takes one segment more than it returns: the pool starts
/// one segment into a range aligned to two, so its address is an odd multiple of 256 KiB.
///
/// # Panics
///
/// When dom0 has no such range left.
#[must_use]
pub fn alloc_pool(g: &PvGuest, bytes: u64, align: PoolAlign) -> PhysAddr {
    let pages = bytes / 4096;
    let seg_pages = SEGMENT_BYTES / 4096;
    match align {
        PoolAlign::Natural => g.alloc_aligned(pages, pages.next_power_of_two()),
        PoolAlign::SegmentOnly => {
            let p = g.alloc_aligned(pages + seg_pages, 2 * seg_pages);
            PhysAddr::new(p.as_u64() + SEGMENT_BYTES)
        }
    }
}

/// The largest power of two that divides `phys` (`2^63` for address zero).
#[must_use]
pub fn alignment_of(phys: PhysAddr) -> u64 {
    1u64 << phys.as_u64().trailing_zeros().min(63)
}

/// What a fixup cost, from the simulator's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FixupCount {
    /// Where the pool was.
    pub pool: PhysAddr,
    /// Bytes of pool made contiguous.
    pub bytes: u64,
    /// Hypercall traps (entries into the hypervisor).
    pub traps: u64,
    /// `XENMEM_exchange` calls, failed ones included.
    pub exchanges: u64,
    /// Multicalls (the batches of page-table updates that zap and remap the region).
    pub multicalls: u64,
    /// The widest address bits used.
    pub max_bits: u32,
}

impl FixupCount {
    /// The counts of `c` (taken after a reset before the fixup) for `bytes` of pool at
    /// `pool`.
    #[must_use]
    pub fn from_counters(c: &Counters, pool: PhysAddr, bytes: u64, max_bits: u32) -> Self {
        Self {
            pool,
            bytes,
            traps: c.traps(),
            exchanges: c.count(SimOp::MemoryExchange),
            multicalls: c.count(SimOp::Multicall),
            max_bits,
        }
    }

    /// Hypercall traps per MiB of pool.
    #[must_use]
    pub fn traps_per_mib(&self) -> f64 {
        per_mib(self.traps, self.bytes)
    }

    /// `XENMEM_exchange` calls per MiB of pool.
    #[must_use]
    pub fn exchanges_per_mib(&self) -> f64 {
        per_mib(self.exchanges, self.bytes)
    }
}

fn per_mib(n: u64, bytes: u64) -> f64 {
    if bytes == 0 {
        return 0.0;
    }
    // CAST: counts and sizes stay far below 2^53.
    n as f64 * f64::from(1u32 << 20) / bytes as f64
}

/// The x86 PV machine both fixups run on: the simulator's default (64 MiB of machine memory
/// at 16 MiB and 64 MiB at 4 GiB, a 64 MiB dom0 scattered over both), so that low memory is
/// scarce as on a real host and the address bits have to rise.
#[must_use]
pub fn machine() -> (Xen, PvGuest) {
    let xen = Xen::new(SimConfig::x86_pv());
    let g = xen.pv_guest();
    (xen, g)
}

/// Why a fixup failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FixupError {
    /// The region is not a whole number of segments.
    #[error("{bytes:#x} bytes is not a whole number of 256 KiB segments")]
    Size {
        /// The size asked for.
        bytes: u64,
    },
    /// A segment could not be made contiguous even below 2^32.
    #[error("segment at {phys} failed at every address width up to 32 bits: {error}")]
    Segment {
        /// The segment.
        phys: PhysAddr,
        /// The last error.
        error: String,
    },
}

/// Runs Linux's fixup on the `bytes` (a multiple of 256 KiB) of dom0 memory at `phys` and
/// returns what it cost. The counters are reset first.
///
/// # Errors
///
/// [`FixupError`] as Linux's fixup fails (it would then halve the pool).
///
/// # Safety
///
/// The region is dom0's (from `g.alloc_*`) and used by nothing else.
pub unsafe fn linux_fixup(
    xen: &Xen,
    g: &PvGuest,
    phys: PhysAddr,
    bytes: u64,
) -> Result<FixupCount, FixupError> {
    if bytes == 0 || !bytes.is_multiple_of(SEGMENT_BYTES) {
        return Err(FixupError::Size { bytes });
    }
    // Linux changes each mapping by virtual address (multicalls of `update_va_mapping`):
    // the domain does not tell the platform where its PTEs are.
    let dom0 = xen.dom0().without_pte_addresses();
    // SAFETY: the simulator's P2M, M2P, linear map and memory of dom0, and dom0's
    // hypercalls; only the caller's region is changed.
    let pv = unsafe { X86PvPlatform::new(g.p2m(), g.m2p(), g.linear_base(), dom0, g.memory()) };
    xen.reset_counters();
    let mut dma_bits = SEGMENT_ORDER + 12;
    let mut off = 0;
    while off < bytes {
        let seg = PhysAddr::new(phys.as_u64() + off);
        loop {
            // SAFETY: the segment is the caller's, used by nothing else.
            match unsafe { pv.create_contiguous_region(seg, SEGMENT_ORDER, dma_bits) } {
                Ok(_) => break,
                Err(e) if dma_bits >= MAX_DMA_BITS => {
                    return Err(FixupError::Segment {
                        phys: seg,
                        error: e.to_string(),
                    });
                }
                Err(_) => dma_bits += 1,
            }
        }
        off += SEGMENT_BYTES;
    }
    Ok(FixupCount::from_counters(
        &xen.counters(),
        phys,
        bytes,
        dma_bits,
    ))
}

/// Whether every 4 KiB frame of `bytes` at `phys` is dom0's own, in one machine-contiguous
/// run per 256 KiB segment, below `2^bits`.
#[must_use]
pub fn segments_contiguous_below(g: &PvGuest, phys: PhysAddr, bytes: u64, bits: u32) -> bool {
    let pages = bytes / 4096;
    let first = phys.as_u64() / 4096;
    let mfn = |i: u64| {
        g.p2m()
            .get(usize::try_from(first + i).ok()?)
            .map(|e| e.load(Ordering::Relaxed))
            .and_then(|e| match p2m::P2mEntry::decode(e) {
                p2m::P2mEntry::Local(m) => Some(m),
                _ => None,
            })
    };
    (0..pages).all(|i| {
        let Some(m) = mfn(i) else { return false };
        let below = (m + 1) * 4096 <= 1u64 << bits;
        let contiguous = i % 64 == 0 || mfn(i - 1).is_some_and(|p| p + 1 == m);
        below && contiguous
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_scheme_counts_one_exchange_per_segment_at_least() {
        let (xen, g) = machine();
        let bytes = 4 << 20;
        let phys = g.alloc_aligned(bytes / 4096, 64);
        // SAFETY: freshly allocated dom0 pages.
        let c = unsafe { linux_fixup(&xen, &g, phys, bytes) }.unwrap();
        assert!(segments_contiguous_below(&g, phys, bytes, c.max_bits));
        xen.check_invariants().unwrap();
        // 16 segments: at least one exchange each, plus the failed widths (at least the
        // ones below the machine's lowest frame at 16 MiB, 2^24).
        assert!(c.exchanges >= 16 + (24 - 18), "{c:?}");
        assert!(c.traps > c.exchanges, "{c:?}");
        assert!(c.max_bits > 24 && c.max_bits <= 32, "{c:?}");
        assert!((c.exchanges_per_mib() - c.exchanges as f64 / 4.0).abs() < 1e-9);
        // SAFETY: refused before any page is touched.
        let odd = unsafe { linux_fixup(&xen, &g, phys, 1000) };
        assert_eq!(odd, Err(FixupError::Size { bytes: 1000 }));
    }

    #[test]
    fn pools_are_placed_as_asked() {
        let (_, g) = machine();
        let bytes = 4 << 20;
        for _ in 0..3 {
            let p = alloc_pool(&g, bytes, PoolAlign::SegmentOnly);
            assert_eq!(alignment_of(p), SEGMENT_BYTES, "{p}");
            let n = alloc_pool(&g, bytes, PoolAlign::Natural);
            assert!(alignment_of(n) >= bytes, "{n}");
            // Disjoint, in dom0's memory.
            assert!(n.as_u64() >= p.as_u64() + bytes, "{p} {n}");
        }
        assert_eq!(alignment_of(PhysAddr::new(0x4_0000)), 0x4_0000);
        assert_eq!(alignment_of(PhysAddr::new(0)), 1 << 63);
    }
}
