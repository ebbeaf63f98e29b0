#!/usr/bin/env bash
# Correctness of the CUDA binary on a GPU machine (PyTorch + transformers there, no Rust, no
# network). Build here with scripts/build-cuda.sh, then on the GPU machine:
#
#   scripts/gpu-check.sh                 # DEVICE=cuda: everything below
#   DEVICE=cpu scripts/gpu-check.sh      # the same steps on a CPU (tests this script anywhere)
#
# For each model (the five tiny decoder fixtures and a random-weight model of gte-Qwen2-1.5B's shape,
# or SHAPES="..." from scripts/make_random_model.py), on the first ROWS rows of
# examples/reviews.parquet:
#   1. ours in f32 and bf16 on DEVICE vs transformers on DEVICE in the same dtype (one text at a
#      time, explicit attention mask, last token after the final norm):
#      cosine >= 0.99999 (f32) / 0.999 (bf16);
#   2. ours on DEVICE vs ours on the CPU (f32): cosine >= 0.99999 (f32) / 0.999 (bf16);
# for each sentence-transformers fixture (BERT mean and CLS+Dense, DistilBERT, MPNet, Gemma 3,
# XLM-R with prompts, ModernBERT), in f32, bf16 and f16:
#   3. ours on DEVICE vs sentence-transformers on DEVICE in the same dtype, as the folder says
#      (pooling, Dense, Normalize, prompts), when $PY can import sentence_transformers (it says
#      so loudly when it cannot, and then only step 4 runs);
#   4. ours on DEVICE vs ours on the CPU (f32), whose vectors the test suite holds against
#      sentence-transformers' goldens;
# then, on the GPU only, with the 1.5B-shaped model:
#   5. the GPU nearly full (--debug-faults hog-gib takes all but a few GiB after the model loads)
#      and a batch budget far too big: CUDA's out-of-memory errors are recognised, batches are
#      split and retried, the run completes, `verify` passes and the vectors match a normal run;
#   6. kill -9 twice mid-run and resume: the output matches an uninterrupted run, `verify` passes.
# Exits 1 if any check fails. Env: BIN (default target/cuda/batch-embed), PY (default the
# PyTorch venv at /opt/torch/.venv, else python3), WORK (default a temp dir), ROWS (64).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
BIN=${BIN:-target/cuda/batch-embed}
if [[ -z ${PY:-} ]]; then
  if [[ -x /opt/torch/.venv/bin/python ]]; then PY=/opt/torch/.venv/bin/python; else PY=python3; fi
fi
ROWS=${ROWS:-64}
WORK=${WORK:-$(mktemp -d)}
if [[ $DEVICE == cuda ]]; then SHAPES=${SHAPES:-gte-qwen2-1.5b}; else SHAPES=${SHAPES:-small}; fi
mkdir -p "$WORK"
failed=0
step() { echo; echo "== $*"; }
check() {  # check NAME COMMAND...: runs it, records a failure
  if "${@:2}"; then echo "PASS $1"; else echo "FAIL $1"; failed=1; fi
}
embed() { "$BIN" embed --quiet "$@"; }

echo "gpu-check: $($BIN --version), device $DEVICE, $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
[[ $DEVICE == cuda ]] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" - "$ROWS" "$WORK" <<'PY'
import sys, pyarrow as pa, pyarrow.parquet as pq
rows, work = int(sys.argv[1]), sys.argv[2]
t = pq.read_table("examples/reviews.parquet").slice(0, rows)
pq.write_table(t, f"{work}/texts.parquet")
# Long texts (reviews joined to ~3-6k tokens) for the out-of-memory check.
texts = [x for x in pq.read_table("examples/reviews.parquet", columns=["text"]).column(0).to_pylist() if x]
long = [" ".join(texts[(i * 7 + j) % len(texts)] for j in range(60 + i % 60)) for i in range(96)]
pq.write_table(pa.table({"text": long}), f"{work}/long.parquet")
PY

models=(tests/fixtures/qwen2-gqa tests/fixtures/qwen2-mha-bidir tests/fixtures/qwen3 tests/fixtures/mistral
  tests/fixtures/llama)
for shape in $SHAPES; do
  step "random-weight $shape"
  "$PY" scripts/make_random_model.py "$shape" "$WORK/$shape" --dtype bfloat16 --device "$DEVICE" || failed=1
  models+=("$WORK/$shape")
done

# check_model MODEL COMPARE FLAGS DTYPE...: ours on DEVICE in each DTYPE (with FLAGS) vs the
# reference on DEVICE in the same dtype (scripts/COMPARE; none when empty), and vs ours on the CPU
# in f32.
check_model() {
  local model=$1 compare=$2 flags=$3 name ref out torch_dtype min dtype
  shift 3
  name=$(basename "$model")
  ref=${compare#compare_}; ref=${ref%.py}; ref=${ref//_/-}
  # shellcheck disable=SC2086 # FLAGS are words
  embed --device cpu --dtype f32 $flags --model "$model" --output "$WORK/$name-cpu" "$WORK/texts.parquet"
  for dtype in "$@"; do
    case $dtype in
      f32) torch_dtype=float32 min=0.99999 ;;
      bf16) torch_dtype=bfloat16 min=0.999 ;;
      f16) torch_dtype=float16 min=0.999 ;;
    esac
    out="$WORK/$name-$DEVICE-$dtype"
    # shellcheck disable=SC2086
    check "$name $dtype: ours on $DEVICE runs" embed --device "$DEVICE" --dtype "$dtype" $flags --model "$model" \
      --output "$out" "$WORK/texts.parquet"
    if [[ -n $compare ]]; then
      check "$name $dtype: ours vs $ref on $DEVICE (cosine >= $min)" "$PY" "scripts/$compare" --model "$model" \
        --input "$WORK/texts.parquet" --ours "$out" --device "$DEVICE" --dtype "$torch_dtype" --min-cosine "$min"
    fi
    check "$name $dtype: ours on $DEVICE vs ours on cpu f32 (cosine >= $min)" "$PY" scripts/compare_outputs.py \
      "$out" "$WORK/$name-cpu" --min-cosine "$min"
  done
}

for model in "${models[@]}"; do
  step "$(basename "$model")"
  check_model "$model" compare_transformers.py --no-normalize f32 bf16
done

encoders=(tests/fixtures/st-bert-mean tests/fixtures/st-bert-cls-dense tests/fixtures/st-distilbert
  tests/fixtures/st-mpnet tests/fixtures/st-gemma3 tests/fixtures/st-xlmr-prompts tests/fixtures/st-modernbert
  tests/fixtures/st-static tests/fixtures/st-static-m2v)
st_compare=compare_sentence_transformers.py
if ! "$PY" -c "import sentence_transformers" 2>/dev/null; then
  st_compare=
  echo
  echo "gpu-check: NOTE: $PY cannot import sentence_transformers, so the encoders are NOT compared"
  echo "gpu-check: with sentence-transformers here, only with ours on the CPU (pip install sentence-transformers)"
fi
for model in "${encoders[@]}"; do
  step "$(basename "$model") (encoder, as the sentence-transformers folder says)"
  check_model "$model" "$st_compare" "" f32 bf16 f16
done
# NomicBERT and GTE's model run in sentence-transformers only with their own code
# (trust_remote_code), which the fixtures leave out: on the GPU they are compared with ours on
# the CPU.
for model in tests/fixtures/st-nomic tests/fixtures/st-nomic-abs tests/fixtures/st-gte tests/fixtures/st-gte-mixed; do
  step "$(basename "$model") (trust_remote_code architecture, against ours on the CPU)"
  check_model "$model" "" "" f32 bf16 f16
done

if [[ $DEVICE == cuda ]]; then
  big="$WORK/$(echo "$SHAPES" | awk '{print $1}')"
  step "out-of-memory split on $DEVICE ($(basename "$big"), long texts, all but ${LEAVE_GIB:-6} GiB taken)"
  total_gib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits -i 0 | awk '{print int($1 / 1024)}')
  hog=$((total_gib - ${LEAVE_GIB:-6} - 4))
  embed --device cuda --model "$big" --output "$WORK/long-ref" --batch-tokens 16384 "$WORK/long.parquet"
  "$BIN" embed --device cuda --model "$big" --output "$WORK/long-oom" --batch-tokens 4000000 \
    --max-tokens 8192 --debug-faults "hog-gib=$hog" "$WORK/long.parquet" 2>&1 | tee "$WORK/oom.log" | tail -3
  check "a batch too big for the GPU was split" grep -q "split after running out of memory" "$WORK/oom.log"
  check "verify after the splits" "$BIN" verify "$WORK/long-oom"
  check "split batches give the same vectors" "$PY" scripts/compare_outputs.py "$WORK/long-ref" "$WORK/long-oom" \
    --min-cosine 0.999

  step "kill -9 and resume on $DEVICE"
  embed --device cuda --model "$big" --output "$WORK/kill-ref" "$WORK/long.parquet"
  for i in 1 2; do
    "$BIN" embed --quiet --device cuda --model "$big" --output "$WORK/kill" --rows-per-part 8 \
      --checkpoint-every 0 --debug-chunk-delay-ms 300 --batch-tokens 16384 "$WORK/long.parquet" &
    pid=$!
    sleep $((3 + i))
    kill -9 "$pid"; wait "$pid" 2>/dev/null
  done
  embed --device cuda --model "$big" --output "$WORK/kill" --rows-per-part 8 --checkpoint-every 0 \
    --batch-tokens 16384 "$WORK/long.parquet"
  check "verify after kill -9 and resume" "$BIN" verify "$WORK/kill"
  check "resumed output matches an uninterrupted run" "$PY" scripts/compare_outputs.py "$WORK/kill-ref" \
    "$WORK/kill" --min-cosine 0.999
fi

echo
if [[ -z $st_compare ]]; then
  echo "gpu-check: NOTE: the encoders were not compared with sentence-transformers (see above)"
fi
if [[ $failed == 0 ]]; then echo "gpu-check: all checks passed"; else echo "gpu-check: SOME CHECKS FAILED"; fi
exit $failed
