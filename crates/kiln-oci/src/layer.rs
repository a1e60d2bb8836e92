//! Deterministic tar layers: a [`LayerTree`] (paths → directories or inodes), filled from a
//! `.deb`'s data.tar or from a directory, written by [`LayerTree::write_tar`].
//!
//! **Architecture Invariant:** every tar header kiln writes is made by
//! `normalised_tar_header`, and only from a `LayerRecord`; nothing else sets a header
//! field. Tests: `layer::tests::*`, `tests/deb_to_image.rs`.
//!
//! **Architecture Invariant:** one [`LayerTree`] is one archive's inode allocator: the first
//! path of an inode in sorted order carries its data, every later path is a hard link (type
//! `1`) to that first path. Hard links stay hard links; nothing becomes a symlink or a copy.

use std::collections::btree_map::Entry as MapEntry;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::platform::SourceDateEpoch;

/// Errors while building or writing a layer. Each names the input (`source_name`: a `.deb`
/// member or a directory) and the path inside it.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A path with a `..` component.
    #[error("path {path:?} in {source_name} climbs out of the layer with `..`: kiln refuses such entries; fix the input so that every path stays inside its root")]
    PathEscapesLayer {
        /// The input.
        source_name: String,
        /// The path as found.
        path: String,
    },
    /// A path listed twice.
    #[error("path {path} appears twice in {source_name}: an OCI layer holds each path once; remove the duplicate from the input")]
    DuplicatePath {
        /// The input.
        source_name: String,
        /// The normalised path.
        path: LayerPath,
    },
    /// A hard link whose target is not an earlier non-directory entry.
    #[error("hard link {path} in {source_name} points at {target}, which is not a file earlier in the archive: the input is corrupt; re-fetch or rebuild it")]
    HardLinkTargetMissing {
        /// The input.
        source_name: String,
        /// The link's path.
        path: LayerPath,
        /// The target it names.
        target: LayerPath,
    },
    /// A path below something that is not a directory.
    #[error("{path} in {source_name} lies below {parent}, which is not a directory: the input is inconsistent; fix it")]
    ParentIsNotDirectory {
        /// The input.
        source_name: String,
        /// The entry.
        path: LayerPath,
        /// Its non-directory ancestor.
        parent: LayerPath,
    },
    /// A host file could not be read.
    #[error("cannot read {path} for the layer of {source_name}: {source}")]
    ReadHostFile {
        /// The input directory.
        source_name: String,
        /// The host path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A host file changed size between the walk and the write.
    #[error("{path} changed size while its layer was written ({expected} bytes when listed, {found} when read): do not modify {source_name} during a build, then rebuild")]
    HostFileChanged {
        /// The input directory.
        source_name: String,
        /// The host path.
        path: PathBuf,
        /// Size at walk time.
        expected: u64,
        /// Size at read time.
        found: u64,
    },
    /// A socket, device or fifo inside a directory given to [`LayerTree::from_directory`].
    #[error("{path} in {source_name} is a {file_type}: a directory layer holds only regular files, directories and symlinks; remove it")]
    UnsupportedHostFileType {
        /// The input directory.
        source_name: String,
        /// The host path.
        path: PathBuf,
        /// What it is.
        file_type: &'static str,
    },
    /// The directory walk failed.
    #[error("cannot walk {source_name}: {source}")]
    WalkDirectory {
        /// The input directory.
        source_name: String,
        /// The cause.
        source: walkdir::Error,
    },
    /// Writing the tar stream failed (disk full, or a value tar cannot hold).
    #[error("cannot write the tar layer of {source_name} at {path}: {source}")]
    WriteTar {
        /// The input.
        source_name: String,
        /// The entry being written.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

/// A path inside a layer, normalised: relative, no `./` prefix, no `.`, `..` or empty
/// components, no trailing slash, never the root itself. Ordered bytewise (without the
/// trailing slash that directories get in the archive), which puts every directory before
/// its contents: a parent's path is a prefix of its children's, and a prefix sorts first.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LayerPath {
    bytes: Vec<u8>,
}

impl LayerPath {
    /// Normalises a path as found in an archive or relative to a directory: `./usr/bin/`,
    /// `/usr/bin` and `usr//bin` all become `usr/bin`. Returns `Ok(None)` for the root itself
    /// (`.`, `./`, `/`), which a layer does not carry: the root's owner and mode belong to
    /// whoever composes the layers. `..` components are an error.
    pub fn normalise(path: &[u8], source_name: &str) -> Result<Option<Self>, LayerError> {
        let mut bytes = Vec::with_capacity(path.len());
        for component in path.split(|byte| *byte == b'/') {
            match component {
                b"" | b"." => continue,
                b".." => {
                    return Err(LayerError::PathEscapesLayer {
                        source_name: source_name.to_owned(),
                        path: String::from_utf8_lossy(path).into_owned(),
                    })
                }
                _ => {
                    if !bytes.is_empty() {
                        bytes.push(b'/');
                    }
                    bytes.extend_from_slice(component);
                }
            }
        }
        Ok((!bytes.is_empty()).then_some(Self { bytes }))
    }

    /// The normalised bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The parent directory, `None` for a top-level entry.
    pub fn parent(&self) -> Option<Self> {
        let slash = self.bytes.iter().rposition(|byte| *byte == b'/')?;
        Some(Self {
            bytes: self.bytes[..slash].to_vec(),
        })
    }
}

impl fmt::Display for LayerPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&String::from_utf8_lossy(&self.bytes))
    }
}

impl fmt::Debug for LayerPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}", String::from_utf8_lossy(&self.bytes))
    }
}

/// Owner and permission bits of an entry, as the input says (numeric ids; names never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerFileAttributes {
    /// Permission bits including setuid, setgid and sticky (`0o7777` is kept, the rest dropped).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
}

impl LayerFileAttributes {
    /// `0755 0:0`, what kiln gives directories that it must create itself.
    pub const ROOT_DIRECTORY: Self = Self {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
}

/// The bytes of a regular file.
#[derive(Clone, PartialEq, Eq)]
pub enum LayerFileContents {
    /// Already in memory (read from a `.deb`).
    InMemory(Vec<u8>),
    /// A host file, read when the tar is written; its size when it was listed is checked then.
    HostFile {
        /// Where it is.
        path: PathBuf,
        /// Its size when listed.
        size: u64,
    },
}

impl fmt::Debug for LayerFileContents {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InMemory(bytes) => write!(formatter, "InMemory({} bytes)", bytes.len()),
            Self::HostFile { path, size } => {
                write!(formatter, "HostFile({}, {size} bytes)", path.display())
            }
        }
    }
}

/// What a non-directory inode is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerInodeKind {
    /// A regular file.
    RegularFile(LayerFileContents),
    /// A symlink; the target is kept byte for byte, never rewritten.
    Symlink {
        /// The target as the input says.
        target: Vec<u8>,
    },
    /// A character device.
    CharacterDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// A non-directory inode: what one or more paths (hard links) name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInode {
    /// Owner and mode.
    pub attributes: LayerFileAttributes,
    /// Type and data.
    pub kind: LayerInodeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum LayerTreeEntry {
    Directory {
        attributes: LayerFileAttributes,
        /// Created by kiln because a child needed a parent; an explicit entry replaces it.
        implicit: bool,
    },
    Inode(usize),
}

/// The contents of one layer: sorted paths, each a directory or an inode number; several
/// paths naming one inode are hard links.
#[derive(Debug)]
pub struct LayerTree {
    source_name: String,
    entries: BTreeMap<LayerPath, LayerTreeEntry>,
    inodes: Vec<LayerInode>,
}

/// One entry as the normaliser sees it, after hard-link resolution.
#[derive(Debug)]
pub(crate) struct LayerRecord<'tree> {
    pub(crate) path: &'tree LayerPath,
    pub(crate) attributes: LayerFileAttributes,
    pub(crate) kind: LayerRecordKind<'tree>,
}

#[derive(Debug)]
pub(crate) enum LayerRecordKind<'tree> {
    Directory,
    RegularFile { size: u64 },
    HardLink { target: &'tree LayerPath },
    Symlink { target: &'tree [u8] },
    CharacterDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

/// A header ready to append, plus the path and link target bytes to put in (or beside) it.
#[derive(Debug)]
pub(crate) struct NormalisedTarHeader {
    pub(crate) header: tar::Header,
    pub(crate) path_in_archive: Vec<u8>,
    pub(crate) link_target: Option<Vec<u8>>,
}

/// The one function that turns an entry into a tar header. Everything that could vary
/// between machines is fixed here:
/// - format: GNU (`ustar  \0` magic), the format `dpkg-deb` itself writes: names and link
///   targets longer than 100 bytes go into `././@LongLink` entries (written by the `tar`
///   crate with fixed fields: mode 0644, 0:0, mtime 0), large numbers into base-256 fields,
///   and no pax header (whose keys and times vary between writers) is ever written;
/// - mtime = `source_date_epoch`; atime and ctime (GNU fields) stay zero;
/// - uid/gid numeric as the input says; uname and gname empty;
/// - mode: the input's `0o7777` bits; the file type lives in the type flag only;
/// - paths: `./`-less relative (as Docker and BuildKit write layers), directories with a
///   trailing `/` (as GNU tar writes them); hard-link targets are layer paths, symlink
///   targets are kept byte for byte;
/// - device numbers 0 (as octal, not NUL) except on devices; size 0 except on regular files.
pub(crate) fn normalised_tar_header(
    record: &LayerRecord<'_>,
    source_date_epoch: SourceDateEpoch,
) -> NormalisedTarHeader {
    let mut header = tar::Header::new_gnu();
    header.set_mode(record.attributes.mode & 0o7777);
    header.set_uid(record.attributes.uid);
    header.set_gid(record.attributes.gid);
    header.set_mtime(source_date_epoch.seconds());
    header.set_size(0);
    let mut path_in_archive = record.path.as_bytes().to_vec();
    let mut link_target = None;
    let set_device = |header: &mut tar::Header, major: u32, minor: u32| {
        let gnu = header
            .as_gnu_mut()
            .expect("header was made by Header::new_gnu");
        gnu.set_device_major(major);
        gnu.set_device_minor(minor);
    };
    // Zero device numbers written as octal on every entry (GNU tar leaves them NUL on
    // non-devices), so that strict readers such as the `tar` crate can read them anywhere.
    set_device(&mut header, 0, 0);
    match record.kind {
        LayerRecordKind::Directory => {
            header.set_entry_type(tar::EntryType::Directory);
            path_in_archive.push(b'/');
        }
        LayerRecordKind::RegularFile { size } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
        }
        LayerRecordKind::HardLink { target } => {
            header.set_entry_type(tar::EntryType::Link);
            link_target = Some(target.as_bytes().to_vec());
        }
        LayerRecordKind::Symlink { target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            link_target = Some(target.to_vec());
        }
        LayerRecordKind::CharacterDevice { major, minor } => {
            header.set_entry_type(tar::EntryType::Char);
            set_device(&mut header, major, minor);
        }
        LayerRecordKind::BlockDevice { major, minor } => {
            header.set_entry_type(tar::EntryType::Block);
            set_device(&mut header, major, minor);
        }
        LayerRecordKind::Fifo => header.set_entry_type(tar::EntryType::Fifo),
    }
    NormalisedTarHeader {
        header,
        path_in_archive,
        link_target,
    }
}

impl LayerTree {
    /// An empty tree. `source_name` names the input in every error (e.g.
    /// `busybox-static_1.35.0_amd64.deb member data.tar.xz`).
    pub fn new(source_name: impl Into<String>) -> Self {
        Self {
            source_name: source_name.into(),
            entries: BTreeMap::new(),
            inodes: Vec::new(),
        }
    }

    /// The input's name, as given to [`LayerTree::new`].
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// How many paths the tree holds, including directories kiln created.
    pub fn path_count(&self) -> usize {
        self.entries.len()
    }

    /// Adds a directory. Its missing parents are created as `0755 0:0` until the input
    /// names them itself.
    pub fn insert_directory(
        &mut self,
        path: LayerPath,
        attributes: LayerFileAttributes,
    ) -> Result<(), LayerError> {
        self.ensure_parent_directories(&path)?;
        match self.entries.entry(path) {
            MapEntry::Vacant(vacant) => {
                vacant.insert(LayerTreeEntry::Directory {
                    attributes,
                    implicit: false,
                });
                Ok(())
            }
            MapEntry::Occupied(mut occupied) => match occupied.get() {
                LayerTreeEntry::Directory { implicit: true, .. } => {
                    occupied.insert(LayerTreeEntry::Directory {
                        attributes,
                        implicit: false,
                    });
                    Ok(())
                }
                _ => Err(LayerError::DuplicatePath {
                    source_name: self.source_name.clone(),
                    path: occupied.key().clone(),
                }),
            },
        }
    }

    /// Adds a non-directory inode at `path`.
    pub fn insert_inode(&mut self, path: LayerPath, inode: LayerInode) -> Result<(), LayerError> {
        self.ensure_parent_directories(&path)?;
        if self.entries.contains_key(&path) {
            return Err(LayerError::DuplicatePath {
                source_name: self.source_name.clone(),
                path,
            });
        }
        self.inodes.push(inode);
        self.entries
            .insert(path, LayerTreeEntry::Inode(self.inodes.len() - 1));
        Ok(())
    }

    /// Adds `path` as another name (hard link) of the inode already at `existing_path`.
    pub fn insert_hard_link(
        &mut self,
        path: LayerPath,
        existing_path: &LayerPath,
    ) -> Result<(), LayerError> {
        let Some(LayerTreeEntry::Inode(inode_number)) = self.entries.get(existing_path) else {
            return Err(LayerError::HardLinkTargetMissing {
                source_name: self.source_name.clone(),
                path,
                target: existing_path.clone(),
            });
        };
        let inode_number = *inode_number;
        self.ensure_parent_directories(&path)?;
        if self.entries.contains_key(&path) {
            return Err(LayerError::DuplicatePath {
                source_name: self.source_name.clone(),
                path,
            });
        }
        self.entries
            .insert(path, LayerTreeEntry::Inode(inode_number));
        Ok(())
    }

    fn ensure_parent_directories(&mut self, path: &LayerPath) -> Result<(), LayerError> {
        let mut ancestor = path.parent();
        while let Some(directory) = ancestor {
            match self.entries.get(&directory) {
                Some(LayerTreeEntry::Directory { .. }) => return Ok(()),
                Some(LayerTreeEntry::Inode(_)) => {
                    return Err(LayerError::ParentIsNotDirectory {
                        source_name: self.source_name.clone(),
                        path: path.clone(),
                        parent: directory,
                    })
                }
                None => {
                    ancestor = directory.parent();
                    self.entries.insert(
                        directory,
                        LayerTreeEntry::Directory {
                            attributes: LayerFileAttributes::ROOT_DIRECTORY,
                            implicit: true,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Lists a host directory as a layer (the directory itself is the layer's root and is not
    /// an entry). What a git checkout does not preserve is normalised, so the layer is the
    /// same whatever the umask, owner or clock of the checkout: owner `0:0`; directories
    /// `0755`; regular files `0755` if any execute bit is set, else `0644` (setuid and sticky
    /// bits dropped); symlinks `0777` with their target kept. Hard links (same device and
    /// inode) stay hard links. Sockets, devices and fifos are refused.
    pub fn from_directory(directory: &Path) -> Result<Self, LayerError> {
        let source_name = directory.display().to_string();
        let mut tree = Self::new(source_name.clone());
        let mut first_path_of_host_inode: HashMap<(u64, u64), LayerPath> = HashMap::new();
        for walked in walkdir::WalkDir::new(directory)
            .follow_links(false)
            .sort_by_file_name()
        {
            let walked = walked.map_err(|source| LayerError::WalkDirectory {
                source_name: source_name.clone(),
                source,
            })?;
            let relative = walked
                .path()
                .strip_prefix(directory)
                .expect("walkdir yields paths below its root");
            let Some(layer_path) =
                LayerPath::normalise(relative.as_os_str().as_bytes(), &source_name)?
            else {
                continue;
            };
            let metadata = walked
                .metadata()
                .map_err(|source| LayerError::WalkDirectory {
                    source_name: source_name.clone(),
                    source,
                })?;
            let file_type = metadata.file_type();
            let attributes = |mode: u32| LayerFileAttributes {
                mode,
                uid: 0,
                gid: 0,
            };
            if file_type.is_dir() {
                tree.insert_directory(layer_path, attributes(0o755))?;
            } else if file_type.is_symlink() {
                let target =
                    fs::read_link(walked.path()).map_err(|source| LayerError::ReadHostFile {
                        source_name: source_name.clone(),
                        path: walked.path().to_owned(),
                        source,
                    })?;
                let kind = LayerInodeKind::Symlink {
                    target: target.as_os_str().as_bytes().to_vec(),
                };
                tree.insert_inode(
                    layer_path,
                    LayerInode {
                        attributes: attributes(0o777),
                        kind,
                    },
                )?;
            } else if file_type.is_file() {
                let host_inode = (metadata.dev(), metadata.ino());
                if metadata.nlink() > 1 {
                    if let Some(first_path) = first_path_of_host_inode.get(&host_inode) {
                        tree.insert_hard_link(layer_path, &first_path.clone())?;
                        continue;
                    }
                    first_path_of_host_inode.insert(host_inode, layer_path.clone());
                }
                let mode = if metadata.mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                let contents = LayerFileContents::HostFile {
                    path: walked.path().to_owned(),
                    size: metadata.len(),
                };
                tree.insert_inode(
                    layer_path,
                    LayerInode {
                        attributes: attributes(mode),
                        kind: LayerInodeKind::RegularFile(contents),
                    },
                )?;
            } else {
                let file_type_name = if file_type.is_socket() {
                    "socket"
                } else if file_type.is_fifo() {
                    "fifo"
                } else if file_type.is_block_device() {
                    "block device"
                } else if file_type.is_char_device() {
                    "character device"
                } else {
                    "file of unknown type"
                };
                return Err(LayerError::UnsupportedHostFileType {
                    source_name,
                    path: walked.path().to_owned(),
                    file_type: file_type_name,
                });
            }
        }
        Ok(tree)
    }

    /// Writes the tree as an uncompressed tar stream and returns `writer`.
    ///
    /// Entries come in bytewise order of their normalised path. That order puts every
    /// directory before its contents: a parent's path `p` is a prefix of its child's `p/…`,
    /// and a prefix sorts first. Hard links point backwards, to the first path of their inode
    /// in that order. The stream ends with the two zero blocks of a tar end marker and no
    /// further padding.
    pub fn write_tar<W: Write>(
        &self,
        writer: W,
        source_date_epoch: SourceDateEpoch,
    ) -> Result<W, LayerError> {
        let mut builder = tar::Builder::new(writer);
        let mut first_path_of_inode: Vec<Option<&LayerPath>> = vec![None; self.inodes.len()];
        for (path, entry) in &self.entries {
            let write_error = |source: io::Error| LayerError::WriteTar {
                source_name: self.source_name.clone(),
                path: path.to_string(),
                source,
            };
            let (record, contents) = match entry {
                LayerTreeEntry::Directory { attributes, .. } => (
                    LayerRecord {
                        path,
                        attributes: *attributes,
                        kind: LayerRecordKind::Directory,
                    },
                    None,
                ),
                LayerTreeEntry::Inode(inode_number) => {
                    let inode = &self.inodes[*inode_number];
                    if let Some(first_path) = first_path_of_inode[*inode_number] {
                        let kind = LayerRecordKind::HardLink { target: first_path };
                        (
                            LayerRecord {
                                path,
                                attributes: inode.attributes,
                                kind,
                            },
                            None,
                        )
                    } else {
                        first_path_of_inode[*inode_number] = Some(path);
                        let (kind, contents) = match &inode.kind {
                            LayerInodeKind::RegularFile(contents) => {
                                let bytes = self.read_contents(contents)?;
                                let size = u64::try_from(bytes.len()).expect("usize fits in u64");
                                (LayerRecordKind::RegularFile { size }, Some(bytes))
                            }
                            LayerInodeKind::Symlink { target } => {
                                (LayerRecordKind::Symlink { target }, None)
                            }
                            LayerInodeKind::CharacterDevice { major, minor } => (
                                LayerRecordKind::CharacterDevice {
                                    major: *major,
                                    minor: *minor,
                                },
                                None,
                            ),
                            LayerInodeKind::BlockDevice { major, minor } => (
                                LayerRecordKind::BlockDevice {
                                    major: *major,
                                    minor: *minor,
                                },
                                None,
                            ),
                            LayerInodeKind::Fifo => (LayerRecordKind::Fifo, None),
                        };
                        (
                            LayerRecord {
                                path,
                                attributes: inode.attributes,
                                kind,
                            },
                            contents,
                        )
                    }
                }
            };
            let NormalisedTarHeader {
                mut header,
                path_in_archive,
                link_target,
            } = normalised_tar_header(&record, source_date_epoch);
            let path_in_archive = Path::new(OsStr::from_bytes(&path_in_archive));
            match link_target {
                // Short targets go into the header verbatim (`set_link_name` would tidy
                // `a/./b`); long ones into a GNU `K` entry, which the tar crate writes verbatim.
                Some(target) if target.len() <= 100 => {
                    header.set_link_name_literal(&target).map_err(write_error)?;
                    builder
                        .append_data(&mut header, path_in_archive, io::empty())
                        .map_err(write_error)?;
                }
                Some(target) => builder
                    .append_link(
                        &mut header,
                        path_in_archive,
                        Path::new(OsStr::from_bytes(&target)),
                    )
                    .map_err(write_error)?,
                None => {
                    let data: &[u8] = contents.as_deref().map_or(&[], |bytes| bytes);
                    builder
                        .append_data(&mut header, path_in_archive, data)
                        .map_err(write_error)?;
                }
            }
        }
        builder.into_inner().map_err(|source| LayerError::WriteTar {
            source_name: self.source_name.clone(),
            path: "(end of archive)".to_owned(),
            source,
        })
    }

    fn read_contents<'contents>(
        &self,
        contents: &'contents LayerFileContents,
    ) -> Result<std::borrow::Cow<'contents, [u8]>, LayerError> {
        match contents {
            LayerFileContents::InMemory(bytes) => Ok(std::borrow::Cow::Borrowed(bytes)),
            LayerFileContents::HostFile { path, size } => {
                let bytes = fs::read(path).map_err(|source| LayerError::ReadHostFile {
                    source_name: self.source_name.clone(),
                    path: path.clone(),
                    source,
                })?;
                let found = u64::try_from(bytes.len()).expect("usize fits in u64");
                if found != *size {
                    return Err(LayerError::HostFileChanged {
                        source_name: self.source_name.clone(),
                        path: path.clone(),
                        expected: *size,
                        found,
                    });
                }
                Ok(std::borrow::Cow::Owned(bytes))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> LayerPath {
        LayerPath::normalise(text.as_bytes(), "test")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn layer_path_normalisation() {
        let check = |input: &str, expected: Option<&str>| {
            let normalised = LayerPath::normalise(input.as_bytes(), "test").unwrap();
            assert_eq!(
                normalised.as_ref().map(|path| path.to_string()),
                expected.map(str::to_owned),
                "{input}"
            );
        };
        check("./usr/bin/", Some("usr/bin"));
        check("/usr//bin", Some("usr/bin"));
        check("usr/./bin/busybox", Some("usr/bin/busybox"));
        check("./", None);
        check(".", None);
        check("/", None);
        let error = LayerPath::normalise(b"./usr/../../etc/passwd", "foo.deb member data.tar.xz")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "path \"./usr/../../etc/passwd\" in foo.deb member data.tar.xz climbs out of the layer with `..`: kiln refuses such entries; fix the input so that every path stays inside its root"
        );
    }

    fn list(tar_bytes: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                format!(
                    "{:?} {:o} {}:{} mtime={} {} -> {}",
                    header.entry_type(),
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.gid().unwrap(),
                    header.mtime().unwrap(),
                    String::from_utf8_lossy(&entry.path_bytes()),
                    entry
                        .link_name_bytes()
                        .map(|link| String::from_utf8_lossy(&link).into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn write_tar_sorts_creates_parents_and_keeps_hard_links_backwards() {
        let mut tree = LayerTree::new("test");
        let file = |mode: u32, bytes: &[u8]| LayerInode {
            attributes: LayerFileAttributes {
                mode,
                uid: 0,
                gid: 0,
            },
            kind: LayerInodeKind::RegularFile(LayerFileContents::InMemory(bytes.to_vec())),
        };
        // Inserted out of order, with the "original" of the hard link sorting last.
        tree.insert_inode(path("usr/bin/z-original"), file(0o4755, b"data"))
            .unwrap();
        tree.insert_hard_link(path("usr/bin/a-link"), &path("usr/bin/z-original"))
            .unwrap();
        tree.insert_directory(
            path("usr"),
            LayerFileAttributes {
                mode: 0o750,
                uid: 1,
                gid: 2,
            },
        )
        .unwrap();
        let long_target = "t".repeat(150);
        tree.insert_inode(
            path("usr/bin.link"),
            LayerInode {
                attributes: LayerFileAttributes {
                    mode: 0o777,
                    uid: 0,
                    gid: 0,
                },
                kind: LayerInodeKind::Symlink {
                    target: long_target.clone().into_bytes(),
                },
            },
        )
        .unwrap();
        let bytes = tree
            .write_tar(Vec::new(), SourceDateEpoch::from_seconds(1_700_000_000))
            .unwrap();
        assert_eq!(
            list(&bytes),
            vec![
                "Directory 750 1:2 mtime=1700000000 usr/ -> ".to_owned(),
                "Directory 755 0:0 mtime=1700000000 usr/bin/ -> ".to_owned(),
                // `.` (0x2e) sorts before `/` (0x2f): a sibling may come between a directory
                // and its contents, never before the directory.
                format!("Symlink 777 0:0 mtime=1700000000 usr/bin.link -> {long_target}"),
                "Regular 4755 0:0 mtime=1700000000 usr/bin/a-link -> ".to_owned(),
                "Link 4755 0:0 mtime=1700000000 usr/bin/z-original -> usr/bin/a-link".to_owned(),
            ]
        );
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes.ends_with(&[0; 1024]));
    }

    #[test]
    fn devices_and_fifos_keep_their_numbers_and_carry_no_size() {
        let mut tree = LayerTree::new("test");
        let attributes = LayerFileAttributes {
            mode: 0o620,
            uid: 0,
            gid: 5,
        };
        tree.insert_inode(
            path("dev/console"),
            LayerInode {
                attributes,
                kind: LayerInodeKind::CharacterDevice { major: 5, minor: 1 },
            },
        )
        .unwrap();
        tree.insert_inode(
            path("dev/sda"),
            LayerInode {
                attributes,
                kind: LayerInodeKind::BlockDevice { major: 8, minor: 0 },
            },
        )
        .unwrap();
        tree.insert_inode(
            path("run/initctl"),
            LayerInode {
                attributes,
                kind: LayerInodeKind::Fifo,
            },
        )
        .unwrap();
        let bytes = tree
            .write_tar(Vec::new(), SourceDateEpoch::from_seconds(0))
            .unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let devices: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let header = entry.header();
                (
                    String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                    header.entry_type(),
                    header.device_major().unwrap(),
                    header.device_minor().unwrap(),
                    header.size().unwrap(),
                )
            })
            .filter(|(_, entry_type, ..)| *entry_type != tar::EntryType::Directory)
            .collect();
        assert_eq!(
            devices,
            vec![
                (
                    "dev/console".to_owned(),
                    tar::EntryType::Char,
                    Some(5),
                    Some(1),
                    0
                ),
                (
                    "dev/sda".to_owned(),
                    tar::EntryType::Block,
                    Some(8),
                    Some(0),
                    0
                ),
                (
                    "run/initctl".to_owned(),
                    tar::EntryType::Fifo,
                    Some(0),
                    Some(0),
                    0
                ),
            ]
        );
    }

    /// A small tree as (path, is_directory) pairs, with every path's parents somewhere in it.
    fn arbitrary_tree() -> impl proptest::strategy::Strategy<Value = Vec<(String, u8)>> {
        use proptest::prelude::*;
        proptest::collection::btree_map("[a-c.]{1,2}(/[a-c.-]{1,2}){0,2}", 0_u8..3, 1..20).prop_map(
            |entries| {
                entries
                    .into_iter()
                    .filter(|(path, _)| !path.split('/').any(|c| c == "." || c == ".."))
                    .collect()
            },
        )
    }

    proptest::proptest! {
        /// The bytes of a layer depend on its contents only, not on the order of insertion.
        #[test]
        fn layer_bytes_do_not_depend_on_insertion_order(entries in arbitrary_tree(), seed in proptest::prelude::any::<u64>()) {
            let build = |order: &[(String, u8)]| -> Option<Vec<u8>> {
                let mut tree = LayerTree::new("proptest");
                for (text, kind) in order {
                    let layer_path = path(text);
                    let result = match kind {
                        0 => tree.insert_directory(layer_path, LayerFileAttributes { mode: 0o700, uid: 1, gid: 1 }),
                        1 => tree.insert_inode(layer_path, LayerInode {
                            attributes: LayerFileAttributes { mode: 0o640, uid: 2, gid: 3 },
                            kind: LayerInodeKind::RegularFile(LayerFileContents::InMemory(text.as_bytes().to_vec())),
                        }),
                        _ => tree.insert_inode(layer_path, LayerInode {
                            attributes: LayerFileAttributes { mode: 0o777, uid: 0, gid: 0 },
                            kind: LayerInodeKind::Symlink { target: text.as_bytes().to_vec() },
                        }),
                    };
                    // Trees where a file would sit below a file are refused in any order.
                    result.ok()?;
                }
                Some(tree.write_tar(Vec::new(), SourceDateEpoch::from_seconds(7)).unwrap())
            };
            let mut shuffled = entries.clone();
            // A deterministic shuffle driven by `seed`.
            let mut state = seed | 1;
            for index in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                let other = usize::try_from(state % u64::try_from(index + 1).unwrap()).unwrap();
                shuffled.swap(index, other);
            }
            if let (Some(first), Some(second)) = (build(&entries), build(&shuffled)) {
                proptest::prop_assert_eq!(first, second);
            }
        }
    }

    #[test]
    fn duplicate_and_inconsistent_paths_are_refused_with_their_names() {
        let mut tree = LayerTree::new("foo.deb member data.tar");
        let symlink = LayerInode {
            attributes: LayerFileAttributes {
                mode: 0o777,
                uid: 0,
                gid: 0,
            },
            kind: LayerInodeKind::Symlink {
                target: b"x".to_vec(),
            },
        };
        tree.insert_inode(path("bin"), symlink.clone()).unwrap();
        let duplicate = tree.insert_inode(path("bin"), symlink.clone()).unwrap_err();
        assert_eq!(duplicate.to_string(), "path bin appears twice in foo.deb member data.tar: an OCI layer holds each path once; remove the duplicate from the input");
        let below_file = tree.insert_inode(path("bin/sh"), symlink).unwrap_err();
        assert!(below_file.to_string().starts_with(
            "bin/sh in foo.deb member data.tar lies below bin, which is not a directory"
        ));
        let dangling = tree
            .insert_hard_link(path("a"), &path("missing"))
            .unwrap_err();
        assert!(dangling
            .to_string()
            .starts_with("hard link a in foo.deb member data.tar points at missing"));
    }
}
