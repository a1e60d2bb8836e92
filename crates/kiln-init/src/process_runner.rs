//! Real processes: onboot and shutdown steps with timeouts, supervised services with restart
//! backoff, output prefixed on the console and appended to `LOG_DIRECTORY/NAME.log`, reaping of
//! every child (orphans included).
//!
//! The same [`Supervisor`] runs as PID 1 and, in tests, as an ordinary process that made
//! itself a child subreaper (`PR_SET_CHILD_SUBREAPER`) with a config in a temp dir: the tests
//! in `tests/supervision_with_real_processes.rs` use `/bin/sh` and `sleep`, not mocks.
//!
//! *Architecture Invariant*: every child runs in its own session (`setsid`), so a timeout or a
//! shutdown signals the whole process group, not just the shell at its top; the supervisor
//! never signals a pid it did not spawn (the final `kill(-1)` is
//! [`crate::boot::finish_shutdown`]'s, through [`crate::syscall::Syscall`]).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::child_setup::{ChildSetup, FailureChannel};
use crate::config::{ServiceEntry, StepEntry};
use crate::supervision::{
    format_configured_duration, format_elapsed, lookup_user, next_backoff, should_restart, ExitKind,
};
use crate::syscall::PowerAction;

/// Where markers and prefixed output go: the console (PID 1's stdout), or a buffer in tests.
/// Every line is written whole under one lock, so service output never splits a marker.
#[derive(Clone)]
pub struct Console {
    sink: Arc<Mutex<Box<dyn Write + Send>>>,
    debug: bool,
    /// Debug lines start with the time since boot (off for captured output: tests compare it).
    timestamps: bool,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Console")
            .field("debug", &self.debug)
            .finish_non_exhaustive()
    }
}

/// A `Write` into a shared buffer, for [`Console::capture`].
#[derive(Debug, Clone, Default)]
pub struct CapturedOutput(pub Arc<Mutex<Vec<u8>>>);

impl CapturedOutput {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for CapturedOutput {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut inner) = self.0.lock() {
            inner.extend_from_slice(buffer);
        }
        Ok(buffer.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    /// The process's stdout (the kernel's `/dev/console` for PID 1).
    pub fn stdout() -> Console {
        Console {
            sink: Arc::new(Mutex::new(Box::new(std::io::stdout()))),
            debug: false,
            timestamps: true,
        }
    }

    /// A console that writes into a buffer (for tests), and that buffer.
    pub fn capture() -> (Console, CapturedOutput) {
        let captured = CapturedOutput::default();
        (
            Console {
                sink: Arc::new(Mutex::new(Box::new(captured.clone()))),
                debug: false,
                timestamps: false,
            },
            captured,
        )
    }

    /// Turns `kiln: debug: ...` lines on or off.
    pub fn set_debug(&mut self, debug: bool) {
        self.debug = debug;
    }

    /// Writes one whole line (a newline is added).
    pub fn line(&self, text: &str) {
        // A poisoned lock only means another thread panicked mid-write; keep printing.
        let mut sink = match self.sink.lock() {
            Ok(sink) => sink,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        // The console can fail (no /dev/console); nothing better to do than go on.
        let _ = sink.write_all(line.as_bytes());
        let _ = sink.flush();
    }

    /// `kiln: TEXT`.
    pub fn marker(&self, text: &str) {
        self.line(&format!("kiln: {text}"));
    }

    /// `kiln: warning: TEXT`.
    pub fn warning(&self, text: &str) {
        self.line(&format!("kiln: warning: {text}"));
    }

    /// `kiln: error: TEXT`.
    pub fn error(&self, text: &str) {
        self.line(&format!("kiln: error: {text}"));
    }

    /// `kiln: debug: [SECONDS] TEXT` (seconds since boot), only with `kiln.debug`.
    pub fn debug(&self, text: &str) {
        if self.debug {
            if self.timestamps {
                self.line(&format!("kiln: debug: [{}] {text}", since_boot()));
            } else {
                self.line(&format!("kiln: debug: {text}"));
            }
        }
    }
}

/// Seconds since the kernel started (`CLOCK_BOOTTIME`, what `/proc/uptime` counts), to the
/// millisecond, for debug lines: where a boot spends its time.
fn since_boot() -> String {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return "?".to_string();
    }
    format!("{}.{:03}", now.tv_sec, now.tv_nsec / 1_000_000)
}

/// What the supervisor waits on between checks: signals for PID 1, a flag in tests.
pub trait EventWaiter {
    /// Waits at most `timeout`; returns early with a power action when one is requested, or
    /// with `None` when a child may have exited (or the time passed).
    fn wait(&mut self, timeout: Duration) -> Option<PowerAction>;
}

/// The signals PID 1 handles: busybox's `halt` (SIGUSR1), `poweroff` (SIGUSR2), `reboot`
/// (SIGTERM), Ctrl-Alt-Del (SIGINT), and SIGCHLD to wake up for reaping.
pub const HANDLED_SIGNALS: [i32; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCHLD,
];

/// Waits with `sigtimedwait` on [`HANDLED_SIGNALS`], which [`SignalWaiter::install`] blocked.
#[derive(Debug)]
pub struct SignalWaiter {
    set: libc::sigset_t,
}

extern "C" fn ignore_signal(_signal: libc::c_int) {}

impl SignalWaiter {
    /// Blocks [`HANDLED_SIGNALS`] in the calling thread (call it first thing in `main`, before
    /// any thread exists, so every thread inherits the mask) and installs no-op handlers: the
    /// kernel drops signals to PID 1 that have the default disposition. Children get an empty
    /// mask and default handlers back: std's `Command` resets the mask, exec resets handlers.
    pub fn install() -> SignalWaiter {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for signal in HANDLED_SIGNALS {
            // SAFETY: `set` is initialised; signal numbers are valid constants.
            unsafe { libc::sigaddset(&mut set, signal) };
            // SAFETY: the handler is an `extern "C"` function that does nothing, so it is
            // async-signal-safe; the signals are blocked anyway and consumed by sigtimedwait.
            unsafe { libc::signal(signal, ignore_signal as *const () as libc::sighandler_t) };
        }
        // SAFETY: `set` is initialised; the old mask is not needed (null).
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        SignalWaiter { set }
    }
}

impl EventWaiter for SignalWaiter {
    fn wait(&mut self, timeout: Duration) -> Option<PowerAction> {
        // Capped at a day, which fits any time_t; the type is inferred from `timespec`.
        let seconds = timeout.as_secs().min(86_400).try_into().unwrap_or_default();
        let nanoseconds = libc::c_long::from(timeout.subsec_nanos());
        let timespec = libc::timespec {
            tv_sec: seconds,
            tv_nsec: nanoseconds,
        };
        // SAFETY: `self.set` is an initialised sigset_t; info may be null; timespec is valid.
        let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timespec) };
        if signal > 0 {
            PowerAction::from_signal(signal)
        } else {
            None
        }
    }
}

/// A waiter for tests and for non-PID-1 runs: sleeps, and reports the action set in
/// `requested` (set it from another thread to simulate `poweroff`).
#[derive(Debug, Clone, Default)]
pub struct ManualWaiter {
    /// The action to report; taken once.
    pub requested: Arc<Mutex<Option<PowerAction>>>,
}

impl EventWaiter for ManualWaiter {
    fn wait(&mut self, timeout: Duration) -> Option<PowerAction> {
        if let Some(action) = self.requested.lock().ok().and_then(|mut r| r.take()) {
            return Some(action);
        }
        std::thread::sleep(timeout);
        None
    }
}

/// Settings of a [`Supervisor`].
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Directory of `NAME.log` files (created when missing).
    pub log_directory: PathBuf,
    /// Rotate `NAME.log` to `NAME.log.1` at this size; 0: never.
    pub log_rotate_bytes: u64,
    /// Copy output lines to the console as `[NAME] line`.
    pub service_output_to_console: bool,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace: Duration,
    /// The longest the supervisor sleeps between checks.
    pub poll_interval: Duration,
    /// Environment every child starts with (the config's `env` is added on top).
    pub base_environment: BTreeMap<String, String>,
    /// `/etc/passwd` used to resolve `user`.
    pub passwd_path: PathBuf,
}

impl SupervisorSettings {
    /// The settings PID 1 uses.
    pub fn for_config(config: &crate::config::InitConfig) -> SupervisorSettings {
        let mut base_environment = BTreeMap::new();
        base_environment.insert(
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        );
        base_environment.insert("HOME".to_string(), "/".to_string());
        base_environment.insert("TERM".to_string(), "linux".to_string());
        SupervisorSettings {
            log_directory: config.console.log_directory.clone(),
            log_rotate_bytes: config.console.log_rotate_bytes,
            service_output_to_console: config.console.service_output_to_console,
            stop_grace: Duration::from_millis(config.stop_grace_ms),
            poll_interval: Duration::from_millis(250),
            base_environment,
            passwd_path: PathBuf::from("/etc/passwd"),
        }
    }
}

/// Which list a step belongs to; its name is the marker's first word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `onboot`.
    Onboot,
    /// `shutdown`.
    Shutdown,
}

impl StepKind {
    fn name(self) -> &'static str {
        match self {
            StepKind::Onboot => "onboot",
            StepKind::Shutdown => "shutdown",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Exit 0.
    Finished(Duration),
    /// Non-zero exit or a signal.
    Failed(ExitKind, Duration),
    /// Could not be spawned.
    FailedToStart(String),
    /// Killed at its timeout.
    TimedOut(Duration),
    /// Stopped because a power action was requested while it ran.
    Interrupted(PowerAction),
}

/// A fatal step failed: the boot stops.
#[derive(Debug, thiserror::Error)]
#[error("{kind} step `{name}` is fatal and did not succeed; fix the step or make it non-fatal in its module")]
pub struct FatalStepError {
    /// `onboot` or `shutdown`.
    pub kind: &'static str,
    /// The step.
    pub name: String,
}

#[derive(Debug)]
struct ServiceState {
    entry: ServiceEntry,
    pid: Option<i32>,
    started_at: Instant,
    backoff: Option<Duration>,
    restart_at: Option<Instant>,
}

/// A step that runs right now.
#[derive(Debug)]
struct RunningStep {
    /// Its index in the list being run.
    index: usize,
    pid: i32,
    exit: Option<ExitKind>,
    started: Instant,
    /// Signalled when the step's output pipe closed (all its lines were printed).
    output_closed: std::sync::mpsc::Receiver<()>,
    /// When SIGTERM was sent (at the timeout or at a power request).
    terminated_at: Option<Instant>,
    killed: bool,
    /// SIGTERM came from the timeout, not from a power request.
    timed_out: bool,
}

/// Runs steps and services, reaps everything.
pub struct Supervisor<'waiter> {
    settings: SupervisorSettings,
    console: Console,
    waiter: &'waiter mut dyn EventWaiter,
    services: Vec<ServiceState>,
    running_steps: Vec<RunningStep>,
    /// A power action requested while the supervisor was busy.
    pending_action: Option<PowerAction>,
    stopping: bool,
}

impl std::fmt::Debug for Supervisor<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Supervisor")
            .field("settings", &self.settings)
            .field("services", &self.services)
            .field("pending_action", &self.pending_action)
            .finish_non_exhaustive()
    }
}

/// `NAME.log`, appended line by line, renamed to `NAME.log.1` when it reaches the limit.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    rotate_bytes: u64,
}

impl RotatingLog {
    /// Opens (appends to) `path`; `rotate_bytes == 0` never rotates. A log that cannot be
    /// opened is skipped silently: the console still gets the lines.
    pub fn open(path: PathBuf, rotate_bytes: u64) -> RotatingLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        RotatingLog {
            path,
            file,
            size,
            rotate_bytes,
        }
    }

    /// Appends one whole line (rotation happens between lines, never inside one).
    pub fn append(&mut self, line: &[u8]) {
        let length = u64::try_from(line.len()).unwrap_or(u64::MAX);
        if self.rotate_bytes > 0
            && self.size > 0
            && self.size.saturating_add(length) > self.rotate_bytes
        {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            let _ = std::fs::rename(&self.path, &rotated);
            *self = RotatingLog::open(self.path.clone(), self.rotate_bytes);
        }
        if let Some(file) = self.file.as_mut() {
            if file.write_all(line).is_ok() {
                self.size = self.size.saturating_add(length);
            }
        }
    }
}

/// Reaps every exited child without blocking.
pub fn reap_exited_children() -> Vec<(i32, ExitKind)> {
    let mut exits = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return exits;
        }
        exits.push((pid, ExitKind::from_wait_status(status)));
    }
}

/// Signals the session of a child we spawned (its process group, then the process itself in
/// case it left the group).
fn signal_child_session(pid: i32, signal: i32) {
    // SAFETY: kill takes integers only; `pid` is a child this supervisor spawned with setsid,
    // so `-pid` is its own process group and nobody else's.
    unsafe {
        libc::kill(-pid, signal);
        libc::kill(pid, signal);
    }
}

/// In a forked child before exec: an empty signal mask and default dispositions. PID 1 blocks
/// [`HANDLED_SIGNALS`] and the mask survives `exec`; a service started with SIGTERM blocked
/// would never stop at shutdown (std's `Command` does not reset the mask in every
/// configuration: measured with this binary, whose `main` is not std's).
///
/// # Safety
/// Only to be called between fork and exec (or in a single-threaded process).
pub unsafe fn reset_signals_for_exec() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty` is a valid sigset_t; the calls are async-signal-safe and take integers
    // or pointers to this stack frame only.
    unsafe {
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for signal in HANDLED_SIGNALS {
            libc::signal(signal, libc::SIG_DFL);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The nice value PID 1 runs at (see [`raise_supervisor_priority`]).
pub const SUPERVISOR_NICE: i32 = -10;

/// The nice value children get back between fork and exec; `i32::MIN` while the supervisor
/// runs at the priority it started with (children inherit it unchanged).
static CHILD_NICE: AtomicI32 = AtomicI32::new(i32::MIN);

/// Runs the calling thread (and the threads it starts later: Linux's nice value is per
/// thread) at [`SUPERVISOR_NICE`] and has every child it spawns go back to the nice value it
/// started with. Call it from PID 1's main thread before any other thread exists. PID 1
/// starts the services, and their start-up (shell launchers, key generation) then competes
/// with it for the CPU: under emulation the last of four services started ~0.1 s after the
/// first at equal priority, ~0.05 s with PID 1 ahead of them (aarch64 TCG, 2 vCPUs). PID 1 itself sleeps in `sigtimedwait` between
/// events, so it takes little from them.
pub fn raise_supervisor_priority() -> std::io::Result<()> {
    // SAFETY: errno is thread-local; getpriority only reads the process's nice value, and
    // -1 is a valid answer, so errno tells an error apart.
    let original = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    let error = std::io::Error::last_os_error();
    if original == -1 && error.raw_os_error() != Some(0) {
        return Err(error);
    }
    // SAFETY: setpriority takes integers only; 0 is the calling process.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, SUPERVISOR_NICE) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    CHILD_NICE.store(original, Ordering::Relaxed);
    Ok(())
}

/// In a forked child before exec: the nice value the supervisor started with, when
/// [`raise_supervisor_priority`] changed its own. Async-signal-safe (an atomic load and one
/// system call); a failure leaves the child at the supervisor's priority.
pub fn restore_child_priority() {
    let nice = CHILD_NICE.load(Ordering::Relaxed);
    if nice != i32::MIN {
        // SAFETY: setpriority takes integers only; 0 is the calling process.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    }
}

/// Makes the calling process a child subreaper: orphans of its descendants are re-parented to
/// it, as they would be to PID 1. For running the supervisor outside PID 1.
pub fn become_child_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
    let result = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl<'waiter> Supervisor<'waiter> {
    /// A supervisor with nothing running.
    pub fn new(
        settings: SupervisorSettings,
        console: Console,
        waiter: &'waiter mut dyn EventWaiter,
    ) -> Self {
        Supervisor {
            settings,
            console,
            waiter,
            services: Vec::new(),
            running_steps: Vec::new(),
            pending_action: None,
            stopping: false,
        }
    }

    /// Spawns one child in its own session, output through a pipe to a logging thread, set up
    /// by `setup` (user, capabilities, namespaces) between fork and exec.
    fn spawn(
        &self,
        name: &str,
        argv: &[String],
        env: &BTreeMap<String, String>,
        working_directory: Option<&Path>,
        setup: ChildSetup,
    ) -> std::io::Result<(i32, std::sync::mpsc::Receiver<()>)> {
        let Some((program, arguments)) = argv.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty argv",
            ));
        };
        let (reader, writer) = std::io::pipe()?;
        let mut command = std::process::Command::new(program);
        command
            .args(arguments)
            .env_clear()
            .envs(&self.settings.base_environment)
            .envs(env)
            .current_dir(working_directory.unwrap_or(Path::new("/")))
            .stdin(std::process::Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer);
        // The user is switched in `setup.apply`, not with `Command::uid`: std switches before
        // running `pre_exec`, when it would be too late to keep capabilities across setuid.
        let failure_channel = FailureChannel::new()?;
        let channel = failure_channel.writer_descriptor();
        // SAFETY: the closure runs in the child between fork and exec. It resets signals, then
        // `ChildSetup::apply` (setsid, namespaces, user, capabilities) makes only
        // async-signal-safe system calls on its own `Copy` data and the channel's descriptor
        // (valid in the child, closed on exec); nothing is allocated and no memory shared with
        // the parent is touched.
        unsafe {
            command.pre_exec(move || {
                reset_signals_for_exec();
                restore_child_priority();
                setup.apply(channel)
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                drop(command);
                return Err(match failure_channel.into_failure() {
                    Some(step) => std::io::Error::new(error.kind(), format!("{step}: {error}")),
                    None => error,
                });
            }
        };
        // The Command holds the pipe's write ends: drop them, or the reader never sees EOF.
        drop(command);
        let pid = i32::try_from(child.id())
            .map_err(|_| std::io::Error::other("child pid does not fit in pid_t"))?;
        // The child is reaped by `reap_exited_children` (waitpid(-1)), not through `Child`.
        drop(child);
        let output_closed = self.spawn_output_logger(name, reader);
        Ok((pid, output_closed))
    }

    /// Starts the thread that copies a child's output; the receiver gets `()` (or a hang-up)
    /// when every writer of the pipe is gone.
    fn spawn_output_logger(
        &self,
        name: &str,
        reader: std::io::PipeReader,
    ) -> std::sync::mpsc::Receiver<()> {
        let (closed_sender, closed_receiver) = std::sync::mpsc::channel();
        let console = self.console.clone();
        let to_console = self.settings.service_output_to_console;
        let log_path = self.settings.log_directory.join(format!("{name}.log"));
        let log_directory = self.settings.log_directory.clone();
        let rotate_bytes = self.settings.log_rotate_bytes;
        let prefix = format!("[{name}] ");
        let spawned = std::thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || {
                let _ = std::fs::create_dir_all(&log_directory);
                let mut log = RotatingLog::open(log_path, rotate_bytes);
                let mut reader = std::io::BufReader::new(reader);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => {
                            let _ = closed_sender.send(());
                            return;
                        }
                        Ok(_) => {}
                    }
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    log.append(&line);
                    if to_console {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']);
                        console.line(&format!("{prefix}{text}"));
                    }
                }
            });
        if let Err(error) = spawned {
            self.console.warning(&format!(
                "cannot start the output logger of {name}: {error}"
            ));
        }
        closed_receiver
    }

    fn resolve_credentials(&self, service: &ServiceEntry) -> Result<Option<(u32, u32)>, String> {
        if let Some(user) = &service.user {
            let passwd = std::fs::read_to_string(&self.settings.passwd_path).map_err(|error| {
                format!(
                    "cannot read {}: {error}",
                    self.settings.passwd_path.display()
                )
            })?;
            let (uid, gid) = lookup_user(&passwd, user).ok_or_else(|| {
                format!(
                    "user `{user}` is not in {}",
                    self.settings.passwd_path.display()
                )
            })?;
            return Ok(Some((uid, service.gid.unwrap_or(gid))));
        }
        match (service.uid, service.gid) {
            (None, None) => Ok(None),
            (uid, gid) => Ok(Some((uid.unwrap_or(0), gid.unwrap_or(0)))),
        }
    }

    /// Waits once, records a power action, reaps, dispatches exits.
    fn tick(&mut self, timeout: Duration) {
        if let Some(action) = self.waiter.wait(timeout) {
            if self.pending_action.is_none() {
                self.pending_action = Some(action);
            }
        }
        for (pid, exit) in reap_exited_children() {
            self.dispatch_exit(pid, exit);
        }
    }

    fn dispatch_exit(&mut self, pid: i32, exit: ExitKind) {
        if let Some(step) = self.running_steps.iter_mut().find(|step| step.pid == pid) {
            step.exit = Some(exit);
            return;
        }
        let now = Instant::now();
        if let Some(service) = self.services.iter_mut().find(|s| s.pid == Some(pid)) {
            service.pid = None;
            let name = &service.entry.name;
            if self.stopping {
                self.console.marker(&format!(
                    "service {name} stopped ({})",
                    exit.describe_for_service()
                ));
                return;
            }
            if should_restart(service.entry.restart, Some(exit)) {
                let ran_for = now.saturating_duration_since(service.started_at);
                let delay = next_backoff(service.backoff, &service.entry.backoff, ran_for);
                service.backoff = Some(delay);
                service.restart_at = Some(now + delay);
                self.console.marker(&format!(
                    "service {name} exited ({}), restarting in {}",
                    exit.describe_for_service(),
                    format_configured_duration(delay)
                ));
            } else {
                self.console.marker(&format!(
                    "service {name} exited ({}), not restarting (restart policy {})",
                    exit.describe_for_service(),
                    service.entry.restart.name()
                ));
            }
            return;
        }
        self.console.debug(&format!(
            "reaped orphan {pid} ({})",
            exit.describe_for_service()
        ));
    }

    /// A power action requested so far (and forgets it).
    pub fn take_pending_action(&mut self) -> Option<PowerAction> {
        self.pending_action.take()
    }

    /// Runs one step to completion or timeout and prints its marker.
    pub fn run_step(&mut self, kind: StepKind, step: &StepEntry) -> StepOutcome {
        let (mut outcomes, interrupted) =
            self.run_step_graph(kind, std::slice::from_ref(step), &[Vec::new()], &[false]);
        match (outcomes.pop().flatten(), interrupted) {
            (Some(outcome), _) => outcome,
            // A power request was pending before the step could start.
            (None, action) => StepOutcome::Interrupted(action.unwrap_or(PowerAction::PowerOff)),
        }
    }

    /// Runs steps, skipping `disabled` names: each step starts once the steps it comes after
    /// ([`StepEntry::predecessors`]: the one before it, or its `after` list) have ended,
    /// so independent steps run at the same time. Stops starting steps at a power request
    /// (onboot) or once a fatal step failed (the running ones end first). Returns the power
    /// action if one interrupted the steps.
    pub fn run_steps(
        &mut self,
        kind: StepKind,
        steps: &[StepEntry],
        disabled: &[String],
    ) -> Result<Option<PowerAction>, FatalStepError> {
        let predecessors: Vec<Vec<usize>> = (0..steps.len())
            .map(|index| StepEntry::predecessors(steps, index))
            .collect();
        let skipped: Vec<bool> = steps
            .iter()
            .map(|step| disabled.contains(&step.name))
            .collect();
        let (outcomes, interrupted) = self.run_step_graph(kind, steps, &predecessors, &skipped);
        if let Some(action) = interrupted {
            return Ok(Some(action));
        }
        for (step, outcome) in steps.iter().zip(&outcomes) {
            let succeeded = matches!(outcome, None | Some(StepOutcome::Finished(_)));
            if !succeeded && step.fatal {
                return Err(FatalStepError {
                    kind: kind.name(),
                    name: step.name.clone(),
                });
            }
        }
        Ok(None)
    }

    /// The scheduler behind [`Supervisor::run_step`] and [`Supervisor::run_steps`]. Returns
    /// each step's outcome (`None`: skipped, or never started because the steps stopped) and
    /// the power action that interrupted them, if any.
    fn run_step_graph(
        &mut self,
        kind: StepKind,
        steps: &[StepEntry],
        predecessors: &[Vec<usize>],
        skipped: &[bool],
    ) -> (Vec<Option<StepOutcome>>, Option<PowerAction>) {
        let kind_name = kind.name();
        let mut outcomes: Vec<Option<StepOutcome>> = vec![None; steps.len()];
        let mut ended = vec![false; steps.len()];
        let mut started = vec![false; steps.len()];
        let mut interrupted_by: Option<PowerAction> = None;
        let mut fatal_failed = false;
        loop {
            // Onboot steps stop at a power request; shutdown steps are part of it.
            if kind == StepKind::Onboot && interrupted_by.is_none() {
                interrupted_by = self.pending_action;
            }
            // Start (in list order) every step whose predecessors have all ended.
            let mut progressed = true;
            while progressed && interrupted_by.is_none() && !fatal_failed {
                progressed = false;
                for index in 0..steps.len() {
                    if started[index] || !predecessors[index].iter().all(|&p| ended[p]) {
                        continue;
                    }
                    started[index] = true;
                    progressed = true;
                    let step = &steps[index];
                    if skipped[index] {
                        self.console.marker(&format!(
                            "{kind_name} {} disabled by kernel command line",
                            step.name
                        ));
                        ended[index] = true;
                        continue;
                    }
                    if let Err(error) = self.start_step(kind, step, index) {
                        self.console.marker(&format!(
                            "{kind_name} {} failed to start ({error})",
                            step.name
                        ));
                        outcomes[index] = Some(StepOutcome::FailedToStart(error.to_string()));
                        ended[index] = true;
                        fatal_failed |= step.fatal;
                    }
                }
            }
            // Steps that exited: their marker, in the order they ended.
            let mut progressed_by_exit = false;
            let exited: Vec<usize> = self
                .running_steps
                .iter()
                .filter(|running| running.exit.is_some())
                .map(|running| running.index)
                .collect();
            for index in exited {
                let position = self
                    .running_steps
                    .iter()
                    .position(|running| running.index == index)
                    .unwrap_or_default();
                let running = self.running_steps.remove(position);
                let outcome = self.finish_step(kind, &steps[index], running, interrupted_by);
                fatal_failed |= steps[index].fatal && !matches!(outcome, StepOutcome::Finished(_));
                outcomes[index] = Some(outcome);
                ended[index] = true;
                // Steps waiting for this one start now, not after the next wait.
                progressed_by_exit = true;
            }
            if self.running_steps.is_empty()
                && (interrupted_by.is_some()
                    || fatal_failed
                    || started.iter().all(|&was_started| was_started))
            {
                break;
            }
            if progressed_by_exit {
                continue;
            }
            // Timeouts, and the power request, for every running step.
            let now = Instant::now();
            let mut wait = self.settings.poll_interval;
            let stop_grace = self.settings.stop_grace;
            for running in &mut self.running_steps {
                let timeout = Duration::from_millis(steps[running.index].timeout_ms);
                let elapsed = now.saturating_duration_since(running.started);
                if running.terminated_at.is_none()
                    && (elapsed >= timeout || interrupted_by.is_some())
                {
                    signal_child_session(running.pid, libc::SIGTERM);
                    running.terminated_at = Some(now);
                    running.timed_out = interrupted_by.is_none();
                }
                match running.terminated_at {
                    Some(at) => {
                        if !running.killed && now.saturating_duration_since(at) >= stop_grace {
                            signal_child_session(running.pid, libc::SIGKILL);
                            running.killed = true;
                        }
                        wait = wait.min(Duration::from_millis(50));
                    }
                    None => {
                        wait = wait
                            .min(timeout.saturating_sub(elapsed))
                            .max(Duration::from_millis(1));
                    }
                }
            }
            self.tick(wait);
        }
        (outcomes, interrupted_by)
    }

    /// Spawns a step and records it as running.
    fn start_step(
        &mut self,
        kind: StepKind,
        step: &StepEntry,
        index: usize,
    ) -> std::io::Result<()> {
        let started = Instant::now();
        let setup = ChildSetup::new(None, step.capabilities.as_deref(), &step.namespaces);
        let (pid, output_closed) = self.spawn(
            &step.name,
            &step.argv,
            &step.env,
            step.working_directory.as_deref(),
            setup,
        )?;
        self.console.debug(&format!(
            "{} {} started (pid {pid})",
            kind.name(),
            step.name
        ));
        self.running_steps.push(RunningStep {
            index,
            pid,
            exit: None,
            started,
            output_closed,
            terminated_at: None,
            killed: false,
            timed_out: false,
        });
        Ok(())
    }

    /// Prints the marker of a step that exited and says how it ended.
    fn finish_step(
        &mut self,
        kind: StepKind,
        step: &StepEntry,
        running: RunningStep,
        interrupted_by: Option<PowerAction>,
    ) -> StepOutcome {
        let kind_name = kind.name();
        let name = &step.name;
        let elapsed = running.started.elapsed();
        let exit = running.exit.unwrap_or(ExitKind::Signaled(libc::SIGKILL));
        // Let the step's last lines reach the console before its marker; a background process
        // that keeps the pipe open (a daemonised dhcp client) only costs this short wait.
        let _ = running
            .output_closed
            .recv_timeout(Duration::from_millis(100));
        if let (Some(action), false) = (interrupted_by, running.timed_out) {
            if running.terminated_at.is_some() {
                self.console.marker(&format!(
                    "{kind_name} {name} stopped for {} ({})",
                    action.marker(),
                    exit.describe_for_step()
                ));
                return StepOutcome::Interrupted(action);
            }
        }
        if running.terminated_at.is_some() {
            self.console.marker(&format!(
                "{kind_name} {name} timed out after {}",
                format_configured_duration(Duration::from_millis(step.timeout_ms))
            ));
            return StepOutcome::TimedOut(elapsed);
        }
        if exit.is_success() {
            self.console.marker(&format!(
                "{kind_name} {name} finished ({}, {})",
                exit.describe_for_step(),
                format_elapsed(elapsed)
            ));
            StepOutcome::Finished(elapsed)
        } else {
            self.console.marker(&format!(
                "{kind_name} {name} failed ({}, {})",
                exit.describe_for_step(),
                format_elapsed(elapsed)
            ));
            StepOutcome::Failed(exit, elapsed)
        }
    }

    fn start_service(&mut self, index: usize) {
        let entry = self.services[index].entry.clone();
        let name = &entry.name;
        self.services[index].restart_at = None;
        self.services[index].started_at = Instant::now();
        let spawned = self
            .resolve_credentials(&entry)
            .map_err(|problem| problem.to_string())
            .and_then(|credentials| {
                let setup = ChildSetup::new(
                    credentials,
                    entry.capabilities.as_deref(),
                    &entry.namespaces,
                );
                self.spawn(
                    name,
                    &entry.argv,
                    &entry.env,
                    entry.working_directory.as_deref(),
                    setup,
                )
                .map_err(|error| error.to_string())
            });
        match spawned {
            Ok((pid, _output_closed)) => {
                self.services[index].pid = Some(pid);
                self.console
                    .marker(&format!("service {name} started (pid {pid})"));
            }
            Err(reason) => {
                let service = &mut self.services[index];
                if should_restart(entry.restart, None) {
                    let delay = next_backoff(service.backoff, &entry.backoff, Duration::ZERO);
                    service.backoff = Some(delay);
                    service.restart_at = Some(Instant::now() + delay);
                    self.console.marker(&format!(
                        "service {name} failed to start ({reason}), restarting in {}",
                        format_configured_duration(delay)
                    ));
                } else {
                    self.console.marker(&format!(
                        "service {name} failed to start ({reason}), not restarting (restart policy {})",
                        entry.restart.name()
                    ));
                }
            }
        }
    }

    /// Starts services in the given order (already sorted by `after`).
    pub fn start_services(&mut self, services: Vec<ServiceEntry>) {
        for entry in services {
            self.services.push(ServiceState {
                entry,
                pid: None,
                started_at: Instant::now(),
                backoff: None,
                restart_at: None,
            });
            let index = self.services.len() - 1;
            self.start_service(index);
        }
    }

    /// The pid of a running service.
    pub fn service_pid(&self, name: &str) -> Option<i32> {
        self.services
            .iter()
            .find(|s| s.entry.name == name)
            .and_then(|s| s.pid)
    }

    /// Supervises (restarts, reaps) until a power action is requested, or until `limit`
    /// passed (tests; `None` for PID 1). Returns the action, `None` at the limit.
    pub fn supervise(&mut self, limit: Option<Duration>) -> Option<PowerAction> {
        let started = Instant::now();
        loop {
            if let Some(action) = self.pending_action.take() {
                return Some(action);
            }
            if let Some(limit) = limit {
                if started.elapsed() >= limit {
                    return None;
                }
            }
            let now = Instant::now();
            let due: Vec<usize> = self
                .services
                .iter()
                .enumerate()
                .filter(|(_, s)| s.pid.is_none() && s.restart_at.is_some_and(|at| at <= now))
                .map(|(index, _)| index)
                .collect();
            for index in due {
                self.start_service(index);
            }
            let next_restart = self
                .services
                .iter()
                .filter_map(|s| s.restart_at)
                .min()
                .map(|at| at.saturating_duration_since(Instant::now()));
            let mut wait = self.settings.poll_interval;
            if let Some(next) = next_restart {
                wait = wait.min(next).max(Duration::from_millis(1));
            }
            self.tick(wait);
        }
    }

    /// Stops every service: SIGTERM to each (reverse start order), waits up to the grace
    /// period, SIGKILL to what is left, waits for those too (bounded).
    pub fn stop_services(&mut self) {
        self.stopping = true;
        for service in self.services.iter_mut() {
            service.restart_at = None;
        }
        for service in self.services.iter().rev() {
            if let Some(pid) = service.pid {
                signal_child_session(pid, libc::SIGTERM);
            }
        }
        let started = Instant::now();
        while self.services.iter().any(|s| s.pid.is_some())
            && started.elapsed() < self.settings.stop_grace
        {
            self.tick(Duration::from_millis(50));
        }
        let grace = format_configured_duration(self.settings.stop_grace);
        for service in self.services.iter().rev() {
            if let Some(pid) = service.pid {
                self.console.marker(&format!(
                    "service {} did not stop within {grace}, killing it",
                    service.entry.name
                ));
                signal_child_session(pid, libc::SIGKILL);
            }
        }
        let started = Instant::now();
        while self.services.iter().any(|s| s.pid.is_some())
            && started.elapsed() < Duration::from_secs(2)
        {
            self.tick(Duration::from_millis(20));
        }
    }
}
