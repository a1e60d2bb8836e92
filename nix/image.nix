# `image-<profile>-<arch>`: a provisioning image, assembled by `kiln image` with no network.
#
# Inputs, and nothing else:
#   - every Debian package kiln.lock pins for <arch>, and every source tarball, each a
#     fixed-output derivation keyed by the lock's sha256 (nix/pins.nix);
#   - every blob (manifest, config, layers) of every OCI image the lock pins for <arch>,
#     each a fixed-output derivation keyed by its digest (nix/oci-blob.nix): the store
#     `kiln image --offline` reads then holds them as the xtask's pulls would;
#   - the kernel derivation of the profile's flavor (nix/kernel.nix), or, for a profile
#     that boots Debian's kernel package, that package (one of the pins below, `kernel`
#     null, `debianKernel` its pin): `kiln image` imports it from the store;
#   - the `kiln` package (nix/kiln.nix), and kiln.lock, modules/, profiles/,
#     kernel-configs/ as they are in the repository;
#   - `source_date_epoch` from the lock.
# The store `kiln image --offline` reads is built here from the fetched files, in the
# layout crates/kiln-store owns: `$KILN_CACHE/blobs/sha256/<hex>` + `oci-layout`.
#
# Interface expected of `kiln image` (issue 5, being written): with KILN_CACHE set and
# KILN_ROOT naming the repository inputs,
#   kiln image --arch <arch> --profile <profile> --offline \
#              --kernel-artifact <dir with kernel.json> --out <dir>
# writes vmlinuz-<arch>, initramfs-<arch>, cmdline, boot.ipxe, <profile>_<arch>.tar.gz,
# manifest.json and SHA256SUMS into <dir>, touching nothing outside KILN_CACHE and <dir>.
{ pkgs, pins, kiln, kernel, profile, arch, inputs, salt ? "", debianKernel ? null }:
let
  fetchPin = pin: pkgs.fetchurl (
    if pin ? url
    then { name = pin.storeName; url = pin.url; sha256 = pin.sha256; }
    else { name = pin.storeName; urls = pin.urls; sha256 = pin.sha256; }
  );
  # All of the architecture's pins, not only the profile's closure: which modules a
  # profile uses is `kiln image`'s question (profiles are YAML with `extends`), and the
  # fetches are shared fixed-output derivations, downloaded once for every image.
  # And every blob of every OCI image the lock pins for <arch> (manifests, configs,
  # layers; nix/oci-blob.nix), once each: two images may share a layer.
  ociFiles = builtins.foldl'
    (seen: file: if builtins.any (other: other.sha256 == file.sha256) seen then seen else seen ++ [ file ])
    [ ]
    (builtins.concatLists (map (image: image.files) pins.ociImages.${arch}));
  fetched = map (pin: { inherit pin; file = fetchPin pin; }) (pins.debs.${arch} ++ pins.tarballs)
    ++ map (file: { pin = file; file = import ./oci-blob.nix { inherit pkgs file; }; }) ociFiles;
  placeBlob = item: ''
    place_blob ${item.file} ${item.pin.sha256} ${toString item.pin.size}
  '';
in
pkgs.runCommand "kiln-image-${profile}-${arch}"
{
  nativeBuildInputs = [ kiln ];
  SOURCE_DATE_EPOCH = toString pins.sourceDateEpoch;
  KILN_ROOT = inputs;
  # Only the reproducibility check sets this: a second, independent derivation with the
  # same inputs. It never reaches the image.
  kilnReproducibilitySalt = salt;
  passthru = { inherit fetched kernel debianKernel profile arch; };
  meta.description = "kiln image `${profile}` for ${arch}, assembled offline from the pins in kiln.lock";
}
  ''
    export KILN_CACHE="$TMPDIR/kiln-cache"
    mkdir -p "$KILN_CACHE/blobs/sha256" "$KILN_CACHE/tmp" "$KILN_CACHE/import" "$KILN_CACHE/state"
    printf '{"imageLayoutVersion":"1.0.0"}' > "$KILN_CACHE/oci-layout"
    # A blob is named by its sha256 and read-only (crates/kiln-store); the fixed-output
    # derivation already proved the digest, this re-checks what the store promises.
    place_blob() {
      actual="$(sha256sum "$1" | cut -d' ' -f1)"
      size="$(stat -c %s "$1")"
      if [ "$actual" != "$2" ] || [ "$size" != "$3" ]; then
        echo "$1: sha256 $actual ($size bytes), kiln.lock says $2 ($3 bytes)" >&2
        exit 1
      fi
      cp "$1" "$KILN_CACHE/blobs/sha256/$2"
      chmod 0444 "$KILN_CACHE/blobs/sha256/$2"
    }
    ${builtins.concatStringsSep "" (map placeBlob fetched)}
    cd "$KILN_ROOT"
    kiln image --arch ${arch} --profile ${profile} --offline --no-setup \
      ${if kernel == null then "" else "--kernel-artifact ${kernel}"} --out "$TMPDIR/out"
    mkdir -p $out
    cp -r "$TMPDIR/out"/. $out/
  ''
