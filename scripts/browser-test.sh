#!/usr/bin/env bash
# Build the npm package (wasm32 + wasm-bindgen + wasm-opt) and run the browser tests in
# headless Chromium (tests/browser/, node's test runner + playwright-core).
# Installs what is missing: Debian's chromium, the wasm32 target, the pinned wasm-bindgen-cli
# (~7 min the first time), the npm dev dependencies. Called by scripts/test.sh; runs alone too.
#
# Usage: scripts/browser-test.sh [test files...]   (default: every tests/browser/*.test.mjs)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
if [ ! -x /usr/lib/chromium/chromium ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
command -v node >/dev/null && command -v npm >/dev/null || {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
}

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

# wasm-bindgen-cli must be exactly the crate's version from Cargo.lock.
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2 || true)
if [ "$have" != "$want" ]; then
  echo "browser-test: installing wasm-bindgen-cli $want (have: ${have:-none}; takes minutes)" >&2
  # --locked fails: its packaged lockfile pins a crate version the registry no longer serves.
  cargo install --quiet wasm-bindgen-cli --version "=$want"
fi

[ -d www/node_modules/binaryen ] || npm ci --prefix www --no-audit --no-fund
[ -d tests/browser/node_modules/playwright-core ] || npm ci --prefix tests/browser --no-audit --no-fund

scripts/fetch-models.sh smollm2
npm run build --prefix www

files=("$@"); [ ${#files[@]} -gt 0 ] || files=(tests/browser/*.test.mjs)
node --test --test-concurrency=1 "${files[@]}"
