#!/usr/bin/env python3
"""Builds the tiny random-weight models and golden vectors that the Rust tests compare against.

Run with the reference venv (torch + transformers + tokenizers) from
`../shared/tools/fetch-assets.sh --reference`:

    ~/.cache/batch-embed-assets/venv-ref/bin/python scripts/make_fixtures.py

Everything it writes is deterministic for a given transformers/tokenizers version:
  tests/fixtures/<model>/            config.json, weights, tokenizer.json, reference.json
  models/tiny-qwen2/                 the bundled model README's first command runs
  examples/reviews.parquet           the bundled sample input

The reference vectors are what `transformers` gives for each text run alone (no padding), with an
explicit 4-D additive mask so the attention mode is exactly the one named in the case; the
script checks that this explicit mask reproduces the model's own default (causal) path.
"""

import json
import os
import random
import shutil
import sys

import torch
import transformers
import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model, Qwen3Config, Qwen3Model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# The split pattern of the Qwen2 tokenizer, so the tiny tokenizers pre-tokenize like the real one.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Texts every fixture is checked on: plain, unicode, emoji, whitespace edges, markup, one long.
LONG = " ".join(
    f"Chapter {i}: the reviewer notes that the pacing of part {i} drags, yet the prose stays sharp and the ending lands."
    for i in range(1, 16)
)
TEXTS = [
    "This book was a delight from start to finish.",
    "Terrible binding; pages fell out after a week.",
    "Ok",
    "Café au lait, naïve façade, Zürich — über alles.",
    "日本語のレビュー：とても良い本でした。",
    "Loved it!!! 😍📚🔥 would buy again 👍🏽",
    "   leading and trailing whitespace   \n\t",
    "Line one\nLine two\r\n\nLine four",
    "<p>HTML &amp; markup</p> {\"json\": [1, 2, 3]}",
    "1234567890 3.14159 -42 1e10",
    "",
    LONG,
]
PROMPT = "Instruct: Given a review, retrieve similar reviews\nQuery: "


def corpus():
    """Training text for the tiny BPE: the test texts plus generated review-like sentences."""
    rng = random.Random(7)
    words = (
        "book story author plot character writing page chapter read reader great good bad boring "
        "excellent terrible recommend love hate ending series novel style slow fast gift price "
        "quality paper cover edition print kindle review star stars would again never always"
    ).split()
    lines = list(TEXTS)
    for _ in range(4000):
        n = rng.randint(4, 18)
        s = " ".join(rng.choice(words) for _ in range(n))
        lines.append(s.capitalize() + rng.choice([".", "!", "?", "..."]))
    # Cover every character of the test texts and a range of scripts and symbols.
    lines.append("".join(chr(c) for c in range(0x20, 0x7F)))
    lines.append("àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞß")
    return lines


def train_tokenizer(append_eos):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    eos = tok.token_to_id("<|endoftext|>")
    if append_eos:
        # NOTE: gte-Qwen2's tokenizer.json appends <|endoftext|> in its post-processor.
        tok.post_processor = processors.TemplateProcessing(
            single="$A:0 <|endoftext|>:0",
            pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", eos)],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def config_4x(cfg: dict) -> dict:
    """Rewrites a transformers-5 config.json into the 4.x shape the hub checkpoints have."""
    out = {k: v for k, v in cfg.items() if k not in ("rope_parameters", "layer_types", "dtype")}
    rope = cfg.get("rope_parameters") or {}
    out["rope_theta"] = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    out["rope_scaling"] = None
    out["sliding_window"] = cfg.get("sliding_window") or cfg["max_position_embeddings"]
    out["use_sliding_window"] = False
    out["max_window_layers"] = cfg["num_hidden_layers"]
    out["torch_dtype"] = "float32"
    out["transformers_version"] = "4.41.2"
    return out


def write_weights(model, path, prefix, shards):
    state = {(prefix + k): v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    names = sorted(state)
    if shards == 1:
        save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    per = (len(names) + shards - 1) // shards
    total = 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: state[n] for n in part}, os.path.join(path, fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += state[n].numel() * state[n].element_size()
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


@torch.no_grad()
def reference_case(model, hf_tok, texts, attention, max_tokens=None, prompt=None):
    token_ids, embeddings = [], []
    for text in texts:
        full = (prompt or "") + text
        enc = hf_tok(full, truncation=max_tokens is not None, max_length=max_tokens)
        ids = enc["input_ids"]
        token_ids.append(ids)
        if not ids:
            embeddings.append(None)
            continue
        t = len(ids)
        mask = torch.zeros(1, 1, t, t, dtype=torch.float32)
        if attention == "causal":
            mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
        out = model(
            input_ids=torch.tensor([ids]),
            attention_mask=mask,
            position_ids=torch.arange(t)[None],
        ).last_hidden_state
        # Last-token pooling: the hidden state of the last real token, after the final norm.
        embeddings.append([float(x) for x in out[0, -1]])
    return {
        "attention": attention,
        "max_tokens": max_tokens,
        "prompt": prompt,
        "token_ids": token_ids,
        "embeddings": embeddings,
    }


@torch.no_grad()
def check_default_is_causal(model, hf_tok):
    """The explicit causal mask must reproduce transformers' own default path for a causal config."""
    ids = hf_tok(TEXTS[0])["input_ids"]
    plain = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    t = len(ids)
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
    masked = model(input_ids=torch.tensor([ids]), attention_mask=mask).last_hidden_state[0, -1]
    diff = (plain - masked).abs().max().item()
    assert diff < 1e-5, f"explicit causal mask differs from the default path by {diff}"


def build(name, arch, cfg_kwargs, *, tokenizer, prefix, shards, shape, is_causal, dest=None, cases=True):
    torch.manual_seed(sum(map(ord, name)))
    if arch == "qwen2":
        config = Qwen2Config(**cfg_kwargs)
        model = Qwen2Model(config)
    else:
        config = Qwen3Config(**cfg_kwargs)
        model = Qwen3Model(config)
    # Random init of transformers is small; widen it so layers actually mix and norms matter.
    for n, p in model.named_parameters():
        if n.endswith("norm.weight"):
            p.data = 1.0 + 0.2 * torch.randn_like(p)
        elif n.endswith("bias"):
            p.data = 0.1 * torch.randn_like(p)
        else:
            p.data = 0.08 * torch.randn_like(p)
    model.eval()
    path = dest or os.path.join(FIXTURES, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    model.config.save_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["Qwen2Model" if arch == "qwen2" else "Qwen3Model"]
    if shape == "4x":
        cfg = config_4x(cfg)
    if is_causal is not None:
        cfg["is_causal"] = is_causal
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    write_weights(model, path, prefix, shards)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    if not cases:
        return
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    if is_causal is None:
        check_default_is_causal(model, hf_tok)
    ref = {
        "generated_by": "scripts/make_fixtures.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "texts": TEXTS,
        "cases": [
            reference_case(model, hf_tok, TEXTS, "causal"),
            reference_case(model, hf_tok, TEXTS, "bidirectional"),
            reference_case(model, hf_tok, TEXTS, "causal", max_tokens=12),
            reference_case(model, hf_tok, TEXTS, "causal", prompt=PROMPT),
        ],
    }
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters", file=sys.stderr)


def sample_parquet(path, n=400):
    """A small product-review-like table: id (string), text, stars."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(11)
    openers = ["Honestly,", "I think", "My kids say", "After two weeks,", "As a teacher,", "Overall,", ""]
    subjects = ["this book", "the story", "the paperback edition", "the audiobook", "this cookbook", "the sequel"]
    verdicts = [
        "is wonderful and easy to read",
        "was a bit slow in the middle but worth it",
        "fell apart quickly and the print is tiny",
        "has the best characters I have met in years",
        "is overpriced for what you get",
        "made me laugh and cry",
        "arrived damaged, but the seller replaced it",
    ]
    tails = ["", " Five stars.", " Would not recommend.", " Great gift!", " 😊", " Merci beaucoup."]
    ids, texts, stars = [], [], []
    for i in range(n):
        t = f"{rng.choice(openers)} {rng.choice(subjects)} {rng.choice(verdicts)}.{rng.choice(tails)}".strip()
        ids.append(f"R{i:06d}")
        texts.append(t[0].upper() + t[1:])
        stars.append(rng.randint(1, 5))
    table = pa.table({"review_id": ids, "text": texts, "stars": pa.array(stars, pa.int8())})
    pq.write_table(table, path, row_group_size=100, compression="zstd")


def main():
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    tok_eos = train_tokenizer(append_eos=True)
    tok_plain = train_tokenizer(append_eos=False)
    vocab = 2112  # a little above the tokenizer's 2048, as real checkpoints pad their vocab
    base = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    # gte-Qwen2 as on the hub: 4.x config, `model.` prefix, sharded, GQA, EOS-appending tokenizer.
    build("qwen2-gqa", "qwen2", dict(base, num_attention_heads=4, num_key_value_heads=2),
          tokenizer=tok_eos, prefix="model.", shards=2, shape="4x", is_causal=None)
    # What transformers 5 save_pretrained writes: 5.x config, no prefix; MHA; bidirectional; no EOS.
    build("qwen2-mha-bidir", "qwen2", dict(base, num_attention_heads=4, num_key_value_heads=4, rope_theta=1000000.0),
          tokenizer=tok_plain, prefix="", shards=1, shape="5x", is_causal=False)
    # Qwen3-Embedding shape: q/k RMSNorm, explicit head_dim != hidden/heads, no q/k/v bias.
    build("qwen3", "qwen3", dict(base, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                 attention_bias=False),
          tokenizer=tok_eos, prefix="model.", shards=1, shape="5x", is_causal=None)
    # The bundled model for README's first command (random weights: a smoke test, not a retriever).
    tiny = os.path.join(ROOT, "models", "tiny-qwen2")
    build("tiny-qwen2", "qwen2", dict(base, num_attention_heads=4, num_key_value_heads=2),
          tokenizer=tok_eos, prefix="model.", shards=1, shape="4x", is_causal=None, dest=tiny, cases=False)
    os.makedirs(os.path.join(ROOT, "examples"), exist_ok=True)
    sample_parquet(os.path.join(ROOT, "examples", "reviews.parquet"))
    print("fixtures written", file=sys.stderr)


if __name__ == "__main__":
    main()
