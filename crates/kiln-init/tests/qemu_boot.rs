//! A real boot: the musl kiln-init as `/init` of a newc initramfs with a static busybox, under
//! `qemu-system-x86_64 -nographic` (TCG: KVM is not relied on), waiting for the console
//! markers. Slow, so ignored by default:
//!
//! ```sh
//! KILN_QEMU_KERNEL=/path/to/vmlinuz cargo nextest run -p kiln-init --run-ignored only
//! ```
//!
//! Needs `qemu-system-x86_64`, GNU `cpio`, a static busybox (`KILN_QEMU_BUSYBOX`, default
//! `/bin/busybox` from Debian's busybox-static), the `x86_64-unknown-linux-musl` target, and
//! an x86_64 kernel with a serial console, devtmpfs and initramfs support: `KILN_QEMU_KERNEL`,
//! else Debian's (the `linux-image-*-amd64` that `linux-image-amd64` depends on, fetched once
//! with `apt-get download` from the host's apt sources into the test cache).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kernel() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_QEMU_KERNEL") {
        return PathBuf::from(path);
    }
    kiln_tests::qemu::debian_x86_64_kernel()
        .unwrap_or_else(|error| panic!("no kernel: set KILN_QEMU_KERNEL to an x86_64 vmlinuz, or let the test download Debian's: {error:#}"))
}

/// Builds the static init and returns its path.
fn build_static_init() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args([
            "build",
            "--package",
            "kiln-init",
            "--release",
            "--target",
            "x86_64-unknown-linux-musl",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(
        output.status.success(),
        "cargo build of the musl kiln-init failed"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "kiln-init")
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .next_back()
        .expect("cargo reported no kiln-init executable")
}

/// Writes the initramfs tree and packs it with GNU cpio (newc), entries sorted.
fn make_initramfs(directory: &Path, init: &Path, config: &str) -> PathBuf {
    let root = directory.join("root");
    for sub in ["bin", "etc/kiln", "dev", "proc", "sys", "run", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy(init, root.join("init")).unwrap();
    let busybox = std::env::var_os("KILN_QEMU_BUSYBOX").unwrap_or_else(|| "/bin/busybox".into());
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(root.join("etc/kiln/init.json"), config).unwrap();
    // The kernel opens /dev/console for init before anything is mounted; without root we
    // cannot make the node, and kiln-init copes (it opens it after mounting devtmpfs).
    let _ = Command::new("mknod")
        .args(["-m", "600"])
        .arg(root.join("dev/console"))
        .args(["c", "5", "1"])
        .status();
    let mut paths: Vec<String> = walk(&root, &root);
    paths.sort();
    let archive = directory.join("initramfs.cpio");
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&archive).unwrap())
        .spawn()
        .expect("run GNU cpio");
    cpio.stdin
        .take()
        .unwrap()
        .write_all(paths.join("\n").as_bytes())
        .unwrap();
    assert!(cpio.wait().unwrap().success());
    archive
}

fn walk(root: &Path, directory: &Path) -> Vec<String> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap().flatten() {
        let path = entry.path();
        paths.push(format!("./{}", path.strip_prefix(root).unwrap().display()));
        if entry.file_type().unwrap().is_dir() {
            paths.extend(walk(root, &path));
        }
    }
    paths
}

/// Boots, feeding the console through a QEMU monitor socket when `after_ready` is given, and
/// returns the console text when QEMU exits (power off or, with -no-reboot, reboot).
fn boot(directory: &Path, initramfs: &Path, append: &str, after_ready: Option<&str>) -> String {
    let monitor = directory.join("monitor.sock");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-nographic", "-no-reboot", "-m", "512", "-smp", "1"])
        .arg("-kernel")
        .arg(kernel())
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", append])
        .arg("-monitor")
        .arg(format!("unix:{},server,nowait", monitor.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run qemu-system-x86_64");
    let mut stdout = qemu.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(count) = stdout.read(&mut buffer) {
            if count == 0 || sender.send(buffer[..count].to_vec()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut console = Vec::new();
    let mut command_sent = false;
    // Kept open until QEMU exits: the monitor may drop a command whose connection closed.
    let mut monitor_connection = None;
    loop {
        match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(bytes) => console.extend_from_slice(&bytes),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        // Rendered as a terminal shows it (escapes, resets, `\r` handled), like every console
        // check of the suite: kiln_console.
        let text = kiln_console::render(&console);
        if let (Some(command), false) = (after_ready, command_sent) {
            if text.contains("kiln: ready") {
                std::thread::sleep(Duration::from_millis(500));
                let mut socket = std::os::unix::net::UnixStream::connect(&monitor).unwrap();
                socket.write_all(format!("{command}\n").as_bytes()).unwrap();
                socket.flush().unwrap();
                monitor_connection = Some(socket);
                command_sent = true;
            }
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            panic!("QEMU did not power off within 120 s; console:\n{text}");
        }
    }
    let _ = qemu.wait();
    drop(monitor_connection);
    kiln_console::render(&console)
}

/// Asserts that `needles` appear in `text` in this order.
fn assert_in_order(text: &str, needles: &[&str]) {
    let mut position = 0;
    for needle in needles {
        match text[position..].find(needle) {
            Some(found) => position += found + needle.len(),
            None => panic!("`{needle}` missing (or out of order) in console:\n{text}"),
        }
    }
}

const CONFIG: &str = r#"{
  "hostname": "kiln-qemu",
  "root": {"move_off_rootfs": MOVE_ROOT},
  "onboot": [
    {"name": "hello", "argv": ["/bin/busybox", "sh", "-c", "echo hello from $(/bin/busybox hostname); /bin/busybox mount | /bin/busybox grep -E ' / |cgroup2'"]},
    {"name": "no-network", "argv": ["/bin/busybox", "sh", "-c", "exit 1"]}
  ],
  "services": [
    {"name": "ticker", "argv": ["/bin/busybox", "sh", "-c", "while true; do echo tick; /bin/busybox sleep 1; done"]},
    {"name": "worker", "argv": ["/bin/busybox", "sh", "-c", ". /run/kiln/cmdline.env; echo worker_id=$worker_id; POWER"], "restart": "never", "after": ["ticker"]}
  ],
  "shutdown": [{"name": "goodbye", "argv": ["/bin/busybox", "sh", "-c", "echo bye; /bin/busybox tail -n 1 /var/log/ticker.log"]}],
  "stop_grace_ms": 2000
}"#;

#[test]
#[ignore = "slow: boots QEMU"]
fn boots_to_ready_and_powers_off_on_busybox_poweroff() {
    let directory = tempfile::tempdir().unwrap();
    let init = build_static_init();
    let config = CONFIG
        .replace("MOVE_ROOT", "false")
        .replace("POWER", "/bin/busybox sleep 2; /bin/busybox poweroff");
    let initramfs = make_initramfs(directory.path(), &init, &config);
    let console = boot(
        directory.path(),
        &initramfs,
        "console=ttyS0 quiet panic=-1 worker_id=\"de:ad:be:ef:fe:ed\"",
        None,
    );
    assert_in_order(
        &console,
        &[
            "kiln: kiln-init ",
            "[hello] hello from kiln-qemu",
            "[hello] cgroup2 on /sys/fs/cgroup type cgroup2",
            "kiln: onboot hello finished (exit 0, ",
            "kiln: onboot no-network failed (exit 1, ",
            "kiln: service ticker started (pid ",
            "kiln: service worker started (pid ",
            "kiln: ready\n",
            "[worker] worker_id=de:ad:be:ef:fe:ed",
            "kiln: shutdown requested (powering off)",
            "[goodbye] bye",
            "[goodbye] tick",
            "kiln: shutdown goodbye finished (exit 0, ",
            "kiln: service ticker stopped (signal 15)",
            "kiln: powering off\n",
        ],
    );
}

#[test]
#[ignore = "slow: boots QEMU"]
fn moves_root_off_rootfs_and_reboots_on_ctrl_alt_del() {
    let directory = tempfile::tempdir().unwrap();
    let init = build_static_init();
    let config = CONFIG
        .replace("MOVE_ROOT", "true")
        .replace("POWER", "/bin/busybox sleep 600");
    let initramfs = make_initramfs(directory.path(), &init, &config);
    let console = boot(
        directory.path(),
        &initramfs,
        "console=ttyS0 quiet panic=-1",
        Some("sendkey ctrl-alt-delete"),
    );
    assert_in_order(
        &console,
        &[
            "kiln: kiln-init ",
            "kiln: root moved off rootfs",
            "[hello] kiln-root on / type tmpfs",
            "kiln: ready\n",
            "kiln: shutdown requested (rebooting)",
            "kiln: service ticker stopped (signal 15)",
            "kiln: rebooting\n",
        ],
    );
}
