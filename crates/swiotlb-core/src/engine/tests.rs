//! Unit tests of the engine: a host-memory platform with a scrambled pfn -> bfn table, a
//! "device" that reads and writes through that table, and one test (or a few) per decision.

use super::*;
use crate::addr::Bfn;
use crate::error::{Error, FreeSpace, FullCause};
use crate::hooks::PlatformError;
use crate::linear::LinearMap;
use core::ptr::NonNull;
use std::boxed::Box;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::vec;
use std::vec::Vec;

const PHYS_BASE: u64 = 0x10_0000;
const FRAMES: u64 = 0x400;
const POOL_PFN: u64 = 0x100;
const POOL_FRAMES: u64 = 0x80; // 512 KiB, two segments.
const POOL_BFN: u64 = 0x5000;
const ORIG_PFN: u64 = 0x180;
const COH_PFN: u64 = 0x380;
const COH_FRAMES: u64 = 0x180;
const UNTRANSLATABLE_J: u64 = 200;
const FOREIGN_J: u64 = 210;
const FOREIGN_BFN: u64 = 0x9_0000;
const EXCHANGE_BFN: u64 = 0x6000;

/// Blocks of four frames stay contiguous, the blocks are in reverse order.
fn perm(j: u64, blocks: u64) -> u64 {
    (blocks - 1 - j / 4) * 4 + j % 4
}

/// The physical address of byte `off` after the start of original frame `j`.
fn orig(j: u64, off: u64) -> PhysAddr {
    PhysAddr::new((ORIG_PFN + j) * 4096 + off)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    ForDevice,
    ForCpu,
}

#[derive(Clone, Debug)]
struct CacheEvent {
    op: Op,
    /// `None`: foreign bytes known only by bus address.
    phys: Option<PhysAddr>,
    bus: BusAddr,
    len: usize,
    /// Through the preserving hooks (a range the engine could not check).
    preserving: bool,
    /// The bytes of the watched CPU range when the hook ran.
    watched: Vec<u8>,
    /// What the device saw at `bus` when the hook ran (empty if a bus frame of the range
    /// reaches no memory).
    device: Vec<u8>,
}

/// Host memory reached through a raw base pointer.
#[derive(Clone, Copy)]
struct Host {
    base: *mut u8,
}

// SAFETY: a description of the test's allocation; tests use disjoint ranges.
unsafe impl Send for Host {}
// SAFETY: as for `Send`.
unsafe impl Sync for Host {}

impl Host {
    fn ptr(self, phys: PhysAddr, len: usize) -> *mut u8 {
        let off = phys
            .as_u64()
            .checked_sub(PHYS_BASE)
            .expect("below the region");
        assert!(off + len as u64 <= FRAMES * 4096, "past the region");
        // SAFETY: checked to be inside the allocation.
        unsafe { self.base.add(usize::try_from(off).unwrap()) }
    }

    fn read(self, phys: PhysAddr, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: inside the allocation; no reference covers it.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(phys, len), v.as_mut_ptr(), len) };
        v
    }

    fn write(self, phys: PhysAddr, data: &[u8]) {
        // SAFETY: inside the allocation; no reference covers it.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(phys, data.len()), data.len())
        };
    }

    fn zero(self, phys: PhysAddr, len: usize) {
        // SAFETY: inside the allocation; no reference covers it.
        unsafe { core::ptr::write_bytes(self.ptr(phys, len), 0, len) };
    }
}

/// A frame-number map as a sorted vector: cheap to build and search under Miri, where
/// hashing and tree nodes are slow.
#[derive(Default)]
struct FrameMap(Vec<(u64, u64)>);

impl FrameMap {
    fn from_unsorted(mut v: Vec<(u64, u64)>) -> Self {
        v.sort_unstable();
        Self(v)
    }

    fn get(&self, k: &u64) -> Option<&u64> {
        let i = self.0.binary_search_by_key(k, |e| e.0).ok()?;
        Some(&self.0[i].1)
    }

    fn insert(&mut self, k: u64, v: u64) -> Option<u64> {
        match self.0.binary_search_by_key(&k, |e| e.0) {
            Ok(i) => Some(core::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    fn remove(&mut self, k: &u64) -> Option<u64> {
        let i = self.0.binary_search_by_key(k, |e| e.0).ok()?;
        Some(self.0.remove(i).1)
    }
}

struct TestPlatform {
    host: Host,
    p2m: RwLock<FrameMap>,
    /// The device's view: every bus frame that reaches memory, foreign ones included.
    m2p: RwLock<FrameMap>,
    /// The frame holding a foreign page.
    foreign: u64,
    /// Answer foreign bus frames with the identity (arm64) instead of `None` (x86 PV).
    foreign_identity: bool,
    needs_bounce: AtomicBool,
    fail_create: AtomicBool,
    fail_destroy: AtomicBool,
    fail_cache: AtomicBool,
    next_exchange: AtomicU64,
    next_give_back: AtomicU64,
    creates: AtomicU64,
    destroys: AtomicU64,
    watch: Mutex<Option<(PhysAddr, usize)>>,
    events: Mutex<Vec<CacheEvent>>,
}

impl TestPlatform {
    fn new(host: Host, contiguous_pool: bool, split_pool: bool) -> Self {
        let mut p2m = Vec::new();
        for i in 0..POOL_FRAMES {
            // A broken pool swaps two frames of the second segment.
            let k = if !contiguous_pool && (i == 40 || i == 41) {
                81 - i
            } else {
                i
            };
            // A split pool's second segment lies elsewhere on the bus (each segment still
            // contiguous).
            let k = if split_pool && i >= POOL_FRAMES / 2 {
                k + 0x100
            } else {
                k
            };
            p2m.push((POOL_PFN + i, POOL_BFN + k));
        }
        for j in 0..512 {
            let b = if j < 256 {
                0x8000 + perm(j, 64)
            } else {
                0x10_0000 + perm(j - 256, 64)
            };
            if j != UNTRANSLATABLE_J {
                let b = if j == FOREIGN_J { FOREIGN_BFN } else { b };
                p2m.push((ORIG_PFN + j, b));
            }
        }
        for k in 0..COH_FRAMES {
            p2m.push((COH_PFN + k, 0x20_0000 + perm(k, COH_FRAMES / 4)));
        }
        let m2p = FrameMap::from_unsorted(p2m.iter().map(|&(p, b)| (b, p)).collect());
        let p2m = FrameMap::from_unsorted(p2m);
        Self {
            host,
            p2m: RwLock::new(p2m),
            m2p: RwLock::new(m2p),
            foreign: ORIG_PFN + FOREIGN_J,
            foreign_identity: false,
            needs_bounce: AtomicBool::new(false),
            fail_create: AtomicBool::new(false),
            fail_destroy: AtomicBool::new(false),
            fail_cache: AtomicBool::new(false),
            next_exchange: AtomicU64::new(EXCHANGE_BFN),
            next_give_back: AtomicU64::new(0x40_0000),
            creates: AtomicU64::new(0),
            destroys: AtomicU64::new(0),
            watch: Mutex::new(None),
            events: Mutex::new(Vec::new()),
        }
    }

    fn bus_to_phys(&self, bus: BusAddr) -> Option<PhysAddr> {
        let m2p = self.m2p.read().unwrap();
        m2p.get(&bus.frame().as_u64())
            .map(|&p| bus.with_phys_frame(Pfn::new(p)))
    }

    /// What the device reads at `bus`, frame by frame through its view.
    fn dev_read(&self, bus: BusAddr, len: usize) -> Vec<u8> {
        self.dev_try_read(bus, len)
            .expect("device access to an unbacked bus frame")
    }

    /// What the device reads at `bus`, or `None` if a bus frame reaches no memory.
    fn dev_try_read(&self, bus: BusAddr, len: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        let mut done = 0;
        while done < len {
            let b = BusAddr::new(bus.as_u64() + done as u64);
            let chunk = (len - done).min(4096 - b.frame_offset() as usize);
            out.extend(self.host.read(self.bus_to_phys(b)?, chunk));
            done += chunk;
        }
        Some(out)
    }

    fn dev_write(&self, bus: BusAddr, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let b = BusAddr::new(bus.as_u64() + done as u64);
            let chunk = (data.len() - done).min(4096 - b.frame_offset() as usize);
            let p = self
                .bus_to_phys(b)
                .expect("device access to an unbacked bus frame");
            self.host.write(p, &data[done..done + chunk]);
            done += chunk;
        }
    }

    fn record(
        &self,
        op: Op,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        preserving: bool,
    ) -> Result<(), PlatformError> {
        if self.fail_cache.load(Ordering::Relaxed) {
            return Err(PlatformError::Hypercall {
                op: "GNTTABOP_cache_flush",
                errno: 22,
            });
        }
        let watched = match *self.watch.lock().unwrap() {
            Some((p, n)) => self.host.read(p, n),
            None => Vec::new(),
        };
        let device = self.dev_try_read(bus, len).unwrap_or_default();
        self.events.lock().unwrap().push(CacheEvent {
            op,
            phys,
            bus,
            len,
            preserving,
            watched,
            device,
        });
        Ok(())
    }

    fn take_events(&self) -> Vec<CacheEvent> {
        core::mem::take(&mut *self.events.lock().unwrap())
    }
}

// SAFETY: the tables describe the test's memory exactly: `pfn_to_bfn` and the device view
// agree, `bfn_to_local_pfn` answers only own frames (or, with `foreign_identity`, the
// identity as arm64 does, which the engine must filter with `pfn_valid`), and
// `create_contiguous_region` returns a contiguous range below the limit.
unsafe impl Platform for TestPlatform {
    fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn> {
        self.p2m
            .read()
            .unwrap()
            .get(&pfn.as_u64())
            .map(|&b| Bfn::new(b))
    }

    fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> {
        let p = *self.m2p.read().unwrap().get(&bfn.as_u64())?;
        if p == self.foreign {
            return self.foreign_identity.then_some(Pfn::new(bfn.as_u64()));
        }
        Some(Pfn::new(p))
    }

    fn needs_bounce(&self, dev: &Device, phys: PhysAddr, bus: BusAddr) -> bool {
        let _ = (dev, phys, bus);
        self.needs_bounce.load(Ordering::Relaxed)
    }

    fn sync_for_device(
        &self,
        _dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        _dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        self.record(Op::ForDevice, phys, bus, len, false)
    }

    fn sync_for_device_preserving(
        &self,
        _dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        _dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        self.record(Op::ForDevice, phys, bus, len, true)
    }

    fn sync_for_cpu_preserving(
        &self,
        _dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        _dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        self.record(Op::ForCpu, phys, bus, len, true)
    }

    fn sync_for_cpu(
        &self,
        _dev: &Device,
        phys: Option<PhysAddr>,
        bus: BusAddr,
        len: usize,
        _dir: DmaDirection,
    ) -> Result<(), PlatformError> {
        self.record(Op::ForCpu, phys, bus, len, false)
    }

    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, PlatformError> {
        let n = 1u64 << order;
        if !phys.is_aligned(4096 << order) {
            return Err(PlatformError::Misaligned {
                addr: phys,
                align: 4096 << order,
            });
        }
        if self.fail_create.load(Ordering::Relaxed) {
            return Err(PlatformError::Hypercall {
                op: "XENMEM_exchange",
                errno: 12,
            });
        }
        let first = self.next_exchange.load(Ordering::Relaxed).div_ceil(n) * n;
        if address_bits < 64 && (first + n) << 12 > 1u64 << address_bits {
            return Err(PlatformError::Exhausted {
                what: "machine memory below the limit",
            });
        }
        self.next_exchange.store(first + n, Ordering::Relaxed);
        let mut p2m = self.p2m.write().unwrap();
        let mut m2p = self.m2p.write().unwrap();
        let pfn0 = phys.frame().as_u64();
        for i in 0..n {
            if let Some(old) = p2m.insert(pfn0 + i, first + i) {
                m2p.remove(&old);
            }
            m2p.insert(first + i, pfn0 + i);
        }
        self.host.zero(phys, (n * 4096) as usize);
        self.creates.fetch_add(1, Ordering::Relaxed);
        Ok(Bfn::new(first).start())
    }

    unsafe fn destroy_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
    ) -> Result<(), PlatformError> {
        if self.fail_destroy.load(Ordering::Relaxed) {
            return Err(PlatformError::Hypercall {
                op: "XENMEM_exchange",
                errno: 12,
            });
        }
        let n = 1u64 << order;
        let mut p2m = self.p2m.write().unwrap();
        let mut m2p = self.m2p.write().unwrap();
        let pfn0 = phys.frame().as_u64();
        for i in 0..n {
            // Scatter: every other frame of a high range.
            let b = self.next_give_back.fetch_add(2, Ordering::Relaxed);
            if let Some(old) = p2m.insert(pfn0 + i, b) {
                m2p.remove(&old);
            }
            m2p.insert(b, pfn0 + i);
        }
        self.host.zero(phys, (n * 4096) as usize);
        self.destroys.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A first-fit allocator of naturally aligned blocks over the coherent region.
struct TestPages {
    host: Host,
    used: Mutex<Vec<bool>>,
    live: Mutex<BTreeMap<u64, u32>>,
    /// Live blocks recorded as exchanged (Linux's `PageXenRemapped`).
    exchanged: Mutex<Vec<u64>>,
    /// `pfn_valid` answers from the region (true) or always `true` (false).
    check_ram: bool,
}

impl TestPages {
    fn new(host: Host, check_ram: bool) -> Self {
        Self {
            host,
            used: Mutex::new(vec![false; COH_FRAMES as usize]),
            live: Mutex::new(BTreeMap::new()),
            exchanged: Mutex::new(Vec::new()),
            check_ram,
        }
    }

    fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

// SAFETY: hands out disjoint, naturally aligned, zeroed blocks of the test's memory;
// `pfn_valid` answers the test's RAM exactly when `check_ram`.
unsafe impl PageAllocator for TestPages {
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr> {
        let n = 1usize << order;
        let mut used = self.used.lock().unwrap();
        let start = (0..used.len())
            .step_by(n)
            .find(|&s| s + n <= used.len() && used[s..s + n].iter().all(|u| !u))?;
        used[start..start + n].iter_mut().for_each(|u| *u = true);
        let phys = PhysAddr::new((COH_PFN + start as u64) * 4096);
        self.host.zero(phys, n * 4096);
        self.live.lock().unwrap().insert(phys.as_u64(), order);
        Some(phys)
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        assert_eq!(
            self.live.lock().unwrap().remove(&phys.as_u64()),
            Some(order)
        );
        self.exchanged
            .lock()
            .unwrap()
            .retain(|&p| p != phys.as_u64());
        let start = (phys.frame().as_u64() - COH_PFN) as usize;
        let mut used = self.used.lock().unwrap();
        used[start..start + (1 << order)]
            .iter_mut()
            .for_each(|u| *u = false);
    }

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        !self.check_ram || (PHYS_BASE / 4096..PHYS_BASE / 4096 + FRAMES).contains(&pfn.as_u64())
    }

    fn set_exchanged(&self, phys: PhysAddr, order: u32) {
        assert_eq!(self.live.lock().unwrap().get(&phys.as_u64()), Some(&order));
        self.exchanged.lock().unwrap().push(phys.as_u64());
    }

    fn block_state(&self, phys: PhysAddr, order: u32) -> Option<BlockState> {
        if self.live.lock().unwrap().get(&phys.as_u64()) != Some(&order) {
            return Some(BlockState::Free);
        }
        let exchanged = self.exchanged.lock().unwrap().contains(&phys.as_u64());
        Some(BlockState::Allocated { exchanged })
    }
}

type Engine = DmaEngine<TestPlatform, LinearMap, Vec<Slot>, TestPages>;

/// The engine and its memory; fields drop in order, the engine before the memory.
struct Fixture {
    engine: Engine,
    host: Host,
    _mem: OwnedMem,
}

struct Setup {
    pool: bool,
    contiguous_pool: bool,
    split_pool: bool,
    nareas: usize,
    foreign_identity: bool,
    check_ram: bool,
    cpu: Option<fn() -> usize>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            pool: true,
            contiguous_pool: true,
            split_pool: false,
            nareas: 2,
            foreign_identity: false,
            check_ram: true,
            cpu: None,
        }
    }
}

impl Fixture {
    fn new() -> Self {
        Self::with(Setup::default()).expect("valid engine")
    }

    fn with(s: Setup) -> Result<Self, EngineInitError> {
        let len = (FRAMES * 4096) as usize;
        let base = Box::into_raw(vec![0x5au8; len].into_boxed_slice()).cast::<u8>();
        let host = Host { base };
        let mem_owner = OwnedMem { base, len };
        let mut platform = TestPlatform::new(host, s.contiguous_pool, s.split_pool);
        platform.foreign_identity = s.foreign_identity;
        let pages = TestPages::new(host, s.check_ram);
        let pool = if s.pool {
            // SAFETY: the allocation lives until the fixture drops, after the engine.
            let mem = unsafe { LinearMap::new(base, PhysAddr::new(PHYS_BASE), len) };
            let nslabs = (POOL_FRAMES * 2) as usize;
            let storage = (0..nslabs).map(|_| Slot::new()).collect();
            // SAFETY: the pool frames are used by the pool alone.
            Some(
                unsafe {
                    BouncePool::new(
                        mem,
                        PhysAddr::new(POOL_PFN * 4096),
                        nslabs,
                        s.nareas,
                        storage,
                    )
                }
                .unwrap(),
            )
        } else {
            None
        };
        // SAFETY: pool, originals and coherent pages are all in the region the platform
        // translates and the LinearMap reaches; the pool's translations never change.
        let mut engine = unsafe { Engine::new(platform, pool, pages) }?;
        if let Some(cpu) = s.cpu {
            engine = engine.with_cpu_hint(cpu);
        }
        Ok(Self {
            engine,
            host,
            _mem: mem_owner,
        })
    }

    fn p(&self) -> &TestPlatform {
        self.engine.platform()
    }

    fn used(&self) -> usize {
        self.engine.pool().map_or(0, |p| p.stats().used)
    }

    fn map(
        &self,
        dev: &Device,
        phys: PhysAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<BusAddr, DmaError> {
        // SAFETY: the test's originals are reached only through raw pointers.
        unsafe {
            self.engine
                .map_page(dev, phys, size, dir, DmaAttrs::empty())
        }
    }
}

/// The test memory, freed on drop.
struct OwnedMem {
    base: *mut u8,
    len: usize,
}

impl Drop for OwnedMem {
    fn drop(&mut self) {
        // SAFETY: `base` came from `Box::into_raw` of `len` bytes, and its users (the engine)
        // are gone.
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(self.base, self.len)) });
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const DEV32: Device = Device::new(DmaMask::BITS_32);
const DEV64: Device = Device::new(DmaMask::FULL);
const BIDI: DmaDirection = DmaDirection::Bidirectional;

#[test]
fn contiguous_range_in_mask_is_direct() {
    let fx = Fixture::new();
    let phys = orig(0, 0x123);
    fx.host.write(phys, &pattern(1, 8000));
    let bus = fx.map(&DEV32, phys, 8000, BIDI).unwrap();
    assert_eq!(bus.as_u64(), (0x8000 + perm(0, 64)) * 4096 + 0x123);
    assert_eq!(fx.p().dev_read(bus, 8000), pattern(1, 8000));
    assert_eq!(fx.used(), 0);
    fx.p().dev_write(bus, &pattern(2, 8000));
    fx.engine
        .unmap_page(&DEV32, bus, 8000, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(fx.host.read(phys, 8000), pattern(2, 8000));
    let st = fx.engine.stats();
    assert_eq!(
        (st.direct_maps, st.bounced_maps, st.direct_unmaps),
        (1, 0, 1)
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn direct_maps_are_not_capped_at_a_segment() {
    let fx = Fixture::new();
    // Frames 0..=3 are one contiguous block: 16 KiB fits, and a larger range straddles.
    assert!(fx.map(&DEV64, orig(0, 0), 16384, BIDI).is_ok());
    // Identity platform for the size test: a device behind an IOMMU maps 1 MiB directly.
    let dev = DEV64.with_iommu(true);
    let bus = fx.map(&dev, orig(0, 0), 1 << 20, BIDI).unwrap();
    assert_eq!(bus.as_u64(), orig(0, 0).as_u64());
    assert!(fx.engine.max_mapping_size(&dev) < 1 << 20);
}

/// Maps `len` bytes at `phys` and checks that the mapping is bounced for `reason`, that the
/// device sees the original, that its writes come back at unmap and that the slots go back.
fn check_bounce(fx: &Fixture, dev: &Device, phys: PhysAddr, len: usize, reason: BounceReason) {
    fx.host.write(phys, &pattern(7, len));
    let before = fx.engine.stats().bounced_by_reason[reason.index()];
    let bus = fx.map(dev, phys, len, BIDI).unwrap();
    assert!(dev.dma_mask.covers(bus, len as u64));
    assert_eq!(
        fx.engine.stats().bounced_by_reason[reason.index()],
        before + 1
    );
    let tlb = fx.p().bus_to_phys(bus).unwrap();
    assert!(
        fx.engine.pool().unwrap().contains(tlb),
        "{bus} is not a bounce buffer"
    );
    assert_eq!(fx.p().dev_read(bus, len), pattern(7, len));
    fx.p().dev_write(bus, &pattern(8, len));
    assert_eq!(
        fx.host.read(phys, len),
        pattern(7, len),
        "copied back before the unmap"
    );
    fx.engine
        .unmap_page(dev, bus, len, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(fx.host.read(phys, len), pattern(8, len));
    assert_eq!(fx.used(), 0);
    fx.engine.pool().unwrap().check_invariants().unwrap();
}

#[test]
fn straddling_range_is_bounced() {
    let fx = Fixture::new();
    check_bounce(
        &fx,
        &DEV32,
        orig(3, 2048),
        4096,
        BounceReason::NotContiguous,
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn range_outside_mask_is_bounced_and_high_device_maps_it_directly() {
    let fx = Fixture::new();
    check_bounce(&fx, &DEV32, orig(256, 100), 3000, BounceReason::OutsideMask);
    let bus = fx.map(&DEV64, orig(256, 100), 3000, BIDI).unwrap();
    assert!(bus.as_u64() >= 1 << 32);
    assert_eq!(fx.used(), 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn untranslatable_frame_is_bounced() {
    let fx = Fixture::new();
    check_bounce(
        &fx,
        &DEV64,
        orig(UNTRANSLATABLE_J, 0),
        512,
        BounceReason::Untranslatable,
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn forced_and_platform_bounces() {
    let fx = Fixture::new();
    check_bounce(
        &fx,
        &DEV64.with_force_bounce(true),
        orig(0, 0),
        4096,
        BounceReason::Forced,
    );
    fx.p().needs_bounce.store(true, Ordering::Relaxed);
    check_bounce(&fx, &DEV64, orig(0, 0), 4096, BounceReason::Platform);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn iommu_device_gets_the_physical_address_and_is_never_bounced() {
    let fx = Fixture::new();
    let dev = DEV32.with_iommu(true).with_force_bounce(true);
    let phys = orig(3, 2048); // straddles in bus space, irrelevant behind an IOMMU
    assert_eq!(
        fx.map(&dev, phys, 4096, BIDI).unwrap().as_u64(),
        phys.as_u64()
    );
    assert_eq!(fx.used(), 0);
    let narrow = Device::new(DmaMask::from_bits(20).unwrap()).with_iommu(true);
    assert!(matches!(
        fx.map(&narrow, phys, 4096, BIDI),
        Err(DmaError::Unreachable { .. })
    ));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn mmio_is_translated_never_bounced() {
    let fx = Fixture::new();
    // SAFETY: nothing is read or written for MMIO.
    let map = |dev: &Device, phys, len| unsafe {
        fx.engine.map_page(dev, phys, len, BIDI, DmaAttrs::MMIO)
    };
    let bus = map(&DEV32, orig(0, 0), 4096).unwrap();
    assert_eq!(bus.as_u64(), (0x8000 + perm(0, 64)) * 4096);
    assert!(matches!(
        map(&DEV32, orig(256, 0), 4096),
        Err(DmaError::Unreachable { bus: Some(_), .. })
    ));
    assert!(matches!(
        map(&DEV64, orig(UNTRANSLATABLE_J, 0), 16),
        Err(DmaError::Unreachable { bus: None, .. })
    ));
    assert_eq!(fx.used(), 0);
    assert!(fx.p().take_events().is_empty());
}

#[test]
fn bounce_above_the_mask_is_given_back() {
    let fx = Fixture::new();
    // The pool sits at bus 0x500_0000..0x508_0000: a 26-bit device cannot reach it.
    let dev = Device::new(DmaMask::from_bits(26).unwrap());
    let err = fx.map(&dev, orig(256, 0), 100, BIDI).unwrap_err();
    assert!(
        matches!(err, DmaError::BounceUnreachable { bus, size: 100, .. } if bus.as_u64() >= 0x500_0000),
        "{err:?}"
    );
    assert_eq!(fx.used(), 0);
    assert_eq!(fx.engine.stats().map_failures, 1);
    assert!(!fx.engine.dma_supported(&dev, dev.dma_mask));
    assert!(
        fx.engine
            .dma_supported(&dev, DmaMask::from_bits(27).unwrap())
    );
    assert_eq!(fx.engine.pool_bus_top(), Some(BusAddr::new(0x507_ffff)));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn no_pool_and_full_pool_fail_with_the_reason() {
    let fx = Fixture::with(Setup {
        pool: false,
        ..Setup::default()
    })
    .unwrap();
    assert_eq!(
        fx.map(&DEV32, orig(3, 2048), 4096, BIDI),
        Err(DmaError::NoPool {
            phys: orig(3, 2048),
            size: 4096,
            reason: BounceReason::NotContiguous
        })
    );
    assert!(
        fx.engine
            .dma_supported(&DEV32, DmaMask::from_bits(12).unwrap())
    );
    assert_eq!(fx.engine.max_mapping_size(&DEV32), usize::MAX);

    let fx = Fixture::new();
    // Above 4 GiB and not contiguous: the mask is checked first, as Linux's `dma_capable`.
    let err = fx.map(&DEV32, orig(256, 0), 300 << 10, BIDI).unwrap_err();
    assert!(matches!(
        err,
        DmaError::Bounce {
            source: Error::TooLarge { .. },
            reason: BounceReason::OutsideMask,
            ..
        }
    ));
    let err = fx.map(&DEV64, orig(256, 0), 300 << 10, BIDI).unwrap_err();
    assert!(matches!(
        err,
        DmaError::Bounce {
            source: Error::TooLarge { .. },
            reason: BounceReason::NotContiguous,
            ..
        }
    ));
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn bad_input_is_an_error() {
    let fx = Fixture::new();
    assert_eq!(fx.map(&DEV32, orig(0, 0), 0, BIDI), Err(DmaError::ZeroSize));
    let top = PhysAddr::new(u64::MAX - 10);
    assert_eq!(
        fx.map(&DEV32, top, 100, BIDI),
        Err(DmaError::AddressOverflow {
            phys: top,
            size: 100
        })
    );
    let bus = BusAddr::new(u64::MAX);
    assert_eq!(
        fx.engine
            .unmap_page(&DEV32, bus, 2, BIDI, DmaAttrs::empty()),
        Err(DmaError::BusOverflow { bus, size: 2 })
    );
    assert_eq!(
        fx.engine
            .sync_single_for_cpu(&DEV32, BusAddr::new(0x1000), 0, BIDI),
        Err(DmaError::ZeroSize)
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn double_unmap_and_inner_unmap_are_caught() {
    let fx = Fixture::new();
    let bus = fx.map(&DEV32, orig(256, 0), 5000, BIDI).unwrap();
    let inner = BusAddr::new(bus.as_u64() + 2048);
    assert!(matches!(
        fx.engine
            .unmap_page(&DEV32, inner, 100, BIDI, DmaAttrs::empty()),
        Err(DmaError::Pool {
            source: Error::NotMapped { .. },
            ..
        })
    ));
    fx.engine
        .unmap_page(&DEV32, bus, 5000, BIDI, DmaAttrs::empty())
        .unwrap();
    let again = fx
        .engine
        .unmap_page(&DEV32, bus, 5000, BIDI, DmaAttrs::empty());
    assert!(matches!(
        again,
        Err(DmaError::Pool {
            source: Error::NotMapped { .. },
            ..
        })
    ));
    assert_eq!(fx.engine.stats().unmap_sync_failures, 2);
    assert_eq!(fx.used(), 0);
}

#[test]
fn partial_syncs_of_a_bounce_copy_the_right_bytes() {
    let fx = Fixture::new();
    let phys = orig(256, 0);
    fx.host.write(phys, &pattern(1, 6000));
    let bus = fx.map(&DEV32, phys, 6000, BIDI).unwrap();
    // The device writes the middle; a partial sync for the CPU brings exactly that back.
    let mid = BusAddr::new(bus.as_u64() + 1000);
    fx.p().dev_write(mid, &pattern(9, 500));
    fx.engine
        .sync_single_for_cpu(&DEV32, mid, 500, BIDI)
        .unwrap();
    let mut want = pattern(1, 6000);
    want[1000..1500].copy_from_slice(&pattern(9, 500));
    assert_eq!(fx.host.read(phys, 6000), want);
    // The CPU writes the tail; a sync for the device sends it.
    let tail = PhysAddr::new(phys.as_u64() + 5000);
    fx.host.write(tail, &pattern(4, 1000));
    fx.engine
        .sync_single_for_device(&DEV32, BusAddr::new(bus.as_u64() + 5000), 1000, BIDI)
        .unwrap();
    assert_eq!(
        fx.p().dev_read(BusAddr::new(bus.as_u64() + 5000), 1000),
        pattern(4, 1000)
    );
    // ToDevice syncs for the CPU copy nothing back.
    fx.p().dev_write(bus, &[0xee; 10]);
    fx.engine
        .sync_single_for_cpu(&DEV32, bus, 10, DmaDirection::ToDevice)
        .unwrap();
    assert_eq!(fx.host.read(phys, 10), want[..10]);
    fx.engine
        .unmap_page(&DEV32, bus, 6000, DmaDirection::ToDevice, DmaAttrs::empty())
        .unwrap();
    assert_eq!(fx.host.read(phys, 10), want[..10]);
    assert_eq!(fx.used(), 0);
}

#[test]
fn non_coherent_bounce_follows_linux_order() {
    let fx = Fixture::new();
    let dev = DEV32.with_coherent(false);
    let phys = orig(256, 64);
    fx.host.write(phys, &pattern(3, 3000));
    *fx.p().watch.lock().unwrap() = Some((phys, 3000));
    let bus = fx.map(&dev, phys, 3000, BIDI).unwrap();
    let ev = fx.p().take_events();
    assert_eq!(ev.len(), 1);
    // Map: the copy-in happened before the clean (the device view already holds the data),
    // and the hook got the bounce buffer's addresses.
    assert_eq!(ev[0].op, Op::ForDevice);
    assert_eq!((ev[0].bus, ev[0].len), (bus, 3000));
    assert!(fx.engine.pool().unwrap().contains(ev[0].phys.unwrap()));
    assert_eq!(ev[0].device, pattern(3, 3000));

    fx.p().dev_write(bus, &pattern(5, 3000));
    fx.engine
        .sync_single_for_cpu(&dev, bus, 3000, BIDI)
        .unwrap();
    let ev = fx.p().take_events();
    // Sync for the CPU: invalidate before the copy back (the original still holds the old
    // bytes when the hook runs).
    assert_eq!(ev[0].op, Op::ForCpu);
    assert_eq!(ev[0].watched, pattern(3, 3000));
    assert_eq!(fx.host.read(phys, 3000), pattern(5, 3000));

    fx.host.write(phys, &pattern(6, 3000));
    fx.engine
        .sync_single_for_device(&dev, bus, 3000, BIDI)
        .unwrap();
    let ev = fx.p().take_events();
    // Sync for the device: copy, then clean.
    assert_eq!(ev[0].op, Op::ForDevice);
    assert_eq!(ev[0].device, pattern(6, 3000));

    fx.p().dev_write(bus, &pattern(7, 3000));
    fx.engine
        .unmap_page(&dev, bus, 3000, BIDI, DmaAttrs::empty())
        .unwrap();
    let ev = fx.p().take_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].op, Op::ForCpu);
    assert_eq!(ev[0].watched, pattern(6, 3000));
    assert_eq!(fx.host.read(phys, 3000), pattern(7, 3000));
}

#[test]
fn skip_cpu_sync_skips_cache_and_copy_back_but_not_copy_in() {
    let fx = Fixture::new();
    let dev = DEV32.with_coherent(false);
    let phys = orig(256, 0);
    fx.host.write(phys, &pattern(1, 100));
    let skip = DmaAttrs::SKIP_CPU_SYNC;
    // SAFETY: the original is reached only through raw pointers.
    let bus = unsafe { fx.engine.map_page(&dev, phys, 100, BIDI, skip) }.unwrap();
    assert_eq!(fx.p().dev_read(bus, 100), pattern(1, 100));
    fx.p().dev_write(bus, &pattern(2, 100));
    fx.engine.unmap_page(&dev, bus, 100, BIDI, skip).unwrap();
    assert_eq!(fx.host.read(phys, 100), pattern(1, 100));
    assert!(fx.p().take_events().is_empty());
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn coherent_devices_get_no_cache_maintenance() {
    let fx = Fixture::new();
    let bus = fx.map(&DEV32, orig(256, 0), 100, BIDI).unwrap();
    fx.engine
        .sync_single_for_device(&DEV32, bus, 100, BIDI)
        .unwrap();
    fx.engine
        .unmap_page(&DEV32, bus, 100, BIDI, DmaAttrs::empty())
        .unwrap();
    let bus = fx.map(&DEV32, orig(0, 0), 100, BIDI).unwrap();
    fx.engine
        .unmap_page(&DEV32, bus, 100, BIDI, DmaAttrs::empty())
        .unwrap();
    assert!(fx.p().take_events().is_empty());
}

#[test]
fn direct_non_coherent_unmap_finds_local_runs_and_foreign_frames() {
    for foreign_identity in [false, true] {
        let fx = Fixture::with(Setup {
            foreign_identity,
            ..Setup::default()
        })
        .unwrap();
        let dev = DEV64.with_coherent(false);
        // Local: frames 0..=3 are one block; the hook gets one call with the physical address.
        let bus = fx.map(&dev, orig(0, 16), 10000, BIDI).unwrap();
        fx.engine
            .unmap_page(&dev, bus, 10000, BIDI, DmaAttrs::empty())
            .unwrap();
        let ev = fx.p().take_events();
        assert_eq!(ev.len(), 2);
        assert_eq!(
            (ev[0].op, ev[0].phys, ev[0].len),
            (Op::ForDevice, Some(orig(0, 16)), 10000)
        );
        assert_eq!(
            (ev[1].op, ev[1].phys, ev[1].bus, ev[1].len),
            (Op::ForCpu, Some(orig(0, 16)), bus, 10000)
        );

        // Foreign: map knows the physical address; unmap and sync only know the bus
        // address, and the frame is not the domain's own RAM, so the hook gets no physical
        // address and the exact bus range.
        let phys = orig(FOREIGN_J, 0x80);
        let bus = fx.map(&dev, phys, 256, BIDI).unwrap();
        assert_eq!(bus.as_u64(), FOREIGN_BFN * 4096 + 0x80);
        fx.engine.sync_single_for_cpu(&dev, bus, 256, BIDI).unwrap();
        fx.engine
            .unmap_page(&dev, bus, 256, BIDI, DmaAttrs::empty())
            .unwrap();
        let ev = fx.p().take_events();
        assert_eq!(ev.len(), 3);
        assert_eq!(
            (ev[0].op, ev[0].phys, ev[0].bus),
            (Op::ForDevice, Some(phys), bus)
        );
        for e in &ev[1..] {
            assert_eq!(e.op, Op::ForCpu);
            assert_eq!(e.phys, None);
            assert_eq!((e.bus, e.len), (bus, 256));
        }
        assert_eq!(fx.used(), 0);
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn direct_syncs_hand_over_local_and_foreign_runs_with_exact_ranges() {
    let fx = Fixture::new();
    let dev = DEV64.with_coherent(false);
    let ev_of = |bus: u64, len: usize| {
        fx.engine
            .sync_single_for_cpu(&dev, BusAddr::new(bus), len, BIDI)
            .unwrap();
        fx.p()
            .take_events()
            .into_iter()
            .map(|e| {
                assert_eq!(e.op, Op::ForCpu);
                (e.phys, e.bus.as_u64(), e.len)
            })
            .collect::<Vec<_>>()
    };
    // Bus frame 0x80ff is original frame 3; 0x8100 and 0x8101 reach no frame of the domain:
    // one local call with the physical address, then one call for both foreign frames.
    assert_eq!(
        ev_of(0x080f_f800, 0x800 + 0x1000 + 0x10),
        [
            (Some(orig(3, 0x800)), 0x080f_f800, 0x800),
            (None, 0x0810_0000, 0x1010),
        ]
    );
    // Foreign first (bus frame 0x7fff), then local (0x8000 is original frame 252).
    assert_eq!(
        ev_of(0x07ff_ff00, 0x200),
        [
            (None, 0x07ff_ff00, 0x100),
            (Some(orig(252, 0)), 0x0800_0000, 0x100),
        ]
    );
    // A failing hook on foreign bytes says so: no physical address, the exact bus range.
    fx.p().fail_cache.store(true, Ordering::Relaxed);
    let err = fx
        .engine
        .sync_single_for_device(&dev, BusAddr::new(0x0810_0010), 0x20, BIDI)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::CacheMaintenance {
                phys: None,
                bus,
                size: 0x20,
                source: PlatformError::Hypercall { errno: 22, .. },
            } if bus.as_u64() == 0x0810_0010
        ),
        "{err:?}"
    );
    assert!(
        std::format!("{err}").contains("CPU address unknown"),
        "{err}"
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn without_pfn_valid_an_identity_foreign_frame_reads_as_local() {
    // What `pfn_valid` is for: arm64 answers foreign bus frames with the identity.
    let fx = Fixture::with(Setup {
        foreign_identity: true,
        check_ram: false,
        ..Setup::default()
    })
    .unwrap();
    let dev = DEV64.with_coherent(false);
    let bus = fx.map(&dev, orig(FOREIGN_J, 0), 64, BIDI).unwrap();
    fx.p().take_events();
    fx.engine
        .unmap_page(&dev, bus, 64, BIDI, DmaAttrs::empty())
        .unwrap();
    let ev = fx.p().take_events();
    assert_eq!(ev[0].phys, Some(PhysAddr::new(bus.as_u64())));
}

#[test]
fn cache_errors_are_reported_and_never_leak_slots() {
    let fx = Fixture::new();
    let dev = DEV32.with_coherent(false);
    fx.p().fail_cache.store(true, Ordering::Relaxed);
    let err = fx.map(&dev, orig(256, 0), 100, BIDI).unwrap_err();
    assert!(matches!(err, DmaError::CacheMaintenance { .. }));
    assert_eq!(fx.used(), 0);
    fx.p().fail_cache.store(false, Ordering::Relaxed);
    let phys = orig(256, 0);
    fx.host.write(phys, &pattern(1, 100));
    let bus = fx.map(&dev, phys, 100, BIDI).unwrap();
    fx.p().dev_write(bus, &pattern(2, 100));
    fx.p().fail_cache.store(true, Ordering::Relaxed);
    let err = fx
        .engine
        .unmap_page(&dev, bus, 100, BIDI, DmaAttrs::empty());
    assert!(matches!(err, Err(DmaError::CacheMaintenance { .. })));
    // The mapping is gone and its data came back regardless.
    assert_eq!(fx.used(), 0);
    assert_eq!(fx.host.read(phys, 100), pattern(2, 100));
    assert_eq!(fx.engine.stats().cache_failures, 2);
}

/// The size of issue 15's report: far past a 64-byte bounce's slot and past the pool.
const OVERSIZE: usize = 0x14_2000;

/// The (op, physical address, bus address, length, preserving) of each cache event.
fn cache_calls(fx: &Fixture) -> Vec<(Op, Option<PhysAddr>, BusAddr, usize, bool)> {
    fx.p()
        .take_events()
        .into_iter()
        .map(|e| (e.op, e.phys, e.bus, e.len, e.preserving))
        .collect()
}

#[test]
fn an_oversize_unmap_of_a_bounce_maintains_and_copies_only_the_mapping() {
    let fx = Fixture::new();
    let dev = DEV32.with_coherent(false);
    let phys = orig(256, 0);
    fx.host.write(phys, &pattern(1, 4096));
    let bus = fx.map(&dev, phys, 64, BIDI).unwrap();
    let tlb = fx.p().bus_to_phys(bus).unwrap();
    assert!(fx.engine.pool().unwrap().contains(tlb));
    fx.p().take_events();
    fx.p().dev_write(bus, &pattern(2, 64));
    fx.engine
        .unmap_page(&dev, bus, OVERSIZE, BIDI, DmaAttrs::empty())
        .unwrap();
    // One invalidate, of the mapping's 64 bytes in the pool: not of the caller's 1.3 MiB,
    // which reach past the pool into memory the engine knows nothing of.
    assert_eq!(cache_calls(&fx), [(Op::ForCpu, Some(tlb), bus, 64, false)]);
    // The copy back is clamped too: the guard bytes after the original are untouched.
    let mut want = pattern(1, 4096);
    want[..64].copy_from_slice(&pattern(2, 64));
    assert_eq!(fx.host.read(phys, 4096), want);
    assert_eq!(fx.used(), 0);
    assert_eq!(fx.engine.pool().unwrap().stats().overflow_attempts, 1);
    // The sg loop is the same unmap: an entry whose length is too large is clamped.
    let mut sg = [SgEntry::new(phys, 64)];
    // SAFETY: the test's originals are reached only through raw pointers.
    unsafe { fx.engine.map_sg(&dev, &mut sg, BIDI, DmaAttrs::empty()) }.unwrap();
    let tlb = fx.p().bus_to_phys(sg[0].dma_address).unwrap();
    fx.p().take_events();
    sg[0].dma_length = OVERSIZE;
    fx.engine
        .unmap_sg(&dev, &sg, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(
        cache_calls(&fx),
        [(Op::ForCpu, Some(tlb), sg[0].dma_address, 64, false)]
    );
    assert_eq!(fx.used(), 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn unmaps_and_syncs_of_pool_addresses_that_are_not_mapped_touch_nothing() {
    let fx = Fixture::new();
    let dev = DEV32.with_coherent(false);
    let pool = fx.engine.pool().unwrap();
    // Never mapped: a slot in the middle of the pool; and a stale address, unmapped.
    let never = BusAddr::new(POOL_BFN * 4096 + 0x1_0000);
    let phys = orig(256, 0);
    let stale = fx.map(&dev, phys, 64, BIDI).unwrap();
    fx.engine
        .unmap_page(&dev, stale, 64, BIDI, DmaAttrs::empty())
        .unwrap();
    fx.p().take_events();
    let before = pool.stats();
    for bus in [never, stale] {
        for size in [64, OVERSIZE] {
            let not_mapped = |r: Result<(), DmaError>| {
                matches!(
                    r,
                    Err(DmaError::Pool {
                        source: Error::NotMapped { .. },
                        ..
                    })
                )
            };
            assert!(not_mapped(
                fx.engine.sync_single_for_cpu(&dev, bus, size, BIDI)
            ));
            assert!(not_mapped(
                fx.engine.sync_single_for_device(&dev, bus, size, BIDI)
            ));
            assert!(not_mapped(fx.engine.unmap_page(
                &dev,
                bus,
                size,
                BIDI,
                DmaAttrs::empty()
            )));
            assert_eq!(
                cache_calls(&fx),
                [],
                "{bus} {size:#x}: no cache maintenance"
            );
        }
    }
    let sg = [SgEntry {
        dma_address: never,
        dma_length: OVERSIZE,
        ..SgEntry::new(phys, OVERSIZE)
    }];
    assert!(fx.engine.sync_sg_for_cpu(&dev, &sg, BIDI).is_err());
    assert!(fx.engine.sync_sg_for_device(&dev, &sg, BIDI).is_err());
    assert!(
        fx.engine
            .unmap_sg(&dev, &sg, BIDI, DmaAttrs::empty())
            .is_err()
    );
    assert_eq!(cache_calls(&fx), []);
    assert_eq!(pool.stats().syncs, before.syncs);
    assert_eq!(fx.used(), 0);
}

#[test]
fn an_oversize_sync_of_a_bounce_is_clamped_to_the_mapping() {
    let fx = Fixture::new();
    let dev = DEV32.with_coherent(false);
    let phys = orig(256, 0x100);
    fx.host.write(orig(256, 0), &pattern(1, 4096));
    let bus = fx.map(&dev, phys, 64, BIDI).unwrap();
    let tlb = fx.p().bus_to_phys(bus).unwrap();
    fx.p().take_events();
    fx.p().dev_write(bus, &pattern(2, 64));
    fx.engine
        .sync_single_for_cpu(&dev, bus, OVERSIZE, BIDI)
        .unwrap();
    assert_eq!(cache_calls(&fx), [(Op::ForCpu, Some(tlb), bus, 64, false)]);
    let mut want = pattern(1, 4096);
    want[0x100..0x140].copy_from_slice(&pattern(2, 64));
    assert_eq!(fx.host.read(orig(256, 0), 4096), want);
    // From inside the mapping: the rest of it.
    let mid = BusAddr::new(bus.as_u64() + 16);
    let tlb_mid = PhysAddr::new(tlb.as_u64() + 16);
    fx.engine
        .sync_single_for_device(&dev, mid, OVERSIZE, BIDI)
        .unwrap();
    assert_eq!(
        cache_calls(&fx),
        [(Op::ForDevice, Some(tlb_mid), mid, 48, false)]
    );
    // The sg loops sync each entry's `length`: clamped the same way.
    let sg = [SgEntry {
        dma_address: bus,
        dma_length: 64,
        ..SgEntry::new(phys, OVERSIZE)
    }];
    fx.engine.sync_sg_for_cpu(&dev, &sg, BIDI).unwrap();
    fx.engine.sync_sg_for_device(&dev, &sg, BIDI).unwrap();
    assert_eq!(
        cache_calls(&fx),
        [
            (Op::ForCpu, Some(tlb), bus, 64, false),
            (Op::ForDevice, Some(tlb), bus, 64, false)
        ]
    );
    assert_eq!(fx.host.read(orig(256, 0), 4096), want);
    // A failing invalidate for the CPU copies nothing back.
    fx.p().dev_write(bus, &pattern(3, 64));
    fx.p().fail_cache.store(true, Ordering::Relaxed);
    assert!(matches!(
        fx.engine.sync_single_for_cpu(&dev, bus, OVERSIZE, BIDI),
        Err(DmaError::CacheMaintenance { size: 64, .. })
    ));
    assert_eq!(fx.host.read(orig(256, 0), 4096), want);
    fx.p().fail_cache.store(false, Ordering::Relaxed);
    fx.engine
        .unmap_page(&dev, bus, 64, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(fx.used(), 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn direct_unmaps_and_syncs_go_through_the_preserving_hooks() {
    // A direct mapping is not recorded: its size at unmap or sync is the caller's word, so
    // the maintenance must not be able to discard anybody's data.
    let fx = Fixture::new();
    let dev = DEV64.with_coherent(false);
    let bus = fx.map(&dev, orig(0, 16), 100, BIDI).unwrap();
    assert_eq!(
        cache_calls(&fx),
        [(Op::ForDevice, Some(orig(0, 16)), bus, 100, false)],
        "the map's range is the caller's own (map_page's contract)"
    );
    fx.engine
        .sync_single_for_cpu(&dev, bus, OVERSIZE, BIDI)
        .unwrap();
    fx.engine
        .sync_single_for_device(&dev, bus, OVERSIZE, BIDI)
        .unwrap();
    fx.engine
        .unmap_page(&dev, bus, OVERSIZE, BIDI, DmaAttrs::empty())
        .unwrap();
    let calls = cache_calls(&fx);
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|c| c.4), "{calls:?}");
    // Behind an IOMMU too.
    let iommu = dev.with_iommu(true);
    let bus = fx.map(&iommu, orig(0, 0), 100, BIDI).unwrap();
    fx.p().take_events();
    fx.engine
        .unmap_page(&iommu, bus, OVERSIZE, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(
        cache_calls(&fx),
        [(Op::ForCpu, Some(orig(0, 0)), bus, OVERSIZE, true)]
    );
}

#[test]
fn map_sg_maps_mixed_entries_and_unwinds_on_failure() {
    let fx = Fixture::new();
    let mut sg = [
        SgEntry::new(orig(0, 0), 4096),    // direct
        SgEntry::new(orig(3, 2048), 4096), // straddles: bounced
        SgEntry::new(orig(256, 10), 2000), // high: bounced
    ];
    for (i, e) in sg.iter().enumerate() {
        fx.host.write(e.phys, &pattern(i as u8, e.length));
    }
    // SAFETY: the originals are reached only through raw pointers.
    let mapped = unsafe { fx.engine.map_sg(&DEV32, &mut sg, BIDI, DmaAttrs::empty()) };
    assert_eq!(mapped, Ok(3));
    for (i, e) in sg.iter().enumerate() {
        assert_eq!(e.dma_length, e.length);
        assert_eq!(
            fx.p().dev_read(e.dma_address, e.length),
            pattern(i as u8, e.length)
        );
        fx.p()
            .dev_write(e.dma_address, &pattern(i as u8 + 100, e.length));
    }
    assert_eq!(fx.used(), 2 + 1);
    fx.engine.sync_sg_for_cpu(&DEV32, &sg, BIDI).unwrap();
    for (i, e) in sg.iter().enumerate() {
        assert_eq!(
            fx.host.read(e.phys, e.length),
            pattern(i as u8 + 100, e.length)
        );
    }
    fx.engine.sync_sg_for_device(&DEV32, &sg, BIDI).unwrap();
    fx.engine
        .unmap_sg(&DEV32, &sg, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(fx.used(), 0);
    // A second unmap of the list fails for the two bounced entries, not the direct one.
    let err = fx
        .engine
        .unmap_sg(&DEV32, &sg, BIDI, DmaAttrs::empty())
        .unwrap_err();
    assert_eq!((err.index, err.failures), (1, 2));

    // The third entry is too large to bounce: the first two are unwound.
    let mut sg = [
        SgEntry::new(orig(256, 0), 4096),
        SgEntry::new(orig(0, 0), 4096),
        SgEntry::new(orig(300, 0), 300 << 10),
        SgEntry::new(orig(0, 0), 4096),
    ];
    // SAFETY: as above.
    let err = unsafe { fx.engine.map_sg(&DEV32, &mut sg, BIDI, DmaAttrs::empty()) }.unwrap_err();
    assert_eq!((err.index, err.unwound, err.failures), (2, 2, 1));
    assert!(matches!(
        err.source,
        DmaError::Bounce {
            source: Error::TooLarge { .. },
            ..
        }
    ));
    assert!(sg[..3].iter().all(|e| e.dma_length == 0));
    assert_eq!(fx.used(), 0);
    let st = fx.engine.stats();
    assert_eq!((st.sg_maps, st.sg_failures), (1, 1));
    // SAFETY: an empty list maps nothing.
    let mapped = unsafe { fx.engine.map_sg(&DEV32, &mut [], BIDI, DmaAttrs::empty()) };
    assert_eq!(mapped, Ok(0));
}

#[test]
fn coherent_allocations_are_exchanged_when_needed_and_given_back() {
    let fx = Fixture::new();
    // The coherent region is above 4 GiB and scrambled: a 32-bit device needs an exchange.
    let a = fx.engine.alloc_coherent(&DEV32, 10000).unwrap();
    assert_eq!(a.order(), 2);
    assert!(a.is_exchanged());
    assert!(DmaMask::BITS_32.covers(a.bus(), 16384));
    assert!(a.bus().is_aligned(16384));
    assert_eq!(fx.p().dev_read(a.bus(), 16384), vec![0; 16384]);
    fx.p().dev_write(a.bus(), &pattern(1, 16384));
    assert_eq!(fx.host.read(a.phys(), 16384), pattern(1, 16384));
    // A 64-bit device takes one 4-frame block as it is (contiguous and aligned).
    let b = fx.engine.alloc_coherent(&DEV64, 16384).unwrap();
    assert!(!b.is_exchanged());
    // Eight frames span two reversed blocks: not contiguous, exchanged even for 64 bits.
    let c = fx.engine.alloc_coherent(&DEV64, 32768).unwrap();
    assert!(c.is_exchanged());
    assert_eq!(fx.p().creates.load(Ordering::Relaxed), 2);
    assert_eq!(fx.engine.pages().live(), 3);
    for x in [a, b, c] {
        // SAFETY: nothing uses the allocations any more.
        unsafe { fx.engine.free_coherent(&DEV32, x) }.unwrap();
    }
    assert_eq!(fx.p().destroys.load(Ordering::Relaxed), 2);
    assert_eq!(fx.engine.pages().live(), 0);
    let st = fx.engine.stats();
    assert_eq!(
        (st.coherent_allocs, st.coherent_exchanged, st.coherent_frees),
        (3, 2, 3)
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn coherent_failures_give_everything_back() {
    let fx = Fixture::new();
    assert_eq!(fx.engine.alloc_coherent(&DEV32, 0), Err(DmaError::ZeroSize));
    assert_eq!(
        fx.engine.alloc_coherent(&DEV32, usize::MAX),
        Err(DmaError::CoherentTooLarge { size: usize::MAX })
    );
    // More than the allocator has.
    assert!(matches!(
        fx.engine.alloc_coherent(&DEV32, 4 << 20),
        Err(DmaError::CoherentNoMemory { order: 10, .. })
    ));
    fx.p().fail_create.store(true, Ordering::Relaxed);
    let err = fx.engine.alloc_coherent(&DEV32, 4096).unwrap_err();
    assert!(matches!(
        err,
        DmaError::CoherentContiguous {
            order: 0,
            address_bits: 32,
            ..
        }
    ));
    assert_eq!(fx.engine.pages().live(), 0);
    fx.p().fail_create.store(false, Ordering::Relaxed);
    // A limit the platform cannot meet (its exchange frames start at bus 0x600_0000).
    let dev = DEV32.with_coherent_mask(DmaMask::from_bits(24).unwrap());
    assert!(matches!(
        fx.engine.alloc_coherent(&dev, 4096),
        Err(DmaError::CoherentContiguous {
            address_bits: 24,
            ..
        })
    ));
    assert_eq!(fx.engine.pages().live(), 0);

    // A failing give-back hands the allocation back, still exchanged.
    let a = fx.engine.alloc_coherent(&DEV32, 4096).unwrap();
    fx.p().fail_destroy.store(true, Ordering::Relaxed);
    // SAFETY: nothing uses the allocation.
    let err = unsafe { fx.engine.free_coherent(&DEV32, a) }.unwrap_err();
    assert!(matches!(
        err.source,
        DmaError::CoherentDestroy { order: 0, .. }
    ));
    assert!(err.alloc.is_exchanged());
    assert_eq!(fx.engine.pages().live(), 1);
    fx.p().fail_destroy.store(false, Ordering::Relaxed);
    // SAFETY: as above.
    unsafe { fx.engine.free_coherent(&DEV32, err.alloc) }.unwrap();
    assert_eq!(fx.engine.pages().live(), 0);
    assert_eq!(fx.engine.stats().coherent_failures, 6);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn iommu_coherent_allocations_are_not_exchanged() {
    let fx = Fixture::new();
    let a = fx
        .engine
        .alloc_coherent(&DEV32.with_iommu(true), 8192)
        .unwrap();
    assert!(!a.is_exchanged());
    assert_eq!(a.bus().as_u64(), a.phys().as_u64());
    // SAFETY: nothing uses the allocation.
    unsafe { fx.engine.free_coherent(&DEV32, a) }.unwrap();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn a_pool_segment_that_is_not_contiguous_is_refused() {
    let err = Fixture::with(Setup {
        contiguous_pool: false,
        ..Setup::default()
    })
    .err()
    .unwrap();
    assert_eq!(
        err,
        EngineInitError::SegmentNotContiguous {
            segment: 0,
            phys: PhysAddr::new(POOL_PFN * 4096)
        }
    );
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn cpu_hint_picks_the_area() {
    fn cpu_one() -> usize {
        1
    }
    let fx = Fixture::with(Setup {
        cpu: Some(cpu_one),
        ..Setup::default()
    })
    .unwrap();
    let bus = fx.map(&DEV32, orig(256, 0), 100, BIDI).unwrap();
    let tlb = fx.p().bus_to_phys(bus).unwrap();
    // Area 1 is the second segment.
    assert!(tlb.as_u64() >= (POOL_PFN + POOL_FRAMES / 2) * 4096);
    fx.engine
        .unmap_page(&DEV32, bus, 100, BIDI, DmaAttrs::empty())
        .unwrap();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "thread interleavings are the pool's loom and stress tests' job"
)]
fn many_cpus_map_and_unmap_at_once() {
    fn cpu() -> usize {
        // Spread the threads over both areas.
        std::thread::current().name().map_or(0, |n| n.len())
    }
    let fx = Fixture::with(Setup {
        cpu: Some(cpu),
        ..Setup::default()
    })
    .unwrap();
    let (engine, host) = (&fx.engine, fx.host);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            std::thread::Builder::new()
                .name("x".repeat(t as usize))
                .spawn_scoped(s, move || {
                    // Thread t owns original frames 256 + 16 t .. + 16 (above 4 GiB on the
                    // bus: every map bounces for the 32-bit device), and frames 16 t ..
                    // (some direct, some straddling).
                    for i in 0..200u64 {
                        let high = i % 2 == 0;
                        let j = if high { 256 + 16 * t } else { 16 * t };
                        let len = 1 + ((i * 7919 + t * 104_729) % 12_000) as usize;
                        let phys = orig(j, (i * 131) % 4096);
                        let seed = (i + t) as u8;
                        host.write(phys, &pattern(seed, len));
                        // SAFETY: the thread's own frames, reached only through raw
                        // pointers.
                        let bus =
                            unsafe { engine.map_page(&DEV32, phys, len, BIDI, DmaAttrs::empty()) }
                                .unwrap();
                        assert_eq!(engine.platform().dev_read(bus, len), pattern(seed, len));
                        engine.platform().dev_write(bus, &pattern(!seed, len));
                        engine
                            .unmap_page(&DEV32, bus, len, BIDI, DmaAttrs::empty())
                            .unwrap();
                        assert_eq!(host.read(phys, len), pattern(!seed, len));
                    }
                })
                .unwrap();
        }
    });
    let st = engine.stats();
    assert_eq!(st.direct_maps + st.bounced_maps, 800);
    assert!(st.bounced_by_reason[BounceReason::OutsideMask.index()] >= 400);
    assert_eq!(st.direct_unmaps + st.bounced_unmaps, 800);
    assert_eq!(fx.used(), 0);
    engine.pool().unwrap().check_invariants().unwrap();
}

mod model {
    use super::*;
    use proptest::prelude::*;

    /// One transfer: an original range, a device and a direction.
    #[derive(Clone, Debug)]
    struct Transfer {
        j: u64,
        off: u64,
        len: usize,
        bits: u32,
        coherent: bool,
        force: bool,
        dir: u8,
    }

    fn transfer() -> impl Strategy<Value = Transfer> {
        (
            0u64..500,
            0u64..4096,
            1usize..20000,
            prop_oneof![Just(28u32), Just(32), Just(40), Just(64)],
            any::<bool>(),
            prop::bool::weighted(0.2),
            0u8..3,
        )
            .prop_map(|(j, off, len, bits, coherent, force, dir)| Transfer {
                j,
                off,
                len,
                bits,
                coherent,
                force,
                dir,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: if cfg!(miri) { 1 } else { 64 },
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Whatever the buffer and the device: the mapping is reachable, the device reads
        /// exactly the original, its writes come back exactly when the direction says so,
        /// and the pool is empty and consistent afterwards.
        #[test]
        fn every_byte_goes_where_the_direction_says(ts in prop::collection::vec(transfer(), 1..12)) {
            let fx = Fixture::new();
            let mut live = Vec::new();
            for (i, t) in ts.iter().enumerate() {
                let phys = orig(t.j, t.off);
                // Stay inside the original region (frames 0..512).
                let len = t.len.min(((512 - t.j) * 4096 - t.off) as usize);
                let dev = Device::new(DmaMask::from_bits(t.bits).unwrap())
                    .with_coherent(t.coherent)
                    .with_force_bounce(t.force);
                let dir = [DmaDirection::ToDevice, DmaDirection::FromDevice, BIDI][t.dir as usize];
                // Overlapping live mappings would alias; skip those.
                if live.iter().any(|&(p, l, ..): &(PhysAddr, usize, BusAddr, Device, DmaDirection, u8)| {
                    p.as_u64() < phys.as_u64() + len as u64 && phys.as_u64() < p.as_u64() + l as u64
                }) {
                    continue;
                }
                let seed = i as u8;
                fx.host.write(phys, &pattern(seed, len));
                match fx.map(&dev, phys, len, dir) {
                    Ok(bus) => {
                        prop_assert!(dev.dma_mask.covers(bus, len as u64));
                        if dir.to_device() {
                            prop_assert_eq!(fx.p().dev_read(bus, len), pattern(seed, len));
                        }
                        live.push((phys, len, bus, dev, dir, seed));
                    }
                    Err(e) => {
                        // Only bounces can fail here: too large, a full pool or a device
                        // that cannot reach the pool.
                        prop_assert!(
                            matches!(e, DmaError::Bounce { .. } | DmaError::BounceUnreachable { .. }),
                            "{e:?}"
                        );
                    }
                }
            }
            for &(phys, len, bus, dev, dir, seed) in &live {
                fx.p().dev_write(bus, &pattern(seed.wrapping_add(100), len));
                fx.engine.unmap_page(&dev, bus, len, dir, DmaAttrs::empty()).unwrap();
                let want = if dir.from_device() { seed.wrapping_add(100) } else { seed };
                // A direct ToDevice mapping was written by the device in place: that is
                // the device breaking the DMA API, not the engine; only check bounces.
                let checkable = fx.p().bus_to_phys(bus).is_some_and(|p| {
                    fx.engine.pool().unwrap().contains(p)
                }) || dir.from_device();
                if checkable {
                    prop_assert_eq!(fx.host.read(phys, len), pattern(want, len));
                }
            }
            prop_assert_eq!(fx.used(), 0);
            fx.engine.pool().unwrap().check_invariants().unwrap();
        }
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn coherent_allocations_are_freed_from_their_addresses_after_checks() {
    let fx = Fixture::new();
    // Exchanged for a 32-bit device, taken as it is for a 64-bit one.
    let a = fx.engine.alloc_coherent(&DEV32, 10000).unwrap();
    let b = fx.engine.alloc_coherent(&DEV64, 16384).unwrap();
    assert!(a.is_exchanged() && !b.is_exchanged());
    let (a_phys, a_bus, b_phys, b_bus) = (a.phys(), a.bus(), b.phys(), b.bus());
    // Drop the records: only the addresses are left.
    let _ = (a, b);
    let free = |phys, bus, size| {
        // SAFETY: nothing uses the allocations; the engine checks the handles.
        unsafe { fx.engine.free_coherent_at(&DEV32, phys, bus, size) }
    };
    let other_bus = BusAddr::new(a_bus.as_u64() + 4096);
    assert_eq!(
        free(a_phys, other_bus, 10000),
        Err(DmaError::CoherentMismatch {
            phys: a_phys,
            bus: other_bus,
            size: 10000,
            expected: Some(a_bus),
        })
    );
    // A size of another order, and an address inside the allocation.
    assert_eq!(
        free(a_phys, a_bus, 20000),
        Err(DmaError::CoherentNotAllocated {
            phys: a_phys,
            order: 3
        })
    );
    let inside = PhysAddr::new(a_phys.as_u64() + 4096);
    assert!(matches!(
        free(inside, other_bus, 4096),
        Err(DmaError::CoherentNotAllocated { .. })
    ));
    assert_eq!(fx.engine.pages().live(), 2);
    assert_eq!(fx.p().destroys.load(Ordering::Relaxed), 0);
    // The right handles: the exchanged one is given back, the other is not.
    free(a_phys, a_bus, 10000).unwrap();
    assert_eq!(fx.p().destroys.load(Ordering::Relaxed), 1);
    free(b_phys, b_bus, 16384).unwrap();
    assert_eq!(fx.p().destroys.load(Ordering::Relaxed), 1);
    assert_eq!(fx.engine.pages().live(), 0);
    // A double free is refused.
    assert_eq!(
        free(a_phys, a_bus, 10000),
        Err(DmaError::CoherentNotAllocated {
            phys: a_phys,
            order: 2
        })
    );
    let st = fx.engine.stats();
    assert_eq!((st.coherent_frees, st.coherent_failures), (2, 4));
}

#[test]
fn buffers_are_copied_through_the_callers_pointer_and_references_stay_valid() {
    let fx = Fixture::new();
    // A buffer outside the engine's memory, with no physical address: always bounced, and
    // every copy goes through the caller's pointer (Miri's strict provenance would refuse
    // any other pointer to this allocation).
    let mut owned = pattern(3, 3000);
    let buf: &mut [u8] = &mut owned;
    let ptr = NonNull::from(&mut *buf);
    // SAFETY: `buf` is valid for reads and writes until the unmap and not accessed during
    // the engine's calls.
    let bus = unsafe {
        fx.engine
            .map_buffer(&DEV32, ptr, None, BIDI, DmaAttrs::empty())
    }
    .unwrap();
    assert!(
        fx.engine
            .pool()
            .unwrap()
            .contains(fx.p().bus_to_phys(bus).unwrap())
    );
    // The CPU may read its buffer while the device holds the mapping.
    assert_eq!(buf[..], pattern(3, 3000)[..]);
    assert_eq!(fx.p().dev_read(bus, 3000), pattern(3, 3000));
    fx.p().dev_write(bus, &pattern(4, 3000));
    // SAFETY: as above, the mapping is live and `ptr` points at its buffer.
    unsafe {
        fx.engine
            .unmap_buffer(&DEV32, bus, ptr, BIDI, DmaAttrs::empty())
    }
    .unwrap();
    // The reference the pointer came from is still valid and sees the device's bytes.
    assert_eq!(buf[..], pattern(4, 3000)[..]);
    assert_eq!(fx.used(), 0);
    let st = fx.engine.stats();
    assert_eq!((st.bounced_maps, st.bounced_unmaps), (1, 1), "{st:?}");
    assert_eq!(
        st.bounced_by_reason[BounceReason::Untranslatable.index()],
        1
    );
    fx.engine.pool().unwrap().check_invariants().unwrap();
}

#[test]
fn buffers_with_a_physical_address_take_the_map_page_decision() {
    let fx = Fixture::new();
    for (phys, len, bounced) in [(orig(0, 0x123), 8000, false), (orig(3, 2048), 4096, true)] {
        fx.host.write(phys, &pattern(5, len));
        // SAFETY: `phys` is inside the test's allocation, which `host` reaches.
        let buf = unsafe { core::slice::from_raw_parts_mut(fx.host.ptr(phys, len), len) };
        let ptr = NonNull::from(&mut *buf);
        // SAFETY: `buf` is the CPU's view of `phys`, valid until the unmap, not accessed by
        // others during the engine's calls.
        let bus = unsafe {
            fx.engine.map_buffer(
                &DEV32,
                ptr,
                Some(phys),
                DmaDirection::FromDevice,
                DmaAttrs::empty(),
            )
        }
        .unwrap();
        let tlb = fx.p().bus_to_phys(bus).unwrap();
        assert_eq!(fx.engine.pool().unwrap().contains(tlb), bounced, "{phys}");
        assert_eq!(fx.used() > 0, bounced);
        fx.p().dev_write(bus, &pattern(6, len));
        // SAFETY: as above.
        unsafe {
            fx.engine.unmap_buffer(
                &DEV32,
                bus,
                ptr,
                DmaDirection::FromDevice,
                DmaAttrs::empty(),
            )
        }
        .unwrap();
        if bounced {
            // Copied back through `ptr`: the reference it came from is still valid.
            assert_eq!(buf[..], pattern(6, len)[..]);
        } else {
            // The device wrote the memory itself, outside the reference's knowledge.
            assert_eq!(fx.host.read(phys, len), pattern(6, len));
        }
        assert_eq!(fx.used(), 0);
    }
    let st = fx.engine.stats();
    assert_eq!(
        (
            st.direct_maps,
            st.bounced_maps,
            st.direct_unmaps,
            st.bounced_unmaps
        ),
        (1, 1, 1, 1)
    );
}

/// A bounced buffer is a streaming mapping of the pool like `map_page`'s: the device's
/// `min_align_mask` bits of the original are kept (NVMe's 0xfff), the mapping counts as a
/// map in the pool's statistics, and the syncs of `map_page` mappings refuse it.
#[test]
fn buffer_bounces_keep_the_min_align_mask_and_are_streaming_mappings() {
    let fx = Fixture::new();
    let nvme = Device::new(DmaMask::BITS_32).with_min_align_mask(0xfff);
    let mut owned = pattern(7, 0x900);
    let ptr = NonNull::from(&mut owned[..]);
    let maps0 = fx.engine.pool().unwrap().stats().maps;
    // No physical address: the pointer's low bits are kept.
    // SAFETY: `owned` is valid and untouched until the unmap.
    let bus = unsafe {
        fx.engine
            .map_buffer(&nvme, ptr, None, BIDI, DmaAttrs::empty())
    }
    .unwrap();
    let tlb = fx.engine.platform().bus_to_phys(bus).unwrap();
    // CAST: usize fits in u64.
    let want = ptr.cast::<u8>().as_ptr().addr() as u64 & 0xfff;
    assert_eq!(
        tlb.as_u64() & 0xfff,
        want,
        "bounce {tlb} for a buffer at offset {want:#x}"
    );
    assert_eq!(fx.engine.pool().unwrap().stats().maps, maps0 + 1);
    assert!(matches!(
        fx.engine.sync_single_for_cpu(&nvme, bus, 0x900, BIDI),
        Err(DmaError::Pool {
            source: Error::NotMapped { .. },
            ..
        })
    ));
    // SAFETY: as above.
    unsafe {
        fx.engine
            .unmap_buffer(&nvme, bus, ptr, BIDI, DmaAttrs::empty())
    }
    .unwrap();
    assert_eq!(owned, pattern(7, 0x900));
    assert_eq!(fx.used(), 0);
    fx.engine.pool().unwrap().check_invariants().unwrap();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn buffer_mappings_refuse_the_wrong_unmaps() {
    let fx = Fixture::new();
    let mut owned = pattern(1, 100);
    let ptr = NonNull::from(&mut owned[..]);
    // SAFETY: `owned` is valid and untouched until the last unmap.
    let bus = unsafe {
        fx.engine
            .map_buffer(&DEV32, ptr, None, BIDI, DmaAttrs::empty())
    }
    .unwrap();
    // `unmap_page` does not take a buffer mapping for its own.
    assert!(matches!(
        fx.engine
            .unmap_page(&DEV32, bus, 100, BIDI, DmaAttrs::empty()),
        Err(DmaError::Pool {
            source: Error::NotMapped { .. },
            ..
        })
    ));
    // SAFETY: as above.
    unsafe {
        fx.engine
            .unmap_buffer(&DEV32, bus, ptr, BIDI, DmaAttrs::empty())
    }
    .unwrap();
    // SAFETY: a double unmap; the engine refuses it before copying anything.
    let again = unsafe {
        fx.engine
            .unmap_buffer(&DEV32, bus, ptr, BIDI, DmaAttrs::empty())
    };
    assert!(
        matches!(again, Err(DmaError::BufferNotMapped { .. })),
        "{again:?}"
    );
    assert_eq!(owned, pattern(1, 100));
    // No pool: a buffer with no physical address cannot be mapped.
    let nopool = Fixture::with(Setup {
        pool: false,
        ..Setup::default()
    })
    .unwrap();
    // SAFETY: as above.
    let r = unsafe {
        nopool
            .engine
            .map_buffer(&DEV32, ptr, None, BIDI, DmaAttrs::empty())
    };
    assert_eq!(
        r,
        Err(DmaError::BufferBounce {
            size: 100,
            source: None
        })
    );
    assert_eq!(fx.used(), 0);
}

/// The interrupt flag the test hook of `the_irq_hook_reaches_the_pool_locks` stands in for.
static TEST_MASKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// How many times that hook masked.
static TEST_SAVES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn the_irq_hook_reaches_the_pool_locks() {
    use std::sync::atomic::Ordering::Relaxed;
    fn save() -> usize {
        TEST_SAVES.fetch_add(1, Relaxed);
        TEST_MASKED.swap(1, Relaxed)
    }
    fn restore(prev: usize) {
        TEST_MASKED.store(prev, Relaxed);
    }
    let Fixture { engine, host, _mem } = Fixture::new();
    let fx = Fixture {
        engine: engine.with_irq_hook(crate::lock::IrqHook::new(save, restore)),
        host,
        _mem,
    };
    // A bounced map and its unmap take the area lock, masked through the hook each time,
    // and leave the flag as it was.
    let phys = orig(3, 2048);
    let bus = fx.map(&DEV32, phys, 4096, BIDI).unwrap();
    fx.engine
        .unmap_page(&DEV32, bus, 4096, BIDI, DmaAttrs::empty())
        .unwrap();
    assert!(TEST_SAVES.load(Relaxed) >= 2);
    assert_eq!(TEST_MASKED.load(Relaxed), 0);
}

#[test]
fn failed_bounce_says_why_with_linuxs_size_and_the_device_maximum() {
    let fx = Fixture::new();
    let nvme = DEV64.with_min_align_mask(0xfff).with_force_bounce(true);
    let td = DmaDirection::ToDevice;
    // Too large for this device, with its maximum.
    assert_eq!(fx.engine.max_mapping_size(&nvme), 252 << 10);
    assert!(matches!(
        fx.map(&nvme, orig(0, 0), 253 << 10, td),
        Err(DmaError::Bounce {
            source: Error::TooLarge {
                size: 0x3_f400,
                max: 0x3_f000
            },
            reason: BounceReason::Forced,
            ..
        })
    ));
    // Fill both segments of the pool.
    let dev = DEV64.with_force_bounce(true);
    let a = fx.map(&dev, orig(0, 0), 256 << 10, td).unwrap();
    let b = fx.map(&dev, orig(64, 0), 256 << 10, td).unwrap();
    // Exhausted; the size is Linux's: the request plus the 0x10 bytes kept in the slot.
    let err = fx.map(&nvme, orig(0, 0x810), 1000, td).unwrap_err();
    let DmaError::Bounce {
        source:
            Error::PoolFull {
                size,
                needed,
                used,
                free,
                cause,
                ..
            },
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!((size, needed, used), (1016, 1, 256));
    assert_eq!((free, cause), (FreeSpace::default(), FullCause::Exhausted));
    let text = std::format!("{err}");
    assert!(
        text.contains("swiotlb buffer is full (sz: 1016 bytes), total 256 (slots), used 256"),
        "{text}"
    );
    let report = fx.engine.pool_report().unwrap();
    assert_eq!(
        (report.used, report.fail_full, report.fail_too_large),
        (256, 1, 1)
    );
    fx.engine
        .unmap_page(&dev, a, 256 << 10, td, DmaAttrs::empty())
        .unwrap();
    fx.engine
        .unmap_page(&dev, b, 256 << 10, td, DmaAttrs::empty())
        .unwrap();
    assert_eq!(fx.engine.pool_report().unwrap().free.largest_run, 128);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "decision logic only: its copies and pointer work are those of the tests Miri runs"
)]
fn a_bounce_spans_segments_only_where_the_bus_joins_them() {
    let size = 400 << 10;
    // One area, both segments bus-contiguous: joined, a 400 KiB bounce fits.
    let fx = Fixture::with(Setup {
        nareas: 1,
        ..Setup::default()
    })
    .unwrap();
    let pool = fx.engine.pool().unwrap();
    assert!(pool.segment_joined(0));
    assert_eq!(fx.engine.max_mapping_size(&DEV32), 512 << 10);
    assert_eq!(
        fx.engine
            .max_mapping_size(&DEV32.with_min_align_mask(0xfff)),
        (512 << 10) - 4096
    );
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    fx.host.write(orig(0, 0), &data);
    // The originals are scattered on the bus: bounced, for a 64-bit device too.
    let bus = fx.map(&DEV64, orig(0, 0), size, BIDI).unwrap();
    assert_eq!(bus.as_u64(), POOL_BFN * 4096);
    assert_eq!(fx.p().dev_read(bus, size), data);
    let reply: Vec<u8> = (0..size).map(|i| (i * 13 % 253) as u8).collect();
    fx.p().dev_write(bus, &reply);
    fx.engine
        .sync_single_for_cpu(&DEV64, bus, size, BIDI)
        .unwrap();
    assert_eq!(fx.host.read(orig(0, 0), size), reply);
    fx.engine
        .unmap_page(&DEV64, bus, size, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(fx.engine.pool().unwrap().stats().used, 0);
    // The same pool with its second segment elsewhere on the bus: not joined, Linux's
    // maximum, and the bounce is too large with it.
    let fx = Fixture::with(Setup {
        nareas: 1,
        split_pool: true,
        ..Setup::default()
    })
    .unwrap();
    assert!(!fx.engine.pool().unwrap().segment_joined(0));
    assert_eq!(fx.engine.max_mapping_size(&DEV32), 256 << 10);
    let err = fx.map(&DEV64, orig(0, 0), size, BIDI).unwrap_err();
    assert!(
        matches!(
            err,
            DmaError::Bounce {
                source: Error::TooLarge {
                    size: 0x6_4000,
                    max: 0x4_0000
                },
                ..
            }
        ),
        "{err}"
    );
    // A bounce of a segment still works on either side of the break.
    let a = fx.map(&DEV64, orig(0, 0), 256 << 10, BIDI).unwrap();
    let b = fx.map(&DEV64, orig(100, 0), 256 << 10, BIDI).unwrap();
    assert_eq!(fx.p().dev_read(a, 16), fx.host.read(orig(0, 0), 16));
    assert_eq!(fx.p().dev_read(b, 16), fx.host.read(orig(100, 0), 16));
    fx.engine
        .pool()
        .unwrap()
        .check_invariants()
        .expect("pool invariants");
}

/// The growth hook of the growth tests: one block at the end of the coherent region, which
/// no test's page allocator hands out there.
struct GrowHook {
    /// The one block it hands out, of `4 KiB << order`, when not out.
    block: Mutex<Option<PhysAddr>>,
    order: u32,
    /// Slot metadata for the block, handed out once.
    slots: Mutex<Option<&'static [Slot]>>,
}

impl GrowHook {
    /// The last `4 KiB << order` bytes of the coherent region (aligned to their size for
    /// orders up to 8), with `slots` for their metadata.
    fn new(order: u32, slots: &'static [Slot]) -> Self {
        let block = (COH_PFN + COH_FRAMES - (1 << order)) * 4096;
        assert!(block.is_multiple_of(4096 << order));
        Self {
            block: Mutex::new(Some(PhysAddr::new(block))),
            order,
            slots: Mutex::new(Some(slots)),
        }
    }

    fn block_is_back(&self) -> bool {
        self.block.lock().unwrap().is_some()
    }
}

// SAFETY: one block of the test's RAM, aligned to its size, that the platform translates
// and the pool's LinearMap reaches and nothing else uses; handed out once until given back.
unsafe impl GrowthHook for GrowHook {
    fn in_atomic(&self) -> bool {
        false
    }
    fn alloc_pages(&self, order: u32, _atomic: bool) -> Option<PhysAddr> {
        (order == self.order)
            .then(|| self.block.lock().unwrap().take())
            .flatten()
    }
    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        assert_eq!(order, self.order);
        assert!(
            self.block.lock().unwrap().replace(phys).is_none(),
            "a double give-back"
        );
    }
    fn alloc_slots(&self, nslabs: usize, _atomic: bool) -> Option<&'static [Slot]> {
        let slots = self.slots.lock().unwrap().take()?;
        (slots.len() >= nslabs).then_some(slots)
    }
}

/// Growth's unsafe paths (its entries' cells, the index, the users count) under Miri: a full
/// pool grows into an exchanged 256 KiB chunk, a mapping there carries bytes both ways and is
/// found by bus address, and once idle the chunk is exchanged back and returned.
#[test]
fn a_full_pool_grows_and_the_grown_pool_is_given_back() {
    let Fixture { engine, host, _mem } = Fixture::new();
    static SLOTS: [Slot; 128] = [const { Slot::new() }; 128];
    let limits = GrowthLimits::new(256 << 10, 256 << 10).with_quiet_period(0);
    let growth = Box::new(Growth::new(GrowHook::new(6, &SLOTS), limits));
    let engine = engine.with_growth(&*growth);
    engine
        .platform()
        .needs_bounce
        .store(true, Ordering::Relaxed);
    let map = |j: u64, len: usize| {
        // SAFETY: the test's originals are reached only through raw pointers.
        unsafe { engine.map_page(&DEV32, orig(j, 0), len, BIDI, DmaAttrs::empty()) }
    };
    // Fill both areas of the first pool (one segment each).
    let a = map(0, 256 << 10).unwrap();
    let b = map(64, 256 << 10).unwrap();
    let data = pattern(7, 4096);
    host.write(orig(128, 0), &data);
    let c = map(128, 4096).unwrap();
    let grown = engine.growth_stats().unwrap();
    assert_eq!((grown.pools_added, grown.live_pools), (1, 1));
    let p = engine.platform();
    assert_eq!(
        p.creates.load(Ordering::Relaxed),
        1,
        "the chunk was exchanged"
    );
    assert!(!engine.pool().unwrap().contains(PhysAddr::new(c.as_u64())));
    assert_eq!(p.dev_read(c, 4096), data, "the device reads the copy");
    let back = pattern(9, 4096);
    p.dev_write(c, &back);
    engine.sync_single_for_cpu(&DEV32, c, 4096, BIDI).unwrap();
    assert_eq!(
        host.read(orig(128, 0), 4096),
        back,
        "synced from the grown pool"
    );
    // Busy: nothing to give back.
    assert_eq!(engine.reclaim(1).removed, 0);
    engine
        .unmap_page(&DEV32, c, 4096, BIDI, DmaAttrs::empty())
        .unwrap();
    assert!(
        engine
            .unmap_page(&DEV32, c, 4096, BIDI, DmaAttrs::empty())
            .is_err(),
        "a second unmap of the grown mapping"
    );
    let removed: usize = (2..5).map(|now| engine.reclaim(now).removed).sum();
    assert_eq!(removed, 1, "the idle grown pool is given back");
    assert_eq!(p.destroys.load(Ordering::Relaxed), 1, "and exchanged back");
    let stats = engine.growth_stats().unwrap();
    assert_eq!(
        (stats.pools_removed, stats.live_pools, stats.bytes),
        (1, 0, 0)
    );
    assert!(
        growth.hook().block_is_back(),
        "the block went back to the kernel"
    );
    for bus in [a, b] {
        engine
            .unmap_page(&DEV32, bus, 256 << 10, BIDI, DmaAttrs::empty())
            .unwrap();
    }
}

/// A mapping longer than the first pool can hold (its areas are one segment each) grows a
/// pool of one area, one bus-contiguous 1 MiB chunk, that holds it; the bytes go both ways.
#[test]
fn a_mapping_longer_than_the_first_pool_holds_grows_a_pool_that_holds_it() {
    let Fixture { engine, host, _mem } = Fixture::new();
    static SLOTS: [Slot; 512] = [const { Slot::new() }; 512];
    let limits = GrowthLimits::new(1 << 20, 1 << 20).with_quiet_period(0);
    let growth = Box::new(Growth::new(GrowHook::new(8, &SLOTS), limits));
    let engine = engine.with_growth(&*growth);
    engine
        .platform()
        .needs_bounce
        .store(true, Ordering::Relaxed);
    let len = 768 << 10;
    assert!(engine.pool().unwrap().max_mapping_size(&DEV32) < len);
    assert_eq!(
        engine.max_mapping_size(&DEV32),
        1 << 20,
        "what a grown chunk holds"
    );
    let nvme = DEV32.with_min_align_mask(0xfff);
    assert_eq!(engine.max_mapping_size(&nvme), (1 << 20) - 4096);
    let bounded = DEV32.with_seg_boundary_mask(0x7_ffff);
    assert_eq!(engine.max_mapping_size(&bounded), 512 << 10);
    let data = pattern(3, len);
    host.write(orig(0, 0), &data);
    // SAFETY: the test's originals are reached only through raw pointers.
    let bus = unsafe { engine.map_page(&DEV32, orig(0, 0), len, BIDI, DmaAttrs::empty()) }.unwrap();
    assert_eq!(engine.growth_stats().unwrap().pools_added, 1);
    assert_eq!(engine.platform().dev_read(bus, len), data);
    let back = pattern(5, len);
    engine.platform().dev_write(bus, &back);
    engine
        .unmap_page(&DEV32, bus, len, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(
        host.read(orig(0, 0), len),
        back,
        "copied back from the grown pool"
    );
    let removed: usize = (1..4).map(|now| engine.reclaim(now).removed).sum();
    assert_eq!(removed, 1);
    assert!(growth.hook().block_is_back());
}

/// A mapping longer than a 256 KiB chunk holds gets a transient pool of 1 MiB (the smallest
/// power of two that holds 768 KiB), exchanged for it; the bytes go both ways, and the unmap
/// exchanges it back and returns it at once, without a reclaim. Under Miri: the transient
/// path's entry cells and its give-back from the unmap.
#[test]
fn a_mapping_longer_than_a_chunk_gets_a_transient_pool_given_back_at_unmap() {
    let Fixture { engine, host, _mem } = Fixture::new();
    static SLOTS: [Slot; 512] = [const { Slot::new() }; 512];
    let limits = GrowthLimits::new(1 << 20, 256 << 10).with_quiet_period(1000);
    let growth = Box::new(Growth::new(GrowHook::new(8, &SLOTS), limits));
    let engine = engine.with_growth(&*growth);
    engine
        .platform()
        .needs_bounce
        .store(true, Ordering::Relaxed);
    let len = 768 << 10;
    assert_eq!(
        engine.max_mapping_size(&DEV32),
        1 << 20,
        "what max_bytes allows"
    );
    let data = pattern(4, len);
    host.write(orig(0, 0), &data);
    // SAFETY: the test's originals are reached only through raw pointers.
    let bus = unsafe { engine.map_page(&DEV32, orig(0, 0), len, BIDI, DmaAttrs::empty()) }.unwrap();
    let s = engine.growth_stats().unwrap();
    assert_eq!(
        (s.transient_added, s.transient_live, s.bytes),
        (1, 1, 1 << 20)
    );
    assert_eq!(engine.platform().creates.load(Ordering::Relaxed), 1);
    assert_eq!(engine.platform().dev_read(bus, len), data);
    let back = pattern(6, len);
    engine.platform().dev_write(bus, &back);
    engine
        .unmap_page(&DEV32, bus, len, BIDI, DmaAttrs::empty())
        .unwrap();
    assert_eq!(host.read(orig(0, 0), len), back, "copied back");
    let s = engine.growth_stats().unwrap();
    assert_eq!(
        (s.transient_live, s.pools_removed, s.bytes),
        (0, 1, 0),
        "{s:?}"
    );
    assert_eq!(engine.platform().destroys.load(Ordering::Relaxed), 1);
    assert!(growth.hook().block_is_back(), "given back at the unmap");
}
