//! The OCI JSON documents kiln writes: descriptor, image manifest, image configuration,
//! image index, `oci-layout`. Small serde structs rather than the `oci-spec` crate: its
//! types hold annotations and labels in `HashMap`s, whose iteration order (and so the
//! serialised bytes, and so the manifest digest) changes from one process to the next.
//!
//! **Canonical form:** compact JSON (`serde_json::to_vec`, no whitespace, no trailing
//! newline); object keys in the fixed order of the struct fields below, map keys sorted
//! (`BTreeMap`); no floating-point values. The same values give the same bytes on any machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::platform::OciPlatform;

/// `application/vnd.oci.image.manifest.v1+json`.
pub const IMAGE_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// `application/vnd.oci.image.config.v1+json`.
pub const IMAGE_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// `application/vnd.oci.image.index.v1+json`.
pub const IMAGE_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// `application/vnd.oci.image.layer.v1.tar`: kiln's layers are uncompressed (see the crate doc).
pub const UNCOMPRESSED_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation naming an image in an OCI layout's `index.json`.
pub const REFERENCE_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Human-readable title (kiln: the Debian package name).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Version of the packaged software (kiln: the Debian version).
pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";

/// The `platform` object of a descriptor in an image index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciDescriptorPlatform {
    /// `amd64`, `arm64`, ….
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl From<OciPlatform> for OciDescriptorPlatform {
    fn from(platform: OciPlatform) -> Self {
        Self {
            architecture: platform.oci_architecture().to_owned(),
            os: platform.oci_os().to_owned(),
            variant: platform.oci_variant().map(str::to_owned),
        }
    }
}

/// A content descriptor: what a blob is, its digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciDescriptor {
    /// The blob's media type.
    pub media_type: String,
    /// The blob's sha256.
    pub digest: Sha256Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// For manifests listed in an index: the platform they are for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<OciDescriptorPlatform>,
    /// Annotations, sorted by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields kiln does not use (`urls`, `artifactType`, …), kept when another tool's
    /// `index.json` is rewritten.
    #[serde(flatten)]
    pub other_fields: BTreeMap<String, serde_json::Value>,
}

impl OciDescriptor {
    /// A descriptor with no platform, annotations or other fields.
    pub fn new(media_type: &str, digest: Sha256Digest, size: u64) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            other_fields: BTreeMap::new(),
        }
    }

    /// The `org.opencontainers.image.ref.name` annotation, if any.
    pub fn reference_name(&self) -> Option<&str> {
        self.annotations
            .get(REFERENCE_NAME_ANNOTATION)
            .map(String::as_str)
    }
}

/// An image manifest (`application/vnd.oci.image.manifest.v1+json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// [`IMAGE_MANIFEST_MEDIA_TYPE`].
    pub media_type: String,
    /// The configuration blob.
    pub config: OciDescriptor,
    /// The layers, base first.
    pub layers: Vec<OciDescriptor>,
    /// Title and version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `rootfs` of an image configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRootFilesystem {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub filesystem_type: String,
    /// Digests of the uncompressed layers, base first.
    pub diff_ids: Vec<Sha256Digest>,
}

/// One `history` entry of an image configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciHistoryEntry {
    /// The source date epoch, never the clock.
    pub created: String,
    /// What made the layer (no host path, no user name, no version of kiln).
    pub created_by: String,
}

/// An image configuration (`application/vnd.oci.image.config.v1+json`). No execution
/// parameters: kiln images are filesystem layers that the composer merges, not containers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciImageConfiguration {
    /// The source date epoch as RFC 3339.
    pub created: String,
    /// `amd64` or `arm64`.
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `v8` for arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The layers' diff ids.
    pub rootfs: OciRootFilesystem,
    /// One entry per layer.
    pub history: Vec<OciHistoryEntry>,
}

/// An image index (`index.json` of a layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// [`IMAGE_INDEX_MEDIA_TYPE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests, sorted by reference name then digest when kiln writes them.
    pub manifests: Vec<OciDescriptor>,
    /// Index annotations, kept as found.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields kiln does not use, kept.
    #[serde(flatten)]
    pub other_fields: BTreeMap<String, serde_json::Value>,
}

/// The `oci-layout` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciLayoutMarker {
    /// `1.0.0`.
    pub image_layout_version: String,
}

/// The canonical bytes of a kiln JSON document (see the module doc).
pub fn canonical_json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value)
        .expect("kiln's OCI structs have string keys and no floats, so they always serialise")
}
