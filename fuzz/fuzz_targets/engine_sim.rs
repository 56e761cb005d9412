//! The DMA engine, built by the facade's Xen pool initialisation, on the simulated Xen (x86
//! PV or arm64, chosen by the input), driven by arbitrary devices, buffers and
//! scatter-gather lists:
//!
//! - single mappings go through the integration tests' `exercise` (every direction, syncs in
//!   the middle, every byte checked on both sides, the simulator's and the pool's invariants,
//!   no cache or TLB violation, no DMA fault, no slot leaked);
//! - scatter-gather lists of arbitrary entries (lengths 0 to 300 KiB, any offset, entries
//!   that overlap or repeat) are mapped for the device, read by the device entry by entry and
//!   compared with the CPU's bytes, written back by the device and unmapped; a failing list
//!   must name a documented error and leave the pool as it was (the unwinding);
//! - misuse of a live mapping: unmaps and syncs far larger than the mapping, syncs and
//!   unmaps at offsets outside it, and stale bus addresses (an unmap or sync after the
//!   unmap, when the driver owns and has rewritten the buffer). The mapping and up to
//!   16 KiB on each side hold a known pattern (dirty in the CPU's cache on arm64) and must
//!   hold exactly the expected bytes afterwards: nothing outside the mapping changes, and
//!   no result is an undocumented error;
//! - faults of the simulator (every [`Fault`] kind: a failing hypercall or multicall entry,
//!   a partial exchange, a page Xen keeps refusing to map, an exchange that loses frames, a
//!   failing cache flush) armed before a coherent allocation and free or a streaming
//!   mapping: each call succeeds with correct bytes or fails with a documented error, a
//!   damaged block is quarantined, and afterwards no page is leaked, no slot is leaked and
//!   the simulator's invariants (its frame count included, which allows only the frames
//!   Xen itself took) hold;
//! - foreign pages (arm64): pages granted by the domU and recorded in the platform's
//!   foreign table, mapped at any offset and length for coherent and non-coherent devices,
//!   optionally with the cache flush failing; the domU's page must hold exactly what the
//!   device wrote.
//!
//! One machine per architecture lives for the whole run; every input leaves it as it found
//! it (which the checks after each input assert), except for blocks a fault damaged, which
//! stay quarantined.

#![no_main]

#[path = "../../crates/swiotlb-xen/tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use common::grants::{GrantMapper, MappedGrant};
use common::{
    Arm, ArmEngine, Pv, PvEngine, SimEngine, SimPages, check, exercise, no_iommu, pattern,
    pool_used,
};
use libfuzzer_sys::fuzz_target;
use swiotlb_core::engine::{CoherentFreeError, DmaError, PageAllocator, SgEntry};
use swiotlb_core::{BusAddr, DmaAttrs, DmaDirection, DmaMask, Error, PhysAddr, Platform};
use xen_sim::{DomU, Fault, SimDevice, SimMemory, SimOp, Xen};

/// Pages of the buffer region the inputs map from.
const BUF_PAGES: u64 = 128;
/// The pool: 1 MiB, the smallest the facade accepts.
const POOL_BYTES: u64 = 1 << 20;
/// Bytes checked on each side of a misused mapping.
const GUARD: usize = 16 * 1024;
/// Pages the domU grants to dom0 on arm64, mapped for the whole run.
const FOREIGN_PAGES: usize = 4;

/// One simulated machine with its engine, devices and buffer region.
struct World<P: Platform + 'static, A: PageAllocator + 'static> {
    xen: &'static Xen,
    engine: SimEngine<P, A>,
    cpu: SimMemory,
    devices: Vec<SimDevice>,
    buf: PhysAddr,
    /// The domU's granted pages mapped in dom0 (arm64 only; empty on x86 PV).
    foreign: Vec<MappedGrant>,
    /// Their mapper, kept for the whole run.
    _grants: Option<&'static dyn GrantMapper>,
    domu: DomU,
}

fn pv_world() -> World<common::SimPv<'static>, SimPages> {
    let pv: &'static Pv = Box::leak(Box::new(Pv::new()));
    let engine: PvEngine<'static> = pv.engine(POOL_BYTES);
    World {
        xen: &pv.xen,
        engine,
        cpu: pv.guest.memory(),
        // x86 DMA is cache-coherent: the x86 PV platform does no cache maintenance.
        devices: devices(&pv.xen, false),
        buf: pv.guest.alloc_pages(BUF_PAGES),
        foreign: Vec::new(),
        _grants: None,
        domu: pv.xen.domu_guest(),
    }
}

fn arm_world() -> World<common::ArmPlatform<'static>, SimPages> {
    let arm: &'static Arm = Box::leak(Box::new(Arm::new()));
    let engine: ArmEngine<'static> = arm.engine(POOL_BYTES);
    let grants = Box::leak(Box::new(arm.grants(FOREIGN_PAGES)));
    let refs = arm.xen.domu_grant(FOREIGN_PAGES);
    let foreign = grants
        .map(arm.xen.domu().id(), &refs)
        .expect("map the domU's grants");
    World {
        xen: &arm.xen,
        engine,
        cpu: arm.mem.clone(),
        devices: devices(&arm.xen, true),
        buf: arm.guest.alloc_pages(BUF_PAGES),
        foreign,
        _grants: Some(grants),
        domu: arm.xen.domu_guest(),
    }
}

/// The devices: 32-, 36- and 64-bit, coherent or (with `noncoherent`) not.
fn devices(xen: &Xen, noncoherent: bool) -> Vec<SimDevice> {
    [
        (32, true),
        (32, false),
        (64, true),
        (64, false),
        (36, false),
    ]
    .into_iter()
    .map(|(bits, coherent)| {
        let coherent = coherent || !noncoherent;
        xen.device(DmaMask::from_bits(bits).unwrap(), coherent)
    })
    .collect()
}

thread_local! {
    static PV: World<common::SimPv<'static>, SimPages> = pv_world();
    static ARM: World<common::ArmPlatform<'static>, SimPages> = arm_world();
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
}

/// The engine's view of device `d` with the input's alignment and bounce choices.
fn core_device(sdev: &SimDevice, flags: u8) -> swiotlb_core::Device {
    let d = sdev.core_device().with_force_bounce(flags & 1 != 0);
    match flags >> 1 & 3 {
        0 => d,
        1 => d.with_min_align_mask(0xfff),
        2 => d.with_min_align_mask(0x7ff),
        _ => d.with_seg_boundary_mask(0xffff),
    }
}

fn dir_of(b: u8) -> DmaDirection {
    [
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::Bidirectional,
    ][usize::from(b % 3)]
}

/// The documented reasons a scatter-gather map may fail for valid buffers.
fn acceptable_sg_failure(e: &DmaError) -> bool {
    matches!(
        e,
        DmaError::ZeroSize
            | DmaError::Bounce {
                source: Error::PoolFull { .. }
                    | Error::TooLarge { .. }
                    | Error::ExceedsSegment { .. },
                ..
            }
    )
}

/// What an unmap or sync given a bad size, offset or stale address may answer: success
/// (the mapping found and the work clamped to it, or a direct range whose maintenance
/// preserves data) or one of the documented refusals.
fn acceptable_misuse(r: &Result<(), DmaError>) -> bool {
    matches!(
        r,
        Ok(()) | Err(DmaError::BusOverflow { .. } | DmaError::Pool { .. })
    )
}

/// A live mapping misused: oversize unmaps and syncs, unmaps and syncs at offsets outside
/// it, and stale bus addresses after the unmap. The mapping and up to 16 KiB on each side
/// are checked afterwards: nothing outside the mapping changed, and inside it is what the
/// device wrote (or the CPU's bytes for a to-device mapping).
fn misuse<P: Platform>(
    w: &World<P, SimPages>,
    sdev: &SimDevice,
    dev: &swiotlb_core::Device,
    tag: u8,
    r: &mut Bytes<'_>,
) -> Option<()> {
    let buf_bytes = (BUF_PAGES * 4096) as usize;
    let (off, len, extra, how) = (r.u16()?, r.u16()?, r.u16()?, r.u8()?);
    let len = 1 + usize::from(len) % (64 * 1024);
    let off = usize::from(off) * 2 % (buf_bytes - len);
    // The guarded window: the mapping and up to 16 KiB of the region on each side.
    let lo = off.saturating_sub(GUARD);
    let hi = (off + len + GUARD).min(buf_bytes);
    let window = PhysAddr::new(w.buf.as_u64() + lo as u64);
    let (off, buf_bytes) = (off - lo, hi - lo);
    let phys = PhysAddr::new(window.as_u64() + off as u64);
    let dir = dir_of(how >> 2);
    let none = DmaAttrs::empty();
    // The CPU writes the whole window: on arm64 these lines are dirty in its cache, so a
    // destructive invalidate outside the mapping would lose them.
    let mut expect = pattern(u64::from(tag) << 8 | u64::from(how), buf_bytes);
    w.cpu.write(window, &expect);
    // SAFETY: the buffer region is this target's alone; nothing references it.
    let bus = unsafe { w.engine.map_page(dev, phys, len, dir, none) }.expect("map");
    if dir.from_device() {
        let b = pattern(u64::from(extra), len);
        sdev.write(bus, &b).expect("device write");
        expect[off..off + len].copy_from_slice(&b);
    }
    // Sizes far beyond the mapping: up to 4 MiB past it, or one that wraps the bus
    // address space. (Not a huge size that does not wrap: the direct path's maintenance
    // walks a size it cannot check frame by frame, which is slow for large sizes.)
    let big = match how >> 5 {
        0 => usize::MAX - 4096,
        _ => len + usize::from(extra) * 64 + usize::from(extra & 0xff),
    };
    let outside = |k: usize| -> BusAddr {
        if how & 0x10 != 0 || bus.as_u64() <= k as u64 {
            BusAddr::new(bus.as_u64() + len as u64 + k as u64)
        } else {
            BusAddr::new(bus.as_u64() - 1 - k as u64)
        }
    };
    let mut live = true;
    let mut results = Vec::new();
    match how & 3 {
        0 => {
            // An oversize unmap of the live mapping.
            let res = w.engine.unmap_page(dev, bus, big, dir, none);
            live = res.is_err();
            results.push(res);
        }
        1 => {
            // Oversize syncs both ways, then the real unmap.
            // (For the CPU first: the device's bytes reach the original, so the sync for
            // the device hands the device its own bytes back, bounced or not.)
            results.push(w.engine.sync_single_for_cpu(dev, bus, big, dir));
            results.push(w.engine.sync_single_for_device(dev, bus, big, dir));
        }
        2 => {
            // Syncs and an unmap outside the mapping.
            let at = outside(usize::from(extra) % 8192);
            let n = 1 + usize::from(extra) % 16384;
            results.push(w.engine.sync_single_for_cpu(dev, at, n, dir));
            results.push(w.engine.unmap_page(dev, at, n, dir, none));
        }
        _ => {
            // Stale: the mapping ends, the driver rewrites its buffer, then the old bus
            // address is unmapped and synced again.
            w.engine.unmap_page(dev, bus, len, dir, none).expect("unmap");
            live = false;
            let mut now = vec![0u8; buf_bytes];
            w.cpu.read(window, &mut now);
            common::same(&now, &expect, "after the unmap");
            expect = pattern(u64::from(extra) ^ 0x55, buf_bytes);
            w.cpu.write(window, &expect);
            let n = if how & 0x10 != 0 { big } else { len };
            results.push(w.engine.unmap_page(dev, bus, n, dir, none));
            results.push(w.engine.sync_single_for_cpu(dev, bus, n, dir));
            results.push(w.engine.sync_single_for_device(dev, bus, len, dir));
        }
    }
    for res in &results {
        assert!(acceptable_misuse(res), "misuse answered {res:?}");
    }
    if live {
        w.engine.unmap_page(dev, bus, len, dir, none).expect("unmap");
    }
    check(w.xen, &w.engine, &[sdev]);
    let mut now = vec![0u8; buf_bytes];
    w.cpu.read(window, &mut now);
    common::same(&now, &expect, "a misused mapping changed bytes it does not own");
    Some(())
}

/// A fault of the simulator decoded from two input bytes: every kind of [`Fault`].
fn fault_of(kind: u8, b: u8) -> Fault {
    const ERRNOS: [i32; 6] = [1, 12, 14, 16, 22, 38];
    let errno = ERRNOS[usize::from(b % 6)];
    let nth = 1 + u64::from(b >> 4) % 4;
    match kind % 7 {
        0 => Fault::FailNth {
            op: [
                SimOp::MemoryExchange,
                SimOp::Multicall,
                SimOp::UpdateVaMapping,
                SimOp::MmuextOp,
                SimOp::CacheFlush,
            ][usize::from(kind >> 3) % 5],
            nth,
            errno,
        },
        1 => Fault::MulticallEntry {
            nth_multicall: nth,
            entry: u64::from(kind >> 3) % 5,
            errno,
        },
        2 => Fault::PartialExchange {
            nth: 1 + u64::from(b >> 4) % 2,
            done_extents: u64::from(kind >> 3) % 5,
        },
        3 => Fault::MapRefused {
            nth: 1 + u64::from(b >> 3) % 8,
            errno,
        },
        4 => Fault::ExchangeLosesFrames {
            nth: 1 + u64::from(b >> 4) % 2,
            kept: u64::from(kind >> 3) % 4,
        },
        _ => Fault::FailNth {
            op: SimOp::CacheFlush,
            nth,
            errno,
        },
    }
}

/// The documented failures of a coherent allocation.
fn acceptable_alloc_failure(e: &DmaError) -> bool {
    matches!(
        e,
        DmaError::CoherentNoMemory { .. }
            | DmaError::CoherentContiguous { .. }
            | DmaError::CoherentDamaged { .. }
            | DmaError::CoherentUnreachable { .. }
    )
}

/// A coherent allocation and free, or a streaming mapping, with a fault armed.
fn with_fault<P: Platform>(
    w: &World<P, SimPages>,
    sdev: &SimDevice,
    dev: &swiotlb_core::Device,
    tag: u8,
    r: &mut Bytes<'_>,
) -> Option<()> {
    let (kind, b, size, off) = (r.u8()?, r.u8()?, r.u16()?, r.u16()?);
    let fault = fault_of(kind, b);
    let pages = w.engine.pages();
    let quarantined = pages.quarantined_pages();
    assert_eq!(pages.in_use(), quarantined, "pages outstanding");
    w.xen.inject(fault);
    if tag & 0x10 == 0 {
        let size = 1 + usize::from(size) % (16 * 1024);
        match w.engine.alloc_coherent(dev, size) {
            Ok(a) => {
                let mut got = vec![0xa5u8; size];
                w.cpu.read(a.phys(), &mut got);
                assert!(got.iter().all(|&x| x == 0), "{fault:?}: not zeroed");
                let data = pattern(u64::from(off), size);
                w.cpu.write(a.phys(), &data);
                if sdev.coherent() {
                    let seen = sdev.read(a.bus(), size).expect("device read");
                    common::same(&seen, &data, "the device read the coherent buffer");
                }
                // SAFETY: nothing uses the allocation any more.
                match unsafe { w.engine.free_coherent(dev, a) } {
                    Ok(()) => {}
                    Err(CoherentFreeError {
                        alloc,
                        source: DmaError::CoherentDamaged { .. },
                    }) => assert!(alloc.is_quarantined(), "{fault:?}"),
                    Err(CoherentFreeError {
                        alloc,
                        source: DmaError::CoherentDestroy { .. },
                    }) => {
                        // Given back intact: a second free without the fault works.
                        w.xen.clear_faults();
                        // SAFETY: as above.
                        unsafe { w.engine.free_coherent(dev, alloc) }.expect("second free");
                    }
                    Err(e) => panic!("{fault:?}: free answered {e:?}"),
                }
            }
            Err(e) => assert!(acceptable_alloc_failure(&e), "{fault:?}: {e:?}"),
        }
    } else {
        let buf_bytes = (BUF_PAGES * 4096) as usize;
        let len = 1 + usize::from(size) % (32 * 1024);
        let off = usize::from(off) % (buf_bytes - len);
        let phys = PhysAddr::new(w.buf.as_u64() + off as u64);
        streaming_with_fault(w, sdev, dev, phys, len, dir_of(tag >> 5), &fault);
    }
    w.xen.clear_faults();
    check(w.xen, &w.engine, &[sdev]);
    assert!(pages.quarantined_pages() >= quarantined);
    assert_eq!(
        pages.in_use(),
        pages.quarantined_pages(),
        "{fault:?}: a page leaked"
    );
    Some(())
}

/// Maps `len` bytes at `phys` (a buffer of dom0 or a foreign page) with a fault armed:
/// the map fails with a cache-maintenance error and leaves nothing mapped, or succeeds; the
/// unmap succeeds or reports the failed maintenance (the mapping is gone). Returns what the
/// CPU should hold at `phys` after the unmap when every step succeeded.
fn streaming_with_fault<P: Platform>(
    w: &World<P, SimPages>,
    sdev: &SimDevice,
    dev: &swiotlb_core::Device,
    phys: PhysAddr,
    len: usize,
    dir: DmaDirection,
    fault: &Fault,
) -> Option<Vec<u8>> {
    let none = DmaAttrs::empty();
    let used = pool_used(&w.engine);
    let data = pattern(phys.as_u64(), len);
    w.cpu.write(phys, &data);
    // SAFETY: the buffer is this target's alone until the unmap.
    let bus = match unsafe { w.engine.map_page(dev, phys, len, dir, none) } {
        Ok(bus) => bus,
        Err(e) => {
            assert!(
                matches!(e, DmaError::CacheMaintenance { .. }),
                "{fault:?}: map answered {e:?}"
            );
            assert_eq!(pool_used(&w.engine), used, "a failed map kept its slots");
            return None;
        }
    };
    if dir.to_device() {
        let got = sdev.read(bus, len).expect("device read");
        common::same(&got, &data, "the device read (fault armed)");
    }
    let mut expect = data;
    if dir.from_device() {
        expect = pattern(phys.as_u64() ^ 0xf00d, len);
        sdev.write(bus, &expect).expect("device write");
    }
    let res = w.engine.unmap_page(dev, bus, len, dir, none);
    assert_eq!(pool_used(&w.engine), used, "an unmap kept its slots");
    match res {
        Ok(()) => {
            let mut now = vec![0u8; len];
            w.cpu.read(phys, &mut now);
            common::same(&now, &expect, "after the unmap (fault armed)");
            Some(expect)
        }
        Err(DmaError::CacheMaintenance { .. }) => None,
        Err(e) => panic!("{fault:?}: unmap answered {e:?}"),
    }
}

/// A range inside a foreign page from two input numbers. A range a non-coherent device
/// writes is whole cache lines, as the DMA API requires (Linux's `ARCH_DMA_MINALIGN`): its
/// map invalidates the foreign range (`GNTTAB_CACHE_INVAL`, as Linux's
/// `xen_dma_sync_for_device` does), which would discard dirty bytes sharing its first or
/// last line.
fn foreign_range(off: usize, len: usize, dir: DmaDirection, coherent: bool) -> (usize, usize) {
    let off = off % 4096;
    let len = 1 + len % (4096 - off);
    if coherent || !dir.from_device() {
        return (off, len);
    }
    let start = off & !63;
    let end = (off + len).next_multiple_of(64).min(4096);
    (start, end - start)
}

/// A foreign page (arm64): the domU's data goes to the device and the device's back to the
/// domU, at any offset and length inside the page, optionally with the cache flush failing.
fn foreign<P: Platform>(
    w: &World<P, SimPages>,
    sdev: &SimDevice,
    dev: &swiotlb_core::Device,
    tag: u8,
    r: &mut Bytes<'_>,
) -> Option<()> {
    let (which, off, len, b) = (r.u8()?, r.u16()?, r.u16()?, r.u8()?);
    let g = &w.foreign[usize::from(which) % w.foreign.len()];
    let dir = dir_of(tag >> 4);
    let (off, len) = foreign_range(usize::from(off), usize::from(len), dir, sdev.coherent());
    let none = DmaAttrs::empty();
    let used = pool_used(&w.engine);
    let page = pattern(u64::from(b) << 16 | u64::from(which), 4096);
    w.domu.write_page(g.gref, 0, &page).expect("domU write");
    let fault = (b & 1 != 0).then(|| fault_of(6, b >> 1));
    if let Some(f) = fault {
        w.xen.inject(f);
    }
    let phys = PhysAddr::new(g.phys.as_u64() + off as u64);
    // SAFETY: the foreign page stays mapped for the whole run; nothing else uses it.
    let mapped = unsafe { w.engine.map_page(dev, phys, len, dir, none) };
    let bus = match mapped {
        Ok(bus) => bus,
        Err(e) => {
            assert!(
                fault.is_some() && matches!(e, DmaError::CacheMaintenance { .. }),
                "foreign map answered {e:?} (fault {fault:?})"
            );
            w.xen.clear_faults();
            assert_eq!(pool_used(&w.engine), used);
            check(w.xen, &w.engine, &[sdev]);
            return Some(());
        }
    };
    if dir.to_device() {
        let got = sdev.read(bus, len).expect("device read");
        common::same(&got, &page[off..off + len], "the device read the domU's page");
    }
    let mut expect = page.clone();
    if dir.from_device() {
        let back = pattern(u64::from(b) ^ 0xabc, len);
        sdev.write(bus, &back).expect("device write");
        expect[off..off + len].copy_from_slice(&back);
    }
    let res = w.engine.unmap_page(dev, bus, len, dir, none);
    w.xen.clear_faults();
    match res {
        Ok(()) => {
            let now = w.domu.read_page(g.gref).expect("domU read");
            common::same(&now, &expect, "the domU's page after the unmap");
        }
        Err(e) => assert!(
            fault.is_some() && matches!(e, DmaError::CacheMaintenance { .. }),
            "foreign unmap answered {e:?} (fault {fault:?})"
        ),
    }
    assert_eq!(pool_used(&w.engine), used, "slots leaked");
    check(w.xen, &w.engine, &[sdev]);
    Some(())
}

fn run<P: Platform>(w: &World<P, SimPages>, r: &mut Bytes<'_>) {
    let buf_bytes = BUF_PAGES * 4096;
    let mut steps = 0;
    while let Some(tag) = r.u8() {
        steps += 1;
        if steps > 12 {
            break;
        }
        let (Some(d), Some(flags)) = (r.u8(), r.u8()) else {
            break;
        };
        let sdev = &w.devices[usize::from(d) % w.devices.len()];
        let dev = core_device(sdev, flags);
        let used = pool_used(&w.engine);
        let kind = match tag % 5 {
            4 if w.foreign.is_empty() => 0,
            k => k,
        };
        let step = match kind {
            2 => misuse(w, sdev, &dev, tag, r),
            3 => with_fault(w, sdev, &dev, tag, r),
            4 => foreign(w, sdev, &dev, tag, r),
            _ => Some(()),
        };
        if step.is_none() {
            break;
        }
        if kind >= 2 {
            // Each of these steps checked the invariants and the bytes itself.
            assert_eq!(pool_used(&w.engine), used, "slots leaked");
            continue;
        }
        if kind == 0 {
            // One buffer, every direction.
            let (Some(off), Some(len)) = (r.u16(), r.u16()) else {
                break;
            };
            let len = 1 + usize::from(len) % (64 * 1024);
            let off = u64::from(off) % (buf_bytes - len as u64);
            let phys = PhysAddr::new(w.buf.as_u64() + off);
            exercise(
                w.xen,
                &w.engine,
                sdev,
                &dev,
                &w.cpu,
                phys,
                len,
                u64::from(tag),
                &no_iommu,
            );
        } else {
            // A scatter-gather list.
            let Some(n) = r.u8() else { break };
            let dir = dir_of(tag >> 1);
            let mut sg = Vec::new();
            for _ in 0..1 + n % 12 {
                let (Some(off), Some(len), Some(scale)) = (r.u16(), r.u16(), r.u8()) else {
                    break;
                };
                // Mostly small entries; some up to 300 KiB (beyond one bounce).
                let len = if scale % 8 == 0 {
                    usize::from(len) * 5
                } else {
                    usize::from(len) % 9000
                };
                let len = len.min(buf_bytes as usize - 1);
                let off = u64::from(off) * 3 % (buf_bytes - len as u64);
                sg.push(SgEntry::new(PhysAddr::new(w.buf.as_u64() + off), len));
            }
            // Entries may overlap, so the CPU's bytes are one pattern over the whole region,
            // written before the map (overlapping from-device entries are not checked
            // against each other: the last unmap wins, as in Linux).
            let data = pattern(u64::from(n), buf_bytes as usize);
            w.cpu.write(w.buf, &data);
            // SAFETY: the buffer region is this target's alone; nothing references it.
            match unsafe { w.engine.map_sg(&dev, &mut sg, dir, DmaAttrs::empty()) } {
                Ok(count) => {
                    assert_eq!(count, sg.len());
                    check(w.xen, &w.engine, &[sdev]);
                    for e in &sg {
                        assert_eq!(e.dma_length, e.length);
                        if dir.to_device() && e.length > 0 {
                            let got = sdev.read(e.dma_address, e.length).expect("device read");
                            let at = (e.phys.as_u64() - w.buf.as_u64()) as usize;
                            common::same(&got, &data[at..at + e.length], "sg entry to the device");
                        }
                    }
                    w.engine
                        .sync_sg_for_cpu(&dev, &sg, dir)
                        .expect("sync_sg_for_cpu");
                    w.engine
                        .sync_sg_for_device(&dev, &sg, dir)
                        .expect("sync_sg_for_device");
                    w.engine
                        .unmap_sg(&dev, &sg, dir, DmaAttrs::empty())
                        .expect("unmap_sg");
                    if !dir.from_device() {
                        let mut now = vec![0u8; buf_bytes as usize];
                        w.cpu.read(w.buf, &mut now);
                        common::same(&now, &data, "a to-device list changed the buffer");
                    }
                }
                Err(e) => {
                    assert!(acceptable_sg_failure(&e.source), "{e:?}");
                    assert!(e.index < sg.len() && e.unwound == e.index, "{e:?}");
                    assert_eq!(e.failures, 1, "an unwinding unmap failed: {e:?}");
                    for x in &sg[..=e.index] {
                        assert_eq!(x.dma_length, 0, "a failed list keeps a mapped length");
                    }
                }
            }
        }
        check(w.xen, &w.engine, &[sdev]);
        assert_eq!(pool_used(&w.engine), used, "slots leaked");
    }
    assert_eq!(pool_used(&w.engine), 0);
    for sdev in &w.devices {
        for mask in [32, 36, 64] {
            let m = DmaMask::from_bits(mask).unwrap();
            let top = w.engine.pool_bus_top().unwrap();
            assert_eq!(
                w.engine.dma_supported(&sdev.core_device(), m),
                top.as_u64() <= m.as_u64()
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Bytes(data);
    match r.u8() {
        Some(b) if b % 2 == 0 => PV.with(|w| run(w, &mut r)),
        Some(_) => ARM.with(|w| run(w, &mut r)),
        None => {}
    }
});
