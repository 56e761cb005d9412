//! The native hypercall trap of an aarch64 guest: `hvc #0xEA1`.

use xen_abi::Hypercall;

/// Makes hypercalls with `hvc #0xEA1` (`XEN_HYPERCALL_TAG`): the number in `x16`, the
/// arguments in `x0`..`x4`, the result in `x0` (Linux's `arch/arm64/xen/hypercall.S`).
///
/// Only on aarch64; the rest of the crate builds and is tested on any host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NativeHypercall;

// SAFETY: the trap passes `op` and the five arguments to Xen unchanged and returns `x0`
// unchanged. The instruction itself touches no memory; Xen reads and writes only what `op`
// defines, which the `asm!` block allows by not claiming `nomem`/`readonly`. Xen may clobber
// x16 and x1..x4, which are declared as clobbered.
unsafe impl Hypercall for NativeHypercall {
    #[inline]
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        let ret: u64;
        // SAFETY: the caller guarantees the pointers in `args` are valid for what Xen does
        // with them (the trait's contract); the registers are declared as above.
        unsafe {
            core::arch::asm!(
                "hvc #0xEA1",
                inout("x16") u64::from(op) => _,
                inout("x0") args[0] => ret,
                inout("x1") args[1] => _,
                inout("x2") args[2] => _,
                inout("x3") args[3] => _,
                inout("x4") args[4] => _,
                options(nostack),
            );
        }
        // CAST: Xen returns a signed long in x0; reinterpret the bits.
        ret as i64
    }
}
