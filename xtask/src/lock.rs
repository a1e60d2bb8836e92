//! `cargo xtask lock`: resolve what the module catalog asks for into `kiln.lock`.
//!
//! Runs the host's apt in a private state per target architecture (see `kiln_fetch::apt`),
//! keeps every existing pin the mirror still carries unless named by `--update`, and writes
//! the lock in its canonical form (a re-lock with no upstream change is a no-op diff).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;
use kiln_fetch::apt::PrivateApt;
use kiln_lock::{Lock, OciImagePin, TargetArch};
use kiln_oci::OciPlatform;
use kiln_spec::Catalog;
use kiln_store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target architecture to (re)lock: x86_64 or aarch64; repeatable. Default: both.
    /// Architectures not named keep their pins.
    #[arg(long = "arch")]
    arches: Vec<TargetArch>,
    /// Re-resolve these packages to the newest version the mirror has (default: keep every
    /// pinned version the mirror still carries).
    #[arg(long = "update", num_args = 1.., value_name = "NAME")]
    update: Vec<String>,
    /// The lock file. Default: kiln.lock at the repository root.
    #[arg(long)]
    lock: Option<PathBuf>,
    /// The repository whose modules/ and profiles/ are locked. Default: this one.
    #[arg(long)]
    root: Option<PathBuf>,
    #[command(flatten)]
    registry: crate::push::RegistryAccessArgs,
}

pub fn spinner(message: String) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(message);
    spinner
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = args.root.unwrap_or_else(crate::epoch::workspace_root);
    let lock_path = args
        .lock
        .unwrap_or_else(|| root.join(kiln_lock::LOCK_FILE_NAME));
    let catalog = Catalog::load(&root)?;
    for directory in &catalog.directories_without_module_file {
        eprintln!(
            "warning: {} has no module.yaml; it is not locked",
            directory.display()
        );
    }
    let previous_text = std::fs::read_to_string(&lock_path).ok();
    let mut lock = if lock_path.exists() {
        Lock::read(&lock_path)?
    } else {
        Lock::new()
    };
    let arches = if args.arches.is_empty() {
        TargetArch::ALL.to_vec()
    } else {
        args.arches
    };
    let update: BTreeSet<String> = args.update.into_iter().collect();
    let store_root = Store::default_root()?;
    let store = Store::open(&store_root)
        .with_context(|| format!("opening the store at {}", store_root.display()))?;

    for arch in arches {
        let progress = spinner(format!(
            "apt-get update and resolve ({})",
            arch.debian_architecture()
        ));
        let apt = PrivateApt::open(&store.root().join("state"), arch)?;
        let previous = lock.architectures.get(&arch);
        let result = kiln_fetch::lock_architecture(&apt, &catalog, previous, &update);
        progress.finish_and_clear();
        let (architecture_lock, resolution) = result.with_context(|| format!("locking {arch}"))?;
        let total_size: u64 = architecture_lock
            .debian_packages
            .iter()
            .map(|pin| pin.size)
            .sum();
        print_changes(
            arch,
            previous
                .map(|previous| &previous.debian_packages[..])
                .unwrap_or_default(),
            &architecture_lock.debian_packages,
        );
        eprintln!(
            "{arch}: {} packages pinned ({:.1} MiB); essential packages depended on but not pinned: {}",
            architecture_lock.debian_packages.len(),
            mebibytes(total_size),
            if resolution.skipped_essential.is_empty() { "none".to_owned() } else { resolution.skipped_essential.iter().cloned().collect::<Vec<_>>().join(", ") }
        );
        if !resolution.skipped_dependencies.is_empty() {
            eprintln!(
                "{arch}: Depends not followed (skip_dependencies: of a module): {}",
                resolution
                    .skipped_dependencies
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut architecture_lock = architecture_lock;
        // A mirror (from `push --write-lock`) stays with a pin whose .deb did not change.
        for pin in &mut architecture_lock.debian_packages {
            pin.mirror = previous.and_then(|previous| {
                previous
                    .debian_packages
                    .iter()
                    .find(|old| old.name == pin.name && old.sha256 == pin.sha256)
                    .and_then(|old| old.mirror.clone())
            });
        }
        architecture_lock.oci_images = lock_images(
            &catalog,
            arch,
            &architecture_lock.oci_images,
            &update,
            &args.registry,
        )?;
        lock.architectures.insert(arch, architecture_lock);
    }
    for name in &update {
        let known = lock.architectures.values().any(|architecture| {
            architecture
                .debian_packages
                .iter()
                .any(|pin| &pin.name == name)
                || architecture
                    .oci_images
                    .iter()
                    .any(|pin| &pin.reference == name)
        });
        if !known {
            anyhow::bail!("--update {name}: no module asks for package {name} (directly or as a dependency) and nothing names an image {name}; nothing was written");
        }
    }
    lock.source_tarballs = kiln_fetch::tarball_pins(&catalog)?;
    let text = lock.to_canonical_json();
    if previous_text.as_deref() == Some(text.as_str()) {
        eprintln!("{} is up to date", lock_path.display());
        return Ok(ExitCode::SUCCESS);
    }
    lock.write(&lock_path)?;
    eprintln!("wrote {}", lock_path.display());
    Ok(ExitCode::SUCCESS)
}

/// Every image reference the catalog names, with who names it: `module:<name>` for an
/// `image:` source, `profile:<name>` for `embed_images:` (a profile's own list; extending
/// profiles inherit the pin through the reference).
pub fn catalog_images(catalog: &Catalog) -> BTreeMap<String, BTreeSet<String>> {
    let mut images: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, module) in &catalog.modules {
        for reference in module.images() {
            images
                .entry(reference.to_string())
                .or_default()
                .insert(format!("module:{name}"));
        }
    }
    for (name, profile) in &catalog.profiles {
        for reference in &profile.embed_images {
            images
                .entry(reference.to_string())
                .or_default()
                .insert(format!("profile:{name}"));
        }
    }
    images
}

/// The image pins of `arch`: a pin whose reference is still named keeps its digest unless
/// `--update` names the reference; new references are resolved against their registry
/// (through an image index to this architecture's manifest).
fn lock_images(
    catalog: &Catalog,
    arch: TargetArch,
    previous: &[OciImagePin],
    update: &BTreeSet<String>,
    registry: &crate::push::RegistryAccessArgs,
) -> anyhow::Result<Vec<OciImagePin>> {
    let wanted = catalog_images(catalog);
    let mut options = None;
    let mut pins = Vec::new();
    for (reference, required_by) in wanted {
        let kept = previous
            .iter()
            .find(|pin| pin.reference == reference)
            .filter(|_| !update.contains(&reference));
        let pin = match kept {
            // Written before blobs were recorded: resolve the pinned digest (not the tag,
            // which may have moved) to fill them in.
            Some(pin) if pin.blobs.is_empty() => {
                if options.is_none() {
                    options = Some(registry.options()?);
                }
                let pinned = OciImagePin {
                    mirror: None,
                    ..pin.clone()
                }
                .pinned_reference();
                let resolved = kiln_registry::resolve_reference(
                    &pinned,
                    platform_of(arch),
                    options.as_ref().expect("set above"),
                )
                .with_context(|| format!("reading the manifest of {pinned} to record its blobs"))?;
                eprintln!(
                    "{arch}: ~ image {reference}: recorded {} blobs",
                    resolved.blobs.len()
                );
                OciImagePin {
                    required_by: required_by.into_iter().collect(),
                    manifest_size: resolved.manifest_size,
                    manifest_media_type: resolved.manifest_media_type.clone(),
                    blobs: blob_pins(&resolved),
                    ..pin.clone()
                }
            }
            Some(pin) => OciImagePin {
                required_by: required_by.into_iter().collect(),
                ..pin.clone()
            },
            None => {
                if options.is_none() {
                    options = Some(registry.options()?);
                }
                let platform = platform_of(arch);
                let progress = spinner(format!("resolve {reference} ({})", platform));
                let resolved = kiln_registry::resolve_reference(
                    &reference,
                    platform,
                    options.as_ref().expect("set above"),
                );
                progress.finish_and_clear();
                let resolved = resolved.with_context(|| {
                    format!(
                        "resolving image {reference} (asked for by {}) for {arch}",
                        required_by.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })?;
                eprintln!("{arch}: + image {reference} {}", resolved.manifest_digest);
                OciImagePin {
                    reference,
                    manifest_digest: resolved.manifest_digest.to_string(),
                    index_digest: resolved.index_digest.map(|digest| digest.to_string()),
                    required_by: required_by.into_iter().collect(),
                    mirror: None,
                    manifest_size: resolved.manifest_size,
                    manifest_media_type: resolved.manifest_media_type.clone(),
                    blobs: blob_pins(&resolved),
                }
            }
        };
        pins.push(pin);
    }
    for old in previous {
        if !pins.iter().any(|pin| pin.reference == old.reference) {
            eprintln!("{arch}: - image {}", old.reference);
        }
    }
    Ok(pins)
}

fn platform_of(arch: TargetArch) -> OciPlatform {
    match arch {
        TargetArch::X86_64 => OciPlatform::LinuxAmd64,
        TargetArch::Aarch64 => OciPlatform::LinuxArm64,
    }
}

fn blob_pins(resolved: &kiln_registry::ResolvedReference) -> Vec<kiln_lock::OciBlobPin> {
    resolved
        .blobs
        .iter()
        .map(|blob| kiln_lock::OciBlobPin {
            digest: blob.digest.to_string(),
            size: blob.size,
            media_type: blob.media_type.clone(),
        })
        .collect()
}

fn mebibytes(bytes: u64) -> f64 {
    // Display only: precision loss above 2^53 bytes does not matter.
    #[allow(clippy::cast_precision_loss)]
    let value = bytes as f64 / (1024.0 * 1024.0);
    value
}

fn print_changes(
    arch: TargetArch,
    before: &[kiln_lock::DebianPackagePin],
    after: &[kiln_lock::DebianPackagePin],
) {
    for pin in after {
        match before.iter().find(|old| old.name == pin.name) {
            None => eprintln!("{arch}: + {} {}", pin.name, pin.version),
            Some(old) if old.version != pin.version || old.sha256 != pin.sha256 => {
                eprintln!("{arch}: ~ {} {} -> {}", pin.name, old.version, pin.version)
            }
            Some(_) => {}
        }
    }
    for old in before {
        if !after.iter().any(|pin| pin.name == old.name) {
            eprintln!("{arch}: - {} {}", old.name, old.version);
        }
    }
}
