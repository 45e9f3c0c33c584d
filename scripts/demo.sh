#!/usr/bin/env bash
# The main job: build the npm package (wasm + JS), fetch SmolLM2-135M-Instruct, and serve the
# demo page on 127.0.0.1 — open the printed URL, press Load, ask, Generate. Also prints the
# same generation as a one-line native command.
#
# Usage: scripts/demo.sh [--port 8080]
set -euo pipefail
cd "$(dirname "$0")/.."
port=8080
[ "${1:-}" = "--port" ] && port="${2:?--port needs a number}"

scripts/setup.sh
scripts/fetch-models.sh smollm2
command -v node >/dev/null && command -v npm >/dev/null || {
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
}
# Toolchain for the browser build: the wasm32 target, wasm-bindgen-cli of exactly the crate's
# version (minutes, once), and the npm dev dependencies (wasm-opt).
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
have=$(wasm-bindgen --version 2>/dev/null | cut -d' ' -f2 || true)
if [ "$have" != "$want" ]; then
  echo "demo: installing wasm-bindgen-cli $want (once; takes minutes)" >&2
  cargo install --quiet wasm-bindgen-cli --version "=$want"
fi
[ -d www/node_modules/binaryen ] || npm ci --prefix www --no-audit --no-fund
npm run build --prefix www

cat <<MSG

Natively, the same model and thinking budget in one line:
  cargo run --release -- generate --model models/smollm2-135m-instruct-q4_1.gguf --chat "What is the capital of France?" --temperature 0 --think-open --think-min 8 --think-max 16 --max-tokens 40

In the browser (WebGPU when the browser has it, else the wasm CPU backend):
MSG
exec node www/serve.mjs --port "$port" --quiet
