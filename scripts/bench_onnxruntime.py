#!/usr/bin/env python3
"""ONNX Runtime's side of scripts/bench-cpu.sh's encoder section: the model exported by
scripts/export_onnx.py, run as CPU users run it — the `tokenizers` library for the texts
(the model's tokenizer.json, truncated at max_seq_length), length-sorted batches padded per
batch, ORT's CPU provider with all graph optimisations and N intra-op threads, mean pooling and
L2 normalisation in numpy (the model's modules.json pooling). Prints each batch size and the
best rows/s and tokens/s (real tokens; model load excluded, tokenization included).

    python scripts/bench_onnxruntime.py MODEL.onnx MODEL_DIR FILE.parquet [--threads N] [--batch-sizes 16,32,64,128]

Run with a Python that has onnxruntime, tokenizers, numpy and pyarrow (bench-cpu.sh makes one
in target/ort-venv).
"""

import argparse
import json
import os
import time

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("onnx")
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-sizes", default="16,32,64,128")
    args = ap.parse_args()
    sbert = os.path.join(args.model, "sentence_bert_config.json")
    max_len = json.load(open(sbert)).get("max_seq_length", 512) if os.path.exists(sbert) else 512
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    tok.enable_truncation(max_len)
    tok.no_padding()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.threads:
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
    session = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
    texts = [t for t in pq.read_table(args.input, columns=["text"]).column(0).to_pylist() if t]
    texts.sort(key=len)
    best = None
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(texts), bs):
            enc = tok.encode_batch_fast(texts[i : i + bs])
            longest = max(len(e.ids) for e in enc)
            ids = np.zeros((len(enc), longest), dtype=np.int64)
            mask = np.zeros((len(enc), longest), dtype=np.int64)
            for r, e in enumerate(enc):
                ids[r, : len(e.ids)] = e.ids
                mask[r, : len(e.ids)] = 1
            tokens += int(mask.sum())
            (states,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
            m = mask[:, :, None].astype(np.float32)
            pooled = (states * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
        secs = time.perf_counter() - start
        line = (bs, len(texts) / secs, tokens / secs)
        print(f"onnxruntime batch {bs}: {line[1]:.1f} rows/s, {line[2]:.0f} tokens/s ({secs:.1f}s)", flush=True)
        if best is None or line[2] > best[2]:
            best = line
    print(f"onnxruntime best: batch {best[0]}: {best[1]:.1f} rows/s, {best[2]:.0f} tokens/s")


if __name__ == "__main__":
    main()
