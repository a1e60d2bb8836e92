# Every output of the flake for one build system (x86_64-linux or aarch64-linux).
#
# Names come from the repository, never from a list kept here: target architectures from
# kiln.lock, kernel flavors from kernel-configs/flavor/<flavor>.config, profiles from
# profiles/<profile>.yaml. Adding a profile adds `image-<profile>-<arch>` outputs.
{ system, pins, nixpkgs, rustOverlay, root }:
let
  hostArchOf = { x86_64-linux = "x86_64"; aarch64-linux = "aarch64"; };
  hostArch = hostArchOf.${system} or (throw "kiln's flake builds on x86_64-linux and aarch64-linux, not ${system}");

  pkgs = import nixpkgs {
    inherit system;
    overlays = [ rustOverlay.overlays.default ];
  };

  # The toolchain of rust-toolchain.toml, exactly: same rustc as `cargo xtask`.
  rustToolchain = pkgs.rust-bin.fromRustupToolchainFile (root + "/rust-toolchain.toml");
  rustPlatform = pkgs.makeRustPlatform { cargo = rustToolchain; rustc = rustToolchain; };

  # Cross package sets for the other architecture; the native set for our own.
  pkgsFor = arch:
    if arch == hostArch then pkgs
    else if arch == "aarch64" then pkgs.pkgsCross.aarch64-multiplatform
    else if arch == "x86_64" then pkgs.pkgsCross.gnu64
    else throw "no cross package set for target ${arch}";

  suffixOf = suffix: name:
    let match = builtins.match "(.*)\\.${suffix}" name; in if match == null then null else builtins.head match;
  namesIn = directory: suffix: pattern:
    builtins.filter (name: name != null && builtins.match pattern name != null)
      (map (suffixOf suffix) (builtins.attrNames (builtins.readDir directory)));

  # `virt.config`, `generic.config` are flavors; `virt-aarch64.config` is an overlay of one.
  flavors = namesIn (root + "/kernel-configs/flavor") "config" "[a-z0-9]+";
  profiles = namesIn (root + "/profiles") "yaml" "[A-Za-z0-9_.-]+";
  targets = pins.architectures;

  # Only what each derivation reads, so editing README.md rebuilds nothing.
  subtree = name: paths: builtins.path {
    inherit name;
    path = root;
    filter = path: type:
      let relative = builtins.substring (builtins.stringLength (toString root) + 1) (-1) (toString path);
      in builtins.any (wanted: relative == wanted || builtins.substring 0 (builtins.stringLength wanted + 1) relative == "${wanted}/"
        || builtins.substring 0 (builtins.stringLength relative + 1) wanted == "${relative}/") paths;
  };
  rustSource = subtree "kiln-source" [ "Cargo.toml" "Cargo.lock" "rust-toolchain.toml" ".cargo" "xtask" "crates" "tests" "kiln.lock" "modules" "profiles" "kernel-configs" ];
  kernelConfigs = subtree "kiln-kernel-configs" [ "kernel-configs" ];
  imageInputs = subtree "kiln-image-inputs" [ "kiln.lock" "modules" "profiles" "kernel-configs" ];

  kiln = pkgs.callPackage ./kiln.nix { inherit rustPlatform; src = rustSource; cargoLock = root + "/Cargo.lock"; };

  kernel = flavor: arch: import ./kernel.nix {
    inherit pins flavor arch hostArch;
    pkgs = pkgsFor arch;
    configs = kernelConfigs;
    configScript = ./kernel-config.sh;
  };

  # A profile may say which kernel flavor it boots (`flavor: generic`); issue 5 is still
  # shaping the profile schema, so until it settles this only looks for that one key and
  # defaults to `virt`, the flavor CI boots.
  flavorOf = profile:
    let
      text = builtins.readFile (root + "/profiles/${profile}.yaml");
      found = builtins.match ".*\n[ ]*flavor: *([a-z0-9]+).*" ("\n" + text);
    in
    if found == null then "virt" else builtins.head found;

  # A profile that boots Debian's kernel (`kernel: {debian_package: ...}`) has its package
  # pinned in kiln.lock with `required_by: profile:<name>` (for every profile that inherits
  # it too). Its image derivation gets no kernel derivation: the package is among the
  # fetched pins, and `kiln image` imports it from the store as the xtask does.
  debianKernelPin = profile: arch:
    let found = builtins.filter (pin: builtins.elem "profile:${profile}" pin.requiredBy) pins.debs.${arch};
    in if found == [ ] then null else builtins.head found;
  imageKernel = profile: arch:
    if debianKernelPin profile arch != null then null else kernel (flavorOf profile) arch;

  image = profile: arch: salt: import ./image.nix {
    inherit pkgs pins kiln profile arch salt;
    kernel = imageKernel profile arch;
    debianKernel = debianKernelPin profile arch;
    inputs = imageInputs;
  };

  named = list: builtins.listToAttrs list;
  kernels = named (builtins.concatLists (map (flavor: map (arch: { name = "kernel-${flavor}-${arch}"; value = kernel flavor arch; }) targets) flavors));
  images = named (builtins.concatLists (map (profile: map (arch: { name = "image-${profile}-${arch}"; value = image profile arch ""; }) targets) profiles));
in
{
  packages = kernels // images // { inherit kiln; default = kiln; };

  checks = {
    # The fast tier of the test suite (what plain `cargo test` runs).
    tests = kiln.overrideAttrs (previous: {
      pname = "kiln-tests";
      doCheck = true;
      nativeCheckInputs = (previous.nativeCheckInputs or [ ]) ++ (with pkgs; [ cpio zstd lz4 skopeo dpkg gnutar xz ]);
      # Nix cannot run inside a Nix build (no writable store in the sandbox): the tests of
      # tests/nix_flake.rs that evaluate the flake run in `cargo xtask test` instead. Its
      # tests that need no Nix (the kernel config script against kiln-kernel) still run.
      checkFlags = map (name: "--skip=${name}") [
        "every_nix_file_parses"
        "pins_fetch_exactly_the_packages_and_tarballs_of_the_lock"
        "changing_a_pin_in_a_copy_of_the_lock_changes_the_flakes_fetch_hash"
        "a_malformed_pin_is_refused_at_evaluation_naming_the_package"
        "the_flake_fetches_exactly_the_lock_through_its_derivations"
        "the_flake_has_a_kernel_per_flavor_and_arch_and_an_image_per_profile_and_arch"
        "each_image_boots_the_kernel_its_profile_names"
        "an_image_pin_is_fetched_blob_by_blob_by_digest_from_a_real_registry"
        "each_kernel_derivation_merges_the_fragments_the_xtask_merges_in_its_order"
        "seeded_blobs_are_the_paths_of_the_flakes_fixed_output_fetches_and_need_no_network"
        "flake_lock_is_consistent_with_the_inputs_of_flake_nix_and_its_comments"
      ];
    });

    # kiln.lock and the flake's fetch list are the same set (the Rust test does this too;
    # here it runs wherever `nix flake check` runs).
    pins-match-lock = pkgs.runCommand "kiln-pins-match-lock" { nativeBuildInputs = [ pkgs.jq ]; } ''
      jq -c '[.architectures[].debian_packages[] | {url: ("mirror://debian/" + .filename), sha256}] | unique' ${root + "/kiln.lock"} > lock.json
      jq -c '[.[] | {url, sha256}] | unique' ${pkgs.writeText "pins.json" (builtins.toJSON pins.fetches)} > pins.json
      cmp lock.json pins.json
      touch $out
    '';
  }
  # Reproducibility: each image on this host's architecture is built a second time as an
  # independent derivation (a different `salt` only changes the derivation, not the
  # bytes), then both SHA256SUMS must match and both trees be identical.
  // named (map
    (profile: {
      name = "reproducible-${profile}-${hostArch}";
      value = pkgs.runCommand "kiln-reproducible-${profile}-${hostArch}" { nativeBuildInputs = [ pkgs.diffoscopeMinimal ]; } ''
        first=${image profile hostArch ""}
        second=${image profile hostArch "second build"}
        if ! cmp "$first/SHA256SUMS" "$second/SHA256SUMS" || ! diff -r "$first" "$second" >/dev/null; then
          diffoscope "$first" "$second" || true
          echo "image ${profile} (${hostArch}) is not reproducible: the two builds differ (diffoscope above)" >&2
          exit 1
        fi
        cp "$first/SHA256SUMS" $out
      '';
    })
    profiles);

  devShells.default = import ./devshell.nix { inherit pkgs rustToolchain hostArch pkgsFor; };
}
