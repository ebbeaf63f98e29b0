#!/usr/bin/env python3
"""Builds the tiny random-weight models and golden vectors that the Rust tests compare against.

Run with the reference venv (torch + transformers + tokenizers) from
`../shared/tools/fetch-assets.sh --reference`:

    ~/.cache/batch-embed-assets/venv-ref/bin/python scripts/make_fixtures.py [NAME ...]

With NAMEs (qwen2-gqa qwen2-mha-bidir qwen3 mistral llama tiny-qwen2 reviews.parquet; st for every
sentence-transformers folder, or one of st-bert-mean st-bert-cls-dense st-distilbert st-mpnet
st-gemma3 st-xlmr-prompts st-modernbert st-qwen2-last) only those are rebuilt, so adding a
fixture leaves the others byte for byte as they were.

Everything it writes is deterministic for a given transformers/tokenizers version:
  tests/fixtures/<model>/            config.json, weights, tokenizer.json, reference.json
  tests/fixtures/st-<model>/         sentence-transformers folders (modules.json, 1_Pooling/, ...)
  models/tiny-qwen2/                 the bundled model README's first command runs
  examples/reviews.parquet           the bundled sample input

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
from transformers import (LlamaConfig, LlamaModel, MistralConfig, MistralModel, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2Model, Qwen3Config, Qwen3Model)

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


def train_llama_tokenizer(metaspace, append_eos):
    """A SentencePiece-style BPE as Llama 2 and Mistral ship it in tokenizer.json: "▁" for
    spaces (by a normalizer, or the newer Metaspace pre-tokenizer), byte fallback to <0xNN>
    tokens, <s> prepended (and </s> appended, as e5-mistral's recipe does)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  max_token_length=8)
    # Leave out the rarest characters so that byte fallback has work to do.
    common = [line for line in corpus() if not any(ord(c) > 0x2000 for c in line)]
    tok.train_from_iterator(common, trainer=trainer)
    # The 256 byte tokens, as SentencePiece vocabularies hold them (ids after the merges').
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    tok = Tokenizer.from_str(json.dumps(spec))
    single = "<s>:0 $A:0 </s>:0" if append_eos else "<s>:0 $A:0"
    pair = "<s>:0 $A:0 </s>:0 <s>:1 $B:1 </s>:1" if append_eos else "<s>:0 $A:0 <s>:1 $B:1"
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
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
    classes = {
        "qwen2": (Qwen2Config, Qwen2Model),
        "qwen3": (Qwen3Config, Qwen3Model),
        "llama": (LlamaConfig, LlamaModel),
        "mistral": (MistralConfig, MistralModel),
    }
    config_class, model_class = classes[arch]
    config = config_class(**cfg_kwargs)
    model = model_class(config)
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
    cfg["architectures"] = [model_class.__name__]
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


# --- sentence-transformers fixtures -------------------------------------------------------------

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(lowercase):
    """A BERT-style WordPiece tokenizer: BertNormalizer, BertPreTokenizer, [CLS] $A [SEP]."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=900, special_tokens=BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]",
    )


def train_unigram():
    """An XLM-R-style SentencePiece tokenizer: Unigram, Metaspace, <s> $A </s>, <pad> = 1."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=700, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0 </s>:0", pair="<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
        cls_token="<s>", pad_token="<pad>", mask_token="<mask>",
    )


def train_modernbert_bpe():
    """A ModernBERT-style tokenizer: byte-level BPE with the GPT-2 split, [CLS] $A [SEP]."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]",
    )


def widen(model, scale):
    """Random init of transformers is tiny; widen it so layers mix, norms and positions matter."""
    for n, p in model.named_parameters():
        if n.endswith("norm.weight") or "LayerNorm.weight" in n:
            p.data = 1.0 + 0.2 * torch.randn_like(p)
        elif n.endswith("bias") or "LayerNorm.bias" in n:
            p.data = 0.1 * torch.randn_like(p)
        elif "embeddings" in n:
            p.data = torch.randn_like(p)
        else:
            p.data = scale * torch.randn_like(p)


def case(name, **flags):
    """A case of a fixture: batch-embed's flags (None: not given) and the pipeline they mean."""
    keys = ["pooling", "prompt", "prompt_name", "max_tokens", "dimensions", "normalize"]
    return {"name": name, "flags": {k: flags.get(k) for k in keys}}


ST_POOLING = {"cls": "cls", "mean": "mean", "max": "max", "last": "lasttoken", "weighted-mean": "weightedmean"}


@torch.no_grad()
def st_reference(path, cases):
    """Each case's vectors from sentence-transformers itself: the saved folder loaded as it is,
    its modules swapped as the case's flags say (pooling mode, Normalize on or off), its
    max_seq_length set, each text encoded alone (prompt and truncation by sentence-transformers)."""
    import torch.nn.functional as F
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from sentence_transformers.base.modules import Normalize

    out = []
    for c in cases:
        f = c["flags"]
        st = SentenceTransformer(path, device="cpu")
        modules = list(st)
        names = [type(m).__name__ for m in modules]
        if f["pooling"] is not None:
            i = names.index("Pooling")
            old = modules[i]
            modules[i] = Pooling(old.embedding_dimension, pooling_mode=ST_POOLING[f["pooling"]],
                                 include_prompt=old.include_prompt)
        has_norm = "Normalize" in names
        normalize = f["normalize"] if f["normalize"] is not None else (True if f["dimensions"] else has_norm)
        modules = [m for m in modules if type(m).__name__ != "Normalize"]
        st2 = SentenceTransformer(modules=modules, device="cpu", prompts=st.prompts,
                                  default_prompt_name=st.default_prompt_name)
        st2.max_seq_length = f["max_tokens"] or st.max_seq_length
        kwargs = {}
        if f["prompt_name"] is not None:
            kwargs["prompt_name"] = f["prompt_name"]
        if f["prompt"] is not None:
            kwargs["prompt"] = f["prompt"]
        token_ids, embeddings = [], []
        for text in TEXTS:
            vec = st2.encode([text], batch_size=1, convert_to_tensor=True, **kwargs)[0].float()
            if f["dimensions"]:
                vec = vec[: f["dimensions"]]
            if normalize:
                vec = F.normalize(vec, dim=-1)
            embeddings.append([float(x) for x in vec])
            prompt = kwargs.get("prompt")
            if prompt is None:
                name = kwargs.get("prompt_name", st2.default_prompt_name)
                prompt = st2.prompts.get(name, "") if name else ""
            features = st2.tokenize([prompt + text])
            token_ids.append([int(x) for x in features["input_ids"][0]])
        out.append({**c, "token_ids": token_ids, "embeddings": embeddings})
    return out


def write_st_reference(path, cases):
    import sentence_transformers

    ref = {
        "generated_by": "scripts/make_fixtures.py",
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "texts": TEXTS,
        "cases": st_reference(path, cases),
    }
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(ref, f)


def save_st(name, transformer_model, hf_tok, modules_after, *, max_seq_length, prompts=None, default_prompt=None,
            transformer_dir="", legacy=False, dense_bin=False, prefix=None, do_lower_case=False):
    """Saves a sentence-transformers folder; `legacy` rewrites it into the 2.x/3.x layout most Hub
    models still have (models.* type names, pooling_mode_* booleans, max_seq_length in
    sentence_bert_config.json)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer

    path = os.path.join(FIXTURES, name)
    shutil.rmtree(path, ignore_errors=True)
    tmp = path + ".hf"
    shutil.rmtree(tmp, ignore_errors=True)
    transformer_model.save_pretrained(tmp)
    hf_tok.save_pretrained(tmp)
    t = Transformer(tmp, max_seq_length=max_seq_length, do_lower_case=do_lower_case)
    st = SentenceTransformer(modules=[t, *modules_after], device="cpu", prompts=prompts or {},
                             default_prompt_name=default_prompt)
    st.save(path, safe_serialization=not dense_bin)
    if do_lower_case:
        # sentence-transformers saved its lowercasing into tokenizer.json; a folder from 2.x/3.x
        # has the tokenizer as it was and do_lower_case alone, which is what readers must follow.
        shutil.copy(os.path.join(tmp, "tokenizer.json"), os.path.join(path, "tokenizer.json"))
    shutil.rmtree(tmp)
    for junk in ["README.md"]:
        if os.path.exists(os.path.join(path, junk)):
            os.remove(os.path.join(path, junk))
    if dense_bin:
        # Only the Dense module keeps pytorch_model.bin; the transformer's weights are safetensors.
        for root, _, files in os.walk(path):
            if "pytorch_model.bin" in files and "Dense" not in root:
                sd = torch.load(os.path.join(root, "pytorch_model.bin"))
                os.remove(os.path.join(root, "pytorch_model.bin"))
                save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(root, "model.safetensors"),
                          metadata={"format": "pt"})
    if prefix:
        from safetensors.torch import load_file
        w = os.path.join(path, "model.safetensors")
        sd = load_file(w)
        save_file({prefix + k: v for k, v in sd.items()}, w, metadata={"format": "pt"})
    if legacy:
        with open(os.path.join(path, "modules.json")) as f:
            modules = json.load(f)
        for m in modules:
            m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[1]
        with open(os.path.join(path, "modules.json"), "w") as f:
            json.dump(modules, f, indent=2)
        for m in modules:
            if m["type"].endswith("Pooling"):
                pc = os.path.join(path, m["path"], "config.json")
                with open(pc) as f:
                    cfg = json.load(f)
                mode = cfg.pop("pooling_mode")
                modes = [mode] if isinstance(mode, str) else mode
                legacy_cfg = {"word_embedding_dimension": cfg.pop("embedding_dimension")}
                for key, m2 in [("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                                ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                                ("pooling_mode_weightedmean_tokens", "weightedmean"), ("pooling_mode_lasttoken", "lasttoken")]:
                    legacy_cfg[key] = m2 in modes
                legacy_cfg.update(cfg)
                with open(pc, "w") as f:
                    json.dump(legacy_cfg, f, indent=2)
        # sentence-transformers 2.x/3.x wrote nothing for Normalize (all-MiniLM-L6-v2 has no folder).
        for m in modules:
            if m["type"].endswith("Normalize"):
                shutil.rmtree(os.path.join(path, m["path"]), ignore_errors=True)
        # ... and no prompts (all-MiniLM-L6-v2's config_sentence_transformers.json).
        with open(os.path.join(path, "config_sentence_transformers.json"), "w") as f:
            json.dump({"__version__": {"sentence_transformers": "2.0.0", "transformers": "4.6.1", "pytorch": "1.8.1"}},
                      f, indent=2)
        sb = os.path.join(path, "sentence_bert_config.json")
        with open(sb, "w") as f:
            json.dump({"max_seq_length": max_seq_length, "do_lower_case": do_lower_case}, f, indent=2)
        tc = os.path.join(path, "tokenizer_config.json")
        with open(tc) as f:
            cfg = json.load(f)
        cfg["model_max_length"] = 512
        with open(tc, "w") as f:
            json.dump(cfg, f, indent=2)
    if transformer_dir:
        # The 2.x layout with the transformer in its own folder (0_Transformer/).
        sub = os.path.join(path, transformer_dir)
        os.makedirs(sub)
        for f in os.listdir(path):
            if f in ("modules.json", "config_sentence_transformers.json") or os.path.isdir(os.path.join(path, f)):
                continue
            shutil.move(os.path.join(path, f), os.path.join(sub, f))
        with open(os.path.join(path, "modules.json")) as f:
            modules = json.load(f)
        modules[0]["path"] = transformer_dir
        with open(os.path.join(path, "modules.json"), "w") as f:
            json.dump(modules, f, indent=2)
    return path


def build_st_fixtures(tok_eos, want):
    from sentence_transformers.sentence_transformer.modules import Pooling
    from sentence_transformers.base.modules import Dense, Normalize
    from transformers import (BertConfig, BertModel, DistilBertConfig, DistilBertModel, ModernBertConfig,
                              ModernBertModel, XLMRobertaConfig, XLMRobertaModel)

    bert_base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu")

    if want("st-bert-mean"):
        # BERT, mean pooling + Normalize, the legacy layout of all-MiniLM-L6-v2 and most Hub models.
        torch.manual_seed(101)
        wp = train_wordpiece(lowercase=True)
        bert = BertModel(BertConfig(**dict(bert_base, vocab_size=len(wp))), add_pooling_layer=False)
        widen(bert, 0.2)
        bert.eval()
        path = save_st("st-bert-mean", bert, wp, [Pooling(32, pooling_mode="mean"), Normalize()], max_seq_length=64,
                       legacy=True)
        write_st_reference(path, [
            case("default"),
            case("pooling cls", pooling="cls"),
            case("pooling max", pooling="max"),
            case("pooling weighted mean", pooling="weighted-mean"),
            case("pooling last", pooling="last"),
            case("max tokens 12", max_tokens=12),
            case("dimensions 16", dimensions=16),
            case("not normalised", normalize=False),
        ])

    if want("st-bert-cls-dense"):
        # BERT with CLS pooling, a Dense layer (tanh, pytorch_model.bin), no Normalize, the transformer
        # in 0_Transformer/ with `bert.`-prefixed weights, a cased tokenizer and do_lower_case.
        torch.manual_seed(102)
        wp_cased = train_wordpiece(lowercase=False)
        bert2 = BertModel(BertConfig(**dict(bert_base, vocab_size=len(wp_cased))), add_pooling_layer=False)
        widen(bert2, 0.2)
        bert2.eval()
        dense = Dense(32, 24, activation_function=torch.nn.Tanh())
        with torch.no_grad():
            dense.linear.weight.normal_(0, 0.3)
            dense.linear.bias.normal_(0, 0.1)
        path = save_st("st-bert-cls-dense", bert2, wp_cased, [Pooling(32, pooling_mode="cls"), dense], max_seq_length=64,
                       legacy=True, dense_bin=True, prefix="bert.", transformer_dir="0_Transformer", do_lower_case=True)
        write_st_reference(path, [
            case("default"),
            case("dimensions 8", dimensions=8),
            case("normalised", normalize=True),
            case("pooling mean", pooling="mean"),
        ])

    if want("st-distilbert"):
        # DistilBERT (msmarco-distilbert / distiluse style): mean pooling, a tanh Dense layer and
        # Normalize, `distilbert.`-prefixed weights (as DistilBertForMaskedLM checkpoints have).
        torch.manual_seed(106)
        wp = train_wordpiece(lowercase=True)
        distil = DistilBertModel(DistilBertConfig(
            vocab_size=len(wp), dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128,
            activation="gelu", pad_token_id=0))
        widen(distil, 0.2)
        distil.eval()
        dense = Dense(32, 24, activation_function=torch.nn.Tanh())
        with torch.no_grad():
            dense.linear.weight.normal_(0, 0.3)
            dense.linear.bias.normal_(0, 0.1)
        path = save_st("st-distilbert", distil, wp, [Pooling(32, pooling_mode="mean"), dense, Normalize()],
                       max_seq_length=64, prefix="distilbert.")
        write_st_reference(path, [
            case("default"),
            case("pooling cls", pooling="cls"),
            case("max tokens 12", max_tokens=12),
            case("not normalised", normalize=False),
        ])

    if want("st-mpnet"):
        # MPNet (all-mpnet-base-v2's layout: the 2.x folder, mean + Normalize): the relative
        # position bias matters (std 1), texts reach the 128-token limit and its log buckets.
        from transformers import MPNetConfig, MPNetModel
        torch.manual_seed(108)
        mtok = Tokenizer(models.WordPiece(unk_token="<unk>"))
        mtok.normalizer = normalizers.BertNormalizer(lowercase=True)
        mtok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=900, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                            show_progress=False)
        mtok.train_from_iterator(corpus(), trainer=trainer)
        mtok.post_processor = processors.TemplateProcessing(
            single="<s>:0 $A:0 </s>:0", pair="<s>:0 $A:0 </s>:0 </s>:0 $B:0 </s>:0",
            special_tokens=[("<s>", 0), ("</s>", 2)])
        mtok.decoder = decoders.WordPiece()
        mhf = PreTrainedTokenizerFast(tokenizer_object=mtok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      sep_token="</s>", cls_token="<s>", pad_token="<pad>", mask_token="<mask>")
        mpnet = MPNetModel(MPNetConfig(
            vocab_size=mtok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=130, relative_attention_num_buckets=32, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, hidden_act="gelu"), add_pooling_layer=False)
        widen(mpnet, 0.2)
        with torch.no_grad():
            mpnet.encoder.relative_attention_bias.weight.normal_(0, 1.0)
        mpnet.eval()
        path = save_st("st-mpnet", mpnet, mhf, [Pooling(32, pooling_mode="mean"), Normalize()], max_seq_length=128,
                       legacy=True)
        write_st_reference(path, [
            case("default"),
            case("pooling cls", pooling="cls"),
            case("max tokens 12", max_tokens=12),
        ])

    if want("st-gemma3"):
        # EmbeddingGemma's layout: a bidirectional Gemma 3 (sliding-window and full layers with
        # their own rotary bases, sandwich norms, q/k norms, GQA, an explicit head_dim and a
        # query_pre_attn_scalar that differs from it), mean pooling, two bias-free Dense layers,
        # Normalize, and named prompts; config.json in the 4.x shape the Hub checkpoint has.
        from transformers import Gemma3TextConfig, Gemma3TextModel
        torch.manual_seed(107)
        gtok = train_llama_tokenizer(metaspace=True, append_eos=True)
        gcfg = Gemma3TextConfig(
            vocab_size=gtok.get_vocab_size(), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=8,
            max_position_embeddings=512, rms_norm_eps=1e-6, sliding_window=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
            use_bidirectional_attention=True, hidden_activation="gelu_pytorch_tanh", pad_token_id=0,
            bos_token_id=gtok.token_to_id("<s>"), eos_token_id=gtok.token_to_id("</s>"),
            attn_implementation="eager")
        gemma = Gemma3TextModel(gcfg)
        widen(gemma, 0.2)
        gemma.eval()
        hf = PreTrainedTokenizerFast(tokenizer_object=gtok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                     pad_token="<unk>")
        up = Dense(32, 64, bias=False, activation_function=torch.nn.Identity())
        down = Dense(64, 32, bias=False, activation_function=torch.nn.Identity())
        with torch.no_grad():
            up.linear.weight.normal_(0, 0.3)
            down.linear.weight.normal_(0, 0.3)
        path = save_st("st-gemma3", gemma, hf, [Pooling(32, pooling_mode="mean"), up, down, Normalize()],
                       max_seq_length=512,
                       prompts={"query": "task: search result | query: ", "document": "title: none | text: "})
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        rope = cfg.pop("rope_parameters")
        cfg.update(rope_theta=rope["full_attention"]["rope_theta"],
                   rope_local_base_freq=rope["sliding_attention"]["rope_theta"], rope_scaling=None,
                   transformers_version="4.56.0")
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        write_st_reference(path, [
            case("no prompt"),
            case("query prompt", prompt_name="query"),
            case("document prompt, max tokens 24", prompt_name="document", max_tokens=24),
            case("pooling last", pooling="last"),
        ])

    if want("st-xlmr-prompts"):
        # XLM-RoBERTa (multilingual-e5 style): mean + Normalize, query/passage prompts with a default.
        torch.manual_seed(103)
        uni = train_unigram()
        xlmr = XLMRobertaModel(XLMRobertaConfig(
            vocab_size=len(uni), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            hidden_act="gelu"), add_pooling_layer=False)
        widen(xlmr, 0.2)
        xlmr.eval()
        path = save_st("st-xlmr-prompts", xlmr, uni, [Pooling(32, pooling_mode="mean"), Normalize()], max_seq_length=128,
                       prompts={"query": "query: ", "passage": "passage: "}, default_prompt="query")
        write_st_reference(path, [
            case("default prompt"),
            case("prompt name passage", prompt_name="passage"),
            case("no prompt", prompt=""),
            case("own prompt", prompt="Represent this review: "),
            case("max tokens 10", max_tokens=10),
        ])

    if want("st-modernbert"):
        # ModernBERT (modernbert-embed style): mean + Normalize, named prompts left out of the pooling
        # (include_prompt: false), global/local layers with a small window so long texts cross it.
        torch.manual_seed(104)
        bpe = train_modernbert_bpe()
        mb_cfg = ModernBertConfig(
            vocab_size=len(bpe), hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=512, local_attention=16, global_attn_every_n_layers=3,
            global_rope_theta=160000.0, local_rope_theta=10000.0, pad_token_id=bpe.pad_token_id,
            bos_token_id=bpe.cls_token_id, eos_token_id=bpe.sep_token_id, cls_token_id=bpe.cls_token_id,
            sep_token_id=bpe.sep_token_id, hidden_activation="gelu", attn_implementation="eager")
        mb = ModernBertModel(mb_cfg)
        widen(mb, 0.2)
        mb.eval()
        path = save_st("st-modernbert", mb, bpe, [Pooling(32, pooling_mode="mean", include_prompt=False), Normalize()],
                       max_seq_length=512,
                       prompts={"search_query": "search_query: ", "search_document": "search_document: "})
        # The transformers 4.x shape of config.json that Hub checkpoints (gte-modernbert) have.
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        rope = cfg.pop("rope_parameters")
        cfg.pop("layer_types")
        cfg.update(global_rope_theta=rope["full_attention"]["rope_theta"],
                   local_rope_theta=rope["sliding_attention"]["rope_theta"], global_attn_every_n_layers=3,
                   transformers_version="4.48.0")
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        write_st_reference(path, [
            case("no prompt"),
            case("prompt excluded from the mean", prompt_name="search_query"),
            case("cls past the prompt", prompt_name="search_document", pooling="cls"),
            case("max tokens 64", max_tokens=64),
        ])

    if want("st-qwen2-last"):
        # Qwen2 with last-token pooling + Normalize and an instruction prompt (gte-Qwen2's layout).
        torch.manual_seed(105)
        qcfg = Qwen2Config(vocab_size=2112, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
        qwen = Qwen2Model(qcfg)
        for n, p in qwen.named_parameters():
            p.data = (1.0 + 0.2 * torch.randn_like(p)) if n.endswith("norm.weight") else (
                0.1 * torch.randn_like(p) if n.endswith("bias") else 0.08 * torch.randn_like(p))
        qwen.eval()
        qtok = PreTrainedTokenizerFast(tokenizer_object=tok_eos, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        path = save_st("st-qwen2-last", qwen, qtok, [Pooling(64, pooling_mode="lasttoken"), Normalize()],
                       max_seq_length=512, prompts={"query": PROMPT, "document": ""})
        write_st_reference(path, [
            case("no prompt"),
            case("query prompt", prompt_name="query"),
            case("max tokens 12", max_tokens=12),
        ])


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
    print("fixtures written", file=sys.stderr)


if __name__ == "__main__":
    main()
