//! The comparative benchmark: every pool under test ([`Impl`]) on the same fragmented fill,
//! timed the same way, plus the check that each of them really bounces the data.
//!
//! - [`latency_all`]: the median time of one map+unmap round trip of a size at a fill level,
//!   for every pool and the memcpy floor, measured in turns ([`interleaved_medians`]);
//! - [`throughput`]: round trips per second with one or more threads mapping on the same
//!   pool, each thread with its own original (its own "CPU", see
//!   [`current_cpu`](crate::linux::current_cpu));
//! - [`check_copies`]: a random sequence of maps, device writes and unmaps with several
//!   mappings live at once, failing if any byte the CPU or the device should see is not
//!   there: a pool that loses data, or hands out overlapping slots, fails it.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use swiotlb_core::{DmaDirection, PhysAddr};

use crate::harness::{
    BenchPool, CpuStopwatch, ORIG_ROOM, SEED, bitmap_pool, buddy_pool, case_memory, fragment,
    linear_map, linux_pool, orig_base, real_pool, round_trip,
};
use crate::host::{HostMemory, HostMemoryError};
use crate::linux::LinuxError;
use crate::rng::SplitMix64;

/// A pool under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Impl {
    /// `swiotlb_core::BouncePool`.
    Ours,
    /// [`crate::linux::LinuxPool`], the port of Linux's slot search.
    Linux,
    /// [`crate::peers::BuddyPool`] (`buddy_system_allocator`).
    Buddy,
    /// [`crate::peers::BitmapPool`] (`bitmap-allocator`).
    Bitmap,
}

impl Impl {
    /// Every pool, in table order.
    pub const ALL: [Impl; 4] = [Impl::Ours, Impl::Linux, Impl::Buddy, Impl::Bitmap];

    /// The name used in tables, plots and JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Linux => "linux",
            Impl::Buddy => "buddy",
            Impl::Bitmap => "bitmap",
        }
    }

    /// The pool called `name` (as [`Impl::name`] spells it).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.name() == name)
    }
}

/// Why a pool could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The host memory.
    #[error("benchmark memory: {0}")]
    Memory(#[from] HostMemoryError),
    /// The real pool.
    #[error("swiotlb-core pool: {0}")]
    Pool(#[from] swiotlb_core::Error),
    /// The Linux baseline.
    #[error("Linux baseline pool: {0}")]
    Linux(#[from] LinuxError),
}

/// Something to do with a fresh pool of any kind (a generic closure).
pub trait PoolVisitor {
    /// What the visit returns.
    type Out;

    /// Runs on `pool`, a fresh pool of [`crate::harness::POOL_SLOTS`] slots at the start of
    /// `mem`, a [`case_memory`] whose originals room ([`orig_base`], [`ORIG_ROOM`]) nothing
    /// else uses.
    fn visit<P: BenchPool>(self, pool: &P, mem: &HostMemory) -> Self::Out;
}

/// Builds a fresh `imp` pool over a fresh [`case_memory`] and runs `v` on it.
///
/// # Errors
///
/// If the memory or the pool cannot be set up.
pub fn with_pool<V: PoolVisitor>(imp: Impl, v: V) -> Result<V::Out, SetupError> {
    let mem = case_memory()?;
    // SAFETY (every arm): the pool alone uses its part of the fresh `mem` and is dropped
    // before it; the visitor is told to use only the originals room besides.
    Ok(match imp {
        Impl::Ours => {
            // SAFETY: see above.
            let pool = unsafe { real_pool(&mem) }?;
            v.visit(&pool, &mem)
        }
        Impl::Linux => {
            // SAFETY: the map does not outlive `mem`.
            let map = unsafe { linear_map(&mem) };
            // SAFETY: see above.
            let pool = unsafe { linux_pool(&map, mem.base()) }?;
            v.visit(&pool, &mem)
        }
        Impl::Buddy => {
            // SAFETY: see above.
            let pool = unsafe { buddy_pool(&mem) };
            v.visit(&pool, &mem)
        }
        Impl::Bitmap => {
            // SAFETY: see above.
            let pool = unsafe { bitmap_pool(&mem) };
            v.visit(&pool, &mem)
        }
    })
}

/// How long and how often a latency is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Batches; the median is reported.
    pub batches: usize,
    /// The least duration of one batch.
    pub batch_time: Duration,
}

impl Timing {
    /// One run of `--quick`: 5 batches of 4 ms (three runs by default).
    pub const QUICK: Timing = Timing {
        batches: 5,
        batch_time: Duration::from_millis(4),
    };
    /// One run of the full tables: 15 batches of 5 ms (five runs by default).
    pub const FULL: Timing = Timing {
        batches: 15,
        batch_time: Duration::from_millis(5),
    };
}

/// One latency measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// Median nanoseconds per map+unmap round trip.
    pub ns: f64,
    /// The fill level the pool was at, in percent of its slots.
    pub reached_fill: f64,
}

/// The fill level of `pool`, in percent of its slots.
fn fill_of<P: BenchPool>(pool: &P) -> f64 {
    // CAST: slot counts are far below 2^52, exact in f64.
    100.0 * pool.used_slots() as f64 / pool.total_slots() as f64
}

/// The medians of several timed operations measured in turns: each is calibrated to
/// `t.batch_time`, then the batches go round-robin (one batch of each, `t.batches` times),
/// so that whatever else the machine does at a given moment weighs on all of them alike.
/// Times are the thread's CPU time per call ([`CpuStopwatch`]).
pub fn interleaved_medians(fs: &mut [&mut dyn FnMut()], t: Timing) -> Vec<f64> {
    // CAST: a batch time in ns fits f64.
    let batch_ns = t.batch_time.as_nanos() as f64;
    let iters: Vec<u32> = fs
        .iter_mut()
        .map(|f| {
            let mut n: u32 = 1;
            loop {
                let w = CpuStopwatch::start();
                for _ in 0..n {
                    f();
                }
                if w.elapsed_ns() >= batch_ns || n >= 1 << 24 {
                    return n;
                }
                n *= 2;
            }
        })
        .collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(t.batches); fs.len()];
    for _ in 0..t.batches.max(1) {
        for (i, f) in fs.iter_mut().enumerate() {
            let w = CpuStopwatch::start();
            for _ in 0..iters[i] {
                f();
            }
            samples[i].push(w.elapsed_ns() / f64::from(iters[i]));
        }
    }
    samples.iter_mut().map(|v| median(v)).collect()
}

/// One cell of the grid for every pool at once: the four pools ([`Impl::ALL`], in that
/// order) each over its own fresh [`case_memory`], fragmented alike to `fill`, and the
/// memcpy floor (`copies` copies of `size` bytes: 1 for `ToDevice`, 2 for a direction that
/// also copies back), timed in turns by [`interleaved_medians`].
///
/// # Errors
///
/// If the memories or a pool cannot be set up.
pub fn latency_all(
    size: usize,
    fill: u32,
    dir: DmaDirection,
    copies: u32,
    t: Timing,
) -> Result<([Latency; 4], f64), SetupError> {
    let mems = [
        case_memory()?,
        case_memory()?,
        case_memory()?,
        case_memory()?,
    ];
    // SAFETY: each pool alone uses the pool part of its own memory, and is dropped (end of
    // this function) before it; the originals rooms are used by the fill and the measured
    // round trips only, on this thread.
    let ours = unsafe { real_pool(&mems[0]) }?;
    // SAFETY: the map does not outlive `mems[1]`.
    let map = unsafe { linear_map(&mems[1]) };
    // SAFETY: as above.
    let linux = unsafe { linux_pool(&map, mems[1].base()) }?;
    // SAFETY: as above.
    let buddy = unsafe { buddy_pool(&mems[2]) };
    // SAFETY: as above.
    let bitmap = unsafe { bitmap_pool(&mems[3]) };
    // SAFETY: as above.
    let _live = unsafe {
        (
            fragment(&ours, SEED, fill, size, orig_base()),
            fragment(&linux, SEED, fill, size, orig_base()),
            fragment(&buddy, SEED, fill, size, orig_base()),
            fragment(&bitmap, SEED, fill, size, orig_base()),
        )
    };
    let reached = [
        fill_of(&ours),
        fill_of(&linux),
        fill_of(&buddy),
        fill_of(&bitmap),
    ];
    let mut floor = crate::harness::MemcpyFloor::new()?;
    let o = orig_base();
    // SAFETY: as above (for each of the four closures).
    let mut f0 = || unsafe { round_trip(&ours, o, size, dir) };
    // SAFETY: as above.
    let mut f1 = || unsafe { round_trip(&linux, o, size, dir) };
    // SAFETY: as above.
    let mut f2 = || unsafe { round_trip(&buddy, o, size, dir) };
    // SAFETY: as above.
    let mut f3 = || unsafe { round_trip(&bitmap, o, size, dir) };
    let mut f4 = || {
        for _ in 0..copies {
            floor.copy(black_box(size));
        }
    };
    let m = interleaved_medians(&mut [&mut f0, &mut f1, &mut f2, &mut f3, &mut f4], t);
    let lat = |i: usize| Latency {
        ns: m[i],
        reached_fill: reached[i],
    };
    Ok(([lat(0), lat(1), lat(2), lat(3)], m[4]))
}

/// Round trips per second, summed over threads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    /// Per wall-clock second: what the machine delivered, other work on it included.
    pub wall: f64,
    /// Per second of each thread's own CPU time: what the threads would deliver with a CPU
    /// each (time spent descheduled is not counted; time spinning on a lock is, time asleep
    /// in a mutex is not).
    pub cpu: f64,
}

/// Round trips per second of `threads` threads mapping `size` bytes in `dir` on `pool` for
/// `duration`, each thread with its own original.
///
/// # Safety
///
/// The first `threads * (ORIG_ROOM / threads)` bytes of the originals room are used by
/// nothing else, and `size <= ORIG_ROOM / threads`.
pub unsafe fn throughput<P: BenchPool>(
    pool: &P,
    threads: usize,
    size: usize,
    dir: DmaDirection,
    duration: Duration,
) -> Rate {
    let threads = threads.max(1);
    let stride = ORIG_ROOM / threads;
    let start = Barrier::new(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                s.spawn(move || {
                    // CAST: offsets inside the 2 MiB room fit u64.
                    let orig = PhysAddr::new(orig_base().as_u64() + (t * stride) as u64);
                    start.wait();
                    let t0 = Instant::now();
                    let cpu = CpuStopwatch::start();
                    let mut n = 0u64;
                    while t0.elapsed() < duration {
                        for _ in 0..64 {
                            // SAFETY: each thread has its own `stride` bytes of the room.
                            unsafe { round_trip(pool, orig, size, dir) };
                        }
                        n += 64;
                    }
                    (n, t0.elapsed(), cpu.elapsed_ns())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| match w.join() {
                // CAST: counts are far below 2^53.
                Ok((n, wall, cpu)) => Rate {
                    wall: n as f64 / wall.as_secs_f64(),
                    cpu: n as f64 * 1e9 / cpu.max(1.0),
                },
                Err(e) => std::panic::resume_unwind(e),
            })
            .fold(Rate::default(), |a, b| Rate {
                wall: a.wall + b.wall,
                cpu: a.cpu + b.cpu,
            })
    })
}

/// The scaling of one pool: round trips per second with 1 and 2 threads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scaling {
    /// Median round trips per wall-clock second, one thread.
    pub one: f64,
    /// Median round trips per wall-clock second, two threads together.
    pub two: f64,
    /// As `one`, per second of the thread's CPU time ([`Rate::cpu`]).
    pub one_cpu: f64,
    /// As `two`, per second of each thread's CPU time, summed.
    pub two_cpu: f64,
    /// The median over rounds of each round's `two / one` (wall clock): 2.0 is perfect
    /// scaling, 1.0 none, below 1.0 contention. Taken per round, the 1-thread and 2-thread
    /// runs it compares are back to back, so load that comes and goes cancels out better
    /// than in the ratio of the medians.
    pub ratio: f64,
    /// As `ratio`, per CPU second: the scaling with a CPU per thread, whatever else runs.
    pub cpu_ratio: f64,
}

/// A [`PoolVisitor`] measuring [`Scaling`]: fragments to `fill`, then alternates 1-thread and
/// 2-thread runs of `run` each, `rounds` times, and keeps the medians of the rates and of
/// each round's ratios.
#[derive(Clone, Copy, Debug)]
pub struct ScalingCase {
    /// Fill level, percent.
    pub fill: u32,
    /// Mapping size, bytes.
    pub size: usize,
    /// Duration of one run.
    pub run: Duration,
    /// Rounds.
    pub rounds: usize,
}

impl PoolVisitor for ScalingCase {
    type Out = Scaling;

    fn visit<P: BenchPool>(self, pool: &P, _mem: &HostMemory) -> Scaling {
        // SAFETY: fresh pool over a case memory; the fill uses the originals room before
        // the measured threads do, and keeps only `ToDevice` mappings, which never write it.
        let _live = unsafe { fragment(pool, SEED, self.fill, self.size, orig_base()) };
        let (mut one, mut two, mut one_cpu, mut two_cpu) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut ratio, mut cpu_ratio) = (Vec::new(), Vec::new());
        for _ in 0..self.rounds.max(1) {
            let dir = DmaDirection::ToDevice;
            // SAFETY: the room is the threads' alone now; sizes are at most 256 KiB.
            let a = unsafe { throughput(pool, 1, self.size, dir, self.run) };
            // SAFETY: as above.
            let b = unsafe { throughput(pool, 2, self.size, dir, self.run) };
            one.push(a.wall);
            one_cpu.push(a.cpu);
            two.push(b.wall);
            two_cpu.push(b.cpu);
            ratio.push(b.wall / a.wall);
            cpu_ratio.push(b.cpu / a.cpu);
        }
        Scaling {
            one: median(&mut one),
            two: median(&mut two),
            one_cpu: median(&mut one_cpu),
            two_cpu: median(&mut two_cpu),
            ratio: median(&mut ratio),
            cpu_ratio: median(&mut cpu_ratio),
        }
    }
}

/// The median of `v` (0 for an empty slice).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One mapping live in [`check_copies`].
struct Live<H> {
    handle: H,
    orig: PhysAddr,
    len: usize,
    dir: DmaDirection,
    /// What the bounce buffer must hold at unmap time.
    bounce: Vec<u8>,
    /// What the original must hold after the unmap.
    after: Vec<u8>,
}

fn random_bytes(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    // CAST: keeping the low byte is the point.
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Runs `steps` random maps, device writes and unmaps on `pool` (fresh, over `mem`, a
/// [`case_memory`]) with up to 8 mappings live, sizes from 1 B to 256 KiB in every
/// direction, and checks every byte: after a map the bounce buffer holds the original;
/// at unmap it still holds what was put there (no other mapping overlapped it); after an
/// unmap the original holds the device's data for `FromDevice` and `Bidirectional`, and is
/// untouched for `ToDevice`. Returns the first difference found.
///
/// # Errors
///
/// A description of the first step whose data was wrong.
///
/// # Safety
///
/// `pool` is fresh over `mem`, and nothing else uses `mem`'s originals room.
pub unsafe fn check_copies<P: BenchPool>(
    pool: &P,
    mem: &HostMemory,
    seed: u64,
    steps: usize,
) -> Result<(), String> {
    const DIRS: [DmaDirection; 3] = [
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::Bidirectional,
    ];
    const MAX_LIVE: usize = 8;
    let slice = ORIG_ROOM / MAX_LIVE;
    let mut rng = SplitMix64::new(seed);
    let mut live: Vec<Option<Live<P::Handle>>> = (0..MAX_LIVE).map(|_| None).collect();
    let read = |addr: PhysAddr, len: usize| -> Result<Vec<u8>, String> {
        let mut out = vec![0; len];
        // SAFETY: single-threaded; no copy is in flight.
        unsafe { mem.read(addr, &mut out) }.map_err(|e| e.to_string())?;
        Ok(out)
    };
    let write = |addr: PhysAddr, data: &[u8]| -> Result<(), String> {
        // SAFETY: single-threaded; no copy is in flight.
        unsafe { mem.write(addr, data) }.map_err(|e| e.to_string())
    };
    for step in 0..steps {
        // CAST: indices are small.
        let k = rng.range(0, MAX_LIVE as u64 - 1) as usize;
        match live[k].take() {
            None => {
                // CAST: sizes and offsets fit usize/u64.
                let len = match rng.range(0, 2) {
                    0 => rng.range(1, 256),
                    1 => rng.range(1, 8192),
                    _ => rng.range(1, 256 << 10),
                } as usize;
                let off = rng.range(0, (slice - len) as u64);
                let orig = PhysAddr::new(orig_base().as_u64() + (k * slice) as u64 + off);
                // CAST: below 3.
                let dir = DIRS[rng.range(0, 2) as usize];
                let data = random_bytes(&mut rng, len);
                write(orig, &data)?;
                // SAFETY: the original lies in this mapping's own slice of the room.
                let Some(handle) = (unsafe { pool.map(orig, len, dir) }) else {
                    return Err(format!(
                        "step {step}: map of {len} bytes failed on a pool \
                                        with at most {MAX_LIVE} live mappings"
                    ));
                };
                let tlb = pool.bounce_addr(&handle);
                if read(tlb, len)? != data {
                    return Err(format!(
                        "step {step}: after the map of {len} bytes ({dir:?}) the bounce \
                         buffer at {tlb} does not hold the original"
                    ));
                }
                let (bounce, after) = if dir == DmaDirection::ToDevice {
                    (data.clone(), data)
                } else {
                    let dev = random_bytes(&mut rng, len);
                    write(tlb, &dev)?;
                    (dev.clone(), dev)
                };
                live[k] = Some(Live {
                    handle,
                    orig,
                    len,
                    dir,
                    bounce,
                    after,
                });
            }
            Some(m) => {
                let tlb = pool.bounce_addr(&m.handle);
                if read(tlb, m.len)? != m.bounce {
                    return Err(format!(
                        "step {step}: the bounce buffer of a live mapping at {tlb} \
                         ({} bytes) was overwritten",
                        m.len
                    ));
                }
                // SAFETY: `m.handle` is live with this length and direction.
                unsafe { pool.unmap(m.handle, m.len, m.dir) };
                if read(m.orig, m.len)? != m.after {
                    return Err(format!(
                        "step {step}: after the unmap of {} bytes ({:?}) the original at \
                         {} does not hold {}",
                        m.len,
                        m.dir,
                        m.orig,
                        if m.dir == DmaDirection::ToDevice {
                            "its own data"
                        } else {
                            "the device's data"
                        }
                    ));
                }
            }
        }
    }
    for m in live.into_iter().flatten() {
        // SAFETY: live with this length and direction.
        unsafe { pool.unmap(m.handle, m.len, m.dir) };
    }
    if pool.used_slots() != 0 {
        return Err(format!(
            "{} slots still in use after every mapping was unmapped",
            pool.used_slots()
        ));
    }
    Ok(())
}

/// A [`PoolVisitor`] running [`check_copies`].
#[derive(Clone, Copy, Debug)]
pub struct CheckCopies {
    /// Seed of the sequence.
    pub seed: u64,
    /// Steps.
    pub steps: usize,
}

impl PoolVisitor for CheckCopies {
    type Out = Result<(), String>;

    fn visit<P: BenchPool>(self, pool: &P, mem: &HostMemory) -> Result<(), String> {
        // SAFETY: `with_pool` hands a fresh pool over `mem`.
        unsafe { check_copies(pool, mem, self.seed, self.steps) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::POOL_SLOTS;

    #[test]
    fn names_round_trip() {
        for i in Impl::ALL {
            assert_eq!(Impl::from_name(i.name()), Some(i));
        }
        assert_eq!(Impl::from_name("slab"), None);
    }

    #[test]
    fn every_pool_bounces_the_data() {
        for imp in Impl::ALL {
            let r = with_pool(
                imp,
                CheckCopies {
                    seed: 0xc0_9135,
                    steps: 400,
                },
            )
            .unwrap();
            assert_eq!(r, Ok(()), "{}", imp.name());
        }
    }

    /// A pool that forgets the copy back: the check must catch it.
    struct Lossy<'a, P>(&'a P);

    impl<P: BenchPool> BenchPool for Lossy<'_, P> {
        type Handle = P::Handle;
        fn total_slots(&self) -> usize {
            self.0.total_slots()
        }
        fn used_slots(&self) -> usize {
            self.0.used_slots()
        }
        fn bounce_addr(&self, h: &P::Handle) -> PhysAddr {
            self.0.bounce_addr(h)
        }
        unsafe fn map(&self, orig: PhysAddr, len: usize, dir: DmaDirection) -> Option<P::Handle> {
            // SAFETY: forwarded.
            unsafe { self.0.map(orig, len, dir) }
        }
        unsafe fn unmap(&self, h: P::Handle, len: usize, _dir: DmaDirection) {
            // SAFETY: forwarded, with the direction that copies nothing back.
            unsafe { self.0.unmap(h, len, DmaDirection::ToDevice) }
        }
    }

    /// A pool that hands every mapping the same bounce buffer: the check must catch it.
    struct Overlapping<'a>(&'a HostMemory, std::sync::Mutex<usize>);

    impl BenchPool for Overlapping<'_> {
        type Handle = (PhysAddr, PhysAddr);
        fn total_slots(&self) -> usize {
            POOL_SLOTS
        }
        fn used_slots(&self) -> usize {
            *self.1.lock().unwrap()
        }
        fn bounce_addr(&self, h: &(PhysAddr, PhysAddr)) -> PhysAddr {
            h.0
        }
        unsafe fn map(&self, orig: PhysAddr, len: usize, _: DmaDirection) -> Option<Self::Handle> {
            let mut buf = vec![0; len];
            // SAFETY: single-threaded test.
            unsafe {
                self.0.read(orig, &mut buf).ok()?;
                self.0.write(self.0.base(), &buf).ok()?;
            }
            *self.1.lock().unwrap() += 1;
            Some((self.0.base(), orig))
        }
        unsafe fn unmap(&self, h: Self::Handle, len: usize, dir: DmaDirection) {
            if dir != DmaDirection::ToDevice {
                let mut buf = vec![0; len];
                // SAFETY: single-threaded test.
                unsafe {
                    self.0.read(h.0, &mut buf).unwrap();
                    self.0.write(h.1, &buf).unwrap();
                }
            }
            *self.1.lock().unwrap() -= 1;
        }
    }

    struct CheckLossy;
    impl PoolVisitor for CheckLossy {
        type Out = Result<(), String>;
        fn visit<P: BenchPool>(self, pool: &P, mem: &HostMemory) -> Self::Out {
            // SAFETY: fresh pool over `mem`.
            unsafe { check_copies(&Lossy(pool), mem, 1, 200) }
        }
    }

    #[test]
    fn a_pool_that_loses_data_fails() {
        for imp in Impl::ALL {
            let r = with_pool(imp, CheckLossy).unwrap();
            let e = r.expect_err(imp.name());
            assert!(e.contains("device's data"), "{e}");
        }
        let mem = case_memory().unwrap();
        let bad = Overlapping(&mem, std::sync::Mutex::new(0));
        // SAFETY: the fake pool uses `mem` alone.
        let e = unsafe { check_copies(&bad, &mem, 2, 200) }.unwrap_err();
        assert!(
            e.contains("overwritten") || e.contains("does not hold"),
            "{e}"
        );
    }

    #[test]
    fn every_pool_and_the_floor_in_one_cell() {
        let t = Timing {
            batches: 3,
            batch_time: Duration::from_micros(300),
        };
        let (lat, floor) = latency_all(4096, 50, DmaDirection::Bidirectional, 2, t).unwrap();
        for (i, l) in lat.iter().enumerate() {
            assert!(l.ns > 0.0 && l.ns < 1e6, "{}: {l:?}", Impl::ALL[i].name());
            assert!((45.0..=50.0).contains(&l.reached_fill), "{l:?}");
        }
        assert!(floor > 0.0 && floor.is_finite(), "{floor}");
    }

    #[test]
    fn interleaving_runs_every_operation_every_round() {
        let (mut a, mut b) = (0u64, 0u64);
        let t = Timing {
            batches: 5,
            batch_time: Duration::from_micros(200),
        };
        let mut fa = || a += 1;
        let mut fb = || b += 1;
        let m = interleaved_medians(&mut [&mut fa, &mut fb], t);
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|x| x.is_finite() && *x >= 0.0), "{m:?}");
        // Calibration doubles from 1, then 5 batches of the calibrated count: each ran at
        // least 1 + 5 times.
        assert!(a >= 6 && b >= 6, "{a} {b}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut []), 0.0);
    }

    #[test]
    fn two_threads_map_on_one_pool() {
        struct Run;
        impl PoolVisitor for Run {
            type Out = (Rate, Rate, usize);
            fn visit<P: BenchPool>(self, pool: &P, _: &HostMemory) -> Self::Out {
                let d = Duration::from_millis(20);
                // SAFETY: fresh pool, nothing else uses the room.
                let (a, b) = unsafe {
                    (
                        throughput(pool, 1, 1500, DmaDirection::Bidirectional, d),
                        throughput(pool, 2, 1500, DmaDirection::Bidirectional, d),
                    )
                };
                (a, b, pool.used_slots())
            }
        }
        for imp in Impl::ALL {
            let (one, two, used) = with_pool(imp, Run).unwrap();
            assert!(one.wall > 0.0 && two.wall > 0.0, "{}", imp.name());
            assert!(one.cpu > 0.0 && two.cpu > 0.0, "{}", imp.name());
            assert_eq!(used, 0, "{}", imp.name());
        }
    }
}
