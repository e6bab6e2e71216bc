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

/// Where a SQL column comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source {
    /// A storage column (its index in the storage schema).
    Stored(usize),
    /// `end_time`: start_time + duration_ns (storage indices), which is exact and saves
    /// storing a second random timestamp per span.
    EndTime { start: usize, duration: usize },
}

/// How one table's SQL columns map onto its storage columns.
#[derive(Debug, Clone)]
pub struct SqlShape {
    pub signal: Signal,
    pub schema: SchemaRef,
    pub sources: Vec<Source>,
}

/// What to read from storage for a projection, and how to make each SQL column of it.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    /// Storage columns to read, in this order.
    pub storage: Vec<usize>,
    /// Per output column: positions in the read batch.
    pub columns: Vec<Source>,
    pub schema: SchemaRef,
}

impl SqlShape {
    pub fn new(signal: Signal) -> SqlShape {
        let storage = signal.schema();
        let mut fields = Vec::new();
        let mut sources = Vec::new();
        for (i, f) in storage.fields().iter().enumerate() {
            if let Some(sf) = sql_field(&oxeye_model::schema::read_field(f)) {
                fields.push(sf);
                sources.push(Source::Stored(i));
            }
            if signal == Signal::Spans
                && f.name() == "start_time"
                && let Ok(duration) = storage.index_of("duration_ns")
            {
                fields.push(Field::new("end_time", f.data_type().clone(), false));
                sources.push(Source::EndTime { start: i, duration });
            }
        }
        SqlShape {
            signal,
            schema: Arc::new(Schema::new(fields)),
            sources,
        }
    }

    /// The storage reads and conversions for a projection of SQL column indices.
    pub fn read_plan(&self, projection: Option<&Vec<usize>>) -> Result<ReadPlan, ArrowError> {
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.sources.len()).collect(),
        };
        let mut storage: Vec<usize> = Vec::new();
        let mut at = |i: usize| match storage.iter().position(|s| *s == i) {
            Some(p) => p,
            None => {
                storage.push(i);
                storage.len() - 1
            }
        };
        let columns = wanted
            .iter()
            .map(|c| match self.sources[*c] {
                Source::Stored(i) => Source::Stored(at(i)),
                Source::EndTime { start, duration } => Source::EndTime {
                    start: at(start),
                    duration: at(duration),
                },
            })
            .collect();
        Ok(ReadPlan {
            storage,
            columns,
            schema: Arc::new(self.schema.project(&wanted)?),
        })
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.schema.index_of(name).ok()
    }
}

/// Converts a batch of storage columns (read per `plan.storage`) to the plan's SQL schema.
pub fn to_sql_batch(batch: &RecordBatch, plan: &ReadPlan) -> Result<RecordBatch, ArrowError> {
    let storage_schema = batch.schema();
    let columns = plan
        .columns
        .iter()
        .zip(plan.schema.fields())
        .map(|(source, sql_field)| match *source {
            Source::Stored(i) => to_sql_array(
                batch.column(i),
                &Arc::new(storage_schema.field(i).clone()),
                sql_field,
            ),
            Source::EndTime { start, duration } => {
                end_time(batch.column(start), batch.column(duration))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    // `count(*)` projects no column at all; the row count must survive.
    let options =
        arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(plan.schema.clone(), columns, &options)
}

fn end_time(start: &ArrayRef, duration: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    use arrow::datatypes::{Int64Type, TimestampNanosecondType};
    let start = start
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or_else(|| {
            ArrowError::SchemaError("start_time is not a nanosecond timestamp".into())
        })?;
    let duration = duration
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| ArrowError::SchemaError("duration_ns is not Int64".into()))?;
    let end: arrow::array::TimestampNanosecondArray =
        arrow::compute::kernels::arity::binary(start, duration, |s, d| s.wrapping_add(d))?;
    Ok(Arc::new(
        end.with_timezone_opt(start.timezone().map(str::to_string)),
    ))
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

    /// DESIGN.md's SQL columns, as users, the UI and tests see them.
    #[test]
    fn contract_columns_exist() {
        for signal in oxeye_model::schema::DESIGN_TABLES {
            let shape = SqlShape::new(signal);
            for c in oxeye_model::schema::design_sql_columns(signal) {
                assert!(
                    shape.schema.field_with_name(c).is_ok(),
                    "{signal} lacks {c}"
                );
            }
        }
    }

    #[test]
    fn end_time_is_start_plus_duration() {
        let shape = SqlShape::new(Signal::Spans);
        let end = shape.column_index("end_time").unwrap();
        let plan = shape.read_plan(Some(&vec![end])).unwrap();
        assert_eq!(plan.storage.len(), 2, "reads start_time and duration_ns");
        let batch = RecordBatch::try_new(
            Arc::new(Signal::Spans.schema().project(&plan.storage).unwrap()),
            vec![
                Arc::new(
                    arrow::array::TimestampNanosecondArray::from(vec![100, i64::MAX])
                        .with_timezone("UTC"),
                ),
                Arc::new(arrow::array::Int64Array::from(vec![5, 2])),
            ],
        )
        .unwrap();
        let out = to_sql_batch(&batch, &plan).unwrap();
        let end = out
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        assert_eq!(end.values().to_vec(), vec![105, i64::MIN + 1]);
        assert_eq!(
            out.schema().field(0).data_type(),
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, Some("UTC".into()))
        );
    }

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
