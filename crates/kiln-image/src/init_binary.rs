//! Building kiln-init, the image's PID 1, for the target architecture: the
//! one process this crate spawns (cargo).
//!
//! The binary goes into every image, so its bytes must not depend on where
//! the workspace, the cargo home or the target directory are: every such
//! path is remapped (`--remap-path-prefix`) to a fixed name, symbols and
//! debug info are stripped, and codegen is single-unit. The compiler itself is
//! pinned by `rust-toolchain.toml`. Test: `tests/image_init_binary.rs`
//! (slow tier) builds from two checkouts at different paths and compares.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ImageArch;

#[derive(Debug, thiserror::Error)]
pub enum InitBuildError {
    #[error("running cargo to build a binary for {target}: {source}")]
    Spawn {
        target: String,
        source: std::io::Error,
    },
    #[error("building a binary for {target} failed ({status}); last lines of cargo's output:\n{tail}\nif the target is missing: rustup target add {target}")]
    Failed {
        target: String,
        status: String,
        tail: String,
    },
    #[error("cargo finished but {path} is missing")]
    Missing { path: String },
}

pub fn musl_target(arch: ImageArch) -> &'static str {
    match arch {
        ImageArch::X86_64 => "x86_64-unknown-linux-musl",
        ImageArch::Aarch64 => "aarch64-unknown-linux-musl",
    }
}

/// Builds `kiln-init` from the workspace at `workspace` into `target_dir`
/// and returns the binary's path.
pub fn build_init_binary(
    workspace: &Path,
    target_dir: &Path,
    arch: ImageArch,
) -> Result<PathBuf, InitBuildError> {
    build_crate_binary(workspace, target_dir, arch, "kiln-init")
}

/// Builds the binary named like `package` (a workspace package) for `arch`, static musl,
/// with the same reproducibility settings as kiln-init, and returns its path.
pub fn build_crate_binary(
    workspace: &Path,
    target_dir: &Path,
    arch: ImageArch,
    package: &str,
) -> Result<PathBuf, InitBuildError> {
    let target = musl_target(arch);
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".rustup")))
        .unwrap_or_else(|| PathBuf::from("/root/.rustup"));
    let rustflags = [
        format!("--remap-path-prefix={}=/kiln/target", target_dir.display()),
        format!("--remap-path-prefix={}=/kiln/src", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/rustup", rustup_home.display()),
        "-Cstrip=symbols".to_string(),
        "-Cdebuginfo=0".to_string(),
        "-Ccodegen-units=1".to_string(),
    ];
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--package",
            package,
            "--bin",
            package,
            "--target",
            target,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // Separated by 0x1f so no flag is split on spaces in a path.
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\u{1f}"))
        .env_remove("RUSTFLAGS")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_INCREMENTAL", "false")
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .map_err(|source| InitBuildError::Spawn {
            target: target.to_string(),
            source,
        })?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = text.lines().collect();
        return Err(InitBuildError::Failed {
            target: target.to_string(),
            status: output.status.to_string(),
            tail: lines[lines.len().saturating_sub(40)..].join("\n"),
        });
    }
    let binary = target_dir.join(target).join("release").join(package);
    if !binary.is_file() {
        return Err(InitBuildError::Missing {
            path: binary.display().to_string(),
        });
    }
    Ok(binary)
}
