//! What goes into an archive: plain metadata plus where the contents come from.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::ArchiveError;

/// A path inside an archive: relative, `/`-separated, no empty, `.` or `..`
/// components, no NUL byte. Compared and sorted bytewise, which is the order
/// entries are written in.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArchivePath(Vec<u8>);

impl ArchivePath {
    /// Checks and normalises a path: a leading `/` or `./` is dropped, repeated
    /// and trailing `/` are collapsed. `..`, NUL bytes and the empty path are
    /// rejected, so nothing written can land outside the unpacked root.
    pub fn new(raw: impl AsRef<[u8]>) -> Result<Self, ArchiveError> {
        let raw = raw.as_ref();
        let mut normalised: Vec<u8> = Vec::with_capacity(raw.len());
        for component in raw.split(|byte| *byte == b'/') {
            match component {
                b"" | b"." => continue,
                b".." => {
                    return Err(ArchiveError::InvalidPath {
                        path: String::from_utf8_lossy(raw).into_owned(),
                        reason: "it contains a `..` component",
                    })
                }
                _ => {}
            }
            if component.contains(&0) {
                return Err(ArchiveError::InvalidPath {
                    path: String::from_utf8_lossy(raw).into_owned(),
                    reason: "it contains a NUL byte",
                });
            }
            if !normalised.is_empty() {
                normalised.push(b'/');
            }
            normalised.extend_from_slice(component);
        }
        if normalised.is_empty() {
            return Err(ArchiveError::InvalidPath {
                path: String::from_utf8_lossy(raw).into_owned(),
                reason: "it names the archive root itself",
            });
        }
        Ok(Self(normalised))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The parent directory, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<ArchivePath> {
        let slash = self.0.iter().rposition(|byte| *byte == b'/')?;
        Some(Self(self.0[..slash].to_vec()))
    }

    /// Lossy text form, for messages and listings.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

impl fmt::Debug for ArchivePath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}", self.display())
    }
}

impl fmt::Display for ArchivePath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.display())
    }
}

/// Where a regular file's bytes come from. Contents are read only when the
/// archive is written, so a tree of hundreds of megabytes costs no memory.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// Bytes held in memory (generated files, test data).
    Bytes(Arc<[u8]>),
    /// A file on disk with the size it had when the tree was built. If the
    /// file has a different size when it is read, writing fails rather than
    /// producing an archive that does not match its own headers.
    File { path: PathBuf, size: u64 },
}

impl Content {
    pub fn size(&self) -> u64 {
        match self {
            Content::Bytes(bytes) => bytes.len() as u64,
            Content::File { size, .. } => *size,
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Bytes(bytes) => write!(formatter, "Bytes({} bytes)", bytes.len()),
            Content::File { path, size } => {
                write!(formatter, "File({}, {size} bytes)", path.display())
            }
        }
    }
}

/// The type of an entry and what only that type carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File(Content),
    /// Another name for the regular file at `target` (same inode once
    /// unpacked). Its mode and owner are the target's.
    HardLink {
        target: ArchivePath,
    },
    Symlink {
        target: Vec<u8>,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

/// One archive member. There is deliberately no mtime: every entry gets the
/// archive's `SOURCE_DATE_EPOCH`, so no input timestamp can reach the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: ArchivePath,
    /// Permission bits, including setuid, setgid and sticky (`0o7777` mask).
    pub permissions: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: EntryKind,
}

impl Entry {
    pub fn directory(path: ArchivePath, permissions: u32) -> Self {
        Self {
            path,
            permissions,
            uid: 0,
            gid: 0,
            kind: EntryKind::Directory,
        }
    }

    pub fn file(path: ArchivePath, permissions: u32, content: Content) -> Self {
        Self {
            path,
            permissions,
            uid: 0,
            gid: 0,
            kind: EntryKind::File(content),
        }
    }

    pub fn symlink(path: ArchivePath, target: impl Into<Vec<u8>>) -> Self {
        Self {
            path,
            permissions: 0o777,
            uid: 0,
            gid: 0,
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        }
    }

    pub fn with_owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// The `S_IFMT` bits of this entry's type.
    pub fn file_type_bits(&self) -> u32 {
        match self.kind {
            EntryKind::Directory => S_IFDIR,
            EntryKind::File(_) | EntryKind::HardLink { .. } => S_IFREG,
            EntryKind::Symlink { .. } => S_IFLNK,
            EntryKind::CharDevice { .. } => S_IFCHR,
            EntryKind::BlockDevice { .. } => S_IFBLK,
            EntryKind::Fifo => S_IFIFO,
            EntryKind::Socket => S_IFSOCK,
        }
    }
}

pub const S_IFMT: u32 = 0o170_000;
pub const S_IFSOCK: u32 = 0o140_000;
pub const S_IFLNK: u32 = 0o120_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFBLK: u32 = 0o060_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFCHR: u32 = 0o020_000;
pub const S_IFIFO: u32 = 0o010_000;
