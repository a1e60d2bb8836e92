//! The module and profile schema: what `modules/<name>/module.yaml` and
//! `profiles/<name>.yaml` may say, parsed strictly.
//!
//! **Owns:** the YAML types ([`ModuleSpec`], [`ProfileSpec`]), loading the catalog from a
//! repository root ([`Catalog::load`]) and checking that every profile names modules that
//! exist.
//!
//! **Architecture Invariant:** this crate does no network, spawns no process and knows
//! nothing of the lock or the store: it turns YAML files into data. Every YAML error names
//! the file, the line and the column (`path:line:column: message`), because a user who typed
//! `sorces:` must be told where, not just what.
//!
//! **Open for extension:** the schema is deliberately minimal (what `cargo xtask lock`
//! needs). Later fields (command, env, services, kernel features...) are added as new
//! optional fields with `#[serde(default)]` on [`ModuleSpec`], or as new variants of
//! [`ModuleSource`]; every type keeps `deny_unknown_fields`, so a typo is an error and a
//! new field is a deliberate, reviewed change.
//!
//! ```yaml
//! # modules/base/module.yaml
//! description: The userland every image starts from.
//! kind: base
//! sources:
//!   - debian: [busybox-static, ca-certificates]
//!   - tarball:
//!       name: example-1.0.tar.gz
//!       urls: [https://example.org/example-1.0.tar.gz]
//!       sha256: 0123...
//!       size: 1234
//! ```
//! ```yaml
//! # profiles/debug.yaml
//! modules: [base, sshd]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a module is for, which decides when (and whether) it enters an image.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// Merged into the image's root filesystem (the userland, certificates, the init).
    #[default]
    Base,
    /// A one-shot step run in order at boot (sysctl, dhcp), like LinuxKit's `onboot`.
    Onboot,
    /// A long-running service (sshd, the agent launcher), like LinuxKit's `services`.
    Service,
    /// A one-shot step run at shutdown, like LinuxKit's `onshutdown`.
    Shutdown,
    /// An input of the build itself (the kernel source), never put into an image.
    /// Its Debian packages are pinned by name only: their `Depends` are not resolved,
    /// because the build unpacks them, it does not install them.
    Build,
}

impl ModuleKind {
    /// The name written in `kind:`.
    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Base => "base",
            ModuleKind::Onboot => "onboot",
            ModuleKind::Service => "service",
            ModuleKind::Shutdown => "shutdown",
            ModuleKind::Build => "build",
        }
    }

    /// Whether the Debian packages this module names get their `Depends`/`Pre-Depends`
    /// closure resolved (true for everything that goes into an image).
    pub fn resolves_debian_dependencies(self) -> bool {
        !matches!(self, ModuleKind::Build)
    }
}

/// One input of a module, as written in `sources:`.
///
/// Written as a single-key map: `- debian: [a, b]`, `- tarball: {name, urls, sha256, size}`,
/// `- files: files`, `- crate: {package, path}` or `- image: host:port/repository:tag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ModuleSource {
    /// Debian binary packages by name; `cargo xtask lock` pins them (and, unless the module is
    /// a [`ModuleKind::Build`] module, their dependency closure) from the host's apt sources.
    Debian(Vec<String>),
    /// A source tarball, pinned by its author: the lock copies the pin as written.
    Tarball(TarballSpec),
    /// A directory beside `module.yaml` whose contents are copied into the image root
    /// (`files/usr/libexec/kiln/dhcp` becomes `/usr/libexec/kiln/dhcp`). Owners become 0:0
    /// and modes are kept (only the permission bits), so a checkout's umask or user never
    /// reaches the image.
    Files(String),
    /// A binary crate of this workspace, built for the image's architecture (static musl,
    /// reproducibly) and installed at `path`.
    Crate(CrateSource),
    /// An OCI image from a registry (`host[:port]/repository:tag` or `…@sha256:…`), its
    /// layers applied in order (whiteouts honoured). `cargo xtask lock` resolves the
    /// reference to the manifest digest of each architecture (through an image index when
    /// the reference names one); builds pull only that digest.
    Image(ImageReference),
}

/// A fully qualified OCI image reference, checked when the file is read:
/// `registry/repository:tag`, `registry/repository@sha256:<64 hex>` or both. The registry
/// is always written out (a host with a dot or a port, or `localhost`): kiln never guesses
/// a default registry, so what a module pulls is visible in the module.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ImageReference(String);

impl ImageReference {
    /// Checks `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<ImageReference, String> {
        let hint = "write `registry[:port]/repository:tag` or `registry[:port]/repository@sha256:<64 hex digits>`";
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (text, None),
        };
        if let Some(digest) = digest {
            let hex = digest.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(format!("image reference `{text}`: the digest `{digest}` is not `sha256:` and 64 lowercase hex digits; {hint}"));
            }
        }
        let Some((registry, rest)) = name.split_once('/') else {
            return Err(format!(
                "image reference `{text}` names no registry; {hint}"
            ));
        };
        if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(format!("image reference `{text}`: `{registry}` is not a registry host (kiln does not assume a default registry); {hint}"));
        }
        // A tag is a `:` after the last `/` (a registry port comes before the first `/`).
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
            _ => (rest, None),
        };
        if repository.is_empty()
            || !repository
                .bytes()
                .all(|byte| matches!(byte, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/'))
            || repository.starts_with('/')
            || repository.ends_with('/')
        {
            return Err(format!("image reference `{text}`: repository `{repository}` must be lowercase letters, digits, `.`, `_`, `-` and `/`; {hint}"));
        }
        if let Some(tag) = tag {
            if tag.is_empty()
                || tag.len() > 128
                || !tag
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
            {
                return Err(format!("image reference `{text}`: tag `{tag}` must be 1 to 128 letters, digits, `.`, `_` or `-`; {hint}"));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!(
                "image reference `{text}` has neither a tag nor a digest; {hint}"
            ));
        }
        Ok(ImageReference(text.to_owned()))
    }

    /// The reference as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ImageReference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ImageReference::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A workspace crate built for the target architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrateSource {
    /// The cargo package (`kiln-init`).
    pub package: String,
    /// Where the binary goes in the image (`/init`).
    pub path: String,
}

/// A source tarball pinned by the module's author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TarballSpec {
    /// The file name the build refers to it by (`linux-6.1.tar.xz`).
    pub name: String,
    /// Where to download it, tried in order. May be empty for a file that users drop
    /// into the store's `import/` directory themselves (air-gapped sites).
    #[serde(default)]
    pub urls: Vec<String>,
    /// The sha256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// The size in bytes, so a truncated download is caught before it is hashed.
    pub size: u64,
}

/// `modules/<name>/module.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    /// One or two sentences for the catalog listing.
    pub description: String,
    /// When the module runs, or that it is a build input.
    pub kind: ModuleKind,
    /// The pinned inputs the module is made from. (`singleton_map_recursive`: serde_yaml 0.9
    /// reads enums from `!tags` by default; modules write `- debian: [...]` maps instead.)
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub sources: Vec<ModuleSource>,
    /// The process an `onboot`, `service` or `shutdown` module runs: argv, absolute path
    /// first. `${option}` is replaced by the value of the module's option `option`.
    #[serde(default)]
    pub command: Vec<String>,
    /// Extra environment of that process (kiln-init gives every process `PATH`); values
    /// may use `${option}` too.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the process (default `/`).
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The user a service runs as (a name from the image's `/etc/passwd`); default root.
    /// Services only: onboot and shutdown steps run as root.
    #[serde(default)]
    pub user: Option<String>,
    /// The Linux capabilities the process keeps, by the kernel's names
    /// (`[CAP_NET_BIND_SERVICE, CAP_SYS_TIME]`, see [`Capability`]). Unset: what a process of
    /// its user normally has (all of kiln-init's for root, none for another `user:`). Set:
    /// exactly these: the bounding set is reduced to them, so not even a setuid-root program
    /// it runs gets more, and they are its permitted, effective and inheritable sets; for a
    /// non-root `user:` they are also raised as ambient capabilities, which is what makes them
    /// survive the change of user and the `exec`. `[]` means none at all, even for root. For
    /// `onboot`, `service` and `shutdown` modules; written to init.json once each, sorted by
    /// capability number.
    #[serde(default)]
    pub capabilities: Option<Vec<Capability>>,
    /// New namespaces the process starts in (see [`Namespace`]): kiln-init calls
    /// `unshare(2)` in the child before `exec`, so the service sees its own copy of these
    /// and the rest of the system does not see its changes. `net` gives it a network of its own with
    /// `lo` (brought up): never on a module that needs the machine's network. For `onboot`,
    /// `service` and `shutdown` modules; written to init.json once each, in the order of
    /// the list below. The kernel must have them: the plan adds `CONFIG_UTS_NS`,
    /// `CONFIG_IPC_NS`, `CONFIG_NET_NS`, `CONFIG_CGROUPS` or `CONFIG_PID_NS` (built in) to the
    /// module's kernel needs.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// When a service is restarted after it exits (default `always`).
    #[serde(default)]
    pub restart: Option<RestartPolicy>,
    /// How long kiln-init waits before a restart: doubles from `initial` up to `max`.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Seconds an `onboot` or `shutdown` step may run before it is killed (default 60).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Whether a failed `onboot` step stops the boot (default no: the machine still comes
    /// up to a console where an operator can look).
    #[serde(default)]
    pub fatal: bool,
    /// Modules that must run (onboot) or start (services) before this one, when the profile
    /// has them.
    #[serde(default)]
    pub after: Vec<String>,
    /// Modules that must be in any profile that has this one (and run before it).
    #[serde(default)]
    pub requires: Vec<String>,
    /// The kernel command-line parameters the module reads, documented.
    #[serde(default)]
    pub cmdline: Vec<CmdlineParameter>,
    /// What the module needs from the kernel.
    #[serde(default)]
    pub kernel: KernelNeeds,
    /// Settings a profile may give (`options: {sshd: {port: 2222}}`), used as `${name}` in
    /// `command` and `env`.
    #[serde(default)]
    pub options: BTreeMap<String, OptionSpec>,
    /// Files the assembler derives from the composed tree or the build's identity.
    #[serde(default)]
    pub generate: Vec<Generator>,
    /// Packages the `Depends` of this module's Debian packages name that the image does not
    /// need (used only by their maintainer scripts, which never run in an image, or by
    /// features the module does not use): `cargo xtask lock` does not follow those edges
    /// from this module's packages. Each needs a comment in module.yaml saying why.
    #[serde(default)]
    pub skip_dependencies: Vec<String>,
    /// The module calls `pivot_root(2)` (a container runtime does): kiln-init then moves
    /// `/` off the initramfs's rootfs onto a tmpfs before anything runs, since rootfs
    /// cannot be pivoted away from.
    #[serde(default)]
    pub needs_pivot_root: bool,
}

/// A Linux capability, as `capabilities(7)` names it: upper case with the `CAP_` prefix
/// (`CAP_NET_BIND_SERVICE`). Every capability of the kernel up to `CAP_CHECKPOINT_RESTORE`
/// (Linux 5.9) is accepted; kiln-init refuses to start a process asking for one its kernel
/// does not know. Variants are in the kernel's numbering order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Capability {
    /// Change the owner and group of any file.
    CapChown,
    /// Read, write and execute any file regardless of its permissions.
    CapDacOverride,
    /// Read any file and list any directory regardless of their permissions.
    CapDacReadSearch,
    /// Act as the owner of any file (chmod, utime, set ACLs).
    CapFowner,
    /// Keep the set-user-ID and set-group-ID bits when changing a file.
    CapFsetid,
    /// Send signals to processes of other users.
    CapKill,
    /// Change group IDs and supplementary groups.
    CapSetgid,
    /// Change user IDs.
    CapSetuid,
    /// Change capability bounding and securebits; give away permitted capabilities.
    CapSetpcap,
    /// Set the immutable and append-only file attributes.
    CapLinuxImmutable,
    /// Bind TCP and UDP ports below 1024.
    CapNetBindService,
    /// Broadcast and listen to multicast (unused by the kernel).
    CapNetBroadcast,
    /// Configure interfaces, addresses, routes, firewall rules.
    CapNetAdmin,
    /// Open raw and packet sockets (ping, DHCP clients).
    CapNetRaw,
    /// Lock memory (mlock, mlockall, huge pages).
    CapIpcLock,
    /// Bypass permission checks on System V IPC objects.
    CapIpcOwner,
    /// Load and unload kernel modules.
    CapSysModule,
    /// Raw I/O: ioperm, iopl, /dev/mem.
    CapSysRawio,
    /// Call chroot.
    CapSysChroot,
    /// Trace any process.
    CapSysPtrace,
    /// Turn process accounting on and off.
    CapSysPacct,
    /// Mount, set the hostname, and many other administrative operations.
    CapSysAdmin,
    /// Reboot, and load a new kernel with kexec.
    CapSysBoot,
    /// Raise priorities and change scheduling policies of any process.
    CapSysNice,
    /// Override resource limits and quotas.
    CapSysResource,
    /// Set the system clock.
    CapSysTime,
    /// Configure terminals (vhangup, some ioctls).
    CapSysTtyConfig,
    /// Create device nodes.
    CapMknod,
    /// Take leases on files the process does not own.
    CapLease,
    /// Write to the kernel audit log.
    CapAuditWrite,
    /// Configure kernel auditing.
    CapAuditControl,
    /// Set file capabilities.
    CapSetfcap,
    /// Override a Mandatory Access Control policy (Smack).
    CapMacOverride,
    /// Configure Mandatory Access Control (Smack).
    CapMacAdmin,
    /// Read and clear the kernel log with syslog(2), set the console log level (klogd).
    CapSyslog,
    /// Set timers that wake the system up.
    CapWakeAlarm,
    /// Keep the system from suspending.
    CapBlockSuspend,
    /// Read the audit log through a multicast netlink socket.
    CapAuditRead,
    /// Use perf events and other performance monitoring.
    CapPerfmon,
    /// Use privileged BPF operations.
    CapBpf,
    /// Checkpoint and restore processes (CRIU).
    CapCheckpointRestore,
}

/// A kind of Linux namespace a process can start in, new (`namespaces(7)`). Not `user`: a
/// user namespace would give the service root inside it and change what its capabilities
/// mean; kiln's services run as real users of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    /// Its own mount table, a copy of the system's; `/` is made private (`MS_REC |
    /// MS_PRIVATE`), so its mounts and unmounts never propagate back.
    Mount,
    /// Its own hostname and NIS domain name, starting as copies of the system's.
    Uts,
    /// Its own System V IPC objects and POSIX message queues.
    Ipc,
    /// Its own network stack: `lo`, brought up, and only what the kernel creates in every new
    /// namespace (fallback tunnel devices such as `sit0`, down). No access to the machine's
    /// network.
    Net,
    /// Its own cgroup root: it sees its cgroup as `/`.
    Cgroup,
    /// Its own process IDs: the service is PID 1 of a new PID namespace. kiln-init forks a
    /// small waiter that stays outside, forwards signals to it and exits with its status
    /// (the pid kiln-init reports is the waiter's). As PID 1 the service only receives the
    /// signals it has a handler for, so one without a SIGTERM handler is killed after the
    /// grace period. With `mount` too, a fresh `/proc` is mounted for it; without, `/proc`
    /// still shows the system's processes.
    Pid,
}

impl Capability {
    /// The name written in `capabilities:` (`CAP_NET_BIND_SERVICE`).
    pub fn name(self) -> String {
        serde_yaml::to_string(&self)
            .map(|text| text.trim().to_owned())
            .unwrap_or_default()
    }
}

impl Namespace {
    /// The name written in `namespaces:`.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Mount => "mount",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
            Namespace::Cgroup => "cgroup",
            Namespace::Pid => "pid",
        }
    }
}

/// `restart:` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever it exits.
    Always,
    /// Restart when it exits non-zero or is killed by a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// `backoff:` of a service, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first delay.
    pub initial_ms: u64,
    /// The largest delay.
    pub max_ms: u64,
}

/// One documented kernel command-line parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmdlineParameter {
    /// `vlan_id=N`, `sshd.authorized_key=B64`...
    pub name: String,
    /// What it does.
    pub description: String,
}

/// `kernel:` of a module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelNeeds {
    /// Kernel options the module needs: `CONFIG_X` is satisfied by `y` or `m`,
    /// `CONFIG_X=y` only by built-in.
    #[serde(default)]
    pub options: Vec<String>,
    /// Kernel modules loaded at boot, before any onboot step (when the kernel has them as
    /// modules; a built-in one needs no loading).
    #[serde(default)]
    pub modules: Vec<String>,
}

/// One option a profile may set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionSpec {
    /// What it changes.
    pub description: String,
    /// The value when the profile gives none; no default makes the option required.
    #[serde(default)]
    pub default: Option<OptionValue>,
}

/// An option value: YAML strings, numbers and booleans, kept as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OptionValue(pub String);

impl<'de> Deserialize<'de> for OptionValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = OptionValue;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string, number or boolean")
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<OptionValue, E> {
                Ok(OptionValue(value.to_owned()))
            }
            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<OptionValue, E> {
                Ok(OptionValue(value.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<OptionValue, E> {
                Ok(OptionValue(value.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<OptionValue, E> {
                Ok(OptionValue(value.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<OptionValue, E> {
                Ok(OptionValue(value.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A file the assembler makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generator {
    /// `/etc/ssl/certs/ca-certificates.crt`: every `/usr/share/ca-certificates/**/*.crt`
    /// of the composed tree, sorted by path, concatenated (what `update-ca-certificates`
    /// makes, without running a maintainer script).
    CaBundle,
    /// `/etc/os-release` with the build's identity (profile, architecture, kiln version,
    /// `SOURCE_DATE_EPOCH`, the build key).
    OsRelease,
    /// busybox's applet links, what `busybox --install -s` makes at boot, made at build time
    /// instead: an absolute symlink to `/bin/busybox` at each applet's install location
    /// (`sbin/modprobe`, `usr/bin/wget`...), read from the applet tables inside the image's
    /// own `/bin/busybox` (the build host need not run the target's binary). A path the
    /// image already has (a real binary from any module, `bin/sh`) is kept, as
    /// `--install -s` keeps it.
    BusyboxLinks,
}

impl ModuleSpec {
    /// Every Debian package name this module asks for, in the order written.
    pub fn debian_packages(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().flat_map(|source| match source {
            ModuleSource::Debian(names) => names.iter().map(String::as_str).collect::<Vec<_>>(),
            _ => Vec::new(),
        })
    }

    /// Every OCI image reference this module asks for, in the order written.
    pub fn images(&self) -> impl Iterator<Item = &ImageReference> {
        self.sources.iter().filter_map(|source| match source {
            ModuleSource::Image(reference) => Some(reference),
            _ => None,
        })
    }

    /// Every tarball this module asks for.
    pub fn tarballs(&self) -> impl Iterator<Item = &TarballSpec> {
        self.sources.iter().filter_map(|source| match source {
            ModuleSource::Tarball(tarball) => Some(tarball),
            _ => None,
        })
    }
}

/// `profiles/<name>.yaml`: which modules make an image, in order, and how it boots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// One sentence for listings.
    #[serde(default)]
    pub description: Option<String>,
    /// A profile whose settings this one starts from: its modules come first, its options
    /// and command line are merged with this profile's (this profile wins).
    #[serde(default)]
    pub extends: Option<String>,
    /// Module names (directories under `modules/`), in the order their layers are composed.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Modules of the extended profile this one leaves out (`minimal` without `sshd`).
    #[serde(default)]
    pub remove: Vec<String>,
    /// Option values per module: `options: {sshd: {port: 2222}}`.
    #[serde(default)]
    pub options: BTreeMap<String, BTreeMap<String, OptionValue>>,
    /// The kernel the image boots.
    #[serde(default)]
    pub kernel: Option<KernelChoice>,
    /// Default kernel command line, for every architecture and per architecture.
    #[serde(default)]
    pub cmdline: CmdlineDefaults,
    /// The name outputs carry (`hook` gives `hook_x86_64.tar.gz`); default the file's name.
    #[serde(default)]
    pub output_name: Option<String>,
    /// Warn when the unpacked initramfs is larger than this many MiB (it lives in RAM).
    #[serde(default)]
    pub ram_budget_mib: Option<u64>,
    /// Paths removed from the composed tree, with everything below them (`usr/share/doc`):
    /// what packages ship for people, which an image in RAM does not need. A `*` component
    /// matches any one name (`usr/lib/*/gconv`, for both architectures). Extending
    /// profiles add to the list.
    #[serde(default)]
    pub prune: Vec<String>,
    /// OCI images shipped inside the initramfs for air-gapped sites, as one OCI image layout
    /// at `/var/lib/kiln/images` that a container runtime can import (`skopeo copy
    /// oci:/var/lib/kiln/images:REF ...`); each pinned per architecture by `cargo xtask
    /// lock`. Extending profiles add to the list.
    #[serde(default)]
    pub embed_images: Vec<ImageReference>,
    /// How the initramfs is compressed; default `zstd`. Extending profiles inherit it.
    #[serde(default)]
    pub compression: Option<InitramfsCompression>,
}

/// `compression:` of a profile: the format the kernel unpacks the main archive from.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum InitramfsCompression {
    /// zstd at `cargo xtask image --level` (default 12): the smallest file, for networks
    /// that are slow next to the CPU. Needs `CONFIG_RD_ZSTD`.
    #[default]
    Zstd,
    /// LZ4's legacy stream (LZ4HC level 9, what `lz4 -l` writes): ~45% larger than zstd,
    /// unpacked by the kernel several times faster, which shows under emulation (QEMU TCG:
    /// 0.4 s instead of 1.1 s for 25 MiB). Needs `CONFIG_RD_LZ4` (every kiln kernel flavor
    /// and Debian's kernels have it).
    Lz4,
}

impl InitramfsCompression {
    /// The name written in `compression:`.
    pub fn name(self) -> &'static str {
        match self {
            InitramfsCompression::Zstd => "zstd",
            InitramfsCompression::Lz4 => "lz4",
        }
    }

    /// The kernel option that lets the kernel unpack an initramfs in this format.
    pub fn kernel_option(self) -> &'static str {
        match self {
            InitramfsCompression::Zstd => "CONFIG_RD_ZSTD",
            InitramfsCompression::Lz4 => "CONFIG_RD_LZ4",
        }
    }
}

/// `kernel:` of a profile: exactly one of `flavor` (a kernel kiln builds) and
/// `debian_package` (the distribution's prebuilt kernel, for sites that prefer it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelChoice {
    /// A flavor of `kernel-configs/flavor/` (`virt`, `generic`), built from the pinned source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// A prebuilt Debian kernel package (`linux-image-*`) per architecture, instead of a
    /// built kernel: `cargo xtask lock` pins it (`required_by: profile:<name>`), the build
    /// imports its vmlinuz, System.map, config and modules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debian_package: Option<DebianKernelPackages>,
}

/// `kernel: {debian_package: ...}` of a profile: the package per architecture (a profile
/// that names none for an architecture cannot be built for it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianKernelPackages {
    /// The amd64 package (`linux-image-6.1.0-56-cloud-amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x86_64: Option<String>,
    /// The arm64 package (`linux-image-6.1.0-56-cloud-arm64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aarch64: Option<String>,
}

impl DebianKernelPackages {
    /// The package for `arch` (`x86_64` or `aarch64`).
    pub fn for_arch(&self, arch: &str) -> Option<&str> {
        match arch {
            "x86_64" => self.x86_64.as_deref(),
            "aarch64" => self.aarch64.as_deref(),
            _ => None,
        }
    }
}

/// What a [`KernelChoice`] says, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind<'choice> {
    /// Build this flavor.
    Flavor(&'choice str),
    /// Import these Debian packages.
    DebianPackage(&'choice DebianKernelPackages),
}

impl KernelChoice {
    /// Build `flavor` from the pinned source.
    pub fn flavor(flavor: &str) -> Self {
        KernelChoice {
            flavor: Some(flavor.to_owned()),
            debian_package: None,
        }
    }

    /// Which of the two it is (parsing guarantees exactly one).
    pub fn kind(&self) -> KernelKind<'_> {
        match (&self.flavor, &self.debian_package) {
            (_, Some(packages)) => KernelKind::DebianPackage(packages),
            (Some(flavor), None) => KernelKind::Flavor(flavor),
            (None, None) => KernelKind::Flavor("virt"),
        }
    }
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            KernelKind::Flavor(flavor) => write!(formatter, "flavor {flavor}"),
            KernelKind::DebianPackage(packages) => {
                let names: Vec<String> =
                    [("x86_64", &packages.x86_64), ("aarch64", &packages.aarch64)]
                        .into_iter()
                        .filter_map(|(arch, name)| {
                            name.as_ref().map(|name| format!("{arch}: {name}"))
                        })
                        .collect();
                write!(formatter, "Debian package ({})", names.join(", "))
            }
        }
    }
}

impl<'de> Deserialize<'de> for KernelChoice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            #[serde(default)]
            flavor: Option<String>,
            #[serde(default)]
            debian_package: Option<DebianKernelPackages>,
        }
        let fields = Fields::deserialize(deserializer)?;
        let choice = KernelChoice {
            flavor: fields.flavor,
            debian_package: fields.debian_package,
        };
        match (&choice.flavor, &choice.debian_package) {
            (Some(_), Some(_)) => Err(serde::de::Error::custom(
                "`kernel:` names both a `flavor` and a `debian_package`: keep one (a built kernel, or the Debian package's)",
            )),
            (None, None) => Err(serde::de::Error::custom(
                "`kernel:` needs `flavor: virt|generic` (a kernel kiln builds) or `debian_package: {x86_64: linux-image-..., aarch64: linux-image-...}`",
            )),
            (None, Some(packages)) => {
                if packages.x86_64.is_none() && packages.aarch64.is_none() {
                    return Err(serde::de::Error::custom(
                        "`kernel: {debian_package: {}}` names no package: give `x86_64:` and/or `aarch64:` (for example linux-image-6.1.0-56-cloud-amd64)",
                    ));
                }
                for name in [&packages.x86_64, &packages.aarch64].into_iter().flatten() {
                    let valid = name.len() >= 2
                        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                        && name.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c)
                        });
                    if !valid {
                        return Err(serde::de::Error::custom(format!(
                            "`{name}` is not a Debian package name (lowercase letters, digits, `+`, `-`, `.`; at least two characters)"
                        )));
                    }
                }
                Ok(choice)
            }
            (Some(_), None) => Ok(choice),
        }
    }
}

/// `cmdline:` of a profile: parameters for every architecture, then per architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmdlineDefaults {
    /// For every architecture.
    #[serde(default)]
    pub all: Vec<String>,
    /// x86_64 only (`console=ttyS0,115200`).
    #[serde(default)]
    pub x86_64: Vec<String>,
    /// aarch64 only (`console=ttyAMA0`).
    #[serde(default)]
    pub aarch64: Vec<String>,
}

/// A profile with `extends:` applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedProfile {
    /// The profile's name (its file's stem).
    pub name: String,
    /// Where outputs go and what they are called.
    pub output_name: String,
    /// Modules in composition order, without duplicates.
    pub modules: Vec<String>,
    /// Option values per module, the extending profile's winning.
    pub options: BTreeMap<String, BTreeMap<String, OptionValue>>,
    /// The kernel (default: flavor `virt`).
    pub kernel: KernelChoice,
    /// The command line defaults, the extended profile's first.
    pub cmdline: CmdlineDefaults,
    /// The RAM budget, if any.
    pub ram_budget_mib: Option<u64>,
    /// Paths pruned from the tree, the extended profile's first.
    pub prune: Vec<String>,
    /// OCI images embedded in the initramfs, the extended profile's first, without duplicates.
    pub embed_images: Vec<ImageReference>,
    /// The initramfs compression (default zstd), the extending profile's winning.
    pub compression: InitramfsCompression,
    /// The profile files read, extended ones first.
    pub files: Vec<PathBuf>,
}

/// A module or profile file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file (or directory) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema.
    #[error("{location}: {message}")]
    Parse {
        /// `path:line:column`, or `path` when serde_yaml gave no position.
        location: SourceLocation,
        /// serde_yaml's message, without its own position suffix.
        message: String,
    },
    /// A profile names a module that has no `modules/<name>/module.yaml`.
    #[error("{profile_path}: profile `{profile}` names module `{module}`, but {expected_path} does not exist: add the module or remove it from the profile")]
    UnknownModule {
        /// The profile's file.
        profile_path: PathBuf,
        /// The profile's name.
        profile: String,
        /// The missing module.
        module: String,
        /// Where the module file was looked for.
        expected_path: PathBuf,
    },
    /// A directory under `modules/` has no `module.yaml`.
    #[error("{directory} is a module directory without a module.yaml: add {expected_path} (description, kind, sources) or remove the directory")]
    MissingModuleFile {
        /// The module directory.
        directory: PathBuf,
        /// The file that is missing.
        expected_path: PathBuf,
    },
    /// `extends:` chains back to a profile already in the chain.
    #[error("{path}: `extends` makes a cycle: {chain}; remove one of the `extends:`")]
    ExtendsCycle {
        /// The profile file where the cycle closes.
        path: PathBuf,
        /// `a -> b -> a`.
        chain: String,
    },
    /// A profile sets an option of a module it does not have, or one the module does not
    /// declare.
    #[error("{path}: {message}")]
    BadProfile {
        /// The profile file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// A profile or command asked for a profile that does not exist.
    #[error("no profile `{profile}`: expected {expected_path}")]
    UnknownProfile {
        /// The profile asked for.
        profile: String,
        /// Where it was looked for.
        expected_path: PathBuf,
    },
}

/// A position in a YAML file, printed as `path:line:column` (1-based, like compilers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// The file.
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub line_and_column: Option<(usize, usize)>,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_and_column {
            Some((line, column)) => write!(formatter, "{}:{line}:{column}", self.path.display()),
            None => write!(formatter, "{}", self.path.display()),
        }
    }
}

fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, SpecError> {
    serde_yaml::from_str(text).map_err(|error| {
        let line_and_column = error
            .location()
            .map(|location| (location.line(), location.column()));
        let mut message = error.to_string();
        // serde_yaml appends " at line L column C"; the location is printed in front instead.
        if let Some(index) = message.find(" at line ") {
            message.truncate(index);
        }
        SpecError::Parse {
            location: SourceLocation {
                path: path.to_path_buf(),
                line_and_column,
            },
            message,
        }
    })
}

/// Parses a module file's text; `path` is only used in error messages.
pub fn parse_module(text: &str, path: &Path) -> Result<ModuleSpec, SpecError> {
    parse_yaml(text, path)
}

/// Parses a profile file's text; `path` is only used in error messages.
pub fn parse_profile(text: &str, path: &Path) -> Result<ProfileSpec, SpecError> {
    parse_yaml(text, path)
}

fn read_text(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every module and profile of a repository, keyed by name (sorted, so iteration order is
/// stable and the lock built from it is too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// The repository root the catalog was loaded from.
    pub root: PathBuf,
    /// `modules/<name>/module.yaml`, by name.
    pub modules: BTreeMap<String, ModuleSpec>,
    /// `profiles/<name>.yaml`, by name.
    pub profiles: BTreeMap<String, ProfileSpec>,
    /// Directories under `modules/` that have no `module.yaml` yet (a module whose files
    /// exist but whose schema is still being written). They are not modules: callers warn
    /// about them, and a profile naming one fails with [`SpecError::MissingModuleFile`].
    pub directories_without_module_file: Vec<PathBuf>,
}

impl Catalog {
    /// Loads `root/modules/*/module.yaml` and `root/profiles/*.yaml`, and checks that every
    /// profile names existing modules. A directory under `modules/` without a `module.yaml`
    /// is listed in [`Catalog::directories_without_module_file`] (callers warn), and is an
    /// error only when a profile names it.
    pub fn load(root: &Path) -> Result<Catalog, SpecError> {
        let mut catalog = Catalog {
            root: root.to_path_buf(),
            modules: BTreeMap::new(),
            profiles: BTreeMap::new(),
            directories_without_module_file: Vec::new(),
        };
        let modules_dir = root.join("modules");
        for entry in sorted_dir_entries(&modules_dir)? {
            if !entry.is_dir() {
                continue;
            }
            let name = file_name_string(&entry);
            let module_path = entry.join("module.yaml");
            if !module_path.exists() {
                catalog.directories_without_module_file.push(entry.clone());
                continue;
            }
            let module = parse_module(&read_text(&module_path)?, &module_path)?;
            catalog.modules.insert(name, module);
        }
        let profiles_dir = root.join("profiles");
        if profiles_dir.exists() {
            for entry in sorted_dir_entries(&profiles_dir)? {
                let Some(name) = entry
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".yaml"))
                else {
                    continue;
                };
                let profile = parse_profile(&read_text(&entry)?, &entry)?;
                catalog.profiles.insert(name.to_owned(), profile);
            }
        }
        for (profile_name, profile) in &catalog.profiles {
            for module in &profile.modules {
                let directory = root.join("modules").join(module);
                if !catalog.modules.contains_key(module)
                    && catalog.directories_without_module_file.contains(&directory)
                {
                    return Err(SpecError::MissingModuleFile {
                        expected_path: catalog.module_path(module),
                        directory,
                    });
                }
                if !catalog.modules.contains_key(module) {
                    return Err(SpecError::UnknownModule {
                        profile_path: catalog.profile_path(profile_name),
                        profile: profile_name.clone(),
                        module: module.clone(),
                        expected_path: catalog.module_path(module),
                    });
                }
            }
        }
        Ok(catalog)
    }

    /// Where module `name`'s file is (whether or not it exists).
    pub fn module_path(&self, name: &str) -> PathBuf {
        self.root.join("modules").join(name).join("module.yaml")
    }

    /// Where profile `name`'s file is (whether or not it exists).
    pub fn profile_path(&self, name: &str) -> PathBuf {
        self.root.join("profiles").join(format!("{name}.yaml"))
    }

    /// The profile called `name`, or an error naming the file that was expected.
    /// The profile `name` with `extends:` applied: modules of the extended profile first
    /// (minus `remove:`), options and command lines merged, the extending profile winning.
    pub fn resolve_profile(&self, name: &str) -> Result<ResolvedProfile, SpecError> {
        let mut chain: Vec<String> = Vec::new();
        let mut current = name.to_owned();
        loop {
            if chain.contains(&current) {
                chain.push(current.clone());
                return Err(SpecError::ExtendsCycle {
                    path: self.profile_path(&chain[chain.len() - 2]),
                    chain: chain.join(" -> "),
                });
            }
            let profile = self.profile(&current)?;
            chain.push(current.clone());
            match &profile.extends {
                Some(parent) => current = parent.clone(),
                None => break,
            }
        }
        let mut resolved = ResolvedProfile {
            name: name.to_owned(),
            output_name: name.to_owned(),
            modules: Vec::new(),
            options: BTreeMap::new(),
            kernel: KernelChoice::flavor("virt"),
            cmdline: CmdlineDefaults::default(),
            ram_budget_mib: None,
            prune: Vec::new(),
            embed_images: Vec::new(),
            compression: InitramfsCompression::default(),
            files: Vec::new(),
        };
        for profile_name in chain.iter().rev() {
            let profile = &self.profiles[profile_name];
            let path = self.profile_path(profile_name);
            for removed in &profile.remove {
                if !resolved.modules.contains(removed) {
                    return Err(SpecError::BadProfile {
                        path,
                        message: format!("`remove: [{removed}]`, but the extended profile has no module `{removed}`"),
                    });
                }
                resolved.modules.retain(|module| module != removed);
                resolved.options.remove(removed);
            }
            for module in &profile.modules {
                if !resolved.modules.contains(module) {
                    resolved.modules.push(module.clone());
                }
            }
            for (module, values) in &profile.options {
                resolved
                    .options
                    .entry(module.clone())
                    .or_default()
                    .extend(values.clone());
            }
            if let Some(kernel) = &profile.kernel {
                resolved.kernel = kernel.clone();
            }
            resolved
                .cmdline
                .all
                .extend(profile.cmdline.all.iter().cloned());
            resolved
                .cmdline
                .x86_64
                .extend(profile.cmdline.x86_64.iter().cloned());
            resolved
                .cmdline
                .aarch64
                .extend(profile.cmdline.aarch64.iter().cloned());
            for path in &profile.prune {
                if path
                    .split('/')
                    .any(|component| component.contains('*') && component != "*")
                {
                    return Err(SpecError::BadProfile {
                        path: self.profile_path(profile_name),
                        message: format!("`prune: [{path}]`: `*` stands for one whole path component (`usr/lib/*/gconv`), not part of a name"),
                    });
                }
                if !resolved.prune.contains(path) {
                    resolved.prune.push(path.clone());
                }
            }
            for reference in &profile.embed_images {
                if !resolved.embed_images.contains(reference) {
                    resolved.embed_images.push(reference.clone());
                }
            }
            if profile.ram_budget_mib.is_some() {
                resolved.ram_budget_mib = profile.ram_budget_mib;
            }
            if let Some(compression) = profile.compression {
                resolved.compression = compression;
            }
            resolved.files.push(path);
        }
        if let Some(output_name) = &self.profiles[name].output_name {
            resolved.output_name = output_name.clone();
        }
        let path = self.profile_path(name);
        for (module, values) in &resolved.options {
            let Some(spec) = self.modules.get(module) else {
                return Err(SpecError::BadProfile {
                    path,
                    message: format!("sets options of module `{module}`, which does not exist"),
                });
            };
            if !resolved.modules.contains(module) {
                return Err(SpecError::BadProfile {
                    path,
                    message: format!("sets options of module `{module}`, which the profile does not include: add it to `modules:` or drop its options"),
                });
            }
            for option in values.keys() {
                if !spec.options.contains_key(option) {
                    let known: Vec<&str> = spec.options.keys().map(String::as_str).collect();
                    return Err(SpecError::BadProfile {
                        path,
                        message: format!(
                            "module `{module}` has no option `{option}` (its options: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    });
                }
            }
        }
        Ok(resolved)
    }

    pub fn profile(&self, name: &str) -> Result<&ProfileSpec, SpecError> {
        self.profiles
            .get(name)
            .ok_or_else(|| SpecError::UnknownProfile {
                profile: name.to_owned(),
                expected_path: self.profile_path(name),
            })
    }
}

fn file_name_string(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sorted_dir_entries(dir: &Path) -> Result<Vec<PathBuf>, SpecError> {
    let read_error = |source| SpecError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        entries.push(entry.map_err(read_error)?.path());
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_module_error(text: &str, expected: &str) {
        let error = parse_module(text, Path::new("modules/x/module.yaml")).unwrap_err();
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn image_references_need_a_registry_and_a_tag_or_digest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for good in [
            "127.0.0.1:5000/kiln/busybox:1.36".to_owned(),
            "registry.example.org/a/b/c:v1.0_rc-2".to_owned(),
            format!("localhost/tools@{digest}"),
            format!("127.0.0.1:5000/kiln/busybox:1.36@{digest}"),
        ] {
            assert_eq!(ImageReference::parse(&good).unwrap().as_str(), good);
        }
        for (bad, says) in [
            ("busybox:1.36", "names no registry"),
            ("kiln/busybox:1.36", "is not a registry host"),
            ("127.0.0.1:5000/kiln/busybox", "neither a tag nor a digest"),
            ("127.0.0.1:5000/Kiln/busybox:1", "must be lowercase"),
            ("127.0.0.1:5000/kiln/busybox:", "tag `` must be"),
            (
                "127.0.0.1:5000/kiln/busybox@sha256:abc",
                "is not `sha256:` and 64",
            ),
        ] {
            let error = ImageReference::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn a_bad_image_source_is_reported_at_its_position() {
        let error = parse_module(
            "description: d\nkind: base\nsources:\n  - image: busybox:1.36\n",
            Path::new("modules/x/module.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("modules/x/module.yaml:4:")
                && error.contains("image reference `busybox:1.36` names no registry"),
            "{error}"
        );
    }

    #[test]
    fn parses_a_module_with_both_source_kinds() {
        let text = "description: d\nkind: service\nsources:\n  - debian: [dropbear-bin]\n  - tarball:\n      name: a.tar.gz\n      urls: [http://127.0.0.1/a.tar.gz]\n      sha256: 00\n      size: 3\n";
        let module = parse_module(text, Path::new("m.yaml")).unwrap();
        assert_eq!(module.kind, ModuleKind::Service);
        assert_eq!(
            module.debian_packages().collect::<Vec<_>>(),
            ["dropbear-bin"]
        );
        assert_eq!(module.tarballs().map(|t| t.size).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn unknown_field_names_file_line_and_column() {
        check_module_error(
            "description: d\nkind: base\nsorces: []\n",
            "modules/x/module.yaml:3:1: unknown field `sorces`, expected one of `description`, `kind`, `sources`, `command`, `env`, `working_dir`, `user`, `capabilities`, `namespaces`, `restart`, `backoff`, `timeout`, `fatal`, `after`, `requires`, `cmdline`, `kernel`, `options`, `generate`, `skip_dependencies`, `needs_pivot_root`",
        );
    }

    #[test]
    fn unknown_kind_names_file_line_and_column() {
        check_module_error(
            "description: d\nkind: daemon\n",
            "modules/x/module.yaml:2:7: kind: unknown variant `daemon`, expected one of `base`, `onboot`, `service`, `shutdown`, `build`",
        );
    }

    #[test]
    fn capabilities_and_namespaces_parse_in_the_order_written() {
        let text = "description: d\nkind: service\ncommand: [/s]\nuser: nobody\ncapabilities: [CAP_SYS_TIME, CAP_NET_BIND_SERVICE]\nnamespaces: [uts, net]\n";
        let module = parse_module(text, Path::new("m.yaml")).unwrap();
        assert_eq!(
            module.capabilities,
            Some(vec![Capability::CapSysTime, Capability::CapNetBindService])
        );
        assert_eq!(module.namespaces, [Namespace::Uts, Namespace::Net]);
        // Absent and empty are different: absent keeps today's behaviour, empty drops all.
        let absent = parse_module("description: d\nkind: service\n", Path::new("m.yaml")).unwrap();
        assert_eq!(absent.capabilities, None);
        assert!(absent.namespaces.is_empty());
        let empty = parse_module(
            "description: d\nkind: service\ncapabilities: []\n",
            Path::new("m.yaml"),
        )
        .unwrap();
        assert_eq!(empty.capabilities, Some(Vec::new()));
    }

    #[test]
    fn capability_names_are_the_kernels() {
        // Spot checks against capabilities(7); the last one the schema knows is 40.
        for (capability, name) in [
            (Capability::CapChown, "CAP_CHOWN"),
            (Capability::CapNetBindService, "CAP_NET_BIND_SERVICE"),
            (Capability::CapSysTtyConfig, "CAP_SYS_TTY_CONFIG"),
            (Capability::CapBpf, "CAP_BPF"),
            (Capability::CapCheckpointRestore, "CAP_CHECKPOINT_RESTORE"),
        ] {
            assert_eq!(capability.name(), name);
        }
    }

    #[test]
    fn unknown_capability_names_file_line_and_column() {
        let error = parse_module(
            "description: d\nkind: service\ncapabilities:\n  - CAP_NET_RAW\n  - CAP_NET_BIND\n",
            Path::new("m.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("m.yaml:5:5: capabilities[1]: unknown variant `CAP_NET_BIND`, expected one of `CAP_CHOWN`, "),
            "{error}"
        );
    }

    #[test]
    fn unknown_namespace_names_file_line_and_column() {
        check_module_error(
            "description: d\nkind: service\nnamespaces: [net, user]\n",
            "modules/x/module.yaml:3:19: namespaces[1]: unknown variant `user`, expected one of `mount`, `uts`, `ipc`, `net`, `cgroup`, `pid`",
        );
    }

    #[test]
    fn unknown_source_kind_is_rejected_with_location() {
        let error = parse_module(
            "description: d\nkind: base\nsources:\n  - rpm: [x]\n",
            Path::new("m.yaml"),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("m.yaml:4:"), "{message}");
        assert!(message.contains("unknown variant `rpm`"), "{message}");
    }

    #[test]
    fn profile_naming_a_missing_module_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("modules/base")).unwrap();
        std::fs::write(
            root.path().join("modules/base/module.yaml"),
            "description: d\nkind: base\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("profiles")).unwrap();
        std::fs::write(
            root.path().join("profiles/p.yaml"),
            "modules: [base, sshd]\n",
        )
        .unwrap();
        let error = Catalog::load(root.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("profile `p` names module `sshd`"),
            "{error}"
        );
    }

    #[test]
    fn module_directory_without_module_yaml_is_listed_and_fails_a_profile() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("modules/dhcp/files")).unwrap();
        let catalog = Catalog::load(root.path()).unwrap();
        assert_eq!(
            catalog.directories_without_module_file,
            [root.path().join("modules/dhcp")]
        );
        assert!(catalog.modules.is_empty());
        std::fs::create_dir_all(root.path().join("profiles")).unwrap();
        std::fs::write(root.path().join("profiles/p.yaml"), "modules: [dhcp]\n").unwrap();
        let error = Catalog::load(root.path()).unwrap_err().to_string();
        assert!(
            error.contains("modules/dhcp is a module directory without a module.yaml: add "),
            "{error}"
        );
        assert!(
            error.contains(
                "modules/dhcp/module.yaml (description, kind, sources) or remove the directory"
            ),
            "{error}"
        );
    }

    #[test]
    fn the_repository_catalog_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let catalog = Catalog::load(&root).unwrap();
        for name in catalog.profiles.keys() {
            let resolved = catalog
                .resolve_profile(name)
                .unwrap_or_else(|error| panic!("profile `{name}` does not resolve: {error}"));
            for module in &resolved.modules {
                let spec = &catalog.modules[module];
                for required in &spec.requires {
                    let (Some(before), Some(after)) = (
                        resolved.modules.iter().position(|m| m == required),
                        resolved.modules.iter().position(|m| m == module),
                    ) else {
                        panic!("profile `{name}`: module `{module}` requires `{required}`, which the profile lacks");
                    };
                    assert!(
                        before < after,
                        "profile `{name}`: `{required}` must come before `{module}`"
                    );
                }
                if matches!(
                    spec.kind,
                    ModuleKind::Onboot | ModuleKind::Service | ModuleKind::Shutdown
                ) {
                    assert!(
                        spec.command
                            .first()
                            .is_some_and(|program| program.starts_with('/')),
                        "module `{module}` runs no absolute command"
                    );
                }
            }
        }
        let hook = catalog.resolve_profile("hook").unwrap();
        assert!(
            hook.modules.iter().any(|m| m == "sshd"),
            "{:?}",
            hook.modules
        );
        assert!(
            hook.modules.iter().any(|m| m == "getty"),
            "{:?}",
            hook.modules
        );
        assert_eq!(hook.output_name, "hook");
        let minimal = catalog.resolve_profile("minimal").unwrap();
        assert!(
            !minimal.modules.iter().any(|m| m == "sshd" || m == "getty"),
            "{:?}",
            minimal.modules
        );
        assert_eq!(minimal.modules[..2], ["init", "base"]);
        // A flow list would split `console=ttyS0,115200` at the comma.
        assert_eq!(minimal.cmdline.x86_64, ["console=ttyS0,115200"]);
        let debug = catalog.resolve_profile("debug").unwrap();
        assert_eq!(debug.modules, hook.modules);
        assert!(debug
            .cmdline
            .all
            .iter()
            .any(|parameter| parameter == "kiln.debug"));
        assert_eq!(catalog.modules["kernel-source"].kind, ModuleKind::Build);
        assert!(catalog.modules["base"]
            .debian_packages()
            .any(|name| name == "busybox-static"));
        assert!(catalog.modules["ntp"]
            .debian_packages()
            .any(|name| name == "chrony"));
        assert!(catalog.modules["sshd"]
            .debian_packages()
            .any(|name| name == "dropbear-bin"));
    }

    /// A catalog in a temporary directory: modules `base`, `sshd` (option `port`, default 22)
    /// and `getty`, and the profiles given as (name, text).
    fn catalog_with_profiles(profiles: &[(&str, &str)]) -> (tempfile::TempDir, Catalog) {
        let root = write_catalog(profiles);
        let catalog = Catalog::load(root.path()).unwrap();
        (root, catalog)
    }

    /// The directory [`catalog_with_profiles`] loads, not yet loaded.
    fn write_catalog(profiles: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let modules = [
            ("base", "description: d\nkind: base\n"),
            (
                "sshd",
                "description: d\nkind: service\ncommand: [/sshd, -p, \"${port}\"]\noptions:\n  port:\n    description: p\n    default: 22\n  banner:\n    description: b\n",
            ),
            ("getty", "description: d\nkind: service\ncommand: [/getty]\n"),
        ];
        for (name, text) in modules {
            std::fs::create_dir_all(root.path().join("modules").join(name)).unwrap();
            std::fs::write(
                root.path().join("modules").join(name).join("module.yaml"),
                text,
            )
            .unwrap();
        }
        std::fs::create_dir_all(root.path().join("profiles")).unwrap();
        for (name, text) in profiles {
            std::fs::write(
                root.path().join("profiles").join(format!("{name}.yaml")),
                text,
            )
            .unwrap();
        }
        root
    }

    fn resolve_error(profiles: &[(&str, &str)], name: &str) -> String {
        let (_root, catalog) = catalog_with_profiles(profiles);
        catalog.resolve_profile(name).unwrap_err().to_string()
    }

    #[test]
    fn resolve_profile_puts_extended_modules_first_and_merges_in_order() {
        let (root, catalog) = catalog_with_profiles(&[
            (
                "a",
                "modules: [base, sshd]\nkernel: {flavor: generic}\ncmdline: {all: [a1], x86_64: [ax]}\nram_budget_mib: 100\n",
            ),
            ("b", "extends: a\nmodules: [getty, base]\ncmdline: {all: [b1]}\n"),
            ("c", "extends: b\ncmdline: {all: [c1], aarch64: [ca]}\noutput_name: see\nram_budget_mib: 300\n"),
        ]);
        let c = catalog.resolve_profile("c").unwrap();
        assert_eq!(c.name, "c");
        assert_eq!(c.output_name, "see");
        // The extended profile's modules first; a module named again is not repeated.
        assert_eq!(c.modules, ["base", "sshd", "getty"]);
        assert_eq!(c.cmdline.all, ["a1", "b1", "c1"]);
        assert_eq!(c.cmdline.x86_64, ["ax"]);
        assert_eq!(c.cmdline.aarch64, ["ca"]);
        assert_eq!(c.kernel.kind(), KernelKind::Flavor("generic"));
        assert_eq!(c.ram_budget_mib, Some(300));
        let profiles = root.path().join("profiles");
        assert_eq!(
            c.files,
            [
                profiles.join("a.yaml"),
                profiles.join("b.yaml"),
                profiles.join("c.yaml")
            ]
        );
        // output_name is not inherited: b's outputs carry b's name.
        let b = catalog.resolve_profile("b").unwrap();
        assert_eq!(b.output_name, "b");
        assert_eq!(b.ram_budget_mib, Some(100));
        let a = catalog.resolve_profile("a").unwrap();
        assert_eq!(a.modules, ["base", "sshd"]);
        assert!(a.options.is_empty());
    }

    #[test]
    fn resolve_profile_defaults_to_the_virt_kernel() {
        let (_root, catalog) = catalog_with_profiles(&[("p", "modules: [base]\n")]);
        let p = catalog.resolve_profile("p").unwrap();
        assert_eq!(p.kernel.kind(), KernelKind::Flavor("virt"));
        assert_eq!(p.output_name, "p");
        assert_eq!(p.ram_budget_mib, None);
    }

    #[test]
    fn a_debian_kernel_package_is_inherited_and_named_per_architecture() {
        let (_root, catalog) = catalog_with_profiles(&[
            (
                "a",
                "modules: [base]\nkernel:\n  debian_package:\n    x86_64: linux-image-6.1.0-56-cloud-amd64\n",
            ),
            ("b", "extends: a\n"),
        ]);
        let b = catalog.resolve_profile("b").unwrap();
        let KernelKind::DebianPackage(packages) = b.kernel.kind() else {
            panic!("{:?}", b.kernel)
        };
        assert_eq!(
            packages.for_arch("x86_64"),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(packages.for_arch("aarch64"), None);
        assert_eq!(
            b.kernel.to_string(),
            "Debian package (x86_64: linux-image-6.1.0-56-cloud-amd64)"
        );
    }

    #[test]
    fn a_kernel_choice_must_be_exactly_one_valid_thing_and_errors_say_where() {
        for (text, expected) in [
            (
                "modules: [base]\nkernel:\n  flavor: virt\n  debian_package: {x86_64: linux-image-amd64}\n",
                "names both a `flavor` and a `debian_package`",
            ),
            ("modules: [base]\nkernel: {}\n", "needs `flavor: virt|generic`"),
            (
                "modules: [base]\nkernel: {debian_package: {}}\n",
                "names no package",
            ),
            (
                "modules: [base]\nkernel: {debian_package: {x86_64: Linux_Image}}\n",
                "`Linux_Image` is not a Debian package name",
            ),
            (
                "modules: [base]\nkernel: {debian_package: {riscv64: linux-image-riscv64}}\n",
                "unknown field `riscv64`",
            ),
        ] {
            let root = write_catalog(&[("p", text)]);
            let error = Catalog::load(root.path()).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.contains("profiles/p.yaml:"), "{text:?}: {error}");
        }
    }

    #[test]
    fn resolve_profile_remove_drops_an_extended_module_and_its_options() {
        let (_root, catalog) = catalog_with_profiles(&[
            (
                "full",
                "modules: [base, sshd, getty]\noptions: {sshd: {port: 2222}}\n",
            ),
            ("small", "extends: full\nremove: [sshd]\n"),
            ("back", "extends: small\nmodules: [sshd]\n"),
        ]);
        let small = catalog.resolve_profile("small").unwrap();
        assert_eq!(small.modules, ["base", "getty"]);
        assert!(!small.options.contains_key("sshd"), "{:?}", small.options);
        // Added again by a later profile: at the end, without the removed options.
        let back = catalog.resolve_profile("back").unwrap();
        assert_eq!(back.modules, ["base", "getty", "sshd"]);
        assert!(back.options.is_empty(), "{:?}", back.options);
    }

    #[test]
    fn resolve_profile_remove_of_a_module_the_extended_profile_lacks_is_an_error() {
        let error = resolve_error(
            &[
                ("full", "modules: [base]\n"),
                ("small", "extends: full\nremove: [getty]\n"),
            ],
            "small",
        );
        assert!(error.ends_with("profiles/small.yaml: `remove: [getty]`, but the extended profile has no module `getty`"), "{error}");
    }

    #[test]
    fn resolve_profile_extending_profile_wins_option_values() {
        let (_root, catalog) = catalog_with_profiles(&[
            (
                "a",
                "modules: [base, sshd]\noptions: {sshd: {port: 2222, banner: hello}}\n",
            ),
            ("b", "extends: a\noptions: {sshd: {port: 2022}}\n"),
        ]);
        let b = catalog.resolve_profile("b").unwrap();
        let sshd = &b.options["sshd"];
        assert_eq!(sshd["port"], OptionValue("2022".to_owned()));
        // Values the extending profile does not give are kept from the extended one.
        assert_eq!(sshd["banner"], OptionValue("hello".to_owned()));
        let a = catalog.resolve_profile("a").unwrap();
        assert_eq!(a.options["sshd"]["port"], OptionValue("2222".to_owned()));
    }

    #[test]
    fn resolve_profile_reports_an_extends_cycle_with_its_chain() {
        let profiles = [
            ("a", "extends: b\nmodules: [base]\n"),
            ("b", "extends: c\n"),
            ("c", "extends: a\n"),
        ];
        let error = resolve_error(&profiles, "a");
        assert!(
            error.ends_with("profiles/c.yaml: `extends` makes a cycle: a -> b -> c -> a; remove one of the `extends:`"),
            "{error}"
        );
        let error = resolve_error(&[("self", "extends: self\n")], "self");
        assert!(error.ends_with("profiles/self.yaml: `extends` makes a cycle: self -> self; remove one of the `extends:`"), "{error}");
    }

    #[test]
    fn resolve_profile_extending_a_missing_profile_names_the_expected_file() {
        let error = resolve_error(&[("a", "extends: nowhere\n")], "a");
        assert!(
            error.starts_with("no profile `nowhere`: expected "),
            "{error}"
        );
        assert!(error.ends_with("profiles/nowhere.yaml"), "{error}");
    }

    #[test]
    fn resolve_profile_rejects_options_of_a_module_not_in_the_profile() {
        let error = resolve_error(
            &[("p", "modules: [base]\noptions: {sshd: {port: 2222}}\n")],
            "p",
        );
        assert!(
            error.ends_with("profiles/p.yaml: sets options of module `sshd`, which the profile does not include: add it to `modules:` or drop its options"),
            "{error}"
        );
        let error = resolve_error(&[("p", "modules: [base]\noptions: {ghost: {x: 1}}\n")], "p");
        assert!(
            error
                .ends_with("profiles/p.yaml: sets options of module `ghost`, which does not exist"),
            "{error}"
        );
    }

    #[test]
    fn resolve_profile_rejects_an_option_the_module_does_not_declare() {
        let error = resolve_error(
            &[(
                "p",
                "modules: [base, sshd]\noptions: {sshd: {prot: 2222}}\n",
            )],
            "p",
        );
        assert!(
            error.ends_with(
                "profiles/p.yaml: module `sshd` has no option `prot` (its options: banner, port)"
            ),
            "{error}"
        );
        let error = resolve_error(
            &[(
                "p",
                "modules: [base, getty]\noptions: {getty: {baud: 9600}}\n",
            )],
            "p",
        );
        assert!(
            error.ends_with(
                "profiles/p.yaml: module `getty` has no option `baud` (its options: none)"
            ),
            "{error}"
        );
    }
}
