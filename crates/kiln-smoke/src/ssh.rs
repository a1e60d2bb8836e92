//! A key made for one run (`dropbearkey`), handed to the image's sshd module on the kernel
//! command line, and commands run with `dbclient` through QEMU's forwarded port.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::SmokeError;

/// An ed25519 key pair in dropbear's format, in a directory that is also `dbclient`'s HOME
/// (so nothing is read from or written to the user's `~/.ssh`).
#[derive(Debug, Clone)]
pub struct SshKey {
    pub private_key: PathBuf,
    /// The `authorized_keys` line.
    pub public_line: String,
    pub home: PathBuf,
}

impl SshKey {
    pub fn generate(directory: &Path) -> Result<SshKey, SmokeError> {
        std::fs::create_dir_all(directory).map_err(SmokeError::io("creating", directory))?;
        let private_key = directory.join("id_ed25519");
        let _ = std::fs::remove_file(&private_key);
        let output = Command::new("dropbearkey")
            .args(["-t", "ed25519", "-f"])
            .arg(&private_key)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SmokeError::Spawn {
                program: "dropbearkey".to_string(),
                package: "dropbear-bin",
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(SmokeError::Tool {
                tool: "dropbearkey",
                message: format!(
                    "{}: {}{}",
                    output.status,
                    stdout,
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        let public_line = stdout
            .lines()
            .find(|line| line.starts_with("ssh-ed25519 "))
            .ok_or_else(|| SmokeError::Tool {
                tool: "dropbearkey",
                message: format!("no public key line in its output:\n{stdout}"),
            })?;
        // The comment is `user@host`: keep only type and key, the image does not need the rest.
        let public_line = public_line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        Ok(SshKey {
            private_key,
            public_line,
            home: directory.to_path_buf(),
        })
    }

    /// `sshd.authorized_key=…`: the line in URL-safe base64 without padding (the sshd
    /// module's format: spaces, `+`, `/` and `=` would not survive the command line).
    pub fn cmdline_argument(&self) -> String {
        authorized_key_argument(&self.public_line)
    }
}

pub fn authorized_key_argument(public_line: &str) -> String {
    format!(
        "sshd.authorized_key={}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_line.as_bytes())
    )
}

/// What a remote command printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOutput {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` as root on 127.0.0.1:`port` once, killed after `timeout`.
pub fn run_command(
    key: &SshKey,
    port: u16,
    command: &str,
    timeout: Duration,
) -> Result<RemoteOutput, SmokeError> {
    let mut child = Command::new("dbclient")
        .args(["-y", "-y", "-T", "-i"])
        .arg(&key.private_key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", command])
        .env("HOME", &key.home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SmokeError::Spawn {
            program: "dbclient".to_string(),
            package: "dropbear-bin",
            source,
        })?;
    let mut stdout_pipe = child.stdout.take().expect("piped");
    let mut stderr_pipe = child.stderr.take().expect("piped");
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout_pipe.read_to_string(&mut text);
        text
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(SmokeError::io("waiting for", "dbclient"))?
        {
            break Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout_reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    Ok(match status {
        Some(status) => RemoteOutput {
            success: status.success(),
            status: status.to_string(),
            stdout,
            stderr,
        },
        None => RemoteOutput {
            success: false,
            status: format!("killed after {}s", timeout.as_secs()),
            stdout,
            stderr,
        },
    })
}

/// Runs `command` until it succeeds (sshd may still be generating its host keys, or not be
/// listening yet) or `total` passes; returns the last attempt and the number of attempts.
pub fn run_command_with_retries(
    key: &SshKey,
    port: u16,
    command: &str,
    total: Duration,
) -> Result<(RemoteOutput, u32), SmokeError> {
    let deadline = Instant::now() + total;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let output = run_command(key, port, command, remaining.min(Duration::from_secs(90)))?;
        if output.success || Instant::now() >= deadline {
            return Ok((output, attempts));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for QEMU's `hostfwd`.
pub fn free_local_port() -> Result<u16, SmokeError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(SmokeError::io("binding", "127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(SmokeError::io("reading the address of", "127.0.0.1:0"))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cmdline_argument_is_url_safe_base64_without_padding() {
        // `>>?` encodes to `Pj4_` in URL-safe base64 (`Pj4/` in the standard alphabet).
        assert_eq!(authorized_key_argument(">>?"), "sshd.authorized_key=Pj4_");
        assert_eq!(authorized_key_argument("ab"), "sshd.authorized_key=YWI");
    }
}
