//! Configuring and building a kernel with `make`: the only processes this crate spawns.
//!
//! Reproducibility comes from the environment given to make, never from the host's:
//! the environment is cleared, then `LC_ALL=C`, `TZ=UTC`, `KBUILD_BUILD_TIMESTAMP` from the
//! epoch, `KBUILD_BUILD_USER`/`HOST=kiln`, `KBUILD_BUILD_VERSION=1`, and `KCFLAGS`/`KAFLAGS`
//! mapping the source and build directories out of every path the compiler records. The
//! build runs out of tree (`O=`) in a work directory under the cache's `tmp/`; the artifact
//! directory appears only by renaming a finished one.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::artifact::{self, ArtifactError, ArtifactOrigin, KernelArtifact};
use crate::cache::{KernelCache, WorkDir};
use crate::fragment::{self, Fragment, FragmentError, RequestedOption};
use crate::kconfig::KconfigIndex;
use crate::key::{self, KeyInputs, ToolchainIdentity};
use crate::source::{self, KernelSource, SourceError};
use crate::target::{Arch, Flavor};
use crate::timestamp::kbuild_timestamp;
use crate::verify::{verify_options, OptionProblem};

/// Lines of the make log shown when a step fails.
pub const FAILURE_TAIL_LINES: usize = 60;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub source: KernelSource,
    pub arch: Arch,
    pub flavor: Flavor,
    /// The `kernel-configs/` directory.
    pub config_dir: PathBuf,
    pub source_date_epoch: u64,
    /// `make -jN`.
    pub jobs: usize,
}

/// The steps of a build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStep {
    PrepareSource,
    Configure,
    VerifyConfig,
    Compile,
    InstallModules,
    Package,
}

impl BuildStep {
    pub const COUNT: usize = 6;

    /// 1-based position, for `[3/6]`.
    pub fn number(self) -> usize {
        self as usize + 1
    }
}

impl fmt::Display for BuildStep {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            BuildStep::PrepareSource => "prepare source",
            BuildStep::Configure => "configure",
            BuildStep::VerifyConfig => "verify config",
            BuildStep::Compile => "compile",
            BuildStep::InstallModules => "install modules",
            BuildStep::Package => "package",
        })
    }
}

/// One line of kbuild's quiet output, e.g. `  CC [M]  drivers/net/virtio_net.o`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeProgress {
    /// How many such lines this make run has printed so far.
    pub count: u64,
    pub tool: String,
    pub target: String,
}

/// Receives progress; the xtask draws it, tests ignore it.
pub trait BuildObserver {
    /// A step starts; `detail` says what it does.
    fn step(&mut self, step: BuildStep, detail: &str);
    /// A kbuild command line was printed.
    fn make_progress(&mut self, _progress: &MakeProgress) {}
    /// Where the full log of this build is written.
    fn log_file(&mut self, _path: &Path) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoProgress;

impl BuildObserver for NoProgress {
    fn step(&mut self, _step: BuildStep, _detail: &str) {}
}

/// Parses a kbuild quiet-mode line (`  CC      kernel/fork.o`) into (tool, target).
pub fn parse_make_line(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("  ")?;
    let tool_end = rest.find(' ')?;
    let tool = &rest[..tool_end];
    if tool.is_empty()
        || !tool.bytes().all(|byte| {
            byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
        })
    {
        return None;
    }
    let mut after = &rest[tool_end..];
    let mut tool = tool.to_string();
    if let Some(module) = after.trim_start().strip_prefix("[M]") {
        tool.push_str(" [M]");
        after = module;
    }
    let target = after.trim();
    if target.is_empty() {
        return None;
    }
    Some((tool, target.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Fragment(#[from] FragmentError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("cannot run `{program} --version`: {source}; install it (Debian: build-essential, gcc-aarch64-linux-gnu for aarch64)")]
    Toolchain {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run `make {targets}`: {source}; install make (Debian: build-essential)")]
    Spawn {
        targets: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", rejected_message(.arch, .flavor, .problems, .config_path))]
    ConfigRejected {
        arch: Arch,
        flavor: Flavor,
        problems: Vec<OptionProblem>,
        config_path: PathBuf,
    },
    #[error(
        "`make {targets}` failed ({status}); full log: {log}\nlast {} lines:\n{tail}",
        FAILURE_TAIL_LINES
    )]
    Make {
        targets: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
}

fn rejected_message(
    arch: &Arch,
    flavor: &Flavor,
    problems: &[OptionProblem],
    config_path: &Path,
) -> String {
    let mut message = format!(
        "{} requested kernel option(s) did not survive `make olddefconfig` for {arch} {flavor}:\n",
        problems.len()
    );
    for problem in problems {
        message.push_str(&format!("  - {problem}\n"));
    }
    message.push_str(&format!(
        "the final .config is kept at {}; fix the fragments in kernel-configs/ and rerun",
        config_path.display()
    ));
    message
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The first line of `program --version`.
pub fn tool_version(program: &str) -> Result<String, KernelError> {
    let output = Command::new(program)
        .arg("--version")
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| KernelError::Toolchain {
            program: program.to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// The toolchain that builds for `arch` on this host.
pub fn probe_toolchain(arch: Arch) -> Result<ToolchainIdentity, KernelError> {
    let prefix = arch
        .cross_compile_prefix(std::env::consts::ARCH)
        .unwrap_or("");
    Ok(ToolchainIdentity {
        compiler: tool_version(&format!("{prefix}gcc"))?,
        linker: tool_version(&format!("{prefix}ld"))?,
        make: tool_version("make")?,
    })
}

/// How to call make for one build: source tree, `O=` directory, architecture, environment.
#[derive(Debug, Clone)]
pub struct MakeInvocation {
    pub source_tree: PathBuf,
    pub build_dir: PathBuf,
    pub arch: Arch,
    pub source_date_epoch: u64,
    pub jobs: usize,
}

impl MakeInvocation {
    /// `make -C SRC O=BUILD ARCH=… [CROSS_COMPILE=…] -jN TARGETS…` with the reproducible
    /// environment and nothing else of the caller's (no stray `ARCH`, `KCFLAGS`, `MAKEFLAGS`).
    pub fn command(&self, targets: &[&str]) -> Command {
        let mut command = Command::new("make");
        command.env_clear();
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_string());
        // depmod lives in /sbin; without it modules_install skips modules.dep silently.
        command.env("PATH", format!("{path}:/usr/sbin:/sbin"));
        let source = self.source_tree.display();
        let build = self.build_dir.display();
        let prefix_map = format!("-ffile-prefix-map={source}/= -ffile-prefix-map={build}/=");
        command
            .env("LC_ALL", "C")
            .env("TZ", "UTC")
            .env("SOURCE_DATE_EPOCH", self.source_date_epoch.to_string())
            .env(
                "KBUILD_BUILD_TIMESTAMP",
                kbuild_timestamp(self.source_date_epoch),
            )
            .env("KBUILD_BUILD_USER", "kiln")
            .env("KBUILD_BUILD_HOST", "kiln")
            .env("KBUILD_BUILD_VERSION", "1")
            .env("KCFLAGS", &prefix_map)
            .env("KAFLAGS", &prefix_map);
        command
            .arg("-C")
            .arg(&self.source_tree)
            .arg(format!("O={build}"));
        command.arg(format!("ARCH={}", self.arch.kernel_arch()));
        if let Some(prefix) = self.arch.cross_compile_prefix(std::env::consts::ARCH) {
            command.arg(format!("CROSS_COMPILE={prefix}"));
        }
        command.arg(format!("-j{}", self.jobs.max(1)));
        command.args(targets);
        command
    }

    /// Runs make, appending everything it prints to `log`, reporting kbuild lines to the
    /// observer; on failure the error carries the last lines of the log.
    pub fn run(
        &self,
        targets: &[&str],
        extra_env: &[(&str, String)],
        log_path: &Path,
        observer: &mut dyn BuildObserver,
    ) -> Result<(), KernelError> {
        let targets_text = targets.join(" ");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(io_error(log_path))?;
        writeln!(log, "### make {targets_text}").map_err(io_error(log_path))?;
        let (reader, writer) = std::io::pipe().map_err(io_error(log_path))?;
        let writer_for_stderr = writer.try_clone().map_err(io_error(log_path))?;
        let mut command = self.command(targets);
        for (name, value) in extra_env {
            command.env(name, value);
        }
        command
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_for_stderr);
        let spawn_error = |source| KernelError::Spawn {
            targets: targets_text.clone(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        // The pipe's write ends live in `command`; drop them so the reader sees end-of-file.
        drop(command);
        let mut tail: VecDeque<String> = VecDeque::with_capacity(FAILURE_TAIL_LINES);
        let mut count = 0;
        for line in std::io::BufReader::new(reader).split(b'\n') {
            let line = String::from_utf8_lossy(&line.map_err(io_error(log_path))?).into_owned();
            writeln!(log, "{line}").map_err(io_error(log_path))?;
            if let Some((tool, target)) = parse_make_line(&line) {
                count += 1;
                observer.make_progress(&MakeProgress {
                    count,
                    tool,
                    target,
                });
            }
            if tail.len() == FAILURE_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        let status = child.wait().map_err(spawn_error)?;
        if !status.success() {
            return Err(KernelError::Make {
                targets: targets_text,
                status: status.to_string(),
                log: log_path.to_path_buf(),
                tail: Vec::from(tail).join("\n"),
            });
        }
        Ok(())
    }
}

/// Inputs resolved before any work: fragments, requested options, toolchain, key.
#[derive(Debug, Clone)]
pub struct PreparedInputs {
    pub fragments: Vec<Fragment>,
    pub requested: Vec<RequestedOption>,
    pub toolchain: ToolchainIdentity,
    pub key: String,
    pub key_material: String,
}

/// Reads the fragments, probes the toolchain and computes the key. Cheap: no source access.
pub fn prepare_inputs(request: &BuildRequest) -> Result<PreparedInputs, KernelError> {
    let fragments = fragment::load_fragments(&request.config_dir, request.arch, request.flavor)?;
    let requested = fragment::requested_options(&fragments)?;
    let toolchain = probe_toolchain(request.arch)?;
    let inputs = KeyInputs {
        source_sha256: &request.source.sha256,
        arch: request.arch,
        flavor: request.flavor,
        fragments: &fragments,
        toolchain: &toolchain,
        source_date_epoch: request.source_date_epoch,
    };
    let key = key::artifact_key(&inputs);
    let key_material = key::key_material(&inputs);
    Ok(PreparedInputs {
        fragments,
        requested,
        toolchain,
        key,
        key_material,
    })
}

/// A configured (merged, `olddefconfig`-ed and verified) kernel build directory.
#[derive(Debug)]
pub struct ConfiguredKernel {
    /// Removed on drop.
    pub work: WorkDir,
    pub make: MakeInvocation,
    pub inputs: PreparedInputs,
    /// The final `.config`.
    pub final_config: String,
    pub log_path: PathBuf,
}

/// Extracts the source (cached), merges the fragments onto the flavor's base config, runs
/// `make olddefconfig`, and fails with every requested option that did not survive.
pub fn configure_kernel(
    request: &BuildRequest,
    cache: &KernelCache,
    observer: &mut dyn BuildObserver,
) -> Result<ConfiguredKernel, KernelError> {
    let inputs = prepare_inputs(request)?;
    configure_with(request, cache, inputs, observer)
}

fn configure_with(
    request: &BuildRequest,
    cache: &KernelCache,
    inputs: PreparedInputs,
    observer: &mut dyn BuildObserver,
) -> Result<ConfiguredKernel, KernelError> {
    observer.step(
        BuildStep::PrepareSource,
        &format!("source sha256:{}", request.source.sha256),
    );
    let source_tree = source::extracted_source(&request.source, cache, &mut || {
        observer.step(
            BuildStep::PrepareSource,
            &format!(
                "extracting {} (once per digest)",
                request.source.tarball.display()
            ),
        );
    })?;
    let log_path = cache.log_path(&inputs.key);
    let logs_dir = log_path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(logs_dir).map_err(io_error(logs_dir))?;
    std::fs::write(
        &log_path,
        format!(
            "# kiln kernel build {} {}\n{}",
            request.arch, request.flavor, inputs.key_material
        ),
    )
    .map_err(io_error(&log_path))?;
    observer.log_file(&log_path);

    let work = cache
        .work_dir(&format!("build-{}-{}", request.arch, request.flavor))
        .map_err(io_error(&cache.tmp_dir()))?;
    let build_dir = work.path().join("build");
    std::fs::create_dir_all(&build_dir).map_err(io_error(&build_dir))?;
    let make = MakeInvocation {
        source_tree,
        build_dir,
        arch: request.arch,
        source_date_epoch: request.source_date_epoch,
        jobs: request.jobs,
    };

    let base = request.flavor.base_config_target();
    observer.step(
        BuildStep::Configure,
        &format!(
            "make {base}, merge {} fragments, make olddefconfig",
            inputs.fragments.len()
        ),
    );
    make.run(&[base], &[], &log_path, observer)?;
    let config_path = make.build_dir.join(".config");
    let base_config = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let merged = fragment::merge_fragments(&base_config, &inputs.fragments)?;
    std::fs::write(&config_path, merged).map_err(io_error(&config_path))?;
    make.run(&["olddefconfig"], &[], &log_path, observer)?;
    let final_config = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;

    observer.step(
        BuildStep::VerifyConfig,
        &format!("{} requested options", inputs.requested.len()),
    );
    let problems = verify_config(
        &inputs.requested,
        &final_config,
        &make.source_tree,
        request.arch,
    )?;
    if !problems.is_empty() {
        let kept = log_path.with_extension("config");
        std::fs::write(&kept, &final_config).map_err(io_error(&kept))?;
        return Err(KernelError::ConfigRejected {
            arch: request.arch,
            flavor: request.flavor,
            problems,
            config_path: kept,
        });
    }
    Ok(ConfiguredKernel {
        work,
        make,
        inputs,
        final_config,
        log_path,
    })
}

/// The requested options that the final config does not hold, each with a reason read from
/// the source's Kconfig files (scanned only when something is wrong).
pub fn verify_config(
    requested: &[RequestedOption],
    final_config: &str,
    source_tree: &Path,
    arch: Arch,
) -> Result<Vec<OptionProblem>, KernelError> {
    let quick = verify_options(
        requested,
        final_config,
        &KconfigIndex::default(),
        arch.source_arch_dir(),
    );
    if quick.is_empty() {
        return Ok(quick);
    }
    let index = KconfigIndex::scan(source_tree).map_err(io_error(source_tree))?;
    Ok(verify_options(
        requested,
        final_config,
        &index,
        arch.source_arch_dir(),
    ))
}

/// Builds (or finds in the cache) the kernel artifact for `request`.
pub fn build_kernel(
    request: &BuildRequest,
    cache: &KernelCache,
    observer: &mut dyn BuildObserver,
) -> Result<KernelArtifact, KernelError> {
    let inputs = prepare_inputs(request)?;
    let destination = cache.artifact_dir(&inputs.key);
    if destination.join(artifact::METADATA).is_file() {
        return Ok(KernelArtifact::load(&destination)?);
    }
    // One build at a time per cache: two processes asking for the same kernel (an image build
    // and a test, or two tests) build it once, the second finding it when the lock is free;
    // builds of different kernels share the unpacked source and the machine's cores anyway.
    // Released when `build_lock` is dropped, at the end of this function.
    std::fs::create_dir_all(cache.root()).map_err(io_error(cache.root()))?;
    let lock_path = cache.root().join("build.lock");
    let build_lock = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    build_lock.lock().map_err(io_error(&lock_path))?;
    if destination.join(artifact::METADATA).is_file() {
        return Ok(KernelArtifact::load(&destination)?);
    }
    let configured = configure_with(request, cache, inputs, observer)?;
    let make = &configured.make;
    let log_path = &configured.log_path;

    let (image_target, image_path) = request.arch.image_target();
    let mut targets = vec![image_target, "modules"];
    if request.arch.has_device_trees() {
        targets.push("dtbs");
    }
    observer.step(
        BuildStep::Compile,
        &format!("make -j{} {}", request.jobs, targets.join(" ")),
    );
    make.run(&targets, &[], log_path, observer)?;

    observer.step(BuildStep::InstallModules, "make modules_install");
    let stage = configured.work.path().join("modules");
    let stage_arg = stage.display().to_string();
    make.run(
        &[
            &format!("INSTALL_MOD_PATH={stage_arg}"),
            "INSTALL_MOD_STRIP=1",
            "modules_install",
        ],
        &[],
        log_path,
        observer,
    )?;
    let release_path = make.build_dir.join("include/config/kernel.release");
    let release = std::fs::read_to_string(&release_path)
        .map_err(io_error(&release_path))?
        .trim()
        .to_string();
    let modules_dir = stage.join("lib/modules").join(&release);
    for link in ["build", "source"] {
        // Symlinks back into this machine's build directory: meaningless in an image.
        let _ = std::fs::remove_file(modules_dir.join(link));
    }

    let out = configured.work.path().join("artifact");
    std::fs::create_dir_all(&out).map_err(io_error(&out))?;
    if request.arch.has_device_trees() {
        let dtbs_stage = configured.work.path().join("dtbs");
        std::fs::create_dir_all(&dtbs_stage).map_err(io_error(&dtbs_stage))?;
        make.run(
            &[
                &format!("INSTALL_DTBS_PATH={}", dtbs_stage.display()),
                "dtbs_install",
            ],
            &[],
            log_path,
            observer,
        )?;
        crate::modules_tar::write_tar_file(
            &dtbs_stage,
            &out.join(artifact::DTBS_TAR),
            request.source_date_epoch,
        )
        .map_err(io_error(&dtbs_stage))?;
    }

    observer.step(
        BuildStep::Package,
        "kernel image, System.map, config, modules.tar",
    );
    let copy = |from: &Path, name: &str| -> Result<(), KernelError> {
        std::fs::copy(from, out.join(name))
            .map(drop)
            .map_err(io_error(from))
    };
    copy(&make.build_dir.join(image_path), artifact::IMAGE)?;
    copy(&make.build_dir.join("System.map"), artifact::SYSTEM_MAP)?;
    copy(&make.build_dir.join(".config"), artifact::CONFIG)?;
    std::fs::create_dir_all(&stage).map_err(io_error(&stage))?;
    crate::modules_tar::write_tar_file(
        &stage,
        &out.join(artifact::MODULES_TAR),
        request.source_date_epoch,
    )
    .map_err(io_error(&stage))?;

    let metadata = KernelArtifact {
        dir: PathBuf::new(),
        format: artifact::METADATA_FORMAT,
        key: configured.inputs.key.clone(),
        arch: request.arch,
        release,
        source_date_epoch: request.source_date_epoch,
        origin: ArtifactOrigin::Built {
            flavor: request.flavor,
            source_sha256: request.source.sha256.clone(),
            fragments: configured
                .inputs
                .fragments
                .iter()
                .map(|fragment| fragment.name.clone())
                .collect(),
            toolchain: configured.inputs.toolchain.clone(),
        },
        key_material: configured.inputs.key_material.clone(),
        files: Default::default(),
    };
    Ok(artifact::publish(&out, &destination, metadata)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Option<(&str, &str)>) {
        let parsed = parse_make_line(line);
        assert_eq!(
            parsed
                .as_ref()
                .map(|(tool, target)| (tool.as_str(), target.as_str())),
            expected,
            "{line:?}"
        );
    }

    #[test]
    fn parses_kbuild_quiet_lines() {
        check("  CC      kernel/fork.o", Some(("CC", "kernel/fork.o")));
        check(
            "  CC [M]  drivers/net/ethernet/google/gve/gve_main.o",
            Some(("CC [M]", "drivers/net/ethernet/google/gve/gve_main.o")),
        );
        check(
            "  LD [M]  drivers/net/ethernet/amazon/ena/ena.ko",
            Some(("LD [M]", "drivers/net/ethernet/amazon/ena/ena.ko")),
        );
        check(
            "  HOSTCC  scripts/kconfig/conf.o",
            Some(("HOSTCC", "scripts/kconfig/conf.o")),
        );
        check("  GEN     Makefile", Some(("GEN", "Makefile")));
        check("make[1]: Entering directory '/tmp/build'", None);
        check("drivers/x.c:12:3: warning: unused variable", None);
        check("  ", None);
        check("Kernel: arch/x86/boot/bzImage is ready  (#1)", None);
    }

    #[test]
    fn make_environment_is_reproducible_and_closed() {
        let invocation = MakeInvocation {
            source_tree: PathBuf::from("/cache/kernel/sources/abc/linux-source-6.1"),
            build_dir: PathBuf::from("/cache/kernel/tmp/build-1/build"),
            arch: Arch::Aarch64,
            source_date_epoch: 1_700_000_000,
            jobs: 2,
        };
        let command = invocation.command(&["Image", "modules"]);
        let mut lines: Vec<String> = command
            .get_envs()
            .filter(|(name, _)| *name != "PATH")
            .map(|(name, value)| {
                format!(
                    "{}={}",
                    name.to_string_lossy(),
                    value
                        .map(|value| value.to_string_lossy().into_owned())
                        .unwrap_or_default()
                )
            })
            .collect();
        lines.push(format!(
            "args: {}",
            command
                .get_args()
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        insta::assert_snapshot!(lines.join("\n"), @r#"
        KAFLAGS=-ffile-prefix-map=/cache/kernel/sources/abc/linux-source-6.1/= -ffile-prefix-map=/cache/kernel/tmp/build-1/build/=
        KBUILD_BUILD_HOST=kiln
        KBUILD_BUILD_TIMESTAMP=Tue Nov 14 22:13:20 UTC 2023
        KBUILD_BUILD_USER=kiln
        KBUILD_BUILD_VERSION=1
        KCFLAGS=-ffile-prefix-map=/cache/kernel/sources/abc/linux-source-6.1/= -ffile-prefix-map=/cache/kernel/tmp/build-1/build/=
        LC_ALL=C
        SOURCE_DATE_EPOCH=1700000000
        TZ=UTC
        args: -C /cache/kernel/sources/abc/linux-source-6.1 O=/cache/kernel/tmp/build-1/build ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- -j2 Image modules
        "#);
    }
}
