//! A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution 2.8)
//! serving on 127.0.0.1 on a free port, with TLS from a CA made here by the `openssl` CLI
//! and htpasswd (bcrypt, `htpasswd -B`) authentication. Everything lives in a temp dir; the
//! process is killed when the [`TestRegistry`] is dropped. Only 127.0.0.1 is ever contacted.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::run;

pub const TEST_USERNAME: &str = "kiln";
pub const TEST_PASSWORD: &str = "correct horse battery staple";

/// Whether the tools the registry tests need are installed; prints what is missing.
pub fn registry_tools_available() -> bool {
    let missing: Vec<&str> = ["docker-registry", "htpasswd", "openssl", "skopeo"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map_or(true, |output| !output.status.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("skipping: {} not installed (apt-get install docker-registry apache2-utils openssl skopeo)", missing.join(", "));
    }
    missing.is_empty()
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
#[derive(Debug)]
pub struct TestCertificateAuthority {
    pub directory: PathBuf,
    /// `ca.crt`: give it to the client (`--ca-file`, skopeo's `--cert-dir`).
    pub ca_certificate: PathBuf,
    pub server_certificate: PathBuf,
    pub server_key: PathBuf,
}

impl TestCertificateAuthority {
    pub fn create(directory: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(directory)?;
        let ca_key = directory.join("ca.key");
        let ca_certificate = directory.join("ca.crt");
        let server_key = directory.join("server.key");
        let server_request = directory.join("server.csr");
        let server_certificate = directory.join("server.cert");
        let extensions = directory.join("server.ext");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=kiln test CA",
            ])
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca_certificate))?;
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&server_key)
            .arg("-out")
            .arg(&server_request))?;
        fs::write(
            &extensions,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        )?;
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&server_request)
            .arg("-CA")
            .arg(&ca_certificate)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&extensions)
            .arg("-out")
            .arg(&server_certificate))?;
        Ok(Self {
            directory: directory.to_owned(),
            ca_certificate,
            server_certificate,
            server_key,
        })
    }

    /// A directory holding only `ca.crt`, for `skopeo --cert-dir`.
    pub fn skopeo_certificate_directory(&self) -> anyhow::Result<PathBuf> {
        let directory = self.directory.join("skopeo-certs");
        fs::create_dir_all(&directory)?;
        fs::copy(&self.ca_certificate, directory.join("ca.crt"))?;
        Ok(directory)
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `docker-registry serve`.
#[derive(Debug)]
pub struct TestRegistry {
    pub port: u16,
    pub directory: PathBuf,
    pub certificate_authority: TestCertificateAuthority,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl TestRegistry {
    /// Starts a TLS + htpasswd registry in `directory` on a free port.
    pub fn start(directory: &Path) -> anyhow::Result<Self> {
        Self::start_with_authentication(directory, true)
    }

    /// Starts a TLS registry anyone may read and write (no `auth:`), as a public
    /// registry is for pulls.
    pub fn start_anonymous(directory: &Path) -> anyhow::Result<Self> {
        Self::start_with_authentication(directory, false)
    }

    fn start_with_authentication(directory: &Path, authentication: bool) -> anyhow::Result<Self> {
        fs::create_dir_all(directory)?;
        let certificate_authority = TestCertificateAuthority::create(&directory.join("tls"))?;
        let htpasswd_path = directory.join("htpasswd");
        let output =
            run(Command::new("htpasswd").args(["-B", "-b", "-n", TEST_USERNAME, TEST_PASSWORD]))?;
        fs::write(&htpasswd_path, &output.stdout)?;
        let port = free_port();
        let config_path = directory.join("config.yml");
        let storage = directory.join("storage");
        fs::create_dir_all(&storage)?;
        fs::write(
            &config_path,
            format!(
                "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-secret\n  tls:\n    certificate: {certificate}\n    key: {key}\n{auth}",
                storage = storage.display(),
                certificate = certificate_authority.server_certificate.display(),
                key = certificate_authority.server_key.display(),
                auth = if authentication {
                    format!(
                        "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                        htpasswd_path.display()
                    )
                } else {
                    String::new()
                },
            ),
        )?;
        let mut registry = Self {
            port,
            directory: directory.to_owned(),
            certificate_authority,
            config_path,
            log_path: directory.join("registry.log"),
            child: None,
        };
        registry.restart()?;
        Ok(registry)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and storage; returns when it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config_path)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait()? {
                bail!(
                    "docker-registry exited at start ({status}):\n{}",
                    self.log_text()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not listen on {} within 20 s:\n{}",
            self.address(),
            self.log_text()
        )
    }

    /// Kills the process (SIGKILL, as a crash would) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Access-log lines of HTTP requests (one per request the registry answered).
    pub fn request_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|line| line.contains(" HTTP/1.1\" ") || line.contains(" HTTP/2.0\" "))
            .map(str::to_owned)
            .collect()
    }

    /// Where the registry keeps the bytes of blob `hex` (filesystem driver layout).
    pub fn blob_data_path(&self, hex: &str) -> PathBuf {
        self.directory
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A registry started in `scratch/registry`, with a Docker config in `scratch/docker`
    /// holding the test credentials for it: what most registry tests begin with.
    pub fn start_with_credentials(scratch: &Path) -> anyhow::Result<(Self, PathBuf)> {
        let registry = Self::start(&scratch.join("registry"))?;
        let docker_config = Self::write_docker_config(
            &scratch.join("docker"),
            &[(&registry.address(), TEST_USERNAME, TEST_PASSWORD)],
        )?;
        Ok((registry, docker_config))
    }

    /// A Docker config directory whose `config.json` holds `username:password` for
    /// `registry`, in the `auth` (base64) form.
    pub fn write_docker_config(
        directory: &Path,
        entries: &[(&str, &str, &str)],
    ) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(directory)?;
        let auths: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(registry, username, password)| {
                ((*registry).to_owned(), serde_json::json!({ "auth": base64_encode(format!("{username}:{password}").as_bytes()) }))
            })
            .collect();
        let path = directory.join("config.json");
        fs::write(
            &path,
            serde_json::to_vec_pretty(&serde_json::json!({ "auths": auths }))?,
        )?;
        Ok(path)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Standard base64 with padding (for Docker config `auth` entries).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::new();
    for chunk in bytes.chunks(3) {
        let value = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |value, (index, byte)| {
                value | u32::from(*byte) << (16 - 8 * index)
            });
        for index in 0..4 {
            if index <= chunk.len() {
                encoded.push(char::from(
                    ALPHABET[usize::try_from(value >> (18 - 6 * index) & 63).unwrap()],
                ));
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

/// A plain-HTTP listener on 127.0.0.1 that records every request's head and answers
/// `401` with a Basic challenge: a real socket standing where a second registry would be,
/// to see which headers a client sends it.
#[derive(Debug)]
pub struct RecordingHttpListener {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingHttpListener {
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread_requests, thread_stop) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !thread_stop.load(std::sync::atomic::Ordering::SeqCst)
                && Instant::now() < deadline
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let requests = thread_requests.clone();
                        std::thread::spawn(move || serve_recorded_connection(stream, &requests));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            port,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    pub fn recorded(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_recorded_connection(stream: TcpStream, requests: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            head.push_str(&line);
        }
        let content_length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|value| value.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0_u8; content_length];
        let _ = reader.read_exact(&mut body);
        requests.lock().unwrap().push(head);
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
        let response = format!(
            "HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Basic realm=\"recording\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if writer
            .write_all(response.as_bytes())
            .and_then(|()| writer.write_all(body))
            .is_err()
        {
            return;
        }
    }
}

impl Drop for RecordingHttpListener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Registry options for `registry`: its CA trusted, credentials from `docker_config` (if
/// any), quick retries so failure tests stay short.
pub fn registry_options(
    registry: &TestRegistry,
    docker_config: Option<&Path>,
) -> kiln_registry::RegistryOptions {
    let credentials = match docker_config {
        Some(path) => kiln_registry::RegistryCredentials::from_docker_config_file(path).unwrap(),
        None => kiln_registry::RegistryCredentials::none(),
    };
    kiln_registry::RegistryOptions {
        extra_ca_certificate_files: vec![registry.certificate_authority.ca_certificate.clone()],
        credentials,
        retry: kiln_registry::RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
        },
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        ..kiln_registry::RegistryOptions::default()
    }
}

/// Images written by kiln-oci into a layout: one per platform from the same files, and an
/// image index over both, named `kiln-test--1.0--amd64`, `kiln-test--1.0--arm64` and
/// `kiln-multi--1.0`.
#[derive(Debug)]
pub struct TestImages {
    pub amd64: kiln_oci::BuiltImage,
    pub arm64: kiln_oci::BuiltImage,
    pub index: kiln_oci::OciDescriptor,
}

pub fn write_test_images(
    layout: &kiln_oci::OciLayout,
    scratch: &Path,
    payload_bytes: usize,
) -> anyhow::Result<TestImages> {
    use kiln_oci::oci_json::{canonical_json_bytes, OciImageIndex, IMAGE_INDEX_MEDIA_TYPE};
    let files = scratch.join("image-files");
    fs::create_dir_all(files.join("usr/bin"))?;
    fs::write(
        files.join("usr/bin/payload"),
        crate::pseudo_random_bytes(42, payload_bytes),
    )?;
    fs::write(files.join("etc-motd"), b"kiln registry test\n")?;
    let epoch = kiln_oci::SourceDateEpoch::from_seconds(1_700_000_000);
    let description = kiln_oci::ImageDescription {
        title: "kiln-test".to_owned(),
        version: "1.0".to_owned(),
        created_by: "kiln registry tests".to_owned(),
    };
    let amd64 = kiln_oci::image_from_directory(
        layout,
        &files,
        &description,
        kiln_oci::OciPlatform::LinuxAmd64,
        epoch,
    )?;
    let arm64 = kiln_oci::image_from_directory(
        layout,
        &files,
        &description,
        kiln_oci::OciPlatform::LinuxArm64,
        epoch,
    )?;
    layout.add_manifest_ref("kiln-test--1.0--amd64", &amd64.manifest)?;
    layout.add_manifest_ref("kiln-test--1.0--arm64", &arm64.manifest)?;
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(IMAGE_INDEX_MEDIA_TYPE.to_owned()),
        manifests: vec![amd64.manifest.clone(), arm64.manifest.clone()],
        annotations: Default::default(),
        other_fields: Default::default(),
    };
    let index_descriptor =
        layout.put_blob_bytes(IMAGE_INDEX_MEDIA_TYPE, &canonical_json_bytes(&index))?;
    layout.add_manifest_ref("kiln-multi--1.0", &index_descriptor)?;
    Ok(TestImages {
        amd64,
        arm64,
        index: index_descriptor,
    })
}

/// Blob files (`blobs/sha256/*`) of a layout, temp files excluded.
pub fn layout_blob_names(layout_directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(layout_directory.join("blobs/sha256"))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|name| !name.starts_with('.'));
    names.sort();
    names
}
