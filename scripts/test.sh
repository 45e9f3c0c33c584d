#!/usr/bin/env bash
# Run every test: installs what is missing, fetches the real models, then
#  1. the Rust suite: CPU reference vs transformers/llama.cpp, tokenizer, chat templates,
#     sampler, thinking budget, WebGPU kernels and models on Mesa lavapipe;
#  2. the browser suite: the npm package in headless Chromium (WebGPU on SwiftShader, wasm CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-models.sh smollm2 qwen0.5b
scripts/fetch-test-data.sh
# Missing models or GPU adapter are failures here, never silent skips.
export PENSIVE_REQUIRE_MODELS=1 PENSIVE_REQUIRE_GPU=1
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo test --release --all-targets
# The CPU kernels compiled to wasm with simd128 (the browser's CPU backend) against the
# portable ones, under Node's WASI (scripts/wasi-run.mjs is the runner).
scripts/wasm-toolchain.sh
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
cargo test --release --target wasm32-wasip1 --lib quant
# Fuzzing: every target a few seconds on the committed seeds and regressions (the crashes a
# campaign found replay in `cargo test` above, tests/fuzz_regressions.rs). Installs nightly
# and cargo-fuzz itself.
FUZZ_CI=1 scripts/fuzz.sh 5
scripts/browser-test.sh
