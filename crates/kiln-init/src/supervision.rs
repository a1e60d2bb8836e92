//! The pure part of supervision: exit statuses, restart decisions, backoff, start order by
//! `after`, duration formatting of the console markers, `/etc/passwd` lookups.
//!
//! *Architecture Invariant*: no I/O, no clock, no processes here; [`crate::process_runner`]
//! feeds it facts and acts on its answers.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{BackoffSettings, RestartPolicy, ServiceEntry};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

impl ExitKind {
    /// Decodes a `waitpid` status.
    pub fn from_wait_status(status: i32) -> ExitKind {
        if libc::WIFSIGNALED(status) {
            ExitKind::Signaled(libc::WTERMSIG(status))
        } else {
            ExitKind::Exited(libc::WEXITSTATUS(status))
        }
    }

    /// A clean `exit(0)`.
    pub fn is_success(self) -> bool {
        self == ExitKind::Exited(0)
    }

    /// `exit 1` / `signal 9` (onboot and shutdown step markers).
    pub fn describe_for_step(self) -> String {
        match self {
            ExitKind::Exited(code) => format!("exit {code}"),
            ExitKind::Signaled(signal) => format!("signal {signal}"),
        }
    }

    /// `status 1` / `signal 9` (service markers).
    pub fn describe_for_service(self) -> String {
        match self {
            ExitKind::Exited(code) => format!("status {code}"),
            ExitKind::Signaled(signal) => format!("signal {signal}"),
        }
    }
}

/// Whether a service that ended this way is restarted.
pub fn should_restart(policy: RestartPolicy, exit: Option<ExitKind>) -> bool {
    // `None`: the service could not even be spawned; that is a failure.
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => !exit.is_some_and(ExitKind::is_success),
        RestartPolicy::Never => false,
    }
}

/// The delay before the next restart: `initial` after the first exit or after a run of at
/// least `reset_after`, otherwise the previous delay doubled, capped at `max`.
pub fn next_backoff(
    previous: Option<Duration>,
    settings: &BackoffSettings,
    ran_for: Duration,
) -> Duration {
    let initial = Duration::from_millis(settings.initial_ms);
    let max = Duration::from_millis(settings.max_ms);
    match previous {
        None => initial,
        Some(_) if ran_for >= Duration::from_millis(settings.reset_after_ms) => initial,
        Some(previous) => previous.saturating_mul(2).min(max).max(initial),
    }
}

/// A configured duration for markers: `30s` when whole seconds, else `250ms`.
pub fn format_configured_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// A measured duration for markers: seconds with one decimal, `1.2s`.
pub fn format_elapsed(duration: Duration) -> String {
    let tenths = (duration.as_millis() + 50) / 100;
    format!("{}.{}s", tenths / 10, tenths % 10)
}

/// `SIGTERM`, `SIGKILL`, ... for transcripts.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        other => return format!("signal {other}"),
    };
    name.to_string()
}

/// A service `after` list that cannot be satisfied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderingError {
    /// `after` names a service that does not exist.
    #[error("service `{service}` is after `{missing}`, which is not a service of this image; add its module or remove it from `after`")]
    UnknownService {
        /// The service with the bad `after`.
        service: String,
        /// The missing name.
        missing: String,
    },
    /// A cycle.
    #[error("services are ordered in a cycle: {}; remove one of these `after` entries", cycle.join(" -> "))]
    Cycle {
        /// The names along the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
}

/// The start order: every service after the ones in its `after`, otherwise in config order
/// (stable, so the same config always starts in the same order). Returns indexes into
/// `services`.
pub fn order_services_by_after(services: &[ServiceEntry]) -> Result<Vec<usize>, OrderingError> {
    let index_by_name: BTreeMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(index, service)| (service.name.as_str(), index))
        .collect();
    let mut dependencies: Vec<Vec<usize>> = Vec::with_capacity(services.len());
    for service in services {
        let mut list = Vec::new();
        for name in &service.after {
            match index_by_name.get(name.as_str()) {
                Some(index) => list.push(*index),
                None => {
                    return Err(OrderingError::UnknownService {
                        service: service.name.clone(),
                        missing: name.clone(),
                    })
                }
            }
        }
        dependencies.push(list);
    }
    // Depth-first, visiting services in config order: deterministic, and the stack gives the
    // cycle for the error message.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        InProgress,
        Done,
    }
    fn visit(
        index: usize,
        dependencies: &[Vec<usize>],
        marks: &mut [Mark],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
        services: &[ServiceEntry],
    ) -> Result<(), OrderingError> {
        match marks[index] {
            Mark::Done => return Ok(()),
            Mark::InProgress => {
                let start = stack.iter().position(|&i| i == index).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..]
                    .iter()
                    .map(|&i| services[i].name.clone())
                    .collect();
                cycle.push(services[index].name.clone());
                return Err(OrderingError::Cycle { cycle });
            }
            Mark::New => {}
        }
        marks[index] = Mark::InProgress;
        stack.push(index);
        for &dependency in &dependencies[index] {
            visit(dependency, dependencies, marks, stack, order, services)?;
        }
        stack.pop();
        marks[index] = Mark::Done;
        order.push(index);
        Ok(())
    }
    let mut marks = vec![Mark::New; services.len()];
    let mut order = Vec::with_capacity(services.len());
    let mut stack = Vec::new();
    for index in 0..services.len() {
        visit(
            index,
            &dependencies,
            &mut marks,
            &mut stack,
            &mut order,
            services,
        )?;
    }
    Ok(order)
}

/// `(uid, gid)` of `name` in `/etc/passwd` text.
pub fn lookup_user(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 || fields[0] != name {
            return None;
        }
        Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, after: &[&str]) -> ServiceEntry {
        ServiceEntry {
            name: name.to_string(),
            argv: vec!["/bin/true".to_string()],
            env: Default::default(),
            working_directory: None,
            user: None,
            uid: None,
            gid: None,
            capabilities: None,
            namespaces: Vec::new(),
            restart: RestartPolicy::Always,
            backoff: BackoffSettings::default(),
            after: after.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(services: &[ServiceEntry]) -> Result<Vec<&str>, OrderingError> {
        Ok(order_services_by_after(services)?
            .into_iter()
            .map(|i| services[i].name.as_str())
            .collect())
    }

    #[test]
    fn order_respects_after_and_is_stable() {
        let services = [
            service("tink-worker", &["docker"]),
            service("getty", &[]),
            service("docker", &["containerd"]),
            service("containerd", &[]),
            service("sshd", &[]),
        ];
        assert_eq!(
            names(&services).unwrap(),
            vec!["containerd", "docker", "tink-worker", "getty", "sshd"]
        );
    }

    #[test]
    fn order_errors_are_clear() {
        let cycle = [
            service("a", &["c"]),
            service("b", &["a"]),
            service("c", &["b"]),
        ];
        insta::assert_snapshot!(names(&cycle).unwrap_err().to_string(), @"services are ordered in a cycle: a -> c -> b -> a; remove one of these `after` entries");
        let self_cycle = [service("a", &["a"])];
        insta::assert_snapshot!(names(&self_cycle).unwrap_err().to_string(), @"services are ordered in a cycle: a -> a; remove one of these `after` entries");
        let unknown = [service("docker", &["containerd"])];
        insta::assert_snapshot!(names(&unknown).unwrap_err().to_string(), @"service `docker` is after `containerd`, which is not a service of this image; add its module or remove it from `after`");
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let settings = BackoffSettings {
            initial_ms: 1000,
            max_ms: 8000,
            reset_after_ms: 60_000,
        };
        let quick = Duration::from_millis(10);
        let mut delays = Vec::new();
        let mut previous = None;
        for _ in 0..6 {
            let delay = next_backoff(previous, &settings, quick);
            delays.push(delay.as_millis());
            previous = Some(delay);
        }
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(
            next_backoff(previous, &settings, Duration::from_secs(60)).as_millis(),
            1000
        );
    }

    #[test]
    fn restart_decisions() {
        use ExitKind::*;
        let cases = [
            (RestartPolicy::Always, Some(Exited(0)), true),
            (RestartPolicy::Always, Some(Exited(1)), true),
            (RestartPolicy::OnFailure, Some(Exited(0)), false),
            (RestartPolicy::OnFailure, Some(Exited(2)), true),
            (RestartPolicy::OnFailure, Some(Signaled(9)), true),
            (RestartPolicy::OnFailure, None, true),
            (RestartPolicy::Never, Some(Exited(1)), false),
            (RestartPolicy::Never, None, false),
        ];
        for (policy, exit, expected) in cases {
            assert_eq!(
                should_restart(policy, exit),
                expected,
                "{policy:?} {exit:?}"
            );
        }
    }

    #[test]
    fn durations_in_markers() {
        assert_eq!(format_configured_duration(Duration::from_secs(30)), "30s");
        assert_eq!(
            format_configured_duration(Duration::from_millis(250)),
            "250ms"
        );
        assert_eq!(format_elapsed(Duration::from_millis(1234)), "1.2s");
        assert_eq!(format_elapsed(Duration::from_millis(1960)), "2.0s");
        assert_eq!(format_elapsed(Duration::from_millis(3)), "0.0s");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(ExitKind::from_wait_status(1 << 8), ExitKind::Exited(1));
        assert_eq!(ExitKind::from_wait_status(9), ExitKind::Signaled(9));
        assert_eq!(ExitKind::Exited(1).describe_for_service(), "status 1");
        assert_eq!(ExitKind::Signaled(15).describe_for_step(), "signal 15");
    }

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
        assert_eq!(lookup_user(passwd, "nobody"), Some((65534, 65534)));
        assert_eq!(lookup_user(passwd, "daemon"), None);
    }
}
