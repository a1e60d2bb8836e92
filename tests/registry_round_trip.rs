//! Push a layout to a real registry (distribution, TLS from our CA, htpasswd), read it with
//! skopeo, pull it back by tag and by digest, per platform through an image index.

use std::process::Command;
use std::sync::Arc;

use kiln_oci::{OciLayout, OciPlatform};
use kiln_registry::{pull_image, push_layout, resolve_reference, IgnoreTransfers, RegistryError};
use kiln_tests::registry::{
    layout_blob_names, registry_options, registry_tools_available, write_test_images, TestRegistry,
    TEST_PASSWORD, TEST_USERNAME,
};
use kiln_tests::run;

#[test]
fn push_then_pull_round_trips_and_skopeo_reads_what_was_pushed() {
    if !registry_tools_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&scratch.path().join("registry")).unwrap();
    let docker_config = TestRegistry::write_docker_config(
        &scratch.path().join("docker"),
        &[(&registry.address(), TEST_USERNAME, TEST_PASSWORD)],
    )
    .unwrap();
    let options = registry_options(&registry, Some(&docker_config));

    let source_layout = OciLayout::open_or_create(&scratch.path().join("source-layout")).unwrap();
    let images = write_test_images(&source_layout, scratch.path(), 3 << 20).unwrap();
    let destination = format!("{}/kiln", registry.address());
    let started = std::time::Instant::now();
    let report = push_layout(
        &source_layout,
        &destination,
        None,
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    eprintln!(
        "pushed {} images, {} blobs uploaded, in {:?}",
        report.images.len(),
        report.blobs_uploaded,
        started.elapsed()
    );
    let pushed: Vec<(&str, String)> = report
        .images
        .iter()
        .map(|image| {
            (
                image.pushed_reference.as_str(),
                image.manifest_digest.to_string(),
            )
        })
        .collect();
    assert_eq!(
        pushed,
        [
            (
                format!("{destination}/kiln-multi:1.0").as_str(),
                images.index.digest.to_string()
            ),
            (
                format!("{destination}/kiln-test:1.0--amd64").as_str(),
                images.amd64.manifest_digest.to_string()
            ),
            (
                format!("{destination}/kiln-test:1.0--arm64").as_str(),
                images.arm64.manifest_digest.to_string()
            ),
        ]
    );
    // Blobs are per repository: kiln-multi gets both configs and the shared layer (3), and
    // so does kiln-test (3); the second image of a repository finds the layer there (2).
    assert_eq!(
        (report.blobs_uploaded, report.blobs_already_in_registry),
        (6, 2),
        "{report:?}"
    );

    // A second push uploads nothing.
    let again = push_layout(
        &source_layout,
        &destination,
        None,
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    assert_eq!(
        (again.blobs_uploaded, again.blobs_already_in_registry),
        (0, 8)
    );

    // `--arch arm64` pushes only the arm64 image.
    let arm64_only = push_layout(
        &source_layout,
        &destination,
        Some("arm64"),
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    assert_eq!(arm64_only.images.len(), 1);
    assert_eq!(
        arm64_only.images[0].platform.as_deref(),
        Some("linux/arm64/v8")
    );

    // skopeo, another client, reads what we pushed over TLS with our CA and the credentials.
    let certificate_directory = registry
        .certificate_authority
        .skopeo_certificate_directory()
        .unwrap();
    let output = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=true", "--cert-dir"])
        .arg(&certificate_directory)
        .args(["--creds", &format!("{TEST_USERNAME}:{TEST_PASSWORD}")])
        .arg(format!("docker://{destination}/kiln-test:1.0--amd64")))
    .unwrap();
    assert_eq!(
        kiln_oci::Sha256Digest::of_bytes(&output.stdout),
        images.amd64.manifest_digest,
        "skopeo reads the same manifest bytes"
    );
    let output = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=true", "--cert-dir"])
        .arg(&certificate_directory)
        .args([
            "--creds",
            &format!("{TEST_USERNAME}:{TEST_PASSWORD}"),
            "--override-arch",
            "arm64",
        ])
        .arg(format!("docker://{destination}/kiln-multi:1.0")))
    .unwrap();
    let inspected: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        inspected["Digest"],
        images.index.digest.to_string(),
        "skopeo reports our index's digest"
    );
    assert_eq!(
        inspected["Architecture"], "arm64",
        "skopeo picks our arm64 manifest from our index"
    );

    // Pull by tag into a fresh layout: same manifest digest, same blob bytes.
    let pulled_layout = OciLayout::open_or_create(&scratch.path().join("pulled-layout")).unwrap();
    let started = std::time::Instant::now();
    let pulled = pull_image(
        &format!("{destination}/kiln-test:1.0--amd64"),
        OciPlatform::LinuxAmd64,
        &pulled_layout,
        &options,
        false,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    eprintln!(
        "pulled {} bytes in {:?}",
        pulled.bytes_downloaded,
        started.elapsed()
    );
    assert_eq!(
        pulled.resolved.manifest_digest,
        images.amd64.manifest_digest
    );
    assert_eq!(pulled.downloaded_blobs.len(), 2);
    for digest in [
        images.amd64.manifest_digest,
        images.amd64.config_digest,
        images.amd64.layer_digest,
    ] {
        assert_eq!(
            pulled_layout.read_blob(&digest).unwrap(),
            source_layout.read_blob(&digest).unwrap()
        );
    }
    let named = pulled_layout
        .find_manifest_ref(&pulled.layout_reference_name)
        .unwrap()
        .unwrap();
    assert_eq!(named.digest, images.amd64.manifest_digest);
    assert_eq!(
        pulled.layout_reference_name,
        format!(
            "{}/kiln/kiln-test@{}",
            registry.address(),
            images.amd64.manifest_digest
        )
    );
    // skopeo reads the pulled layout as an OCI layout.
    run(Command::new("skopeo").arg("inspect").arg(format!(
        "oci:{}:{}",
        pulled_layout.directory().display(),
        pulled.layout_reference_name
    )))
    .unwrap();

    // Offline: by digest from the layout works; a digest it lacks is named in the error.
    let offline = pull_image(
        &pulled.resolved.pinned_reference,
        OciPlatform::LinuxAmd64,
        &pulled_layout,
        &options,
        true,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    assert_eq!(
        offline.resolved.manifest_digest,
        images.amd64.manifest_digest
    );
    let missing = format!("{destination}/kiln-test@{}", images.arm64.manifest_digest);
    let error = pull_image(
        &missing,
        OciPlatform::LinuxArm64,
        &pulled_layout,
        &options,
        true,
        Arc::new(IgnoreTransfers),
    )
    .unwrap_err();
    assert!(
        matches!(error, RegistryError::OfflineMissing { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&images.arm64.manifest_digest.to_string()),
        "{error}"
    );
    let error = pull_image(
        &format!("{destination}/kiln-test:1.0--amd64"),
        OciPlatform::LinuxAmd64,
        &pulled_layout,
        &options,
        true,
        Arc::new(IgnoreTransfers),
    )
    .unwrap_err();
    assert!(
        matches!(error, RegistryError::OfflineNeedsDigest { .. }),
        "{error}"
    );
    assert_eq!(layout_blob_names(pulled_layout.directory()).len(), 3);
}

#[test]
fn an_image_index_resolves_to_the_manifest_of_each_architecture() {
    if !registry_tools_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&scratch.path().join("registry")).unwrap();
    let docker_config = TestRegistry::write_docker_config(
        &scratch.path().join("docker"),
        &[(&registry.address(), TEST_USERNAME, TEST_PASSWORD)],
    )
    .unwrap();
    let options = registry_options(&registry, Some(&docker_config));
    let source_layout = OciLayout::open_or_create(&scratch.path().join("source-layout")).unwrap();
    let images = write_test_images(&source_layout, scratch.path(), 64 << 10).unwrap();
    let destination = format!("{}/kiln", registry.address());
    push_layout(
        &source_layout,
        &destination,
        None,
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();

    let by_tag = format!("{destination}/kiln-multi:1.0");
    let by_digest = format!("{destination}/kiln-multi@{}", images.index.digest);
    for reference in [&by_tag, &by_digest] {
        let amd64 = resolve_reference(reference, OciPlatform::LinuxAmd64, &options).unwrap();
        let arm64 = resolve_reference(reference, OciPlatform::LinuxArm64, &options).unwrap();
        assert_eq!(
            amd64.manifest_digest, images.amd64.manifest_digest,
            "{reference}"
        );
        assert_eq!(
            arm64.manifest_digest, images.arm64.manifest_digest,
            "{reference}"
        );
        assert_eq!(amd64.index_digest, Some(images.index.digest));
        assert_eq!(
            arm64.pinned_reference,
            format!("{destination}/kiln-multi@{}", images.arm64.manifest_digest)
        );
    }
    // Pull each architecture through the index into one layout.
    let layout = OciLayout::open_or_create(&scratch.path().join("pulled")).unwrap();
    for (platform, expected) in [
        (OciPlatform::LinuxAmd64, &images.amd64),
        (OciPlatform::LinuxArm64, &images.arm64),
    ] {
        let pulled = pull_image(
            &by_tag,
            platform,
            &layout,
            &options,
            false,
            Arc::new(IgnoreTransfers),
        )
        .unwrap();
        assert_eq!(pulled.resolved.manifest_digest, expected.manifest_digest);
        let config: serde_json::Value =
            serde_json::from_slice(&layout.read_blob(&expected.config_digest).unwrap()).unwrap();
        assert_eq!(config["architecture"], platform.oci_architecture());
    }
    // The shared layer was downloaded once, by the first pull.
    // An index without arm64: the error lists what it has.
    let amd64_only_layout = OciLayout::open_or_create(&scratch.path().join("amd64-only")).unwrap();
    let amd64 = write_test_images(&amd64_only_layout, &scratch.path().join("second"), 1024)
        .unwrap()
        .amd64;
    let index = kiln_oci::oci_json::OciImageIndex {
        schema_version: 2,
        media_type: Some(kiln_oci::oci_json::IMAGE_INDEX_MEDIA_TYPE.to_owned()),
        manifests: vec![amd64.manifest.clone()],
        annotations: Default::default(),
        other_fields: Default::default(),
    };
    let index_descriptor = amd64_only_layout
        .put_blob_bytes(
            kiln_oci::oci_json::IMAGE_INDEX_MEDIA_TYPE,
            &kiln_oci::oci_json::canonical_json_bytes(&index),
        )
        .unwrap();
    amd64_only_layout
        .add_manifest_ref("kiln-amd64-only--1.0", &index_descriptor)
        .unwrap();
    push_layout(
        &amd64_only_layout,
        &destination,
        None,
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    let error = resolve_reference(
        &format!("{destination}/kiln-amd64-only:1.0"),
        OciPlatform::LinuxArm64,
        &options,
    )
    .unwrap_err();
    let message = error.to_string();
    eprintln!("{message}");
    assert!(matches!(error, RegistryError::PlatformNotFound { .. }));
    assert!(
        message.contains("no manifest for linux/arm64/v8")
            && message.contains("it has: linux/amd64."),
        "{message}"
    );
    assert!(
        message.contains(&index_descriptor.digest.to_string())
            && message.contains("kiln/kiln-amd64-only"),
        "{message}"
    );
}

#[test]
fn cargo_xtask_push_and_pull_report_the_same_digests() {
    if !registry_tools_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&scratch.path().join("registry")).unwrap();
    let docker_config = TestRegistry::write_docker_config(
        &scratch.path().join("docker"),
        &[(&registry.address(), TEST_USERNAME, TEST_PASSWORD)],
    )
    .unwrap();
    let source_directory = scratch.path().join("source-layout");
    let source_layout = OciLayout::open_or_create(&source_directory).unwrap();
    let images = write_test_images(&source_layout, scratch.path(), 256 << 10).unwrap();
    let ca_file = registry
        .certificate_authority
        .ca_certificate
        .display()
        .to_string();
    let config_file = docker_config.display().to_string();
    let report_path = scratch.path().join("pushed.json");
    let destination = format!("{}/kiln", registry.address());
    run(&mut kiln_tests::xtask(&[
        "push",
        "--registry",
        &destination,
        "--arch",
        "aarch64",
        "--layout",
        &source_directory.display().to_string(),
        "--ca-file",
        &ca_file,
        "--docker-config",
        &config_file,
        "--report",
        &report_path.display().to_string(),
    ]))
    .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["images"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(
        report["images"][0]["manifest_digest"],
        images.arm64.manifest_digest.to_string()
    );
    let pinned = report["images"][0]["pinned_reference"]
        .as_str()
        .unwrap()
        .to_owned();

    let pulled_directory = scratch.path().join("pulled");
    let output = run(&mut kiln_tests::xtask(&[
        "pull",
        &pinned,
        "--platform",
        "linux/arm64",
        "--layout",
        &pulled_directory.display().to_string(),
        "--ca-file",
        &ca_file,
        "--docker-config",
        &config_file,
    ]))
    .unwrap();
    let pulled: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        pulled["manifest_digest"],
        images.arm64.manifest_digest.to_string(),
        "{pulled:#}"
    );
    assert_eq!(pulled["blobs_downloaded"], 2);
    // Offline, from the layout only.
    let output = run(&mut kiln_tests::xtask(&[
        "pull",
        &pinned,
        "--platform",
        "linux/arm64",
        "--offline",
        "--layout",
        &pulled_directory.display().to_string(),
    ]))
    .unwrap();
    let offline: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(offline["blobs_already_present"], 2);
    // Without the CA the CLI fails with the TLS advice.
    // (A fresh layout: the pulled one would serve the pinned digest without the network.)
    let fresh_directory = scratch.path().join("fresh");
    let output = kiln_tests::xtask(&[
        "pull",
        &pinned,
        "--layout",
        &fresh_directory.display().to_string(),
        "--docker-config",
        &config_file,
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        !output.status.success() && stderr.contains("--ca-file"),
        "{stderr}"
    );
}
