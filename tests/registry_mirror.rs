//! Mirroring a release into a site's own registry, then building from it alone: `cargo
//! xtask push --write-lock` pushes every x86_64 package of the lock (as the OCI image kiln
//! makes of each .deb) and the kernel artifacts to a real registry (distribution, TLS from a
//! test CA, htpasswd) and writes a lock naming those mirrors; an image built from that lock
//! with an empty store and kernel cache, the kernel taken by its key, never runs apt and
//! gives the same SHA256SUMS as the build from the original lock.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_tests::registry::{registry_tools_available, TestRegistry};
use kiln_tests::{run, workspace_root, xtask};

fn image(checkout: &Path, out: &Path) -> Command {
    let mut command = xtask(&[
        "image",
        "--arch",
        "x86_64",
        "--profile",
        "minimal",
        "--no-setup",
    ]);
    command.arg("--root").arg(checkout).arg("--out").arg(out);
    // The same cargo target directory for the crates built into both images (a cold one is
    // tests/image_build.rs's business).
    command.env(
        "CARGO_TARGET_DIR",
        std::env::var_os("CARGO_TARGET_DIR")
            .unwrap_or_else(|| workspace_root().join("target").into()),
    );
    command
}

#[test]
#[ignore = "slow: pushes every x86_64 package of the lock, then builds an image from an empty store"]
fn a_mirrored_lock_builds_the_same_image_from_the_registry_alone() {
    assert!(
        registry_tools_available(),
        "docker-registry, htpasswd, openssl and skopeo are needed: run `cargo xtask test`, which installs them"
    );
    // Also names the kernel in the store's layout, so the push below carries it.
    let kernel = kiln_tests::kernel_artifact("x86_64", "virt");
    let scratch = tempfile::tempdir().unwrap();
    let (registry, docker_config) = TestRegistry::start_with_credentials(scratch.path()).unwrap();
    let ca_file = &registry.certificate_authority.ca_certificate;
    let checkout = scratch.path().join("checkout");
    kiln_tests::copy_checkout(&checkout).unwrap();
    let mirror = format!("{}/mirror", registry.address());

    // Push what the lock uses and write the mirrored lock over the checkout's.
    let mut push = xtask(&["push", "--registry", &mirror, "--arch", "x86_64"]);
    push.arg("--lock")
        .arg(checkout.join("kiln.lock"))
        .arg("--write-lock")
        .arg(checkout.join("kiln.lock"))
        .arg("--ca-file")
        .arg(ca_file)
        .arg("--docker-config")
        .arg(&docker_config)
        .arg("--report")
        .arg(scratch.path().join("pushed.json"));
    let pushed = run(&mut push).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&pushed.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(scratch.path().join("pushed.json")).unwrap()).unwrap();
    let pushed_references: Vec<&str> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["pushed_reference"].as_str().unwrap())
        .collect();
    let kernel_key = kernel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        pushed_references.contains(&format!("{mirror}/kiln-kernel:{kernel_key}").as_str()),
        "the kernel is pushed by its key: {pushed_references:?}"
    );
    let lock: serde_json::Value =
        serde_json::from_slice(&fs::read(checkout.join("kiln.lock")).unwrap()).unwrap();
    let packages = lock["architectures"]["x86_64"]["debian_packages"]
        .as_array()
        .unwrap();
    for package in packages {
        let named = package["mirror"].as_str().unwrap_or_default();
        assert!(
            named.starts_with(&format!("{mirror}/")) && named.contains("@sha256:"),
            "{} has mirror {named:?}",
            package["name"]
        );
    }
    assert!(
        lock["architectures"]["aarch64"]["debian_packages"][0]
            .get("mirror")
            .is_none(),
        "--arch x86_64 leaves aarch64 as it was"
    );

    // The reference: the original lock's build from the warm default store.
    let reference_out = scratch.path().join("out-reference");
    run(image(&workspace_root(), &reference_out)
        .arg("--kernel-artifact")
        .arg(&kernel))
    .unwrap();

    // From the mirror alone: empty store and kernel cache, kernel by its key.
    let cold_cache = scratch.path().join("cold-cache");
    let mirror_out = scratch.path().join("out-mirror");
    let mut from_mirror = image(&checkout, &mirror_out);
    from_mirror
        .env("KILN_CACHE", &cold_cache)
        .arg("--kernel-registry")
        .arg(&mirror)
        .arg("--registry-ca-file")
        .arg(ca_file)
        .arg("--docker-config")
        .arg(&docker_config);
    let built = run(&mut from_mirror).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&built.stderr));
    let apt_state: Vec<String> = fs::read_dir(cold_cache.join("state"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("apt-"))
        .collect();
    assert!(apt_state.is_empty(), "apt was used: {apt_state:?}");
    assert_eq!(
        fs::read_to_string(mirror_out.join("minimal/x86_64/SHA256SUMS")).unwrap(),
        fs::read_to_string(reference_out.join("minimal/x86_64/SHA256SUMS")).unwrap(),
        "the mirror build differs from the reference build"
    );
}
