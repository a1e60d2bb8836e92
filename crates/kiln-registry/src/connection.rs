//! Settings for talking to registries, the `oci-client` client built from them, and the
//! retry loop every network operation goes through.
//!
//! **Retry rule:** 5xx answers, connection errors, timeouts and bodies cut short are retried
//! with exponential backoff (`initial_backoff`, doubled each time up to `max_backoff`) until
//! `max_attempts`; 4xx answers (401 above all), TLS failures and digest mismatches are
//! never retried. Test: `tests/registry_auth.rs::a_wrong_password_fails_at_once_without_a_retry_storm`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::credentials::RegistryCredentials;
use crate::error::RegistryError;

/// Proxies for registry traffic, as `curl` and Go read them from the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// For `https://` registries (`HTTPS_PROXY`).
    pub https_proxy: Option<String>,
    /// For `http://` (insecure) registries (`HTTP_PROXY`).
    pub http_proxy: Option<String>,
    /// Hosts that bypass the proxy (`NO_PROXY`, comma-separated).
    pub no_proxy: Option<String>,
}

impl ProxySettings {
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` (upper case first, then lower case).
    pub fn from_environment() -> Self {
        let read = |upper: &str, lower: &str| {
            std::env::var(upper)
                .ok()
                .or_else(|| std::env::var(lower).ok())
                .filter(|value| !value.is_empty())
        };
        Self {
            https_proxy: read("HTTPS_PROXY", "https_proxy"),
            http_proxy: read("HTTP_PROXY", "http_proxy"),
            no_proxy: read("NO_PROXY", "no_proxy"),
        }
    }
}

/// When and how often to retry transient failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// Everything that decides how kiln talks to registries.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Registries (`host:port`) reached over plain HTTP; every other one needs HTTPS.
    pub insecure_registries: Vec<String>,
    /// PEM files whose certificates are trusted in addition to the system roots.
    pub extra_ca_certificate_files: Vec<PathBuf>,
    /// Credentials, each for one registry.
    pub credentials: RegistryCredentials,
    /// Proxies.
    pub proxy: ProxySettings,
    /// Blobs transferred at once.
    pub max_concurrent_transfers: usize,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Connecting (TCP and TLS) gives up after this long.
    pub connect_timeout: Duration,
    /// A read that receives nothing for this long fails (and is retried).
    pub read_timeout: Duration,
}

impl Default for RegistryOptions {
    /// HTTPS only, system roots, no credentials, no proxy, 4 transfers, default retries.
    fn default() -> Self {
        Self {
            insecure_registries: Vec::new(),
            extra_ca_certificate_files: Vec::new(),
            credentials: RegistryCredentials::none(),
            proxy: ProxySettings::default(),
            max_concurrent_transfers: 4,
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// A client bound to one registry and repository, with the credential for that registry
/// only.
pub(crate) struct RepositoryConnection {
    pub(crate) client: Client,
    pub(crate) authentication: RegistryAuth,
    pub(crate) registry: String,
    pub(crate) repository: String,
    pub(crate) credential_source: String,
    pub(crate) retry: RetryPolicy,
}

impl std::fmt::Debug for RepositoryConnection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RepositoryConnection")
            .field("registry", &self.registry)
            .field("repository", &self.repository)
            .finish()
    }
}

/// The outcome of one attempt, as the retry loop sees it.
pub(crate) enum AttemptFailure {
    /// Worth another attempt (5xx, connection, timeout, short body).
    Transient(String),
    /// Final.
    Permanent(RegistryError),
}

fn install_crypto_provider() {
    // Several callers may race here; the loser's error only says a provider is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl RepositoryConnection {
    /// A client for `reference`'s registry, with its credential (if any) and nothing else.
    pub(crate) fn open(
        reference: &Reference,
        options: &RegistryOptions,
    ) -> Result<Self, RegistryError> {
        install_crypto_provider();
        let registry = reference.resolve_registry().to_owned();
        let mut extra_root_certificates = Vec::new();
        for path in &options.extra_ca_certificate_files {
            let data = std::fs::read(path).map_err(|source| RegistryError::CaCertificate {
                path: path.clone(),
                reason: source.to_string(),
            })?;
            if !String::from_utf8_lossy(&data).contains("-----BEGIN CERTIFICATE-----") {
                return Err(RegistryError::CaCertificate {
                    path: path.clone(),
                    reason: "no PEM certificate in it".to_owned(),
                });
            }
            extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let configuration = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(options.insecure_registries.clone()),
            extra_root_certificates,
            platform_resolver: None,
            max_concurrent_download: options.max_concurrent_transfers.max(1),
            max_concurrent_upload: options.max_concurrent_transfers.max(1),
            read_timeout: Some(options.read_timeout),
            connect_timeout: Some(options.connect_timeout),
            https_proxy: options.proxy.https_proxy.clone(),
            http_proxy: options.proxy.http_proxy.clone(),
            no_proxy: options.proxy.no_proxy.clone(),
            ..ClientConfig::default()
        };
        // `Client::new` would fall back to a default client on error, silently dropping the CA
        // files and proxies; `try_from` reports it.
        let client =
            Client::try_from(configuration).map_err(|error| RegistryError::ClientSetup {
                registry: registry.clone(),
                reason: error.to_string(),
            })?;
        let authentication = match options.credentials.for_registry(&registry) {
            Some(credential) => {
                RegistryAuth::Basic(credential.username.clone(), credential.password.clone())
            }
            None => RegistryAuth::Anonymous,
        };
        let credential_source = match options.credentials.for_registry(&registry) {
            Some(_) => options.credentials.source_description().to_owned(),
            None => format!("~/.docker/config.json or $DOCKER_CONFIG/config.json (no credential for {registry} was found)"),
        };
        Ok(Self {
            client,
            authentication,
            repository: reference.repository().to_owned(),
            registry,
            credential_source,
            retry: options.retry.clone(),
        })
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retry policy is spent.
    pub(crate) async fn with_retries<T, Attempt, AttemptFuture>(
        &self,
        operation: &str,
        mut attempt: Attempt,
    ) -> Result<T, RegistryError>
    where
        Attempt: FnMut() -> AttemptFuture,
        AttemptFuture: std::future::Future<Output = Result<T, AttemptFailure>>,
    {
        let started = Instant::now();
        let mut backoff = self.retry.initial_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(AttemptFailure::Permanent(error)) => return Err(error),
                Err(AttemptFailure::Transient(last_error)) => {
                    if attempts >= self.retry.max_attempts.max(1) {
                        return Err(RegistryError::Unavailable {
                            registry: self.registry.clone(),
                            repository: self.repository.clone(),
                            operation: operation.to_owned(),
                            attempts,
                            elapsed_seconds: started.elapsed().as_secs_f64(),
                            last_error,
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
    }

    /// Sorts an `oci-client` error into transient or permanent, as a kiln error.
    pub(crate) fn classify(
        &self,
        operation: &'static str,
        what: &str,
        error: OciDistributionError,
    ) -> AttemptFailure {
        let registry = self.registry.clone();
        let repository = self.repository.clone();
        let authentication_failed = |status| {
            AttemptFailure::Permanent(RegistryError::AuthenticationFailed {
                registry: registry.clone(),
                repository: repository.clone(),
                status,
                credential_source: self.credential_source.clone(),
            })
        };
        let denied = |status| {
            AttemptFailure::Permanent(RegistryError::AccessDenied {
                registry: registry.clone(),
                repository: repository.clone(),
                operation,
                status,
                credential_source: self.credential_source.clone(),
            })
        };
        let not_found = || {
            AttemptFailure::Permanent(RegistryError::NotFound {
                registry: registry.clone(),
                repository: repository.clone(),
                what: what.to_owned(),
            })
        };
        let refused = |status: String, message: String| {
            AttemptFailure::Permanent(RegistryError::Refused {
                registry: registry.clone(),
                repository: repository.clone(),
                operation: format!("{operation} of {what}"),
                status,
                message,
            })
        };
        match error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => authentication_failed(401),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> =
                    envelope.errors.iter().map(|error| &error.code).collect();
                if codes
                    .iter()
                    .any(|code| matches!(code, OciErrorCode::Unauthorized))
                {
                    authentication_failed(401)
                } else if codes
                    .iter()
                    .any(|code| matches!(code, OciErrorCode::Denied))
                {
                    denied(403)
                } else if codes.iter().any(|code| {
                    matches!(
                        code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found()
                } else {
                    refused("4xx".to_owned(), envelope.to_string())
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                401 => authentication_failed(401),
                403 => denied(403),
                404 => not_found(),
                500..=599 => AttemptFailure::Transient(format!("{code}: {}", first_line(&message))),
                _ => refused(code.to_string(), first_line(&message)),
            },
            OciDistributionError::RequestError(request_error) => {
                self.classify_request_error(operation, what, &request_error)
            }
            OciDistributionError::IoError(io_error) => {
                AttemptFailure::Transient(io_error.to_string())
            }
            other => refused("-".to_owned(), other.to_string()),
        }
    }

    pub(crate) fn classify_request_error(
        &self,
        operation: &'static str,
        what: &str,
        error: &reqwest::Error,
    ) -> AttemptFailure {
        let chain = error_chain(error);
        if let Some(status) = error.status() {
            let status = status.as_u16();
            return self.classify(
                operation,
                what,
                OciDistributionError::ServerError {
                    code: status,
                    url: String::new(),
                    message: chain,
                },
            );
        }
        let lowercase = chain.to_ascii_lowercase();
        // rustls's words for an unknown CA, a wrong name, or a plain-HTTP server on the port.
        let tls_failure = [
            "certificate",
            "tls",
            "handshake",
            "corrupt message",
            "invalidcontenttype",
            "peer",
        ];
        if tls_failure.iter().any(|word| lowercase.contains(word)) {
            return AttemptFailure::Permanent(RegistryError::Tls {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                reason: chain,
            });
        }
        AttemptFailure::Transient(chain)
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// An error and its causes, joined by `: `.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
