//! What decides the vectors besides the weights — pooling, normalisation, the token limit, the
//! prompt, the kept dimensions — each taken from the flags, else from the sentence-transformers
//! files, else from `config.json` and batch-embed's defaults; and where each one came from, for
//! the start line.
//!
//! | setting | flag | sentence-transformers files | otherwise |
//! |---|---|---|---|
//! | pooling | `--pooling` | `1_Pooling/config.json` | last token for qwen2/qwen3, mean for encoders |
//! | normalised | `--normalize`, `--no-normalize` | a Normalize module in `modules.json` | yes |
//! | max tokens | `--max-tokens` | `max_seq_length` (`sentence_bert_config.json`, else `tokenizer_config.json`) | `max_position_embeddings`, at most 8192 |
//! | prompt | `--prompt`, `--prompt-name` | `default_prompt_name` of `config_sentence_transformers.json` | none |
//!
//! `--dimensions D` keeps the first D dimensions and then normalises (Matryoshka), unless
//! `--no-normalize` is given.

use anyhow::{bail, Result};

use crate::config::DEFAULT_MAX_TOKENS_CAP;
use crate::model::{ModelConfig, ModelFiles};
use crate::pool::{Pooling, PoolingMode};

/// What the user asked for on the command line (`None`: not given).
#[derive(Clone, Debug, Default)]
pub struct Requested {
    pub pooling: Option<PoolingMode>,
    pub normalize: Option<bool>,
    pub max_tokens: Option<usize>,
    /// `Some("")`: explicitly no prompt (over a model's default prompt).
    pub prompt: Option<String>,
    pub prompt_name: Option<String>,
    pub dimensions: Option<usize>,
}

/// The settings in force, each with its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorOptions {
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_tokens: usize,
    /// The text put before every input text.
    pub prompt: Option<String>,
    /// The sentence-transformers prompt name it came from, if any.
    pub prompt_name: Option<String>,
    pub dimensions: Option<usize>,
    /// The width of the vectors written: `dimensions`, else the pooled width after any Dense
    /// modules.
    pub dim: usize,
    /// Where each setting came from, e.g. `pooling mean (1_Pooling/config.json)`.
    pub sources: Vec<String>,
}

impl VectorOptions {
    /// Applies the precedence (flags, then sentence-transformers files, then `config.json`).
    pub fn resolve(req: &Requested, files: &ModelFiles, config: &ModelConfig) -> Result<Self> {
        let st = files.sentence_transformers.as_ref();
        let mut sources = Vec::new();

        let st_pooling = st.map(|s| (&s.pooling, s.pooling_source.clone()));
        let pooling = match (req.pooling, &st_pooling) {
            (Some(mode), _) if files.is_static() && mode != PoolingMode::Mean => bail!(
                "--pooling {}: a static-embedding model's vector is the mean of its tokens' rows (StaticEmbedding); leave --pooling out",
                mode.as_str()
            ),
            (Some(mode), _) => {
                sources.push(format!("pooling {} (--pooling)", mode.as_str()));
                // NOTE: whether the prompt's tokens are pooled stays the model's.
                Pooling { modes: vec![mode], include_prompt: st.is_none_or(|s| s.pooling.include_prompt) }
            }
            (None, Some((p, file))) => {
                sources.push(format!("pooling {} ({file})", p.describe(false)));
                (*p).clone()
            }
            (None, None) if config.architecture.is_encoder() => {
                sources.push("pooling mean (no modules.json: sentence-transformers' default)".into());
                Pooling::new(PoolingMode::Mean)
            }
            (None, None) => {
                sources.push(format!("pooling last_token ({} default)", config.architecture.as_str()));
                Pooling::last_token()
            }
        };

        let limit = config.max_tokens_limit();
        let max_tokens = match (req.max_tokens, st.and_then(|s| s.max_seq_length.as_ref())) {
            (Some(0), _) => bail!("--max-tokens must be at least 1"),
            (Some(n), _) if n > limit => bail!(
                "--max-tokens {n} is more than the model accepts ({limit}, from {})",
                files.config.display()
            ),
            (Some(n), _) => {
                sources.push(format!("max tokens {n} (--max-tokens)"));
                n
            }
            (None, Some((n, file))) => {
                let n = (*n).clamp(1, limit);
                sources.push(format!("max tokens {n} ({file})"));
                n
            }
            (None, None) => {
                let n = limit.min(DEFAULT_MAX_TOKENS_CAP);
                sources.push(match files.is_static() {
                    true => format!("max tokens {n} (batch-embed's cap; a static model has no limit)"),
                    false => format!("max tokens {n} (config.json)"),
                });
                n
            }
        };

        let (prompt, prompt_name) = match (&req.prompt, &req.prompt_name) {
            (Some(_), Some(_)) => bail!("--prompt and --prompt-name cannot both be given"),
            (Some(p), None) if p.is_empty() => (None, None),
            (Some(p), None) => {
                sources.push("prompt (--prompt)".into());
                (Some(p.clone()), None)
            }
            (None, Some(name)) => {
                let prompts = st.map(|s| &s.prompts).filter(|p| !p.is_empty());
                let Some(prompts) = prompts else {
                    bail!(
                        "--prompt-name {name}: this model names no prompts (no \"prompts\" in {})",
                        files.dir.join("config_sentence_transformers.json").display()
                    );
                };
                let Some(text) = prompts.get(name) else {
                    bail!(
                        "--prompt-name {name}: the model's prompts are {} (config_sentence_transformers.json)",
                        prompts.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                };
                sources.push(format!("prompt \"{name}\" (--prompt-name)"));
                (Some(text.clone()).filter(|t| !t.is_empty()), Some(name.clone()))
            }
            (None, None) => match st.and_then(|s| s.default_prompt_name.as_ref().map(|n| (n, &s.prompts[n])))
            {
                Some((name, text)) => {
                    sources.push(format!(
                        "prompt \"{name}\" (default_prompt_name in config_sentence_transformers.json)"
                    ));
                    (Some(text.clone()).filter(|t| !t.is_empty()), Some(name.clone()))
                }
                None => (None, None),
            },
        };

        let width =
            files.dense_modules().last().map_or(pooling.width(config.hidden_size), |d| d.out_features);
        let dim = match req.dimensions {
            Some(0) => bail!("--dimensions must be at least 1"),
            Some(d) if d > width => bail!("--dimensions {d} is more than the model's {width} dimensions"),
            Some(d) => d,
            None => width,
        };

        let normalize = match (req.normalize, req.dimensions, st) {
            (Some(n), _, _) => {
                sources.push(format!("{} (flag)", if n { "normalised" } else { "not normalised" }));
                n
            }
            (None, Some(d), _) => {
                sources.push(format!("first {d} dimensions, then normalised (--dimensions)"));
                true
            }
            (None, None, Some(s)) => {
                let what = if s.normalize {
                    "normalised (Normalize in modules.json)"
                } else {
                    "not normalised (no Normalize in modules.json)"
                };
                sources.push(what.into());
                s.normalize
            }
            (None, None, None) => true,
        };
        Ok(VectorOptions {
            pooling,
            normalize,
            max_tokens,
            prompt,
            prompt_name,
            dimensions: req.dimensions,
            dim,
            sources,
        })
    }
}
