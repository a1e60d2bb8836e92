//! Reading manifests and indexes as registries serve them (OCI and Docker schema 2), and
//! choosing an index entry for a platform.
//!
//! Platform matching follows the OCI image-index spec and containerd's `platforms`
//! package: `os` and `architecture` must be equal; variants are compared after
//! normalisation, where `arm64` with no variant means `v8` and `amd64` with no variant
//! means `v1`. An exact variant match wins over a normalised one.

use serde::Deserialize;

use kiln_oci::{OciPlatform, Sha256Digest};

/// OCI image manifest.
pub const OCI_IMAGE_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_IMAGE_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest media types kiln asks registries for.
pub const ACCEPTED_MANIFEST_MEDIA_TYPES: [&str; 4] = [
    OCI_IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    DOCKER_MANIFEST_LIST_MEDIA_TYPE,
];

/// The fields of a descriptor kiln needs.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteDescriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// Digest text (checked to be sha256 before use).
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform, in index entries.
    #[serde(default)]
    pub platform: Option<RemotePlatform>,
}

/// The `platform` of an index entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RemotePlatform {
    /// `amd64`, `arm64`, ….
    pub architecture: String,
    /// `linux`, ….
    pub os: String,
    /// `v8`, ….
    #[serde(default)]
    pub variant: Option<String>,
}

impl RemotePlatform {
    /// `os/architecture[/variant]`.
    pub fn display_name(&self) -> String {
        match self
            .variant
            .as_deref()
            .filter(|variant| !variant.is_empty())
        {
            Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// A manifest or an index, whichever the bytes are.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteManifest {
    /// 2.
    pub schema_version: u32,
    /// Present in OCI (optional) and Docker (required) documents.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Image manifests: the configuration.
    #[serde(default)]
    pub config: Option<RemoteDescriptor>,
    /// Image manifests: the layers.
    #[serde(default)]
    pub layers: Vec<RemoteDescriptor>,
    /// Indexes: the manifests.
    #[serde(default)]
    pub manifests: Option<Vec<RemoteDescriptor>>,
}

impl RemoteManifest {
    /// Parses manifest or index bytes; `Err` says why they are neither.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
        if manifest.schema_version != 2 {
            return Err(format!(
                "schemaVersion {} (only 2 is supported)",
                manifest.schema_version
            ));
        }
        if manifest.is_index() == manifest.config.is_some() {
            return Err("it has neither exactly a config nor a manifests list".to_owned());
        }
        Ok(manifest)
    }

    /// Whether this is an image index / manifest list.
    pub fn is_index(&self) -> bool {
        self.manifests.is_some()
    }

    /// The media type to use for it: the one it declares, else inferred from its shape.
    pub fn effective_media_type(&self) -> &str {
        match (&self.media_type, self.is_index()) {
            (Some(media_type), _) => media_type,
            (None, true) => OCI_IMAGE_INDEX_MEDIA_TYPE,
            (None, false) => OCI_IMAGE_MANIFEST_MEDIA_TYPE,
        }
    }

    /// Config then layers.
    pub fn blobs(&self) -> impl Iterator<Item = &RemoteDescriptor> {
        self.config.iter().chain(self.layers.iter())
    }
}

fn normalised_variant(architecture: &str, variant: Option<&str>) -> String {
    match (architecture, variant.unwrap_or_default()) {
        ("arm64", "") => "v8".to_owned(),
        ("amd64", "") => "v1".to_owned(),
        ("arm", "") => "v7".to_owned(),
        (_, variant) => variant.to_owned(),
    }
}

/// The entry of `entries` (an index's `manifests`) for `platform`, or `Err` with the
/// platforms that are there, sorted and comma-separated.
pub fn select_platform_manifest(
    entries: &[RemoteDescriptor],
    platform: OciPlatform,
) -> Result<&RemoteDescriptor, String> {
    let wanted_variant = normalised_variant(platform.oci_architecture(), platform.oci_variant());
    let candidates: Vec<&RemoteDescriptor> = entries
        .iter()
        .filter(|entry| {
            entry.platform.as_ref().is_some_and(|entry_platform| {
                entry_platform.os == platform.oci_os()
                    && entry_platform.architecture == platform.oci_architecture()
                    && normalised_variant(
                        &entry_platform.architecture,
                        entry_platform.variant.as_deref(),
                    ) == wanted_variant
            })
        })
        .collect();
    let exact = candidates.iter().find(|entry| {
        entry
            .platform
            .as_ref()
            .and_then(|entry_platform| entry_platform.variant.as_deref())
            == platform.oci_variant()
    });
    if let Some(entry) = exact.or(candidates.first()) {
        return Ok(entry);
    }
    let mut available: Vec<String> = entries
        .iter()
        .map(|entry| {
            entry
                .platform
                .as_ref()
                .map_or_else(|| "(no platform)".to_owned(), RemotePlatform::display_name)
        })
        .collect();
    available.sort();
    available.dedup();
    Err(if available.is_empty() {
        "(no manifests)".to_owned()
    } else {
        available.join(", ")
    })
}

/// Parses `sha256:<hex>`; `None` for other algorithms or malformed text.
pub fn parse_sha256(text: &str) -> Option<Sha256Digest> {
    Sha256Digest::parse(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest_byte: char, architecture: &str, variant: Option<&str>) -> RemoteDescriptor {
        RemoteDescriptor {
            media_type: OCI_IMAGE_MANIFEST_MEDIA_TYPE.to_owned(),
            digest: format!("sha256:{}", digest_byte.to_string().repeat(64)),
            size: 1,
            platform: Some(RemotePlatform {
                architecture: architecture.to_owned(),
                os: "linux".to_owned(),
                variant: variant.map(str::to_owned),
            }),
        }
    }

    #[test]
    fn arm64_without_variant_matches_v8_and_exact_variant_wins() {
        let entries = [entry('a', "amd64", None), entry('b', "arm64", None)];
        assert!(select_platform_manifest(&entries, OciPlatform::LinuxArm64)
            .unwrap()
            .digest
            .contains('b'));
        assert!(select_platform_manifest(&entries, OciPlatform::LinuxAmd64)
            .unwrap()
            .digest
            .contains('a'));
        let entries = [
            entry('b', "arm64", None),
            entry('c', "arm64", Some("v8")),
            entry('d', "arm64", Some("v9")),
        ];
        assert!(select_platform_manifest(&entries, OciPlatform::LinuxArm64)
            .unwrap()
            .digest
            .contains('c'));
        let entries = [entry('a', "amd64", Some("v1"))];
        assert!(select_platform_manifest(&entries, OciPlatform::LinuxAmd64).is_ok());
    }

    #[test]
    fn missing_platform_lists_what_the_index_has() {
        let entries = [
            entry('a', "amd64", None),
            entry('e', "s390x", None),
            entry('f', "arm", Some("v7")),
            entry('d', "arm64", Some("v9")),
        ];
        let available = select_platform_manifest(&entries, OciPlatform::LinuxArm64).unwrap_err();
        assert_eq!(
            available,
            "linux/amd64, linux/arm/v7, linux/arm64/v9, linux/s390x"
        );
    }

    #[test]
    fn manifests_and_indexes_are_told_apart() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(RemoteManifest::parse(index).unwrap().is_index());
        assert_eq!(
            RemoteManifest::parse(index).unwrap().effective_media_type(),
            OCI_IMAGE_INDEX_MEDIA_TYPE
        );
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#;
        assert_eq!(
            RemoteManifest::parse(manifest)
                .unwrap()
                .effective_media_type(),
            DOCKER_MANIFEST_MEDIA_TYPE
        );
        assert!(RemoteManifest::parse(br#"{"schemaVersion":1}"#).is_err());
    }
}
