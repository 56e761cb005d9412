//! Links the kernel with `link.ld` when it is built for a bare-metal target; a host build
//! (the workspace's `cargo clippy`/`cargo test`) is an ordinary program that only says what
//! it is.

fn main() {
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
        // A fixed-address kernel: Xen loads the segments at their link addresses and applies
        // no relocations, so the (static-PIE by default) target links as a plain executable.
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
