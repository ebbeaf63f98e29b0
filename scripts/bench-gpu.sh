#!/usr/bin/env bash
# GPU throughput, end to end through `batch-embed embed` (Parquet in, shards out), side by side in
# the same run with transformers on the same GPU (bf16, SDPA, length-sorted, best batch size).
#
# Here (with the assets):  scripts/bench-gpu.sh --prepare [N]   -> target/gpu-bench/texts.parquet
#                          (the first N review sentences, default 200000, from
#                          ../shared/tools/fetch-assets.sh's imdb-sentences; carry this folder)
# On the GPU machine:      scripts/bench-gpu.sh [SHAPE...]     (default: gte-qwen2-1.5b gte-qwen2-7b)
# Anywhere, to test this script: DEVICE=cpu TEXTS=small.parquet BIN=target/release/batch-embed \
#                          scripts/bench-gpu.sh small
#
# Both sides embed the same first ROWS texts. A lent machine allows 600 s per command, so run
# one shape per command and keep the models between commands (the machine stays warm), e.g.
#   WORK=/tmp/gpu-bench ROWS=100000 scripts/bench-gpu.sh gte-qwen2-1.5b
#   WORK=/tmp/gpu-bench ROWS=30000 BATCH_SIZES=64,256 scripts/bench-gpu.sh gte-qwen2-7b
#
# Models: random bf16 weights of the published shapes (scripts/make_random_model.py; vocab
# 151,646). MFU = tokens/s x matmul FLOPs per token / peak, with FLOPs per token = 2 x the
# decoder's matmul weights (2.62 GFLOP for 1.5B, 13.05 GFLOP for 7B; embeddings and attention
# scores not counted) and two peaks: the H100 SXM's 989 TFLOP/s dense bf16 spec and the
# ~790 TFLOP/s measured on these machines. Also prints how busy our run keeps the GPU
# (nvidia-smi utilization.gpu, sampled every 100 ms). Env: BIN (target/cuda/batch-embed), PY, WORK,
# BATCH_SIZES for transformers (default 32,64,128,256), OURS_ARGS (extra flags for ours),
# DEVICE (cuda), TEXTS (target/gpu-bench/texts.parquet), ROWS (all of TEXTS).
set -euo pipefail
cd "$(dirname "$0")/.."
TEXTS=${TEXTS:-target/gpu-bench/texts.parquet}
DEVICE=${DEVICE:-cuda}

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
gpu=cpu
[[ $DEVICE == cuda ]] && gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)
echo "bench-gpu: $gpu, $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
mkdir -p "$WORK"
"$PY" - "$TEXTS" "$WORK/texts.parquet" "${ROWS:-0}" <<'PY'
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
rows = int(sys.argv[3])
if rows:
    t = t.slice(0, rows)
pq.write_table(t, sys.argv[2])
print(f"texts: the first {t.num_rows} rows of {sys.argv[1]}")
PY
TEXTS=$WORK/texts.parquet

for shape in "${SHAPES[@]}"; do
  model="$WORK/$shape"
  [[ -f $model/config.json ]] || "$PY" scripts/make_random_model.py "$shape" "$model" --dtype bfloat16 --device "$DEVICE"
  # Matmul FLOPs per token: 2 x the decoder's matmul weights (embeddings and attention scores
  # not counted): 2.62 GFLOP for gte-Qwen2-1.5B, 13.05 for 7B.
  gflop=$("$PY" - "$model/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c = c.get("text_config", c)
h, heads, kv, inter = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"]
d = c.get("head_dim") or h // heads
per_layer = h * (heads + 2 * kv) * d + heads * d * h + 3 * h * inter
print(f"{2 * per_layer * c['num_hidden_layers'] / 1e9:.4f}")
PY
)
  echo
  echo "== batch-embed, $shape, bf16, $gflop GFLOP/token"
  rm -rf "$WORK/out-$shape"
  # How busy the pipeline keeps the GPU: nvidia-smi's utilization.gpu (share of each 100 ms in
  # which a kernel ran), sampled through the run.
  sampler=
  if [[ $DEVICE == cuda ]]; then
    nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 100 >"$WORK/util-$shape.log" &
    sampler=$!
  fi
  # shellcheck disable=SC2086
  "$BIN" embed --device "$DEVICE" --model "$model" --output "$WORK/out-$shape" ${OURS_ARGS:-} "$TEXTS" 2>&1 \
    | tee "$WORK/ours-$shape.log" | grep -E "batches of|rows:|tokens:|time:"
  if [[ -n $sampler ]]; then kill "$sampler" 2>/dev/null || true; fi
  # From the first sample with a kernel running to the last (model load and exit left out).
  awk '{ u[NR] = $1 } END { for (i = 1; i <= NR; i++) if (u[i] > 0) { if (!f) f = i; l = i }
         for (i = f; i <= l; i++) s += u[i]
         if (l) printf "GPU busy (utilization.gpu, %d samples of 100 ms): %.1f%%\n", l - f + 1, s / (l - f + 1) }' \
    "$WORK/util-$shape.log" 2>/dev/null || true
  tps=$(grep -oE '[0-9.]+ tokens/s' "$WORK/ours-$shape.log" | tail -1 | cut -d' ' -f1)
  awk -v t="$tps" -v g="$gflop" 'BEGIN { printf "ours: %.0f tokens/s, MFU %.1f%% of 989 TFLOP/s (spec), %.1f%% of 790 (measured)\n", t, 100*t*g/989000, 100*t*g/790000 }'
  echo "== transformers, $shape, bf16, sdpa"
  "$PY" scripts/bench_transformers.py "$model" "$TEXTS" --device "$DEVICE" --dtype bfloat16 --attn sdpa \
    --batch-sizes "${BATCH_SIZES:-32,64,128,256}" --warmup 2 2>&1 | tee "$WORK/hf-$shape.log" | grep -E "^transformers"
  hf=$(grep -oE 'best: .*' "$WORK/hf-$shape.log" | grep -oE '[0-9.]+ tokens/s' | cut -d' ' -f1)
  awk -v t="$tps" -v h="$hf" -v g="$gflop" 'BEGIN { printf "transformers: %.0f tokens/s, MFU %.1f%% of 989; ours / transformers = %.2fx\n", h, 100*h*g/989000, t/h }'
done
