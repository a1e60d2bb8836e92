//! `cargo xtask cache verify|gc`: maintain the content-addressed store at `$KILN_CACHE`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_lock::Lock;
use kiln_store::{Sha256Digest, Store};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Re-hash every blob; move corrupt ones to quarantine/ and report them (exit 1 if any).
    Verify,
    /// Remove every blob the lock does not reference and no OCI image in index.json reaches.
    Gc {
        /// The lock whose pins are kept. Default: kiln.lock at the repository root.
        #[arg(long)]
        lock: Option<PathBuf>,
    },
    /// Print the store's directory.
    Path,
}

fn open_exclusive() -> anyhow::Result<Store> {
    let root = Store::default_root()?;
    eprintln!(
        "waiting for running builds to release {} ...",
        root.display()
    );
    Store::open_exclusive(&root).with_context(|| format!("opening the store at {}", root.display()))
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Path => {
            println!("{}", Store::default_root()?.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify => {
            let store = open_exclusive()?;
            let blob_count = u64::try_from(store.blob_names()?.len()).unwrap_or(u64::MAX);
            let bar = indicatif::ProgressBar::new(blob_count);
            let report = store.verify(|_, _| bar.inc(1))?;
            bar.finish_and_clear();
            for corrupt in &report.corrupt {
                let actual = corrupt
                    .actual
                    .map(|digest| digest.to_hex())
                    .unwrap_or_default();
                eprintln!(
                    "corrupt: blob {} hashes to {actual}; moved to {}",
                    corrupt.name,
                    corrupt.quarantined_to.display()
                );
            }
            println!(
                "verified {} blobs ({} bytes): {} corrupt; {} leftover temporary files removed",
                report.blobs_checked,
                report.bytes_checked,
                report.corrupt.len(),
                report.temporary_files_removed
            );
            if report.corrupt.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("run `cargo xtask fetch` to download the quarantined inputs again");
            Ok(ExitCode::FAILURE)
        }
        Command::Gc { lock } => {
            let lock_path = lock
                .unwrap_or_else(|| crate::epoch::workspace_root().join(kiln_lock::LOCK_FILE_NAME));
            let lock = Lock::read(&lock_path)?;
            let keep: BTreeSet<Sha256Digest> = lock
                .referenced_sha256s()
                .into_iter()
                .map(Sha256Digest::parse)
                .collect::<Result<_, _>>()?;
            let store = open_exclusive()?;
            let report = store.gc(&keep)?;
            println!(
                "kept {} blobs, removed {} ({} bytes); {} leftover temporary files removed",
                report.blobs_kept,
                report.blobs_removed,
                report.bytes_removed,
                report.temporary_files_removed
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
