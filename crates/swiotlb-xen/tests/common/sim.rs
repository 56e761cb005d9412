//! What a dom0 kernel provides to the DMA engine, on the simulated machine: the platforms
//! built over the simulator's tables, the kernel's cache maintenance (arm64) and its page
//! allocator.
//!
//! This file and `grants.rs` are the simulator fixtures of both the `swiotlb-xen` integration
//! tests and the `sim-dom0` example (which includes them with `#[path]`), so that the tests
//! and the demo drive the library through the very same set-up. They live in this crate so
//! that its published package carries them.

use std::sync::Mutex;

use swiotlb_core::engine::PageAllocator;
use swiotlb_core::{Pfn, PhysAddr};
use swiotlb_xen_arm64::CacheOps;
use swiotlb_xen_x86_pv::X86PvPlatform;
use xen_sim::{ArmGuest, Domain, PvGuest, SimMemory, Xen};

const PAGE: u64 = 4096;

/// The x86 PV platform of dom0 on the simulated machine: dom0's P2M, the M2P, the linear
/// map, dom0's hypercalls and the CPU's view of memory.
pub type SimPv<'a> = X86PvPlatform<'a, Domain, SimMemory>;

/// Builds dom0's x86 PV platform over the simulator's tables.
#[must_use]
pub fn pv_platform<'a>(xen: &Xen, guest: &'a PvGuest) -> SimPv<'a> {
    // SAFETY: these are the simulated dom0's own P2M, M2P, linear map and memory, and its
    // hypercalls; the simulator checks every change Xen would check.
    unsafe {
        X86PvPlatform::new(
            guest.p2m(),
            guest.m2p(),
            guest.linear_base(),
            xen.dom0(),
            guest.memory(),
        )
    }
}

/// The arm64 kernel's cache maintenance of its own memory (`dcache_clean_poc` and
/// `dcache_inval_poc`), done by the simulated CPU so that the cache model sees it.
#[derive(Clone, Debug)]
pub struct SimCache(pub ArmGuest);

impl CacheOps for SimCache {
    fn clean(&self, phys: PhysAddr, len: usize) {
        self.0.cache_clean(phys, len);
    }

    fn invalidate(&self, phys: PhysAddr, len: usize) {
        self.0.cache_invalidate(phys, len);
    }

    fn clean_invalidate(&self, phys: PhysAddr, len: usize) {
        self.0.cache_clean_invalidate(phys, len);
    }
}

/// Which simulated guest a [`SimPages`] serves.
#[derive(Clone, Debug)]
enum Guest {
    Pv(PvGuest),
    Arm(ArmGuest),
}

impl Guest {
    fn memory(&self) -> SimMemory {
        match self {
            Guest::Pv(g) => g.memory(),
            Guest::Arm(g) => g.memory(),
        }
    }
}

/// The kernel's page allocator for coherent allocations: a naturally aligned region of the
/// simulated dom0 handed out in naturally aligned power-of-two blocks (first fit), zeroed on
/// allocation. It also answers `pfn_valid` for dom0's own RAM. A quarantined block stays
/// taken for good and is listed ([`SimPages::quarantined`]); every free is logged
/// ([`SimPages::freed`]).
#[derive(Debug)]
pub struct SimPages {
    guest: Guest,
    base: PhysAddr,
    used: Mutex<Vec<bool>>,
    quarantined: Mutex<Vec<(PhysAddr, u32)>>,
    freed: Mutex<Vec<(PhysAddr, u32)>>,
}

impl SimPages {
    /// Reserves `pages` (a power of two) naturally aligned pages of the x86 PV dom0.
    #[must_use]
    pub fn pv(guest: &PvGuest, pages: u64) -> Self {
        Self::new(
            Guest::Pv(guest.clone()),
            guest.alloc_aligned(pages, pages),
            pages,
        )
    }

    /// Reserves `pages` (a power of two) naturally aligned pages of the arm64 dom0.
    #[must_use]
    pub fn arm(guest: &ArmGuest, pages: u64) -> Self {
        Self::new(
            Guest::Arm(guest.clone()),
            guest.alloc_aligned(pages, pages),
            pages,
        )
    }

    fn new(guest: Guest, base: PhysAddr, pages: u64) -> Self {
        // CAST: a test region's page count fits usize.
        Self {
            guest,
            base,
            used: Mutex::new(vec![false; pages as usize]),
            quarantined: Mutex::new(Vec::new()),
            freed: Mutex::new(Vec::new()),
        }
    }

    /// Pages handed out and not given back, quarantined pages included.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.lock().iter().filter(|&&u| u).count()
    }

    /// The blocks the engine quarantined, `(first byte, order)`, in order.
    #[must_use]
    pub fn quarantined(&self) -> Vec<(PhysAddr, u32)> {
        self.quarantined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Pages in quarantined blocks.
    #[must_use]
    #[allow(dead_code, reason = "for the fault matrix, which includes this file")]
    pub fn quarantined_pages(&self) -> usize {
        self.quarantined().iter().map(|&(_, o)| 1usize << o).sum()
    }

    /// Every block given back with `free_pages`, `(first byte, order)`, in order.
    #[must_use]
    #[allow(dead_code, reason = "for the fault matrix, which includes this file")]
    pub fn freed(&self) -> Vec<(PhysAddr, u32)> {
        self.freed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether `phys` lies in this allocator's region.
    #[must_use]
    pub fn contains(&self, phys: PhysAddr) -> bool {
        // CAST: a test region's page count fits u64.
        let len = self.lock().len() as u64 * PAGE;
        phys >= self.base && phys.as_u64() < self.base.as_u64() + len
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// SAFETY: blocks come from a region of dom0's RAM reserved for this allocator alone,
// naturally aligned, zeroed through the CPU before they are handed out, and handed out at
// most once until freed (the `used` map, under a mutex). `pfn_valid` is true only for dom0's
// own RAM.
unsafe impl PageAllocator for SimPages {
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr> {
        let n = 1usize.checked_shl(order)?;
        let mut used = self.lock();
        let first = (0..used.len())
            .step_by(n)
            .find(|&i| i + n <= used.len() && used[i..i + n].iter().all(|&u| !u))?;
        used[first..first + n].fill(true);
        drop(used);
        // CAST: indices and sizes of a test region fit u64.
        let phys = PhysAddr::new(self.base.as_u64() + first as u64 * PAGE);
        // CAST: 4096 fits usize.
        self.guest
            .memory()
            .write(phys, &vec![0u8; n * PAGE as usize]);
        Some(phys)
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        // CAST: the caller gives back a block of this region.
        let first = ((phys.as_u64() - self.base.as_u64()) / PAGE) as usize;
        let n = 1usize << order;
        let mut used = self.lock();
        debug_assert!(used[first..first + n].iter().all(|&u| u), "double free");
        assert!(
            !self.quarantined().contains(&(phys, order)),
            "{phys} (order {order}) is quarantined and freed"
        );
        used[first..first + n].fill(false);
        self.freed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((phys, order));
    }

    fn quarantine(&self, phys: PhysAddr, order: u32) {
        // The block stays taken in `used`: it is never handed out again.
        self.quarantined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((phys, order));
    }

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        match &self.guest {
            Guest::Pv(g) => pfn.as_u64() < g.nr_pages(),
            Guest::Arm(g) => g.is_ram(pfn.start()),
        }
    }

    /// dom0's RAM as ranges (the P2M's length, arm64's banks): one answer per range.
    fn pfn_valid_run(&self, pfn: Pfn, max_frames: u64) -> (bool, u64) {
        let p = pfn.as_u64();
        let max = max_frames.max(1);
        let ranges: Vec<(u64, u64)> = match &self.guest {
            Guest::Pv(g) => vec![(0, g.nr_pages())],
            Guest::Arm(g) => g
                .ram_banks()
                .iter()
                .map(|&(base, bytes)| (base.as_u64() / PAGE, bytes / PAGE))
                .collect(),
        };
        if let Some(&(b, n)) = ranges.iter().find(|&&(b, n)| p >= b && p - b < n) {
            return (true, (b + n - p).min(max));
        }
        let next = ranges.iter().map(|&(b, _)| b).filter(|&b| b > p).min();
        (false, next.map_or(max, |b| (b - p).min(max)))
    }
}

/// The kernel's growth hook on the simulated machine: pages for grown pools from one
/// [`SimPages`] region, and in atomic context only from a second one, the reserve set aside
/// beforehand. Whether the caller is in atomic context is a switch of the test
/// ([`SimGrowth::set_atomic`]).
#[derive(Debug)]
pub struct SimGrowth {
    /// The pages for growth outside atomic context.
    pub pages: SimPages,
    /// The reserve: the only pages handed out in atomic context.
    pub reserve: SimPages,
    atomic: std::sync::atomic::AtomicBool,
}

#[allow(dead_code, reason = "each user of the fixtures uses a part")]
impl SimGrowth {
    /// `pages` pages for growth and `reserve` pages of reserve (powers of two) of the x86
    /// PV dom0.
    #[must_use]
    pub fn pv(guest: &PvGuest, pages: u64, reserve: u64) -> Self {
        Self::with(SimPages::pv(guest, pages), SimPages::pv(guest, reserve))
    }

    /// The same on the arm64 dom0.
    #[must_use]
    pub fn arm(guest: &ArmGuest, pages: u64, reserve: u64) -> Self {
        Self::with(SimPages::arm(guest, pages), SimPages::arm(guest, reserve))
    }

    fn with(pages: SimPages, reserve: SimPages) -> Self {
        Self {
            pages,
            reserve,
            atomic: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the engine's caller is in atomic context from now on.
    pub fn set_atomic(&self, atomic: bool) {
        self.atomic
            .store(atomic, std::sync::atomic::Ordering::Relaxed);
    }

    /// Pages handed out and not given back, quarantined ones included, of both regions.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.pages.in_use() + self.reserve.in_use()
    }

    /// Quarantined pages of both regions.
    #[must_use]
    pub fn quarantined_pages(&self) -> usize {
        self.pages.quarantined_pages() + self.reserve.quarantined_pages()
    }

    fn region(&self, phys: PhysAddr) -> &SimPages {
        if self.reserve.contains(phys) {
            &self.reserve
        } else {
            &self.pages
        }
    }
}

// SAFETY: the blocks are `SimPages`' (dom0 RAM reserved for them, naturally aligned, handed
// out once); in atomic context only the reserve's.
unsafe impl swiotlb_core::engine::GrowthHook for SimGrowth {
    fn in_atomic(&self) -> bool {
        self.atomic.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn alloc_pages(&self, order: u32, atomic: bool) -> Option<PhysAddr> {
        if atomic {
            self.reserve.alloc_pages(order)
        } else {
            self.pages.alloc_pages(order)
        }
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        // SAFETY: the caller's promise, passed on to the region that handed the block out.
        unsafe { self.region(phys).free_pages(phys, order) }
    }

    fn quarantine(&self, phys: PhysAddr, order: u32) {
        self.region(phys).quarantine(phys, order);
    }
}
