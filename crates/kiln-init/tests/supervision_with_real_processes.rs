//! Supervision with real child processes (`/bin/sh`, `sleep`), run as an ordinary process that
//! made itself a child subreaper, with a config and log directory in a temp dir: step
//! timeouts kill, services restart with backoff, orphans are reaped, shutdown stops services.
//!
//! Each test reaps with `waitpid(-1)`, so tests in one process must not overlap: they take
//! `SERIAL` (nextest runs each test in its own process anyway).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_init::boot::run_steps_and_services;
use kiln_init::config::InitConfig;
use kiln_init::process_runner::{
    become_child_subreaper, Console, ManualWaiter, StepKind, StepOutcome, Supervisor,
    SupervisorSettings,
};
use kiln_init::syscall::PowerAction;

static SERIAL: Mutex<()> = Mutex::new(());

fn settings(log_directory: &Path, stop_grace_ms: u64) -> SupervisorSettings {
    let mut config = InitConfig::default();
    config.console.log_directory = log_directory.to_path_buf();
    config.stop_grace_ms = stop_grace_ms;
    let mut settings = SupervisorSettings::for_config(&config);
    settings.poll_interval = Duration::from_millis(20);
    settings
}

fn config(text: &str) -> InitConfig {
    InitConfig::parse(Path::new("test.json"), text).unwrap()
}

/// Marker lines only (service output lines start with `[`).
fn markers(text: &str) -> Vec<String> {
    text.lines()
        .filter(|line| line.starts_with("kiln: "))
        .map(str::to_string)
        .collect()
}

/// Replaces measured durations (`, 0.1s)`) and pids, which vary run to run.
fn normalise(line: &str) -> String {
    let mut out = line.to_string();
    if let Some(start) = out.rfind(", ") {
        if out.ends_with("s)") && out[start + 2..out.len() - 2].contains('.') {
            out = format!("{}, T)", &out[..start]);
        }
    }
    if let Some(start) = out.find("(pid ") {
        out = format!("{}(pid N)", &out[..start]);
    }
    out
}

#[test]
fn onboot_steps_finish_fail_and_time_out() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let config = config(
        r#"{"onboot": [
            {"name": "hello", "argv": ["/bin/sh", "-c", "echo hello from $KILN_TEST; echo to stderr >&2"], "env": {"KILN_TEST": "onboot"}},
            {"name": "fails", "argv": ["/bin/sh", "-c", "exit 3"]},
            {"name": "missing", "argv": ["/nonexistent/program"]},
            {"name": "sleeper", "argv": ["/bin/sh", "-c", "sleep 30"], "timeout_ms": 300},
            {"name": "stubborn", "argv": ["/bin/sh", "-c", "trap '' TERM; sleep 30; sleep 30"], "timeout_ms": 200},
            {"name": "after-all", "argv": ["/bin/true"]}
        ]}"#,
    );
    let (console, output) = Console::capture();
    let mut waiter = ManualWaiter::default();
    let mut supervisor = Supervisor::new(settings(directory.path(), 300), console, &mut waiter);
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for step in &config.onboot {
        outcomes.push(supervisor.run_step(StepKind::Onboot, step));
    }
    let elapsed = started.elapsed();
    // sleeper: 300 ms to SIGTERM; stubborn: 200 ms + 300 ms grace to SIGKILL.
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "timeouts did not kill: {elapsed:?}"
    );
    assert!(matches!(outcomes[0], StepOutcome::Finished(_)));
    assert!(matches!(outcomes[3], StepOutcome::TimedOut(_)));
    assert!(matches!(outcomes[4], StepOutcome::TimedOut(_)));
    // Give the output logger threads a moment to drain their pipes.
    std::thread::sleep(Duration::from_millis(200));
    let text = output.text();
    let lines: Vec<String> = markers(&text).iter().map(|l| normalise(l)).collect();
    assert_eq!(
        lines,
        vec![
            "kiln: onboot hello finished (exit 0, T)",
            "kiln: onboot fails failed (exit 3, T)",
            "kiln: onboot missing failed to start (No such file or directory (os error 2))",
            "kiln: onboot sleeper timed out after 300ms",
            "kiln: onboot stubborn timed out after 200ms",
            "kiln: onboot after-all finished (exit 0, T)",
        ]
    );
    assert!(text.contains("[hello] hello from onboot\n"), "{text}");
    assert!(text.contains("[hello] to stderr\n"), "{text}");
    let log = std::fs::read_to_string(directory.path().join("hello.log")).unwrap();
    assert_eq!(log, "hello from onboot\nto stderr\n");
}

#[test]
fn fatal_step_stops_the_boot_and_nonfatal_does_not() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let config = config(
        r#"{"onboot": [
            {"name": "dhcp", "argv": ["/bin/sh", "-c", "exit 1"]},
            {"name": "must-work", "argv": ["/bin/sh", "-c", "exit 2"], "fatal": true},
            {"name": "never-runs", "argv": ["/bin/true"]}
        ]}"#,
    );
    let (console, output) = Console::capture();
    let mut waiter = ManualWaiter::default();
    let mut supervisor = Supervisor::new(settings(directory.path(), 300), console, &mut waiter);
    let error = supervisor
        .run_steps(StepKind::Onboot, &config.onboot, &[])
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "onboot step `must-work` is fatal and did not succeed; fix the step or make it non-fatal in its module"
    );
    assert!(!output.text().contains("never-runs"));
}

#[test]
fn steps_with_after_run_alongside_the_steps_they_do_not_wait_for() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let flags = directory.path().join("flags");
    std::fs::create_dir(&flags).unwrap();
    // `left` and `right` each wait for the other's flag: they can only both finish if they
    // run at the same time (one after the other, the first would time out).
    let text = r#"{"onboot": [
            {"name": "left", "argv": ["/bin/sh", "-c", "touch left; while [ ! -e right ]; do sleep 0.02; done"], "working_directory": "FLAGS", "timeout_ms": 5000, "after": []},
            {"name": "right", "argv": ["/bin/sh", "-c", "touch right; while [ ! -e left ]; do sleep 0.02; done"], "working_directory": "FLAGS", "timeout_ms": 5000, "after": []},
            {"name": "broken", "argv": ["/bin/sh", "-c", "exit 4"], "after": []},
            {"name": "skipped", "argv": ["/bin/sh", "-c", "touch skipped"], "working_directory": "FLAGS", "after": []},
            {"name": "both", "argv": ["/bin/sh", "-c", "test -e left && test -e right && touch both"], "working_directory": "FLAGS", "after": ["left", "right", "broken", "skipped"]},
            {"name": "next", "argv": ["/bin/sh", "-c", "test -e both"], "working_directory": "FLAGS"}
        ]}"#
    .replace("FLAGS", flags.to_str().unwrap());
    let config = config(&text);
    let (console, output) = Console::capture();
    let mut waiter = ManualWaiter::default();
    let mut supervisor = Supervisor::new(settings(directory.path(), 300), console, &mut waiter);
    let interrupted = supervisor
        .run_steps(StepKind::Onboot, &config.onboot, &["skipped".to_string()])
        .unwrap();
    assert_eq!(interrupted, None);
    let lines: Vec<String> = markers(&output.text())
        .iter()
        .map(|l| normalise(l))
        .collect();
    let position = |line: &str| {
        lines
            .iter()
            .position(|seen| seen == line)
            .unwrap_or_else(|| panic!("no `{line}` in {lines:#?}"))
    };
    let left = position("kiln: onboot left finished (exit 0, T)");
    let right = position("kiln: onboot right finished (exit 0, T)");
    let broken = position("kiln: onboot broken failed (exit 4, T)");
    let skipped = position("kiln: onboot skipped disabled by kernel command line");
    let both = position("kiln: onboot both finished (exit 0, T)");
    let next = position("kiln: onboot next finished (exit 0, T)");
    // A failed (non-fatal) or disabled step still lets the steps after it run.
    assert!(left < both && right < both && broken < both && skipped < both);
    assert!(both < next);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert!(!flags.join("skipped").exists());
}

#[test]
fn a_power_request_stops_every_running_step() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let config = config(
        r#"{"onboot": [
            {"name": "one", "argv": ["/bin/sh", "-c", "sleep 30"], "after": []},
            {"name": "two", "argv": ["/bin/sh", "-c", "sleep 30"], "after": []},
            {"name": "later", "argv": ["/bin/true"], "after": ["one"]}
        ]}"#,
    );
    let (console, output) = Console::capture();
    let requested = Arc::new(Mutex::new(None));
    let mut waiter = ManualWaiter {
        requested: requested.clone(),
    };
    let trigger = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        *requested.lock().unwrap() = Some(PowerAction::Reboot);
    });
    let mut supervisor = Supervisor::new(settings(directory.path(), 300), console, &mut waiter);
    let interrupted = supervisor
        .run_steps(StepKind::Onboot, &config.onboot, &[])
        .unwrap();
    trigger.join().unwrap();
    assert_eq!(interrupted, Some(PowerAction::Reboot));
    let lines: Vec<String> = markers(&output.text())
        .iter()
        .map(|l| normalise(l))
        .collect();
    assert_eq!(
        lines,
        vec![
            "kiln: onboot one stopped for rebooting (signal 15)",
            "kiln: onboot two stopped for rebooting (signal 15)",
        ]
    );
}

#[test]
fn service_restarts_with_exponential_backoff() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let config = config(
        r#"{"services": [
            {"name": "crashy", "argv": ["/bin/sh", "-c", "echo attempt; exit 1"], "restart": "on-failure",
             "backoff": {"initial_ms": 100, "max_ms": 400}},
            {"name": "done-once", "argv": ["/bin/sh", "-c", "exit 0"], "restart": "on-failure"},
            {"name": "never", "argv": ["/bin/sh", "-c", "exit 5"], "restart": "never"}
        ]}"#,
    );
    let (console, output) = Console::capture();
    let mut waiter = ManualWaiter::default();
    let mut supervisor = Supervisor::new(settings(directory.path(), 300), console, &mut waiter);
    supervisor.start_services(config.services.clone());
    // 100 + 200 + 400 + 400 = 1.1 s of backoff: at least 5 starts of crashy in 1.5 s.
    assert_eq!(
        supervisor.supervise(Some(Duration::from_millis(1500))),
        None
    );
    let text = output.text();
    let crashy: Vec<String> = markers(&text)
        .iter()
        .filter(|l| l.contains("service crashy"))
        .map(|l| normalise(l))
        .collect();
    assert!(crashy.len() >= 9, "{crashy:#?}");
    assert_eq!(
        crashy[..9].to_vec(),
        vec![
            "kiln: service crashy started (pid N)",
            "kiln: service crashy exited (status 1), restarting in 100ms",
            "kiln: service crashy started (pid N)",
            "kiln: service crashy exited (status 1), restarting in 200ms",
            "kiln: service crashy started (pid N)",
            "kiln: service crashy exited (status 1), restarting in 400ms",
            "kiln: service crashy started (pid N)",
            "kiln: service crashy exited (status 1), restarting in 400ms",
            "kiln: service crashy started (pid N)",
        ]
    );
    assert!(text.contains(
        "kiln: service done-once exited (status 0), not restarting (restart policy on-failure)\n"
    ));
    assert!(text.contains(
        "kiln: service never exited (status 5), not restarting (restart policy never)\n"
    ));
    assert_eq!(text.matches("kiln: service never started").count(), 1);
    let log = std::fs::read_to_string(directory.path().join("crashy.log")).unwrap();
    assert!(
        log.lines().count() >= 5 && log.lines().all(|l| l == "attempt"),
        "{log}"
    );
}

/// Zombies whose parent is this process.
fn zombie_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some(after_comm) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[after_comm + 2..].split(' ').collect();
        if fields.len() > 1 && fields[0] == "Z" && fields[1] == me {
            zombies.push(stat);
        }
    }
    zombies
}

#[test]
fn orphans_are_reaped() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    // The shell exits at once; its background sleeps become our orphans and then zombies
    // unless the supervisor reaps them.
    let config = config(
        r#"{"onboot": [{"name": "spawner", "argv": ["/bin/sh", "-c", "sleep 0.2 & sleep 0.3 & exit 0"]}]}"#,
    );
    let (mut console, output) = Console::capture();
    console.set_debug(true);
    let mut waiter = ManualWaiter::default();
    let mut supervisor = Supervisor::new(settings(directory.path(), 300), console, &mut waiter);
    supervisor
        .run_steps(StepKind::Onboot, &config.onboot, &[])
        .unwrap();
    assert_eq!(supervisor.supervise(Some(Duration::from_millis(800))), None);
    assert_eq!(zombie_children(), Vec::<String>::new());
    assert_eq!(
        output.text().matches("reaped orphan").count(),
        2,
        "{}",
        output.text()
    );
}

#[test]
fn full_run_orders_services_and_shuts_down_cleanly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let config = config(
        r#"{
          "onboot": [{"name": "prepare", "argv": ["/bin/sh", "-c", "echo prepared"]}],
          "services": [
            {"name": "worker", "argv": ["/bin/sh", "-c", "exec sleep 60"], "after": ["runtime"]},
            {"name": "runtime", "argv": ["/bin/sh", "-c", "exec sleep 60"]},
            {"name": "stubborn", "argv": ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"]},
            {"name": "debug-shell", "argv": ["/bin/sh"]}
          ],
          "shutdown": [{"name": "goodbye", "argv": ["/bin/sh", "-c", "echo bye"]}],
          "stop_grace_ms": 500
        }"#,
    );
    let parameters = kiln_init::cmdline::parse_boot_parameters("kiln.services.disable=debug-shell");
    let (console, output) = Console::capture();
    let requested = Arc::new(Mutex::new(None));
    let mut waiter = ManualWaiter {
        requested: requested.clone(),
    };
    let output_for_thread = output.clone();
    let trigger = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !output_for_thread.text().contains("kiln: ready\n") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        *requested.lock().unwrap() = Some(PowerAction::PowerOff);
    });
    let mut supervisor_settings = settings(directory.path(), 500);
    supervisor_settings.stop_grace = Duration::from_millis(500);
    let started = Instant::now();
    let mut ready_calls = Vec::new();
    let action = run_steps_and_services(
        &config,
        &parameters,
        &console,
        supervisor_settings,
        &mut waiter,
        &mut || ready_calls.push(output.text()),
    )
    .unwrap();
    trigger.join().unwrap();
    // Called once, after the ready marker and before the shutdown.
    assert_eq!(ready_calls.len(), 1);
    assert!(
        ready_calls[0].contains("kiln: ready\n") && !ready_calls[0].contains("shutdown"),
        "{}",
        ready_calls[0]
    );
    assert_eq!(action, PowerAction::PowerOff);
    assert!(started.elapsed() < Duration::from_secs(8));
    std::thread::sleep(Duration::from_millis(100));
    let lines: Vec<String> = markers(&output.text())
        .iter()
        .map(|l| normalise(l))
        .collect();
    assert_eq!(
        lines,
        vec![
            "kiln: onboot prepare finished (exit 0, T)",
            "kiln: service debug-shell disabled by kernel command line",
            "kiln: service runtime started (pid N)",
            "kiln: service worker started (pid N)",
            "kiln: service stubborn started (pid N)",
            "kiln: ready",
            "kiln: shutdown requested (powering off)",
            "kiln: shutdown goodbye finished (exit 0, T)",
            "kiln: service runtime stopped (signal 15)",
            "kiln: service worker stopped (signal 15)",
            "kiln: service stubborn did not stop within 500ms, killing it",
            "kiln: service stubborn stopped (signal 9)",
        ],
        "{}",
        output.text()
    );
    assert!(output.text().contains("[goodbye] bye\n"));
    assert_eq!(zombie_children(), Vec::<String>::new());
}

#[test]
fn power_request_interrupts_a_long_onboot_step() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let config = config(
        r#"{"onboot": [{"name": "slow", "argv": ["/bin/sh", "-c", "sleep 30"]},
                        {"name": "skipped", "argv": ["/bin/true"]}]}"#,
    );
    let (console, output) = Console::capture();
    let requested = Arc::new(Mutex::new(None));
    let mut waiter = ManualWaiter {
        requested: requested.clone(),
    };
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        *requested.lock().unwrap() = Some(PowerAction::Reboot);
    });
    let started = Instant::now();
    let mut ready_calls = 0;
    let action = run_steps_and_services(
        &config,
        &Default::default(),
        &console,
        settings(directory.path(), 300),
        &mut waiter,
        &mut || ready_calls += 1,
    )
    .unwrap();
    setter.join().unwrap();
    assert_eq!(ready_calls, 0, "the boot never got to ready");
    assert_eq!(action, PowerAction::Reboot);
    assert!(started.elapsed() < Duration::from_secs(5));
    let lines: Vec<String> = markers(&output.text());
    assert_eq!(
        lines,
        vec![
            "kiln: onboot slow stopped for rebooting (signal 15)",
            "kiln: shutdown requested (rebooting)",
        ]
    );
}

#[test]
fn binary_supervise_mode_reaches_ready_and_stops_on_sigusr2() {
    use std::io::{BufRead, BufReader};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let directory = tempfile::tempdir().unwrap();
    let config_path = directory.path().join("init.json");
    std::fs::write(
        &config_path,
        format!(
            r#"{{"onboot": [{{"name": "hello", "argv": ["/bin/sh", "-c", "echo hi"]}}],
                "services": [{{"name": "sleeper", "argv": ["/bin/sleep", "60"]}}],
                "console": {{"log_directory": "{}"}}, "stop_grace_ms": 1000}}"#,
            directory.path().join("log").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-init"))
        .arg("--supervise")
        .arg(&config_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "kiln: ready" {
            break;
        }
    }
    // SAFETY: kill with the pid of our own child.
    unsafe { libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGUSR2) };
    seen.extend(lines.map(|l| l.unwrap()));
    assert!(child.wait().unwrap().success());
    let normalised: Vec<String> = seen.iter().map(|l| normalise(l)).collect();
    assert_eq!(
        normalised,
        vec![
            "[hello] hi",
            "kiln: onboot hello finished (exit 0, T)",
            "kiln: service sleeper started (pid N)",
            "kiln: ready",
            "kiln: shutdown requested (powering off)",
            "kiln: service sleeper stopped (signal 15)",
            "kiln: would be powering off (not PID 1)",
        ]
    );
}

#[test]
fn binary_check_config_reports_errors() {
    // Spawns a child too: another test's waitpid(-1) must not reap it.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("init.json");
    std::fs::write(
        &path,
        r#"{"services": [{"name": "a", "argv": ["/a"], "restart": "maybe"}]}"#,
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kiln-init"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("kiln: error: invalid init config "),
        "{stderr}"
    );
    assert!(stderr.contains("unknown variant `maybe`"), "{stderr}");
}

#[test]
fn logs_rotate_at_their_size_limit() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("chatty.log");
    let mut log = kiln_init::process_runner::RotatingLog::open(path.clone(), 20);
    for index in 0..5 {
        log.append(format!("line {index}\n").as_bytes());
    }
    // 7 bytes a line, 20 bytes at most: two lines per file.
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 4\n");
    assert_eq!(
        std::fs::read_to_string(directory.path().join("chatty.log.1")).unwrap(),
        "line 2\nline 3\n"
    );
}

/// The nice value: field 19 of a `/proc/.../stat` line.
fn nice_of_stat(stat: &str) -> i32 {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

#[test]
fn the_supervisor_runs_ahead_of_its_children_and_they_get_the_original_priority_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: raising a priority needs root (CAP_SYS_NICE)");
        return;
    }
    become_child_subreaper().unwrap();
    // Linux's nice value is per thread, and the test runs on one of the harness's threads.
    let own_stat = || std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let original = nice_of_stat(&own_stat());
    kiln_init::process_runner::raise_supervisor_priority().unwrap();
    let raised = nice_of_stat(&own_stat());
    assert_eq!(raised, kiln_init::process_runner::SUPERVISOR_NICE);
    let directory = tempfile::tempdir().unwrap();
    let config =
        config(r#"{"onboot": [{"name": "stat", "argv": ["/bin/cat", "/proc/self/stat"]}]}"#);
    let (console, output) = Console::capture();
    let mut waiter = ManualWaiter::default();
    let mut supervisor = Supervisor::new(settings(directory.path(), 300), console, &mut waiter);
    let outcome = supervisor.run_step(StepKind::Onboot, &config.onboot[0]);
    assert!(matches!(outcome, StepOutcome::Finished(_)), "{outcome:?}");
    let text = output.text();
    let stat = text
        .lines()
        .find_map(|line| line.strip_prefix("[stat] "))
        .unwrap_or_else(|| panic!("no output of the step:\n{text}"));
    assert_eq!(nice_of_stat(stat), original, "the child's stat: {stat}");
}
