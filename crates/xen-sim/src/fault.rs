//! Operation names, per-operation counters and fault injection.

use std::collections::BTreeMap;
use std::fmt;

/// An operation the simulator counts and can fail on purpose.
///
/// Batched operations count per element: each entry of a multicall counts under its own op
/// (and the multicall once under [`SimOp::Multicall`]), each element of a
/// `grant_table_op` batch counts once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum SimOp {
    /// `XENMEM_exchange`.
    MemoryExchange,
    /// Any other `memory_op` command.
    MemoryOther,
    /// `multicall`.
    Multicall,
    /// `update_va_mapping`.
    UpdateVaMapping,
    /// One request of `mmu_update`.
    MmuUpdate,
    /// One operation of `mmuext_op`.
    MmuextOp,
    /// One `GNTTABOP_map_grant_ref` element.
    GrantMap,
    /// One `GNTTABOP_unmap_grant_ref` element.
    GrantUnmap,
    /// One `GNTTABOP_cache_flush` element.
    CacheFlush,
    /// Any other `grant_table_op` command.
    GrantOther,
    /// `xen_version`.
    XenVersion,
    /// `console_io`.
    ConsoleIo,
    /// `sched_op`.
    SchedOp,
    /// A hypercall the simulator does not implement (answered with `-ENOSYS`).
    Other,
}

impl SimOp {
    /// Every operation, in counter order.
    pub const ALL: [SimOp; 14] = [
        SimOp::MemoryExchange,
        SimOp::MemoryOther,
        SimOp::Multicall,
        SimOp::UpdateVaMapping,
        SimOp::MmuUpdate,
        SimOp::MmuextOp,
        SimOp::GrantMap,
        SimOp::GrantUnmap,
        SimOp::CacheFlush,
        SimOp::GrantOther,
        SimOp::XenVersion,
        SimOp::ConsoleIo,
        SimOp::SchedOp,
        SimOp::Other,
    ];

    /// Xen's name for the operation, e.g. `"XENMEM_exchange"`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            SimOp::MemoryExchange => "XENMEM_exchange",
            SimOp::MemoryOther => "memory_op",
            SimOp::Multicall => "multicall",
            SimOp::UpdateVaMapping => "update_va_mapping",
            SimOp::MmuUpdate => "mmu_update",
            SimOp::MmuextOp => "mmuext_op",
            SimOp::GrantMap => "GNTTABOP_map_grant_ref",
            SimOp::GrantUnmap => "GNTTABOP_unmap_grant_ref",
            SimOp::CacheFlush => "GNTTABOP_cache_flush",
            SimOp::GrantOther => "grant_table_op",
            SimOp::XenVersion => "xen_version",
            SimOp::ConsoleIo => "console_io",
            SimOp::SchedOp => "sched_op",
            SimOp::Other => "other",
        }
    }

    /// The operation called `name` (as [`SimOp::name`] spells it).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

impl fmt::Display for SimOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that names a counted operation: a [`SimOp`] or Xen's name of it
/// (`"XENMEM_exchange"`, see [`SimOp::name`]).
pub trait OpName {
    /// The operation named, if any.
    fn sim_op(&self) -> Option<SimOp>;
}

impl OpName for SimOp {
    fn sim_op(&self) -> Option<SimOp> {
        Some(*self)
    }
}

impl OpName for &str {
    fn sim_op(&self) -> Option<SimOp> {
        SimOp::from_name(self)
    }
}

/// A snapshot of the hypercall counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub(crate) traps: u64,
    pub(crate) ops: BTreeMap<SimOp, u64>,
    pub(crate) tlb_flushes: u64,
    pub(crate) exchanged_frames: u64,
}

impl Counters {
    /// How many times `op` was performed (see [`SimOp`] for how batches count); `op` is a
    /// [`SimOp`] or its name, and an unknown name counts 0.
    #[must_use]
    pub fn count(&self, op: impl OpName) -> u64 {
        op.sim_op()
            .and_then(|op| self.ops.get(&op).copied())
            .unwrap_or(0)
    }

    /// As [`count`](Self::count), by Xen's name; 0 for an unknown name.
    #[must_use]
    pub fn by_name(&self, name: &str) -> u64 {
        self.count(name)
    }

    /// Hypercall traps per MiB of `bytes` (for benchmark reports); 0 for no bytes.
    #[must_use]
    pub fn traps_per_mib(&self, bytes: u64) -> f64 {
        if bytes == 0 {
            return 0.0;
        }
        // CAST: counters and byte totals stay far below 2^53 in practice.
        self.traps as f64 * (1u64 << 20) as f64 / bytes as f64
    }

    /// Hypercall traps: entries into the hypervisor (a multicall of 32 entries is one).
    #[must_use]
    pub fn traps(&self) -> u64 {
        self.traps
    }

    /// TLB flushes requested through `UVMF_TLB_FLUSH` or `UVMF_INVLPG`.
    #[must_use]
    pub fn tlb_flushes(&self) -> u64 {
        self.tlb_flushes
    }

    /// 4 KiB frames given up by the guest in successful `XENMEM_exchange` chunks.
    #[must_use]
    pub fn exchanged_frames(&self) -> u64 {
        self.exchanged_frames
    }

    /// Every non-zero counter, by name.
    #[must_use]
    pub fn nonzero(&self) -> Vec<(SimOp, u64)> {
        self.ops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(op, n)| (*op, *n))
            .collect()
    }

    pub(crate) fn bump(&mut self, op: SimOp) {
        *self.ops.entry(op).or_insert(0) += 1;
    }
}

/// A fault to inject. Every `nth` counts from the moment of injection and is 1-based; a
/// fault fires once and is then disarmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The `nth` performance of `op` fails with `-errno` and has no effect. For batched ops
    /// the element fails: a multicall entry gets the error as its result, a grant-table
    /// batch stops there and the hypercall returns the error.
    FailNth {
        /// The operation.
        op: SimOp,
        /// Which performance fails (1 = the next one).
        nth: u64,
        /// The positive errno.
        errno: i32,
    },
    /// The `nth` `XENMEM_exchange` completes `done_extents` input extents (rounded down to
    /// whole exchange chunks, as Xen works in chunks), then fails with `-ENOMEM` and reports
    /// the progress in `nr_exchanged`.
    PartialExchange {
        /// Which exchange (1 = the next one).
        nth: u64,
        /// Input extents to complete before failing.
        done_extents: u64,
    },
    /// In the `nth_multicall`-th multicall, entry `entry` (0-based) is not performed and
    /// gets `-errno` as its result; the other entries run normally.
    MulticallEntry {
        /// Which multicall (1 = the next one).
        nth_multicall: u64,
        /// The entry index.
        entry: u64,
        /// The positive errno.
        errno: i32,
    },
    /// The `nth` grant map element fails with `status` (a `GNTST_*` value) and maps
    /// nothing.
    GrantMap {
        /// Which map element (1 = the next one).
        nth: u64,
        /// The status to report.
        status: i16,
    },
    /// The `nth` page-table write that installs a present PTE (an `update_va_mapping`, in a
    /// multicall or alone, or an `MMU_NORMAL_PT_UPDATE` request of `mmu_update`) fails with
    /// `-errno` and has no effect, and so does **every later attempt to map the same
    /// virtual address** (either way) until the faults are cleared: a page Xen keeps
    /// refusing to map, so that a failed entry fails again when retried alone. Unmapping (a
    /// non-present PTE) is not affected, and does not count.
    MapRefused {
        /// Which mapping `update_va_mapping` (1 = the next one).
        nth: u64,
        /// The positive errno.
        errno: i32,
    },
    /// The `nth` `XENMEM_exchange` steals its first chunk's input frames, then fails with
    /// `-ENOMEM` (as when Xen finds no memory for the output) and gives back only the first
    /// `kept` frames it stole; the others are freed to Xen, as Xen's `memory_exchange` does
    /// for a dying domain. Unlike [`PartialExchange`](Self::PartialExchange) this works on
    /// 4 KiB frames, not whole chunks, so the guest is left with pages whose frame is gone
    /// (unresolved). The frames are recorded ([`crate::Xen::lost_frames`]) and the domain's
    /// expected frame count is lowered by them, so the invariants still check that no
    /// other frame is lost.
    ExchangeLosesFrames {
        /// Which exchange (1 = the next one).
        nth: u64,
        /// Stolen frames given back before the rest are lost.
        kept: u64,
    },
    /// The `nth` `mmu_update` call (alone or in a multicall) is preempted after `after` of
    /// its requests. With `restart == false` Xen's own behaviour: a continuation (the
    /// guest re-enters the call for the rest, one more trap, and `success_count`
    /// accumulates), invisible to the guest but for the count of traps. With
    /// `restart == true` the call returns `-ERESTART` with `after` requests done instead,
    /// which Xen never shows a guest: it checks that the guest resubmits the rest.
    MmuUpdatePreempted {
        /// Which `mmu_update` call (1 = the next one).
        nth: u64,
        /// Requests performed before the preemption.
        after: u64,
        /// Return `-ERESTART` instead of continuing.
        restart: bool,
    },
}

/// A preemption of an `mmu_update` call ([`Fault::MmuUpdatePreempted`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Preemption {
    pub(crate) after: u64,
    pub(crate) restart: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct ArmedFault {
    pub(crate) fault: Fault,
    pub(crate) seen: u64,
}

/// The armed faults of a machine.
#[derive(Clone, Debug, Default)]
pub(crate) struct Faults {
    armed: Vec<ArmedFault>,
    /// Virtual addresses a fired [`Fault::MapRefused`] keeps refusing, with the errno.
    refused: Vec<(u64, i32)>,
}

impl Faults {
    pub(crate) fn inject(&mut self, fault: Fault) {
        self.armed.push(ArmedFault { fault, seen: 0 });
    }

    pub(crate) fn clear(&mut self) {
        self.armed.clear();
        self.refused.clear();
    }

    /// Counts one page-table write that maps a present PTE at `va`; returns the errno
    /// if the address is refused (a [`Fault::MapRefused`] fired for it, now or before).
    pub(crate) fn map_refused(&mut self, va: u64) -> Option<i32> {
        if let Some(&(_, errno)) = self.refused.iter().find(|(v, _)| *v == va) {
            return Some(errno);
        }
        let errno = self.fire(|f| match f {
            Fault::MapRefused { nth, errno } => Some((nth, errno)),
            _ => None,
        })?;
        self.refused.push((va, errno));
        Some(errno)
    }

    /// Counts one exchange; returns `kept` of an `ExchangeLosesFrames` that fires.
    pub(crate) fn exchange_loses_frames(&mut self) -> Option<u64> {
        self.fire(|f| match f {
            Fault::ExchangeLosesFrames { nth, kept } => Some((nth, kept)),
            _ => None,
        })
    }

    pub(crate) fn pending(&self) -> Vec<Fault> {
        self.armed.iter().map(|a| a.fault).collect()
    }

    /// Counts one performance of `op` against every matching fault; returns the errno of a
    /// `FailNth` that fires.
    pub(crate) fn fail_nth(&mut self, op: SimOp) -> Option<i32> {
        self.fire(|f| match f {
            Fault::FailNth { op: o, nth, errno } if o == op => Some((nth, errno)),
            _ => None,
        })
    }

    /// Counts one exchange; returns `done_extents` of a `PartialExchange` that fires.
    pub(crate) fn partial_exchange(&mut self) -> Option<u64> {
        self.fire(|f| match f {
            Fault::PartialExchange { nth, done_extents } => Some((nth, done_extents)),
            _ => None,
        })
    }

    /// Counts one multicall; returns `(entry, errno)` of a `MulticallEntry` that fires.
    pub(crate) fn multicall_entry(&mut self) -> Option<(u64, i32)> {
        self.fire(|f| match f {
            Fault::MulticallEntry {
                nth_multicall,
                entry,
                errno,
            } => Some((nth_multicall, (entry, errno))),
            _ => None,
        })
    }

    /// Counts one `mmu_update` call; returns the preemption of a `MmuUpdatePreempted` that
    /// fires.
    pub(crate) fn mmu_update_preempted(&mut self) -> Option<Preemption> {
        self.fire(|f| match f {
            Fault::MmuUpdatePreempted {
                nth,
                after,
                restart,
            } => Some((nth, Preemption { after, restart })),
            _ => None,
        })
    }

    /// Counts one grant map element; returns the status of a `GrantMap` fault that fires.
    pub(crate) fn grant_map(&mut self) -> Option<i16> {
        self.fire(|f| match f {
            Fault::GrantMap { nth, status } => Some((nth, status)),
            _ => None,
        })
    }

    fn fire<T>(&mut self, matcher: impl Fn(Fault) -> Option<(u64, T)>) -> Option<T> {
        let mut fired = None;
        let mut i = 0;
        while i < self.armed.len() {
            if let Some((nth, value)) = matcher(self.armed[i].fault) {
                self.armed[i].seen += 1;
                if self.armed[i].seen == nth && fired.is_none() {
                    fired = Some(value);
                    self.armed.remove(i);
                    continue;
                }
            }
            i += 1;
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_counts_from_injection_and_fires_once() {
        let mut f = Faults::default();
        f.inject(Fault::FailNth {
            op: SimOp::MmuUpdate,
            nth: 3,
            errno: 22,
        });
        assert_eq!(f.fail_nth(SimOp::UpdateVaMapping), None);
        assert_eq!(f.fail_nth(SimOp::MmuUpdate), None);
        assert_eq!(f.fail_nth(SimOp::MmuUpdate), None);
        assert_eq!(f.fail_nth(SimOp::MmuUpdate), Some(22));
        assert_eq!(f.fail_nth(SimOp::MmuUpdate), None);
        assert!(f.pending().is_empty());
    }

    #[test]
    fn names_round_trip() {
        for op in SimOp::ALL {
            assert_eq!(SimOp::from_name(op.name()), Some(op));
        }
        let mut c = Counters::default();
        c.bump(SimOp::MemoryExchange);
        assert_eq!(c.by_name("XENMEM_exchange"), 1);
        assert_eq!(c.count("XENMEM_exchange"), 1);
        assert_eq!(c.count("no such op"), 0);
        assert_eq!(c.count(SimOp::GrantMap), 0);
    }
}
