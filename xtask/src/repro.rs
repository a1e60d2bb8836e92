//! `cargo xtask repro`: the reproducibility gate. Builds each architecture's image twice, by
//! two builders that share nothing but the toolchain and the crate registry, and compares
//! every output; on a mismatch it names each differing file and its first differing field
//! (for the initramfs, per entry: path, mode, owner, mtime, size, contents) and runs
//! diffoscope on it when installed.
//!
//! Build A: this builder, this checkout, the default (warm) store and kernel cache,
//! umask 022, TZ=UTC, LANG=C, the host's name, as many jobs as CPUs.
//!
//! Build B, what reprotest would vary, as far as a root build here allows:
//! * another checkout: the working tree copied to a deeper path, seen through disorderfs
//!   (FUSE), which shuffles the order directory listings come in;
//! * another builder: xtask compiled from scratch from that checkout, in its own target
//!   directory, so the builder binary's bytes differ (its debug info records the path);
//! * an empty store and kernel cache: every Debian package fetched again and the kernel
//!   built again (`make` in another directory, another job count);
//! * another HOME, USER and LOGNAME, umask 077, TZ=Pacific/Chatham, LC_ALL=C.UTF-8 and
//!   LANG=de_DE.UTF-8, another host name (a UTS namespace), 3 jobs and zstd workers;
//! * the clock: B runs minutes after A; nothing kiln writes reads it (SOURCE_DATE_EPOCH).
//!
//! Not varied: the user id (apt and the shared cargo registry need root here) and the
//! toolchain (pinned by rust-toolchain.toml: a different compiler is a different input).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target architecture, x86_64 or aarch64; repeat for both (one builder B serves all).
    #[arg(long = "arch", required = true)]
    arches: Vec<String>,
    /// The profile.
    #[arg(long, default_value = "hook")]
    profile: String,
    /// Keep the work directory (printed) instead of deleting it.
    #[arg(long)]
    keep: bool,
}

/// Host name build B runs under (in its own UTS namespace).
const HOSTNAME_B: &str = "kiln-repro-b";

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let workspace = crate::epoch::workspace_root();
    let executable = std::env::current_exe().context("locating the xtask binary")?;
    ensure_tools()?;
    let work = tempfile::Builder::new()
        .prefix("kiln-repro-")
        .tempdir()
        .context("creating a temporary directory")?;
    let work_path = if args.keep {
        work.keep()
    } else {
        work.path().to_path_buf()
    };
    let logs = work_path.join("logs");
    std::fs::create_dir_all(&logs)?;
    let total = 2 * args.arches.len() + 2;
    let mut step = 0;
    let mut next_step = |what: &str| {
        step += 1;
        eprintln!("[{step}/{total}] {what}");
    };

    let mut directories_a = Vec::new();
    for arch in &args.arches {
        next_step(&format!(
            "build A {arch}: this builder and checkout, warm store, umask 022, TZ=UTC, LANG=C"
        ));
        let out = work_path.join("a/out").join(arch);
        // A installs what the builds need (Debian packages, rustup targets); B skips that.
        let mut build = Command::new(&executable);
        build.args(image_arguments(arch, &args.profile, &workspace, &out));
        build.env("TZ", "UTC").env("LANG", "C").env_remove("LC_ALL");
        set_umask(&mut build, 0o022);
        run_logged(&mut build, &logs.join(format!("a-{arch}.log")))?;
        directories_a.push(output_directory(&out)?);
    }

    next_step("checkout B: the working tree at another path, through disorderfs");
    let real_checkout = work_path.join("b/checkout");
    copy_checkout(&workspace, &real_checkout)?;
    // As `git clone` under umask 077 leaves it: nothing readable by group or others.
    restrict_to_owner(&real_checkout)?;
    let checkout_b = work_path.join("b/some/other/path/kiln");
    let _disorder = DisorderMount::mount(&real_checkout, &checkout_b)?;
    let b = Environment::b(&work_path.join("b"));

    next_step("builder B: xtask compiled from scratch in its own target directory");
    let mut compile = b.command("cargo");
    compile
        .args(["build", "--package", "xtask"])
        .current_dir(&checkout_b);
    run_logged(&mut compile, &logs.join("b-builder.log"))?;
    let builder_b = b.target_dir.join("debug/xtask");
    if !builder_b.is_file() {
        bail!("cargo built xtask but {} is not there", builder_b.display());
    }
    if std::fs::read(&builder_b)? == std::fs::read(&executable)? {
        bail!("builder B is byte-identical to builder A: the gate would not test a second builder");
    }

    let mut directories_b = Vec::new();
    for arch in &args.arches {
        next_step(&format!(
            "build B {arch}: builder B, empty store, its own kernel build, umask 077, TZ=Pacific/Chatham, LC_ALL=C.UTF-8, host {HOSTNAME_B}, 3 jobs"
        ));
        let out = work_path.join("b/out").join(arch);
        let mut build = b.command(&builder_b.to_string_lossy());
        build.args(image_arguments(arch, &args.profile, &checkout_b, &out));
        build.arg("--no-setup");
        build.args(["--jobs", "3"]);
        run_logged(&mut build, &logs.join(format!("b-{arch}.log")))?;
        directories_b.push(output_directory(&out)?);
    }

    let mut failed = false;
    for ((arch, directory_a), directory_b) in
        args.arches.iter().zip(&directories_a).zip(&directories_b)
    {
        let differing = compare_directories(directory_a, directory_b)?;
        let sums = std::fs::read_to_string(directory_a.join("SHA256SUMS"))?;
        if differing.is_empty() {
            print!("{sums}");
            println!(
                "reproducible: {} {arch} built twice, every output identical",
                args.profile
            );
            continue;
        }
        failed = true;
        println!(
            "NOT reproducible: {} {arch}: {} differ",
            args.profile,
            differing.join(", ")
        );
        for name in &differing {
            explain(&directory_a.join(name), &directory_b.join(name), name);
        }
    }
    if failed {
        if !args.keep {
            eprintln!(
                "(re-run with --keep to keep both builds; logs were in {})",
                logs.display()
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    if args.keep {
        eprintln!("kept: {}", work_path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The tools B needs that a fresh machine may lack: installed through apt as root.
fn ensure_tools() -> anyhow::Result<()> {
    crate::host::ensure_debian_packages(&[
        ("disorderfs", "shuffled directory order for repro's build B"),
        ("fuse3", "mounting disorderfs (fusermount3)"),
        (
            "util-linux",
            "unshare: repro's build B in its own UTS namespace",
        ),
    ])
}

/// The environment of build B: nothing of the caller's but PATH and where the toolchain
/// and the crate registry live.
struct Environment {
    home: PathBuf,
    cache: PathBuf,
    target_dir: PathBuf,
    cargo_home: PathBuf,
    rustup_home: PathBuf,
}

impl Environment {
    fn b(root: &Path) -> Environment {
        let caller_home =
            std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        Environment {
            home: root.join("home"),
            cache: root.join("cache"),
            target_dir: root.join("target"),
            cargo_home: std::env::var_os("CARGO_HOME")
                .map_or_else(|| caller_home.join(".cargo"), PathBuf::from),
            rustup_home: std::env::var_os("RUSTUP_HOME")
                .map_or_else(|| caller_home.join(".rustup"), PathBuf::from),
        }
    }

    /// `program` in B's conditions: its own UTS namespace and host name, umask 077.
    fn command(&self, program: &str) -> Command {
        let _ = std::fs::create_dir_all(&self.home);
        let mut command = Command::new("unshare");
        command
            .args([
                "--uts",
                "sh",
                "-c",
                "hostname \"$0\" && exec \"$@\"",
                HOSTNAME_B,
            ])
            .arg(program);
        command.env_clear();
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        command
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("USER", "kiln-repro-b")
            .env("LOGNAME", "kiln-repro-b")
            .env("CARGO_HOME", &self.cargo_home)
            .env("RUSTUP_HOME", &self.rustup_home)
            .env("KILN_CACHE", &self.cache)
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .env("TZ", "Pacific/Chatham")
            .env("LANG", "de_DE.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("CARGO_TERM_COLOR", "never");
        set_umask(&mut command, 0o077);
        command
    }
}

/// `--root`'s checkout seen through disorderfs at another path; unmounted when dropped.
struct DisorderMount {
    mount_point: PathBuf,
}

impl DisorderMount {
    fn mount(source: &Path, mount_point: &Path) -> anyhow::Result<DisorderMount> {
        std::fs::create_dir_all(mount_point)?;
        let output = Command::new("disorderfs")
            .arg("--shuffle-dirents=yes")
            .arg(source)
            .arg(mount_point)
            .output()
            .context("running disorderfs (apt-get install disorderfs fuse3)")?;
        if !output.status.success() {
            bail!(
                "disorderfs {} {} failed ({}): {}{}",
                source.display(),
                mount_point.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(DisorderMount {
            mount_point: mount_point.to_path_buf(),
        })
    }
}

impl Drop for DisorderMount {
    fn drop(&mut self) {
        let unmounted = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mount_point)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mount_point)
                .status();
        }
    }
}

fn image_arguments(arch: &str, profile: &str, root: &Path, out: &Path) -> Vec<std::ffi::OsString> {
    let mut arguments: Vec<std::ffi::OsString> =
        ["image", "--arch", arch, "--profile", profile, "--root"]
            .iter()
            .map(Into::into)
            .collect();
    arguments.push(root.into());
    arguments.push("--out".into());
    arguments.push(out.into());
    arguments
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

/// Runs a build with its output in `log`, saying every minute that it still runs; on
/// failure, the last 40 lines of the log.
fn run_logged(command: &mut Command, log: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut last_note = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if last_note.elapsed() >= Duration::from_secs(60) {
            last_note = Instant::now();
            let last_line = std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .map(|line| line.trim().chars().take(100).collect::<String>())
                .unwrap_or_default();
            eprintln!(
                "      … {:.0} min: {last_line}",
                started.elapsed().as_secs_f64() / 60.0
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{} failed ({status}); last lines of {}:\n{}",
            command.get_program().to_string_lossy(),
            log.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    eprintln!(
        "      done in {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    let _ = std::io::stderr().flush();
    Ok(())
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

/// Names of the outputs whose SHA256SUMS lines differ (or that only one build has).
fn compare_directories(a: &Path, b: &Path) -> anyhow::Result<Vec<String>> {
    let sums = |directory: &Path| -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        let text = std::fs::read_to_string(directory.join("SHA256SUMS"))
            .with_context(|| format!("reading {}/SHA256SUMS", directory.display()))?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once("  "))
            .map(|(digest, name)| (name.to_owned(), digest.to_owned()))
            .collect())
    };
    let (sums_a, sums_b) = (sums(a)?, sums(b)?);
    let mut names: Vec<&String> = sums_a.keys().chain(sums_b.keys()).collect();
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .filter(|name| sums_a.get(*name) != sums_b.get(*name))
        .cloned()
        .collect())
}

/// Where two outputs first differ: per entry for an initramfs, else the first differing
/// byte (and line, for text); then diffoscope's report when it is installed.
fn explain(a: &Path, b: &Path, name: &str) {
    let (Ok(bytes_a), Ok(bytes_b)) = (std::fs::read(a), std::fs::read(b)) else {
        println!("  {name}: only one build wrote it");
        return;
    };
    if name.starts_with("initramfs-") {
        match kiln_archive::compare_initramfs(&bytes_a, &bytes_b, ("A", "B")) {
            Ok(comparison) => {
                for finding in comparison.findings {
                    println!("  {name}: {finding}");
                }
            }
            Err(error) => println!("  {name}: cannot read as an initramfs: {error}"),
        }
    } else {
        println!("  {name}: {}", first_difference(&bytes_a, &bytes_b));
    }
    if let Ok(output) = Command::new("diffoscope")
        .args(["--text", "-", "--max-text-report-size", "200000"])
        .arg(a)
        .arg(b)
        .output()
    {
        if output.status.code() == Some(1) {
            println!(
                "diffoscope {name}:\n{}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
    }
}

/// The first byte at which `a` and `b` differ, with the line around it when both are text.
pub fn first_difference(a: &[u8], b: &[u8]) -> String {
    let offset = a
        .iter()
        .zip(b)
        .position(|(left, right)| left != right)
        .unwrap_or(a.len().min(b.len()));
    let sizes = format!("A {} bytes, B {} bytes", a.len(), b.len());
    if offset == a.len() && offset == b.len() {
        return format!("identical ({sizes})");
    }
    match (std::str::from_utf8(a), std::str::from_utf8(b)) {
        (Ok(text_a), Ok(text_b)) => {
            let line = text_a[..offset].matches('\n').count() + 1;
            let line_of = |text: &str| text.lines().nth(line - 1).unwrap_or("").to_owned();
            format!(
                "first difference at byte {offset}, line {line} ({sizes}): A `{}`, B `{}`",
                line_of(text_a),
                line_of(text_b)
            )
        }
        _ => format!(
            "first difference at byte {offset} ({sizes}): A {:02x?}, B {:02x?}",
            &a[offset..a.len().min(offset + 8)],
            &b[offset..b.len().min(offset + 8)]
        ),
    }
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

/// Clears the group and other bits of everything below `root`, as a clone made under
/// umask 077 has them.
fn restrict_to_owner(root: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory)? {
            let path = entry?.path();
            let metadata = std::fs::symlink_metadata(&path)?;
            if metadata.file_type().is_symlink() {
                continue;
            }
            if metadata.is_dir() {
                stack.push(path.clone());
            }
            let mode = metadata.permissions().mode() & 0o700;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_difference_names_the_line_of_text_and_the_bytes_of_binary() {
        let a = b"NAME=\"kiln\"\nBUILD_ID=2ca333e1000b6185\nKILN_ARCH=x86_64\n";
        let b = b"NAME=\"kiln\"\nBUILD_ID=989afd64f8532b12\nKILN_ARCH=x86_64\n";
        assert_eq!(
            first_difference(a, b),
            "first difference at byte 21, line 2 (A 55 bytes, B 55 bytes): A `BUILD_ID=2ca333e1000b6185`, B `BUILD_ID=989afd64f8532b12`"
        );
        assert_eq!(
            first_difference(&[0x1f, 0x8b, 0, 0xff], &[0x1f, 0x8b, 1]),
            "first difference at byte 2 (A 4 bytes, B 3 bytes): A [00, ff], B [01]"
        );
        assert_eq!(
            first_difference(b"same", b"same"),
            "identical (A 4 bytes, B 4 bytes)"
        );
    }
}
