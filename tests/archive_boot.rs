//! The kernel reads our archives: boot a real kernel in QEMU with an
//! initramfs made by `cargo xtask initramfs` and see its /init run.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use kiln_tests::{qemu, run, xtask};

#[test]
#[ignore = "slow: downloads Debian's kernel and boots it in QEMU (TCG)"]
fn kernel_runs_init_from_our_zstd_initramfs_and_reads_an_archive_appended_to_it() {
    kernel_runs_init_from_our_initramfs(&[]);
}

/// The legacy LZ4 stream is read by `lib/decompress_unlz4.c`, a different decoder from the
/// one `lz4 -d` uses: only a boot shows the kernel accepts our chunks, and that the stream's
/// end mark lets an archive appended behind it (a second initrd) reach the root too.
#[test]
#[ignore = "slow: downloads Debian's kernel and boots it in QEMU (TCG)"]
fn kernel_runs_init_from_our_lz4_initramfs_and_reads_an_archive_appended_to_it() {
    kernel_runs_init_from_our_initramfs(&["--lz4"]);
}

fn kernel_runs_init_from_our_initramfs(compression: &[&str]) {
    let kernel = qemu::debian_x86_64_kernel().unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is installed (/bin/busybox)");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    // A hard link and an early (uncompressed) segment, so the boot also
    // proves the kernel accepts both.
    std::fs::hard_link(root.join("bin/busybox"), root.join("bin/poweroff")).unwrap();
    let init = root.join("init");
    std::fs::write(
        &init,
        "#!/bin/sh\n/bin/busybox mkdir -p /proc\n/bin/busybox mount -t proc proc /proc\n\
         echo \"KILN-INIT-RAN pid=$$ links=$(/bin/busybox stat -c %h /bin/poweroff) appended=$(/bin/busybox cat /appended)\"\n\
         /bin/poweroff -f\n",
    )
    .unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let early = work.path().join("early");
    std::fs::create_dir_all(early.join("kernel/x86/microcode")).unwrap();
    std::fs::write(early.join("kernel/x86/microcode/AuthenticAMD.bin"), b"").unwrap();

    let image = work.path().join("initramfs");
    let mut arguments = vec![
        "initramfs",
        "--root",
        root.to_str().unwrap(),
        "--early-root",
        early.to_str().unwrap(),
        "--out",
        image.to_str().unwrap(),
    ];
    arguments.extend_from_slice(compression);
    run(xtask(&arguments).env("SOURCE_DATE_EPOCH", "1747699200")).unwrap();
    // A plain archive appended, as a boot loader concatenates a second initrd: at a 4-byte
    // boundary (iPXE and GRUB align each initrd; the kernel looks for a newc header only
    // there, and skips the zeros before it).
    let extra_root = work.path().join("extra");
    std::fs::create_dir_all(&extra_root).unwrap();
    std::fs::write(extra_root.join("appended"), "yes").unwrap();
    let extra = work.path().join("extra.cpio");
    run(xtask(&[
        "initramfs",
        "--root",
        extra_root.to_str().unwrap(),
        "--out",
        extra.to_str().unwrap(),
        "--no-compress",
    ])
    .env("SOURCE_DATE_EPOCH", "1747699200"))
    .unwrap();
    let mut bytes = std::fs::read(&image).unwrap();
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.extend(std::fs::read(&extra).unwrap());
    std::fs::write(&image, bytes).unwrap();

    let log = qemu::boot_x86_64(
        &kernel,
        &image,
        "console=ttyS0 panic=-1",
        "KILN-INIT-RAN pid=1 links=2 appended=yes",
        Duration::from_secs(180),
    )
    .unwrap();
    assert!(
        log.marker_seen,
        "the kernel did not run our /init as PID 1 within 180 s; last console lines:\n{}",
        log.tail(60)
    );
    eprintln!("booted to /init in {:.1}s", log.elapsed.as_secs_f64());
}
