//! The Linux port as an oracle for the real pool: the same random sequence of maps, device
//! writes, partial syncs and unmaps runs on a fresh `swiotlb_core::BouncePool` and on a fresh
//! Linux baseline, each over its own copy of the same memory layout. Slot choices may differ;
//! what must agree is that every mapping obeys Linux's placement rules and that every byte
//! the CPU sees (bounce contents after a map, originals after syncs and unmaps) is the same.

use swiotlb_bench::harness::{RealPool, linear_map};
use swiotlb_bench::host::HostMemory;
use swiotlb_bench::linux::{LinuxPool, check_mapping_rules, current_cpu};
use swiotlb_bench::rng::SplitMix64;
use swiotlb_core::{BouncePool, Device, DmaAttrs, DmaDirection, DmaMask, PhysAddr};

const BASE: u64 = 0x4000_0000;
const NSLABS: usize = 1024;
const POOL_BYTES: usize = NSLABS * 2048;
const ORIG_ROOM: usize = 1 << 20;
const MAX_LIVE: usize = 12;

/// One live mapping, as both pools answered it.
struct Live {
    dev: usize,
    orig: PhysAddr,
    len: usize,
    dir: DmaDirection,
    attrs: DmaAttrs,
    linux: PhysAddr,
    ours: PhysAddr,
}

fn bytes(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    // CAST: truncation to the low byte is the point.
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn pick(rng: &mut SplitMix64, n: usize) -> usize {
    // CAST: n is small; the result is below n.
    rng.range(0, n as u64 - 1) as usize
}

/// Reads `len` bytes at `addr` from both memories and asserts they agree.
fn same(a: &HostMemory, b: &HostMemory, addr: PhysAddr, len: usize, what: &str) {
    let (mut x, mut y) = (vec![0; len], vec![0; len]);
    // SAFETY: single-threaded; no copy is in flight.
    unsafe {
        a.read(addr, &mut x).unwrap();
        b.read(addr, &mut y).unwrap();
    }
    assert!(x == y, "{what}: memories differ at {addr}+{len:#x}");
}

#[test]
fn real_pool_agrees_with_linux() {
    let new_mem = || HostMemory::new(PhysAddr::new(BASE), POOL_BYTES + ORIG_ROOM, 4096).unwrap();
    let (mem_l, mem_o) = (new_mem(), new_mem());
    let orig_base = PhysAddr::new(BASE + POOL_BYTES as u64);
    // SAFETY: the map does not outlive `mem_l`.
    let map_l = unsafe { linear_map(&mem_l) };
    // SAFETY: each pool alone uses the first NSLABS slots of its own memory; the tests put
    // originals only after them. The real pool's map does not outlive `mem_o`.
    let linux = unsafe { LinuxPool::new(&map_l, mem_l.base(), NSLABS, 2) }.unwrap();
    // SAFETY: as above.
    let ours: RealPool =
        unsafe { BouncePool::new_boxed(linear_map(&mem_o), mem_o.base(), NSLABS, 2) }.unwrap();

    let plain = Device::new(DmaMask::BITS_32);
    let devs = [
        plain,
        plain.with_min_align_mask(0xfff),
        plain.with_min_align_mask(0x7ff),
        plain.with_seg_boundary_mask(0xffff),
        plain
            .with_min_align_mask(0xfff)
            .with_seg_boundary_mask(0x1_ffff),
    ];
    let dirs = [
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::Bidirectional,
    ];
    let mut rng = SplitMix64::new(0x0_4ac1e);
    let mut live: Vec<Live> = Vec::new();
    let (mut maps, mut syncs, mut unmaps) = (0, 0, 0);

    for step in 0..1500 {
        let roll = rng.range(0, 99);
        if live.len() < MAX_LIVE && (live.is_empty() || roll < 40) {
            let dev = pick(&mut rng, devs.len());
            let len = usize::try_from(match rng.range(0, 2) {
                0 => rng.range(1, 512),
                1 => rng.range(1, 8192),
                _ => rng.range(1, 64 << 10),
            })
            .unwrap();
            let orig = orig_base
                .checked_add(rng.range(0, (ORIG_ROOM - len) as u64))
                .unwrap();
            let align = if rng.range(0, 3) == 0 { 0xfff } else { 0 };
            let dir = dirs[pick(&mut rng, 3)];
            let attrs = if rng.range(0, 4) == 0 {
                DmaAttrs::SKIP_CPU_SYNC
            } else {
                DmaAttrs::empty()
            };
            let data = bytes(&mut rng, len);
            // SAFETY: single-threaded; originals lie outside the pools, in the memories the
            // pools reach; overlapping originals get the same writes in both memories.
            let (l, o) = unsafe {
                mem_l.write(orig, &data).unwrap();
                mem_o.write(orig, &data).unwrap();
                (
                    linux.map_single(&devs[dev], orig, len, align, dir, attrs),
                    ours.map(&devs[dev], orig, len, align, dir, attrs, current_cpu()),
                )
            };
            let (l, o) = match (l, o) {
                (Ok(l), Ok(o)) => (l.tlb_addr, o),
                (l, o) => panic!("step {step}: map of {len:#x} at {orig}: {l:?} vs {o:?}"),
            };
            for (who, t) in [("linux", l), ("ours", o)] {
                if let Err(e) = check_mapping_rules(&devs[dev], mem_l.base(), orig, len, align, t) {
                    panic!("step {step}: {who}: {e}");
                }
            }
            let (mut x, mut y) = (vec![0; len], vec![0; len]);
            // SAFETY: the bounce buffers are live and nothing else writes them.
            unsafe {
                mem_l.read(l, &mut x).unwrap();
                mem_o.read(o, &mut y).unwrap();
            }
            assert!(x == data && y == data, "step {step}: map did not copy");
            live.push(Live {
                dev,
                orig,
                len,
                dir,
                attrs,
                linux: l,
                ours: o,
            });
            maps += 1;
        } else if roll < 70 {
            // The device writes part of a mapping, then the CPU or the device syncs a part.
            let m = &live[pick(&mut rng, live.len())];
            let pos = usize::try_from(rng.range(0, m.len as u64 - 1)).unwrap();
            let n = usize::try_from(rng.range(1, (m.len - pos) as u64)).unwrap();
            let data = bytes(&mut rng, n);
            let (l, o) = (
                m.linux.checked_add(pos as u64).unwrap(),
                m.ours.checked_add(pos as u64).unwrap(),
            );
            let dev = &devs[m.dev];
            let for_cpu = rng.range(0, 1) == 0;
            // SAFETY: the ranges lie inside live mappings; single-threaded.
            unsafe {
                mem_l.write(l, &data).unwrap();
                mem_o.write(o, &data).unwrap();
                if for_cpu {
                    linux.sync_single_for_cpu(dev, l, n, m.dir).unwrap();
                    ours.sync_for_cpu(dev, o, n, m.dir).unwrap();
                } else {
                    linux.sync_single_for_device(dev, l, n, m.dir).unwrap();
                    ours.sync_for_device(dev, o, n, m.dir).unwrap();
                }
            }
            same(&mem_l, &mem_o, m.orig, m.len, "original after sync");
            let (mut x, mut y) = (vec![0; m.len], vec![0; m.len]);
            // SAFETY: as above.
            unsafe {
                mem_l.read(m.linux, &mut x).unwrap();
                mem_o.read(m.ours, &mut y).unwrap();
            }
            assert!(x == y, "step {step}: bounce buffers differ after sync");
            syncs += 1;
        } else {
            let m = live.swap_remove(pick(&mut rng, live.len()));
            let dev = &devs[m.dev];
            // SAFETY: the mapping is live; its original is still in place.
            unsafe { linux.unmap_single(dev, m.linux, m.len, m.dir, m.attrs) }.unwrap();
            ours.unmap(dev, m.ours, m.len, m.dir, m.attrs).unwrap();
            same(&mem_l, &mem_o, m.orig, m.len, "original after unmap");
            unmaps += 1;
        }
        linux.check_invariants().unwrap();
        ours.check_invariants().unwrap();
        // Both count the same slots per mapping, pad slots included.
        assert_eq!(
            ours.stats().used,
            linux.used(),
            "step {step}: slot use differs"
        );
    }
    for m in live.drain(..) {
        let dev = &devs[m.dev];
        // SAFETY: as above.
        unsafe { linux.unmap_single(dev, m.linux, m.len, m.dir, m.attrs) }.unwrap();
        ours.unmap(dev, m.ours, m.len, m.dir, m.attrs).unwrap();
    }
    same(&mem_l, &mem_o, orig_base, ORIG_ROOM, "originals at the end");
    assert_eq!((linux.used(), ours.stats().used), (0, 0));
    assert!(
        maps > 300 && syncs > 200 && unmaps > 200,
        "{maps} {syncs} {unmaps}"
    );
}
