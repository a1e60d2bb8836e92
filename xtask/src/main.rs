//! `cargo xtask`: kiln's command line.
//!
//! This binary only parses arguments, shows progress and calls the library crates
//! under `crates/`; one module per subcommand, each with a `run()`. Anything worth
//! testing on its own belongs in a crate, not here.

mod bench;
mod diff;
mod epoch;
mod host;
mod initramfs;
mod inspect;
mod progress;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about = "kiln: reproducible provisioning images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pack a directory into a deterministic newc cpio, compressed with zstd.
    Initramfs(initramfs::Args),
    /// List the entries of an initramfs (plain or zstd, concatenated archives too).
    Inspect(inspect::Args),
    /// Show which entries differ between two archives, and how.
    Diff(diff::Args),
    /// Run a benchmark against the tools a user would otherwise use.
    #[command(subcommand)]
    Bench(bench::Command),
    /// Install what the tests need (apt packages, rustup targets), then run every test tier.
    Test(test::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Initramfs(args) => initramfs::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Test(args) => test::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
