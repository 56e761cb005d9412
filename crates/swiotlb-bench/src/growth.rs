//! Pools grown at run time on the simulated x86 PV machine: what a growth costs in hypercall
//! traps and time per MiB (against Linux's pool-init scheme for the same memory,
//! [`crate::fixup::linux_fixup`]), what reclaim's give-back costs, and the latency of a
//! bounced map+unmap and of a sync with 1, 4 and 16 grown pools alive.
//!
//! The engine is the facade's ([`swiotlb_xen::init::init`]) on the default machine
//! ([`crate::fixup::machine`]) with a [`FIRST_POOL_BYTES`] first pool, given a
//! [`Growth`] of [`CHUNK_BYTES`] chunks whose pages come from [`ChunkPages`]. Growth is
//! forced the way a kernel meets it: the first pool is filled, and every further map finds
//! it (and the grown pools) full, so the engine adds a pool (`PoolFull`). The fill maps are
//! one segment ([`FILL_BYTES`]) each with `SKIP_CPU_SYNC` (no cache maintenance; the pool
//! still copies the original in, as Linux does), and the time of a map that grew is the
//! growth's (the chunk's `create_contiguous_region` on the simulator, the pool's set-up,
//! the table insert) plus one such map into the new pool, whose mean time is reported
//! beside it. Times are the simulator's, whose
//! hypercalls are function calls: the trap counts are the figures to carry to hardware.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use swiotlb_core::engine::{DmaEngine, Growth, GrowthHook, GrowthLimits};
use swiotlb_core::{
    BusAddr, Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr, PhysMemory, Platform, Slot,
};
use swiotlb_xen::init::{InitOptions, init};
use xen_sim::{Counters, PvGuest, SimConfig, SimMemory, SimOp, Xen};

use crate::compare::Timing;
use crate::harness::{CpuStopwatch, median_ns};
use crate::sim::{PvRam, pv_platform};

/// The machine of the latency figures: the default x86 PV machine with 256 MiB below
/// 4 GiB instead of 64, so that 16 chunks of 2 MiB can be made contiguous there.
#[must_use]
pub fn lookup_machine() -> (Xen, PvGuest) {
    let xen = Xen::new(SimConfig::x86_pv().with_low(16 << 20, 65536));
    let g = xen.pv_guest();
    (xen, g)
}

/// The size of each grown pool (a 2 MiB chunk, as `sim-dom0 --grow` grows).
pub const CHUNK_BYTES: usize = 2 << 20;
/// The chunks the growth figures grow: 8 (16 MiB, the size of Linux's pool the
/// `linux_fixup_hypercalls_per_mib_16mib` figure makes contiguous on the same machine).
/// Not 16: on the default machine the 15th chunk of 2 MiB finds no 2 MiB of free machine
/// memory below 4 GiB left (`XENMEM_exchange` fails with `ENOMEM`), where Linux's 256 KiB
/// segments still fit.
pub const GROW_CHUNKS: usize = 8;
/// The first pool: 1 MiB, so that it fills with four maps.
pub const FIRST_POOL_BYTES: usize = 1 << 20;
/// The bytes of one fill map: one segment (128 slots), the longest a pool maps.
pub const FILL_BYTES: usize = 256 << 10;
/// The pool counts of the `map_unmap_1500_pools_N` figures.
pub const POOL_COUNTS: [usize; 3] = [1, 4, 16];
/// The mapping size of the latency figures.
pub const LOOKUP_SIZE: usize = 1500;

const PAGE: u64 = 4096;
const MIB: f64 = 1_048_576.0;

/// The kernel's pages for grown pools: a naturally aligned region of dom0 of a number of
/// chunks, each allocation one chunk (first fit), with the give-backs counted.
#[derive(Debug)]
pub struct ChunkPages {
    base: PhysAddr,
    chunk: u64,
    used: Mutex<Vec<bool>>,
    allocs: AtomicU64,
    frees: AtomicU64,
}

impl ChunkPages {
    /// Reserves `chunks` chunks of `chunk` bytes (a power of two) of the x86 PV dom0.
    #[must_use]
    pub fn pv(g: &PvGuest, chunks: usize, chunk: usize) -> Self {
        // CAST: a chunk and a count of a few dozen fit u64.
        let (chunk, n) = (chunk as u64, chunks as u64);
        Self {
            base: g.alloc_aligned(n * chunk / PAGE, chunk / PAGE),
            chunk,
            used: Mutex::new(vec![false; chunks]),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
        }
    }

    /// Chunks handed out so far, and given back.
    #[must_use]
    pub fn allocs_frees(&self) -> (u64, u64) {
        (
            self.allocs.load(Ordering::Relaxed),
            self.frees.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// SAFETY: every block is one chunk of a region of dom0's RAM reserved for this hook alone,
// aligned to the chunk (so to any smaller order asked for), handed out at most once until
// given back (the `used` map, under a mutex); the simulator's memory reaches it and the
// platform may exchange it. Never in atomic context.
unsafe impl GrowthHook for ChunkPages {
    fn in_atomic(&self) -> bool {
        false
    }

    fn alloc_pages(&self, order: u32, _atomic: bool) -> Option<PhysAddr> {
        if PAGE.checked_shl(order)? > self.chunk {
            return None;
        }
        let mut used = self.lock();
        let i = used.iter().position(|&u| !u)?;
        used[i] = true;
        self.allocs.fetch_add(1, Ordering::Relaxed);
        // CAST: an index below a few dozen.
        Some(PhysAddr::new(self.base.as_u64() + i as u64 * self.chunk))
    }

    unsafe fn free_pages(&self, phys: PhysAddr, _order: u32) {
        // CAST: the caller gives back a chunk of this region.
        let i = ((phys.as_u64() - self.base.as_u64()) / self.chunk) as usize;
        self.lock()[i] = false;
        self.frees.fetch_add(1, Ordering::Relaxed);
    }
}

/// The engine with growth on the simulated x86 PV machine.
type GrowEngine<P> =
    DmaEngine<P, SimMemory, Box<[Slot]>, PvRam, Box<Growth<ChunkPages, SimMemory>>>;

/// Builds the facade's engine on `g` with a [`FIRST_POOL_BYTES`] first pool and growth of
/// up to `chunks` [`CHUNK_BYTES`] chunks, a quiet period of 1.
fn engine<'a>(
    xen: &Xen,
    g: &'a PvGuest,
    chunks: usize,
) -> Result<GrowEngine<impl Platform + 'a>, String> {
    let pages = FIRST_POOL_BYTES as u64 / PAGE;
    let pool = g.alloc_aligned(pages, pages);
    let storage: Box<[Slot]> = (0..FIRST_POOL_BYTES / 2048).map(|_| Slot::new()).collect();
    // SAFETY: fresh dom0 memory given to the pool alone; nothing else changes its
    // translation.
    let (engine, _) = unsafe {
        init(
            pv_platform(xen, g),
            g.memory(),
            pool,
            FIRST_POOL_BYTES,
            storage,
            PvRam(g.nr_pages()),
            InitOptions::default().with_nareas(1),
        )
    }
    .map_err(|e| format!("facade init: {e}"))?;
    // CAST: a few dozen chunks of 2 MiB fit u64.
    let limits = GrowthLimits::new((chunks * CHUNK_BYTES) as u64, CHUNK_BYTES)
        .with_max_pools(chunks)
        .with_quiet_period(1);
    let hook = ChunkPages::pv(g, chunks, CHUNK_BYTES);
    Ok(engine.with_growth(Box::new(Growth::new(hook, limits))))
}

/// The device of the figures: 32-bit, every map bounced.
fn device() -> Device {
    Device::new(DmaMask::BITS_32).with_force_bounce(true)
}

/// Maps `n` fill maps of [`FILL_BYTES`] at `buf` (`SKIP_CPU_SYNC`), timing
/// each; returns their bus addresses, the CPU time of those that added a pool, and the
/// mean CPU time of the others (a map into a pool with room: the bounce copy the engine
/// makes even with `SKIP_CPU_SYNC`, as Linux does, and the search).
fn fill<P: Platform>(
    e: &GrowEngine<P>,
    dev: &Device,
    buf: PhysAddr,
    n: usize,
) -> Result<(Vec<BusAddr>, f64, f64), String> {
    let mut bus = Vec::with_capacity(n);
    let mut grow_ns = 0.0;
    let (mut plain_ns, mut plain) = (0.0, 0.0);
    let added = |e: &GrowEngine<P>| e.growth_stats().map_or(0, |s| s.pools_added);
    for i in 0..n {
        let before = added(e);
        let t = CpuStopwatch::start();
        // SAFETY: `buf` is dom0 memory of this run alone, covered by no reference, mapped
        // only for the device to read.
        let r = unsafe {
            e.map_page(
                dev,
                buf,
                FILL_BYTES,
                DmaDirection::ToDevice,
                DmaAttrs::SKIP_CPU_SYNC,
            )
        };
        let ns = t.elapsed_ns();
        bus.push(r.map_err(|e| format!("fill map {i}: {e}"))?);
        if added(e) > before {
            grow_ns += ns;
        } else {
            plain_ns += ns;
            plain += 1.0;
        }
    }
    let plain_mean = if plain > 0.0 { plain_ns / plain } else { 0.0 };
    Ok((bus, grow_ns, plain_mean))
}

fn unmap_fill<P: Platform>(e: &GrowEngine<P>, dev: &Device, bus: &[BusAddr]) -> Result<(), String> {
    for &b in bus {
        e.unmap_page(
            dev,
            b,
            FILL_BYTES,
            DmaDirection::ToDevice,
            DmaAttrs::SKIP_CPU_SYNC,
        )
        .map_err(|e| format!("unmap of a fill map: {e}"))?;
    }
    Ok(())
}

/// What growing and shrinking cost, from the simulator's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GrowthCount {
    /// Bytes of pools grown (and given back).
    pub bytes: u64,
    /// Pools the engine added.
    pub pools_added: u64,
    /// Pools the engine removed.
    pub pools_removed: u64,
    /// Chunks the hook handed out.
    pub hook_allocs: u64,
    /// Chunks given back to the hook.
    pub hook_frees: u64,
    /// Traps, `XENMEM_exchange` calls and multicalls of the maps that grew the pools
    /// (counted from a reset after the first pool was filled).
    pub grow_traps: u64,
    /// `XENMEM_exchange` calls of the growth.
    pub grow_exchanges: u64,
    /// Multicalls of the growth.
    pub grow_multicalls: u64,
    /// CPU nanoseconds of the maps that added a pool.
    pub grow_ns: f64,
    /// Mean CPU nanoseconds of a fill map that did not grow (each growing map also makes
    /// one such map into the new pool).
    pub plain_map_ns: f64,
    /// Traps of the reclaim that gave the pools back (counted from a reset before it).
    pub shrink_traps: u64,
    /// `XENMEM_exchange` calls of the give-back.
    pub shrink_exchanges: u64,
    /// CPU nanoseconds of the reclaim calls.
    pub shrink_ns: f64,
}

impl GrowthCount {
    /// MiB of pools grown.
    #[must_use]
    pub fn mib(&self) -> f64 {
        // CAST: tens of MiB, exact in f64.
        self.bytes as f64 / MIB
    }
}

fn count(c: &Counters, op: SimOp) -> u64 {
    c.count(op)
}

/// Grows `chunks` pools of [`CHUNK_BYTES`] on a fresh default x86 PV machine
/// ([`crate::fixup::machine`]) by filling the
/// first pool and then mapping until every grown pool is full, unmaps everything and lets
/// reclaim give them all back; counts both with the simulator.
///
/// # Errors
///
/// If the machine cannot be set up, a map or unmap fails, or the engine did not grow or
/// shrink as many pools as asked.
pub fn grow_and_shrink(chunks: usize) -> Result<GrowthCount, String> {
    let (xen, g) = crate::fixup::machine();
    let e = engine(&xen, &g, chunks)?;
    let dev = device();
    let buf = g.alloc_aligned(FILL_BYTES as u64 / PAGE, 1);
    let (first, _, _) = fill(&e, &dev, buf, FIRST_POOL_BYTES / FILL_BYTES)?;
    let added = e.growth_stats().map_or(0, |s| s.pools_added);
    if added != 0 {
        return Err(format!(
            "the first pool did not hold its own fill ({added} grown)"
        ));
    }
    xen.reset_counters();
    let (grown, grow_ns, plain_map_ns) = fill(&e, &dev, buf, chunks * (CHUNK_BYTES / FILL_BYTES))?;
    let gc = xen.counters();
    unmap_fill(&e, &dev, &grown)?;
    unmap_fill(&e, &dev, &first)?;
    xen.reset_counters();
    let t = CpuStopwatch::start();
    let r0 = e.reclaim(0);
    let r1 = e.reclaim(1);
    let shrink_ns = t.elapsed_ns();
    let sc = xen.counters();
    if let Some(err) = r0.error.or(r1.error) {
        return Err(format!("reclaim: {err}"));
    }
    let s = e.growth_stats().ok_or("no growth state")?;
    let hook = e.growth().ok_or("no growth state")?.hook();
    let (hook_allocs, hook_frees) = hook.allocs_frees();
    // CAST: a few dozen chunks.
    let want = chunks as u64;
    if s.pools_added != want || s.pools_removed != want || s.live_pools != 0 {
        return Err(format!("grew or shrank other than {chunks} pools: {s:?}"));
    }
    xen.check_invariants().map_err(|v| v.to_string())?;
    Ok(GrowthCount {
        bytes: want * CHUNK_BYTES as u64,
        pools_added: s.pools_added,
        pools_removed: s.pools_removed,
        hook_allocs,
        hook_frees,
        grow_traps: gc.traps(),
        grow_exchanges: count(&gc, SimOp::MemoryExchange),
        grow_multicalls: count(&gc, SimOp::Multicall),
        grow_ns,
        plain_map_ns,
        shrink_traps: sc.traps(),
        shrink_exchanges: count(&sc, SimOp::MemoryExchange),
        shrink_ns,
    })
}

/// Linux's fixup scheme ([`crate::fixup::linux_fixup`]) of `bytes` on a fresh default
/// machine (the pool where Linux's `None` case of the fixup figures puts it): its traps and
/// its CPU nanoseconds.
///
/// # Errors
///
/// If the fixup fails.
pub fn linux_fixup_timed(bytes: u64) -> Result<(u64, f64), String> {
    let (xen, g) = crate::fixup::machine();
    let phys = g.alloc_aligned(bytes / PAGE, crate::fixup::SEGMENT_BYTES / PAGE);
    let t = CpuStopwatch::start();
    // SAFETY: fresh dom0 pages, used by nothing else.
    let c =
        unsafe { crate::fixup::linux_fixup(&xen, &g, phys, bytes) }.map_err(|e| e.to_string())?;
    Ok((c.traps, t.elapsed_ns()))
}

/// The platform's share of a growth: `create_contiguous_region` of `chunks` chunks of
/// [`CHUNK_BYTES`] (order 9, below 2^32) called directly on the chunks a [`ChunkPages`]
/// hands out, on a fresh default machine laid out as [`grow_and_shrink`]'s (first pool,
/// then the chunks' region); returns the traps and the CPU nanoseconds of the calls.
///
/// # Errors
///
/// If a call fails.
pub fn contiguous_timed(chunks: usize) -> Result<(u64, f64), String> {
    let (xen, g) = crate::fixup::machine();
    let pages = FIRST_POOL_BYTES as u64 / PAGE;
    let _first = g.alloc_aligned(pages, pages);
    let hook = ChunkPages::pv(&g, chunks, CHUNK_BYTES);
    let pv = pv_platform(&xen, &g);
    let order = CHUNK_BYTES.trailing_zeros() - 12;
    xen.reset_counters();
    let mut ns = 0.0;
    for i in 0..chunks {
        let phys = hook.alloc_pages(order, false).ok_or("no chunk left")?;
        let t = CpuStopwatch::start();
        // SAFETY: a fresh chunk of dom0 memory used by nothing else.
        let r = unsafe { pv.create_contiguous_region(phys, order, 32) };
        ns += t.elapsed_ns();
        r.map_err(|e| format!("chunk {i}: {e}"))?;
    }
    Ok((xen.counters().traps(), ns))
}

/// One pool-count case of the latency figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PoolsLatency {
    /// Grown pools alive while timing.
    pub live_pools: usize,
    /// Whether the measured mappings landed in the last grown pool (the freed fill map's
    /// range of it), every pool before it and the first pool full.
    pub in_last_pool: bool,
    /// Median CPU nanoseconds of one bounced map+unmap pair of [`LOOKUP_SIZE`] bytes.
    pub map_unmap_ns: f64,
    /// Median CPU nanoseconds of one `sync_single_for_cpu` of a mapping in the last pool.
    pub sync_ns: f64,
}

/// The latencies with `pools` grown pools alive on the [`lookup_machine`]: the first pool and every grown pool full
/// of fill maps, but for the last fill map (in the last grown pool), unmapped, so that a
/// map of [`LOOKUP_SIZE`] bytes goes past the full ones into the last pool and an unmap or
/// sync finds it through the grown pools' table.
///
/// # Errors
///
/// If the machine cannot be set up or a DMA operation fails.
pub fn pools_latency(pools: usize, t: Timing) -> Result<PoolsLatency, String> {
    let (xen, g) = lookup_machine();
    let e = engine(&xen, &g, pools)?;
    let dev = device();
    let fill_buf = g.alloc_aligned(FILL_BYTES as u64 / PAGE, 1);
    let n = FIRST_POOL_BYTES / FILL_BYTES + pools * (CHUNK_BYTES / FILL_BYTES);
    let (bus, _, _) = fill(&e, &dev, fill_buf, n)?;
    let live = e.growth_stats().map_or(0, |s| s.live_pools);
    let last = *bus.last().ok_or("no fill map")?;
    unmap_fill(&e, &dev, &[last])?;
    // A packet at a small odd offset in its page, as a driver's often is.
    let buf = PhysAddr::new(g.alloc_pages(1).as_u64() + 66);
    let mem = g.memory();
    // SAFETY: the buffer is dom0 memory of this run alone, covered by no reference.
    unsafe { mem.fill(buf, 0x5a, LOOKUP_SIZE) };
    let (dir, none) = (DmaDirection::ToDevice, DmaAttrs::empty());
    let in_range = |b: BusAddr| b >= last && b.as_u64() < last.as_u64() + FILL_BYTES as u64;
    let mut in_last = true;
    let mut err = None;
    let mut pair = || {
        // SAFETY: as above; mapped for the device to read, unmapped at once.
        match unsafe { e.map_page(&dev, buf, LOOKUP_SIZE, dir, none) } {
            Ok(b) => {
                in_last &= in_range(b);
                if let Err(x) = e.unmap_page(&dev, b, LOOKUP_SIZE, dir, none) {
                    err = Some(x.to_string());
                }
            }
            Err(x) => err = Some(x.to_string()),
        }
    };
    pair();
    let map_unmap_ns = median_ns(&mut pair, t.batches, t.batch_time);
    if let Some(x) = err {
        return Err(format!("map+unmap with {pools} grown pools: {x}"));
    }
    // A mapping in the last pool, synced for the CPU over and over (each a lookup and a
    // copy back of its bytes).
    let from = DmaDirection::FromDevice;
    // SAFETY: as above; the CPU reads the buffer only after the unmap.
    let held = unsafe { e.map_page(&dev, buf, LOOKUP_SIZE, from, none) }
        .map_err(|x| format!("map with {pools} grown pools: {x}"))?;
    in_last &= in_range(held);
    let mut serr = None;
    let sync_ns = median_ns(
        || {
            if let Err(x) = e.sync_single_for_cpu(&dev, held, LOOKUP_SIZE, from) {
                serr = Some(x.to_string());
            }
        },
        t.batches,
        t.batch_time,
    );
    if let Some(x) = serr {
        return Err(format!("sync with {pools} grown pools: {x}"));
    }
    e.unmap_page(&dev, held, LOOKUP_SIZE, from, none)
        .map_err(|x| x.to_string())?;
    unmap_fill(&e, &dev, &bus[..n - 1])?;
    Ok(PoolsLatency {
        live_pools: live,
        in_last_pool: in_last,
        map_unmap_ns,
        sync_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn growth_counts_what_the_simulator_counted() {
        let c = grow_and_shrink(2).unwrap();
        assert_eq!(c.bytes, 4 << 20);
        assert_eq!((c.pools_added, c.pools_removed), (2, 2));
        assert_eq!((c.hook_allocs, c.hook_frees), (2, 2));
        // Each chunk is exchanged (the hook's pages are scattered): at least one exchange
        // per pool, and the trap count holds the exchanges and the multicalls.
        assert!(c.grow_exchanges >= 2, "{c:?}");
        assert!(
            c.grow_traps >= c.grow_exchanges + c.grow_multicalls,
            "{c:?}"
        );
        assert!(c.grow_multicalls > 0, "{c:?}");
        // The give-back exchanges each chunk back: one exchange per pool at least.
        assert!(c.shrink_exchanges >= 2, "{c:?}");
        assert!(c.shrink_traps >= c.shrink_exchanges, "{c:?}");
        assert!(
            c.grow_ns > 0.0 && c.shrink_ns > 0.0 && c.plain_map_ns > 0.0,
            "{c:?}"
        );
        assert!((c.mib() - 4.0).abs() < 1e-12);
        // Every trap of the growth is the platform's making the chunks contiguous: the
        // same calls on the same chunks of a machine laid out alike count the same.
        let (platform_traps, _) = contiguous_timed(2).unwrap();
        assert_eq!(c.grow_traps, platform_traps, "{c:?}");
        // Twice the chunks, about twice the traps: the count is per pool grown, not fixed.
        let d = grow_and_shrink(4).unwrap();
        assert_eq!(d.pools_added, 4);
        assert!(d.grow_traps > c.grow_traps, "{d:?} against {c:?}");
    }

    #[test]
    fn the_hook_hands_out_whole_chunks_once() {
        let (_, g) = crate::fixup::machine();
        let h = ChunkPages::pv(&g, 2, CHUNK_BYTES);
        let a = h.alloc_pages(9, false).unwrap();
        let b = h.alloc_pages(9, false).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_u64() % CHUNK_BYTES as u64, 0);
        assert_eq!(h.alloc_pages(9, false), None);
        assert_eq!(h.alloc_pages(10, false), None);
        // SAFETY: a live allocation of this hook.
        unsafe { h.free_pages(a, 9) };
        assert_eq!(h.alloc_pages(9, false), Some(a));
        assert_eq!(h.allocs_frees(), (3, 1));
    }

    #[test]
    fn latency_maps_land_in_the_last_of_the_grown_pools() {
        let t = Timing {
            batches: 1,
            batch_time: Duration::from_micros(200),
        };
        for pools in [1, 4] {
            let l = pools_latency(pools, t).unwrap();
            assert_eq!(l.live_pools, pools);
            assert!(l.in_last_pool, "{pools}: {l:?}");
            assert!(l.map_unmap_ns > 0.0 && l.sync_ns > 0.0, "{l:?}");
        }
    }
}
