//! The slow tier: kernel builds and QEMU boots. CI runs them (`--run-ignored all`). The
//! kernels are `cargo xtask kernel`'s (the lock-pinned source, the cache every image build
//! uses), so the suite builds each of them once.

mod common;

use std::time::Duration;

use kiln_kernel::{Arch, Flavor};

/// Nothing of the build machine in the modules: owners 0:0, the lock's epoch, no
/// `build`/`source` symlinks into the build tree; ENA is a module. (That two builds in
/// different directories, under different umasks and job counts, give the same bytes is
/// the reproducibility gate's: `tests/repro_gate.rs` builds both kernels again from scratch
/// in another clone and compares the images.)
#[test]
#[ignore = "slow: cargo xtask kernel (x86_64 virt, built unless cached)"]
fn virt_x86_64_modules_carry_nothing_of_the_build_machine() {
    let artifact = common::locked_artifact(Arch::X86_64, Flavor::Virt);
    let listing = kiln_kernel::modules_tar::list_entries(
        &std::fs::read(artifact.modules_tar_path()).unwrap(),
    )
    .unwrap();
    let stamp = format!(" 0:0 {} ", common::TEST_EPOCH);
    assert!(
        listing.iter().all(|line| line.contains(&stamp)),
        "{listing:#?}"
    );
    assert!(
        listing.iter().all(|line| line.starts_with("755 ")
            || line.starts_with("644 ")
            || line.starts_with("777 ")),
        "modes other than 755/644 (files, directories) and 777 (symlinks): {listing:#?}"
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
    let artifact = common::locked_artifact(arch, Flavor::Virt);
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
#[ignore = "slow: cargo xtask kernel (x86_64 virt, built unless cached), then boots it in QEMU (TCG)"]
fn virt_x86_64_boots_an_initramfs_in_qemu() {
    boots(Arch::X86_64);
}

#[test]
#[ignore = "slow: cargo xtask kernel (aarch64 virt, built unless cached), then boots it in QEMU (TCG, cortex-a57)"]
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
