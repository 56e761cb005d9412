//! The report printed at the end of each run.

use std::fmt;

use swiotlb_core::engine::{BounceReason, EngineStats};
use xen_sim::{Counters, SimOp};

use crate::backend::{RunStats, mib};
use crate::workload::Kind;

/// Hypercalls by operation between two counter snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hypercalls {
    /// Traps into the hypervisor (a multicall is one).
    pub traps: u64,
    /// Operations performed, by name, non-zero only (batch elements count one each).
    pub ops: Vec<(SimOp, u64)>,
}

impl Hypercalls {
    /// What happened between `before` and `after`.
    #[must_use]
    pub fn between(before: &Counters, after: &Counters) -> Self {
        Self {
            traps: after.traps() - before.traps(),
            ops: SimOp::ALL
                .into_iter()
                .map(|op| (op, after.count(op) - before.count(op)))
                .filter(|&(_, n)| n > 0)
                .collect(),
        }
    }
}

impl fmt::Display for Hypercalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} traps", self.traps)?;
        for (op, n) in &self.ops {
            write!(f, ", {op} {n}")?;
        }
        Ok(())
    }
}

/// Everything a run reports.
#[derive(Clone, Debug)]
pub struct Report {
    /// `x86-pv` or `arm64`.
    pub arch: &'static str,
    /// The device's DMA address bits.
    pub dma_bits: u32,
    /// Whether the device is cache-coherent.
    pub coherent: bool,
    /// The run's seed.
    pub seed: u64,
    /// Backend CPUs (queues).
    pub cpus: usize,
    /// The requests in flight at once per queue.
    pub queue_depth: usize,
    /// What the pool initialisation did, one line.
    pub pool_init: String,
    /// The pool's size in slots.
    pub pool_slots: usize,
    /// The pool's highest bus address.
    pub pool_bus_top: u64,
    /// Hypercalls of the pool initialisation.
    pub init_hypercalls: Hypercalls,
    /// Pool bytes.
    pub pool_bytes: u64,
    /// The backend's own counts.
    pub run: RunStats,
    /// The engine's counters at the end.
    pub engine: EngineStats,
    /// Hypercalls during the transfers.
    pub run_hypercalls: Hypercalls,
    /// Frames the machine had free before the set-up and after the tear-down.
    pub free_frames: (u64, u64),
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.run;
        let e = &self.engine;
        let total: u64 = r.per_kind.iter().sum();
        writeln!(
            f,
            "sim-dom0 report: {}, {}-bit {} device, seed {:#x}, {} CPU(s) with a queue of depth {} each",
            self.arch,
            self.dma_bits,
            if self.coherent {
                "coherent"
            } else {
                "non-coherent"
            },
            self.seed,
            self.cpus,
            self.queue_depth
        )?;
        writeln!(f, "  pool init       {}", self.pool_init)?;
        let init_mib = mib(self.pool_bytes);
        // CAST: counts far below 2^53.
        let per_mib = if init_mib > 0.0 {
            self.init_hypercalls.traps as f64 / init_mib
        } else {
            0.0
        };
        writeln!(
            f,
            "  init hypercalls {} ({per_mib:.2} traps per MiB of pool)",
            self.init_hypercalls
        )?;
        write!(f, "  transfers       {total} (")?;
        for (i, k) in Kind::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {}", k.name(), r.per_kind[i])?;
        }
        writeln!(
            f,
            "), {:.1} MiB of payload, {} DMA segments",
            mib(r.payload_bytes),
            r.segments
        )?;
        let maps = e.direct_maps + e.bounced_maps;
        // CAST: counts far below 2^53.
        let pct = |n: u64| {
            if maps == 0 {
                0.0
            } else {
                100.0 * n as f64 / maps as f64
            }
        };
        write!(
            f,
            "  mappings        {maps}: direct {} ({:.0}%), bounced {} ({:.0}%",
            e.direct_maps,
            pct(e.direct_maps),
            e.bounced_maps,
            pct(e.bounced_maps)
        )?;
        for reason in BounceReason::ALL {
            let n = e.bounced_by_reason[reason.index()];
            if n > 0 {
                write!(f, "; {} {n}", reason_name(reason))?;
            }
        }
        writeln!(
            f,
            "), failed {} (deferred for a full pool and retried: {})",
            e.map_failures, r.deferred
        )?;
        if let Some(p) = e.pool {
            writeln!(
                f,
                "  bytes copied    {:.1} MiB through the bounce pool ({} maps, {} unmaps)",
                mib(p.bytes_bounced),
                p.maps,
                p.unmaps
            )?;
            writeln!(
                f,
                "  pool            {} slots ({:.1} MiB), high-water {} slots ({} KiB), top bus address {:#x}",
                self.pool_slots,
                mib(self.pool_bytes),
                p.high_water,
                p.high_water * 2,
                self.pool_bus_top
            )?;
        }
        if !r.rings.is_empty() {
            write!(
                f,
                "  rings           {} by alloc_coherent at",
                r.rings.len()
            )?;
            for (i, (bus, _)) in r.rings.iter().enumerate() {
                write!(f, "{} {:#x}", if i == 0 { "" } else { "," }, bus.as_u64())?;
            }
            let exchanged = r.rings.iter().filter(|(_, x)| *x).count();
            if exchanged > 0 {
                writeln!(
                    f,
                    "; {exchanged} made contiguous below the coherent mask, given back at the end"
                )?;
            } else {
                writeln!(f, "; used as allocated")?;
            }
        }
        writeln!(f, "  run hypercalls  {}", self.run_hypercalls)?;
        writeln!(
            f,
            "  verified        {:.1} MiB by the device and the guest; invariants checked {} times; 0 DMA faults, 0 cache violations; {} free frames before and after",
            mib(r.device_bytes),
            r.checks,
            self.free_frames.1
        )?;
        let secs = r.elapsed.as_secs_f64();
        // CAST: counts far below 2^53.
        let rate = if secs > 0.0 { total as f64 / secs } else { 0.0 };
        write!(f, "  time            {secs:.2} s ({rate:.0} transfers/s)")
    }
}

/// Short names of the bounce reasons for the report.
fn reason_name(r: BounceReason) -> &'static str {
    match r {
        BounceReason::Forced => "forced",
        BounceReason::Untranslatable => "untranslatable",
        BounceReason::NotContiguous => "not contiguous",
        BounceReason::OutsideMask => "outside mask",
        BounceReason::Platform => "platform",
    }
}
