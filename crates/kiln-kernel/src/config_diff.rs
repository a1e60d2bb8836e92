//! The difference between two `.config`s as a fragment: what `cargo xtask kernel
//! menuconfig` writes back after the user edits the merged configuration. Pure.

use crate::fragment::{parse_config_map, render, OptionValue};

/// Lines that turn `before` into `after` when merged onto it: every symbol whose value
/// changed, appeared (set) or disappeared (written as `is not set`), sorted by symbol so a
/// reviewer can compare runs. Symbols absent in one and `is not set` in the other are equal.
pub fn fragment_from_difference(before: &str, after: &str) -> String {
    let before = parse_config_map(before);
    let after = parse_config_map(after);
    let mut symbols: Vec<&String> = before.keys().chain(after.keys()).collect();
    symbols.sort();
    symbols.dedup();
    let mut fragment = String::new();
    for symbol in symbols {
        let old = before.get(symbol).unwrap_or(&OptionValue::NotSet);
        let new = after.get(symbol).unwrap_or(&OptionValue::NotSet);
        if old != new {
            fragment.push_str(&render(symbol, new));
            fragment.push('\n');
        }
    }
    fragment
}

#[cfg(test)]
mod tests {
    use super::fragment_from_difference;

    #[test]
    fn writes_changed_added_and_removed_symbols() {
        let before = "\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_NET=y
CONFIG_E1000=y
# CONFIG_IGB is not set
CONFIG_LOCALVERSION=\"-kiln\"
CONFIG_NR_CPUS=64
CONFIG_OLD=m
";
        let after = "\
CONFIG_NET=y
CONFIG_E1000=m
CONFIG_IGB=m
CONFIG_LOCALVERSION=\"-kiln-site\"
CONFIG_NR_CPUS=64
# CONFIG_OLD is not set
CONFIG_NEW_DEPENDENCY=y
";
        insta::assert_snapshot!(fragment_from_difference(before, after), @r#"
        CONFIG_E1000=m
        CONFIG_IGB=m
        CONFIG_LOCALVERSION="-kiln-site"
        CONFIG_NEW_DEPENDENCY=y
        # CONFIG_OLD is not set
        "#);
    }

    #[test]
    fn identical_configs_give_an_empty_fragment() {
        assert_eq!(
            fragment_from_difference("CONFIG_A=y\n# CONFIG_B is not set\n", "CONFIG_A=y\n"),
            ""
        );
    }
}
