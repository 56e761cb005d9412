//! The bad-input catalogue: every public entry point of the engine and of the facade's pool
//! initialisation with zero, huge, overflowing, misaligned, unmapped, double-unmapped,
//! wrong-direction and out-of-mask values, on the simulated Xen. Each returns its documented
//! error, and the state is unchanged: pool slots, pool invariants, the simulator's
//! invariants, free machine frames, dom0's P2M, the page allocator, the original buffer's
//! bytes. Nothing panics.
//!
//! `live_mappings_reject_bad_unmaps_and_syncs_on_both_platforms` adds, on x86 PV and arm64
//! (foreign pages in the table), with coherent and non-coherent devices: oversize, extreme,
//! wrong-direction, out-of-mapping and stale unmaps and syncs of live mappings, unmapped
//! pool addresses and direct mappings with absurd sizes, checking guard bytes around every
//! buffer and slot (`common::guard`) and, on arm64, that no dirty line was discarded.
//!
//! The catalogue prints how many inputs it tried, per platform (`cargo test -- --nocapture`).

mod common;

use common::{Arm, PAGE, Pv, PvEngine, SEGMENT, check, pattern, pool_used};
use swiotlb_core::engine::{DmaError, SgEntry};
use swiotlb_core::{
    BusAddr, Device, DmaAttrs, DmaDirection, DmaMask, Error, PhysAddr, Platform, Slot,
};
use swiotlb_xen::init::{InitError, InitOptions, init};

/// Everything that must not change across a rejected call.
#[derive(Debug, PartialEq, Eq)]
struct State {
    used: usize,
    free_frames: u64,
    local: u64,
    pages: usize,
    buf: Vec<u8>,
}

struct Fx {
    pv: &'static Pv,
    engine: PvEngine<'static>,
    buf: PhysAddr,
    big: PhysAddr,
    tried: std::cell::Cell<usize>,
}

const BUF_PAGES: u64 = 16;
const BIG_PAGES: u64 = 80;

impl Fx {
    fn new() -> Self {
        let pv: &'static Pv = Box::leak(Box::new(Pv::new()));
        let engine = pv.engine(SEGMENT * 4);
        let buf = pv.guest.alloc_pages(BUF_PAGES);
        let big = pv.guest.alloc_pages(BIG_PAGES);
        pv.guest
            .memory()
            .write(buf, &pattern(1, (BUF_PAGES * PAGE) as usize));
        Self {
            pv,
            engine,
            buf,
            big,
            tried: std::cell::Cell::new(0),
        }
    }

    fn state(&self) -> State {
        check(&self.pv.xen, &self.engine, &[]);
        let mut buf = vec![0; (BUF_PAGES * PAGE) as usize];
        self.pv.guest.memory().read(self.buf, &mut buf);
        State {
            used: pool_used(&self.engine),
            free_frames: self.pv.xen.free_frames(),
            local: self.pv.local_entries(),
            pages: self.engine.pages().in_use(),
            buf,
        }
    }

    /// Runs `f`, which must fail as `want` says, and asserts the state is unchanged.
    #[track_caller]
    fn rejects<T: std::fmt::Debug, E: std::fmt::Debug>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, E>,
        want: impl FnOnce(&E) -> bool,
    ) {
        let before = self.state();
        let r = f();
        match &r {
            Err(e) if want(e) => {}
            other => panic!("{what}: got {other:?}"),
        }
        assert!(self.state() == before, "{what}: the state changed");
        self.tried.set(self.tried.get() + 1);
    }

    /// `map_page` of input the engine must refuse before it touches memory (or of the
    /// fixture's own buffers).
    fn map(
        &self,
        dev: &Device,
        phys: PhysAddr,
        size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<BusAddr, DmaError> {
        // SAFETY: the fixture's buffers, which nothing references, or addresses the engine
        // refuses before reaching memory (the tests assert it does).
        unsafe { self.engine.map_page(dev, phys, size, dir, attrs) }
    }

    fn at(&self, off: u64) -> PhysAddr {
        PhysAddr::new(self.buf.as_u64() + off)
    }

    /// A bounced mapping of 100 bytes at `off` (for the tests that need a live one).
    fn bounce(&self, dev: &Device, off: u64, dir: DmaDirection) -> BusAddr {
        let d = dev.with_force_bounce(true);
        // SAFETY: the fixture's buffer, unreferenced; unmapped by the caller.
        unsafe {
            self.engine
                .map_page(&d, self.at(off), 100, dir, DmaAttrs::empty())
        }
        .expect("bounce")
    }
}

fn dev32() -> Device {
    Device::new(DmaMask::BITS_32).with_coherent_mask(DmaMask::BITS_32)
}

fn pool_err(e: &DmaError, want: fn(&Error) -> bool) -> bool {
    matches!(e, DmaError::Pool { source, .. } if want(source))
}

#[test]
fn map_page_rejects_bad_input() {
    let fx = Fx::new();
    let d = dev32();
    let none = DmaAttrs::empty();
    let to = DmaDirection::ToDevice;
    fx.rejects(
        "zero size",
        || fx.map(&d, fx.buf, 0, to, none),
        |e| *e == DmaError::ZeroSize,
    );
    fx.rejects(
        "overflowing range",
        || fx.map(&d, PhysAddr::new(u64::MAX - 10), 100, to, none),
        |e| matches!(e, DmaError::AddressOverflow { size: 100, .. }),
    );
    for size in [usize::MAX, usize::MAX / 2, 1 << 40] {
        fx.rejects(
            "huge size",
            || fx.map(&d, fx.buf, size, to, none),
            |e| {
                matches!(
                    e,
                    DmaError::AddressOverflow { .. } | DmaError::Bounce { .. }
                )
            },
        );
    }
    // More than one bounce can hold (the buffer is scattered, so it must bounce): one byte
    // past the pool's longest run of bus-contiguous segments (the whole 1 MiB pool, one
    // chunk, here; a segment in Linux).
    let too_large = fx.engine.max_mapping_size(&d) + 1;
    assert!(too_large > 256 * 1024);
    fx.rejects(
        "bounce larger than the pool's longest run",
        || fx.map(&d, fx.big, too_large, to, none),
        |e| {
            matches!(
                e,
                DmaError::Bounce {
                    source: Error::TooLarge { .. },
                    ..
                }
            )
        },
    );
    // A min_align_mask that leaves no room in the pool's longest run (the whole 1 MiB pool;
    // Linux's bound, 256 KiB less the mask, is already 0 at a segment's mask).
    let tight = d.with_min_align_mask(0xf_ffff).with_force_bounce(true);
    assert_eq!(
        swiotlb_core::max_mapping_size(&d.with_min_align_mask(0x3_ffff)),
        0
    );
    fx.rejects(
        "min_align_mask of the whole pool",
        || fx.map(&tight, fx.at(0x123), 64, to, none),
        |e| matches!(e, DmaError::Bounce { .. }),
    );
    // Out of mask without a way to bounce: MMIO and a device behind an IOMMU.
    let high = PhysAddr::new(5 << 30);
    fx.rejects(
        "MMIO out of mask",
        || fx.map(&d, high, 4096, to, DmaAttrs::MMIO),
        |e| matches!(e, DmaError::Unreachable { .. }),
    );
    let iommu = d.with_iommu(true);
    fx.rejects(
        "IOMMU device out of mask",
        || fx.map(&iommu, high, 4096, to, none),
        |e| matches!(e, DmaError::Unreachable { .. }),
    );
    // A device whose mask is below the whole pool: the bounce is unreachable too.
    let tiny = Device::new(DmaMask::from_bits(16).unwrap());
    fx.rejects(
        "mask below the pool",
        || fx.map(&tiny, fx.at(0x10), 64, to, none),
        |e| matches!(e, DmaError::BounceUnreachable { .. }),
    );
    assert!(!fx.engine.dma_supported(&tiny, tiny.dma_mask));
    assert_eq!(fx.engine.max_mapping_size(&tight), 0);
    eprintln!("bad input, map_page: {} inputs", fx.tried.get());
}

#[test]
fn unmap_and_sync_reject_bad_input() {
    let fx = Fx::new();
    let d = dev32();
    let none = DmaAttrs::empty();
    let bi = DmaDirection::Bidirectional;
    let pool = fx.engine.pool().unwrap();
    // The bus address of a pool slot no mapping uses.
    let idle = fx
        .engine
        .platform()
        .pfn_to_bfn(pool.start().frame())
        .unwrap()
        .start();
    let idle = BusAddr::new(idle.as_u64() + 3 * 2048);
    for dir in [DmaDirection::ToDevice, DmaDirection::FromDevice, bi] {
        fx.rejects(
            "unmap zero",
            || fx.engine.unmap_page(&d, idle, 0, dir, none),
            |e| *e == DmaError::ZeroSize,
        );
        fx.rejects(
            "unmap overflow",
            || {
                fx.engine
                    .unmap_page(&d, BusAddr::new(u64::MAX - 5), 100, dir, none)
            },
            |e| matches!(e, DmaError::BusOverflow { .. }),
        );
        fx.rejects(
            "unmap of an unmapped pool address",
            || fx.engine.unmap_page(&d, idle, 100, dir, none),
            |e| pool_err(e, |s| matches!(s, Error::NotMapped { .. })),
        );
        for sync in [DmaEngineSync::ForCpu, DmaEngineSync::ForDevice] {
            fx.rejects(
                "sync zero",
                || sync.run(&fx, &d, idle, 0, dir),
                |e| *e == DmaError::ZeroSize,
            );
            fx.rejects(
                "sync overflow",
                || sync.run(&fx, &d, BusAddr::new(u64::MAX), 2, dir),
                |e| matches!(e, DmaError::BusOverflow { .. }),
            );
            fx.rejects(
                "sync of an unmapped pool address",
                || sync.run(&fx, &d, idle, 16, dir),
                |e| pool_err(e, |s| matches!(s, Error::NotMapped { .. })),
            );
        }
    }

    // A live mapping: unmap inside it, sync before its data, double unmap.
    let md = d.with_min_align_mask(0xfff);
    let bus = fx.bounce(&md, 0x340, bi);
    let used = pool_used(&fx.engine);
    fx.rejects(
        "unmap inside a mapping",
        || {
            fx.engine
                .unmap_page(&md, BusAddr::new(bus.as_u64() + 16), 84, bi, none)
        },
        |e| pool_err(e, |s| matches!(s, Error::NotMapped { .. })),
    );
    fx.rejects(
        "sync before the data of the first slot",
        || {
            fx.engine
                .sync_single_for_cpu(&md, BusAddr::new(bus.as_u64() - 0x40), 16, bi)
        },
        |e| pool_err(e, |s| matches!(s, Error::SyncOutOfRange { .. })),
    );
    // Wrong direction: a to-device sync for the CPU copies nothing back (Linux's rule); the
    // original is unchanged even though the device scribbled on the bounce.
    let to = fx.bounce(&d, 0x2000, DmaDirection::ToDevice);
    let sdev = fx.pv.xen.device(DmaMask::BITS_32, true);
    sdev.write(to, &[0xee; 100]).unwrap();
    let before = fx.state();
    fx.engine
        .sync_single_for_cpu(&d, to, 100, DmaDirection::ToDevice)
        .unwrap();
    fx.engine
        .unmap_page(&d, to, 100, DmaDirection::ToDevice, none)
        .unwrap();
    let after = fx.state();
    assert_eq!(
        after.buf, before.buf,
        "a to-device mapping wrote the original"
    );
    assert_eq!(pool_used(&fx.engine), used);
    fx.engine.unmap_page(&md, bus, 100, bi, none).unwrap();
    fx.rejects(
        "double unmap",
        || fx.engine.unmap_page(&md, bus, 100, bi, none),
        |e| pool_err(e, |s| matches!(s, Error::NotMapped { .. })),
    );
    eprintln!("bad input, unmap and syncs: {} inputs", fx.tried.get());
}

/// The two single syncs, so that the catalogue runs both over the same inputs.
#[derive(Clone, Copy)]
enum DmaEngineSync {
    ForCpu,
    ForDevice,
}

impl DmaEngineSync {
    fn run(
        self,
        fx: &Fx,
        d: &Device,
        bus: BusAddr,
        n: usize,
        dir: DmaDirection,
    ) -> Result<(), DmaError> {
        match self {
            Self::ForCpu => fx.engine.sync_single_for_cpu(d, bus, n, dir),
            Self::ForDevice => fx.engine.sync_single_for_device(d, bus, n, dir),
        }
    }
}

/// A bad list: what it is, its entries, the index that must fail, the error it must give.
type SgCase = (&'static str, Vec<SgEntry>, usize, fn(&DmaError) -> bool);

#[test]
fn scatter_gather_rejects_bad_entries_and_unwinds() {
    let fx = Fx::new();
    let d = dev32().with_force_bounce(true);
    let none = DmaAttrs::empty();
    let to = DmaDirection::ToDevice;
    let good = |i: u64| SgEntry::new(fx.at(i * 4096 + 8), 1000);
    let cases: Vec<SgCase> = vec![
        (
            "zero-length entry",
            vec![good(0), good(1), SgEntry::new(fx.at(0), 0)],
            2,
            |e| *e == DmaError::ZeroSize,
        ),
        (
            "overflowing entry",
            vec![good(0), SgEntry::new(PhysAddr::new(u64::MAX - 1), 8)],
            1,
            |e| matches!(e, DmaError::AddressOverflow { .. }),
        ),
        (
            "entry larger than a bounce",
            vec![
                good(0),
                good(1),
                good(2),
                SgEntry::new(fx.big, fx.engine.max_mapping_size(&d) + 1),
            ],
            3,
            |e| {
                matches!(
                    e,
                    DmaError::Bounce {
                        source: Error::TooLarge { .. },
                        ..
                    }
                )
            },
        ),
    ];
    for (what, mut sg, index, want) in cases {
        let before = fx.state();
        // SAFETY: the fixture's buffers, unreferenced.
        let r = unsafe { fx.engine.map_sg(&d, &mut sg, to, none) };
        let e = r.expect_err(what);
        assert_eq!(
            (e.index, e.unwound, e.failures),
            (index, index, 1),
            "{what}: {e:?}"
        );
        assert!(want(&e.source), "{what}: {e:?}");
        assert!(sg[..=index].iter().all(|x| x.dma_length == 0), "{what}");
        assert!(fx.state() == before, "{what}: the state changed");
        fx.tried.set(fx.tried.get() + 1);
    }
    // Unmapping and syncing a list that was never mapped: every entry fails, nothing moves.
    let idle = fx
        .engine
        .platform()
        .pfn_to_bfn(fx.engine.pool().unwrap().start().frame())
        .unwrap()
        .start();
    let sg: Vec<SgEntry> = (0..3)
        .map(|i| SgEntry {
            dma_address: BusAddr::new(idle.as_u64() + 4096 * i),
            dma_length: 64,
            ..SgEntry::new(fx.at(0), 64)
        })
        .collect();
    fx.rejects(
        "unmap_sg of a list never mapped",
        || fx.engine.unmap_sg(&d, &sg, to, none),
        |e| e.index == 0 && e.failures == 3,
    );
    fx.rejects(
        "sync_sg_for_cpu of a list never mapped",
        || fx.engine.sync_sg_for_cpu(&d, &sg, to),
        |e| e.failures == 3,
    );
    fx.rejects(
        "sync_sg_for_device of a list never mapped",
        || fx.engine.sync_sg_for_device(&d, &sg, to),
        |e| e.failures == 3,
    );
    // An empty list maps nothing.
    // SAFETY: nothing to map.
    assert_eq!(unsafe { fx.engine.map_sg(&d, &mut [], to, none) }, Ok(0));
    eprintln!("bad input, scatter-gather: {} inputs", fx.tried.get());
}

#[test]
fn coherent_allocations_reject_bad_sizes() {
    let fx = Fx::new();
    let d = dev32();
    fx.rejects(
        "coherent zero",
        || fx.engine.alloc_coherent(&d, 0),
        |e| *e == DmaError::ZeroSize,
    );
    for size in [usize::MAX, usize::MAX / 2 + 2] {
        fx.rejects(
            "coherent huge",
            || fx.engine.alloc_coherent(&d, size),
            |e| matches!(e, DmaError::CoherentTooLarge { .. }),
        );
    }
    fx.rejects(
        "coherent beyond the page allocator",
        || fx.engine.alloc_coherent(&d, 1 << 30),
        |e| matches!(e, DmaError::CoherentNoMemory { .. }),
    );
    let tiny = Device::new(DmaMask::FULL).with_coherent_mask(DmaMask::from_bits(12).unwrap());
    fx.rejects(
        "coherent mask below any frame",
        || fx.engine.alloc_coherent(&tiny, 8192),
        |e| {
            matches!(
                e,
                DmaError::CoherentContiguous { .. } | DmaError::CoherentUnreachable { .. }
            )
        },
    );
    eprintln!("bad input, coherent: {} inputs", fx.tried.get());
}

/// A bad region: what it is, its start and size, the error it must give.
type InitCase = (&'static str, PhysAddr, usize, fn(&InitError) -> bool);

#[test]
fn pool_init_rejects_bad_regions() {
    let pv = Pv::new();
    let good = pv.guest.alloc_aligned(512, 512);
    let before = (pv.xen.free_frames(), pv.local_entries());
    let cases: Vec<InitCase> = vec![
        (
            "misaligned start",
            PhysAddr::new(good.as_u64() + 4096),
            1 << 20,
            |e| matches!(e, InitError::Misaligned { .. }),
        ),
        ("zero size", good, 0, |e| {
            matches!(e, InitError::BadSize { bytes: 0 })
        }),
        ("size not a whole segment", good, (1 << 20) + 4096, |e| {
            matches!(e, InitError::BadSize { .. })
        }),
        ("size below the minimum", good, SEGMENT as usize, |e| {
            matches!(e, InitError::TooSmall { .. })
        }),
        ("huge size", good, usize::MAX, |e| {
            matches!(e, InitError::BadSize { .. })
        }),
        (
            "range that overflows",
            PhysAddr::new(u64::MAX - (SEGMENT - 1)),
            1 << 20,
            |e| matches!(e, InitError::BadSize { .. } | InitError::Misaligned { .. }),
        ),
    ];
    let n = cases.len();
    for (what, phys, bytes, want) in cases {
        let storage: Box<[Slot]> = (0..512).map(|_| Slot::new()).collect();
        // SAFETY: the initialisation must refuse before touching the region.
        let r = unsafe {
            init(
                common::sim::pv_platform(&pv.xen, &pv.guest),
                pv.guest.memory(),
                phys,
                bytes,
                storage,
                swiotlb_core::engine::NoPageAllocator,
                InitOptions::default(),
            )
        };
        match r {
            Err(e) if want(&e) => {}
            Err(e) => panic!("{what}: {e:?}"),
            Ok(_) => panic!("{what}: accepted"),
        }
        pv.xen.check_invariants().unwrap();
        assert_eq!((pv.xen.free_frames(), pv.local_entries()), before, "{what}");
        assert_eq!(
            pv.xen.counters().traps(),
            0,
            "{what}: a hypercall before the checks"
        );
    }
    eprintln!("bad input, pool init: {n} inputs");
}

/// A machine for the live-mapping catalogue: the engine, the CPU's memory, how to reach a
/// page by machine address, a guarded buffer region and the guarded pool.
struct Live<'e, P: Platform, A: swiotlb_core::engine::PageAllocator> {
    xen: &'e xen_sim::Xen,
    engine: &'e common::SimEngine<P, A>,
    cpu: xen_sim::SimMemory,
    region: common::guard::Guarded<'e>,
    pool: common::guard::Guarded<'e>,
    tried: usize,
}

const LIVE_PAGES: u64 = 8;

/// What an input may do: fail as `want` says (or succeed, for `None`).
type Want = Option<fn(&DmaError) -> bool>;

fn not_mapped(e: &DmaError) -> bool {
    pool_err(e, |s| matches!(s, Error::NotMapped { .. }))
}

fn out_of_range(e: &DmaError) -> bool {
    pool_err(e, |s| matches!(s, Error::SyncOutOfRange { .. }))
}

impl<P: Platform, A: swiotlb_core::engine::PageAllocator> Live<'_, P, A> {
    fn at(&self, off: u64) -> PhysAddr {
        PhysAddr::new(self.region.start.as_u64() + off)
    }

    /// The pool address of a bounce bus address.
    fn tlb(&self, bus: BusAddr) -> PhysAddr {
        let pfn = self
            .engine
            .platform()
            .bfn_to_local_pfn(bus.frame())
            .unwrap();
        bus.with_phys_frame(pfn)
    }

    /// Runs `op`, which must give `want`, and asserts that no byte outside `allowed` (an
    /// original and its bounce) changed, in the region or the pool, that no dirty line was
    /// discarded (arm64's cache model, read back through the CPU), and the invariants.
    #[track_caller]
    fn case(
        &mut self,
        what: &str,
        allowed: &[(PhysAddr, usize)],
        want: Want,
        op: impl FnOnce() -> Result<(), DmaError>,
    ) {
        let (r0, p0) = (self.region.bytes(), self.pool.bytes());
        let r = op();
        match (want, &r) {
            (None, Ok(())) => {}
            (Some(w), Err(e)) if w(e) => {}
            _ => panic!("{what}: got {r:?}"),
        }
        self.region
            .assert_unchanged(&r0, allowed, &format!("{what}: region"));
        self.pool
            .assert_unchanged(&p0, allowed, &format!("{what}: pool"));
        self.region.cpu_read(&self.cpu);
        self.pool.cpu_read(&self.cpu);
        check(self.xen, self.engine, &[]);
        self.tried += 1;
    }

    /// A forced bounce of `len` bytes at `off` of the region for `dev`.
    fn bounce(&self, dev: &Device, off: u64, len: usize, dir: DmaDirection) -> BusAddr {
        // SAFETY: the test's region, unreferenced until the unmap.
        unsafe {
            self.engine.map_page(
                &dev.with_force_bounce(true),
                self.at(off),
                len,
                dir,
                DmaAttrs::empty(),
            )
        }
        .expect("bounce")
    }
}

/// Oversize, extreme, wrong-direction, out-of-mapping and stale unmaps and syncs of live
/// bounced mappings, unmapped pool addresses, and direct mappings with absurd sizes, on both
/// platforms with coherent and non-coherent devices. Each gives its documented result and
/// changes no byte outside the mapping it names (guard bytes fill the buffer region and
/// every free byte of the pool, slots between mappings and pad slots included); on arm64 no
/// dirty line outside it is discarded.
///
/// Documented results:
/// - an unmap or sync larger than the mapping is clamped to it: `Ok`, the mapping's bytes
///   only (Linux's swiotlb clamps too); a size whose range wraps is `BusOverflow`;
/// - an unmap's direction decides the copy back (as in Linux): a to-device mapping
///   unmapped `FromDevice` gets its bounce copied back (its own bytes), a from-device one
///   unmapped `ToDevice` nothing;
/// - a sync before a mapping's first byte or past its end in its last slot is
///   `SyncOutOfRange`; in a pad slot, a free slot or a slot after the mapping `NotMapped`;
///   an unmap of any of them `NotMapped`;
/// - a stale bus address (unmapped, its slots since mapped by a second owner) cannot be
///   told from the second owner's: the pool knows mappings by address, as Linux does. The
///   stale call acts on the second mapping only, within its bytes: a stale sync for the CPU
///   delivers what the device wrote to the second owner's original (its data survives, in
///   its own buffer), a stale unmap ends the second mapping (copying back per the stale
///   call's direction) and the second owner's own unmap is then refused (`NotMapped`);
///   nothing outside the second mapping changes;
/// - a direct mapping's unmap or sync whose range the mask does not cover is
///   `NotADirectMapping` before any walk; one it covers is walked by runs: `Ok` for a
///   coherent device and on x86 PV, on arm64 the preserving maintenance runs over the RAM it
///   meets (nothing discarded) and stops at the hole after it with `CacheMaintenance`.
#[test]
fn live_mappings_reject_bad_unmaps_and_syncs_on_both_platforms() {
    let mut sizes = Vec::new();
    {
        let pv = Pv::new();
        let engine = pv.engine(SEGMENT * 4);
        let machine = |p: PhysAddr| pv.machine(p);
        let region = pv.guest.alloc_pages(LIVE_PAGES);
        let n = live_catalogue(&pv.xen, &engine, pv.guest.memory(), &machine, region, None);
        sizes.push(("x86 PV", n));
    }
    {
        let arm = Arm::new();
        let engine = arm.engine(SEGMENT * 4);
        let machine = |p: PhysAddr| BusAddr::new(p.as_u64());
        let region = arm.guest.alloc_pages(LIVE_PAGES);
        // Foreign pages in the table: granted by the domU, mapped in dom0's window.
        use common::grants::GrantMapper;
        let refs = arm.xen.domu_grant(2);
        let grants = arm.grants(2);
        let mapped = grants.map(arm.xen.domu().id(), &refs).unwrap();
        let n = live_catalogue(
            &arm.xen,
            &engine,
            arm.mem.clone(),
            &machine,
            region,
            Some(mapped[1].phys),
        );
        grants.unmap(&mapped).unwrap();
        sizes.push(("arm64", n));
    }
    for (name, n) in sizes {
        eprintln!("bad input, live mappings and direct sizes, {name}: {n} inputs");
    }
}

fn live_catalogue<P: Platform, A: swiotlb_core::engine::PageAllocator>(
    xen: &xen_sim::Xen,
    engine: &common::SimEngine<P, A>,
    cpu: xen_sim::SimMemory,
    machine: common::guard::Machine<'_>,
    region: PhysAddr,
    foreign: Option<PhysAddr>,
) -> usize {
    let arm = foreign.is_some();
    let pool = engine.pool().unwrap();
    let mut t = Live {
        xen,
        engine,
        cpu: cpu.clone(),
        region: common::guard::Guarded {
            xen,
            machine,
            start: region,
            len: (LIVE_PAGES * PAGE) as usize,
        },
        pool: common::guard::Guarded {
            xen,
            machine,
            start: pool.start(),
            // CAST: a 1 MiB pool.
            len: (pool.end().as_u64() - pool.start().as_u64()) as usize,
        },
        tried: 0,
    };
    t.region.fill(&cpu, 0x51);
    t.pool.fill(&cpu, 0x52);
    let none = DmaAttrs::empty();
    let (to, from, bi) = (
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::Bidirectional,
    );
    for coherent in [true, false] {
        let c = if coherent { "coherent" } else { "non-coherent" };
        let dev = Device::new(DmaMask::FULL).with_coherent(coherent);
        let d32 = Device::new(DmaMask::BITS_32).with_coherent(coherent);
        // A 64-byte bidirectional bounce, and 100 bytes whose in-page offset (0xa40, kept by
        // min_align_mask 0xfff) puts a pad slot in front of it.
        let (off, len) = (0x1040u64, 64usize);
        let mine = |t: &Live<'_, P, A>, bus: BusAddr, len: usize| {
            vec![(t.tlb(bus), len), (t.at(off), len)]
        };
        let bus = t.bounce(&dev, off, len, bi);
        for (what, size, want) in [
            ("0x142000", 0x14_2000usize, None),
            ("2^40", 1 << 40, None),
            (
                "to the end of the bus space",
                usize::MAX - bus.as_u64() as usize,
                None,
            ),
            (
                "usize::MAX",
                usize::MAX,
                Some(bus_overflow as fn(&DmaError) -> bool),
            ),
        ] {
            let a = mine(&t, bus, len);
            t.case(
                &format!("{c}: oversize sync for the CPU, {what}"),
                &a,
                want,
                || engine.sync_single_for_cpu(&dev, bus, size, bi),
            );
            t.case(
                &format!("{c}: oversize sync for the device, {what}"),
                &a,
                want,
                || engine.sync_single_for_device(&dev, bus, size, bi),
            );
        }
        for (what, size) in [("0x142000", 0x14_2000usize), ("2^40", 1 << 40)] {
            let bus = t.bounce(&dev, off, len, bi);
            let a = mine(&t, bus, len);
            t.case(&format!("{c}: oversize unmap, {what}"), &a, None, || {
                engine.unmap_page(&dev, bus, size, bi, none)
            });
        }
        t.case(
            &format!("{c}: unmap overflowing"),
            &[],
            Some(bus_overflow),
            || engine.unmap_page(&dev, bus, usize::MAX, bi, none),
        );
        engine.unmap_page(&dev, bus, len, bi, none).unwrap();
        // Wrong directions at unmap.
        for (map_dir, unmap_dir) in [(to, from), (from, to), (to, bi), (bi, to)] {
            let bus = t.bounce(&dev, off, len, map_dir);
            let a = mine(&t, bus, len);
            t.case(
                &format!("{c}: {map_dir:?} mapping unmapped {unmap_dir:?}"),
                &a,
                None,
                || engine.unmap_page(&dev, bus, len, unmap_dir, none),
            );
        }
        // Offsets outside the mapping.
        let md = dev.with_min_align_mask(0xfff);
        let poff = 0x3a40u64;
        let pbus = t.bounce(&md, poff, 100, bi);
        let ptlb = t.tlb(pbus);
        assert_eq!(ptlb.as_u64() & 0xfff, 0xa40, "the offset is kept");
        let rel = |d: i64| BusAddr::new(pbus.as_u64().wrapping_add_signed(d));
        for (what, b, want) in [
            (
                "before the first byte",
                rel(-0x10),
                out_of_range as fn(&DmaError) -> bool,
            ),
            ("past the end, in the last slot", rel(100 + 8), out_of_range),
            ("in the pad slot", rel(-0x900), not_mapped),
            (
                "in the slot after the mapping",
                rel(0x5c0 + 0x10),
                not_mapped,
            ),
            ("a page after the mapping", rel(4096), not_mapped),
        ] {
            for size in [16usize, 0x14_2000] {
                t.case(
                    &format!("{c}: sync for the CPU {what}, {size:#x}"),
                    &[],
                    Some(want),
                    || engine.sync_single_for_cpu(&md, b, size, bi),
                );
                t.case(
                    &format!("{c}: sync for the device {what}, {size:#x}"),
                    &[],
                    Some(want),
                    || engine.sync_single_for_device(&md, b, size, bi),
                );
                t.case(
                    &format!("{c}: unmap {what}, {size:#x}"),
                    &[],
                    Some(not_mapped),
                    || engine.unmap_page(&md, b, size, bi, none),
                );
            }
        }
        engine.unmap_page(&md, pbus, 100, bi, none).unwrap();
        // Pool addresses no mapping uses, of every slot offset kind.
        let p0 = engine
            .platform()
            .pfn_to_bfn(pool.start().frame())
            .unwrap()
            .start();
        for idle_off in [0u64, 0x40, 0x800, 0x1_0000 + 0x7ff, 0xf_f000] {
            let b = BusAddr::new(p0.as_u64() + idle_off);
            for size in [64usize, 0x14_2000] {
                t.case(
                    &format!("{c}: unmap of idle {idle_off:#x}"),
                    &[],
                    Some(not_mapped),
                    || engine.unmap_page(&dev, b, size, bi, none),
                );
                t.case(
                    &format!("{c}: sync of idle {idle_off:#x}"),
                    &[],
                    Some(not_mapped),
                    || engine.sync_single_for_cpu(&dev, b, size, bi),
                );
                t.case(
                    &format!("{c}: sync for device of idle {idle_off:#x}"),
                    &[],
                    Some(not_mapped),
                    || engine.sync_single_for_device(&dev, b, size, bi),
                );
            }
        }
        // Direct mappings with absurd sizes.
        let dbuf = t.at(0x6000);
        // SAFETY: the test's region, unreferenced until the unmap.
        let dbus = unsafe { engine.map_page(&d32, dbuf, 64, bi, none) }.unwrap();
        assert!(!common::is_bounced(engine, dbus), "{c}: direct");
        let direct = [(dbuf, 64usize)];
        for size in [1usize << 40, usize::MAX - dbus.as_u64() as usize] {
            t.case(
                &format!("{c}: 32-bit direct sync {size:#x}"),
                &direct,
                Some(not_direct),
                || engine.sync_single_for_cpu(&d32, dbus, size, bi),
            );
            t.case(
                &format!("{c}: 32-bit direct unmap {size:#x}"),
                &direct,
                Some(not_direct),
                || engine.unmap_page(&d32, dbus, size, bi, none),
            );
        }
        // A 64-bit mask covers them: walked by runs.
        let walked: Want = if arm && !coherent {
            Some(cache_failed)
        } else {
            None
        };
        for size in [1usize << 44, usize::MAX - dbus.as_u64() as usize] {
            for (what, r) in [
                ("sync for the CPU", 0),
                ("sync for the device", 1),
                ("unmap", 2),
            ] {
                t.case(
                    &format!("{c}: 64-bit direct {what} {size:#x}"),
                    &direct,
                    walked,
                    || match r {
                        0 => engine.sync_single_for_cpu(&dev, dbus, size, bi),
                        1 => engine.sync_single_for_device(&dev, dbus, size, bi),
                        _ => engine.unmap_page(&dev, dbus, size, bi, none),
                    },
                );
            }
        }
        t.case(
            &format!("{c}: direct overflowing"),
            &direct,
            Some(bus_overflow),
            || engine.unmap_page(&dev, dbus, usize::MAX, bi, none),
        );
        engine.unmap_page(&d32, dbus, 64, bi, none).unwrap();
        // A direct mapping of a foreign page (arm64): its absurd unmap and sync are walked
        // by runs too; for a non-coherent device the page is flushed by bus address, and
        // the frames after it, granted to nobody, are refused by Xen.
        if let Some(fp) = foreign {
            // SAFETY: the granted page stays mapped until after the unmap.
            let fbus = unsafe { engine.map_page(&dev, fp, 64, bi, none) }.unwrap();
            assert!(
                !common::is_bounced(engine, fbus),
                "{c}: a direct foreign page"
            );
            let size = usize::MAX - fbus.as_u64() as usize;
            t.case(
                &format!("{c}: foreign direct sync {size:#x}"),
                &[],
                walked,
                || engine.sync_single_for_cpu(&dev, fbus, size, bi),
            );
            t.case(
                &format!("{c}: foreign direct unmap {size:#x}"),
                &[],
                walked,
                || engine.unmap_page(&dev, fbus, size, bi, none),
            );
            engine.unmap_page(&dev, fbus, 64, bi, none).unwrap();
        }
    }
    // A stale bus address: A is unmapped, B (another owner) gets its slots.
    let dev = Device::new(DmaMask::FULL);
    let sdev = xen.device(DmaMask::FULL, true);
    let (aoff, boff) = (0x4000u64, 0x5000u64);
    let abus = t.bounce(&dev, aoff, 64, DmaDirection::Bidirectional);
    engine
        .unmap_page(
            &dev,
            abus,
            64,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
        .unwrap();
    let mut bbus = t.bounce(&dev, boff, 64, DmaDirection::FromDevice);
    let mut tries = 0;
    while bbus != abus {
        // The pool hands slots out round-robin: map and unmap until the index wraps.
        engine
            .unmap_page(&dev, bbus, 64, DmaDirection::FromDevice, DmaAttrs::empty())
            .unwrap();
        bbus = t.bounce(&dev, boff, 64, DmaDirection::FromDevice);
        tries += 1;
        assert!(tries < 4096, "the pool never reused A's slot");
    }
    let data = common::pattern(0x77, 64);
    sdev.write(bbus, &data).unwrap();
    let b_mine = vec![(t.tlb(bbus), 64), (t.at(boff), 64)];
    t.case("stale sync for the CPU", &b_mine, None, || {
        engine.sync_single_for_cpu(&dev, abus, 64, DmaDirection::Bidirectional)
    });
    let mut got = vec![0; 64];
    cpu.read(t.at(boff), &mut got);
    common::same(&got, &data, "the second owner's data, after a stale sync");
    t.case("stale unmap", &b_mine, None, || {
        engine.unmap_page(
            &dev,
            abus,
            64,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
    });
    cpu.read(t.at(boff), &mut got);
    common::same(&got, &data, "the second owner's data, after a stale unmap");
    t.case(
        "the second owner's unmap after a stale one",
        &[],
        Some(not_mapped),
        || engine.unmap_page(&dev, bbus, 64, DmaDirection::FromDevice, DmaAttrs::empty()),
    );
    assert_eq!(pool_used(engine), 0);
    t.tried
}

fn bus_overflow(e: &DmaError) -> bool {
    matches!(e, DmaError::BusOverflow { .. })
}

fn not_direct(e: &DmaError) -> bool {
    matches!(e, DmaError::NotADirectMapping { .. })
}

fn cache_failed(e: &DmaError) -> bool {
    matches!(e, DmaError::CacheMaintenance { .. })
}
