#!/usr/bin/env bash
# wasm CPU speed in headless Chromium, Pensive (single-thread and threaded builds) against
# wllama (llama.cpp in wasm, npm @wllama/wllama pinned in tests/browser/wllama/) on 1 and 2
# threads, on SmolLM2-135M Q4_1 and Qwen2.5-Coder-0.5B Q4_K_M: 64 greedy tokens after a short
# chat prompt. Not part of CI (timings): builds the package, installs what is missing, runs
# tests/browser/bench-cpu.mjs and prints one JSON line per measurement and a summary table.
#
# Usage: scripts/bench-browser.sh [bench-cpu.mjs options, e.g. --runs 3 --tokens 64]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
if [ ! -x /usr/lib/chromium/chromium ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
scripts/wasm-toolchain.sh
[ -d tests/browser/node_modules/playwright-core ] || npm ci --prefix tests/browser --no-audit --no-fund
[ -d tests/browser/wllama/node_modules/@wllama/wllama ] || npm ci --prefix tests/browser/wllama --no-audit --no-fund
scripts/fetch-models.sh smollm2 qwen0.5b
[ "${PENSIVE_BENCH_BUILD:-1}" = 0 ] || npm run build --prefix www
echo "machine: $(nproc) cores; $(uptime)" >&2
node tests/browser/bench-cpu.mjs "$@"
echo "after: $(uptime)" >&2
