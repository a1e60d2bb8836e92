//! Resolving and fetching pinned inputs: the only kiln crate that talks to the network.
//!
//! **Owns:** turning the module catalog into lock pins ([`lock_architecture`],
//! [`tarball_pins`]) through the host's apt with a private state per architecture
//! ([`apt::PrivateApt`]), and bringing pinned files into the store
//! ([`fetch_debian_package`], [`fetch_tarball`]).
//!
//! **Architecture Invariant:** the network is reached only through the host's ordinary
//! clients (`apt-get` for Debian packages, `curl` for tarball URLs), so proxies, mirrors and
//! CAs are the host's; no mirror host name is written in this crate or the project.
//!
//! **Architecture Invariant:** nothing enters the store unverified: every file is checked
//! against the lock's sha256 *and* size by `kiln_store` before it is renamed into place.
//! A digest mismatch, a truncated download, a package the mirror no longer has, or a killed
//! process leaves the store as it was (tests in `tests/store_fetch_failures.rs`).
//!
//! Where a file comes from, in order: already in the store; a file of the same name in the
//! store's `import/` directory (how air-gapped sites pre-seed the store: copy the `.deb`
//! or tarball there); apt or the tarball's URLs, unless [`FetchMode::Offline`].
//!
//! **Does not touch:** image formats (kiln-oci turns the `.deb`s into OCI images), the
//! host's apt/dpkg configuration.

pub mod apt;
pub mod debian;
pub mod resolve;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_lock::{ArchitectureLock, DebianPackagePin, TarballPin, TargetArch};
use kiln_spec::Catalog;
use kiln_store::{ExpectedBlob, Sha256Digest, Store, StoreError};

use crate::apt::{tail_lines, PrivateApt};
use crate::resolve::{resolve, PackageRequest, Resolution, ResolveError};

/// Why resolving or fetching failed. Messages name the package and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// To which path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// The host has no apt sources to copy.
    #[error("the host has no apt sources (/etc/apt/sources.list or /etc/apt/sources.list.d/*.list|*.sources): configure a Debian mirror on the host first")]
    NoHostSources,
    /// `apt-get indextargets` found no Packages index.
    #[error("no apt Packages index for {arch} in the private apt state: run `cargo xtask lock --arch {arch}` (it runs apt-get update)")]
    NoIndexes {
        /// The architecture.
        arch: TargetArch,
    },
    /// An apt command other than a download failed.
    #[error("{what} failed ({status}); apt said:\n{output_tail}")]
    AptFailed {
        /// The command.
        what: String,
        /// Its exit status.
        status: String,
        /// The last lines of its output.
        output_tail: String,
    },
    /// `apt-get download` failed: usually the mirror no longer has this version.
    #[error("package {package} {version} ({debian_architecture}): apt-get download failed ({status}); apt said:\n{output_tail}\nthe mirror may no longer carry this version: run `cargo xtask lock --arch {arch} --update {package}`, or copy the .deb into the store's import/ directory")]
    DownloadFailed {
        /// The package.
        package: String,
        /// The pinned version.
        version: String,
        /// Debian's arch name.
        debian_architecture: &'static str,
        /// The target.
        arch: TargetArch,
        /// Exit status.
        status: String,
        /// The last lines of apt's output.
        output_tail: String,
    },
    /// Resolution failed (boxed: it is the largest variant).
    #[error(transparent)]
    Resolve(Box<ResolveError>),
    /// The store refused a file (digest or size mismatch) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--offline` and the file is not in the store.
    #[error("{label} is not in the store and --offline forbids downloading it: run `cargo xtask fetch` where the network is reachable, or copy {file_name} into {import_dir}")]
    NotInStoreOffline {
        /// What is missing.
        label: String,
        /// The file name to drop in.
        file_name: String,
        /// The import directory.
        import_dir: PathBuf,
    },
    /// Every URL of a tarball failed.
    #[error(
        "tarball {name}: no URL worked ({attempts}): copy {name} into {import_dir} and run again"
    )]
    TarballUnreachable {
        /// The tarball.
        name: String,
        /// Each URL and why it failed.
        attempts: String,
        /// The import directory.
        import_dir: PathBuf,
    },
    /// A profile could not be resolved (its kernel package is asked for by the profile).
    #[error(transparent)]
    Profile(Box<kiln_spec::SpecError>),
    /// Two modules pin the same tarball name differently.
    #[error("tarball {name} is pinned with sha256 {first} by module {first_module} and {second} by module {second_module}: make them agree")]
    ConflictingTarballs {
        /// The tarball.
        name: String,
        /// First sha256.
        first: String,
        /// Its module.
        first_module: String,
        /// Second sha256.
        second: String,
        /// Its module.
        second_module: String,
    },
}

impl From<Box<ResolveError>> for FetchError {
    fn from(error: Box<ResolveError>) -> FetchError {
        FetchError::Resolve(error)
    }
}

/// Whether fetching may use the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchMode {
    /// apt and URLs may be used.
    Online,
    /// Only the store and its `import/` directory.
    Offline,
}

/// Where a fetched file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchedFrom {
    /// It was already in the store.
    Store,
    /// From the store's `import/` directory.
    Import,
    /// Downloaded.
    Network,
}

/// Every Debian package request of the catalog for `arch`: module by module (sorted by
/// module name), then the kernel package of every profile whose kernel is a Debian
/// package (`kernel: {debian_package: ...}`, inherited through `extends:`), pinned as is,
/// without its `Depends` (kmod, initramfs-tools: the installed system's business).
pub fn catalog_package_requests(
    catalog: &Catalog,
    arch: TargetArch,
) -> Result<Vec<PackageRequest>, FetchError> {
    let mut requests = Vec::new();
    for (module_name, module) in &catalog.modules {
        for package in module.debian_packages() {
            requests.push(PackageRequest {
                package: package.to_owned(),
                required_by: format!("module:{module_name}"),
                with_dependencies: module.kind.resolves_debian_dependencies(),
                skip_dependencies: module.skip_dependencies.iter().cloned().collect(),
            });
        }
    }
    for profile_name in catalog.profiles.keys() {
        let profile = catalog
            .resolve_profile(profile_name)
            .map_err(|error| FetchError::Profile(Box::new(error)))?;
        if let kiln_spec::KernelKind::DebianPackage(packages) = profile.kernel.kind() {
            if let Some(package) = packages.for_arch(arch.name()) {
                requests.push(PackageRequest {
                    package: package.to_owned(),
                    required_by: format!("profile:{profile_name}"),
                    with_dependencies: false,
                    skip_dependencies: BTreeSet::new(),
                });
            }
        }
    }
    Ok(requests)
}

/// Every tarball of the catalog, merged by name (two modules may share one pin).
pub fn tarball_pins(catalog: &Catalog) -> Result<Vec<TarballPin>, FetchError> {
    let mut pins: BTreeMap<String, TarballPin> = BTreeMap::new();
    for (module_name, module) in &catalog.modules {
        for tarball in module.tarballs() {
            let reason = format!("module:{module_name}");
            if let Some(existing) = pins.get_mut(&tarball.name) {
                if existing.sha256 != tarball.sha256 || existing.size != tarball.size {
                    return Err(FetchError::ConflictingTarballs {
                        name: tarball.name.clone(),
                        first: existing.sha256.clone(),
                        first_module: existing.required_by.first().cloned().unwrap_or_default(),
                        second: tarball.sha256.clone(),
                        second_module: module_name.clone(),
                    });
                }
                existing.required_by.push(reason);
                continue;
            }
            pins.insert(
                tarball.name.clone(),
                TarballPin {
                    name: tarball.name.clone(),
                    urls: tarball.urls.clone(),
                    sha256: tarball.sha256.clone(),
                    size: tarball.size,
                    required_by: vec![reason],
                },
            );
        }
    }
    Ok(pins.into_values().collect())
}

/// Resolves the whole catalog for one architecture: `apt-get update` in the private state,
/// read the indexes, resolve. Packages pinned in `previous` keep their version while the
/// index carries it, except those named in `update` (re-resolved to the newest).
pub fn lock_architecture(
    apt: &PrivateApt,
    catalog: &Catalog,
    previous: Option<&ArchitectureLock>,
    update: &BTreeSet<String>,
) -> Result<(ArchitectureLock, Resolution), FetchError> {
    apt.update()?;
    let index = apt.package_index()?;
    let locked_versions: BTreeMap<String, String> = previous
        .map(|previous| {
            previous
                .debian_packages
                .iter()
                .filter(|pin| !update.contains(&pin.name))
                .map(|pin| (pin.name.clone(), pin.version.clone()))
                .collect()
        })
        .unwrap_or_default();
    let arch = apt.arch();
    let resolution = resolve(
        &index,
        &catalog_package_requests(catalog, arch)?,
        &locked_versions,
        arch.debian_architecture(),
    )?;
    let architecture_lock = ArchitectureLock {
        debian_architecture: arch.debian_architecture().to_owned(),
        debian_packages: resolution.pins.clone(),
        // `cargo xtask lock` resolves images against registries after the packages.
        oci_images: previous
            .map(|previous| previous.oci_images.clone())
            .unwrap_or_default(),
    };
    Ok((architecture_lock, resolution))
}

/// What the store must receive for `pin`.
pub fn expected_blob_for_package(
    pin: &DebianPackagePin,
    arch: TargetArch,
) -> Result<ExpectedBlob, FetchError> {
    Ok(ExpectedBlob {
        sha256: Sha256Digest::parse(&pin.sha256)?,
        size: Some(pin.size),
        label: format!(
            "package {} {} ({})",
            pin.name,
            pin.version,
            arch.debian_architecture()
        ),
    })
}

/// Inserts `import/<file_name>` if it exists; `Ok(false)` if it does not.
fn insert_from_import(
    store: &Store,
    file_name: &str,
    expected: &ExpectedBlob,
) -> Result<bool, FetchError> {
    let candidate = store.import_dir().join(file_name);
    if !candidate.is_file() {
        return Ok(false);
    }
    let mut file = std::fs::File::open(&candidate).map_err(|source| FetchError::Io {
        action: "cannot open",
        path: candidate.clone(),
        source,
    })?;
    let mut labelled = expected.clone();
    labelled.label = format!("{} (from {})", expected.label, candidate.display());
    store.insert_blob_from_reader(&mut file, &labelled)?;
    Ok(true)
}

/// Brings one pinned Debian package into the store. `apt` is needed only when the package
/// must be downloaded (pass `None` offline). `on_progress` receives bytes downloaded so far.
pub fn fetch_debian_package(
    store: &Store,
    apt: Option<&PrivateApt>,
    arch: TargetArch,
    pin: &DebianPackagePin,
    mode: FetchMode,
    on_progress: &mut dyn FnMut(u64),
) -> Result<FetchedFrom, FetchError> {
    let expected = expected_blob_for_package(pin, arch)?;
    if store.contains(&expected.sha256) {
        return Ok(FetchedFrom::Store);
    }
    if insert_from_import(store, pin.deb_file_name(), &expected)? {
        return Ok(FetchedFrom::Import);
    }
    let (FetchMode::Online, Some(apt)) = (mode, apt) else {
        return Err(FetchError::NotInStoreOffline {
            label: expected.label,
            file_name: pin.deb_file_name().to_owned(),
            import_dir: store.import_dir(),
        });
    };
    let work = store.temp_dir()?;
    let deb = apt.download(pin, work.path(), on_progress)?;
    store.insert_owned_file(&deb, &expected)?;
    Ok(FetchedFrom::Network)
}

/// What [`fetch_debian_packages`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchSummary {
    /// Packages already in the store.
    pub already_in_store: u64,
    /// Packages taken from `import/`, by name.
    pub imported: Vec<String>,
    /// Packages downloaded, by name.
    pub downloaded: Vec<String>,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
}

/// Brings every pin of one architecture into the store: from the store, `import/`, or one
/// batched `apt-get download` (after `apt-get update` in the private state under
/// `store/state/`). If the batch fails, each package is retried alone, so the error names
/// the package at fault. `on_progress` gets the bytes downloaded so far.
pub fn fetch_debian_packages(
    store: &Store,
    arch: TargetArch,
    pins: &[&DebianPackagePin],
    mode: FetchMode,
    on_progress: &mut dyn FnMut(u64),
) -> Result<FetchSummary, FetchError> {
    let mut summary = FetchSummary::default();
    let mut missing: Vec<&DebianPackagePin> = Vec::new();
    for pin in pins {
        match fetch_debian_package(store, None, arch, pin, FetchMode::Offline, &mut |_| {}) {
            Ok(FetchedFrom::Store) => summary.already_in_store += 1,
            Ok(_) => summary.imported.push(pin.name.clone()),
            Err(FetchError::NotInStoreOffline { .. }) if mode == FetchMode::Online => {
                missing.push(pin)
            }
            Err(error) => return Err(error),
        }
    }
    if missing.is_empty() {
        return Ok(summary);
    }
    let apt = PrivateApt::open(&store.root().join("state"), arch)?;
    apt.update()?;
    let work = store.temp_dir()?;
    match apt.download_all(&missing, work.path(), on_progress) {
        Ok(paths) => {
            for (pin, path) in missing.iter().zip(paths) {
                store.insert_owned_file(&path, &expected_blob_for_package(pin, arch)?)?;
                summary.downloaded.push(pin.name.clone());
                summary.downloaded_bytes += pin.size;
            }
        }
        Err(_) => {
            let mut done = 0;
            for pin in missing {
                fetch_debian_package(store, Some(&apt), arch, pin, mode, &mut |bytes| {
                    on_progress(done + bytes)
                })?;
                done += pin.size;
                summary.downloaded.push(pin.name.clone());
                summary.downloaded_bytes += pin.size;
            }
        }
    }
    Ok(summary)
}

/// Brings one pinned tarball into the store: from the store, `import/<name>`, or its URLs
/// in order (through the host's `curl`).
pub fn fetch_tarball(
    store: &Store,
    pin: &TarballPin,
    mode: FetchMode,
    on_progress: &mut dyn FnMut(u64),
) -> Result<FetchedFrom, FetchError> {
    let expected = ExpectedBlob {
        sha256: Sha256Digest::parse(&pin.sha256)?,
        size: Some(pin.size),
        label: format!("tarball {}", pin.name),
    };
    if store.contains(&expected.sha256) {
        return Ok(FetchedFrom::Store);
    }
    if insert_from_import(store, &pin.name, &expected)? {
        return Ok(FetchedFrom::Import);
    }
    if mode == FetchMode::Offline || pin.urls.is_empty() {
        return Err(FetchError::NotInStoreOffline {
            label: expected.label,
            file_name: pin.name.clone(),
            import_dir: store.import_dir(),
        });
    }
    let mut attempts = Vec::new();
    for url in &pin.urls {
        let work = store.temp_dir()?;
        let destination = work.path().join("download");
        match download_url(url, &destination, on_progress) {
            Ok(()) => match store.insert_owned_file(&destination, &expected) {
                Ok(_) => return Ok(FetchedFrom::Network),
                Err(error) => attempts.push(format!("{url}: {error}")),
            },
            Err(message) => attempts.push(format!("{url}: {message}")),
        }
    }
    Err(FetchError::TarballUnreachable {
        name: pin.name.clone(),
        attempts: attempts.join("; "),
        import_dir: store.import_dir(),
    })
}

/// `curl` one URL to `destination`; the error is curl's own message.
fn download_url(
    url: &str,
    destination: &Path,
    on_progress: &mut dyn FnMut(u64),
) -> Result<(), String> {
    let mut command = Command::new("curl");
    apt::die_with_parent(&mut command);
    command
        .args([
            "--fail",
            "--location",
            "--silent",
            "--show-error",
            "--proto",
            "=https,http",
            "--output",
        ])
        .arg(destination)
        .arg(url);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|error| format!("cannot run curl: {error}"))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(error) => return Err(format!("cannot wait for curl: {error}")),
        }
        on_progress(
            std::fs::metadata(destination)
                .map(|metadata| metadata.len())
                .unwrap_or(0),
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    Err(format!("curl {status}: {}", tail_lines(stderr.trim(), 3)))
}
