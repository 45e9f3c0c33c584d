#!/usr/bin/env bash
# The main job: fetch SmolLM2, build, and run a native generation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-models.sh smollm2
cargo run --release --quiet -- generate --model models/smollm2-135m-instruct-q4_1.gguf \
  --chat "What is the capital of France?" --max-tokens 32 --temperature 0
