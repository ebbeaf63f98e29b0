//! One `embed` run of one worker, as wiring: check every input and the device, describe the run,
//! take the worker folder, load the model, then stream the owned rows through the four stages
//! of stages.rs joined by bounded channels:
//!
//! ```text
//! read thread ──chunks──▶ tokenize thread ──packed batches──▶ model (this thread) ──vectors──▶ write thread
//! ```
//!
//! The queues hold a few chunks each, so memory stays bounded whatever the input size, and the
//! model never waits on I/O or tokenization while the queue ahead of it is full.

use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::config::EmbedConfig;
use crate::embed::{Embedder, EmbedderOptions};
use crate::heartbeat::{Heartbeat, Live};
use crate::input::{self, Chunk, Inputs};
use crate::lock::LockOptions;
use crate::model::{Architecture, AttentionImpl};
use crate::output::ShardWriter;
use crate::progress::{Progress, WorkerProgress};
use crate::run_spec::{InputSpec, RowSpec, RunSpec, VectorSpec};
use crate::shutdown::StopFlag;
use crate::stages::{self, ModelStats, ReadPlan, WritePlan};
use crate::summary::Summary;
use crate::sync::dedup::Dedup;
use crate::sync::reuse;
use crate::tokenize::TextTokenizer;
use crate::worker_folder::{LostFolder, WorkerFolder};

/// Rows read and tokenized together: the window sorted by length before packing, and the
/// granularity of checkpoints.
const CHUNK_ROWS: usize = 4096;
/// On the CPU attention is packed (padding costs nothing) and a row takes far longer, so a
/// smaller window keeps checkpoints frequent.
const CPU_CHUNK_ROWS: usize = 1024;
/// `--batch-tokens` on the CPU when not given (packed attention: the budget only bounds memory).
const DEFAULT_CPU_BATCH_TOKENS: usize = 8192;
/// The same for the (small) encoders: a batch whose activations stay in the caches ran
/// all-MiniLM-L6-v2 ~10% faster than 8192 (BENCHMARKS.md).
const DEFAULT_CPU_ENCODER_BATCH_TOKENS: usize = 2048;
/// A static-embedding model's batches: a table lookup per token, nothing quadratic.
const DEFAULT_STATIC_BATCH_TOKENS: usize = 65536;
/// Chunks waiting between two stages.
const QUEUE: usize = 2;

/// Runs one worker to the end, or until `stop` is set (then `Summary::interrupted`).
pub fn run(cfg: &EmbedConfig, stop: &StopFlag) -> Result<Summary> {
    let started = Instant::now();
    let mut note = |line: &str| {
        if !cfg.quiet {
            eprintln!("batch-embed: {line}");
        }
    };
    // Check every input, the model files and the device before anything is written.
    let inputs = input::find(&cfg.inputs, &cfg.template, cfg.id_column.as_deref(), &mut note)?;
    let plan: Vec<(usize, Vec<Range<u64>>)> = inputs
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (i, cfg.partition.owned_ranges(f.global_rows())))
        .filter(|(_, r)| !r.is_empty())
        .collect();
    let rows_owned: u64 = plan.iter().flat_map(|(_, r)| r).map(|r| r.end - r.start).sum();
    let device = crate::device::open(cfg.device, cfg.cuda_lib_dir.as_deref(), &mut note)?;
    let dtype = crate::device::dtype(cfg.dtype, &device);
    let device_name = crate::device::describe(&device);
    // NOTE: the bench hook's made-up vectors say so in the description, so that they are never
    // reused for, or resumed as, real ones.
    let model_hash = match cfg.debug_noop_model {
        true => format!("noop:{}", cfg.model.content_hash()?),
        false => cfg.model.content_hash()?,
    };
    let spec = describe_run(cfg, &inputs, &model_hash, dtype);
    let options = embedder_options(cfg);
    let tokenizer_started = Instant::now();
    let tokenizer = Embedder::tokenizer(&cfg.model, &options)?;
    // NOTE: the tokenizer is loaded here, before the folder opens, but it is part of loading the
    // model: the summary's load time counts it, and its rates are of the work after it.
    let tokenizer_load = tokenizer_started.elapsed();
    // Earlier outputs to reuse are checked before anything is written, too.
    let sources = match cfg.reuse.is_empty() {
        true => None,
        false => Some(reuse::find_sources(&cfg.reuse, &spec, &mut note)?),
    };

    let worker = format!("worker {} of {}", cfg.partition.worker_id, cfg.partition.num_workers);
    let lock = LockOptions::new(cfg.force_unlock, cfg.lock_stale);
    let (folder, mut ckpt) = WorkerFolder::open(
        &cfg.worker_dir(),
        &spec,
        cfg.partition.worker_id,
        rows_owned,
        cfg.restart,
        &lock,
        &mut note,
    )?;
    let rows_before = ckpt.rows_done;
    let lock_info = folder.lock().info();
    let progress_file = WorkerProgress {
        worker_id: cfg.partition.worker_id,
        num_workers: cfg.partition.num_workers,
        host: lock_info.host.clone(),
        pid: lock_info.pid,
        state: if ckpt.complete { "done" } else { "running" }.to_string(),
        rows_owned,
        rows_done: ckpt.rows_done,
        rows_committed: ckpt.rows_done,
        rows_failed: ckpt.rows_failed,
        rows_reused: ckpt.rows_reused,
        rows_embedded: ckpt.rows_embedded,
        rows_deduplicated: ckpt.rows_deduplicated,
        chunks: ckpt.chunks,
        started_at: lock_info.started_at,
        updated_at: lock_info.started_at,
        history: WorkerProgress::load(folder.dir()).map(|p| p.history).unwrap_or_default(),
        ..WorkerProgress::default()
    };
    if ckpt.complete {
        let _ = folder.save_progress(&progress_file);
        let totals = Summary::totals(worker, &ckpt, rows_before, device_name);
        return Ok(Summary { already_complete: true, elapsed: started.elapsed(), ..totals });
    }
    let heartbeat = Heartbeat::start(folder.clone(), progress_file, stop.clone());

    let result = (|| {
        let load_started = Instant::now();
        let embedder = load_embedder(cfg, tokenizer, options, &device, dtype)?;
        let load = load_started.elapsed() + tokenizer_load;
        let mut progress = Progress::new(rows_owned, rows_before, cfg.quiet, worker.clone());
        progress.note(&start_line(cfg, &inputs, &embedder, rows_before, &device_name, dtype, load));
        let metadata = ckpt.spec.part_metadata(cfg.partition.worker_id, &cfg.model.dir.display().to_string());
        let chunk_rows = ckpt.spec.vectors.chunk_rows();
        let shards = |ckpt: &crate::checkpoint::Checkpoint| {
            let writer = ShardWriter::new(
                folder.dir(),
                embedder.dim(),
                cfg.output_dtype,
                inputs.id_type.clone(),
                ckpt.next_part(),
                metadata.clone(),
            )
            .with_tag(folder.part_tag());
            if chunk_rows {
                writer.with_chunk_columns()
            } else {
                writer
            }
        };

        // With --reuse: copy what earlier outputs have, then embed the rest.
        let mut plan = plan;
        let reused_before = ckpt.rows_reused;
        let mut reuse_stats = ReuseStats::default();
        let mut note = |n: &str| progress.note(&format!("batch-embed: {n}"));
        let reuse_started = Instant::now();
        if let Some(reuse) = plan_reuse(cfg, &inputs, &plan, sources, &folder, &mut ckpt, &mut note)? {
            let copy = WritePlan {
                shards: shards(&ckpt),
                folder: &folder,
                ckpt: &mut ckpt,
                every: cfg.checkpoint_every,
                rows_per_part: cfg.rows_per_part,
            };
            let copied = crate::sync::copy::copy(
                &reuse,
                &cfg.partition,
                inputs.id_type.as_ref(),
                copy,
                heartbeat.live(),
                &mut progress,
                stop,
                cfg.debug_chunk_delay,
            )?;
            reuse_stats = ReuseStats {
                input_bytes: reuse.input_bytes,
                source_bytes: reuse.source_bytes + copied.source_bytes,
                time: reuse_started.elapsed(),
            };
            if !copied.finished {
                progress.finish();
                return Ok(Summary {
                    interrupted: true,
                    reused_this_run: ckpt.rows_reused - reused_before,
                    elapsed: started.elapsed(),
                    load,
                    ..Summary::totals(worker.clone(), &ckpt, rows_before, device_name.clone())
                });
            }
            plan = reuse.remaining(&plan);
        }

        let chunk_rows = if device.is_cpu() { CPU_CHUNK_ROWS } else { CHUNK_ROWS }.min(cfg.rows_per_part);
        let read_plan = ReadPlan {
            files: &inputs.files,
            ranges: stages::skip_owned(plan, ckpt.embed_done),
            chunk_rows,
            damaged: cfg.damaged,
            quiet: cfg.quiet,
        };
        let write_plan = WritePlan {
            shards: shards(&ckpt),
            folder: &folder,
            ckpt: &mut ckpt,
            every: cfg.checkpoint_every,
            rows_per_part: cfg.rows_per_part,
        };
        let monitor =
            Monitor { stop, live: heartbeat.live(), progress: &mut progress, delay: cfg.debug_chunk_delay };
        let stats = stream(read_plan, &embedder, write_plan, monitor);
        progress.finish();
        if let Some(why) = folder.lost() {
            return Err(LostFolder(why).into());
        }
        let stats = stats?;
        let summary = Summary {
            rows_this_run: stats.rows,
            tokens: stats.tokens,
            padded_tokens: stats.padded_tokens,
            elapsed: started.elapsed(),
            load,
            oom_splits: stats.oom_splits,
            oom_retries: stats.oom_retries,
            deduplicated: stats.deduplicated,
            chunks_this_run: stats.chunks,
            reused_this_run: ckpt.rows_reused - reused_before,
            input_bytes: stats.input_bytes + reuse_stats.input_bytes,
            reuse_source_bytes: reuse_stats.source_bytes,
            reuse_time: reuse_stats.time,
            interrupted: stats.interrupted,
            ..Summary::totals(worker.clone(), &ckpt, rows_before, device_name.clone())
        };
        if !stats.interrupted && ckpt.rows_done != ckpt.rows_owned {
            bail!(
                "internal error: {} of {} owned rows accounted for; the checkpoint in {} is kept, run again to resume",
                ckpt.rows_done,
                ckpt.rows_owned,
                folder.dir().display()
            );
        }
        Ok(summary)
    })();
    match &result {
        Ok(summary) if summary.interrupted => {
            let live = heartbeat.live();
            live.rows_done.store(live.rows_committed.load(Relaxed), Relaxed);
            heartbeat.finish("interrupted", None)
        }
        Ok(_) => heartbeat.finish("done", None),
        Err(e) => heartbeat.finish("failed", Some(format!("{e:#}"))),
    }
    result
}

/// What the `--reuse` phase (plan and copy) read and how long it took.
#[derive(Default)]
struct ReuseStats {
    input_bytes: u64,
    source_bytes: u64,
    time: std::time::Duration,
}

/// With `--reuse`: the sources (listed and recorded at the first start, checked unchanged on a
/// resume) and which owned rows take their vectors from them. `None` without `--reuse`.
fn plan_reuse(
    cfg: &EmbedConfig,
    inputs: &Inputs,
    plan: &[(usize, Vec<Range<u64>>)],
    sources: Option<reuse::ReuseState>,
    folder: &WorkerFolder,
    ckpt: &mut crate::checkpoint::Checkpoint,
    note: &mut dyn FnMut(&str),
) -> Result<Option<reuse::ReusePlan>> {
    let dir = folder.dir().display();
    let given: Vec<String> = cfg.reuse.iter().map(|p| p.canonical()).collect();
    match &ckpt.reuse {
        None if given.is_empty() => return Ok(None),
        Some(state) if given.is_empty() => bail!(
            "{dir} was started with --reuse {}; pass the same to resume it, or --restart to start over",
            state.outputs.join(" --reuse ")
        ),
        Some(state) if state.outputs != given => bail!(
            "{dir} was started with --reuse {}, not --reuse {}; pass the same to resume it, or --restart to start over",
            state.outputs.join(" --reuse "),
            given.join(" --reuse ")
        ),
        Some(state) => reuse::check_sources(state)?,
        None if ckpt.rows_done > 0 => bail!(
            "{dir} was started without --reuse and has {} rows committed; resume it without --reuse, or --restart to start over with it",
            ckpt.rows_done
        ),
        None => {
            ckpt.reuse = Some(sources.context("internal error: --reuse sources not listed")?);
            folder.save_checkpoint(ckpt)?;
        }
    }
    let state = ckpt.reuse.as_ref().expect("set above");
    let started = Instant::now();
    let by_id = ckpt.spec.rows.id_column.is_some();
    // Damaged rows are not reused; the read stage meets them again, and warns then.
    let damaged = cfg.damaged.quietly();
    let reuse =
        reuse::plan(&inputs.files, plan, damaged, by_id, ckpt.spec.vectors.chunk_rows(), &state.sources)?;
    note(&format!(
        "--reuse: {} of {} owned rows have a vector in {} parts of {} previous output(s) (matched by {} in {:.1}s); {} to embed",
        reuse.count,
        ckpt.rows_owned,
        state.sources.len(),
        state.outputs.len(),
        if by_id { "id and text hash" } else { "text hash" },
        started.elapsed().as_secs_f64(),
        ckpt.rows_owned - reuse.count
    ));
    Ok(Some(reuse))
}

/// The run's description: what decides its rows and its vectors.
fn describe_run(cfg: &EmbedConfig, inputs: &Inputs, model_hash: &str, dtype: candle_core::DType) -> RunSpec {
    let chunking = cfg.chunking.as_ref();
    let inputs = inputs
        .files
        .iter()
        .map(|f| InputSpec {
            path: f.path.canonical(),
            bytes: f.bytes,
            rows: f.rows,
            footer: f.footer_hash.clone(),
        })
        .collect();
    RunSpec {
        rows: RowSpec {
            inputs,
            text_template: cfg.template.source().to_string(),
            text_columns: cfg.template.columns().to_vec(),
            id_column: cfg.id_column.clone(),
            num_workers: cfg.partition.num_workers,
            stride_block: cfg.partition.block,
        },
        vectors: VectorSpec {
            model_hash: model_hash.to_string(),
            model_id: cfg.model_source.hub.as_ref().map(|h| h.id.clone()),
            revision: cfg.model_source.hub.as_ref().map(|h| h.commit.clone()),
            model_type: cfg.model_config.architecture.as_str().to_string(),
            dim: cfg.vectors.dim,
            pooling: cfg
                .vectors
                .pooling
                .describe(!cfg.vectors.pooling.include_prompt && cfg.prompt.is_some()),
            dense: cfg.model.dense_modules().iter().map(|d| d.describe()).collect(),
            dimensions: cfg.vectors.dimensions,
            normalized: cfg.normalize,
            attention: cfg.attention.as_str().to_string(),
            max_tokens: cfg.max_tokens,
            prompt: cfg.prompt.clone(),
            prompt_name: cfg.vectors.prompt_name.clone(),
            dtype: format!("{dtype:?}").to_lowercase(),
            output_dtype: cfg.output_dtype.as_str().to_string(),
            chunk_tokens: chunking.map(|c| c.settings.tokens),
            chunk_overlap: chunking.map(|c| c.settings.overlap),
            max_chunks: chunking.and_then(|c| c.settings.max_chunks),
            chunk_pool: chunking.and_then(|c| c.pool.name()).map(String::from),
        },
    }
}

/// What the embedder is told: the batch budget is the flag, else 8192 tokens on the CPU (else
/// chosen from the GPU memory left after the weights, in [`load_embedder`]).
fn embedder_options(cfg: &EmbedConfig) -> EmbedderOptions {
    EmbedderOptions {
        attention: cfg.attention,
        max_tokens: cfg.max_tokens,
        prompt: cfg.prompt.clone(),
        normalize: cfg.normalize,
        pooling: cfg.vectors.pooling.clone(),
        dimensions: cfg.vectors.dimensions,
        batch_tokens: cfg.batch_tokens.unwrap_or(match cfg.model_config.architecture {
            // NOTE: a table lookup costs nothing per token beside the tokenizer: big batches.
            Architecture::Static => DEFAULT_STATIC_BATCH_TOKENS,
            a if a.is_encoder() => DEFAULT_CPU_ENCODER_BATCH_TOKENS,
            _ => DEFAULT_CPU_BATCH_TOKENS,
        }),
        attention_impl: AttentionImpl::Auto,
        chunking: cfg.chunking,
    }
}

/// The model (or the bench hook's stand-in) with its batch budget.
fn load_embedder(
    cfg: &EmbedConfig,
    tokenizer: TextTokenizer,
    options: EmbedderOptions,
    device: &candle_core::Device,
    dtype: candle_core::DType,
) -> Result<Embedder> {
    let mut embedder = if cfg.debug_noop_model {
        Embedder::without_model(&cfg.model, &cfg.model_config, tokenizer, options, device)?
    } else {
        Embedder::load_with_tokenizer(&cfg.model, &cfg.model_config, tokenizer, options, dtype, device)?
    };
    crate::faults::hog(device)?;
    if let (None, Some((free, _))) = (cfg.batch_tokens, crate::device::memory_info(device)) {
        embedder.set_budget(crate::memory::auto_budget(free, &cfg.model_config, dtype.size_in_bytes()));
    }
    if dtype == candle_core::DType::F16 && !cfg.debug_noop_model {
        check_f16(&embedder)?;
    }
    Ok(embedder)
}

/// Texts for the f16 check: prose, digits, code and a repeated phrase (long runs of the same
/// tokens are where decoders grow their largest activations).
const F16_PROBE: &[&str] = &[
    "The book arrived on time and the story kept me reading well past midnight; the ending was a surprise.",
    "Order #40213 shipped 2024-03-07: 3 items, total $129.99, tracking 1Z999AA10123456784.",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{v:?}\"); }",
    "great great great great great great great great great great great great great great great great",
];

/// `--dtype f16` keeps values below 65504, and some checkpoints (large Qwen-family decoders in
/// particular) grow activations past that, which turns vectors into NaN. A model that overflows
/// on the probe texts is refused before any vector is written; otherwise every vector is still
/// checked, and one with NaN or infinite values is recorded as a failure, never written.
fn check_f16(embedder: &Embedder) -> Result<()> {
    let texts: Vec<Option<&str>> = F16_PROBE.iter().map(|t| Some(*t)).collect();
    let probe = embedder.embed(&texts)?;
    if (0..probe.len()).any(|i| probe.vector(i) == Err(crate::embed::Failure::NonFinite)) {
        bail!(
            "this model overflows f16: its vectors for plain probe texts hold NaN or infinite values (f16 stops at 65504); use --dtype bf16 (f32's range at f16's size, the default on CUDA) or f32"
        );
    }
    Ok(())
}

fn start_line(
    cfg: &EmbedConfig,
    inputs: &Inputs,
    embedder: &Embedder,
    rows_before: u64,
    device_name: &str,
    dtype: candle_core::DType,
    load: std::time::Duration,
) -> String {
    let budget = embedder.budget();
    let model = match &cfg.model_source.hub {
        Some(hub) => {
            format!("{}@{} ({})", hub.id, &hub.commit[..hub.commit.len().min(12)], cfg.model.dir.display())
        }
        None => cfg.model.dir.display().to_string(),
    };
    format!(
        "batch-embed: worker {} of {} ({}): {} of {} rows in {} files{}; model {} ({}, {}, dim {}; {}) on {} {:?}, loaded in {:.1}s; batches of up to {} tokens{}",
        cfg.partition.worker_id,
        cfg.partition.num_workers,
        cfg.identity_source,
        inputs.files.iter().map(|f| cfg.partition.owned_count(f.global_rows())).sum::<u64>(),
        inputs.total_rows(),
        inputs.files.len(),
        if rows_before > 0 { format!(", resuming after {rows_before} done") } else { String::new() },
        model,
        cfg.model_config.architecture.as_str(),
        match cfg.model_config.architecture {
            Architecture::Static => "no attention, no special tokens".to_string(),
            _ => format!("{} attention", cfg.attention.as_str()),
        },
        embedder.dim(),
        cfg.vectors.sources.join(", "),
        device_name,
        dtype,
        load.as_secs_f64(),
        budget.tokens,
        match (cfg.batch_tokens, budget.attention) {
            (None, Some((heads, elements))) if !device_name.starts_with("cpu") => {
                format!(" and {elements} attention elements ({heads} heads × texts × longest²), chosen from free GPU memory")
            }
            _ => String::new(),
        }
    )
}

/// What watches the model stage: the stop flag, the counters for the heartbeat, the progress
/// display, and the test hook's delay.
struct Monitor<'a> {
    stop: &'a StopFlag,
    live: &'a Live,
    progress: &'a mut Progress,
    delay: std::time::Duration,
}

/// The four stages joined by bounded channels; the model stage runs on this thread.
fn stream(
    read: ReadPlan<'_>,
    embedder: &Embedder,
    write: WritePlan<'_>,
    monitor: Monitor<'_>,
) -> Result<ModelStats> {
    let Monitor { stop, live, progress, delay } = monitor;
    let dedup = &Dedup::new(embedder.dim(), crate::sync::dedup::DEFAULT_CACHE_BYTES);
    std::thread::scope(|s| {
        let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(QUEUE);
        let (prep_tx, prep_rx) = sync_channel(QUEUE);
        let (done_tx, done_rx) = sync_channel(QUEUE);
        let reader = s.spawn(move || stages::read(read, chunk_tx));
        let tokenizer = s.spawn(move || stages::tokenize(embedder, dedup, chunk_rx, prep_tx));
        let writer = s.spawn(move || stages::write(done_rx, write, live));
        let model = stages::model(embedder, dedup, prep_rx, done_tx, stop, progress, live, delay);
        let read = reader.join().expect("reader thread panicked");
        let input_bytes = read.as_ref().map_or(0, |b| *b);
        let tokenize = tokenizer.join().expect("tokenizer thread panicked");
        let write = writer.join().expect("writer thread panicked");
        // A lost folder explains whatever else failed; otherwise the first stage to fail is the
        // cause, and later ones only saw their input end.
        if write.as_ref().is_err_and(|e| e.downcast_ref::<LostFolder>().is_some()) {
            return Err(write.unwrap_err());
        }
        read?;
        tokenize?;
        let stats = model?;
        write?;
        Ok(ModelStats { input_bytes, ..stats })
    })
}
