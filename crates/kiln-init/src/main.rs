//! The `kiln-init` binary: thin over the library.
//!
//! - As PID 1 (no arguments needed): boots the image from `/etc/kiln/init.json`; never exits.
//! - `kiln-init --check-config PATH`: validates a config (for the image assembler).
//! - `kiln-init --supervise PATH`: runs the onboot steps and services of a config as an
//!   ordinary process (a child subreaper), without mounts or modules, until SIGTERM, SIGINT,
//!   SIGUSR1 or SIGUSR2; for trying a config on a workstation.
//! - `kiln-init --version`.
//!
//! `#![no_main]`: std's runtime start-up opens `/dev/null` on closed stdio descriptors and
//! aborts when it cannot; as PID 1 of an initramfs without `/dev/console` and before `/dev` is
//! mounted, that abort would panic the kernel. So the C `main` is ours.

#![no_main]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_init::boot::{
    end_expedited_rcu, finish_shutdown, prepare_system, run_steps_and_services, InitError,
};
use kiln_init::config::{InitConfig, DEFAULT_CONFIG_PATH};
use kiln_init::early_mounts::mount_early_filesystems;
use kiln_init::process_runner::{
    become_child_subreaper, raise_supervisor_priority, reap_exited_children, Console, EventWaiter,
    SignalWaiter, SupervisorSettings,
};
use kiln_init::syscall::{LinuxSyscall, PowerAction, Syscall};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The C entry point.
///
/// # Safety
/// Called by the C runtime with a valid `argv` of `argc` NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    let count = usize::try_from(argc).unwrap_or(0);
    let mut arguments = Vec::with_capacity(count);
    for index in 0..count {
        // SAFETY: the C runtime passes `argc` valid pointers in `argv`, each to a
        // NUL-terminated string that lives for the whole process.
        let argument = unsafe { std::ffi::CStr::from_ptr(*argv.add(index)) };
        arguments.push(argument.to_string_lossy().into_owned());
    }
    run(&arguments)
}

fn run(arguments: &[String]) -> libc::c_int {
    match arguments.get(1).map(String::as_str) {
        Some("--version") => {
            println!("kiln-init {VERSION}");
            0
        }
        Some("--check-config") => {
            let path = arguments.get(2).map_or(DEFAULT_CONFIG_PATH, String::as_str);
            match InitConfig::load(Path::new(path)) {
                Ok(_) => {
                    println!("kiln-init: {path} is valid");
                    0
                }
                Err(error) => {
                    eprintln!("kiln: error: {error}");
                    1
                }
            }
        }
        Some("--load-hardware-modules") => load_hardware_modules(),
        Some("--supervise") => match arguments.get(2) {
            Some(path) => supervise_outside_pid1(Path::new(path)),
            None => usage(),
        },
        // The kernel passes words after `--` on its command line as arguments to init.
        _ if std::process::id() == 1 => pid1(),
        _ => usage(),
    }
}

fn usage() -> libc::c_int {
    eprintln!(
        "usage: kiln-init                        (as PID 1: boot from {DEFAULT_CONFIG_PATH})\n       \
         kiln-init --check-config PATH     (validate a config)\n       \
         kiln-init --supervise PATH        (run a config's steps and services, not as PID 1)\n       \
         kiln-init --load-hardware-modules (the kmod onboot step: drivers for the devices found)\n       \
         kiln-init --version"
    );
    2
}

/// The `kmod` onboot step ([`kiln_init::hardware_modules`]). `KILN_ROOT` (a test seam, as in
/// the module scripts) prefixes `/sys` and `/lib/modules`; the release is the running
/// kernel's. Always exits 0: a driver that does not load must not stop the boot.
fn load_hardware_modules() -> libc::c_int {
    let root = std::env::var_os("KILN_ROOT").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut out = std::io::stdout().lock();
    kiln_init::hardware_modules::load_hardware_modules(
        &root,
        release.trim(),
        &kiln_init::syscall::LinuxSyscall,
        &mut out,
    );
    0
}

fn supervise_outside_pid1(path: &Path) -> libc::c_int {
    let mut waiter = SignalWaiter::install();
    let console = Console::stdout();
    if let Err(error) = become_child_subreaper() {
        console.warning(&format!("cannot become a child subreaper: {error}"));
    }
    let config = match InitConfig::load(path) {
        Ok(config) => config,
        Err(error) => {
            console.error(&error.to_string());
            return 1;
        }
    };
    let settings = SupervisorSettings::for_config(&config);
    match run_steps_and_services(
        &config,
        &Default::default(),
        &console,
        settings,
        &mut waiter,
        &mut || {},
    ) {
        Ok(action) => {
            console.marker(&format!("would be {} (not PID 1)", action.marker()));
            0
        }
        Err(error) => {
            console.error(&error.to_string());
            1
        }
    }
}

/// Makes sure descriptors 0, 1, 2 are open, on `/dev/console` if it exists.
fn open_console_if_needed() {
    for fd in 0..3 {
        // SAFETY: F_GETFD on an integer descriptor only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let path = c"/dev/console";
        // SAFETY: `path` is a NUL-terminated literal; the flags are plain integers.
        let opened = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
        if opened < 0 {
            return;
        }
        if opened != fd {
            // SAFETY: both are descriptors of this process; dup2 replaces `fd` atomically.
            unsafe {
                libc::dup2(opened, fd);
                libc::close(opened);
            }
        }
    }
}

fn pid1() -> ! {
    // Before anything else, and before any thread exists: every thread inherits the mask.
    let mut waiter = SignalWaiter::install();
    open_console_if_needed();
    let mut console = Console::stdout();
    console.marker(&format!("kiln-init {VERSION} starting"));
    if let Err(error) = raise_supervisor_priority() {
        console.warning(&format!("cannot raise init's priority: {error}"));
    }
    let syscall = LinuxSyscall;
    let mut mounted: Vec<PathBuf> = Vec::new();
    let mut stop_grace = Duration::from_secs(5);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        boot_as_pid1(
            &syscall,
            &mut console,
            &mut waiter,
            &mut mounted,
            &mut stop_grace,
        )
    }));
    let action = match result {
        Ok(Ok(action)) => action,
        Ok(Err(error)) => {
            console.error(&error.to_string());
            emergency(&syscall, &console, &mut waiter, &mut mounted)
        }
        Err(_) => {
            console.error("kiln-init panicked (a bug: please report the lines above)");
            emergency(&syscall, &console, &mut waiter, &mut mounted)
        }
    };
    finish_shutdown(&syscall, &console, action, &mounted, stop_grace);
    park_forever(&mut waiter)
}

fn boot_as_pid1(
    syscall: &LinuxSyscall,
    console: &mut Console,
    waiter: &mut SignalWaiter,
    mounted: &mut Vec<PathBuf>,
    stop_grace: &mut Duration,
) -> Result<PowerAction, InitError> {
    let config = InitConfig::load(Path::new(DEFAULT_CONFIG_PATH))?;
    *stop_grace = Duration::from_millis(config.stop_grace_ms);
    let prepared = prepare_system(syscall, console, &config)?;
    mounted.clone_from(&prepared.mounts.mounted);
    open_console_if_needed();
    let settings = SupervisorSettings::for_config(&config);
    let ready_console = console.clone();
    run_steps_and_services(
        &config,
        &prepared.boot_parameters,
        console,
        settings,
        waiter,
        &mut || end_expedited_rcu(syscall, &ready_console, &prepared),
    )
}

/// After a fatal error: the early mounts (best effort, `EBUSY` when done already), then a
/// shell on the console if there is one. Returns the power action to finish with.
fn emergency(
    syscall: &LinuxSyscall,
    console: &Console,
    waiter: &mut SignalWaiter,
    mounted: &mut Vec<PathBuf>,
) -> PowerAction {
    if mounted.is_empty() {
        *mounted = mount_early_filesystems(syscall).mounted;
        open_console_if_needed();
    }
    let shell = Path::new("/bin/sh");
    if !syscall.exists(shell) {
        console.marker("no /bin/sh, waiting for poweroff or reboot");
        loop {
            if let Some(action) = waiter.wait(Duration::from_secs(60)) {
                return action;
            }
            reap_exited_children();
        }
    }
    console.marker("starting emergency shell /bin/sh");
    let mut command = std::process::Command::new(shell);
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/");
    // SAFETY: runs between fork and exec; setsid and ioctl are async-signal-safe and touch
    // no shared memory. The controlling terminal is best effort (job control).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            kiln_init::process_runner::reset_signals_for_exec();
            kiln_init::process_runner::restore_child_priority();
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 1);
            Ok(())
        });
    }
    let shell_pid = match command.spawn() {
        Ok(child) => i32::try_from(child.id()).unwrap_or(-1),
        Err(error) => {
            console.error(&format!("cannot start /bin/sh: {error}"));
            -1
        }
    };
    loop {
        if let Some(action) = waiter.wait(Duration::from_secs(1)) {
            return action;
        }
        if shell_pid < 0
            || reap_exited_children()
                .iter()
                .any(|(pid, _)| *pid == shell_pid)
        {
            console.marker("emergency shell exited");
            return PowerAction::PowerOff;
        }
    }
}

fn park_forever(waiter: &mut SignalWaiter) -> ! {
    loop {
        let _ = waiter.wait(Duration::from_secs(3600));
        reap_exited_children();
    }
}
