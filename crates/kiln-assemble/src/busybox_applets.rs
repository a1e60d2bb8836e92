//! busybox's applet tables, read from the bytes of a `busybox` binary: where
//! `busybox --install -s` would put each applet's link (the `busybox-links` generator).
//!
//! The image's busybox is built for the target architecture, which the build host may not
//! run, so nothing is executed: the two tables busybox's build generates
//! (`include/applet_tables.h`) are found in the file.
//!
//! - `applet_names[]`: every applet name, NUL-terminated, sorted by `strcmp`, ended by an
//!   empty name: `[\0[[\0acpid\0...zcat\0\0`. It is found by its start, `[\0[[\0`, which
//!   must occur exactly once.
//! - `applet_install_loc[]`: a 4-bit install location per applet, applet `2k` in the low
//!   nibble of byte `k` and applet `2k+1` in the high one (`ceil(N/2)` bytes; for an odd
//!   count the last high nibble is 0). 1 = `/bin`, 2 = `/sbin`, 3 = `/usr/bin`,
//!   4 = `/usr/sbin`, 0 = `/`, which busybox uses for `linuxrc` only. The table has no
//!   marker: it is the only window of the file whose every nibble is such a value (0 only
//!   for `linuxrc`, and the spare nibble 0).
//!
//! Both were checked against `busybox --list-full` of Debian 12's busybox-static (269
//! applets). Anything unexpected is an error saying what was found, never a guess.

use std::fmt;

/// What a maintainer does when a busybox's tables cannot be read.
const FALLBACK: &str = "keep `command: [/bin/busybox, --install, -s]` (kind: onboot) in the \
base module for this busybox instead of `generate: [busybox-links]`, or teach \
crates/kiln-assemble/src/busybox_applets.rs its layout";

/// The start of `applet_names[]` in every busybox with the `[` and `[[` applets.
const NAMES_START: &[u8] = b"[\0[[\0";

/// The only applet busybox installs at `/` (install location 0).
const ROOT_APPLET: &str = "linuxrc";

/// Install locations 0..=4, as `busybox --list-full` prints them.
const DIRECTORIES: [&str; 5] = ["", "bin/", "sbin/", "usr/bin/", "usr/sbin/"];

/// At most this many unexpected nibbles, and at most one in eight, for a window to be
/// reported as the table with bad values (Debian's table one byte off already has three of
/// 269; with a handful of applets any few bytes would do, so none is reported).
const NEAR_MISS_LIMIT: usize = 2;

/// Why a busybox binary's applet tables could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppletTableError {
    /// `[\0[[\0` is not in the file.
    NamesNotFound,
    /// `[\0[[\0` occurs more than once.
    NamesAmbiguous { offsets: Vec<usize> },
    /// The names run to the end of the file without the empty name that ends them.
    NamesUnterminated { offset: usize },
    /// A name is not printable ASCII, contains `/` or is `.`/`..`.
    BadName { index: usize, name: Vec<u8> },
    /// A name does not sort after the one before it.
    NamesNotAscending {
        index: usize,
        previous: String,
        name: String,
    },
    /// No window of the file reads as the install-location table.
    LocationsNotFound { applets: usize, bytes: usize },
    /// Several windows read as the install-location table.
    LocationsAmbiguous {
        applets: usize,
        bytes: usize,
        offsets: Vec<usize>,
    },
    /// The one window that reads as the table but for a few values: those values.
    BadLocations {
        offset: usize,
        /// (applet, value)
        values: Vec<(String, u8)>,
    },
}

impl fmt::Display for AppletTableError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offsets = |offsets: &[usize]| {
            let shown: Vec<String> = offsets.iter().take(8).map(usize::to_string).collect();
            let more = if offsets.len() > 8 { ", ..." } else { "" };
            format!("{}{more}", shown.join(", "))
        };
        match self {
            AppletTableError::NamesNotFound => write!(
                formatter,
                "busybox's applet name table (`[\\0[[\\0...`) is not in the binary: it is not \
                 a busybox with the `[` and `[[` applets, or its tables have another layout; \
                 {FALLBACK}"
            ),
            AppletTableError::NamesAmbiguous { offsets: at } => write!(
                formatter,
                "`[\\0[[\\0`, the start of busybox's applet name table, occurs {} times in the \
                 binary (at bytes {}), so which one is the table is not known; {FALLBACK}",
                at.len(),
                offsets(at)
            ),
            AppletTableError::NamesUnterminated { offset } => write!(
                formatter,
                "busybox's applet name table (at byte {offset}) runs to the end of the binary \
                 without its terminating empty name; {FALLBACK}"
            ),
            AppletTableError::BadName { index, name } => write!(
                formatter,
                "applet name {index} of busybox's name table is {:?}, not a printable name \
                 without `/`; the table has another layout than expected; {FALLBACK}",
                String::from_utf8_lossy(name)
            ),
            AppletTableError::NamesNotAscending {
                index,
                previous,
                name,
            } => write!(
                formatter,
                "applet name {index} of busybox's name table, `{name}`, does not sort after \
                 `{previous}` (busybox keeps them strcmp-sorted); the table has another layout \
                 than expected; {FALLBACK}"
            ),
            AppletTableError::LocationsNotFound { applets, bytes } => write!(
                formatter,
                "busybox's applet install-location table is not in the binary: no {bytes} bytes \
                 give each of its {applets} applets a location 1..=4 (/bin, /sbin, /usr/bin, \
                 /usr/sbin; 0, /, only for linuxrc) in a nibble; {FALLBACK}"
            ),
            AppletTableError::LocationsAmbiguous {
                applets,
                bytes,
                offsets: at,
            } => write!(
                formatter,
                "busybox's applet install-location table is ambiguous: {} windows of {bytes} \
                 bytes (at bytes {}) read as locations of its {applets} applets; {FALLBACK}",
                at.len(),
                offsets(at)
            ),
            AppletTableError::BadLocations { offset, values } => {
                let described: Vec<String> = values
                    .iter()
                    .map(|(applet, value)| match value {
                        0 => format!("`{applet}` has 0 (/, which busybox uses only for linuxrc)"),
                        _ => format!("`{applet}` has {value} (no known directory; 1..=4 are /bin, /sbin, /usr/bin, /usr/sbin)"),
                    })
                    .collect();
                write!(
                    formatter,
                    "busybox's applet install-location table (at byte {offset}) has unexpected \
                     values: {}; {FALLBACK}",
                    described.join(", ")
                )
            }
        }
    }
}

impl std::error::Error for AppletTableError {}

/// Where `busybox --install -s` would link each applet of `binary` (a busybox executable's
/// bytes), relative to the root and in applet order: `usr/bin/[`, `sbin/acpid`, `linuxrc`...
/// the lines of `busybox --list-full`.
pub fn applet_paths(binary: &[u8]) -> Result<Vec<String>, AppletTableError> {
    let names = applet_names(binary)?;
    let locations = install_locations(binary, &names)?;
    Ok(names
        .iter()
        .zip(locations)
        .map(|(name, location)| format!("{}{name}", DIRECTORIES[usize::from(location)]))
        .collect())
}

/// The names of `applet_names[]`, checked.
fn applet_names(binary: &[u8]) -> Result<Vec<String>, AppletTableError> {
    let starts: Vec<usize> = binary
        .windows(NAMES_START.len())
        .enumerate()
        .filter(|(_, window)| *window == NAMES_START)
        .map(|(offset, _)| offset)
        .collect();
    let start = match starts.as_slice() {
        [] => return Err(AppletTableError::NamesNotFound),
        [start] => *start,
        _ => return Err(AppletTableError::NamesAmbiguous { offsets: starts }),
    };
    let mut names: Vec<String> = Vec::new();
    let mut position = start;
    loop {
        let length = binary[position..]
            .iter()
            .position(|byte| *byte == 0)
            .ok_or(AppletTableError::NamesUnterminated { offset: start })?;
        let raw = &binary[position..position + length];
        position += length + 1;
        if raw.is_empty() {
            break;
        }
        let printable = raw
            .iter()
            .all(|byte| byte.is_ascii_graphic() && *byte != b'/');
        if !printable || raw == b"." || raw == b".." {
            return Err(AppletTableError::BadName {
                index: names.len(),
                name: raw.to_vec(),
            });
        }
        let name = String::from_utf8_lossy(raw).into_owned();
        if let Some(previous) = names.last() {
            if previous.as_bytes() >= raw {
                return Err(AppletTableError::NamesNotAscending {
                    index: names.len(),
                    previous: previous.clone(),
                    name,
                });
            }
        }
        names.push(name);
    }
    Ok(names)
}

/// The install location of each of `names`, from `applet_install_loc[]`.
fn install_locations(binary: &[u8], names: &[String]) -> Result<Vec<u8>, AppletTableError> {
    let applets = names.len();
    let bytes = applets.div_ceil(2);
    let root_applet = names.iter().position(|name| name == ROOT_APPLET);
    let nibble =
        |offset: usize, applet: usize| (binary[offset + applet / 2] >> (4 * (applet % 2))) & 0xf;
    let allowed = |applet: usize, value: u8| {
        (1..=4).contains(&value) || (value == 0 && Some(applet) == root_applet)
    };
    // Unexpected nibbles of each window, counted with a sliding sum over the bytes that hold
    // two applets (both nibbles must be 1..=4), then corrected for the odd last applet and
    // linuxrc.
    let pairs = applets / 2;
    let pair_bad = |byte: u8| {
        usize::from(!(1..=4).contains(&(byte & 0xf))) + usize::from(!(1..=4).contains(&(byte >> 4)))
    };
    if binary.len() < bytes || applets == 0 {
        return Err(AppletTableError::LocationsNotFound { applets, bytes });
    }
    let mut exact = Vec::new();
    let mut near: Vec<(usize, usize)> = Vec::new(); // (unexpected nibbles, offset)
    let mut sum: usize = binary[..pairs].iter().map(|byte| pair_bad(*byte)).sum();
    for offset in 0..=binary.len() - bytes {
        if offset > 0 && pairs > 0 {
            sum = sum - pair_bad(binary[offset - 1]) + pair_bad(binary[offset + pairs - 1]);
        }
        // The spare high nibble of an odd count anchors the table: it must be 0.
        if applets % 2 == 1 && binary[offset + pairs] >> 4 != 0 {
            continue;
        }
        let mut bad = sum;
        if applets % 2 == 1 {
            bad += usize::from(!(1..=4).contains(&nibble(offset, applets - 1)));
        }
        if let Some(root) = root_applet {
            if nibble(offset, root) == 0 {
                bad -= 1;
            }
        }
        if bad == 0 {
            exact.push(offset);
        } else if bad <= NEAR_MISS_LIMIT && bad * 8 <= applets {
            near.push((bad, offset));
        }
    }
    let decode = |offset: usize| (0..applets).map(|applet| nibble(offset, applet)).collect();
    match exact.as_slice() {
        [offset] => return Ok(decode(*offset)),
        [] => {}
        _ => {
            return Err(AppletTableError::LocationsAmbiguous {
                applets,
                bytes,
                offsets: exact,
            })
        }
    }
    // No exact window: one window off by a value or two is the table with a location this
    // parser does not know (a new directory, another applet at /), and the error names it.
    let fewest = near.iter().map(|(bad, _)| *bad).min();
    let closest: Vec<usize> = near
        .iter()
        .filter(|(bad, _)| Some(*bad) == fewest)
        .map(|(_, offset)| *offset)
        .collect();
    if let [offset] = closest.as_slice() {
        let values = (0..applets)
            .filter(|&applet| !allowed(applet, nibble(*offset, applet)))
            .map(|applet| (names[applet].clone(), nibble(*offset, applet)))
            .collect();
        return Err(AppletTableError::BadLocations {
            offset: *offset,
            values,
        });
    }
    Err(AppletTableError::LocationsNotFound { applets, bytes })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::process::Command;

    /// Filler that holds neither table: bytes whose low nibble is 0 or 8 and which contain
    /// no NUL-free `[` run.
    fn filler(length: usize, seed: u8) -> Vec<u8> {
        (0..length)
            .map(|index| {
                let index = u8::try_from(index % 251).unwrap_or(0);
                (index.wrapping_mul(31).wrapping_add(seed) & 0xf0) | 0x08
            })
            .collect()
    }

    /// The install-location bytes of `locations`, as busybox packs them.
    fn pack(locations: &[u8]) -> Vec<u8> {
        locations
            .chunks(2)
            .map(|pair| pair[0] | pair.get(1).map_or(0, |high| high << 4))
            .collect()
    }

    /// Filler, the location table, filler, the name table, filler: a busybox to the parser.
    pub(crate) fn binary(names: &[&str], locations: &[u8]) -> Vec<u8> {
        let mut bytes = filler(300, 1);
        bytes.extend(pack(locations));
        bytes.extend(filler(136, 2));
        for name in names {
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(0);
        }
        bytes.push(0);
        bytes.extend(filler(200, 3));
        bytes
    }

    const ODD: [&str; 5] = ["[", "[[", "cat", "linuxrc", "modprobe"];
    const EVEN: [&str; 6] = ["[", "[[", "cat", "linuxrc", "modprobe", "wget"];

    #[test]
    fn an_odd_count_of_applets_gives_each_its_directory() {
        let paths = applet_paths(&binary(&ODD, &[3, 3, 1, 0, 2])).unwrap();
        assert_eq!(
            paths,
            [
                "usr/bin/[",
                "usr/bin/[[",
                "bin/cat",
                "linuxrc",
                "sbin/modprobe"
            ]
        );
    }

    #[test]
    fn an_even_count_of_applets_gives_each_its_directory() {
        let paths = applet_paths(&binary(&EVEN, &[3, 3, 1, 0, 2, 4])).unwrap();
        assert_eq!(
            paths,
            [
                "usr/bin/[",
                "usr/bin/[[",
                "bin/cat",
                "linuxrc",
                "sbin/modprobe",
                "usr/sbin/wget"
            ]
        );
    }

    #[test]
    fn linuxrc_may_also_have_a_directory() {
        let paths = applet_paths(&binary(&ODD, &[3, 3, 1, 1, 2])).unwrap();
        assert_eq!(paths[3], "bin/linuxrc");
    }

    #[test]
    fn no_name_table_is_an_error_that_says_what_to_do() {
        let error = applet_paths(&filler(1000, 5)).unwrap_err();
        assert_eq!(error, AppletTableError::NamesNotFound);
        let message = error.to_string();
        assert!(
            message.contains("keep `command: [/bin/busybox, --install, -s]`"),
            "{message}"
        );
    }

    #[test]
    fn two_name_tables_are_an_error() {
        let mut bytes = binary(&ODD, &[3, 3, 1, 0, 2]);
        bytes.extend_from_slice(b"[\0[[\0x\0\0");
        let error = applet_paths(&bytes).unwrap_err();
        assert!(
            matches!(&error, AppletTableError::NamesAmbiguous { offsets } if offsets.len() == 2),
            "{error:?}"
        );
        assert!(error.to_string().contains("occurs 2 times"), "{error}");
    }

    #[test]
    fn an_unterminated_name_table_is_an_error() {
        let mut bytes = filler(100, 1);
        bytes.extend_from_slice(b"[\0[[\0cat");
        assert_eq!(
            applet_paths(&bytes).unwrap_err(),
            AppletTableError::NamesUnterminated { offset: 100 }
        );
    }

    #[test]
    fn a_non_printable_name_is_an_error() {
        let error = applet_paths(&binary(&["[", "[[", "c\x01t"], &[3, 3, 1])).unwrap_err();
        assert_eq!(
            error,
            AppletTableError::BadName {
                index: 2,
                name: b"c\x01t".to_vec()
            }
        );
        let error = applet_paths(&binary(&["[", "[[", "usr/cat"], &[3, 3, 1])).unwrap_err();
        assert!(
            matches!(error, AppletTableError::BadName { index: 2, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn names_out_of_order_are_an_error() {
        let error = applet_paths(&binary(&["[", "[[", "cat", "ash"], &[3, 3, 1, 1])).unwrap_err();
        assert_eq!(
            error,
            AppletTableError::NamesNotAscending {
                index: 3,
                previous: "cat".to_owned(),
                name: "ash".to_owned()
            }
        );
        let error = applet_paths(&binary(&["[", "[[", "cat", "cat"], &[3, 3, 1, 1])).unwrap_err();
        assert!(
            matches!(error, AppletTableError::NamesNotAscending { index: 3, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn no_location_table_is_an_error() {
        let mut bytes = filler(300, 1);
        bytes.extend_from_slice(b"[\0[[\0cat\0\0");
        bytes.extend(filler(100, 2));
        let error = applet_paths(&bytes).unwrap_err();
        assert_eq!(
            error,
            AppletTableError::LocationsNotFound {
                applets: 3,
                bytes: 2
            }
        );
        assert!(error.to_string().contains("no 2 bytes"), "{error}");
    }

    #[test]
    fn two_location_tables_are_an_error_that_counts_them() {
        let mut bytes = binary(&ODD, &[3, 3, 1, 0, 2]);
        bytes.extend(pack(&[3, 3, 1, 0, 2]));
        bytes.extend(filler(10, 4));
        let error = applet_paths(&bytes).unwrap_err();
        assert!(
            matches!(&error, AppletTableError::LocationsAmbiguous { offsets, .. } if offsets.len() == 2),
            "{error:?}"
        );
        assert!(
            error.to_string().contains(": 2 windows of 3 bytes"),
            "{error}"
        );
    }

    /// `[`, `[[`, `a00`..`a15`, `linuxrc` (19 applets) and, if `even`, `zcat`: enough for
    /// one bad value to stand out.
    fn many(even: bool) -> Vec<String> {
        let mut names: Vec<String> = vec!["[".into(), "[[".into()];
        names.extend((0..16).map(|index| format!("a{index:02}")));
        names.push("linuxrc".into());
        if even {
            names.push("zcat".into());
        }
        names
    }

    fn many_binary(names: &[String], locations: &[u8]) -> Vec<u8> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        binary(&names, locations)
    }

    #[test]
    fn a_location_of_0_for_an_applet_other_than_linuxrc_is_an_error() {
        let names = many(true);
        let mut locations = vec![1; names.len()];
        locations[1] = 0; // `[[`
        locations[18] = 0; // linuxrc: fine
        let error = applet_paths(&many_binary(&names, &locations)).unwrap_err();
        assert_eq!(
            error,
            AppletTableError::BadLocations {
                offset: 300,
                values: vec![("[[".to_owned(), 0)]
            }
        );
        assert!(error.to_string().contains("`[[` has 0"), "{error}");
        // Right, it parses.
        locations[1] = 3;
        let paths = applet_paths(&many_binary(&names, &locations)).unwrap();
        assert_eq!(paths[..2], ["bin/[", "usr/bin/[["]);
        assert_eq!(paths[18..], ["linuxrc", "bin/zcat"]);
    }

    #[test]
    fn a_location_above_4_is_an_error() {
        let names = many(false);
        let mut locations = vec![2; names.len()];
        locations[2] = 5; // `a00`
        locations[18] = 7; // linuxrc
        let error = applet_paths(&many_binary(&names, &locations)).unwrap_err();
        assert_eq!(
            error,
            AppletTableError::BadLocations {
                offset: 300,
                values: vec![("a00".to_owned(), 5), ("linuxrc".to_owned(), 7)]
            }
        );
        let message = error.to_string();
        assert!(
            message.contains("`a00` has 5 (no known directory"),
            "{message}"
        );
        assert!(
            message.contains("keep `command: [/bin/busybox"),
            "{message}"
        );
    }

    /// The parse of the host's busybox (busybox-static, which `cargo xtask test` installs)
    /// equals what it prints itself.
    #[test]
    fn the_hosts_busybox_parses_to_its_own_list_full() {
        let path = Path::new("/usr/bin/busybox");
        let executable = std::fs::metadata(path)
            .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if !executable {
            eprintln!("skipped: no executable /usr/bin/busybox (apt-get install busybox-static)");
            return;
        }
        let output = Command::new(path).arg("--list-full").output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let listed: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let parsed = applet_paths(&std::fs::read(path).unwrap()).unwrap();
        assert!(parsed.len() > 100, "{parsed:?}");
        assert_eq!(parsed, listed);
    }
}
