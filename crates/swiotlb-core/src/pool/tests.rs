//! Unit tests, one (or a few) per rule of the pool.

use super::*;
use crate::linear::LinearMap;
use crate::{DmaMask, Error, FreeSpace, FullCause};
use std::boxed::Box;
use std::format;
use std::vec;
use std::vec::Vec;

const POOL_BASE: u64 = 0x4000_0000;
const ORIG_BYTES: usize = 1 << 20;

type Pool = BouncePool<LinearMap, Vec<Slot>>;

/// A pool followed by 1 MiB of "original" memory, in one heap allocation reached only
/// through raw pointers.
struct Fixture {
    base: *mut u8,
    len: usize,
    pool: Pool,
}

impl Fixture {
    fn new(nslabs: usize, nareas: usize) -> Self {
        Self::with_orig(nslabs, nareas, ORIG_BYTES)
    }

    /// A pool followed by `orig_bytes` of original memory.
    fn with_orig(nslabs: usize, nareas: usize, orig_bytes: usize) -> Self {
        Self::with_storage(nslabs, nareas, orig_bytes, nslabs)
    }

    /// A pool whose metadata storage has `storage` slots.
    fn with_storage(nslabs: usize, nareas: usize, orig_bytes: usize, storage: usize) -> Self {
        let len = nslabs * IO_TLB_SIZE + orig_bytes;
        let base = Box::into_raw(vec![0x5au8; len].into_boxed_slice()).cast::<u8>();
        // SAFETY: `base..base + len` is one live allocation freed only in `Drop`, after the
        // pool; nothing else references it.
        let mem = unsafe { LinearMap::new(base, PhysAddr::new(POOL_BASE), len) };
        let storage = (0..storage).map(|_| Slot::new()).collect();
        // SAFETY: the pool range is the start of the allocation and is used by the pool alone.
        let pool = unsafe { Pool::new(mem, PhysAddr::new(POOL_BASE), nslabs, nareas, storage) }
            .expect("valid configuration");
        Self { base, len, pool }
    }

    /// The physical address of byte `off` of the original region.
    fn orig(&self, off: u64) -> PhysAddr {
        PhysAddr::new(self.pool.end().as_u64() + off)
    }

    fn ptr(&self, addr: PhysAddr, len: usize) -> *mut u8 {
        let off = usize::try_from(addr.as_u64() - POOL_BASE).unwrap();
        assert!(off + len <= self.len);
        // SAFETY: checked to be inside the allocation.
        unsafe { self.base.add(off) }
    }

    /// Writes bytes as the CPU (original) or the device (pool) would.
    fn write(&self, addr: PhysAddr, bytes: &[u8]) {
        // SAFETY: inside the allocation; no reference covers it.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr(addr, bytes.len()), bytes.len())
        }
    }

    fn fill(&self, addr: PhysAddr, byte: u8, len: usize) {
        // SAFETY: inside the allocation; no reference covers it.
        unsafe { core::ptr::write_bytes(self.ptr(addr, len), byte, len) }
    }

    fn read(&self, addr: PhysAddr, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        // SAFETY: inside the allocation; no reference covers it.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(addr, len), v.as_mut_ptr(), len) }
        v
    }

    fn map(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<PhysAddr, Error> {
        self.map_full(dev, orig, size, 0, dir, DmaAttrs::empty(), 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn map_full(
        &self,
        dev: &Device,
        orig: PhysAddr,
        size: usize,
        align: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
        cpu: usize,
    ) -> Result<PhysAddr, Error> {
        // SAFETY: tests only pass originals inside the fixture's original region (or ranges
        // the pool rejects before touching memory).
        unsafe { self.pool.map(dev, orig, size, align, dir, attrs, cpu) }
    }

    fn slot_of(&self, tlb: PhysAddr) -> usize {
        usize::try_from((tlb.as_u64() - POOL_BASE) >> IO_TLB_SHIFT).unwrap()
    }

    fn check(&self) {
        self.pool.check_invariants().expect("pool invariants hold");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: `base` came from `Box::into_raw` of a slice of `len` bytes.
        drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(self.base, self.len)) });
    }
}

fn dev() -> Device {
    Device::new(DmaMask::FULL)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const TD: DmaDirection = DmaDirection::ToDevice;
const FD: DmaDirection = DmaDirection::FromDevice;
const BI: DmaDirection = DmaDirection::Bidirectional;
const NONE: DmaAttrs = DmaAttrs::empty();

#[test]
fn init_zeroes_pool_and_sets_every_slot_free() {
    let f = Fixture::new(256, 1);
    assert_eq!(
        f.read(f.pool.start(), 256 * IO_TLB_SIZE),
        vec![0u8; 256 * IO_TLB_SIZE]
    );
    assert_eq!(f.pool.free_count(0), Some(128));
    assert_eq!(f.pool.free_count(127), Some(1));
    assert_eq!(f.pool.free_count(130), Some(126));
    assert_eq!(f.pool.free_count(256), None);
    assert_eq!(f.pool.end().as_u64(), POOL_BASE + 256 * 2048);
    f.check();
}

#[test]
fn init_rejects_bad_configuration() {
    let mem = || {
        // SAFETY: the map is never used for a copy: every construction below fails before
        // zeroing.
        unsafe {
            LinearMap::new(
                core::ptr::NonNull::<u8>::dangling().as_ptr(),
                PhysAddr::new(0),
                0,
            )
        }
    };
    let st = || (0..256).map(|_| Slot::new()).collect::<Vec<_>>();
    let start = PhysAddr::new(POOL_BASE);
    // SAFETY: every call below fails validation before touching memory.
    unsafe {
        assert_eq!(
            Pool::new(mem(), start, 0, 1, st()).unwrap_err(),
            Error::InvalidSlotCount { nslabs: 0 }
        );
        assert_eq!(
            Pool::new(mem(), start, 100, 1, st()).unwrap_err(),
            Error::InvalidSlotCount { nslabs: 100 }
        );
        assert_eq!(
            Pool::new(mem(), PhysAddr::new(u64::MAX - 4095), 128, 1, st()).unwrap_err(),
            Error::InvalidSlotCount { nslabs: 128 }
        );
        assert_eq!(
            Pool::new(mem(), PhysAddr::new(POOL_BASE + 1024), 128, 1, st()).unwrap_err(),
            Error::MisalignedStart {
                start: PhysAddr::new(POOL_BASE + 1024)
            }
        );
        assert_eq!(
            Pool::new(mem(), start, 128, 3, st()).unwrap_err(),
            Error::InvalidAreaCount {
                nareas: 3,
                max: MAX_AREAS
            }
        );
        assert_eq!(
            Pool::new(mem(), start, 128, 0, st()).unwrap_err(),
            Error::InvalidAreaCount {
                nareas: 0,
                max: MAX_AREAS
            }
        );
        assert_eq!(
            Pool::new(mem(), start, 128, 128, st()).unwrap_err(),
            Error::InvalidAreaCount {
                nareas: 128,
                max: MAX_AREAS
            }
        );
        assert_eq!(
            Pool::new(mem(), start, 384, 1, st()).unwrap_err(),
            Error::StorageTooSmall {
                have: 256,
                need: 384
            }
        );
    }
}

#[test]
fn areas_are_power_of_two_whole_segments_limited_like_linux() {
    assert_eq!(limit_nareas(4, 256), 2);
    assert_eq!(limit_nareas(2, 384), 1);
    assert_eq!(limit_nareas(4, 512), 4);
    assert_eq!(limit_nareas(8, 128 * 12), 4);
    assert_eq!(limit_nareas(1, 128), 1);
    let f = Fixture::new(256, 4);
    assert_eq!(f.pool.nareas(), 2);
}

#[test]
fn area_chosen_from_cpu_hint_with_fall_through() {
    let f = Fixture::new(256, 2);
    let d = dev();
    let a = f.map_full(&d, f.orig(0), 100, 0, TD, NONE, 1).unwrap();
    assert!(f.slot_of(a) >= 128, "cpu 1 starts in area 1");
    let b = f.map_full(&d, f.orig(0), 100, 0, TD, NONE, 2).unwrap();
    assert!(f.slot_of(b) < 128, "cpu 2 starts in area 0 (2 & 1)");
    // Fill what is left of area 1 with one-slot maps; the next map from cpu 1 falls through.
    for _ in 0..127 {
        let t = f.map_full(&d, f.orig(0), 100, 0, TD, NONE, 1).unwrap();
        assert!(f.slot_of(t) >= 128);
    }
    let c = f.map_full(&d, f.orig(0), 100, 0, TD, NONE, 1).unwrap();
    assert!(f.slot_of(c) < 128, "area 1 is full, area 0 takes the map");
    f.check();
}

#[test]
fn slots_are_2k_and_no_mapping_crosses_a_segment() {
    let f = Fixture::new(256, 1);
    let d = dev().with_min_align_mask(0x1);
    let a = f.map(&d, f.orig(0), 100 * 2048, TD).unwrap();
    assert_eq!(f.pool.stats().used, 100);
    let b = f.map(&d, f.orig(0), 100 * 2048, TD).unwrap();
    assert_eq!(
        f.slot_of(b) / 128,
        1,
        "28 slots left in segment 0 are too few"
    );
    assert_eq!((f.slot_of(b) + 99) / 128, 1);
    let c = f.map(&d, f.orig(0), 2049, TD).unwrap();
    assert_eq!(f.stats_used(), 202);
    assert_eq!(f.slot_of(c) / 128, (f.slot_of(c) + 1) / 128);
    for (t, n) in [(a, 100 * 2048), (b, 100 * 2048), (c, 2049)] {
        f.pool.unmap(&d, t, n, TD, NONE).unwrap();
    }
    assert_eq!(f.stats_used(), 0);
    assert_eq!(f.pool.free_count(0), Some(128));
    f.check();
}

impl Fixture {
    fn stats_used(&self) -> usize {
        self.pool.stats().used
    }
}

#[test]
fn free_counts_match_linux_worked_example() {
    let f = Fixture::new(128, 1);
    // min_align_mask 1 turns off the page-alignment default, so runs pack from slot 0.
    let d = dev().with_min_align_mask(0x1);
    let a = f.map(&d, f.orig(0), 3 * 2048, TD).unwrap();
    assert_eq!(f.slot_of(a), 0);
    assert_eq!(f.pool.free_count(0), Some(0));
    assert_eq!(f.pool.free_count(3), Some(125));
    f.pool.unmap(&d, a, 3 * 2048, TD, NONE).unwrap();
    assert_eq!(f.pool.free_count(0), Some(128));
    let five = f.map(&d, f.orig(0), 5 * 2048, TD).unwrap();
    let three = f.map(&d, f.orig(0), 3 * 2048, TD).unwrap();
    assert_eq!(f.slot_of(three), 5);
    f.pool.unmap(&d, five, 5 * 2048, TD, NONE).unwrap();
    for i in 0..5 {
        assert_eq!(f.pool.free_count(i), Some(5 - i), "slot {i}");
    }
    assert_eq!(f.pool.free_count(8), Some(120));
    f.check();
}

#[test]
fn metadata_out_of_band_survives_device_scribbling_the_pool() {
    let f = Fixture::new(128, 1);
    let d = dev();
    let data = pattern(1, 3000);
    f.write(f.orig(0), &data);
    let t = f.map(&d, f.orig(0), 3000, BI).unwrap();
    // A hostile device overwrites the whole pool, metadata would be gone if it lived there.
    f.fill(f.pool.start(), 0xff, 128 * IO_TLB_SIZE);
    f.check();
    f.pool.unmap(&d, t, 3000, BI, NONE).unwrap();
    assert_eq!(f.read(f.orig(0), 3000), vec![0xff; 3000]);
    assert_eq!(f.stats_used(), 0);
    f.check();
}

#[test]
fn nvme_min_align_mask_keeps_low_12_bits() {
    let f = Fixture::new(256, 1);
    let d = dev().with_min_align_mask(0xfff);
    let mut maps = Vec::new();
    for (i, low) in [0x0u64, 0x123, 0x7ff, 0x800, 0xabc, 0xfff, 0x1800, 0x1001]
        .into_iter()
        .enumerate()
    {
        let orig = f.orig(0x10000 * i as u64 + low);
        let data = pattern(i as u8, 5000);
        f.write(orig, &data);
        let t = f.map(&d, orig, 5000, TD).unwrap();
        assert_eq!(t.as_u64() & 0xfff, orig.as_u64() & 0xfff, "orig {orig}");
        assert_eq!(f.read(t, 5000), data);
        maps.push(t);
    }
    for t in maps {
        f.pool.unmap(&d, t, 5000, TD, NONE).unwrap();
    }
    f.check();
}

#[test]
fn min_align_offset_of_2k_or_more_uses_pad_slots() {
    let f = Fixture::new(128, 1);
    // dma-iommu style: both masks are the IOVA granule.
    let d = dev().with_min_align_mask(0xfff);
    let orig = f.orig(0x4abc);
    let data = pattern(9, 1000);
    f.write(orig, &data);
    let t = f.map_full(&d, orig, 1000, 0xfff, TD, NONE, 0).unwrap();
    assert_eq!(t.as_u64() & 0xfff, 0xabc);
    let first = t.as_u64() - 0xabc;
    assert_eq!(
        first % 4096,
        0,
        "the allocation starts page aligned at the pad slot"
    );
    assert_eq!(f.stats_used(), 2, "one pad slot and one data slot");
    let pad_slot = f.slot_of(PhysAddr::new(first));
    assert_eq!(f.pool.free_count(pad_slot), Some(0));
    assert_eq!(f.read(t, 1000), data);
    // The pad slot is not a mapping.
    assert_eq!(
        f.pool.unmap(&d, PhysAddr::new(first), 1000, TD, NONE),
        Err(Error::NotMapped {
            addr: PhysAddr::new(first)
        })
    );
    f.pool.unmap(&d, t, 1000, TD, NONE).unwrap();
    assert_eq!(f.pool.free_count(0), Some(128));
    f.check();
}

#[test]
fn alloc_align_mask_aligns_the_allocation() {
    let f = Fixture::new(256, 1);
    let d = dev();
    let _occupy = f.map(&d, f.orig(0), 100, TD).unwrap();
    for mask in [0x3fffu64, 0xffff, 0x1_ffff] {
        let t = f
            .map_full(&d, f.orig(0x10), 100, mask, TD, NONE, 0)
            .unwrap();
        assert_eq!(t.as_u64() & mask, 0, "mask {mask:#x}");
    }
    f.check();
}

#[test]
fn a_map_tries_the_run_freed_last_first_and_only_where_linux_could_place_it() {
    let d = dev();
    let f = Fixture::new(256, 1);
    // Slots 0 to 129 taken: the search now starts in segment 1 (Linux's next fit).
    let t: Vec<_> = (0..130)
        .map(|_| f.map(&d, f.orig(0), 100, TD).unwrap())
        .collect();
    assert!(t.iter().enumerate().all(|(i, &a)| f.slot_of(a) == i));
    // Freed last: slot 1, where the search would not look (it would take slot 130).
    f.pool.unmap(&d, t[1], 100, TD, NONE).unwrap();
    let r = f.map(&d, f.orig(0), 100, TD).unwrap();
    assert_eq!(f.slot_of(r), 1);
    // Freed last: slot 3, with slot 4 free too. A page-aligned page cannot start at an odd
    // slot, so the search places it (at 130).
    f.pool.unmap(&d, t[4], 100, TD, NONE).unwrap();
    f.pool.unmap(&d, t[3], 100, TD, NONE).unwrap();
    let p = f.map(&d, f.orig(0), 4096, TD).unwrap();
    assert_eq!(f.slot_of(p), 130);
    // Without page alignment, two slots from slot 3 would cross the device's 4 KiB
    // boundary: the search places them (at 132).
    let unaligned = dev().with_min_align_mask(0x1);
    let bounded = unaligned.with_seg_boundary_mask(0xfff);
    let q = f.map(&bounded, f.orig(0), 4096, TD).unwrap();
    assert_eq!(f.slot_of(q), 132);
    // Three slots do not fit from slot 3 (slot 5 is taken): the search places them (at 134).
    let w = f.map(&unaligned, f.orig(0), 6000, TD).unwrap();
    assert_eq!(f.slot_of(w), 134);
    // Two slots from slot 3 suit this device: the freed run is taken.
    let v = f.map(&unaligned, f.orig(0), 4096, TD).unwrap();
    assert_eq!(f.slot_of(v), 3);
    f.check();
}

#[test]
fn streaming_maps_of_a_page_or_more_are_page_aligned_unless_a_mask_says_otherwise() {
    let f = Fixture::new(128, 1);
    let d = dev();
    let a = f.map(&d, f.orig(0), 100, TD).unwrap();
    assert_eq!(f.slot_of(a), 0);
    // Without a min_align_mask a page-sized map skips the unaligned slot 1.
    let b = f.map(&d, f.orig(0), 4096, TD).unwrap();
    assert_eq!(b.as_u64() % 4096, 0);
    assert_eq!(f.slot_of(b), 2);
    // Below a page only slot alignment applies.
    let c = f.map(&d, f.orig(0), 2048, TD).unwrap();
    assert_eq!(f.slot_of(c), 1);
    f.pool.unmap(&d, c, 2048, TD, NONE).unwrap();
    f.pool.unmap(&d, b, 4096, TD, NONE).unwrap();
    // The run freed last (slot 1, one slot) is tried first but cannot take a page-aligned
    // page: the search finds slot 2 again.
    let b = f.map(&d, f.orig(0), 4096, TD).unwrap();
    assert_eq!(f.slot_of(b), 2);
    f.check();
    // With a min_align_mask the default does not apply: slots 1 and 2 are taken.
    let f = Fixture::new(128, 1);
    let _a = f.map(&d, f.orig(0), 100, TD).unwrap();
    let d1 = dev().with_min_align_mask(0x1);
    let e = f.map(&d1, f.orig(0), 4096, TD).unwrap();
    assert_eq!(f.slot_of(e), 1);
    f.check();
}

#[test]
fn segment_boundary_mask_is_never_crossed() {
    let f = Fixture::new(128, 1);
    let d = dev()
        .with_seg_boundary_mask(0x1fff)
        .with_min_align_mask(0x1);
    let a = f.map(&d, f.orig(0), 100, TD).unwrap();
    assert_eq!(f.slot_of(a), 0);
    let b = f.map(&d, f.orig(0), 4 * 2048, TD).unwrap();
    assert_eq!(
        f.slot_of(b),
        4,
        "slots 1..=4 would cross the 8 KiB boundary"
    );
    // A run longer than the boundary never fits: too large for this device, not a full
    // pool (Linux would say "swiotlb buffer is full" with the pool nearly idle).
    assert_eq!(
        f.map(&d, f.orig(0), 5 * 2048, TD),
        Err(Error::ExceedsSegment {
            alloc_size: 5 * 2048,
            max: 8192
        })
    );
    assert_eq!(f.pool.stats().fail_too_large, 1);
    assert_eq!(f.pool.stats().fail_full, 0);
    f.check();
}

#[test]
fn map_copies_original_whatever_the_direction_cve_2022_0854() {
    let f = Fixture::new(128, 1);
    let d = dev();
    for (i, (dir, attrs)) in [
        (TD, NONE),
        (FD, NONE),
        (BI, NONE),
        (FD, DmaAttrs::SKIP_CPU_SYNC),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(i as u8, 1500);
        f.write(f.orig(0), &data);
        let t = f.map_full(&d, f.orig(0), 1500, 0, dir, attrs, 0).unwrap();
        assert_eq!(f.read(t, 1500), data, "{dir:?} {attrs:?}");
        f.pool
            .unmap(&d, t, 1500, dir, DmaAttrs::SKIP_CPU_SYNC)
            .unwrap();
    }
}

#[test]
fn partial_from_device_write_leaves_unwritten_bytes_unchanged() {
    let f = Fixture::new(128, 1);
    let d = dev();
    // A previous user leaves a secret in the slots.
    f.write(f.orig(0), &[0x55; 4000]);
    let t = f.map(&d, f.orig(0), 4000, TD).unwrap();
    f.pool.unmap(&d, t, 4000, TD, NONE).unwrap();
    // The next FromDevice map gets the same slots; the device writes only 100 bytes.
    let buf = f.orig(0x8000);
    f.write(buf, &[0x11; 4000]);
    let t2 = f.map(&d, buf, 4000, FD).unwrap();
    assert_eq!(t2, t, "the same slots are reused");
    f.write(t2, &[0xee; 100]);
    f.pool.unmap(&d, t2, 4000, FD, NONE).unwrap();
    let back = f.read(buf, 4000);
    assert_eq!(&back[..100], &[0xee; 100][..]);
    assert_eq!(&back[100..], &[0x11; 3900][..], "no stale bounce data");
}

#[test]
fn unmap_copies_back_for_from_device_and_bidirectional_unless_skip_cpu_sync() {
    let f = Fixture::new(128, 1);
    let d = dev();
    for (dir, attrs, expect_copy) in [
        (TD, NONE, false),
        (FD, NONE, true),
        (BI, NONE, true),
        (FD, DmaAttrs::SKIP_CPU_SYNC, false),
        (BI, DmaAttrs::SKIP_CPU_SYNC, false),
    ] {
        f.write(f.orig(0), &[1; 600]);
        let t = f.map(&d, f.orig(0), 600, dir).unwrap();
        f.write(t, &[2; 600]);
        f.pool.unmap(&d, t, 600, dir, attrs).unwrap();
        let want = if expect_copy { 2 } else { 1 };
        assert_eq!(f.read(f.orig(0), 600), vec![want; 600], "{dir:?} {attrs:?}");
    }
}

#[test]
fn sync_copies_by_direction() {
    let f = Fixture::new(128, 1);
    let d = dev();
    for dir in [TD, FD, BI] {
        f.write(f.orig(0), &[1; 300]);
        let t = f.map(&d, f.orig(0), 300, dir).unwrap();
        // CPU updates the original, then syncs for the device.
        f.write(f.orig(0), &[3; 300]);
        f.pool.sync_for_device(&d, t, 300, dir).unwrap();
        let want = if dir.to_device() { 3 } else { 1 };
        assert_eq!(f.read(t, 300), vec![want; 300], "for_device {dir:?}");
        // The device writes, then the CPU syncs.
        f.write(t, &[4; 300]);
        f.pool.sync_for_cpu(&d, t, 300, dir).unwrap();
        let want = if dir.from_device() { 4 } else { 3 };
        assert_eq!(f.read(f.orig(0), 300), vec![want; 300], "for_cpu {dir:?}");
        f.pool
            .unmap(&d, t, 300, dir, DmaAttrs::SKIP_CPU_SYNC)
            .unwrap();
    }
    assert_eq!(f.pool.stats().syncs, 6);
}

#[test]
fn partial_sync_at_negative_in_slot_offset_copies_the_right_bytes() {
    let f = Fixture::new(128, 1);
    let d = dev().with_min_align_mask(0xfff);
    let orig = f.orig(0x700);
    f.write(orig, &pattern(7, 8192));
    let t = f.map(&d, orig, 8192, FD).unwrap();
    assert_eq!(t.as_u64() & 0x7ff, 0x700);
    // tlb + 0x900 lies in the second slot at in-slot offset 0x100 < 0x700: Linux's
    // negative tlb_offset case.
    let at = PhysAddr::new(t.as_u64() + 0x900);
    f.write(at, &[0xcc; 16]);
    f.pool.sync_for_cpu(&d, at, 16, FD).unwrap();
    let back = f.read(orig, 8192);
    let want = pattern(7, 8192);
    assert_eq!(&back[0x900..0x910], &[0xcc; 16][..]);
    assert_eq!(&back[..0x900], &want[..0x900]);
    assert_eq!(&back[0x910..], &want[0x910..]);
    // And for the device: the CPU changes bytes 0x1000.. and syncs only those.
    f.write(PhysAddr::new(orig.as_u64() + 0x1000), &[0xdd; 32]);
    let at = PhysAddr::new(t.as_u64() + 0x1000);
    f.pool.sync_for_device(&d, at, 32, BI).unwrap();
    assert_eq!(f.read(at, 32), vec![0xdd; 32]);
    assert_eq!(
        f.read(PhysAddr::new(t.as_u64() + 0x1020), 1)[0],
        want[0x1020]
    );
}

#[test]
fn copy_lengths_are_clamped_to_the_mapping_and_counted() {
    let f = Fixture::new(128, 1);
    let d = dev();
    f.write(f.orig(0), &[1; 2000]);
    f.write(f.orig(2000), &[9; 100]); // Guard bytes after the original.
    let t = f.map(&d, f.orig(0), 2000, FD).unwrap();
    f.fill(t, 2, 2048);
    let mid = PhysAddr::new(t.as_u64() + 1000);
    f.pool.sync_for_cpu(&d, mid, 5000, FD).unwrap();
    assert_eq!(f.pool.stats().overflow_attempts, 1);
    assert_eq!(f.read(f.orig(0), 2000)[1000..], [2; 1000][..]);
    assert_eq!(
        f.read(f.orig(2000), 100),
        vec![9; 100],
        "nothing past the mapping"
    );
    f.pool.unmap(&d, t, 4096, FD, NONE).unwrap();
    assert_eq!(f.pool.stats().overflow_attempts, 2);
    assert_eq!(f.read(f.orig(0), 2000), vec![2; 2000]);
    assert_eq!(f.read(f.orig(2000), 100), vec![9; 100]);
}

#[test]
fn max_mapping_size_is_256k_less_rounded_min_align_mask() {
    assert_eq!(max_mapping_size(&dev()), 256 * 1024);
    assert_eq!(
        max_mapping_size(&dev().with_min_align_mask(0xfff)),
        252 * 1024
    );
    assert_eq!(
        max_mapping_size(&dev().with_min_align_mask(0x7ff)),
        254 * 1024
    );
    assert_eq!(
        max_mapping_size(&dev().with_min_align_mask(0x1)),
        254 * 1024
    );
    assert_eq!(max_mapping_size(&dev().with_min_align_mask(u64::MAX)), 0);
    let f = Fixture::new(256, 1);
    let nvme = dev().with_min_align_mask(0xfff);
    // A pool without joins answers Linux's value, per device.
    for d in [dev(), nvme, dev().with_min_align_mask(u64::MAX)] {
        assert_eq!(f.pool.max_mapping_size(&d), max_mapping_size(&d));
    }
    assert_eq!(f.pool.max_run_slots(), IO_TLB_SEGSIZE);
    assert_eq!(
        f.map(&nvme, f.orig(0xfff), 252 * 1024 + 1, TD),
        Err(Error::TooLarge {
            size: 252 * 1024 + 1,
            max: 252 * 1024
        })
    );
    // The largest NVMe map fits with the worst low bits.
    let t = f.map(&nvme, f.orig(0xfff), 252 * 1024, TD).unwrap();
    assert_eq!(t.as_u64() & 0xfff, 0xfff);
    let t2 = f.map(&dev(), f.orig(0), 256 * 1024, TD).unwrap();
    f.pool.unmap(&nvme, t, 252 * 1024, TD, NONE).unwrap();
    f.pool.unmap(&dev(), t2, 256 * 1024, TD, NONE).unwrap();
    f.check();
}

#[test]
fn statistics_count_slots_maps_bytes_and_failures() {
    let f = Fixture::new(128, 1);
    let d = dev();
    let a = f.map(&d, f.orig(0), 5000, BI).unwrap();
    let b = f.map(&d, f.orig(0), 100, TD).unwrap();
    let s = f.pool.stats();
    assert_eq!(
        (s.nslabs, s.nareas, s.used, s.high_water, s.maps),
        (128, 1, 4, 4, 2)
    );
    assert_eq!(s.bytes_bounced, 5100);
    f.pool.unmap(&d, a, 5000, BI, NONE).unwrap();
    let s = f.pool.stats();
    assert_eq!(
        (s.used, s.high_water, s.unmaps, s.bytes_bounced),
        (1, 4, 1, 10_100)
    );
    f.pool.reset_high_water();
    assert_eq!(f.pool.stats().high_water, 1);
    let _ = f.map(&d, f.orig(0), 0, TD);
    let _ = f.map(&d, f.orig(0), 1 << 20, TD);
    let _ = f.pool.unmap(&d, a, 5000, BI, NONE);
    let _ = f.map(&d, f.orig(0), 256 * 1024, TD);
    let s = f.pool.stats();
    assert_eq!(
        (
            s.fail_invalid,
            s.fail_too_large,
            s.fail_not_mapped,
            s.fail_full
        ),
        (1, 1, 1, 1)
    );
    f.pool.unmap(&d, b, 100, TD, NONE).unwrap();
    assert_eq!(f.pool.stats().used, 0);
}

/// Everything observable about the pool's state.
fn snapshot(f: &Fixture) -> (Vec<Option<usize>>, usize, Vec<u8>) {
    let n = f.pool.nslabs();
    (
        (0..n).map(|i| f.pool.free_count(i)).collect(),
        f.pool.stats().used,
        f.read(f.pool.start(), n * IO_TLB_SIZE),
    )
}

#[test]
fn bad_input_returns_typed_errors_and_leaves_the_pool_unchanged() {
    let f = Fixture::new(256, 2);
    let d = dev();
    f.write(f.orig(0), &pattern(3, 8192));
    let t = f.map(&d, f.orig(0), 8192, BI).unwrap();
    let before = snapshot(&f);
    let inside = PhysAddr::new(t.as_u64() + 2048);
    let outside = PhysAddr::new(POOL_BASE - 1);
    let cases: Vec<(Result<(), Error>, Error)> = vec![
        (f.map(&d, f.orig(0), 0, TD).map(drop), Error::ZeroSize),
        (
            f.map(&d, f.orig(0), 300_000, TD).map(drop),
            Error::TooLarge {
                size: 300_000,
                max: 262_144,
            },
        ),
        (
            f.map(&d, PhysAddr::new(u64::MAX - 10), 100, TD).map(drop),
            Error::AddressOverflow {
                addr: PhysAddr::new(u64::MAX - 10),
                size: 100,
            },
        ),
        (
            f.map_full(&d, f.orig(0), 100, 0x1001, TD, NONE, 0)
                .map(drop),
            Error::InvalidMask {
                what: "alloc_align_mask",
                mask: 0x1001,
            },
        ),
        (
            f.pool.unmap(&d, outside, 10, BI, NONE),
            Error::NotInPool { addr: outside },
        ),
        (
            f.pool.unmap(&d, f.pool.end(), 10, BI, NONE),
            Error::NotInPool { addr: f.pool.end() },
        ),
        (
            f.pool.unmap(&d, inside, 10, BI, NONE),
            Error::NotMapped { addr: inside },
        ),
        (
            f.pool
                .unmap(&d, PhysAddr::new(t.as_u64() + 1), 10, BI, NONE),
            Error::NotMapped {
                addr: PhysAddr::new(t.as_u64() + 1),
            },
        ),
        (f.pool.unmap(&d, t, 0, BI, NONE), Error::ZeroSize),
        (
            f.pool
                .sync_for_cpu(&d, f.pool.start().checked_add(200 * 2048).unwrap(), 10, BI),
            Error::NotMapped {
                addr: f.pool.start().checked_add(200 * 2048).unwrap(),
            },
        ),
        (
            f.pool.sync_for_device(&d, outside, 10, BI),
            Error::NotInPool { addr: outside },
        ),
        (f.pool.free(&d, t), Error::NotMapped { addr: t }),
    ];
    for (got, want) in cases {
        assert_eq!(got, Err(want));
    }
    // A sync inside the mapping's slots but past its data.
    let d2 = dev().with_min_align_mask(0x7ff);
    let orig = f.orig(0x10_000 + 0x400);
    let t2 = f.map(&d2, orig, 100, TD).unwrap();
    let before2 = snapshot(&f);
    let early = PhysAddr::new(t2.as_u64() - 0x10);
    assert_eq!(
        f.pool.sync_for_device(&d2, early, 4, TD),
        Err(Error::SyncOutOfRange {
            addr: early,
            size: 4,
            start: t2,
            end: PhysAddr::new(t2.as_u64() + 100)
        })
    );
    let late = PhysAddr::new(t2.as_u64() + 100);
    assert!(matches!(
        f.pool.sync_for_cpu(&d2, late, 4, TD),
        Err(Error::SyncOutOfRange { .. })
    ));
    assert_eq!(snapshot(&f), before2);
    f.pool.unmap(&d2, t2, 100, TD, NONE).unwrap();
    // The slots are as before (the pool bytes keep the unmapped data, as in Linux).
    let now = snapshot(&f);
    assert_eq!((now.0, now.1), (before.0, before.1));
    // Double unmap.
    f.pool.unmap(&d, t, 8192, BI, NONE).unwrap();
    let after = snapshot(&f);
    assert_eq!(
        f.pool.unmap(&d, t, 8192, BI, NONE),
        Err(Error::NotMapped { addr: t })
    );
    assert_eq!(
        f.pool.sync_for_cpu(&d, t, 8192, BI),
        Err(Error::NotMapped { addr: t })
    );
    assert_eq!(snapshot(&f), after);
    f.check();
}

#[test]
fn pool_full_reports_size_total_and_used() {
    let f = Fixture::new(128, 1);
    let d = dev();
    let t = f.map(&d, f.orig(0), 200 * 1024, TD).unwrap();
    let before = snapshot(&f);
    assert_eq!(
        f.map(&d, f.orig(0), 100 * 1024, TD),
        Err(Error::PoolFull {
            size: 100 * 1024,
            needed: 50,
            total: 128,
            used: 100,
            free: FreeSpace {
                free: 28,
                largest_run: 28
            },
            cause: FullCause::Exhausted,
        })
    );
    assert_eq!(snapshot(&f), before);
    f.pool.unmap(&d, t, 200 * 1024, TD, NONE).unwrap();
    f.check();
}

#[test]
fn coherent_alloc_is_page_aligned_to_its_order_zeroed_and_freed() {
    let f = Fixture::new(128, 1);
    let d = dev();
    let _occupy = f.map(&d, f.orig(0), 100, TD).unwrap();
    f.fill(f.pool.start().checked_add(2048).unwrap(), 0x77, 64 * 1024);
    let a = f.pool.alloc(&d, 5000, 0).unwrap();
    assert_eq!(
        a.as_u64() % 8192,
        0,
        "5000 bytes is order 1: 8 KiB alignment"
    );
    assert_eq!(f.read(a, 5000), vec![0; 5000]);
    assert_eq!(
        f.pool.unmap(&d, a, 5000, TD, NONE),
        Err(Error::NotMapped { addr: a })
    );
    assert_eq!(
        f.pool.sync_for_cpu(&d, a, 10, FD),
        Err(Error::NotMapped { addr: a })
    );
    f.check();
    f.pool.free(&d, a).unwrap();
    assert_eq!(f.pool.free(&d, a), Err(Error::NotMapped { addr: a }));
    let s = f.pool.stats();
    assert_eq!((s.allocs, s.frees, s.used), (1, 1, 1));
    assert_eq!(f.pool.alloc(&d, 0, 0), Err(Error::ZeroSize));
    f.check();
}

#[test]
fn static_storage_and_send_sync() {
    fn assert_sync<T: Sync + Send>() {}
    assert_sync::<BouncePool<LinearMap, &'static [Slot]>>();
    static SLOTS: [Slot; 128] = [const { Slot::new() }; 128];
    let mut buf = vec![0u8; 128 * IO_TLB_SIZE];
    // SAFETY: `buf` outlives the pool and is not referenced while the pool lives.
    let mem = unsafe { LinearMap::new(buf.as_mut_ptr(), PhysAddr::new(0), buf.len()) };
    // SAFETY: the pool owns the whole buffer.
    let pool = unsafe { BouncePool::new(mem, PhysAddr::new(0), 128, 1, &SLOTS[..]) }.unwrap();
    let d = dev();
    let t = pool.alloc(&d, 100, 0).unwrap();
    pool.free(&d, t).unwrap();
    pool.check_invariants().unwrap();
    drop(pool);
    drop(buf);
}

std::thread_local! {
    /// This thread's stand-in for the CPU's interrupt flag: true while masked.
    static IRQ_MASKED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    /// How often this thread's hook masked.
    static IRQ_SAVES: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
    /// Copies this thread's memory hook made with interrupts masked.
    static MASKED_COPIES: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

fn irq_save() -> usize {
    IRQ_SAVES.with(|s| s.set(s.get() + 1));
    usize::from(IRQ_MASKED.with(|m| m.replace(true)))
}

fn irq_restore(prev: usize) {
    IRQ_MASKED.with(|m| m.set(prev != 0));
}

/// A [`LinearMap`] that counts the copies made while interrupts are masked (under an area
/// lock).
struct WatchedMemory(LinearMap);

// SAFETY: every call is forwarded unchanged to the `LinearMap`.
unsafe impl PhysMemory for WatchedMemory {
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        if IRQ_MASKED.with(core::cell::Cell::get) {
            MASKED_COPIES.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.0.copy(dst, src, len) }
    }

    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.0.fill(dst, byte, len) }
    }
}

/// With an interrupt hook, the area locks mask interrupts, but no copy (map's copy-in, the
/// syncs, unmap's copy-back) runs with them masked: a 256 KiB copy does not hold off
/// interrupts, nor the other CPUs of the area.
#[test]
fn copies_run_outside_the_masked_area_lock() {
    let nslabs = IO_TLB_SEGSIZE;
    let len = nslabs * IO_TLB_SIZE + IO_TLB_SEGMENT_BYTES;
    let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
    // SAFETY: `base..base + len` is one live allocation freed at the end, after the pool;
    // nothing else references it.
    let mem = WatchedMemory(unsafe { LinearMap::new(base, PhysAddr::new(POOL_BASE), len) });
    let storage: Vec<Slot> = (0..nslabs).map(|_| Slot::new()).collect();
    // SAFETY: the pool range is the start of the allocation and is used by the pool alone.
    let mut pool =
        unsafe { BouncePool::new(mem, PhysAddr::new(POOL_BASE), nslabs, 1, storage) }.unwrap();
    assert_eq!(pool.irq_hook().save(), 0, "the default hook masks nothing");
    pool.set_irq_hook(IrqHook::new(irq_save, irq_restore));
    let d = dev();
    let orig = pool.end();
    let size = IO_TLB_SEGMENT_BYTES;
    let saves = IRQ_SAVES.with(core::cell::Cell::get);
    // SAFETY: the original is the rest of the allocation, used by nothing else.
    let tlb = unsafe {
        pool.map(
            &d,
            orig,
            size,
            0,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
            0,
        )
    }
    .unwrap();
    pool.sync_for_cpu(&d, tlb, size, DmaDirection::Bidirectional)
        .unwrap();
    pool.sync_for_device(&d, tlb, size, DmaDirection::Bidirectional)
        .unwrap();
    pool.unmap(
        &d,
        tlb,
        size,
        DmaDirection::Bidirectional,
        DmaAttrs::empty(),
    )
    .unwrap();
    assert!(
        IRQ_SAVES.with(core::cell::Cell::get) >= saves + 4,
        "the area locks did not mask interrupts"
    );
    assert!(
        !IRQ_MASKED.with(core::cell::Cell::get),
        "interrupts left masked"
    );
    assert_eq!(
        MASKED_COPIES.with(core::cell::Cell::get),
        0,
        "a copy ran under the area lock"
    );
    assert_eq!(pool.stats().bytes_bounced, 4 * size as u64);
    pool.check_invariants().unwrap();
    drop(pool);
    // SAFETY: `base` came from `Box::into_raw` of `len` bytes and the pool is gone.
    drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(base, len)) });
}

/// A sync pins its mapping: an unmap that claims it meanwhile waits for the copy, and a sync
/// that comes after the claim fails.
#[test]
fn unmap_waits_for_a_pinned_sync_and_later_syncs_fail() {
    let f = Fixture::new(IO_TLB_SEGSIZE, 1);
    let d = dev();
    let orig = f.orig(0);
    let tlb = f.map(&d, orig, 64, DmaDirection::FromDevice).unwrap();
    let head = f.slot_of(tlb);
    // Stand in for a sync on another CPU that is copying now.
    f.pool.slots().unwrap()[head]
        .busy
        .store(1, Ordering::Relaxed);
    std::thread::scope(|s| {
        let unmapper = s.spawn(|| {
            f.pool
                .unmap(&d, tlb, 64, DmaDirection::ToDevice, DmaAttrs::empty())
        });
        // The unmap claims the mapping, then waits.
        while f.pool.slots().unwrap()[head].state.load(Ordering::Acquire) == state::HEAD {
            std::thread::yield_now();
        }
        assert_eq!(
            f.pool.slots().unwrap()[head].state.load(Ordering::Acquire),
            state::UNMAPPING,
            "the unmap freed a mapping a sync was copying"
        );
        assert_eq!(
            f.pool.sync_for_cpu(&d, tlb, 64, DmaDirection::FromDevice),
            Err(Error::NotMapped { addr: tlb }),
            "a sync pinned a claimed mapping"
        );
        assert_eq!(
            f.pool.stats().used,
            1,
            "the unmap freed slots a sync was copying"
        );
        assert!(!unmapper.is_finished());
        f.pool.slots().unwrap()[head]
            .busy
            .store(0, Ordering::Release);
        unmapper.join().unwrap().unwrap();
    });
    assert_eq!(f.pool.stats().used, 0);
    f.check();
}

#[test]
fn map_rejects_an_original_inside_the_pool() {
    let f = Fixture::new(256, 1);
    let start = f.pool.start();
    let cases = [
        (PhysAddr::new(start.as_u64() + 0x800), 64),
        // Overlapping the first byte from below, and the last from inside.
        (PhysAddr::new(start.as_u64() - 16), 64),
        (PhysAddr::new(f.pool.end().as_u64() - 1), 2),
    ];
    for (orig, size) in cases {
        assert_eq!(
            f.map(&dev(), orig, size, DmaDirection::ToDevice),
            Err(Error::OriginalInPool { addr: orig, size }),
            "{orig}"
        );
    }
    assert_eq!(f.pool.stats().used, 0);
    // Right after the pool is fine.
    let tlb = f
        .map(&dev(), f.pool.end(), 64, DmaDirection::ToDevice)
        .unwrap();
    f.pool
        .unmap(&dev(), tlb, 64, DmaDirection::ToDevice, DmaAttrs::empty())
        .unwrap();
}

/// Storage whose `as_ref` returns fewer slots once `shrunk` is set (a broken `AsRef`).
struct Shrinking {
    slots: Vec<Slot>,
    shrunk: core::sync::atomic::AtomicBool,
}

impl AsRef<[Slot]> for Shrinking {
    fn as_ref(&self) -> &[Slot] {
        if self.shrunk.load(Ordering::Relaxed) {
            &self.slots[..128]
        } else {
            &self.slots
        }
    }
}

#[test]
fn a_storage_that_shrinks_later_fails_every_operation_without_panicking() {
    let f = Fixture::new(256, 1);
    let storage = Shrinking {
        slots: (0..256).map(|_| Slot::new()).collect(),
        shrunk: core::sync::atomic::AtomicBool::new(false),
    };
    // SAFETY: the fixture's allocation, alive until `f` drops; its pool range is used by
    // this pool alone from here on (the fixture's own pool is not used).
    let mem = unsafe { LinearMap::new(f.base, PhysAddr::new(POOL_BASE), f.len) };
    // SAFETY: as above.
    let pool = unsafe { BouncePool::new(mem, f.pool.start(), 256, 1, storage) }.unwrap();
    let orig = f.orig(0);
    // SAFETY: the original is the fixture's, unreferenced.
    let tlb = unsafe {
        pool.map(
            &dev(),
            orig,
            64,
            0,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
            0,
        )
    }
    .unwrap();
    pool.storage.shrunk.store(true, Ordering::Relaxed);
    let too_small = Error::StorageTooSmall {
        have: 128,
        need: 256,
    };
    // SAFETY: as above.
    let r = unsafe {
        pool.map(
            &dev(),
            orig,
            64,
            0,
            DmaDirection::ToDevice,
            DmaAttrs::empty(),
            0,
        )
    };
    assert_eq!(r, Err(too_small));
    let none = DmaAttrs::empty();
    assert_eq!(
        pool.unmap(&dev(), tlb, 64, DmaDirection::ToDevice, none),
        Err(too_small)
    );
    assert_eq!(
        pool.sync_for_cpu(&dev(), tlb, 64, DmaDirection::FromDevice),
        Err(too_small)
    );
    assert_eq!(pool.alloc(&dev(), 4096, 0), Err(too_small));
    assert_eq!(pool.free(&dev(), tlb), Err(too_small));
    assert_eq!(pool.free_count(0), None);
    assert!(pool.check_invariants().is_err());
    // Restored, the mapping is still there.
    pool.storage.shrunk.store(false, Ordering::Relaxed);
    pool.unmap(&dev(), tlb, 64, DmaDirection::ToDevice, none)
        .unwrap();
    pool.check_invariants().unwrap();
}

#[test]
fn ownership_tokens_unmap_and_free_once_and_only_in_their_pool() {
    let a = Fixture::new(256, 1);
    let b = Fixture::new(256, 1);
    let none = DmaAttrs::empty();
    let orig = a.orig(0);
    a.write(orig, &pattern(3, 64));
    // SAFETY: the original is the fixture's, unreferenced.
    let m = unsafe {
        a.pool
            .map_owned(&dev(), orig, 64, 0, DmaDirection::Bidirectional, none, 0)
    }
    .unwrap();
    assert_eq!(m.size(), 64);
    assert_eq!(a.read(m.addr(), 64), pattern(3, 64));
    // The same slot of pool b, mapped by another owner.
    let orig_b = b.orig(0);
    // SAFETY: as above.
    let mb = unsafe {
        b.pool
            .map_owned(&dev(), orig_b, 64, 0, DmaDirection::ToDevice, none, 0)
    }
    .unwrap();
    // a's token given to b is refused, and b's mapping is intact.
    let (m, e) = b
        .pool
        .unmap_owned(&dev(), m, DmaDirection::Bidirectional, none)
        .unwrap_err();
    assert_eq!(e, Error::NotMapped { addr: m.addr() });
    assert_eq!(b.pool.stats().used, 1);
    a.pool
        .unmap_owned(&dev(), m, DmaDirection::Bidirectional, none)
        .unwrap();
    b.pool
        .unmap_owned(&dev(), mb, DmaDirection::ToDevice, none)
        .unwrap();
    // The token is gone: a second unmap cannot be written. Allocations alike.
    let c = a.pool.alloc_owned(&dev(), 4096, 0).unwrap();
    let (c, e) = b.pool.free_owned(&dev(), c).unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }));
    a.pool.free_owned(&dev(), c).unwrap();
    assert_eq!((a.pool.stats().used, b.pool.stats().used), (0, 0));
}

#[test]
fn areas_and_their_counters_share_no_cache_line_pair() {
    // Two areas on two CPUs must not write the same 128-byte pair of lines.
    assert_eq!(core::mem::align_of::<area::Area>(), 128);
    assert_eq!(core::mem::size_of::<area::Area>() % 128, 0);
    // Every segment's free bitmap lies in the metadata of its own area (so a CPU updating
    // its area's bitmaps never writes a line holding another area's slots).
    let f = Fixture::new(8 * IO_TLB_SEGSIZE, 4);
    let area_nslabs = f.pool.nslabs() / f.pool.nareas();
    let area_segs = area_nslabs / IO_TLB_SEGSIZE;
    for seg in 0..f.pool.nslabs() / IO_TLB_SEGSIZE {
        let w = search::bitmap_slot(seg, area_segs);
        let area_of_seg = seg * IO_TLB_SEGSIZE / area_nslabs;
        assert_eq!(w / area_nslabs, area_of_seg, "segment {seg}");
        assert_eq!((w + 1) / area_nslabs, area_of_seg, "segment {seg}");
    }
    // Each area's bitmaps are adjacent: one cache line (two slots' words) per segment.
    assert_eq!(search::bitmap_slot(5, 2), 4 * IO_TLB_SEGSIZE + 2);
    f.check();
}

#[test]
fn statistics_are_summed_over_the_areas() {
    let f = Fixture::new(4 * IO_TLB_SEGSIZE, 2);
    let d = dev();
    let a = f
        .map_full(&d, f.orig(0), 100, 0, TD, DmaAttrs::empty(), 0)
        .unwrap();
    let b = f
        .map_full(&d, f.orig(0), 5000, 0, BI, DmaAttrs::empty(), 1)
        .unwrap();
    assert_ne!(
        f.pool.area_of(f.pool.slot_index(a).unwrap()),
        f.pool.area_of(f.pool.slot_index(b).unwrap())
    );
    let c = f.pool.alloc(&d, 4096, 1).unwrap();
    let _ = f.map_full(&d, f.orig(0), 0, 0, TD, DmaAttrs::empty(), 1);
    let _ = f.pool.unmap(&d, PhysAddr::new(1), 1, TD, NONE);
    let s = f.pool.stats();
    assert_eq!(
        (s.used, s.high_water, s.high_water_bound, s.maps, s.allocs),
        (1 + 3 + 2, 6, 6, 2, 1)
    );
    assert_eq!((s.fail_invalid, s.fail_not_mapped), (1, 1));
    f.pool.unmap(&d, a, 100, TD, NONE).unwrap();
    f.pool.unmap(&d, b, 5000, BI, NONE).unwrap();
    f.pool.free(&d, c).unwrap();
    let s = f.pool.stats();
    assert_eq!((s.used, s.high_water, s.unmaps, s.frees), (0, 6, 2, 1));
    assert_eq!(s.bytes_bounced, 100 + 2 * 5000);
    f.check();
}

#[test]
fn high_water_with_several_areas_lies_between_its_documented_bounds() {
    // The semantics `Stats::high_water` documents: exact while the peaks are new per-area
    // maxima, a lower bound (with `high_water_bound` above the true peak) when the pool
    // peaks while every area is at or below its own earlier maximum.
    let f = Fixture::new(4 * IO_TLB_SEGSIZE, 2);
    let d = dev();
    let on = |cpu| {
        f.map_full(&d, f.orig(0), 100, 0, TD, DmaAttrs::empty(), cpu)
            .unwrap()
    };
    let a: Vec<_> = (0..4).map(|_| on(0)).collect();
    f.pool.unmap(&d, a[0], 100, TD, NONE).unwrap();
    f.pool.unmap(&d, a[1], 100, TD, NONE).unwrap();
    let b: Vec<_> = (0..4).map(|_| on(1)).collect();
    let s = f.pool.stats();
    assert_eq!((s.used, s.high_water, s.high_water_bound), (6, 6, 8));
    // Area 0 goes back to its maximum of 4: the pool holds 8, its true peak.
    let a2: Vec<_> = (0..2).map(|_| on(0)).collect();
    assert_eq!(f.pool.stats().high_water, 8);
    for t in a2.iter().chain(&a[2..]).chain(&b) {
        f.pool.unmap(&d, *t, 100, TD, NONE).unwrap();
    }
    let s = f.pool.stats();
    // The peak of 8 was seen only by the snapshot while it lasted; the mark kept 6.
    assert_eq!((s.used, s.high_water, s.high_water_bound), (0, 6, 8));
    f.pool.reset_high_water();
    let s = f.pool.stats();
    assert_eq!((s.high_water, s.high_water_bound), (0, 0));
    f.check();
}

/// The `PoolFull` fields other than the size and the cause.
fn full_parts(e: Result<PhysAddr, Error>) -> (usize, usize, usize, FreeSpace, FullCause) {
    match e {
        Err(Error::PoolFull {
            size,
            needed,
            used,
            free,
            cause,
            ..
        }) => (size, needed, used, free, cause),
        other => panic!("expected PoolFull, got {other:?}"),
    }
}

#[test]
fn pool_full_size_is_linuxs_allocation_size_with_the_kept_offset() {
    // Linux prints `ALIGN(mapping_size + offset, alloc_align_mask + 1)`, offset being
    // `orig & min_align_mask & (alloc_align_mask | 0x7ff)`.
    let f = Fixture::new(128, 1);
    let d = dev();
    let all = f.map(&d, f.orig(0), 256 * 1024, TD).unwrap();
    let nvme = dev().with_min_align_mask(0xfff);
    // 0x10 kept in the slot (bit 11 is kept by the slot's parity): 1000 + 0x10 bytes.
    let r = f.map(&nvme, f.orig(0x810), 1000, TD);
    assert_eq!(
        full_parts(r),
        (
            1000 + 0x10,
            1,
            128,
            FreeSpace::default(),
            FullCause::Exhausted
        )
    );
    // With a 4 KiB alloc_align_mask all of 0x810 is kept (a pad slot), and the sum is
    // rounded up: ALIGN(1000 + 0x810, 4096), pad slot included in the two needed.
    let r = f.map_full(&nvme, f.orig(0x810), 1000, 0xfff, TD, NONE, 0);
    let (size, needed, ..) = full_parts(r);
    assert_eq!((size, needed), (4096, 2));
    // ALIGN(5000 + 0x10, 2048).
    let r = f.map_full(&nvme, f.orig(0x810), 5000, 0x7ff, TD, NONE, 0);
    assert_eq!(full_parts(r).0, 6144);
    // Without a mask nothing is kept: the request itself.
    assert_eq!(full_parts(f.map(&d, f.orig(0x810), 1000, TD)).0, 1000);
    // A coherent allocation: the size rounded up to its power-of-two page alignment.
    match f.pool.alloc(&d, 5000, 0) {
        Err(Error::PoolFull { size, needed, .. }) => assert_eq!((size, needed), (8192, 4)),
        other => panic!("expected PoolFull, got {other:?}"),
    }
    assert_eq!(f.pool.stats().fail_full, 5);
    f.pool.unmap(&d, all, 256 * 1024, TD, NONE).unwrap();
    f.check();
}

#[test]
fn exhausted_and_fragmented_pools_are_told_apart() {
    let f = Fixture::new(128, 1);
    let d = dev();
    let singles: Vec<PhysAddr> = (0..128)
        .map(|_| f.map(&d, f.orig(0), 2048, TD).unwrap())
        .collect();
    // Every second slot free: 64 free slots, none next to another.
    for t in singles.iter().skip(1).step_by(2) {
        f.pool.unmap(&d, *t, 2048, TD, NONE).unwrap();
    }
    let frag = FreeSpace {
        free: 64,
        largest_run: 1,
    };
    assert_eq!(frag.fragmentation_permille(), 984);
    assert_eq!(
        f.map(&d, f.orig(0), 4096, TD),
        Err(Error::PoolFull {
            size: 4096,
            needed: 2,
            total: 128,
            used: 64,
            free: frag,
            cause: FullCause::Fragmented,
        })
    );
    // Filled up again, the same request finds the pool exhausted.
    let refill: Vec<PhysAddr> = (0..64)
        .map(|_| f.map(&d, f.orig(0), 2048, TD).unwrap())
        .collect();
    assert_eq!(
        full_parts(f.map(&d, f.orig(0), 4096, TD)),
        (4096, 2, 128, FreeSpace::default(), FullCause::Exhausted)
    );
    for t in singles.iter().step_by(2).chain(&refill) {
        f.pool.unmap(&d, *t, 2048, TD, NONE).unwrap();
    }
    // Free pairs at odd slots: runs of two, but a 4 KiB map must start on an even slot
    // (page alignment). Fragmented although the longest run is as long as the request.
    // In slot order: the maps reuse freed slots first, so their order is not the slots'.
    let mut singles: Vec<PhysAddr> = (0..128)
        .map(|_| f.map(&d, f.orig(0), 2048, TD).unwrap())
        .collect();
    singles.sort();
    for (i, t) in singles.iter().enumerate() {
        if i % 4 == 1 || i % 4 == 2 {
            f.pool.unmap(&d, *t, 2048, TD, NONE).unwrap();
        }
    }
    assert_eq!(
        full_parts(f.map(&d, f.orig(0), 4096, TD)),
        (
            4096,
            2,
            64,
            FreeSpace {
                free: 64,
                largest_run: 2
            },
            FullCause::Fragmented
        )
    );
    assert_eq!(f.pool.stats().fail_full, 3);
    f.check();
}

#[test]
fn free_space_split_between_areas_is_fragmented() {
    // Two areas of one segment, each with a free run of 60 slots: 120 free in all, but a
    // 100-slot request fits in neither.
    let f = Fixture::new(256, 2);
    let d = dev();
    let a = f
        .map_full(&d, f.orig(0), 68 * 2048, 0, TD, NONE, 0)
        .unwrap();
    let b = f
        .map_full(&d, f.orig(0), 68 * 2048, 0, TD, NONE, 1)
        .unwrap();
    assert_eq!((f.slot_of(a), f.slot_of(b)), (0, 128));
    let r = f.map_full(&d, f.orig(0), 100 * 2048, 0, TD, NONE, 0);
    assert_eq!(
        full_parts(r),
        (
            100 * 2048,
            100,
            136,
            FreeSpace {
                free: 120,
                largest_run: 60
            },
            FullCause::Fragmented
        )
    );
    assert_eq!(
        f.pool.free_space(),
        Some(FreeSpace {
            free: 120,
            largest_run: 60
        })
    );
    f.check();
}

#[test]
fn report_gives_each_areas_use_high_water_and_longest_free_run() {
    // Two areas of two segments (256 slots each).
    let f = Fixture::new(512, 2);
    let d = dev();
    let map = |size: usize, cpu: usize| f.map_full(&d, f.orig(0), size, 0, TD, NONE, cpu);
    // Area 0: A at 0..100, B at 100, C at 128..178 (27 free slots in segment 0 are too
    // few for it), then A unmapped: free runs of 100, 27 and 78.
    let a = map(200 * 1024, 0).unwrap();
    let b = map(2048, 0).unwrap();
    let c = map(100 * 1024, 0).unwrap();
    assert_eq!((f.slot_of(a), f.slot_of(b), f.slot_of(c)), (0, 100, 128));
    f.pool.unmap(&d, a, 200 * 1024, TD, NONE).unwrap();
    // Area 1: 256 KiB at 256..384 and 200 KiB at 384..484.
    let d1 = map(256 * 1024, 1).unwrap();
    let d2 = map(200 * 1024, 1).unwrap();
    assert_eq!((f.slot_of(d1), f.slot_of(d2)), (256, 384));
    // 256 KiB needs a whole free segment: 233 free slots, none of them one.
    let full = map(256 * 1024, 0).unwrap_err();
    assert_eq!(
        std::format!("{full}"),
        "swiotlb buffer is full (sz: 262144 bytes), total 512 (slots), used 279 (slots): \
         fragmented, 128 slots needed, free 233 (slots), largest free run 100 (slots, \
         204800 bytes), fragmentation 0.218"
    );
    assert!(matches!(map(300 * 1024, 0), Err(Error::TooLarge { .. })));

    let r = f.pool.report().unwrap();
    let area0 = AreaReport {
        used: 51,
        high_water: 151,
        free: FreeSpace {
            free: 205,
            largest_run: 100,
        },
    };
    let area1 = AreaReport {
        used: 228,
        high_water: 228,
        free: FreeSpace {
            free: 28,
            largest_run: 28,
        },
    };
    assert_eq!(r.areas(), &[area0, area1]);
    assert_eq!(f.pool.area_report(0), Some(area0));
    assert_eq!(f.pool.area_report(2), None);
    assert_eq!((r.nslabs, r.area_nslabs, r.used), (512, 256, 279));
    // The pool-wide mark was last raised when area 1 passed its own maximum, to
    // 51 + 228; the bound sums the areas' maxima.
    assert_eq!((r.high_water, r.high_water_bound), (279, 379));
    assert_eq!(
        r.free,
        FreeSpace {
            free: 233,
            largest_run: 100
        }
    );
    assert_eq!((r.fail_full, r.fail_too_large), (1, 1));
    let text = std::format!("{r}");
    std::println!("{text}");
    assert_eq!(
        text,
        "swiotlb pool 0x40000000-0x40100000: total 512 (slots) in 2 areas, used 279 (slots), \
         high-water 279 (slots, at most 379), free 233 (slots), largest free run 100 (slots, \
         204800 bytes), fragmentation 0.218; failed: 1 full, 1 too large\n  \
         area 0: total 256 (slots), used 51 (slots), high-water 151 (slots), free 205 \
         (slots), largest free run 100 (slots, 204800 bytes), fragmentation 0.218\n  \
         area 1: total 256 (slots), used 228 (slots), high-water 228 (slots), free 28 \
         (slots), largest free run 28 (slots, 57344 bytes), fragmentation 0.000"
    );
    for t in [b, c] {
        f.pool.unmap(&d, t, 2048, TD, NONE).unwrap();
    }
    for t in [d1, d2] {
        f.pool.unmap(&d, t, 2048, TD, NONE).unwrap();
    }
    f.check();
    let idle = f.pool.report().unwrap();
    assert_eq!(idle.free.largest_run, IO_TLB_SEGSIZE);
    assert_eq!(idle.free.fragmentation_permille(), 0);
}

/// A pool of `segs` segments in `nareas` areas, with `orig` bytes of originals, whose
/// segments are joined where `joined` says.
fn joined_fixture(
    segs: usize,
    nareas: usize,
    orig: usize,
    joined: impl Fn(usize) -> bool,
) -> Fixture {
    let mut f = Fixture::with_orig(segs * IO_TLB_SEGSIZE, nareas, orig);
    f.pool.set_segment_joins(joined).unwrap();
    f
}

const MIB: usize = 1 << 20;

#[test]
#[cfg_attr(
    miri,
    ignore = "megabytes of copies; the cross-segment paths run under Miri in small_maps_cross_a_join_only_when_no_segment_has_room"
)]
fn a_2mib_map_spans_joined_segments_with_copy_back_and_syncs() {
    // Without joins (Linux): too large, with Linux's maximum.
    let plain = Fixture::with_orig(16 * IO_TLB_SEGSIZE, 1, 2 * MIB + 8192);
    assert_eq!(
        plain.map(&dev(), plain.orig(0), 2 * MIB, BI),
        Err(Error::TooLarge {
            size: 2 * MIB,
            max: 256 * 1024
        })
    );
    // A 4 MiB pool, one area, every segment joined to the next.
    let f = joined_fixture(16, 1, 2 * MIB + 8192, |_| true);
    assert_eq!(f.pool.max_run_slots(), 16 * IO_TLB_SEGSIZE);
    assert_eq!(f.pool.max_mapping_size(&dev()), 4 * MIB);
    let nvme = dev().with_min_align_mask(0xfff);
    assert_eq!(f.pool.max_mapping_size(&nvme), 4 * MIB - 4096);
    assert_eq!(
        f.pool.free_space(),
        Some(FreeSpace {
            free: 2048,
            largest_run: 2048
        })
    );
    // Start the search past the first segment, so the run begins inside one.
    let small = f.map(&dev(), f.orig(0), 3000, TD).unwrap();
    let data = pattern(7, 2 * MIB);
    let orig = f.orig(4096);
    f.write(orig, &data);
    let tlb = f.map(&dev(), orig, 2 * MIB, BI).unwrap();
    // Page aligned (a map of 4 KiB or more), 1024 slots crossing eight segment boundaries.
    assert_eq!(tlb.as_u64() % PAGE_SIZE, 0);
    let first = f.slot_of(tlb);
    assert_eq!(first, 2, "right after the small map, in the same segment");
    assert_eq!(f.pool.stats().used, 2 + 1024);
    assert_eq!(f.read(tlb, 2 * MIB), data);
    f.check();
    // The device writes across a segment boundary; a partial sync there copies it back.
    let boundary = PhysAddr::new(POOL_BASE + IO_TLB_SEGMENT_BYTES as u64);
    f.write(PhysAddr::new(boundary.as_u64() - 100), &[0xab; 200]);
    f.pool
        .sync_for_cpu(&dev(), PhysAddr::new(boundary.as_u64() - 100), 200, BI)
        .unwrap();
    let at = (boundary.as_u64() - 100 - tlb.as_u64()) as usize;
    assert_eq!(
        f.read(PhysAddr::new(orig.as_u64() + at as u64), 200),
        vec![0xab; 200]
    );
    // The CPU writes near the end; a sync for the device copies it into the last segment.
    let end_off = 2 * MIB - 50;
    f.write(PhysAddr::new(orig.as_u64() + end_off as u64), &[0xcd; 50]);
    f.pool
        .sync_for_device(&dev(), PhysAddr::new(tlb.as_u64() + end_off as u64), 50, BI)
        .unwrap();
    assert_eq!(
        f.read(PhysAddr::new(tlb.as_u64() + end_off as u64), 50),
        vec![0xcd; 50]
    );
    // A sync past the end is clamped to the mapping.
    f.pool
        .sync_for_device(
            &dev(),
            PhysAddr::new(tlb.as_u64() + end_off as u64),
            4096,
            BI,
        )
        .unwrap();
    assert_eq!(f.pool.stats().overflow_attempts, 1);
    // The device fills the whole mapping; the unmap copies every byte back.
    let reply = pattern(9, 2 * MIB);
    f.write(tlb, &reply);
    f.pool.unmap(&dev(), tlb, 2 * MIB, BI, NONE).unwrap();
    assert_eq!(f.read(orig, 2 * MIB), reply);
    assert_eq!(f.pool.stats().used, 2);
    f.check();
    f.pool.unmap(&dev(), small, 3000, TD, NONE).unwrap();
    // Twice 2 MiB fill the pool; a third is exhausted, with the joined runs counted.
    let a = f.map(&dev(), orig, 2 * MIB, TD).unwrap();
    let b = f.map(&dev(), orig, 2 * MIB, TD).unwrap();
    assert_ne!(a, b);
    f.check();
    let (_, needed, _, free, cause) = full_parts(f.map(&dev(), orig, 2 * MIB, TD));
    assert_eq!((needed, free.free, cause), (1024, 0, FullCause::Exhausted));
    f.pool.unmap(&dev(), a, 2 * MIB, TD, NONE).unwrap();
    f.pool.unmap(&dev(), b, 2 * MIB, TD, NONE).unwrap();
    f.check();
    // A coherent allocation of 2 MiB: aligned to 2 MiB, zeroed.
    let c = f.pool.alloc(&dev(), 2 * MIB, 0).unwrap();
    assert_eq!(c.as_u64() % (2 * MIB as u64), 0);
    assert_eq!(f.read(c, 2 * MIB), vec![0; 2 * MIB]);
    f.check();
    f.pool.free(&dev(), c).unwrap();
    assert_eq!(
        f.pool.alloc(&dev(), 4 * MIB + 1, 0),
        Err(Error::ExceedsSegment {
            alloc_size: 4 * MIB as u64 + 1,
            max: 4 * MIB as u64
        })
    );
    f.check();
    assert_eq!(f.pool.stats().used, 0);
}

#[test]
#[cfg_attr(
    miri,
    ignore = "megabytes of copies; the cross-segment paths run under Miri in small_maps_cross_a_join_only_when_no_segment_has_room"
)]
fn joined_runs_stop_at_unjoined_segments_and_at_areas() {
    // 16 segments in two areas of eight; segment 3 is not joined to 4, and the join asked
    // for between 7 and 8 (the areas' boundary) is not made.
    let f = joined_fixture(16, 2, 2 * MIB + 8192, |s| s != 3);
    assert!(!f.pool.segment_joined(3) && !f.pool.segment_joined(7) && !f.pool.segment_joined(15));
    assert!(f.pool.segment_joined(0) && f.pool.segment_joined(8) && f.pool.segment_joined(14));
    assert_eq!(f.pool.max_run_slots(), 8 * IO_TLB_SEGSIZE);
    assert_eq!(f.pool.max_mapping_size(&dev()), 2 * MIB);
    // 1.5 MiB does not fit in area 0's runs of four segments: it goes to area 1.
    let big = f
        .map_full(&dev(), f.orig(0), 3 * MIB / 2, 0, TD, NONE, 0)
        .unwrap();
    assert!(f.slot_of(big) >= 8 * IO_TLB_SEGSIZE, "{big}");
    // 1 MiB fits in area 0, inside segments 0-3 or 4-7.
    let mid = f.map_full(&dev(), f.orig(0), MIB, 0, TD, NONE, 0).unwrap();
    let s = f.slot_of(mid);
    assert!(s == 0 || s == 4 * IO_TLB_SEGSIZE, "{mid}");
    f.check();
    // One byte more than the longest run is too large, with the pool's maximum.
    assert_eq!(
        f.map(&dev(), f.orig(0), 2 * MIB + 1, TD),
        Err(Error::TooLarge {
            size: 2 * MIB + 1,
            max: 2 * MIB
        })
    );
    // An alignment that doubles the allocation past the longest run.
    assert_eq!(
        f.map_full(
            &dev(),
            f.orig(0),
            MIB + 1,
            (4 * MIB - 1) as u64,
            TD,
            NONE,
            0
        ),
        Err(Error::ExceedsSegment {
            alloc_size: 4 * MIB as u64,
            max: 2 * MIB as u64
        })
    );
    f.pool.unmap(&dev(), big, 3 * MIB / 2, TD, NONE).unwrap();
    f.pool.unmap(&dev(), mid, MIB, TD, NONE).unwrap();
    f.check();
    // The invariant check sees a run across a segment that is not joined.
    let g = f.map_full(&dev(), f.orig(0), MIB, 0, TD, NONE, 0).unwrap();
    let slots = f.pool.slots().unwrap();
    let seg = f.slot_of(g) / IO_TLB_SEGSIZE;
    search::join_flag(slots, 8, seg).store(0, Ordering::Relaxed);
    assert_eq!(
        f.pool.check_invariants().map_err(|e| e.what),
        Err("allocation crosses a segment that is not joined to the next")
    );
    search::join_flag(slots, 8, seg).store(1, Ordering::Relaxed);
    f.check();
}

#[test]
#[cfg_attr(
    miri,
    ignore = "megabytes of copies; the cross-segment paths run under Miri in small_maps_cross_a_join_only_when_no_segment_has_room"
)]
fn a_devices_boundary_cuts_joined_runs() {
    let f = joined_fixture(16, 1, 2 * MIB + 8192, |_| true);
    // A 1 MiB boundary: at most 1 MiB, never across a 1 MiB line.
    let d = dev().with_seg_boundary_mask((MIB - 1) as u64);
    assert_eq!(f.pool.max_mapping_size(&d), MIB);
    assert_eq!(
        f.map(&d, f.orig(0), MIB + 1, TD),
        Err(Error::TooLarge {
            size: MIB + 1,
            max: MIB
        })
    );
    // Four 1 MiB windows take one 600 KiB map each, never across a 1 MiB line.
    let mut windows = Vec::new();
    for _ in 0..4 {
        let t = f.map(&d, f.orig(0), 600 * 1024, TD).unwrap();
        let (a, b) = (t.as_u64(), t.as_u64() + 600 * 1024 - 1);
        assert_eq!(a >> 20, b >> 20, "{t} crosses a 1 MiB boundary");
        windows.push(a >> 20);
    }
    windows.sort_unstable();
    windows.dedup();
    assert_eq!(windows.len(), 4);
    f.check();
    // A fifth finds 848 free slots, in runs of 212 that the boundary keeps apart.
    let (_, needed, _, free, cause) = full_parts(f.map(&d, f.orig(0), 600 * 1024, TD));
    assert_eq!((needed, free.free, free.largest_run), (300, 848, 212));
    assert_eq!(cause, FullCause::Fragmented);
    // 400 KiB still fits beside one of them.
    let t = f.map(&d, f.orig(0), 400 * 1024, TD).unwrap();
    assert_eq!(t.as_u64() >> 20, (t.as_u64() + 400 * 1024 - 1) >> 20);
    f.check();
    // A 64 KiB boundary on a joined pool: maps up to a segment behave as in Linux.
    let d64 = dev().with_seg_boundary_mask(0xffff);
    assert_eq!(f.pool.max_mapping_size(&d64), 64 * 1024);
    assert_eq!(
        f.map(&d64, f.orig(0), 100 * 1024, TD),
        Err(Error::ExceedsSegment {
            alloc_size: 100 * 1024,
            max: 64 * 1024
        })
    );
}

#[test]
fn small_maps_cross_a_join_only_when_no_segment_has_room() {
    for joined in [false, true] {
        let f = joined_fixture(2, 1, MIB, |_| joined);
        let q = 64 * IO_TLB_SIZE;
        let maps: Vec<PhysAddr> = (0..4)
            .map(|_| f.map(&dev(), f.orig(0), q, TD).unwrap())
            .collect();
        assert_eq!(f.slot_of(maps[3]), 192);
        // Free slots 64..192: 64 at the end of segment 0 and 64 at the start of segment 1.
        f.pool.unmap(&dev(), maps[1], q, TD, NONE).unwrap();
        f.pool.unmap(&dev(), maps[2], q, TD, NONE).unwrap();
        let space = f.pool.free_space().unwrap();
        assert_eq!(space.largest_run, if joined { 128 } else { 64 });
        // 100 slots: no segment has them; across the join they fit.
        let r = f.map(&dev(), f.orig(0), 100 * IO_TLB_SIZE, TD);
        if joined {
            assert_eq!(f.slot_of(r.unwrap()), 64);
        } else {
            let (_, needed, _, free, cause) = full_parts(r);
            assert_eq!((needed, free.free, free.largest_run), (100, 128, 64));
            assert_eq!(cause, FullCause::Fragmented);
        }
        // A small map that fits in a segment never crosses a join.
        let s = f.map(&dev(), f.orig(0), 20 * IO_TLB_SIZE, TD).unwrap();
        let slot = f.slot_of(s);
        assert_eq!(slot / 128, (slot + 19) / 128);
        f.check();
    }
}

// Live mappings per device and their age (`ages.rs`).

static AGES_NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn ages_clock() -> u64 {
    AGES_NOW.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_pool_without_a_clock_reports_no_ages_and_too_short_storage_is_refused() {
    let mut f = Fixture::new(256, 1);
    assert_eq!(f.pool.live_mappings(0), None);
    assert_eq!(
        f.pool.set_mapping_clock(ages_clock),
        Err(Error::StorageTooSmall {
            have: 256,
            need: 384
        })
    );
    assert!(f.pool.mapping_clock().is_none());
    let mut f = Fixture::with_storage(256, 1, ORIG_BYTES, slots_with_ages(256) - 1);
    assert!(f.pool.set_mapping_clock(ages_clock).is_err());
    let mut f = Fixture::with_storage(256, 1, ORIG_BYTES, slots_with_ages(256));
    f.pool.set_mapping_clock(ages_clock).unwrap();
    assert_eq!(f.pool.live_mappings(5), Some(LiveReport::new(5)));
}

#[test]
fn live_mappings_are_counted_per_device_with_the_age_of_the_oldest() {
    // Two areas of two segments; each mapping's clock reading is set before it is made
    // (the clock is this test's own static: the other tests never set it).
    let mut f = Fixture::with_storage(512, 2, ORIG_BYTES, slots_with_ages(512));
    f.pool.set_mapping_clock(ages_clock).unwrap();
    let nic = dev().with_tag(7);
    let nvme = dev().with_tag(3).with_min_align_mask(0xfff);
    let at = |t: u64| AGES_NOW.store(t, std::sync::atomic::Ordering::Relaxed);
    // The NIC: single slots 0 and 1 of area 0 (an even and an odd record), then 5000 bytes
    // in area 1.
    at(100);
    let a = f.map_full(&nic, f.orig(0), 1500, 0, TD, NONE, 0).unwrap();
    at(150);
    let b = f
        .map_full(&nic, f.orig(4096), 1500, 0, TD, NONE, 0)
        .unwrap();
    at(200);
    let c = f
        .map_full(&nic, f.orig(8192), 5000, 0, TD, NONE, 1)
        .unwrap();
    assert_eq!((f.slot_of(a), f.slot_of(b), f.slot_of(c)), (0, 1, 256));
    // The NVMe device: a map keeping offset 0x900 (a pad slot in front of its first data
    // slot) and a coherent allocation.
    at(300);
    let d = f
        .map_full(&nvme, f.orig(0x3_0900), 2048, 0, TD, NONE, 0)
        .unwrap();
    at(400);
    let e = f.pool.alloc(&nvme, 8192, 1).unwrap();
    let live = f.pool.live_mappings(1000).unwrap();
    let tags: Vec<u16> = live.devices().iter().map(|x| x.tag).collect();
    assert_eq!(tags, [3, 7]);
    let n = live.device(7).unwrap();
    assert_eq!((n.mappings, n.bytes, n.oldest), (3, 8000, 900));
    let v = live.device(3).unwrap();
    assert_eq!((v.mappings, v.bytes, v.oldest), (2, 2048 + 8192, 700));
    assert_eq!(live.mappings(), 5);
    assert_eq!(
        format!("{live}"),
        "live mappings: 5\n  device 3: 2 mappings, 10240 bytes, oldest 700\n  \
         device 7: 3 mappings, 8000 bytes, oldest 900"
    );
    // A leak (the NIC's first mapping, kept) ages; the rest of a burst comes and goes.
    f.pool.unmap(&nic, b, 1500, TD, NONE).unwrap();
    at(1100);
    let b2 = f
        .map_full(&nic, f.orig(4096), 1500, 0, TD, NONE, 0)
        .unwrap();
    let later = f.pool.live_mappings(2000).unwrap();
    assert_eq!(
        later.device(7).map(|x| (x.mappings, x.oldest)),
        Some((3, 1900))
    );
    // Unmapping the oldest makes the next oldest the device's age; an unmapped device
    // leaves the report.
    f.pool.unmap(&nic, a, 1500, TD, NONE).unwrap();
    f.pool.unmap(&nvme, d, 2048, TD, NONE).unwrap();
    f.pool.free(&nvme, e).unwrap();
    let last = f.pool.live_mappings(2000).unwrap();
    assert_eq!(
        last.device(7).map(|x| (x.mappings, x.oldest)),
        Some((2, 1800))
    );
    assert_eq!(last.device(3), None);
    f.pool.unmap(&nic, b2, 1500, TD, NONE).unwrap();
    f.pool.unmap(&nic, c, 5000, TD, NONE).unwrap();
    assert_eq!(f.pool.live_mappings(2000).unwrap().mappings(), 0);
    f.check();
}

#[test]
fn devices_beyond_the_listed_ones_are_summed_in_other() {
    let mut f = Fixture::with_storage(256, 1, ORIG_BYTES, slots_with_ages(256));
    f.pool.set_mapping_clock(ages_clock).unwrap();
    let n = MAX_REPORTED_DEVICES + 2;
    let mut maps = Vec::new();
    for i in 0..n {
        // CAST: fewer than 20 devices.
        let d = dev().with_tag(100 - i as u16);
        maps.push((d, f.map(&d, f.orig(i as u64 * 4096), 64, TD).unwrap()));
    }
    let live = f.pool.live_mappings(0).unwrap();
    assert_eq!(live.devices().len(), MAX_REPORTED_DEVICES);
    assert_eq!((live.other.mappings, live.other.bytes), (2, 128));
    assert_eq!(live.mappings(), n);
    assert!(format!("{live}").ends_with("other devices: 2 mappings, 128 bytes, oldest 0"));
    for (d, tlb) in maps {
        f.pool.unmap(&d, tlb, 64, TD, NONE).unwrap();
    }
}
