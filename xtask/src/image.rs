//! `cargo xtask image`: build a provisioning image for one architecture and profile.
//!
//! Sets up the host first (rustup targets; the Debian packages a kernel build and the
//! fetchers need, through apt when root, else the exact command to run), then runs the
//! kiln-assemble pipeline with a stage counter, and prints a size report per module.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln_archive::ZstdSettings;
use kiln_assemble::{ImageObserver, ImageRequest};
use kiln_image::ImageArch;
use kiln_kernel::build::{BuildObserver, BuildStep, MakeProgress};
use kiln_kernel::KernelCache;
use kiln_store::Store;

/// Debian packages an image build needs on the host, each with what needs it.
pub const IMAGE_PACKAGES: &[(&str, &str)] = &[
    (
        "apt",
        "downloads the pinned Debian packages (the host's configured sources)",
    ),
    ("ca-certificates", "TLS to the host's apt sources"),
    ("gcc", "kernel build (host tools)"),
    (
        "gcc-aarch64-linux-gnu",
        "cross compiler for aarch64 kernels",
    ),
    ("bc", "kernel build"),
    ("flex", "kernel build"),
    ("bison", "kernel build"),
    ("libelf-dev", "kernel build"),
    ("libssl-dev", "kernel build"),
    ("make", "kernel build"),
    ("xz-utils", "kernel source extraction"),
    ("kmod", "depmod: modules.dep for the kernel's modules"),
];

/// The rustup targets the image's static binaries are built for.
pub const RUST_TARGETS: &[&str] = &["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target architecture: x86_64 or aarch64.
    #[arg(long, value_parser = ImageArch::parse)]
    arch: ImageArch,
    /// The profile (profiles/<NAME>.yaml).
    #[arg(long, default_value = "hook")]
    profile: String,
    /// Outputs go to OUT/<profile output name>/<arch>/.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Use the store (and its import/ directory) only; never the network.
    #[arg(long)]
    offline: bool,
    /// Use this kernel artifact directory (holding kernel.json) instead of building the
    /// profile's kernel flavor.
    #[arg(long)]
    kernel_artifact: Option<PathBuf>,
    /// zstd level of the initramfs (19 is ~11% smaller and ~6x slower to build).
    #[arg(long, default_value_t = kiln_assemble::build::DEFAULT_IMAGE_ZSTD_LEVEL)]
    level: i32,
    /// The repository to build from (catalog, kiln.lock, kernel-configs, crates). Default:
    /// $KILN_ROOT (how the Nix derivation runs it), else the one this xtask was built from.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Skip installing host packages and rustup targets (they must be there).
    #[arg(long)]
    no_setup: bool,
    /// Parallel jobs of the kernel build and zstd workers (default: the CPUs this process
    /// may run on). No output depends on it; `repro` varies it to prove that.
    #[arg(long)]
    jobs: Option<usize>,
    /// Take the kernel from `REGISTRY/PREFIX/kiln-kernel:<key>` (the digest of the kernel's
    /// inputs, as `cargo xtask push` publishes it) instead of building it.
    #[arg(
        long,
        value_name = "REGISTRY/PREFIX",
        conflicts_with = "kernel_artifact"
    )]
    kernel_registry: Option<String>,
    #[command(flatten)]
    registry: crate::push::RegistryAccessArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if !args.no_setup {
        crate::host::ensure_debian_packages(IMAGE_PACKAGES)?;
        ensure_rust_targets()?;
    }
    let workspace = match &args.root {
        Some(root) => root
            .canonicalize()
            .with_context(|| format!("--root {}", root.display()))?,
        None => match std::env::var_os("KILN_ROOT") {
            Some(root) => PathBuf::from(root),
            None => crate::epoch::workspace_root(),
        },
    };
    let out_root = if args.out.is_absolute() {
        args.out.clone()
    } else {
        std::env::current_dir()?.join(&args.out)
    };
    let store_root = Store::default_root()?;
    let kernel_cache = KernelCache::from_environment()
        .context("no $KILN_CACHE, $XDG_CACHE_HOME or $HOME: set KILN_CACHE")?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
        .max(1);
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from)
        .join("image-crates");
    let request = ImageRequest {
        workspace,
        profile: args.profile.clone(),
        arch: args.arch,
        out_root,
        offline: args.offline,
        kernel_artifact: args.kernel_artifact.clone(),
        zstd: ZstdSettings::new(args.level, u32::try_from(jobs).unwrap_or(1))?,
        store_root,
        kernel_cache,
        target_dir,
        jobs,
        // Only used when an `image:` source or embedded image is missing from the store; a
        // broken Docker config must not stop builds that pull nothing.
        kernel_registry: args.kernel_registry.clone(),
        registry: args.registry.options().unwrap_or_else(|error| {
            eprintln!("warning: registry credentials not loaded ({error:#}); images are pulled anonymously");
            kiln_registry::RegistryOptions::default()
        }),
    };
    let mut observer = Observer::new();
    let result = kiln_assemble::build_image(&request, &mut observer);
    observer.finish();
    let report = result.with_context(|| {
        format!(
            "building profile `{}` for {}",
            args.profile,
            args.arch.name()
        )
    })?;
    let elapsed = started.elapsed();
    if report.up_to_date {
        println!(
            "{}: up to date, nothing to do ({:.2} s)",
            report.directory.display(),
            elapsed.as_secs_f64()
        );
    } else {
        println!(
            "built {} in {:.1} s",
            report.directory.display(),
            elapsed.as_secs_f64()
        );
    }
    println!("size by module (unpacked file data):");
    let mut sizes: Vec<(&String, &u64)> = report.module_sizes.iter().collect();
    sizes.sort_by(|left, right| right.1.cmp(left.1).then(left.0.cmp(right.0)));
    for (module, bytes) in sizes {
        println!("  {module:<12} {:>10}", format_bytes(*bytes));
    }
    println!(
        "  {:<12} {:>10}",
        "total",
        format_bytes(report.unpacked_bytes)
    );
    if report.pruned_bytes > 0 {
        println!("  (`prune:` removed {})", format_bytes(report.pruned_bytes));
    }
    println!(
        "initramfs ({}): {}",
        report.compression.name(),
        format_bytes(report.initramfs_bytes)
    );
    if let Some(budget) = report.ram_budget_mib {
        let budget_bytes = budget * 1024 * 1024;
        if report.unpacked_bytes > budget_bytes {
            eprintln!(
                "warning: the unpacked initramfs ({}) exceeds the profile's RAM budget ({budget} MiB, `ram_budget_mib`)",
                format_bytes(report.unpacked_bytes)
            );
        }
    }
    for (name, digest) in &report.sha256sums {
        println!("{digest}  {name}");
    }
    Ok(ExitCode::SUCCESS)
}

fn format_bytes(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    #[allow(clippy::cast_precision_loss)] // display only
    let mib = bytes as f64 / MIB;
    format!("{mib:.2} MiB")
}

/// Adds the musl targets when rustup lacks them (rust-toolchain.toml lists them, but a
/// toolchain installed before that file does not get them by itself).
pub fn ensure_rust_targets() -> anyhow::Result<()> {
    let Ok(output) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(()); // no rustup: the toolchain is managed elsewhere (Nix); cargo will say what is missing
    };
    let installed = String::from_utf8_lossy(&output.stdout);
    let missing: Vec<&str> = RUST_TARGETS
        .iter()
        .copied()
        .filter(|target| !installed.lines().any(|line| line.trim() == *target))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("adding rustup targets: {}", missing.join(" "));
    let status = Command::new("rustup")
        .arg("target")
        .arg("add")
        .args(&missing)
        .status()
        .context("running rustup")?;
    if !status.success() {
        bail!(
            "`rustup target add {}` failed ({status})",
            missing.join(" ")
        );
    }
    Ok(())
}

/// Stage lines on stderr, and a spinner for long kernel builds on a terminal.
struct Observer {
    spinner: Option<indicatif::ProgressBar>,
    kernel_step: String,
    stage_started: Option<Instant>,
}

impl Observer {
    fn new() -> Self {
        Observer {
            spinner: None,
            kernel_step: String::new(),
            stage_started: None,
        }
    }

    fn finish(&mut self) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
        if let Some(started) = self.stage_started.take() {
            eprintln!("      ({:.2} s)", started.elapsed().as_secs_f64());
        }
    }
}

impl ImageObserver for Observer {
    fn stage(&mut self, number: usize, total: usize, label: &str) {
        self.finish();
        eprintln!("[{number}/{total}] {label}");
        self.stage_started = Some(Instant::now());
    }

    fn note(&mut self, line: &str) {
        match &self.spinner {
            Some(spinner) => spinner.println(format!("      {line}")),
            None => eprintln!("      {line}"),
        }
    }

    fn kernel(&mut self) -> &mut dyn BuildObserver {
        self
    }
}

impl BuildObserver for Observer {
    fn step(&mut self, step: BuildStep, detail: &str) {
        self.kernel_step = format!("kernel [{}/{}] {step}", step.number(), BuildStep::COUNT);
        let line = format!("      {}: {detail}", self.kernel_step);
        if self.spinner.is_none() && std::io::stderr().is_terminal() {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_style(
                indicatif::ProgressStyle::with_template("      {spinner} {elapsed_precise} {msg}")
                    .expect("valid template"),
            );
            spinner.enable_steady_tick(Duration::from_millis(120));
            self.spinner = Some(spinner);
        }
        match &self.spinner {
            Some(spinner) => {
                spinner.println(line);
                spinner.set_message(self.kernel_step.clone());
            }
            None => eprintln!("{line}"),
        }
    }

    fn make_progress(&mut self, progress: &MakeProgress) {
        if let Some(spinner) = &self.spinner {
            spinner.set_message(format!(
                "{} ({} lines) {} {}",
                self.kernel_step, progress.count, progress.tool, progress.target
            ));
        }
    }

    fn log_file(&mut self, path: &std::path::Path) {
        self.note(&format!("kernel build log: {}", path.display()));
    }
}
