#!/usr/bin/env bash
# CPU throughput, side by side in one run (same texts, same model, f32, same thread count):
#   qwen      batch-embed vs transformers, real Qwen2 0.5B, the first N_TEXTS review sentences
#   encoders  batch-embed vs sentence-transformers (torch) vs ONNX Runtime, all-MiniLM-L6-v2, the
#             first N_ENCODER review sentences; then batch-embed's vectors against
#             sentence-transformers'
#   tokenizer our fast roads vs `tokenizers`, text by text over all 579k sentences (Qwen, MiniLM)
#   pipeline  the pipeline alone (no model) on all 579k sentences, Qwen and MiniLM tokenizers
#
#   scripts/bench-cpu.sh [N_TEXTS]        (default 512; SECTIONS="encoders pipeline" for a subset;
#                                          N_ENCODER (default 2000); BIN=path to skip the build)
#
# Needs ../shared/tools/fetch-assets.sh --qwen05b --reference (real Qwen2 0.5B weights, the
# all-MiniLM-L6-v2 folder, the IMDB sentences and the reference venv). ONNX Runtime is installed
# into target/ort-venv on first use (PyPI onnxruntime, onnx), and the MiniLM weights exported to
# target/bench-onnx with the reference venv's torch. Prints the figures recorded in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-$HOME/.cache/batch-embed-assets}
N=${1:-512}
N_ENCODER=${N_ENCODER:-2000}
SECTIONS=${SECTIONS:-qwen encoders tokenizer pipeline}
MODEL=$ASSETS/qwen2.5-coder-0.5b
MINILM=$ASSETS/all-MiniLM-L6-v2
PY=$ASSETS/venv-ref/bin/python
THREADS=$(nproc)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for need in "$MODEL/model.safetensors" "$MINILM/model.safetensors" "$ASSETS/imdb-sentences/sentences-00000.parquet" "$PY"; do
  [[ -e $need ]] || { echo "missing $need: run ../shared/tools/fetch-assets.sh --qwen05b --reference" >&2; exit 1; }
done
on() { [[ " $SECTIONS " == *" $1 "* ]]; }

# BIN=path/to/batch-embed uses an existing binary instead of building the release one.
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=target/release/batch-embed
fi
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# The first N review sentences, as one Parquet file.
first() {
  "$PY" - "$ASSETS/imdb-sentences/sentences-00000.parquet" "$1" "$2" <<'PY'
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1]).slice(0, int(sys.argv[3]))
pq.write_table(t, sys.argv[2])
PY
}

if on qwen; then
  first "$WORK/texts.parquet" "$N"
  echo "== batch-embed, Qwen2 0.5B, f32, $N texts, $THREADS threads"
  RAYON_NUM_THREADS=$THREADS "$BIN" embed --model "$MODEL" --output "$WORK/ours" "$WORK/texts.parquet" 2>&1 | grep -E "rows:|tokens:|time:"

  echo "== transformers, same texts and model, f32, $THREADS threads, length-sorted"
  "$PY" scripts/bench_transformers.py "$MODEL" "$WORK/texts.parquet" --threads "$THREADS" --batch-sizes 16,32,64 2>&1 | grep -E "^transformers"
fi

if on encoders; then
  ORT_VENV=${ORT_VENV:-target/ort-venv}
  if ! "$ORT_VENV/bin/python" -c "import onnxruntime, tokenizers, pyarrow, numpy" >/dev/null 2>&1; then
    python3 -m venv "$ORT_VENV"
    "$ORT_VENV/bin/pip" install --quiet onnxruntime onnx numpy pyarrow tokenizers
  fi
  # torch.onnx.export needs the onnx package next to the reference venv's torch.
  [[ -d target/onnx-export/onnx ]] ||
    "$ORT_VENV/bin/pip" install --quiet --target target/onnx-export --no-deps onnx protobuf ml_dtypes typing_extensions
  ONNX=target/bench-onnx/all-MiniLM-L6-v2.onnx
  if [[ ! -e $ONNX ]]; then
    mkdir -p target/bench-onnx
    PYTHONPATH=target/onnx-export "$PY" scripts/export_onnx.py "$MINILM" "$ONNX" 2>&1 | grep -E "^exported"
  fi
  first "$WORK/enc.parquet" "$N_ENCODER"
  echo "== encoders: all-MiniLM-L6-v2, f32, $N_ENCODER texts, $THREADS threads (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  for bt in 8192 2048; do
    rm -rf "$WORK/mini"
    echo "batch-embed --batch-tokens $bt:"
    RAYON_NUM_THREADS=$THREADS "$BIN" embed --batch-tokens "$bt" --model "$MINILM" --output "$WORK/mini" "$WORK/enc.parquet" 2>&1 | grep -E "tokens:|time:"
  done
  "$PY" scripts/bench_sentence_transformers.py "$MINILM" "$WORK/enc.parquet" --threads "$THREADS" --batch-sizes 16,32,64,128 2>&1 | grep -E "^sentence-transformers"
  "$ORT_VENV/bin/python" scripts/bench_onnxruntime.py "$ONNX" "$MINILM" "$WORK/enc.parquet" --threads "$THREADS" --batch-sizes 8,16,32,64 2>&1 | grep -E "^onnxruntime"
  echo "== batch-embed's MiniLM vectors against sentence-transformers' (same $N_ENCODER texts)"
  "$PY" scripts/compare_sentence_transformers.py --model "$MINILM" --input "$WORK/enc.parquet" --ours "$WORK/mini" --threads "$THREADS" 2>&1 | grep -E "texts compared"
fi

if on tokenizer; then
  echo "== tokenizers: our fast roads vs tokenizers, text by text over all 579k sentences (same ids or it fails)"
  for spec in "$MODEL/tokenizer.json:8192" "$MINILM/tokenizer.json:256"; do
    BATCH_EMBED_CHECK_TOKENIZER="${spec%:*}" BATCH_EMBED_CHECK_MAX_TOKENS="${spec##*:}" BATCH_EMBED_CHECK_TEXTS="$ASSETS/imdb-sentences" \
      cargo test --quiet --lib the_fast_road_gives_the_tokenizers_ids_on_a_corpus -- --ignored --nocapture 2>&1 |
      grep -E "texts,|texts/s|test result"
  done
fi

if on pipeline; then
  echo "== pipeline alone (no model: made-up vectors), Qwen tokenizer (dim 896), one shard (100k rows) then all six (579k)"
  for input in "$ASSETS/imdb-sentences/sentences-00000.parquet" "$ASSETS/imdb-sentences"; do
    rm -rf "$WORK/noop"
    /usr/bin/time -f "peak RSS %M KB" "$BIN" embed --debug-noop-model --model "$MODEL" --output "$WORK/noop" "$input" 2>&1 | grep -E "rows:|time:|peak RSS"
  done
  echo "== pipeline alone, all-MiniLM-L6-v2 tokenizer (WordPiece, dim 384), all 579k sentences"
  rm -rf "$WORK/noop"
  /usr/bin/time -f "peak RSS %M KB" "$BIN" embed --debug-noop-model --model "$MINILM" --output "$WORK/noop" "$ASSETS/imdb-sentences" 2>&1 | grep -E "rows:|time:|peak RSS"
fi
