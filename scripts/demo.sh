#!/usr/bin/env bash
# The main job: build the npm package (wasm + JS), fetch SmolLM2-135M-Instruct, and serve the
# demo page on 127.0.0.1 — open the printed URL, press Load, chat (Send, Regenerate). Also prints the
# same generation as a one-line native command.
#
# Usage: scripts/demo.sh [--port 8080]
set -euo pipefail
cd "$(dirname "$0")/.."
port=8080
[ "${1:-}" = "--port" ] && port="${2:?--port needs a number}"

scripts/setup.sh
scripts/fetch-models.sh smollm2
scripts/wasm-toolchain.sh
npm run build --prefix www

cat <<MSG

Natively, the same model and thinking budget in one line:
  cargo run --release -- generate --model models/smollm2-135m-instruct-q4_1.gguf --chat "What is the capital of France?" --temperature 0 --think-open --think-min 8 --think-max 16 --max-tokens 40

In the browser (WebGPU when the browser has it, else the wasm CPU backend):
MSG
exec node www/serve.mjs --port "$port" --quiet
