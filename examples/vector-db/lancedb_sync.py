#!/usr/bin/env python3
"""Keep a LanceDB table in step with batch-embed outputs.

    python lancedb_sync.py load   OUTPUT  DB [--table reviews]   # a full output, from scratch
    python lancedb_sync.py apply  CHANGES DB [--table reviews]   # a `batch-embed changes` set
    python lancedb_sync.py dump   DB FILE.parquet [--table reviews]

OUTPUT is an `embed --output` folder (made with --id-column); CHANGES is the `--output` folder of
`batch-embed changes PREVIOUS CURRENT`. The table has columns id, vector, text_hash; for a run with
one row per chunk (`--chunk-tokens` without `--chunk-pool`) also chunk, chunk_start, chunk_end, and
a record is (id, chunk). Needs `pip install lancedb pyarrow`.
"""
import argparse
import glob
import os

import lancedb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


CHUNK_COLUMNS = ["chunk", "chunk_start", "chunk_end"]


def chunked(table):
    return "chunk" in table.column_names


def as_rows(table):
    """id, [chunk, chunk_start, chunk_end,] vector, text_hash: LanceDB searches the column named
    `vector` by default."""
    columns = ["id"] + (CHUNK_COLUMNS if chunked(table) else []) + ["embedding", "text_hash"]
    return table.select(columns).rename_columns([("vector" if c == "embedding" else c) for c in columns])


def load(output, db, name):
    parts = sorted(glob.glob(os.path.join(output, "worker-*", "part-*.parquet")))
    table = as_rows(ds.dataset(parts).to_table())
    lancedb.connect(db).create_table(name, data=table, mode="overwrite")
    print(f"loaded {table.num_rows} rows into {db}/{name}")


def sql_literal(value):
    return repr(value) if isinstance(value, (int, float)) else "'" + str(value).replace("'", "''") + "'"


def delete_ids(tbl, ids):
    for i in range(0, len(ids), 1000):
        tbl.delete("id IN (" + ", ".join(sql_literal(v) for v in ids[i:i + 1000]) + ")")


def apply(changes, db, name):
    tbl = lancedb.connect(db).open_table(name)
    upserted = pq.read_table(os.path.join(changes, "upserted.parquet"))
    deleted = pq.read_table(os.path.join(changes, "deleted.parquet")).column("id").to_pylist()
    if chunked(upserted):
        # One row per chunk: deleted.parquet also lists every changed id, whose old chunks go
        # first (its new text may have fewer); then the new chunks are upserted on (id, chunk), so
        # applying the same change set twice gives the same table.
        delete_ids(tbl, deleted)
        if upserted.num_rows:
            (tbl.merge_insert(["id", "chunk"]).when_matched_update_all().when_not_matched_insert_all()
                .execute(as_rows(upserted)))
    else:
        if upserted.num_rows:
            (tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
                .execute(as_rows(upserted)))
        delete_ids(tbl, deleted)
    print(f"upserted {upserted.num_rows} rows and deleted {len(deleted)} ids in {db}/{name}: {tbl.count_rows()} rows")


def dump(db, path, name):
    table = lancedb.connect(db).open_table(name).to_arrow()
    keys = [("id", "ascending")] + ([("chunk", "ascending")] if chunked(table) else [])
    pq.write_table(table.sort_by(keys), path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["load", "apply", "dump"])
    ap.add_argument("source")
    ap.add_argument("target")
    ap.add_argument("--table", default="reviews")
    a = ap.parse_args()
    {"load": load, "apply": apply, "dump": dump}[a.command](a.source, a.target, a.table)


if __name__ == "__main__":
    main()
