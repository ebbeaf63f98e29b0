//! The stride rule: which rows a worker owns. Pure functions, no I/O.
//!
//! Rows (numbered over all input files in sorted path order) are grouped into blocks of `block`
//! consecutive rows; block `b` belongs to worker `b mod num_workers`. Workers never talk to each
//! other: each computes its share from the footers alone.

use std::ops::Range;

/// Default rows per block.
///
/// NOTE: K = 1 (the reference recipe's row stride) makes every worker decode every page of every
/// file to keep 1/N of it. Blocks of 4096 rows span whole Parquet pages (a 1 MB page holds a few
/// thousand review-length texts), so a worker skips the pages it does not own, while 29.5M rows
/// over 400 workers still give each worker ~18 blocks (imbalance ≤ one block, ~5%).
pub const DEFAULT_BLOCK: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub worker_id: u64,
    pub num_workers: u64,
    pub block: u64,
}

impl Partition {
    pub fn new(worker_id: u64, num_workers: u64, block: u64) -> Result<Self, String> {
        if num_workers == 0 {
            return Err("--num-workers must be at least 1".into());
        }
        if worker_id >= num_workers {
            return Err(format!(
                "--worker-id {worker_id} is out of range for --num-workers {num_workers} (ids are 0..{})",
                num_workers - 1
            ));
        }
        if block == 0 {
            return Err("--stride-block must be at least 1".into());
        }
        Ok(Partition { worker_id, num_workers, block })
    }

    /// The single worker of an unpartitioned run.
    pub fn whole() -> Self {
        Partition { worker_id: 0, num_workers: 1, block: DEFAULT_BLOCK }
    }

    pub fn owns(&self, row: u64) -> bool {
        (row / self.block) % self.num_workers == self.worker_id
    }

    /// The owned rows within `rows`, as maximal ranges in increasing order.
    pub fn owned_ranges(&self, rows: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if rows.start >= rows.end {
            return out;
        }
        if self.num_workers == 1 {
            out.push(rows);
            return out;
        }
        // Our block in the round (N consecutive blocks) that holds rows.start; when it lies
        // before rows.start it simply yields nothing below.
        let first_block = rows.start / self.block;
        let mut b = first_block - (first_block % self.num_workers) + self.worker_id;
        let mut start = b * self.block;
        while start < rows.end {
            let end = (start + self.block).min(rows.end);
            let s = start.max(rows.start);
            if s < end {
                out.push(s..end);
            }
            b += self.num_workers;
            start = b * self.block;
        }
        out
    }

    /// Position of an owned `row` among this worker's owned rows (counted from row 0).
    pub fn owned_index(&self, row: u64) -> u64 {
        let b = row / self.block;
        (b / self.num_workers) * self.block + row % self.block
    }

    /// The owned row at position `index` (the inverse of [`Partition::owned_index`]).
    pub fn owned_row(&self, index: u64) -> u64 {
        let (round, offset) = (index / self.block, index % self.block);
        (round * self.num_workers + self.worker_id) * self.block + offset
    }

    /// How many rows of `rows` this worker owns.
    pub fn owned_count(&self, rows: Range<u64>) -> u64 {
        self.owned_ranges(rows).iter().map(|r| r.end - r.start).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_index_counts_owned_rows_in_order() {
        for (n, k) in [(1, 4), (3, 1), (3, 5), (4, 4096)] {
            for w in 0..n {
                let p = Partition::new(w, n, k).unwrap();
                let owned: Vec<u64> = p.owned_ranges(0..50_000).into_iter().flatten().collect();
                for (i, &row) in owned.iter().enumerate() {
                    assert_eq!(p.owned_index(row), i as u64, "n={n} k={k} w={w} row={row}");
                    assert_eq!(p.owned_row(i as u64), row);
                }
            }
        }
    }

    fn brute(p: &Partition, rows: Range<u64>) -> Vec<u64> {
        rows.filter(|&r| p.owns(r)).collect()
    }

    #[test]
    fn ranges_match_the_rule_row_by_row() {
        for n in 1..5 {
            for k in [1, 2, 3, 7] {
                for w in 0..n {
                    let p = Partition::new(w, n, k).unwrap();
                    for (s, e) in [(0, 50), (3, 4), (5, 5), (13, 41), (29, 100)] {
                        let got: Vec<u64> = p.owned_ranges(s..e).into_iter().flatten().collect();
                        assert_eq!(got, brute(&p, s..e), "w={w} n={n} k={k} rows={s}..{e}");
                        assert_eq!(p.owned_count(s..e), got.len() as u64);
                    }
                }
            }
        }
    }

    #[test]
    fn every_row_has_exactly_one_owner() {
        let (n, k) = (3, 4);
        for row in 0..200 {
            let owners = (0..n).filter(|&w| Partition::new(w, n, k).unwrap().owns(row)).count();
            assert_eq!(owners, 1);
        }
    }

    #[test]
    fn k1_is_the_plain_row_stride() {
        let p = Partition::new(1, 3, 1).unwrap();
        assert_eq!(brute(&p, 0..10), vec![1, 4, 7]);
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(Partition::new(3, 3, 1).unwrap_err().contains("out of range"));
        assert!(Partition::new(0, 0, 1).is_err());
        assert!(Partition::new(0, 1, 0).is_err());
    }
}
