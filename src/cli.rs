//! Command-line flags, as the user types them. Nothing else in the crate imports clap's parser;
//! `config.rs` turns these into a validated configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::device::DeviceChoice;

/// Embed Parquet text corpora with gte-Qwen2-class models, locally, on GPU or CPU.
#[derive(Parser, Debug)]
#[command(name = "batch-embed", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Embed the text column of Parquet files into vector shards.
    Embed(EmbedArgs),
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Parquet files, or folders searched recursively for *.parquet. Rows are numbered over all
    /// files in sorted path order.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Model directory: config.json, tokenizer.json and model.safetensors (or sharded weights
    /// with model.safetensors.index.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Folder for the vector shards (part-*.parquet); created if missing.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,

    /// Name of the string column to embed.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_column: String,

    /// Attention mode: auto follows config.json's is_causal (absent means causal).
    #[arg(long, value_enum, default_value_t = AttentionArg::Auto)]
    pub attention: AttentionArg,

    /// Cut texts to this many tokens, special tokens included [default: the model's
    /// max_position_embeddings, at most 8192].
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,

    /// Text put before every input text, e.g. "Instruct: ...\nQuery: " for queries.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,

    /// Write the raw pooled vectors instead of L2-normalised ones.
    #[arg(long)]
    pub no_normalize: bool,

    /// Where to run: auto (CUDA if this binary has it and a GPU is there, else CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceChoice,

    /// Compute dtype: auto is f32 on CPU and bf16 on CUDA. Vectors are always written as f32.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub dtype: DtypeArg,

    /// Token budget of one model batch, padding included.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub batch_tokens: usize,

    /// Rows per output part file.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub rows_per_part: usize,

    /// No progress bar or progress lines; errors are still printed.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttentionArg {
    Auto,
    Causal,
    Bidirectional,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    Auto,
    F32,
    Bf16,
    F16,
}
