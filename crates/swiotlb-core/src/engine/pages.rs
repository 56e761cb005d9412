//! [`PageAllocator`]: the kernel's page allocator, as the engine needs it.

use crate::addr::{Pfn, PhysAddr};

/// The kernel's page allocator and its knowledge of its own RAM, as the DMA engine needs
/// them: pages for coherent allocations (Linux's `__get_free_pages`/`free_pages`) and
/// Linux's `pfn_valid` to tell the domain's own frames from others when a direct mapping is
/// unmapped or synced.
///
/// # Implementation safety
///
/// - [`alloc_pages`](Self::alloc_pages) returns the first byte of `2^order` physically
///   contiguous 4 KiB pages, aligned to `4 KiB << order`, zeroed, owned by the caller until
///   given back with [`free_pages`](Self::free_pages), and reachable by the platform's
///   `create_contiguous_region` (the kernel's RAM).
/// - [`pfn_valid`](Self::pfn_valid) answers `true` only for frames of the domain's own RAM,
///   which the kernel's cache-maintenance hooks can reach.
/// - [`block_state`](Self::block_state), if it answers, answers as [`BlockState`] says.
/// - All may be called from several CPUs at once.
pub unsafe trait PageAllocator: Sync {
    /// Allocates `2^order` zeroed, contiguous, naturally aligned 4 KiB pages; `None` when
    /// there is no memory.
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr>;

    /// Gives back pages from [`alloc_pages`](Self::alloc_pages).
    ///
    /// # Safety
    ///
    /// `phys` and `order` must be those of one live allocation of this allocator, which
    /// nothing uses any more.
    unsafe fn free_pages(&self, phys: PhysAddr, order: u32);

    /// Linux's `pfn_valid`: whether `pfn` is a frame of the domain's own RAM. The default
    /// answers `true`, which is right where [`crate::Platform::bfn_to_local_pfn`] already
    /// answers only own RAM (x86 PV's M2P round trip) or no device is non-coherent.
    fn pfn_valid(&self, pfn: Pfn) -> bool {
        let _ = pfn;
        true
    }

    /// How many frames from `pfn` answer [`pfn_valid`](Self::pfn_valid) as `pfn` does:
    /// `(pfn_valid(pfn), n)` with `1 <= n <= max_frames` (`max_frames` is at least 1), each
    /// of the frames `pfn + i` for `i < n` answering the same. The run may stop short of a
    /// longer one, never beyond the first frame that answers otherwise.
    ///
    /// The engine asks this once per run of a direct mapping's frames at unmap and sync time,
    /// so that the cost of a range is the number of runs, not of frames. The default asks
    /// `pfn_valid` frame by frame up to the first change; an allocator that knows its RAM as
    /// ranges (memblock) answers in a step.
    fn pfn_valid_run(&self, pfn: Pfn, max_frames: u64) -> (bool, u64) {
        let first = self.pfn_valid(pfn);
        let mut n = 1;
        while n < max_frames {
            match pfn.checked_add(n) {
                Some(p) if self.pfn_valid(p) == first => n += 1,
                _ => break,
            }
        }
        (first, n)
    }

    /// Records that the engine made the live block of `2^order` pages at `phys` contiguous
    /// (Linux's `SetPageXenRemapped`), so that
    /// [`free_coherent_at`](crate::engine::DmaEngine::free_coherent_at) gives the exchange
    /// back. The default records nothing.
    fn set_exchanged(&self, phys: PhysAddr, order: u32) {
        let _ = (phys, order);
    }

    /// Takes a live block of `2^order` pages at `phys` out of use for good: the platform
    /// left it damaged ([`PlatformError::RegionDamaged`](crate::PlatformError::RegionDamaged):
    /// pages without a frame or a missed TLB flush), so it must never be handed out again.
    /// The engine calls this instead of [`free_pages`](Self::free_pages) and never frees
    /// the block afterwards. A kernel records the block (to report it, or to repair and
    /// free it later from the error's stranded frames); the default keeps nothing, which
    /// leaks the block: the safe choice. An allocator that keeps records answers
    /// [`BlockState::Free`] for the block from then on (it is no live allocation).
    fn quarantine(&self, phys: PhysAddr, order: u32) {
        let _ = (phys, order);
    }

    /// What the allocator knows of the block of `2^order` pages at `phys` (its own
    /// bookkeeping and Linux's `PageXenRemapped`), for
    /// [`free_coherent_at`](crate::engine::DmaEngine::free_coherent_at). `None` when the
    /// allocator keeps no records (the default): `free_coherent_at` then refuses to free.
    fn block_state(&self, phys: PhysAddr, order: u32) -> Option<BlockState> {
        let _ = (phys, order);
        None
    }
}

/// What a [`PageAllocator`] that keeps records says of a block
/// ([`PageAllocator::block_state`]).
///
/// An allocator that keeps records answers [`Allocated`](Self::Allocated) exactly for the
/// first page of a live allocation of that order (with `exchanged: false` until
/// [`PageAllocator::set_exchanged`] is called for it, and forgotten at
/// [`PageAllocator::free_pages`]), and [`Free`](Self::Free) otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// Not the start of a live allocation of that order: never allocated, already freed,
    /// or allocated with another order.
    Free,
    /// A live allocation of that order.
    Allocated {
        /// Whether [`PageAllocator::set_exchanged`] was called for it.
        exchanged: bool,
    },
}

/// A [`PageAllocator`] with no pages: coherent allocations fail with
/// [`DmaError::CoherentNoMemory`](crate::engine::DmaError::CoherentNoMemory) and every frame
/// is taken for the domain's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoPageAllocator;

// SAFETY: hands out nothing; `pfn_valid`'s default is documented as the caller's choice.
unsafe impl PageAllocator for NoPageAllocator {
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr> {
        let _ = order;
        None
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        let _ = (phys, order);
    }
}

// SAFETY: forwards to `A`, which upholds the contract.
unsafe impl<A: PageAllocator + ?Sized> PageAllocator for &A {
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr> {
        (**self).alloc_pages(order)
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { (**self).free_pages(phys, order) }
    }

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        (**self).pfn_valid(pfn)
    }

    fn pfn_valid_run(&self, pfn: Pfn, max_frames: u64) -> (bool, u64) {
        (**self).pfn_valid_run(pfn, max_frames)
    }

    fn set_exchanged(&self, phys: PhysAddr, order: u32) {
        (**self).set_exchanged(phys, order);
    }

    fn quarantine(&self, phys: PhysAddr, order: u32) {
        (**self).quarantine(phys, order);
    }

    fn block_state(&self, phys: PhysAddr, order: u32) -> Option<BlockState> {
        (**self).block_state(phys, order)
    }
}
