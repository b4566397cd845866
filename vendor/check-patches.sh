#!/usr/bin/env bash
# Checks that each vendored Pingora crate is the published 0.9.1 crate with every patch of its
# series (vendor/<crate>.series) applied in order, without fuzz, byte for byte. Downloads the
# crates from crates.io (the build never does: the vendored copies replace them).
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.9.1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for series in *.series; do
  crate=${series%.series}
  curl -fsSL -o "$work/$crate.crate" "https://static.crates.io/crates/$crate/$crate-$VERSION.crate"
  tar -xzf "$work/$crate.crate" -C "$work"
  mv "$work/$crate-$VERSION" "$work/$crate"
  rm -f "$work/$crate/.cargo_vcs_info.json"
  { grep -v '^#' "$series" || true; } | while read -r patch; do
    patch -s -p1 --fuzz=0 -d "$work" < "$patch"
  done
  diff -r "$work/$crate" "$crate"
  echo "vendor/$crate is $crate $VERSION with $(grep -vc '^#' "$series" || true) patches"
done
