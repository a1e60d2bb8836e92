//! `cargo xtask bench boot`: time from QEMU start to `kiln: ready` for an image, against the
//! floor: the same kernel, in the same QEMU, booting a bare initramfs whose `/init` is a
//! busybox shell script that prints one line (the image's own busybox, so both archives come
//! from the same bytes). Runs alternate between the two; medians and their ratio are printed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context};
use kiln_archive::{
    ArchivePath, ArchiveTree, Compression, Content, Entry, EntryKind, InitramfsOptions,
    ZstdSettings,
};
use kiln_image::ImageArch;
use kiln_smoke::markers::{Marker, MarkerChecker, MarkerPlan};
use kiln_smoke::qemu::{qemu_command, BootSource, Firmware, Network, QemuConfig};
use kiln_smoke::vm::{Vm, WaitOutcome};

const FLOOR_MARKER: &str = "KILN-FLOOR-READY";

#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// x86_64 or aarch64.
    #[arg(long, value_parser = ImageArch::parse)]
    arch: ImageArch,
    /// The profile whose image to time (built first if it is not up to date).
    #[arg(long, default_value = "hook")]
    profile: String,
    /// Boots of each kind.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Where images are (OUT/<name>/<arch>/).
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

pub fn run(args: BootArgs) -> anyhow::Result<ExitCode> {
    let arch = args.arch;
    let executable = std::env::current_exe()?;
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        std::env::current_dir()?.join(&args.out)
    };
    eprintln!(
        "[1/3] image: cargo xtask image --arch {} --profile {}",
        arch.name(),
        args.profile
    );
    let status = Command::new(&executable)
        .args([
            "image",
            "--no-setup",
            "--arch",
            arch.name(),
            "--profile",
            &args.profile,
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("the image build failed ({status})");
    }
    let catalog = kiln_spec::Catalog::load(&crate::epoch::workspace_root())?;
    let profile = catalog.resolve_profile(&args.profile)?;
    let name = profile.output_name;
    let directory = out.join(name).join(arch.name());
    let kernel = directory.join(kiln_image::kernel_file_name(arch));
    let initramfs = directory.join(kiln_image::initramfs_file_name(arch));
    let cmdline = std::fs::read_to_string(directory.join("cmdline"))?
        .trim()
        .to_owned();

    eprintln!("[2/3] floor: the same kernel and busybox, /init prints one line and powers off");
    let work = tempfile::tempdir()?;
    let floor = work.path().join("floor.initramfs");
    write_floor_initramfs(&initramfs, &floor, profile.compression)?;

    eprintln!("[3/3] {} boots of each, alternating (TCG)", args.runs);
    let mut image_times = Vec::new();
    let mut floor_times = Vec::new();
    for run in 1..=args.runs {
        let floor_time = boot(
            arch,
            &kernel,
            &floor,
            &cmdline,
            Marker::new("floor", FLOOR_MARKER),
            &work.path().join(format!("floor-{run}.log")),
        )?;
        let image_time = boot(
            arch,
            &kernel,
            &initramfs,
            &cmdline,
            Marker::ready(),
            &work.path().join(format!("image-{run}.log")),
        )?;
        eprintln!(
            "      run {run}: floor {:.2} s, image {:.2} s",
            floor_time.as_secs_f64(),
            image_time.as_secs_f64()
        );
        floor_times.push(floor_time);
        image_times.push(image_time);
    }
    let (floor_median, image_median) = (median(&mut floor_times), median(&mut image_times));
    // Sorted by `median`. The fastest run of each is printed too: on a shared host the floor
    // itself moves by a third between runs, and noise only ever adds time.
    let (floor_fastest, image_fastest) = (floor_times[0], image_times[0]);
    println!(
        "{} {}: time to `kiln: ready` median {:.2} s; floor (bare busybox /init) median {:.2} s; ratio {:.2}x ({} runs each); fastest {:.2} s vs {:.2} s, ratio {:.2}x",
        args.profile,
        arch.name(),
        image_median.as_secs_f64(),
        floor_median.as_secs_f64(),
        image_median.as_secs_f64() / floor_median.as_secs_f64(),
        args.runs,
        image_fastest.as_secs_f64(),
        floor_fastest.as_secs_f64(),
        image_fastest.as_secs_f64() / floor_fastest.as_secs_f64(),
    );
    Ok(ExitCode::SUCCESS)
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// `/bin/busybox` from the image's initramfs, `/init` that echoes the marker, `/dev/console`,
/// compressed as the image is (so the floor pays the same decoder's setup).
fn write_floor_initramfs(
    image: &Path,
    floor: &Path,
    compression: kiln_spec::InitramfsCompression,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let segments = kiln_archive::read_initramfs(&bytes)?;
    let busybox = segments
        .iter()
        .flat_map(|segment| &segment.members)
        .rfind(|member| member.name == b"bin/busybox" && !member.data.is_empty())
        .context("the image has no bin/busybox")?;
    let path = |text: &str| ArchivePath::new(text);
    let mut tree = ArchiveTree::new();
    tree.insert(Entry::file(
        path("bin/busybox")?,
        0o755,
        Content::Bytes(busybox.data.clone().into()),
    ))?;
    let init =
        format!("#!/bin/busybox sh\n/bin/busybox echo {FLOOR_MARKER}\n/bin/busybox poweroff -f\n");
    tree.insert(Entry::file(
        path("init")?,
        0o755,
        Content::Bytes(init.into_bytes().into()),
    ))?;
    tree.insert(Entry {
        path: path("dev/console")?,
        permissions: 0o600,
        uid: 0,
        gid: 0,
        kind: EntryKind::CharDevice { major: 5, minor: 1 },
    })?;
    tree.complete()?;
    let options = InitramfsOptions {
        mtime: 0,
        compression: match compression {
            kiln_spec::InitramfsCompression::Zstd => Compression::Zstd(ZstdSettings::new(
                kiln_assemble::build::DEFAULT_IMAGE_ZSTD_LEVEL,
                2,
            )?),
            kiln_spec::InitramfsCompression::Lz4 => Compression::Lz4,
        },
        early: None,
    };
    kiln_archive::write_initramfs_file(&tree, &options, floor, &mut |_| {})?;
    Ok(())
}

/// Boots and returns the time from QEMU's start to `marker`.
fn boot(
    arch: ImageArch,
    kernel: &Path,
    initramfs: &Path,
    cmdline: &str,
    marker: Marker,
    log: &Path,
) -> anyhow::Result<Duration> {
    let config = QemuConfig {
        arch,
        accelerator: kiln_smoke::qemu::Accelerator::Tcg,
        firmware: Firmware::Default,
        memory_mib: 1024,
        cpus: 2,
        boot: BootSource::Direct {
            kernel: kernel.to_path_buf(),
            initramfs: initramfs.to_path_buf(),
            append: format!("{cmdline} panic=-1"),
        },
        network: Network::User {
            ssh_host_port: None,
            tftp: None,
        },
    };
    let command = qemu_command(&config)?;
    let mut vm = Vm::start(&command, log)?;
    let mut checker = MarkerChecker::new(MarkerPlan::default().then(marker));
    let mut at = None;
    let outcome = vm.expect(&mut checker, Duration::from_secs(600), &mut |found| {
        at = Some(found.at)
    });
    vm.kill();
    match (outcome, at) {
        (WaitOutcome::Complete, Some(at)) => Ok(at),
        (outcome, _) => bail!(
            "boot of {} did not reach its marker ({outcome:?}); console log {}:\n{}",
            initramfs.display(),
            log.display(),
            vm.console_tail(30)
        ),
    }
}
