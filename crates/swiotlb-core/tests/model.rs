//! Random map/unmap/sync/device-write sequences against a simple model: after every step the
//! pool's invariants hold, every live mapping's bytes (original and bounce) are what the
//! model says, and the slot count matches Linux's formula.

mod common;

use common::Fixture;
use proptest::prelude::*;
use swiotlb_core::pool::IO_TLB_SIZE;
use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask, Error, PhysAddr};

const NSLABS: usize = 256;
const BUF_STRIDE: u64 = 64 * 1024;
const NBUFS: usize = 16;

#[derive(Clone, Debug)]
enum Op {
    Map {
        buf: usize,
        low: u64,
        size: usize,
        dir: u8,
        kind: u8,
        cpu: usize,
    },
    Unmap {
        pick: usize,
        skip: bool,
        extra: usize,
    },
    SyncCpu {
        pick: usize,
        off: usize,
        len: usize,
    },
    SyncDev {
        pick: usize,
        off: usize,
        len: usize,
    },
    DevWrite {
        pick: usize,
        off: usize,
        len: usize,
        byte: u8,
    },
    CpuWrite {
        pick: usize,
        off: usize,
        len: usize,
        byte: u8,
    },
    Bogus {
        slot: usize,
        off: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..NBUFS, 0..0x2000u64, 1..40_000usize, 0..3u8, 0..4u8, 0..4usize)
            .prop_map(|(buf, low, size, dir, kind, cpu)| Op::Map { buf, low, size, dir, kind, cpu }),
        3 => (any::<usize>(), any::<bool>(), 0..3usize)
            .prop_map(|(pick, skip, extra)| Op::Unmap { pick, skip, extra }),
        1 => (any::<usize>(), any::<usize>(), 1..5000usize)
            .prop_map(|(pick, off, len)| Op::SyncCpu { pick, off, len }),
        1 => (any::<usize>(), any::<usize>(), 1..5000usize)
            .prop_map(|(pick, off, len)| Op::SyncDev { pick, off, len }),
        2 => (any::<usize>(), any::<usize>(), 1..3000usize, any::<u8>())
            .prop_map(|(pick, off, len, byte)| Op::DevWrite { pick, off, len, byte }),
        1 => (any::<usize>(), any::<usize>(), 1..3000usize, any::<u8>())
            .prop_map(|(pick, off, len, byte)| Op::CpuWrite { pick, off, len, byte }),
        1 => (0..NSLABS + 8, 0..2048u64).prop_map(|(slot, off)| Op::Bogus { slot, off }),
    ]
}

struct Live {
    buf: usize,
    orig: PhysAddr,
    tlb: PhysAddr,
    size: usize,
    dir: DmaDirection,
    dev: Device,
    nslots: usize,
    /// What the original should hold.
    orig_bytes: Vec<u8>,
    /// What the device should see in the pool.
    dev_bytes: Vec<u8>,
}

fn device(kind: u8) -> (Device, u64) {
    let d = Device::new(DmaMask::FULL);
    match kind {
        0 => (d, 0),
        1 => (d.with_min_align_mask(0xfff), 0),
        2 => (d.with_min_align_mask(0xfff), 0xfff),
        _ => (d.with_seg_boundary_mask(0xffff), 0),
    }
}

/// Linux's slot count: `nr_slots(ALIGN(size + offset, align + 1))`.
fn linux_nslots(dev: &Device, orig: u64, size: usize, align: u64) -> usize {
    let offset = orig & dev.min_align_mask & (align | (IO_TLB_SIZE as u64 - 1));
    let alloc = (size as u64 + offset + align) & !align;
    alloc.div_ceil(IO_TLB_SIZE as u64) as usize
}

fn dir_of(d: u8) -> DmaDirection {
    [
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::Bidirectional,
    ][d as usize]
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let f = Fixture::new(NSLABS, 2, NBUFS * BUF_STRIDE as usize);
    let mut live: Vec<Live> = Vec::new();
    let mut seed = 1u8;
    for op in ops {
        match op {
            Op::Map {
                buf,
                low,
                size,
                dir,
                kind,
                cpu,
            } => {
                if live.iter().any(|l| l.buf == buf) {
                    continue;
                }
                let (dev, align) = device(kind);
                let dir = dir_of(dir);
                let orig = f.orig(buf as u64 * BUF_STRIDE + low);
                seed = seed.wrapping_add(37);
                let data: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_add(seed)).collect();
                f.write(orig, &data);
                let used = f.pool.stats().used;
                // SAFETY: the original lies inside the fixture's buffer `buf`, which no other
                // live mapping uses.
                match unsafe {
                    f.pool
                        .map(&dev, orig, size, align, dir, DmaAttrs::empty(), cpu)
                } {
                    Ok(tlb) => {
                        let mask = dev.min_align_mask;
                        prop_assert_eq!(tlb.as_u64() & mask, orig.as_u64() & mask);
                        let nslots = linux_nslots(&dev, orig.as_u64(), size, align);
                        prop_assert_eq!(f.pool.stats().used, used + nslots);
                        prop_assert_eq!(f.read(tlb, size), data.clone());
                        live.push(Live {
                            buf,
                            orig,
                            tlb,
                            size,
                            dir,
                            dev,
                            nslots,
                            orig_bytes: data.clone(),
                            dev_bytes: data,
                        });
                    }
                    Err(Error::PoolFull { used: u, total, .. }) => {
                        prop_assert_eq!(total, NSLABS);
                        prop_assert!(u <= NSLABS);
                        prop_assert_eq!(f.pool.stats().used, used);
                    }
                    Err(Error::TooLarge { .. }) => prop_assert!(size > 252 * 1024),
                    Err(e) => return Err(TestCaseError::fail(format!("map failed: {e}"))),
                }
            }
            Op::Unmap { pick, skip, extra } => {
                if live.is_empty() {
                    continue;
                }
                let mut l = live.swap_remove(pick % live.len());
                let attrs = if skip {
                    DmaAttrs::SKIP_CPU_SYNC
                } else {
                    DmaAttrs::empty()
                };
                let used = f.pool.stats().used;
                f.pool
                    .unmap(&l.dev, l.tlb, l.size + extra, l.dir, attrs)
                    .unwrap();
                if l.dir.from_device() && !skip {
                    l.orig_bytes = l.dev_bytes.clone();
                }
                prop_assert_eq!(f.read(l.orig, l.size), l.orig_bytes);
                prop_assert_eq!(f.pool.stats().used, used - l.nslots);
                // A second unmap is caught.
                prop_assert_eq!(
                    f.pool.unmap(&l.dev, l.tlb, l.size, l.dir, attrs),
                    Err(Error::NotMapped { addr: l.tlb })
                );
            }
            Op::SyncCpu { pick, off, len } | Op::SyncDev { pick, off, len } => {
                if live.is_empty() {
                    continue;
                }
                let to_dev = matches!(op, Op::SyncDev { .. });
                let n = live.len();
                let l = &mut live[pick % n];
                let off = off % l.size;
                let end = (off + len).min(l.size);
                let at = PhysAddr::new(l.tlb.as_u64() + off as u64);
                if to_dev {
                    f.pool.sync_for_device(&l.dev, at, len, l.dir).unwrap();
                    if l.dir.to_device() {
                        l.dev_bytes[off..end].copy_from_slice(&l.orig_bytes[off..end]);
                    }
                } else {
                    f.pool.sync_for_cpu(&l.dev, at, len, l.dir).unwrap();
                    if l.dir.from_device() {
                        l.orig_bytes[off..end].copy_from_slice(&l.dev_bytes[off..end]);
                    }
                }
            }
            Op::DevWrite {
                pick,
                off,
                len,
                byte,
            }
            | Op::CpuWrite {
                pick,
                off,
                len,
                byte,
            } => {
                if live.is_empty() {
                    continue;
                }
                let dev_side = matches!(op, Op::DevWrite { .. });
                let n = live.len();
                let l = &mut live[pick % n];
                let off = off % l.size;
                let end = (off + len).min(l.size);
                let bytes = vec![byte; end - off];
                if dev_side {
                    f.write(PhysAddr::new(l.tlb.as_u64() + off as u64), &bytes);
                    l.dev_bytes[off..end].copy_from_slice(&bytes);
                } else {
                    f.write(PhysAddr::new(l.orig.as_u64() + off as u64), &bytes);
                    l.orig_bytes[off..end].copy_from_slice(&bytes);
                }
            }
            Op::Bogus { slot, off } => {
                let addr = PhysAddr::new(common::POOL_BASE + (slot * IO_TLB_SIZE) as u64 + off);
                if live.iter().any(|l| l.tlb == addr) {
                    continue;
                }
                let used = f.pool.stats().used;
                let d = Device::new(DmaMask::FULL);
                let r = f
                    .pool
                    .unmap(&d, addr, 16, DmaDirection::Bidirectional, DmaAttrs::empty());
                let rejected = matches!(r, Err(Error::NotMapped { .. } | Error::NotInPool { .. }));
                prop_assert!(rejected, "bogus unmap of {} gave {:?}", addr, r);
                prop_assert_eq!(f.pool.stats().used, used);
            }
        }
        f.pool
            .check_invariants()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let total: usize = live.iter().map(|l| l.nslots).sum();
        prop_assert_eq!(f.pool.stats().used, total);
        for l in &live {
            prop_assert_eq!(f.read(l.orig, l.size), l.orig_bytes.clone());
            prop_assert_eq!(f.read(l.tlb, l.size), l.dev_bytes.clone());
        }
        // Live mappings never overlap in the pool.
        let mut spans: Vec<(u64, u64)> = live
            .iter()
            .map(|l| (l.tlb.as_u64(), l.tlb.as_u64() + l.size as u64))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            prop_assert!(w[0].1 <= w[1].0, "overlap {:x?}", w);
        }
    }
    if std::env::var_os("MODEL_VERBOSE").is_some() {
        eprintln!("{:?}", f.pool.stats());
    }
    Ok(())
}

const CASES: u32 = if cfg!(miri) { 2 } else { 48 };
const MAX_OPS: usize = if cfg!(miri) { 12 } else { 80 };

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn pool_matches_model(ops in proptest::collection::vec(op(), 1..MAX_OPS)) {
        run(ops)?;
    }
}
