//! What a kernel is built for: the architecture and the flavor.

use std::fmt;
use std::str::FromStr;

/// A CPU architecture, named as kiln names it (`x86_64`, `aarch64`), which is not always
/// how the kernel names it (`ARCH=arm64`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// kiln's name, used for fragment files and outputs (`vmlinuz-x86_64`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The kernel's `ARCH=` value.
    pub fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The directory under `arch/` in the kernel source (`SRCARCH`).
    pub fn source_arch_dir(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Debian's name for the architecture (`linux-image-*-amd64`).
    pub fn debian_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// `CROSS_COMPILE=` prefix when building on `host` (as `std::env::consts::ARCH` names it);
    /// the prefixes are those of Debian's cross toolchains (`gcc-aarch64-linux-gnu`).
    pub fn cross_compile_prefix(self, host: &str) -> Option<&'static str> {
        if host == self.name() {
            return None;
        }
        Some(match self {
            Arch::X86_64 => "x86_64-linux-gnu-",
            Arch::Aarch64 => "aarch64-linux-gnu-",
        })
    }

    /// The make target producing the kernel image, and where it lands in the build dir.
    /// arm64 ships the uncompressed `Image`: it is what QEMU, U-Boot's `booti` and (with the
    /// EFI stub) UEFI firmware and iPXE load directly; `Image.gz` is not an EFI binary.
    pub fn image_target(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("bzImage", "arch/x86/boot/bzImage"),
            Arch::Aarch64 => ("Image", "arch/arm64/boot/Image"),
        }
    }

    /// Whether the architecture's kernels come with device trees (`make dtbs`).
    pub fn has_device_trees(self) -> bool {
        matches!(self, Arch::Aarch64)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            other => Err(format!(
                "unknown architecture `{other}`: use x86_64 or aarch64"
            )),
        }
    }
}

/// Which hardware a kernel is for. Each flavor has fragments in `kernel-configs/flavor/`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// QEMU and cloud VMs: small, quick to build, booted in CI.
    Virt,
    /// Bare-metal servers and arm64 boards: wide NIC, storage and console coverage.
    Generic,
}

impl Flavor {
    pub const ALL: [Flavor; 2] = [Flavor::Virt, Flavor::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Virt => "virt",
            Flavor::Generic => "generic",
        }
    }

    /// The make target that writes the base `.config` the fragments are merged onto.
    ///
    /// `virt` starts from `tinyconfig`, so every feature it has is listed in a fragment.
    /// `generic` starts from the architecture's `defconfig`: real machines need hundreds of
    /// options (ACPI, IOMMU, USB HID, EFI framebuffer, NUMA, hotplug) that the kernel
    /// maintainers already keep working there; the fragments add what Hook users ask for.
    pub fn base_config_target(self) -> &'static str {
        match self {
            Flavor::Virt => "tinyconfig",
            Flavor::Generic => "defconfig",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Flavor {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "virt" => Ok(Flavor::Virt),
            "generic" => Ok(Flavor::Generic),
            other => Err(format!(
                "unknown kernel flavor `{other}`: use virt or generic"
            )),
        }
    }
}
