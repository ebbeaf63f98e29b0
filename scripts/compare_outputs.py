#!/usr/bin/env python3
"""Compares the vectors of two batch-embed output folders row by row (say CUDA vs CPU).

    python scripts/compare_outputs.py A_DIR B_DIR [--min-cosine 0.999]

Prints the rows compared, the lowest cosine similarity and the max abs difference; exits 1 when
the row sets differ or the lowest cosine is under --min-cosine.
"""

import argparse
import glob
import os
import sys

import numpy as np
import pyarrow.parquet as pq


def load(folder):
    out = {}
    for part in sorted(glob.glob(os.path.join(folder, "**", "part-*.parquet"), recursive=True)):
        t = pq.read_table(part, columns=["row", "embedding"])
        for r, e in zip(t.column("row").to_pylist(), t.column("embedding").to_pylist()):
            out[r] = np.asarray(e, dtype=np.float64)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--min-cosine", type=float, default=None)
    args = ap.parse_args()
    a, b = load(args.a), load(args.b)
    if set(a) != set(b):
        print(f"row sets differ: {len(set(a) - set(b))} only in {args.a}, {len(set(b) - set(a))} only in {args.b}")
        sys.exit(1)
    low, worst = 1.0, 0.0
    for r, va in a.items():
        vb = b[r]
        low = min(low, float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb))))
        worst = max(worst, float(np.abs(va - vb).max()))
    print(f"{len(a)} rows: min cosine {low:.7f}, max abs diff {worst:.3e}")
    sys.exit(0 if args.min_cosine is None or low >= args.min_cosine else 1)


if __name__ == "__main__":
    main()
