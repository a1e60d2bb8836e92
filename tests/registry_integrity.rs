//! A registry that serves a blob whose bytes do not match its digest: the pull is rejected
//! and nothing is stored (no blob, no partial file, no reference).

use std::sync::Arc;
use std::time::Instant;

use kiln_oci::{OciLayout, OciPlatform};
use kiln_registry::{
    partial_download_directory, pull_image, push_layout, IgnoreTransfers, RegistryError,
};
use kiln_tests::registry::{
    layout_blob_names, registry_options, registry_tools_available, write_test_images, TestRegistry,
    TEST_PASSWORD, TEST_USERNAME,
};

#[test]
fn a_blob_that_does_not_match_its_digest_is_rejected_and_nothing_is_stored() {
    if !registry_tools_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&scratch.path().join("registry")).unwrap();
    let config = TestRegistry::write_docker_config(
        &scratch.path().join("docker"),
        &[(&registry.address(), TEST_USERNAME, TEST_PASSWORD)],
    )
    .unwrap();
    let options = registry_options(&registry, Some(&config));
    let source = OciLayout::open_or_create(&scratch.path().join("source")).unwrap();
    let images = write_test_images(&source, scratch.path(), 1 << 20).unwrap();
    let destination = format!("{}/kiln", registry.address());
    push_layout(
        &source,
        &destination,
        Some("amd64"),
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();

    // Tamper with the layer in the registry's own storage: same length, one byte changed,
    // so only the digest can tell.
    let stored = registry.blob_data_path(&images.amd64.layer_digest.hex());
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&stored, &bytes).unwrap();

    let layout = OciLayout::open_or_create(&scratch.path().join("pulled")).unwrap();
    let started = Instant::now();
    let error = pull_image(
        &format!("{destination}/kiln-test:1.0--amd64"),
        OciPlatform::LinuxAmd64,
        &layout,
        &options,
        false,
        Arc::new(IgnoreTransfers),
    )
    .unwrap_err();
    let message = error.to_string();
    eprintln!("{message} ({:?})", started.elapsed());
    assert!(
        matches!(error, RegistryError::DigestMismatch { what: "blob", .. }),
        "{error:?}"
    );
    assert!(
        message.contains(&images.amd64.layer_digest.to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("{}/kiln/kiln-test", registry.address()))
            && message.contains("nothing was stored"),
        "{message}"
    );
    assert!(
        started.elapsed().as_secs() < 3,
        "a digest mismatch is not retried"
    );

    let blobs = layout_blob_names(layout.directory());
    assert!(
        !blobs.contains(&images.amd64.layer_digest.hex()),
        "the tampered blob was stored"
    );
    assert!(
        !blobs.contains(&images.amd64.manifest_digest.hex()),
        "the manifest of a rejected image was stored"
    );
    assert!(
        layout.read_index().unwrap().manifests.is_empty(),
        "a reference was added"
    );
    // Its partial file is gone too (another blob cancelled mid-way may leave its own
    // partial file: that is resume state for a blob with its own digest, not stored content).
    assert!(
        !partial_download_directory(&layout)
            .join(images.amd64.layer_digest.hex())
            .exists(),
        "the tampered bytes were kept"
    );
    for name in &blobs {
        layout
            .read_blob(&kiln_oci::Sha256Digest::parse(&format!("sha256:{name}")).unwrap())
            .unwrap();
    }

    // A tampered manifest (served by digest) is rejected too.
    let manifest_path = registry.blob_data_path(&images.amd64.manifest_digest.hex());
    let mut manifest = std::fs::read(&manifest_path).unwrap();
    let position = manifest.iter().position(|byte| *byte == b'1').unwrap();
    manifest[position] = b'2';
    std::fs::write(&manifest_path, &manifest).unwrap();
    let error = pull_image(
        &format!("{destination}/kiln-test@{}", images.amd64.manifest_digest),
        OciPlatform::LinuxAmd64,
        &layout,
        &options,
        false,
        Arc::new(IgnoreTransfers),
    )
    .unwrap_err();
    eprintln!("{error}");
    assert!(
        error
            .to_string()
            .contains(&images.amd64.manifest_digest.to_string()),
        "{error}"
    );
    assert!(layout_blob_names(layout.directory())
        .iter()
        .all(|name| *name != images.amd64.manifest_digest.hex()));
}
