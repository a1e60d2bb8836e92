//! `cargo xtask repro`, the reproducibility gate CI runs: aarch64 here (x86_64 is covered by
//! `image_build.rs`), built twice in different conditions, every output identical.

use kiln_tests::{run, xtask};

#[test]
#[ignore = "slow: two aarch64 image builds, one with an empty store (apt downloads) and a cold cargo target dir"]
fn aarch64_hook_image_is_reproducible() {
    let output = run(&mut xtask(&[
        "repro",
        "--arch",
        "aarch64",
        "--profile",
        "hook",
    ]))
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("reproducible: hook aarch64 built twice, every output identical"),
        "{stdout}"
    );
    for name in [
        "vmlinuz-aarch64",
        "initramfs-aarch64",
        "hook_aarch64.tar.gz",
        "manifest.json",
        "cmdline",
        "boot.ipxe",
    ] {
        assert!(
            stdout.contains(&format!("  {name}\n")),
            "{name} not compared:\n{stdout}"
        );
    }
}
