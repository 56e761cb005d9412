//! The dom0 kernel: boot, console, and the checks.

mod checks;
mod hyp;
mod mem;

use aarch64_dom0::boot;
use aarch64_dom0::layout::{DOM0_RAM_BASE, FOREIGN_WINDOW, FOREIGN_WINDOW_SIZE};
use aarch64_dom0::mmu::{self, Attr, BLOCK_1G, IdMap};
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

/// Stops the machine: dom0's poweroff makes Xen halt it, and QEMU exits.
fn power_off() -> ! {
    let _ = ops::sched_shutdown(&NativeHypercall, SHUTDOWN_POWEROFF);
    loop {
        // SAFETY: waits for an interrupt; none is enabled.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
}

#[unsafe(no_mangle)]
extern "C" fn kernel_main(_dtb: u64, loaded_at: u64) -> ! {
    if loaded_at != DOM0_RAM_BASE {
        // The console path uses no absolute address that depends on the load address
        // (PC-relative code and data), so it can still say why nothing else runs.
        say!(
            "aarch64-dom0: loaded at {loaded_at:#x}, linked at {DOM0_RAM_BASE:#x}; \
             the 1:1 bank moved (check -m and dom0_mem)"
        );
        say!("XEN-QEMU aarch64: FAIL (loaded at the wrong address)");
        power_off();
    }
    // SAFETY: first thing at boot, one CPU, MMU off, nothing else uses MAP. The map covers
    // dom0's RAM (and the rest of its gigabyte pair: 0x40000000..0xc0000000, of which only
    // dom0's bank is ever touched) and the foreign window, all as Normal memory; the image,
    // .bss, the stack and MAP are in dom0's RAM.
    unsafe {
        let map = &mut *addr_of_mut!(MAP);
        let ok = map.map_1g(0x4000_0000, 2 * BLOCK_1G, Attr::Normal).is_ok()
            && map
                .map_1g(FOREIGN_WINDOW, FOREIGN_WINDOW_SIZE, Attr::Normal)
                .is_ok();
        if !ok {
            say!("XEN-QEMU aarch64: FAIL (identity map)");
            power_off();
        }
        mmu::enable(map);
    }
    boot::paint_stack();
    let mut report = Report::new(XenConsole::new());
    checks::run(&mut report);
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
    say!("XEN-QEMU aarch64: FAIL (exception)");
    power_off()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("aarch64-dom0: panic: {info}");
    say!("XEN-QEMU aarch64: FAIL (panic)");
    power_off()
}
