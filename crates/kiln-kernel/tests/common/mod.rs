//! Shared by the slow kernel tests: the pinned source, a tiny initramfs, QEMU.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_kernel::{Arch, BuildRequest, Flavor, KernelArtifact, KernelSource};

/// The epoch every test build uses: kiln.lock's `source_date_epoch`, the one `cargo xtask
/// kernel` and `cargo xtask image` use, so an image build after the tests (or the tests after
/// an image build) finds the artifact in the cache. Test `the_test_epoch_is_the_lock_epoch`.
pub const TEST_EPOCH: u64 = 1_700_000_000;

/// kiln.lock's `source_date_epoch`.
pub fn lock_epoch() -> u64 {
    let text = std::fs::read_to_string(workspace_root().join("kiln.lock")).expect("read kiln.lock");
    let lock: serde_json::Value = serde_json::from_str(&text).expect("kiln.lock is JSON");
    lock["source_date_epoch"]
        .as_u64()
        .expect("kiln.lock has a numeric source_date_epoch")
}

/// LOCK SEAM: the kernel source the tests build. Once kiln.lock pins the tarball itself
/// (today it pins the linux-source-6.1 .deb that installs it), take path and digest from there.
pub fn kernel_source() -> KernelSource {
    let tarball = PathBuf::from(
        std::env::var("KILN_KERNEL_SOURCE")
            .unwrap_or_else(|_| "/usr/src/linux-source-6.1.tar.xz".to_string()),
    );
    assert!(
        tarball.is_file(),
        "{} is missing: apt-get install linux-source-6.1 (or `cargo xtask test` installs it)",
        tarball.display()
    );
    let sha256 = kiln_kernel::source::sha256_file(&tarball).expect("hash the kernel source");
    KernelSource { tarball, sha256 }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn request(arch: Arch, flavor: Flavor, config_dir: PathBuf) -> BuildRequest {
    BuildRequest {
        source: kernel_source(),
        arch,
        flavor,
        config_dir,
        source_date_epoch: TEST_EPOCH,
        jobs: std::thread::available_parallelism().map_or(2, usize::from),
    }
}

/// The artifact `cargo xtask kernel` builds (or finds in the cache) for `arch` and `flavor`:
/// from the source kiln.lock pins and its epoch, so it is the very kernel every image build
/// and smoke test uses, built once for the whole suite. (The host's `linux-source-6.1` may
/// be another Debian revision than the lock's, whose kernel would have another key and be
/// built a second time.)
pub fn locked_artifact(arch: Arch, flavor: Flavor) -> KernelArtifact {
    let directory = kiln_tests::kernel_artifact(arch.name(), flavor.name());
    KernelArtifact::load(&directory).expect("the artifact cargo xtask kernel named")
}

/// Builds `testdata/boot-init` for `arch` (musl, static, rust-lld) and returns the binary.
pub fn boot_init(arch: Arch) -> PathBuf {
    let triple = format!("{}-unknown-linux-musl", arch.name());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/boot-init/Cargo.toml");
    let target_dir = std::env::temp_dir().join("kiln-kernel-boot-init");
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            &triple,
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "building the boot init for {triple} failed: rustup target add {triple}"
    );
    target_dir
        .join(&triple)
        .join("release/kiln-kernel-boot-init")
}

/// A zstd newc initramfs: /dev/console (the kernel opens it for init's stdout) and /init.
pub fn initramfs(init: &Path, destination: &Path) {
    use kiln_archive::{
        ArchivePath, ArchiveTree, Compression, Content, Entry, EntryKind, InitramfsOptions,
        ZstdSettings,
    };
    let size = std::fs::metadata(init).unwrap().len();
    let console = Entry {
        path: ArchivePath::new("dev/console").unwrap(),
        permissions: 0o600,
        uid: 0,
        gid: 0,
        kind: EntryKind::CharDevice { major: 5, minor: 1 },
    };
    let tree = ArchiveTree::from_entries([
        Entry::directory(ArchivePath::new("dev").unwrap(), 0o755),
        console,
        Entry::file(
            ArchivePath::new("init").unwrap(),
            0o755,
            Content::File {
                path: init.to_path_buf(),
                size,
            },
        ),
    ])
    .unwrap();
    let options = InitramfsOptions {
        mtime: 1_700_000_000,
        compression: Compression::Zstd(ZstdSettings::new(19, 1).unwrap()),
        early: None,
    };
    kiln_archive::write_initramfs_file(&tree, &options, destination, &mut |_| {}).unwrap();
}

/// Boots `kernel` + `initramfs` under TCG (never KVM: it hangs on these machines) and
/// returns the serial output once QEMU exits or `timeout` passes.
pub fn boot(arch: Arch, kernel: &Path, initramfs: &Path, timeout: Duration) -> String {
    let mut command = match arch {
        Arch::X86_64 => {
            let mut command = Command::new("qemu-system-x86_64");
            // no_timer_check: under TCG on a loaded host the IO-APIC timer check can miss its
            // window and panic ("IO-APIC + timer doesn't work"); cloud images pass it too.
            command.args([
                "-M",
                "pc",
                "-append",
                "console=ttyS0 panic=-1 no_timer_check",
            ]);
            command
        }
        Arch::Aarch64 => {
            let mut command = Command::new("qemu-system-aarch64");
            command.args([
                "-M",
                "virt",
                "-cpu",
                "cortex-a57",
                "-append",
                "console=ttyAMA0 panic=-1",
            ]);
            command
        }
    };
    command
        .args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-display",
            "none",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .expect("qemu-system-* is installed (qemu-system-x86, qemu-system-arm)");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut output = Vec::new();
        let _ = stdout.read_to_end(&mut output);
        // As a terminal shows it, like every console check of the suite (kiln_console).
        kiln_console::render(&output)
    });
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    reader.join().unwrap()
}
