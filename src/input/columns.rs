//! Naming input columns: a top-level column by its name, or a field inside struct columns by
//! its dotted path (`doc.body`, `meta.ids.asin`), as Spark, DuckDB and pandas print them. A name
//! that is a top-level column (dots and all) is that column; otherwise the dots walk into the
//! structs, each step trying the longest name first, so fields whose own names hold dots are
//! found too.
//!
//! Only the Parquet leaves under the named field are read, and the field's values come out of
//! the read batch with the nulls of every struct above them.

use arrow::array::{make_array, Array, ArrayRef, AsArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use parquet::schema::types::SchemaDescriptor;

/// Where a named column is in a file's schema.
#[derive(Clone, Debug)]
pub struct ColumnRef {
    /// Index of the top-level column holding it.
    pub root: usize,
    /// Names of the struct fields walked below the root (empty for a top-level column).
    pub path: Vec<String>,
    /// The Parquet leaf columns under it: all that is read for it.
    pub leaves: Vec<usize>,
    /// The field itself (its type is the column's type).
    pub field: Field,
}

/// Finds `name` in `schema` (see the module notes); `parquet` maps it to its leaves.
pub fn find(schema: &Schema, parquet: &SchemaDescriptor, name: &str) -> Option<ColumnRef> {
    let (root, path, field) = match schema.column_with_name(name) {
        Some((i, f)) => (i, Vec::new(), f.clone()),
        None => {
            let parts: Vec<&str> = name.split('.').collect();
            let (mut indices, field) = walk(schema.fields(), &parts)?;
            let root = indices.remove(0);
            let mut path = Vec::new();
            let mut at = schema.field(root);
            for i in indices {
                let DataType::Struct(children) = at.data_type() else {
                    unreachable!("walk went into a struct")
                };
                at = children[i].as_ref();
                path.push(at.name().clone());
            }
            (root, path, field)
        }
    };
    let mut full: Vec<&str> = vec![schema.field(root).name()];
    full.extend(path.iter().map(String::as_str));
    let leaves = (0..parquet.num_columns())
        .filter(|&i| {
            let parts = parquet.column(i).path().parts().to_vec();
            parts.len() >= full.len() && parts.iter().zip(&full).all(|(a, b)| a == b)
        })
        .collect();
    Some(ColumnRef { root, path, leaves, field })
}

/// The field indices from `fields` down to the one `parts` names, longest names first.
fn walk(fields: &Fields, parts: &[&str]) -> Option<(Vec<usize>, Field)> {
    for take in (1..=parts.len()).rev() {
        let name = parts[..take].join(".");
        let Some((i, field)) = fields.find(&name) else { continue };
        if take == parts.len() {
            return Some((vec![i], field.as_ref().clone()));
        }
        if let DataType::Struct(children) = field.data_type() {
            if let Some((mut below, leaf)) = walk(children, &parts[take..]) {
                below.insert(0, i);
                return Some((below, leaf));
            }
        }
    }
    None
}

/// Every column a user can name, for messages: top-level names, and the dotted paths of the
/// fields inside struct columns.
pub fn names(schema: &Schema) -> String {
    fn add(prefix: &str, fields: &Fields, out: &mut Vec<String>) {
        for f in fields {
            let name = if prefix.is_empty() { f.name().clone() } else { format!("{prefix}.{}", f.name()) };
            match f.data_type() {
                DataType::Struct(children) => add(&name, children, out),
                _ => out.push(name),
            }
        }
    }
    let mut out = Vec::new();
    add("", schema.fields(), &mut out);
    out.join(", ")
}

/// The values of the field `path` names below a read top-level column: a row whose struct (at
/// any level) is null is null.
pub fn descend(column: &ArrayRef, path: &[String]) -> ArrayRef {
    let mut at = column.clone();
    for name in path {
        let parent = at.as_struct();
        let child = parent.column_by_name(name).expect("the projected struct holds the named field");
        at = match NullBuffer::union(parent.nulls(), child.nulls()) {
            nulls if nulls.as_ref() == child.nulls() => child.clone(),
            nulls => make_array(child.to_data().into_builder().nulls(nulls).build().expect("same length")),
        };
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray, StructArray};
    use parquet::arrow::ArrowSchemaConverter;
    use std::sync::Arc;

    fn nested() -> (Schema, StructArray) {
        let body = Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as ArrayRef;
        let title = Arc::new(StringArray::from(vec!["t0", "t1", "t2"])) as ArrayRef;
        let inner =
            StructArray::from(vec![(Arc::new(Field::new("x.y", DataType::Utf8, true)), title.clone())]);
        let doc = StructArray::try_new(
            vec![
                Field::new("body", DataType::Utf8, true),
                Field::new("title", DataType::Utf8, true),
                Field::new("meta", inner.data_type().clone(), true),
            ]
            .into(),
            vec![body, title, Arc::new(inner)],
            Some(NullBuffer::from(vec![true, true, false])),
        )
        .unwrap();
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("doc", doc.data_type().clone(), true),
            Field::new("a.b", DataType::Utf8, true),
        ]);
        (schema, doc)
    }

    #[test]
    fn finds_top_level_and_nested_fields_and_their_leaves() {
        let (schema, doc) = nested();
        let parquet = ArrowSchemaConverter::new().convert(&schema).unwrap();
        let dotted = find(&schema, &parquet, "a.b").unwrap();
        assert_eq!((dotted.root, dotted.path.len(), dotted.leaves), (2, 0, vec![4]));
        let body = find(&schema, &parquet, "doc.body").unwrap();
        assert_eq!(
            (body.root, body.path.clone(), body.leaves.clone()),
            (1, vec!["body".to_string()], vec![1])
        );
        // A field whose own name holds a dot, two structs down.
        let xy = find(&schema, &parquet, "doc.meta.x.y").unwrap();
        assert_eq!((xy.path, xy.leaves), (vec!["meta".to_string(), "x.y".to_string()], vec![3]));
        // The whole struct: every leaf under it.
        assert_eq!(find(&schema, &parquet, "doc").unwrap().leaves, vec![1, 2, 3]);
        assert!(find(&schema, &parquet, "doc.nope").is_none());
        assert!(find(&schema, &parquet, "id.x").is_none());
        assert_eq!(names(&schema), "id, doc.body, doc.title, doc.meta.x.y, a.b");

        // A null struct row makes its fields null, whatever they hold.
        let ids = Arc::new(Int64Array::from(vec![0, 1, 2])) as ArrayRef;
        let a_b = Arc::new(StringArray::from(vec!["p", "q", "r"])) as ArrayRef;
        let batch = RecordBatch::try_new(Arc::new(schema), vec![ids, Arc::new(doc), a_b]).unwrap();
        let got = descend(batch.column(1), &body.path);
        let got = got.as_string::<i32>();
        assert_eq!(got.iter().collect::<Vec<_>>(), [Some("a"), None, None]);
    }
}
