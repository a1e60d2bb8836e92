//! `cargo xtask lock --arch aarch64` on this amd64 host: it works without touching the
//! host's dpkg/apt configuration, the busybox-static pin it writes is exactly what the arm64
//! `Packages` index apt fetched says, and locking again is a no-op.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use kiln_lock::{Lock, TargetArch};

/// Every file under /etc/apt with its content, and dpkg's architecture list: what must not
/// change.
fn host_apt_configuration() -> (BTreeMap<String, Vec<u8>>, String) {
    let mut files = BTreeMap::new();
    for entry in walkdir::WalkDir::new("/etc/apt").into_iter().flatten() {
        if entry.file_type().is_file() {
            files.insert(
                entry.path().display().to_string(),
                std::fs::read(entry.path()).unwrap_or_default(),
            );
        }
    }
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .unwrap();
    (files, String::from_utf8_lossy(&foreign.stdout).into_owned())
}

/// The stanzas of `text` with `Package: name`, as field maps. Deliberately a separate,
/// naive reader, not kiln-fetch's parser: the test must not trust the code it checks.
fn stanzas_named(text: &str, name: &str) -> Vec<BTreeMap<String, String>> {
    text.split("\n\n")
        .map(|stanza| {
            stanza
                .lines()
                .filter(|line| !line.starts_with(' '))
                .filter_map(|line| {
                    line.split_once(": ")
                        .map(|(key, value)| (key.to_owned(), value.to_owned()))
                })
                .collect::<BTreeMap<_, _>>()
        })
        .filter(|fields| fields.get("Package").map(String::as_str) == Some(name))
        .collect()
}

#[test]
#[ignore = "slow: needs apt (apt-get update of the arm64 indexes from the host's mirror)"]
fn lock_aarch64_on_amd64_matches_the_archive_index() {
    let scratch = tempfile::tempdir().unwrap();
    let cache = scratch.path().join("cache");
    let lock_path = scratch.path().join("kiln.lock");
    // The repository's real `base` module, in a scratch catalog: the test must not depend on
    // modules other engineers are still writing.
    let repo = scratch.path().join("repo");
    std::fs::create_dir_all(repo.join("modules/base")).unwrap();
    std::fs::copy(
        kiln_tests::workspace_root().join("modules/base/module.yaml"),
        repo.join("modules/base/module.yaml"),
    )
    .unwrap();
    let host_before = host_apt_configuration();
    let run = || {
        let arguments = [
            "lock",
            "--arch",
            "aarch64",
            "--root",
            repo.to_str().unwrap(),
            "--lock",
            lock_path.to_str().unwrap(),
        ];
        let mut command = kiln_tests::xtask(&arguments);
        let output = command.env("KILN_CACHE", &cache).output().unwrap();
        assert!(
            output.status.success(),
            "xtask lock failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    run();
    let first_text = std::fs::read_to_string(&lock_path).unwrap();
    let lock = Lock::read(&lock_path).unwrap();
    let arm64 = lock.architecture(TargetArch::Aarch64).unwrap();
    assert_eq!(arm64.debian_architecture, "arm64");
    for pin in &arm64.debian_packages {
        assert!(
            pin.architecture == "arm64" || pin.architecture == "all",
            "{} is {}",
            pin.name,
            pin.architecture
        );
    }
    let busybox = lock
        .debian_package(TargetArch::Aarch64, "busybox-static")
        .expect("busybox-static pinned for aarch64");
    assert_eq!(busybox.required_by, ["module:base"]);

    // The Packages indexes apt fetched into kiln's private arm64 state, read with apt's own
    // helper (they are stored compressed).
    let lists = cache.join("state/apt-arm64/state/lists");
    let mut matches = Vec::new();
    let mut indexes = 0;
    for entry in std::fs::read_dir(&lists).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.contains("_binary-arm64_Packages") {
            continue;
        }
        indexes += 1;
        let text = Command::new("/usr/lib/apt/apt-helper")
            .arg("cat-file")
            .arg(entry.path())
            .output()
            .unwrap();
        assert!(text.status.success());
        matches.extend(stanzas_named(
            &String::from_utf8_lossy(&text.stdout),
            "busybox-static",
        ));
    }
    assert!(
        indexes > 0,
        "no arm64 Packages index under {}",
        lists.display()
    );
    let stanza = matches
        .iter()
        .find(|fields| fields["Version"] == busybox.version)
        .unwrap_or_else(|| {
            panic!(
                "no index stanza for busybox-static {}: {matches:?}",
                busybox.version
            )
        });
    assert_eq!(stanza["Architecture"], "arm64");
    assert_eq!(stanza["Filename"], busybox.filename);
    assert_eq!(stanza["SHA256"], busybox.sha256);
    assert_eq!(stanza["Size"], busybox.size.to_string());
    assert!(busybox.filename.ends_with("_arm64.deb"));

    // Re-locking with no upstream change is a no-op, byte for byte.
    let output = run();
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), first_text);
    assert!(String::from_utf8_lossy(&output.stderr).contains("is up to date"));

    // The host's apt configuration and dpkg architectures are untouched.
    assert_eq!(host_apt_configuration(), host_before);
    assert!(
        !Path::new("/var/lib/dpkg/arch").exists()
            || !std::fs::read_to_string("/var/lib/dpkg/arch")
                .unwrap_or_default()
                .contains("arm64")
    );
}
