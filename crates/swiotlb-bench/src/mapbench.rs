//! `dma-map-bench`: Linux's `dma_map_benchmark` (the tool `tools/dma/dma_map_benchmark.c`,
//! formerly `tools/testing/selftests/dma/`, and its kernel side `kernel/dma/map_benchmark.c`)
//! for this project's mapping layer.
//!
//! Same options, same checks on them, same loop, same output:
//!
//! - each of `-t` threads owns a buffer of `-g` pages, and until `-s` seconds have passed it
//!   stains the buffer with `0x66` (unless the direction is `FROM_DEVICE`), times one map,
//!   waits `-x` nanoseconds (the "transfer", a busy wait like `ndelay`), and times one unmap;
//! - `-m` picks what one map is (the kernel's 2025 map modes): `0`, `SINGLE_MODE` (the
//!   default), one `dma_map_single` of the `-g` pages; `1`, `SG_MODE`, one `dma_map_sg` of a
//!   scatterlist of `-g` entries (`sg_nents`) of one page each, unmapped by one
//!   `dma_unmap_sg` ([`Mode`]);
//! - the result is the average and the standard deviation of the map and unmap latencies
//!   over every iteration of every thread, printed as the kernel tool prints them
//!   (`average map latency(us):%.1f standard deviation:%.1f`).
//!
//! Differences, deliberately: the kernel truncates each sample to 100 ns before summing
//! (`div64_ul(delta, 100)`), which reads 0.0 for the tens of nanoseconds a pool round trip
//! takes here; this tool sums nanoseconds and prints the kernel's lines from them, plus the
//! same two lines in nanoseconds and the 50th, 99th and 99.9th percentiles of each latency
//! (which the kernel does not report: a mean and a deviation hide how long the rare slow
//! maps take), from a [`Histogram`] per thread. `-n` (NUMA node) is accepted and ignored. A
//! progress line goes to stderr once a second (`-q` turns it off).
//!
//! Backends (`--backend`): `facade` maps through `swiotlb_xen`'s engine on the simulated Xen
//! machine (`--arch x86` or `arm64`), the pool initialised by the facade, in either mode
//! (`SG_MODE` through `DmaEngine::map_sg` and `unmap_sg`); `pool` maps through a bare
//! `swiotlb_core::BouncePool` on host memory (no translation, no mask), which has no
//! scatter-gather call, so it takes `SINGLE_MODE` only.

use std::fmt::Write as _;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use swiotlb_core::engine::SgEntry;
use swiotlb_core::{BouncePool, Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr, PhysMemory};

use crate::harness::RealPool;
use crate::host::HostMemory;
use crate::linux::current_cpu;

/// `DMA_MAP_MAX_THREADS`.
pub const MAX_THREADS: u32 = 1024;
/// `DMA_MAP_MAX_SECONDS`.
pub const MAX_SECONDS: u32 = 300;
/// `DMA_MAP_MAX_TRANS_DELAY` (10 ms), in nanoseconds.
pub const MAX_TRANS_DELAY_NS: u32 = 10_000_000;
/// The page size of a granule.
pub const PAGE: usize = 4096;

/// The simulated architecture of the `facade` backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86 PV dom0.
    X86,
    /// arm64 1:1 dom0.
    Arm64,
}

/// What one map of the benchmark is (`-m`, the kernel's `map_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// `0`, `DMA_MAP_BENCH_SINGLE_MODE`: one `dma_map_single` of the thread's `-g` pages.
    #[default]
    Single,
    /// `1`, `DMA_MAP_BENCH_SG_MODE`: one `dma_map_sg` of a scatterlist of `-g` entries, one
    /// page each.
    Sg,
}

impl Mode {
    /// The name the kernel tool prints (`mode[map_mode]`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Single => "SINGLE_MODE",
            Self::Sg => "SG_MODE",
        }
    }
}

/// Where the maps go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The facade's engine on the simulated machine.
    Facade(Arch),
    /// A bare pool on host memory.
    Pool,
}

/// The options, as the kernel tool names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// `-t`: threads (1..=1024, default 1).
    pub threads: u32,
    /// `-s`: seconds (1..=300, default 20).
    pub seconds: u32,
    /// `-n`: NUMA node (accepted, ignored; default -1).
    pub node: i32,
    /// `-b`: DMA mask bits (20..=64, default 32).
    pub bits: u32,
    /// `-d`: 0 bidirectional, 1 to device, 2 from device (default 0).
    pub dir: u32,
    /// `-x`: simulated transfer time in ns (0..=10 ms, default 0).
    pub xdelay_ns: u32,
    /// `-g`: granule in pages (1..=1024, default 1); in [`Mode::Sg`] the number of
    /// scatterlist entries (`sg_nents`), one page each.
    pub granule: u32,
    /// `-m`: the map mode (default [`Mode::Single`]).
    pub mode: Mode,
    /// `--backend` and `--arch`.
    pub backend: Backend,
    /// `-q`: no progress line.
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            threads: 1,
            seconds: 20,
            node: -1,
            bits: 32,
            dir: 0,
            xdelay_ns: 0,
            granule: 1,
            mode: Mode::Single,
            backend: Backend::Facade(if cfg!(target_arch = "aarch64") {
                Arch::Arm64
            } else {
                Arch::X86
            }),
            quiet: false,
        }
    }
}

/// The usage text.
pub const USAGE: &str = "usage: dma-map-bench [-t threads] [-s seconds] [-n node] [-b bits] \
[-d dir] [-x delay_ns] [-g granule_pages] [-m mode] [--backend facade|pool] \
[--arch x86_64|aarch64] [-q]
  -d: 0 = BIDIRECTIONAL, 1 = TO_DEVICE, 2 = FROM_DEVICE
  -m: 0 = SINGLE_MODE (one map of -g pages), 1 = SG_MODE (one scatterlist of -g one-page
      entries; facade backend only)
  --arch: x86_64 (or x86-pv, x86), aarch64 (or arm64)";

/// The direction names the kernel tool prints, by `-d` value.
pub const DIRECTIONS: [&str; 3] = ["BIDIRECTIONAL", "TO_DEVICE", "FROM_DEVICE"];

/// Why the options were refused; the messages are the kernel tool's where it has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptError {
    /// `-h` or `--help`.
    #[error("{USAGE}")]
    Help,
    /// An option the tool does not know, or one missing its value.
    #[error("bad option {0:?}\n{USAGE}")]
    Bad(String),
    /// A value that is not a number.
    #[error("option {opt} takes a number, not {value:?}")]
    NotANumber {
        /// The option.
        opt: String,
        /// The value.
        value: String,
    },
    /// `-t` out of range.
    #[error("invalid number of threads, must be in 1-{MAX_THREADS}")]
    Threads,
    /// `-s` out of range.
    #[error("invalid number of seconds, must be in 1-{MAX_SECONDS}")]
    Seconds,
    /// `-x` out of range.
    #[error("invalid transmit delay, must be in 0-{MAX_TRANS_DELAY_NS}")]
    Delay,
    /// `-b` out of range.
    #[error("invalid dma mask bit, must be in 20-64")]
    Bits,
    /// `-d` out of range.
    #[error("invalid dma direction")]
    Direction,
    /// `-g` out of range.
    #[error("invalid granule size")]
    Granule,
    /// `-m` out of range.
    #[error("invalid map mode, SINGLE_MODE:0, SG_MODE: 1")]
    Mode,
    /// `-m 1` with `--backend pool`, whose bare pool has no scatter-gather call.
    #[error("SG_MODE (-m 1) maps through the engine's map_sg: use --backend facade")]
    SgNeedsFacade,
}

impl Options {
    /// Parses the arguments (without the program name). Values may follow their option as
    /// the next argument (`-t 2`) or be attached (`-t2`), as `getopt` allows.
    ///
    /// # Errors
    ///
    /// [`OptError`] for an unknown option or a value out of the kernel tool's ranges.
    pub fn parse(args: &[String]) -> Result<Self, OptError> {
        let mut o = Self::default();
        let mut it = args.iter();
        // Values parsed as i64 so that negative input gets the range error, not a parse one.
        let mut nums: Vec<(char, i64)> = Vec::new();
        while let Some(a) = it.next() {
            match a.as_str() {
                "-h" | "--help" => return Err(OptError::Help),
                "-q" => o.quiet = true,
                "--backend" | "--arch" => {
                    let v = it.next().ok_or_else(|| OptError::Bad(a.clone()))?;
                    match (a.as_str(), v.as_str()) {
                        ("--backend", "pool") => o.backend = Backend::Pool,
                        ("--backend", "facade") => {
                            if o.backend == Backend::Pool {
                                o.backend = Options::default().backend;
                            }
                        }
                        ("--arch", "x86" | "x86_64" | "x86-pv") => {
                            o.backend = Backend::Facade(Arch::X86);
                        }
                        ("--arch", "arm64" | "aarch64") => {
                            o.backend = Backend::Facade(Arch::Arm64);
                        }
                        _ => return Err(OptError::Bad(format!("{a} {v}"))),
                    }
                }
                s if s.len() >= 2 && s.starts_with('-') && !s.starts_with("--") => {
                    let mut chars = s[1..].chars();
                    let c = chars.next().unwrap_or('?');
                    if !"tsnbdxgm".contains(c) {
                        return Err(OptError::Bad(s.to_string()));
                    }
                    let attached: String = chars.collect();
                    let v = if attached.is_empty() {
                        it.next()
                            .ok_or_else(|| OptError::Bad(s.to_string()))?
                            .clone()
                    } else {
                        attached
                    };
                    let n = v.trim().parse::<i64>().map_err(|_| OptError::NotANumber {
                        opt: format!("-{c}"),
                        value: v.clone(),
                    })?;
                    nums.push((c, n));
                }
                _ => return Err(OptError::Bad(a.clone())),
            }
        }
        // The kernel tool's order of checks: the mode first, then threads, seconds, delay,
        // bits, direction, granule (a stable sort keeps repeated options in their order).
        nums.sort_by_key(|&(c, _)| "mtsxbdgn".find(c));
        let ranged = |n: i64, lo: i64, hi: i64, e: OptError| {
            if (lo..=hi).contains(&n) {
                // CAST: within the range checked, which fits u32.
                Ok(n as u32)
            } else {
                Err(e)
            }
        };
        for (c, n) in nums {
            match c {
                't' => o.threads = ranged(n, 1, MAX_THREADS.into(), OptError::Threads)?,
                's' => o.seconds = ranged(n, 1, MAX_SECONDS.into(), OptError::Seconds)?,
                'n' => o.node = i32::try_from(n).map_err(|_| OptError::Bad(format!("-n {n}")))?,
                'b' => o.bits = ranged(n, 20, 64, OptError::Bits)?,
                'd' => o.dir = ranged(n, 0, 2, OptError::Direction)?,
                'x' => o.xdelay_ns = ranged(n, 0, MAX_TRANS_DELAY_NS.into(), OptError::Delay)?,
                'g' => o.granule = ranged(n, 1, 1024, OptError::Granule)?,
                'm' => {
                    o.mode = match n {
                        0 => Mode::Single,
                        1 => Mode::Sg,
                        _ => return Err(OptError::Mode),
                    }
                }
                _ => return Err(OptError::Bad(format!("-{c}"))),
            }
        }
        if o.mode == Mode::Sg && o.backend == Backend::Pool {
            return Err(OptError::SgNeedsFacade);
        }
        Ok(o)
    }

    /// The direction of `-d`.
    #[must_use]
    pub fn direction(&self) -> DmaDirection {
        match self.dir {
            1 => DmaDirection::ToDevice,
            2 => DmaDirection::FromDevice,
            _ => DmaDirection::Bidirectional,
        }
    }

    /// The device: a DMA mask of `-b` bits, coherent, no other constraint.
    #[must_use]
    pub fn device(&self) -> Device {
        // Parsing keeps `bits` in 20..=64, which `from_bits` accepts.
        Device::new(DmaMask::from_bits(self.bits).unwrap_or(DmaMask::FULL))
    }

    /// Bytes of one thread's buffer.
    #[must_use]
    pub fn size(&self) -> usize {
        // CAST: at most 1024 pages.
        self.granule as usize * PAGE
    }
}

/// Sub-buckets per power of two of a [`Histogram`] above its exact range (`2^6`).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are counted exactly, one bucket each (`2^7`).
const EXACT: u64 = 2 * SUB;

/// A log-linear histogram of latencies in nanoseconds (the layout of an HDR histogram with
/// two significant binary digits of six bits): every value below 128 ns has a bucket of its
/// own, and each power of two above is split into 64 buckets of equal width, so a bucket
/// spans at most 1/64 of its lower bound. [`percentile`](Self::percentile) answers with
/// the middle of the bucket that holds the sample of that rank: exact below 128 ns, within
/// 1/128 (0.8%) of the true sample above. Memory is fixed (at most 3776 counters, however
/// many samples), which a list of every sample of a 20-second run (a hundred million maps
/// and unmaps) would not be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Samples per bucket; empty until the first sample.
    counts: Vec<u64>,
    /// Samples in all.
    total: u64,
}

impl Histogram {
    /// The bucket of `v`.
    fn index(v: u64) -> usize {
        let i = if v < EXACT {
            v
        } else {
            // `e` >= 7: the position of the highest set bit; the next six bits pick the
            // sub-bucket.
            let e = u64::from(63 - v.leading_zeros());
            EXACT
                + (e - u64::from(SUB_BITS) - 1) * SUB
                + ((v >> (e - u64::from(SUB_BITS))) & (SUB - 1))
        };
        // CAST: at most 3775.
        i as usize
    }

    /// The smallest value of bucket `i` and the bucket's width.
    fn bounds(i: usize) -> (u64, u64) {
        // CAST: bucket indices fit u64.
        let i = i as u64;
        if i < EXACT {
            return (i, 1);
        }
        let (e, sub) = (
            (i - EXACT) / SUB + u64::from(SUB_BITS) + 1,
            (i - EXACT) % SUB,
        );
        let width = 1u64 << (e - u64::from(SUB_BITS));
        ((SUB + sub) * width, width)
    }

    /// Counts one sample.
    pub fn record(&mut self, v: u64) {
        let i = Self::index(v);
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.total += 1;
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, o: &Histogram) {
        if self.counts.len() < o.counts.len() {
            self.counts.resize(o.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.total += o.total;
    }

    /// Samples counted.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether no sample was counted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `per_mille`/1000 percentile by nearest rank: the sample of rank
    /// `ceil(n * per_mille / 1000)` (at least 1) in ascending order, as the middle of its
    /// bucket (rounded down); `None` without samples. `per_mille` is clamped to 1000.
    #[must_use]
    pub fn percentile(&self, per_mille: u32) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let p = u128::from(per_mille.min(1000));
        // CAST: the rank is at most `total`, a u64.
        let rank = ((u128::from(self.total) * p).div_ceil(1000) as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, width) = Self::bounds(i);
                return Some(lo + (width - 1) / 2);
            }
        }
        None
    }
}

/// The percentiles the report prints, in parts per thousand: p50, p99, p99.9.
pub const PERCENTILES: [(u32, &str); 3] = [(500, "p50"), (990, "p99"), (999, "p99.9")];

/// Sums over the iterations of every thread, in nanoseconds, and the latencies'
/// histograms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sums {
    /// Iterations.
    pub loops: u64,
    /// Sum of map latencies.
    pub map: u128,
    /// Sum of their squares.
    pub map_sq: u128,
    /// Sum of unmap latencies.
    pub unmap: u128,
    /// Sum of their squares.
    pub unmap_sq: u128,
    /// Map latencies.
    pub map_hist: Histogram,
    /// Unmap latencies.
    pub unmap_hist: Histogram,
}

impl Sums {
    /// Adds one iteration.
    pub fn add(&mut self, map_ns: u64, unmap_ns: u64) {
        self.loops += 1;
        let (m, u) = (u128::from(map_ns), u128::from(unmap_ns));
        self.map += m;
        self.map_sq += m * m;
        self.unmap += u;
        self.unmap_sq += u * u;
        self.map_hist.record(map_ns);
        self.unmap_hist.record(unmap_ns);
    }

    /// Adds another thread's sums.
    pub fn merge(&mut self, o: &Sums) {
        self.loops += o.loops;
        self.map += o.map;
        self.map_sq += o.map_sq;
        self.unmap += o.unmap;
        self.unmap_sq += o.unmap_sq;
        self.map_hist.merge(&o.map_hist);
        self.unmap_hist.merge(&o.unmap_hist);
    }

    /// `(average, standard deviation)` of the map and of the unmap latencies in ns, as the
    /// kernel computes them (population variance `E[x^2] - E[x]^2`); zeros without loops.
    #[must_use]
    pub fn stats(&self) -> ((f64, f64), (f64, f64)) {
        if self.loops == 0 {
            return ((0.0, 0.0), (0.0, 0.0));
        }
        // CAST: u128 sums to f64 lose only digits far below the printed precision.
        let n = self.loops as f64;
        let f = |s: u128, sq: u128| {
            let mean = s as f64 / n;
            let var = (sq as f64 / n - mean * mean).max(0.0);
            (mean, var.sqrt())
        };
        (f(self.map, self.map_sq), f(self.unmap, self.unmap_sq))
    }

    /// The [`PERCENTILES`] of the map and of the unmap latencies in ns (zeros without
    /// loops).
    #[must_use]
    pub fn percentiles(&self) -> ([u64; 3], [u64; 3]) {
        let p = |h: &Histogram| PERCENTILES.map(|(pm, _)| h.percentile(pm).unwrap_or(0));
        (p(&self.map_hist), p(&self.unmap_hist))
    }
}

/// The report: the kernel tool's lines, then the same averages in nanoseconds, the
/// [`PERCENTILES`] of each latency and the iterations.
#[must_use]
pub fn format_report(o: &Options, s: &Sums) -> String {
    let ((m, ms), (u, us)) = s.stats();
    let mut out = String::new();
    // CAST: `dir` is at most 2 after parsing.
    let dir = DIRECTIONS.get(o.dir as usize).copied().unwrap_or("?");
    let _ = writeln!(
        out,
        "dma mapping benchmark({}): threads:{} seconds:{} node:{} dir:{} granule:{}",
        o.mode.name(),
        o.threads,
        o.seconds,
        o.node,
        dir,
        o.granule
    );
    let _ = writeln!(
        out,
        "average map latency(us):{:.1} standard deviation:{:.1}",
        m / 1000.0,
        ms / 1000.0
    );
    let _ = writeln!(
        out,
        "average unmap latency(us):{:.1} standard deviation:{:.1}",
        u / 1000.0,
        us / 1000.0
    );
    let _ = writeln!(
        out,
        "average map latency(ns):{m:.1} standard deviation:{ms:.1}"
    );
    let _ = writeln!(
        out,
        "average unmap latency(ns):{u:.1} standard deviation:{us:.1}"
    );
    let (mp, up) = s.percentiles();
    for (what, p) in [("map", mp), ("unmap", up)] {
        let _ = write!(out, "{what} latency percentiles(ns):");
        for ((_, name), v) in PERCENTILES.iter().zip(p) {
            let _ = write!(out, " {name}:{v}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "iterations:{}", s.loops);
    out
}

/// What the benchmark maps through.
pub trait Target: Sync {
    /// What an unmap needs.
    type Handle;

    /// The buffer of thread `t`: `size` bytes, page-aligned.
    fn buffer(&self, t: usize) -> PhysAddr;

    /// Fills `len` bytes at `buf` with `byte` (the kernel's stain).
    ///
    /// # Safety
    ///
    /// `buf` is a thread's own buffer, not mapped at the moment.
    unsafe fn stain(&self, buf: PhysAddr, byte: u8, len: usize);

    /// Maps the buffer for the device.
    ///
    /// # Errors
    ///
    /// Why the map failed (the benchmark stops, as the kernel's thread does).
    ///
    /// # Safety
    ///
    /// As [`stain`](Self::stain); the buffer stays unused until the unmap.
    unsafe fn map(
        &self,
        buf: PhysAddr,
        len: usize,
        dir: DmaDirection,
    ) -> Result<Self::Handle, String>;

    /// Unmaps.
    ///
    /// # Errors
    ///
    /// Why the unmap failed.
    fn unmap(&self, h: Self::Handle, len: usize, dir: DmaDirection) -> Result<(), String>;

    /// Maps the scatterlist `sg` for the device ([`Mode::Sg`]), filling in each entry's
    /// `dma_address` and `dma_length`. The default refuses: a target without a
    /// scatter-gather call.
    ///
    /// # Errors
    ///
    /// Why the map failed.
    ///
    /// # Safety
    ///
    /// As [`map`](Self::map), for every entry's buffer.
    unsafe fn map_sg(&self, sg: &mut [SgEntry], dir: DmaDirection) -> Result<(), String> {
        let _ = (sg, dir);
        Err("this target has no scatter-gather call".into())
    }

    /// Unmaps a scatterlist [`map_sg`](Self::map_sg) mapped.
    ///
    /// # Errors
    ///
    /// Why the unmap failed.
    fn unmap_sg(&self, sg: &[SgEntry], dir: DmaDirection) -> Result<(), String> {
        let _ = (sg, dir);
        Err("this target has no scatter-gather call".into())
    }

    /// A line about the target after the run (pool use, direct and bounced maps, ...).
    fn summary(&self) -> String;
}

/// Busy-waits `ns` nanoseconds (Linux's `ndelay`).
fn ndelay(ns: u32) {
    if ns == 0 {
        return;
    }
    let t = Instant::now();
    let d = Duration::from_nanos(ns.into());
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// Elapsed nanoseconds of `t`, saturated.
fn ns_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs the benchmark on `target` for `o.seconds` (or `duration`, if given, for tests),
/// calling `progress` about once a second with the seconds elapsed and the iterations so far.
///
/// # Errors
///
/// The first map or unmap error of any thread.
pub fn run<T: Target>(
    o: &Options,
    target: &T,
    duration: Option<Duration>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Sums, String> {
    let duration = duration.unwrap_or(Duration::from_secs(o.seconds.into()));
    let stop = AtomicBool::new(false);
    let loops = AtomicU64::new(0);
    let threads = o.threads as usize;
    let start = Barrier::new(threads + 1);
    let (size, dir) = (o.size(), o.direction());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (stop, loops, start) = (&stop, &loops, &start);
                s.spawn(move || -> Result<Sums, String> {
                    let buf = target.buffer(t);
                    // SG_MODE's scatterlist, made once as the kernel's `prepare` does: the
                    // buffer's pages, one entry each.
                    let mut sg: Vec<SgEntry> = match o.mode {
                        Mode::Single => Vec::new(),
                        Mode::Sg => (0..o.granule)
                            .map(|i| {
                                let off = u64::from(i) * PAGE as u64;
                                SgEntry::new(PhysAddr::new(buf.as_u64() + off), PAGE)
                            })
                            .collect(),
                    };
                    let mut sums = Sums::default();
                    let fail = |e: String| {
                        stop.store(true, Ordering::Relaxed);
                        Err(e)
                    };
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        if dir != DmaDirection::FromDevice {
                            // SAFETY: the thread's own buffer, not mapped now.
                            unsafe { target.stain(buf, 0x66, size) };
                        }
                        let (map_ns, unmap_ns) = match o.mode {
                            Mode::Single => {
                                let t0 = Instant::now();
                                // SAFETY: as above; unused until the unmap below.
                                let h = unsafe { target.map(buf, size, dir) };
                                let map_ns = ns_since(t0);
                                let h = match h {
                                    Ok(h) => h,
                                    Err(e) => return fail(format!("dma_map_single failed: {e}")),
                                };
                                ndelay(o.xdelay_ns);
                                let t1 = Instant::now();
                                let r = target.unmap(h, size, dir);
                                let unmap_ns = ns_since(t1);
                                if let Err(e) = r {
                                    return fail(format!("dma_unmap_single failed: {e}"));
                                }
                                (map_ns, unmap_ns)
                            }
                            Mode::Sg => {
                                let t0 = Instant::now();
                                // SAFETY: every entry is a page of the thread's own buffer,
                                // unused until the unmap below.
                                let r = unsafe { target.map_sg(&mut sg, dir) };
                                let map_ns = ns_since(t0);
                                if let Err(e) = r {
                                    return fail(format!("dma_map_sg failed: {e}"));
                                }
                                ndelay(o.xdelay_ns);
                                let t1 = Instant::now();
                                let r = target.unmap_sg(&sg, dir);
                                let unmap_ns = ns_since(t1);
                                if let Err(e) = r {
                                    return fail(format!("dma_unmap_sg failed: {e}"));
                                }
                                (map_ns, unmap_ns)
                            }
                        };
                        sums.add(map_ns, unmap_ns);
                        loops.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(sums)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let mut next = Duration::from_secs(1);
        while t0.elapsed() < duration && !stop.load(Ordering::Relaxed) {
            let left = duration.saturating_sub(t0.elapsed());
            std::thread::sleep(left.min(Duration::from_millis(50)));
            if t0.elapsed() >= next {
                progress(next.as_secs(), loops.load(Ordering::Relaxed));
                next += Duration::from_secs(1);
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut total = Sums::default();
        let mut first_err = None;
        for w in workers {
            match w.join() {
                Ok(Ok(s)) => total.merge(&s),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        first_err.map_or(Ok(total), Err)
    })
}

/// The `pool` backend: a bare [`BouncePool`] of 64 MiB in 2 areas on host memory, the
/// threads' buffers after it.
pub struct PoolTarget {
    /// Declared before `mem`, so dropped first.
    pool: RealPool,
    mem: HostMemory,
    dev: Device,
    size: usize,
}

/// Bytes of the `pool` backend's pool.
const POOL_BYTES: usize = 64 << 20;

impl PoolTarget {
    /// The pool and one buffer per thread.
    ///
    /// # Errors
    ///
    /// If the memory cannot be allocated or the pool not built.
    pub fn new(o: &Options) -> Result<Self, String> {
        let bufs = o.threads as usize * o.size();
        let mem = HostMemory::new(PhysAddr::new(0x8000_0000), POOL_BYTES + bufs, PAGE)
            .map_err(|e| e.to_string())?;
        // SAFETY: the map does not outlive `mem`: both end up in this value, whose `pool`
        // field (the map's owner) is declared, hence dropped, before `mem`.
        let map = unsafe { crate::harness::linear_map(&mem) };
        // SAFETY: the first 64 MiB of `mem` are the pool's alone; buffers come after.
        let pool = unsafe {
            BouncePool::new_boxed(map, mem.base(), POOL_BYTES / crate::linux::IO_TLB_SIZE, 2)
        }
        .map_err(|e| e.to_string())?;
        Ok(Self {
            pool,
            mem,
            dev: o.device(),
            size: o.size(),
        })
    }
}

impl Target for PoolTarget {
    type Handle = PhysAddr;

    fn buffer(&self, t: usize) -> PhysAddr {
        // CAST: offsets inside the allocation fit u64.
        PhysAddr::new(self.mem.base().as_u64() + (POOL_BYTES + t * self.size) as u64)
    }

    unsafe fn stain(&self, buf: PhysAddr, byte: u8, len: usize) {
        // SAFETY: the caller's buffer, inside `mem`, used by this thread alone.
        unsafe { self.pool.memory().fill(buf, byte, len) };
    }

    unsafe fn map(&self, buf: PhysAddr, len: usize, dir: DmaDirection) -> Result<PhysAddr, String> {
        // SAFETY: as the caller promises; the buffer lies outside the pool.
        unsafe {
            self.pool.map(
                &self.dev,
                buf,
                len,
                0,
                dir,
                DmaAttrs::empty(),
                current_cpu(),
            )
        }
        .map_err(|e| e.to_string())
    }

    fn unmap(&self, h: PhysAddr, len: usize, dir: DmaDirection) -> Result<(), String> {
        self.pool
            .unmap(&self.dev, h, len, dir, DmaAttrs::empty())
            .map_err(|e| e.to_string())
    }

    fn summary(&self) -> String {
        let s = self.pool.stats();
        format!(
            "pool: {} maps, {} unmaps, {} bytes bounced, {} slots in use, high water {}",
            s.maps, s.unmaps, s.bytes_bounced, s.used, s.high_water
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults_are_the_kernel_tools() {
        let o = Options::parse(&[]).unwrap();
        assert_eq!(
            (
                o.threads,
                o.seconds,
                o.node,
                o.bits,
                o.dir,
                o.xdelay_ns,
                o.granule
            ),
            (1, 20, -1, 32, 0, 0, 1)
        );
        assert_eq!(o.direction(), DmaDirection::Bidirectional);
        assert_eq!(o.size(), 4096);
        assert_eq!(o.mode, Mode::Single);
    }

    #[test]
    fn parses_like_getopt() {
        let o =
            Options::parse(&args("-t 2 -s5 -b 28 -d 1 -x 1000 -g 16 --backend pool -q")).unwrap();
        assert_eq!((o.threads, o.seconds, o.bits, o.dir), (2, 5, 28, 1));
        assert_eq!((o.xdelay_ns, o.granule), (1000, 16));
        assert_eq!(o.backend, Backend::Pool);
        assert!(o.quiet);
        assert_eq!(o.direction(), DmaDirection::ToDevice);
        assert_eq!(o.device().dma_mask, DmaMask::from_bits(28).unwrap());
        let m = Options::parse(&args("-m 1 -g 8 -t 8 -s 30 -d 2")).unwrap();
        assert_eq!(
            (m.mode, m.granule, m.threads, m.seconds),
            (Mode::Sg, 8, 8, 30)
        );
        assert_eq!(m.mode.name(), "SG_MODE");
        assert_eq!(Options::parse(&args("-m0")).unwrap().mode, Mode::Single);
        // The last --backend counts: back on the facade, SG_MODE is fine.
        let f = Options::parse(&args("--backend pool --backend facade -m 1")).unwrap();
        assert_eq!((f.mode, f.backend), (Mode::Sg, Options::default().backend));
        let a = Options::parse(&args("--arch arm64 -d 2")).unwrap();
        assert_eq!(a.backend, Backend::Facade(Arch::Arm64));
        assert_eq!(a.direction(), DmaDirection::FromDevice);
        let x = Options::parse(&args("--backend pool --arch x86")).unwrap();
        assert_eq!(x.backend, Backend::Facade(Arch::X86));
        // The architecture names every tool of the project takes.
        for (name, arch) in [
            ("x86_64", Arch::X86),
            ("x86-pv", Arch::X86),
            ("aarch64", Arch::Arm64),
            ("arm64", Arch::Arm64),
        ] {
            let o = Options::parse(&args(&format!("--arch {name}"))).unwrap();
            assert_eq!(o.backend, Backend::Facade(arch), "{name}");
        }
    }

    #[test]
    fn refuses_what_the_kernel_tool_refuses() {
        let e = |s: &str| Options::parse(&args(s)).unwrap_err();
        assert_eq!(e("-t 0"), OptError::Threads);
        assert_eq!(e("-t 1025"), OptError::Threads);
        assert_eq!(e("-s 0"), OptError::Seconds);
        assert_eq!(e("-s 301"), OptError::Seconds);
        assert_eq!(e("-x -1"), OptError::Delay);
        assert_eq!(e("-x 10000001"), OptError::Delay);
        assert_eq!(e("-b 19"), OptError::Bits);
        assert_eq!(e("-b 65"), OptError::Bits);
        assert_eq!(e("-d 3"), OptError::Direction);
        assert_eq!(e("-g 0"), OptError::Granule);
        assert_eq!(e("-g 1025"), OptError::Granule);
        assert_eq!(e("-h"), OptError::Help);
        assert!(matches!(e("-z 1"), OptError::Bad(_)));
        assert!(matches!(e("-t"), OptError::Bad(_)));
        assert!(matches!(e("-t two"), OptError::NotANumber { .. }));
        assert!(matches!(e("--arch riscv"), OptError::Bad(_)));
        assert_eq!(e("-m 2"), OptError::Mode);
        assert_eq!(e("-m -1"), OptError::Mode);
        assert!(matches!(e("-m sg"), OptError::NotANumber { .. }));
        assert!(matches!(e("-m"), OptError::Bad(_)));
        // The kernel tool checks the mode before the rest.
        assert_eq!(e("-t 0 -m 7"), OptError::Mode);
        assert_eq!(e("-g 0 -t 0"), OptError::Threads);
        assert_eq!(
            OptError::Mode.to_string(),
            "invalid map mode, SINGLE_MODE:0, SG_MODE: 1"
        );
        // The bare pool has no scatter-gather call, whichever order the options come in.
        assert_eq!(e("-m 1 --backend pool"), OptError::SgNeedsFacade);
        assert_eq!(e("--backend pool -m1"), OptError::SgNeedsFacade);
        assert_eq!(
            OptError::Bits.to_string(),
            "invalid dma mask bit, must be in 20-64"
        );
    }

    #[test]
    fn statistics_are_the_kernels() {
        let mut s = Sums::default();
        for (m, u) in [(100, 10), (300, 30)] {
            s.add(m, u);
        }
        let ((m, ms), (u, us)) = s.stats();
        assert_eq!((m, ms, u, us), (200.0, 100.0, 20.0, 10.0));
        let mut t = Sums::default();
        t.merge(&s);
        t.merge(&s);
        assert_eq!(t.loops, 4);
        assert_eq!(t.stats(), s.stats());
        assert_eq!(Sums::default().stats(), ((0.0, 0.0), (0.0, 0.0)));
    }

    #[test]
    fn report_has_the_kernel_lines() {
        let o = Options {
            threads: 2,
            seconds: 3,
            dir: 1,
            granule: 4,
            ..Options::default()
        };
        let mut s = Sums::default();
        s.add(1500, 800);
        s.add(2500, 1200);
        let r = format_report(&o, &s);
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(
            lines[0],
            "dma mapping benchmark(SINGLE_MODE): threads:2 seconds:3 node:-1 dir:TO_DEVICE \
             granule:4"
        );
        assert_eq!(
            lines[1],
            "average map latency(us):2.0 standard deviation:0.5"
        );
        assert_eq!(
            lines[2],
            "average unmap latency(us):1.0 standard deviation:0.2"
        );
        assert_eq!(
            lines[3],
            "average map latency(ns):2000.0 standard deviation:500.0"
        );
        // The middles of the samples' buckets: 1500 in 1488..=1503, 2500 in 2496..=2527,
        // 800 in 800..=807, 1200 in 1200..=1215.
        assert_eq!(
            lines[5],
            "map latency percentiles(ns): p50:1495 p99:2511 p99.9:2511"
        );
        assert_eq!(
            lines[6],
            "unmap latency percentiles(ns): p50:803 p99:1207 p99.9:1207"
        );
        assert_eq!(lines[7], "iterations:2");
        let sg = Options {
            mode: Mode::Sg,
            ..o
        };
        assert!(format_report(&sg, &s).starts_with("dma mapping benchmark(SG_MODE): threads:2 "));
        // No iteration: the kernel's zeros, and zeros for the percentiles.
        let empty = format_report(&o, &Sums::default());
        assert!(
            empty.contains("map latency percentiles(ns): p50:0 p99:0 p99.9:0\n"),
            "{empty}"
        );
    }

    /// The nearest-rank percentile of `v` (sorted), computed directly.
    fn nearest_rank(v: &[u64], per_mille: u64) -> u64 {
        let n = v.len() as u64;
        let rank = (n * per_mille).div_ceil(1000).max(1);
        v[(rank - 1) as usize]
    }

    #[test]
    fn percentiles_are_exact_below_128_ns() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile(500), None);
        assert!(h.is_empty());
        // 1..=100 ns: p50 is the 50th sample, p99 the 99th, p99.9 the 100th.
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.len(), 100);
        assert_eq!(h.percentile(500), Some(50));
        assert_eq!(h.percentile(990), Some(99));
        assert_eq!(h.percentile(999), Some(100));
        assert_eq!(h.percentile(0), Some(1));
        assert_eq!(h.percentile(1000), Some(100));
        assert_eq!(h.percentile(5000), Some(100));
        // One slow outlier among 1000 fast ones: p99 does not see it, p99.9 does not either
        // (rank 1000 of 1001), the maximum does.
        let mut h = Histogram::default();
        for _ in 0..1000 {
            h.record(40);
        }
        h.record(100);
        assert_eq!(h.percentile(990), Some(40));
        assert_eq!(h.percentile(999), Some(40));
        assert_eq!(h.percentile(1000), Some(100));
        // Order of recording does not matter; a single sample is every percentile.
        let mut one = Histogram::default();
        one.record(0);
        assert_eq!(PERCENTILES.map(|(p, _)| one.percentile(p)), [Some(0); 3]);
    }

    #[test]
    fn percentiles_stay_within_a_128th_above_128_ns() {
        // A spread of latencies from 50 ns to 40 ms, in a scrambled order.
        let mut v: Vec<u64> = (0..20_000u64)
            .map(|i| 50 + (i * 7919 % 20_000).pow(2) / 10)
            .collect();
        let mut h = Histogram::default();
        for &x in &v {
            h.record(x);
        }
        v.sort_unstable();
        for pm in [1, 100, 500, 900, 990, 999, 1000] {
            let want = nearest_rank(&v, pm);
            let got = h.percentile(pm as u32).unwrap();
            let err = got.abs_diff(want) as f64;
            assert!(err <= want as f64 / 128.0, "p{pm}: {got} for {want}");
        }
        // Every bucket holds exactly the values that map to it, and they tile the range.
        let mut next = 0;
        for i in 0..3776 {
            let (lo, width) = Histogram::bounds(i);
            assert_eq!(lo, next, "bucket {i}");
            assert_eq!(Histogram::index(lo), i);
            assert_eq!(Histogram::index(lo + (width - 1)), i);
            assert!(width == 1 || width * 64 <= lo, "bucket {i}: {lo}+{width}");
            next = lo.wrapping_add(width);
        }
        assert_eq!(next, 0, "the last bucket ends at 2^64");
        assert_eq!(Histogram::index(u64::MAX), 3775);
    }

    #[test]
    fn merged_histograms_are_the_histogram_of_all_samples() {
        let (mut a, mut b, mut all) = (Sums::default(), Sums::default(), Sums::default());
        for i in 0..500u64 {
            let (m, u) = (i * 37 % 3000, 5000 - i);
            if i % 3 == 0 { &mut a } else { &mut b }.add(m, u);
            all.add(m, u);
        }
        let mut merged = Sums::default();
        merged.merge(&b);
        merged.merge(&a);
        assert_eq!(merged, all);
        assert_eq!(merged.percentiles(), all.percentiles());
        assert_eq!(Sums::default().percentiles(), ([0; 3], [0; 3]));
    }

    #[test]
    fn pool_backend_runs_and_bounces() {
        let o = Options::parse(&args("-t 2 -g 2 -d 0 --backend pool")).unwrap();
        let target = PoolTarget::new(&o).unwrap();
        let mut seen = Vec::new();
        let s = run(
            &o,
            &target,
            Some(Duration::from_millis(1500)),
            &mut |sec, n| {
                seen.push((sec, n));
            },
        )
        .unwrap();
        assert!(s.loops > 0, "{s:?}");
        // Progress reports, if any came, count up and never past the total.
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(seen.iter().all(|&(_, n)| n <= s.loops));
        let st = target.pool.stats();
        assert_eq!(st.maps, s.loops);
        assert_eq!(st.used, 0);
        // Bidirectional: copied in and back.
        assert_eq!(st.bytes_bounced, s.loops * 2 * 8192);
        assert!(target.summary().contains("maps"));
    }

    #[test]
    fn a_target_without_scatter_gather_refuses_sg_mode() {
        // Options that parsing refuses (SG_MODE on the pool), built by hand: the run stops
        // at the first map with the target's reason, as the kernel's thread does.
        let o = Options {
            mode: Mode::Sg,
            backend: Backend::Pool,
            ..Options::default()
        };
        let target = PoolTarget::new(&o).unwrap();
        let e = run(&o, &target, Some(Duration::from_secs(5)), &mut |_, _| {}).unwrap_err();
        assert!(e.starts_with("dma_map_sg failed: "), "{e}");
        assert_eq!(target.pool.stats().maps, 0);
    }

    #[test]
    fn a_failing_map_stops_the_run() {
        // 1024 pages = 4 MiB, more than one mapping can hold (256 KiB).
        let o = Options::parse(&args("-g 1024 --backend pool")).unwrap();
        let target = PoolTarget::new(&o).unwrap();
        let e = run(&o, &target, Some(Duration::from_secs(5)), &mut |_, _| {}).unwrap_err();
        assert!(e.contains("dma_map_single failed"), "{e}");
    }
}
