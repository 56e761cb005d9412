//! Builds a bounce pool over a heap buffer, maps and unmaps buffers of several sizes and
//! directions (an NVMe-style device among them), checks every byte, and prints the
//! statistics.
//!
//! Run with `cargo run -p swiotlb-core --features std --example pool-demo`.

use swiotlb_core::pool::{IO_TLB_SIZE, Stats};
use swiotlb_core::{BouncePool, Device, DmaAttrs, DmaDirection, DmaMask, LinearMap, PhysAddr};

const POOL_PHYS: u64 = 0x1000_0000;
const NSLABS: usize = 1024; // 2 MiB of 2 KiB slots.
const ORIG_BYTES: usize = 1 << 20;

fn main() -> Result<(), swiotlb_core::Error> {
    let pool_bytes = NSLABS * IO_TLB_SIZE;
    let len = pool_bytes + ORIG_BYTES;
    // One allocation holds the pool and the "original" buffers; after this it is reached
    // only through `base`.
    let base = Box::into_raw(vec![0u8; len].into_boxed_slice()).cast::<u8>();
    // SAFETY: `base..base + len` is one live allocation, freed at the end of `main` after the
    // pool is dropped, and no reference to it exists.
    let mem = unsafe { LinearMap::new(base, PhysAddr::new(POOL_PHYS), len) };
    // SAFETY: the first `pool_bytes` of the region belong to the pool alone.
    let pool = unsafe { BouncePool::new_boxed(mem, PhysAddr::new(POOL_PHYS), NSLABS, 4) }?;
    println!(
        "pool {}..{}: {} slots in {} areas",
        pool.start(),
        pool.end(),
        pool.nslabs(),
        pool.nareas()
    );

    let orig_base = POOL_PHYS + pool_bytes as u64;
    let at = |phys: u64| {
        // CAST: offsets stay inside the allocation of `len` bytes.
        let off = (phys - POOL_PHYS) as usize;
        assert!(off < len);
        // SAFETY: inside the allocation.
        unsafe { base.add(off) }
    };
    let write = |phys: u64, bytes: &[u8]| {
        // SAFETY: inside the allocation; no reference covers it.
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at(phys), bytes.len()) }
    };
    let read = |phys: u64, n: usize| {
        let mut v = vec![0u8; n];
        // SAFETY: inside the allocation; no reference covers it.
        unsafe { core::ptr::copy_nonoverlapping(at(phys), v.as_mut_ptr(), n) };
        v
    };

    let plain = Device::new(DmaMask::BITS_32);
    let nvme = Device::new(DmaMask::BITS_32).with_min_align_mask(0xfff);
    let cases = [
        (
            "1500 B packet, to device",
            plain,
            0x0_0000u64,
            1500usize,
            DmaDirection::ToDevice,
        ),
        (
            "4 KiB block, from device",
            plain,
            0x1_0000,
            4096,
            DmaDirection::FromDevice,
        ),
        (
            "64 KiB, bidirectional",
            plain,
            0x2_0000,
            64 * 1024,
            DmaDirection::Bidirectional,
        ),
        (
            "NVMe 12 KiB at offset 0xa40",
            nvme,
            0x4_0a40,
            12 * 1024,
            DmaDirection::FromDevice,
        ),
        (
            "NVMe max (252 KiB)",
            nvme,
            0x8_0000,
            swiotlb_core::max_mapping_size(&nvme),
            DmaDirection::ToDevice,
        ),
    ];
    for (i, (what, dev, off, size, dir)) in cases.into_iter().enumerate() {
        let orig = orig_base + off;
        let data: Vec<u8> = (0..size).map(|k| (k * 7 + i) as u8).collect();
        write(orig, &data);
        // SAFETY: `orig..orig + size` lies in the original region, which nothing else uses
        // until the unmap below.
        let tlb = unsafe {
            pool.map(
                &dev,
                PhysAddr::new(orig),
                size,
                0,
                dir,
                DmaAttrs::empty(),
                i,
            )
        }?;
        assert_eq!(read(tlb.as_u64(), size), data, "map copies the original");
        assert_eq!(tlb.as_u64() & dev.min_align_mask, orig & dev.min_align_mask);
        // The "device" writes the bounce buffer for directions that let it.
        let expect = if dir.from_device() {
            let reply: Vec<u8> = data.iter().map(|b| b ^ 0xff).collect();
            write(tlb.as_u64(), &reply);
            reply
        } else {
            data
        };
        pool.unmap(&dev, tlb, size, dir, DmaAttrs::empty())?;
        assert_eq!(read(orig, size), expect, "unmap returns the device's bytes");
        println!("{what:<30} {size:>7} B  orig {orig:#x} -> bounce {tlb}  ok");
    }

    // A failure is a typed error carrying its values.
    match pool.unmap(
        &plain,
        pool.start(),
        16,
        DmaDirection::ToDevice,
        DmaAttrs::empty(),
    ) {
        Err(e) => println!("unmap of a free slot: {e}"),
        Ok(()) => unreachable!("slot 0 is not mapped"),
    }

    let s: Stats = pool.stats();
    println!(
        "stats: slots {} used {} high-water {} maps {} unmaps {} bytes bounced {} \
         overflow attempts {} failures: full {} too-large {} invalid {} not-mapped {}",
        s.nslabs,
        s.used,
        s.high_water,
        s.maps,
        s.unmaps,
        s.bytes_bounced,
        s.overflow_attempts,
        s.fail_full,
        s.fail_too_large,
        s.fail_invalid,
        s.fail_not_mapped
    );
    pool.check_invariants().expect("invariants hold");
    drop(pool);
    // SAFETY: `base` came from `Box::into_raw` of `len` bytes and the pool is gone.
    drop(unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(base, len)) });
    Ok(())
}
