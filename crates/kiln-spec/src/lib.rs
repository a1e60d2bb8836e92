//! The module and profile schema: what `modules/<name>/module.yaml` and
//! `profiles/<name>.yaml` may say, parsed strictly.
//!
//! **Owns:** the YAML types ([`ModuleSpec`], [`ProfileSpec`]), loading the catalog from a
//! repository root ([`Catalog::load`]) and checking that every profile names modules that
//! exist.
//!
//! **Architecture Invariant:** this crate does no network, spawns no process and knows
//! nothing of the lock or the store: it turns YAML files into data. Every YAML error names
//! the file, the line and the column (`path:line:column: message`), because a user who typed
//! `sorces:` must be told where, not just what.
//!
//! **Open for extension:** the schema is deliberately minimal (what `cargo xtask lock`
//! needs). Later fields (command, env, services, kernel features...) are added as new
//! optional fields with `#[serde(default)]` on [`ModuleSpec`], or as new variants of
//! [`ModuleSource`]; every type keeps `deny_unknown_fields`, so a typo is an error and a
//! new field is a deliberate, reviewed change.
//!
//! ```yaml
//! # modules/base/module.yaml
//! description: The userland every image starts from.
//! kind: base
//! sources:
//!   - debian: [busybox-static, ca-certificates]
//!   - tarball:
//!       name: example-1.0.tar.gz
//!       urls: [https://example.org/example-1.0.tar.gz]
//!       sha256: 0123...
//!       size: 1234
//! ```
//! ```yaml
//! # profiles/debug.yaml
//! modules: [base, sshd]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a module is for, which decides when (and whether) it enters an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// Merged into the image's root filesystem (the userland, certificates, the init).
    Base,
    /// A one-shot step run in order at boot (sysctl, dhcp), like LinuxKit's `onboot`.
    Onboot,
    /// A long-running service (sshd, the agent launcher), like LinuxKit's `services`.
    Service,
    /// A one-shot step run at shutdown, like LinuxKit's `onshutdown`.
    Shutdown,
    /// An input of the build itself (the kernel source), never put into an image.
    /// Its Debian packages are pinned by name only: their `Depends` are not resolved,
    /// because the build unpacks them, it does not install them.
    Build,
}

impl ModuleKind {
    /// Whether the Debian packages this module names get their `Depends`/`Pre-Depends`
    /// closure resolved (true for everything that goes into an image).
    pub fn resolves_debian_dependencies(self) -> bool {
        !matches!(self, ModuleKind::Build)
    }
}

/// One input of a module, as written in `sources:`.
///
/// Written as a single-key map: `- debian: [a, b]` or `- tarball: {name, urls, sha256, size}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ModuleSource {
    /// Debian binary packages by name; `cargo xtask lock` pins them (and, unless the module is
    /// a [`ModuleKind::Build`] module, their dependency closure) from the host's apt sources.
    Debian(Vec<String>),
    /// A source tarball, pinned by its author: the lock copies the pin as written.
    Tarball(TarballSpec),
}

/// A source tarball pinned by the module's author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TarballSpec {
    /// The file name the build refers to it by (`linux-6.1.tar.xz`).
    pub name: String,
    /// Where to download it, tried in order. May be empty for a file that users drop
    /// into the store's `import/` directory themselves (air-gapped sites).
    #[serde(default)]
    pub urls: Vec<String>,
    /// The sha256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// The size in bytes, so a truncated download is caught before it is hashed.
    pub size: u64,
}

/// `modules/<name>/module.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    /// One or two sentences for the catalog listing.
    pub description: String,
    /// When the module runs, or that it is a build input.
    pub kind: ModuleKind,
    /// The pinned inputs the module is made from. (`singleton_map_recursive`: serde_yaml 0.9
    /// reads enums from `!tags` by default; modules write `- debian: [...]` maps instead.)
    #[serde(default, with = "serde_yaml::with::singleton_map_recursive")]
    pub sources: Vec<ModuleSource>,
}

impl ModuleSpec {
    /// Every Debian package name this module asks for, in the order written.
    pub fn debian_packages(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().flat_map(|source| match source {
            ModuleSource::Debian(names) => names.iter().map(String::as_str).collect::<Vec<_>>(),
            ModuleSource::Tarball(_) => Vec::new(),
        })
    }

    /// Every tarball this module asks for.
    pub fn tarballs(&self) -> impl Iterator<Item = &TarballSpec> {
        self.sources.iter().filter_map(|source| match source {
            ModuleSource::Tarball(tarball) => Some(tarball),
            ModuleSource::Debian(_) => None,
        })
    }
}

/// `profiles/<name>.yaml`: which modules make an image, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Module names (directories under `modules/`), in the order their layers are composed.
    pub modules: Vec<String>,
}

/// A module or profile file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file (or directory) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema.
    #[error("{location}: {message}")]
    Parse {
        /// `path:line:column`, or `path` when serde_yaml gave no position.
        location: SourceLocation,
        /// serde_yaml's message, without its own position suffix.
        message: String,
    },
    /// A profile names a module that has no `modules/<name>/module.yaml`.
    #[error("{profile_path}: profile `{profile}` names module `{module}`, but {expected_path} does not exist: add the module or remove it from the profile")]
    UnknownModule {
        /// The profile's file.
        profile_path: PathBuf,
        /// The profile's name.
        profile: String,
        /// The missing module.
        module: String,
        /// Where the module file was looked for.
        expected_path: PathBuf,
    },
    /// A directory under `modules/` has no `module.yaml`.
    #[error("{directory} is a module directory without a module.yaml: add {expected_path} (description, kind, sources) or remove the directory")]
    MissingModuleFile {
        /// The module directory.
        directory: PathBuf,
        /// The file that is missing.
        expected_path: PathBuf,
    },
    /// A profile or command asked for a profile that does not exist.
    #[error("no profile `{profile}`: expected {expected_path}")]
    UnknownProfile {
        /// The profile asked for.
        profile: String,
        /// Where it was looked for.
        expected_path: PathBuf,
    },
}

/// A position in a YAML file, printed as `path:line:column` (1-based, like compilers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// The file.
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub line_and_column: Option<(usize, usize)>,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_and_column {
            Some((line, column)) => write!(formatter, "{}:{line}:{column}", self.path.display()),
            None => write!(formatter, "{}", self.path.display()),
        }
    }
}

fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, SpecError> {
    serde_yaml::from_str(text).map_err(|error| {
        let line_and_column = error
            .location()
            .map(|location| (location.line(), location.column()));
        let mut message = error.to_string();
        // serde_yaml appends " at line L column C"; the location is printed in front instead.
        if let Some(index) = message.find(" at line ") {
            message.truncate(index);
        }
        SpecError::Parse {
            location: SourceLocation {
                path: path.to_path_buf(),
                line_and_column,
            },
            message,
        }
    })
}

/// Parses a module file's text; `path` is only used in error messages.
pub fn parse_module(text: &str, path: &Path) -> Result<ModuleSpec, SpecError> {
    parse_yaml(text, path)
}

/// Parses a profile file's text; `path` is only used in error messages.
pub fn parse_profile(text: &str, path: &Path) -> Result<ProfileSpec, SpecError> {
    parse_yaml(text, path)
}

fn read_text(path: &Path) -> Result<String, SpecError> {
    std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every module and profile of a repository, keyed by name (sorted, so iteration order is
/// stable and the lock built from it is too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// The repository root the catalog was loaded from.
    pub root: PathBuf,
    /// `modules/<name>/module.yaml`, by name.
    pub modules: BTreeMap<String, ModuleSpec>,
    /// `profiles/<name>.yaml`, by name.
    pub profiles: BTreeMap<String, ProfileSpec>,
    /// Directories under `modules/` that have no `module.yaml` yet (a module whose files
    /// exist but whose schema is still being written). They are not modules: callers warn
    /// about them, and a profile naming one fails with [`SpecError::MissingModuleFile`].
    pub directories_without_module_file: Vec<PathBuf>,
}

impl Catalog {
    /// Loads `root/modules/*/module.yaml` and `root/profiles/*.yaml`, and checks that every
    /// profile names existing modules. A directory under `modules/` without a `module.yaml`
    /// is listed in [`Catalog::directories_without_module_file`] (callers warn), and is an
    /// error only when a profile names it.
    pub fn load(root: &Path) -> Result<Catalog, SpecError> {
        let mut catalog = Catalog {
            root: root.to_path_buf(),
            modules: BTreeMap::new(),
            profiles: BTreeMap::new(),
            directories_without_module_file: Vec::new(),
        };
        let modules_dir = root.join("modules");
        for entry in sorted_dir_entries(&modules_dir)? {
            if !entry.is_dir() {
                continue;
            }
            let name = file_name_string(&entry);
            let module_path = entry.join("module.yaml");
            if !module_path.exists() {
                catalog.directories_without_module_file.push(entry.clone());
                continue;
            }
            let module = parse_module(&read_text(&module_path)?, &module_path)?;
            catalog.modules.insert(name, module);
        }
        let profiles_dir = root.join("profiles");
        if profiles_dir.exists() {
            for entry in sorted_dir_entries(&profiles_dir)? {
                let Some(name) = entry
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".yaml"))
                else {
                    continue;
                };
                let profile = parse_profile(&read_text(&entry)?, &entry)?;
                catalog.profiles.insert(name.to_owned(), profile);
            }
        }
        for (profile_name, profile) in &catalog.profiles {
            for module in &profile.modules {
                let directory = root.join("modules").join(module);
                if !catalog.modules.contains_key(module)
                    && catalog.directories_without_module_file.contains(&directory)
                {
                    return Err(SpecError::MissingModuleFile {
                        expected_path: catalog.module_path(module),
                        directory,
                    });
                }
                if !catalog.modules.contains_key(module) {
                    return Err(SpecError::UnknownModule {
                        profile_path: catalog.profile_path(profile_name),
                        profile: profile_name.clone(),
                        module: module.clone(),
                        expected_path: catalog.module_path(module),
                    });
                }
            }
        }
        Ok(catalog)
    }

    /// Where module `name`'s file is (whether or not it exists).
    pub fn module_path(&self, name: &str) -> PathBuf {
        self.root.join("modules").join(name).join("module.yaml")
    }

    /// Where profile `name`'s file is (whether or not it exists).
    pub fn profile_path(&self, name: &str) -> PathBuf {
        self.root.join("profiles").join(format!("{name}.yaml"))
    }

    /// The profile called `name`, or an error naming the file that was expected.
    pub fn profile(&self, name: &str) -> Result<&ProfileSpec, SpecError> {
        self.profiles
            .get(name)
            .ok_or_else(|| SpecError::UnknownProfile {
                profile: name.to_owned(),
                expected_path: self.profile_path(name),
            })
    }
}

fn file_name_string(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sorted_dir_entries(dir: &Path) -> Result<Vec<PathBuf>, SpecError> {
    let read_error = |source| SpecError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        entries.push(entry.map_err(read_error)?.path());
    }
    entries.sort();
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_module_error(text: &str, expected: &str) {
        let error = parse_module(text, Path::new("modules/x/module.yaml")).unwrap_err();
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn parses_a_module_with_both_source_kinds() {
        let text = "description: d\nkind: service\nsources:\n  - debian: [dropbear-bin]\n  - tarball:\n      name: a.tar.gz\n      urls: [http://127.0.0.1/a.tar.gz]\n      sha256: 00\n      size: 3\n";
        let module = parse_module(text, Path::new("m.yaml")).unwrap();
        assert_eq!(module.kind, ModuleKind::Service);
        assert_eq!(
            module.debian_packages().collect::<Vec<_>>(),
            ["dropbear-bin"]
        );
        assert_eq!(module.tarballs().map(|t| t.size).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn unknown_field_names_file_line_and_column() {
        check_module_error(
            "description: d\nkind: base\nsorces: []\n",
            "modules/x/module.yaml:3:1: unknown field `sorces`, expected one of `description`, `kind`, `sources`",
        );
    }

    #[test]
    fn unknown_kind_names_file_line_and_column() {
        check_module_error(
            "description: d\nkind: daemon\n",
            "modules/x/module.yaml:2:7: kind: unknown variant `daemon`, expected one of `base`, `onboot`, `service`, `shutdown`, `build`",
        );
    }

    #[test]
    fn unknown_source_kind_is_rejected_with_location() {
        let error = parse_module(
            "description: d\nkind: base\nsources:\n  - rpm: [x]\n",
            Path::new("m.yaml"),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("m.yaml:4:"), "{message}");
        assert!(message.contains("unknown variant `rpm`"), "{message}");
    }

    #[test]
    fn profile_naming_a_missing_module_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("modules/base")).unwrap();
        std::fs::write(
            root.path().join("modules/base/module.yaml"),
            "description: d\nkind: base\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("profiles")).unwrap();
        std::fs::write(
            root.path().join("profiles/p.yaml"),
            "modules: [base, sshd]\n",
        )
        .unwrap();
        let error = Catalog::load(root.path()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("profile `p` names module `sshd`"),
            "{error}"
        );
    }

    #[test]
    fn module_directory_without_module_yaml_is_listed_and_fails_a_profile() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("modules/dhcp/files")).unwrap();
        let catalog = Catalog::load(root.path()).unwrap();
        assert_eq!(
            catalog.directories_without_module_file,
            [root.path().join("modules/dhcp")]
        );
        assert!(catalog.modules.is_empty());
        std::fs::create_dir_all(root.path().join("profiles")).unwrap();
        std::fs::write(root.path().join("profiles/p.yaml"), "modules: [dhcp]\n").unwrap();
        let error = Catalog::load(root.path()).unwrap_err().to_string();
        assert!(
            error.contains("modules/dhcp is a module directory without a module.yaml: add "),
            "{error}"
        );
        assert!(
            error.contains(
                "modules/dhcp/module.yaml (description, kind, sources) or remove the directory"
            ),
            "{error}"
        );
    }

    #[test]
    fn the_repository_catalog_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let catalog = Catalog::load(&root).unwrap();
        assert_eq!(catalog.profile("debug").unwrap().modules, ["base", "sshd"]);
        assert_eq!(catalog.profile("minimal").unwrap().modules, ["base"]);
        assert_eq!(catalog.modules["kernel-source"].kind, ModuleKind::Build);
        assert!(catalog.modules["base"]
            .debian_packages()
            .any(|name| name == "busybox-static"));
    }
}
