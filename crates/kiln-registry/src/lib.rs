//! kiln-registry: OCI registries, through `oci-client` on tokio.
//!
//! ```text
//! REF (tag or digest) ──resolve_reference──► manifest digest for linux/amd64 or linux/arm64/v8
//! REF@sha256:… ──pull_image──► OciLayout (blobs verified, resumable) + index.json name
//! OciLayout ──push_layout──► REGISTRY/PREFIX/REPOSITORY:TAG, digests read back ──► PushReport
//! ```
//!
//! # What this crate owns
//! - Resolving a reference to the image manifest of one platform ([`resolve_reference`]):
//!   an image index is searched for `linux/amd64` or `linux/arm64/v8` with the variant
//!   rules of the OCI spec and containerd (`arm64` without variant is `v8`); a missing
//!   platform is [`RegistryError::PlatformNotFound`], listing what the index has.
//! - Pulling into an OCI image layout ([`pull_image`]): manifests verified in memory, blobs
//!   streamed to partial files, verified, committed through `kiln_oci::OciLayout`;
//!   resumed with HTTP range requests; at most `max_concurrent_transfers` blobs at once;
//!   retried with exponential backoff on 5xx, connection errors and timeouts, never on
//!   4xx ([`RetryPolicy`]); `offline` reads the layout only.
//! - Pushing a layout's images ([`push_layout`]) and reading their digests back.
//! - Credentials ([`RegistryCredentials`]: Docker config `auths`, explicit), each used for
//!   its own registry only; plain HTTP only for registries listed as insecure; extra CA
//!   files; proxies ([`ProxySettings`]).
//!
//! # What it must not touch
//! It writes only into the layout directory it is given (blobs through `kiln-oci`,
//! partial downloads in `<layout>/.kiln-partial/`). It does not know the store, the lock or
//! the CLI: `kiln-store` hosts the layout, `cargo xtask lock` calls [`resolve_reference`],
//! `cargo xtask pull`/`push` call the rest. It spawns no process and reads no environment
//! variable except through [`ProxySettings::from_environment`] and
//! [`RegistryCredentials::from_default_docker_config`], which callers choose to call.
//!
//! # Known limits
//! - With a bearer-token registry, `oci-client` sends the basic credential to the token
//!   realm the registry names, as Docker does; kiln does not yet check that the realm is on
//!   the registry's host (the registries kiln tests, htpasswd-protected `distribution`,
//!   use basic authentication, and the credential is chosen by exact `host:port`).
//! - Manifests are held in memory (they are small JSON documents); blobs never are.

pub mod connection;
pub mod credentials;
pub mod error;
pub mod manifest;
pub mod observer;
pub mod pull;
pub mod push;

use std::sync::Arc;

use kiln_oci::{OciLayout, OciPlatform};

pub use connection::{ProxySettings, RegistryOptions, RetryPolicy};
pub use credentials::{normalise_registry_name, RegistryCredential, RegistryCredentials};
pub use error::RegistryError;
pub use observer::{BlobOutcome, IgnoreTransfers, TransferObserver};
pub use pull::{
    layout_reference_name, partial_download_directory, ManifestBlob, PulledImage, ResolvedReference,
};
pub use push::{repository_and_tag_for_reference_name, PushItem, PushReport, PushedImage};

fn runtime() -> Result<tokio::runtime::Runtime, RegistryError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RegistryError::Runtime)
}

/// Resolves `reference` (`host:port/repository:tag` or `…@sha256:…`) to the digest of the
/// image manifest for `platform`, asking the registry. If the reference names an image
/// index, the entry for `platform` is chosen; if it names an image manifest, that manifest
/// is the answer whatever its platform. Every manifest read is verified against its digest.
///
/// This is what `cargo xtask lock` calls for a module source `image: REF`, once per
/// platform; the lock records [`ResolvedReference::manifest_digest`] (and may record
/// `index_digest`), and builds pull `pinned_reference`.
///
/// Blocking: runs its own tokio runtime; do not call it from inside one (use
/// [`resolve_reference_async`]).
pub fn resolve_reference(
    reference: &str,
    platform: OciPlatform,
    options: &RegistryOptions,
) -> Result<ResolvedReference, RegistryError> {
    runtime()?.block_on(resolve_reference_async(reference, platform, options))
}

/// [`resolve_reference`] for callers already inside a tokio runtime.
pub async fn resolve_reference_async(
    reference: &str,
    platform: OciPlatform,
    options: &RegistryOptions,
) -> Result<ResolvedReference, RegistryError> {
    pull::resolve_reference_async(reference, platform, options).await
}

/// Pulls the image `reference` names, for `platform`, into `layout`, and names its manifest
/// [`layout_reference_name`] in `index.json`. Blobs already in the layout are not
/// downloaded. With `offline`, only the layout is read: the reference must carry a digest,
/// and anything missing is [`RegistryError::OfflineMissing`] naming its digest.
pub fn pull_image(
    reference: &str,
    platform: OciPlatform,
    layout: &OciLayout,
    options: &RegistryOptions,
    offline: bool,
    observer: Arc<dyn TransferObserver>,
) -> Result<PulledImage, RegistryError> {
    if offline {
        return pull::pull_image_offline(reference, platform, layout);
    }
    runtime()?.block_on(pull::pull_image_async(
        reference, platform, layout, options, observer,
    ))
}

/// Pushes every named image in `layout` (only those for `architecture`, e.g. `arm64`, when
/// given) under `destination` (`host:port/prefix`), see [`push`] for the naming, and
/// returns what was pushed, each digest read back from the registry.
pub fn push_layout(
    layout: &OciLayout,
    destination: &str,
    architecture: Option<&str>,
    options: &RegistryOptions,
    observer: Arc<dyn TransferObserver>,
) -> Result<PushReport, RegistryError> {
    runtime()?.block_on(push::push_layout_async(
        layout,
        destination,
        architecture,
        options,
        observer,
    ))
}

/// Pushes each item's image from `layout` to its own target (`registry/repository:tag`),
/// reading every digest back; `destination` is only recorded in the report.
pub fn push_items(
    layout: &OciLayout,
    destination: &str,
    items: &[PushItem],
    options: &RegistryOptions,
    observer: Arc<dyn TransferObserver>,
) -> Result<PushReport, RegistryError> {
    runtime()?.block_on(push::push_items_async(
        layout,
        destination,
        items,
        options,
        observer,
    ))
}
