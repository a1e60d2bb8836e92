//! From a profile to a plan: which modules, in which order, with which options, what
//! kiln-init runs, and what the kernel must provide. Pure: no file is read here beyond the
//! catalog already loaded, so every catalog mistake is found (and tested) before any input
//! is fetched or anything is written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kiln_compose::RequiredKernelOption;
use kiln_image::ImageArch;
use kiln_init::config::{
    BackoffSettings, Capability as InitCapability, InitConfig, Namespace as InitNamespace,
    RestartPolicy, ServiceEntry, StepEntry,
};
use kiln_spec::{Catalog, ModuleKind, ModuleSpec, ResolvedProfile};

/// How long kiln-init waits between SIGTERM and SIGKILL (kiln-init's own default).
pub const STOP_GRACE_MS: u64 = 5_000;

/// Why a profile cannot become an image. Messages name the module, the file and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// A module needs another the profile lacks.
    #[error("module `{module}` requires module `{required}`, which profile `{profile}` does not include: add `{required}` to `modules:` in {profile_path}")]
    MissingRequirement {
        module: String,
        required: String,
        profile: String,
        profile_path: String,
    },
    /// `after:`/`requires:` name a module that does not exist at all (a typo).
    #[error("{module_path}: `{field}` names module `{named}`, which does not exist (no modules/{named}/module.yaml)")]
    UnknownModuleReference {
        module_path: String,
        field: &'static str,
        named: String,
    },
    /// The ordering constraints loop.
    #[error("`after:`/`requires:` of profile `{profile}`'s modules make a cycle: {cycle}; remove one of these constraints")]
    Cycle { profile: String, cycle: String },
    /// A build-input module in an image profile.
    #[error("profile `{profile}` includes module `{module}`, a build input (kind `build`) that never goes into an image: remove it from `modules:`")]
    BuildModuleInProfile { profile: String, module: String },
    /// An onboot, service or shutdown module without a command, or a base module with one.
    #[error("{module_path}: {message}")]
    BadModule {
        module_path: String,
        message: String,
    },
    /// An option with no default that the profile does not set.
    #[error("module `{module}` needs option `{option}` ({description}): set it in profile `{profile}` as `options: {{{module}: {{{option}: ...}}}}`")]
    MissingOption {
        module: String,
        option: String,
        description: String,
        profile: String,
    },
}

/// One module of the plan, options applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedModule {
    /// The module's name.
    pub name: String,
    /// Its directory (`modules/<name>`).
    pub directory: PathBuf,
    /// Its specification as written.
    pub spec: ModuleSpec,
    /// Option values: the profile's, else the defaults.
    pub options: BTreeMap<String, String>,
}

/// What the image will be, before any input is read.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The profile, `extends:` applied.
    pub profile: ResolvedProfile,
    /// The target.
    pub arch: ImageArch,
    /// Modules in composition order (the profile's).
    pub modules: Vec<PlannedModule>,
    /// The kernel command line (the profile's, every architecture's first).
    pub cmdline: String,
    /// kiln-init's configuration, without kernel modules (those need the kernel).
    pub init_config: InitConfig,
    /// Kernel options the modules need.
    pub kernel_options: Vec<RequiredKernelOption>,
    /// Kernel modules to load at boot: (module asking, kernel module name).
    pub kernel_modules: Vec<(String, String)>,
}

impl Plan {
    /// The module named `name`.
    pub fn module(&self, name: &str) -> Option<&PlannedModule> {
        self.modules.iter().find(|module| module.name == name)
    }
}

/// Makes the plan for `profile_name` on `arch`.
pub fn plan(
    catalog: &Catalog,
    profile_name: &str,
    arch: ImageArch,
) -> Result<Plan, Box<dyn std::error::Error + Send + Sync>> {
    let profile = catalog.resolve_profile(profile_name)?;
    Ok(plan_resolved(catalog, profile, arch)?)
}

/// [`plan`] for a profile already resolved.
pub fn plan_resolved(
    catalog: &Catalog,
    profile: ResolvedProfile,
    arch: ImageArch,
) -> Result<Plan, PlanError> {
    let profile_path = catalog.profile_path(&profile.name).display().to_string();
    let mut modules = Vec::new();
    for name in &profile.modules {
        let spec = &catalog.modules[name];
        let module_path = catalog.module_path(name).display().to_string();
        if spec.kind == ModuleKind::Build {
            return Err(PlanError::BuildModuleInProfile {
                profile: profile.name.clone(),
                module: name.clone(),
            });
        }
        for (field, names) in [("after", &spec.after), ("requires", &spec.requires)] {
            for named in names {
                if !catalog.modules.contains_key(named) {
                    return Err(PlanError::UnknownModuleReference {
                        module_path: module_path.clone(),
                        field,
                        named: named.clone(),
                    });
                }
            }
        }
        for required in &spec.requires {
            if !profile.modules.contains(required) {
                return Err(PlanError::MissingRequirement {
                    module: name.clone(),
                    required: required.clone(),
                    profile: profile.name.clone(),
                    profile_path: profile_path.clone(),
                });
            }
        }
        let runs = matches!(
            spec.kind,
            ModuleKind::Onboot | ModuleKind::Service | ModuleKind::Shutdown
        );
        if runs && spec.command.is_empty() {
            return Err(PlanError::BadModule {
                module_path,
                message: format!(
                    "a module of kind `{}` needs `command:` (the argv kiln-init runs)",
                    spec.kind.name()
                ),
            });
        }
        if !runs && !spec.command.is_empty() {
            return Err(PlanError::BadModule {
                module_path,
                message: "a module of kind `base` runs nothing: remove `command:` or make it `onboot` or `service`".to_owned(),
            });
        }
        if spec.restart.is_some() && spec.kind != ModuleKind::Service {
            return Err(PlanError::BadModule {
                module_path,
                message: "`restart:` applies to services only".to_owned(),
            });
        }
        if !runs && (spec.capabilities.is_some() || !spec.namespaces.is_empty()) {
            return Err(PlanError::BadModule {
                module_path,
                message: format!(
                    "a module of kind `{}` runs nothing: `capabilities:` and `namespaces:` apply to `onboot`, `service` and `shutdown` modules",
                    spec.kind.name()
                ),
            });
        }
        // Steps have no user in init.json: a `user:` there was dropped without a word, and with
        // `capabilities:` the step would silently run as root with them.
        if spec.user.is_some() && spec.kind != ModuleKind::Service {
            return Err(PlanError::BadModule {
                module_path,
                message: "`user:` applies to services only; onboot and shutdown steps run as root (`capabilities:` can limit what they may do)".to_owned(),
            });
        }
        if spec.timeout.is_some() && !matches!(spec.kind, ModuleKind::Onboot | ModuleKind::Shutdown)
        {
            return Err(PlanError::BadModule {
                module_path,
                message: "`timeout:` applies to onboot and shutdown steps only".to_owned(),
            });
        }
        let mut options = BTreeMap::new();
        let given = profile.options.get(name);
        for (option, option_spec) in &spec.options {
            let value = given
                .and_then(|values| values.get(option))
                .or(option_spec.default.as_ref())
                .ok_or_else(|| PlanError::MissingOption {
                    module: name.clone(),
                    option: option.clone(),
                    description: option_spec.description.clone(),
                    profile: profile.name.clone(),
                })?;
            options.insert(option.clone(), value.0.clone());
        }
        modules.push(PlannedModule {
            name: name.clone(),
            directory: catalog.root.join("modules").join(name),
            spec: spec.clone(),
            options,
        });
    }

    let order = run_order(&profile, &modules)?;
    // `InitConfig::default()` has a zero grace (its serde default is 5 s): services would be
    // SIGKILLed at once at shutdown.
    let mut init_config = InitConfig {
        stop_grace_ms: STOP_GRACE_MS,
        ..InitConfig::default()
    };
    init_config.root.move_off_rootfs = modules.iter().any(|module| module.spec.needs_pivot_root);
    for index in order {
        let module = &modules[index];
        let module_path = catalog.module_path(&module.name).display().to_string();
        let argv = module
            .spec
            .command
            .iter()
            .map(|argument| substitute(argument, module, &module_path))
            .collect::<Result<Vec<_>, _>>()?;
        let env = module
            .spec
            .env
            .iter()
            .map(|(key, value)| Ok((key.clone(), substitute(value, module, &module_path)?)))
            .collect::<Result<BTreeMap<_, _>, PlanError>>()?;
        let working_directory = module.spec.working_dir.as_ref().map(PathBuf::from);
        let capabilities = module
            .spec
            .capabilities
            .as_ref()
            .map(|capabilities| init_capabilities(capabilities));
        let namespaces = init_namespaces(&module.spec.namespaces);
        match module.spec.kind {
            ModuleKind::Onboot | ModuleKind::Shutdown => {
                let step = StepEntry {
                    name: module.name.clone(),
                    argv,
                    env,
                    working_directory,
                    capabilities,
                    namespaces,
                    timeout_ms: module.spec.timeout.unwrap_or(60).saturating_mul(1000),
                    fatal: module.spec.fatal,
                    // Onboot steps run as soon as the steps they come after have ended;
                    // shutdown steps one after another (the machine is going down anyway).
                    after: (module.spec.kind == ModuleKind::Onboot)
                        .then(|| steps_before(index, &modules)),
                };
                if module.spec.kind == ModuleKind::Onboot {
                    init_config.onboot.push(step);
                } else {
                    init_config.shutdown.push(step);
                }
            }
            ModuleKind::Service => {
                let services: BTreeSet<&str> = modules
                    .iter()
                    .filter(|other| other.spec.kind == ModuleKind::Service)
                    .map(|other| other.name.as_str())
                    .collect();
                let mut after: Vec<String> = module
                    .spec
                    .after
                    .iter()
                    .chain(&module.spec.requires)
                    .filter(|name| services.contains(name.as_str()))
                    .cloned()
                    .collect();
                after.sort();
                after.dedup();
                let mut backoff = BackoffSettings::default();
                if let Some(given) = module.spec.backoff {
                    backoff.initial_ms = given.initial_ms;
                    backoff.max_ms = given.max_ms;
                }
                init_config.services.push(ServiceEntry {
                    name: module.name.clone(),
                    argv,
                    env,
                    working_directory,
                    user: module.spec.user.clone(),
                    uid: None,
                    gid: None,
                    capabilities,
                    namespaces,
                    restart: match module.spec.restart {
                        None | Some(kiln_spec::RestartPolicy::Always) => RestartPolicy::Always,
                        Some(kiln_spec::RestartPolicy::OnFailure) => RestartPolicy::OnFailure,
                        Some(kiln_spec::RestartPolicy::Never) => RestartPolicy::Never,
                    },
                    backoff,
                    after,
                });
            }
            ModuleKind::Base | ModuleKind::Build => {}
        }
    }

    // The kernel must unpack the initramfs in the format the profile writes it.
    let mut kernel_options = vec![RequiredKernelOption {
        module: format!(
            "profile `{}` (compression: {})",
            profile.name,
            profile.compression.name()
        ),
        option: profile.compression.kernel_option().to_owned(),
        module_allowed: false,
    }];
    let mut kernel_modules = Vec::new();
    for module in &modules {
        let module_path = catalog.module_path(&module.name).display().to_string();
        for option in &module.spec.kernel.options {
            let (name, built_in) = match option.split_once('=') {
                None => (option.as_str(), false),
                Some((name, "y")) => (name, true),
                Some(_) => {
                    return Err(PlanError::BadModule {
                        module_path,
                        message: format!("kernel option `{option}`: write `CONFIG_NAME` (built in or a module) or `CONFIG_NAME=y` (built in)"),
                    })
                }
            };
            if !name.starts_with("CONFIG_") || name.len() == "CONFIG_".len() {
                return Err(PlanError::BadModule {
                    module_path,
                    message: format!("kernel option `{option}` does not start with `CONFIG_`"),
                });
            }
            kernel_options.push(RequiredKernelOption {
                module: module.name.clone(),
                option: name.to_owned(),
                module_allowed: !built_in,
            });
        }
        // A namespace the kernel was built without makes unshare(2) fail at boot; asking for
        // its option here fails the build instead, with the module named.
        for namespace in &module.spec.namespaces {
            let option = match namespace {
                kiln_spec::Namespace::Mount => continue,
                kiln_spec::Namespace::Uts => "CONFIG_UTS_NS",
                kiln_spec::Namespace::Ipc => "CONFIG_IPC_NS",
                kiln_spec::Namespace::Net => "CONFIG_NET_NS",
                kiln_spec::Namespace::Cgroup => "CONFIG_CGROUPS",
                kiln_spec::Namespace::Pid => "CONFIG_PID_NS",
            };
            let required = RequiredKernelOption {
                module: module.name.clone(),
                option: option.to_owned(),
                module_allowed: false,
            };
            if !kernel_options.contains(&required) {
                kernel_options.push(required);
            }
        }
        for kernel_module in &module.spec.kernel.modules {
            kernel_modules.push((module.name.clone(), kernel_module.clone()));
        }
    }

    let mut cmdline: Vec<&str> = profile.cmdline.all.iter().map(String::as_str).collect();
    cmdline.extend(
        match arch {
            ImageArch::X86_64 => &profile.cmdline.x86_64,
            ImageArch::Aarch64 => &profile.cmdline.aarch64,
        }
        .iter()
        .map(String::as_str),
    );
    let cmdline = cmdline.join(" ");
    Ok(Plan {
        profile,
        arch,
        modules,
        cmdline,
        init_config,
        kernel_options,
        kernel_modules,
    })
}

/// The module's capabilities as kiln-init's, sorted by number and without repeats, so
/// init.json does not change with the order a module lists them in.
fn init_capabilities(capabilities: &[kiln_spec::Capability]) -> Vec<InitCapability> {
    /// kiln-spec and kiln-init each have the list (kiln-init deliberately depends on neither
    /// kiln-spec nor serde_yaml); an exhaustive match keeps them from drifting apart.
    macro_rules! same_variants {
        ($value:expr; $($variant:ident),* $(,)?) => {
            match $value {
                $(kiln_spec::Capability::$variant => InitCapability::$variant,)*
            }
        };
    }
    let mut converted: Vec<InitCapability> = capabilities
        .iter()
        .map(|capability| {
            same_variants!(capability;
                CapChown, CapDacOverride, CapDacReadSearch, CapFowner, CapFsetid, CapKill,
                CapSetgid, CapSetuid, CapSetpcap, CapLinuxImmutable, CapNetBindService,
                CapNetBroadcast, CapNetAdmin, CapNetRaw, CapIpcLock, CapIpcOwner, CapSysModule,
                CapSysRawio, CapSysChroot, CapSysPtrace, CapSysPacct, CapSysAdmin, CapSysBoot,
                CapSysNice, CapSysResource, CapSysTime, CapSysTtyConfig, CapMknod, CapLease,
                CapAuditWrite, CapAuditControl, CapSetfcap, CapMacOverride, CapMacAdmin,
                CapSyslog, CapWakeAlarm, CapBlockSuspend, CapAuditRead, CapPerfmon, CapBpf,
                CapCheckpointRestore,
            )
        })
        .collect();
    converted.sort();
    converted.dedup();
    converted
}

/// The module's namespaces as kiln-init's, sorted and without repeats.
fn init_namespaces(namespaces: &[kiln_spec::Namespace]) -> Vec<InitNamespace> {
    let mut converted: Vec<InitNamespace> = namespaces
        .iter()
        .map(|namespace| match namespace {
            kiln_spec::Namespace::Mount => InitNamespace::Mount,
            kiln_spec::Namespace::Uts => InitNamespace::Uts,
            kiln_spec::Namespace::Ipc => InitNamespace::Ipc,
            kiln_spec::Namespace::Net => InitNamespace::Net,
            kiln_spec::Namespace::Cgroup => InitNamespace::Cgroup,
            kiln_spec::Namespace::Pid => InitNamespace::Pid,
        })
        .collect();
    converted.sort();
    converted.dedup();
    converted
}

/// Replaces every `${name}` by the module's option `name`.
fn substitute(text: &str, module: &PlannedModule, module_path: &str) -> Result<String, PlanError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(PlanError::BadModule {
                module_path: module_path.to_owned(),
                message: format!("`{text}`: `${{` without a closing `}}`"),
            });
        };
        let name = &after[..end];
        let Some(value) = module.options.get(name) else {
            return Err(PlanError::BadModule {
                module_path: module_path.to_owned(),
                message: format!("`{text}` uses `${{{name}}}`, but the module declares no option `{name}` under `options:`"),
            });
        };
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The onboot steps `modules[index]` must wait for: the onboot modules its `after:` and
/// `requires:` name, and, through modules without a step (`base`, services), the onboot
/// modules those name in turn. Sorted names.
fn steps_before(index: usize, modules: &[PlannedModule]) -> Vec<String> {
    let index_of: BTreeMap<&str, usize> = modules
        .iter()
        .enumerate()
        .map(|(index, module)| (module.name.as_str(), index))
        .collect();
    let mut found = BTreeSet::new();
    let mut visited = BTreeSet::from([index]);
    let mut pending = vec![index];
    while let Some(current) = pending.pop() {
        let spec = &modules[current].spec;
        for name in spec.after.iter().chain(&spec.requires) {
            let Some(&other) = index_of.get(name.as_str()) else {
                continue;
            };
            if !visited.insert(other) {
                continue;
            }
            if modules[other].spec.kind == ModuleKind::Onboot {
                found.insert(modules[other].name.clone());
            } else {
                pending.push(other);
            }
        }
    }
    found.into_iter().collect()
}

/// Indexes of `modules` in run order: every `after`/`requires` module of the profile first,
/// otherwise the profile's order. A cycle is an error naming it.
fn run_order(
    profile: &ResolvedProfile,
    modules: &[PlannedModule],
) -> Result<Vec<usize>, PlanError> {
    let index_of: BTreeMap<&str, usize> = modules
        .iter()
        .enumerate()
        .map(|(index, module)| (module.name.as_str(), index))
        .collect();
    // before[i] = the modules that must come before module i.
    let before: Vec<BTreeSet<usize>> = modules
        .iter()
        .map(|module| {
            module
                .spec
                .after
                .iter()
                .chain(&module.spec.requires)
                .filter_map(|name| index_of.get(name.as_str()).copied())
                .collect()
        })
        .collect();
    let mut done = vec![false; modules.len()];
    let mut order = Vec::new();
    while order.len() < modules.len() {
        let next = (0..modules.len())
            .find(|&index| !done[index] && before[index].iter().all(|&earlier| done[earlier]));
        match next {
            Some(index) => {
                done[index] = true;
                order.push(index);
            }
            None => {
                let start = (0..modules.len()).find(|&index| !done[index]).unwrap_or(0);
                return Err(PlanError::Cycle {
                    profile: profile.name.clone(),
                    cycle: describe_cycle(start, &before, &done, modules),
                });
            }
        }
    }
    Ok(order)
}

/// Walks unfinished predecessors from `start` until a module repeats: `a -> b -> a`
/// (read "a runs after b, which runs after a").
fn describe_cycle(
    start: usize,
    before: &[BTreeSet<usize>],
    done: &[bool],
    modules: &[PlannedModule],
) -> String {
    let mut path = vec![start];
    let mut current = start;
    while let Some(&next) = before[current].iter().find(|&&earlier| !done[earlier]) {
        if let Some(position) = path.iter().position(|&seen| seen == next) {
            let mut cycle: Vec<&str> = path[position..]
                .iter()
                .map(|&index| modules[index].name.as_str())
                .collect();
            cycle.push(modules[next].name.as_str());
            return cycle.join(" after ");
        }
        path.push(next);
        current = next;
    }
    path.iter()
        .map(|&index| modules[index].name.as_str())
        .collect::<Vec<_>>()
        .join(" after ")
}
