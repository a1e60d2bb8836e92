//! `cargo xtask push`: push every image of an OCI layout (default: the store's) to a
//! registry, verify each digest by reading it back, and write a JSON report of what was
//! pushed. Also home of the registry options and the transfer progress bars that
//! `cargo xtask pull` shares.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_oci::{OciLayout, Sha256Digest};
use kiln_registry::{
    BlobOutcome, ProxySettings, RegistryCredentials, RegistryOptions, TransferObserver,
};

/// How to reach a registry; shared by `push` and `pull`.
#[derive(Debug, clap::Args)]
pub struct RegistryConnectionArgs {
    /// The registry speaks plain HTTP (never the default; only for the registry of this command).
    #[arg(long)]
    pub insecure: bool,
    /// A PEM file of CA certificates to trust besides the system roots; repeatable.
    #[arg(long = "ca-file")]
    pub ca_files: Vec<PathBuf>,
    /// Docker config file with `auths`. Default: $DOCKER_CONFIG/config.json or ~/.docker/config.json.
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 4)]
    pub max_concurrent_transfers: usize,
}

impl RegistryConnectionArgs {
    /// Options for talking to `registry` (`host:port`), proxies from the environment.
    pub fn options(&self, registry: &str) -> anyhow::Result<RegistryOptions> {
        let credentials = match &self.docker_config {
            Some(path) => RegistryCredentials::from_docker_config_file(path)?,
            None => RegistryCredentials::from_default_docker_config()?,
        };
        Ok(RegistryOptions {
            insecure_registries: if self.insecure {
                vec![registry.to_owned()]
            } else {
                Vec::new()
            },
            extra_ca_certificate_files: self.ca_files.clone(),
            credentials,
            proxy: ProxySettings::from_environment(),
            max_concurrent_transfers: self.max_concurrent_transfers.max(1),
            ..RegistryOptions::default()
        })
    }
}

/// How `lock` and `image` reach the registries that `image:` sources and `embed_images:`
/// name (several registries, so each flag names the one it is for).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryAccessArgs {
    /// A registry (`host:port`) that speaks plain HTTP; repeatable. Never the default.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// A PEM file of CA certificates to trust besides the system roots; repeatable.
    #[arg(long = "registry-ca-file", value_name = "PEM")]
    pub ca_files: Vec<PathBuf>,
    /// Docker config file with `auths`. Default: $DOCKER_CONFIG/config.json or ~/.docker/config.json.
    #[arg(long = "docker-config", value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
}

impl RegistryAccessArgs {
    /// Options for every registry the catalog names; proxies from the environment.
    pub fn options(&self) -> anyhow::Result<RegistryOptions> {
        let credentials = match &self.docker_config {
            Some(path) => RegistryCredentials::from_docker_config_file(path)?,
            None => RegistryCredentials::from_default_docker_config()?,
        };
        Ok(RegistryOptions {
            insecure_registries: self
                .insecure_registries
                .iter()
                .map(|registry| kiln_registry::normalise_registry_name(registry))
                .collect(),
            extra_ca_certificate_files: self.ca_files.clone(),
            credentials,
            proxy: ProxySettings::from_environment(),
            ..RegistryOptions::default()
        })
    }
}

/// The layout given, or the store's.
pub fn layout_or_store(layout: Option<PathBuf>) -> anyhow::Result<OciLayout> {
    let directory = match layout {
        Some(directory) => directory,
        None => {
            let root = kiln_store::Store::default_root()?;
            let store = kiln_store::Store::open(&root)
                .with_context(|| format!("opening the store at {}", root.display()))?;
            store.oci_layout_dir().to_owned()
        }
    };
    OciLayout::open_or_create(&directory)
        .with_context(|| format!("opening the OCI layout {}", directory.display()))
}

/// One progress bar per blob in transfer, on stderr (hidden when it is not a terminal).
#[derive(Debug, Default)]
pub struct TransferProgress {
    bars: MultiProgress,
    active: Mutex<std::collections::BTreeMap<Sha256Digest, ProgressBar>>,
}

impl TransferObserver for TransferProgress {
    fn blob_started(&self, digest: &Sha256Digest, size: u64, resumed_from: u64) {
        let bar = self.bars.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>19} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(digest.hex()[..12].to_owned());
        bar.set_position(resumed_from);
        if let Some(previous) = self.active.lock().unwrap().insert(*digest, bar) {
            previous.finish_and_clear();
        }
    }

    fn bytes_transferred(&self, digest: &Sha256Digest, bytes: u64) {
        if let Some(bar) = self.active.lock().unwrap().get(digest) {
            bar.inc(bytes);
        }
    }

    fn blob_finished(&self, digest: &Sha256Digest, outcome: BlobOutcome) {
        if let Some(bar) = self.active.lock().unwrap().remove(digest) {
            bar.finish_and_clear();
        }
        let _ = self.bars.println(format!("{outcome:?}: {digest}"));
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Destination, `host:port/prefix` (e.g. 127.0.0.1:5443/kiln): each image goes to
    /// `prefix/<name>:<tag>` (see kiln-registry's push module for the naming).
    #[arg(long)]
    registry: String,
    /// Push only images for this OCI architecture (`amd64`, `arm64`).
    #[arg(long = "arch")]
    arch: Option<String>,
    /// Push every named image of this OCI image layout instead of what the lock uses.
    #[arg(long, conflicts_with_all = ["all", "write_lock"])]
    layout: Option<PathBuf>,
    /// Push every named image of the store's layout instead of what the lock uses.
    #[arg(long)]
    all: bool,
    /// The lock whose images are pushed. Default: kiln.lock of this repository.
    #[arg(long)]
    lock: Option<PathBuf>,
    /// Write a copy of the lock whose pins name the pushed images as their `mirror`, so
    /// builds from it take every package and image from this registry.
    #[arg(long, value_name = "PATH")]
    write_lock: Option<PathBuf>,
    /// Where to write the JSON report of pushed digests. Default: stdout.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    connection: RegistryConnectionArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let registry_host = args
        .registry
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let options = args.connection.options(&registry_host)?;
    let arch = args.arch.as_deref().map(|arch| match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    });
    let destination = args.registry.trim_end_matches('/').to_owned();
    let report = if args.layout.is_some() || args.all {
        let layout = layout_or_store(args.layout.clone())?;
        kiln_registry::push_layout(
            &layout,
            &destination,
            arch,
            &options,
            Arc::new(TransferProgress::default()),
        )
        .with_context(|| format!("pushing {} to {destination}", layout.directory().display()))?
    } else {
        push_what_the_lock_uses(&args, &destination, arch, &options)?
    };
    let json = serde_json::to_string_pretty(&report)? + "\n";
    match &args.report {
        Some(path) => {
            std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{json}"),
    }
    eprintln!(
        "pushed {} images ({} blobs uploaded, {} already there), every digest read back from {}",
        report.images.len(),
        report.blobs_uploaded,
        report.blobs_already_in_registry,
        registry_host
    );
    Ok(ExitCode::SUCCESS)
}

/// The lock's architectures `arch` (an OCI name) selects.
fn selected_arches(lock: &kiln_lock::Lock, arch: Option<&str>) -> Vec<kiln_lock::TargetArch> {
    lock.architectures
        .keys()
        .copied()
        .filter(|target| {
            arch.is_none_or(|arch| {
                kiln_assemble::images::platform(*target).oci_architecture() == arch
            })
        })
        .collect()
}

/// Pushes, per architecture of the lock: every pinned Debian package as the OCI image kiln
/// makes of it (`PREFIX/<package>:<version>--<arch>`, made first when the store lacks it),
/// every pinned `image:`/`embed_images:` manifest (`PREFIX/<repository>:<tag>-<arch>`), and
/// every kernel artifact image in the store (`PREFIX/kiln-kernel:<key>`). With
/// `--write-lock`, writes the lock with each pin's `mirror` set to what was pushed.
fn push_what_the_lock_uses(
    args: &Args,
    destination: &str,
    arch: Option<&str>,
    options: &RegistryOptions,
) -> anyhow::Result<kiln_registry::PushReport> {
    use kiln_assemble::build::{debian_layer, MirrorAccess};
    let root = crate::epoch::workspace_root();
    let lock_path = args
        .lock
        .clone()
        .unwrap_or_else(|| root.join(kiln_lock::LOCK_FILE_NAME));
    let mut lock = kiln_lock::Lock::read(&lock_path)?;
    let epoch = u32::try_from(lock.source_date_epoch)
        .context("the lock's source_date_epoch does not fit 32 bits")?;
    let store_root = kiln_store::Store::default_root()?;
    let store = kiln_store::Store::open(&store_root)
        .with_context(|| format!("opening the store at {}", store_root.display()))?;
    let layout = OciLayout::open_or_create(store.oci_layout_dir())?;
    let arches = selected_arches(&lock, arch);
    if arches.is_empty() {
        anyhow::bail!(
            "{} has no architecture matching --arch {}",
            lock_path.display(),
            arch.unwrap_or_default()
        );
    }
    let access = MirrorAccess {
        registry: options,
        offline: false,
    };
    let mut items = Vec::new();
    // (arch, package name) and (arch, image reference) → index into `items`.
    let mut package_items = Vec::new();
    let mut image_items = Vec::new();
    for &target in &arches {
        let architecture = lock.architecture(target)?.clone();
        let progress = crate::lock::spinner(format!(
            "{target}: {} Debian packages as OCI images",
            architecture.debian_packages.len()
        ));
        // Packages the lock already mirrors come from their mirror in `debian_layer`.
        let from_apt: Vec<&kiln_lock::DebianPackagePin> = architecture
            .debian_packages
            .iter()
            .filter(|pin| pin.mirror.is_none())
            .collect();
        kiln_fetch::fetch_debian_packages(
            &store,
            target,
            &from_apt,
            kiln_fetch::FetchMode::Online,
            &mut |_| {},
        )?;
        for pin in &architecture.debian_packages {
            debian_layer(&store, pin, target, epoch, &access)
                .with_context(|| format!("package {} for {target}", pin.name))?;
            let name = kiln_oci::debian_package_reference_name(
                &pin.name,
                &pin.version,
                target.debian_architecture(),
            );
            let descriptor = layout
                .find_manifest_ref(&name)?
                .with_context(|| format!("the store's layout does not name {name}"))?;
            let (repository, tag) = kiln_registry::repository_and_tag_for_reference_name(&name);
            package_items.push((target, pin.name.clone(), items.len()));
            items.push(kiln_registry::PushItem {
                layout_reference_name: name,
                descriptor,
                target: format!("{destination}/{repository}:{tag}"),
            });
        }
        progress.finish_and_clear();
        for pin in &architecture.oci_images {
            let (image, _) =
                kiln_assemble::images::ensure_pulled(&layout, pin, target, options, false)
                    .with_context(|| format!("image {} for {target}", pin.reference))?;
            let bytes = layout.read_blob(&image.manifest_digest)?;
            let mut descriptor = kiln_oci::OciDescriptor::new(
                &image.manifest_media_type,
                image.manifest_digest,
                bytes.len() as u64,
            );
            descriptor.platform = Some(kiln_assemble::images::platform(target).into());
            let (repository, tag) = mirror_repository_and_tag(&pin.reference);
            let name = format!(
                "{repository}:{tag}-{}",
                kiln_assemble::images::platform(target).oci_architecture()
            );
            image_items.push((target, pin.reference.clone(), items.len()));
            items.push(kiln_registry::PushItem {
                layout_reference_name: pin.pinned_reference(),
                descriptor,
                target: format!("{destination}/{name}"),
            });
        }
    }
    for descriptor in layout.read_index()?.manifests {
        let Some(name) = descriptor.reference_name() else {
            continue;
        };
        let Some(key) = name.strip_prefix("kiln-kernel--") else {
            continue;
        };
        let platform_matches = descriptor.platform.as_ref().is_some_and(|platform| {
            arches.iter().any(|target| {
                kiln_assemble::images::platform(*target).oci_architecture() == platform.architecture
            })
        });
        if platform_matches {
            items.push(kiln_registry::PushItem {
                layout_reference_name: name.to_owned(),
                target: format!(
                    "{destination}/{}:{key}",
                    kiln_assemble::kernel_oci::KERNEL_REPOSITORY
                ),
                descriptor: descriptor.clone(),
            });
        }
    }
    eprintln!("pushing {} images to {destination}", items.len());
    let report = kiln_registry::push_items(
        &layout,
        destination,
        &items,
        options,
        Arc::new(TransferProgress::default()),
    )
    .with_context(|| format!("pushing what {} uses to {destination}", lock_path.display()))?;
    if let Some(path) = &args.write_lock {
        for (target, name, index) in &package_items {
            let pushed = &report.images[*index];
            if let Some(pin) = lock.architectures.get_mut(target).and_then(|architecture| {
                architecture
                    .debian_packages
                    .iter_mut()
                    .find(|pin| &pin.name == name)
            }) {
                pin.mirror = Some(pushed.pinned_reference.clone());
            }
        }
        for (target, reference, index) in &image_items {
            let pushed = &report.images[*index];
            if let Some(pin) = lock.architectures.get_mut(target).and_then(|architecture| {
                architecture
                    .oci_images
                    .iter_mut()
                    .find(|pin| &pin.reference == reference)
            }) {
                let repository = pushed
                    .pinned_reference
                    .split_once('@')
                    .map_or(pushed.pinned_reference.as_str(), |(repository, _)| {
                        repository
                    });
                pin.mirror = Some(repository.to_owned());
            }
        }
        lock.write(path)?;
        eprintln!(
            "wrote {}: {} packages and {} images now name their mirror in {destination}",
            path.display(),
            package_items.len(),
            image_items.len()
        );
    }
    Ok(report)
}

/// `repository` (without the registry) and tag of an image reference, for its mirror name.
fn mirror_repository_and_tag(reference: &str) -> (String, String) {
    let without_digest = reference
        .split_once('@')
        .map_or(reference, |(name, _)| name);
    let path = without_digest
        .split_once('/')
        .map_or(without_digest, |(_, path)| path);
    match path.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository.to_owned(), tag.to_owned()),
        _ => (path.to_owned(), "pinned".to_owned()),
    }
}
