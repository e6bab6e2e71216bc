//! The SQL face of a table: storage batches -> what SQL users see.
//!
//! Storage keeps ids as fixed-size binary and carries `*_typed` sidecars for lossless OTLP;
//! SQL shows ids as lowercase hex text (DESIGN.md) and hides the sidecars and other
//! storage-only columns, also inside nested events, links and exemplars.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, StringBuilder, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use oxeye_model::Signal;
use oxeye_model::schema::is_storage_only_column;

/// Binary columns shown as hex text.
fn is_id_column(name: &str) -> bool {
    matches!(name, "trace_id" | "span_id" | "parent_span_id")
}

/// The SQL field for a storage field, or `None` when SQL does not show it.
pub fn sql_field(field: &Field) -> Option<Field> {
    if is_storage_only_column(field.name()) {
        return None;
    }
    let dt = match field.data_type() {
        DataType::FixedSizeBinary(_) | DataType::Binary if is_id_column(field.name()) => {
            DataType::Utf8
        }
        DataType::List(item) => match item.data_type() {
            DataType::Struct(children) => {
                let kept: Vec<Field> = children.iter().filter_map(|c| sql_field(c)).collect();
                DataType::List(Arc::new(Field::new(
                    item.name(),
                    DataType::Struct(Fields::from(kept)),
                    item.is_nullable(),
                )))
            }
            _ => field.data_type().clone(),
        },
        other => other.clone(),
    };
    Some(Field::new(field.name(), dt, field.is_nullable()).with_metadata(field.metadata().clone()))
}

/// How one table's SQL columns map onto its storage columns.
#[derive(Debug, Clone)]
pub struct SqlShape {
    pub signal: Signal,
    pub schema: SchemaRef,
    /// For each SQL column, its index in the storage schema.
    pub storage_index: Vec<usize>,
}

impl SqlShape {
    pub fn new(signal: Signal) -> SqlShape {
        let storage = signal.schema();
        let mut fields = Vec::new();
        let mut storage_index = Vec::new();
        for (i, f) in storage.fields().iter().enumerate() {
            if let Some(sf) = sql_field(f) {
                fields.push(sf);
                storage_index.push(i);
            }
        }
        SqlShape {
            signal,
            schema: Arc::new(Schema::new(fields)),
            storage_index,
        }
    }

    /// Storage column indices for a projection of SQL column indices.
    pub fn storage_projection(&self, projection: Option<&Vec<usize>>) -> Vec<usize> {
        match projection {
            Some(p) => p.iter().map(|i| self.storage_index[*i]).collect(),
            None => self.storage_index.clone(),
        }
    }

    pub fn projected_schema(
        &self,
        projection: Option<&Vec<usize>>,
    ) -> Result<SchemaRef, ArrowError> {
        match projection {
            Some(p) => Ok(Arc::new(self.schema.project(p)?)),
            None => Ok(self.schema.clone()),
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.schema.index_of(name).ok()
    }
}

/// Converts a batch of (projected) storage columns to the (projected) SQL schema.
pub fn to_sql_batch(
    batch: &RecordBatch,
    sql_schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(batch.schema().fields())
        .zip(sql_schema.fields())
        .map(|((array, storage_field), sql_field)| to_sql_array(array, storage_field, sql_field))
        .collect::<Result<Vec<_>, _>>()?;
    // `count(*)` projects no column at all; the row count must survive.
    let options =
        arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(sql_schema.clone(), columns, &options)
}

fn to_sql_array(
    array: &ArrayRef,
    storage: &FieldRef,
    sql: &FieldRef,
) -> Result<ArrayRef, ArrowError> {
    if storage.data_type() == sql.data_type() {
        return Ok(array.clone());
    }
    match (storage.data_type(), sql.data_type()) {
        (DataType::FixedSizeBinary(_), DataType::Utf8) => {
            Ok(hex_array(array.as_fixed_size_binary().iter(), array.len()))
        }
        (DataType::Binary, DataType::Utf8) => {
            Ok(hex_array(array.as_binary::<i32>().iter(), array.len()))
        }
        (DataType::List(storage_item), DataType::List(sql_item)) => {
            let list = array.as_list::<i32>();
            let values = list.values();
            let converted = match (storage_item.data_type(), sql_item.data_type()) {
                (DataType::Struct(storage_children), DataType::Struct(sql_children)) => {
                    let s = values.as_struct();
                    let mut columns = Vec::with_capacity(sql_children.len());
                    for sql_child in sql_children.iter() {
                        let idx = storage_children
                            .iter()
                            .position(|c| c.name() == sql_child.name())
                            .ok_or_else(|| {
                                ArrowError::SchemaError(format!(
                                    "no storage field {}",
                                    sql_child.name()
                                ))
                            })?;
                        columns.push(to_sql_array(
                            s.column(idx),
                            &storage_children[idx],
                            sql_child,
                        )?);
                    }
                    Arc::new(StructArray::try_new(
                        sql_children.clone(),
                        columns,
                        s.nulls().cloned(),
                    )?) as ArrayRef
                }
                _ => values.clone(),
            };
            Ok(Arc::new(ListArray::try_new(
                sql_item.clone(),
                list.offsets().clone(),
                converted,
                list.nulls().cloned(),
            )?))
        }
        _ => Ok(array.clone()),
    }
}

fn hex_array<'a>(values: impl Iterator<Item = Option<&'a [u8]>>, len: usize) -> ArrayRef {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = StringBuilder::with_capacity(len, len * 32);
    let mut buf = String::with_capacity(32);
    for v in values {
        match v {
            Some(bytes) => {
                buf.clear();
                for byte in bytes {
                    buf.push(HEX[(byte >> 4) as usize] as char);
                    buf.push(HEX[(byte & 0xf) as usize] as char);
                }
                b.append_value(&buf);
            }
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_sidecars_hidden() {
        let shape = SqlShape::new(Signal::Spans);
        assert_eq!(
            shape
                .schema
                .field_with_name("trace_id")
                .unwrap()
                .data_type(),
            &DataType::Utf8
        );
        assert!(shape.schema.field_with_name("attributes_typed").is_err());
        assert!(shape.schema.field_with_name("attributes").is_ok());
        let events = shape.schema.field_with_name("events").unwrap();
        let DataType::List(item) = events.data_type() else {
            panic!()
        };
        let DataType::Struct(children) = item.data_type() else {
            panic!()
        };
        assert!(children.iter().all(|c| !c.name().ends_with("_typed")));
        let links = shape.schema.field_with_name("links").unwrap();
        let DataType::List(item) = links.data_type() else {
            panic!()
        };
        let DataType::Struct(children) = item.data_type() else {
            panic!()
        };
        assert_eq!(
            children.find("trace_id").unwrap().1.data_type(),
            &DataType::Utf8
        );
    }
}
