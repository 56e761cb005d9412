//! The P2M entry encodings of Linux's x86 PV code and the pure translation rules over the
//! kernel's P2M and Xen's M2P tables.
//!
//! Both tables are arrays of 64-bit words given by the kernel: the P2M (indexed by pfn, the
//! list `start_info.mfn_list` points at, written by the kernel) and the M2P (indexed by mfn,
//! mapped read-only by Xen at `MACH2PHYS_VIRT_START`, written by Xen). This module only
//! reads them.

// `core`'s atomics, or loom's under `--cfg loom` (the platform's loom models).
use swiotlb_core::lock::atomic::{AtomicU64, Ordering};

/// `INVALID_P2M_ENTRY`: the pfn has no machine frame.
pub const INVALID_P2M_ENTRY: u64 = !0;
/// `FOREIGN_FRAME_BIT`: the frame belongs to another domain (grant-mapped).
pub const FOREIGN_FRAME_BIT: u64 = 1 << 63;
/// `IDENTITY_FRAME_BIT`: a 1:1 region (PCI hole, E820 gaps) where mfn = pfn.
pub const IDENTITY_FRAME_BIT: u64 = 1 << 62;
/// The M2P value of a frame no guest owns (Xen's `INVALID_M2P_ENTRY`).
pub const INVALID_M2P_ENTRY: u64 = !0;

/// `FOREIGN_FRAME(mfn)`: the P2M entry of a grant-mapped frame of another domain.
#[must_use]
pub const fn foreign_frame(mfn: u64) -> u64 {
    mfn | FOREIGN_FRAME_BIT
}

/// `IDENTITY_FRAME(pfn)`: the P2M entry of a 1:1 frame.
#[must_use]
pub const fn identity_frame(pfn: u64) -> u64 {
    pfn | IDENTITY_FRAME_BIT
}

/// A decoded P2M entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2mEntry {
    /// `INVALID_P2M_ENTRY`: no machine frame (ballooned out, or zapped).
    Invalid,
    /// The domain's own machine frame.
    Local(u64),
    /// A frame of another domain, grant-mapped at this pfn (FOREIGN bit set).
    Foreign(u64),
    /// A 1:1 frame (IDENTITY bit set): the machine frame is the value without the bit.
    Identity(u64),
}

impl P2mEntry {
    /// Decodes a raw P2M word as Linux's `pfn_to_mfn` does. INVALID is tested first, so an
    /// all-ones word is never read as a foreign or identity frame.
    #[must_use]
    pub const fn decode(raw: u64) -> Self {
        if raw == INVALID_P2M_ENTRY {
            Self::Invalid
        } else if raw & FOREIGN_FRAME_BIT != 0 {
            Self::Foreign(raw & !(FOREIGN_FRAME_BIT | IDENTITY_FRAME_BIT))
        } else if raw & IDENTITY_FRAME_BIT != 0 {
            Self::Identity(raw & !IDENTITY_FRAME_BIT)
        } else {
            Self::Local(raw)
        }
    }

    /// The machine frame a device uses (`pfn_to_mfn`: both marker bits stripped), or `None`
    /// for an invalid entry.
    #[must_use]
    pub const fn mfn(self) -> Option<u64> {
        match self {
            Self::Invalid => None,
            Self::Local(m) | Self::Foreign(m) | Self::Identity(m) => Some(m),
        }
    }
}

/// Linux's `__pfn_to_mfn`: the raw P2M word of `pfn`. A pfn beyond the P2M is an identity
/// frame (`IDENTITY_FRAME(pfn)`), as Linux treats the space above the domain's memory.
#[must_use]
pub fn raw_entry(p2m: &[AtomicU64], pfn: u64) -> u64 {
    match usize::try_from(pfn).ok().and_then(|i| p2m.get(i)) {
        Some(e) => e.load(Ordering::Acquire),
        None => identity_frame(pfn),
    }
}

/// Linux's `pfn_to_mfn` (= `pfn_to_bfn` for PV): the machine frame of `pfn` with the
/// FOREIGN and IDENTITY bits stripped, `None` for an invalid entry.
#[must_use]
pub fn pfn_to_mfn(p2m: &[AtomicU64], pfn: u64) -> Option<u64> {
    P2mEntry::decode(raw_entry(p2m, pfn)).mfn()
}

/// Linux's `bfn_to_local_pfn`: the M2P read with the round-trip check. Returns the pfn only
/// if the M2P names it **and** the P2M entry of that pfn is exactly `mfn` (no FOREIGN or
/// IDENTITY bit), so foreign, identity, unowned and out-of-range frames give `None`.
#[must_use]
pub fn mfn_to_local_pfn(p2m: &[AtomicU64], m2p: &[AtomicU64], mfn: u64) -> Option<u64> {
    let pfn = usize::try_from(mfn)
        .ok()
        .and_then(|i| m2p.get(i))?
        .load(Ordering::Acquire);
    if pfn == INVALID_M2P_ENTRY {
        return None;
    }
    (raw_entry(p2m, pfn) == mfn).then_some(pfn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(v: &[u64]) -> [AtomicU64; 8] {
        core::array::from_fn(|i| AtomicU64::new(v.get(i).copied().unwrap_or(INVALID_P2M_ENTRY)))
    }

    #[test]
    fn encodings_match_linux() {
        assert_eq!(INVALID_P2M_ENTRY, 0xffff_ffff_ffff_ffff);
        assert_eq!(FOREIGN_FRAME_BIT, 0x8000_0000_0000_0000);
        assert_eq!(IDENTITY_FRAME_BIT, 0x4000_0000_0000_0000);
        assert_eq!(P2mEntry::decode(!0), P2mEntry::Invalid);
        assert_eq!(P2mEntry::decode(0x1234), P2mEntry::Local(0x1234));
        assert_eq!(
            P2mEntry::decode(foreign_frame(0x99)),
            P2mEntry::Foreign(0x99)
        );
        assert_eq!(
            P2mEntry::decode(identity_frame(0xa0)),
            P2mEntry::Identity(0xa0)
        );
        assert_eq!(P2mEntry::decode(identity_frame(0xa0)).mfn(), Some(0xa0));
        assert_eq!(P2mEntry::Invalid.mfn(), None);
        // Both bits: Linux strips both for pfn_to_mfn.
        assert_eq!(
            P2mEntry::decode(FOREIGN_FRAME_BIT | IDENTITY_FRAME_BIT | 5),
            P2mEntry::Foreign(5)
        );
    }

    #[test]
    fn pfn_to_mfn_handles_every_encoding_and_the_end_of_the_table() {
        let p2m = table(&[100, !0, foreign_frame(300), identity_frame(3)]);
        assert_eq!(pfn_to_mfn(&p2m, 0), Some(100));
        assert_eq!(pfn_to_mfn(&p2m, 1), None);
        assert_eq!(pfn_to_mfn(&p2m, 2), Some(300));
        assert_eq!(pfn_to_mfn(&p2m, 3), Some(3));
        assert_eq!(
            pfn_to_mfn(&p2m, 1000),
            Some(1000),
            "beyond the P2M is identity"
        );
        assert_eq!(raw_entry(&p2m, 1000), identity_frame(1000));
    }

    #[test]
    fn m2p_round_trip_rejects_foreign_identity_and_stale_frames() {
        let p2m = table(&[5, 6, foreign_frame(7), identity_frame(3), 2]);
        // m2p[mfn] = pfn.
        let m2p = table(&[!0, !0, 4, 3, !0, 0, 0, 2]);
        assert_eq!(mfn_to_local_pfn(&p2m, &m2p, 5), Some(0));
        assert_eq!(mfn_to_local_pfn(&p2m, &m2p, 2), Some(4));
        // M2P says pfn 0, but the P2M of pfn 0 is 5: a stale M2P entry.
        assert_eq!(mfn_to_local_pfn(&p2m, &m2p, 6), None);
        // Foreign: the P2M entry carries the FOREIGN bit.
        assert_eq!(mfn_to_local_pfn(&p2m, &m2p, 7), None);
        // Identity: rejected as Linux's bfn_to_local_pfn does.
        assert_eq!(mfn_to_local_pfn(&p2m, &m2p, 3), None);
        // INVALID M2P and beyond the M2P.
        assert_eq!(mfn_to_local_pfn(&p2m, &m2p, 0), None);
        assert_eq!(mfn_to_local_pfn(&p2m, &m2p, 1 << 40), None);
        assert_eq!(mfn_to_local_pfn(&p2m, &m2p, u64::MAX), None);
    }
}
