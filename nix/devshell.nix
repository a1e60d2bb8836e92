# `nix develop`: every host tool the xtask and the tests use (xtask/src/host.rs
# TEST_PACKAGES, the kernel build's tools, apt for `cargo xtask lock`), from nixpkgs.
{ pkgs, rustToolchain, hostArch, pkgsFor }:
let
  otherArch = if hostArch == "x86_64" then "aarch64" else "x86_64";
  crossCompiler = (pkgsFor otherArch).stdenv.cc;
  # The xtask calls cross tools by their Debian names (`aarch64-linux-gnu-gcc`,
  # crates/kiln-kernel/src/target.rs); nixpkgs names them `aarch64-unknown-linux-gnu-gcc`.
  debianTriple = { x86_64 = "x86_64-linux-gnu-"; aarch64 = "aarch64-linux-gnu-"; }.${otherArch};
  debianCrossNames = pkgs.runCommand "kiln-debian-cross-names" { } ''
    mkdir -p $out/bin
    for tool in ${crossCompiler}/bin/${crossCompiler.targetPrefix}* ${crossCompiler.bintools}/bin/${crossCompiler.targetPrefix}*; do
      name="$(basename "$tool")"
      ln -sf "$tool" "$out/bin/${debianTriple}''${name#${crossCompiler.targetPrefix}}"
    done
  '';
in
pkgs.mkShell {
  packages = with pkgs; [
    rustToolchain
    cargo-nextest
    # archives and images
    cpio
    zstd
    lz4
    xz
    gnutar
    dpkg
    apt
    skopeo
    diffoscopeMinimal
    xorriso
    # QEMU (both system emulators, with their edk2 firmware) and iPXE ROMs
    qemu
    ipxe
    # kernel builds, native and cross
    gnumake
    bc
    bison
    flex
    perl
    elfutils
    openssl
    kmod
    ncurses
    pkg-config
    crossCompiler
    debianCrossNames
    # the flake's own tools
    nixpkgs-fmt
    jq
  ];
}
