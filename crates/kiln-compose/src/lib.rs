//! kiln-compose: module layers, in profile order, become one root tree.
//!
//! Each module of a profile contributes OCI layers (uncompressed tars, as
//! `kiln-oci` writes them) and generated files. This crate stacks them the way
//! an OCI runtime stacks image layers, with the checks a provisioning image
//! needs before anything is written:
//!
//! - **Whiteouts** are honoured: `.wh.NAME` removes `NAME` from lower layers,
//!   `.wh..wh..opq` empties its directory of lower-layer content.
//! - **Paths stay inside the root**: `..` components, and any path that would
//!   be written *through* a symlink (a lower layer's `etc -> /elsewhere`, then
//!   an upper layer's `etc/passwd`), are rejected, naming module and path.
//! - **Conflicts are errors**: two modules giving one path different contents,
//!   types, modes or owners fail with both module names and the path. The same
//!   bytes from two modules (two packages shipping one directory) are fine.
//! - **Origins are kept**: every path remembers the module it came from, for
//!   the manifest and the per-module size report.
//! - **Kernel options** a module needs are checked against a kernel `.config`
//!   ([`check_kernel_options`]) before an image is written.
//!
//! It does no network, spawns no process and knows nothing of the lock, the
//! store or the CLI: it takes tar bytes and returns a tree
//! ([`ComposedTree::to_archive_tree`] hands it to `kiln-archive`). Its only
//! file reads are of the contents an entry points at (`Content::File`, files
//! the caller unpacked), to compare two modules' files and to hash them for
//! the manifest; a read that fails is [`ComposeError::ReadContent`] naming the
//! file, never the digest of nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;

use kiln_archive::{ArchivePath, ArchiveTree, Content, Entry, EntryKind};
use sha2::{Digest, Sha256};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_WHITEOUT: &[u8] = b".wh..wh..opq";

/// Everything composition can reject. Messages name the module and the path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ComposeError {
    #[error("modules `{lower_module}` and `{upper_module}` both provide `{path}` with different {what}; remove it from one of them, or whiteout it in `{upper_module}`")]
    Conflict {
        path: String,
        lower_module: String,
        upper_module: String,
        what: &'static str,
    },
    #[error("module `{module}`: `{path}` would be written through the symlink `{symlink}` (from module `{symlink_module}`); paths must stay inside the image root")]
    ThroughSymlink {
        module: String,
        path: String,
        symlink: String,
        symlink_module: String,
    },
    #[error("module `{module}`: invalid path {path:?} in its layer: {reason}")]
    InvalidPath {
        module: String,
        path: String,
        reason: String,
    },
    #[error("module `{module}`: its layer lists `{path}` twice")]
    DuplicateInLayer { module: String, path: String },
    #[error("module `{module}`: hard link `{path}` points at `{target}`, which is not a regular file in this layer or below")]
    HardLinkTarget {
        module: String,
        path: String,
        target: String,
    },
    #[error("module `{module}`: tar entry `{path}` has type {entry_type:?}, which an initramfs cannot hold")]
    UnsupportedEntry {
        module: String,
        path: String,
        entry_type: String,
    },
    #[error("module `{module}`: reading its layer: {message}")]
    Layer { module: String, message: String },
    #[error("reading {} (the contents of `{entry}`) to hash it: {message}; is the layer cache intact? `cargo xtask cache verify` checks it", path.display())]
    ReadContent {
        path: std::path::PathBuf,
        entry: String,
        /// The I/O error, as text (the enum is compared in tests).
        message: String,
    },
}

/// One path of the composed tree and the module it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposedEntry {
    pub entry: Entry,
    pub module: String,
}

/// A file of the final tree, for `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileRecord {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub module: String,
}

/// The stacked tree.
#[derive(Debug, Clone, Default)]
pub struct ComposedTree {
    entries: BTreeMap<ArchivePath, ComposedEntry>,
}

impl ComposedTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, path: &ArchivePath) -> Option<&ComposedEntry> {
        self.entries.get(path)
    }

    pub fn entries(&self) -> impl Iterator<Item = &ComposedEntry> {
        self.entries.values()
    }

    /// Stacks one module's layer (an uncompressed tar) on top of the tree.
    pub fn apply_layer(&mut self, module: &str, layer: impl Read) -> Result<(), ComposeError> {
        let layer_error = |error: std::io::Error| ComposeError::Layer {
            module: module.to_string(),
            message: error.to_string(),
        };
        let mut archive = tar::Archive::new(layer);
        let mut additions: Vec<Entry> = Vec::new();
        let mut whiteouts: Vec<ArchivePath> = Vec::new();
        let mut opaque_directories: Vec<ArchivePath> = Vec::new();
        for item in archive.entries().map_err(layer_error)? {
            let mut item = item.map_err(layer_error)?;
            let raw_path = item.path_bytes().into_owned();
            let header = item.header();
            let entry_type = header.entry_type();
            let permissions = header.mode().map_err(layer_error)? & 0o7777;
            let uid = u32::try_from(header.uid().map_err(layer_error)?)
                .map_err(|_| invalid(module, &raw_path, "uid does not fit 32 bits"))?;
            let gid = u32::try_from(header.gid().map_err(layer_error)?)
                .map_err(|_| invalid(module, &raw_path, "gid does not fit 32 bits"))?;
            if raw_path.starts_with(b"/") {
                return Err(invalid(
                    module,
                    &raw_path,
                    "absolute paths are not allowed in a layer",
                ));
            }
            let path = ArchivePath::new(&raw_path)
                .map_err(|error| invalid(module, &raw_path, &error.to_string()))?;
            let name = path
                .as_bytes()
                .rsplit(|byte| *byte == b'/')
                .next()
                .unwrap_or_default()
                .to_vec();
            if name == OPAQUE_WHITEOUT {
                opaque_directories
                    .push(path.parent().ok_or_else(|| {
                        invalid(module, &raw_path, "opaque whiteout at the root")
                    })?);
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                let mut hidden_path = path
                    .parent()
                    .map(|parent| parent.as_bytes().to_vec())
                    .unwrap_or_default();
                if !hidden_path.is_empty() {
                    hidden_path.push(b'/');
                }
                hidden_path.extend_from_slice(hidden);
                whiteouts.push(
                    ArchivePath::new(&hidden_path)
                        .map_err(|error| invalid(module, &raw_path, &error.to_string()))?,
                );
                continue;
            }
            let kind = match entry_type {
                tar::EntryType::Directory => EntryKind::Directory,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut data = Vec::with_capacity(usize::try_from(item.size()).unwrap_or(0));
                    item.read_to_end(&mut data).map_err(layer_error)?;
                    EntryKind::File(Content::Bytes(Arc::from(data.into_boxed_slice())))
                }
                tar::EntryType::Symlink => {
                    let target = item
                        .link_name_bytes()
                        .ok_or_else(|| invalid(module, &raw_path, "symlink without a target"))?;
                    EntryKind::Symlink {
                        target: target.into_owned(),
                    }
                }
                tar::EntryType::Link => {
                    let target = item
                        .link_name_bytes()
                        .ok_or_else(|| invalid(module, &raw_path, "hard link without a target"))?;
                    let target = ArchivePath::new(&target)
                        .map_err(|error| invalid(module, &raw_path, &error.to_string()))?;
                    EntryKind::HardLink { target }
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    let major = header.device_major().map_err(layer_error)?.unwrap_or(0);
                    let minor = header.device_minor().map_err(layer_error)?.unwrap_or(0);
                    if entry_type == tar::EntryType::Char {
                        EntryKind::CharDevice { major, minor }
                    } else {
                        EntryKind::BlockDevice { major, minor }
                    }
                }
                tar::EntryType::Fifo => EntryKind::Fifo,
                other => {
                    return Err(ComposeError::UnsupportedEntry {
                        module: module.to_string(),
                        path: path.display(),
                        entry_type: format!("{other:?}"),
                    })
                }
            };
            additions.push(Entry {
                path,
                permissions,
                uid,
                gid,
                kind,
            });
        }
        // Whiteouts hide what lower layers put there, never this layer's own entries.
        for directory in opaque_directories {
            let mut prefix = directory.as_bytes().to_vec();
            prefix.push(b'/');
            let doomed: Vec<ArchivePath> = self
                .entries
                .keys()
                .filter(|path| path.as_bytes().starts_with(&prefix))
                .cloned()
                .collect();
            for path in doomed {
                self.remove(&path);
            }
        }
        for path in whiteouts {
            self.remove_subtree(&path);
        }
        let mut seen_in_layer = std::collections::HashSet::new();
        for entry in additions {
            if !seen_in_layer.insert(entry.path.clone()) {
                return Err(ComposeError::DuplicateInLayer {
                    module: module.to_string(),
                    path: entry.path.display(),
                });
            }
            self.add(module, entry)?;
        }
        Ok(())
    }

    /// Adds one entry (a generated file, or one from a layer) for `module`.
    pub fn add(&mut self, module: &str, entry: Entry) -> Result<(), ComposeError> {
        self.check_no_symlink_ancestor(module, &entry.path)?;
        if let EntryKind::HardLink { target } = &entry.kind {
            match self
                .entries
                .get(target)
                .map(|existing| &existing.entry.kind)
            {
                Some(EntryKind::File(_)) | Some(EntryKind::HardLink { .. }) => {}
                _ => {
                    return Err(ComposeError::HardLinkTarget {
                        module: module.to_string(),
                        path: entry.path.display(),
                        target: target.display(),
                    })
                }
            }
        }
        if let Some(existing) = self.entries.get(&entry.path) {
            if existing.module != module {
                if let Some(what) = difference(&existing.entry, &entry, self)? {
                    return Err(ComposeError::Conflict {
                        path: entry.path.display(),
                        lower_module: existing.module.clone(),
                        upper_module: module.to_string(),
                        what,
                    });
                }
                return Ok(()); // the same thing twice: keep the first origin
            }
            if matches!(existing.entry.kind, EntryKind::Directory)
                && matches!(entry.kind, EntryKind::Directory)
            {
                self.entries.insert(
                    entry.path.clone(),
                    ComposedEntry {
                        entry,
                        module: module.to_string(),
                    },
                );
                return Ok(());
            }
            self.remove(&entry.path.clone());
        }
        // Creating the parents a layer left implicit, owned by this module.
        let mut ancestor = entry.path.parent();
        while let Some(parent) = ancestor {
            if self.entries.contains_key(&parent) {
                break;
            }
            ancestor = parent.parent();
            self.entries.insert(
                parent.clone(),
                ComposedEntry {
                    entry: Entry::directory(parent, 0o755),
                    module: module.to_string(),
                },
            );
        }
        self.entries.insert(
            entry.path.clone(),
            ComposedEntry {
                entry,
                module: module.to_string(),
            },
        );
        Ok(())
    }

    fn check_no_symlink_ancestor(
        &self,
        module: &str,
        path: &ArchivePath,
    ) -> Result<(), ComposeError> {
        let mut ancestor = path.parent();
        while let Some(parent) = ancestor {
            if let Some(existing) = self.entries.get(&parent) {
                match existing.entry.kind {
                    EntryKind::Directory => {}
                    EntryKind::Symlink { .. } => {
                        return Err(ComposeError::ThroughSymlink {
                            module: module.to_string(),
                            path: path.display(),
                            symlink: parent.display(),
                            symlink_module: existing.module.clone(),
                        })
                    }
                    _ => {
                        return Err(ComposeError::Conflict {
                            path: parent.display(),
                            lower_module: existing.module.clone(),
                            upper_module: module.to_string(),
                            what: "types (a directory is needed for its contents)",
                        })
                    }
                }
            }
            ancestor = parent.parent();
        }
        Ok(())
    }

    /// Removes `path` and everything below it (a profile's `prune:`, e.g. `usr/share/doc`)
    /// and returns how many bytes of file data left the tree.
    pub fn prune(&mut self, path: &ArchivePath) -> u64 {
        let total = |tree: &ComposedTree| tree.bytes_by_module().values().sum::<u64>();
        let before = total(self);
        self.remove_subtree(path);
        before - total(self)
    }

    /// [`ComposedTree::prune`] for every path that `pattern` matches, where a `*` component
    /// matches any one component (`usr/lib/*/gconv`: the multiarch directory of either
    /// architecture). Returns the bytes of file data removed.
    pub fn prune_matching(&mut self, pattern: &str) -> u64 {
        let wanted: Vec<&[u8]> = pattern
            .trim_matches('/')
            .split('/')
            .map(str::as_bytes)
            .collect();
        let matches: BTreeSet<ArchivePath> = self
            .entries
            .keys()
            .filter_map(|path| {
                let components: Vec<&[u8]> = path.as_bytes().split(|byte| *byte == b'/').collect();
                if components.len() < wanted.len()
                    || !components
                        .iter()
                        .zip(&wanted)
                        .all(|(have, want)| *want == b"*" || have == want)
                {
                    return None;
                }
                ArchivePath::new(components[..wanted.len()].join(&b'/')).ok()
            })
            .collect();
        matches.iter().map(|path| self.prune(path)).sum()
    }

    fn remove_subtree(&mut self, path: &ArchivePath) {
        let mut prefix = path.as_bytes().to_vec();
        prefix.push(b'/');
        let doomed: Vec<ArchivePath> = self
            .entries
            .keys()
            .filter(|candidate| *candidate == path || candidate.as_bytes().starts_with(&prefix))
            .cloned()
            .collect();
        for candidate in doomed {
            self.remove(&candidate);
        }
    }

    /// Removes one path. Hard links that pointed at it keep its contents:
    /// the first becomes the file, the others link to that one.
    fn remove(&mut self, path: &ArchivePath) {
        let Some(removed) = self.entries.remove(path) else {
            return;
        };
        let EntryKind::File(content) = removed.entry.kind else {
            return;
        };
        let links: Vec<ArchivePath> = self
            .entries
            .iter()
            .filter(|(_, existing)| matches!(&existing.entry.kind, EntryKind::HardLink { target } if target == path))
            .map(|(link, _)| link.clone())
            .collect();
        let Some((first, rest)) = links.split_first() else {
            return;
        };
        if let Some(promoted) = self.entries.get_mut(first) {
            promoted.entry.kind = EntryKind::File(content);
            promoted.entry.permissions = removed.entry.permissions;
            promoted.entry.uid = removed.entry.uid;
            promoted.entry.gid = removed.entry.gid;
        }
        for link in rest {
            if let Some(existing) = self.entries.get_mut(link) {
                existing.entry.kind = EntryKind::HardLink {
                    target: first.clone(),
                };
            }
        }
    }

    /// The tree as `kiln-archive` takes it.
    pub fn to_archive_tree(&self) -> ArchiveTree {
        let mut tree = ArchiveTree::new();
        for composed in self.entries.values() {
            tree.insert(composed.entry.clone())
                .expect("composed paths are unique and valid");
        }
        tree
    }

    /// Every path with its type, mode, owner, size, digest and module. A file whose contents
    /// cannot be read is an error naming it, never the digest of nothing.
    pub fn file_records(&self) -> Result<Vec<FileRecord>, ComposeError> {
        self.entries
            .values()
            .map(|composed| {
                let entry = &composed.entry;
                let (kind, size, sha256, target) = match &entry.kind {
                    EntryKind::Directory => ("directory", 0, None, None),
                    EntryKind::File(content) => (
                        "file",
                        content.size(),
                        Some(content_sha256(content, entry)?),
                        None,
                    ),
                    EntryKind::HardLink { target } => {
                        let (size, digest) =
                            match self.entries.get(target).map(|file| &file.entry.kind) {
                                Some(EntryKind::File(content)) => {
                                    (content.size(), Some(content_sha256(content, entry)?))
                                }
                                _ => (0, None),
                            };
                        ("hardlink", size, digest, Some(target.display()))
                    }
                    EntryKind::Symlink { target } => (
                        "symlink",
                        target.len() as u64,
                        None,
                        Some(String::from_utf8_lossy(target).into_owned()),
                    ),
                    EntryKind::CharDevice { major, minor } => {
                        ("char-device", 0, None, Some(format!("{major}:{minor}")))
                    }
                    EntryKind::BlockDevice { major, minor } => {
                        ("block-device", 0, None, Some(format!("{major}:{minor}")))
                    }
                    EntryKind::Fifo => ("fifo", 0, None, None),
                    EntryKind::Socket => ("socket", 0, None, None),
                };
                Ok(FileRecord {
                    path: entry.path.display(),
                    kind,
                    mode: format!("{:04o}", entry.permissions),
                    uid: entry.uid,
                    gid: entry.gid,
                    size,
                    sha256,
                    target,
                    module: composed.module.clone(),
                })
            })
            .collect()
    }

    /// Bytes of regular-file data each module contributes (hard links once).
    pub fn bytes_by_module(&self) -> BTreeMap<String, u64> {
        let mut totals = BTreeMap::new();
        for composed in self.entries.values() {
            let size = match &composed.entry.kind {
                EntryKind::File(content) => content.size(),
                _ => 0,
            };
            *totals.entry(composed.module.clone()).or_insert(0) += size;
        }
        totals
    }
}

fn invalid(module: &str, raw_path: &[u8], reason: &str) -> ComposeError {
    ComposeError::InvalidPath {
        module: module.to_string(),
        path: String::from_utf8_lossy(raw_path).into_owned(),
        reason: reason.to_string(),
    }
}

/// What differs between two entries for one path, if anything.
fn difference(
    lower: &Entry,
    upper: &Entry,
    tree: &ComposedTree,
) -> Result<Option<&'static str>, ComposeError> {
    let resolve = |entry: &Entry| -> Option<Content> {
        match &entry.kind {
            EntryKind::File(content) => Some(content.clone()),
            EntryKind::HardLink { target } => {
                match tree.entries.get(target).map(|file| &file.entry.kind) {
                    Some(EntryKind::File(content)) => Some(content.clone()),
                    _ => None,
                }
            }
            _ => None,
        }
    };
    let type_of = |entry: &Entry| match entry.kind {
        EntryKind::HardLink { .. } => kiln_archive::entry::S_IFREG,
        _ => entry.file_type_bits(),
    };
    if type_of(lower) != type_of(upper) {
        return Ok(Some("types"));
    }
    if (lower.permissions, lower.uid, lower.gid) != (upper.permissions, upper.uid, upper.gid) {
        return Ok(Some("modes or owners"));
    }
    Ok(match (&lower.kind, &upper.kind) {
        (EntryKind::Symlink { target: a }, EntryKind::Symlink { target: b }) if a != b => {
            Some("symlink targets")
        }
        (
            EntryKind::CharDevice { major: a, minor: b },
            EntryKind::CharDevice { major: c, minor: d },
        )
        | (
            EntryKind::BlockDevice { major: a, minor: b },
            EntryKind::BlockDevice { major: c, minor: d },
        ) if (a, b) != (c, d) => Some("device numbers"),
        _ => match (resolve(lower), resolve(upper)) {
            (Some(a), Some(b)) if content_sha256(&a, lower)? != content_sha256(&b, upper)? => {
                Some("contents")
            }
            _ => None,
        },
    })
}

/// The sha256 of `content` (of `entry`, named in the error when its file cannot be read).
fn content_sha256(content: &Content, entry: &Entry) -> Result<String, ComposeError> {
    match content {
        Content::Bytes(bytes) => Ok(hex::encode(Sha256::digest(bytes))),
        Content::File { path, .. } => {
            let bytes = std::fs::read(path).map_err(|error| ComposeError::ReadContent {
                path: path.clone(),
                entry: entry.path.display(),
                message: error.to_string(),
            })?;
            Ok(hex::encode(Sha256::digest(bytes)))
        }
    }
}

/// A kernel option a module needs, as `CONFIG_NAME` with the values that satisfy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequiredKernelOption {
    /// The module's name, or a description of another requirer (`profile `hook`
    /// (compression: lz4)`), which has a space and is printed as it is.
    pub module: String,
    pub option: String,
    /// `y` only (built in), or `y` or `m`.
    pub module_allowed: bool,
}

/// Checks every required option against the text of a kernel `.config`.
/// Returns one line per missing option naming the module that needs it.
pub fn check_kernel_options(
    required: &[RequiredKernelOption],
    kernel_config: &str,
) -> Result<(), Vec<String>> {
    let mut values: BTreeMap<&str, &str> = BTreeMap::new();
    for line in kernel_config.lines() {
        if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") {
                values.insert(name, value);
            }
        }
    }
    let mut missing = Vec::new();
    for requirement in required {
        let value = values.get(requirement.option.as_str()).copied();
        let satisfied =
            matches!(value, Some("y")) || (requirement.module_allowed && value == Some("m"));
        if !satisfied {
            let requirer = if requirement.module.contains(' ') {
                requirement.module.clone()
            } else {
                format!("module `{}`", requirement.module)
            };
            missing.push(format!(
                "{requirer} needs {}={} but the kernel has {}",
                requirement.option,
                if requirement.module_allowed {
                    "y or m"
                } else {
                    "y"
                },
                value.map_or_else(
                    || "it unset".to_string(),
                    |value| format!("{}={value}", requirement.option)
                )
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}
