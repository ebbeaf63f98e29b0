#!/usr/bin/env bash
# CPU throughput, side by side with transformers in one run (same texts, same model, f32, same
# thread count), plus the pipeline alone (no model) on all 579k review sentences.
#
#   scripts/bench-cpu.sh [N_TEXTS]        (default 512)
#
# Needs ../shared/tools/fetch-assets.sh --qwen05b --reference (real Qwen2 0.5B weights, the IMDB
# sentences and the reference venv). Prints the figures recorded in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-$HOME/.cache/batch-embed-assets}
N=${1:-512}
MODEL=$ASSETS/qwen2.5-coder-0.5b
PY=$ASSETS/venv-ref/bin/python
THREADS=$(nproc)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for need in "$MODEL/model.safetensors" "$ASSETS/imdb-sentences/sentences-00000.parquet" "$PY"; do
  [[ -e $need ]] || { echo "missing $need: run ../shared/tools/fetch-assets.sh --qwen05b --reference" >&2; exit 1; }
done

# BIN=path/to/batch-embed uses an existing binary instead of building the release one.
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=target/release/batch-embed
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F)"

# The first N review sentences, as one Parquet file.
"$PY" - "$ASSETS/imdb-sentences/sentences-00000.parquet" "$WORK/texts.parquet" "$N" <<'PY'
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1]).slice(0, int(sys.argv[3]))
pq.write_table(t, sys.argv[2])
PY

echo "== batch-embed, Qwen2 0.5B, f32, $N texts, $THREADS threads"
RAYON_NUM_THREADS=$THREADS "$BIN" embed --model "$MODEL" --output "$WORK/ours" "$WORK/texts.parquet" 2>&1 | grep -E "rows:|tokens:|time:"

echo "== transformers, same texts and model, f32, $THREADS threads, length-sorted"
"$PY" scripts/bench_transformers.py "$MODEL" "$WORK/texts.parquet" --threads "$THREADS" --batch-sizes 16,32,64 2>&1 | grep -E "^transformers"

echo "== tokenizer: our fast road vs tokenizers, text by text over all 579k sentences (same ids or it fails)"
BATCH_EMBED_CHECK_TOKENIZER="$MODEL/tokenizer.json" BATCH_EMBED_CHECK_TEXTS="$ASSETS/imdb-sentences" \
  cargo test --quiet --lib the_fast_road_gives_the_tokenizers_ids_on_a_corpus -- --ignored --nocapture 2>&1 |
  grep -E "texts,|texts/s|test result"

echo "== pipeline alone (no model: made-up vectors), Qwen tokenizer, one shard (100k rows) then all six (579k)"
for input in "$ASSETS/imdb-sentences/sentences-00000.parquet" "$ASSETS/imdb-sentences"; do
  rm -rf "$WORK/noop"
  /usr/bin/time -f "peak RSS %M KB" "$BIN" embed --debug-noop-model --model "$MODEL" --output "$WORK/noop" "$input" 2>&1 | grep -E "rows:|time:|peak RSS"
done
