//! A target for `perf record`: ours' 1500 B `ToDevice` round trip at 90% fill, repeated.
//!
//! `cargo run --release -p swiotlb-bench --example profile-round-trip -- [SIZE] [ITERS]`

use std::time::Instant;
use swiotlb_bench::harness::{self, round_trip};
use swiotlb_core::DmaDirection;

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1500);
    let iters: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000_000);
    let mem = harness::case_memory().expect("memory");
    // SAFETY: the pool lives within `mem`'s scope and alone uses its part of it.
    let pool = unsafe { harness::real_pool(&mem) }.expect("pool");
    let orig = harness::orig_base();
    // SAFETY: the originals room is outside the pool and used by nobody else.
    let _live = unsafe { harness::fragment(&pool, harness::SEED, 90, size, orig) };
    let t = Instant::now();
    for _ in 0..iters {
        // SAFETY: as above.
        unsafe { round_trip(&pool, orig, size, DmaDirection::ToDevice) };
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!("{size} B at 90% fill: {ns:.1} ns per round trip");
}
