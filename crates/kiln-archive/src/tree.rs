//! A set of archive entries keyed by path, in bytewise order.
//!
//! The tree is where input order stops mattering: however the entries arrive
//! (a directory walk, a shuffled list, module layers), they are kept sorted by
//! path bytes, and that is the order the writer emits them in.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::entry::{ArchivePath, Content, Entry, EntryKind};
use crate::ArchiveError;

/// Permissions of a parent directory that the input did not list.
pub const IMPLIED_DIRECTORY_PERMISSIONS: u32 = 0o755;

/// Entries keyed by path. Construction checks each entry on its own;
/// [`ArchiveTree::complete`] checks how they relate (parents, hard links).
#[derive(Debug, Clone, Default)]
pub struct ArchiveTree {
    entries: BTreeMap<ArchivePath, Entry>,
}

impl ArchiveTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a tree from entries in any order. Two entries for one path are
    /// an error: an archive with both would unpack differently depending on
    /// which the unpacker sees last.
    pub fn from_entries(entries: impl IntoIterator<Item = Entry>) -> Result<Self, ArchiveError> {
        let mut tree = Self::new();
        for entry in entries {
            tree.insert(entry)?;
        }
        Ok(tree)
    }

    pub fn insert(&mut self, entry: Entry) -> Result<(), ArchiveError> {
        if entry.permissions & !0o7777 != 0 {
            return Err(ArchiveError::InvalidPermissions {
                path: entry.path.display(),
                permissions: entry.permissions,
            });
        }
        if self.entries.contains_key(&entry.path) {
            return Err(ArchiveError::DuplicatePath {
                path: entry.path.display(),
            });
        }
        self.entries.insert(entry.path.clone(), entry);
        Ok(())
    }

    pub fn get(&self, path: &ArchivePath) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in bytewise path order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Sum of the sizes of all regular-file contents (hard links counted once).
    pub fn content_bytes(&self) -> u64 {
        self.entries()
            .map(|entry| match &entry.kind {
                EntryKind::File(content) => content.size(),
                _ => 0,
            })
            .sum()
    }

    /// Reads a directory into a tree: every entry type, permissions and
    /// numeric owners as on disk, device numbers split the way glibc encodes
    /// them, hard links (files sharing an inode) kept as hard links. Nothing
    /// else about the host (mtimes, inode numbers, the directory's own path)
    /// is recorded. The root directory itself is not an entry.
    pub fn from_directory(root: &Path) -> Result<Self, ArchiveError> {
        let mut tree = Self::new();
        // (device, inode) -> paths of a regular file with more than one link.
        let mut link_groups: HashMap<(u64, u64), Vec<ArchivePath>> = HashMap::new();
        for item in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
            let item = item.map_err(|error| ArchiveError::Walk {
                path: error.path().unwrap_or(root).display().to_string(),
                message: error.to_string(),
            })?;
            let relative = item
                .path()
                .strip_prefix(root)
                .expect("walkdir yields paths under its root");
            let path = ArchivePath::new(relative.as_os_str().as_bytes())?;
            let metadata = fs::symlink_metadata(item.path()).map_err(|source| {
                ArchiveError::io(item.path(), "reading the metadata of", source)
            })?;
            let file_type = metadata.file_type();
            let kind = if file_type.is_dir() {
                EntryKind::Directory
            } else if file_type.is_file() {
                if metadata.nlink() > 1 {
                    link_groups
                        .entry((metadata.dev(), metadata.ino()))
                        .or_default()
                        .push(path.clone());
                }
                EntryKind::File(Content::File {
                    path: item.path().to_path_buf(),
                    size: metadata.len(),
                })
            } else if file_type.is_symlink() {
                let target = fs::read_link(item.path()).map_err(|source| {
                    ArchiveError::io(item.path(), "reading the symlink", source)
                })?;
                EntryKind::Symlink {
                    target: target.as_os_str().as_bytes().to_vec(),
                }
            } else if file_type.is_char_device() {
                let (major, minor) = split_device_number(metadata.rdev());
                EntryKind::CharDevice { major, minor }
            } else if file_type.is_block_device() {
                let (major, minor) = split_device_number(metadata.rdev());
                EntryKind::BlockDevice { major, minor }
            } else if file_type.is_fifo() {
                EntryKind::Fifo
            } else if file_type.is_socket() {
                EntryKind::Socket
            } else {
                return Err(ArchiveError::io(
                    item.path(),
                    "classifying",
                    std::io::Error::other("unknown file type"),
                ));
            };
            tree.insert(Entry {
                path,
                permissions: metadata.mode() & 0o7777,
                uid: metadata.uid(),
                gid: metadata.gid(),
                kind,
            })?;
        }
        // Within each inode group the bytewise-first path keeps the contents;
        // the others become links to it. The walk order does not matter.
        for mut paths in link_groups.into_values() {
            if paths.len() < 2 {
                continue; // the other links are outside the tree
            }
            paths.sort();
            let target = paths[0].clone();
            for path in &paths[1..] {
                let entry = tree
                    .entries
                    .get_mut(path)
                    .expect("grouped paths were inserted");
                entry.kind = EntryKind::HardLink {
                    target: target.clone(),
                };
            }
        }
        Ok(tree)
    }

    /// Turns regular files with identical contents, permissions and owner
    /// into hard links to the bytewise-first of them, so the archive stores
    /// their data once (what Hook does with `rdfind`). Off unless asked for:
    /// it changes what the unpacked tree is (one inode instead of several).
    pub fn deduplicate_identical_files(&mut self) -> Result<usize, ArchiveError> {
        let mut first_by_identity: HashMap<([u8; 32], u64, u32, u32, u32), ArchivePath> =
            HashMap::new();
        let mut relinks: Vec<(ArchivePath, ArchivePath)> = Vec::new();
        for entry in self.entries.values() {
            let EntryKind::File(content) = &entry.kind else {
                continue;
            };
            if content.size() == 0 {
                continue; // nothing to save, and empty files are often edited in place
            }
            let digest = sha256_of_content(content)?;
            let identity = (
                digest,
                content.size(),
                entry.permissions,
                entry.uid,
                entry.gid,
            );
            match first_by_identity.get(&identity) {
                Some(first) => relinks.push((entry.path.clone(), first.clone())),
                None => {
                    first_by_identity.insert(identity, entry.path.clone());
                }
            }
        }
        let count = relinks.len();
        for (path, target) in relinks {
            let entry = self
                .entries
                .get_mut(&path)
                .expect("relinked path is in the tree");
            entry.kind = EntryKind::HardLink { target };
        }
        Ok(count)
    }

    /// Adds every missing parent directory and checks how entries relate:
    /// each parent is a directory, each hard link resolves to a regular file.
    ///
    /// Parents are written explicitly because the kernel's initramfs unpacker
    /// does not create them: a file whose directory was never listed is
    /// silently dropped at boot.
    pub fn complete(&mut self) -> Result<(), ArchiveError> {
        let mut missing: Vec<ArchivePath> = Vec::new();
        for entry in self.entries.values() {
            let mut ancestor = entry.path.parent();
            while let Some(parent) = ancestor {
                match self.entries.get(&parent) {
                    Some(existing) if matches!(existing.kind, EntryKind::Directory) => break,
                    Some(_) => {
                        return Err(ArchiveError::ParentNotDirectory {
                            path: entry.path.display(),
                            parent: parent.display(),
                        })
                    }
                    None => {
                        ancestor = parent.parent();
                        missing.push(parent);
                    }
                }
            }
        }
        for path in missing {
            self.entries
                .entry(path.clone())
                .or_insert_with(|| Entry::directory(path, IMPLIED_DIRECTORY_PERMISSIONS));
        }
        // Flatten chains of links (a -> b -> file) so every link names the file.
        let links: Vec<(ArchivePath, ArchivePath)> = self
            .entries
            .values()
            .filter_map(|entry| match &entry.kind {
                EntryKind::HardLink { target } => Some((entry.path.clone(), target.clone())),
                _ => None,
            })
            .collect();
        for (path, first_target) in links {
            let mut target = first_target;
            let mut hops = 0usize;
            loop {
                match self.entries.get(&target).map(|entry| &entry.kind) {
                    Some(EntryKind::File(_)) => break,
                    Some(EntryKind::HardLink { target: next }) if hops < self.entries.len() => {
                        target = next.clone();
                        hops += 1;
                    }
                    Some(EntryKind::HardLink { .. }) => {
                        return Err(ArchiveError::HardLinkCycle {
                            path: path.display(),
                        });
                    }
                    Some(_) | None => {
                        return Err(ArchiveError::HardLinkTarget {
                            path: path.display(),
                            target: target.display(),
                        })
                    }
                }
            }
            let entry = self
                .entries
                .get_mut(&path)
                .expect("link path is in the tree");
            entry.kind = EntryKind::HardLink { target };
        }
        Ok(())
    }
}

/// Splits a Linux `dev_t` into major and minor the way glibc's `makedev`
/// joins them (12+20 bits in the low word, the rest in the high word), not
/// with a plain `>> 8`, which breaks for minors above 255.
pub fn split_device_number(device: u64) -> (u32, u32) {
    let major = ((device >> 8) & 0xfff) | ((device >> 32) & !0xfff);
    let minor = (device & 0xff) | ((device >> 12) & !0xff);
    (
        u32::try_from(major & 0xffff_ffff).expect("masked to 32 bits"),
        u32::try_from(minor & 0xffff_ffff).expect("masked to 32 bits"),
    )
}

fn sha256_of_content(content: &Content) -> Result<[u8; 32], ArchiveError> {
    let mut hasher = Sha256::new();
    match content {
        Content::Bytes(bytes) => hasher.update(bytes),
        Content::File { path, .. } => {
            let mut file =
                fs::File::open(path).map_err(|source| ArchiveError::io(path, "opening", source))?;
            let mut buffer = vec![0u8; 256 * 1024];
            loop {
                let read = file
                    .read(&mut buffer)
                    .map_err(|source| ArchiveError::io(path, "reading", source))?;
                if read == 0 {
                    break;
                }
                hasher.update(&buffer[..read]);
            }
        }
    }
    Ok(hasher.finalize().into())
}

/// Convenience for tests and generated files.
pub fn bytes(data: impl Into<Vec<u8>>) -> Content {
    Content::Bytes(Arc::from(data.into().into_boxed_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_like_glibc() {
        // makedev(8, 1) and makedev(259, 65537): a large major and a minor past 255.
        assert_eq!(split_device_number(0x801), (8, 1));
        let big = {
            let (major, minor) = (259u64, 65537u64);
            ((major & 0xfff) << 8)
                | ((major & !0xfff) << 32)
                | (minor & 0xff)
                | ((minor & !0xff) << 12)
        };
        assert_eq!(split_device_number(big), (259, 65537));
    }

    #[test]
    fn missing_parents_are_added_and_parent_files_rejected() {
        let path = |text: &str| ArchivePath::new(text).unwrap();
        let mut tree =
            ArchiveTree::from_entries([Entry::file(path("a/b/c"), 0o644, bytes("x"))]).unwrap();
        tree.complete().unwrap();
        let listed: Vec<String> = tree.entries().map(|entry| entry.path.display()).collect();
        assert_eq!(listed, ["a", "a/b", "a/b/c"]);

        let mut broken = ArchiveTree::from_entries([
            Entry::file(path("a"), 0o644, bytes("x")),
            Entry::file(path("a/b"), 0o644, bytes("y")),
        ])
        .unwrap();
        let error = broken.complete().unwrap_err().to_string();
        assert_eq!(
            error,
            "entry `a/b` needs `a` to be a directory, but the input makes it something else"
        );
    }

    #[test]
    fn hard_link_chains_are_flattened_and_dangling_links_rejected() {
        let path = |text: &str| ArchivePath::new(text).unwrap();
        let link = |from: &str, to: &str| Entry {
            path: path(from),
            permissions: 0o644,
            uid: 0,
            gid: 0,
            kind: EntryKind::HardLink { target: path(to) },
        };
        let mut tree = ArchiveTree::from_entries([
            Entry::file(path("f"), 0o644, bytes("x")),
            link("g", "f"),
            link("h", "g"),
        ])
        .unwrap();
        tree.complete().unwrap();
        assert_eq!(
            tree.get(&path("h")).unwrap().kind,
            EntryKind::HardLink { target: path("f") }
        );

        let mut dangling = ArchiveTree::from_entries([link("g", "nowhere")]).unwrap();
        assert_eq!(
            dangling.complete().unwrap_err().to_string(),
            "hard link `g` points at `nowhere`, which is not a regular file in the archive"
        );
    }

    #[test]
    fn paths_are_normalised_and_escapes_rejected() {
        assert_eq!(
            ArchivePath::new("/./usr//bin/").unwrap().display(),
            "usr/bin"
        );
        assert!(ArchivePath::new("usr/../../etc").is_err());
        assert!(ArchivePath::new("./").is_err());
    }
}
