//! Config fragments: parsing `CONFIG_X=v` / `# CONFIG_X is not set` lines, loading the
//! fragments of an (arch, flavor), and merging them onto a base `.config` the way the
//! kernel's `scripts/kconfig/merge_config.sh` does. Pure: text in, text out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::target::{Arch, Flavor};

/// The value a line gives a symbol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum OptionValue {
    /// `# CONFIG_X is not set`; in a final `.config`, an absent symbol means the same.
    NotSet,
    /// `CONFIG_X=v`, `v` as written: `y`, `m`, `"a string"`, `0x10`, `42`.
    Set(String),
}

impl OptionValue {
    /// As written in a `.config` (`y`, `m`, `"string"`), `n` for not set.
    pub fn as_config_text(&self) -> &str {
        match self {
            OptionValue::NotSet => "n",
            OptionValue::Set(value) => value,
        }
    }
}

/// One assignment in a fragment or `.config`. `symbol` is without the `CONFIG_` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLine {
    pub symbol: String,
    pub value: OptionValue,
    /// 1-based line number.
    pub line: usize,
}

impl ConfigLine {
    /// The line as Kconfig writes it.
    pub fn to_config_text(&self) -> String {
        render(&self.symbol, &self.value)
    }
}

/// Renders one assignment as a `.config` line.
pub fn render(symbol: &str, value: &OptionValue) -> String {
    match value {
        OptionValue::NotSet => format!("# CONFIG_{symbol} is not set"),
        OptionValue::Set(value) => format!("CONFIG_{symbol}={value}"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FragmentError {
    #[error("{file}:{line}: `{text}` is neither `CONFIG_NAME=value`, `# CONFIG_NAME is not set` nor a comment; fix the line (comments go on their own line, starting with `#`)")]
    Syntax {
        file: String,
        line: usize,
        text: String,
    },
    #[error("cannot read kernel config fragment {path}: {source}; kernel-configs/ needs common.config, arch/ARCH.config and flavor/FLAVOR.config")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parses `.config`-style text. Blank lines and comments are skipped; anything else that
/// is not an assignment is an error naming `file` and the line, so a typo in a fragment
/// cannot silently drop an option.
pub fn parse_config_lines(file: &str, text: &str) -> Result<Vec<ConfigLine>, FragmentError> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(symbol) = rest.strip_suffix(" is not set") {
                if is_symbol(symbol) {
                    lines.push(ConfigLine {
                        symbol: symbol.to_string(),
                        value: OptionValue::NotSet,
                        line: index + 1,
                    });
                    continue;
                }
            }
        }
        if line.starts_with('#') {
            continue;
        }
        let parsed = line
            .strip_prefix("CONFIG_")
            .and_then(|rest| rest.split_once('='));
        match parsed {
            Some((symbol, value)) if is_symbol(symbol) && is_value(value) => {
                lines.push(ConfigLine {
                    symbol: symbol.to_string(),
                    value: OptionValue::Set(value.to_string()),
                    line: index + 1,
                });
            }
            _ => {
                return Err(FragmentError::Syntax {
                    file: file.to_string(),
                    line: index + 1,
                    text: raw.to_string(),
                })
            }
        }
    }
    Ok(lines)
}

fn is_symbol(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

fn is_value(text: &str) -> bool {
    if text.starts_with('"') {
        return text.len() >= 2 && text.ends_with('"');
    }
    !text.is_empty() && !text.contains(char::is_whitespace)
}

/// Parses a final `.config` into symbol → value (the last assignment wins, as in Kconfig).
pub fn parse_config_map(text: &str) -> BTreeMap<String, OptionValue> {
    // A generated .config only holds valid lines; tolerate anything else rather than fail.
    text.lines()
        .filter_map(|line| parse_config_lines("", line).ok())
        .flatten()
        .map(|line| (line.symbol, line.value))
        .collect()
}

/// A fragment file: its name relative to `kernel-configs/` and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub name: String,
    pub text: String,
}

impl Fragment {
    pub fn lines(&self) -> Result<Vec<ConfigLine>, FragmentError> {
        parse_config_lines(&self.name, &self.text)
    }
}

/// The fragment files of (arch, flavor), in merge order: `common.config`,
/// `arch/ARCH.config`, `flavor/FLAVOR.config`, then `flavor/FLAVOR-ARCH.config` if present.
pub fn fragment_names(config_dir: &Path, arch: Arch, flavor: Flavor) -> Vec<(String, bool)> {
    let optional = format!("flavor/{}-{}.config", flavor.name(), arch.name());
    let mut names = vec![
        ("common.config".to_string(), true),
        (format!("arch/{}.config", arch.name()), true),
        (format!("flavor/{}.config", flavor.name()), true),
    ];
    if config_dir.join(&optional).exists() {
        names.push((optional, false));
    }
    names
}

/// Reads the fragments of (arch, flavor) from `config_dir` (the `kernel-configs/` directory).
pub fn load_fragments(
    config_dir: &Path,
    arch: Arch,
    flavor: Flavor,
) -> Result<Vec<Fragment>, FragmentError> {
    fragment_names(config_dir, arch, flavor)
        .into_iter()
        .map(|(name, _required)| {
            let path = config_dir.join(&name);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| FragmentError::Read { path, source })?;
            Ok(Fragment { name, text })
        })
        .collect()
}

/// An option a fragment asks for, with where it was asked (the last fragment wins).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestedOption {
    pub symbol: String,
    pub value: OptionValue,
    pub fragment: String,
    pub line: usize,
}

/// Every option the fragments request, sorted by symbol; a later fragment overrides an
/// earlier one, as in the merge.
pub fn requested_options(fragments: &[Fragment]) -> Result<Vec<RequestedOption>, FragmentError> {
    let mut requested = BTreeMap::new();
    for fragment in fragments {
        for line in fragment.lines()? {
            requested.insert(
                line.symbol.clone(),
                RequestedOption {
                    symbol: line.symbol,
                    value: line.value,
                    fragment: fragment.name.clone(),
                    line: line.line,
                },
            );
        }
    }
    Ok(requested.into_values().collect())
}

/// Merges `fragments` onto `base_config` like `merge_config.sh -m`: every symbol a
/// fragment sets is removed from what came before, and the fragment's assignments are
/// appended in order. `make olddefconfig` then resolves dependencies and defaults.
pub fn merge_fragments(base_config: &str, fragments: &[Fragment]) -> Result<String, FragmentError> {
    let mut lines: Vec<String> = base_config.lines().map(str::to_string).collect();
    for fragment in fragments {
        let assignments = fragment.lines()?;
        // Within one fragment the last assignment wins, as in Kconfig; keep only that one.
        let last_index: BTreeMap<&str, usize> = assignments
            .iter()
            .enumerate()
            .map(|(index, line)| (line.symbol.as_str(), index))
            .collect();
        lines.retain(|line| match parse_config_lines("", line) {
            Ok(parsed) => parsed
                .first()
                .is_none_or(|assignment| !last_index.contains_key(assignment.symbol.as_str())),
            Err(_) => true,
        });
        lines.push(format!("# kiln: merged from {}", fragment.name));
        for (index, assignment) in assignments.iter().enumerate() {
            if last_index[assignment.symbol.as_str()] == index {
                lines.push(assignment.to_config_text());
            }
        }
    }
    let mut merged = lines.join("\n");
    merged.push('\n');
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(name: &str, text: &str) -> Fragment {
        Fragment {
            name: name.to_string(),
            text: text.to_string(),
        }
    }

    #[test]
    fn parses_assignments_and_skips_comments() {
        let text =
            "# a comment\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"-kiln\"\nCONFIG_D=0x10\n";
        let lines = parse_config_lines("f.config", text).unwrap();
        let rendered: Vec<String> = lines
            .iter()
            .map(|line| format!("{}:{}", line.line, line.to_config_text()))
            .collect();
        assert_eq!(
            rendered,
            [
                "3:CONFIG_A=y",
                "4:# CONFIG_B is not set",
                "5:CONFIG_C=\"-kiln\"",
                "6:CONFIG_D=0x10"
            ]
        );
    }

    #[test]
    fn rejects_a_trailing_comment_naming_file_and_line() {
        let error = parse_config_lines(
            "flavor/virt.config",
            "CONFIG_A=y\nCONFIG_E1000=y # QEMU's NIC\n",
        )
        .unwrap_err();
        insta::assert_snapshot!(error.to_string(), @"flavor/virt.config:2: `CONFIG_E1000=y # QEMU's NIC` is neither `CONFIG_NAME=value`, `# CONFIG_NAME is not set` nor a comment; fix the line (comments go on their own line, starting with `#`)");
    }

    #[test]
    fn merge_overrides_base_and_earlier_fragments() {
        let base = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n# comment kept\n";
        let fragments = [
            fragment("common.config", "CONFIG_B=y\nCONFIG_D=m\n"),
            fragment(
                "flavor/virt.config",
                "# CONFIG_A is not set\nCONFIG_D=y\nCONFIG_D=m\n",
            ),
        ];
        let merged = merge_fragments(base, &fragments).unwrap();
        insta::assert_snapshot!(merged, @r"
        CONFIG_C=m
        # comment kept
        # kiln: merged from common.config
        CONFIG_B=y
        # kiln: merged from flavor/virt.config
        # CONFIG_A is not set
        CONFIG_D=m
        ");
    }

    #[test]
    fn later_fragments_win_in_requested_options() {
        let fragments = [
            fragment("common.config", "CONFIG_A=y\nCONFIG_B=y\n"),
            fragment("arch/x86_64.config", "CONFIG_A=m\n"),
        ];
        let requested = requested_options(&fragments).unwrap();
        let summary: Vec<String> = requested
            .iter()
            .map(|option| {
                format!(
                    "{}={} ({}:{})",
                    option.symbol,
                    option.value.as_config_text(),
                    option.fragment,
                    option.line
                )
            })
            .collect();
        assert_eq!(
            summary,
            ["A=m (arch/x86_64.config:1)", "B=y (common.config:2)"]
        );
    }

    #[test]
    fn the_repository_fragments_parse() {
        let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernel-configs");
        for arch in Arch::ALL {
            for flavor in Flavor::ALL {
                let fragments = load_fragments(&config_dir, arch, flavor).unwrap();
                assert!(
                    requested_options(&fragments).unwrap().len() > 20,
                    "{arch} {flavor}"
                );
            }
        }
    }
}
