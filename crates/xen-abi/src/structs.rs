//! `#[repr(C)]` structures of the hypercall ABI, with Xen's field names.
//!
//! x86_64 and aarch64 share these layouts (little-endian, natural alignment, 64-bit
//! `xen_ulong_t` and `xen_pfn_t`). Guest handles are 8 bytes with 8-byte alignment on both: a
//! pointer on x86_64, Arm's `union { T *p; uint64_t q; }` with `__aligned(8)`; one pointer
//! wrapped in an `align(8)` struct has that layout on both, and keeps the pointer's
//! provenance for tools such as Miri. Only 64-bit targets are supported: on a 32-bit Arm the
//! upper half of the handle would be padding instead of the zeroes Xen expects, and the
//! layout assertions below are compiled for 64-bit targets only.
//!
//! Pointers that go into plain integer fields or hypercall arguments are converted with
//! `expose_provenance`, so that a simulator can turn them back with
//! `core::ptr::with_exposed_provenance_mut`.

use core::marker::PhantomData;
use core::ptr;
use memoffset::offset_of;

use crate::consts::{
    DOMID_SELF, HYPERVISOR_MMU_UPDATE, HYPERVISOR_MMUEXT_OP, HYPERVISOR_UPDATE_VA_MAPPING,
    MMU_MACHPHYS_UPDATE, MMU_NORMAL_PT_UPDATE,
};

/// `xen_ulong_t` (64-bit on x86_64 and Arm).
pub type XenUlong = u64;
/// `xen_long_t`.
pub type XenLong = i64;
/// `xen_pfn_t` (a guest frame number: an MFN for PV guests, a GFN otherwise).
pub type XenPfn = u64;
/// `domid_t`.
pub type DomId = u16;
/// `grant_ref_t`.
pub type GrantRef = u32;
/// `grant_handle_t`.
pub type GrantHandle = u32;

/// `XEN_GUEST_HANDLE(T)`: a pointer to guest memory that Xen reads or writes.
///
/// Eight bytes, 8-byte aligned, on every supported target.
#[repr(C, align(8))]
pub struct GuestHandle<T> {
    p: *mut T,
    _marker: PhantomData<*mut T>,
}

impl<T> GuestHandle<T> {
    /// A null handle.
    #[must_use]
    pub const fn null() -> Self {
        Self {
            p: ptr::null_mut(),
            _marker: PhantomData,
        }
    }

    /// A handle to `p` (`set_xen_guest_handle`).
    #[must_use]
    pub const fn new(p: *mut T) -> Self {
        Self {
            p,
            _marker: PhantomData,
        }
    }

    /// The pointer.
    #[must_use]
    pub const fn as_ptr(&self) -> *mut T {
        self.p
    }

    /// Whether the handle is null.
    #[must_use]
    pub fn is_null(&self) -> bool {
        self.p.is_null()
    }
}

impl<T> Clone for GuestHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for GuestHandle<T> {}

impl<T> Default for GuestHandle<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T> core::fmt::Debug for GuestHandle<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "GuestHandle({:p})", self.p)
    }
}

/// `struct xen_memory_reservation` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenMemoryReservation {
    /// Frame list: input frames, or (for populate/exchange out) GPFNs that Xen overwrites
    /// with the new MFNs for PV guests.
    pub extent_start: GuestHandle<XenPfn>,
    /// Number of extents.
    pub nr_extents: XenUlong,
    /// log2 of the extent size in 4 KiB frames.
    pub extent_order: u32,
    /// `XENMEMF_*` flags, address-bits limit in bits 0..=7 (called `address_bits` before
    /// interface version 0x00030209).
    pub mem_flags: u32,
    /// The domain (`DOMID_SELF`).
    pub domid: DomId,
}

impl XenMemoryReservation {
    /// A reservation of `frames.len()` extents of order `extent_order` for `DOMID_SELF`,
    /// whose frame list is `frames` (Xen reads it, and for populate and exchange-out
    /// writes the new frames into it).
    ///
    /// The handle keeps a raw pointer to `frames`: the slice must stay alive and unmoved
    /// while the structure is passed to Xen.
    #[must_use]
    pub fn with_frames(frames: &mut [XenPfn], extent_order: u32, mem_flags: u32) -> Self {
        Self {
            extent_start: GuestHandle::new(frames.as_mut_ptr()),
            // CAST: usize to u64 is lossless on the supported 64-bit targets.
            nr_extents: frames.len() as u64,
            extent_order,
            mem_flags,
            domid: DOMID_SELF,
        }
    }
}

/// `struct xen_memory_exchange` (72 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenMemoryExchange {
    /// The extents given up.
    pub in_: XenMemoryReservation,
    /// The extents wanted.
    pub out: XenMemoryReservation,
    /// Input extents exchanged so far (0 on entry; progress on return).
    pub nr_exchanged: XenUlong,
}

/// The `a` union of [`GnttabCacheFlush`].
#[repr(C)]
#[derive(Clone, Copy)]
pub union GnttabCacheFlushA {
    /// A machine (device-bus) address.
    pub dev_bus_addr: u64,
    /// A grant reference (with `GNTTAB_CACHE_SOURCE_GREF`).
    pub ref_: GrantRef,
}

impl Default for GnttabCacheFlushA {
    fn default() -> Self {
        Self { dev_bus_addr: 0 }
    }
}

impl core::fmt::Debug for GnttabCacheFlushA {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // SAFETY: both members are plain integers and `dev_bus_addr` covers the whole union,
        // which is always fully initialised (constructed through `Default` or a member).
        let v = unsafe { self.dev_bus_addr };
        write!(f, "{{ dev_bus_addr: {v:#x} }}")
    }
}

/// `struct gnttab_cache_flush` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabCacheFlush {
    /// The address (or grant reference) of the page.
    pub a: GnttabCacheFlushA,
    /// Offset inside the 4 KiB page.
    pub offset: u16,
    /// Length (offset + length <= 4096).
    pub length: u16,
    /// `GNTTAB_CACHE_*` bits.
    pub op: u32,
}

impl GnttabCacheFlush {
    /// A request for `op` (`GNTTAB_CACHE_*`) on `length` bytes at `offset` in the 4 KiB
    /// page whose machine (bus) address is `dev_bus_addr`.
    #[must_use]
    pub const fn by_bus_addr(dev_bus_addr: u64, offset: u16, length: u16, op: u32) -> Self {
        Self {
            a: GnttabCacheFlushA { dev_bus_addr },
            offset,
            length,
            op,
        }
    }

    /// The zeroed request (length 0, op 0) that Linux sends to learn whether
    /// `GNTTABOP_cache_flush` exists; Xen returns 0 for it without touching memory.
    #[must_use]
    pub const fn probe() -> Self {
        Self::by_bus_addr(0, 0, 0, 0)
    }
}

/// `struct multicall_entry` (64 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: XenUlong,
    /// Result written by Xen.
    pub result: XenLong,
    /// Arguments.
    pub args: [XenUlong; 6],
}

impl MulticallEntry {
    /// An entry for hypercall `op` with `args` (unused ones zero) and a zero result.
    #[must_use]
    pub const fn new(op: u32, args: [XenUlong; 6]) -> Self {
        Self {
            // CAST: widening u32 to u64.
            op: op as u64,
            result: 0,
            args,
        }
    }

    /// `update_va_mapping(va, pte, flags)` (`MULTI_update_va_mapping` in Linux): point the
    /// page-table entry of `va` at `pte`, with `UVMF_*` flags.
    #[must_use]
    pub const fn update_va_mapping(va: u64, pte: u64, flags: u64) -> Self {
        Self::new(HYPERVISOR_UPDATE_VA_MAPPING, [va, pte, flags, 0, 0, 0])
    }

    /// `mmu_update(reqs, count, success_count, domid)`.
    ///
    /// The entry holds the exposed addresses of `reqs` and `success_count` (null for none):
    /// both must stay valid until the multicall has run.
    #[must_use]
    pub fn mmu_update(reqs: &[MmuUpdate], success_count: *mut u32, domid: DomId) -> Self {
        Self::new(
            HYPERVISOR_MMU_UPDATE,
            [
                reqs.as_ptr().expose_provenance() as u64,
                // CAST: usize to u64 is lossless on the supported 64-bit targets.
                reqs.len() as u64,
                success_count.expose_provenance() as u64,
                u64::from(domid),
                0,
                0,
            ],
        )
    }

    /// `mmuext_op(ops, count, success_count, domid)`.
    ///
    /// The entry holds the exposed addresses of `ops` and `success_count` (null for none):
    /// both must stay valid until the multicall has run.
    #[must_use]
    pub fn mmuext_op(ops: &[MmuextOp], success_count: *mut u32, domid: DomId) -> Self {
        Self::new(
            HYPERVISOR_MMUEXT_OP,
            [
                ops.as_ptr().expose_provenance() as u64,
                // CAST: usize to u64 is lossless on the supported 64-bit targets.
                ops.len() as u64,
                success_count.expose_provenance() as u64,
                u64::from(domid),
                0,
                0,
            ],
        )
    }
}

/// `struct mmu_update` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuUpdate {
    /// Machine address of the entry to update, command in the low 2 bits (`MMU_*`).
    pub ptr: u64,
    /// The new value.
    pub val: u64,
}

impl MmuUpdate {
    /// An `MMU_NORMAL_PT_UPDATE`: write `val` into the page-table entry at machine address
    /// `pte_maddr`. Returns `None` unless `pte_maddr` is 8-byte aligned (its low bits carry
    /// the command).
    #[must_use]
    pub const fn normal(pte_maddr: u64, val: u64) -> Option<Self> {
        if !pte_maddr.is_multiple_of(8) {
            return None;
        }
        Some(Self {
            ptr: pte_maddr | MMU_NORMAL_PT_UPDATE,
            val,
        })
    }

    /// An `MMU_MACHPHYS_UPDATE`: set the M2P entry of machine frame `mfn` to `pfn`
    /// (`ptr = mfn << 12 | 1`). Returns `None` if `mfn << 12` overflows.
    #[must_use]
    pub const fn machphys(mfn: u64, pfn: u64) -> Option<Self> {
        if mfn > (u64::MAX >> 12) {
            return None;
        }
        Some(Self {
            ptr: (mfn << 12) | MMU_MACHPHYS_UPDATE,
            val: pfn,
        })
    }
}

/// `struct mmuext_op` (24 bytes, x86 PV).
///
/// Xen declares `arg1` and `arg2` as unions of same-sized integers (and, for `arg2`, a guest
/// handle); here they are the 64-bit values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuextOp {
    /// `MMUEXT_*`.
    pub cmd: u32,
    /// `mfn` or `linear_addr`.
    pub arg1: XenUlong,
    /// `nr_ents`, `vcpumask` (a guest handle) or `src_mfn`.
    pub arg2: XenUlong,
}

impl MmuextOp {
    /// An operation `cmd` with its two arguments.
    #[must_use]
    pub const fn new(cmd: u32, arg1: u64, arg2: u64) -> Self {
        Self { cmd, arg1, arg2 }
    }
}

/// `struct gnttab_map_grant_ref` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabMapGrantRef {
    /// IN: where to map (a guest address, or with `GNTMAP_contains_pte` a PTE address).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the grant reference.
    pub ref_: GrantRef,
    /// IN: the granting domain.
    pub dom: DomId,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// OUT: handle for unmapping.
    pub handle: GrantHandle,
    /// OUT: the bus (machine) address of the granted frame.
    pub dev_bus_addr: u64,
}

/// The `status` a grant request carries until Xen processes it: a positive value, which no
/// `GNTST_*` code is (they are 0 for okay and negative for errors), so that a request Xen
/// never reached is not taken for a success (Linux's "arbitrary positive value").
pub const GRANT_OP_PENDING: i16 = 1;

impl GnttabMapGrantRef {
    /// A request to map grant `ref_` of domain `dom` at `host_addr` with `GNTMAP_*` flags.
    ///
    /// `status` starts at [`GRANT_OP_PENDING`], not at `GNTST_okay` (0): when Xen stops a
    /// batch at a failing element it leaves the elements after it untouched, and those must
    /// not read as mapped (Linux's `gnttab_set_map_op` does the same). The other output
    /// fields are zero.
    #[must_use]
    pub const fn new(host_addr: u64, flags: u32, ref_: GrantRef, dom: DomId) -> Self {
        Self {
            host_addr,
            flags,
            ref_,
            dom,
            status: GRANT_OP_PENDING,
            handle: 0,
            dev_bus_addr: 0,
        }
    }
}

/// `struct gnttab_unmap_grant_ref` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabUnmapGrantRef {
    /// IN: the host address given at map time.
    pub host_addr: u64,
    /// IN: the device address returned at map time.
    pub dev_bus_addr: u64,
    /// IN: the handle returned at map time.
    pub handle: GrantHandle,
    /// OUT: `GNTST_*`.
    pub status: i16,
}

impl GnttabUnmapGrantRef {
    /// A request to undo the mapping that returned `handle`, at the same `host_addr` and
    /// `dev_bus_addr`. `status` starts at [`GRANT_OP_PENDING`], as for
    /// [`GnttabMapGrantRef::new`].
    #[must_use]
    pub const fn new(host_addr: u64, dev_bus_addr: u64, handle: GrantHandle) -> Self {
        Self {
            host_addr,
            dev_bus_addr,
            handle,
            status: GRANT_OP_PENDING,
        }
    }
}

/// `struct xen_add_to_physmap` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenAddToPhysmap {
    /// The domain (`DOMID_SELF`).
    pub domid: DomId,
    /// Number of pages (only for `XENMAPSPACE_gmfn_range`).
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space.
    pub idx: XenUlong,
    /// Where to map it in the physmap.
    pub gpfn: XenPfn,
}

/// `struct xen_feature_info` (8 bytes), the argument of `XENVER_get_features`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenFeatureInfo {
    /// IN: which 32-bit submap to return.
    pub submap_idx: u32,
    /// OUT: the submap; bit `n` is feature `32 * submap_idx + n`.
    pub submap: u32,
}

/// `struct sched_shutdown` (4 bytes), the argument of `SCHEDOP_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// `struct xen_machphys_mapping` (24 bytes), the result of `XENMEM_machphys_mapping`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMachphysMapping {
    /// Start of the read-only M2P mapping.
    pub v_start: XenUlong,
    /// End of the M2P mapping.
    pub v_end: XenUlong,
    /// The largest MFN the mapping covers.
    pub max_mfn: XenUlong,
}

macro_rules! assert_layout {
    ($t:ty, size $size:expr, align $align:expr, { $($field:ident @ $off:expr),* $(,)? }) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
        const _: () = assert!(core::mem::align_of::<$t>() == $align);
        $(const _: () = assert!(offset_of!($t, $field) == $off);)*
    };
}

#[cfg(target_pointer_width = "64")]
mod layout {
    use super::*;
    assert_layout!(GuestHandle<u64>, size 8, align 8, {});
    assert_layout!(XenMemoryReservation, size 32, align 8, {
        extent_start @ 0, nr_extents @ 8, extent_order @ 16, mem_flags @ 20, domid @ 24,
    });
    assert_layout!(XenMemoryExchange, size 72, align 8, { in_ @ 0, out @ 32, nr_exchanged @ 64 });
    assert_layout!(GnttabCacheFlush, size 16, align 8, { a @ 0, offset @ 8, length @ 10, op @ 12 });
    assert_layout!(MulticallEntry, size 64, align 8, { op @ 0, result @ 8, args @ 16 });
    assert_layout!(MmuUpdate, size 16, align 8, { ptr @ 0, val @ 8 });
    assert_layout!(GnttabMapGrantRef, size 32, align 8, {
        host_addr @ 0, flags @ 8, ref_ @ 12, dom @ 16, status @ 18, handle @ 20, dev_bus_addr @ 24,
    });
    assert_layout!(GnttabUnmapGrantRef, size 24, align 8, {
        host_addr @ 0, dev_bus_addr @ 8, handle @ 16, status @ 20,
    });
    assert_layout!(XenAddToPhysmap, size 24, align 8, {
        domid @ 0, size @ 2, space @ 4, idx @ 8, gpfn @ 16,
    });
    assert_layout!(MmuextOp, size 24, align 8, { cmd @ 0, arg1 @ 8, arg2 @ 16 });
    assert_layout!(XenFeatureInfo, size 8, align 4, { submap_idx @ 0, submap @ 4 });
    assert_layout!(SchedShutdown, size 4, align 4, { reason @ 0 });
    assert_layout!(XenMachphysMapping, size 24, align 8, { v_start @ 0, v_end @ 8, max_mfn @ 16 });
}
