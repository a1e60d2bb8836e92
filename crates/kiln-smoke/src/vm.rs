//! A running QEMU: its serial console copied byte for byte into a log file and split into
//! lines that marker checks consume, its stderr in a second file.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::markers::{Feed, FoundMarker, MarkerChecker};
use crate::qemu::QemuCommand;
use crate::SmokeError;

#[derive(Debug, Default)]
struct ConsoleState {
    /// Complete lines, `\r` removed, with the time since QEMU started.
    lines: Vec<(Duration, String)>,
    partial: Vec<u8>,
    /// QEMU closed its stdout (it exited).
    closed: bool,
}

#[derive(Debug, Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

/// How waiting for markers ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every marker of the plan was seen.
    Complete,
    /// A fatal line (kernel panic, `kiln: error:`).
    Fatal(String),
    /// QEMU exited first.
    QemuExited(String),
    TimedOut(Duration),
}

/// One QEMU process. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    started: Instant,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    /// Next line the marker checks have not consumed.
    cursor: usize,
    exit_status: Option<ExitStatus>,
    pub console_log: PathBuf,
    pub stderr_log: PathBuf,
}

impl Vm {
    /// Starts QEMU; the console goes to `console_log`, QEMU's own messages to
    /// `console_log` with the extension `.qemu-stderr`.
    pub fn start(command: &QemuCommand, console_log: &Path) -> Result<Vm, SmokeError> {
        let stderr_log = console_log.with_extension("qemu-stderr");
        let mut log =
            fs::File::create(console_log).map_err(SmokeError::io("creating", console_log))?;
        let stderr_file =
            fs::File::create(&stderr_log).map_err(SmokeError::io("creating", &stderr_log))?;
        let mut child = Command::new(command.program)
            .args(&command.arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file))
            .spawn()
            .map_err(|source| SmokeError::Spawn {
                program: command.program.to_string(),
                package: command.package,
                source,
            })?;
        let started = Instant::now();
        let console = Arc::new(Console::default());
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let shared = Arc::clone(&console);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            loop {
                let read = match stdout.read(&mut buffer) {
                    Ok(0) | Err(_) => 0,
                    Ok(read) => read,
                };
                let mut state = shared.state.lock().expect("console lock");
                if read == 0 {
                    if !state.partial.is_empty() {
                        let line = take_line(&mut state.partial);
                        state.lines.push((started.elapsed(), line));
                    }
                    state.closed = true;
                    shared.changed.notify_all();
                    return;
                }
                let _ = log.write_all(&buffer[..read]);
                let _ = log.flush();
                for byte in &buffer[..read] {
                    if *byte == b'\n' {
                        let line = take_line(&mut state.partial);
                        state.lines.push((started.elapsed(), line));
                    } else {
                        state.partial.push(*byte);
                    }
                }
                shared.changed.notify_all();
            }
        });
        Ok(Vm {
            child,
            started,
            console,
            reader: Some(reader),
            cursor: 0,
            exit_status: None,
            console_log: console_log.to_path_buf(),
            stderr_log,
        })
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Feeds console lines not consumed yet to `checker` until its plan is complete, a fatal
    /// line appears, QEMU exits or `timeout` passes. `on_found` sees each marker as it comes.
    pub fn expect(
        &mut self,
        checker: &mut MarkerChecker,
        timeout: Duration,
        on_found: &mut dyn FnMut(&FoundMarker),
    ) -> WaitOutcome {
        let deadline = Instant::now() + timeout;
        loop {
            let (new_lines, closed) = {
                let state = self.console.state.lock().expect("console lock");
                let state = if state.lines.len() > self.cursor || state.closed {
                    state
                } else {
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(500));
                    self.console
                        .changed
                        .wait_timeout(state, wait)
                        .expect("console lock")
                        .0
                };
                (state.lines[self.cursor..].to_vec(), state.closed)
            };
            for (at, line) in new_lines {
                self.cursor += 1;
                match checker.feed(&line, at) {
                    Feed::Nothing => {}
                    Feed::Found(found) => on_found(&found),
                    Feed::Complete(found) => {
                        on_found(&found);
                        return WaitOutcome::Complete;
                    }
                    Feed::Fatal(line) => return WaitOutcome::Fatal(line),
                }
            }
            if closed {
                let status = self.wait_for_exit(Duration::from_secs(5));
                return WaitOutcome::QemuExited(match status {
                    Some(status) => status.to_string(),
                    None => "QEMU closed its console".to_string(),
                });
            }
            if Instant::now() >= deadline {
                return WaitOutcome::TimedOut(timeout);
            }
        }
    }

    /// Makes the next [`Vm::expect`] read the console from its first line again: for a plan
    /// whose markers interleave with those of a plan already checked (a crashing service's
    /// restarts begin before `kiln: ready`).
    pub fn rewind(&mut self) {
        self.cursor = 0;
    }

    /// Whether any console line so far contains `needle`.
    pub fn console_contains(&self, needle: &str) -> bool {
        self.console
            .state
            .lock()
            .expect("console lock")
            .lines
            .iter()
            .any(|(_, line)| line.contains(needle))
    }

    /// Waits until QEMU exits or `timeout` passes.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status {
                return Some(status);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit_status = Some(status);
                self.finish_reader();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills QEMU (if it still runs) and waits for it.
    pub fn kill(&mut self) {
        if self.exit_status.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit_status = Some(status);
            }
        }
        self.finish_reader();
    }

    fn finish_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// The last `count` console lines (and an unfinished one), for failure messages.
    pub fn console_tail(&self, count: usize) -> String {
        let state = self.console.state.lock().expect("console lock");
        let start = state.lines.len().saturating_sub(count);
        let mut tail: Vec<String> = state.lines[start..]
            .iter()
            .map(|(_, line)| line.clone())
            .collect();
        if !state.partial.is_empty() {
            tail.push(String::from_utf8_lossy(&state.partial).into_owned());
        }
        tail.join("\n")
    }

    /// QEMU's own stderr so far (bad options, host-forward failures).
    pub fn qemu_stderr(&self) -> String {
        fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The line as a terminal would show it: a backspace erases the character before it
/// (iPXE draws download percentages that way: `initramfs-x86_64... 68%^H^H^H^H    ^H^H^H^H ok`),
/// carriage returns are dropped.
fn take_line(partial: &mut Vec<u8>) -> String {
    let bytes = std::mem::take(partial);
    let mut rendered = String::with_capacity(bytes.len());
    for character in String::from_utf8_lossy(&bytes).chars() {
        match character {
            '\u{8}' => {
                rendered.pop();
            }
            '\r' => {}
            other => rendered.push(other),
        }
    }
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_rendered_like_a_terminal_would_show_them() {
        let mut raw = b"initramfs-x86_64... 68%\x08\x08\x08\x08    \x08\x08\x08\x08 ok\r".to_vec();
        assert_eq!(take_line(&mut raw), "initramfs-x86_64... ok");
        assert!(raw.is_empty());
        let mut raw = b"kiln: ready\r".to_vec();
        assert_eq!(take_line(&mut raw), "kiln: ready");
    }
}
