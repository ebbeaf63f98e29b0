#!/usr/bin/env python3
"""Builds the tiny random-weight models and golden vectors that the Rust tests compare against.

Run with the reference venv (torch + transformers + tokenizers) from
`../shared/tools/fetch-assets.sh --reference`:

    ~/.cache/batch-embed-assets/venv-ref/bin/python scripts/make_fixtures.py [NAME ...]

With NAMEs (qwen2-gqa qwen2-mha-bidir qwen3 mistral llama tiny-qwen2 reviews.parquet; st for every
sentence-transformers folder, or one of st-bert-mean st-bert-cls-dense st-distilbert st-mpnet
st-gemma3 st-xlmr-prompts st-modernbert st-qwen2-last st-static st-static-m2v st-nomic st-nomic-abs st-gte st-gte-mixed; pytorch-bin, st-bert-mean's weights as
PyTorch pickles, rebuilt with it) only those are rebuilt, so adding a
fixture leaves the others byte for byte as they were.

What it writes (the parts live in scripts/fixtures/: common.py, decoders.py, encoders.py):
  tests/fixtures/<model>/            config.json, weights, tokenizer.json, reference.json
  tests/fixtures/st-<model>/         sentence-transformers folders (modules.json, 1_Pooling/, ...)
  tests/fixtures/st-static*/         sentence-transformers StaticEmbedding folders (6.x layout; 3.x with model2vec tensors)
  tests/fixtures/pytorch-bin/        st-bert-mean's weights as pytorch_model.bin, single and sharded
  models/tiny-qwen2/                 the bundled model README's first command runs
  examples/reviews.parquet           the bundled sample input
BATCH_EMBED_FIXTURES_DIR=DIR writes the tests/fixtures part into DIR instead, to compare.

For a given transformers/tokenizers version the output is byte for byte the same from run to
run, except in the five fixtures with a WordPiece or Unigram tokenizer (st-bert-mean,
st-bert-cls-dense, st-distilbert, st-mpnet, st-xlmr-prompts): those trainers in `tokenizers`
break ties between equally frequent merges in hash-map order, which changes per process, so
their vocabularies (and so their reference vectors) differ between runs. Each run's fixture is
consistent in itself, which is all the tests rely on.

The reference vectors of the decoder fixtures (Qwen2, Qwen3, Mistral, Llama) are what
`transformers` gives for each text run alone (no padding), with an explicit 4-D additive mask
so the attention mode is exactly the one named in the case; the script checks that this
explicit mask reproduces the model's own default (causal) path.

The sentence-transformers fixtures (BERT, DistilBERT, MPNet, EmbeddingGemma-style Gemma 3,
XLM-RoBERTa, ModernBERT, Qwen2 with last-token pooling) are tiny random-weight models saved by
sentence-transformers itself; their reference vectors are `SentenceTransformer.encode` of each text alone, for each case's settings (pooling,
prompt, truncation, dimensions, normalisation), built as the sentence-transformers pipeline
batch-embed's flags stand for.
"""

import os
import random
import sys

import torch
from fixtures.common import ROOT, train_tokenizer, train_llama_tokenizer
from fixtures.decoders import build
from fixtures.encoders import build_st_fixtures
from fixtures.pytorch_bin import build_pytorch_bin
from fixtures.static import build_static_fixtures
from fixtures.nomic import build_nomic
from fixtures.gte import build_gte


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
    """`make_fixtures.py [NAME ...]` rebuilds only the fixtures named (all when none are)."""
    wanted = set(sys.argv[1:])

    def want(name):
        return not wanted or name in wanted

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
    if want("qwen2-gqa"):
        build("qwen2-gqa", "qwen2", dict(base, num_attention_heads=4, num_key_value_heads=2),
              tokenizer=tok_eos, prefix="model.", shards=2, shape="4x", is_causal=None)
    # What transformers 5 save_pretrained writes: 5.x config, no prefix; MHA; bidirectional; no EOS.
    if want("qwen2-mha-bidir"):
        build("qwen2-mha-bidir", "qwen2",
              dict(base, num_attention_heads=4, num_key_value_heads=4, rope_theta=1000000.0),
              tokenizer=tok_plain, prefix="", shards=1, shape="5x", is_causal=False)
    # Qwen3-Embedding shape: q/k RMSNorm, explicit head_dim != hidden/heads, no q/k/v bias.
    if want("qwen3"):
        build("qwen3", "qwen3", dict(base, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                     attention_bias=False),
              tokenizer=tok_eos, prefix="model.", shards=1, shape="5x", is_causal=None)
    # e5-mistral-7b-instruct's shape: Mistral (no biases, a 4096 sliding window), GQA, `model.`
    # prefix, a SentencePiece-style BPE (Metaspace, byte fallback) adding <s> and </s>.
    if want("mistral"):
        build("mistral", "mistral", dict(base, num_attention_heads=4, num_key_value_heads=2, sliding_window=4096),
              tokenizer=train_llama_tokenizer(metaspace=True, append_eos=True), prefix="model.", shards=1,
              shape="5x", is_causal=None)
    # Llama with q/k/v biases on, rope_theta of Llama 3, no prefix; the older "▁"-normalizer
    # tokenizer (Llama 2), <s> only.
    if want("llama"):
        # Llama 3.1's rope scaling, its original context shrunk to 64 so that the texts here (up
        # to ~300 tokens) meet every band: kept, blended and divided frequencies.
        rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=64)
        build("llama", "llama", dict(base, num_attention_heads=4, num_key_value_heads=4, attention_bias=True,
                                     rope_parameters=rope),
              tokenizer=train_llama_tokenizer(metaspace=False, append_eos=False), prefix="", shards=1,
              shape="5x", is_causal=None)
    # The bundled model for README's first command (random weights: a smoke test, not a retriever).
    if want("tiny-qwen2"):
        tiny = os.path.join(ROOT, "models", "tiny-qwen2")
        build("tiny-qwen2", "qwen2", dict(base, num_attention_heads=4, num_key_value_heads=2),
              tokenizer=tok_eos, prefix="model.", shards=1, shape="4x", is_causal=None, dest=tiny, cases=False)
    if want("reviews.parquet"):
        os.makedirs(os.path.join(ROOT, "examples"), exist_ok=True)
        sample_parquet(os.path.join(ROOT, "examples", "reviews.parquet"))
    st_names = ["st-bert-mean", "st-bert-cls-dense", "st-distilbert", "st-mpnet", "st-gemma3", "st-xlmr-prompts",
                "st-modernbert", "st-qwen2-last"]
    if any(want(n) for n in st_names) or "st" in wanted:
        build_st_fixtures(tok_eos, lambda n: want(n) or "st" in wanted)
    if want("st-nomic") or want("st-nomic-abs") or "st" in wanted:
        build_nomic(lambda n: want(n) or "st" in wanted)
    if want("st-gte") or want("st-gte-mixed") or "st" in wanted:
        build_gte(lambda n: want(n) or "st" in wanted)
    if want("st-static") or want("st-static-m2v") or "st" in wanted:
        build_static_fixtures(tok_eos, lambda n: want(n) or "st" in wanted)
    # After st-bert-mean: its weights again as PyTorch pickles (single and sharded).
    if want("pytorch-bin") or want("st-bert-mean") or "st" in wanted:
        build_pytorch_bin()
    print("fixtures written", file=sys.stderr)


if __name__ == "__main__":
    main()
