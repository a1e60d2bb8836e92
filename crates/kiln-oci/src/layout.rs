//! An OCI image layout on disk: `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
//!
//! **Architecture Invariant:** a blob file exists only with its full, verified content: it is
//! written to a temporary file in `blobs/sha256/`, fsynced, made `0644`, renamed to its
//! digest, and the directory is fsynced. `index.json` is replaced the same way, under an
//! exclusive lock on `index.json.lock`, so two builds adding references at once lose neither.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{HashingWriter, Sha256Digest};
use crate::oci_json::{
    canonical_json_bytes, OciDescriptor, OciImageIndex, OciLayoutMarker, IMAGE_INDEX_MEDIA_TYPE,
    REFERENCE_NAME_ANNOTATION,
};

/// Errors of the layout writer; each names the layout directory or file.
#[derive(Debug, thiserror::Error)]
pub enum OciLayoutError {
    /// Creating the layout's directories or `oci-layout` failed.
    #[error("cannot create OCI image layout {path}: {source}")]
    Create {
        /// The path that could not be created.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `oci-layout` exists but is not `{"imageLayoutVersion":"1.0.0"}`.
    #[error("{path} does not say imageLayoutVersion 1.0.0 ({found:?}): the directory is not an OCI image layout kiln can write; use an empty directory")]
    NotAnImageLayout {
        /// The `oci-layout` file.
        path: PathBuf,
        /// What it holds.
        found: String,
    },
    /// Writing, syncing or renaming a blob failed.
    #[error("cannot write a blob into {directory}: {source}; check free space and permissions, then rebuild")]
    WriteBlob {
        /// `blobs/sha256` of the layout.
        directory: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Reading a blob failed.
    #[error("cannot read blob {digest} at {path}: {source}")]
    ReadBlob {
        /// The blob.
        digest: Sha256Digest,
        /// Its file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A blob whose content does not hash to its name.
    #[error("blob {path} is corrupt: its content hashes to {actual}; delete the file and rebuild the image")]
    CorruptBlob {
        /// Its file.
        path: PathBuf,
        /// What it hashes to.
        actual: Sha256Digest,
    },
    /// Reading, locking or writing `index.json` failed.
    #[error("cannot update {path}: {source}")]
    UpdateIndex {
        /// `index.json` or its lock file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `index.json` is not an image index kiln understands.
    #[error("{path} is not a valid OCI image index: {source}; move it away (the blobs stay valid) and rebuild")]
    ParseIndex {
        /// `index.json`.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// A reference name outside `[A-Za-z0-9._-]+`.
    #[error("reference name {name:?} does not follow the OCI ref.name grammar (alphanumeric runs joined by one of `-` `.` `_` `:` `@` `+` `--`, components joined by `/`), which skopeo enforces: pick another name (for packages, use debian_package_reference_name)")]
    InvalidReferenceName {
        /// The rejected name.
        name: String,
    },
}

/// An OCI image layout directory that kiln writes into. It knows nothing of the store that
/// may host it: it takes a directory path and keeps everything inside it.
#[derive(Debug, Clone)]
pub struct OciLayout {
    directory: PathBuf,
}

/// A blob being written; [`PendingBlob::commit`] makes it visible under its digest.
/// Dropped without commit, it leaves nothing behind.
#[derive(Debug)]
pub struct PendingBlob {
    blobs_directory: PathBuf,
    writer: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
}

const OCI_LAYOUT_VERSION: &str = "1.0.0";

fn write_file_atomically(directory: &Path, file_name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut temporary_file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(directory)?;
    temporary_file.write_all(bytes)?;
    temporary_file.as_file().sync_all()?;
    fs::set_permissions(temporary_file.path(), fs::Permissions::from_mode(0o644))?;
    temporary_file
        .persist(directory.join(file_name))
        .map_err(|error| error.error)?;
    File::open(directory)?.sync_all()
}

/// Whether `name` follows the grammar of `org.opencontainers.image.ref.name` (OCI image-spec
/// annotations): `component ("/" component)*`, where a component is runs of `A-Za-z0-9`
/// joined by exactly one separator, `-`, `.`, `_`, `:`, `@`, `+` or `--`. skopeo's `oci:`
/// transport refuses other names (`a__b`, `g++`, `2.0~rc1`), so kiln refuses them too.
pub fn is_valid_reference_name(name: &str) -> bool {
    name.split('/').all(is_valid_reference_name_component)
}

fn is_valid_reference_name_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let mut position = 0;
    loop {
        let run_start = position;
        while position < bytes.len() && bytes[position].is_ascii_alphanumeric() {
            position += 1;
        }
        if position == run_start {
            return false;
        }
        if position == bytes.len() {
            return true;
        }
        if bytes[position..].starts_with(b"--")
            && bytes
                .get(position + 2)
                .is_some_and(u8::is_ascii_alphanumeric)
        {
            position += 2;
        } else if matches!(bytes[position], b'-' | b'.' | b'_' | b':' | b'@' | b'+') {
            position += 1;
        } else {
            return false;
        }
    }
}

/// The reference name kiln gives the image of a Debian package:
/// `<package>--<version>--<architecture>`, e.g.
/// `busybox-static--1:1.35.0-4+deb12u1+b1--amd64`.
///
/// A separator (`-`, `.`, `:`, `+`) stays as it is when both its neighbours are
/// alphanumeric; any other byte (`~`, a separator next to another one, …) becomes `_` and
/// two lowercase hex digits (`2.0~rc1` → `2.0_7erc1`, `g++` → `g_2b_2b`). So `--` never
/// occurs inside a field and separates the fields unambiguously, `_` always starts an
/// escape, and different packages never share a name. Debian names, versions and
/// architectures start with an alphanumeric, so the result always follows the OCI grammar
/// ([`is_valid_reference_name`]).
pub fn debian_package_reference_name(package: &str, version: &str, architecture: &str) -> String {
    let escape = |text: &str| {
        let bytes = text.as_bytes();
        let mut escaped = String::with_capacity(text.len());
        for (index, byte) in bytes.iter().copied().enumerate() {
            let between_alphanumerics = index > 0
                && bytes[index - 1].is_ascii_alphanumeric()
                && bytes.get(index + 1).is_some_and(u8::is_ascii_alphanumeric);
            if byte.is_ascii_alphanumeric()
                || (matches!(byte, b'-' | b'.' | b':' | b'+') && between_alphanumerics)
            {
                escaped.push(char::from(byte));
            } else {
                escaped.push_str(&format!("_{byte:02x}"));
            }
        }
        escaped
    };
    format!(
        "{}--{}--{}",
        escape(package),
        escape(version),
        escape(architecture)
    )
}

impl OciLayout {
    /// Opens the layout at `directory`, creating the directory, `oci-layout`, an empty
    /// `index.json` and `blobs/sha256/` if they are missing.
    pub fn open_or_create(directory: &Path) -> Result<Self, OciLayoutError> {
        let layout = Self {
            directory: directory.to_owned(),
        };
        let blobs_directory = layout.blobs_directory();
        fs::create_dir_all(&blobs_directory).map_err(|source| OciLayoutError::Create {
            path: blobs_directory,
            source,
        })?;
        let marker_path = directory.join("oci-layout");
        match fs::read_to_string(&marker_path) {
            Ok(found) => {
                let parsed: Option<OciLayoutMarker> = serde_json::from_str(&found).ok();
                if parsed.is_none_or(|marker| marker.image_layout_version != OCI_LAYOUT_VERSION) {
                    return Err(OciLayoutError::NotAnImageLayout {
                        path: marker_path,
                        found,
                    });
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let marker = OciLayoutMarker {
                    image_layout_version: OCI_LAYOUT_VERSION.to_owned(),
                };
                write_file_atomically(directory, "oci-layout", &canonical_json_bytes(&marker))
                    .map_err(|source| OciLayoutError::Create {
                        path: marker_path,
                        source,
                    })?;
            }
            Err(source) => {
                return Err(OciLayoutError::Create {
                    path: marker_path,
                    source,
                })
            }
        }
        if !layout.index_path().exists() {
            layout.update_index(|_| Ok(()))?;
        }
        Ok(layout)
    }

    /// The layout's directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn blobs_directory(&self) -> PathBuf {
        self.directory.join("blobs").join("sha256")
    }

    fn index_path(&self) -> PathBuf {
        self.directory.join("index.json")
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Sha256Digest) -> PathBuf {
        self.blobs_directory().join(digest.hex())
    }

    /// Starts writing a blob; write to it, then [`PendingBlob::commit`].
    pub fn begin_blob(&self) -> Result<PendingBlob, OciLayoutError> {
        let blobs_directory = self.blobs_directory();
        let temporary_file = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&blobs_directory)
            .map_err(|source| OciLayoutError::WriteBlob {
                directory: blobs_directory.clone(),
                source,
            })?;
        Ok(PendingBlob {
            blobs_directory,
            writer: HashingWriter::new(BufWriter::new(temporary_file)),
        })
    }

    /// Stores `bytes` as a blob of `media_type`.
    pub fn put_blob_bytes(
        &self,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<OciDescriptor, OciLayoutError> {
        self.put_blob_from_reader(media_type, bytes)
    }

    /// Stores everything `reader` yields as a blob of `media_type`.
    pub fn put_blob_from_reader(
        &self,
        media_type: &str,
        mut reader: impl Read,
    ) -> Result<OciDescriptor, OciLayoutError> {
        let mut pending = self.begin_blob()?;
        io::copy(&mut reader, &mut pending).map_err(|source| OciLayoutError::WriteBlob {
            directory: self.blobs_directory(),
            source,
        })?;
        pending.commit(media_type)
    }

    /// Reads a blob whole and checks that it hashes to its digest.
    pub fn read_blob(&self, digest: &Sha256Digest) -> Result<Vec<u8>, OciLayoutError> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(|source| OciLayoutError::ReadBlob {
            digest: *digest,
            path: path.clone(),
            source,
        })?;
        let actual = Sha256Digest::of_bytes(&bytes);
        if actual != *digest {
            return Err(OciLayoutError::CorruptBlob { path, actual });
        }
        Ok(bytes)
    }

    /// The image index as it is on disk.
    pub fn read_index(&self) -> Result<OciImageIndex, OciLayoutError> {
        let path = self.index_path();
        let bytes = fs::read(&path).map_err(|source| OciLayoutError::UpdateIndex {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| OciLayoutError::ParseIndex { path, source })
    }

    /// Names `manifest` `reference_name` in `index.json`, replacing whatever had that name.
    /// The manifests stay sorted by reference name, then digest, so the file's bytes depend
    /// only on which references exist, not on the order in which they were added.
    pub fn add_manifest_ref(
        &self,
        reference_name: &str,
        manifest: &OciDescriptor,
    ) -> Result<(), OciLayoutError> {
        if !is_valid_reference_name(reference_name) {
            return Err(OciLayoutError::InvalidReferenceName {
                name: reference_name.to_owned(),
            });
        }
        let mut named_manifest = manifest.clone();
        named_manifest.annotations.insert(
            REFERENCE_NAME_ANNOTATION.to_owned(),
            reference_name.to_owned(),
        );
        self.update_index(|index| {
            index
                .manifests
                .retain(|existing| existing.reference_name() != Some(reference_name));
            index.manifests.push(named_manifest);
            Ok(())
        })
    }

    /// The manifest named `reference_name`, if any.
    pub fn find_manifest_ref(
        &self,
        reference_name: &str,
    ) -> Result<Option<OciDescriptor>, OciLayoutError> {
        Ok(self
            .read_index()?
            .manifests
            .into_iter()
            .find(|manifest| manifest.reference_name() == Some(reference_name)))
    }

    fn update_index(
        &self,
        change: impl FnOnce(&mut OciImageIndex) -> Result<(), OciLayoutError>,
    ) -> Result<(), OciLayoutError> {
        let lock_path = self.directory.join("index.json.lock");
        let lock_error = |source| OciLayoutError::UpdateIndex {
            path: lock_path.clone(),
            source,
        };
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(lock_error)?;
        // Released when `lock_file` is dropped at the end of this function.
        lock_file.lock().map_err(lock_error)?;
        let index_path = self.index_path();
        let mut index = if index_path.exists() {
            self.read_index()?
        } else {
            OciImageIndex {
                schema_version: 2,
                media_type: Some(IMAGE_INDEX_MEDIA_TYPE.to_owned()),
                manifests: Vec::new(),
                annotations: Default::default(),
                other_fields: Default::default(),
            }
        };
        change(&mut index)?;
        index.manifests.sort_by(|left, right| {
            (left.reference_name(), left.digest).cmp(&(right.reference_name(), right.digest))
        });
        write_file_atomically(&self.directory, "index.json", &canonical_json_bytes(&index)).map_err(
            |source| OciLayoutError::UpdateIndex {
                path: index_path,
                source,
            },
        )
    }
}

impl Write for PendingBlob {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.writer.write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl PendingBlob {
    /// Syncs the blob, renames it to its digest and returns its descriptor. If the layout
    /// already holds that digest, the existing file is kept and the new copy discarded.
    pub fn commit(self, media_type: &str) -> Result<OciDescriptor, OciLayoutError> {
        let digest = self.writer.digest();
        let size = self.writer.bytes_written;
        let blobs_directory = self.blobs_directory;
        let write_error = |source| OciLayoutError::WriteBlob {
            directory: blobs_directory.clone(),
            source,
        };
        let temporary_file = self
            .writer
            .inner
            .into_inner()
            .map_err(|error| write_error(error.into_error()))?;
        let final_path = blobs_directory.join(digest.hex());
        if !final_path.exists() {
            temporary_file.as_file().sync_all().map_err(write_error)?;
            fs::set_permissions(temporary_file.path(), fs::Permissions::from_mode(0o644))
                .map_err(write_error)?;
            temporary_file
                .persist(&final_path)
                .map_err(|error| write_error(error.error))?;
            File::open(&blobs_directory)
                .and_then(|directory| directory.sync_all())
                .map_err(write_error)?;
        }
        Ok(OciDescriptor::new(media_type, digest, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_reference_names_follow_the_oci_grammar_and_are_unambiguous() {
        let check = |package: &str, version: &str, expected: &str| {
            let name = debian_package_reference_name(package, version, "amd64");
            assert_eq!(name, expected);
            assert!(is_valid_reference_name(&name), "{name}");
        };
        check(
            "busybox-static",
            "1:1.35.0-4+deb12u1+b1",
            "busybox-static--1:1.35.0-4+deb12u1+b1--amd64",
        );
        check("g++", "4:12.2.0-3", "g_2b_2b--4:12.2.0-3--amd64");
        check(
            "libstdc++6",
            "12.2.0-14",
            "libstdc_2b_2b6--12.2.0-14--amd64",
        );
        check(
            "kiln-test-small",
            "1:2.0~rc1-3+b1",
            "kiln-test-small--1:2.0_7erc1-3+b1--amd64",
        );
        check("x", "1.0+~git1", "x--1.0_2b_7egit1--amd64");
        check("a-", "1", "a_2d--1--amd64");
    }

    #[test]
    fn reference_name_grammar_matches_what_skopeo_accepts() {
        // Accepted and refused by skopeo 1.9 (`skopeo inspect oci:DIR:NAME`), checked by hand.
        for accepted in [
            "busybox-static_1:1.35.0-4+deb12u1+b1_amd64",
            "a_2bb",
            "a/b",
            "a--b",
            "A@b",
            "v1.0",
        ] {
            assert!(is_valid_reference_name(accepted), "{accepted}");
        }
        for refused in [
            "a__b",
            "x_1:2.0~rc1_amd64",
            "a---b",
            "a.-b",
            "g++_1_all",
            "",
            "a/",
            "-a",
            "a-",
        ] {
            assert!(!is_valid_reference_name(refused), "{refused}");
        }
    }

    #[test]
    fn concurrent_reference_updates_lose_nothing() {
        let directory = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(directory.path()).unwrap();
        let blob = layout
            .put_blob_bytes("application/octet-stream", b"manifest")
            .unwrap();
        std::thread::scope(|scope| {
            for thread_number in 0..4 {
                let (layout, blob) = (&layout, &blob);
                scope.spawn(move || {
                    // Each thread opens the layout itself, as a second build process would.
                    let own_layout = OciLayout::open_or_create(layout.directory()).unwrap();
                    for reference_number in 0..25 {
                        own_layout
                            .add_manifest_ref(
                                &format!("t{thread_number}-r{reference_number}"),
                                blob,
                            )
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(layout.read_index().unwrap().manifests.len(), 100);
    }

    #[test]
    fn blobs_are_content_addressed_and_index_is_sorted_whatever_the_insertion_order() {
        let directory = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(directory.path()).unwrap();
        let first = layout
            .put_blob_bytes("application/octet-stream", b"first")
            .unwrap();
        let second = layout
            .put_blob_bytes("application/octet-stream", b"second")
            .unwrap();
        assert_eq!(
            first,
            layout
                .put_blob_bytes("application/octet-stream", b"first")
                .unwrap()
        );
        assert_eq!(layout.read_blob(&first.digest).unwrap(), b"first");
        layout.add_manifest_ref("zeta", &first).unwrap();
        layout.add_manifest_ref("alpha", &second).unwrap();
        layout.add_manifest_ref("zeta", &second).unwrap();
        let names: Vec<_> = layout
            .read_index()
            .unwrap()
            .manifests
            .iter()
            .map(|m| m.reference_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert_eq!(
            layout.find_manifest_ref("zeta").unwrap().unwrap().digest,
            second.digest
        );
        let leftover_temporary_files = fs::read_dir(directory.path().join("blobs/sha256"))
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count();
        assert_eq!(leftover_temporary_files, 0);
        fs::write(layout.blob_path(&first.digest), b"tampered").unwrap();
        assert!(layout
            .read_blob(&first.digest)
            .unwrap_err()
            .to_string()
            .contains("is corrupt"));
        assert!(matches!(
            layout.add_manifest_ref("a__b", &first),
            Err(OciLayoutError::InvalidReferenceName { .. })
        ));
    }
}
