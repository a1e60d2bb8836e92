//! What the host needs: Debian packages and rustup targets. Installs them when
//! running as root (through apt and the host's configured sources), else
//! prints the exact command to run.

use std::process::Command;

use anyhow::{bail, Context};

/// Debian packages the test suite uses, each with what needs it.
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    (
        "cpio",
        "GNU cpio: extracts our archives in the interoperability test and the benchmark",
    ),
    ("zstd", "the zstd CLI: the benchmark's baseline"),
    (
        "lz4",
        "the reference LZ4 decoder our legacy-format writer is checked against",
    ),
    ("busybox-static", "a static /init for boot tests"),
    ("qemu-system-x86", "boots x86_64 kernels in tests"),
    ("qemu-system-arm", "boots aarch64 kernels in tests"),
    ("qemu-efi-aarch64", "UEFI firmware for aarch64 boots"),
    ("ipxe-qemu", "iPXE ROMs for netboot tests"),
    (
        "skopeo",
        "a real OCI client that must accept our image layouts",
    ),
    (
        "diffoscope-minimal",
        "explains byte differences when a reproducibility check fails",
    ),
    (
        "gcc-aarch64-linux-gnu",
        "cross compiler for aarch64 kernels",
    ),
    ("bc", "kernel build"),
    ("flex", "kernel build"),
    ("bison", "kernel build"),
    ("libelf-dev", "kernel build"),
    ("libssl-dev", "kernel build"),
    ("linux-source-6.1", "the pinned kernel source tarball"),
    ("make", "kernel build"),
    ("xz-utils", "kernel source extraction"),
    ("nix-bin", "evaluates the flake in tests/nix_flake.rs"),
    (
        "docker-registry",
        "a real OCI registry on 127.0.0.1 for the registry tests",
    ),
    ("apache2-utils", "htpasswd for the registry tests"),
    (
        "curl",
        "nix/fetch-oci-blob.sh, run against the test registry in tests/nix_flake.rs",
    ),
    ("jq", "nix/fetch-oci-blob.sh reads registry tokens with it"),
    ("openssl", "a test CA for the registry tests"),
    ("dropbear-bin", "the sshd module and its login test"),
    ("iproute2", "network namespaces for the dhcp module tests"),
    ("file", "checks that kiln-init is a static ELF"),
    ("git", "lists the checkout in the init reproducibility test"),
];

/// Installs whichever of `packages` are missing.
pub fn ensure_debian_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !is_installed(name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        bail!(
            "missing Debian packages: {}\nrun: sudo apt-get update && sudo apt-get install -y --no-install-recommends {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    run_apt(&["update"])?;
    let mut arguments = vec!["install", "-y", "--no-install-recommends"];
    arguments.extend(&missing);
    run_apt(&arguments)
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn run_apt(arguments: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("apt-get")
        .args(arguments)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get")?;
    if !output.status.success() {
        let log = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "apt-get {} failed ({}); last lines:\n{}",
            arguments.join(" "),
            output.status,
            tail.join("\n")
        );
    }
    Ok(())
}

/// Makes sure `cargo nextest` is available, installing it from crates.io if not.
pub fn ensure_cargo_nextest() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());
    if present {
        return Ok(());
    }
    eprintln!("installing cargo-nextest from crates.io");
    let status = Command::new("cargo")
        .args(["install", "--locked", "cargo-nextest"])
        .status()?;
    if !status.success() {
        bail!("`cargo install --locked cargo-nextest` failed ({status})");
    }
    Ok(())
}
