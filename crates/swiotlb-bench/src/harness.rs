//! What the benchmark and the table share: the case grid, the fragmented fill, the pools
//! under test behind one trait, and a simple timing loop.
//!
//! A case is a mapping size and a fill level. The pool (Linux's default geometry: 64 MiB,
//! two areas as on a two-CPU machine) is filled with mappings of random sizes until it is
//! full, then a random subset is unmapped until the fill level is reached, so the free space
//! is scattered. The same seed drives both implementations, so they see the same sequence
//! of sizes, originals and unmaps; only their slot choices differ. The measured operation
//! is one `ToDevice` map plus unmap of `size` bytes, which leaves the pool at its fill level.

use std::hint::black_box;
use std::time::{Duration, Instant};

use swiotlb_core::{
    BouncePool, Device, DmaAttrs, DmaDirection, DmaMask, LinearMap, PhysAddr, PhysMemory, Slot,
};

use crate::host::HostMemory;
use crate::linux::{IO_TLB_SIZE, LinuxError, LinuxPool, current_cpu};
use crate::peers::{Bitmap, BitmapPool, Buddy, BuddyPool, PeerPool};
use crate::rng::SplitMix64;

/// Slots in the benchmark pool: Linux's default 64 MiB.
pub const POOL_SLOTS: usize = 32768;
/// Areas in the benchmark pool: `roundup_pow_of_two(num_possible_cpus())` on two CPUs.
pub const POOL_AREAS: usize = 2;
/// Mapping sizes measured, in bytes.
pub const SIZES: [usize; 5] = [64, 1500, 4096, 65536, 262_144];
/// Fill levels measured, in percent of the pool's slots.
pub const FILLS: [u32; 6] = [0, 25, 50, 75, 90, 95];
/// The seed of the fragmented fill.
pub const SEED: u64 = 0x5_3710_7100;
/// The physical base of the benchmark memory (below 4 GiB, 1 MiB-aligned).
pub const MEMORY_BASE: u64 = 0x8000_0000;
/// Room for originals after the pool. Fill originals start at random offsets in it.
pub const ORIG_ROOM: usize = 2 << 20;
/// Largest fill mapping, in bytes (log-uniform sizes from 64 B up to this).
pub const FILL_MAX: usize = 128 << 10;

/// The device every benchmark mapping is for: no alignment constraints, no boundary.
#[must_use]
pub fn bench_device() -> Device {
    Device::new(DmaMask::BITS_32)
}

/// A pool under test, seen as the benchmark sees it: streaming maps and unmaps for
/// [`bench_device`] in a given direction. A map copies the original into the pool (for
/// every direction, as Linux does); an unmap copies the pool back to the original for
/// [`DmaDirection::FromDevice`] and [`DmaDirection::Bidirectional`].
pub trait BenchPool: Sync {
    /// What an unmap needs back from a map.
    type Handle: Send;

    /// Slots (2 KiB units) in the pool.
    fn total_slots(&self) -> usize;

    /// Slots in use, including any a pool takes beyond the request (rounding, padding).
    fn used_slots(&self) -> usize;

    /// The bounce address of a live mapping: where the device reads and writes.
    fn bounce_addr(&self, handle: &Self::Handle) -> PhysAddr;

    /// Maps `len` bytes at `orig` for [`bench_device`], `None` if the pool has no room.
    ///
    /// # Safety
    ///
    /// `orig..orig + len` is memory the pool's `PhysMemory` reaches, outside the pool, and no
    /// reference covers it until the unmap.
    unsafe fn map(&self, orig: PhysAddr, len: usize, dir: DmaDirection) -> Option<Self::Handle>;

    /// Unmaps a mapping of `len` bytes, copying back if `dir` says so.
    ///
    /// # Safety
    ///
    /// `handle` comes from [`map`](Self::map) on this pool with the same `len` and `dir` and
    /// is not unmapped yet.
    unsafe fn unmap(&self, handle: Self::Handle, len: usize, dir: DmaDirection);
}

impl<M: PhysMemory + ?Sized> BenchPool for LinuxPool<'_, M> {
    type Handle = PhysAddr;

    fn total_slots(&self) -> usize {
        self.nslabs()
    }

    fn used_slots(&self) -> usize {
        self.used()
    }

    fn bounce_addr(&self, handle: &PhysAddr) -> PhysAddr {
        *handle
    }

    unsafe fn map(&self, orig: PhysAddr, len: usize, dir: DmaDirection) -> Option<PhysAddr> {
        let dev = bench_device();
        // SAFETY: as the caller promises.
        let m = unsafe { self.map_single(&dev, orig, len, 0, dir, DmaAttrs::NO_WARN) };
        m.ok().map(|m| m.tlb_addr)
    }

    unsafe fn unmap(&self, handle: PhysAddr, len: usize, dir: DmaDirection) {
        let dev = bench_device();
        // SAFETY: as the caller promises.
        let r = unsafe { self.unmap_single(&dev, handle, len, dir, DmaAttrs::empty()) };
        debug_assert!(r.is_ok(), "unmap of a live mapping failed: {r:?}");
    }
}

/// The real pool as the benchmark builds it: metadata on the heap, copies through a
/// [`LinearMap`].
pub type RealPool = BouncePool<LinearMap, Box<[Slot]>>;

impl<M: PhysMemory, S: AsRef<[Slot]> + Sync> BenchPool for BouncePool<M, S> {
    type Handle = PhysAddr;

    fn total_slots(&self) -> usize {
        self.nslabs()
    }

    fn used_slots(&self) -> usize {
        self.stats().used
    }

    fn bounce_addr(&self, handle: &PhysAddr) -> PhysAddr {
        *handle
    }

    unsafe fn map(&self, orig: PhysAddr, len: usize, dir: DmaDirection) -> Option<PhysAddr> {
        let dev = bench_device();
        // SAFETY: as the caller promises.
        let m = unsafe {
            BouncePool::map(
                self,
                &dev,
                orig,
                len,
                0,
                dir,
                DmaAttrs::NO_WARN,
                current_cpu(),
            )
        };
        m.ok()
    }

    unsafe fn unmap(&self, handle: PhysAddr, len: usize, dir: DmaDirection) {
        let dev = bench_device();
        let r = BouncePool::unmap(self, &dev, handle, len, dir, DmaAttrs::empty());
        debug_assert!(r.is_ok(), "unmap of a live mapping failed: {r:?}");
    }
}

/// The memory of one case: the pool's slots followed by [`ORIG_ROOM`] bytes of originals.
///
/// # Errors
///
/// As [`HostMemory::new`].
pub fn case_memory() -> Result<HostMemory, crate::host::HostMemoryError> {
    HostMemory::new(
        PhysAddr::new(MEMORY_BASE),
        POOL_SLOTS * IO_TLB_SIZE + ORIG_ROOM,
        4096,
    )
}

/// The start of the originals area of a [`case_memory`].
#[must_use]
pub fn orig_base() -> PhysAddr {
    // CAST: the pool length fits u64.
    PhysAddr::new(MEMORY_BASE + (POOL_SLOTS * IO_TLB_SIZE) as u64)
}

/// A [`LinearMap`] over the whole of `mem`: the copy path both pools use, so that they
/// are compared on equal terms.
///
/// # Safety
///
/// The map must not outlive `mem`, and accesses through it follow [`HostMemory`]'s rules.
#[must_use]
pub unsafe fn linear_map(mem: &HostMemory) -> LinearMap {
    // SAFETY: `mem` is one live allocation of `mem.len()` bytes at `mem.base()`, which does
    // not overflow (checked by `HostMemory::new`); the caller keeps it alive and follows its
    // access rules.
    unsafe { LinearMap::new(mem.as_mut_ptr(), mem.base(), mem.len()) }
}

/// A Linux baseline pool over the first [`POOL_SLOTS`] slots of `map`, which covers a
/// [`case_memory`].
///
/// # Errors
///
/// As [`LinuxPool::new`] (only a `start` whose pool would wrap can fail).
///
/// # Safety
///
/// Nothing else uses the pool's part of the memory while the pool lives.
pub unsafe fn linux_pool<M: PhysMemory + ?Sized>(
    mem: &M,
    start: PhysAddr,
) -> Result<LinuxPool<'_, M>, LinuxError> {
    // SAFETY: as the caller promises.
    unsafe { LinuxPool::new(mem, start, POOL_SLOTS, POOL_AREAS) }
}

/// The real pool over the first [`POOL_SLOTS`] slots of `mem`, a [`case_memory`].
///
/// # Errors
///
/// As [`BouncePool::new`] (only a `mem` too short or badly aligned for the pool can fail).
///
/// # Safety
///
/// The pool must not outlive `mem`, and nothing else may use the pool's part of it.
pub unsafe fn real_pool(mem: &HostMemory) -> Result<RealPool, swiotlb_core::Error> {
    if mem.len() < POOL_SLOTS * IO_TLB_SIZE {
        return Err(swiotlb_core::Error::StorageTooSmall {
            have: mem.len() / IO_TLB_SIZE,
            need: POOL_SLOTS,
        });
    }
    // SAFETY: the map does not outlive `mem` (the caller keeps the pool, its owner, within
    // `mem`'s life), and the pool's range is the start of the map's region, which is long
    // enough (checked above).
    unsafe { BouncePool::new_boxed(linear_map(mem), mem.base(), POOL_SLOTS, POOL_AREAS) }
}

/// The `buddy_system_allocator` peer over the first [`POOL_SLOTS`] slots of `mem`, a
/// [`case_memory`].
///
/// # Safety
///
/// As [`real_pool`].
#[must_use]
pub unsafe fn buddy_pool(mem: &HostMemory) -> BuddyPool {
    // SAFETY: as the caller promises; the map does not outlive `mem`.
    unsafe {
        PeerPool::new(
            Buddy::new(POOL_SLOTS),
            linear_map(mem),
            mem.base(),
            POOL_SLOTS,
        )
    }
}

/// The `bitmap-allocator` peer over the first [`POOL_SLOTS`] slots of `mem`, a
/// [`case_memory`].
///
/// # Safety
///
/// As [`real_pool`].
#[must_use]
pub unsafe fn bitmap_pool(mem: &HostMemory) -> BitmapPool {
    // POOL_SLOTS is far below the bitmap's capacity.
    let bitmap = Bitmap::new(POOL_SLOTS).unwrap_or_else(|| unreachable!());
    // SAFETY: as the caller promises; the map does not outlive `mem`.
    unsafe { PeerPool::new(bitmap, linear_map(mem), mem.base(), POOL_SLOTS) }
}

/// A random fill size: log-uniform over `64..=FILL_MAX`.
fn fill_size(rng: &mut SplitMix64) -> usize {
    let max_exp = u64::from(FILL_MAX.ilog2());
    let e = rng.range(6, max_exp - 1);
    // CAST: at most FILL_MAX, a usize.
    rng.range(1 << e, 1 << (e + 1)) as usize
}

/// Fills `pool` with random-size mappings until it is full, then unmaps a random subset until
/// at most `fill_percent` of the slots are in use and a mapping of `measured_len` bytes
/// fits (so a pool whose holes are all too small ends a little below the level rather than
/// fail the measurement). Returns the mappings left live (handle and length).
///
/// # Safety
///
/// `orig` is the start of [`ORIG_ROOM`] bytes the pool's memory reaches, outside the pool,
/// that nothing else uses.
pub unsafe fn fragment<P: BenchPool>(
    pool: &P,
    seed: u64,
    fill_percent: u32,
    measured_len: usize,
    orig: PhysAddr,
) -> Vec<(P::Handle, usize)> {
    let mut rng = SplitMix64::new(seed);
    let mut live = Vec::new();
    let mut misses = 0;
    while misses < 16 && pool.used_slots() < pool.total_slots() {
        let len = fill_size(&mut rng);
        // CAST: lengths and offsets fit u64.
        let off = rng.range(0, (ORIG_ROOM - len) as u64);
        let Some(at) = orig.checked_add(off) else {
            break;
        };
        // SAFETY: `at..at + len` lies in the originals room, as the caller promises.
        match unsafe { pool.map(at, len, DmaDirection::ToDevice) } {
            Some(h) => {
                misses = 0;
                live.push((h, len));
            }
            None => misses += 1,
        }
    }
    // Fisher-Yates, then unmap from the front of the shuffled list.
    for i in (1..live.len()).rev() {
        // CAST: indices fit u64 and back.
        let j = rng.range(0, i as u64) as usize;
        live.swap(i, j);
    }
    let target = pool.total_slots() * fill_percent as usize / 100;
    let mut keep = live.into_iter();
    // SAFETY: `orig..orig + measured_len` lies in the originals room; a successful trial
    // mapping is unmapped at once.
    let fits = || match unsafe { pool.map(orig, measured_len, DmaDirection::ToDevice) } {
        Some(h) => {
            // SAFETY: just mapped with this length.
            unsafe { pool.unmap(h, measured_len, DmaDirection::ToDevice) };
            true
        }
        None => false,
    };
    while pool.used_slots() > target || !fits() {
        let Some((h, len)) = keep.next() else { break };
        // SAFETY: `h` is live on `pool` with length `len`.
        unsafe { pool.unmap(h, len, DmaDirection::ToDevice) };
    }
    keep.collect()
}

/// One measured round trip: map `len` bytes of `orig` for the device in direction `dir`,
/// then unmap (which copies back for `FromDevice` and `Bidirectional`).
///
/// # Safety
///
/// As [`BenchPool::map`].
///
/// # Panics
///
/// If the pool has no room: a benchmark case must be set up so that the mapping fits.
#[inline]
pub unsafe fn round_trip<P: BenchPool>(pool: &P, orig: PhysAddr, len: usize, dir: DmaDirection) {
    // SAFETY: as the caller promises.
    let h = unsafe { pool.map(black_box(orig), black_box(len), dir) };
    let Some(h) = h else {
        panic!(
            "no room for {len} bytes at {}% use",
            100 * pool.used_slots() / pool.total_slots()
        );
    };
    // SAFETY: `h` was just mapped with `len`.
    unsafe { pool.unmap(black_box(h), len, dir) };
}

/// The floor: a bare copy between two page-aligned buffers, aligned as the pools' copies
/// are (the originals and large bounce buffers are page-aligned), so that only the pool's
/// own work separates a round trip from it.
#[derive(Debug)]
pub struct MemcpyFloor {
    /// Source at offset 0, destination at [`FLOOR_MAX`].
    buf: HostMemory,
}

/// The largest copy [`MemcpyFloor`] measures.
pub const FLOOR_MAX: usize = 256 << 10;

impl MemcpyFloor {
    /// Allocates the two buffers.
    ///
    /// # Errors
    ///
    /// As [`HostMemory::new`].
    pub fn new() -> Result<Self, crate::host::HostMemoryError> {
        let buf = HostMemory::new(PhysAddr::new(MEMORY_BASE), 2 * FLOOR_MAX, 4096)?;
        // SAFETY: the buffer is fresh and used by this thread alone.
        unsafe { buf.write(buf.base(), &vec![0x5a; FLOOR_MAX])? };
        Ok(Self { buf })
    }

    /// Copies `len` bytes (at most [`FLOOR_MAX`]; longer is cut) from source to destination.
    #[inline]
    pub fn copy(&mut self, len: usize) {
        let len = len.min(FLOOR_MAX);
        let src = self.buf.as_mut_ptr();
        // SAFETY: the buffer holds 2 * FLOOR_MAX bytes, so the destination half is in bounds.
        let dst = unsafe { src.add(FLOOR_MAX) };
        // SAFETY: both ranges lie in the allocation and do not overlap; `&mut self` makes
        // this the only access to the buffer, which the type hands out to nobody else.
        unsafe { core::ptr::copy_nonoverlapping(black_box(src), black_box(dst), len) };
    }
}

/// A stopwatch of the calling thread's CPU time (Linux's `CLOCK_THREAD_CPUTIME_ID`), so that
/// time the thread spends descheduled, while other work runs on a shared machine, is not
/// counted. Where that clock is not available it measures wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct CpuStopwatch {
    /// Thread CPU time at the start, if the clock works.
    cpu: Option<u64>,
    /// Wall-clock start, the fallback.
    wall: Instant,
}

/// This thread's CPU time in nanoseconds, `None` where the clock is not available.
#[must_use]
pub fn thread_cpu_ns() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is one Linux defines.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u64::try_from(ts.tv_nsec).ok()?;
        (r == 0).then(|| secs * 1_000_000_000 + nanos)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

impl CpuStopwatch {
    /// Starts.
    #[must_use]
    pub fn start() -> Self {
        Self {
            cpu: thread_cpu_ns(),
            wall: Instant::now(),
        }
    }

    /// Nanoseconds of this thread's CPU time since the start (wall-clock time without the
    /// clock).
    #[must_use]
    pub fn elapsed_ns(&self) -> f64 {
        match (self.cpu, thread_cpu_ns()) {
            // CAST: differences of a benchmark's CPU time are far below 2^53 ns.
            (Some(a), Some(b)) => b.saturating_sub(a) as f64,
            _ => self.wall.elapsed().as_secs_f64() * 1e9,
        }
    }
}

/// The median time of one call of `f`, in nanoseconds of the thread's CPU time
/// ([`CpuStopwatch`]), over `batches` batches each lasting at least `batch_time` (the
/// first, calibrating batches also warm up).
pub fn median_ns(mut f: impl FnMut(), batches: usize, batch_time: Duration) -> f64 {
    // CAST: a batch time in ns fits f64.
    let batch_ns = batch_time.as_nanos() as f64;
    // Calibrate: double the iteration count until one batch lasts `batch_time`.
    let mut iters: u32 = 1;
    loop {
        let t = CpuStopwatch::start();
        for _ in 0..iters {
            f();
        }
        if t.elapsed_ns() >= batch_ns || iters >= 1 << 24 {
            break;
        }
        iters *= 2;
    }
    let mut samples: Vec<f64> = (0..batches.max(1))
        .map(|_| {
            let t = CpuStopwatch::start();
            for _ in 0..iters {
                f();
            }
            t.elapsed_ns() / f64::from(iters)
        })
        .collect();
    samples.sort_unstable_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fragments `pool` to `fill` and checks the level, the scattering (by the free counts
    /// `free_count` reports) and that every benchmark size still fits.
    fn check_fragment<P: BenchPool>(pool: &P, fill: u32, free_count: impl Fn(usize) -> usize) {
        // SAFETY: the originals room of the case memory is used by nothing else.
        let live = unsafe { fragment(pool, SEED, fill, 65536, orig_base()) };
        let used = pool.used_slots();
        let target = POOL_SLOTS * fill as usize / 100;
        assert!(used <= target, "{used} > {target}");
        assert!(
            used + FILL_MAX / IO_TLB_SIZE * 2 >= target,
            "{used} far below {target}"
        );
        assert!(fill == 0 || live.len() > 100);
        let runs = (0..POOL_SLOTS)
            .filter(|&i| free_count(i) > 0 && (i == 0 || free_count(i - 1) == 0))
            .count();
        if fill > 0 {
            assert!(runs > 50, "only {runs} free runs at {fill}%");
        }
        for size in SIZES.into_iter().filter(|&s| s <= 65536) {
            for _ in 0..4 {
                // SAFETY: the original lies in the originals room.
                unsafe { round_trip(pool, orig_base(), size, DmaDirection::Bidirectional) };
            }
        }
        assert_eq!(pool.used_slots(), used);
    }

    #[test]
    fn fragment_reaches_fill_and_sizes_fit() {
        let mem = case_memory().unwrap();
        // SAFETY: the map does not outlive `mem`.
        let map = unsafe { linear_map(&mem) };
        for fill in FILLS {
            // SAFETY: each pool alone uses its part of `mem`, one after the other.
            let linux = unsafe { linux_pool(&map, mem.base()) }.unwrap();
            check_fragment(&linux, fill, |i| usize::from(linux.free_count(i).unwrap()));
            linux.check_invariants().unwrap();
            drop(linux);
            // SAFETY: as above.
            let real = unsafe { real_pool(&mem) }.unwrap();
            check_fragment(&real, fill, |i| real.free_count(i).unwrap());
            real.check_invariants().unwrap();
        }
    }

    #[test]
    fn same_seed_similar_fill() {
        let (a, b) = (case_memory().unwrap(), case_memory().unwrap());
        // SAFETY: the map does not outlive `a`.
        let map = unsafe { linear_map(&a) };
        // SAFETY: each pool alone uses its memory.
        let (pa, pb) = unsafe { (linux_pool(&map, a.base()), real_pool(&b)) };
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        // SAFETY: the originals rooms are used by nothing else.
        let (la, lb) = unsafe {
            (
                fragment(&pa, SEED, 50, 64, orig_base()),
                fragment(&pb, SEED, 50, 64, orig_base()),
            )
        };
        // The same sizes and unmaps; the slots differ, so the levels agree only roughly.
        assert!(
            la.len().abs_diff(lb.len()) < la.len() / 10,
            "{} vs {}",
            la.len(),
            lb.len()
        );
        let (ua, ub) = (pa.used_slots(), pb.used_slots());
        assert!(ua <= POOL_SLOTS / 2 && ub <= POOL_SLOTS / 2);
        assert!(ua.abs_diff(ub) < POOL_SLOTS / 50, "{ua} vs {ub}");
    }

    #[test]
    fn cpu_stopwatch_never_runs_ahead_of_the_wall_clock() {
        // A thread's CPU time cannot exceed the wall-clock time it lived through, and a busy
        // loop accumulates some.
        let w = Instant::now();
        let t = CpuStopwatch::start();
        std::thread::sleep(Duration::from_millis(10));
        let slept = t.elapsed_ns();
        assert!(slept <= w.elapsed().as_secs_f64() * 1e9, "{slept} ns");
        let w = Instant::now();
        let t = CpuStopwatch::start();
        let mut n = 0u64;
        while w.elapsed() < Duration::from_millis(10) {
            n = black_box(n + 1);
        }
        let busy = t.elapsed_ns();
        assert!(
            busy > 0.0 && busy <= w.elapsed().as_secs_f64() * 1e9,
            "{busy} ns"
        );
        assert!(n > 0);
    }

    #[test]
    fn median_is_plausible() {
        let mut n = 0u64;
        let t = median_ns(|| n = black_box(n + 1), 3, Duration::from_micros(200));
        assert!(t > 0.0 && t < 1e6, "{t} ns");
        assert!(n > 0);
    }
}
