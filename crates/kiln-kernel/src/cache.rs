//! The `kernel/` namespace of kiln's cache directory (`$KILN_CACHE`, default
//! `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`).
//!
//! Seam: `kiln-store` will own `$KILN_CACHE` and hold kernel artifacts as OCI images; until
//! then this crate keeps plain directories under `$KILN_CACHE/kernel/`:
//! `artifacts/KEY/`, `sources/SHA256/`, `logs/KEY.log`, `tmp/` (work in progress).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct KernelCache {
    root: PathBuf,
}

impl KernelCache {
    /// A cache rooted at `kiln_cache/kernel`.
    pub fn new(kiln_cache: &Path) -> Self {
        KernelCache {
            root: kiln_cache.join("kernel"),
        }
    }

    /// `$KILN_CACHE`, else `$XDG_CACHE_HOME/kiln`, else `$HOME/.cache/kiln`.
    pub fn from_environment() -> Option<Self> {
        let kiln_cache = std::env::var_os("KILN_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|dir| PathBuf::from(dir).join("kiln"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|dir| PathBuf::from(dir).join(".cache/kiln"))
            })?;
        Some(Self::new(&kiln_cache))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn artifact_dir(&self, key: &str) -> PathBuf {
        self.root.join("artifacts").join(key)
    }

    pub fn source_dir(&self, sha256: &str) -> PathBuf {
        self.root.join("sources").join(sha256)
    }

    pub fn log_path(&self, key: &str) -> PathBuf {
        self.root.join("logs").join(format!("{key}.log"))
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh work directory under `tmp/`, named `LABEL-PID-N`, removed when the guard drops
    /// (failure or success). Directories of processes that no longer run (killed builds) are
    /// removed first.
    pub fn work_dir(&self, label: &str) -> std::io::Result<WorkDir> {
        let tmp = self.tmp_dir();
        std::fs::create_dir_all(&tmp)?;
        remove_stale_work_dirs(&tmp);
        let pid = std::process::id();
        for attempt in 0u32.. {
            let path = tmp.join(format!("{label}-{pid}-{attempt}"));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(WorkDir { path }),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            }
        }
        unreachable!("u32 ran out of work directory names")
    }
}

fn remove_stale_work_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (_attempt, pid) = (parts.next(), parts.next());
        let Some(pid) = pid.and_then(|pid| pid.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
