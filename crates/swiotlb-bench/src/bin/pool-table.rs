//! Prints the pool benchmark as a Markdown table: median time of one `ToDevice` map+unmap
//! round trip per size and fill level, for the real pool (`swiotlb_core::BouncePool`) and
//! the Linux baseline, and of a bare `memcpy` of the same size, with the ratios
//! `docs/performance.md` records.
//!
//! `cargo run --release -p swiotlb-bench --bin pool-table [-- --quick] [--size BYTES]
//! [--fill PERCENT]`: `--quick` times fewer, shorter batches; `--size` and `--fill` keep
//! only the cases given (each may be repeated).

use std::time::Duration;

use swiotlb_bench::harness::{
    BenchPool, FILLS, MemcpyFloor, SEED, SIZES, case_memory, fragment, linear_map, linux_pool,
    median_ns, orig_base, real_pool, round_trip,
};

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

/// The value of `r`, or exit with a message saying what could not be set up.
fn or_exit<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| {
        eprintln!("cannot set up {what}: {e}");
        std::process::exit(1);
    })
}

/// The values given after `flag` in `args`, or all of `all` if there are none. Exits with a
/// message on a value that is not one of `all`.
fn filter<T: Copy + PartialEq + std::str::FromStr + std::fmt::Debug>(
    args: &[String],
    flag: &str,
    all: &[T],
) -> Vec<T> {
    let picked: Vec<T> = args
        .windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| match w[1].parse::<T>() {
            Ok(v) if all.contains(&v) => v,
            _ => {
                eprintln!("{flag} takes one of {all:?}, not {:?}", w[1]);
                std::process::exit(2);
            }
        })
        .collect();
    if picked.is_empty() {
        all.to_vec()
    } else {
        picked
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sizes = filter(&args, "--size", &SIZES);
    let fills = filter(&args, "--fill", &FILLS);
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
    let mut copier = or_exit(MemcpyFloor::new(), "the memcpy buffers");

    println!(
        "| size | fill (reached: ours / linux) | ours (ns) | linux (ns) | memcpy (ns) \
         | ours/linux | ours/memcpy |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for size in sizes {
        let floor = median_ns(|| copier.copy(size), t.batches, t.batch_time);
        for fill in fills.iter().copied() {
            let mem = or_exit(case_memory(), "the benchmark memory");
            // SAFETY: the pool alone uses its part of the fresh memory, and is dropped
            // before it.
            let ours = or_exit(unsafe { real_pool(&mem) }, "the pool");
            // SAFETY: `ours` is fresh over a case memory nothing else uses.
            let (ours, ours_fill) = unsafe { measure(&ours, fill, size, t) };
            let mem = or_exit(case_memory(), "the benchmark memory");
            // SAFETY: the map and the pool over it live no longer than `mem`.
            let map = unsafe { linear_map(&mem) };
            // SAFETY: the pool alone uses its part of the memory.
            let linux = or_exit(unsafe { linux_pool(&map, mem.base()) }, "the Linux pool");
            // SAFETY: `linux` is fresh over a case memory nothing else uses.
            let (linux, linux_fill) = unsafe { measure(&linux, fill, size, t) };
            println!(
                "| {size} B | {fill}% ({ours_fill:.1}% / {linux_fill:.1}%) | {ours:.1} \
                 | {linux:.1} | {floor:.1} | {:.2} | {:.2} |",
                ours / linux,
                ours / floor,
            );
        }
    }
}
