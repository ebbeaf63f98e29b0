//! While a worker runs, a background thread keeps its lock fresh and rewrites `progress.json`
//! every few seconds, so other processes (a replacement worker, `batch-embed status`) can tell
//! a live worker from a dead one. The pipeline only bumps counters in [`Live`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::lock::{unix_now, Beat, HEARTBEAT};
use crate::progress::WorkerProgress;
use crate::shutdown::StopFlag;
use crate::worker_folder::WorkerFolder;

/// Counters the pipeline updates as it goes.
#[derive(Default)]
pub struct Live {
    /// Owned rows finished (all runs), committed or not.
    pub rows_done: AtomicU64,
    pub rows_committed: AtomicU64,
    pub rows_failed: AtomicU64,
    /// Rows copied from previous outputs (all runs).
    pub rows_reused: AtomicU64,
    /// Committed rows embedded, and of them repeats (all runs).
    pub rows_embedded: AtomicU64,
    pub rows_deduplicated: AtomicU64,
    /// Tokens this run.
    pub tokens: AtomicU64,
    /// Chunk rows committed (one row per chunk runs, all runs).
    pub chunks: AtomicU64,
}

pub struct Heartbeat {
    live: Arc<Live>,
    stop_tx: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    folder: Arc<WorkerFolder>,
    progress: WorkerProgress,
    /// The last beat has been written: no more refreshes or progress.
    finished: bool,
}

impl Live {
    /// Takes the committed counters from the checkpoint just saved.
    pub fn committed(&self, ckpt: &crate::checkpoint::Checkpoint) {
        self.rows_committed.store(ckpt.rows_done, Ordering::Relaxed);
        self.rows_failed.store(ckpt.rows_failed, Ordering::Relaxed);
        self.rows_embedded.store(ckpt.rows_embedded, Ordering::Relaxed);
        self.rows_deduplicated.store(ckpt.rows_deduplicated, Ordering::Relaxed);
        self.chunks.store(ckpt.chunks, Ordering::Relaxed);
    }
}

impl Heartbeat {
    /// Starts beating for `folder` (held by this process).
    pub fn start(folder: Arc<WorkerFolder>, progress: WorkerProgress, stop: StopFlag) -> Self {
        let live = Arc::new(Live::default());
        live.rows_done.store(progress.rows_done, Ordering::Relaxed);
        live.rows_committed.store(progress.rows_committed, Ordering::Relaxed);
        live.rows_failed.store(progress.rows_failed, Ordering::Relaxed);
        live.rows_reused.store(progress.rows_reused, Ordering::Relaxed);
        live.rows_embedded.store(progress.rows_embedded, Ordering::Relaxed);
        live.rows_deduplicated.store(progress.rows_deduplicated, Ordering::Relaxed);
        live.chunks.store(progress.chunks, Ordering::Relaxed);
        let shared = Arc::new(Mutex::new(Shared { folder, progress, finished: false }));
        shared.lock().expect("heartbeat state").update(&live);
        let (stop_tx, stop_rx) = channel::<()>();
        let thread = {
            let (live, shared) = (live.clone(), shared.clone());
            std::thread::Builder::new()
                .name("heartbeat".into())
                .spawn(move || {
                    let started = Instant::now();
                    let mut failures = 0u32;
                    // (elapsed, rows, tokens) over the last minute, for rates.
                    let mut window: VecDeque<(Duration, u64, u64)> = VecDeque::new();
                    // The starting point, so the first beat already has a rate.
                    window.push_back((Duration::ZERO, live.rows_done.load(Ordering::Relaxed), 0));
                    loop {
                        match stop_rx.recv_timeout(HEARTBEAT) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        let mut s = shared.lock().expect("heartbeat state");
                        if s.finished {
                            return;
                        }
                        match s.folder.lock().refresh() {
                            Ok(Beat::Alive) => failures = 0,
                            Ok(Beat::Lost(why)) => {
                                s.folder.mark_lost(why);
                                stop.set();
                                return;
                            }
                            Err(e) => {
                                // A flaky mount: say so now and then, and try again.
                                if failures.is_multiple_of(12) {
                                    eprintln!("batch-embed: warning: heartbeat: {e:#}; retrying");
                                }
                                failures += 1;
                            }
                        }
                        let now = started.elapsed();
                        let rows = live.rows_done.load(Ordering::Relaxed);
                        let tokens = live.tokens.load(Ordering::Relaxed);
                        window.push_back((now, rows, tokens));
                        while window.len() > 2 && now - window[0].0 > Duration::from_secs(60) {
                            window.pop_front();
                        }
                        let (t0, r0, k0) = window[0];
                        let secs = (now - t0).as_secs_f64();
                        if secs > 0.0 {
                            s.progress.rows_per_s = (rows - r0) as f64 / secs;
                            s.progress.tokens_per_s = (tokens - k0) as f64 / secs;
                        }
                        s.update(&live);
                    }
                })
                .expect("start the heartbeat thread")
        };
        Heartbeat { live, stop_tx: Some(stop_tx), thread: Some(thread), shared }
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Stops beating and writes the final state (`done`, `interrupted` or `failed` with
    /// `error`); the lock goes with the folder.
    pub fn finish(mut self, state: &str, error: Option<String>) {
        self.stop_thread();
        let mut s = self.shared.lock().expect("heartbeat state");
        s.progress.state = state.to_string();
        s.progress.error = error;
        if state != "running" {
            s.progress.rows_per_s = 0.0;
            s.progress.tokens_per_s = 0.0;
        }
        s.update(&self.live);
        s.finished = true;
    }

    fn stop_thread(&mut self) {
        self.stop_tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

impl Shared {
    /// Copies the counters into the progress file and writes it (best effort: progress is a
    /// view, the checkpoint is the record).
    fn update(&mut self, live: &Live) {
        let p = &mut self.progress;
        p.rows_done = live.rows_done.load(Ordering::Relaxed);
        p.rows_committed = live.rows_committed.load(Ordering::Relaxed);
        p.rows_failed = live.rows_failed.load(Ordering::Relaxed);
        p.rows_reused = live.rows_reused.load(Ordering::Relaxed);
        p.rows_embedded = live.rows_embedded.load(Ordering::Relaxed);
        p.rows_deduplicated = live.rows_deduplicated.load(Ordering::Relaxed);
        p.chunks = live.chunks.load(Ordering::Relaxed);
        p.updated_at = unix_now();
        if p.history.last().is_none_or(|&(t, _)| p.updated_at >= t + 30) {
            p.history.push((p.updated_at, p.rows_done));
            if p.history.len() > 480 {
                p.history.remove(0);
            }
        }
        let _ = self.folder.save_progress(p);
    }
}
