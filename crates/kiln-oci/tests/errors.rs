//! Broken and unsupported inputs: each error names the file, package or member and says
//! what to do. Messages are snapshots, reviewed like code.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::small_package_deb;
use kiln_oci::{
    image_from_deb_bytes, read_debian_package, LayerTree, OciLayout, OciPlatform, SourceDateEpoch,
};

const EPOCH: SourceDateEpoch = SourceDateEpoch::from_seconds(0);

/// An ar archive with the given members, made by the `ar` crate.
fn ar_archive(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = ar::Builder::new(Vec::new());
    for (name, bytes) in members {
        let header = ar::Header::new(
            name.as_bytes().to_vec(),
            u64::try_from(bytes.len()).unwrap(),
        );
        builder.append(&header, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn control_tar() -> Vec<u8> {
    let control = b"Package: tiny\nVersion: 1\nArchitecture: all\n";
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(u64::try_from(control.len()).unwrap());
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "./control", &control[..])
        .unwrap();
    builder.into_inner().unwrap()
}

fn error_for(deb_file_name: &str, bytes: &[u8]) -> String {
    read_debian_package(deb_file_name, bytes)
        .unwrap_err()
        .to_string()
}

#[test]
fn unsupported_data_compression_names_the_member_and_the_package() {
    let deb = ar_archive(&[
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar", control_tar()),
        ("data.tar.lzma", b"not really lzma".to_vec()),
    ]);
    insta::assert_snapshot!(error_for("foo.deb", &deb), @"data.tar.lzma in foo.deb is not a supported compression: expected xz, zst or gz (or an uncompressed tar); rebuild the package with `dpkg-deb -Zxz`");
}

#[test]
fn missing_data_member_and_wrong_first_member() {
    let no_data = ar_archive(&[
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar", control_tar()),
    ]);
    insta::assert_snapshot!(error_for("tiny.deb", &no_data), @"tiny.deb has no data.tar.* member: the file is truncated or not a binary package; fetch it again");
    let wrong_first = ar_archive(&[("control.tar", control_tar())]);
    insta::assert_snapshot!(error_for("tiny.deb", &wrong_first), @r#"tiny.deb starts with member "control.tar" instead of debian-binary: it is not a debian binary package"#);
    let format_three = ar_archive(&[("debian-binary", b"3.0\n".to_vec())]);
    insta::assert_snapshot!(error_for("tiny.deb", &format_three), @r#"tiny.deb says format "3.0\n" in debian-binary: kiln reads format 2.x packages only"#);
}

#[test]
fn not_an_ar_archive() {
    let message = error_for("random.deb", b"this is not an ar archive at all, just text");
    assert!(
        message.starts_with("cannot read random.deb as a debian package (an ar archive): "),
        "{message}"
    );
    assert!(
        message.ends_with("the file is truncated or not a .deb, fetch it again"),
        "{message}"
    );
}

#[test]
fn truncated_real_package_names_the_package_and_leaves_the_layout_as_it_was() {
    for compression in ["xz", "zstd", "gzip"] {
        check_truncated_package_is_refused(compression);
    }
}

fn check_truncated_package_is_refused(compression: &str) {
    let (directory, deb) = small_package_deb(compression, "amd64");
    let bytes = fs::read(&deb).unwrap();
    let layout_directory = directory.path().join("layout");
    let layout = OciLayout::open_or_create(&layout_directory).unwrap();
    let index_before = fs::read(layout_directory.join("index.json")).unwrap();
    // The last byte may be the ar padding of an odd-sized member, so cut at least two.
    for cut in [bytes.len() - 2, bytes.len() * 3 / 4, bytes.len() / 2, 100] {
        let error = image_from_deb_bytes(
            &layout,
            "cut.deb",
            &bytes[..cut],
            OciPlatform::LinuxAmd64,
            EPOCH,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("cut.deb"),
            "{compression}, cut at {cut}: {error}"
        );
        assert!(
            error.contains("fetch it again"),
            "{compression}, cut at {cut}: {error}"
        );
    }
    assert_eq!(
        fs::read_dir(layout_directory.join("blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "no blob, not even a temporary file"
    );
    assert_eq!(
        index_before,
        fs::read(layout_directory.join("index.json")).unwrap()
    );
}

#[test]
fn directory_with_a_fifo_is_refused_by_name() {
    let directory = tempfile::tempdir().unwrap();
    let fifo = directory.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let message = LayerTree::from_directory(directory.path())
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        format!(
            "{} in {} is a fifo: a directory layer holds only regular files, directories and symlinks; remove it",
            fifo.display(),
            directory.path().display()
        )
    );
}

#[test]
fn a_directory_that_is_not_a_layout_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    fs::write(
        directory.path().join("oci-layout"),
        b"{\"imageLayoutVersion\":\"9\"}",
    )
    .unwrap();
    let message = OciLayout::open_or_create(directory.path())
        .unwrap_err()
        .to_string();
    assert!(
        message.ends_with(
            "the directory is not an OCI image layout kiln can write; use an empty directory"
        ),
        "{message}"
    );
    // A read-only blobs directory: the error names it.
    let read_only = tempfile::tempdir().unwrap();
    let layout = OciLayout::open_or_create(read_only.path()).unwrap();
    fs::set_permissions(
        read_only.path().join("blobs/sha256"),
        fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    // root ignores directory permissions; only check the message when the write really fails.
    if let Err(error) = layout.put_blob_bytes("application/octet-stream", b"x") {
        assert!(error.to_string().contains("blobs/sha256"), "{error}");
    }
}
