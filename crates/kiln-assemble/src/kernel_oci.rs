//! Kernel artifacts as OCI images, so they travel through registries as Hook's kernels do.
//!
//! ```text
//! kernel cache: artifacts/<key>/{vmlinuz, System.map, config, modules.tar, dtbs.tar, kernel.json}
//!   ──store_kernel_image──► store layout, named `kiln-kernel--<key>` (pushed as kiln-kernel:<key>)
//! REGISTRY/PREFIX/kiln-kernel:<key> ──fetch_kernel_from_registry──► artifacts/<key>/ (verified)
//! ```
//!
//! The tag is the artifact key: the digest of the kernel's inputs (source, fragments,
//! toolchain identity, epoch), so a build that computes the same key can take the kernel
//! from a registry instead of compiling it. The image is one uncompressed layer holding the
//! artifact directory's files at its root, made deterministically by `kiln-oci` (the same
//! artifact gives the same manifest digest on every machine).

use std::fs;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use kiln_kernel::{Arch, KernelArtifact, KernelCache};
use kiln_oci::{ImageDescription, OciLayout, OciPlatform, SourceDateEpoch};
use kiln_registry::{IgnoreTransfers, RegistryError, RegistryOptions};

use crate::build::ImageError;
use crate::images;

/// The repository kernels are pushed to under a registry prefix.
pub const KERNEL_REPOSITORY: &str = "kiln-kernel";

/// The layout name of the kernel image with artifact key `key` (`cargo xtask push` turns
/// `NAME--TAG` into `PREFIX/NAME:TAG`).
pub fn kernel_image_name(key: &str) -> String {
    format!("{KERNEL_REPOSITORY}--{key}")
}

fn platform(arch: Arch) -> OciPlatform {
    match arch {
        Arch::X86_64 => OciPlatform::LinuxAmd64,
        Arch::Aarch64 => OciPlatform::LinuxArm64,
    }
}

fn other(message: String) -> ImageError {
    ImageError::Kernel(message)
}

/// Puts `artifact` into `layout` as an image named [`kernel_image_name`] (a no-op when the
/// name already points at the same manifest). Returns the manifest digest.
pub fn store_kernel_image(
    layout: &OciLayout,
    artifact: &KernelArtifact,
) -> Result<kiln_oci::Sha256Digest, ImageError> {
    let name = kernel_image_name(&artifact.key);
    if let Ok(Some(existing)) = layout.find_manifest_ref(&name) {
        if layout.blob_path(&existing.digest).is_file() {
            return Ok(existing.digest);
        }
    }
    let description = ImageDescription {
        title: KERNEL_REPOSITORY.to_owned(),
        version: format!("{} {}", artifact.release, artifact.key),
        created_by: format!("kiln {} kernel artifact", env!("CARGO_PKG_VERSION")),
    };
    let epoch = SourceDateEpoch::from_seconds(artifact.source_date_epoch);
    let built = kiln_oci::image_from_directory(
        layout,
        &artifact.dir,
        &description,
        platform(artifact.arch),
        epoch,
    )
    .map_err(|error| other(format!("kernel {} as an OCI image: {error}", artifact.key)))?;
    layout
        .add_manifest_ref(&name, &built.manifest)
        .map_err(|error| other(format!("naming kernel image {name}: {error}")))?;
    Ok(built.manifest_digest)
}

/// Pulls `REGISTRY/PREFIX/kiln-kernel:<key>` for `arch` into `layout`, unpacks it into the
/// kernel cache (verifying `kernel.json`'s key and every file's sha256 and size against it)
/// and returns the artifact. A kernel already in the cache is returned without asking the
/// registry.
pub fn fetch_kernel_from_registry(
    registry_prefix: &str,
    key: &str,
    arch: Arch,
    layout: &OciLayout,
    cache: &KernelCache,
    options: &RegistryOptions,
) -> Result<KernelArtifact, ImageError> {
    let destination = cache.artifact_dir(key);
    if destination.join(kiln_kernel::artifact::METADATA).is_file() {
        return KernelArtifact::load(&destination).map_err(|error| other(error.to_string()));
    }
    let reference = format!(
        "{}/{KERNEL_REPOSITORY}:{key}",
        registry_prefix.trim_end_matches('/')
    );
    // By tag: the key is the tag, and what comes back is verified against kernel.json.
    let pulled = kiln_registry::pull_image(
        &reference,
        platform(arch),
        layout,
        options,
        false,
        Arc::new(IgnoreTransfers),
    )
    .map_err(|error| match error {
        RegistryError::NotFound { .. } => other(format!(
            "{reference}: the registry has no kernel with key {key} (the digest of this build's kernel inputs); build it (`cargo xtask kernel`) and `cargo xtask push` it, or build without --kernel-registry"
        )),
        error => ImageError::Registry {
            reference: reference.clone(),
            source: Box::new(error),
        },
    })?;
    let manifest_digest = pulled.resolved.manifest_digest;
    let (media_type, layer_digest) =
        images::single_layer_of(layout, &manifest_digest, &reference, None)?;

    fs::create_dir_all(cache.root()).map_err(|source| ImageError::Io {
        action: "creating",
        path: cache.root().to_owned(),
        source,
    })?;
    let work = cache.work_dir("pull").map_err(|source| ImageError::Io {
        action: "creating a work directory in",
        path: cache.tmp_dir(),
        source,
    })?;
    let reader = images::open_layer(&layout.blob_path(&layer_digest), &media_type, &reference)?;
    unpack_artifact(reader, work.path(), &reference)?;
    let artifact = KernelArtifact::load(work.path()).map_err(|error| other(error.to_string()))?;
    verify_artifact(&artifact, key, arch, &reference)?;
    if !destination.exists() {
        if let Some(parent) = destination.parent() {
            fs::create_dir_all(parent).map_err(|source| ImageError::Io {
                action: "creating",
                path: parent.to_owned(),
                source,
            })?;
        }
        let staged = cache
            .tmp_dir()
            .join(format!("ready-{key}-{}", std::process::id()));
        fs::rename(work.path(), &staged).map_err(|source| ImageError::Io {
            action: "moving",
            path: staged.clone(),
            source,
        })?;
        if let Err(source) = fs::rename(&staged, &destination) {
            let _ = fs::remove_dir_all(&staged);
            if !destination.join(kiln_kernel::artifact::METADATA).is_file() {
                return Err(ImageError::Io {
                    action: "publishing",
                    path: destination,
                    source,
                });
            }
        }
    }
    KernelArtifact::load(&destination).map_err(|error| other(error.to_string()))
}

/// Writes the layer's regular files (plain names only: no directories, links or paths)
/// into `directory`.
fn unpack_artifact(
    reader: Box<dyn Read>,
    directory: &Path,
    reference: &str,
) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    let read_error =
        |error: std::io::Error| other(format!("{reference}: reading the layer: {error}"));
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let path = entry.path().map_err(read_error)?.into_owned();
        let name = path.to_string_lossy().trim_start_matches("./").to_owned();
        match entry.header().entry_type() {
            tar::EntryType::Directory if name.is_empty() || name == "." => continue,
            tar::EntryType::Regular
                if !name.is_empty() && !name.contains('/') && name != ".." && name != "." => {}
            other_type => {
                return Err(other(format!(
                    "{reference}: unexpected layer entry `{name}` ({other_type:?}); a kernel image holds only the artifact's files"
                )))
            }
        }
        let target = directory.join(&name);
        let mut file = fs::File::create(&target).map_err(|source| ImageError::Io {
            action: "creating",
            path: target.clone(),
            source,
        })?;
        std::io::copy(&mut entry, &mut file).map_err(|source| ImageError::Io {
            action: "writing",
            path: target.clone(),
            source,
        })?;
        file.sync_all().map_err(|source| ImageError::Io {
            action: "syncing",
            path: target,
            source,
        })?;
    }
    Ok(())
}

/// The artifact is the one asked for, and every file is what `kernel.json` records.
fn verify_artifact(
    artifact: &KernelArtifact,
    key: &str,
    arch: Arch,
    reference: &str,
) -> Result<(), ImageError> {
    if artifact.key != key || artifact.arch != arch {
        return Err(other(format!(
            "{reference}: holds kernel {} for {}, not {key} for {arch}; the registry's tag points at the wrong image",
            artifact.key, artifact.arch
        )));
    }
    for entry in fs::read_dir(&artifact.dir).map_err(|source| ImageError::Io {
        action: "reading",
        path: artifact.dir.clone(),
        source,
    })? {
        let entry = entry.map_err(|source| ImageError::Io {
            action: "reading",
            path: artifact.dir.clone(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != kiln_kernel::artifact::METADATA && !artifact.files.contains_key(&name) {
            return Err(other(format!(
                "{reference}: file `{name}` is not listed in kernel.json"
            )));
        }
    }
    for (name, record) in &artifact.files {
        let path = artifact.dir.join(name);
        let sha256 = kiln_kernel::source::sha256_file(&path)
            .map_err(|error| other(format!("{reference}: {name}: {error}")))?;
        let size = fs::metadata(&path)
            .map(|metadata| metadata.len())
            .unwrap_or(0);
        if sha256 != record.sha256 || size != record.size {
            return Err(other(format!(
                "{reference}: {name} is sha256:{sha256} ({size} bytes), but kernel.json says sha256:{} ({} bytes)",
                record.sha256, record.size
            )));
        }
    }
    Ok(())
}
