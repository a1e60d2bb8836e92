//! The fixed early mounts of PID 1, the extra mounts of the config, moving `/` off rootfs, and
//! the unmounts at shutdown. All through [`Syscall`].
//!
//! *Architecture Invariant*: the early mount table is data ([`early_mount_table`]); the
//! sequence it produces is snapshot-tested in `tests::early_mount_sequence`.

use std::path::{Path, PathBuf};

use crate::config::{MountEntry, RootSettings};
use crate::syscall::{DeviceKind, Syscall, SyscallError};

const MS_RDONLY: u64 = 1;
const MS_NOSUID: u64 = 2;
const MS_NODEV: u64 = 4;
const MS_NOEXEC: u64 = 8;
const MS_NOATIME: u64 = 1024;
const MS_BIND: u64 = 4096;
const MS_MOVE: u64 = 8192;
const MS_REC: u64 = 16384;
const MS_PRIVATE: u64 = 1 << 18;
const MS_SLAVE: u64 = 1 << 19;
const MS_SHARED: u64 = 1 << 20;
const MS_RELATIME: u64 = 1 << 21;

const FLAG_NAMES: &[(&str, u64)] = &[
    ("ro", MS_RDONLY),
    ("nosuid", MS_NOSUID),
    ("nodev", MS_NODEV),
    ("noexec", MS_NOEXEC),
    ("noatime", MS_NOATIME),
    ("bind", MS_BIND),
    ("move", MS_MOVE),
    ("rec", MS_REC),
    ("private", MS_PRIVATE),
    ("slave", MS_SLAVE),
    ("shared", MS_SHARED),
    ("relatime", MS_RELATIME),
];

/// Flag names accepted in [`MountEntry::flags`] (`move` is kiln-init's own business).
pub const KNOWN_MOUNT_FLAG_NAMES: &[&str] = &[
    "ro", "nosuid", "nodev", "noexec", "noatime", "relatime", "bind", "rbind", "rec", "private",
    "shared", "slave",
];

/// The `MS_*` value of a flag name of the config.
pub fn mount_flag_by_name(name: &str) -> Option<u64> {
    if name == "rbind" {
        return Some(MS_BIND | MS_REC);
    }
    if !KNOWN_MOUNT_FLAG_NAMES.contains(&name) {
        return None;
    }
    FLAG_NAMES
        .iter()
        .find(|(flag_name, _)| *flag_name == name)
        .map(|(_, value)| *value)
}

/// `nosuid|nodev|noexec` (or `0`, or `0x...` for bits without a name), for transcripts.
pub fn describe_mount_flags(flags: u64) -> String {
    if flags == 0 {
        return "0".to_string();
    }
    let mut names = Vec::new();
    let mut rest = flags;
    for (name, value) in FLAG_NAMES {
        if flags & value != 0 {
            names.push((*name).to_string());
            rest &= !value;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    names.join("|")
}

/// One early mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyMount {
    /// Source name.
    pub source: &'static str,
    /// Mount point.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// `MS_*` flags.
    pub flags: u64,
    /// Filesystem data.
    pub data: &'static str,
}

/// The mounts every kiln image gets, in order. `/dev` first among the tmpfs-likes because
/// `/dev/pts` lives in it; cgroup2 after sysfs for the same reason.
pub fn early_mount_table() -> Vec<EarlyMount> {
    let hardened = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    vec![
        EarlyMount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: hardened,
            data: "",
        },
        EarlyMount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: hardened,
            data: "",
        },
        EarlyMount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MS_NOSUID,
            data: "mode=0755",
        },
        EarlyMount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MS_NOSUID | MS_NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
        },
        EarlyMount {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MS_NOSUID | MS_NODEV,
            data: "mode=1777",
        },
        EarlyMount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MS_NOSUID | MS_NODEV,
            data: "mode=0755",
        },
        EarlyMount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MS_NOSUID | MS_NODEV,
            data: "mode=1777",
        },
        EarlyMount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: hardened,
            data: "nsdelegate",
        },
    ]
}

/// Device nodes made on a plain tmpfs `/dev` when the kernel has no devtmpfs
/// (`CONFIG_DEVTMPFS=n`): enough for a console, a shell and entropy.
const FALLBACK_DEVICE_NODES: &[(&str, u32, u32, u32)] = &[
    ("/dev/console", 0o600, 5, 1),
    ("/dev/tty", 0o666, 5, 0),
    ("/dev/null", 0o666, 1, 3),
    ("/dev/zero", 0o666, 1, 5),
    ("/dev/full", 0o666, 1, 7),
    ("/dev/random", 0o666, 1, 8),
    ("/dev/urandom", 0o666, 1, 9),
    ("/dev/kmsg", 0o644, 1, 11),
];

/// What the early mounts did, for the shutdown's unmounts and for warnings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountReport {
    /// Mount points mounted by kiln-init, in mount order.
    pub mounted: Vec<PathBuf>,
    /// Non-fatal problems, printed as `kiln: warning: ...`.
    pub warnings: Vec<String>,
}

/// Mounts the early table. `EBUSY` (already mounted, e.g. devtmpfs by
/// `CONFIG_DEVTMPFS_MOUNT`) is fine; a kernel without devtmpfs gets a tmpfs `/dev` with a few
/// nodes; any other failure is a warning: a missing cgroup2 must not stop the boot.
pub fn mount_early_filesystems(syscall: &dyn Syscall) -> MountReport {
    let mut report = MountReport::default();
    for mount in early_mount_table() {
        let target = Path::new(mount.target);
        if let Err(error) = syscall.create_directory_all(target, 0o755) {
            report
                .warnings
                .push(format!("cannot create {}: {error}", mount.target));
        }
        let data = if mount.data.is_empty() {
            None
        } else {
            Some(mount.data)
        };
        match syscall.mount(mount.source, target, Some(mount.fstype), mount.flags, data) {
            Ok(()) => report.mounted.push(target.to_path_buf()),
            Err(error) if error.errno() == Some(libc::EBUSY) => {}
            Err(error) if mount.fstype == "devtmpfs" && error.errno() == Some(libc::ENODEV) => {
                report.warnings.push(
                    "kernel has no devtmpfs (CONFIG_DEVTMPFS); using a tmpfs /dev with basic nodes"
                        .to_string(),
                );
                match syscall.mount("dev", target, Some("tmpfs"), MS_NOSUID, Some("mode=0755")) {
                    Ok(()) => {
                        report.mounted.push(target.to_path_buf());
                        for (path, mode, major, minor) in FALLBACK_DEVICE_NODES {
                            if let Err(error) = syscall.mknod(
                                Path::new(path),
                                DeviceKind::Character,
                                *mode,
                                *major,
                                *minor,
                            ) {
                                report
                                    .warnings
                                    .push(format!("cannot create {path}: {error}"));
                            }
                        }
                    }
                    Err(error) => report.warnings.push(format!("cannot mount /dev: {error}")),
                }
            }
            Err(error) => report.warnings.push(format!(
                "cannot mount {} on {}: {error}",
                mount.fstype, mount.target
            )),
        }
    }
    report
}

/// A mount of the config that failed and was not optional.
#[derive(Debug, thiserror::Error)]
#[error("mount of {target} ({fstype}) failed: {source}; fix the module that asks for it or mark it optional")]
pub struct RequiredMountError {
    /// The mount point.
    pub target: PathBuf,
    /// The filesystem type.
    pub fstype: String,
    /// Why.
    #[source]
    pub source: SyscallError,
}

/// Mounts the config's extra mounts in order; appends to `report`.
pub fn mount_configured_filesystems(
    syscall: &dyn Syscall,
    mounts: &[MountEntry],
    report: &mut MountReport,
) -> Result<(), RequiredMountError> {
    for mount in mounts {
        let flags = mount
            .flags
            .iter()
            .filter_map(|name| mount_flag_by_name(name))
            .fold(0, |all, flag| all | flag);
        let result = syscall
            .create_directory_all(&mount.target, 0o755)
            .and_then(|()| {
                syscall.mount(
                    &mount.source,
                    &mount.target,
                    Some(mount.fstype.as_str()),
                    flags,
                    mount.data.as_deref(),
                )
            });
        match result {
            Ok(()) => report.mounted.push(mount.target.clone()),
            Err(source) if mount.optional => report.warnings.push(format!(
                "optional mount of {} ({}) failed: {source}",
                mount.target.display(),
                mount.fstype
            )),
            Err(source) => {
                return Err(RequiredMountError {
                    target: mount.target.clone(),
                    fstype: mount.fstype.clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Where the new root is mounted before it replaces `/`.
pub const NEW_ROOT_MOUNT_POINT: &str = "/.kiln-new-root";

/// Moves `/` off rootfs: `pivot_root(2)` refuses to work when `/` is the initramfs's rootfs,
/// which container runtimes need. So, as `switch_root` does but in the other direction: mount a
/// tmpfs, move every file of rootfs into it, make it `/` with `mount(MS_MOVE)` + `chroot(".")`.
/// Must run before the early mounts (they then land in the new root).
pub fn move_root_off_rootfs(
    syscall: &dyn Syscall,
    settings: &RootSettings,
) -> Result<(), SyscallError> {
    let new_root = Path::new(NEW_ROOT_MOUNT_POINT);
    syscall.create_directory_all(new_root, 0o755)?;
    let data = match &settings.tmpfs_size {
        Some(size) => format!("mode=0755,size={size}"),
        None => "mode=0755".to_string(),
    };
    syscall.mount("kiln-root", new_root, Some("tmpfs"), 0, Some(&data))?;
    syscall.move_tree_contents(Path::new("/"), new_root, &[new_root.to_path_buf()])?;
    syscall.chdir(new_root)?;
    syscall.mount(".", Path::new("/"), None, MS_MOVE, None)?;
    syscall.chroot(Path::new("."))?;
    syscall.chdir(Path::new("/"))?;
    Ok(())
}

/// The real tree move used by [`crate::syscall::LinuxSyscall`]: copies each entry of `from`
/// into `to` (directories, regular files with their mode and owner, symlinks, device nodes,
/// fifos; hard links stay hard links within the copy) and deletes the original right after, so
/// the transient memory cost is one file. Entries that are mount points (another device than
/// `from`) and `skip` are left alone.
pub fn move_tree_contents(from: &Path, to: &Path, skip: &[PathBuf]) -> Result<(), SyscallError> {
    use std::os::unix::fs::MetadataExt;
    let root_device = std::fs::symlink_metadata(from)
        .map_err(|e| io_error("stat", from, e))?
        .dev();
    let mut hard_links = std::collections::HashMap::new();
    move_directory_entries(from, to, skip, root_device, &mut hard_links)
}

fn io_error(operation: &'static str, path: &Path, source: std::io::Error) -> SyscallError {
    SyscallError {
        operation,
        subject: path.display().to_string(),
        source,
    }
}

fn move_directory_entries(
    from: &Path,
    to: &Path,
    skip: &[PathBuf],
    root_device: u64,
    hard_links: &mut std::collections::HashMap<u64, PathBuf>,
) -> Result<(), SyscallError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let mut entries: Vec<PathBuf> = std::fs::read_dir(from)
        .map_err(|e| io_error("read directory", from, e))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    entries.sort();
    for source in entries {
        if skip.iter().any(|skipped| skipped == &source) {
            continue;
        }
        let Some(name) = source.file_name() else {
            continue;
        };
        let destination = to.join(name);
        let metadata =
            std::fs::symlink_metadata(&source).map_err(|e| io_error("stat", &source, e))?;
        if metadata.dev() != root_device {
            // A mount point (say /proc mounted by the kernel or a previous stage): keep it.
            continue;
        }
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            std::fs::create_dir_all(&destination)
                .map_err(|e| io_error("mkdir", &destination, e))?;
            move_directory_entries(&source, &destination, skip, root_device, hard_links)?;
            std::fs::set_permissions(
                &destination,
                std::fs::Permissions::from_mode(metadata.mode() & 0o7777),
            )
            .map_err(|e| io_error("chmod", &destination, e))?;
            let _ =
                std::os::unix::fs::lchown(&destination, Some(metadata.uid()), Some(metadata.gid()));
            let _ = std::fs::remove_dir(&source);
            continue;
        }
        // Checked before `nlink`: once the first name was moved, the others have one link
        // fewer. Inode numbers cannot be reused meanwhile: nothing creates files in `from`.
        if !file_type.is_symlink() {
            if let Some(first) = hard_links.get(&metadata.ino()) {
                std::fs::hard_link(first, &destination)
                    .map_err(|e| io_error("link", &destination, e))?;
                let _ = std::fs::remove_file(&source);
                continue;
            }
            if metadata.nlink() > 1 {
                hard_links.insert(metadata.ino(), destination.clone());
            }
        }
        if file_type.is_symlink() {
            let target =
                std::fs::read_link(&source).map_err(|e| io_error("readlink", &source, e))?;
            std::os::unix::fs::symlink(&target, &destination)
                .map_err(|e| io_error("symlink", &destination, e))?;
        } else if file_type.is_file() {
            std::fs::copy(&source, &destination).map_err(|e| io_error("copy", &source, e))?;
        } else if file_type.is_char_device() || file_type.is_block_device() || file_type.is_fifo() {
            let destination_c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
                destination.as_os_str(),
            ))
            .map_err(|_| {
                SyscallError::from_errno("mknod", destination.display().to_string(), libc::EINVAL)
            })?;
            // SAFETY: destination_c is a valid NUL-terminated path; mode and rdev are integers
            // taken from the source's metadata.
            let result =
                unsafe { libc::mknod(destination_c.as_ptr(), metadata.mode(), metadata.rdev()) };
            if result != 0 {
                return Err(io_error(
                    "mknod",
                    &destination,
                    std::io::Error::last_os_error(),
                ));
            }
        } else {
            // Sockets cannot be copied; nothing in an initramfs should be one.
            continue;
        }
        if !file_type.is_symlink() {
            std::fs::set_permissions(
                &destination,
                std::fs::Permissions::from_mode(metadata.mode() & 0o7777),
            )
            .map_err(|e| io_error("chmod", &destination, e))?;
        }
        // Ownership only matters when run as root (PID 1); as a user it fails harmlessly.
        let _ = std::os::unix::fs::lchown(&destination, Some(metadata.uid()), Some(metadata.gid()));
        std::fs::remove_file(&source).map_err(|e| io_error("remove", &source, e))?;
    }
    Ok(())
}

/// Unmounts what kiln-init mounted, in reverse order, detaching lazily (a process that did
/// not die keeps its files, the kernel finishes later). Failures are ignored: power goes off
/// next anyway.
pub fn unmount_all(syscall: &dyn Syscall, mounted: &[PathBuf]) {
    for target in mounted.iter().rev() {
        let _ = syscall.unmount(target, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::RecordingSyscall;

    #[test]
    fn early_mount_sequence() {
        let syscall = RecordingSyscall::new();
        let report = mount_early_filesystems(&syscall);
        insta::assert_snapshot!(syscall.transcript());
        assert!(report.warnings.is_empty());
        assert_eq!(report.mounted.len(), 8);
    }

    #[test]
    fn devtmpfs_already_mounted_is_fine_and_not_unmounted() {
        let syscall = RecordingSyscall::new();
        syscall.fail_calls_starting_with("mount devtmpfs", libc::EBUSY);
        let report = mount_early_filesystems(&syscall);
        assert!(report.warnings.is_empty());
        assert!(!report.mounted.contains(&PathBuf::from("/dev")));
    }

    #[test]
    fn kernel_without_devtmpfs_gets_tmpfs_dev_with_nodes() {
        let syscall = RecordingSyscall::new();
        syscall.fail_calls_starting_with("mount devtmpfs", libc::ENODEV);
        let report = mount_early_filesystems(&syscall);
        let calls = syscall.calls();
        let dev_index = calls
            .iter()
            .position(|c| c.starts_with("mount dev /dev type=tmpfs"))
            .unwrap();
        assert!(calls[dev_index + 1].starts_with("mknod /dev/console c 5:1"));
        assert_eq!(report.warnings.len(), 1);
    }

    #[test]
    fn missing_cgroup2_is_a_warning() {
        let syscall = RecordingSyscall::new();
        syscall.fail_calls_starting_with("mount cgroup2", libc::ENODEV);
        let report = mount_early_filesystems(&syscall);
        insta::assert_snapshot!(report.warnings.join("\n"), @"cannot mount cgroup2 on /sys/fs/cgroup: recorded mount cgroup2 /sys/fs/cgroup type=cgroup2 flags=nosuid|nodev|noexec data=nsdelegate: No such device (os error 19)");
    }

    #[test]
    fn move_root_sequence() {
        let syscall = RecordingSyscall::new();
        move_root_off_rootfs(
            &syscall,
            &RootSettings {
                move_off_rootfs: true,
                tmpfs_size: Some("90%".to_string()),
            },
        )
        .unwrap();
        insta::assert_snapshot!(syscall.transcript(), @r"
        mkdir -p /.kiln-new-root mode=755
        mount kiln-root /.kiln-new-root type=tmpfs flags=0 data=mode=0755,size=90%
        move tree / -> /.kiln-new-root skipping [/.kiln-new-root]
        chdir /.kiln-new-root
        mount . / type=- flags=move data=-
        chroot .
        chdir /
        ");
    }

    #[test]
    fn configured_mounts_optional_and_required() {
        let syscall = RecordingSyscall::new();
        syscall.fail_calls_starting_with("mount none /sys/kernel/debug", libc::ENODEV);
        let mounts: Vec<MountEntry> = serde_json::from_str(
            r#"[{"source":"none","target":"/sys/kernel/debug","fstype":"debugfs"},
                {"source":"/dev/sda1","target":"/mnt/data","fstype":"ext4","flags":["ro","nodev"],"optional":false}]"#,
        )
        .unwrap();
        let mut report = MountReport::default();
        mount_configured_filesystems(&syscall, &mounts, &mut report).unwrap();
        assert_eq!(report.mounted, vec![PathBuf::from("/mnt/data")]);
        assert_eq!(report.warnings.len(), 1);

        let failing = RecordingSyscall::new();
        failing.fail_calls_starting_with("mount /dev/sda1", libc::ENOENT);
        let error = mount_configured_filesystems(&failing, &mounts, &mut MountReport::default())
            .unwrap_err();
        insta::assert_snapshot!(error.to_string(), @"mount of /mnt/data (ext4) failed: recorded mount /dev/sda1 /mnt/data type=ext4 flags=ro|nodev data=-: No such file or directory (os error 2); fix the module that asks for it or mark it optional");
    }

    #[test]
    fn tree_move_copies_and_deletes() {
        let directory = tempfile::tempdir().unwrap();
        let from = directory.path().join("from");
        let to = directory.path().join("to");
        std::fs::create_dir_all(from.join("etc/kiln")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("etc/kiln/init.json"), "{}").unwrap();
        std::fs::write(from.join("busybox"), "binary").unwrap();
        std::fs::hard_link(from.join("busybox"), from.join("sh")).unwrap();
        std::os::unix::fs::symlink("busybox", from.join("ls")).unwrap();
        std::fs::create_dir_all(from.join("skipme")).unwrap();
        move_tree_contents(&from, &to, &[from.join("skipme")]).unwrap();
        assert_eq!(
            std::fs::read_to_string(to.join("etc/kiln/init.json")).unwrap(),
            "{}"
        );
        assert_eq!(
            std::fs::read_link(to.join("ls")).unwrap(),
            PathBuf::from("busybox")
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(to.join("sh")).unwrap().ino(),
            std::fs::metadata(to.join("busybox")).unwrap().ino()
        );
        let left: Vec<_> = std::fs::read_dir(&from)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("skipme")]);
    }
}
