//! kiln-init's bytes do not depend on where the checkout or target dir is.

use std::process::Command;

use kiln_image::init_binary::build_init_binary;
use kiln_image::ImageArch;
use kiln_tests::{run, workspace_root};

#[test]
#[ignore = "slow: builds kiln-init for both musl targets from two checkouts"]
fn init_binary_is_identical_from_two_checkouts() {
    let elsewhere = tempfile::tempdir().unwrap();
    let second_checkout = elsewhere.path().join("some/other/path/kiln");
    kiln_tests::copy_checkout(&second_checkout).unwrap();
    for arch in [ImageArch::X86_64, ImageArch::Aarch64] {
        let first_target = tempfile::tempdir().unwrap();
        let second_target = tempfile::tempdir().unwrap();
        let first = build_init_binary(&workspace_root(), first_target.path(), arch).unwrap();
        let second =
            build_init_binary(&second_checkout, &second_target.path().join("deeper"), arch)
                .unwrap();
        let (first_bytes, second_bytes) = (
            std::fs::read(&first).unwrap(),
            std::fs::read(&second).unwrap(),
        );
        assert!(
            first_bytes == second_bytes,
            "kiln-init for {} differs between checkouts",
            arch.name()
        );
        // A static ELF for the right machine.
        let file = run(Command::new("file").arg(&first))
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
        if let Ok(description) = file {
            assert!(
                description.contains("statically linked") || description.contains("static-pie"),
                "{description}"
            );
        }
        let machine = u16::from_le_bytes([first_bytes[18], first_bytes[19]]);
        assert_eq!(
            machine,
            if arch == ImageArch::X86_64 { 62 } else { 183 },
            "ELF e_machine"
        );
        eprintln!("kiln-init {}: {} bytes", arch.name(), first_bytes.len());
    }
}
