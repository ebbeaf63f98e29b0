//! batch-embed: Parquet text in, embedding vectors out, with gte-Qwen2-class models run locally
//! by candle on CUDA or CPU.
//!
//! The modules follow the data flow of a run (see ARCHITECTURE.md):
//! `input` → `tokenize` → `batch` → `model` → `pool` → `output`, run as the `stages` and wired
//! by `pipeline`; `worker_folder` commits them, `run_spec` describes the run; `storage` is where
//! their bytes live (a disk or a bucket).

pub mod atomic;
pub mod batch;
pub mod checkpoint;
pub mod chunked;
pub mod cli;
pub mod config;
pub mod device;
pub mod embed;
pub mod error_text;
pub mod failures;
pub mod faults;
pub mod fleet;
pub mod heartbeat;
pub mod id_types;
pub mod identity;
pub mod input;
pub mod launcher;
pub mod lock;
pub mod memory;
pub mod model;
pub mod output;
pub mod partition;
pub mod pipeline;
pub mod pool;
pub mod progress;
pub mod run_spec;
pub mod shutdown;
pub mod stages;
pub mod status;
pub mod status_page;
pub mod storage;
pub mod summary;
pub mod sync;
pub mod template;
pub mod tokenize;
pub mod vector_options;
pub mod verify;
pub mod worker_folder;
