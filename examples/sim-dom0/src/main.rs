//! # sim-dom0
//!
//! The project's main job on the simulated Xen machine: a dom0 backend serving a guest's
//! network and block traffic (pages the guest grants) to a DMA device that reaches only the
//! low 4 GiB, through the `swiotlb-xen` DMA engine, on an x86 PV dom0 and an arm64 dom0.
//! Every byte the device reads or writes is checked, the simulator's and the pool's
//! invariants are checked as it goes, and a short report says what happened.
//!
//! `cargo run -p sim-dom0 -- --help` lists the options; `docs/demo.md` explains the run and
//! shows a report.
//!
//! Exit status: 0 when every check passed, 1 on a verification failure (a wrong byte, a DMA
//! fault, a cache violation, a broken invariant), 2 for a bad command line, 3 when the set-up
//! or a DMA operation failed.

mod backend;
mod burst;
// The simulator fixtures live with the `swiotlb-xen` integration tests, so that the published
// crate carries them; the demo drives the library through the very same set-up.
#[path = "../../../crates/swiotlb-xen/tests/common/grants.rs"]
mod grants;
mod pool;
mod report;
#[path = "../../../crates/swiotlb-xen/tests/common/sim.rs"]
mod sim;
mod workload;

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Arg, ArgAction, Command, value_parser};
use swiotlb_core::{DmaMask, Platform};
use swiotlb_xen_arm64::{Arm64Platform, ProbeOptions, UnboundedForeignTable};
use swiotlb_xen_x86_pv::p2m;
use xen_sim::{SimConfig, Xen};

use crate::backend::{RunOptions, SKB_PAGES, Target};
use crate::grants::{ArmGrants, PvGrants};
use crate::report::{Hypercalls, Report};
use crate::sim::{SimCache, SimPages};
use crate::workload::MAX_SEGMENTS;

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A check failed: a wrong byte, a DMA fault, a cache violation, a broken invariant.
    Verify(String),
    /// A DMA operation failed.
    Dma(String),
    /// The simulated machine could not be set up as the run needs.
    Setup(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Verify(_) => 1,
            Failure::Dma(_) | Failure::Setup(_) => 3,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Verify(m) => write!(f, "VERIFICATION FAILED: {m}"),
            Failure::Dma(m) => write!(f, "DMA operation failed: {m}"),
            Failure::Setup(m) => write!(f, "set-up failed: {m}"),
        }
    }
}

/// The platforms the demo runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86Pv,
    Arm64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::X86Pv => "x86-pv",
            Arch::Arm64 => "arm64",
        }
    }
}

/// The command line.
#[derive(Clone, Debug)]
struct Options {
    archs: Vec<Arch>,
    dma_bits: u32,
    transfers: u64,
    seed: u64,
    cpus: usize,
    queue_depth: usize,
    pool_mib: u64,
    coherent: Option<bool>,
    check_every: u64,
    force_bounce: bool,
    corrupt: Option<u64>,
    quiet: bool,
    /// `--grow` or `--no-grow`: the bursty workload ([`burst`]) instead of the backend.
    bursts: Option<burst::BurstOptions>,
}

/// The most requests in flight, over all queues.
const MAX_QUEUE_DEPTH: u64 = 64;
/// The most backend CPUs.
const MAX_CPUS: u64 = 8;
/// Pages the guest has (8 MiB).
const DOMU_PAGES: u64 = 2048;
/// Pages the guest grants to dom0 for its traffic: enough for the deepest queue of the
/// largest requests.
// CAST: the product is 1088.
const GRANTED_PAGES: usize = MAX_QUEUE_DEPTH as usize * MAX_SEGMENTS + 256;

fn command() -> Command {
    Command::new("sim-dom0")
        .about(
            "A dom0 backend on the simulated Xen machine: the guest's network and block \
             traffic to a DMA device through swiotlb-xen, every byte verified.",
        )
        .arg(
            Arg::new("arch")
                .long("arch")
                .value_parser(["x86-pv", "x86_64", "x86", "arm64", "aarch64", "both", "all"])
                .default_value("both")
                .help(
                    "platform to run on: x86-pv (or x86_64), arm64 (or aarch64), both (or \
                     all: x86-pv, then arm64), the names every tool of the project takes",
                ),
        )
        .arg(
            Arg::new("dma-bits")
                .long("dma-bits")
                .value_parser(value_parser!(u32).range(12..=64))
                .default_value("32")
                .help("DMA address bits of the device (its streaming and coherent mask)"),
        )
        .arg(
            Arg::new("transfers")
                .long("transfers")
                .value_parser(parse_positive)
                .default_value("2000")
                .help("transfers per platform (packets and block requests)"),
        )
        .arg(
            Arg::new("seed")
                .long("seed")
                .value_parser(parse_u64)
                .default_value("0x5eedd0d0")
                .help("seed of the machine's layout and of the workload (decimal or 0x hex)"),
        )
        .arg(
            Arg::new("cpus")
                .long("cpus")
                .value_parser(value_parser!(u64).range(1..=MAX_CPUS))
                .default_value("2")
                .help("backend CPUs (threads), each with its own device queue and ring"),
        )
        .arg(
            Arg::new("queue-depth")
                .long("queue-depth")
                .value_parser(value_parser!(u64).range(1..=MAX_QUEUE_DEPTH))
                .default_value("16")
                .help("requests in flight at once per queue (at most 64 over all queues)"),
        )
        .arg(
            Arg::new("pool-mib")
                .long("pool-mib")
                .value_parser(value_parser!(u64).range(1..=32))
                .help(
                    "bounce pool size asked of the initialisation policy, in MiB [default: \
                     4, with --grow or --no-grow 1]",
                ),
        )
        .arg(
            Arg::new("coherent")
                .long("coherent")
                .action(ArgAction::SetTrue)
                .conflicts_with("non-coherent")
                .help("make the device cache-coherent (the default on x86-pv)"),
        )
        .arg(
            Arg::new("non-coherent")
                .long("non-coherent")
                .action(ArgAction::SetTrue)
                .help("make the device non-coherent (the default on arm64; arm64 only)"),
        )
        .arg(
            Arg::new("force-bounce")
                .long("force-bounce")
                .action(ArgAction::SetTrue)
                .help("bounce every streaming mapping (Linux's swiotlb=force)"),
        )
        .arg(
            Arg::new("check-every")
                .long("check-every")
                .value_parser(parse_positive)
                .default_value("64")
                .help("check the simulator's and the pool's invariants every N transfers"),
        )
        .arg(
            Arg::new("quiet")
                .long("quiet")
                .action(ArgAction::SetTrue)
                .help("no progress lines on stderr"),
        )
        .arg(
            Arg::new("grow")
                .long("grow")
                .action(ArgAction::SetTrue)
                .conflicts_with("no-grow")
                .help(
                    "instead of the backend: bursts of 1500 B to 2 MiB mappings, far beyond a \
                     1 MiB first pool, with quiet periods; the engine grows pools and gives \
                     them back (docs/demo.md)",
                ),
        )
        .arg(
            Arg::new("no-grow")
                .long("no-grow")
                .action(ArgAction::SetTrue)
                .help("the same bursts on the fixed pool: the maps that find no room fail"),
        )
        .arg(
            Arg::new("rounds")
                .long("rounds")
                .value_parser(parse_positive)
                .default_value("8")
                .help("with --grow or --no-grow: bursts, each followed by a quiet period"),
        )
        .arg(
            Arg::new("inject-corruption")
                .long("inject-corruption")
                .value_parser(value_parser!(u64))
                .hide(true)
                .help("test only: the device corrupts one byte of transfer N"),
        )
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => s.replace('_', "").parse(),
    };
    r.map_err(|e| format!("{s:?} is not a number: {e}"))
}

/// A count of at least 1, said as `1..` when it is not (not as the whole `u64` range).
fn parse_positive(s: &str) -> Result<u64, String> {
    match parse_u64(s)? {
        0 => Err("must be 1 or more (1..)".to_owned()),
        v => Ok(v),
    }
}

fn options() -> Result<Options, clap::Error> {
    let m = command().try_get_matches()?;
    let archs = match m.get_one::<String>("arch").map(String::as_str) {
        Some("x86-pv" | "x86_64" | "x86") => vec![Arch::X86Pv],
        Some("arm64" | "aarch64") => vec![Arch::Arm64],
        _ => vec![Arch::X86Pv, Arch::Arm64],
    };
    let coherent = if m.get_flag("coherent") {
        Some(true)
    } else if m.get_flag("non-coherent") {
        Some(false)
    } else {
        None
    };
    if coherent == Some(false) && archs.contains(&Arch::X86Pv) {
        return Err(command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "--non-coherent needs --arch arm64: x86 keeps DMA cache-coherent",
        ));
    }
    let get = |name: &str| m.get_one::<u64>(name).copied();
    let bursts = (m.get_flag("grow") || m.get_flag("no-grow")).then(|| burst::BurstOptions {
        grow: m.get_flag("grow"),
        rounds: get("rounds").unwrap_or(8),
        seed: get("seed").unwrap_or_default(),
    });
    let (cpus, queue_depth) = (get("cpus").unwrap_or(2), get("queue-depth").unwrap_or(16));
    if cpus * queue_depth > MAX_QUEUE_DEPTH {
        return Err(command().error(
            clap::error::ErrorKind::ValueValidation,
            format!(
                "--cpus {cpus} × --queue-depth {queue_depth} requests in flight: at most \
                 {MAX_QUEUE_DEPTH}"
            ),
        ));
    }
    Ok(Options {
        archs,
        dma_bits: m.get_one::<u32>("dma-bits").copied().unwrap_or(32),
        transfers: get("transfers").unwrap_or(2000),
        seed: get("seed").unwrap_or_default(),
        // CAST: at most MAX_CPUS and MAX_QUEUE_DEPTH.
        cpus: cpus as usize,
        queue_depth: queue_depth as usize,
        pool_mib: get("pool-mib").unwrap_or(if bursts.is_some() { 1 } else { 4 }),
        coherent,
        check_every: get("check-every").unwrap_or(64),
        force_bounce: m.get_flag("force-bounce"),
        corrupt: get("inject-corruption"),
        quiet: m.get_flag("quiet"),
        bursts,
    })
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Some(b) = opts.bursts {
        return bursts(&opts, b);
    }
    for &arch in &opts.archs {
        let result = match arch {
            Arch::X86Pv => run_x86(&opts),
            Arch::Arm64 => run_arm64(&opts),
        };
        match result {
            // A closed stdout (`| head`) is not a failure of the run.
            Ok(report) => drop(writeln!(std::io::stdout(), "{report}")),
            Err(e) => {
                eprintln!("sim-dom0: {}: {e}", arch.name());
                return ExitCode::from(e.exit_code());
            }
        }
    }
    drop(writeln!(std::io::stdout(), "sim-dom0: PASS"));
    ExitCode::SUCCESS
}

/// `--grow` and `--no-grow`: the bursts on each platform. With growth a failed map fails
/// the run (exit 1, after the report); without, failures are what the run shows.
fn bursts(opts: &Options, b: burst::BurstOptions) -> ExitCode {
    for &arch in &opts.archs {
        match burst::platform(opts, arch, b) {
            Ok(report) => {
                drop(writeln!(std::io::stdout(), "{report}"));
                if b.grow && report.map_failures() > 0 {
                    let e = Failure::Verify(format!(
                        "{} maps failed although the engine may grow",
                        report.map_failures()
                    ));
                    eprintln!("sim-dom0: {}: {e}", arch.name());
                    return ExitCode::from(e.exit_code());
                }
            }
            Err(e) => {
                eprintln!("sim-dom0: {}: {e}", arch.name());
                return ExitCode::from(e.exit_code());
            }
        }
    }
    drop(writeln!(std::io::stdout(), "sim-dom0: PASS"));
    ExitCode::SUCCESS
}

fn run_options(opts: &Options, arch: Arch) -> RunOptions {
    RunOptions {
        transfers: opts.transfers,
        seed: opts.seed,
        cpus: opts.cpus,
        queue_depth: opts.queue_depth,
        check_every: opts.check_every,
        corrupt: opts.corrupt,
        progress: (!opts.quiet).then_some(Duration::from_secs(1)),
        label: arch.name().to_owned(),
    }
}

fn mask(opts: &Options) -> Result<DmaMask, Failure> {
    DmaMask::from_bits(opts.dma_bits)
        .ok_or_else(|| Failure::Setup(format!("no DMA mask of {} bits", opts.dma_bits)))
}

/// The x86 PV dom0: a scrambled P2M, the guest's pages mapped over ballooned-out pages.
fn run_x86(opts: &Options) -> Result<Report, Failure> {
    let xen = Xen::new(
        SimConfig::x86_pv()
            .with_seed(opts.seed)
            .with_domu_pages(DOMU_PAGES),
    );
    let free_before = xen.free_frames();
    let g = xen.pv_guest();
    let dom0 = xen.dom0();
    let device = xen.device(mask(opts)?, true);
    let dev = device.core_device().with_force_bounce(opts.force_bounce);
    let pages = SimPages::pv(&g, 64);
    let grants = PvGrants::new(&g, &dom0, opts.cpus * opts.queue_depth * MAX_SEGMENTS)
        .map_err(|e| Failure::Setup(e.to_string()))?;
    let skbs = (0..opts.cpus * opts.queue_depth)
        .map(|_| g.alloc_pages(SKB_PAGES))
        .collect();
    let domu_refs = xen.domu_grant(GRANTED_PAGES);
    let before_init = xen.counters();
    let (engine, init) = pool::init(
        sim::pv_platform(&xen, &g),
        &g.memory(),
        opts.pool_mib,
        &pages,
        4,
        |n, align| g.alloc_aligned(n, align),
    )?;
    check_supported(&engine, &dev, opts)?;
    let after_init = xen.counters();
    let target = Target {
        xen: &xen,
        mem: g.memory(),
        device: device.clone(),
        dev,
        grants: &grants,
        domu: xen.domu_guest(),
        domu_id: xen.domu().id(),
        domu_refs,
        skbs,
        coherent_written: &|_, _| {},
    };
    let run = backend::run(&engine, &target, &run_options(opts, Arch::X86Pv))?;
    let after_run = xen.counters();
    let engine_stats = engine.stats();
    pool::release(engine, &init)?;
    grants
        .restore()
        .map_err(|e| Failure::Setup(e.to_string()))?;
    // No frame lost: every pfn of dom0 has its own frame again, and Xen agrees.
    // CAST (below): a count of P2M entries fits u64.
    let local = g
        .p2m()
        .iter()
        .filter(|e| {
            matches!(
                p2m::P2mEntry::decode(e.load(Ordering::Relaxed)),
                p2m::P2mEntry::Local(_)
            )
        })
        .count() as u64;
    if local != g.nr_pages() {
        return Err(Failure::Verify(format!(
            "dom0 lost frames: {local} of {} pfns have their own frame",
            g.nr_pages()
        )));
    }
    finish(
        &xen,
        opts,
        Arch::X86Pv,
        true,
        &init,
        Hypercalls::between(&before_init, &after_init),
        Hypercalls::between(&after_init, &after_run),
        run,
        engine_stats,
        free_before,
        pages.in_use(),
    )
}

/// The arm64 dom0: 1:1, the guest's pages mapped in the foreign window and recorded in the
/// platform's foreign table.
fn run_arm64(opts: &Options) -> Result<Report, Failure> {
    let xen = Xen::new(
        SimConfig::arm64()
            .with_seed(opts.seed)
            .with_domu_pages(DOMU_PAGES),
    );
    let free_before = xen.free_frames();
    let g = xen.arm_guest();
    let dom0 = xen.dom0();
    let coherent = opts.coherent.unwrap_or(false);
    let device = xen.device(mask(opts)?, coherent);
    let dev = device.core_device().with_force_bounce(opts.force_bounce);
    let pages = SimPages::arm(&g, 64);
    let table = UnboundedForeignTable::default();
    let mem = g.memory();
    let grants = ArmGrants::new(
        &table,
        &dom0,
        g.foreign_window_base(),
        opts.cpus * opts.queue_depth * MAX_SEGMENTS,
    );
    let skbs = (0..opts.cpus * opts.queue_depth)
        .map(|_| g.alloc_pages(SKB_PAGES))
        .collect();
    let domu_refs = xen.domu_grant(GRANTED_PAGES);
    let before_init = xen.counters();
    // SAFETY: dom0's hypercalls and the simulated CPU's view of dom0's memory, which
    // reaches all of its RAM; the simulated Xen maps dom0 1:1 and says so.
    let platform = unsafe {
        Arm64Platform::probe(
            &dom0,
            &table,
            SimCache(g.clone()),
            &mem,
            ProbeOptions::initial_domain(),
        )
    }
    .map_err(|e| Failure::Setup(format!("probing Xen: {e}")))?;
    let (engine, init) = pool::init(platform, &mem, opts.pool_mib, &pages, 4, |n, align| {
        g.alloc_aligned(n, align)
    })?;
    check_supported(&engine, &dev, opts)?;
    let after_init = xen.counters();
    let clean = |phys, len| {
        if !coherent {
            g.cache_clean(phys, len);
        }
    };
    let target = Target {
        xen: &xen,
        mem: g.memory(),
        device: device.clone(),
        dev,
        grants: &grants,
        domu: xen.domu_guest(),
        domu_id: xen.domu().id(),
        domu_refs,
        skbs,
        coherent_written: &clean,
    };
    let run = backend::run(&engine, &target, &run_options(opts, Arch::Arm64))?;
    let after_run = xen.counters();
    let engine_stats = engine.stats();
    pool::release(engine, &init)?;
    if !table.is_empty() {
        return Err(Failure::Verify(format!(
            "{} foreign table entries left after every grant was unmapped",
            table.len()
        )));
    }
    finish(
        &xen,
        opts,
        Arch::Arm64,
        coherent,
        &init,
        Hypercalls::between(&before_init, &after_init),
        Hypercalls::between(&after_init, &after_run),
        run,
        engine_stats,
        free_before,
        pages.in_use(),
    )
}

fn check_supported<
    P: Platform,
    S: AsRef<[swiotlb_core::Slot]>,
    A: swiotlb_core::engine::PageAllocator,
>(
    engine: &swiotlb_core::engine::DmaEngine<P, xen_sim::SimMemory, S, A>,
    dev: &swiotlb_core::Device,
    opts: &Options,
) -> Result<(), Failure> {
    if engine.dma_supported(dev, dev.dma_mask) {
        Ok(())
    } else {
        Err(Failure::Setup(format!(
            "a {}-bit device cannot use this pool: its highest bus address is {:#x} \
             (dma_supported is false)",
            opts.dma_bits,
            engine.pool_bus_top().map_or(0, |b| b.as_u64())
        )))
    }
}

/// The end-of-run checks shared by both platforms, and the report.
#[expect(
    clippy::too_many_arguments,
    reason = "one call per platform, all named"
)]
fn finish(
    xen: &Xen,
    opts: &Options,
    arch: Arch,
    coherent: bool,
    init: &swiotlb_xen::init::InitReport,
    init_hypercalls: Hypercalls,
    run_hypercalls: Hypercalls,
    run: backend::RunStats,
    engine: swiotlb_core::engine::EngineStats,
    free_before: u64,
    coherent_pages: usize,
) -> Result<Report, Failure> {
    xen.check_invariants()
        .map_err(|v| Failure::Verify(format!("simulator invariant broken at the end: {v}")))?;
    if coherent_pages != 0 {
        return Err(Failure::Verify(format!(
            "{coherent_pages} coherent pages not given back"
        )));
    }
    let free_after = xen.free_frames();
    if free_after != free_before {
        return Err(Failure::Verify(format!(
            "the machine had {free_before} free frames before and {free_after} after"
        )));
    }
    // The only failures allowed are maps that found the pool full and were retried.
    if engine.map_failures != run.deferred
        || engine.unmap_sync_failures + engine.cache_failures != 0
    {
        return Err(Failure::Verify(format!(
            "the engine counted failures ({} maps deferred for a full pool): {engine:?}",
            run.deferred
        )));
    }
    Ok(Report {
        arch: arch.name(),
        dma_bits: opts.dma_bits,
        coherent,
        seed: opts.seed,
        cpus: opts.cpus,
        queue_depth: opts.queue_depth,
        pool_init: pool::summary(init),
        pool_slots: init.nslabs,
        pool_bus_top: init.bus_top.as_u64(),
        init_hypercalls,
        // CAST: a few MiB.
        pool_bytes: init.bytes as u64,
        run,
        engine,
        run_hypercalls,
        free_frames: (free_before, free_after),
    })
}
