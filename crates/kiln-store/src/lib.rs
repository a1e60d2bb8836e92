//! kiln's content-addressed store: every input and every artifact, by sha256.
//!
//! **Owns:** the directory at `$KILN_CACHE` (default `$XDG_CACHE_HOME/kiln`, else
//! `~/.cache/kiln`) and everything in it:
//!
//! ```text
//! $KILN_CACHE/
//!   oci-layout           {"imageLayoutVersion":"1.0.0"}: the store root *is* an OCI image layout
//!   blobs/sha256/<hex>   every blob (a .deb, a tarball, a tar layer, an OCI config/manifest)
//!   index.json           the OCI layout's index: written by kiln-oci, read by `gc`
//!   import/              files a user drops in for air-gapped sites (kiln-fetch picks them up)
//!   tmp/                 temporary files, on the same filesystem so inserts are renames
//!   quarantine/          blobs that `verify` found corrupt, kept for inspection
//!   state/<name>/        private state of a fetcher (kiln-fetch's apt state per architecture)
//!   lock                 the advisory lock (see below)
//! ```
//!
//! **API for other crates** (kiln-oci, the kernel build):
//! [`Store::open`] (shared lock), [`Store::insert_blob_from_reader`] (verified against an
//! [`ExpectedBlob`]), [`Store::insert_new_blob_from_reader`] (for content the caller just
//! generated: returns its digest), [`Store::insert_owned_file`] (moves a finished download in),
//! [`Store::blob_path`], [`Store::contains`], [`Store::oci_layout_dir`], [`Store::temp_dir`].
//!
//! **Architecture Invariant:** a file under `blobs/sha256/<hex>` always hashes to `<hex>`.
//! Content is hashed while it is written to a temp file in `tmp/`, checked against what the
//! caller expected (sha256 and size), fsynced, renamed into place and the directory fsynced;
//! an interrupted or failed insert leaves at most a file in `tmp/`, never a wrong blob
//! (tests `interrupted_insert_leaves_no_blob`, `digest_mismatch_leaves_the_store_as_it_was`).
//!
//! **Architecture Invariant:** concurrency by `flock(2)` on `lock`: every [`Store::open`]
//! holds it shared (any number of builds insert at once; renames are atomic and two writers of
//! one digest write the same bytes), `verify` and `gc` hold it exclusive
//! ([`Store::open_exclusive`]), so they never delete what a running build uses, and may clear
//! `tmp/`, whose files can then only be leftovers of killed processes.
//!
//! **Architecture Invariant:** no network and no process spawning: this crate moves bytes
//! between files. Fetching belongs to kiln-fetch, image formats to kiln-oci.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Hashes a byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits, with or without an OCI `sha256:` prefix.
    pub fn parse(text: &str) -> Result<Sha256Digest, StoreError> {
        let hex_text = text.strip_prefix("sha256:").unwrap_or(text);
        let mut bytes = [0_u8; 32];
        if hex_text.len() != 64
            || hex_text.bytes().any(|byte| byte.is_ascii_uppercase())
            || hex::decode_to_slice(hex_text, &mut bytes).is_err()
        {
            return Err(StoreError::InvalidDigest(text.to_owned()));
        }
        Ok(Sha256Digest(bytes))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "sha256:{}", self.to_hex())
    }
}

impl FromStr for Sha256Digest {
    type Err = StoreError;
    fn from_str(text: &str) -> Result<Self, StoreError> {
        Sha256Digest::parse(text)
    }
}

/// What a caller says a blob must be before it may enter the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedBlob {
    /// The digest it must hash to.
    pub sha256: Sha256Digest,
    /// The size it must have, when known (a lock always knows it).
    pub size: Option<u64>,
    /// What it is, for error messages: `package busybox-static 1:1.35.0-4 (arm64)`.
    pub label: String,
}

/// Why the store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`cannot create`, `cannot rename into`...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The content is shorter or longer than expected (a truncated download, usually).
    #[error("{label}: size mismatch: expected {expected} bytes, got {actual}{hint}; nothing was added to the store")]
    SizeMismatch {
        /// What the blob is.
        label: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes read.
        actual: u64,
        /// `(truncated download?)` when shorter.
        hint: &'static str,
    },
    /// The content does not hash to the expected digest.
    #[error("{label}: sha256 mismatch: expected {expected}, got {actual} ({size} bytes); nothing was added to the store: check the source, or re-pin it with `cargo xtask lock`")]
    DigestMismatch {
        /// What the blob is.
        label: String,
        /// The digest expected.
        expected: Sha256Digest,
        /// The digest of what was read.
        actual: Sha256Digest,
        /// Bytes read.
        size: u64,
    },
    /// Not a sha256 in hex.
    #[error(
        "`{0}` is not a sha256 digest (64 lowercase hex digits, optionally prefixed by `sha256:`)"
    )]
    InvalidDigest(String),
    /// No usable store location could be derived from the environment.
    #[error("cannot find a cache directory: set KILN_CACHE (or XDG_CACHE_HOME or HOME)")]
    NoCacheDirectory,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs re-hashed.
    pub blobs_checked: u64,
    /// Bytes re-hashed.
    pub bytes_checked: u64,
    /// Blobs whose content did not match their name, and where they were moved.
    pub corrupt: Vec<CorruptBlob>,
    /// Leftover temporary files removed from `tmp/`.
    pub temporary_files_removed: u64,
}

/// A blob whose content does not hash to its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBlob {
    /// The file name it had under `blobs/sha256/`.
    pub name: String,
    /// What its content hashes to.
    pub actual: Option<Sha256Digest>,
    /// Where it is now.
    pub quarantined_to: PathBuf,
}

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs kept.
    pub blobs_kept: u64,
    /// Blobs removed.
    pub blobs_removed: u64,
    /// Bytes freed.
    pub bytes_removed: u64,
    /// Leftover temporary files removed from `tmp/`.
    pub temporary_files_removed: u64,
}

/// Which `flock(2)` mode a [`Store`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Builds: many at once.
    Shared,
    /// `verify` and `gc`: alone.
    Exclusive,
}

/// An open store, holding its advisory lock until dropped.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    mode: LockMode,
    // Held for the lifetime of the Store: closing the descriptor releases the flock.
    _lock_file: File,
}

fn io_error<'path>(
    action: &'static str,
    path: &'path Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'path {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// `flock(2)` a file, blocking, retrying on EINTR.
fn flock(file: &File, mode: LockMode, path: &Path) -> Result<(), StoreError> {
    let operation = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    };
    loop {
        // SAFETY: `file` is an open descriptor owned by the caller for the duration of the
        // call; flock only takes an advisory lock on it and touches no memory.
        let result = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if result == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(StoreError::Io {
                action: "cannot lock",
                path: path.to_path_buf(),
                source: error,
            });
        }
    }
}

fn fsync_directory(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error("cannot fsync directory", path))
}

/// Copies `reader` into `writer`, returning the sha256 and the byte count.
fn copy_hashing(
    reader: &mut dyn Read,
    writer: &mut dyn Write,
    path: &Path,
) -> Result<(Sha256Digest, u64), StoreError> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; 1 << 20];
    let mut total: u64 = 0;
    loop {
        let count = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(StoreError::Io {
                    action: "cannot read the content for",
                    path: path.to_path_buf(),
                    source: error,
                })
            }
        };
        hasher.update(&buffer[..count]);
        writer
            .write_all(&buffer[..count])
            .map_err(io_error("cannot write", path))?;
        total += u64::try_from(count).unwrap_or(u64::MAX);
    }
    Ok((Sha256Digest(hasher.finalize().into()), total))
}

/// Hashes a file.
pub fn hash_file(path: &Path) -> Result<(Sha256Digest, u64), StoreError> {
    let mut file = File::open(path).map_err(io_error("cannot open", path))?;
    copy_hashing(&mut file, &mut std::io::sink(), path)
}

fn check_expected(
    expected: &ExpectedBlob,
    actual: Sha256Digest,
    size: u64,
) -> Result<(), StoreError> {
    if let Some(expected_size) = expected.size {
        if expected_size != size {
            let hint = if size < expected_size {
                " (truncated download?)"
            } else {
                ""
            };
            return Err(StoreError::SizeMismatch {
                label: expected.label.clone(),
                expected: expected_size,
                actual: size,
                hint,
            });
        }
    }
    if actual != expected.sha256 {
        return Err(StoreError::DigestMismatch {
            label: expected.label.clone(),
            expected: expected.sha256,
            actual,
            size,
        });
    }
    Ok(())
}

impl Store {
    /// `$KILN_CACHE`, else `$XDG_CACHE_HOME/kiln`, else `$HOME/.cache/kiln`.
    pub fn default_root() -> Result<PathBuf, StoreError> {
        let non_empty = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        if let Some(root) = non_empty("KILN_CACHE") {
            return Ok(root);
        }
        if let Some(cache) = non_empty("XDG_CACHE_HOME") {
            return Ok(cache.join("kiln"));
        }
        non_empty("HOME")
            .map(|home| home.join(".cache").join("kiln"))
            .ok_or(StoreError::NoCacheDirectory)
    }

    /// Opens (creating if needed) the store at `root`, holding its lock shared: what every
    /// build does.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        Store::open_with_mode(root, LockMode::Shared)
    }

    /// Opens the store holding its lock exclusively: for `verify` and `gc`. Blocks until
    /// every running build has closed the store.
    pub fn open_exclusive(root: &Path) -> Result<Store, StoreError> {
        Store::open_with_mode(root, LockMode::Exclusive)
    }

    fn open_with_mode(root: &Path, mode: LockMode) -> Result<Store, StoreError> {
        for directory in [
            root.join("blobs/sha256"),
            root.join("tmp"),
            root.join("import"),
            root.join("state"),
        ] {
            std::fs::create_dir_all(&directory).map_err(io_error("cannot create", &directory))?;
        }
        let lock_path = root.join("lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("cannot open", &lock_path))?;
        flock(&lock_file, mode, &lock_path)?;
        let store = Store {
            root: root.to_path_buf(),
            mode,
            _lock_file: lock_file,
        };
        let layout_path = root.join("oci-layout");
        if !layout_path.exists() {
            let mut temporary = tempfile::NamedTempFile::new_in(store.root.join("tmp"))
                .map_err(io_error("cannot create a file in", &store.root))?;
            temporary
                .write_all(b"{\"imageLayoutVersion\":\"1.0.0\"}")
                .map_err(io_error("cannot write", &layout_path))?;
            temporary
                .persist(&layout_path)
                .map_err(|error| StoreError::Io {
                    action: "cannot create",
                    path: layout_path.clone(),
                    source: error.error,
                })?;
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lock mode this handle holds.
    pub fn lock_mode(&self) -> LockMode {
        self.mode
    }

    /// The OCI image layout directory (`skopeo inspect oci:<dir>:<ref>`): the store root.
    /// Its blobs are the store's blobs; kiln-oci owns `index.json` in it.
    pub fn oci_layout_dir(&self) -> &Path {
        &self.root
    }

    /// Where users drop files for air-gapped sites (`import/`).
    pub fn import_dir(&self) -> PathBuf {
        self.root.join("import")
    }

    /// A directory for a fetcher's private state, created if needed (`state/<name>`).
    pub fn state_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        let path = self.root.join("state").join(name);
        std::fs::create_dir_all(&path).map_err(io_error("cannot create", &path))?;
        Ok(path)
    }

    /// Where blob `digest` is (whether or not it exists).
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.to_hex())
    }

    /// Whether blob `digest` is in the store.
    pub fn contains(&self, digest: &Sha256Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A fresh temporary directory inside the store (same filesystem as the blobs, so
    /// [`Store::insert_owned_file`] is a rename). Removed on drop; if the process is killed,
    /// the next `verify`/`gc` removes it.
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, StoreError> {
        let parent = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("work-")
            .tempdir_in(&parent)
            .map_err(io_error("cannot create a directory in", &parent))
    }

    /// Renames a verified temp file into `blobs/`, fsyncing file and directory.
    fn commit(
        &self,
        temporary: tempfile::NamedTempFile,
        digest: &Sha256Digest,
    ) -> Result<PathBuf, StoreError> {
        let destination = self.blob_path(digest);
        temporary
            .as_file()
            .sync_all()
            .map_err(io_error("cannot fsync", temporary.path()))?;
        set_read_only(temporary.path())?;
        temporary
            .persist(&destination)
            .map_err(|error| StoreError::Io {
                action: "cannot rename into",
                path: destination.clone(),
                source: error.error,
            })?;
        fsync_directory(&self.root.join("blobs/sha256"))?;
        Ok(destination)
    }

    fn new_temp_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let parent = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&parent)
            .map_err(io_error("cannot create a file in", &parent))
    }

    /// Reads `reader` to its end into the store, if and only if it matches `expected`;
    /// returns the blob's path. On any error nothing is added.
    pub fn insert_blob_from_reader(
        &self,
        reader: &mut dyn Read,
        expected: &ExpectedBlob,
    ) -> Result<PathBuf, StoreError> {
        let mut temporary = self.new_temp_file()?;
        let temporary_path = temporary.path().to_path_buf();
        let (actual, size) = copy_hashing(reader, temporary.as_file_mut(), &temporary_path)?;
        check_expected(expected, actual, size)?;
        self.commit(temporary, &actual)
    }

    /// Reads `reader` into the store as a new blob whose digest is whatever it hashes to
    /// (for content the caller generated: OCI layers, configs, manifests). Returns the
    /// digest and size.
    pub fn insert_new_blob_from_reader(
        &self,
        reader: &mut dyn Read,
    ) -> Result<(Sha256Digest, u64), StoreError> {
        let mut temporary = self.new_temp_file()?;
        let temporary_path = temporary.path().to_path_buf();
        let (actual, size) = copy_hashing(reader, temporary.as_file_mut(), &temporary_path)?;
        self.commit(temporary, &actual)?;
        Ok((actual, size))
    }

    /// Moves a file the caller owns (a finished download in [`Store::temp_dir`]) into the
    /// store if it matches `expected`; returns the blob's path. The file is hashed first; on
    /// a mismatch it is left where it was and nothing is added.
    pub fn insert_owned_file(
        &self,
        path: &Path,
        expected: &ExpectedBlob,
    ) -> Result<PathBuf, StoreError> {
        let (actual, size) = hash_file(path)?;
        check_expected(expected, actual, size)?;
        let destination = self.blob_path(&actual);
        File::open(path)
            .and_then(|file| file.sync_all())
            .map_err(io_error("cannot fsync", path))?;
        set_read_only(path)?;
        match std::fs::rename(path, &destination) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(libc::EXDEV) => {
                let mut file = File::open(path).map_err(io_error("cannot open", path))?;
                return self.insert_blob_from_reader(&mut file, expected);
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "cannot rename into",
                    path: destination,
                    source,
                })
            }
        }
        fsync_directory(&self.root.join("blobs/sha256"))?;
        Ok(destination)
    }

    /// Every blob name under `blobs/sha256/`, sorted (names that are not digests included,
    /// so `verify` can quarantine them).
    pub fn blob_names(&self) -> Result<Vec<String>, StoreError> {
        let directory = self.root.join("blobs/sha256");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&directory).map_err(io_error("cannot list", &directory))? {
            let entry = entry.map_err(io_error("cannot list", &directory))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn require_exclusive(&self, operation: &str) -> Result<(), StoreError> {
        if self.mode == LockMode::Exclusive {
            return Ok(());
        }
        Err(StoreError::Io {
            action: "refusing to run without the exclusive lock on",
            path: self.root.join("lock"),
            source: std::io::Error::other(format!("{operation} needs Store::open_exclusive")),
        })
    }

    /// Removes everything in `tmp/`: with the exclusive lock held, it can only be leftovers
    /// of killed processes.
    fn clear_temporary_files(&self) -> Result<u64, StoreError> {
        let directory = self.root.join("tmp");
        let mut removed = 0;
        for entry in std::fs::read_dir(&directory).map_err(io_error("cannot list", &directory))? {
            let path = entry.map_err(io_error("cannot list", &directory))?.path();
            let result = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            result.map_err(io_error("cannot remove", &path))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Re-hashes every blob; moves each one whose content does not match its name into
    /// `quarantine/`, and clears `tmp/`. Needs [`Store::open_exclusive`].
    pub fn verify(&self, mut on_blob: impl FnMut(&str, u64)) -> Result<VerifyReport, StoreError> {
        self.require_exclusive("verify")?;
        let mut report = VerifyReport {
            temporary_files_removed: self.clear_temporary_files()?,
            ..VerifyReport::default()
        };
        for name in self.blob_names()? {
            let path = self.root.join("blobs/sha256").join(&name);
            let (actual, size) = hash_file(&path)?;
            report.blobs_checked += 1;
            report.bytes_checked += size;
            on_blob(&name, size);
            if actual.to_hex() == name {
                continue;
            }
            let quarantine = self.root.join("quarantine");
            std::fs::create_dir_all(&quarantine).map_err(io_error("cannot create", &quarantine))?;
            let mut destination = quarantine.join(&name);
            let mut counter = 1;
            while destination.exists() {
                destination = quarantine.join(format!("{name}.{counter}"));
                counter += 1;
            }
            std::fs::rename(&path, &destination)
                .map_err(io_error("cannot move into quarantine", &path))?;
            report.corrupt.push(CorruptBlob {
                name,
                actual: Some(actual),
                quarantined_to: destination,
            });
        }
        fsync_directory(&self.root.join("blobs/sha256"))?;
        Ok(report)
    }

    /// Digests reachable from the OCI layout's `index.json`: every `"digest": "sha256:..."`
    /// in it, and, recursively, in every referenced blob that is JSON (manifests, indexes).
    /// Layers are not parsed (they are not JSON) but are kept because a manifest names them.
    pub fn oci_reachable_digests(&self) -> Result<BTreeSet<Sha256Digest>, StoreError> {
        let mut reachable = BTreeSet::new();
        let index_path = self.root.join("index.json");
        let Ok(index_text) = std::fs::read(&index_path) else {
            return Ok(reachable);
        };
        let mut pending = vec![index_text];
        while let Some(json_bytes) = pending.pop() {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json_bytes) else {
                continue;
            };
            let mut found = Vec::new();
            collect_digests(&value, &mut found);
            for digest in found {
                if reachable.insert(digest) {
                    let path = self.blob_path(&digest);
                    // Only small blobs can be manifests; a layer is never read here.
                    let is_small = std::fs::metadata(&path)
                        .map(|metadata| metadata.len() < 4 << 20)
                        .unwrap_or(false);
                    if is_small {
                        if let Ok(bytes) = std::fs::read(&path) {
                            pending.push(bytes);
                        }
                    }
                }
            }
        }
        Ok(reachable)
    }

    /// Removes every blob not in `keep` and not reachable from the OCI `index.json`, and
    /// clears `tmp/`. Needs [`Store::open_exclusive`].
    pub fn gc(&self, keep: &BTreeSet<Sha256Digest>) -> Result<GcReport, StoreError> {
        self.require_exclusive("gc")?;
        let reachable = self.oci_reachable_digests()?;
        let mut report = GcReport {
            temporary_files_removed: self.clear_temporary_files()?,
            ..GcReport::default()
        };
        for name in self.blob_names()? {
            let live = Sha256Digest::parse(&name)
                .map(|digest| keep.contains(&digest) || reachable.contains(&digest))
                .unwrap_or(false);
            if live {
                report.blobs_kept += 1;
                continue;
            }
            let path = self.root.join("blobs/sha256").join(&name);
            let size = std::fs::metadata(&path)
                .map(|metadata| metadata.len())
                .unwrap_or(0);
            std::fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
            report.blobs_removed += 1;
            report.bytes_removed += size;
        }
        fsync_directory(&self.root.join("blobs/sha256"))?;
        Ok(report)
    }
}

fn collect_digests(value: &serde_json::Value, found: &mut Vec<Sha256Digest>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if key == "digest" {
                    if let Some(digest) = child
                        .as_str()
                        .and_then(|text| Sha256Digest::parse(text).ok())
                    {
                        found.push(digest);
                    }
                }
                collect_digests(child, found);
            }
        }
        serde_json::Value::Array(items) => {
            items.iter().for_each(|item| collect_digests(item, found))
        }
        _ => {}
    }
}

/// Blobs are read-only (0444): a build that opens one for writing by mistake fails loudly
/// instead of corrupting the store.
fn set_read_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))
        .map_err(io_error("cannot chmod", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(bytes: &[u8]) -> ExpectedBlob {
        ExpectedBlob {
            sha256: Sha256Digest::of_bytes(bytes),
            size: Some(u64::try_from(bytes.len()).unwrap()),
            label: "test blob".into(),
        }
    }

    fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
            let path = entry.unwrap().path();
            entries.push((
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            ));
        }
        entries.sort();
        entries
    }

    #[test]
    fn insert_then_read_back() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let path = store
            .insert_blob_from_reader(&mut &b"hello"[..], &expected(b"hello"))
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert_eq!(path, store.blob_path(&Sha256Digest::of_bytes(b"hello")));
        assert!(store.contains(&Sha256Digest::of_bytes(b"hello")));
        assert_eq!(
            std::fs::read(root.path().join("oci-layout")).unwrap(),
            b"{\"imageLayoutVersion\":\"1.0.0\"}"
        );
        // Inserting the same content again is fine and changes nothing.
        store
            .insert_blob_from_reader(&mut &b"hello"[..], &expected(b"hello"))
            .unwrap();
        assert_eq!(snapshot(root.path()).len(), 1);
    }

    #[test]
    fn digest_mismatch_leaves_the_store_as_it_was() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        store
            .insert_blob_from_reader(&mut &b"before"[..], &expected(b"before"))
            .unwrap();
        let before = snapshot(root.path());
        let mut wrong = expected(b"other");
        wrong.size = Some(5);
        wrong.label = "package busybox-static (arm64)".into();
        let error = store
            .insert_blob_from_reader(&mut &b"hello"[..], &wrong)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("package busybox-static (arm64): sha256 mismatch: expected "),
            "{error}"
        );
        assert_eq!(snapshot(root.path()), before);
        assert_eq!(
            std::fs::read_dir(root.path().join("tmp")).unwrap().count(),
            0,
            "the temp file is removed"
        );
    }

    #[test]
    fn truncated_content_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let whole = vec![7_u8; 100_000];
        let error = store
            .insert_blob_from_reader(&mut &whole[..50_000], &expected(&whole))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "test blob: size mismatch: expected 100000 bytes, got 50000 (truncated download?); nothing was added to the store");
        assert!(snapshot(root.path()).is_empty());
    }

    /// A reader that fails halfway, as a dropped connection does.
    struct FailingReader(usize);
    impl Read for FailingReader {
        fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("connection reset"));
            }
            let count = self.0.min(buffer.len());
            buffer[..count].fill(1);
            self.0 -= count;
            Ok(count)
        }
    }

    #[test]
    fn interrupted_insert_leaves_no_blob() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let error = store
            .insert_new_blob_from_reader(&mut FailingReader(3000))
            .unwrap_err()
            .to_string();
        assert!(error.contains("connection reset"), "{error}");
        assert!(snapshot(root.path()).is_empty());
    }

    #[test]
    fn verify_quarantines_corrupt_blobs() {
        let root = tempfile::tempdir().unwrap();
        let good = {
            let store = Store::open(root.path()).unwrap();
            let good = store
                .insert_blob_from_reader(&mut &b"good"[..], &expected(b"good"))
                .unwrap();
            let bad = store
                .insert_blob_from_reader(&mut &b"bad"[..], &expected(b"bad"))
                .unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(&bad, b"bit rot").unwrap();
            std::fs::write(root.path().join("tmp/blob-leftover"), b"partial").unwrap();
            good
        };
        let store = Store::open_exclusive(root.path()).unwrap();
        let report = store.verify(|_, _| {}).unwrap();
        assert_eq!(report.blobs_checked, 2);
        assert_eq!(report.corrupt.len(), 1);
        assert_eq!(
            report.corrupt[0].name,
            Sha256Digest::of_bytes(b"bad").to_hex()
        );
        assert_eq!(
            report.corrupt[0].actual,
            Some(Sha256Digest::of_bytes(b"bit rot"))
        );
        assert_eq!(
            std::fs::read(&report.corrupt[0].quarantined_to).unwrap(),
            b"bit rot"
        );
        assert_eq!(report.temporary_files_removed, 1);
        assert!(good.exists());
        assert_eq!(store.verify(|_, _| {}).unwrap().corrupt.len(), 0);
    }

    #[test]
    fn verify_and_gc_need_the_exclusive_lock() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        assert!(store.verify(|_, _| {}).is_err());
        assert!(store.gc(&BTreeSet::new()).is_err());
    }

    #[test]
    fn gc_keeps_what_is_referenced_and_what_oci_index_reaches() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open_exclusive(root.path()).unwrap();
        let (kept, _) = store
            .insert_new_blob_from_reader(&mut &b"kept"[..])
            .unwrap();
        let (dropped, _) = store
            .insert_new_blob_from_reader(&mut &b"dropped"[..])
            .unwrap();
        let (layer, _) = store
            .insert_new_blob_from_reader(&mut &b"layer"[..])
            .unwrap();
        let manifest = format!("{{\"layers\":[{{\"digest\":\"sha256:{layer}\"}}]}}");
        let (manifest_digest, _) = store
            .insert_new_blob_from_reader(&mut manifest.as_bytes())
            .unwrap();
        std::fs::write(
            root.path().join("index.json"),
            format!("{{\"manifests\":[{{\"digest\":\"sha256:{manifest_digest}\"}}]}}"),
        )
        .unwrap();
        let report = store.gc(&BTreeSet::from([kept])).unwrap();
        assert_eq!((report.blobs_kept, report.blobs_removed), (3, 1));
        assert!(
            store.contains(&kept) && store.contains(&layer) && store.contains(&manifest_digest)
        );
        assert!(!store.contains(&dropped));
    }

    #[test]
    fn exclusive_lock_waits_for_shared_holders() {
        let root = tempfile::tempdir().unwrap();
        let shared = Store::open(root.path()).unwrap();
        let second_shared = Store::open(root.path()).unwrap();
        let path = root.path().to_path_buf();
        let (sender, receiver) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let exclusive = Store::open_exclusive(&path).unwrap();
            sender.send(()).unwrap();
            drop(exclusive);
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            receiver.try_recv().is_err(),
            "exclusive lock taken while builds hold the store"
        );
        drop(shared);
        drop(second_shared);
        receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn digest_parsing() {
        let digest = Sha256Digest::of_bytes(b"");
        assert_eq!(
            digest.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Sha256Digest::parse(&format!("sha256:{digest}")).unwrap(),
            digest
        );
        assert!(Sha256Digest::parse(
            "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
        )
        .is_err());
        assert!(Sha256Digest::parse("abc").is_err());
    }
}
