# One blob of a pinned OCI image (its manifest, config or a layer), fetched from the
# image's registry (or the lock's mirror of it) as a fixed-output derivation whose hash is
# the blob's digest: Nix checks the bytes, so the registry is trusted for nothing.
#
# Input: one entry of `files` of an image in nix/pins.nix `ociImages`. The store path
# depends only on `storeName` and the digest, so `cargo xtask nix seed` can put the blob
# the xtask already pulled at the same path (`nix-store --add-fixed sha256`) and no
# network is needed.
{ pkgs, file }:
pkgs.runCommand file.storeName
{
  nativeBuildInputs = [ pkgs.curl pkgs.jq ];
  outputHashMode = "flat";
  outputHashAlgo = "sha256";
  outputHash = file.sha256;
  SSL_CERT_FILE = "${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt";
  # Proxies of the builder's environment, as nixpkgs' own fetchers pass them.
  impureEnvVars = [ "http_proxy" "https_proxy" "ftp_proxy" "all_proxy" "no_proxy" ];
  blobUrl = file.url;
  blobMediaType = file.mediaType;
  passthru = { inherit file; };
}
  ''
    sh ${./fetch-oci-blob.sh} "$blobUrl" "$blobMediaType" "$out"
  ''
