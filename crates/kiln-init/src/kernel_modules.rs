//! Loading kernel modules with `finit_module(2)` (no kmod in the image), in the order of the
//! config (the assembler writes `modules.dep` order: dependencies first).
//!
//! *Architecture Invariant*: a module that fails to load is reported and the boot goes on; a
//! missing NIC driver must leave a machine that still reaches its console and shell.

use crate::config::KernelModuleEntry;
use crate::syscall::Syscall;

/// What happened to one module; [`ModuleLoadOutcome::marker`] is its console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleLoadOutcome {
    /// Loaded now.
    Loaded(String),
    /// `EEXIST`: built in or loaded before.
    AlreadyLoaded(String),
    /// Any other failure, with the reason.
    Failed(String, String),
}

impl ModuleLoadOutcome {
    /// The console marker, without `kiln: `.
    pub fn marker(&self) -> String {
        match self {
            ModuleLoadOutcome::Loaded(name) => format!("module {name} loaded"),
            ModuleLoadOutcome::AlreadyLoaded(name) => format!("module {name} already loaded"),
            ModuleLoadOutcome::Failed(name, reason) => {
                format!("module {name} failed to load ({reason})")
            }
        }
    }
}

/// `/lib/modules/6.1.0/kernel/drivers/net/igc.ko.xz` → `igc`.
pub fn module_name(path: &std::path::Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = file.split(".ko").next().unwrap_or(&file);
    stem.to_string()
}

/// Loads every module in order.
pub fn load_kernel_modules(
    syscall: &dyn Syscall,
    modules: &[KernelModuleEntry],
) -> Vec<ModuleLoadOutcome> {
    modules
        .iter()
        .map(|module| {
            let name = module_name(&module.path);
            match syscall.finit_module(&module.path, &module.args) {
                Ok(()) => ModuleLoadOutcome::Loaded(name),
                Err(error) if error.errno() == Some(libc::EEXIST) => {
                    ModuleLoadOutcome::AlreadyLoaded(name)
                }
                Err(error) => ModuleLoadOutcome::Failed(name, error.source.to_string()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::RecordingSyscall;

    #[test]
    fn loads_in_order_and_tolerates_eexist() {
        let syscall = RecordingSyscall::new();
        syscall.fail_calls_starting_with("finit_module /lib/modules/k/crc32c.ko", libc::EEXIST);
        syscall.fail_calls_starting_with("finit_module /lib/modules/k/igc.ko", libc::ENOEXEC);
        let modules: Vec<KernelModuleEntry> = serde_json::from_str(
            r#"[{"path":"/lib/modules/k/crc32c.ko"},
                {"path":"/lib/modules/k/libcrc32c.ko.xz"},
                {"path":"/lib/modules/k/igc.ko","args":"debug=1"},
                {"path":"/lib/modules/k/virtio_net.ko.zst","args":"napi_tx=1"}]"#,
        )
        .unwrap();
        let outcomes = load_kernel_modules(&syscall, &modules);
        insta::assert_snapshot!(syscall.transcript(), @r#"
        finit_module /lib/modules/k/crc32c.ko args="" -> errno 17
        finit_module /lib/modules/k/libcrc32c.ko.xz args=""
        finit_module /lib/modules/k/igc.ko args="debug=1" -> errno 8
        finit_module /lib/modules/k/virtio_net.ko.zst args="napi_tx=1"
        "#);
        let markers: Vec<String> = outcomes.iter().map(ModuleLoadOutcome::marker).collect();
        insta::assert_snapshot!(markers.join("\n"), @r"
        module crc32c already loaded
        module libcrc32c loaded
        module igc failed to load (Exec format error (os error 8))
        module virtio_net loaded
        ");
    }
}
