#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, nightly Rust).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   FUZZ_RUNS=1000000 scripts/fuzz.sh 0 TARGET...   (a campaign: stop after that many executions;
#                                                   SECONDS_PER_TARGET 0 = no time limit)
#   FUZZ_TIMEOUT=N: seconds one input may take before it counts as a hang (default 10; a
#   render at the template's fuel bound takes ~1.3 s on an idle core, more on a busy machine)
#
# Runs each target for SECONDS_PER_TARGET (default 300) on fuzz/corpus/<target> (grown from
# the committed seeds fuzz/seeds/<target> and fuzz/regressions/<target>), one after the
# other, and prints executions and findings per target. A crash leaves its input in
# fuzz/artifacts/<target>/: minimize it (`cargo +nightly fuzz tmin <target> <file>`), commit
# it to fuzz/regressions/<target>/ (tests/fuzz_regressions.rs replays it) and fix the bug.
# CI runs it with a few seconds per target on the committed inputs only (FUZZ_CI=1).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-300}"
shift || true
ALL=(gguf_header gguf_stream safetensors tokenizer_gguf chat_template options_json thinking)
TARGETS=("${ALL[@]}")
[ $# -gt 0 ] && TARGETS=("$@")

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal --component rust-src
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
# The same dependency versions as the crate itself (libfuzzer-sys is added on top).
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock
# Its own target dir: the sanitizer build shares nothing with the main one.
export CARGO_TARGET_DIR="$PWD/fuzz/target"
# Debug assertions on (integer overflow panics), no sanitizer: the targets are safe Rust,
# and without ASan the build is much faster and each run several times quicker.
FLAGS=(--release --debug-assertions --sanitizer none)
# One build for every target (shared dependencies).
cargo +nightly fuzz build "${FLAGS[@]}" >&2

status=0
summary=""
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  dirs=("fuzz/corpus/$t" "fuzz/seeds/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  # CI: read the committed inputs, write nothing back into the checkout, and draw the same
  # mutations every time (-seed): a short CI run repeats the start of what a longer run with
  # the same seed explored, instead of drawing new inputs each time; campaigns find those.
  seed=()
  [ "${FUZZ_CI:-0}" = 1 ] && { dirs=("$(mktemp -d)" "${dirs[@]:1}"); seed=(-seed=1); }
  runs=()
  [ -n "${FUZZ_RUNS:-}" ] && runs=(-runs="$FUZZ_RUNS")
  log="fuzz/artifacts/$t/last-run.log"
  set +e
  # -rss_limit_mb / -malloc_limit_mb: an allocation the input did not pay for (a size taken
  # from a header) is a finding, not a slow run. -timeout: a template or tokenizer that
  # loops is one too.
  cargo +nightly fuzz run "${FLAGS[@]}" "$t" "${dirs[@]}" -- \
    -max_total_time="$SECONDS_PER_TARGET" "${runs[@]}" "${seed[@]}" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout="${FUZZ_TIMEOUT:-10}" \
    -max_len=65536 -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 || true)
  crashes=$(find "fuzz/artifacts/$t" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' -o -name 'leak-*' \) | wc -l)
  line="$t: rc=$rc executions=$execs ${cov:-} artifacts=$crashes"
  echo "$line"
  summary+="$line"$'\n'
  [ "$rc" -ne 0 ] && { status=1; tail -30 "$log" >&2; }
done
printf '\n%s' "$summary"
exit "$status"
