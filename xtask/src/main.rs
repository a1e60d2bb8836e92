//! `cargo xtask`: kiln's command line.
//!
//! This binary only parses arguments, shows progress and calls the library crates
//! under `crates/`; one module per subcommand, each with a `run()`. Anything worth
//! testing on its own belongs in a crate, not here.

mod bench;
mod cache;
mod diff;
mod epoch;
mod fetch;
mod host;
mod initramfs;
mod inspect;
mod lock;
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
    /// Resolve modules' Debian packages and tarballs into kiln.lock (apt, private state per arch).
    Lock(lock::Args),
    /// Bring every input kiln.lock pins into the store at $KILN_CACHE, verified.
    Fetch(fetch::Args),
    /// Maintain the store: re-hash everything (`verify`), drop unreferenced blobs (`gc`).
    #[command(subcommand)]
    Cache(cache::Command),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Initramfs(args) => initramfs::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Test(args) => test::run(args),
        Command::Lock(args) => lock::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Cache(command) => cache::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
