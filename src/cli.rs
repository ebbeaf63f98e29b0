//! Command-line flags, as the user types them. Nothing else in the crate imports clap's parser;
//! `config.rs` turns these into a validated configuration.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::device::DeviceChoice;

/// Embed Parquet text corpora with sentence-transformers and gte-Qwen2-class models, locally, on
/// GPU or CPU.
#[derive(Parser, Debug)]
#[command(name = "batch-embed", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Embed the text column (or a template of columns) of Parquet files into vector shards.
    Embed(Box<EmbedArgs>),
    /// Check a run's output: every owned row once (a vector or a recorded failure), shards that
    /// open, workers that agree. Exit 0 only when the run is complete and sound.
    Verify(VerifyArgs),
    /// Show every worker of a run (done, running, stale, interrupted, failed, not started) with
    /// rows, rates and the fleet's ETA, from the output folder alone. Exit 0 only when every
    /// worker is done.
    Status(StatusArgs),
    /// The change set between two runs made with --id-column: upserted.parquet (id, embedding,
    /// text_hash of every new or changed id) and deleted.parquet (id of every id that is gone),
    /// for a vector database.
    Changes(ChangesArgs),
}

#[derive(Args, Debug)]
pub struct ChangesArgs {
    /// The --output of the earlier run (what the vector database holds now): a folder or a
    /// bucket URL.
    #[arg(value_name = "PREVIOUS")]
    pub previous: PathBuf,

    /// The --output of the later run (what it should hold).
    #[arg(value_name = "CURRENT")]
    pub current: PathBuf,

    /// Folder (or bucket URL) for upserted.parquet, deleted.parquet (and duplicates.parquet when
    /// ids repeat).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,

    /// Use runs that are not complete (ids of rows not embedded yet then look deleted or new).
    #[arg(long)]
    pub allow_incomplete: bool,

    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The --output of the run: a folder, or a bucket URL (s3://, gs://, az://).
    #[arg(value_name = "OUTPUT")]
    pub output: PathBuf,

    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Redraw every SECONDS until every worker is done.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "5")]
    pub watch: Option<f64>,

    /// Serve a live page (table, throughput chart, ETA) at ADDR, e.g. 0.0.0.0:8000; JSON at
    /// /status.json.
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<String>,

    /// A running worker whose progress is older than this is shown as stale (killed or
    /// preempted); workers write progress every 5 s.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub stale_after: u64,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The --output of the run: a folder, or a bucket URL (s3://, gs://, az://).
    #[arg(value_name = "OUTPUT")]
    pub output: PathBuf,

    /// Also read every vector: NaN or infinite values, and norms far from 1 when normalised.
    #[arg(long)]
    pub deep: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Parquet files, or folders searched recursively for *.parquet; or URLs of objects or
    /// prefixes (s3://, gs://, az://; credentials from the usual environment). Rows are numbered
    /// over all files in sorted order (local paths, then URLs). Inside folders and prefixes,
    /// names starting with '.' or '_' (Spark's _temporary, Delta Lake's _delta_log) are left out.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,

    /// Model: a local folder (config.json, tokenizer.json and model.safetensors or sharded
    /// weights; a sentence-transformers folder's modules.json is followed), or a Hugging Face Hub
    /// id ORG/NAME[@REVISION], looked up in the Hugging Face cache (HF_HUB_CACHE, HF_HOME) and
    /// downloaded into it when missing (HF_TOKEN, HF_ENDPOINT; never with HF_HUB_OFFLINE=1).
    #[arg(long, value_name = "DIR|ORG/NAME")]
    pub model: PathBuf,

    /// Hub revision (branch, tag or commit) of a --model Hub id [default: main]; the commit it
    /// resolves to is recorded. Pin a commit for a fleet that starts over hours.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,

    /// Output folder or bucket URL (s3://, gs://, az://); each worker writes
    /// OUTPUT/worker-ID-of-N/ (part-*.parquet, checkpoint.json, failures). Re-running the same
    /// command resumes.
    #[arg(long, value_name = "DIR|URL")]
    pub output: PathBuf,

    /// This worker's index, 0-based [default: from JOB_COMPLETION_INDEX (Kubernetes),
    /// SLURM_ARRAY_TASK_ID (Slurm) or SKYPILOT_NODE_RANK (SkyPilot), else 0].
    #[arg(long, env = "BATCH_EMBED_WORKER_ID", value_name = "ID")]
    pub worker_id: Option<u64>,

    /// Number of workers sharing the input; each owns every N-th block of rows [default: from
    /// SLURM_ARRAY_TASK_COUNT or SKYPILOT_NUM_NODES, else 1].
    #[arg(long, env = "BATCH_EMBED_NUM_WORKERS", value_name = "N")]
    pub num_workers: Option<u64>,

    /// Rows per stride block: block b (rows b*K..(b+1)*K) belongs to worker b mod N.
    #[arg(long, default_value_t = crate::partition::DEFAULT_BLOCK, value_name = "K")]
    pub stride_block: u64,

    /// Column copied to the output as `id`, with its original type (files whose ids differ only
    /// in width or string layout: the type that holds them all).
    #[arg(long, value_name = "NAME")]
    pub id_column: Option<String>,

    /// An earlier output to copy vectors from: a row whose key (its id with --id-column, else its
    /// text) is there with the same text hash is not embedded again. May be given more than
    /// once; the earlier run must have used the same model and options.
    #[arg(long, value_name = "PREVIOUS_OUTPUT")]
    pub reuse: Vec<PathBuf>,

    /// Element type of the output vectors.
    #[arg(long, value_enum, default_value_t = OutputDtypeArg::F32)]
    pub output_dtype: OutputDtypeArg,

    /// Discard this worker's earlier output and checkpoint, and start over.
    #[arg(long)]
    pub restart: bool,

    /// A row group of an input file whose bytes do not decode (a damaged file) does not stop
    /// the worker: its rows are recorded as failed, with a warning naming the file and the row
    /// group (printed with --quiet too), and the worker goes on. Without it the worker stops
    /// there, naming them.
    #[arg(long)]
    pub skip_damaged: bool,

    /// Seconds between checkpoints: a part file is closed at least this often, so a preempted
    /// worker loses at most this much work.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub checkpoint_every: u64,

    /// Name of the string column to embed.
    #[arg(long, default_value = "text", value_name = "NAME")]
    pub text_column: String,

    /// Build each row's text from several columns instead: {column} placeholders in literal
    /// text, e.g. "{title}\n\n{text}" (\n, \t and \\ are escapes; {{ and }} are braces). String
    /// columns, and numbers, booleans, dates and times written as text. A null column, or one a
    /// file lacks, is empty; a row whose named columns are all null fails. Only the named
    /// columns are read.
    #[arg(long, value_name = "TEMPLATE", conflicts_with = "text_column")]
    pub text_template: Option<String>,

    /// Split a text longer than N tokens into chunks of at most N tokens (prompt and special
    /// tokens included), each embedded as a text of its own, instead of cutting it at
    /// --max-tokens. A chunk ends at the best boundary within reach: a paragraph break, a
    /// sentence end, whitespace, else any token. Output: one row per chunk (chunk, chunk_start,
    /// chunk_end columns), or one per row with --chunk-pool mean.
    #[arg(long, value_name = "N")]
    pub chunk_tokens: Option<usize>,

    /// Tokens a chunk shares with the end of the chunk before it, about (it starts at a word
    /// when one is within two tokens) [default: 0].
    #[arg(long, value_name = "M", requires = "chunk_tokens")]
    pub chunk_overlap: Option<usize>,

    /// Most chunks of one row; the rest of its text is left out and the row counts as truncated.
    #[arg(long, value_name = "K", requires = "chunk_tokens")]
    pub max_chunks: Option<usize>,

    /// One vector per row instead of one per chunk: mean is the mean of the row's chunk vectors
    /// (each pooled as the model pools), weighted by their tokens, then L2-normalised unless
    /// --no-normalize.
    #[arg(long, value_enum, value_name = "HOW", requires = "chunk_tokens")]
    pub chunk_pool: Option<ChunkPoolArg>,

    /// Attention mode: auto follows config.json's is_causal (absent means causal).
    #[arg(long, value_enum, default_value_t = AttentionArg::Auto)]
    pub attention: AttentionArg,

    /// Cut texts to this many tokens, special tokens included [default: a sentence-transformers
    /// folder's max_seq_length, else the model's max_position_embeddings, at most 8192].
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,

    /// Text put before every input text, e.g. "Instruct: ...\nQuery: " for queries; "" for
    /// none (over a model's default prompt).
    #[arg(long, value_name = "TEXT", conflicts_with = "prompt_name")]
    pub prompt: Option<String>,

    /// One of the model's named prompts (config_sentence_transformers.json), e.g. query or
    /// passage [default: its default_prompt_name].
    #[arg(long, value_name = "NAME")]
    pub prompt_name: Option<String>,

    /// How a text's vector is taken from its token states [default: a sentence-transformers
    /// folder's Pooling module, else last for qwen2/qwen3 and mean for encoders].
    #[arg(long, value_enum, value_name = "MODE")]
    pub pooling: Option<PoolingArg>,

    /// Keep the first D dimensions of each vector, then normalise (Matryoshka models).
    #[arg(long, value_name = "D")]
    pub dimensions: Option<usize>,

    /// L2-normalise the vectors even if a sentence-transformers folder has no Normalize module.
    #[arg(long, conflicts_with = "no_normalize")]
    pub normalize: bool,

    /// Write the raw pooled vectors instead of L2-normalised ones [default: normalised, unless
    /// a sentence-transformers folder has no Normalize module].
    #[arg(long)]
    pub no_normalize: bool,

    /// Where to run: auto (CUDA if this binary has it and a GPU is there, else CPU), cpu, cuda,
    /// cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceChoice,

    /// Run one worker per device on this machine, e.g. cuda:0,cuda:1,cuda:2,cuda:3: device g of
    /// G runs worker ID*G+g of N*G, where ID and N are this machine's worker id and count.
    #[arg(long, value_delimiter = ',', value_name = "DEVICES", conflicts_with = "device")]
    pub devices: Vec<DeviceChoice>,

    /// Compute dtype: auto is f32 on CPU and bf16 on CUDA. Vectors are always written as f32.
    #[arg(long, value_enum, default_value_t = DtypeArg::Auto)]
    pub dtype: DtypeArg,

    /// Token budget of one model batch, padding included [default: 8192 on the CPU, 2048 for
    /// encoders; on a GPU, chosen from the memory free after loading the model]. A batch that runs out of memory
    /// is split and retried.
    #[arg(long, value_name = "N")]
    pub batch_tokens: Option<usize>,

    /// Folder holding the CUDA libraries (libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
    /// libnvrtc.so.13, and libcuda.so.1 if not on the system path); searched before
    /// LD_LIBRARY_PATH, CUDA_HOME, the usual paths and Python environments' nvidia/*/lib.
    #[arg(long, value_name = "DIR")]
    pub cuda_lib_dir: Option<PathBuf>,

    /// Most rows per output part file.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub rows_per_part: usize,

    /// Seconds to finish after SIGTERM/SIGINT: the batch in flight ends, finished rows are
    /// committed and the process exits with code 75 ("interrupted, run me again"); past this
    /// it exits at once (the last checkpoint stays valid).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub stop_timeout: f64,

    /// Take over this worker folder's lock even if another host's process holds it. Only for
    /// a process known to be gone: two writers on one folder corrupt it.
    #[arg(long)]
    pub force_unlock: bool,

    /// A lock held by another host whose heartbeat has not moved for this long is taken
    /// over (its machine was preempted).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub lock_stale: u64,

    /// Test hook: inject faults, e.g. "read=2,commit=3,oom-above=64" (see src/faults.rs).
    #[arg(long, hide = true, value_name = "SPEC")]
    pub debug_faults: Option<String>,

    /// Test hook: sleep this long before each chunk reaches the model, so tests can interrupt
    /// a run midway.
    #[arg(long, hide = true, default_value_t = 0)]
    pub debug_chunk_delay_ms: u64,

    /// Bench hook: skip the model (made-up vectors) to measure the pipeline alone.
    #[arg(long, hide = true)]
    pub debug_noop_model: bool,

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
pub enum PoolingArg {
    /// The first token ([CLS]).
    Cls,
    /// The average of the token states.
    Mean,
    /// The element-wise maximum over the tokens.
    Max,
    /// The last token (gte-Qwen2, Qwen3-Embedding).
    #[value(alias = "lasttoken")]
    Last,
    /// Weighted by position 1, 2, 3, ….
    #[value(alias = "weightedmean")]
    WeightedMean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ChunkPoolArg {
    Mean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputDtypeArg {
    F32,
    F16,
}
