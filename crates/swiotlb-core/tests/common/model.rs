//! The model of the bounce pool shared by the proptest model test (`tests/model.rs`) and the
//! `pool_model` fuzz target (`fuzz/`): random map/unmap/sync/device-write sequences run
//! against a simple model. After every step the pool's invariants hold, every live mapping's
//! bytes (original and bounce) are what the model says, and the slot count matches Linux's
//! formula.
//!
//! The pool has joined segments ([`joined`]): mappings of up to 1 MiB span them. The model
//! keeps which slots each mapping holds and checks every placement against the rules
//! (free slots, one area, segments crossed only at joins, Linux's alignment and boundary
//! rules), that a map refused as full had no valid place (a brute-force search over every
//! slot), the longest free run the failure reports, and the exact maximum of every
//! too-large refusal.

use super::{Fixture, POOL_BASE};
use swiotlb_core::pool::{IO_TLB_SEGSIZE, IO_TLB_SIZE};
use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask, Error, FullCause, PhysAddr};

/// Slots in the model's pool: eight segments.
pub const NSLABS: usize = 1024;
/// Areas of the model's pool (four segments each).
pub const NAREAS: usize = 2;
/// Bytes between two original buffers (room for the largest map plus its offset).
pub const BUF_STRIDE: u64 = 0x13_0000;
/// Original buffers (at most one live mapping each).
pub const NBUFS: usize = 16;
/// The largest size the large maps ask for (beyond the longest run, 1 MiB).
pub const BIG_MAX: usize = 1_100_000;

/// The model pool's joins: every segment but segment 1 is joined to the next (the pool
/// leaves out the areas' last segments, 3 and 7), so the runs of joined segments are 0-1,
/// 2-3 and 4-7.
#[must_use]
pub fn joined(seg: usize) -> bool {
    seg != 1
}

/// Whether the model joins segment `seg` to the next, as the pool does (never across an
/// area).
fn model_joined(seg: usize) -> bool {
    let area_segs = NSLABS / NAREAS / IO_TLB_SEGSIZE;
    !(seg + 1).is_multiple_of(area_segs) && joined(seg)
}

/// The runs of joined segments, as slot ranges.
fn groups() -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut a = 0;
    for seg in 0..NSLABS / IO_TLB_SEGSIZE {
        if !model_joined(seg) {
            out.push((a, (seg + 1) * IO_TLB_SEGSIZE));
            a = (seg + 1) * IO_TLB_SEGSIZE;
        }
    }
    out
}

/// The longest run `dev` can get: a group cut by the device's boundary windows (the pool
/// is aligned far beyond any boundary the model uses).
fn dev_run(dev: &Device) -> usize {
    let b = usize::try_from((dev.seg_boundary_mask >> 11).saturating_add(1)).unwrap_or(usize::MAX);
    groups().iter().map(|&(a, e)| (e - a).min(b)).max().unwrap()
}

/// The pool's `max_mapping_size(dev)`: Linux's formula on [`dev_run`].
fn model_max(dev: &Device) -> usize {
    let run = dev_run(dev) * IO_TLB_SIZE;
    let m = dev.min_align_mask as usize;
    if m >= run {
        0
    } else {
        run - m.div_ceil(IO_TLB_SIZE) * IO_TLB_SIZE
    }
}

/// Fails the run with a message naming the check and its line.
macro_rules! check {
    ($c:expr) => {
        if !$c {
            return Err(format!("line {}: {}", line!(), stringify!($c)));
        }
    };
    ($c:expr, $($f:tt)+) => {
        if !$c {
            return Err(format!("line {}: {}", line!(), format!($($f)+)));
        }
    };
}

/// Fails the run unless both sides are equal, showing (the start of) both.
macro_rules! check_eq {
    ($a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            let mut sa = format!("{a:?}");
            let mut sb = format!("{b:?}");
            sa.truncate(200);
            sb.truncate(200);
            return Err(format!(
                "line {}: {} != {}: {sa} vs {sb}",
                line!(),
                stringify!($a),
                stringify!($b)
            ));
        }
    }};
}

/// One step of a model run.
#[derive(Clone, Debug)]
pub enum Op {
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

/// Reads little-endian fields off the front of a fuzzer's input.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

impl Op {
    /// Decodes a sequence of steps from arbitrary bytes (a fuzzer's input), with the same
    /// ranges as the proptest strategy; trailing bytes too short for a step are ignored.
    #[must_use]
    pub fn decode_all(data: &[u8]) -> Vec<Op> {
        let mut r = Reader(data);
        let mut ops = Vec::new();
        while let Some(op) = Self::decode(&mut r) {
            ops.push(op);
        }
        ops
    }

    fn decode(r: &mut Reader<'_>) -> Option<Op> {
        let tag = r.u8()?;
        // CAST: u32 and u16 fit in usize on every host the model runs on.
        Some(match tag % 13 {
            t @ 0..=3 => Op::Map {
                buf: usize::from(r.u8()?) % NBUFS,
                low: u64::from(r.u16()?) % 0x2000,
                size: 1 + r.u32()? as usize % if t == 3 { BIG_MAX } else { 40_000 },
                dir: r.u8()? % 3,
                kind: r.u8()? % 5,
                cpu: usize::from(r.u8()? % 4),
            },
            4..=6 => Op::Unmap {
                pick: usize::from(r.u8()?),
                skip: r.u8()? & 1 == 1,
                extra: usize::from(r.u8()? % 3),
            },
            7 => Op::SyncCpu {
                pick: usize::from(r.u8()?),
                off: r.u32()? as usize,
                len: 1 + usize::from(r.u16()?) % 5000,
            },
            8 => Op::SyncDev {
                pick: usize::from(r.u8()?),
                off: r.u32()? as usize,
                len: 1 + usize::from(r.u16()?) % 5000,
            },
            9 | 10 => Op::DevWrite {
                pick: usize::from(r.u8()?),
                off: r.u32()? as usize,
                len: 1 + usize::from(r.u16()?) % 3000,
                byte: r.u8()?,
            },
            11 => Op::CpuWrite {
                pick: usize::from(r.u8()?),
                off: r.u32()? as usize,
                len: 1 + usize::from(r.u16()?) % 3000,
                byte: r.u8()?,
            },
            _ => Op::Bogus {
                slot: usize::from(r.u16()?) % (NSLABS + 8),
                off: u64::from(r.u16()?) % 2048,
            },
        })
    }
}

struct Live {
    buf: usize,
    orig: PhysAddr,
    tlb: PhysAddr,
    size: usize,
    dir: DmaDirection,
    dev: Device,
    nslots: usize,
    /// The first slot of the allocation, pad slots included.
    first: usize,
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
        3 => (d.with_seg_boundary_mask(0xffff), 0),
        // A boundary that cuts the joined runs of the pool.
        _ => (d.with_seg_boundary_mask(0x7_ffff), 0),
    }
}

/// Linux's allocation size, the one its "swiotlb buffer is full" message prints:
/// `ALIGN(size + offset, align + 1)`.
fn linux_alloc(dev: &Device, orig: u64, size: usize, align: u64) -> usize {
    let offset = orig & dev.min_align_mask & (align | (IO_TLB_SIZE as u64 - 1));
    ((size as u64 + offset + align) & !align) as usize
}

/// Whether the allocation of `n` slots from slot `g` may hold a map of `orig` for `dev` with
/// `align` (Linux's `alloc_align_mask`): free, in one area, across joins only, aligned as
/// `swiotlb_search_pool_area` wants, inside one window of the device's boundary. `free_upto`
/// counts the free slots below each slot.
fn valid_place(
    free_upto: &[usize],
    g: usize,
    n: usize,
    dev: &Device,
    orig: u64,
    align: u64,
    alloc: usize,
) -> bool {
    if g + n > NSLABS || free_upto[g + n] - free_upto[g] != n {
        return false;
    }
    let area = NSLABS / NAREAS;
    if g / area != (g + n - 1) / area {
        return false;
    }
    let (s0, s1) = (g / IO_TLB_SEGSIZE, (g + n - 1) / IO_TLB_SEGSIZE);
    if !(s0..s1).all(model_joined) {
        return false;
    }
    let addr = POOL_BASE + (g * IO_TLB_SIZE) as u64;
    let mut a = align;
    if a == 0 && dev.min_align_mask == 0 && alloc >= 4096 {
        a = 0xfff;
    }
    a |= 0x7ff;
    let iot = dev.min_align_mask & !a;
    if addr & a != 0 || addr & iot != orig & iot {
        return false;
    }
    let last = addr + (n * IO_TLB_SIZE) as u64 - 1;
    addr & !dev.seg_boundary_mask == last & !dev.seg_boundary_mask
}

/// The longest free run an allocation could take (inside a group of joined segments).
fn longest_free(taken: &[bool]) -> usize {
    let mut best = 0;
    for (a, e) in groups() {
        let mut run = 0;
        for &t in &taken[a..e] {
            run = if t { 0 } else { run + 1 };
            best = best.max(run);
        }
    }
    best
}

/// Linux's slot count: `nr_slots(ALIGN(size + offset, align + 1))`.
fn linux_nslots(dev: &Device, orig: u64, size: usize, align: u64) -> usize {
    linux_alloc(dev, orig, size, align).div_ceil(IO_TLB_SIZE)
}

fn dir_of(d: u8) -> DmaDirection {
    [
        DmaDirection::ToDevice,
        DmaDirection::FromDevice,
        DmaDirection::Bidirectional,
    ][d as usize]
}

/// Runs `ops` against a fresh pool and the model, checking after every step.
///
/// # Errors
///
/// The first disagreement between the pool and the model.
pub fn run(ops: &[Op]) -> Result<(), String> {
    let mut f = Fixture::new(NSLABS, NAREAS, NBUFS * BUF_STRIDE as usize);
    f.pool
        .set_segment_joins(joined)
        .map_err(|e| e.to_string())?;
    check_eq!(f.pool.max_run_slots(), 4 * IO_TLB_SEGSIZE);
    let f = f;
    let mut taken = vec![false; NSLABS];
    let mut live: Vec<Live> = Vec::new();
    let mut seed = 1u8;
    for op in ops.iter().cloned() {
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
                let alloc = linux_alloc(&dev, orig.as_u64(), size, align);
                let nslots = alloc.div_ceil(IO_TLB_SIZE);
                let mut free_upto = vec![0; NSLABS + 1];
                for i in 0..NSLABS {
                    free_upto[i + 1] = free_upto[i] + usize::from(!taken[i]);
                }
                let room = (0..NSLABS)
                    .any(|g| valid_place(&free_upto, g, nslots, &dev, orig.as_u64(), align, alloc));
                let linux_max = swiotlb_core::max_mapping_size(&dev);
                let too_large = size > linux_max && size > model_max(&dev);
                check_eq!(f.pool.max_mapping_size(&dev), model_max(&dev));
                // SAFETY: the original lies inside the fixture's buffer `buf`, which no other
                // live mapping uses.
                match unsafe {
                    f.pool
                        .map(&dev, orig, size, align, dir, DmaAttrs::empty(), cpu)
                } {
                    Ok(tlb) => {
                        check!(!too_large && room, "mapped {size} bytes the model refuses");
                        let mask = dev.min_align_mask;
                        check_eq!(tlb.as_u64() & mask, orig.as_u64() & mask);
                        check_eq!(nslots, linux_nslots(&dev, orig.as_u64(), size, align));
                        check_eq!(f.pool.stats().used, used + nslots);
                        check_eq!(f.read(tlb, size), data.clone());
                        let offset = orig.as_u64() & mask & (align | 0x7ff);
                        let head = ((tlb.as_u64() - POOL_BASE) >> 11) as usize;
                        let first = head - (offset >> 11) as usize;
                        check!(
                            valid_place(
                                &free_upto,
                                first,
                                nslots,
                                &dev,
                                orig.as_u64(),
                                align,
                                alloc
                            ),
                            "{size} bytes at slot {first} ({nslots} slots) break a placement rule"
                        );
                        taken[first..first + nslots].fill(true);
                        live.push(Live {
                            buf,
                            orig,
                            tlb,
                            size,
                            dir,
                            dev,
                            nslots,
                            first,
                            orig_bytes: data.clone(),
                            dev_bytes: data,
                        });
                    }
                    Err(Error::PoolFull {
                        size: sz,
                        needed,
                        used: u,
                        total,
                        free,
                        cause,
                    }) => {
                        check_eq!(total, NSLABS);
                        // One thread: the snapshot is exact.
                        check_eq!(u, used);
                        check_eq!(f.pool.stats().used, used);
                        check_eq!(free.free, NSLABS - used);
                        // Linux's size: the request plus the kept offset, aligned.
                        let nslots = linux_nslots(&dev, orig.as_u64(), size, align);
                        check_eq!(needed, nslots);
                        check_eq!(sz, linux_alloc(&dev, orig.as_u64(), size, align));
                        check!(free.largest_run <= free.free);
                        check_eq!(free.largest_run, longest_free(&taken));
                        check!(!too_large, "{size} bytes: full, not too large");
                        check!(
                            !room,
                            "refused {size} bytes ({nslots} slots) the model can place"
                        );
                        let want = if free.free < nslots {
                            FullCause::Exhausted
                        } else {
                            FullCause::Fragmented
                        };
                        check_eq!(cause, want);
                    }
                    Err(Error::TooLarge { size: s, max }) => {
                        check!(too_large, "{size} bytes too large");
                        check_eq!((s, max), (size, model_max(&dev)));
                        check_eq!(f.pool.stats().used, used);
                    }
                    // Longer than any run the device can get (its boundary cuts the joined
                    // runs): never fits, whatever the pool holds.
                    Err(Error::ExceedsSegment { alloc_size, max }) => {
                        check!(!too_large);
                        check_eq!(alloc_size, alloc as u64);
                        check_eq!(max, (dev_run(&dev) * IO_TLB_SIZE) as u64);
                        check!(alloc_size > max);
                        check_eq!(f.pool.stats().used, used);
                    }
                    Err(e) => return Err(format!("map failed: {e}")),
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
                check_eq!(f.read(l.orig, l.size), l.orig_bytes);
                check_eq!(f.pool.stats().used, used - l.nslots);
                taken[l.first..l.first + l.nslots].fill(false);
                // A second unmap is caught.
                check_eq!(
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
                let addr = PhysAddr::new(POOL_BASE + (slot * IO_TLB_SIZE) as u64 + off);
                if live.iter().any(|l| l.tlb == addr) {
                    continue;
                }
                let used = f.pool.stats().used;
                let d = Device::new(DmaMask::FULL);
                let r = f
                    .pool
                    .unmap(&d, addr, 16, DmaDirection::Bidirectional, DmaAttrs::empty());
                let rejected = matches!(r, Err(Error::NotMapped { .. } | Error::NotInPool { .. }));
                check!(rejected, "bogus unmap of {} gave {:?}", addr, r);
                check_eq!(f.pool.stats().used, used);
            }
        }
        f.pool.check_invariants().map_err(|e| e.to_string())?;
        let total: usize = live.iter().map(|l| l.nslots).sum();
        check_eq!(f.pool.stats().used, total);
        for l in &live {
            check_eq!(f.read(l.orig, l.size), l.orig_bytes.clone());
            check_eq!(f.read(l.tlb, l.size), l.dev_bytes.clone());
        }
        // Live mappings never overlap in the pool.
        let mut spans: Vec<(u64, u64)> = live
            .iter()
            .map(|l| (l.tlb.as_u64(), l.tlb.as_u64() + l.size as u64))
            .collect();
        spans.sort_unstable();
        for w in spans.windows(2) {
            check!(w[0].1 <= w[1].0, "overlap {:x?}", w);
        }
    }
    if std::env::var_os("MODEL_VERBOSE").is_some() {
        eprintln!("{:?}", f.pool.stats());
    }
    Ok(())
}
