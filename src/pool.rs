//! Pooling and normalisation: from the model's token states to one vector per text.
//!
//! The model is asked for the token rows a pooling reads ([`Pooling::rows`]); when that is one
//! row per text (last-token pooling), the model may compute only those rows in its last layer.
//! [`Pooling::pool`] then turns what it returned into `[texts, hidden]`.

use candle_core::{Result, Tensor};

use crate::batch::Batch;

/// How a text's vector is taken from its token states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The state of the last real token (gte-Qwen2, Qwen3-Embedding). With a tokenizer whose
    /// post-processor appends `<|endoftext|>` (gte-Qwen2), that appended token.
    LastToken,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::LastToken => "last_token",
        }
    }

    /// The packed token rows this pooling reads, one per text, or `None` when it reads every
    /// token.
    pub fn rows(self, batch: &Batch) -> Option<Vec<u32>> {
        match self {
            Pooling::LastToken => Some(batch.last_tokens()),
        }
    }

    /// One vector per text from the model's output for `batch`: the rows asked for by
    /// [`Pooling::rows`] (`[texts, hidden]`), or every token (`[tokens, hidden]`) when it
    /// asked for none.
    pub fn pool(self, states: Tensor, batch: &Batch) -> Result<Tensor> {
        match self {
            Pooling::LastToken => {
                debug_assert_eq!(states.dim(0)?, batch.len());
                Ok(states)
            }
        }
    }
}

/// Scales `v` to unit L2 norm; a zero vector stays zero.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_to_unit_length() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut z = vec![0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }

    #[test]
    fn last_token_pooling_reads_each_texts_last_row() {
        let batch = Batch::new(&[&[5, 6, 7], &[8], &[9, 10]]);
        assert_eq!(Pooling::LastToken.rows(&batch), Some(vec![2, 3, 5]));
    }
}
