#!/usr/bin/env bash
# Install what building the npm package needs, if missing: node/npm, the wasm32 Rust target,
# nightly Rust with rust-src (the threaded build), wasm-bindgen-cli of exactly the crate's version (minutes, once) and the npm dev dependencies
# (wasm-opt from the npm package binaryen; never Debian's, which breaks the module).
# Used by scripts/demo.sh and scripts/browser-test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
command -v node >/dev/null && command -v npm >/dev/null || {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
}
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# The threaded build (www/scripts/build.mjs) rebuilds std with atomics: nightly and its sources
# (scripts/fuzz.sh uses the same nightly). No wasm32 target needed: -Z build-std builds it.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
rustup component list --toolchain nightly --installed | grep -q '^rust-src' \
  || rustup component add --toolchain nightly rust-src
# wasm-bindgen-cli must be exactly the crate's version from Cargo.lock.
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2 || true)
if [ "$have" != "$want" ]; then
  echo "wasm-toolchain: installing wasm-bindgen-cli $want (have: ${have:-none}; takes minutes)" >&2
  # --locked fails: its packaged lockfile pins a crate version the registry no longer serves.
  cargo install --quiet wasm-bindgen-cli --version "=$want"
fi
[ -d www/node_modules/binaryen ] || npm ci --prefix www --no-audit --no-fund
