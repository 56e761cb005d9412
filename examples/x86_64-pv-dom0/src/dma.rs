//! The DMA checks: the bounce pool made machine-contiguous with real exchanges, streaming
//! maps that straddle machine discontinuities or lie above a device's mask, scatter-gather,
//! coherent allocations, and the engine's error paths.

use core::sync::atomic::{AtomicU64, Ordering};

use swiotlb_xen::init::{self, InitError, InitOptions, InitReport};
use swiotlb_xen::swiotlb_core::Error;
use swiotlb_xen::x86_pv::X86PvPlatform;
use swiotlb_xen::{
    Bfn, BounceReason, BusAddr, Device, DmaAttrs, DmaDirection, DmaEngine, DmaError, DmaMask,
    NoPageAllocator, Pfn, PhysAddr, Platform, PlatformError, SgEntry, Slot,
};

use crate::checks::{
    Block64K, Env, KernelMemory, Outcome, Pv, Report, ensure, phys_of, reservation, virt_of,
};
use crate::console::Line;
use crate::edu::{DMA_MASK_BITS, Edu};
use crate::fmt_line;
use crate::hyp::{COUNTERS, CountedByVa, rdtsc};
use crate::pages::{ALLOCATOR, Pages};

/// The bounce pool's size: 4 MiB, 2048 slots of 2 KiB.
pub const POOL_BYTES: usize = 4 << 20;
/// The pool's slots.
const NSLABS: usize = POOL_BYTES / 2048;

/// The pool's memory, aligned to its size so that the facade makes it contiguous with one
/// exchange (order 10).
#[repr(C, align(4194304))]
struct PoolArea([u8; POOL_BYTES]);

/// The bounce pool, reached only through the pool's `KernelMemory`.
static mut POOL: PoolArea = PoolArea([0; POOL_BYTES]);
/// The pool's slot storage.
static SLOTS: [Slot; NSLABS] = [const { Slot::new() }; NSLABS];
/// The size of the pool the refused initialisation tries.
const SMALL_POOL_BYTES: usize = 256 << 10;
/// The region of the refused initialisation, one segment.
#[repr(C, align(262144))]
struct SmallPool([u8; SMALL_POOL_BYTES]);
/// The refused pool's memory.
static mut SMALL_POOL: SmallPool = SmallPool([0; SMALL_POOL_BYTES]);
/// The refused pool's slots.
static SMALL_SLOTS: [Slot; SMALL_POOL_BYTES / 2048] =
    [const { Slot::new() }; SMALL_POOL_BYTES / 2048];
/// The buffers the checks map: 16 pages.
static mut BUF: Block64K<65536> = Block64K([0; 65536]);

/// The engine the checks use.
pub type Engine = DmaEngine<Pv, KernelMemory, &'static [Slot], &'static Pages>;

/// The device's DMA mask (the `edu` device's).
pub const MASK: DmaMask = match DmaMask::from_bits(DMA_MASK_BITS) {
    Some(m) => m,
    None => panic!("no such mask"),
};
/// The first bus address above the device's mask.
const MASK_END: u64 = 1 << DMA_MASK_BITS;

/// Byte `i` of the pattern `seed`.
pub fn pattern(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i as u8).wrapping_mul(7)) ^ (i >> 8) as u8
}

/// Writes pattern `seed` over the `len` bytes at `phys`, through the CPU.
pub fn fill(phys: PhysAddr, len: usize, seed: u8) {
    let p = virt_of(phys);
    for i in 0..len {
        // SAFETY: the checks pass only ranges of the kernel's mapped statics that no
        // reference covers and no one else uses at the time.
        unsafe { p.add(i).write_volatile(pattern(seed, i)) };
    }
}

/// The first byte of `phys..phys + len` that does not hold pattern `seed`.
fn mismatch(phys: PhysAddr, len: usize, seed: u8) -> Option<usize> {
    let p = virt_of(phys);
    // SAFETY: as in `fill`.
    (0..len).find(|&i| unsafe { p.add(i).read_volatile() } != pattern(seed, i))
}

/// Checks that the bytes at `phys` hold pattern `seed`.
pub fn holds(what: &str, phys: PhysAddr, len: usize, seed: u8) -> Result<(), Line> {
    match mismatch(phys, len, seed) {
        None => Ok(()),
        Some(i) => Err(fmt_line!("{what} at {phys}: byte {i} of {len} differs")),
    }
}

/// The pseudo-physical address a bus address belongs to, through the M2P round trip.
fn bus_to_phys(pv: &Pv, bus: BusAddr) -> Option<PhysAddr> {
    let pfn = pv.bfn_to_local_pfn(bus.frame())?;
    pfn.start().checked_add(bus.frame_offset())
}

/// Checks a bounced mapping: the bus range is under `mask`, machine-contiguous in the pool,
/// and every frame of it maps back (M2P) to the pool page the slot is on. Returns the
/// bounce buffer's pseudo-physical address.
pub fn check_bounce(
    eng: &Engine,
    bus: BusAddr,
    len: usize,
    mask: DmaMask,
) -> Result<PhysAddr, Line> {
    let pv = eng.platform();
    ensure!(
        mask.covers(bus, len as u64),
        "{bus}+{len:#x} not under mask {:#x}",
        mask.as_u64()
    );
    let tlb = bus_to_phys(pv, bus).ok_or_else(|| fmt_line!("{bus} is not a local frame"))?;
    let pool = eng.pool().ok_or_else(|| fmt_line!("no pool"))?;
    ensure!(
        pool.contains(tlb),
        "{bus} translates to {tlb}, outside the pool"
    );
    ensure!(
        pv.is_bus_contiguous(tlb, len as u64),
        "bounce {tlb}+{len:#x} not machine-contiguous"
    );
    let frames = (bus.frame_offset() + len as u64).div_ceil(4096);
    for i in 0..frames {
        let b = Bfn::new(bus.frame().as_u64() + i);
        let want = Pfn::new(tlb.frame().as_u64() + i);
        ensure!(
            pv.bfn_to_local_pfn(b) == Some(want) && pv.pfn_to_bfn(want) == Some(b),
            "bus frame {b} does not round-trip to {want}"
        );
    }
    Ok(tlb)
}

/// Runs the DMA checks, consuming the platform (the engine owns it).
pub fn run(
    env: &Env,
    pv: Pv,
    edu: Option<&Edu>,
    virtio: Option<crate::virtio::Probe>,
    report: &mut Report,
) {
    let (eng, init) = match pool_init(env, pv) {
        Ok((eng, init, details)) => {
            report.record("pool-init", Ok(details));
            (eng, init)
        }
        Err(details) => {
            report.record("pool-init", Err(details));
            return;
        }
    };
    report.record("map-straddle", map_straddle(env, &eng));
    report.record("map-above-mask", map_above_mask(env, &eng));
    report.record("map-sg", map_sg(&eng));
    report.record("coherent", coherent(env, &eng));
    report.record("bad-input-engine", bad_input_engine(&eng));
    report.record("pool-init-refused", pool_init_refused(env, &eng));
    crate::devdma::run(env, &eng, edu, report);
    crate::virtio::run(env, &eng, virtio, report);
    crate::grow::run(env, eng.platform(), edu, report);
    let pool = init.phys;
    let (pv, _, _) = eng.into_parts();
    report.record("pool-release", pool_release(env, &pv, &init));
    report.record("linux-fixup", linux_fixup(env, pool));
    report.record("order-10", order_10(env, &pv, pool));
}

/// Makes the pool machine-contiguous below the device's mask and builds the engine over it, with the
/// facade's initialisation policy (`swiotlb_xen::init`).
fn pool_init(env: &Env, pv: Pv) -> Result<(Engine, InitReport, Line), Line> {
    let pool_phys = phys_of(&raw const POOL);
    let pages0 = reservation().map_err(|e| fmt_line!("{e}"))?;
    let c0 = COUNTERS.snapshot();
    let t0 = rdtsc();
    // SAFETY: the pool's memory is a static given to the pool alone; the image map reaches
    // it, every buffer the checks map and every coherent page, at the platform's
    // pseudo-physical addresses; the pool's translation changes only through `init`.
    let (eng, init) = unsafe {
        init::init(
            pv,
            KernelMemory::new(env.low),
            pool_phys,
            POOL_BYTES,
            &SLOTS[..],
            &ALLOCATOR,
            InitOptions::default().with_max_address_bits(DMA_MASK_BITS),
        )
    }
    .map_err(|e| fmt_line!("swiotlb_xen::init::init: {e}"))?;
    let cycles = rdtsc().wrapping_sub(t0);
    let calls = COUNTERS.snapshot().since(c0);
    OURS.0.store(calls.total, Ordering::Relaxed);
    OURS.1.store(cycles, Ordering::Relaxed);
    ensure!(
        init.bytes == POOL_BYTES && init.nslabs == NSLABS && init.halvings == 0,
        "init built {:#x} bytes, {} slots, {} halvings",
        init.bytes,
        init.nslabs,
        init.halvings
    );
    let pages1 = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(pages0 == pages1, "reservation {pages0} -> {pages1}");
    // Every 256 KiB segment machine-contiguous, below the mask, and M2P-consistent.
    let pfn0 = pool_phys.frame().as_u64();
    let mut top = 0;
    for seg in 0..POOL_BYTES / (256 << 10) {
        let first = pfn0 + (seg as u64) * 64;
        let b0 = env.p2m_raw(first);
        for i in 0..64 {
            ensure!(
                env.p2m_raw(first + i) == b0 + i && env.m2p_raw(b0 + i) == first + i,
                "segment {seg}: page {i} on frame {:#x}, expected {:#x}",
                env.p2m_raw(first + i),
                b0 + i
            );
        }
        top = top.max((b0 + 64) << 12);
    }
    ensure!(
        top <= MASK_END,
        "pool ends at bus {top:#x}, above the 2^{DMA_MASK_BITS} mask"
    );
    let bus_top = eng.pool_bus_top().map_or(0, BusAddr::as_u64);
    ensure!(
        bus_top + 1 == top,
        "pool_bus_top {bus_top:#x}, the P2M says {:#x}",
        top - 1
    );
    let device = Device::new(MASK);
    ensure!(
        eng.dma_supported(&device, MASK),
        "dma_supported({DMA_MASK_BITS} bits) is false"
    );
    ensure!(
        init.bus_top.as_u64() == bus_top,
        "InitReport bus_top {}, engine {bus_top:#x}",
        init.bus_top
    );
    let mib = (POOL_BYTES >> 20) as u64;
    // Each chunk as order/address bits ("-" when kept as it was).
    let mut chunks = Line::new();
    for c in &init.chunks {
        let sep = if chunks.is_empty() { "" } else { " " };
        let bits = c.address_bits.map_or(fmt_line!("-"), |b| fmt_line!("{b}"));
        let _ = chunks.try_push_str(&fmt_line!("{sep}{}/{bits}", c.order));
    }
    Ok((
        eng,
        init.clone(),
        fmt_line!(
            "{mib} MiB pool at {pool_phys} (above the mask at boot) through swiotlb_xen::init \
             (max_address_bits {DMA_MASK_BITS}): {} chunk(s) [order/bits: {chunks}], {} init create calls ({} refused), every 256 KiB \
             segment machine-contiguous and M2P-consistent, bus top {bus_top:#x}, reservation \
             unchanged; {} hypercalls ({} exchanges, {} multicalls) = {}.{:02} per MiB in \
             {cycles} TSC cycles (Linux's scheme: linux-fixup)",
            init.chunks.len(),
            init.create_calls,
            init.create_failures,
            calls.total,
            calls.exchanges,
            calls.multicalls,
            calls.total / mib,
            (calls.total * 100 / mib) % 100,
        ),
    ))
}

/// The facade's initialisation when Xen has no memory below the limit: a 256 KiB pool that
/// must lie below 2^20, where dom0 gets nothing. Every exchange is refused; the error names
/// the last one, and the region is as before.
fn pool_init_refused(env: &Env, eng: &Engine) -> Outcome {
    let region = phys_of(&raw const SMALL_POOL);
    let pfn0 = region.frame().as_u64();
    let before: [u64; 64] = core::array::from_fn(|i| env.p2m_raw(pfn0 + i as u64));
    // The engine's platform, borrowed (`&P` is a platform too).
    let pv = eng.platform();
    let options = InitOptions::default()
        .with_min_bytes(SMALL_POOL_BYTES)
        .with_max_address_bits(20);
    let c0 = COUNTERS.snapshot();
    // SAFETY: the small pool is a static only this check uses.
    let r = unsafe {
        init::init(
            pv,
            KernelMemory::new(env.low),
            region,
            SMALL_POOL_BYTES,
            &SMALL_SLOTS[..],
            NoPageAllocator,
            options,
        )
    };
    let calls = COUNTERS.snapshot().since(c0);
    let e = match r {
        Err(
            e @ InitError::Exhausted {
                source: PlatformError::Hypercall { op, errno },
                ..
            },
        ) if op == "XENMEM_exchange" && errno == 12 => e,
        Err(e) => {
            return Err(fmt_line!(
                "expected Exhausted by XENMEM_exchange's ENOMEM (12), got `{e}`"
            ));
        }
        Ok((_, report)) => return Err(fmt_line!("Xen gave memory below 1 MiB: {report:?}")),
    };
    let after: [u64; 64] = core::array::from_fn(|i| env.p2m_raw(pfn0 + i as u64));
    ensure!(before == after, "the region's frames changed");
    ensure!(
        (0..64).all(|i| env.round_trips(pfn0 + i)),
        "M2P inconsistent after the refusal"
    );
    fill(region, SMALL_POOL_BYTES, 0x3d);
    holds("refused pool", region, SMALL_POOL_BYTES, 0x3d)?;
    Ok(fmt_line!(
        "256 KiB below 2^20: `{e}` after {} exchanges; frames unchanged, M2P consistent, \
         memory usable",
        calls.exchanges
    ))
}

/// Tears the engine down and gives the pool's exchanged chunks back
/// (`swiotlb_xen::init::release`): nothing leaked, the tables consistent.
fn pool_release(env: &Env, pv: &Pv, init: &InitReport) -> Outcome {
    let pool_phys = init.phys;
    let pfn0 = pool_phys.frame().as_u64();
    let pages0 = reservation().map_err(|e| fmt_line!("{e}"))?;
    let c0 = COUNTERS.snapshot();
    // SAFETY: the engine and its pool are gone (taken apart by the caller); nothing uses the
    // pool's memory.
    unsafe { init::release(pv, init) }.map_err(|e| fmt_line!("release: {e}"))?;
    let calls = COUNTERS.snapshot().since(c0);
    let frames = (POOL_BYTES / 4096) as u64;
    let mut still = 0;
    for i in 0..frames {
        ensure!(
            env.round_trips(pfn0 + i),
            "pool page {i} does not round-trip after release"
        );
        if init.chunks.iter().any(|c| {
            (c.bus.frame().as_u64()..c.bus.frame().as_u64() + (1 << c.order))
                .contains(&env.p2m_raw(pfn0 + i))
        }) {
            still += 1;
        }
    }
    ensure!(still == 0, "{still} pool pages still on their chunk frames");
    let pages1 = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(pages0 == pages1, "reservation {pages0} -> {pages1}");
    ensure!(
        calls.exchanges == init.exchanged().count() as u64,
        "{} exchanges for {} chunks",
        calls.exchanges,
        init.exchanged().count()
    );
    Ok(fmt_line!(
        "{} chunk(s) given back with {} exchange(s): every pool page on a new frame, P2M/M2P \
         agree, reservation {pages1} unchanged",
        init.exchanged().count(),
        calls.exchanges
    ))
}

/// The hypercalls and TSC cycles of `pool-init` (ours), for `linux-fixup` to compare.
static OURS: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

/// Linux's `xen_swiotlb_fixup` scheme (`reference/linux-swiotlb-xen.md` §2.5) run by this
/// kernel on the released pool's memory (as many MiB as `pool-init` made contiguous): one
/// `create_contiguous_region` of order 6 per 256 KiB segment, address bits from 18 rising by
/// one on each failure and never reset, up to 32; each zapped and remapped page by page in
/// multicalls of `update_va_mapping` (the platform over [`CountedByVa`], which names no
/// PTE). Its hypercalls and TSC cycles beside `pool-init`'s, then every segment given back.
fn linux_fixup(env: &Env, region: PhysAddr) -> Outcome {
    const ORDER: u32 = 6;
    const SEGMENT: u64 = 256 << 10;
    // SAFETY: this domain's P2M and Xen's M2P, the linear base of the initial mapping, and
    // the same trap as the checks' platform; only the released pool's memory is changed.
    let linux = unsafe {
        X86PvPlatform::new(
            env.p2m,
            env.m2p,
            crate::VIRT_BASE,
            CountedByVa,
            KernelMemory::new(env.low),
        )
    };
    let pages0 = reservation().map_err(|e| fmt_line!("{e}"))?;
    let c0 = COUNTERS.snapshot();
    let t0 = rdtsc();
    let mut bits = ORDER + 12;
    let segments = POOL_BYTES as u64 / SEGMENT;
    for k in 0..segments {
        let seg = PhysAddr::new(region.as_u64() + k * SEGMENT);
        loop {
            // SAFETY: the released pool's memory, used by nothing else.
            match unsafe { linux.create_contiguous_region(seg, ORDER, bits) } {
                Ok(_) => break,
                Err(e) if bits >= 32 => return Err(fmt_line!("segment {k} at {seg}: {e}")),
                Err(_) => bits += 1,
            }
        }
    }
    let cycles = rdtsc().wrapping_sub(t0);
    let calls = COUNTERS.snapshot().since(c0);
    let pfn0 = region.frame().as_u64();
    for k in 0..segments {
        let first = pfn0 + k * 64;
        let b0 = env.p2m_raw(first);
        ensure!(
            b0.is_multiple_of(64) && (0..64).all(|i| env.p2m_raw(first + i) == b0 + i),
            "segment {k} not contiguous"
        );
    }
    for k in 0..segments {
        let seg = PhysAddr::new(region.as_u64() + k * SEGMENT);
        // SAFETY: as above.
        unsafe { linux.destroy_contiguous_region(seg, ORDER) }
            .map_err(|e| fmt_line!("giving segment {k} back: {e}"))?;
    }
    let pages1 = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(pages0 == pages1, "reservation {pages0} -> {pages1}");
    let (ours, ours_cycles) = (
        OURS.0.load(Ordering::Relaxed),
        OURS.1.load(Ordering::Relaxed),
    );
    let mib = (POOL_BYTES >> 20) as u64;
    ensure!(
        ours > 0 && calls.total > 0,
        "no hypercall counted (ours {ours}, Linux {})",
        calls.total
    );
    Ok(fmt_line!(
        "Linux's scheme on the same {mib} MiB: {segments} segments up to {bits} bits in {} \
         hypercalls ({} exchanges, {} multicalls) = {}.{:02} per MiB, {cycles} TSC cycles; \
         ours (pool-init): {ours} hypercalls = {}.{:02} per MiB, {ours_cycles} TSC cycles: \
         {}.{:02}x Linux's hypercalls, {}.{:02}x its cycles; segments given back",
        calls.total,
        calls.exchanges,
        calls.multicalls,
        calls.total / mib,
        (calls.total * 100 / mib) % 100,
        ours / mib,
        (ours * 100 / mib) % 100,
        ours / calls.total,
        (ours * 100 / calls.total) % 100,
        ours_cycles / cycles.max(1),
        (ours_cycles * 100 / cycles.max(1)) % 100,
    ))
}

/// An order-10 region (4 MiB, the released pool's memory) made contiguous below the mask and
/// given back: an order above the 2 MiB Linux caps its scratch array at, which this
/// platform handles without a frame list.
fn order_10(env: &Env, pv: &Pv, region: PhysAddr) -> Outcome {
    let pfn0 = region.frame().as_u64();
    let n = 1u64 << 10;
    let pages0 = reservation().map_err(|e| fmt_line!("{e}"))?;
    let c0 = COUNTERS.snapshot();
    // SAFETY: the released pool's memory, no longer used by anything.
    let bus = unsafe { pv.create_contiguous(region, 10, DMA_MASK_BITS) }
        .map_err(|e| fmt_line!("create_contiguous({region}, 10, {DMA_MASK_BITS}): {e}"))?;
    let created = COUNTERS.snapshot().since(c0);
    let b0 = bus.frame().as_u64();
    ensure!(
        b0 % n == 0 && (b0 + n) << 12 <= MASK_END,
        "extent {bus} not aligned to 4 MiB or not below the mask"
    );
    for i in 0..n {
        ensure!(
            env.p2m_raw(pfn0 + i) == b0 + i && env.m2p_raw(b0 + i) == pfn0 + i,
            "page {i}: P2M {:#x}, expected {:#x}",
            env.p2m_raw(pfn0 + i),
            b0 + i
        );
    }
    fill(region, 1 << 22, 0x4c);
    holds("order-10 region", region, 1 << 22, 0x4c)?;
    // SAFETY: as above.
    unsafe { pv.destroy_contiguous(region, 10) }
        .map_err(|e| fmt_line!("destroy_contiguous({region}, 10): {e}"))?;
    let all = COUNTERS.snapshot().since(c0);
    for i in 0..n {
        ensure!(
            env.round_trips(pfn0 + i) && env.m2p_raw(b0 + i) != pfn0 + i,
            "page {i} after destroy: P2M {:#x}",
            env.p2m_raw(pfn0 + i)
        );
    }
    let pages1 = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(pages0 == pages1, "reservation {pages0} -> {pages1}");
    Ok(fmt_line!(
        "4 MiB at {region} -> extent {bus} below the mask in {} hypercalls ({} exchange), 1024 \
         pages P2M/M2P-checked, written and read; destroyed: every page on a new frame, \
         reservation unchanged; {} hypercalls in all",
        created.total,
        created.exchanges,
        all.total
    ))
}

/// The buffer pages' pseudo-physical base.
fn buf() -> PhysAddr {
    phys_of(&raw const BUF)
}

/// Page `k` of the buffers.
fn buf_page(k: u64) -> PhysAddr {
    PhysAddr::new(buf().as_u64() + k * 4096)
}

/// Maps that cross page boundaries: direct over adjacent machine frames, bounced over a
/// machine discontinuity made with a real exchange.
fn map_straddle(env: &Env, eng: &Engine) -> Outcome {
    let pv = eng.platform();
    let dev = Device::new(DmaMask::FULL);
    let dir = DmaDirection::Bidirectional;
    let attrs = DmaAttrs::empty();
    let k = 4;
    let pk = buf_page(k).frame().as_u64();
    // Pages k and k+1: move k+1 to another frame (below the mask) so they are not adjacent.
    // SAFETY: the page is one of the checks' buffers, not in use.
    unsafe { pv.create_contiguous(buf_page(k + 1), 0, DMA_MASK_BITS) }
        .map_err(|e| fmt_line!("moving page {}: {e}", k + 1))?;
    let (mk, mk1) = (env.p2m_raw(pk), env.p2m_raw(pk + 1));
    ensure!(mk1 != mk + 1, "pages still adjacent: {mk:#x}, {mk1:#x}");
    // Pages k-1 and k are adjacent in both spaces (the initial mapping is contiguous).
    let mp = env.p2m_raw(pk - 1);
    ensure!(mk == mp + 1, "pages {} and {k} not machine-adjacent", k - 1);

    // Direct: across the contiguous boundary k-1 | k.
    let direct = PhysAddr::new(buf_page(k).as_u64() - 1000);
    fill(direct, 3000, 0x31);
    let s0 = eng.stats();
    // SAFETY: the buffer is a static of the checks, unreferenced while mapped.
    let bus = unsafe { eng.map_page(&dev, direct, 3000, dir, attrs) }
        .map_err(|e| fmt_line!("direct map: {e}"))?;
    ensure!(
        bus.as_u64() == (mp << 12) + 4096 - 1000,
        "direct map gave {bus}, expected {:#x}",
        (mp << 12) + 4096 - 1000
    );
    ensure!(
        eng.stats().direct_maps == s0.direct_maps + 1,
        "not counted as direct"
    );
    eng.unmap_page(&dev, bus, 3000, dir, attrs)
        .map_err(|e| fmt_line!("direct unmap: {e}"))?;
    holds("direct buffer", direct, 3000, 0x31)?;

    // Bounced: across the discontinuity k | k+1.
    let orig = PhysAddr::new(buf_page(k + 1).as_u64() - 1000);
    let len = 3000;
    fill(orig, len, 0x21);
    let s0 = eng.stats();
    // SAFETY: as above.
    let bus = unsafe { eng.map_page(&dev, orig, len, dir, attrs) }
        .map_err(|e| fmt_line!("straddling map: {e}"))?;
    let s1 = eng.stats();
    let reason = BounceReason::NotContiguous.index();
    ensure!(
        s1.bounced_by_reason[reason] == s0.bounced_by_reason[reason] + 1,
        "not bounced as NotContiguous"
    );
    let tlb = check_bounce(eng, bus, len, DmaMask::FULL)?;
    holds("bounce after map", tlb, len, 0x21)?;
    // The device writes into the bounce buffer (what its DMA would leave in memory).
    fill(tlb, len, 0x77);
    eng.unmap_page(&dev, bus, len, dir, attrs)
        .map_err(|e| fmt_line!("straddling unmap: {e}"))?;
    holds("original after unmap", orig, len, 0x77)?;
    ensure!(
        eng.pool().is_some_and(|p| p.stats().used == 0),
        "slots still used after unmap"
    );
    Ok(fmt_line!(
        "pages {} | {k} on frames {mp:#x} | {mk:#x}: direct {bus_direct:#x}; pages {k} | {} on \
         {mk:#x} | {mk1:#x} (moved by an exchange): bounced to {bus} (pool {tlb}), \
         contiguous, M2P round trip, bytes copied in, device bytes copied back",
        k - 1,
        k + 1,
        bus_direct = (mp << 12) + 4096 - 1000
    ))
}

/// The mask the above-mask checks use: the `edu` device's, which the kernel image's
/// buffers lie above (dom0's first pfns are on its highest frames).
fn device_mask(env: &Env) -> Result<(DmaMask, &'static str), Line> {
    let frame = env.p2m_raw(buf_page(8).frame().as_u64());
    ensure!(
        frame << 12 > MASK.as_u64(),
        "buffers at {:#x} are under the device's mask",
        frame << 12
    );
    Ok((MASK, "the edu device's mask, buffers above it"))
}

/// Maps of buffers above the device's mask: bounced under it, bytes both ways, syncs.
fn map_above_mask(env: &Env, eng: &Engine) -> Outcome {
    let (mask, how) = device_mask(env)?;
    let dev = Device::new(mask).with_min_align_mask(0xfff);
    let attrs = DmaAttrs::empty();
    let orig = PhysAddr::new(buf_page(8).as_u64() + 0x234);
    let len = 5000;
    let orig_bus = (env.p2m_raw(orig.frame().as_u64()) << 12) + 0x234;
    fill(orig, len, 0x42);
    let s0 = eng.stats();
    // SAFETY: as in `map_straddle`.
    let bus = unsafe { eng.map_page(&dev, orig, len, DmaDirection::Bidirectional, attrs) }
        .map_err(|e| fmt_line!("map: {e}"))?;
    let reason = BounceReason::OutsideMask.index();
    ensure!(
        eng.stats().bounced_by_reason[reason] == s0.bounced_by_reason[reason] + 1,
        "not bounced as OutsideMask"
    );
    ensure!(
        bus.as_u64() & 0xfff == 0x234,
        "min_align_mask 0xfff not kept: {bus}"
    );
    let tlb = check_bounce(eng, bus, len, mask)?;
    holds("bounce after map", tlb, len, 0x42)?;
    // Device writes, the CPU syncs and reads; the CPU writes, syncs for the device.
    fill(tlb, len, 0x55);
    eng.sync_single_for_cpu(&dev, bus, len, DmaDirection::Bidirectional)
        .map_err(|e| fmt_line!("sync_for_cpu: {e}"))?;
    holds("original after sync_for_cpu", orig, len, 0x55)?;
    fill(orig, len, 0x66);
    eng.sync_single_for_device(&dev, bus, len, DmaDirection::Bidirectional)
        .map_err(|e| fmt_line!("sync_for_device: {e}"))?;
    holds("bounce after sync_for_device", tlb, len, 0x66)?;
    // A ToDevice unmap copies nothing back.
    fill(tlb, len, 0x99);
    eng.unmap_page(&dev, bus, len, DmaDirection::ToDevice, attrs)
        .map_err(|e| fmt_line!("unmap: {e}"))?;
    holds("original after a ToDevice unmap", orig, len, 0x66)?;
    Ok(fmt_line!(
        "{how}: buffer {orig} (bus {orig_bus:#x}) +{len:#x} bounced to {bus} under {:#x}, \
         offset kept, contiguous, M2P round trip; map, sync_for_cpu, sync_for_device copy the \
         right bytes, a ToDevice unmap copies none",
        mask.as_u64()
    ))
}

/// A scatter-gather list for the above-mask device: every entry bounced under the mask,
/// device data copied back at unmap.
fn map_sg(eng: &Engine) -> Outcome {
    let env_mask = MASK;
    let top = eng.pool_bus_top().map_or(0, BusAddr::as_u64);
    ensure!(top < MASK_END, "pool above the mask");
    let dev = Device::new(env_mask);
    let entries = [
        (PhysAddr::new(buf_page(10).as_u64() + 0x10), 100usize),
        (PhysAddr::new(buf_page(11).as_u64() + 0x800), 6000),
        (PhysAddr::new(buf_page(5).as_u64() - 1500), 3000),
    ];
    let mut sg = entries.map(|(p, l)| SgEntry::new(p, l));
    for (i, (p, l)) in entries.iter().enumerate() {
        fill(*p, *l, 0x10 + i as u8);
    }
    // SAFETY: as in `map_straddle`.
    let n = unsafe { eng.map_sg(&dev, &mut sg, DmaDirection::FromDevice, DmaAttrs::empty()) }
        .map_err(|e| fmt_line!("map_sg: {e}"))?;
    ensure!(n == 3, "map_sg mapped {n} entries");
    let mut low = u64::MAX;
    for (i, e) in sg.iter().enumerate() {
        ensure!(
            e.dma_length == e.length,
            "entry {i}: dma_length {}",
            e.dma_length
        );
        let tlb = check_bounce(eng, e.dma_address, e.length, env_mask)
            .map_err(|m| fmt_line!("entry {i}: {m}"))?;
        // Linux copies the original in at every map, whatever the direction.
        holds("bounce after map_sg", tlb, e.length, 0x10 + i as u8)?;
        fill(tlb, e.length, 0xa0 + i as u8);
        low = low.min(e.dma_address.as_u64());
    }
    eng.unmap_sg(&dev, &sg, DmaDirection::FromDevice, DmaAttrs::empty())
        .map_err(|e| fmt_line!("unmap_sg: {e}"))?;
    for (i, (p, l)) in entries.iter().enumerate() {
        holds("original after unmap_sg", *p, *l, 0xa0 + i as u8)?;
    }
    ensure!(
        eng.pool().is_some_and(|p| p.stats().used == 0),
        "slots still used after unmap_sg"
    );
    Ok(fmt_line!(
        "3 entries (one straddling the moved page) for a {DMA_MASK_BITS}-bit device: all \
         bounced under the mask (lowest {low:#x}), device data copied back at unmap_sg"
    ))
}

/// Coherent allocations: exchanged below the coherent mask and given back; direct when the
/// pages already fit; refused exchange.
fn coherent(env: &Env, eng: &Engine) -> Outcome {
    let pv = eng.platform();
    let used0 = ALLOCATOR.used();
    let pages0 = reservation().map_err(|e| fmt_line!("{e}"))?;
    let dev = Device::new(DmaMask::FULL).with_coherent_mask(MASK);
    let c0 = COUNTERS.snapshot();
    let a = eng
        .alloc_coherent(&dev, 16384)
        .map_err(|e| fmt_line!("alloc_coherent(16 KiB): {e}"))?;
    let (phys, bus) = (a.phys(), a.bus());
    let pfn0 = phys.frame().as_u64();
    let b0 = bus.frame().as_u64();
    ensure!(a.is_exchanged(), "16 KiB above the mask was not exchanged");
    ensure!(
        b0 % 4 == 0 && bus.as_u64() + 16384 <= MASK_END,
        "bus {bus} not aligned or not below the mask"
    );
    for i in 0..4 {
        ensure!(
            env.p2m_raw(pfn0 + i) == b0 + i && env.m2p_raw(b0 + i) == pfn0 + i,
            "page {i} not on bus frame {:#x}",
            b0 + i
        );
    }
    fill(phys, 16384, 0x5e);
    holds("coherent memory", phys, 16384, 0x5e)?;
    // SAFETY: nothing uses the allocation any more.
    unsafe { eng.free_coherent(&dev, a) }.map_err(|e| fmt_line!("free_coherent: {}", e.source))?;
    let calls = COUNTERS.snapshot().since(c0);
    for i in 0..4 {
        ensure!(
            env.round_trips(pfn0 + i) && env.p2m_raw(pfn0 + i) != b0 + i,
            "page {i} after free: P2M {:#x}",
            env.p2m_raw(pfn0 + i)
        );
        ensure!(
            pv.bfn_to_local_pfn(Bfn::new(b0 + i)).is_none(),
            "extent frame {:#x} still ours",
            b0 + i
        );
    }
    ensure!(
        ALLOCATOR.used() == used0,
        "pages not given back to the allocator"
    );
    let pages1 = reservation().map_err(|e| fmt_line!("{e}"))?;
    ensure!(pages0 == pages1, "reservation {pages0} -> {pages1}");

    // A device that reaches everything: the pages are used as they are.
    let dev64 = Device::new(DmaMask::FULL);
    let d = eng
        .alloc_coherent(&dev64, 4096)
        .map_err(|e| fmt_line!("alloc_coherent(4 KiB, 64-bit): {e}"))?;
    let direct_ok =
        !d.is_exchanged() && d.bus().as_u64() == env.p2m_raw(d.phys().frame().as_u64()) << 12;
    // SAFETY: unused.
    unsafe { eng.free_coherent(&dev64, d) }
        .map_err(|e| fmt_line!("free_coherent: {}", e.source))?;
    ensure!(
        direct_ok,
        "64-bit coherent allocation was exchanged or mistranslated"
    );

    // A coherent mask of 13 bits: Xen has no frame there, the exchange is refused.
    let tiny = DmaMask::from_bits(13).ok_or_else(|| fmt_line!("no 13-bit mask"))?;
    let devt = Device::new(DmaMask::FULL).with_coherent_mask(tiny);
    let r = eng.alloc_coherent(&devt, 4096);
    let Err(
        e @ DmaError::CoherentContiguous {
            source: PlatformError::Hypercall { op, errno },
            ..
        },
    ) = r
    else {
        return Err(fmt_line!("13-bit coherent allocation: {r:?}"));
    };
    ensure!(
        op == "XENMEM_exchange" && errno == 12,
        "expected ENOMEM (12) from the exchange: {e}"
    );
    ensure!(
        ALLOCATOR.used() == used0,
        "refused allocation kept its pages"
    );
    Ok(fmt_line!(
        "16 KiB for a {DMA_MASK_BITS}-bit coherent mask: exchanged to {bus}, contiguous, M2P agrees; \
         freed: frames exchanged back, extent released, pages and reservation ({pages1}) back; \
         {} hypercalls; 64-bit device: used in place; 13-bit mask: `{e}`",
        calls.total
    ))
}

/// Bad input to the engine: documented errors, nothing left mapped.
fn bad_input_engine(eng: &Engine) -> Outcome {
    let dev = Device::new(MASK);
    let dir = DmaDirection::ToDevice;
    let attrs = DmaAttrs::empty();
    let pool = eng.pool().ok_or_else(|| fmt_line!("no pool"))?;
    let s0 = pool.stats();
    // SAFETY: every map below is refused before touching memory (checked by the results).
    let zero = unsafe { eng.map_page(&dev, buf(), 0, dir, attrs) };
    ensure!(zero == Err(DmaError::ZeroSize), "zero size: {zero:?}");
    let far = PhysAddr::new(u64::MAX - 10);
    // SAFETY: as above.
    let overflow = unsafe { eng.map_page(&dev, far, 100, dir, attrs) };
    ensure!(
        matches!(overflow, Err(DmaError::AddressOverflow { size: 100, .. })),
        "overflow: {overflow:?}"
    );
    // Larger than a bounce can be in this pool (its joined segments let it hold more than
    // Linux's 256 KiB: `max_mapping_size` says how much): the kernel image from its start,
    // only read, and refused before any copy.
    let image = PhysAddr::new(0x20_0000);
    let forced = dev.with_force_bounce(true);
    let max = eng.max_mapping_size(&forced);
    let big = max + 4096;
    // SAFETY: as above.
    let too_large = unsafe { eng.map_page(&forced, image, big, dir, attrs) };
    if let Ok(bus) = too_large {
        let _ = eng.unmap_page(&forced, bus, big, dir, attrs | DmaAttrs::SKIP_CPU_SYNC);
    }
    ensure!(
        matches!(
            too_large,
            Err(DmaError::Bounce {
                source: Error::TooLarge { max: m, .. },
                ..
            }) if m == max
        ),
        "bounce of max_mapping_size ({max:#x}) + 4 KiB: {too_large:?}"
    );
    // Unmap of a pool address nothing mapped, and a double unmap.
    let pool_bus = eng
        .platform()
        .pfn_to_bfn(pool.start().frame())
        .ok_or_else(|| fmt_line!("pool start untranslatable"))?
        .start();
    let stray = BusAddr::new(pool_bus.as_u64() + 0x800);
    let unknown = eng.unmap_page(&dev, stray, 64, dir, attrs);
    ensure!(
        matches!(
            unknown,
            Err(DmaError::Pool {
                source: Error::NotMapped { .. },
                ..
            })
        ),
        "unmap of an unmapped pool address: {unknown:?}"
    );
    let orig = buf_page(12);
    fill(orig, 64, 1);
    // SAFETY: as in `map_straddle`.
    let bus =
        unsafe { eng.map_page(&dev, orig, 64, dir, attrs) }.map_err(|e| fmt_line!("map: {e}"))?;
    eng.unmap_page(&dev, bus, 64, dir, attrs)
        .map_err(|e| fmt_line!("unmap: {e}"))?;
    let double = eng.unmap_page(&dev, bus, 64, dir, attrs);
    ensure!(
        matches!(
            double,
            Err(DmaError::Pool {
                source: Error::NotMapped { .. },
                ..
            })
        ),
        "double unmap: {double:?}"
    );
    // dma_supported answers from the pool's real bus top: false for a mask one bit short of
    // it, true for the mask that just holds it.
    let top = eng.pool_bus_top().map_or(0, BusAddr::as_u64);
    let bits = 64 - top.leading_zeros();
    let (fits, short) = (DmaMask::from_bits(bits), DmaMask::from_bits(bits - 1));
    let (Some(fits), Some(short)) = (fits, short) else {
        return Err(fmt_line!("no mask of {bits} bits"));
    };
    ensure!(
        eng.dma_supported(&dev, fits) && !eng.dma_supported(&dev, short),
        "dma_supported wrong around the pool top {top:#x} ({bits} bits)"
    );
    let s1 = pool.stats();
    ensure!(
        s1.used == 0 && s1.used == s0.used,
        "{} slots left in use",
        s1.used
    );
    Ok(fmt_line!(
        "zero size, overflow, a bounce of max_mapping_size ({} KiB) + 4 KiB, unmap of an unmapped pool address ({stray}), \
         double unmap: documented errors; dma_supported true for {bits} bits, false for {} (pool \
         top {top:#x}); no slot left in use",
        max >> 10,
        bits - 1
    ))
}
