//! kiln-image: what an image build leaves in `out/<profile>/`, written
//! deterministically and all at once.
//!
//! ```text
//! out/<profile>/
//!   vmlinuz-<arch>            the kernel image
//!   initramfs-<arch>          the zstd initramfs (microcode segment first, if any)
//!   cmdline                   the kernel command line, one line
//!   boot.ipxe                 an iPXE script loading the two files next to it
//!   <profile>_<arch>.tar.gz   vmlinuz + initramfs, the tarball a Tinkerbell stack serves
//!   manifest.json             every input with its digest, every file of the initramfs
//!   SHA256SUMS                sha256 of every file above, `sha256sum -c` format
//! ```
//!
//! File names follow Hook's (`vmlinuz-x86_64`, `initramfs-x86_64`,
//! `hook_x86_64.tar.gz`), so an existing Tinkerbell stack serves kiln's
//! outputs unchanged.
//!
//! **Architecture Invariant:** the output directory appears complete or not
//! at all: everything is written into a temporary directory beside it, synced,
//! and renamed into place (a previous output is replaced only after the new one
//! is complete). Test: `outputs.rs::a_failed_build_keeps_the_previous_outputs`.
//!
//! **Architecture Invariant:** the tar.gz depends only on the two files and
//! the epoch: fixed headers (0:0, mode 0644, mtime = epoch, no user or group
//! names), a gzip header without time or file name, a fixed compression level
//! in a pure-Rust deflate (miniz_oxide: no system zlib version reaches the
//! bytes). Test: `outputs.rs::the_tarball_is_identical_in_different_conditions`.
//!
//! It spawns no process and does no network; it is handed bytes and paths.

pub mod init_binary;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The architectures images are built for, with the names outputs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageArch {
    X86_64,
    Aarch64,
}

impl ImageArch {
    /// `x86_64`/`amd64` or `aarch64`/`arm64`, as a command line gives it.
    pub fn parse(text: &str) -> Result<ImageArch, String> {
        match text {
            "x86_64" | "amd64" => Ok(ImageArch::X86_64),
            "aarch64" | "arm64" => Ok(ImageArch::Aarch64),
            other => Err(format!(
                "unknown architecture `{other}`: use x86_64 or aarch64"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ImageArch::X86_64 => "x86_64",
            ImageArch::Aarch64 => "aarch64",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("output name {name:?} is not a plain file name (letters, digits, `-`, `_`, `.`)")]
    BadName { name: String },
    #[error("the kernel command line contains a newline; give it as one line")]
    MultilineCmdline,
}

fn io_error<'path>(
    action: &'static str,
    path: &'path Path,
) -> impl FnOnce(io::Error) -> OutputError + 'path {
    move |source| OutputError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// One pinned input, as `manifest.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestInput {
    /// `debian-package`, `tarball`, `oci-image`, `kernel`, `toolchain`, ...
    pub kind: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// Which module(s) pulled it in.
    pub required_by: Vec<String>,
}

/// Everything `manifest.json` says beyond the output digests.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest<F: Serialize> {
    pub profile: String,
    /// sha256 over every input of the build (lock, catalog files, kernel, init binary,
    /// builder, settings): equal keys mean the outputs are already right.
    pub build_key: String,
    pub arch: ImageArch,
    pub source_date_epoch: u32,
    pub kernel_cmdline: String,
    pub inputs: Vec<ManifestInput>,
    /// Bytes of file data per module in the initramfs.
    pub module_sizes: BTreeMap<String, u64>,
    /// Every path of the initramfs with its size, mode, sha256 and module.
    pub files: Vec<F>,
}

/// What `write_outputs` is given.
#[derive(Debug)]
pub struct OutputRequest<'a, F: Serialize> {
    /// `out/<profile>`: created, or replaced as a whole.
    pub directory: &'a Path,
    pub profile: &'a str,
    pub arch: ImageArch,
    pub kernel_image: &'a Path,
    pub initramfs: &'a Path,
    pub cmdline: &'a str,
    pub manifest: &'a Manifest<F>,
}

/// The names and digests of what was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenOutputs {
    pub directory: PathBuf,
    /// File name → sha256, the contents of SHA256SUMS.
    pub sha256sums: BTreeMap<String, String>,
}

pub fn kernel_file_name(arch: ImageArch) -> String {
    format!("vmlinuz-{}", arch.name())
}

pub fn initramfs_file_name(arch: ImageArch) -> String {
    format!("initramfs-{}", arch.name())
}

pub fn tarball_file_name(profile: &str, arch: ImageArch) -> String {
    format!("{profile}_{}.tar.gz", arch.name())
}

/// The iPXE script: paths are relative, so iPXE fetches the files from
/// wherever it fetched the script (TFTP or HTTP).
pub fn boot_ipxe(arch: ImageArch, cmdline: &str) -> String {
    let kernel = kernel_file_name(arch);
    let initramfs = initramfs_file_name(arch);
    format!("#!ipxe\n\nkernel {kernel} initrd={initramfs} {cmdline}\ninitrd {initramfs}\nboot\n")
}

/// Writes every output into `request.directory`, atomically as a whole.
pub fn write_outputs<F: Serialize>(
    request: &OutputRequest<'_, F>,
    epoch: u32,
) -> Result<WrittenOutputs, OutputError> {
    if request.cmdline.contains('\n') {
        return Err(OutputError::MultilineCmdline);
    }
    check_file_name(request.profile)?;
    let directory = request.directory;
    let parent = match directory.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_error("creating", &parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".kiln-outputs-")
        .tempdir_in(&parent)
        .map_err(io_error("creating a temporary directory in", &parent))?;
    let stage = staging.path();
    fs::set_permissions(stage, fs::Permissions::from_mode(0o755))
        .map_err(io_error("setting the mode of", stage))?;

    let kernel_name = kernel_file_name(request.arch);
    let initramfs_name = initramfs_file_name(request.arch);
    copy_file(request.kernel_image, &stage.join(&kernel_name))?;
    copy_file(request.initramfs, &stage.join(&initramfs_name))?;
    write_file(
        &stage.join("cmdline"),
        format!("{}\n", request.cmdline).as_bytes(),
    )?;
    write_file(
        &stage.join("boot.ipxe"),
        boot_ipxe(request.arch, request.cmdline).as_bytes(),
    )?;
    let tarball_name = tarball_file_name(request.profile, request.arch);
    let tarball = deterministic_tar_gz(
        &[
            (kernel_name.as_str(), &stage.join(&kernel_name)),
            (initramfs_name.as_str(), &stage.join(&initramfs_name)),
        ],
        epoch,
    )?;
    write_file(&stage.join(&tarball_name), &tarball)?;
    let mut manifest_json =
        serde_json::to_vec_pretty(request.manifest).expect("manifest serialises");
    manifest_json.push(b'\n');
    write_file(&stage.join("manifest.json"), &manifest_json)?;

    let mut sha256sums = BTreeMap::new();
    for name in [
        &kernel_name,
        &initramfs_name,
        &"cmdline".to_string(),
        &"boot.ipxe".to_string(),
        &tarball_name,
        &"manifest.json".to_string(),
    ] {
        let bytes = fs::read(stage.join(name)).map_err(io_error("reading", &stage.join(name)))?;
        sha256sums.insert(name.clone(), hex::encode(Sha256::digest(&bytes)));
    }
    let sums_text: String = sha256sums
        .iter()
        .map(|(name, digest)| format!("{digest}  {name}\n"))
        .collect();
    write_file(&stage.join("SHA256SUMS"), sums_text.as_bytes())?;
    fs::File::open(stage)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("syncing", stage))?;

    // Publish: move an old directory aside, rename the new one in, then delete the old.
    let staged = staging.keep();
    let previous = parent.join(format!(
        ".kiln-previous-{}",
        directory
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = fs::remove_dir_all(&previous);
    let had_previous = directory.exists();
    if had_previous {
        fs::rename(directory, &previous).map_err(io_error("moving aside", directory))?;
    }
    if let Err(source) = fs::rename(&staged, directory) {
        if had_previous {
            let _ = fs::rename(&previous, directory);
        }
        let _ = fs::remove_dir_all(&staged);
        return Err(OutputError::Io {
            action: "renaming the finished outputs to",
            path: directory.display().to_string(),
            source,
        });
    }
    if had_previous {
        let _ = fs::remove_dir_all(&previous);
    }
    if let Ok(handle) = fs::File::open(&parent) {
        let _ = handle.sync_all();
    }
    Ok(WrittenOutputs {
        directory: directory.to_path_buf(),
        sha256sums,
    })
}

fn check_file_name(name: &str) -> Result<(), OutputError> {
    let fine = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.')
        });
    if fine {
        Ok(())
    } else {
        Err(OutputError::BadName {
            name: name.to_string(),
        })
    }
}

fn copy_file(from: &Path, to: &Path) -> Result<(), OutputError> {
    let bytes = fs::read(from).map_err(io_error("reading", from))?;
    write_file(to, &bytes)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let mut file = fs::File::create(path).map_err(io_error("creating", path))?;
    file.write_all(bytes).map_err(io_error("writing", path))?;
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(io_error("setting the mode of", path))?;
    file.sync_all().map_err(io_error("syncing", path))
}

/// A gzip-compressed tar of the given files (archive name, source path), in
/// the order given, with fixed metadata.
pub fn deterministic_tar_gz(files: &[(&str, &Path)], epoch: u32) -> Result<Vec<u8>, OutputError> {
    let encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::new(9));
    let mut builder = tar::Builder::new(encoder);
    builder.mode(tar::HeaderMode::Deterministic);
    for (name, source) in files {
        let bytes = fs::read(source).map_err(io_error("reading", source))?;
        let mut header = tar::Header::new_ustar();
        header
            .set_path(name)
            .map_err(io_error("naming a tar entry for", source))?;
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(u64::from(epoch));
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        builder
            .append(&header, &bytes[..])
            .map_err(io_error("archiving", source))?;
    }
    let encoder = builder.into_inner().map_err(|source| OutputError::Io {
        action: "finishing",
        path: "the tarball".into(),
        source,
    })?;
    encoder.finish().map_err(|source| OutputError::Io {
        action: "compressing",
        path: "the tarball".into(),
        source,
    })
}
