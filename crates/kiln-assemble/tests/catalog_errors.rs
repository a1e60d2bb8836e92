//! Bad catalog input, each with its exact message: what is wrong, where, and what to do.
//! Every case goes through the same functions `cargo xtask image` calls, on a small
//! catalog written into a temporary directory (printed as `<root>`).

use std::fs;
use std::path::Path;

use kiln_assemble::build::{add_files, check_kernel_config};
use kiln_compose::ComposedTree;
use kiln_image::ImageArch;
use kiln_spec::Catalog;

struct Fixture {
    root: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let fixture = Fixture {
            root: tempfile::tempdir().unwrap(),
        };
        fixture.module("base", "description: d\nkind: base\n");
        fixture
    }

    fn module(&self, name: &str, text: &str) -> &Self {
        let directory = self.root.path().join("modules").join(name);
        fs::create_dir_all(&directory).unwrap();
        fs::write(directory.join("module.yaml"), text).unwrap();
        self
    }

    fn file(&self, module: &str, path: &str, contents: &str) -> &Self {
        let path = self
            .root
            .path()
            .join("modules")
            .join(module)
            .join("files")
            .join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
        self
    }

    fn profile(&self, name: &str, text: &str) -> &Self {
        fs::create_dir_all(self.root.path().join("profiles")).unwrap();
        fs::write(
            self.root
                .path()
                .join("profiles")
                .join(format!("{name}.yaml")),
            text,
        )
        .unwrap();
        self
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// The error of loading the catalog and planning `profile`, with the root redacted.
    fn plan_error(&self, profile: &str) -> String {
        let error = match Catalog::load(self.path()) {
            Err(error) => error.to_string(),
            Ok(catalog) => match kiln_assemble::plan(&catalog, profile, ImageArch::X86_64) {
                Err(error) => error.to_string(),
                Ok(_) => panic!("profile `{profile}` planned without an error"),
            },
        };
        self.redact(&error)
    }

    fn redact(&self, text: &str) -> String {
        text.replace(&self.path().display().to_string(), "<root>")
    }
}

#[test]
fn unknown_key_names_file_line_and_column() {
    let fixture = Fixture::new();
    fixture
        .module(
            "dhcp",
            "description: d\nkind: onboot\ncomand: [/bin/true]\n",
        )
        .profile("p", "modules: [base, dhcp]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"<root>/modules/dhcp/module.yaml:3:1: unknown field `comand`, expected one of `description`, `kind`, `sources`, `command`, `env`, `working_dir`, `user`, `capabilities`, `namespaces`, `restart`, `backoff`, `timeout`, `fatal`, `after`, `requires`, `cmdline`, `kernel`, `options`, `generate`, `skip_dependencies`, `needs_pivot_root`");
}

#[test]
fn unknown_profile_key_names_file_line_and_column() {
    let fixture = Fixture::new();
    fixture.profile("p", "modules: [base]\nkernal: {flavor: virt}\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"<root>/profiles/p.yaml:2:1: unknown field `kernal`, expected one of `description`, `extends`, `modules`, `remove`, `options`, `kernel`, `cmdline`, `output_name`, `ram_budget_mib`, `prune`, `embed_images`, `compression`");
}

#[test]
fn missing_module_names_the_profile_and_the_expected_file() {
    let fixture = Fixture::new();
    fixture.profile("p", "modules: [base, sshd]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"<root>/profiles/p.yaml: profile `p` names module `sshd`, but <root>/modules/sshd/module.yaml does not exist: add the module or remove it from the profile");
}

#[test]
fn dependency_cycle_is_named_in_order() {
    let fixture = Fixture::new();
    fixture
        .module(
            "a",
            "description: d\nkind: onboot\ncommand: [/bin/true]\nafter: [c]\n",
        )
        .module(
            "b",
            "description: d\nkind: onboot\ncommand: [/bin/true]\nafter: [a]\n",
        )
        .module(
            "c",
            "description: d\nkind: onboot\ncommand: [/bin/true]\nrequires: [b]\n",
        )
        .profile("p", "modules: [base, a, b, c]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"`after:`/`requires:` of profile `p`'s modules make a cycle: a after c after b after a; remove one of these constraints");
}

#[test]
fn missing_requirement_says_which_profile_to_fix() {
    let fixture = Fixture::new();
    fixture
        .module(
            "sshd",
            "description: d\nkind: service\ncommand: [/bin/sshd]\nrequires: [base, syslog]\n",
        )
        .module(
            "syslog",
            "description: d\nkind: service\ncommand: [/bin/syslogd]\n",
        )
        .profile("p", "modules: [base, sshd]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"module `sshd` requires module `syslog`, which profile `p` does not include: add `syslog` to `modules:` in <root>/profiles/p.yaml");
}

#[test]
fn extends_cycle_is_an_error() {
    let fixture = Fixture::new();
    fixture
        .profile("a", "extends: b\nmodules: [base]\n")
        .profile("b", "extends: a\n");
    insta::assert_snapshot!(fixture.plan_error("a"), @"<root>/profiles/b.yaml: `extends` makes a cycle: a -> b -> a; remove one of the `extends:`");
}

#[test]
fn required_option_without_value() {
    let fixture = Fixture::new();
    fixture
        .module("agent", "description: d\nkind: service\ncommand: [/bin/agent, --server, '${server}']\noptions:\n  server: {description: the provisioning server}\n")
        .profile("p", "modules: [base, agent]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"module `agent` needs option `server` (the provisioning server): set it in profile `p` as `options: {agent: {server: ...}}`");
}

#[test]
fn options_are_substituted_into_the_init_config() {
    let fixture = Fixture::new();
    fixture
        .module("agent", "description: d\nkind: service\ncommand: [/bin/agent, --port, '${port}']\nenv: {AGENT_PORT: '${port}'}\noptions:\n  port: {description: where it listens, default: 42}\n")
        .profile("p", "modules: [base, agent]\noptions: {agent: {port: 4242}}\n");
    let catalog = Catalog::load(fixture.path()).unwrap();
    let plan = kiln_assemble::plan(&catalog, "p", ImageArch::X86_64).unwrap();
    let service = &plan.init_config.services[0];
    assert_eq!(service.argv, ["/bin/agent", "--port", "4242"]);
    assert_eq!(service.env["AGENT_PORT"], "4242");
    assert_eq!(
        plan.init_config.stop_grace_ms, 5_000,
        "services get a graceful stop at shutdown"
    );
}

#[test]
fn path_conflict_names_both_modules_and_the_path() {
    let fixture = Fixture::new();
    fixture
        .file("base", "etc/motd", "hello\n")
        .file("branding", "etc/motd", "welcome\n");
    let mut tree = ComposedTree::new();
    add_files(
        &mut tree,
        "base",
        &fixture.path().join("modules/base/files"),
    )
    .unwrap();
    let error = add_files(
        &mut tree,
        "branding",
        &fixture.path().join("modules/branding/files"),
    )
    .unwrap_err();
    insta::assert_snapshot!(fixture.redact(&error.to_string()), @"modules `base` and `branding` both provide `etc/motd` with different contents; remove it from one of them, or whiteout it in `branding`");
}

#[test]
fn missing_kernel_option_names_module_option_and_kernel() {
    let fixture = Fixture::new();
    fixture
        .module("dhcp", "description: d\nkind: onboot\ncommand: [/bin/dhcp]\nkernel:\n  options: [CONFIG_PACKET, CONFIG_VLAN_8021Q, CONFIG_UNIX=y]\n")
        .profile("p", "modules: [base, dhcp]\ncompression: lz4\n");
    let catalog = Catalog::load(fixture.path()).unwrap();
    let plan = kiln_assemble::plan(&catalog, "p", ImageArch::X86_64).unwrap();
    let config =
        "CONFIG_PACKET=m\n# CONFIG_VLAN_8021Q is not set\nCONFIG_UNIX=m\nCONFIG_RD_ZSTD=y\n";
    let error = check_kernel_config(&plan, config, "6.1.192-kiln", "flavor virt").unwrap_err();
    insta::assert_snapshot!(error.to_string(), @r"
    the kernel 6.1.192-kiln (flavor virt) lacks what the profile's modules need:
      profile `p` (compression: lz4) needs CONFIG_RD_LZ4=y but the kernel has it unset
      module `dhcp` needs CONFIG_VLAN_8021Q=y or m but the kernel has it unset
      module `dhcp` needs CONFIG_UNIX=y but the kernel has CONFIG_UNIX=m
    add the options to a fragment under kernel-configs/ (then `cargo xtask kernel` rebuilds), or drop the module
    ");
}

#[test]
fn onboot_order_follows_after_and_keeps_profile_order_otherwise() {
    let fixture = Fixture::new();
    fixture
        .module(
            "dhcp",
            "description: d\nkind: onboot\ncommand: [/bin/dhcp]\nafter: [kmod]\n",
        )
        .module(
            "kmod",
            "description: d\nkind: onboot\ncommand: [/bin/kmod]\n",
        )
        .module(
            "sysctl",
            "description: d\nkind: onboot\ncommand: [/bin/sysctl]\n",
        )
        .profile("p", "modules: [base, dhcp, sysctl, kmod]\n");
    let catalog = Catalog::load(fixture.path()).unwrap();
    let plan = kiln_assemble::plan(&catalog, "p", ImageArch::X86_64).unwrap();
    let names: Vec<&str> = plan
        .init_config
        .onboot
        .iter()
        .map(|step| step.name.as_str())
        .collect();
    assert_eq!(names, ["sysctl", "kmod", "dhcp"]);
}

#[test]
fn onboot_steps_wait_only_for_the_steps_they_come_after() {
    let fixture = Fixture::new();
    fixture
        // A step-less module between two steps: `late` waits for `early` through it.
        .module("glue", "description: d\nkind: base\nrequires: [early]\n")
        .module(
            "early",
            "description: d\nkind: onboot\ncommand: [/bin/early]\nrequires: [base]\n",
        )
        .module(
            "alone",
            "description: d\nkind: onboot\ncommand: [/bin/alone]\nrequires: [base]\n",
        )
        .module(
            "late",
            "description: d\nkind: onboot\ncommand: [/bin/late]\nafter: [glue, alone]\n",
        )
        .module(
            "goodbye",
            "description: d\nkind: shutdown\ncommand: [/bin/goodbye]\nafter: [early]\n",
        )
        .profile("p", "modules: [base, glue, early, alone, late, goodbye]\n");
    let catalog = Catalog::load(fixture.path()).unwrap();
    let plan = kiln_assemble::plan(&catalog, "p", ImageArch::X86_64).unwrap();
    let steps: Vec<(&str, Option<Vec<String>>)> = plan
        .init_config
        .onboot
        .iter()
        .map(|step| (step.name.as_str(), step.after.clone()))
        .collect();
    assert_eq!(
        steps,
        [
            ("early", Some(vec![])),
            ("alone", Some(vec![])),
            ("late", Some(vec!["alone".to_string(), "early".to_string()])),
        ]
    );
    // Shutdown steps keep running one after another.
    assert_eq!(plan.init_config.shutdown[0].after, None);
}

#[test]
fn a_module_needing_pivot_root_moves_the_root_off_rootfs() {
    let fixture = Fixture::new();
    fixture
        .module(
            "runtime",
            "description: d\nkind: service\ncommand: [/bin/containerd]\nneeds_pivot_root: true\n",
        )
        .profile("with", "modules: [base, runtime]\n")
        .profile("without", "modules: [base]\n");
    let catalog = Catalog::load(fixture.path()).unwrap();
    assert!(
        kiln_assemble::plan(&catalog, "with", ImageArch::X86_64)
            .unwrap()
            .init_config
            .root
            .move_off_rootfs
    );
    assert!(
        !kiln_assemble::plan(&catalog, "without", ImageArch::X86_64)
            .unwrap()
            .init_config
            .root
            .move_off_rootfs
    );
}

#[test]
fn unknown_capability_names_file_line_and_column() {
    let fixture = Fixture::new();
    fixture
        .module(
            "web",
            "description: d\nkind: service\ncommand: [/bin/httpd]\ncapabilities: [CAP_NET_BIND_SERVICE, CAP_NET_BIND]\n",
        )
        .profile("p", "modules: [base, web]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"<root>/modules/web/module.yaml:4:38: capabilities[1]: unknown variant `CAP_NET_BIND`, expected one of `CAP_CHOWN`, `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`, `CAP_FOWNER`, `CAP_FSETID`, `CAP_KILL`, `CAP_SETGID`, `CAP_SETUID`, `CAP_SETPCAP`, `CAP_LINUX_IMMUTABLE`, `CAP_NET_BIND_SERVICE`, `CAP_NET_BROADCAST`, `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_IPC_LOCK`, `CAP_IPC_OWNER`, `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_SYS_CHROOT`, `CAP_SYS_PTRACE`, `CAP_SYS_PACCT`, `CAP_SYS_ADMIN`, `CAP_SYS_BOOT`, `CAP_SYS_NICE`, `CAP_SYS_RESOURCE`, `CAP_SYS_TIME`, `CAP_SYS_TTY_CONFIG`, `CAP_MKNOD`, `CAP_LEASE`, `CAP_AUDIT_WRITE`, `CAP_AUDIT_CONTROL`, `CAP_SETFCAP`, `CAP_MAC_OVERRIDE`, `CAP_MAC_ADMIN`, `CAP_SYSLOG`, `CAP_WAKE_ALARM`, `CAP_BLOCK_SUSPEND`, `CAP_AUDIT_READ`, `CAP_PERFMON`, `CAP_BPF`, `CAP_CHECKPOINT_RESTORE`");
}

#[test]
fn unknown_namespace_names_file_line_and_column() {
    let fixture = Fixture::new();
    fixture
        .module(
            "web",
            "description: d\nkind: service\ncommand: [/bin/httpd]\nnamespaces:\n  - net\n  - user\n",
        )
        .profile("p", "modules: [base, web]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"<root>/modules/web/module.yaml:6:5: namespaces[1]: unknown variant `user`, expected one of `mount`, `uts`, `ipc`, `net`, `cgroup`, `pid`");
}

#[test]
fn capabilities_on_a_module_that_runs_nothing() {
    let fixture = Fixture::new();
    fixture
        .module("files", "description: d\nkind: base\ncapabilities: []\n")
        .profile("p", "modules: [base, files]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"<root>/modules/files/module.yaml: a module of kind `base` runs nothing: `capabilities:` and `namespaces:` apply to `onboot`, `service` and `shutdown` modules");
}

#[test]
fn capabilities_and_namespaces_reach_init_json_sorted() {
    let fixture = Fixture::new();
    fixture
        .module(
            "clock",
            "description: d\nkind: service\ncommand: [/bin/clock]\nuser: nobody\ncapabilities: [CAP_SYS_TIME, CAP_NET_BIND_SERVICE, CAP_SYS_TIME]\nnamespaces: [uts, ipc]\n",
        )
        .module(
            "plain",
            "description: d\nkind: service\ncommand: [/bin/plain]\n",
        )
        .module(
            "isolated-step",
            "description: d\nkind: onboot\ncommand: [/bin/step]\ncapabilities: []\nnamespaces: [net]\n",
        )
        .profile("p", "modules: [base, clock, plain, isolated-step]\n");
    let catalog = Catalog::load(fixture.path()).unwrap();
    let plan = kiln_assemble::plan(&catalog, "p", ImageArch::X86_64).unwrap();
    // The kernel must have the namespaces: built in, checked like `kernel: options:`.
    let needed: Vec<(&str, &str, bool)> = plan
        .kernel_options
        .iter()
        .map(|needed| {
            (
                needed.module.as_str(),
                needed.option.as_str(),
                needed.module_allowed,
            )
        })
        .collect();
    assert_eq!(
        needed,
        [
            ("profile `p` (compression: zstd)", "CONFIG_RD_ZSTD", false),
            ("clock", "CONFIG_UTS_NS", false),
            ("clock", "CONFIG_IPC_NS", false),
            ("isolated-step", "CONFIG_NET_NS", false),
        ]
    );
    let error = check_kernel_config(
        &plan,
        "CONFIG_RD_ZSTD=y\nCONFIG_UTS_NS=y\nCONFIG_IPC_NS=y\n# CONFIG_NET_NS is not set\n",
        "6.1.192-kiln",
        "flavor virt",
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("module `isolated-step` needs CONFIG_NET_NS=y but the kernel has it unset"),
        "{error}"
    );
    // As build.rs writes /etc/kiln/init.json.
    let init_json =
        String::from_utf8(serde_json::to_vec_pretty(&plan.init_config).unwrap()).unwrap();
    let parsed = kiln_init::config::InitConfig::parse(Path::new("init.json"), &init_json).unwrap();
    let entries = serde_json::to_string_pretty(&(&parsed.onboot, &parsed.services)).unwrap();
    // Capabilities by number, namespaces in their fixed order, each once; a service without
    // the fields is written as before they existed.
    insta::assert_snapshot!(entries, @r#"
    [
      [
        {
          "name": "isolated-step",
          "argv": [
            "/bin/step"
          ],
          "env": {},
          "working_directory": null,
          "capabilities": [],
          "namespaces": [
            "net"
          ],
          "timeout_ms": 60000,
          "fatal": false,
          "after": []
        }
      ],
      [
        {
          "name": "clock",
          "argv": [
            "/bin/clock"
          ],
          "env": {},
          "working_directory": null,
          "user": "nobody",
          "uid": null,
          "gid": null,
          "capabilities": [
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_TIME"
          ],
          "namespaces": [
            "uts",
            "ipc"
          ],
          "restart": "always",
          "backoff": {
            "initial_ms": 1000,
            "max_ms": 30000,
            "reset_after_ms": 60000
          },
          "after": []
        },
        {
          "name": "plain",
          "argv": [
            "/bin/plain"
          ],
          "env": {},
          "working_directory": null,
          "user": null,
          "uid": null,
          "gid": null,
          "restart": "always",
          "backoff": {
            "initial_ms": 1000,
            "max_ms": 30000,
            "reset_after_ms": 60000
          },
          "after": []
        }
      ]
    ]
    "#);
    assert_eq!(parsed, plan.init_config);
}

#[test]
fn user_on_a_step_is_an_error() {
    let fixture = Fixture::new();
    fixture
        .module(
            "step",
            "description: d\nkind: onboot\ncommand: [/bin/step]\nuser: nobody\ncapabilities: [CAP_NET_ADMIN]\n",
        )
        .profile("p", "modules: [base, step]\n");
    insta::assert_snapshot!(fixture.plan_error("p"), @"<root>/modules/step/module.yaml: `user:` applies to services only; onboot and shutdown steps run as root (`capabilities:` can limit what they may do)");
}
