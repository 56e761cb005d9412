//! dom0's side of the guest's grants: mapping granted pages where dom0's DMA layer can see
//! them, as a backend driver does, on both platforms.
//!
//! - x86 PV: a granted page is mapped over one of a set of ballooned-out dom0 pages (PTE
//!   zapped, P2M INVALID), and the P2M entry becomes `FOREIGN(mfn)`, as Linux's
//!   `gnttab_map_refs` + `set_foreign_p2m_mapping` do. At the end each page gets its own frame
//!   back, so no frame is lost.
//! - arm64: a granted page is mapped in dom0's foreign window (stage 2), and recorded in the
//!   platform's foreign table, as Linux's `arch/arm/xen/p2m.c` does.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};

use swiotlb_core::{BusAddr, PhysAddr};
use swiotlb_xen_arm64::{EntryStorage, ForeignTable};
use xen_abi::{
    DomId, GNTMAP_HOST_MAP, GNTST_OKAY, GnttabMapGrantRef, GnttabUnmapGrantRef, GrantRef,
    UVMF_INVLPG, ops,
};
use xen_sim::{Domain, INVALID_ENTRY, P2M_FOREIGN_BIT, PvGuest};

const PAGE: u64 = 4096;

/// Why mapping or unmapping grants failed: what was asked and what Xen answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantError(pub String);

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GrantError {}

/// A granted page mapped into dom0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedGrant {
    /// The grant.
    pub gref: GrantRef,
    /// Where dom0's CPU and DMA layer see the page.
    pub phys: PhysAddr,
    /// The page's machine address, as Xen reported it (`dev_bus_addr`).
    pub machine: BusAddr,
    slot: usize,
    handle: u32,
}

/// How a backend maps and unmaps the guest's grants.
pub trait GrantMapper {
    /// Maps `refs` (granted by `domid`) in one batch.
    ///
    /// # Errors
    ///
    /// [`GrantError`] if a slot is missing or Xen refuses a grant (nothing stays mapped).
    fn map(&self, domid: DomId, refs: &[GrantRef]) -> Result<Vec<MappedGrant>, GrantError>;

    /// Unmaps `grants` in one batch.
    ///
    /// # Errors
    ///
    /// [`GrantError`] if Xen refuses an unmap.
    fn unmap(&self, grants: &[MappedGrant]) -> Result<(), GrantError>;

    /// Pages in use for mappings now.
    fn in_use(&self) -> usize;
}

/// A map request; its status is `GRANT_OP_PENDING` until Xen writes one, so that a request
/// Xen never reaches (the batch stopped at an earlier error) does not look mapped.
fn map_request(host_addr: u64, gref: GrantRef, domid: DomId) -> GnttabMapGrantRef {
    GnttabMapGrantRef::new(host_addr, GNTMAP_HOST_MAP, gref, domid)
}

/// Unmap requests for `grants`, pending as in [`map_request`].
fn unmap_requests(
    grants: &[MappedGrant],
    host_addr: impl Fn(&MappedGrant) -> u64,
) -> Vec<GnttabUnmapGrantRef> {
    grants
        .iter()
        .map(|g| GnttabUnmapGrantRef::new(host_addr(g), g.machine.as_u64(), g.handle))
        .collect()
}

/// Free slots, taken and given back by index.
#[derive(Debug)]
struct Slots {
    free: Vec<usize>,
    total: usize,
}

/// Locks `slots` (a panicking holder does not make the free list unusable).
fn lock(slots: &Mutex<Slots>) -> MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Slots {
    fn new(n: usize) -> Self {
        Self {
            free: (0..n).rev().collect(),
            total: n,
        }
    }

    fn take(&mut self, n: usize) -> Result<Vec<usize>, GrantError> {
        if self.free.len() < n {
            return Err(GrantError(format!(
                "no {n} free grant-mapping slots ({} of {} free)",
                self.free.len(),
                self.total
            )));
        }
        let at = self.free.len() - n;
        // The free list is kept highest first: fresh slots come out in ascending order, so
        // that a batch lands on neighbouring pages.
        let mut taken = self.free.split_off(at);
        taken.reverse();
        Ok(taken)
    }
}

/// x86 PV: grants mapped over ballooned-out dom0 pages.
#[derive(Debug)]
pub struct PvGrants {
    guest: PvGuest,
    dom0: Domain,
    /// Per slot: the page, and its own PTE and P2M entry while it is ballooned out.
    pages: Vec<(PhysAddr, u64, u64)>,
    slots: Mutex<Slots>,
}

impl PvGrants {
    /// Balloons out `n` fresh dom0 pages for grant mappings: each PTE is zapped and each P2M
    /// entry set to INVALID (the frames stay dom0's, parked until [`Self::restore`]).
    ///
    /// # Errors
    ///
    /// [`GrantError`] if Xen refuses a zap.
    pub fn new(guest: &PvGuest, dom0: &Domain, n: usize) -> Result<Self, GrantError> {
        // CAST: usize fits u64.
        let first = guest.alloc_pages(n as u64);
        let mut pages = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let phys = PhysAddr::new(first.as_u64() + i * PAGE);
            let pfn = phys.as_u64() / PAGE;
            let pte = guest.pte(pfn).unwrap_or(0);
            // CAST: the pfn is below dom0's page count, a usize index.
            let entry = &guest.p2m()[pfn as usize];
            let p2m = entry.load(Ordering::Relaxed);
            // SAFETY: the page is the backend's own, fresh from the allocator, and nothing
            // references it; zapping its PTE only makes it unreachable.
            unsafe { ops::update_va_mapping(dom0, guest.va_of(phys), 0, UVMF_INVLPG) }
                .map_err(|e| GrantError(format!("balloon out {phys}: {e}")))?;
            entry.store(INVALID_ENTRY, Ordering::Relaxed);
            pages.push((phys, pte, p2m));
        }
        Ok(Self {
            guest: guest.clone(),
            dom0: dom0.clone(),
            pages,
            slots: Mutex::new(Slots::new(n)),
        })
    }

    /// Gives every ballooned page its own frame back (PTE and P2M as before).
    ///
    /// # Errors
    ///
    /// [`GrantError`] if a grant is still mapped or Xen refuses the remap.
    pub fn restore(self) -> Result<(), GrantError> {
        if self.in_use() != 0 {
            return Err(GrantError(format!(
                "{} grant mappings still in use at the end",
                self.in_use()
            )));
        }
        for &(phys, pte, p2m) in &self.pages {
            // SAFETY: the page is ours and not mapped; this maps its own frame back.
            unsafe { ops::update_va_mapping(&self.dom0, self.guest.va_of(phys), pte, UVMF_INVLPG) }
                .map_err(|e| GrantError(format!("balloon in {phys}: {e}")))?;
            // CAST: the pfn is a P2M index.
            self.guest.p2m()[(phys.as_u64() / PAGE) as usize].store(p2m, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl GrantMapper for PvGrants {
    fn map(&self, domid: DomId, refs: &[GrantRef]) -> Result<Vec<MappedGrant>, GrantError> {
        let slots = lock(&self.slots).take(refs.len())?;
        let mut reqs: Vec<GnttabMapGrantRef> = slots
            .iter()
            .zip(refs)
            .map(|(&s, &r)| map_request(self.guest.va_of(self.pages[s].0), r, domid))
            .collect();
        // SAFETY: every request maps over a ballooned page of ours that nothing references.
        let ret = unsafe { ops::grant_map(&self.dom0, &mut reqs) };
        let mut mapped = Vec::with_capacity(refs.len());
        let mut bad = None;
        for (&slot, req) in slots.iter().zip(&reqs) {
            if req.status == GNTST_OKAY {
                let phys = self.pages[slot].0;
                let g = MappedGrant {
                    gref: req.ref_,
                    phys,
                    machine: BusAddr::new(req.dev_bus_addr),
                    slot,
                    handle: req.handle,
                };
                // CAST: the pfn is a P2M index.
                self.guest.p2m()[(phys.as_u64() / PAGE) as usize].store(
                    (req.dev_bus_addr / PAGE) | P2M_FOREIGN_BIT,
                    Ordering::Relaxed,
                );
                mapped.push(g);
            } else {
                bad.get_or_insert((req.ref_, req.status));
                lock(&self.slots).free.push(slot);
            }
        }
        if let (Ok(()), None) = (ret, bad) {
            return Ok(mapped);
        }
        self.unmap(&mapped)?;
        Err(GrantError(format!(
            "GNTTABOP_map_grant_ref: returned {ret:?}, first failed ref and status {bad:?}"
        )))
    }

    fn unmap(&self, grants: &[MappedGrant]) -> Result<(), GrantError> {
        for g in grants {
            // CAST: the pfn is a P2M index.
            self.guest.p2m()[(g.phys.as_u64() / PAGE) as usize]
                .store(INVALID_ENTRY, Ordering::Relaxed);
        }
        let mut reqs = unmap_requests(grants, |g| self.guest.va_of(g.phys));
        // SAFETY: the mappings are ours and no DMA mapping uses them any more.
        let ret = unsafe { ops::grant_unmap(&self.dom0, &mut reqs) };
        let bad = reqs
            .iter()
            .find(|r| r.status != GNTST_OKAY)
            .map(|r| r.status);
        if ret.is_err() || bad.is_some() {
            return Err(GrantError(format!(
                "GNTTABOP_unmap_grant_ref: returned {ret:?}, first failed status {bad:?}"
            )));
        }
        lock(&self.slots).free.extend(grants.iter().map(|g| g.slot));
        Ok(())
    }

    fn in_use(&self) -> usize {
        let s = lock(&self.slots);
        s.total - s.free.len()
    }
}

/// arm64: grants mapped in dom0's foreign window and recorded in the platform's foreign table.
pub struct ArmGrants<'a, S> {
    table: &'a ForeignTable<S>,
    dom0: Domain,
    window: PhysAddr,
    slots: Mutex<Slots>,
}

impl<'a, S: EntryStorage> ArmGrants<'a, S> {
    /// Uses the first `n` pages of the foreign window at `window`, recording in `table`.
    #[must_use]
    pub fn new(table: &'a ForeignTable<S>, dom0: &Domain, window: PhysAddr, n: usize) -> Self {
        Self {
            table,
            dom0: dom0.clone(),
            window,
            slots: Mutex::new(Slots::new(n)),
        }
    }

    fn slot_addr(&self, slot: usize) -> u64 {
        // CAST: usize fits u64.
        self.window.as_u64() + slot as u64 * PAGE
    }
}

impl<S: EntryStorage> GrantMapper for ArmGrants<'_, S> {
    fn map(&self, domid: DomId, refs: &[GrantRef]) -> Result<Vec<MappedGrant>, GrantError> {
        let slots = lock(&self.slots).take(refs.len())?;
        let mut reqs: Vec<GnttabMapGrantRef> = slots
            .iter()
            .zip(refs)
            .map(|(&s, &r)| map_request(self.slot_addr(s), r, domid))
            .collect();
        // SAFETY: every request maps at a window page of ours that nothing uses.
        let ret = unsafe { ops::grant_map(&self.dom0, &mut reqs) };
        // SAFETY: `reqs` are the unchanged results of that map, not used yet.
        let summary = unsafe { self.table.record_grant_maps(&mut reqs, &self.dom0) };
        let mut mapped = Vec::with_capacity(refs.len());
        let mut bad = None;
        for (&slot, req) in slots.iter().zip(&reqs) {
            if req.status == GNTST_OKAY {
                mapped.push(MappedGrant {
                    gref: req.ref_,
                    phys: PhysAddr::new(req.host_addr),
                    machine: BusAddr::new(req.dev_bus_addr),
                    slot,
                    handle: req.handle,
                });
            } else {
                bad.get_or_insert((req.ref_, req.status));
                lock(&self.slots).free.push(slot);
            }
        }
        if ret.is_ok() && bad.is_none() {
            return Ok(mapped);
        }
        self.unmap(&mapped)?;
        Err(GrantError(format!(
            "GNTTABOP_map_grant_ref: returned {ret:?}, first failed ref and status {bad:?}, \
             recording: {summary:?}"
        )))
    }

    fn unmap(&self, grants: &[MappedGrant]) -> Result<(), GrantError> {
        let mut reqs = unmap_requests(grants, |g| g.phys.as_u64());
        // SAFETY: the mappings are ours and no DMA mapping uses them any more.
        let ret = unsafe { ops::grant_unmap(&self.dom0, &mut reqs) };
        // SAFETY: `reqs` are the results of that unmap; the window pages are only reused
        // for new grant mappings.
        let summary = unsafe { self.table.clear_grant_unmaps(&reqs) };
        if ret.is_err() || summary.cleared != grants.len() {
            return Err(GrantError(format!(
                "GNTTABOP_unmap_grant_ref: returned {ret:?}, {summary:?}"
            )));
        }
        lock(&self.slots).free.extend(grants.iter().map(|g| g.slot));
        Ok(())
    }

    fn in_use(&self) -> usize {
        let s = lock(&self.slots);
        s.total - s.free.len()
    }
}
