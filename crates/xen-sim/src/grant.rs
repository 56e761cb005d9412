//! Grant tables (v1 semantics): the domU's grants, `GNTTABOP_map_grant_ref`,
//! `GNTTABOP_unmap_grant_ref` and `GNTTABOP_cache_flush`.

use std::fmt;
use std::sync::Arc;

use swiotlb_core::{Bfn, PhysAddr};
use xen_abi::{
    DomId, GNTMAP_CONTAINS_PTE, GNTMAP_DEVICE_MAP, GNTMAP_HOST_MAP, GNTMAP_READONLY,
    GNTST_BAD_DEV_ADDR, GNTST_BAD_DOMAIN, GNTST_BAD_GNTREF, GNTST_BAD_HANDLE, GNTST_GENERAL_ERROR,
    GNTST_OKAY, GNTTAB_CACHE_CLEAN, GNTTAB_CACHE_INVAL, GNTTABOP_CACHE_FLUSH,
    GNTTABOP_MAP_GRANT_REF, GNTTABOP_UNMAP_GRANT_REF, GnttabCacheFlush, GnttabMapGrantRef,
    GnttabUnmapGrantRef, GrantRef,
};

use crate::config::SimArch;
use crate::fault::SimOp;
use crate::hypercall::{EFAULT, EINVAL, ENOSYS, EPERM, elem, gread, gwrite, linear_pfn};
use crate::machine::{
    DOM0, DOMU, GrantEntry, HostMap, INVALID, Mapping, OWNER_FREE, PAGE, PT_MACHINE_BASE,
    PTE_MFN_MASK, PTE_PRESENT, PTE_RW, State,
};
use crate::{Domain, Inner, SimError};

/// `-EOPNOTSUPP`'s errno.
const EOPNOTSUPP_GNT: i64 = 95;

/// The first grant reference handed out (Xen reserves 0..8).
pub(crate) const FIRST_REF: GrantRef = 8;

/// Whether a frame of domain `d` is currently mapped through one of its grants.
pub(crate) fn frame_granted_active(st: &State, d: usize, mfn: u64) -> bool {
    let dom = &st.doms[d];
    dom.active.keys().any(|r| {
        // CAST: refs index the table.
        dom.grants
            .get(*r as usize)
            .copied()
            .flatten()
            .and_then(|g| usize::try_from(g.pfn).ok())
            .and_then(|p| dom.p2m.get(p))
            == Some(&mfn)
    })
}

/// `grant_table_op(cmd, uop, count)`.
///
/// # Safety
///
/// `uop` must point at `count` writable structures of the command's type.
pub(crate) unsafe fn grant_table_op(
    inner: &Inner,
    st: &mut State,
    dom: DomId,
    cmd: u64,
    uop: u64,
    count: u64,
) -> i64 {
    match u32::try_from(cmd) {
        Ok(GNTTABOP_MAP_GRANT_REF) => {
            for i in 0..count {
                let Some(a) = elem::<GnttabMapGrantRef>(uop, i) else {
                    return -EFAULT;
                };
                // SAFETY: caller contract: `count` map structures at `uop`.
                let Some(mut op) = (unsafe { gread::<GnttabMapGrantRef>(a) }) else {
                    return -EFAULT;
                };
                st.counters.bump(SimOp::GrantMap);
                if let Some(errno) = st.faults.fail_nth(SimOp::GrantMap) {
                    return -i64::from(errno);
                }
                map_one(inner, st, dom, &mut op);
                // SAFETY: as above.
                if !unsafe { gwrite(a, op) } {
                    return -EFAULT;
                }
            }
            0
        }
        Ok(GNTTABOP_UNMAP_GRANT_REF) => {
            for i in 0..count {
                let Some(a) = elem::<GnttabUnmapGrantRef>(uop, i) else {
                    return -EFAULT;
                };
                // SAFETY: caller contract: `count` unmap structures at `uop`.
                let Some(mut op) = (unsafe { gread::<GnttabUnmapGrantRef>(a) }) else {
                    return -EFAULT;
                };
                st.counters.bump(SimOp::GrantUnmap);
                if let Some(errno) = st.faults.fail_nth(SimOp::GrantUnmap) {
                    return -i64::from(errno);
                }
                op.status = unmap_one(st, dom, &op);
                // SAFETY: as above.
                if !unsafe { gwrite(a, op) } {
                    return -EFAULT;
                }
            }
            0
        }
        Ok(GNTTABOP_CACHE_FLUSH) => {
            if !inner.cfg.has_cache_flush() {
                st.counters.bump(SimOp::CacheFlush);
                return -ENOSYS;
            }
            for i in 0..count {
                let Some(a) = elem::<GnttabCacheFlush>(uop, i) else {
                    return -EFAULT;
                };
                // SAFETY: caller contract: `count` cache-flush structures at `uop`.
                let Some(op) = (unsafe { gread::<GnttabCacheFlush>(a) }) else {
                    return -EFAULT;
                };
                st.counters.bump(SimOp::CacheFlush);
                if let Some(errno) = st.faults.fail_nth(SimOp::CacheFlush) {
                    return -i64::from(errno);
                }
                let rc = cache_flush_one(st, dom, &op);
                if rc != 0 {
                    return rc;
                }
            }
            0
        }
        _ => {
            st.counters.bump(SimOp::GrantOther);
            if let Some(errno) = st.faults.fail_nth(SimOp::GrantOther) {
                return -i64::from(errno);
            }
            -ENOSYS
        }
    }
}

/// One `GNTTABOP_map_grant_ref` element; sets `status`, `handle`, `dev_bus_addr`.
fn map_one(inner: &Inner, st: &mut State, dom: DomId, op: &mut GnttabMapGrantRef) {
    op.handle = 0;
    op.dev_bus_addr = 0;
    if let Some(status) = st.faults.grant_map() {
        op.status = status;
        return;
    }
    op.status = match try_map(inner, st, dom, op) {
        Ok((handle, mfn)) => {
            op.handle = handle;
            op.dev_bus_addr = mfn << 12;
            GNTST_OKAY
        }
        Err(status) => status,
    };
}

fn try_map(
    inner: &Inner,
    st: &mut State,
    dom: DomId,
    op: &GnttabMapGrantRef,
) -> Result<(u32, u64), i16> {
    if op.flags & (GNTMAP_DEVICE_MAP | GNTMAP_HOST_MAP) == 0 {
        return Err(GNTST_BAD_GNTREF);
    }
    let mapper = st.dom_index(dom).ok_or(GNTST_GENERAL_ERROR)?;
    let granter = st.dom_index(op.dom).ok_or(GNTST_BAD_DOMAIN)?;
    // CAST: u32 fits usize.
    let entry = match st.doms[granter].grants.get(op.ref_ as usize) {
        None => return Err(GNTST_BAD_GNTREF),
        Some(None) => return Err(GNTST_GENERAL_ERROR),
        Some(Some(e)) => *e,
    };
    let readonly = op.flags & GNTMAP_READONLY != 0;
    if entry.grantee != dom || (entry.readonly && !readonly) {
        return Err(GNTST_GENERAL_ERROR);
    }
    let mfn = usize::try_from(entry.pfn)
        .ok()
        .and_then(|p| st.doms[granter].p2m.get(p).copied())
        .filter(|&m| m != INVALID)
        .ok_or(GNTST_GENERAL_ERROR)?;
    let idx = st.layout.index(mfn).ok_or(GNTST_GENERAL_ERROR)?;
    if st.owner[idx] != op.dom {
        return Err(GNTST_GENERAL_ERROR);
    }
    let host = if op.flags & GNTMAP_HOST_MAP == 0 {
        if st.arch == SimArch::Arm64 {
            // Xen on Arm refuses device mappings.
            return Err(GNTST_GENERAL_ERROR);
        }
        HostMap::None
    } else {
        match st.arch {
            SimArch::Arm64 => {
                if op.flags & GNTMAP_DEVICE_MAP != 0 {
                    return Err(GNTST_GENERAL_ERROR);
                }
                let base = inner.cfg.foreign_window_base;
                let end = base + inner.cfg.foreign_window_pages * PAGE;
                if !op.host_addr.is_multiple_of(PAGE) || op.host_addr < base || op.host_addr >= end
                {
                    return Err(GNTST_GENERAL_ERROR);
                }
                let ipa_pfn = op.host_addr / PAGE;
                if st.stage2.contains_key(&ipa_pfn) {
                    return Err(GNTST_GENERAL_ERROR);
                }
                st.stage2.insert(ipa_pfn, mfn);
                HostMap::Stage2(ipa_pfn)
            }
            SimArch::X86Pv => {
                if dom != DOM0 {
                    return Err(GNTST_GENERAL_ERROR);
                }
                let pfn = if op.flags & GNTMAP_CONTAINS_PTE != 0 {
                    // CAST: usize fits u64.
                    let end = PT_MACHINE_BASE + 8 * st.pte.len() as u64;
                    if !op.host_addr.is_multiple_of(8)
                        || op.host_addr < PT_MACHINE_BASE
                        || op.host_addr >= end
                    {
                        return Err(GNTST_GENERAL_ERROR);
                    }
                    (op.host_addr - PT_MACHINE_BASE) / 8
                } else {
                    linear_pfn(inner, st, op.host_addr).ok_or(GNTST_GENERAL_ERROR)?
                };
                // CAST: pfn < pte.len().
                let old = st.pte[pfn as usize];
                if old & PTE_PRESENT != 0
                    && let Some(i) = st.layout.index((old & PTE_MFN_MASK) >> 12)
                {
                    st.mapcount[i] = st.mapcount[i].saturating_sub(1);
                }
                let rw = if readonly { 0 } else { PTE_RW };
                st.pte[pfn as usize] = mfn << 12 | PTE_PRESENT | rw;
                st.mapcount[idx] += 1;
                HostMap::Pte(pfn)
            }
        }
    };
    let mapping = Mapping {
        granter: op.dom,
        gref: op.ref_,
        mfn,
        host_addr: op.host_addr,
        readonly,
        host,
    };
    let track = &mut st.doms[mapper].maptrack;
    let handle = match track.iter().position(Option::is_none) {
        Some(h) => {
            track[h] = Some(mapping);
            h
        }
        None => {
            track.push(Some(mapping));
            track.len() - 1
        }
    };
    *st.doms[granter].active.entry(op.ref_).or_insert(0) += 1;
    Ok((u32::try_from(handle).map_err(|_| GNTST_GENERAL_ERROR)?, mfn))
}

/// One `GNTTABOP_unmap_grant_ref` element; returns the status.
fn unmap_one(st: &mut State, dom: DomId, op: &GnttabUnmapGrantRef) -> i16 {
    let Some(d) = st.dom_index(dom) else {
        return GNTST_GENERAL_ERROR;
    };
    // CAST: u32 fits usize.
    let Some(Some(m)) = st.doms[d].maptrack.get(op.handle as usize).copied() else {
        return GNTST_BAD_HANDLE;
    };
    if op.dev_bus_addr != 0 && op.dev_bus_addr != m.mfn << 12 {
        return GNTST_BAD_DEV_ADDR;
    }
    match m.host {
        HostMap::None => {}
        HostMap::Pte(pfn) => {
            if op.host_addr != m.host_addr {
                return GNTST_GENERAL_ERROR;
            }
            // CAST: pfn < pte.len().
            let pte = st.pte[pfn as usize];
            if pte & PTE_PRESENT == 0 || (pte & PTE_MFN_MASK) >> 12 != m.mfn {
                return GNTST_GENERAL_ERROR;
            }
            st.pte[pfn as usize] = 0;
            if let Some(i) = st.layout.index(m.mfn) {
                st.mapcount[i] = st.mapcount[i].saturating_sub(1);
            }
        }
        HostMap::Stage2(ipa_pfn) => {
            if op.host_addr != m.host_addr {
                return GNTST_GENERAL_ERROR;
            }
            st.stage2.remove(&ipa_pfn);
        }
    }
    // CAST: u32 fits usize.
    st.doms[d].maptrack[op.handle as usize] = None;
    if let Some(g) = st.dom_index(m.granter)
        && let Some(n) = st.doms[g].active.get_mut(&m.gref)
    {
        *n -= 1;
        if *n == 0 {
            st.doms[g].active.remove(&m.gref);
        }
    }
    GNTST_OKAY
}

/// One `GNTTABOP_cache_flush` element, after Xen 4.17's `cache_flush`.
fn cache_flush_one(st: &mut State, dom: DomId, op: &GnttabCacheFlush) -> i64 {
    let (offset, length) = (u64::from(op.offset), u64::from(op.length));
    if offset >= PAGE
        || length > PAGE
        || offset + length > PAGE
        || op.op & !(GNTTAB_CACHE_INVAL | GNTTAB_CACHE_CLEAN) != 0
    {
        // GNTTAB_CACHE_SOURCE_GREF lands here too: real Xen 4.17 answered -EINVAL.
        return -EINVAL;
    }
    if length == 0 || op.op == 0 {
        return 0;
    }
    // Xen on x86 has no invalidate-only primitive (`invalidate_dcache_va_range` returns
    // -EOPNOTSUPP there); cleaning is a write-back-and-invalidate.
    let x86 = st.arch == SimArch::X86Pv;
    if x86 && op.op == GNTTAB_CACHE_INVAL {
        return -EOPNOTSUPP_GNT;
    }
    // SAFETY: both union members are plain integers; the structure was read whole from the
    // guest, so `dev_bus_addr` is initialised.
    let addr = unsafe { op.a.dev_bus_addr };
    let mfn = addr / PAGE;
    let Some(idx) = st.layout.index(mfn) else {
        return -EINVAL;
    };
    let owner = st.owner[idx];
    if owner == OWNER_FREE || st.dom_index(owner).is_none() {
        return -EPERM;
    }
    if owner != dom {
        let mapped = st
            .dom_index(dom)
            .and_then(|d| st.mapped_grant(d, mfn))
            .is_some();
        if !mapped {
            return -EINVAL;
        }
    }
    // CAST: offset and length are below 4096.
    st.cache_maint(
        idx,
        offset as usize,
        length as usize,
        op.op & GNTTAB_CACHE_CLEAN != 0,
        x86 || op.op & GNTTAB_CACHE_INVAL != 0,
    );
    0
}

/// The domU: a guest whose side the simulator plays. It grants its pages to dom0 (v1 grant
/// entries with `GTF_permit_access`) and reads and writes them as its CPU would.
#[derive(Clone)]
pub struct DomU {
    pub(crate) inner: Arc<Inner>,
}

impl DomU {
    /// The domU's hypercall interface.
    #[must_use]
    pub fn domain(&self) -> Domain {
        Domain {
            inner: Arc::clone(&self.inner),
            id: DOMU,
            locates_ptes: true,
        }
    }

    /// The domU's page count.
    #[must_use]
    pub fn nr_pages(&self) -> u64 {
        self.inner.cfg.domu_pages
    }

    /// Grants the next `n` not yet granted pages to dom0, read-write, and returns the refs.
    ///
    /// # Panics
    ///
    /// If the domU has fewer than `n` pages left to grant (a test set-up mistake).
    #[must_use]
    pub fn grant_pages(&self, n: usize) -> Vec<GrantRef> {
        let first = {
            let mut st = self.inner.lock();
            let first = st.domu_next_grant;
            // CAST: usize fits u64.
            st.domu_next_grant += n as u64;
            first
        };
        // CAST: as above.
        (first..first + n as u64)
            .map(|pfn| match self.grant_page(pfn, DOM0, false) {
                Ok(r) => r,
                Err(e) => panic!("xen-sim: DomU::grant_pages({n}): {e}"),
            })
            .collect()
    }

    /// Grants the domU's page `pfn` to domain `to`.
    ///
    /// # Errors
    ///
    /// [`SimError::NoSuchPage`] if the domU has no such page.
    pub fn grant_page(&self, pfn: u64, to: DomId, readonly: bool) -> Result<GrantRef, SimError> {
        let mut st = self.inner.lock();
        // CAST: usize fits u64.
        if pfn >= st.doms[1].p2m.len() as u64 {
            return Err(SimError::NoSuchPage { pfn });
        }
        let table = &mut st.doms[1].grants;
        // CAST: FIRST_REF fits usize.
        if table.len() < FIRST_REF as usize {
            table.resize(FIRST_REF as usize, None);
        }
        let e = GrantEntry {
            grantee: to,
            pfn,
            readonly,
        };
        let r = match table
            .iter()
            .skip(FIRST_REF as usize)
            .position(Option::is_none)
        {
            Some(i) => {
                table[FIRST_REF as usize + i] = Some(e);
                FIRST_REF as usize + i
            }
            None => {
                table.push(Some(e));
                table.len() - 1
            }
        };
        GrantRef::try_from(r).map_err(|_| SimError::NoSuchPage { pfn })
    }

    /// Ends a grant (clears `GTF_permit_access`).
    ///
    /// # Errors
    ///
    /// [`SimError::NotGranted`] for a ref not in use, [`SimError::GrantInUse`] while dom0
    /// still maps it (Xen's `gnttab_end_foreign_access_ref` fails the same way).
    pub fn revoke(&self, gref: GrantRef) -> Result<(), SimError> {
        let mut st = self.inner.lock();
        if st.doms[1].active.contains_key(&gref) {
            return Err(SimError::GrantInUse { gref });
        }
        // CAST: u32 fits usize.
        match st.doms[1].grants.get_mut(gref as usize) {
            Some(e @ Some(_)) => {
                *e = None;
                Ok(())
            }
            _ => Err(SimError::NotGranted { gref }),
        }
    }

    fn frame_index(st: &State, gref: GrantRef) -> Result<(usize, u64), SimError> {
        // CAST: u32 fits usize.
        let e = st.doms[1]
            .grants
            .get(gref as usize)
            .copied()
            .flatten()
            .ok_or(SimError::NotGranted { gref })?;
        let mfn = usize::try_from(e.pfn)
            .ok()
            .and_then(|p| st.doms[1].p2m.get(p).copied())
            .ok_or(SimError::NotGranted { gref })?;
        let idx = st.layout.index(mfn).ok_or(SimError::NotGranted { gref })?;
        Ok((idx, e.pfn))
    }

    /// The machine frame behind a granted ref.
    ///
    /// # Errors
    ///
    /// [`SimError::NotGranted`] for a ref not in use.
    pub fn frame(&self, gref: GrantRef) -> Result<Bfn, SimError> {
        let st = self.inner.lock();
        let (idx, _) = Self::frame_index(&st, gref)?;
        Ok(Bfn::new(st.layout.mfn(idx)))
    }

    /// Writes `data` into the granted page at `offset`, as the domU's CPU.
    ///
    /// # Errors
    ///
    /// [`SimError::NotGranted`] for a ref not in use, [`SimError::OutOfPage`] past 4 KiB.
    pub fn write_page(&self, gref: GrantRef, offset: usize, data: &[u8]) -> Result<(), SimError> {
        let mut st = self.inner.lock();
        let (idx, _) = Self::frame_index(&st, gref)?;
        if offset.checked_add(data.len()).is_none_or(|e| e > 4096) {
            return Err(SimError::OutOfPage {
                offset,
                len: data.len(),
            });
        }
        st.cache_cpu_write(idx, offset, data.len());
        st.raw_write(idx, offset, data);
        Ok(())
    }

    /// Reads the whole granted page, as the domU's CPU.
    ///
    /// # Errors
    ///
    /// [`SimError::NotGranted`] for a ref not in use.
    pub fn read_page(&self, gref: GrantRef) -> Result<Vec<u8>, SimError> {
        let mut st = self.inner.lock();
        let (idx, pfn) = Self::frame_index(&st, gref)?;
        st.cache_cpu_read(idx, 0, 4096, PhysAddr::new(pfn * PAGE));
        let mut buf = vec![0u8; 4096];
        st.raw_read(idx, 0, &mut buf);
        Ok(buf)
    }
}

impl fmt::Debug for DomU {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomU")
            .field("pages", &self.inner.cfg.domu_pages)
            .finish_non_exhaustive()
    }
}
