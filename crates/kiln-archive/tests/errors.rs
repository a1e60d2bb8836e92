//! Bad input gets a clear error naming what is wrong, and writes nothing.

use std::fs;

use kiln_archive::{
    read_initramfs, tree::bytes, write_initramfs, write_initramfs_file, ArchivePath, ArchiveTree,
    Compression, Content, Entry, InitramfsOptions,
};

fn plain(mtime: u32) -> InitramfsOptions<'static> {
    InitramfsOptions {
        mtime,
        compression: Compression::None,
        early: None,
    }
}

#[test]
fn a_file_of_4_gib_is_refused_and_no_output_is_left() {
    let directory = tempfile::tempdir().unwrap();
    let big = directory.path().join("big.img");
    // Sparse: costs no disk, but stat says 4 GiB, which newc cannot describe.
    fs::File::create(&big).unwrap().set_len(4 << 30).unwrap();
    let tree = ArchiveTree::from_entries([Entry::file(
        ArchivePath::new("var/big.img").unwrap(),
        0o644,
        Content::File {
            path: big.clone(),
            size: 4 << 30,
        },
    )])
    .unwrap();
    let out = directory.path().join("out.cpio");
    let error = write_initramfs_file(&tree, &plain(0), &out, &mut |_| {}).unwrap_err();
    insta::assert_snapshot!(error.to_string(), @"`var/big.img` is 4294967296 bytes; a newc archive cannot hold a file of 4 GiB or more (leave it out of the initramfs, or ship it compressed or split)");
    let left: Vec<String> = fs::read_dir(directory.path())
        .unwrap()
        .map(|item| item.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["big.img"], "no partial output may remain");
}

#[test]
fn a_failed_write_keeps_the_previous_output() {
    let directory = tempfile::tempdir().unwrap();
    let out = directory.path().join("initramfs");
    fs::write(&out, b"previous build").unwrap();
    let source = directory.path().join("shrinks");
    fs::write(&source, b"0123456789").unwrap();
    // The tree says 20 bytes; the file has 10: it "changed" under us.
    let tree = ArchiveTree::from_entries([Entry::file(
        ArchivePath::new("etc/config").unwrap(),
        0o644,
        Content::File {
            path: source.clone(),
            size: 20,
        },
    )])
    .unwrap();
    let error = write_initramfs_file(&tree, &plain(0), &out, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("changed size while it was being archived"),
        "{error}"
    );
    assert!(error.contains("etc/config"), "{error}");
    assert_eq!(fs::read(&out).unwrap(), b"previous build");
    assert_eq!(
        fs::read_dir(directory.path()).unwrap().count(),
        2,
        "no temporary file may remain"
    );
}

#[test]
fn paths_that_escape_the_root_are_refused() {
    insta::assert_snapshot!(
        ArchivePath::new("usr/../../etc/shadow").unwrap_err().to_string(),
        @r#"invalid archive path "usr/../../etc/shadow": it contains a `..` component"#
    );
}

#[test]
fn duplicate_paths_are_refused() {
    let path = ArchivePath::new("/etc/motd").unwrap();
    let error = ArchiveTree::from_entries([
        Entry::file(path.clone(), 0o644, bytes("a")),
        Entry::file(ArchivePath::new("etc//motd").unwrap(), 0o644, bytes("b")),
    ])
    .unwrap_err();
    insta::assert_snapshot!(error.to_string(), @"two entries for `etc/motd`: an archive may hold each path once");
}

#[test]
fn reader_errors_name_the_offset_and_the_problem() {
    let tree = ArchiveTree::from_entries([Entry::file(
        ArchivePath::new("a").unwrap(),
        0o644,
        bytes("hello"),
    )])
    .unwrap();
    let mut archive = Vec::new();
    write_initramfs(&tree, &plain(0), &mut archive, &mut |_| {}).unwrap();

    let truncated = read_initramfs(&archive[..114]).unwrap_err().to_string();
    insta::assert_snapshot!(truncated, @r#"malformed archive at byte 0: truncated data for "a": header says 5 bytes"#);

    let mut gzip = vec![0x1f, 0x8b, 8, 0, 0, 0];
    gzip.extend_from_slice(&archive);
    insta::assert_snapshot!(
        read_initramfs(&gzip).unwrap_err().to_string(),
        @"malformed archive at byte 0: expected a newc header (070701), a zstd stream or an LZ4 legacy stream, found bytes 1f8b08000000 (gzip: not supported, recompress with zstd or lz4 -l)"
    );

    // An LZ4 legacy stream cut short, after an uncompressed archive: the offset is the file's.
    let options = InitramfsOptions {
        mtime: 0,
        compression: Compression::Lz4,
        early: Some(&tree),
    };
    let mut lz4 = Vec::new();
    write_initramfs(&tree, &options, &mut lz4, &mut |_| {}).unwrap();
    let cut = &lz4[..lz4.len() - 4 - 3]; // into the last block, before the end mark
    insta::assert_snapshot!(
        read_initramfs(cut).unwrap_err().to_string(),
        @"malformed archive at byte 516: the LZ4 chunk says 84 bytes but only 81 remain (truncated file?)"
    );

    let mut bad_field = archive.clone();
    bad_field[6 + 8 * 6] = b'z'; // inside the filesize field
    insta::assert_snapshot!(
        read_initramfs(&bad_field).unwrap_err().to_string(),
        @r#"malformed archive at byte 0: header field filesize is not 8 hex digits: "z0000005""#
    );
}
