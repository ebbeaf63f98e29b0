#!/usr/bin/env bash
# Sync figures (issue 12): what `embed --reuse` saves, how fast the reuse path is alone, what a
# worker's reuse and `changes` cost in memory and reads, and how many repeats real reviews have.
#
#   scripts/bench-sync.sh [ROWS] [SECTIONS]     (defaults: 1000 rows, sections "1 2 3 4 5")
#
# 1. real model: the real Qwen2 0.5B (f32, CPU) on ROWS review sentences = snapshot A; snapshot
#    B = A with 5% of texts changed, 2% of rows deleted, 3% new rows, reordered. A full embed of
#    B and `embed --reuse A` of B side by side, the two outputs compared, `changes A B` read
#    with duckdb.
# 2. the reuse path alone: 1,000,000 rows (dim 896, the bench hook's made-up vectors) embedded,
#    then the same rows reordered into other files embedded with --reuse: nothing to embed.
# 3. one worker of N=8 (and N=1) over a 1M-row previous output, B = 5% changed / 2% deleted /
#    3% new: peak RSS and bytes read.
# 4. `changes` memory: peak RSS between 1M-row and 5M-row snapshots (dim 64).
# 5. repeats (rows embedded once because their text came earlier) on the real corpus.
#
# Needs ../shared/tools/fetch-assets.sh --qwen05b (weights, IMDB sentences and reviews).
# WORK=dir keeps the files there (default: a temporary folder, removed at the end; sections 2-4
# need ~15 GB). BIN=path uses an existing binary.
set -euo pipefail
cd "$(dirname "$0")/.."
ASSETS=${ASSETS:-$HOME/.cache/batch-embed-assets}
ROWS=${1:-1000}
SECTIONS=${2:-"1 2 3 4 5"}
MODEL=$ASSETS/qwen2.5-coder-0.5b
SENT=$ASSETS/imdb-sentences
for need in "$MODEL/model.safetensors" "$SENT/sentences-00000.parquet" "$ASSETS/imdb-reviews"; do
  [[ -e $need ]] || { echo "missing $need: run ../shared/tools/fetch-assets.sh --qwen05b" >&2; exit 1; }
done
if [[ -z ${WORK:-} ]]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
# A venv with pyarrow, numpy and duckdb (to read the change set as a user would).
VENV=${BENCH_VENV:-target/bench-venv}
if ! "$VENV/bin/python" -c "import duckdb, pyarrow, numpy" 2>/dev/null; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet duckdb pyarrow numpy
fi
PY=$VENV/bin/python
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=target/release/batch-embed
fi
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
timed() { /usr/bin/time -f "wall %e s, cpu %U s user + %S s sys, peak RSS %M KB" "$@"; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), commit $(git rev-parse --short HEAD), $(date -u +%F), load average $(cut -d' ' -f1-3 /proc/loadavg)"

# snapshot.py SRC... --rows N --out DIR --files F [--offset O] [--change P --delete P --new P --seed S]
# writes snapshot A (the first N rows of the sources, ids = row_id) or, with --change/--delete/
# --new, a snapshot B derived from A (the new rows come from after A in the sources), reordered.
cat > "$WORK/snapshot.py" <<'PY'
import argparse, os, random
import pyarrow as pa, pyarrow.parquet as pq, pyarrow.dataset as ds
ap = argparse.ArgumentParser()
ap.add_argument("src", nargs="+")
ap.add_argument("--rows", type=int, required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--files", type=int, default=4)
ap.add_argument("--change", type=float, default=0)
ap.add_argument("--delete", type=float, default=0)
ap.add_argument("--new", type=float, default=0)
ap.add_argument("--reorder", action="store_true")
ap.add_argument("--synthetic", action="store_true", help="made-up texts instead of the sources")
ap.add_argument("--seed", type=int, default=7)
a = ap.parse_args()
rng = random.Random(a.seed)
n_new = int(a.rows * a.new)
if a.synthetic:
    words = "good bad book plot story read great love hate long short end start page writer".split()
    def text(i):
        r = random.Random(i)
        return f"review {i}: " + " ".join(r.choice(words) for _ in range(r.randint(4, 30)))
    total = a.rows + n_new
    ids = list(range(total)); texts = [text(i) for i in ids]
else:
    src = a.src[0] if len(a.src) == 1 else a.src
    t = ds.dataset(src).to_table(columns=["text"])
    texts = t.column("text").to_pylist()
    # Past the corpus, the same sentences again with a suffix (distinct texts, like new reviews).
    base = len(texts)
    need = a.rows + n_new
    texts = [texts[i % base] + ("" if i < base else f" ({i // base + 1})") for i in range(need)]
    ids = list(range(need))
rows = list(zip(ids[: a.rows], texts[: a.rows]))
changed = deleted = 0
if a.change or a.delete or a.new:
    out = []
    for i, txt in rows:
        x = rng.random()
        if x < a.delete:
            deleted += 1
            continue
        if x < a.delete + a.change:
            changed += 1
            txt = txt + " (edited)"
        out.append((i, txt))
    out += list(zip(ids[a.rows : a.rows + n_new], texts[a.rows : a.rows + n_new]))
    rows = out
if a.reorder or a.change or a.delete or a.new:
    rng.shuffle(rows)
os.makedirs(a.out, exist_ok=True)
per = -(-len(rows) // a.files)
for f in range(a.files):
    piece = rows[f * per : (f + 1) * per]
    pq.write_table(
        pa.table({"id": pa.array([r[0] for r in piece], pa.int64()), "text": [r[1] for r in piece]}),
        os.path.join(a.out, f"part-{f:03}.parquet"),
        row_group_size=16384,
    )
print(f"snapshot {a.out}: {len(rows)} rows ({changed} changed, {deleted} deleted, {n_new} new)")
PY

if has 1; then
  echo
  echo "== 1. real Qwen2 0.5B, f32, $(nproc) threads: full embed of B vs embed --reuse A of B ($ROWS rows in A)"
  "$PY" "$WORK/snapshot.py" "$SENT" --rows "$ROWS" --out "$WORK/a"
  "$PY" "$WORK/snapshot.py" "$SENT" --rows "$ROWS" --out "$WORK/b" --change 0.05 --delete 0.02 --new 0.03
  common=(--model "$MODEL" --id-column id)
  echo "-- embed A"
  timed "$BIN" embed "${common[@]}" --output "$WORK/out-a" "$WORK/a" 2>&1 | grep -E "rows:|time:|wall"
  echo "-- full embed of B"
  timed "$BIN" embed "${common[@]}" --output "$WORK/out-b-full" "$WORK/b" 2>&1 | grep -E "rows:|time:|wall"
  echo "-- embed B --reuse A"
  timed "$BIN" embed "${common[@]}" --output "$WORK/out-b-reuse" --reuse "$WORK/out-a" "$WORK/b" 2>&1 |
    grep -E "reuse|rows:|time:|wall"
  echo "-- the two outputs of B, row by row"
  "$PY" scripts/compare_outputs.py "$WORK/out-b-full" "$WORK/out-b-reuse" --min-cosine 0.999999
  "$BIN" verify "$WORK/out-b-reuse" | tail -1
  echo "-- changes A B, then the change set read with duckdb"
  "$BIN" changes "$WORK/out-a" "$WORK/out-b-reuse" --output "$WORK/changes"
  "$PY" - "$WORK/changes" <<'PY'
import sys, duckdb
d = sys.argv[1]
print(duckdb.sql(f"select count(*) as upserted, min(len(embedding)) as dim from '{d}/upserted.parquet'"))
print(duckdb.sql(f"select count(*) as deleted from '{d}/deleted.parquet'"))
PY
fi

if has 2 || has 3 || has 4; then
  # 1M rows: the 579,644 sentences, then again with a suffix.
  "$PY" "$WORK/snapshot.py" "$SENT" --rows 1000000 --out "$WORK/a1m" --files 10
  echo
  echo "== the bench hook (no model, made-up 896-dim vectors, Qwen tokenizer): embed the 1M rows"
  timed "$BIN" embed --debug-noop-model --model "$MODEL" --id-column id --output "$WORK/out-a1m" "$WORK/a1m" 2>&1 |
    grep -E "rows:|repeats|time:|wall"
  du -sh "$WORK/out-a1m"
fi

if has 2; then
  echo
  echo "== 2. the reuse path alone: the same 1M rows reordered into other files, --reuse, nothing to embed"
  "$PY" "$WORK/snapshot.py" "$SENT" --rows 1000000 --out "$WORK/a1m-reordered" --files 7 --reorder
  for key in "--id-column id" ""; do
    rm -rf "$WORK/out-reordered"
    echo "-- matched by ${key:-text hash}"
    # shellcheck disable=SC2086
    timed "$BIN" embed --debug-noop-model --model "$MODEL" $key --output "$WORK/out-reordered" \
      --reuse "$WORK/out-a1m" "$WORK/a1m-reordered" 2>&1 | grep -E "rows:|reuse:|time:|wall"
  done
  rm -rf "$WORK/out-reordered" "$WORK/a1m-reordered"
fi

if has 3 || has 4; then
  "$PY" "$WORK/snapshot.py" "$SENT" --rows 1000000 --out "$WORK/b1m" --files 10 --change 0.05 --delete 0.02 --new 0.03
fi

if has 3; then
  echo
  echo "== 3. one worker over a 1M-row previous output (B: 5% changed, 2% deleted, 3% new)"
  for n in 8 1; do
    rm -rf "$WORK/out-b1m-$n"
    echo "-- worker 0 of $n"
    timed "$BIN" embed --debug-noop-model --model "$MODEL" --id-column id --output "$WORK/out-b1m-$n" \
      --worker-id 0 --num-workers "$n" --reuse "$WORK/out-a1m" "$WORK/b1m" 2>&1 |
      grep -E "rows:|reuse:|input:|time:|wall"
  done
  rm -rf "$WORK/out-b1m-8"
fi

if has 4; then
  echo
  echo "== 4. changes: peak RSS between two snapshots"
  [[ -d $WORK/out-b1m-1 ]] || timed "$BIN" embed --debug-noop-model --model "$MODEL" --id-column id \
    --output "$WORK/out-b1m-1" --reuse "$WORK/out-a1m" "$WORK/b1m" 2>&1 | grep -E "rows:|wall"
  echo "-- 1M ids, dim 896"
  timed "$BIN" changes "$WORK/out-a1m" "$WORK/out-b1m-1" --output "$WORK/changes-1m" 2>&1 | tail -4
  rm -rf "$WORK/out-a1m" "$WORK/out-b1m-1" "$WORK/changes-1m" "$WORK/a1m" "$WORK/b1m"
  for m in 1 5; do
    rows=$((m * 1000000))
    echo "-- ${m}M ids, dim 64 (tiny model, made-up texts)"
    "$PY" "$WORK/snapshot.py" --synthetic x --rows "$rows" --out "$WORK/s-a" --files 10
    "$PY" "$WORK/snapshot.py" --synthetic x --rows "$rows" --out "$WORK/s-b" --files 10 --change 0.05 --delete 0.02 --new 0.03
    "$BIN" embed -q --debug-noop-model --model models/tiny-qwen2 --id-column id --output "$WORK/s-out-a" "$WORK/s-a"
    "$BIN" embed -q --debug-noop-model --model models/tiny-qwen2 --id-column id --output "$WORK/s-out-b" \
      --reuse "$WORK/s-out-a" "$WORK/s-b"
    timed "$BIN" changes "$WORK/s-out-a" "$WORK/s-out-b" --output "$WORK/s-changes" 2>&1 | tail -4
    rm -rf "$WORK"/s-*
  done
fi

if has 5; then
  echo
  echo "== 5. repeats in real reviews (the bench hook: no model; the Qwen tokenizer)"
  for input in "$SENT" "$ASSETS/imdb-reviews"; do
    rm -rf "$WORK/rep"
    echo "-- $(basename "$input")"
    "$BIN" embed --debug-noop-model --model "$MODEL" --output "$WORK/rep" "$input" 2>&1 | grep -E "rows:|repeats"
  done
  rm -rf "$WORK/rep"
fi
