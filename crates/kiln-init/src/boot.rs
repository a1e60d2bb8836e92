//! The PID 1 sequence, from the first mount to `reboot(2)`, written against [`Syscall`] and
//! [`EventWaiter`] so that the whole order of operations is tested with a recording double.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmdline::{
    parse_boot_parameters, render_environment_file, render_json_file, BootParameters,
};
use crate::config::{ConfigError, InitConfig};
use crate::early_mounts::{
    mount_configured_filesystems, mount_early_filesystems, move_root_off_rootfs, unmount_all,
    MountReport, RequiredMountError,
};
use crate::kernel_modules::load_kernel_modules;
use crate::process_runner::{
    Console, EventWaiter, FatalStepError, StepKind, Supervisor, SupervisorSettings,
};
use crate::supervision::{order_services_by_after, OrderingError};
use crate::syscall::{PowerAction, RebootCommand, Syscall, SyscallError};

/// The kernel command line.
pub const KERNEL_COMMAND_LINE_PATH: &str = "/proc/cmdline";
/// The kernel's switch for expedited RCU grace periods (`CONFIG_TREE_RCU`; `0` or `1`).
pub const RCU_EXPEDITED_PATH: &str = "/sys/kernel/rcu_expedited";
/// Where the parsed command line is written for services.
pub const COMMAND_LINE_ENVIRONMENT_PATH: &str = "/run/kiln/cmdline.env";
/// Same, as JSON.
pub const COMMAND_LINE_JSON_PATH: &str = "/run/kiln/cmdline.json";

/// Why PID 1 cannot go on: printed as `kiln: error: ...`, then the emergency shell.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The config is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Moving `/` off rootfs failed.
    #[error("cannot move the root off rootfs: {0}; set root.move_off_rootfs to false or give the tmpfs more room")]
    MoveRoot(#[source] SyscallError),
    /// A required mount failed.
    #[error(transparent)]
    Mount(#[from] RequiredMountError),
    /// A fatal step failed.
    #[error(transparent)]
    FatalStep(#[from] FatalStepError),
    /// Services cannot be ordered.
    #[error(transparent)]
    Ordering(#[from] OrderingError),
}

/// What [`prepare_system`] leaves for the rest of the boot and for the shutdown.
#[derive(Debug, Clone, Default)]
pub struct PreparedSystem {
    /// Mounts done, for the unmounts at shutdown.
    pub mounts: MountReport,
    /// The parsed command line.
    pub boot_parameters: BootParameters,
    /// What [`RCU_EXPEDITED_PATH`] held before [`prepare_system`] set it, for
    /// [`end_expedited_rcu`] once the boot is ready; `None` when it was not changed.
    pub rcu_expedited_before: Option<Vec<u8>>,
}

/// Everything before the first process: Ctrl-Alt-Del to SIGINT, root move, early mounts,
/// hostname, command line files, kernel modules, the config's mounts.
pub fn prepare_system(
    syscall: &dyn Syscall,
    console: &mut Console,
    config: &InitConfig,
) -> Result<PreparedSystem, InitError> {
    if let Err(error) = syscall.reboot(RebootCommand::DisableCtrlAltDel) {
        console.warning(&format!("cannot route Ctrl-Alt-Del to init: {error}"));
    }
    if config.root.move_off_rootfs {
        move_root_off_rootfs(syscall, &config.root).map_err(InitError::MoveRoot)?;
        console.marker("root moved off rootfs");
    }
    let mut mounts = mount_early_filesystems(syscall);
    for warning in &mounts.warnings {
        console.warning(warning);
    }
    mounts.warnings.clear();
    let rcu_expedited_before = expedite_rcu(syscall, console);

    if let Some(hostname) = &config.hostname {
        if let Err(error) = syscall.sethostname(hostname) {
            console.warning(&format!("cannot set hostname {hostname}: {error}"));
        }
    }

    let command_line = match syscall.read_file(Path::new(KERNEL_COMMAND_LINE_PATH)) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => {
            console.warning(&format!("cannot read the kernel command line: {error}"));
            String::new()
        }
    };
    let boot_parameters = parse_boot_parameters(&command_line);
    console.set_debug(boot_parameters.kiln.debug);
    console.debug("early filesystems mounted, command line read");
    for warning in &boot_parameters.warnings {
        console.warning(warning);
    }
    for (path, contents, mode) in [
        (
            COMMAND_LINE_ENVIRONMENT_PATH,
            render_environment_file(&boot_parameters),
            0o600,
        ),
        (
            COMMAND_LINE_JSON_PATH,
            render_json_file(&boot_parameters),
            0o600,
        ),
    ] {
        // 0600: the command line can carry registry_password.
        if let Err(error) = syscall.write_file(Path::new(path), contents.as_bytes(), mode) {
            console.warning(&format!("cannot write {path}: {error}"));
        }
    }

    for outcome in load_kernel_modules(syscall, &config.kernel_modules) {
        console.marker(&outcome.marker());
    }
    console.debug(&format!(
        "{} listed kernel module(s) loaded",
        config.kernel_modules.len()
    ));

    mount_configured_filesystems(syscall, &config.mounts, &mut mounts)?;
    for warning in &mounts.warnings {
        console.warning(warning);
    }
    mounts.warnings.clear();
    console.debug("configured filesystems mounted");
    Ok(PreparedSystem {
        mounts,
        boot_parameters,
        rcu_expedited_before,
    })
}

/// Expedited RCU grace periods from here to `kiln: ready`, as the kernel has them during its
/// own boot (it returns to normal ones just before it starts init). Every packet socket a
/// DHCP client closes, every network device change and module load waits for a grace
/// period; a normal one takes several scheduler ticks, an expedited one interrupts the other
/// CPUs instead. Measured under emulation (aarch64 TCG, 2 vCPUs): udhcpc from link up to
/// bound 167 ms, 69 ms expedited; the dhcp step 0.30 → 0.20 s. After `ready` the machine
/// goes back to what it had (the provisioning agent's work does not need it), see
/// [`end_expedited_rcu`]. `rcupdate.rcu_normal=1` on the command line overrides both.
/// Returns what the switch held, when it was changed.
fn expedite_rcu(syscall: &dyn Syscall, console: &Console) -> Option<Vec<u8>> {
    let path = Path::new(RCU_EXPEDITED_PATH);
    let Ok(before) = syscall.read_file(path) else {
        // A kernel with TINY_RCU has no switch: nothing to expedite.
        return None;
    };
    if before.trim_ascii() == b"1" {
        return None;
    }
    match syscall.write_file(path, b"1\n", 0o644) {
        Ok(()) => Some(before),
        Err(error) => {
            console.warning(&format!(
                "cannot expedite RCU grace periods for the boot: {error}"
            ));
            None
        }
    }
}

/// Puts back what [`expedite_rcu`] changed (call it after `kiln: ready`).
pub fn end_expedited_rcu(syscall: &dyn Syscall, console: &Console, prepared: &PreparedSystem) {
    let Some(before) = &prepared.rcu_expedited_before else {
        return;
    };
    if let Err(error) = syscall.write_file(Path::new(RCU_EXPEDITED_PATH), before, 0o644) {
        console.warning(&format!(
            "cannot return RCU grace periods to normal after the boot: {error}"
        ));
    }
}

/// Runs onboot steps, starts services, prints `kiln: ready` (then calls `on_ready`), supervises
/// until a power action, runs shutdown steps and stops services. Returns the power action for
/// [`finish_shutdown`].
pub fn run_steps_and_services(
    config: &InitConfig,
    boot_parameters: &BootParameters,
    console: &Console,
    settings: SupervisorSettings,
    waiter: &mut dyn EventWaiter,
    on_ready: &mut dyn FnMut(),
) -> Result<PowerAction, InitError> {
    let order = order_services_by_after(&config.services)?;
    let mut supervisor = Supervisor::new(settings, console.clone(), waiter);
    console.debug(&format!("{} onboot step(s) to run", config.onboot.len()));
    let interrupted = supervisor.run_steps(
        StepKind::Onboot,
        &config.onboot,
        &boot_parameters.kiln.onboot_disable,
    )?;
    let action = match interrupted {
        Some(action) => action,
        None => {
            let mut services = Vec::new();
            for index in order {
                let service = &config.services[index];
                if boot_parameters
                    .kiln
                    .services_disable
                    .contains(&service.name)
                {
                    console.marker(&format!(
                        "service {} disabled by kernel command line",
                        service.name
                    ));
                    continue;
                }
                services.push(service.clone());
            }
            supervisor.start_services(services);
            console.marker("ready");
            on_ready();
            supervisor.supervise(None).unwrap_or(PowerAction::PowerOff)
        }
    };
    console.marker(&format!("shutdown requested ({})", action.marker()));
    // Shutdown steps must run even if one of them is fatal-marked: the machine is going down.
    if let Err(error) = supervisor.run_steps(StepKind::Shutdown, &config.shutdown, &[]) {
        console.error(&error.to_string());
    }
    supervisor.stop_services();
    Ok(action)
}

/// The end: every remaining process gets SIGTERM, then SIGKILL; sync; unmount in reverse;
/// the final marker; `reboot(2)`. Returns only if `reboot(2)` failed.
pub fn finish_shutdown(
    syscall: &dyn Syscall,
    console: &Console,
    action: PowerAction,
    mounted: &[PathBuf],
    stop_grace: Duration,
) {
    let _ = syscall.kill(-1, libc::SIGTERM);
    syscall.reap_children_for(stop_grace);
    let _ = syscall.kill(-1, libc::SIGKILL);
    syscall.reap_children_for(Duration::from_secs(1));
    syscall.sync();
    unmount_all(syscall, mounted);
    syscall.sync();
    console.marker(action.marker());
    if let Err(error) = syscall.reboot(RebootCommand::Power(action)) {
        console.error(&format!("{error}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::RecordingSyscall;

    const EXAMPLE: &str = include_str!("../examples/init.json");

    #[test]
    fn whole_prepare_sequence() {
        let syscall = RecordingSyscall::new();
        syscall.add_file(
            "/proc/cmdline",
            b"console=ttyS0 grpc_authority=tink:42113 kiln.debug vlan_id=x\n",
        );
        syscall.fail_calls_starting_with(
            "finit_module /lib/modules/6.1.0/kernel/lib/crc32c",
            libc::EEXIST,
        );
        syscall.add_file(RCU_EXPEDITED_PATH, b"0\n");
        let config = InitConfig::parse(Path::new("examples/init.json"), EXAMPLE).unwrap();
        let (mut console, output) = Console::capture();
        let prepared = prepare_system(&syscall, &mut console, &config).unwrap();
        assert_eq!(syscall.file(RCU_EXPEDITED_PATH).unwrap(), b"1\n");
        insta::assert_snapshot!("prepare_sequence_syscalls", syscall.transcript());
        insta::assert_snapshot!("prepare_sequence_console", output.text());
        end_expedited_rcu(&syscall, &console, &prepared);
        assert_eq!(syscall.file(RCU_EXPEDITED_PATH).unwrap(), b"0\n");
        assert!(prepared
            .mounts
            .mounted
            .contains(&PathBuf::from("/sys/kernel/debug")));
        let environment =
            String::from_utf8(syscall.file("/run/kiln/cmdline.env").unwrap()).unwrap();
        assert!(environment.contains("grpc_authority='tink:42113'\n"));
    }

    #[test]
    fn rcu_is_left_alone_when_already_expedited_or_without_a_switch() {
        for before in [Some(&b"1\n"[..]), None] {
            let syscall = RecordingSyscall::new();
            syscall.add_file("/proc/cmdline", b"console=ttyS0\n");
            if let Some(before) = before {
                syscall.add_file(RCU_EXPEDITED_PATH, before);
            }
            let (mut console, output) = Console::capture();
            let prepared = prepare_system(&syscall, &mut console, &InitConfig::default()).unwrap();
            end_expedited_rcu(&syscall, &console, &prepared);
            assert!(prepared.rcu_expedited_before.is_none());
            assert!(!syscall.transcript().contains("rcu_expedited"));
            assert_eq!(syscall.file(RCU_EXPEDITED_PATH).as_deref(), before);
            assert_eq!(output.text(), "");
        }
    }

    #[test]
    fn shutdown_sequence() {
        let syscall = RecordingSyscall::new();
        let (console, output) = Console::capture();
        let mounted = vec![
            PathBuf::from("/proc"),
            PathBuf::from("/sys"),
            PathBuf::from("/run"),
        ];
        finish_shutdown(
            &syscall,
            &console,
            PowerAction::PowerOff,
            &mounted,
            Duration::from_secs(5),
        );
        insta::assert_snapshot!(syscall.transcript(), @r"
        kill -1 SIGTERM
        reap children for 5000ms
        kill -1 SIGKILL
        reap children for 1000ms
        sync
        umount /run (detach)
        umount /sys (detach)
        umount /proc (detach)
        sync
        reboot Power(PowerOff)
        ");
        assert_eq!(output.text(), "kiln: powering off\n");
    }

    #[test]
    fn busybox_signals_map_to_actions() {
        assert_eq!(
            PowerAction::from_signal(libc::SIGUSR1),
            Some(PowerAction::Halt)
        );
        assert_eq!(
            PowerAction::from_signal(libc::SIGUSR2),
            Some(PowerAction::PowerOff)
        );
        assert_eq!(
            PowerAction::from_signal(libc::SIGTERM),
            Some(PowerAction::Reboot)
        );
        assert_eq!(
            PowerAction::from_signal(libc::SIGINT),
            Some(PowerAction::Reboot)
        );
        assert_eq!(PowerAction::from_signal(libc::SIGHUP), None);
    }

    #[test]
    fn failing_move_root_is_fatal_with_advice() {
        let syscall = RecordingSyscall::new();
        syscall.fail_calls_starting_with("move tree", libc::ENOSPC);
        let mut config = InitConfig::default();
        config.root.move_off_rootfs = true;
        let (mut console, _) = Console::capture();
        let error = prepare_system(&syscall, &mut console, &config).unwrap_err();
        insta::assert_snapshot!(error.to_string(), @"cannot move the root off rootfs: recorded move tree / -> /.kiln-new-root skipping [/.kiln-new-root]: No space left on device (os error 28); set root.move_off_rootfs to false or give the tmpfs more room");
    }
}
