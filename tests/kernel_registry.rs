//! Kernel artifacts through a real registry (distribution, TLS from a test CA, htpasswd):
//! the artifact becomes the same OCI image in any layout, is pushed as
//! `PREFIX/kiln-kernel:<key>`, and comes back into an empty kernel cache verified against
//! its `kernel.json`; a missing key and a tampered image are refused with what is wrong.

use std::fs;
use std::sync::Arc;

use kiln_assemble::kernel_oci::{fetch_kernel_from_registry, store_kernel_image};
use kiln_kernel::{Arch, KernelArtifact, KernelCache};
use kiln_oci::OciLayout;
use kiln_registry::{push_layout, IgnoreTransfers};
use kiln_tests::registry::{registry_options, registry_tools_available, TestRegistry};

#[test]
fn a_kernel_goes_through_a_registry_by_its_input_key() {
    assert!(
        registry_tools_available(),
        "docker-registry, htpasswd, openssl and skopeo are needed: run `cargo xtask test`, which installs them"
    );
    let built = KernelArtifact::load(&kiln_tests::kernel_artifact("x86_64", "virt")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (mut registry, docker_config) =
        TestRegistry::start_with_credentials(scratch.path()).unwrap();
    let options = registry_options(&registry, Some(&docker_config));

    // The same artifact gives the same image in two layouts.
    let first = OciLayout::open_or_create(&scratch.path().join("layout-a")).unwrap();
    let second = OciLayout::open_or_create(&scratch.path().join("layout-b")).unwrap();
    let digest = store_kernel_image(&first, &built).unwrap();
    assert_eq!(store_kernel_image(&second, &built).unwrap(), digest);
    assert_eq!(
        store_kernel_image(&first, &built).unwrap(),
        digest,
        "storing again is a no-op"
    );

    let prefix = format!("{}/mirror", registry.address());
    let report = push_layout(&first, &prefix, None, &options, Arc::new(IgnoreTransfers)).unwrap();
    assert_eq!(
        report.images[0].pushed_reference,
        format!("{prefix}/kiln-kernel:{}", built.key)
    );
    assert_eq!(report.images[0].manifest_digest, digest);

    // Into an empty kernel cache, by key.
    let cache = KernelCache::new(&scratch.path().join("cache"));
    let pull_layout = OciLayout::open_or_create(&scratch.path().join("pull-layout")).unwrap();
    let fetched = fetch_kernel_from_registry(
        &prefix,
        &built.key,
        Arch::X86_64,
        &pull_layout,
        &cache,
        &options,
    )
    .unwrap();
    assert_eq!(fetched.key, built.key);
    assert_eq!(fetched.files, built.files);
    for name in built.files.keys() {
        assert_eq!(
            fs::read(fetched.dir.join(name)).unwrap(),
            fs::read(built.dir.join(name)).unwrap(),
            "{name}"
        );
    }

    // A key the registry does not have.
    let absent = "0".repeat(64);
    let error = fetch_kernel_from_registry(
        &prefix,
        &absent,
        Arch::X86_64,
        &pull_layout,
        &cache,
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(&format!("has no kernel with key {absent}")),
        "{error}"
    );

    // A tampered image under the right tag: System.map changed, kernel.json not.
    let tampered_dir = scratch.path().join("tampered");
    fs::create_dir_all(&tampered_dir).unwrap();
    for entry in fs::read_dir(&built.dir).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), tampered_dir.join(entry.file_name())).unwrap();
    }
    let mut map = fs::read(tampered_dir.join("System.map")).unwrap();
    map[0] ^= 1;
    fs::write(tampered_dir.join("System.map"), map).unwrap();
    let tampered = KernelArtifact::load(&tampered_dir).unwrap();
    let evil_layout = OciLayout::open_or_create(&scratch.path().join("evil-layout")).unwrap();
    store_kernel_image(&evil_layout, &tampered).unwrap();
    let evil_prefix = format!("{}/evil", registry.address());
    push_layout(
        &evil_layout,
        &evil_prefix,
        None,
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    let other_cache = KernelCache::new(&scratch.path().join("other-cache"));
    let error = fetch_kernel_from_registry(
        &evil_prefix,
        &built.key,
        Arch::X86_64,
        &pull_layout,
        &other_cache,
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("System.map is sha256:") && error.contains("but kernel.json says"),
        "{error}"
    );
    assert!(
        !other_cache.artifact_dir(&built.key).exists(),
        "nothing is published into the cache from a bad image"
    );

    // Once cached, the registry is not needed.
    registry.stop();
    let again = fetch_kernel_from_registry(
        &prefix,
        &built.key,
        Arch::X86_64,
        &pull_layout,
        &cache,
        &options,
    )
    .unwrap();
    assert_eq!(again.files, built.files);
}
