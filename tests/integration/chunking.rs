//! Long documents: `--chunk-tokens` / `--chunk-overlap` / `--max-chunks`, one row per chunk or
//! `--chunk-pool mean`, through the binary, with the fixture model's tokenizer (the `tokenizers`
//! library itself) as the judge of token counts. Templates are in templates.rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Float32Type, Int64Type, UInt32Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use predicates::str::contains;

use crate::util::*;

/// One output row of a chunked run.
#[derive(Clone, Debug)]
pub struct ChunkRow {
    pub row: u64,
    pub id: Option<i64>,
    pub chunk: u32,
    pub start: u32,
    pub end: u32,
    pub hash: Vec<u8>,
    pub vector: Vec<f32>,
}

/// Every chunk row of an output (all workers), by (row, chunk).
pub fn read_chunks(out: &Path) -> Vec<ChunkRow> {
    let mut rows = Vec::new();
    for part in part_files(out) {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&part).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let b = batch.unwrap();
            let u32s = |name: &str| b.column_by_name(name).unwrap().as_primitive::<UInt32Type>().clone();
            let (chunk, start, end) = (u32s("chunk"), u32s("chunk_start"), u32s("chunk_end"));
            let row = b.column_by_name("row").unwrap().as_primitive::<UInt64Type>().clone();
            let id = b.column_by_name("id").map(|c| c.as_primitive::<Int64Type>().clone());
            let hash = b.column_by_name("text_hash").unwrap().as_fixed_size_binary().clone();
            let emb = b.column_by_name("embedding").unwrap().as_fixed_size_list().clone();
            for i in 0..b.num_rows() {
                rows.push(ChunkRow {
                    row: row.value(i),
                    id: id.as_ref().map(|c| c.value(i)),
                    chunk: chunk.value(i),
                    start: start.value(i),
                    end: end.value(i),
                    hash: hash.value(i).to_vec(),
                    vector: emb.value(i).as_primitive::<Float32Type>().values().to_vec(),
                });
            }
        }
    }
    rows.sort_by_key(|c| (c.row, c.chunk));
    rows
}

/// The fixture model's own tokenizer (the `tokenizers` library), without truncation.
fn model_tokenizer() -> tokenizers::Tokenizer {
    let mut t = tokenizers::Tokenizer::from_file(fixture("qwen2-gqa").join("tokenizer.json")).unwrap();
    t.with_truncation(None).unwrap();
    t
}

/// Tokens the model sees for `text` embedded as a row (special tokens included).
fn model_tokens(t: &tokenizers::Tokenizer, text: &str) -> usize {
    t.encode(text, true).unwrap().len()
}

/// Texts of the kinds chunking must handle, long and short, with ids 1.. (and a null, an empty).
pub fn documents() -> Vec<(i64, Option<String>)> {
    let sentence = |i: usize| {
        let words =
            ["the", "book", "was", "slow", "but", "the", "ending", "café", "loved", "pages", "plot", "wow"];
        let n = 4 + i % 9;
        let mut s: String =
            (0..n).map(|j| words[(i * 3 + j * 5) % words.len()]).collect::<Vec<_>>().join(" ");
        if let Some(c) = s.get_mut(0..1) {
            c.make_ascii_uppercase();
        }
        s + [". ", "! ", "? ", "; "][i % 4]
    };
    let mut docs: Vec<Option<String>> = vec![
        Some("Short review.".into()),
        None,
        Some(String::new()),
        Some("x".repeat(600)),                                  // one giant word
        Some("pages ".repeat(90)),                              // no sentence ends
        Some("我喜欢这本书。情节很慢，但结局很好！".repeat(8)), // CJK without spaces
        Some("😀👍🏽 ❤️ 🎉🎉 ".repeat(25)),                       // emoji
        Some("A line\nanother line\n\nA paragraph.\n\n".repeat(12)),
    ];
    for d in 0..24 {
        let mut text = String::new();
        for p in 0..(1 + d % 4) {
            for s in 0..(2 + (d + p) % 5) {
                text.push_str(&sentence(d * 31 + p * 7 + s));
            }
            text.push_str("\n\n");
        }
        docs.push(Some(text));
    }
    docs.into_iter().enumerate().map(|(i, t)| (i as i64 + 1, t)).collect()
}

/// Writes `(id, text)` rows as `files` Parquet files into `dir`.
pub fn write_docs(dir: &Path, docs: &[(i64, Option<String>)], files: usize) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (f, part) in docs.chunks(docs.len().div_ceil(files)).enumerate() {
        write_parquet(
            &dir.join(format!("docs-{f}.parquet")),
            vec![
                ("id", Arc::new(Int64Array::from_iter_values(part.iter().map(|d| d.0))) as ArrayRef),
                ("text", Arc::new(StringArray::from_iter(part.iter().map(|d| d.1.as_deref()))) as ArrayRef),
            ],
        );
    }
    dir.to_path_buf()
}

fn slice(text: &str, c: &ChunkRow) -> String {
    text[c.start as usize..c.end as usize].to_string()
}

/// By id: the input texts.
fn texts_by_id(docs: &[(i64, Option<String>)]) -> HashMap<i64, String> {
    docs.iter().filter_map(|(id, t)| t.clone().map(|t| (*id, t))).collect()
}

#[test]
fn every_chunk_fits_the_text_is_covered_and_a_chunk_is_its_text_embedded_alone() {
    let dir = tempdir();
    let docs = documents();
    let input = write_docs(&dir.path().join("in"), &docs, 2);
    let (n, m) = (24usize, 4usize);
    let out = dir.path().join("chunked");
    let args = ["--id-column", "id", "--chunk-tokens", "24", "--chunk-overlap", "4"];
    batch_embed()
        .args(["embed", "--model"])
        .arg(fixture("qwen2-gqa"))
        .arg("--output")
        .arg(&out)
        .args(args)
        .arg(&input)
        .assert()
        .success()
        .stderr(contains("chunks:     "));
    batch_embed().arg("verify").arg(&out).assert().success().stdout(contains("chunk rows"));
    let chunks = read_chunks(&out);
    let texts = texts_by_id(&docs);
    let t = model_tokenizer();
    let mut by_row: HashMap<u64, Vec<&ChunkRow>> = HashMap::new();
    for c in &chunks {
        by_row.entry(c.row).or_default().push(c);
    }
    let mut split = 0;
    for (row, cs) in &by_row {
        let text = &texts[&cs[0].id.unwrap()];
        assert_eq!(cs.iter().map(|c| c.chunk).collect::<Vec<_>>(), (0..cs.len() as u32).collect::<Vec<_>>());
        for c in cs {
            let tokens = model_tokens(&t, &slice(text, c));
            assert!(tokens <= n, "row {row} chunk {}: {tokens} tokens", c.chunk);
            assert_eq!(c.hash, cs[0].hash, "text_hash is the whole row's");
        }
        if model_tokens(&t, text) <= n {
            assert_eq!(
                (cs.len(), cs[0].start, cs[0].end),
                (1, 0, text.len() as u32),
                "row {row} fits: one chunk"
            );
            continue;
        }
        split += 1;
        // No byte of non-whitespace text outside every chunk.
        let mut covered = vec![false; text.len()];
        for c in cs {
            covered[c.start as usize..c.end as usize].iter_mut().for_each(|b| *b = true);
        }
        for (at, ch) in text.char_indices() {
            assert!(ch.is_whitespace() || covered[at], "row {row}: byte {at} {ch:?} is in no chunk");
        }
        // Consecutive chunks share about M tokens.
        for w in cs.windows(2) {
            let shared = t.encode(&text[w[1].start as usize..w[0].end as usize], false).unwrap().len();
            assert!(
                shared.abs_diff(m) <= 2,
                "row {row}: chunks {} and {} share {shared} tokens",
                w[0].chunk,
                w[1].chunk
            );
        }
    }
    assert!(split >= 25, "only {split} rows were split");

    // Each chunk's vector is its text embedded alone as a row.
    let pieces: Vec<(i64, Option<String>)> =
        chunks.iter().enumerate().map(|(i, c)| (i as i64, Some(slice(&texts[&c.id.unwrap()], c)))).collect();
    let alone_in = write_docs(&dir.path().join("pieces"), &pieces, 1);
    let alone = dir.path().join("alone");
    embed_cmd(&alone_in, &alone, &["--id-column", "id"]).assert().success();
    let alone = read_vectors(&alone);
    assert_eq!(alone.len(), chunks.len());
    for (c, (_, v)) in chunks.iter().zip(&alone) {
        let d = max_abs_diff(&c.vector, v);
        assert!(d < 1e-5, "row {} chunk {} differs from its text alone by {d}", c.row, c.chunk);
    }

    // Rows that fit have an unchunked run's vector; the same rows fail.
    let plain = dir.path().join("plain");
    embed_cmd(&input, &plain, &["--id-column", "id"]).assert().success();
    let plain: HashMap<u64, Vec<f32>> = read_vectors(&plain).into_iter().collect();
    for (row, cs) in &by_row {
        if cs.len() == 1 {
            assert!(max_abs_diff(&cs[0].vector, &plain[row]) < 1e-5, "row {row}");
        }
    }
    let failures = read_failures(&out);
    assert_eq!(failures, read_failures(&dir.path().join("plain")));
    assert_eq!(failures.len(), 1, "the null text");
}

#[test]
fn chunk_pool_mean_is_the_token_weighted_mean_of_the_chunk_vectors() {
    let dir = tempdir();
    let docs = documents();
    let input = write_docs(&dir.path().join("in"), &docs, 1);
    let chunk = ["--id-column", "id", "--chunk-tokens", "32", "--chunk-overlap", "6"];
    let raw = dir.path().join("raw");
    embed_cmd(&input, &raw, &[&chunk[..], &["--no-normalize"]].concat()).assert().success();
    let mean = dir.path().join("mean");
    embed_cmd(&input, &mean, &[&chunk[..], &["--chunk-pool", "mean"]].concat()).assert().success();
    let mean_raw = dir.path().join("mean-raw");
    embed_cmd(&input, &mean_raw, &[&chunk[..], &["--chunk-pool", "mean", "--no-normalize"]].concat())
        .assert()
        .success();
    batch_embed().arg("verify").arg(&mean).assert().success();

    // Expected: each row's raw chunk vectors weighted by their tokens (what the model saw).
    let texts = texts_by_id(&docs);
    let t = model_tokenizer();
    let mut expected: HashMap<u64, (Vec<f64>, f64)> = HashMap::new();
    let mut multi = 0;
    for c in read_chunks(&raw) {
        let w = model_tokens(&t, &slice(&texts[&c.id.unwrap()], &c)) as f64;
        let e = expected.entry(c.row).or_insert_with(|| (vec![0.0; c.vector.len()], 0.0));
        e.0.iter_mut().zip(&c.vector).for_each(|(a, &v)| *a += w * v as f64);
        e.1 += w;
        multi += (c.chunk == 1) as usize;
    }
    assert!(multi > 20);
    let (got, got_raw) = (read_vectors(&mean), read_vectors(&mean_raw));
    assert_eq!(got.len(), expected.len(), "one row per input row");
    for ((row, v), (_, r)) in got.iter().zip(&got_raw) {
        let (sum, total) = &expected[row];
        let want_raw: Vec<f32> = sum.iter().map(|x| (x / total) as f32).collect();
        let norm = want_raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        let want: Vec<f32> = want_raw.iter().map(|x| x / norm).collect();
        assert!(max_abs_diff(r, &want_raw) < 1e-5, "row {row} raw mean");
        assert!(max_abs_diff(v, &want) < 1e-5, "row {row} normalised mean");
    }
    // The parts are a plain run's: no chunk columns.
    let schema =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&part_files(&mean)[0]).unwrap())
            .unwrap()
            .schema()
            .clone();
    assert!(schema.field_with_name("chunk").is_err());
    assert_eq!(schema.metadata()["batch_embed.chunk_pool"], "mean");
}

#[test]
fn max_chunks_keeps_the_first_chunks_and_counts_the_row_as_truncated() {
    let dir = tempdir();
    let docs = documents();
    let input = write_docs(&dir.path().join("in"), &docs, 1);
    let all = dir.path().join("all");
    embed_cmd(&input, &all, &["--chunk-tokens", "24"]).assert().success();
    let capped = dir.path().join("capped");
    embed_cmd(&input, &capped, &["--chunk-tokens", "24", "--max-chunks", "2"]).assert().success();
    let (all, capped_rows) = (read_chunks(&all), read_chunks(&capped));
    let kept: Vec<&ChunkRow> = all.iter().filter(|c| c.chunk < 2).collect();
    assert_eq!(kept.len(), capped_rows.len());
    for (a, b) in kept.iter().zip(&capped_rows) {
        assert_eq!((a.row, a.chunk, a.start, a.end), (b.row, b.chunk, b.start, b.end));
        assert!(max_abs_diff(&a.vector, &b.vector) < 1e-5);
    }
    let cut = all.iter().filter(|c| c.chunk == 2).count() as u64;
    assert!(cut > 10);
    assert_eq!(crate::sync::total(&capped, "texts_truncated"), cut);
}

#[test]
fn repeated_long_texts_get_copies_of_the_first_ones_chunks() {
    let dir = tempdir();
    let long = documents().into_iter().filter_map(|d| d.1).max_by_key(|t| t.len()).unwrap();
    let docs: Vec<(i64, Option<String>)> =
        (0..6).map(|i| (i, Some(if i % 2 == 0 { long.clone() } else { format!("{long} {i}") }))).collect();
    let input = write_docs(&dir.path().join("in"), &docs, 1);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--chunk-tokens", "24", "--chunk-overlap", "3"]).assert().success();
    assert_eq!(crate::sync::total(&out, "rows_deduplicated"), 2);
    let chunks = read_chunks(&out);
    let of = |row: u64| {
        chunks.iter().filter(|c| c.row == row).map(|c| (c.start, c.end, c.vector.clone())).collect::<Vec<_>>()
    };
    assert!(of(0).len() > 3);
    assert_eq!(of(0), of(2));
    assert_eq!(of(0), of(4));
    batch_embed().arg("verify").arg(&out).assert().success();
    let status: serde_json::Value =
        serde_json::from_slice(&batch_embed().args(["status", "--json"]).arg(&out).output().unwrap().stdout)
            .unwrap();
    assert_eq!(status["chunks"], chunks.len() as u64);
    assert_eq!(status["workers"][0]["chunks"], chunks.len() as u64);
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(worker0(&out).join("progress.json")).unwrap()).unwrap();
    assert_eq!(progress["chunks"], chunks.len() as u64);
    assert_eq!(crate::sync::total(&out, "chunks"), chunks.len() as u64);
}

/// Same (row, chunk, range) and vectors.
pub fn assert_same_chunks(a: &[ChunkRow], b: &[ChunkRow]) {
    assert_eq!(a.len(), b.len(), "chunk row counts differ");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.row, x.chunk, x.start, x.end, &x.hash), (y.row, y.chunk, y.start, y.end, &y.hash));
        let d = max_abs_diff(&x.vector, &y.vector);
        assert!(d < 1e-5, "row {} chunk {} differs by {d}", x.row, x.chunk);
    }
}

#[test]
fn three_workers_and_three_devices_give_the_chunks_of_one() {
    let dir = tempdir();
    let docs: Vec<(i64, Option<String>)> =
        documents().into_iter().cycle().take(120).enumerate().map(|(i, d)| (i as i64, d.1)).collect();
    let input = write_docs(&dir.path().join("in"), &docs, 3);
    let chunk = ["--chunk-tokens", "32", "--chunk-overlap", "4", "--stride-block", "7"];
    let one = dir.path().join("one");
    embed_cmd(&input, &one, &chunk).assert().success();
    let three = dir.path().join("three");
    for w in 0..3 {
        embed_cmd(
            &input,
            &three,
            &[&chunk[..], &["--num-workers", "3", "--worker-id", &w.to_string()]].concat(),
        )
        .assert()
        .success();
    }
    assert_same_chunks(&read_chunks(&one), &read_chunks(&three));
    assert_eq!(read_failures(&one), read_failures(&three));
    batch_embed().arg("verify").arg(&three).assert().success();
    let devices = dir.path().join("devices");
    let mut cmd = embed_cmd(&input, &devices, &[&chunk[..], &["--devices", "cpu,cpu,cpu"]].concat());
    crate::fleet::clean_env(&mut cmd).assert().success();
    assert_same_chunks(&read_chunks(&one), &read_chunks(&devices));
    batch_embed().arg("verify").arg(&devices).assert().success();
}

#[test]
fn a_chunked_run_killed_at_random_resumes_to_the_uninterrupted_output() {
    let dir = tempdir();
    let docs: Vec<(i64, Option<String>)> =
        documents().into_iter().cycle().take(320).enumerate().map(|(i, d)| (i as i64, d.1)).collect();
    let input = write_docs(&dir.path().join("in"), &docs, 4);
    let chunk = ["--id-column", "id", "--chunk-tokens", "32", "--chunk-overlap", "4"];
    let clean = dir.path().join("clean");
    embed_cmd(&input, &clean, &chunk).assert().success();
    let out = dir.path().join("out");
    let seed = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    });
    let mut rng = fastrand::Rng::with_seed(seed);
    let slow: Vec<&str> = chunk
        .iter()
        .copied()
        .chain(["--rows-per-part", "16", "--checkpoint-every", "0", "--debug-chunk-delay-ms", "60"])
        .collect();
    let checkpoint = worker0(&out).join("checkpoint.json");
    for _ in 0..5 {
        let mut child = embed_child(&input, &out, &slow).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.u64(0..500)));
        let _ = child.kill();
        child.wait().unwrap();
    }
    assert!(done(&checkpoint) < 320, "seed {seed}: the kills left nothing to do");
    // Then a SIGTERM once it has made progress, then the rest.
    let mut child = embed_child(&input, &out, &slow).stderr(std::process::Stdio::null()).spawn().unwrap();
    let before = done(&checkpoint);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while done(&checkpoint) <= before && child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "seed {seed}: no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let code = wait_exit(&mut child, std::time::Duration::from_secs(20));
    assert!(code == 75 || code == 0, "seed {seed}: exit {code}");
    embed_cmd(&input, &out, &chunk).assert().success();
    assert_same_chunks(&read_chunks(&clean), &read_chunks(&out));
    assert_eq!(read_failures(&clean), read_failures(&out), "seed {seed}");
    assert_eq!(crate::sync::total(&clean, "chunks"), crate::sync::total(&out, "chunks"), "seed {seed}");
    batch_embed().arg("verify").arg(&out).assert().success().stdout(contains("OK: complete and sound"));
}

#[test]
fn verify_finds_a_chunk_missing_from_the_middle_of_a_row() {
    let dir = tempdir();
    let input = write_docs(&dir.path().join("in"), &documents(), 1);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--chunk-tokens", "24"]).assert().success();
    let part = part_files(&out).remove(0);
    let batches: Vec<RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&part).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
    let schema = batches[0].schema();
    let all = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let chunk = all.column_by_name("chunk").unwrap().as_primitive::<UInt32Type>().clone();
    let drop = (0..all.num_rows()).find(|&i| chunk.value(i) == 1).unwrap();
    let kept = arrow::compute::concat_batches(
        &schema,
        &[all.slice(0, drop), all.slice(drop + 1, all.num_rows() - drop - 1)],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&part).unwrap(), schema, None).unwrap();
    w.write(&kept).unwrap();
    w.close().unwrap();
    batch_embed()
        .arg("verify")
        .arg(&out)
        .assert()
        .failure()
        .stdout(contains("chunk rows out of place"))
        .stdout(contains("its parts hold"));
}

#[test]
fn readme_duckdb_query_reads_the_chunks_back_with_their_text() {
    let Some(python) = python_with(&["duckdb", "pyarrow"], "duckdb", "CI_REQUIRE_DUCKDB") else { return };
    let dir = tempdir();
    let docs = documents();
    let input = write_docs(&dir.path().join("reviews"), &docs, 2);
    let out = dir.path().join("out");
    embed_cmd(&input, &out, &["--id-column", "id", "--chunk-tokens", "32"]).assert().success();
    // The query as README has it (between its `-- chunks with their text` markers).
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let sql = readme
        .split("-- chunks with their text")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("README has the duckdb chunk query")
        .trim()
        .replace("'out/", &format!("'{}/", out.display()))
        .replace("'reviews/", &format!("'{}/", input.display()))
        .replace("review_id", "id");
    let script = format!(
        "import duckdb, json\nrows = duckdb.sql({sql:?}).fetchall()\nprint(json.dumps([[r[0], r[1], r[2]] for r in rows]))"
    );
    let o = std::process::Command::new(&python).args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<(i64, u32, String)> = serde_json::from_slice(&o.stdout).unwrap();
    let texts = texts_by_id(&docs);
    let want: Vec<(i64, u32, String)> = read_chunks(&out)
        .iter()
        .map(|c| (c.id.unwrap(), c.chunk, slice(&texts[&c.id.unwrap()], c)))
        .collect();
    let mut got = got;
    got.sort();
    let mut want = want;
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn reuse_copies_every_chunk_of_a_row_and_equals_a_full_embed_also_when_killed() {
    use crate::sync::{base_rows, next_snapshot, total, write_snapshot};
    let dir = tempdir();
    let p = |name: &str| dir.path().join(name);
    // Longer texts than base_rows alone gives, so that rows have several chunks.
    let longer = |rows: Vec<(i64, Option<String>)>| -> Vec<(i64, Option<String>)> {
        rows.into_iter().map(|(id, t)| (id, t.map(|t| format!("{t}. {t}! And {t}?")))).collect()
    };
    let a = longer(base_rows(300));
    let b = next_snapshot(&a, 12, 3);
    let (in_a, in_b) = (write_snapshot(&p("a"), &a, 2), write_snapshot(&p("b"), &b, 3));
    let chunk = ["--chunk-tokens", "16", "--chunk-overlap", "2"];
    for (by, ids) in [("id", &["--id-column", "id"][..]), ("text", &[][..])] {
        let args: Vec<&str> = chunk.iter().chain(ids).copied().collect();
        let out_a = p(&format!("out-a-{by}"));
        embed_cmd(&in_a, &out_a, &args).assert().success();
        let full_b = p(&format!("full-b-{by}"));
        embed_cmd(&in_b, &full_b, &args).assert().success();
        let reuse = out_a.to_string_lossy().to_string();
        let out_b = p(&format!("out-b-{by}"));
        embed_cmd(&in_b, &out_b, &[&args[..], &["--reuse", &reuse]].concat()).assert().success();
        assert_same_chunks(&read_chunks(&full_b), &read_chunks(&out_b));
        batch_embed().arg("verify").arg(&out_b).assert().success();
        assert!(total(&out_b, "rows_reused") > 200, "{by}");
        assert_eq!(total(&out_b, "chunks"), total(&full_b, "chunks"), "{by}");
        // Killed during the copy (small parts, a commit after every piece): the same output.
        let killed = p(&format!("killed-{by}"));
        let slow: Vec<&str> = args
            .iter()
            .copied()
            .chain([
                "--reuse",
                &reuse,
                "--rows-per-part",
                "5",
                "--checkpoint-every",
                "0",
                "--debug-chunk-delay-ms",
                "40",
            ])
            .collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..3 {
            let mut child =
                embed_child(&in_b, &killed, &slow).stderr(std::process::Stdio::null()).spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(rng.u64(100..600)));
            let _ = child.kill();
            child.wait().unwrap();
        }
        embed_cmd(&in_b, &killed, &[&args[..], &["--reuse", &reuse]].concat()).assert().success();
        assert_same_chunks(&read_chunks(&full_b), &read_chunks(&killed));
        batch_embed().arg("verify").arg(&killed).assert().success();
    }
    // Chunked otherwise is another way of making vectors: refused, naming what differs.
    let out = p("other");
    embed_cmd(&in_b, &out, &["--chunk-tokens", "20", "--reuse", &p("out-a-text").to_string_lossy()])
        .assert()
        .failure()
        .stderr(contains("chunk_tokens was 16 and is now 20"));
    embed_cmd(&in_b, &out, &["--reuse", &p("out-a-text").to_string_lossy()])
        .assert()
        .failure()
        .stderr(contains("chunk_tokens was 16 and is now null"));
}
