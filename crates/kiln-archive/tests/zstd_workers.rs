//! zstd's multi-threaded mode gives the same bytes for any worker count, so
//! the worker count can follow the machine without changing an output.

use kiln_archive::{
    tree::bytes, write_initramfs, ArchivePath, ArchiveTree, Compression, Entry, InitramfsOptions,
    ZstdSettings,
};
use std::io::Write;

/// ~40 MB of text-like, partly repetitive data: several zstd jobs at level 3
/// (whose job size is 8 MiB), so workers really split the work.
fn corpus() -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let words = [
        "kiln",
        "initramfs",
        "zstd",
        "provision",
        "kernel",
        "module",
        "busybox",
        "\n",
        " ",
        "0x1f",
    ];
    let mut data = Vec::with_capacity(40 << 20);
    while data.len() < 40 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let index = usize::try_from(state % words.len() as u64).unwrap();
        data.extend_from_slice(words[index].as_bytes());
        if state % 97 == 0 {
            data.extend_from_slice(&state.to_le_bytes());
        }
    }
    data
}

fn compress_tree(tree: &ArchiveTree, workers: u32) -> Vec<u8> {
    let options = InitramfsOptions {
        mtime: 1_700_000_000,
        compression: Compression::Zstd(ZstdSettings::new(3, workers).unwrap()),
        early: None,
    };
    let mut out = Vec::new();
    write_initramfs(tree, &options, &mut out, &mut |_| {}).unwrap();
    out
}

#[test]
fn archive_bytes_do_not_depend_on_the_worker_count() {
    let data = corpus();
    let tree = ArchiveTree::from_entries([
        Entry::file(
            ArchivePath::new("data/one").unwrap(),
            0o644,
            bytes(data[..25 << 20].to_vec()),
        ),
        Entry::file(
            ArchivePath::new("data/two").unwrap(),
            0o644,
            bytes(data[25 << 20..].to_vec()),
        ),
    ])
    .unwrap();
    let with_one = compress_tree(&tree, 1);
    let with_two = compress_tree(&tree, 2);
    let with_four = compress_tree(&tree, 4);
    assert!(with_one.len() < 20 << 20, "the corpus should compress");
    assert!(with_one == with_two, "1 vs 2 workers differ");
    assert!(with_one == with_four, "1 vs 4 workers differ");
}

#[test]
fn encoder_bytes_do_not_depend_on_how_input_is_chunked() {
    let data = corpus();
    let settings = ZstdSettings::new(3, 2).unwrap();
    let mut whole = kiln_archive::initramfs::zstd_encoder(Vec::new(), settings).unwrap();
    whole.write_all(&data).unwrap();
    let whole = whole.finish().unwrap();

    let mut chunked =
        kiln_archive::initramfs::zstd_encoder(Vec::new(), ZstdSettings::new(3, 3).unwrap())
            .unwrap();
    for chunk in data.chunks(4093) {
        chunked.write_all(chunk).unwrap();
    }
    let chunked = chunked.finish().unwrap();
    assert!(
        whole == chunked,
        "chunked input changed the compressed bytes"
    );
    assert_eq!(zstd::stream::decode_all(&whole[..]).unwrap(), data);
}
