//! What the kernels need from the CPU: the generic timer, barriers, and cache maintenance by
//! address for the DMA layer's local pages.

use swiotlb_xen::PhysAddr;
use swiotlb_xen::arm64::CacheOps;

/// The virtual counter (`CNTVCT_EL0`).
#[must_use]
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading the virtual counter has no side effect; Xen lets EL1 read it.
    unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nostack)) };
    v
}

/// The counter's frequency in Hz (`CNTFRQ_EL0`).
#[must_use]
pub fn counter_hz() -> u64 {
    let v: u64;
    // SAFETY: reading the frequency register has no side effect.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Milliseconds since the counter started (Xen starts it at boot).
#[must_use]
pub fn millis() -> u64 {
    counter() / (counter_hz() / 1000).max(1)
}

/// A store barrier for memory shared with other domains (`dmb ishst`).
pub fn store_barrier() {
    // SAFETY: a barrier only orders memory accesses.
    unsafe { core::arch::asm!("dmb ishst", options(nostack)) };
}

/// A full barrier (`dsb sy`).
pub fn full_barrier() {
    // SAFETY: a barrier only orders memory accesses.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
}

/// The smallest data-cache line size (`CTR_EL0.DminLine`).
#[must_use]
pub fn dcache_line() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Cache maintenance by virtual address for memory mapped 1:1 (virtual = physical), as
/// Linux's `dcache_clean_poc` (`dc cvac`) and `dcache_inval_poc` (`dc civac`, which cleans
/// lines partly outside the range before invalidating them) do, each followed by `dsb sy`.
///
/// Under QEMU's TCG the instructions do nothing (there are no caches to maintain); on
/// hardware they are what a non-coherent device needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityCacheOps;

impl IdentityCacheOps {
    fn each_line(phys: PhysAddr, len: usize, mut f: impl FnMut(u64)) {
        if len == 0 {
            return;
        }
        let line = dcache_line();
        let start = phys.as_u64() & !(line - 1);
        // CAST: usize is 64 bits on aarch64.
        let end = phys.as_u64().saturating_add(len as u64);
        let mut a = start;
        while a < end {
            f(a);
            a += line;
        }
        full_barrier();
    }
}

impl CacheOps for IdentityCacheOps {
    fn clean(&self, phys: PhysAddr, len: usize) {
        // SAFETY: cleaning writes dirty lines back and changes no data; the platform calls
        // this for memory of the kernel's identity map only.
        Self::each_line(phys, len, |a| unsafe {
            core::arch::asm!("dc cvac, {}", in(reg) a, options(nostack));
        });
    }

    fn invalidate(&self, phys: PhysAddr, len: usize) {
        // SAFETY: clean-and-invalidate keeps every byte's latest value (nothing the CPU wrote
        // is discarded), so it is safe on any mapped memory, including partial lines.
        Self::each_line(phys, len, |a| unsafe {
            core::arch::asm!("dc civac, {}", in(reg) a, options(nostack));
        });
    }

    fn clean_invalidate(&self, phys: PhysAddr, len: usize) {
        // `invalidate` is already a clean and invalidate (`dc civac`) here.
        self.invalidate(phys, len);
    }
}
