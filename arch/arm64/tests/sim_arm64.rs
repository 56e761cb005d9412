//! The arm64 platform against the simulated Xen in arm64 mode: a domU grants pages, dom0
//! maps them in its foreign window, records them, and a non-coherent device does DMA to them
//! under the simulator's cache model.

use std::sync::Mutex;
use swiotlb_core::{
    Bfn, BusAddr, Device, DmaDirection, DmaMask, PhysAddr, Platform, PlatformError,
};
use swiotlb_xen_arm64::{
    Arm64Config, Arm64Platform, BoundedForeignTable, CacheOps, DomainMapping, EntryStorage,
    ForeignTable, INVALID_GRANT_HANDLE, ProbeOptions,
};
use xen_abi::{
    GNTMAP_HOST_MAP, GNTST_BAD_HANDLE, GNTST_GENERAL_ERROR, GNTST_OKAY, GNTTAB_CACHE_CLEAN,
    GNTTAB_CACHE_INVAL, GNTTABOP_CACHE_FLUSH, GnttabCacheFlush, GnttabMapGrantRef,
    GnttabUnmapGrantRef, GrantRef, HYPERVISOR_GRANT_TABLE_OP, Hypercall, ops,
};
use xen_sim::{ArmGuest, CacheViolationKind, Domain, Fault, SimConfig, SimMemory, SimOp, Xen};

const PAGE: u64 = 4096;

/// The kernel's cache hook for dom0's own pages, done by the simulated CPU.
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

/// dom0's hypercalls, with every `GNTTABOP_cache_flush` request recorded on the way to the
/// simulator: (dev_bus_addr, offset, length, op).
struct Recorder<'a> {
    dom: &'a Domain,
    flushes: Mutex<Vec<(u64, u16, u16, u32)>>,
}

impl<'a> Recorder<'a> {
    fn new(dom: &'a Domain) -> Self {
        Self {
            dom,
            flushes: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<(u64, u16, u16, u32)> {
        std::mem::take(&mut *self.flushes.lock().unwrap())
    }
}

// SAFETY: forwards every call unchanged to the simulator, after reading the cache-flush
// requests the call points at (which the caller guarantees are live).
unsafe impl Hypercall for Recorder<'_> {
    unsafe fn hypercall(&self, op: u32, args: [u64; 5]) -> i64 {
        if op == HYPERVISOR_GRANT_TABLE_OP && args[0] == u64::from(GNTTABOP_CACHE_FLUSH) {
            let first = std::ptr::with_exposed_provenance::<GnttabCacheFlush>(args[1] as usize);
            for i in 0..args[2] as usize {
                // SAFETY: the caller passes `args[2]` live requests at `args[1]`.
                let req = unsafe { *first.add(i) };
                // SAFETY: every bit pattern is a valid u64.
                let a = unsafe { req.a.dev_bus_addr };
                self.flushes
                    .lock()
                    .unwrap()
                    .push((a, req.offset, req.length, req.op));
            }
        }
        // SAFETY: the caller's guarantees are passed on unchanged.
        unsafe { self.dom.hypercall(op, args) }
    }
}

/// Probes the simulated Xen as dom0 and assembles the platform.
fn probe<'a, H, C, S>(
    xen: &'a H,
    table: &'a ForeignTable<S>,
    cache: C,
    mem: &'a SimMemory,
) -> Arm64Platform<'a, H, C, SimMemory, S>
where
    H: Hypercall + Sync,
    C: CacheOps,
    S: EntryStorage + Send + Sync,
{
    // SAFETY: `xen` makes dom0's hypercalls to the simulator, and `mem` is the simulated
    // CPU's view of dom0's memory, which reaches all of its RAM.
    unsafe { Arm64Platform::probe(xen, table, cache, mem, ProbeOptions::initial_domain()) }
        .expect("probe the simulated Xen")
}

/// A simulated arm64 machine with `n` granted pages mapped into dom0's foreign window.
struct Fixture {
    xen: Xen,
    dom0: Domain,
    guest: ArmGuest,
    refs: Vec<GrantRef>,
    domu_id: u16,
}

impl Fixture {
    fn new(cfg: SimConfig, grant_pages: usize) -> Self {
        let xen = Xen::new(cfg);
        let dom0 = xen.dom0();
        let guest = xen.arm_guest();
        let domu = xen.domu_guest();
        let refs = domu.grant_pages(grant_pages);
        for (i, r) in refs.iter().enumerate() {
            domu.write_page(*r, 0, &pattern(i, PAGE as usize))
                .expect("domU writes its own page");
        }
        let domu_id = xen.domu().id();
        Self {
            xen,
            dom0,
            guest,
            refs,
            domu_id,
        }
    }

    /// Maps every granted page at consecutive frames of the foreign window.
    fn map_ops(&self) -> Vec<GnttabMapGrantRef> {
        let base = self.guest.foreign_window_base().as_u64();
        let mut ops: Vec<GnttabMapGrantRef> = self
            .refs
            .iter()
            .enumerate()
            .map(|(i, r)| GnttabMapGrantRef {
                host_addr: base + i as u64 * PAGE,
                flags: GNTMAP_HOST_MAP,
                ref_: *r,
                dom: self.domu_id,
                ..Default::default()
            })
            .collect();
        // SAFETY: the requests point at dom0's foreign window, which nothing else uses.
        let ret = unsafe { ops::grant_map(&self.dom0, &mut ops) };
        assert_eq!(ret, Ok(()));
        ops
    }

    /// Unmaps the successful `maps` in one batch and returns the requests with Xen's statuses.
    fn unmap(&self, maps: &[GnttabMapGrantRef]) -> Vec<GnttabUnmapGrantRef> {
        let mut ops: Vec<GnttabUnmapGrantRef> = maps
            .iter()
            .filter(|m| m.status == GNTST_OKAY)
            .map(|m| GnttabUnmapGrantRef {
                host_addr: m.host_addr,
                dev_bus_addr: m.dev_bus_addr,
                handle: m.handle,
                status: 0,
            })
            .collect();
        // SAFETY: the mappings are the test's own and no longer used.
        let ret = unsafe { ops::grant_unmap(&self.dom0, &mut ops) };
        assert_eq!(ret, Ok(()));
        ops
    }

    /// Runs the simulator's invariant checker.
    fn check(&self) {
        self.xen.check_invariants().expect("simulator invariants");
    }
}

/// Distinct test bytes for each `seed`.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + seed * 13 + 1) as u8).collect()
}

/// A device without cache snooping and without an IOMMU.
fn noncoherent() -> Device {
    Device::new(DmaMask::FULL).with_coherent(false)
}

#[test]
fn foreign_pages_translate_and_flush_per_page() {
    let fx = Fixture::new(SimConfig::arm64(), 4);
    let table = BoundedForeignTable::<64>::new();
    let mem = fx.guest.memory();
    let xen = Recorder::new(&fx.dom0);
    let platform = probe(&xen, &table, SimCache(fx.guest.clone()), &mem);
    assert_eq!(
        platform.config(),
        Arm64Config::new(DomainMapping::Direct, true)
    );
    assert_eq!(
        xen.take(),
        [(0, 0, 0, 0)],
        "the probe is one zeroed request"
    );

    let mut maps = fx.map_ops();
    assert!(maps.iter().all(|m| m.status == GNTST_OKAY));
    // SAFETY: `maps` are the untouched results of dom0's map, not used yet.
    let summary = unsafe { platform.record_grant_maps(&mut maps) };
    assert_eq!((summary.recorded, summary.failed), (4, 0));
    assert_eq!(table.len(), 4);
    fx.check();

    // Every frame translates to the real machine frame (what stage 2 maps it to), which is
    // not its IPA; the local frame just below the window is 1:1.
    for m in &maps {
        let phys = PhysAddr::new(m.host_addr);
        let bfn = platform.pfn_to_bfn(phys.frame()).unwrap();
        assert_eq!(bfn.start().as_u64(), m.dev_bus_addr);
        assert_eq!(
            fx.guest.stage2_lookup(phys),
            Some(BusAddr::new(m.dev_bus_addr))
        );
        assert_ne!(bfn.as_u64(), phys.frame().as_u64());
        assert_eq!(
            platform.bfn_to_local_pfn(Bfn::new(phys.frame().as_u64())),
            None
        );
    }
    let window = fx.guest.foreign_window_base();
    let contiguous = maps
        .windows(2)
        .all(|w| w[1].dev_bus_addr == w[0].dev_bus_addr + PAGE);
    assert_eq!(platform.is_bus_contiguous(window, 4 * PAGE), contiguous);
    assert!(platform.is_bus_contiguous(PhysAddr::new(window.as_u64() + 0x10), 0x100));

    // dom0 reads the domU's pattern through its foreign window.
    let mut buf = vec![0u8; PAGE as usize];
    fx.guest.read(PhysAddr::new(maps[2].host_addr), &mut buf);
    assert_eq!(buf, pattern(2, PAGE as usize));

    let dev = noncoherent();
    let sim_dev = fx.xen.device(DmaMask::FULL, false);

    // To the device: dom0 writes into a foreign page, CLEAN of exactly those bytes, the
    // device reads them.
    let phys = PhysAddr::new(maps[1].host_addr + 0x100);
    let bus = platform
        .pfn_to_bfn(phys.frame())
        .map(|b| phys.with_bus_frame(b))
        .unwrap();
    assert_eq!(bus.as_u64(), maps[1].dev_bus_addr + 0x100);
    let data = pattern(99, 0x300);
    fx.guest.write(phys, &data);
    fx.xen.reset_counters();
    platform
        .sync_for_device(&dev, Some(phys), bus, data.len(), DmaDirection::ToDevice)
        .unwrap();
    assert_eq!(
        xen.take(),
        [(maps[1].dev_bus_addr, 0x100, 0x300, GNTTAB_CACHE_CLEAN)]
    );
    assert_eq!(fx.xen.counters().count(SimOp::CacheFlush), 1);
    assert_eq!(sim_dev.read(bus, data.len()).unwrap(), data);

    // From the device: INVAL before it writes and before the CPU reads.
    let (phys, bus) = (
        PhysAddr::new(maps[3].host_addr),
        BusAddr::new(maps[3].dev_bus_addr),
    );
    platform
        .sync_for_device(
            &dev,
            Some(phys),
            bus,
            PAGE as usize,
            DmaDirection::FromDevice,
        )
        .unwrap();
    let incoming = pattern(7, PAGE as usize);
    sim_dev.write(bus, &incoming).unwrap();
    platform
        .sync_for_cpu(
            &dev,
            Some(phys),
            bus,
            PAGE as usize,
            DmaDirection::FromDevice,
        )
        .unwrap();
    assert_eq!(
        xen.take(),
        [
            (maps[3].dev_bus_addr, 0, 0x1000, GNTTAB_CACHE_INVAL),
            (maps[3].dev_bus_addr, 0, 0x1000, GNTTAB_CACHE_INVAL)
        ]
    );
    fx.guest.read(phys, &mut buf);
    assert_eq!(buf, incoming);

    // Both ways, at the end of a page: CLEAN, the device reads and answers, INVAL.
    let phys = PhysAddr::new(maps[0].host_addr + 0xf00);
    let bus = BusAddr::new(maps[0].dev_bus_addr + 0xf00);
    fx.guest.write(phys, &[0x11; 0x100]);
    platform
        .sync_for_device(&dev, Some(phys), bus, 0x100, DmaDirection::Bidirectional)
        .unwrap();
    assert_eq!(sim_dev.read(bus, 0x100).unwrap(), [0x11; 0x100]);
    sim_dev.write(bus, &[0x22; 0x100]).unwrap();
    platform
        .sync_for_cpu(&dev, Some(phys), bus, 0x100, DmaDirection::Bidirectional)
        .unwrap();
    assert_eq!(
        xen.take(),
        [
            (maps[0].dev_bus_addr, 0xf00, 0x100, GNTTAB_CACHE_CLEAN),
            (maps[0].dev_bus_addr, 0xf00, 0x100, GNTTAB_CACHE_INVAL)
        ]
    );
    let mut small = [0u8; 0x100];
    fx.guest.read(phys, &mut small);
    assert_eq!(small, [0x22; 0x100]);

    assert_eq!(fx.xen.cache_violations(), []);
    assert_eq!(sim_dev.faults(), []);
    fx.check();

    // Unmapping clears the entries and translation is 1:1 again.
    let unmaps = fx.unmap(&maps);
    assert!(unmaps.iter().all(|u| u.status == GNTST_OKAY));
    // SAFETY: the grants are unmapped and the frames are not used for DMA again.
    let cleared = unsafe { platform.clear_grant_unmaps(&unmaps) };
    assert_eq!(cleared.cleared, 4);
    assert!(table.is_empty());
    let pfn = PhysAddr::new(maps[0].host_addr).frame();
    assert_eq!(
        platform.pfn_to_bfn(pfn).map(|b| b.as_u64()),
        Some(pfn.as_u64())
    );
    fx.check();
}

#[test]
fn cache_model_catches_a_missing_clean_and_a_missing_inval() {
    let fx = Fixture::new(SimConfig::arm64(), 2);
    let table = BoundedForeignTable::<8>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, SimCache(fx.guest.clone()), &mem);
    let mut maps = fx.map_ops();
    // SAFETY: `maps` are the untouched results of dom0's map, not used yet.
    unsafe { platform.record_grant_maps(&mut maps) };
    let dev = noncoherent();
    let sim_dev = fx.xen.device(DmaMask::FULL, false);

    // No CLEAN: the device reads memory the CPU still has dirty in its cache.
    let (phys, bus) = (
        PhysAddr::new(maps[0].host_addr),
        BusAddr::new(maps[0].dev_bus_addr),
    );
    fx.guest.write(phys, &[0xaa; 64]);
    let _ = sim_dev.read(bus, 64);
    let kinds: Vec<_> = fx.xen.cache_violations().iter().map(|v| v.kind).collect();
    assert_eq!(
        kinds,
        [CacheViolationKind::DeviceReadDirty],
        "missing CLEAN not caught"
    );
    fx.xen.clear_cache_violations();

    // With the CLEAN the same read is fine.
    platform
        .sync_for_device(&dev, Some(phys), bus, 64, DmaDirection::ToDevice)
        .unwrap();
    assert_eq!(sim_dev.read(bus, 64).unwrap(), [0xaa; 64]);
    assert_eq!(fx.xen.cache_violations(), []);

    // No INVAL after the device wrote: the CPU may read stale lines.
    let (phys, bus) = (
        PhysAddr::new(maps[1].host_addr),
        BusAddr::new(maps[1].dev_bus_addr),
    );
    platform
        .sync_for_device(&dev, Some(phys), bus, 64, DmaDirection::FromDevice)
        .unwrap();
    sim_dev.write(bus, &[0xbb; 64]).unwrap();
    let mut buf = [0u8; 64];
    fx.guest.read(phys, &mut buf);
    let kinds: Vec<_> = fx.xen.cache_violations().iter().map(|v| v.kind).collect();
    assert_eq!(
        kinds,
        [CacheViolationKind::CpuReadStale],
        "missing INVAL not caught"
    );
    fx.xen.clear_cache_violations();

    // With the INVAL the CPU reads the device's data without a violation.
    sim_dev.write(bus, &[0xcc; 64]).unwrap();
    platform
        .sync_for_cpu(&dev, Some(phys), bus, 64, DmaDirection::FromDevice)
        .unwrap();
    fx.guest.read(phys, &mut buf);
    assert_eq!(buf, [0xcc; 64]);
    assert_eq!(fx.xen.cache_violations(), []);
}

#[test]
fn local_pages_use_the_kernel_hook() {
    let fx = Fixture::new(SimConfig::arm64(), 0);
    let table = BoundedForeignTable::<8>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, SimCache(fx.guest.clone()), &mem);
    let dev = noncoherent();
    let sim_dev = fx.xen.device(DmaMask::FULL, false);
    let phys = fx.guest.alloc_pages(3);
    let bus = platform
        .pfn_to_bfn(phys.frame())
        .map(|b| phys.with_bus_frame(b))
        .unwrap();
    assert_eq!(bus.as_u64(), phys.as_u64(), "dom0 is 1:1");
    let data = pattern(5, 3 * PAGE as usize);
    fx.guest.write(phys, &data);
    fx.xen.reset_counters();
    platform
        .sync_for_device(&dev, Some(phys), bus, data.len(), DmaDirection::ToDevice)
        .unwrap();
    assert_eq!(
        fx.xen.counters().count(SimOp::CacheFlush),
        0,
        "local pages need no hypercall"
    );
    assert_eq!(sim_dev.read(bus, data.len()).unwrap(), data);

    // From the device: clean before (arm64's rule), invalidate after, the CPU reads the data.
    platform
        .sync_for_device(&dev, Some(phys), bus, data.len(), DmaDirection::FromDevice)
        .unwrap();
    let incoming = pattern(6, data.len());
    sim_dev.write(bus, &incoming).unwrap();
    platform
        .sync_for_cpu(&dev, Some(phys), bus, data.len(), DmaDirection::FromDevice)
        .unwrap();
    let mut buf = vec![0u8; data.len()];
    fx.guest.read(phys, &mut buf);
    assert_eq!(buf, incoming);
    assert_eq!(fx.xen.counters().count(SimOp::CacheFlush), 0);
    assert_eq!(fx.xen.cache_violations(), []);
    fx.xen.check_invariants().unwrap();
}

/// A kernel hook that claims to maintain caches and does nothing.
struct ForgetfulCache;

impl CacheOps for ForgetfulCache {
    fn clean(&self, _phys: PhysAddr, _len: usize) {}
    fn invalidate(&self, _phys: PhysAddr, _len: usize) {}
    fn clean_invalidate(&self, _phys: PhysAddr, _len: usize) {}
}

#[test]
fn a_kernel_hook_that_skips_the_clean_is_caught() {
    let fx = Fixture::new(SimConfig::arm64(), 0);
    let table = BoundedForeignTable::<8>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, ForgetfulCache, &mem);
    let sim_dev = fx.xen.device(DmaMask::FULL, false);
    let phys = fx.guest.alloc_pages(1);
    let bus = BusAddr::new(phys.as_u64());
    fx.guest.write(phys, &[0x42; 128]);
    platform
        .sync_for_device(&noncoherent(), Some(phys), bus, 128, DmaDirection::ToDevice)
        .unwrap();
    let _ = sim_dev.read(bus, 128);
    let kinds: Vec<_> = fx.xen.cache_violations().iter().map(|v| v.kind).collect();
    assert_eq!(kinds, [CacheViolationKind::DeviceReadDirty]);
}

#[test]
fn enosys_probe_bounces_foreign_pages_for_noncoherent_devices() {
    let fx = Fixture::new(SimConfig::arm64().with_cache_flush(false), 1);
    let table = BoundedForeignTable::<8>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, SimCache(fx.guest.clone()), &mem);
    assert!(!platform.config().cache_flush);
    let mut maps = fx.map_ops();
    // SAFETY: as above.
    unsafe { platform.record_grant_maps(&mut maps) };
    let (phys, bus) = (
        PhysAddr::new(maps[0].host_addr),
        BusAddr::new(maps[0].dev_bus_addr),
    );
    assert!(platform.needs_bounce(&noncoherent(), phys, bus));
    assert!(!platform.needs_bounce(&Device::new(DmaMask::FULL), phys, bus));
    let local = fx.guest.alloc_pages(1);
    assert!(!platform.needs_bounce(&noncoherent(), local, BusAddr::new(local.as_u64())));
    // Cache maintenance of the foreign page is refused rather than skipped.
    assert!(matches!(
        platform.sync_for_device(&noncoherent(), Some(phys), bus, 16, DmaDirection::ToDevice),
        Err(PlatformError::Unsupported { .. })
    ));
}

#[test]
fn grant_map_failures_and_a_full_table() {
    let fx = Fixture::new(SimConfig::arm64(), 3);
    let table = BoundedForeignTable::<1>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, SimCache(fx.guest.clone()), &mem);
    fx.xen.inject(Fault::GrantMap {
        nth: 2,
        status: GNTST_GENERAL_ERROR,
    });
    let mut maps = fx.map_ops();
    assert_eq!(maps[1].status, GNTST_GENERAL_ERROR);
    fx.xen.reset_counters();
    // SAFETY: as above.
    let s = unsafe { platform.record_grant_maps(&mut maps) };
    // Map 0 recorded, map 1 failed in Xen, map 2 did not fit and was unmapped at once.
    assert_eq!(
        (s.recorded, s.skipped, s.failed, s.unmap_failed),
        (1, 1, 1, 0)
    );
    assert_eq!(maps[2].status, GNTST_GENERAL_ERROR);
    assert_eq!(fx.xen.counters().count(SimOp::GrantUnmap), 1);
    fx.check();
    // The page really is unmapped: mapping it again at the same place succeeds.
    // The page really is unmapped: stage 2 has nothing at its IPA, the table no entry, and
    // mapping the grant again there succeeds.
    let ipa = PhysAddr::new(maps[2].host_addr);
    assert_eq!(fx.guest.stage2_lookup(ipa), None);
    assert_eq!(table.lookup(ipa.frame()), None);
    let mut again = [GnttabMapGrantRef {
        host_addr: maps[2].host_addr,
        flags: GNTMAP_HOST_MAP,
        ref_: maps[2].ref_,
        dom: maps[2].dom,
        ..Default::default()
    }];
    // SAFETY: dom0's own foreign window, where nothing is mapped.
    let ret = unsafe { ops::grant_map(&fx.dom0, &mut again) };
    assert_eq!((ret, again[0].status), (Ok(()), GNTST_OKAY));
    assert_eq!(
        fx.guest.stage2_lookup(ipa),
        Some(BusAddr::new(again[0].dev_bus_addr))
    );
    fx.check();
}

/// A map that could not be recorded is unmapped at once and its handle invalidated (as
/// Linux's `set_foreign_p2m_mapping`): a caller that cleans up by handle (gntdev's pattern)
/// then gets `GNTST_bad_handle` instead of tearing down the mapping Xen has since given the
/// freed handle to.
#[test]
fn a_failed_record_leaves_the_handle_invalid() {
    let fx = Fixture::new(SimConfig::arm64(), 2);
    let table = BoundedForeignTable::<1>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, SimCache(fx.guest.clone()), &mem);
    let mut maps = fx.map_ops();
    let freed = maps[1].handle;
    // SAFETY: the maps are the fixture's own, used by nothing yet.
    let s = unsafe { platform.record_grant_maps(&mut maps) };
    assert_eq!((s.recorded, s.failed, s.unmap_failed), (1, 1, 0));
    assert_eq!(maps[1].status, GNTST_GENERAL_ERROR);
    assert_eq!(
        maps[1].handle, INVALID_GRANT_HANDLE,
        "the freed handle was kept"
    );
    // Xen hands the freed handle to the next mapping: the grant mapped again in place.
    let mut again = [GnttabMapGrantRef {
        host_addr: maps[1].host_addr,
        flags: GNTMAP_HOST_MAP,
        ref_: maps[1].ref_,
        dom: maps[1].dom,
        ..Default::default()
    }];
    // SAFETY: dom0's own foreign window, where nothing is mapped at this frame any more.
    let ret = unsafe { ops::grant_map(&fx.dom0, &mut again) };
    assert_eq!((ret, again[0].status), (Ok(()), GNTST_OKAY));
    assert_eq!(
        again[0].handle, freed,
        "the simulator reuses the lowest free handle"
    );
    // The caller cleans up the failed request by its handle, as gntdev does.
    let mut cleanup = [GnttabUnmapGrantRef::new(
        maps[1].host_addr,
        maps[1].dev_bus_addr,
        maps[1].handle,
    )];
    // SAFETY: an unmap request for a mapping the test made; Xen judges the handle.
    let ret = unsafe { ops::grant_unmap(&fx.dom0, &mut cleanup) };
    assert_eq!((ret, cleanup[0].status), (Ok(()), GNTST_BAD_HANDLE));
    let ipa = PhysAddr::new(again[0].host_addr);
    assert_eq!(
        fx.guest.stage2_lookup(ipa),
        Some(BusAddr::new(again[0].dev_bus_addr)),
        "the cleanup tore down the new mapping"
    );
    fx.check();
}

#[test]
fn contiguous_regions_are_identity_and_zeroed() {
    let fx = Fixture::new(SimConfig::arm64(), 1);
    let table = BoundedForeignTable::<8>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, SimCache(fx.guest.clone()), &mem);
    let phys = fx.guest.alloc_aligned(16, 16);
    fx.guest.write(phys, &[0x5a; 4096]);
    // SAFETY: the test owns the freshly allocated region.
    let bus = unsafe { platform.create_contiguous_region(phys, 4, 64) }.unwrap();
    assert_eq!(bus.as_u64(), phys.as_u64());
    let mut buf = vec![0xffu8; 16 * PAGE as usize];
    fx.guest.read(phys, &mut buf);
    assert!(buf.iter().all(|&b| b == 0));
    // SAFETY: as above.
    unsafe { platform.destroy_contiguous_region(phys, 4) }.unwrap();
    // A region over the foreign window is refused.
    let mut maps = fx.map_ops();
    // SAFETY: as above.
    unsafe { platform.record_grant_maps(&mut maps) };
    let foreign = PhysAddr::new(maps[0].host_addr);
    // SAFETY: refused before anything is touched.
    let r = unsafe { platform.create_contiguous_region(foreign, 0, 64) };
    assert!(matches!(r, Err(PlatformError::Unsupported { .. })));
    fx.check();
}

#[test]
fn cache_flush_errors_surface() {
    let fx = Fixture::new(SimConfig::arm64(), 1);
    let table = BoundedForeignTable::<8>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, SimCache(fx.guest.clone()), &mem);
    let mut maps = fx.map_ops();
    // SAFETY: `maps` are the untouched results of dom0's map, not used yet.
    unsafe { platform.record_grant_maps(&mut maps) };
    let (phys, bus) = (
        PhysAddr::new(maps[0].host_addr),
        BusAddr::new(maps[0].dev_bus_addr),
    );
    let dev = noncoherent();
    fx.xen.inject(Fault::FailNth {
        op: SimOp::CacheFlush,
        nth: 1,
        errno: 14,
    });
    assert_eq!(
        platform.sync_for_device(&dev, Some(phys), bus, 64, DmaDirection::ToDevice),
        Err(PlatformError::Hypercall {
            op: "GNTTABOP_cache_flush",
            errno: 14
        })
    );
    platform
        .sync_for_device(&dev, Some(phys), bus, 64, DmaDirection::ToDevice)
        .unwrap();

    // After the grant is unmapped Xen refuses to flush the frame (-EINVAL on real Xen).
    let unmaps = fx.unmap(&maps);
    assert_eq!(
        platform.sync_for_device(&dev, Some(phys), bus, 64, DmaDirection::ToDevice),
        Err(PlatformError::Hypercall {
            op: "GNTTABOP_cache_flush",
            errno: 22
        })
    );
    // SAFETY: the grant is unmapped and the frame is not used for DMA again.
    unsafe { platform.clear_grant_unmaps(&unmaps) };
    fx.check();
}

#[test]
fn translations_stay_right_while_grants_come_and_go() {
    let fx = Fixture::new(SimConfig::arm64(), 8);
    let table = BoundedForeignTable::<16>::new();
    let mem = fx.guest.memory();
    let platform = probe(&fx.dom0, &table, SimCache(fx.guest.clone()), &mem);
    // Pages 0..4 stay mapped; pages 4..8 are mapped and unmapped over and over.
    let mut maps = fx.map_ops();
    let (steady, churn) = maps.split_at_mut(4);
    // SAFETY: untouched results of dom0's map, not used yet.
    assert_eq!(unsafe { platform.record_grant_maps(steady) }.recorded, 4);
    let unmaps = fx.unmap(churn);
    // SAFETY: the grants are unmapped and the frames not used for DMA.
    unsafe { platform.clear_grant_unmaps(&unmaps) };
    let churn_template: Vec<GnttabMapGrantRef> = churn
        .iter()
        .map(|m| GnttabMapGrantRef {
            host_addr: m.host_addr,
            flags: GNTMAP_HOST_MAP,
            ref_: m.ref_,
            dom: m.dom,
            ..Default::default()
        })
        .collect();
    let rounds = 200;
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..rounds {
                let mut ops = churn_template.clone();
                // SAFETY: dom0's own foreign window, unused between rounds.
                unsafe { ops::grant_map(&fx.dom0, &mut ops) }.unwrap();
                // SAFETY: untouched results of the map, not used yet.
                let s = unsafe { platform.record_grant_maps(&mut ops) };
                assert_eq!(s.recorded, 4);
                for m in &ops {
                    let pfn = PhysAddr::new(m.host_addr).frame();
                    assert_eq!(
                        platform.pfn_to_bfn(pfn).map(|b| b.start().as_u64()),
                        Some(m.dev_bus_addr)
                    );
                }
                let unmaps = fx.unmap(&ops);
                // SAFETY: unmapped, and nothing uses the frames for DMA.
                assert_eq!(unsafe { platform.clear_grant_unmaps(&unmaps) }.cleared, 4);
            }
        });
        for _ in 0..2 {
            s.spawn(|| {
                for k in 0..rounds * 10 {
                    let m = &steady[k % 4];
                    let pfn = PhysAddr::new(m.host_addr).frame();
                    assert_eq!(
                        platform.pfn_to_bfn(pfn).map(|b| b.start().as_u64()),
                        Some(m.dev_bus_addr),
                        "a steady mapping moved"
                    );
                    let local = fx.guest.foreign_window_base().frame();
                    let below = local.checked_sub(1).unwrap();
                    assert_eq!(
                        platform.pfn_to_bfn(below).map(|b| b.as_u64()),
                        Some(below.as_u64())
                    );
                }
            });
        }
    });
    assert_eq!(table.len(), 4);
    fx.check();
}
