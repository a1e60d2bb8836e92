#!/bin/sh
# The xtask's kernel config steps, for the Nix kernel derivation (nix/kernel.nix):
#
#   kernel-config.sh merge BASE_CONFIG FRAGMENT...   merged config on stdout
#   kernel-config.sh check FINAL_CONFIG FRAGMENT...  exit 1 naming every requested
#                                                    option olddefconfig dropped
#
# Why a script and not the xtask itself: the kernel derivations must not depend on the
# whole Rust workspace (any Rust change would then rebuild every kernel). Why it stays
# the same as the xtask: it is a line-for-line port of `merge_fragments`,
# `requested_options` and `verify_options` in crates/kiln-kernel/src/{fragment,verify}.rs,
# and tests/nix_flake.rs runs both on the same inputs and compares the bytes.
#
# FRAGMENT arguments are `NAME=PATH`: NAME is the name the xtask uses in messages and in
# the `# kiln: merged from NAME` marker (`common.config`, `arch/x86_64.config`, ...).
set -eu

usage() {
    echo "usage: kernel-config.sh merge BASE_CONFIG NAME=FRAGMENT... | check FINAL_CONFIG NAME=FRAGMENT..." >&2
    exit 2
}

[ $# -ge 2 ] || usage
mode=$1
config=$2
shift 2

# One awk program for both modes; the config path is a variable, fragments are arguments.
exec awk -v mode="$mode" -v config_path="$config" '
function trim(text) { sub(/^[ \t\r\n\f\v]+/, "", text); sub(/[ \t\r\n\f\v]+$/, "", text); return text }
function is_symbol(text) { return text ~ /^[A-Za-z0-9_]+$/ }
function is_value(text) {
    if (substr(text, 1, 1) == "\"") return length(text) >= 2 && substr(text, length(text), 1) == "\""
    return text != "" && text !~ /[ \t\r\n\f\v]/
}
# Sets PARSED_KIND to "assign", "skip" or "error"; PARSED_SYMBOL / PARSED_VALUE
# ("n" means `is not set`, as `OptionValue::as_config_text`).
function parse(raw,    line, rest, symbol, eq) {
    line = trim(raw)
    PARSED_KIND = "skip"
    if (line == "") return
    if (substr(line, 1, 9) == "# CONFIG_") {
        rest = substr(line, 10)
        if (length(rest) > 11 && substr(rest, length(rest) - 10) == " is not set") {
            symbol = substr(rest, 1, length(rest) - 11)
            if (is_symbol(symbol)) { PARSED_KIND = "assign"; PARSED_SYMBOL = symbol; PARSED_VALUE = "\001notset"; return }
        }
    }
    if (substr(line, 1, 1) == "#") return
    if (substr(line, 1, 7) == "CONFIG_") {
        rest = substr(line, 8)
        eq = index(rest, "=")
        if (eq > 0) {
            symbol = substr(rest, 1, eq - 1)
            if (is_symbol(symbol) && is_value(substr(rest, eq + 1))) {
                PARSED_KIND = "assign"; PARSED_SYMBOL = symbol; PARSED_VALUE = substr(rest, eq + 1); return
            }
        }
    }
    PARSED_KIND = "error"
}
function render(symbol, value) {
    if (value == "\001notset") return "# CONFIG_" symbol " is not set"
    return "CONFIG_" symbol "=" value
}
function shown(value) { return value == "\001notset" ? "not set" : value }
BEGIN {
    if (mode != "merge" && mode != "check") { print "kernel-config.sh: unknown mode " mode > "/dev/stderr"; exit 2 }
    # Everything is read here with getline rather than by the awk main loop, so an empty
    # file (a fragment with only comments removed, an empty base) is still a file.
    config_count = 0
    while ((status = (getline line < config_path)) > 0) config_lines[++config_count] = line
    if (status < 0) { print "kernel-config.sh: cannot read " config_path > "/dev/stderr"; exit 2 }
    close(config_path)
    fragment_count = 0
    for (argument = 1; argument < ARGC; argument++) {
        split_at = index(ARGV[argument], "=")
        if (split_at == 0) { print "kernel-config.sh: fragment argument `" ARGV[argument] "` is not NAME=PATH" > "/dev/stderr"; exit 2 }
        f = ++fragment_count
        fragment_name[f] = substr(ARGV[argument], 1, split_at - 1)
        path = substr(ARGV[argument], split_at + 1)
        assignment_count[f] = 0
        line_number = 0
        while ((status = (getline line < path)) > 0) {
            line_number++
            parse(line)
            if (PARSED_KIND == "error") {
                printf "%s:%d: `%s` is neither `CONFIG_NAME=value`, `# CONFIG_NAME is not set` nor a comment; fix the line (comments go on their own line, starting with `#`)\n", fragment_name[f], line_number, line > "/dev/stderr"
                exit 1
            }
            if (PARSED_KIND == "assign") {
                count = ++assignment_count[f]
                assignment_symbol[f, count] = PARSED_SYMBOL
                assignment_value[f, count] = PARSED_VALUE
                assignment_line[f, count] = line_number
            }
        }
        if (status < 0) { print "kernel-config.sh: cannot read kernel config fragment " path > "/dev/stderr"; exit 2 }
        close(path)
    }
    ARGC = 1
    finish()
}
function finish(    i, f, a, kept, line_count, symbol, actual, problems) {
    if (mode == "merge") {
        # merge_config.sh -m semantics, as kiln-kernel::fragment::merge_fragments.
        line_count = 0
        for (i = 1; i <= config_count; i++) lines[++line_count] = config_lines[i]
        for (f = 1; f <= fragment_count; f++) {
            delete last_index
            for (a = 1; a <= assignment_count[f]; a++) last_index[assignment_symbol[f, a]] = a
            kept = 0
            for (i = 1; i <= line_count; i++) {
                parse(lines[i])
                if (PARSED_KIND == "assign" && (PARSED_SYMBOL in last_index)) continue
                kept_lines[++kept] = lines[i]
            }
            for (i = 1; i <= kept; i++) lines[i] = kept_lines[i]
            line_count = kept
            lines[++line_count] = "# kiln: merged from " fragment_name[f]
            for (a = 1; a <= assignment_count[f]; a++)
                if (last_index[assignment_symbol[f, a]] == a) lines[++line_count] = render(assignment_symbol[f, a], assignment_value[f, a])
        }
        for (i = 1; i <= line_count; i++) print lines[i]
        exit 0
    }
    # check: every requested option (the last fragment to set it wins) must hold its
    # requested value in the final config, where an absent symbol means `not set`.
    for (i = 1; i <= config_count; i++) {
        parse(config_lines[i])
        if (PARSED_KIND == "assign") final_value[PARSED_SYMBOL] = PARSED_VALUE
    }
    for (f = 1; f <= fragment_count; f++)
        for (a = 1; a <= assignment_count[f]; a++) {
            symbol = assignment_symbol[f, a]
            requested_value[symbol] = assignment_value[f, a]
            requested_where[symbol] = fragment_name[f] ":" assignment_line[f, a]
        }
    problems = 0
    for (symbol in requested_value) {
        actual = (symbol in final_value) ? final_value[symbol] : "\001notset"
        if (actual == requested_value[symbol]) continue
        problems++
        printf "  - %s (%s) is %s\n", render(symbol, requested_value[symbol]), requested_where[symbol], shown(actual) | "sort"
    }
    close("sort")
    if (problems > 0) {
        printf "%d requested kernel option(s) did not survive `make olddefconfig`; `cargo xtask kernel` with the same arch and flavor explains each one from the Kconfig files\n", problems > "/dev/stderr"
        exit 1
    }
}
' "$@"
