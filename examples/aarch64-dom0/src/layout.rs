//! What dom0 and the domU agree on, and the guest memory layout Xen gives them
//! (`xen/include/public/arch-arm.h`).

/// The domain id Xen gives the first dom0less domU.
pub const DOMU_ID: u16 = 1;

/// The first grant reference the domU uses: references 0..7 are reserved
/// (`GNTTAB_NR_RESERVED_ENTRIES`).
pub const FIRST_REF: u32 = 8;

/// How many pages the domU grants: [`NR_GRANTS`] - 1 pages of its `.bss` and
/// [`LOW_PAGE`].
pub const NR_GRANTS: usize = 5;

/// The page (index) the domU grants from the end of its RAM after trading it for a frame
/// below 4 GiB (`XENMEM_decrease_reservation`, then `XENMEM_populate_physmap` with
/// address bits 32). Xen gives a domU its RAM from the highest free memory first, above
/// 4 GiB here, so the `edu` device reaches the other granted pages only through the bounce
/// pool and this one directly, at its machine address.
pub const LOW_PAGE: usize = NR_GRANTS - 1;

/// The domU's RAM (the harness's `memory` property of the domain node, in bytes).
pub const DOMU_MEMORY: u64 = 128 << 20;

/// `GUEST_GNTTAB_BASE`: where a domU maps its grant-table frames.
pub const GUEST_GNTTAB_BASE: u64 = 0x3800_0000;

/// `GUEST_PL011_BASE`: the domU's emulated PL011 (`vpl011`).
pub const GUEST_PL011_BASE: u64 = 0x2200_0000;

/// `GUEST_RAM0_BASE`: the start of a domU's RAM, where Xen loads its kernel.
pub const GUEST_RAM0_BASE: u64 = 0x4000_0000;

/// dom0's first (1:1) RAM bank with QEMU `-m 5G` and `dom0_mem=3G` on Xen 4.17: Xen
/// allocates it at the same machine address every boot (0x50000000..0x100000000, the RAM
/// below 4 GiB that Xen and the boot modules leave free), and places the kernel at its start.
/// The rest of dom0's memory is a bank above 4 GiB; the kernel reads both from the device
/// tree Xen gives it.
pub const DOM0_RAM_BASE: u64 = 0x5000_0000;

/// The part of the address space dom0's identity map covers as Normal memory, which holds
/// every RAM bank QEMU's `virt` machine can have here: 1 GiB (where `virt`'s RAM starts) to
/// 16 GiB. The kernel checks that the banks Xen gave it lie inside.
pub const RAM_MAP_BASE: u64 = 0x4000_0000;

/// The size of [`RAM_MAP_BASE`]'s range.
pub const RAM_MAP_SIZE: u64 = 15 << 30;

/// The first gigabyte of `virt`'s address space (flash, GIC, UART, the PCI host bridge's
/// I/O and 32-bit memory windows), mapped as Device memory; dom0 touches only the `edu`
/// device's BAR there.
pub const LOW_DEVICES_SIZE: u64 = 1 << 30;

/// Where dom0 maps the domU's grants (`host_addr`): guest-physical addresses outside dom0's
/// RAM, outside QEMU's RAM (which ends at 6 GiB) and outside `virt`'s devices, so a grant
/// mapping never replaces a page dom0 uses (Linux takes ballooned-out or "unpopulated"
/// pages for the same reason).
pub const FOREIGN_WINDOW: u64 = 0x8_0000_0000;

/// The size of the foreign window in dom0's identity map.
pub const FOREIGN_WINDOW_SIZE: u64 = 1 << 30;

/// The page (index) into which dom0's `edu` device writes the reply pattern.
pub const REPLY_PAGE: usize = 1;

/// Where in that page the reply starts.
pub const REPLY_AT: usize = 0x100;

/// How many bytes the reply has.
pub const REPLY_LEN: usize = 0x800;

/// The page (index) in which the domU acknowledges that it saw the reply.
pub const ACK_PAGE: usize = 2;

/// Where in that page the acknowledgement goes (outside the bytes dom0 checks before).
pub const ACK_AT: usize = 0xf00;

/// The acknowledgement.
pub const ACK: [u8; 8] = *b"DOMU-ACK";

/// Where in [`REPLY_PAGE`] the CPU-played device of the cache-maintenance checks writes
/// (outside the bytes the domU waits for, so that only the real device's write makes it
/// acknowledge).
pub const SIM_REPLY_AT: usize = 0xa00;

/// How many bytes the CPU-played device writes there.
pub const SIM_REPLY_LEN: usize = 0x400;
