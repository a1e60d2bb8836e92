//! `cargo xtask repro`, the reproducibility gate CI runs: `hook` for both architectures,
//! built by this builder and again by a builder compiled from scratch in another clone,
//! with an empty store and its own kernel builds, under other conditions (see
//! `xtask/src/repro.rs`); every output identical.
//!
//! What it shares with the rest of the suite, and why that keeps it honest: build A uses
//! the default store and kernel cache, which the smoke tests fill too (A is the image they
//! boot); nothing of B's is shared with anything (its store, kernel builds, target
//! directory and builder are its own), so whatever A took from a cache, B made anew.

use kiln_tests::{run, xtask};

#[test]
#[ignore = "slow: hook for x86_64 and aarch64 built twice; B compiles its own builder and both kernels from scratch"]
fn hook_is_reproducible_by_a_second_builder_from_scratch_on_both_architectures() {
    let output = run(&mut xtask(&[
        "repro",
        "--arch",
        "x86_64",
        "--arch",
        "aarch64",
        "--profile",
        "hook",
    ]))
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for arch in ["x86_64", "aarch64"] {
        assert!(
            stdout.contains(&format!(
                "reproducible: hook {arch} built twice, every output identical"
            )),
            "{stdout}"
        );
        for name in [
            format!("vmlinuz-{arch}"),
            format!("initramfs-{arch}"),
            format!("hook_{arch}.tar.gz"),
            "manifest.json".to_string(),
            "cmdline".to_string(),
            "boot.ipxe".to_string(),
        ] {
            assert!(
                stdout.contains(&format!("  {name}\n")),
                "{name} not compared:\n{stdout}"
            );
        }
    }
}
