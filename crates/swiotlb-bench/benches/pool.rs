//! Map+unmap latency of the bounce pool (`swiotlb_core::BouncePool`, "ours") against
//! Linux's slot search and a bare `memcpy`.
//!
//! For each size in [`SIZES`] and fill level in [`FILLS`] (a subset of the grid `cargo xtask
//! bench` measures, so that this stays short; fragmented, same seed for every
//! implementation), one `ToDevice` map plus unmap per iteration, so the pool stays at its
//! fill level. `cargo bench -p swiotlb-bench --bench pool [-- --quick]`.

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_main};
use swiotlb_bench::harness::{
    BenchPool, MemcpyFloor, SEED, case_memory, fragment, linear_map, linux_pool, orig_base,
    real_pool, round_trip,
};
use swiotlb_core::DmaDirection;

/// Sizes measured here, bytes.
const SIZES: [usize; 4] = [64, 1500, 4096, 65536];
/// Fill levels measured here, percent.
const FILLS: [u32; 3] = [0, 50, 90];

/// Fragments `pool` to `fill` and measures the round trip of `size` bytes on it.
fn case<P: BenchPool>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    pool: &P,
    fill: u32,
    size: usize,
) {
    // SAFETY: `pool` is fresh over a case memory whose originals room is used by the fill
    // and the measured mapping only, on this thread.
    let _live = unsafe { fragment(pool, SEED, fill, size, orig_base()) };
    g.bench_with_input(
        BenchmarkId::new(name, format!("{fill}%")),
        &size,
        |b, &s| {
            // SAFETY: as above.
            b.iter(|| unsafe { round_trip(pool, orig_base(), s, DmaDirection::ToDevice) });
        },
    );
}

fn pool(c: &mut Criterion) {
    let mut floor = MemcpyFloor::new().expect("memcpy buffers");
    for size in SIZES {
        let mut g = c.benchmark_group(format!("map_unmap/{size}B"));
        g.bench_function("memcpy", |b| b.iter(|| floor.copy(size)));
        for fill in FILLS {
            let mem = case_memory().expect("benchmark memory");
            // SAFETY: the pool alone uses its part of `mem` and is dropped before it.
            let ours = unsafe { real_pool(&mem) }.expect("benchmark pool");
            case(&mut g, "ours", &ours, fill, size);
            drop(ours);
            let mem = case_memory().expect("benchmark memory");
            // SAFETY: as above; the map lives as long as the pool over it.
            let map = unsafe { linear_map(&mem) };
            // SAFETY: as above.
            let linux = unsafe { linux_pool(&map, mem.base()) }.expect("Linux pool");
            case(&mut g, "linux", &linux, fill, size);
        }
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(30)
}

/// The criterion group, in a private module because the macro defines a public function.
mod group {
    use super::{config, pool};
    use criterion::criterion_group;

    criterion_group! {
        name = benches;
        config = config();
        targets = pool
    }
}
criterion_main!(group::benches);
