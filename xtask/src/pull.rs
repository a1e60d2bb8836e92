//! `cargo xtask pull REF`: pull one image for one platform into an OCI layout (default:
//! the store's), verified blob by blob; resumes an interrupted pull.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use kiln_oci::OciPlatform;

use crate::push::{layout_or_store, RegistryConnectionArgs, TransferProgress};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `host:port/repository:tag` or `host:port/repository@sha256:…`.
    reference: String,
    /// The OCI image layout to pull into. Default: the store's.
    #[arg(long)]
    layout: Option<PathBuf>,
    /// `linux/amd64` or `linux/arm64` (`linux/arm64/v8`).
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Read the layout only; the reference must carry a digest.
    #[arg(long)]
    offline: bool,
    #[command(flatten)]
    connection: RegistryConnectionArgs,
}

fn parse_platform(text: &str) -> anyhow::Result<OciPlatform> {
    match text {
        "linux/amd64" | "amd64" | "x86_64" => Ok(OciPlatform::LinuxAmd64),
        "linux/arm64" | "linux/arm64/v8" | "arm64" | "aarch64" => Ok(OciPlatform::LinuxArm64),
        other => {
            bail!("platform {other:?} is not one kiln builds for: use linux/amd64 or linux/arm64")
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let platform = parse_platform(&args.platform)?;
    let layout = layout_or_store(args.layout)?;
    let registry_host = args
        .reference
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let options = args.connection.options(&registry_host)?;
    let pulled = kiln_registry::pull_image(
        &args.reference,
        platform,
        &layout,
        &options,
        args.offline,
        Arc::new(TransferProgress::default()),
    )
    .with_context(|| {
        format!(
            "pulling {} for {platform} into {}",
            args.reference,
            layout.directory().display()
        )
    })?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "reference": args.reference,
            "platform": platform.to_string(),
            "manifest_digest": pulled.resolved.manifest_digest.to_string(),
            "index_digest": pulled.resolved.index_digest.map(|digest| digest.to_string()),
            "pinned_reference": pulled.resolved.pinned_reference,
            "layout": layout.directory().display().to_string(),
            "layout_reference_name": pulled.layout_reference_name,
            "blobs_downloaded": pulled.downloaded_blobs.len(),
            "blobs_already_present": pulled.blobs_already_present.len(),
            "bytes_downloaded": pulled.bytes_downloaded,
        }))?
    );
    Ok(ExitCode::SUCCESS)
}
