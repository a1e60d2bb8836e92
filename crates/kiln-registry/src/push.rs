//! Pushing every image of an OCI image layout to a registry.
//!
//! Each reference name in the layout's `index.json` becomes `DESTINATION/REPOSITORY:TAG`:
//! the name is split at its first `--` (kiln-oci names Debian images
//! `package--version--architecture`), the first part, lower-cased, is the repository under
//! `DESTINATION`, the rest is the tag with every byte outside `[A-Za-z0-9_.-]` replaced by
//! `_` (`busybox-static--1:1.35.0-4+deb12u1+b1--amd64` →
//! `kiln/busybox-static:1_1.35.0-4_deb12u1_b1--amd64`); a name without `--` is pushed as
//! `:latest`. The manifest bytes are pushed unchanged, so the digest the registry reports
//! is the layout's digest; after each push the manifest digest is read back by tag
//! (`HEAD`) and compared. Image indexes push their manifests by digest first.

use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::errors::OciDistributionError;
use oci_client::Reference;
use serde::Serialize;

use kiln_oci::{OciDescriptor, OciLayout, Sha256Digest};

use crate::connection::{AttemptFailure, RegistryOptions, RepositoryConnection};
use crate::error::RegistryError;
use crate::manifest::{parse_sha256, RemoteManifest};
use crate::observer::{BlobOutcome, TransferObserver};

/// One image pushed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PushedImage {
    /// Its reference name in the layout.
    pub layout_reference_name: String,
    /// `registry/repository:tag` it was pushed to.
    pub pushed_reference: String,
    /// `registry/repository@sha256:…`: the digest reference to pin.
    pub pinned_reference: String,
    /// The manifest (or index) digest, as read back from the registry.
    pub manifest_digest: Sha256Digest,
    /// Its media type.
    pub media_type: String,
    /// `linux/amd64`, … when the layout says.
    pub platform: Option<String>,
}

/// What `push_layout` did: the JSON report `cargo xtask push` writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// `host:port/prefix` given.
    pub destination: String,
    /// The images, in the layout's order.
    pub images: Vec<PushedImage>,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs the registry already had.
    pub blobs_already_in_registry: usize,
}

/// `(repository under the destination, tag)` for a layout reference name.
pub fn repository_and_tag_for_reference_name(reference_name: &str) -> (String, String) {
    let (repository_part, tag_part) = match reference_name.split_once("--") {
        Some((repository, tag)) => (repository, tag),
        None => (reference_name, "latest"),
    };
    let repository: String = repository_part
        .to_ascii_lowercase()
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || matches!(character, '/' | '.' | '-' | '_') {
                character
            } else {
                '-'
            }
        })
        .collect();
    let mut tag: String = tag_part
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || matches!(character, '_' | '.' | '-') {
                character
            } else {
                '_'
            }
        })
        .collect();
    if tag.starts_with(['.', '-']) {
        tag.insert(0, '_');
    }
    tag.truncate(128);
    (repository, tag)
}

pub(crate) async fn push_layout_async(
    layout: &OciLayout,
    destination: &str,
    architecture: Option<&str>,
    options: &RegistryOptions,
    observer: Arc<dyn TransferObserver>,
) -> Result<PushReport, RegistryError> {
    let destination = destination.trim_end_matches('/');
    let index = layout.read_index()?;
    let mut items = Vec::new();
    for descriptor in &index.manifests {
        let Some(reference_name) = descriptor.reference_name() else {
            continue;
        };
        if let Some(architecture) = architecture {
            if descriptor
                .platform
                .as_ref()
                .is_none_or(|platform| platform.architecture != architecture)
            {
                continue;
            }
        }
        let (repository, tag) = repository_and_tag_for_reference_name(reference_name);
        items.push(PushItem {
            layout_reference_name: reference_name.to_owned(),
            descriptor: descriptor.clone(),
            target: format!("{destination}/{repository}:{tag}"),
        });
    }
    push_items_async(layout, destination, &items, options, observer).await
}

/// One image of a layout and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushItem {
    /// Its name in the layout (for the report).
    pub layout_reference_name: String,
    /// Its manifest (or index) descriptor in the layout.
    pub descriptor: kiln_oci::OciDescriptor,
    /// `registry/repository:tag` to push it to.
    pub target: String,
}

pub(crate) async fn push_items_async(
    layout: &OciLayout,
    destination: &str,
    items: &[PushItem],
    options: &RegistryOptions,
    observer: Arc<dyn TransferObserver>,
) -> Result<PushReport, RegistryError> {
    let mut report = PushReport {
        destination: destination.to_owned(),
        ..PushReport::default()
    };
    for item in items {
        let descriptor = &item.descriptor;
        let reference_name = item.layout_reference_name.as_str();
        let target_text = item.target.as_str();
        let target = Reference::try_from(target_text).map_err(|error| {
            RegistryError::UnpushableReferenceName {
                reference_name: reference_name.to_owned(),
                layout: layout.directory().to_owned(),
                reason: format!("{target_text}: {error}"),
            }
        })?;
        let tag = target.tag().unwrap_or("latest").to_owned();
        let connection = RepositoryConnection::open(&target, options)?;
        connection
            .client
            .store_auth_if_needed(&connection.registry, &connection.authentication)
            .await;
        let media_type = push_manifest_tree(
            &connection,
            &target,
            layout,
            descriptor,
            true,
            observer.clone(),
            &mut report,
        )
        .await?;
        let read_back = connection
            .with_retries(&format!("reading back {target_text}"), || async {
                connection
                    .client
                    .fetch_manifest_digest(&target, &connection.authentication)
                    .await
                    .map_err(|error| connection.classify("push", &format!("tag {tag}"), error))
            })
            .await?;
        if parse_sha256(&read_back) != Some(descriptor.digest) {
            return Err(RegistryError::PushVerificationFailed {
                registry: connection.registry.clone(),
                repository: connection.repository.clone(),
                tag,
                pushed: descriptor.digest,
                read_back,
            });
        }
        report.images.push(PushedImage {
            layout_reference_name: reference_name.to_owned(),
            pinned_reference: format!(
                "{}/{}@{}",
                connection.registry, connection.repository, descriptor.digest
            ),
            pushed_reference: format!("{}/{}:{tag}", connection.registry, connection.repository),
            manifest_digest: descriptor.digest,
            media_type,
            platform: descriptor
                .platform
                .as_ref()
                .map(|platform| match &platform.variant {
                    Some(variant) => format!("{}/{}/{variant}", platform.os, platform.architecture),
                    None => format!("{}/{}", platform.os, platform.architecture),
                }),
        });
    }
    Ok(report)
}

/// Pushes the blobs of `descriptor`'s manifest (or, for an index, its manifests by digest),
/// then the manifest bytes themselves, by tag when `by_tag`, else by digest.
fn push_manifest_tree<'a>(
    connection: &'a RepositoryConnection,
    target: &'a Reference,
    layout: &'a OciLayout,
    descriptor: &'a OciDescriptor,
    by_tag: bool,
    observer: Arc<dyn TransferObserver>,
    report: &'a mut PushReport,
) -> futures_util::future::BoxFuture<'a, Result<String, RegistryError>> {
    Box::pin(async move {
        let bytes = layout.read_blob(&descriptor.digest)?;
        let manifest =
            RemoteManifest::parse(&bytes).map_err(|reason| RegistryError::InvalidManifest {
                registry: "layout".to_owned(),
                repository: layout.directory().display().to_string(),
                digest: descriptor.digest,
                reason,
            })?;
        if manifest.is_index() {
            for child in manifest.manifests.as_deref().unwrap_or_default() {
                let child_digest = parse_sha256(&child.digest).ok_or_else(|| {
                    RegistryError::UnsupportedDigest {
                        registry: "layout".to_owned(),
                        repository: layout.directory().display().to_string(),
                        digest: child.digest.clone(),
                    }
                })?;
                let child_descriptor =
                    OciDescriptor::new(&child.media_type, child_digest, child.size);
                push_manifest_tree(
                    connection,
                    target,
                    layout,
                    &child_descriptor,
                    false,
                    observer.clone(),
                    report,
                )
                .await?;
            }
        } else {
            for blob in manifest.blobs() {
                let digest =
                    parse_sha256(&blob.digest).ok_or_else(|| RegistryError::UnsupportedDigest {
                        registry: "layout".to_owned(),
                        repository: layout.directory().display().to_string(),
                        digest: blob.digest.clone(),
                    })?;
                let uploaded = upload_blob(
                    connection,
                    target,
                    layout,
                    digest,
                    blob.size,
                    observer.clone(),
                )
                .await?;
                if uploaded {
                    report.blobs_uploaded += 1;
                } else {
                    report.blobs_already_in_registry += 1;
                }
            }
        }
        let media_type = manifest.effective_media_type().to_owned();
        let manifest_target = if by_tag {
            target.clone()
        } else {
            target.clone_with_digest(descriptor.digest.to_string())
        };
        let content_type: reqwest::header::HeaderValue =
            media_type
                .parse()
                .map_err(|_| RegistryError::InvalidManifest {
                    registry: "layout".to_owned(),
                    repository: layout.directory().display().to_string(),
                    digest: descriptor.digest,
                    reason: format!("media type {media_type:?} is not a valid header value"),
                })?;
        let what = format!("manifest {}", descriptor.digest);
        connection
            .with_retries(&format!("pushing {what}"), || {
                let bytes = bytes.clone();
                let content_type = &content_type;
                let manifest_target = &manifest_target;
                let what = &what;
                async move {
                    connection
                        .client
                        .push_manifest_raw(manifest_target, bytes, content_type.clone())
                        .await
                        .map_err(|error| connection.classify("push", what, error))
                }
            })
            .await?;
        Ok(media_type)
    })
}

/// Uploads one blob unless the registry has it; `Ok(true)` when it was uploaded.
async fn upload_blob(
    connection: &RepositoryConnection,
    target: &Reference,
    layout: &OciLayout,
    digest: Sha256Digest,
    size: u64,
    observer: Arc<dyn TransferObserver>,
) -> Result<bool, RegistryError> {
    let digest_text = digest.to_string();
    let what = format!("blob {digest}");
    let exists = connection
        .with_retries(&format!("checking {what}"), || async {
            connection
                .client
                .blob_exists(target, &digest_text)
                .await
                .map_err(|error| connection.classify("push", &what, error))
        })
        .await?;
    if exists {
        observer.blob_finished(&digest, BlobOutcome::AlreadyInRegistry);
        return Ok(false);
    }
    let path = layout.blob_path(&digest);
    connection
        .with_retries(&format!("uploading {what}"), || {
            let path = path.clone();
            let observer = observer.clone();
            let digest_text = digest_text.clone();
            let what = what.clone();
            async move {
                let file = tokio::fs::File::open(&path).await.map_err(|source| {
                    AttemptFailure::Permanent(RegistryError::Layout(
                        kiln_oci::OciLayoutError::ReadBlob {
                            digest,
                            path: path.clone(),
                            source,
                        },
                    ))
                })?;
                observer.blob_started(&digest, size, 0);
                let stream = tokio_file_stream(file).map(move |chunk| {
                    if let Ok(bytes) = &chunk {
                        observer.bytes_transferred(
                            &digest,
                            u64::try_from(bytes.len()).unwrap_or(u64::MAX),
                        );
                    }
                    chunk
                });
                connection
                    .client
                    .push_blob_stream(target, stream, &digest_text, Some(size))
                    .await
                    .map_err(|error| connection.classify("push", &what, error))
            }
        })
        .await?;
    observer.blob_finished(&digest, BlobOutcome::Uploaded);
    Ok(true)
}

/// The file as a stream of 4 MiB chunks.
fn tokio_file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |state| async move {
        use tokio::io::AsyncReadExt;
        let mut file = state?;
        let mut buffer = vec![0_u8; 4 << 20];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(bytes::Bytes::from(buffer)), Some(file)))
            }
            Err(error) => Some((Err(OciDistributionError::IoError(error)), None)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_names_become_repository_and_tag() {
        let check = |name: &str, repository: &str, tag: &str| {
            assert_eq!(
                repository_and_tag_for_reference_name(name),
                (repository.to_owned(), tag.to_owned()),
                "{name}"
            );
        };
        check(
            "busybox-static--1:1.35.0-4+deb12u1+b1--amd64",
            "busybox-static",
            "1_1.35.0-4_deb12u1_b1--amd64",
        );
        check("kernel/virt", "kernel/virt", "latest");
        check("Multi--v1", "multi", "v1");
        check("x--.hidden", "x", "_.hidden");
    }
}
