//! `kiln-init --load-hardware-modules`: the drivers for the hardware found at boot (the NIC or
//! RAID controller a profile did not list), run by the `kmod` module as an onboot step.
//!
//! Every `/sys/bus/*/devices/*/modalias` is matched against the kernel's `modules.alias`
//! (shell-glob patterns, `fnmatch(3)` without flags) and each matching module is loaded with
//! `finit_module(2)` after its dependencies from `modules.dep` (last listed first, as
//! modprobe does). Loading a bus driver makes new devices appear (`virtio_pci` brings the
//! virtio devices that need `virtio_net`), so the walk repeats while the number of devices
//! grows, three rounds at most. A module that fails to load is reported and skipped. Only the
//! buses the aliases can match are read, when their prefixes tell ([`buses_to_read`]).
//!
//! It used to be a busybox shell script (awk for the matching, modprobe per module); under
//! emulation each process costs ~12 ms and the awk program alone took 0.14 s on a 45-device
//! aarch64 VM, on the boot's critical path (dhcp waits for the NIC driver).
//!
//! *Architecture Invariant*: never fails the boot: every problem is a line of output and
//! the exit status is 0.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::syscall::Syscall;

/// Rounds of matching at most (a bus driver, then the drivers of the devices it found).
pub const MAX_ROUNDS: usize = 3;

/// One `alias PATTERN MODULE` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub pattern: String,
    pub module: String,
}

/// `modules.alias` lines, in file order.
pub fn parse_aliases(text: &str) -> Vec<Alias> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "alias" {
                return None;
            }
            let pattern = words.next()?.to_string();
            let module = words.next()?.to_string();
            Some(Alias { pattern, module })
        })
        .collect()
}

/// `igc`, `ixgbe-foo` → `ixgbe_foo`: module names compare with `-` and `_` alike.
pub fn normalise_module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// `modules.dep`: module name → (its file, its dependencies' files in the order listed),
/// paths relative to `/lib/modules/RELEASE` as the file gives them.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, (PathBuf, Vec<PathBuf>)> {
    text.lines()
        .filter_map(|line| {
            let (file, dependencies) = line.split_once(':')?;
            let file = PathBuf::from(file.trim());
            let name = normalise_module_name(&crate::kernel_modules::module_name(&file));
            let dependencies = dependencies.split_whitespace().map(PathBuf::from).collect();
            Some((name, (file, dependencies)))
        })
        .collect()
}

/// `fnmatch(pattern, text, 0)`: `*` any run (`/` included), `?` one character, `[...]` a set
/// with ranges and `!`/`^` negation, `\` quotes the next character. An unclosed `[` is a
/// literal `[`.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it covers to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some('*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => match bracket(&pattern[p..], text[t]) {
                Some((true, length)) => Some(length),
                Some((false, _)) => None,
                None => (text[t] == '[').then_some(1),
            },
            Some('\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(2),
            Some(&literal) => (literal == text[t]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(length), _) => {
                p += length;
                t += 1;
            }
            (None, Some((after_star, covered))) => {
                // Let the last `*` take one more character and retry from there.
                p = after_star;
                t = covered + 1;
                star = Some((after_star, covered + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// A bracket expression at the start of `pattern` against `c`: (matched, its length), or
/// `None` when the `[` is not closed.
fn bracket(pattern: &[char], c: char) -> Option<(bool, usize)> {
    let mut index = 1;
    let negated = matches!(pattern.get(index), Some('!') | Some('^'));
    if negated {
        index += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let current = *pattern.get(index)?;
        if current == ']' && !first {
            return Some((matched != negated, index + 1));
        }
        first = false;
        if pattern.get(index + 1) == Some(&'-')
            && pattern.get(index + 2).is_some_and(|&end| end != ']')
        {
            let end = pattern[index + 2];
            matched |= current <= c && c <= end;
            index += 3;
        } else {
            matched |= current == c;
            index += 1;
        }
    }
}

/// The modules whose alias matches one of `devices`, once each, in `modules.alias` order.
pub fn matching_modules(aliases: &[Alias], devices: &BTreeSet<String>) -> Vec<String> {
    let mut wanted = Vec::new();
    let mut seen = BTreeSet::new();
    for alias in aliases {
        // The literal part before the first wildcard must start the modalias: most of
        // tens of thousands of patterns are rejected on it without the matcher.
        let literal = alias
            .pattern
            .split(['*', '?', '[', '\\'])
            .next()
            .unwrap_or_default();
        let hit = devices
            .iter()
            .any(|device| device.starts_with(literal) && glob_matches(&alias.pattern, device));
        if hit && seen.insert(normalise_module_name(&alias.module)) {
            wanted.push(alias.module.clone());
        }
    }
    wanted
}

/// Modalias prefixes that devices on several buses carry: `of:` (devicetree) and `acpi:` come
/// from platform, i2c, spi, serial and other buses alike.
const PREFIXES_OF_MANY_BUSES: [&str; 2] = ["of", "acpi"];

/// `modules.alias` names that are `request_module()` keys, not device modaliases (those have
/// no `:` at all: `char-major-10-237`, `fs-xfs`, `net-pf-17`).
const NON_DEVICE_PREFIXES: [&str; 2] = ["devname", "symbol"];

/// The buses whose devices can match `aliases`, when the aliases tell: a bus type writes its
/// own name as its devices' modalias prefix (`pci:v…` on `pci`, `virtio:d…` on `virtio`), so
/// with only such prefixes the other buses' devices need not be read. `None` (read every
/// bus) when an alias's prefix is `of:`/`acpi:`, names no bus in `buses`, or is a pattern.
/// A kernel with only PCI NIC modules (the `virt` flavor) reads 3 devices instead of every
/// device of the machine, which under emulation was most of this step's time.
pub fn buses_to_read(aliases: &[Alias], buses: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let mut wanted = BTreeSet::new();
    for alias in aliases {
        let Some((prefix, _)) = alias.pattern.split_once(':') else {
            continue;
        };
        if NON_DEVICE_PREFIXES.contains(&prefix) {
            continue;
        }
        let literal = !prefix.contains(['*', '?', '[', '\\']);
        if !literal || PREFIXES_OF_MANY_BUSES.contains(&prefix) || !buses.contains(prefix) {
            return None;
        }
        wanted.insert(prefix.to_string());
    }
    Some(wanted)
}

/// The names under `ROOT/sys/bus`.
pub fn bus_names(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("sys/bus"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every `ROOT/sys/bus/BUS/devices/*/modalias` of `buses` (all buses for `None`), read
/// (unreadable ones are skipped).
pub fn device_modaliases(root: &Path, buses: Option<&BTreeSet<String>>) -> BTreeSet<String> {
    let mut devices = BTreeSet::new();
    for bus in bus_names(root) {
        if buses.is_some_and(|wanted| !wanted.contains(&bus)) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(root.join("sys/bus").join(&bus).join("devices")) else {
            continue;
        };
        for device in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(device.path().join("modalias")) {
                let alias = text.trim();
                if !alias.is_empty() {
                    devices.insert(alias.to_string());
                }
            }
        }
    }
    devices
}

/// What one run did, for its summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub loaded: usize,
    pub failed: usize,
    pub tried: usize,
}

/// The whole step: reads `ROOT/lib/modules/RELEASE/modules.{alias,dep}` and `ROOT/sys`, loads
/// through `syscall`, writes `kmod: ...` lines to `out`. `root` is `/` on a machine; tests
/// point it at a directory.
pub fn load_hardware_modules(
    root: &Path,
    release: &str,
    syscall: &dyn Syscall,
    out: &mut dyn Write,
) -> Summary {
    let mut say = |text: String| {
        let _ = writeln!(out, "kmod: {text}");
    };
    let modules = root.join("lib/modules").join(release);
    let alias_text = match std::fs::read_to_string(modules.join("modules.alias")) {
        Ok(text) => text,
        Err(_) => {
            say(format!(
                "no /lib/modules/{release}/modules.alias, nothing to match"
            ));
            return Summary::default();
        }
    };
    let aliases = parse_aliases(&alias_text);
    let dependencies = parse_modules_dep(
        &std::fs::read_to_string(modules.join("modules.dep")).unwrap_or_default(),
    );
    let mut summary = Summary::default();
    let mut tried = BTreeSet::new();
    let mut seen_devices = 0;
    for _round in 0..MAX_ROUNDS {
        // Again each round: a bus driver just loaded may have brought a new bus.
        let buses = buses_to_read(&aliases, &bus_names(root));
        let devices = device_modaliases(root, buses.as_ref());
        if devices.len() <= seen_devices {
            break;
        }
        seen_devices = devices.len();
        let loaded_before = summary.loaded;
        for module in matching_modules(&aliases, &devices) {
            if !tried.insert(normalise_module_name(&module)) {
                continue;
            }
            summary.tried += 1;
            match load_with_dependencies(&modules, &dependencies, &module, syscall) {
                Ok(()) => summary.loaded += 1,
                Err(reason) => {
                    say(format!("cannot load {module}: {reason}, skipped"));
                    summary.failed += 1;
                }
            }
        }
        if summary.loaded == loaded_before {
            break;
        }
    }
    if summary.tried == 0 {
        say("no module matches the devices found".to_string());
    } else {
        say(format!(
            "loaded {} module(s) for the detected hardware, {} failed",
            summary.loaded, summary.failed
        ));
    }
    summary
}

/// Loads `module`'s dependencies (the last listed first), then the module. Already loaded
/// (`EEXIST`) counts as loaded.
fn load_with_dependencies(
    modules: &Path,
    dependencies: &BTreeMap<String, (PathBuf, Vec<PathBuf>)>,
    module: &str,
    syscall: &dyn Syscall,
) -> Result<(), String> {
    let Some((file, needs)) = dependencies.get(&normalise_module_name(module)) else {
        return Err("not in /lib/modules/.../modules.dep".to_string());
    };
    for path in needs.iter().rev().chain(std::iter::once(file)) {
        match syscall.finit_module(&modules.join(path), "") {
            Ok(()) => {}
            Err(error) if error.errno() == Some(libc::EEXIST) => {}
            Err(error) => {
                let name = crate::kernel_modules::module_name(path);
                return Err(if path == file {
                    error.source.to_string()
                } else {
                    format!("its dependency {name}: {}", error.source)
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::RecordingSyscall;

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn only_the_buses_the_aliases_name_are_read_when_the_aliases_tell() {
        let buses = names(&["cpu", "pci", "platform", "virtio", "workqueue"]);
        let check = |text: &str| buses_to_read(&parse_aliases(text), &buses);
        // The virt kernel: two PCI NIC drivers and loop's request_module() names.
        assert_eq!(
            check(
                "alias pci:v00001D0Fd0000EC20sv*sd*bc*sc*i* ena\n\
                 alias pci:v00001AE0d00000042sv*sd*bc*sc*i* gve\n\
                 alias devname:loop-control loop\n\
                 alias char-major-10-237 loop\n\
                 alias block-major-7-* loop\n"
            ),
            Some(names(&["pci"]))
        );
        assert_eq!(
            check("alias virtio:d00000001v* virtio_net\nalias cpu:type:*:feature:*0081* aesni\n"),
            Some(names(&["cpu", "virtio"]))
        );
        assert_eq!(check(""), Some(names(&[])));
        // Devicetree and ACPI modaliases sit on many buses; a prefix that names no bus here
        // (a USB driver, no USB bus yet, or a bus named otherwise: mdio on mdio_bus); a
        // pattern in the prefix.
        for text in [
            "alias pci:v* a\nalias of:N*T*Carm,pl011 amba_pl011\n",
            "alias acpi*:PNP0501:* serial\n",
            "alias acpi:PNP0501:* serial\n",
            "alias usb:v*p* hub\n",
            "alias mdio:0000000000010100000000000101???? phy\n",
            "alias p?i:v* odd\n",
        ] {
            assert_eq!(check(text), None, "{text}");
        }
    }

    #[test]
    fn a_bus_left_out_is_not_read() {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        for (device, alias) in [
            ("pci/devices/0000:00:03.0", "pci:v00001AF4d00001041"),
            ("platform/devices/serial8250", "platform:serial8250"),
        ] {
            std::fs::create_dir_all(root.join("sys/bus").join(device)).unwrap();
            std::fs::write(root.join("sys/bus").join(device).join("modalias"), alias).unwrap();
        }
        assert_eq!(
            device_modaliases(root, Some(&names(&["pci"]))),
            names(&["pci:v00001AF4d00001041"])
        );
        assert_eq!(
            device_modaliases(root, None),
            names(&["pci:v00001AF4d00001041", "platform:serial8250"])
        );
    }

    #[test]
    fn globs_match_like_fnmatch() {
        let cases = [
            (
                "pci:v00008086d*sv*sd*bc*sc*i*",
                "pci:v00008086d000010D3sv0sd0bc02sc00i00",
                true,
            ),
            (
                "pci:v00008086d*sv*sd*bc*sc*i*",
                "pci:v00001AF4d000010D3sv0sd0bc02sc00i00",
                false,
            ),
            ("virtio:d00000001v*", "virtio:d00000001v00001AF4", true),
            ("virtio:d00000001v*", "virtio:d00000002v00001AF4", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("x[0-9]y", "x5y", true),
            ("x[0-9]y", "xay", false),
            ("x[!0-9]y", "xay", true),
            ("x[^0-9]y", "x5y", false),
            ("x[]a]y", "x]y", true),
            ("x[a-]y", "x-y", true),
            ("x[ab", "x[ab", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*", "", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("acpi*:PNP0C0A:*", "acpi:PNP0C0A:", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} vs {text}");
        }
    }

    #[test]
    fn modules_match_once_in_alias_order() {
        let aliases = parse_aliases(
            "# Aliases extracted from modules themselves.\n\
             alias pci:v00001AF4d00001041sv*sd*bc*sc*i* virtio_net\n\
             alias virtio:d00000001v* virtio_net\n\
             alias pci:v*d*sv*sd*bc02sc00i* any-ethernet\n\
             alias usb:v*p*d*dc*dsc*dp*ic09isc*ip*in* usb_hub\n",
        );
        let devices = BTreeSet::from([
            "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00".to_string(),
            "virtio:d00000001v00001AF4".to_string(),
        ]);
        assert_eq!(
            matching_modules(&aliases, &devices),
            ["virtio_net", "any-ethernet"]
        );
    }

    /// A module tree in a temp dir: modules.alias and modules.dep, and sysfs devices.
    fn fixture(devices: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let modules = root.path().join("lib/modules/6.1.0-test");
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::write(
            modules.join("modules.alias"),
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias virtio:d00000001v* virtio_net\n\
             alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e\n\
             alias platform:missing-driver not_in_dep\n",
        )
        .unwrap();
        std::fs::write(
            modules.join("modules.dep"),
            "kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
             kernel/drivers/net/e1000e.ko:\n",
        )
        .unwrap();
        for (device, alias) in devices {
            let directory = root.path().join("sys/bus").join(device);
            std::fs::create_dir_all(&directory).unwrap();
            std::fs::write(directory.join("modalias"), format!("{alias}\n")).unwrap();
        }
        let modules_path = modules.clone();
        (root, modules_path)
    }

    #[test]
    fn loads_dependencies_last_listed_first_and_reports_what_fails() {
        let (root, modules) = fixture(&[
            (
                "pci/devices/0000:00:03.0",
                "pci:v00001AF4d00001000sv0sd0bc02sc00i00",
            ),
            (
                "pci/devices/0000:00:04.0",
                "pci:v00008086d000010D3sv0sd0bc02sc00i00",
            ),
            ("platform/devices/thing", "platform:missing-driver"),
            ("platform/devices/serial8250", "platform:serial8250"),
        ]);
        let syscall = RecordingSyscall::new();
        syscall.fail_calls_starting_with(
            &format!(
                "finit_module {}",
                modules.join("kernel/drivers/net/e1000e.ko").display()
            ),
            libc::ENODEV,
        );
        let mut out = Vec::new();
        let summary = load_hardware_modules(root.path(), "6.1.0-test", &syscall, &mut out);
        let text = String::from_utf8(out).unwrap();
        let loads: Vec<String> = syscall
            .calls()
            .iter()
            .map(|call| call.replace(&modules.display().to_string(), "M"))
            .collect();
        assert_eq!(
            loads,
            [
                "finit_module M/kernel/drivers/virtio/virtio.ko args=\"\"",
                "finit_module M/kernel/drivers/virtio/virtio_pci_modern_dev.ko args=\"\"",
                "finit_module M/kernel/drivers/virtio/virtio_pci.ko args=\"\"",
                "finit_module M/kernel/drivers/net/e1000e.ko args=\"\" -> errno 19",
            ]
        );
        assert_eq!(
            summary,
            Summary {
                loaded: 1,
                failed: 2,
                tried: 3
            }
        );
        assert_eq!(
            text,
            "kmod: cannot load e1000e: No such device (os error 19), skipped\n\
             kmod: cannot load not_in_dep: not in /lib/modules/.../modules.dep, skipped\n\
             kmod: loaded 1 module(s) for the detected hardware, 2 failed\n"
        );
    }

    #[test]
    fn nothing_to_match_says_so() {
        let (root, _) = fixture(&[("platform/devices/serial8250", "platform:serial8250")]);
        let syscall = RecordingSyscall::new();
        let mut out = Vec::new();
        load_hardware_modules(root.path(), "6.1.0-test", &syscall, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "kmod: no module matches the devices found\n"
        );
        assert!(syscall.calls().is_empty());
        let mut out = Vec::new();
        load_hardware_modules(root.path(), "6.2.0-other", &syscall, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "kmod: no /lib/modules/6.2.0-other/modules.alias, nothing to match\n"
        );
    }
}
