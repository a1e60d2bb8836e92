//! A running QEMU: its serial console copied byte for byte into a log file and rendered
//! into lines (see [`crate::console`]) that marker checks consume, its stderr in a second
//! file.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::console::ConsoleLines;
use crate::markers::{Feed, FoundMarker, MarkerChecker};
use crate::qemu::QemuCommand;
use crate::SmokeError;

#[derive(Debug, Default)]
struct ConsoleState {
    /// Complete rendered lines, with the time since QEMU started.
    lines: Vec<(Duration, String)>,
    rendering: ConsoleLines,
    /// When the console last printed anything (since QEMU started).
    last_output: Duration,
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
    /// A marker appeared before one it must follow: `problem` names both, `excerpt` is the
    /// console from the last marker found to the line that came too early.
    OutOfOrder {
        problem: String,
        excerpt: String,
    },
    /// The console printed nothing for this long (see [`STALL_TIMEOUT_ENVIRONMENT`]).
    Stalled(Duration),
}

/// Seconds of console silence after which a boot is reported as stalled (default 240: a
/// TCG boot on a loaded machine prints something every few seconds, iPXE draws its download
/// progress, and no step of kiln's images is silent for minutes).
pub const STALL_TIMEOUT_ENVIRONMENT: &str = "KILN_SMOKE_STALL_TIMEOUT_SECS";

/// One QEMU process. Dropping it kills QEMU.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    started: Instant,
    console: Arc<Console>,
    reader: Option<JoinHandle<()>>,
    /// Next line the marker checks have not consumed.
    cursor: usize,
    /// The line of the last marker found, where an out-of-order excerpt starts.
    last_found_line: usize,
    stall_timeout: Duration,
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
                let now = started.elapsed();
                if read == 0 {
                    if let Some(line) = state.rendering.finish() {
                        state.lines.push((now, line));
                    }
                    state.closed = true;
                    shared.changed.notify_all();
                    return;
                }
                let _ = log.write_all(&buffer[..read]);
                let _ = log.flush();
                state.last_output = now;
                let lines = state.rendering.push(&buffer[..read]);
                state
                    .lines
                    .extend(lines.into_iter().map(|line| (now, line)));
                shared.changed.notify_all();
            }
        });
        Ok(Vm {
            child,
            started,
            console,
            reader: Some(reader),
            cursor: 0,
            last_found_line: 0,
            stall_timeout: crate::timeout_from_env(STALL_TIMEOUT_ENVIRONMENT, 240),
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
    /// line appears, a marker comes out of order, QEMU exits, the console stays silent for
    /// the stall timeout or `timeout` passes. `on_found` sees each marker as it comes.
    pub fn expect(
        &mut self,
        checker: &mut MarkerChecker,
        timeout: Duration,
        on_found: &mut dyn FnMut(&FoundMarker),
    ) -> WaitOutcome {
        let deadline = Instant::now() + timeout;
        loop {
            let (new_lines, closed, last_output) = {
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
                (
                    state.lines[self.cursor..].to_vec(),
                    state.closed,
                    state.last_output,
                )
            };
            for (at, line) in new_lines {
                let line_index = self.cursor;
                self.cursor += 1;
                for change in checker.feed(&line, at) {
                    match change {
                        Feed::Found(found) => {
                            self.last_found_line = line_index;
                            on_found(&found)
                        }
                        Feed::Complete(found) => {
                            self.last_found_line = line_index;
                            on_found(&found);
                            return WaitOutcome::Complete;
                        }
                        Feed::Fatal(line) => return WaitOutcome::Fatal(line),
                        Feed::OutOfOrder(missing) => {
                            return WaitOutcome::OutOfOrder {
                                problem: missing.to_string(),
                                excerpt: self.console_lines(self.last_found_line, line_index + 1),
                            }
                        }
                    }
                }
            }
            if closed {
                let status = self.wait_for_exit(Duration::from_secs(5));
                return WaitOutcome::QemuExited(match status {
                    Some(status) => status.to_string(),
                    None => "QEMU closed its console".to_string(),
                });
            }
            let silent = self.started.elapsed().saturating_sub(last_output);
            if silent >= self.stall_timeout {
                return WaitOutcome::Stalled(silent);
            }
            if Instant::now() >= deadline {
                return WaitOutcome::TimedOut(timeout);
            }
        }
    }

    /// Sets how long the console may stay silent before [`Vm::expect`] reports a stall.
    pub fn set_stall_timeout(&mut self, stall_timeout: Duration) {
        self.stall_timeout = stall_timeout;
    }

    /// Rendered console lines `from..to` (at most the last 40 of them), for messages.
    fn console_lines(&self, from: usize, to: usize) -> String {
        let state = self.console.state.lock().expect("console lock");
        let to = to.min(state.lines.len());
        let from = from.max(to.saturating_sub(40)).min(to);
        state.lines[from..to]
            .iter()
            .map(|(_, line)| line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Makes the next [`Vm::expect`] read the console from its first line again: for a plan
    /// whose markers interleave with those of a plan already checked (a crashing service's
    /// restarts begin before `kiln: ready`).
    pub fn rewind(&mut self) {
        self.cursor = 0;
        self.last_found_line = 0;
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
        let pending = state.rendering.pending();
        if !pending.is_empty() {
            tail.push(pending);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markers::{Marker, MarkerPlan};

    /// A real QEMU whose CPU never starts (`-S`): its console stays silent, and the wait
    /// ends as a stall after the stall timeout, not at the (much longer) boot timeout.
    #[test]
    #[ignore = "slow: starts QEMU (qemu-system-x86)"]
    fn a_silent_console_is_reported_as_stalled_long_before_the_timeout() {
        let work = tempfile::tempdir().unwrap();
        let command = QemuCommand {
            program: "qemu-system-x86_64",
            arguments: [
                "-S",
                "-accel",
                "tcg",
                "-nodefaults",
                "-nographic",
                "-monitor",
                "none",
                "-serial",
                "stdio",
            ]
            .iter()
            .map(Into::into)
            .collect(),
            package: "qemu-system-x86",
        };
        let mut vm = Vm::start(&command, &work.path().join("console.log")).unwrap();
        vm.set_stall_timeout(Duration::from_secs(2));
        let mut checker = MarkerChecker::new(MarkerPlan::default().then(Marker::kernel_started()));
        let started = Instant::now();
        let outcome = vm.expect(&mut checker, Duration::from_secs(120), &mut |_| {});
        assert!(
            matches!(outcome, WaitOutcome::Stalled(silent) if silent >= Duration::from_secs(2)),
            "{outcome:?}; QEMU stderr: {}",
            vm.qemu_stderr()
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
    }
}
