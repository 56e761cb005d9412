//! The arm64 foreign table fed arbitrary `GNTTABOP_map_grant_ref` results (any status,
//! host and bus address, handle), arbitrary unmap results, direct inserts and removes, with
//! a hypervisor whose unmaps may fail, checked against a model after every step:
//!
//! - the table holds exactly the model's entries, sorted and disjoint, and `len` agrees;
//! - every okay map is either recorded or unmapped at once with its own address and handle
//!   and its status turned into `GNTST_general_error` (the XSA-361 rule), and the summary
//!   counts agree with what happened;
//! - lookups, `entry_containing`, `is_bus_contiguous` and `first_overlap` of arbitrary
//!   frames agree with a brute-force answer from the model.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::BTreeMap;
use swiotlb_core::{Bfn, Pfn};
use swiotlb_xen_arm64::{BoundedForeignTable, ForeignTableError};
use xen_abi::{
    GNTST_GENERAL_ERROR, GNTST_OKAY, GNTTABOP_UNMAP_GRANT_REF, GnttabMapGrantRef,
    GnttabUnmapGrantRef, HYPERVISOR_GRANT_TABLE_OP, Hypercall,
};

/// Capacity of the table: small, so that `Full` is reached.
const CAP: usize = 24;
/// Frames are drawn from a small window so that entries collide.
const FRAMES: u64 = 96;

/// A hypervisor that answers `GNTTABOP_unmap_grant_ref` only, failing the unmaps the input
/// says, and records every unmap request.
struct FakeXen {
    unmaps: RefCell<Vec<(u64, u64, u32)>>,
    fail_next: RefCell<Vec<bool>>,
}

// SAFETY: reads and writes exactly the one request a `GNTTABOP_unmap_grant_ref` call points
// at (the caller's contract), and nothing else.
unsafe impl Hypercall for FakeXen {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        assert_eq!(
            op, HYPERVISOR_GRANT_TABLE_OP,
            "only grant-table ops expected"
        );
        assert_eq!(args[0], u64::from(GNTTABOP_UNMAP_GRANT_REF));
        assert_eq!(args[2], 1, "one unmap at a time");
        // CAST: the guest handle is the address of the request.
        let p = std::ptr::with_exposed_provenance_mut::<GnttabUnmapGrantRef>(args[1] as usize);
        // SAFETY: the caller passes a live request.
        let req = unsafe { &mut *p };
        self.unmaps
            .borrow_mut()
            .push((req.host_addr, req.dev_bus_addr, req.handle));
        let fail = self.fail_next.borrow_mut().pop().unwrap_or(false);
        req.status = if fail {
            GNTST_GENERAL_ERROR
        } else {
            GNTST_OKAY
        };
        0
    }
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn frame(&mut self) -> Option<u64> {
        Some(u64::from(self.u8()?) % FRAMES)
    }
    fn wide(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..8 {
            v = v << 8 | u64::from(self.u8()?);
        }
        Some(v)
    }
}

/// The model: first pfn -> (mfn, pages).
type Model = BTreeMap<u64, (u64, u64)>;

fn model_overlap(m: &Model, first: u64, n: u64) -> Option<(u64, u64, u64)> {
    m.iter()
        .map(|(&p, &(b, k))| (p, b, k))
        .find(|&(p, _, k)| p < first.saturating_add(n) && first < p + k)
}

fn model_lookup(m: &Model, pfn: u64) -> Option<u64> {
    model_overlap(m, pfn, 1).map(|(p, b, _)| b + (pfn - p))
}

/// Inserts into the model with the table's rules; the error the table must give.
fn model_insert(m: &mut Model, pfn: u64, mfn: u64, n: u64) -> Result<(), &'static str> {
    if n == 0 {
        return Err("zero");
    }
    if pfn.checked_add(n - 1).is_none_or(|l| l > Pfn::MAX.as_u64())
        || mfn.checked_add(n - 1).is_none_or(|l| l > Bfn::MAX.as_u64())
    {
        return Err("overflow");
    }
    if model_overlap(m, pfn, n).is_some() {
        return Err("overlap");
    }
    if m.len() == CAP {
        return Err("full");
    }
    m.insert(pfn, (mfn, n));
    Ok(())
}

fn kind(e: &ForeignTableError) -> &'static str {
    match e {
        ForeignTableError::ZeroPages { .. } => "zero",
        ForeignTableError::Overflow { .. } => "overflow",
        ForeignTableError::Overlap { .. } => "overlap",
        ForeignTableError::Full { .. } => "full",
        _ => "other",
    }
}

fn check(t: &BoundedForeignTable<CAP>, m: &Model, probes: &[u64]) {
    let entries: Vec<(u64, u64, u64)> = t
        .read()
        .entries()
        .iter()
        .map(|e| (e.pfn().as_u64(), e.mfn().as_u64(), e.nr_pages()))
        .collect();
    let want: Vec<(u64, u64, u64)> = m.iter().map(|(&p, &(b, k))| (p, b, k)).collect();
    assert_eq!(entries, want, "the table differs from the model");
    assert_eq!(t.len(), m.len());
    for w in entries.windows(2) {
        assert!(
            w[0].0 + w[0].2 <= w[1].0,
            "entries overlap or unsorted: {w:?}"
        );
    }
    for &p in probes {
        let pfn = Pfn::new(p);
        assert_eq!(
            t.lookup(pfn).map(Bfn::as_u64),
            model_lookup(m, p),
            "lookup {p}"
        );
        assert_eq!(
            t.entry_containing(pfn).map(|e| e.pfn().as_u64()),
            model_overlap(m, p, 1).map(|o| o.0)
        );
        for n in [0u64, 1, 2, 5] {
            // Brute force: each frame's bus frame (1:1 unless foreign) follows the previous.
            let bus = |q: u64| model_lookup(m, q).unwrap_or(q);
            let contiguous = (1..n).all(|i| bus(p + i) == bus(p) + i);
            assert_eq!(
                t.is_bus_contiguous(pfn, n),
                contiguous,
                "contiguous {p}+{n}"
            );
            assert_eq!(
                t.first_overlap(pfn, n).map(|e| e.pfn().as_u64()),
                if n == 0 {
                    None
                } else {
                    model_overlap(m, p, n).map(|o| o.0)
                },
                "overlap {p}+{n}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let t = BoundedForeignTable::<CAP>::new();
    let xen = FakeXen {
        unmaps: RefCell::new(Vec::new()),
        fail_next: RefCell::new(Vec::new()),
    };
    let mut m = Model::new();
    let mut r = Bytes(data);
    let mut probes = Vec::new();
    while let Some(tag) = r.u8() {
        match tag % 6 {
            // A batch of grant-map results.
            0 | 1 => {
                let Some(n) = r.u8() else { break };
                let mut ops = Vec::new();
                for _ in 0..n % 8 {
                    let (Some(st), Some(h), Some(b), Some(handle)) =
                        (r.u8(), r.frame(), r.u8(), r.u8())
                    else {
                        break;
                    };
                    // Mostly okay; sometimes a Xen error status. Host addresses may carry an
                    // offset in the page; bus frames are arbitrary, sometimes huge.
                    let status = if st % 4 == 0 {
                        -(i16::from(st % 13)) - 1
                    } else {
                        GNTST_OKAY
                    };
                    let bus = if b % 16 == 0 {
                        u64::MAX - u64::from(b)
                    } else {
                        u64::from(b) << 12
                    };
                    ops.push(GnttabMapGrantRef {
                        host_addr: h << 12 | u64::from(st & 0x3f),
                        dev_bus_addr: bus,
                        handle: u32::from(handle),
                        status,
                        ..Default::default()
                    });
                }
                let fails: Vec<bool> = (0..ops.len())
                    .map(|i| r.u8().is_some_and(|b| b % 5 == 0 && i < 8))
                    .collect();
                *xen.fail_next.borrow_mut() = fails.clone();
                xen.fail_next.borrow_mut().reverse();
                let before = ops.clone();
                xen.unmaps.borrow_mut().clear();
                // SAFETY: no DMA is done; the fake hypervisor makes the "mappings".
                let s = unsafe { t.record_grant_maps(&mut ops, &xen) };
                let (mut recorded, mut skipped, mut failed) = (0, 0, 0);
                let mut expect_unmaps = Vec::new();
                for (b, a) in before.iter().zip(&ops) {
                    if b.status != GNTST_OKAY {
                        skipped += 1;
                        assert_eq!(a.status, b.status, "a failed map was touched");
                        continue;
                    }
                    match model_insert(&mut m, b.host_addr >> 12, b.dev_bus_addr >> 12, 1) {
                        Ok(()) => {
                            recorded += 1;
                            assert_eq!(a.status, GNTST_OKAY);
                        }
                        Err(_) => {
                            failed += 1;
                            assert_eq!(
                                a.status, GNTST_GENERAL_ERROR,
                                "an unrecorded map stays okay"
                            );
                            expect_unmaps.push((b.host_addr, b.dev_bus_addr, b.handle));
                        }
                    }
                }
                assert_eq!(
                    (s.recorded, s.skipped, s.failed),
                    (recorded, skipped, failed)
                );
                assert_eq!(
                    *xen.unmaps.borrow(),
                    expect_unmaps,
                    "unmaps of unrecorded maps"
                );
                let unmap_failed = fails.iter().take(failed).filter(|&&f| f).count();
                assert_eq!(s.unmap_failed, unmap_failed);
                assert_eq!(s.first_error.is_some(), failed > 0);
            }
            // A batch of unmap results.
            2 => {
                let Some(n) = r.u8() else { break };
                let mut ops = Vec::new();
                for _ in 0..n % 6 {
                    let (Some(h), Some(st)) = (r.frame(), r.u8()) else {
                        break;
                    };
                    ops.push(GnttabUnmapGrantRef {
                        host_addr: h << 12,
                        dev_bus_addr: 0,
                        handle: 0,
                        status: if st % 3 == 0 {
                            GNTST_GENERAL_ERROR
                        } else {
                            GNTST_OKAY
                        },
                    });
                }
                // SAFETY: as above.
                let s = unsafe { t.clear_grant_unmaps(&ops) };
                let (mut cleared, mut kept, mut not_found) = (0, 0, 0);
                for op in &ops {
                    if op.status != GNTST_OKAY {
                        kept += 1;
                    } else if m.remove(&(op.host_addr >> 12)).is_some() {
                        cleared += 1;
                    } else {
                        not_found += 1;
                    }
                }
                assert_eq!(
                    (s.cleared, s.kept_mapped, s.not_found),
                    (cleared, kept, not_found)
                );
            }
            // A direct insert of a multi-frame entry, possibly overflowing.
            3 => {
                let (Some(p), Some(b), Some(n)) = (r.frame(), r.wide(), r.u8()) else {
                    break;
                };
                let n = u64::from(n % 9);
                // SAFETY: as above.
                let got = unsafe { t.insert(Pfn::new(p), Bfn::new(b & Bfn::MAX.as_u64()), n) };
                let want = model_insert(&mut m, p, b & Bfn::MAX.as_u64(), n);
                assert_eq!(got.map_err(|e| kind(&e)), want, "insert {p} {b:#x} {n}");
            }
            // A direct remove by any frame.
            4 => {
                let Some(p) = r.frame() else { break };
                // SAFETY: as above.
                let got = unsafe { t.remove(Pfn::new(p)) };
                match m.remove(&p) {
                    Some((b, n)) => {
                        let e = got.expect("remove of an entry start");
                        assert_eq!((e.mfn().as_u64(), e.nr_pages()), (b, n));
                    }
                    None => match got {
                        Err(ForeignTableError::NotEntryStart { entry, .. }) => {
                            assert!(entry.contains(Pfn::new(p)) && entry.pfn().as_u64() != p);
                        }
                        Err(ForeignTableError::NotFound { .. }) => {
                            assert!(model_overlap(&m, p, 1).is_none());
                        }
                        other => panic!("remove {p}: {other:?}"),
                    },
                }
            }
            _ => {
                let Some(p) = r.frame() else { break };
                probes.push(p);
                probes.truncate(8);
            }
        }
        check(&t, &m, &probes);
    }
    // SAFETY: as above.
    unsafe { t.clear() };
    assert!(t.is_empty());
});
