//! The comparative benchmarks of `cargo xtask bench`: every figure measured `--runs N` times,
//! one JSON line per figure (median, min, max) on stdout, then (without `--quick`) the
//! Markdown tables; progress on stderr; with `--svg-dir DIR` (full run) the plots written
//! there. A usage error exits with 2.
//!
//! `cargo run --release -p swiotlb-bench --bin bench-report -- [--quick] [--runs N] [--svg-dir DIR]`

use std::process::ExitCode;
use std::time::Instant;

use swiotlb_bench::suite::{SuiteOptions, USAGE, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let o = match SuiteOptions::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let t0 = Instant::now();
    let out = match run(&o, &mut |step| {
        eprintln!("[{:6.1} s] {step}", t0.elapsed().as_secs_f64());
    }) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("bench-report: {e}");
            return ExitCode::FAILURE;
        }
    };
    for f in &out.figures {
        println!("{}", f.to_json());
    }
    if !out.tables.is_empty() {
        println!("\n{}", out.tables);
    }
    if let Some(dir) = &o.svg_dir {
        if o.quick {
            eprintln!(
                "bench-report: --quick draws no plots; {} left as it was",
                dir.display()
            );
        } else {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("bench-report: cannot create {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            for (name, svg) in &out.svgs {
                let path = dir.join(name);
                if let Err(e) = std::fs::write(&path, svg) {
                    eprintln!("bench-report: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("wrote {}", path.display());
            }
        }
    }
    eprintln!("bench-report: done in {:.1} s", t0.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
