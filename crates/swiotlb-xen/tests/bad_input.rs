//! The bad-input catalogue: every public entry point of the engine and of the facade's pool
//! initialisation with zero, huge, overflowing, misaligned, unmapped, double-unmapped,
//! wrong-direction and out-of-mask values, on the simulated Xen. Each returns its documented
//! error, and the state is unchanged: pool slots, pool invariants, the simulator's
//! invariants, free machine frames, dom0's P2M, the page allocator, the original buffer's
//! bytes. Nothing panics.
//!
//! The catalogue prints how many inputs it tried (`cargo test -- --nocapture`).

mod common;

use common::{PAGE, Pv, PvEngine, SEGMENT, check, pattern, pool_used};
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
    // More than one bounce can hold (the buffer is scattered, so it must bounce).
    fx.rejects(
        "bounce larger than a segment",
        || fx.map(&d, fx.big, 300 * 1024, to, none),
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
    // A min_align_mask that leaves no room in a segment.
    let tight = d.with_min_align_mask(0x3_ffff).with_force_bounce(true);
    fx.rejects(
        "min_align_mask of a whole segment",
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
            vec![good(0), good(1), good(2), SgEntry::new(fx.big, 260 * 1024)],
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
