//! The simulated machines the integration tests run on, and the checks every test makes
//! after every step.
//!
//! The platform, page-allocator, cache and grant-mapping fixtures (`sim.rs` and `grants.rs`)
//! are shared with the `sim-dom0` example, which includes them with `#[path]`, so that the
//! demo and the tests drive the library through the same set-up.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixtures"
)]

pub mod grants;
pub mod guard;
pub mod sim;

use std::sync::atomic::Ordering;

use swiotlb_core::engine::{DmaEngine, PageAllocator};
use swiotlb_core::{BusAddr, PhysAddr, Platform, Slot};
use swiotlb_xen::init::{InitOptions, InitReport};
use swiotlb_xen_arm64::{Arm64Platform, BoundedForeignTable, ProbeOptions};
use swiotlb_xen_x86_pv::p2m;
use xen_sim::{ArmGuest, Domain, PvGuest, SimConfig, SimDevice, SimMemory, Xen, pattern_byte};

pub use sim::{SimCache, SimPages, SimPv};

/// Bytes in a Xen page.
pub const PAGE: u64 = 4096;
/// Bytes in a pool segment.
pub const SEGMENT: u64 = 256 * 1024;

/// An engine on the simulator: platform `P`, the simulated CPU's memory, slot metadata on
/// the heap, page allocator `A`.
pub type SimEngine<P, A> = DmaEngine<P, SimMemory, Box<[Slot]>, A>;
/// The x86 PV engine under test.
pub type PvEngine<'a> = DmaEngine<SimPv<'a>, SimMemory, Box<[Slot]>, SimPages>;
/// Entries of the arm64 foreign table in the tests.
pub const FOREIGN_ENTRIES: usize = 256;
/// The foreign table's storage (no heap, as in a kernel).
pub type Storage = swiotlb_xen::arm64::BoundedForeignStorage<FOREIGN_ENTRIES>;
/// The arm64 platform under test.
pub type ArmPlatform<'a> = Arm64Platform<'a, Domain, SimCache, SimMemory, Storage>;
/// The arm64 engine under test.
pub type ArmEngine<'a> = DmaEngine<ArmPlatform<'a>, SimMemory, Box<[Slot]>, SimPages>;

/// An x86 PV machine: dom0 with a scrambled P2M, a domU with pages to grant.
pub struct Pv {
    pub xen: Xen,
    pub guest: PvGuest,
    pub dom0: Domain,
}

impl Pv {
    pub fn new() -> Self {
        Self::with_config(SimConfig::x86_pv())
    }

    pub fn with_config(cfg: SimConfig) -> Self {
        let xen = Xen::new(cfg);
        let guest = xen.pv_guest();
        let dom0 = xen.dom0();
        Self { xen, guest, dom0 }
    }

    /// The engine with a bounce pool of `pool_bytes` and 64 pages for coherent allocations.
    pub fn engine(&self, pool_bytes: u64) -> PvEngine<'_> {
        self.engine_with_pages(pool_bytes, 64)
    }

    /// The engine with a bounce pool of `pool_bytes` and `pages` (a power of two) pages for
    /// coherent allocations.
    pub fn engine_with_pages(&self, pool_bytes: u64, pages: u64) -> PvEngine<'_> {
        let n = pool_bytes / PAGE;
        let pool = self.guest.alloc_aligned(n, n.next_power_of_two());
        let pages = SimPages::pv(&self.guest, pages);
        build_engine(
            sim::pv_platform(&self.xen, &self.guest),
            self.guest.memory(),
            pool,
            pool_bytes,
            pages,
        )
    }

    /// [`engine`](Self::engine) with init `options`, and init's report.
    pub fn engine_with(&self, pool_bytes: u64, options: InitOptions) -> (PvEngine<'_>, InitReport) {
        let n = pool_bytes / PAGE;
        let pool = self.guest.alloc_aligned(n, n.next_power_of_two());
        let pages = SimPages::pv(&self.guest, 64);
        init_engine_with(
            sim::pv_platform(&self.xen, &self.guest),
            self.guest.memory(),
            pool,
            pool_bytes,
            pages,
            options,
        )
    }

    /// dom0's pfns that hold their own frame: equal to dom0's page count exactly when no
    /// frame is lost (the simulator checks the frame count per domain).
    pub fn local_entries(&self) -> u64 {
        self.guest
            .p2m()
            .iter()
            .filter(|e| {
                matches!(
                    p2m::P2mEntry::decode(e.load(Ordering::Relaxed)),
                    p2m::P2mEntry::Local(_)
                )
            })
            .count() as u64
    }

    /// The machine address the CPU reaches at `phys` (through the page table).
    pub fn machine(&self, phys: PhysAddr) -> BusAddr {
        self.guest
            .machine_addr(phys)
            .unwrap_or_else(|| panic!("{phys} is not mapped"))
    }
}

/// An arm64 machine: a 1:1 dom0, a domU with pages to grant, and dom0's foreign table.
pub struct Arm {
    pub xen: Xen,
    pub guest: ArmGuest,
    pub dom0: Domain,
    pub mem: SimMemory,
    pub table: BoundedForeignTable<FOREIGN_ENTRIES>,
}

impl Arm {
    pub fn new() -> Self {
        Self::with_config(SimConfig::arm64())
    }

    pub fn with_config(cfg: SimConfig) -> Self {
        let xen = Xen::new(cfg);
        let guest = xen.arm_guest();
        let dom0 = xen.dom0();
        let mem = guest.memory();
        Self {
            xen,
            guest,
            dom0,
            mem,
            table: BoundedForeignTable::new(),
        }
    }

    /// The platform, as probed from the simulated Xen.
    pub fn platform(&self) -> ArmPlatform<'_> {
        // SAFETY: dom0's hypercalls and the simulated CPU's view of dom0's memory, which
        // reaches all of its RAM; the simulated Xen maps dom0 1:1 and says so.
        unsafe {
            Arm64Platform::probe(
                &self.dom0,
                &self.table,
                SimCache(self.guest.clone()),
                &self.mem,
                ProbeOptions::initial_domain(),
            )
        }
        .expect("probe the simulated Xen")
    }

    /// The engine with a bounce pool of `pool_bytes` and 64 pages for coherent allocations.
    pub fn engine(&self, pool_bytes: u64) -> ArmEngine<'_> {
        let n = pool_bytes / PAGE;
        let pool = self.guest.alloc_aligned(n, n.next_power_of_two());
        let pages = SimPages::arm(&self.guest, 64);
        build_engine(self.platform(), self.mem.clone(), pool, pool_bytes, pages)
    }

    /// The grant mapper of dom0's foreign window.
    pub fn grants(&self, slots: usize) -> grants::ArmGrants<'_, Storage> {
        grants::ArmGrants::new(
            &self.table,
            &self.dom0,
            self.guest.foreign_window_base(),
            slots,
        )
    }
}

/// Builds the engine over a pool of `bytes` at `pool` with the facade's Xen
/// initialisation policy, and returns it with the policy's report.
pub fn init_engine<P: Platform, A: PageAllocator>(
    platform: P,
    mem: SimMemory,
    pool: PhysAddr,
    bytes: u64,
    pages: A,
) -> (SimEngine<P, A>, InitReport) {
    init_engine_with(platform, mem, pool, bytes, pages, InitOptions::default())
}

/// As [`init_engine`], with `options`.
pub fn init_engine_with<P: Platform, A: PageAllocator>(
    platform: P,
    mem: SimMemory,
    pool: PhysAddr,
    bytes: u64,
    pages: A,
    options: InitOptions,
) -> (SimEngine<P, A>, InitReport) {
    // CAST: test pools are a few MiB. Room for the mapping records of
    // `DmaEngine::set_mapping_clock` too.
    let storage: Box<[Slot]> = (0..swiotlb_core::slots_with_ages(bytes as usize / 2048))
        .map(|_| Slot::new())
        .collect();
    // SAFETY: the region is fresh dom0 memory given to the pool alone; the simulated CPU's
    // memory reaches it and every buffer the tests map, as it does the pages.
    unsafe { swiotlb_xen::init::init(platform, mem, pool, bytes as usize, storage, pages, options) }
        .expect("swiotlb-xen pool initialisation")
}

/// As [`init_engine`], without the report.
pub fn build_engine<P: Platform, A: PageAllocator>(
    platform: P,
    mem: SimMemory,
    pool: PhysAddr,
    bytes: u64,
    pages: A,
) -> SimEngine<P, A> {
    init_engine(platform, mem, pool, bytes, pages).0
}

/// What every test checks after every step: the simulator's invariants, the pool's, no
/// cache or TLB violation, no DMA fault on `devices`.
pub fn check<P: Platform, A: PageAllocator>(
    xen: &Xen,
    engine: &SimEngine<P, A>,
    devices: &[&SimDevice],
) {
    xen.check_invariants().expect("simulator invariants");
    if let Some(pool) = engine.pool() {
        pool.check_invariants().expect("pool invariants");
    }
    assert_eq!(xen.cache_violations(), [], "cache violations");
    assert_eq!(xen.tlb_violations(), [], "TLB violations");
    for d in devices {
        assert_eq!(d.faults(), [], "DMA faults of device {}", d.id());
    }
}

/// The pattern of `seed`, `len` bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| pattern_byte(seed, i)).collect()
}

/// Slots in use in the engine's pool.
pub fn pool_used<P: Platform, A: PageAllocator>(engine: &SimEngine<P, A>) -> usize {
    engine.pool().map_or(0, |p| p.stats().used)
}

/// Whether `bus` lies in the pool (translated back through the platform).
pub fn is_bounced<P: Platform, A: PageAllocator>(engine: &SimEngine<P, A>, bus: BusAddr) -> bool {
    let Some(pool) = engine.pool() else {
        return false;
    };
    engine
        .platform()
        .bfn_to_local_pfn(bus.frame())
        .is_some_and(|pfn| pool.contains(pfn.start()))
}

/// Offsets `p` by `by` bytes.
pub fn at(p: PhysAddr, by: u64) -> PhysAddr {
    PhysAddr::new(p.as_u64() + by)
}

/// What [`exercise`] saw: the bus address of each mapping and whether it was bounced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The bus address the device was given, per direction (to device, from device,
    /// bidirectional).
    pub bus: [BusAddr; 3],
    /// Whether each mapping went through the pool.
    pub bounced: [bool; 3],
}

/// Maps `len` bytes at `phys` for `dev` (the simulated device `sdev`) in every direction and
/// checks every byte each way, and the invariants after every step:
///
/// - to the device: the CPU writes a pattern, maps, the device reads it at the bus address;
/// - from the device: maps, the device writes a pattern, unmaps, the CPU reads it;
/// - bidirectional with syncs: the device reads what the CPU wrote, writes, the CPU syncs and
///   reads it, writes again, syncs for the device, and the device reads that.
///
/// `reach` turns a bus address into the address the simulated device uses (the identity,
/// or an IOMMU's translation).
#[expect(
    clippy::too_many_arguments,
    reason = "a test helper, all arguments named at call sites"
)]
pub fn exercise<P: Platform, A: PageAllocator>(
    xen: &Xen,
    engine: &SimEngine<P, A>,
    sdev: &SimDevice,
    dev: &swiotlb_core::Device,
    cpu: &SimMemory,
    phys: PhysAddr,
    len: usize,
    seed: u64,
    reach: &dyn Fn(BusAddr, usize) -> Vec<(BusAddr, usize)>,
) -> Seen {
    use swiotlb_core::{DmaAttrs, DmaDirection};
    let read = |bus: BusAddr| -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for (b, n) in reach(bus, len) {
            out.extend(sdev.read(b, n).expect("device read"));
        }
        out
    };
    let write = |bus: BusAddr, data: &[u8]| {
        let mut at = 0;
        for (b, n) in reach(bus, len) {
            sdev.write(b, &data[at..at + n]).expect("device write");
            at += n;
        }
    };
    let cpu_read = || {
        let mut buf = vec![0u8; len];
        cpu.read(phys, &mut buf);
        buf
    };
    let none = DmaAttrs::empty();
    let mut seen = Seen {
        bus: [BusAddr::ZERO; 3],
        bounced: [false; 3],
    };
    let used_before = pool_used(engine);

    // To the device.
    let data = pattern(seed, len);
    cpu.write(phys, &data);
    // SAFETY: the buffer is the test's, unreferenced until the unmap.
    let bus = unsafe { engine.map_page(dev, phys, len, DmaDirection::ToDevice, none) }
        .expect("map to device");
    (seen.bus[0], seen.bounced[0]) = (bus, is_bounced(engine, bus));
    check(xen, engine, &[sdev]);
    assert_eq!(
        read(bus),
        data,
        "the device read other bytes than the CPU wrote"
    );
    engine
        .unmap_page(dev, bus, len, DmaDirection::ToDevice, none)
        .expect("unmap");
    assert_eq!(
        cpu_read(),
        data,
        "unmapping a to-device mapping changed the buffer"
    );
    check(xen, engine, &[sdev]);

    // From the device.
    let data = pattern(seed + 1, len);
    // SAFETY: as above.
    let bus = unsafe { engine.map_page(dev, phys, len, DmaDirection::FromDevice, none) }
        .expect("map from device");
    (seen.bus[1], seen.bounced[1]) = (bus, is_bounced(engine, bus));
    write(bus, &data);
    engine
        .unmap_page(dev, bus, len, DmaDirection::FromDevice, none)
        .expect("unmap");
    assert_eq!(
        cpu_read(),
        data,
        "the CPU reads other bytes than the device wrote"
    );
    check(xen, engine, &[sdev]);

    // Both ways, with syncs in the middle.
    let (a, b, c) = (
        pattern(seed + 2, len),
        pattern(seed + 3, len),
        pattern(seed + 4, len),
    );
    cpu.write(phys, &a);
    // SAFETY: as above.
    let bus = unsafe { engine.map_page(dev, phys, len, DmaDirection::Bidirectional, none) }
        .expect("map bidirectional");
    (seen.bus[2], seen.bounced[2]) = (bus, is_bounced(engine, bus));
    same(&read(bus), &a, "bidirectional: the device read");
    write(bus, &b);
    engine
        .sync_single_for_cpu(dev, bus, len, DmaDirection::Bidirectional)
        .expect("sync for cpu");
    same(&cpu_read(), &b, "after sync_single_for_cpu");
    cpu.write(phys, &c);
    engine
        .sync_single_for_device(dev, bus, len, DmaDirection::Bidirectional)
        .expect("sync for device");
    same(&read(bus), &c, "after sync_single_for_device");
    engine
        .unmap_page(dev, bus, len, DmaDirection::Bidirectional, none)
        .expect("unmap");
    same(&cpu_read(), &c, "after the bidirectional unmap");
    check(xen, engine, &[sdev]);
    assert_eq!(pool_used(engine), used_before, "slots leaked");
    assert_eq!(seen.bounced[0], seen.bounced[1]);
    assert_eq!(seen.bounced[0], seen.bounced[2]);
    seen
}

/// The device reaches bus addresses as they are (no IOMMU).
pub fn no_iommu(bus: BusAddr, len: usize) -> Vec<(BusAddr, usize)> {
    vec![(bus, len)]
}

/// Asserts `got == want`, naming the first differing byte instead of printing both.
#[track_caller]
pub fn same(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(i) => panic!(
            "{what}: byte {i} is {:#04x}, expected {:#04x}",
            got[i], want[i]
        ),
        None => panic!("{what}: {} bytes, expected {}", got.len(), want.len()),
    }
}
