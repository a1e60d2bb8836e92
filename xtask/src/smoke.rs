//! `cargo xtask smoke qemu`: boot an image in QEMU and check it end to end (markers, DHCP
//! lease, SSH login, power-off). All the work is in `kiln-smoke`; this module finds or builds
//! the image, numbers the steps on stderr and prints the report.

use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context};
use kiln_smoke::image::ImageDirectory;
use kiln_smoke::qemu::Accelerator;
use kiln_smoke::smoke::{run_smoke, BootMethod, SmokeEvent, SmokeOptions, SmokeRunError};
use kiln_smoke::ImageArch;

/// Debian packages a smoke run needs on the host.
pub const SMOKE_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "boots x86_64 images"),
    ("qemu-system-arm", "boots aarch64 images"),
    (
        "qemu-efi-aarch64",
        "UEFI firmware for aarch64 kernels with an EFI stub",
    ),
    (
        "ipxe-qemu",
        "the iPXE option ROMs of QEMU's NICs (--boot ipxe)",
    ),
    (
        "dropbear-bin",
        "dropbearkey and dbclient: the per-run key and the SSH login",
    ),
];

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Boot out/<profile>/<arch>/ in QEMU: markers up to `kiln: ready`, DHCP lease, SSH, power-off.
    Qemu(QemuArgs),
}

#[derive(Debug, clap::Args)]
pub struct QemuArgs {
    /// x86_64 or aarch64.
    #[arg(long, value_parser = ImageArch::parse)]
    arch: ImageArch,
    /// The profile whose image to boot (built first with `cargo xtask image` when missing).
    #[arg(long, default_value = "hook")]
    profile: String,
    /// direct (QEMU loads kernel and initramfs) or ipxe (netboot through iPXE and TFTP).
    #[arg(long, default_value = "direct", value_parser = parse_boot)]
    boot: BootMethod,
    /// Where images are (OUT/<profile output name>/<arch>/).
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Boot this image directory instead of OUT/<profile output name>/<arch>/ (never built).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Console log, QEMU's stderr, the run's key (default: target/smoke/NAME-ARCH-BOOT/).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// kvm or tcg (default: KVM if a probe boot works, else TCG; also $KILN_SMOKE_ACCEL).
    #[arg(long, value_parser = parse_accel)]
    accel: Option<Accelerator>,
    /// Extra kernel command-line words (repeatable).
    #[arg(long)]
    append: Vec<String>,
    /// Boot without a NIC: the dhcp step must give up and the boot still reach ready.
    #[arg(long)]
    no_network: bool,
    /// Skip the SSH login and power-off (QEMU is killed once ready).
    #[arg(long)]
    no_ssh: bool,
    /// Skip installing the Debian packages QEMU runs need.
    #[arg(long)]
    no_setup: bool,
}

fn parse_boot(text: &str) -> Result<BootMethod, String> {
    match text {
        "direct" => Ok(BootMethod::Direct),
        "ipxe" => Ok(BootMethod::Ipxe),
        other => Err(format!("unknown boot method `{other}`: use direct or ipxe")),
    }
}

fn parse_accel(text: &str) -> Result<Accelerator, String> {
    match text {
        "kvm" => Ok(Accelerator::Kvm),
        "tcg" => Ok(Accelerator::Tcg),
        other => Err(format!("unknown accelerator `{other}`: use kvm or tcg")),
    }
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Qemu(args) => run_qemu(args),
    }
}

fn run_qemu(args: QemuArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if !args.no_setup {
        crate::host::ensure_debian_packages(SMOKE_PACKAGES)?;
    }
    let workspace = crate::epoch::workspace_root();
    let total = if args.no_ssh || args.no_network { 3 } else { 5 };
    let mut step = 0;
    let mut announce = |text: &str| {
        step += 1;
        eprintln!("[{step}/{total}] {text}");
    };

    let (directory, name) = match &args.image {
        Some(directory) => {
            announce(&format!("image: {} (given)", directory.display()));
            (
                directory.clone(),
                directory.file_name().map_or_else(
                    || "image".to_string(),
                    |name| name.to_string_lossy().into_owned(),
                ),
            )
        }
        None => {
            let name = output_name(&workspace, &args.profile)?;
            let out = if args.out.is_absolute() {
                args.out.clone()
            } else {
                std::env::current_dir()?.join(&args.out)
            };
            let directory = out.join(&name).join(args.arch.name());
            if ImageDirectory::open(&directory, args.arch).is_ok() {
                announce(&format!(
                    "image: {} (exists; rebuild with `cargo xtask image --arch {} --profile {}`)",
                    directory.display(),
                    args.arch.name(),
                    args.profile
                ));
            } else {
                announce(&format!(
                    "image: building {} with `cargo xtask image`",
                    directory.display()
                ));
                build_image(&args, &out)?;
            }
            (directory, name)
        }
    };
    let image = ImageDirectory::open(&directory, args.arch)?;

    let work_directory = match &args.work_dir {
        Some(directory) => directory.clone(),
        None => workspace.join("target/smoke").join(format!(
            "{name}-{}-{}",
            args.arch.name(),
            args.boot.name()
        )),
    };
    let mut options = SmokeOptions::new(work_directory);
    options.boot = args.boot;
    options.network = !args.no_network;
    options.ssh = !args.no_ssh;
    options.extra_cmdline = args.append.clone();
    options.accelerator = args.accel;

    let result = run_smoke(&image, &options, &mut |event| match event {
        SmokeEvent::Step(text) => announce(text),
        SmokeEvent::Marker(found) => {
            eprintln!("      {:>7.1}s  {}", found.at.as_secs_f64(), found.label)
        }
        SmokeEvent::Note(text) => eprintln!("      {text}"),
    });
    match result {
        Ok(report) => {
            println!(
                "smoke qemu {} {} ({} boot): passed in {:.1} s",
                name,
                args.arch.name(),
                args.boot.name(),
                started.elapsed().as_secs_f64()
            );
            println!(
                "  accelerator:   {} ({})",
                report.accelerator.accelerator.name(),
                report.accelerator.reason
            );
            println!("  firmware:      {}", report.firmware);
            println!(
                "  time to ready: {:.1} s from QEMU start ({} markers seen in order)",
                report.time_to_ready.as_secs_f64(),
                report.markers.len()
            );
            if let Some(uname) = &report.remote_uname {
                println!("  ssh uname -a:  {uname}");
            }
            if let Some(at) = report.powered_off_at {
                println!(
                    "  powered off:   QEMU exited {:.1} s after it started",
                    at.as_secs_f64()
                );
            }
            for note in &report.notes {
                println!("  note: {note}");
            }
            println!("  console log:   {}", report.console_log.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(SmokeRunError::Failed(failure)) => {
            eprintln!(
                "smoke qemu {} {} ({} boot): FAILED",
                name,
                args.arch.name(),
                args.boot.name()
            );
            eprintln!("{failure}");
            Ok(ExitCode::FAILURE)
        }
        Err(SmokeRunError::Setup(error)) => Err(error).context("setting up the smoke run"),
    }
}

/// The directory name `cargo xtask image` writes the profile to (its `output_name`).
fn output_name(workspace: &Path, profile: &str) -> anyhow::Result<String> {
    let catalog = kiln_spec::Catalog::load(workspace).context("loading modules/ and profiles/")?;
    let resolved = catalog
        .resolve_profile(profile)
        .with_context(|| format!("resolving profile `{profile}`"))?;
    Ok(resolved.output_name)
}

fn build_image(args: &QemuArgs, out: &Path) -> anyhow::Result<()> {
    let xtask = std::env::current_exe().context("finding the xtask binary")?;
    let status = Process::new(xtask)
        .args([
            "image",
            "--arch",
            args.arch.name(),
            "--profile",
            &args.profile,
            "--out",
        ])
        .arg(out)
        .status()
        .context("running `cargo xtask image`")?;
    if !status.success() {
        bail!(
            "`cargo xtask image --arch {} --profile {}` failed ({status})",
            args.arch.name(),
            args.profile
        );
    }
    Ok(())
}
