//! The bursty workload of `--grow` and `--no-grow`: rounds of mappings held at once, far
//! more than the 1 MiB first pool holds (1500 B packets up to 2 MiB buffers), each followed
//! by a quiet period in which the kernel's timer calls [`DmaEngine::reclaim`]. With growth
//! the engine adds pools of [`CHUNK`] bytes when the pool is full and gives them back after
//! the quiet period; without, the maps that find the pool full fail and are counted.
//!
//! Every byte goes through the simulated device: it reads what the CPU wrote before a map
//! towards the device and compares it, and writes a fresh pattern that the CPU finds in the
//! original buffer after the unmap.

use std::fmt;

use swiotlb_core::Error as PoolError;
use swiotlb_core::engine::{
    DmaEngine, DmaError, Growth, GrowthLimits, GrowthStats, PageAllocator, PoolGrowth,
};
use swiotlb_core::{BusAddr, Device, DmaAttrs, DmaDirection, PhysAddr, Platform, Slot};
use swiotlb_xen_arm64::{Arm64Platform, ProbeOptions, UnboundedForeignTable};
use xen_sim::{SimConfig, SimDevice, SimMemory, Xen};

use crate::report::Hypercalls;
use crate::sim::{self, SimCache, SimGrowth, SimPages};
use crate::workload::{Rng, payload};
use crate::{Arch, Failure, Options, pool};

/// Bytes in a KiB and a MiB.
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The size of each grown pool: 2 MiB, so that a 2 MiB mapping fits one.
pub const CHUNK: usize = 2 << 20;
/// The most bytes of grown pools alive at once.
pub const MAX_GROWN: u64 = 16 << 20;
/// Pages set aside for growth outside atomic context (all of [`MAX_GROWN`]) and for the
/// atomic reserve (unused here: the demo never maps in atomic context).
const GROWTH_PAGES: u64 = MAX_GROWN / 4096;
const RESERVE_PAGES: u64 = 64;
/// Ticks of the kernel's clock a grown pool must stay idle before it is given back.
pub const QUIET_PERIOD: u64 = 100;
/// The timer calls `reclaim` every this many ticks; a map takes one tick.
const TIMER: u64 = 10;
/// Ticks of each quiet period between bursts: long enough for the idle pools to go.
const QUIET_TICKS: u64 = 3 * QUIET_PERIOD;

/// The buffers of a burst, by size; a round maps a random selection of them, all at once.
/// 5.6 MiB in all, so a full burst needs the 1 MiB first pool and two or three grown ones.
const BURST: &[(usize, usize)] = &[
    // (bytes, how many)
    (2 << 20, 1),
    (1 << 20, 2),
    (256 << 10, 4),
    (64 << 10, 8),
    (4096, 16),
    (1500, 32),
];

/// How a burst run goes.
#[derive(Clone, Copy, Debug)]
pub struct BurstOptions {
    /// Whether the engine may grow.
    pub grow: bool,
    /// Rounds: a burst and a quiet period each.
    pub rounds: u64,
    /// Seed of the selection, the directions and the payloads.
    pub seed: u64,
}

/// What a burst run did.
#[derive(Clone, Debug, Default)]
pub struct BurstStats {
    /// Maps tried, and those that failed (the pool full or too small, growth refused).
    pub maps: u64,
    /// Maps that failed.
    pub map_failures: u64,
    /// Failed maps by size: `(bytes, failures)`, in [`BURST`] order.
    pub failures_by_size: Vec<(usize, u64)>,
    /// Buffers beyond the engine's mapping size (`TooLarge`), mapped in pieces of its
    /// `max_mapping_size` as a Linux driver does, and the pieces; and whole mappings of
    /// 1 MiB or more.
    pub split: (u64, u64),
    /// Mappings of 1 MiB or more made whole.
    pub large_whole: u64,
    /// The most mappings live at once, and their bytes.
    pub peak_live: (usize, u64),
    /// Bytes the device read and checked, and wrote and the CPU checked.
    pub verified: (u64, u64),
    /// Grown pools given back in quiet periods (the others went in a burst, between
    /// rounds of the timer, once idle for the quiet period).
    pub removed_quiet: u64,
    /// The growth counters at the end (`None` without growth).
    pub growth: Option<GrowthStats>,
}

/// One live mapping of a burst: `len` bytes at `off` of buffer `id` (`total` bytes).
struct Live {
    buf: PhysAddr,
    bus: BusAddr,
    len: usize,
    dir: DmaDirection,
    id: u64,
    off: usize,
    total: usize,
}

impl Live {
    /// What the CPU wrote into this mapping's bytes, and what the device writes there.
    fn expected(&self, seed: u64, from_device: bool) -> Vec<u8> {
        let seed = if from_device {
            seed ^ 0xdead_beef
        } else {
            seed
        };
        payload(seed, self.id, self.total)[self.off..self.off + self.len].to_vec()
    }
}

/// Maps `len` bytes at `buf`: whole, or in pieces of the engine's mapping size when it says
/// the buffer is too large for it. `Ok(None)` when there was no room (nothing stays mapped).
///
/// # Safety
///
/// As [`DmaEngine::map_page`].
unsafe fn map_buffer<P, S, A, G>(
    engine: &DmaEngine<P, SimMemory, S, A, G>,
    dev: &Device,
    buf: PhysAddr,
    len: usize,
    dir: DmaDirection,
    id: u64,
    st: &mut BurstStats,
) -> Result<Option<Vec<Live>>, Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
    G: PoolGrowth<SimMemory>,
{
    let live = |off: usize, bus: BusAddr, n: usize| Live {
        buf: PhysAddr::new(buf.as_u64() + off as u64),
        bus,
        len: n,
        dir,
        id,
        off,
        total: len,
    };
    // SAFETY: the caller's promise.
    let max = match unsafe { engine.map_page(dev, buf, len, dir, DmaAttrs::empty()) } {
        Ok(bus) => {
            if len >= 1 << 20 {
                st.large_whole += 1;
            }
            return Ok(Some(vec![live(0, bus, len)]));
        }
        Err(DmaError::Bounce {
            source: PoolError::TooLarge { max, .. },
            ..
        }) if max > 0 => max,
        Err(e) if no_room(&e) => return Ok(None),
        Err(e) => return Err(Failure::Dma(format!("map of {len} bytes: {e}"))),
    };
    st.split.0 += 1;
    let mut pieces: Vec<Live> = Vec::new();
    for off in (0..len).step_by(max) {
        let n = max.min(len - off);
        let p = PhysAddr::new(buf.as_u64() + off as u64);
        st.split.1 += 1;
        // SAFETY: the caller's promise.
        match unsafe { engine.map_page(dev, p, n, dir, DmaAttrs::empty()) } {
            Ok(bus) => pieces.push(live(off, bus, n)),
            Err(e) if no_room(&e) => {
                for l in pieces {
                    engine
                        .unmap_page(dev, l.bus, l.len, dir, DmaAttrs::SKIP_CPU_SYNC)
                        .map_err(|e| Failure::Dma(format!("unmap of {} bytes: {e}", l.len)))?;
                }
                return Ok(None);
            }
            Err(e) => return Err(Failure::Dma(format!("map of {n} bytes: {e}"))),
        }
    }
    Ok(Some(pieces))
}

/// Whether a map failed for want of room (the run goes on and counts it), not for a bug.
fn no_room(e: &DmaError) -> bool {
    matches!(
        e,
        DmaError::Bounce {
            source: PoolError::PoolFull { .. } | PoolError::TooLarge { .. },
            ..
        } | DmaError::Growth { .. }
    )
}

/// The buffers of [`BURST`], one per entry, from `alloc(pages)`: each at a small odd offset
/// in its pages for the small ones (a packet's data rarely starts on a page).
fn buffers(alloc: &dyn Fn(u64) -> PhysAddr) -> Vec<(PhysAddr, usize)> {
    let mut v = Vec::new();
    for &(len, n) in BURST {
        for i in 0..n {
            let off = if len < 4096 { 66 + 128 * i } else { 0 };
            // CAST: a few MiB.
            let pages = (off + len).div_ceil(4096) as u64;
            let base = alloc(pages);
            v.push((PhysAddr::new(base.as_u64() + off as u64), len));
        }
    }
    v
}

/// Runs the rounds on `engine`, verifying every byte through `device`.
///
/// # Errors
///
/// [`Failure::Verify`] on a wrong byte or a DMA fault, [`Failure::Dma`] when a DMA operation
/// fails for another reason than room.
#[allow(clippy::too_many_lines, reason = "one round, read top to bottom")]
pub fn run<P, S, A, G>(
    engine: &DmaEngine<P, SimMemory, S, A, G>,
    mem: &SimMemory,
    device: &SimDevice,
    dev: &Device,
    bufs: &[(PhysAddr, usize)],
    opts: BurstOptions,
) -> Result<BurstStats, Failure>
where
    P: Platform,
    S: AsRef<[Slot]>,
    A: PageAllocator,
    G: PoolGrowth<SimMemory>,
{
    let mut st = BurstStats {
        failures_by_size: BURST.iter().map(|&(len, _)| (len, 0)).collect(),
        ..BurstStats::default()
    };
    let mut rng = Rng::new(opts.seed);
    let mut now = 0u64;
    let mut id = 0u64;
    let reclaim = |now: u64, st: &mut BurstStats, quiet: bool| {
        let r = engine.reclaim(now);
        if quiet {
            st.removed_quiet += r.removed as u64;
        }
        match r.error {
            Some(e) => Err(Failure::Verify(format!("giving a grown pool back: {e}"))),
            None => Ok(()),
        }
    };
    for round in 0..opts.rounds {
        // The burst: the first round maps a third of the buffers (it fits the first pool),
        // later ones most of them, always the 1 MiB and 2 MiB ones from the second on.
        let mut live = Vec::new();
        let mut order: Vec<usize> = (0..bufs.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.range(0, i));
        }
        for (buf, len) in order.into_iter().map(|i| bufs[i]) {
            let take = if round == 0 {
                len < (1 << 20) && rng.chance(33)
            } else {
                len >= (1 << 20) || rng.chance(80)
            };
            if !take {
                continue;
            }
            let dir = match rng.range(0, 2) {
                0 => DmaDirection::ToDevice,
                1 => DmaDirection::FromDevice,
                _ => DmaDirection::Bidirectional,
            };
            id += 1;
            mem.write(buf, &payload(opts.seed, id, len));
            st.maps += 1;
            // SAFETY: the buffer is dom0 memory of this run alone, covered by no reference
            // until its unmap below.
            match unsafe { map_buffer(engine, dev, buf, len, dir, id, &mut st) }? {
                Some(pieces) => live.extend(pieces),
                None => {
                    st.map_failures += 1;
                    if let Some(f) = st.failures_by_size.iter_mut().find(|f| f.0 == len) {
                        f.1 += 1;
                    }
                }
            }
            now += 1;
            if now.is_multiple_of(TIMER) {
                reclaim(now, &mut st, false)?;
            }
        }
        // CAST: usize fits u64.
        let bytes: u64 = live.iter().map(|l| l.len as u64).sum();
        if live.len() > st.peak_live.0 {
            st.peak_live = (live.len(), bytes);
        }
        // The device: reads what goes to it, writes what comes back.
        for l in &live {
            if matches!(l.dir, DmaDirection::ToDevice | DmaDirection::Bidirectional) {
                let got = device.read(l.bus, l.len).map_err(|f| {
                    Failure::Verify(format!("DMA fault reading {} bytes: {f:?}", l.len))
                })?;
                if got != l.expected(opts.seed, false) {
                    return Err(Failure::Verify(format!(
                        "the device read wrong bytes of mapping {} ({} bytes at {})",
                        l.id, l.len, l.bus
                    )));
                }
                st.verified.0 += l.len as u64;
            }
            if matches!(
                l.dir,
                DmaDirection::FromDevice | DmaDirection::Bidirectional
            ) {
                let data = l.expected(opts.seed, true);
                device.write(l.bus, &data).map_err(|f| {
                    Failure::Verify(format!("DMA fault writing {} bytes: {f:?}", l.len))
                })?;
            }
        }
        // Completion: every mapping goes, and what the device wrote is in the buffer.
        for l in live {
            engine
                .unmap_page(dev, l.bus, l.len, l.dir, DmaAttrs::empty())
                .map_err(|e| Failure::Dma(format!("unmap of {} bytes: {e}", l.len)))?;
            if matches!(
                l.dir,
                DmaDirection::FromDevice | DmaDirection::Bidirectional
            ) {
                let mut got = vec![0u8; l.len];
                mem.read(l.buf, &mut got);
                if got != l.expected(opts.seed, true) {
                    return Err(Failure::Verify(format!(
                        "mapping {} ({} bytes): the CPU does not see what the device wrote",
                        l.id, l.len
                    )));
                }
                st.verified.1 += l.len as u64;
            }
        }
        // The quiet period: the timer runs, idle grown pools go back.
        for _ in 0..QUIET_TICKS / TIMER {
            now += TIMER;
            reclaim(now, &mut st, true)?;
        }
    }
    if let Some(f) = device.faults().first() {
        return Err(Failure::Verify(format!("DMA fault: {f:?}")));
    }
    if let Some(v) = device.violations().first() {
        return Err(Failure::Verify(format!("cache violation: {v:?}")));
    }
    st.growth = engine.growth_stats();
    Ok(st)
}

/// What one platform's burst run reports.
#[derive(Clone, Debug)]
pub struct BurstReport {
    arch: &'static str,
    opts: BurstOptions,
    pool: String,
    stats: BurstStats,
    hypercalls: u64,
}

impl BurstReport {
    /// Maps that failed.
    #[must_use]
    pub fn map_failures(&self) -> u64 {
        self.stats.map_failures
    }
}

impl fmt::Display for BurstReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let mode = if self.opts.grow {
            format!(
                "growth in {} MiB chunks up to {} MiB, quiet period {QUIET_PERIOD} ticks",
                CHUNK as u64 / MIB,
                MAX_GROWN / MIB
            )
        } else {
            "no growth (the fixed pool)".to_owned()
        };
        writeln!(f, "sim-dom0 bursts: {}, {mode}", self.arch)?;
        writeln!(f, "first pool: {}", self.pool)?;
        writeln!(
            f,
            "workload: {} rounds (a burst, then {QUIET_TICKS} quiet ticks), {} maps of 1500 B \
             to 2 MiB, at most {} live at once ({} KiB)",
            self.opts.rounds,
            s.maps,
            s.peak_live.0,
            s.peak_live.1 / KIB
        )?;
        writeln!(
            f,
            "large buffers: {} mappings of 1 MiB or more made whole; {} buffers beyond the \
             engine's max_mapping_size split ({} pieces tried)",
            s.large_whole, s.split.0, s.split.1
        )?;
        writeln!(
            f,
            "verified: {} KiB read by the device, {} KiB written by it and seen by the CPU",
            s.verified.0 / KIB,
            s.verified.1 / KIB
        )?;
        match &s.growth {
            Some(g) => {
                writeln!(
                    f,
                    "growth: pools added {}, removed {}, peak {} KiB",
                    g.pools_added,
                    g.pools_removed,
                    g.peak_bytes / KIB
                )?;
                writeln!(
                    f,
                    "growth detail: {} removed in quiet periods, {} live at the end, {} refused \
                     by the limits, {} failed; {} hypercall traps in the run",
                    s.removed_quiet, g.live_pools, g.refused, g.failed, self.hypercalls
                )?;
            }
            None => writeln!(
                f,
                "growth: off; {} hypercall traps in the run",
                self.hypercalls
            )?,
        }
        let by_size: Vec<String> = s
            .failures_by_size
            .iter()
            .filter(|&&(_, n)| n > 0)
            .map(|&(len, n)| format!("{n} of {}", size_name(len)))
            .collect();
        if by_size.is_empty() {
            writeln!(f, "map failures: {}", s.map_failures)
        } else {
            writeln!(f, "map failures: {}", s.map_failures)?;
            writeln!(f, "failed maps by size: {}", by_size.join(", "))
        }
    }
}

fn size_name(len: usize) -> String {
    // CAST: usize fits u64.
    let b = len as u64;
    if b >= MIB && b.is_multiple_of(MIB) {
        format!("{} MiB", b / MIB)
    } else if b >= KIB && b.is_multiple_of(KIB) {
        format!("{} KiB", b / KIB)
    } else {
        format!("{b} B")
    }
}

fn limits() -> GrowthLimits {
    GrowthLimits::new(MAX_GROWN, CHUNK).with_quiet_period(QUIET_PERIOD)
}

/// The burst run on one platform.
///
/// # Errors
///
/// As [`run`], and [`Failure::Setup`] when the machine cannot be set up.
pub fn platform(opts: &Options, arch: Arch, b: BurstOptions) -> Result<BurstReport, Failure> {
    match arch {
        Arch::X86Pv => x86(opts, b),
        Arch::Arm64 => arm64(opts, b),
    }
}

/// Checks the growth state is empty again: no grown pool alive, every page back.
fn check_all_back(s: &BurstStats, hook: &SimGrowth) -> Result<(), Failure> {
    if let Some(g) = &s.growth
        && g.live_pools != 0
    {
        return Err(Failure::Verify(format!(
            "{} grown pools still alive after the last quiet period",
            g.live_pools
        )));
    }
    if hook.in_use() != 0 {
        return Err(Failure::Verify(format!(
            "{} pages of grown pools not given back",
            hook.in_use()
        )));
    }
    Ok(())
}

fn x86(opts: &Options, b: BurstOptions) -> Result<BurstReport, Failure> {
    let xen = Xen::new(SimConfig::x86_pv().with_seed(opts.seed));
    let free_before = xen.free_frames();
    let g = xen.pv_guest();
    let device = xen.device(crate::mask(opts)?, true);
    let dev = device.core_device().with_force_bounce(true);
    let pages = SimPages::pv(&g, 64);
    let (engine, init) = pool::init(
        sim::pv_platform(&xen, &g),
        &g.memory(),
        opts.pool_mib,
        &pages,
        1,
        |n, align| g.alloc_aligned(n, align),
    )?;
    let hook = SimGrowth::pv(&g, GROWTH_PAGES, RESERVE_PAGES);
    let bufs = buffers(&|n| g.alloc_pages(n));
    let before = xen.counters();
    let stats = if b.grow {
        let engine = engine.with_growth(Box::new(Growth::new(&hook, limits())));
        let s = run(&engine, &g.memory(), &device, &dev, &bufs, b)?;
        check_all_back(&s, &hook)?;
        pool::release(engine, &init)?;
        s
    } else {
        let s = run(&engine, &g.memory(), &device, &dev, &bufs, b)?;
        pool::release(engine, &init)?;
        s
    };
    let hypercalls = Hypercalls::between(&before, &xen.counters()).traps;
    end_checks(&xen, free_before)?;
    Ok(BurstReport {
        arch: Arch::X86Pv.name(),
        opts: b,
        pool: pool::summary(&init),
        stats,
        hypercalls,
    })
}

fn arm64(opts: &Options, b: BurstOptions) -> Result<BurstReport, Failure> {
    let xen = Xen::new(SimConfig::arm64().with_seed(opts.seed));
    let free_before = xen.free_frames();
    let g = xen.arm_guest();
    let dom0 = xen.dom0();
    let coherent = opts.coherent.unwrap_or(false);
    let device = xen.device(crate::mask(opts)?, coherent);
    let dev = device.core_device().with_force_bounce(true);
    let pages = SimPages::arm(&g, 64);
    let table = UnboundedForeignTable::default();
    let mem = g.memory();
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
    let (engine, init) = pool::init(platform, &mem, opts.pool_mib, &pages, 1, |n, align| {
        g.alloc_aligned(n, align)
    })?;
    // Growth pages next, below 4 GiB while there is room there (the 1:1 dom0 cannot
    // exchange them), then the buffers.
    let hook = SimGrowth::arm(&g, GROWTH_PAGES, RESERVE_PAGES);
    let bufs = buffers(&|n| g.alloc_pages(n));
    let before = xen.counters();
    let stats = if b.grow {
        let engine = engine.with_growth(Box::new(Growth::new(&hook, limits())));
        let s = run(&engine, &mem, &device, &dev, &bufs, b)?;
        check_all_back(&s, &hook)?;
        pool::release(engine, &init)?;
        s
    } else {
        let s = run(&engine, &mem, &device, &dev, &bufs, b)?;
        pool::release(engine, &init)?;
        s
    };
    let hypercalls = Hypercalls::between(&before, &xen.counters()).traps;
    end_checks(&xen, free_before)?;
    Ok(BurstReport {
        arch: Arch::Arm64.name(),
        opts: b,
        pool: pool::summary(&init),
        stats,
        hypercalls,
    })
}

fn end_checks(xen: &Xen, free_before: u64) -> Result<(), Failure> {
    xen.check_invariants()
        .map_err(|v| Failure::Verify(format!("simulator invariant broken at the end: {v}")))?;
    let free_after = xen.free_frames();
    if free_after != free_before {
        return Err(Failure::Verify(format!(
            "the machine had {free_before} free frames before and {free_after} after"
        )));
    }
    Ok(())
}
