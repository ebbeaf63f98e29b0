//! The validated run configuration, built once from the flags. Everything that can be checked
//! without reading input rows or weights is checked here, so bad flags fail before any work.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::cli::{AttentionArg, DtypeArg, EmbedArgs, OutputDtypeArg};
use crate::device::{DeviceChoice, DtypeChoice};
use crate::model::{Attention, ModelConfig, ModelFiles};
use crate::output::OutputDtype;
use crate::partition::Partition;
use crate::storage::Location;

/// Longest default text: long enough for reviews and most documents, short enough that one
/// text's attention fits in memory on any device.
pub const DEFAULT_MAX_TOKENS_CAP: usize = 8192;

#[derive(Clone, Debug)]
pub struct EmbedConfig {
    /// Local paths and URLs (storage/).
    pub inputs: Vec<Location>,
    pub model: ModelFiles,
    pub model_config: ModelConfig,
    pub output: Location,
    pub partition: Partition,
    /// Where the worker id and count came from (flags, Kubernetes, Slurm, SkyPilot).
    pub identity_source: String,
    pub text_column: String,
    pub id_column: Option<String>,
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
    pub quiet: bool,
    pub stop_timeout: std::time::Duration,
    pub force_unlock: bool,
    pub lock_stale: std::time::Duration,
    /// Test hook (hidden flag): a pause before each chunk reaches the model.
    pub debug_chunk_delay: std::time::Duration,
    /// Bench hook (hidden flag): no model, zero vectors.
    pub debug_noop_model: bool,
}

impl EmbedConfig {
    pub fn from_args(args: EmbedArgs) -> Result<Self> {
        if let Some(url) = args.model.to_str().filter(|m| m.contains("://")) {
            bail!(
                "--model {url}: a model is read from a local folder (its weights are read in full at start-up); copy it to local disk first, e.g. `aws s3 cp --recursive {url} /tmp/model` or `gcloud storage cp -r {url} /tmp/model`, and pass --model /tmp/model"
            );
        }
        let model = ModelFiles::locate(&args.model)?;
        let model_config = ModelConfig::from_file(&model.config)?;
        let limit = model_config.max_tokens_limit();
        let max_tokens = match args.max_tokens {
            None => limit.min(DEFAULT_MAX_TOKENS_CAP),
            Some(0) => bail!("--max-tokens must be at least 1"),
            Some(n) if n > limit => bail!(
                "--max-tokens {n} is more than the model accepts ({limit}, from {})",
                model.config.display()
            ),
            Some(n) => n,
        };
        if args.batch_tokens == Some(0) {
            bail!("--batch-tokens must be at least 1");
        }
        let identity =
            crate::identity::resolve(args.worker_id, args.num_workers, &|k| std::env::var(k).ok())?;
        let partition = Partition::new(identity.worker_id, identity.num_workers, args.stride_block)
            .map_err(anyhow::Error::msg)?;
        if args.id_column.as_deref() == Some(args.text_column.as_str()) {
            bail!("--id-column and --text-column name the same column \"{}\"", args.text_column);
        }
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
            output,
            partition,
            identity_source: identity.source,
            text_column: args.text_column,
            id_column: args.id_column,
            reuse,
            output_dtype: match args.output_dtype {
                OutputDtypeArg::F32 => OutputDtype::F32,
                OutputDtypeArg::F16 => OutputDtype::F16,
            },
            restart: args.restart,
            checkpoint_every: std::time::Duration::from_secs(args.checkpoint_every),
            attention,
            max_tokens,
            prompt: args.prompt.filter(|p| !p.is_empty()),
            normalize: !args.no_normalize,
            device: args.device,
            dtype,
            batch_tokens: args.batch_tokens,
            cuda_lib_dir: args.cuda_lib_dir,
            rows_per_part: args.rows_per_part,
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
