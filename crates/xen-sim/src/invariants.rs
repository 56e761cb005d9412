//! The invariant checker: what Xen guarantees and what a correct PV guest keeps true.

use std::sync::atomic::Ordering;

use xen_abi::DomId;

use crate::Inner;
use crate::config::SimArch;
use crate::machine::{DOM0, DOMU, HostMap, INVALID, OWNER_FREE, PTE_MFN_MASK, PTE_PRESENT};

/// `FOREIGN_FRAME_BIT` of a P2M entry.
pub const P2M_FOREIGN_BIT: u64 = 1 << 63;
/// `IDENTITY_FRAME_BIT` of a P2M entry.
pub const P2M_IDENTITY_BIT: u64 = 1 << 62;

/// A broken invariant, with the values involved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// A domain owns a different number of frames than it did at boot (exchanges conserve
    /// them), or the free count does not make up the machine's total.
    #[error("frame count: domain {dom} owns {owned} frames, expected {expected}")]
    FrameCount {
        /// The domain (`0x7ff2` = DOMID_XEN for the free-frame check).
        dom: DomId,
        /// Frames counted.
        owned: u64,
        /// Frames expected.
        expected: u64,
    },
    /// A P2M entry names a frame the domain does not own.
    #[error("P2M[{pfn:#x}] = {mfn:#x}, a frame owned by {owner:?}, not domain {dom}")]
    P2mNotOwned {
        /// The domain.
        dom: DomId,
        /// The pfn.
        pfn: u64,
        /// The entry.
        mfn: u64,
        /// The frame's owner (`None`: free or not RAM).
        owner: Option<DomId>,
    },
    /// Two pfns of a P2M name the same frame.
    #[error("P2M[{pfn_a:#x}] and P2M[{pfn_b:#x}] both name mfn {mfn:#x}")]
    P2mDuplicate {
        /// The frame.
        mfn: u64,
        /// The first pfn.
        pfn_a: u64,
        /// The second pfn.
        pfn_b: u64,
    },
    /// `p2m[pfn] = mfn` but `m2p[mfn] != pfn`.
    #[error("P2M[{pfn:#x}] = {mfn:#x} but M2P[{mfn:#x}] = {m2p:#x}")]
    M2pMismatch {
        /// The pfn.
        pfn: u64,
        /// The frame.
        mfn: u64,
        /// What the M2P says.
        m2p: u64,
    },
    /// The M2P of a frame no guest owns is not INVALID.
    #[error("M2P[{mfn:#x}] = {m2p:#x} for a free frame")]
    M2pOfFreeFrame {
        /// The frame.
        mfn: u64,
        /// What the M2P says.
        m2p: u64,
    },
    /// A present PTE points at a frame that is neither dom0's nor a grant dom0 mapped.
    #[error("PTE of pfn {pfn:#x} = {pte:#x} points at a frame dom0 may not map")]
    PteNotOwned {
        /// The linear-map pfn.
        pfn: u64,
        /// The PTE.
        pte: u64,
    },
    /// A P2M entry is valid but the linear map does not map that frame at the pfn's va.
    #[error("P2M[{pfn:#x}] = {p2m:#x} but the PTE is {pte:#x}")]
    PteP2mMismatch {
        /// The pfn.
        pfn: u64,
        /// The P2M entry.
        p2m: u64,
        /// The PTE.
        pte: u64,
    },
    /// A zapped page (PTE not present) whose P2M entry is not INVALID.
    #[error("pfn {pfn:#x} is zapped but P2M says {p2m:#x}")]
    ZappedNotInvalid {
        /// The pfn.
        pfn: u64,
        /// The P2M entry.
        p2m: u64,
    },
    /// A FOREIGN P2M entry without a grant mapping of that frame.
    #[error("P2M[{pfn:#x}] = FOREIGN({mfn:#x}) but dom0 maps no grant of that frame")]
    ForeignNotMapped {
        /// The pfn.
        pfn: u64,
        /// The frame.
        mfn: u64,
    },
    /// The simulator's reference counts disagree with the page table (a simulator bug).
    #[error("mfn {mfn:#x}: {counted} PTEs map it but {recorded} were recorded")]
    MapCount {
        /// The frame.
        mfn: u64,
        /// PTEs found.
        counted: u32,
        /// Count kept.
        recorded: u32,
    },
    /// A grant mapping whose frame no longer belongs to the granting domain.
    #[error("grant mapping {handle} of domain {dom}: mfn {mfn:#x} no longer owned by its granter")]
    StaleGrantMapping {
        /// The mapping domain.
        dom: DomId,
        /// The handle.
        handle: usize,
        /// The frame.
        mfn: u64,
    },
}

impl Inner {
    /// Checks every invariant; the first violation found is returned.
    pub(crate) fn check(&self) -> Result<(), Violation> {
        let st = self.lock();
        let total = st.layout.total();
        // Frame counts per domain.
        let mut owned = vec![0u64; st.doms.len()];
        let mut free = 0u64;
        let mut other = 0u64;
        for &o in &st.owner {
            match st.dom_index(o) {
                Some(d) => owned[d] += 1,
                None if o == OWNER_FREE => free += 1,
                None => other += 1,
            }
        }
        for (d, (&n, &e)) in owned.iter().zip(&st.expected_owned).enumerate() {
            if n != e {
                return Err(Violation::FrameCount {
                    dom: DomId::try_from(d).unwrap_or(DomId::MAX),
                    owned: n,
                    expected: e,
                });
            }
        }
        let sum = free + other + owned.iter().sum::<u64>();
        if sum != st.total_frames {
            return Err(Violation::FrameCount {
                dom: xen_abi::DOMID_XEN,
                owned: sum,
                expected: st.total_frames,
            });
        }
        // Grant mappings still refer to frames their granter owns.
        for (d, dom) in st.doms.iter().enumerate() {
            for (handle, m) in dom.maptrack.iter().enumerate() {
                let Some(m) = m else { continue };
                let ok = st
                    .layout
                    .index(m.mfn)
                    .is_some_and(|i| st.owner[i] == m.granter);
                let host_ok = match m.host {
                    HostMap::Stage2(ipa) => st.stage2.get(&ipa) == Some(&m.mfn),
                    _ => true,
                };
                if !ok || !host_ok {
                    return Err(Violation::StaleGrantMapping {
                        dom: DomId::try_from(d).unwrap_or(DomId::MAX),
                        handle,
                        mfn: m.mfn,
                    });
                }
            }
        }
        if st.arch != SimArch::X86Pv {
            return Ok(());
        }
        let m2p = |mfn: u64| {
            usize::try_from(mfn)
                .ok()
                .and_then(|i| self.m2p.get(i))
                .map_or(INVALID, |a| a.load(Ordering::Relaxed))
        };
        // The M2P of free frames is INVALID.
        for idx in 0..total {
            if st.owner[idx] == OWNER_FREE {
                let mfn = st.layout.mfn(idx);
                let v = m2p(mfn);
                if v != INVALID {
                    return Err(Violation::M2pOfFreeFrame { mfn, m2p: v });
                }
            }
        }
        // dom0: P2M, M2P and page table.
        let mut seen: Vec<u64> = vec![INVALID; total];
        let mut counted = vec![0u32; total];
        for (pfn_us, (entry, &pte)) in self.p2m.iter().zip(&st.pte).enumerate() {
            // CAST: usize fits u64.
            let pfn = pfn_us as u64;
            let e = entry.load(Ordering::Relaxed);
            let present = pte & PTE_PRESENT != 0;
            let pte_mfn = (pte & PTE_MFN_MASK) >> 12;
            if present {
                let Some(idx) = st.layout.index(pte_mfn) else {
                    return Err(Violation::PteNotOwned { pfn, pte });
                };
                counted[idx] += 1;
                if st.owner[idx] != DOM0 && st.mapped_grant(0, pte_mfn).is_none() {
                    return Err(Violation::PteNotOwned { pfn, pte });
                }
            } else if e != INVALID {
                return Err(Violation::ZappedNotInvalid { pfn, p2m: e });
            }
            if e == INVALID || e & P2M_IDENTITY_BIT != 0 && e & P2M_FOREIGN_BIT == 0 {
                continue;
            }
            if e & P2M_FOREIGN_BIT != 0 {
                let mfn = e & !(P2M_FOREIGN_BIT | P2M_IDENTITY_BIT);
                if st.mapped_grant(0, mfn).is_none() {
                    return Err(Violation::ForeignNotMapped { pfn, mfn });
                }
                if pte_mfn != mfn {
                    return Err(Violation::PteP2mMismatch { pfn, p2m: e, pte });
                }
                continue;
            }
            let idx = match st.layout.index(e) {
                Some(i) if st.owner[i] == DOM0 => i,
                Some(i) => {
                    let o = st.owner[i];
                    return Err(Violation::P2mNotOwned {
                        dom: DOM0,
                        pfn,
                        mfn: e,
                        owner: (o != OWNER_FREE).then_some(o),
                    });
                }
                None => {
                    return Err(Violation::P2mNotOwned {
                        dom: DOM0,
                        pfn,
                        mfn: e,
                        owner: None,
                    });
                }
            };
            if seen[idx] != INVALID {
                return Err(Violation::P2mDuplicate {
                    mfn: e,
                    pfn_a: seen[idx],
                    pfn_b: pfn,
                });
            }
            seen[idx] = pfn;
            let back = m2p(e);
            if back != pfn {
                return Err(Violation::M2pMismatch {
                    pfn,
                    mfn: e,
                    m2p: back,
                });
            }
            if pte_mfn != e {
                return Err(Violation::PteP2mMismatch { pfn, p2m: e, pte });
            }
        }
        for (idx, (&c, &r)) in counted.iter().zip(&st.mapcount).enumerate() {
            if c != r {
                return Err(Violation::MapCount {
                    mfn: st.layout.mfn(idx),
                    counted: c,
                    recorded: r,
                });
            }
        }
        // The domU's P2M (kept by the simulator) agrees with ownership and the M2P.
        for (pfn_us, &mfn) in st.doms[usize::from(DOMU)].p2m.iter().enumerate() {
            // CAST: usize fits u64.
            let pfn = pfn_us as u64;
            if mfn == INVALID {
                continue;
            }
            match st.layout.index(mfn) {
                Some(i) if st.owner[i] == DOMU => {}
                Some(i) => {
                    let o = st.owner[i];
                    return Err(Violation::P2mNotOwned {
                        dom: DOMU,
                        pfn,
                        mfn,
                        owner: (o != OWNER_FREE).then_some(o),
                    });
                }
                None => {
                    return Err(Violation::P2mNotOwned {
                        dom: DOMU,
                        pfn,
                        mfn,
                        owner: None,
                    });
                }
            }
            let back = m2p(mfn);
            if back != pfn {
                return Err(Violation::M2pMismatch {
                    pfn,
                    mfn,
                    m2p: back,
                });
            }
        }
        Ok(())
    }
}
