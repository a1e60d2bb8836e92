#!/bin/sh
# fetch-oci-blob.sh URL MEDIA_TYPE OUT: GET a manifest or blob from an OCI registry
# (distribution spec v2), doing the anonymous bearer-token exchange when the registry
# answers 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`. The caller
# (nix/oci-blob.nix, a fixed-output derivation) checks the digest of what arrives.
set -eu
url="$1"
media_type="$2"
out="$3"
accept="Accept: $media_type"

status="$(curl --silent --show-error --location --retry 3 --output "$out" \
  --write-out '%{http_code}' --dump-header headers.txt --header "$accept" "$url")"
if [ "$status" = 401 ]; then
  challenge="$(tr -d '\r' < headers.txt | grep -i '^www-authenticate: *bearer ' | tail -n 1 | sed 's/^[^ ]* *[Bb]earer *//')"
  [ -n "$challenge" ] || { echo "$url: 401 without a Bearer challenge; the flake fetches only anonymously readable images" >&2; exit 1; }
  field() { printf '%s\n' "$challenge" | tr ',' '\n' | sed -n "s/^ *$1=\"\\(.*\\)\"\$/\\1/p"; }
  realm="$(field realm)"
  service="$(field service)"
  scope="$(field scope)"
  token_url="$realm?service=$service"
  [ -z "$scope" ] || token_url="$token_url&scope=$scope"
  token="$(curl --silent --show-error --fail --location --retry 3 "$token_url" | jq -r '.token // .access_token // empty')"
  [ -n "$token" ] || { echo "$url: the token service $realm gave no token" >&2; exit 1; }
  status="$(curl --silent --show-error --location --retry 3 --output "$out" \
    --write-out '%{http_code}' --header "$accept" --header "Authorization: Bearer $token" "$url")"
fi
if [ "$status" != 200 ]; then
  echo "$url: HTTP $status" >&2
  exit 1
fi
