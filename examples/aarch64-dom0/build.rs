//! Links the two kernels for `aarch64-unknown-none` with their linker scripts; on any other
//! target (the host stubs) there is nothing to do.

use std::env;
use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    for script in ["kernel.ld", "dom0.ld", "domu.ld"] {
        println!("cargo:rerun-if-changed={}", dir.join(script).display());
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    // `kernel.ld` is shared; each kernel's script sets its load address and includes it.
    println!("cargo:rustc-link-arg=-L{}", dir.display());
    println!("cargo:rustc-link-arg-bin=aarch64-dom0=-Tdom0.ld");
    println!("cargo:rustc-link-arg-bin=aarch64-domu=-Tdomu.ld");
}
