//! Digests kiln's own source for the image's identity (`KILN_SOURCE_DIGEST`).
//!
//! An image's build key (its `BUILD_ID=` and manifest `build_key`) must name the inputs
//! that define its bytes, kiln's code among them, and nothing about the machine or the
//! directory it was built in. The builder binary's bytes would do the first but not the
//! second (its debug info records the checkout path), so the key hashes the source the
//! builder is compiled from instead: the workspace's `Cargo.toml`, `Cargo.lock` and
//! `rust-toolchain.toml`, and of every crate (`crates/*`, `xtask`) its `Cargo.toml`,
//! `build.rs` and everything under `src/` but insta snapshots and hidden or backup files.
//! Paths are relative to the workspace, so every checkout of one commit gives one digest.
//! Tests, benchmarks and docs do not change what is built and are left out.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("kiln-assemble lives at crates/kiln-assemble")
        .to_path_buf();
    let mut files = Vec::new();
    for name in ["Cargo.toml", "Cargo.lock", "rust-toolchain.toml"] {
        files.push(workspace.join(name));
    }
    let mut crate_directories = vec![workspace.join("xtask")];
    let mut crates: Vec<PathBuf> = fs::read_dir(workspace.join("crates"))
        .expect("reading crates/")
        .map(|entry| entry.expect("reading crates/").path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    crate_directories.extend(crates);
    // A new crate changes the workspace's Cargo.lock, which is watched.
    for directory in &crate_directories {
        for name in ["Cargo.toml", "build.rs"] {
            let path = directory.join(name);
            if path.is_file() {
                files.push(path);
            }
        }
        let source = directory.join("src");
        println!("cargo:rerun-if-changed={}", source.display());
        collect(&source, &mut files);
    }
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let mut relative: Vec<(String, &PathBuf)> = files
        .iter()
        .map(|path| {
            let name = path
                .strip_prefix(&workspace)
                .expect("under the workspace")
                .to_str()
                .expect("kiln's source paths are UTF-8")
                .to_string();
            (name, path)
        })
        .collect();
    relative.sort();
    let mut hasher = Sha256::new();
    for (name, path) in relative {
        let contents =
            fs::read(path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(&contents);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    println!("cargo:rustc-env=KILN_SOURCE_DIGEST={digest}");
}

/// Every file below `directory` but snapshots, hidden files and editor backups.
fn collect(directory: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(directory) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("reading the source tree").path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        if name.starts_with('.') || name.ends_with('~') || name.ends_with(".snap") {
            continue;
        }
        if path.is_dir() {
            if name != "snapshots" {
                collect(&path, files);
            }
        } else if path.is_file() {
            files.push(path);
        }
    }
}
