//! Keeping an output in step with a corpus that changes: every row's text has a content hash
//! (the `text_hash` column), a run can copy the vectors of unchanged texts from earlier outputs
//! instead of embedding them again (`--reuse`, reuse.rs), identical texts within a run are
//! embedded once (dedup.rs), and `batch-embed changes` hands a vector database exactly what to
//! upsert and delete (changes.rs).

pub mod changes;
pub mod copy;
pub mod dedup;
pub mod reuse;

use anyhow::{Context, Result};
use arrow::array::{Array, ArrayRef};
use arrow::row::{RowConverter, SortField};

/// The content hash of a text, as read from the input (before any prompt): XXH3-128 (seed 0)
/// of its UTF-8 bytes. Stored in the `text_hash` column as 16 bytes in XXH128's canonical
/// (big-endian) order, so it equals Python's `xxhash.xxh3_128_digest(text.encode())`.
pub fn text_hash(text: &str) -> u128 {
    twox_hash::XxHash3_128::oneshot(text.as_bytes())
}

/// The 16 bytes of a hash as stored.
pub fn hash_bytes(hash: u128) -> [u8; 16] {
    hash.to_be_bytes()
}

/// A hash back from its 16 stored bytes.
pub fn hash_from_bytes(bytes: &[u8]) -> u128 {
    u128::from_be_bytes(bytes.try_into().expect("16 bytes"))
}

/// A key per id value: XXH3-128 of the value in Arrow's row format (a byte encoding that is the
/// same for equal values of one type), `None` for a null id. The ids are first cast to their
/// family's key type (`id_types::key_type`), so an `int32` 7 and an `int64` 7 get one key, as do a
/// `string` and a `large_string` "B00X": equal keys mean equal ids (a collision of 128-bit hashes
/// aside, and a reuse also needs equal text hashes).
pub fn id_keys(ids: &ArrayRef) -> Result<Vec<Option<u128>>> {
    let ids = crate::id_types::cast_to(ids, &crate::id_types::key_type(ids.data_type()))?;
    let converter = RowConverter::new(vec![SortField::new(ids.data_type().clone())])
        .context("ids of this type cannot be keyed")?;
    let rows = converter.convert_columns(std::slice::from_ref(&ids)).context("cannot key the ids")?;
    Ok((0..ids.len())
        .map(|i| (!ids.is_null(i)).then(|| twox_hash::XxHash3_128::oneshot(rows.row(i).as_ref())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn text_hash_is_xxh3_128_in_canonical_order() {
        // Reference values of XXH3-128 (xxhash's test vectors; Python's xxhash gives the same).
        assert_eq!(format!("{:032x}", text_hash("")), "99aa06d3014798d86001c324468d497f");
        assert_eq!(hash_bytes(text_hash(""))[0], 0x99);
        assert_eq!(hash_from_bytes(&hash_bytes(text_hash("Great book!"))), text_hash("Great book!"));
        assert_ne!(text_hash("Great book!"), text_hash("Great book"));
    }

    #[test]
    fn id_keys_are_equal_for_equal_ids_and_none_for_nulls() {
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![Some(7), None, Some(7), Some(8)]));
        let k = id_keys(&ints).unwrap();
        assert_eq!(k[0], k[2]);
        assert_ne!(k[0], k[3]);
        assert_eq!(k[1], None);
        let strs: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "a"]));
        let k = id_keys(&strs).unwrap();
        assert_eq!(k[0], k[2]);
        assert_ne!(k[0], k[1]);
        // The same ids stored wider, or in another string layout, key alike.
        let wide: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![Some(7), None, Some(7), Some(8)]));
        assert_eq!(id_keys(&wide).unwrap(), id_keys(&ints).unwrap());
        let large: ArrayRef = Arc::new(arrow::array::LargeStringArray::from(vec!["a", "b", "a"]));
        assert_eq!(id_keys(&large).unwrap(), k);
    }
}
