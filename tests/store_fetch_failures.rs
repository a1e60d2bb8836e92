//! Failure modes of `cargo xtask fetch`, against the real apt and a real HTTP server on
//! 127.0.0.1: a digest mismatch, a truncated download, a package missing from the mirror
//! and a fetch killed with SIGKILL each leave the store as it was, print an error naming
//! the package, and the next run succeeds.
//!
//! Each test locks a one-module catalog with the real `cargo xtask lock` first, so the pins
//! are whatever the host's mirror carries today (never a stale hard-coded version).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kiln_lock::{Lock, TarballPin, TargetArch};
use kiln_store::Sha256Digest;
use sha2::Digest;

/// A scratch repository (one module), a scratch store, and the lock `xtask lock` wrote.
struct Scratch {
    directory: tempfile::TempDir,
}

impl Scratch {
    /// Locks a catalog whose only module names `packages` (kind `build`: no dependency
    /// closure, so exactly these packages are pinned) for x86_64.
    fn locked(packages: &[&str]) -> Scratch {
        let directory = tempfile::tempdir().unwrap();
        let module = directory.path().join("repo/modules/inputs");
        std::fs::create_dir_all(&module).unwrap();
        std::fs::write(
            module.join("module.yaml"),
            format!(
                "description: test inputs\nkind: build\nsources:\n  - debian: [{}]\n",
                packages.join(", ")
            ),
        )
        .unwrap();
        let scratch = Scratch { directory };
        let output = scratch.xtask(&[
            "lock",
            "--arch",
            "x86_64",
            "--root",
            scratch.repo().to_str().unwrap(),
            "--lock",
            scratch.lock_path().to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "xtask lock failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        scratch
    }

    fn repo(&self) -> PathBuf {
        self.directory.path().join("repo")
    }
    fn lock_path(&self) -> PathBuf {
        self.directory.path().join("kiln.lock")
    }
    fn cache(&self) -> PathBuf {
        self.directory.path().join("cache")
    }
    fn lock(&self) -> Lock {
        Lock::read(&self.lock_path()).unwrap()
    }

    fn command(&self, arguments: &[&str]) -> Command {
        let mut command = kiln_tests::xtask(arguments);
        command.env("KILN_CACHE", self.cache());
        command
    }

    fn xtask(&self, arguments: &[&str]) -> Output {
        self.command(arguments).output().unwrap()
    }

    /// `xtask fetch` with a lock file written from `lock`.
    fn fetch_with(&self, lock: &Lock, extra: &[&str]) -> Output {
        let path = self.directory.path().join("fetch.lock");
        lock.write(&path).unwrap();
        let mut arguments = vec!["fetch", "--lock", path.to_str().unwrap()];
        arguments.extend_from_slice(extra);
        self.xtask(&arguments)
    }

    /// Every blob in the store with its content hash (proves nothing half-written is there).
    fn blobs(&self) -> BTreeMap<String, String> {
        let mut blobs = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(self.cache().join("blobs/sha256")) else {
            return blobs;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let content_hash = hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()));
            blobs.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                content_hash,
            );
        }
        blobs
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_failed_naming(output: &Output, needles: &[&str]) {
    assert!(
        !output.status.success(),
        "expected failure, got success:\n{}",
        stderr(output)
    );
    for needle in needles {
        assert!(
            stderr(output).contains(needle),
            "stderr lacks `{needle}`:\n{}",
            stderr(output)
        );
    }
}

fn assert_fetch_succeeds_and_stores(scratch: &Scratch, lock: &Lock) {
    let output = scratch.fetch_with(lock, &[]);
    assert!(
        output.status.success(),
        "the next run failed:\n{}",
        stderr(&output)
    );
    let blobs = scratch.blobs();
    for pin in &lock
        .architecture(TargetArch::X86_64)
        .unwrap()
        .debian_packages
    {
        assert_eq!(
            blobs.get(&pin.sha256),
            Some(&pin.sha256),
            "{} not stored intact",
            pin.name
        );
    }
}

#[test]
#[ignore = "slow: needs apt (apt-get update and download from the host's mirror)"]
fn digest_mismatch_leaves_the_store_as_it_was() {
    let scratch = Scratch::locked(&["busybox-static"]);
    let good = scratch.lock();
    let mut bad = good.clone();
    let pin = &mut bad
        .architectures
        .get_mut(&TargetArch::X86_64)
        .unwrap()
        .debian_packages[0];
    pin.sha256 = "0".repeat(64);
    let before = scratch.blobs();
    let output = scratch.fetch_with(&bad, &[]);
    assert_failed_naming(
        &output,
        &[
            "package busybox-static",
            "(amd64)",
            "sha256 mismatch",
            "nothing was added to the store",
        ],
    );
    assert_eq!(scratch.blobs(), before);
    assert_fetch_succeeds_and_stores(&scratch, &good);
}

#[test]
#[ignore = "slow: needs apt (apt-get update and download from the host's mirror)"]
fn package_missing_from_the_mirror_leaves_the_store_as_it_was() {
    let scratch = Scratch::locked(&["busybox-static"]);
    let good = scratch.lock();
    let mut gone = good.clone();
    let pin = &mut gone
        .architectures
        .get_mut(&TargetArch::X86_64)
        .unwrap()
        .debian_packages[0];
    pin.version = "1:0.0.1-0kiln1".to_owned();
    let before = scratch.blobs();
    let output = scratch.fetch_with(&gone, &[]);
    assert_failed_naming(
        &output,
        &[
            "package busybox-static 1:0.0.1-0kiln1 (amd64): apt-get download failed",
            "apt said:",
            "--update busybox-static",
        ],
    );
    assert_eq!(scratch.blobs(), before);
    assert_fetch_succeeds_and_stores(&scratch, &good);
}

#[test]
#[ignore = "slow: needs apt (apt-get update and download from the host's mirror)"]
fn truncated_package_in_import_is_refused_then_the_full_one_is_accepted() {
    let scratch = Scratch::locked(&["busybox-static"]);
    let lock = scratch.lock();
    // Download the real .deb once, into a second store, to have real bytes to truncate.
    let donor = tempfile::tempdir().unwrap();
    let output = scratch
        .command(&["fetch", "--lock", scratch.lock_path().to_str().unwrap()])
        .env("KILN_CACHE", donor.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let pin = lock
        .architecture(TargetArch::X86_64)
        .unwrap()
        .debian_packages[0]
        .clone();
    let full = std::fs::read(donor.path().join("blobs/sha256").join(&pin.sha256)).unwrap();
    let import = scratch.cache().join("import");
    std::fs::create_dir_all(&import).unwrap();
    std::fs::write(import.join(pin.deb_file_name()), &full[..full.len() / 2]).unwrap();
    let output = scratch.fetch_with(&lock, &["--offline"]);
    assert_failed_naming(
        &output,
        &[
            "package busybox-static",
            "size mismatch",
            "(truncated download?)",
            "nothing was added to the store",
        ],
    );
    assert!(scratch.blobs().is_empty());
    std::fs::write(import.join(pin.deb_file_name()), &full).unwrap();
    let output = scratch.fetch_with(&lock, &["--offline"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(scratch.blobs().get(&pin.sha256), Some(&pin.sha256));
}

/// Serves `body` on 127.0.0.1 to `requests` clients, announcing its full length but, while
/// `truncate` is set, closing the connection after half of it: a real truncated transfer.
fn serve(
    body: Vec<u8>,
    truncate_first: usize,
    requests: usize,
) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hello.tar.gz", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        for index in 0..requests {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut request = [0_u8; 4096];
            let _ = stream.read(&mut request);
            let sent = if index < truncate_first {
                &body[..body.len() / 2]
            } else {
                &body[..]
            };
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(sent);
        }
    });
    (url, handle)
}

#[test]
fn truncated_tarball_download_leaves_the_store_as_it_was() {
    let body: Vec<u8> = (0..300_000_u32)
        .map(|index| u8::try_from(index % 251).unwrap())
        .collect();
    let (url, server) = serve(body.clone(), 1, 2);
    let scratch_directory = tempfile::tempdir().unwrap();
    let scratch = Scratch {
        directory: scratch_directory,
    };
    let mut lock = Lock::new();
    lock.source_tarballs.push(TarballPin {
        name: "hello.tar.gz".into(),
        urls: vec![url.clone()],
        sha256: Sha256Digest::of_bytes(&body).to_hex(),
        size: u64::try_from(body.len()).unwrap(),
        required_by: vec!["module:hello".into()],
    });
    let output = scratch.fetch_with(&lock, &[]);
    assert_failed_naming(
        &output,
        &[
            "tarball hello.tar.gz",
            &url,
            "curl",
            "copy hello.tar.gz into",
        ],
    );
    assert!(scratch.blobs().is_empty());
    let output = scratch.fetch_with(&lock, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    server.join().unwrap();
    assert_eq!(scratch.blobs().len(), 1);
    assert!(
        std::fs::read_dir(scratch.cache().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "tmp/ is left clean"
    );
}

/// The largest regular file under `directory`, recursively.
fn largest_file(directory: &Path) -> u64 {
    let mut largest = 0;
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            largest = largest.max(largest_file(&path));
        } else if path.file_name().is_some_and(|name| name != ".apt-output") {
            largest = largest.max(metadata.len());
        }
    }
    largest
}

#[test]
#[ignore = "slow: needs apt (downloads linux-source-6.1, about 140 MB, twice)"]
fn killed_fetch_leaves_the_store_as_it_was() {
    let scratch = Scratch::locked(&["linux-source-6.1"]);
    let lock = scratch.lock();
    let pin = lock
        .architecture(TargetArch::X86_64)
        .unwrap()
        .debian_packages[0]
        .clone();
    let mut child = scratch
        .command(&["fetch", "--lock", scratch.lock_path().to_str().unwrap()])
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Wait until a partial download exists (apt writes into the store's tmp/ or its
    // private archives/partial/), then SIGKILL: no chance to clean up.
    loop {
        let partial = largest_file(&scratch.cache().join("tmp")).max(largest_file(
            &scratch
                .cache()
                .join("state/apt-amd64/cache/archives/partial"),
        ));
        if partial > 1 << 20 && partial < pin.size {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "fetch finished before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no partial download appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let process_id = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(process_id, libc::SIGKILL) }, 0);
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        scratch.blobs().is_empty(),
        "a killed fetch left a blob: {:?}",
        scratch.blobs()
    );
    // apt dies with its parent (PR_SET_PDEATHSIG): nothing keeps writing after the kill.
    std::thread::sleep(Duration::from_millis(500));
    let leftover = largest_file(&scratch.cache().join("tmp"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        largest_file(&scratch.cache().join("tmp")),
        leftover,
        "something still writes into tmp/ after the kill"
    );
    assert_fetch_succeeds_and_stores(&scratch, &lock);
    // The leftover of the killed run is removed by `cache verify`, which also re-hashes.
    let output = scratch.xtask(&["cache", "verify"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("verified 1 blobs"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(std::fs::read_dir(scratch.cache().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}
