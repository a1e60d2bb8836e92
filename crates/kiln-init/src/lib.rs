//! kiln-init: PID 1 of every kiln image.
//!
//! **Owns**: the boot of the in-memory system after the kernel hands over — early mounts
//! (proc, sys, devtmpfs, devpts, /dev/shm, /run, /tmp, cgroup2), optionally moving `/` off
//! rootfs, the kernel command line (Hook's keys and `kiln.*`), kernel modules through
//! `finit_module(2)`, onboot steps with timeouts, supervised services with restart backoff and
//! logs, reaping of orphans, and the clean power-off / reboot / halt on request or
//! Ctrl-Alt-Del. Also the schema of `/etc/kiln/init.json` ([`config`]) and the console markers
//! below, both stable interfaces.
//!
//! **Does not touch**: how the config is produced (the module catalog and composition write
//! it), what is in the image, networking (the `dhcp` module's onboot step does it), container
//! runtimes. It never exits: PID 1 exiting panics the kernel.
//!
//! *Architecture Invariant*: every privileged operation goes through [`syscall::Syscall`];
//! the sequences are tested with [`syscall::RecordingSyscall`] (`cargo nextest run -p
//! kiln-init`), supervision with real child processes in a non-PID-1 subreaper.
//!
//! # Configuration (`/etc/kiln/init.json`)
//!
//! Every object denies unknown keys. Durations are integer milliseconds.
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `hostname` | string | kernel's | `sethostname(2)` early |
//! | `root.move_off_rootfs` | bool | `false` | copy the initramfs into a tmpfs and make it `/` (needed for `pivot_root`) |
//! | `root.tmpfs_size` | string | kernel's | `size=` of that tmpfs |
//! | `mounts[]` | `{source, target, fstype, flags[], data, optional}` | `optional: true` | after modules; flags: `ro nosuid nodev noexec noatime relatime bind rbind rec private shared slave` |
//! | `kernel_modules[]` | `{path, args}` | `args: ""` | loaded in order (modules.dep order); `EEXIST` is fine |
//! | `onboot[]`, `shutdown[]` | `{name, argv, env, working_directory, capabilities, namespaces, timeout_ms, fatal, after}` | `timeout_ms: 60000`, `fatal: false`, no `after` | each killed at its timeout; a step with `after` (names of earlier steps) starts once those ended, alongside other ready steps; without it, after the step before it |
//! | `services[]` | `{name, argv, env, working_directory, user \| uid, gid, capabilities, namespaces, restart, backoff, after}` | `restart: "always"` | `restart`: `always`, `on-failure`, `never`; `backoff`: `{initial_ms: 1000, max_ms: 30000, reset_after_ms: 60000}`; `after`: start order |
//! | `…capabilities` | list of `CAP_*` names | absent | exactly these: bounding, permitted, effective, inheritable (and ambient for a non-root user); `[]`: none; absent: unchanged ([`child_setup`]) |
//! | `…namespaces` | list of `mount`, `uts`, `ipc`, `net`, `cgroup`, `pid` | `[]` | new namespaces before exec; `mount` makes `/` private, `net` brings `lo` up, `pid` runs the program as PID 1 under a waiter |
//! | `console.service_output_to_console` | bool | `true` | copy `[NAME] line` to the console |
//! | `console.log_directory` | path | `/var/log` | `NAME.log` per step and service |
//! | `console.log_rotate_bytes` | integer | `1048576` | `NAME.log` → `NAME.log.1` at this size (logs are in RAM); `0`: never |
//! | `stop_grace_ms` | integer | `5000` | SIGTERM → SIGKILL grace |
//!
//! PID 1 runs at nice −10 and every child goes back to nice 0 before exec, so starting the
//! next service is not held up by the start-up of the last one
//! ([`process_runner::raise_supervisor_priority`]). From the early mounts to `kiln: ready`,
//! RCU grace periods are expedited (`/sys/kernel/rcu_expedited`), as the kernel has them
//! during its own boot, then set back to what they were (`rcupdate.rcu_normal=1` on the
//! command line overrides both; see [`boot::RCU_EXPEDITED_PATH`]).
//!
//! Every child gets `PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
//! `HOME=/`, `TERM=linux` plus its `env`, stdin `/dev/null`, its own session (`setsid`), and
//! stdout+stderr on one pipe. Example (`examples/init.json`, parsed by the tests):
//!
//! ```json
#![doc = include_str!("../examples/init.json")]
//! ```
//!
//! Check a config at build time with `kiln-init --check-config PATH` (exit 0, or the error on
//! stderr and exit 1).
//!
//! # Kernel command line
//!
//! Split like the kernel (`key="a b"`), then Hook's keys (`grpc_authority`, `worker_id`,
//! `tink_worker_image`, `docker_registry`, `registry_username`, `registry_password`,
//! `tinkerbell_tls`, `tinkerbell_insecure_tls`, `syslog_host`, `insecure_registries`,
//! `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, `vlan_id`, `hw_addr`, `interface`, `ipam`) and
//! `kiln.debug`, `kiln.services.disable=a,b`, `kiln.onboot.disable=a,b`, `kiln.ANY=value`.
//! Written to `/run/kiln/cmdline.env` (mode 0600, `. /run/kiln/cmdline.env` in sh; names as on
//! the command line with `.`/`-` → `_`, `ipam` expanded into `ipam_*`) and
//! `/run/kiln/cmdline.json` (the [`cmdline::BootParameters`] struct).
//!
//! # Console markers (stable interface: smoke tests wait for them)
//!
//! Each is one whole line on the console. `NAME` is a step or service name; `D` a configured
//! duration (`30s`, or `250ms` when not whole seconds); `T` a measured one (`1.2s`); `E` is
//! `exit N` or `signal N` for steps, `status N` or `signal N` for services.
//!
//! | marker | when |
//! |---|---|
//! | `kiln: kiln-init VERSION starting` | first line |
//! | `kiln: root moved off rootfs` | after `root.move_off_rootfs` |
//! | `kiln: module NAME loaded` / `already loaded` / `failed to load (REASON)` | per kernel module |
//! | `kiln: onboot NAME finished (E, T)` | step exited 0 (steps with `after` run at once, so these come in the order steps end) |
//! | `kiln: onboot NAME failed (E, T)` | non-zero exit or signal |
//! | `kiln: onboot NAME failed to start (REASON)` | could not spawn |
//! | `kiln: onboot NAME timed out after D` | killed at its timeout (SIGTERM, SIGKILL after the grace) |
//! | `kiln: onboot NAME stopped for ACTION (E)` | a power request arrived while it ran |
//! | `kiln: onboot NAME disabled by kernel command line` | `kiln.onboot.disable` |
//! | `kiln: service NAME started (pid N)` | each start and restart |
//! | `kiln: service NAME exited (E), restarting in D` | per restart policy and backoff |
//! | `kiln: service NAME exited (E), not restarting (restart policy P)` | |
//! | `kiln: service NAME failed to start (REASON), restarting in D` / `…, not restarting (restart policy P)` | |
//! | `kiln: service NAME disabled by kernel command line` | `kiln.services.disable` |
//! | `kiln: ready` | all onboot steps done and all services started (exactly this line) |
//! | `kiln: shutdown requested (ACTION)` | ACTION is `powering off`, `rebooting` or `halting` |
//! | `kiln: shutdown NAME finished/failed/timed out …` | as for onboot |
//! | `kiln: service NAME stopped (E)` | at shutdown |
//! | `kiln: service NAME did not stop within D, killing it` | at shutdown |
//! | `kiln: powering off` / `kiln: rebooting` / `kiln: halting` | last line before `reboot(2)` |
//! | `kiln: warning: …` | something non-fatal went wrong |
//! | `kiln: error: …` | something fatal went wrong; an emergency shell follows |
//! | `kiln: starting emergency shell /bin/sh` / `kiln: no /bin/sh, waiting for poweroff or reboot` | after an error |
//! | `kiln: debug: [SECONDS] …` | only with `kiln.debug`; SECONDS since the kernel started (`CLOCK_BOOTTIME`) |
//! | `[NAME] line` | a line of output of step or service NAME (also in `/var/log/NAME.log`) |
//!
//! Power requests follow busybox's convention (its `halt.c` signals PID 1): `halt` sends
//! SIGUSR1, `poweroff` SIGUSR2, `reboot` SIGTERM; Ctrl-Alt-Del sends SIGINT (after
//! `reboot(RB_DISABLE_CAD)`) and reboots.

pub mod boot;
pub mod child_setup;
pub mod cmdline;
pub mod config;
pub mod early_mounts;
pub mod hardware_modules;
pub mod kernel_modules;
pub mod process_runner;
pub mod supervision;
pub mod syscall;
