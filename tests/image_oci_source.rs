//! `image:` module sources and `embed_images:` end to end, against a real registry
//! (distribution with TLS from a test CA and htpasswd auth): `cargo xtask lock` resolves the
//! tag through an image index to each architecture's manifest, `cargo xtask image` pulls by
//! that digest, applies its layers as the module's files and ships the embedded image as an
//! OCI layout skopeo reads; with the registry stopped, an `--offline`
//! rebuild from the store gives the same bytes.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use kiln_oci::oci_json::{canonical_json_bytes, OciImageIndex, IMAGE_INDEX_MEDIA_TYPE};
use kiln_oci::{OciLayout, OciPlatform};
use kiln_registry::{push_layout, IgnoreTransfers};
use kiln_tests::registry::{registry_options, registry_tools_available, TestRegistry};
use kiln_tests::{run, xtask};

/// Two images, each for amd64 and arm64 with an image index over both, named
/// `kiln-payload--1.0` and `kiln-tools--2.0` in the layout (pushed as `kiln-payload:1.0` and
/// `kiln-tools:2.0`).
fn write_images(layout: &OciLayout, scratch: &Path) -> anyhow::Result<()> {
    let epoch = kiln_oci::SourceDateEpoch::from_seconds(1_700_000_000);
    let mut indexes: Vec<(&str, Vec<kiln_oci::OciDescriptor>)> = Vec::new();
    for (title, version) in [("kiln-payload", "1.0"), ("kiln-tools", "2.0")] {
        let mut manifests = Vec::new();
        for platform in [OciPlatform::LinuxAmd64, OciPlatform::LinuxArm64] {
            let files = scratch.join(format!("{title}-{}", platform.oci_architecture()));
            fs::create_dir_all(files.join("opt/kiln-test"))?;
            fs::write(
                files.join("opt/kiln-test/hello"),
                format!("hello from {title} for {}\n", platform.oci_architecture()),
            )?;
            let description = kiln_oci::ImageDescription {
                title: title.to_owned(),
                version: version.to_owned(),
                created_by: "kiln image_oci_source test".to_owned(),
            };
            let image =
                kiln_oci::image_from_directory(layout, &files, &description, platform, epoch)?;
            manifests.push(image.manifest);
        }
        indexes.push((title, manifests));
    }
    for ((title, manifests), version) in indexes.into_iter().zip(["1.0", "2.0"]) {
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(IMAGE_INDEX_MEDIA_TYPE.to_owned()),
            manifests,
            annotations: Default::default(),
            other_fields: Default::default(),
        };
        let descriptor =
            layout.put_blob_bytes(IMAGE_INDEX_MEDIA_TYPE, &canonical_json_bytes(&index))?;
        layout.add_manifest_ref(&format!("{title}--{version}"), &descriptor)?;
    }
    Ok(())
}

fn registry_flags(command: &mut Command, registry: &TestRegistry, docker_config: &Path) {
    command
        .arg("--registry-ca-file")
        .arg(&registry.certificate_authority.ca_certificate)
        .arg("--docker-config")
        .arg(docker_config);
}

fn image_command(checkout: &Path, out: &Path, kernel: &Path, offline: bool) -> Command {
    let mut command = xtask(&[
        "image",
        "--arch",
        "x86_64",
        "--profile",
        "oci-test",
        "--no-setup",
    ]);
    command
        .arg("--root")
        .arg(checkout)
        .arg("--out")
        .arg(out)
        .arg("--kernel-artifact")
        .arg(kernel);
    if offline {
        command.arg("--offline");
    }
    command
}

#[test]
#[ignore = "slow: locks against apt and a registry, then two image builds"]
fn image_sources_and_embedded_images_are_pinned_pulled_and_composed() {
    assert!(
        registry_tools_available(),
        "docker-registry, htpasswd, openssl and skopeo are needed: run `cargo xtask test`, which installs them"
    );
    let kernel = kiln_tests::kernel_artifact("x86_64", "virt");
    let scratch = tempfile::tempdir().unwrap();
    let (mut registry, docker_config) =
        TestRegistry::start_with_credentials(scratch.path()).unwrap();

    // Publish: the layout's images and indexes, pushed to <registry>/kiln/<title>:<version>.
    let source_layout = OciLayout::open_or_create(&scratch.path().join("source-layout")).unwrap();
    write_images(&source_layout, scratch.path()).unwrap();
    let destination = format!("{}/kiln", registry.address());
    push_layout(
        &source_layout,
        &destination,
        None,
        &registry_options(&registry, Some(&docker_config)),
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    let payload_reference = format!("{destination}/kiln-payload:1.0");
    let tools_reference = format!("{destination}/kiln-tools:2.0");

    // A checkout with a module made from an image, and a profile embedding another.
    let checkout = scratch.path().join("checkout");
    kiln_tests::copy_checkout(&checkout).unwrap();
    fs::create_dir_all(checkout.join("modules/payload")).unwrap();
    fs::write(
        checkout.join("modules/payload/module.yaml"),
        format!(
            "description: Test files from an OCI image.\nkind: base\nsources:\n  - image: {payload_reference}\n"
        ),
    )
    .unwrap();
    fs::write(
        checkout.join("profiles/oci-test.yaml"),
        format!(
            "description: minimal plus an image module and an embedded image.\nextends: minimal\nmodules: [payload]\nembed_images:\n  - {tools_reference}\n"
        ),
    )
    .unwrap();

    // Lock: both references resolved through their index to the amd64 manifest.
    let mut lock = xtask(&["lock", "--arch", "x86_64"]);
    lock.arg("--root").arg(&checkout);
    lock.arg("--lock").arg(checkout.join("kiln.lock"));
    registry_flags(&mut lock, &registry, &docker_config);
    let lock_output = run(&mut lock).unwrap();
    eprintln!("{}", String::from_utf8_lossy(&lock_output.stderr));
    let lock_text = fs::read_to_string(checkout.join("kiln.lock")).unwrap();
    let lock_json: serde_json::Value = serde_json::from_str(&lock_text).unwrap();
    let pins = lock_json["architectures"]["x86_64"]["oci_images"]
        .as_array()
        .unwrap_or_else(|| panic!("no x86_64 oci_images in the lock:\n{lock_text}"));
    let by_reference = |reference: &str| {
        pins.iter()
            .find(|pin| pin["reference"] == reference)
            .unwrap_or_else(|| panic!("{reference} not pinned:\n{lock_text}"))
            .clone()
    };
    let payload_pin = by_reference(&payload_reference);
    let tools_pin = by_reference(&tools_reference);
    assert_eq!(
        payload_pin["required_by"],
        serde_json::json!(["module:payload"])
    );
    assert_eq!(
        tools_pin["required_by"],
        serde_json::json!(["profile:oci-test"])
    );
    let index = source_layout.read_index().unwrap();
    let named = |name: &str| {
        index
            .manifests
            .iter()
            .find(|descriptor| {
                descriptor
                    .annotations
                    .get("org.opencontainers.image.ref.name")
                    == Some(&name.to_owned())
            })
            .unwrap()
            .digest
            .to_string()
    };
    assert_eq!(payload_pin["index_digest"], named("kiln-payload--1.0"));
    let payload_index: OciImageIndex = serde_json::from_slice(
        &source_layout
            .read_blob(&kiln_oci::Sha256Digest::parse(&named("kiln-payload--1.0")).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        payload_pin["manifest_digest"],
        payload_index.manifests[0].digest.to_string(),
        "the amd64 manifest is the index's first entry"
    );
    // The blobs (config, then layers) are recorded with the manifest's size, for the
    // flake, which fetches by digest and cannot read a manifest it has not fetched.
    let manifest_digest =
        kiln_oci::Sha256Digest::parse(payload_pin["manifest_digest"].as_str().unwrap()).unwrap();
    let manifest_bytes = source_layout.read_blob(&manifest_digest).unwrap();
    assert_eq!(payload_pin["manifest_size"], manifest_bytes.len() as u64);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let expected_blobs: Vec<serde_json::Value> = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|descriptor| {
            serde_json::json!({
                "digest": descriptor["digest"],
                "size": descriptor["size"],
                "media_type": descriptor["mediaType"],
            })
        })
        .collect();
    assert_eq!(
        payload_pin["blobs"],
        serde_json::Value::Array(expected_blobs)
    );

    // Build: pulled by digest, composed, embedded.
    let first_out = scratch.path().join("out-online");
    let mut build = image_command(&checkout, &first_out, &kernel, false);
    registry_flags(&mut build, &registry, &docker_config);
    let build_output = run(&mut build).unwrap();
    let build_log = String::from_utf8_lossy(&build_output.stderr);
    eprintln!("{build_log}");
    let directory = first_out.join("oci-test/x86_64");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(directory.join("manifest.json")).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    let file = |path: &str| files.iter().find(|file| file["path"] == path).cloned();
    let hello = file("opt/kiln-test/hello").expect("the image's file is in the initramfs");
    assert_eq!(hello["module"], "payload");
    let embedded_index =
        file("var/lib/kiln/images/index.json").expect("the embedded layout's index");
    assert_eq!(embedded_index["module"], "embed_images");
    let inputs = manifest["inputs"].as_array().unwrap();
    assert!(
        inputs.iter().any(
            |input| input["kind"] == "oci-image" && input["name"] == payload_reference.as_str()
        ),
        "manifest.json lists the image input: {inputs:?}"
    );

    // The initramfs really holds them: unpack it with GNU cpio and read the embedded
    // layout with skopeo.
    let unpacked = scratch.path().join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    // The profile extends `minimal`, whose initramfs is LZ4: kiln-archive decodes the stream
    // (`lz4 -d` stops with an error at kiln's end mark), GNU cpio unpacks the cpio.
    let initramfs = fs::read(directory.join("initramfs-x86_64")).unwrap();
    let (cpio, _) = kiln_archive::decompress_lz4_legacy(&initramfs, 0).unwrap();
    let plain = scratch.path().join("initramfs.cpio");
    fs::write(&plain, cpio).unwrap();
    let status = Command::new("cpio")
        .args(["-idm", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(&plain)
        .current_dir(&unpacked)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        fs::read_to_string(unpacked.join("opt/kiln-test/hello")).unwrap(),
        "hello from kiln-payload for amd64\n"
    );
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg("--raw")
        .arg(format!(
            "oci:{}",
            unpacked.join("var/lib/kiln/images").display()
        )))
    .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        raw["layers"].as_array().map(Vec::len),
        Some(1),
        "skopeo reads the embedded image's manifest: {raw}"
    );
    let embedded_digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&inspect.stdout))
    );
    assert_eq!(tools_pin["manifest_digest"], embedded_digest);

    // Offline, registry stopped: from the store only, the same bytes.
    registry.stop();
    let second_out = scratch.path().join("out-offline");
    let mut offline = image_command(&checkout, &second_out, &kernel, true);
    registry_flags(&mut offline, &registry, &docker_config);
    run(&mut offline).unwrap();
    assert_eq!(
        fs::read_to_string(directory.join("SHA256SUMS")).unwrap(),
        fs::read_to_string(second_out.join("oci-test/x86_64/SHA256SUMS")).unwrap()
    );
}

#[test]
fn a_bad_image_reference_is_reported_with_its_position() {
    let scratch = tempfile::tempdir().unwrap();
    let checkout = scratch.path().join("checkout");
    kiln_tests::copy_checkout(&checkout).unwrap();
    fs::create_dir_all(checkout.join("modules/payload")).unwrap();
    fs::write(
        checkout.join("modules/payload/module.yaml"),
        "description: no registry named.\nkind: base\nsources:\n  - image: kiln-payload:1.0\n",
    )
    .unwrap();
    // The catalog is read before anything is resolved, so no apt or registry is involved.
    let output = xtask(&["lock", "--arch", "x86_64"])
        .arg("--root")
        .arg(&checkout)
        .arg("--lock")
        .arg(checkout.join("kiln.lock"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("modules/payload/module.yaml:4:")
            && stderr.contains("image reference `kiln-payload:1.0` names no registry"),
        "{stderr}"
    );
}
