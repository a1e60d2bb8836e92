//! The kernel command line: split like the kernel splits it, Hook's keys and `kiln.*` keys
//! parsed into typed structs, and rendered as `/run/kiln/cmdline.env` (shell-sourceable) and
//! `/run/kiln/cmdline.json` for services.
//!
//! *Architecture Invariant*: pure functions of the command-line text; a malformed value is a
//! warning in [`BootParameters::warnings`], never an error: a typo on the command line must
//! not stop the machine from booting into something an operator can reach.

use std::collections::BTreeMap;

use serde::Serialize;

/// One `key[=value]` word of the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandLineParameter {
    /// The part before the first `=` (quotes kept, as the kernel keeps them).
    pub key: String,
    /// The part after the first `=`, with one pair of surrounding quotes removed; `None` for a
    /// bare word.
    pub value: Option<String>,
}

/// Splits a command line exactly like the kernel's `next_arg()` (lib/cmdline.c): words are
/// separated by whitespace outside double quotes, a value's leading `"` and the word's
/// trailing `"` are dropped, and `--` ends the kernel's parameters (what follows is returned
/// separately: the kernel passes it to init as arguments).
pub fn split_kernel_command_line(text: &str) -> (Vec<CommandLineParameter>, Vec<String>) {
    let bytes = text.as_bytes();
    let mut parameters = Vec::new();
    let mut index = 0;
    loop {
        while index < bytes.len() && bytes[index].is_ascii_whitespace() {
            index += 1;
        }
        if index >= bytes.len() {
            return (parameters, Vec::new());
        }
        let mut start = index;
        let mut in_quote = false;
        let mut quoted = false;
        if bytes[start] == b'"' {
            start += 1;
            in_quote = true;
            quoted = true;
        }
        let mut end = start;
        let mut equals = None;
        while end < bytes.len() {
            let byte = bytes[end];
            if byte.is_ascii_whitespace() && !in_quote {
                break;
            }
            if equals.is_none() && byte == b'=' {
                equals = Some(end);
            }
            if byte == b'"' {
                in_quote = !in_quote;
            }
            end += 1;
        }
        index = end;
        // The kernel drops a trailing quote when the word began with one, or when the value
        // began with one.
        let word = &text[start..end];
        let (key, value) = match equals {
            None => {
                let key = if quoted {
                    word.strip_suffix('"').unwrap_or(word)
                } else {
                    word
                };
                (key.to_string(), None)
            }
            Some(equals_at) => {
                let key = &text[start..equals_at];
                let mut value = &text[equals_at + 1..end];
                if let Some(stripped) = value.strip_prefix('"') {
                    value = stripped.strip_suffix('"').unwrap_or(stripped);
                } else if quoted {
                    value = value.strip_suffix('"').unwrap_or(value);
                }
                (key.to_string(), Some(value.to_string()))
            }
        };
        if key == "--" && value.is_none() {
            let rest = text[end..]
                .split_ascii_whitespace()
                .map(str::to_string)
                .collect();
            return (parameters, rest);
        }
        parameters.push(CommandLineParameter { key, value });
    }
}

/// Static addressing from Hook's `ipam=<mac>:<vlan>:<ip>:<mask>:<gw>:<host>:<dns,…>:<search,…>:<ntp,…>`.
/// The MAC address is written with hyphens on the command line (colons separate the fields);
/// it is stored here with colons, lowercase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StaticAddressing {
    /// Interface MAC address (`aa:bb:cc:dd:ee:ff`), empty when not given.
    pub mac_address: String,
    /// VLAN id, when given.
    pub vlan_id: Option<u16>,
    /// IPv4 address.
    pub address: String,
    /// Netmask (dotted quad).
    pub netmask: String,
    /// Default gateway, empty when not given.
    pub gateway: String,
    /// Hostname, empty when not given.
    pub hostname: String,
    /// DNS servers.
    pub dns_servers: Vec<String>,
    /// DNS search domains.
    pub search_domains: Vec<String>,
    /// NTP servers.
    pub ntp_servers: Vec<String>,
}

/// The keys Tinkerbell's Hook reads from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HookParameters {
    /// `grpc_authority=host:port` of the Tinkerbell server.
    pub grpc_authority: Option<String>,
    /// `worker_id=` (usually the MAC address).
    pub worker_id: Option<String>,
    /// `tink_worker_image=` to run.
    pub tink_worker_image: Option<String>,
    /// `docker_registry=` to pull from.
    pub docker_registry: Option<String>,
    /// `registry_username=`.
    pub registry_username: Option<String>,
    /// `registry_password=`.
    pub registry_password: Option<String>,
    /// `tinkerbell_tls=true|false`.
    pub tinkerbell_tls: Option<bool>,
    /// `tinkerbell_insecure_tls=true|false`.
    pub tinkerbell_insecure_tls: Option<bool>,
    /// `syslog_host=`.
    pub syslog_host: Option<String>,
    /// `insecure_registries=a,b`.
    pub insecure_registries: Vec<String>,
    /// `HTTP_PROXY=`.
    pub http_proxy: Option<String>,
    /// `HTTPS_PROXY=`.
    pub https_proxy: Option<String>,
    /// `NO_PROXY=`.
    pub no_proxy: Option<String>,
    /// `vlan_id=` (1-4094).
    pub vlan_id: Option<u16>,
    /// `hw_addr=`.
    pub hw_addr: Option<String>,
    /// `interface=`.
    pub interface: Option<String>,
    /// `ipam=` static addressing.
    pub ipam: Option<StaticAddressing>,
}

/// The `kiln.*` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KilnParameters {
    /// `kiln.debug`: print `kiln: debug: ...` lines.
    pub debug: bool,
    /// `kiln.services.disable=a,b`: services not started.
    pub services_disable: Vec<String>,
    /// `kiln.onboot.disable=a,b`: onboot steps skipped.
    pub onboot_disable: Vec<String>,
    /// Any other `kiln.KEY=VALUE`, for modules to read (key without the `kiln.` prefix).
    pub other: BTreeMap<String, String>,
}

/// Everything kiln-init understands from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BootParameters {
    /// Hook's keys.
    pub hook: HookParameters,
    /// `kiln.*` keys.
    pub kiln: KilnParameters,
    /// Every word, in order, as split (including the ones above), for services that read
    /// their own keys.
    pub all: Vec<CommandLineParameter>,
    /// Words after `--`.
    pub init_arguments: Vec<String>,
    /// Values that could not be understood; printed as `kiln: warning: ...`.
    pub warnings: Vec<String>,
}

fn parse_boolean(key: &str, value: Option<&str>, warnings: &mut Vec<String>) -> Option<bool> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("1") | Some("true") | Some("yes") | Some("on") => Some(true),
        Some("0") | Some("false") | Some("no") | Some("off") => Some(false),
        Some(other) => {
            warnings.push(format!("ignoring {key}={other}: expected true or false"));
            None
        }
    }
}

fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_vlan_id(key: &str, value: &str, warnings: &mut Vec<String>) -> Option<u16> {
    match value.parse::<u16>() {
        Ok(id) if (1..=4094).contains(&id) => Some(id),
        _ => {
            warnings.push(format!(
                "ignoring {key}={value}: a VLAN id is a number from 1 to 4094"
            ));
            None
        }
    }
}

/// Parses Hook's `ipam=` value.
pub fn parse_static_addressing(value: &str) -> Result<StaticAddressing, String> {
    let fields: Vec<&str> = value.split(':').collect();
    if fields.len() != 9 {
        return Err(format!(
            "ignoring ipam={value}: expected 9 colon-separated fields \
             <mac>:<vlan>:<ip>:<mask>:<gw>:<host>:<dns,…>:<search,…>:<ntp,…> (MAC with hyphens), found {}",
            fields.len()
        ));
    }
    let mac_address = fields[0].replace('-', ":").to_ascii_lowercase();
    if !mac_address.is_empty() {
        let octets: Vec<&str> = mac_address.split(':').collect();
        let valid = octets.len() == 6
            && octets
                .iter()
                .all(|octet| octet.len() == 2 && octet.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid {
            return Err(format!(
                "ignoring ipam={value}: `{}` is not a MAC address like de-ad-be-ef-fe-ed",
                fields[0]
            ));
        }
    }
    let vlan_id = if fields[1].is_empty() {
        None
    } else {
        let mut warnings = Vec::new();
        match parse_vlan_id("ipam vlan", fields[1], &mut warnings) {
            Some(id) => Some(id),
            None => return Err(format!("ignoring ipam={value}: {}", warnings.join("; "))),
        }
    };
    let address = fields[2].to_string();
    let netmask = fields[3].to_string();
    if address.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(format!(
            "ignoring ipam={value}: `{address}` is not an IPv4 address"
        ));
    }
    if netmask.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(format!(
            "ignoring ipam={value}: netmask `{netmask}` is not a dotted quad like 255.255.255.0"
        ));
    }
    Ok(StaticAddressing {
        mac_address,
        vlan_id,
        address,
        netmask,
        gateway: fields[4].to_string(),
        hostname: fields[5].to_string(),
        dns_servers: parse_list(fields[6]),
        search_domains: parse_list(fields[7]),
        ntp_servers: parse_list(fields[8]),
    })
}

/// Parses the whole command line. The last occurrence of a key wins, as for the kernel's own
/// parameters.
pub fn parse_boot_parameters(text: &str) -> BootParameters {
    let (all, init_arguments) = split_kernel_command_line(text);
    let mut hook = HookParameters::default();
    let mut kiln = KilnParameters::default();
    let mut warnings = Vec::new();
    for parameter in &all {
        let key = parameter.key.as_str();
        let value = parameter.value.as_deref();
        let text_value = || value.map(str::to_string);
        match key {
            "grpc_authority" => hook.grpc_authority = text_value(),
            "worker_id" => hook.worker_id = text_value(),
            "tink_worker_image" => hook.tink_worker_image = text_value(),
            "docker_registry" => hook.docker_registry = text_value(),
            "registry_username" => hook.registry_username = text_value(),
            "registry_password" => hook.registry_password = text_value(),
            "tinkerbell_tls" => hook.tinkerbell_tls = parse_boolean(key, value, &mut warnings),
            "tinkerbell_insecure_tls" => {
                hook.tinkerbell_insecure_tls = parse_boolean(key, value, &mut warnings)
            }
            "syslog_host" => hook.syslog_host = text_value(),
            "insecure_registries" => hook.insecure_registries = parse_list(value.unwrap_or("")),
            "HTTP_PROXY" => hook.http_proxy = text_value(),
            "HTTPS_PROXY" => hook.https_proxy = text_value(),
            "NO_PROXY" => hook.no_proxy = text_value(),
            "vlan_id" => match value {
                Some(v) if !v.is_empty() => hook.vlan_id = parse_vlan_id(key, v, &mut warnings),
                _ => hook.vlan_id = None,
            },
            "hw_addr" => hook.hw_addr = text_value(),
            "interface" => hook.interface = text_value(),
            "ipam" => match value {
                Some(v) if !v.is_empty() => match parse_static_addressing(v) {
                    Ok(addressing) => hook.ipam = Some(addressing),
                    Err(warning) => warnings.push(warning),
                },
                _ => hook.ipam = None,
            },
            "kiln.debug" => {
                if let Some(debug) = parse_boolean(key, value, &mut warnings) {
                    kiln.debug = debug;
                }
            }
            "kiln.services.disable" => kiln.services_disable = parse_list(value.unwrap_or("")),
            "kiln.onboot.disable" => kiln.onboot_disable = parse_list(value.unwrap_or("")),
            _ => {
                if let Some(rest) = key.strip_prefix("kiln.") {
                    kiln.other
                        .insert(rest.to_string(), value.unwrap_or("").to_string());
                }
            }
        }
    }
    BootParameters {
        hook,
        kiln,
        all,
        init_arguments,
        warnings,
    }
}

/// Quotes a value for POSIX `sh`: single quotes, with `'` written as `'\''`.
pub fn shell_quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for character in value.chars() {
        if character == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(character);
        }
    }
    quoted.push('\'');
    quoted
}

/// Turns `kiln.foo-bar.baz` into the shell variable name `kiln_foo_bar_baz`; `None` when
/// nothing usable is left.
fn shell_variable_name(key: &str) -> Option<String> {
    let name: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let first = name.chars().next()?;
    if first.is_ascii_digit() {
        return None;
    }
    Some(name)
}

/// Renders `/run/kiln/cmdline.env`: one `name='value'` line per known key that is set, names
/// as on the command line with `.` and `-` turned into `_` (Hook's scripts keep working:
/// `grpc_authority`, `HTTP_PROXY`, ...). Lists are comma-joined. Sorted by name, so the file
/// is stable. Source it with `. /run/kiln/cmdline.env`.
pub fn render_environment_file(parameters: &BootParameters) -> String {
    let mut variables: BTreeMap<String, String> = BTreeMap::new();
    let hook = &parameters.hook;
    let mut set = |name: &str, value: &Option<String>| {
        if let Some(value) = value {
            variables.insert(name.to_string(), value.clone());
        }
    };
    set("grpc_authority", &hook.grpc_authority);
    set("worker_id", &hook.worker_id);
    set("tink_worker_image", &hook.tink_worker_image);
    set("docker_registry", &hook.docker_registry);
    set("registry_username", &hook.registry_username);
    set("registry_password", &hook.registry_password);
    set("syslog_host", &hook.syslog_host);
    set("HTTP_PROXY", &hook.http_proxy);
    set("HTTPS_PROXY", &hook.https_proxy);
    set("NO_PROXY", &hook.no_proxy);
    set("hw_addr", &hook.hw_addr);
    set("interface", &hook.interface);
    let boolean = |value: Option<bool>| value.map(|b| b.to_string());
    set("tinkerbell_tls", &boolean(hook.tinkerbell_tls));
    set(
        "tinkerbell_insecure_tls",
        &boolean(hook.tinkerbell_insecure_tls),
    );
    set("vlan_id", &hook.vlan_id.map(|id| id.to_string()));
    if !hook.insecure_registries.is_empty() {
        variables.insert(
            "insecure_registries".to_string(),
            hook.insecure_registries.join(","),
        );
    }
    if let Some(ipam) = &hook.ipam {
        let fields = [
            ("ipam_mac_address", ipam.mac_address.clone()),
            (
                "ipam_vlan_id",
                ipam.vlan_id.map(|id| id.to_string()).unwrap_or_default(),
            ),
            ("ipam_address", ipam.address.clone()),
            ("ipam_netmask", ipam.netmask.clone()),
            ("ipam_gateway", ipam.gateway.clone()),
            ("ipam_hostname", ipam.hostname.clone()),
            ("ipam_dns_servers", ipam.dns_servers.join(",")),
            ("ipam_search_domains", ipam.search_domains.join(",")),
            ("ipam_ntp_servers", ipam.ntp_servers.join(",")),
        ];
        for (name, value) in fields {
            variables.insert(name.to_string(), value);
        }
    }
    let kiln = &parameters.kiln;
    variables.insert(
        "kiln_debug".to_string(),
        if kiln.debug { "1" } else { "0" }.to_string(),
    );
    if !kiln.services_disable.is_empty() {
        variables.insert(
            "kiln_services_disable".to_string(),
            kiln.services_disable.join(","),
        );
    }
    if !kiln.onboot_disable.is_empty() {
        variables.insert(
            "kiln_onboot_disable".to_string(),
            kiln.onboot_disable.join(","),
        );
    }
    for (key, value) in &kiln.other {
        if let Some(name) = shell_variable_name(&format!("kiln.{key}")) {
            variables.entry(name).or_insert_with(|| value.clone());
        }
    }
    let mut file = String::from(
        "# Written by kiln-init from /proc/cmdline; source with `. /run/kiln/cmdline.env`.\n",
    );
    for (name, value) in variables {
        file.push_str(&name);
        file.push('=');
        file.push_str(&shell_quote(&value));
        file.push('\n');
    }
    file
}

/// Renders `/run/kiln/cmdline.json` (pretty, with a trailing newline).
pub fn render_json_file(parameters: &BootParameters) -> String {
    // Serialising plain structs of strings, numbers and maps with string keys cannot fail.
    let mut text = serde_json::to_string_pretty(parameters).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_split(input: &str) -> String {
        let (parameters, rest) = split_kernel_command_line(input);
        let mut out = String::new();
        for parameter in parameters {
            match parameter.value {
                Some(value) => out.push_str(&format!("[{}]=[{}]\n", parameter.key, value)),
                None => out.push_str(&format!("[{}]\n", parameter.key)),
            }
        }
        if !rest.is_empty() {
            out.push_str(&format!("init arguments: {rest:?}\n"));
        }
        out
    }

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(check_split("a b=c"), "[a]\n[b]=[c]\n");
        assert_eq!(check_split("  key=\"a b\"  x"), "[key]=[a b]\n[x]\n");
        assert_eq!(check_split("\"key=a b\""), "[key]=[a b]\n");
        assert_eq!(check_split("\"bare word\""), "[bare word]\n");
        assert_eq!(check_split("k=a\"b c\"d e"), "[k]=[a\"b c\"d]\n[e]\n");
        assert_eq!(
            check_split("k=\"unterminated value"),
            "[k]=[unterminated value]\n"
        );
        assert_eq!(check_split("a=b=c"), "[a]=[b=c]\n");
        assert_eq!(
            check_split("a -- single x=y"),
            "[a]\ninit arguments: [\"single\", \"x=y\"]\n"
        );
        assert_eq!(check_split("console=ttyS0\n"), "[console]=[ttyS0]\n");
        assert_eq!(check_split(""), "");
    }

    #[test]
    fn shell_quote_survives_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(reboot) `x`"), "'$(reboot) `x`'");
    }

    #[test]
    fn environment_file_is_sourceable_by_sh() {
        let parameters = parse_boot_parameters(
            "registry_password=\"p'a ss$HOME\" grpc_authority=tink:42113 kiln.my-opt=\"x y\"",
        );
        let file = render_environment_file(&parameters);
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cmdline.env");
        std::fs::write(&path, file).unwrap();
        let output = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                ". {}; printf '%s|%s|%s' \"$registry_password\" \"$grpc_authority\" \"$kiln_my_opt\"",
                path.display()
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "p'a ss$HOME|tink:42113|x y"
        );
    }

    #[test]
    fn ipam_errors_are_warnings() {
        let parameters = parse_boot_parameters("ipam=de-ad:1:2 vlan_id=9000 tinkerbell_tls=maybe");
        insta::assert_snapshot!(parameters.warnings.join("\n"), @r"
        ignoring ipam=de-ad:1:2: expected 9 colon-separated fields <mac>:<vlan>:<ip>:<mask>:<gw>:<host>:<dns,…>:<search,…>:<ntp,…> (MAC with hyphens), found 3
        ignoring vlan_id=9000: a VLAN id is a number from 1 to 4094
        ignoring tinkerbell_tls=maybe: expected true or false
        ");
    }

    #[test]
    fn hook_command_line_snapshot() {
        let text = "console=tty0 console=ttyS0,115200 initrd=initramfs-x86_64 \
            grpc_authority=tinkerbell.example:42113 worker_id=de:ad:be:ef:fe:ed \
            tink_worker_image=quay.io/tinkerbell/tink-worker:v0.12 \
            docker_registry=registry.example:5000 registry_username=admin \
            registry_password=\"s3cr3t with space\" tinkerbell_tls=false \
            tinkerbell_insecure_tls=true syslog_host=10.0.0.1 \
            insecure_registries=registry.example:5000,10.0.0.2:5000 \
            HTTP_PROXY=http://proxy:3128 HTTPS_PROXY=http://proxy:3128 NO_PROXY=10.0.0.0/8,.local \
            vlan_id=100 hw_addr=de:ad:be:ef:fe:ed interface=eth1 \
            ipam=de-ad-be-ef-fe-ed:100:192.168.2.193:255.255.255.0:192.168.2.1:myserver:1.1.1.1,8.8.8.8:example.com:132.163.97.1,132.163.96.1 \
            kiln.debug kiln.services.disable=sshd,ntp kiln.dhcp.timeout=30 -- single";
        let parameters = parse_boot_parameters(text);
        insta::assert_snapshot!(
            "hook_command_line_environment",
            render_environment_file(&parameters)
        );
        insta::assert_json_snapshot!("hook_command_line_typed", &parameters.hook);
        insta::assert_json_snapshot!("hook_command_line_kiln", &parameters.kiln);
        assert_eq!(parameters.init_arguments, vec!["single".to_string()]);
        assert!(parameters.warnings.is_empty());
    }

    #[test]
    fn minimal_command_line_snapshot() {
        let parameters = parse_boot_parameters("console=ttyS0 quiet\n");
        insta::assert_snapshot!(
            "minimal_command_line_environment",
            render_environment_file(&parameters)
        );
    }
}
