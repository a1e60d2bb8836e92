//! The image pipeline, stage by stage:
//!
//! ```text
//! catalog + profile ─► plan (order, options, init.json, kernel needs)      nothing read yet
//! kiln.lock ─► pins of the profile's modules ─► store (fetch, verified)     kiln-fetch
//! .deb ─► OCI image in the store (deterministic layer), cached by digest   kiln-oci
//! kernel: --kernel-artifact, or built from the pinned source (cached by key) kiln-kernel
//! kernel .config ◄─ every module's kernel options (checked before writing)  kiln-compose
//! layers in profile order + files + crates + modules.tar + generated files  kiln-compose
//! tree ─► newc + zstd or lz4 initramfs (the profile's `compression:`)        kiln-archive
//! out/<name>/<arch>/: vmlinuz, initramfs, cmdline, boot.ipxe, tar.gz, manifest, SHA256SUMS
//! ```
//!
//! A build whose every input (the build key) equals the one recorded in the output's
//! `manifest.json`, and whose outputs still match their `SHA256SUMS`, does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kiln_archive::{
    ArchivePath, Compression, Content, Entry, EntryKind, InitramfsOptions, ZstdSettings,
};
use kiln_compose::{check_kernel_options, ComposedTree, FileRecord};
use kiln_fetch::FetchMode;
use kiln_image::{ImageArch, Manifest, ManifestInput, OutputRequest};
use kiln_kernel::{BuildObserver, KernelArtifact, KernelCache};
use kiln_lock::{DebianPackagePin, Lock, TargetArch};
use kiln_spec::{Catalog, Generator, InitramfsCompression, ModuleSource};
use kiln_store::Store;
use sha2::{Digest, Sha256};

use crate::images::{self, StoredImage};
use crate::plan::{plan_resolved, Plan};

/// The initramfs's zstd level unless asked otherwise: measured on the hook image (55 MB of
/// cpio), level 12 gives 20.8 MB in 5.5 s, level 19 18.6 MB in 35 s (zstd CLI, 2 threads).
pub const DEFAULT_IMAGE_ZSTD_LEVEL: i32 = 12;

/// The kernel source package the kernel is built from (a `build` module pins it).
pub const KERNEL_SOURCE_PACKAGE: &str = "linux-source-6.1";
/// The tarball inside it.
pub const KERNEL_SOURCE_TARBALL: &str = "usr/src/linux-source-6.1.tar.xz";

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The repository (catalog, kiln.lock, kernel-configs, crates).
    pub workspace: PathBuf,
    /// The profile's name.
    pub profile: String,
    /// The target.
    pub arch: ImageArch,
    /// Outputs go to `out_root/<output name>/<arch>/` (each architecture's directory is
    /// replaced as a whole, so building one never disturbs the other's).
    pub out_root: PathBuf,
    /// Store only, never the network.
    pub offline: bool,
    /// Use this kernel artifact directory (with `kernel.json`) instead of building.
    pub kernel_artifact: Option<PathBuf>,
    /// zstd level and workers of the initramfs (the output does not depend on workers).
    pub zstd: ZstdSettings,
    /// The store.
    pub store_root: PathBuf,
    /// Where kernels are built and cached.
    pub kernel_cache: KernelCache,
    /// Cargo's target directory for the crates built into the image.
    pub target_dir: PathBuf,
    /// `make -jN` for a kernel build.
    pub jobs: usize,
    /// How to reach the registries of `image:` sources and `embed_images:` (only used when
    /// an image is not in the store yet).
    pub registry: kiln_registry::RegistryOptions,
    /// Take the profile's kernel from `REGISTRY/PREFIX/kiln-kernel:<key>` (the key is the
    /// digest of the kernel's inputs) instead of building it.
    pub kernel_registry: Option<String>,
}

/// Progress of a build.
pub trait ImageObserver {
    /// Stage `number` of `total` starts.
    fn stage(&mut self, number: usize, total: usize, label: &str);
    /// A line worth showing (a download, a cache hit, a warning).
    fn note(&mut self, line: &str);
    /// Where kernel build progress goes.
    fn kernel(&mut self) -> &mut dyn BuildObserver;
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct ImageReport {
    /// `out_root/<output name>/<arch>`.
    pub directory: PathBuf,
    /// File name → sha256 (the `SHA256SUMS`).
    pub sha256sums: BTreeMap<String, String>,
    /// True when the outputs were already right (same build key).
    pub up_to_date: bool,
    /// Bytes of file data per module (unpacked).
    pub module_sizes: BTreeMap<String, u64>,
    /// Bytes of the unpacked initramfs's files.
    pub unpacked_bytes: u64,
    /// Bytes of the compressed initramfs.
    pub initramfs_bytes: u64,
    /// How it is compressed (the profile's `compression:`).
    pub compression: InitramfsCompression,
    /// The profile's RAM budget, in MiB.
    pub ram_budget_mib: Option<u64>,
    /// The build key.
    pub build_key: String,
    /// Bytes of file data the profile's `prune:` removed (0 for a no-op build).
    pub pruned_bytes: u64,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Spec(#[from] kiln_spec::SpecError),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Lock(#[from] kiln_lock::LockError),
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error(transparent)]
    Fetch(Box<kiln_fetch::FetchError>),
    #[error("turning {package} into an OCI image: {source}")]
    Oci {
        package: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("image {reference}: {source}")]
    Registry {
        reference: String,
        source: Box<kiln_registry::RegistryError>,
    },
    #[error("the kernel: {0}")]
    Kernel(String),
    #[error("the kernel {release} ({origin}) lacks what the profile's modules need:\n  {}\nadd the options to a fragment under kernel-configs/ (then `cargo xtask kernel` rebuilds), or drop the module", missing.join("\n  "))]
    KernelOptions {
        release: String,
        origin: String,
        missing: Vec<String>,
    },
    #[error("module `{module}` loads kernel module `{kernel_module}`, which kernel {release} has neither as a module (modules.dep) nor built in (modules.builtin): enable it in kernel-configs/ or drop it from the module's `kernel.modules`")]
    KernelModule {
        module: String,
        kernel_module: String,
        release: String,
    },
    #[error(transparent)]
    Compose(#[from] kiln_compose::ComposeError),
    #[error(transparent)]
    Archive(#[from] kiln_archive::ArchiveError),
    #[error(transparent)]
    Output(#[from] kiln_image::OutputError),
    #[error(transparent)]
    Crate(#[from] kiln_image::init_binary::InitBuildError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl From<kiln_fetch::FetchError> for ImageError {
    fn from(error: kiln_fetch::FetchError) -> Self {
        ImageError::Fetch(Box::new(error))
    }
}

fn io_error<'path>(
    action: &'static str,
    path: &'path Path,
) -> impl FnOnce(std::io::Error) -> ImageError + 'path {
    move |source| ImageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

const STAGES: usize = 8;

/// Builds the image `request` asks for.
pub fn build_image(
    request: &ImageRequest,
    observer: &mut dyn ImageObserver,
) -> Result<ImageReport, ImageError> {
    observer.stage(
        1,
        STAGES,
        &format!(
            "plan profile `{}` for {}",
            request.profile,
            request.arch.name()
        ),
    );
    let catalog = Catalog::load(&request.workspace)?;
    let profile = catalog.resolve_profile(&request.profile)?;
    let plan = plan_resolved(&catalog, profile, request.arch)?;
    let lock_path = request.workspace.join(kiln_lock::LOCK_FILE_NAME);
    let lock = Lock::read(&lock_path)?;
    let epoch = u32::try_from(lock.source_date_epoch).map_err(|_| {
        ImageError::Other(format!(
            "{}: source_date_epoch {} does not fit newc's 32-bit mtime",
            lock_path.display(),
            lock.source_date_epoch
        ))
    })?;
    let target = target_arch(request.arch);
    let module_refs: Vec<(&str, &kiln_spec::ModuleSpec)> = plan
        .modules
        .iter()
        .map(|module| (module.name.as_str(), &module.spec))
        .collect();
    let pins = lock.debian_packages_for_modules(target, &module_refs)?;

    observer.stage(
        2,
        STAGES,
        &format!("fetch {} pinned Debian packages", pins.len()),
    );
    let store = Store::open(&request.store_root)?;
    let mode = if request.offline {
        FetchMode::Offline
    } else {
        FetchMode::Online
    };
    let from_apt = packages_from_apt(&store, &pins)?;
    let summary = kiln_fetch::fetch_debian_packages(&store, target, &from_apt, mode, &mut |_| {})?;
    for name in summary.downloaded.iter().chain(&summary.imported) {
        observer.note(&format!("fetched {name}"));
    }
    // Images by digest: modules' `image:` sources, then the profile's `embed_images:`.
    let layout = kiln_oci::OciLayout::open_or_create(store.oci_layout_dir())
        .map_err(|error| ImageError::Other(format!("the store's OCI layout: {error}")))?;
    let mut module_images: BTreeMap<String, StoredImage> = BTreeMap::new();
    for module in &plan.modules {
        for reference in module.spec.images() {
            let pin = lock.oci_image(
                target,
                reference.as_str(),
                &format!("module:{}", module.name),
            )?;
            let (image, downloaded) =
                images::ensure_pulled(&layout, pin, target, &request.registry, request.offline)?;
            if downloaded {
                observer.note(&format!("pulled {}", pin.pinned_reference()));
            }
            module_images.insert(reference.to_string(), image);
        }
    }
    let mut embedded: Vec<StoredImage> = Vec::new();
    for reference in &plan.profile.embed_images {
        let pin = embedded_image_pin(&lock, target, reference.as_str(), &plan.profile.name)?;
        let (image, downloaded) =
            images::ensure_pulled(&layout, pin, target, &request.registry, request.offline)?;
        if downloaded {
            observer.note(&format!("pulled {}", pin.pinned_reference()));
        }
        embedded.push(image);
    }

    observer.stage(3, STAGES, "kernel");
    let kernel = kernel_artifact(request, &plan, &lock, &store, epoch, observer)?;
    // In the store's layout too, so `cargo xtask push` mirrors the kernel with the rest.
    crate::kernel_oci::store_kernel_image(&layout, &kernel)?;
    let kernel_config = fs::read_to_string(kernel.config_path())
        .map_err(io_error("reading", &kernel.config_path()))?;
    check_kernel_config(
        &plan,
        &kernel_config,
        &kernel.release,
        &kernel_origin(&kernel),
    )?;

    observer.stage(4, STAGES, "build workspace crates for the target");
    let mut crate_binaries: BTreeMap<String, PathBuf> = BTreeMap::new();
    for module in &plan.modules {
        for source in &module.spec.sources {
            if let ModuleSource::Crate(source) = source {
                if !crate_binaries.contains_key(&source.package) {
                    let binary = kiln_image::init_binary::build_crate_binary(
                        &request.workspace,
                        &request.target_dir,
                        request.arch,
                        &source.package,
                    )?;
                    crate_binaries.insert(source.package.clone(), binary);
                }
            }
        }
    }

    let build_key = build_key(request, &plan, &lock, &kernel, &crate_binaries, &catalog)?;
    let output_dir = request
        .out_root
        .join(&plan.profile.output_name)
        .join(request.arch.name());
    let cache_key = cache_key(&build_key);
    let cache_stamp = cache_stamp_path(&request.store_root, &output_dir);
    if let Some(report) = up_to_date(&output_dir, &build_key, &cache_stamp, &cache_key, &plan)? {
        observer.note(&format!(
            "{} is up to date (build key {})",
            output_dir.display(),
            &build_key[..16]
        ));
        return Ok(report);
    }

    observer.stage(5, STAGES, "Debian packages to OCI layers");
    let mut layers: BTreeMap<String, PathBuf> = BTreeMap::new();
    for pin in &pins {
        let access = MirrorAccess {
            registry: &request.registry,
            offline: request.offline,
        };
        layers.insert(
            pin.name.clone(),
            debian_layer(&store, pin, target, epoch, &access)?,
        );
    }

    observer.stage(6, STAGES, "compose module layers");
    let mut tree = ComposedTree::new();
    let mut applied: BTreeSet<String> = BTreeSet::new();
    let mut package_modules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for module in &plan.modules {
        for pin in
            lock.debian_packages_for_modules(target, &[(module.name.as_str(), &module.spec)])?
        {
            package_modules
                .entry(pin.name.clone())
                .or_default()
                .push(module.name.clone());
            if applied.insert(pin.name.clone()) {
                let layer = &layers[&pin.name];
                let file = fs::File::open(layer).map_err(io_error("opening layer", layer))?;
                tree.apply_layer(&module.name, BufReader::new(file))?;
            }
        }
        for source in &module.spec.sources {
            match source {
                ModuleSource::Files(directory) => {
                    add_files(&mut tree, &module.name, &module.directory.join(directory))?
                }
                ModuleSource::Crate(source) => {
                    let binary = &crate_binaries[&source.package];
                    let size = fs::metadata(binary)
                        .map_err(io_error("reading", binary))?
                        .len();
                    let path = archive_path(&source.path)?;
                    tree.add(
                        &module.name,
                        Entry::file(
                            path,
                            0o755,
                            Content::File {
                                path: binary.clone(),
                                size,
                            },
                        ),
                    )?;
                }
                ModuleSource::Image(reference) => images::apply_image(
                    &mut tree,
                    &module.name,
                    &layout,
                    &module_images[reference.as_str()],
                )?,
                ModuleSource::Debian(_) | ModuleSource::Tarball(_) => {}
            }
        }
    }
    let modules_tar = kernel.modules_tar_path();
    let modules_file = fs::File::open(&modules_tar).map_err(io_error("opening", &modules_tar))?;
    tree.apply_layer("kernel", BufReader::new(modules_file))?;

    let mut init_config = plan.init_config.clone();
    init_config.kernel_modules = kernel_modules_to_load(&plan, &kernel)?;
    // The image's /etc/hostname (base ships `kiln`) until DHCP or ipam= names the machine.
    if let Some(EntryKind::File(content)) = tree
        .get(&archive_path("etc/hostname")?)
        .map(|composed| &composed.entry.kind)
    {
        let bytes = match content {
            Content::Bytes(bytes) => bytes.to_vec(),
            Content::File { path, .. } => fs::read(path).map_err(io_error("reading", path))?,
        };
        let name = String::from_utf8_lossy(&bytes).trim().to_owned();
        if !name.is_empty() {
            init_config.hostname = Some(name);
        }
    }
    let init_json = serde_json::to_vec_pretty(&init_config)
        .map_err(|error| ImageError::Other(format!("serializing init.json: {error}")))?;
    add_generated(&mut tree, "init", "etc/kiln/init.json", 0o644, init_json)?;
    for directory in [
        "dev", "proc", "sys", "run", "tmp", "var", "var/log", "etc/kiln",
    ] {
        if tree.get(&archive_path(directory)?).is_none() {
            let permissions = if directory == "tmp" { 0o1777 } else { 0o755 };
            tree.add(
                "init",
                Entry::directory(archive_path(directory)?, permissions),
            )?;
        }
    }
    // The kernel opens /dev/console for PID 1 before devtmpfs is mounted.
    tree.add(
        "init",
        Entry {
            path: archive_path("dev/console")?,
            permissions: 0o600,
            uid: 0,
            gid: 0,
            kind: EntryKind::CharDevice { major: 5, minor: 1 },
        },
    )?;
    for module in &plan.modules {
        for generator in &module.spec.generate {
            match generator {
                Generator::CaBundle => {
                    let bundle = ca_bundle(&tree)?;
                    add_generated(
                        &mut tree,
                        &module.name,
                        "etc/ssl/certs/ca-certificates.crt",
                        0o644,
                        bundle,
                    )?;
                }
                Generator::OsRelease => {
                    let text = os_release(&plan, &build_key, epoch);
                    add_generated(
                        &mut tree,
                        &module.name,
                        "etc/os-release",
                        0o644,
                        text.into_bytes(),
                    )?;
                }
                Generator::BusyboxLinks => add_busybox_links(&mut tree, &module.name)?,
            }
        }
    }

    let mut pruned_bytes = 0;
    for path in &plan.profile.prune {
        pruned_bytes += if path.split('/').any(|component| component == "*") {
            tree.prune_matching(path)
        } else {
            tree.prune(&archive_path(path)?)
        };
    }
    // After pruning: an embedded image is shipped whole, whatever paths its blobs have.
    if !embedded.is_empty() {
        let bytes = images::embed_images(&mut tree, &layout, &embedded)?;
        observer.note(&format!(
            "embedded {} image(s) at /{}: {bytes} bytes",
            embedded.len(),
            images::EMBEDDED_IMAGES_DIRECTORY
        ));
    }

    observer.stage(
        7,
        STAGES,
        &match plan.profile.compression {
            InitramfsCompression::Zstd => format!("initramfs (zstd level {})", request.zstd.level),
            InitramfsCompression::Lz4 => "initramfs (lz4)".to_owned(),
        },
    );
    let mut archive_tree = tree.to_archive_tree();
    archive_tree.complete()?;
    let unpacked_bytes = archive_tree.content_bytes();
    let work = tempfile::Builder::new()
        .prefix(".kiln-image-")
        .tempdir_in(store.root())
        .map_err(io_error("creating a work directory in", store.root()))?;
    let initramfs = work.path().join("initramfs");
    let options = InitramfsOptions {
        mtime: epoch,
        compression: match plan.profile.compression {
            InitramfsCompression::Zstd => Compression::Zstd(request.zstd),
            InitramfsCompression::Lz4 => Compression::Lz4,
        },
        early: None,
    };
    let summary =
        kiln_archive::write_initramfs_file(&archive_tree, &options, &initramfs, &mut |_| {})?;

    observer.stage(8, STAGES, &format!("write {}", output_dir.display()));
    let mut inputs = Vec::new();
    for pin in &pins {
        inputs.push(ManifestInput {
            kind: "debian-package".to_owned(),
            name: pin.name.clone(),
            version: pin.version.clone(),
            sha256: pin.sha256.clone(),
            required_by: package_modules.get(&pin.name).cloned().unwrap_or_default(),
        });
    }
    for image in module_images.values().chain(&embedded) {
        let users: Vec<String> = image.pin.required_by.clone();
        inputs.push(ManifestInput {
            kind: "oci-image".to_owned(),
            name: image.pin.reference.clone(),
            version: image.pin.pinned_reference(),
            sha256: image.manifest_digest.hex(),
            required_by: users,
        });
    }
    let vmlinuz_sha = kernel
        .files
        .get(kiln_kernel::artifact::IMAGE)
        .map(|record| record.sha256.clone())
        .unwrap_or_default();
    inputs.push(ManifestInput {
        kind: "kernel".to_owned(),
        name: format!("linux {} ({})", kernel.release, kernel_origin(&kernel)),
        version: kernel.key.clone(),
        sha256: vmlinuz_sha,
        required_by: vec!["profile".to_owned()],
    });
    for (package, binary) in &crate_binaries {
        let (digest, _) = kiln_store::hash_file(binary)?;
        let users =
            plan.modules
                .iter()
                .filter(|module| {
                    module.spec.sources.iter().any(
                        |source| matches!(source, ModuleSource::Crate(c) if &c.package == package),
                    )
                })
                .map(|module| module.name.clone())
                .collect();
        inputs.push(ManifestInput {
            kind: "crate".to_owned(),
            name: package.clone(),
            version: format!(
                "{} {}",
                env!("CARGO_PKG_VERSION"),
                kiln_image::init_binary::musl_target(request.arch)
            ),
            sha256: digest.to_hex(),
            required_by: users,
        });
    }
    let module_sizes = tree.bytes_by_module();
    let manifest: Manifest<FileRecord> = Manifest {
        profile: plan.profile.name.clone(),
        build_key: build_key.clone(),
        arch: request.arch,
        source_date_epoch: epoch,
        kernel_cmdline: plan.cmdline.clone(),
        inputs,
        module_sizes: module_sizes.clone(),
        files: tree.file_records()?,
    };
    let written = kiln_image::write_outputs(
        &OutputRequest {
            directory: &output_dir,
            profile: &plan.profile.output_name,
            arch: request.arch,
            kernel_image: &kernel.image_path(),
            initramfs: &initramfs,
            cmdline: &plan.cmdline,
            manifest: &manifest,
        },
        epoch,
    )?;
    write_cache_stamp(&cache_stamp, &cache_key)?;
    Ok(ImageReport {
        directory: written.directory,
        sha256sums: written.sha256sums,
        up_to_date: false,
        module_sizes,
        unpacked_bytes,
        initramfs_bytes: summary.output_bytes,
        ram_budget_mib: plan.profile.ram_budget_mib,
        build_key,
        pruned_bytes,
        compression: plan.profile.compression,
    })
}

/// The pin of an `embed_images:` reference: the lock records the profile that wrote it,
/// which may be one this profile extends.
fn embedded_image_pin<'lock>(
    lock: &'lock Lock,
    target: TargetArch,
    reference: &str,
    profile: &str,
) -> Result<&'lock kiln_lock::OciImagePin, ImageError> {
    lock.architecture(target)?
        .oci_images
        .iter()
        .find(|pin| {
            pin.reference == reference
                && pin
                    .required_by
                    .iter()
                    .any(|reason| reason.starts_with("profile:"))
        })
        .ok_or_else(|| {
            ImageError::Lock(kiln_lock::LockError::ImageNotPinned {
                reference: reference.to_owned(),
                requester: format!("profile:{profile}"),
                arch: target,
            })
        })
}

/// Every kernel option the plan's modules need, against the kernel's `.config` text.
pub fn check_kernel_config(
    plan: &Plan,
    kernel_config: &str,
    release: &str,
    origin: &str,
) -> Result<(), ImageError> {
    check_kernel_options(&plan.kernel_options, kernel_config).map_err(|missing| {
        ImageError::KernelOptions {
            release: release.to_owned(),
            origin: origin.to_owned(),
            missing,
        }
    })
}

/// The lock's name for an image architecture.
pub fn target_arch(arch: ImageArch) -> TargetArch {
    match arch {
        ImageArch::X86_64 => TargetArch::X86_64,
        ImageArch::Aarch64 => TargetArch::Aarch64,
    }
}

fn kernel_arch(arch: ImageArch) -> kiln_kernel::Arch {
    match arch {
        ImageArch::X86_64 => kiln_kernel::Arch::X86_64,
        ImageArch::Aarch64 => kiln_kernel::Arch::Aarch64,
    }
}

fn kernel_origin(kernel: &KernelArtifact) -> String {
    match &kernel.origin {
        kiln_kernel::artifact::ArtifactOrigin::Built { flavor, .. } => format!(
            "flavor {flavor}, key {}",
            &kernel.key[..16.min(kernel.key.len())]
        ),
        kiln_kernel::artifact::ArtifactOrigin::DebianPackage { file_name, .. } => {
            format!("Debian package {file_name}")
        }
    }
}

/// The kernel: the artifact given, else the profile's flavor built from the pinned source
/// (a cache hit when the same inputs were built before).
fn kernel_artifact(
    request: &ImageRequest,
    plan: &Plan,
    lock: &Lock,
    store: &Store,
    epoch: u32,
    observer: &mut dyn ImageObserver,
) -> Result<KernelArtifact, ImageError> {
    if let Some(directory) = &request.kernel_artifact {
        let artifact = KernelArtifact::load(directory)
            .map_err(|error| ImageError::Kernel(error.to_string()))?;
        if artifact.arch != kernel_arch(request.arch) {
            return Err(ImageError::Kernel(format!(
                "{} holds a {} kernel, but the image is for {}",
                directory.display(),
                artifact.arch,
                request.arch.name()
            )));
        }
        return Ok(artifact);
    }
    let flavor_name = match plan.profile.kernel.kind() {
        kiln_spec::KernelKind::Flavor(flavor) => flavor,
        kiln_spec::KernelKind::DebianPackage(packages) => {
            return debian_package_kernel(request, plan, lock, store, epoch, packages, observer)
        }
    };
    let flavor: kiln_kernel::Flavor = flavor_name.parse().map_err(|_| {
        ImageError::Kernel(format!(
            "profile `{}` asks for kernel flavor `{flavor_name}`; kernel-configs/flavor/ has virt and generic",
            plan.profile.name
        ))
    })?;
    let target = target_arch(request.arch);
    let access = MirrorAccess {
        registry: &request.registry,
        offline: request.offline,
    };
    let source = locked_kernel_source(lock, store, target, epoch, &access, &mut |line| {
        observer.note(line)
    })?;
    let build = kiln_kernel::BuildRequest {
        source,
        arch: kernel_arch(request.arch),
        flavor,
        config_dir: request.workspace.join("kernel-configs"),
        source_date_epoch: u64::from(epoch),
        jobs: request.jobs,
    };
    if let Some(registry_prefix) = &request.kernel_registry {
        let inputs = kiln_kernel::build::prepare_inputs(&build)
            .map_err(|error| ImageError::Kernel(error.to_string()))?;
        let layout = kiln_oci::OciLayout::open_or_create(store.oci_layout_dir())
            .map_err(|error| ImageError::Other(format!("the store's OCI layout: {error}")))?;
        observer.note(&format!(
            "kernel {} from {registry_prefix}/{}:{}",
            build.flavor,
            crate::kernel_oci::KERNEL_REPOSITORY,
            inputs.key
        ));
        return crate::kernel_oci::fetch_kernel_from_registry(
            registry_prefix,
            &inputs.key,
            build.arch,
            &layout,
            &request.kernel_cache,
            &request.registry,
        );
    }
    kiln_kernel::build_kernel(&build, &request.kernel_cache, observer.kernel())
        .map_err(|error| ImageError::Kernel(error.to_string()))
}

/// The profile's prebuilt Debian kernel: the `linux-image-*` package the lock pins for this
/// profile and architecture, fetched into the store (apt, unless offline), imported into
/// the kernel cache once (keyed by the package's sha256).
fn debian_package_kernel(
    request: &ImageRequest,
    plan: &Plan,
    lock: &Lock,
    store: &Store,
    epoch: u32,
    packages: &kiln_spec::DebianKernelPackages,
    observer: &mut dyn ImageObserver,
) -> Result<KernelArtifact, ImageError> {
    let target = target_arch(request.arch);
    let profile = &plan.profile.name;
    let package = packages.for_arch(target.name()).ok_or_else(|| {
        ImageError::Kernel(format!(
            "profile `{profile}` takes its kernel from a Debian package but names none for {target}: add `{target}: linux-image-...` under `kernel: {{debian_package: ...}}` in {}",
            plan.profile.files.last().map_or_else(|| format!("profiles/{profile}.yaml"), |path| path.display().to_string())
        ))
    })?;
    let reason = format!("profile:{profile}");
    let pin = lock
        .architecture(target)?
        .debian_packages
        .iter()
        .find(|pin| pin.name == package && pin.required_by.contains(&reason))
        .ok_or_else(|| {
            ImageError::Kernel(format!(
                "kiln.lock pins no {package} ({}) for {reason}: run `cargo xtask lock`",
                target.debian_architecture()
            ))
        })?;
    let mode = if request.offline {
        FetchMode::Offline
    } else {
        FetchMode::Online
    };
    observer.note(&format!(
        "kernel: Debian package {} {} ({})",
        pin.name, pin.version, pin.architecture
    ));
    kiln_fetch::fetch_debian_packages(store, target, &[pin], mode, &mut |_| {})?;
    let deb = store.blob_path(&kiln_store::Sha256Digest::parse(&pin.sha256)?);
    kiln_kernel::debian_package::import_debian_package(
        &deb,
        &pin.sha256,
        kernel_arch(request.arch),
        u64::from(epoch),
        &request.kernel_cache,
    )
    .map_err(|error| ImageError::Kernel(format!("importing {} {}: {error}", pin.name, pin.version)))
}

/// The kernel source tarball of the `linux-source-6.1` package `lock` pins for `target`:
/// the `.deb` fetched into the store (unless `offline`), the tarball unpacked from it once
/// and kept under `state/kernel-source/<deb sha256>/`.
pub fn locked_kernel_source(
    lock: &Lock,
    store: &Store,
    target: TargetArch,
    epoch: u32,
    access: &MirrorAccess<'_>,
    note: &mut dyn FnMut(&str),
) -> Result<kiln_kernel::KernelSource, ImageError> {
    let pin = lock.architecture(target)?.debian_packages.iter().find(|pin| pin.name == KERNEL_SOURCE_PACKAGE).ok_or_else(|| {
        ImageError::Kernel(format!("kiln.lock pins no {KERNEL_SOURCE_PACKAGE} for {target}: run `cargo xtask lock` (module kernel-source asks for it)"))
    })?;
    let mode = if access.offline {
        FetchMode::Offline
    } else {
        FetchMode::Online
    };
    let from_apt = packages_from_apt(store, &[pin])?;
    kiln_fetch::fetch_debian_packages(store, target, &from_apt, mode, &mut |_| {})?;
    kernel_source_tarball(store, pin, target, epoch, access, note)
}

/// How a build reaches a mirror registry for packages the lock gives a `mirror` for.
#[derive(Debug, Clone, Copy)]
pub struct MirrorAccess<'options> {
    /// Registry options (CA files, credentials, insecure registries).
    pub registry: &'options kiln_registry::RegistryOptions,
    /// The store only.
    pub offline: bool,
}

/// The pins apt must fetch: all but those the lock mirrors whose `.deb` is not in the
/// store (their OCI image is pulled from the mirror instead, in [`debian_layer`]).
fn packages_from_apt<'lock>(
    store: &Store,
    pins: &[&'lock DebianPackagePin],
) -> Result<Vec<&'lock DebianPackagePin>, ImageError> {
    let mut from_apt = Vec::new();
    for pin in pins {
        let deb_in_store = store.contains(&kiln_store::Sha256Digest::parse(&pin.sha256)?);
        if pin.mirror.is_none() || deb_in_store {
            from_apt.push(*pin);
        }
    }
    Ok(from_apt)
}

/// The kernel source tarball from the pinned `linux-source` package, unpacked once into the
/// store's state (with its sha256 beside it, so later builds do not hash 140 MB again).
fn kernel_source_tarball(
    store: &Store,
    pin: &DebianPackagePin,
    target: TargetArch,
    epoch: u32,
    access: &MirrorAccess<'_>,
    note: &mut dyn FnMut(&str),
) -> Result<kiln_kernel::KernelSource, ImageError> {
    let directory = store.state_dir("kernel-source")?.join(&pin.sha256);
    let tarball = directory.join("linux-source.tar.xz");
    let digest_file = directory.join("linux-source.tar.xz.sha256");
    if let (true, Ok(sha256)) = (tarball.is_file(), fs::read_to_string(&digest_file)) {
        return Ok(kiln_kernel::KernelSource {
            tarball,
            sha256: sha256.trim().to_owned(),
        });
    }
    note(&format!(
        "unpacking {KERNEL_SOURCE_TARBALL} from {} {}",
        pin.name, pin.version
    ));
    let layer = debian_layer(store, pin, target, epoch, access)?;
    let partial = tempfile::Builder::new()
        .prefix(".kernel-source-")
        .tempdir_in(store.state_dir("kernel-source")?)
        .map_err(io_error("creating", store.root()))?;
    let file = fs::File::open(&layer).map_err(io_error("opening", &layer))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut found = false;
    for entry in archive.entries().map_err(io_error("reading", &layer))? {
        let mut entry = entry.map_err(io_error("reading", &layer))?;
        let path = entry
            .path()
            .map_err(io_error("reading", &layer))?
            .into_owned();
        if path == Path::new(KERNEL_SOURCE_TARBALL) {
            let destination = partial.path().join("linux-source.tar.xz");
            let mut out =
                fs::File::create(&destination).map_err(io_error("creating", &destination))?;
            std::io::copy(&mut entry, &mut out).map_err(io_error("writing", &destination))?;
            out.sync_all().map_err(io_error("syncing", &destination))?;
            found = true;
            break;
        }
    }
    if !found {
        return Err(ImageError::Kernel(format!(
            "{} {} has no {KERNEL_SOURCE_TARBALL}",
            pin.name, pin.version
        )));
    }
    let (digest, _) = kiln_store::hash_file(&partial.path().join("linux-source.tar.xz"))?;
    fs::write(
        partial.path().join("linux-source.tar.xz.sha256"),
        digest.to_hex(),
    )
    .map_err(io_error("writing", partial.path()))?;
    let _ = fs::remove_dir_all(&directory);
    let kept = partial.keep();
    fs::rename(&kept, &directory).map_err(io_error("renaming into", &directory))?;
    Ok(kiln_kernel::KernelSource {
        tarball,
        sha256: digest.to_hex(),
    })
}

/// The uncompressed layer of the OCI image made from `pin`'s `.deb`, made once per
/// package digest, architecture and epoch (recorded under `state/deb-layers/`).
pub fn debian_layer(
    store: &Store,
    pin: &DebianPackagePin,
    target: TargetArch,
    epoch: u32,
    access: &MirrorAccess<'_>,
) -> Result<PathBuf, ImageError> {
    let records = store.state_dir("deb-layers")?;
    let record = records.join(format!(
        "{}-{}-{epoch}",
        pin.sha256,
        target.debian_architecture()
    ));
    if let Ok(text) = fs::read_to_string(&record) {
        if let Ok(digest) = kiln_store::Sha256Digest::parse(text.trim()) {
            let path = store.blob_path(&digest);
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    let oci_error = |source: Box<dyn std::error::Error + Send + Sync>| ImageError::Oci {
        package: format!("{} {}", pin.name, pin.version),
        source,
    };
    let layout = kiln_oci::OciLayout::open_or_create(store.oci_layout_dir())
        .map_err(|error| oci_error(Box::new(error)))?;
    let digest = kiln_store::Sha256Digest::parse(&pin.sha256)?;
    let reference = kiln_oci::debian_package_reference_name(
        &pin.name,
        &pin.version,
        target.debian_architecture(),
    );
    if let (Some(mirror), false) = (&pin.mirror, store.contains(&digest)) {
        let layer_hex =
            images::debian_layer_from_mirror(&layout, pin, mirror, &reference, target, access)?;
        kiln_archive::write_file_atomically(&record, |file| {
            std::io::Write::write_all(file, layer_hex.as_bytes())
                .map_err(|source| kiln_archive::ArchiveError::io(&record, "writing", source))
        })?;
        return Ok(store.blob_path(&kiln_store::Sha256Digest::parse(&layer_hex)?));
    }
    let platform = match target {
        TargetArch::X86_64 => kiln_oci::OciPlatform::LinuxAmd64,
        TargetArch::Aarch64 => kiln_oci::OciPlatform::LinuxArm64,
    };
    let built = kiln_oci::image_from_deb_file(
        &layout,
        &store.blob_path(&digest),
        platform,
        kiln_oci::SourceDateEpoch::from_seconds(u64::from(epoch)),
    )
    .map_err(|error| oci_error(Box::new(error)))?;
    layout
        .add_manifest_ref(&reference, &built.image.manifest)
        .map_err(|error| oci_error(Box::new(error)))?;
    let layer_hex = built.image.layer_digest.hex();
    kiln_archive::write_file_atomically(&record, |file| {
        std::io::Write::write_all(file, layer_hex.as_bytes())
            .map_err(|source| kiln_archive::ArchiveError::io(&record, "writing", source))
    })?;
    Ok(store.blob_path(&kiln_store::Sha256Digest::parse(&layer_hex)?))
}

fn archive_path(path: &str) -> Result<ArchivePath, ImageError> {
    Ok(ArchivePath::new(path.trim_start_matches('/'))?)
}

fn add_generated(
    tree: &mut ComposedTree,
    module: &str,
    path: &str,
    permissions: u32,
    bytes: Vec<u8>,
) -> Result<(), ImageError> {
    tree.add(
        module,
        Entry::file(
            archive_path(path)?,
            permissions,
            Content::Bytes(bytes.into()),
        ),
    )?;
    Ok(())
}

/// A module's `files:` directory into the tree: owners 0:0, directories 0755, files 0755
/// when the checkout marks them executable and 0644 otherwise (what git records), so the
/// checkout's umask and user never reach the image.
pub fn add_files(
    tree: &mut ComposedTree,
    module: &str,
    directory: &Path,
) -> Result<(), ImageError> {
    if !directory.is_dir() {
        return Err(ImageError::Other(format!(
            "module `{module}`: `files: ` names {}, which is not a directory",
            directory.display()
        )));
    }
    let mut stack = vec![directory.to_path_buf()];
    let mut found: Vec<PathBuf> = Vec::new();
    while let Some(current) = stack.pop() {
        for item in fs::read_dir(&current).map_err(io_error("reading", &current))? {
            let path = item.map_err(io_error("reading", &current))?.path();
            let metadata = fs::symlink_metadata(&path).map_err(io_error("reading", &path))?;
            if metadata.is_dir() {
                stack.push(path.clone());
            }
            found.push(path);
        }
    }
    found.sort();
    for path in found {
        let relative = path.strip_prefix(directory).map_err(|_| {
            ImageError::Other(format!(
                "{} escapes {}",
                path.display(),
                directory.display()
            ))
        })?;
        if relative.file_name().is_some_and(|name| name == ".keep") {
            continue;
        }
        let name = relative
            .to_str()
            .ok_or_else(|| ImageError::Other(format!("{}: not UTF-8", path.display())))?;
        let archive = archive_path(name)?;
        let metadata = fs::symlink_metadata(&path).map_err(io_error("reading", &path))?;
        let entry = if metadata.is_dir() {
            Entry::directory(archive, 0o755)
        } else if metadata.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io_error("reading", &path))?;
            Entry::symlink(archive, target.as_os_str().as_encoded_bytes().to_vec())
        } else if metadata.is_file() {
            let permissions = if metadata.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            Entry::file(
                archive,
                permissions,
                Content::File {
                    path: path.clone(),
                    size: metadata.len(),
                },
            )
        } else {
            return Err(ImageError::Other(format!(
                "module `{module}`: {} is a device, fifo or socket; module files may be files, directories and symlinks",
                path.display()
            )));
        };
        tree.add(module, entry)?;
    }
    Ok(())
}

/// What the image's busybox links for itself at boot with `busybox --install -s`, added to
/// the tree instead: `<applet path> -> /bin/busybox` for every applet of the tree's
/// `bin/busybox` (read from its tables, [`crate::busybox_applets`]). Like `--install -s`, a
/// path the tree already has is kept (a real binary of a later module, base's `bin/sh`); a
/// path below a symlink is skipped, where `--install -s` would write through it. Unlike it,
/// a missing directory (`sbin`) is made rather than its applets lost.
fn add_busybox_links(tree: &mut ComposedTree, module: &str) -> Result<(), ImageError> {
    const BUSYBOX: &str = "/bin/busybox";
    let binary = match tree.get(&archive_path(BUSYBOX)?).map(|composed| &composed.entry.kind) {
        Some(EntryKind::File(Content::Bytes(bytes))) => bytes.to_vec(),
        Some(EntryKind::File(Content::File { path, .. })) => {
            fs::read(path).map_err(io_error("reading", path))?
        }
        None => {
            return Err(ImageError::Other(
                "generator `busybox-links`: no /bin/busybox in the image; the module needs busybox-static".to_owned(),
            ))
        }
        Some(_) => {
            return Err(ImageError::Other(
                "generator `busybox-links`: /bin/busybox in the image is not a regular file (a symlink or hard link); the links need the busybox binary itself there".to_owned(),
            ))
        }
    };
    let paths = crate::busybox_applets::applet_paths(&binary).map_err(|error| {
        ImageError::Other(format!(
            "generator `busybox-links`: reading the applet tables of /bin/busybox: {error}"
        ))
    })?;
    for path in paths {
        let path = archive_path(&path)?;
        if tree.get(&path).is_some() || below_symlink(tree, &path) {
            continue;
        }
        tree.add(module, Entry::symlink(path, BUSYBOX))?;
    }
    Ok(())
}

/// Whether a directory above `path` is a symlink in the tree.
fn below_symlink(tree: &ComposedTree, path: &ArchivePath) -> bool {
    let mut ancestor = path.parent();
    while let Some(parent) = ancestor {
        if let Some(composed) = tree.get(&parent) {
            if matches!(composed.entry.kind, EntryKind::Symlink { .. }) {
                return true;
            }
        }
        ancestor = parent.parent();
    }
    false
}

/// Every `usr/share/ca-certificates/**.crt` of the tree, sorted by path, concatenated.
fn ca_bundle(tree: &ComposedTree) -> Result<Vec<u8>, ImageError> {
    let mut bundle = Vec::new();
    let mut count = 0;
    for composed in tree.entries() {
        let path = composed.entry.path.display();
        if !(path.starts_with("usr/share/ca-certificates/") && path.ends_with(".crt")) {
            continue;
        }
        let EntryKind::File(content) = &composed.entry.kind else {
            continue;
        };
        let bytes = match content {
            Content::Bytes(bytes) => bytes.to_vec(),
            Content::File { path, .. } => fs::read(path).map_err(io_error("reading", path))?,
        };
        bundle.extend_from_slice(&bytes);
        if !bytes.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        count += 1;
    }
    if count == 0 {
        return Err(ImageError::Other(
            "generator `ca-bundle`: no /usr/share/ca-certificates/**/*.crt in the image; the module needs the ca-certificates package".to_owned(),
        ));
    }
    Ok(bundle)
}

fn os_release(plan: &Plan, build_key: &str, epoch: u32) -> String {
    format!(
        "NAME=\"kiln\"\nID=kiln\nPRETTY_NAME=\"kiln {profile} ({arch})\"\nVERSION_ID={version}\nVARIANT_ID={profile}\nIMAGE_ID={output}\nBUILD_ID={key}\nKILN_ARCH={arch}\nKILN_SOURCE_DATE_EPOCH={epoch}\n",
        profile = plan.profile.name,
        arch = plan.arch.name(),
        version = env!("CARGO_PKG_VERSION"),
        output = plan.profile.output_name,
        key = &build_key[..16],
    )
}

/// The `.ko` files to load for the modules' `kernel.modules`, dependencies first
/// (`modules.dep`), skipping those built in (`modules.builtin`).
fn kernel_modules_to_load(
    plan: &Plan,
    kernel: &KernelArtifact,
) -> Result<Vec<kiln_init::config::KernelModuleEntry>, ImageError> {
    if plan.kernel_modules.is_empty() {
        return Ok(Vec::new());
    }
    let prefix = format!("lib/modules/{}/", kernel.release);
    let mut dep = String::new();
    let mut builtin = String::new();
    let tar_path = kernel.modules_tar_path();
    let file = fs::File::open(&tar_path).map_err(io_error("opening", &tar_path))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    for entry in archive.entries().map_err(io_error("reading", &tar_path))? {
        let mut entry = entry.map_err(io_error("reading", &tar_path))?;
        let path = entry
            .path()
            .map_err(io_error("reading", &tar_path))?
            .to_string_lossy()
            .into_owned();
        if path == format!("{prefix}modules.dep") {
            entry
                .read_to_string(&mut dep)
                .map_err(io_error("reading", &tar_path))?;
        } else if path == format!("{prefix}modules.builtin") {
            entry
                .read_to_string(&mut builtin)
                .map_err(io_error("reading", &tar_path))?;
        }
    }
    let normalise = |name: &str| -> String {
        let base = name.rsplit('/').next().unwrap_or(name);
        let stem = base.split(".ko").next().unwrap_or(base);
        stem.replace('-', "_")
    };
    let mut dependencies: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        if let Some((module, rest)) = line.split_once(':') {
            dependencies.insert(
                normalise(module),
                (
                    module.to_owned(),
                    rest.split_whitespace().map(str::to_owned).collect(),
                ),
            );
        }
    }
    let builtin: BTreeSet<String> = builtin.lines().map(normalise).collect();
    let mut order: Vec<String> = Vec::new();
    fn visit(
        path: &str,
        dependencies: &BTreeMap<String, (String, Vec<String>)>,
        order: &mut Vec<String>,
        depth: usize,
        normalise: &dyn Fn(&str) -> String,
    ) {
        if depth > 64 || order.iter().any(|seen| seen == path) {
            return;
        }
        if let Some((_, needs)) = dependencies.get(&normalise(path)) {
            for need in needs.iter().rev() {
                visit(need, dependencies, order, depth + 1, normalise);
            }
        }
        order.push(path.to_owned());
    }
    for (module, kernel_module) in &plan.kernel_modules {
        let key = normalise(kernel_module);
        if let Some((path, _)) = dependencies.get(&key) {
            visit(path, &dependencies, &mut order, 0, &normalise);
        } else if !builtin.contains(&key) {
            return Err(ImageError::KernelModule {
                module: module.clone(),
                kernel_module: kernel_module.clone(),
                release: kernel.release.clone(),
            });
        }
    }
    Ok(order
        .into_iter()
        .map(|path| kiln_init::config::KernelModuleEntry {
            path: PathBuf::from(format!("/{prefix}{path}")),
            args: String::new(),
        })
        .collect())
}

/// The image's identity (`BUILD_ID=` in os-release, the manifest's `build_key`): sha256 of
/// the inputs whose bytes make the image (lock, profile and module files, `files:` trees,
/// kernel, crate binaries, level, compression). Nothing of the machine, the checkout path
/// or the builder: two builders that write the same bytes give the same identity, so a
/// refactor that keeps the outputs keeps it too. Whether a rebuild may be skipped is
/// [`cache_key`]'s business, which adds the builder.
fn build_key(
    request: &ImageRequest,
    plan: &Plan,
    lock: &Lock,
    kernel: &KernelArtifact,
    crate_binaries: &BTreeMap<String, PathBuf>,
    catalog: &Catalog,
) -> Result<String, ImageError> {
    let mut hasher = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        hasher.update(name.as_bytes());
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value);
    };
    field("format", b"kiln-image-key 2");
    field("profile", plan.profile.name.as_bytes());
    field("arch", plan.arch.name().as_bytes());
    field("zstd-level", &request.zstd.level.to_le_bytes());
    field("compression", plan.profile.compression.name().as_bytes());
    // Without `mirror` fields: where the bytes come from must not change what is built.
    field(
        "lock",
        lock.without_mirrors().to_canonical_json().as_bytes(),
    );
    for path in &plan.profile.files {
        field(
            "profile-file",
            &fs::read(path).map_err(io_error("reading", path))?,
        );
    }
    for module in &plan.modules {
        let path = catalog.module_path(&module.name);
        field(
            "module",
            &fs::read(&path).map_err(io_error("reading", &path))?,
        );
        for source in &module.spec.sources {
            if let ModuleSource::Files(directory) = source {
                hash_directory(&mut field, &module.directory.join(directory))?;
            }
        }
    }
    field("kernel", kernel.key.as_bytes());
    field(
        "kernel-image",
        kernel
            .files
            .get(kiln_kernel::artifact::IMAGE)
            .map(|record| record.sha256.as_bytes())
            .unwrap_or_default(),
    );
    field(
        "kernel-modules",
        kernel
            .files
            .get(kiln_kernel::artifact::MODULES_TAR)
            .map(|record| record.sha256.as_bytes())
            .unwrap_or_default(),
    );
    for (package, binary) in crate_binaries {
        field("crate", package.as_bytes());
        field(
            "crate-binary",
            &fs::read(binary).map_err(io_error("reading", binary))?,
        );
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The key that makes an unchanged rebuild a no-op: the identity and the builder binary's
/// digest (a change to kiln's code may change what it writes for the same inputs). It never
/// reaches an output; it is kept in the store ([`cache_stamp_path`]).
fn cache_key(build_key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"kiln-image-cache 1\0");
    hasher.update(build_key.as_bytes());
    hasher.update(b"\0");
    match std::env::current_exe().and_then(fs::read) {
        Ok(bytes) => hasher.update(Sha256::digest(&bytes)),
        // Without its own bytes the builder cannot tell whether it changed: never skip.
        Err(_) => hasher.update(b"unknown builder"),
    }
    hex::encode(hasher.finalize())
}

/// Where the cache key of the outputs in `output_dir` is kept: in the store, so that the
/// output directory holds only what a second builder would write byte for byte.
fn cache_stamp_path(store_root: &Path, output_dir: &Path) -> PathBuf {
    let name = hex::encode(Sha256::digest(output_dir.as_os_str().as_encoded_bytes()));
    store_root.join("image-stamps").join(name)
}

/// Records that `output_dir` was written by this builder for `cache_key` (a temporary file
/// of its own, renamed: two builds at once never see half a stamp).
fn write_cache_stamp(stamp: &Path, cache_key: &str) -> Result<(), ImageError> {
    let directory = stamp.parent().unwrap_or(stamp);
    fs::create_dir_all(directory).map_err(io_error("creating", directory))?;
    kiln_archive::write_file_atomically(stamp, |file| {
        std::io::Write::write_all(file, cache_key.as_bytes())
            .map_err(|source| kiln_archive::ArchiveError::io(stamp, "writing", source))
    })?;
    Ok(())
}

fn hash_directory(field: &mut dyn FnMut(&str, &[u8]), directory: &Path) -> Result<(), ImageError> {
    let mut stack = vec![directory.to_path_buf()];
    let mut found = Vec::new();
    while let Some(current) = stack.pop() {
        let Ok(items) = fs::read_dir(&current) else {
            continue;
        };
        for item in items {
            let path = item.map_err(io_error("reading", &current))?.path();
            let metadata = fs::symlink_metadata(&path).map_err(io_error("reading", &path))?;
            if metadata.is_dir() {
                stack.push(path.clone());
            }
            found.push((path, metadata));
        }
    }
    found.sort_by(|left, right| left.0.cmp(&right.0));
    for (path, metadata) in found {
        field(
            "path",
            path.strip_prefix(directory)
                .unwrap_or(&path)
                .as_os_str()
                .as_encoded_bytes(),
        );
        if metadata.file_type().is_symlink() {
            field(
                "symlink",
                fs::read_link(&path)
                    .map_err(io_error("reading", &path))?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if metadata.is_file() {
            field(
                "executable",
                &[u8::from(metadata.permissions().mode() & 0o111 != 0)],
            );
            field(
                "contents",
                &fs::read(&path).map_err(io_error("reading", &path))?,
            );
        }
    }
    Ok(())
}

/// The previous outputs, if this builder made them from the same inputs (the stamp in the
/// store holds the same cache key) and they still match their `SHA256SUMS`.
fn up_to_date(
    directory: &Path,
    build_key: &str,
    cache_stamp: &Path,
    cache_key: &str,
    plan: &Plan,
) -> Result<Option<ImageReport>, ImageError> {
    if fs::read_to_string(cache_stamp).ok().as_deref() != Some(cache_key) {
        return Ok(None);
    }
    let Ok(text) = fs::read_to_string(directory.join("manifest.json")) else {
        return Ok(None);
    };
    let Ok(manifest) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(None);
    };
    if manifest["build_key"].as_str() != Some(build_key) {
        return Ok(None);
    }
    let Ok(sums) = fs::read_to_string(directory.join("SHA256SUMS")) else {
        return Ok(None);
    };
    let mut sha256sums = BTreeMap::new();
    for line in sums.lines() {
        let Some((digest, name)) = line.split_once("  ") else {
            return Ok(None);
        };
        let path = directory.join(name);
        let Ok((actual, _)) = kiln_store::hash_file(&path) else {
            return Ok(None);
        };
        if actual.to_hex() != digest {
            return Ok(None);
        }
        sha256sums.insert(name.to_owned(), digest.to_owned());
    }
    let module_sizes: BTreeMap<String, u64> =
        serde_json::from_value(manifest["module_sizes"].clone()).unwrap_or_default();
    let unpacked_bytes = manifest["files"].as_array().map_or(0, |files| {
        files.iter().filter_map(|file| file["size"].as_u64()).sum()
    });
    let initramfs = directory.join(kiln_image::initramfs_file_name(plan.arch));
    let initramfs_bytes = fs::metadata(&initramfs)
        .map(|metadata| metadata.len())
        .unwrap_or(0);
    Ok(Some(ImageReport {
        directory: directory.to_path_buf(),
        sha256sums,
        up_to_date: true,
        module_sizes,
        unpacked_bytes,
        initramfs_bytes,
        ram_budget_mib: plan.profile.ram_budget_mib,
        build_key: build_key.to_owned(),
        pruned_bytes: 0,
        compression: plan.profile.compression,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> ArchivePath {
        ArchivePath::new(text).unwrap()
    }

    fn kind(tree: &ComposedTree, text: &str) -> Option<(EntryKind, String)> {
        tree.get(&path(text))
            .map(|composed| (composed.entry.kind.clone(), composed.module.clone()))
    }

    fn link() -> EntryKind {
        EntryKind::Symlink {
            target: b"/bin/busybox".to_vec(),
        }
    }

    #[test]
    fn busybox_links_are_added_where_nothing_is_and_not_below_a_symlink() {
        let busybox = crate::busybox_applets::tests::binary(
            &[
                "[", "[[", "cat", "linuxrc", "modprobe", "sh", "wget", "zcat",
            ],
            &[3, 3, 1, 0, 2, 1, 3, 4],
        );
        let mut tree = ComposedTree::new();
        tree.add(
            "base",
            Entry::file(path("bin/busybox"), 0o755, Content::Bytes(busybox.into())),
        )
        .unwrap();
        tree.add("base", Entry::symlink(path("bin/sh"), "busybox"))
            .unwrap();
        tree.add(
            "wget",
            Entry::file(
                path("usr/bin/wget"),
                0o755,
                Content::Bytes(Vec::new().into()),
            ),
        )
        .unwrap();
        tree.add("merged", Entry::symlink(path("usr/sbin"), "/usr/bin"))
            .unwrap();

        add_busybox_links(&mut tree, "base").unwrap();

        for added in [
            "usr/bin/[",
            "usr/bin/[[",
            "bin/cat",
            "linuxrc",
            "sbin/modprobe",
        ] {
            assert_eq!(
                kind(&tree, added),
                Some((link(), "base".to_owned())),
                "{added}"
            );
        }
        // Kept as they were.
        assert_eq!(
            kind(&tree, "bin/sh"),
            Some((
                EntryKind::Symlink {
                    target: b"busybox".to_vec()
                },
                "base".to_owned()
            ))
        );
        assert!(
            matches!(kind(&tree, "usr/bin/wget"), Some((EntryKind::File(_), module)) if module == "wget")
        );
        // usr/sbin is a symlink: usr/sbin/zcat is not written through it.
        assert_eq!(kind(&tree, "usr/sbin/zcat"), None);
        // sbin did not exist: made for the links.
        assert_eq!(
            kind(&tree, "sbin"),
            Some((EntryKind::Directory, "base".to_owned()))
        );
    }

    #[test]
    fn busybox_links_need_bin_busybox() {
        let mut tree = ComposedTree::new();
        let error = add_busybox_links(&mut tree, "base").unwrap_err();
        assert_eq!(
            error.to_string(),
            "generator `busybox-links`: no /bin/busybox in the image; the module needs busybox-static"
        );
        tree.add(
            "base",
            Entry::file(
                path("bin/busybox"),
                0o755,
                Content::Bytes(b"not busybox".to_vec().into()),
            ),
        )
        .unwrap();
        let error = add_busybox_links(&mut tree, "base")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("generator `busybox-links`: reading the applet tables of /bin/busybox: busybox's applet name table"),
            "{error}"
        );
        assert!(
            error.contains("keep `command: [/bin/busybox, --install, -s]`"),
            "{error}"
        );
    }
}
