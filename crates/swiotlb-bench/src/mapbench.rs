//! `dma-map-bench`: Linux's `dma_map_benchmark` (the selftest
//! `tools/testing/selftests/dma/dma_map_benchmark.c` and its kernel side
//! `kernel/dma/map_benchmark.c`) for this project's mapping layer.
//!
//! Same options, same checks on them, same loop, same output:
//!
//! - each of `-t` threads owns a buffer of `-g` pages, and until `-s` seconds have passed it
//!   stains the buffer with `0x66` (unless the direction is `FROM_DEVICE`), times one map,
//!   waits `-x` nanoseconds (the "transfer", a busy wait like `ndelay`), and times one unmap;
//! - the result is the average and the standard deviation of the map and unmap latencies
//!   over every iteration of every thread, printed as the kernel tool prints them
//!   (`average map latency(us):%.1f standard deviation:%.1f`).
//!
//! Differences, deliberately: the kernel truncates each sample to 100 ns before summing
//! (`div64_ul(delta, 100)`), which reads 0.0 for the tens of nanoseconds a pool round trip
//! takes here; this tool sums nanoseconds and prints the kernel's lines from them, plus the
//! same two lines in nanoseconds. `-n` (NUMA node) is accepted and ignored. A progress line
//! goes to stderr once a second (`-q` turns it off).
//!
//! Backends (`--backend`): `facade` maps through `swiotlb_xen`'s engine on the simulated Xen
//! machine (`--arch x86` or `arm64`), the pool initialised by the facade; `pool` maps
//! through a bare `swiotlb_core::BouncePool` on host memory (no translation, no mask).

use std::fmt::Write as _;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// `-g`: granule in pages (1..=1024, default 1).
    pub granule: u32,
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
[-d dir] [-x delay_ns] [-g granule_pages] [--backend facade|pool] [--arch x86_64|aarch64] [-q]
  -d: 0 = BIDIRECTIONAL, 1 = TO_DEVICE, 2 = FROM_DEVICE
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
                    if !"tsnbdxg".contains(c) {
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
                _ => return Err(OptError::Bad(format!("-{c}"))),
            }
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

/// Sums over the iterations of every thread, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    }

    /// Adds another thread's sums.
    pub fn merge(&mut self, o: &Sums) {
        self.loops += o.loops;
        self.map += o.map;
        self.map_sq += o.map_sq;
        self.unmap += o.unmap;
        self.unmap_sq += o.unmap_sq;
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
}

/// The report, as the kernel tool prints it, then the same in nanoseconds.
#[must_use]
pub fn format_report(o: &Options, s: &Sums) -> String {
    let ((m, ms), (u, us)) = s.stats();
    let mut out = String::new();
    // CAST: `dir` is at most 2 after parsing.
    let dir = DIRECTIONS.get(o.dir as usize).copied().unwrap_or("?");
    let _ = writeln!(
        out,
        "dma mapping benchmark: threads:{} seconds:{} node:{} dir:{} granule: {}",
        o.threads, o.seconds, o.node, dir, o.granule
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
                    let mut sums = Sums::default();
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        if dir != DmaDirection::FromDevice {
                            // SAFETY: the thread's own buffer, not mapped now.
                            unsafe { target.stain(buf, 0x66, size) };
                        }
                        let t0 = Instant::now();
                        // SAFETY: as above; unused until the unmap below.
                        let h = unsafe { target.map(buf, size, dir) };
                        let map_ns = ns_since(t0);
                        let h = match h {
                            Ok(h) => h,
                            Err(e) => {
                                stop.store(true, Ordering::Relaxed);
                                return Err(format!("dma_map_single failed: {e}"));
                            }
                        };
                        ndelay(o.xdelay_ns);
                        let t1 = Instant::now();
                        let r = target.unmap(h, size, dir);
                        let unmap_ns = ns_since(t1);
                        if let Err(e) = r {
                            stop.store(true, Ordering::Relaxed);
                            return Err(format!("dma_unmap_single failed: {e}"));
                        }
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
            "dma mapping benchmark: threads:2 seconds:3 node:-1 dir:TO_DEVICE granule: 4"
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
        assert_eq!(lines[5], "iterations:2");
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
    fn a_failing_map_stops_the_run() {
        // 1024 pages = 4 MiB, more than one mapping can hold (256 KiB).
        let o = Options::parse(&args("-g 1024 --backend pool")).unwrap();
        let target = PoolTarget::new(&o).unwrap();
        let e = run(&o, &target, Some(Duration::from_secs(5)), &mut |_, _| {}).unwrap_err();
        assert!(e.contains("dma_map_single failed"), "{e}");
    }
}
