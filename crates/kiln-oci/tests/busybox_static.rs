//! A real Debian package, fetched with the host's ordinary `apt-get download`, made into an
//! image twice in different conditions, read by skopeo, and extracted with GNU tar to the
//! same tree as `dpkg-deb -x`. Slow: needs apt and the network.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{describe_tree, dpkg_deb_extract, gnu_tar_extract, run, skopeo};
use kiln_oci::{
    debian_package_reference_name, image_from_deb_file, BuiltDebianPackageImage, OciLayout,
    OciPlatform, SourceDateEpoch,
};

/// Debian 12's release date, standing in for the lock's pinned epoch.
const EPOCH: SourceDateEpoch = SourceDateEpoch::from_seconds(1_686_398_400);

fn download_busybox_static(directory: &Path) -> PathBuf {
    let policy = run(Command::new("apt-cache").args(["policy", "busybox-static"]));
    if !policy.contains("Candidate:") || policy.contains("Candidate: (none)") {
        run(Command::new("apt-get").args(["update", "-qq"]));
    }
    run(Command::new("apt-get")
        .args(["download", "-qq", "busybox-static"])
        .current_dir(directory));
    let mut debs: Vec<_> = fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "apt-get download left {debs:?}");
    debs.pop().unwrap()
}

fn build(deb: &Path, layout_directory: &Path) -> (OciLayout, BuiltDebianPackageImage) {
    let layout = OciLayout::open_or_create(layout_directory).unwrap();
    let built = image_from_deb_file(&layout, deb, OciPlatform::LinuxAmd64, EPOCH).unwrap();
    (layout, built)
}

/// Runs in a child process started by `busybox_static_image_is_reproducible_and_accepted_by_skopeo`,
/// with another umask, TZ and locale; without its environment variables it does nothing.
#[test]
#[ignore = "helper: does nothing unless started by busybox_static_image_is_reproducible_and_accepted_by_skopeo"]
fn helper_process_builds_busybox_static_image() {
    let Ok(deb) = std::env::var("KILN_OCI_TEST_HELPER_DEB") else {
        return;
    };
    let layout_directory = std::env::var("KILN_OCI_TEST_HELPER_LAYOUT").unwrap();
    // SAFETY: umask(2) only replaces the process's file-creation mask and cannot fail; this
    // process is a helper that runs this one test.
    unsafe { libc::umask(0o077) };
    let (_, built) = build(Path::new(&deb), Path::new(&layout_directory));
    println!(
        "KILN_OCI_TEST_HELPER_RESULT {} {}",
        built.image.manifest_digest, built.image.layer_digest
    );
}

#[test]
#[ignore = "slow: downloads busybox-static with apt-get (network)"]
fn busybox_static_image_is_reproducible_and_accepted_by_skopeo() {
    let directory = tempfile::tempdir().unwrap();
    let deb = download_busybox_static(directory.path());

    let started = Instant::now();
    let (layout, built) = build(&deb, &directory.path().join("layout"));
    let elapsed = started.elapsed();
    eprintln!(
        "{} {} ({} bytes): manifest {} layer {} ({} bytes), built in {:?}",
        built.package.package,
        built.package.version,
        fs::metadata(&deb).unwrap().len(),
        built.image.manifest_digest,
        built.image.layer_digest,
        built.image.layer_size,
        elapsed
    );
    assert_eq!(built.package.package, "busybox-static");
    assert_eq!(built.package.architecture, "amd64");

    // Built again in a child with umask 077, TZ and locale changed, another directory and
    // another file name for the .deb: the same image, byte for byte.
    let elsewhere = tempfile::Builder::new()
        .prefix("elsewhere-")
        .tempdir()
        .unwrap();
    let renamed_deb = elsewhere.path().join("downloaded.deb");
    fs::copy(&deb, &renamed_deb).unwrap();
    let child_layout_directory = elsewhere.path().join("layout");
    let output = run(Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process_builds_busybox_static_image",
            "--include-ignored",
            "--nocapture",
        ])
        .current_dir(elsewhere.path())
        .env("KILN_OCI_TEST_HELPER_DEB", &renamed_deb)
        .env("KILN_OCI_TEST_HELPER_LAYOUT", &child_layout_directory)
        .env("TZ", "America/St_Johns")
        .env("LC_ALL", "tr_TR.UTF-8"));
    let result = output
        .lines()
        .find_map(|line| Some(line.split_once("KILN_OCI_TEST_HELPER_RESULT ")?.1))
        .unwrap_or_else(|| panic!("the helper printed no result:\n{output}"));
    assert_eq!(
        result,
        format!(
            "{} {}",
            built.image.manifest_digest, built.image.layer_digest
        )
    );
    assert_eq!(
        fs::read(layout.blob_path(&built.image.layer_digest)).unwrap(),
        fs::read(
            OciLayout::open_or_create(&child_layout_directory)
                .unwrap()
                .blob_path(&built.image.layer_digest)
        )
        .unwrap()
    );

    // skopeo reads it under kiln's reference name for the package.
    let reference = debian_package_reference_name(
        &built.package.package,
        &built.package.version,
        &built.package.architecture,
    );
    layout
        .add_manifest_ref(&reference, &built.image.manifest)
        .unwrap();
    let source = format!("oci:{}:{reference}", layout.directory().display());
    let inspected: serde_json::Value =
        serde_json::from_str(&run(skopeo().arg("inspect").arg(&source))).unwrap();
    assert_eq!(inspected["Digest"], built.image.manifest_digest.to_string());
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Created"], "2023-06-10T12:00:00Z");
    let copied = directory.path().join("copied");
    run(skopeo()
        .arg("copy")
        .arg(&source)
        .arg(format!("dir:{}", copied.display())));
    assert_eq!(
        fs::read(copied.join("manifest.json")).unwrap(),
        layout.read_blob(&built.image.manifest_digest).unwrap()
    );

    // The layer is the package: GNU tar extracts what dpkg-deb -x extracts.
    let from_layer = directory.path().join("from-layer");
    let from_dpkg = directory.path().join("from-dpkg-deb");
    gnu_tar_extract(&layout.blob_path(&built.image.layer_digest), &from_layer);
    dpkg_deb_extract(&deb, &from_dpkg);
    let tree = describe_tree(&from_layer);
    assert_eq!(tree, describe_tree(&from_dpkg));
    assert!(
        tree.iter()
            .any(|line| line.starts_with("file 0755 0:0 bin/busybox ")),
        "{tree:#?}"
    );
}
