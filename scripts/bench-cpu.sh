#!/usr/bin/env bash
# CPU speed, one thread, side by side with llama.cpp (issue 10's targets). A benchmark
# command, not part of CI.
#
# 1. Short context, per model (SmolLM2-135M Q4_1, Qwen2.5-Coder-0.5B Q4_K_M): a 128-token
#    prefill and 64 greedy decode steps, Pensive (`pensive bench --backend cpu --threads 1`)
#    and llama.cpp (tests/bench/llama_cpp_bench.py, n_threads=1) alternating, ROUNDS times
#    each; each process runs one warm-up round and reports its fastest of 2. Prints the best
#    tok/s of each and Pensive ÷ llama.cpp.
# 2. Long context, Pensive on Qwen2.5-0.5B: a 4096-token prefill then 64 decode steps after
#    those 4096 cached tokens (fastest of 2 rounds: one round of 32 steps varied by 1.5x); prints the 4096-token prefill rate ÷ the 128-token one, the
#    decode rate after 4096 ÷ after 128, and the peak RSS (VmHWM) of that process.
#    (LLAMA_LONG=1 runs llama.cpp's 4096-token prefill too.)
#
#   scripts/bench-cpu.sh
#   ROUNDS=3 PENSIVE=path/to/other/pensive scripts/bench-cpu.sh   # e.g. an older build
#   SKIP_LONG=1 / SKIP_LLAMA=1 / LLAMA_LONG=1
#
# llama.cpp is llama-cpp-python 0.3.36 built from its sdist (the version the real-model
# fixtures come from) in a venv outside the repository, $LLAMA_VENV (default
# ~/.cache/pensive/venv-llama-0.3.36). When it is missing this script makes it, which takes
# 15-25 minutes on 2 cores and needs python3-venv and a C/C++ compiler (pip brings cmake and
# ninja):
#   python3 -m venv "$LLAMA_VENV"
#   CMAKE_ARGS="-DGGML_NATIVE=ON" "$LLAMA_VENV/bin/pip" install numpy \
#       --no-binary llama-cpp-python llama-cpp-python==0.3.36
# Models: scripts/fetch-models.sh (models/ in the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
LLAMA_VENV=${LLAMA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/pensive/venv-llama-0.3.36}
SMOLLM2=models/smollm2-135m-instruct-q4_1.gguf
QWEN05=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

for m in "$SMOLLM2" "$QWEN05"; do
  [ -f "$m" ] || { echo "missing $m: run scripts/fetch-models.sh" >&2; exit 1; }
done

if [ -z "${PENSIVE:-}" ]; then
  cargo build --release --bin pensive
  PENSIVE=${CARGO_TARGET_DIR:-target}/release/pensive
fi

if [ -z "${SKIP_LLAMA:-}" ] && ! "$LLAMA_VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  echo "building llama-cpp-python 0.3.36 from its sdist into $LLAMA_VENV (15-25 min)" >&2
  python3 -m venv "$LLAMA_VENV"
  "$LLAMA_VENV/bin/pip" install --upgrade pip >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$LLAMA_VENV/bin/pip" install numpy \
    --no-binary llama-cpp-python llama-cpp-python==0.3.36 >&2
fi

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); pensive: $PENSIVE" >&2

# One JSON line per run, tagged "engine|model|kind", into $OUT/results.
run() {
  local tag=$1
  shift
  echo "  $tag: $*" >&2
  local line
  line=$("$@" | tail -1)
  printf '%s\t%s\n' "$tag" "$line" >>"$OUT/results"
}

for model in "$SMOLLM2" "$QWEN05"; do
  for round in $(seq "$ROUNDS"); do
    echo "round $round/$ROUNDS, $(basename "$model")" >&2
    run "pensive|$model|short" "$PENSIVE" bench --model "$model" --backend cpu --threads 1 \
      --prompt-tokens 128 --gen-tokens 64 --repeats 2
    if [ -z "${SKIP_LLAMA:-}" ]; then
      run "llama.cpp|$model|short" "$LLAMA_VENV/bin/python" tests/bench/llama_cpp_bench.py \
        --model "$model" --threads 1 --prompt-tokens 128 --gen-tokens 64 --repeats 2
    fi
  done
done

if [ -z "${SKIP_LONG:-}" ]; then
  echo "long context, $(basename "$QWEN05")" >&2
  run "pensive|$QWEN05|long" "$PENSIVE" bench --model "$QWEN05" --backend cpu --threads 1 \
    --prompt-tokens 4096 --gen-tokens 64 --repeats 2
  if [ -n "${LLAMA_LONG:-}" ] && [ -z "${SKIP_LLAMA:-}" ]; then
    run "llama.cpp|$QWEN05|long" "$LLAMA_VENV/bin/python" tests/bench/llama_cpp_bench.py \
      --model "$QWEN05" --threads 1 --prompt-tokens 4096 --gen-tokens 32 --warmup 0 --repeats 1
  fi
fi

echo "machine load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 - "$OUT/results" <<'EOF'
import json, os, sys
best = {}
for line in open(sys.argv[1]):
    tag, js = line.rstrip("\n").split("\t", 1)
    d = json.loads(js)
    b = best.setdefault(tag, {"prefill": 0.0, "decode": 0.0, "rss": 0.0})
    b["prefill"] = max(b["prefill"], d["prefill_tok_s"] or 0.0)
    b["decode"] = max(b["decode"], d["decode_tok_s"] or 0.0)
    b["rss"] = max(b["rss"], d.get("peak_rss_mb") or 0.0)

def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"

print(f"{'model':<48} {'engine':<10} {'prefill tok/s':>13} {'decode tok/s':>13} {'peak RSS MB':>12}")
models = sorted({t.split("|")[1] for t in best}, key=lambda m: ("qwen" in m, m))
for m in models:
    for kind in ("short", "long"):
        for eng in ("pensive", "llama.cpp"):
            b = best.get(f"{eng}|{m}|{kind}")
            if b:
                name = os.path.basename(m) + (" @4096" if kind == "long" else " @128")
                print(f"{name:<48} {eng:<10} {b['prefill']:>13.1f} {b['decode']:>13.2f} {b['rss']:>12.0f}")
print()
for m in models:
    p, l = best.get(f"pensive|{m}|short"), best.get(f"llama.cpp|{m}|short")
    if p and l:
        print(f"{os.path.basename(m)}: pensive / llama.cpp, 1 thread: prefill {ratio(p['prefill'], l['prefill'])}, decode {ratio(p['decode'], l['decode'])}")
    s, g = best.get(f"pensive|{m}|short"), best.get(f"pensive|{m}|long")
    if s and g:
        print(f"{os.path.basename(m)}: pensive 4096-token prefill / 128-token prefill {ratio(g['prefill'], s['prefill'])} (target >= 0.5x); "
              f"decode after 4096 / after 128 {ratio(g['decode'], s['decode'])} (target >= 0.6x); peak RSS at 4096: {g['rss']:.0f} MB")
EOF
