#!/usr/bin/env python3
"""transformers' side of scripts/bench-cpu.sh: last-token embeddings of the texts of a Parquet
file, length-sorted, padded per batch with an attention mask, at several batch sizes; prints the
best rows/s and tokens/s (real tokens, model load excluded, tokenization included).

    python scripts/bench_transformers.py MODEL_DIR FILE.parquet [--threads N] [--batch-sizes 8,16,32,64]
        [--device cpu|cuda] [--dtype float32|bfloat16] [--attn sdpa|eager]

On a GPU (scripts/bench-gpu.sh): --device cuda --dtype bfloat16 --attn sdpa; the time includes
tokenization and the copy of the pooled vectors back to the host, as ours does.
"""

import argparse
import time

import pyarrow.parquet as pq
import torch
from transformers import AutoModel, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-sizes", default="8,16,32,64")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attn", default=None, help="attn_implementation (default: transformers' choice)")
    ap.add_argument("--warmup", type=int, default=0, help="batches run once before timing (GPU)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left"  # last token of every row is then the last real token
    extra = {"attn_implementation": args.attn} if args.attn else {}
    model = AutoModel.from_pretrained(args.model, dtype=getattr(torch, args.dtype), **extra).to(args.device).eval()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    texts = [t for t in pq.read_table(args.input, columns=["text"]).column(0).to_pylist() if t]
    texts.sort(key=len)
    best = None
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        with torch.inference_mode():
            for i in range(args.warmup):
                enc = tok(texts[-bs:], padding=True, truncation=True, max_length=args.max_tokens, return_tensors="pt")
                model(**enc.to(args.device))
        sync()
        start = time.perf_counter()
        tokens = 0
        with torch.inference_mode():
            for i in range(0, len(texts), bs):
                enc = tok(texts[i : i + bs], padding=True, truncation=True, max_length=args.max_tokens, return_tensors="pt")
                tokens += int(enc["attention_mask"].sum())
                out = model(**enc.to(args.device)).last_hidden_state[:, -1]
                torch.nn.functional.normalize(out.float(), dim=-1).cpu()
        sync()
        secs = time.perf_counter() - start
        line = (bs, len(texts) / secs, tokens / secs)
        print(f"transformers batch {bs}: {line[1]:.2f} rows/s, {line[2]:.1f} tokens/s ({secs:.1f}s, {args.device}, {args.dtype})", flush=True)
        if best is None or line[2] > best[2]:
            best = line
    print(f"transformers best: batch {best[0]}: {best[1]:.2f} rows/s, {best[2]:.1f} tokens/s")


if __name__ == "__main__":
    main()
