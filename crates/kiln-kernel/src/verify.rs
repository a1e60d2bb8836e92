//! After `make olddefconfig`: did every requested option survive, and if not, why?
//! Pure: the requested options, the final `.config` text and a [`KconfigIndex`] in, a list
//! of [`OptionProblem`]s out.

use std::collections::BTreeMap;
use std::fmt;

use crate::fragment::{parse_config_map, render, OptionValue, RequestedOption};
use crate::kconfig::{evaluate, expression_symbols, KconfigIndex, SymbolType, Tristate};

/// A requested option whose final value differs from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionProblem {
    pub requested: RequestedOption,
    /// The final value (`NotSet` when the symbol is absent from `.config`).
    pub actual: OptionValue,
    pub reason: Reason,
}

/// Why Kconfig did not honour a request, as far as the Kconfig files tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No Kconfig file of this source defines the symbol: misspelt, renamed or removed.
    UnknownSymbol,
    /// Defined only under `arch/DIR/` for other architectures.
    OtherArchitecture { defined_for: Vec<String> },
    /// `=m` asked of a `bool`.
    NotTristate,
    /// `depends on` expressions that are not satisfied, each with its symbols' values.
    UnmetDependency { unmet: Vec<UnmetDependency> },
    /// `=m` asked, but a built-in option selects it, so it is built in.
    ForcedBuiltIn { selected_by: Vec<String> },
    /// `is not set` asked, but enabled options select it.
    SelectedBy { selected_by: Vec<String> },
    /// The symbol has no prompt: a fragment cannot set it; only a `select` can.
    NoPrompt { selectable_by: Vec<String> },
    /// Kconfig files do not say (a `choice` resolved otherwise, a range, a macro condition).
    Unexplained,
}

/// One unsatisfied `depends on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmetDependency {
    /// The symbol carrying the `depends on`: the requested one, or (followed up to three
    /// levels) a symbol its dependency needs.
    pub symbol: String,
    pub expression: String,
    /// Where the symbol carrying the dependency is defined, `file:line`.
    pub defined_at: String,
    /// `SYMBOL=value` for every symbol in the expression.
    pub values: Vec<String>,
}

impl fmt::Display for Reason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::UnknownSymbol => {
                write!(formatter, "no Kconfig file of this kernel defines it: check the spelling, or whether this kernel version renamed or removed it")
            }
            Reason::OtherArchitecture { defined_for } => {
                write!(formatter, "wrong architecture: defined only for arch/{}", defined_for.join(", arch/"))
            }
            Reason::NotTristate => write!(formatter, "it is a bool: it can be built in (=y) but not a module (=m)"),
            Reason::UnmetDependency { unmet } => {
                write!(formatter, "missing dependency:")?;
                for dependency in unmet {
                    write!(formatter, " {} `depends on {}` ({}) with {};", dependency.symbol, dependency.expression, dependency.defined_at, dependency.values.join(", "))?;
                }
                write!(formatter, " enable those in a fragment too")
            }
            Reason::ForcedBuiltIn { selected_by } => {
                write!(formatter, "built in because a built-in option selects it: {}", selected_by.join(", "))
            }
            Reason::SelectedBy { selected_by } => write!(formatter, "enabled options select it: {}", selected_by.join(", ")),
            Reason::NoPrompt { selectable_by } if selectable_by.is_empty() => {
                write!(formatter, "it has no prompt, so a fragment cannot set it, and nothing selects it")
            }
            Reason::NoPrompt { selectable_by } => {
                write!(formatter, "it has no prompt, so a fragment cannot set it; it is selected by: {}", selectable_by.join(", "))
            }
            Reason::Unexplained => write!(formatter, "Kconfig resolved it otherwise (a choice, a range or a compiler check); run `cargo xtask kernel menuconfig` and search for it"),
        }
    }
}

impl fmt::Display for OptionProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} ({}:{}) is {}: {}",
            render(&self.requested.symbol, &self.requested.value),
            self.requested.fragment,
            self.requested.line,
            match &self.actual {
                OptionValue::NotSet => "not set".to_string(),
                OptionValue::Set(value) => format!("{value}"),
            },
            self.reason
        )
    }
}

/// Compares each requested option with the final `.config` and explains every mismatch.
/// `arch_dir` is the kernel's `SRCARCH` (`x86`, `arm64`).
pub fn verify_options(
    requested: &[RequestedOption],
    final_config: &str,
    index: &KconfigIndex,
    arch_dir: &str,
) -> Vec<OptionProblem> {
    let values = parse_config_map(final_config);
    requested
        .iter()
        .filter_map(|request| {
            let actual = values
                .get(&request.symbol)
                .cloned()
                .unwrap_or(OptionValue::NotSet);
            if actual == request.value {
                return None;
            }
            Some(OptionProblem {
                requested: request.clone(),
                reason: explain(request, &actual, &values, index, arch_dir),
                actual,
            })
        })
        .collect()
}

fn explain(
    request: &RequestedOption,
    actual: &OptionValue,
    values: &BTreeMap<String, OptionValue>,
    index: &KconfigIndex,
    arch_dir: &str,
) -> Reason {
    let all = index.definitions(&request.symbol);
    if all.is_empty() {
        return Reason::UnknownSymbol;
    }
    let relevant: Vec<_> = all
        .iter()
        .filter(|definition| {
            definition
                .architecture_dir()
                .is_none_or(|dir| dir == arch_dir)
        })
        .collect();
    if relevant.is_empty() {
        let mut defined_for: Vec<String> = all
            .iter()
            .filter_map(|definition| definition.architecture_dir().map(str::to_string))
            .collect();
        defined_for.sort();
        defined_for.dedup();
        return Reason::OtherArchitecture { defined_for };
    }
    let value_of = |symbol: &str| {
        values
            .get(symbol)
            .map(|value| value.as_config_text().to_string())
    };
    let enabled_selectors = || -> Vec<String> {
        index
            .selected_by(&request.symbol)
            .filter(|selector| matches!(values.get(*selector), Some(OptionValue::Set(value)) if value == "y" || value == "m"))
            .map(|selector| format!("{selector}={}", values[selector].as_config_text()))
            .collect()
    };
    let requested_text = request.value.as_config_text();
    if requested_text == "m"
        && relevant
            .iter()
            .all(|definition| definition.symbol_type == Some(SymbolType::Bool))
    {
        return Reason::NotTristate;
    }
    if request.value == OptionValue::NotSet {
        let selected_by = enabled_selectors();
        return if selected_by.is_empty() {
            Reason::Unexplained
        } else {
            Reason::SelectedBy { selected_by }
        };
    }
    if requested_text == "m" && actual.as_config_text() == "y" {
        let selected_by: Vec<String> = enabled_selectors()
            .into_iter()
            .filter(|selector| selector.ends_with("=y"))
            .collect();
        if !selected_by.is_empty() {
            return Reason::ForcedBuiltIn { selected_by };
        }
    }
    let needed = if requested_text == "y" {
        Tristate::Yes
    } else {
        Tristate::Module
    };
    let mut unmet = Vec::new();
    unmet_dependencies(
        &request.symbol,
        needed,
        &value_of,
        index,
        arch_dir,
        0,
        &mut unmet,
    );
    if !unmet.is_empty() {
        return Reason::UnmetDependency { unmet };
    }
    if relevant.iter().all(|definition| !definition.has_prompt) {
        return Reason::NoPrompt {
            selectable_by: index
                .selected_by(&request.symbol)
                .map(str::to_string)
                .collect(),
        };
    }
    Reason::Unexplained
}

/// The unsatisfied `depends on` of `symbol`, then (up to three levels down) those of the
/// disabled symbols they mention, so "USB_USBNET needs USB_NET_DRIVERS" continues with
/// "USB_NET_DRIVERS needs USB".
fn unmet_dependencies(
    symbol: &str,
    needed: Tristate,
    value_of: &dyn Fn(&str) -> Option<String>,
    index: &KconfigIndex,
    arch_dir: &str,
    depth: usize,
    unmet: &mut Vec<UnmetDependency>,
) {
    let relevant = index.definitions(symbol).iter().filter(|definition| {
        definition
            .architecture_dir()
            .is_none_or(|dir| dir == arch_dir)
    });
    let mut disabled = Vec::new();
    for definition in relevant {
        for expression in &definition.depends_on {
            let Some(value) = evaluate(expression, value_of) else {
                continue;
            };
            if value >= needed {
                continue;
            }
            let symbols = expression_symbols(expression);
            let values = symbols
                .iter()
                .map(|name| {
                    format!(
                        "{name}={}",
                        value_of(name).unwrap_or_else(|| "n".to_string())
                    )
                })
                .collect();
            let dependency = UnmetDependency {
                symbol: symbol.to_string(),
                expression: expression.clone(),
                defined_at: format!("{}:{}", definition.file, definition.line),
                values,
            };
            if unmet.iter().any(|known| {
                known.symbol == dependency.symbol && known.expression == dependency.expression
            }) {
                continue;
            }
            unmet.push(dependency);
            disabled.extend(
                symbols
                    .into_iter()
                    .filter(|name| value_of(name).is_none_or(|value| value == "n")),
            );
        }
    }
    if depth >= 3 {
        return;
    }
    for name in disabled {
        if !unmet.iter().any(|known| known.symbol == name) {
            unmet_dependencies(
                &name,
                Tristate::Module,
                value_of,
                index,
                arch_dir,
                depth + 1,
                unmet,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fragment::{requested_options, Fragment};

    const KCONFIG: &[(&str, &str)] = &[
        ("arch/x86/Kconfig", "config X86\n\tdef_bool y\n\nconfig X86_X32_ABI\n\tbool \"x32 ABI for 64-bit mode\"\n\tdepends on X86_64\n"),
        ("drivers/pci/Kconfig", "menuconfig PCI\n\tbool \"PCI support\"\n\nconfig PCI_MSI\n\tbool \"Message Signaled Interrupts (MSI and MSI-X)\"\n\tdepends on PCI\n"),
        (
            "drivers/net/ethernet/google/Kconfig",
            "config GVE\n\ttristate \"Google Virtual NIC (gVNIC) support\"\n\tdepends on (PCI_MSI && (X86 || CPU_LITTLE_ENDIAN))\n\tselect PAGE_POOL\n\nconfig PAGE_POOL\n\tbool\n",
        ),
        ("lib/Kconfig", "config CRC32\n\ttristate \"CRC32 functions\"\n\nconfig EXT4_FS\n\ttristate \"ext4\"\n\tselect CRC32\n"),
    ];

    fn check(fragment: &str, final_config: &str, arch_dir: &str) -> String {
        let index = KconfigIndex::from_files(KCONFIG.iter().copied());
        let requested = requested_options(&[Fragment {
            name: "test.config".to_string(),
            text: fragment.to_string(),
        }])
        .unwrap();
        verify_options(&requested, final_config, &index, arch_dir)
            .iter()
            .map(|problem| format!("{problem}\n"))
            .collect()
    }

    #[test]
    fn explains_each_kind_of_rejection() {
        let fragment = "\
CONFIG_X86_X32_ABI=y
CONFIG_GVE=m
CONFIG_PCI_MSI=m
CONFIG_NO_SUCH_OPTION=y
CONFIG_PAGE_POOL=y
CONFIG_CRC32=m
# CONFIG_CRC32 is not set
CONFIG_EXT4_FS=y
";
        let final_config =
            "CONFIG_ARM64=y\nCONFIG_CPU_LITTLE_ENDIAN=y\nCONFIG_EXT4_FS=y\nCONFIG_CRC32=y\n";
        insta::assert_snapshot!(check(fragment, final_config, "arm64"), @r#"
        # CONFIG_CRC32 is not set (test.config:7) is y: enabled options select it: EXT4_FS=y
        CONFIG_GVE=m (test.config:2) is not set: missing dependency: GVE `depends on (PCI_MSI && (X86 || CPU_LITTLE_ENDIAN))` (drivers/net/ethernet/google/Kconfig:1) with PCI_MSI=n, X86=n, CPU_LITTLE_ENDIAN=y; PCI_MSI `depends on PCI` (drivers/pci/Kconfig:4) with PCI=n; enable those in a fragment too
        CONFIG_NO_SUCH_OPTION=y (test.config:4) is not set: no Kconfig file of this kernel defines it: check the spelling, or whether this kernel version renamed or removed it
        CONFIG_PAGE_POOL=y (test.config:5) is not set: it has no prompt, so a fragment cannot set it; it is selected by: GVE
        CONFIG_PCI_MSI=m (test.config:3) is not set: it is a bool: it can be built in (=y) but not a module (=m)
        CONFIG_X86_X32_ABI=y (test.config:1) is not set: wrong architecture: defined only for arch/x86
        "#);
    }

    #[test]
    fn crc32_as_module_is_forced_built_in() {
        let final_config = "CONFIG_EXT4_FS=y\nCONFIG_CRC32=y\n";
        insta::assert_snapshot!(check("CONFIG_CRC32=m\nCONFIG_EXT4_FS=y\n", final_config, "x86"), @r#"CONFIG_CRC32=m (test.config:1) is y: built in because a built-in option selects it: EXT4_FS=y"#);
    }

    #[test]
    fn surviving_options_are_not_problems() {
        assert_eq!(
            check(
                "CONFIG_PCI=y\n# CONFIG_PCI_MSI is not set\n",
                "CONFIG_PCI=y\n",
                "x86"
            ),
            ""
        );
    }
}
