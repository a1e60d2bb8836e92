//! Resolving references and pulling images by digest into an OCI image layout.
//!
//! **Architecture Invariant:** nothing enters the layout unverified. Manifests are hashed in
//! memory and compared with the digest that names them before `OciLayout::put_blob_bytes`;
//! blobs are streamed to a partial file under `<layout>/.kiln-partial/`, hashed as they
//! arrive, and committed through `OciLayout::put_blob_from_reader` only when their size and
//! sha256 match the descriptor. A blob that does not match is deleted and the pull fails:
//! no blob, no reference. Test: `tests/registry_integrity.rs`.
//!
//! **Resuming:** a pull that fails part-way keeps (a) every blob already committed to the
//! layout, which later pulls skip, and (b) the partial file of each unfinished blob. The next
//! attempt, within the same pull (retries) or in a later one, asks the registry for the rest
//! of that blob with an HTTP `Range: bytes=N-` request (`oci-client`'s
//! `pull_blob_stream_partial`); a registry that answers `200` instead of `206` sends the whole
//! blob and the partial file is started over. A resumed blob whose final digest does not
//! match is discarded and fetched again from its first byte once. Test:
//! `tests/registry_resume.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::BlobResponse;
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::Reference;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use kiln_oci::oci_json::OciDescriptorPlatform;
use kiln_oci::{OciDescriptor, OciLayout, OciPlatform, Sha256Digest};

use crate::connection::{AttemptFailure, RegistryOptions, RepositoryConnection};
use crate::error::RegistryError;
use crate::manifest::{
    parse_sha256, select_platform_manifest, RemoteManifest, ACCEPTED_MANIFEST_MEDIA_TYPES,
};
use crate::observer::{BlobOutcome, TransferObserver};

/// What a reference resolves to for one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedReference {
    /// `host:port` as `oci-client` resolves it (`docker.io` → `index.docker.io`).
    pub registry: String,
    /// `kiln/busybox`.
    pub repository: String,
    /// The digest of the image manifest for the platform: what a lock pins and a build pulls.
    pub manifest_digest: Sha256Digest,
    /// The image index the reference named, when it named one.
    pub index_digest: Option<Sha256Digest>,
    /// `registry/repository@manifest_digest`: pull this.
    pub pinned_reference: String,
    /// Size in bytes and media type of the image manifest.
    pub manifest_size: u64,
    /// The manifest's media type.
    pub manifest_media_type: String,
    /// The blobs the manifest names, config first, then the layers in order: what a
    /// fetcher that knows only digests (the Nix flake) needs to rebuild the image.
    pub blobs: Vec<ManifestBlob>,
}

/// One blob an image manifest names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestBlob {
    /// Its digest.
    pub digest: Sha256Digest,
    /// Its size in bytes, as the manifest says.
    pub size: u64,
    /// Its media type, as the manifest says.
    pub media_type: String,
}

/// The blobs `manifest` names, each digest checked to be sha256.
fn manifest_blobs(
    manifest: &RemoteManifest,
    unsupported: impl Fn(&str) -> RegistryError,
) -> Result<Vec<ManifestBlob>, RegistryError> {
    manifest
        .blobs()
        .map(|descriptor| {
            Ok(ManifestBlob {
                digest: parse_sha256(&descriptor.digest)
                    .ok_or_else(|| unsupported(&descriptor.digest))?,
                size: descriptor.size,
                media_type: descriptor.media_type.clone(),
            })
        })
        .collect()
}

/// An image pulled into a layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledImage {
    /// How the resolution went.
    pub resolved: ResolvedReference,
    /// The name given to the manifest in the layout's `index.json`
    /// (`registry/repository@sha256:…`).
    pub layout_reference_name: String,
    /// Config and layers that were downloaded by this pull.
    pub downloaded_blobs: Vec<Sha256Digest>,
    /// Config and layers that were already in the layout.
    pub blobs_already_present: Vec<Sha256Digest>,
    /// Bytes received for blobs (resumed downloads count only what was received).
    pub bytes_downloaded: u64,
}

pub(crate) fn parse_reference(reference: &str) -> Result<Reference, RegistryError> {
    Reference::try_from(reference).map_err(|error| RegistryError::InvalidReference {
        reference: reference.to_owned(),
        reason: error.to_string(),
    })
}

/// The reference name a pulled image gets in the layout: `registry/repository@sha256:…`,
/// which always follows the OCI `ref.name` grammar and says exactly what it is.
pub fn layout_reference_name(
    registry: &str,
    repository: &str,
    manifest_digest: &Sha256Digest,
) -> String {
    format!("{registry}/{repository}@{manifest_digest}")
}

impl RepositoryConnection {
    fn sha256_or_error(&self, digest: &str) -> Result<Sha256Digest, RegistryError> {
        parse_sha256(digest).ok_or_else(|| RegistryError::UnsupportedDigest {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            digest: digest.to_owned(),
        })
    }

    /// Fetches the manifest or index `reference` names (a tag or a digest), verified: its
    /// bytes must hash to `expected` when given. Served from `layout` when it has it.
    async fn fetch_manifest(
        &self,
        reference: &Reference,
        expected: Option<Sha256Digest>,
        layout: Option<&OciLayout>,
    ) -> Result<(Vec<u8>, Sha256Digest, RemoteManifest), RegistryError> {
        if let (Some(digest), Some(layout)) = (expected, layout) {
            if layout.blob_path(&digest).exists() {
                let bytes = layout.read_blob(&digest)?;
                let manifest = self.parse_manifest(&bytes, digest)?;
                return Ok((bytes, digest, manifest));
            }
        }
        let what = match expected {
            Some(digest) => format!("manifest {digest}"),
            None => format!("tag {}", reference.tag().unwrap_or("latest")),
        };
        let bytes = self
            .with_retries(&format!("fetching {what}"), || async {
                match self.client.pull_manifest_raw(reference, &self.authentication, &ACCEPTED_MANIFEST_MEDIA_TYPES).await {
                    Ok((bytes, _)) => Ok(bytes.to_vec()),
                    Err(OciDistributionError::DigestError(DigestError::VerificationError { expected, actual })) => {
                        Err(AttemptFailure::Permanent(RegistryError::Refused {
                            registry: self.registry.clone(),
                            repository: self.repository.clone(),
                            operation: format!("serving {what}"),
                            status: "200".to_owned(),
                            message: format!("the manifest's bytes hash to {actual}, not {expected}: the registry serves tampered content"),
                        }))
                    }
                    Err(error) => Err(self.classify("pull", &what, error)),
                }
            })
            .await?;
        let actual = Sha256Digest::of_bytes(&bytes);
        if let Some(expected) = expected {
            if actual != expected {
                return Err(RegistryError::DigestMismatch {
                    registry: self.registry.clone(),
                    repository: self.repository.clone(),
                    what: "manifest",
                    expected,
                    actual,
                    size: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
                });
            }
        }
        let manifest = self.parse_manifest(&bytes, actual)?;
        Ok((bytes, actual, manifest))
    }

    fn parse_manifest(
        &self,
        bytes: &[u8],
        digest: Sha256Digest,
    ) -> Result<RemoteManifest, RegistryError> {
        RemoteManifest::parse(bytes).map_err(|reason| RegistryError::InvalidManifest {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            digest,
            reason,
        })
    }

    /// Resolves `reference` to the image manifest for `platform`; returns the manifest bytes
    /// and, when the reference named an index, the index bytes too.
    async fn resolve(
        &self,
        reference: &Reference,
        platform: OciPlatform,
        layout: Option<&OciLayout>,
    ) -> Result<ResolvedManifests, RegistryError> {
        let expected = reference
            .digest()
            .map(|digest| self.sha256_or_error(digest))
            .transpose()?;
        let (top_bytes, top_digest, top_manifest) =
            self.fetch_manifest(reference, expected, layout).await?;
        if !top_manifest.is_index() {
            return Ok(ResolvedManifests {
                index: None,
                manifest: (top_bytes, top_digest, top_manifest),
            });
        }
        let entries = top_manifest.manifests.as_deref().unwrap_or_default();
        let entry = select_platform_manifest(entries, platform).map_err(|available| {
            RegistryError::PlatformNotFound {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                digest: top_digest,
                requested: platform.to_string(),
                available,
            }
        })?;
        let child_digest = self.sha256_or_error(&entry.digest)?;
        let child_reference = reference.clone_with_digest(child_digest.to_string());
        let (bytes, digest, manifest) = self
            .fetch_manifest(&child_reference, Some(child_digest), layout)
            .await?;
        if manifest.is_index() {
            return Err(RegistryError::InvalidManifest {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                digest,
                reason: format!(
                    "index {top_digest} lists it for {platform}, but it is an index itself"
                ),
            });
        }
        Ok(ResolvedManifests {
            index: Some((top_bytes, top_digest, top_manifest)),
            manifest: (bytes, digest, manifest),
        })
    }

    fn resolved_reference(
        &self,
        resolved: &ResolvedManifests,
    ) -> Result<ResolvedReference, RegistryError> {
        let (manifest_bytes, manifest_digest, manifest) = &resolved.manifest;
        Ok(ResolvedReference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            manifest_digest: *manifest_digest,
            index_digest: resolved.index.as_ref().map(|index| index.1),
            pinned_reference: format!("{}/{}@{manifest_digest}", self.registry, self.repository),
            manifest_size: manifest_bytes.len() as u64,
            manifest_media_type: manifest.effective_media_type().to_owned(),
            blobs: manifest_blobs(manifest, |digest| RegistryError::UnsupportedDigest {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                digest: digest.to_owned(),
            })?,
        })
    }

    /// One attempt at downloading blob `digest` into its partial file and committing it.
    async fn download_blob_attempt(
        &self,
        reference: &Reference,
        blob: &BlobToFetch,
        layout: &OciLayout,
        partial_path: &Path,
        observer: &dyn TransferObserver,
    ) -> Result<u64, AttemptFailure> {
        let partial_error = |source: std::io::Error| {
            AttemptFailure::Permanent(RegistryError::PartialDownload {
                path: partial_path.to_owned(),
                source,
            })
        };
        let mut resumed_from = tokio::fs::metadata(partial_path)
            .await
            .map(|metadata| metadata.len())
            .unwrap_or(0);
        if resumed_from > blob.size {
            tokio::fs::remove_file(partial_path)
                .await
                .map_err(partial_error)?;
            resumed_from = 0;
        }
        let mut hasher = Sha256::new();
        if resumed_from > 0 {
            let mut existing = tokio::fs::File::open(partial_path)
                .await
                .map_err(partial_error)?;
            let mut buffer = vec![0_u8; 1 << 20];
            loop {
                let read = existing.read(&mut buffer).await.map_err(partial_error)?;
                if read == 0 {
                    break;
                }
                hasher.update(&buffer[..read]);
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(partial_path)
            .await
            .map_err(partial_error)?;
        let mut written = resumed_from;
        let mut received = 0_u64;
        observer.blob_started(&blob.digest, blob.size, resumed_from);
        if written < blob.size {
            let digest_text = blob.digest.to_string();
            let what = format!("blob {}", blob.digest);
            let response = self
                .client
                .pull_blob_stream_partial(reference, digest_text.as_str(), resumed_from, None)
                .await
                .map_err(|error| self.classify("pull", &what, error))?;
            let mut stream = match response {
                BlobResponse::Partial(stream) => stream,
                BlobResponse::Full(stream) => {
                    // The registry ignored the range: start the partial file over.
                    file.set_len(0).await.map_err(partial_error)?;
                    hasher = Sha256::new();
                    written = 0;
                    stream
                }
            };
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(error)
                        if error
                            .get_ref()
                            .is_some_and(|inner| inner.is::<DigestError>()) =>
                    {
                        // oci-client's own check of a full response: the bytes are all here.
                        break;
                    }
                    Err(error) => {
                        file.flush().await.map_err(partial_error)?;
                        return Err(AttemptFailure::Transient(format!(
                            "connection lost after {written} of {} bytes of blob {}: {}",
                            blob.size,
                            blob.digest,
                            crate::connection::error_chain(&error)
                        )));
                    }
                };
                let chunk_length = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
                if written + chunk_length > blob.size {
                    drop(file);
                    let _ = tokio::fs::remove_file(partial_path).await;
                    return Err(AttemptFailure::Permanent(RegistryError::SizeMismatch {
                        registry: self.registry.clone(),
                        repository: self.repository.clone(),
                        digest: blob.digest,
                        expected_size: blob.size,
                    }));
                }
                file.write_all(&chunk).await.map_err(partial_error)?;
                hasher.update(&chunk);
                written += chunk_length;
                received += chunk_length;
                observer.bytes_transferred(&blob.digest, chunk_length);
            }
            file.flush().await.map_err(partial_error)?;
            if written < blob.size {
                return Err(AttemptFailure::Transient(format!(
                    "the response ended after {written} of {} bytes of blob {}",
                    blob.size, blob.digest
                )));
            }
        }
        file.sync_all().await.map_err(partial_error)?;
        drop(file);
        let actual = Sha256Digest::from_array(hasher.finalize().into());
        if actual != blob.digest {
            tokio::fs::remove_file(partial_path)
                .await
                .map_err(partial_error)?;
            if resumed_from > 0 {
                return Err(AttemptFailure::Transient(format!(
                    "blob {} resumed at byte {resumed_from} did not verify; fetching it again from the start",
                    blob.digest
                )));
            }
            return Err(AttemptFailure::Permanent(RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                what: "blob",
                expected: blob.digest,
                actual,
                size: written,
            }));
        }
        let layout = layout.clone();
        let partial = partial_path.to_owned();
        let media_type = blob.media_type.clone();
        let committed =
            tokio::task::spawn_blocking(move || -> Result<OciDescriptor, RegistryError> {
                let file = std::fs::File::open(&partial).map_err(|source| {
                    RegistryError::PartialDownload {
                        path: partial.clone(),
                        source,
                    }
                })?;
                let descriptor =
                    layout.put_blob_from_reader(&media_type, std::io::BufReader::new(file))?;
                std::fs::remove_file(&partial).map_err(|source| {
                    RegistryError::PartialDownload {
                        path: partial.clone(),
                        source,
                    }
                })?;
                Ok(descriptor)
            })
            .await
            .map_err(|error| {
                AttemptFailure::Permanent(RegistryError::Runtime(std::io::Error::other(error)))
            })?
            .map_err(AttemptFailure::Permanent)?;
        if committed.digest != blob.digest {
            // The partial file changed under us between the check and the copy.
            return Err(AttemptFailure::Transient(format!(
                "blob {} changed while it was being committed",
                blob.digest
            )));
        }
        Ok(received)
    }
}

struct ResolvedManifests {
    index: Option<(Vec<u8>, Sha256Digest, RemoteManifest)>,
    manifest: (Vec<u8>, Sha256Digest, RemoteManifest),
}

struct BlobToFetch {
    digest: Sha256Digest,
    size: u64,
    media_type: String,
}

/// The directory where unfinished blob downloads wait to be resumed.
pub fn partial_download_directory(layout: &OciLayout) -> PathBuf {
    layout.directory().join(".kiln-partial")
}

pub(crate) async fn resolve_reference_async(
    reference: &str,
    platform: OciPlatform,
    options: &RegistryOptions,
) -> Result<ResolvedReference, RegistryError> {
    let parsed = parse_reference(reference)?;
    let connection = RepositoryConnection::open(&parsed, options)?;
    connection
        .client
        .store_auth_if_needed(&connection.registry, &connection.authentication)
        .await;
    let resolved = connection.resolve(&parsed, platform, None).await?;
    connection.resolved_reference(&resolved)
}

pub(crate) async fn pull_image_async(
    reference: &str,
    platform: OciPlatform,
    layout: &OciLayout,
    options: &RegistryOptions,
    observer: Arc<dyn TransferObserver>,
) -> Result<PulledImage, RegistryError> {
    let parsed = parse_reference(reference)?;
    let connection = RepositoryConnection::open(&parsed, options)?;
    connection
        .client
        .store_auth_if_needed(&connection.registry, &connection.authentication)
        .await;
    let resolved = connection.resolve(&parsed, platform, Some(layout)).await?;
    let resolved_reference = connection.resolved_reference(&resolved)?;

    let (manifest_bytes, manifest_digest, manifest) = &resolved.manifest;
    let mut blobs_already_present = Vec::new();
    let mut blobs_to_fetch = Vec::new();
    for descriptor in manifest.blobs() {
        let digest = connection.sha256_or_error(&descriptor.digest)?;
        if layout.blob_path(&digest).exists() {
            observer.blob_finished(&digest, BlobOutcome::AlreadyPresent);
            blobs_already_present.push(digest);
        } else if !blobs_to_fetch
            .iter()
            .any(|blob: &BlobToFetch| blob.digest == digest)
        {
            blobs_to_fetch.push(BlobToFetch {
                digest,
                size: descriptor.size,
                media_type: descriptor.media_type.clone(),
            });
        }
    }
    let partial_directory = partial_download_directory(layout);
    tokio::fs::create_dir_all(&partial_directory)
        .await
        .map_err(|source| RegistryError::PartialDownload {
            path: partial_directory.clone(),
            source,
        })?;

    let downloads = futures_util::stream::iter(blobs_to_fetch.iter().map(|blob| {
        let connection = &connection;
        let parsed = &parsed;
        let observer = observer.clone();
        let partial_path = partial_directory.join(blob.digest.hex());
        async move {
            let received = connection
                .with_retries(&format!("downloading blob {}", blob.digest), || {
                    connection.download_blob_attempt(
                        parsed,
                        blob,
                        layout,
                        &partial_path,
                        observer.as_ref(),
                    )
                })
                .await?;
            observer.blob_finished(&blob.digest, BlobOutcome::Downloaded);
            Ok::<_, RegistryError>((blob.digest, received))
        }
    }))
    .buffer_unordered(options.max_concurrent_transfers.max(1));
    let finished: Vec<(Sha256Digest, u64)> = downloads.try_collect().await?;

    // Blobs first, manifests after, the reference last: a reference never points at
    // something missing.
    if let Some((index_bytes, index_digest, index)) = &resolved.index {
        store_manifest_bytes(
            layout,
            index.effective_media_type(),
            index_bytes,
            *index_digest,
        )?;
    }
    let mut manifest_descriptor = store_manifest_bytes(
        layout,
        manifest.effective_media_type(),
        manifest_bytes,
        *manifest_digest,
    )?;
    manifest_descriptor.platform = Some(OciDescriptorPlatform::from(platform));
    let layout_reference_name = layout_reference_name(
        &connection.registry,
        &connection.repository,
        manifest_digest,
    );
    layout.add_manifest_ref(&layout_reference_name, &manifest_descriptor)?;
    let mut downloaded_blobs: Vec<Sha256Digest> =
        finished.iter().map(|(digest, _)| *digest).collect();
    downloaded_blobs.sort();
    Ok(PulledImage {
        resolved: resolved_reference,
        layout_reference_name,
        downloaded_blobs,
        blobs_already_present,
        bytes_downloaded: finished.iter().map(|(_, received)| received).sum(),
    })
}

fn store_manifest_bytes(
    layout: &OciLayout,
    media_type: &str,
    bytes: &[u8],
    digest: Sha256Digest,
) -> Result<OciDescriptor, RegistryError> {
    let descriptor = layout.put_blob_bytes(media_type, bytes)?;
    debug_assert_eq!(
        descriptor.digest, digest,
        "manifest bytes were verified before storing"
    );
    Ok(descriptor)
}

/// Offline pull: the same resolution and checks, reading only the layout.
pub(crate) fn pull_image_offline(
    reference: &str,
    platform: OciPlatform,
    layout: &OciLayout,
) -> Result<PulledImage, RegistryError> {
    let parsed = parse_reference(reference)?;
    let registry = parsed.resolve_registry().to_owned();
    let repository = parsed.repository().to_owned();
    let digest_text = parsed
        .digest()
        .ok_or_else(|| RegistryError::OfflineNeedsDigest {
            reference: reference.to_owned(),
        })?;
    let unsupported = |digest: &str| RegistryError::UnsupportedDigest {
        registry: registry.clone(),
        repository: repository.clone(),
        digest: digest.to_owned(),
    };
    let read_manifest = |digest: Sha256Digest| -> Result<RemoteManifest, RegistryError> {
        if !layout.blob_path(&digest).exists() {
            return Err(RegistryError::OfflineMissing {
                what: "manifest",
                digest,
                layout: layout.directory().to_owned(),
            });
        }
        let bytes = layout.read_blob(&digest)?;
        RemoteManifest::parse(&bytes).map_err(|reason| RegistryError::InvalidManifest {
            registry: registry.clone(),
            repository: repository.clone(),
            digest,
            reason,
        })
    };
    let top_digest = parse_sha256(digest_text).ok_or_else(|| unsupported(digest_text))?;
    let top = read_manifest(top_digest)?;
    let (manifest_digest, manifest, index_digest) = if top.is_index() {
        let entry =
            select_platform_manifest(top.manifests.as_deref().unwrap_or_default(), platform)
                .map_err(|available| RegistryError::PlatformNotFound {
                    registry: registry.clone(),
                    repository: repository.clone(),
                    digest: top_digest,
                    requested: platform.to_string(),
                    available,
                })?;
        let child = parse_sha256(&entry.digest).ok_or_else(|| unsupported(&entry.digest))?;
        (child, read_manifest(child)?, Some(top_digest))
    } else {
        (top_digest, top, None)
    };
    let mut blobs_already_present = Vec::new();
    for descriptor in manifest.blobs() {
        let digest =
            parse_sha256(&descriptor.digest).ok_or_else(|| unsupported(&descriptor.digest))?;
        if !layout.blob_path(&digest).exists() {
            return Err(RegistryError::OfflineMissing {
                what: "blob",
                digest,
                layout: layout.directory().to_owned(),
            });
        }
        blobs_already_present.push(digest);
    }
    let manifest_size = std::fs::metadata(layout.blob_path(&manifest_digest))
        .map(|metadata| metadata.len())
        .unwrap_or(0);
    let mut descriptor = OciDescriptor::new(
        manifest.effective_media_type(),
        manifest_digest,
        manifest_size,
    );
    descriptor.platform = Some(OciDescriptorPlatform::from(platform));
    let layout_reference_name = layout_reference_name(&registry, &repository, &manifest_digest);
    layout.add_manifest_ref(&layout_reference_name, &descriptor)?;
    let blobs = manifest_blobs(&manifest, &unsupported)?;
    Ok(PulledImage {
        resolved: ResolvedReference {
            pinned_reference: format!("{registry}/{repository}@{manifest_digest}"),
            registry,
            repository,
            manifest_digest,
            index_digest,
            manifest_size,
            manifest_media_type: manifest.effective_media_type().to_owned(),
            blobs,
        },
        layout_reference_name,
        downloaded_blobs: Vec::new(),
        blobs_already_present,
        bytes_downloaded: 0,
    })
}
