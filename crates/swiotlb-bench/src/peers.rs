//! The peers: general-purpose allocators a kernel developer might pick instead of a swiotlb
//! pool, each turned into a bounce pool that does the same copies as ours.
//!
//! - [`BuddyPool`]: `buddy_system_allocator::FrameAllocator`, the frame allocator AOSP's
//!   `vmbase` uses for its shared (bounce) memory pool. Requests round up to a power of two
//!   of slots and come back naturally aligned.
//! - [`BitmapPool`]: `bitmap_allocator::BitAlloc64K`, a segment tree of 16-bit bitmaps with a
//!   first-fit search for contiguous runs.
//!
//! Both sit in a [`PeerPool`]: one `std::sync::Mutex` around the allocator (neither crate
//! has areas or any other concurrency of its own; the Linux baseline's area locks are the
//! same kind of mutex), the same 2 KiB slot as ours over the same kind of host memory,
//! copies through the same [`LinearMap`]. A map takes the lock, allocates `ceil(len / 2048)`
//! slots (page-aligned for 4 KiB or more, as Linux and ours do), drops the lock and copies
//! the original in; an unmap copies back for `FromDevice`/`Bidirectional`, then takes the
//! lock and frees. The mapping's original and slot count travel in the handle
//! ([`PeerMapping`]): the peers keep no per-slot metadata, and they honour none of a
//! device's constraints (`min_align_mask`, the segment boundary), so they do strictly less
//! work per mapping than a swiotlb pool must.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bitmap_allocator::BitAlloc;
use swiotlb_core::{DmaDirection, LinearMap, PhysAddr, PhysMemory};

use crate::harness::BenchPool;
use crate::linux::{IO_TLB_SHIFT, IO_TLB_SIZE, PAGE_SIZE, nr_slots};

/// A slot allocator a [`PeerPool`] can bounce through.
pub trait SlotAllocator: Send {
    /// The allocator's name in tables.
    const NAME: &'static str;

    /// Allocates `nslots` contiguous slots whose first index is a multiple of
    /// `1 << align_log2`. Returns the first slot and the slots actually taken (at least
    /// `nslots`), or `None` if there is no room.
    fn alloc(&mut self, nslots: usize, align_log2: u32) -> Option<(usize, usize)>;

    /// Frees what [`alloc`](Self::alloc) returned.
    fn free(&mut self, first: usize, taken: usize);
}

/// Largest order the buddy allocator manages: 2^15 slots = 64 MiB, the benchmark pool.
const BUDDY_ORDER: usize = 16;

/// `buddy_system_allocator::FrameAllocator` over slot numbers.
pub struct Buddy(buddy_system_allocator::FrameAllocator<BUDDY_ORDER>);

impl Buddy {
    /// An allocator of slots `0..nslabs`.
    #[must_use]
    pub fn new(nslabs: usize) -> Self {
        let mut a = buddy_system_allocator::FrameAllocator::new();
        a.add_frame(0, nslabs);
        Self(a)
    }
}

impl SlotAllocator for Buddy {
    const NAME: &'static str = "buddy";

    fn alloc(&mut self, nslots: usize, align_log2: u32) -> Option<(usize, usize)> {
        // Blocks are naturally aligned to their power-of-two size, which covers any
        // alignment up to it.
        let taken = nslots.next_power_of_two().max(1 << align_log2);
        self.0.alloc(taken).map(|first| (first, taken))
    }

    fn free(&mut self, first: usize, taken: usize) {
        self.0.dealloc(first, taken);
    }
}

/// `bitmap_allocator::BitAlloc64K` over slot numbers (it manages up to 65536).
pub struct Bitmap(Box<bitmap_allocator::BitAlloc64K>);

impl Bitmap {
    /// An allocator of slots `0..nslabs`, or `None` past the bitmap's 65536 bits.
    #[must_use]
    pub fn new(nslabs: usize) -> Option<Self> {
        if nslabs > bitmap_allocator::BitAlloc64K::CAP {
            return None;
        }
        let mut a = Box::<bitmap_allocator::BitAlloc64K>::default();
        a.insert(0..nslabs);
        Some(Self(a))
    }
}

impl SlotAllocator for Bitmap {
    const NAME: &'static str = "bitmap";

    fn alloc(&mut self, nslots: usize, align_log2: u32) -> Option<(usize, usize)> {
        // CAST: a u32 fits usize.
        let first = self.0.alloc_contiguous(None, nslots, align_log2 as usize)?;
        Some((first, nslots))
    }

    fn free(&mut self, first: usize, taken: usize) {
        let ok = self.0.dealloc_contiguous(first, taken);
        debug_assert!(ok, "bitmap double free at {first}+{taken}");
    }
}

/// A live mapping of a [`PeerPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerMapping {
    /// The bounce address.
    pub tlb_addr: PhysAddr,
    /// The original.
    pub orig: PhysAddr,
    /// The first slot taken.
    pub first: usize,
    /// The slots taken.
    pub taken: usize,
}

/// What a [`PeerPool`]'s lock guards.
struct Locked<A> {
    /// The allocator.
    alloc: A,
    /// Slots in use, as the allocator took them.
    used: usize,
}

/// A bounce pool made of a peer allocator, a lock, and copies through a [`LinearMap`].
///
/// # Invariants
///
/// The allocator manages slots `0..nslabs`, and slot `i` is the 2 KiB at
/// `start + i * 2048`, memory `mem` reaches and this pool owns.
pub struct PeerPool<A> {
    /// The allocator and the use count, behind one lock.
    locked: Mutex<Locked<A>>,
    /// How copies reach memory.
    mem: LinearMap,
    /// First byte of the pool.
    start: PhysAddr,
    /// Slots in the pool.
    nslabs: usize,
}

/// A bounce pool over `buddy_system_allocator`.
pub type BuddyPool = PeerPool<Buddy>;
/// A bounce pool over `bitmap-allocator`.
pub type BitmapPool = PeerPool<Bitmap>;

impl<A: SlotAllocator> PeerPool<A> {
    /// A pool of `nslabs` slots at `start`, allocated by `alloc` (which manages slots
    /// `0..nslabs`).
    ///
    /// # Safety
    ///
    /// `start..start + nslabs * 2048` is memory `mem` reaches, owned by this pool alone for
    /// its life and not overlapping any original later mapped.
    #[must_use]
    pub unsafe fn new(alloc: A, mem: LinearMap, start: PhysAddr, nslabs: usize) -> Self {
        // INVARIANT: the caller's promise.
        Self {
            locked: Mutex::new(Locked { alloc, used: 0 }),
            mem,
            start,
            nslabs,
        }
    }

    /// Takes the lock. A poisoned lock is taken anyway: the allocator and the count are
    /// updated together with nothing that panics in between.
    fn lock(&self) -> MutexGuard<'_, Locked<A>> {
        self.locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot_addr(&self, slot: usize) -> PhysAddr {
        // CAST: slot offsets inside the pool fit u64; the pool does not wrap (invariant).
        PhysAddr::new(self.start.as_u64() + (slot << IO_TLB_SHIFT) as u64)
    }

    /// The allocator's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        A::NAME
    }
}

impl<A: SlotAllocator> BenchPool for PeerPool<A> {
    type Handle = PeerMapping;

    fn total_slots(&self) -> usize {
        self.nslabs
    }

    fn used_slots(&self) -> usize {
        self.lock().used
    }

    fn bounce_addr(&self, handle: &PeerMapping) -> PhysAddr {
        handle.tlb_addr
    }

    unsafe fn map(&self, orig: PhysAddr, len: usize, dir: DmaDirection) -> Option<PeerMapping> {
        let _ = dir;
        if len == 0 {
            return None;
        }
        // CAST: PAGE_SIZE / IO_TLB_SIZE is 2, log2 1.
        let align_log2 = if len >= PAGE_SIZE {
            (PAGE_SIZE / IO_TLB_SIZE).ilog2()
        } else {
            0
        };
        let (first, taken) = {
            let mut l = self.lock();
            let (first, taken) = l.alloc.alloc(nr_slots(len), align_log2)?;
            if first + taken > self.nslabs {
                // An allocator handing out slots it does not manage: refuse, do not copy.
                l.alloc.free(first, taken);
                return None;
            }
            l.used += taken;
            (first, taken)
        };
        let tlb_addr = self.slot_addr(first);
        // SAFETY: the slots are this mapping's alone (the allocator handed them out and
        // `first + taken <= nslabs`, checked above) and lie in the pool, which `mem` reaches;
        // the caller vouches for the original.
        unsafe { self.mem.copy(tlb_addr, orig, len) };
        Some(PeerMapping {
            tlb_addr,
            orig,
            first,
            taken,
        })
    }

    unsafe fn unmap(&self, m: PeerMapping, len: usize, dir: DmaDirection) {
        if matches!(dir, DmaDirection::FromDevice | DmaDirection::Bidirectional) {
            // SAFETY: the mapping is live (the caller's promise), so its slots are ours; the
            // original is the caller's as promised at map time.
            unsafe { self.mem.copy(m.orig, m.tlb_addr, len) };
        }
        let mut l = self.lock();
        l.alloc.free(m.first, m.taken);
        l.used -= m.taken;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buddy_rounds_to_powers_of_two() {
        let mut b = Buddy::new(256);
        let (f, t) = b.alloc(3, 0).unwrap();
        assert_eq!(t, 4);
        assert_eq!(f % 4, 0);
        let (f2, t2) = b.alloc(1, 1).unwrap();
        assert_eq!(t2, 2);
        assert_eq!(f2 % 2, 0);
        b.free(f, t);
        b.free(f2, t2);
        assert_eq!(b.alloc(256, 0), Some((0, 256)));
        assert_eq!(b.alloc(1, 0), None);
    }

    #[test]
    fn bitmap_first_fit_and_bounds() {
        assert!(Bitmap::new(65537).is_none());
        let mut b = Bitmap::new(8).unwrap();
        assert_eq!(b.alloc(3, 0), Some((0, 3)));
        assert_eq!(b.alloc(2, 1), Some((4, 2)));
        assert_eq!(b.alloc(1, 0), Some((3, 1)));
        assert_eq!(b.alloc(3, 0), None);
        b.free(0, 3);
        assert_eq!(b.alloc(3, 0), Some((0, 3)));
    }
}
