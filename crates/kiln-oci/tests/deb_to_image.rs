//! `.deb` → OCI image, on packages built in the test by Debian's own `dpkg-deb`, checked with
//! GNU tar, `dpkg-deb -x` and skopeo. Functional and determinism tests; all fast.

mod common;

use std::fs;
use std::io::Read as _;
use std::path::Path;
use std::process::Command;

use common::{
    describe_tar, describe_tree, dpkg_deb_extract, gnu_tar_extract, run, skopeo, small_package_deb,
};
use kiln_oci::oci_json::{OciImageConfiguration, OciImageManifest};
use kiln_oci::{
    debian_package_reference_name, image_from_deb_bytes, image_from_deb_file,
    BuiltDebianPackageImage, OciLayout, OciPlatform, SourceDateEpoch,
};

const EPOCH: SourceDateEpoch = SourceDateEpoch::from_seconds(1_700_000_000);

fn build(deb: &Path, layout_directory: &Path) -> (OciLayout, BuiltDebianPackageImage) {
    let layout = OciLayout::open_or_create(layout_directory).unwrap();
    let built = image_from_deb_file(&layout, deb, OciPlatform::LinuxAmd64, EPOCH).unwrap();
    (layout, built)
}

#[test]
fn small_deb_manifest_config_and_layer_listing_snapshot() {
    let (directory, deb) = small_package_deb("xz", "amd64");
    let (layout, built) = build(&deb, &directory.path().join("layout"));
    let manifest_bytes = layout.read_blob(&built.image.manifest_digest).unwrap();
    let config_bytes = layout.read_blob(&built.image.config_digest).unwrap();
    // The canonical bytes are compact; pretty-print through the same structs (same key
    // order) so the snapshot can be reviewed.
    let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes).unwrap();
    let config: OciImageConfiguration = serde_json::from_slice(&config_bytes).unwrap();
    assert_eq!(
        serde_json::to_vec(&manifest).unwrap(),
        manifest_bytes,
        "manifest bytes are not canonical"
    );
    assert_eq!(
        serde_json::to_vec(&config).unwrap(),
        config_bytes,
        "config bytes are not canonical"
    );
    insta::assert_snapshot!(
        "small_deb_manifest_and_config",
        format!(
            "manifest digest: {}\n\nmanifest:\n{}\n\nconfig:\n{}\n",
            built.image.manifest_digest,
            serde_json::to_string_pretty(&manifest).unwrap(),
            serde_json::to_string_pretty(&config).unwrap()
        )
    );
    let layer = layout.read_blob(&built.image.layer_digest).unwrap();
    insta::assert_snapshot!("small_deb_layer_listing", describe_tar(&layer).join("\n"));
}

#[test]
fn layer_extracts_with_gnu_tar_to_the_same_tree_as_dpkg_deb_x() {
    let (directory, deb) = small_package_deb("xz", "amd64");
    let (layout, built) = build(&deb, &directory.path().join("layout"));
    let from_layer = directory.path().join("from-layer");
    let from_dpkg = directory.path().join("from-dpkg-deb");
    gnu_tar_extract(&layout.blob_path(&built.image.layer_digest), &from_layer);
    dpkg_deb_extract(&deb, &from_dpkg);
    let layer_tree = describe_tree(&from_layer);
    assert_eq!(layer_tree, describe_tree(&from_dpkg));
    // The interesting entries are really there (not just equal by both being empty).
    let joined = layer_tree.join("\n");
    for expected in [
        "file 4755 0:0 usr/sbin/setuid-helper",
        "usr/bin/tool hard link to usr/bin/a-hard-link-to-tool",
        "dir  0750 100:101 var/lib/kiln-test-small/",
        "dir  1777 0:0 var/tmp-kiln/",
        "link 0:0 usr/bin/absolute-symlink -> /usr/bin/tool",
        "link 0:0 usr/bin/long-target-symlink -> ../share/kiln-test-small/dddd",
    ] {
        assert!(
            joined.contains(expected),
            "{expected:?} missing from\n{joined}"
        );
    }
}

#[test]
fn every_supported_compression_gives_the_same_image() {
    let digests: Vec<_> = ["xz", "zstd", "gzip", "none"]
        .into_iter()
        .map(|compression| {
            let (directory, deb) = small_package_deb(compression, "amd64");
            let (_, built) = build(&deb, &directory.path().join("layout"));
            (compression, built.image.manifest_digest)
        })
        .collect();
    for (compression, digest) in &digests {
        assert_eq!(
            *digest, digests[0].1,
            "data.tar compressed with {compression} gave another image"
        );
    }
}

#[test]
fn building_twice_into_one_layout_is_idempotent_and_index_is_stable() {
    let (directory, deb) = small_package_deb("xz", "amd64");
    let layout_directory = directory.path().join("layout");
    let (layout, first) = build(&deb, &layout_directory);
    let reference = debian_package_reference_name(
        &first.package.package,
        &first.package.version,
        &first.package.architecture,
    );
    assert_eq!(reference, "kiln-test-small--1:2.0_7erc1-3+b1--amd64");
    layout
        .add_manifest_ref(&reference, &first.image.manifest)
        .unwrap();
    let index_after_first = fs::read(layout_directory.join("index.json")).unwrap();
    let (layout, second) = build(&deb, &layout_directory);
    layout
        .add_manifest_ref(&reference, &second.image.manifest)
        .unwrap();
    assert_eq!(first, second);
    assert_eq!(
        index_after_first,
        fs::read(layout_directory.join("index.json")).unwrap()
    );
    let blob_count = fs::read_dir(layout_directory.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(
        blob_count, 3,
        "layer, config and manifest, and no temporary file"
    );
}

/// Runs in a child process started by `deb_image_is_identical_under_different_umask_tz_locale_and_directory`,
/// with another umask, TZ and locale; without its environment variables it does nothing.
#[test]
#[ignore = "helper: does nothing unless started by deb_image_is_identical_under_different_umask_tz_locale_and_directory"]
fn helper_process_builds_image_from_deb() {
    let Ok(deb) = std::env::var("KILN_OCI_TEST_HELPER_DEB") else {
        return;
    };
    let layout_directory = std::env::var("KILN_OCI_TEST_HELPER_LAYOUT").unwrap();
    let umask: u32 =
        u32::from_str_radix(&std::env::var("KILN_OCI_TEST_HELPER_UMASK").unwrap(), 8).unwrap();
    // SAFETY: umask(2) only replaces the process's file-creation mask and cannot fail; this
    // process is a helper that runs this one test.
    unsafe { libc::umask(umask) };
    let (_, built) = build(Path::new(&deb), Path::new(&layout_directory));
    println!(
        "KILN_OCI_TEST_HELPER_RESULT {} {}",
        built.image.manifest_digest, built.image.layer_digest
    );
}

#[test]
fn deb_image_is_identical_under_different_umask_tz_locale_and_directory() {
    let (directory, deb) = small_package_deb("xz", "amd64");
    let (layout, in_process) = build(&deb, &directory.path().join("layout-in-process"));

    let elsewhere = tempfile::Builder::new()
        .prefix("another-place-")
        .tempdir()
        .unwrap();
    let renamed_deb = elsewhere.path().join("renamed package.deb");
    fs::copy(&deb, &renamed_deb).unwrap();
    let child_layout = elsewhere.path().join("nested/layout");
    let output = run(Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process_builds_image_from_deb",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .current_dir(elsewhere.path())
        .env("KILN_OCI_TEST_HELPER_DEB", &renamed_deb)
        .env("KILN_OCI_TEST_HELPER_LAYOUT", &child_layout)
        .env("KILN_OCI_TEST_HELPER_UMASK", "077")
        .env("TZ", "Pacific/Kiritimati")
        .env("LC_ALL", "tr_TR.UTF-8")
        .env("LANG", "ja_JP.UTF-8")
        .env("SOURCE_DATE_EPOCH", "1"));
    let result_line = output
        .lines()
        .find_map(|line| Some(line.split_once("KILN_OCI_TEST_HELPER_RESULT ")?.1))
        .unwrap_or_else(|| panic!("the helper printed no result:\n{output}"));
    assert_eq!(
        result_line,
        format!(
            "{} {}",
            in_process.image.manifest_digest, in_process.image.layer_digest
        )
    );
    let child_layout = OciLayout::open_or_create(&child_layout).unwrap();
    assert_eq!(
        fs::read(layout.blob_path(&in_process.image.layer_digest)).unwrap(),
        fs::read(child_layout.blob_path(&in_process.image.layer_digest)).unwrap()
    );
    // And from bytes in memory, under yet another name.
    let from_bytes = image_from_deb_bytes(
        &layout,
        "in-memory.deb",
        &fs::read(&deb).unwrap(),
        OciPlatform::LinuxAmd64,
        EPOCH,
    )
    .unwrap();
    assert_eq!(from_bytes, in_process);
    // Another epoch is another image: the epoch really reaches it.
    let later = image_from_deb_file(
        &layout,
        &deb,
        OciPlatform::LinuxAmd64,
        SourceDateEpoch::from_seconds(1_700_000_001),
    )
    .unwrap();
    assert_ne!(
        later.image.manifest_digest,
        in_process.image.manifest_digest
    );
}

#[test]
fn skopeo_inspects_and_copies_the_image() {
    let (directory, deb) = small_package_deb("xz", "amd64");
    let layout_directory = directory.path().join("layout");
    let (layout, built) = build(&deb, &layout_directory);
    // kiln's name for the package (`kiln-test-small--1:2.0_7erc1-3+b1--amd64`): skopeo must
    // accept its `:`, `+` and escaped `~`.
    let reference = debian_package_reference_name(
        &built.package.package,
        &built.package.version,
        &built.package.architecture,
    );
    layout
        .add_manifest_ref(&reference, &built.image.manifest)
        .unwrap();
    let source = format!("oci:{}:{reference}", layout_directory.display());

    let inspected: serde_json::Value =
        serde_json::from_str(&run(skopeo().arg("inspect").arg(&source))).unwrap();
    assert_eq!(inspected["Digest"], built.image.manifest_digest.to_string());
    assert_eq!(inspected["Architecture"], "amd64");
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(inspected["Created"], "2023-11-14T22:13:20Z");
    assert_eq!(inspected["Layers"][0], built.image.layer_digest.to_string());
    assert_eq!(inspected["Labels"], serde_json::Value::Null);

    // dir: keeps every blob as is.
    let copied_directory = directory.path().join("copied-dir");
    run(skopeo()
        .arg("copy")
        .arg(&source)
        .arg(format!("dir:{}", copied_directory.display())));
    assert_eq!(
        fs::read(copied_directory.join(built.image.layer_digest.hex())).unwrap(),
        fs::read(layout.blob_path(&built.image.layer_digest)).unwrap()
    );
    assert_eq!(
        fs::read(copied_directory.join("manifest.json")).unwrap(),
        layout.read_blob(&built.image.manifest_digest).unwrap()
    );

    // oci: → oci: skopeo (1.9) gzips uncompressed layers on the way into an oci: layout, even
    // with --dest-decompress, so the manifest changes; the configuration (diff ids included),
    // the annotations and the layer's uncompressed bytes must come through unchanged.
    let copied_layout_directory = directory.path().join("copied-layout");
    run(skopeo().arg("copy").arg(&source).arg(format!(
        "oci:{}:round-trip",
        copied_layout_directory.display()
    )));
    let copied_layout = OciLayout::open_or_create(&copied_layout_directory).unwrap();
    let copied_manifest_descriptor = copied_layout
        .find_manifest_ref("round-trip")
        .unwrap()
        .unwrap();
    let copied_manifest: OciImageManifest = serde_json::from_slice(
        &copied_layout
            .read_blob(&copied_manifest_descriptor.digest)
            .unwrap(),
    )
    .unwrap();
    let original_manifest: OciImageManifest =
        serde_json::from_slice(&layout.read_blob(&built.image.manifest_digest).unwrap()).unwrap();
    assert_eq!(copied_manifest.config, original_manifest.config);
    assert_eq!(copied_manifest.annotations, original_manifest.annotations);
    assert_eq!(
        copied_manifest.layers[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let mut decompressed_layer = Vec::new();
    flate2::read::GzDecoder::new(
        copied_layout
            .read_blob(&copied_manifest.layers[0].digest)
            .unwrap()
            .as_slice(),
    )
    .read_to_end(&mut decompressed_layer)
    .unwrap();
    assert_eq!(
        decompressed_layer,
        layout.read_blob(&built.image.layer_digest).unwrap()
    );
}

#[test]
fn arm64_image_says_variant_v8_and_skopeo_agrees() {
    let (directory, deb) = small_package_deb("xz", "arm64");
    let layout_directory = directory.path().join("layout");
    let layout = OciLayout::open_or_create(&layout_directory).unwrap();
    let built = image_from_deb_file(&layout, &deb, OciPlatform::LinuxArm64, EPOCH).unwrap();
    layout
        .add_manifest_ref("arm", &built.image.manifest)
        .unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&layout.read_blob(&built.image.config_digest).unwrap()).unwrap();
    assert_eq!(
        (config["architecture"].as_str(), config["variant"].as_str()),
        (Some("arm64"), Some("v8"))
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout_directory.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["platform"],
        serde_json::json!({"architecture": "arm64", "os": "linux", "variant": "v8"})
    );
    let inspected: serde_json::Value = serde_json::from_str(&run(skopeo()
        .args(["--override-arch", "arm64", "inspect"])
        .arg(format!("oci:{}:arm", layout_directory.display()))))
    .unwrap();
    assert_eq!(inspected["Architecture"], "arm64");

    let wrong = image_from_deb_file(&layout, &deb, OciPlatform::LinuxAmd64, EPOCH).unwrap_err();
    insta::assert_snapshot!(
        wrong.to_string().replace(&deb.display().to_string(), "<deb>"),
        @"<deb> is kiln-test-small for architecture arm64, but the image is for linux/amd64: use the amd64 build of kiln-test-small (or build for arm64)"
    );
}
