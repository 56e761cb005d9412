//! The facade on the simulated Xen machine: the engine `swiotlb_xen::init::init` builds, as
//! a [`Target`] of `dma-map-bench`, and the facade's pool initialisation counted by the
//! simulator for the fixup figures.
//!
//! Latencies measured here are those of the simulator, not of hardware: every copy goes
//! through `xen_sim::SimMemory` (a lock and a page-table walk per page) and every P2M read
//! is an atomic load of the simulator's table. What the `facade` backend shows is the
//! engine's path end to end (translation, the direct or bounce decision, the pool, the
//! copies) and how many maps bounce and why; the `pool` backend is the one to read for the
//! pool's own latency.

use swiotlb_core::engine::{BounceReason, DmaEngine, PageAllocator, SgEntry};
use swiotlb_core::{
    BusAddr, Device, DmaAttrs, DmaDirection, Pfn, PhysAddr, PhysMemory, Platform, Slot,
};
use swiotlb_xen::arm64::{Arm64Platform, CacheOps, ForeignEntry, ForeignTable, ProbeOptions};
use swiotlb_xen::init::{InitOptions, InitReport, init};
use swiotlb_xen::x86_pv::X86PvPlatform;
use xen_sim::{ArmGuest, Domain, PvGuest, SimConfig, SimMemory, Xen};

use crate::fixup::{FixupCount, PoolAlign, SEGMENT_BYTES, alloc_pool};
use crate::linux::current_cpu;
use crate::mapbench::{Arch, Options, PAGE, Target};

/// Bytes of the pool `dma-map-bench` initialises on the simulator (16 MiB: the default
/// machine's dom0 has 64 MiB).
pub const MAPBENCH_POOL_BYTES: u64 = 16 << 20;

/// dom0's RAM as the arm64 engine must know it (`pfn_valid`), without coherent allocations.
struct ArmRam(ArmGuest);

// SAFETY: hands out no pages; `pfn_valid` is true exactly for dom0's own RAM.
unsafe impl PageAllocator for ArmRam {
    fn alloc_pages(&self, _order: u32) -> Option<PhysAddr> {
        None
    }

    unsafe fn free_pages(&self, _phys: PhysAddr, _order: u32) {}

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.0.is_ram(pfn.start())
    }
}

/// dom0's RAM on x86 PV: every pfn of the P2M is dom0's own.
pub(crate) struct PvRam(pub(crate) u64);

// SAFETY: hands out no pages; `pfn_valid` is true exactly for dom0's pfns.
unsafe impl PageAllocator for PvRam {
    fn alloc_pages(&self, _order: u32) -> Option<PhysAddr> {
        None
    }

    unsafe fn free_pages(&self, _phys: PhysAddr, _order: u32) {}

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        pfn.as_u64() < self.0
    }
}

/// The arm64 kernel's cache maintenance, done by the simulated CPU.
struct SimCache(ArmGuest);

impl CacheOps for SimCache {
    fn clean(&self, phys: PhysAddr, len: usize) {
        self.0.cache_clean(phys, len);
    }

    fn invalidate(&self, phys: PhysAddr, len: usize) {
        self.0.cache_invalidate(phys, len);
    }

    fn clean_invalidate(&self, phys: PhysAddr, len: usize) {
        self.0.cache_clean_invalidate(phys, len);
    }
}

/// The engine on the simulator, mapping the threads' buffers.
pub struct FacadeTarget<P: Platform, A: PageAllocator> {
    engine: DmaEngine<P, SimMemory, Box<[Slot]>, A>,
    mem: SimMemory,
    bufs: Vec<PhysAddr>,
    dev: Device,
    report: InitReport,
    xen: Xen,
}

impl<P: Platform, A: PageAllocator> Target for FacadeTarget<P, A> {
    type Handle = BusAddr;

    fn buffer(&self, t: usize) -> PhysAddr {
        self.bufs[t]
    }

    unsafe fn stain(&self, buf: PhysAddr, byte: u8, len: usize) {
        // SAFETY: the caller's own buffer, dom0 memory `mem` reaches, not mapped now.
        unsafe { self.mem.fill(buf, byte, len) };
    }

    unsafe fn map(&self, buf: PhysAddr, len: usize, dir: DmaDirection) -> Result<BusAddr, String> {
        // SAFETY: as the caller promises; the buffer is dom0 memory outside the pool.
        unsafe {
            self.engine
                .map_page(&self.dev, buf, len, dir, DmaAttrs::empty())
        }
        .map_err(|e| e.to_string())
    }

    fn unmap(&self, h: BusAddr, len: usize, dir: DmaDirection) -> Result<(), String> {
        self.engine
            .unmap_page(&self.dev, h, len, dir, DmaAttrs::empty())
            .map_err(|e| e.to_string())
    }

    unsafe fn map_sg(&self, sg: &mut [SgEntry], dir: DmaDirection) -> Result<(), String> {
        // SAFETY: as the caller promises; every entry is dom0 memory outside the pool.
        let n = unsafe { self.engine.map_sg(&self.dev, sg, dir, DmaAttrs::empty()) }
            .map_err(|e| e.to_string())?;
        debug_assert_eq!(n, sg.len(), "map_sg never merges entries");
        Ok(())
    }

    fn unmap_sg(&self, sg: &[SgEntry], dir: DmaDirection) -> Result<(), String> {
        self.engine
            .unmap_sg(&self.dev, sg, dir, DmaAttrs::empty())
            .map_err(|e| e.to_string())
    }

    fn summary(&self) -> String {
        let s = self.engine.stats();
        let mut out = format!(
            "engine: {} direct maps, {} bounced",
            s.direct_maps, s.bounced_maps
        );
        if s.sg_maps > 0 || s.sg_failures > 0 {
            out.push_str(&format!(
                " ({} scatterlists mapped, {} failed)",
                s.sg_maps, s.sg_failures
            ));
        }
        for r in BounceReason::ALL {
            let n = s.bounced_by_reason[r.index()];
            if n > 0 {
                out.push_str(&format!(", {n} {r:?}"));
            }
        }
        if let Some(p) = s.pool {
            out.push_str(&format!(
                "; pool: {} slots, high water {}, {} bytes bounced",
                p.nslabs, p.high_water, p.bytes_bounced
            ));
        }
        out.push_str(&format!(
            "; init: {} MiB in {} chunks, {} create calls ({} failed), bus top {}",
            self.report.bytes >> 20,
            self.report.chunks.len(),
            self.report.create_calls,
            self.report.create_failures,
            self.report.bus_top
        ));
        if let Err(v) = self.xen.check_invariants() {
            out.push_str(&format!("; SIMULATOR INVARIANT BROKEN: {v}"));
        }
        out
    }
}

/// Something to run with a facade target of either platform (a generic closure).
pub trait TargetVisitor {
    /// What the visit returns.
    type Out;

    /// Runs on `target`.
    fn visit<T: Target>(self, target: &T) -> Self::Out;
}

/// Allocates one buffer of `o.granule` pages per thread with `alloc`, after checking that
/// they take at most a quarter of dom0's `dom0_pages`: with the pool aligned to its size and
/// (on arm64) two RAM banks, that always fits, so the simulator's allocator (which panics
/// when it runs out) is never asked for more than it has.
fn buffers(
    o: &Options,
    alloc: impl Fn(u64) -> PhysAddr,
    dom0_pages: u64,
) -> Result<Vec<PhysAddr>, String> {
    let per = u64::from(o.granule);
    let want = per * u64::from(o.threads);
    if want > dom0_pages / 4 {
        return Err(format!(
            "{} threads of {} pages ({want} pages) exceed the {} pages the simulated dom0 \
             has for buffers next to the {} MiB pool",
            o.threads,
            o.granule,
            dom0_pages / 4,
            MAPBENCH_POOL_BYTES >> 20
        ));
    }
    Ok((0..o.threads).map(|_| alloc(per)).collect())
}

/// Builds the facade on a fresh simulated machine of `arch` (pool of
/// [`MAPBENCH_POOL_BYTES`] in 2 areas, buffers for `o.threads` threads) and runs `v` on it.
///
/// # Errors
///
/// If the buffers do not fit or the facade's initialisation fails.
pub fn with_facade<V: TargetVisitor>(arch: Arch, o: &Options, v: V) -> Result<V::Out, String> {
    let opts = InitOptions::default().with_nareas(2);
    let pool_pages = MAPBENCH_POOL_BYTES / PAGE as u64;
    // CAST: the pool's slot count fits usize.
    let storage = || -> Box<[Slot]> {
        (0..(MAPBENCH_POOL_BYTES / 2048) as usize)
            .map(|_| Slot::new())
            .collect()
    };
    // CAST: 16 MiB fits usize.
    let bytes = MAPBENCH_POOL_BYTES as usize;
    match arch {
        Arch::X86 => {
            let xen = Xen::new(SimConfig::x86_pv());
            let g = xen.pv_guest();
            let pool = g.alloc_aligned(pool_pages, pool_pages);
            let bufs = buffers(o, |n| g.alloc_pages(n), g.nr_pages())?;
            let platform = pv_platform(&xen, &g);
            // SAFETY: the pool region is fresh dom0 memory given to the pool alone; the
            // simulator's memory reaches it and the buffers; nothing else changes the
            // region's translation.
            let (engine, report) = unsafe {
                init(
                    platform,
                    g.memory(),
                    pool,
                    bytes,
                    storage(),
                    PvRam(g.nr_pages()),
                    opts,
                )
            }
            .map_err(|e| format!("facade init: {e}"))?;
            let t = FacadeTarget {
                engine: engine.with_cpu_hint(current_cpu),
                mem: g.memory(),
                bufs,
                dev: o.device(),
                report,
                xen: xen.clone(),
            };
            Ok(v.visit(&t))
        }
        Arch::Arm64 => {
            let xen = Xen::new(SimConfig::arm64());
            let g = xen.arm_guest();
            let dom0 = xen.dom0();
            let mem = g.memory();
            let table: ForeignTable<Vec<ForeignEntry>> = ForeignTable::default();
            let pool = g.alloc_aligned(pool_pages, pool_pages);
            let dom0_pages = xen.config().dom0_pages;
            let bufs = buffers(o, |n| g.alloc_pages(n), dom0_pages)?;
            // SAFETY: dom0's hypercalls and the simulated CPU's view of its memory; the
            // simulator maps dom0 1:1 and says so.
            let platform = unsafe {
                Arm64Platform::probe(
                    &dom0,
                    &table,
                    SimCache(g.clone()),
                    &mem,
                    ProbeOptions::initial_domain(),
                )
            }
            .map_err(|e| format!("arm64 probe: {e}"))?;
            // SAFETY: as for x86.
            let (engine, report) = unsafe {
                init(
                    platform,
                    mem.clone(),
                    pool,
                    bytes,
                    storage(),
                    ArmRam(g.clone()),
                    opts,
                )
            }
            .map_err(|e| format!("facade init: {e}"))?;
            let t = FacadeTarget {
                engine: engine.with_cpu_hint(current_cpu),
                mem: mem.clone(),
                bufs,
                dev: o.device(),
                report,
                xen: xen.clone(),
            };
            Ok(v.visit(&t))
        }
    }
}

/// dom0's x86 PV platform over the simulator's tables.
pub(crate) fn pv_platform<'a>(xen: &Xen, g: &'a PvGuest) -> X86PvPlatform<'a, Domain, SimMemory> {
    // SAFETY: the simulated dom0's own P2M, M2P, linear map and memory, and its hypercalls.
    unsafe { X86PvPlatform::new(g.p2m(), g.m2p(), g.linear_base(), xen.dom0(), g.memory()) }
}

/// The facade's pool initialisation of `bytes` (a multiple of 256 KiB) on the default x86
/// PV machine ([`crate::fixup::machine`]), the pool placed as `align` says (aligned to its
/// size as the facade's docs advise, or to 256 KiB only as Linux's is), counted by the
/// simulator from a reset just before `init`.
///
/// # Errors
///
/// If the initialisation fails, or leaves a segment not contiguous.
pub fn facade_fixup(bytes: u64, align: PoolAlign) -> Result<(FixupCount, InitReport), String> {
    if bytes == 0 || !bytes.is_multiple_of(SEGMENT_BYTES) {
        return Err(format!(
            "{bytes:#x} bytes is not a whole number of segments"
        ));
    }
    let (xen, g) = crate::fixup::machine();
    let pool = alloc_pool(&g, bytes, align);
    let platform = pv_platform(&xen, &g);
    // CAST: the slot count and the size fit usize.
    let storage: Box<[Slot]> = (0..(bytes / 2048) as usize).map(|_| Slot::new()).collect();
    xen.reset_counters();
    // SAFETY: fresh dom0 memory given to the pool alone.
    let (engine, report) = unsafe {
        init(
            platform,
            g.memory(),
            pool,
            bytes as usize,
            storage,
            PvRam(g.nr_pages()),
            InitOptions::default(),
        )
    }
    .map_err(|e| format!("facade init: {e}"))?;
    let counters = xen.counters();
    let bits = report.max_address_bits_used().unwrap_or(0);
    if report.bytes as u64 != bytes {
        return Err(format!(
            "facade init halved the pool to {} bytes",
            report.bytes
        ));
    }
    if !crate::fixup::segments_contiguous_below(&g, pool, bytes, bits.max(1)) {
        return Err("facade init left a segment not contiguous below its bits".into());
    }
    drop(engine);
    xen.check_invariants().map_err(|v| v.to_string())?;
    Ok((
        FixupCount::from_counters(&counters, pool, bytes, bits),
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapbench::{Backend, run};
    use std::time::Duration;

    struct Run(Options);

    impl TargetVisitor for Run {
        type Out = Result<(crate::mapbench::Sums, String), String>;
        fn visit<T: Target>(self, t: &T) -> Self::Out {
            let s = run(&self.0, t, Some(Duration::from_millis(300)), &mut |_, _| {})?;
            Ok((s, t.summary()))
        }
    }

    #[test]
    fn facade_maps_on_both_platforms() {
        for arch in [Arch::X86, Arch::Arm64] {
            let o = Options {
                threads: 2,
                granule: 4,
                backend: Backend::Facade(arch),
                ..Options::default()
            };
            let (s, summary) = with_facade(arch, &o, Run(o)).unwrap().unwrap();
            assert!(s.loops > 0, "{arch:?}: {s:?}");
            assert!(summary.contains("engine:"), "{summary}");
            assert!(!summary.contains("BROKEN"), "{summary}");
        }
    }

    /// The number before `what` in `summary` (`"12 direct maps"`).
    fn count(summary: &str, what: &str) -> u64 {
        let head = &summary[..summary
            .find(what)
            .unwrap_or_else(|| panic!("{what}: {summary}"))];
        head.trim_end()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what}: {summary}"))
    }

    #[test]
    fn sg_mode_maps_one_scatterlist_of_granule_pages_per_iteration() {
        for arch in [Arch::X86, Arch::Arm64] {
            let o = Options {
                threads: 2,
                granule: 4,
                mode: crate::mapbench::Mode::Sg,
                backend: Backend::Facade(arch),
                ..Options::default()
            };
            let (s, summary) = with_facade(arch, &o, Run(o)).unwrap().unwrap();
            assert!(s.loops > 0, "{arch:?}: {s:?}");
            assert!(!summary.contains("BROKEN"), "{summary}");
            // One map_sg per iteration, each of 4 one-page entries mapped (and unmapped) by
            // map_page: every entry counted once, direct or bounced.
            assert_eq!(count(&summary, "scatterlists mapped"), s.loops, "{summary}");
            assert_eq!(count(&summary, "failed)"), 0, "{summary}");
            let entries = count(&summary, "direct maps") + count(&summary, "bounced");
            assert_eq!(entries, 4 * s.loops, "{summary}");
            assert_eq!(s.map_hist.len(), s.loops);
        }
        // A page never spans two frames: with a 64-bit mask, SG_MODE's one-page entries all
        // map directly, where SINGLE_MODE's 4-page buffers on x86's scrambled P2M bounce for
        // want of contiguity.
        let sg = Options {
            granule: 4,
            bits: 64,
            mode: crate::mapbench::Mode::Sg,
            ..Options::default()
        };
        let (s, summary) = with_facade(Arch::X86, &sg, Run(sg)).unwrap().unwrap();
        assert_eq!(count(&summary, "direct maps"), 4 * s.loops, "{summary}");
        let single = Options {
            mode: crate::mapbench::Mode::Single,
            ..sg
        };
        let (_, summary) = with_facade(Arch::X86, &single, Run(single))
            .unwrap()
            .unwrap();
        assert!(summary.contains("NotContiguous"), "{summary}");
        assert!(!summary.contains("scatterlists"), "{summary}");
    }

    struct Nothing;

    impl TargetVisitor for Nothing {
        type Out = usize;
        fn visit<T: Target>(self, t: &T) -> usize {
            // Every buffer is distinct.
            let mut b: Vec<u64> = (0..4).map(|i| t.buffer(i).as_u64()).collect();
            b.dedup();
            b.len()
        }
    }

    #[test]
    fn the_largest_allowed_buffers_fit_both_machines() {
        for arch in [Arch::X86, Arch::Arm64] {
            for (threads, granule) in [(4, 1024), (1024, 4)] {
                let o = Options {
                    threads,
                    granule,
                    ..Options::default()
                };
                assert_eq!(with_facade(arch, &o, Nothing), Ok(4), "{arch:?}");
            }
        }
    }

    #[test]
    fn too_many_threads_do_not_fit() {
        let o = Options {
            threads: 1024,
            granule: 1024,
            ..Options::default()
        };
        assert!(with_facade(Arch::X86, &o, Run(o)).is_err());
    }

    #[test]
    fn facade_fixup_is_counted() {
        let bytes = crate::fixup::FIXUP_POOL_BYTES;
        let (c, report) = facade_fixup(bytes, PoolAlign::Natural).unwrap();
        assert_eq!(c.bytes, bytes);
        assert!(crate::fixup::alignment_of(c.pool) >= bytes);
        assert!(c.exchanges >= report.chunks.iter().filter(|c| c.is_exchanged()).count() as u64);
        assert!(c.traps >= c.exchanges);
        assert!(facade_fixup(1000, PoolAlign::Natural).is_err());
        // Aligned to 256 KiB only, the pool cannot start with a chunk larger than a segment
        // (order 6), so the facade makes more, smaller chunks contiguous: more traps.
        let (s, sreport) = facade_fixup(bytes, PoolAlign::SegmentOnly).unwrap();
        assert_eq!(crate::fixup::alignment_of(s.pool), SEGMENT_BYTES);
        assert_eq!(
            sreport.chunks.first().map(|c| c.order),
            Some(6),
            "{sreport:?}"
        );
        assert!(sreport.chunks.len() > report.chunks.len(), "{sreport:?}");
        assert!(s.traps > c.traps, "{s:?} against {c:?}");
    }
}
