//! Property: whatever tree goes in, the reader gets the same tree back.

use std::collections::HashMap;

use kiln_archive::{
    inspect_segments, read_initramfs, tree::bytes, write_initramfs, ArchivePath, ArchiveTree,
    Compression, Entry, EntryKind, InitramfsOptions, ZstdSettings,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
enum Shape {
    Directory,
    File(Vec<u8>),
    HardLinkToAnother(usize),
    Symlink(Vec<u8>),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        2 => Just(Shape::Directory),
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Shape::File),
        1 => (0usize..64).prop_map(Shape::HardLinkToAnother),
        1 => proptest::collection::vec(1u8..=255, 1..40).prop_map(Shape::Symlink),
        1 => (any::<u32>(), any::<u32>()).prop_map(|(major, minor)| Shape::CharDevice(major, minor)),
        1 => (0u32..4096, 0u32..(1 << 20)).prop_map(|(major, minor)| Shape::BlockDevice(major, minor)),
        1 => Just(Shape::Fifo),
    ]
}

fn path() -> impl Strategy<Value = String> {
    // A small alphabet makes shared prefixes, nesting and byte-order corner
    // cases ("a-b" sorts before "a/b") likely.
    proptest::collection::vec(
        proptest::sample::select(vec!["a", "b", "a-b", "a.b", "é", "bin", "x y"]),
        1..4,
    )
    .prop_map(|parts| parts.join("/"))
}

fn build_tree(items: Vec<(String, Shape, u32, u32, u32)>) -> ArchiveTree {
    let mut tree = ArchiveTree::new();
    let mut files: Vec<ArchivePath> = Vec::new();
    for (raw_path, shape, permissions, uid, gid) in items {
        let path = ArchivePath::new(&raw_path).unwrap();
        let kind = match shape {
            Shape::Directory => EntryKind::Directory,
            Shape::File(data) => {
                files.push(path.clone());
                EntryKind::File(bytes(data))
            }
            Shape::HardLinkToAnother(index) if !files.is_empty() => EntryKind::HardLink {
                target: files[index % files.len()].clone(),
            },
            Shape::HardLinkToAnother(_) => EntryKind::Fifo,
            Shape::Symlink(target) => EntryKind::Symlink { target },
            Shape::CharDevice(major, minor) => EntryKind::CharDevice { major, minor },
            Shape::BlockDevice(major, minor) => EntryKind::BlockDevice { major, minor },
            Shape::Fifo => EntryKind::Fifo,
        };
        let entry = Entry {
            path,
            permissions: permissions & 0o7777,
            uid,
            gid,
            kind,
        };
        // Keep the tree valid: no entry under a non-directory, no
        // non-directory above an existing entry, each path once. (Those cases
        // are errors, tested on their own.)
        let mut ancestor = entry.path.parent();
        let mut under_non_directory = false;
        while let Some(parent) = ancestor {
            if tree
                .get(&parent)
                .is_some_and(|existing| !matches!(existing.kind, EntryKind::Directory))
            {
                under_non_directory = true;
            }
            ancestor = parent.parent();
        }
        let mut prefix = entry.path.as_bytes().to_vec();
        prefix.push(b'/');
        let above_existing = tree
            .entries()
            .any(|existing| existing.path.as_bytes().starts_with(&prefix));
        let is_directory = matches!(entry.kind, EntryKind::Directory);
        if under_non_directory
            || (above_existing && !is_directory)
            || tree.get(&entry.path).is_some()
        {
            if let EntryKind::File(_) = entry.kind {
                files.pop();
            }
            continue;
        }
        tree.insert(entry).unwrap();
    }
    tree
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn writer_then_reader_gives_back_the_tree(
        items in proptest::collection::vec((path(), shape(), any::<u32>(), any::<u32>(), any::<u32>()), 1..40),
        mtime in any::<u32>(),
        compress in 0u8..3,
    ) {
        let mut tree = build_tree(items);
        tree.complete().unwrap();
        let compression = match compress {
            0 => Compression::None,
            1 => Compression::Zstd(ZstdSettings::new(3, 2).unwrap()),
            _ => Compression::Lz4,
        };
        let options = InitramfsOptions { mtime, compression, early: None };
        let mut archive = Vec::new();
        write_initramfs(&tree, &options, &mut archive, &mut |_| {}).unwrap();

        let segments = read_initramfs(&archive).unwrap();
        prop_assert_eq!(segments.len(), 1);
        let read = inspect_segments(&segments);
        let expected: Vec<&Entry> = tree.entries().collect();
        prop_assert_eq!(read.len(), expected.len());
        let mut inode_of_path: HashMap<String, u32> = HashMap::new();
        for (got, want) in read.iter().zip(&expected) {
            prop_assert_eq!(&got.path, &want.path.display());
            prop_assert_eq!(got.mtime, mtime);
            inode_of_path.insert(got.path.clone(), got.inode);
            let (permissions, uid, gid, data): (u32, u32, u32, Option<&[u8]>) = match &want.kind {
                EntryKind::File(content) => (want.permissions, want.uid, want.gid, Some(content_bytes(content))),
                EntryKind::HardLink { target } => {
                    let file = tree.get(target).unwrap();
                    let EntryKind::File(content) = &file.kind else { unreachable!() };
                    (file.permissions, file.uid, file.gid, Some(content_bytes(content)))
                }
                _ => (want.permissions, want.uid, want.gid, None),
            };
            prop_assert_eq!(got.mode, want.file_type_bits() | permissions);
            prop_assert_eq!((got.uid, got.gid), (uid, gid));
            if let Some(data) = data {
                prop_assert_eq!(got.sha256.clone().unwrap(), hex::encode(Sha256::digest(data)));
            }
            match &want.kind {
                EntryKind::Symlink { target } => {
                    prop_assert_eq!(got.symlink_target.clone().unwrap(), String::from_utf8_lossy(target).into_owned())
                }
                EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                    prop_assert_eq!(got.device, Some((*major, *minor)))
                }
                _ => {}
            }
        }
        // Hard links share their file's inode; nothing else shares one.
        let mut seen: HashMap<u32, String> = HashMap::new();
        for want in &expected {
            let inode = inode_of_path[&want.path.display()];
            let group = match &want.kind {
                EntryKind::HardLink { target } => target.display(),
                _ => want.path.display(),
            };
            if let Some(previous) = seen.insert(inode, group.clone()) {
                prop_assert_eq!(previous, group);
            }
        }
    }
}

fn content_bytes(content: &kiln_archive::Content) -> &[u8] {
    match content {
        kiln_archive::Content::Bytes(bytes) => bytes,
        kiln_archive::Content::File { .. } => unreachable!("the property uses in-memory contents"),
    }
}
