//! Id columns whose type differs between files only in width or in how strings are stored: a
//! corpus written over months by different writers has `int32` ids in one shard and `int64` in
//! the next, or `string` beside `large_string`. Such ids are read as one common type, and they are
//! keyed (for `--reuse` and `changes`) by value, whatever the width they were stored in.

use anyhow::{Context, Result};
use arrow::array::ArrayRef;
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::DataType;

/// The type both `a` and `b` read as without losing a value, if there is one: the wider of two
/// integers (`int64` for a signed and an unsigned one below 64 bits), `large_string` for strings
/// stored in different layouts (dictionary-encoded too), `large_binary` likewise, `float64` for
/// floats, any type for a column of nulls only. Other types must be equal.
pub fn common(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    match (a, b) {
        // A column of nulls only (pandas writes one for a shard with no ids) reads as any type.
        (Null, other) | (other, Null) => Some(other.clone()),
        (Dictionary(_, v), other) | (other, Dictionary(_, v)) => common(v, other),
        _ if is_string(a) && is_string(b) => Some(LargeUtf8),
        _ if is_binary(a) && is_binary(b) => Some(LargeBinary),
        _ if a.is_floating() && b.is_floating() => Some(Float64),
        _ => {
            let (sa, wa) = integer(a)?;
            let (sb, wb) = integer(b)?;
            let width = match (sa, sb) {
                (true, true) | (false, false) => wa.max(wb),
                // A signed type holds an unsigned one of half its width.
                (true, false) => wa.max(wb * 2),
                (false, true) => wb.max(wa * 2),
            };
            let signed = sa || sb;
            Some(match (signed, width) {
                (_, w) if w > 64 => return None,
                (true, 8) => Int8,
                (true, 16) => Int16,
                (true, 32) => Int32,
                (true, _) => Int64,
                (false, 8) => UInt8,
                (false, 16) => UInt16,
                (false, 32) => UInt32,
                (false, _) => UInt64,
            })
        }
    }
}

/// `ids` as type `to` (a no-op when it already is); a value `to` cannot hold is an error, not a
/// null id.
pub fn cast_to(ids: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if ids.data_type() == to {
        return Ok(ids.clone());
    }
    let options = CastOptions { safe: false, ..Default::default() };
    cast_with_options(ids, to, &options)
        .with_context(|| format!("cannot read ids of type {} as {to}", ids.data_type()))
}

/// The type ids are keyed in: one per family, so that equal values stored in different widths or
/// layouts get equal keys (every integer as a 20-digit decimal, which holds `u64` and `i64`).
pub fn key_type(t: &DataType) -> DataType {
    use DataType::*;
    match t {
        Dictionary(_, v) => key_type(v),
        _ if is_string(t) => LargeUtf8,
        _ if is_binary(t) => LargeBinary,
        _ if t.is_floating() => Float64,
        _ if integer(t).is_some() => Decimal128(20, 0),
        _ => t.clone(),
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_binary(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
}

/// (signed, bits) of an integer type.
fn integer(t: &DataType) -> Option<(bool, u32)> {
    use DataType::*;
    Some(match t {
        Int8 => (true, 8),
        Int16 => (true, 16),
        Int32 => (true, 32),
        Int64 => (true, 64),
        UInt8 => (false, 8),
        UInt16 => (false, 16),
        UInt32 => (false, 32),
        UInt64 => (false, 64),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, UInt64Array};
    use std::sync::Arc;
    use DataType::*;

    #[test]
    fn integers_widen_without_losing_a_value() {
        assert_eq!(common(&Int32, &Int64), Some(Int64));
        assert_eq!(common(&Int8, &Int16), Some(Int16));
        assert_eq!(common(&UInt16, &UInt32), Some(UInt32));
        assert_eq!(common(&UInt32, &Int32), Some(Int64));
        assert_eq!(common(&Int16, &UInt8), Some(Int16));
        // No integer type holds both u64 and negative values.
        assert_eq!(common(&UInt64, &Int64), None);
        assert_eq!(common(&Int64, &Int64), Some(Int64));
    }

    #[test]
    fn strings_of_any_layout_read_as_large_strings_and_other_types_must_match() {
        let dict = Dictionary(Box::new(Int32), Box::new(Utf8));
        assert_eq!(common(&Utf8, &LargeUtf8), Some(LargeUtf8));
        assert_eq!(common(&Utf8View, &Utf8), Some(LargeUtf8));
        assert_eq!(common(&dict, &Utf8), Some(Utf8));
        assert_eq!(common(&Binary, &LargeBinary), Some(LargeBinary));
        assert_eq!(common(&Float32, &Float64), Some(Float64));
        assert_eq!(common(&Utf8, &Int64), None);
        assert_eq!(common(&Utf8, &Binary), None);
        assert_eq!(common(&Date32, &Date64), None);
        assert_eq!(common(&Null, &Date32), Some(Date32));
        assert_eq!(common(&Utf8, &Null), Some(Utf8));
    }

    #[test]
    fn equal_values_of_different_widths_cast_to_one_key_type_alike() {
        let a: ArrayRef = Arc::new(Int32Array::from(vec![7, -1]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![7, -1]));
        let c: ArrayRef = Arc::new(UInt64Array::from(vec![7, u64::MAX]));
        let to = |x: &ArrayRef| cast_to(x, &key_type(x.data_type())).unwrap();
        assert_eq!(key_type(&Int32), key_type(&UInt64));
        assert_eq!(&to(&a), &to(&b));
        assert_eq!(to(&c).len(), 2);
        assert_eq!(cast_to(&a, &Int64).unwrap().data_type(), &Int64);
        // A value the narrower type cannot hold is an error, never a null id.
        assert!(cast_to(&c, &Int64).is_err());
    }
}
