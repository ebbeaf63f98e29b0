#!/usr/bin/env python3
"""Writes a Qwen2 model of a real model's shape with random weights (transformers' own init),
for GPU correctness checks and benchmarks where the real weights cannot be fetched.

    python scripts/make_random_model.py SHAPE OUT_DIR [--dtype bfloat16] [--device cuda]
        [--tokenizer models/tiny-qwen2] [--seed 0] [--layers N]

SHAPE: gte-qwen2-1.5b, gte-qwen2-7b (the published configs' sizes: vocab 151,646, 28 layers) or
small (4 layers, for testing the scripts on a CPU). The tokenizer files are copied from
--tokenizer; the model is saved as sharded safetensors (5 GB shards) with an index, as the
published models are.
"""

import argparse
import os
import shutil

import torch
from transformers import Qwen2Config, Qwen2Model

BASE = dict(
    vocab_size=151646,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    tie_word_embeddings=False,
)
SHAPES = {
    "gte-qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                           num_attention_heads=12, num_key_value_heads=2),
    "gte-qwen2-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "models", "tiny-qwen2"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    args = ap.parse_args()
    shape = dict(BASE, **SHAPES[args.shape])
    if args.layers:
        shape["num_hidden_layers"] = args.layers
    config = Qwen2Config(**shape)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = Qwen2Model(config).to(getattr(torch, args.dtype)).eval()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="5GB")
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        src = os.path.join(args.tokenizer, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, name))
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: {args.shape}, {n / 1e9:.2f}B parameters, {args.dtype}")


if __name__ == "__main__":
    main()
