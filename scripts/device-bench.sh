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
for shape in r1-1.5b qwen0.5b; do
  timeout 150 ./synthetic_bench --shape "$shape" --backend gpu --prompt-tokens 128 --gen-tokens 64 || echo "gpu $shape failed"
done
timeout 60 ./gpu_bench --synthetic qwen1.5b --prompt-tokens 128 --gen-tokens 64 || echo "gpu_bench failed"
