//! Typed wrappers around [`Hypercall`]: each builds the arguments of one operation, passes
//! pointers as exposed addresses (`expose_provenance`), and maps Xen's result to a
//! `Result` whose error names the operation ([`XenError`]).
//!
//! Wrappers whose operation can change memory, page tables or mappings the caller must own
//! are `unsafe fn`; the ones that only read into a local structure or hand Xen a buffer to
//! read are safe. A slice longer than Xen's 32-bit count is refused with `E2BIG` before any
//! hypercall is made, and an empty slice returns at once without a hypercall.

use crate::Hypercall;
use crate::consts::*;
use crate::error::{Errno, XenError, check, check_zero};
use crate::structs::*;

/// The address of `p` as a hypercall argument, with its provenance exposed so that an
/// implementation of [`Hypercall`] can turn it back into a pointer.
#[inline]
fn addr<T>(p: *const T) -> u64 {
    // CAST: usize to u64 is lossless on the supported 64-bit targets.
    p.expose_provenance() as u64
}

/// The length of a request array as Xen's 32-bit count.
fn count(op: &'static str, len: usize) -> Result<u64, XenError> {
    u32::try_from(len)
        .map(u64::from)
        .map_err(|_| XenError::new(op, Errno::E2BIG))
}

/// Xen's name of hypercall `op` (`"__HYPERVISOR_memory_op"` is shown as `"memory_op"`), or
/// `"hypercall"` for one this crate does not name.
#[must_use]
pub const fn hypercall_name(op: u64) -> &'static str {
    // CAST: only values that fit in u32 can match a hypercall number.
    if op > u32::MAX as u64 {
        return "hypercall";
    }
    match op as u32 {
        HYPERVISOR_SET_TRAP_TABLE => "set_trap_table",
        HYPERVISOR_MMU_UPDATE => "mmu_update",
        HYPERVISOR_SET_CALLBACKS => "set_callbacks",
        HYPERVISOR_PLATFORM_OP => "platform_op",
        HYPERVISOR_MEMORY_OP => "memory_op",
        HYPERVISOR_MULTICALL => "multicall",
        HYPERVISOR_UPDATE_VA_MAPPING => "update_va_mapping",
        HYPERVISOR_SET_TIMER_OP => "set_timer_op",
        HYPERVISOR_XEN_VERSION => "xen_version",
        HYPERVISOR_CONSOLE_IO => "console_io",
        HYPERVISOR_GRANT_TABLE_OP => "grant_table_op",
        HYPERVISOR_VM_ASSIST => "vm_assist",
        HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN => "update_va_mapping_otherdomain",
        HYPERVISOR_IRET => "iret",
        HYPERVISOR_VCPU_OP => "vcpu_op",
        HYPERVISOR_SET_SEGMENT_BASE => "set_segment_base",
        HYPERVISOR_MMUEXT_OP => "mmuext_op",
        HYPERVISOR_SCHED_OP => "sched_op",
        HYPERVISOR_CALLBACK_OP => "callback_op",
        HYPERVISOR_EVENT_CHANNEL_OP => "event_channel_op",
        HYPERVISOR_PHYSDEV_OP => "physdev_op",
        HYPERVISOR_HVM_OP => "hvm_op",
        HYPERVISOR_DM_OP => "dm_op",
        _ => "hypercall",
    }
}

/// Xen's name of memory operation `cmd` (`"XENMEM_exchange"`), or `"XENMEM"` for one this
/// crate does not name.
#[must_use]
pub const fn xenmem_name(cmd: u32) -> &'static str {
    match cmd {
        XENMEM_INCREASE_RESERVATION => "XENMEM_increase_reservation",
        XENMEM_DECREASE_RESERVATION => "XENMEM_decrease_reservation",
        XENMEM_MAXIMUM_RAM_PAGE => "XENMEM_maximum_ram_page",
        XENMEM_CURRENT_RESERVATION => "XENMEM_current_reservation",
        XENMEM_MAXIMUM_RESERVATION => "XENMEM_maximum_reservation",
        XENMEM_MACHPHYS_MFN_LIST => "XENMEM_machphys_mfn_list",
        XENMEM_POPULATE_PHYSMAP => "XENMEM_populate_physmap",
        XENMEM_ADD_TO_PHYSMAP => "XENMEM_add_to_physmap",
        XENMEM_MEMORY_MAP => "XENMEM_memory_map",
        XENMEM_MACHINE_MEMORY_MAP => "XENMEM_machine_memory_map",
        XENMEM_EXCHANGE => "XENMEM_exchange",
        XENMEM_MACHPHYS_MAPPING => "XENMEM_machphys_mapping",
        XENMEM_MAXIMUM_GPFN => "XENMEM_maximum_gpfn",
        XENMEM_REMOVE_FROM_PHYSMAP => "XENMEM_remove_from_physmap",
        XENMEM_ADD_TO_PHYSMAP_BATCH => "XENMEM_add_to_physmap_batch",
        XENMEM_ACQUIRE_RESOURCE => "XENMEM_acquire_resource",
        _ => "XENMEM",
    }
}

/// `memory_op(cmd, arg)` with any argument, for operations without a typed wrapper.
///
/// # Errors
///
/// [`XenError`] named after `cmd` ([`xenmem_name`]) with Xen's errno.
///
/// # Safety
///
/// `arg` must point at the structure Xen's definition of `cmd` reads and writes (or be null
/// where Xen allows it), valid for the call, and the operation must be one the caller may
/// perform on memory it owns.
pub unsafe fn memory_op<H, T>(h: &H, cmd: u32, arg: *mut T) -> Result<u64, XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: the caller guarantees that `arg` fits `cmd` and that the operation is allowed.
    let rc = unsafe { h.hypercall(HYPERVISOR_MEMORY_OP, [u64::from(cmd), addr(arg), 0, 0, 0]) };
    check(xenmem_name(cmd), rc)
}

/// `XENMEM_exchange`: give up the extents in `xchg.in_` for new ones described by
/// `xchg.out` (for example below an address limit, or machine-contiguous).
///
/// Returns `Ok` only if Xen returned 0, which means every input extent was exchanged. Xen
/// reports progress in `xchg.nr_exchanged` in both cases: on failure the first
/// `nr_exchanged` input extents *were* exchanged (their replacements are in the out list)
/// and the rest are still the caller's; the caller must read it to know which frames it
/// owns. For a PV guest Xen writes the new MFNs over `out.extent_start` and updates the M2P
/// itself; the caller updates its P2M and page tables.
///
/// # Errors
///
/// `XENMEM_exchange` with Xen's errno (`ENOMEM` when no memory satisfies the limit, `EINVAL`,
/// `EPERM`, `EFAULT`, `EOPNOTSUPP` where the operation does not exist, as on Arm), or an
/// unexpected positive result.
///
/// # Safety
///
/// Both frame lists in `xchg` must be valid for `nr_extents` entries (read, and for `out`
/// written) for the duration of the call, the input frames must be the caller's own and not
/// in use for anything else, and the caller must be ready for the guest-physical pages to
/// be backed by different machine frames afterwards.
pub unsafe fn memory_exchange<H>(h: &H, xchg: &mut XenMemoryExchange) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    let p: *mut XenMemoryExchange = xchg;
    // SAFETY: `p` points at a live exchange request; the caller guarantees its frame lists
    // and the right to give up the input frames.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_MEMORY_OP,
            [u64::from(XENMEM_EXCHANGE), addr(p), 0, 0, 0],
        )
    };
    check_zero("XENMEM_exchange", rc)
}

/// Shared body of the reservation operations, which return the number of extents done.
///
/// # Safety
///
/// As for [`populate_physmap`].
unsafe fn reservation_op<H>(h: &H, cmd: u32, r: &mut XenMemoryReservation) -> Result<u64, XenError>
where
    H: Hypercall + ?Sized,
{
    let op = xenmem_name(cmd);
    let p: *mut XenMemoryReservation = r;
    // SAFETY: `p` points at a live reservation; the caller guarantees its frame list and the
    // right to change the reservation.
    let rc = unsafe { h.hypercall(HYPERVISOR_MEMORY_OP, [u64::from(cmd), addr(p), 0, 0, 0]) };
    let done = check(op, rc)?;
    if done > r.nr_extents {
        return Err(XenError::unexpected(op, rc));
    }
    Ok(done)
}

/// `XENMEM_populate_physmap`: back the GPFNs in `r.extent_start` with new memory.
///
/// Returns the number of extents populated, which may be less than `r.nr_extents` (Xen stops
/// at the first failure); the first that many entries of the list were populated (and for a
/// PV guest hold the new MFNs).
///
/// # Errors
///
/// `XENMEM_populate_physmap` with Xen's errno, or an unexpected result above `nr_extents`.
///
/// # Safety
///
/// The frame list must be valid for `nr_extents` reads and writes for the call, and the
/// GPFNs must be unpopulated guest-physical frames the caller manages.
pub unsafe fn populate_physmap<H>(h: &H, r: &mut XenMemoryReservation) -> Result<u64, XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: forwarded from the caller.
    unsafe { reservation_op(h, XENMEM_POPULATE_PHYSMAP, r) }
}

/// `XENMEM_decrease_reservation`: give the frames in `r.extent_start` back to Xen.
///
/// Returns the number of extents released, which may be less than `r.nr_extents`.
///
/// # Errors
///
/// `XENMEM_decrease_reservation` with Xen's errno, or an unexpected result above
/// `nr_extents`.
///
/// # Safety
///
/// The frame list must be valid for `nr_extents` reads for the call, and nothing may use the
/// released frames afterwards (no mapping, no DMA).
pub unsafe fn decrease_reservation<H>(h: &H, r: &mut XenMemoryReservation) -> Result<u64, XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: forwarded from the caller.
    unsafe { reservation_op(h, XENMEM_DECREASE_RESERVATION, r) }
}

/// `XENMEM_add_to_physmap`: map a page of `x.space` (the shared-info page, a grant-table
/// frame, ...) at GPFN `x.gpfn`.
///
/// # Errors
///
/// `XENMEM_add_to_physmap` with Xen's errno.
///
/// # Safety
///
/// `x.gpfn` must be a guest-physical frame the caller manages and does not use for
/// anything else: whatever backed it is replaced.
pub unsafe fn add_to_physmap<H>(h: &H, x: &mut XenAddToPhysmap) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    let p: *mut XenAddToPhysmap = x;
    // SAFETY: `p` points at a live request; the caller guarantees the target frame.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_MEMORY_OP,
            [u64::from(XENMEM_ADD_TO_PHYSMAP), addr(p), 0, 0, 0],
        )
    };
    check("XENMEM_add_to_physmap", rc).map(|_| ())
}

/// `XENMEM_machphys_mapping`: where the read-only M2P table is mapped (x86 PV).
///
/// # Errors
///
/// `XENMEM_machphys_mapping` with Xen's errno (`ENOSYS` where there is no M2P, as on Arm).
pub fn machphys_mapping<H>(h: &H) -> Result<XenMachphysMapping, XenError>
where
    H: Hypercall + ?Sized,
{
    let mut m = XenMachphysMapping::default();
    let p: *mut XenMachphysMapping = &mut m;
    // SAFETY: `p` points at a local structure that Xen only writes; the operation changes no
    // guest memory.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_MEMORY_OP,
            [u64::from(XENMEM_MACHPHYS_MAPPING), addr(p), 0, 0, 0],
        )
    };
    check("XENMEM_machphys_mapping", rc).map(|_| m)
}

/// `multicall(entries, nr)`: run the hypercalls in `entries` in one trap.
///
/// `Ok` means Xen ran the batch; each entry's own result is in its `result` field (see
/// [`first_failed`]).
///
/// # Errors
///
/// `multicall` with Xen's errno (for the batch as a whole), or `E2BIG` for more than
/// `u32::MAX` entries.
///
/// # Safety
///
/// Every entry must be a call the caller could make directly under that call's own safety
/// rules, with its pointers valid for the duration of the multicall.
pub unsafe fn multicall<H>(h: &H, entries: &mut [MulticallEntry]) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    let nr = count("multicall", entries.len())?;
    if nr == 0 {
        return Ok(());
    }
    // SAFETY: `entries` is a live array of `nr` entries; the caller guarantees each call.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_MULTICALL,
            [addr(entries.as_mut_ptr()), nr, 0, 0, 0],
        )
    };
    check("multicall", rc).map(|_| ())
}

/// The first entry of a completed multicall whose `result` is negative, with its index and
/// an error named after its hypercall.
#[must_use]
pub fn first_failed(entries: &[MulticallEntry]) -> Option<(usize, XenError)> {
    entries.iter().enumerate().find_map(|(i, e)| {
        check(hypercall_name(e.op), e.result)
            .err()
            .map(|err| (i, err))
    })
}

/// `update_va_mapping(va, pte, flags)` (x86 PV): set the page-table entry of virtual address
/// `va` to `pte`, flushing as `flags` (`UVMF_*`) says.
///
/// # Errors
///
/// `update_va_mapping` with Xen's errno.
///
/// # Safety
///
/// `va` must be a page of the caller's address space whose mapping the caller manages, no
/// reference into it may outlive the change unless the new mapping keeps it valid, and `pte`
/// must map a frame the caller owns.
pub unsafe fn update_va_mapping<H>(h: &H, va: u64, pte: u64, flags: u64) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: the caller guarantees the page and the new entry.
    let rc = unsafe { h.hypercall(HYPERVISOR_UPDATE_VA_MAPPING, [va, pte, flags, 0, 0]) };
    check("update_va_mapping", rc).map(|_| ())
}

/// The outcome of [`mmu_update_partial`] and [`mmuext_op_partial`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOutcome {
    /// How many requests Xen completed (its `success_count`).
    pub done: u32,
    /// Whether the batch as a whole succeeded.
    pub result: Result<(), XenError>,
}

/// `mmu_update(reqs, count, &done, domid)` (x86 PV) returning the completed count also on
/// failure, so that the caller can undo or resume.
///
/// # Safety
///
/// As for [`mmu_update`].
pub unsafe fn mmu_update_partial<H>(h: &H, reqs: &[MmuUpdate], domid: DomId) -> BatchOutcome
where
    H: Hypercall + ?Sized,
{
    // SAFETY: forwarded from the caller.
    unsafe { batch(h, HYPERVISOR_MMU_UPDATE, "mmu_update", reqs, domid) }
}

/// `mmu_update(reqs, count, &done, domid)` (x86 PV): apply page-table and M2P updates;
/// returns how many were done (all of them on success).
///
/// # Errors
///
/// `mmu_update` with Xen's errno (the completed count is lost: use
/// [`mmu_update_partial`] to keep it), or `E2BIG` for more than `u32::MAX` requests.
///
/// # Safety
///
/// Every request must change only page tables or M2P entries of frames the caller owns, and
/// no reference may outlive a mapping it removes.
pub unsafe fn mmu_update<H>(h: &H, reqs: &[MmuUpdate], domid: DomId) -> Result<u32, XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: forwarded from the caller.
    let out = unsafe { mmu_update_partial(h, reqs, domid) };
    out.result.map(|()| out.done)
}

/// `mmuext_op(ops, count, &done, domid)` (x86 PV) returning the completed count also on
/// failure.
///
/// # Safety
///
/// As for [`mmuext_op`].
pub unsafe fn mmuext_op_partial<H>(h: &H, ops: &[MmuextOp], domid: DomId) -> BatchOutcome
where
    H: Hypercall + ?Sized,
{
    // SAFETY: forwarded from the caller.
    unsafe { batch(h, HYPERVISOR_MMUEXT_OP, "mmuext_op", ops, domid) }
}

/// `mmuext_op(ops, count, &done, domid)` (x86 PV): pin tables, flush TLBs and so on; returns
/// how many were done.
///
/// # Errors
///
/// `mmuext_op` with Xen's errno, or `E2BIG` for more than `u32::MAX` operations.
///
/// # Safety
///
/// Every operation must concern only page tables and frames the caller owns; pointers in
/// `arg2` (vCPU masks) must be valid for the call.
pub unsafe fn mmuext_op<H>(h: &H, ops: &[MmuextOp], domid: DomId) -> Result<u32, XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: forwarded from the caller.
    let out = unsafe { mmuext_op_partial(h, ops, domid) };
    out.result.map(|()| out.done)
}

/// Shared body of `mmu_update` and `mmuext_op`, which have the same argument shape.
///
/// # Safety
///
/// `reqs` must be requests for hypercall `hc` that the caller may make.
unsafe fn batch<H, T>(h: &H, hc: u32, op: &'static str, reqs: &[T], domid: DomId) -> BatchOutcome
where
    H: Hypercall + ?Sized,
{
    let nr = match count(op, reqs.len()) {
        Ok(0) => {
            return BatchOutcome {
                done: 0,
                result: Ok(()),
            };
        }
        Ok(nr) => nr,
        Err(e) => {
            return BatchOutcome {
                done: 0,
                result: Err(e),
            };
        }
    };
    let mut done: u32 = 0;
    let pdone: *mut u32 = &mut done;
    // SAFETY: `reqs` is a live array of `nr` requests, `pdone` a live counter; the caller
    // guarantees the requests.
    let rc = unsafe {
        h.hypercall(
            hc,
            [addr(reqs.as_ptr()), nr, addr(pdone), u64::from(domid), 0],
        )
    };
    let result = check_zero(op, rc);
    if u64::from(done) > nr {
        return BatchOutcome {
            done: 0,
            result: Err(XenError::unexpected(op, i64::from(done))),
        };
    }
    BatchOutcome { done, result }
}

/// Shared body of the grant-table operations that take an array.
///
/// # Safety
///
/// `reqs` must be requests for `cmd` that the caller may make.
unsafe fn gnttab_array<H, T>(
    h: &H,
    cmd: u32,
    op: &'static str,
    reqs: &mut [T],
) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    let nr = count(op, reqs.len())?;
    if nr == 0 {
        return Ok(());
    }
    // SAFETY: `reqs` is a live array of `nr` requests; the caller guarantees them.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            [u64::from(cmd), addr(reqs.as_mut_ptr()), nr, 0, 0],
        )
    };
    check_zero(op, rc)
}

/// `GNTTABOP_map_grant_ref`: map the granted pages described by `reqs`.
///
/// `Ok` means Xen processed the array; each entry's `status` (a [`GntStatus`]) says whether
/// that mapping succeeded, and on success `handle` and `dev_bus_addr` are filled in.
///
/// [`GntStatus`]: crate::GntStatus
///
/// # Errors
///
/// `GNTTABOP_map_grant_ref` with Xen's errno, or `E2BIG` for more than `u32::MAX` entries.
///
/// # Safety
///
/// For `GNTMAP_host_map`, `host_addr` must be an address range the caller manages and
/// nothing may rely on what was mapped there before.
pub unsafe fn grant_map<H>(h: &H, reqs: &mut [GnttabMapGrantRef]) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: forwarded from the caller.
    unsafe { gnttab_array(h, GNTTABOP_MAP_GRANT_REF, "GNTTABOP_map_grant_ref", reqs) }
}

/// `GNTTABOP_unmap_grant_ref`: undo mappings made by [`grant_map`]; each entry's `status`
/// says whether that unmap succeeded.
///
/// # Errors
///
/// `GNTTABOP_unmap_grant_ref` with Xen's errno, or `E2BIG` for more than `u32::MAX` entries.
///
/// # Safety
///
/// Nothing (no reference, no device) may use the mapped pages afterwards.
pub unsafe fn grant_unmap<H>(h: &H, reqs: &mut [GnttabUnmapGrantRef]) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: forwarded from the caller.
    unsafe {
        gnttab_array(
            h,
            GNTTABOP_UNMAP_GRANT_REF,
            "GNTTABOP_unmap_grant_ref",
            reqs,
        )
    }
}

/// `GNTTABOP_cache_flush` with one request: clean and/or invalidate the data cache for
/// `offset..offset + length` of one 4 KiB page (Arm; used for foreign pages a 1:1 dom0 cannot
/// reach through its own mappings).
///
/// # Errors
///
/// `GNTTABOP_cache_flush` with Xen's errno: `EINVAL` for a page that is neither the caller's
/// nor granted to it or a range crossing the page, `EOPNOTSUPP` with
/// `GNTTAB_CACHE_SOURCE_GREF`, `ENOSYS` where the operation does not exist.
///
/// # Safety
///
/// An invalidate without clean discards data the CPU wrote but did not write back: the
/// caller must own the page's contents and want exactly that.
pub unsafe fn cache_flush<H>(h: &H, req: &mut GnttabCacheFlush) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    let p: *mut GnttabCacheFlush = req;
    // SAFETY: `p` points at one live request; the caller guarantees the cache operation.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            [u64::from(GNTTABOP_CACHE_FLUSH), addr(p), 1, 0, 0],
        )
    };
    check_zero("GNTTABOP_cache_flush", rc)
}

/// Whether `GNTTABOP_cache_flush` exists, learnt as Linux's `xen_mm_init` does: the zeroed
/// request (length 0, op 0) does nothing, so any answer other than `ENOSYS` means the
/// operation is there.
#[must_use]
pub fn cache_flush_probe<H>(h: &H) -> bool
where
    H: Hypercall + ?Sized,
{
    let mut req = GnttabCacheFlush::probe();
    let p: *mut GnttabCacheFlush = &mut req;
    // SAFETY: `p` points at a local request of length 0 and op 0, which Xen answers without
    // touching any memory or cache.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_GRANT_TABLE_OP,
            [u64::from(GNTTABOP_CACHE_FLUSH), addr(p), 1, 0, 0],
        )
    };
    rc != -Errno::ENOSYS.value()
}

/// A Xen version, as `XENVER_version` returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct XenVersion {
    /// The major version (4 for Xen 4.17).
    pub major: u16,
    /// The minor version (17 for Xen 4.17).
    pub minor: u16,
}

impl XenVersion {
    /// The first release whose x86 build has no `GNTTABOP_cache_flush` (Xen 4.21: the
    /// operation is built for Arm only, `CONFIG_HAS_GRANT_CACHE_FLUSH`).
    pub const X86_NO_CACHE_FLUSH: Self = Self {
        major: 4,
        minor: 21,
    };

    /// Whether Xen of this version has `GNTTABOP_cache_flush` on x86. From 4.21 on it
    /// answers `ENOSYS`, which is normal there: x86 DMA is cache-coherent and nothing on x86
    /// needs the operation. Arm keeps it in every release (there an `ENOSYS` means an old
    /// Xen, whose foreign pages must be bounced for non-coherent devices).
    #[must_use]
    pub fn x86_has_cache_flush(self) -> bool {
        self < Self::X86_NO_CACHE_FLUSH
    }
}

impl core::fmt::Display for XenVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// `XENVER_version`: the hypervisor's version.
///
/// # Errors
///
/// `XENVER_version` with Xen's errno, or an unexpected result above 32 bits.
pub fn xen_version<H>(h: &H) -> Result<XenVersion, XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: XENVER_version takes a null argument and touches no guest memory.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_XEN_VERSION,
            [u64::from(XENVER_VERSION), 0, 0, 0, 0],
        )
    };
    let v = check("XENVER_version", rc)?;
    let v = u32::try_from(v).map_err(|_| XenError::unexpected("XENVER_version", rc))?;
    Ok(XenVersion {
        // CAST: the shift and the mask leave 16 bits each.
        major: (v >> 16) as u16,
        minor: (v & 0xffff) as u16,
    })
}

/// `XENVER_get_features`: the 32-bit feature submap number `submap_idx` (bit `n` is feature
/// `32 * submap_idx + n`).
///
/// # Errors
///
/// `XENVER_get_features` with Xen's errno (`EINVAL` for a submap Xen does not have).
pub fn get_features<H>(h: &H, submap_idx: u32) -> Result<u32, XenError>
where
    H: Hypercall + ?Sized,
{
    let mut fi = XenFeatureInfo {
        submap_idx,
        submap: 0,
    };
    let p: *mut XenFeatureInfo = &mut fi;
    // SAFETY: `p` points at a local structure Xen reads and writes; no other memory changes.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_XEN_VERSION,
            [u64::from(XENVER_GET_FEATURES), addr(p), 0, 0, 0],
        )
    };
    check("XENVER_get_features", rc).map(|_| fi.submap)
}

/// Whether feature `feature` (`XENFEAT_*`) is set.
///
/// # Errors
///
/// As for [`get_features`].
pub fn has_feature<H>(h: &H, feature: u32) -> Result<bool, XenError>
where
    H: Hypercall + ?Sized,
{
    let submap = get_features(h, feature / 32)?;
    Ok(submap & (1 << (feature % 32)) != 0)
}

/// `console_io(CONSOLEIO_write, len, buf)`: print `bytes` on Xen's console (dom0 only, or a
/// debug build of Xen).
///
/// # Errors
///
/// `CONSOLEIO_write` with Xen's errno, or `E2BIG` for more than `u32::MAX` bytes.
pub fn console_write<H>(h: &H, bytes: &[u8]) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    let len = count("CONSOLEIO_write", bytes.len())?;
    if len == 0 {
        return Ok(());
    }
    // SAFETY: Xen only reads `len` bytes of the live slice `bytes`.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_CONSOLE_IO,
            [u64::from(CONSOLEIO_WRITE), len, addr(bytes.as_ptr()), 0, 0],
        )
    };
    check("CONSOLEIO_write", rc).map(|_| ())
}

/// `SCHEDOP_shutdown`: stop this domain for `reason` (`SHUTDOWN_*`). On real Xen the call
/// does not return when it succeeds; a simulator may return `Ok`.
///
/// # Errors
///
/// `SCHEDOP_shutdown` with Xen's errno (`EINVAL` for an unknown reason).
pub fn sched_shutdown<H>(h: &H, reason: u32) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    let mut arg = SchedShutdown { reason };
    let p: *mut SchedShutdown = &mut arg;
    // SAFETY: Xen only reads the local structure at `p`.
    let rc = unsafe {
        h.hypercall(
            HYPERVISOR_SCHED_OP,
            [u64::from(SCHEDOP_SHUTDOWN), addr(p), 0, 0, 0],
        )
    };
    check("SCHEDOP_shutdown", rc).map(|_| ())
}

/// `SCHEDOP_yield`: give up the rest of this vCPU's time slice.
///
/// # Errors
///
/// `SCHEDOP_yield` with Xen's errno.
pub fn sched_yield<H>(h: &H) -> Result<(), XenError>
where
    H: Hypercall + ?Sized,
{
    // SAFETY: SCHEDOP_yield takes no argument and touches no guest memory.
    let rc = unsafe { h.hypercall(HYPERVISOR_SCHED_OP, [u64::from(SCHEDOP_YIELD), 0, 0, 0, 0]) };
    check("SCHEDOP_yield", rc).map(|_| ())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::boxed::Box;
    use std::cell::RefCell;
    use std::string::ToString;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::GntStatus;

    /// A fake hypervisor that records every call and answers with a closure, which may read
    /// and write the structures the call points at.
    struct Recorder {
        calls: RefCell<Vec<(u32, [u64; 5])>>,
        answer: Box<dyn Fn(u32, [u64; 5]) -> i64>,
    }

    impl Recorder {
        fn new(answer: impl Fn(u32, [u64; 5]) -> i64 + 'static) -> Self {
            Self {
                calls: RefCell::new(Vec::new()),
                answer: Box::new(answer),
            }
        }

        fn calls(&self) -> Vec<(u32, [u64; 5])> {
            self.calls.borrow().clone()
        }
    }

    // SAFETY: the recorder itself touches no memory; the answer closures of these tests read
    // and write only the structures the wrappers pass, as Xen would.
    unsafe impl Hypercall for Recorder {
        unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
            self.calls.borrow_mut().push((op, args));
            (self.answer)(op, args)
        }
    }

    /// Turns an argument back into a pointer, as a simulator does.
    fn ptr<T>(a: u64) -> *mut T {
        core::ptr::with_exposed_provenance_mut(usize::try_from(a).unwrap())
    }

    #[test]
    fn memory_exchange_passes_the_request_and_maps_errors() {
        let mut ins = [5u64, 6];
        let mut outs = [0u64; 1];
        let mut x = XenMemoryExchange {
            in_: XenMemoryReservation::with_frames(&mut ins, 0, 0),
            out: XenMemoryReservation::with_frames(
                &mut outs,
                1,
                mem_flags(32, XenMemFlags::empty()),
            ),
            nr_exchanged: 0,
        };
        let h = Recorder::new(|op, a| {
            assert_eq!(op, HYPERVISOR_MEMORY_OP);
            assert_eq!(a[0], u64::from(XENMEM_EXCHANGE));
            // SAFETY: the wrapper passes a live exchange request.
            let x = unsafe { &mut *ptr::<XenMemoryExchange>(a[1]) };
            assert_eq!((x.in_.nr_extents, x.in_.extent_order), (2, 0));
            assert_eq!(
                (x.out.nr_extents, x.out.extent_order, x.out.mem_flags),
                (1, 1, 32)
            );
            assert_eq!(x.in_.domid, DOMID_SELF);
            // SAFETY: the in list holds two frames.
            assert_eq!(unsafe { *x.in_.extent_start.as_ptr().add(1) }, 6);
            // SAFETY: the out list holds one frame.
            unsafe { *x.out.extent_start.as_ptr() = 0x1234 };
            x.nr_exchanged = 2;
            0
        });
        // SAFETY: the fake only touches the request and its lists.
        unsafe { memory_exchange(&h, &mut x) }.unwrap();
        assert_eq!(x.nr_exchanged, 2);
        assert_eq!(outs[0], 0x1234);
        assert_eq!(h.calls()[0].1[2..], [0, 0, 0]);

        let h = Recorder::new(|_, _| -12);
        let mut x = XenMemoryExchange::default();
        // SAFETY: the fake touches nothing.
        let e = unsafe { memory_exchange(&h, &mut x) }.unwrap_err();
        assert_eq!(e, XenError::new("XENMEM_exchange", Errno::ENOMEM));
        assert_eq!(e.to_string(), "XENMEM_exchange: ENOMEM (12)");

        let h = Recorder::new(|_, _| 1);
        // SAFETY: the fake touches nothing.
        let e = unsafe { memory_exchange(&h, &mut x) }.unwrap_err();
        assert_eq!(e, XenError::unexpected("XENMEM_exchange", 1));
    }

    #[test]
    fn reservation_ops_return_the_count_and_reject_too_many() {
        let mut frames = [1u64, 2, 3];
        let mut r = XenMemoryReservation::with_frames(&mut frames, 0, 0);
        let h = Recorder::new(|_, _| 2);
        // SAFETY: the fake touches nothing.
        assert_eq!(unsafe { populate_physmap(&h, &mut r) }, Ok(2));
        // SAFETY: as above.
        assert_eq!(unsafe { decrease_reservation(&h, &mut r) }, Ok(2));
        let calls = h.calls();
        assert_eq!(calls[0].1[0], u64::from(XENMEM_POPULATE_PHYSMAP));
        assert_eq!(calls[1].1[0], u64::from(XENMEM_DECREASE_RESERVATION));
        let rp: *mut XenMemoryReservation = &mut r;
        assert_eq!(calls[0].1[1], addr(rp));

        let h = Recorder::new(|_, _| 4);
        // SAFETY: the fake touches nothing.
        let e = unsafe { populate_physmap(&h, &mut r) }.unwrap_err();
        assert_eq!(e, XenError::unexpected("XENMEM_populate_physmap", 4));
    }

    #[test]
    fn raw_memory_op_names_the_command() {
        let h = Recorder::new(|_, _| -1);
        let mut x = 0u64;
        // SAFETY: the fake touches nothing.
        let e = unsafe { memory_op(&h, XENMEM_MAXIMUM_GPFN, &raw mut x) }.unwrap_err();
        assert_eq!(e.to_string(), "XENMEM_maximum_gpfn: EPERM (1)");
        // SAFETY: as above.
        let e = unsafe { memory_op(&h, 99, &raw mut x) }.unwrap_err();
        assert_eq!(e.op, "XENMEM");
    }

    #[test]
    fn add_to_physmap_and_machphys_mapping() {
        let h = Recorder::new(|op, a| {
            assert_eq!(op, HYPERVISOR_MEMORY_OP);
            match u32::try_from(a[0]).unwrap() {
                XENMEM_ADD_TO_PHYSMAP => {
                    // SAFETY: the wrapper passes a live request.
                    let x = unsafe { &*ptr::<XenAddToPhysmap>(a[1]) };
                    assert_eq!(
                        (x.domid, x.space, x.idx, x.gpfn),
                        (DOMID_SELF, 1, 0, 0x38000)
                    );
                    0
                }
                XENMEM_MACHPHYS_MAPPING => {
                    // SAFETY: the wrapper passes a live result structure.
                    unsafe {
                        *ptr::<XenMachphysMapping>(a[1]) = XenMachphysMapping {
                            v_start: MACH2PHYS_VIRT_START,
                            v_end: MACH2PHYS_VIRT_END,
                            max_mfn: 0xf_ffff,
                        };
                    }
                    0
                }
                _ => -38,
            }
        });
        let mut x = XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: 0,
            gpfn: 0x38000,
        };
        // SAFETY: the fake only reads the request.
        unsafe { add_to_physmap(&h, &mut x) }.unwrap();
        let m = machphys_mapping(&h).unwrap();
        assert_eq!(m.v_start, MACH2PHYS_VIRT_START);
        assert_eq!(m.max_mfn, 0xf_ffff);
    }

    #[test]
    fn multicall_passes_entries_and_reports_the_first_failure() {
        let mut e = [
            MulticallEntry::update_va_mapping(0x1000, 0x2067, UVMF_INVLPG | UVMF_ALL),
            MulticallEntry::update_va_mapping(0x2000, 0x3067, UVMF_NONE),
        ];
        let h = Recorder::new(|op, a| {
            assert_eq!(op, HYPERVISOR_MULTICALL);
            assert_eq!(a[1], 2);
            // SAFETY: the wrapper passes two live entries.
            let es = unsafe { core::slice::from_raw_parts_mut(ptr::<MulticallEntry>(a[0]), 2) };
            assert_eq!(es[0].op, u64::from(HYPERVISOR_UPDATE_VA_MAPPING));
            assert_eq!(es[0].args, [0x1000, 0x2067, 6, 0, 0, 0]);
            es[1].result = -22;
            0
        });
        // SAFETY: the fake only writes the results.
        unsafe { multicall(&h, &mut e) }.unwrap();
        let (i, err) = first_failed(&e).unwrap();
        assert_eq!(i, 1);
        assert_eq!(err.to_string(), "update_va_mapping: EINVAL (22)");
        e[1].result = 0;
        assert!(first_failed(&e).is_none());

        // SAFETY: an empty batch makes no hypercall.
        unsafe { multicall(&h, &mut []) }.unwrap();
        assert_eq!(h.calls().len(), 1);
    }

    #[test]
    fn update_va_mapping_passes_its_arguments() {
        let h = Recorder::new(|_, _| -14);
        // SAFETY: the fake touches nothing.
        let e = unsafe { update_va_mapping(&h, 0xdead_0000, 0x5063, UVMF_TLB_FLUSH) }.unwrap_err();
        assert_eq!(e, XenError::new("update_va_mapping", Errno::EFAULT));
        assert_eq!(
            h.calls(),
            vec![(HYPERVISOR_UPDATE_VA_MAPPING, [0xdead_0000, 0x5063, 1, 0, 0])]
        );
    }

    #[test]
    fn mmu_update_returns_the_count_also_on_failure() {
        let reqs = [
            MmuUpdate::machphys(0x100, 7).unwrap(),
            MmuUpdate::normal(0x5008, 0x1067).unwrap(),
        ];
        assert_eq!(reqs[0].ptr, 0x10_0001);
        assert_eq!(reqs[1].ptr, 0x5008);
        let answer = |fail: bool| {
            move |op: u32, a: [u64; 5]| {
                assert_eq!(op, HYPERVISOR_MMU_UPDATE);
                assert_eq!((a[1], a[3]), (2, u64::from(DOMID_SELF)));
                // SAFETY: the wrapper passes two live requests and a live counter.
                let r = unsafe { core::slice::from_raw_parts(ptr::<MmuUpdate>(a[0]), 2) };
                assert_eq!(
                    r[0],
                    MmuUpdate {
                        ptr: 0x10_0001,
                        val: 7
                    }
                );
                // SAFETY: as above.
                unsafe { *ptr::<u32>(a[2]) = if fail { 1 } else { 2 } };
                if fail { -22 } else { 0 }
            }
        };
        let h = Recorder::new(answer(false));
        // SAFETY: the fake only reads the requests.
        assert_eq!(unsafe { mmu_update(&h, &reqs, DOMID_SELF) }, Ok(2));
        let h = Recorder::new(answer(true));
        // SAFETY: as above.
        let out = unsafe { mmu_update_partial(&h, &reqs, DOMID_SELF) };
        assert_eq!(out.done, 1);
        assert_eq!(out.result, Err(XenError::new("mmu_update", Errno::EINVAL)));
        assert_eq!(MmuUpdate::normal(0x5004, 0), None);
        assert_eq!(MmuUpdate::machphys(u64::MAX, 0), None);
    }

    #[test]
    fn mmuext_op_passes_operations() {
        let ops = [MmuextOp::new(MMUEXT_INVLPG_LOCAL, 0x7000, 0)];
        let h = Recorder::new(|op, a| {
            assert_eq!(op, HYPERVISOR_MMUEXT_OP);
            // SAFETY: the wrapper passes one live operation and a live counter.
            let o = unsafe { *ptr::<MmuextOp>(a[0]) };
            assert_eq!(o, MmuextOp::new(7, 0x7000, 0));
            // SAFETY: as above.
            unsafe { *ptr::<u32>(a[2]) = 1 };
            0
        });
        // SAFETY: the fake only reads the operation.
        assert_eq!(unsafe { mmuext_op(&h, &ops, DOMID_SELF) }, Ok(1));
        // A count above what was asked is a broken answer, not success.
        let h = Recorder::new(|_, a| {
            // SAFETY: the wrapper passes a live counter.
            unsafe { *ptr::<u32>(a[2]) = 5 };
            0
        });
        // SAFETY: the fake only writes the counter.
        let out = unsafe { mmuext_op_partial(&h, &ops, DOMID_SELF) };
        assert_eq!(out.result, Err(XenError::unexpected("mmuext_op", 5)));
    }

    #[test]
    fn grant_map_and_unmap_pass_arrays_and_keep_statuses() {
        let mut m = [
            GnttabMapGrantRef::new(0x4000_0000, GNTMAP_HOST_MAP, 8, 1),
            GnttabMapGrantRef::new(0x4000_1000, GNTMAP_HOST_MAP | GNTMAP_READONLY, 9, 1),
        ];
        let h = Recorder::new(|op, a| {
            assert_eq!(op, HYPERVISOR_GRANT_TABLE_OP);
            assert_eq!(a[2], 2);
            match u32::try_from(a[0]).unwrap() {
                GNTTABOP_MAP_GRANT_REF => {
                    // SAFETY: the wrapper passes two live requests.
                    let r = unsafe {
                        core::slice::from_raw_parts_mut(ptr::<GnttabMapGrantRef>(a[1]), 2)
                    };
                    assert_eq!((r[1].ref_, r[1].dom, r[1].flags), (9, 1, 6));
                    assert_eq!(r[0].status, GRANT_OP_PENDING, "not yet processed");
                    r[0].status = 0;
                    r[0].handle = 3;
                    r[0].dev_bus_addr = 0x8_0000_0000;
                    r[1].status = GNTST_BAD_GNTREF;
                    0
                }
                GNTTABOP_UNMAP_GRANT_REF => {
                    // SAFETY: the wrapper passes two live requests.
                    let r = unsafe {
                        core::slice::from_raw_parts_mut(ptr::<GnttabUnmapGrantRef>(a[1]), 2)
                    };
                    assert_eq!((r[0].handle, r[0].dev_bus_addr), (3, 0x8_0000_0000));
                    assert_eq!(r[0].status, GRANT_OP_PENDING, "not yet processed");
                    r[0].status = 0;
                    r[1].status = GNTST_BAD_HANDLE;
                    0
                }
                _ => -38,
            }
        });
        // SAFETY: the fake only writes the output fields.
        unsafe { grant_map(&h, &mut m) }.unwrap();
        assert_eq!(GntStatus(m[0].status), GntStatus::OKAY);
        assert_eq!(GntStatus(m[1].status), GntStatus::BAD_GNTREF);
        let mut u = [
            GnttabUnmapGrantRef::new(m[0].host_addr, m[0].dev_bus_addr, m[0].handle),
            GnttabUnmapGrantRef::new(0, 0, 77),
        ];
        // SAFETY: as above.
        unsafe { grant_unmap(&h, &mut u) }.unwrap();
        assert_eq!(GntStatus(u[1].status).ok(), Err(GntStatus::BAD_HANDLE));

        let h = Recorder::new(|_, _| -3);
        // SAFETY: the fake touches nothing.
        let e = unsafe { grant_map(&h, &mut m) }.unwrap_err();
        assert_eq!(e.to_string(), "GNTTABOP_map_grant_ref: ESRCH (3)");
    }

    #[test]
    fn cache_flush_and_probe() {
        let h = Recorder::new(|op, a| {
            assert_eq!((op, a[0], a[2]), (HYPERVISOR_GRANT_TABLE_OP, 12, 1));
            // SAFETY: the wrapper passes one live request.
            let r = unsafe { *ptr::<GnttabCacheFlush>(a[1]) };
            // SAFETY: both union members are integers.
            let bus = unsafe { r.a.dev_bus_addr };
            if r.offset as usize + r.length as usize > 4096 {
                -22
            } else {
                i64::from(bus == 1)
            }
        });
        let mut req = GnttabCacheFlush::by_bus_addr(0x9000_0000, 64, 128, GNTTAB_CACHE_CLEAN);
        // SAFETY: the fake only reads the request.
        unsafe { cache_flush(&h, &mut req) }.unwrap();
        req.length = 4096;
        // SAFETY: as above.
        let e = unsafe { cache_flush(&h, &mut req) }.unwrap_err();
        assert_eq!(e.to_string(), "GNTTABOP_cache_flush: EINVAL (22)");
        assert!(cache_flush_probe(&h));
        let probe = h.calls().last().copied().unwrap();
        assert_eq!(probe.1[0], u64::from(GNTTABOP_CACHE_FLUSH));

        assert!(!cache_flush_probe(&Recorder::new(|_, _| -38)));
        assert!(cache_flush_probe(&Recorder::new(|_, _| -95)));
    }

    #[test]
    fn version_and_features() {
        let h = Recorder::new(|op, a| {
            assert_eq!(op, HYPERVISOR_XEN_VERSION);
            match u32::try_from(a[0]).unwrap() {
                XENVER_VERSION => (4 << 16) | 17,
                XENVER_GET_FEATURES => {
                    // SAFETY: the wrapper passes a live feature structure.
                    let fi = unsafe { &mut *ptr::<XenFeatureInfo>(a[1]) };
                    if fi.submap_idx != 0 {
                        return -22;
                    }
                    fi.submap = (1 << XENFEAT_DIRECT_MAPPED) | (1 << XENFEAT_DOM0);
                    0
                }
                _ => -38,
            }
        });
        let v = xen_version(&h).unwrap();
        assert_eq!(
            v,
            XenVersion {
                major: 4,
                minor: 17
            }
        );
        assert_eq!(v.to_string(), "4.17");
        assert!(v.x86_has_cache_flush());
        for (major, minor, has) in [(4, 20, true), (4, 21, false), (4, 22, false), (5, 0, false)] {
            assert_eq!(XenVersion { major, minor }.x86_has_cache_flush(), has);
        }
        assert_eq!(get_features(&h, 0), Ok((1 << 17) | (1 << 11)));
        assert_eq!(has_feature(&h, XENFEAT_DIRECT_MAPPED), Ok(true));
        assert_eq!(has_feature(&h, XENFEAT_NOT_DIRECT_MAPPED), Ok(false));
        let e = has_feature(&h, 40).unwrap_err();
        assert_eq!(e.to_string(), "XENVER_get_features: EINVAL (22)");
        let e = xen_version(&Recorder::new(|_, _| 1 << 40)).unwrap_err();
        assert_eq!(e.op, "XENVER_version");
    }

    #[test]
    fn console_and_sched() {
        let h = Recorder::new(|op, a| match op {
            HYPERVISOR_CONSOLE_IO => {
                assert_eq!(a[0], u64::from(CONSOLEIO_WRITE));
                // SAFETY: the wrapper passes a live buffer of `a[1]` bytes.
                let s = unsafe {
                    core::slice::from_raw_parts(ptr::<u8>(a[2]), usize::try_from(a[1]).unwrap())
                };
                assert_eq!(s, b"PASS\n");
                0
            }
            HYPERVISOR_SCHED_OP => {
                if a[0] == u64::from(SCHEDOP_YIELD) {
                    return 0;
                }
                assert_eq!(a[0], u64::from(SCHEDOP_SHUTDOWN));
                // SAFETY: the wrapper passes a live shutdown structure.
                let r = unsafe { *ptr::<SchedShutdown>(a[1]) };
                if r.reason > SHUTDOWN_SOFT_RESET {
                    -22
                } else {
                    0
                }
            }
            _ => -38,
        });
        console_write(&h, b"PASS\n").unwrap();
        console_write(&h, b"").unwrap();
        sched_shutdown(&h, SHUTDOWN_POWEROFF).unwrap();
        sched_yield(&h).unwrap();
        assert_eq!(
            sched_shutdown(&h, 9),
            Err(XenError::new("SCHEDOP_shutdown", Errno::EINVAL))
        );
        assert_eq!(h.calls().len(), 4);
    }

    #[test]
    fn names_of_hypercalls() {
        assert_eq!(hypercall_name(u64::from(HYPERVISOR_MEMORY_OP)), "memory_op");
        assert_eq!(hypercall_name(1 << 40), "hypercall");
        assert_eq!(hypercall_name(99), "hypercall");
        assert_eq!(xenmem_name(XENMEM_EXCHANGE), "XENMEM_exchange");
    }

    #[test]
    fn too_long_arrays_are_refused_before_any_hypercall() {
        assert_eq!(count("x", 1 << 32), Err(XenError::new("x", Errno::E2BIG)));
        assert_eq!(count("x", 3), Ok(3));
    }
}
