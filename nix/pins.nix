# The pins of kiln.lock, as Nix values: the one place the flake reads digests from.
#
# A pure function of the lock file: no nixpkgs, no network, no hash typed by hand.
# Everything the flake fetches is derived here from `builtins.fromJSON` of the lock
# that `cargo xtask lock` writes (format: crates/kiln-lock/src/lib.rs), so the xtask
# and `nix build` can never disagree about what an input is. tests/nix_flake.rs
# evaluates this file alone (`nix-instantiate --eval --strict --json`) against a
# modified copy of the lock to prove it.
{ lockFile }:
let
  lock = builtins.fromJSON (builtins.readFile lockFile);

  # Bumped by kiln-lock when a change is not a pure addition; refuse what we do not
  # understand rather than fetch the wrong thing.
  supportedVersion = 1;
  checkedLock =
    if lock.version == supportedVersion then lock
    else throw "kiln.lock format version ${toString lock.version} is not supported by nix/pins.nix (it reads version ${toString supportedVersion}): update nix/pins.nix";

  lastComponent = path: let parts = builtins.split "/" path; in builtins.elemAt parts (builtins.length parts - 1);

  # Store path names allow only [A-Za-z0-9+._?=-]; Debian file names carry `~`
  # (`ca-certificates_20250419~deb12u2_all.deb`). The name is part of the
  # fixed-output path, so it must be a pure function of the pin as well: the
  # xtask's `nix seed` (xtask/src/nix.rs) computes the same name to pre-load the
  # Nix store with files it fetched through apt.
  toStoreName = fileName: builtins.replaceStrings [ "~" ":" "%" " " ] [ "_" "_" "_" "_" ] fileName;

  isSha256Hex = text: builtins.match "[0-9a-f]{64}" text != null;
  checkedSha256 = what: sha256:
    if isSha256Hex sha256 then sha256
    else throw "${what} has sha256 `${sha256}` in kiln.lock, expected 64 lowercase hex digits: regenerate the lock with `cargo xtask lock`";

  debianPin = arch: package: rec {
    inherit (package) name version architecture filename size;
    targetArch = arch;
    fileName = lastComponent package.filename;
    storeName = toStoreName fileName;
    sha256 = checkedSha256 "package ${package.name} (${arch})" package.sha256;
    # nixpkgs' `mirror://debian` scheme: the Debian mirror list lives in nixpkgs, not
    # here (the project never names a mirror host).
    url = "mirror://debian/${package.filename}";
    requiredBy = package.required_by;
  };

  tarballPin = tarball: rec {
    inherit (tarball) name urls size;
    fileName = tarball.name;
    storeName = toStoreName tarball.name;
    sha256 = checkedSha256 "tarball ${tarball.name}" tarball.sha256;
    requiredBy = tarball.required_by;
  };

  architectures = builtins.attrNames checkedLock.architectures;

  debs = builtins.listToAttrs (map
    (arch: {
      name = arch;
      value = map (debianPin arch) checkedLock.architectures.${arch}.debian_packages;
    })
    architectures);

  tarballs = map tarballPin checkedLock.source_tarballs;

  # The same closure as `Lock::debian_packages_for_modules` (crates/kiln-lock): the
  # packages a module names (`required_by: module:<name>`), then, until nothing
  # changes, every package required by one already in.
  debsForModules = arch: modules:
    let
      pins = debs.${arch};
      direct = builtins.filter (pin: builtins.any (module: builtins.elem "module:${module}" pin.requiredBy) modules) pins;
      grow = names:
        let
          more = builtins.filter
            (pin: !(builtins.elem pin.name names)
              && builtins.any (parent: builtins.elem "package:${parent}" pin.requiredBy) names)
            pins;
        in
        if more == [ ] then names else grow (names ++ map (pin: pin.name) more);
      closure = grow (map (pin: pin.name) direct);
    in
    builtins.filter (pin: builtins.elem pin.name closure) pins;

  # The kernel source. The lock has no kernel.org tarball yet (issue 3 / issue 4): the
  # xtask builds from the tarball inside the pinned `linux-source-6.1` Debian package
  # (/usr/src/linux-source-6.1.tar.xz), so the flake does the same, from the same pin.
  # Once the lock pins a `linux-<version>.tar.xz` in `source_tarballs`, that wins here
  # and in the xtask alike.
  kernelTarballs = builtins.filter (tarball: builtins.match "linux-[0-9][0-9.]*\\.tar\\.(xz|gz)" tarball.name != null) tarballs;
  kernelPackages = arch: builtins.filter (pin: builtins.match "linux-source-[0-9.]+" pin.name != null) debs.${arch};
  kernelSource = arch:
    if kernelTarballs != [ ] then {
      kind = "tarball";
      pin = builtins.head kernelTarballs;
    }
    else if kernelPackages arch != [ ] then
      let pin = builtins.head (kernelPackages arch); in {
        kind = "debian-package";
        inherit pin;
        # Where linux-source-X.Y puts its tarball: usr/src/linux-source-X.Y.tar.xz.
        tarballInPackage = "usr/src/${pin.name}.tar.xz";
      }
    else throw "kiln.lock pins no kernel source for ${arch}: add the `kernel-source` module to a profile and run `cargo xtask lock`";

  # OCI images a module (`image:` source) or a profile (`embed_images:`) names, per
  # architecture. Nix cannot read a manifest before fetching it, so the lock records the
  # manifest's blobs too (config, layers: `blobs`), and every one of them, the manifest
  # included, is a fixed-output fetch whose hash is its digest (nix/oci-blob.nix). A
  # `mirror` (written by `cargo xtask push --write-lock`) changes where they are fetched
  # from, never what: the same digests, so the same store paths.
  isDigest = text: builtins.isString text && builtins.match "sha256:[0-9a-f]{64}" text != null;
  hexOfDigest = what: digest:
    if isDigest digest then builtins.substring 7 64 digest
    else throw "${what} has digest `${toString digest}` in kiln.lock, expected `sha256:` and 64 lowercase hex digits: regenerate the lock with `cargo xtask lock`";
  # `registry[:port]/repository[:tag][@digest]` (kiln-spec ImageReference: always with a
  # registry host) → { registry, repository }.
  splitReference = reference:
    let
      name = builtins.head (builtins.split "@" reference);
      parts = builtins.match "([^/]+)/(.+)" name;
      rest = builtins.elemAt parts 1;
      tagged = builtins.match "(.+):([^/:]+)" rest;
    in
    if parts == null then throw "image reference `${reference}` in kiln.lock names no registry"
    else { registry = builtins.elemAt parts 0; repository = if tagged == null then rest else builtins.head tagged; };
  ociImagePin = arch: image:
    let
      what = "image ${image.reference} (${arch})";
      source = splitReference (if (image.mirror or null) != null then image.mirror else image.reference);
      recordedBlobs = image.blobs or [ ];
      file = kind: blob: rec {
        inherit kind;
        inherit (blob) digest size;
        mediaType = blob.media_type;
        sha256 = hexOfDigest what blob.digest;
        storeName = "oci-blob-${sha256}";
        inherit (source) registry repository;
        # The registry API's address of the blob (the fetch script adds the token
        # exchange a registry may ask for).
        url = "https://${source.registry}/v2/${source.repository}/${kind}/${blob.digest}";
      };
      manifest = file "manifests" {
        digest = image.manifest_digest;
        size = image.manifest_size or 0;
        media_type = image.manifest_media_type or "application/vnd.oci.image.manifest.v1+json";
      };
      blobs =
        if recordedBlobs == [ ] || (image.manifest_size or 0) == 0
        then throw "${what} has no recorded blobs in kiln.lock (written before they were recorded): run `cargo xtask lock` to record them"
        else map (file "blobs") recordedBlobs;
    in
    {
      inherit (image) reference;
      requiredBy = image.required_by;
      manifestDigest = image.manifest_digest;
      inherit manifest blobs;
      files = [ manifest ] ++ blobs;
    };
  ociImages = builtins.listToAttrs (map
    (arch: {
      name = arch;
      value = map (ociImagePin arch) (checkedLock.architectures.${arch}.oci_images or [ ]);
    })
    architectures);

  # Every (url, sha256) the flake may fetch, deduplicated: an `Architecture: all`
  # package is pinned once per target but is one file.
  fetches =
    let
      debFetches = builtins.concatLists (map (arch: map (pin: { url = pin.url; inherit (pin) sha256 storeName; }) debs.${arch}) architectures);
      tarballFetches = builtins.concatLists (map (pin: map (url: { inherit url; inherit (pin) sha256 storeName; }) pin.urls) tarballs);
      ociFetches = builtins.concatLists (map (arch: builtins.concatLists (map (image: map (file: { inherit (file) url sha256 storeName; }) image.files) ociImages.${arch})) architectures);
      addUnique = seen: item: if builtins.elem item seen then seen else seen ++ [ item ];
    in
    builtins.foldl' addUnique [ ] (debFetches ++ tarballFetches ++ ociFetches);
in
{
  inherit architectures debs tarballs debsForModules kernelSource fetches toStoreName ociImages;
  sourceDateEpoch = checkedLock.source_date_epoch;
  debianArchitecture = arch: checkedLock.architectures.${arch}.debian_architecture;
  version = checkedLock.version;
}
