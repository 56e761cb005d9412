//! The Image header, the entry point and the exception vectors.
//!
//! Xen loads an arm64 Linux-style Image: a 64-byte header whose first word branches to the
//! entry, with the `ARM\x64` magic at offset 56 and `text_offset` 0, so Xen places it at the
//! start of the domain's first RAM bank. It enters at EL1 with the MMU off and the device
//! tree's address in `x0`. The entry code, before any Rust runs:
//!
//! 1. sets `CPACR_EL1.FPEN` (compiled Rust uses FP/SIMD registers and traps without it);
//! 2. installs the exception vectors, which report any exception through the kernel's
//!    `exception_handler` instead of hanging silently;
//! 3. points the stack at the top of the stack in `.bss` and zeroes `.bss` (Xen copies only
//!    the file) with aligned 16-byte stores, which Device memory allows;
//! 4. calls `kernel_main(dtb, loaded_at)`, where `loaded_at` is where the image really runs
//!    (the kernel checks it against its link address before trusting absolute addresses).
//!
//! Each kernel binary defines, with `#[unsafe(no_mangle)]`:
//! `extern "C" fn kernel_main(dtb: u64, loaded_at: u64) -> !` and
//! `extern "C" fn exception_handler(kind: u64, esr: u64, elr: u64, far: u64) -> !`.

/// The stack size of each kernel.
pub const STACK_SIZE: usize = 1024 * 1024;

/// The byte [`paint_stack`] fills the unused stack with.
const STACK_PAINT: u8 = 0x5c;

/// The boot stack, in `.bss`.
#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

#[unsafe(no_mangle)]
static mut BOOT_STACK: Stack = Stack([0; STACK_SIZE]);

core::arch::global_asm!(
    r#"
    .section .text.head, "ax"
    .global _start
_start:
    b       1f                      // code0: branch to the entry
    .long   0                       // code1
    .quad   0                       // text_offset
    .quad   __image_size            // image_size, .bss included
    .quad   0xa                     // flags: little endian, 4 KiB pages, placed anywhere
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .ascii  "ARM\x64"               // magic
    .long   0                       // res5
1:
    mov     x19, x0                 // the device tree
    mov     x1, #(3 << 20)          // CPACR_EL1.FPEN = 0b11: no FP/SIMD traps
    msr     cpacr_el1, x1
    isb
    adr     x1, example_vectors
    msr     vbar_el1, x1
    isb
    adrp    x1, BOOT_STACK
    add     x1, x1, :lo12:BOOT_STACK
    mov     x2, #{stack_size}
    add     sp, x1, x2
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
2:
    cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:
    mov     x0, x19
    adr     x1, _start
    bl      kernel_main
4:
    wfi
    b       4b

    .section .text.vectors, "ax"
    .balign 0x800
example_vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    mov     x0, #\kind
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    b       exception_handler
    .endr
    "#,
    stack_size = const STACK_SIZE,
);

/// The current stack pointer.
fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reading `sp` has no side effect.
    unsafe { core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack)) };
    sp
}

/// Fills the stack below the current frame (less a 1 KiB margin) with a known byte, so that
/// [`stack_untouched`] can tell how deep the stack went. There is no guard page: a kernel
/// that ran past the bottom would overwrite what `.bss` holds below it.
pub fn paint_stack() {
    let bottom = core::ptr::addr_of_mut!(BOOT_STACK).cast::<u8>();
    let used_from = stack_pointer().saturating_sub(1024);
    let len = used_from.saturating_sub(bottom as usize).min(STACK_SIZE);
    // SAFETY: `[bottom, bottom + len)` is the part of the boot stack below the live frames
    // (sp less a margin); nothing references it.
    unsafe { core::ptr::write_bytes(bottom, STACK_PAINT, len) };
}

/// How many bytes at the bottom of the stack still hold the paint of [`paint_stack`]: the
/// stack never went deeper than `STACK_SIZE` minus this.
#[must_use]
pub fn stack_untouched() -> usize {
    let bottom = core::ptr::addr_of!(BOOT_STACK).cast::<u8>();
    (0..STACK_SIZE)
        // SAFETY: within the boot stack, read below the live frames.
        .take_while(|&i| unsafe { bottom.add(i).read_volatile() } == STACK_PAINT)
        .count()
}

/// What an exception's vector number means (`kind` of `exception_handler`).
#[must_use]
pub const fn exception_kind(kind: u64) -> &'static str {
    match kind {
        0 => "synchronous, current EL, SP0",
        1 => "IRQ, current EL, SP0",
        2 => "FIQ, current EL, SP0",
        3 => "SError, current EL, SP0",
        4 => "synchronous, current EL",
        5 => "IRQ, current EL",
        6 => "FIQ, current EL",
        7 => "SError, current EL",
        8..=11 => "from a lower EL (AArch64)",
        _ => "from a lower EL (AArch32)",
    }
}
