//! The C ABI test: compiles `tests/abi/abi.c` against Debian's `libxen-dev` headers for
//! x86_64 (the host `cc`) and for aarch64 (`aarch64-linux-gnu-gcc -static`, run under
//! `qemu-aarch64`), and compares every size, alignment, offset and constant it prints with
//! the Rust definitions, in both directions: every C line must match a Rust row, and every
//! Rust row must appear in the C output.
//!
//! A missing tool or header makes the test fail when the environment variable `CI` is set;
//! otherwise the test prints why and passes without comparing. `XEN_INCLUDE_DIR` overrides
//! the directory holding `xen/` (default `/usr/include`).
//!
//! The Rust values are those of the target the test is built for (x86_64 natively, or
//! aarch64 when CI runs the crate's tests under qemu-user). The compile-time layout
//! assertions in `src/structs.rs` pin both targets to the same numbers, which is why each C
//! output can be compared with the same table.

use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use xen_abi::*;

/// One expected line of the C program's output.
struct Row {
    /// `"<kind> <C name>"`, as the C program prints it before the value.
    key: String,
    /// The Rust item the row checks (`XENMEM_EXCHANGE`, `XenMemoryExchange.in_`).
    rust: String,
    /// The expected value.
    value: i128,
    /// Whether the item exists only in the x86 headers.
    x86_only: bool,
}

fn row(key: String, rust: &str, value: impl Into<i128>, x86_only: bool) -> Row {
    Row {
        key,
        rust: rust.to_owned(),
        value: value.into(),
        x86_only,
    }
}

fn usize_row(key: String, rust: &str, value: usize) -> Row {
    row(key, rust, i128::try_from(value).unwrap(), false)
}

/// Size and alignment of a type.
macro_rules! size {
    ($c:expr, $t:ty, $rust:expr) => {
        [
            usize_row(format!("size {}", $c), $rust, size_of::<$t>()),
            usize_row(format!("align {}", $c), $rust, align_of::<$t>()),
        ]
    };
}

/// Size, alignment and field offsets of a structure.
macro_rules! layout {
    ($c:literal = $t:ident { $($cf:literal => $rf:ident),* $(,)? }) => {{
        let mut v: Vec<Row> = size!($c, $t, stringify!($t)).into();
        $(v.push(usize_row(
            format!("offset {}.{}", $c, $cf),
            concat!(stringify!($t), ".", stringify!($rf)),
            offset_of!($t, $rf),
        ));)*
        v
    }};
}

/// Constants: `both` for the common headers, `x86` for the x86 ones.
macro_rules! consts {
    ($($arch:ident: const $c:literal = $r:ident,)*) => {
        vec![$(row(
            format!("const {}", $c),
            stringify!($r),
            $r,
            stringify!($arch) == "x86",
        )),*]
    };
}

/// Every item the C program checks, with its Rust value.
fn rust_table() -> Vec<Row> {
    let mut t = Vec::new();
    t.extend(size!("xen_ulong_t", XenUlong, "XenUlong"));
    t.extend(size!("xen_long_t", XenLong, "XenLong"));
    t.extend(size!("xen_pfn_t", XenPfn, "XenPfn"));
    t.extend(size!("domid_t", DomId, "DomId"));
    t.extend(size!("grant_ref_t", GrantRef, "GrantRef"));
    t.extend(size!("grant_handle_t", GrantHandle, "GrantHandle"));
    t.extend(size!("guest_handle", GuestHandle<XenPfn>, "GuestHandle"));

    t.extend(layout!("xen_memory_reservation" = XenMemoryReservation {
        "extent_start" => extent_start, "nr_extents" => nr_extents,
        "extent_order" => extent_order, "mem_flags" => mem_flags, "domid" => domid,
    }));
    t.extend(layout!("xen_memory_exchange" = XenMemoryExchange {
        "in" => in_, "out" => out, "nr_exchanged" => nr_exchanged,
    }));
    t.extend(layout!("gnttab_cache_flush" = GnttabCacheFlush {
        "a" => a, "offset" => offset, "length" => length, "op" => op,
    }));
    t.extend(size!(
        "gnttab_cache_flush.a",
        GnttabCacheFlushA,
        "GnttabCacheFlushA"
    ));
    let a = offset_of!(GnttabCacheFlush, a);
    t.push(usize_row(
        "offset gnttab_cache_flush.a.dev_bus_addr".into(),
        "GnttabCacheFlushA.dev_bus_addr",
        a + offset_of!(GnttabCacheFlushA, dev_bus_addr),
    ));
    t.push(usize_row(
        "offset gnttab_cache_flush.a.ref".into(),
        "GnttabCacheFlushA.ref_",
        a + offset_of!(GnttabCacheFlushA, ref_),
    ));
    t.extend(layout!("multicall_entry" = MulticallEntry {
        "op" => op, "result" => result, "args" => args,
    }));
    t.extend(size!(
        "multicall_entry.args",
        [XenUlong; 6],
        "MulticallEntry.args"
    ));
    t.extend(layout!("mmu_update" = MmuUpdate { "ptr" => ptr, "val" => val }));
    t.extend(layout!("mmuext_op" = MmuextOp { "cmd" => cmd, "arg1" => arg1, "arg2" => arg2 }));
    t.extend(layout!("gnttab_map_grant_ref" = GnttabMapGrantRef {
        "host_addr" => host_addr, "flags" => flags, "ref" => ref_, "dom" => dom,
        "status" => status, "handle" => handle, "dev_bus_addr" => dev_bus_addr,
    }));
    t.extend(layout!("gnttab_unmap_grant_ref" = GnttabUnmapGrantRef {
        "host_addr" => host_addr, "dev_bus_addr" => dev_bus_addr,
        "handle" => handle, "status" => status,
    }));
    t.extend(layout!("xen_add_to_physmap" = XenAddToPhysmap {
        "domid" => domid, "size" => size, "space" => space, "idx" => idx, "gpfn" => gpfn,
    }));
    t.extend(layout!("xen_feature_info" = XenFeatureInfo {
        "submap_idx" => submap_idx, "submap" => submap,
    }));
    t.extend(layout!("sched_shutdown" = SchedShutdown { "reason" => reason }));
    t.extend(layout!("xen_machphys_mapping" = XenMachphysMapping {
        "v_start" => v_start, "v_end" => v_end, "max_mfn" => max_mfn,
    }));

    for (c, rust, flag) in [
        (
            "XENMEMF_populate_on_demand",
            "XenMemFlags::POPULATE_ON_DEMAND",
            XenMemFlags::POPULATE_ON_DEMAND,
        ),
        (
            "XENMEMF_exact_node_request",
            "XenMemFlags::EXACT_NODE_REQUEST",
            XenMemFlags::EXACT_NODE_REQUEST,
        ),
        ("XENMEMF_vnode", "XenMemFlags::VNODE", XenMemFlags::VNODE),
    ] {
        t.push(row(format!("const {c}"), rust, flag.bits(), false));
    }
    t.push(row(
        "const XENMEMF_address_bits(32)".into(),
        "mem_flags",
        mem_flags(32, XenMemFlags::empty()),
        false,
    ));
    t.push(row(
        "const XENMEMF_node(0)".into(),
        "xenmemf_node",
        xenmemf_node(0),
        false,
    ));
    t.push(row(
        "const XENMEMF_node(3)".into(),
        "xenmemf_node",
        xenmemf_node(3),
        false,
    ));
    t.push(row(
        "const XENMEMF_exact_node(2)".into(),
        "xenmemf_exact_node",
        xenmemf_exact_node(2),
        false,
    ));

    t.extend(consts! {
        both: const "__HYPERVISOR_set_trap_table" = HYPERVISOR_SET_TRAP_TABLE,
        both: const "__HYPERVISOR_mmu_update" = HYPERVISOR_MMU_UPDATE,
        both: const "__HYPERVISOR_set_callbacks" = HYPERVISOR_SET_CALLBACKS,
        both: const "__HYPERVISOR_platform_op" = HYPERVISOR_PLATFORM_OP,
        both: const "__HYPERVISOR_memory_op" = HYPERVISOR_MEMORY_OP,
        both: const "__HYPERVISOR_multicall" = HYPERVISOR_MULTICALL,
        both: const "__HYPERVISOR_update_va_mapping" = HYPERVISOR_UPDATE_VA_MAPPING,
        both: const "__HYPERVISOR_set_timer_op" = HYPERVISOR_SET_TIMER_OP,
        both: const "__HYPERVISOR_xen_version" = HYPERVISOR_XEN_VERSION,
        both: const "__HYPERVISOR_console_io" = HYPERVISOR_CONSOLE_IO,
        both: const "__HYPERVISOR_grant_table_op" = HYPERVISOR_GRANT_TABLE_OP,
        both: const "__HYPERVISOR_vm_assist" = HYPERVISOR_VM_ASSIST,
        both: const "__HYPERVISOR_update_va_mapping_otherdomain" = HYPERVISOR_UPDATE_VA_MAPPING_OTHERDOMAIN,
        both: const "__HYPERVISOR_iret" = HYPERVISOR_IRET,
        both: const "__HYPERVISOR_vcpu_op" = HYPERVISOR_VCPU_OP,
        both: const "__HYPERVISOR_set_segment_base" = HYPERVISOR_SET_SEGMENT_BASE,
        both: const "__HYPERVISOR_mmuext_op" = HYPERVISOR_MMUEXT_OP,
        both: const "__HYPERVISOR_sched_op" = HYPERVISOR_SCHED_OP,
        both: const "__HYPERVISOR_callback_op" = HYPERVISOR_CALLBACK_OP,
        both: const "__HYPERVISOR_event_channel_op" = HYPERVISOR_EVENT_CHANNEL_OP,
        both: const "__HYPERVISOR_physdev_op" = HYPERVISOR_PHYSDEV_OP,
        both: const "__HYPERVISOR_hvm_op" = HYPERVISOR_HVM_OP,
        both: const "__HYPERVISOR_dm_op" = HYPERVISOR_DM_OP,
        both: const "XENMEM_increase_reservation" = XENMEM_INCREASE_RESERVATION,
        both: const "XENMEM_decrease_reservation" = XENMEM_DECREASE_RESERVATION,
        both: const "XENMEM_maximum_ram_page" = XENMEM_MAXIMUM_RAM_PAGE,
        both: const "XENMEM_current_reservation" = XENMEM_CURRENT_RESERVATION,
        both: const "XENMEM_maximum_reservation" = XENMEM_MAXIMUM_RESERVATION,
        both: const "XENMEM_machphys_mfn_list" = XENMEM_MACHPHYS_MFN_LIST,
        both: const "XENMEM_populate_physmap" = XENMEM_POPULATE_PHYSMAP,
        both: const "XENMEM_add_to_physmap" = XENMEM_ADD_TO_PHYSMAP,
        both: const "XENMEM_memory_map" = XENMEM_MEMORY_MAP,
        both: const "XENMEM_machine_memory_map" = XENMEM_MACHINE_MEMORY_MAP,
        both: const "XENMEM_exchange" = XENMEM_EXCHANGE,
        both: const "XENMEM_machphys_mapping" = XENMEM_MACHPHYS_MAPPING,
        both: const "XENMEM_maximum_gpfn" = XENMEM_MAXIMUM_GPFN,
        both: const "XENMEM_remove_from_physmap" = XENMEM_REMOVE_FROM_PHYSMAP,
        both: const "XENMEM_add_to_physmap_batch" = XENMEM_ADD_TO_PHYSMAP_BATCH,
        both: const "XENMEM_acquire_resource" = XENMEM_ACQUIRE_RESOURCE,
        both: const "XENMAPSPACE_shared_info" = XENMAPSPACE_SHARED_INFO,
        both: const "XENMAPSPACE_grant_table" = XENMAPSPACE_GRANT_TABLE,
        both: const "XENMAPSPACE_gmfn" = XENMAPSPACE_GMFN,
        both: const "XENMAPSPACE_gmfn_range" = XENMAPSPACE_GMFN_RANGE,
        both: const "XENMAPSPACE_gmfn_foreign" = XENMAPSPACE_GMFN_FOREIGN,
        both: const "XENMAPSPACE_dev_mmio" = XENMAPSPACE_DEV_MMIO,
        both: const "GNTTABOP_map_grant_ref" = GNTTABOP_MAP_GRANT_REF,
        both: const "GNTTABOP_unmap_grant_ref" = GNTTABOP_UNMAP_GRANT_REF,
        both: const "GNTTABOP_setup_table" = GNTTABOP_SETUP_TABLE,
        both: const "GNTTABOP_dump_table" = GNTTABOP_DUMP_TABLE,
        both: const "GNTTABOP_transfer" = GNTTABOP_TRANSFER,
        both: const "GNTTABOP_copy" = GNTTABOP_COPY,
        both: const "GNTTABOP_query_size" = GNTTABOP_QUERY_SIZE,
        both: const "GNTTABOP_unmap_and_replace" = GNTTABOP_UNMAP_AND_REPLACE,
        both: const "GNTTABOP_set_version" = GNTTABOP_SET_VERSION,
        both: const "GNTTABOP_get_status_frames" = GNTTABOP_GET_STATUS_FRAMES,
        both: const "GNTTABOP_get_version" = GNTTABOP_GET_VERSION,
        both: const "GNTTABOP_swap_grant_ref" = GNTTABOP_SWAP_GRANT_REF,
        both: const "GNTTABOP_cache_flush" = GNTTABOP_CACHE_FLUSH,
        both: const "PHYSDEVOP_set_iopl" = PHYSDEVOP_SET_IOPL,
        both: const "GNTMAP_device_map" = GNTMAP_DEVICE_MAP,
        both: const "GNTMAP_host_map" = GNTMAP_HOST_MAP,
        both: const "GNTMAP_readonly" = GNTMAP_READONLY,
        both: const "GNTMAP_application_map" = GNTMAP_APPLICATION_MAP,
        both: const "GNTMAP_contains_pte" = GNTMAP_CONTAINS_PTE,
        both: const "GNTMAP_guest_avail_mask" = GNTMAP_GUEST_AVAIL_MASK,
        both: const "GTF_invalid" = GTF_INVALID,
        both: const "GTF_permit_access" = GTF_PERMIT_ACCESS,
        both: const "GTF_accept_transfer" = GTF_ACCEPT_TRANSFER,
        both: const "GTF_transitive" = GTF_TRANSITIVE,
        both: const "GTF_type_mask" = GTF_TYPE_MASK,
        both: const "GTF_readonly" = GTF_READONLY,
        both: const "GTF_reading" = GTF_READING,
        both: const "GTF_writing" = GTF_WRITING,
        both: const "GTF_sub_page" = GTF_SUB_PAGE,
        both: const "GNTST_okay" = GNTST_OKAY,
        both: const "GNTST_general_error" = GNTST_GENERAL_ERROR,
        both: const "GNTST_bad_domain" = GNTST_BAD_DOMAIN,
        both: const "GNTST_bad_gntref" = GNTST_BAD_GNTREF,
        both: const "GNTST_bad_handle" = GNTST_BAD_HANDLE,
        both: const "GNTST_bad_virt_addr" = GNTST_BAD_VIRT_ADDR,
        both: const "GNTST_bad_dev_addr" = GNTST_BAD_DEV_ADDR,
        both: const "GNTST_no_device_space" = GNTST_NO_DEVICE_SPACE,
        both: const "GNTST_permission_denied" = GNTST_PERMISSION_DENIED,
        both: const "GNTST_bad_page" = GNTST_BAD_PAGE,
        both: const "GNTST_bad_copy_arg" = GNTST_BAD_COPY_ARG,
        both: const "GNTST_address_too_big" = GNTST_ADDRESS_TOO_BIG,
        both: const "GNTST_eagain" = GNTST_EAGAIN,
        both: const "GNTST_no_space" = GNTST_NO_SPACE,
        both: const "GNTTAB_CACHE_CLEAN" = GNTTAB_CACHE_CLEAN,
        both: const "GNTTAB_CACHE_INVAL" = GNTTAB_CACHE_INVAL,
        both: const "GNTTAB_CACHE_SOURCE_GREF" = GNTTAB_CACHE_SOURCE_GREF,
        both: const "MMU_NORMAL_PT_UPDATE" = MMU_NORMAL_PT_UPDATE,
        both: const "MMU_MACHPHYS_UPDATE" = MMU_MACHPHYS_UPDATE,
        both: const "MMU_PT_UPDATE_PRESERVE_AD" = MMU_PT_UPDATE_PRESERVE_AD,
        both: const "MMU_PT_UPDATE_NO_TRANSLATE" = MMU_PT_UPDATE_NO_TRANSLATE,
        both: const "UVMF_NONE" = UVMF_NONE,
        both: const "UVMF_TLB_FLUSH" = UVMF_TLB_FLUSH,
        both: const "UVMF_INVLPG" = UVMF_INVLPG,
        both: const "UVMF_FLUSHTYPE_MASK" = UVMF_FLUSHTYPE_MASK,
        both: const "UVMF_LOCAL" = UVMF_LOCAL,
        both: const "UVMF_MULTI" = UVMF_MULTI,
        both: const "UVMF_ALL" = UVMF_ALL,
        both: const "MMUEXT_PIN_L1_TABLE" = MMUEXT_PIN_L1_TABLE,
        both: const "MMUEXT_PIN_L2_TABLE" = MMUEXT_PIN_L2_TABLE,
        both: const "MMUEXT_PIN_L3_TABLE" = MMUEXT_PIN_L3_TABLE,
        both: const "MMUEXT_PIN_L4_TABLE" = MMUEXT_PIN_L4_TABLE,
        both: const "MMUEXT_UNPIN_TABLE" = MMUEXT_UNPIN_TABLE,
        both: const "MMUEXT_NEW_BASEPTR" = MMUEXT_NEW_BASEPTR,
        both: const "MMUEXT_TLB_FLUSH_LOCAL" = MMUEXT_TLB_FLUSH_LOCAL,
        both: const "MMUEXT_INVLPG_LOCAL" = MMUEXT_INVLPG_LOCAL,
        both: const "MMUEXT_TLB_FLUSH_MULTI" = MMUEXT_TLB_FLUSH_MULTI,
        both: const "MMUEXT_INVLPG_MULTI" = MMUEXT_INVLPG_MULTI,
        both: const "MMUEXT_TLB_FLUSH_ALL" = MMUEXT_TLB_FLUSH_ALL,
        both: const "MMUEXT_INVLPG_ALL" = MMUEXT_INVLPG_ALL,
        both: const "MMUEXT_FLUSH_CACHE" = MMUEXT_FLUSH_CACHE,
        both: const "MMUEXT_SET_LDT" = MMUEXT_SET_LDT,
        both: const "MMUEXT_NEW_USER_BASEPTR" = MMUEXT_NEW_USER_BASEPTR,
        both: const "MMUEXT_CLEAR_PAGE" = MMUEXT_CLEAR_PAGE,
        both: const "MMUEXT_COPY_PAGE" = MMUEXT_COPY_PAGE,
        both: const "MMUEXT_FLUSH_CACHE_GLOBAL" = MMUEXT_FLUSH_CACHE_GLOBAL,
        both: const "MMUEXT_MARK_SUPER" = MMUEXT_MARK_SUPER,
        both: const "MMUEXT_UNMARK_SUPER" = MMUEXT_UNMARK_SUPER,
        both: const "XENFEAT_writable_page_tables" = XENFEAT_WRITABLE_PAGE_TABLES,
        both: const "XENFEAT_writable_descriptor_tables" = XENFEAT_WRITABLE_DESCRIPTOR_TABLES,
        both: const "XENFEAT_auto_translated_physmap" = XENFEAT_AUTO_TRANSLATED_PHYSMAP,
        both: const "XENFEAT_supervisor_mode_kernel" = XENFEAT_SUPERVISOR_MODE_KERNEL,
        both: const "XENFEAT_pae_pgdir_above_4gb" = XENFEAT_PAE_PGDIR_ABOVE_4GB,
        both: const "XENFEAT_mmu_pt_update_preserve_ad" = XENFEAT_MMU_PT_UPDATE_PRESERVE_AD,
        both: const "XENFEAT_highmem_assist" = XENFEAT_HIGHMEM_ASSIST,
        both: const "XENFEAT_gnttab_map_avail_bits" = XENFEAT_GNTTAB_MAP_AVAIL_BITS,
        both: const "XENFEAT_hvm_callback_vector" = XENFEAT_HVM_CALLBACK_VECTOR,
        both: const "XENFEAT_hvm_safe_pvclock" = XENFEAT_HVM_SAFE_PVCLOCK,
        both: const "XENFEAT_hvm_pirqs" = XENFEAT_HVM_PIRQS,
        both: const "XENFEAT_dom0" = XENFEAT_DOM0,
        both: const "XENFEAT_memory_op_vnode_supported" = XENFEAT_MEMORY_OP_VNODE_SUPPORTED,
        both: const "XENFEAT_ARM_SMCCC_supported" = XENFEAT_ARM_SMCCC_SUPPORTED,
        both: const "XENFEAT_linux_rsdp_unrestricted" = XENFEAT_LINUX_RSDP_UNRESTRICTED,
        both: const "XENFEAT_not_direct_mapped" = XENFEAT_NOT_DIRECT_MAPPED,
        both: const "XENFEAT_direct_mapped" = XENFEAT_DIRECT_MAPPED,
        both: const "XENFEAT_NR_SUBMAPS" = XENFEAT_NR_SUBMAPS,
        both: const "XENVER_version" = XENVER_VERSION,
        both: const "XENVER_extraversion" = XENVER_EXTRAVERSION,
        both: const "XENVER_compile_info" = XENVER_COMPILE_INFO,
        both: const "XENVER_capabilities" = XENVER_CAPABILITIES,
        both: const "XENVER_changeset" = XENVER_CHANGESET,
        both: const "XENVER_platform_parameters" = XENVER_PLATFORM_PARAMETERS,
        both: const "XENVER_get_features" = XENVER_GET_FEATURES,
        both: const "XENVER_pagesize" = XENVER_PAGESIZE,
        both: const "XENVER_guest_handle" = XENVER_GUEST_HANDLE,
        both: const "XENVER_commandline" = XENVER_COMMANDLINE,
        both: const "XENVER_build_id" = XENVER_BUILD_ID,
        both: const "SCHEDOP_yield" = SCHEDOP_YIELD,
        both: const "SCHEDOP_block" = SCHEDOP_BLOCK,
        both: const "SCHEDOP_shutdown" = SCHEDOP_SHUTDOWN,
        both: const "SCHEDOP_poll" = SCHEDOP_POLL,
        both: const "SCHEDOP_remote_shutdown" = SCHEDOP_REMOTE_SHUTDOWN,
        both: const "SCHEDOP_shutdown_code" = SCHEDOP_SHUTDOWN_CODE,
        both: const "SCHEDOP_watchdog" = SCHEDOP_WATCHDOG,
        both: const "SCHEDOP_pin_override" = SCHEDOP_PIN_OVERRIDE,
        both: const "SHUTDOWN_poweroff" = SHUTDOWN_POWEROFF,
        both: const "SHUTDOWN_reboot" = SHUTDOWN_REBOOT,
        both: const "SHUTDOWN_suspend" = SHUTDOWN_SUSPEND,
        both: const "SHUTDOWN_crash" = SHUTDOWN_CRASH,
        both: const "SHUTDOWN_watchdog" = SHUTDOWN_WATCHDOG,
        both: const "SHUTDOWN_soft_reset" = SHUTDOWN_SOFT_RESET,
        both: const "CONSOLEIO_write" = CONSOLEIO_WRITE,
        both: const "CONSOLEIO_read" = CONSOLEIO_READ,
        both: const "DOMID_FIRST_RESERVED" = DOMID_FIRST_RESERVED,
        both: const "DOMID_SELF" = DOMID_SELF,
        both: const "DOMID_IO" = DOMID_IO,
        both: const "DOMID_XEN" = DOMID_XEN,
        both: const "DOMID_COW" = DOMID_COW,
        both: const "DOMID_INVALID" = DOMID_INVALID,
        both: const "DOMID_IDLE" = DOMID_IDLE,
        both: const "DOMID_MASK" = DOMID_MASK,
        both: const "XENMEMF_get_address_bits(~0U)" = XENMEMF_ADDRESS_BITS_MASK,
        x86: const "MACH2PHYS_VIRT_START" = MACH2PHYS_VIRT_START,
        x86: const "MACH2PHYS_VIRT_END" = MACH2PHYS_VIRT_END,
    });
    t
}

/// Rust constants the C headers do not define, and why.
const RUST_ONLY: &[(&str, &str)] = &[(
    "XENFEAT_GRANT_MAP_IDENTITY",
    "deprecated and commented out of features.h; the value 12 is in the reference",
)];

#[test]
fn table_keys_are_unique() {
    let t = rust_table();
    let mut seen = BTreeMap::new();
    for r in &t {
        assert!(
            seen.insert(r.key.clone(), ()).is_none(),
            "duplicate row {}",
            r.key
        );
    }
}

/// Every public constant, structure, union, field, type alias and flag of the crate's
/// source has a row in the table (or is listed in [`RUST_ONLY`]).
#[test]
fn table_covers_every_public_item() {
    let t = rust_table();
    let covered: std::collections::BTreeSet<&str> = t.iter().map(|r| r.rust.as_str()).collect();
    let mut missing = Vec::new();
    let mut check = |name: String| {
        if !covered.contains(name.as_str()) && !RUST_ONLY.iter().any(|(n, _)| *n == name) {
            missing.push(name);
        }
    };

    let consts = include_str!("../src/consts.rs");
    let mut in_flags = false;
    for line in consts.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("pub const ")
            && !rest.starts_with("fn ")
        {
            check(rest.split(':').next().unwrap().trim().to_owned());
        }
        if line.starts_with("pub struct XenMemFlags") {
            in_flags = true;
        } else if in_flags && line == "}" {
            in_flags = false;
        } else if in_flags && let Some(rest) = line.strip_prefix("const ") {
            check(format!("XenMemFlags::{}", rest.split(' ').next().unwrap()));
        }
        if let Some(rest) = line.strip_prefix("pub const fn ") {
            check(rest.split('(').next().unwrap().to_owned());
        }
    }

    let structs = include_str!("../src/structs.rs");
    let mut current: Option<String> = None;
    for line in structs.lines() {
        let trimmed = line.trim();
        let decl = trimmed
            .strip_prefix("pub struct ")
            .or_else(|| trimmed.strip_prefix("pub union "));
        if let Some(rest) = decl {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric()).collect();
            check(name.clone());
            current = Some(name);
        } else if let Some(rest) = trimmed.strip_prefix("pub type ") {
            check(rest.split(' ').next().unwrap().to_owned());
        } else if line == "}" {
            current = None;
        } else if let (Some(s), Some(rest)) = (&current, trimmed.strip_prefix("pub "))
            && !rest.starts_with("fn ")
            && !rest.starts_with("const ")
        {
            check(format!("{s}.{}", rest.split(':').next().unwrap()));
        }
    }
    assert!(
        missing.is_empty(),
        "items without a row in the ABI table: {missing:?}"
    );
}

/// What to do when a tool or header is missing: fail under CI, skip otherwise.
fn unavailable(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("the C ABI test cannot run: {what}");
    }
    eprintln!("skipping the C ABI comparison: {what} (set CI to make this an error)");
}

fn tool_exists(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn include_dir() -> PathBuf {
    std::env::var_os("XEN_INCLUDE_DIR").map_or_else(|| PathBuf::from("/usr/include"), PathBuf::from)
}

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/abi/abi.c")
}

/// Compiles `abi.c` with `cc` and `extra` flags into `out`, panicking with the compiler's
/// messages on failure.
fn compile(cc: &str, extra: &[&str], out: &Path) {
    let inc = include_dir();
    let mut cmd = Command::new(cc);
    cmd.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-D__XEN_INTERFACE_VERSION__=0x00040e00",
    ])
    .args(extra)
    .arg("-idirafter")
    .arg(&inc)
    .arg(source())
    .arg("-o")
    .arg(out);
    let o = cmd.output().unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        o.status.success(),
        "{cc} failed on abi.c:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn run(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("abi.c prints ASCII")
}

/// Parses the C output into `"<kind> <name>" -> value`.
fn parse(output: &str) -> BTreeMap<String, i128> {
    let mut m = BTreeMap::new();
    for line in output.lines() {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: i128 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            m.insert(key.to_owned(), value).is_none(),
            "duplicate line {line:?}"
        );
    }
    m
}

/// Compares the C output of one target with the table, listing every difference.
fn compare(target: &str, output: &str, x86: bool) {
    let mut c = parse(output);
    let arch = format!("arch {target}");
    assert_eq!(
        c.remove(&arch),
        Some(1),
        "{target}: abi.c was not compiled for {target}"
    );
    let table = rust_table();
    let mut errors = Vec::new();
    for r in table.iter().filter(|r| x86 || !r.x86_only) {
        match c.get(&r.key) {
            None => errors.push(format!("{}: not printed by abi.c (Rust {})", r.key, r.rust)),
            Some(&v) if v != r.value => {
                errors.push(format!("{}: C {v}, Rust {} = {}", r.key, r.rust, r.value));
            }
            Some(_) => {}
        }
    }
    for key in c.keys() {
        if !table.iter().any(|r| &r.key == key) {
            errors.push(format!("{key}: printed by abi.c but not in the Rust table"));
        }
    }
    assert!(
        errors.is_empty(),
        "{target}: {} ABI differences:\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(c.len() > 250, "{target}: only {} lines compared", c.len());
}

fn headers_present() -> bool {
    let ok = include_dir().join("xen/grant_table.h").is_file();
    if !ok {
        unavailable(&format!(
            "no xen/grant_table.h under {} (install libxen-dev)",
            include_dir().display()
        ));
    }
    ok
}

#[test]
fn c_abi_x86_64() {
    if !headers_present() {
        return;
    }
    if !tool_exists("cc") {
        return unavailable("no `cc` for x86_64");
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xen-abi-c-x86_64");
    compile("cc", &[], &out);
    compare("x86_64", &run(&mut Command::new(&out)), true);
}

#[test]
fn c_abi_aarch64() {
    if !headers_present() {
        return;
    }
    for tool in ["aarch64-linux-gnu-gcc", "qemu-aarch64"] {
        if !tool_exists(tool) {
            return unavailable(&format!(
                "no `{tool}` (install gcc-aarch64-linux-gnu, qemu-user)"
            ));
        }
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("xen-abi-c-aarch64");
    compile("aarch64-linux-gnu-gcc", &["-static"], &out);
    compare(
        "aarch64",
        &run(Command::new("qemu-aarch64").arg(&out)),
        false,
    );
}

#[test]
fn compare_reports_a_wrong_value() {
    let rows: String = rust_table()
        .iter()
        .map(|r| format!("{} {}\n", r.key, r.value))
        .collect();
    let good = format!("arch x86_64 1\n{rows}");
    compare("x86_64", &good, true);
    let bad = good.replace("const XENMEM_exchange 11", "const XENMEM_exchange 12");
    let e = std::panic::catch_unwind(|| compare("x86_64", &bad, true)).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("const XENMEM_exchange: C 12, Rust XENMEM_EXCHANGE = 11"),
        "{msg}"
    );
    let extra = format!("{good}const XENMEM_bogus 1\n");
    assert!(std::panic::catch_unwind(|| compare("x86_64", &extra, true)).is_err());
    let missing = good.replace("const DOMID_IDLE 32767\n", "");
    assert!(std::panic::catch_unwind(|| compare("x86_64", &missing, true)).is_err());
    // An output that does not say it is aarch64 is not taken as aarch64's.
    assert!(std::panic::catch_unwind(|| compare("aarch64", &good, false)).is_err());
}
