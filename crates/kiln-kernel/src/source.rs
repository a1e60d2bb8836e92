//! The kernel source: a tarball verified against its expected sha256, extracted once per
//! digest into the cache (`sources/SHA256/`), shared read-only by every build (they build
//! out of tree with `O=`).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cache::KernelCache;

/// Where the kernel source comes from. Seam: the lock will provide both fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSource {
    pub tarball: PathBuf,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has sha256 {actual}, expected {expected}: the file changed or the pin is stale; re-download it or update the pin in kiln.lock")]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("cannot extract {path} into {destination}: {source}; check free space in the cache, then retry")]
    Extract {
        path: PathBuf,
        destination: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not hold a single top-level directory with a Makefile; is it a kernel source tarball?")]
    NotKernelSource { path: PathBuf },
}

/// Streams `path` through sha256; hex.
pub fn sha256_file(path: &Path) -> Result<String, SourceError> {
    let read_error = |source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let count = file.read(&mut buffer).map_err(read_error)?;
        if count == 0 {
            break;
        }
        hasher.update(&buffer[..count]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Fails unless `path` hashes to `expected`.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), SourceError> {
    let actual = sha256_file(path)?;
    if actual != expected.to_ascii_lowercase() {
        return Err(SourceError::DigestMismatch {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A tar stream, decompressed according to the file name (`.xz`, `.zst`, or plain).
pub fn open_tar_stream(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(if name.ends_with(".xz") || name.ends_with(".txz") {
        Box::new(xz2::read::XzDecoder::new_multi_decoder(file))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(file)?)
    } else {
        Box::new(file)
    })
}

/// The source tree of `source`, extracting it first if this digest was never extracted.
/// Returns the top-level directory (the one holding the kernel's `Makefile`).
/// `on_extract` is called before a (slow, ~20 s) extraction starts.
pub fn extracted_source(
    source: &KernelSource,
    cache: &KernelCache,
    on_extract: &mut dyn FnMut(),
) -> Result<PathBuf, SourceError> {
    let destination = cache.source_dir(&source.sha256);
    if let Some(tree) = top_level_dir(&destination) {
        return Ok(tree);
    }
    verify_sha256(&source.tarball, &source.sha256)?;
    on_extract();
    let extract_error = |source_error| SourceError::Extract {
        path: source.tarball.clone(),
        destination: destination.clone(),
        source: source_error,
    };
    let work = cache.work_dir("source").map_err(extract_error)?;
    let stream = open_tar_stream(&source.tarball).map_err(extract_error)?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.unpack(work.path()).map_err(extract_error)?;
    if top_level_dir(work.path()).is_none() {
        return Err(SourceError::NotKernelSource {
            path: source.tarball.clone(),
        });
    }
    std::fs::create_dir_all(destination.parent().unwrap_or(Path::new(".")))
        .map_err(extract_error)?;
    match std::fs::rename(work.path(), &destination) {
        Ok(()) => {}
        // Another build extracted the same digest first: use theirs.
        Err(_) if top_level_dir(&destination).is_some() => {}
        Err(error) => return Err(extract_error(error)),
    }
    top_level_dir(&destination).ok_or(SourceError::NotKernelSource {
        path: source.tarball.clone(),
    })
}

fn top_level_dir(dir: &Path) -> Option<PathBuf> {
    let entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    match entries.as_slice() {
        [single] if single.path().join("Makefile").is_file() => Some(single.path()),
        _ => None,
    }
}
