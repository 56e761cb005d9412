//! `#[repr(C)]` structures of the hypercall ABI, with Xen's field names.
//!
//! x86_64 and aarch64 share these layouts (little-endian, natural alignment, 64-bit
//! `xen_ulong_t` and `xen_pfn_t`). Guest handles are 8 bytes with 8-byte alignment on both: a
//! pointer on x86_64, Arm's `union { T *p; uint64_t q; }` with `__aligned(8)`; one pointer
//! wrapped in an `align(8)` struct has that layout on both.

use core::marker::PhantomData;
use core::ptr;
use memoffset::offset_of;

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

/// `struct mmu_update` (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmuUpdate {
    /// Machine address of the entry to update, command in the low 2 bits (`MMU_*`).
    pub ptr: u64,
    /// The new value.
    pub val: u64,
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
}
