//! `cargo xtask fetch`: bring every input `kiln.lock` pins into the store, verified.
//!
//! Builds never resolve: this reads the lock only. With `--profile`, only what that
//! profile's modules need (and a module asking for something unpinned is an error that
//! says to run `cargo xtask lock`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kiln_fetch::{FetchMode, FetchedFrom};
use kiln_lock::{DebianPackagePin, Lock, TarballPin, TargetArch};
use kiln_spec::Catalog;
use kiln_store::Store;

use crate::progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target architecture: x86_64 or aarch64; repeatable. Default: every one in the lock.
    #[arg(long = "arch")]
    arches: Vec<TargetArch>,
    /// Use the store (and its import/ directory) only; never the network.
    #[arg(long)]
    offline: bool,
    /// Fetch only what this profile needs. Default: everything the lock pins.
    #[arg(long)]
    profile: Option<String>,
    /// The lock file. Default: kiln.lock at the repository root.
    #[arg(long)]
    lock: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = crate::epoch::workspace_root();
    let lock_path = args
        .lock
        .unwrap_or_else(|| root.join(kiln_lock::LOCK_FILE_NAME));
    let lock = Lock::read(&lock_path)?;
    let mode = if args.offline {
        FetchMode::Offline
    } else {
        FetchMode::Online
    };
    let arches = if args.arches.is_empty() {
        lock.architectures.keys().copied().collect()
    } else {
        args.arches
    };
    let catalog = match &args.profile {
        Some(_) => Some(Catalog::load(&root)?),
        None => None,
    };
    let store_root = Store::default_root()?;
    let store = Store::open(&store_root)
        .with_context(|| format!("opening the store at {}", store_root.display()))?;

    let mut tarballs: Vec<&TarballPin> = lock.source_tarballs.iter().collect();
    let mut work: Vec<(TargetArch, Vec<&DebianPackagePin>)> = Vec::new();
    for arch in arches {
        let pins = match (&catalog, &args.profile) {
            (Some(catalog), Some(profile_name)) => {
                let profile = catalog.profile(profile_name)?;
                let modules: Vec<(&str, &kiln_spec::ModuleSpec)> = profile
                    .modules
                    .iter()
                    .map(|name| (name.as_str(), &catalog.modules[name]))
                    .collect();
                tarballs = lock.tarballs_for_modules(&modules)?;
                lock.debian_packages_for_modules(arch, &modules)?
            }
            _ => lock.architecture(arch)?.debian_packages.iter().collect(),
        };
        work.push((arch, pins));
    }

    let mut counts = [0_u64; 3];
    let mut downloaded_bytes = 0_u64;
    let started = std::time::Instant::now();
    for (arch, pins) in &work {
        let is_missing = |pin: &&&DebianPackagePin| {
            kiln_fetch::expected_blob_for_package(pin, *arch)
                .map(|expected| !store.contains(&expected.sha256))
                .unwrap_or(true)
        };
        let missing_bytes: u64 = pins.iter().filter(is_missing).map(|pin| pin.size).sum();
        let bar = progress::bytes_bar(missing_bytes, arch.debian_architecture());
        let summary = kiln_fetch::fetch_debian_packages(&store, *arch, pins, mode, &mut |bytes| {
            bar.set_position(bytes.min(missing_bytes))
        })
        .with_context(|| format!("fetching the Debian packages of {arch}"))?;
        bar.finish_and_clear();
        for name in &summary.imported {
            eprintln!("{arch}: {name} (from import/)");
        }
        for name in &summary.downloaded {
            eprintln!("{arch}: {name} (downloaded)");
        }
        counts[FetchedFrom::Store as usize] += summary.already_in_store;
        counts[FetchedFrom::Import as usize] += u64::try_from(summary.imported.len())?;
        counts[FetchedFrom::Network as usize] += u64::try_from(summary.downloaded.len())?;
        downloaded_bytes += summary.downloaded_bytes;
    }
    for tarball in tarballs {
        let bar = progress::bytes_bar(tarball.size, &tarball.name);
        let from =
            kiln_fetch::fetch_tarball(&store, tarball, mode, &mut |bytes| bar.set_position(bytes))
                .with_context(|| format!("fetching tarball {}", tarball.name))?;
        bar.finish_and_clear();
        if from != FetchedFrom::Store {
            downloaded_bytes += tarball.size;
        }
        counts[from as usize] += 1;
    }
    println!(
        "{} inputs already in the store, {} from import/, {} downloaded ({} bytes) in {:.1} s; store: {}",
        counts[FetchedFrom::Store as usize],
        counts[FetchedFrom::Import as usize],
        counts[FetchedFrom::Network as usize],
        downloaded_bytes,
        started.elapsed().as_secs_f64(),
        store.root().display()
    );
    Ok(ExitCode::SUCCESS)
}
