//! The `kiln.lock` format: every input of an image, pinned by sha256.
//!
//! **Owns:** the JSON types ([`Lock`], [`ArchitectureLock`], [`DebianPackagePin`],
//! [`TarballPin`]), their one canonical serialization, and the questions builds ask of a
//! lock ("which pins does profile P need on arch A?", answered by
//! [`Lock::debian_packages_for_modules`]).
//!
//! **Architecture Invariant:** this crate does no I/O beyond reading and writing the lock
//! file itself, no network, and never resolves anything: builds read the lock, only
//! `cargo xtask lock` (through `kiln-fetch`) writes it. A module that asks for a package the
//! lock does not pin is an error that says to run `cargo xtask lock`.
//!
//! **Architecture Invariant:** serialization is canonical: fields in declaration order,
//! maps sorted (`BTreeMap`), lists sorted by [`Lock::canonicalize`], pretty JSON with two
//! spaces and a trailing newline. A re-lock with no upstream change is therefore a no-op
//! diff, and parse → serialize is byte-identical (test `parse_then_serialize_is_identical`).
//! JSON, not YAML or TOML, so `flake.nix` reads the same pins with `builtins.fromJSON`.
//!
//! ```json
//! {
//!   "version": 1,
//!   "source_date_epoch": 1747699200,
//!   "architectures": {
//!     "aarch64": { "debian_architecture": "arm64", "debian_packages": [ ... ] },
//!     "x86_64":  { "debian_architecture": "amd64", "debian_packages": [ ... ] }
//!   },
//!   "source_tarballs": [ ... ]
//! }
//! ```
//! Source tarballs are architecture-independent, so they sit at the top level, once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The lock format this code reads and writes. Bump it, and teach [`Lock::parse`] the old
/// one, when a change is not a pure addition.
pub const LOCK_FORMAT_VERSION: u32 = 1;

/// The `source_date_epoch` a new lock starts with: 2025-05-20T00:00:00Z, the Debian
/// snapshot date the project's apt sources are pinned to. Every archive timestamp in an
/// image is this value (not the clock), so the image does not change when rebuilt later.
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_747_699_200;

/// The conventional file name, at the repository root.
pub const LOCK_FILE_NAME: &str = "kiln.lock";

/// A target architecture of an image, named as the kernel and Rust name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TargetArch {
    /// 64-bit x86; Debian `amd64`.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit Arm; Debian `arm64`.
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl TargetArch {
    /// Every architecture kiln builds for, in lock order.
    pub const ALL: [TargetArch; 2] = [TargetArch::Aarch64, TargetArch::X86_64];

    /// The name used in the lock, on the command line and in output file names.
    pub fn name(self) -> &'static str {
        match self {
            TargetArch::X86_64 => "x86_64",
            TargetArch::Aarch64 => "aarch64",
        }
    }

    /// Debian's name for the architecture (`APT::Architecture`).
    pub fn debian_architecture(self) -> &'static str {
        match self {
            TargetArch::X86_64 => "amd64",
            TargetArch::Aarch64 => "arm64",
        }
    }
}

impl fmt::Display for TargetArch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for TargetArch {
    type Err = LockError;
    fn from_str(text: &str) -> Result<Self, LockError> {
        match text {
            "x86_64" | "amd64" => Ok(TargetArch::X86_64),
            "aarch64" | "arm64" => Ok(TargetArch::Aarch64),
            other => Err(LockError::UnknownArchitecture(other.to_owned())),
        }
    }
}

/// The whole lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// [`LOCK_FORMAT_VERSION`].
    pub version: u32,
    /// Seconds since the Unix epoch: the mtime of every archive entry kiln writes.
    pub source_date_epoch: u64,
    /// Pins per target architecture.
    pub architectures: BTreeMap<TargetArch, ArchitectureLock>,
    /// Architecture-independent source tarballs, sorted by name.
    pub source_tarballs: Vec<TarballPin>,
}

/// The pins of one target architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchitectureLock {
    /// Debian's name for the architecture, written out so `flake.nix` needs no table.
    pub debian_architecture: String,
    /// Every Debian package, sorted by name (one version per name).
    pub debian_packages: Vec<DebianPackagePin>,
    /// Every OCI image a module (`image:` source) or a profile (`embed_images:`) names,
    /// resolved for this architecture, sorted by reference. Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oci_images: Vec<OciImagePin>,
}

/// One OCI image reference, resolved for one architecture by `cargo xtask lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciImagePin {
    /// The reference as the module or profile writes it (`registry/repository:tag`).
    pub reference: String,
    /// `sha256:…` of the image manifest for this architecture: what builds pull.
    pub manifest_digest: String,
    /// `sha256:…` of the image index the manifest was chosen from, when the reference
    /// named an index (recorded for audits; builds do not need it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// `module:<name>` or `profile:<name>` for everything that asks for it, sorted.
    pub required_by: Vec<String>,
    /// `registry/repository` of a mirror holding the same manifest (written by `cargo
    /// xtask push --write-lock`): builds pull `mirror@manifest_digest` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Size in bytes of the manifest `manifest_digest` names (0 in locks written before
    /// it was recorded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub manifest_size: u64,
    /// The manifest's media type.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest_media_type: String,
    /// The blobs the manifest names, config first, then the layers in order: what the
    /// flake fetches by digest (nix/pins.nix), since Nix cannot read a manifest before it
    /// has fetched it. `cargo xtask lock` fills them in for pins that lack them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<OciBlobPin>,
}

/// One blob of a pinned image's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciBlobPin {
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Media type, as the manifest gives it.
    pub media_type: String,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl OciImagePin {
    /// `registry/repository@sha256:…`: the reference builds pull (tag dropped, digest
    /// pinned; the mirror's repository when the lock names one).
    pub fn pinned_reference(&self) -> String {
        if let Some(mirror) = &self.mirror {
            return format!("{mirror}@{}", self.manifest_digest);
        }
        let name = self
            .reference
            .split_once('@')
            .map_or(self.reference.as_str(), |(name, _)| name);
        let without_tag = match name.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => repository,
            _ => name,
        };
        format!("{without_tag}@{}", self.manifest_digest)
    }
}

/// One Debian binary package, as the archive's `Packages` index describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianPackagePin {
    /// `Package:`.
    pub name: String,
    /// `Version:` (with epoch, as apt writes it: `1:1.35.0-4+deb12u1+b1`).
    pub version: String,
    /// `Architecture:` (`arm64`, `amd64` or `all`).
    pub architecture: String,
    /// `Filename:`, the path under the mirror root (`pool/main/b/busybox/...deb`).
    pub filename: String,
    /// `SHA256:` of the `.deb`, lowercase hex.
    pub sha256: String,
    /// `Size:` of the `.deb` in bytes.
    pub size: u64,
    /// Why the package is here, sorted: `module:<name>` for a package a module names,
    /// `package:<name>` for a dependency of another pinned package, `profile:<name>` for
    /// the Debian kernel package a profile boots (`kernel: {debian_package: ...}`).
    pub required_by: Vec<String>,
    /// `registry/repository@sha256:…`: the package's OCI image (made by kiln from this
    /// `.deb` for this architecture and the lock's epoch) in a mirror registry, written by
    /// `cargo xtask push --write-lock`. A build whose store lacks the `.deb` pulls this
    /// image by digest instead of asking apt. It says where to get the package, not what
    /// it is, so it never changes an output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

impl DebianPackagePin {
    /// The `.deb` file name (last component of [`Self::filename`]).
    pub fn deb_file_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }
}

/// One source tarball, as a module's author pinned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TarballPin {
    /// The file name the build refers to it by.
    pub name: String,
    /// Where to download it, tried in order (may be empty: drop-in only).
    pub urls: Vec<String>,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// `module:<name>` for every module that asks for it, sorted.
    pub required_by: Vec<String>,
}

/// Why a lock could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid JSON, or not this schema.
    #[error(
        "{path}:{line}:{column}: {message}: fix the file or regenerate it with `cargo xtask lock`"
    )]
    Parse {
        /// The lock file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message.
        message: String,
    },
    /// Valid JSON that breaks a rule of the format.
    #[error("{path}: {message}: regenerate it with `cargo xtask lock`")]
    Invalid {
        /// The lock file.
        path: PathBuf,
        /// What is wrong, naming the entry.
        message: String,
    },
    /// An architecture name kiln does not know.
    #[error("unknown architecture `{0}`: expected x86_64 or aarch64")]
    UnknownArchitecture(String),
    /// The lock has no section for an architecture.
    #[error("kiln.lock has no pins for {arch}: run `cargo xtask lock --arch {arch}`")]
    ArchitectureNotLocked {
        /// The architecture asked for.
        arch: TargetArch,
    },
    /// A module asks for a package the lock does not pin.
    #[error("package {package} ({debian_architecture}) asked for by module {module} is not pinned in kiln.lock: run `cargo xtask lock --arch {arch}`")]
    PackageNotPinned {
        /// The package.
        package: String,
        /// The module that asks for it.
        module: String,
        /// The target.
        arch: TargetArch,
        /// Debian's name for it.
        debian_architecture: &'static str,
    },
    /// A module or profile asks for an OCI image the lock does not pin for an architecture.
    #[error("image {reference} asked for by {requester} is not pinned in kiln.lock for {arch}: run `cargo xtask lock --arch {arch}` (with the registry options it needs)")]
    ImageNotPinned {
        /// The reference as written.
        reference: String,
        /// `module:<name>` or `profile:<name>`.
        requester: String,
        /// The target.
        arch: TargetArch,
    },
    /// A module asks for a tarball the lock does not pin (or pins differently).
    #[error("tarball {tarball} (sha256 {sha256}) asked for by module {module} is not pinned in kiln.lock: run `cargo xtask lock`")]
    TarballNotPinned {
        /// The tarball's name.
        tarball: String,
        /// The sha256 the module asks for.
        sha256: String,
        /// The module.
        module: String,
    },
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

impl Lock {
    /// An empty lock with the default epoch.
    pub fn new() -> Lock {
        Lock {
            version: LOCK_FORMAT_VERSION,
            source_date_epoch: DEFAULT_SOURCE_DATE_EPOCH,
            architectures: BTreeMap::new(),
            source_tarballs: Vec::new(),
        }
    }

    /// Parses and validates lock text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Lock, LockError> {
        let lock: Lock = serde_json::from_str(text).map_err(|error| LockError::Parse {
            path: path.to_path_buf(),
            line: error.line(),
            column: error.column(),
            message: error
                .to_string()
                .split(" at line ")
                .next()
                .unwrap_or_default()
                .to_owned(),
        })?;
        lock.validate().map_err(|message| LockError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(lock)
    }

    /// Reads and validates a lock file.
    pub fn read(path: &Path) -> Result<Lock, LockError> {
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Lock::parse(&text, path)
    }

    /// Writes the canonical text through a temporary file and a rename, so a reader never
    /// sees half a lock.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        let io_error = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let directory = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut temporary = tempfile::NamedTempFile::new_in(directory).map_err(io_error)?;
        std::io::Write::write_all(&mut temporary, self.to_canonical_json().as_bytes())
            .map_err(io_error)?;
        temporary.as_file().sync_all().map_err(io_error)?;
        temporary
            .persist(path)
            .map_err(|error| io_error(error.error))?;
        Ok(())
    }

    /// This lock without `mirror` fields: what decides a build's outputs (a mirror only
    /// says where to download the same bytes).
    pub fn without_mirrors(&self) -> Lock {
        let mut lock = self.clone();
        for architecture in lock.architectures.values_mut() {
            for package in &mut architecture.debian_packages {
                package.mirror = None;
            }
            for image in &mut architecture.oci_images {
                image.mirror = None;
            }
        }
        lock
    }

    /// The one canonical text of this lock: sorted, pretty, trailing newline.
    pub fn to_canonical_json(&self) -> String {
        let mut canonical = self.clone();
        canonical.canonicalize();
        let mut text = serde_json::to_string_pretty(&canonical).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Sorts every list into its canonical order: packages and tarballs by name,
    /// `required_by` sorted and deduplicated. `urls` keep their order: it is a preference.
    pub fn canonicalize(&mut self) {
        for architecture in self.architectures.values_mut() {
            architecture
                .debian_packages
                .sort_by(|left, right| left.name.cmp(&right.name));
            for package in &mut architecture.debian_packages {
                package.required_by.sort();
                package.required_by.dedup();
            }
            architecture
                .oci_images
                .sort_by(|left, right| left.reference.cmp(&right.reference));
            for image in &mut architecture.oci_images {
                image.required_by.sort();
                image.required_by.dedup();
            }
        }
        self.source_tarballs
            .sort_by(|left, right| left.name.cmp(&right.name));
        for tarball in &mut self.source_tarballs {
            tarball.required_by.sort();
            tarball.required_by.dedup();
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.version != LOCK_FORMAT_VERSION {
            return Err(format!("lock format version {} is not supported (this kiln reads version {LOCK_FORMAT_VERSION})", self.version));
        }
        for (arch, architecture) in &self.architectures {
            if architecture.debian_architecture != arch.debian_architecture() {
                return Err(format!(
                    "architecture {arch} says debian_architecture `{}`, expected `{}`",
                    architecture.debian_architecture,
                    arch.debian_architecture()
                ));
            }
            let mut names = BTreeSet::new();
            for package in &architecture.debian_packages {
                if !names.insert(package.name.as_str()) {
                    return Err(format!(
                        "package {} is pinned twice for {arch}",
                        package.name
                    ));
                }
                if !is_sha256_hex(&package.sha256) {
                    return Err(format!(
                        "package {} ({arch}) has sha256 `{}`, expected 64 lowercase hex digits",
                        package.name, package.sha256
                    ));
                }
                if let Some(mirror) = &package.mirror {
                    let digest_pinned = mirror.contains("@sha256:");
                    if let Err(message) = kiln_spec::ImageReference::parse(mirror).and_then(|_| {
                        if digest_pinned {
                            Ok(())
                        } else {
                            Err(format!("mirror `{mirror}` has no digest"))
                        }
                    }) {
                        return Err(format!("package {} ({arch}): {message}", package.name));
                    }
                }
                if package
                    .filename
                    .split('/')
                    .any(|component| component == ".." || component.is_empty())
                {
                    return Err(format!(
                        "package {} ({arch}) has an unsafe filename `{}`",
                        package.name, package.filename
                    ));
                }
            }
        }
        for (arch, architecture) in &self.architectures {
            let mut references = BTreeSet::new();
            for image in &architecture.oci_images {
                if !references.insert(image.reference.as_str()) {
                    return Err(format!(
                        "image {} is pinned twice for {arch}",
                        image.reference
                    ));
                }
                if let Err(message) = kiln_spec::ImageReference::parse(&image.reference) {
                    return Err(format!("{message} (pinned for {arch})"));
                }
                let digests = std::iter::once(&image.manifest_digest)
                    .chain(&image.index_digest)
                    .chain(image.blobs.iter().map(|blob| &blob.digest));
                for digest in digests {
                    if !digest.strip_prefix("sha256:").is_some_and(is_sha256_hex) {
                        return Err(format!(
                            "image {} ({arch}) has digest `{digest}`, expected `sha256:` and 64 lowercase hex digits",
                            image.reference
                        ));
                    }
                }
            }
        }
        for tarball in &self.source_tarballs {
            if !is_sha256_hex(&tarball.sha256) {
                return Err(format!(
                    "tarball {} has sha256 `{}`, expected 64 lowercase hex digits",
                    tarball.name, tarball.sha256
                ));
            }
        }
        Ok(())
    }

    /// The pins of one architecture, or an error saying to lock it.
    pub fn architecture(&self, arch: TargetArch) -> Result<&ArchitectureLock, LockError> {
        self.architectures
            .get(&arch)
            .ok_or(LockError::ArchitectureNotLocked { arch })
    }

    /// The pin of package `name` on `arch`, if any.
    pub fn debian_package(&self, arch: TargetArch, name: &str) -> Option<&DebianPackagePin> {
        let architecture = self.architectures.get(&arch)?;
        architecture
            .debian_packages
            .iter()
            .find(|package| package.name == name)
    }

    /// Every sha256 the lock references (for `cache gc`), on every architecture.
    pub fn referenced_sha256s(&self) -> BTreeSet<&str> {
        let packages = self
            .architectures
            .values()
            .flat_map(|architecture| &architecture.debian_packages);
        packages
            .map(|package| package.sha256.as_str())
            .chain(
                self.source_tarballs
                    .iter()
                    .map(|tarball| tarball.sha256.as_str()),
            )
            .collect()
    }

    /// The Debian packages that `modules` need on `arch`: the packages they name plus,
    /// transitively, every package pinned as `required_by` one of those. Errors name the
    /// first module whose package is not pinned. The answer is sorted by name.
    ///
    /// This is how a build reads the lock without resolving anything.
    pub fn debian_packages_for_modules<'lock>(
        &'lock self,
        arch: TargetArch,
        modules: &[(&str, &kiln_spec::ModuleSpec)],
    ) -> Result<Vec<&'lock DebianPackagePin>, LockError> {
        let architecture = self.architecture(arch)?;
        let mut wanted: BTreeSet<&str> = BTreeSet::new();
        for (module_name, module) in modules {
            for package in module.debian_packages() {
                let pinned = architecture.debian_packages.iter().any(|pin| {
                    pin.name == package
                        && pin
                            .required_by
                            .iter()
                            .any(|reason| reason == &format!("module:{module_name}"))
                });
                if !pinned {
                    return Err(LockError::PackageNotPinned {
                        package: package.to_owned(),
                        module: (*module_name).to_owned(),
                        arch,
                        debian_architecture: arch.debian_architecture(),
                    });
                }
                wanted.insert(package);
            }
        }
        loop {
            let before = wanted.len();
            for pin in &architecture.debian_packages {
                let pulled_in = pin.required_by.iter().any(|reason| {
                    reason
                        .strip_prefix("package:")
                        .is_some_and(|parent| wanted.contains(parent))
                });
                if pulled_in {
                    wanted.insert(pin.name.as_str());
                }
            }
            if wanted.len() == before {
                break;
            }
        }
        let mut pins: Vec<&DebianPackagePin> = architecture
            .debian_packages
            .iter()
            .filter(|pin| wanted.contains(pin.name.as_str()))
            .collect();
        pins.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(pins)
    }

    /// The pin of `reference` on `arch` for `requester` (`module:<name>` or
    /// `profile:<name>`), or [`LockError::ImageNotPinned`].
    pub fn oci_image(
        &self,
        arch: TargetArch,
        reference: &str,
        requester: &str,
    ) -> Result<&OciImagePin, LockError> {
        self.architecture(arch)?
            .oci_images
            .iter()
            .find(|pin| {
                pin.reference == reference
                    && pin.required_by.iter().any(|reason| reason == requester)
            })
            .ok_or_else(|| LockError::ImageNotPinned {
                reference: reference.to_owned(),
                requester: requester.to_owned(),
                arch,
            })
    }

    /// The tarball pins that `modules` need, checking each module's pin matches the lock's.
    pub fn tarballs_for_modules<'lock>(
        &'lock self,
        modules: &[(&str, &kiln_spec::ModuleSpec)],
    ) -> Result<Vec<&'lock TarballPin>, LockError> {
        let mut found = Vec::new();
        for (module_name, module) in modules {
            for tarball in module.tarballs() {
                let pin = self.source_tarballs.iter().find(|pin| {
                    pin.name == tarball.name
                        && pin.sha256 == tarball.sha256
                        && pin.size == tarball.size
                });
                let Some(pin) = pin else {
                    return Err(LockError::TarballNotPinned {
                        tarball: tarball.name.clone(),
                        sha256: tarball.sha256.clone(),
                        module: (*module_name).to_owned(),
                    });
                };
                if !found.contains(&pin) {
                    found.push(pin);
                }
            }
        }
        Ok(found)
    }
}

impl Default for Lock {
    fn default() -> Lock {
        Lock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_lock() -> Lock {
        let busybox = DebianPackagePin {
            name: "busybox-static".into(),
            version: "1:1.35.0-4+deb12u1+b1".into(),
            architecture: "arm64".into(),
            filename: "pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_arm64.deb".into(),
            sha256: "732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5".into(),
            size: 822_236,
            required_by: vec!["module:base".into()],
            mirror: None,
        };
        let zlib = DebianPackagePin {
            name: "zlib1g".into(),
            version: "1:1.2.13.dfsg-1".into(),
            architecture: "arm64".into(),
            filename: "pool/main/z/zlib/zlib1g_1.2.13.dfsg-1_arm64.deb".into(),
            sha256: "1".repeat(64),
            size: 80_000,
            required_by: vec!["package:dropbear-bin".into()],
            mirror: None,
        };
        let dropbear = DebianPackagePin {
            name: "dropbear-bin".into(),
            version: "2022.83-1+deb12u3".into(),
            architecture: "arm64".into(),
            filename: "pool/main/d/dropbear/dropbear-bin_2022.83-1+deb12u3_arm64.deb".into(),
            sha256: "2".repeat(64),
            size: 150_000,
            required_by: vec!["module:sshd".into()],
            mirror: None,
        };
        let mut lock = Lock::new();
        lock.architectures.insert(
            TargetArch::Aarch64,
            ArchitectureLock {
                debian_architecture: "arm64".into(),
                debian_packages: vec![zlib, busybox, dropbear],
                oci_images: Vec::new(),
            },
        );
        lock.source_tarballs.push(TarballPin {
            name: "hello-2.12.tar.gz".into(),
            urls: vec!["https://example.invalid/hello-2.12.tar.gz".into()],
            sha256: "3".repeat(64),
            size: 1_017_723,
            required_by: vec!["module:hello".into()],
        });
        lock
    }

    #[test]
    fn small_lock_snapshot() {
        insta::assert_snapshot!(small_lock().to_canonical_json());
    }

    #[test]
    fn parse_then_serialize_is_identical() {
        let text = small_lock().to_canonical_json();
        let parsed = Lock::parse(&text, Path::new("kiln.lock")).unwrap();
        assert_eq!(parsed.to_canonical_json(), text);
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn the_repository_lock_round_trips_byte_for_byte() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kiln.lock");
        let text = std::fs::read_to_string(&path).unwrap();
        let lock = Lock::parse(&text, &path).unwrap();
        assert_eq!(
            lock.to_canonical_json(),
            text,
            "kiln.lock is not in canonical form: regenerate it with `cargo xtask lock`"
        );
        for arch in TargetArch::ALL {
            assert!(
                lock.debian_package(arch, "busybox-static").is_some(),
                "{arch}"
            );
            assert!(
                lock.debian_package(arch, "linux-source-6.1").is_some(),
                "{arch}"
            );
        }
    }

    /// Builds never resolve, so the committed lock must pin everything every module of the
    /// repository asks for, on every architecture.
    #[test]
    fn the_repository_lock_covers_every_module() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let lock = Lock::read(&root.join("kiln.lock")).unwrap();
        let catalog = kiln_spec::Catalog::load(&root).unwrap();
        let modules: Vec<(&str, &kiln_spec::ModuleSpec)> = catalog
            .modules
            .iter()
            .map(|(name, module)| (name.as_str(), module))
            .collect();
        for arch in TargetArch::ALL {
            let pins = lock
                .debian_packages_for_modules(arch, &modules)
                .unwrap_or_else(|error| panic!("{error}"));
            assert!(pins.iter().any(|pin| pin.name == "dropbear-bin"), "{arch}");
        }
        lock.tarballs_for_modules(&modules)
            .unwrap_or_else(|error| panic!("{error}"));
    }

    #[test]
    fn unknown_fields_are_rejected_with_position() {
        let text = small_lock().to_canonical_json().replacen(
            "\"version\": 1,",
            "\"version\": 1,\n  \"extra\": 2,",
            1,
        );
        let error = Lock::parse(&text, Path::new("kiln.lock"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("kiln.lock:3:"), "{error}");
        assert!(error.contains("unknown field `extra`"), "{error}");
    }

    #[test]
    fn bad_digest_is_rejected_naming_the_package() {
        let text = small_lock()
            .to_canonical_json()
            .replace(&"1".repeat(64), "abc");
        let error = Lock::parse(&text, Path::new("kiln.lock"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("package zlib1g (aarch64) has sha256 `abc`"),
            "{error}"
        );
    }

    #[test]
    fn module_closure_follows_required_by() {
        let lock = small_lock();
        let sshd = kiln_spec::parse_module(
            "description: d\nkind: service\nsources:\n  - debian: [dropbear-bin]\n",
            Path::new("m"),
        )
        .unwrap();
        let pins = lock
            .debian_packages_for_modules(TargetArch::Aarch64, &[("sshd", &sshd)])
            .unwrap();
        let names: Vec<&str> = pins.iter().map(|pin| pin.name.as_str()).collect();
        assert_eq!(names, ["dropbear-bin", "zlib1g"]);
    }

    #[test]
    fn unpinned_package_error_says_what_to_run() {
        let lock = small_lock();
        let module = kiln_spec::parse_module(
            "description: d\nkind: base\nsources:\n  - debian: [runc]\n",
            Path::new("m"),
        )
        .unwrap();
        let error = lock
            .debian_packages_for_modules(TargetArch::Aarch64, &[("runtime", &module)])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "package runc (arm64) asked for by module runtime is not pinned in kiln.lock: run `cargo xtask lock --arch aarch64`"
        );
        let error = lock
            .debian_packages_for_modules(TargetArch::X86_64, &[("runtime", &module)])
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "kiln.lock has no pins for x86_64: run `cargo xtask lock --arch x86_64`"
        );
    }

    #[test]
    fn image_pins_are_pulled_by_digest_and_validated() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let pin = OciImagePin {
            reference: "127.0.0.1:5000/kiln/tools:2.0".into(),
            manifest_digest: digest.clone(),
            index_digest: None,
            required_by: vec!["profile:hook".into()],
            mirror: None,
            manifest_size: 0,
            manifest_media_type: String::new(),
            blobs: Vec::new(),
        };
        assert_eq!(
            pin.pinned_reference(),
            format!("127.0.0.1:5000/kiln/tools@{digest}")
        );
        let by_digest = OciImagePin {
            reference: format!("127.0.0.1:5000/kiln/tools:2.0@{digest}"),
            ..pin.clone()
        };
        assert_eq!(
            by_digest.pinned_reference(),
            format!("127.0.0.1:5000/kiln/tools@{digest}")
        );

        let mut lock = small_lock();
        lock.architectures
            .get_mut(&TargetArch::Aarch64)
            .unwrap()
            .oci_images
            .push(OciImagePin {
                manifest_digest: "sha256:123".into(),
                ..pin.clone()
            });
        let error = Lock::parse(&lock.to_canonical_json(), Path::new("kiln.lock"))
            .unwrap_err()
            .to_string();
        assert_eq!(error, "kiln.lock: image 127.0.0.1:5000/kiln/tools:2.0 (aarch64) has digest `sha256:123`, expected `sha256:` and 64 lowercase hex digits: regenerate it with `cargo xtask lock`");

        let mut lock = small_lock();
        lock.architectures
            .get_mut(&TargetArch::Aarch64)
            .unwrap()
            .oci_images
            .push(pin.clone());
        let text = lock.to_canonical_json();
        let read = Lock::parse(&text, Path::new("kiln.lock")).unwrap();
        assert_eq!(
            read.oci_image(TargetArch::Aarch64, &pin.reference, "profile:hook")
                .unwrap(),
            &pin
        );
        let error = read
            .oci_image(TargetArch::Aarch64, &pin.reference, "module:payload")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not pinned in kiln.lock for aarch64"),
            "{error}"
        );
        // A lock without images says nothing about them.
        assert!(!small_lock().to_canonical_json().contains("oci_images"));
    }
}
