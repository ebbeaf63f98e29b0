#!/usr/bin/env python3
"""Compares batch-embed's vectors with sentence-transformers' for the same model folder and texts:
the extra check of a real model (all-MiniLM-L6-v2 from the shared assets) against the reference.

    python scripts/compare_sentence_transformers.py --model DIR --input FILE.parquet --ours OUTPUT_DIR \
        [--prompt-name NAME] [--max-tokens N] [--dimensions D] [--batch-size 64] [--limit N] \
        [--text-column text] [--device cpu|cuda] [--dtype float32|bfloat16|float16] [--max-diff X] \
        [--min-cosine C]

`--ours` is the output folder of a `batch-embed embed --model DIR` run over `--input` with the same
flags. sentence-transformers loads DIR as it is (its modules.json, pooling, Dense, Normalize,
max_seq_length, prompts) and encodes the texts on --device in --dtype (default the CPU, f32);
with --dimensions the vectors are cut and re-normalised as batch-embed does. Prints the max abs difference and the lowest
cosine; exits 1 when --max-diff/--min-cosine are given and not met.
"""

import argparse
import glob
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--prompt-name", default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--dimensions", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="compare only the first N rows")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-diff", type=float, default=None)
    ap.add_argument("--min-cosine", type=float, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = SentenceTransformer(args.model, device=args.device)
    model.to(getattr(torch, args.dtype))
    if args.max_tokens:
        model.max_seq_length = args.max_tokens
    texts = pq.read_table(args.input, columns=[args.text_column]).column(0).to_pylist()
    if args.limit:
        texts = texts[: args.limit]
    ours = {}
    for part in sorted(glob.glob(os.path.join(args.ours, "**", "part-*.parquet"), recursive=True)):
        t = pq.read_table(part, columns=["row", "embedding"])
        for r, e in zip(t.column("row").to_pylist(), t.column("embedding").to_pylist()):
            ours[r] = np.asarray(e, dtype=np.float64)

    rows = [r for r, t in enumerate(texts) if t is not None]
    kwargs = {"prompt_name": args.prompt_name} if args.prompt_name else {}
    theirs = model.encode([texts[r] for r in rows], batch_size=args.batch_size, convert_to_tensor=True, **kwargs)
    theirs = theirs.float().cpu().numpy().astype(np.float64)
    if args.dimensions:
        theirs = theirs[:, : args.dimensions]
        theirs /= np.linalg.norm(theirs, axis=1, keepdims=True)
    worst, low_cos, missing = 0.0, 1.0, 0
    for r, want in zip(rows, theirs):
        got = ours.get(r)
        if got is None:
            missing += 1
            continue
        worst = max(worst, float(np.abs(got - want).max()))
        low_cos = min(low_cos, float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
    print(
        f"{len(rows) - missing} texts compared ({missing} missing from ours): max abs diff {worst:.3e}, "
        f"lowest cosine {low_cos:.7f} (sentence-transformers, dim {theirs.shape[1]}, {args.dtype} on {args.device})"
    )
    failed = missing > 0
    if args.max_diff is not None and worst > args.max_diff:
        failed = True
    if args.min_cosine is not None and low_cos < args.min_cosine:
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
