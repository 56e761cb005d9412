//! Hypercall numbers and constants (Xen 4.17 public headers, `xen.h`, `memory.h`,
//! `grant_table.h`, `features.h`, `version.h`, `sched.h`).

/// `__HYPERVISOR_mmu_update`.
pub const HYPERVISOR_MMU_UPDATE: u32 = 1;
/// `__HYPERVISOR_memory_op`.
pub const HYPERVISOR_MEMORY_OP: u32 = 12;
/// `__HYPERVISOR_multicall`.
pub const HYPERVISOR_MULTICALL: u32 = 13;
/// `__HYPERVISOR_update_va_mapping`.
pub const HYPERVISOR_UPDATE_VA_MAPPING: u32 = 14;
/// `__HYPERVISOR_xen_version`.
pub const HYPERVISOR_XEN_VERSION: u32 = 17;
/// `__HYPERVISOR_console_io`.
pub const HYPERVISOR_CONSOLE_IO: u32 = 18;
/// `__HYPERVISOR_grant_table_op`.
pub const HYPERVISOR_GRANT_TABLE_OP: u32 = 20;
/// `__HYPERVISOR_mmuext_op`.
pub const HYPERVISOR_MMUEXT_OP: u32 = 26;
/// `__HYPERVISOR_sched_op`.
pub const HYPERVISOR_SCHED_OP: u32 = 29;

/// `XENMEM_increase_reservation`.
pub const XENMEM_INCREASE_RESERVATION: u32 = 0;
/// `XENMEM_decrease_reservation`.
pub const XENMEM_DECREASE_RESERVATION: u32 = 1;
/// `XENMEM_maximum_ram_page`.
pub const XENMEM_MAXIMUM_RAM_PAGE: u32 = 2;
/// `XENMEM_current_reservation`.
pub const XENMEM_CURRENT_RESERVATION: u32 = 3;
/// `XENMEM_maximum_reservation`.
pub const XENMEM_MAXIMUM_RESERVATION: u32 = 4;
/// `XENMEM_machphys_mfn_list`.
pub const XENMEM_MACHPHYS_MFN_LIST: u32 = 5;
/// `XENMEM_populate_physmap`.
pub const XENMEM_POPULATE_PHYSMAP: u32 = 6;
/// `XENMEM_add_to_physmap`.
pub const XENMEM_ADD_TO_PHYSMAP: u32 = 7;
/// `XENMEM_memory_map`.
pub const XENMEM_MEMORY_MAP: u32 = 9;
/// `XENMEM_machine_memory_map`.
pub const XENMEM_MACHINE_MEMORY_MAP: u32 = 10;
/// `XENMEM_exchange`.
pub const XENMEM_EXCHANGE: u32 = 11;
/// `XENMEM_machphys_mapping`.
pub const XENMEM_MACHPHYS_MAPPING: u32 = 12;
/// `XENMEM_remove_from_physmap`.
pub const XENMEM_REMOVE_FROM_PHYSMAP: u32 = 15;

/// `XENMAPSPACE_shared_info`.
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMAPSPACE_grant_table`.
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
/// `XENMAPSPACE_gmfn`.
pub const XENMAPSPACE_GMFN: u32 = 2;

/// `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_MAP_GRANT_REF: u32 = 0;
/// `GNTTABOP_unmap_grant_ref`.
pub const GNTTABOP_UNMAP_GRANT_REF: u32 = 1;
/// `GNTTABOP_setup_table`.
pub const GNTTABOP_SETUP_TABLE: u32 = 2;
/// `GNTTABOP_query_size`.
pub const GNTTABOP_QUERY_SIZE: u32 = 6;
/// `GNTTABOP_set_version`.
pub const GNTTABOP_SET_VERSION: u32 = 8;
/// `GNTTABOP_get_version`.
pub const GNTTABOP_GET_VERSION: u32 = 10;
/// `GNTTABOP_cache_flush`.
pub const GNTTABOP_CACHE_FLUSH: u32 = 12;

/// `GNTMAP_device_map`: map for device access (returns `dev_bus_addr`).
pub const GNTMAP_DEVICE_MAP: u32 = 1 << 0;
/// `GNTMAP_host_map`: map into the caller's address space.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`.
pub const GNTMAP_READONLY: u32 = 1 << 2;
/// `GNTMAP_application_map`.
pub const GNTMAP_APPLICATION_MAP: u32 = 1 << 3;
/// `GNTMAP_contains_pte`.
pub const GNTMAP_CONTAINS_PTE: u32 = 1 << 4;

/// `GTF_permit_access` (grant entry flag, v1 table).
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`.
pub const GTF_READONLY: u16 = 1 << 2;

/// `GNTST_okay`.
pub const GNTST_OKAY: i16 = 0;
/// `GNTST_general_error`.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// `GNTST_bad_domain`.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// `GNTST_bad_gntref`.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// `GNTST_bad_handle`.
pub const GNTST_BAD_HANDLE: i16 = -4;
/// `GNTST_bad_virt_addr`.
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
/// `GNTST_bad_dev_addr`.
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
/// `GNTST_no_device_space`.
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
/// `GNTST_permission_denied`.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// `GNTST_bad_page`.
pub const GNTST_BAD_PAGE: i16 = -9;
/// `GNTST_bad_copy_arg`.
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// `GNTST_address_too_big`.
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
/// `GNTST_eagain`.
pub const GNTST_EAGAIN: i16 = -12;
/// `GNTST_no_space`.
pub const GNTST_NO_SPACE: i16 = -13;

/// `GNTTAB_CACHE_CLEAN`.
pub const GNTTAB_CACHE_CLEAN: u32 = 1 << 0;
/// `GNTTAB_CACHE_INVAL`.
pub const GNTTAB_CACHE_INVAL: u32 = 1 << 1;
/// `GNTTAB_CACHE_SOURCE_GREF`.
pub const GNTTAB_CACHE_SOURCE_GREF: u32 = 1 << 31;

/// `MMU_NORMAL_PT_UPDATE`.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `MMU_MACHPHYS_UPDATE`.
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// `MMU_PT_UPDATE_PRESERVE_AD`.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;
/// `MMU_PT_UPDATE_NO_TRANSLATE`.
pub const MMU_PT_UPDATE_NO_TRANSLATE: u64 = 3;

/// `UVMF_NONE`.
pub const UVMF_NONE: u64 = 0;
/// `UVMF_TLB_FLUSH`.
pub const UVMF_TLB_FLUSH: u64 = 1;
/// `UVMF_INVLPG`.
pub const UVMF_INVLPG: u64 = 2;
/// `UVMF_FLUSHTYPE_MASK`.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// `UVMF_LOCAL`.
pub const UVMF_LOCAL: u64 = 0;
/// `UVMF_ALL`.
pub const UVMF_ALL: u64 = 4;

/// `XENFEAT_grant_map_identity` (deprecated).
pub const XENFEAT_GRANT_MAP_IDENTITY: u32 = 12;
/// `XENFEAT_not_direct_mapped`.
pub const XENFEAT_NOT_DIRECT_MAPPED: u32 = 16;
/// `XENFEAT_direct_mapped`.
pub const XENFEAT_DIRECT_MAPPED: u32 = 17;

/// `XENVER_version`: returns `major << 16 | minor`.
pub const XENVER_VERSION: u32 = 0;
/// `XENVER_get_features`.
pub const XENVER_GET_FEATURES: u32 = 6;

/// `SCHEDOP_yield`.
pub const SCHEDOP_YIELD: u32 = 0;
/// `SCHEDOP_shutdown`.
pub const SCHEDOP_SHUTDOWN: u32 = 2;
/// `SHUTDOWN_poweroff`.
pub const SHUTDOWN_POWEROFF: u32 = 0;
/// `SHUTDOWN_reboot`.
pub const SHUTDOWN_REBOOT: u32 = 1;
/// `SHUTDOWN_crash`.
pub const SHUTDOWN_CRASH: u32 = 3;

/// `CONSOLEIO_write`.
pub const CONSOLEIO_WRITE: u32 = 0;
/// `CONSOLEIO_read`.
pub const CONSOLEIO_READ: u32 = 1;

/// `DOMID_SELF`.
pub const DOMID_SELF: u16 = 0x7ff0;
/// `DOMID_IO`.
pub const DOMID_IO: u16 = 0x7ff1;
/// `DOMID_XEN`.
pub const DOMID_XEN: u16 = 0x7ff2;

/// The largest `address_bits` value meaning a real limit (`XENMEMF_address_bits` is 8 bits).
pub const XENMEMF_ADDRESS_BITS_MASK: u32 = 0xff;

bitflags::bitflags! {
    /// The flags part of `xen_memory_reservation.mem_flags` (bits 8 and up). Bits 0..=7 are
    /// the address-bits limit: build the field with [`mem_flags`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct XenMemFlags: u32 {
        /// `XENMEMF_populate_on_demand`.
        const POPULATE_ON_DEMAND = 1 << 16;
        /// `XENMEMF_exact_node_request`.
        const EXACT_NODE_REQUEST = 1 << 17;
        /// `XENMEMF_vnode`.
        const VNODE = 1 << 18;
    }
}

/// Builds `mem_flags` from an address-bits limit (`XENMEMF_address_bits(n)`, 0 for none) and
/// flags.
#[inline]
#[must_use]
pub const fn mem_flags(address_bits: u8, flags: XenMemFlags) -> u32 {
    address_bits as u32 | flags.bits()
}

/// `XENMEMF_node(n)`: prefer NUMA node `n`.
#[inline]
#[must_use]
pub const fn xenmemf_node(node: u8) -> u32 {
    (node as u32 + 1) << 8
}

/// The x86_64 PV M2P base (`MACH2PHYS_VIRT_START`).
pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;
