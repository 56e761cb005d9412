//! Growth and shrinking on real Xen, and a 2 MiB mapping the `edu` device uses.
//!
//! A second engine, beside the checks' main one, starts from a 2 MiB first pool (so that a
//! 2 MiB mapping fills it, and the next map finds it full) and may grow by one 2 MiB chunk of the
//! kernel's pages ([`GrowArea`], the [`GrowthHook`]). The chunk lies in the kernel image,
//! above the device's 28-bit mask, so growing it is a real `XENMEM_exchange` below the mask
//! and giving it back a real exchange the other way.
//!
//! - `grow-pool`: a 2 MiB mapping fills the first pool; the next map finds it full and the
//!   engine adds the chunk (one exchange), M2P-consistent and bus-contiguous below the mask.
//! - `dev-map-2m`: a 2 MiB buffer above the mask is mapped (bounced into the grown pool, one
//!   bus-contiguous run of 8 joined segments); the device reads 4095 bytes at four offsets
//!   across it (0, beyond 256 KiB, past 1 MiB, the last bytes) and writes each at another
//!   offset; the CPU's buffer is unchanged until the unmap, then holds the device's bytes
//!   there and its own everywhere else.
//! - `shrink-pool`: no give-back while a mapping lives or before the quiet period (TSC
//!   cycles); after it, `reclaim` gives the chunk back (one exchange), the hook has its
//!   pages again, every page of the chunk is on a new frame, P2M and M2P agree, the
//!   reservation is unchanged; then the first pool is released.
//! - `dev-map-transient`: a third engine, again from a 2 MiB first pool but growing by
//!   256 KiB chunks with transient pools on: with the first pool full, a 2 MiB mapping is
//!   longer than any chunk holds, so the engine exchanges a 2 MiB pool for it alone (one
//!   exchange); the device reads and writes it as in `dev-map-2m`, and the unmap gives the
//!   pool back at once (one exchange), with no `reclaim`.

use core::sync::atomic::{AtomicBool, Ordering};

use swiotlb_xen::init::{self, InitError, InitOptions, InitReport};
use swiotlb_xen::swiotlb_core::engine::{Growth, GrowthHook, GrowthLimits, GrowthStats};
use swiotlb_xen::{
    BusAddr, Device, DmaAttrs, DmaDirection, DmaEngine, NoPageAllocator, PhysAddr, Platform, Slot,
};

use crate::checks::{Env, KernelMemory, Outcome, Pv, Report, ensure, phys_of, reservation};
use crate::console::Line;
use crate::dma::{MASK, fill, holds, pattern};
use crate::edu::{DMA_MASK_BITS, Edu, MAX_TRANSFER};
use crate::fmt_line;
use crate::hyp::{COUNTERS, rdtsc};

/// 2 MiB: the first pool, the growth chunk and the device's buffer.
const MIB2: usize = 2 << 20;
/// The chunk's order (2 MiB = 4 KiB << 9).
const ORDER: u32 = 9;
/// The quiet period, in TSC cycles.
const QUIET: u64 = 2_000_000;

/// A 2 MiB-aligned 2 MiB block of `.bss`.
#[repr(C, align(2097152))]
struct Block2M([u8; MIB2]);

/// The growth engine's first pool.
static mut FIRST: Block2M = Block2M([0; MIB2]);
/// Its slots.
static FIRST_SLOTS: [Slot; MIB2 / 2048] = [const { Slot::new() }; MIB2 / 2048];
/// The kernel's pages the engine may grow by.
static mut CHUNK: Block2M = Block2M([0; MIB2]);
/// The grown pool's slots (the kernel has no heap).
static CHUNK_SLOTS: [Slot; MIB2 / 2048] = [const { Slot::new() }; MIB2 / 2048];
/// The transient pool's slots.
static TRANSIENT_SLOTS: [Slot; MIB2 / 2048] = [const { Slot::new() }; MIB2 / 2048];
/// Whether [`CHUNK`] is handed out (by either engine's hook).
static CHUNK_USED: AtomicBool = AtomicBool::new(false);
/// The 2 MiB buffer the device uses (above the mask, in the image).
static mut BIG: Block2M = Block2M([0; MIB2]);

/// The growth limits: one 2 MiB chunk below the device's mask, given back after
/// [`QUIET`] idle cycles.
const LIMITS: GrowthLimits = GrowthLimits::new(MIB2 as u64, MIB2)
    .with_max_pools(1)
    .with_quiet_period(QUIET)
    .with_address_bits(DMA_MASK_BITS);
/// The growth state (about 263 KiB: 16 pool entries with their areas), a static as a kernel
/// keeps it (`Growth::new` is `const`), not on the stack.
static GROWTH: Growth<GrowArea, KernelMemory> = Growth::new(GrowArea::new(&CHUNK_SLOTS), LIMITS);
/// The transient engine's limits: 256 KiB chunks (a 2 MiB mapping is longer than one holds),
/// transient pools on, at most one pool of at most 2 MiB, below the device's mask.
const TRANSIENT_LIMITS: GrowthLimits = GrowthLimits::new(MIB2 as u64, 256 << 10)
    .with_max_pools(1)
    .with_transient(true)
    .with_quiet_period(QUIET)
    .with_address_bits(DMA_MASK_BITS);
/// The transient engine's growth state.
static TRANSIENT: Growth<GrowArea, KernelMemory> =
    Growth::new(GrowArea::new(&TRANSIENT_SLOTS), TRANSIENT_LIMITS);

/// The kernel's page allocator for growth: one 2 MiB block ([`CHUNK`], shared by the two
/// growth engines, which run one after the other) and one slot array.
#[derive(Debug)]
pub struct GrowArea {
    used: &'static AtomicBool,
    slots: &'static [Slot],
    slots_given: AtomicBool,
    /// Calls of `alloc_pages` and `free_pages`.
    allocs: core::sync::atomic::AtomicU32,
    frees: core::sync::atomic::AtomicU32,
}

impl GrowArea {
    /// The block not handed out yet, and `slots` for the pool grown from it.
    const fn new(slots: &'static [Slot]) -> Self {
        Self {
            used: &CHUNK_USED,
            slots,
            slots_given: AtomicBool::new(false),
            allocs: core::sync::atomic::AtomicU32::new(0),
            frees: core::sync::atomic::AtomicU32::new(0),
        }
    }

    fn base() -> PhysAddr {
        phys_of(&raw const CHUNK)
    }
}

// SAFETY: the one block is handed out once at a time (a compare-exchange), aligned to its
// 2 MiB size, in the kernel image (which `KernelMemory` reaches and the platform may
// exchange); the slot storage is a static handed out once.
unsafe impl GrowthHook for GrowArea {
    fn in_atomic(&self) -> bool {
        false
    }

    fn alloc_pages(&self, order: u32, _atomic: bool) -> Option<PhysAddr> {
        self.allocs.fetch_add(1, Ordering::Relaxed);
        (order == ORDER
            && self
                .used
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok())
        .then(Self::base)
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        self.frees.fetch_add(1, Ordering::Relaxed);
        if phys == Self::base() && order == ORDER {
            self.used.store(false, Ordering::Release);
        }
    }

    fn alloc_slots(&self, nslabs: usize, _atomic: bool) -> Option<&'static [Slot]> {
        (nslabs == self.slots.len() && !self.slots_given.swap(true, Ordering::AcqRel))
            .then_some(self.slots)
    }
}

/// The growth engine.
type GEngine<'a> = DmaEngine<
    &'a Pv,
    KernelMemory,
    &'static [Slot],
    NoPageAllocator,
    &'a Growth<GrowArea, KernelMemory>,
>;

/// A growth engine: a 2 MiB first pool on [`FIRST`], exchanged below the device's mask,
/// growing with `growth`; with init's report for [`release`].
///
/// # Safety
///
/// No other live engine has its pool on `FIRST`.
unsafe fn growth_engine<'a>(
    env: &Env,
    pv: &'a Pv,
    growth: &'a Growth<GrowArea, KernelMemory>,
) -> Result<(GEngine<'a>, InitReport), InitError> {
    // SAFETY: the first pool's memory is a static given to this pool alone (the caller's
    // promise); the image map reaches it, the chunk and the buffer.
    let (eng, init) = unsafe {
        init::init(
            pv,
            KernelMemory::new(env.low),
            phys_of(&raw const FIRST),
            MIB2,
            &FIRST_SLOTS[..],
            NoPageAllocator,
            InitOptions::default()
                .with_min_bytes(MIB2)
                .with_max_address_bits(DMA_MASK_BITS),
        )
    }?;
    Ok((eng.with_growth(growth), init))
}

/// Drops a [`growth_engine`] and gives its first pool back (the exchanges undone); returns
/// the platform and the outcome.
fn release<'a>(eng: GEngine<'a>, init: &InitReport) -> (&'a Pv, Result<(), InitError>) {
    let (pv, _, _) = eng.into_parts();
    // SAFETY: the engine and its pool are gone; nothing uses the first pool's memory.
    (pv, unsafe { init::release(pv, init) })
}

/// The pseudo-physical address behind an own bus address.
fn tlb_of(pv: &Pv, bus: BusAddr) -> Option<PhysAddr> {
    Some(bus.with_phys_frame(pv.bfn_to_local_pfn(bus.frame())?))
}

/// The growth counters, printed.
fn stats_line(s: &GrowthStats) -> Line {
    fmt_line!(
        "pools added {}, removed {}, live {}, {} KiB (peak {} KiB), refused {}, failed {}",
        s.pools_added,
        s.pools_removed,
        s.live_pools,
        s.bytes >> 10,
        s.peak_bytes >> 10,
        s.refused,
        s.failed
    )
}

/// The four 4095-byte ranges the device reads (from the start, beyond 256 KiB, past 1 MiB,
/// the last bytes) and, for each, where it writes them back.
const SPOTS: [(usize, usize); 4] = [
    (0, (512 << 10) + 7),
    ((300 << 10) + 100, (768 << 10) + 3000),
    ((1 << 20) + 2053, (1536 << 10) + 1),
    (MIB2 - MAX_TRANSFER, MIB2 - 3 * MAX_TRANSFER - 10),
];
/// The buffer's pattern.
const SEED: u8 = 0x5a;
/// Where the device writes into the FromDevice 2 MiB mapping.
const OUT: [usize; 3] = [0, (1 << 20) + 333, MIB2 - MAX_TRANSFER];
/// The buffer's pattern under the FromDevice mapping.
const SEED_OUT: u8 = 0x77;

/// Runs `grow-pool`, `dev-map-2m`, `shrink-pool` and `dev-map-transient`.
pub fn run(env: &Env, pv: &Pv, edu: Option<&Edu>, report: &mut Report) {
    let names = [
        "grow-pool",
        "dev-map-2m",
        "shrink-pool",
        "dev-map-transient",
    ];
    // SAFETY: no other engine's pool is on `FIRST` (this is the first growth engine).
    let (eng, init) = match unsafe { growth_engine(env, pv, &GROWTH) } {
        Ok(built) => built,
        Err(e) => {
            for name in names {
                report.record(name, Err(fmt_line!("init of the 2 MiB first pool: {e}")));
            }
            return;
        }
    };
    let dev = Device::new(MASK);
    let big = phys_of(&raw const BIG);
    let filler = grow_pool(env, &eng, &dev, big);
    let filled = filler.as_ref().ok().map(|(bus, _)| *bus);
    report.record("grow-pool", filler.map(|(_, l)| l));
    let mapped = match (edu, filled) {
        (Some(edu), Some(_)) => map_2m(env, &eng, &dev, edu, big),
        (None, _) => Err(fmt_line!("no edu device")),
        (_, None) => Err(fmt_line!("grow-pool failed")),
    };
    report.record("dev-map-2m", mapped);
    report.record("shrink-pool", shrink(env, &eng, &dev, filled));
    let (pv, released) = release(eng, &init);
    if let Err(e) = released {
        crate::kprintln!("x86_64-pv-dom0: releasing the 2 MiB first pool: {e}");
    }
    report.record("dev-map-transient", transient(env, pv, edu));
}

/// `dev-map-transient`: a new 2 MiB first pool (on the memory of the last, released) with
/// [`TRANSIENT`]'s growth, filled, then a 2 MiB mapping in a transient pool of its own.
fn transient(env: &Env, pv: &Pv, edu: Option<&Edu>) -> Outcome {
    let edu = edu.ok_or_else(|| fmt_line!("no edu device"))?;
    // SAFETY: the engine of `grow-pool`, whose pool was on `FIRST`, is gone and its pool
    // released.
    let (eng, init) = unsafe { growth_engine(env, pv, &TRANSIENT) }
        .map_err(|e| fmt_line!("init of the 2 MiB first pool: {e}"))?;
    let r = transient_map(env, &eng, edu);
    let (_, released) = release(eng, &init);
    let line = r?;
    released.map_err(|e| fmt_line!("releasing the first pool: {e}"))?;
    Ok(line)
}

/// The body of `dev-map-transient` on its engine: fills the first pool, maps 2 MiB
/// (Bidirectional) into a transient pool, lets the device use it and unmaps, which gives the
/// pool back.
fn transient_map(env: &Env, eng: &GEngine<'_>, edu: &Edu) -> Outcome {
    let dev = Device::new(MASK);
    let big = phys_of(&raw const BIG);
    let none = DmaAttrs::empty();
    let dir = DmaDirection::Bidirectional;
    ensure!(
        eng.max_mapping_size(&dev) == MIB2,
        "the engine maps at most {:#x} bytes, not 2 MiB",
        eng.max_mapping_size(&dev)
    );
    fill(big, MIB2, SEED);
    // SAFETY: the buffer is a static of these checks, unreferenced while mapped.
    let filler = unsafe { eng.map_page(&dev, big, MIB2, DmaDirection::ToDevice, none) }
        .map_err(|e| fmt_line!("filling map: {e}"))?;
    let pages0 = reservation().map_err(|e| fmt_line!("{e}"))?;
    let c0 = COUNTERS.snapshot();
    // SAFETY: as above; the filler's ToDevice mapping of the same bytes copies nothing back.
    let mapped = unsafe { eng.map_page(&dev, big, MIB2, dir, none) };
    let grow_calls = COUNTERS.snapshot().since(c0);
    let r = mapped
        .map_err(|e| fmt_line!("map_page({big}, 2 MiB) on a full first pool: {e}"))
        .and_then(|bus| transient_use(env, eng, edu, bus, grow_calls.exchanges));
    eng.unmap_page(&dev, filler, MIB2, DmaDirection::ToDevice, none)
        .map_err(|e| fmt_line!("unmap of the filler: {e}"))?;
    let (bus, grown, back) = r?;
    let pages1 = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(pages0 == pages1, "reservation {pages0} -> {pages1}");
    let s = eng
        .growth_stats()
        .ok_or_else(|| fmt_line!("no growth stats"))?;
    Ok(fmt_line!(
        "first pool 2 MiB and full, 256 KiB chunks: a 2 MiB Bidirectional map got a 2 MiB \
         transient pool at {bus} ({} exchange, bus-contiguous under 2^{DMA_MASK_BITS}); the device \
         read and wrote it at four places; the unmap copied every byte right and gave the pool \
         back ({} exchange, no reclaim): transient added {}, live {}; {}; reservation {pages1} \
         unchanged",
        grown,
        back,
        s.transient_added,
        s.transient_live,
        stats_line(&s)
    ))
}

/// The transient mapping at `bus` (grown with `exchanges` exchanges): where it lies, the
/// device's reads and writes, the unmap and the give-back. Returns the bus address and the
/// exchanges of the growth and of the give-back.
fn transient_use(
    env: &Env,
    eng: &GEngine<'_>,
    edu: &Edu,
    bus: BusAddr,
    exchanges: u64,
) -> Result<(BusAddr, u64, u64), Line> {
    let pv = *eng.platform();
    let dev = Device::new(MASK);
    let big = phys_of(&raw const BIG);
    let dir = DmaDirection::Bidirectional;
    let s = eng
        .growth_stats()
        .ok_or_else(|| fmt_line!("no growth stats"))?;
    ensure!(
        s.transient_added == 1 && s.transient_live == 1 && s.bytes == MIB2 as u64,
        "after the map: transient added {}, live {}; {}",
        s.transient_added,
        s.transient_live,
        stats_line(&s)
    );
    ensure!(exchanges == 1, "{exchanges} exchanges to grow");
    let chunk = GrowArea::base();
    let tlb = tlb_of(pv, bus).ok_or_else(|| fmt_line!("{bus} is not a local frame"))?;
    ensure!(
        tlb == chunk && MASK.covers(bus, MIB2 as u64) && pv.is_bus_contiguous(tlb, MIB2 as u64),
        "the bounce {tlb} at {bus} is not the transient pool at {chunk}, bus-contiguous under the \
         mask"
    );
    spots_dma(edu, bus)?;
    holds("buffer before unmap", big, MIB2, SEED)?;
    let c0 = COUNTERS.snapshot();
    eng.unmap_page(&dev, bus, MIB2, dir, DmaAttrs::empty())
        .map_err(|e| fmt_line!("unmap_page({bus}, 2 MiB): {e}"))?;
    let back = COUNTERS.snapshot().since(c0).exchanges;
    spots_hold(big)?;
    let s = eng
        .growth_stats()
        .ok_or_else(|| fmt_line!("no growth stats"))?;
    ensure!(
        s.transient_live == 0 && s.pools_removed == 1 && s.live_pools == 0 && s.bytes == 0,
        "after the unmap: transient live {}; {}",
        s.transient_live,
        stats_line(&s)
    );
    ensure!(back == 1, "{back} exchanges to give back");
    ensure!(
        !CHUNK_USED.load(Ordering::Acquire),
        "the hook did not get its pages back"
    );
    let pfn0 = chunk.frame().as_u64();
    for i in 0..(MIB2 as u64 >> 12) {
        ensure!(
            env.round_trips(pfn0 + i),
            "pool page {i} does not round-trip after the give-back"
        );
    }
    Ok((bus, exchanges, back))
}

/// The device reads 4095 bytes at each of [`SPOTS`]' first offsets of the mapping at `bus`
/// and writes them at the second.
fn spots_dma(edu: &Edu, bus: BusAddr) -> Result<(), Line> {
    for &(from, to) in &SPOTS {
        edu.read_memory(bus.as_u64() + from as u64, 0, MAX_TRANSFER)?;
        edu.write_memory(0, bus.as_u64() + to as u64, MAX_TRANSFER)?;
    }
    Ok(())
}

/// After the unmap of a [`spots_dma`] mapping of `big` (filled with [`SEED`]): the device's
/// bytes at each second offset, the CPU's everywhere else.
fn spots_hold(big: PhysAddr) -> Result<(), Line> {
    let p = crate::checks::virt_of(big);
    for i in 0..MIB2 {
        let want = SPOTS
            .iter()
            .find(|&&(_, to)| (to..to + MAX_TRANSFER).contains(&i))
            .map_or(pattern(SEED, i), |&(from, to)| pattern(SEED, from + i - to));
        // SAFETY: the buffer is mapped memory of the image, unmapped from the device now.
        let got = unsafe { p.add(i).read_volatile() };
        ensure!(
            got == want,
            "byte {i:#x} of the 2 MiB buffer is {got:#x} after unmap, expected {want:#x}"
        );
    }
    Ok(())
}

/// Fills the first pool with a 2 MiB mapping, then maps one page more: the engine grows.
/// Returns the filler's bus address (still mapped).
fn grow_pool(
    env: &Env,
    eng: &GEngine<'_>,
    dev: &Device,
    big: PhysAddr,
) -> Result<(BusAddr, Line), Line> {
    let pv = *eng.platform();
    let frame = env.p2m_raw(big.frame().as_u64());
    ensure!(
        frame << 12 > MASK.as_u64(),
        "the buffer at frame {frame:#x} is under the mask"
    );
    let pool = eng.pool().ok_or_else(|| fmt_line!("no first pool"))?;
    ensure!(
        eng.max_mapping_size(dev) == MIB2,
        "the first pool maps at most {:#x} bytes, not 2 MiB",
        eng.max_mapping_size(dev)
    );
    fill(big, MIB2, SEED);
    let dir = DmaDirection::ToDevice;
    let none = DmaAttrs::empty();
    // SAFETY: the buffer is a static of these checks, unreferenced while mapped.
    let filler = unsafe { eng.map_page(dev, big, MIB2, dir, none) }
        .map_err(|e| fmt_line!("filling map: {e}"))?;
    ensure!(
        tlb_of(pv, filler).is_some_and(|t| pool.contains(t)) && pool.stats().used == MIB2 / 2048,
        "the filler {filler} is not in the first pool, or it is not full ({} slots)",
        pool.stats().used
    );
    ensure!(
        eng.growth_stats().is_some_and(|s| s.pools_added == 0),
        "grew before the first pool was full"
    );
    let pages0 = reservation().map_err(|e| fmt_line!("{e}"))?;
    let c0 = COUNTERS.snapshot();
    let t0 = rdtsc();
    let page = PhysAddr::new(big.as_u64() + 4096);
    // SAFETY: as above (a ToDevice mapping of the same bytes: nothing is copied back).
    let small = unsafe { eng.map_page(dev, page, 4096, dir, none) }
        .map_err(|e| fmt_line!("map on a full first pool: {e}"))?;
    let cycles = rdtsc().wrapping_sub(t0);
    let calls = COUNTERS.snapshot().since(c0);
    let s = eng
        .growth_stats()
        .ok_or_else(|| fmt_line!("no growth stats"))?;
    ensure!(
        s.pools_added == 1 && s.live_pools == 1 && s.bytes == MIB2 as u64,
        "after the map: {}",
        stats_line(&s)
    );
    ensure!(
        calls.exchanges == 1,
        "{} exchanges to grow",
        calls.exchanges
    );
    let chunk = GrowArea::base();
    let tlb = tlb_of(pv, small).ok_or_else(|| fmt_line!("{small} is not a local frame"))?;
    ensure!(
        chunk <= tlb && tlb.as_u64() + 4096 <= chunk.as_u64() + MIB2 as u64,
        "the page went to {tlb}, not into the grown chunk at {chunk}"
    );
    // The page is buffer page 1: the bounce holds the pattern from offset 4096.
    let v = crate::checks::virt_of(tlb);
    // SAFETY: the grown chunk is mapped memory of the image, only read here.
    let bad = (0..4096).find(|&i| unsafe { v.add(i).read_volatile() } != pattern(SEED, 4096 + i));
    ensure!(bad.is_none(), "the grown bounce differs at byte {bad:?}");
    let pfn0 = chunk.frame().as_u64();
    let b0 = env.p2m_raw(pfn0);
    for i in 0..(MIB2 as u64 >> 12) {
        ensure!(
            env.p2m_raw(pfn0 + i) == b0 + i && env.m2p_raw(b0 + i) == pfn0 + i,
            "chunk page {i} on frame {:#x}, expected {:#x}",
            env.p2m_raw(pfn0 + i),
            b0 + i
        );
    }
    let top = (b0 << 12) + MIB2 as u64;
    ensure!(
        top <= 1 << DMA_MASK_BITS,
        "the grown chunk ends at bus {top:#x}"
    );
    eng.unmap_page(dev, small, 4096, dir, none)
        .map_err(|e| fmt_line!("unmap of the grown mapping: {e}"))?;
    let pages1 = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(pages0 == pages1, "reservation {pages0} -> {pages1}");
    Ok((
        filler,
        fmt_line!(
            "first pool 2 MiB, full with a 2 MiB map; a 4 KiB map grew a 2 MiB pool at {chunk} \
             (bus {:#x}..{top:#x}, under 2^{DMA_MASK_BITS}, M2P-consistent) with {} hypercalls \
             ({} exchange) in {cycles} TSC cycles; the page bounced there and unmapped from it; \
             {}; reservation {pages1} unchanged",
            b0 << 12,
            calls.total,
            calls.exchanges,
            stats_line(&s)
        ),
    ))
}

/// The 2 MiB mapping the device reads and writes at four places.
fn map_2m(env: &Env, eng: &GEngine<'_>, dev: &Device, edu: &Edu, big: PhysAddr) -> Outcome {
    let pv = *eng.platform();
    let dir = DmaDirection::Bidirectional;
    let none = DmaAttrs::empty();
    fill(big, MIB2, SEED);
    let s0 = eng.stats();
    // SAFETY: the buffer is a static of these checks; the filler's ToDevice mapping of the
    // same bytes copies nothing back.
    let bus = unsafe { eng.map_page(dev, big, MIB2, dir, none) }
        .map_err(|e| fmt_line!("map_page({big}, 2 MiB): {e}"))?;
    ensure!(
        eng.stats().bounced_maps == s0.bounced_maps + 1,
        "the 2 MiB buffer was not bounced ({bus})"
    );
    ensure!(
        MASK.covers(bus, MIB2 as u64),
        "{bus}+2 MiB is not under the mask"
    );
    let tlb = tlb_of(pv, bus).ok_or_else(|| fmt_line!("{bus} is not a local frame"))?;
    let chunk = GrowArea::base();
    ensure!(
        tlb == chunk,
        "the 2 MiB bounce is at {tlb}, not the grown chunk {chunk}"
    );
    ensure!(
        pv.is_bus_contiguous(tlb, MIB2 as u64)
            && env.p2m_raw(tlb.frame().as_u64()) << 12 == bus.as_u64(),
        "the bounce {tlb}+2 MiB is not bus-contiguous at {bus}"
    );
    let t0 = edu.transfers.get();
    spots_dma(edu, bus)?;
    // The CPU's buffer is unchanged until the unmap: the device wrote the bounce.
    holds("buffer before unmap", big, MIB2, SEED)?;
    eng.unmap_page(dev, bus, MIB2, dir, none)
        .map_err(|e| fmt_line!("unmap_page({bus}, 2 MiB): {e}"))?;
    spots_hold(big)?;
    let p = crate::checks::virt_of(big);
    // FromDevice: the device writes the bytes it read last at three places of a second
    // 2 MiB mapping; the CPU's buffer gets them only when the unmap copies the bounce back.
    fill(big, MIB2, SEED_OUT);
    // SAFETY: as above.
    let bus_out = unsafe { eng.map_page(dev, big, MIB2, DmaDirection::FromDevice, none) }
        .map_err(|e| fmt_line!("map_page({big}, 2 MiB, FromDevice): {e}"))?;
    ensure!(
        tlb_of(pv, bus_out) == Some(chunk),
        "the FromDevice bounce {bus_out} is not the grown chunk"
    );
    for &at in &OUT {
        edu.write_memory(0, bus_out.as_u64() + at as u64, MAX_TRANSFER)?;
    }
    holds("buffer before the FromDevice unmap", big, MIB2, SEED_OUT)?;
    eng.unmap_page(dev, bus_out, MIB2, DmaDirection::FromDevice, none)
        .map_err(|e| fmt_line!("unmap_page({bus_out}, 2 MiB, FromDevice): {e}"))?;
    let last = SPOTS[3].0;
    for i in 0..MIB2 {
        let want = OUT
            .iter()
            .find(|&&at| (at..at + MAX_TRANSFER).contains(&i))
            .map_or(pattern(SEED_OUT, i), |&at| pattern(SEED, last + i - at));
        // SAFETY: as above.
        let got = unsafe { p.add(i).read_volatile() };
        ensure!(
            got == want,
            "byte {i:#x} after the FromDevice unmap is {got:#x}, expected {want:#x}"
        );
    }
    Ok(fmt_line!(
        "2 MiB at {big} (above the mask) bounced to {bus} (the grown pool, 8 joined segments, \
         bus-contiguous); the device read 4095 bytes at +0x0, +{:#x}, +{:#x}, +{:#x} and wrote \
         them at +{:#x}, +{:#x}, +{:#x}, +{:#x} (Bidirectional), then wrote its last 4095 \
         bytes at +0x0, +{:#x}, +{:#x} of a FromDevice 2 MiB mapping ({} transfers); each \
         time the CPU's buffer unchanged until unmap, then every byte right",
        SPOTS[1].0,
        SPOTS[2].0,
        SPOTS[3].0,
        SPOTS[0].1,
        SPOTS[1].1,
        SPOTS[2].1,
        SPOTS[3].1,
        OUT[1],
        OUT[2],
        edu.transfers.get() - t0
    ))
}

/// The grown pool given back after the quiet period, never while a mapping lives.
fn shrink(env: &Env, eng: &GEngine<'_>, dev: &Device, filler: Option<BusAddr>) -> Outcome {
    let hook = eng.growth().ok_or_else(|| fmt_line!("no growth"))?.hook();
    // While a mapping lives in the grown pool, not even a far-off `now` gives it back.
    let page = PhysAddr::new(phys_of(&raw const BIG).as_u64() + 8192);
    let dir = DmaDirection::ToDevice;
    let none = DmaAttrs::empty();
    // SAFETY: the buffer is a static of these checks, unreferenced while mapped.
    let live = unsafe { eng.map_page(dev, page, 4096, dir, none) }
        .map_err(|e| fmt_line!("map into the grown pool: {e}"))?;
    let busy = [
        eng.reclaim(rdtsc()),
        eng.reclaim(rdtsc().wrapping_add(QUIET * 100)),
    ];
    eng.unmap_page(dev, live, 4096, dir, none)
        .map_err(|e| fmt_line!("unmap: {e}"))?;
    ensure!(
        busy.iter().all(|r| r.removed == 0 && r.remaining == 1),
        "reclaim with a mapping alive: {busy:?}"
    );
    if let Some(bus) = filler {
        eng.unmap_page(dev, bus, MIB2, dir, none)
            .map_err(|e| fmt_line!("unmap of the filler: {e}"))?;
    }
    let chunk = GrowArea::base();
    let pfn0 = chunk.frame().as_u64();
    let b0 = env.p2m_raw(pfn0);
    let pages0 = reservation().map_err(|e| fmt_line!("{e}"))?;
    // Idle from now on: the first call starts the quiet period.
    let t0 = rdtsc();
    let early = eng.reclaim(t0);
    ensure!(
        early.removed == 0 && early.remaining == 1,
        "given back before the quiet period: {early:?}"
    );
    let mut now = rdtsc();
    while now.wrapping_sub(t0) < QUIET {
        core::hint::spin_loop();
        now = rdtsc();
    }
    let c0 = COUNTERS.snapshot();
    let done = eng.reclaim(now);
    let calls = COUNTERS.snapshot().since(c0);
    ensure!(
        done.removed == 1 && done.remaining == 0 && done.error.is_none(),
        "after the quiet period: {done:?}"
    );
    let s = eng
        .growth_stats()
        .ok_or_else(|| fmt_line!("no growth stats"))?;
    ensure!(
        s.pools_removed == 1 && s.live_pools == 0 && s.bytes == 0 && s.peak_bytes == MIB2 as u64,
        "{}",
        stats_line(&s)
    );
    ensure!(
        calls.exchanges == 1,
        "{} exchanges to give back",
        calls.exchanges
    );
    ensure!(
        !hook.used.load(Ordering::Acquire),
        "the hook did not get its pages back"
    );
    let mut moved = 0;
    for i in 0..(MIB2 as u64 >> 12) {
        ensure!(
            env.round_trips(pfn0 + i),
            "chunk page {i} does not round-trip after the give-back"
        );
        moved += u64::from(!(b0..b0 + 512).contains(&env.p2m_raw(pfn0 + i)));
    }
    ensure!(
        moved == 512,
        "{} chunk pages still on the grown frames",
        512 - moved
    );
    let pages1 = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(pages0 == pages1, "reservation {pages0} -> {pages1}");
    // The memory is the kernel's again: usable through the CPU.
    fill(chunk, MIB2, 0x6b);
    holds("given-back chunk", chunk, MIB2, 0x6b)?;
    Ok(fmt_line!(
        "no give-back with a mapping alive (2 reclaims) nor before the quiet period of {QUIET} \
         TSC cycles; after it one reclaim gave the 2 MiB pool back with {} hypercalls ({} \
         exchange): 512 pages off the grown frames from {:#x}, P2M/M2P agree, reservation \
         {pages1} unchanged, the pages back to the hook ({} allocs, {} frees); {}",
        calls.total,
        calls.exchanges,
        b0 << 12,
        hook.allocs.load(Ordering::Relaxed),
        hook.frees.load(Ordering::Relaxed),
        stats_line(&s)
    ))
}
