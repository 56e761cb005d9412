//! The native hypercall, traced: every `GNTTABOP_cache_flush` that goes to Xen is recorded
//! with Xen's answer, so the checks can say which flushes the platform made and that Xen
//! accepted each one.

use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use swiotlb_xen::native::Hypercall as NativeHypercall;
use xen_abi::{GNTTABOP_CACHE_FLUSH, GnttabCacheFlush, HYPERVISOR_GRANT_TABLE_OP, Hypercall};

/// One `GNTTABOP_cache_flush` as it went to Xen, and Xen's answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Flush {
    /// `a.dev_bus_addr`.
    pub bus: u64,
    /// `offset`.
    pub offset: u16,
    /// `length`.
    pub length: u16,
    /// `GNTTAB_CACHE_*`.
    pub op: u32,
    /// What Xen returned.
    pub rc: i64,
}

impl core::fmt::Debug for Flush {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let op = match self.op {
            1 => "CLEAN",
            2 => "INVAL",
            3 => "CLEAN|INVAL",
            _ => "?",
        };
        write!(
            f,
            "{op} {:#x}+{:#x} len {:#x} rc {}",
            self.bus, self.offset, self.length, self.rc
        )
    }
}

/// [`NativeHypercall`] that records cache flushes (single CPU: relaxed atomics suffice).
#[derive(Debug, Default)]
pub struct Traced {
    flushes: AtomicU64,
    failed: AtomicU64,
    last_bus: AtomicU64,
    last_shape: AtomicU64,
    last_rc: AtomicI64,
}

impl Traced {
    /// A tracer with nothing recorded.
    pub const fn new() -> Self {
        Self {
            flushes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_bus: AtomicU64::new(0),
            last_shape: AtomicU64::new(0),
            last_rc: AtomicI64::new(0),
        }
    }

    /// How many flushes went to Xen, and how many of them Xen refused.
    pub fn flush_counts(&self) -> (u64, u64) {
        (self.flushes.load(Relaxed), self.failed.load(Relaxed))
    }

    /// The last flush, if any.
    pub fn last_flush(&self) -> Option<Flush> {
        if self.flushes.load(Relaxed) == 0 {
            return None;
        }
        let shape = self.last_shape.load(Relaxed);
        // CAST: unpacking the fields packed in `hypercall`.
        Some(Flush {
            bus: self.last_bus.load(Relaxed),
            offset: (shape >> 48) as u16,
            length: (shape >> 32) as u16,
            op: shape as u32,
            rc: self.last_rc.load(Relaxed),
        })
    }
}

// SAFETY: forwards every call unchanged to the native trap and returns its result; it only
// reads (never writes) the cache-flush request the caller passed, which the caller's contract
// makes valid for the call.
unsafe impl Hypercall for Traced {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        // SAFETY: forwarded from the caller.
        let rc = unsafe { NativeHypercall.hypercall(op, args) };
        if op == HYPERVISOR_GRANT_TABLE_OP
            && args[0] == u64::from(GNTTABOP_CACHE_FLUSH)
            && args[2] == 1
        {
            // SAFETY: for this operation args[1] points at one live request (the caller's
            // contract); it is read, not kept.
            let req = unsafe {
                core::ptr::with_exposed_provenance::<GnttabCacheFlush>(args[1] as usize).read()
            };
            // SAFETY: the union's members are plain integers; dev_bus_addr covers it all.
            let bus = unsafe { req.a.dev_bus_addr };
            // The zeroed probe is not a flush.
            if req.length != 0 || req.op != 0 || bus != 0 {
                self.flushes.fetch_add(1, Relaxed);
                if rc != 0 {
                    self.failed.fetch_add(1, Relaxed);
                }
                self.last_bus.store(bus, Relaxed);
                self.last_shape.store(
                    (u64::from(req.offset) << 48)
                        | (u64::from(req.length) << 32)
                        | u64::from(req.op),
                    Relaxed,
                );
                self.last_rc.store(rc, Relaxed);
            }
        }
        rc
    }
}
