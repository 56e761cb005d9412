//! Map+unmap latency of the bounce pool against Linux's slot search and a bare `memcpy`.
//!
//! For each size in [`SIZES`] and fill level in [`FILLS`] (fragmented, same seed for every
//! implementation), one `ToDevice` map plus unmap per iteration, so the pool stays at its
//! fill level. `cargo bench -p swiotlb-bench --bench pool [-- --quick]`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_main};
use swiotlb_bench::harness::{
    FILLS, ORIG_ROOM, SEED, SIZES, case_memory, fragment, linux_pool, memcpy_floor, orig_base,
    round_trip,
};

fn pool(c: &mut Criterion) {
    let src = vec![0x5au8; ORIG_ROOM];
    let mut dst = vec![0u8; ORIG_ROOM];
    for size in SIZES {
        let mut g = c.benchmark_group(format!("map_unmap/{size}B"));
        g.bench_function("memcpy", |b| b.iter(|| memcpy_floor(&mut dst, &src, size)));
        for fill in FILLS {
            let mem = case_memory().expect("benchmark memory");
            // SAFETY: the pool alone uses its part of `mem`; the originals room is used by
            // the fill and the measured mapping only, on this thread.
            unsafe {
                let pool = linux_pool(&mem);
                let _live = fragment(&pool, SEED, fill, size, orig_base());
                g.bench_with_input(
                    BenchmarkId::new("linux", format!("{fill}%")),
                    &size,
                    |b, &s| {
                        b.iter(|| round_trip(&pool, orig_base(), s));
                    },
                );
            }
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
