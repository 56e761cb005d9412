//! `dma-map-bench` answers `--help`, refuses bad options with exit status 2 before it maps
//! anything, and in `SG_MODE` prints the kernel tool's lines and the percentiles.

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dma-map-bench"))
        .args(args)
        .output()
        .expect("dma-map-bench runs")
}

#[test]
fn help_prints_the_usage() {
    for h in ["--help", "-h"] {
        let out = bench(&[h]);
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("usage: dma-map-bench"), "{text}");
        assert!(text.contains("-m: 0 = SINGLE_MODE"), "{text}");
    }
}

#[test]
fn bad_options_are_usage_errors() {
    for (bad, says) in [
        (
            &["-m", "2"][..],
            "invalid map mode, SINGLE_MODE:0, SG_MODE: 1",
        ),
        (&["-m", "1", "--backend", "pool"], "use --backend facade"),
        (&["-g", "0"], "invalid granule size"),
        (&["--arch", "riscv"], "bad option"),
        (&["-m"], "bad option"),
    ] {
        let out = bench(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains(says), "{bad:?}: {text}");
        assert!(out.stdout.is_empty(), "{bad:?}: printed a report");
    }
}

#[test]
fn sg_mode_prints_the_kernel_lines_and_the_percentiles() {
    for arch in ["x86-pv", "arm64"] {
        let out = bench(&[
            "-m", "1", "-g", "8", "-s", "1", "-d", "2", "-q", "--arch", arch,
        ]);
        assert_eq!(out.status.code(), Some(0), "{arch}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "dma mapping benchmark(SG_MODE): threads:1 seconds:1 node:-1 dir:FROM_DEVICE granule:8",
            "{text}"
        );
        assert!(lines[1].starts_with("average map latency(us):"), "{text}");
        assert!(lines[2].starts_with("average unmap latency(us):"), "{text}");
        assert!(
            lines[5].starts_with("map latency percentiles(ns): p50:"),
            "{text}"
        );
        assert!(
            lines[6].contains(" p99:") && lines[6].contains(" p99.9:"),
            "{text}"
        );
        assert!(text.contains("scatterlists mapped, 0 failed"), "{text}");
    }
}
