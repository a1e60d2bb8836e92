//! The artifact key: a sha256 over everything that decides a kernel artifact's bytes.
//! Same key ⇒ same artifact, so a build whose key exists does no work. Pure.

use sha2::{Digest, Sha256};

use crate::fragment::Fragment;
use crate::target::{Arch, Flavor};

/// Bump when the build recipe changes in a way the other inputs do not capture (make
/// targets, environment, artifact layout): every cached kernel is rebuilt.
pub const FORMAT_VERSION: u32 = 1;

/// The compilers and tools whose version changes the output: the first line of
/// `CC --version` (the cross compiler for aarch64), `LD --version` and `make --version`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ToolchainIdentity {
    pub compiler: String,
    pub linker: String,
    pub make: String,
}

/// Everything the key covers.
#[derive(Debug, Clone)]
pub struct KeyInputs<'a> {
    pub source_sha256: &'a str,
    pub arch: Arch,
    pub flavor: Flavor,
    pub fragments: &'a [Fragment],
    pub toolchain: &'a ToolchainIdentity,
    /// Stamped into the kernel (`uname -v`) and every modules.tar entry.
    pub source_date_epoch: u64,
}

/// The canonical text that is hashed: one `name value` line per input, fragment contents
/// by their own sha256. Kept readable so `kernel.json` can show what a key stands for.
pub fn key_material(inputs: &KeyInputs<'_>) -> String {
    let mut text = format!("kiln-kernel-artifact format {FORMAT_VERSION}\n");
    text.push_str(&format!("source sha256:{}\n", inputs.source_sha256));
    text.push_str(&format!("arch {}\n", inputs.arch));
    text.push_str(&format!(
        "flavor {} base {}\n",
        inputs.flavor,
        inputs.flavor.base_config_target()
    ));
    for fragment in inputs.fragments {
        text.push_str(&format!(
            "fragment {} sha256:{}\n",
            fragment.name,
            hex::encode(Sha256::digest(fragment.text.as_bytes()))
        ));
    }
    text.push_str(&format!("compiler {}\n", inputs.toolchain.compiler));
    text.push_str(&format!("linker {}\n", inputs.toolchain.linker));
    text.push_str(&format!("make {}\n", inputs.toolchain.make));
    text.push_str(&format!("source_date_epoch {}\n", inputs.source_date_epoch));
    text
}

/// Hex sha256 of [`key_material`].
pub fn artifact_key(inputs: &KeyInputs<'_>) -> String {
    hex::encode(Sha256::digest(key_material(inputs).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs_with<'a>(
        fragments: &'a [Fragment],
        toolchain: &'a ToolchainIdentity,
    ) -> KeyInputs<'a> {
        KeyInputs {
            source_sha256: "4d415b3d364834fd818270e88813e90323bbfce4f519a0e6bd4940ddcd7df693",
            arch: Arch::Aarch64,
            flavor: Flavor::Virt,
            fragments,
            toolchain,
            source_date_epoch: 1_700_000_000,
        }
    }

    fn toolchain() -> ToolchainIdentity {
        ToolchainIdentity {
            compiler: "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0".to_string(),
            linker: "GNU ld (GNU Binutils for Debian) 2.40".to_string(),
            make: "GNU Make 4.3".to_string(),
        }
    }

    #[test]
    fn material_lists_every_input() {
        let fragments = [Fragment {
            name: "common.config".to_string(),
            text: "CONFIG_NET=y\n".to_string(),
        }];
        let toolchain = toolchain();
        insta::assert_snapshot!(key_material(&inputs_with(&fragments, &toolchain)), @r#"
        kiln-kernel-artifact format 1
        source sha256:4d415b3d364834fd818270e88813e90323bbfce4f519a0e6bd4940ddcd7df693
        arch aarch64
        flavor virt base tinyconfig
        fragment common.config sha256:739cf63f0ebde652da15d8e9d5b89bce594996644d5cd1cb0b933b0257cda3fb
        compiler aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0
        linker GNU ld (GNU Binutils for Debian) 2.40
        make GNU Make 4.3
        source_date_epoch 1700000000
        "#);
    }

    #[test]
    fn every_input_changes_the_key() {
        let fragments = [Fragment {
            name: "common.config".to_string(),
            text: "CONFIG_NET=y\n".to_string(),
        }];
        let toolchain = toolchain();
        let base = artifact_key(&inputs_with(&fragments, &toolchain));
        let mut changed = Vec::new();
        let edited = [Fragment {
            name: "common.config".to_string(),
            text: "CONFIG_NET=y\n# comment\n".to_string(),
        }];
        changed.push(artifact_key(&inputs_with(&edited, &toolchain)));
        changed.push(artifact_key(&KeyInputs {
            arch: Arch::X86_64,
            ..inputs_with(&fragments, &toolchain)
        }));
        changed.push(artifact_key(&KeyInputs {
            flavor: Flavor::Generic,
            ..inputs_with(&fragments, &toolchain)
        }));
        changed.push(artifact_key(&KeyInputs {
            source_date_epoch: 1,
            ..inputs_with(&fragments, &toolchain)
        }));
        changed.push(artifact_key(&KeyInputs {
            source_sha256: "00",
            ..inputs_with(&fragments, &toolchain)
        }));
        let other_compiler = ToolchainIdentity {
            compiler: "gcc 13".to_string(),
            ..toolchain.clone()
        };
        changed.push(artifact_key(&inputs_with(&fragments, &other_compiler)));
        for key in &changed {
            assert_ne!(key, &base);
        }
        assert_eq!(base, artifact_key(&inputs_with(&fragments, &toolchain)));
    }
}
