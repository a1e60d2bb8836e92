//! QEMU smoke tests of whole images built by `cargo xtask image` (profile `hook`): direct
//! boots of both architectures and an iPXE netboot to `kiln: ready` with every marker in
//! order, a DHCP lease from QEMU's user network, an SSH login and a power-off over SSH; then
//! the faults a provisioning image must survive: no NIC, a crashing service, a hanging
//! onboot step (injected as an extra initramfs segment carrying another
//! `/etc/kiln/init.json`: the kernel unpacks concatenated archives, later files win).
//!
//! Slow (`#[ignore = "slow: …"]`, CI runs them): each builds its image once (a no-op when up
//! to date) into the test cache, boots under TCG unless a probe finds KVM usable, and waits
//! up to `KILN_SMOKE_BOOT_TIMEOUT_SECS` (default 900 s). Console logs stay in
//! `target/kiln-test-cache/smoke-runs/TEST/console.log`; a failure prints the missing marker,
//! the last 60 console lines and that path.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_archive::{ArchivePath, ArchiveTree, Compression, Content, Entry, InitramfsOptions};
use kiln_smoke::image::{BootPlan, ImageDirectory, PlanSource};
use kiln_smoke::init_config::{
    BackoffSettings, InitConfig, RestartPolicy, ServiceEntry, StepEntry,
};
use kiln_smoke::markers::{Marker, MarkerChecker, MarkerPlan, NetworkExpectation};
use kiln_smoke::smoke::{self, BootFailure, BootMethod, SmokeOptions, SmokeReport};
use kiln_smoke::vm::WaitOutcome;
use kiln_smoke::ImageArch;
use kiln_tests::{test_cache_dir, xtask};

/// `out/hook/ARCH/` for `arch`, built by the real xtask into the test cache. Tests run in
/// parallel processes: an flock on a file per architecture keeps two builds from writing
/// the same directory at once.
fn hook_image(arch: ImageArch) -> ImageDirectory {
    profile_image("hook", "hook", arch)
}

/// `OUT/<output_name>/ARCH/` of `profile`, built as [`hook_image`] builds hook's.
fn profile_image(profile: &str, output_name: &str, arch: ImageArch) -> ImageDirectory {
    let root = test_cache_dir("smoke-images").join(arch.name());
    fs::create_dir_all(&root).unwrap();
    let lock = fs::File::create(root.with_extension("lock")).unwrap();
    // SAFETY: flock on a file descriptor this function owns for the whole call; it is
    // released when `lock` is dropped (closed) at the end.
    let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        locked,
        0,
        "flock {}: {}",
        root.display(),
        std::io::Error::last_os_error()
    );
    let output = xtask(&[
        "image",
        "--arch",
        arch.name(),
        "--profile",
        profile,
        "--out",
    ])
    .arg(&root)
    .output()
    .expect("running cargo xtask image");
    assert!(
        output.status.success(),
        "cargo xtask image --arch {} --profile {profile} failed:\n{}\n{}",
        arch.name(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    drop(lock);
    ImageDirectory::open(&root.join(output_name).join(arch.name()), arch)
        .expect("the image directory is complete")
}

/// A fresh work directory (console log, key, TFTP root) kept after the test.
fn work_directory(test: &str) -> PathBuf {
    let directory = test_cache_dir("smoke-runs").join(test);
    let _ = fs::remove_dir_all(&directory);
    fs::create_dir_all(&directory).unwrap();
    directory
}

fn run(image: &ImageDirectory, options: &SmokeOptions) -> SmokeReport {
    let result = smoke::run_smoke(image, options, &mut |event| eprintln!("{event:?}"));
    match result {
        Ok(report) => {
            eprintln!(
                "{} {}: ready after {:.1}s ({}, {}); console log {}",
                image.arch.name(),
                options.boot.name(),
                report.time_to_ready.as_secs_f64(),
                report.accelerator.accelerator.name(),
                report.accelerator.reason,
                report.console_log.display()
            );
            report
        }
        Err(error) => panic!("smoke run failed:\n{error}"),
    }
}

fn check_full_run(report: &SmokeReport, arch: ImageArch) {
    let uname = report
        .remote_uname
        .as_deref()
        .expect("the hook image has sshd: the run logged in");
    assert!(
        uname.starts_with("Linux ") && uname.contains(arch.name()),
        "{uname}"
    );
    assert!(
        report.powered_off_at.is_some(),
        "QEMU exited after poweroff"
    );
    assert!(
        report.plan.has_service("sshd") && report.plan.onboot.iter().any(|step| step == "dhcp"),
        "{:?}",
        report.plan
    );
}

/// An NTP server on the command line makes the ntp service start chronyd (QEMU's user
/// network has no NTP server, so it only has to start and keep running): this is what
/// checks that the `skip_dependencies:` of modules/ntp left every library chronyd needs.
fn check_chronyd_ran(report: &SmokeReport) {
    let console = fs::read_to_string(&report.console_log).unwrap();
    assert!(
        console.contains("chronyd version") && console.contains("Running with root privileges"),
        "chronyd did not start; console log {}",
        report.console_log.display()
    );
    assert!(
        !console.contains("error while loading shared libraries")
            && !console.contains("service ntp exited"),
        "chronyd failed; console log {}",
        report.console_log.display()
    );
}

fn with_ntp_server(mut options: SmokeOptions) -> SmokeOptions {
    // QEMU's user-network host: no NTP server answers there, chronyd keeps polling.
    options.extra_cmdline.push("kiln.ntp=10.0.2.2".to_owned());
    options
}

#[test]
#[ignore = "slow: builds the hook image and boots it in QEMU (x86_64, TCG)"]
fn hook_x86_64_boots_directly_to_ready_with_a_lease_ssh_and_power_off() {
    let image = hook_image(ImageArch::X86_64);
    let options = with_ntp_server(SmokeOptions::new(work_directory("x86_64-direct")));
    let report = run(&image, &options);
    check_full_run(&report, ImageArch::X86_64);
    check_chronyd_ran(&report);
}

#[test]
#[ignore = "slow: builds the hook image and boots it in QEMU (aarch64, TCG)"]
fn hook_aarch64_boots_directly_to_ready_with_a_lease_ssh_and_power_off() {
    let image = hook_image(ImageArch::Aarch64);
    let options = with_ntp_server(SmokeOptions::new(work_directory("aarch64-direct")));
    let report = run(&image, &options);
    check_full_run(&report, ImageArch::Aarch64);
    check_chronyd_ran(&report);
    assert!(
        report.firmware.contains("no EFI stub") || report.firmware.starts_with("UEFI"),
        "{}",
        report.firmware
    );
}

/// Profile `hook-debian`: the kernel is Debian's `linux-image-*-cloud` package pinned in
/// kiln.lock (`required_by: profile:hook-debian`), imported by the build; its drivers are
/// modules, so the NIC works only if the kmod step loaded virtio_net by modalias.
fn check_debian_kernel_run(arch: ImageArch) {
    let image = profile_image("hook-debian", "hook-debian", arch);
    let options = SmokeOptions::new(work_directory(&format!("{}-debian-kernel", arch.name())));
    let report = run(&image, &options);
    check_full_run(&report, arch);
    let uname = report.remote_uname.as_deref().unwrap_or_default();
    let lock = kiln_lock::Lock::read(&kiln_tests::workspace_root().join("kiln.lock")).unwrap();
    let target: kiln_lock::TargetArch = arch.name().parse().unwrap();
    let pin = lock
        .architecture(target)
        .unwrap()
        .debian_packages
        .iter()
        .find(|pin| {
            pin.required_by
                .iter()
                .any(|reason| reason == "profile:hook-debian")
        })
        .expect("kiln.lock pins hook-debian's kernel package");
    // `linux-image-6.1.0-56-cloud-amd64` runs release `6.1.0-56-cloud-amd64`, and Debian
    // puts the package version (`6.1.192-2`) in `uname -v`.
    let release = pin.name.trim_start_matches("linux-image-");
    assert!(
        uname.contains(release) && uname.contains(&pin.version),
        "{uname} (pinned {} {})",
        pin.name,
        pin.version
    );
}

#[test]
#[ignore = "slow: builds hook-debian (Debian's kernel package) and boots it in QEMU (x86_64, TCG)"]
fn hook_debian_x86_64_boots_debians_pinned_kernel_with_a_lease_and_ssh() {
    check_debian_kernel_run(ImageArch::X86_64);
}

#[test]
#[ignore = "slow: builds hook-debian (Debian's kernel package) and boots it in QEMU (aarch64, TCG)"]
fn hook_debian_aarch64_boots_debians_pinned_kernel_with_a_lease_and_ssh() {
    check_debian_kernel_run(ImageArch::Aarch64);
}

#[test]
#[ignore = "slow: builds the hook image and netboots it in QEMU through iPXE and TFTP (x86_64, TCG)"]
fn hook_x86_64_netboots_through_ipxe_and_tftp() {
    let image = hook_image(ImageArch::X86_64);
    let mut options = SmokeOptions::new(work_directory("x86_64-ipxe"));
    options.boot = BootMethod::Ipxe;
    let report = run(&image, &options);
    check_full_run(&report, ImageArch::X86_64);
    let labels: Vec<&str> = report
        .markers
        .iter()
        .map(|found| found.label.as_str())
        .collect();
    assert_eq!(
        labels[..5],
        ["iPXE started", "iPXE fetching boot.ipxe", "iPXE fetching vmlinuz-x86_64", "iPXE fetching initramfs-x86_64", "kernel started"],
        "iPXE fetched the script, then the kernel and initramfs it names, before the kernel started"
    );
    // Not from the console: QEMU's TFTP server opened, read and closed each, in that order.
    let served: Vec<&str> = report
        .tftp_reads
        .iter()
        .filter(|read| read.served())
        .map(|read| read.file.as_str())
        .collect();
    assert_eq!(served, ["boot.ipxe", "vmlinuz-x86_64", "initramfs-x86_64"]);
}

#[test]
fn aarch64_ipxe_is_refused_with_the_reason() {
    let directory = tempfile::tempdir().unwrap();
    for name in [
        "vmlinuz-aarch64",
        "initramfs-aarch64",
        "cmdline",
        "boot.ipxe",
    ] {
        fs::write(directory.path().join(name), "").unwrap();
    }
    let output = xtask(&[
        "smoke",
        "qemu",
        "--arch",
        "aarch64",
        "--boot",
        "ipxe",
        "--no-setup",
        "--image",
    ])
    .arg(directory.path())
    .arg("--work-dir")
    .arg(directory.path().join("work"))
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no arm64 iPXE build") && stderr.contains("use --boot direct"),
        "{stderr}"
    );
}

#[test]
#[ignore = "slow: boots the hook image in QEMU without a NIC (x86_64, TCG)"]
fn without_a_nic_dhcp_gives_up_and_the_boot_still_reaches_ready() {
    let image = hook_image(ImageArch::X86_64);
    let mut options = SmokeOptions::new(work_directory("x86_64-no-nic"));
    options.network = false;
    let report = run(&image, &options);
    let gave_up = report
        .markers
        .iter()
        .find(|found| found.label == "dhcp gave up")
        .expect("the dhcp step said why it gave up");
    assert!(gave_up.line.contains("continuing"), "{}", gave_up.line);
    assert_eq!(report.markers.last().unwrap().label, "ready");
    assert!(report.remote_uname.is_none());
}

/// An uncompressed archive holding only `/etc/kiln/init.json` = `config`.
fn config_segment(config: &InitConfig, directory: &Path) -> PathBuf {
    let text = serde_json::to_vec_pretty(config).unwrap();
    let tree = ArchiveTree::from_entries([
        Entry::directory(ArchivePath::new("etc").unwrap(), 0o755),
        Entry::directory(ArchivePath::new("etc/kiln").unwrap(), 0o755),
        Entry::file(
            ArchivePath::new("etc/kiln/init.json").unwrap(),
            0o644,
            Content::Bytes(text.into()),
        ),
    ])
    .unwrap();
    let path = directory.join("extra-init-json.cpio");
    let options = InitramfsOptions {
        mtime: 1_700_000_000,
        compression: Compression::None,
        early: None,
    };
    kiln_archive::write_initramfs_file(&tree, &options, &path, &mut |_| {}).unwrap();
    path
}

fn image_config(image: &ImageDirectory) -> InitConfig {
    kiln_smoke::image::init_config_from_initramfs(&fs::read(&image.initramfs).unwrap()).unwrap()
}

fn fail(vm: &kiln_smoke::vm::Vm, checker: &MarkerChecker, outcome: &WaitOutcome) -> ! {
    panic!(
        "{}",
        BootFailure::from_vm(vm, smoke::failure_message(outcome, checker))
    );
}

#[test]
#[ignore = "slow: boots the hook image in QEMU with a service that keeps crashing (x86_64, TCG)"]
fn a_crashing_service_is_restarted_with_growing_backoff() {
    let image = hook_image(ImageArch::X86_64);
    let work = work_directory("x86_64-crashing-service");
    let mut config = image_config(&image);
    config.services.push(ServiceEntry {
        name: "crasher".to_string(),
        argv: [
            "/bin/busybox",
            "sh",
            "-c",
            "echo crashing on purpose; exit 3",
        ]
        .map(String::from)
        .to_vec(),
        env: Default::default(),
        working_directory: None,
        user: None,
        uid: None,
        gid: None,
        capabilities: None,
        namespaces: Vec::new(),
        restart: RestartPolicy::Always,
        backoff: BackoffSettings {
            initial_ms: 1_000,
            max_ms: 4_000,
            reset_after_ms: 60_000,
        },
        after: Vec::new(),
    });
    let mut options = SmokeOptions::new(work.clone());
    options.network = false;
    options.extra_initramfs = Some(config_segment(&config, &work));
    let mut started = smoke::start_boot(&image, &options, false).unwrap();
    let plan = BootPlan::from_config(&config, PlanSource::InitramfsConfig);
    let mut boot = MarkerChecker::new(MarkerPlan::boot_to_ready(
        &plan,
        NetworkExpectation::NoLink,
        &[],
    ));
    let outcome = started
        .vm
        .expect(&mut boot, options.boot_timeout, &mut |found| {
            eprintln!("{:>7.1}s {}", found.at.as_secs_f64(), found.label)
        });
    if outcome != WaitOutcome::Complete {
        fail(&started.vm, &boot, &outcome);
    }
    // The restarts begin before `kiln: ready`: read the console from its start again.
    started.vm.rewind();
    let exited = |delay: &str| {
        Marker::new(
            format!("crasher exited, restart in {delay}"),
            format!("kiln: service crasher exited (status 3), restarting in {delay}"),
        )
    };
    let restarts = MarkerPlan::default()
        .then(Marker::service_started("crasher"))
        .then(exited("1s"))
        .then(Marker::service_started("crasher"))
        .then(exited("2s"))
        .then(Marker::service_started("crasher"))
        .then(exited("4s"))
        .then(Marker::service_started("crasher"))
        .then(exited("4s"))
        .then(Marker::service_started("crasher"));
    let mut checker = MarkerChecker::new(restarts);
    let outcome = started
        .vm
        .expect(&mut checker, Duration::from_secs(300), &mut |found| {
            eprintln!("{:>7.1}s {}", found.at.as_secs_f64(), found.label)
        });
    if outcome != WaitOutcome::Complete {
        fail(&started.vm, &checker, &outcome);
    }
    // The waits are real: each restart comes at least its announced delay after the exit.
    let found = checker.found();
    for (exit, restart, delay) in [(1, 2, 1.0), (3, 4, 2.0), (5, 6, 4.0), (7, 8, 4.0)] {
        let waited = found[restart]
            .at
            .saturating_sub(found[exit].at)
            .as_secs_f64();
        assert!(
            waited >= delay - 0.3,
            "restart {restart} came {waited:.2}s after the exit, announced {delay}s"
        );
    }
    eprintln!("console log: {}", started.vm.console_log.display());
}

#[test]
#[ignore = "slow: boots the hook image in QEMU with an onboot step that hangs (x86_64, TCG)"]
fn a_hanging_onboot_step_is_killed_at_its_timeout_and_the_boot_goes_on() {
    let image = hook_image(ImageArch::X86_64);
    let work = work_directory("x86_64-hanging-step");
    let mut config = image_config(&image);
    // The image's own steps and markers, to expect after the hanging step.
    let image_markers = MarkerPlan::boot_to_ready(
        &BootPlan::from_config(&config, PlanSource::InitramfsConfig),
        NetworkExpectation::NoLink,
        &[],
    );
    // First, and every other step after it: the boot waits for it until its timeout.
    for step in &mut config.onboot {
        if let Some(after) = step.after.as_mut() {
            after.push("hang".to_string());
        }
    }
    config.onboot.insert(
        0,
        StepEntry {
            name: "hang".to_string(),
            argv: ["/bin/busybox", "sleep", "3600"].map(String::from).to_vec(),
            env: Default::default(),
            working_directory: None,
            capabilities: None,
            namespaces: Vec::new(),
            timeout_ms: 3_000,
            fatal: false,
            after: Some(Vec::new()),
        },
    );
    let mut options = SmokeOptions::new(work.clone());
    options.network = false;
    options.extra_initramfs = Some(config_segment(&config, &work));
    let mut started = smoke::start_boot(&image, &options, false).unwrap();
    // Kernel, kiln-init, the hanging step's timeout, then the image's own plan.
    let markers = MarkerPlan::default()
        .then(Marker::kernel_started())
        .then(Marker::init_started())
        .then(Marker::onboot_timed_out("hang"))
        .followed_by(MarkerPlan {
            stages: image_markers.stages[2..].to_vec(),
        });
    let mut checker = MarkerChecker::new(markers);
    let outcome = started
        .vm
        .expect(&mut checker, options.boot_timeout, &mut |found| {
            eprintln!("{:>7.1}s {}", found.at.as_secs_f64(), found.label)
        });
    if outcome != WaitOutcome::Complete {
        fail(&started.vm, &checker, &outcome);
    }
    let found = checker.found();
    let timed_out = found
        .iter()
        .find(|found| found.label == "onboot hang timed out")
        .unwrap();
    assert!(
        timed_out.line.contains("timed out after 3s"),
        "{}",
        timed_out.line
    );
    let before = &found[found
        .iter()
        .position(|found| found.label == "onboot hang timed out")
        .unwrap()
        - 1];
    let ran = timed_out.at.saturating_sub(before.at).as_secs_f64();
    assert!(
        (2.7..60.0).contains(&ran),
        "the step was stopped {ran:.1}s after kiln-init started (timeout 3s)"
    );
    eprintln!("console log: {}", started.vm.console_log.display());
}

/// A service of the smoke test's own, as root, started once.
fn check_service(name: &str, script: &str) -> ServiceEntry {
    ServiceEntry {
        name: name.to_string(),
        argv: ["/bin/busybox", "sh", "-c", script]
            .map(String::from)
            .to_vec(),
        env: Default::default(),
        working_directory: None,
        user: None,
        uid: None,
        gid: None,
        capabilities: None,
        namespaces: Vec::new(),
        restart: RestartPolicy::Never,
        backoff: BackoffSettings::default(),
        after: vec!["syslog".to_string()],
    }
}

#[test]
#[ignore = "slow: boots the hook image in QEMU and reads the capabilities of its syslog and of an isolated service (x86_64, TCG)"]
fn syslog_capabilities_isolated_namespaces_and_init_boot_settings_seen_from_services() {
    let image = hook_image(ImageArch::X86_64);
    let work = work_directory("x86_64-capabilities-namespaces");
    let mut config = image_config(&image);
    let syslog = config
        .services
        .iter()
        .find(|service| service.name == "syslog")
        .expect("the hook image has syslog");
    assert_eq!(
        syslog.capabilities,
        Some(vec![kiln_smoke::init_config::Capability::CapSyslog])
    );
    // klogd reads the kernel log (syslog(2) needs CAP_SYSLOG); syslogd takes logger's line.
    config.services.push(check_service(
        "syslog-check",
        "sleep 3; logger kiln-syslog-check; sleep 1; \
         for daemon in syslogd klogd; do \
           echo $daemon CapEff $(grep CapEff /proc/$(pidof $daemon)/status | cut -f2); done; \
         logread | grep -q ' kernel: ' && echo kernel messages in the log; \
         logread | grep -q kiln-syslog-check && echo logger message in the log",
    ));
    // Every namespace kiln knows, no capability: the static musl kiln-init's setup on the
    // image's own kernel.
    let mut isolated = check_service(
        "isolated-check",
        "echo pid $$.; echo links $(tail -n +3 /proc/net/dev | cut -d: -f1) end; \
         echo CapEff $(grep CapEff /proc/self/status | cut -f2); \
         echo CapBnd $(grep CapBnd /proc/self/status | cut -f2)",
    );
    isolated.capabilities = Some(Vec::new());
    isolated.namespaces = {
        use kiln_smoke::init_config::Namespace;
        vec![
            Namespace::Mount,
            Namespace::Uts,
            Namespace::Ipc,
            Namespace::Net,
            Namespace::Cgroup,
            Namespace::Pid,
        ]
    };
    config.services.push(isolated);
    // kiln-init's boot-time settings, seen from a service once the boot is ready: RCU grace
    // periods back to normal, PID 1 at nice -10, its children at 0 (field 19 of stat).
    config.services.push(check_service(
        "boot-settings-check",
        "sleep 2; echo rcu_expedited $(cat /sys/kernel/rcu_expedited); \
         echo init nice $(cut -d' ' -f19 /proc/1/stat); \
         echo service nice $(cut -d' ' -f19 /proc/self/stat)",
    ));
    let mut options = SmokeOptions::new(work.clone());
    options.network = false;
    options.extra_initramfs = Some(config_segment(&config, &work));
    let mut started = smoke::start_boot(&image, &options, false).unwrap();
    let plan = BootPlan::from_config(&config, PlanSource::InitramfsConfig);
    let mut boot = MarkerChecker::new(MarkerPlan::boot_to_ready(
        &plan,
        NetworkExpectation::NoLink,
        &[],
    ));
    let show = &mut |found: &kiln_smoke::markers::FoundMarker| {
        eprintln!("{:>7.1}s {}", found.at.as_secs_f64(), found.label)
    };
    let outcome = started.vm.expect(&mut boot, options.boot_timeout, show);
    if outcome != WaitOutcome::Complete {
        fail(&started.vm, &boot, &outcome);
    }
    started.vm.rewind();
    let line = |text: &str| Marker::new(text, text);
    let mut checks = MarkerChecker::new(MarkerPlan::default().then_all(vec![
        line("[syslog-check] syslogd CapEff 0000000400000000"),
        line("[syslog-check] klogd CapEff 0000000400000000"),
        line("[syslog-check] kernel messages in the log"),
        line("[syslog-check] logger message in the log"),
        line("[isolated-check] pid 1."),
        // sit0: the virt kernel's built-in sit driver puts a (down) fallback tunnel in every
        // network namespace.
        Marker::any_of(
            "isolated-check links",
            &[
                "[isolated-check] links lo end",
                "[isolated-check] links lo sit0 end",
            ],
        ),
        line("[isolated-check] CapEff 0000000000000000"),
        line("[isolated-check] CapBnd 0000000000000000"),
        line("kiln: service isolated-check exited (status 0), not restarting"),
        line("[boot-settings-check] rcu_expedited 0"),
        line("[boot-settings-check] init nice -10"),
        line("[boot-settings-check] service nice 0"),
    ]));
    let outcome = started
        .vm
        .expect(&mut checks, Duration::from_secs(120), show);
    if outcome != WaitOutcome::Complete {
        fail(&started.vm, &checks, &outcome);
    }
    let console = fs::read_to_string(&started.vm.console_log).unwrap();
    assert!(
        !console.contains("kiln: service syslog exited"),
        "syslog stopped with CAP_SYSLOG only; console log {}",
        started.vm.console_log.display()
    );
    eprintln!("console log: {}", started.vm.console_log.display());
}
