# A stand-in for nixpkgs, for tests/nix_flake.rs only: nixpkgs cannot be fetched where the
# tests run, but what the flake *asks* of nixpkgs can still be checked. Every builder here
# returns its arguments as plain data (fetchurl → { url, sha256, ... }, mkDerivation → its
# attributes), so a test can evaluate `packages.<system>.<name>` and read which files a
# derivation would fetch, with which hash, and which fragments a kernel merges in which
# order. Nothing here builds anything.
{ system ? "x86_64-linux", overlays ? [ ], crossSystem ? null }:
let
  targetPrefixOf = { aarch64-multiplatform = "aarch64-unknown-linux-gnu-"; gnu64 = "x86_64-unknown-linux-gnu-"; };
  package = name: { stubPackage = name; outPath = "/stub/${name}"; };
  packageSet = targetPrefix:
    let
      self = {
        inherit system;
        lib = { licenses.asl20 = "Apache-2.0"; };
        fetchurl = arguments: arguments // { stubFetch = true; outPath = "/stub/fetched/${arguments.name}"; };
        stdenv = {
          cc = (package "cc") // { inherit targetPrefix; bintools = package "bintools"; };
          mkDerivation = attributes: attributes // { stubDerivation = true; outPath = "/stub/derivation"; };
        };
        runCommand = name: environment: script:
          (environment.passthru or { }) // { inherit name environment script; stubDerivation = true; outPath = "/stub/${name}"; };
        writeText = name: text: package name;
        callPackage = function: arguments: function (self // arguments);
        mkShell = attributes: attributes // { stubShell = true; };
        makeRustPlatform = toolchain: {
          buildRustPackage = attributes: attributes // { stubDerivation = true; outPath = "/stub/kiln"; overrideAttrs = f: attributes // f attributes; };
        };
        rust-bin.fromRustupToolchainFile = path: package "rust-toolchain";
        buildPackages = self;
        pkgsCross = {
          aarch64-multiplatform = packageSet targetPrefixOf.aarch64-multiplatform;
          gnu64 = packageSet targetPrefixOf.gnu64;
        };
      };
      tools = builtins.listToAttrs (map (name: { inherit name; value = package name; }) [
        "bc" "bison" "flex" "perl" "openssl" "elfutils" "kmod" "python3" "dpkg" "xz" "zstd" "gnutar" "gawk" "jq"
        "cpio" "skopeo" "diffoscopeMinimal" "xorriso" "qemu" "ipxe" "gnumake" "ncurses" "pkg-config"
        "nixpkgs-fmt" "cargo-nextest" "apt" "curl" "cacert"
      ]);
    in
    tools // self;
in
packageSet ""
