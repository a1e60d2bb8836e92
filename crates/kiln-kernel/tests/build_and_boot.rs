//! The slow tier: kernel builds and QEMU boots. CI runs them (`--run-ignored all`); a
//! `cargo xtask kernel` run with the same inputs beforehand makes the boot tests cheap,
//! since the artifact is then found in the cache by key.

mod common;

use std::time::Duration;

use kiln_kernel::{Arch, Flavor, KernelCache};

#[test]
#[ignore = "slow: two cold x86_64 virt kernel builds (2 × 7–30 min on 2 cores)"]
fn virt_x86_64_builds_are_identical_from_different_directories() {
    let first_cache = tempfile::Builder::new()
        .prefix("kiln-kernel-first-")
        .tempdir()
        .unwrap();
    let second_cache = tempfile::Builder::new()
        .prefix("kiln-kernel-second-elsewhere-")
        .tempdir()
        .unwrap();
    let configs = common::workspace_root().join("kernel-configs");
    let request = common::request(Arch::X86_64, Flavor::Virt, configs);
    let first = kiln_kernel::build_kernel(
        &request,
        &KernelCache::new(first_cache.path()),
        &mut kiln_kernel::build::NoProgress,
    )
    .unwrap();
    let second = kiln_kernel::build_kernel(
        &request,
        &KernelCache::new(second_cache.path()),
        &mut kiln_kernel::build::NoProgress,
    )
    .unwrap();
    assert_eq!(first.key, second.key);
    for name in ["vmlinuz", "modules.tar", "System.map", "config"] {
        assert_eq!(
            first.files[name],
            second.files[name],
            "{name} differs between {} and {}",
            first.dir.display(),
            second.dir.display()
        );
    }
    // Nothing of the build machine in the modules: no build/source symlinks, owners 0:0.
    let listing =
        kiln_kernel::modules_tar::list_entries(&std::fs::read(first.modules_tar_path()).unwrap())
            .unwrap();
    assert!(
        listing.iter().all(|line| line.contains(" 0:0 1700000000 ")),
        "{listing:#?}"
    );
    assert!(
        listing.iter().any(|line| line.ends_with("/ena.ko")),
        "ENA is a module: {listing:#?}"
    );
    assert!(
        !listing
            .iter()
            .any(|line| line.ends_with("/build") || line.ends_with("/source")),
        "{listing:#?}"
    );
}

/// TCG boots take seconds on an idle machine and minutes on a loaded one:
/// `KILN_BOOT_TIMEOUT_SECS` (default 600).
fn boot_timeout() -> Duration {
    Duration::from_secs(
        std::env::var("KILN_BOOT_TIMEOUT_SECS")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(600),
    )
}

fn boots(arch: Arch) {
    let cache = KernelCache::from_environment().expect("HOME or KILN_CACHE");
    let request = common::request(
        arch,
        Flavor::Virt,
        common::workspace_root().join("kernel-configs"),
    );
    let artifact =
        kiln_kernel::build_kernel(&request, &cache, &mut kiln_kernel::build::NoProgress).unwrap();
    let init = common::boot_init(arch);
    let work = tempfile::tempdir().unwrap();
    let initramfs = work.path().join("initramfs.zst");
    common::initramfs(&init, &initramfs);
    let output = common::boot(arch, &artifact.image_path(), &initramfs, boot_timeout());
    let expected = format!("kiln-kernel-boot-ok arch={}", arch.name());
    assert!(
        output.contains(&expected),
        "no `{expected}` on the console; serial output:\n{output}"
    );
    assert!(
        output.contains(&format!("Linux version {}", artifact.release)),
        "{output}"
    );
    assert!(
        output.contains("kiln@kiln"),
        "KBUILD_BUILD_USER/HOST not applied:\n{output}"
    );
}

#[test]
#[ignore = "slow: builds the x86_64 virt kernel unless cached, then boots it in QEMU (TCG)"]
fn virt_x86_64_boots_an_initramfs_in_qemu() {
    boots(Arch::X86_64);
}

#[test]
#[ignore = "slow: builds the aarch64 virt kernel unless cached, then boots it in QEMU (TCG, cortex-a57)"]
fn virt_aarch64_boots_an_initramfs_in_qemu() {
    boots(Arch::Aarch64);
}

/// The boot tests' artifacts are the ones `cargo xtask image` uses only if both build with
/// the lock's epoch.
#[test]
fn the_test_epoch_is_the_lock_epoch() {
    assert_eq!(
        common::TEST_EPOCH,
        common::lock_epoch(),
        "change TEST_EPOCH with kiln.lock's source_date_epoch"
    );
}
