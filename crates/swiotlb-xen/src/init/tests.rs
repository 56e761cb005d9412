//! Tests of the initialisation policy: a scripted platform for each rule, and the
//! simulator for the real x86 PV and arm64 platforms.

use super::*;
use std::boxed::Box;
use std::collections::HashMap;
use std::sync::Mutex;
use std::vec;
use std::vec::Vec;
use swiotlb_core::{Bfn, LinearMap, NoPageAllocator, Pfn};

const BASE: u64 = 0x400_0000; // 64 MiB, aligned to 64 MiB.
const MIB: usize = 1 << 20;

/// A platform whose exchanges succeed below `fail_from` once `bits >= need_bits`, refuse
/// orders above `max_order`, and make a chunk identity-mapped (bus = phys). Frames not
/// exchanged are scrambled (never contiguous) unless `contiguous_first`.
struct Scripted {
    fail_from: u64,
    need_bits: u32,
    max_order: u32,
    contiguous_first: bool,
    fail_destroy: bool,
    /// Refuse limits below the chunk's own (identity) address, as Xen would.
    enforce_limit: bool,
    exchanged: Mutex<HashMap<u64, u32>>,
    calls: Mutex<Vec<(u64, u32, u32)>>,
}

impl Scripted {
    fn new() -> Self {
        Self {
            fail_from: u64::MAX,
            need_bits: 27,
            max_order: 20,
            contiguous_first: false,
            fail_destroy: false,
            enforce_limit: false,
            exchanged: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn outstanding(&self) -> usize {
        self.exchanged.lock().unwrap().len()
    }

    fn is_exchanged(&self, pfn: u64) -> bool {
        self.exchanged
            .lock()
            .unwrap()
            .iter()
            .any(|(&p, &o)| (p >> 12..(p >> 12) + (1 << o)).contains(&pfn))
    }
}

// SAFETY: exchanged chunks are identity-mapped, which the test memory backs; the others
// translate to frames no device ever uses in these tests.
unsafe impl Platform for Scripted {
    fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn> {
        let p = pfn.as_u64();
        if self.contiguous_first || self.is_exchanged(p) {
            Some(Bfn::new(p))
        } else {
            Some(Bfn::new(0x100_0000 + (p ^ 1)))
        }
    }

    fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> {
        Some(Pfn::new(bfn.as_u64()))
    }

    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, PlatformError> {
        self.calls
            .lock()
            .unwrap()
            .push((phys.as_u64(), order, address_bits));
        assert!(phys.is_aligned(4096 << order), "misaligned chunk");
        if order > self.max_order {
            return Err(PlatformError::OrderTooLarge {
                order,
                max: self.max_order,
            });
        }
        let above = self.enforce_limit
            && address_bits < 64
            && phys.as_u64() + (4096 << order) > 1 << address_bits;
        if phys.as_u64() >= self.fail_from || address_bits < self.need_bits || above {
            return Err(PlatformError::Hypercall {
                op: "XENMEM_exchange",
                errno: 12,
            });
        }
        let prev = self.exchanged.lock().unwrap().insert(phys.as_u64(), order);
        assert!(prev.is_none(), "exchanged twice");
        Ok(BusAddr::new(phys.as_u64()))
    }

    unsafe fn destroy_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
    ) -> Result<(), PlatformError> {
        if self.fail_destroy {
            return Err(PlatformError::Hypercall {
                op: "XENMEM_exchange",
                errno: 12,
            });
        }
        let had = self.exchanged.lock().unwrap().remove(&phys.as_u64());
        assert_eq!(had, Some(order), "destroyed what was not exchanged");
        Ok(())
    }
}

/// Host memory standing for the pool region at `BASE`.
struct Region {
    base: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize) -> Self {
        let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
        Self { base, len }
    }

    fn map(&self) -> LinearMap {
        // SAFETY: the allocation outlives every engine of the test (declared first, dropped
        // last), and is reached only through raw pointers.
        unsafe { LinearMap::new(self.base, PhysAddr::new(BASE), self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` of `len` bytes; nothing uses it any more.
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(self.base, self.len)) });
    }
}

type Engine<'a> = DmaEngine<&'a Scripted, LinearMap, Vec<Slot>, NoPageAllocator>;

fn run<'a>(
    region: &Region,
    platform: &'a Scripted,
    bytes: usize,
    options: InitOptions,
) -> Result<(Engine<'a>, InitReport), InitError> {
    let storage = (0..bytes / IO_TLB_SIZE).map(|_| Slot::new()).collect();
    // SAFETY: the region is the test's and used by the pool alone.
    unsafe {
        init(
            platform,
            region.map(),
            PhysAddr::new(BASE),
            bytes,
            storage,
            NoPageAllocator,
            options,
        )
    }
}

#[test]
fn one_call_climbs_the_limits_for_the_largest_chunk() {
    let region = Region::new(8 * MIB);
    let p = Scripted::new();
    let (engine, report) = run(&region, &p, 8 * MIB, InitOptions::default()).unwrap();
    let orders: Vec<u32> = report.chunks.iter().map(|c| c.order).collect();
    // 8 MiB aligned to 64 MiB: one order-11 chunk, whose rising call starts at the smallest
    // limit that can hold it (2^23) and climbs to 2^27.
    assert_eq!(orders, [11]);
    let calls = p.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        (23..=27).map(|b| (BASE, 11, b)).collect::<Vec<_>>(),
        "(phys, order, bits) per create_contiguous_region"
    );
    assert_eq!((report.create_calls, report.create_failures), (1, 0));
    assert_eq!(report.max_address_bits_used(), Some(27));
    assert_eq!(report.bus_top, BusAddr::new(BASE + 8 * MIB as u64 - 1));
    assert_eq!(engine.pool_bus_top(), Some(report.bus_top));
    assert_eq!(report.nslabs, 4096);
    drop(engine);
    // SAFETY: the engine is gone.
    unsafe { release(&&p, &report) }.unwrap();
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn chunks_follow_alignment_and_size_and_bits_never_go_down() {
    let region = Region::new(7 * MIB);
    let p = Scripted::new();
    // 7 MiB at a 64 MiB boundary: each chunk as large as the cursor's alignment and the
    // remaining size allow; the limit found for the first is where the others start.
    let (_e, report) = run(&region, &p, 7 * MIB, InitOptions::default()).unwrap();
    let orders: Vec<u32> = report.chunks.iter().map(|c| c.order).collect();
    assert_eq!(orders, [10, 9, 8]);
    let bits: Vec<u32> = p.calls.lock().unwrap().iter().map(|c| c.2).collect();
    assert_eq!(bits, [22, 23, 24, 25, 26, 27, 27, 27]);
    let mut at = BASE;
    for c in &report.chunks {
        assert_eq!(c.phys.as_u64(), at);
        assert!(c.phys.is_aligned(c.bytes()));
        at += c.bytes();
    }
    assert_eq!(at, BASE + 7 * MIB as u64);
}

#[test]
fn a_small_order_cap_lowers_the_chunks_at_once() {
    let region = Region::new(4 * MIB);
    let mut p = Scripted::new();
    p.max_order = 7;
    p.need_bits = 0;
    let (_e, report) = run(&region, &p, 4 * MIB, InitOptions::default()).unwrap();
    let orders: Vec<u32> = report.chunks.iter().map(|c| c.order).collect();
    // The first chunk (order 10) is refused and the cap drops to 7 for good.
    assert_eq!(orders, [7; 8]);
    assert_eq!((report.create_calls, report.create_failures), (9, 1));
}

#[test]
fn failure_halves_the_pool_keeping_chunks_inside_and_giving_back_the_rest() {
    let region = Region::new(8 * MIB);
    let mut p = Scripted::new();
    p.fail_from = BASE + 3 * MIB as u64;
    let opts = InitOptions::default().with_max_order(8); // 1 MiB chunks
    let (engine, report) = run(&region, &p, 8 * MIB, opts).unwrap();
    // 1 MiB chunks at 0, 1 and 2 MiB; at 3 MiB every order down to a segment fails, so
    // 8 MiB -> 4 MiB, which still needs 3..4 MiB -> 2 MiB: the chunk at 2 MiB is given
    // back, the two below kept.
    assert_eq!(report.bytes, 2 * MIB);
    assert_eq!(report.requested_bytes, 8 * MIB);
    assert_eq!(report.halvings, 2);
    let orders: Vec<u32> = report.chunks.iter().map(|c| c.order).collect();
    assert_eq!(orders, [8, 8]);
    assert_eq!(report.destroy_calls, 1);
    assert_eq!(p.outstanding(), 2);
    assert_eq!(engine.pool().unwrap().nslabs(), 1024);
    drop(engine);
    // SAFETY: the engine is gone.
    unsafe { release(&&p, &report) }.unwrap();
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn nothing_contiguous_is_an_error_and_nothing_stays_exchanged() {
    let region = Region::new(4 * MIB);
    let mut p = Scripted::new();
    p.fail_from = BASE + MIB as u64 / 2;
    let err = run(
        &region,
        &p,
        4 * MIB,
        InitOptions::default().with_max_order(6),
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            InitError::Exhausted {
                min: MIB,
                address_bits: 32,
                order: 6,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn a_failing_give_back_is_named() {
    let region = Region::new(4 * MIB);
    let mut p = Scripted::new();
    p.fail_from = BASE + MIB as u64 / 2;
    p.fail_destroy = true;
    let err = run(
        &region,
        &p,
        4 * MIB,
        InitOptions::default().with_max_order(6),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, InitError::GiveBack { order: 6, .. }),
        "{err:?}"
    );
}

#[test]
fn contiguous_memory_below_the_limit_needs_no_call() {
    let region = Region::new(2 * MIB);
    let mut p = Scripted::new();
    p.contiguous_first = true;
    let (_e, report) = run(&region, &p, 2 * MIB, InitOptions::default()).unwrap();
    assert_eq!(report.create_calls, 0);
    assert_eq!(report.exchanged().count(), 0);
    // Above the limit it must be exchanged; here no exchange reaches below 2^26.
    let err = run(
        &region,
        &p,
        2 * MIB,
        InitOptions::default().with_max_address_bits(26),
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            InitError::Exhausted {
                address_bits: 26,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!p.calls.lock().unwrap().is_empty());
    assert_eq!(p.outstanding(), 0);
}

#[test]
fn too_many_chunks_halve_the_pool() {
    let region = Region::new(17 * MIB);
    let mut p = Scripted::new();
    p.need_bits = 0;
    let opts = InitOptions::default().with_max_order(6);
    let (_e, report) = run(&region, &p, 17 * MIB, opts).unwrap();
    // 68 segments do not fit in 64 records: 8.5 MiB (34 segments).
    assert_eq!(report.bytes, 17 * MIB / 2);
    assert_eq!(report.chunks.len(), 34);
    assert_eq!(p.outstanding(), 34);
}

#[test]
fn bad_arguments() {
    let region = Region::new(2 * MIB);
    let p = Scripted::new();
    let storage = || (0..1024).map(|_| Slot::new()).collect::<Vec<_>>();
    let call = |phys: u64, bytes: usize| {
        // SAFETY: refused before anything is touched.
        unsafe {
            init(
                &p,
                region.map(),
                PhysAddr::new(phys),
                bytes,
                storage(),
                NoPageAllocator,
                InitOptions::default(),
            )
        }
        .err()
        .unwrap()
    };
    assert_eq!(
        call(BASE + 4096, 2 * MIB),
        InitError::Misaligned {
            phys: PhysAddr::new(BASE + 4096),
            align: SEGMENT
        }
    );
    assert_eq!(
        call(BASE, MIB + 4096),
        InitError::BadSize { bytes: MIB + 4096 }
    );
    assert_eq!(call(BASE, 0), InitError::BadSize { bytes: 0 });
    assert_eq!(
        call(BASE, MIB / 2),
        InitError::TooSmall {
            bytes: MIB / 2,
            min: MIB
        }
    );
    assert!(p.calls.lock().unwrap().is_empty());
}

mod sim {
    use super::*;
    use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask};
    use swiotlb_xen_x86_pv::X86PvPlatform;
    use xen_sim::{Domain, PvGuest, SimConfig, SimMemory, SimOp, Xen};

    type PvPlatform<'g> = X86PvPlatform<'g, Domain, SimMemory>;

    /// `init` of a `mib` MiB pool, aligned to its size, on the simulated dom0 `guest`.
    fn init_x86<'g>(
        xen: &Xen,
        guest: &'g PvGuest,
        mib: usize,
        options: InitOptions,
    ) -> InitResult<PvPlatform<'g>, SimMemory, Vec<Slot>, NoPageAllocator> {
        // SAFETY: the simulated dom0's own tables, linear map, hypercalls and memory.
        let platform = unsafe {
            X86PvPlatform::new(
                guest.p2m(),
                guest.m2p(),
                guest.linear_base(),
                xen.dom0(),
                guest.memory(),
            )
        };
        let pages = (mib as u64) << 8;
        let pool = guest.alloc_aligned(pages, pages);
        let storage: Vec<Slot> = (0..mib * 512).map(|_| Slot::new()).collect();
        // SAFETY: the pool pages are the engine's alone.
        unsafe {
            init(
                platform,
                guest.memory(),
                pool,
                mib * MIB,
                storage,
                NoPageAllocator,
                options,
            )
        }
    }

    fn x86(xen: &Xen, mib: usize, options: InitOptions) -> Result<InitReport, InitError> {
        let guest = xen.pv_guest();
        let (engine, report) = init_x86(xen, &guest, mib, options)?;
        xen.check_invariants().unwrap();
        // Every byte of the pool is reachable by a 32-bit device and bounces correctly.
        let dev = xen.device(DmaMask::BITS_32, true);
        let d: Device = dev.core_device();
        assert!(engine.dma_supported(&d, DmaMask::BITS_32));
        let buf = guest.alloc_pages(16);
        guest.fill_pattern(buf, 65536, 3);
        // SAFETY: simulator memory, reached by no reference.
        let bus = unsafe {
            engine.map_page(
                &d.with_force_bounce(true),
                buf,
                65536,
                DmaDirection::ToDevice,
                DmaAttrs::empty(),
            )
        }
        .unwrap();
        let seen = dev.read(bus, 65536).unwrap();
        assert!(
            seen.iter()
                .enumerate()
                .all(|(i, &b)| b == xen_sim::pattern_byte(3, i))
        );
        engine
            .unmap_page(&d, bus, 65536, DmaDirection::ToDevice, DmaAttrs::empty())
            .unwrap();
        let (platform, _, _) = engine.into_parts();
        // SAFETY: the engine is gone.
        unsafe { release(&platform, &report) }.unwrap();
        xen.check_invariants().unwrap();
        Ok(report)
    }

    #[test]
    fn x86_pv_pool_takes_fewer_exchanges_than_linux() {
        let xen = Xen::new(SimConfig::x86_pv());
        let free_before = xen.free_frames();
        xen.reset_counters();
        let report = x86(&xen, 16, InitOptions::default()).unwrap();
        let c = xen.counters();
        // Linux: one exchange per 256 KiB segment, 64 for 16 MiB, plus failures.
        let exchanges = c.count(SimOp::MemoryExchange);
        // One 16 MiB chunk instead of 64 segments.
        assert_eq!(report.chunks.len(), 1);
        assert_eq!(report.order_range(), Some((12, 12)));
        // Each of init's calls makes one exchange per limit it tries (at least one), and
        // release one per chunk.
        let n = report.exchanged().count() as u64;
        assert!(
            exchanges > u64::from(report.create_calls) + n,
            "{exchanges}"
        );
        assert!(exchanges < 64, "{exchanges} exchanges");
        assert!(report.bus_top.as_u64() < 1 << 32);
        assert_eq!(xen.free_frames(), free_before);
    }

    /// The figures for the issue: traps (hypercall entries) and `XENMEM_exchange`s per MiB
    /// of pool, ours against one exchange per segment (`max_order(6)`: Linux's chunking and
    /// rising bits, but with this platform's one zap and remap per call, so cheaper than
    /// Linux's own scheme, which `swiotlb-bench` measures).
    #[test]
    fn hypercalls_per_mib_against_one_exchange_per_segment() {
        let mut figures = Vec::new();
        for (name, max_order) in [("ours (order cap 12)", 12), ("one per segment", 6)] {
            for mib in [4, 8, 16] {
                // 256 MiB of machine memory below 4 GiB.
                let xen = Xen::new(SimConfig::x86_pv().with_low(16 << 20, 65536));
                xen.reset_counters();
                let guest = xen.pv_guest();
                let options = InitOptions::default().with_max_order(max_order);
                let (_engine, report) = init_x86(&xen, &guest, mib, options).unwrap();
                assert_eq!(report.bytes, mib * MIB);
                let c = xen.counters();
                let per_mib = |n: u64| n as f64 / mib as f64;
                figures.push((
                    name,
                    mib,
                    report.chunks.len(),
                    per_mib(c.count(SimOp::MemoryExchange)),
                    per_mib(c.traps()),
                ));
                xen.check_invariants().unwrap();
            }
        }
        for (name, mib, chunks, ex, traps) in &figures {
            std::println!(
                "{name:22} {mib:3} MiB: {chunks:3} chunks, {ex:6.2} exchanges/MiB, {traps:7.2} traps/MiB"
            );
        }
        for i in 0..3 {
            let (ours, linux) = (&figures[i], &figures[i + 3]);
            assert!(
                ours.3 < linux.3 && ours.4 < linux.4,
                "{ours:?} vs {linux:?}"
            );
        }
    }

    #[test]
    fn x86_pv_with_xens_order_limit_uses_order_9_chunks() {
        let xen = Xen::new(SimConfig::x86_pv().with_max_orders(9, 9));
        let report = x86(&xen, 16, InitOptions::default()).unwrap();
        // Xen's limit answers EPERM for orders 12, 11 and 10; the cap then stays at 9:
        // eight 2 MiB chunks.
        assert_eq!(report.order_range(), Some((9, 9)));
        assert_eq!(report.chunks.len(), 8);
        assert_eq!((report.create_calls, report.create_failures), (3 + 8, 3));
    }

    #[test]
    fn x86_pv_without_low_memory_fails_and_gives_everything_back() {
        let xen = Xen::new(SimConfig::x86_pv());
        xen.hog_free_frames_below(1 << 32);
        let free_before = xen.free_frames();
        let err = x86(&xen, 4, InitOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                InitError::Exhausted {
                    address_bits: 32,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(xen.free_frames(), free_before);
        xen.check_invariants().unwrap();
    }

    #[test]
    fn arm64_pool_below_4g_needs_no_hypercall() {
        use swiotlb_xen_arm64::{Arm64Platform, BoundedForeignTable, CacheOps, ProbeOptions};
        struct SimCache(xen_sim::ArmGuest);
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
        static TABLE: BoundedForeignTable<16> = BoundedForeignTable::new();
        let xen = Xen::new(SimConfig::arm64());
        let guest = xen.arm_guest();
        let dom0 = xen.dom0();
        let mem = guest.memory();
        // SAFETY: dom0's hypercalls and memory on the simulator.
        let platform = unsafe {
            Arm64Platform::probe(
                &dom0,
                &TABLE,
                SimCache(guest.clone()),
                &mem,
                ProbeOptions::initial_domain(),
            )
        }
        .unwrap();
        let pool = guest.alloc_aligned(1024, 1024);
        assert!(pool.as_u64() < 1 << 32);
        xen.reset_counters();
        let storage: Vec<Slot> = (0..2048).map(|_| Slot::new()).collect();
        // SAFETY: the pool pages are the engine's alone.
        let (engine, report) = unsafe {
            init(
                platform,
                guest.memory(),
                pool,
                4 * MIB,
                storage,
                NoPageAllocator,
                InitOptions::default(),
            )
        }
        .unwrap();
        assert_eq!(report.create_calls, 0);
        assert_eq!(xen.counters().traps(), 0);
        assert_eq!(
            engine.pool_bus_top(),
            Some(BusAddr::new(pool.as_u64() + 4 * MIB as u64 - 1))
        );
    }
}

#[test]
fn option_extremes_stay_bounded() {
    let region = Region::new(2 * MIB);
    let mut p = Scripted::new();
    p.need_bits = 0;
    p.enforce_limit = true;
    // A limit of 19 bits holds at most 512 KiB chunks (and the scripted platform's frames,
    // at 64 MiB, are above it: nothing can succeed, but the search ends).
    let err = run(
        &region,
        &p,
        2 * MIB,
        InitOptions::default().with_max_address_bits(19),
    )
    .err()
    .unwrap();
    assert!(matches!(err, InitError::Exhausted { .. }), "{err:?}");
    assert!(
        p.calls
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.1 + 12 <= 19 && c.2 <= 19)
    );
    // Absurd limits and orders are clamped, not looped over.
    let p = Scripted::new();
    let opts = InitOptions::default()
        .with_max_address_bits(u32::MAX)
        .with_max_order(u32::MAX);
    let (_e, report) = run(&region, &p, 2 * MIB, opts).unwrap();
    assert!(report.create_calls < 40, "{}", report.create_calls);
    // And when nothing ever succeeds, the search still ends: limits stop at 64 bits and
    // each order from 9 (2 MiB) down to a segment tries each limit once (the scripted
    // platform takes one call per limit).
    let mut p = Scripted::new();
    p.fail_from = BASE;
    let err = run(&region, &p, 2 * MIB, opts).err().unwrap();
    assert!(
        matches!(
            err,
            InitError::Exhausted {
                address_bits: 64,
                ..
            }
        ),
        "{err:?}"
    );
    let n = p.calls.lock().unwrap().len();
    assert!(n < 400, "{n} calls");
}
