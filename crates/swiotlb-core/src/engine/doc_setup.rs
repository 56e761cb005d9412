// The machine of the `DmaEngine` examples, included by their hidden first line
// (`mod doc { include!("doc_setup.rs"); }`). It is not part of the crate.
//
// A platform without Xen whose bus addresses are the physical addresses, over 2 MiB of heap
// memory at physical `RAM_BASE`, 1 MiB below 4 GiB and 1 MiB above:
//
// - the bounce pool: 256 KiB (128 slots) at `RAM_BASE`;
// - `Machine::low(i)`: page `i` of 64 KiB of buffers below 4 GiB (a 32-bit device reaches
//   them directly);
// - the coherent pages: 512 KiB below 4 GiB, handed out by `Pages`, which keeps records;
// - `Machine::high(i)`: page `i` of 1 MiB of buffers above 4 GiB (bounced for a 32-bit
//   device).
//
// The "device" reads and writes bus addresses, which are physical addresses here.

use std::sync::Mutex;
use swiotlb_core::engine::{BlockState, DmaEngine, PageAllocator};
use swiotlb_core::{
    Bfn, BouncePool, BusAddr, LinearMap, Pfn, PhysAddr, Platform, PlatformError, Slot,
    slots_with_ages,
};

pub const RAM_BASE: u64 = (1 << 32) - (1 << 20);
pub const RAM_BYTES: usize = 2 << 20;
pub const POOL_BYTES: usize = 256 << 10;
pub const LOW_BUFFERS: u64 = RAM_BASE + POOL_BYTES as u64;
pub const COHERENT: u64 = RAM_BASE + (512 << 10);
pub const HIGH_BUFFERS: u64 = 1 << 32;

/// Bus address = physical address; every device is cache-coherent.
pub struct Identity;

// SAFETY: the identity is the translation of this machine; a region is contiguous as it is.
unsafe impl Platform for Identity {
    fn pfn_to_bfn(&self, pfn: Pfn) -> Option<Bfn> {
        Some(Bfn::new(pfn.as_u64()))
    }

    fn bfn_to_local_pfn(&self, bfn: Bfn) -> Option<Pfn> {
        Some(Pfn::new(bfn.as_u64()))
    }

    unsafe fn create_contiguous_region(
        &self,
        phys: PhysAddr,
        order: u32,
        address_bits: u32,
    ) -> Result<BusAddr, PlatformError> {
        let last = phys.as_u64() + (4096 << order) - 1;
        if address_bits < 64 && last >> address_bits != 0 {
            return Err(PlatformError::Unsupported {
                what: "memory below the limit",
            });
        }
        Ok(BusAddr::new(phys.as_u64()))
    }

    unsafe fn destroy_contiguous_region(
        &self,
        _phys: PhysAddr,
        _order: u32,
    ) -> Result<(), PlatformError> {
        Ok(())
    }
}

/// The kernel's page allocator over the coherent pages: hands out naturally aligned blocks
/// (never reused) and keeps the records `free_coherent_at` needs.
#[derive(Default)]
pub struct Pages {
    next: Mutex<u64>,
    live: Mutex<Vec<(PhysAddr, u32, bool)>>,
}

// SAFETY: every block is handed out once, zeroed (fresh heap memory), aligned to its size,
// inside the machine's RAM; the records answer as `BlockState` says.
unsafe impl PageAllocator for Pages {
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr> {
        let size = 4096u64 << order;
        let mut next = self.next.lock().unwrap();
        let at = (COHERENT + *next).next_multiple_of(size);
        if at + size > COHERENT + (512 << 10) {
            return None;
        }
        *next = at + size - COHERENT;
        self.live
            .lock()
            .unwrap()
            .push((PhysAddr::new(at), order, false));
        Some(PhysAddr::new(at))
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        self.live
            .lock()
            .unwrap()
            .retain(|&(p, o, _)| (p, o) != (phys, order));
    }

    fn set_exchanged(&self, phys: PhysAddr, order: u32) {
        for r in self.live.lock().unwrap().iter_mut() {
            if (r.0, r.1) == (phys, order) {
                r.2 = true;
            }
        }
    }

    fn block_state(&self, phys: PhysAddr, order: u32) -> Option<BlockState> {
        let live = self.live.lock().unwrap();
        Some(match live.iter().find(|r| (r.0, r.1) == (phys, order)) {
            Some(&(_, _, exchanged)) => BlockState::Allocated { exchanged },
            None => BlockState::Free,
        })
    }
}

/// The engine of the examples.
pub type Engine = DmaEngine<Identity, LinearMap, Vec<Slot>, Pages>;

/// The machine's memory, as the CPU (and, bus = physical, the device) reaches it.
#[derive(Clone, Copy)]
pub struct Machine {
    base: *mut u8,
}

impl Machine {
    /// Page `i` of the buffers below 4 GiB.
    pub fn low(&self, i: u64) -> PhysAddr {
        assert!(i < 16);
        PhysAddr::new(LOW_BUFFERS + i * 4096)
    }

    /// Page `i` of the buffers above 4 GiB.
    pub fn high(&self, i: u64) -> PhysAddr {
        assert!(i < 256);
        PhysAddr::new(HIGH_BUFFERS + i * 4096)
    }

    fn ptr(&self, phys: u64, len: usize) -> *mut u8 {
        let off = phys.checked_sub(RAM_BASE).expect("below the machine's RAM") as usize;
        assert!(off + len <= RAM_BYTES, "beyond the machine's RAM");
        // SAFETY: inside the one allocation behind `base`.
        unsafe { self.base.add(off) }
    }

    /// The CPU writes `data` at `phys`.
    pub fn write(&self, phys: PhysAddr, data: &[u8]) {
        // SAFETY: inside the machine's RAM, which no reference covers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.ptr(phys.as_u64(), data.len()),
                data.len(),
            )
        }
    }

    /// The CPU reads `len` bytes at `phys`.
    pub fn read(&self, phys: PhysAddr, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        // SAFETY: as for `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr(phys.as_u64(), len), out.as_mut_ptr(), len)
        }
        out
    }

    /// The device reads `len` bytes at `bus`.
    pub fn device_read(&self, bus: BusAddr, len: usize) -> Vec<u8> {
        self.read(PhysAddr::new(bus.as_u64()), len)
    }

    /// The device writes `data` at `bus`.
    pub fn device_write(&self, bus: BusAddr, data: &[u8]) {
        self.write(PhysAddr::new(bus.as_u64()), data)
    }

    /// Whether `bus` is a bounce buffer of the engine's pool.
    pub fn bounced(&self, bus: BusAddr) -> bool {
        (RAM_BASE..RAM_BASE + POOL_BYTES as u64).contains(&bus.as_u64())
    }

    /// A `PhysMemory` over the whole machine.
    pub fn memory(&self) -> LinearMap {
        // SAFETY: the machine's RAM is one live allocation, never freed.
        unsafe { LinearMap::new(self.base, PhysAddr::new(RAM_BASE), RAM_BYTES) }
    }
}

/// A new machine: its memory (leaked, zeroed) and nothing else.
pub fn bare_machine() -> Machine {
    let ram = Box::into_raw(vec![0u8; RAM_BYTES].into_boxed_slice());
    Machine { base: ram.cast() }
}

/// A new machine with an engine: the pool of 128 slots at `RAM_BASE`, the `Pages`.
pub fn machine() -> (Engine, Machine) {
    let m = bare_machine();
    // Room for the records of `DmaEngine::set_mapping_clock` too.
    let slots: Vec<Slot> = (0..slots_with_ages(POOL_BYTES / 2048)).map(|_| Slot::new()).collect();
    // SAFETY: the pool's region is the pool's alone; the map reaches all of the RAM.
    let pool = unsafe { BouncePool::new(m.memory(), PhysAddr::new(RAM_BASE), 128, 1, slots) }
        .expect("a pool");
    // SAFETY: the identity is this machine's translation; the pool and every buffer are in
    // its RAM.
    let engine =
        unsafe { DmaEngine::new(Identity, Some(pool), Pages::default()) }.expect("an engine");
    (engine, m)
}

/// The growth hook of the examples: two 256 KiB blocks of the high RAM (above the buffers
/// `high(0..128)`), one of them a reserve for atomic context.
pub struct GrowPages {
    free: Mutex<Vec<PhysAddr>>,
    reserve: Mutex<Vec<PhysAddr>>,
    pub atomic: std::sync::atomic::AtomicBool,
}

impl GrowPages {
    pub fn new() -> Self {
        let at = |i: u64| PhysAddr::new(HIGH_BUFFERS + (512 << 10) + i * (256 << 10));
        Self {
            free: Mutex::new(vec![at(0)]),
            reserve: Mutex::new(vec![at(1)]),
            atomic: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

// SAFETY: each block is the machine's RAM, aligned to 256 KiB, handed out once until freed;
// in atomic context only the reserve block is handed out.
unsafe impl swiotlb_core::engine::GrowthHook for GrowPages {
    fn in_atomic(&self) -> bool {
        self.atomic.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn alloc_pages(&self, order: u32, atomic: bool) -> Option<PhysAddr> {
        if order != 6 {
            return None;
        }
        let from = if atomic { &self.reserve } else { &self.free };
        from.lock().unwrap().pop()
    }
    unsafe fn free_pages(&self, phys: PhysAddr, _order: u32) {
        let reserve = phys.as_u64() == HIGH_BUFFERS + (768 << 10);
        let to = if reserve { &self.reserve } else { &self.free };
        to.lock().unwrap().push(phys);
    }
    fn alloc_slots(&self, nslabs: usize, _atomic: bool) -> Option<&'static [swiotlb_core::Slot]> {
        // The examples' machine lives for the whole example: its metadata may too.
        let slots: Vec<swiotlb_core::Slot> = (0..nslabs).map(|_| swiotlb_core::Slot::new()).collect();
        Some(Box::leak(slots.into_boxed_slice()))
    }
}
