#!/usr/bin/env python3
"""Random model folders against the reference: the general case the committed fixtures stand for.

Each seed builds a small random-weight model of a random supported architecture with a random
configuration (widths, heads, layers, activation, norms, positions, windows, the config.json shape
transformers 4.x or 5.x writes), saves it as a sentence-transformers folder with random modules
(pooling modes, a Dense layer with a random activation, Normalize or not, prompts, a length
limit), embeds a Parquet file of awkward texts with the binary under random flags, and compares
every vector with `SentenceTransformer.encode` of the same folder under the same settings.

    python scripts/fuzz_models.py --bin target/release/batch-embed --seeds 40 [--arch bert,qwen2] \
        [--work /tmp/fuzz] [--keep] [--start 0]

Needs the reference venv (torch, transformers, sentence-transformers, pyarrow). The tokenizers
are the committed fixtures' (tests/fixtures/*), so nothing is downloaded. Prints one line per seed
(architecture, settings, max abs difference, lowest cosine) and exits 1 if any seed is off by
more than 1e-4 (f32) or fails to run.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import glob

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

# Where each architecture takes its tokenizer from (a committed fixture of the same family).
TOKENIZER_FROM = {
    "bert": "st-bert-mean",
    "distilbert": "st-distilbert",
    "mpnet": "st-mpnet",
    "xlm-roberta": "st-xlmr-prompts",
    "roberta": "st-xlmr-prompts",
    "modernbert": "st-modernbert",
    "qwen2": "qwen2-gqa",
    "qwen3": "qwen3",
    "llama": "llama",
    "mistral": "mistral",
    "gemma3_text": "st-gemma3",
    # sentence-transformers' StaticEmbedding (a token table) with any of the tokenizers above.
    "static": None,
}
DECODERS = {"qwen2", "qwen3", "llama", "mistral", "gemma3_text"}

TEXTS = [
    "This book was a delight from start to finish.",
    "Ok",
    "a",
    "Café au lait, naïve façade, Zürich — über alles.",
    "日本語のレビュー：とても良い本でした。中文文本没有空格也能处理吗",
    "Loved it!!! 😍📚🔥 would buy again 👍🏽 👨‍👩‍👧",
    "   leading and trailing whitespace   \n\t",
    "Line one\nLine two\r\n\nLine four\u2028five\u0085six",
    "<p>HTML &amp; markup</p> {\"json\": [1, 2, 3]} [CLS] <s> </s> <|endoftext|>",
    "1234567890 3.14159 -42 1e10 ١٢٣ ⅷ",
    "Ǆemal ǅ ß ẞ İstanbul ﬁnance ſ",
    "\u0000\u0001 control \u007f chars \u200b zero width \ufeff bom",
    "x" * 300,
    "word " * 120,
    " ".join(f"Sentence {i} of a longer review, with commas; and more." for i in range(40)),
]


def imdb_texts(n, rng):
    path = os.path.expanduser("~/.cache/batch-embed-assets/imdb-sentences/sentences-00000.parquet")
    if not os.path.exists(path):
        return []
    t = pq.read_table(path, columns=["text"]).column(0).to_pylist()
    return rng.sample(t, n)


def widen(model, scale, rng_seed):
    g = torch.Generator().manual_seed(rng_seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or "LayerNorm.weight" in n or n.endswith("layer_norm.weight") \
                    or n.endswith("norm1.weight") or n.endswith("norm2.weight") or "_norm.weight" in n:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embeddings" in n or "embed_tokens" in n:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def pick_heads(rng, hidden, even=False):
    return rng.choice([h for h in (1, 2, 4, 8) if hidden % h == 0 and (not even or (hidden // h) % 2 == 0)])


def build(arch, rng, tok, seed):
    """A random model of `arch` and the settings that describe it."""
    import transformers as T

    vocab = tok.vocab_size if hasattr(tok, "vocab_size") else len(tok)
    vocab = max(vocab, len(tok))
    hidden = rng.choice([16, 24, 32, 48, 64])
    heads = pick_heads(rng, hidden, even=arch in DECODERS or arch == "modernbert")
    layers = rng.randint(1, 3)
    inter = rng.choice([hidden, 2 * hidden, 3 * hidden])
    desc = {"hidden": hidden, "heads": heads, "layers": layers}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if arch == "bert":
        act = rng.choice(["gelu", "gelu_new", "relu", "silu", "gelu_pytorch_tanh"])
        cfg = T.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=inter, max_position_embeddings=rng.choice([128, 512]),
                           type_vocab_size=rng.choice([1, 2]), hidden_act=act,
                           layer_norm_eps=rng.choice([1e-12, 1e-5]), pad_token_id=pad)
        model = T.BertModel(cfg, add_pooling_layer=rng.random() < 0.3)
        desc["act"] = act
    elif arch == "distilbert":
        act = rng.choice(["gelu", "relu"])
        cfg = T.DistilBertConfig(vocab_size=vocab, dim=hidden, n_layers=layers, n_heads=heads, hidden_dim=inter,
                                 max_position_embeddings=128, activation=act, pad_token_id=pad,
                                 sinusoidal_pos_embds=False)
        model = T.DistilBertModel(cfg)
        desc["act"] = act
    elif arch == "mpnet":
        cfg = T.MPNetConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=inter, max_position_embeddings=130, relative_attention_num_buckets=32,
                            pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_act=rng.choice(["gelu", "relu"]))
        model = T.MPNetModel(cfg, add_pooling_layer=False)
    elif arch in ("xlm-roberta", "roberta"):
        C = T.XLMRobertaConfig if arch == "xlm-roberta" else T.RobertaConfig
        M = T.XLMRobertaModel if arch == "xlm-roberta" else T.RobertaModel
        cfg = C(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                intermediate_size=inter, max_position_embeddings=rng.choice([66, 130, 514]),
                type_vocab_size=rng.choice([1, 2]), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                hidden_act=rng.choice(["gelu", "gelu_new"]))
        model = M(cfg, add_pooling_layer=False)
    elif arch == "modernbert":
        n_layers = rng.randint(1, 4)
        cfg = T.ModernBertConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=n_layers,
            num_attention_heads=heads, max_position_embeddings=512, local_attention=rng.choice([8, 16, 64]),
            global_attn_every_n_layers=rng.choice([1, 2, 3]), pad_token_id=tok.pad_token_id,
            bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, cls_token_id=tok.cls_token_id,
            sep_token_id=tok.sep_token_id, hidden_activation="gelu", attn_implementation="eager",
            norm_bias=rng.random() < 0.3, attention_bias=rng.random() < 0.3, mlp_bias=rng.random() < 0.3)
        model = T.ModernBertModel(cfg)
        desc["layers"] = n_layers
    elif arch in ("qwen2", "qwen3", "llama", "mistral"):
        kv = rng.choice([h for h in (1, 2, heads) if heads % h == 0])
        common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=512,
                      rms_norm_eps=rng.choice([1e-6, 1e-5]), tie_word_embeddings=rng.random() < 0.5)
        if arch == "qwen2":
            cfg = T.Qwen2Config(**common, rope_theta=rng.choice([10000.0, 1000000.0]))
            model = T.Qwen2Model(cfg)
        elif arch == "qwen3":
            cfg = T.Qwen3Config(**common, head_dim=rng.choice([8, 16, hidden // heads]),
                                rope_theta=1000000.0, attention_bias=False)
            model = T.Qwen3Model(cfg)
        elif arch == "llama":
            cfg = T.LlamaConfig(**common, attention_bias=rng.random() < 0.5, rope_theta=500000.0,
                                head_dim=hidden // heads)
            model = T.LlamaModel(cfg)
        else:
            cfg = T.MistralConfig(**common, sliding_window=None, rope_theta=10000.0)
            model = T.MistralModel(cfg)
        desc["kv"] = kv
    elif arch == "gemma3_text":
        kv = rng.choice([h for h in (1, 2, heads) if heads % h == 0])
        hd = rng.choice([8, 16])
        n_layers = rng.randint(1, 4)
        window = rng.choice([8, 16, 64])
        cfg = T.Gemma3TextConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=n_layers,
            num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, query_pre_attn_scalar=rng.choice([hd, 8, 32]),
            max_position_embeddings=512, rms_norm_eps=1e-6, sliding_window=window,
            layer_types=[rng.choice(["sliding_attention", "full_attention"]) for _ in range(n_layers)],
            use_bidirectional_attention=True, hidden_activation="gelu_pytorch_tanh", pad_token_id=tok.pad_token_id or 0,
            attn_implementation="eager")
        model = T.Gemma3TextModel(cfg)
        desc.update(kv=kv, window=window, layers=n_layers)
    else:
        raise SystemExit(f"unknown arch {arch}")
    widen(model, rng.choice([0.1, 0.2, 0.3]), seed)
    model.eval()
    return model, desc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "batch-embed"))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--arch", default=",".join(TOKENIZER_FROM))
    ap.add_argument("--work", default="/tmp/batch-embed-fuzz")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--dtype", default="f32", help="batch-embed's --dtype; bf16/f16 run the padded attention path and are "
                    "judged by --min-cosine instead of --tolerance")
    ap.add_argument("--min-cosine", type=float, default=0.995)
    ap.add_argument("--chunk-share", type=float, default=0.3, help="share of seeds run with --chunk-tokens")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer, Dense, Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer

    archs = args.arch.split(",")
    os.makedirs(args.work, exist_ok=True)
    bad = 0
    for seed in range(args.start, args.start + args.seeds):
        rng = random.Random(seed)
        arch = rng.choice(archs)
        torch.manual_seed(seed)
        source = TOKENIZER_FROM[arch] or rng.choice([v for v in TOKENIZER_FROM.values() if v])
        tok = AutoTokenizer.from_pretrained(os.path.join(FIX, source))
        if tok.pad_token is None:
            # The decoder fixtures carry only tokenizer.json: name a pad token as their folders do.
            vocab = tok.get_vocab()
            tok.pad_token = tok.eos_token or next(t for t in ("<|endoftext|>", "</s>", "<unk>", "<s>") if t in vocab)
        if arch == "static":
            from sentence_transformers.sentence_transformer.modules import StaticEmbedding
            hidden = rng.choice([8, 16, 48])
            first = StaticEmbedding(tok, embedding_weights=torch.randn(len(tok), hidden))
            desc, mode, include_prompt, model = {"hidden": hidden, "tokenizer": source}, "static", True, None
            width = hidden
            after = []
        else:
            model, desc = build(arch, rng, tok, seed)
            hidden = desc["hidden"]
            modes = ["cls", "mean", "max", "lasttoken", "weightedmean", "mean_sqrt_len_tokens"]
            mode = "lasttoken" if arch in DECODERS and rng.random() < 0.6 else rng.choice(modes)
            if rng.random() < 0.15:
                mode = rng.sample(["cls", "mean", "max"], 2)
            include_prompt = rng.random() < 0.8
            pooling = Pooling(hidden, pooling_mode=mode, include_prompt=include_prompt)
            width = pooling.get_sentence_embedding_dimension()
            after = [pooling]
        if rng.random() < 0.4:
            act = rng.choice([torch.nn.Tanh(), torch.nn.Identity(), torch.nn.ReLU(), torch.nn.GELU(), torch.nn.Sigmoid()])
            out = rng.choice([8, 16, 40])
            dense = Dense(width, out, bias=rng.random() < 0.7, activation_function=act)
            with torch.no_grad():
                dense.linear.weight.normal_(0, 0.3)
                if dense.linear.bias is not None:
                    dense.linear.bias.normal_(0, 0.1)
            after.append(dense)
            width = out
            desc["dense"] = type(act).__name__
        normalize = rng.random() < 0.7
        if normalize:
            after.append(Normalize())
        # (A static model has no limit; this only sizes the chunks then.)
        limit = getattr(model.config, "max_position_embeddings", 512) if model is not None else 512
        if arch in ("xlm-roberta", "roberta", "mpnet"):
            limit -= 2  # positions start at pad + 1
        max_seq = min(rng.choice([16, 32, 64, 128]), limit)
        prompts = {}
        default_prompt = None
        if rng.random() < 0.4:
            prompts = {"query": "query: ", "doc": "Represent this document for retrieval: "}
            default_prompt = rng.choice([None, "query", "doc"])

        d = os.path.join(args.work, f"seed{seed}")
        shutil.rmtree(d, ignore_errors=True)
        hf = d + ".hf"
        if model is not None:
            model.save_pretrained(hf)
            tok.save_pretrained(hf)
            first = Transformer(hf, max_seq_length=max_seq)
        st = SentenceTransformer(modules=[first, *after], device="cpu", prompts=prompts,
                                 default_prompt_name=default_prompt)
        st.save(d)
        shutil.rmtree(hf, ignore_errors=True)

        texts = TEXTS + imdb_texts(25, rng)
        rng.shuffle(texts)
        inp = os.path.join(args.work, f"seed{seed}.parquet")
        pq.write_table(pa.table({"text": texts}), inp, row_group_size=rng.choice([7, 16, 1000]))

        flags = []
        dims = None
        if rng.random() < 0.25 and width > 8:
            dims = rng.choice([d_ for d_ in (4, 8, width // 2) if d_ < width])
            flags += ["--dimensions", str(dims)]
        if rng.random() < 0.3:
            flags += ["--batch-tokens", str(rng.choice([64, 256, 1024]))]
        if model is None:
            raw_tok = st[0].tokenizer  # tokenizers.Tokenizer; StaticEmbedding adds no special tokens
            count = lambda t: len(raw_tok.encode(t, add_special_tokens=False).ids)  # noqa: E731
        else:
            count = lambda t: len(st[0].tokenizer(t)["input_ids"])  # noqa: E731
        prompt = prompts.get(default_prompt, "") if default_prompt else ""
        overhead = count(prompt)
        chunk = None
        if rng.random() < args.chunk_share and max_seq - overhead >= 12:
            size = rng.randint(overhead + 12, max_seq)
            overlap = rng.choice([0, 0, 2, (size - overhead) // 3])
            chunk = (size, overlap)
            flags += ["--chunk-tokens", str(size), "--chunk-overlap", str(overlap)]
        out = os.path.join(args.work, f"out{seed}")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [args.bin, "embed", "-q", "--model", d, "--output", out, "--dtype", args.dtype, *flags, inp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        label = f"seed {seed:3d} {arch:12s} {json.dumps(desc)} pool={mode} ip={include_prompt} norm={normalize} " \
                f"max={max_seq} prompt={default_prompt} dims={dims} chunk={chunk}"
        if r.returncode != 0:
            if model is not None and overhead >= max_seq and "no text would be left" in r.stderr:
                print(f"ok  {label}: refused, the prompt fills the length limit", flush=True)
            else:
                print(f"FAIL {label}\n  {' '.join(cmd)}\n  {r.stderr.strip()}", flush=True)
                bad += 1
            continue
        # (row, chunk) -> vector, and the text each vector stands for.
        ours, wanted = {}, {}
        for part in glob.glob(os.path.join(out, "*", "part-*.parquet")):
            tb = pq.read_table(part).to_pydict()
            for i, (row, e) in enumerate(zip(tb["row"], tb["embedding"])):
                key, text = (row, 0), texts[row]
                if chunk:
                    key = (row, tb["chunk"][i])
                    text = texts[row].encode()[tb["chunk_start"][i]:tb["chunk_end"][i]].decode()
                ours[key] = np.asarray(e, dtype=np.float64)
                wanted[key] = text
        problems = []
        if chunk:
            for row, text in enumerate(texts):
                spans = [(wanted[k], k) for k in sorted(k for k in ours if k[0] == row)]
                if not spans:
                    problems.append(f"row {row} has no chunks")
                    continue
                for chunk_text, k in spans:
                    n = count(prompt + chunk_text)
                    if n > chunk[0]:
                        problems.append(f"row {row} chunk {k[1]} has {n} tokens > {chunk[0]}")
                tb_rows = [k for _, k in spans]
                if [k[1] for k in tb_rows] != list(range(len(tb_rows))):
                    problems.append(f"row {row} chunks {tb_rows} not 0..k-1")
            # coverage: every non-space byte inside some chunk
            for part in glob.glob(os.path.join(out, "*", "part-*.parquet")):
                tb = pq.read_table(part).to_pydict()
                cov = {}
                for row, a, b in zip(tb["row"], tb["chunk_start"], tb["chunk_end"]):
                    cov.setdefault(row, bytearray(len(texts[row].encode())))
                    for j in range(a, b):
                        cov[row][j] = 1
                for row, c in cov.items():
                    raw = texts[row].encode()
                    lost = [j for j in range(len(raw)) if not c[j] and raw[j:j + 1] not in (b" ", b"\n", b"\t", b"\r")]
                    if lost and count(prompt + texts[row]) > 0:
                        problems.append(f"row {row}: {len(lost)} bytes in no chunk")
        keys = sorted(wanted)
        with torch.no_grad():
            ref = st.encode([wanted[k] for k in keys], batch_size=8, convert_to_numpy=True).astype(np.float64)
        if dims:
            ref = ref[:, :dims]
        if normalize or dims:
            ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
        worst, low = 0.0, 1.0
        for k, b in zip(keys, ref):
            a = ours[k]
            worst = max(worst, float(np.max(np.abs(a - b))))
            low = min(low, float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)))
        # A text with no tokens at all (possible only without special tokens) is a failure.
        missing = sorted(set(range(len(texts))) - {k[0] for k in keys} - {i for i, t in enumerate(texts) if count(t) == 0})
        scale = float(np.max(np.abs(ref))) if len(ref) else 1.0
        close = worst <= args.tolerance * max(1.0, scale) if args.dtype == "f32" else low >= args.min_cosine
        ok = close and not missing and not problems
        if not ok:
            bad += 1
        miss = f" missing rows {[texts[m][:20] for m in missing]}" if missing else ""
        probs = f" problems {problems[:5]}" if problems else ""
        print(f"{'ok  ' if ok else 'BAD '}{label} vectors {len(keys)} max|diff| {worst:.2e} (scale {scale:.2g}) "
              f"min cos {low:.7f}{miss}{probs}", flush=True)
        if not args.keep and ok:
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            os.remove(inp)
    print(f"{bad} of {args.seeds} seeds off or failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
