//! A prebuilt Debian kernel (`linux-image-*.deb`) as a kernel artifact of the same shape
//! as a built one, for sites that prefer their distribution's kernel. The package is an
//! `ar` archive whose `data.tar.*` holds `boot/vmlinuz-REL`, `boot/System.map-REL`,
//! `boot/config-REL` and `lib/modules/REL/`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::artifact::{self, ArtifactOrigin, KernelArtifact};
use crate::cache::KernelCache;
use crate::source::{verify_sha256, SourceError};
use crate::target::Arch;

#[derive(Debug, thiserror::Error)]
pub enum DebianPackageError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Artifact(#[from] artifact::ArtifactError),
    #[error("cannot read Debian package {path}: {source}; is it a .deb?")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no data.tar.xz, data.tar.zst or data.tar: not a Debian binary package")]
    NoData { path: PathBuf },
    #[error("{path} has no boot/vmlinuz-*: is it a linux-image package (not linux-headers or a meta package)?")]
    NoKernel { path: PathBuf },
    #[error("depmod for {release} failed: {detail}; install kmod (Debian: kmod)")]
    Depmod { release: String, detail: String },
    #[error("cannot write into {path}: {source}; check free space in the cache")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The key of an imported package: the package digest, the architecture and the format.
pub fn package_key(package_sha256: &str, arch: Arch, source_date_epoch: u64) -> (String, String) {
    let material = format!(
        "kiln-kernel-artifact format {}\ndebian-package sha256:{package_sha256}\narch {arch}\nsource_date_epoch {source_date_epoch}\n",
        crate::key::FORMAT_VERSION
    );
    (hex::encode(Sha256::digest(material.as_bytes())), material)
}

/// Verifies `package` against `sha256`, extracts kernel, System.map, config and modules, and
/// publishes them as an artifact (cached by key like a build).
pub fn import_debian_package(
    package: &Path,
    sha256: &str,
    arch: Arch,
    source_date_epoch: u64,
    cache: &KernelCache,
) -> Result<KernelArtifact, DebianPackageError> {
    let (key, key_material) = package_key(sha256, arch, source_date_epoch);
    let destination = cache.artifact_dir(&key);
    if destination.join(artifact::METADATA).is_file() {
        return Ok(KernelArtifact::load(&destination)?);
    }
    verify_sha256(package, sha256)?;
    let read_error = |source| DebianPackageError::Read {
        path: package.to_path_buf(),
        source,
    };
    let work = cache
        .work_dir("debian-package")
        .map_err(|source| DebianPackageError::Write {
            path: cache.tmp_dir(),
            source,
        })?;
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DebianPackageError::Write { path, source }
    };

    // Find data.tar.* and stream it into `unpacked/`.
    let unpacked = work.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).map_err(write_error(&unpacked))?;
    let file = std::fs::File::open(package).map_err(read_error)?;
    let mut archive = ar::Archive::new(file);
    let mut found = false;
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(read_error)?;
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_string();
        let reader: Box<dyn std::io::Read> = match name.as_str() {
            "data.tar.xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(entry)),
            "data.tar.zst" => {
                Box::new(zstd::stream::read::Decoder::new(entry).map_err(read_error)?)
            }
            "data.tar" => Box::new(entry),
            _ => continue,
        };
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.unpack(&unpacked).map_err(read_error)?;
        found = true;
        break;
    }
    if !found {
        return Err(DebianPackageError::NoData {
            path: package.to_path_buf(),
        });
    }

    let boot = unpacked.join("boot");
    let release = std::fs::read_dir(&boot)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .min()
        .ok_or_else(|| DebianPackageError::NoKernel {
            path: package.to_path_buf(),
        })?;

    let out = work.path().join("artifact");
    std::fs::create_dir_all(&out).map_err(write_error(&out))?;
    for (from, to) in [
        (format!("vmlinuz-{release}"), artifact::IMAGE),
        (format!("System.map-{release}"), artifact::SYSTEM_MAP),
        (format!("config-{release}"), artifact::CONFIG),
    ] {
        let from = boot.join(from);
        std::fs::copy(&from, out.join(to)).map_err(write_error(&from))?;
    }
    // Modules: /lib/modules, or /usr/lib/modules after the /usr merge; packed as lib/modules.
    let stage = work.path().join("modules");
    let modules_target = stage.join("lib/modules");
    std::fs::create_dir_all(&modules_target).map_err(write_error(&modules_target))?;
    for candidate in ["lib/modules", "usr/lib/modules"] {
        let from = unpacked.join(candidate).join(&release);
        if from.is_dir() {
            std::fs::rename(&from, modules_target.join(&release)).map_err(write_error(&from))?;
            break;
        }
    }
    // Debian generates modules.dep & co. in the package's postinst; a built artifact has them
    // from `make modules_install`. Same shape: run depmod on the staged tree.
    let status = std::process::Command::new("depmod")
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .arg("-b")
        .arg(&stage)
        .arg(&release)
        .status()
        .map_err(|source| DebianPackageError::Depmod {
            release: release.clone(),
            detail: source.to_string(),
        })?;
    if !status.success() {
        return Err(DebianPackageError::Depmod {
            release: release.clone(),
            detail: status.to_string(),
        });
    }
    crate::modules_tar::write_tar_file(&stage, &out.join(artifact::MODULES_TAR), source_date_epoch)
        .map_err(write_error(&stage))?;

    let metadata = KernelArtifact {
        dir: PathBuf::new(),
        format: artifact::METADATA_FORMAT,
        key,
        arch,
        release,
        source_date_epoch,
        origin: ArtifactOrigin::DebianPackage {
            file_name: package
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: sha256.to_string(),
        },
        key_material,
        files: Default::default(),
    };
    Ok(artifact::publish(&out, &destination, metadata)?)
}
