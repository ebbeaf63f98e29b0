//! A WordPiece tokenizer built from `vocab.txt` and `tokenizer_config.json`, for BERT-family model
//! folders saved before fast tokenizers existed (no `tokenizer.json`): the same pipeline
//! transformers builds from those files — BERT's normaliser (cleanup, CJK split, lowercasing and
//! accent stripping as the config says), its pre-tokenizer, WordPiece with `##` continuations,
//! `CLS text SEP` around each text, and the special tokens matched whole in texts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The slow tokenizer's vocabulary file, one token per line, its id the line number.
pub const VOCAB: &str = "vocab.txt";

/// The tokenizer classes this module builds, and their special tokens by default
/// (unk, cls, sep, pad, mask).
const CLASSES: &[(&str, [&str; 5])] = &[
    ("BertTokenizer", ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]),
    ("DistilBertTokenizer", ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]),
    ("MPNetTokenizer", ["[UNK]", "<s>", "</s>", "<pad>", "<mask>"]),
];

/// `dir`'s tokenizer class when `dir` holds a `vocab.txt` this module can build a tokenizer
/// from (a config naming no class is taken as BERT's); `Err` names a class it cannot.
pub fn slow_class(dir: &Path) -> Result<Option<&'static str>> {
    if !dir.join(VOCAB).is_file() {
        return Ok(None);
    }
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let class = config.get("tokenizer_class").and_then(Value::as_str).unwrap_or("BertTokenizer");
    let base = class.strip_suffix("Fast").unwrap_or(class);
    match CLASSES.iter().find(|(name, _)| *name == base) {
        Some((name, _)) => Ok(Some(name)),
        None => bail!(
            "its tokenizer is {class} from {VOCAB}, which batch-embed does not build (it builds {})",
            CLASSES.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The `tokenizer.json` text transformers' conversion of the slow tokenizer in `vocab`'s folder
/// would write.
pub fn tokenizer_json(vocab: &Path) -> Result<String> {
    let dir = vocab.parent().unwrap_or(Path::new("."));
    let class =
        slow_class(dir)?.with_context(|| format!("{} is not a WordPiece vocabulary", vocab.display()))?;
    let defaults = CLASSES.iter().find(|(name, _)| *name == class).expect("a known class").1;
    let text = std::fs::read_to_string(vocab).with_context(|| format!("cannot read {}", vocab.display()))?;
    // NOTE: transformers reads the file's lines (a last newline ends the last line, CRLF counts
    // as one newline) and keeps everything else of each line; a repeated token keeps its last id.
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    for (id, token) in text.strip_suffix('\n').unwrap_or(&text).split('\n').enumerate() {
        ids.insert(token.strip_suffix('\r').unwrap_or(token).to_string(), id as u32);
    }
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    let map = read_json(&dir.join("special_tokens_map.json"))?;
    // A special token as either file writes it: a string or {"content": ...}; the map wins.
    let special = |key: &str, default: &str| -> String {
        fn value<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
            v.get(key).and_then(|t| t.as_str().or_else(|| t.get("content")?.as_str()))
        }
        value(&map, key).or_else(|| value(&config, key)).unwrap_or(default).to_string()
    };
    let keys = ["unk_token", "cls_token", "sep_token", "pad_token", "mask_token"];
    let [unk, cls, sep, pad, mask]: [String; 5] = std::array::from_fn(|i| special(keys[i], defaults[i]));
    let id_of = |token: &str| {
        ids.get(token)
            .copied()
            .with_context(|| format!("{} has no {token:?}, its tokenizer's special token", vocab.display()))
    };
    let (cls_id, sep_id) = (id_of(&cls)?, id_of(&sep)?);
    let lowercase = config.get("do_lower_case").and_then(Value::as_bool).unwrap_or(true);
    let chinese = config.get("tokenize_chinese_chars").and_then(Value::as_bool).unwrap_or(true);
    let strip_accents = config.get("strip_accents").and_then(Value::as_bool);
    let mut added: Vec<Value> = Vec::new();
    for token in [&pad, &unk, &cls, &sep, &mask] {
        if let (Ok(id), false) = (id_of(token), added.iter().any(|a| a["content"] == token.as_str())) {
            added.push(json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}));
        }
    }
    added.sort_by_key(|a| a["id"].as_u64());
    let piece = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    let token = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": chinese,
            "strip_accents": strip_accents, "lowercase": lowercase},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [token(&cls, 0), piece("A", 0), token(&sep, 0)],
            "pair": [token(&cls, 0), piece("A", 0), token(&sep, 0), piece("B", 1), token(&sep, 1)],
            "special_tokens": {
                cls.clone(): {"id": cls, "ids": [cls_id], "tokens": [cls]},
                sep.clone(): {"id": sep, "ids": [sep_id], "tokens": [sep]},
            },
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": unk, "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": ids},
    });
    Ok(tokenizer.to_string())
}

/// A JSON file's object, or an empty one when the file is not there.
fn read_json(path: &Path) -> Result<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(vocab: &str, config: &str, map: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(VOCAB), vocab).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
        if let Some(map) = map {
            std::fs::write(dir.path().join("special_tokens_map.json"), map).unwrap();
        }
        dir
    }

    fn ids(dir: &Path, text: &str) -> Vec<u32> {
        let json = tokenizer_json(&dir.join(VOCAB)).unwrap();
        let t = tokenizers::Tokenizer::from_str(&json).unwrap();
        t.encode(text, true).unwrap().get_ids().to_vec()
    }

    use std::str::FromStr;

    #[test]
    fn lines_are_ids_and_the_config_decides_case_and_special_tokens() {
        // CRLF lines, a last newline, "##" pieces.
        let vocab = "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\nhello\r\n##s\r\nworld\r\nHello\r\n";
        let lower = folder(vocab, r#"{"do_lower_case": true}"#, None);
        assert_eq!(ids(lower.path(), "Hellos WORLD [MASK] x"), [2, 5, 6, 7, 4, 1, 3]);
        let cased =
            folder(vocab, r#"{"do_lower_case": false, "tokenizer_class": "BertTokenizerFast"}"#, None);
        assert_eq!(ids(cased.path(), "Hello world"), [2, 8, 7, 3]);
        // Special tokens as objects, the map over the config.
        let mpnet = "<s>\n<pad>\n</s>\n[UNK]\n<mask>\nhi\n";
        let m = folder(
            mpnet,
            r#"{"tokenizer_class": "MPNetTokenizer", "cls_token": "[CLS]"}"#,
            Some(r#"{"cls_token": {"content": "<s>", "lstrip": false}}"#),
        );
        assert_eq!(ids(m.path(), "hi there"), [0, 5, 3, 2]);
    }

    #[test]
    fn other_slow_tokenizers_and_missing_special_tokens_are_named() {
        let dir = folder("a\nb\n", r#"{"tokenizer_class": "XLNetTokenizer"}"#, None);
        let err = format!("{:#}", slow_class(dir.path()).unwrap_err());
        assert!(err.contains("XLNetTokenizer") && err.contains("BertTokenizer"), "{err}");
        let dir = folder("[UNK]\nhello\n", "{}", None);
        let err = format!("{:#}", tokenizer_json(&dir.path().join(VOCAB)).unwrap_err());
        assert!(err.contains("has no \"[CLS]\""), "{err}");
        assert_eq!(slow_class(tempfile::tempdir().unwrap().path()).unwrap(), None);
    }
}
