//! The same tree, archived in two different environments, gives the same
//! bytes: nothing of the host (umask, TZ, locale, working directory, the
//! tree's own path, directory enumeration order, core count) reaches them.

use std::path::Path;
use std::process::Command;

use kiln_tests::{make_fixture_tree, run, xtask};

const EPOCH: &str = "1747699200";

fn archive_in(
    root: &Path,
    out: &Path,
    umask: &str,
    time_zone: &str,
    locale: &str,
    cwd: &Path,
    compression: &[&str],
) {
    // umask is a property of the process: set it in a shell, then exec xtask.
    let mut shell = Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg(r#"umask "$1"; shift; exec "$@""#)
        .arg("sh")
        .arg(umask)
        .arg(kiln_tests::xtask_binary())
        .args(["initramfs", "--root"])
        .arg(root)
        .arg("--out")
        .arg(out)
        .args(compression)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("TZ", time_zone)
        .env("LC_ALL", locale)
        .env("LANG", locale)
        .env("SOURCE_DATE_EPOCH", EPOCH);
    run(&mut shell).unwrap();
}

#[test]
fn two_environments_give_identical_bytes() {
    two_environments_give_identical_bytes_with(&["--workers", "1"], &["--workers", "2"]);
}

#[test]
fn two_environments_give_identical_lz4_bytes() {
    two_environments_give_identical_bytes_with(&["--lz4"], &["--lz4"]);
}

fn two_environments_give_identical_bytes_with(
    first_compression: &[&str],
    second_compression: &[&str],
) {
    let work = tempfile::tempdir().unwrap();
    let first = work.path().join("first/tree");
    let second = work.path().join("elsewhere/deeper/copy");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    make_fixture_tree(&first, false).unwrap();
    make_fixture_tree(&second, true).unwrap();

    let first_out = work.path().join("first.img");
    let second_out = work.path().join("second.img");
    archive_in(
        &first,
        &first_out,
        "022",
        "UTC",
        "C",
        Path::new("/"),
        first_compression,
    );
    archive_in(
        &second,
        &second_out,
        "077",
        "Pacific/Chatham",
        "de_DE.UTF-8",
        work.path(),
        second_compression,
    );

    let first_bytes = std::fs::read(&first_out).unwrap();
    let second_bytes = std::fs::read(&second_out).unwrap();
    if first_bytes != second_bytes {
        let diff = xtask(&[
            "diff",
            first_out.to_str().unwrap(),
            second_out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
        panic!("outputs differ:\n{}", String::from_utf8_lossy(&diff.stdout));
    }
    // The output file's own mode does not follow the umask either.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&second_out).unwrap().permissions().mode() & 0o777,
        0o644
    );

    let same = xtask(&[
        "diff",
        first_out.to_str().unwrap(),
        second_out.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(same.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&same.stdout).starts_with("identical:"));
}

#[test]
fn diff_explains_a_different_epoch_and_a_changed_file() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    make_fixture_tree(&tree, false).unwrap();
    let before = work.path().join("before.img");
    run(xtask(&[
        "initramfs",
        "--root",
        tree.to_str().unwrap(),
        "--out",
        before.to_str().unwrap(),
        "--level",
        "3",
    ])
    .env("SOURCE_DATE_EPOCH", EPOCH))
    .unwrap();
    std::fs::write(tree.join("etc/hostname"), b"changed\n").unwrap();
    let after = work.path().join("after.img");
    run(xtask(&[
        "initramfs",
        "--root",
        tree.to_str().unwrap(),
        "--out",
        after.to_str().unwrap(),
        "--level",
        "3",
    ])
    .env("SOURCE_DATE_EPOCH", "1747699201"))
    .unwrap();
    let output = xtask(&["diff", before.to_str().unwrap(), after.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "diff exits 1 when archives differ"
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("changed: etc/hostname: size 5 → 8, contents sha256"),
        "{report}"
    );
    assert!(report.contains("mtime 1747699200 → 1747699201"), "{report}");
}

#[test]
fn the_epoch_never_comes_from_the_clock() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("file"), b"x").unwrap();
    let out = work.path().join("out.img");
    // No SOURCE_DATE_EPOCH and no flag: the pin comes from kiln.lock, or the
    // command fails saying where to set it. Either way, never the clock.
    let output = xtask(&[
        "initramfs",
        "--root",
        tree.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-compress",
    ])
    .output()
    .unwrap();
    if output.status.success() {
        let listing = xtask(&["inspect", out.to_str().unwrap()]).output().unwrap();
        assert!(listing.status.success());
        let archive = std::fs::read(&out).unwrap();
        let segments = kiln_archive::read_initramfs(&archive).unwrap();
        let lock: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(kiln_tests::workspace_root().join("kiln.lock")).unwrap(),
        )
        .unwrap();
        let pinned = lock["source_date_epoch"].as_u64().unwrap();
        assert_eq!(u64::from(segments[0].members[0].mtime), pinned);
    } else {
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(error.contains("no SOURCE_DATE_EPOCH"), "{error}");
        assert!(!out.exists());
    }
}
