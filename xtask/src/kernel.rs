//! `cargo xtask kernel`: build a kernel artifact for an architecture and flavor, edit a
//! flavor's config with menuconfig, or import a prebuilt Debian kernel package. All the
//! work is in `kiln-kernel`; this module parses arguments and draws progress.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln_kernel::build::{BuildObserver, BuildStep, MakeProgress};
use kiln_kernel::{Arch, BuildRequest, Flavor, KernelArtifact, KernelCache, KernelSource};

/// Where the kernel source comes from until `kiln.lock` pins it (issue 3).

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    build: BuildArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Build the kernel (the default: `cargo xtask kernel --arch A --flavor F`).
    Build(BuildArgs),
    /// Configure, run `make menuconfig`, and append your changes to a fragment.
    #[command(alias = "config")]
    Menuconfig(MenuconfigArgs),
    /// Turn a prebuilt Debian linux-image .deb into a kernel artifact.
    ImportDeb(ImportArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct BuildArgs {
    #[command(flatten)]
    registry: crate::push::RegistryAccessArgs,
    /// x86_64 or aarch64.
    #[arg(long)]
    arch: Option<Arch>,
    /// virt (QEMU and cloud VMs) or generic (bare metal).
    #[arg(long)]
    flavor: Option<Flavor>,
    /// Kernel source tarball (default: the tarball inside the linux-source-6.1 package kiln.lock pins, fetched into the store).
    #[arg(long)]
    source: Option<PathBuf>,
    /// Expected sha256 of --source (default: computed from the file, with a warning).
    #[arg(long)]
    source_sha256: Option<String>,
    #[arg(long)]
    source_date_epoch: Option<u64>,
    /// make -jN (default: the number of CPUs).
    #[arg(long)]
    jobs: Option<usize>,
    /// The fragments directory (default: kernel-configs/ of this repository).
    #[arg(long)]
    configs: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct MenuconfigArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// The make target that edits the config: menuconfig, nconfig (ncurses) or config (plain prompts).
    #[arg(long, default_value = "menuconfig")]
    interface: String,
    /// Fragment to append the changes to (default: kernel-configs/flavor/FLAVOR-ARCH.config).
    #[arg(long)]
    fragment: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// Path to linux-image-*.deb.
    #[arg(long)]
    deb: PathBuf,
    /// Its expected sha256 (default: computed, with a warning).
    #[arg(long)]
    sha256: Option<String>,
    #[arg(long)]
    arch: Arch,
    #[arg(long)]
    source_date_epoch: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        None => build(&args.build),
        Some(Command::Build(build_args)) => build(&build_args),
        Some(Command::Menuconfig(menuconfig_args)) => menuconfig(&menuconfig_args),
        Some(Command::ImportDeb(import_args)) => import_deb(&import_args),
    }
}

fn cache() -> anyhow::Result<KernelCache> {
    KernelCache::from_environment().context(
        "no $KILN_CACHE, $XDG_CACHE_HOME or $HOME: set KILN_CACHE to a directory for kiln's cache",
    )
}

/// The epoch: `--source-date-epoch` if given, else kiln.lock's `source_date_epoch`, the rule
/// `cargo xtask image` follows too, so both compute the same kernel key. A
/// `$SOURCE_DATE_EPOCH` that differs from the lock's is ignored, and said so.
fn source_date_epoch(flag: Option<u64>) -> anyhow::Result<u64> {
    let lock_path = crate::epoch::workspace_root().join("kiln.lock");
    let locked = || -> anyhow::Result<u64> {
        Ok(kiln_lock::Lock::read(&lock_path)
            .with_context(|| {
                format!(
                    "the epoch comes from {}: create it with `cargo xtask lock` or pass --source-date-epoch",
                    lock_path.display()
                )
            })?
            .source_date_epoch)
    };
    if let Some(value) = flag {
        return Ok(value);
    }
    let value = locked()?;
    if let Ok(text) = std::env::var("SOURCE_DATE_EPOCH") {
        if text.trim() != value.to_string() {
            eprintln!(
                "note: SOURCE_DATE_EPOCH={text} ignored: kernels take kiln.lock's source_date_epoch ({value}), as images do; pass --source-date-epoch to override"
            );
        }
    }
    Ok(value)
}

/// The kernel source: `--source` (with `--source-sha256`, else hashed with a note), or the
/// tarball inside the `linux-source-6.1` package kiln.lock pins (fetched into the store).
fn kernel_source(
    path: Option<&Path>,
    sha256: Option<&str>,
    arch: Arch,
    epoch: u64,
    registry: &crate::push::RegistryAccessArgs,
) -> anyhow::Result<KernelSource> {
    let Some(tarball) = path else {
        let root = crate::epoch::workspace_root();
        let lock_path = root.join(kiln_lock::LOCK_FILE_NAME);
        let lock = kiln_lock::Lock::read(&lock_path)?;
        let store_root = kiln_store::Store::default_root()?;
        let store = kiln_store::Store::open(&store_root)
            .with_context(|| format!("opening the store at {}", store_root.display()))?;
        let target = match arch {
            Arch::X86_64 => kiln_lock::TargetArch::X86_64,
            Arch::Aarch64 => kiln_lock::TargetArch::Aarch64,
        };
        let epoch = u32::try_from(epoch).context("the epoch does not fit 32 bits")?;
        let source = kiln_assemble::build::locked_kernel_source(
            &lock,
            &store,
            target,
            epoch,
            &kiln_assemble::build::MirrorAccess {
                registry: &registry.options()?,
                offline: false,
            },
            &mut |line| eprintln!("{line}"),
        )
        .with_context(|| format!("the kernel source pinned in {}", lock_path.display()))?;
        return Ok(source);
    };
    if !tarball.is_file() {
        bail!("kernel source {} does not exist", tarball.display());
    }
    let sha256 = match sha256 {
        Some(sha256) => sha256.to_ascii_lowercase(),
        None => {
            let sha256 = kiln_kernel::source::sha256_file(tarball)?;
            eprintln!(
                "note: no pinned sha256 for {}: trusting the file as it is, sha256:{sha256}",
                tarball.display()
            );
            sha256
        }
    };
    Ok(KernelSource {
        tarball: tarball.to_path_buf(),
        sha256,
    })
}

fn request(args: &BuildArgs) -> anyhow::Result<BuildRequest> {
    let Some(arch) = args.arch else {
        bail!("--arch is required: x86_64 or aarch64")
    };
    let Some(flavor) = args.flavor else {
        bail!("--flavor is required: virt or generic")
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from));
    let source_date_epoch = source_date_epoch(args.source_date_epoch)?;
    Ok(BuildRequest {
        source: kernel_source(
            args.source.as_deref(),
            args.source_sha256.as_deref(),
            arch,
            source_date_epoch,
            &args.registry,
        )?,
        arch,
        flavor,
        config_dir: args
            .configs
            .clone()
            .unwrap_or_else(|| crate::epoch::workspace_root().join("kernel-configs")),
        source_date_epoch,
        jobs,
    })
}

fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let request = request(args)?;
    let cache = cache()?;
    let started = Instant::now();
    let mut progress = Progress::new();
    let result = kiln_kernel::build_kernel(&request, &cache, &mut progress);
    progress.finish();
    let artifact = result
        .with_context(|| format!("building the {} {} kernel", request.arch, request.flavor))?;
    let elapsed = started.elapsed();
    if progress.did_work {
        println!(
            "built {} {} kernel {} in {}",
            request.arch,
            request.flavor,
            artifact.release,
            format_duration(elapsed)
        );
    } else {
        println!(
            "{} {} kernel {} is cached (same inputs): nothing to do",
            request.arch, request.flavor, artifact.release
        );
    }
    store_in_layout(&artifact)?;
    print_artifact(&artifact);
    Ok(ExitCode::SUCCESS)
}

/// Names the artifact in the store's OCI layout (`kiln-kernel--<key>`), so `cargo xtask
/// push` publishes it as `PREFIX/kiln-kernel:<key>`.
fn store_in_layout(artifact: &KernelArtifact) -> anyhow::Result<()> {
    let layout = crate::push::layout_or_store(None)?;
    let digest = kiln_assemble::kernel_oci::store_kernel_image(&layout, artifact)?;
    println!(
        "image:    {} ({digest})",
        kiln_assemble::kernel_oci::kernel_image_name(&artifact.key)
    );
    Ok(())
}

fn print_artifact(artifact: &KernelArtifact) {
    println!("artifact: {}", artifact.dir.display());
    println!("key:      {}", artifact.key);
    for (name, record) in &artifact.files {
        println!(
            "  {name:<12} {:>10}  sha256:{}",
            format_size(record.size),
            record.sha256
        );
    }
}

fn menuconfig(args: &MenuconfigArgs) -> anyhow::Result<ExitCode> {
    let request = request(&args.build)?;
    let cache = cache()?;
    let mut progress = Progress::new();
    let configured = kiln_kernel::configure_kernel(&request, &cache, &mut progress);
    progress.finish();
    let configured = configured.context("preparing the merged config")?;
    let mut command = configured.make.command(&[args.interface.as_str()]);
    if let Some(term) = std::env::var_os("TERM") {
        command.env("TERM", term);
    }
    let status = command
        .status()
        .with_context(|| format!("running make {}", args.interface))?;
    if !status.success() {
        bail!("`make {}` failed ({status}); menuconfig needs libncurses-dev (or use --interface config)", args.interface);
    }
    let config_path = configured.make.build_dir.join(".config");
    let edited = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let difference =
        kiln_kernel::config_diff::fragment_from_difference(&configured.final_config, &edited);
    if difference.is_empty() {
        println!("no changes");
        return Ok(ExitCode::SUCCESS);
    }
    let fragment = args.fragment.clone().unwrap_or_else(|| {
        request
            .config_dir
            .join(format!("flavor/{}-{}.config", request.flavor, request.arch))
    });
    let mut text = std::fs::read_to_string(&fragment).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!(
        "\n# Added by `cargo xtask kernel menuconfig` ({} lines, including what olddefconfig derived):\n# review each line, drop the derived ones, and say which hardware needs it.\n",
        difference.lines().count()
    ));
    text.push_str(&difference);
    std::fs::write(&fragment, text).with_context(|| format!("writing {}", fragment.display()))?;
    println!("appended to {}:\n{difference}", fragment.display());
    Ok(ExitCode::SUCCESS)
}

fn import_deb(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let sha256 = match &args.sha256 {
        Some(sha256) => sha256.to_ascii_lowercase(),
        None => {
            let sha256 = kiln_kernel::source::sha256_file(&args.deb)?;
            eprintln!(
                "note: no pinned sha256 for {}: trusting the file as it is, sha256:{sha256}",
                args.deb.display()
            );
            sha256
        }
    };
    let epoch = source_date_epoch(args.source_date_epoch)?;
    let artifact = kiln_kernel::debian_package::import_debian_package(
        &args.deb,
        &sha256,
        args.arch,
        epoch,
        &cache()?,
    )
    .with_context(|| format!("importing {}", args.deb.display()))?;
    println!("imported {} kernel {}", args.arch, artifact.release);
    store_in_layout(&artifact)?;
    print_artifact(&artifact);
    Ok(ExitCode::SUCCESS)
}

/// A spinner on a terminal; plain lines (a step, then a count every 500 kbuild lines) otherwise.
struct Progress {
    spinner: Option<indicatif::ProgressBar>,
    step: String,
    did_work: bool,
}

impl Progress {
    fn new() -> Self {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let spinner = indicatif::ProgressBar::new_spinner();
            spinner.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .expect("valid template"),
            );
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        Progress {
            spinner,
            step: String::new(),
            did_work: false,
        }
    }

    fn finish(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

impl BuildObserver for Progress {
    fn step(&mut self, step: BuildStep, detail: &str) {
        self.did_work = true;
        self.step = format!("[{}/{}] {step}", step.number(), BuildStep::COUNT);
        match &self.spinner {
            Some(spinner) => {
                spinner.println(format!("{}: {detail}", self.step));
                spinner.set_message(self.step.clone());
            }
            None => eprintln!("{}: {detail}", self.step),
        }
    }

    fn make_progress(&mut self, progress: &MakeProgress) {
        match &self.spinner {
            Some(spinner) => spinner.set_message(format!(
                "{} · {} · {} {}",
                self.step, progress.count, progress.tool, progress.target
            )),
            None if progress.count % 500 == 0 => eprintln!(
                "{} · {} · {} {}",
                self.step, progress.count, progress.tool, progress.target
            ),
            None => {}
        }
    }

    fn log_file(&mut self, path: &Path) {
        let line = format!("full log: {}", path.display());
        match &self.spinner {
            Some(spinner) => spinner.println(line),
            None => eprintln!("{line}"),
        }
    }
}

fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

fn format_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}
