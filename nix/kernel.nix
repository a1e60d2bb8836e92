# `kernel-<flavor>-<arch>`: a Linux kernel built the way `cargo xtask kernel` builds it.
#
# Inputs, and nothing else:
#   - the kernel source pinned in kiln.lock (nix/pins.nix `kernelSource`): today the
#     tarball inside the pinned `linux-source-6.1` Debian package, fetched by its sha256;
#     a kernel.org tarball in the lock's `source_tarballs` replaces it when pinned;
#   - the fragments of kernel-configs/ in the xtask's merge order (common.config,
#     arch/<arch>.config, flavor/<flavor>.config, flavor/<flavor>-<arch>.config if present:
#     crates/kiln-kernel/src/fragment.rs `fragment_names`), merged onto the flavor's base
#     config (`tinyconfig` for virt, `defconfig` for generic), then `make olddefconfig`;
#   - nix/kernel-config.sh, which merges and then fails the build if any requested option
#     did not survive (the xtask's check, ported; tests/nix_flake.rs compares the two);
#   - the compiler of nixpkgs (cross for the other architecture) and
#     `source_date_epoch` from the lock.
# Output: the kernel artifact's files (crates/kiln-kernel/src/artifact.rs): vmlinuz,
# System.map, config, modules.tar, dtbs.tar (aarch64), kernel.json.
{ pkgs, pins, flavor, arch, hostArch, configs, configScript }:
let
  inherit (pkgs) stdenv buildPackages;
  source = pins.kernelSource arch;
  sourceFile = pkgs.fetchurl (
    if source.kind == "tarball"
    then { name = source.pin.storeName; urls = source.pin.urls; sha256 = source.pin.sha256; }
    else { name = source.pin.storeName; url = source.pin.url; sha256 = source.pin.sha256; }
  );

  kernelArch = { x86_64 = "x86_64"; aarch64 = "arm64"; }.${arch};
  image = { x86_64 = { target = "bzImage"; path = "arch/x86/boot/bzImage"; }; aarch64 = { target = "Image"; path = "arch/arm64/boot/Image"; }; }.${arch};
  hasDeviceTrees = arch == "aarch64";
  baseTarget = { virt = "tinyconfig"; generic = "defconfig"; }.${flavor} or (throw "kernel flavor ${flavor} has no base config: add it to nix/kernel.nix and crates/kiln-kernel/src/target.rs");

  optionalFragment = "flavor/${flavor}-${arch}.config";
  fragmentNames = [ "common.config" "arch/${arch}.config" "flavor/${flavor}.config" ]
    ++ (if builtins.pathExists (configs + "/kernel-configs/${optionalFragment}") then [ optionalFragment ] else [ ]);
  fragmentArguments = builtins.concatStringsSep " " (map (name: "'${name}=${configs}/kernel-configs/${name}'") fragmentNames);

  crossPrefix = if arch == hostArch then "" else stdenv.cc.targetPrefix;
  makeFlags = "O=$NIX_BUILD_TOP/build ARCH=${kernelArch}" + (if crossPrefix == "" then "" else " CROSS_COMPILE=${crossPrefix}");
in
stdenv.mkDerivation {
  pname = "kiln-kernel-${flavor}-${arch}";
  version = source.pin.version or source.pin.name;
  src = sourceFile;

  # Host tools run on the build machine (spliced: build-platform packages even when
  # cross-compiling); HOSTCC needs a native compiler beside the cross one.
  depsBuildBuild = [ buildPackages.stdenv.cc ];
  nativeBuildInputs = with buildPackages; [ bc bison flex perl openssl elfutils kmod python3 dpkg xz zstd gnutar gawk jq ];
  buildInputs = [ ];

  # The reproducible environment of crates/kiln-kernel/src/build.rs `MakeInvocation`.
  SOURCE_DATE_EPOCH = toString pins.sourceDateEpoch;
  KBUILD_BUILD_USER = "kiln";
  KBUILD_BUILD_HOST = "kiln";
  KBUILD_BUILD_VERSION = "1";
  LC_ALL = "C";
  TZ = "UTC";
  # nixpkgs' default hardening flags are for userland; the kernel picks its own.
  hardeningDisable = [ "all" ];
  enableParallelBuilding = true;

  unpackPhase = ''
    runHook preUnpack
    ${if source.kind == "debian-package" then ''
      # The pinned .deb carries the source as a tarball; take out just that file.
      dpkg-deb --fsys-tarfile "$src" | tar -xf - ./${source.tarballInPackage}
      tar -xf ${source.tarballInPackage}
    '' else ''
      tar -xf "$src"
    ''}
    for directory in linux*/; do
      if [ -f "$directory/Makefile" ]; then sourceRoot="$directory"; fi
    done
    [ -n "''${sourceRoot:-}" ] || { echo "the pinned kernel source holds no top-level directory with a Makefile" >&2; exit 1; }
    runHook postUnpack
  '';

  configurePhase = ''
    runHook preConfigure
    export KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %e %H:%M:%S UTC %Y')"
    # Paths of this sandbox must not reach the binaries (KCFLAGS as in build.rs).
    export KCFLAGS="-ffile-prefix-map=$PWD/= -ffile-prefix-map=$NIX_BUILD_TOP/build/="
    export KAFLAGS="$KCFLAGS"
    mkdir -p "$NIX_BUILD_TOP/build"
    make ${makeFlags} ${baseTarget}
    sh ${configScript} merge "$NIX_BUILD_TOP/build/.config" ${fragmentArguments} > merged.config
    cp merged.config "$NIX_BUILD_TOP/build/.config"
    make ${makeFlags} olddefconfig
    sh ${configScript} check "$NIX_BUILD_TOP/build/.config" ${fragmentArguments}
    runHook postConfigure
  '';

  buildPhase = ''
    runHook preBuild
    make ${makeFlags} -j$NIX_BUILD_CORES ${image.target} modules ${if hasDeviceTrees then "dtbs" else ""}
    runHook postBuild
  '';

  installPhase = ''
    runHook preInstall
    build="$NIX_BUILD_TOP/build"
    mkdir -p $out modules-stage
    make ${makeFlags} INSTALL_MOD_PATH="$PWD/modules-stage" INSTALL_MOD_STRIP=1 DEPMOD=${buildPackages.kmod}/bin/depmod modules_install
    release="$(cat "$build/include/config/kernel.release")"
    # Symlinks back into this sandbox's build directory: meaningless in an image.
    rm -f "modules-stage/lib/modules/$release/build" "modules-stage/lib/modules/$release/source"
    deterministic_tar() {
      tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
        --format=gnu --pax-option=delete=atime,delete=ctime -C "$1" -cf "$2" .
    }
    deterministic_tar modules-stage $out/modules.tar
    ${if hasDeviceTrees then ''
      mkdir -p dtbs-stage
      make ${makeFlags} INSTALL_DTBS_PATH="$PWD/dtbs-stage" dtbs_install
      deterministic_tar dtbs-stage $out/dtbs.tar
    '' else ""}
    cp "$build/${image.path}" $out/vmlinuz
    cp "$build/System.map" $out/System.map
    cp "$build/.config" $out/config
    # kernel.json in the shape of crates/kiln-kernel/src/artifact.rs, so `kiln image`
    # takes this directory as it takes one `cargo xtask kernel` built. The key names the
    # derivation (its inputs), since Nix, not the xtask, decided them.
    compiler="$(${crossPrefix}gcc --version | head -n1)"
    linker="$(${crossPrefix}ld --version | head -n1)"
    make_version="$(make --version | head -n1)"
    files_json=$(cd $out && for name in *; do
      printf '%s\t%s\t%s\n' "$name" "$(sha256sum "$name" | cut -d' ' -f1)" "$(stat -c %s "$name")"
    done | jq -R -s 'split("\n") | map(select(length > 0) | split("\t") | {key: .[0], value: {sha256: .[1], size: (.[2] | tonumber)}}) | from_entries')
    jq -n \
      --arg key "nix-$(basename $out)" --arg arch ${arch} --arg release "$release" \
      --argjson epoch "$SOURCE_DATE_EPOCH" --arg flavor ${flavor} --arg source_sha256 ${source.pin.sha256} \
      --argjson fragments '${builtins.toJSON fragmentNames}' \
      --arg compiler "$compiler" --arg linker "$linker" --arg make "$make_version" \
      --argjson files "$files_json" \
      '{format: 1, key: $key, arch: $arch, release: $release, source_date_epoch: $epoch,
        origin: {kind: "built", flavor: $flavor, source_sha256: $source_sha256, fragments: $fragments,
                 toolchain: {compiler: $compiler, linker: $linker, make: $make}},
        key_material: ("built by nix: " + $key), files: $files}' > $out/kernel.json
    runHook postInstall
  '';

  # What tests/nix_flake.rs compares with the xtask (via a stub nixpkgs).
  passthru = { inherit fragmentNames crossPrefix kernelArch baseTarget source; };

  meta = {
    description = "kiln ${flavor} kernel for ${arch}, from the source pinned in kiln.lock";
    platforms = [ "x86_64-linux" "aarch64-linux" ];
  };
}
