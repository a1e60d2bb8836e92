//! The kernel artifact: a directory named by its key, holding fixed file names and a
//! `kernel.json` that describes them. Seam: `kiln-store` will keep the same files as the
//! layers of an OCI image; the names and `kernel.json` are what it will carry over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::key::ToolchainIdentity;
use crate::target::{Arch, Flavor};

pub const IMAGE: &str = "vmlinuz";
pub const SYSTEM_MAP: &str = "System.map";
pub const CONFIG: &str = "config";
pub const MODULES_TAR: &str = "modules.tar";
pub const DTBS_TAR: &str = "dtbs.tar";
pub const METADATA: &str = "kernel.json";
pub const METADATA_FORMAT: u32 = 1;

/// Where the artifact's kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ArtifactOrigin {
    /// Built by kiln from a source tarball and fragments.
    Built {
        flavor: Flavor,
        source_sha256: String,
        fragments: Vec<String>,
        toolchain: ToolchainIdentity,
    },
    /// Taken from a prebuilt Debian `linux-image-*` package.
    DebianPackage { file_name: String, sha256: String },
}

/// One file of the artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    pub sha256: String,
    pub size: u64,
}

/// A finished kernel artifact (what `kernel.json` holds, plus where it lives).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelArtifact {
    #[serde(skip)]
    pub dir: PathBuf,
    pub format: u32,
    pub key: String,
    pub arch: Arch,
    /// `uname -r`, and the directory under `/lib/modules/`.
    pub release: String,
    pub source_date_epoch: u64,
    pub origin: ArtifactOrigin,
    /// The text the key hashes ([`crate::key::key_material`]).
    pub key_material: String,
    pub files: BTreeMap<String, FileRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot read kernel artifact {path}: {source}; delete the directory to rebuild it")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel artifact metadata {path} is not valid: {source}; delete the directory to rebuild it")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write kernel artifact into {path}: {source}; check free space in the cache, then retry")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl KernelArtifact {
    /// Reads `DIR/kernel.json`.
    pub fn load(dir: &Path) -> Result<Self, ArtifactError> {
        let path = dir.join(METADATA);
        let text = std::fs::read_to_string(&path).map_err(|source| ArtifactError::Read {
            path: path.clone(),
            source,
        })?;
        let mut artifact: KernelArtifact =
            serde_json::from_str(&text).map_err(|source| ArtifactError::Parse { path, source })?;
        artifact.dir = dir.to_path_buf();
        Ok(artifact)
    }

    pub fn image_path(&self) -> PathBuf {
        self.dir.join(IMAGE)
    }
    pub fn system_map_path(&self) -> PathBuf {
        self.dir.join(SYSTEM_MAP)
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG)
    }
    pub fn modules_tar_path(&self) -> PathBuf {
        self.dir.join(MODULES_TAR)
    }
    /// `Some` on architectures with device trees.
    pub fn dtbs_tar_path(&self) -> Option<PathBuf> {
        self.files
            .contains_key(DTBS_TAR)
            .then(|| self.dir.join(DTBS_TAR))
    }
}

/// Records every file in `work_dir`, writes `kernel.json`, syncs, and renames `work_dir` to
/// `destination` atomically. If `destination` appeared meanwhile (a concurrent build of the
/// same key), that one is kept: same key, same bytes.
pub fn publish(
    work_dir: &Path,
    destination: &Path,
    mut artifact: KernelArtifact,
) -> Result<KernelArtifact, ArtifactError> {
    let write_error = |source| ArtifactError::Write {
        path: work_dir.to_path_buf(),
        source,
    };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(work_dir).map_err(write_error)? {
        let entry = entry.map_err(write_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == METADATA {
            continue;
        }
        let sha256 = crate::source::sha256_file(&entry.path())
            .map_err(|error| write_error(std::io::Error::other(error.to_string())))?;
        let size = entry.metadata().map_err(write_error)?.len();
        std::fs::File::open(entry.path())
            .and_then(|file| file.sync_all())
            .map_err(write_error)?;
        files.insert(name, FileRecord { sha256, size });
    }
    artifact.files = files;
    let json = serde_json::to_string_pretty(&artifact)
        .map_err(|error| write_error(std::io::Error::other(error)))?;
    std::fs::write(work_dir.join(METADATA), json + "\n").map_err(write_error)?;
    std::fs::File::open(work_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(write_error)?;
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    match std::fs::rename(work_dir, destination) {
        Ok(()) => {}
        Err(_) if destination.join(METADATA).is_file() => {}
        Err(source) => {
            return Err(ArtifactError::Write {
                path: destination.to_path_buf(),
                source,
            })
        }
    }
    KernelArtifact::load(destination)
}
