# `kiln`: the xtask binary (the command line of every pipeline stage) and the crates it
# links, built by nixpkgs' rustPlatform with the toolchain of rust-toolchain.toml.
#
# Inputs: the Rust sources (Cargo.toml, Cargo.lock, xtask/, crates/, tests/), every crate
# in Cargo.lock (vendored by `cargoLock.lockFile`: the checksums in Cargo.lock are the
# pins), and the toolchain. The binary is installed as `bin/kiln` (and `bin/xtask`).
{ lib, rustPlatform, src, cargoLock, pkg-config }:
let
  workspace = builtins.fromTOML (builtins.readFile (src + "/Cargo.toml"));
in
rustPlatform.buildRustPackage {
  pname = "kiln";
  version = workspace.workspace.package.version;
  inherit src;
  cargoLock.lockFile = cargoLock;

  # Build the command line; the library crates come with it. The musl kiln-init is the
  # image's business (built inside `kiln image`), not this package's.
  cargoBuildFlags = [ "--package" "xtask" ];
  cargoTestFlags = [ "--workspace" ];
  nativeBuildInputs = [ pkg-config ];

  # The test suite is `checks.tests` (flake.nix), not part of every build of the tool.
  doCheck = false;

  postInstall = ''
    ln -s xtask $out/bin/kiln
  '';

  meta = {
    description = "kiln: reproducible provisioning images (kernel + initramfs) from pinned inputs";
    license = lib.licenses.asl20;
    mainProgram = "kiln";
    platforms = [ "x86_64-linux" "aarch64-linux" ];
  };
}
