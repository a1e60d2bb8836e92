//! A directory of files → layer → image (what modules made of files need): what a checkout
//! does not preserve (umask, owner, mtime, directory name) does not reach the layer.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::{describe_tar, describe_tree, gnu_tar_extract, run, skopeo};
use kiln_oci::{
    image_from_directory, ImageDescription, LayerTree, OciLayout, OciPlatform, SourceDateEpoch,
};

const EPOCH: SourceDateEpoch = SourceDateEpoch::from_seconds(1_700_000_000);

/// The same module files, laid out with file mode `file_mode`, executable mode
/// `executable_mode` and directory mode `directory_mode` (what a umask does to a checkout).
fn lay_out_module(root: &Path, file_mode: u32, executable_mode: u32, directory_mode: u32) {
    fs::create_dir_all(root.join("etc/kiln-module")).unwrap();
    fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    fs::write(root.join("etc/kiln-module/settings.conf"), b"key = value\n").unwrap();
    fs::write(root.join("usr/local/bin/run-me"), b"#!/bin/sh\nexit 0\n").unwrap();
    fs::hard_link(
        root.join("usr/local/bin/run-me"),
        root.join("usr/local/bin/also-run-me"),
    )
    .unwrap();
    symlink("run-me", root.join("usr/local/bin/run-me-too")).unwrap();
    fs::set_permissions(
        root.join("etc/kiln-module/settings.conf"),
        fs::Permissions::from_mode(file_mode),
    )
    .unwrap();
    fs::set_permissions(
        root.join("usr/local/bin/run-me"),
        fs::Permissions::from_mode(executable_mode),
    )
    .unwrap();
    for directory in [
        "etc",
        "etc/kiln-module",
        "usr",
        "usr/local",
        "usr/local/bin",
    ] {
        fs::set_permissions(
            root.join(directory),
            fs::Permissions::from_mode(directory_mode),
        )
        .unwrap();
    }
}

fn description() -> ImageDescription {
    ImageDescription {
        title: "kiln-module".to_owned(),
        version: "0.1.0".to_owned(),
        created_by: "kiln-oci: files of module kiln-module".to_owned(),
    }
}

#[test]
fn directory_layer_ignores_umask_mtime_and_location_and_keeps_hard_links() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::Builder::new()
        .prefix("other-checkout-")
        .tempdir()
        .unwrap();
    lay_out_module(&first.path().join("module"), 0o644, 0o755, 0o755);
    // As under umask 077, with setuid set by mistake, touched later.
    lay_out_module(&second.path().join("module"), 0o600, 0o4700, 0o700);
    run(std::process::Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(second.path().join("module/etc/kiln-module/settings.conf")));

    let first_layout = OciLayout::open_or_create(&first.path().join("layout")).unwrap();
    let second_layout = OciLayout::open_or_create(&second.path().join("layout")).unwrap();
    let first_image = image_from_directory(
        &first_layout,
        &first.path().join("module"),
        &description(),
        OciPlatform::LinuxAmd64,
        EPOCH,
    )
    .unwrap();
    let second_image = image_from_directory(
        &second_layout,
        &second.path().join("module"),
        &description(),
        OciPlatform::LinuxAmd64,
        EPOCH,
    )
    .unwrap();
    assert_eq!(first_image.manifest_digest, second_image.manifest_digest);

    let layer = first_layout.read_blob(&first_image.layer_digest).unwrap();
    insta::assert_snapshot!(describe_tar(&layer).join("\n"), @r#"
    Directory 0755 0:0 uname="" gname="" mtime=1700000000 size=0 etc/
    Directory 0755 0:0 uname="" gname="" mtime=1700000000 size=0 etc/kiln-module/
    Regular 0644 0:0 uname="" gname="" mtime=1700000000 size=12 etc/kiln-module/settings.conf
    Directory 0755 0:0 uname="" gname="" mtime=1700000000 size=0 usr/
    Directory 0755 0:0 uname="" gname="" mtime=1700000000 size=0 usr/local/
    Directory 0755 0:0 uname="" gname="" mtime=1700000000 size=0 usr/local/bin/
    Regular 0755 0:0 uname="" gname="" mtime=1700000000 size=17 usr/local/bin/also-run-me
    Link 0755 0:0 uname="" gname="" mtime=1700000000 size=0 usr/local/bin/run-me -> usr/local/bin/also-run-me
    Symlink 0777 0:0 uname="" gname="" mtime=1700000000 size=0 usr/local/bin/run-me-too -> run-me
    "#);

    let extracted = first.path().join("extracted");
    gnu_tar_extract(
        &first_layout.blob_path(&first_image.layer_digest),
        &extracted,
    );
    assert!(describe_tree(&extracted).contains(
        &"file 0755 0:0 usr/local/bin/run-me hard link to usr/local/bin/also-run-me".to_owned()
    ));

    first_layout
        .add_manifest_ref("kiln-module", &first_image.manifest)
        .unwrap();
    let inspected: serde_json::Value = serde_json::from_str(&run(skopeo().arg("inspect").arg(
        format!("oci:{}:kiln-module", first_layout.directory().display()),
    )))
    .unwrap();
    assert_eq!(inspected["Digest"], first_image.manifest_digest.to_string());
}

#[test]
fn host_file_that_changes_size_after_listing_is_an_error_naming_it() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("grows");
    fs::write(&file, b"short").unwrap();
    let tree = LayerTree::from_directory(directory.path()).unwrap();
    fs::write(&file, b"much longer now").unwrap();
    let message = tree.write_tar(Vec::new(), EPOCH).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "{} changed size while its layer was written (5 bytes when listed, 15 when read): do not modify {} during a build, then rebuild",
            file.display(),
            directory.path().display()
        )
    );
}
