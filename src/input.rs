//! Input Parquet files: finding them, checking their schema from the footer, and streaming the
//! rows a worker owns — only the text template's columns (and the id column), skipping row groups
//! and pages it does not own — in chunks tagged with global row numbers, each row's text built
//! from its columns (template.rs).
//!
//! Rows are numbered over all input files taken in sorted path order (local paths, then URLs);
//! that number is the `row` column of the output. Files may be local or in a bucket (see
//! storage/): the reading itself is storage/parquet.rs.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::datatypes::DataType;

use crate::storage::parquet::ParquetFile;
use crate::storage::Location;
use crate::template::Template;
use columns::ColumnRef;

mod columns;
mod rows;

pub use rows::{read_rows, Changed, Chunk, Chunks, Damaged, Undecodable};

/// One input file, checked.
#[derive(Clone, Debug)]
pub struct InputFile {
    pub path: Location,
    pub bytes: u64,
    pub rows: u64,
    /// The content identity of the file: a hash of its Parquet footer (`run_spec::footer_hash`).
    pub footer_hash: String,
    /// Global number of this file's first row.
    pub first_row: u64,
    /// Rows in each row group, in order.
    row_groups: Vec<u64>,
    /// The template's columns, in the template's order.
    text_columns: Vec<ColumnRef>,
    id_column: Option<ColumnRef>,
    template: Arc<Template>,
}

impl InputFile {
    /// The file's rows as global row numbers.
    pub fn global_rows(&self) -> Range<u64> {
        self.first_row..self.first_row + self.rows
    }
}

/// Expands files and folders (searched recursively for `*.parquet`) into a sorted, de-duplicated
/// list of files. On a bucket, a URL naming an object is that file, and any other URL is a
/// prefix listed recursively.
pub fn discover(inputs: &[Location]) -> Result<Vec<Location>> {
    let mut files = Vec::new();
    for input in inputs {
        match input {
            Location::Local(input) if input.is_dir() => {
                let mut found = Vec::new();
                walk(input, &mut found).with_context(|| format!("cannot list {}", input.display()))?;
                files.extend(found.into_iter().map(Location::Local));
            }
            Location::Local(input) if input.is_file() => files.push(Location::Local(input.clone())),
            Location::Local(input) => bail!("input {} does not exist", input.display()),
            Location::Object(o) => {
                if !o.is_root() && o.size()?.is_some() {
                    files.push(input.clone());
                } else {
                    let found = o.list_all()?;
                    files.extend(
                        found
                            .into_iter()
                            .filter(|(f, _)| f.name().ends_with(".parquet"))
                            .map(|(f, _)| Location::Object(f)),
                    );
                }
            }
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        bail!("no Parquet files (*.parquet) found in {}", names.join(", "));
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether a column of this type can be read as text: strings, and the binary columns older
/// writers (Hive, Impala, Spark before 1.5's `binaryAsString`) store strings in without the
/// UTF-8 annotation; a value there that is not UTF-8 is that row's failure.
fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Dictionary(_, value) => is_text(value),
        _ => false,
    }
}

/// The files with their columns checked, and the type of the id column if one was asked for.
pub struct Inputs {
    pub files: Vec<InputFile>,
    pub id_type: Option<DataType>,
}

impl Inputs {
    pub fn total_rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// Reads every file's footer and checks that it has a string column for each of `template`'s
/// columns (and a column `id_column` of one type across files). Nothing but footers is read.
pub fn open_all(paths: &[Location], template: &Template, id_column: Option<&str>) -> Result<Inputs> {
    let template = Arc::new(template.clone());
    let mut files = Vec::with_capacity(paths.len());
    let mut first_row = 0;
    let mut id_type: Option<(DataType, Location)> = None;
    for (path, parquet) in paths.iter().zip(ParquetFile::open_all(paths)?) {
        let schema = parquet.schema();
        let names = || columns::names(schema);
        let find = |name: &str| columns::find(schema, parquet.parquet_schema(), name);
        let mut text_columns = Vec::with_capacity(template.columns().len());
        for column in template.columns() {
            let pick = match template.single_column() {
                Some(_) => "pick one with --text-column".to_string(),
                None => format!("named in --text-template {:?}", template.source()),
            };
            let Some(found) = find(column) else {
                bail!("{} has no column \"{column}\" ({pick}); its columns are: {}", path.display(), names());
            };
            let field = &found.field;
            if !is_text(field.data_type()) {
                bail!(
                    "column \"{column}\" of {} has type {}, not a string or binary type ({pick}); its columns are: {}",
                    path.display(),
                    field.data_type(),
                    names()
                );
            }
            text_columns.push(found);
        }
        let id_column = match id_column {
            None => None,
            Some(id) => {
                let Some(found) = find(id) else {
                    bail!(
                        "{} has no column \"{id}\" (--id-column); its columns are: {}",
                        path.display(),
                        names()
                    );
                };
                let field = &found.field;
                match &id_type {
                    Some((t, first)) if t != field.data_type() => bail!(
                        "column \"{id}\" has type {} in {} but {} in {}; --id-column needs one type",
                        t,
                        first.display(),
                        field.data_type(),
                        path.display()
                    ),
                    Some(_) => {}
                    None => id_type = Some((field.data_type().clone(), path.clone())),
                }
                Some(found)
            }
        };
        let meta = parquet.metadata();
        let rows = meta.file_metadata().num_rows() as u64;
        let row_groups = meta.row_groups().iter().map(|g| g.num_rows() as u64).collect();
        files.push(InputFile {
            path: path.clone(),
            bytes: parquet.size,
            rows,
            footer_hash: parquet.footer_hash.clone(),
            first_row,
            row_groups,
            text_columns,
            id_column,
            template: template.clone(),
        });
        first_row += rows;
    }
    Ok(Inputs { files, id_type: id_type.map(|(t, _)| t) })
}
