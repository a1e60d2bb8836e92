//! The newc (`070701`) cpio writer.
//!
//! Why not the `cpio` crate: it writes newc headers but has no notion of hard
//! links (it would store a file's data once per name) and takes every field as
//! a plain 32-bit number, so a 5 GiB file or a large device number would be
//! truncated silently. The format is small enough that writing it here, with
//! every field range-checked, is the safer choice.
//!
//! Layout of one member: a 110-byte ASCII header (magic and thirteen 8-digit
//! hex fields), the NUL-terminated name, padding to a multiple of 4, the data,
//! padding to a multiple of 4. The archive ends with a `TRAILER!!!` member and
//! is padded to 512 bytes, as GNU cpio and the kernel's `gen_init_cpio` do.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};

use crate::entry::{ArchivePath, Content, Entry, EntryKind};
use crate::tree::ArchiveTree;
use crate::ArchiveError;

pub const NEWC_MAGIC: &[u8; 6] = b"070701";
pub const NEWC_CRC_MAGIC: &[u8; 6] = b"070702";
pub const HEADER_LENGTH: usize = 110;
pub const TRAILER_NAME: &[u8] = b"TRAILER!!!";
/// Largest file newc can describe: its size field is 32 bits.
pub const MAX_FILE_SIZE: u64 = u32::MAX as u64;

/// Header fields of one member, after normalisation. Only [`normalise`]
/// makes these, so every reproducibility rule lives in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewcHeader {
    pub inode: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub link_count: u32,
    pub mtime: u32,
    pub file_size: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// Hands out inode numbers in archive order, starting at 1, one per inode:
/// all names of a hard-link group share the number, which is how the kernel
/// and GNU cpio recognise them. Lives for exactly one archive.
#[derive(Debug, Default)]
pub struct InodeAllocator {
    next: u32,
    by_link_target: HashMap<ArchivePath, u32>,
}

impl InodeAllocator {
    pub fn new() -> Self {
        Self {
            next: 1,
            by_link_target: HashMap::new(),
        }
    }

    fn fresh(&mut self) -> Result<u32, ArchiveError> {
        let number = self.next;
        self.next = self
            .next
            .checked_add(1)
            .ok_or(ArchiveError::TooManyEntries)?;
        Ok(number)
    }

    /// The inode for a member; `link_target` is the file a hard-link group
    /// is keyed by (the file itself for the group's file entry).
    fn inode_for(&mut self, link_target: Option<&ArchivePath>) -> Result<u32, ArchiveError> {
        let Some(target) = link_target else {
            return self.fresh();
        };
        if let Some(number) = self.by_link_target.get(target) {
            return Ok(*number);
        }
        let number = self.fresh()?;
        self.by_link_target.insert(target.clone(), number);
        Ok(number)
    }
}

/// How the tree's entries relate, computed once before writing.
#[derive(Debug, Default)]
struct ArchivePlan {
    /// For each file that has hard links: the number of names, and which name
    /// (the last in archive order) carries the data, as GNU cpio does.
    link_groups: HashMap<ArchivePath, (u32, ArchivePath)>,
    /// Subdirectory count per directory, for a directory's link count.
    subdirectories: HashMap<ArchivePath, u32>,
}

impl ArchivePlan {
    fn new(tree: &ArchiveTree) -> Result<Self, ArchiveError> {
        let mut plan = Self::default();
        for entry in tree.entries() {
            match &entry.kind {
                EntryKind::HardLink { target } => {
                    let group = plan
                        .link_groups
                        .entry(target.clone())
                        .or_insert((1, target.clone()));
                    group.0 = group.0.checked_add(1).ok_or(ArchiveError::TooManyEntries)?;
                    // Entries come in bytewise order, so this ends as the last name.
                    if entry.path > group.1 {
                        group.1 = entry.path.clone();
                    }
                }
                EntryKind::Directory => {
                    if let Some(parent) = entry.path.parent() {
                        *plan.subdirectories.entry(parent).or_insert(0) += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(plan)
    }

    /// The file a member's inode is keyed by, if it is part of a link group.
    fn link_target<'a>(&self, entry: &'a Entry) -> Option<&'a ArchivePath> {
        match &entry.kind {
            EntryKind::HardLink { target } => Some(target),
            EntryKind::File(_) if self.link_groups.contains_key(&entry.path) => Some(&entry.path),
            _ => None,
        }
    }
}

/// The one function that turns an entry into header fields. Everything the
/// host could leak is decided here: mtime is the archive's epoch, device
/// (`dev`) numbers are zero, inode numbers come from the per-archive
/// allocator, link counts are computed from the tree, never read from disk.
fn normalise(
    entry: &Entry,
    tree: &ArchiveTree,
    plan: &ArchivePlan,
    inodes: &mut InodeAllocator,
    mtime: u32,
) -> Result<(NewcHeader, Option<DataSource>), ArchiveError> {
    let mut header = NewcHeader {
        inode: inodes.inode_for(plan.link_target(entry))?,
        mode: entry.file_type_bits() | entry.permissions,
        uid: entry.uid,
        gid: entry.gid,
        link_count: 1,
        mtime,
        file_size: 0,
        rdev_major: 0,
        rdev_minor: 0,
    };
    let mut data = None;
    match &entry.kind {
        EntryKind::Directory => {
            header.link_count =
                2u32.saturating_add(plan.subdirectories.get(&entry.path).copied().unwrap_or(0));
        }
        EntryKind::File(content) => {
            if let Some((count, carrier)) = plan.link_groups.get(&entry.path) {
                header.link_count = *count;
                if carrier == &entry.path {
                    data = Some(DataSource::Content(content.clone()));
                }
            } else {
                data = Some(DataSource::Content(content.clone()));
            }
        }
        EntryKind::HardLink { target } => {
            let Some(Entry {
                kind: EntryKind::File(content),
                permissions,
                uid,
                gid,
                ..
            }) = tree.get(target)
            else {
                return Err(ArchiveError::HardLinkTarget {
                    path: entry.path.display(),
                    target: target.display(),
                });
            };
            // All names of an inode carry the inode's metadata.
            header.mode = crate::entry::S_IFREG | permissions;
            header.uid = *uid;
            header.gid = *gid;
            let (count, carrier) = plan
                .link_groups
                .get(target)
                .expect("every link is in its group");
            header.link_count = *count;
            if carrier == &entry.path {
                data = Some(DataSource::Content(content.clone()));
            }
        }
        EntryKind::Symlink { target } => {
            data = Some(DataSource::Symlink(target.clone()));
        }
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            header.rdev_major = *major;
            header.rdev_minor = *minor;
        }
        EntryKind::Fifo | EntryKind::Socket => {}
    }
    if let Some(source) = &data {
        let size = source.size();
        header.file_size = u32::try_from(size).map_err(|_| ArchiveError::FileTooLarge {
            path: entry.path.display(),
            size,
        })?;
    }
    Ok((header, data))
}

#[derive(Debug)]
enum DataSource {
    Content(Content),
    Symlink(Vec<u8>),
}

impl DataSource {
    fn size(&self) -> u64 {
        match self {
            DataSource::Content(content) => content.size(),
            DataSource::Symlink(target) => target.len() as u64,
        }
    }
}

/// Totals of a written archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NewcSummary {
    /// Members written, not counting the trailer.
    pub entries: u64,
    /// Bytes of the uncompressed archive.
    pub archive_bytes: u64,
    /// File and symlink data bytes stored (hard-linked data counted once).
    pub data_bytes: u64,
}

/// Writes `tree` as one newc archive. The tree is completed first (missing
/// parents added, links checked). `progress` is called with the running
/// total of data bytes written, so a caller can draw a bar against
/// [`ArchiveTree::content_bytes`].
pub fn write_newc<W: Write>(
    tree: &ArchiveTree,
    mtime: u32,
    out: &mut W,
    progress: &mut dyn FnMut(u64),
) -> Result<NewcSummary, ArchiveError> {
    let mut tree = tree.clone();
    tree.complete()?;
    let plan = ArchivePlan::new(&tree)?;
    let mut inodes = InodeAllocator::new();
    let mut writer = CountingWriter {
        inner: out,
        written: 0,
    };
    let mut summary = NewcSummary::default();
    let mut copy_buffer = vec![0u8; 256 * 1024];
    for entry in tree.entries() {
        let (header, data) = normalise(entry, &tree, &plan, &mut inodes, mtime)?;
        write_header(&mut writer, &header, entry.path.as_bytes()).map_err(ArchiveError::output)?;
        match data {
            None => {}
            Some(DataSource::Symlink(target)) => {
                writer.write_all(&target).map_err(ArchiveError::output)?
            }
            Some(DataSource::Content(Content::Bytes(bytes))) => {
                writer.write_all(&bytes).map_err(ArchiveError::output)?
            }
            Some(DataSource::Content(Content::File { path, size })) => {
                copy_exact_file(&path, size, &mut writer, &mut copy_buffer, &entry.path)?
            }
        }
        summary.data_bytes += u64::from(header.file_size);
        write_padding(&mut writer, 4).map_err(ArchiveError::output)?;
        summary.entries += 1;
        progress(summary.data_bytes);
    }
    let trailer = NewcHeader {
        inode: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        link_count: 1,
        mtime: 0,
        file_size: 0,
        rdev_major: 0,
        rdev_minor: 0,
    };
    write_header(&mut writer, &trailer, TRAILER_NAME).map_err(ArchiveError::output)?;
    write_padding(&mut writer, 512).map_err(ArchiveError::output)?;
    summary.archive_bytes = writer.written;
    Ok(summary)
}

fn write_header<W: Write>(
    writer: &mut CountingWriter<W>,
    header: &NewcHeader,
    name: &[u8],
) -> io::Result<()> {
    let name_size =
        u32::try_from(name.len() + 1).map_err(|_| io::Error::other("name longer than 4 GiB"))?;
    let fields = [
        header.inode,
        header.mode,
        header.uid,
        header.gid,
        header.link_count,
        header.mtime,
        header.file_size,
        0, // devmajor: the device the file lived on; meaningless in an image
        0, // devminor
        header.rdev_major,
        header.rdev_minor,
        name_size,
        0, // check: only used by the 070702 variant
    ];
    let mut buffer = Vec::with_capacity(HEADER_LENGTH + name.len() + 4);
    buffer.extend_from_slice(NEWC_MAGIC);
    for field in fields {
        write!(buffer, "{field:08X}")?;
    }
    buffer.extend_from_slice(name);
    buffer.push(0);
    writer.write_all(&buffer)?;
    write_padding(writer, 4)
}

fn write_padding<W: Write>(writer: &mut CountingWriter<W>, alignment: u64) -> io::Result<()> {
    let remainder = writer.written % alignment;
    if remainder != 0 {
        let zeros = [0u8; 512];
        let count = usize::try_from(alignment - remainder).expect("padding is below 512");
        writer.write_all(&zeros[..count])?;
    }
    Ok(())
}

/// Copies exactly `size` bytes of a file. A file that shrank or grew since
/// the tree was built is an error: the header already promised `size`.
fn copy_exact_file<W: Write>(
    path: &std::path::Path,
    size: u64,
    writer: &mut W,
    buffer: &mut [u8],
    archive_path: &ArchivePath,
) -> Result<(), ArchiveError> {
    let mut file = File::open(path).map_err(|source| ArchiveError::io(path, "opening", source))?;
    let mut remaining = size;
    while remaining > 0 {
        let want = usize::try_from(remaining.min(buffer.len() as u64))
            .expect("bounded by the buffer length");
        let read = file
            .read(&mut buffer[..want])
            .map_err(|source| ArchiveError::io(path, "reading", source))?;
        if read == 0 {
            return Err(ArchiveError::ContentChanged {
                path: archive_path.display(),
                source_path: path.display().to_string(),
            });
        }
        writer
            .write_all(&buffer[..read])
            .map_err(ArchiveError::output)?;
        remaining -= read as u64;
    }
    let extra = file
        .read(&mut buffer[..1])
        .map_err(|source| ArchiveError::io(path, "reading", source))?;
    if extra != 0 {
        return Err(ArchiveError::ContentChanged {
            path: archive_path.display(),
            source_path: path.display().to_string(),
        });
    }
    Ok(())
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        let count = self.inner.write(buffer)?;
        self.written += count as u64;
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
