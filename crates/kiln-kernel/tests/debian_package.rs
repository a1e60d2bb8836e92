//! A prebuilt Debian kernel package becomes an artifact of the same shape as a build.

use std::process::Command;

use kiln_kernel::{Arch, KernelCache};

#[test]
#[ignore = "slow: downloads a linux-image-*-cloud-amd64 package (~25 MB) with apt-get download"]
fn debian_cloud_kernel_package_imports_as_an_artifact() {
    let work = tempfile::tempdir().unwrap();
    // The newest cloud kernel the host's apt sources know; the lock will pin one instead.
    let search = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            "^linux-image-6\\.1\\.0-[0-9]+-cloud-amd64$",
        ])
        .output()
        .unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&search.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort_by_key(|name| {
        name.split('-')
            .nth(4)
            .and_then(|abi| abi.parse::<u32>().ok())
    });
    let package = names
        .last()
        .expect("apt knows a linux-image-6.1.0-*-cloud-amd64 package: run apt-get update");
    let status = Command::new("apt-get")
        .current_dir(work.path())
        .args(["download", "-q", package])
        .status()
        .unwrap();
    assert!(status.success(), "apt-get download {package}");
    let deb = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().ends_with(".deb"))
        .unwrap()
        .path();
    let sha256 = kiln_kernel::source::sha256_file(&deb).unwrap();

    let cache_dir = tempfile::tempdir().unwrap();
    let cache = KernelCache::new(cache_dir.path());
    let artifact = kiln_kernel::debian_package::import_debian_package(
        &deb,
        &sha256,
        Arch::X86_64,
        1_700_000_000,
        &cache,
    )
    .unwrap();
    assert!(
        artifact.release.ends_with("-cloud-amd64"),
        "{}",
        artifact.release
    );
    let names: Vec<&str> = artifact.files.keys().map(String::as_str).collect();
    assert_eq!(names, ["System.map", "config", "modules.tar", "vmlinuz"]);
    let config = std::fs::read_to_string(artifact.config_path()).unwrap();
    assert!(
        config.contains("CONFIG_VIRTIO_NET="),
        "a cloud kernel has virtio-net"
    );
    let listing = kiln_kernel::modules_tar::list_entries(
        &std::fs::read(artifact.modules_tar_path()).unwrap(),
    )
    .unwrap();
    assert!(
        listing
            .iter()
            .any(|line| line.contains(&format!("lib/modules/{}/modules.dep", artifact.release))),
        "{listing:#?}"
    );
    // Importing again is a cache hit with the same bytes.
    let again = kiln_kernel::debian_package::import_debian_package(
        &deb,
        &sha256,
        Arch::X86_64,
        1_700_000_000,
        &cache,
    )
    .unwrap();
    assert_eq!(again, artifact);
}
