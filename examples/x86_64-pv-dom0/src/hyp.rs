//! The hypercall trap, wrapped to count what the library asks of Xen.

use core::sync::atomic::{AtomicU64, Ordering};

use xen_abi::{
    HYPERVISOR_MEMORY_OP, HYPERVISOR_MULTICALL, HYPERVISOR_UPDATE_VA_MAPPING, Hypercall,
    XENMEM_EXCHANGE,
};

/// The native `syscall` trap: the facade's `native::Hypercall` (x86 PV's `NativeHypercall`).
pub use swiotlb_xen::native::Hypercall as Native;

/// Hypercall counters, by kind.
#[derive(Debug)]
pub struct Counters {
    /// Every hypercall.
    pub total: AtomicU64,
    /// `XENMEM_exchange`.
    pub exchanges: AtomicU64,
    /// `multicall`.
    pub multicalls: AtomicU64,
    /// Single `update_va_mapping` calls (outside multicalls).
    pub update_va_mapping: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every hypercall.
    pub total: u64,
    /// `XENMEM_exchange`.
    pub exchanges: u64,
    /// `multicall`.
    pub multicalls: u64,
    /// Single `update_va_mapping` calls.
    pub update_va_mapping: u64,
}

impl Counts {
    /// The calls made between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            total: self.total - earlier.total,
            exchanges: self.exchanges - earlier.exchanges,
            multicalls: self.multicalls - earlier.multicalls,
            update_va_mapping: self.update_va_mapping - earlier.update_va_mapping,
        }
    }
}

/// The kernel's counters.
pub static COUNTERS: Counters = Counters {
    total: AtomicU64::new(0),
    exchanges: AtomicU64::new(0),
    multicalls: AtomicU64::new(0),
    update_va_mapping: AtomicU64::new(0),
};

impl Counters {
    /// The current counts.
    pub fn snapshot(&self) -> Counts {
        Counts {
            total: self.total.load(Ordering::Relaxed),
            exchanges: self.exchanges.load(Ordering::Relaxed),
            multicalls: self.multicalls.load(Ordering::Relaxed),
            update_va_mapping: self.update_va_mapping.load(Ordering::Relaxed),
        }
    }
}

/// The native trap, counting every call in [`COUNTERS`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Counted;

// SAFETY: forwards every call unchanged to the native trap; counting touches only the
// static atomics.
unsafe impl Hypercall for Counted {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        COUNTERS.total.fetch_add(1, Ordering::Relaxed);
        match op {
            HYPERVISOR_MEMORY_OP if args[0] == u64::from(XENMEM_EXCHANGE) => {
                COUNTERS.exchanges.fetch_add(1, Ordering::Relaxed);
            }
            HYPERVISOR_MULTICALL => {
                COUNTERS.multicalls.fetch_add(1, Ordering::Relaxed);
            }
            HYPERVISOR_UPDATE_VA_MAPPING => {
                COUNTERS.update_va_mapping.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        // SAFETY: the caller's contract is the trait's, passed on unchanged.
        unsafe { Native.hypercall(op, args) }
    }

    /// The walk of the kernel's page tables: the platform writes the PTEs of its regions
    /// with `mmu_update` lists.
    fn pte_machine_addr(&self, va: u64) -> Option<u64> {
        crate::mmu::linear_pte_maddr(va)
    }
}

/// [`Counted`] without the PTE addresses: a platform over it changes each mapping by
/// virtual address, in multicalls of `update_va_mapping`, as Linux does (the `linux-fixup`
/// check measures Linux's scheme with it).
#[derive(Clone, Copy, Debug, Default)]
pub struct CountedByVa;

// SAFETY: forwards every call unchanged to `Counted`; answers no PTE address (the default).
unsafe impl Hypercall for CountedByVa {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        // SAFETY: the caller's contract is the trait's, passed on unchanged.
        unsafe { Counted.hypercall(op, args) }
    }
}

/// The time-stamp counter (`rdtsc`): TSC cycles, the kernel's clock for timing.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; a PV guest may run it (Xen does not trap it by
    // default, and emulates it where it does).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Ends the machine with `SCHEDOP_shutdown(SHUTDOWN_reboot)`: when dom0 shuts down Xen
/// restarts the machine, and QEMU, run with `-no-reboot`, exits instead. (With
/// `SHUTDOWN_poweroff` Xen only halts the CPUs and QEMU keeps running.) Spins if Xen ever
/// returns.
pub fn shutdown() -> ! {
    loop {
        let _ = xen_abi::ops::sched_shutdown(&Native, xen_abi::SHUTDOWN_REBOOT);
        core::hint::spin_loop();
    }
}
