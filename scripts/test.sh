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
# --no-fail-fast: one failing binary must not hide the others in the log.
cargo test --release --all-targets --no-fail-fast
# The CPU kernels compiled to wasm with simd128 (the browser's CPU backend) against the
# portable ones, under Node's WASI (scripts/wasi-run.mjs is the runner).
scripts/wasm-toolchain.sh
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
cargo test --release --target wasm32-wasip1 --lib quant
# Again as the relaxed-SIMD module (the package's second build, crate/quant/int8.rs), under a
# Node whose V8 runs relaxed SIMD correctly (22; Debian's 18/20 lack it or have it wrong),
# from the npm registry.
NODE_PKG=node-linux-$(uname -m | sed 's/x86_64/x64/; s/aarch64/arm64/')
NODE_RELAXED_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/pensive/node-22
NODE_RELAXED=$NODE_RELAXED_DIR/node_modules/$NODE_PKG/bin/node
[ -x "$NODE_RELAXED" ] || npm install --prefix "$NODE_RELAXED_DIR" --no-audit --no-fund --silent "$NODE_PKG@22"
CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="-C target-feature=+simd128,+relaxed-simd" \
  CARGO_TARGET_WASM32_WASIP1_RUNNER="$NODE_RELAXED scripts/wasi-run.mjs" \
  PENSIVE_EXPECT_RELAXED_SIMD=1 cargo test --release --target wasm32-wasip1 --lib quant
# Fuzzing: every target a few seconds on the committed seeds and regressions (the crashes a
# campaign found replay in `cargo test` above, tests/fuzz_regressions.rs). Installs nightly
# and cargo-fuzz itself.
FUZZ_CI=1 scripts/fuzz.sh 5
scripts/browser-test.sh
