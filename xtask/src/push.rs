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
    /// The OCI image layout to push from. Default: the store's.
    #[arg(long)]
    layout: Option<PathBuf>,
    /// Where to write the JSON report of pushed digests. Default: stdout.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    connection: RegistryConnectionArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let layout = layout_or_store(args.layout)?;
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
    let report = kiln_registry::push_layout(
        &layout,
        &args.registry,
        arch,
        &options,
        Arc::new(TransferProgress::default()),
    )
    .with_context(|| {
        format!(
            "pushing {} to {}",
            layout.directory().display(),
            args.registry
        )
    })?;
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
