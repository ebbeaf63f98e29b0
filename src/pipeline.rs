//! One `embed` run: check everything, then stream rows from the input files through the
//! embedder into vector shards, recording rows that cannot be embedded.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::Array;

use crate::config::EmbedConfig;
use crate::embed::{Embedder, EmbedderOptions};
use crate::input;
use crate::output::ShardWriter;
use crate::pool::Pooling;
use crate::progress::Progress;

/// Rows read and embedded together; large enough that length sorting keeps padding small.
const CHUNK_ROWS: usize = 4096;

/// What a run did, for the closing summary.
#[derive(Debug, Default)]
pub struct Summary {
    pub rows: u64,
    pub embedded: u64,
    pub failed: u64,
    pub truncated: u64,
    pub tokens: u64,
    pub padded_tokens: u64,
    pub parts: usize,
    pub elapsed: Duration,
    pub device: String,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let padding =
            if self.padded_tokens > 0 { 1.0 - self.tokens as f64 / self.padded_tokens as f64 } else { 0.0 };
        writeln!(f, "rows:       {} ({} embedded, {} failed)", self.rows, self.embedded, self.failed)?;
        writeln!(f, "truncated:  {} texts", self.truncated)?;
        writeln!(f, "tokens:     {} (padding {:.1}% of computed)", self.tokens, padding * 100.0)?;
        writeln!(f, "parts:      {}", self.parts)?;
        write!(
            f,
            "time:       {:.2}s on {} ({:.1} rows/s, {:.0} tokens/s)",
            secs,
            self.device,
            self.rows as f64 / secs,
            self.tokens as f64 / secs
        )
    }
}

pub fn run(cfg: &EmbedConfig) -> Result<Summary> {
    let started = Instant::now();
    // Check every input before anything is written.
    let paths = input::discover(&cfg.inputs)?;
    let files = input::open_all(&paths, &cfg.text_column)?;
    let total_rows: u64 = files.iter().map(|f| f.rows).sum();
    prepare_output(&cfg.output)?;

    let device = crate::device::open(cfg.device)?;
    let dtype = crate::device::dtype(cfg.dtype, &device);
    let options = EmbedderOptions {
        attention: cfg.attention,
        max_tokens: cfg.max_tokens,
        prompt: cfg.prompt.clone(),
        normalize: cfg.normalize,
        batch_tokens: cfg.batch_tokens,
    };
    let embedder = Embedder::load(&cfg.model, &cfg.model_config, options, dtype, &device)?;
    let mut progress = Progress::new(total_rows, cfg.quiet);
    let device_name = crate::device::describe(&device);
    progress.note(&format!(
        "batch-embed: {} rows in {} files, model {} ({}, {} attention, dim {}), {} {:?}",
        total_rows,
        files.len(),
        cfg.model.dir.display(),
        cfg.model_config.architecture.as_str(),
        cfg.attention.as_str(),
        embedder.dim(),
        device_name,
        dtype
    ));

    let mut writer =
        ShardWriter::new(&cfg.output, embedder.dim(), cfg.rows_per_part, metadata(cfg, embedder.dim()));
    let failures_path = cfg.output.join("failures.jsonl");
    let mut failures: Vec<u8> = Vec::new();
    let mut summary = Summary { rows: total_rows, device: device_name, ..Summary::default() };
    for file in &files {
        for chunk in input::read_texts(file, CHUNK_ROWS)? {
            let chunk = chunk?;
            let texts: Vec<Option<&str>> = (0..chunk.texts.len())
                .map(|i| (!chunk.texts.is_null(i)).then(|| chunk.texts.value(i)))
                .collect();
            let embedded = embedder.embed(&texts)?;
            for (i, result) in embedded.vectors.iter().enumerate() {
                let row = chunk.first_row + i as u64;
                match result {
                    Ok(v) => {
                        writer.push(row, v)?;
                        summary.embedded += 1;
                    }
                    Err(f) => {
                        let line = serde_json::json!({"row": row, "reason": f.reason()});
                        writeln!(failures, "{line}")?;
                        summary.failed += 1;
                    }
                }
            }
            summary.tokens += embedded.tokens;
            summary.padded_tokens += embedded.padded_tokens;
            summary.truncated += embedded.truncated;
            progress.advance(texts.len() as u64, embedded.tokens);
        }
    }
    summary.parts = writer.finish()?.len();
    if !failures.is_empty() {
        std::fs::write(&failures_path, &failures)
            .with_context(|| format!("cannot write {}", failures_path.display()))?;
    }
    progress.finish();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Creates the output folder; refuses one that already holds vector shards.
fn prepare_output(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let existing = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list output folder {}", dir.display()))?
        .filter_map(|e| e.ok())
        .any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("part-") && name.ends_with(".parquet")
        });
    if existing {
        bail!(
            "output folder {} already holds part-*.parquet files; choose another --output or remove them",
            dir.display()
        );
    }
    Ok(())
}

/// Key-value metadata stored in every shard: what produced these vectors.
fn metadata(cfg: &EmbedConfig, dim: usize) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(format!("batch_embed.{k}"), v);
    };
    put("version", env!("CARGO_PKG_VERSION").to_string());
    put("model", cfg.model.dir.display().to_string());
    put("model_type", cfg.model_config.architecture.as_str().to_string());
    put("dim", dim.to_string());
    put("pooling", Pooling::LastToken.as_str().to_string());
    put("normalized", cfg.normalize.to_string());
    put("attention", cfg.attention.as_str().to_string());
    put("max_tokens", cfg.max_tokens.to_string());
    put("prompt", cfg.prompt.clone().unwrap_or_default());
    m
}
