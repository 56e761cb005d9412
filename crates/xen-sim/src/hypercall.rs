//! Hypercall decoding and the memory-management hypercalls: `memory_op` (`XENMEM_exchange`),
//! `multicall`, `update_va_mapping`, `mmu_update`, `xen_version`, `console_io`, `sched_op`.

use std::fmt;
use std::mem::{align_of, size_of};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use xen_abi::{
    CONSOLEIO_READ, CONSOLEIO_WRITE, DOMID_SELF, DomId, HYPERVISOR_CONSOLE_IO,
    HYPERVISOR_GRANT_TABLE_OP, HYPERVISOR_MEMORY_OP, HYPERVISOR_MMU_UPDATE, HYPERVISOR_MMUEXT_OP,
    HYPERVISOR_MULTICALL, HYPERVISOR_SCHED_OP, HYPERVISOR_UPDATE_VA_MAPPING,
    HYPERVISOR_XEN_VERSION, Hypercall, MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE,
    MMU_PT_UPDATE_PRESERVE_AD, MmuUpdate, MmuextOp, MulticallEntry, SCHEDOP_SHUTDOWN,
    SCHEDOP_YIELD, UVMF_FLUSHTYPE_MASK, UVMF_INVLPG, UVMF_TLB_FLUSH, XENFEAT_DIRECT_MAPPED,
    XENFEAT_NOT_DIRECT_MAPPED, XENMEM_EXCHANGE, XENMEMF_ADDRESS_BITS_MASK, XENVER_GET_FEATURES,
    XENVER_VERSION, XenMemoryExchange, XenPfn,
};

use crate::config::SimArch;
use crate::fault::SimOp;
use crate::machine::{
    DOM0, DOMU, INVALID, OWNER_FREE, PAGE, PT_MACHINE_BASE, PTE_MFN_MASK, PTE_PRESENT, PTE_RW,
    State,
};
use crate::{Inner, grant};

pub(crate) const EPERM: i64 = 1;
pub(crate) const ENOMEM: i64 = 12;
pub(crate) const EFAULT: i64 = 14;
pub(crate) const EINVAL: i64 = 22;
pub(crate) const ENOSYS: i64 = 38;
pub(crate) const EOPNOTSUPP: i64 = 95;
/// Xen's internal "preempted, continue me" code (never returned to a guest by Xen itself).
pub(crate) const ERESTART: i64 = 85;

/// `XENVER_extraversion`.
const XENVER_EXTRAVERSION: u32 = 1;
/// `XENFEAT_dom0`.
const XENFEAT_DOM0: u32 = 11;
/// `MEMOP_CMD_MASK`: the command part of `memory_op`'s first argument.
const MEMOP_CMD_MASK: u64 = 0x3f;
/// Frame-owner marker for a frame being stolen by an exchange in progress.
const OWNER_STOLEN: DomId = u16::MAX - 1;

/// Reads a `T` from guest memory at `addr`; `None` for a null or misaligned address.
///
/// # Safety
///
/// A non-null, aligned `addr` must be the exposed address of a readable `T`.
pub(crate) unsafe fn gread<T: Copy>(addr: u64) -> Option<T> {
    // CAST: align_of fits u64.
    if addr == 0 || !addr.is_multiple_of(align_of::<T>() as u64) {
        return None;
    }
    // CAST: guest pointers were made from usize with expose_provenance.
    let p = std::ptr::with_exposed_provenance::<T>(usize::try_from(addr).ok()?);
    // SAFETY: the caller guarantees a readable `T` at `addr`, and it is non-null and aligned.
    Some(unsafe { p.read() })
}

/// Writes a `T` to guest memory at `addr`; `false` for a null or misaligned address.
///
/// # Safety
///
/// A non-null, aligned `addr` must be the exposed address of a writable `T`.
pub(crate) unsafe fn gwrite<T: Copy>(addr: u64, value: T) -> bool {
    // CAST: align_of fits u64.
    if addr == 0 || !addr.is_multiple_of(align_of::<T>() as u64) {
        return false;
    }
    let Ok(a) = usize::try_from(addr) else {
        return false;
    };
    let p = std::ptr::with_exposed_provenance_mut::<T>(a);
    // SAFETY: the caller guarantees a writable `T` at `addr`, and it is non-null and aligned.
    unsafe { p.write(value) };
    true
}

/// The address of element `i` of an array of `T` at `base`.
pub(crate) fn elem<T>(base: u64, i: u64) -> Option<u64> {
    // CAST: size_of fits u64.
    base.checked_add(i.checked_mul(size_of::<T>() as u64)?)
}

/// A domain's view of the machine: hypercalls made through it are made as that domain.
#[derive(Clone)]
pub struct Domain {
    pub(crate) inner: Arc<Inner>,
    pub(crate) id: DomId,
    /// Whether [`Hypercall::pte_machine_addr`] answers (a kernel that walks its page
    /// tables) or not (the trait's default).
    pub(crate) locates_ptes: bool,
}

impl Domain {
    /// The domain id (0 for dom0, 1 for the domU).
    #[must_use]
    pub fn id(&self) -> DomId {
        self.id
    }

    /// The same domain as a kernel that does not locate its page-table entries:
    /// [`Hypercall::pte_machine_addr`] answers `None`, so an x86 PV platform changes each
    /// mapping by virtual address (`update_va_mapping`), as Linux does.
    #[must_use]
    pub fn without_pte_addresses(mut self) -> Self {
        self.locates_ptes = false;
        self
    }
}

impl fmt::Debug for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Domain")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

// SAFETY: `hypercall` performs the operation with the given arguments and returns Xen's
// result; it reads and writes only the guest structures the operation defines (through the
// pointers in the arguments) and the simulated machine.
unsafe impl Hypercall for Domain {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        let mut st = self.inner.lock();
        st.counters.traps += 1;
        let a = [args[0], args[1], args[2], args[3], args[4], 0];
        // SAFETY: the caller's contract (pointers valid for what `op` accesses) is forwarded.
        unsafe { dispatch(&self.inner, &mut st, self.id, u64::from(op), a, false) }
    }

    /// The simulated L1 entry of dom0's linear-map page at `va` (at
    /// [`PvGuest::pte_machine_addr`](crate::PvGuest::pte_machine_addr)), as a kernel that
    /// walks its page tables finds it; `None` outside dom0's linear map, on arm64 and for
    /// a domain [`without_pte_addresses`](Self::without_pte_addresses).
    fn pte_machine_addr(&self, va: u64) -> Option<u64> {
        if !self.locates_ptes || self.id != DOM0 || self.inner.cfg.arch != SimArch::X86Pv {
            return None;
        }
        let st = self.inner.lock();
        linear_pfn(&self.inner, &st, va).map(|pfn| PT_MACHINE_BASE + 8 * pfn)
    }
}

/// Performs one hypercall (or multicall entry) as domain `dom`.
///
/// # Safety
///
/// The pointers in `args` must be valid for what `op` reads and writes.
pub(crate) unsafe fn dispatch(
    inner: &Inner,
    st: &mut State,
    dom: DomId,
    op: u64,
    args: [u64; 6],
    nested: bool,
) -> i64 {
    let Ok(op) = u32::try_from(op) else {
        st.counters.bump(SimOp::Other);
        return -ENOSYS;
    };
    // SAFETY: every arm forwards this function's contract (pointers valid for the op).
    unsafe {
        match op {
            HYPERVISOR_MEMORY_OP => memory_op(inner, st, dom, args[0], args[1]),
            HYPERVISOR_MULTICALL => multicall(inner, st, dom, args[0], args[1], nested),
            HYPERVISOR_UPDATE_VA_MAPPING => simple_op(st, SimOp::UpdateVaMapping, |st| {
                if args[1] & PTE_PRESENT != 0
                    && let Some(errno) = st.faults.map_refused(args[0])
                {
                    return -i64::from(errno);
                }
                update_va_mapping(inner, st, dom, args[0], args[1], args[2])
            }),
            HYPERVISOR_MMU_UPDATE => mmu_update(inner, st, dom, args[0], args[1], args[2], args[3]),
            HYPERVISOR_GRANT_TABLE_OP => {
                grant::grant_table_op(inner, st, dom, args[0], args[1], args[2])
            }
            HYPERVISOR_XEN_VERSION => simple_op(st, SimOp::XenVersion, |st| {
                xen_version(st, dom, args[0], args[1])
            }),
            HYPERVISOR_CONSOLE_IO => simple_op(st, SimOp::ConsoleIo, |st| {
                console_io(st, dom, args[0], args[1], args[2])
            }),
            HYPERVISOR_SCHED_OP => {
                simple_op(st, SimOp::SchedOp, |st| sched_op(st, args[0], args[1]))
            }
            HYPERVISOR_MMUEXT_OP => mmuext_op(st, dom, args[0], args[1], args[2], args[3]),
            _ => simple_op(st, SimOp::Other, |_| -ENOSYS),
        }
    }
}

/// Counts `op`, applies a `FailNth` fault, else runs `f`.
fn simple_op(st: &mut State, op: SimOp, f: impl FnOnce(&mut State) -> i64) -> i64 {
    st.counters.bump(op);
    if let Some(errno) = st.faults.fail_nth(op) {
        return -i64::from(errno);
    }
    f(st)
}

/// `multicall(entries, nr)`: runs each entry in order, writes its result, returns 0.
///
/// # Safety
///
/// `entries` must point at `nr` writable entries whose arguments are valid for their ops.
unsafe fn multicall(
    inner: &Inner,
    st: &mut State,
    dom: DomId,
    entries: u64,
    nr: u64,
    nested: bool,
) -> i64 {
    st.counters.bump(SimOp::Multicall);
    if let Some(errno) = st.faults.fail_nth(SimOp::Multicall) {
        return -i64::from(errno);
    }
    if nested {
        return -EINVAL;
    }
    let injected = st.faults.multicall_entry();
    for i in 0..nr {
        let Some(addr) = elem::<MulticallEntry>(entries, i) else {
            return -EFAULT;
        };
        // SAFETY: the caller guarantees `nr` entries at `entries`.
        let Some(mut e) = (unsafe { gread::<MulticallEntry>(addr) }) else {
            return -EFAULT;
        };
        e.result = match injected {
            Some((entry, errno)) if entry == i => -i64::from(errno),
            _ => {
                let allowed = matches!(
                    u32::try_from(e.op),
                    Ok(HYPERVISOR_MEMORY_OP
                        | HYPERVISOR_UPDATE_VA_MAPPING
                        | HYPERVISOR_MMU_UPDATE
                        | HYPERVISOR_GRANT_TABLE_OP
                        | HYPERVISOR_XEN_VERSION
                        | HYPERVISOR_CONSOLE_IO
                        | HYPERVISOR_MMUEXT_OP
                        | HYPERVISOR_MULTICALL)
                );
                if allowed {
                    // SAFETY: the entry's arguments are valid for its op (caller contract).
                    unsafe { dispatch(inner, st, dom, e.op, e.args, true) }
                } else {
                    st.counters.bump(SimOp::Other);
                    -ENOSYS
                }
            }
        };
        // SAFETY: as above; the entry is writable.
        if !unsafe { gwrite(addr, e) } {
            return -EFAULT;
        }
    }
    0
}

/// Changes dom0's linear-map PTE of `pfn` to `val`, checked as Xen checks a new L1 entry.
pub(crate) fn set_pte(st: &mut State, dom: DomId, pfn: u64, val: u64) -> Result<(), i64> {
    // CAST: pfn was checked against the table length by the callers.
    let slot = pfn as usize;
    let old = st.pte[slot];
    if val & PTE_PRESENT != 0 {
        let mfn = (val & PTE_MFN_MASK) >> 12;
        let idx = st.layout.index(mfn).ok_or(-EINVAL)?;
        if st.owner[idx] != dom {
            let d = st.dom_index(dom).ok_or(-EINVAL)?;
            let m = st.mapped_grant(d, mfn).ok_or(-EINVAL)?;
            if m.readonly && val & PTE_RW != 0 {
                return Err(-EPERM);
            }
        }
        st.mapcount[idx] += 1;
    }
    if old & PTE_PRESENT != 0 {
        if let Some(i) = st.layout.index((old & PTE_MFN_MASK) >> 12) {
            st.mapcount[i] = st.mapcount[i].saturating_sub(1);
        }
        if old != val {
            st.tlb_pending.insert(pfn);
        }
    }
    st.pte[slot] = val;
    Ok(())
}

/// `update_va_mapping(va, pte, flags)` on dom0's linear map.
fn update_va_mapping(
    inner: &Inner,
    st: &mut State,
    dom: DomId,
    va: u64,
    val: u64,
    flags: u64,
) -> i64 {
    if st.arch != SimArch::X86Pv {
        return -ENOSYS;
    }
    if dom != DOM0 {
        return -EINVAL;
    }
    // A `UVMF_MULTI` vcpumask pointer in the upper bits is not modelled (one vCPU).
    if flags & !7 != 0 || flags & UVMF_FLUSHTYPE_MASK == UVMF_FLUSHTYPE_MASK {
        return -EINVAL;
    }
    let Some(pfn) = linear_pfn(inner, st, va) else {
        return -EINVAL;
    };
    if let Err(e) = set_pte(st, dom, pfn, val) {
        return e;
    }
    match flags & UVMF_FLUSHTYPE_MASK {
        UVMF_TLB_FLUSH => {
            st.tlb_pending.clear();
            st.counters.tlb_flushes += 1;
        }
        UVMF_INVLPG => {
            st.tlb_pending.remove(&pfn);
            st.counters.tlb_flushes += 1;
        }
        _ => {}
    }
    0
}

/// The linear-map pfn of `va`, if inside dom0's linear map.
pub(crate) fn linear_pfn(inner: &Inner, st: &State, va: u64) -> Option<u64> {
    let off = va.checked_sub(inner.cfg.linear_base)?;
    let pfn = off / PAGE;
    // CAST: usize fits u64.
    (pfn < st.pte.len() as u64).then_some(pfn)
}

/// `mmu_update(reqs, count, success_count, domid)`.
///
/// # Safety
///
/// `reqs` must point at `count` readable requests and `done` (if non-null) at a writable
/// `u32`.
unsafe fn mmu_update(
    inner: &Inner,
    st: &mut State,
    dom: DomId,
    reqs: u64,
    count: u64,
    done: u64,
    domid: u64,
) -> i64 {
    if st.arch != SimArch::X86Pv {
        st.counters.bump(SimOp::MmuUpdate);
        return -ENOSYS;
    }
    if domid != u64::from(DOMID_SELF) && domid != u64::from(dom) {
        st.counters.bump(SimOp::MmuUpdate);
        return -EPERM;
    }
    // A continued call carries the count done so far in `success_count`, as Xen's
    // `MMU_UPDATE_PREEMPTED` continuation does; the list and the count are what is left.
    let (mut reqs, mut count, mut base) = (reqs, count, 0u64);
    let mut rc = 0;
    let mut n = 0u64;
    let mut preempt = st.faults.mmu_update_preempted();
    while n < count {
        if let Some(p) = preempt
            && p.after == n
        {
            if p.restart {
                // Surfaced to the guest instead of continued (see `Fault`).
                rc = -ERESTART;
                break;
            }
            // Xen's continuation: the guest re-enters the hypercall (one more trap) with the
            // rest of the list; `done` accumulates.
            st.counters.traps += 1;
            reqs = elem::<MmuUpdate>(reqs, n).unwrap_or(0);
            count -= n;
            base += n;
            n = 0;
            preempt = None;
            continue;
        }
        let Some(addr) = elem::<MmuUpdate>(reqs, n) else {
            rc = -EFAULT;
            break;
        };
        // SAFETY: the caller guarantees `count` requests at `reqs`.
        let Some(req) = (unsafe { gread::<MmuUpdate>(addr) }) else {
            rc = -EFAULT;
            break;
        };
        st.counters.bump(SimOp::MmuUpdate);
        if let Some(errno) = st.faults.fail_nth(SimOp::MmuUpdate) {
            rc = -i64::from(errno);
            break;
        }
        let r = match req.ptr & 3 {
            MMU_NORMAL_PT_UPDATE | MMU_PT_UPDATE_PRESERVE_AD => {
                if dom != DOM0 {
                    Err(-EINVAL)
                } else {
                    let a = req.ptr & !7;
                    // CAST: usize fits u64.
                    let end = PT_MACHINE_BASE + 8 * st.pte.len() as u64;
                    let va = |pfn: u64| inner.cfg.linear_base + pfn * PAGE;
                    if a < PT_MACHINE_BASE || a >= end {
                        Err(-EINVAL)
                    } else if req.val & PTE_PRESENT != 0
                        && let Some(errno) = st.faults.map_refused(va((a - PT_MACHINE_BASE) / 8))
                    {
                        Err(-i64::from(errno))
                    } else {
                        set_pte(st, dom, (a - PT_MACHINE_BASE) / 8, req.val)
                    }
                }
            }
            MMU_MACHPHYS_UPDATE => {
                let mfn = req.ptr >> 12;
                match st.layout.index(mfn) {
                    Some(idx) if st.owner[idx] == dom => {
                        // CAST: mfn < layout.mfn_end() = m2p length.
                        inner.m2p[mfn as usize].store(req.val, Ordering::Relaxed);
                        Ok(())
                    }
                    _ => Err(-EINVAL),
                }
            }
            _ => Err(-ENOSYS),
        };
        if let Err(e) = r {
            rc = e;
            break;
        }
        n += 1;
    }
    let n = base + n;
    // SAFETY: the caller guarantees `done` is null or a writable u32.
    if done != 0 && !unsafe { gwrite::<u32>(done, u32::try_from(n).unwrap_or(u32::MAX)) } {
        return -EFAULT;
    }
    rc
}

/// `MMUEXT_TLB_FLUSH_LOCAL`.
const MMUEXT_TLB_FLUSH_LOCAL: u32 = 6;
/// `MMUEXT_INVLPG_LOCAL`.
const MMUEXT_INVLPG_LOCAL: u32 = 7;
/// `MMUEXT_TLB_FLUSH_MULTI`.
const MMUEXT_TLB_FLUSH_MULTI: u32 = 8;
/// `MMUEXT_INVLPG_MULTI`.
const MMUEXT_INVLPG_MULTI: u32 = 9;
/// `MMUEXT_TLB_FLUSH_ALL`.
const MMUEXT_TLB_FLUSH_ALL: u32 = 10;
/// `MMUEXT_INVLPG_ALL`.
const MMUEXT_INVLPG_ALL: u32 = 11;

/// `mmuext_op(ops, count, done, domid)`: the TLB-flush commands (one vCPU, so local, multi
/// and all flush alike); other commands are not modelled (`-ENOSYS`).
///
/// # Safety
///
/// `ops` must point at `count` readable `struct mmuext_op` (24 bytes: `u32 cmd`, padding,
/// `arg1`, `arg2`) and `done` (if non-null) at a writable `u32`.
unsafe fn mmuext_op(
    st: &mut State,
    dom: DomId,
    ops: u64,
    count: u64,
    done: u64,
    domid: u64,
) -> i64 {
    if st.arch != SimArch::X86Pv {
        st.counters.bump(SimOp::MmuextOp);
        return -ENOSYS;
    }
    if domid != u64::from(DOMID_SELF) && domid != u64::from(dom) {
        st.counters.bump(SimOp::MmuextOp);
        return -EPERM;
    }
    let mut rc = 0;
    let mut n = 0u64;
    while n < count {
        let Some(addr) = elem::<MmuextOp>(ops, n) else {
            rc = -EFAULT;
            break;
        };
        // SAFETY: the caller guarantees `count` operations at `ops`. Read as the ABI struct,
        // not as three words: the padding after `cmd` is not initialised memory.
        let Some(MmuextOp { cmd, arg1, .. }) = (unsafe { gread::<MmuextOp>(addr) }) else {
            rc = -EFAULT;
            break;
        };
        st.counters.bump(SimOp::MmuextOp);
        if let Some(errno) = st.faults.fail_nth(SimOp::MmuextOp) {
            rc = -i64::from(errno);
            break;
        }
        match cmd {
            MMUEXT_TLB_FLUSH_LOCAL | MMUEXT_TLB_FLUSH_MULTI | MMUEXT_TLB_FLUSH_ALL => {
                st.tlb_pending.clear();
                st.counters.tlb_flushes += 1;
            }
            MMUEXT_INVLPG_LOCAL | MMUEXT_INVLPG_MULTI | MMUEXT_INVLPG_ALL => {
                if let Some(pfn) = arg1.checked_sub(st.linear_base).map(|off| off / PAGE) {
                    st.tlb_pending.remove(&pfn);
                }
                st.counters.tlb_flushes += 1;
            }
            _ => {
                rc = -ENOSYS;
                break;
            }
        }
        n += 1;
    }
    // SAFETY: the caller guarantees `done` is null or a writable u32.
    if done != 0 && !unsafe { gwrite::<u32>(done, u32::try_from(n).unwrap_or(u32::MAX)) } {
        return -EFAULT;
    }
    rc
}

/// `memory_op(cmd, arg)`.
///
/// # Safety
///
/// `arg` must be valid for the command.
unsafe fn memory_op(inner: &Inner, st: &mut State, dom: DomId, cmd: u64, arg: u64) -> i64 {
    if cmd & MEMOP_CMD_MASK == u64::from(XENMEM_EXCHANGE) {
        st.counters.bump(SimOp::MemoryExchange);
        if let Some(errno) = st.faults.fail_nth(SimOp::MemoryExchange) {
            return -i64::from(errno);
        }
        if st.arch == SimArch::Arm64 {
            return -EOPNOTSUPP;
        }
        // SAFETY: forwarded.
        unsafe { exchange(inner, st, dom, arg) }
    } else {
        simple_op(st, SimOp::MemoryOther, |_| -ENOSYS)
    }
}

/// `XENMEM_exchange`, after Xen's `memory_exchange` (xen/common/memory.c).
///
/// # Safety
///
/// `arg` must point at a writable `xen_memory_exchange` whose extent lists are valid.
unsafe fn exchange(inner: &Inner, st: &mut State, dom: DomId, arg: u64) -> i64 {
    // SAFETY: caller contract.
    let Some(exch) = (unsafe { gread::<XenMemoryExchange>(arg) }) else {
        return -EFAULT;
    };
    let partial = st.faults.partial_exchange();
    let loses = st.faults.exchange_loses_frames();
    let (inr, outr) = (exch.in_, exch.out);
    let (in_order, out_order) = (inr.extent_order, outr.extent_order);
    // Xen checks the orders first, against the calling domain's `max_order()` (its
    // `memop-max-order`), before any other argument: `-EPERM`, nothing exchanged.
    let Some(d) = st.dom_index(dom) else {
        return -EPERM;
    };
    let max = if st.doms[d].privileged {
        inner.cfg.max_order_privileged
    } else {
        inner.cfg.max_order_unprivileged
    };
    if in_order.max(out_order) > max {
        return -EPERM;
    }
    let sizes_ok = in_order < 64
        && out_order < 64
        && (u64::MAX >> in_order) >= inr.nr_extents
        && (u64::MAX >> out_order) >= outr.nr_extents
        && (inr.nr_extents << in_order) == (outr.nr_extents << out_order);
    if exch.nr_exchanged > inr.nr_extents || inr.domid != outr.domid || !sizes_ok {
        return -EINVAL;
    }
    if inr.domid != DOMID_SELF && inr.domid != dom {
        return -EPERM;
    }
    if exch.nr_exchanged == inr.nr_extents {
        return 0;
    }
    // CAST: usize fits u64; the lists are then read like every other guest address.
    let in_list = inr.extent_start.as_ptr().expose_provenance() as u64;
    let out_list = outr.extent_start.as_ptr().expose_provenance() as u64;
    if in_list == 0 || out_list == 0 {
        return -EFAULT;
    }
    let (in_chunk, out_chunk) = if in_order <= out_order {
        (out_order - in_order, 0)
    } else {
        (0, in_order - out_order)
    };
    let bits = outr.mem_flags & XENMEMF_ADDRESS_BITS_MASK;
    let limit = if bits == 0 || bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };

    let mut rc = 0;
    let mut nr_exchanged = exch.nr_exchanged;
    let first_chunk = exch.nr_exchanged >> in_chunk;
    let chunks = inr.nr_extents >> in_chunk;
    for i in first_chunk..chunks {
        if let Some(done) = partial
            && ((i + 1) << in_chunk) > done
        {
            rc = -ENOMEM;
            break;
        }
        // Steal a chunk's worth of input pages.
        let mut stolen: Vec<usize> = Vec::new();
        let mut err = 0;
        'steal: for j in 0..(1u64 << in_chunk) {
            let Some(a) = elem::<XenPfn>(in_list, (i << in_chunk) + j) else {
                err = -EFAULT;
                break;
            };
            // SAFETY: the input list holds in.nr_extents readable entries (caller contract).
            let Some(gmfn) = (unsafe { gread::<XenPfn>(a) }) else {
                err = -EFAULT;
                break;
            };
            for k in 0..(1u64 << in_order) {
                let idx = gmfn.checked_add(k).and_then(|m| st.layout.index(m));
                match idx {
                    // Xen's steal_page refuses a page the domain does not own or that has
                    // references beyond the allocation (mapped by a PTE or a grant).
                    Some(idx)
                        if st.owner[idx] == dom
                            && st.mapcount[idx] == 0
                            && !grant::frame_granted_active(st, d, st.layout.mfn(idx)) =>
                    {
                        st.owner[idx] = OWNER_STOLEN;
                        stolen.push(idx);
                    }
                    _ => {
                        err = -EINVAL;
                        break 'steal;
                    }
                }
            }
        }
        if let Some(kept) = loses
            && err == 0
        {
            // The chunk fails after the steal and only `kept` frames are given back; the
            // rest are freed, as Xen's `fail:` path does when it cannot reassign them.
            for (k, &idx) in stolen.iter().enumerate() {
                // CAST: usize fits u64.
                if (k as u64) < kept {
                    st.owner[idx] = dom;
                    continue;
                }
                let mfn = st.layout.mfn(idx);
                // CAST: mfn < m2p length (PV mode).
                let m = mfn as usize;
                if dom == DOMU {
                    let old_pfn = inner.m2p[m].load(Ordering::Relaxed);
                    if let Some(e) = usize::try_from(old_pfn)
                        .ok()
                        .and_then(|p| st.doms[d].p2m.get_mut(p))
                    {
                        *e = INVALID;
                    }
                }
                inner.m2p[m].store(INVALID, Ordering::Relaxed);
                st.owner[idx] = OWNER_FREE;
                st.scrub(idx);
                st.expected_owned[d] -= 1;
                st.lost_frames.push(mfn);
            }
            rc = -ENOMEM;
            break;
        }
        // Allocate a chunk's worth of output extents.
        let mut allocated: Vec<usize> = Vec::new();
        if err == 0 {
            for _ in 0..(1u64 << out_chunk) {
                match st.find_free_extent(out_order, limit) {
                    Some(start) => {
                        // CAST: out_order < 31, so the extent size fits usize.
                        for f in start..start + (1usize << out_order) {
                            st.owner[f] = dom;
                        }
                        allocated.push(start);
                    }
                    None => {
                        err = -ENOMEM;
                        break;
                    }
                }
            }
        }
        if err != 0 {
            for &idx in &stolen {
                st.owner[idx] = dom;
            }
            for &start in &allocated {
                for f in start..start + (1usize << out_order) {
                    st.owner[f] = OWNER_FREE;
                }
            }
            rc = err;
            break;
        }
        // Success: free (and scrub) the old pages.
        for &idx in &stolen {
            let mfn = st.layout.mfn(idx);
            // CAST: mfn < m2p length (PV mode).
            let m = mfn as usize;
            if dom == DOMU {
                let old_pfn = inner.m2p[m].load(Ordering::Relaxed);
                if let Some(e) = usize::try_from(old_pfn)
                    .ok()
                    .and_then(|p| st.doms[d].p2m.get_mut(p))
                {
                    *e = INVALID;
                }
            }
            inner.m2p[m].store(INVALID, Ordering::Relaxed);
            st.owner[idx] = OWNER_FREE;
            st.scrub(idx);
        }
        // Assign each output extent: M2P, then the new MFN into the out list.
        for (j, &start) in allocated.iter().enumerate() {
            let first_mfn = st.layout.mfn(start);
            // CAST: j < 2^out_chunk.
            let slot = (i << out_chunk) + j as u64;
            let Some(a) = elem::<XenPfn>(out_list, slot) else {
                rc = -EFAULT;
                continue;
            };
            // SAFETY: the out list holds out.nr_extents entries (caller contract).
            let Some(gpfn) = (unsafe { gread::<XenPfn>(a) }) else {
                rc = -EFAULT;
                continue;
            };
            for k in 0..(1u64 << out_order) {
                // CAST: MFNs are below the m2p length.
                inner.m2p[(first_mfn + k) as usize].store(gpfn.wrapping_add(k), Ordering::Relaxed);
                if dom == DOMU {
                    let p = usize::try_from(gpfn.wrapping_add(k)).ok();
                    if let Some(e) = p.and_then(|p| st.doms[d].p2m.get_mut(p)) {
                        *e = first_mfn + k;
                    }
                }
            }
            // SAFETY: as above, the entry is writable.
            if !unsafe { gwrite::<XenPfn>(a, first_mfn) } {
                rc = -EFAULT;
            }
        }
        st.counters.exchanged_frames += 1u64 << (in_chunk + in_order);
        nr_exchanged = (i + 1) << in_chunk;
    }
    if rc == 0 {
        nr_exchanged = inr.nr_extents;
    }
    // SAFETY: `arg` is a writable xen_memory_exchange; nr_exchanged is at offset 64.
    if !unsafe { gwrite::<u64>(arg + 64, nr_exchanged) } {
        return -EFAULT;
    }
    rc
}

/// `xen_version(cmd, arg)`.
///
/// # Safety
///
/// `arg` must be valid for the command (a `char[16]` or a `xen_feature_info`).
unsafe fn xen_version(st: &mut State, dom: DomId, cmd: u64, arg: u64) -> i64 {
    let Ok(cmd) = u32::try_from(cmd) else {
        return -ENOSYS;
    };
    match cmd {
        XENVER_VERSION => i64::from(st_version(st)),
        XENVER_EXTRAVERSION => {
            let mut buf = [0u8; 16];
            buf[..2].copy_from_slice(b".7");
            // SAFETY: XENVER_extraversion's argument is a writable char[16] (caller contract
            // of the hypercall).
            if unsafe { gwrite::<[u8; 16]>(arg, buf) } {
                0
            } else {
                -EFAULT
            }
        }
        XENVER_GET_FEATURES => {
            // SAFETY: the argument is a xen_feature_info { u32 submap_idx; u32 submap; }.
            let Some(idx) = (unsafe { gread::<u32>(arg) }) else {
                return -EFAULT;
            };
            let mut submap = 0u32;
            if idx == 0 {
                if dom == DOM0 {
                    submap |= 1 << XENFEAT_DOM0;
                }
                if st.arch == SimArch::Arm64 {
                    submap |= if dom == DOM0 {
                        1 << XENFEAT_DIRECT_MAPPED
                    } else {
                        1 << XENFEAT_NOT_DIRECT_MAPPED
                    };
                }
            }
            // SAFETY: as above; submap is at offset 4.
            if unsafe { gwrite::<u32>(arg + 4, submap) } {
                0
            } else {
                -EFAULT
            }
        }
        _ => -ENOSYS,
    }
}

fn st_version(st: &State) -> u32 {
    let (major, minor) = st.version;
    u32::from(major) << 16 | u32::from(minor)
}

/// `console_io(cmd, count, buf)`.
///
/// # Safety
///
/// For a write, `buf` must hold `count` readable bytes.
unsafe fn console_io(st: &mut State, dom: DomId, cmd: u64, count: u64, buf: u64) -> i64 {
    match u32::try_from(cmd) {
        Ok(CONSOLEIO_WRITE) => {
            if count == 0 {
                return 0;
            }
            if buf == 0 {
                return -EFAULT;
            }
            let Ok(n) = usize::try_from(count) else {
                return -EINVAL;
            };
            let Ok(a) = usize::try_from(buf) else {
                return -EFAULT;
            };
            let p = std::ptr::with_exposed_provenance::<u8>(a);
            // SAFETY: console_io's contract: `buf` holds `count` readable bytes.
            let bytes = unsafe { std::slice::from_raw_parts(p, n) };
            let text = String::from_utf8_lossy(bytes);
            if dom == DOM0 {
                st.console.push_str(&text);
            } else {
                for line in text.split_inclusive('\n') {
                    st.console.push_str(&format!("(d{dom}) {line}"));
                }
            }
            0
        }
        Ok(CONSOLEIO_READ) => 0,
        _ => -ENOSYS,
    }
}

/// `sched_op(cmd, arg)`.
///
/// # Safety
///
/// `arg` must be valid for the command.
unsafe fn sched_op(st: &mut State, cmd: u64, arg: u64) -> i64 {
    match u32::try_from(cmd) {
        Ok(SCHEDOP_YIELD) => 0,
        Ok(SCHEDOP_SHUTDOWN) => {
            // SAFETY: SCHEDOP_shutdown's argument is a `struct sched_shutdown { u32 reason }`.
            let Some(reason) = (unsafe { gread::<u32>(arg) }) else {
                return -EFAULT;
            };
            st.shutdown = Some(reason);
            0
        }
        _ => -ENOSYS,
    }
}
