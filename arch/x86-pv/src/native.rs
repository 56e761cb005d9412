//! The native hypercall trap of an x86_64 PV guest: `syscall`, as Linux issues it since
//! XSA-466 (no call into the Xen-written hypercall page).

use xen_abi::Hypercall;

/// Hypercalls by `syscall` from a PV guest kernel: rax = hypercall number, arguments in
/// rdi, rsi, rdx, r10, r8, result in rax.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeHypercall;

// SAFETY: the trap passes `op` in rax and the five arguments in rdi, rsi, rdx, r10 and r8
// unchanged, and returns rax unchanged. The instruction itself touches no memory; Xen reads
// and writes what `op` defines, which the `asm!` block allows by not claiming
// `nomem`/`readonly`. `syscall` clobbers rcx and r11, and Xen may clobber the argument
// registers (debug builds trash them on purpose): all are declared clobbered.
unsafe impl Hypercall for NativeHypercall {
    #[inline]
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        let ret: u64;
        // SAFETY: the caller guarantees that the pointers in `args` are valid for what Xen
        // does with them (the trait's contract); the registers are declared as above.
        // `nostack` is not claimed: when Xen returns to the guest it may deliver an event
        // upcall by building a frame on the guest kernel stack below rsp, so the compiler
        // must not keep data there across the trap.
        unsafe {
            core::arch::asm!(
                "syscall",
                inout("rax") u64::from(op) => ret,
                inout("rdi") args[0] => _,
                inout("rsi") args[1] => _,
                inout("rdx") args[2] => _,
                inout("r10") args[3] => _,
                inout("r8") args[4] => _,
                lateout("rcx") _,
                lateout("r11") _,
            );
        }
        // CAST: Xen returns a signed long in rax; reinterpret the bits.
        ret as i64
    }
}
