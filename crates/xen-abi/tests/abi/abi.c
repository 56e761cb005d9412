/*
 * Prints the sizes, alignments and field offsets of the Xen ABI structures that the
 * xen-abi crate defines, and the values of its constants, as seen by C through Xen's public
 * headers. One item per line, "<kind> <name> <value>":
 *
 *   size xen_memory_exchange 72
 *   align xen_memory_exchange 8
 *   offset xen_memory_exchange.nr_exchanged 64
 *   const XENMEM_exchange 11
 *
 * Compile with -D__XEN_INTERFACE_VERSION__=0x00040e00 (otherwise struct gnttab_cache_flush
 * is hidden and mem_flags is called address_bits). tests/abi_c.rs builds and runs this for
 * x86_64 and aarch64 and compares every line with the Rust definitions.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <xen/xen.h>
#include <xen/memory.h>
#include <xen/grant_table.h>
#include <xen/features.h>
#include <xen/version.h>
#include <xen/sched.h>
#include <xen/physdev.h>

#if __XEN_INTERFACE_VERSION__ != 0x00040e00
#error "compile with -D__XEN_INTERFACE_VERSION__=0x00040e00"
#endif

/* An unsigned constant, printed under its own name. */
#define CU(n) printf("const %s %llu\n", #n, (unsigned long long)(n))
/* An unsigned expression, printed under a given name. */
#define CUN(s, e) printf("const %s %llu\n", s, (unsigned long long)(e))
/* A signed constant. */
#define CS(n) printf("const %s %lld\n", #n, (long long)(n))
/* Size and alignment of a type. */
#define SIZE(name, t)                                                   \
    do {                                                                \
        printf("size %s %zu\n", name, sizeof(t));                       \
        printf("align %s %zu\n", name, (size_t)_Alignof(t));            \
    } while (0)
/* Size and alignment of a member's type (for anonymous unions and handles). */
#define MSIZE(name, t, f) SIZE(name, __typeof__(((t *)0)->f))
/* Offset of a field. */
#define OFF(name, t, f) printf("offset %s.%s %zu\n", name, #f, offsetof(t, f))

int main(void)
{
    /* The architecture the program was compiled for, as a line the test checks first. */
#if defined(__x86_64__)
    printf("arch x86_64 1\n");
#elif defined(__aarch64__)
    printf("arch aarch64 1\n");
#else
#error "only x86_64 and aarch64 are supported"
#endif

    /* Scalar types. */
    SIZE("xen_ulong_t", xen_ulong_t);
    /* xen_long_t is not a public typedef on x86; multicall_entry.result has that type. */
    MSIZE("xen_long_t", struct multicall_entry, result);
    SIZE("xen_pfn_t", xen_pfn_t);
    SIZE("domid_t", domid_t);
    SIZE("grant_ref_t", grant_ref_t);
    SIZE("grant_handle_t", grant_handle_t);
    SIZE("guest_handle", XEN_GUEST_HANDLE(xen_pfn_t));

    SIZE("xen_memory_reservation", struct xen_memory_reservation);
    OFF("xen_memory_reservation", struct xen_memory_reservation, extent_start);
    OFF("xen_memory_reservation", struct xen_memory_reservation, nr_extents);
    OFF("xen_memory_reservation", struct xen_memory_reservation, extent_order);
    OFF("xen_memory_reservation", struct xen_memory_reservation, mem_flags);
    OFF("xen_memory_reservation", struct xen_memory_reservation, domid);

    SIZE("xen_memory_exchange", struct xen_memory_exchange);
    OFF("xen_memory_exchange", struct xen_memory_exchange, in);
    OFF("xen_memory_exchange", struct xen_memory_exchange, out);
    OFF("xen_memory_exchange", struct xen_memory_exchange, nr_exchanged);

    SIZE("gnttab_cache_flush", struct gnttab_cache_flush);
    OFF("gnttab_cache_flush", struct gnttab_cache_flush, a);
    OFF("gnttab_cache_flush", struct gnttab_cache_flush, offset);
    OFF("gnttab_cache_flush", struct gnttab_cache_flush, length);
    OFF("gnttab_cache_flush", struct gnttab_cache_flush, op);
    MSIZE("gnttab_cache_flush.a", struct gnttab_cache_flush, a);
    OFF("gnttab_cache_flush", struct gnttab_cache_flush, a.dev_bus_addr);
    OFF("gnttab_cache_flush", struct gnttab_cache_flush, a.ref);

    SIZE("multicall_entry", struct multicall_entry);
    OFF("multicall_entry", struct multicall_entry, op);
    OFF("multicall_entry", struct multicall_entry, result);
    OFF("multicall_entry", struct multicall_entry, args);
    MSIZE("multicall_entry.args", struct multicall_entry, args);

    SIZE("mmu_update", struct mmu_update);
    OFF("mmu_update", struct mmu_update, ptr);
    OFF("mmu_update", struct mmu_update, val);

    SIZE("mmuext_op", struct mmuext_op);
    OFF("mmuext_op", struct mmuext_op, cmd);
    OFF("mmuext_op", struct mmuext_op, arg1);
    OFF("mmuext_op", struct mmuext_op, arg2);

    SIZE("gnttab_map_grant_ref", struct gnttab_map_grant_ref);
    OFF("gnttab_map_grant_ref", struct gnttab_map_grant_ref, host_addr);
    OFF("gnttab_map_grant_ref", struct gnttab_map_grant_ref, flags);
    OFF("gnttab_map_grant_ref", struct gnttab_map_grant_ref, ref);
    OFF("gnttab_map_grant_ref", struct gnttab_map_grant_ref, dom);
    OFF("gnttab_map_grant_ref", struct gnttab_map_grant_ref, status);
    OFF("gnttab_map_grant_ref", struct gnttab_map_grant_ref, handle);
    OFF("gnttab_map_grant_ref", struct gnttab_map_grant_ref, dev_bus_addr);

    SIZE("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref);
    OFF("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref, host_addr);
    OFF("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref, dev_bus_addr);
    OFF("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref, handle);
    OFF("gnttab_unmap_grant_ref", struct gnttab_unmap_grant_ref, status);

    SIZE("xen_add_to_physmap", struct xen_add_to_physmap);
    OFF("xen_add_to_physmap", struct xen_add_to_physmap, domid);
    OFF("xen_add_to_physmap", struct xen_add_to_physmap, size);
    OFF("xen_add_to_physmap", struct xen_add_to_physmap, space);
    OFF("xen_add_to_physmap", struct xen_add_to_physmap, idx);
    OFF("xen_add_to_physmap", struct xen_add_to_physmap, gpfn);

    SIZE("xen_feature_info", struct xen_feature_info);
    OFF("xen_feature_info", struct xen_feature_info, submap_idx);
    OFF("xen_feature_info", struct xen_feature_info, submap);

    SIZE("sched_shutdown", struct sched_shutdown);
    OFF("sched_shutdown", struct sched_shutdown, reason);

    SIZE("xen_machphys_mapping", struct xen_machphys_mapping);
    OFF("xen_machphys_mapping", struct xen_machphys_mapping, v_start);
    OFF("xen_machphys_mapping", struct xen_machphys_mapping, v_end);
    OFF("xen_machphys_mapping", struct xen_machphys_mapping, max_mfn);

    /* XENMEMF_* flags and helpers. */
    CU(XENMEMF_populate_on_demand);
    CU(XENMEMF_exact_node_request);
    CU(XENMEMF_vnode);
    CUN("XENMEMF_address_bits(32)", XENMEMF_address_bits(32));
    CUN("XENMEMF_node(0)", XENMEMF_node(0));
    CUN("XENMEMF_node(3)", XENMEMF_node(3));
    CUN("XENMEMF_exact_node(2)", XENMEMF_exact_node(2));

    /* Constants, in the order of src/consts.rs. */
    CU(__HYPERVISOR_set_trap_table);
    CU(__HYPERVISOR_mmu_update);
    CU(__HYPERVISOR_set_callbacks);
    CU(__HYPERVISOR_platform_op);
    CU(__HYPERVISOR_memory_op);
    CU(__HYPERVISOR_multicall);
    CU(__HYPERVISOR_update_va_mapping);
    CU(__HYPERVISOR_set_timer_op);
    CU(__HYPERVISOR_xen_version);
    CU(__HYPERVISOR_console_io);
    CU(__HYPERVISOR_grant_table_op);
    CU(__HYPERVISOR_vm_assist);
    CU(__HYPERVISOR_update_va_mapping_otherdomain);
    CU(__HYPERVISOR_iret);
    CU(__HYPERVISOR_vcpu_op);
    CU(__HYPERVISOR_set_segment_base);
    CU(__HYPERVISOR_mmuext_op);
    CU(__HYPERVISOR_sched_op);
    CU(__HYPERVISOR_callback_op);
    CU(__HYPERVISOR_event_channel_op);
    CU(__HYPERVISOR_physdev_op);
    CU(__HYPERVISOR_hvm_op);
    CU(__HYPERVISOR_dm_op);
    CU(XENMEM_increase_reservation);
    CU(XENMEM_decrease_reservation);
    CU(XENMEM_maximum_ram_page);
    CU(XENMEM_current_reservation);
    CU(XENMEM_maximum_reservation);
    CU(XENMEM_machphys_mfn_list);
    CU(XENMEM_populate_physmap);
    CU(XENMEM_add_to_physmap);
    CU(XENMEM_memory_map);
    CU(XENMEM_machine_memory_map);
    CU(XENMEM_exchange);
    CU(XENMEM_machphys_mapping);
    CU(XENMEM_maximum_gpfn);
    CU(XENMEM_remove_from_physmap);
    CU(XENMEM_add_to_physmap_batch);
    CU(XENMEM_acquire_resource);
    CU(XENMAPSPACE_shared_info);
    CU(XENMAPSPACE_grant_table);
    CU(XENMAPSPACE_gmfn);
    CU(XENMAPSPACE_gmfn_range);
    CU(XENMAPSPACE_gmfn_foreign);
    CU(XENMAPSPACE_dev_mmio);
    CU(GNTTABOP_map_grant_ref);
    CU(GNTTABOP_unmap_grant_ref);
    CU(GNTTABOP_setup_table);
    CU(GNTTABOP_dump_table);
    CU(GNTTABOP_transfer);
    CU(GNTTABOP_copy);
    CU(GNTTABOP_query_size);
    CU(GNTTABOP_unmap_and_replace);
    CU(GNTTABOP_set_version);
    CU(GNTTABOP_get_status_frames);
    CU(GNTTABOP_get_version);
    CU(GNTTABOP_swap_grant_ref);
    CU(GNTTABOP_cache_flush);
    CU(PHYSDEVOP_set_iopl);
    CU(GNTMAP_device_map);
    CU(GNTMAP_host_map);
    CU(GNTMAP_readonly);
    CU(GNTMAP_application_map);
    CU(GNTMAP_contains_pte);
    CU(GNTMAP_guest_avail_mask);
    CU(GTF_invalid);
    CU(GTF_permit_access);
    CU(GTF_accept_transfer);
    CU(GTF_transitive);
    CU(GTF_type_mask);
    CU(GTF_readonly);
    CU(GTF_reading);
    CU(GTF_writing);
    CU(GTF_sub_page);
    CS(GNTST_okay);
    CS(GNTST_general_error);
    CS(GNTST_bad_domain);
    CS(GNTST_bad_gntref);
    CS(GNTST_bad_handle);
    CS(GNTST_bad_virt_addr);
    CS(GNTST_bad_dev_addr);
    CS(GNTST_no_device_space);
    CS(GNTST_permission_denied);
    CS(GNTST_bad_page);
    CS(GNTST_bad_copy_arg);
    CS(GNTST_address_too_big);
    CS(GNTST_eagain);
    CS(GNTST_no_space);
    CU(GNTTAB_CACHE_CLEAN);
    CU(GNTTAB_CACHE_INVAL);
    CU(GNTTAB_CACHE_SOURCE_GREF);
    CU(MMU_NORMAL_PT_UPDATE);
    CU(MMU_MACHPHYS_UPDATE);
    CU(MMU_PT_UPDATE_PRESERVE_AD);
    CU(MMU_PT_UPDATE_NO_TRANSLATE);
    CU(UVMF_NONE);
    CU(UVMF_TLB_FLUSH);
    CU(UVMF_INVLPG);
    CU(UVMF_FLUSHTYPE_MASK);
    CU(UVMF_LOCAL);
    CU(UVMF_MULTI);
    CU(UVMF_ALL);
    CU(MMUEXT_PIN_L1_TABLE);
    CU(MMUEXT_PIN_L2_TABLE);
    CU(MMUEXT_PIN_L3_TABLE);
    CU(MMUEXT_PIN_L4_TABLE);
    CU(MMUEXT_UNPIN_TABLE);
    CU(MMUEXT_NEW_BASEPTR);
    CU(MMUEXT_TLB_FLUSH_LOCAL);
    CU(MMUEXT_INVLPG_LOCAL);
    CU(MMUEXT_TLB_FLUSH_MULTI);
    CU(MMUEXT_INVLPG_MULTI);
    CU(MMUEXT_TLB_FLUSH_ALL);
    CU(MMUEXT_INVLPG_ALL);
    CU(MMUEXT_FLUSH_CACHE);
    CU(MMUEXT_SET_LDT);
    CU(MMUEXT_NEW_USER_BASEPTR);
    CU(MMUEXT_CLEAR_PAGE);
    CU(MMUEXT_COPY_PAGE);
    CU(MMUEXT_FLUSH_CACHE_GLOBAL);
    CU(MMUEXT_MARK_SUPER);
    CU(MMUEXT_UNMARK_SUPER);
    CU(XENFEAT_writable_page_tables);
    CU(XENFEAT_writable_descriptor_tables);
    CU(XENFEAT_auto_translated_physmap);
    CU(XENFEAT_supervisor_mode_kernel);
    CU(XENFEAT_pae_pgdir_above_4gb);
    CU(XENFEAT_mmu_pt_update_preserve_ad);
    CU(XENFEAT_highmem_assist);
    CU(XENFEAT_gnttab_map_avail_bits);
    CU(XENFEAT_hvm_callback_vector);
    CU(XENFEAT_hvm_safe_pvclock);
    CU(XENFEAT_hvm_pirqs);
    CU(XENFEAT_dom0);
    /* XENFEAT_grant_map_identity (12) is commented out of features.h: deprecated. */
    CU(XENFEAT_memory_op_vnode_supported);
    CU(XENFEAT_ARM_SMCCC_supported);
    CU(XENFEAT_linux_rsdp_unrestricted);
    CU(XENFEAT_not_direct_mapped);
    CU(XENFEAT_direct_mapped);
    CU(XENFEAT_NR_SUBMAPS);
    CU(XENVER_version);
    CU(XENVER_extraversion);
    CU(XENVER_compile_info);
    CU(XENVER_capabilities);
    CU(XENVER_changeset);
    CU(XENVER_platform_parameters);
    CU(XENVER_get_features);
    CU(XENVER_pagesize);
    CU(XENVER_guest_handle);
    CU(XENVER_commandline);
    CU(XENVER_build_id);
    CU(SCHEDOP_yield);
    CU(SCHEDOP_block);
    CU(SCHEDOP_shutdown);
    CU(SCHEDOP_poll);
    CU(SCHEDOP_remote_shutdown);
    CU(SCHEDOP_shutdown_code);
    CU(SCHEDOP_watchdog);
    CU(SCHEDOP_pin_override);
    CU(SHUTDOWN_poweroff);
    CU(SHUTDOWN_reboot);
    CU(SHUTDOWN_suspend);
    CU(SHUTDOWN_crash);
    CU(SHUTDOWN_watchdog);
    CU(SHUTDOWN_soft_reset);
    CU(CONSOLEIO_write);
    CU(CONSOLEIO_read);
    CU(DOMID_FIRST_RESERVED);
    CU(DOMID_SELF);
    CU(DOMID_IO);
    CU(DOMID_XEN);
    CU(DOMID_COW);
    CU(DOMID_INVALID);
    CU(DOMID_IDLE);
    CU(DOMID_MASK);
    CUN("XENMEMF_get_address_bits(~0U)", XENMEMF_get_address_bits(~0U));
#if defined(__x86_64__)
    CU(MACH2PHYS_VIRT_START);
#endif
#if defined(__x86_64__)
    CU(MACH2PHYS_VIRT_END);
#endif

    return 0;
}
