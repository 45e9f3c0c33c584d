#!/usr/bin/env bash
# Build the npm package (wasm32 + wasm-bindgen + wasm-opt) and the native CLI (the reference
# the browser's results are compared with), then run the browser tests in headless Chromium
# (tests/browser/, node's test runner + playwright-core).
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
scripts/wasm-toolchain.sh
# playwright-core drives Chromium; typescript type-checks index.d.ts; vite bundles the packed package.
for dep in playwright-core typescript vite; do
  [ -d "tests/browser/node_modules/$dep" ] || { npm ci --prefix tests/browser --no-audit --no-fund; break; }
done

scripts/fetch-models.sh smollm2
npm run build --prefix www
cargo build --release --quiet --bin pensive

files=("$@"); [ ${#files[@]} -gt 0 ] || files=(tests/browser/*.test.mjs)
node --test --test-concurrency=1 "${files[@]}"
