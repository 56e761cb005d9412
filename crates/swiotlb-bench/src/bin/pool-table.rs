//! Prints the pool benchmark as a Markdown table: median time of one `ToDevice` map+unmap
//! round trip per size and fill level, for the Linux baseline, and of a bare `memcpy` of the
//! same size, with the ratios `docs/performance.md` records.
//!
//! `cargo run --release -p swiotlb-bench --bin pool-table [-- --quick]`

use std::time::Duration;

use swiotlb_bench::harness::{
    FILLS, ORIG_ROOM, SEED, SIZES, case_memory, fragment, linux_pool, median_ns, memcpy_floor,
    orig_base, round_trip,
};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (batches, batch_time) = if quick {
        (7, Duration::from_millis(2))
    } else {
        (31, Duration::from_millis(5))
    };
    let src = vec![0x5au8; ORIG_ROOM];
    let mut dst = vec![0u8; ORIG_ROOM];

    println!("| size | fill | linux (ns) | memcpy (ns) | linux/memcpy |");
    println!("|---:|---:|---:|---:|---:|");
    for size in SIZES {
        let floor = median_ns(|| memcpy_floor(&mut dst, &src, size), batches, batch_time);
        for fill in FILLS {
            let mem = match case_memory() {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("cannot allocate the benchmark memory: {e}");
                    std::process::exit(1);
                }
            };
            // SAFETY: the pool alone uses its part of `mem`; the originals room is used by
            // the fill and the measured mapping only, single-threaded.
            let linux = unsafe {
                let pool = linux_pool(&mem);
                let _live = fragment(&pool, SEED, fill, orig_base());
                median_ns(|| round_trip(&pool, orig_base(), size), batches, batch_time)
            };
            println!(
                "| {size} B | {fill}% | {:.1} | {:.1} | {:.2} |",
                linux,
                floor,
                linux / floor,
            );
        }
    }
}
