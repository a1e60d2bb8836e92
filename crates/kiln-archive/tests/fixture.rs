//! A golden archive holding every entry type: the writer must reproduce it
//! byte for byte, and `inspect` must list it as the snapshot says. Set
//! `KILN_BLESS=1` to rewrite the golden file after an intended format change
//! (and review the diff of the snapshot like code).

use std::path::PathBuf;

use kiln_archive::{
    read_initramfs, render_listing, tree::bytes, write_initramfs, ArchivePath, ArchiveTree,
    Compression, Entry, EntryKind, InitramfsOptions, ZstdSettings,
};

fn path(text: &str) -> ArchivePath {
    ArchivePath::new(text).unwrap()
}

pub fn fixture_tree() -> ArchiveTree {
    let entry = |text: &str, permissions: u32, kind: EntryKind| Entry {
        path: path(text),
        permissions,
        uid: 0,
        gid: 0,
        kind,
    };
    ArchiveTree::from_entries([
        entry(
            "init",
            0o755,
            EntryKind::File(bytes("#!/bin/sh\necho hello from init\n")),
        ),
        entry(
            "bin/sh",
            0o777,
            EntryKind::Symlink {
                target: b"busybox".to_vec(),
            },
        ),
        entry(
            "bin/busybox",
            0o4755,
            EntryKind::File(bytes(vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0])),
        ),
        entry("etc/hostname", 0o644, EntryKind::File(bytes("kiln\n"))),
        entry(
            "etc/hosts-link",
            0o644,
            EntryKind::HardLink {
                target: path("etc/hostname"),
            },
        ),
        entry(
            "etc/zz-link",
            0o644,
            EntryKind::HardLink {
                target: path("etc/hostname"),
            },
        ),
        entry(
            "dev/console",
            0o600,
            EntryKind::CharDevice { major: 5, minor: 1 },
        ),
        entry(
            "dev/nvme0n1",
            0o660,
            EntryKind::BlockDevice {
                major: 259,
                minor: 65537,
            },
        ),
        entry("run/initctl", 0o600, EntryKind::Fifo),
        entry("tmp", 0o1777, EntryKind::Directory),
        entry(
            "home/user/.profile",
            0o640,
            EntryKind::File(bytes("export PS1='$ '\n")),
        )
        .with_owner(1000, 1000),
        entry("empty", 0o644, EntryKind::File(bytes(""))),
    ])
    .unwrap()
}

fn early_tree() -> ArchiveTree {
    ArchiveTree::from_entries([Entry::file(
        path("kernel/x86/microcode/GenuineIntel.bin"),
        0o644,
        bytes(vec![0xaa; 48]),
    )])
    .unwrap()
}

fn write_fixture() -> Vec<u8> {
    let early = early_tree();
    let options = InitramfsOptions {
        mtime: 1_747_699_200,
        compression: Compression::Zstd(ZstdSettings::new(19, 2).unwrap()),
        early: Some(&early),
    };
    let mut out = Vec::new();
    write_initramfs(&fixture_tree(), &options, &mut out, &mut |_| {}).unwrap();
    out
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/fixture.initramfs")
}

#[test]
fn writer_reproduces_the_golden_archive() {
    let written = write_fixture();
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(golden_path(), &written).unwrap();
    }
    let golden = std::fs::read(golden_path())
        .expect("testdata/fixture.initramfs exists (KILN_BLESS=1 writes it)");
    if written != golden {
        let comparison =
            kiln_archive::compare_initramfs(&golden, &written, ("golden", "written")).unwrap();
        panic!(
            "the writer no longer reproduces the golden archive:\n{}",
            comparison.render()
        );
    }
}

#[test]
fn inspect_lists_the_golden_archive() {
    let golden = std::fs::read(golden_path()).unwrap();
    let segments = read_initramfs(&golden).unwrap();
    insta::assert_snapshot!(render_listing(&segments));
}

#[test]
fn input_order_does_not_reach_the_bytes() {
    let entries: Vec<Entry> = fixture_tree().entries().cloned().collect();
    let golden = write_fixture();
    let early = early_tree();
    let options = InitramfsOptions {
        mtime: 1_747_699_200,
        compression: Compression::Zstd(ZstdSettings::new(19, 1).unwrap()),
        early: Some(&early),
    };
    // Reversed, rotated, and interleaved orders (a fixed "shuffle", so a
    // failure is reproducible).
    let mut orders: Vec<Vec<Entry>> = vec![entries.iter().rev().cloned().collect()];
    for rotation in [3, 7] {
        let mut rotated = entries.clone();
        rotated.rotate_left(rotation);
        orders.push(rotated);
    }
    let (even, odd): (Vec<_>, Vec<_>) = entries
        .iter()
        .cloned()
        .enumerate()
        .partition(|(index, _)| index % 2 == 0);
    orders.push(
        odd.into_iter()
            .chain(even.into_iter().rev())
            .map(|(_, entry)| entry)
            .collect(),
    );
    for order in orders {
        let tree = ArchiveTree::from_entries(order).unwrap();
        let mut out = Vec::new();
        write_initramfs(&tree, &options, &mut out, &mut |_| {}).unwrap();
        assert!(out == golden, "a different input order changed the archive");
    }
}
