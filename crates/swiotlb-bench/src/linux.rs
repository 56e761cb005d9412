//! Linux's swiotlb slot allocator, ported straightforwardly: the benchmark baseline and the
//! test oracle.
//!
//! This is the non-dynamic allocator of `kernel/dma/swiotlb.c` (Linux v6.10 and later) as
//! `reference/linux-swiotlb-xen.md` §1.5–1.13 describes it, kept deliberately close to the C
//! so that it can serve as an oracle:
//!
//! - the per-slot metadata `orig_addr`, `alloc_size`, `list` (the free count) and `pad_slots`
//!   live in one array outside the bounce memory;
//! - the search of one area (`swiotlb_search_pool_area`) walks slot by slot from the area's
//!   round-robin index, stepping by one over unaligned candidates and by `stride` over
//!   aligned ones that do not fit, wraps to zero (not modulo), checks the segment boundary
//!   on the bus address and accepts a slot whose free count covers the request;
//! - allocation and release rewrite the free counts with the backward walk bounded by the
//!   128-slot segment;
//! - areas each have a [`std::sync::Mutex`] (Linux's spinlock) guarding `used` and `index`;
//!   the first area tried is the current CPU's (here: a small per-thread number) and the
//!   others follow round-robin;
//! - map always copies the original into the bounce buffer, unmap copies back for
//!   `FromDevice`/`Bidirectional` unless `SKIP_CPU_SYNC`, and the bounce copy uses the signed
//!   in-slot offset and clamps to the allocation (§1.13);
//! - the debugfs counters `total_used` and `used_hiwater` are kept as a distribution kernel
//!   (`CONFIG_DEBUG_FS=y`) keeps them.
//!
//! Bus addresses equal physical addresses here (`phys_to_dma_unencrypted` is the identity), so
//! alignment and boundary checks run on the physical address of the pool.
//!
//! Where C relies on undefined or modular behaviour the port is explicit instead: the
//! backward walk stops at index 0, a slot's `alloc_size` is signed (C's `size_t` wraps for the
//! last slot of an unaligned mapping and the later subtraction wraps back), and a bounce whose
//! remaining allocation is negative copies nothing. Bad input is an error, never a `BUG()`.

use core::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::cell::Cell;
use std::sync::{Mutex, MutexGuard, PoisonError};

use swiotlb_core::{Device, DmaAttrs, DmaDirection, PhysAddr, PhysMemory};

/// log2 of the slot size (`IO_TLB_SHIFT`).
pub const IO_TLB_SHIFT: u32 = 11;
/// The slot size in bytes (`IO_TLB_SIZE`).
pub const IO_TLB_SIZE: usize = 1 << IO_TLB_SHIFT;
/// Slots per segment, the longest run one mapping can take (`IO_TLB_SEGSIZE`).
pub const IO_TLB_SEGSIZE: usize = 128;
/// The kernel page size the "page-align mappings of a page or more" rule uses.
pub const PAGE_SIZE: usize = 4096;
/// Marks a free slot's (or a pad slot's) `orig_addr`.
const INVALID_PHYS_ADDR: u64 = u64::MAX;

/// Slots needed for `bytes` bytes (`nr_slots`).
#[inline]
#[must_use]
pub const fn nr_slots(bytes: usize) -> usize {
    bytes.div_ceil(IO_TLB_SIZE)
}

/// The position of slot `i` in its segment (`io_tlb_offset`).
#[inline]
const fn io_tlb_offset(i: usize) -> usize {
    i & (IO_TLB_SEGSIZE - 1)
}

/// The size in slots of the region a mask describes (`get_max_slots`).
#[inline]
const fn get_max_slots(mask: u64) -> u64 {
    (mask >> IO_TLB_SHIFT) + 1
}

/// Whether `nr` slots starting at `index` cross a boundary of `bsize` slots, the pool
/// starting `shift` slots past a boundary (`iommu_is_span_boundary`; `bsize` is a power of
/// two).
#[inline]
const fn span_boundary(index: u64, nr: u64, shift: u64, bsize: u64) -> bool {
    let s = shift.wrapping_add(index) & (bsize - 1);
    s + nr > bsize
}

/// The offset into the bounce allocation that keeps the device's `min_align_mask` bits of
/// `addr` (`swiotlb_align_offset`).
#[inline]
#[must_use]
pub const fn swiotlb_align_offset(dev: &Device, align_mask: u64, addr: u64) -> u64 {
    addr & dev.min_align_mask & (align_mask | (IO_TLB_SIZE as u64 - 1))
}

/// Why the baseline refused an operation. Each variant carries the values involved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinuxError {
    /// The pool geometry breaks Linux's invariants: `nslabs` a non-zero multiple of 128,
    /// `nareas` a power of two, each area a whole number of segments.
    #[error("invalid pool geometry: {nslabs} slots in {nareas} areas")]
    Geometry {
        /// Slots asked for.
        nslabs: usize,
        /// Areas asked for.
        nareas: usize,
    },
    /// The pool region does not fit in the address space.
    #[error("pool at {start} of {nslabs} slots overflows the address space")]
    PoolOverflow {
        /// Start of the pool.
        start: PhysAddr,
        /// Slots asked for.
        nslabs: usize,
    },
    /// A zero-byte mapping (Linux: `BUG_ON(!nslots)`).
    #[error("zero-length mapping of {orig}")]
    ZeroSize {
        /// The original address.
        orig: PhysAddr,
    },
    /// The device's segment boundary mask is not `2^n - 1`.
    #[error("segment boundary mask {mask:#x} is not 2^n - 1")]
    SegBoundary {
        /// The mask.
        mask: u64,
    },
    /// The alignment mask is not `2^n - 1` (zero is allowed).
    #[error("allocation alignment mask {mask:#x} is not 2^n - 1")]
    AlignMask {
        /// The mask.
        mask: u64,
    },
    /// The original range wraps past the end of the address space.
    #[error("original range {orig}+{len:#x} overflows")]
    RangeOverflow {
        /// The original address.
        orig: PhysAddr,
        /// Its length.
        len: usize,
    },
    /// No area has a free run that fits ("swiotlb buffer is full").
    #[error(
        "swiotlb buffer is full (sz: {size} bytes), total {total} (slots), used {used} (slots)"
    )]
    Full {
        /// The allocation size (mapping plus offset, rounded to the alignment).
        size: usize,
        /// Slots in the pool.
        total: usize,
        /// Slots in use.
        used: usize,
    },
    /// The address is not inside the pool.
    #[error("{addr} is not a bounce address of this pool")]
    NotInPool {
        /// The address.
        addr: PhysAddr,
    },
    /// The address is in the pool but its slot is not the start of a live mapping.
    #[error("{addr} is not mapped")]
    NotMapped {
        /// The address.
        addr: PhysAddr,
    },
}

/// One slot's metadata (`struct io_tlb_slot`).
///
/// `list` is written only under the lock of the slot's area; the other fields are written by
/// the owner of the mapping (between map and unmap) as in Linux, which reads them without a
/// lock. Relaxed atomics give that sharing without `unsafe`; on x86-64 and arm64 they compile
/// to plain loads and stores.
#[derive(Debug)]
struct Slot {
    /// Physical address of the original bytes belonging at this slot's start, or
    /// [`INVALID_PHYS_ADDR`].
    orig_addr: AtomicU64,
    /// Bytes from this slot to the end of the allocation, less the in-slot offset. Signed:
    /// it is negative for the last slot of some unaligned mappings (see the module doc).
    alloc_size: AtomicI64,
    /// For a free slot, the free slots from here to the end of its segment; 0 if allocated.
    list: AtomicU16,
    /// On the first real slot of a mapping: the pad slots before it.
    pad_slots: AtomicU16,
}

/// One area's lock-protected state (`struct io_tlb_area` without the lock).
#[derive(Debug, Default)]
struct AreaState {
    /// Slots allocated in the area.
    used: usize,
    /// Next search start, relative to the area.
    index: usize,
}

/// A successful bounce mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxMapping {
    /// The bounce address the caller converts to a bus address (`tlb_addr`).
    pub tlb_addr: PhysAddr,
    /// The first slot of the allocation, pad slots included.
    pub first_slot: usize,
    /// Slots taken, pad slots included.
    pub nslots: usize,
    /// Pad slots before the first slot holding data.
    pub pad_slots: usize,
}

thread_local! {
    /// This thread's stand-in for `raw_smp_processor_id()`.
    static CPU: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Numbers handed to threads by [`current_cpu`].
static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// A small per-thread number standing in for `raw_smp_processor_id()`: threads are numbered
/// in the order they first map, so with one thread per CPU each gets its own area.
#[must_use]
pub fn current_cpu() -> usize {
    CPU.with(|c| match c.get() {
        Some(cpu) => cpu,
        None => {
            let cpu = NEXT_CPU.fetch_add(1, Ordering::Relaxed);
            c.set(Some(cpu));
            cpu
        }
    })
}

/// Linux's static swiotlb pool (`struct io_tlb_pool` with its `io_tlb_mem`), over memory
/// reached through a [`PhysMemory`].
///
/// # Invariants
///
/// - `nslabs` is a non-zero multiple of 128, `nareas` a power of two, and
///   `area_nslabs = nslabs / nareas` a multiple of 128.
/// - `start + nslabs * 2048` does not overflow.
/// - For every slot `i`: `list[i] == 0` iff the slot is allocated; for a free slot,
///   `list[i] == 1 + list[i + 1]` if `i + 1` is in the same segment and free, else 1.
/// - `areas[a].used` is the number of allocated slots in area `a`.
#[derive(Debug)]
pub struct LinuxPool<'m, M: PhysMemory + ?Sized> {
    /// How bounce copies reach memory.
    mem: &'m M,
    /// First byte of the pool.
    start: PhysAddr,
    /// Slots in the pool.
    nslabs: usize,
    /// Slots per area.
    area_nslabs: usize,
    /// Per-area state under its lock.
    areas: Vec<Mutex<AreaState>>,
    /// Per-slot metadata.
    slots: Vec<Slot>,
    /// `total_used` (debugfs counter).
    total_used: AtomicUsize,
    /// `used_hiwater` (debugfs counter).
    used_hiwater: AtomicUsize,
    /// Times a bounce was clamped ("Buffer overflow detected").
    bounce_overflows: AtomicU64,
}

impl<'m, M: PhysMemory + ?Sized> LinuxPool<'m, M> {
    /// Sets up a pool of `nslabs` slots in `nareas` areas at `start`
    /// (`swiotlb_init_io_tlb_pool`) and zeroes the bounce memory.
    ///
    /// # Errors
    ///
    /// [`LinuxError::Geometry`] unless `nslabs` is a non-zero multiple of 128 and `nareas` a
    /// power of two with `nslabs / nareas` a multiple of 128; [`LinuxError::PoolOverflow`] if
    /// the region wraps.
    ///
    /// # Safety
    ///
    /// `start..start + nslabs * 2048` must be memory `mem` reaches, owned by this pool alone
    /// for its whole life (no references, no other user) and not overlapping any original
    /// buffer later mapped.
    pub unsafe fn new(
        mem: &'m M,
        start: PhysAddr,
        nslabs: usize,
        nareas: usize,
    ) -> Result<Self, LinuxError> {
        let geometry = LinuxError::Geometry { nslabs, nareas };
        if nslabs == 0 || !nslabs.is_multiple_of(IO_TLB_SEGSIZE) || !nareas.is_power_of_two() {
            return Err(geometry);
        }
        let area_nslabs = nslabs / nareas;
        if area_nslabs == 0 || !area_nslabs.is_multiple_of(IO_TLB_SEGSIZE) {
            return Err(geometry);
        }
        let len = nslabs
            .checked_mul(IO_TLB_SIZE)
            .ok_or(LinuxError::PoolOverflow { start, nslabs })?;
        // CAST: usize is at most 64 bits on every supported target.
        start
            .checked_last(len as u64)
            .ok_or(LinuxError::PoolOverflow { start, nslabs })?;
        let slots = (0..nslabs)
            .map(|i| Slot {
                orig_addr: AtomicU64::new(INVALID_PHYS_ADDR),
                alloc_size: AtomicI64::new(0),
                // CAST: the value is at most 128.
                list: AtomicU16::new((IO_TLB_SEGSIZE - io_tlb_offset(i)).min(nslabs - i) as u16),
                pad_slots: AtomicU16::new(0),
            })
            .collect();
        let areas = (0..nareas)
            .map(|_| Mutex::new(AreaState::default()))
            .collect();
        // SAFETY: the caller gives this pool exclusive use of the region, which `mem` reaches.
        unsafe { mem.fill(start, 0, len) };
        // INVARIANT: geometry checked above; every slot is free with its segment's count.
        Ok(Self {
            mem,
            start,
            nslabs,
            area_nslabs,
            areas,
            slots,
            total_used: AtomicUsize::new(0),
            used_hiwater: AtomicUsize::new(0),
            bounce_overflows: AtomicU64::new(0),
        })
    }

    /// The first byte of the pool.
    #[must_use]
    pub fn start(&self) -> PhysAddr {
        self.start
    }

    /// Slots in the pool.
    #[must_use]
    pub fn nslabs(&self) -> usize {
        self.nslabs
    }

    /// Areas in the pool.
    #[must_use]
    pub fn nareas(&self) -> usize {
        self.areas.len()
    }

    /// Slots in use (`total_used`).
    #[must_use]
    pub fn used(&self) -> usize {
        self.total_used.load(Ordering::Relaxed)
    }

    /// The most slots ever in use at once (`used_hiwater`).
    #[must_use]
    pub fn used_hiwater(&self) -> usize {
        self.used_hiwater.load(Ordering::Relaxed)
    }

    /// How many bounce copies were clamped to the allocation ("Buffer overflow detected").
    #[must_use]
    pub fn bounce_overflows(&self) -> u64 {
        self.bounce_overflows.load(Ordering::Relaxed)
    }

    /// The free count (`list`) of slot `index`, `None` past the end.
    #[must_use]
    pub fn free_count(&self, index: usize) -> Option<u16> {
        self.slots
            .get(index)
            .map(|s| s.list.load(Ordering::Relaxed))
    }

    /// Slots in use in area `area` (`area.used`), `None` past the end.
    #[must_use]
    pub fn area_used(&self, area: usize) -> Option<usize> {
        self.areas.get(area).map(|a| self.lock(a).used)
    }

    /// The next search start of area `area` (`area.index`), `None` past the end.
    #[must_use]
    pub fn area_index(&self, area: usize) -> Option<usize> {
        self.areas.get(area).map(|a| self.lock(a).index)
    }

    /// The pool's end (exclusive).
    fn end(&self) -> u64 {
        // CAST: usize fits u64; the sum was checked at construction.
        self.start.as_u64() + (self.nslabs * IO_TLB_SIZE) as u64
    }

    /// The physical address of slot `index` (`slot_addr`).
    fn slot_addr(&self, index: usize) -> u64 {
        // CAST: as in `end`.
        self.start.as_u64() + (index << IO_TLB_SHIFT) as u64
    }

    /// Locks an area. A poisoned lock is taken anyway: the state under it is two integers
    /// updated together before any operation that could panic.
    fn lock<'a>(&self, area: &'a Mutex<AreaState>) -> MutexGuard<'a, AreaState> {
        area.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `wrap_area_index`: back to 0 once past the area (not modulo).
    fn wrap_area_index(&self, index: usize) -> usize {
        if index >= self.area_nslabs { 0 } else { index }
    }

    /// Maps `mapping_size` bytes at `orig` for `dev` (`swiotlb_tbl_map_single`), copying the
    /// original into the bounce buffer whatever the direction.
    ///
    /// `alloc_align_mask` is 0 for streaming maps; a non-zero mask aligns the allocation.
    ///
    /// # Errors
    ///
    /// [`LinuxError::ZeroSize`], [`LinuxError::SegBoundary`], [`LinuxError::AlignMask`],
    /// [`LinuxError::RangeOverflow`] for bad arguments; [`LinuxError::Full`] when no area has
    /// room.
    ///
    /// # Safety
    ///
    /// `orig..orig + mapping_size` must be memory the pool's [`PhysMemory`] reaches, outside
    /// the pool, readable by the caller and covered by no live reference during the call.
    pub unsafe fn map_single(
        &self,
        dev: &Device,
        orig: PhysAddr,
        mapping_size: usize,
        alloc_align_mask: u64,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<LinuxMapping, LinuxError> {
        let _ = (dir, attrs);
        if mapping_size == 0 {
            return Err(LinuxError::ZeroSize { orig });
        }
        if dev.seg_boundary_mask & dev.seg_boundary_mask.wrapping_add(1) != 0 {
            return Err(LinuxError::SegBoundary {
                mask: dev.seg_boundary_mask,
            });
        }
        if alloc_align_mask & alloc_align_mask.wrapping_add(1) != 0
            || alloc_align_mask > u64::from(u32::MAX)
        {
            return Err(LinuxError::AlignMask {
                mask: alloc_align_mask,
            });
        }
        let range_overflow = LinuxError::RangeOverflow {
            orig,
            len: mapping_size,
        };
        // CAST: usize fits u64.
        orig.checked_last(mapping_size as u64)
            .ok_or(range_overflow)?;
        let orig_addr = orig.as_u64();

        // CAST: the offset is at most the alignment mask, checked to fit in 32 bits above.
        let offset = swiotlb_align_offset(dev, alloc_align_mask, orig_addr) as usize;
        // CAST: as for `offset`.
        let align = alloc_align_mask as usize + 1;
        let size = mapping_size
            .checked_add(offset)
            .and_then(|s| s.checked_next_multiple_of(align))
            .ok_or(range_overflow)?;

        let index = self.find_slots(dev, orig_addr, size, alloc_align_mask);
        let Some(first_slot) = index else {
            return Err(LinuxError::Full {
                size,
                total: self.nslabs,
                used: self.used(),
            });
        };

        let pad = offset >> IO_TLB_SHIFT;
        let in_slot = offset & (IO_TLB_SIZE - 1);
        let index = first_slot + pad;
        let nslots = nr_slots(size);
        // CAST: pad < 128 because the allocation fits in one segment.
        self.slots[index]
            .pad_slots
            .store(pad as u16, Ordering::Relaxed);
        for i in 0..nslots - pad {
            // CAST: i < 128, so the shift fits; the sum stays below `orig + size`, which the
            // allocation rules keep in range for any original that is itself in range.
            let o = orig_addr.wrapping_add((i << IO_TLB_SHIFT) as u64);
            self.slots[index + i].orig_addr.store(o, Ordering::Relaxed);
        }
        // CAST: `in_slot` < 2048.
        let tlb_addr = PhysAddr::new(self.slot_addr(index) + in_slot as u64);
        // SAFETY: the slots are ours until unmap; the caller vouches for the original.
        unsafe { self.bounce(dev, tlb_addr, mapping_size, DmaDirection::ToDevice) };
        Ok(LinuxMapping {
            tlb_addr,
            first_slot,
            nslots,
            pad_slots: pad,
        })
    }

    /// Unmaps a bounce mapping (`__swiotlb_tbl_unmap_single`): copies back for
    /// `FromDevice`/`Bidirectional` unless `SKIP_CPU_SYNC`, then releases the slots.
    ///
    /// # Errors
    ///
    /// [`LinuxError::NotInPool`] if `tlb_addr` is outside the pool, [`LinuxError::NotMapped`]
    /// if its slot is free (nothing is changed then).
    ///
    /// # Safety
    ///
    /// `tlb_addr` must come from [`map_single`](Self::map_single) on this pool with the same
    /// `dev`, not yet unmapped, and the original must still satisfy `map_single`'s
    /// requirements (writable by the caller if the copy back happens).
    pub unsafe fn unmap_single(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        mapping_size: usize,
        dir: DmaDirection,
        attrs: DmaAttrs,
    ) -> Result<(), LinuxError> {
        let first = self.mapping_start(dev, tlb_addr)?;
        if !attrs.contains(DmaAttrs::SKIP_CPU_SYNC) && dir.from_device() {
            // SAFETY: as the caller promises.
            unsafe { self.bounce(dev, tlb_addr, mapping_size, DmaDirection::FromDevice) };
        }
        self.release_slots(dev, tlb_addr, first);
        Ok(())
    }

    /// `__swiotlb_sync_single_for_device`: copies original to bounce for `ToDevice` and
    /// `Bidirectional`; nothing for `FromDevice`.
    ///
    /// # Errors
    ///
    /// [`LinuxError::NotInPool`] if `tlb_addr` is outside the pool.
    ///
    /// # Safety
    ///
    /// `tlb_addr..tlb_addr + size` must lie in a live mapping of this pool whose original
    /// satisfies [`map_single`](Self::map_single)'s requirements.
    pub unsafe fn sync_single_for_device(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<(), LinuxError> {
        self.slot_of(tlb_addr)?;
        if dir.to_device() {
            // SAFETY: as the caller promises.
            unsafe { self.bounce(dev, tlb_addr, size, DmaDirection::ToDevice) };
        }
        Ok(())
    }

    /// `__swiotlb_sync_single_for_cpu`: copies bounce to original for `FromDevice` and
    /// `Bidirectional`; nothing for `ToDevice`.
    ///
    /// # Errors
    ///
    /// [`LinuxError::NotInPool`] if `tlb_addr` is outside the pool.
    ///
    /// # Safety
    ///
    /// As for [`sync_single_for_device`](Self::sync_single_for_device), and the original
    /// must be writable by the caller.
    pub unsafe fn sync_single_for_cpu(
        &self,
        dev: &Device,
        tlb_addr: PhysAddr,
        size: usize,
        dir: DmaDirection,
    ) -> Result<(), LinuxError> {
        self.slot_of(tlb_addr)?;
        if dir.from_device() {
            // SAFETY: as the caller promises.
            unsafe { self.bounce(dev, tlb_addr, size, DmaDirection::FromDevice) };
        }
        Ok(())
    }

    /// The slot `addr` falls in, or [`LinuxError::NotInPool`] (`swiotlb_find_pool`).
    fn slot_of(&self, addr: PhysAddr) -> Result<usize, LinuxError> {
        match addr.offset_from(self.start) {
            // CAST: the offset is below the pool length, a usize.
            Some(off) if addr.as_u64() < self.end() => Ok((off >> IO_TLB_SHIFT) as usize),
            _ => Err(LinuxError::NotInPool { addr }),
        }
    }

    /// The first slot (pad slots included) of the live mapping at `tlb_addr`, computed as
    /// `swiotlb_release_slots` does, or an error if that slot is not allocated.
    fn mapping_start(&self, dev: &Device, tlb_addr: PhysAddr) -> Result<usize, LinuxError> {
        let not_mapped = LinuxError::NotMapped { addr: tlb_addr };
        let off = swiotlb_align_offset(dev, 0, tlb_addr.as_u64());
        let base = tlb_addr.checked_sub(off).ok_or(not_mapped)?;
        let index = self.slot_of(base).map_err(|_| not_mapped)?;
        let slot = &self.slots[index];
        if slot.orig_addr.load(Ordering::Relaxed) == INVALID_PHYS_ADDR
            || slot.list.load(Ordering::Relaxed) != 0
        {
            return Err(not_mapped);
        }
        let pad = usize::from(slot.pad_slots.load(Ordering::Relaxed));
        index.checked_sub(pad).ok_or(not_mapped)
    }

    /// `swiotlb_find_slots` (non-dynamic): the current CPU's area first, then round-robin.
    fn find_slots(
        &self,
        dev: &Device,
        orig_addr: u64,
        alloc_size: usize,
        alloc_align_mask: u64,
    ) -> Option<usize> {
        let nareas = self.areas.len();
        let start = current_cpu() & (nareas - 1);
        let mut i = start;
        loop {
            if let Some(index) =
                self.search_pool_area(dev, i, orig_addr, alloc_size, alloc_align_mask)
            {
                return Some(index);
            }
            i += 1;
            if i >= nareas {
                i = 0;
            }
            if i == start {
                return None;
            }
        }
    }

    /// `swiotlb_search_pool_area`: the slot walk of §1.6 and the free-count update of §1.7.
    fn search_pool_area(
        &self,
        dev: &Device,
        area_index: usize,
        orig_addr: u64,
        alloc_size: usize,
        mut alloc_align_mask: u64,
    ) -> Option<usize> {
        let boundary_mask = dev.seg_boundary_mask;
        let tbl_dma_addr = self.start.as_u64() & boundary_mask;
        let max_slots = get_max_slots(boundary_mask);
        let mut iotlb_align_mask = dev.min_align_mask;
        let nslots = nr_slots(alloc_size);
        let offset = swiotlb_align_offset(dev, 0, orig_addr);

        if alloc_align_mask == 0 && iotlb_align_mask == 0 && alloc_size >= PAGE_SIZE {
            // CAST: PAGE_SIZE fits u64.
            alloc_align_mask = PAGE_SIZE as u64 - 1;
        }
        alloc_align_mask |= IO_TLB_SIZE as u64 - 1;
        iotlb_align_mask &= !alloc_align_mask;
        // CAST: the masks are below 2^32 or all ones; the slot count of the larger, at
        // most 2^53, fits usize on 64-bit hosts.
        let stride = get_max_slots(alloc_align_mask.max(iotlb_align_mask)) as usize;

        let mut area = self.lock(&self.areas[area_index]);
        if nslots > self.area_nslabs - area.used {
            return None;
        }
        let slot_base = area_index * self.area_nslabs;
        let mut index = area.index;
        let mut slots_checked = 0;
        let mut found = None;
        while slots_checked < self.area_nslabs {
            let slot_index = slot_base + index;
            // CAST: slot indices fit u64; the bus-address sum wraps as C's does.
            let tlb_addr = tbl_dma_addr.wrapping_add((slot_index as u64) << IO_TLB_SHIFT);
            if tlb_addr & alloc_align_mask != 0
                || (orig_addr != 0 && tlb_addr & iotlb_align_mask != orig_addr & iotlb_align_mask)
            {
                index = self.wrap_area_index(index + 1);
                slots_checked += 1;
                continue;
            }
            // CAST: as above.
            if !span_boundary(
                slot_index as u64,
                nslots as u64,
                (nr_slots(tbl_dma_addr as usize)) as u64,
                max_slots,
            ) && usize::from(self.slots[slot_index].list.load(Ordering::Relaxed)) >= nslots
            {
                found = Some(slot_index);
                break;
            }
            index = self.wrap_area_index(index + stride);
            slots_checked += stride;
        }
        let slot_index = found?;

        for i in slot_index..slot_index + nslots {
            let s = &self.slots[i];
            s.list.store(0, Ordering::Relaxed);
            // CAST: sizes and offsets are below 2^42, far inside i64.
            let rest =
                alloc_size as i64 - (offset as i64 + ((i - slot_index) << IO_TLB_SHIFT) as i64);
            s.alloc_size.store(rest, Ordering::Relaxed);
        }
        let mut count: u16 = 0;
        let mut i = slot_index;
        while i > 0 {
            i -= 1;
            let s = &self.slots[i];
            if io_tlb_offset(i) == IO_TLB_SEGSIZE - 1 || s.list.load(Ordering::Relaxed) == 0 {
                break;
            }
            count += 1;
            s.list.store(count, Ordering::Relaxed);
        }
        area.index = self.wrap_area_index(index + nslots);
        area.used += nslots;
        drop(area);
        self.inc_used_and_hiwater(nslots);
        Some(slot_index)
    }

    /// `inc_used_and_hiwater`.
    fn inc_used_and_hiwater(&self, nslots: usize) {
        let new_used = self.total_used.fetch_add(nslots, Ordering::Relaxed) + nslots;
        let mut old = self.used_hiwater.load(Ordering::Relaxed);
        while new_used > old {
            match self.used_hiwater.compare_exchange_weak(
                old,
                new_used,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => old = now,
            }
        }
    }

    /// `swiotlb_release_slots`, given the first slot that [`mapping_start`] found.
    fn release_slots(&self, dev: &Device, tlb_addr: PhysAddr, index: usize) {
        let offset = swiotlb_align_offset(dev, 0, tlb_addr.as_u64());
        let alloc_size = self.slots[index].alloc_size.load(Ordering::Relaxed);
        // CAST: the first slot's alloc_size is the allocation size less the offset, so the
        // sum is the positive allocation size.
        let nslots = nr_slots((alloc_size + offset as i64) as usize);
        let aindex = index / self.area_nslabs;
        let mut area = self.lock(&self.areas[aindex]);

        let next = index + nslots;
        let mut count: u16 = if next < (index + 1).next_multiple_of(IO_TLB_SEGSIZE) {
            self.slots[next].list.load(Ordering::Relaxed)
        } else {
            0
        };
        for i in (index..next).rev() {
            let s = &self.slots[i];
            count += 1;
            s.list.store(count, Ordering::Relaxed);
            s.orig_addr.store(INVALID_PHYS_ADDR, Ordering::Relaxed);
            s.alloc_size.store(0, Ordering::Relaxed);
            s.pad_slots.store(0, Ordering::Relaxed);
        }
        let mut i = index;
        while i > 0 {
            i -= 1;
            let s = &self.slots[i];
            if io_tlb_offset(i) == IO_TLB_SEGSIZE - 1 || s.list.load(Ordering::Relaxed) == 0 {
                break;
            }
            count += 1;
            s.list.store(count, Ordering::Relaxed);
        }
        area.used -= nslots;
        drop(area);
        self.total_used.fetch_sub(nslots, Ordering::Relaxed);
    }

    /// `swiotlb_bounce`: copies between the original and the bounce buffer for the slot
    /// `tlb_addr` falls in, with the signed in-slot offset and the clamp to the allocation.
    ///
    /// # Safety
    ///
    /// `tlb_addr` is inside the pool, and the original of a live mapping there satisfies
    /// [`map_single`](Self::map_single)'s requirements (and is writable for `FromDevice`).
    unsafe fn bounce(&self, dev: &Device, tlb_addr: PhysAddr, size: usize, dir: DmaDirection) {
        let Ok(index) = self.slot_of(tlb_addr) else {
            return;
        };
        let slot = &self.slots[index];
        let orig_addr = slot.orig_addr.load(Ordering::Relaxed);
        let alloc_size = slot.alloc_size.load(Ordering::Relaxed);
        if orig_addr == INVALID_PHYS_ADDR {
            return;
        }
        // CAST: both terms are below 2048.
        let tlb_offset = (tlb_addr.as_u64() & (IO_TLB_SIZE as u64 - 1)) as i64
            - swiotlb_align_offset(dev, 0, orig_addr) as i64;
        let orig = PhysAddr::new(orig_addr.wrapping_add_signed(tlb_offset));
        let alloc_size = alloc_size - tlb_offset;
        // CAST: mapping sizes are far below i64::MAX.
        let size = if size as i64 > alloc_size {
            self.bounce_overflows.fetch_add(1, Ordering::Relaxed);
            // CAST: clamped at 0, so non-negative.
            alloc_size.max(0) as usize
        } else {
            size
        };
        if size == 0 {
            return;
        }
        match dir {
            // SAFETY: the bounce range is inside this mapping's slots, which the pool owns;
            // the original is as the caller promises. The two do not overlap because
            // originals lie outside the pool.
            DmaDirection::ToDevice => unsafe { self.mem.copy(tlb_addr, orig, size) },
            // SAFETY: as above, in the other direction.
            DmaDirection::FromDevice | DmaDirection::Bidirectional => unsafe {
                self.mem.copy(orig, tlb_addr, size)
            },
        }
    }

    /// Checks the free-count and accounting invariants over the whole pool, returning the
    /// first slot or area that breaks them. The oracle tests call this after every step.
    ///
    /// # Errors
    ///
    /// A description of the first broken invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut total = 0;
        for (a, area) in self.areas.iter().enumerate() {
            let range = a * self.area_nslabs..(a + 1) * self.area_nslabs;
            let used = range
                .filter(|&i| self.slots[i].list.load(Ordering::Relaxed) == 0)
                .count();
            let recorded = self.lock(area).used;
            if used != recorded {
                return Err(format!(
                    "area {a}: {used} slots allocated, used says {recorded}"
                ));
            }
            total += used;
        }
        if total != self.used() {
            return Err(format!(
                "{total} slots allocated, total_used says {}",
                self.used()
            ));
        }
        for i in (0..self.nslabs).rev() {
            let list = self.slots[i].list.load(Ordering::Relaxed);
            if list == 0 {
                continue;
            }
            let next_same_segment = io_tlb_offset(i) != IO_TLB_SEGSIZE - 1 && i + 1 < self.nslabs;
            let expect = if next_same_segment {
                self.slots[i + 1].list.load(Ordering::Relaxed) + 1
            } else {
                1
            };
            if list != expect {
                return Err(format!("slot {i}: list {list}, expected {expect}"));
            }
            if self.slots[i].orig_addr.load(Ordering::Relaxed) != INVALID_PHYS_ADDR {
                return Err(format!("slot {i}: free but has an original address"));
            }
        }
        Ok(())
    }
}

/// The placement rules every Linux-equivalent pool must obey, checked for one mapping: the
/// oracle's contract, independent of which slots a pool picks.
///
/// For a mapping of `mapping_size` bytes of `orig` with `alloc_align_mask`, answered with
/// `tlb_addr` by a pool starting at `pool_start` (bus address = physical address):
/// - the device's `min_align_mask` bits of `tlb_addr` equal those of `orig`;
/// - the allocation (which starts `swiotlb_align_offset(dev, alloc_align_mask, orig)` bytes
///   before `tlb_addr`) is slot-aligned, aligned to `alloc_align_mask`, and page-aligned when
///   it is a page or more and neither mask is set;
/// - it lies within one 128-slot segment of the pool and does not cross a
///   `seg_boundary_mask + 1` boundary.
///
/// # Errors
///
/// A description of the first rule broken.
pub fn check_mapping_rules(
    dev: &Device,
    pool_start: PhysAddr,
    orig: PhysAddr,
    mapping_size: usize,
    alloc_align_mask: u64,
    tlb_addr: PhysAddr,
) -> Result<(), String> {
    let (o, t) = (orig.as_u64(), tlb_addr.as_u64());
    if t & dev.min_align_mask != o & dev.min_align_mask {
        return Err(format!(
            "{tlb_addr} does not keep the bits {:#x} of {orig}",
            dev.min_align_mask
        ));
    }
    let offset = swiotlb_align_offset(dev, alloc_align_mask, o);
    let alloc_start = t
        .checked_sub(offset)
        .ok_or_else(|| format!("{tlb_addr} is below its own offset {offset:#x}"))?;
    // CAST: usize fits u64.
    let size = (mapping_size as u64 + offset).next_multiple_of(alloc_align_mask + 1);
    let mut align = alloc_align_mask | (IO_TLB_SIZE as u64 - 1);
    if alloc_align_mask == 0 && dev.min_align_mask == 0 && size >= PAGE_SIZE as u64 {
        align |= PAGE_SIZE as u64 - 1;
    }
    if alloc_start & align != 0 {
        return Err(format!(
            "allocation at {alloc_start:#x} is not aligned to {:#x}",
            align + 1
        ));
    }
    let rel = alloc_start
        .checked_sub(pool_start.as_u64())
        .ok_or_else(|| format!("allocation at {alloc_start:#x} is below the pool"))?;
    let segment = (IO_TLB_SEGSIZE * IO_TLB_SIZE) as u64;
    let last = alloc_start + size.next_multiple_of(IO_TLB_SIZE as u64) - 1;
    if rel / segment != (last - pool_start.as_u64()) / segment {
        return Err(format!(
            "allocation {alloc_start:#x}..={last:#x} crosses a pool segment"
        ));
    }
    let b = dev.seg_boundary_mask;
    if alloc_start & !b != last & !b {
        return Err(format!(
            "allocation {alloc_start:#x}..={last:#x} crosses a {:#x} boundary",
            b.wrapping_add(1)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::linear_map;
    use crate::host::HostMemory;
    use crate::rng::SplitMix64;
    use swiotlb_core::DmaMask;
    use swiotlb_core::LinearMap;

    /// The pool's physical base: 1 MiB-aligned, below 4 GiB.
    const BASE: u64 = 0x8000_0000;
    /// Room after the pool for originals.
    const ORIG_ROOM: usize = 1 << 20;
    const NONE: DmaAttrs = DmaAttrs::empty();

    /// Host memory for a pool of `nslabs` slots and its originals, with the [`LinearMap`]
    /// the pool copies through.
    struct Fixture {
        map: LinearMap,
        mem: HostMemory,
    }

    impl core::ops::Deref for Fixture {
        type Target = HostMemory;
        fn deref(&self) -> &HostMemory {
            &self.mem
        }
    }

    fn memory(nslabs: usize) -> Fixture {
        let mem =
            HostMemory::new(PhysAddr::new(BASE), nslabs * IO_TLB_SIZE + ORIG_ROOM, 4096).unwrap();
        // SAFETY: the map describes `mem`'s heap allocation, which moves with neither and is
        // freed only when the fixture (holding both) is dropped.
        let map = unsafe { linear_map(&mem) };
        Fixture { map, mem }
    }

    fn pool(mem: &Fixture, nslabs: usize, nareas: usize) -> LinuxPool<'_, LinearMap> {
        // SAFETY: the first `nslabs` slots of `mem` belong to the pool; tests put originals
        // only after them.
        unsafe { LinuxPool::new(&mem.map, mem.base(), nslabs, nareas) }.unwrap()
    }

    /// An address in the originals area, `off` bytes in.
    fn orig_at(nslabs: usize, off: u64) -> PhysAddr {
        PhysAddr::new(BASE + (nslabs * IO_TLB_SIZE) as u64 + off)
    }

    fn plain() -> Device {
        Device::new(DmaMask::BITS_32)
    }

    fn map(
        p: &LinuxPool<'_, LinearMap>,
        dev: &Device,
        orig: PhysAddr,
        len: usize,
        align: u64,
    ) -> LinuxMapping {
        // SAFETY: single-threaded tests; originals lie outside the pool in `mem`.
        let m =
            unsafe { p.map_single(dev, orig, len, align, DmaDirection::ToDevice, NONE) }.unwrap();
        p.check_invariants().unwrap();
        check_mapping_rules(dev, p.start(), orig, len, align, m.tlb_addr).unwrap();
        m
    }

    fn unmap(p: &LinuxPool<'_, LinearMap>, dev: &Device, m: &LinuxMapping, len: usize) {
        // SAFETY: `m` is live on `p`.
        unsafe { p.unmap_single(dev, m.tlb_addr, len, DmaDirection::ToDevice, NONE) }.unwrap();
        p.check_invariants().unwrap();
    }

    fn lists(p: &LinuxPool<'_, LinearMap>, r: core::ops::Range<usize>) -> Vec<u16> {
        r.map(|i| p.free_count(i).unwrap()).collect()
    }

    #[test]
    fn init_counts_and_geometry() {
        let mem = memory(256);
        let p = pool(&mem, 256, 2);
        assert_eq!(p.free_count(0), Some(128));
        assert_eq!(p.free_count(127), Some(1));
        assert_eq!(p.free_count(128), Some(128));
        assert_eq!(p.free_count(255), Some(1));
        assert_eq!(p.free_count(256), None);
        assert_eq!((p.nslabs(), p.nareas(), p.used()), (256, 2, 0));
        p.check_invariants().unwrap();
        for (n, a) in [(0, 1), (100, 1), (256, 3), (256, 4), (128, 2)] {
            // SAFETY: geometry is rejected before the memory is touched.
            let r = unsafe { LinuxPool::new(&mem.map, mem.base(), n, a) };
            assert_eq!(
                r.err(),
                Some(LinuxError::Geometry {
                    nslabs: n,
                    nareas: a
                })
            );
        }
    }

    /// §1.7's worked example.
    #[test]
    fn worked_example_free_counts() {
        let mem = memory(128);
        let p = pool(&mem, 128, 1);
        let dev = plain();
        let m = map(&p, &dev, orig_at(128, 0), 3 * IO_TLB_SIZE, 0);
        assert_eq!(m.first_slot, 0);
        assert_eq!(lists(&p, 0..4), [0, 0, 0, 125]);
        unmap(&p, &dev, &m, 3 * IO_TLB_SIZE);
        assert_eq!(lists(&p, 0..4), [128, 127, 126, 125]);

        // Move the round-robin index to slot 5 with single-slot mappings, then free them.
        let singles: Vec<_> = (0..5)
            .map(|i| map(&p, &dev, orig_at(128, i * 64), 64, 0))
            .collect();
        assert_eq!(
            singles.iter().map(|m| m.first_slot).collect::<Vec<_>>(),
            [3, 4, 5, 6, 7]
        );
        let dev_nopage = plain().with_min_align_mask(0x7ff);
        let m = map(&p, &dev_nopage, orig_at(128, 0), 2 * IO_TLB_SIZE + 1, 0);
        assert_eq!((m.first_slot, m.nslots), (8, 3));
        for s in &singles {
            unmap(&p, &dev, s, 64);
        }
        unmap(&p, &dev, &m, 2 * IO_TLB_SIZE + 1);
        assert_eq!(p.area_index(0), Some(11));
        assert_eq!(lists(&p, 0..3), [128, 127, 126]);

        // Now the example proper: 0..4 free and index at 5.
        let fill: Vec<_> = (0..5)
            .map(|i| map(&p, &dev, orig_at(128, i * 64), 64, 0))
            .collect();
        let rest: Vec<_> = (0..128 - 16)
            .map(|i| map(&p, &dev, orig_at(128, i * 64), 64, 0))
            .collect();
        assert_eq!(p.area_index(0), Some(0));
        for s in fill.iter().chain(&rest) {
            unmap(&p, &dev, s, 64);
        }
        let step: Vec<_> = (0..5)
            .map(|i| map(&p, &dev, orig_at(128, i * 64), 64, 0))
            .collect();
        for s in &step {
            unmap(&p, &dev, s, 64);
        }
        assert_eq!(p.area_index(0), Some(5));
        let m = map(&p, &dev_nopage, orig_at(128, 0), 3 * IO_TLB_SIZE, 0);
        assert_eq!(m.first_slot, 5);
        assert_eq!(lists(&p, 0..9), [5, 4, 3, 2, 1, 0, 0, 0, 120]);
        unmap(&p, &dev_nopage, &m, 3 * IO_TLB_SIZE);
        assert_eq!(
            lists(&p, 0..9),
            [128, 127, 126, 125, 124, 123, 122, 121, 120]
        );
        assert_eq!(p.used(), 0);
        assert_eq!(p.used_hiwater(), 128 - 16 + 5);
    }

    /// NVMe keeps bits 0..=11: bit 11 by slot choice (stride 2), bits 0..=10 by the offset.
    #[test]
    fn nvme_min_align_mask() {
        let mem = memory(256);
        let p = pool(&mem, 256, 1);
        let nvme = plain().with_min_align_mask(0xfff);
        let odd = orig_at(256, 0x1a10);
        let m = map(&p, &nvme, odd, 4096, 0);
        assert_eq!(m.first_slot, 1);
        assert_eq!(m.tlb_addr.as_u64(), BASE + 2048 + 0x210);
        assert_eq!(m.tlb_addr.as_u64() & 0xfff, 0xa10);
        assert_eq!(m.nslots, nr_slots(4096 + 0x210));
        let even = orig_at(256, 0x2010);
        let m2 = map(&p, &nvme, even, 100, 0);
        assert_eq!(m2.tlb_addr.as_u64() & 0xfff, 0x010);
        assert_eq!(m2.first_slot % 2, 0);
        assert!(m2.first_slot >= m.first_slot + m.nslots);
        unmap(&p, &nvme, &m, 4096);
        unmap(&p, &nvme, &m2, 100);
        assert_eq!(p.used(), 0);
    }

    /// An alignment mask beyond a slot keeps offsets of 2 KiB or more with pad slots.
    #[test]
    fn pad_slots_round_trip() {
        let mem = memory(256);
        let p = pool(&mem, 256, 1);
        let nvme = plain().with_min_align_mask(0xfff);
        let orig = orig_at(256, 0x3a10);
        let data: Vec<u8> = (0..100u8).collect();
        // SAFETY: single-threaded test; the original is outside the pool.
        unsafe { mem.write(orig, &data) }.unwrap();
        let m = map(&p, &nvme, orig, 100, 0xfff);
        assert_eq!((m.first_slot, m.pad_slots, m.nslots), (0, 1, 2));
        assert_eq!(m.tlb_addr.as_u64(), BASE + 2048 + 0x210);
        let mut seen = vec![0; 100];
        // SAFETY: as above.
        unsafe { mem.read(m.tlb_addr, &mut seen) }.unwrap();
        assert_eq!(seen, data);
        assert_eq!(lists(&p, 0..3), [0, 0, 126]);
        unmap(&p, &nvme, &m, 100);
        assert_eq!(lists(&p, 0..3), [128, 127, 126]);
        assert_eq!(p.used(), 0);
    }

    #[test]
    fn segment_boundary_is_respected() {
        let mem = memory(128);
        let dev = plain();
        let bounded = plain().with_seg_boundary_mask(0xffff);
        for (d, expect) in [(&dev, 30), (&bounded, 32)] {
            let p = pool(&mem, 128, 1);
            let singles: Vec<_> = (0..30)
                .map(|i| map(&p, &dev, orig_at(128, i * 64), 64, 0))
                .collect();
            let m = map(&p, d, orig_at(128, 0), 4 * IO_TLB_SIZE, 0);
            assert_eq!(m.first_slot, expect);
            unmap(&p, d, &m, 4 * IO_TLB_SIZE);
            for s in &singles {
                unmap(&p, &dev, s, 64);
            }
        }
        let p = pool(&mem, 128, 1);
        // SAFETY: the original is outside the pool.
        let r = unsafe {
            p.map_single(
                &plain().with_seg_boundary_mask(0xfff0),
                orig_at(128, 0),
                64,
                0,
                DmaDirection::ToDevice,
                NONE,
            )
        };
        assert_eq!(r, Err(LinuxError::SegBoundary { mask: 0xfff0 }));
    }

    #[test]
    fn page_alignment_and_wrap() {
        let mem = memory(128);
        let p = pool(&mem, 128, 1);
        let dev = plain();
        let a = map(&p, &dev, orig_at(128, 0), 64, 0);
        let b = map(&p, &dev, orig_at(128, 0), 4096, 0);
        assert_eq!((a.first_slot, b.first_slot), (0, 2));
        // Fill to the end of the area; the next search wraps to 0 and finds slot 1.
        let rest: Vec<_> = (4..128)
            .map(|i| map(&p, &dev, orig_at(128, i * 64), 64, 0))
            .collect();
        assert_eq!(rest.last().unwrap().first_slot, 127);
        assert_eq!(p.area_index(0), Some(0));
        let c = map(&p, &dev, orig_at(128, 0), 64, 0);
        assert_eq!(c.first_slot, 1);
        // SAFETY: the original is outside the pool.
        let full =
            unsafe { p.map_single(&dev, orig_at(128, 0), 1, 0, DmaDirection::ToDevice, NONE) };
        assert_eq!(
            full,
            Err(LinuxError::Full {
                size: 1,
                total: 128,
                used: 128
            })
        );
        for m in rest.iter().chain([&a, &b, &c]) {
            unmap(&p, &dev, m, if m == &b { 4096 } else { 64 });
        }
        assert_eq!(p.used(), 0);
        // A mapping longer than a segment never fits.
        // SAFETY: as above.
        let big = unsafe {
            p.map_single(
                &dev,
                orig_at(128, 0),
                128 * IO_TLB_SIZE + 1,
                0,
                DmaDirection::ToDevice,
                NONE,
            )
        };
        assert!(matches!(big, Err(LinuxError::Full { used: 0, .. })));
    }

    #[test]
    fn areas_spill_over_round_robin() {
        let mem = memory(512);
        let p = pool(&mem, 512, 4);
        let dev = plain();
        let home = current_cpu() & 3;
        let ms: Vec<_> = (0..129)
            .map(|i| map(&p, &dev, orig_at(512, i * 64), 64, 0))
            .collect();
        assert_eq!(p.area_used(home), Some(128));
        assert_eq!(p.area_used((home + 1) & 3), Some(1));
        assert_eq!(ms[128].first_slot, ((home + 1) & 3) * 128);
        for m in &ms {
            unmap(&p, &dev, m, 64);
        }
        assert_eq!((0..4).map(|a| p.area_used(a).unwrap()).sum::<usize>(), 0);
    }

    #[test]
    fn bad_arguments() {
        let mem = memory(128);
        let p = pool(&mem, 128, 1);
        let dev = plain();
        let o = orig_at(128, 0);
        let t = DmaDirection::ToDevice;
        // SAFETY: nothing is copied for rejected arguments; the original is outside the pool.
        unsafe {
            assert_eq!(
                p.map_single(&dev, o, 0, 0, t, NONE),
                Err(LinuxError::ZeroSize { orig: o })
            );
            assert_eq!(
                p.map_single(&dev, o, 1, 0x1001, t, NONE),
                Err(LinuxError::AlignMask { mask: 0x1001 })
            );
            let top = PhysAddr::new(u64::MAX - 1);
            assert_eq!(
                p.map_single(&dev, top, 4, 0, t, NONE),
                Err(LinuxError::RangeOverflow { orig: top, len: 4 })
            );
            let out = PhysAddr::new(BASE - 1);
            assert_eq!(
                p.unmap_single(&dev, out, 1, t, NONE),
                Err(LinuxError::NotMapped { addr: out })
            );
            assert_eq!(
                p.sync_single_for_cpu(&dev, o, 1, t),
                Err(LinuxError::NotInPool { addr: o })
            );
            let free = PhysAddr::new(BASE + 4096);
            assert_eq!(
                p.unmap_single(&dev, free, 1, t, NONE),
                Err(LinuxError::NotMapped { addr: free })
            );
        }
        p.check_invariants().unwrap();
    }

    /// Map copies whatever the direction; unmap copies back only for FromDevice and
    /// Bidirectional without SKIP_CPU_SYNC.
    #[test]
    fn copy_directions() {
        let mem = memory(128);
        let p = pool(&mem, 128, 1);
        let dev = plain();
        let o = orig_at(128, 0x100);
        let cases = [
            (DmaDirection::ToDevice, NONE, false),
            (DmaDirection::FromDevice, NONE, true),
            (DmaDirection::Bidirectional, NONE, true),
            (DmaDirection::FromDevice, DmaAttrs::SKIP_CPU_SYNC, false),
        ];
        for (dir, attrs, copied_back) in cases {
            // SAFETY: single-threaded; the original is outside the pool.
            unsafe {
                mem.write(o, &[0x11; 3000]).unwrap();
                let m = p.map_single(&dev, o, 3000, 0, dir, attrs).unwrap();
                let mut seen = vec![0; 3000];
                mem.read(m.tlb_addr, &mut seen).unwrap();
                assert!(seen.iter().all(|&b| b == 0x11), "{dir:?}: map did not copy");
                // The device writes the first half.
                mem.write(m.tlb_addr, &[0x22; 1500]).unwrap();
                p.unmap_single(&dev, m.tlb_addr, 3000, dir, attrs).unwrap();
                mem.read(o, &mut seen).unwrap();
                let expect = if copied_back { 0x22 } else { 0x11 };
                assert!(
                    seen[..1500].iter().all(|&b| b == expect),
                    "{dir:?} {attrs:?}"
                );
                assert!(
                    seen[1500..].iter().all(|&b| b == 0x11),
                    "{dir:?}: tail clobbered"
                );
            }
        }
    }

    /// A partial sync whose address lies in the first `offset` bytes of a later slot copies
    /// the right bytes (negative in-slot offset).
    #[test]
    fn partial_sync_negative_offset_and_clamp() {
        let mem = memory(128);
        let p = pool(&mem, 128, 1);
        let nvme = plain().with_min_align_mask(0xfff);
        let o = orig_at(128, 0x210);
        let dir = DmaDirection::FromDevice;
        // SAFETY: single-threaded; the original is outside the pool; every range is inside
        // the live mapping except the deliberately oversized sync, which the clamp bounds.
        unsafe {
            mem.write(o, &[0u8; 6000]).unwrap();
            let m = p.map_single(&nvme, o, 6000, 0, dir, NONE).unwrap();
            let at = 2048 - 0x210 + 8;
            let dev_addr = m.tlb_addr.checked_add(at).unwrap();
            mem.write(dev_addr, &[0xab; 16]).unwrap();
            p.sync_single_for_cpu(&nvme, dev_addr, 16, dir).unwrap();
            let mut seen = vec![0; 6000];
            mem.read(o, &mut seen).unwrap();
            let at = usize::try_from(at).unwrap();
            assert!(seen[at..at + 16].iter().all(|&b| b == 0xab));
            assert_eq!(seen.iter().filter(|&&b| b != 0).count(), 16);
            assert_eq!(p.bounce_overflows(), 0);

            // A sync past the end is clamped to the allocation.
            mem.write(m.tlb_addr, &[0xcd; 6000]).unwrap();
            let after = o.checked_add(6000).unwrap();
            mem.write(after, &[0x5a; 64]).unwrap();
            p.sync_single_for_cpu(&nvme, m.tlb_addr, 6064, dir).unwrap();
            assert_eq!(p.bounce_overflows(), 1);
            mem.read(o, &mut seen).unwrap();
            assert!(seen.iter().all(|&b| b == 0xcd));
            let mut tail = [0; 64];
            mem.read(after, &mut tail).unwrap();
            assert!(tail.iter().all(|&b| b == 0x5a));
            p.unmap_single(&nvme, m.tlb_addr, 6000, DmaDirection::ToDevice, NONE)
                .unwrap();
        }
        p.check_invariants().unwrap();
    }

    /// A random mix of devices, alignments and sizes: invariants, rules and data hold after
    /// every step, and live mappings never overlap.
    #[test]
    fn random_operations_keep_invariants() {
        const NSLABS: usize = 1024;
        let mem = memory(NSLABS);
        let p = pool(&mem, NSLABS, 2);
        let devs = [
            plain(),
            plain().with_min_align_mask(0xfff),
            plain().with_min_align_mask(0x7ff),
            plain().with_seg_boundary_mask(0xffff),
            plain()
                .with_min_align_mask(0xfff)
                .with_seg_boundary_mask(0x1_ffff),
        ];
        let mut rng = SplitMix64::new(0x5eed);
        let mut live: Vec<(usize, PhysAddr, usize, LinuxMapping, u8)> = Vec::new();
        for step in 0..3000u32 {
            if live.is_empty() || rng.range(0, 99) < 55 {
                let d = usize::try_from(rng.range(0, 4)).unwrap();
                let len = usize::try_from(match rng.range(0, 3) {
                    0 => rng.range(1, 256),
                    1 => rng.range(1, 4096),
                    _ => rng.range(1, 120 * 1024),
                })
                .unwrap();
                let o = orig_at(NSLABS, rng.range(0, 0x3_0000));
                let align = if rng.range(0, 3) == 0 { 0xfff } else { 0 };
                let byte = u8::try_from(step % 251).unwrap();
                // SAFETY: single-threaded; originals are outside the pool, and only the
                // bounce buffers (disjoint, checked below) keep the data.
                let r = unsafe {
                    mem.write(o, &vec![byte; len]).unwrap();
                    p.map_single(&devs[d], o, len, align, DmaDirection::ToDevice, NONE)
                };
                match r {
                    Ok(m) => {
                        check_mapping_rules(&devs[d], p.start(), o, len, align, m.tlb_addr)
                            .unwrap();
                        for (_, _, _, other, _) in &live {
                            let disjoint = m.first_slot + m.nslots <= other.first_slot
                                || other.first_slot + other.nslots <= m.first_slot;
                            assert!(disjoint, "{m:?} overlaps {other:?}");
                        }
                        live.push((d, o, len, m, byte));
                    }
                    Err(LinuxError::Full { .. }) => {}
                    Err(e) => panic!("step {step}: {e}"),
                }
            } else {
                let k = usize::try_from(rng.range(0, live.len() as u64 - 1)).unwrap();
                let (d, _, len, m, byte) = live.swap_remove(k);
                let mut seen = vec![0; len];
                // SAFETY: the mapping is live and nothing else writes its bounce buffer.
                unsafe {
                    mem.read(m.tlb_addr, &mut seen).unwrap();
                    p.unmap_single(&devs[d], m.tlb_addr, len, DmaDirection::ToDevice, NONE)
                        .unwrap();
                }
                assert!(
                    seen.iter().all(|&b| b == byte),
                    "step {step}: bounce data lost"
                );
            }
            p.check_invariants().unwrap();
            let used: usize = live.iter().map(|l| l.3.nslots).sum();
            assert_eq!(p.used(), used);
        }
    }
}
