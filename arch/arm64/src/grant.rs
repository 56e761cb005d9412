//! Recording grant mappings in the foreign table, and clearing them (Linux's
//! `set_foreign_p2m_mapping` and `clear_foreign_p2m_mapping`, `arch/arm/xen/p2m.c`).
//!
//! After dom0 maps a batch of grants with `GNTTABOP_map_grant_ref`, every request whose
//! status is `GNTST_okay` has a frame of dom0 (`host_addr`) now holding another domain's page
//! whose machine address is `dev_bus_addr`. That pair goes into the table, so that DMA to the
//! frame is sent to the right machine address. If it cannot go in (table full, overlap), the
//! grant is unmapped at once, its status set to `GNTST_general_error` and its handle to
//! [`INVALID_GRANT_HANDLE`]: a mapping the table does not know about would be translated 1:1,
//! and a device would be pointed at the wrong memory; and the handle, freed by the unmap, may
//! already name another mapping. That is the lesson of XSA-361 (CVE-2021-26932), where such errors were ignored.

use crate::foreign::{EntryStorage, ForeignTable, ForeignTableError};
use crate::hcall::{self, UnmapFailure};
use swiotlb_core::{BusAddr, PhysAddr};
use xen_abi::{
    GNTST_GENERAL_ERROR, GNTST_OKAY, GnttabMapGrantRef, GnttabUnmapGrantRef, GrantHandle, Hypercall,
};

/// The handle no grant mapping has (Linux's `INVALID_GRANT_HANDLE`, `~0`).
/// [`ForeignTable::record_grant_maps`] sets it on a request it had to unmap at once.
pub const INVALID_GRANT_HANDLE: GrantHandle = !0;

/// What [`ForeignTable::record_grant_maps`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrantMapSummary {
    /// Requests recorded in the table.
    pub recorded: usize,
    /// Requests that had already failed (status not `GNTST_okay`) and were left alone.
    pub skipped: usize,
    /// Requests that mapped but could not be recorded: they were unmapped, their status set
    /// to `GNTST_general_error` and their handle to [`INVALID_GRANT_HANDLE`].
    pub failed: usize,
    /// Of the `failed`, how many the unmap itself failed for. Their pages stay mapped at
    /// `host_addr` without a table entry: the caller must not use those frames for DMA (Linux
    /// logs "gnttab unmap failed" and carries on).
    pub unmap_failed: usize,
    /// Why the first failed request could not be recorded.
    pub first_error: Option<ForeignTableError>,
}

impl GrantMapSummary {
    /// Whether every request that mapped was recorded.
    #[must_use]
    pub const fn all_recorded(&self) -> bool {
        self.failed == 0
    }
}

/// What [`ForeignTable::clear_grant_unmaps`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrantUnmapSummary {
    /// Entries removed.
    pub cleared: usize,
    /// Requests whose unmap failed (status not `GNTST_okay`): their entries were kept.
    pub kept_mapped: usize,
    /// Requests for which no entry starts at `host_addr`'s frame.
    pub not_found: usize,
}

impl<S: EntryStorage> ForeignTable<S> {
    /// Records the results of a `GNTTABOP_map_grant_ref` batch: each request with status
    /// `GNTST_okay` adds the frame of `host_addr` -> the frame of `dev_bus_addr`, one page.
    ///
    /// A request that cannot be recorded is unmapped at once with
    /// `GNTTABOP_unmap_grant_ref` (its `host_addr`, `dev_bus_addr` and `handle`), its
    /// status set to `GNTST_general_error` and its handle to [`INVALID_GRANT_HANDLE`], so the
    /// caller sees it as failed and never uses it, nor unmaps by its freed handle a mapping
    /// Xen has given the handle to since.
    ///
    /// # Safety
    ///
    /// Every request whose status is `GNTST_okay` must be the unchanged result of a
    /// `GNTTABOP_map_grant_ref` this domain performed through `hyp` (mapping the granted page
    /// at `host_addr`), and nothing may use those mappings before this call returns. The
    /// recorded entries then carry the obligation of [`ForeignTable::insert`].
    pub unsafe fn record_grant_maps<H: Hypercall + ?Sized>(
        &self,
        ops: &mut [GnttabMapGrantRef],
        hyp: &H,
    ) -> GrantMapSummary {
        let mut summary = GrantMapSummary::default();
        for op in ops.iter_mut() {
            if op.status != GNTST_OKAY {
                summary.skipped += 1;
                continue;
            }
            let pfn = PhysAddr::new(op.host_addr).frame();
            let mfn = BusAddr::new(op.dev_bus_addr).frame();
            // SAFETY: the caller guarantees this request mapped the page of `dev_bus_addr` at
            // `host_addr`, which is what the entry says.
            match unsafe { self.insert(pfn, mfn, 1) } {
                Ok(()) => summary.recorded += 1,
                Err(err) => {
                    summary.failed += 1;
                    summary.first_error.get_or_insert(err);
                    // The request starts failed (a positive status no GNTST_* code is), so
                    // that only Xen's own answer reads as success.
                    let mut unmap =
                        GnttabUnmapGrantRef::new(op.host_addr, op.dev_bus_addr, op.handle);
                    // Xen frees the handle at the unmap and may give it to the next mapping:
                    // the caller must not find it here (gntdev cleans up by handle).
                    op.handle = INVALID_GRANT_HANDLE;
                    // SAFETY: the caller guarantees this is a mapping this domain just made
                    // and that nothing uses it yet.
                    let res: Result<(), UnmapFailure> =
                        unsafe { hcall::unmap_grant(hyp, &mut unmap) };
                    if res.is_err() {
                        summary.unmap_failed += 1;
                    }
                    op.status = GNTST_GENERAL_ERROR;
                }
            }
        }
        summary
    }

    /// Clears the entries of a `GNTTABOP_unmap_grant_ref` batch after the hypercall: for each
    /// request whose status is `GNTST_okay`, removes the entry starting at the frame of
    /// `host_addr`.
    ///
    /// Unlike Linux's `clear_foreign_p2m_mapping`, an entry whose unmap failed is kept: the
    /// foreign page is still mapped there, and translating its frame 1:1 would point a device
    /// at the wrong memory. Remove it with [`ForeignTable::remove`] once it is really gone.
    ///
    /// # Safety
    ///
    /// The requests must be the results of a `GNTTABOP_unmap_grant_ref` this domain
    /// performed (so a `GNTST_okay` status means the grant is no longer mapped at
    /// `host_addr`), and the frames must then be used for DMA only once they hold dom0's own
    /// memory again (see [`ForeignTable::remove`]).
    pub unsafe fn clear_grant_unmaps(&self, ops: &[GnttabUnmapGrantRef]) -> GrantUnmapSummary {
        let mut summary = GrantUnmapSummary::default();
        for op in ops {
            if op.status != GNTST_OKAY {
                summary.kept_mapped += 1;
                continue;
            }
            let pfn = PhysAddr::new(op.host_addr).frame();
            // SAFETY: the grant is unmapped (status okay) and the caller guarantees how the
            // frame is used from now on.
            match unsafe { self.remove(pfn) } {
                Ok(_) => summary.cleared += 1,
                Err(_) => summary.not_found += 1,
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foreign::BoundedForeignTable;
    use crate::testutil::TableTestExt;
    use core::cell::RefCell;
    use std::vec::Vec;
    use swiotlb_core::{Bfn, Pfn};
    use xen_abi::{GNTST_BAD_GNTREF, GNTTABOP_UNMAP_GRANT_REF, HYPERVISOR_GRANT_TABLE_OP};

    /// Records unmap requests; answers with a chosen result and status.
    struct FakeXen {
        unmaps: RefCell<Vec<(u64, u64, u32)>>,
        ret: i64,
        status: i16,
    }

    // SAFETY: the fake reads (and writes the status of) exactly the one request the
    // GNTTABOP_unmap_grant_ref call points at, and touches nothing for other calls.
    unsafe impl Hypercall for FakeXen {
        unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
            assert_eq!(op, HYPERVISOR_GRANT_TABLE_OP);
            assert_eq!(args[0], u64::from(GNTTABOP_UNMAP_GRANT_REF));
            assert_eq!(args[2], 1);
            let p = core::ptr::with_exposed_provenance_mut::<GnttabUnmapGrantRef>(args[1] as usize);
            // SAFETY: the code under test passes a live request (the hypercall contract).
            let req = unsafe { &mut *p };
            self.unmaps
                .borrow_mut()
                .push((req.host_addr, req.dev_bus_addr, req.handle));
            req.status = self.status;
            self.ret
        }
    }

    fn fake(ret: i64, status: i16) -> FakeXen {
        FakeXen {
            unmaps: RefCell::new(Vec::new()),
            ret,
            status,
        }
    }

    fn map_op(host_frame: u64, bus_frame: u64, handle: u32, status: i16) -> GnttabMapGrantRef {
        GnttabMapGrantRef {
            host_addr: host_frame << 12,
            dev_bus_addr: bus_frame << 12,
            handle,
            status,
            ..Default::default()
        }
    }

    #[test]
    fn okay_maps_are_recorded_failed_ones_skipped() {
        let t = BoundedForeignTable::<8>::new();
        let xen = fake(0, GNTST_OKAY);
        let mut ops = [
            map_op(0x8000, 0x1234, 1, GNTST_OKAY),
            map_op(0x8001, 0x999, 2, GNTST_BAD_GNTREF),
            map_op(0x8002, 0x4321, 3, GNTST_OKAY),
        ];
        // SAFETY: the table is a test table no device sees; the fake performs no mapping.
        let s = unsafe { t.record_grant_maps(&mut ops, &xen) };
        assert_eq!((s.recorded, s.skipped, s.failed), (2, 1, 0));
        assert!(s.all_recorded());
        assert_eq!(t.lookup(Pfn::new(0x8000)), Some(Bfn::new(0x1234)));
        assert_eq!(t.lookup(Pfn::new(0x8001)), None);
        assert_eq!(t.lookup(Pfn::new(0x8002)), Some(Bfn::new(0x4321)));
        assert!(xen.unmaps.borrow().is_empty());
        assert_eq!(ops[1].status, GNTST_BAD_GNTREF);
    }

    #[test]
    fn unrecordable_maps_are_unmapped_at_once() {
        let t = BoundedForeignTable::<2>::new();
        t.ins(Pfn::new(0x8000), Bfn::new(0x1), 1).unwrap();
        let xen = fake(0, GNTST_OKAY);
        let mut ops = [
            map_op(0x8000, 0x2000, 7, GNTST_OKAY), // overlaps
            map_op(0x8001, 0x2001, 8, GNTST_OKAY), // fits
            map_op(0x8002, 0x2002, 9, GNTST_OKAY), // table full
        ];
        // SAFETY: as above.
        let s = unsafe { t.record_grant_maps(&mut ops, &xen) };
        assert_eq!((s.recorded, s.failed, s.unmap_failed), (1, 2, 0));
        assert!(matches!(
            s.first_error,
            Some(ForeignTableError::Overlap { .. })
        ));
        assert_eq!(ops[0].status, GNTST_GENERAL_ERROR);
        assert_eq!(ops[1].status, GNTST_OKAY);
        assert_eq!(ops[2].status, GNTST_GENERAL_ERROR);
        assert_eq!(
            [ops[0].handle, ops[1].handle, ops[2].handle],
            [INVALID_GRANT_HANDLE, 8, INVALID_GRANT_HANDLE]
        );
        assert_eq!(
            *xen.unmaps.borrow(),
            [
                (0x8000 << 12, 0x2000 << 12, 7),
                (0x8002 << 12, 0x2002 << 12, 9)
            ]
        );
        // The existing entry was not overwritten.
        assert_eq!(t.lookup(Pfn::new(0x8000)), Some(Bfn::new(0x1)));
    }

    #[test]
    fn failing_unmap_is_counted_and_status_still_set() {
        let t = BoundedForeignTable::<1>::new();
        t.ins(Pfn::new(1), Bfn::new(1), 1).unwrap();
        for (ret, status) in [(-22, GNTST_OKAY), (0, GNTST_BAD_GNTREF)] {
            let xen = fake(ret, status);
            let mut ops = [map_op(0x10, 0x20, 1, GNTST_OKAY)];
            // SAFETY: as above.
            let s = unsafe { t.record_grant_maps(&mut ops, &xen) };
            assert_eq!((s.failed, s.unmap_failed), (1, 1));
            assert_eq!(s.first_error, Some(ForeignTableError::Full { capacity: 1 }));
            assert_eq!(ops[0].status, GNTST_GENERAL_ERROR);
            assert_eq!(xen.unmaps.borrow().len(), 1);
        }
    }

    /// Returns success for the whole call without touching the request (as when Xen stops
    /// before reaching it).
    struct SilentXen;

    // SAFETY: touches no memory.
    unsafe impl Hypercall for SilentXen {
        unsafe fn hypercall(&self, _op: u32, _args: [u64; 5]) -> i64 {
            0
        }
    }

    #[test]
    fn an_unmap_xen_never_answered_is_not_taken_for_success() {
        let t = BoundedForeignTable::<1>::new();
        t.ins(Pfn::new(1), Bfn::new(1), 1).unwrap();
        let mut ops = [map_op(0x10, 0x20, 5, GNTST_OKAY)];
        // SAFETY: as above.
        let s = unsafe { t.record_grant_maps(&mut ops, &SilentXen) };
        assert_eq!((s.failed, s.unmap_failed), (1, 1));
        assert_eq!(ops[0].handle, INVALID_GRANT_HANDLE);
    }

    #[test]
    fn clearing_keeps_entries_whose_unmap_failed() {
        let t = BoundedForeignTable::<4>::new();
        t.ins(Pfn::new(0x10), Bfn::new(0x100), 1).unwrap();
        t.ins(Pfn::new(0x11), Bfn::new(0x101), 1).unwrap();
        let ops = [
            GnttabUnmapGrantRef {
                host_addr: 0x10 << 12,
                status: GNTST_OKAY,
                ..Default::default()
            },
            GnttabUnmapGrantRef {
                host_addr: 0x11 << 12,
                status: GNTST_GENERAL_ERROR,
                ..Default::default()
            },
            GnttabUnmapGrantRef {
                host_addr: 0x12 << 12,
                status: GNTST_OKAY,
                ..Default::default()
            },
        ];
        // SAFETY: a test table no device sees.
        let s = unsafe { t.clear_grant_unmaps(&ops) };
        assert_eq!((s.cleared, s.kept_mapped, s.not_found), (1, 1, 1));
        assert_eq!(t.lookup(Pfn::new(0x10)), None);
        assert_eq!(t.lookup(Pfn::new(0x11)), Some(Bfn::new(0x101)));
    }
}
