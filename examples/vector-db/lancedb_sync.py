#!/usr/bin/env python3
"""Keep a LanceDB table in step with batch-embed outputs.

    python lancedb_sync.py load   OUTPUT  DB [--table reviews]   # a full output, from scratch
    python lancedb_sync.py apply  CHANGES DB [--table reviews]   # a `batch-embed changes` set
    python lancedb_sync.py dump   DB FILE.parquet [--table reviews]

OUTPUT is an `embed --output` folder (made with --id-column); CHANGES is the `--output` folder of
`batch-embed changes PREVIOUS CURRENT`. The table has columns id, vector, text_hash. Needs
`pip install lancedb pyarrow`.
"""
import argparse
import glob
import os

import lancedb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def as_rows(table):
    """id, vector, text_hash: LanceDB searches the column named `vector` by default."""
    return table.select(["id", "embedding", "text_hash"]).rename_columns(["id", "vector", "text_hash"])


def load(output, db, name):
    parts = sorted(glob.glob(os.path.join(output, "worker-*", "part-*.parquet")))
    table = as_rows(ds.dataset(parts).to_table())
    lancedb.connect(db).create_table(name, data=table, mode="overwrite")
    print(f"loaded {table.num_rows} rows into {db}/{name}")


def sql_literal(value):
    return repr(value) if isinstance(value, (int, float)) else "'" + str(value).replace("'", "''") + "'"


def apply(changes, db, name):
    tbl = lancedb.connect(db).open_table(name)
    upserted = pq.read_table(os.path.join(changes, "upserted.parquet"))
    if upserted.num_rows:
        (tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
            .execute(as_rows(upserted)))
    deleted = pq.read_table(os.path.join(changes, "deleted.parquet")).column("id").to_pylist()
    for i in range(0, len(deleted), 1000):
        tbl.delete("id IN (" + ", ".join(sql_literal(v) for v in deleted[i:i + 1000]) + ")")
    print(f"upserted {upserted.num_rows} rows and deleted {len(deleted)} ids in {db}/{name}: {tbl.count_rows()} rows")


def dump(db, path, name):
    pq.write_table(lancedb.connect(db).open_table(name).to_arrow().sort_by("id"), path)


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
