//! `aarch64-domu`: a dom0less domU that grants pages to dom0.
//!
//! It turns the MMU on, maps grant-table frame 0 at `GUEST_GNTTAB_BASE`, fills
//! [`NR_GRANTS`] pages with the [`pattern`] and grants them to dom0 as references
//! [`FIRST_REF`].. (v1 entries: domid and frame first, then `GTF_permit_access` after a
//! barrier). It then waits for dom0's simulated device to write the reply pattern into the
//! second page, acknowledges it in the third, and idles. It prints through its emulated PL011,
//! which Xen shows on its console as `DOM1: ...`.
//!
//! On the host this builds to a stub.

#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "aarch64-domu is a bare-metal kernel for aarch64-unknown-none; \
         run it with `cargo xtask xen-qemu aarch64`"
    );
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod kernel {
    use aarch64_dom0::layout::{
        ACK, ACK_AT, ACK_PAGE, DOMU_MEMORY, FIRST_REF, GUEST_GNTTAB_BASE, GUEST_PL011_BASE,
        GUEST_RAM0_BASE, LOW_PAGE, NR_GRANTS, REPLY_AT, REPLY_LEN, REPLY_PAGE,
    };
    use aarch64_dom0::mmu::{self, Attr, BLOCK_1G, BLOCK_2M, IdMap};
    use aarch64_dom0::{boot, cpu, pattern};
    use core::fmt::Write;
    use core::ptr::{addr_of, addr_of_mut};
    use swiotlb_xen::native::Hypercall as NativeHypercall;
    use xen_abi::{
        DOMID_SELF, GTF_PERMIT_ACCESS, XENMAPSPACE_GRANT_TABLE, XenAddToPhysmap,
        XenMemoryReservation, ops,
    };

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    /// The granted pages of `.bss` (all but [`LOW_PAGE`]).
    static mut PAGES: [Page; LOW_PAGE] = [const { Page([0; 4096]) }; LOW_PAGE];

    /// The address of granted page `i`: a page of `.bss`, or the last page of RAM.
    fn page(i: usize) -> *mut u8 {
        if i == LOW_PAGE {
            (GUEST_RAM0_BASE + DOMU_MEMORY - 4096) as *mut u8
        } else {
            // SAFETY: only the address is taken.
            unsafe { addr_of_mut!(PAGES[i]).cast::<u8>() }
        }
    }
    static mut MAP: IdMap = IdMap::new();

    /// The emulated PL011's data and flag registers.
    struct Uart;

    impl Write for Uart {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let dr = GUEST_PL011_BASE as *mut u32;
            let fr = (GUEST_PL011_BASE + 0x18) as *const u32;
            for b in s.bytes() {
                // SAFETY: the vpl011's registers are mapped as Device memory by the identity
                // map; FR bit 5 is "transmit FIFO full".
                unsafe {
                    while fr.read_volatile() & (1 << 5) != 0 {}
                    dr.write_volatile(u32::from(b));
                }
            }
            Ok(())
        }
    }

    macro_rules! say {
        ($($arg:tt)*) => {{ let _ = writeln!(Uart, $($arg)*); }};
    }

    fn idle() -> ! {
        loop {
            // SAFETY: waits for an interrupt; none is enabled, so Xen keeps the vCPU blocked.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
        }
    }

    #[unsafe(no_mangle)]
    extern "C" fn kernel_main(_dtb: u64, loaded_at: u64) -> ! {
        if loaded_at != GUEST_RAM0_BASE {
            // Absolute addresses (the UART's are constants) still work: say why we stop.
            say!("domU loaded at {loaded_at:#x}, linked at {GUEST_RAM0_BASE:#x}: stopping");
            idle();
        }
        // SAFETY: first thing at boot, single CPU, MMU off: nothing else uses MAP. The map
        // covers the vpl011 (Device), the grant-table window and all of RAM (Normal), which
        // holds the image, .bss and MAP itself.
        unsafe {
            let map = &mut *addr_of_mut!(MAP);
            let l2 = addr_of!((*addr_of!(MAP)).l2) as u64;
            let ok = map.split_gib(0, l2).is_ok()
                && map.map_2m(GUEST_PL011_BASE, BLOCK_2M, Attr::Device).is_ok()
                && map
                    .map_2m(GUEST_GNTTAB_BASE, BLOCK_2M, Attr::Normal)
                    .is_ok()
                && map.map_1g(GUEST_RAM0_BASE, BLOCK_1G, Attr::Normal).is_ok();
            if !ok {
                idle();
            }
            mmu::enable(map);
        }
        say!("domU up, MMU on; granting {NR_GRANTS} pages to dom0");
        run();
        idle()
    }

    fn run() {
        let xen = NativeHypercall;
        let mut xatp = XenAddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: 0,
            gpfn: GUEST_GNTTAB_BASE >> 12,
        };
        // SAFETY: GUEST_GNTTAB_BASE is the window Xen reserves for grant-table frames; this
        // kernel uses it for nothing else.
        if let Err(e) = unsafe { ops::add_to_physmap(&xen, &mut xatp) } {
            say!("XENMEM_add_to_physmap(grant table) failed: {e}");
            return;
        }
        move_below_4g(&xen, page(LOW_PAGE) as u64 >> 12);
        for i in 0..NR_GRANTS {
            let gfn = page(i) as u64 >> 12;
            // SAFETY: the page is this domain's RAM (in `.bss`, or the last page of RAM, which
            // Xen leaves free: it puts the device tree 2 MiB below the end, and which is
            // populated again), mapped by the identity map and touched by this CPU only;
            // dom0 reads it only after the grants exist.
            let bytes = unsafe { core::slice::from_raw_parts_mut(page(i), 4096) };
            pattern::fill(bytes, i, gfn);
        }
        // The v1 grant entries: u16 flags, u16 domid, u32 frame, 8 bytes each.
        let table = GUEST_GNTTAB_BASE as *mut u16;
        for i in 0..NR_GRANTS {
            let gfn = page(i) as u64 >> 12;
            // CAST: FIRST_REF + i is a small index.
            let entry = (FIRST_REF as usize + i) * 4;
            // SAFETY: grant-table frame 0 is mapped (Normal memory) at GUEST_GNTTAB_BASE; the
            // entry lies in its first 4 KiB. The flags go last, after a barrier, so Xen never
            // sees a permitted entry with a stale frame.
            unsafe {
                table.add(entry + 1).write_volatile(0); // domid 0
                // CAST: a domU gfn is below 2^32.
                table
                    .add(entry + 2)
                    .cast::<u32>()
                    .write_volatile(gfn as u32);
                cpu::store_barrier();
                table.add(entry).write_volatile(GTF_PERMIT_ACCESS);
            }
            say!(
                "granted ref {} = gfn {gfn:#x} (page {i}) to dom0",
                FIRST_REF as usize + i
            );
        }
        wait_for_reply();
    }

    /// Gives frame `gfn` back to Xen and has it populated again below 4 GiB, as a balloon
    /// driver would for a device with a 32-bit mask.
    fn move_below_4g(xen: &NativeHypercall, gfn: u64) {
        let mut frames = [gfn];
        let mut r = XenMemoryReservation::with_frames(&mut frames, 0, 0);
        // SAFETY: the frame list is a live local; the page is the last of this domain's RAM,
        // which nothing uses (Xen put the device tree 2 MiB below the end).
        let released = unsafe { ops::decrease_reservation(xen, &mut r) };
        let mut frames = [gfn];
        let mut r = XenMemoryReservation::with_frames(&mut frames, 0, 32);
        // SAFETY: as above; the frame was just released, so it is unpopulated.
        let populated = unsafe { ops::populate_physmap(xen, &mut r) };
        match (released, populated) {
            (Ok(1), Ok(1)) => {
                say!("gfn {gfn:#x} moved below 4 GiB (populate_physmap, 32 address bits)")
            }
            (a, b) => {
                say!("gfn {gfn:#x} not moved: decrease_reservation {a:?}, populate_physmap {b:?}")
            }
        }
    }

    fn wait_for_reply() {
        let start = cpu::millis();
        let reply = page(REPLY_PAGE);
        loop {
            // SAFETY: the page is this domain's; dom0's device writes it concurrently, so it
            // is read with volatile byte loads and never through a reference.
            let seen = (REPLY_AT..REPLY_AT + REPLY_LEN).all(|off| unsafe {
                reply.add(off).read_volatile() == pattern::reply_byte(REPLY_PAGE, off)
            });
            if seen {
                break;
            }
            if cpu::millis() - start > 60_000 {
                say!("no reply from dom0's device after 60 s");
                return;
            }
            let _ = ops::sched_yield(&NativeHypercall);
        }
        // SAFETY: as above, volatile byte loads of this domain's own page.
        let first = |i: usize| unsafe { reply.add(REPLY_AT + i).read_volatile() };
        say!(
            "saw the edu reply in page {REPLY_PAGE} (gfn {:#x}) at {REPLY_AT:#x}..{:#x}: \
             {:02x} {:02x} {:02x} {:02x}.., all as expected; acknowledging",
            reply as u64 >> 12,
            REPLY_AT + REPLY_LEN,
            first(0),
            first(1),
            first(2),
            first(3)
        );
        let ack = page(ACK_PAGE);
        for (i, b) in ACK.iter().enumerate() {
            // SAFETY: as above, a volatile write into this domain's own granted page.
            unsafe { ack.add(ACK_AT + i).write_volatile(*b) };
        }
        cpu::full_barrier();
    }

    #[unsafe(no_mangle)]
    extern "C" fn exception_handler(kind: u64, esr: u64, elr: u64, far: u64) -> ! {
        say!(
            "exception {kind} ({}): ESR {esr:#x} ELR {elr:#x} FAR {far:#x}",
            boot::exception_kind(kind)
        );
        idle()
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        say!("panic: {info}");
        idle()
    }
}
