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
//!   must name a documented error and leave the pool as it was (the unwinding).
//!
//! One machine per architecture lives for the whole run; every input leaves it as it found
//! it (which the checks after each input assert).

#![no_main]

#[path = "../../crates/swiotlb-xen/tests/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use common::{
    Arm, ArmEngine, Pv, PvEngine, SimEngine, check, exercise, no_iommu, pattern, pool_used,
};
use libfuzzer_sys::fuzz_target;
use swiotlb_core::engine::{DmaError, PageAllocator, SgEntry};
use swiotlb_core::{DmaAttrs, DmaDirection, DmaMask, Error, PhysAddr, Platform};
use xen_sim::{SimDevice, SimMemory, Xen};

/// Pages of the buffer region the inputs map from.
const BUF_PAGES: u64 = 128;
/// The pool: 1 MiB, the smallest the facade accepts.
const POOL_BYTES: u64 = 1 << 20;

/// One simulated machine with its engine, devices and buffer region.
struct World<P: Platform + 'static, A: PageAllocator + 'static> {
    xen: &'static Xen,
    engine: SimEngine<P, A>,
    cpu: SimMemory,
    devices: Vec<SimDevice>,
    buf: PhysAddr,
}

fn pv_world() -> World<common::SimPv<'static>, common::SimPages> {
    let pv: &'static Pv = Box::leak(Box::new(Pv::new()));
    let engine: PvEngine<'static> = pv.engine(POOL_BYTES);
    World {
        xen: &pv.xen,
        engine,
        cpu: pv.guest.memory(),
        // x86 DMA is cache-coherent: the x86 PV platform does no cache maintenance.
        devices: devices(&pv.xen, false),
        buf: pv.guest.alloc_pages(BUF_PAGES),
    }
}

fn arm_world() -> World<common::ArmPlatform<'static>, common::SimPages> {
    let arm: &'static Arm = Box::leak(Box::new(Arm::new()));
    let engine: ArmEngine<'static> = arm.engine(POOL_BYTES);
    World {
        xen: &arm.xen,
        engine,
        cpu: arm.mem.clone(),
        devices: devices(&arm.xen, true),
        buf: arm.guest.alloc_pages(BUF_PAGES),
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
    static PV: World<common::SimPv<'static>, common::SimPages> = pv_world();
    static ARM: World<common::ArmPlatform<'static>, common::SimPages> = arm_world();
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

fn run<P: Platform, A: PageAllocator>(w: &World<P, A>, r: &mut Bytes<'_>) {
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
        if tag % 2 == 0 {
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
