//! A tiny page allocator for coherent allocations: 64 pages of `.bss`, one bit each, and
//! the records [`PageAllocator::block_state`] needs (each live block's order and whether the
//! engine exchanged it), so that virtio-drivers' `dma_dealloc` can free from addresses.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use swiotlb_xen::{BlockState, PageAllocator, Pfn, PhysAddr};

use crate::checks::{phys_of, virt_of};

/// Pages the allocator hands out.
pub const PAGES: usize = 64;

/// The pages, aligned to their total size so that every naturally aligned block is too.
#[repr(C, align(262144))]
struct Area([u8; PAGES * 4096]);

/// The allocator's memory, reached only through raw pointers.
static mut AREA: Area = Area([0; PAGES * 4096]);

/// The P2M's length, set at boot: `pfn_valid`'s bound.
pub static NR_PAGES: AtomicU64 = AtomicU64::new(0);

/// A first-fit allocator of naturally aligned blocks of up to 64 pages.
#[derive(Debug)]
pub struct Pages {
    used: AtomicU64,
    /// Per page: the order of the live block starting there, or [`NO_BLOCK`].
    starts: [AtomicU8; PAGES],
    /// Per page: set when the block starting there was made contiguous by the engine.
    exchanged: AtomicU64,
}

/// `starts` of a page where no live block starts.
const NO_BLOCK: u8 = u8::MAX;

/// The kernel's allocator.
pub static ALLOCATOR: Pages = Pages {
    used: AtomicU64::new(0),
    starts: [const { AtomicU8::new(NO_BLOCK) }; PAGES],
    exchanged: AtomicU64::new(0),
};

impl Pages {
    /// The bitmap of pages in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    fn base() -> PhysAddr {
        phys_of(&raw const AREA)
    }

    /// The page index of `phys` if it is a page of the area.
    fn index(phys: PhysAddr) -> Option<usize> {
        let offset = phys.offset_from(Self::base())?;
        // CAST: checked below PAGES.
        (offset % 4096 == 0 && offset / 4096 < PAGES as u64).then_some((offset / 4096) as usize)
    }

    fn mask(order: u32) -> Option<u64> {
        match order {
            0..6 => Some((1u64 << (1u32 << order)) - 1),
            6 => Some(u64::MAX),
            _ => None,
        }
    }
}

// SAFETY: blocks are claimed with a compare-exchange on the bitmap, so each is handed to one
// caller; they are naturally aligned (the area is aligned to its size), zeroed before being
// returned, and lie in the kernel's RAM (its `.bss`).
unsafe impl PageAllocator for Pages {
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr> {
        let mask = Self::mask(order)?;
        let n = 1usize << order;
        let mut used = self.used();
        let mut start = 0;
        while start < PAGES {
            let want = mask << start;
            if used & want != 0 {
                start += n;
                continue;
            }
            match self
                .used
                .compare_exchange(used, used | want, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // CAST: order <= 6.
                    self.starts[start].store(order as u8, Ordering::Release);
                    let phys = PhysAddr::new(Self::base().as_u64() + (start as u64) * 4096);
                    // SAFETY: the block was just claimed and is mapped (the image's .bss).
                    unsafe { virt_of(phys).write_bytes(0, n * 4096) };
                    return Some(phys);
                }
                Err(now) => used = now,
            }
        }
        None
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        let (Some(mask), Some(start)) = (Self::mask(order), Self::index(phys)) else {
            return;
        };
        self.starts[start].store(NO_BLOCK, Ordering::Release);
        self.exchanged.fetch_and(!(1 << start), Ordering::AcqRel);
        self.used.fetch_and(!(mask << start), Ordering::AcqRel);
    }

    fn set_exchanged(&self, phys: PhysAddr, order: u32) {
        if let Some(start) = Self::index(phys)
            && u32::from(self.starts[start].load(Ordering::Acquire)) == order
        {
            self.exchanged.fetch_or(1 << start, Ordering::AcqRel);
        }
    }

    fn block_state(&self, phys: PhysAddr, order: u32) -> Option<BlockState> {
        let live = Self::index(phys)
            .filter(|&i| u32::from(self.starts[i].load(Ordering::Acquire)) == order);
        Some(match live {
            Some(i) => BlockState::Allocated {
                exchanged: self.exchanged.load(Ordering::Acquire) & (1 << i) != 0,
            },
            None => BlockState::Free,
        })
    }

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        pfn.as_u64() < NR_PAGES.load(Ordering::Relaxed)
    }
}
