//! Ordered console markers: what a boot must print, stage by stage.
//!
//! A [`MarkerPlan`] is a list of stages; every marker of a stage must appear after every
//! marker of the stage before, and within a stage after the markers it names in its own
//! `after` (onboot steps run as soon as the steps they come after have ended, so only that
//! partial order is fixed; services start in `after` order, which the plan does not model). A marker matches a console line that contains its
//! needle: step output reaches the console prefixed (`[dhcp] dhcp: lease …`), and under TCG a
//! kernel message can share a line with a user-space one.
//!
//! Pure data in, data out: the checker is fed lines, it never reads a console itself.

use std::time::Duration;

use crate::image::BootPlan;

/// One expected console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// What it shows, for progress and failure messages (`onboot dhcp finished`).
    pub label: String,
    /// Substrings of the console line: any one of them matches.
    pub needles: Vec<String>,
    /// Labels of markers of the same stage that must have been seen before this one.
    pub after: Vec<String>,
}

impl Marker {
    pub fn new(label: impl Into<String>, needle: impl Into<String>) -> Marker {
        Marker {
            label: label.into(),
            needles: vec![needle.into()],
            after: Vec::new(),
        }
    }

    /// A marker that any of several lines satisfies.
    pub fn any_of(label: impl Into<String>, needles: &[&str]) -> Marker {
        Marker {
            label: label.into(),
            needles: needles.iter().map(|needle| needle.to_string()).collect(),
            after: Vec::new(),
        }
    }

    /// The same marker, expected only after the markers labelled `labels` (same stage).
    pub fn after(mut self, labels: Vec<String>) -> Marker {
        self.after = labels;
        self
    }

    pub fn matches(&self, line: &str) -> bool {
        self.needles
            .iter()
            .any(|needle| line.contains(needle.as_str()))
    }

    /// The needles as `a` or `b`, for messages.
    pub fn needle_text(&self) -> String {
        self.needles
            .iter()
            .map(|needle| format!("`{needle}`"))
            .collect::<Vec<_>>()
            .join(" or ")
    }

    pub fn kernel_started() -> Marker {
        Marker::new("kernel started", "Linux version ")
    }

    pub fn init_started() -> Marker {
        Marker::new("kiln-init started", "kiln: kiln-init ")
    }

    pub fn onboot_finished(name: &str) -> Marker {
        Marker::new(
            format!("onboot {name} finished"),
            format!("kiln: onboot {name} finished ("),
        )
    }

    pub fn onboot_timed_out(name: &str) -> Marker {
        Marker::new(
            format!("onboot {name} timed out"),
            format!("kiln: onboot {name} timed out after "),
        )
    }

    pub fn service_started(name: &str) -> Marker {
        Marker::new(
            format!("service {name} started"),
            format!("kiln: service {name} started (pid "),
        )
    }

    pub fn ready() -> Marker {
        Marker::new("ready", "kiln: ready")
    }

    pub fn powering_off() -> Marker {
        Marker::new("powering off", "kiln: powering off")
    }
}

/// What the `dhcp` onboot step must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkExpectation {
    /// A lease from QEMU's user-mode DHCP server (`dhcp: lease A/N on eth0 via GW`).
    Lease,
    /// No NIC at all (`-nic none`): the step gives up at once and says why.
    NoLink,
}

impl NetworkExpectation {
    pub fn marker(self) -> Marker {
        match self {
            NetworkExpectation::Lease => Marker::new("DHCP lease", "dhcp: lease "),
            NetworkExpectation::NoLink => {
                Marker::new("dhcp gave up", "dhcp: no network link found, continuing")
            }
        }
    }
}

/// Console lines that end a boot early: nothing expected can follow them.
pub const FATAL_NEEDLES: &[&str] = &["Kernel panic - not syncing", "kiln: error: "];

/// Stages of expected markers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MarkerPlan {
    pub stages: Vec<Vec<Marker>>,
}

impl MarkerPlan {
    /// A stage of one marker.
    pub fn then(mut self, marker: Marker) -> MarkerPlan {
        self.stages.push(vec![marker]);
        self
    }

    /// A stage whose markers may appear in any order among themselves.
    pub fn then_all(mut self, markers: Vec<Marker>) -> MarkerPlan {
        if !markers.is_empty() {
            self.stages.push(markers);
        }
        self
    }

    /// The boot of an image up to `kiln: ready`: kernel, kiln-init, the onboot steps (each
    /// after the steps it runs after; the DHCP line before the `dhcp` step's end), every
    /// service, ready. Steps and services named in `disabled` (given with
    /// `kiln.onboot.disable=`/`kiln.services.disable=`) are expected to say so instead.
    pub fn boot_to_ready(
        plan: &BootPlan,
        network: NetworkExpectation,
        disabled: &[&str],
    ) -> MarkerPlan {
        let markers = MarkerPlan::default()
            .then(Marker::kernel_started())
            .then(Marker::init_started());
        let mut onboot: Vec<Marker> = Vec::new();
        let mut labels: Vec<String> = Vec::new();
        for (index, step) in plan.onboot.iter().enumerate() {
            let after: Vec<String> = plan
                .onboot_predecessors(index)
                .into_iter()
                .map(|earlier| labels[earlier].clone())
                .collect();
            let marker = if disabled.contains(&step.as_str()) {
                Marker::new(
                    format!("onboot {step} disabled"),
                    format!("kiln: onboot {step} disabled by kernel command line"),
                )
                .after(after)
            } else if step == "dhcp" {
                let lease = network.marker().after(after);
                let lease_label = lease.label.clone();
                onboot.push(lease);
                Marker::onboot_finished(step).after(vec![lease_label])
            } else {
                Marker::onboot_finished(step).after(after)
            };
            labels.push(marker.label.clone());
            onboot.push(marker);
        }
        let markers = markers.then_all(onboot);
        let services = plan
            .services
            .iter()
            .map(|service| {
                if disabled.contains(&service.as_str()) {
                    Marker::new(
                        format!("service {service} disabled"),
                        format!("kiln: service {service} disabled by kernel command line"),
                    )
                } else {
                    Marker::service_started(service)
                }
            })
            .collect();
        markers.then_all(services).then(Marker::ready())
    }

    /// iPXE's own console lines of a netboot from QEMU's TFTP server: it started, began
    /// fetching the script (`tftp://10.0.2.2/boot.ipxe...`), then the kernel and initramfs
    /// the script names (`vmlinuz-x86_64...`: iPXE prints the names as the script gives
    /// them). Each marker is the start of iPXE's fetch line, not its `ok`: the end of the
    /// last fetch line races with the kernel's terminal reset and has been seen cut short
    /// (`initramfs-x86_64... o` then `ESC c`). That a fetch completed is shown by the next
    /// stage (the next fetch, the kernel starting, kiln-init unpacked) and, without the
    /// console, by [`crate::tftp::TftpReads`].
    pub fn ipxe_netboot(arch: crate::ImageArch, bootfile: &str) -> MarkerPlan {
        let kernel = kiln_image::kernel_file_name(arch);
        let initramfs = kiln_image::initramfs_file_name(arch);
        let fetching =
            |file: &str, needle: String| Marker::new(format!("iPXE fetching {file}"), needle);
        MarkerPlan::default()
            .then(Marker::new("iPXE started", "iPXE initialising devices"))
            .then(fetching(bootfile, format!("tftp://10.0.2.2/{bootfile}...")))
            .then(fetching(&kernel, format!("{kernel}...")))
            .then(fetching(&initramfs, format!("{initramfs}...")))
    }

    /// This plan's stages, then `next`'s.
    pub fn followed_by(mut self, next: MarkerPlan) -> MarkerPlan {
        self.stages.extend(next.stages);
        self
    }

    pub fn marker_count(&self) -> usize {
        self.stages.iter().map(Vec::len).sum()
    }
}

/// A marker seen on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundMarker {
    pub label: String,
    pub line: String,
    /// Since QEMU started.
    pub at: Duration,
}

/// What feeding one line changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    Found(FoundMarker),
    /// The last marker of the plan was found.
    Complete(FoundMarker),
    /// A line of [`FATAL_NEEDLES`].
    Fatal(String),
    /// A marker appeared before one it must follow; what is missing, with what came early.
    OutOfOrder(MissingMarkers),
}

/// The first stage not yet complete, for failure messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingMarkers {
    /// Labels of the markers of that stage not seen yet.
    pub missing: Vec<Marker>,
    /// The last marker seen before it, if any.
    pub after: Option<String>,
    /// Markers of later stages that did appear, too early (out of order).
    pub seen_early: Vec<String>,
}

impl std::fmt::Display for MissingMarkers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .missing
            .iter()
            .map(|marker| format!("{} ({})", marker.label, marker.needle_text()))
            .collect();
        write!(formatter, "missing marker: {}", names.join(", "))?;
        match &self.after {
            Some(after) => write!(formatter, "; last marker seen: {after}")?,
            None => write!(formatter, "; no marker was seen")?,
        }
        if !self.seen_early.is_empty() {
            write!(
                formatter,
                "; seen before it, out of order: {}",
                self.seen_early.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Walks a [`MarkerPlan`] as console lines arrive.
#[derive(Debug, Clone)]
pub struct MarkerChecker {
    plan: MarkerPlan,
    stage: usize,
    seen_in_stage: Vec<bool>,
    found: Vec<FoundMarker>,
    seen_early: Vec<String>,
}

impl MarkerChecker {
    pub fn new(plan: MarkerPlan) -> MarkerChecker {
        let first_stage_length = plan.stages.first().map_or(0, Vec::len);
        MarkerChecker {
            plan,
            stage: 0,
            seen_in_stage: vec![false; first_stage_length],
            found: Vec::new(),
            seen_early: Vec::new(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.stage >= self.plan.stages.len()
    }

    /// Every marker found so far, in the order found.
    pub fn found(&self) -> &[FoundMarker] {
        &self.found
    }

    /// Feeds one rendered console line (see [`crate::console`]). A line may satisfy several
    /// markers in turn (under TCG a kernel message and a user-space line can share one), each
    /// needle matched in the text after the previous match. Returns what changed, in order;
    /// [`Feed::OutOfOrder`] as soon as a marker appears before one it must come after (a
    /// later stage's, or one of its own stage's `after`): the earlier one can no longer
    /// appear in order, so waiting longer cannot help.
    pub fn feed(&mut self, line: &str, at: Duration) -> Vec<Feed> {
        if FATAL_NEEDLES.iter().any(|needle| line.contains(needle)) {
            return vec![Feed::Fatal(line.to_string())];
        }
        let mut changes = Vec::new();
        let mut rest = line;
        while !self.is_complete() {
            let Some((index, end)) = self.match_in_stage(rest) else {
                if self.note_early(rest) {
                    if let Some(missing) = self.missing() {
                        changes.push(Feed::OutOfOrder(missing));
                    }
                }
                break;
            };
            rest = &rest[end..];
            let marker = &self.plan.stages[self.stage][index];
            let found = FoundMarker {
                label: marker.label.clone(),
                line: line.to_string(),
                at,
            };
            self.seen_in_stage[index] = true;
            self.found.push(found.clone());
            if self.seen_in_stage.iter().all(|seen| *seen) {
                self.stage += 1;
                self.seen_in_stage =
                    vec![false; self.plan.stages.get(self.stage).map_or(0, Vec::len)];
                if self.is_complete() {
                    changes.push(Feed::Complete(found));
                    break;
                }
            }
            changes.push(Feed::Found(found));
        }
        changes
    }

    /// Labels of the current stage's markers seen so far.
    fn seen_labels(&self) -> Vec<&str> {
        self.plan.stages[self.stage]
            .iter()
            .zip(&self.seen_in_stage)
            .filter(|(_, seen)| **seen)
            .map(|(marker, _)| marker.label.as_str())
            .collect()
    }

    /// Whether every marker `marker` comes after has been seen.
    fn is_ready(&self, marker: &Marker) -> bool {
        let seen = self.seen_labels();
        marker
            .after
            .iter()
            .all(|label| seen.contains(&label.as_str()))
    }

    /// The current stage's marker (not seen yet, its `after` seen) whose needle occurs first
    /// in `text`, and the end of that occurrence.
    fn match_in_stage(&self, text: &str) -> Option<(usize, usize)> {
        let stage = &self.plan.stages[self.stage];
        stage
            .iter()
            .enumerate()
            .filter(|(index, marker)| !self.seen_in_stage[*index] && self.is_ready(marker))
            .filter_map(|(index, marker)| {
                marker
                    .needles
                    .iter()
                    .filter_map(|needle| {
                        text.find(needle.as_str())
                            .map(|start| (start, start + needle.len()))
                    })
                    .min()
                    .map(|(start, end)| (start, end, index))
            })
            .min()
            .map(|(_, end, index)| (index, end))
    }

    /// Records markers that `text` shows too early: of this stage before the ones they come
    /// after, or of a later stage. Whether a new one was recorded.
    fn note_early(&mut self, text: &str) -> bool {
        let stage = &self.plan.stages[self.stage];
        let mut early: Vec<String> = stage
            .iter()
            .enumerate()
            .filter(|(index, marker)| {
                !self.seen_in_stage[*index] && marker.matches(text) && !self.is_ready(marker)
            })
            .map(|(_, marker)| marker.label.clone())
            .collect();
        early.extend(
            self.plan
                .stages
                .iter()
                .skip(self.stage + 1)
                .flatten()
                .filter(|later| later.matches(text))
                .map(|later| later.label.clone()),
        );
        let mut noted = false;
        for label in early {
            if !self.seen_early.contains(&label) {
                self.seen_early.push(label);
                noted = true;
            }
        }
        noted
    }

    /// What is still missing, or `None` when the plan is complete.
    pub fn missing(&self) -> Option<MissingMarkers> {
        let stage = self.plan.stages.get(self.stage)?;
        // The first markers missing: those whose `after` markers were all seen (the ones
        // waiting on a missing marker are implied).
        let missing = stage
            .iter()
            .zip(&self.seen_in_stage)
            .filter(|(marker, seen)| !**seen && self.is_ready(marker))
            .map(|(marker, _)| marker.clone())
            .collect();
        Some(MissingMarkers {
            missing,
            after: self.found.last().map(|found| found.label.clone()),
            seen_early: self.seen_early.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::PlanSource;

    fn hook_plan() -> BootPlan {
        BootPlan {
            onboot: vec!["base".into(), "rngd".into(), "kmod".into(), "dhcp".into()],
            onboot_after: vec![None; 4],
            services: vec!["syslog".into(), "getty".into(), "sshd".into()],
            source: PlanSource::InitramfsConfig,
        }
    }

    /// Onboot steps as the assembler writes them: rngd and kmod at once, dhcp after kmod.
    fn concurrent_plan() -> BootPlan {
        BootPlan {
            onboot: vec!["rngd".into(), "kmod".into(), "dhcp".into()],
            onboot_after: vec![Some(vec![]), Some(vec![]), Some(vec!["kmod".into()])],
            services: vec!["syslog".into()],
            source: PlanSource::InitramfsConfig,
        }
    }

    #[test]
    fn concurrent_steps_may_finish_in_any_order_their_after_allows() {
        let plan = MarkerPlan::boot_to_ready(&concurrent_plan(), NetworkExpectation::Lease, &[]);
        let console = "\
Linux version 6.1
kiln: kiln-init 0.1.0 starting
kiln: onboot kmod finished (exit 0, 0.2s)
[dhcp] dhcp: lease 10.0.2.15/24 on eth0 via 10.0.2.2
kiln: onboot dhcp finished (exit 0, 0.3s)
kiln: onboot rngd finished (exit 0, 0.5s)
kiln: service syslog started (pid 80)
kiln: ready
";
        insta::assert_snapshot!(check(plan.clone(), console), @r"
        found kernel started at 0s
        found kiln-init started at 1s
        found onboot kmod finished at 2s
        found DHCP lease at 3s
        found onboot dhcp finished at 4s
        found onboot rngd finished at 5s
        found service syslog started at 6s
        complete with ready
        ");
        // dhcp must not start before kmod (its NIC driver) has ended.
        let early = "\
Linux version 6.1
kiln: kiln-init 0.1.0 starting
[dhcp] dhcp: lease 10.0.2.15/24 on eth0 via 10.0.2.2
kiln: onboot rngd finished (exit 0, 0.1s)
kiln: onboot kmod finished (exit 0, 0.2s)
kiln: onboot dhcp finished (exit 0, 0.3s)
kiln: service syslog started (pid 80)
kiln: ready
";
        insta::assert_snapshot!(check(plan, early), @r"
        found kernel started at 0s
        found kiln-init started at 1s
        out of order at 2s
        missing marker: onboot rngd finished (`kiln: onboot rngd finished (`), onboot kmod finished (`kiln: onboot kmod finished (`); last marker seen: kiln-init started; seen before it, out of order: DHCP lease
        ");
    }

    /// Feeds `console` line by line; returns the labels found and the final verdict.
    fn check(plan: MarkerPlan, console: &str) -> String {
        let mut checker = MarkerChecker::new(plan);
        let mut report = String::new();
        'lines: for (number, line) in console.lines().enumerate() {
            for change in checker.feed(line, Duration::from_secs(u64::try_from(number).unwrap())) {
                match change {
                    Feed::Found(found) => report.push_str(&format!(
                        "found {} at {}s\n",
                        found.label,
                        found.at.as_secs()
                    )),
                    Feed::Complete(found) => {
                        report.push_str(&format!("complete with {}\n", found.label))
                    }
                    Feed::Fatal(line) => {
                        report.push_str(&format!("fatal: {line}\n"));
                        break 'lines;
                    }
                    Feed::OutOfOrder(_) => {
                        report.push_str(&format!("out of order at {number}s\n"));
                        break 'lines;
                    }
                }
            }
        }
        if let Some(missing) = checker.missing() {
            report.push_str(&format!("{missing}\n"));
        }
        report
    }

    /// The console of a fresh machine's iPXE boot: iPXE's `ok` after the initramfs lost its
    /// `k` to the kernel's terminal reset. Rendered as the harness renders it, every marker
    /// is found; and a line carrying two markers (a kernel message and kiln's line, as TCG
    /// interleaves them) satisfies both.
    #[test]
    fn an_ipxe_ok_cut_short_by_a_terminal_reset_does_not_hide_the_fetch() {
        let raw: &[u8] = b"iPXE initialising devices...ok\r\n\
tftp://10.0.2.2/boot.ipxe... ok\r\n\
boot.ipxe : 269 bytes [script]\r\n\
vmlinuz-x86_64... 42%\x08\x08\x08\x08    \x08\x08\x08\x08 ok\r\n\
initramfs-x86_64... o\x1bc\x1b[?7l\x1b[2JLinux version 6.1.192-kiln (kiln@kiln)\r\n\
kiln: kiln-init 0.1.0 starting\r\n";
        let console = crate::console::render(raw);
        let plan = MarkerPlan::ipxe_netboot(crate::ImageArch::X86_64, "boot.ipxe")
            .then(Marker::kernel_started())
            .then(Marker::init_started());
        insta::assert_snapshot!(check(plan, &console), @r"
        found iPXE started at 0s
        found iPXE fetching boot.ipxe at 1s
        found iPXE fetching vmlinuz-x86_64 at 3s
        found iPXE fetching initramfs-x86_64 at 4s
        found kernel started at 5s
        complete with kiln-init started
        ");
        let plan = MarkerPlan::default()
            .then(Marker::kernel_started())
            .then(Marker::init_started());
        insta::assert_snapshot!(check(plan, "[    1.2] Linux version 6.1kiln: kiln-init 0.1.0 starting\n"), @r"
        found kernel started at 0s
        complete with kiln-init started
        ");
    }

    const GOOD_BOOT: &str = "\
[    0.000000] Linux version 6.1.192-kiln (kiln@kiln) #1 SMP
kiln: kiln-init 0.1.0 starting
kiln: onboot base finished (exit 0, 0.1s)
kiln: onboot rngd finished (exit 0, 0.3s)
kiln: onboot kmod finished (exit 0, 1.0s)
[dhcp] dhcp: lease 10.0.2.15/24 on eth0 via 10.0.2.2
kiln: onboot dhcp finished (exit 0, 2.1s)
kiln: service syslog started (pid 80)
kiln: service sshd started (pid 82)
kiln: service getty started (pid 81)
kiln: ready
";

    #[test]
    fn a_good_boot_completes_with_services_in_any_order() {
        let plan = MarkerPlan::boot_to_ready(&hook_plan(), NetworkExpectation::Lease, &[]);
        assert_eq!(plan.marker_count(), 11);
        insta::assert_snapshot!(check(plan, GOOD_BOOT), @r"
        found kernel started at 0s
        found kiln-init started at 1s
        found onboot base finished at 2s
        found onboot rngd finished at 3s
        found onboot kmod finished at 4s
        found DHCP lease at 5s
        found onboot dhcp finished at 6s
        found service syslog started at 7s
        found service sshd started at 8s
        found service getty started at 9s
        complete with ready
        ");
    }

    #[test]
    fn a_missing_lease_names_the_marker_and_the_last_one_seen() {
        let console = GOOD_BOOT.replace(
            "[dhcp] dhcp: lease 10.0.2.15/24 on eth0 via 10.0.2.2\n",
            "[dhcp] dhcp: no lease on eth0 after 30s, continuing\n",
        );
        let plan = MarkerPlan::boot_to_ready(&hook_plan(), NetworkExpectation::Lease, &[]);
        insta::assert_snapshot!(check(plan, &console), @r"
        found kernel started at 0s
        found kiln-init started at 1s
        found onboot base finished at 2s
        found onboot rngd finished at 3s
        found onboot kmod finished at 4s
        out of order at 6s
        missing marker: DHCP lease (`dhcp: lease `); last marker seen: onboot kmod finished; seen before it, out of order: onboot dhcp finished
        ");
    }

    #[test]
    fn a_kernel_panic_ends_the_check_and_disabled_services_are_expected_to_say_so() {
        let plan = MarkerPlan::boot_to_ready(&hook_plan(), NetworkExpectation::NoLink, &["sshd"]);
        let console = "Linux version 6.1\nkiln: kiln-init 0.1.0 starting\nKernel panic - not syncing: Attempted to kill init!\n";
        insta::assert_snapshot!(check(plan.clone(), console), @r"
        found kernel started at 0s
        found kiln-init started at 1s
        fatal: Kernel panic - not syncing: Attempted to kill init!
        missing marker: onboot base finished (`kiln: onboot base finished (`); last marker seen: kiln-init started
        ");
        let last_stages: Vec<Vec<String>> = plan.stages[plan.stages.len() - 3..]
            .iter()
            .map(|stage| stage.iter().map(Marker::needle_text).collect())
            .collect();
        insta::assert_debug_snapshot!(last_stages, @r#"
        [
            [
                "`kiln: onboot base finished (`",
                "`kiln: onboot rngd finished (`",
                "`kiln: onboot kmod finished (`",
                "`dhcp: no network link found, continuing`",
                "`kiln: onboot dhcp finished (`",
            ],
            [
                "`kiln: service syslog started (pid `",
                "`kiln: service getty started (pid `",
                "`kiln: service sshd disabled by kernel command line`",
            ],
            [
                "`kiln: ready`",
            ],
        ]
        "#);
    }
}
