//! Input Parquet files: finding them, checking their schema from the footer, and streaming the
//! rows a worker owns — only the text template's columns (and the id column), skipping row groups
//! and pages it does not own — in chunks tagged with global row numbers, each row's text built
//! from its columns (template.rs).
//!
//! Rows are numbered over all input files taken in sorted path order (local paths, then URLs);
//! that number is the `row` column of the output. Files may be local or in a bucket (see
//! storage/): the reading itself is storage/parquet.rs.

use std::collections::BTreeMap;
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
    /// The template's columns, in the template's order (`None`: not in this file, read as null).
    text_columns: Vec<Option<ColumnRef>>,
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

/// `column` of `template` in one file, checked: `None` where a template of several columns names
/// a column this file lacks (an older shard written before the column was added: its rows read
/// it as null). A bare text column must be there.
fn text_column(
    template: &Template,
    column: &str,
    path: &Location,
    parquet: &ParquetFile,
) -> Result<Option<ColumnRef>> {
    let schema = parquet.schema();
    let names = || columns::names(schema);
    let pick = match template.single_column() {
        Some(_) => "pick one with --text-column".to_string(),
        None => format!("named in --text-template {:?}", template.source()),
    };
    let Some(found) = columns::find(schema, parquet.parquet_schema(), column) else {
        if template.single_column().is_none() {
            return Ok(None);
        }
        bail!("{} has no column \"{column}\" ({pick}); its columns are: {}", path.display(), names());
    };
    let t = found.field.data_type();
    // A template may name numbers, dates and the like beside its text ("{title} ({year})"); one
    // bare column must hold the text itself.
    let (usable, kinds) = match template.single_column() {
        Some(_) => (is_text(t), "a string or binary type"),
        None => (is_text(t) || is_formattable(t), "a string, binary, number, boolean, date or time type"),
    };
    if !usable {
        bail!(
            "column \"{column}\" of {} has type {t}, not {kinds} ({pick}); its columns are: {}",
            path.display(),
            names()
        );
    }
    Ok(Some(found))
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
    /// The template's columns that some files lack (read as null there), with those files.
    pub missing_columns: BTreeMap<String, Vec<String>>,
}

impl Inputs {
    pub fn total_rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// Finds the input files and checks them ([`discover`], then [`open_all`]), saying through `note`
/// what was left out, what is a Delta Lake table and which template columns some files lack.
pub fn find(
    inputs: &[Location],
    template: &Template,
    id_column: Option<&str>,
    note: &mut dyn FnMut(&str),
) -> Result<Inputs> {
    let found = discover(inputs)?;
    if let Some(first) = found.hidden.first() {
        let n = found.hidden.len();
        note(&format!(
            "left out {n} hidden Parquet file{} (a name or folder starting with '.' or '_'), e.g. {first}",
            if n == 1 { "" } else { "s" }
        ));
    }
    for table in &found.delta_tables {
        note(&format!(
            "{table} is a Delta Lake table (it has a _delta_log): every Parquet file in it is read, also those of versions its log has since removed (until a VACUUM); to embed one version, name its files"
        ));
    }
    let inputs = open_all(&found.files, template, id_column)?;
    for (column, lacking) in &inputs.missing_columns {
        note(&format!(
            "column \"{column}\" of --text-template is not in {} of the {} input files (e.g. {}): read as null there",
            lacking.len(),
            inputs.files.len(),
            lacking[0]
        ));
    }
    Ok(inputs)
}

/// Reads every file's footer and checks that it has a string column for each of `template`'s
/// columns, or for a template of several columns at least one of them, each named column in some
/// file; and a column `id_column` whose types across files read as one (`id_types::common`).
/// Nothing but footers is read.
pub fn open_all(paths: &[Location], template: &Template, id_column: Option<&str>) -> Result<Inputs> {
    let template = Arc::new(template.clone());
    let mut files = Vec::with_capacity(paths.len());
    let mut first_row = 0;
    let mut id_type: Option<(DataType, Location)> = None;
    let mut missing_columns: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut first_columns = None;
    for (path, parquet) in paths.iter().zip(ParquetFile::open_all(paths)?) {
        let schema = parquet.schema();
        let names = || columns::names(schema);
        first_columns.get_or_insert_with(names);
        let find = |name: &str| columns::find(schema, parquet.parquet_schema(), name);
        let text_columns: Vec<Option<ColumnRef>> = template
            .columns()
            .iter()
            .map(|c| text_column(&template, c, path, &parquet))
            .collect::<Result<_>>()?;
        if text_columns.iter().all(Option::is_none) {
            bail!(
                "{} has none of the columns --text-template {:?} names; its columns are: {}",
                path.display(),
                template.source(),
                names()
            );
        }
        for (column, found) in template.columns().iter().zip(&text_columns) {
            if found.is_none() {
                missing_columns.entry(column.clone()).or_default().push(path.display().to_string());
            }
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
    if let Some((column, _)) = missing_columns.iter().find(|(_, in_files)| in_files.len() == files.len()) {
        bail!(
            "no input file has the column \"{column}\" that --text-template {:?} names; the first file's columns are: {}",
            template.source(),
            first_columns.unwrap_or_default()
        );
    }
    let id_type = id_type.map(|(t, _)| t);
    for file in &mut files {
        file.id_type = id_type.clone();
    }
    Ok(Inputs { files, id_type, missing_columns })
}
