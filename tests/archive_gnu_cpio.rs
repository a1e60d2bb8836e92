//! GNU cpio, the tool everyone else unpacks initramfs images with, must
//! extract our archive to exactly the tree we packed.

use std::process::Command;

use kiln_tests::{compare_trees, make_fixture_tree, run, xtask};

const EPOCH: &str = "1747699200";

fn extract_with_gnu_cpio(archive: &std::path::Path, into: &std::path::Path) {
    std::fs::create_dir(into).unwrap();
    let input = std::fs::File::open(archive).unwrap();
    run(Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames"])
        .current_dir(into)
        .stdin(input))
    .unwrap();
}

#[test]
fn gnu_cpio_extracts_the_same_tree() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    std::fs::create_dir(&source).unwrap();
    make_fixture_tree(&source, false).unwrap();

    let plain = work.path().join("plain.cpio");
    run(xtask(&[
        "initramfs",
        "--root",
        source.to_str().unwrap(),
        "--out",
        plain.to_str().unwrap(),
        "--no-compress",
    ])
    .env("SOURCE_DATE_EPOCH", EPOCH))
    .unwrap();
    let extracted = work.path().join("extracted");
    extract_with_gnu_cpio(&plain, &extracted);
    let differences = compare_trees(&source, &extracted, Some(EPOCH.parse().unwrap())).unwrap();
    assert!(
        differences.is_empty(),
        "GNU cpio extracted a different tree:\n{}",
        differences.join("\n")
    );
}

#[test]
fn gnu_cpio_extracts_the_zstd_archive_after_the_zstd_cli_decompresses_it() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    std::fs::create_dir(&source).unwrap();
    make_fixture_tree(&source, false).unwrap();

    let compressed = work.path().join("initramfs.zst");
    run(xtask(&[
        "initramfs",
        "--root",
        source.to_str().unwrap(),
        "--out",
        compressed.to_str().unwrap(),
        "--level",
        "9",
    ])
    .env("SOURCE_DATE_EPOCH", EPOCH))
    .unwrap();
    let plain = work.path().join("decompressed.cpio");
    run(Command::new("zstd")
        .args(["-q", "-d", "-o"])
        .arg(&plain)
        .arg(&compressed))
    .unwrap();
    let extracted = work.path().join("extracted");
    extract_with_gnu_cpio(&plain, &extracted);
    let differences = compare_trees(&source, &extracted, Some(EPOCH.parse().unwrap())).unwrap();
    assert!(
        differences.is_empty(),
        "GNU cpio extracted a different tree:\n{}",
        differences.join("\n")
    );
}
