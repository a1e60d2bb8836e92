//! The registry dies in the middle of a pull: the pull retries with backoff, then fails
//! clearly, keeping what it verified; after a restart the next pull skips the blobs already
//! committed and resumes the interrupted one with a range request.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_oci::oci_json::{
    canonical_json_bytes, OciHistoryEntry, OciImageConfiguration, OciImageManifest,
    OciRootFilesystem, IMAGE_CONFIG_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    UNCOMPRESSED_LAYER_MEDIA_TYPE,
};
use kiln_oci::{OciLayout, OciPlatform, Sha256Digest};
use kiln_registry::{
    partial_download_directory, pull_image, push_layout, BlobOutcome, IgnoreTransfers,
    RegistryError, TransferObserver,
};
use kiln_tests::pseudo_random_bytes;
use kiln_tests::registry::{
    registry_options, registry_tools_available, TestRegistry, TEST_PASSWORD, TEST_USERNAME,
};

const LAYER_BYTES: usize = 24 << 20;
const STOP_AFTER_BYTES: u64 = 2 << 20;

/// An image with three large layers, so that a pull takes several blob downloads.
fn write_three_layer_image(layout: &OciLayout) -> (Sha256Digest, Sha256Digest, Vec<Sha256Digest>) {
    let layers: Vec<_> = (0..3)
        .map(|seed| {
            layout
                .put_blob_bytes(
                    UNCOMPRESSED_LAYER_MEDIA_TYPE,
                    &pseudo_random_bytes(100 + seed, LAYER_BYTES),
                )
                .unwrap()
        })
        .collect();
    let configuration = OciImageConfiguration {
        created: "2023-11-14T22:13:20Z".to_owned(),
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        variant: None,
        rootfs: OciRootFilesystem {
            filesystem_type: "layers".to_owned(),
            diff_ids: layers.iter().map(|layer| layer.digest).collect(),
        },
        history: vec![OciHistoryEntry {
            created: "2023-11-14T22:13:20Z".to_owned(),
            created_by: "kiln resume test".to_owned(),
        }],
    };
    let config = layout
        .put_blob_bytes(
            IMAGE_CONFIG_MEDIA_TYPE,
            &canonical_json_bytes(&configuration),
        )
        .unwrap();
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: IMAGE_MANIFEST_MEDIA_TYPE.to_owned(),
        config: config.clone(),
        layers: layers.clone(),
        annotations: BTreeMap::new(),
    };
    let mut manifest_descriptor = layout
        .put_blob_bytes(IMAGE_MANIFEST_MEDIA_TYPE, &canonical_json_bytes(&manifest))
        .unwrap();
    manifest_descriptor.platform = Some(OciPlatform::LinuxAmd64.into());
    layout
        .add_manifest_ref("big--1", &manifest_descriptor)
        .unwrap();
    (
        manifest_descriptor.digest,
        config.digest,
        layers.iter().map(|layer| layer.digest).collect(),
    )
}

/// Records outcomes; kills the registry once `kill_during` has received STOP_AFTER_BYTES.
struct StopRegistryMidBlob {
    registry: Arc<Mutex<TestRegistry>>,
    kill_during: Option<Sha256Digest>,
    received: Mutex<BTreeMap<Sha256Digest, u64>>,
    started: Mutex<Vec<(Sha256Digest, u64)>>,
    outcomes: Mutex<Vec<(Sha256Digest, BlobOutcome)>>,
}

impl TransferObserver for StopRegistryMidBlob {
    fn blob_started(&self, digest: &Sha256Digest, _size: u64, resumed_from: u64) {
        self.started.lock().unwrap().push((*digest, resumed_from));
    }
    fn bytes_transferred(&self, digest: &Sha256Digest, bytes: u64) {
        let mut received = self.received.lock().unwrap();
        let total = received.entry(*digest).or_default();
        *total += bytes;
        if self.kill_during == Some(*digest) && *total >= STOP_AFTER_BYTES {
            self.registry.lock().unwrap().stop();
        }
    }
    fn blob_finished(&self, digest: &Sha256Digest, outcome: BlobOutcome) {
        self.outcomes.lock().unwrap().push((*digest, outcome));
    }
}

#[test]
fn a_pull_interrupted_by_a_dead_registry_resumes_where_it_stopped() {
    if !registry_tools_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let registry = Arc::new(Mutex::new(
        TestRegistry::start(&scratch.path().join("registry")).unwrap(),
    ));
    let address = registry.lock().unwrap().address();
    let config = TestRegistry::write_docker_config(
        &scratch.path().join("docker"),
        &[(&address, TEST_USERNAME, TEST_PASSWORD)],
    )
    .unwrap();
    let mut options = registry_options(&registry.lock().unwrap(), Some(&config));
    options.max_concurrent_transfers = 1;
    let source = OciLayout::open_or_create(&scratch.path().join("source")).unwrap();
    let (manifest_digest, config_digest, layers) = write_three_layer_image(&source);
    push_layout(
        &source,
        &format!("{address}/kiln"),
        None,
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap();
    let reference = format!("{address}/kiln/big@{manifest_digest}");

    // First pull: the registry is killed when the second layer is 2 MiB in.
    let layout = OciLayout::open_or_create(&scratch.path().join("pulled")).unwrap();
    let observer = Arc::new(StopRegistryMidBlob {
        registry: registry.clone(),
        kill_during: Some(layers[1]),
        received: Mutex::default(),
        started: Mutex::default(),
        outcomes: Mutex::default(),
    });
    let started = Instant::now();
    let error = pull_image(
        &reference,
        OciPlatform::LinuxAmd64,
        &layout,
        &options,
        false,
        observer.clone(),
    )
    .unwrap_err();
    let message = error.to_string();
    eprintln!("first pull failed after {:?}: {message}", started.elapsed());
    assert!(
        matches!(error, RegistryError::Unavailable { attempts: 4, .. }),
        "{error:?}"
    );
    assert!(
        message.contains(&address)
            && message.contains("kiln/big")
            && message.contains(&layers[1].to_string()),
        "{message}"
    );
    let attempts_on_interrupted_blob = observer
        .started
        .lock()
        .unwrap()
        .iter()
        .filter(|(digest, _)| *digest == layers[1])
        .count();
    assert!(attempts_on_interrupted_blob >= 1);
    let downloaded_first: Vec<_> = observer
        .outcomes
        .lock()
        .unwrap()
        .iter()
        .map(|(digest, _)| *digest)
        .collect();
    assert_eq!(
        downloaded_first,
        [config_digest, layers[0]],
        "verified blobs before the failure"
    );
    assert!(layout.blob_path(&layers[0]).exists() && !layout.blob_path(&layers[1]).exists());
    let partial = partial_download_directory(&layout).join(layers[1].hex());
    let partial_length = std::fs::metadata(&partial).unwrap().len();
    eprintln!("partial file of the interrupted layer: {partial_length} of {LAYER_BYTES} bytes");
    assert!(partial_length >= STOP_AFTER_BYTES && partial_length < LAYER_BYTES as u64);
    assert!(
        layout.read_index().unwrap().manifests.is_empty(),
        "no reference to an incomplete image"
    );

    // Restart; the next pull completes from where the first stopped.
    registry.lock().unwrap().restart().unwrap();
    let requests_before = registry.lock().unwrap().request_lines().len();
    let observer = Arc::new(StopRegistryMidBlob {
        registry: registry.clone(),
        kill_during: None,
        received: Mutex::default(),
        started: Mutex::default(),
        outcomes: Mutex::default(),
    });
    let started = Instant::now();
    let pulled = pull_image(
        &reference,
        OciPlatform::LinuxAmd64,
        &layout,
        &options,
        false,
        observer.clone(),
    )
    .unwrap();
    eprintln!(
        "second pull: {} bytes in {:?}",
        pulled.bytes_downloaded,
        started.elapsed()
    );
    assert_eq!(
        pulled.blobs_already_present,
        [config_digest, layers[0]],
        "verified blobs are not downloaded again"
    );
    let mut downloaded = vec![layers[1], layers[2]];
    downloaded.sort();
    assert_eq!(pulled.downloaded_blobs, downloaded);
    assert!(
        observer
            .started
            .lock()
            .unwrap()
            .contains(&(layers[1], partial_length)),
        "{:?}",
        observer.started.lock().unwrap()
    );
    assert_eq!(
        pulled.bytes_downloaded,
        2 * LAYER_BYTES as u64 - partial_length,
        "only the missing bytes were transferred"
    );
    let new_requests = registry.lock().unwrap().request_lines()[requests_before..].to_vec();
    assert!(
        new_requests
            .iter()
            .any(|line| line.contains(&layers[1].to_string()) && line.contains("\" 206 ")),
        "the interrupted layer was resumed with a range request:\n{}",
        new_requests.join("\n")
    );
    assert!(
        !new_requests
            .iter()
            .any(|line| line.contains(&layers[0].to_string())),
        "a verified blob was requested again"
    );
    for digest in [
        config_digest,
        layers[0],
        layers[1],
        layers[2],
        manifest_digest,
    ] {
        layout.read_blob(&digest).unwrap();
    }
    assert!(!partial.exists());
    assert_eq!(
        layout.read_index().unwrap().manifests[0].digest,
        manifest_digest
    );
}
