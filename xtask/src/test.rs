//! `cargo xtask test`: the README's test command. Installs what the tests
//! need, then runs every tier with nextest: the fast tests and the slow ones
//! (`#[ignore = "slow: ..."]`: QEMU boots, kernel builds, apt downloads).

use std::process::{Command, ExitCode};

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only the fast tier (what plain `cargo test` runs).
    #[arg(long)]
    fast: bool,
    /// Extra arguments for `cargo nextest run` (e.g. a test name filter).
    #[arg(last = true)]
    nextest_args: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let packages: Vec<(&str, &str)> = crate::host::TEST_PACKAGES
        .iter()
        .chain(crate::image::IMAGE_PACKAGES)
        .copied()
        .collect();
    crate::host::ensure_debian_packages(&packages)?;
    crate::image::ensure_rust_targets()?;
    crate::host::ensure_cargo_nextest()?;
    let mut command = Command::new("cargo");
    command.current_dir(crate::epoch::workspace_root());
    command.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    if !args.fast {
        command.args(["--run-ignored", "all"]);
    }
    command.args(&args.nextest_args);
    let status = command.status().context("running cargo nextest")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
