//! `dma-map-bench`: Linux's `dma_map_benchmark` for this project (see
//! `swiotlb_bench::mapbench` for what it does and how it differs).
//!
//! ```text
//! cargo run --release -p swiotlb-bench --bin dma-map-bench -- -t 2 -s 5 -g 1 -d 1 --arch x86
//! cargo run --release -p swiotlb-bench --bin dma-map-bench -- -m 1 -g 8 -s 5 -d 2 --arch arm64
//! cargo run --release -p swiotlb-bench --bin dma-map-bench -- -s 5 --backend pool
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use swiotlb_bench::mapbench::{
    Backend, OptError, Options, PoolTarget, Sums, Target, format_report, run,
};
use swiotlb_bench::sim::{TargetVisitor, with_facade};

/// Runs the benchmark on a target with the progress line, then prints the report.
struct Bench(Options);

impl TargetVisitor for Bench {
    type Out = Result<(Sums, String), String>;

    fn visit<T: Target>(self, t: &T) -> Self::Out {
        let o = self.0;
        let mut err = std::io::stderr();
        let sums = run(&o, t, None, &mut |sec, loops| {
            if !o.quiet {
                // A failed progress write is not worth stopping the benchmark for.
                let _ = write!(
                    err,
                    "\r[{sec:>3}/{} s] {loops} map+unmap iterations",
                    o.seconds
                );
                let _ = err.flush();
            }
        });
        if !o.quiet {
            let _ = writeln!(err);
        }
        Ok((sums?, t.summary()))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match Options::parse(&args) {
        Ok(o) => o,
        Err(OptError::Help) => {
            println!("{}", OptError::Help);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // A usage error, as for every tool of the project.
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let r = match o.backend {
        Backend::Pool => PoolTarget::new(&o).and_then(|t| Bench(o).visit(&t)),
        Backend::Facade(arch) => with_facade(arch, &o, Bench(o)).and_then(|r| r),
    };
    match r {
        Ok((sums, summary)) => {
            print!("{}", format_report(&o, &sums));
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dma-map-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
