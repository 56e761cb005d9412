//! Growth and shrinking on real Xen, and a 2 MiB mapping the `edu` device uses.
//!
//! A second engine, beside the checks' main one, starts from a 2 MiB first pool (so that a
//! 2 MiB mapping fills it, and the next map finds it full) and may grow by one 2 MiB chunk of the
//! kernel's pages below the device's 32-bit mask ([`GrowArea`], the [`GrowthHook`]). dom0 is
//! 1:1, so the chunk is bus-contiguous as it is: growing it makes no hypercall (Xen has no
//! `XENMEM_exchange` on arm64) and giving it back none either.
//!
//! - `grow-pool`: a 2 MiB mapping fills the first pool; the next map finds it full and the
//!   engine adds the chunk, at bus = phys below 4 GiB.
//! - `dev-map-2m`: a 2 MiB buffer in dom0's bank above 4 GiB is mapped (bounced into the
//!   grown pool, 8 joined segments); the device reads 4095 bytes at four offsets across it
//!   (0, beyond 256 KiB, past 1 MiB, the last bytes) and writes each at another offset; the
//!   CPU's buffer is unchanged until the unmap, then holds the device's bytes there and its
//!   own everywhere else.
//! - `shrink-pool`: no give-back while a mapping lives or before the quiet period (10 ms of
//!   the generic timer, `CNTVCT_EL0`); after it `reclaim` gives the chunk back to the hook.
//! - `dev-map-transient`: a third engine, again from a 2 MiB first pool but growing by
//!   256 KiB chunks with transient pools on: with the first pool full, a 2 MiB mapping is
//!   longer than any chunk holds, so the engine grows a 2 MiB pool for it alone (the chunk);
//!   the device reads and writes it as in `dev-map-2m`, and the unmap gives the pool back to
//!   the hook at once, with no `reclaim`.

use super::checks::{Engine, Plat};
use super::edu::Edu;
use super::mem::IdentityMemory;
use super::say;
use aarch64_dom0::cpu;
use aarch64_dom0::edu::DMA_MASK;
use aarch64_dom0::pattern;
use aarch64_dom0::report::Report;
use core::fmt::Write;
use core::ptr::addr_of;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use swiotlb_xen::init::{InitError, InitOptions, init};
use swiotlb_xen::swiotlb_core::engine::{Growth, GrowthHook, GrowthLimits, GrowthStats};
use swiotlb_xen::{
    BusAddr, Device, DmaAttrs, DmaDirection, DmaEngine, NoPageAllocator, PhysAddr, Slot,
};

type R = Report<super::XenConsole>;

/// The checks, in order (each reported as failed when the device or memory is missing).
pub(super) const NAMES: [&str; 4] = [
    "grow-pool",
    "dev-map-2m",
    "shrink-pool",
    "dev-map-transient",
];

/// 2 MiB: the first pool, the growth chunk and the device's buffer.
const MIB2: usize = 2 << 20;
/// The chunk's order (2 MiB = 4 KiB << 9).
const ORDER: u32 = 9;
/// Where in dom0's bank above 4 GiB the 2 MiB buffer lies: past the device and virtio
/// checks' buffers (the first 1 MiB + 16 KiB) and the `pool_above_mask` mutant's pool (1 to
/// 2 MiB in).
const HIGH_OFFSET: u64 = 4 << 20;

/// A 2 MiB-aligned 2 MiB block of `.bss` (dom0's first bank, below 4 GiB).
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
/// The quiet period, in microseconds of the generic timer (reclaim's `now` is [`now_us`]).
const QUIET_US: u64 = 10_000;
/// The growth limits: one 2 MiB chunk, given back after 10 ms idle.
const LIMITS: GrowthLimits = GrowthLimits::new(MIB2 as u64, MIB2)
    .with_max_pools(1)
    .with_quiet_period(QUIET_US);
/// The growth state (about 263 KiB: 16 pool entries with their areas), a static as a kernel
/// keeps it (`Growth::new` is `const`), not on the stack.
static GROWTH: Growth<GrowArea, IdentityMemory> = Growth::new(GrowArea::new(&CHUNK_SLOTS), LIMITS);
/// The transient engine's limits: 256 KiB chunks (a 2 MiB mapping is longer than one holds),
/// transient pools on, at most one pool of at most 2 MiB.
const TRANSIENT_LIMITS: GrowthLimits = GrowthLimits::new(MIB2 as u64, 256 << 10)
    .with_max_pools(1)
    .with_transient(true)
    .with_quiet_period(QUIET_US);
/// The transient engine's growth state.
static TRANSIENT: Growth<GrowArea, IdentityMemory> =
    Growth::new(GrowArea::new(&TRANSIENT_SLOTS), TRANSIENT_LIMITS);

/// The generic timer (`CNTVCT_EL0`) in microseconds.
fn now_us() -> u64 {
    // CAST: the quotient of a u64 count by a frequency of at least 1 Hz fits u64 for
    // centuries of uptime.
    (u128::from(cpu::counter()) * 1_000_000 / u128::from(cpu::counter_hz().max(1))) as u64
}

/// The kernel's page allocator for growth: one 2 MiB block ([`CHUNK`], shared by the two
/// growth engines, which run one after the other) and one slot array.
#[derive(Debug)]
pub(super) struct GrowArea {
    used: &'static AtomicBool,
    slots: &'static [Slot],
    slots_given: AtomicBool,
    allocs: AtomicU32,
    frees: AtomicU32,
}

impl GrowArea {
    /// The block not handed out yet, and `slots` for the pool grown from it.
    const fn new(slots: &'static [Slot]) -> Self {
        Self {
            used: &CHUNK_USED,
            slots,
            slots_given: AtomicBool::new(false),
            allocs: AtomicU32::new(0),
            frees: AtomicU32::new(0),
        }
    }
}

fn chunk() -> u64 {
    addr_of!(CHUNK) as u64
}

// SAFETY: the one block is handed out once at a time (a compare-exchange), aligned to its
// 2 MiB size, in dom0's RAM (which `IdentityMemory` reaches); the slot storage is a static
// handed out once.
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
        .then(|| PhysAddr::new(chunk()))
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        self.frees.fetch_add(1, Ordering::Relaxed);
        if phys.as_u64() == chunk() && order == ORDER {
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
    &'a Plat,
    IdentityMemory,
    &'static [Slot],
    NoPageAllocator,
    &'a Growth<GrowArea, IdentityMemory>,
>;

/// A growth engine: a 2 MiB first pool on [`FIRST`] (1:1, below the mask) on `engine`'s
/// platform, growing with `growth`.
///
/// # Safety
///
/// No other live engine has its pool on `FIRST`.
unsafe fn growth_engine<'a>(
    engine: &'a Engine,
    growth: &'a Growth<GrowArea, IdentityMemory>,
) -> Result<GEngine<'a>, InitError> {
    // SAFETY: the first pool's memory is a static given to this pool alone (the caller's
    // promise); IdentityMemory reaches it, the chunk and the buffer.
    let (eng, _) = unsafe {
        init(
            engine.platform(),
            IdentityMemory,
            PhysAddr::new(addr_of!(FIRST) as u64),
            MIB2,
            &FIRST_SLOTS[..],
            NoPageAllocator,
            InitOptions::default().with_min_bytes(MIB2),
        )
    }?;
    Ok(eng.with_growth(growth))
}

/// The four 4095-byte ranges the device reads (from the start, beyond 256 KiB, past 1 MiB,
/// the last bytes) and, for each, where it writes them back.
const SPOTS: [(usize, usize); 4] = [
    (0, (512 << 10) + 7),
    ((300 << 10) + 100, (768 << 10) + 3000),
    ((1 << 20) + 2053, (1536 << 10) + 1),
    (MIB2 - MAX, MIB2 - 3 * MAX - 10),
];
/// The most bytes per `edu` command (QEMU 7.2 refuses a full 4096).
const MAX: usize = 4095;
/// The buffer's pattern.
const SEED: usize = 41;
/// Where the device writes into the FromDevice 2 MiB mapping.
const OUT: [usize; 3] = [0, (1 << 20) + 333, MIB2 - MAX];
/// The buffer's pattern under the FromDevice mapping.
const SEED_OUT: usize = 45;

fn byte_at(addr: u64) -> u8 {
    // SAFETY: the callers read dom0's own memory, mapped 1:1 and not written concurrently.
    unsafe { core::ptr::with_exposed_provenance::<u8>(addr as usize).read_volatile() }
}

fn fill(addr: u64, len: usize, seed: usize) {
    for i in 0..len {
        // SAFETY: the callers pass dom0's own buffers, unreferenced and not mapped for DMA
        // while the CPU writes them.
        unsafe {
            core::ptr::with_exposed_provenance_mut::<u8>(addr as usize + i)
                .write_volatile(pattern::byte(seed, i));
        }
    }
}

/// The first byte of `[addr, addr + len)` that does not hold `pattern::byte(seed, from + i)`.
fn mismatch(addr: u64, len: usize, seed: usize, from: usize) -> Option<usize> {
    (0..len).find(|&i| byte_at(addr + i as u64) != pattern::byte(seed, from + i))
}

fn stats(s: Option<GrowthStats>) -> GrowthStats {
    s.unwrap_or_default()
}

/// Runs `grow-pool`, `dev-map-2m`, `shrink-pool` and `dev-map-transient` with the device (if
/// found) and the bank above the mask at `high`.
pub(super) fn run(r: &mut R, engine: &Engine, edu: Option<&mut Edu>, high: Option<u64>) {
    let fail = |r: &mut R, why: &str| {
        for name in NAMES {
            r.check(name, false, format_args!("{why}"));
        }
    };
    let (Some(edu), Some(high)) = (edu, high) else {
        return fail(r, "no device or no dom0 RAM above the mask");
    };
    let big = high + HIGH_OFFSET;
    if !super::mem::in_ram(big, MIB2 as u64) {
        return fail(r, "the bank above the mask is too small");
    }
    let quiet = QUIET_US;
    // SAFETY: no other engine's pool is on `FIRST` (this is the first growth engine).
    let eng = match unsafe { growth_engine(engine, &GROWTH) } {
        Ok(eng) => eng,
        Err(e) => {
            say!("    init of the 2 MiB first pool: {e}");
            return fail(r, "init of the 2 MiB first pool failed");
        }
    };
    let Some(dev) = swiotlb_xen::DmaMask::try_from_raw(DMA_MASK).map(Device::new) else {
        return fail(r, "no such mask");
    };
    let filler = grow_pool(r, &eng, &dev, big);
    map_2m(r, &eng, &dev, edu, big, filler.is_some());
    shrink(r, &eng, &dev, big, filler, quiet);
    drop(eng);
    transient(r, engine, &dev, edu, big);
}

/// The device reads 4095 bytes at each of [`SPOTS`]' first offsets of the mapping at `b`
/// and writes them at the second; whether every command succeeded.
fn spots_dma(edu: &mut Edu, b: BusAddr) -> bool {
    SPOTS.iter().all(|&(from, to)| {
        edu.read_memory(b.as_u64() + from as u64, 0, MAX).is_ok()
            && edu.write_memory(0, b.as_u64() + to as u64, MAX).is_ok()
    })
}

/// After the unmap of a [`spots_dma`] mapping of `big` (filled with [`SEED`]): the first
/// byte that is not the device's at a second offset or the CPU's elsewhere.
fn spots_bad(big: u64) -> Option<usize> {
    (0..MIB2).find(|&i| {
        let want = SPOTS
            .iter()
            .find(|&&(_, to)| (to..to + MAX).contains(&i))
            .map_or(pattern::byte(SEED, i), |&(from, to)| {
                pattern::byte(SEED, from + i - to)
            });
        byte_at(big + i as u64) != want
    })
}

/// `dev-map-transient`: a new 2 MiB first pool (the memory of the last, whose engine is
/// gone) with [`TRANSIENT`]'s growth, filled; a 2 MiB Bidirectional map gets a transient
/// pool of its own (the chunk: 1:1, no hypercall), the device reads and writes it at four
/// places, and the unmap copies back and gives the pool back to the hook at once.
fn transient(r: &mut R, engine: &Engine, dev: &Device, edu: &mut Edu, big: u64) {
    const NAME: &str = "dev-map-transient";
    // SAFETY: the engine of `grow-pool`, whose pool was on `FIRST`, is gone.
    let eng = match unsafe { growth_engine(engine, &TRANSIENT) } {
        Ok(eng) => eng,
        Err(e) => {
            say!("    init of the 2 MiB first pool: {e}");
            r.check(
                NAME,
                false,
                format_args!("init of the 2 MiB first pool failed"),
            );
            return;
        }
    };
    let max = eng.max_mapping_size(dev);
    let none = DmaAttrs::empty();
    let (to_dev, dir) = (DmaDirection::ToDevice, DmaDirection::Bidirectional);
    fill(big, MIB2, SEED);
    // SAFETY: as in `grow_pool`.
    let filler = unsafe { eng.map_page(dev, PhysAddr::new(big), MIB2, to_dev, none) };
    // SAFETY: as above; the filler's ToDevice mapping of the same bytes copies nothing back.
    let res = unsafe { eng.map_page(dev, PhysAddr::new(big), MIB2, dir, none) };
    if let Err(e) = &res {
        say!("    map_page({big:#x}, 2 MiB) on a full first pool: {e}");
    }
    let grown = stats(eng.growth_stats());
    let bus = res.ok();
    let c = chunk();
    let in_chunk = bus.is_some_and(|b| b.as_u64() == c);
    let moved = bus.filter(|_| in_chunk).is_some_and(|b| spots_dma(edu, b));
    let untouched = mismatch(big, MIB2, SEED, 0).is_none();
    let unmapped = bus.is_some_and(|b| eng.unmap_page(dev, b, MIB2, dir, none).is_ok());
    let bad = spots_bad(big);
    let after = stats(eng.growth_stats());
    let returned = !CHUNK_USED.load(Ordering::Acquire);
    let filler_unmapped = filler
        .as_ref()
        .is_ok_and(|&b| eng.unmap_page(dev, b, MIB2, to_dev, none).is_ok());
    r.check(
        NAME,
        max == MIB2
            && filler_unmapped
            && grown.transient_added == 1
            && grown.transient_live == 1
            && grown.bytes == MIB2 as u64
            && in_chunk
            && moved
            && untouched
            && unmapped
            && bad.is_none()
            && after.transient_live == 0
            && after.pools_removed == 1
            && after.bytes == 0
            && returned,
        format_args!(
            "first pool 2 MiB and full, 256 KiB chunks (max_mapping_size {max:#x}): a 2 MiB \
             Bidirectional map -> {bus:?} (the transient pool at {c:#x}: {in_chunk}; transient \
             added {}, live {}, {} KiB); the device read and wrote it at four places (ok: \
             {moved}), the CPU's buffer unchanged until unmap: {untouched}; after the unmap the \
             first wrong byte: {bad:?}, transient live {}, pools removed {}, {} KiB, the pages \
             back to the hook with no reclaim: {returned}",
            grown.transient_added,
            grown.transient_live,
            grown.bytes >> 10,
            after.transient_live,
            after.pools_removed,
            after.bytes >> 10
        ),
    );
}

/// Fills the first pool with a 2 MiB mapping, then maps one page more: the engine grows.
/// Returns the filler's bus address (still mapped).
fn grow_pool(r: &mut R, eng: &GEngine<'_>, dev: &Device, big: u64) -> Option<BusAddr> {
    let first = addr_of!(FIRST) as u64;
    let max = eng.max_mapping_size(dev);
    fill(big, MIB2, SEED);
    let dir = DmaDirection::ToDevice;
    let none = DmaAttrs::empty();
    // SAFETY: the buffer is dom0's RAM above the mask, used only by these checks and
    // unreferenced while mapped.
    let filler = unsafe { eng.map_page(dev, PhysAddr::new(big), MIB2, dir, none) };
    let used = eng.pool().map_or(0, |p| p.stats().used);
    let filled = filler
        .as_ref()
        .is_ok_and(|b| b.as_u64() >= first && b.as_u64() < first + MIB2 as u64)
        && used == MIB2 / 2048;
    let before = stats(eng.growth_stats());
    let t0 = cpu::counter();
    // SAFETY: as above (a ToDevice mapping of the same bytes: nothing is copied back).
    let small = unsafe { eng.map_page(dev, PhysAddr::new(big + 4096), 4096, dir, none) };
    let ticks = cpu::counter() - t0;
    let s = stats(eng.growth_stats());
    let c = chunk();
    let in_chunk = small
        .as_ref()
        .is_ok_and(|b| b.as_u64() >= c && b.as_u64() + 4096 <= c + MIB2 as u64);
    let copied = in_chunk
        && small
            .as_ref()
            .is_ok_and(|b| mismatch(b.as_u64(), 4096, SEED, 4096).is_none());
    let unmapped = small
        .as_ref()
        .is_ok_and(|&b| eng.unmap_page(dev, b, 4096, dir, none).is_ok());
    if let Err(e) = &small {
        say!("    map on a full first pool: {e}");
    }
    let ok = max == MIB2
        && filled
        && before.pools_added == 0
        && s.pools_added == 1
        && s.live_pools == 1
        && s.bytes == MIB2 as u64
        && c + MIB2 as u64 - 1 <= DMA_MASK
        && copied
        && unmapped;
    r.check(
        "grow-pool",
        ok,
        format_args!(
            "first pool 2 MiB at {first:#x} (max_mapping_size {max:#x}), full with a 2 MiB map \
             ({used} slots, filler {filler:?}); a 4 KiB map grew a 2 MiB pool at {c:#x} \
             (1:1, bus = phys, under the mask, no hypercall) in {ticks} timer ticks: {small:?}, \
             the CPU's bytes there: {copied}, unmapped: {unmapped}; pools added {}, live {}, \
             {} KiB (peak {} KiB), refused {}, failed {}",
            s.pools_added,
            s.live_pools,
            s.bytes >> 10,
            s.peak_bytes >> 10,
            s.refused,
            s.failed
        ),
    );
    filler.ok().filter(|_| filled)
}

/// The 2 MiB mapping the device reads and writes at four places.
fn map_2m(r: &mut R, eng: &GEngine<'_>, dev: &Device, edu: &mut Edu, big: u64, grown: bool) {
    let dir = DmaDirection::Bidirectional;
    let none = DmaAttrs::empty();
    fill(big, MIB2, SEED);
    let s0 = eng.stats();
    // SAFETY: as in `grow_pool`; the filler's ToDevice mapping of the same bytes copies
    // nothing back.
    let res = unsafe { eng.map_page(dev, PhysAddr::new(big), MIB2, dir, none) };
    if let Err(e) = &res {
        say!("    map_page({big:#x}, 2 MiB): {e}");
    }
    let bus = res.ok();
    let c = chunk();
    let bounced = eng.stats().bounced_maps == s0.bounced_maps + 1;
    let in_chunk = bus.is_some_and(|b| b.as_u64() == c);
    let t0 = edu.transfers;
    let moved = bus.filter(|_| in_chunk).is_some_and(|b| spots_dma(edu, b));
    let untouched = mismatch(big, MIB2, SEED, 0).is_none();
    let unmapped = bus.is_some_and(|b| eng.unmap_page(dev, b, MIB2, dir, none).is_ok());
    let bad = spots_bad(big);
    // FromDevice: the device writes the bytes it read last at three places of a second
    // 2 MiB mapping; the CPU's buffer gets them only when the unmap copies the bounce back.
    fill(big, MIB2, SEED_OUT);
    // SAFETY: as above.
    let res = unsafe {
        eng.map_page(
            dev,
            PhysAddr::new(big),
            MIB2,
            DmaDirection::FromDevice,
            none,
        )
    };
    if let Err(e) = &res {
        say!("    map_page({big:#x}, 2 MiB, FromDevice): {e}");
    }
    let out = res.ok().filter(|b| b.as_u64() == c);
    let mut wrote = out.is_some() && moved;
    if let Some(b) = out {
        for &at in &OUT {
            wrote = wrote && edu.write_memory(0, b.as_u64() + at as u64, MAX).is_ok();
        }
    }
    let out_untouched = mismatch(big, MIB2, SEED_OUT, 0).is_none();
    let out_unmapped = out.is_some_and(|b| {
        eng.unmap_page(dev, b, MIB2, DmaDirection::FromDevice, none)
            .is_ok()
    });
    let last = SPOTS[3].0;
    let out_bad = (0..MIB2).find(|&i| {
        let want = OUT
            .iter()
            .find(|&&at| (at..at + MAX).contains(&i))
            .map_or(pattern::byte(SEED_OUT, i), |&at| {
                pattern::byte(SEED, last + i - at)
            });
        byte_at(big + i as u64) != want
    });
    r.check(
        "dev-map-2m",
        grown
            && bounced
            && in_chunk
            && moved
            && untouched
            && unmapped
            && bad.is_none()
            && wrote
            && out_untouched
            && out_unmapped
            && out_bad.is_none(),
        format_args!(
            "2 MiB at {big:#x} (above the mask) -> {bus:?} (bounced: {bounced}, the grown pool, \
             8 joined segments: {in_chunk}); the device read 4095 bytes at +0x0, +{:#x}, \
             +{:#x}, +{:#x} and wrote them at +{:#x}, +{:#x}, +{:#x}, +{:#x} ({} commands, all \
             ok: {moved}); the CPU's buffer unchanged until unmap: {untouched}; after it the \
             first wrong byte: {bad:?}; then its last 4095 bytes written at +0x0, +{:#x}, \
             +{:#x} of a FromDevice 2 MiB mapping {out:?} (ok: {wrote}), the buffer unchanged \
             until unmap: {out_untouched}, after it the first wrong byte: {out_bad:?}",
            SPOTS[1].0,
            SPOTS[2].0,
            SPOTS[3].0,
            SPOTS[0].1,
            SPOTS[1].1,
            SPOTS[2].1,
            SPOTS[3].1,
            edu.transfers - t0,
            OUT[1],
            OUT[2]
        ),
    );
}

/// The grown pool given back after the quiet period, never while a mapping lives.
fn shrink(
    r: &mut R,
    eng: &GEngine<'_>,
    dev: &Device,
    big: u64,
    filler: Option<BusAddr>,
    quiet: u64,
) {
    let Some(hook) = eng.growth().map(Growth::hook) else {
        r.check("shrink-pool", false, format_args!("no growth"));
        return;
    };
    let dir = DmaDirection::ToDevice;
    let none = DmaAttrs::empty();
    // SAFETY: as in `grow_pool`.
    let live = unsafe { eng.map_page(dev, PhysAddr::new(big + 8192), 4096, dir, none) };
    let busy = [eng.reclaim(now_us()), eng.reclaim(now_us() + quiet * 100)];
    let kept = live.is_ok() && busy.iter().all(|b| b.removed == 0 && b.remaining == 1);
    let unmapped = live.is_ok_and(|b| eng.unmap_page(dev, b, 4096, dir, none).is_ok())
        && filler.is_some_and(|b| eng.unmap_page(dev, b, MIB2, dir, none).is_ok());
    let t0 = now_us();
    let early = eng.reclaim(t0);
    let mut now = now_us();
    while now - t0 < quiet {
        core::hint::spin_loop();
        now = now_us();
    }
    let done = eng.reclaim(now);
    let s = stats(eng.growth_stats());
    let returned = !hook.used.load(Ordering::Acquire);
    fill(chunk(), MIB2, 43);
    let usable = mismatch(chunk(), MIB2, 43, 0).is_none();
    r.check(
        "shrink-pool",
        kept && unmapped
            && early.removed == 0
            && early.remaining == 1
            && done.removed == 1
            && done.remaining == 0
            && done.error.is_none()
            && s.pools_removed == 1
            && s.live_pools == 0
            && s.bytes == 0
            && s.peak_bytes == MIB2 as u64
            && returned
            && usable,
        format_args!(
            "with a mapping alive no give-back ({}, {} removed); idle: {} removed before the \
             quiet period of {quiet} us (10 ms), {} after it ({} left, error {:?}); the \
             pages back to the hook: {returned} ({} allocs, {} frees), usable again: {usable}; \
             pools added {}, removed {}, live {}, {} KiB (peak {} KiB)",
            busy[0].removed,
            busy[1].removed,
            early.removed,
            done.removed,
            done.remaining,
            done.error,
            hook.allocs.load(Ordering::Relaxed),
            hook.frees.load(Ordering::Relaxed),
            s.pools_added,
            s.pools_removed,
            s.live_pools,
            s.bytes >> 10,
            s.peak_bytes >> 10
        ),
    );
}
