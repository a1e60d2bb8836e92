//! KVM or TCG. KVM is used only when a short probe boot under it works: on some machines
//! `/dev/kvm` exists but guests hang or crash under it, and a smoke run must not fail
//! because of the host.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::qemu::Accelerator;
use crate::ImageArch;

/// `KILN_SMOKE_ACCEL=kvm|tcg` skips the probe.
pub const ACCEL_ENVIRONMENT: &str = "KILN_SMOKE_ACCEL";

/// The accelerator and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceleratorChoice {
    pub accelerator: Accelerator,
    pub reason: String,
}

/// Chooses the accelerator for booting `kernel` (of `arch`): the environment's word, else
/// KVM when the host can run the guest natively and a probe boot of `kernel` under KVM
/// reaches the kernel's panic for lack of a root filesystem within 10 s (on this project's machines KVM hangs right after SeaBIOS's "Booting from ROM"), else TCG. The
/// verdict is remembered for the life of the process.
pub fn choose_accelerator(arch: ImageArch, kernel: &Path) -> AcceleratorChoice {
    if let Ok(value) = std::env::var(ACCEL_ENVIRONMENT) {
        match value.as_str() {
            "kvm" => {
                return AcceleratorChoice {
                    accelerator: Accelerator::Kvm,
                    reason: format!("{ACCEL_ENVIRONMENT}=kvm"),
                }
            }
            "tcg" => {
                return AcceleratorChoice {
                    accelerator: Accelerator::Tcg,
                    reason: format!("{ACCEL_ENVIRONMENT}=tcg"),
                }
            }
            _ => {}
        }
    }
    if arch != host_arch() {
        return AcceleratorChoice {
            accelerator: Accelerator::Tcg,
            reason: format!(
                "no KVM for a {} guest on a {} host",
                arch.name(),
                std::env::consts::ARCH
            ),
        };
    }
    static VERDICT: Mutex<Option<AcceleratorChoice>> = Mutex::new(None);
    let mut verdict = VERDICT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(choice) = verdict.as_ref() {
        return choice.clone();
    }
    // Other processes (one per test under nextest) reuse a verdict made since the last host boot.
    let cache = verdict_cache_path();
    if let Some(choice) = cache.as_ref().and_then(|path| read_cached_verdict(path)) {
        *verdict = Some(choice.clone());
        return choice;
    }
    let probe = probe_kvm(arch, kernel);
    // Only a verdict on the host is worth keeping: QEMU not being installed yet is not one.
    let about_the_host = !matches!(probe, Err(ProbeFailure::NotRun(_)));
    let choice = match probe {
        Ok(elapsed) => AcceleratorChoice {
            accelerator: Accelerator::Kvm,
            reason: format!(
                "a probe boot under KVM reached the kernel in {:.1}s",
                elapsed.as_secs_f64()
            ),
        },
        Err(ProbeFailure::Host(why) | ProbeFailure::NotRun(why)) => AcceleratorChoice {
            accelerator: Accelerator::Tcg,
            reason: format!("KVM unusable: {why}"),
        },
    };
    if let Some(path) = cache.filter(|_| about_the_host) {
        let text = format!("{}\n{}\n", choice.accelerator.name(), choice.reason);
        let _ = std::fs::write(&path, text);
    }
    *verdict = Some(choice.clone());
    choice
}

/// `$TMPDIR/kiln-smoke-accel-BOOT_ID`: the host's KVM does not change until it reboots.
fn verdict_cache_path() -> Option<std::path::PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(std::env::temp_dir().join(format!("kiln-smoke-accel-{}", boot_id.trim())))
}

fn read_cached_verdict(path: &Path) -> Option<AcceleratorChoice> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let accelerator = match lines.next()? {
        "kvm" => Accelerator::Kvm,
        "tcg" => Accelerator::Tcg,
        _ => return None,
    };
    let reason = format!(
        "{}; verdict reused from {}",
        lines.next().unwrap_or_default(),
        path.display()
    );
    Some(AcceleratorChoice {
        accelerator,
        reason,
    })
}

fn host_arch() -> ImageArch {
    match std::env::consts::ARCH {
        "aarch64" => ImageArch::Aarch64,
        _ => ImageArch::X86_64,
    }
}

/// Why the KVM probe did not pass.
#[derive(Debug)]
enum ProbeFailure {
    /// The host's KVM failed the probe (or there is none).
    Host(String),
    /// The probe could not run (QEMU not installed, no temporary directory): no verdict.
    NotRun(String),
}

/// Boots `kernel` under KVM without an initramfs: it must print its banner and panic
/// (no root filesystem; `panic=-1` + `-no-reboot` make QEMU exit) within 10 s.
fn probe_kvm(arch: ImageArch, kernel: &Path) -> Result<Duration, ProbeFailure> {
    let openable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(error) = openable {
        return Err(ProbeFailure::Host(format!("/dev/kvm: {error}")));
    }
    let (program, machine, console) = match arch {
        ImageArch::X86_64 => ("qemu-system-x86_64", "q35", "ttyS0"),
        ImageArch::Aarch64 => ("qemu-system-aarch64", "virt", "ttyAMA0"),
    };
    let directory = tempfile::tempdir()
        .map_err(|error| ProbeFailure::NotRun(format!("a temporary directory: {error}")))?;
    let output_path = directory.path().join("probe.log");
    let output = std::fs::File::create(&output_path)
        .map_err(|error| ProbeFailure::NotRun(format!("{}: {error}", output_path.display())))?;
    let mut command = Command::new(program);
    command.args([
        "-machine",
        machine,
        "-accel",
        "kvm",
        "-m",
        "256",
        "-nodefaults",
        "-nographic",
        "-no-reboot",
    ]);
    if arch == ImageArch::Aarch64 {
        command.args(["-cpu", "host"]);
    }
    command
        .args(["-monitor", "none", "-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", &format!("console={console} panic=-1")])
        .stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|error| ProbeFailure::NotRun(format!("starting {program}: {error}")))?;
    let limit = Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeFailure::Host(format!(
                    "the probe boot did not end within {}s",
                    limit.as_secs()
                )));
            }
        }
    };
    let console = std::fs::read_to_string(&output_path).unwrap_or_default();
    if !console.contains("Linux version") {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        return Err(ProbeFailure::Host(format!(
            "the probe boot printed no kernel banner ({status}; {})",
            stderr.trim()
        )));
    }
    Ok(started.elapsed())
}
