//! `cargo xtask repro`: the reproducibility gate. Builds the image twice, in separate
//! temporary directories and different conditions, and compares every output; on a
//! mismatch it says which files differ and runs diffoscope (else `cargo xtask diff`) on them.
//!
//! Build A: the warm store and cargo target directory, umask 022, TZ=UTC, LANG=C.
//! Build B: a new, empty store (every Debian package fetched again) and a new cargo target
//! directory (kiln-init compiled from scratch), umask 077, TZ=Pacific/Chatham,
//! LANG=de_DE.UTF-8, from a copy of the checkout at another path. Both use the kernel
//! artifact of build A (`--cold-kernel` builds it again in B's store instead: 20–50 min).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target architecture: x86_64 or aarch64.
    #[arg(long)]
    arch: String,
    /// The profile.
    #[arg(long, default_value = "hook")]
    profile: String,
    /// Build B builds the kernel again in its own cache instead of reusing A's.
    #[arg(long)]
    cold_kernel: bool,
    /// Keep the two output directories (printed) instead of deleting them.
    #[arg(long)]
    keep: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let workspace = crate::epoch::workspace_root();
    let executable = std::env::current_exe().context("locating the xtask binary")?;
    let work = tempfile::Builder::new()
        .prefix("kiln-repro-")
        .tempdir()
        .context("creating a temporary directory")?;
    let work_path = if args.keep {
        work.keep()
    } else {
        work.path().to_path_buf()
    };
    let out_a = work_path.join("a/out");
    let out_b = work_path.join("b/out");

    eprintln!("[1/3] build A: warm cache, umask 022, TZ=UTC, LANG=C");
    let mut build_a = image_command(&executable, &workspace, &args, &out_a, None);
    build_a
        .env("TZ", "UTC")
        .env("LANG", "C")
        .env_remove("LC_ALL");
    set_umask(&mut build_a, 0o022);
    let output_a = run_logged(&mut build_a, "build A")?;

    let directory_a = output_directory(&out_a)?;
    let kernel = kernel_artifact_of(&directory_a)?;
    eprintln!("[2/3] build B: empty store and target dir, another checkout path, umask 077, TZ=Pacific/Chatham, LANG=de_DE.UTF-8");
    let checkout_b = work_path.join("b/some/other/path/kiln");
    copy_checkout(&workspace, &checkout_b)?;
    let mut build_b = image_command(
        &executable,
        &checkout_b,
        &args,
        &out_b,
        if args.cold_kernel {
            None
        } else {
            kernel.as_deref()
        },
    );
    build_b
        .env("KILN_CACHE", work_path.join("b/cache"))
        .env("CARGO_TARGET_DIR", work_path.join("b/target"))
        .env("TZ", "Pacific/Chatham")
        .env("LANG", "de_DE.UTF-8")
        .env("LC_ALL", "de_DE.UTF-8");
    set_umask(&mut build_b, 0o077);
    run_logged(&mut build_b, "build B")?;
    let directory_b = output_directory(&out_b)?;

    eprintln!(
        "[3/3] compare {} and {}",
        directory_a.display(),
        directory_b.display()
    );
    let sums_a = std::fs::read_to_string(directory_a.join("SHA256SUMS"))
        .context("reading A's SHA256SUMS")?;
    let sums_b = std::fs::read_to_string(directory_b.join("SHA256SUMS"))
        .context("reading B's SHA256SUMS")?;
    let mut differing = Vec::new();
    for (line_a, line_b) in sums_a.lines().zip(sums_b.lines()) {
        if line_a != line_b {
            differing.push(
                line_a
                    .split_once("  ")
                    .map_or(line_a, |(_, name)| name)
                    .to_owned(),
            );
        }
    }
    if sums_a.lines().count() != sums_b.lines().count() {
        differing.push("SHA256SUMS (different file lists)".to_owned());
    }
    if differing.is_empty() {
        print!("{sums_a}");
        println!(
            "reproducible: {} {} built twice, every output identical",
            args.profile, args.arch
        );
        let _ = output_a;
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("NOT reproducible: {} differ", differing.join(", "));
    for name in &differing {
        let (a, b) = (directory_a.join(name), directory_b.join(name));
        if !a.is_file() || !b.is_file() {
            continue;
        }
        explain(&executable, &a, &b);
    }
    if !args.keep {
        eprintln!("(re-run with --keep to keep both output directories)");
    }
    Ok(ExitCode::FAILURE)
}

fn image_command(
    executable: &Path,
    root: &Path,
    args: &Args,
    out: &Path,
    kernel: Option<&Path>,
) -> Command {
    let mut command = Command::new(executable);
    command
        .args([
            "image",
            "--no-setup",
            "--arch",
            &args.arch,
            "--profile",
            &args.profile,
            "--root",
        ])
        .arg(root)
        .arg("--out")
        .arg(out);
    if let Some(kernel) = kernel {
        command.arg("--kernel-artifact").arg(kernel);
    }
    command
}

fn set_umask(command: &mut Command, mask: libc::mode_t) {
    // SAFETY: umask(2) is async-signal-safe and cannot fail.
    unsafe {
        command.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// Runs a build; on failure, the last 40 lines of its output.
fn run_logged(command: &mut Command, label: &str) -> anyhow::Result<std::process::Output> {
    let output = command
        .output()
        .with_context(|| format!("running {label}"))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{label} failed ({}); last lines:\n{}",
            output.status,
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    Ok(output)
}

/// `OUT/<name>/<arch>/`: the one directory an image build made under `out`.
fn output_directory(out: &Path) -> anyhow::Result<PathBuf> {
    for name in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let name = name?.path();
        for arch in std::fs::read_dir(&name)? {
            let arch = arch?.path();
            if arch.join("SHA256SUMS").is_file() {
                return Ok(arch);
            }
        }
    }
    bail!(
        "no output directory with a SHA256SUMS under {}",
        out.display()
    )
}

/// The kernel artifact A used: found in the cache by the key its manifest records.
fn kernel_artifact_of(directory: &Path) -> anyhow::Result<Option<PathBuf>> {
    let text = std::fs::read_to_string(directory.join("manifest.json"))?;
    let manifest: serde_json::Value = serde_json::from_str(&text)?;
    let Some(key) = manifest["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|input| input["kind"] == "kernel")
        .and_then(|input| input["version"].as_str())
    else {
        return Ok(None);
    };
    let cache = kiln_kernel::KernelCache::from_environment().context("no $KILN_CACHE or $HOME")?;
    let artifact = cache.artifact_dir(key);
    Ok(artifact.join("kernel.json").is_file().then_some(artifact))
}

/// The checkout's tracked and untracked-but-not-ignored files, copied to `to`.
fn copy_checkout(from: &Path, to: &Path) -> anyhow::Result<()> {
    let output = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(from)
        .output()
        .context("running git ls-files")?;
    if !output.status.success() {
        bail!(
            "git ls-files failed in {}: {}",
            from.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for name in output
        .stdout
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
    {
        let name = std::str::from_utf8(name)?;
        let source = from.join(name);
        let Ok(metadata) = std::fs::symlink_metadata(&source) else {
            continue;
        };
        let destination = to.join(name);
        std::fs::create_dir_all(destination.parent().context("a path with a parent")?)?;
        if metadata.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&source)?, &destination)?;
        } else if metadata.is_file() {
            std::fs::copy(&source, &destination)?;
        }
    }
    if from.join("Cargo.lock").is_file() {
        std::fs::copy(from.join("Cargo.lock"), to.join("Cargo.lock"))?;
    }
    Ok(())
}

/// diffoscope when installed, else kiln's own archive diff for initramfs files.
fn explain(executable: &Path, a: &Path, b: &Path) {
    let diffoscope = Command::new("diffoscope")
        .arg("--text")
        .arg("-")
        .arg("--max-text-report-size")
        .arg("200000")
        .arg(a)
        .arg(b)
        .output();
    match diffoscope {
        Ok(output) if output.status.code() == Some(1) => {
            eprintln!(
                "diffoscope {} {}:\n{}",
                a.display(),
                b.display(),
                String::from_utf8_lossy(&output.stdout)
            );
        }
        _ => {
            let output = Command::new(executable).arg("diff").arg(a).arg(b).output();
            match output {
                Ok(output) => eprintln!(
                    "cargo xtask diff {} {}:\n{}{}",
                    a.display(),
                    b.display(),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
                Err(error) => eprintln!(
                    "cannot compare {} and {}: {error}",
                    a.display(),
                    b.display()
                ),
            }
        }
    }
}
