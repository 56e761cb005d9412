//! `cargo xtask bench` answers `--help` and refuses bad arguments with exit status 2, before
//! it builds or measures anything.

use std::process::Command;

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("the xtask binary runs")
}

#[test]
fn bench_help_prints_the_usage() {
    let out = xtask(&["bench", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("usage: cargo xtask bench"), "{text}");
    assert!(
        text.contains("--runs N") && text.contains("--svg-dir DIR"),
        "{text}"
    );
}

#[test]
fn bench_runs_zero_is_a_usage_error() {
    for bad in [
        &["bench", "--runs", "0"][..],
        &["bench", "--runs"],
        &["bench", "--fast"],
    ] {
        let out = xtask(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("usage: cargo xtask bench"), "{bad:?}: {text}");
        if bad.len() == 3 {
            assert!(text.contains("1.."), "{bad:?}: {text}");
        }
    }
}
