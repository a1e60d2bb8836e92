//! Turning package names into pins: a `Packages` index in, [`DebianPackagePin`]s out.
//!
//! **Architecture Invariant:** pure data, no I/O: [`PackageIndex`] is built from index text
//! (which [`crate::apt::PrivateApt`] reads), so resolution is tested on plain strings.
//!
//! The rules, and why:
//! - the candidate of a name is its highest version in the indexes (what apt picks with the
//!   default pin priority of 500 that our private state has: no preferences are copied),
//!   except that a version the lock already pins is kept while the index still carries it
//!   and it satisfies every restriction: a re-lock does not bump what nobody asked to update;
//! - the closure follows `Depends` and `Pre-Depends` (not `Recommends`: apt's
//!   `--no-install-recommends` is what minimal images use);
//! - alternatives `a | b`: the first that exists (a real package whose candidate satisfies
//!   the restriction, or a virtual one with providers);
//! - a virtual package resolves to its provider when exactly one exists or one is already in
//!   the closure, otherwise it is an error listing the providers (name one in the module);
//! - packages marked `Essential: yes` are not pinned as dependencies, and their own
//!   dependencies are not followed. Debian guarantees them on every dpkg system and
//!   packages rarely declare them (coreutils, dpkg, bash, perl-base); a kiln image is not a
//!   dpkg system, its userland is busybox, and pulling the essential set in would add tens
//!   of megabytes nobody runs. `Priority: required` packages that are *not* essential
//!   (libc6 is `optional` in bookworm, zlib1g and libcrypt1 are `required`) *are* pinned:
//!   dropbear's binary is dynamically linked and needs them. A module may still name an
//!   essential package explicitly, and then it is pinned.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kiln_lock::DebianPackagePin;

use crate::debian::{compare_versions, parse_dependencies, DependencyAlternative, Stanza};

/// One binary package of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRecord {
    /// `Package:`.
    pub name: String,
    /// `Version:`.
    pub version: String,
    /// `Architecture:`.
    pub architecture: String,
    /// `Filename:`.
    pub filename: String,
    /// `SHA256:`.
    pub sha256: String,
    /// `Size:`.
    pub size: u64,
    /// `Depends:` and `Pre-Depends:`, joined.
    pub depends: String,
    /// `Provides:`.
    pub provides: String,
    /// `Essential: yes`.
    pub essential: bool,
}

impl PackageRecord {
    /// Reads the fields kiln needs from a stanza; `None` when one is missing (a broken
    /// index entry is skipped, as apt does).
    pub fn from_stanza(stanza: &Stanza) -> Option<PackageRecord> {
        let depends = [stanza.get("Pre-Depends"), stanza.get("Depends")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
        Some(PackageRecord {
            name: stanza.get("Package")?.to_owned(),
            version: stanza.get("Version")?.to_owned(),
            architecture: stanza.get("Architecture")?.to_owned(),
            filename: stanza.get("Filename")?.to_owned(),
            sha256: stanza.get("SHA256")?.to_owned(),
            size: stanza.get("Size")?.parse().ok()?,
            depends,
            provides: stanza.get("Provides").unwrap_or_default().to_owned(),
            essential: stanza
                .get("Essential")
                .is_some_and(|value| value.eq_ignore_ascii_case("yes")),
        })
    }
}

/// Every package of one architecture's indexes, by name, with the virtual names they provide.
#[derive(Debug, Clone, Default)]
pub struct PackageIndex {
    /// Every record of a name, in index order.
    pub packages: BTreeMap<String, Vec<PackageRecord>>,
    /// Virtual name → names of the packages that provide it.
    pub providers: BTreeMap<String, BTreeSet<String>>,
}

impl PackageIndex {
    /// Adds every complete stanza of one index file.
    pub fn add_stanzas(&mut self, stanzas: &[Stanza]) {
        for stanza in stanzas {
            let Some(record) = PackageRecord::from_stanza(stanza) else {
                continue;
            };
            for clause in parse_dependencies(&record.provides) {
                for provided in clause {
                    self.providers
                        .entry(provided.name)
                        .or_default()
                        .insert(record.name.clone());
                }
            }
            self.packages
                .entry(record.name.clone())
                .or_default()
                .push(record);
        }
    }

    /// The record apt would install for `name`: the highest version that satisfies
    /// `restriction`, unless `preferred_version` (the locked one) is present and satisfies it.
    pub fn candidate(
        &self,
        name: &str,
        restriction: Option<&crate::debian::VersionRestriction>,
        preferred_version: Option<&str>,
    ) -> Option<&PackageRecord> {
        let records = self.packages.get(name)?;
        let satisfies = |record: &&PackageRecord| {
            restriction.is_none_or(|restriction| restriction.is_satisfied_by(&record.version))
        };
        // The same version can be in two archives (a security update later copied into a
        // point release: `pool/updates/main/...` and `pool/main/...`, same bytes). Which one
        // the indexes list first must not decide the pin, so the main archive's path wins,
        // then the smaller path: a re-lock with no upstream change writes the same lock.
        let archive_rank = |record: &PackageRecord| {
            (
                record.filename.starts_with("pool/updates/"),
                record.filename.clone(),
            )
        };
        if let Some(preferred) = preferred_version {
            if let Some(record) = records
                .iter()
                .filter(satisfies)
                .filter(|record| record.version == preferred)
                .min_by_key(|record| archive_rank(record))
            {
                return Some(record);
            }
        }
        records.iter().filter(satisfies).max_by(|left, right| {
            compare_versions(&left.version, &right.version)
                .then_with(|| archive_rank(right).cmp(&archive_rank(left)))
        })
    }
}

/// One thing a module (or a profile, for its kernel) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRequest {
    /// The package name as the module or profile writes it.
    pub package: String,
    /// Who asks: `module:<name>` or `profile:<name>` (recorded in the pin's `required_by`).
    pub required_by: String,
    /// Whether to follow its `Depends` (false for `kind: build` modules).
    pub with_dependencies: bool,
    /// Package names whose `Depends` edges are not followed anywhere in this request's
    /// closure (the module's `skip_dependencies:`).
    pub skip_dependencies: BTreeSet<String>,
}

/// Why resolution failed; each names the package and who asked for it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    /// Nothing in the index has that name, and nothing provides it.
    #[error("package {package} ({debian_architecture}), required by {required_by}, is not in the apt indexes: check the name (`apt-cache policy {package}`) and the host's apt sources")]
    NotFound {
        /// The package.
        package: String,
        /// `module:x` or `package:y`.
        required_by: String,
        /// Debian's arch name.
        debian_architecture: String,
    },
    /// The index has the package, but no version satisfies the restriction.
    #[error("package {package} ({debian_architecture}), required by {required_by} as `{package} ({operator} {version})`, has no such version in the apt indexes (they have {available})")]
    NoSatisfyingVersion {
        /// The package.
        package: String,
        /// Who asked for it.
        required_by: String,
        /// Debian's arch name.
        debian_architecture: String,
        /// Restriction operator.
        operator: String,
        /// Restriction version.
        version: String,
        /// The versions the indexes have.
        available: String,
    },
    /// A virtual package with several providers and none chosen yet.
    #[error("package {package} ({debian_architecture}), required by {required_by}, is virtual and provided by {providers}: name one of them in the module")]
    AmbiguousVirtual {
        /// The virtual name.
        package: String,
        /// Who asked for it.
        required_by: String,
        /// Debian's arch name.
        debian_architecture: String,
        /// Providers, comma-separated.
        providers: String,
    },
}

/// The outcome of resolving one architecture.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Every pin, sorted by name.
    pub pins: Vec<DebianPackagePin>,
    /// Essential packages that were depended on but deliberately not pinned.
    pub skipped_essential: BTreeSet<String>,
    /// `package -> dependency` edges not followed because a module's
    /// `skip_dependencies:` names the dependency, as `required_by` words them.
    pub skipped_dependencies: BTreeSet<String>,
}

fn pin_from(record: &PackageRecord) -> DebianPackagePin {
    DebianPackagePin {
        name: record.name.clone(),
        version: record.version.clone(),
        architecture: record.architecture.clone(),
        filename: record.filename.clone(),
        sha256: record.sha256.clone(),
        size: record.size,
        required_by: Vec::new(),
        mirror: None,
    }
}

/// Resolves `requests` against `index`. `locked_versions` (name → version) are kept when
/// still valid; `debian_architecture` only appears in error messages.
pub fn resolve(
    index: &PackageIndex,
    requests: &[PackageRequest],
    locked_versions: &BTreeMap<String, String>,
    debian_architecture: &str,
) -> Result<Resolution, Box<ResolveError>> {
    let mut pins: BTreeMap<String, DebianPackagePin> = BTreeMap::new();
    let mut skipped_essential = BTreeSet::new();
    let mut skipped_dependencies = BTreeSet::new();
    // Each distinct skip list, by index: a package's `Depends` are followed once per skip
    // list that reaches it (a module that skips nothing still gets the full closure of a
    // package another module reached first with a skip list).
    let mut skip_sets: Vec<&BTreeSet<String>> = Vec::new();
    let mut followed: BTreeSet<(String, usize)> = BTreeSet::new();
    // (alternatives, reason, follow dependencies of what is picked, skip list)
    let mut queue: VecDeque<(Vec<DependencyAlternative>, String, bool, usize)> = requests
        .iter()
        .map(|request| {
            let skip = match skip_sets
                .iter()
                .position(|set| **set == request.skip_dependencies)
            {
                Some(index) => index,
                None => {
                    skip_sets.push(&request.skip_dependencies);
                    skip_sets.len() - 1
                }
            };
            let alternative = DependencyAlternative {
                name: request.package.clone(),
                restriction: None,
            };
            (
                vec![alternative],
                request.required_by.clone(),
                request.with_dependencies,
                skip,
            )
        })
        .collect();
    while let Some((alternatives, reason, with_dependencies, skip)) = queue.pop_front() {
        // Asked for by name (not a dependency): pinned even when Essential.
        let from_module = !reason.starts_with("package:");
        let chosen = choose_alternative(
            index,
            &alternatives,
            &pins,
            locked_versions,
            &reason,
            debian_architecture,
        )?;
        if chosen.essential && !from_module {
            skipped_essential.insert(chosen.name.clone());
            continue;
        }
        if let Some(existing) = pins.get_mut(&chosen.name) {
            if let Some(restriction) = alternatives
                .iter()
                .find(|alternative| alternative.name == chosen.name)
                .and_then(|alternative| alternative.restriction.as_ref())
            {
                if !restriction.is_satisfied_by(&existing.version) {
                    return Err(Box::new(ResolveError::NoSatisfyingVersion {
                        package: chosen.name.clone(),
                        required_by: reason,
                        debian_architecture: debian_architecture.to_owned(),
                        operator: restriction.operator.clone(),
                        version: restriction.version.clone(),
                        available: format!("{} already chosen", existing.version),
                    }));
                }
            }
            existing.required_by.push(reason);
        } else {
            let mut pin = pin_from(chosen);
            pin.required_by.push(reason);
            pins.insert(chosen.name.clone(), pin);
        }
        if with_dependencies && followed.insert((chosen.name.clone(), skip)) {
            for clause in parse_dependencies(&chosen.depends) {
                if let Some(skipped) = clause
                    .iter()
                    .find(|alternative| skip_sets[skip].contains(&alternative.name))
                {
                    skipped_dependencies.insert(format!("{} -> {}", chosen.name, skipped.name));
                    continue;
                }
                queue.push_back((clause, format!("package:{}", chosen.name), true, skip));
            }
        }
    }
    let mut pins: Vec<DebianPackagePin> = pins.into_values().collect();
    for pin in &mut pins {
        pin.required_by.sort();
        pin.required_by.dedup();
    }
    Ok(Resolution {
        pins,
        skipped_essential,
        skipped_dependencies,
    })
}

fn choose_alternative<'index>(
    index: &'index PackageIndex,
    alternatives: &[DependencyAlternative],
    pins: &BTreeMap<String, DebianPackagePin>,
    locked_versions: &BTreeMap<String, String>,
    reason: &str,
    debian_architecture: &str,
) -> Result<&'index PackageRecord, Box<ResolveError>> {
    for alternative in alternatives {
        let locked = pins
            .get(&alternative.name)
            .map(|pin| pin.version.as_str())
            .or(locked_versions.get(&alternative.name).map(String::as_str));
        if let Some(record) =
            index.candidate(&alternative.name, alternative.restriction.as_ref(), locked)
        {
            return Ok(record);
        }
        if index.packages.contains_key(&alternative.name) {
            continue;
        }
        let Some(providers) = index.providers.get(&alternative.name) else {
            continue;
        };
        let already_chosen = providers
            .iter()
            .find(|provider| pins.contains_key(*provider));
        let provider = match already_chosen {
            Some(provider) => provider,
            None if providers.len() == 1 => providers.iter().next().unwrap_or(&alternative.name),
            None => {
                if alternatives.len() > 1 {
                    continue;
                }
                return Err(Box::new(ResolveError::AmbiguousVirtual {
                    package: alternative.name.clone(),
                    required_by: reason.to_owned(),
                    debian_architecture: debian_architecture.to_owned(),
                    providers: providers.iter().cloned().collect::<Vec<_>>().join(", "),
                }));
            }
        };
        if let Some(record) = index.candidate(
            provider,
            None,
            locked_versions.get(provider).map(String::as_str),
        ) {
            return Ok(record);
        }
    }
    let first = &alternatives[0];
    if let (Some(records), Some(restriction)) =
        (index.packages.get(&first.name), first.restriction.as_ref())
    {
        return Err(Box::new(ResolveError::NoSatisfyingVersion {
            package: first.name.clone(),
            required_by: reason.to_owned(),
            debian_architecture: debian_architecture.to_owned(),
            operator: restriction.operator.clone(),
            version: restriction.version.clone(),
            available: records
                .iter()
                .map(|record| record.version.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }));
    }
    Err(Box::new(ResolveError::NotFound {
        package: first.name.clone(),
        required_by: reason.to_owned(),
        debian_architecture: debian_architecture.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debian::parse_stanzas;

    const INDEX: &str = "\
Package: tool
Version: 1.0-1
Architecture: arm64
Depends: libfoo (>= 2), mta | mail-transport-agent, coreutils, awk
Filename: pool/main/t/tool/tool_1.0-1_arm64.deb
Size: 10
SHA256: 0000000000000000000000000000000000000000000000000000000000000001

Package: libfoo
Version: 2.1-1
Architecture: arm64
Filename: pool/main/libf/libfoo/libfoo_2.1-1_arm64.deb
Size: 20
SHA256: 0000000000000000000000000000000000000000000000000000000000000002

Package: libfoo
Version: 2.0-1
Architecture: arm64
Filename: pool/main/libf/libfoo/libfoo_2.0-1_arm64.deb
Size: 19
SHA256: 0000000000000000000000000000000000000000000000000000000000000003

Package: postfix
Version: 3.7
Architecture: arm64
Provides: mail-transport-agent
Filename: pool/main/p/postfix/postfix_3.7_arm64.deb
Size: 30
SHA256: 0000000000000000000000000000000000000000000000000000000000000004

Package: coreutils
Version: 9.1-1
Architecture: arm64
Essential: yes
Filename: pool/main/c/coreutils/coreutils_9.1-1_arm64.deb
Size: 40
SHA256: 0000000000000000000000000000000000000000000000000000000000000005

Package: mawk
Version: 1.3.4
Architecture: arm64
Provides: awk
Filename: pool/main/m/mawk/mawk_1.3.4_arm64.deb
Size: 50
SHA256: 0000000000000000000000000000000000000000000000000000000000000006

Package: gawk
Version: 5.2
Architecture: arm64
Provides: awk
Filename: pool/main/g/gawk/gawk_5.2_arm64.deb
Size: 60
SHA256: 0000000000000000000000000000000000000000000000000000000000000007
";

    fn index() -> PackageIndex {
        let mut index = PackageIndex::default();
        index.add_stanzas(&parse_stanzas(INDEX));
        index
    }

    fn request(package: &str) -> PackageRequest {
        PackageRequest {
            package: package.into(),
            required_by: "module:m".into(),
            with_dependencies: true,
            skip_dependencies: BTreeSet::new(),
        }
    }

    #[test]
    fn the_same_version_in_two_archives_pins_the_main_archives_path_whatever_the_order() {
        let stanza = |pool: &str| {
            format!(
                "Package: tool\nVersion: 1.0-1+deb12u1\nArchitecture: arm64\nFilename: {pool}/t/tool/tool_1.0-1+deb12u1_arm64.deb\nSize: 10\nSHA256: {}\n",
                "ab".repeat(32)
            )
        };
        let main = stanza("pool/main");
        let updates = stanza("pool/updates/main");
        for order in [[&main, &updates], [&updates, &main]] {
            let mut index = PackageIndex::default();
            index.add_stanzas(&parse_stanzas(&format!("{}\n{}", order[0], order[1])));
            for locked in [None, Some("1.0-1+deb12u1")] {
                let locked_versions: BTreeMap<String, String> = locked
                    .map(|version| ("tool".to_owned(), version.to_owned()))
                    .into_iter()
                    .collect();
                let resolution =
                    resolve(&index, &[request("tool")], &locked_versions, "arm64").unwrap();
                assert_eq!(
                    resolution.pins[0].filename,
                    "pool/main/t/tool/tool_1.0-1+deb12u1_arm64.deb",
                    "index order {:?}, locked {locked:?}",
                    order.map(|stanza| stanza.lines().nth(3).unwrap_or_default())
                );
            }
        }
    }

    #[test]
    fn skipped_dependencies_are_not_followed_for_that_module_only() {
        // tool depends on libfoo, `mta | mail-transport-agent`, coreutils and `awk`.
        let index = index();
        let mut skipping = request("tool");
        skipping.skip_dependencies = BTreeSet::from(["awk".to_owned(), "mta".to_owned()]);
        let resolution = resolve(&index, &[skipping.clone()], &BTreeMap::new(), "arm64").unwrap();
        let names = |resolution: &Resolution| -> Vec<String> {
            resolution.pins.iter().map(|pin| pin.name.clone()).collect()
        };
        assert!(
            !names(&resolution)
                .iter()
                .any(|name| ["postfix", "mawk", "gawk"].contains(&name.as_str())),
            "{:?}",
            summary(&resolution)
        );
        assert!(names(&resolution).contains(&"libfoo".to_owned()));
        assert_eq!(
            resolution.skipped_dependencies,
            BTreeSet::from(["tool -> awk".to_owned(), "tool -> mta".to_owned()])
        );
        // Another module asking for the same package without skipping gets its whole
        // closure, though the skipping module reached it first.
        let other = PackageRequest {
            required_by: "module:other".into(),
            ..request("tool")
        };
        let both = resolve(
            &index,
            &[skipping, other, request("mawk")],
            &BTreeMap::new(),
            "arm64",
        )
        .unwrap();
        let postfix = both
            .pins
            .iter()
            .find(|pin| pin.name == "postfix")
            .unwrap_or_else(|| panic!("{:?}", summary(&both)));
        assert_eq!(postfix.required_by, ["package:tool"]);
    }

    fn summary(resolution: &Resolution) -> Vec<String> {
        resolution
            .pins
            .iter()
            .map(|pin| {
                format!(
                    "{} {} <- {}",
                    pin.name,
                    pin.version,
                    pin.required_by.join(" ")
                )
            })
            .collect()
    }

    #[test]
    fn ambiguous_virtual_is_an_error_naming_the_providers() {
        let error = resolve(&index(), &[request("tool")], &BTreeMap::new(), "arm64").unwrap_err();
        assert_eq!(error.to_string(), "package awk (arm64), required by package:tool, is virtual and provided by gawk, mawk: name one of them in the module");
    }

    #[test]
    fn closure_takes_highest_versions_providers_and_skips_essential() {
        let requests = [request("mawk"), request("tool")];
        let resolution = resolve(&index(), &requests, &BTreeMap::new(), "arm64").unwrap();
        assert_eq!(
            summary(&resolution),
            [
                "libfoo 2.1-1 <- package:tool",
                "mawk 1.3.4 <- module:m package:tool",
                "postfix 3.7 <- package:tool",
                "tool 1.0-1 <- module:m"
            ]
        );
        assert_eq!(
            resolution.skipped_essential,
            BTreeSet::from(["coreutils".to_owned()])
        );
    }

    #[test]
    fn locked_versions_are_kept_while_valid() {
        let locked = BTreeMap::from([("libfoo".to_owned(), "2.0-1".to_owned())]);
        let resolution = resolve(&index(), &[request("libfoo")], &locked, "arm64").unwrap();
        assert_eq!(summary(&resolution), ["libfoo 2.0-1 <- module:m"]);
        let gone = BTreeMap::from([("libfoo".to_owned(), "1.0".to_owned())]);
        let resolution = resolve(&index(), &[request("libfoo")], &gone, "arm64").unwrap();
        assert_eq!(summary(&resolution), ["libfoo 2.1-1 <- module:m"]);
    }

    #[test]
    fn missing_package_names_who_asked() {
        let error = resolve(
            &index(),
            &[request("nonexistent")],
            &BTreeMap::new(),
            "arm64",
        )
        .unwrap_err();
        assert!(
            error.to_string().starts_with(
                "package nonexistent (arm64), required by module:m, is not in the apt indexes"
            ),
            "{error}"
        );
    }

    #[test]
    fn unsatisfiable_restriction_lists_versions() {
        let mut index = index();
        index.add_stanzas(&parse_stanzas(
            "Package: needy\nVersion: 1\nArchitecture: arm64\nDepends: libfoo (>= 3)\nFilename: pool/n.deb\nSize: 1\nSHA256: 00\n",
        ));
        let error = resolve(&index, &[request("needy")], &BTreeMap::new(), "arm64").unwrap_err();
        assert_eq!(
            error.to_string(),
            "package libfoo (arm64), required by package:needy as `libfoo (>= 3)`, has no such version in the apt indexes (they have 2.1-1, 2.0-1)"
        );
    }

    #[test]
    fn build_requests_do_not_follow_dependencies() {
        let build = PackageRequest {
            package: "tool".into(),
            required_by: "module:kernel-source".into(),
            with_dependencies: false,
            skip_dependencies: BTreeSet::new(),
        };
        let resolution = resolve(&index(), &[build], &BTreeMap::new(), "arm64").unwrap();
        assert_eq!(summary(&resolution), ["tool 1.0-1 <- module:kernel-source"]);
    }
}
