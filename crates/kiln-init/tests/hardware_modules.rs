//! `kiln-init --load-hardware-modules` (the `kmod` onboot step) as the image runs it, on a
//! fake sysfs and module tree under `KILN_ROOT`. The module files exist nowhere, so the host
//! kernel is never touched: opening them fails before `finit_module(2)` is reached.

use std::fs;
use std::process::Command;

#[test]
fn load_hardware_modules_reads_a_fake_sysfs() {
    let directory = tempfile::tempdir().unwrap();
    let root = directory.path();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let modules = root.join("lib/modules").join(release.trim());
    fs::create_dir_all(&modules).unwrap();
    for (device, alias) in [
        (
            "pci/devices/0000:00:03.0",
            "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00",
        ),
        ("virtio/devices/virtio1", "virtio:d00000001v00001AF4"),
        ("platform/devices/serial8250", "platform:serial8250"),
    ] {
        fs::create_dir_all(root.join("sys/bus").join(device)).unwrap();
        fs::write(
            root.join("sys/bus").join(device).join("modalias"),
            format!("{alias}\n"),
        )
        .unwrap();
    }
    fs::write(
        modules.join("modules.alias"),
        "# Aliases extracted from modules themselves.\n\
         alias pci:v00008086d000010D3sv*sd*bc*sc*i* kiln_test_e1000e\n\
         alias pci:v00001AF4d00001041sv*sd*bc*sc*i* kiln_test_virtio_net\n\
         alias virtio:d00000001v* kiln_test_virtio_net\n\
         alias pci:v*d*sv*sd*bc02sc00i* kiln_test_any_ethernet\n\
         alias usb:v*p*d*dc*dsc*dp*ic09isc*ip*in* kiln_test_usb_hub\n",
    )
    .unwrap();
    // kiln_test_virtio_net's file is missing; kiln_test_any_ethernet is not in modules.dep.
    fs::write(
        modules.join("modules.dep"),
        "kernel/drivers/net/kiln_test_virtio_net.ko: kernel/drivers/net/kiln_test_failover.ko\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kiln-init"))
        .arg("--load-hardware-modules")
        .env("KILN_ROOT", root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}");
    assert_eq!(
        text,
        "kmod: cannot load kiln_test_virtio_net: its dependency kiln_test_failover: No such file or directory (os error 2), skipped\n\
         kmod: cannot load kiln_test_any_ethernet: not in /lib/modules/.../modules.dep, skipped\n\
         kmod: loaded 0 module(s) for the detected hardware, 2 failed\n"
    );
}
