//! Input Parquet files: finding them, checking their schema from the footer, and streaming the
//! rows a worker owns — only the text template's columns (and the id column), skipping row groups
//! and pages it does not own — in chunks tagged with global row numbers, each row's text built
//! from its columns (template.rs).
//!
//! Rows are numbered over all input files taken in sorted path order (local paths, then URLs);
//! that number is the `row` column of the output. Files may be local or in a bucket (see
//! storage/): the reading itself is storage/parquet.rs.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, Result};
use arrow::datatypes::DataType;

use crate::storage::parquet::ParquetFile;
use crate::storage::Location;
use crate::template::Template;
use columns::ColumnRef;

mod columns;
mod damage;
mod discover;
mod rows;

pub use damage::{Changed, Damaged, Undecodable};
pub use discover::{discover, Discovered};
pub use rows::{read_rows, Chunk, Chunks};

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
    /// The type ids are read as: the id column's type in every file (`id_types::common`).
    id_type: Option<DataType>,
    template: Arc<Template>,
}

impl InputFile {
    /// The file's rows as global row numbers.
    pub fn global_rows(&self) -> Range<u64> {
        self.first_row..self.first_row + self.rows
    }
}

/// Whether a column of this type can be read as text: strings, and the binary columns older
/// writers (Hive, Impala, Spark before 1.5's `binaryAsString`) store strings in without the
/// UTF-8 annotation; a value there that is not UTF-8 is that row's failure.
fn is_text(t: &DataType) -> bool {
    match t {
        // A column all of whose values are null, as pandas writes a shard with no texts.
        DataType::Null => true,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Dictionary(_, value) => is_text(value),
        _ => false,
    }
}

/// Whether a template can write a column of this type into its text, as Arrow's cast to a
/// string writes it: numbers (decimals too), booleans, dates, times and timestamps.
fn is_formattable(t: &DataType) -> bool {
    let scalar = match t {
        DataType::Dictionary(_, value) => return is_formattable(value),
        DataType::Boolean | DataType::Date32 | DataType::Date64 => true,
        DataType::Timestamp(..) | DataType::Time32(_) | DataType::Time64(_) => true,
        t => t.is_numeric(),
    };
    scalar && arrow::compute::can_cast_types(t, &DataType::Utf8)
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
/// columns (and a column `id_column` whose types across files read as one, `id_types::common`). Nothing but footers is read.
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
            let t = field.data_type();
            // A template may name numbers, dates and the like beside its text ("{title} ({year})");
            // one bare column must hold the text itself.
            let (usable, kinds) = match template.single_column() {
                Some(_) => (is_text(t), "a string or binary type"),
                None => {
                    (is_text(t) || is_formattable(t), "a string, binary, number, boolean, date or time type")
                }
            };
            if !usable {
                bail!(
                    "column \"{column}\" of {} has type {t}, not {kinds} ({pick}); its columns are: {}",
                    path.display(),
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
                id_type = match id_type {
                    None => Some((field.data_type().clone(), path.clone())),
                    Some((t, first)) => match crate::id_types::common(&t, field.data_type()) {
                        Some(common) => Some((common, first)),
                        None => bail!(
                            "column \"{id}\" has type {} in {} but {} in {}; --id-column needs one type (or integers of different widths, or strings of different layouts)",
                            t,
                            first.display(),
                            field.data_type(),
                            path.display()
                        ),
                    },
                };
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
            id_type: None,
            template: template.clone(),
        });
        first_row += rows;
    }
    let id_type = id_type.map(|(t, _)| t);
    for file in &mut files {
        file.id_type = id_type.clone();
    }
    Ok(Inputs { files, id_type })
}
