#!/usr/bin/env bash
# GPU throughput, end to end through `batch-embed embed` (Parquet in, shards out), side by side in
# the same run with transformers on the same GPU (bf16, SDPA, length-sorted, best batch size).
#
# Here (with the assets):  scripts/bench-gpu.sh --prepare [N]   -> target/gpu-bench/texts.parquet
#                          (the first N review sentences, default 200000, from
#                          ../shared/tools/fetch-assets.sh's imdb-sentences; carry this folder)
# On the GPU machine:      scripts/bench-gpu.sh [SHAPE...]     (default: gte-qwen2-1.5b gte-qwen2-7b)
#
# Models: random bf16 weights of the published shapes (scripts/make_random_model.py; vocab
# 151,646). MFU = tokens/s x matmul FLOPs per token / peak, with FLOPs per token = 2 x the
# decoder's matmul weights (2.62 GFLOP for 1.5B, 13.05 GFLOP for 7B; embeddings and attention
# scores not counted) and two peaks: the H100 SXM's 989 TFLOP/s dense bf16 spec and the
# ~790 TFLOP/s measured on these machines. Env: BIN (target/cuda/batch-embed), PY, WORK,
# BATCH_SIZES for transformers (default 32,64,128,256), OURS_ARGS (extra flags for ours).
set -euo pipefail
cd "$(dirname "$0")/.."
TEXTS=target/gpu-bench/texts.parquet

if [[ ${1:-} == --prepare ]]; then
  ASSETS=${ASSETS:-$HOME/.cache/batch-embed-assets}
  N=${2:-200000}
  mkdir -p target/gpu-bench
  "${PY:-$ASSETS/venv-ref/bin/python}" - "$ASSETS/imdb-sentences" "$TEXTS" "$N" <<'PY'
import sys, glob, pyarrow as pa, pyarrow.parquet as pq
files = sorted(glob.glob(sys.argv[1] + "/*.parquet"))
t = pa.concat_tables([pq.read_table(f, columns=["text"]) for f in files]).slice(0, int(sys.argv[3]))
pq.write_table(t, sys.argv[2], compression="zstd")
PY
  ls -la "$TEXTS"
  exit 0
fi

BIN=${BIN:-target/cuda/batch-embed}
if [[ -z ${PY:-} ]]; then
  if [[ -x /opt/torch/.venv/bin/python ]]; then PY=/opt/torch/.venv/bin/python; else PY=python3; fi
fi
WORK=${WORK:-$(mktemp -d)}
SHAPES=("$@")
[[ ${#SHAPES[@]} == 0 ]] && SHAPES=(gte-qwen2-1.5b gte-qwen2-7b)
[[ -f $TEXTS ]] || { echo "missing $TEXTS: run scripts/bench-gpu.sh --prepare where the assets are, and carry target/gpu-bench" >&2; exit 1; }
echo "bench-gpu: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
"$PY" - "$TEXTS" <<'PY'
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
print(f"texts: {t.num_rows} rows from {sys.argv[1]}")
PY

for shape in "${SHAPES[@]}"; do
  case $shape in
    gte-qwen2-1.5b) gflop=2.62 ;;
    gte-qwen2-7b) gflop=13.05 ;;
    *) echo "unknown shape $shape" >&2; exit 1 ;;
  esac
  model="$WORK/$shape"
  [[ -f $model/config.json ]] || "$PY" scripts/make_random_model.py "$shape" "$model" --dtype bfloat16 --device cuda
  echo
  echo "== batch-embed, $shape, bf16"
  rm -rf "$WORK/out-$shape"
  # shellcheck disable=SC2086
  "$BIN" embed --device cuda --model "$model" --output "$WORK/out-$shape" ${OURS_ARGS:-} "$TEXTS" 2>&1 \
    | tee "$WORK/ours-$shape.log" | grep -E "batches of|rows:|tokens:|time:"
  tps=$(grep -oE '[0-9.]+ tokens/s' "$WORK/ours-$shape.log" | tail -1 | cut -d' ' -f1)
  awk -v t="$tps" -v g="$gflop" 'BEGIN { printf "ours: %.0f tokens/s, MFU %.1f%% of 989 TFLOP/s (spec), %.1f%% of 790 (measured)\n", t, 100*t*g/989000, 100*t*g/790000 }'
  echo "== transformers, $shape, bf16, sdpa"
  "$PY" scripts/bench_transformers.py "$model" "$TEXTS" --device cuda --dtype bfloat16 --attn sdpa \
    --batch-sizes "${BATCH_SIZES:-32,64,128,256}" --warmup 2 2>&1 | tee "$WORK/hf-$shape.log" | grep -E "^transformers"
  hf=$(grep -oE 'best: .*' "$WORK/hf-$shape.log" | grep -oE '[0-9.]+ tokens/s' | cut -d' ' -f1)
  awk -v t="$tps" -v h="$hf" -v g="$gflop" 'BEGIN { printf "transformers: %.0f tokens/s, MFU %.1f%% of 989; ours / transformers = %.2fx\n", h, 100*h*g/989000, t/h }'
done
