{
  description = "kiln: reproducible provisioning images (kernel + initramfs) built from the pins in kiln.lock";

  inputs = {
    # nixpkgs, pinned in flake.lock to rev 50ab793786d9de88ee30ec4e4c24fb4236fc2674 of the
    # nixos-24.11 branch (lastModified 1751274312 = 2025-06-30), narHash
    # sha256-/bVBlRpECLVzjV19t5KMdMFWSwKLtb5RyXdjz3LJT+g=. Nothing here can fetch nixpkgs,
    # so these are public facts copied, not computed. Where from:
    #   - the narHash and lastModified of the nixos-24.11 tarball are in the public file
    #     labs/lab18/app_python/flake.lock of github.com/inno-devops-labs/DevOps-Core-Course;
    #   - the same narHash + lastModified paired with this rev, as a `github` node whose
    #     `original.ref` is nixos-24.11, appear in several public flake.lock excerpts found
    #     through the code search index, and several public .nix files fetch
    #     github.com/NixOS/nixpkgs/archive/50ab7937...tar.gz with the base32 hash
    #     1s2gr5rcyqvpr58vxdcb095mdhblij9bfzaximrva2243aal3dgx, which
    #     `nix hash to-sri --type sha256` turns into exactly the narHash above.
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

    # rust-toolchain.toml pins rustc 1.95.0 (the init's bytes depend on the compiler), and
    # the workspace says rust-version = 1.95; nixos-24.11's rustc is far older. rust-overlay
    # provides exactly the toolchain of rust-toolchain.toml; nixpkgs' rustPlatform
    # (buildRustPackage, cargoLock) still does the build. Pinned in flake.lock to rev
    # 4852a8aa041c94af55e136cde5b8b6d42c3563e8 (lastModified 1778469574 = 2026-05-11, after
    # the 1.95.0 release), narHash sha256-NTZzJ7xJvMXOonYqut3WLUhryeZj5QuuL0ANcqS7d30=, as a
    # public flake.lock found through the code search index records them (the same rev is
    # the `github:oxalica/rust-overlay/<rev>` input of public flake.nix files).
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, rust-overlay }:
    let
      # Only builtins at this level, no nixpkgs.lib: the attribute names of every output
      # (which kernels, which images) are then computable without nixpkgs, and
      # tests/nix_flake.rs checks them with a stub nixpkgs (nix/tests/stub-nixpkgs.nix).
      pins = import ./nix/pins.nix { lockFile = ./kiln.lock; };
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forSystems = function: builtins.listToAttrs (map (system: { name = system; value = function system; }) systems);
      outputsFor = system: import ./nix/outputs.nix {
        inherit system pins;
        nixpkgs = nixpkgs;
        rustOverlay = rust-overlay;
        root = ./.;
      };
    in
    {
      packages = forSystems (system: (outputsFor system).packages);
      checks = forSystems (system: (outputsFor system).checks);
      devShells = forSystems (system: (outputsFor system).devShells);
      formatter = forSystems (system: nixpkgs.legacyPackages.${system}.nixpkgs-fmt);
      # For `nix eval .#lib.pins` and for downstream flakes that want the same pins.
      lib = { inherit pins; };
    };
}
