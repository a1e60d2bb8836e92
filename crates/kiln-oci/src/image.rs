//! Building images: a layer tree → layer blob, configuration, manifest; and the two sources
//! kiln has, a `.deb` and a directory of files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::deb::{read_debian_package, DebianPackageControl, DebianPackageError};
use crate::digest::Sha256Digest;
use crate::layer::{LayerError, LayerTree};
use crate::layout::{OciLayout, OciLayoutError};
use crate::oci_json::{
    canonical_json_bytes, OciDescriptor, OciHistoryEntry, OciImageConfiguration, OciImageManifest,
    OciRootFilesystem, IMAGE_CONFIG_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, TITLE_ANNOTATION,
    UNCOMPRESSED_LAYER_MEDIA_TYPE, VERSION_ANNOTATION,
};
use crate::platform::{OciPlatform, SourceDateEpoch};

/// Errors while building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildImageError {
    /// The `.deb` could not be opened.
    #[error("cannot open debian package {path}: {source}")]
    OpenDebianPackage {
        /// The `.deb`.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The `.deb` could not be read.
    #[error(transparent)]
    DebianPackage(#[from] DebianPackageError),
    /// The layer could not be made.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The layout could not be written.
    #[error(transparent)]
    Layout(#[from] OciLayoutError),
    /// A package for another architecture.
    #[error("{deb_file_name} is {package} for architecture {package_architecture}, but the image is for {platform}: use the {expected_architecture} build of {package} (or build for {package_architecture})")]
    ArchitectureMismatch {
        /// The `.deb`.
        deb_file_name: String,
        /// Its package name.
        package: String,
        /// Its `Architecture:`.
        package_architecture: String,
        /// The requested platform.
        platform: OciPlatform,
        /// The Debian architecture that platform needs.
        expected_architecture: &'static str,
    },
}

/// What to say about an image in its manifest and configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDescription {
    /// `org.opencontainers.image.title`.
    pub title: String,
    /// `org.opencontainers.image.version`.
    pub version: String,
    /// The configuration's `history[0].created_by`; must not name host paths.
    pub created_by: String,
}

/// An image written into a layout (its blobs; no reference is added).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// Descriptor of the manifest, with its platform; give it to
    /// [`OciLayout::add_manifest_ref`].
    pub manifest: OciDescriptor,
    /// The manifest's digest: the image's identity.
    pub manifest_digest: Sha256Digest,
    /// The configuration blob's digest.
    pub config_digest: Sha256Digest,
    /// The layer blob's digest (also its diff id: the layer is uncompressed).
    pub layer_digest: Sha256Digest,
    /// The layer's size in bytes.
    pub layer_size: u64,
}

/// A `.deb` made into an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltDebianPackageImage {
    /// Package, Version, Architecture of the `.deb`.
    pub package: DebianPackageControl,
    /// The image.
    pub image: BuiltImage,
}

/// Writes `layer_tree` as a one-layer image for `platform` into `layout`.
pub fn image_from_layer_tree(
    layout: &OciLayout,
    layer_tree: &LayerTree,
    description: &ImageDescription,
    platform: OciPlatform,
    source_date_epoch: SourceDateEpoch,
) -> Result<BuiltImage, BuildImageError> {
    let pending_layer = layout.begin_blob()?;
    let pending_layer = layer_tree.write_tar(pending_layer, source_date_epoch)?;
    let layer = pending_layer.commit(UNCOMPRESSED_LAYER_MEDIA_TYPE)?;

    let created = source_date_epoch.to_rfc3339();
    let configuration = OciImageConfiguration {
        created: created.clone(),
        architecture: platform.oci_architecture().to_owned(),
        os: platform.oci_os().to_owned(),
        variant: platform.oci_variant().map(str::to_owned),
        rootfs: OciRootFilesystem {
            filesystem_type: "layers".to_owned(),
            diff_ids: vec![layer.digest],
        },
        history: vec![OciHistoryEntry {
            created,
            created_by: description.created_by.clone(),
        }],
    };
    let config = layout.put_blob_bytes(
        IMAGE_CONFIG_MEDIA_TYPE,
        &canonical_json_bytes(&configuration),
    )?;

    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: IMAGE_MANIFEST_MEDIA_TYPE.to_owned(),
        config: config.clone(),
        layers: vec![layer.clone()],
        annotations: BTreeMap::from([
            (TITLE_ANNOTATION.to_owned(), description.title.clone()),
            (VERSION_ANNOTATION.to_owned(), description.version.clone()),
        ]),
    };
    let mut manifest_descriptor =
        layout.put_blob_bytes(IMAGE_MANIFEST_MEDIA_TYPE, &canonical_json_bytes(&manifest))?;
    manifest_descriptor.platform = Some(platform.into());
    Ok(BuiltImage {
        manifest_digest: manifest_descriptor.digest,
        manifest: manifest_descriptor,
        config_digest: config.digest,
        layer_digest: layer.digest,
        layer_size: layer.size,
    })
}

/// Reads the `.deb` that `reader` yields and writes its image. `deb_file_name` is for
/// messages only; it never reaches the image. Title and version annotations are the
/// package's name and version. A package for another architecture is refused; `all`
/// packages fit any platform.
pub fn image_from_deb_reader(
    layout: &OciLayout,
    deb_file_name: &str,
    reader: impl Read,
    platform: OciPlatform,
    source_date_epoch: SourceDateEpoch,
) -> Result<BuiltDebianPackageImage, BuildImageError> {
    let package = read_debian_package(deb_file_name, reader)?;
    let control = package.control;
    if control.architecture != "all" && control.architecture != platform.debian_architecture() {
        return Err(BuildImageError::ArchitectureMismatch {
            deb_file_name: deb_file_name.to_owned(),
            package: control.package,
            package_architecture: control.architecture,
            platform,
            expected_architecture: platform.debian_architecture(),
        });
    }
    let description = ImageDescription {
        title: control.package.clone(),
        version: control.version.clone(),
        created_by: format!(
            "kiln-oci: debian package {} {} {}",
            control.package, control.version, control.architecture
        ),
    };
    let image = image_from_layer_tree(
        layout,
        &package.layer_tree,
        &description,
        platform,
        source_date_epoch,
    )?;
    Ok(BuiltDebianPackageImage {
        package: control,
        image,
    })
}

/// [`image_from_deb_reader`] on a file.
pub fn image_from_deb_file(
    layout: &OciLayout,
    deb_path: &Path,
    platform: OciPlatform,
    source_date_epoch: SourceDateEpoch,
) -> Result<BuiltDebianPackageImage, BuildImageError> {
    let file = File::open(deb_path).map_err(|source| BuildImageError::OpenDebianPackage {
        path: deb_path.to_owned(),
        source,
    })?;
    let deb_file_name = deb_path.display().to_string();
    image_from_deb_reader(
        layout,
        &deb_file_name,
        BufReader::new(file),
        platform,
        source_date_epoch,
    )
}

/// [`image_from_deb_reader`] on bytes in memory.
pub fn image_from_deb_bytes(
    layout: &OciLayout,
    deb_file_name: &str,
    deb_bytes: &[u8],
    platform: OciPlatform,
    source_date_epoch: SourceDateEpoch,
) -> Result<BuiltDebianPackageImage, BuildImageError> {
    image_from_deb_reader(
        layout,
        deb_file_name,
        deb_bytes,
        platform,
        source_date_epoch,
    )
}

/// Writes the image of a directory of files (see [`LayerTree::from_directory`] for what is
/// kept and what is normalised).
pub fn image_from_directory(
    layout: &OciLayout,
    directory: &Path,
    description: &ImageDescription,
    platform: OciPlatform,
    source_date_epoch: SourceDateEpoch,
) -> Result<BuiltImage, BuildImageError> {
    let layer_tree = LayerTree::from_directory(directory)?;
    image_from_layer_tree(
        layout,
        &layer_tree,
        description,
        platform,
        source_date_epoch,
    )
}
