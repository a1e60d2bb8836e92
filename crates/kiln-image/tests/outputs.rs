//! The output directory: names, contents, atomicity, and a tar.gz that does
//! not depend on the machine that wrote it.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_image::{boot_ipxe, write_outputs, ImageArch, Manifest, ManifestInput, OutputRequest};

fn manifest() -> Manifest<serde_json::Value> {
    Manifest {
        profile: "hook".into(),
        build_key: "11".repeat(32),
        arch: ImageArch::X86_64,
        source_date_epoch: 1_747_699_200,
        kernel_cmdline: "console=ttyS0".into(),
        inputs: vec![ManifestInput {
            kind: "debian-package".into(),
            name: "busybox-static".into(),
            version: "1:1.35.0-4+b3".into(),
            sha256: "00".repeat(32),
            required_by: vec!["base".into()],
        }],
        module_sizes: [("base".to_string(), 2_000_000u64)].into_iter().collect(),
        files: vec![serde_json::json!({"path": "init", "size": 1})],
    }
}

fn write_into(directory: &Path, kernel: &Path, initramfs: &Path) -> kiln_image::WrittenOutputs {
    let manifest = manifest();
    let request = OutputRequest {
        directory,
        profile: "hook",
        arch: ImageArch::X86_64,
        kernel_image: kernel,
        initramfs,
        cmdline: "console=ttyS0 console=tty0",
        manifest: &manifest,
    };
    write_outputs(&request, 1_747_699_200).unwrap()
}

#[test]
fn outputs_carry_hooks_names_and_check_with_sha256sum() {
    let work = tempfile::tempdir().unwrap();
    let (kernel, initramfs) = (work.path().join("k"), work.path().join("i"));
    fs::write(&kernel, b"kernel bytes").unwrap();
    fs::write(&initramfs, b"initramfs bytes").unwrap();
    let out = work.path().join("out/hook");
    let written = write_into(&out, &kernel, &initramfs);
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "boot.ipxe",
            "cmdline",
            "hook_x86_64.tar.gz",
            "initramfs-x86_64",
            "manifest.json",
            "vmlinuz-x86_64"
        ]
    );
    assert_eq!(written.sha256sums.len(), 6);
    // The real sha256sum accepts the file.
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // GNU tar lists the tarball with the two files, owned by root, at the epoch.
    let listing = Command::new("tar")
        .args(["--numeric-owner", "-tvzf", "hook_x86_64.tar.gz"])
        .current_dir(&out)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    insta::assert_snapshot!(String::from_utf8_lossy(&listing.stdout), @r"
    -rw-r--r-- 0/0              12 2025-05-20 00:00 vmlinuz-x86_64
    -rw-r--r-- 0/0              15 2025-05-20 00:00 initramfs-x86_64
    ");
    insta::assert_snapshot!(fs::read_to_string(out.join("boot.ipxe")).unwrap(), @r"
    #!ipxe

    kernel vmlinuz-x86_64 initrd=initramfs-x86_64 console=ttyS0 console=tty0
    initrd initramfs-x86_64
    boot
    ");
}

#[test]
fn the_tarball_is_identical_in_different_conditions() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    for directory in [first.path(), second.path()] {
        fs::write(directory.join("vmlinuz"), vec![7u8; 100_000]).unwrap();
        fs::write(directory.join("initramfs"), vec![9u8; 50_000]).unwrap();
    }
    // Different umask, TZ, and source mtimes/modes for the second build.
    // SAFETY: umask only changes this process's file creation mask; nextest
    // runs each test in its own process.
    let previous = unsafe { libc::umask(0o077) };
    fs::set_permissions(
        second.path().join("vmlinuz"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let stamp = Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(second.path().join("initramfs"))
        .status()
        .unwrap();
    assert!(stamp.success());
    std::env::set_var("TZ", "Asia/Kolkata");
    let one = write_into(
        &first.path().join("out"),
        &first.path().join("vmlinuz"),
        &first.path().join("initramfs"),
    );
    std::env::set_var("TZ", "UTC");
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let two = write_into(
        &second.path().join("out"),
        &second.path().join("vmlinuz"),
        &second.path().join("initramfs"),
    );
    assert_eq!(
        one.sha256sums, two.sha256sums,
        "outputs differ between two conditions"
    );
    assert_eq!(
        fs::read(first.path().join("out/hook_x86_64.tar.gz")).unwrap(),
        fs::read(second.path().join("out/hook_x86_64.tar.gz")).unwrap()
    );
}

#[test]
fn a_failed_build_keeps_the_previous_outputs() {
    let work = tempfile::tempdir().unwrap();
    let (kernel, initramfs) = (work.path().join("k"), work.path().join("i"));
    fs::write(&kernel, b"old kernel").unwrap();
    fs::write(&initramfs, b"old initramfs").unwrap();
    let out = work.path().join("out/hook");
    write_into(&out, &kernel, &initramfs);
    let before = fs::read(out.join("SHA256SUMS")).unwrap();

    let manifest = manifest();
    let request = OutputRequest {
        directory: &out,
        profile: "hook",
        arch: ImageArch::X86_64,
        kernel_image: &work.path().join("missing-kernel"),
        initramfs: &initramfs,
        cmdline: "console=ttyS0",
        manifest: &manifest,
    };
    let error = write_outputs(&request, 1).unwrap_err().to_string();
    assert!(
        error.starts_with("reading ") && error.contains("missing-kernel"),
        "{error}"
    );
    assert_eq!(fs::read(out.join("SHA256SUMS")).unwrap(), before);
    let leftovers: Vec<String> = fs::read_dir(work.path().join("out"))
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(leftovers, ["hook"], "no staging directory may remain");
}

#[test]
fn boot_script_for_aarch64_names_its_files() {
    assert!(boot_ipxe(ImageArch::Aarch64, "console=ttyAMA0")
        .contains("kernel vmlinuz-aarch64 initrd=initramfs-aarch64 console=ttyAMA0"));
}
