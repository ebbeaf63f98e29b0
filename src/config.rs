//! The validated run configuration, built once from the flags. Everything that can be checked
//! without reading input rows or weights is checked here, so bad flags fail before any work.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::chunked::{ChunkPool, Chunking};
use crate::cli::{AttentionArg, ChunkPoolArg, DtypeArg, EmbedArgs, OutputDtypeArg, PoolingArg};
use crate::device::{DeviceChoice, DtypeChoice};
use crate::input::Damaged;
use crate::model::source::ModelSource;
use crate::model::{Architecture, Attention, ModelConfig, ModelFiles};
use crate::output::OutputDtype;
use crate::partition::Partition;
use crate::pool::PoolingMode;
use crate::storage::Location;
use crate::template::Template;
use crate::tokenize::chunk::ChunkSettings;
use crate::vector_options::{Requested, VectorOptions};

/// Longest default text: long enough for reviews and most documents, short enough that one
/// text's attention fits in memory on any device.
pub const DEFAULT_MAX_TOKENS_CAP: usize = 8192;

#[derive(Clone, Debug)]
pub struct EmbedConfig {
    /// Local paths and URLs (storage/).
    pub inputs: Vec<Location>,
    pub model: ModelFiles,
    pub model_config: ModelConfig,
    /// Where the model came from: the local folder, and the Hub id and commit when it is one.
    pub model_source: ModelSource,
    /// Pooling, normalisation, max tokens, prompt and dimensions, each with its source.
    pub vectors: VectorOptions,
    pub output: Location,
    pub partition: Partition,
    /// Where the worker id and count came from (flags, Kubernetes, Slurm, SkyPilot).
    pub identity_source: String,
    /// What each row's text is made of: `--text-template`, or `{--text-column}`.
    pub template: Template,
    pub id_column: Option<String>,
    /// `--chunk-tokens` and the options that go with it.
    pub chunking: Option<Chunking>,
    /// `--reuse`: earlier outputs to copy vectors from.
    pub reuse: Vec<Location>,
    pub output_dtype: OutputDtype,
    pub restart: bool,
    pub checkpoint_every: std::time::Duration,
    /// The attention mode in force (the override, else the config's).
    pub attention: Attention,
    pub max_tokens: usize,
    pub prompt: Option<String>,
    pub normalize: bool,
    pub device: DeviceChoice,
    pub dtype: DtypeChoice,
    /// `None`: chosen at run time (8192 on the CPU, from free memory on a GPU).
    pub batch_tokens: Option<usize>,
    pub cuda_lib_dir: Option<PathBuf>,
    pub rows_per_part: usize,
    /// `--skip-damaged`: what a row group that does not decode does.
    pub damaged: Damaged,
    pub quiet: bool,
    pub stop_timeout: std::time::Duration,
    pub force_unlock: bool,
    pub lock_stale: std::time::Duration,
    /// Test hook (hidden flag): a pause before each chunk reaches the model.
    pub debug_chunk_delay: std::time::Duration,
    /// Bench hook (hidden flag): no model, made-up vectors.
    pub debug_noop_model: bool,
}

impl EmbedConfig {
    /// `note` reports what resolving a Hub id does (downloads).
    pub fn from_args(args: EmbedArgs, note: &mut dyn FnMut(&str)) -> Result<Self> {
        if let Some(url) = args.model.to_str().filter(|m| m.contains("://")) {
            bail!(
                "--model {url}: a model is read from a local folder (its weights are read in full at start-up); copy it to local disk first, e.g. `aws s3 cp --recursive {url} /tmp/model` or `gcloud storage cp -r {url} /tmp/model`, and pass --model /tmp/model"
            );
        }
        let env = |k: &str| std::env::var(k).ok();
        let model_source = crate::model::source::resolve(&args.model, args.revision.as_deref(), &env, note)?;
        let model = ModelFiles::locate(&model_source.dir)?;
        let model_config = ModelConfig::load(&model)?;
        let requested = Requested {
            pooling: args.pooling.map(|p| match p {
                PoolingArg::Cls => PoolingMode::Cls,
                PoolingArg::Mean => PoolingMode::Mean,
                PoolingArg::Max => PoolingMode::Max,
                PoolingArg::Last => PoolingMode::LastToken,
                PoolingArg::WeightedMean => PoolingMode::WeightedMean,
            }),
            normalize: match (args.normalize, args.no_normalize) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            max_tokens: args.max_tokens,
            prompt: args.prompt.clone(),
            prompt_name: args.prompt_name.clone(),
            dimensions: args.dimensions,
        };
        let vectors = VectorOptions::resolve(&requested, &model, &model_config)?;
        let max_tokens = vectors.max_tokens;
        if args.batch_tokens == Some(0) {
            bail!("--batch-tokens must be at least 1");
        }
        let identity =
            crate::identity::resolve(args.worker_id, args.num_workers, &|k| std::env::var(k).ok())?;
        let partition = Partition::new(identity.worker_id, identity.num_workers, args.stride_block)
            .map_err(anyhow::Error::msg)?;
        let template = match &args.text_template {
            Some(t) => Template::parse(t)?,
            None => Template::column(&args.text_column),
        };
        if args.text_template.is_none() && args.id_column.as_deref() == Some(args.text_column.as_str()) {
            bail!("--id-column and --text-column name the same column \"{}\"", args.text_column);
        }
        let chunking = match args.chunk_tokens {
            None => None,
            Some(0) => bail!("--chunk-tokens must be at least 1"),
            Some(n) if n > model_config.max_tokens_limit() => bail!(
                "--chunk-tokens {n} is more than the model accepts ({}, from {}); a chunk must fit the model as a text does",
                model_config.max_tokens_limit(),
                model.config.display()
            ),
            Some(n) if args.max_tokens.is_some_and(|m| n > m) => bail!(
                "--chunk-tokens {n} is more than --max-tokens {}; drop --max-tokens (chunks are never cut) or choose --chunk-tokens of at most it",
                args.max_tokens.unwrap_or_default()
            ),
            Some(n) if n > max_tokens => bail!(
                "--chunk-tokens {n} is more than the {max_tokens} tokens this model's texts are cut to (sentence-transformers' max_seq_length, or the 8192 cap); choose --chunk-tokens of at most {max_tokens}, or raise --max-tokens"
            ),
            Some(n) => Some(Chunking {
                settings: ChunkSettings {
                    tokens: n,
                    overlap: args.chunk_overlap.unwrap_or(0),
                    max_chunks: match args.max_chunks {
                        Some(0) => bail!("--max-chunks must be at least 1"),
                        k => k,
                    },
                },
                pool: match args.chunk_pool {
                    None => ChunkPool::Rows,
                    Some(ChunkPoolArg::Mean) => ChunkPool::Mean,
                },
            }),
        };
        if !(args.stop_timeout.is_finite() && args.stop_timeout >= 0.0) {
            bail!("--stop-timeout must be a number of seconds, 0 or more");
        }
        if let Some(spec) = &args.debug_faults {
            crate::faults::install(spec)?;
        }
        let inputs: Vec<Location> =
            args.inputs.iter().map(|p| Location::from_arg(p)).collect::<Result<_>>()?;
        let output = Location::from_arg(&args.output)?;
        let reuse: Vec<Location> = args.reuse.iter().map(|p| Location::from_arg(p)).collect::<Result<_>>()?;
        for previous in &reuse {
            if previous.same_as(&output) {
                bail!("--reuse {} is this run's --output; reuse an earlier run's output", previous.display());
            }
        }
        if args.rows_per_part == 0 {
            bail!("--rows-per-part must be at least 1");
        }
        let attention = match args.attention {
            AttentionArg::Auto => model_config.default_attention(),
            _ if model_config.architecture == Architecture::Static => {
                bail!("--attention: a static-embedding model has no attention (leave --attention at auto)")
            }
            AttentionArg::Causal if model_config.architecture.is_encoder() => bail!(
                "--attention causal: {} is a bidirectional encoder (leave --attention at auto)",
                model_config.architecture.as_str()
            ),
            AttentionArg::Causal => Attention::Causal,
            AttentionArg::Bidirectional => Attention::Bidirectional,
        };
        let dtype = match args.dtype {
            DtypeArg::Auto => DtypeChoice::Auto,
            DtypeArg::F32 => DtypeChoice::F32,
            DtypeArg::Bf16 => DtypeChoice::Bf16,
            DtypeArg::F16 => DtypeChoice::F16,
        };
        Ok(EmbedConfig {
            inputs,
            model,
            model_config,
            model_source,
            output,
            partition,
            identity_source: identity.source,
            template,
            id_column: args.id_column,
            chunking,
            reuse,
            output_dtype: match args.output_dtype {
                OutputDtypeArg::F32 => OutputDtype::F32,
                OutputDtypeArg::F16 => OutputDtype::F16,
            },
            restart: args.restart,
            checkpoint_every: std::time::Duration::from_secs(args.checkpoint_every),
            attention,
            max_tokens,
            prompt: vectors.prompt.clone(),
            normalize: vectors.normalize,
            vectors,
            device: args.device,
            dtype,
            batch_tokens: args.batch_tokens,
            cuda_lib_dir: args.cuda_lib_dir,
            rows_per_part: args.rows_per_part,
            damaged: match args.skip_damaged {
                // The warning is printed with --quiet too: rows are lost to it.
                true => Damaged::Skip { quiet: false },
                false => Damaged::Fail,
            },
            quiet: args.quiet,
            stop_timeout: std::time::Duration::from_secs_f64(args.stop_timeout),
            force_unlock: args.force_unlock,
            lock_stale: std::time::Duration::from_secs(args.lock_stale),
            debug_chunk_delay: std::time::Duration::from_millis(args.debug_chunk_delay_ms),
            debug_noop_model: args.debug_noop_model,
        })
    }

    /// This worker's folder: `OUTPUT/worker-{id:05}-of-{N:05}`.
    pub fn worker_dir(&self) -> Location {
        self.output
            .join(&crate::worker_folder::folder_name(self.partition.worker_id, self.partition.num_workers))
    }
}
