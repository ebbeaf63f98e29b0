#!/usr/bin/env bash
# A user's session on buckets, end to end, against a local S3 server (moto on 127.0.0.1): the
# 50,000 real IMDB reviews uploaded as "day 1", embedded from and to the bucket by 4 workers (one
# of them killed with -9 midway and started again), `status` and `verify` on the bucket; a "day 2"
# snapshot (2% of texts edited, 1% of reviews deleted, 1,000 new ones, shuffled) embedded with
# `--reuse` of day 1's bucket output; `changes` between the two, written to the bucket; and
# checks, outside batch-embed (pyarrow), that the bucket's vectors equal a run on local disk and
# that the change set is exactly the edited, new and deleted ids.
#
#   scripts/s3-session.sh [MODEL_DIR]     (default models/tiny-qwen2)
#
# Needs the IMDB reviews and sentences (../shared/tools/fetch-assets.sh) and Python with
# moto[server], boto3 and pyarrow (target/test-venv, as made by `.ci/run`).
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-$HOME/.cache/batch-embed-assets}
MODEL=${1:-models/tiny-qwen2}
VENV=${BATCH_EMBED_TEST_VENV:-$PWD/target/test-venv}
PY=$VENV/bin/python
[[ -e $ASSETS/imdb-reviews/reviews-00000.parquet ]] || { echo "missing $ASSETS/imdb-reviews: run ../shared/tools/fetch-assets.sh" >&2; exit 1; }
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
trap 'kill $MOTO 2>/dev/null; rm -rf "$WORK"' EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=session AWS_SECRET_ACCESS_KEY=session-secret-not-to-be-printed
for _ in $(seq 100); do curl -s -o /dev/null "$AWS_ENDPOINT_URL" && break; sleep 0.1; done
echo "machine: $(nproc) cores, commit $(git rev-parse --short HEAD), $(date -u +%F); model $MODEL; load: $(uptime | sed 's/.*load average: //')"

# Day 1: the reviews as they are; day 2: derived from them (fixed seed).
"$PY" - "$ASSETS" "$WORK" <<'PY'
import os, random, sys, boto3, pyarrow as pa, pyarrow.parquet as pq
assets, work = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
s3.create_bucket(Bucket="corpus")
day1 = pa.concat_tables([pq.read_table(f"{assets}/imdb-reviews/reviews-{i:05}.parquet", columns=["review_id", "text"]) for i in range(5)])
for i in range(5):
    s3.upload_file(f"{assets}/imdb-reviews/reviews-{i:05}.parquet", "corpus", f"day1/reviews-{i:05}.parquet")
rng = random.Random(15)
ids, texts = day1.column("review_id").to_pylist(), day1.column("text").to_pylist()
rows = list(zip(ids, texts))
deleted = set(rng.sample(ids, len(ids) // 100))
edited = set(rng.sample([i for i in ids if i not in deleted], len(ids) // 50))
extra = pq.read_table(f"{assets}/imdb-sentences/sentences-00000.parquet").column("text").to_pylist()
top = max(ids)
new_rows = [(top + 1 + k, f"A new review: {extra[k]}") for k in range(1000)]
day2 = [(i, t + " (edited on day 2)" if i in edited else t) for i, t in rows if i not in deleted] + new_rows
rng.shuffle(day2)
os.makedirs(f"{work}/day2")
for k in range(5):
    part = day2[k::5]
    t = pa.table({"review_id": pa.array([r[0] for r in part], pa.int64()), "text": [r[1] for r in part]})
    pq.write_table(t, f"{work}/day2/reviews-{k:05}.parquet")
    s3.upload_file(f"{work}/day2/reviews-{k:05}.parquet", "corpus", f"day2/reviews-{k:05}.parquet")
with open(f"{work}/expected.txt", "w") as f:
    f.write(f"{len(edited)} {len(new_rows)} {len(deleted)}\n")
print(f"day 1: {len(rows)} reviews; day 2: {len(day2)} ({len(edited)} edited, {len(new_rows)} new, {len(deleted)} deleted)")
PY

common=(--model "$MODEL" --id-column review_id --num-workers 4)
echo "== day 1: 4 workers from s3://corpus/day1 to s3://corpus/emb-day1; worker 2 killed with -9 after 5 s"
SECONDS=0
for w in 0 1 2 3; do
  "$BIN" embed "${common[@]}" --worker-id "$w" --output s3://corpus/emb-day1 s3://corpus/day1 >"$WORK/w$w.log" 2>&1 &
  echo $! >"$WORK/w$w.pid"
done
sleep 5
kill -9 "$(cat "$WORK/w2.pid")"
echo "-- status while running (worker 2 was just killed):"
"$BIN" status s3://corpus/emb-day1 || true
"$BIN" embed "${common[@]}" --worker-id 2 --output s3://corpus/emb-day1 s3://corpus/day1 >"$WORK/w2b.log" 2>&1
for w in 0 1 3; do wait "$(cat "$WORK/w$w.pid")" || true; done
echo "   day 1 took ${SECONDS} s (all four workers, the restart included)"
grep -E "resuming|buckets:" "$WORK/w2b.log" | sed 's/^/   worker 2 again: /'
"$BIN" status s3://corpus/emb-day1
"$BIN" verify s3://corpus/emb-day1 | tail -2

echo "== the same day 1 on local disk (one worker), for comparison"
"$BIN" embed --quiet --model "$MODEL" --id-column review_id --output "$WORK/local-day1" "$ASSETS/imdb-reviews"

echo "== day 2 with --reuse s3://corpus/emb-day1, 4 workers"
for w in 0 1 2 3; do
  "$BIN" embed "${common[@]}" --worker-id "$w" --reuse s3://corpus/emb-day1 --output s3://corpus/emb-day2 s3://corpus/day2 2>&1 |
    grep -E "^rows:|--reuse:" | sed "s/^/   worker $w: /"
done
"$BIN" verify s3://corpus/emb-day2 | tail -1
echo "== changes s3://corpus/emb-day1 s3://corpus/emb-day2 --output s3://corpus/changes-day2"
"$BIN" changes s3://corpus/emb-day1 s3://corpus/emb-day2 --output s3://corpus/changes-day2
"$BIN" changes --json s3://corpus/emb-day1 s3://corpus/emb-day2 --output s3://corpus/changes-day2 >"$WORK/changes.json"

echo "== checks outside batch-embed (pyarrow on the objects downloaded from the bucket)"
"$PY" - "$WORK" <<'PY'
import glob, json, os, sys, boto3, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
work = sys.argv[1]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
def download(prefix):
    out = f"{work}/dl/{prefix}"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="corpus", Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            dest = f"{work}/dl/{o['Key']}"
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            s3.download_file("corpus", o["Key"], dest)
    return out
def vectors(folder):
    t = pa.concat_tables([pq.read_table(p, columns=["row", "embedding"]) for p in sorted(glob.glob(f"{folder}/*/part-*.parquet"))])
    t = t.sort_by("row")
    return t.column("row").to_pylist(), t.column("embedding").to_pylist()
rb, vb = vectors(download("emb-day1"))
rl, vl = vectors(f"{work}/local-day1")
assert rb == rl, "rows differ"
diff = max(max(abs(a - b) for a, b in zip(x, y)) for x, y in zip(vb, vl))
print(f"   day 1 on the bucket (4 workers, one killed) vs local disk (1 worker): {len(rb)} rows, the same row set, max |difference| {diff:.2e}")
edited, new, deleted = map(int, open(f"{work}/expected.txt").read().split())
c = json.load(open(f"{work}/changes.json"))
ch = download("changes-day2")
up = pq.read_table(f"{ch}/upserted.parquet").num_rows
de = pq.read_table(f"{ch}/deleted.parquet").num_rows
print(f"   change set: changed {c['changed']} (expected {edited}), new {c['new']} (expected {new}), deleted {c['deleted']} (expected {deleted}); upserted.parquet {up} rows, deleted.parquet {de} rows")
assert (c["changed"], c["new"], c["deleted"], up, de) == (edited, new, deleted, edited + new, deleted), c
print("   OK")
PY
