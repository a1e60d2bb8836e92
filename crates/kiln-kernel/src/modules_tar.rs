//! Deterministic tar archives of a directory (installed modules, device trees): entries
//! sorted bytewise by path, parent directories explicit, mtime = the epoch, owner 0:0
//! with no names, permission bits kept, symlinks kept as symlinks. Nothing of the host
//! (umask aside from the recorded mode bits, mtimes, owners, readdir order) reaches the bytes.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What an entry is; the only input besides its path and contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File { size: u64 },
    Symlink,
}

/// The one function that decides an entry's metadata.
pub fn normalized_header(kind: EntryKind, mode: u32, epoch: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    let (entry_type, size) = match kind {
        EntryKind::Directory => (tar::EntryType::Directory, 0),
        EntryKind::File { size } => (tar::EntryType::Regular, size),
        EntryKind::Symlink => (tar::EntryType::Symlink, 0),
    };
    header.set_entry_type(entry_type);
    header.set_size(size);
    // `make modules_install` creates everything under the caller's umask (077 gives 0600
    // modules): only whether a file is executable is kept, as 0755 or 0644, so no umask
    // reaches the bytes. Directories are 0755.
    header.set_mode(match kind {
        EntryKind::Directory => 0o755,
        EntryKind::File { .. } if mode & 0o111 != 0 => 0o755,
        EntryKind::File { .. } => 0o644,
        EntryKind::Symlink => 0o777,
    });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(epoch);
    header
}

/// Writes every entry under `root` (not `root` itself) as a tar stream into `writer`.
pub fn write_tar<W: Write>(root: &Path, writer: W, epoch: u64) -> std::io::Result<W> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.map_err(std::io::Error::other)?;
        paths.push(
            entry
                .path()
                .strip_prefix(root)
                .map_err(std::io::Error::other)?
                .to_path_buf(),
        );
    }
    paths.sort_by(|left, right| {
        left.as_os_str()
            .as_encoded_bytes()
            .cmp(right.as_os_str().as_encoded_bytes())
    });
    let mut builder = tar::Builder::new(writer);
    for relative in paths {
        let full = root.join(&relative);
        let metadata = std::fs::symlink_metadata(&full)?;
        let mode = metadata.permissions().mode();
        let with_context = |error: std::io::Error| {
            std::io::Error::new(error.kind(), format!("{}: {error}", full.display()))
        };
        if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(&full)?;
            let mut header = normalized_header(EntryKind::Symlink, mode, epoch);
            builder
                .append_link(&mut header, &relative, &target)
                .map_err(with_context)?;
        } else if metadata.is_dir() {
            let mut header = normalized_header(EntryKind::Directory, mode, epoch);
            builder
                .append_data(&mut header, &relative, std::io::empty())
                .map_err(with_context)?;
        } else if metadata.is_file() {
            let mut header = normalized_header(
                EntryKind::File {
                    size: metadata.len(),
                },
                mode,
                epoch,
            );
            let file = std::fs::File::open(&full).map_err(with_context)?;
            builder
                .append_data(&mut header, &relative, file)
                .map_err(with_context)?;
        } else {
            return Err(std::io::Error::other(format!(
                "{}: not a file, directory or symlink; kiln does not pack device nodes here",
                full.display()
            )));
        }
    }
    builder.into_inner()
}

/// Writes the tar of `root` to `destination`.
pub fn write_tar_file(root: &Path, destination: &Path, epoch: u64) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(destination)?);
    let mut file = write_tar(root, file, epoch)?;
    file.flush()?;
    file.into_inner()
        .map_err(|error| error.into_error())?
        .sync_all()
}

/// `mode uid:gid mtime path[ -> target]` per entry: for tests and `kiln inspect`-style output.
pub fn list_entries(tar_bytes: &[u8]) -> std::io::Result<Vec<String>> {
    let mut archive = tar::Archive::new(tar_bytes);
    let mut lines = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let header = entry.header();
        let path = entry.path()?.display().to_string();
        let link = entry
            .link_name()?
            .map(|target| format!(" -> {}", target.display()))
            .unwrap_or_default();
        lines.push(format!(
            "{:o} {}:{} {} {}{}",
            header.mode()?,
            header.uid()?,
            header.gid()?,
            header.mtime()?,
            path,
            link
        ));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// The tree `make modules_install` leaves under umask 022, or (`umask_077`) under 077,
    /// created in the opposite order.
    fn populate(root: &Path, umask_077: bool) {
        let mut files = vec![
            (
                "lib/modules/6.1.0-kiln/kernel/drivers/net/ethernet/google/gve/gve.ko",
                0o644,
            ),
            ("lib/modules/6.1.0-kiln/modules.dep", 0o644),
            ("lib/modules/6.1.0-kiln/modules-extra/x.ko", 0o644),
            ("lib/modules/6.1.0-kiln/helper.sh", 0o755),
        ];
        if umask_077 {
            files.reverse();
            for (_, mode) in &mut files {
                *mode &= 0o700;
            }
        }
        for (path, mode) in files {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, path.as_bytes()).unwrap();
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        symlink(
            "kernel/drivers",
            root.join("lib/modules/6.1.0-kiln/drivers-link"),
        )
        .unwrap();
    }

    #[test]
    fn same_tree_from_different_directories_and_umasks_gives_same_bytes() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        populate(first.path(), false);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        populate(second.path(), true);
        let first_bytes = write_tar(first.path(), Vec::new(), 1_700_000_000).unwrap();
        let second_bytes = write_tar(second.path(), Vec::new(), 1_700_000_000).unwrap();
        assert_eq!(first_bytes, second_bytes);
        insta::assert_snapshot!(list_entries(&first_bytes).unwrap().join("\n"), @r#"
        755 0:0 1700000000 lib
        755 0:0 1700000000 lib/modules
        755 0:0 1700000000 lib/modules/6.1.0-kiln
        777 0:0 1700000000 lib/modules/6.1.0-kiln/drivers-link -> kernel/drivers
        755 0:0 1700000000 lib/modules/6.1.0-kiln/helper.sh
        755 0:0 1700000000 lib/modules/6.1.0-kiln/kernel
        755 0:0 1700000000 lib/modules/6.1.0-kiln/kernel/drivers
        755 0:0 1700000000 lib/modules/6.1.0-kiln/kernel/drivers/net
        755 0:0 1700000000 lib/modules/6.1.0-kiln/kernel/drivers/net/ethernet
        755 0:0 1700000000 lib/modules/6.1.0-kiln/kernel/drivers/net/ethernet/google
        755 0:0 1700000000 lib/modules/6.1.0-kiln/kernel/drivers/net/ethernet/google/gve
        644 0:0 1700000000 lib/modules/6.1.0-kiln/kernel/drivers/net/ethernet/google/gve/gve.ko
        755 0:0 1700000000 lib/modules/6.1.0-kiln/modules-extra
        644 0:0 1700000000 lib/modules/6.1.0-kiln/modules-extra/x.ko
        644 0:0 1700000000 lib/modules/6.1.0-kiln/modules.dep
        "#);
    }
}
