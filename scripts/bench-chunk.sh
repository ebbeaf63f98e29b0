#!/usr/bin/env bash
# Chunking figures (issue 13), side by side in one run on the same files:
#   1. the pipeline alone (no model: the bench hook's made-up vectors), Qwen tokenizer, the
#      50,000 full IMDB reviews: unchunked (texts up to 8192 tokens, none cut) vs
#      --chunk-tokens 128 --chunk-overlap 16 (one row per chunk), and with --chunk-pool mean;
#      the figure to read is tokens/s (what the model would be fed), chunked over unchunked.
#   2. the real Qwen2 0.5B (f32, CPU) on the first N_REVIEWS full reviews: tokens/s unchunked
#      vs chunked (128/16).
#
#   scripts/bench-chunk.sh [N_REVIEWS]     (default 40; SECTIONS="1" for the first only;
#                                           BIN=path to skip the build)
#
# Needs ../shared/tools/fetch-assets.sh --qwen05b (weights, IMDB reviews).
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-$HOME/.cache/batch-embed-assets}
N=${1:-40}
SECTIONS=${SECTIONS:-1 2}
MODEL=$ASSETS/qwen2.5-coder-0.5b
REVIEWS=$ASSETS/imdb-reviews
PY=${PY:-$ASSETS/venv-light/bin/python}
for need in "$MODEL/model.safetensors" "$REVIEWS/reviews-00000.parquet" "$PY"; do
  [[ -e $need ]] || { echo "missing $need: run ../shared/tools/fetch-assets.sh --qwen05b" >&2; exit 1; }
done
on() { [[ " $SECTIONS " == *" $1 "* ]]; }
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=target/release/batch-embed
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# `run LABEL ARGS…`: one embed into a fresh folder; prints its rows, chunks, tokens and time.
run() {
  local label=$1
  shift
  rm -rf "$WORK/out"
  echo "-- $label"
  /usr/bin/time -f "   wall %e s, peak RSS %M KB" "$BIN" embed --output "$WORK/out" "$@" 2>&1 |
    grep -E "^(rows|chunks|truncated|tokens|time):|wall" | sed 's/^\([a-z]\)/   \1/'
}

if on 1; then
  echo "== 1. pipeline alone, Qwen tokenizer, all 50,000 full IMDB reviews"
  for round in 1 2; do
    echo "round $round"
    run "unchunked" --debug-noop-model --model "$MODEL" "$REVIEWS"
    run "--chunk-tokens 128 --chunk-overlap 16" --debug-noop-model --model "$MODEL" --chunk-tokens 128 --chunk-overlap 16 "$REVIEWS"
    run "--chunk-tokens 128 --chunk-overlap 16 --chunk-pool mean" --debug-noop-model --model "$MODEL" --chunk-tokens 128 --chunk-overlap 16 --chunk-pool mean "$REVIEWS"
  done
fi

if on 2; then
  "$PY" - "$REVIEWS/reviews-00000.parquet" "$WORK/first.parquet" "$N" <<'PY'
import sys, pyarrow.parquet as pq
pq.write_table(pq.read_table(sys.argv[1]).slice(0, int(sys.argv[3])), sys.argv[2])
PY
  echo "== 2. real Qwen2 0.5B, f32, $(nproc) threads, the first $N full reviews"
  run "unchunked" --model "$MODEL" "$WORK/first.parquet"
  run "--chunk-tokens 128 --chunk-overlap 16" --model "$MODEL" --chunk-tokens 128 --chunk-overlap 16 "$WORK/first.parquet"
fi
