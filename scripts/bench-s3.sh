#!/usr/bin/env bash
# Buckets, measured against a local S3 server (moto, on 127.0.0.1) with the pipeline alone (no
# model: made-up vectors), on the 579,644 IMDB review sentences:
#   1. the same files read from local disk and from the S3 server, in one run;
#   2. bytes and requests each worker fetches at N = 1, 4 and 16 workers (stride blocks of 4096
#      rows), for the files as shipped and rewritten with a page index;
#   3. requests per part written to the bucket.
#
#   scripts/bench-s3.sh
#
# Needs the IMDB sentences (../shared/tools/fetch-assets.sh) and Python with moto[server] and
# pyarrow (target/test-venv, which `.ci/run` and the test suite make; BATCH_EMBED_TEST_VENV
# overrides it). moto is a Python server: its own speed bounds the figures of (1), which are a
# floor for a real S3, not a ceiling.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-$HOME/.cache/batch-embed-assets}
DATA=$ASSETS/imdb-sentences
VENV=${BATCH_EMBED_TEST_VENV:-$PWD/target/test-venv}
PY=$VENV/bin/python
MODEL=models/tiny-qwen2
[[ -e $DATA/sentences-00000.parquet ]] || { echo "missing $DATA: run ../shared/tools/fetch-assets.sh" >&2; exit 1; }
if ! "$PY" -c "import moto.server, boto3, pyarrow" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'moto[server]' pyarrow
fi
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=target/release/batch-embed
fi
WORK=$(mktemp -d)
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m moto.server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO; rm -rf "$WORK"' EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
for _ in $(seq 100); do curl -s -o /dev/null "$AWS_ENDPOINT_URL" && break; sleep 0.1; done

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F); load: $(uptime | sed 's/.*load average: //')"
# The same shards rewritten with a page index, 64 KiB pages and no dictionary (what lets a
# worker skip pages within a row group: as shipped, a row group's text column is a ~490 KB
# dictionary page every page needs, and one data page), then all uploaded: s3://bench/shipped/
# and s3://bench/indexed/.
"$PY" - "$DATA" "$WORK/indexed" <<'PY'
import glob, os, sys, boto3, pyarrow.parquet as pq
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst)
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
s3.create_bucket(Bucket="bench")
for f in sorted(glob.glob(f"{src}/*.parquet")):
    name = os.path.basename(f)
    t = pq.read_table(f)
    pq.write_table(t, f"{dst}/{name}", row_group_size=10000, data_page_size=64 << 10,
                   use_dictionary=False, write_page_index=True)
    s3.upload_file(f, "bench", f"shipped/{name}")
    s3.upload_file(f"{dst}/{name}", "bench", f"indexed/{name}")
PY

# `run LABEL ARGS…`: one run of the pipeline alone; prints its rows, input, buckets and time lines.
run() {
  local label=$1
  shift
  rm -rf "$WORK/out"
  echo "-- $label"
  "$BIN" embed --debug-noop-model --model "$MODEL" "$@" 2>&1 | grep -E "^(rows|input|buckets|parts|time):" | sed 's/^/   /'
}

echo "== 1. one worker, all 579,644 rows: local disk vs the S3 server (same files, output on local disk)"
run "local disk" --output "$WORK/out" "$DATA"
run "s3 (moto)" --output "$WORK/out" s3://bench/shipped
run "s3 (moto), output on the bucket too" --output s3://bench/out-1 s3://bench/shipped

echo "== 2. bytes fetched per worker (worker 0, a middle one and the last), --stride-block 4096"
for set in shipped indexed; do
  for n in 1 4 16; do
    for id in $(printf '%s\n' 0 $((n / 2)) $((n - 1)) | sort -un); do
      rm -rf "$WORK/out"
      line=$("$BIN" embed --debug-noop-model --model "$MODEL" --output "$WORK/out" --num-workers "$n" --worker-id "$id" "s3://bench/$set" 2>&1 |
        grep -E "^(input|buckets):" | tr -s ' ' | tr '\n' ' ')
      echo "   $set N=$n worker $id: $line"
    done
  done
done

echo "== 3. requests per part written: input on local disk, output on the bucket, parts of 20,000 rows"
run "rows-per-part 20000" --output s3://bench/out-3 --rows-per-part 20000 --checkpoint-every 600 "$DATA"
"$PY" - <<'PY'
import os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="out-3/") for o in p.get("Contents", [])]
parts = [k for k in keys if k.rsplit("/", 1)[1].startswith("part-")]
print(f"   objects in the worker folder: {len(keys)} ({len(parts)} parts)")
PY
