//! The dom0 kernel: boot, console, and the checks.

mod checks;
mod devchecks;
mod edu;
mod grow;
mod hyp;
mod mem;
mod virtio;

use aarch64_dom0::boot;
use aarch64_dom0::fdt::{Banks, Fdt, PciHost, Range};
use aarch64_dom0::layout::{
    DOM0_RAM_BASE, FOREIGN_WINDOW, FOREIGN_WINDOW_SIZE, LOW_DEVICES_SIZE, RAM_MAP_BASE,
    RAM_MAP_SIZE,
};
use aarch64_dom0::mmu::{self, Attr, IdMap};
use aarch64_dom0::report::Report;
use core::fmt::{self, Write};
use core::ptr::addr_of_mut;
use swiotlb_xen::native::Hypercall as NativeHypercall;
use xen_abi::{SHUTDOWN_POWEROFF, ops};

/// Xen's console (`CONSOLEIO_write`), one hypercall per line.
pub struct XenConsole {
    buf: [u8; 240],
    len: usize,
}

impl XenConsole {
    /// An empty line buffer.
    pub const fn new() -> Self {
        Self {
            buf: [0; 240],
            len: 0,
        }
    }

    fn flush(&mut self) {
        // A console that cannot print has no better place to say so.
        let _ = ops::console_write(&NativeHypercall, &self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for XenConsole {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

/// Prints a line on Xen's console.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!($crate::dom0::XenConsole::new(), $($arg)*);
    }};
}
pub(crate) use say;

static mut MAP: IdMap = IdMap::new();

/// What the device tree Xen gave dom0 says, as far as the checks need it.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Where the device tree is, and its size (0 if it is not a device tree).
    pub dtb: (u64, usize),
    /// dom0's RAM banks.
    pub banks: Banks,
    /// The PCI host bridge, if the tree has a generic ECAM one.
    pub pci: Option<PciHost>,
    /// Whether the host bridge's ECAM and 32-bit window are now mapped as Device memory
    /// (and overlap no Normal mapping).
    pub pci_mapped: bool,
    /// The `virtio,mmio` transports (the `virt` machine's 32), in the tree's order: the
    /// first `.1` of `.0`.
    pub virtio_mmio: ([Range; MAX_VIRTIO_MMIO], usize),
}

/// The most virtio-mmio transports the kernel looks at.
pub const MAX_VIRTIO_MMIO: usize = 32;

/// Reads the device tree at `dtb` (the MMU is on: the reader's unaligned loads need Normal
/// memory) and maps the PCI host bridge's regions as Device memory.
fn read_device_tree(dtb: u64) -> BootInfo {
    let mut info = BootInfo {
        dtb: (dtb, 0),
        banks: Banks::default(),
        pci: None,
        pci_mapped: false,
        virtio_mmio: ([Range::default(); MAX_VIRTIO_MMIO], 0),
    };
    if !mem::RAM_MAP.contains(dtb, 64) {
        return info;
    }
    // SAFETY: the header lies in the Normal-mapped RAM range (checked above); Xen wrote the
    // tree into dom0's first bank and nothing writes it.
    let header = unsafe {
        core::slice::from_raw_parts(core::ptr::with_exposed_provenance::<u8>(dtb as usize), 8)
    };
    let total = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    // CAST: usize is 64 bits on aarch64.
    if total > (1 << 20) || !mem::RAM_MAP.contains(dtb, total as u64) {
        return info;
    }
    // SAFETY: as above, for the size the header gives (bounded and inside the map).
    let blob = unsafe {
        core::slice::from_raw_parts(
            core::ptr::with_exposed_provenance::<u8>(dtb as usize),
            total,
        )
    };
    let Some(fdt) = Fdt::new(blob) else {
        return info;
    };
    info.dtb.1 = fdt.size();
    info.banks = fdt.memory_banks();
    info.pci = fdt.pci_host();
    fdt.virtio_mmio(|r| {
        let (list, len) = &mut info.virtio_mmio;
        if *len < MAX_VIRTIO_MMIO {
            list[*len] = r;
            *len += 1;
        }
    });
    if let Some(host) = info.pci {
        // SAFETY: one CPU, the checks have not started; MAP is the installed map and only
        // gains entries here.
        let map = unsafe { &mut *addr_of_mut!(MAP) };
        let free = |addr: u64, size: u64| {
            let mut a = addr & !(mmu::BLOCK_1G - 1);
            while a < addr.saturating_add(size) {
                if map.attr_at(a) == Some(Attr::Normal) {
                    return false;
                }
                a += mmu::BLOCK_1G;
            }
            true
        };
        if free(host.ecam.base, host.ecam.size) && free(host.mem32.base, host.mem32.size) {
            info.pci_mapped = map
                .map_covering(host.ecam.base, host.ecam.size, Attr::Device)
                .is_ok()
                && map
                    .map_covering(host.mem32.base, host.mem32.size, Attr::Device)
                    .is_ok();
            // SAFETY: the new entries replaced invalid ones (checked by `free`), in the map
            // `enable` installed.
            unsafe { mmu::publish(map) };
        }
    }
    info
}

/// Stops the machine: dom0's poweroff makes Xen halt it, and QEMU exits.
fn power_off() -> ! {
    let _ = ops::sched_shutdown(&NativeHypercall, SHUTDOWN_POWEROFF);
    loop {
        // SAFETY: waits for an interrupt; none is enabled.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
}

#[unsafe(no_mangle)]
extern "C" fn kernel_main(dtb: u64, loaded_at: u64) -> ! {
    if loaded_at != DOM0_RAM_BASE {
        // The console path uses no absolute address that depends on the load address
        // (PC-relative code and data), so it can still say why nothing else runs.
        say!(
            "aarch64-dom0: loaded at {loaded_at:#x}, linked at {DOM0_RAM_BASE:#x}; \
             the 1:1 bank moved (check -m and dom0_mem)"
        );
        say!("XEN-QEMU aarch64 xen-unknown: FAIL (loaded at the wrong address)");
        power_off();
    }
    // SAFETY: first thing at boot, one CPU, MMU off, nothing else uses MAP. The map covers
    // the range that holds every RAM bank (of which only dom0's banks are ever touched) and
    // the foreign window as Normal memory, and the first gigabyte (devices) as Device
    // memory; the image, .bss, the stack, MAP and the device tree are in dom0's first bank.
    unsafe {
        let map = &mut *addr_of_mut!(MAP);
        let ok = map.map_1g(0, LOW_DEVICES_SIZE, Attr::Device).is_ok()
            && map.map_1g(RAM_MAP_BASE, RAM_MAP_SIZE, Attr::Normal).is_ok()
            && map
                .map_1g(FOREIGN_WINDOW, FOREIGN_WINDOW_SIZE, Attr::Normal)
                .is_ok();
        if !ok {
            say!("XEN-QEMU aarch64 xen-unknown: FAIL (identity map)");
            power_off();
        }
        mmu::enable(map);
    }
    let info = read_device_tree(dtb);
    mem::set_ram(&info.banks);
    boot::paint_stack();
    let mut report = Report::new(XenConsole::new());
    checks::run(&mut report, &info);
    let untouched = boot::stack_untouched();
    report.check(
        "stack",
        untouched > 0,
        format_args!(
            "at most {:#x} of {:#x} stack bytes used",
            boot::STACK_SIZE - untouched,
            boot::STACK_SIZE
        ),
    );
    report.finish();
    power_off()
}

#[unsafe(no_mangle)]
extern "C" fn exception_handler(kind: u64, esr: u64, elr: u64, far: u64) -> ! {
    say!(
        "aarch64-dom0: exception {kind} ({}): ESR {esr:#x} ELR {elr:#x} FAR {far:#x}",
        boot::exception_kind(kind)
    );
    say!("XEN-QEMU aarch64 xen-unknown: FAIL (exception)");
    power_off()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("aarch64-dom0: panic: {info}");
    say!("XEN-QEMU aarch64 xen-unknown: FAIL (panic)");
    power_off()
}
