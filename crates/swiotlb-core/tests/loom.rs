//! Loom models of the pool's concurrent parts: the area locks, the lock-free slot states and
//! the per-area and pool-wide counters, with two threads (plus the main one) in every
//! interleaving loom can reach within its preemption bound.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p swiotlb-core --release --test loom`
//! (`cargo xtask ci --only loom` sets `LOOM_MAX_PREEMPTIONS` to keep it short).

#![cfg(loom)]

mod common;

use common::Fixture;
use loom::sync::Arc;
use loom::thread;
use swiotlb_core::{Device, DmaAttrs, DmaDirection, DmaMask, Error, PhysAddr};

/// One segment: the smallest pool.
const NSLABS: usize = 128;

/// A loom model with room for the pool's set-up (hundreds of atomic stores by one thread).
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

fn dev() -> Device {
    Device::new(DmaMask::FULL)
}

/// Maps `data` at `orig` bidirectionally, lets the "device" overwrite it with `reply`, and
/// unmaps; returns what the original holds afterwards.
fn round_trip(f: &Fixture, orig: PhysAddr, data: &[u8], reply: &[u8], cpu: usize) -> Vec<u8> {
    f.write(orig, data);
    let d = dev();
    // SAFETY: each caller passes an original no other thread uses.
    let tlb = unsafe {
        f.pool.map(
            &d,
            orig,
            data.len(),
            0,
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
            cpu,
        )
    }
    .expect("map");
    assert_eq!(f.read(tlb, data.len()), data, "bounce copy-in");
    f.write(tlb, reply);
    f.pool
        .unmap(
            &d,
            tlb,
            data.len(),
            DmaDirection::Bidirectional,
            DmaAttrs::empty(),
        )
        .expect("unmap");
    f.read(orig, data.len())
}

fn assert_idle(f: &Fixture, maps: u64) {
    f.pool.check_invariants().expect("pool invariants");
    let s = f.pool.stats();
    assert_eq!(s.used, 0, "{s:?}");
    assert_eq!((s.maps, s.unmaps), (maps, maps), "{s:?}");
    assert!(s.high_water >= 1, "{s:?}");
}

/// Two threads map and unmap through the same area (one lock): each gets its own slots and
/// its own bytes back, and the counters add up.
#[test]
fn two_threads_share_one_area() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 2 * 4096));
        let handles: Vec<_> = (0..2u8)
            .map(|t| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    let orig = f.orig(u64::from(t) * 4096);
                    let back = round_trip(&f, orig, &[t + 1; 64], &[t + 10; 64], 0);
                    assert_eq!(back, vec![t + 10; 64], "thread {t} got another's bytes");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_idle(&f, 2);
    });
}

/// Two threads map and unmap in two areas (two locks, shared pool-wide counters): the final
/// counters are exact.
#[test]
fn two_threads_in_two_areas() {
    model(|| {
        let f = Arc::new(Fixture::new(2 * NSLABS, 2, 2 * 4096));
        let handles: Vec<_> = (0..2u8)
            .map(|t| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    let orig = f.orig(u64::from(t) * 4096);
                    let back = round_trip(&f, orig, &[t + 1; 32], &[t + 20; 32], usize::from(t));
                    assert_eq!(back, vec![t + 20; 32]);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_idle(&f, 2);
    });
}

/// The main thread reads the lock-free statistics while another maps and unmaps: no counter
/// of the snapshot exceeds what was done, and the final counters are exact.
///
/// The snapshot is consistent per counter only (as `Stats` documents): loom finds
/// interleavings where it shows the unmap but not yet the map (two relaxed counters read in
/// the other order than written), so `unmaps <= maps` is not asserted.
#[test]
fn stats_reader_during_map_and_unmap() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 4096));
        let worker = {
            let f = Arc::clone(&f);
            thread::spawn(move || {
                let back = round_trip(&f, f.orig(0), &[1; 32], &[2; 32], 0);
                assert_eq!(back, vec![2; 32]);
            })
        };
        let s = f.pool.stats();
        assert!(s.used <= 1 && s.maps <= 1 && s.unmaps <= 1, "{s:?}");
        assert!(s.bytes_bounced <= 2 * 32 && s.high_water <= 1, "{s:?}");
        worker.join().unwrap();
        assert_idle(&f, 1);
    });
}

/// An unmap and a sync of the same mapping race: the sync either copies before the unmap
/// claims the mapping or fails with `NotMapped`; it never copies after the unmap's copy-back
/// (which would overwrite the original the driver owns again).
#[test]
fn sync_racing_unmap_never_copies_after_it() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 4096));
        let d = dev();
        let orig = f.orig(0);
        f.write(orig, &[1; 16]);
        // SAFETY: the original belongs to this model alone.
        let tlb = unsafe {
            f.pool.map(
                &d,
                orig,
                16,
                0,
                DmaDirection::FromDevice,
                DmaAttrs::empty(),
                0,
            )
        }
        .unwrap();
        f.write(tlb, &[2; 16]); // The device's data.
        let syncer = {
            let f = Arc::clone(&f);
            thread::spawn(move || {
                f.pool
                    .sync_for_cpu(&dev(), tlb, 16, DmaDirection::FromDevice)
            })
        };
        let unmapper = {
            let f = Arc::clone(&f);
            thread::spawn(move || {
                f.pool
                    .unmap(&dev(), tlb, 16, DmaDirection::FromDevice, DmaAttrs::empty())
            })
        };
        unmapper.join().unwrap().expect("unmap");
        // The driver owns the original again and writes it.
        f.write(orig, &[3; 16]);
        match syncer.join().unwrap() {
            Ok(()) | Err(Error::NotMapped { .. }) => {}
            Err(e) => panic!("sync gave {e:?}"),
        }
        assert_eq!(
            f.read(orig, 16),
            vec![3; 16],
            "a sync copied after the unmap"
        );
        assert_idle(&f, 1);
    });
}

/// Two threads unmap the same mapping: exactly one succeeds, the other gets `NotMapped`,
/// and the slots are freed once.
#[test]
fn double_unmap_from_two_threads_frees_once() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 4096));
        let orig = f.orig(0);
        // SAFETY: the original belongs to this model alone.
        let tlb = unsafe {
            f.pool.map(
                &dev(),
                orig,
                100,
                0,
                DmaDirection::ToDevice,
                DmaAttrs::empty(),
                0,
            )
        }
        .unwrap();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    f.pool
                        .unmap(&dev(), tlb, 100, DmaDirection::ToDevice, DmaAttrs::empty())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        assert!(
            results.contains(&Err(Error::NotMapped { addr: tlb })),
            "{results:?}"
        );
        assert_idle(&f, 1);
        assert_eq!(f.pool.stats().fail_not_mapped, 1);
    });
}

/// Two threads each want the whole (one-segment) pool: exactly one gets it, the other gets
/// `PoolFull`, and the failure is counted once.
#[test]
fn contention_for_the_last_slots() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 2 * 256 * 1024));
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    let orig = f.orig(t * 256 * 1024);
                    // SAFETY: each thread's original is its own.
                    unsafe {
                        f.pool.map(
                            &dev(),
                            orig,
                            256 * 1024,
                            0,
                            DmaDirection::ToDevice,
                            DmaAttrs::SKIP_CPU_SYNC,
                            0,
                        )
                    }
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won: Vec<PhysAddr> = results.iter().filter_map(|r| r.ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(Error::PoolFull { .. }))),
            "{results:?}"
        );
        let s = f.pool.stats();
        assert_eq!((s.used, s.maps, s.fail_full), (NSLABS, 1, 1), "{s:?}");
        f.pool
            .unmap(
                &dev(),
                won[0],
                256 * 1024,
                DmaDirection::ToDevice,
                DmaAttrs::empty(),
            )
            .unwrap();
        assert_idle(&f, 1);
    });
}

/// Coherent allocations and frees from two threads: the alloc/free counters (pool-wide
/// read-modify-writes) and the area's used count stay exact.
#[test]
fn coherent_alloc_and_free_from_two_threads() {
    model(|| {
        let f = Arc::new(Fixture::new(NSLABS, 1, 0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    let a = f.pool.alloc(&dev(), 4096, 0).expect("alloc");
                    assert_eq!(f.read(a, 4096), vec![0; 4096], "not zeroed");
                    f.write(a, &[9; 4096]);
                    f.pool.free(&dev(), a).expect("free");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        f.pool.check_invariants().unwrap();
        let s = f.pool.stats();
        assert_eq!((s.used, s.allocs, s.frees), (0, 2, 2), "{s:?}");
    });
}
