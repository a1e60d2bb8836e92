//! `cargo xtask`: kiln's command line.
//!
//! This binary only parses arguments, shows progress and calls the library crates
//! under `crates/`; one module per subcommand, each with a `run()`. Anything worth
//! testing on its own belongs in a crate, not here.

mod bench;
mod bench_boot;
mod cache;
mod catalog;
mod diff;
mod epoch;
mod fetch;
mod host;
mod image;
mod initramfs;
mod inspect;
mod kernel;
mod lock;
mod nix;
mod progress;
mod pull;
mod push;
mod repro;
mod smoke;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about = "kiln: reproducible provisioning images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reproducibility gate: build an image twice in different conditions, compare every output.
    Repro(repro::Args),
    /// Build a provisioning image (kernel, initramfs, cmdline, boot.ipxe, tar.gz, manifest) for a profile.
    Image(image::Args),
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
    /// Build a kernel for an architecture and flavor from kernel-configs/ (cached by input digest).
    Kernel(kernel::Args),
    /// Resolve modules' Debian packages and tarballs into kiln.lock (apt, private state per arch).
    Lock(lock::Args),
    /// Bring every input kiln.lock pins into the store at $KILN_CACHE, verified.
    Fetch(fetch::Args),
    /// Maintain the store: re-hash everything (`verify`), drop unreferenced blobs (`gc`).
    #[command(subcommand)]
    Cache(cache::Command),
    /// Push every image of an OCI layout (default: the store) to a registry; report the digests.
    Push(push::Args),
    /// Pull an image for one platform from a registry into an OCI layout (default: the store), verified.
    Pull(pull::Args),
    /// Drive the Nix flake: `build` an output, `check-pins` against kiln.lock, `seed` the Nix store.
    #[command(subcommand)]
    Nix(nix::Command),
    /// Boot an image in QEMU and check it end to end: markers, DHCP lease, SSH, power-off.
    #[command(subcommand)]
    Smoke(smoke::Command),
    /// Write modules/README.md (schema and module/profile reference); `--check` exits 1 if stale.
    Catalog(catalog::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(args) => image::run(args),
        Command::Repro(args) => repro::run(args),
        Command::Initramfs(args) => initramfs::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Diff(args) => diff::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Test(args) => test::run(args),
        Command::Kernel(args) => kernel::run(args),
        Command::Lock(args) => lock::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Cache(command) => cache::run(command),
        Command::Push(args) => push::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Nix(command) => nix::run(command),
        Command::Smoke(command) => smoke::run(command),
        Command::Catalog(args) => catalog::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
