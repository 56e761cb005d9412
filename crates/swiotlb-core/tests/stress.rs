//! Many threads map, sync and unmap at once; every thread checks every byte it gets back.

mod common;

use common::Fixture;
use std::sync::Arc;
use std::thread;
use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask, Error};

const THREADS: usize = if cfg!(miri) { 3 } else { 4 };
const ITERS: usize = if cfg!(miri) { 12 } else { 2_000 };
const PER_THREAD: u64 = 256 * 1024;

#[test]
fn concurrent_maps_keep_every_byte() {
    let f = Arc::new(Fixture::new(
        if cfg!(miri) { 256 } else { 1024 },
        4,
        THREADS * PER_THREAD as usize,
    ));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let f = Arc::clone(&f);
            thread::spawn(move || {
                let nvme = Device::new(DmaMask::FULL).with_min_align_mask(0xfff);
                let plain = Device::new(DmaMask::FULL);
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                let mut full = 0;
                for i in 0..ITERS {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let size = 1 + (rng % if cfg!(miri) { 3000 } else { 20_000 }) as usize;
                    let low = (rng >> 32) % 0x1000;
                    let dev = if i % 2 == 0 { nvme } else { plain };
                    let orig = f.orig(t as u64 * PER_THREAD + low);
                    let data: Vec<u8> = (0..size)
                        .map(|k| (k as u8) ^ (t as u8) ^ (i as u8))
                        .collect();
                    f.write(orig, &data);
                    let dir = DmaDirection::Bidirectional;
                    // SAFETY: each thread uses its own 256 KiB of originals.
                    let tlb =
                        match unsafe { f.pool.map(&dev, orig, size, 0, dir, DmaAttrs::empty(), t) }
                        {
                            Ok(tlb) => tlb,
                            Err(Error::PoolFull { .. }) => {
                                full += 1;
                                continue;
                            }
                            Err(e) => panic!("map: {e}"),
                        };
                    assert_eq!(
                        tlb.as_u64() & dev.min_align_mask,
                        orig.as_u64() & dev.min_align_mask
                    );
                    assert_eq!(
                        f.read(tlb, size),
                        data,
                        "bounce holds another mapping's bytes"
                    );
                    // The device inverts the buffer; the CPU syncs half, then unmaps.
                    let inverted: Vec<u8> = data.iter().map(|b| !b).collect();
                    f.write(tlb, &inverted);
                    let half = size / 2;
                    if half > 0 {
                        f.pool.sync_for_cpu(&dev, tlb, half, dir).unwrap();
                        assert_eq!(f.read(orig, half), inverted[..half]);
                    }
                    f.pool
                        .unmap(&dev, tlb, size, dir, DmaAttrs::empty())
                        .unwrap();
                    assert_eq!(f.read(orig, size), inverted);
                    assert_eq!(
                        f.pool.unmap(&dev, tlb, size, dir, DmaAttrs::empty()),
                        Err(Error::NotMapped { addr: tlb })
                    );
                }
                full
            })
        })
        .collect();
    let full: usize = handles
        .into_iter()
        .map(|h| h.join().expect("thread panicked"))
        .sum();
    let s = f.pool.stats();
    assert_eq!(s.used, 0);
    assert_eq!(s.maps as usize + full, THREADS * ITERS);
    assert_eq!(s.maps, s.unmaps);
    f.pool.check_invariants().unwrap();
}
