//! The typed schema of `/etc/kiln/init.json`, the file the image assembler generates from the
//! modules of a profile, and its validation.
//!
//! *Architecture Invariant*: this module does no I/O besides reading the one file handed to
//! [`InitConfig::load`]; everything else takes and returns data. Every struct denies unknown
//! keys, so a typo in a generated config is a build-time or boot-time error with a line and
//! column, never a silently ignored setting.
//!
//! Durations are integer milliseconds (`*_ms`) so the generated file is exact and byte-stable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where PID 1 reads its configuration in the image.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kiln/init.json";

/// The whole configuration of kiln-init.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// Hostname set with `sethostname(2)` before any step runs; `None` leaves the kernel's.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Moving the root filesystem off the initramfs's rootfs (needed by anything that calls
    /// `pivot_root`, e.g. container runtimes).
    #[serde(default)]
    pub root: RootSettings,
    /// Extra mounts, after the fixed early mounts and after kernel modules are loaded.
    #[serde(default)]
    pub mounts: Vec<MountEntry>,
    /// Kernel modules to load with `finit_module(2)`, in this order (the assembler writes them
    /// in `modules.dep` order: dependencies first).
    #[serde(default)]
    pub kernel_modules: Vec<KernelModuleEntry>,
    /// One-shot steps run in order before services start.
    #[serde(default)]
    pub onboot: Vec<StepEntry>,
    /// Long-running supervised services.
    #[serde(default)]
    pub services: Vec<ServiceEntry>,
    /// One-shot steps run in order when the machine powers off or reboots, before services
    /// are stopped.
    #[serde(default)]
    pub shutdown: Vec<StepEntry>,
    /// Console and log settings.
    #[serde(default)]
    pub console: ConsoleSettings,
    /// How long a process gets between SIGTERM and SIGKILL (steps past their timeout, services
    /// at shutdown, the final kill of every remaining process).
    #[serde(default = "default_stop_grace_ms")]
    pub stop_grace_ms: u64,
}

fn default_stop_grace_ms() -> u64 {
    5_000
}

/// Moving `/` off rootfs onto a tmpfs (the MS_MOVE + chroot technique, as `switch_root` does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSettings {
    /// Copy the initramfs contents into a fresh tmpfs and make it `/`. Off by default: it costs
    /// boot time and, transiently, memory for the largest file.
    #[serde(default)]
    pub move_off_rootfs: bool,
    /// The `size=` option of that tmpfs (e.g. `"90%"`); `None` keeps the kernel default (50%).
    #[serde(default)]
    pub tmpfs_size: Option<String>,
}

/// One `mount(2)` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountEntry {
    /// Source (device, or a name such as `none` for virtual filesystems).
    pub source: String,
    /// Absolute mount point; created when missing.
    pub target: PathBuf,
    /// Filesystem type (`tmpfs`, `debugfs`, `ext4`, ...).
    pub fstype: String,
    /// Generic flags by name: `ro`, `nosuid`, `nodev`, `noexec`, `noatime`, `relatime`,
    /// `bind`, `rbind`, `private`, `shared`, `slave`, `rec`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Filesystem-specific data (e.g. `mode=0755,size=64m`).
    #[serde(default)]
    pub data: Option<String>,
    /// A failure is a warning, not a fatal error (default: true; a missing optional
    /// filesystem must not stop the boot).
    #[serde(default = "default_true")]
    pub optional: bool,
}

/// A kernel module file and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelModuleEntry {
    /// Absolute path of the `.ko` file (uncompressed, or compressed if the kernel was built
    /// with in-kernel module decompression).
    pub path: PathBuf,
    /// Module parameters, e.g. `"debug=1 max_vfs=4"`.
    #[serde(default)]
    pub args: String,
}

/// An `onboot` or `shutdown` step: a command run to completion with a timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepEntry {
    /// Unique name among steps of the same list; used in markers and as the log file name.
    pub name: String,
    /// Program and arguments; `argv[0]` is an absolute path or found through `PATH`.
    pub argv: Vec<String>,
    /// Extra environment on top of `PATH`, `HOME=/`, `TERM=linux`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub working_directory: Option<PathBuf>,
    /// Exactly these capabilities (see [`ServiceEntry::capabilities`]); `None` keeps root's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Capability>>,
    /// New namespaces the step starts in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Namespace>,
    /// SIGTERM after this long, SIGKILL `stop_grace_ms` later (default 60 s).
    #[serde(default = "default_step_timeout_ms")]
    pub timeout_ms: u64,
    /// When true, a failed or timed-out step stops the boot (emergency shell). Default false:
    /// the boot must not hang or stop because, say, dhcp failed.
    #[serde(default)]
    pub fatal: bool,
    /// The steps (listed earlier in the same list) that must have ended before this one
    /// starts. Absent: the step before it in the list (one after another, as LinuxKit runs
    /// onboot steps). Given: the step starts as soon as those have ended, alongside any other
    /// step that is ready (the assembler writes each module's `after:`/`requires:` here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
}

impl StepEntry {
    /// Indexes (into `steps`) of the steps that must end before `steps[index]` starts. Names
    /// not found among the earlier steps are left out ([`InitConfig::parse`] rejects them).
    pub fn predecessors(steps: &[StepEntry], index: usize) -> Vec<usize> {
        match &steps[index].after {
            None => index.checked_sub(1).into_iter().collect(),
            Some(names) => names
                .iter()
                .filter_map(|name| steps[..index].iter().position(|step| &step.name == name))
                .collect(),
        }
    }
}

fn default_step_timeout_ms() -> u64 {
    60_000
}

/// When a service is restarted after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    #[default]
    Always,
    /// Restart after a non-zero exit or death by a signal.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// The name used in the config and in console markers.
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// Exponential restart backoff: `initial_ms`, doubled after every quick exit, capped at
/// `max_ms`, back to `initial_ms` once the service ran for `reset_after_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSettings {
    /// First restart delay (default 1 s).
    #[serde(default = "default_backoff_initial_ms")]
    pub initial_ms: u64,
    /// Largest restart delay (default 30 s).
    #[serde(default = "default_backoff_max_ms")]
    pub max_ms: u64,
    /// A run at least this long resets the delay to `initial_ms` (default 60 s).
    #[serde(default = "default_backoff_reset_after_ms")]
    pub reset_after_ms: u64,
}

fn default_backoff_initial_ms() -> u64 {
    1_000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_backoff_reset_after_ms() -> u64 {
    60_000
}

impl Default for BackoffSettings {
    fn default() -> Self {
        BackoffSettings {
            initial_ms: default_backoff_initial_ms(),
            max_ms: default_backoff_max_ms(),
            reset_after_ms: default_backoff_reset_after_ms(),
        }
    }
}

/// A long-running supervised service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// Unique service name; used in markers, the `[NAME] ` output prefix, `/var/log/NAME.log`
    /// and `kiln.services.disable=`.
    pub name: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment on top of `PATH`, `HOME=/`, `TERM=linux`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default `/`).
    #[serde(default)]
    pub working_directory: Option<PathBuf>,
    /// Run as this user, looked up in `/etc/passwd` at start (exclusive with `uid`).
    #[serde(default)]
    pub user: Option<String>,
    /// Run with this numeric uid.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Run with this numeric gid (default: the user's primary group, or 0).
    #[serde(default)]
    pub gid: Option<u32>,
    /// Exactly these capabilities: the bounding set is reduced to them and they become the
    /// permitted, effective and inheritable sets (and the ambient set for a non-root user, so
    /// they survive the setuid and the exec). `Some([])`: none at all. `None`: what the user
    /// normally gets (everything for root, nothing otherwise). Left out of the JSON when
    /// `None`, so configs without it are byte-identical to before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Capability>>,
    /// New namespaces the service starts in (`unshare(2)` before exec; `pid` through a
    /// waiter process, see [`Namespace::Pid`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Namespace>,
    /// Restart policy (default `always`).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Restart backoff.
    #[serde(default)]
    pub backoff: BackoffSettings,
    /// Services that must be started before this one (start order only; no readiness wait).
    #[serde(default)]
    pub after: Vec<String>,
}

/// A Linux capability by its kernel name (`CAP_NET_BIND_SERVICE`); the discriminant is the
/// kernel's capability number, the bit in `/proc/PID/status`'s masks. The module schema
/// (kiln-spec) has the same list with a description of each; a kiln-assemble test checks
/// that the two agree name for name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum Capability {
    CapChown = 0,
    CapDacOverride = 1,
    CapDacReadSearch = 2,
    CapFowner = 3,
    CapFsetid = 4,
    CapKill = 5,
    CapSetgid = 6,
    CapSetuid = 7,
    CapSetpcap = 8,
    CapLinuxImmutable = 9,
    CapNetBindService = 10,
    CapNetBroadcast = 11,
    CapNetAdmin = 12,
    CapNetRaw = 13,
    CapIpcLock = 14,
    CapIpcOwner = 15,
    CapSysModule = 16,
    CapSysRawio = 17,
    CapSysChroot = 18,
    CapSysPtrace = 19,
    CapSysPacct = 20,
    CapSysAdmin = 21,
    CapSysBoot = 22,
    CapSysNice = 23,
    CapSysResource = 24,
    CapSysTime = 25,
    CapSysTtyConfig = 26,
    CapMknod = 27,
    CapLease = 28,
    CapAuditWrite = 29,
    CapAuditControl = 30,
    CapSetfcap = 31,
    CapMacOverride = 32,
    CapMacAdmin = 33,
    CapSyslog = 34,
    CapWakeAlarm = 35,
    CapBlockSuspend = 36,
    CapAuditRead = 37,
    CapPerfmon = 38,
    CapBpf = 39,
    CapCheckpointRestore = 40,
}

impl Capability {
    /// Every capability, in number order.
    pub const ALL: [Capability; 41] = [
        Capability::CapChown,
        Capability::CapDacOverride,
        Capability::CapDacReadSearch,
        Capability::CapFowner,
        Capability::CapFsetid,
        Capability::CapKill,
        Capability::CapSetgid,
        Capability::CapSetuid,
        Capability::CapSetpcap,
        Capability::CapLinuxImmutable,
        Capability::CapNetBindService,
        Capability::CapNetBroadcast,
        Capability::CapNetAdmin,
        Capability::CapNetRaw,
        Capability::CapIpcLock,
        Capability::CapIpcOwner,
        Capability::CapSysModule,
        Capability::CapSysRawio,
        Capability::CapSysChroot,
        Capability::CapSysPtrace,
        Capability::CapSysPacct,
        Capability::CapSysAdmin,
        Capability::CapSysBoot,
        Capability::CapSysNice,
        Capability::CapSysResource,
        Capability::CapSysTime,
        Capability::CapSysTtyConfig,
        Capability::CapMknod,
        Capability::CapLease,
        Capability::CapAuditWrite,
        Capability::CapAuditControl,
        Capability::CapSetfcap,
        Capability::CapMacOverride,
        Capability::CapMacAdmin,
        Capability::CapSyslog,
        Capability::CapWakeAlarm,
        Capability::CapBlockSuspend,
        Capability::CapAuditRead,
        Capability::CapPerfmon,
        Capability::CapBpf,
        Capability::CapCheckpointRestore,
    ];

    /// The kernel's number for it (`CAP_NET_BIND_SERVICE` is 10).
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The capability with this kernel number, if the schema knows it.
    pub fn from_number(number: u8) -> Option<Capability> {
        Capability::ALL.get(usize::from(number)).copied()
    }

    /// The kernel's name (`CAP_NET_BIND_SERVICE`), for messages.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A kind of namespace a child starts in, new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// `CLONE_NEWNS`; `/` is then made `MS_REC | MS_PRIVATE`.
    Mount,
    /// `CLONE_NEWUTS`.
    Uts,
    /// `CLONE_NEWIPC`.
    Ipc,
    /// `CLONE_NEWNET`; `lo` is brought up.
    Net,
    /// `CLONE_NEWCGROUP`.
    Cgroup,
    /// `CLONE_NEWPID`: unshare only affects the caller's future children, so the child forks
    /// once more; the grandchild (PID 1 of the new namespace) runs the program and the child
    /// waits for it, forwarding signals and its exit status.
    Pid,
}

impl Namespace {
    /// The `unshare(2)` flag.
    pub fn clone_flag(self) -> libc::c_int {
        match self {
            Namespace::Mount => libc::CLONE_NEWNS,
            Namespace::Uts => libc::CLONE_NEWUTS,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Net => libc::CLONE_NEWNET,
            Namespace::Cgroup => libc::CLONE_NEWCGROUP,
            Namespace::Pid => libc::CLONE_NEWPID,
        }
    }
}

/// Console and log settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Copy every output line of steps and services to the console as `[NAME] line`
    /// (default true). Markers (`kiln: ...`) always go to the console.
    #[serde(default = "default_true")]
    pub service_output_to_console: bool,
    /// Directory of the per-step and per-service log files `NAME.log` (default `/var/log`).
    #[serde(default = "default_log_directory")]
    pub log_directory: PathBuf,
    /// Size at which `NAME.log` is renamed to `NAME.log.1` (replacing it) and started anew
    /// (default 1 MiB): the logs live in RAM, a chatty service must not fill it. `0` keeps
    /// everything.
    #[serde(default = "default_log_rotate_bytes")]
    pub log_rotate_bytes: u64,
}

fn default_log_rotate_bytes() -> u64 {
    1024 * 1024
}

fn default_true() -> bool {
    true
}
fn default_log_directory() -> PathBuf {
    PathBuf::from("/var/log")
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            service_output_to_console: true,
            log_directory: default_log_directory(),
            log_rotate_bytes: default_log_rotate_bytes(),
        }
    }
}

/// A configuration that could not be read or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read init config {path}: {source}; the image assembler writes it from the profile's modules")]
    Read {
        /// The config path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or does not match the schema.
    #[error("invalid init config {path}: {message} at line {line} column {column}")]
    Parse {
        /// The config path.
        path: PathBuf,
        /// serde_json's message without its position.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// The schema is respected but the content is inconsistent.
    #[error("invalid init config {path}: {problem}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// What is wrong and what to change.
        problem: String,
    },
}

impl InitConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<InitConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        InitConfig::parse(path, &text)
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<InitConfig, ConfigError> {
        let config: InitConfig = serde_json::from_str(text).map_err(|error| {
            let full = error.to_string();
            // serde_json appends " at line L column C"; the position is reported separately.
            let message = match full.rfind(" at line ") {
                Some(position) => full[..position].to_string(),
                None => full,
            };
            ConfigError::Parse {
                path: path.to_path_buf(),
                message,
                line: error.line(),
                column: error.column(),
            }
        })?;
        config.validate().map_err(|problem| ConfigError::Invalid {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(config)
    }

    /// Checks what the schema cannot: names, argv, ordering, user settings.
    fn validate(&self) -> Result<(), String> {
        for (list_name, steps) in [("onboot", &self.onboot), ("shutdown", &self.shutdown)] {
            let mut seen = BTreeSet::new();
            for step in steps {
                check_name(list_name, &step.name)?;
                if !seen.insert(step.name.as_str()) {
                    return Err(format!(
                        "{list_name} step `{}` is defined twice; step names must be unique",
                        step.name
                    ));
                }
                if step.argv.is_empty() {
                    return Err(format!(
                        "{list_name} step `{}` has an empty argv; give at least the program",
                        step.name
                    ));
                }
                if step.timeout_ms == 0 {
                    return Err(format!(
                        "{list_name} step `{}` has timeout_ms 0; give a positive timeout",
                        step.name
                    ));
                }
                for earlier in step.after.iter().flatten() {
                    if !steps.iter().any(|other| &other.name == earlier) {
                        return Err(format!(
                            "{list_name} step `{}` runs after `{earlier}`, but no {list_name} step has that name; remove it from `after` or add the step",
                            step.name
                        ));
                    }
                    if !seen.contains(earlier.as_str()) || earlier == &step.name {
                        return Err(format!(
                            "{list_name} step `{}` runs after `{earlier}`, which is not a step listed before it; list steps in an order where every `after` name comes first",
                            step.name
                        ));
                    }
                }
            }
        }
        let mut service_names = BTreeSet::new();
        for service in &self.services {
            check_name("service", &service.name)?;
            if !service_names.insert(service.name.as_str()) {
                return Err(format!(
                    "service `{}` is defined twice; service names must be unique",
                    service.name
                ));
            }
            if service.argv.is_empty() {
                return Err(format!(
                    "service `{}` has an empty argv; give at least the program",
                    service.name
                ));
            }
            if service.user.is_some() && service.uid.is_some() {
                return Err(format!(
                    "service `{}` sets both user and uid; set only one",
                    service.name
                ));
            }
            let backoff = service.backoff;
            if backoff.initial_ms == 0 || backoff.max_ms < backoff.initial_ms {
                return Err(format!(
                    "service `{}` has backoff initial_ms {} and max_ms {}; need 0 < initial_ms <= max_ms",
                    service.name, backoff.initial_ms, backoff.max_ms
                ));
            }
        }
        for mount in &self.mounts {
            if !mount.target.is_absolute() {
                return Err(format!(
                    "mount target `{}` is not absolute",
                    mount.target.display()
                ));
            }
            for flag in &mount.flags {
                if crate::early_mounts::mount_flag_by_name(flag).is_none() {
                    return Err(format!(
                        "mount of `{}` has unknown flag `{flag}`; known flags: {}",
                        mount.target.display(),
                        crate::early_mounts::KNOWN_MOUNT_FLAG_NAMES.join(", ")
                    ));
                }
            }
        }
        for module in &self.kernel_modules {
            if !module.path.is_absolute() {
                return Err(format!(
                    "kernel module path `{}` is not absolute",
                    module.path.display()
                ));
            }
        }
        // Unknown `after` names and cycles.
        crate::supervision::order_services_by_after(&self.services).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Names become file names (`/var/log/NAME.log`) and console prefixes: keep them plain.
fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "{kind} name `{name}` is not plain; use 1-64 characters from a-z A-Z 0-9 - _ . (not starting with .)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        InitConfig::parse(Path::new("/etc/kiln/init.json"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn example_config_parses_with_defaults() {
        let config = InitConfig::parse(
            Path::new("examples/init.json"),
            include_str!("../examples/init.json"),
        )
        .unwrap();
        assert_eq!(config.onboot.len(), 2);
        assert!(!config.onboot[1].fatal);
        let worker = &config.services[2];
        assert_eq!(worker.restart, RestartPolicy::OnFailure);
        assert_eq!(worker.backoff, BackoffSettings::default());
        assert_eq!(worker.after, vec!["containerd".to_string()]);
        assert_eq!(worker.capabilities, None);
        let syslog = &config.services[3];
        assert_eq!(syslog.capabilities, Some(vec![Capability::CapSyslog]));
        assert_eq!(syslog.namespaces, [Namespace::Net]);
        assert_eq!(
            InitConfig::parse(Path::new("x"), "{}").unwrap(),
            InitConfig {
                stop_grace_ms: 5000,
                ..InitConfig::default()
            }
        );
    }

    #[test]
    fn bad_config_messages() {
        let cases = [
            ("unknown top-level key", r#"{"onboot": [], "servics": []}"#),
            (
                "unknown step key",
                r#"{"onboot": [{"name": "dhcp", "argv": ["/sbin/udhcpc"], "timeout": 30}]}"#,
            ),
            (
                "bad restart policy",
                r#"{"services": [{"name": "getty", "argv": ["/sbin/getty"], "restart": "sometimes"}]}"#,
            ),
            ("missing argv", r#"{"services": [{"name": "getty"}]}"#),
            ("not json", "{\n  \"onboot\": [,]\n}"),
            (
                "empty argv",
                r#"{"onboot": [{"name": "dhcp", "argv": []}]}"#,
            ),
            (
                "duplicate service",
                r#"{"services": [{"name": "a", "argv": ["/a"]}, {"name": "a", "argv": ["/b"]}]}"#,
            ),
            (
                "bad name",
                r#"{"services": [{"name": "../etc/passwd", "argv": ["/a"]}]}"#,
            ),
            (
                "user and uid",
                r#"{"services": [{"name": "a", "argv": ["/a"], "user": "nobody", "uid": 65534}]}"#,
            ),
            (
                "backoff",
                r#"{"services": [{"name": "a", "argv": ["/a"], "backoff": {"initial_ms": 5000, "max_ms": 1000}}]}"#,
            ),
            (
                "after cycle",
                r#"{"services": [{"name": "a", "argv": ["/a"], "after": ["b"]}, {"name": "b", "argv": ["/b"], "after": ["a"]}]}"#,
            ),
            (
                "after unknown",
                r#"{"services": [{"name": "docker", "argv": ["/d"], "after": ["containerd"]}]}"#,
            ),
            (
                "mount flag",
                r#"{"mounts": [{"source": "none", "target": "/mnt", "fstype": "tmpfs", "flags": ["readonly"]}]}"#,
            ),
            (
                "relative module",
                r#"{"kernel_modules": [{"path": "igc.ko"}]}"#,
            ),
            (
                "unknown capability",
                r#"{"services": [{"name": "a", "argv": ["/a"], "capabilities": ["CAP_NET_BIND"]}]}"#,
            ),
            (
                "unknown namespace",
                r#"{"onboot": [{"name": "a", "argv": ["/a"], "namespaces": ["user"]}]}"#,
            ),
            (
                "zero timeout",
                r#"{"onboot": [{"name": "x", "argv": ["/x"], "timeout_ms": 0}]}"#,
            ),
            (
                "step after a later step",
                r#"{"onboot": [{"name": "a", "argv": ["/a"], "after": ["b"]}, {"name": "b", "argv": ["/b"]}]}"#,
            ),
            (
                "step after an unknown step",
                r#"{"onboot": [{"name": "a", "argv": ["/a"], "after": ["network"]}]}"#,
            ),
        ];
        let mut report = String::new();
        for (title, text) in cases {
            report.push_str(&format!("{title}:\n  {}\n", error_of(text)));
        }
        insta::assert_snapshot!(report);
    }

    #[test]
    fn missing_file_names_the_path() {
        let error = InitConfig::load(Path::new("/nonexistent/kiln/init.json")).unwrap_err();
        insta::assert_snapshot!(error.to_string(), @"cannot read init config /nonexistent/kiln/init.json: No such file or directory (os error 2); the image assembler writes it from the profile's modules");
    }
}
