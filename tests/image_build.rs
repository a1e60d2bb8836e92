//! `cargo xtask image` end to end: the same profile built from two checkouts at different
//! paths, one with a cold store and target directory under umask 077, another TZ and
//! locale, the other warm, gives the same SHA256SUMS; a repeated build is a no-op.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use kiln_tests::{run, workspace_root, xtask};

fn image(root: &Path, out: &Path, kernel: &Path) -> Command {
    let mut command = xtask(&[
        "image",
        "--arch",
        "x86_64",
        "--profile",
        "hook",
        "--no-setup",
    ]);
    command
        .arg("--root")
        .arg(root)
        .arg("--out")
        .arg(out)
        .arg("--kernel-artifact")
        .arg(kernel);
    command
}

#[test]
#[ignore = "slow: two image builds, one with a cold store (apt downloads) and a cold cargo target directory"]
fn same_sha256sums_from_two_checkouts_cold_and_warm() {
    let kernel = kiln_tests::kernel_artifact("x86_64", "virt");
    let work = tempfile::tempdir().unwrap();
    let second_checkout = work.path().join("elsewhere/deeper/kiln");
    kiln_tests::copy_checkout(&second_checkout).unwrap();

    // Cold: a new store, a new cargo target dir, umask 077, another TZ and locale.
    let cold_cache = work.path().join("cold-cache");
    let cold_target = work.path().join("cold-target");
    let cold_out = work.path().join("cold-out");
    let mut cold = image(&second_checkout, &cold_out, &kernel);
    cold.env("KILN_CACHE", &cold_cache)
        .env("CARGO_TARGET_DIR", &cold_target)
        .env("TZ", "Pacific/Chatham")
        .env("LC_ALL", "C.UTF-8")
        .env("LANG", "de_DE.UTF-8");
    // SAFETY: umask(2) is async-signal-safe and cannot fail.
    unsafe {
        cold.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let cold_output = run(&mut cold).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&cold_output.stdout));

    // Warm: this checkout, the default store and target dir, umask 022, UTC.
    let warm_out = work.path().join("warm-out");
    let mut warm = image(&workspace_root(), &warm_out, &kernel);
    warm.env("TZ", "UTC").env("LANG", "C");
    // SAFETY: as above.
    unsafe {
        warm.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    run(&mut warm).unwrap();

    let sums = |out: &Path| std::fs::read_to_string(out.join("hook/x86_64/SHA256SUMS")).unwrap();
    let (cold_sums, warm_sums) = (sums(&cold_out), sums(&warm_out));
    if cold_sums != warm_sums {
        let diff = Command::new(kiln_tests::xtask_binary())
            .arg("diff")
            .arg(cold_out.join("hook/x86_64/initramfs-x86_64"))
            .arg(warm_out.join("hook/x86_64/initramfs-x86_64"))
            .output()
            .unwrap();
        panic!(
            "SHA256SUMS differ:\ncold:\n{cold_sums}\nwarm:\n{warm_sums}\ninitramfs diff:\n{}",
            String::from_utf8_lossy(&diff.stdout)
        );
    }
    for name in [
        "vmlinuz-x86_64",
        "initramfs-x86_64",
        "cmdline",
        "boot.ipxe",
        "hook_x86_64.tar.gz",
        "manifest.json",
    ] {
        assert!(
            cold_sums.contains(&format!("  {name}\n")),
            "{name} missing from SHA256SUMS:\n{cold_sums}"
        );
    }

    // Again, unchanged: nothing to do.
    let again = run(&mut image(&workspace_root(), &warm_out, &kernel)).unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("up to date, nothing to do"), "{stdout}");
}
