//! Plain batch data between the tokenizer and the model, and the packing of tokenized texts into
//! batches under a token budget. No tensors here, so packing is tested without a model.

/// Texts packed one after the other, as the model consumes them.
///
/// Text `i` owns tokens `cu_seq_lengths[i]..cu_seq_lengths[i + 1]` of `input_ids`; its rotary
/// positions start at 0 at its first token. Which tokens make its vector is pool.rs's business.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub position_ids: Vec<u32>,
    pub cu_seq_lengths: Vec<u32>,
    pub max_length: u32,
}

impl Batch {
    /// Packs token sequences (none of them empty).
    pub fn new(seqs: &[&[u32]]) -> Self {
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        let mut b = Batch {
            input_ids: Vec::with_capacity(total),
            position_ids: Vec::with_capacity(total),
            cu_seq_lengths: Vec::with_capacity(seqs.len() + 1),
            max_length: 0,
        };
        b.cu_seq_lengths.push(0);
        for s in seqs {
            assert!(!s.is_empty(), "an empty text cannot be embedded");
            b.input_ids.extend_from_slice(s);
            b.position_ids.extend(0..s.len() as u32);
            b.cu_seq_lengths.push(b.input_ids.len() as u32);
            b.max_length = b.max_length.max(s.len() as u32);
        }
        b
    }

    /// Each text's last token, as indices into the packed tokens.
    pub fn last_tokens(&self) -> Vec<u32> {
        self.cu_seq_lengths[1..].iter().map(|&end| end - 1).collect()
    }

    /// Number of texts.
    pub fn len(&self) -> usize {
        self.cu_seq_lengths.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start and length of text `i` in the packed token list.
    pub fn span(&self, i: usize) -> (usize, usize) {
        let start = self.cu_seq_lengths[i] as usize;
        (start, self.cu_seq_lengths[i + 1] as usize - start)
    }

    /// The texts of this batch in two batches of (nearly) equal count, for retrying a batch that
    /// ran out of memory. Needs at least two texts.
    pub fn split_half(&self) -> (Batch, Batch) {
        assert!(self.len() >= 2, "a batch of one text cannot be split");
        let seqs: Vec<&[u32]> = (0..self.len())
            .map(|i| {
                let (start, len) = self.span(i);
                &self.input_ids[start..start + len]
            })
            .collect();
        let (a, b) = seqs.split_at(seqs.len() / 2);
        (Batch::new(a), Batch::new(b))
    }

    /// Tokens the padded attention rectangle holds: texts × longest text.
    pub fn padded_tokens(&self) -> usize {
        self.len() * self.max_length as usize
    }

    /// Elements of the padded attention scores with `heads` heads: texts × heads × longest².
    pub fn attention_elements(&self, heads: usize) -> usize {
        attention_elements(self.len(), self.max_length as usize, heads)
    }
}

/// texts × heads × longest²: the size of one padded attention score tensor.
pub fn attention_elements(texts: usize, longest: usize, heads: usize) -> usize {
    texts.saturating_mul(heads).saturating_mul(longest).saturating_mul(longest)
}

/// What one model batch may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Padded tokens (texts × longest): bounds activation memory.
    pub tokens: usize,
    /// On the padded attention path: attention heads and the most score elements
    /// (texts × heads × longest²) one batch may hold. `None` when attention is packed.
    pub attention: Option<(usize, usize)>,
}

impl Budget {
    pub fn tokens(tokens: usize) -> Self {
        Budget { tokens, attention: None }
    }

    /// Whether `texts` texts whose longest has `longest` tokens fit.
    pub fn fits(&self, texts: usize, longest: usize) -> bool {
        texts.saturating_mul(longest) <= self.tokens
            && self.attention.is_none_or(|(heads, max)| attention_elements(texts, longest, heads) <= max)
    }
}

/// Splits texts into batches that fit `budget`: padded size (texts × longest) in tokens, and on
/// the padded attention path the attention scores (texts × heads × longest²).
///
/// `lengths` are token counts. Returns the batches as lists of indices into `lengths`, longest
/// texts first, each batch holding texts of similar length so that padding stays small. A text
/// over the budget gets a batch of its own.
pub fn pack_by_length(lengths: &[usize], budget: Budget) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Longest first: the first batch of a window shows the peak memory early.
    order.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lengths[i];
        let new_longest = longest.max(len);
        if !current.is_empty() && !budget.fits(current.len() + 1, new_longest) {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_texts_with_offsets_and_positions() {
        let b = Batch::new(&[&[5, 6, 7], &[8], &[9, 10]]);
        assert_eq!(b.input_ids, vec![5, 6, 7, 8, 9, 10]);
        assert_eq!(b.position_ids, vec![0, 1, 2, 0, 0, 1]);
        assert_eq!(b.cu_seq_lengths, vec![0, 3, 4, 6]);
        assert_eq!(b.last_tokens(), vec![2, 3, 5]);
        assert_eq!(b.max_length, 3);
        assert_eq!(b.span(2), (4, 2));
        assert_eq!(b.padded_tokens(), 9);
    }

    #[test]
    fn batches_respect_the_budget_and_cover_every_text_once() {
        let lengths = [10, 3, 7, 7, 1, 12, 5, 2, 9, 4];
        let batches = pack_by_length(&lengths, Budget::tokens(20));
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(longest * b.len() <= 20 || b.len() == 1, "{b:?}");
        }
    }

    #[test]
    fn a_text_over_the_budget_is_alone() {
        let batches = pack_by_length(&[50, 2, 2], Budget::tokens(10));
        assert_eq!(batches[0], vec![0]);
        assert_eq!(batches[1], vec![1, 2]);
    }

    #[test]
    fn long_texts_are_bounded_by_attention_elements_too() {
        // 16 texts of 8192 tokens with 12 heads: 12.9 G score elements if packed by tokens alone.
        let lengths = vec![8192; 16];
        let limit = (1usize << 31) - 1;
        let budget = Budget { tokens: 131_072, attention: Some((12, limit)) };
        let batches = pack_by_length(&lengths, budget);
        for b in &batches {
            assert!(attention_elements(b.len(), 8192, 12) <= limit, "{} texts", b.len());
        }
        // 12 × 8192² = 805 M per text: two fit under 2³¹, three do not.
        assert!(batches.iter().all(|b| b.len() == 2), "{batches:?}");
        assert_eq!(pack_by_length(&lengths, Budget::tokens(131_072)).len(), 1);
        // A text whose scores alone pass the bound still gets a batch (the model splits its
        // attention further).
        assert_eq!(
            pack_by_length(&[32_768], Budget { tokens: 1 << 20, attention: Some((28, limit)) }),
            vec![vec![0]]
        );
    }
}
