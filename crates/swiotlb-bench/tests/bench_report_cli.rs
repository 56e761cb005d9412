//! `bench-report` answers `--help` and refuses bad arguments with exit status 2, before it
//! measures anything.

use std::process::Command;

fn report(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bench-report"))
        .args(args)
        .output()
        .expect("bench-report runs")
}

#[test]
fn help_prints_the_usage() {
    for h in ["--help", "-h"] {
        let out = report(&[h]);
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("usage: bench-report"), "{text}");
        assert!(text.contains("--runs N"), "{text}");
    }
}

#[test]
fn runs_out_of_range_is_a_usage_error() {
    for bad in [
        &["--runs", "0"][..],
        &["--quick", "--runs", "0"],
        &["--runs", "1000"],
        &["--runs"],
    ] {
        let out = report(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("1..=100"), "{bad:?}: {text}");
        assert!(out.stdout.is_empty(), "{bad:?}: printed figures");
    }
    let out = report(&["--fast"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fast"));
}
