//! PID 1 of the kernel boot tests: proves the kernel found the initramfs, unpacked it
//! (zstd), ran a static ELF and gave it a console.
fn main() {
    println!("kiln-kernel-boot-ok arch={}", std::env::consts::ARCH);
}
