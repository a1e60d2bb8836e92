//! Deterministic initramfs archives: a newc cpio writer and reader, and zstd
//! or LZ4 (legacy) streaming compression with fixed parameters.
//!
//! This crate owns the bytes of every initramfs kiln writes. Given the same
//! [`ArchiveTree`] and the same `SOURCE_DATE_EPOCH`, [`write_initramfs`]
//! produces the same bytes on any machine: entries are sorted bytewise by
//! path, every header field passes through one normalising function
//! ([`newc`]), inode numbers come from a per-archive allocator that keeps hard
//! links as hard links, and nothing is read from the host's clock, umask,
//! locale, time zone, user database or the input's own path.
//!
//! It does not know about modules, profiles, locks or kernels, does no
//! network and spawns no process. It reads the files a tree points at, and
//! writes where it is told.

pub mod compare;
pub mod entry;
pub mod initramfs;
pub mod listing;
pub mod lz4;
pub mod newc;
pub mod reader;
pub mod tree;

use std::path::Path;

pub use compare::{compare_initramfs, Comparison};
pub use entry::{ArchivePath, Content, Entry, EntryKind};
pub use initramfs::{
    write_file_atomically, write_initramfs, write_initramfs_file, Compression, InitramfsOptions,
    InitramfsSummary, ZstdSettings, DEFAULT_ZSTD_LEVEL,
};
pub use listing::{inspect_segments, render_listing, InspectedEntry};
pub use lz4::{decompress_lz4_legacy, Lz4LegacyWriter, LZ4_LEGACY_END, LZ4_LEGACY_MAGIC};
pub use newc::{write_newc, NewcSummary};
pub use reader::{read_initramfs, RawMember, Segment, SegmentEncoding};
pub use tree::ArchiveTree;

/// Everything that can go wrong building, writing or reading an archive.
/// Messages are lowercase, name the path or byte offset, and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error(
        "entry `{path}` has permissions {permissions:#o}; only the bits in 0o7777 are allowed"
    )]
    InvalidPermissions { path: String, permissions: u32 },
    #[error("two entries for `{path}`: an archive may hold each path once")]
    DuplicatePath { path: String },
    #[error(
        "entry `{path}` needs `{parent}` to be a directory, but the input makes it something else"
    )]
    ParentNotDirectory { path: String, parent: String },
    #[error("hard link `{path}` points at `{target}`, which is not a regular file in the archive")]
    HardLinkTarget { path: String, target: String },
    #[error("hard link `{path}` is part of a cycle of links")]
    HardLinkCycle { path: String },
    #[error(
        "`{path}` is {size} bytes; a newc archive cannot hold a file of 4 GiB or more \
         (leave it out of the initramfs, or ship it compressed or split)"
    )]
    FileTooLarge { path: String, size: u64 },
    #[error("more entries than newc inode numbers (2^32)")]
    TooManyEntries,
    #[error("`{source_path}` (archived as `{path}`) changed size while it was being archived; rebuild from a tree nothing else is writing to")]
    ContentChanged { path: String, source_path: String },
    #[error("zstd level {level} is out of range: use 1 to {max}")]
    InvalidLevel { level: i32, max: i32 },
    #[error("walking {path}: {message}")]
    Walk { path: String, message: String },
    #[error("{action} {path}: {source}")]
    Io {
        path: String,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("writing the archive: {0}")]
    Output(std::io::Error),
    #[error("malformed archive at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
}

impl ArchiveError {
    pub fn io(path: impl AsRef<Path>, action: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            action,
            source,
        }
    }

    pub fn output(source: std::io::Error) -> Self {
        Self::Output(source)
    }
}
