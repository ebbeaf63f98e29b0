//! Telling, without running it, that a tokenizer's Unicode normaliser leaves a text as it is.
//!
//! The fast road (byte_bpe.rs) must feed the BPE the normalised text, and a chunk's ids may be
//! sliced from its text's only where normalising changes nothing. Running `tokenizers`'
//! normaliser just to compare its output with the text was ~9% of a chunking run's samples on
//! the IMDB reviews (its per-char alignment bookkeeping). A normal form's quick check, from the
//! crate `tokenizers` normalises with (so the same Unicode tables), answers "already normal" for
//! most texts instead; and a text in a normal form has every part of it in that form too, so
//! the answer holds for its chunks.

use unicode_normalization_alignments::{
    is_nfc_quick, is_nfd_quick, is_nfkc_quick, is_nfkd_quick, IsNormalized,
};

/// A normaliser that can be told to be a no-op on a text without running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NormalForm {
    /// No normaliser.
    None,
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
}

impl NormalForm {
    /// The form of a `tokenizer.json`'s `normalizer` entry; `None` for any other normaliser.
    pub(super) fn of(normalizer: Option<&serde_json::Value>) -> Option<Self> {
        match normalizer {
            None | Some(serde_json::Value::Null) => Some(NormalForm::None),
            Some(n) => match n["type"].as_str() {
                Some("NFC") => Some(NormalForm::Nfc),
                Some("NFD") => Some(NormalForm::Nfd),
                Some("NFKC") => Some(NormalForm::Nfkc),
                Some("NFKD") => Some(NormalForm::Nfkd),
                _ => None,
            },
        }
    }

    /// Whether the normaliser certainly leaves `text` as it is: always without one, and under a
    /// normal form for an ASCII text or one its quick check finds already in that form ("maybe"
    /// counts as no: the caller then runs the normaliser).
    pub(super) fn leaves_unchanged(self, text: &str) -> bool {
        let quick = match self {
            NormalForm::None => return true,
            _ if text.is_ascii() => return true,
            NormalForm::Nfc => is_nfc_quick(text.chars()),
            NormalForm::Nfd => is_nfd_quick(text.chars()),
            NormalForm::Nfkc => is_nfkc_quick(text.chars()),
            NormalForm::Nfkd => is_nfkd_quick(text.chars()),
        };
        quick == IsNormalized::Yes
    }
}

#[cfg(test)]
mod tests {
    use tokenizers::{NormalizedString, Normalizer, NormalizerWrapper};

    use super::*;

    #[test]
    fn a_text_already_in_the_normal_form_is_told_without_running_the_normaliser() {
        let texts = [
            "plain ascii",
            "caf\u{e9} na\u{ef}ve",            // precomposed
            "cafe\u{301}",                     // decomposed
            "\u{fb01}ne \u{2460} \u{ff21}",    // compatibility characters
            "\u{212b}ngstr\u{f6}m",            // a singleton NFC replaces
            "\u{d55c}\u{ad6d}\u{c5b4}",        // precomposed Hangul
            "\u{1112}\u{1161}\u{11ab}",        // Hangul jamo
            "a\u{328}\u{301} q\u{301}\u{323}", // marks out of canonical order
            "\u{4e2d}\u{6587} \u{1f600}\u{1f44d}\u{1f3fd}",
            "\u{3b1}\u{301}\u{3c9}\u{345}",
        ];
        let mut told = [0, 0];
        for form in ["NFC", "NFD", "NFKC", "NFKD"] {
            let json = serde_json::json!({ "type": form });
            let normal_form = NormalForm::of(Some(&json)).expect("a normal form");
            let normalizer: NormalizerWrapper = serde_json::from_value(json).unwrap();
            for text in texts {
                let mut n = NormalizedString::from(text);
                normalizer.normalize(&mut n).unwrap();
                let unchanged = n.get() == text;
                // Saying "unchanged" must be right; "not sure" only costs the normaliser's run.
                let told_unchanged = normal_form.leaves_unchanged(text);
                if told_unchanged {
                    assert!(unchanged, "{form} changes {text:?}");
                    // And a part of a text in the form is in the form too (chunks rely on it).
                    for (at, _) in text.char_indices() {
                        assert!(
                            normal_form.leaves_unchanged(&text[at..])
                                && normal_form.leaves_unchanged(&text[..at]),
                            "{form} {text:?}"
                        );
                    }
                }
                told[told_unchanged as usize] += 1;
            }
        }
        assert!(told[0] > 10 && told[1] > 10, "{told:?}");
        // tiny-qwen2's tokenizer.json says NFC.
        let json = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2/tokenizer.json"),
        )
        .unwrap();
        let layout: serde_json::Value = serde_json::from_str(&json).unwrap();
        let nfc = NormalForm::of(layout.get("normalizer")).unwrap();
        assert_eq!(nfc, NormalForm::Nfc);
        assert!(
            nfc.leaves_unchanged("caf\u{e9}")
                && !nfc.leaves_unchanged("cafe\u{301}")
                && !nfc.leaves_unchanged("\u{212b}")
        );
        assert!(NormalForm::of(Some(&serde_json::json!({"type": "Lowercase"}))).is_none());
    }
}
