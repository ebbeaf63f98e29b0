#!/usr/bin/env python3
"""Compares batch-embed's vectors with transformers' for the same model, texts and options.

    python scripts/compare_transformers.py --model DIR --input FILE.parquet --ours OUTPUT_DIR \
        [--attention causal|bidirectional] [--max-tokens N] [--normalized] [--device cpu|cuda] \
        [--dtype float32|bfloat16] [--text-column text]

`--ours` is the output folder of a `batch-embed embed --no-normalize` run over `--input` (or of a
normalised run with `--normalized`). Every text is run through transformers alone (no padding),
with an explicit 4-D mask for the attention mode, and pooled on its last token after the final
norm. Prints the max abs difference and the lowest cosine similarity; exits 1 when
--max-diff/--min-cosine are given and not met.
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import AutoModel, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--ours", required=True)
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--attention", default=None, help="default: from config.json's is_causal")
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--normalized", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--max-diff", type=float, default=None)
    ap.add_argument("--min-cosine", type=float, default=None)
    args = ap.parse_args()

    cfg = json.load(open(os.path.join(args.model, "config.json")))
    attention = args.attention or ("bidirectional" if cfg.get("is_causal") is False else "causal")
    max_tokens = args.max_tokens or min(cfg["max_position_embeddings"], 8192)
    dtype = getattr(torch, args.dtype)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model, dtype=dtype, attn_implementation="eager").to(args.device).eval()

    texts = pq.read_table(args.input, columns=[args.text_column]).column(0).to_pylist()
    ours = {}
    for part in sorted(glob.glob(os.path.join(args.ours, "**", "part-*.parquet"), recursive=True)):
        t = pq.read_table(part, columns=["row", "embedding"])
        for r, e in zip(t.column("row").to_pylist(), t.column("embedding").to_pylist()):
            ours[r] = np.asarray(e, dtype=np.float64)

    worst, worst_unit, scale, low_cos, n = 0.0, 0.0, 0.0, 1.0, 0
    with torch.no_grad():
        for row, text in enumerate(texts):
            if text is None:
                continue
            ids = tok(text, truncation=True, max_length=max_tokens)["input_ids"]
            if not ids:
                continue
            t = len(ids)
            mask = torch.zeros(1, 1, t, t, dtype=dtype, device=args.device)
            if attention == "causal":
                mask = torch.full((t, t), float("-inf"), device=args.device).triu(1)[None, None].to(dtype)
            out = model(
                input_ids=torch.tensor([ids], device=args.device),
                attention_mask=mask,
                position_ids=torch.arange(t, device=args.device)[None],
            ).last_hidden_state[0, -1].float().cpu().numpy().astype(np.float64)
            if args.normalized:
                out = out / np.linalg.norm(out)
            if row not in ours:
                print(f"row {row}: missing from {args.ours}", file=sys.stderr)
                sys.exit(1)
            mine = ours[row]
            worst = max(worst, float(np.abs(mine - out).max()))
            scale = max(scale, float(np.abs(out).max()))
            unit = np.abs(mine / np.linalg.norm(mine) - out / np.linalg.norm(out)).max()
            worst_unit = max(worst_unit, float(unit))
            low_cos = min(low_cos, float(mine @ out / (np.linalg.norm(mine) * np.linalg.norm(out))))
            n += 1
    print(f"{n} texts, attention {attention}, {args.dtype} on {args.device}: "
          f"max abs diff {worst:.3e} (largest |value| {scale:.3g}), "
          f"after L2 normalisation {worst_unit:.3e}, min cosine {low_cos:.7f}")
    ok = (args.max_diff is None or worst <= args.max_diff) and (args.min_cosine is None or low_cos >= args.min_cosine)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
