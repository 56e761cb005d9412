//! Runs the `sim-dom0` binary briefly and checks its report and its exit status, including
//! the failure path (a corrupted byte must make it fail loudly).

use std::process::{Command, Output};

fn sim_dom0(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sim-dom0"))
        .args(args)
        .output()
        .expect("run sim-dom0")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The number after `key` on the report line that starts with `line`.
fn number_after(report: &str, line: &str, key: &str) -> u64 {
    let l = report
        .lines()
        .find(|l| l.trim_start().starts_with(line))
        .unwrap_or_else(|| panic!("no {line:?} line in:\n{report}"));
    let rest = &l[l.find(key).unwrap_or_else(|| panic!("no {key:?} in {l:?}")) + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {key:?} in {l:?}"))
}

#[test]
fn both_platforms_pass_and_report() {
    let out = sim_dom0(&["--transfers", "300", "--quiet"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    assert!(stdout.ends_with("sim-dom0: PASS\n"), "{stdout}");
    let reports: Vec<&str> = stdout.split("sim-dom0 report: ").skip(1).collect();
    assert_eq!(reports.len(), 2, "{stdout}");
    assert!(reports[0].starts_with("x86-pv, 32-bit coherent device"));
    assert!(reports[1].starts_with("arm64, 32-bit non-coherent device"));
    // Two backend CPUs by default, each with its own ring.
    assert!(reports.iter().all(|r| r.contains("2 CPU(s)")));
    for r in reports {
        assert_eq!(number_after(r, "transfers", "transfers"), 300, "{r}");
        let maps = number_after(r, "mappings", "mappings");
        let direct = number_after(r, "mappings", "direct");
        let bounced = number_after(r, "mappings", "bounced");
        assert_eq!(direct + bounced, maps, "{r}");
        assert_eq!(maps, number_after(r, "transfers", "of payload,"), "{r}");
        // A 32-bit device on these machines needs both paths.
        assert!(direct > 0 && bounced > 0, "{r}");
        assert_eq!(number_after(r, "mappings", "failed"), 0, "{r}");
        assert!(number_after(r, "pool  ", "high-water") > 0, "{r}");
        assert!(
            number_after(r, "run hypercalls", "GNTTABOP_map_grant_ref") > 0,
            "{r}"
        );
        assert!(r.contains("0 DMA faults, 0 cache violations"), "{r}");
        assert_eq!(number_after(r, "rings", "rings"), 2, "{r}");
    }
    let arm = stdout
        .split("sim-dom0 report: arm64")
        .nth(1)
        .unwrap_or_default();
    // Foreign pages used directly by a non-coherent device are flushed through Xen.
    assert!(
        number_after(arm, "run hypercalls", "GNTTABOP_cache_flush") > 0,
        "{arm}"
    );
}

#[test]
fn a_full_pool_defers_requests_until_the_ones_in_flight_complete() {
    let out = sim_dom0(&[
        "--arch",
        "x86-pv",
        "--transfers",
        "200",
        "--pool-mib",
        "1",
        "--cpus",
        "1",
        "--queue-depth",
        "64",
        "--force-bounce",
        "--quiet",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert_eq!(number_after(&stdout, "mappings", "direct"), 0, "{stdout}");
    let deferred = number_after(&stdout, "mappings", "retried:");
    assert!(deferred > 0, "{stdout}");
    assert_eq!(
        number_after(&stdout, "mappings", "failed"),
        deferred,
        "{stdout}"
    );
    assert_eq!(
        number_after(&stdout, "pool  ", "high-water"),
        512,
        "{stdout}"
    );
}

#[test]
fn a_corrupted_byte_fails_the_run() {
    for id in ["0", "3"] {
        let out = sim_dom0(&[
            "--arch",
            "x86-pv",
            "--transfers",
            "20",
            "--quiet",
            "--inject-corruption",
            id,
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("VERIFICATION FAILED"), "{stderr}");
        assert!(stderr.contains(&format!(" #{id} (")), "{stderr}");
        assert!(!text(&out.stdout).contains("PASS"));
    }
}

#[test]
fn counts_below_one_say_1_and_not_the_u64_range() {
    let out = sim_dom0(&["--transfers", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("1.."), "{err}");
    assert!(!err.contains("18446744073709551615"), "{err}");
}

#[test]
fn every_tool_name_of_the_architectures_is_taken() {
    for arch in ["x86_64", "x86-pv", "aarch64", "arm64"] {
        let out = sim_dom0(&["--arch", arch, "--transfers", "3", "--quiet"]);
        assert!(out.status.success(), "--arch {arch}: {}", text(&out.stderr));
    }
}

#[test]
fn bad_options_are_usage_errors() {
    for args in [
        &["--arch", "riscv"][..],
        &["--transfers", "0"],
        &["--non-coherent"],
        &["--dma-bits", "99"],
        &["--cpus", "4", "--queue-depth", "17"],
    ] {
        let out = sim_dom0(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_device_that_cannot_reach_the_pool_is_refused() {
    let out = sim_dom0(&["--arch", "arm64", "--dma-bits", "20", "--transfers", "5"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("dma_supported"), "{stderr}");
}

/// The `growth:` and `map failures:` numbers of each platform's burst report, in order.
fn burst_lines(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .split("sim-dom0 bursts: ")
        .skip(1)
        .map(|r| {
            let arch = r.split(',').next().unwrap_or_default().to_owned();
            (arch, number_after(r, "map failures:", "map failures:"))
        })
        .collect()
}

#[test]
fn bursts_with_growth_map_everything_and_give_the_pools_back() {
    let out = sim_dom0(&["--grow"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(
        burst_lines(&stdout),
        [("x86-pv".to_owned(), 0), ("arm64".to_owned(), 0)],
        "{stdout}"
    );
    for r in stdout.split("sim-dom0 bursts: ").skip(1) {
        // Exactly the promised line, with pools added and removed and a peak beyond 2 MiB.
        let line = r
            .lines()
            .find(|l| l.starts_with("growth: "))
            .unwrap_or_else(|| panic!("no growth line in {r}"));
        let added = number_after(line, "growth:", "pools added");
        let removed = number_after(line, "growth:", "removed");
        let peak = number_after(line, "growth:", "peak");
        assert_eq!(
            line,
            format!("growth: pools added {added}, removed {removed}, peak {peak} KiB")
        );
        assert!(added > 0 && removed > 0 && peak >= 2048, "{line}");
        // All given back in the quiet periods; nothing alive at the end.
        assert_eq!(removed, added, "{r}");
        assert_eq!(
            number_after(r, "growth detail", "live at the end,"),
            0,
            "{r}"
        );
        // 1 MiB mappings made whole, every byte through the device.
        assert!(
            number_after(r, "large buffers", "large buffers:") > 0,
            "{r}"
        );
        assert!(number_after(r, "verified", "verified:") > 4096, "{r}");
    }
    assert!(stdout.ends_with("sim-dom0: PASS\n"), "{stdout}");
}

#[test]
fn bursts_on_the_fixed_pool_fail_maps() {
    let out = sim_dom0(&["--no-grow", "--arch", "aarch64"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines = burst_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0].0, "arm64");
    assert!(lines[0].1 > 0, "{stdout}");
    assert!(stdout.contains("growth: off"), "{stdout}");
    assert!(!stdout.contains("growth: pools added"), "{stdout}");
}

#[test]
fn grow_and_no_grow_exclude_each_other() {
    let out = sim_dom0(&["--grow", "--no-grow"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = sim_dom0(&["--grow", "--rounds", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
