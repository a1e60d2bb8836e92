//! `cargo xtask diff`: how two archives differ. Exit status 0 when they are
//! byte-identical, 1 when they differ (like `diff`), 2 on error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    left: PathBuf,
    right: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match compare(&args) {
        Ok(code) => Ok(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            Ok(ExitCode::from(2))
        }
    }
}

fn compare(args: &Args) -> anyhow::Result<ExitCode> {
    let left =
        std::fs::read(&args.left).with_context(|| format!("reading {}", args.left.display()))?;
    let right =
        std::fs::read(&args.right).with_context(|| format!("reading {}", args.right.display()))?;
    let names = (
        args.left.display().to_string(),
        args.right.display().to_string(),
    );
    let comparison = kiln_archive::compare_initramfs(&left, &right, (&names.0, &names.1))?;
    print!("{}", comparison.render());
    Ok(if comparison.identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
