//! Debian's data formats, as plain functions on text: deb822 stanzas (`Packages` indexes),
//! version comparison (dpkg's algorithm) and dependency fields.
//!
//! **Architecture Invariant:** pure functions, no I/O; tests compare against the real
//! `dpkg --compare-versions`.

use std::cmp::Ordering;

/// One paragraph of a deb822 file: fields in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza {
    /// `(name, value)`; continuation lines are joined with `\n`.
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    /// The value of field `name` (case-insensitive, as deb822 says), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Splits deb822 text into stanzas. Lines starting with `#` are comments; a line without a
/// colon that is not a continuation is ignored (the format has none).
pub fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    let mut current = Stanza::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, value)) = current.fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            current
                .fields
                .push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    if !current.fields.is_empty() {
        stanzas.push(current);
    }
    stanzas
}

/// dpkg's ordering of one character in the non-digit parts: `~` sorts before everything
/// (even the end of the string), letters before non-letters.
fn character_order(character: Option<u8>) -> i32 {
    match character {
        None => 0,
        Some(b'~') => -1,
        Some(byte) if byte.is_ascii_alphabetic() => i32::from(byte),
        Some(byte) => i32::from(byte) + 256,
    }
}

/// dpkg's `verrevcmp`: alternate non-digit and digit runs.
fn compare_fragment(left: &str, right: &str) -> Ordering {
    let (left, right) = (left.as_bytes(), right.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < left.len() || j < right.len() {
        while (i < left.len() && !left[i].is_ascii_digit())
            || (j < right.len() && !right[j].is_ascii_digit())
        {
            let left_order =
                character_order(left.get(i).copied().filter(|byte| !byte.is_ascii_digit()));
            let right_order =
                character_order(right.get(j).copied().filter(|byte| !byte.is_ascii_digit()));
            if left_order != right_order {
                return left_order.cmp(&right_order);
            }
            if i < left.len() && !left[i].is_ascii_digit() {
                i += 1;
            }
            if j < right.len() && !right[j].is_ascii_digit() {
                j += 1;
            }
        }
        while i < left.len() && left[i] == b'0' {
            i += 1;
        }
        while j < right.len() && right[j] == b'0' {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while i < left.len()
            && left[i].is_ascii_digit()
            && j < right.len()
            && right[j].is_ascii_digit()
        {
            if first_difference == Ordering::Equal {
                first_difference = left[i].cmp(&right[j]);
            }
            i += 1;
            j += 1;
        }
        if i < left.len() && left[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < right.len() && right[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_difference != Ordering::Equal {
            return first_difference;
        }
    }
    Ordering::Equal
}

/// `(epoch, upstream, revision)` of a Debian version.
fn split_version(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) if epoch.bytes().all(|byte| byte.is_ascii_digit()) => {
            (epoch.parse().unwrap_or(0), rest)
        }
        _ => (0, version),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// Compares two Debian versions as `dpkg --compare-versions` does.
pub fn compare_versions(left: &str, right: &str) -> Ordering {
    let (left_epoch, left_upstream, left_revision) = split_version(left);
    let (right_epoch, right_upstream, right_revision) = split_version(right);
    left_epoch
        .cmp(&right_epoch)
        .then_with(|| compare_fragment(left_upstream, right_upstream))
        .then_with(|| compare_fragment(left_revision, right_revision))
}

/// A version restriction in a dependency: `(>= 2.36)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRestriction {
    /// `<<`, `<=`, `=`, `>=` or `>>`.
    pub operator: String,
    /// The version.
    pub version: String,
}

impl VersionRestriction {
    /// Whether `candidate` satisfies the restriction.
    pub fn is_satisfied_by(&self, candidate: &str) -> bool {
        let ordering = compare_versions(candidate, &self.version);
        match self.operator.as_str() {
            "<<" | "<" => ordering == Ordering::Less,
            "<=" => ordering != Ordering::Greater,
            "=" => ordering == Ordering::Equal,
            ">=" | ">" => ordering != Ordering::Less,
            ">>" => ordering == Ordering::Greater,
            _ => false,
        }
    }
}

/// One alternative of a dependency: `libc6:any (>= 2.36)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyAlternative {
    /// The package name, without its `:any`/`:native`/`:<arch>` qualifier.
    pub name: String,
    /// The version restriction, if any.
    pub restriction: Option<VersionRestriction>,
}

/// Parses a `Depends`/`Pre-Depends` value into a list of alternatives lists:
/// `a (>= 1) | b, c` → `[[a (>= 1), b], [c]]`. Architecture restrictions (`[amd64]`, only
/// seen in source packages) and build profiles (`<!nocheck>`) are dropped.
pub fn parse_dependencies(value: &str) -> Vec<Vec<DependencyAlternative>> {
    let mut dependencies = Vec::new();
    for clause in value.split(',') {
        let mut alternatives = Vec::new();
        for alternative in clause.split('|') {
            let alternative = alternative
                .split(['[', '<'])
                .next()
                .unwrap_or_default()
                .trim();
            let alternative = alternative.trim();
            if alternative.is_empty() {
                continue;
            }
            let (name_part, restriction) = match alternative.split_once('(') {
                Some((name, rest)) => {
                    let inner = rest.trim_end_matches(')').trim();
                    let operator_length = inner
                        .bytes()
                        .take_while(|byte| matches!(byte, b'<' | b'>' | b'='))
                        .count();
                    let (operator, version) = inner.split_at(operator_length);
                    (
                        name.trim(),
                        Some(VersionRestriction {
                            operator: operator.to_owned(),
                            version: version.trim().to_owned(),
                        }),
                    )
                }
                None => (alternative, None),
            };
            let name = name_part
                .split(':')
                .next()
                .unwrap_or(name_part)
                .trim()
                .to_owned();
            alternatives.push(DependencyAlternative { name, restriction });
        }
        if !alternatives.is_empty() {
            dependencies.push(alternatives);
        }
    }
    dependencies
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_like_dpkg() {
        let pairs = [
            ("1:1.35.0-4+deb12u1+b1", "1.36"),
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0+b1"),
            ("2.36-9+deb12u10", "2.36-9+deb12u9"),
            ("1.2.3", "1.2.3-1"),
            ("6.1.192-2", "6.1.192-1"),
            ("1.0a", "1.0+"),
            ("0.9", "0.10"),
            ("1:0", "2"),
            ("1.0~~", "1.0~"),
            ("20230311+deb12u1", "20230311"),
            ("3.0.17-1~deb12u2", "3.0.17-1"),
        ];
        for (left, right) in pairs {
            let dpkg_says_greater = std::process::Command::new("dpkg")
                .args(["--compare-versions", left, "gt", right])
                .status()
                .unwrap()
                .success();
            let dpkg_says_equal = std::process::Command::new("dpkg")
                .args(["--compare-versions", left, "eq", right])
                .status()
                .unwrap()
                .success();
            let expected = if dpkg_says_greater {
                Ordering::Greater
            } else if dpkg_says_equal {
                Ordering::Equal
            } else {
                Ordering::Less
            };
            assert_eq!(compare_versions(left, right), expected, "{left} vs {right}");
            assert_eq!(
                compare_versions(right, left),
                expected.reverse(),
                "{right} vs {left}"
            );
        }
    }

    #[test]
    fn dependencies_parse_with_alternatives_and_qualifiers() {
        let parsed = parse_dependencies(
            "openssl (>= 1.1.1), debconf (>= 0.5) | debconf-2.0, libc6:any (>=2.36), perl:native",
        );
        let names: Vec<Vec<&str>> = parsed
            .iter()
            .map(|clause| {
                clause
                    .iter()
                    .map(|alternative| alternative.name.as_str())
                    .collect()
            })
            .collect();
        assert_eq!(
            names,
            [
                vec!["openssl"],
                vec!["debconf", "debconf-2.0"],
                vec!["libc6"],
                vec!["perl"]
            ]
        );
        let restriction = parsed[2][0].restriction.as_ref().unwrap();
        assert_eq!(
            (restriction.operator.as_str(), restriction.version.as_str()),
            (">=", "2.36")
        );
        assert!(restriction.is_satisfied_by("2.36-9+deb12u14"));
        assert!(!restriction.is_satisfied_by("2.35"));
    }

    #[test]
    fn stanzas_split_on_blank_lines_with_continuations() {
        let stanzas = parse_stanzas("Package: a\nDescription: x\n more\n\nPackage: b\nSize: 3\n");
        assert_eq!(stanzas.len(), 2);
        assert_eq!(stanzas[0].get("description"), Some("x\nmore"));
        assert_eq!(stanzas[1].get("Size"), Some("3"));
    }
}
