//! `cargo xtask nix`: drive the Nix flake (`flake.nix`, `nix/`) from the xtask.
//!
//! - `nix build [OUTPUT] [--out DIR]`: `nix build .#OUTPUT`, result copied out of the Nix
//!   store (what `cargo xtask image --via nix` calls, through [`build_image_via_nix`]);
//! - `nix check-pins`: evaluates `nix/pins.nix` against kiln.lock (no nixpkgs needed) and
//!   checks that the flake would fetch exactly the lock's pins;
//! - `nix seed`: puts the files of the store at `$KILN_CACHE` into the Nix store as the
//!   very fixed-output paths the flake's `fetchurl`s produce, so `nix build` needs no
//!   download for them (air-gapped sites; packages `mirror://debian` does not serve, such
//!   as security updates under `pool/updates/`).
//!
//! This module spawns `nix`, `nix-instantiate` and `nix-store`; it reads pins through
//! `nix/pins.nix` itself, so the xtask and the flake cannot disagree on a store name.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command as ProcessCommand, ExitCode, Stdio};

use anyhow::{bail, Context};
use kiln_lock::Lock;
use kiln_store::{Sha256Digest, Store};

/// Nix features the flake needs; passed per command so the user's nix.conf is untouched.
const EXPERIMENTAL_FEATURES: &str = "nix-command flakes";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Build a flake output (`image-<profile>-<arch>`, `kernel-<flavor>-<arch>`, `kiln`) and copy it to --out.
    Build(BuildArgs),
    /// Check that the flake fetches exactly what kiln.lock pins (evaluates nix/pins.nix; no nixpkgs needed).
    CheckPins(CheckPinsArgs),
    /// Add the blobs of $KILN_CACHE to the Nix store under the paths of the flake's fixed-output fetches.
    Seed(SeedArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The flake output, e.g. `image-hook-aarch64`, `kernel-virt-x86_64`, `kiln`.
    output: String,
    /// Where to copy the result (default: out/nix/<output>).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckPinsArgs {
    /// The lock to check (default: kiln.lock of this repository).
    #[arg(long)]
    lock: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// The lock whose pins to seed (default: kiln.lock of this repository).
    #[arg(long)]
    lock: Option<PathBuf>,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Build(args) => {
            let out = args.out.unwrap_or_else(|| {
                crate::epoch::workspace_root()
                    .join("out/nix")
                    .join(&args.output)
            });
            build_output(&args.output, &out)?;
            println!("{} → {}", args.output, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckPins(args) => check_pins(&lock_path(args.lock)),
        Command::Seed(args) => seed(&lock_path(args.lock)),
    }
}

fn lock_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| crate::epoch::workspace_root().join(kiln_lock::LOCK_FILE_NAME))
}

/// Builds `image-<profile>-<arch>` with `nix build` and copies the image's files into
/// `out` (created if needed; files already there with the same names are replaced).
/// For `cargo xtask image --via nix`.
// The image command (issue 5) is being written and will call this; until then only the
// signature is the contract.
#[allow(dead_code)]
pub fn build_image_via_nix(profile: &str, arch: &str, out: &Path) -> anyhow::Result<()> {
    build_output(&format!("image-{profile}-{arch}"), out)
}

/// Fails, saying what to install, when `program` cannot be run.
fn require_program(program: &str) -> anyhow::Result<()> {
    match ProcessCommand::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => bail!("`{program} --version` failed ({status}): check the Nix installation (Debian: apt-get install nix-bin)"),
        Err(error) => bail!("cannot run `{program}` ({error}): install Nix (Debian: `apt-get install nix-bin`), or build without `--via nix`"),
    }
}

fn build_output(output: &str, out: &Path) -> anyhow::Result<()> {
    require_program("nix")?;
    let root = crate::epoch::workspace_root();
    let installable = format!("{}#{output}", root.display());
    // `--json --no-link` rather than `--print-out-paths`: Debian 12's nix-bin is Nix 2.8,
    // which predates `--print-out-paths`; both print the output paths, JSON since 2.4.
    let result = ProcessCommand::new("nix")
        .args([
            "--extra-experimental-features",
            EXPERIMENTAL_FEATURES,
            "build",
            "--no-link",
            "--json",
            "--print-build-logs",
        ])
        .arg(&installable)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running nix build {installable}"))?;
    if !result.status.success() {
        bail!(
            "`nix build {installable}` failed ({}); see the log above. The flake sees only files git tracks: `git add` new profiles or modules first",
            result.status
        );
    }
    let built: serde_json::Value = serde_json::from_slice(&result.stdout)
        .context("nix build --json printed something that is not JSON")?;
    let store_path = built
        .get(0)
        .and_then(|build| build.get("outputs"))
        .and_then(|outputs| outputs.get("out"))
        .and_then(serde_json::Value::as_str)
        .with_context(|| {
            format!("nix build --json gave no `out` path for {installable}: {built}")
        })?;
    copy_result(Path::new(store_path), out)
        .with_context(|| format!("copying {store_path} to {}", out.display()))
}

/// Copies a store path (a file or a directory tree) to `out`. Store files are read-only;
/// the copies are made 0644/0755 so the next build can replace them. Each file is written
/// next to its destination and renamed, so a reader never sees half a file.
fn copy_result(store_path: &Path, out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if store_path.is_file() {
        let name = store_path
            .file_name()
            .context("store path without a file name")?;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        return copy_file(store_path, &out.join(name));
    }
    for entry in walkdir::WalkDir::new(store_path).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {}", store_path.display()))?;
        let relative = entry
            .path()
            .strip_prefix(store_path)
            .context("walkdir left the store path")?;
        let destination = out.join(relative);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&destination)
                .with_context(|| format!("creating {}", destination.display()))?;
            std::fs::set_permissions(&destination, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("chmod {}", destination.display()))?;
        } else if entry.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())
                .with_context(|| format!("reading link {}", entry.path().display()))?;
            let _ = std::fs::remove_file(&destination);
            std::os::unix::fs::symlink(&target, &destination)
                .with_context(|| format!("creating link {}", destination.display()))?;
        } else {
            copy_file(entry.path(), &destination)?;
        }
    }
    Ok(())
}

fn copy_file(source: &Path, destination: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let directory = destination
        .parent()
        .context("destination without a parent directory")?;
    let temporary = tempfile::NamedTempFile::new_in(directory)
        .with_context(|| format!("creating a file in {}", directory.display()))?;
    std::fs::copy(source, temporary.path())
        .with_context(|| format!("copying {}", source.display()))?;
    let executable = std::fs::metadata(source)
        .map(|metadata| metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(temporary.path(), std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", temporary.path().display()))?;
    temporary
        .as_file()
        .sync_all()
        .with_context(|| format!("fsync {}", temporary.path().display()))?;
    temporary
        .persist(destination)
        .with_context(|| format!("renaming into {}", destination.display()))?;
    Ok(())
}

/// One fixed-output fetch of the flake, as `nix/pins.nix` `fetches` lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
struct FlakeFetch {
    url: String,
    sha256: String,
    #[serde(rename = "storeName")]
    store_name: String,
}

/// Evaluates `nix/pins.nix` for `lock` with `nix-instantiate` (no nixpkgs, no network).
fn flake_fetches(lock: &Path) -> anyhow::Result<Vec<FlakeFetch>> {
    require_program("nix-instantiate")?;
    let pins = crate::epoch::workspace_root().join("nix/pins.nix");
    let lock = std::fs::canonicalize(lock).with_context(|| {
        format!(
            "cannot find {}: pass --lock or run `cargo xtask lock`",
            lock.display()
        )
    })?;
    let expression = format!(
        "(import {} {{ lockFile = {}; }}).fetches",
        pins.display(),
        lock.display()
    );
    let output = ProcessCommand::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", &expression])
        .output()
        .context("running nix-instantiate")?;
    if !output.status.success() {
        bail!(
            "evaluating nix/pins.nix against {} failed:\n{}",
            lock.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout)
        .context("nix-instantiate printed something that is not a list of fetches")
}

fn check_pins(lock_path: &Path) -> anyhow::Result<ExitCode> {
    let lock = Lock::read(lock_path)?;
    let fetches = flake_fetches(lock_path)?;
    let flake: BTreeSet<(String, String)> = fetches
        .iter()
        .map(|fetch| (fetch.url.clone(), fetch.sha256.clone()))
        .collect();
    let mut pinned: BTreeSet<(String, String)> = BTreeSet::new();
    for architecture in lock.architectures.values() {
        for package in &architecture.debian_packages {
            pinned.insert((
                format!("mirror://debian/{}", package.filename),
                package.sha256.clone(),
            ));
        }
    }
    for tarball in &lock.source_tarballs {
        for url in &tarball.urls {
            pinned.insert((url.clone(), tarball.sha256.clone()));
        }
    }
    for architecture in lock.architectures.values() {
        for image in &architecture.oci_images {
            pinned.extend(image_blob_fetches(image));
        }
    }
    let extra: Vec<_> = flake.difference(&pinned).collect();
    let missing: Vec<_> = pinned.difference(&flake).collect();
    for (url, sha256) in &extra {
        eprintln!(
            "the flake fetches {url} (sha256 {sha256}), which {} does not pin",
            lock_path.display()
        );
    }
    for (url, sha256) in &missing {
        eprintln!(
            "{} pins {url} (sha256 {sha256}), which the flake does not fetch",
            lock_path.display()
        );
    }
    if !extra.is_empty() || !missing.is_empty() {
        bail!(
            "nix/pins.nix and {} disagree ({} extra, {} missing): fix nix/pins.nix",
            lock_path.display(),
            extra.len(),
            missing.len()
        );
    }
    println!(
        "the flake fetches exactly the {} files {} pins",
        flake.len(),
        lock_path.display()
    );
    let security: Vec<&FlakeFetch> = fetches
        .iter()
        .filter(|fetch| fetch.url.starts_with("mirror://debian/pool/updates/"))
        .collect();
    if !security.is_empty() {
        println!(
            "note: {} of them are Debian security updates (pool/updates/), which nixpkgs' mirror://debian does not serve: run `cargo xtask fetch` then `cargo xtask nix seed` before `nix build`",
            security.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `(url, sha256 hex)` of the manifest and every blob of `image`, as nix/pins.nix
/// addresses them: `https://REGISTRY/v2/REPOSITORY/{manifests,blobs}/DIGEST`, from the
/// mirror when the lock names one.
fn image_blob_fetches(image: &kiln_lock::OciImagePin) -> Vec<(String, String)> {
    // `registry/repository@digest`, tag dropped, the mirror's when there is one.
    let pinned = image.pinned_reference();
    let name = pinned
        .split_once('@')
        .map_or(pinned.as_str(), |(name, _)| name);
    let (registry, repository) = name.split_once('/').unwrap_or((name, ""));
    std::iter::once(("manifests", &image.manifest_digest))
        .chain(image.blobs.iter().map(|blob| ("blobs", &blob.digest)))
        .map(|(kind, digest)| {
            (
                format!("https://{registry}/v2/{repository}/{kind}/{digest}"),
                digest.trim_start_matches("sha256:").to_owned(),
            )
        })
        .collect()
}

fn seed(lock_path: &Path) -> anyhow::Result<ExitCode> {
    require_program("nix-store")?;
    let fetches = flake_fetches(lock_path)?;
    let root = Store::default_root()?;
    let store =
        Store::open(&root).with_context(|| format!("opening the store at {}", root.display()))?;
    let staging = store.temp_dir()?;
    let mut seeded = 0;
    let mut missing = Vec::new();
    let mut done: BTreeSet<(&str, &str)> = BTreeSet::new();
    for fetch in &fetches {
        // A tarball with several URLs is one file: seed it once.
        if !done.insert((&fetch.sha256, &fetch.store_name)) {
            continue;
        }
        let digest = Sha256Digest::parse(&fetch.sha256)?;
        if !store.contains(&digest) {
            missing.push(fetch.url.as_str());
            continue;
        }
        // `nix-store --add-fixed sha256 FILE` gives the path fetchurl's flat sha256 output
        // has, because that path depends only on the name and the hash.
        let staged = staging.path().join(&fetch.store_name);
        std::fs::copy(store.blob_path(&digest), &staged)
            .with_context(|| format!("copying blob {} for {}", fetch.sha256, fetch.url))?;
        let output = ProcessCommand::new("nix-store")
            .args(["--add-fixed", "sha256"])
            .arg(&staged)
            .output()
            .context("running nix-store --add-fixed")?;
        if !output.status.success() {
            bail!(
                "nix-store --add-fixed sha256 {} failed: {}",
                staged.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        std::fs::remove_file(&staged).with_context(|| format!("removing {}", staged.display()))?;
        println!("{}", String::from_utf8_lossy(&output.stdout).trim());
        seeded += 1;
    }
    println!("seeded {seeded} files into the Nix store");
    if !missing.is_empty() {
        println!(
            "{} pinned files are not in {} (run `cargo xtask fetch` first):",
            missing.len(),
            root.display()
        );
        for url in missing {
            println!("  {url}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
