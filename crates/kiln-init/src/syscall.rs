//! Every privileged operation of PID 1 goes through [`Syscall`] (youki's model): [`LinuxSyscall`]
//! performs it, [`RecordingSyscall`] writes one line per call so the mount sequence, the module
//! load order and the shutdown sequence are unit-tested without being PID 1.
//!
//! *Architecture Invariant*: no other module of this crate calls `mount`, `mknod`,
//! `finit_module`, `reboot`, `sethostname`, `chroot`, or `kill(-1, …)` directly. (Signalling
//! and reaping the children a supervisor spawned itself is in [`crate::process_runner`], and
//! what a child does to itself between fork and exec — `unshare`, making its own `/` private,
//! `capset` — in [`crate::child_setup`]: neither touches PID 1, both are tested with real
//! processes, as style.md asks.)

use std::cell::RefCell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A failed system call: which one, on what, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {subject}: {source}")]
pub struct SyscallError {
    /// The call (`mount`, `finit_module`, ...).
    pub operation: &'static str,
    /// What it acted on (a path, a pid).
    pub subject: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

impl SyscallError {
    /// Builds an error from an errno value.
    pub fn from_errno(operation: &'static str, subject: impl Into<String>, errno: i32) -> Self {
        SyscallError {
            operation,
            subject: subject.into(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    fn last(operation: &'static str, subject: impl Into<String>) -> Self {
        SyscallError {
            operation,
            subject: subject.into(),
            source: std::io::Error::last_os_error(),
        }
    }

    /// The errno, if the error came from the OS.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// What `reboot(2)` is asked to do at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// `RB_POWER_OFF` (busybox `poweroff` sends SIGUSR2).
    PowerOff,
    /// `RB_AUTOBOOT` (busybox `reboot` sends SIGTERM; Ctrl-Alt-Del sends SIGINT).
    Reboot,
    /// `RB_HALT_SYSTEM` (busybox `halt` sends SIGUSR1).
    Halt,
}

impl PowerAction {
    /// The action busybox's `halt`/`poweroff`/`reboot` ask for with this signal, or
    /// Ctrl-Alt-Del (SIGINT once `reboot(RB_DISABLE_CAD)` is in effect).
    pub fn from_signal(signal: i32) -> Option<PowerAction> {
        match signal {
            libc::SIGUSR1 => Some(PowerAction::Halt),
            libc::SIGUSR2 => Some(PowerAction::PowerOff),
            libc::SIGTERM | libc::SIGINT => Some(PowerAction::Reboot),
            _ => None,
        }
    }

    /// The final console marker (without `kiln: `).
    pub fn marker(self) -> &'static str {
        match self {
            PowerAction::PowerOff => "powering off",
            PowerAction::Reboot => "rebooting",
            PowerAction::Halt => "halting",
        }
    }
}

/// Kinds of `reboot(2)` command kiln-init uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootCommand {
    /// `RB_DISABLE_CAD`: Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once.
    DisableCtrlAltDel,
    /// The final power action.
    Power(PowerAction),
}

/// The kind of a device node for [`Syscall::mknod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A character device.
    Character,
    /// A block device.
    Block,
}

/// The privileged operations of PID 1.
pub trait Syscall {
    /// `mkdir -p` with `mode` for the directories it creates.
    fn create_directory_all(&self, path: &Path, mode: u32) -> Result<(), SyscallError>;
    /// `mount(2)`.
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<(), SyscallError>;
    /// `umount2(2)`.
    fn unmount(&self, target: &Path, detach: bool) -> Result<(), SyscallError>;
    /// `mknod(2)`.
    fn mknod(
        &self,
        path: &Path,
        kind: DeviceKind,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), SyscallError>;
    /// `finit_module(2)` on the file at `path`.
    fn finit_module(&self, path: &Path, args: &str) -> Result<(), SyscallError>;
    /// `reboot(2)`.
    fn reboot(&self, command: RebootCommand) -> Result<(), SyscallError>;
    /// `sethostname(2)`.
    fn sethostname(&self, name: &str) -> Result<(), SyscallError>;
    /// `chdir(2)`.
    fn chdir(&self, path: &Path) -> Result<(), SyscallError>;
    /// `chroot(2)`.
    fn chroot(&self, path: &Path) -> Result<(), SyscallError>;
    /// `kill(2)`; `pid == -1` signals every process but PID 1.
    fn kill(&self, pid: i32, signal: i32) -> Result<(), SyscallError>;
    /// `sync(2)`.
    fn sync(&self);
    /// Reaps children until none is left or `timeout` passed; returns how many were reaped.
    fn reap_children_for(&self, timeout: Duration) -> usize;
    /// Moves every entry of the directory `from` into `to` (another filesystem: copy, then
    /// delete the original, one file at a time so memory use stays flat), skipping `skip`.
    fn move_tree_contents(
        &self,
        from: &Path,
        to: &Path,
        skip: &[PathBuf],
    ) -> Result<(), SyscallError>;
    /// Writes a whole file (creating parents) with `mode`.
    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), SyscallError>;
    /// Reads a whole file.
    fn read_file(&self, path: &Path) -> Result<Vec<u8>, SyscallError>;
    /// Whether something exists at `path` (without following a final symlink).
    fn exists(&self, path: &Path) -> bool;
}

fn path_to_cstring(operation: &'static str, path: &Path) -> Result<CString, SyscallError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SyscallError::from_errno(operation, path.display().to_string(), libc::EINVAL))
}

fn str_to_cstring(operation: &'static str, text: &str) -> Result<CString, SyscallError> {
    CString::new(text).map_err(|_| SyscallError::from_errno(operation, text, libc::EINVAL))
}

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> SyscallError {
    SyscallError {
        operation,
        subject: path.display().to_string(),
        source,
    }
}

/// The real Linux implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn create_directory_all(&self, path: &Path, mode: u32) -> Result<(), SyscallError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| io_error("mkdir", path, e))
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<(), SyscallError> {
        let source_c = str_to_cstring("mount", source)?;
        let target_c = path_to_cstring("mount", target)?;
        let fstype_c = fstype.map(|t| str_to_cstring("mount", t)).transpose()?;
        let data_c = data.map(|d| str_to_cstring("mount", d)).transpose()?;
        // SAFETY: every pointer is either null or points to a NUL-terminated CString that
        // lives until the call returns; the kernel copies the strings.
        let result = unsafe {
            libc::mount(
                source_c.as_ptr(),
                target_c.as_ptr(),
                fstype_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                flags as libc::c_ulong,
                data_c
                    .as_ref()
                    .map_or(std::ptr::null(), |c| c.as_ptr().cast::<libc::c_void>()),
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(SyscallError::last("mount", target.display().to_string()))
        }
    }

    fn unmount(&self, target: &Path, detach: bool) -> Result<(), SyscallError> {
        let target_c = path_to_cstring("umount", target)?;
        let flags = if detach { libc::MNT_DETACH } else { 0 };
        // SAFETY: target_c is a valid NUL-terminated string for the duration of the call.
        let result = unsafe { libc::umount2(target_c.as_ptr(), flags) };
        if result == 0 {
            Ok(())
        } else {
            Err(SyscallError::last("umount", target.display().to_string()))
        }
    }

    fn mknod(
        &self,
        path: &Path,
        kind: DeviceKind,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), SyscallError> {
        let path_c = path_to_cstring("mknod", path)?;
        let type_bits = match kind {
            DeviceKind::Character => libc::S_IFCHR,
            DeviceKind::Block => libc::S_IFBLK,
        };
        let device = libc::makedev(major, minor);
        // SAFETY: path_c is a valid NUL-terminated string; mode and device are plain integers.
        let result = unsafe { libc::mknod(path_c.as_ptr(), type_bits | mode, device) };
        if result == 0 {
            Ok(())
        } else {
            Err(SyscallError::last("mknod", path.display().to_string()))
        }
    }

    fn finit_module(&self, path: &Path, args: &str) -> Result<(), SyscallError> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).map_err(|e| io_error("open", path, e))?;
        let args_c = str_to_cstring("finit_module", args)?;
        // SAFETY: the fd is open for the duration of the call (`file` outlives it), args_c is
        // a valid NUL-terminated string, flags 0; finit_module takes no other pointers.
        let result = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                args_c.as_ptr(),
                0 as libc::c_int,
            )
        };
        if result == 0 {
            Ok(())
        } else {
            Err(SyscallError::last(
                "finit_module",
                path.display().to_string(),
            ))
        }
    }

    fn reboot(&self, command: RebootCommand) -> Result<(), SyscallError> {
        let value = match command {
            RebootCommand::DisableCtrlAltDel => libc::RB_DISABLE_CAD,
            RebootCommand::Power(PowerAction::PowerOff) => libc::RB_POWER_OFF,
            RebootCommand::Power(PowerAction::Reboot) => libc::RB_AUTOBOOT,
            RebootCommand::Power(PowerAction::Halt) => libc::RB_HALT_SYSTEM,
        };
        // SAFETY: reboot takes an integer command; no memory is passed.
        let result = unsafe { libc::reboot(value) };
        if result == 0 {
            Ok(())
        } else {
            Err(SyscallError::last("reboot", format!("{command:?}")))
        }
    }

    fn sethostname(&self, name: &str) -> Result<(), SyscallError> {
        // SAFETY: the pointer and length describe the bytes of `name`, valid for the call.
        let result = unsafe { libc::sethostname(name.as_ptr().cast::<libc::c_char>(), name.len()) };
        if result == 0 {
            Ok(())
        } else {
            Err(SyscallError::last("sethostname", name))
        }
    }

    fn chdir(&self, path: &Path) -> Result<(), SyscallError> {
        std::env::set_current_dir(path).map_err(|e| io_error("chdir", path, e))
    }

    fn chroot(&self, path: &Path) -> Result<(), SyscallError> {
        std::os::unix::fs::chroot(path).map_err(|e| io_error("chroot", path, e))
    }

    fn kill(&self, pid: i32, signal: i32) -> Result<(), SyscallError> {
        // SAFETY: kill takes two integers and touches no memory of ours.
        let result = unsafe { libc::kill(pid, signal) };
        if result == 0 {
            Ok(())
        } else {
            Err(SyscallError::last("kill", pid.to_string()))
        }
    }

    fn sync(&self) {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }

    fn reap_children_for(&self, timeout: Duration) -> usize {
        let deadline = std::time::Instant::now() + timeout;
        let mut reaped = 0;
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer; WNOHANG makes the call non-blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid > 0 {
                reaped += 1;
                continue;
            }
            if pid < 0 || std::time::Instant::now() >= deadline {
                // ECHILD: nothing left to wait for.
                return reaped;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn move_tree_contents(
        &self,
        from: &Path,
        to: &Path,
        skip: &[PathBuf],
    ) -> Result<(), SyscallError> {
        crate::early_mounts::move_tree_contents(from, to, skip)
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), SyscallError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(parent) = path.parent() {
            self.create_directory_all(parent, 0o755)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(|e| io_error("open", path, e))?;
        file.write_all(contents)
            .map_err(|e| io_error("write", path, e))
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, SyscallError> {
        std::fs::read(path).map_err(|e| io_error("read", path, e))
    }

    fn exists(&self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }
}

/// A test double: records one human-readable line per call, answers from a small in-memory
/// model (files written, files given), and fails calls on request.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: RefCell<Vec<String>>,
    failures: RefCell<Vec<(String, i32)>>,
    files: RefCell<std::collections::BTreeMap<PathBuf, Vec<u8>>>,
}

impl RecordingSyscall {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call whose recorded line starts with `prefix` fail with `errno` (the call
    /// is still recorded, with ` -> errno N` appended).
    pub fn fail_calls_starting_with(&self, prefix: &str, errno: i32) {
        self.failures.borrow_mut().push((prefix.to_string(), errno));
    }

    /// Provides a file for [`Syscall::read_file`] and [`Syscall::exists`].
    pub fn add_file(&self, path: &str, contents: &[u8]) {
        self.files
            .borrow_mut()
            .insert(PathBuf::from(path), contents.to_vec());
    }

    /// The contents of a file written or added.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.files.borrow().get(Path::new(path)).cloned()
    }

    /// Every call so far, one line each.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// The calls joined by newlines (for snapshots).
    pub fn transcript(&self) -> String {
        let mut text = self.calls.borrow().join("\n");
        text.push('\n');
        text
    }

    fn record(&self, line: String) -> Result<(), SyscallError> {
        let failure = self
            .failures
            .borrow()
            .iter()
            .find(|(prefix, _)| line.starts_with(prefix.as_str()))
            .map(|(_, errno)| *errno);
        match failure {
            Some(errno) => {
                self.calls
                    .borrow_mut()
                    .push(format!("{line} -> errno {errno}"));
                Err(SyscallError::from_errno("recorded", line, errno))
            }
            None => {
                self.calls.borrow_mut().push(line);
                Ok(())
            }
        }
    }
}

impl Syscall for RecordingSyscall {
    fn create_directory_all(&self, path: &Path, mode: u32) -> Result<(), SyscallError> {
        self.record(format!("mkdir -p {} mode={mode:o}", path.display()))
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: u64,
        data: Option<&str>,
    ) -> Result<(), SyscallError> {
        self.record(format!(
            "mount {source} {} type={} flags={} data={}",
            target.display(),
            fstype.unwrap_or("-"),
            crate::early_mounts::describe_mount_flags(flags),
            data.unwrap_or("-")
        ))
    }

    fn unmount(&self, target: &Path, detach: bool) -> Result<(), SyscallError> {
        self.record(format!(
            "umount {}{}",
            target.display(),
            if detach { " (detach)" } else { "" }
        ))
    }

    fn mknod(
        &self,
        path: &Path,
        kind: DeviceKind,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), SyscallError> {
        let kind = match kind {
            DeviceKind::Character => "c",
            DeviceKind::Block => "b",
        };
        self.record(format!(
            "mknod {} {kind} {major}:{minor} mode={mode:o}",
            path.display()
        ))
    }

    fn finit_module(&self, path: &Path, args: &str) -> Result<(), SyscallError> {
        self.record(format!("finit_module {} args={args:?}", path.display()))
    }

    fn reboot(&self, command: RebootCommand) -> Result<(), SyscallError> {
        self.record(format!("reboot {command:?}"))
    }

    fn sethostname(&self, name: &str) -> Result<(), SyscallError> {
        self.record(format!("sethostname {name}"))
    }

    fn chdir(&self, path: &Path) -> Result<(), SyscallError> {
        self.record(format!("chdir {}", path.display()))
    }

    fn chroot(&self, path: &Path) -> Result<(), SyscallError> {
        self.record(format!("chroot {}", path.display()))
    }

    fn kill(&self, pid: i32, signal: i32) -> Result<(), SyscallError> {
        self.record(format!(
            "kill {pid} {}",
            crate::supervision::signal_name(signal)
        ))
    }

    fn sync(&self) {
        let _ = self.record("sync".to_string());
    }

    fn reap_children_for(&self, timeout: Duration) -> usize {
        let _ = self.record(format!("reap children for {}ms", timeout.as_millis()));
        0
    }

    fn move_tree_contents(
        &self,
        from: &Path,
        to: &Path,
        skip: &[PathBuf],
    ) -> Result<(), SyscallError> {
        let skip: Vec<String> = skip.iter().map(|p| p.display().to_string()).collect();
        self.record(format!(
            "move tree {} -> {} skipping [{}]",
            from.display(),
            to.display(),
            skip.join(", ")
        ))
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), SyscallError> {
        self.record(format!(
            "write {} ({} bytes, mode={mode:o})",
            path.display(),
            contents.len()
        ))?;
        self.files
            .borrow_mut()
            .insert(path.to_path_buf(), contents.to_vec());
        Ok(())
    }

    fn read_file(&self, path: &Path) -> Result<Vec<u8>, SyscallError> {
        match self.files.borrow().get(path) {
            Some(contents) => Ok(contents.clone()),
            None => Err(SyscallError::from_errno(
                "read",
                path.display().to_string(),
                libc::ENOENT,
            )),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        self.files.borrow().contains_key(path)
    }
}
