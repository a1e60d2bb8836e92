//! Booting a kernel with an initramfs in QEMU (TCG: KVM on these machines is
//! unreliable) and reading its serial console.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{run, test_cache_dir};

/// A Debian prebuilt kernel for x86_64 (the version `linux-image-amd64`
/// depends on, from the host's configured apt sources), downloaded once
/// into the test cache. Returns the path of its `vmlinuz`.
pub fn debian_x86_64_kernel() -> anyhow::Result<PathBuf> {
    let cache = test_cache_dir("debian-kernel-amd64");
    let depends = String::from_utf8(
        run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?.stdout,
    )?;
    let package = depends
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .find(|name| name.starts_with("linux-image-") && name.ends_with("-amd64"))
        .with_context(|| {
            format!("no versioned linux-image in `apt-cache depends linux-image-amd64`:\n{depends}")
        })?
        .to_string();
    let vmlinuz = cache.join(format!("{package}.vmlinuz"));
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    let download = tempfile::tempdir_in(&cache)?;
    run(Command::new("apt-get")
        .current_dir(download.path())
        .args(["download", &package]))?;
    let deb = fs::read_dir(download.path())?
        .filter_map(Result::ok)
        .map(|item| item.path())
        .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
        .context("apt-get download left no .deb")?;
    let extract = download.path().join("root");
    fs::create_dir(&extract)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extract))?;
    let boot = extract.join("boot");
    let image = fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|item| item.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no /boot/vmlinuz-*")?;
    // Tests run in parallel and may all download at once: each copies into its own temporary
    // file and renames it over the name (atomic; the bytes are the same package's).
    let partial = tempfile::NamedTempFile::new_in(&cache)?;
    fs::copy(&image, partial.path())?;
    partial.persist(&vmlinuz)?;
    Ok(vmlinuz)
}

/// What a boot printed and how long it took.
#[derive(Debug)]
pub struct BootLog {
    pub console: String,
    pub elapsed: Duration,
    pub marker_seen: bool,
}

impl BootLog {
    /// The last `count` lines of the console, for failure messages.
    pub fn tail(&self, count: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }
}

/// Boots `kernel` + `initramfs` on qemu-system-x86_64 under TCG with the
/// serial console on stdout, until QEMU exits (the init powers off) or
/// `timeout` passes (QEMU is then killed). Reports whether `marker` appeared.
pub fn boot_x86_64(
    kernel: &Path,
    initramfs: &Path,
    append: &str,
    marker: &str,
    timeout: Duration,
) -> anyhow::Result<BootLog> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let started = Instant::now();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut console = Vec::new();
        let _ = stdout.read_to_end(&mut console);
        console
    });
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    // Rendered as a terminal shows it (no `\r`, escape sequences or backspaces), as every
    // console check of the suite reads it: see kiln_smoke::console.
    let console = kiln_smoke::console::render(&reader.join().unwrap());
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if console.is_empty() && !stderr.is_empty() {
        bail!("qemu printed nothing on the console; its stderr:\n{stderr}");
    }
    Ok(BootLog {
        marker_seen: console.contains(marker),
        console,
        elapsed,
    })
}
