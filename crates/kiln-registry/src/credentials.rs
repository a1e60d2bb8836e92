//! Registry credentials, each scoped to exactly one registry (`host` or `host:port`).
//!
//! **Architecture Invariant:** a credential is only ever handed to the client that talks to
//! the registry it was stored for, compared on the normalised `host:port` text: a
//! credential for `127.0.0.1:5000` is not used for `127.0.0.1:5001` nor for `127.0.0.1`.
//! Tests: `credentials::tests::lookup_is_exact_on_host_and_port` and
//! `tests/registry_auth.rs::a_credential_for_one_registry_is_not_sent_to_another_port`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::RegistryError;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RegistryCredential")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Credentials keyed by normalised registry (`host:port`), and where they came from.
#[derive(Clone, Debug, Default)]
pub struct RegistryCredentials {
    by_registry: BTreeMap<String, RegistryCredential>,
    source_description: String,
}

#[derive(Deserialize)]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, DockerConfigAuth>,
}

#[derive(Deserialize)]
struct DockerConfigAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The registry part of a Docker config `auths` key or a reference, normalised: scheme and
/// path dropped, lowercase, Docker Hub's aliases folded into `index.docker.io` (the name
/// `oci-client` resolves `docker.io` to).
pub fn normalise_registry_name(text: &str) -> String {
    let without_scheme = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text);
    let host_and_port = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host_and_port.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "index.docker.io".to_owned(),
        _ => host_and_port,
    }
}

impl RegistryCredentials {
    /// No credentials: every registry is accessed anonymously.
    pub fn none() -> Self {
        Self {
            by_registry: BTreeMap::new(),
            source_description: "no credentials file (none was given or found)".to_owned(),
        }
    }

    /// The Docker config file kiln reads by default: `$DOCKER_CONFIG/config.json` if
    /// `DOCKER_CONFIG` is set, else `$HOME/.docker/config.json`.
    pub fn default_docker_config_path() -> Option<PathBuf> {
        if let Some(directory) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(directory).join("config.json"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker").join("config.json"))
    }

    /// Reads the default Docker config file; a missing file means no credentials.
    pub fn from_default_docker_config() -> Result<Self, RegistryError> {
        match Self::default_docker_config_path() {
            Some(path) if path.exists() => Self::from_docker_config_file(&path),
            _ => Ok(Self::none()),
        }
    }

    /// Reads the `auths` of a Docker config file: each entry has `auth`
    /// (base64 of `user:password`) or `username` and `password`. Entries with neither
    /// (credential helpers keep their secrets elsewhere) are skipped.
    pub fn from_docker_config_file(path: &Path) -> Result<Self, RegistryError> {
        let error = |reason: String| RegistryError::DockerConfig {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|source| error(source.to_string()))?;
        let file: DockerConfigFile =
            serde_json::from_slice(&bytes).map_err(|source| error(source.to_string()))?;
        let mut by_registry = BTreeMap::new();
        for (key, entry) in file.auths {
            let credential = if let Some(encoded) = entry.auth.filter(|encoded| !encoded.is_empty())
            {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|source| {
                        error(format!("auths.{key:?}.auth is not base64: {source}"))
                    })?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| error(format!("auths.{key:?}.auth is not UTF-8")))?;
                let (username, password) = decoded.split_once(':').ok_or_else(|| {
                    error(format!(
                        "auths.{key:?}.auth does not decode to user:password"
                    ))
                })?;
                RegistryCredential {
                    username: username.to_owned(),
                    password: password.to_owned(),
                }
            } else if let (Some(username), Some(password)) = (entry.username, entry.password) {
                RegistryCredential { username, password }
            } else {
                continue;
            };
            by_registry.insert(normalise_registry_name(&key), credential);
        }
        Ok(Self {
            by_registry,
            source_description: path.display().to_string(),
        })
    }

    /// Adds (or replaces) the credential for `registry` (`host` or `host:port`).
    pub fn insert(&mut self, registry: &str, credential: RegistryCredential) {
        if self.by_registry.is_empty() {
            self.source_description = "the credentials given on the command line".to_owned();
        }
        self.by_registry
            .insert(normalise_registry_name(registry), credential);
    }

    /// The credential stored for exactly this registry (`host:port` compared as text after
    /// normalisation), if any.
    pub fn for_registry(&self, registry: &str) -> Option<&RegistryCredential> {
        self.by_registry.get(&normalise_registry_name(registry))
    }

    /// Where these credentials came from, for error messages.
    pub fn source_description(&self) -> &str {
        &self.source_description
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials_from(json: &str) -> RegistryCredentials {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        RegistryCredentials::from_docker_config_file(&path).unwrap()
    }

    #[test]
    fn auth_and_username_password_entries_are_read() {
        // "alice:s3cret:with:colons" in base64.
        let credentials = credentials_from(
            r#"{"auths":{"https://127.0.0.1:5000/v1/":{"auth":"YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"},
                         "registry.example:443":{"username":"bob","password":"pw"},
                         "helper.example":{}},
                "credsStore":"desktop"}"#,
        );
        let alice = credentials.for_registry("127.0.0.1:5000").unwrap();
        assert_eq!(
            (alice.username.as_str(), alice.password.as_str()),
            ("alice", "s3cret:with:colons")
        );
        assert_eq!(
            credentials
                .for_registry("registry.example:443")
                .unwrap()
                .username,
            "bob"
        );
        assert!(credentials.for_registry("helper.example").is_none());
        assert!(!format!("{alice:?}").contains("s3cret"));
    }

    #[test]
    fn lookup_is_exact_on_host_and_port() {
        let credentials = credentials_from(
            r#"{"auths":{"127.0.0.1:5000":{"username":"a","password":"b"},"docker.io":{"username":"d","password":"e"}}}"#,
        );
        assert!(credentials.for_registry("127.0.0.1:5000").is_some());
        assert!(credentials.for_registry("127.0.0.1:5001").is_none());
        assert!(credentials.for_registry("127.0.0.1").is_none());
        assert!(credentials.for_registry("127.0.0.2:5000").is_none());
        assert_eq!(
            credentials
                .for_registry("index.docker.io")
                .unwrap()
                .username,
            "d"
        );
    }

    #[test]
    fn malformed_entries_name_the_file_and_key() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"r:1":{"auth":"bm8tY29sb24="}}}"#).unwrap();
        let message = RegistryCredentials::from_docker_config_file(&path)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("config.json")
                && message.contains("\"r:1\"")
                && message.contains("user:password"),
            "{message}"
        );
    }
}
