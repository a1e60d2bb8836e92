//! Authentication against a real registry: a wrong password fails at once, clearly, without
//! a retry storm; a credential for one registry never reaches another port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_oci::{OciLayout, OciPlatform};
use kiln_registry::{pull_image, push_layout, resolve_reference, IgnoreTransfers, RegistryError};
use kiln_tests::registry::{
    registry_options, registry_tools_available, write_test_images, RecordingHttpListener,
    TestRegistry, TEST_PASSWORD, TEST_USERNAME,
};

#[test]
fn a_wrong_password_fails_at_once_without_a_retry_storm() {
    if !registry_tools_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&scratch.path().join("registry")).unwrap();
    let good_config = TestRegistry::write_docker_config(
        &scratch.path().join("good"),
        &[(&registry.address(), TEST_USERNAME, TEST_PASSWORD)],
    )
    .unwrap();
    let layout = OciLayout::open_or_create(&scratch.path().join("layout")).unwrap();
    write_test_images(&layout, scratch.path(), 4096).unwrap();
    let destination = format!("{}/kiln", registry.address());
    push_layout(
        &layout,
        &destination,
        Some("amd64"),
        &registry_options(&registry, Some(&good_config)),
        Arc::new(IgnoreTransfers),
    )
    .unwrap();

    let bad_config = TestRegistry::write_docker_config(
        &scratch.path().join("bad"),
        &[(&registry.address(), TEST_USERNAME, "wrong")],
    )
    .unwrap();
    let options = registry_options(&registry, Some(&bad_config));
    let requests_before = registry.request_lines().len();
    let started = Instant::now();
    let error = resolve_reference(
        &format!("{destination}/kiln-test:1.0--amd64"),
        OciPlatform::LinuxAmd64,
        &options,
    )
    .unwrap_err();
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(300)); // let the access log catch up
    let requests = registry.request_lines().len() - requests_before;
    let message = error.to_string();
    eprintln!("{message}\n{requests} requests, {elapsed:?}");
    assert!(
        matches!(
            error,
            RegistryError::AuthenticationFailed { status: 401, .. }
        ),
        "{error:?}"
    );
    assert!(
        message.starts_with(&format!(
            "authentication to {} failed for repository kiln/kiln-test (401)",
            registry.address()
        )),
        "{message}"
    );
    assert!(
        message.contains(&bad_config.display().to_string()),
        "{message}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "an auth failure must not wait for retries: {elapsed:?}"
    );
    assert!(
        requests <= 3,
        "a wrong password must not be retried: {requests} requests"
    );

    // The same for a push, and for a pull: clear error, nothing retried, nothing stored.
    let pulled = OciLayout::open_or_create(&scratch.path().join("pulled")).unwrap();
    let error = pull_image(
        &format!("{destination}/kiln-test:1.0--amd64"),
        OciPlatform::LinuxAmd64,
        &pulled,
        &options,
        false,
        Arc::new(IgnoreTransfers),
    )
    .unwrap_err();
    assert!(
        matches!(error, RegistryError::AuthenticationFailed { .. }),
        "{error:?}"
    );
    let error = push_layout(
        &layout,
        &destination,
        Some("amd64"),
        &options,
        Arc::new(IgnoreTransfers),
    )
    .unwrap_err();
    assert!(
        matches!(error, RegistryError::AuthenticationFailed { .. }),
        "{error:?}"
    );
    assert!(pulled.read_index().unwrap().manifests.is_empty());

    // No credential at all: the error says none was found for this registry.
    let error = resolve_reference(
        &format!("{destination}/kiln-test:1.0--amd64"),
        OciPlatform::LinuxAmd64,
        &registry_options(&registry, None),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains(&format!(
            "no credential for {} was found",
            registry.address()
        )),
        "{error}"
    );
}

#[test]
fn a_credential_for_one_registry_is_not_sent_to_another_port() {
    if !registry_tools_available() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start(&scratch.path().join("registry")).unwrap();
    let listener = RecordingHttpListener::start().unwrap();
    let other = format!("127.0.0.1:{}", listener.port);
    // Credentials for the real registry A, and one for 127.0.0.1 without a port.
    let config = TestRegistry::write_docker_config(
        &scratch.path().join("docker"),
        &[
            (&registry.address(), TEST_USERNAME, TEST_PASSWORD),
            ("127.0.0.1", "portless", "secret-for-port-443"),
        ],
    )
    .unwrap();
    let mut options = registry_options(&registry, Some(&config));
    options.insecure_registries = vec![other.clone()];

    let error = resolve_reference(
        &format!("{other}/kiln/kiln-test:1.0"),
        OciPlatform::LinuxAmd64,
        &options,
    )
    .unwrap_err();
    assert!(
        matches!(error, RegistryError::AuthenticationFailed { .. }),
        "{error:?}"
    );
    let recorded = listener.recorded();
    eprintln!("{} requests reached {other}: {recorded:#?}", recorded.len());
    assert!(!recorded.is_empty(), "the client did talk to {other}");
    for request in &recorded {
        assert!(
            !request.to_ascii_lowercase().contains("authorization:"),
            "a credential reached {other}:\n{request}"
        );
    }

    // Control: with a credential for the listener itself, the listener does see it, so the
    // check above could fail.
    let own = TestRegistry::write_docker_config(
        &scratch.path().join("own"),
        &[(&other, "listener-user", "listener-password")],
    )
    .unwrap();
    let mut options = registry_options(&registry, Some(&own));
    options.insecure_registries = vec![other.clone()];
    let _ = resolve_reference(
        &format!("{other}/kiln/kiln-test:1.0"),
        OciPlatform::LinuxAmd64,
        &options,
    )
    .unwrap_err();
    assert!(listener.recorded().iter().any(|request| request
        .to_ascii_lowercase()
        .contains("authorization: basic")));

    // HTTPS is the default: without `insecure`, the plain-HTTP listener is a TLS error, not retried.
    let options = registry_options(&registry, Some(&config));
    let error = resolve_reference(
        &format!("{other}/kiln/kiln-test:1.0"),
        OciPlatform::LinuxAmd64,
        &options,
    )
    .unwrap_err();
    eprintln!("{error}");
    assert!(matches!(error, RegistryError::Tls { .. }), "{error:?}");
}
