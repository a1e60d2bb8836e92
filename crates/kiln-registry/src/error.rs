//! The one error type of the crate. Every message is lowercase, names the registry
//! (`host:port`), the repository and the digest it is about, and says what to do next.

use std::io;
use std::path::PathBuf;

use kiln_oci::{OciLayoutError, Sha256Digest};

/// What can go wrong talking to a registry or to the layout a pull fills.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The text is not an image reference.
    #[error("{reference:?} is not a valid image reference ({reason}): write REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:DIGEST")]
    InvalidReference {
        /// What was given.
        reference: String,
        /// Why it was refused.
        reason: String,
    },
    /// The Docker config file exists but cannot be read or parsed.
    #[error("cannot read docker config {path}: {reason}; fix the file, or point DOCKER_CONFIG at another directory")]
    DockerConfig {
        /// The `config.json` read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An extra CA certificate file cannot be read or holds no PEM certificate.
    #[error("cannot use CA certificate file {path}: {reason}; give a PEM file with one or more certificates")]
    CaCertificate {
        /// The file given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built (TLS roots, proxy URL).
    #[error("cannot set up the HTTP client for {registry}: {reason}; check the CA files and the proxy settings (HTTPS_PROXY, HTTP_PROXY, NO_PROXY)")]
    ClientSetup {
        /// The registry.
        registry: String,
        /// The cause.
        reason: String,
    },
    /// The registry answered 401: missing or wrong credentials. Never retried.
    #[error("authentication to {registry} failed for repository {repository} ({status}): check the credentials for {registry} in {credential_source}")]
    AuthenticationFailed {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The HTTP status (401).
        status: u16,
        /// Where the credentials came from (`~/.docker/config.json`, `no credentials were found …`).
        credential_source: String,
    },
    /// The registry answered 403 or DENIED: the credentials are valid but not allowed. Never retried.
    #[error("registry {registry} denied {operation} of repository {repository} ({status}): the account in {credential_source} lacks the permission; ask the registry's operator")]
    AccessDenied {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// What was attempted (`pull`, `push`).
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// Where the credentials came from.
        credential_source: String,
    },
    /// A manifest, tag or blob does not exist. Never retried.
    #[error("{what} not found in repository {repository} on {registry} (404): check the reference, or push the image first")]
    NotFound {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// `manifest sha256:…`, `tag 1.0`, `blob sha256:…`.
        what: String,
    },
    /// Any other client error (4xx). Never retried.
    #[error(
        "registry {registry} refused {operation} for repository {repository} ({status}): {message}"
    )]
    Refused {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// What was attempted.
        operation: String,
        /// The HTTP status, when there was one.
        status: String,
        /// The registry's message.
        message: String,
    },
    /// TLS could not be established (unknown CA, wrong host name, plain HTTP server). Never retried.
    #[error("tls to {registry} failed for repository {repository}: {reason}; add the registry's CA with --ca-file, or mark it --insecure if it only speaks plain HTTP")]
    Tls {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The TLS error.
        reason: String,
    },
    /// 5xx, connection errors and timeouts persisted through every retry.
    #[error("registry {registry} is unavailable while {operation} for repository {repository}: gave up after {attempts} attempts in {elapsed_seconds:.1} s; last error: {last_error}. Check that the registry runs and the proxy settings; run again to resume: verified blobs are kept")]
    Unavailable {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// What was being done (`downloading blob sha256:…`).
        operation: String,
        /// How many attempts were made.
        attempts: u32,
        /// Time from the first attempt to giving up.
        elapsed_seconds: f64,
        /// The last transient error.
        last_error: String,
    },
    /// Content whose bytes do not hash to the digest that names it. Nothing is stored.
    #[error("{what} {expected} from {registry}/{repository} does not match its digest: its {size} bytes hash to {actual}; nothing was stored. The registry serves corrupt or tampered content: tell its operator, do not use this image")]
    DigestMismatch {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// `blob`, `manifest`, `image index`.
        what: &'static str,
        /// The digest asked for.
        expected: Sha256Digest,
        /// What the bytes hash to.
        actual: Sha256Digest,
        /// How many bytes were received.
        size: u64,
    },
    /// A blob longer than its descriptor says. Nothing is stored.
    #[error("blob {digest} from {registry}/{repository} is longer than the {expected_size} bytes its descriptor says; nothing was stored. The registry serves corrupt or tampered content")]
    SizeMismatch {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The blob.
        digest: Sha256Digest,
        /// The size in the descriptor.
        expected_size: u64,
    },
    /// A digest that is not sha256 (kiln only stores sha256).
    #[error("{registry}/{repository} refers to {digest:?}, which is not a sha256 digest: kiln stores only sha256 content")]
    UnsupportedDigest {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The digest text.
        digest: String,
    },
    /// A manifest or index that cannot be parsed.
    #[error("manifest {digest} from {registry}/{repository} is not a valid OCI or Docker schema 2 manifest or index ({reason}); kiln cannot pull it")]
    InvalidManifest {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// Its digest.
        digest: Sha256Digest,
        /// Why.
        reason: String,
    },
    /// An image index without the platform asked for.
    #[error("image index {digest} of {registry}/{repository} has no manifest for {requested}; it has: {available}. Pick one of those platforms, or push an image for {requested}")]
    PlatformNotFound {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The index.
        digest: Sha256Digest,
        /// `linux/arm64/v8`.
        requested: String,
        /// The platforms the index lists, comma-separated.
        available: String,
    },
    /// Offline mode and the layout lacks something.
    #[error("offline: {what} {digest} is not in the OCI layout {layout}; pull once online (without --offline) or copy the image into the layout")]
    OfflineMissing {
        /// `manifest`, `blob`.
        what: &'static str,
        /// The missing digest.
        digest: Sha256Digest,
        /// The layout directory.
        layout: PathBuf,
    },
    /// Offline mode with a reference that names no digest.
    #[error("offline: {reference} names a tag, and tags need the registry; use REFERENCE@sha256:DIGEST (kiln.lock has it)")]
    OfflineNeedsDigest {
        /// The reference given.
        reference: String,
    },
    /// The registry returned a different digest for what was just pushed.
    #[error("push verification failed: {registry}/{repository}:{tag} reads back as {read_back}, not the pushed {pushed}; another push may have raced this one: push again")]
    PushVerificationFailed {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// The tag pushed.
        tag: String,
        /// The digest pushed.
        pushed: Sha256Digest,
        /// The digest the registry reports.
        read_back: String,
    },
    /// A layout reference name that cannot be turned into a repository and tag.
    #[error("layout reference {reference_name:?} cannot be pushed as a repository and tag ({reason}); rename it in {layout}/index.json")]
    UnpushableReferenceName {
        /// The name.
        reference_name: String,
        /// The layout.
        layout: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing the layout.
    #[error(transparent)]
    Layout(#[from] OciLayoutError),
    /// A partial download file could not be written or read.
    #[error("cannot use partial download {path}: {source}; check free space and permissions")]
    PartialDownload {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The tokio runtime could not start.
    #[error("cannot start the async runtime for registry transfers: {0}")]
    Runtime(io::Error),
}
