//! Prints the pool benchmark as a Markdown table: median time of one `ToDevice` map+unmap
//! round trip per size and fill level, for the Linux baseline, and of a bare `memcpy` of the
//! same size, with the ratios `docs/performance.md` records.
//!
//! `cargo run --release -p swiotlb-bench --bin pool-table [-- --quick]`

use std::time::Duration;

use swiotlb_bench::harness::{
    BenchPool, FILLS, ORIG_ROOM, SEED, SIZES, case_memory, fragment, linux_pool, median_ns,
    memcpy_floor, orig_base, round_trip,
};
use swiotlb_bench::host::HostMemory;

/// How long and how often each case is timed.
#[derive(Clone, Copy)]
struct Timing {
    batches: usize,
    batch_time: Duration,
}

/// Fragments `pool` to `fill` percent and times the round trip of `size` bytes. Returns the
/// median in nanoseconds and the fill actually reached, in percent.
///
/// # Safety
///
/// `pool` is fresh over a [`case_memory`] that nothing else uses.
unsafe fn measure<P: BenchPool>(pool: &P, fill: u32, size: usize, t: Timing) -> (f64, f64) {
    // SAFETY: the originals room of the case memory is used by the fill and the measured
    // mapping only, on this thread.
    let _live = unsafe { fragment(pool, SEED, fill, size, orig_base()) };
    // CAST: slot counts are far below 2^52, exact in f64.
    let reached = 100.0 * pool.used_slots() as f64 / pool.total_slots() as f64;
    // SAFETY: as above.
    let ns = median_ns(
        || unsafe { round_trip(pool, orig_base(), size) },
        t.batches,
        t.batch_time,
    );
    (ns, reached)
}

fn memory() -> HostMemory {
    match case_memory() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cannot allocate the benchmark memory: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let t = if quick {
        Timing {
            batches: 7,
            batch_time: Duration::from_millis(2),
        }
    } else {
        Timing {
            batches: 31,
            batch_time: Duration::from_millis(5),
        }
    };
    let src = vec![0x5au8; ORIG_ROOM];
    let mut dst = vec![0u8; ORIG_ROOM];

    println!("| size | fill (reached) | linux (ns) | memcpy (ns) | linux/memcpy |");
    println!("|---:|---:|---:|---:|---:|");
    for size in SIZES {
        let floor = median_ns(
            || memcpy_floor(&mut dst, &src, size),
            t.batches,
            t.batch_time,
        );
        for fill in FILLS {
            let mem = memory();
            // SAFETY: the pool alone uses its part of the fresh memory.
            let (linux, reached) = unsafe { measure(&linux_pool(&mem), fill, size, t) };
            println!(
                "| {size} B | {fill}% ({reached:.1}%) | {linux:.1} | {floor:.1} | {:.2} |",
                linux / floor,
            );
        }
    }
}
