//! kiln-oci: Debian package or directory of files → deterministic OCI image.
//!
//! ```text
//! foo.deb ──ar──► control.tar.* ──► Package, Version, Architecture
//!            └──► data.tar.{xz,zst,gz,} ──► LayerTree ──normalised_tar_header──► layer.tar
//! dir/ ──────────────────────────────────► LayerTree ──┘
//! layer.tar + config.json + manifest.json ──► OciLayout (blobs/sha256, index.json)
//! ```
//!
//! # What this crate owns
//! - Reading `.deb` files (the `ar` container, `debian-binary`, `control.tar*`, `data.tar*`
//!   with xz, zstd, gzip or no compression) — [`read_debian_package`].
//! - The deterministic tar layer ([`LayerTree`], [`LayerTree::write_tar`]), for packages and
//!   for directories of files ([`LayerTree::from_directory`]).
//! - The OCI configuration, manifest and image layout writer ([`OciLayout`], [`image_from_deb_file`]).
//!
//! # What it must not touch
//! No network, no process spawning, no clock, no environment variables: it takes bytes or
//! paths and a [`SourceDateEpoch`] and writes into the layout directory it is given. It does
//! not know the kiln store (`kiln-store` hosts a layout and calls this crate), the lock, or
//! apt. The tests spawn real tools (`dpkg-deb`, `apt-get download`, GNU `tar`, `skopeo`);
//! the library never does.
//!
//! # Determinism, and the choices behind it
//! The same package bytes, platform and epoch give the same layer, configuration and
//! manifest bytes on any machine, whatever the umask, TZ, locale, user, temp directory or
//! `.deb` file name (test: `deb_image_is_identical_under_different_umask_tz_locale_and_directory`).
//! - **Tar format: GNU**, the format `dpkg-deb` itself writes for data.tar, so every path
//!   and link target a package can hold fits: longer than 100 bytes they go into GNU
//!   `././@LongLink` entries, which have fixed fields. ustar would need pax headers for such
//!   paths (or fail past 255 bytes), and pax headers are where writers put times and
//!   other varying keys. GNU tar, libarchive and Go's `archive/tar` (containerd, skopeo,
//!   docker) all read GNU headers.
//! - **Paths** `./`-less and relative (`usr/bin/busybox`), as Docker and BuildKit write
//!   layers; directories carry a trailing `/` and are always explicit (missing parents get
//!   `0755 0:0`). The root `./` of data.tar is not an entry: the root's owner and mode belong
//!   to whoever composes the layers. Sorted bytewise, so parents precede children.
//! - **Every entry** goes through `layer::normalised_tar_header`: mtime = epoch, numeric
//!   uid/gid as the package says, empty uname/gname, the package's mode bits (setuid kept).
//! - **Hard links** stay hard links (type `1`), pointing at the first path of the inode in
//!   sorted order, whatever order the package listed them in.
//! - **Extended attributes** (pax `SCHILY.xattr.*`) are refused rather than dropped:
//!   `dpkg-deb` never writes them, and dropping a file capability silently would change the
//!   package.
//! - **Layer media type: uncompressed** `application/vnd.oci.image.layer.v1.tar`. Its digest
//!   is its diff id; its bytes depend on no compressor version or setting; the composer reads
//!   it directly; the initramfs is zstd-compressed as a whole later anyway. A `+zstd` copy
//!   for registry pushes can come later; skopeo accepts uncompressed layers as they are.
//! - **JSON** through small serde structs in [`oci_json`] rather than the `oci-spec` crate,
//!   whose annotation maps are `HashMap`s (random order per process); see that module for
//!   the canonical form.
//! - The configuration has no execution parameters and one history entry whose `created` is
//!   the epoch and whose `created_by` names the package, never a host path or kiln's version.
//!
//! # Limits
//! A package's files are held in memory between reading data.tar and writing the sorted
//! layer (sorting needs all of them); the largest Debian packages kiln uses (kernel images,
//! firmware) are a few hundred MiB unpacked.

pub mod deb;
pub mod digest;
pub mod image;
pub mod layer;
pub mod layout;
pub mod oci_json;
pub mod platform;

pub use deb::{read_debian_package, DebianPackage, DebianPackageControl, DebianPackageError};
pub use digest::Sha256Digest;
pub use image::{
    image_from_deb_bytes, image_from_deb_file, image_from_deb_reader, image_from_directory,
    image_from_layer_tree, BuildImageError, BuiltDebianPackageImage, BuiltImage, ImageDescription,
};
pub use layer::{
    LayerError, LayerFileAttributes, LayerFileContents, LayerInode, LayerInodeKind, LayerPath,
    LayerTree,
};
pub use layout::{
    debian_package_reference_name, is_valid_reference_name, OciLayout, OciLayoutError, PendingBlob,
};
pub use oci_json::OciDescriptor;
pub use platform::{OciPlatform, SourceDateEpoch};
