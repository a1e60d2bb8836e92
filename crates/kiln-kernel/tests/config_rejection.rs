//! A fragment asking for what Kconfig cannot give fails the build before compiling, with
//! every such option named and a reason, against the real kernel source's Kconfig files.

mod common;

use kiln_kernel::{Arch, Flavor, KernelCache, KernelError};

/// The repository's fragments plus `extra` appended to `flavor/virt-aarch64.config`.
fn fragments_with(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = common::workspace_root().join("kernel-configs");
    for entry in walkdir::WalkDir::new(&source) {
        let entry = entry.unwrap();
        let relative = entry.path().strip_prefix(&source).unwrap();
        let target = dir.path().join(relative);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
    let fragment = dir.path().join("flavor/virt-aarch64.config");
    let mut text = std::fs::read_to_string(&fragment).unwrap();
    text.push_str(extra);
    std::fs::write(fragment, text).unwrap();
    dir
}

#[test]
#[ignore = "slow: extracts the kernel source once per cache (~30 s), then make tinyconfig + olddefconfig (~20 s)"]
fn options_kconfig_cannot_enable_fail_with_name_and_reason() {
    let configs = fragments_with(
        "# x86-only: the x32 ABI.\nCONFIG_X86_X32_ABI=y\n# USB NICs without USB support.\nCONFIG_USB_USBNET=m\n# A typo.\nCONFIG_VIRTIO_NETT=y\n",
    );
    let cache = KernelCache::from_environment().expect("HOME or KILN_CACHE");
    let request = common::request(Arch::Aarch64, Flavor::Virt, configs.path().to_path_buf());
    let error =
        kiln_kernel::configure_kernel(&request, &cache, &mut kiln_kernel::build::NoProgress)
            .unwrap_err();
    let KernelError::ConfigRejected { problems, .. } = &error else {
        panic!("expected a rejected config, got: {error}")
    };
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!(lines.join("\n"), @r#"
    CONFIG_USB_USBNET=m (flavor/virt-aarch64.config:8) is not set: missing dependency: USB_USBNET `depends on USB_NET_DRIVERS` (drivers/net/usb/Kconfig:133) with USB_NET_DRIVERS=n; USB_NET_DRIVERS `depends on USB && NET` (drivers/net/usb/Kconfig:8) with USB=n, NET=y; USB `depends on USB_SUPPORT` (drivers/usb/Kconfig:44) with USB_SUPPORT=n; USB `depends on USB_ARCH_HAS_HCD` (drivers/usb/Kconfig:44) with USB_ARCH_HAS_HCD=n; USB_ARCH_HAS_HCD `depends on USB_SUPPORT` (drivers/usb/Kconfig:41) with USB_SUPPORT=n; enable those in a fragment too
    CONFIG_VIRTIO_NETT=y (flavor/virt-aarch64.config:10) is not set: no Kconfig file of this kernel defines it: check the spelling, or whether this kernel version renamed or removed it
    CONFIG_X86_X32_ABI=y (flavor/virt-aarch64.config:6) is not set: wrong architecture: defined only for arch/x86
    "#);
    let message = error.to_string();
    assert!(
        message.contains("3 requested kernel option(s) did not survive"),
        "{message}"
    );
    // Nothing was published for these inputs.
    let key = kiln_kernel::build::prepare_inputs(&request).unwrap().key;
    assert!(!cache.artifact_dir(&key).exists());
}
