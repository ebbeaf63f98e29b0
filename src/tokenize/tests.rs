//! The tokenizer roads against `tokenizers` itself: fixtures, randomized texts, a corpus.
use arrow::array::Array;

use super::*;

fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `tokenizers` alone, with the same truncation and prompt: what every road must give. A
/// text is truncated when its whole tokenization is longer than the limit. NOTE: configured once
/// (a clone of a 151k-word tokenizer per text made the corpus check take hours).
struct Reference {
    cut: Tokenizer,
    whole: Tokenizer,
    prompt: String,
    max_tokens: usize,
}

impl Reference {
    fn new(t: &TextTokenizer) -> Self {
        let mut cut = t.inner.clone();
        cut.with_truncation(Some(TruncationParams {
            max_length: t.max_tokens,
            ..TruncationParams::default()
        }))
        .unwrap();
        let mut whole = t.inner.clone();
        whole.with_truncation(None).unwrap();
        Reference { cut, whole, prompt: t.prompt.clone().unwrap_or_default(), max_tokens: t.max_tokens }
    }

    fn encode(&self, text: &str) -> Tokenized {
        let full = format!("{}{text}", self.prompt);
        let ids = self.cut.encode_fast(full.as_str(), true).unwrap().get_ids().to_vec();
        let truncated = self.whole.encode_fast(full.as_str(), true).unwrap().len() > self.max_tokens;
        Tokenized { truncated, ids }
    }
}

/// Random texts built from the pieces the pre-tokenizer pattern treats specially.
fn tricky_texts(seed: u64, count: usize) -> Vec<String> {
    const PARTS: &[&str] = &[
        "'s",
        "'S",
        "'ll",
        "'LL",
        "'lL",
        "'re",
        "'Ve",
        "'d",
        "'m",
        "'t",
        "'x",
        "'",
        "hello",
        "World",
        "don't",
        "123",
        "4",
        "2024",
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        " \n",
        "\n ",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x1f",
        "\x00",
        "\x7f",
        "!",
        "...",
        "(",
        ")",
        "?!",
        "<|endoftext|>",
        "<|im_start|>",
        "<|",
        "|>",
        "a",
        "Z",
        "9",
        " ' ",
        "caf\u{e9}",
        "\u{1f600}",
        "\u{4e2d}\u{6587}",
        "\u{a0}",
        // Unicode: a long s (folds to s), NEL, line separator, ideographic space, a combining
        // accent, digits and numbers of other scripts, title case and modifier letters, texts
        // that NFC/NFKC/lowercasing change, and letters with multi-letter case folds.
        "'\u{17f}",
        "\u{85}",
        "\u{2028}",
        "\u{3000}",
        "\u{301}",
        "\u{663}",
        "\u{b2}",
        "\u{216b}",
        "\u{1c5}",
        "\u{2b0}",
        "e\u{301}",
        "\u{212b}",
        "\u{fb01}",
        "\u{212a}",
        "\u{2019}s",
        "\u{201c}",
        "\u{fb05}",
        "\u{fb06}",
        "\u{df}",
        "\u{1e9e}",
        "\u{130}",
        "\u{131}",
        // What the BERT normaliser and pre-tokenizer treat specially: added tokens in either
        // case, the replacement character, a format character, CJK, a dash, an accent.
        "[CLS]",
        "[mask]",
        "\u{fffd}",
        "\u{200b}",
        "\u{4e00}\u{9fa5}",
        "\u{2014}",
        "na\u{ef}ve",
    ];
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..count)
        .map(|_| {
            let mut s = String::new();
            for _ in 0..rng.usize(0..24) {
                match rng.u8(0..8) {
                    0 | 1 => s.push(char::from(rng.u8(0..128))),
                    // Any character at all (surrogates are not chars and are skipped).
                    2 => s.extend(char::from_u32(rng.u32(0x80..0x3_2000))),
                    _ => s.push_str(PARTS[rng.usize(0..PARTS.len())]),
                }
            }
            s
        })
        .collect()
}

/// `FUZZ_TEXTS=100000 cargo test --lib tokenize` for a longer run than the default 3,000.
fn check_against_tokenizers(t: &TextTokenizer, seed: u64) {
    let mut texts = tricky_texts(seed, std::env::var("FUZZ_TEXTS").map_or(3000, |n| n.parse().unwrap()));
    texts.extend(
        ["", " ", "\n", "plain ascii text, with 123 numbers!", "caf\u{e9} cafe\u{301} \u{212b}"]
            .map(String::from),
    );
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let got = t.encode_batch(&refs).unwrap();
    let reference = Reference::new(t);
    for (text, got) in texts.iter().zip(got) {
        assert_eq!(got, reference.encode(text), "text {text:?}");
    }
    if t.has_fast_road() {
        let taken = texts.iter().filter(|x| t.takes_fast_road(x)).count();
        assert!(taken > texts.len() / 2, "only {taken} of {} texts took the fast road", texts.len());
    }
}

impl TextTokenizer {
    fn has_fast_road(&self) -> bool {
        self.fast.is_some() || self.wordpiece.is_some()
    }

    fn takes_fast_road(&self, text: &str) -> bool {
        match (&self.fast, &self.wordpiece) {
            (Some(f), _) => f.ids(&self.inner, text, self.max_tokens).is_some(),
            (None, Some(w)) => w.ids(&self.inner, text, self.max_tokens).is_some(),
            (None, None) => false,
        }
    }
}

#[test]
fn the_wordpiece_road_gives_the_tokenizers_ids() {
    // Uncased (BertNormalizer lowercasing and stripping accents) and cased BERT tokenizers,
    // then the same with sentence-transformers' do_lower_case, other BertNormalizer settings
    // and no normaliser at all.
    let uncased = std::fs::read_to_string(fixture("tests/fixtures/st-bert-mean/tokenizer.json")).unwrap();
    let cased =
        std::fs::read_to_string(fixture("tests/fixtures/st-bert-cls-dense/0_Transformer/tokenizer.json"))
            .unwrap();
    let mut variants = vec![uncased.clone(), cased.clone(), with_lowercase(&cased).unwrap()];
    let mut v: serde_json::Value = serde_json::from_str(&uncased).unwrap();
    for (clean, chinese, strip, lower) in
        [(false, true, None, true), (true, false, Some(false), true), (true, true, Some(true), false)]
    {
        v["normalizer"] = serde_json::json!({"type": "BertNormalizer", "clean_text": clean,
                "handle_chinese_chars": chinese, "strip_accents": strip, "lowercase": lower});
        variants.push(v.to_string());
    }
    v["normalizer"] = serde_json::Value::Null;
    variants.push(v.to_string());
    let settings = [(512, None), (9, Some("Represent: it's\n")), (12, None), (64, Some("query: "))];
    for (i, json) in variants.iter().enumerate() {
        // Every setting for the two tokenizers as written, two for each variant.
        for &(max_tokens, prompt) in &settings[..if i < 2 { 4 } else { 2 }] {
            let t = load(json, max_tokens, prompt);
            assert!(t.wordpiece.is_some(), "variant {i}: expected the WordPiece road");
            check_against_tokenizers(&t, 30 + i as u64);
        }
    }
}

#[test]
fn lowercasing_puts_a_lowercase_normaliser_first() {
    let cased =
        std::fs::read_to_string(fixture("tests/fixtures/st-bert-cls-dense/0_Transformer/tokenizer.json"))
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&with_lowercase(&cased).unwrap()).unwrap();
    assert_eq!(v["normalizer"]["type"], "Sequence");
    assert_eq!(v["normalizer"]["normalizers"][0]["type"], "Lowercase");
    assert_eq!(v["normalizer"]["normalizers"][1]["type"], "BertNormalizer");
    let twice = with_lowercase(&with_lowercase(&cased).unwrap()).unwrap();
    assert_eq!(twice, with_lowercase(&cased).unwrap(), "a Lowercase already there is kept as it is");
    let t = load(&cased, 64, None);
    let lower = load(&with_lowercase(&cased).unwrap(), 64, None);
    assert_ne!(t.encode("Hello World").unwrap(), lower.encode("Hello World").unwrap());
    assert_eq!(lower.encode("Hello World").unwrap(), lower.encode("hello world").unwrap());
}

#[test]
fn prompt_tokens_count_what_sentence_transformers_leaves_out() {
    let uncased = std::fs::read_to_string(fixture("tests/fixtures/st-bert-mean/tokenizer.json")).unwrap();
    let t = load(&uncased, 64, Some("query: "));
    // [CLS] query : [SEP] → 3 without the trailing [SEP].
    let alone = t.inner.encode("query: ", true).unwrap().get_ids().len();
    assert_eq!(t.prompt_tokens().unwrap(), alone - 1);
    assert_eq!(load(&uncased, 64, None).prompt_tokens().unwrap(), 0);
}

fn with_pattern(json: &str, pattern: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = pattern.into();
    v.to_string()
}

fn load(json: &str, max_tokens: usize, prompt: Option<&str>) -> TextTokenizer {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    TextTokenizer::from_file(&path, max_tokens, prompt.map(String::from)).unwrap()
}

#[test]
fn a_text_cut_exactly_at_a_piece_boundary_counts_as_truncated() {
    // Regression: tokenizers 0.23 stops tokenizing once it has `max_length` tokens, so with
    // no special tokens to add, a text whose first pieces make exactly the limit came back
    // with no overflow, and was not counted as cut.
    let json = std::fs::read_to_string(fixture("tests/fixtures/qwen2-mha-bidir/tokenizer.json")).unwrap();
    let text = "hello\n'x\u{250d1}|>\u{c}\u{13}\u{4e2d}\u{6587}\u{8}";
    let t = load(&json, 12, None);
    let general = t.finish(t.general(text).encode_fast(text, false).unwrap()).unwrap();
    let fast = t.encode(text).unwrap();
    for got in [general, fast] {
        assert_eq!(got.ids.len(), 12);
        assert!(got.truncated, "a 21-token text cut to 12 is truncated");
    }
    let whole = load(&json, 21, None).encode(text).unwrap();
    assert_eq!((whole.ids.len(), whole.truncated), (21, false));
}

#[test]
fn the_fast_road_gives_the_tokenizers_ids() {
    // tiny-qwen2: NFC, an appended <|endoftext|>. qwen2-mha-bidir: a ByteLevel post-processor.
    for (rel, seed) in
        [("models/tiny-qwen2/tokenizer.json", 1), ("tests/fixtures/qwen2-mha-bidir/tokenizer.json", 2)]
    {
        let json = std::fs::read_to_string(fixture(rel)).unwrap();
        for (max_tokens, prompt) in
            [(512, None), (12, None), (512, Some("query: ")), (9, Some("Instruct: it's\n"))]
        {
            let t = load(&json, max_tokens, prompt);
            assert!(t.fast.is_some(), "{rel}: expected the fast road");
            check_against_tokenizers(&t, seed);
        }
    }
    // Llama 3's pattern: digits go three at a time.
    let json = std::fs::read_to_string(fixture("models/tiny-qwen2/tokenizer.json")).unwrap();
    let llama3 = byte_bpe::LLAMA3_PATTERN;
    let t = load(&with_pattern(&json, llama3), 512, None);
    assert!(t.fast.is_some());
    check_against_tokenizers(&t, 3);
    // Normalisers that change ASCII text too, and one that changes nothing.
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for (i, normalizer) in [
        serde_json::json!({"type": "Lowercase"}),
        serde_json::json!({"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}),
        serde_json::Value::Null,
    ]
    .into_iter()
    .enumerate()
    {
        v["normalizer"] = normalizer;
        let t = load(&v.to_string(), 512, None);
        assert!(t.fast.is_some());
        check_against_tokenizers(&t, 4 + i as u64);
    }
}

#[test]
fn other_layouts_take_the_general_road() {
    let json = std::fs::read_to_string(fixture("models/tiny-qwen2/tokenizer.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut variants = vec![with_pattern(&json, r"\s+|\S+")];
    v["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true.into();
    variants.push(v.to_string());
    for (i, json) in variants.iter().enumerate() {
        let t = load(json, 512, None);
        assert!(t.fast.is_none(), "variant {i} should not take the fast road");
        check_against_tokenizers(&t, 10 + i as u64);
    }
}

#[test]
fn the_ascii_shortcut_gives_the_normalised_ids() {
    // Without the fast road, ASCII texts still skip the NFC normaliser.
    let json = std::fs::read_to_string(fixture("models/tiny-qwen2/tokenizer.json")).unwrap();
    let t = load(&with_pattern(&json, r"\s+|\S+"), 64, None);
    assert!(t.ascii.is_some() && t.fast.is_none());
    check_against_tokenizers(&t, 20);
}

/// The fast road against `tokenizers` over a whole corpus, text by text (run by
/// `scripts/bench-cpu.sh`): `BATCH_EMBED_CHECK_TOKENIZER=tokenizer.json
/// BATCH_EMBED_CHECK_TEXTS=dir-or-file cargo test --lib corpus -- --ignored`, and
/// `BATCH_EMBED_CHECK_MAX_TOKENS` (8192) for the truncation.
#[test]
#[ignore = "needs a corpus and a tokenizer named in the environment"]
fn the_fast_road_gives_the_tokenizers_ids_on_a_corpus() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("set {name}"));
    let max_tokens = std::env::var("BATCH_EMBED_CHECK_MAX_TOKENS").map_or(8192, |n| n.parse().unwrap());
    let t =
        TextTokenizer::from_file(Path::new(&var("BATCH_EMBED_CHECK_TOKENIZER")), max_tokens, None).unwrap();
    assert!(t.has_fast_road(), "this tokenizer does not take a fast road");
    let files =
        crate::input::discover(&[crate::storage::Location::Local(var("BATCH_EMBED_CHECK_TEXTS").into())])
            .unwrap()
            .files;
    let inputs = crate::input::open_all(&files, &crate::template::Template::column("text"), None).unwrap();
    let reference = Reference::new(&t);
    let (mut texts, mut fast_texts) = (0, 0);
    let (mut ours, mut theirs) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for file in &inputs.files {
        for chunk in
            crate::input::read_rows(file, &[file.global_rows()], 8192, crate::input::Damaged::Fail).unwrap()
        {
            let chunk = chunk.unwrap();
            let batch: Vec<&str> = (0..chunk.texts.len())
                .filter(|&i| !chunk.texts.is_null(i))
                .map(|i| chunk.texts.value(i))
                .collect();
            let start = std::time::Instant::now();
            let got = t.encode_batch(&batch).unwrap();
            ours += start.elapsed();
            let start = std::time::Instant::now();
            let want: Vec<Tokenized> = batch.par_iter().map(|text| reference.encode(text)).collect();
            theirs += start.elapsed();
            for ((text, got), want) in batch.iter().zip(got).zip(want) {
                assert_eq!(got, want, "text {text:?}");
            }
            texts += batch.len();
            fast_texts += batch.iter().filter(|x| t.takes_fast_road(x)).count();
        }
    }
    eprintln!("{texts} texts, {fast_texts} of them on the fast road: same ids and truncation as tokenizers");
    let rate = |d: std::time::Duration| texts as f64 / d.as_secs_f64();
    let threads = rayon::current_num_threads();
    eprintln!("texts/s, {threads} threads: ours {:.0}, tokenizers alone {:.0}", rate(ours), rate(theirs));
    assert!(fast_texts > 0);
}

#[test]
fn post_processor_affixes_are_what_it_adds_around_a_text() {
    for (rel, want_before, want_after) in [
        ("tests/fixtures/st-bert-mean/tokenizer.json", 1, 1),
        ("tests/fixtures/st-xlmr-prompts/tokenizer.json", 1, 1),
        ("models/tiny-qwen2/tokenizer.json", 0, 1), // appends <|endoftext|> as gte-Qwen2 does
    ] {
        let t = TextTokenizer::from_file(&fixture(rel), 64, None).unwrap();
        let (before, after) = t.affixes.clone().unwrap_or_else(|| panic!("{rel}: no affixes found"));
        assert_eq!((before.len(), after.len()), (want_before, want_after), "{rel}");
        for text in ["", "a", "hello world, again and again"] {
            let plain = t.inner.encode_fast(text, false).unwrap().get_ids().to_vec();
            let full = t.inner.encode_fast(text, true).unwrap().get_ids().to_vec();
            assert_eq!([before.as_slice(), &plain, after.as_slice()].concat(), full, "{rel}: {text:?}");
            assert_eq!(t.finish_ids(plain.clone()).unwrap().ids, full, "{rel}: {text:?}");
        }
        // The cut leaves room for the affixes, as `finish` does.
        let long = t.finish_ids((0..100).collect()).unwrap();
        assert!(long.truncated && long.ids.len() == 64, "{rel}");
        assert_eq!(&long.ids[long.ids.len() - after.len()..], after.as_slice(), "{rel}");
    }
}
