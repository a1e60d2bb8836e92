//! What a step's or service's child does between `fork` and `exec` besides resetting signals:
//! its own session, new namespaces, the user, and exactly the capabilities it asked for.
//!
//! The parent computes a [`ChildSetup`] (plain `Copy` data: a uid/gid pair, a capability mask,
//! `CLONE_NEW*` flags); the child applies it with raw system calls only, because it is the
//! forked copy of a multi-threaded process and must not allocate or take a lock. When a call
//! fails, the child writes a two-byte code ([`SetupStep`] and, say, a capability number) into
//! a [`FailureChannel`] before std's `Command` hands the errno to the parent, which joins both
//! into one message: `capability CAP_SYS_BOOT is not in kiln-init's bounding set: Operation
//! not permitted (os error 1)`.
//!
//! The order matters and is the one `capabilities(7)` requires:
//! 1. `unshare(2)` the namespaces (root with every capability can), make `/` private in a new
//!    mount namespace (`MS_REC | MS_PRIVATE`, so nothing propagates back), bring `lo` up in a
//!    new network namespace;
//! 2. for a new PID namespace, fork once more: `unshare(CLONE_NEWPID)` only puts the caller's
//!    *children* in it. The grandchild goes on to exec and is PID 1 there; the child stays
//!    outside as a waiter that forwards signals and exits with the grandchild's status;
//! 3. drop every other capability from the bounding set (needs `CAP_SETPCAP`, so before
//!    anything lowers the effective set);
//! 4. for a non-root user: `PR_SET_KEEPCAPS`, so `setuid` keeps the permitted set, then
//!    `setgroups(0)`, `setgid`, `setuid`;
//! 5. `capset(2)`: permitted = effective = inheritable = the requested set;
//! 6. for a non-root user: raise each as an ambient capability (it must be permitted and
//!    inheritable first), because without file capabilities on the program, ambient ones are
//!    the only ones a non-root process keeps across `exec`. For root, `exec` recomputes the
//!    permitted set as bounding ∪ inheritable, which step 3 and 5 made the requested set.
//!
//! Without `capabilities:` steps 3, 5 and 6 are skipped and a non-root user simply loses
//! every capability at `setuid`, as before this module existed.
//!
//! *Architecture Invariant*: these calls change the child only, never PID 1, which is why they
//! are here and not behind [`crate::syscall::Syscall`]; they are tested by spawning real
//! processes as root (`tests/capabilities_and_namespaces.rs`) and reading the kernel's view in
//! `/proc/self/status`.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::config::{Capability, Namespace};

/// `_LINUX_CAPABILITY_VERSION_3` of `<linux/capability.h>`: 64-bit sets in two 32-bit words.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
#[derive(Debug)]
struct CapabilityHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two of them (bits 0-31, 32-63).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct CapabilityData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `IFF_UP` of `<net/if.h>` as the `short` that `struct ifreq`'s flags field is (libc
/// declares the constant as an `int`).
const INTERFACE_UP: libc::c_short = 0x1;

/// Signals the PID-namespace waiter passes on to the service. Not SIGCHLD (the waiter's own
/// wake-up), not SIGKILL/SIGSTOP (they cannot be caught: a SIGKILL of the process group
/// reaches the service directly).
const FORWARDED_SIGNALS: [libc::c_int; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGALRM,
];

/// The part of a child's setup that failed, sent to the parent as one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SetupStep {
    /// `setsid(2)`.
    NewSession = 1,
    /// `unshare(2)`.
    Unshare = 2,
    /// `mount(NULL, "/", NULL, MS_REC | MS_PRIVATE)` in the new mount namespace.
    MountPrivate = 3,
    /// `SIOCSIFFLAGS` on `lo` in the new network namespace.
    LoopbackUp = 4,
    /// The fork that makes the service PID 1 of its namespace.
    ForkIntoPidNamespace = 5,
    /// Mounting a `/proc` of the new PID namespace.
    MountProc = 6,
    /// The kernel does not know this capability number (`PR_CAPBSET_READ` says `EINVAL`).
    CapabilityUnknownToKernel = 7,
    /// kiln-init itself does not have this capability in its bounding set.
    CapabilityNotInBoundingSet = 8,
    /// `PR_CAPBSET_DROP`.
    DropFromBoundingSet = 9,
    /// `PR_SET_KEEPCAPS`.
    KeepCapabilities = 10,
    /// `setgroups(0, NULL)`.
    DropSupplementaryGroups = 11,
    /// `setgid(2)`.
    SetGroupId = 12,
    /// `setuid(2)`.
    SetUserId = 13,
    /// `capset(2)`.
    SetCapabilities = 14,
    /// `PR_CAP_AMBIENT_CLEAR_ALL`.
    ClearAmbient = 15,
    /// `PR_CAP_AMBIENT_RAISE`.
    RaiseAmbient = 16,
    /// `PR_SET_PDEATHSIG`.
    ParentDeathSignal = 17,
}

impl SetupStep {
    const ALL: [SetupStep; 17] = [
        SetupStep::NewSession,
        SetupStep::Unshare,
        SetupStep::MountPrivate,
        SetupStep::LoopbackUp,
        SetupStep::ForkIntoPidNamespace,
        SetupStep::MountProc,
        SetupStep::CapabilityUnknownToKernel,
        SetupStep::CapabilityNotInBoundingSet,
        SetupStep::DropFromBoundingSet,
        SetupStep::KeepCapabilities,
        SetupStep::DropSupplementaryGroups,
        SetupStep::SetGroupId,
        SetupStep::SetUserId,
        SetupStep::SetCapabilities,
        SetupStep::ClearAmbient,
        SetupStep::RaiseAmbient,
        SetupStep::ParentDeathSignal,
    ];

    fn from_code(code: u8) -> Option<SetupStep> {
        SetupStep::ALL.into_iter().find(|step| *step as u8 == code)
    }

    /// What failed, for the `failed to start (...)` marker; `detail` is the capability
    /// number where the step is about one.
    pub fn describe(self, detail: u8) -> String {
        let capability = || match Capability::from_number(detail) {
            Some(capability) => format!("capability {}", capability.name()),
            None => format!("capability number {detail}"),
        };
        match self {
            SetupStep::NewSession => "cannot start a new session (setsid)".to_owned(),
            SetupStep::Unshare => "cannot create the new namespaces (unshare)".to_owned(),
            SetupStep::MountPrivate => {
                "cannot make / a private mount in the new mount namespace".to_owned()
            }
            SetupStep::LoopbackUp => "cannot bring up lo in the new network namespace".to_owned(),
            SetupStep::ForkIntoPidNamespace => "cannot fork into the new pid namespace".to_owned(),
            SetupStep::MountProc => "cannot mount /proc for the new pid namespace".to_owned(),
            SetupStep::CapabilityUnknownToKernel => {
                format!("{} is not known to this kernel", capability())
            }
            SetupStep::CapabilityNotInBoundingSet => {
                format!("{} is not in kiln-init's bounding set", capability())
            }
            SetupStep::DropFromBoundingSet => format!(
                "cannot drop {} from the bounding set (PR_CAPBSET_DROP)",
                capability()
            ),
            SetupStep::KeepCapabilities => {
                "cannot keep capabilities across setuid (PR_SET_KEEPCAPS)".to_owned()
            }
            SetupStep::DropSupplementaryGroups => {
                "cannot drop supplementary groups (setgroups)".to_owned()
            }
            SetupStep::SetGroupId => "cannot set the group id (setgid)".to_owned(),
            SetupStep::SetUserId => "cannot set the user id (setuid)".to_owned(),
            SetupStep::SetCapabilities => "cannot set the capability sets (capset)".to_owned(),
            SetupStep::ClearAmbient => "cannot clear the ambient capabilities".to_owned(),
            SetupStep::RaiseAmbient => {
                format!("cannot raise {} into the ambient set", capability())
            }
            SetupStep::ParentDeathSignal => {
                "cannot set the parent-death signal (PR_SET_PDEATHSIG)".to_owned()
            }
        }
    }
}

/// A pipe the child reports a failed [`SetupStep`] on. Both ends are close-on-exec: a child
/// that execs closes its copy, so a successful start leaves the pipe empty.
#[derive(Debug)]
pub struct FailureChannel {
    reader: OwnedFd,
    writer: OwnedFd,
}

impl FailureChannel {
    /// A new pipe (non-blocking: the parent only reads what is already there).
    pub fn new() -> std::io::Result<FailureChannel> {
        let mut descriptors: [libc::c_int; 2] = [-1; 2];
        // SAFETY: `descriptors` has room for the two descriptors pipe2 writes.
        let result =
            unsafe { libc::pipe2(descriptors.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (reader, writer) = unsafe {
            (
                OwnedFd::from_raw_fd(descriptors[0]),
                OwnedFd::from_raw_fd(descriptors[1]),
            )
        };
        Ok(FailureChannel { reader, writer })
    }

    /// The descriptor the child writes to (valid in the child until its exec).
    pub fn writer_descriptor(&self) -> RawFd {
        self.writer.as_raw_fd()
    }

    /// After a failed spawn: what the child reported, if it got as far as reporting.
    pub fn into_failure(self) -> Option<String> {
        drop(self.writer);
        let mut code = [0u8; 2];
        let mut reader = std::fs::File::from(self.reader);
        match reader.read(&mut code) {
            Ok(2) => SetupStep::from_code(code[0]).map(|step| step.describe(code[1])),
            _ => None,
        }
    }
}

/// Writes `step` and `detail` to the failure channel and returns `error`. Async-signal-safe.
fn report(channel: RawFd, step: SetupStep, detail: u8, error: std::io::Error) -> std::io::Error {
    let code = [step as u8, detail];
    // SAFETY: `code` is two readable bytes on this stack frame; a failed write only loses the
    // description, the errno still reaches the parent.
    unsafe { libc::write(channel, code.as_ptr().cast(), code.len()) };
    error
}

/// [`report`] with the current errno (read before `write` can change it).
fn report_last_error(channel: RawFd, step: SetupStep, detail: u8) -> std::io::Error {
    let error = std::io::Error::last_os_error();
    report(channel, step, detail, error)
}

/// What a child must do before exec, computed in the parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChildSetup {
    /// `(uid, gid)` to switch to; `None` stays root.
    pub credentials: Option<(u32, u32)>,
    /// Bit N set: keep capability N. `None`: leave the capability sets alone.
    pub capabilities: Option<u64>,
    /// `CLONE_NEW*` flags for `unshare(2)`; 0 for none.
    pub unshare_flags: libc::c_int,
}

impl ChildSetup {
    /// The setup for a child running as `credentials` with these capabilities and namespaces.
    pub fn new(
        credentials: Option<(u32, u32)>,
        capabilities: Option<&[Capability]>,
        namespaces: &[Namespace],
    ) -> ChildSetup {
        ChildSetup {
            credentials,
            capabilities: capabilities.map(capability_mask),
            unshare_flags: namespaces
                .iter()
                .fold(0, |flags, namespace| flags | namespace.clone_flag()),
        }
    }

    fn has_namespace(&self, namespace: Namespace) -> bool {
        self.unshare_flags & namespace.clone_flag() != 0
    }

    /// Applies the setup to the calling process, reporting a failure on `channel`. Returns in
    /// the process that is to exec the program; with a new PID namespace, the process that
    /// called it becomes the waiter and never returns.
    ///
    /// # Safety
    /// Only in a freshly forked child before exec (std's `pre_exec`): it changes the calling
    /// process for good, makes only async-signal-safe calls, and may fork.
    pub unsafe fn apply(&self, channel: RawFd) -> std::io::Result<()> {
        // Its own session, so a timeout or a shutdown signals the whole process group.
        // SAFETY: setsid takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            return Err(report_last_error(channel, SetupStep::NewSession, 0));
        }
        if self.unshare_flags != 0 {
            // SAFETY: unshare takes flags only.
            if unsafe { libc::unshare(self.unshare_flags) } != 0 {
                return Err(report_last_error(channel, SetupStep::Unshare, 0));
            }
        }
        if self.has_namespace(Namespace::Mount) {
            // SAFETY: "/" is a NUL-terminated literal; null source, type and data are allowed
            // for a propagation change.
            let result = unsafe {
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )
            };
            if result != 0 {
                return Err(report_last_error(channel, SetupStep::MountPrivate, 0));
            }
        }
        if self.has_namespace(Namespace::Net) {
            // SAFETY: a child between fork and exec, as this function requires.
            if let Err(error) = unsafe { bring_loopback_up() } {
                return Err(report(channel, SetupStep::LoopbackUp, 0, error));
            }
        }
        if self.has_namespace(Namespace::Pid) {
            // SAFETY: a child between fork and exec, as this function requires.
            unsafe { fork_into_pid_namespace(channel) }?;
            if self.has_namespace(Namespace::Mount) {
                // SAFETY: literals are NUL-terminated; no data.
                let result = unsafe {
                    libc::mount(
                        c"proc".as_ptr(),
                        c"/proc".as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    )
                };
                if result != 0 {
                    return Err(report_last_error(channel, SetupStep::MountProc, 0));
                }
            }
        }
        // SAFETY: a child between fork and exec, as this function requires.
        unsafe { self.apply_credentials_and_capabilities(channel) }?;
        if self.has_namespace(Namespace::Pid) {
            // The service dies with its waiter (killed alone, the waiter would leave it
            // unsupervised). Set last: a change of uid or gid clears it.
            // SAFETY: prctl with integer arguments.
            let result = unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::c_ulong::from(libc::SIGKILL.unsigned_abs()),
                    0,
                    0,
                    0,
                )
            };
            if result != 0 {
                return Err(report_last_error(channel, SetupStep::ParentDeathSignal, 0));
            }
        }
        Ok(())
    }

    /// Steps 3 to 6 of the module documentation.
    ///
    /// # Safety
    /// As [`ChildSetup::apply`].
    unsafe fn apply_credentials_and_capabilities(&self, channel: RawFd) -> std::io::Result<()> {
        let Some(mask) = self.capabilities else {
            if let Some((uid, gid)) = self.credentials {
                // SAFETY: as this function.
                unsafe { switch_user(uid, gid, channel) }?;
            }
            return Ok(());
        };
        for number in capability_numbers(mask) {
            // SAFETY: prctl with integer arguments.
            let in_bounding_set =
                unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(number), 0, 0, 0) };
            if in_bounding_set < 0 {
                return Err(report_last_error(
                    channel,
                    SetupStep::CapabilityUnknownToKernel,
                    number,
                ));
            }
            if in_bounding_set == 0 {
                return Err(report(
                    channel,
                    SetupStep::CapabilityNotInBoundingSet,
                    number,
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ));
            }
        }
        // Every capability the kernel knows (PR_CAPBSET_READ fails past the last one) that was
        // not asked for leaves the bounding set.
        for number in 0..64u8 {
            // SAFETY: prctl with integer arguments.
            let in_bounding_set =
                unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(number), 0, 0, 0) };
            if in_bounding_set < 0 {
                break;
            }
            if in_bounding_set == 0 || mask & (1u64 << number) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments.
            let result =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(number), 0, 0, 0) };
            if result != 0 {
                return Err(report_last_error(
                    channel,
                    SetupStep::DropFromBoundingSet,
                    number,
                ));
            }
        }
        let non_root = matches!(self.credentials, Some((uid, _)) if uid != 0);
        if let Some((uid, gid)) = self.credentials {
            if non_root {
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
                    return Err(report_last_error(channel, SetupStep::KeepCapabilities, 0));
                }
            }
            // SAFETY: as this function.
            unsafe { switch_user(uid, gid, channel) }?;
        }
        let [low, high] = split_mask(mask);
        let header = CapabilityHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapabilityData {
                effective: low,
                permitted: low,
                inheritable: low,
            },
            CapabilityData {
                effective: high,
                permitted: high,
                inheritable: high,
            },
        ];
        // SAFETY: capset reads one header and, for version 3, two data structs, all #[repr(C)]
        // as in <linux/capability.h> and alive on this stack frame.
        let result =
            unsafe { libc::syscall(libc::SYS_capset, std::ptr::from_ref(&header), data.as_ptr()) };
        if result != 0 {
            return Err(report_last_error(channel, SetupStep::SetCapabilities, 0));
        }
        if non_root {
            // SAFETY: prctl with integer arguments.
            let result = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::c_ulong::from(libc::PR_CAP_AMBIENT_CLEAR_ALL.unsigned_abs()),
                    0,
                    0,
                    0,
                )
            };
            if result != 0 {
                return Err(report_last_error(channel, SetupStep::ClearAmbient, 0));
            }
            for number in capability_numbers(mask) {
                // SAFETY: prctl with integer arguments.
                let result = unsafe {
                    libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::c_ulong::from(libc::PR_CAP_AMBIENT_RAISE.unsigned_abs()),
                        libc::c_ulong::from(number),
                        0,
                        0,
                    )
                };
                if result != 0 {
                    return Err(report_last_error(channel, SetupStep::RaiseAmbient, number));
                }
            }
        }
        Ok(())
    }
}

/// Bit N set for capability N.
pub fn capability_mask(capabilities: &[Capability]) -> u64 {
    capabilities
        .iter()
        .fold(0, |mask, capability| mask | (1u64 << capability.number()))
}

/// The capability numbers set in `mask`, lowest first.
fn capability_numbers(mask: u64) -> impl Iterator<Item = u8> {
    (0..64u8).filter(move |number| mask & (1u64 << number) != 0)
}

/// A 64-bit mask as `capset`'s two 32-bit words, low word first.
fn split_mask(mask: u64) -> [u32; 2] {
    let bytes = mask.to_le_bytes();
    [
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    ]
}

/// `setgroups(0)`, `setgid`, `setuid`, in that order (the last one gives up the right to do
/// the others). Supplementary groups are dropped, as std's `Command::uid` does.
///
/// # Safety
/// Only in a child between fork and exec.
unsafe fn switch_user(uid: u32, gid: u32, channel: RawFd) -> std::io::Result<()> {
    // SAFETY: setgroups with a count of 0 reads no list.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(report_last_error(
            channel,
            SetupStep::DropSupplementaryGroups,
            0,
        ));
    }
    // SAFETY: setgid takes an integer.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(report_last_error(channel, SetupStep::SetGroupId, 0));
    }
    // SAFETY: setuid takes an integer.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(report_last_error(channel, SetupStep::SetUserId, 0));
    }
    Ok(())
}

/// Sets `IFF_UP` on `lo` of the calling process's (new) network namespace, as `ip link set lo
/// up` would: a fresh namespace's loopback is down, and a service without even 127.0.0.1 is
/// rarely what anyone wants.
///
/// # Safety
/// Only in a child between fork and exec.
unsafe fn bring_loopback_up() -> std::io::Result<()> {
    // SAFETY: socket takes integers.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value (an empty name, no flags).
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = libc::c_char::from_ne_bytes([*byte]);
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `request`, which lives on
    // this frame; the raw syscall avoids ioctl's request type differing between C libraries.
    let mut result = unsafe {
        libc::syscall(
            libc::SYS_ioctl,
            socket,
            libc::SIOCGIFFLAGS,
            std::ptr::from_mut(&mut request),
        )
    };
    if result == 0 {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { request.ifr_ifru.ifru_flags |= INTERFACE_UP };
        // SAFETY: as above, SIOCSIFFLAGS reads name and flags.
        result = unsafe {
            libc::syscall(
                libc::SYS_ioctl,
                socket,
                libc::SIOCSIFFLAGS,
                std::ptr::from_mut(&mut request),
            )
        };
    }
    let error = std::io::Error::last_os_error();
    // SAFETY: `socket` is ours and closed once.
    unsafe { libc::close(socket) };
    if result == 0 {
        Ok(())
    } else {
        Err(error)
    }
}

/// Forks; returns `Ok` in the new process (PID 1 of the namespace the caller unshared), and
/// turns the caller into [`wait_and_forward`], which never returns.
///
/// # Safety
/// Only in a child between fork and exec, after `unshare(CLONE_NEWPID)`.
unsafe fn fork_into_pid_namespace(channel: RawFd) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut waited_for: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut previous: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the sets are valid and on this frame; signal numbers are constants. Blocked
    // before the fork, so a signal or the service's exit between fork and wait is kept
    // pending rather than lost.
    unsafe {
        libc::sigemptyset(&mut waited_for);
        for signal in FORWARDED_SIGNALS {
            libc::sigaddset(&mut waited_for, signal);
        }
        libc::sigaddset(&mut waited_for, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &waited_for, &mut previous);
    }
    // A raw clone with only SIGCHLD is fork(2) without the C library's fork handlers, which
    // have no business running in a child of a multi-threaded process (and aarch64 has no
    // fork system call).
    // SAFETY: clone with no shared resources and no new stack behaves like fork; the extra
    // arguments (parent and child tid pointers, tls) are null/zero and unused.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_ulong::from(libc::SIGCHLD.unsigned_abs()),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if pid < 0 {
        return Err(report_last_error(
            channel,
            SetupStep::ForkIntoPidNamespace,
            0,
        ));
    }
    if pid == 0 {
        // SAFETY: restores the mask saved above (empty: reset_signals_for_exec ran first).
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut()) };
        return Ok(());
    }
    let Ok(service) = libc::pid_t::try_from(pid) else {
        // A pid always fits in pid_t; if it did not, the service would be unsupervised.
        // SAFETY: _exit ends this process only.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: the caller is a forked child that will not exec; waited_for is initialised.
    unsafe { wait_and_forward(service, &waited_for) }
}

/// The PID-namespace waiter: forwards [`FORWARDED_SIGNALS`] to `service` and exits as it did
/// (same status, or the same signal), so the supervisor sees what it would without the
/// waiter.
///
/// # Safety
/// Only in a forked child that does not return to std's exec path; `waited_for` must be the
/// blocked set of forwarded signals and SIGCHLD.
unsafe fn wait_and_forward(service: libc::pid_t, waited_for: &libc::sigset_t) -> ! {
    // SAFETY: a child's own descriptors; see the function.
    unsafe { close_inherited_descriptors() };
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; WNOHANG does not block.
        let reaped = unsafe { libc::waitpid(service, &mut status, libc::WNOHANG) };
        if reaped == service {
            // SAFETY: this process is done.
            unsafe { exit_as(status) }
        }
        if reaped < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // ECHILD: nothing left to wait for (cannot happen for our own child).
            // SAFETY: _exit ends this process only.
            unsafe { libc::_exit(127) }
        }
        // SAFETY: `waited_for` is an initialised set; info may be null.
        let signal = unsafe { libc::sigwaitinfo(waited_for, std::ptr::null_mut()) };
        if signal > 0 && signal != libc::SIGCHLD {
            // SAFETY: kill takes integers; `service` is our own child.
            unsafe { libc::kill(service, signal) };
        }
    }
}

/// Closes every descriptor above stderr. std's `Command` learns that exec succeeded when its
/// close-on-exec error pipe reaches end of file, and the parent waits for that: the waiter,
/// which never execs, must not keep a copy open (nor of the failure channel).
///
/// # Safety
/// Only in a forked child that uses no descriptor above 2 afterwards.
unsafe fn close_inherited_descriptors() {
    // SAFETY: close_range takes integers (Linux 5.9).
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if result == 0 {
        return;
    }
    // Older kernels: close up to the descriptor limit.
    // SAFETY: rlimit is plain data filled by getrlimit.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    let highest = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(65_536)
    } else {
        1_024
    };
    let highest = libc::c_int::try_from(highest).unwrap_or(1_024);
    for descriptor in 3..highest {
        // SAFETY: closing a descriptor that may not be open is harmless (EBADF).
        unsafe { libc::close(descriptor) };
    }
}

/// Exits with the status `waitpid` reported: the same exit code, or death by the same signal
/// (without a core dump of the waiter).
///
/// # Safety
/// Ends the calling process.
unsafe fn exit_as(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: sigset_t is plain data initialised by sigemptyset; every call takes
        // integers or pointers to this frame.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(signal, libc::SIG_DFL);
            let mut only: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut only);
            libc::sigaddset(&mut only, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
            libc::kill(libc::getpid(), signal);
        }
        // A signal whose default is not to terminate: the shell convention.
        // SAFETY: _exit ends this process only.
        unsafe { libc::_exit(128 + signal) }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    // SAFETY: _exit ends this process only.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_have_one_bit_per_capability_number() {
        let mask = capability_mask(&[
            Capability::CapNetBindService,
            Capability::CapSysTime,
            Capability::CapCheckpointRestore,
        ]);
        assert_eq!(mask, (1 << 10) | (1 << 25) | (1 << 40));
        assert_eq!(split_mask(mask), [(1 << 10) | (1 << 25), 1 << 8]);
        assert_eq!(capability_numbers(mask).collect::<Vec<_>>(), [10, 25, 40]);
        assert_eq!(capability_mask(&[]), 0);
    }

    #[test]
    fn capability_numbers_and_names_are_the_kernels() {
        for (index, capability) in Capability::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(capability.number()), index);
            assert_eq!(
                Capability::from_number(capability.number()),
                Some(capability)
            );
        }
        assert_eq!(Capability::CapNetBindService.name(), "CAP_NET_BIND_SERVICE");
        assert_eq!(Capability::CapSysAdmin.number(), 21);
        assert_eq!(Capability::CapCheckpointRestore.number(), 40);
        assert_eq!(Capability::from_number(41), None);
    }

    #[test]
    fn namespaces_become_unshare_flags() {
        let setup = ChildSetup::new(Some((1, 2)), None, &[Namespace::Net, Namespace::Uts]);
        assert_eq!(setup.unshare_flags, libc::CLONE_NEWNET | libc::CLONE_NEWUTS);
        assert!(setup.has_namespace(Namespace::Net));
        assert!(!setup.has_namespace(Namespace::Pid));
        assert_eq!(setup.capabilities, None);
        assert_eq!(ChildSetup::new(None, Some(&[]), &[]).capabilities, Some(0));
    }

    #[test]
    fn every_setup_step_has_a_code_and_a_description() {
        for step in SetupStep::ALL {
            assert_eq!(SetupStep::from_code(step as u8), Some(step));
        }
        assert_eq!(SetupStep::from_code(0), None);
        assert_eq!(
            SetupStep::RaiseAmbient.describe(13),
            "cannot raise capability CAP_NET_RAW into the ambient set"
        );
        assert_eq!(
            SetupStep::CapabilityUnknownToKernel.describe(63),
            "capability number 63 is not known to this kernel"
        );
    }
}
