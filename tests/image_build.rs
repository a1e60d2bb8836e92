//! `cargo xtask image` end to end: the same profile built from two checkouts at different
//! paths, one with a cold store and target directory under umask 077, another TZ and
//! locale, the other warm, gives the same SHA256SUMS; a repeated build is a no-op. The
//! image has busybox's applet links where its own busybox would install them.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
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

    assert_busybox_links(&warm_out.join("hook/x86_64/initramfs-x86_64"));

    // Again, unchanged: nothing to do.
    let again = run(&mut image(&workspace_root(), &warm_out, &kernel)).unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("up to date, nothing to do"), "{stdout}");
}

/// The `busybox-links` generator's links are in the initramfs (`sbin/modprobe`, `bin/cat`,
/// `usr/bin/wget` -> `/bin/busybox`), and they are what the image's own busybox, run here
/// (x86_64), lists with `--list-full`, but for the paths the image has something else at
/// (the `busybox` applet, which is the binary itself, and base's `bin/sh -> busybox`), as
/// `busybox --install -s` would leave them.
fn assert_busybox_links(initramfs: &Path) {
    const S_IFMT: u32 = 0o170_000;
    const S_IFLNK: u32 = 0o120_000;
    let bytes = std::fs::read(initramfs).unwrap();
    let segments = kiln_archive::read_initramfs(&bytes).unwrap();
    let members: Vec<&kiln_archive::RawMember> = segments
        .iter()
        .flat_map(|segment| &segment.members)
        .collect();
    let name =
        |member: &kiln_archive::RawMember| String::from_utf8_lossy(&member.name).into_owned();
    let links: BTreeSet<String> = members
        .iter()
        .filter(|member| member.mode & S_IFMT == S_IFLNK && member.data == b"/bin/busybox")
        .map(|member| name(member))
        .collect();
    let all: BTreeSet<String> = members.iter().map(|member| name(member)).collect();
    for expected in ["sbin/modprobe", "bin/cat", "usr/bin/wget"] {
        assert!(
            links.contains(expected),
            "{expected} -> /bin/busybox missing: {links:?}"
        );
    }

    let busybox = members
        .iter()
        .find(|member| member.name == b"bin/busybox")
        .expect("bin/busybox in the initramfs");
    let scratch = tempfile::tempdir().unwrap();
    let binary = scratch.path().join("busybox");
    std::fs::write(&binary, &busybox.data).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let listed = run(Command::new(&binary).arg("--list-full")).unwrap();
    let listed: BTreeSet<String> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let kept: BTreeSet<String> = listed.difference(&links).cloned().collect();
    assert_eq!(
        kept,
        BTreeSet::from(["bin/busybox".to_owned(), "bin/sh".to_owned()]),
        "applets without a link to /bin/busybox (links: {} of {} applets)",
        links.len(),
        listed.len()
    );
    assert!(kept.iter().all(|path| all.contains(path)), "{kept:?}");
    assert_eq!(
        links.difference(&listed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "links to /bin/busybox that are no applet"
    );
}
