//! An image output directory as `kiln-image` writes it, and what a boot of it must show.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_init::config::InitConfig;

use crate::{ImageArch, SmokeError};

/// The files of `out/<name>/<arch>/` a smoke run uses.
#[derive(Debug, Clone)]
pub struct ImageDirectory {
    pub directory: PathBuf,
    pub arch: ImageArch,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub boot_ipxe: PathBuf,
    /// The image's default kernel command line (`cmdline`, one line).
    pub cmdline: String,
    /// `manifest.json`, when present.
    pub manifest: Option<serde_json::Value>,
}

impl ImageDirectory {
    /// Checks that the directory holds the files of an image for `arch`.
    pub fn open(directory: &Path, arch: ImageArch) -> Result<ImageDirectory, SmokeError> {
        let require = |name: String| -> Result<PathBuf, SmokeError> {
            let path = directory.join(&name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(SmokeError::MissingImageFile {
                    directory: directory.to_path_buf(),
                    file: name,
                    arch: arch.name(),
                })
            }
        };
        let kernel = require(kiln_image::kernel_file_name(arch))?;
        let initramfs = require(kiln_image::initramfs_file_name(arch))?;
        let cmdline_path = require("cmdline".to_string())?;
        let boot_ipxe = require("boot.ipxe".to_string())?;
        let cmdline = fs::read_to_string(&cmdline_path)
            .map_err(SmokeError::io("reading", &cmdline_path))?
            .trim()
            .to_string();
        let manifest_path = directory.join("manifest.json");
        let manifest = if manifest_path.is_file() {
            let text = fs::read_to_string(&manifest_path)
                .map_err(SmokeError::io("reading", &manifest_path))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|error| SmokeError::BadImage {
                    path: manifest_path.clone(),
                    problem: format!("not JSON: {error}"),
                })?;
            if let Some(manifest_arch) = value.get("arch").and_then(|arch| arch.as_str()) {
                if manifest_arch != arch.name() {
                    return Err(SmokeError::BadImage {
                        path: manifest_path,
                        problem: format!("the image is for {manifest_arch}, not {}", arch.name()),
                    });
                }
            }
            Some(value)
        } else {
            None
        };
        Ok(ImageDirectory {
            directory: directory.to_path_buf(),
            arch,
            kernel,
            initramfs,
            boot_ipxe,
            cmdline,
            manifest,
        })
    }

    /// The onboot steps and services the image's PID 1 will run: from `manifest.json` when it
    /// lists them (`onboot` and `services`, arrays of names or of objects with a `name`),
    /// else from `/etc/kiln/init.json` inside the initramfs.
    pub fn boot_plan(&self) -> Result<BootPlan, SmokeError> {
        if let Some(plan) = self.manifest.as_ref().and_then(boot_plan_from_manifest) {
            return Ok(plan);
        }
        let bytes =
            fs::read(&self.initramfs).map_err(SmokeError::io("reading", &self.initramfs))?;
        let config =
            init_config_from_initramfs(&bytes).map_err(|problem| SmokeError::BadImage {
                path: self.initramfs.clone(),
                problem,
            })?;
        Ok(BootPlan::from_config(&config, PlanSource::InitramfsConfig))
    }
}

/// Where a [`BootPlan`] was read from (said in reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSource {
    Manifest,
    InitramfsConfig,
}

/// The names a boot must show markers for, in the order kiln-init runs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    pub onboot: Vec<String>,
    /// Each onboot step's `after` (names of earlier steps); `None`: after the step before it.
    pub onboot_after: Vec<Option<Vec<String>>>,
    pub services: Vec<String>,
    pub source: PlanSource,
}

impl BootPlan {
    pub fn from_config(config: &InitConfig, source: PlanSource) -> BootPlan {
        BootPlan {
            onboot: config.onboot.iter().map(|step| step.name.clone()).collect(),
            onboot_after: config
                .onboot
                .iter()
                .map(|step| step.after.clone())
                .collect(),
            services: config
                .services
                .iter()
                .map(|service| service.name.clone())
                .collect(),
            source,
        }
    }

    /// Indexes of the onboot steps that end before step `index` starts (as kiln-init's
    /// [`kiln_init::config::StepEntry::predecessors`] decides it).
    pub fn onboot_predecessors(&self, index: usize) -> Vec<usize> {
        match self.onboot_after.get(index).cloned().flatten() {
            None => index.checked_sub(1).into_iter().collect(),
            Some(names) => names
                .iter()
                .filter_map(|name| self.onboot[..index].iter().position(|step| step == name))
                .collect(),
        }
    }

    pub fn has_service(&self, name: &str) -> bool {
        self.services.iter().any(|service| service == name)
    }
}

fn boot_plan_from_manifest(manifest: &serde_json::Value) -> Option<BootPlan> {
    let names = |key: &str| -> Option<Vec<String>> {
        let list = manifest.get(key)?.as_array()?;
        list.iter()
            .map(|item| match item {
                serde_json::Value::String(name) => Some(name.clone()),
                serde_json::Value::Object(object) => {
                    object.get("name")?.as_str().map(str::to_string)
                }
                _ => None,
            })
            .collect()
    };
    let onboot = names("onboot")?;
    let services = names("services")?;
    // An object may carry the step's `after` (an array of names); a bare name runs after
    // the step before it.
    let onboot_after = manifest
        .get("onboot")?
        .as_array()?
        .iter()
        .map(|item| {
            item.get("after")?.as_array().map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_string))
                    .collect()
            })
        })
        .collect();
    Some(BootPlan {
        onboot,
        onboot_after,
        services,
        source: PlanSource::Manifest,
    })
}

/// `/etc/kiln/init.json` as the kernel would leave it after unpacking every segment of the
/// initramfs (a later archive's file replaces an earlier one's).
pub fn init_config_from_initramfs(bytes: &[u8]) -> Result<InitConfig, String> {
    let segments = kiln_archive::read_initramfs(bytes)
        .map_err(|error| format!("reading the initramfs: {error}"))?;
    let config_name = kiln_init::config::DEFAULT_CONFIG_PATH.trim_start_matches('/');
    let mut found = None;
    for member in segments.iter().flat_map(|segment| &segment.members) {
        let name = member.name.strip_prefix(b"./").unwrap_or(&member.name);
        if name == config_name.as_bytes() {
            found = Some(member.data.clone());
        }
    }
    let data = found.ok_or_else(|| {
        format!(
            "the initramfs has no {}",
            kiln_init::config::DEFAULT_CONFIG_PATH
        )
    })?;
    let text = String::from_utf8(data)
        .map_err(|_| format!("{} is not UTF-8", kiln_init::config::DEFAULT_CONFIG_PATH))?;
    InitConfig::parse(Path::new(kiln_init::config::DEFAULT_CONFIG_PATH), &text)
        .map_err(|error| error.to_string())
}

/// The image's iPXE script with `extra` appended to its `kernel` line (the kernel's command
/// line); every other line is kept as it is.
pub fn ipxe_script_with_extra_arguments(script: &str, extra: &str) -> Result<String, String> {
    if extra.is_empty() {
        return Ok(script.to_string());
    }
    let mut changed = false;
    let mut output = String::with_capacity(script.len() + extra.len() + 1);
    for line in script.lines() {
        let trimmed = line.trim_start();
        if !changed && (trimmed.starts_with("kernel ") || trimmed.starts_with("chain ")) {
            output.push_str(line.trim_end());
            output.push(' ');
            output.push_str(extra);
            changed = true;
        } else {
            output.push_str(line);
        }
        output.push('\n');
    }
    if changed {
        Ok(output)
    } else {
        Err("the iPXE script has no `kernel` line to add the command line to".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipxe_script_gets_the_extra_arguments_on_its_kernel_line_only() {
        let script = kiln_image::boot_ipxe(ImageArch::X86_64, "console=tty0 console=ttyS0,115200");
        let changed =
            ipxe_script_with_extra_arguments(&script, "sshd.authorized_key=abc panic=-1").unwrap();
        insta::assert_snapshot!(changed, @r"
        #!ipxe

        kernel vmlinuz-x86_64 initrd=initramfs-x86_64 console=tty0 console=ttyS0,115200 sshd.authorized_key=abc panic=-1
        initrd initramfs-x86_64
        boot
        ");
        assert_eq!(
            ipxe_script_with_extra_arguments(&script, "").unwrap(),
            script
        );
        assert!(ipxe_script_with_extra_arguments("#!ipxe\nboot\n", "x").is_err());
    }

    #[test]
    fn a_manifest_listing_steps_and_services_gives_the_plan() {
        let manifest = serde_json::json!({
            "onboot": ["base", {"name": "dhcp", "timeout_ms": 90000}],
            "services": [{"name": "sshd"}],
        });
        let plan = boot_plan_from_manifest(&manifest).unwrap();
        assert_eq!(plan.onboot, ["base", "dhcp"]);
        assert_eq!(plan.services, ["sshd"]);
        assert!(boot_plan_from_manifest(&serde_json::json!({"files": []})).is_none());
    }

    #[test]
    fn the_last_init_json_of_concatenated_archives_wins() {
        use kiln_archive::{
            ArchivePath, ArchiveTree, Compression, Content, Entry, InitramfsOptions, ZstdSettings,
        };
        let archive = |config: &str, compression: Compression| {
            let tree = ArchiveTree::from_entries([
                Entry::directory(ArchivePath::new("etc").unwrap(), 0o755),
                Entry::directory(ArchivePath::new("etc/kiln").unwrap(), 0o755),
                Entry::file(
                    ArchivePath::new("etc/kiln/init.json").unwrap(),
                    0o644,
                    Content::Bytes(config.as_bytes().to_vec().into()),
                ),
            ])
            .unwrap();
            let mut bytes = Vec::new();
            let options = InitramfsOptions {
                mtime: 0,
                compression,
                early: None,
            };
            kiln_archive::write_initramfs(&tree, &options, &mut bytes, &mut |_| {}).unwrap();
            bytes
        };
        let mut bytes = archive(
            r#"{"onboot": [{"name": "a", "argv": ["/a"]}]}"#,
            Compression::Zstd(ZstdSettings::new(3, 1).unwrap()),
        );
        bytes.extend(archive(
            r#"{"services": [{"name": "b", "argv": ["/b"]}]}"#,
            Compression::None,
        ));
        let config = init_config_from_initramfs(&bytes).unwrap();
        let plan = BootPlan::from_config(&config, PlanSource::InitramfsConfig);
        assert!(plan.onboot.is_empty());
        assert_eq!(plan.services, ["b"]);
    }
}
