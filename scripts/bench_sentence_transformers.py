#!/usr/bin/env python3
"""sentence-transformers' side of scripts/bench-cpu.sh's encoder section: `SentenceTransformer.encode`
of the texts of a Parquet file at several batch sizes (it sorts by length and pads per batch);
prints each and the best rows/s and tokens/s. Tokens are the real tokens of each text after
truncation at the model's max_seq_length, special tokens included (what batch-embed counts);
model load excluded, tokenization included.

    python scripts/bench_sentence_transformers.py MODEL_DIR FILE.parquet [--threads N] [--batch-sizes 16,32,64,128]
"""

import argparse
import time

import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-sizes", default="16,32,64,128")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.model, device="cpu")
    texts = [t for t in pq.read_table(args.input, columns=["text"]).column(0).to_pylist() if t]
    tok = model.tokenizer
    tokens = sum(len(ids) for ids in tok(texts, truncation=True, max_length=model.max_seq_length)["input_ids"])
    model.encode(texts[:64], batch_size=32)  # warm-up
    best = None
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        start = time.perf_counter()
        model.encode(texts, batch_size=bs, convert_to_numpy=True)
        secs = time.perf_counter() - start
        line = (bs, len(texts) / secs, tokens / secs)
        print(f"sentence-transformers batch {bs}: {line[1]:.1f} rows/s, {line[2]:.0f} tokens/s ({secs:.1f}s)", flush=True)
        if best is None or line[2] > best[2]:
            best = line
    print(f"sentence-transformers best: batch {best[0]}: {best[1]:.1f} rows/s, {best[2]:.0f} tokens/s")


if __name__ == "__main__":
    main()
