//! OCI images from registries: `image:` module sources and a profile's `embed_images:`.
//!
//! ```text
//! kiln.lock pin (reference, manifest digest per arch)
//!   ──pull by digest (store layout first, registry if missing)──► store's OCI layout
//!   ──image: layers, in order, decompressed──► ComposedTree::apply_layer (whiteouts honoured)
//!   ──embed_images: manifest, config, layers──► /var/lib/kiln/images (an OCI image layout)
//! ```
//!
//! Builds never resolve tags: they pull `registry/repository@<manifest digest>` as the lock
//! pins it, so a moved tag cannot change an image. With `offline`, only the store is read.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use kiln_archive::{Content, Entry};
use kiln_compose::ComposedTree;
use kiln_lock::{OciImagePin, TargetArch};
use kiln_oci::oci_json::{
    canonical_json_bytes, OciDescriptor, OciImageIndex, OciLayoutMarker, IMAGE_INDEX_MEDIA_TYPE,
};
use kiln_oci::{OciLayout, OciPlatform, Sha256Digest};
use kiln_registry::{IgnoreTransfers, RegistryError, RegistryOptions};
use serde::Deserialize;

use crate::build::ImageError;

/// Where `embed_images:` go in the image: one OCI image layout.
pub const EMBEDDED_IMAGES_DIRECTORY: &str = "var/lib/kiln/images";

/// The module name files of embedded images are attributed to in `manifest.json` and the
/// size report.
pub const EMBEDDED_IMAGES_OWNER: &str = "embed_images";

/// The OCI platform of a target.
pub fn platform(arch: TargetArch) -> OciPlatform {
    match arch {
        TargetArch::X86_64 => OciPlatform::LinuxAmd64,
        TargetArch::Aarch64 => OciPlatform::LinuxArm64,
    }
}

/// What a build needs of an image manifest: its config and layers (OCI or Docker schema 2;
/// both use these field names).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestLayers {
    #[serde(default)]
    media_type: Option<String>,
    config: RawDescriptor,
    layers: Vec<RawDescriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: u64,
}

/// One pinned image, present in the store's layout.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The pin it was pulled for.
    pub pin: OciImagePin,
    /// Its manifest's digest (the pin's), parsed.
    pub manifest_digest: Sha256Digest,
    /// The manifest's media type and size, for an index that names it.
    pub manifest_media_type: String,
    /// Manifest size in bytes.
    pub manifest_size: u64,
    /// Config then layers: media type, digest, size.
    pub config: (String, Sha256Digest, u64),
    /// The layers, base first.
    pub layers: Vec<(String, Sha256Digest, u64)>,
}

impl StoredImage {
    /// Bytes of manifest, config and layers (what embedding it costs, compressed).
    pub fn stored_bytes(&self) -> u64 {
        self.manifest_size + self.config.2 + self.layers.iter().map(|layer| layer.2).sum::<u64>()
    }
}

/// Pulls `reference` for `platform` into `layout`, reading the layout first: the registry
/// is asked only for what is missing there, and never when `offline`. True when something
/// was downloaded.
fn pull_store_first(
    layout: &OciLayout,
    reference: &str,
    platform: OciPlatform,
    options: &RegistryOptions,
    offline: bool,
) -> Result<bool, RegistryError> {
    let pull = |offline: bool| {
        kiln_registry::pull_image(
            reference,
            platform,
            layout,
            options,
            offline,
            Arc::new(IgnoreTransfers),
        )
    };
    match pull(true) {
        Ok(_) => Ok(false),
        Err(RegistryError::OfflineMissing { .. }) if !offline => pull(false).map(|_| true),
        Err(error) => Err(error),
    }
}

/// The image manifest `digest` of `layout` (and its bytes); `what` names it in errors.
fn read_manifest(
    layout: &OciLayout,
    digest: &Sha256Digest,
    what: &str,
) -> Result<(ManifestLayers, Vec<u8>), ImageError> {
    let bytes = layout
        .read_blob(digest)
        .map_err(|error| ImageError::Other(format!("{what}: {error}")))?;
    let manifest = serde_json::from_slice(&bytes).map_err(|error| {
        ImageError::Other(format!(
            "{what}: manifest {digest} is not an image manifest: {error}"
        ))
    })?;
    Ok((manifest, bytes))
}

/// The media type and digest of the one layer of the image manifest `digest` of `layout`
/// (kiln's package and kernel images have exactly one), checking the media type when
/// `expected` gives one.
pub(crate) fn single_layer_of(
    layout: &OciLayout,
    digest: &Sha256Digest,
    what: &str,
    expected: Option<&str>,
) -> Result<(String, Sha256Digest), ImageError> {
    let (manifest, _) = read_manifest(layout, digest, what)?;
    single_layer(&manifest, what, expected)
}

fn single_layer(
    manifest: &ManifestLayers,
    what: &str,
    expected: Option<&str>,
) -> Result<(String, Sha256Digest), ImageError> {
    let [layer] = manifest.layers.as_slice() else {
        return Err(ImageError::Other(format!(
            "{what}: a kiln image has exactly one layer, this one has {}",
            manifest.layers.len()
        )));
    };
    if let Some(expected) = expected.filter(|expected| *expected != layer.media_type) {
        return Err(ImageError::Other(format!(
            "{what}: layer media type `{}`, expected `{expected}`",
            layer.media_type
        )));
    }
    let digest = Sha256Digest::parse(&layer.digest)
        .map_err(|error| ImageError::Other(format!("{what}: {error}")))?;
    Ok((layer.media_type.clone(), digest))
}

fn registry_error(reference: &str, source: RegistryError) -> ImageError {
    ImageError::Registry {
        reference: reference.to_owned(),
        source: Box::new(source),
    }
}

/// Makes sure the image `pin` names is in `layout`, pulling it by digest when it is not
/// (never when `offline`), and reads what the build needs from its manifest.
pub fn ensure_pulled(
    layout: &OciLayout,
    pin: &OciImagePin,
    arch: TargetArch,
    options: &RegistryOptions,
    offline: bool,
) -> Result<(StoredImage, bool), ImageError> {
    let pinned = pin.pinned_reference();
    let platform = platform(arch);
    let downloaded = match pull_store_first(layout, &pinned, platform, options, offline) {
        Ok(downloaded) => downloaded,
        Err(RegistryError::OfflineMissing { what, digest, .. }) => {
            return Err(ImageError::Other(format!(
                "image {} ({}): the {what} {digest} is not in the store and the build is --offline: run `cargo xtask pull {pinned} --platform {platform}` (or the build) with network access first",
                pin.reference, arch
            )))
        }
        Err(error) => return Err(registry_error(&pin.reference, error)),
    };
    let manifest_digest = Sha256Digest::parse(&pin.manifest_digest).map_err(|error| {
        ImageError::Other(format!("kiln.lock: image {}: {error}", pin.reference))
    })?;
    let (manifest, bytes) = read_manifest(
        layout,
        &manifest_digest,
        &format!("image {}", pin.reference),
    )?;
    let descriptor = |raw: &RawDescriptor| -> Result<(String, Sha256Digest, u64), ImageError> {
        let digest = Sha256Digest::parse(&raw.digest).map_err(|error| {
            ImageError::Other(format!(
                "image {} manifest {manifest_digest}: {error}",
                pin.reference
            ))
        })?;
        Ok((raw.media_type.clone(), digest, raw.size))
    };
    let stored = StoredImage {
        pin: pin.clone(),
        manifest_digest,
        manifest_media_type: manifest
            .media_type
            .clone()
            .unwrap_or_else(|| kiln_oci::oci_json::IMAGE_MANIFEST_MEDIA_TYPE.to_owned()),
        manifest_size: bytes.len() as u64,
        config: descriptor(&manifest.config)?,
        layers: manifest
            .layers
            .iter()
            .map(descriptor)
            .collect::<Result<_, _>>()?,
    };
    Ok((stored, downloaded))
}

/// Applies the image's layers, base first, to `tree` as module `module`.
pub fn apply_image(
    tree: &mut ComposedTree,
    module: &str,
    layout: &OciLayout,
    image: &StoredImage,
) -> Result<(), ImageError> {
    for (media_type, digest, _) in &image.layers {
        let path = layout.blob_path(digest);
        let reader = open_layer(&path, media_type, &image.pin.reference)?;
        tree.apply_layer(module, reader)?;
    }
    Ok(())
}

/// A reader of the tar inside the layer blob at `path`, decompressed as `media_type` says.
pub fn open_layer(
    path: &Path,
    media_type: &str,
    reference: &str,
) -> Result<Box<dyn Read>, ImageError> {
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    };
    let file = fs::File::open(path).map_err(io("opening layer"))?;
    Ok(match layer_compression(media_type) {
        Some(LayerCompression::None) => Box::new(BufReader::new(file)),
        Some(LayerCompression::Gzip) => Box::new(flate2::read::GzDecoder::new(BufReader::new(file))),
        Some(LayerCompression::Zstd) => {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(io("decompressing layer"))?)
        }
        None => {
            return Err(ImageError::Other(format!(
                "image {reference}: layer {} has media type `{media_type}`, which is not a filesystem layer kiln can apply (tar, tar+gzip or tar+zstd)",
                path.display()
            )))
        }
    })
}

enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

fn layer_compression(media_type: &str) -> Option<LayerCompression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Some(LayerCompression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(LayerCompression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Some(LayerCompression::Zstd),
        _ => None,
    }
}

/// Adds `images` to `tree` as one OCI image layout at [`EMBEDDED_IMAGES_DIRECTORY`]: every
/// blob once, `index.json` naming each manifest by the reference the profile wrote
/// (`org.opencontainers.image.ref.name`), sorted by it. Returns the bytes added.
pub fn embed_images(
    tree: &mut ComposedTree,
    layout: &OciLayout,
    images: &[StoredImage],
) -> Result<u64, ImageError> {
    let path = |relative: &str| {
        kiln_archive::ArchivePath::new(format!("{EMBEDDED_IMAGES_DIRECTORY}/{relative}"))
            .map_err(|error| ImageError::Other(format!("{relative}: {error}")))
    };
    let mut blobs: BTreeMap<Sha256Digest, u64> = BTreeMap::new();
    let mut manifests: BTreeMap<String, OciDescriptor> = BTreeMap::new();
    for image in images {
        blobs.insert(image.manifest_digest, image.manifest_size);
        blobs.insert(image.config.1, image.config.2);
        for (_, digest, size) in &image.layers {
            blobs.insert(*digest, *size);
        }
        let mut descriptor = OciDescriptor::new(
            &image.manifest_media_type,
            image.manifest_digest,
            image.manifest_size,
        );
        descriptor.annotations.insert(
            "org.opencontainers.image.ref.name".to_owned(),
            image.pin.reference.clone(),
        );
        manifests.insert(image.pin.reference.clone(), descriptor);
    }
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(IMAGE_INDEX_MEDIA_TYPE.to_owned()),
        manifests: manifests.into_values().collect(),
        annotations: BTreeMap::new(),
        other_fields: BTreeMap::new(),
    };
    let marker = OciLayoutMarker {
        image_layout_version: "1.0.0".to_owned(),
    };
    let mut added = 0;
    for (name, bytes) in [
        ("oci-layout", canonical_json_bytes(&marker)),
        ("index.json", canonical_json_bytes(&index)),
    ] {
        added += bytes.len() as u64;
        tree.add(
            EMBEDDED_IMAGES_OWNER,
            Entry::file(path(name)?, 0o644, Content::Bytes(bytes.into())),
        )?;
    }
    for (digest, size) in blobs {
        let blob = layout.blob_path(&digest);
        let actual = fs::metadata(&blob)
            .map_err(|source| ImageError::Io {
                action: "reading",
                path: blob.clone(),
                source,
            })?
            .len();
        if actual != size {
            return Err(ImageError::Other(format!(
                "{}: {actual} bytes, but the manifest says {size}: run `cargo xtask cache verify`",
                blob.display()
            )));
        }
        added += size;
        tree.add(
            EMBEDDED_IMAGES_OWNER,
            Entry::file(
                path(&format!("blobs/sha256/{}", digest.hex()))?,
                0o644,
                Content::File { path: blob, size },
            ),
        )?;
    }
    Ok(added)
}

/// The layer of `pin`'s OCI image pulled from the lock's `mirror` (by digest; the store
/// first), named `reference` in the store's layout as a locally made one would be. Returns
/// the layer digest's hex. The image must be what kiln makes from a `.deb`: one
/// uncompressed tar layer.
pub fn debian_layer_from_mirror(
    layout: &OciLayout,
    pin: &kiln_lock::DebianPackagePin,
    mirror: &str,
    reference: &str,
    arch: TargetArch,
    access: &crate::build::MirrorAccess<'_>,
) -> Result<String, ImageError> {
    let what = format!("package {} {} from mirror {mirror}", pin.name, pin.version);
    let platform = platform(arch);
    pull_store_first(layout, mirror, platform, access.registry, access.offline)
        .map_err(|error| registry_error(&what, error))?;
    let manifest_digest = mirror
        .split_once('@')
        .and_then(|(_, digest)| Sha256Digest::parse(digest).ok())
        .ok_or_else(|| ImageError::Other(format!("{what}: the mirror has no sha256 digest")))?;
    let (manifest, bytes) = read_manifest(layout, &manifest_digest, &what)?;
    let (_, layer_digest) = single_layer(
        &manifest,
        &what,
        Some(kiln_oci::oci_json::UNCOMPRESSED_LAYER_MEDIA_TYPE),
    )?;
    let mut descriptor = OciDescriptor::new(
        manifest
            .media_type
            .as_deref()
            .unwrap_or(kiln_oci::oci_json::IMAGE_MANIFEST_MEDIA_TYPE),
        manifest_digest,
        bytes.len() as u64,
    );
    descriptor.platform = Some(platform.into());
    layout
        .add_manifest_ref(reference, &descriptor)
        .map_err(|error| ImageError::Other(format!("{what}: naming it {reference}: {error}")))?;
    Ok(layer_digest.hex())
}
