//! A simulated dom0 kernel (x86 PV or arm64) for [`SwiotlbHal`](swiotlb_xen_virtio::SwiotlbHal): the
//! `swiotlb-xen` integration tests' machine and engine fixtures (included with `#[path]`),
//! a page allocator that keeps Linux's per-block records, and the CPU's view of the memory
//! virtio-drivers touches through pointers.
//!
//! The simulator's memory is frame storage behind a lock, not host memory a pointer can
//! reach, so the kernel's "linear map" is a set of host *shadows*, one per range of dom0
//! memory that the CPU reaches by pointer (coherent allocations, buffers the test places
//! in dom0's RAM). The simulated device works on dom0's memory at bus addresses; every
//! device access goes through [`World::device_read`] and [`World::device_write`], which
//! write the shadows back before it and, for a write, read them in again after it. With a
//! device that only runs inside those calls, that is exactly coherent memory.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support"
)]

#[path = "../../../swiotlb-xen/tests/common/mod.rs"]
pub mod common;

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use common::*;
use swiotlb_core::engine::{BlockState, PageAllocator};
use swiotlb_core::{BusAddr, Device, DmaMask, Pfn, PhysAddr};
use xen_sim::{SimDevice, SimMemory, Xen};

/// A page allocator that also keeps, per live block, its order and whether the engine
/// exchanged it (Linux's `PageXenRemapped`), as `free_coherent_at` needs.
#[derive(Debug)]
pub struct Recorded<A> {
    /// The allocator.
    pub inner: A,
    /// `(first byte, order, exchanged)` of each live block.
    blocks: Mutex<Vec<(u64, u32, bool)>>,
}

impl<A> Recorded<A> {
    /// Wraps `inner`.
    pub fn new(inner: A) -> Self {
        Self {
            inner,
            blocks: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(u64, u32, bool)>> {
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Live blocks.
    pub fn live(&self) -> usize {
        self.lock().len()
    }
}

// SAFETY: forwards the allocation itself to `A`; the records are exact (added at
// allocation, removed at free, under a mutex).
unsafe impl<A: PageAllocator> PageAllocator for Recorded<A> {
    fn alloc_pages(&self, order: u32) -> Option<PhysAddr> {
        let phys = self.inner.alloc_pages(order)?;
        self.lock().push((phys.as_u64(), order, false));
        Some(phys)
    }

    unsafe fn free_pages(&self, phys: PhysAddr, order: u32) {
        let mut blocks = self.lock();
        let i = blocks
            .iter()
            .position(|&(p, o, _)| p == phys.as_u64() && o == order)
            .expect("the engine frees only live blocks");
        blocks.swap_remove(i);
        drop(blocks);
        // SAFETY: the caller's promise, passed on.
        unsafe { self.inner.free_pages(phys, order) }
    }

    fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.inner.pfn_valid(pfn)
    }

    fn set_exchanged(&self, phys: PhysAddr, order: u32) {
        for b in self.lock().iter_mut() {
            if b.0 == phys.as_u64() && b.1 == order {
                b.2 = true;
            }
        }
    }

    fn block_state(&self, phys: PhysAddr, order: u32) -> Option<BlockState> {
        let state = self
            .lock()
            .iter()
            .find(|&&(p, o, _)| p == phys.as_u64() && o == order)
            .map_or(BlockState::Free, |&(_, _, exchanged)| {
                BlockState::Allocated { exchanged }
            });
        Some(state)
    }
}

/// A simulated machine a kernel runs on: the `swiotlb-xen` tests' [`Pv`] or [`Arm`].
pub trait Machine: Sync + Send + Sized + 'static {
    /// The engine's platform on it.
    type Platform: swiotlb_core::Platform + 'static;
    /// A fresh machine.
    fn new() -> Self;
    /// The simulated Xen.
    fn xen(&self) -> &Xen;
    /// The CPU's view of dom0's memory.
    fn memory(&self) -> SimMemory;
    /// `n` fresh pages of dom0 RAM, the first frame a multiple of `align`.
    fn alloc_aligned(&self, n: u64, align: u64) -> PhysAddr;
    /// The machine address the CPU reaches at `phys`.
    fn machine(&self, phys: PhysAddr) -> u64;
    /// The engine's platform.
    fn platform(&'static self) -> Self::Platform;
    /// The kernel's page allocator over `n` pages.
    fn pages(&'static self, n: u64) -> SimPages;
}

impl Machine for Pv {
    type Platform = SimPv<'static>;
    fn new() -> Self {
        Pv::new()
    }
    fn xen(&self) -> &Xen {
        &self.xen
    }
    fn memory(&self) -> SimMemory {
        self.guest.memory()
    }
    fn alloc_aligned(&self, n: u64, align: u64) -> PhysAddr {
        self.guest.alloc_aligned(n, align)
    }
    fn machine(&self, phys: PhysAddr) -> u64 {
        Pv::machine(self, phys).as_u64()
    }
    fn platform(&'static self) -> Self::Platform {
        sim::pv_platform(&self.xen, &self.guest)
    }
    fn pages(&'static self, n: u64) -> SimPages {
        SimPages::pv(&self.guest, n)
    }
}

impl Machine for Arm {
    type Platform = ArmPlatform<'static>;
    fn new() -> Self {
        Arm::new()
    }
    fn xen(&self) -> &Xen {
        &self.xen
    }
    fn memory(&self) -> SimMemory {
        self.guest.memory()
    }
    fn alloc_aligned(&self, n: u64, align: u64) -> PhysAddr {
        self.guest.alloc_aligned(n, align)
    }
    fn machine(&self, phys: PhysAddr) -> u64 {
        self.guest
            .stage2_lookup(phys)
            .unwrap_or_else(|| panic!("{phys} is not mapped"))
            .as_u64()
    }
    fn platform(&'static self) -> Self::Platform {
        Arm::platform(self)
    }
    fn pages(&'static self, n: u64) -> SimPages {
        SimPages::arm(&self.guest, n)
    }
}

/// The engine of a simulated kernel on machine `M`.
pub type Engine<M> = SimEngine<<M as Machine>::Platform, Recorded<SimPages>>;

/// A host shadow of `len` bytes of dom0 memory at `phys`.
struct Shadow {
    phys: PhysAddr,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the shadow is a heap block the world owns; accesses are serialised by the tests
// (the device runs only inside the world's calls).
unsafe impl Send for Shadow {}

/// The simulated kernel: the machine, its engine, the virtio device (a coherent simulated
/// DMA device with a mask) and the CPU's shadows.
pub struct World<M: Machine> {
    /// The machine (leaked: the kernel's engine is `'static`).
    pub m: &'static M,
    /// The engine.
    pub engine: Engine<M>,
    /// The simulated device.
    pub sdev: SimDevice,
    /// The device as the engine sees it.
    pub dev: Device,
    shadows: Mutex<Vec<Shadow>>,
}

// SAFETY: the shadows' pointers are owned blocks, used under the mutex or by the tests'
// single driver thread.
unsafe impl<M: Machine> Sync for World<M> {}
// SAFETY: as above.
unsafe impl<M: Machine> Send for World<M> {}

impl<M: Machine> World<M> {
    /// A dom0 with a 1 MiB pool, 64 pages for coherent allocations and a device with
    /// `mask`, cache-coherent or not.
    pub fn new(mask: DmaMask, coherent: bool) -> Self {
        let m: &'static M = Box::leak(Box::new(M::new()));
        let pool_bytes = 1 << 20;
        let n = pool_bytes / PAGE;
        let pool = m.alloc_aligned(n, n.next_power_of_two());
        let pages = Recorded::new(m.pages(64));
        let engine = build_engine(m.platform(), m.memory(), pool, pool_bytes, pages);
        let sdev = m.xen().device(mask, coherent);
        let dev = sdev.core_device();
        Self {
            m,
            engine,
            sdev,
            dev,
            shadows: Mutex::new(Vec::new()),
        }
    }

    fn shadows(&self) -> MutexGuard<'_, Vec<Shadow>> {
        self.shadows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The CPU's pointer to `len` bytes of dom0 memory at `phys`: a new page-aligned
    /// shadow holding what the memory holds now.
    pub fn map(&self, phys: PhysAddr, len: usize) -> NonNull<u8> {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("a valid layout");
        // SAFETY: a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).expect("memory");
        // SAFETY: the block was just allocated with `len` bytes and is used by nobody yet.
        self.m.memory().read(phys, unsafe {
            std::slice::from_raw_parts_mut(ptr.as_ptr(), len)
        });
        self.shadows().push(Shadow { phys, ptr, len });
        ptr
    }

    /// `pages` pages of dom0 RAM the CPU reaches by pointer, as a slice.
    pub fn ram(&self, pages: u64) -> (PhysAddr, &'static mut [u8]) {
        let phys = self.m.alloc_aligned(pages, 1);
        // CAST: test sizes fit usize.
        let len = (pages * PAGE) as usize;
        let ptr = self.map(phys, len);
        // SAFETY: the shadow lives for ever and this is the only reference made to it.
        (phys, unsafe {
            std::slice::from_raw_parts_mut(ptr.as_ptr(), len)
        })
    }

    /// The kernel's `virt_to_phys`: the dom0 address of a buffer inside one shadow.
    pub fn virt_to_phys(&self, buf: NonNull<[u8]>) -> Option<PhysAddr> {
        let addr = buf.cast::<u8>().as_ptr().addr();
        self.shadows().iter().find_map(|s| {
            let off = addr.checked_sub(s.ptr.as_ptr().addr())?;
            // CAST: offsets fit u64.
            (off + buf.len() <= s.len).then(|| PhysAddr::new(s.phys.as_u64() + off as u64))
        })
    }

    /// Writes every shadow back to dom0 memory (the CPU's writes reach memory).
    fn flush(&self) {
        for s in self.shadows().iter() {
            // SAFETY: the shadow is live; no reference to it is used during the copy.
            let data = unsafe { std::slice::from_raw_parts(s.ptr.as_ptr(), s.len) };
            self.m.memory().write(s.phys, data);
        }
    }

    /// Reads every shadow from dom0 memory (the device's writes reach the CPU).
    fn fetch(&self) {
        for s in self.shadows().iter() {
            // SAFETY: as in `flush`.
            let buf = unsafe { std::slice::from_raw_parts_mut(s.ptr.as_ptr(), s.len) };
            self.m.memory().read(s.phys, buf);
        }
    }

    /// The device reads `len` bytes at `bus`.
    pub fn device_read(&self, bus: BusAddr, len: usize) -> Vec<u8> {
        self.flush();
        self.sdev.read(bus, len).expect("device read")
    }

    /// The device writes `data` at `bus`.
    pub fn device_write(&self, bus: BusAddr, data: &[u8]) {
        self.flush();
        self.sdev.write(bus, data).expect("device write");
        self.fetch();
    }

    /// Runs `f` as the device: shadows flushed before, fetched after.
    pub fn as_device<T>(&self, f: impl FnOnce(&SimDevice) -> T) -> T {
        self.flush();
        let r = f(&self.sdev);
        self.fetch();
        r
    }

    /// The simulator's, the pool's and the device's checks.
    pub fn check(&self) {
        check(self.m.xen(), &self.engine, &[&self.sdev]);
    }
}

/// A kernel type made by [`kernel!`], with its world.
pub trait HasWorld: swiotlb_xen_virtio::SwiotlbKernel {
    /// The machine it runs on.
    type M: Machine;
    /// Its world.
    fn world() -> &'static World<Self::M>;
}

/// Defines a kernel type `$name` over its own [`World`] on machine `$machine` with a device
/// of `$mask`, cache-coherent unless a fourth argument says `false`.
macro_rules! kernel {
    ($name:ident, $machine:ty, $mask:expr) => {
        kernel!($name, $machine, $mask, true);
    };
    ($name:ident, $machine:ty, $mask:expr, $coherent:expr) => {
        /// A simulated kernel with its own machine.
        struct $name;

        impl crate::support::HasWorld for $name {
            type M = $machine;

            fn world() -> &'static crate::support::World<$machine> {
                static WORLD: std::sync::OnceLock<crate::support::World<$machine>> =
                    std::sync::OnceLock::new();
                WORLD.get_or_init(|| crate::support::World::new($mask, $coherent))
            }
        }

        // SAFETY: one engine per kernel type, for ever; the shadows are the CPU's view of
        // dom0's memory, and `virt_to_phys` answers only for pointers inside one.
        unsafe impl swiotlb_xen_virtio::SwiotlbKernel for $name {
            type Platform = <$machine as crate::support::Machine>::Platform;
            type Memory = xen_sim::SimMemory;
            type Slots = Box<[swiotlb_core::Slot]>;
            type Pages = crate::support::Recorded<crate::support::SimPages>;

            fn engine() -> &'static crate::support::Engine<$machine> {
                &Self::world().engine
            }

            fn device() -> &'static swiotlb_core::Device {
                &Self::world().dev
            }

            fn phys_to_virt(phys: swiotlb_core::PhysAddr, len: usize) -> std::ptr::NonNull<u8> {
                Self::world().map(phys, len)
            }

            fn virt_to_phys(buf: std::ptr::NonNull<[u8]>) -> Option<swiotlb_core::PhysAddr> {
                Self::world().virt_to_phys(buf)
            }

            unsafe fn mmio_phys_to_virt(paddr: u64, size: usize) -> std::ptr::NonNull<u8> {
                panic!("no MMIO on the simulated machine ({paddr:#x}, {size:#x} bytes)")
            }
        }
    };
}
