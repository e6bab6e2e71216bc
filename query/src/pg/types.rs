//! Arrow values as PostgreSQL values: type OIDs for row descriptions and per-cell encoding in
//! text or binary format. Nested values (maps, lists, structs) travel as `json`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema,
    TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use arrow_json::writer::{EncoderOptions, make_encoder};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;

use crate::format::text_ready;

/// The PostgreSQL type a column is described as.
pub fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Dictionary(_, v) => pg_type(v),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Map(..)
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_) => Type::JSON,
        _ => Type::TEXT,
    }
}

/// Row description of a result schema in the requested formats.
pub fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            FieldInfo::new(
                f.name().clone(),
                None,
                None,
                pg_type(f.data_type()),
                format.format_for(i),
            )
        })
        .collect()
}

fn err(message: String) -> PgWireError {
    PgWireError::ApiError(message.into())
}

/// A column ready for per-row encoding: dictionaries unpacked, nested values as JSON text.
enum Column {
    Bool(ArrayRef),
    I16(ArrayRef),
    I32(ArrayRef),
    I64(ArrayRef),
    F32(ArrayRef),
    F64(ArrayRef),
    Text(ArrayRef),
    Bytes(ArrayRef),
    Timestamp(ArrayRef, bool),
    Date(ArrayRef),
    Json(Vec<Option<serde_json::Value>>),
}

static JSON_OPTIONS: std::sync::LazyLock<EncoderOptions> =
    std::sync::LazyLock::new(EncoderOptions::default);

fn prepare(field: &arrow::datatypes::FieldRef, array: &ArrayRef) -> PgWireResult<Column> {
    let cast = |to: &DataType| arrow::compute::cast(array, to).map_err(|e| err(e.to_string()));
    Ok(match array.data_type() {
        DataType::Boolean => Column::Bool(array.clone()),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Column::I16(cast(&DataType::Int16)?),
        DataType::Int32 | DataType::UInt16 => Column::I32(cast(&DataType::Int32)?),
        DataType::Int64 => Column::I64(array.clone()),
        DataType::UInt32 | DataType::UInt64 => Column::I64(cast(&DataType::Int64)?),
        DataType::Float16 | DataType::Float32 => Column::F32(cast(&DataType::Float32)?),
        DataType::Float64 => Column::F64(array.clone()),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Column::Bytes(cast(&DataType::Binary)?),
        DataType::Timestamp(_, tz) => Column::Timestamp(
            cast(&DataType::Timestamp(TimeUnit::Microsecond, tz.clone()))?,
            tz.is_some(),
        ),
        DataType::Date32 | DataType::Date64 => Column::Date(cast(&DataType::Date32)?),
        DataType::Map(..)
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_) => {
            let plain = crate::format::plain_map_keys(array).map_err(|e| err(e.to_string()))?;
            let plain_field = Arc::new(arrow::datatypes::Field::new(
                field.name(),
                plain.data_type().clone(),
                true,
            ));
            let mut enc = make_encoder(&plain_field, plain.as_ref(), &JSON_OPTIONS)
                .map_err(|e| err(e.to_string()))?;
            let mut buf = Vec::new();
            let values = (0..plain.len())
                .map(|i| {
                    if plain.is_null(i) {
                        return None;
                    }
                    buf.clear();
                    enc.encode(i, &mut buf);
                    serde_json::from_slice(&buf).ok()
                })
                .collect();
            Column::Json(values)
        }
        _ => Column::Text(cast(&DataType::Utf8)?),
    })
}

fn micros_to_datetime(us: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_micros(us)
}

/// Encodes every row of the batches.
pub fn encode_rows(
    batches: &[RecordBatch],
    fields: &Arc<Vec<FieldInfo>>,
) -> PgWireResult<Vec<DataRow>> {
    let mut rows = Vec::new();
    let mut encoder = DataRowEncoder::new(fields.clone());
    for batch in batches {
        let batch = text_ready(batch).map_err(|e| err(e.to_string()))?;
        let columns = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, a)| prepare(f, a))
            .collect::<PgWireResult<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            for col in &columns {
                encode_cell(&mut encoder, col, row)?;
            }
            rows.push(encoder.take_row());
        }
    }
    Ok(rows)
}

fn encode_cell(e: &mut DataRowEncoder, col: &Column, i: usize) -> PgWireResult<()> {
    macro_rules! prim {
        ($a:expr, $t:ty) => {{
            let a = $a.as_primitive::<$t>();
            e.encode_field(&a.is_valid(i).then(|| a.value(i)))
        }};
    }
    match col {
        Column::Bool(a) => {
            let a = a.as_boolean();
            e.encode_field(&a.is_valid(i).then(|| a.value(i)))
        }
        Column::I16(a) => prim!(a, Int16Type),
        Column::I32(a) => prim!(a, Int32Type),
        Column::I64(a) => prim!(a, Int64Type),
        Column::F32(a) => prim!(a, Float32Type),
        Column::F64(a) => prim!(a, Float64Type),
        Column::Text(a) => {
            let a = a.as_string::<i32>();
            e.encode_field(&a.is_valid(i).then(|| a.value(i)))
        }
        Column::Bytes(a) => {
            let a = a.as_binary::<i32>();
            e.encode_field(&a.is_valid(i).then(|| a.value(i).to_vec()))
        }
        Column::Timestamp(a, with_tz) => {
            let a = a.as_primitive::<TimestampMicrosecondType>();
            let v = a
                .is_valid(i)
                .then(|| a.value(i))
                .and_then(micros_to_datetime);
            if *with_tz {
                e.encode_field(&v)
            } else {
                e.encode_field(&v.map(|d| d.naive_utc()))
            }
        }
        Column::Date(a) => {
            let a = a.as_primitive::<Date32Type>();
            let v = a
                .is_valid(i)
                .then(|| a.value(i))
                .and_then(|d| chrono::NaiveDate::from_num_days_from_ce_opt(d + 719_163));
            e.encode_field(&v)
        }
        Column::Json(values) => e.encode_field(&values[i]),
    }
}
