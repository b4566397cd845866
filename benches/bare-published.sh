#!/usr/bin/env bash
# Builds examples/bare_pingora.rs against the published Pingora crates, without the vendored
# patches (same features, release profile and locked versions as tokengate's build), and prints
# the binary's path: the "before" of every vendored change, for benches/floor.sh (BARE=) and
# benches/load.sh (BARE_PUBLISHED=).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/bare-published
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<'TOML'
[package]
name = "bare-published"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
pingora = { version = "0.9", default-features = false, features = ["proxy", "lb", "rustls"] }
async-trait = "0.1"

[[bin]]
name = "bare_pingora"
path = "src/main.rs"

[profile.release]
lto = "fat"
codegen-units = 1

[workspace]
TOML
cp examples/bare_pingora.rs "$dir/src/main.rs"
cp Cargo.lock "$dir/Cargo.lock" # the same versions; cargo drops what this crate does not use
cargo build --release --quiet --manifest-path "$dir/Cargo.toml" >&2
echo "$PWD/$dir/target/release/bare_pingora"
