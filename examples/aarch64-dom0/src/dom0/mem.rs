//! How the CPU and the simulated device reach memory.
//!
//! dom0 maps its RAM and the foreign window 1:1, so a physical address is a pointer.
//! [`IdentityMemory`] is the [`PhysMemory`] over those ranges (dom0's RAM banks as the
//! device tree lists them, recorded once at boot with [`set_ram`]); [`Grants`] knows which
//! machine frame each grant-mapped window frame holds, which is what the CPU-played device
//! of the cache-maintenance checks needs to turn a bus address into something the CPU can
//! touch.

use aarch64_dom0::fdt::{Banks, MAX_BANKS, Range};
use aarch64_dom0::layout::{
    FOREIGN_WINDOW, FOREIGN_WINDOW_SIZE, NR_GRANTS, RAM_MAP_BASE, RAM_MAP_SIZE,
};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use swiotlb_xen::{BufferMemory, PhysAddr, PhysMemory};

/// Whether `[addr, addr + len)` lies inside `[base, base + size)`.
fn inside(addr: u64, len: u64, base: u64, size: u64) -> bool {
    addr >= base && addr.checked_add(len).is_some_and(|end| end <= base + size)
}

/// The range the identity map covers as Normal memory for RAM.
pub const RAM_MAP: Range = Range {
    base: RAM_MAP_BASE,
    size: RAM_MAP_SIZE,
};

/// dom0's RAM banks (base, size), written once at boot before anything reads them (one
/// CPU: relaxed atomics suffice).
static RAM: [(AtomicU64, AtomicU64); MAX_BANKS] =
    [const { (AtomicU64::new(0), AtomicU64::new(0)) }; MAX_BANKS];
static RAM_BANKS: AtomicUsize = AtomicUsize::new(0);

/// Records dom0's RAM banks (from the device tree Xen gave it); banks outside the range the
/// identity map covers as RAM are left out (the CPU could not reach them).
pub fn set_ram(banks: &Banks) {
    let mut kept = Banks::default();
    for b in banks.as_slice() {
        if RAM_MAP.contains(b.base, b.size) {
            kept.list[kept.len] = *b;
            kept.len += 1;
        }
    }
    let banks = &kept;
    for (slot, b) in RAM.iter().zip(banks.as_slice()) {
        slot.0.store(b.base, Relaxed);
        slot.1.store(b.size, Relaxed);
    }
    RAM_BANKS.store(banks.len, Relaxed);
}

/// dom0's RAM banks as recorded by [`set_ram`].
pub fn ram() -> Banks {
    let mut banks = Banks {
        len: RAM_BANKS.load(Relaxed).min(MAX_BANKS),
        ..Banks::default()
    };
    for (b, slot) in banks.list.iter_mut().zip(&RAM).take(banks.len) {
        *b = Range {
            base: slot.0.load(Relaxed),
            size: slot.1.load(Relaxed),
        };
    }
    banks
}

/// Whether `[addr, addr + len)` lies inside one of dom0's RAM banks.
pub fn in_ram(addr: u64, len: u64) -> bool {
    ram().contains(addr, len)
}

/// Whether the CPU reaches `[addr, addr + len)` through the identity map.
pub fn reachable(addr: u64, len: u64) -> bool {
    in_ram(addr, len) || inside(addr, len, FOREIGN_WINDOW, FOREIGN_WINDOW_SIZE)
}

/// dom0's RAM and the foreign window, reached 1:1.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityMemory;

// SAFETY: `copy` and `fill` touch exactly the bytes asked for, through the identity map, and
// only inside dom0's RAM and the foreign window (anything else is refused before any access).
unsafe impl PhysMemory for IdentityMemory {
    unsafe fn copy(&self, dst: PhysAddr, src: PhysAddr, len: usize) {
        // CAST: usize is 64 bits on aarch64.
        let n = len as u64;
        if !reachable(dst.as_u64(), n) || !reachable(src.as_u64(), n) {
            panic!("IdentityMemory: copy {src} -> {dst} ({len:#x} bytes) outside dom0's maps");
        }
        // SAFETY: both ranges are mapped 1:1 (checked above); the PhysMemory contract makes
        // them non-overlapping and free of references.
        unsafe {
            core::ptr::copy_nonoverlapping(
                core::ptr::with_exposed_provenance::<u8>(src.as_u64() as usize),
                core::ptr::with_exposed_provenance_mut::<u8>(dst.as_u64() as usize),
                len,
            );
        }
    }

    unsafe fn fill(&self, dst: PhysAddr, byte: u8, len: usize) {
        // CAST: usize is 64 bits on aarch64.
        if !reachable(dst.as_u64(), len as u64) {
            panic!("IdentityMemory: fill {dst} ({len:#x} bytes) outside dom0's maps");
        }
        // SAFETY: the range is mapped 1:1 (checked above) and, by the contract, unreferenced.
        unsafe {
            core::ptr::write_bytes(
                core::ptr::with_exposed_provenance_mut::<u8>(dst.as_u64() as usize),
                byte,
                len,
            );
        }
    }
}

// SAFETY: the physical side of each copy is checked as in `PhysMemory` (inside dom0's maps,
// else a panic before any access); the buffer side is the caller's pointer, used as given.
unsafe impl BufferMemory for IdentityMemory {
    unsafe fn copy_from_buffer(&self, dst: PhysAddr, src: core::ptr::NonNull<u8>, len: usize) {
        // CAST: usize is 64 bits on aarch64.
        if !reachable(dst.as_u64(), len as u64) {
            panic!("IdentityMemory: copy to {dst} ({len:#x} bytes) outside dom0's maps");
        }
        // SAFETY: `dst` is mapped 1:1 (checked) and unreferenced; `src` is valid for reads
        // and disjoint (the caller's promise).
        unsafe {
            core::ptr::copy_nonoverlapping(
                src.as_ptr(),
                core::ptr::with_exposed_provenance_mut::<u8>(dst.as_u64() as usize),
                len,
            );
        }
    }

    unsafe fn copy_to_buffer(&self, dst: core::ptr::NonNull<u8>, src: PhysAddr, len: usize) {
        // CAST: usize is 64 bits on aarch64.
        if !reachable(src.as_u64(), len as u64) {
            panic!("IdentityMemory: copy from {src} ({len:#x} bytes) outside dom0's maps");
        }
        // SAFETY: as in `copy_from_buffer`, the other way.
        unsafe {
            core::ptr::copy_nonoverlapping(
                core::ptr::with_exposed_provenance::<u8>(src.as_u64() as usize),
                dst.as_ptr(),
                len,
            );
        }
    }
}

/// One grant dom0 mapped: the window address it sits at and its machine address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The domU's page index (grant reference minus `FIRST_REF`).
    pub index: usize,
    /// `host_addr`: where dom0 reaches the page.
    pub host: u64,
    /// `dev_bus_addr`: the page's machine address.
    pub bus: u64,
}

/// The grants dom0 holds, for the simulated device's bus-to-CPU translation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Grants {
    /// The grants, in window order.
    pub list: [Grant; NR_GRANTS],
    /// How many are mapped.
    pub len: usize,
}

impl Grants {
    /// Where the CPU reaches bus address `bus` for `len` bytes (within one frame for foreign
    /// pages): a foreign page's machine address through its window frame, dom0's own memory
    /// 1:1. `None` for anything else (the device would be pointed at memory dom0 cannot
    /// vouch for).
    pub fn cpu_addr(&self, bus: u64, len: u64) -> Option<u64> {
        let frame = bus & !0xfff;
        if let Some(g) = self.list[..self.len].iter().find(|g| g.bus == frame) {
            return inside(bus, len, frame, 0x1000).then_some(g.host + (bus - frame));
        }
        in_ram(bus, len).then_some(bus)
    }
}

/// A non-coherent device played by the CPU, for the checks of the cache-maintenance
/// hypercalls (the real `edu` device sits behind a coherent host bridge, so the library
/// flushes nothing for it): it reaches each bus address the way the machine does (a foreign
/// page's machine frame is the page dom0 grant-mapped, dom0's own frames are 1:1), byte by
/// byte, without caches in between under TCG. The device DMA checks use the `edu` device.
pub struct Device<'a> {
    /// The translation.
    pub grants: &'a Grants,
}

impl Device<'_> {
    /// Reads `len` bytes at bus address `bus` into `out` (at most `out.len()`), frame by
    /// frame. `false` if some byte has no known memory behind it.
    pub fn read(&self, bus: u64, out: &mut [u8]) -> bool {
        self.walk(bus, out.len(), |cpu, i| {
            // SAFETY: `walk` only yields addresses mapped 1:1 (foreign window or dom0 RAM).
            out[i] =
                unsafe { core::ptr::with_exposed_provenance::<u8>(cpu as usize).read_volatile() };
        })
    }

    /// Writes `f(i)` to byte `i` of `[bus, bus + len)`. `false` if some byte has no known
    /// memory behind it (nothing is written then past that byte).
    pub fn write(&self, bus: u64, len: usize, mut f: impl FnMut(usize) -> u8) -> bool {
        self.walk(bus, len, |cpu, i| {
            // SAFETY: as in `read`; the caller mapped the range for the device to write.
            unsafe {
                core::ptr::with_exposed_provenance_mut::<u8>(cpu as usize).write_volatile(f(i))
            };
        })
    }

    fn walk(&self, bus: u64, len: usize, mut each: impl FnMut(u64, usize)) -> bool {
        let mut i = 0usize;
        while i < len {
            let b = bus + i as u64;
            let chunk = ((0x1000 - (b & 0xfff)) as usize).min(len - i);
            let Some(cpu) = self.grants.cpu_addr(b, chunk as u64) else {
                return false;
            };
            for k in 0..chunk {
                each(cpu + k as u64, i + k);
            }
            i += chunk;
        }
        true
    }
}
