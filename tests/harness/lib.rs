//! Shared pieces of kiln's cross-crate integration tests: running the real
//! `cargo xtask` binary, fixture trees with every entry type, comparing
//! trees, and booting kernels in QEMU. Everything here drives real tools
//! (GNU cpio, apt, QEMU); nothing is mocked.

pub mod qemu;
pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A directory under the target dir for downloads and builds that tests
/// share across runs (kernels from apt, benchmark trees).
pub fn test_cache_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let directory = target.join("kiln-test-cache").join(name);
    fs::create_dir_all(&directory).unwrap();
    directory
}

/// The real `xtask` binary, built once per test process with the same cargo
/// that runs the tests.
pub fn xtask_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let output = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--package",
                "xtask",
                "--message-format=json",
            ])
            .output()
            .expect("running cargo build for xtask");
        assert!(
            output.status.success(),
            "building xtask failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let executable = stdout
            .lines()
            .filter(|line| {
                line.contains("\"executable\":\"") && line.contains("\"name\":\"xtask\"")
            })
            .filter_map(|line| {
                line.split("\"executable\":\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(PathBuf::from)
            })
            .last()
            .expect("cargo reported the xtask executable");
        executable
    })
}

/// A `Command` for `cargo xtask ARGS`, with a clean, explicit environment
/// so the host's variables only reach it when a test passes them.
pub fn xtask(arguments: &[&str]) -> Command {
    let mut command = Command::new(xtask_binary());
    command.args(arguments);
    command.env_clear();
    command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command.env(
        "HOME",
        std::env::var_os("HOME").unwrap_or_else(|| "/root".into()),
    );
    command
}

/// The kernel artifact directory of `arch` and `flavor`, from `cargo xtask kernel` (built
/// into the default cache if it is not there yet, which takes long).
pub fn kernel_artifact(arch: &str, flavor: &str) -> PathBuf {
    let output = run(&mut xtask(&["kernel", "--arch", arch, "--flavor", flavor])).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("artifact: "))
        .unwrap_or_else(|| panic!("no `artifact:` line in:\n{stdout}"));
    PathBuf::from(line.trim())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Creates a tree with every entry type under `root`: nested directories,
/// files of several sizes and modes (setuid, sticky directory, unreadable by
/// others), an empty file, symlinks (relative, absolute, dangling), a group
/// of three hard links, a FIFO and, as root, character and block devices and
/// files owned by other users. Modes are set with chmod, so the umask in
/// force does not change the tree. `reverse` creates the entries in the
/// opposite order, which changes directory enumeration order on most
/// filesystems.
pub fn make_fixture_tree(root: &Path, reverse: bool) -> anyhow::Result<()> {
    let mut steps: Vec<Box<dyn Fn(&Path) -> anyhow::Result<()>>> = vec![
        Box::new(|root| make_dir(root, "bin", 0o755)),
        Box::new(|root| make_dir(root, "etc/ssl/certs", 0o755)),
        Box::new(|root| make_dir(root, "tmp", 0o1777)),
        Box::new(|root| make_dir(root, "root", 0o700)),
        Box::new(|root| make_dir(root, "var/empty", 0o755)),
        Box::new(|root| make_file(root, "bin/tool", &pseudo_random_bytes(7, 300_000), 0o4755)),
        Box::new(|root| make_file(root, "etc/hostname", b"kiln\n", 0o644)),
        Box::new(|root| make_file(root, "etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640)),
        Box::new(|root| make_file(root, "etc/empty.conf", b"", 0o600)),
        Box::new(|root| {
            make_file(
                root,
                "etc/ssl/certs/ca.pem",
                &pseudo_random_bytes(3, 5_000),
                0o444,
            )
        }),
        Box::new(|root| make_file(root, "root/.profile", b"export PS1='# '\n", 0o600)),
        Box::new(|root| make_file(root, "a-b", b"sorts before a/b bytewise\n", 0o644)),
        Box::new(|root| make_file(root, "a/b", b"inside a\n", 0o644)),
        Box::new(|root| {
            symlink("tool", root.join("bin/sh"))?;
            symlink("/etc/hostname", root.join("etc/name-link"))?;
            symlink("../nowhere", root.join("etc/dangling"))?;
            Ok(())
        }),
        Box::new(|root| {
            make_file(root, "bin/multi", &pseudo_random_bytes(11, 70_000), 0o755)?;
            fs::hard_link(root.join("bin/multi"), root.join("bin/multi-a"))?;
            fs::hard_link(root.join("bin/multi"), root.join("etc/multi-b"))?;
            Ok(())
        }),
        Box::new(|root| make_special(root, "var/fifo", libc::S_IFIFO, 0o600, 0)),
    ];
    if is_root() {
        steps.push(Box::new(|root| {
            make_dir(root, "dev", 0o755)?;
            make_special(
                root,
                "dev/console",
                libc::S_IFCHR,
                0o600,
                libc::makedev(5, 1),
            )?;
            make_special(root, "dev/null", libc::S_IFCHR, 0o666, libc::makedev(1, 3))?;
            make_special(
                root,
                "dev/nvme0n1p300",
                libc::S_IFBLK,
                0o660,
                libc::makedev(259, 300),
            )?;
            Ok(())
        }));
        steps.push(Box::new(|root| {
            make_dir(root, "home/user", 0o750)?;
            make_file(root, "home/user/notes", b"owned by 1000\n", 0o640)?;
            chown(&root.join("home/user"), 1000, 1000)?;
            chown(&root.join("home/user/notes"), 1000, 100)?;
            Ok(())
        }));
    }
    if reverse {
        // Directories must still come before their contents.
        let (directories, rest): (Vec<_>, Vec<_>) = steps
            .into_iter()
            .enumerate()
            .partition(|(index, _)| *index < 5);
        for (_, step) in directories.into_iter().rev().chain(rest.into_iter().rev()) {
            step(root)?;
        }
    } else {
        for step in steps {
            step(root)?;
        }
    }
    Ok(())
}

fn make_dir(root: &Path, relative: &str, mode: u32) -> anyhow::Result<()> {
    let path = root.join(relative);
    fs::create_dir_all(&path)?;
    // Parents created on the way get an explicit mode too.
    let mut current = path.as_path();
    while current != root {
        let wanted = if current == path { mode } else { 0o755 };
        fs::set_permissions(current, fs::Permissions::from_mode(wanted))?;
        current = current.parent().unwrap();
    }
    Ok(())
}

fn make_file(root: &Path, relative: &str, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let path = root.join(relative);
    if let Some(parent) = path.parent() {
        if !parent.exists() {
            make_dir(root, parent.strip_prefix(root)?.to_str().unwrap(), 0o755)?;
        }
    }
    fs::write(&path, contents)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn make_special(
    root: &Path,
    relative: &str,
    kind: libc::mode_t,
    mode: u32,
    device: libc::dev_t,
) -> anyhow::Result<()> {
    let path = root.join(relative);
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated string that outlives the call.
    let result = unsafe { libc::mknod(c_path.as_ptr(), kind | 0o600, device) };
    if result != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mknod {}", path.display()));
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// Deterministic bytes: half text-like, half noise, so they compress somewhat.
pub fn pseudo_random_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = Vec::with_capacity(length);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let value = state.to_le_bytes();
        if state % 2 == 0 {
            bytes.extend_from_slice(b"provision ");
        } else {
            bytes.extend_from_slice(&value);
        }
    }
    bytes.truncate(length);
    bytes
}

/// What a tree looks like, path by path, for comparisons: everything that
/// an archive must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub sha256: Option<String>,
    pub symlink_target: Option<String>,
    pub device: Option<u64>,
    /// Other paths that share this file's inode, sorted.
    pub hard_links: Vec<String>,
    /// Regular files' and special files' mtime; directory and symlink
    /// mtimes are not restorable by every extractor, so left out.
    pub mtime: Option<i64>,
}

/// Reads a tree into path → facts (the root itself excluded).
pub fn tree_facts(root: &Path) -> anyhow::Result<BTreeMap<String, NodeFacts>> {
    let mut facts = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<String>> = HashMap::new();
    for item in walkdir::WalkDir::new(root).min_depth(1) {
        let item = item?;
        let relative = item
            .path()
            .strip_prefix(root)?
            .to_string_lossy()
            .into_owned();
        let metadata = fs::symlink_metadata(item.path())?;
        let file_type = metadata.file_type();
        let mut node = NodeFacts {
            kind: "other",
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            sha256: None,
            symlink_target: None,
            device: None,
            hard_links: Vec::new(),
            mtime: None,
        };
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_dir() {
            node.kind = "directory";
        } else if file_type.is_symlink() {
            node.kind = "symlink";
            node.mode = 0o777;
            node.symlink_target = Some(fs::read_link(item.path())?.to_string_lossy().into_owned());
        } else if file_type.is_file() {
            node.kind = "file";
            node.sha256 = Some(hex::encode(Sha256::digest(fs::read(item.path())?)));
            node.mtime = Some(metadata.mtime());
            if metadata.nlink() > 1 {
                inodes
                    .entry(metadata.ino())
                    .or_default()
                    .push(relative.clone());
            }
        } else if file_type.is_char_device() || file_type.is_block_device() {
            node.kind = if file_type.is_char_device() {
                "char-device"
            } else {
                "block-device"
            };
            node.device = Some(metadata.rdev());
            node.mtime = Some(metadata.mtime());
        } else if file_type.is_fifo() {
            node.kind = "fifo";
            node.mtime = Some(metadata.mtime());
        }
        facts.insert(relative, node);
    }
    for mut group in inodes.into_values() {
        group.sort();
        for path in &group {
            let others = group
                .iter()
                .filter(|other| *other != path)
                .cloned()
                .collect();
            facts.get_mut(path).unwrap().hard_links = others;
        }
    }
    Ok(facts)
}

/// Differences between two trees, one line each (empty when they match).
pub fn compare_trees(
    expected: &Path,
    actual: &Path,
    expected_mtime: Option<i64>,
) -> anyhow::Result<Vec<String>> {
    let mut want = tree_facts(expected)?;
    let got = tree_facts(actual)?;
    if let Some(mtime) = expected_mtime {
        for node in want.values_mut() {
            if node.mtime.is_some() {
                node.mtime = Some(mtime);
            }
        }
    }
    let mut differences = Vec::new();
    for (path, node) in &want {
        match got.get(path) {
            None => differences.push(format!("missing: {path}")),
            Some(other) if other != node => {
                differences.push(format!("{path}: expected {node:?}, got {other:?}"))
            }
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|path| !want.contains_key(*path)) {
        differences.push(format!("unexpected: {path}"));
    }
    Ok(differences)
}

/// Runs a command, failing with its output when it fails.
pub fn run(command: &mut Command) -> anyhow::Result<std::process::Output> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// A second checkout of this repository at `to`: the files git tracks or would track (so
/// uncommitted edits count), symlinks kept as symlinks, and `Cargo.lock`.
pub fn copy_checkout(to: &Path) -> anyhow::Result<()> {
    let files = run(Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(workspace_root()))?;
    for name in files
        .stdout
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
    {
        let name = std::str::from_utf8(name)?;
        let source = workspace_root().join(name);
        let Ok(metadata) = fs::symlink_metadata(&source) else {
            continue;
        };
        let destination = to.join(name);
        fs::create_dir_all(destination.parent().context("a path with a parent")?)?;
        if metadata.file_type().is_symlink() {
            symlink(fs::read_link(&source)?, &destination)?;
        } else if metadata.is_file() {
            fs::copy(&source, &destination)?;
        }
    }
    fs::copy(workspace_root().join("Cargo.lock"), to.join("Cargo.lock"))?;
    Ok(())
}
