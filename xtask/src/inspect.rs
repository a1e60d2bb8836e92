//! `cargo xtask inspect`: list an initramfs like `lsinitramfs -l`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An initramfs: plain newc, zstd, or several concatenated.
    file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let segments = kiln_archive::read_initramfs(&bytes)
        .with_context(|| format!("parsing {}", args.file.display()))?;
    print!("{}", kiln_archive::render_listing(&segments));
    Ok(ExitCode::SUCCESS)
}
