//! Helpers shared by the integration tests: real Debian tools (`dpkg-deb`, `apt-get`),
//! GNU `tar` and `skopeo`, run as processes. Nothing here is mocked.

#![allow(dead_code, clippy::missing_panics_doc)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// Runs `command`, panics with its output if it fails, returns its stdout.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Lays out the staging tree of a small package that exercises what a layer must keep:
/// a setuid binary, a hard link (whose name sorts before the original), symlinks (relative,
/// absolute, and one whose target is longer than 100 bytes), a path longer than 100 bytes,
/// an empty file, a directory owned by 100:101 with mode 0750, a sticky directory.
pub fn stage_small_package(staging: &Path, architecture: &str) {
    write_file(
        &staging.join("DEBIAN/control"),
        format!(
            "Package: kiln-test-small\nVersion: 1:2.0~rc1-3+b1\nArchitecture: {architecture}\nMaintainer: kiln <kiln@example.invalid>\nDescription: small package for kiln-oci tests\n"
        )
        .as_bytes(),
        0o644,
    );
    write_file(
        &staging.join("usr/bin/tool"),
        b"#!/bin/sh\necho tool\n",
        0o755,
    );
    fs::hard_link(
        staging.join("usr/bin/tool"),
        staging.join("usr/bin/a-hard-link-to-tool"),
    )
    .unwrap();
    write_file(
        &staging.join("usr/sbin/setuid-helper"),
        b"\x7fELF not really\n",
        0o4755,
    );
    write_file(
        &staging.join("usr/share/doc/kiln-test-small/copyright"),
        b"public domain\n",
        0o644,
    );
    write_file(&staging.join("etc/kiln-test-small/empty.conf"), b"", 0o600);
    let long_directory = staging
        .join("usr/share/kiln-test-small")
        .join("d".repeat(60))
        .join("e".repeat(60));
    write_file(
        &long_directory.join("long-path-file.txt"),
        b"long path\n",
        0o644,
    );
    symlink("tool", staging.join("usr/bin/relative-symlink")).unwrap();
    symlink("/usr/bin/tool", staging.join("usr/bin/absolute-symlink")).unwrap();
    symlink(
        format!(
            "../share/kiln-test-small/{}/{}/long-path-file.txt",
            "d".repeat(60),
            "e".repeat(60)
        ),
        staging.join("usr/bin/long-target-symlink"),
    )
    .unwrap();
    let owned_directory = staging.join("var/lib/kiln-test-small");
    let sticky_directory = staging.join("var/tmp-kiln");
    fs::create_dir_all(&owned_directory).unwrap();
    fs::create_dir_all(&sticky_directory).unwrap();
    // Directories got their mode from the test's umask: make them 0755, so the package (and
    // the snapshots) do not depend on it; then give the two special ones their modes.
    for entry in walkdir::WalkDir::new(staging) {
        let entry = entry.unwrap();
        if entry.file_type().is_dir() {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    fs::set_permissions(&owned_directory, fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&owned_directory, Some(100), Some(101)).unwrap();
    fs::set_permissions(&sticky_directory, fs::Permissions::from_mode(0o1777)).unwrap();
}

/// Builds `staging` into `output` with Debian's own `dpkg-deb`, data.tar compressed with
/// `compression` (`xz`, `zstd`, `gzip` or `none`).
pub fn dpkg_deb_build(staging: &Path, compression: &str, output: &Path) {
    run(Command::new("dpkg-deb")
        .arg(format!("-Z{compression}"))
        .arg("--build")
        .arg(staging)
        .arg(output));
}

/// Builds the small test package in a fresh temp dir; returns (temp dir, .deb path).
pub fn small_package_deb(compression: &str, architecture: &str) -> (tempfile::TempDir, PathBuf) {
    let directory = tempfile::tempdir().unwrap();
    let staging = directory.path().join("staging");
    stage_small_package(&staging, architecture);
    let deb = directory
        .path()
        .join(format!("kiln-test-small_{compression}.deb"));
    dpkg_deb_build(&staging, compression, &deb);
    (directory, deb)
}

/// Extracts an uncompressed layer tar with GNU tar, keeping numeric owners and modes.
pub fn gnu_tar_extract(layer: &Path, destination: &Path) {
    fs::create_dir_all(destination).unwrap();
    run(Command::new("tar")
        .args([
            "--extract",
            "--numeric-owner",
            "--same-owner",
            "--preserve-permissions",
            "--file",
        ])
        .arg(layer)
        .arg("--directory")
        .arg(destination));
}

/// Extracts a package with Debian's `dpkg-deb -x`.
pub fn dpkg_deb_extract(deb: &Path, destination: &Path) {
    fs::create_dir_all(destination).unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(destination));
}

/// One line per path below `root` (sorted bytewise): type, mode, owner, and contents digest,
/// symlink target or the first path sharing its inode. The root itself is not listed
/// (layers leave the root's attributes to the composer). mtimes are not compared.
pub fn describe_tree(root: &Path) -> Vec<String> {
    let mut first_path_of_inode: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut lines = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by(|a, b| {
        a.file_name()
            .as_encoded_bytes()
            .cmp(b.file_name().as_encoded_bytes())
    }) {
        let entry = entry.unwrap();
        let relative = entry
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let metadata = entry.path().symlink_metadata().unwrap();
        let owner = format!("{}:{}", metadata.uid(), metadata.gid());
        let mode = metadata.mode() & 0o7777;
        let file_type = metadata.file_type();
        let line = if file_type.is_dir() {
            format!("dir  {mode:04o} {owner} {relative}/")
        } else if file_type.is_symlink() {
            format!(
                "link {owner} {relative} -> {}",
                fs::read_link(entry.path()).unwrap().display()
            )
        } else {
            let inode = (metadata.dev(), metadata.ino());
            let contents = match first_path_of_inode.get(&inode) {
                Some(first) => format!("hard link to {first}"),
                None => {
                    first_path_of_inode.insert(inode, relative.clone());
                    let digest = hex::encode(Sha256::digest(fs::read(entry.path()).unwrap()));
                    format!("{} bytes sha256:{}", metadata.len(), &digest[..16])
                }
            };
            format!("file {mode:04o} {owner} {relative} {contents}")
        };
        lines.push(line);
    }
    lines
}

/// One line per entry of a tar stream, exactly as stored: type, mode, owner, names, mtime, size.
pub fn describe_tar(tar_bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let header = entry.header();
            let link = entry
                .link_name_bytes()
                .map(|link| format!(" -> {}", String::from_utf8_lossy(&link)))
                .unwrap_or_default();
            format!(
                "{:?} {:04o} {}:{} uname={:?} gname={:?} mtime={} size={} {}{}",
                header.entry_type(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                String::from_utf8_lossy(header.username_bytes().unwrap_or_default()),
                String::from_utf8_lossy(header.groupname_bytes().unwrap_or_default()),
                header.mtime().unwrap(),
                header.size().unwrap(),
                String::from_utf8_lossy(&entry.path_bytes()),
                link
            )
        })
        .collect()
}

/// `skopeo` with a policy that accepts local, unsigned images (the test layouts).
pub fn skopeo() -> Command {
    let mut command = Command::new("skopeo");
    command.arg("--insecure-policy");
    command
}
