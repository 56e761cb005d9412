//! The soak test: several threads map, sync and unmap at once through one engine on the
//! simulated Xen (x86 PV and arm64 in turn), with random sizes, offsets, directions,
//! attributes and devices, and every byte is checked on both sides. Every few seconds all
//! threads pause while the simulator's and the pool's invariants are checked, and a progress
//! line is printed; at the end a summary. Any wrong byte, broken invariant, DMA fault or
//! cache violation stops the run with a failure.
//!
//! `cargo xtask soak --minutes N` runs it in release mode; directly:
//! `cargo run --release -p swiotlb-xen --example soak -- --minutes N [--threads T]`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Arm, Pv, SimEngine, check, pattern, pool_used};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use swiotlb_core::engine::PageAllocator;
use swiotlb_core::{DmaAttrs, DmaDirection, DmaMask, PhysAddr, Platform};
use xen_sim::{SimDevice, SimMemory, Xen};

/// Bytes of buffer each thread owns.
const PER_THREAD: u64 = 512 * 1024;
/// The pool of each machine.
const POOL_BYTES: u64 = 4 << 20;

/// Totals over the whole run.
#[derive(Default)]
struct Totals {
    ops: AtomicU64,
    bytes: AtomicU64,
    bounced: AtomicU64,
    direct: AtomicU64,
    syncs: AtomicU64,
    full: AtomicU64,
    checks: AtomicU64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One mapping's worth of work, fully checked. Returns whether it was bounced, or `None`
/// when the pool was full (a documented, counted outcome under load).
#[allow(clippy::too_many_arguments)]
fn one<P: Platform, A: PageAllocator>(
    engine: &SimEngine<P, A>,
    cpu: &SimMemory,
    sdev: &SimDevice,
    dev: &swiotlb_core::Device,
    phys: PhysAddr,
    len: usize,
    dir: DmaDirection,
    seed: u64,
    t: &Totals,
) -> Option<bool> {
    let none = DmaAttrs::empty();
    let a = pattern(seed, len);
    cpu.write(phys, &a);
    // SAFETY: the buffer belongs to this thread alone until the unmap below.
    let bus = match unsafe { engine.map_page(dev, phys, len, dir, none) } {
        Ok(bus) => bus,
        Err(swiotlb_core::engine::DmaError::Bounce {
            source: swiotlb_core::Error::PoolFull { .. },
            ..
        }) => {
            t.full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Err(e) => panic!("map of {len} bytes at {phys} ({dir:?}): {e}"),
    };
    let bounced = common::is_bounced(engine, bus);
    if dir.to_device() {
        let got = sdev.read(bus, len).expect("device read");
        common::same(&got, &a, "the device read");
    }
    let mut expect = a;
    if dir.from_device() {
        let b = pattern(seed ^ 0xdead, len);
        sdev.write(bus, &b).expect("device write");
        // A partial sync of the middle, then the whole.
        let (off, n) = (len / 4, len / 2);
        if n > 0 {
            let at = swiotlb_core::BusAddr::new(bus.as_u64() + off as u64);
            engine
                .sync_single_for_cpu(dev, at, n, dir)
                .expect("partial sync for cpu");
            let mut part = vec![0u8; n];
            cpu.read(PhysAddr::new(phys.as_u64() + off as u64), &mut part);
            common::same(&part, &b[off..off + n], "after a partial sync");
            t.syncs.fetch_add(1, Ordering::Relaxed);
        }
        expect = b;
    }
    if dir == DmaDirection::Bidirectional {
        let c = pattern(seed ^ 0xbeef, len);
        cpu.write(phys, &c);
        engine
            .sync_single_for_device(dev, bus, len, dir)
            .expect("sync for device");
        common::same(&sdev.read(bus, len).unwrap(), &c, "after sync for device");
        t.syncs.fetch_add(1, Ordering::Relaxed);
        expect = c;
    }
    engine.unmap_page(dev, bus, len, dir, none).expect("unmap");
    let mut now = vec![0u8; len];
    cpu.read(phys, &mut now);
    common::same(&now, &expect, "after the unmap");
    t.ops.fetch_add(1, Ordering::Relaxed);
    t.bytes.fetch_add(len as u64, Ordering::Relaxed);
    Some(bounced)
}

#[allow(clippy::too_many_arguments)]
fn soak<P: Platform + Sync, A: PageAllocator>(
    name: &str,
    xen: &Xen,
    engine: &SimEngine<P, A>,
    cpu: &SimMemory,
    devices: &[SimDevice],
    bufs: &[PhysAddr],
    until: Instant,
    t: &Totals,
) {
    let gate = RwLock::new(());
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        for (i, &buf) in bufs.iter().enumerate() {
            let (gate, stop) = (&gate, &stop);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1234_5678));
                while !stop.load(Ordering::Relaxed) {
                    let _g = gate.read().unwrap();
                    let sdev = &devices[rng.below(devices.len() as u64) as usize];
                    let mut dev = sdev.core_device();
                    match rng.below(4) {
                        0 => dev = dev.with_min_align_mask(0xfff),
                        1 => dev = dev.with_force_bounce(true),
                        _ => {}
                    }
                    let max = if rng.below(8) == 0 { 200_000 } else { 9000 };
                    let len = 1 + rng.below(max) as usize;
                    let off = rng.below(PER_THREAD - len as u64);
                    let dir = [
                        DmaDirection::ToDevice,
                        DmaDirection::FromDevice,
                        DmaDirection::Bidirectional,
                    ][rng.below(3) as usize];
                    let phys = PhysAddr::new(buf.as_u64() + off);
                    match one(engine, cpu, sdev, &dev, phys, len, dir, rng.next(), t) {
                        Some(true) => t.bounced.fetch_add(1, Ordering::Relaxed),
                        Some(false) => t.direct.fetch_add(1, Ordering::Relaxed),
                        None => 0,
                    };
                }
            });
        }
        let mut last = Instant::now();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
            if last.elapsed() >= Duration::from_secs(10) || Instant::now() >= until {
                let _all = gate.write().unwrap();
                check(xen, engine, &devices.iter().collect::<Vec<_>>());
                assert_eq!(
                    pool_used(engine),
                    0,
                    "slots in use with every thread paused"
                );
                t.checks.fetch_add(1, Ordering::Relaxed);
                println!(
                    "soak {name}: {:>5.0} s  {} maps ({} bounced, {} direct), {} syncs, {} MiB verified, {} pool-full retries, high water {} slots",
                    start.elapsed().as_secs_f64(),
                    t.ops.load(Ordering::Relaxed),
                    t.bounced.load(Ordering::Relaxed),
                    t.direct.load(Ordering::Relaxed),
                    t.syncs.load(Ordering::Relaxed),
                    t.bytes.load(Ordering::Relaxed) >> 20,
                    t.full.load(Ordering::Relaxed),
                    engine.pool().map_or(0, |p| p.stats().high_water),
                );
                last = Instant::now();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    check(xen, engine, &devices.iter().collect::<Vec<_>>());
    assert_eq!(pool_used(engine), 0);
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .map(|_| arg(&args, "--seconds", 60))
        .unwrap_or_else(|| arg(&args, "--minutes", 1) * 60);
    let threads = arg(&args, "--threads", 4) as usize;
    let t0 = Instant::now();
    let half = Duration::from_secs(seconds) / 2;
    let mut summary = Vec::new();

    {
        let pv = Pv::new();
        let engine = pv.engine(POOL_BYTES);
        // x86 DMA is cache-coherent: coherent devices only.
        let devices: Vec<SimDevice> = [32, 36, 64]
            .into_iter()
            .map(|b| pv.xen.device(DmaMask::from_bits(b).unwrap(), true))
            .collect();
        let bufs: Vec<PhysAddr> = (0..threads)
            .map(|_| pv.guest.alloc_pages(PER_THREAD / 4096))
            .collect();
        let t = Totals::default();
        soak(
            "x86-pv",
            &pv.xen,
            &engine,
            &pv.guest.memory(),
            &devices,
            &bufs,
            Instant::now() + half,
            &t,
        );
        summary.push(("x86-pv", t, engine.stats()));
    }
    {
        let arm = Arm::new();
        let engine = arm.engine(POOL_BYTES);
        let devices: Vec<SimDevice> = [(32, true), (32, false), (64, false), (40, true)]
            .into_iter()
            .map(|(b, c)| arm.xen.device(DmaMask::from_bits(b).unwrap(), c))
            .collect();
        let bufs: Vec<PhysAddr> = (0..threads)
            .map(|_| arm.guest.alloc_pages(PER_THREAD / 4096))
            .collect();
        let t = Totals::default();
        soak(
            "arm64",
            &arm.xen,
            &engine,
            &arm.mem,
            &devices,
            &bufs,
            Instant::now() + half,
            &t,
        );
        summary.push(("arm64", t, engine.stats()));
    }

    println!(
        "==> soak summary: {threads} threads, {:.1} minutes",
        t0.elapsed().as_secs_f64() / 60.0
    );
    let mut all = 0;
    for (name, t, s) in &summary {
        let ops = t.ops.load(Ordering::Relaxed);
        all += ops;
        println!(
            "  {name}: {ops} mappings ({} bounced, {} direct), {} syncs, {} MiB verified byte for byte, \
             {} pool-full retries, {} invariant checks; engine: {} map failures, {} cache failures; \
             pool high water {} slots, {} slots in use at the end",
            t.bounced.load(Ordering::Relaxed),
            t.direct.load(Ordering::Relaxed),
            t.syncs.load(Ordering::Relaxed),
            t.bytes.load(Ordering::Relaxed) >> 20,
            t.full.load(Ordering::Relaxed),
            t.checks.load(Ordering::Relaxed),
            s.map_failures,
            s.cache_failures,
            s.pool.map_or(0, |p| p.high_water),
            s.pool.map_or(0, |p| p.used),
        );
    }
    println!(
        "  nothing lost: every byte checked, every slot returned, invariants held ({all} mappings)"
    );
}
