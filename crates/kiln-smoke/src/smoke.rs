//! One whole smoke run: boot to `kiln: ready` with every marker in order, SSH in and run a
//! command, power off over SSH, QEMU exits.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::accel::{choose_accelerator, AcceleratorChoice};
use crate::image::{ipxe_script_with_extra_arguments, BootPlan, ImageDirectory};
use crate::markers::{FoundMarker, Marker, MarkerChecker, MarkerPlan, NetworkExpectation};
use crate::qemu::{self, Accelerator, BootSource, Firmware, Network, QemuConfig, TftpBoot};
use crate::ssh::{self, SshKey};
use crate::tftp::{TftpRead, TftpReads};
use crate::vm::{Vm, WaitOutcome};
use crate::{ImageArch, SmokeError};

/// How the image reaches the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMethod {
    Direct,
    Ipxe,
}

impl BootMethod {
    pub fn name(self) -> &'static str {
        match self {
            BootMethod::Direct => "direct",
            BootMethod::Ipxe => "ipxe",
        }
    }
}

/// The name the image's iPXE script is served under (QEMU's DHCP hands it out as bootfile).
pub const IPXE_BOOTFILE: &str = "boot.ipxe";

/// Console lines kept in a failure message.
pub const TAIL_LINES: usize = 60;

/// Environment variables that raise the timeouts (seconds).
pub const BOOT_TIMEOUT_ENVIRONMENT: &str = "KILN_SMOKE_BOOT_TIMEOUT_SECS";
pub const SSH_TIMEOUT_ENVIRONMENT: &str = "KILN_SMOKE_SSH_TIMEOUT_SECS";
pub const POWEROFF_TIMEOUT_ENVIRONMENT: &str = "KILN_SMOKE_POWEROFF_TIMEOUT_SECS";

#[derive(Debug, Clone)]
pub struct SmokeOptions {
    pub boot: BootMethod,
    /// `false`: no NIC (`-nic none`); the dhcp step must give up and the boot still finish.
    pub network: bool,
    /// Log in over SSH and power off through it (when the image has an `sshd` service).
    pub ssh: bool,
    /// Appended to the image's initramfs (the kernel unpacks concatenated archives, later
    /// files win): test-only replacements such as another `/etc/kiln/init.json`.
    pub extra_initramfs: Option<PathBuf>,
    /// Appended to the image's kernel command line.
    pub extra_cmdline: Vec<String>,
    /// Console log, QEMU's stderr, the SSH key and the TFTP directory go here.
    pub work_directory: PathBuf,
    pub accelerator: Option<Accelerator>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub boot_timeout: Duration,
    pub ssh_timeout: Duration,
    pub poweroff_timeout: Duration,
}

impl SmokeOptions {
    /// Defaults with timeouts from the environment: boot 900 s (TCG on a loaded machine),
    /// SSH 300 s, power-off 180 s.
    pub fn new(work_directory: PathBuf) -> SmokeOptions {
        SmokeOptions {
            boot: BootMethod::Direct,
            network: true,
            ssh: true,
            extra_initramfs: None,
            extra_cmdline: Vec::new(),
            work_directory,
            accelerator: None,
            memory_mib: 1024,
            cpus: 2,
            boot_timeout: crate::timeout_from_env(BOOT_TIMEOUT_ENVIRONMENT, 900),
            ssh_timeout: crate::timeout_from_env(SSH_TIMEOUT_ENVIRONMENT, 300),
            poweroff_timeout: crate::timeout_from_env(POWEROFF_TIMEOUT_ENVIRONMENT, 180),
        }
    }
}

/// What a run tells as it goes.
#[derive(Debug)]
pub enum SmokeEvent<'a> {
    /// A new phase starts.
    Step(&'a str),
    Marker(&'a FoundMarker),
    Note(&'a str),
}

/// A passed run.
#[derive(Debug, Clone)]
pub struct SmokeReport {
    pub console_log: PathBuf,
    pub accelerator: AcceleratorChoice,
    pub firmware: String,
    pub plan: BootPlan,
    pub markers: Vec<FoundMarker>,
    /// From QEMU's start.
    pub time_to_ready: Duration,
    /// `uname -a` over SSH; `None` when SSH was skipped (said in `notes`).
    pub remote_uname: Option<String>,
    /// From QEMU's start to its exit after `poweroff`; `None` when it was killed instead.
    pub powered_off_at: Option<Duration>,
    /// iPXE boots: the files QEMU's TFTP server opened, read and closed, in order.
    pub tftp_reads: Vec<TftpRead>,
    pub notes: Vec<String>,
}

/// A run that found the image broken, or could not run.
#[derive(Debug, thiserror::Error)]
pub enum SmokeRunError {
    #[error(transparent)]
    Setup(#[from] SmokeError),
    #[error("{0}")]
    Failed(Box<BootFailure>),
}

/// What went wrong in a boot, with the evidence.
#[derive(Debug, Clone)]
pub struct BootFailure {
    pub message: String,
    pub console_tail: String,
    pub qemu_stderr: String,
    pub console_log: PathBuf,
}

impl std::fmt::Display for BootFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(formatter, "{}", self.message)?;
        writeln!(formatter, "--- last {TAIL_LINES} console lines ---")?;
        writeln!(formatter, "{}", self.console_tail)?;
        writeln!(formatter, "---")?;
        if !self.qemu_stderr.trim().is_empty() {
            writeln!(formatter, "QEMU stderr: {}", self.qemu_stderr.trim())?;
        }
        write!(
            formatter,
            "full console log: {}",
            self.console_log.display()
        )
    }
}

impl BootFailure {
    pub fn from_vm(vm: &Vm, message: String) -> BootFailure {
        BootFailure {
            message,
            console_tail: vm.console_tail(TAIL_LINES),
            qemu_stderr: vm.qemu_stderr(),
            console_log: vm.console_log.clone(),
        }
    }
}

fn failed(vm: &Vm, message: String) -> SmokeRunError {
    SmokeRunError::Failed(Box::new(BootFailure::from_vm(vm, message)))
}

/// The kernel command-line additions every smoke boot makes: a panic reboots at once (and
/// `-no-reboot` ends QEMU) instead of hanging until the timeout; on x86_64 the IO-APIC
/// timer check is skipped (under TCG on a loaded host it misses its window and panics).
pub fn harness_cmdline(arch: ImageArch) -> Vec<String> {
    let mut arguments = vec!["panic=-1".to_string()];
    if arch == ImageArch::X86_64 {
        arguments.push("no_timer_check".to_string());
    }
    arguments
}

/// A started boot, before any marker was checked: the pieces the fault tests use directly.
#[derive(Debug)]
pub struct StartedBoot {
    pub vm: Vm,
    pub ssh: Option<(SshKey, u16)>,
    pub accelerator: AcceleratorChoice,
    pub firmware: String,
    pub command: qemu::QemuCommand,
    /// iPXE boots: the watch on the TFTP directory, started before QEMU.
    pub tftp_reads: Option<TftpReads>,
}

/// Prepares the work directory (key, TFTP directory, concatenated initramfs) and starts QEMU.
pub fn start_boot(
    image: &ImageDirectory,
    options: &SmokeOptions,
    with_ssh: bool,
) -> Result<StartedBoot, SmokeError> {
    let work = &options.work_directory;
    fs::create_dir_all(work).map_err(SmokeError::io("creating", work))?;
    if options.boot == BootMethod::Ipxe {
        if let Some(reason) = qemu::ipxe_unavailable_reason(image.arch) {
            return Err(SmokeError::Unsupported(reason.to_string()));
        }
    }
    let accelerator = match options.accelerator {
        Some(accelerator) => AcceleratorChoice {
            accelerator,
            reason: "chosen by the caller".to_string(),
        },
        None => choose_accelerator(image.arch, &image.kernel),
    };
    let (firmware, firmware_note) = match image.arch {
        ImageArch::Aarch64 => qemu::aarch64_firmware_for(&image.kernel)?,
        ImageArch::X86_64 => (Firmware::Default, "SeaBIOS (QEMU's default)".to_string()),
    };

    let mut cmdline: Vec<String> = vec![image.cmdline.clone()];
    cmdline.extend(harness_cmdline(image.arch));
    let ssh = if with_ssh && options.network {
        let key = SshKey::generate(&work.join("ssh"))?;
        cmdline.push(key.cmdline_argument());
        Some((key, ssh::free_local_port()?))
    } else {
        None
    };
    cmdline.extend(options.extra_cmdline.iter().cloned());
    let cmdline = cmdline
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");

    let initramfs = match &options.extra_initramfs {
        None => image.initramfs.clone(),
        Some(extra) => {
            let combined = work.join(format!("initramfs-{}+extra", image.arch.name()));
            concatenate_initramfs(&image.initramfs, extra, &combined)?;
            combined
        }
    };
    let ssh_host_port = ssh.as_ref().map(|(_, port)| *port);
    let mut tftp_reads = None;
    let (boot, network) = match options.boot {
        BootMethod::Direct => {
            let network = if options.network {
                Network::User {
                    ssh_host_port,
                    tftp: None,
                }
            } else {
                Network::None
            };
            (
                BootSource::Direct {
                    kernel: image.kernel.clone(),
                    initramfs,
                    append: cmdline,
                },
                network,
            )
        }
        BootMethod::Ipxe => {
            if !options.network {
                return Err(SmokeError::Unsupported(
                    "an iPXE boot needs the network".to_string(),
                ));
            }
            let tftp = prepare_tftp_directory(image, &initramfs, &cmdline, &work.join("tftp"))?;
            tftp_reads = Some(TftpReads::watch(&tftp.directory)?);
            (
                BootSource::Network,
                Network::User {
                    ssh_host_port,
                    tftp: Some(tftp),
                },
            )
        }
    };
    let config = QemuConfig {
        arch: image.arch,
        accelerator: accelerator.accelerator,
        firmware,
        memory_mib: options.memory_mib,
        cpus: options.cpus,
        boot,
        network,
    };
    let command = qemu::qemu_command(&config)?;
    fs::write(work.join("qemu-command"), command.display() + "\n")
        .map_err(SmokeError::io("writing", work.join("qemu-command")))?;
    let vm = Vm::start(&command, &work.join("console.log"))?;
    Ok(StartedBoot {
        vm,
        ssh,
        accelerator,
        firmware: firmware_note,
        command,
        tftp_reads,
    })
}

/// The image's initramfs, zero padding to a multiple of 4 bytes (where the kernel looks for
/// the next archive's magic), then `extra`.
pub fn concatenate_initramfs(
    image_initramfs: &Path,
    extra: &Path,
    destination: &Path,
) -> Result<(), SmokeError> {
    let mut bytes =
        fs::read(image_initramfs).map_err(SmokeError::io("reading", image_initramfs))?;
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.extend(fs::read(extra).map_err(SmokeError::io("reading", extra))?);
    fs::write(destination, bytes).map_err(SmokeError::io("writing", destination))
}

/// The steps and services of the image's initramfs followed by `extra` (later files win).
pub fn effective_boot_plan(image: &ImageDirectory, extra: &Path) -> Result<BootPlan, SmokeError> {
    let mut bytes =
        fs::read(&image.initramfs).map_err(SmokeError::io("reading", &image.initramfs))?;
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.extend(fs::read(extra).map_err(SmokeError::io("reading", extra))?);
    let config = crate::image::init_config_from_initramfs(&bytes).map_err(|problem| {
        SmokeError::BadImage {
            path: extra.to_path_buf(),
            problem,
        }
    })?;
    Ok(BootPlan::from_config(
        &config,
        crate::image::PlanSource::InitramfsConfig,
    ))
}

/// The TFTP root: the image's kernel and initramfs under their own names, and its
/// `boot.ipxe` with `cmdline`'s additions on the `kernel` line.
fn prepare_tftp_directory(
    image: &ImageDirectory,
    initramfs: &Path,
    cmdline: &str,
    directory: &Path,
) -> Result<TftpBoot, SmokeError> {
    let _ = fs::remove_dir_all(directory);
    fs::create_dir_all(directory).map_err(SmokeError::io("creating", directory))?;
    let kernel_name = kiln_image::kernel_file_name(image.arch);
    let initramfs_name = kiln_image::initramfs_file_name(image.arch);
    fs::copy(&image.kernel, directory.join(&kernel_name))
        .map_err(SmokeError::io("copying", &image.kernel))?;
    fs::copy(initramfs, directory.join(&initramfs_name))
        .map_err(SmokeError::io("copying", initramfs))?;
    let script = fs::read_to_string(&image.boot_ipxe)
        .map_err(SmokeError::io("reading", &image.boot_ipxe))?;
    // The script already carries the image's own command line; add only what the run adds.
    let additions = cmdline
        .strip_prefix(image.cmdline.as_str())
        .unwrap_or(cmdline)
        .trim();
    let script = ipxe_script_with_extra_arguments(&script, additions).map_err(|problem| {
        SmokeError::BadImage {
            path: image.boot_ipxe.clone(),
            problem,
        }
    })?;
    let script_path = directory.join(IPXE_BOOTFILE);
    fs::write(&script_path, script).map_err(SmokeError::io("writing", &script_path))?;
    Ok(TftpBoot {
        directory: directory.to_path_buf(),
        bootfile: IPXE_BOOTFILE.to_string(),
    })
}

/// Boot, markers, SSH, power-off. `events` sees progress.
pub fn run_smoke(
    image: &ImageDirectory,
    options: &SmokeOptions,
    events: &mut dyn FnMut(SmokeEvent<'_>),
) -> Result<SmokeReport, SmokeRunError> {
    if options.boot == BootMethod::Ipxe {
        if let Some(reason) = qemu::ipxe_unavailable_reason(image.arch) {
            return Err(SmokeError::Unsupported(reason.to_string()).into());
        }
    }
    let plan = match &options.extra_initramfs {
        None => image.boot_plan()?,
        // The extra segment may replace /etc/kiln/init.json: expect what the kernel will unpack.
        Some(extra) => effective_boot_plan(image, extra)?,
    };
    let mut notes = Vec::new();
    let has_sshd = plan.has_service("sshd");
    let use_ssh = options.ssh && options.network && has_sshd;
    if options.ssh && !has_sshd {
        notes.push(
            "the image has no sshd service: SSH login and power-off over SSH skipped".to_string(),
        );
    }
    events(SmokeEvent::Step(&format!(
        "starting QEMU ({} boot, {} onboot steps and {} services expected, from {})",
        options.boot.name(),
        plan.onboot.len(),
        plan.services.len(),
        match plan.source {
            crate::image::PlanSource::Manifest => "manifest.json",
            crate::image::PlanSource::InitramfsConfig => "the initramfs's /etc/kiln/init.json",
        }
    )));
    let started = start_boot(image, options, use_ssh)?;
    let StartedBoot {
        mut vm,
        ssh,
        accelerator,
        firmware,
        tftp_reads,
        ..
    } = started;
    events(SmokeEvent::Note(&format!(
        "accelerator: {} ({})",
        accelerator.accelerator.name(),
        accelerator.reason
    )));
    events(SmokeEvent::Note(&format!("firmware: {firmware}")));
    events(SmokeEvent::Note(&format!(
        "console log: {}",
        vm.console_log.display()
    )));

    let network = if options.network {
        NetworkExpectation::Lease
    } else {
        NetworkExpectation::NoLink
    };
    let disabled = disabled_names(&options.extra_cmdline);
    let disabled: Vec<&str> = disabled.iter().map(String::as_str).collect();
    let mut marker_plan = MarkerPlan::boot_to_ready(&plan, network, &disabled);
    if options.boot == BootMethod::Ipxe {
        marker_plan = MarkerPlan::ipxe_netboot(image.arch, IPXE_BOOTFILE).followed_by(marker_plan);
    }
    events(SmokeEvent::Step(&format!(
        "waiting for {} markers up to `kiln: ready`",
        marker_plan.marker_count()
    )));
    let mut checker = MarkerChecker::new(marker_plan);
    let outcome = vm.expect(&mut checker, options.boot_timeout, &mut |found| {
        events(SmokeEvent::Marker(found))
    });
    if outcome != WaitOutcome::Complete {
        return Err(failed(
            &vm,
            format!("boot failed: {}", failure_message(&outcome, &checker)),
        ));
    }
    let time_to_ready = checker
        .found()
        .last()
        .map(|found| found.at)
        .unwrap_or_else(|| vm.elapsed());
    events(SmokeEvent::Note(&format!(
        "ready {:.1}s after QEMU started",
        time_to_ready.as_secs_f64()
    )));
    let mut markers = checker.found().to_vec();
    // The console showed each fetch begin and the kernel start; the TFTP directory shows
    // that each file was served to its end, whatever the console made of iPXE's `ok`.
    let tftp_reads = match tftp_reads {
        None => Vec::new(),
        Some(watch) => {
            let reads = watch.finish();
            let kernel = kiln_image::kernel_file_name(image.arch);
            let initramfs = kiln_image::initramfs_file_name(image.arch);
            if let Err(problem) = crate::tftp::check_served_in_order(
                &reads,
                &[IPXE_BOOTFILE, kernel.as_str(), initramfs.as_str()],
            ) {
                return Err(failed(
                    &vm,
                    format!("iPXE boot reached ready, but {problem}"),
                ));
            }
            events(SmokeEvent::Note(&format!(
                "QEMU's TFTP server served {}",
                reads
                    .iter()
                    .map(|read| read.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            reads
        }
    };

    let Some((key, port)) = ssh else {
        vm.kill();
        return Ok(SmokeReport {
            console_log: vm.console_log.clone(),
            accelerator,
            firmware,
            plan,
            markers,
            time_to_ready,
            remote_uname: None,
            powered_off_at: None,
            tftp_reads,
            notes,
        });
    };

    events(SmokeEvent::Step(&format!(
        "ssh root@127.0.0.1 -p {port} 'uname -a'"
    )));
    let (output, attempts) =
        ssh::run_command_with_retries(&key, port, "uname -a", options.ssh_timeout)?;
    if !output.success {
        return Err(failed(
            &vm,
            format!(
                "ssh login failed after {attempts} attempt(s) ({}): {}{}",
                output.status,
                output.stderr.trim(),
                if vm.console_contains("sshd: listening on 22") {
                    ""
                } else {
                    "; the console never said `sshd: listening on 22`"
                }
            ),
        ));
    }
    let uname = output.stdout.trim().to_string();
    let machine = image.arch.name();
    if !uname.starts_with("Linux ") || !uname.contains(machine) {
        return Err(failed(
            &vm,
            format!("`uname -a` over ssh printed {uname:?}, expected a Linux {machine} line"),
        ));
    }
    events(SmokeEvent::Note(&format!("ssh: {uname}")));

    events(SmokeEvent::Step(
        "ssh poweroff; waiting for `kiln: powering off` and QEMU to exit",
    ));
    // The connection may drop as the machine goes down: the console is the verdict.
    let _ = ssh::run_command(&key, port, "poweroff", Duration::from_secs(60))?;
    let mut poweroff = MarkerChecker::new(MarkerPlan::default().then(Marker::powering_off()));
    let outcome = vm.expect(&mut poweroff, options.poweroff_timeout, &mut |found| {
        events(SmokeEvent::Marker(found))
    });
    if outcome != WaitOutcome::Complete && !matches!(outcome, WaitOutcome::QemuExited(_)) {
        return Err(failed(
            &vm,
            format!(
                "power-off failed: {}; missing marker: powering off (`kiln: powering off`)",
                describe(&outcome)
            ),
        ));
    }
    if !vm.console_contains("kiln: powering off") {
        return Err(failed(
            &vm,
            "QEMU exited after `poweroff` without the console saying `kiln: powering off`"
                .to_string(),
        ));
    }
    markers.extend(poweroff.found().iter().cloned());
    let Some(status) = vm.wait_for_exit(options.poweroff_timeout) else {
        return Err(failed(
            &vm,
            format!(
                "QEMU did not exit within {}s of `kiln: powering off`",
                options.poweroff_timeout.as_secs()
            ),
        ));
    };
    let powered_off_at = vm.elapsed();
    if !status.success() {
        return Err(failed(
            &vm,
            format!("QEMU exited with {status} after the power-off"),
        ));
    }
    Ok(SmokeReport {
        console_log: vm.console_log.clone(),
        accelerator,
        firmware,
        plan,
        markers,
        time_to_ready,
        remote_uname: Some(uname),
        powered_off_at: Some(powered_off_at),
        tftp_reads,
        notes,
    })
}

/// Human words for how a wait ended.
pub fn describe(outcome: &WaitOutcome) -> String {
    match outcome {
        WaitOutcome::Complete => "complete".to_string(),
        WaitOutcome::Fatal(line) => format!("fatal console line `{line}`"),
        WaitOutcome::QemuExited(status) => format!("QEMU exited ({status})"),
        WaitOutcome::TimedOut(timeout) => format!("timed out after {}s", timeout.as_secs()),
        WaitOutcome::OutOfOrder { problem, excerpt } => format!(
            "a marker came out of order ({problem})\n--- console from the last marker found to the line that came early ---\n{excerpt}\n---"
        ),
        WaitOutcome::Stalled(silent) => format!(
            "stalled: the console printed nothing for {}s (raise {} to wait longer)",
            silent.as_secs(),
            crate::vm::STALL_TIMEOUT_ENVIRONMENT
        ),
    }
}

/// How a wait ended and which markers it still lacked (the out-of-order message names them
/// itself).
pub fn failure_message(outcome: &WaitOutcome, checker: &MarkerChecker) -> String {
    match (outcome, checker.missing()) {
        (WaitOutcome::OutOfOrder { .. }, _) | (_, None) => describe(outcome),
        (_, Some(missing)) => format!("{}; {missing}", describe(outcome)),
    }
}

/// Names given to `kiln.services.disable=` and `kiln.onboot.disable=` in `arguments`.
fn disabled_names(arguments: &[String]) -> Vec<String> {
    arguments
        .iter()
        .flat_map(|argument| argument.split_whitespace())
        .filter_map(|word| {
            word.strip_prefix("kiln.services.disable=")
                .or_else(|| word.strip_prefix("kiln.onboot.disable="))
        })
        .flat_map(|list| list.split(','))
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_names_come_from_both_keys() {
        let arguments = vec![
            "kiln.services.disable=getty,ntp".to_string(),
            "quiet kiln.onboot.disable=kmod".to_string(),
        ];
        assert_eq!(disabled_names(&arguments), ["getty", "ntp", "kmod"]);
    }
}
