//! `capabilities:` and `namespaces:` of steps and services, through the supervisor's own spawn
//! path, with real processes: the child prints the kernel's view (`/proc/self/status`,
//! `/proc/self/ns/*`, `/proc/net/dev`) and the test compares it with exact values. Needs root
//! (the tests drop capabilities, switch users and unshare namespaces for real), which is how
//! the project's tests run.
//!
//! Tests take `SERIAL`: the supervisor reaps with `waitpid(-1)`.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kiln_init::config::InitConfig;
use kiln_init::process_runner::{
    become_child_subreaper, Console, ManualWaiter, StepKind, StepOutcome, Supervisor,
    SupervisorSettings,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// A user the tests switch to, in a passwd file of their own.
const TEST_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nkiln-caps:x:4242:4243::/:/bin/sh\n";

/// Bit masks as `/proc/PID/status` prints them.
const CAP_NET_BIND_SERVICE: u64 = 1 << 10;
const CAP_SYS_TIME: u64 = 1 << 25;

struct Harness {
    directory: tempfile::TempDir,
    config: InitConfig,
}

impl Harness {
    fn new(config_text: &str) -> Harness {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("passwd"), TEST_PASSWD).unwrap();
        let config = InitConfig::parse(Path::new("test.json"), config_text).unwrap();
        Harness { directory, config }
    }

    fn settings(&self) -> SupervisorSettings {
        let mut config = self.config.clone();
        config.console.log_directory = self.directory.path().join("log");
        config.stop_grace_ms = 300;
        let mut settings = SupervisorSettings::for_config(&config);
        settings.poll_interval = Duration::from_millis(20);
        settings.passwd_path = self.directory.path().join("passwd");
        settings
    }

    /// Runs every onboot step; returns the console text.
    fn run_steps(&self) -> (Vec<StepOutcome>, String) {
        let (console, output) = Console::capture();
        let mut waiter = ManualWaiter::default();
        let mut supervisor = Supervisor::new(self.settings(), console, &mut waiter);
        let outcomes = self
            .config
            .onboot
            .iter()
            .map(|step| supervisor.run_step(StepKind::Onboot, step))
            .collect();
        (outcomes, output.text())
    }

    /// Starts the services and supervises until `done` holds for the console text (at most
    /// 10 s); then, if `stop`, stops them. Returns the console text.
    fn run_services(&self, done: impl Fn(&str) -> bool, stop: bool) -> String {
        let (console, output) = Console::capture();
        let mut waiter = ManualWaiter::default();
        let mut supervisor = Supervisor::new(self.settings(), console, &mut waiter);
        supervisor.start_services(self.config.services.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(&output.text()) && Instant::now() < deadline {
            supervisor.supervise(Some(Duration::from_millis(50)));
        }
        if stop {
            supervisor.stop_services();
        }
        // Let the output loggers drain their pipes.
        std::thread::sleep(Duration::from_millis(150));
        output.text()
    }
}

/// The value of `FIELD:` in the `/proc/self/status` lines that step or service `name` printed.
fn status_field(text: &str, name: &str, field: &str) -> String {
    let prefix = format!("[{name}] {field}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {field} line of {name} in:\n{text}"))
        .trim()
        .to_owned()
}

/// The value of a `KEY=value` line that step or service `name` printed.
fn printed_value(text: &str, name: &str, key: &str) -> String {
    let prefix = format!("[{name}] {key}=");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= line of {name} in:\n{text}"))
        .to_owned()
}

fn mask(text: &str, name: &str, field: &str) -> u64 {
    u64::from_str_radix(&status_field(text, name, field), 16).unwrap()
}

/// This (the test's) process's mask, for "unchanged" comparisons.
fn own_mask(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap();
    u64::from_str_radix(value.trim(), 16).unwrap()
}

const ALL_MASKS: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

#[test]
fn a_non_root_service_keeps_exactly_its_capabilities_as_ambient_ones() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let harness = Harness::new(
        r#"{"services": [{"name": "bind", "argv": ["/bin/grep", "-E", "^(Cap|Uid|Gid|Groups)", "/proc/self/status"],
            "user": "kiln-caps", "capabilities": ["CAP_NET_BIND_SERVICE"], "restart": "never"}]}"#,
    );
    let text = harness.run_services(|text| text.contains("service bind exited"), false);
    assert!(
        text.contains("kiln: service bind exited (status 0), not restarting"),
        "{text}"
    );
    assert_eq!(status_field(&text, "bind", "Uid"), "4242\t4242\t4242\t4242");
    assert_eq!(status_field(&text, "bind", "Gid"), "4243\t4243\t4243\t4243");
    assert_eq!(status_field(&text, "bind", "Groups"), "");
    for field in ALL_MASKS {
        assert_eq!(
            mask(&text, "bind", field),
            CAP_NET_BIND_SERVICE,
            "{field} in\n{text}"
        );
    }
}

#[test]
fn a_root_step_keeps_exactly_its_capabilities_without_ambient_ones() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let harness = Harness::new(
        r#"{"onboot": [{"name": "clock", "argv": ["/bin/grep", "^Cap", "/proc/self/status"],
            "capabilities": ["CAP_SYS_TIME", "CAP_NET_BIND_SERVICE"]}]}"#,
    );
    let (outcomes, text) = harness.run_steps();
    assert!(matches!(outcomes[0], StepOutcome::Finished(_)), "{text}");
    for field in ["CapInh", "CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(
            mask(&text, "clock", field),
            CAP_SYS_TIME | CAP_NET_BIND_SERVICE,
            "{field} in\n{text}"
        );
    }
    assert_eq!(mask(&text, "clock", "CapAmb"), 0, "{text}");
}

#[test]
fn empty_capabilities_leave_none_even_to_root() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let harness = Harness::new(
        r#"{"onboot": [{"name": "bare", "argv": ["/bin/grep", "^Cap", "/proc/self/status"], "capabilities": []}],
            "services": [{"name": "bare-user", "argv": ["/bin/grep", "^Cap", "/proc/self/status"],
              "user": "kiln-caps", "capabilities": [], "restart": "never"}]}"#,
    );
    let (outcomes, text) = harness.run_steps();
    assert!(matches!(outcomes[0], StepOutcome::Finished(_)), "{text}");
    for field in ALL_MASKS {
        assert_eq!(mask(&text, "bare", field), 0, "{field} in\n{text}");
    }
    let text = harness.run_services(|text| text.contains("service bare-user exited"), false);
    for field in ALL_MASKS {
        assert_eq!(mask(&text, "bare-user", field), 0, "{field} in\n{text}");
    }
}

#[test]
fn without_capabilities_root_keeps_kiln_inits_and_another_user_gets_none() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let harness = Harness::new(
        r#"{"onboot": [{"name": "as-before", "argv": ["/bin/grep", "^Cap", "/proc/self/status"]}],
            "services": [{"name": "user-as-before", "argv": ["/bin/grep", "^Cap", "/proc/self/status"],
              "user": "kiln-caps", "restart": "never"}]}"#,
    );
    let (_, text) = harness.run_steps();
    for field in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(
            mask(&text, "as-before", field),
            own_mask(field),
            "{field} in\n{text}"
        );
    }
    let text = harness.run_services(|text| text.contains("service user-as-before exited"), false);
    assert_eq!(mask(&text, "user-as-before", "CapEff"), 0, "{text}");
    assert_eq!(mask(&text, "user-as-before", "CapPrm"), 0, "{text}");
    assert_eq!(mask(&text, "user-as-before", "CapAmb"), 0, "{text}");
    assert_eq!(
        mask(&text, "user-as-before", "CapBnd"),
        own_mask("CapBnd"),
        "{text}"
    );
}

#[test]
fn a_capability_kiln_init_lacks_is_a_start_failure_that_names_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    // The bounding set is per thread and inherited by what this thread forks: the supervisor
    // below spawns from here, as if kiln-init itself had been started without CAP_SYS_BOOT.
    // SAFETY: prctl with integer arguments, on this test's own thread.
    let dropped = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, 22 as libc::c_ulong, 0, 0, 0) };
    assert_eq!(dropped, 0, "{}", std::io::Error::last_os_error());
    let harness = Harness::new(
        r#"{"onboot": [{"name": "reboots", "argv": ["/bin/true"], "capabilities": ["CAP_SYS_BOOT"]}]}"#,
    );
    let (outcomes, text) = harness.run_steps();
    assert!(
        matches!(outcomes[0], StepOutcome::FailedToStart(_)),
        "{text}"
    );
    assert_eq!(
        text,
        "kiln: onboot reboots failed to start (capability CAP_SYS_BOOT is not in kiln-init's bounding set: Operation not permitted (os error 1))\n"
    );
}

#[test]
fn a_program_that_does_not_exist_is_reported_as_before() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    // The failure channel stays empty when the setup succeeded and exec failed.
    let harness = Harness::new(
        r#"{"onboot": [{"name": "missing", "argv": ["/nonexistent/program"], "capabilities": [], "namespaces": ["pid", "net"]}]}"#,
    );
    let (_, text) = harness.run_steps();
    assert_eq!(
        text,
        "kiln: onboot missing failed to start (No such file or directory (os error 2))\n"
    );
}

#[test]
fn net_and_uts_namespaces_are_new_with_lo_up_and_none_of_the_machines_links() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    // bash's /dev/tcp: "Connection refused" proves 127.0.0.1 is reachable (lo up), a down lo
    // gives "Network is unreachable".
    let harness = Harness::new(
        r#"{"onboot": [{"name": "isolated", "argv": ["/bin/bash", "-c",
            "echo net=$(readlink /proc/self/ns/net); echo uts=$(readlink /proc/self/ns/uts); echo links=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' '); echo kiln-uts-test > /proc/sys/kernel/hostname; echo hostname=$(cat /proc/sys/kernel/hostname); (echo > /dev/tcp/127.0.0.1/9) 2>&1 | sed 's/.*: //'"],
            "namespaces": ["net", "uts"]}]}"#,
    );
    let own_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let (outcomes, text) = harness.run_steps();
    assert!(matches!(outcomes[0], StepOutcome::Finished(_)), "{text}");
    for namespace in ["net", "uts"] {
        let own = std::fs::read_link(format!("/proc/self/ns/{namespace}")).unwrap();
        let child = printed_value(&text, "isolated", namespace);
        assert!(
            child.starts_with(&format!("{namespace}:[")) && child != own.display().to_string(),
            "the step's {namespace} namespace is {child}, this process's {}",
            own.display()
        );
    }
    // Besides lo, a new network namespace holds only the fallback tunnel devices of the
    // tunnel drivers this kernel has (sit0 when the sit driver is built in or loaded).
    let links = printed_value(&text, "isolated", "links");
    let others: Vec<&str> = links
        .split_whitespace()
        .filter(|link| !FALLBACK_TUNNELS.contains(link))
        .collect();
    assert_eq!(others, ["lo"], "{text}");
    assert!(
        text.contains("[isolated] hostname=kiln-uts-test\n"),
        "{text}"
    );
    assert!(text.contains("[isolated] Connection refused\n"), "{text}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        own_hostname,
        "the hostname changed outside the step's uts namespace"
    );
}

/// The devices a tunnel driver creates in every network namespace (unless
/// `net.core.fb_tunnels_only_for_init_net` says otherwise): not the machine's network.
const FALLBACK_TUNNELS: [&str; 9] = [
    "sit0", "tunl0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip_vti0", "ip6_vti0", "ip6gre0",
];

/// A tmpfs mounted shared in this (the test's) mount namespace, lazily unmounted on drop.
struct SharedMount {
    path: std::path::PathBuf,
}

impl SharedMount {
    fn new(path: &Path) -> SharedMount {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "kiln-shared-test"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
        let mount = SharedMount {
            path: path.to_path_buf(),
        };
        let status = std::process::Command::new("mount")
            .arg("--make-shared")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::create_dir(path.join("inner")).unwrap();
        mount
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("--lazy")
            .arg("--recursive")
            .arg(&self.path)
            .status();
    }
}

fn own_mounts() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

#[test]
fn mounts_in_a_mount_namespace_do_not_propagate_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let shared = SharedMount::new(&directory.path().join("shared"));
    let inner = shared.path.join("inner");
    // Control: a new mount namespace that keeps the shared propagation (what unshare alone
    // gives) lets the mount through, so the test below would see a leak.
    let status = std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "unchanged",
            "mount",
            "-t",
            "tmpfs",
            "kiln-leaked-test",
        ])
        .arg(&inner)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        own_mounts().contains("kiln-leaked-test"),
        "the control mount did not propagate"
    );
    let status = std::process::Command::new("umount")
        .arg(&inner)
        .status()
        .unwrap();
    assert!(status.success());

    let harness = Harness::new(&format!(
        r#"{{"onboot": [{{"name": "mounter", "argv": ["/bin/sh", "-c",
            "mount -t tmpfs kiln-private-test {} && grep -c kiln-private-test /proc/self/mountinfo"],
            "namespaces": ["mount"]}}]}}"#,
        inner.display()
    ));
    let (outcomes, text) = harness.run_steps();
    assert!(matches!(outcomes[0], StepOutcome::Finished(_)), "{text}");
    assert!(text.contains("[mounter] 1\n"), "{text}");
    assert!(
        !own_mounts().contains("kiln-private-test"),
        "the step's mount propagated back:\n{}",
        own_mounts()
    );
}

#[test]
fn a_pid_namespace_makes_the_service_pid_1_and_keeps_status_and_signals() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    become_child_subreaper().unwrap();
    let harness = Harness::new(
        r#"{"services": [
            {"name": "contained", "argv": ["/bin/sh", "-c",
              "echo pid=$$; echo processes=$(ls /proc | grep -c '^[0-9]'); trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done"],
             "namespaces": ["pid", "mount"], "restart": "never"},
            {"name": "exits-3", "argv": ["/bin/sh", "-c", "exit 3"], "namespaces": ["pid"], "restart": "never"},
            {"name": "no-handler", "argv": ["/bin/sleep", "30"], "namespaces": ["pid"], "restart": "never"}
        ]}"#,
    );
    let own_proc = own_mounts()
        .lines()
        .filter(|line| line.contains(" /proc "))
        .count();
    let text = harness.run_services(
        |text| text.contains("[contained] ready") && text.contains("service exits-3 exited"),
        true,
    );
    assert!(text.contains("[contained] pid=1\n"), "{text}");
    // The shell and the `ls` and `grep` of the command substitution: the machine's other
    // processes are not in this /proc.
    let processes: u32 = printed_value(&text, "contained", "processes")
        .parse()
        .unwrap_or(u32::MAX);
    assert!(processes <= 4, "{text}");
    assert!(text.contains("[contained] got TERM\n"), "{text}");
    assert!(
        text.contains("kiln: service contained stopped (status 7)\n"),
        "the waiter did not forward SIGTERM or the status:\n{text}"
    );
    assert!(
        text.contains(
            "kiln: service exits-3 exited (status 3), not restarting (restart policy never)\n"
        ),
        "{text}"
    );
    // As PID 1 of its namespace, a program without a SIGTERM handler ignores SIGTERM: it is
    // killed after the grace period.
    assert!(
        text.contains("kiln: service no-handler did not stop within 300ms, killing it\n"),
        "{text}"
    );
    assert!(
        text.contains("kiln: service no-handler stopped (signal 9)\n"),
        "{text}"
    );
    assert_eq!(
        own_mounts()
            .lines()
            .filter(|line| line.contains(" /proc "))
            .count(),
        own_proc,
        "the service's /proc was mounted outside its mount namespace"
    );
}
