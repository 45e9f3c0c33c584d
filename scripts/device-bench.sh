#!/usr/bin/env bash
# GPU speed on a lent machine that has a real GPU but no Rust toolchain, no network and no
# room to carry model files: build and strip the two benches here, carry target/device there
# (about 13 MiB), run this script there. The benches use synthetic weights with the real
# shapes and GGUF types of the models (speed does not depend on weight values).
#
#   here:   scripts/device-bench.sh --prepare
#   there:  bash target/device/device-bench.sh      (with target/device carried)
set -euo pipefail
if [ "${1:-}" = "--prepare" ]; then
  cd "$(dirname "$0")/.."
  cargo build --release --example synthetic_bench --example gpu_bench
  mkdir -p target/device
  for b in synthetic_bench gpu_bench; do strip -o "target/device/$b" "target/release/examples/$b"; done
  # The Vulkan loader, in case the device image lacks it (the NVIDIA ICD comes with the driver).
  cp -L /usr/lib/x86_64-linux-gnu/libvulkan.so.1 target/device/ 2>/dev/null || true
  cp "$0" target/device/device-bench.sh
  exit 0
fi
cd "$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tail -1 || true
# Vulkan needs the driver's graphics capability in the container.
echo "NVIDIA_DRIVER_CAPABILITIES=${NVIDIA_DRIVER_CAPABILITIES:-unset}"
export LD_LIBRARY_PATH=$PWD:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
export XDG_RUNTIME_DIR=$(mktemp -d) WGPU_BACKEND=vulkan
# The sweep of issue 9: decode after 0 / 1k / 4k / 16k cached tokens, greedy and sampled
# (T 0.6, top_p 0.95, on the device), for the R1-Distill-1.5B and Qwen3-0.6B shapes; then
# where the time goes (GPU time per kernel entry point, timestamp queries) at 0 and 4k.
for shape in r1-1.5b qwen3-0.6b; do
  for context in 0 1024 4096 16384; do
    for t in 0 0.6; do
      timeout 60 ./synthetic_bench --shape "$shape" --backend gpu --prompt-tokens 128 --gen-tokens 64 \
        --context "$context" --temperature "$t" || echo "gpu $shape context $context T $t failed"
    done
  done
  for context in 0 4096; do
    timeout 60 ./synthetic_bench --shape "$shape" --backend gpu --prompt-tokens 16 --gen-tokens 16 \
      --context "$context" --temperature 0.6 --profile || echo "profile $shape $context failed"
  done
done
