#!/usr/bin/env bash
# Run every test: installs what is missing, fetches the real models, then the Rust suite
# (CPU reference, tokenizer, chat templates, thinking budget, WebGPU kernels on lavapipe).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-models.sh smollm2 qwen0.5b
[ -x scripts/fetch-test-data.sh ] && scripts/fetch-test-data.sh
# Missing models or GPU adapter are failures here, never silent skips.
export PENSIVE_REQUIRE_MODELS=1 PENSIVE_REQUIRE_GPU=1
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo test --release --all-targets "$@"
