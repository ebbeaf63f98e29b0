//! What can go wrong with an input file after its footer was checked, and what a run does
//! about it: bytes that do not decode ([`Undecodable`], or skipped with `--skip-damaged`:
//! [`Damaged`]), and a file replaced while the run goes on ([`Changed`]).

use std::ops::Range;

/// What to do with a row group whose bytes arrive but do not decode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Damaged {
    /// Stop with an [`Undecodable`] error.
    #[default]
    Fail,
    /// Yield its owned rows as failed rows
    /// ([`Failure::Damaged`](crate::failures::Failure::Damaged)), say so on stderr unless `quiet`,
    /// and read on after it (`--skip-damaged`).
    Skip { quiet: bool },
}

impl Damaged {
    /// The same choice without the warning (for a pass that reads the rows again later).
    pub fn quietly(self) -> Self {
        match self {
            Damaged::Skip { .. } => Damaged::Skip { quiet: true },
            Damaged::Fail => Damaged::Fail,
        }
    }
}

/// Rows whose bytes were read but do not decode: the file is damaged (or is not what its footer
/// says), and reading it again would give the same, so it is not retried.
#[derive(Debug)]
pub struct Undecodable {
    pub(super) path: String,
    /// The row group that does not decode, counted from 0, and its rows in the file.
    pub(super) group: usize,
    pub(super) groups: usize,
    pub(super) rows: Range<u64>,
    pub(super) cause: String,
}

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: row group {} of {} (rows {}..{} of the file, both counted from 0) does not decode \
             ({}); the file is damaged or uses what this reader does not support, and reading it \
             again gives the same",
            self.path, self.group, self.groups, self.rows.start, self.rows.end, self.cause
        )
    }
}

impl std::error::Error for Undecodable {}

/// An input file whose footer is not the one its rows were numbered from: it was replaced or
/// rewritten while the run was going on. Not retried: the run would read other rows than it
/// planned, under the same row numbers.
#[derive(Debug)]
pub struct Changed {
    pub(super) path: String,
}

impl std::fmt::Display for Changed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} changed while this run was going on (its Parquet footer is not the one its rows were \
             numbered from), so its rows may no longer be the ones planned; put the old file back \
             and run the same command, or embed the new inputs into another --output (--reuse keeps \
             the vectors of unchanged texts) or start this one over with --restart",
            self.path
        )
    }
}

impl std::error::Error for Changed {}
