//! `SwiotlbHal` on a simulated x86 PV dom0 with a 32-bit device: coherent allocations the
//! device reaches and that are given back exactly once, and shared buffers in every
//! direction, direct and bounced, every byte checked through the simulated device.

#[macro_use]
mod support;

use std::ptr::NonNull;

use support::*;
use swiotlb_core::engine::BounceReason;
use swiotlb_core::{BusAddr, DmaMask, PhysAddr};
use swiotlb_xen_virtio::{EINVAL, SwiotlbHal};
use virtio_drivers::{BufferDirection, Hal};

const GIB4: u64 = 1 << 32;

#[test]
fn dma_alloc_gives_memory_the_device_reaches_and_dma_dealloc_frees_it_once() {
    kernel!(K, Pv, DmaMask::BITS_32);
    type H = SwiotlbHal<K>;
    let w = K::world();
    let free_before = w.m.xen.free_frames();
    let mut allocs = Vec::new();
    for (i, pages) in [1usize, 2, 3, 4].into_iter().enumerate() {
        let (paddr, vaddr) = H::dma_alloc(pages, BufferDirection::Both);
        let len = pages * 4096;
        assert_ne!(paddr, 0);
        assert!(paddr + len as u64 <= GIB4, "{paddr:#x}: outside the mask");
        assert_eq!(vaddr.as_ptr().addr() % 4096, 0, "page-aligned");
        let bus = BusAddr::new(paddr);
        // Zeroed, as the device sees it.
        assert_eq!(w.device_read(bus, len), vec![0; len]);
        // The CPU writes through the pointer, the device reads at the bus address.
        let data = pattern(i as u64, len);
        // SAFETY: the allocation is `len` bytes at `vaddr`, used by nobody else.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), vaddr.as_ptr(), len) };
        same(&w.device_read(bus, len), &data, "the device read");
        // And the other way.
        let back = pattern(10 + i as u64, len);
        w.device_write(bus, &back);
        // SAFETY: as above.
        let seen = unsafe { std::slice::from_raw_parts(vaddr.as_ptr(), len) };
        same(seen, &back, "the CPU read");
        w.check();
        allocs.push((paddr, vaddr, pages));
    }
    assert!(
        w.engine.stats().coherent_exchanged > 0,
        "the scrambled P2M needs exchanges"
    );
    assert_eq!(w.engine.pages().live(), 4);
    let (paddr, vaddr, pages) = allocs[0];
    // SAFETY: wrong handles are refused before anything is freed.
    unsafe {
        assert_eq!(H::dma_dealloc(paddr + 4096, vaddr, pages), -EINVAL);
        assert_eq!(H::dma_dealloc(paddr, vaddr, pages + 1), -EINVAL);
    }
    assert_eq!(w.engine.pages().live(), 4);
    for &(paddr, vaddr, pages) in &allocs {
        // SAFETY: nothing uses the allocation any more.
        assert_eq!(unsafe { H::dma_dealloc(paddr, vaddr, pages) }, 0);
        w.check();
    }
    // SAFETY: a double free, which the engine refuses.
    assert_eq!(unsafe { H::dma_dealloc(paddr, vaddr, pages) }, -EINVAL);
    assert_eq!(w.engine.pages().live(), 0);
    assert_eq!(w.engine.pages().inner.in_use(), 0);
    assert_eq!(w.m.xen.free_frames(), free_before, "no machine frame lost");
    assert_eq!(
        w.m.local_entries(),
        w.m.guest.nr_pages(),
        "every pfn has its own frame"
    );
    let st = w.engine.stats();
    assert_eq!((st.coherent_allocs, st.coherent_frees), (4, 4));
}

#[test]
fn a_double_free_of_an_allocation_that_was_not_exchanged_is_refused() {
    // A 64-bit device takes one page as it is: after the free its translation is unchanged,
    // so only the page allocator's records tell a double free.
    kernel!(K, Pv, DmaMask::FULL);
    type H = SwiotlbHal<K>;
    let w = K::world();
    let (paddr, vaddr) = H::dma_alloc(1, BufferDirection::Both);
    assert_ne!(paddr, 0);
    assert_eq!(w.engine.stats().coherent_exchanged, 0);
    // SAFETY: nothing uses the allocation any more.
    assert_eq!(unsafe { H::dma_dealloc(paddr, vaddr, 1) }, 0);
    // SAFETY: a double free, which the engine refuses.
    assert_eq!(unsafe { H::dma_dealloc(paddr, vaddr, 1) }, -EINVAL);
    assert_eq!(w.engine.pages().inner.in_use(), 0);
    assert_eq!(w.engine.stats().coherent_frees, 1);
    w.check();
}

/// Where a shared buffer lies.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// One page of dom0 RAM below 4 GiB: direct.
    Low,
    /// One page of dom0 RAM above 4 GiB: bounced, outside the mask.
    High,
    /// Across two pages that are not machine neighbours: bounced, not contiguous.
    Straddling,
    /// Host memory outside dom0's linear map: bounced, no physical address.
    Unmapped,
}

/// A buffer of `len` bytes at `place`.
fn buffer<M: Machine>(w: &World<M>, place: Place, len: usize) -> &'static mut [u8] {
    let machine = |p: PhysAddr| w.m.machine(p);
    match place {
        Place::Unmapped => Box::leak(vec![0u8; len].into_boxed_slice()),
        Place::Low | Place::High => loop {
            let (phys, ram) = w.ram(1);
            if (machine(phys) < GIB4) == matches!(place, Place::Low) {
                break &mut ram[100..100 + len];
            }
        },
        Place::Straddling => loop {
            let (phys, ram) = w.ram(2);
            let next = PhysAddr::new(phys.as_u64() + PAGE);
            if machine(next) != machine(phys) + PAGE {
                break &mut ram[4096 - len / 2..4096 - len / 2 + len];
            }
        },
    }
}

#[test]
fn shared_buffers_reach_the_device_in_every_direction_direct_or_bounced() {
    kernel!(K, Pv, DmaMask::BITS_32);
    type H = SwiotlbHal<K>;
    let w = K::world();
    let len = 1000;
    let mut seed = 0;
    for (place, bounced, reason) in [
        (Place::Low, false, None),
        (Place::High, true, Some(BounceReason::OutsideMask)),
        (Place::Straddling, true, Some(BounceReason::NotContiguous)),
        (Place::Unmapped, true, Some(BounceReason::Untranslatable)),
    ] {
        let buf = buffer(w, place, len);
        let before = w.engine.stats();
        for dir in [
            BufferDirection::DriverToDevice,
            BufferDirection::DeviceToDriver,
            BufferDirection::Both,
        ] {
            seed += 2;
            let cpu_data = pattern(seed, len);
            let dev_data = pattern(seed + 1, len);
            buf.copy_from_slice(&cpu_data);
            let ptr = NonNull::from(&mut *buf);
            // SAFETY: `buf` stays valid and untouched by the CPU until the unshare.
            let paddr = unsafe { H::share(ptr, dir) };
            let bus = BusAddr::new(paddr);
            assert_eq!(is_bounced(&w.engine, bus), bounced, "{place:?} {dir:?}");
            assert!(paddr + len as u64 <= GIB4, "{place:?}: outside the mask");
            if dir != BufferDirection::DeviceToDriver {
                same(&w.device_read(bus, len), &cpu_data, "the device read");
            }
            if dir != BufferDirection::DriverToDevice {
                w.device_write(bus, &dev_data);
            }
            // SAFETY: the buffer of that share, untouched meanwhile.
            unsafe { H::unshare(paddr, ptr, dir) };
            let want = if dir == BufferDirection::DriverToDevice {
                &cpu_data
            } else {
                &dev_data
            };
            same(buf, want, "the CPU's buffer after unshare");
            w.check();
            assert_eq!(pool_used(&w.engine), 0, "slots leaked");
        }
        let st = w.engine.stats();
        if let Some(reason) = reason {
            assert_eq!(
                st.bounced_by_reason[reason.index()] - before.bounced_by_reason[reason.index()],
                3,
                "{place:?}"
            );
        } else {
            assert_eq!(st.direct_maps - before.direct_maps, 3, "{place:?}");
        }
    }
    let st = w.engine.stats();
    assert_eq!(st.map_failures + st.unmap_sync_failures, 0);
}

#[test]
fn a_non_coherent_arm64_device_gets_cache_maintenance_around_the_bounce_copies() {
    // The simulator's cache model holds the CPU's writes until they are cleaned and serves
    // the CPU stale lines until they are invalidated; it records a violation for a device
    // access that would see the wrong bytes.
    kernel!(K, Arm, DmaMask::BITS_32, false);
    type H = SwiotlbHal<K>;
    let w = K::world();
    let len = 3000;
    // Host memory outside the linear map: bounced, and every cache operation is the pool's.
    let buf = buffer(w, Place::Unmapped, len);
    for (seed, dir) in [
        BufferDirection::DriverToDevice,
        BufferDirection::DeviceToDriver,
        BufferDirection::Both,
    ]
    .into_iter()
    .enumerate()
    {
        let (cpu_data, dev_data) = (pattern(seed as u64, len), pattern(seed as u64 + 10, len));
        buf.copy_from_slice(&cpu_data);
        let ptr = NonNull::from(&mut *buf);
        // SAFETY: `buf` stays valid and untouched by the CPU until the unshare.
        let bus = BusAddr::new(unsafe { H::share(ptr, dir) });
        assert!(is_bounced(&w.engine, bus));
        if dir != BufferDirection::DeviceToDriver {
            same(&w.device_read(bus, len), &cpu_data, "the device read");
        }
        if dir != BufferDirection::DriverToDevice {
            w.device_write(bus, &dev_data);
        }
        // SAFETY: the buffer of that share, untouched meanwhile.
        unsafe { H::unshare(bus.as_u64(), ptr, dir) };
        let want = if dir == BufferDirection::DriverToDevice {
            &cpu_data
        } else {
            &dev_data
        };
        same(buf, want, "the CPU's buffer after unshare");
        w.check();
    }
}
