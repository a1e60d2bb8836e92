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
    (
        "disorderfs",
        "the reproducibility gate's build B sees its checkout in shuffled directory order",
    ),
    ("fuse3", "mounts disorderfs (fusermount3)"),
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
    let mut arguments: Vec<String> = ["install", "-y", "--no-install-recommends"]
        .map(String::from)
        .to_vec();
    arguments.extend(missing.iter().map(|name| name.to_string()));
    if let Some(companion) = qemu_utils_to_match(&missing)? {
        eprintln!(
            "qemu-utils {} is installed, but the configured sources' qemu-system-common is {} \
             and breaks other qemu-utils versions: installing qemu-utils {} alongside",
            companion.installed, companion.wanted, companion.wanted
        );
        arguments.push("--allow-downgrades".to_string());
        arguments.push(format!("qemu-utils={}", companion.wanted));
    }
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    run_apt(&arguments)
}

/// An installed qemu-utils whose version is not the one the configured sources give
/// qemu-system-common.
#[derive(Debug, PartialEq, Eq)]
struct QemuUtilsMismatch {
    installed: String,
    wanted: String,
}

/// Debian builds qemu-utils and qemu-system-* from one source package and qemu-system-common
/// `Breaks` other qemu-utils versions. A host may carry a newer qemu-utils from a source it no
/// longer lists (a backport preinstalled in the machine image): then `apt-get install
/// qemu-system-x86` fails with "pkgProblemResolver generated breaks". The fix apt will not
/// choose by itself is to take qemu-utils at the configured sources' qemu-system-common
/// version too. Only when a qemu-system package is about to be installed.
fn qemu_utils_to_match(missing: &[&str]) -> anyhow::Result<Option<QemuUtilsMismatch>> {
    if !missing.iter().any(|name| name.starts_with("qemu-system-")) {
        return Ok(None);
    }
    let Some(installed) = installed_version("qemu-utils") else {
        return Ok(None);
    };
    let policy = Command::new("apt-cache")
        .args(["policy", "qemu-system-common", "qemu-utils"])
        .env("LC_ALL", "C")
        .output()
        .context("running apt-cache policy")?;
    let policy = String::from_utf8_lossy(&policy.stdout);
    Ok(qemu_utils_mismatch(&policy, &installed))
}

/// From `apt-cache policy qemu-system-common qemu-utils` (C locale): the mismatch, if the
/// installed qemu-utils differs from qemu-system-common's candidate and the sources offer
/// qemu-utils at that candidate version.
fn qemu_utils_mismatch(policy: &str, installed_utils: &str) -> Option<QemuUtilsMismatch> {
    let mut package = "";
    let mut common_candidate = None;
    let mut utils_versions = Vec::new();
    let mut in_table = false;
    for line in policy.lines() {
        if !line.starts_with(' ') {
            package = line.trim_end_matches(':');
            in_table = false;
            continue;
        }
        let text = line.trim();
        if let Some(candidate) = text.strip_prefix("Candidate: ") {
            if package == "qemu-system-common" {
                common_candidate = Some(candidate.to_string());
            }
        } else if text == "Version table:" {
            in_table = true;
        } else if in_table && package == "qemu-utils" && !line.starts_with("        ") {
            // A version line: "*** VERSION PRIORITY" or "VERSION PRIORITY".
            let version = text.trim_start_matches("*** ").split_whitespace().next();
            utils_versions.extend(version.map(str::to_string));
        }
    }
    let wanted = common_candidate.filter(|candidate| candidate != "(none)")?;
    if wanted == installed_utils || !utils_versions.contains(&wanted) {
        return None;
    }
    Some(QemuUtilsMismatch {
        installed: installed_utils.to_string(),
        wanted,
    })
}

/// The version of `package` when dpkg has it installed.
fn installed_version(package: &str) -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (status, version) = text.split_once('\t')?;
    status
        .contains("install ok installed")
        .then(|| version.to_string())
}

fn is_installed(package: &str) -> bool {
    installed_version(package).is_some()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache policy qemu-system-common qemu-utils` on a Debian 12 machine image that
    /// carries qemu-utils from bookworm-backports without listing that suite.
    const BACKPORT_INSTALLED: &str = "\
qemu-system-common:
  Installed: (none)
  Candidate: 1:7.2+dfsg-7+deb12u18+b3
  Version table:
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://archive.example/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://archive.example/debian-security bookworm-security/main amd64 Packages
qemu-utils:
  Installed: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Candidate: 1:10.0.2+ds-2+deb13u1~bpo12+1
  Version table:
 *** 1:10.0.2+ds-2+deb13u1~bpo12+1 100
        100 /var/lib/dpkg/status
     1:7.2+dfsg-7+deb12u18+b3 500
        500 http://archive.example/debian bookworm/main amd64 Packages
     1:7.2+dfsg-7+deb12u15 500
        500 http://archive.example/debian-security bookworm-security/main amd64 Packages
";

    #[test]
    fn a_backported_qemu_utils_is_matched_to_the_sources_qemu_system_common() {
        assert_eq!(
            qemu_utils_mismatch(BACKPORT_INSTALLED, "1:10.0.2+ds-2+deb13u1~bpo12+1"),
            Some(QemuUtilsMismatch {
                installed: "1:10.0.2+ds-2+deb13u1~bpo12+1".to_string(),
                wanted: "1:7.2+dfsg-7+deb12u18+b3".to_string(),
            })
        );
    }

    #[test]
    fn a_matching_or_unavailable_qemu_utils_is_left_alone() {
        assert_eq!(
            qemu_utils_mismatch(BACKPORT_INSTALLED, "1:7.2+dfsg-7+deb12u18+b3"),
            None
        );
        let no_common =
            BACKPORT_INSTALLED.replace("Candidate: 1:7.2+dfsg-7+deb12u18+b3", "Candidate: (none)");
        assert_eq!(
            qemu_utils_mismatch(&no_common, "1:10.0.2+ds-2+deb13u1~bpo12+1"),
            None
        );
        // The sources do not carry qemu-utils at qemu-system-common's version: nothing to pin.
        let status_line = "100 /var/lib/dpkg/status\n";
        let cut = BACKPORT_INSTALLED.find(status_line).unwrap() + status_line.len();
        let other_utils = &BACKPORT_INSTALLED[..cut];
        assert_eq!(
            qemu_utils_mismatch(other_utils, "1:10.0.2+ds-2+deb13u1~bpo12+1"),
            None
        );
    }
}
