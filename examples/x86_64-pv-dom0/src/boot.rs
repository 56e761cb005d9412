//! The kernel's entry, its `.note.Xen` ELF notes, the boot stack and the panic handler.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::{VIRT_BASE, checks, console, hyp};

/// Bytes of the boot stack. It lives in `.bss`: Xen puts `start_info`, the P2M and the
/// initial page tables right after the image, so a stack there would overwrite the P2M.
/// 1 MiB: with the platform's `mmu_update` batches 128 KiB overflowed into `.bss`; the
/// deeper checks since (virtio, growth) keep a wide margin.
const STACK_SIZE: usize = 1024 * 1024;

/// The boot stack.
#[repr(C, align(4096))]
struct Stack([u8; STACK_SIZE]);

/// The boot stack, only ever used through `rsp`.
static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);

// The entry point and the ELF notes Xen's loader reads: ENTRY (1), VIRT_BASE (3),
// PADDR_OFFSET (4), XEN_VERSION (5), GUEST_OS (6), LOADER (8). No HYPERCALL_PAGE: the
// kernel traps with `syscall` itself. Xen enters `_start` with `start_info` in `%rsi` and
// events masked.
core::arch::global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    "    lea rsp, [rip + {stack} + {stack_size}]",
    "    and rsp, -16",
    "    mov rdi, rsi",
    "    call {main}",
    "2:  ud2",
    "    jmp 2b",
    "",
    ".section .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4, 8, 1",
    ".asciz \"Xen\"",
    ".quad _start",
    ".long 4, 8, 3",
    ".asciz \"Xen\"",
    ".quad {virt_base}",
    ".long 4, 8, 4",
    ".asciz \"Xen\"",
    ".quad 0",
    ".long 4, 2f - 1f, 5",
    ".asciz \"Xen\"",
    "1: .asciz \"xen-3.0\"",
    "2: .balign 4",
    ".long 4, 2f - 1f, 6",
    ".asciz \"Xen\"",
    "1: .asciz \"swiotlb-xen-rs\"",
    "2: .balign 4",
    ".long 4, 2f - 1f, 8",
    ".asciz \"Xen\"",
    "1: .asciz \"generic\"",
    "2: .balign 4",
    ".text",
    stack = sym BOOT_STACK,
    stack_size = const STACK_SIZE,
    main = sym kernel_main,
    virt_base = const VIRT_BASE,
);

/// Set once the verdict line is printed, so a panic afterwards does not print another.
static VERDICT_PRINTED: AtomicBool = AtomicBool::new(false);

/// The Rust entry, called by `_start` on the boot stack with the `start_info` address.
extern "C" fn kernel_main(start_info: *const u8) -> ! {
    let verdict = checks::run(start_info);
    VERDICT_PRINTED.store(true, Ordering::SeqCst);
    console::line(format_args!("{verdict}"));
    hyp::shutdown()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    console::line(format_args!("x86_64-pv-dom0: panic: {info}"));
    if !VERDICT_PRINTED.swap(true, Ordering::SeqCst) {
        let prefix = checks::verdict_prefix();
        console::line(format_args!("{prefix}: FAIL (panic)"));
    }
    hyp::shutdown()
}
