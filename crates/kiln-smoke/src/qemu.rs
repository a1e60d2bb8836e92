//! QEMU command lines, one pure function from a [`QemuConfig`] to program and arguments.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{ImageArch, SmokeError};

/// UEFI firmware for aarch64 from Debian's `qemu-efi-aarch64`.
pub const AARCH64_UEFI_FIRMWARE: &str = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd";

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// What runs before the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// The machine's default: SeaBIOS on x86_64; on aarch64 none (QEMU jumps into the kernel).
    Default,
    /// UEFI from a firmware file (`-bios`), aarch64.
    Uefi(PathBuf),
}

/// How the kernel and initramfs reach the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// `-kernel`, `-initrd`, `-append`.
    Direct {
        kernel: PathBuf,
        initramfs: PathBuf,
        append: String,
    },
    /// The NIC's iPXE option ROM, from QEMU's TFTP server (see [`Network::User::tftp`]).
    Network,
}

/// The iPXE side of QEMU's user-mode network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpBoot {
    /// Served read-only over TFTP at 10.0.2.2.
    pub directory: PathBuf,
    /// Handed out in the DHCP answer (a file name inside `directory`).
    pub bootfile: String,
}

/// The machine's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No NIC at all (`-nic none`).
    None,
    /// One virtio NIC on QEMU's user-mode network (slirp): DHCP from 10.0.2.2, the guest's
    /// port 22 forwarded from 127.0.0.1:`ssh_host_port`.
    User {
        ssh_host_port: Option<u16>,
        tftp: Option<TftpBoot>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    pub arch: ImageArch,
    pub accelerator: Accelerator,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub cpus: u32,
    pub boot: BootSource,
    pub network: Network,
}

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    pub program: &'static str,
    pub arguments: Vec<OsString>,
    /// The Debian package providing `program`.
    pub package: &'static str,
}

impl QemuCommand {
    /// The command as one shell-like line, for logs (`-append` values are quoted).
    pub fn display(&self) -> String {
        let mut line = self.program.to_string();
        for argument in &self.arguments {
            let text = argument.to_string_lossy();
            line.push(' ');
            if text.contains(' ') || text.is_empty() {
                line.push_str(&format!("'{text}'"));
            } else {
                line.push_str(&text);
            }
        }
        line
    }
}

/// Why `--boot ipxe` cannot work for `arch`, or `None` when it can.
pub fn ipxe_unavailable_reason(arch: ImageArch) -> Option<&'static str> {
    match arch {
        ImageArch::X86_64 => None,
        ImageArch::Aarch64 => Some(
            "iPXE netboot on aarch64 is not possible with Debian's packages: ipxe-qemu and ipxe ship only x86 \
             option ROMs and an x86_64 ipxe.efi (there is no arm64 iPXE build to load), and iPXE on UEFI could \
             only start a kernel with an EFI stub, which the virt kernel does not have (CONFIG_EFI is not set); \
             use --boot direct",
        ),
    }
}

/// Whether an arm64 `Image` can be started by UEFI: an EFI stub kernel begins with the PE
/// `MZ` signature (`CONFIG_EFI_STUB`, selected by `CONFIG_EFI`); without it the first bytes
/// are a branch instruction and only a direct boot works.
pub fn aarch64_kernel_has_efi_stub(kernel: &Path) -> Result<bool, SmokeError> {
    use std::io::Read;
    let mut head = [0u8; 2];
    let mut file = std::fs::File::open(kernel).map_err(SmokeError::io("opening", kernel))?;
    file.read_exact(&mut head)
        .map_err(SmokeError::io("reading", kernel))?;
    Ok(&head == b"MZ")
}

/// The firmware an aarch64 boot of `kernel` uses: UEFI when the kernel has an EFI stub and
/// the firmware file is installed, else none (with the reason, for the report).
pub fn aarch64_firmware_for(kernel: &Path) -> Result<(Firmware, String), SmokeError> {
    if !aarch64_kernel_has_efi_stub(kernel)? {
        return Ok((
            Firmware::Default,
            "no firmware: the kernel has no EFI stub (CONFIG_EFI is not set), so UEFI could not start it; QEMU loads it directly".to_string(),
        ));
    }
    let firmware = PathBuf::from(AARCH64_UEFI_FIRMWARE);
    if firmware.is_file() {
        Ok((
            Firmware::Uefi(firmware),
            format!("UEFI ({AARCH64_UEFI_FIRMWARE})"),
        ))
    } else {
        Ok((Firmware::Default, format!("no firmware: {AARCH64_UEFI_FIRMWARE} is missing (apt-get install qemu-efi-aarch64)")))
    }
}

/// The QEMU command for `config`. The console is the first serial port on QEMU's stdout;
/// `-no-reboot` turns a reboot (and a kernel panic with `panic=-1`) into QEMU exiting.
pub fn qemu_command(config: &QemuConfig) -> Result<QemuCommand, SmokeError> {
    let mut arguments: Vec<OsString> = Vec::new();
    fn push(arguments: &mut Vec<OsString>, items: &[&str]) {
        arguments.extend(items.iter().map(OsString::from));
    }
    let (program, package) = match config.arch {
        ImageArch::X86_64 => {
            push(&mut arguments, &["-machine", "q35"]);
            ("qemu-system-x86_64", "qemu-system-x86")
        }
        ImageArch::Aarch64 => {
            push(&mut arguments, &["-machine", "virt", "-cpu", "cortex-a57"]);
            ("qemu-system-aarch64", "qemu-system-arm")
        }
    };
    push(&mut arguments, &["-accel", config.accelerator.name()]);
    let memory = config.memory_mib.to_string();
    let cpus = config.cpus.to_string();
    push(&mut arguments, &["-m", &memory, "-smp", &cpus]);
    push(
        &mut arguments,
        &[
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
        ],
    );
    if let Firmware::Uefi(path) = &config.firmware {
        if config.arch != ImageArch::Aarch64 {
            return Err(SmokeError::Unsupported(
                "UEFI firmware is only wired up for aarch64 boots".to_string(),
            ));
        }
        arguments.push("-bios".into());
        arguments.push(path.into());
    }
    match &config.boot {
        BootSource::Direct {
            kernel,
            initramfs,
            append,
        } => {
            arguments.push("-kernel".into());
            arguments.push(kernel.into());
            arguments.push("-initrd".into());
            arguments.push(initramfs.into());
            arguments.push("-append".into());
            arguments.push(append.into());
        }
        BootSource::Network => {
            if let Some(reason) = ipxe_unavailable_reason(config.arch) {
                return Err(SmokeError::Unsupported(reason.to_string()));
            }
            let has_tftp = matches!(&config.network, Network::User { tftp: Some(_), .. });
            if !has_tftp {
                return Err(SmokeError::Unsupported(
                    "a network boot needs the user network with a TFTP directory".to_string(),
                ));
            }
            arguments.push("-boot".into());
            arguments.push("order=n,strict=on".into());
        }
    }
    // An entropy source, as cloud VMs (virtio-rng) and servers (RDRAND, a TPM) have: without
    // one, a TCG guest's kernel spends seconds making jitter entropy before the first
    // getrandom() answers (what the rngd module waits for), which no real machine pays.
    // The `virt` kernels have CONFIG_HW_RANDOM_VIRTIO=y; the floor of `bench boot` gets it too.
    arguments.push("-device".into());
    arguments.push("virtio-rng-pci".into());
    match &config.network {
        Network::None => {
            arguments.push("-nic".into());
            arguments.push("none".into());
        }
        Network::User {
            ssh_host_port,
            tftp,
        } => {
            let mut netdev = OsString::from("user,id=net0");
            if let Some(port) = ssh_host_port {
                netdev.push(format!(",hostfwd=tcp:127.0.0.1:{port}-:22"));
            }
            if let Some(tftp) = tftp {
                let directory = tftp.directory.to_string_lossy();
                if directory.contains(',') || tftp.bootfile.contains(',') {
                    return Err(SmokeError::Unsupported(format!(
                        "the TFTP directory {directory} or boot file {} contains a comma, which QEMU's option syntax cannot carry",
                        tftp.bootfile
                    )));
                }
                netdev.push(format!(",tftp={directory},bootfile={}", tftp.bootfile));
            }
            arguments.push("-netdev".into());
            arguments.push(netdev);
            arguments.push("-device".into());
            arguments.push("virtio-net-pci,netdev=net0".into());
        }
    }
    Ok(QemuCommand {
        program,
        arguments,
        package,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(arch: ImageArch) -> QemuConfig {
        QemuConfig {
            arch,
            accelerator: Accelerator::Tcg,
            firmware: Firmware::Default,
            memory_mib: 1024,
            cpus: 2,
            boot: BootSource::Direct {
                kernel: PathBuf::from("/out/hook/vmlinuz-x"),
                initramfs: PathBuf::from("/out/hook/initramfs-x"),
                append: "console=ttyS0,115200 panic=-1".to_string(),
            },
            network: Network::User {
                ssh_host_port: Some(2222),
                tftp: None,
            },
        }
    }

    #[test]
    fn command_lines_per_arch_and_boot() {
        let mut report = String::new();
        report.push_str(&qemu_command(&direct(ImageArch::X86_64)).unwrap().display());
        report.push('\n');
        let mut aarch64 = direct(ImageArch::Aarch64);
        aarch64.network = Network::None;
        aarch64.firmware = Firmware::Uefi(PathBuf::from(AARCH64_UEFI_FIRMWARE));
        report.push_str(&qemu_command(&aarch64).unwrap().display());
        report.push('\n');
        let mut ipxe = direct(ImageArch::X86_64);
        ipxe.accelerator = Accelerator::Kvm;
        ipxe.boot = BootSource::Network;
        ipxe.network = Network::User {
            ssh_host_port: Some(2222),
            tftp: Some(TftpBoot {
                directory: PathBuf::from("/run/tftp"),
                bootfile: "boot.ipxe".to_string(),
            }),
        };
        report.push_str(&qemu_command(&ipxe).unwrap().display());
        insta::assert_snapshot!(report, @r"
        qemu-system-x86_64 -machine q35 -accel tcg -m 1024 -smp 2 -nodefaults -nographic -no-reboot -monitor none -serial stdio -kernel /out/hook/vmlinuz-x -initrd /out/hook/initramfs-x -append 'console=ttyS0,115200 panic=-1' -device virtio-rng-pci -netdev user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22 -device virtio-net-pci,netdev=net0
        qemu-system-aarch64 -machine virt -cpu cortex-a57 -accel tcg -m 1024 -smp 2 -nodefaults -nographic -no-reboot -monitor none -serial stdio -bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd -kernel /out/hook/vmlinuz-x -initrd /out/hook/initramfs-x -append 'console=ttyS0,115200 panic=-1' -device virtio-rng-pci -nic none
        qemu-system-x86_64 -machine q35 -accel kvm -m 1024 -smp 2 -nodefaults -nographic -no-reboot -monitor none -serial stdio -boot order=n,strict=on -device virtio-rng-pci -netdev user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,tftp=/run/tftp,bootfile=boot.ipxe -device virtio-net-pci,netdev=net0
        ");
    }

    #[test]
    fn impossible_combinations_are_refused_with_the_reason() {
        let mut aarch64_ipxe = direct(ImageArch::Aarch64);
        aarch64_ipxe.boot = BootSource::Network;
        let error = qemu_command(&aarch64_ipxe).unwrap_err().to_string();
        assert!(error.contains("no arm64 iPXE build"), "{error}");
        let mut no_tftp = direct(ImageArch::X86_64);
        no_tftp.boot = BootSource::Network;
        assert!(qemu_command(&no_tftp)
            .unwrap_err()
            .to_string()
            .contains("TFTP directory"));
    }
}
