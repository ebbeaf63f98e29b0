#!/usr/bin/env python3
"""Exports the transformer of a model folder (a sentence-transformers folder's Transformer module)
to ONNX for scripts/bench_onnxruntime.py: inputs input_ids and attention_mask, output
last_hidden_state, dynamic batch and length. The same weights batch-embed reads.

    python scripts/export_onnx.py MODEL_DIR OUT.onnx

Needs torch and transformers (the reference venv) and the `onnx` package (bench-cpu.sh puts it
on PYTHONPATH from target/onnx-export).
"""

import json
import os
import sys

import torch
from transformers import AutoModel


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    modules = os.path.join(model_dir, "modules.json")
    if os.path.exists(modules):
        path = json.load(open(modules))[0].get("path", "")
        model_dir = os.path.join(model_dir, path)
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones(2, 8, dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        Wrapped(model), (ids, torch.ones_like(ids)), out, input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
        opset_version=17, dynamo=False,
    )
    print(f"exported {model_dir} to {out}")


if __name__ == "__main__":
    main()
