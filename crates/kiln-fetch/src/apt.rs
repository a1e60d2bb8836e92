//! The host's apt, run with a private state per target architecture.
//!
//! **Architecture Invariant:** kiln never changes the host's dpkg or apt configuration (no
//! `dpkg --add-architecture`, no file under `/etc/apt` written). Each target architecture
//! gets its own directory (`$KILN_CACHE/state/apt-<debian-arch>/`) with its own lists,
//! archives cache, an empty dpkg status, no preferences, and a copy of the host's
//! `sources.list` and `sources.list.d/*.{list,sources}` taken at run time, so no mirror host
//! name is ever written into the project. `APT::Architecture` and `APT::Architectures` are
//! set to the target, which is how arm64 indexes come to an amd64 host.
//!
//! The host's `apt.conf.d` still applies (proxies, `Check-Valid-Until` for snapshot
//! mirrors): it is how this machine reaches its mirrors. `APT::Sandbox::User` is set to
//! `root` when running as root, because the `_apt` user cannot write to kiln's private
//! directories; every `.deb` is verified against the lock's sha256 afterwards anyway.
//!
//! Two kiln processes using the same architecture's state are serialised by an exclusive
//! `flock` on `state/apt-<arch>.lock` (apt's own lock would make the second one fail).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_lock::{DebianPackagePin, TargetArch};

use crate::debian::parse_stanzas;
use crate::resolve::PackageIndex;
use crate::FetchError;

/// Where the host's apt sources are read from.
const HOST_SOURCE_LIST: &str = "/etc/apt/sources.list";
const HOST_SOURCE_PARTS: &str = "/etc/apt/sources.list.d";
/// apt's helper that decompresses index files whatever their on-disk compression.
const APT_HELPER: &str = "/usr/lib/apt/apt-helper";

/// The host's apt, pointed at a private state directory for one target architecture.
#[derive(Debug)]
pub struct PrivateApt {
    arch: TargetArch,
    directory: PathBuf,
    // Held while this value lives: one kiln process per architecture state at a time.
    _state_lock: File,
}

fn io_error<'path>(
    action: &'static str,
    path: &'path Path,
) -> impl FnOnce(std::io::Error) -> FetchError + 'path {
    move |source| FetchError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn lock_exclusively(file: &File, path: &Path) -> Result<(), FetchError> {
    loop {
        // SAFETY: `file` is an open descriptor for the duration of the call; flock takes an
        // advisory lock on it and touches no memory of ours.
        let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if result == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(FetchError::Io {
                action: "cannot lock",
                path: path.to_path_buf(),
                source: error,
            });
        }
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The last `count` lines of a command's output, for error messages.
pub fn tail_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

impl PrivateApt {
    /// Prepares (or refreshes) the private state for `arch` under `state_root`
    /// (`Store::state_dir("apt-<debian-arch>")`'s parent is fine) and copies the host's
    /// sources into it.
    pub fn open(state_root: &Path, arch: TargetArch) -> Result<PrivateApt, FetchError> {
        let directory = state_root.join(format!("apt-{}", arch.debian_architecture()));
        let lock_path = state_root.join(format!("apt-{}.lock", arch.debian_architecture()));
        std::fs::create_dir_all(state_root).map_err(io_error("cannot create", state_root))?;
        let state_lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("cannot open", &lock_path))?;
        lock_exclusively(&state_lock, &lock_path)?;
        for sub in [
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ] {
            let path = directory.join(sub);
            std::fs::create_dir_all(&path).map_err(io_error("cannot create", &path))?;
        }
        let status = directory.join("state/status");
        std::fs::write(&status, b"").map_err(io_error("cannot write", &status))?;
        let apt = PrivateApt {
            arch,
            directory,
            _state_lock: state_lock,
        };
        apt.copy_host_sources()?;
        Ok(apt)
    }

    /// The private state directory.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The target architecture.
    pub fn arch(&self) -> TargetArch {
        self.arch
    }

    fn copy_host_sources(&self) -> Result<(), FetchError> {
        let own_list = self.directory.join("etc/sources.list");
        match std::fs::read(HOST_SOURCE_LIST) {
            Ok(bytes) => {
                std::fs::write(&own_list, bytes).map_err(io_error("cannot write", &own_list))?
            }
            Err(_) => {
                std::fs::write(&own_list, b"").map_err(io_error("cannot write", &own_list))?
            }
        }
        let own_parts = self.directory.join("etc/sources.list.d");
        for entry in std::fs::read_dir(&own_parts).map_err(io_error("cannot list", &own_parts))? {
            let path = entry.map_err(io_error("cannot list", &own_parts))?.path();
            std::fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
        }
        let host_parts = Path::new(HOST_SOURCE_PARTS);
        let mut copied = 0;
        if let Ok(entries) = std::fs::read_dir(host_parts) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                // apt itself reads only these two extensions (others are disabled files).
                if !(name.ends_with(".list") || name.ends_with(".sources")) {
                    continue;
                }
                let destination = own_parts.join(&name);
                std::fs::copy(&path, &destination)
                    .map_err(io_error("cannot copy host apt source", &path))?;
                copied += 1;
            }
        }
        let own_list_is_empty = std::fs::metadata(&own_list)
            .map(|metadata| metadata.len() == 0)
            .unwrap_or(true);
        if copied == 0 && own_list_is_empty {
            return Err(FetchError::NoHostSources);
        }
        Ok(())
    }

    /// The `-o` options that point apt at the private state.
    pub fn options(&self) -> Vec<String> {
        let directory = self.directory.display();
        let architecture = self.arch.debian_architecture();
        let mut options = vec![
            format!("Dir::State={directory}/state"),
            format!("Dir::State::status={directory}/state/status"),
            format!("Dir::Cache={directory}/cache"),
            format!("Dir::Etc::sourcelist={directory}/etc/sources.list"),
            format!("Dir::Etc::sourceparts={directory}/etc/sources.list.d"),
            format!("Dir::Etc::preferences={directory}/etc/preferences"),
            format!("Dir::Etc::preferencesparts={directory}/etc/preferences.d"),
            format!("APT::Architecture={architecture}"),
            format!("APT::Architectures={architecture}"),
            // Only the Packages indexes: no translations, no DEP-11 metadata.
            "Acquire::Languages=none".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false".to_owned(),
        ];
        if running_as_root() {
            options.push("APT::Sandbox::User=root".to_owned());
        }
        options
            .into_iter()
            .flat_map(|option| ["-o".to_owned(), option])
            .collect()
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        die_with_parent(&mut command);
        command.args(self.options());
        command
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    }

    /// Runs a command to completion, failing with the tail of its output.
    fn run(&self, mut command: Command, what: &str) -> Result<String, FetchError> {
        let output = command.output().map_err(|source| FetchError::Spawn {
            program: format!("{command:?}"),
            source,
        })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            let combined = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
            return Err(FetchError::AptFailed {
                what: what.to_owned(),
                status: output.status.to_string(),
                output_tail: tail_lines(&combined, 20),
            });
        }
        Ok(stdout)
    }

    /// `apt-get update` in the private state.
    pub fn update(&self) -> Result<(), FetchError> {
        let mut command = self.command("apt-get");
        command.args(["-q", "update"]);
        self.run(
            command,
            &format!("apt-get update ({})", self.arch.debian_architecture()),
        )?;
        Ok(())
    }

    /// The `Packages` index files apt has fetched (they may be compressed on disk).
    pub fn index_files(&self) -> Result<Vec<PathBuf>, FetchError> {
        let mut command = self.command("apt-get");
        command.args([
            "indextargets",
            "--format",
            "$(FILENAME)",
            "Created-By: Packages",
        ]);
        let stdout = self.run(command, "apt-get indextargets")?;
        let mut files: Vec<PathBuf> = stdout
            .lines()
            .filter(|line| !line.is_empty())
            .map(PathBuf::from)
            .filter(|path| path.exists())
            .collect();
        files.sort();
        Ok(files)
    }

    /// The text of one index file, decompressed by apt's own helper.
    pub fn read_index_file(&self, path: &Path) -> Result<String, FetchError> {
        let mut command = Command::new(APT_HELPER);
        die_with_parent(&mut command);
        command.arg("cat-file").arg(path);
        self.run(command, &format!("apt-helper cat-file {}", path.display()))
    }

    /// Every package of every fetched index. Errors if `apt-get update` has not run.
    pub fn package_index(&self) -> Result<PackageIndex, FetchError> {
        let files = self.index_files()?;
        if files.is_empty() {
            return Err(FetchError::NoIndexes { arch: self.arch });
        }
        let mut index = PackageIndex::default();
        for file in files {
            index.add_stanzas(&parse_stanzas(&self.read_index_file(&file)?));
        }
        Ok(index)
    }

    /// One `apt-get download` for many packages into `directory` (which must be empty):
    /// one apt start-up instead of one per package. Returns each pin's `.deb` path, in
    /// `pins` order. On failure apt names the culprit in `output_tail`; callers that need a
    /// per-package error retry with [`PrivateApt::download`].
    pub fn download_all(
        &self,
        pins: &[&DebianPackagePin],
        directory: &Path,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<Vec<PathBuf>, FetchError> {
        let output_path = directory.join(".apt-output");
        let output_file =
            File::create(&output_path).map_err(io_error("cannot create", &output_path))?;
        let error_file = output_file
            .try_clone()
            .map_err(io_error("cannot create", &output_path))?;
        let mut command = self.command("apt-get");
        command.args(["-q", "download"]).args(
            pins.iter()
                .map(|pin| format!("{}={}", pin.name, pin.version)),
        );
        command
            .current_dir(directory)
            .stdin(Stdio::null())
            .stdout(output_file)
            .stderr(error_file);
        let mut child = command.spawn().map_err(|source| FetchError::Spawn {
            program: "apt-get download".to_owned(),
            source,
        })?;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|source| FetchError::Spawn {
                program: "apt-get download".to_owned(),
                source,
            })? {
                break status;
            }
            on_progress(directory_size(directory));
            std::thread::sleep(Duration::from_millis(200));
        };
        let output = std::fs::read_to_string(&output_path).unwrap_or_default();
        if !status.success() {
            return Err(FetchError::AptFailed {
                what: format!("apt-get download of {} packages", pins.len()),
                status: status.to_string(),
                output_tail: tail_lines(&output, 20),
            });
        }
        let paths: Vec<PathBuf> = pins
            .iter()
            .map(|pin| directory.join(apt_download_file_name(pin)))
            .collect();
        if let Some(missing) = paths.iter().find(|path| !path.is_file()) {
            return Err(FetchError::AptFailed {
                what: "apt-get download".to_owned(),
                status: format!("succeeded but did not write {}", missing.display()),
                output_tail: tail_lines(&output, 20),
            });
        }
        Ok(paths)
    }

    /// `apt-get download NAME=VERSION` into `directory` (which must be empty); returns the
    /// path of the `.deb`. `on_progress` is called with the bytes downloaded so far, about
    /// five times a second. apt checks the index's hash; the caller checks the lock's.
    pub fn download(
        &self,
        pin: &DebianPackagePin,
        directory: &Path,
        on_progress: &mut dyn FnMut(u64),
    ) -> Result<PathBuf, FetchError> {
        let output_path = directory.join(".apt-output");
        let output_file =
            File::create(&output_path).map_err(io_error("cannot create", &output_path))?;
        let error_file = output_file
            .try_clone()
            .map_err(io_error("cannot create", &output_path))?;
        let mut command = self.command("apt-get");
        command.args(["-q", "download", &format!("{}={}", pin.name, pin.version)]);
        command
            .current_dir(directory)
            .stdin(Stdio::null())
            .stdout(output_file)
            .stderr(error_file);
        let mut child = command.spawn().map_err(|source| FetchError::Spawn {
            program: "apt-get download".to_owned(),
            source,
        })?;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|source| FetchError::Spawn {
                program: "apt-get download".to_owned(),
                source,
            })? {
                break status;
            }
            on_progress(directory_size(directory));
            std::thread::sleep(Duration::from_millis(200));
        };
        let output = std::fs::read_to_string(&output_path).unwrap_or_default();
        if !status.success() {
            return Err(FetchError::DownloadFailed {
                package: pin.name.clone(),
                version: pin.version.clone(),
                debian_architecture: self.arch.debian_architecture(),
                arch: self.arch,
                status: status.to_string(),
                output_tail: tail_lines(&output, 20),
            });
        }
        let mut debs: Vec<PathBuf> = std::fs::read_dir(directory)
            .map_err(io_error("cannot list", directory))?
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "deb"))
            .collect();
        if debs.len() != 1 {
            return Err(FetchError::DownloadFailed {
                package: pin.name.clone(),
                version: pin.version.clone(),
                debian_architecture: self.arch.debian_architecture(),
                arch: self.arch,
                status: format!("apt-get succeeded but left {} .deb files", debs.len()),
                output_tail: tail_lines(&output, 20),
            });
        }
        Ok(debs.remove(0))
    }
}

/// Makes the child receive SIGKILL when kiln dies, so a killed `cargo xtask fetch` does not
/// leave an orphaned apt writing into the store's `tmp/`.
pub(crate) fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // which is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The file name `apt-get download` gives a package: `name_version_arch.deb`, with the
/// epoch's colon written `%3a`.
pub fn apt_download_file_name(pin: &DebianPackagePin) -> String {
    format!(
        "{}_{}_{}.deb",
        pin.name,
        pin.version.replace(':', "%3a"),
        pin.architecture
    )
}

fn directory_size(directory: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| metadata.len())
        .sum()
}
