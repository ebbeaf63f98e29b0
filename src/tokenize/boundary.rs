//! Where a chunk may end, and how good each place is: the cuts between a text's tokens that split
//! no character, ranked paragraph break > sentence end > whitespace > any token boundary, and
//! the choice of a chunk's end and of the next chunk's start (chunk.rs drives them). Pure: token
//! offsets and the text in, token indices out.

use std::ops::Range;

use unicode_segmentation::UnicodeSegmentation;

use super::TokenOffsets;

/// How good a place to end a chunk is, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Boundary {
    /// Between two tokens inside a word (or between characters with no space, as in CJK text).
    Token,
    Whitespace,
    /// A sentence end (UAX #29), a line break among them.
    Sentence,
    /// A blank line.
    Paragraph,
}

/// The places a text's tokens can be cut, and how good each is.
pub(super) struct Cuts<'t> {
    text: &'t str,
    offsets: &'t TokenOffsets,
    /// `valid[k]`: the text can be cut before token k (k in 0..=n) without splitting a character
    /// or a token's bytes.
    valid: Vec<bool>,
    /// The text holds a line break (see `run_around`), so some cut may be a paragraph break.
    line_breaks: bool,
}

/// The whitespace a cut touches: it runs from `start` to `end` (empty when there is none), the
/// next token starts at `at`, and it holds `breaks` line breaks.
#[derive(Clone, Copy, Debug)]
struct Run {
    start: usize,
    at: usize,
    end: usize,
    breaks: usize,
}

/// Bytes of context on each side of a cut that the sentence rules are run over.
const SENTENCE_CONTEXT: usize = 64;

impl<'t> Cuts<'t> {
    pub(super) fn new(text: &'t str, offsets: &'t TokenOffsets) -> Self {
        let n = offsets.len();
        let mut valid = vec![true; n + 1];
        let mut reach = 0u32; // furthest end of the tokens so far
        for (k, (&at, &end)) in offsets.starts.iter().zip(&offsets.ends).enumerate() {
            if k > 0 {
                valid[k] = reach <= at && text.is_char_boundary(at as usize);
            }
            reach = reach.max(end);
        }
        let bytes = text.as_bytes();
        let line_breaks = bytes.contains(&b'\n')
            || bytes.contains(&b'\r')
            || (!text.is_ascii() && text.contains(['\u{85}', '\u{2028}', '\u{2029}']));
        Cuts { text, offsets, valid, line_breaks }
    }

    /// The bytes of tokens `a..b`: from the start of token a (of the text, for the first) to the
    /// start of token b (the end of the text, for the last). Text that no token covers between
    /// two tokens (whitespace or characters a normaliser drops) goes with the chunk before it, so
    /// chunks without overlap tile the text.
    pub(super) fn bytes(&self, a: usize, b: usize) -> Range<usize> {
        let n = self.offsets.len();
        let start = if a == 0 { 0 } else { self.offsets.starts[a] as usize };
        let end = match b < n {
            true => self.offsets.starts[b] as usize,
            false if self.offsets.cut => self.offsets.ends[n - 1] as usize,
            false => self.text.len(),
        };
        // Offsets from a tokenizer always fall on characters; guard anyway.
        let start = floor_char(self.text, start);
        let end = ceil_char(self.text, end.max(start));
        start..end
    }

    /// The first valid cut after token a.
    pub(super) fn first_after(&self, a: usize) -> usize {
        (a + 1..self.valid.len()).find(|&k| self.valid[k]).unwrap_or(self.valid.len() - 1)
    }

    /// Where a chunk starting at token `a` with room for `window` tokens ends (exclusive token
    /// index): the best boundary in the later part of the window (from half of it, and past the
    /// overlap), the latest of the best kind, at the start of its whitespace; else the latest
    /// boundary anywhere in the window; else the first one after `a`.
    pub(super) fn best_end(&self, a: usize, window: usize, overlap: usize) -> usize {
        let n = self.valid.len() - 1;
        let hi = (a + window).min(n);
        let lo = (a + (window / 2).max(overlap + 1)).min(hi);
        // The candidates, latest first, each with the whitespace run it touches.
        let mut pending =
            (lo.max(a + 1)..=hi).rev().filter(|&k| self.valid[k]).map(|k| (k, self.run_around(k)));
        // The best kind present wins; of that kind, the latest run, and of that run its first cut
        // (the kind is the run's, so cuts in one run are one boundary). NOTE: kind by kind, latest
        // first, so that the costly sentence test runs only until it first says yes.
        let mut candidates: Vec<(usize, Run)> = Vec::new();
        if !self.line_breaks {
            // No paragraph breaks: the latest sentence end wins, so the candidates are looked at
            // only until the first one (most chunks end within a few tokens of their window's
            // end; classifying every candidate was ~7% of a chunking run's tokenizer time).
            while let Some((k, r)) = pending.next() {
                candidates.push((k, r));
                if self.ends_sentence(r.start, r.end) {
                    return pending
                        .take_while(|(_, next)| next.start == r.start)
                        .last()
                        .map_or(k, |(k, _)| k);
                }
            }
        }
        candidates.extend(pending);
        let pick = |is: &dyn Fn(&Run) -> bool| -> Option<usize> {
            let first = candidates.iter().position(|(_, r)| is(r))?;
            let run = candidates[first].1.start;
            candidates[first..].iter().take_while(|(_, r)| r.start == run).last().map(|&(k, _)| k)
        };
        let sentences = |r: &Run| r.breaks == 1 || (self.line_breaks && self.ends_sentence(r.start, r.end));
        pick(&|r| r.breaks >= 2)
            .or_else(|| pick(&sentences))
            .or_else(|| pick(&|r| r.end > r.start))
            .or_else(|| candidates.first().map(|&(k, _)| k))
            .or_else(|| (a + 1..=hi).rev().find(|&k| self.valid[k]))
            .unwrap_or_else(|| self.first_after(a))
    }

    /// The start of the chunk after tokens `a..b`: `overlap` tokens before `b`, moved by up to two
    /// tokens to a word start, always past `a`.
    pub(super) fn next_start(&self, a: usize, b: usize, overlap: usize) -> usize {
        if overlap == 0 {
            return b;
        }
        let target = b.saturating_sub(overlap).max(a + 1);
        let near = |k: usize| k > a && k < b && self.valid[k];
        let mut candidates: Vec<usize> =
            (target.saturating_sub(2)..=target + 2).filter(|&k| near(k)).collect();
        candidates.sort_by_key(|&k| (k.abs_diff(target), std::cmp::Reverse(k)));
        if let Some(&k) = candidates.iter().find(|&&k| self.classify(k).0 >= Boundary::Whitespace) {
            return k;
        }
        if let Some(&k) = candidates.first() {
            return k;
        }
        (target..b).find(|&k| near(k)).or_else(|| (a + 1..target).rev().find(|&k| near(k))).unwrap_or(b)
    }

    /// The kind of the boundary before token k, and where its whitespace run starts (the cut's
    /// own byte when it has none): cuts in one run of whitespace are one boundary.
    fn classify(&self, k: usize) -> (Boundary, usize) {
        let Run { start, at, end, breaks } = self.run_around(k);
        match breaks {
            0 => {}
            1 => return (Boundary::Sentence, start), // UAX #29 ends a sentence at a line break
            _ => return (Boundary::Paragraph, start),
        }
        if self.ends_sentence(start, end) {
            return (Boundary::Sentence, start);
        }
        if end > start {
            (Boundary::Whitespace, start)
        } else {
            (Boundary::Token, at)
        }
    }

    /// The cut before token k (1 ≤ k ≤ n): the run of whitespace it touches, the gap before
    /// the token included.
    fn run_around(&self, k: usize) -> Run {
        let n = self.offsets.len();
        let at = match k < n {
            true => self.offsets.starts[k] as usize,
            false => self.offsets.ends[n - 1] as usize,
        };
        let mut start = self.offsets.ends[k - 1].min(at as u32) as usize;
        while let Some(c) = self.text[..start].chars().next_back().filter(|c| c.is_whitespace()) {
            start -= c.len_utf8();
        }
        let mut end = at;
        while let Some(c) = self.text[end..].chars().next().filter(|c| c.is_whitespace()) {
            end += c.len_utf8();
        }
        // Line breaks: CR LF, LF, CR alone, NEL and the line and paragraph separators.
        let bytes = self.text.as_bytes();
        let breaks = self.text[start..end]
            .char_indices()
            .filter(|&(i, c)| match c {
                '\r' => bytes.get(start + i + 1) != Some(&b'\n'),
                '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => true,
                _ => false,
            })
            .count();
        Run { start, at, end, breaks }
    }

    /// Whether a sentence boundary (UAX #29) falls in `start..=end` (a run of whitespace, or a
    /// point). NOTE: UAX #29 ends a sentence (line breaks aside) only after a terminator, closing
    /// punctuation and spaces (`SATerm Close* Sp*`): so only a cut after one of `.!?` (past any
    /// ASCII closing quote or bracket), or after a character outside ASCII, is asked of the
    /// segmenter, over a little context around it. Segmenting whole texts was 15% of a chunking
    /// run's time, and asking at every punctuation mark more than that (IMDB's `<br />`).
    fn ends_sentence(&self, start: usize, end: usize) -> bool {
        let before = self.text[..start]
            .char_indices()
            .rev()
            .find(|(_, c)| !matches!(c, '"' | '\'' | ')' | ']' | '}' | '(' | '[' | '{'));
        let terminator = match before {
            None => return false,
            Some((_, c)) if c.is_ascii() && !matches!(c, '.' | '!' | '?') => return false,
            Some((at, _)) => at,
        };
        if let Some(answer) = plain_sentence_end(self.text.as_bytes(), terminator, start, end) {
            return answer;
        }
        // The rules look back from a terminator only over its own sentence's last characters
        // (a capital before a period, say), and ahead over spaces, closing marks and what
        // follows them, so the context starts a little before the terminator; the first
        // boundary at or past `start` decides.
        let from = floor_char(self.text, terminator.saturating_sub(SENTENCE_CONTEXT / 4));
        let to = ceil_char(self.text, end + SENTENCE_CONTEXT);
        self.text[from..to]
            .split_sentence_bound_indices()
            .map(|(i, _)| from + i)
            .find(|&b| b > from && b >= start)
            .is_some_and(|b| b <= end)
    }
}

/// What the sentence rules say about the commonest cut, without running them: an ASCII
/// terminator at `terminator`, closing marks up to `start`, a run of plain spaces `start..end`,
/// and then an ASCII letter. A capital starts a new sentence (UAX #29 SB11); so does a lower-case
/// letter after `!` or `?`, while after `.` it continues the sentence (SB8: "e.g. this"). `None`
/// for anything else. NOTE: the segmenter classifies each char by a table search, and asking it
/// was ~10% of a chunking run's tokenizer time with nearly every ask one of these.
/// `plain_sentence_ends_agree_with_the_segmenter` checks the two agree.
fn plain_sentence_end(text: &[u8], terminator: usize, start: usize, end: usize) -> Option<bool> {
    let spaces = text.get(start..end)?;
    if spaces.is_empty() || spaces.iter().any(|&b| b != b' ') {
        return None;
    }
    match (text[terminator], *text.get(end)?) {
        (b'.' | b'!' | b'?', b'A'..=b'Z') => Some(true),
        (b'!' | b'?', b'a'..=b'z') => Some(true),
        (b'.', b'a'..=b'z') => Some(false),
        _ => None,
    }
}

fn floor_char(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::tokenize::TextTokenizer;

    fn tokenizer() -> TextTokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2/tokenizer.json");
        TextTokenizer::from_file(&path, crate::tokenize::UNLIMITED, None).unwrap()
    }

    #[test]
    fn sentence_ends_found_locally_are_those_of_the_whole_text() {
        let t = tokenizer();
        let mut texts = crate::tokenize::chunk::tests::texts(5);
        texts.push(
            "He said \"Stop.\" Then (he left.) Mr. Smith stayed! Did he? Yes… 3.14 is pi. e.g. this."
                .repeat(5),
        );
        texts.push("\u{6211}\u{559c}\u{6b22}\u{3002}\u{4f60}\u{5462}\u{ff1f}\u{597d}\u{ff01}".repeat(9));
        let mut found = 0;
        for text in &texts {
            let offsets = t.offsets(text, usize::MAX).unwrap();
            let cuts = Cuts::new(text, &offsets);
            let whole: Vec<usize> =
                text.split_sentence_bound_indices().map(|(i, _)| i).filter(|&i| i > 0).collect();
            for k in 1..offsets.len() {
                if !cuts.valid[k] {
                    continue;
                }
                let Run { start, end, .. } = cuts.run_around(k);
                if end == text.len() {
                    continue; // whitespace up to the end of the text: no sentence starts after it
                }
                let want = whole.iter().any(|&b| b >= start && b <= end);
                let got = cuts.classify(k).0 >= Boundary::Sentence;
                assert_eq!(got, want, "cut {start}..{end} of {text:?}");
                found += want as usize;
            }
        }
        assert!(found > 100, "{found}");
    }

    /// `count` texts of `len` pieces each, drawn from `pieces` by a seeded LCG.
    fn random_texts(pieces: &[&str], seed: u64, count: usize, len: usize) -> Vec<String> {
        let mut x = seed;
        (0..count)
            .map(|_| {
                (0..len)
                    .map(|_| {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        pieces[(x >> 33) as usize % pieces.len()]
                    })
                    .collect()
            })
            .collect()
    }

    /// `best_end` as it reads without its shortcuts: every candidate classified, kind by kind.
    fn best_end_by_every_candidate(cuts: &Cuts, a: usize, window: usize, overlap: usize) -> usize {
        let n = cuts.valid.len() - 1;
        let hi = (a + window).min(n);
        let lo = (a + (window / 2).max(overlap + 1)).min(hi);
        let candidates: Vec<(usize, Run)> =
            (lo.max(a + 1)..=hi).rev().filter(|&k| cuts.valid[k]).map(|k| (k, cuts.run_around(k))).collect();
        let pick = |is: &dyn Fn(&Run) -> bool| -> Option<usize> {
            let first = candidates.iter().position(|(_, r)| is(r))?;
            let run = candidates[first].1.start;
            candidates[first..].iter().take_while(|(_, r)| r.start == run).last().map(|&(k, _)| k)
        };
        pick(&|r| r.breaks >= 2)
            .or_else(|| pick(&|r| r.breaks == 1 || cuts.ends_sentence(r.start, r.end)))
            .or_else(|| pick(&|r| r.end > r.start))
            .or_else(|| candidates.first().map(|&(k, _)| k))
            .or_else(|| (a + 1..=hi).rev().find(|&k| cuts.valid[k]))
            .unwrap_or_else(|| cuts.first_after(a))
    }

    #[test]
    fn the_best_end_is_the_one_every_candidate_would_give() {
        let t = tokenizer();
        let mut texts = crate::tokenize::chunk::tests::texts(9);
        texts.push("He said \"Stop.\" Then (he left.) Mr. Smith stayed! did he? Yes. e.g. this.".repeat(8));
        let (mut checked, mut without_breaks) = (0, 0);
        for text in &texts {
            let offsets = t.offsets(text, usize::MAX).unwrap();
            let cuts = Cuts::new(text, &offsets);
            without_breaks += !cuts.line_breaks as usize;
            for a in (0..offsets.len()).step_by(3) {
                for (window, overlap) in [(8, 0), (30, 4), (61, 16), (200, 20)] {
                    let want = best_end_by_every_candidate(&cuts, a, window, overlap);
                    assert_eq!(cuts.best_end(a, window, overlap), want, "a {a} window {window} of {text:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 5000 && without_breaks > 5, "{checked} {without_breaks}");
    }

    #[test]
    fn plain_sentence_ends_agree_with_the_segmenter() {
        // ASCII text dense in terminators, closing marks, spaces and both cases, where the
        // shortcut answers most cuts; every answer it gives must be the whole text's segmenter's.
        let t = tokenizer();
        let pieces = [
            "word", "Word", "a", "I", " ", " ", "  ", ".", ".", "!", "?", "...", "\"", "'", ")", "(", "]",
            "3", ",", ";", "-", "\n", "e.g.", "Mr.", "U.S.", "\t",
        ];
        let (mut answered, mut cuts_seen) = (0, 0);
        for text in random_texts(&pieces, 11, 800, 60) {
            let offsets = t.offsets(&text, usize::MAX).unwrap();
            let cuts = Cuts::new(&text, &offsets);
            let whole: Vec<usize> =
                text.split_sentence_bound_indices().map(|(i, _)| i).filter(|&i| i > 0).collect();
            for k in 1..offsets.len() {
                if !cuts.valid[k] {
                    continue;
                }
                let Run { start, end, .. } = cuts.run_around(k);
                let Some((terminator, _)) =
                    text[..start].char_indices().rev().find(|(_, c)| !"\"')]}([{".contains(*c))
                else {
                    continue;
                };
                cuts_seen += 1;
                if let Some(got) = plain_sentence_end(text.as_bytes(), terminator, start, end) {
                    let want = whole.iter().any(|&b| b >= start && b <= end);
                    assert_eq!(got, want, "cut {start}..{end} of {text:?}");
                    answered += 1;
                }
            }
        }
        assert!(answered > 1000 && cuts_seen > answered, "{answered} of {cuts_seen}");
    }

    /// The whitespace run around a cut and its line breaks, read char by char (what
    /// `run_around` must agree with).
    fn run_by_chars(text: &str, from: usize, at: usize) -> (usize, usize, usize) {
        let start = from
            - text[..from].chars().rev().take_while(|c| c.is_whitespace()).map(char::len_utf8).sum::<usize>();
        let end =
            at + text[at..].chars().take_while(|c| c.is_whitespace()).map(char::len_utf8).sum::<usize>();
        let chars: Vec<char> = text[start..end].chars().collect();
        let breaks = (0..chars.len())
            .filter(|&i| match chars[i] {
                '\r' => chars.get(i + 1) != Some(&'\n'), // the run ends before a non-space
                '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => true,
                _ => false,
            })
            .count();
        (start, end, breaks)
    }

    #[test]
    fn whitespace_runs_around_cuts_count_unicode_spaces_and_line_breaks() {
        let t = tokenizer();
        let pieces = [
            "word",
            " ",
            "\t",
            "\n",
            "\r\n",
            "\r",
            "\x0b",
            "\x0c",
            "\u{a0}",
            "\u{85}",
            "\u{2028}",
            "\u{2029}",
            "\u{3000}",
            "\u{6211}",
            ".",
            "!",
            "\u{1f600}",
            "  ",
            "é",
        ];
        let mut checked = 0;
        for text in random_texts(&pieces, 7, 200, 40) {
            let offsets = t.offsets(&text, usize::MAX).unwrap();
            let cuts = Cuts::new(&text, &offsets);
            for k in 1..=offsets.len() {
                if !cuts.valid[k] {
                    continue;
                }
                let run = cuts.run_around(k);
                let from = offsets.ends[k - 1].min(run.at as u32) as usize;
                assert_eq!(
                    (run.start, run.end, run.breaks),
                    run_by_chars(&text, from, run.at),
                    "cut {k} of {text:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 2000, "{checked}");
    }
}
