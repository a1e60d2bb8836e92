//! kiln-smoke: boots a whole kiln image in QEMU and checks that it works, the way an
//! operator would: the kernel starts, every onboot step finishes, every service starts, the
//! `dhcp` step gets a lease from QEMU's built-in DHCP server, `kiln: ready` appears, an SSH
//! login through a forwarded port runs a command, and `poweroff` over SSH ends QEMU.
//!
//! ```text
//! out/<name>/<arch>/ (vmlinuz-ARCH, initramfs-ARCH, cmdline, boot.ipxe, manifest.json)
//!   │ image::ImageDirectory::open        which files, which steps and services to expect
//!   ▼
//! qemu::QemuConfig → qemu::qemu_command  x86_64: q35, serial on stdio; aarch64: virt, cortex-a57
//!   │ accel::choose_accelerator          KVM only if a short probe boot works, else TCG
//!   ▼
//! vm::Vm::start                          console → a log file (raw bytes) + rendered lines
//!   │ console::ConsoleLines              escapes, resets, backspaces, \r rendered once
//!   │ markers::MarkerChecker             ordered stages of expected console lines
//!   │ tftp::TftpReads                    iPXE: which files QEMU's TFTP read (inotify)
//!   ▼
//! ssh::SshKey, ssh::run_command          dropbearkey / dbclient through hostfwd
//! ```
//! [`smoke::run_smoke`] strings these together; the fault tests in `tests/smoke_qemu.rs`
//! use the pieces with their own marker plans.
//!
//! **Owns**: QEMU command lines for the two architectures, the console capture, the
//! expected-marker plan derived from an image, the per-run SSH key, the iPXE TFTP directory.
//!
//! **Does not touch**: how images are built (`kiln-image`, `cargo xtask image`), the markers
//! themselves (a stable interface owned by `kiln-init` and the modules' READMEs), anything
//! outside the run's own temporary and log directories.
//!
//! # Boot methods and firmware
//!
//! * `direct`: QEMU loads `vmlinuz-ARCH` and `initramfs-ARCH` itself (`-kernel`/`-initrd`),
//!   the command line is the image's `cmdline` plus the run's additions.
//! * `ipxe` (x86_64): SeaBIOS runs the iPXE option ROM of the virtio NIC (package
//!   `ipxe-qemu`); QEMU's user-mode network answers its DHCP with `bootfile=boot.ipxe` and
//!   serves a TFTP directory holding the image's files, so iPXE fetches the script, then the
//!   kernel and initramfs relative to it, over TFTP. The run's command-line additions are
//!   appended to the script's `kernel` line (the only change made to the image's script).
//!
//! aarch64 boots without firmware (QEMU's built-in loader, `-kernel`) unless the kernel
//! has an EFI stub: UEFI (`QEMU_EFI.fd` from `qemu-efi-aarch64`) starts a kernel only as an
//! EFI application, and kiln's `virt` kernel is built without `CONFIG_EFI` (its Image has
//! no `MZ` PE header), so the firmware would find nothing it can run. With a kernel that
//! has the stub ([`qemu::aarch64_kernel_has_efi_stub`]) the firmware is used.
//!
//! aarch64 iPXE netboot is not possible with Debian's packages: `ipxe-qemu` and `ipxe` ship
//! x86 ROMs and an x86_64 `ipxe.efi` only (no arm64 iPXE build), and iPXE on UEFI would
//! again need the EFI stub to start the kernel. [`qemu::ipxe_unavailable_reason`] says so.

pub mod accel;
/// The console renderer every marker check reads through (crate `kiln-console`).
pub use kiln_console as console;
pub mod image;
pub mod markers;
pub mod qemu;
pub mod smoke;
pub mod ssh;
pub mod tftp;
pub mod vm;

use std::path::PathBuf;

pub use kiln_image::ImageArch;
/// The `/etc/kiln/init.json` schema, for tests that inject a replacement config.
pub use kiln_init::config as init_config;

/// Everything that can stop a smoke run before a verdict on the image.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image directory {directory} has no {file}; build it with `cargo xtask image --arch {arch}`")]
    MissingImageFile {
        directory: PathBuf,
        file: String,
        arch: &'static str,
    },
    #[error("{path}: {problem}")]
    BadImage { path: PathBuf, problem: String },
    #[error("starting {program}: {source} (apt-get install {package})")]
    Spawn {
        program: String,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
}

impl SmokeError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SmokeError {
        let path = path.into();
        move |source| SmokeError::Io {
            action,
            path,
            source,
        }
    }
}

/// Reads a duration in seconds from the environment variable `name`, else `default_seconds`.
/// Boots under TCG on a loaded machine take from ten seconds to several minutes, so every
/// timeout of a smoke run can be raised without a rebuild.
pub fn timeout_from_env(name: &str, default_seconds: u64) -> std::time::Duration {
    let seconds = std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .unwrap_or(default_seconds);
    std::time::Duration::from_secs(seconds)
}
