#!/usr/bin/env bash
# Checks that the published pingora-core 0.9.1 with every patch of vendor/pingora-core.series
# applied in order, without fuzz, is byte for byte vendor/pingora-core/. Downloads the crate
# from crates.io (the build never does: the vendored copy replaces it).
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL -o "$work/core.crate" https://static.crates.io/crates/pingora-core/pingora-core-0.9.1.crate
tar -xzf "$work/core.crate" -C "$work"
mv "$work/pingora-core-0.9.1" "$work/pingora-core"
rm -f "$work/pingora-core/.cargo_vcs_info.json"
grep -v '^#' pingora-core.series | while read -r patch; do
  patch -s -p1 --fuzz=0 -d "$work" < "$patch"
done
diff -r "$work/pingora-core" pingora-core
echo "vendor/pingora-core is pingora-core 0.9.1 with $(grep -vc '^#' pingora-core.series) patches"
