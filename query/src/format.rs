//! Query results as JSON (`{"columns": [...], "rows": [[...]]}`), NDJSON, CSV and Arrow IPC.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListArray, MapArray, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_json::writer::{EncoderOptions, make_encoder};

use crate::QueryResult;

/// A short, SQL-flavoured type name for clients.
pub fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Dictionary(_, v) => type_name(v),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 | DataType::UInt16 => "integer".into(),
        DataType::UInt32 | DataType::UInt64 => "bigint".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("decimal({p},{s})"),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Duration(TimeUnit::Nanosecond)
        | DataType::Interval(_)
        | DataType::Duration(_) => "interval".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::FixedSizeBinary(_)
        | DataType::BinaryView => "bytea".into(),
        DataType::Map(_, _) => "map".into(),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            format!("{}[]", type_name(f.data_type()))
        }
        DataType::Struct(_) => "struct".into(),
        DataType::Null => "null".into(),
        other => other.to_string(),
    }
}

static JSON_OPTIONS: std::sync::LazyLock<EncoderOptions> =
    std::sync::LazyLock::new(|| EncoderOptions::default().with_explicit_nulls(true));

/// Whether a type holds a map whose keys are dictionary-encoded (JSON writers want plain text).
fn has_dictionary_map_keys(dt: &DataType) -> bool {
    match dt {
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(f) => {
                matches!(f[0].data_type(), DataType::Dictionary(_, _))
                    || f.iter().any(|c| has_dictionary_map_keys(c.data_type()))
            }
            _ => false,
        },
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            has_dictionary_map_keys(f.data_type())
        }
        DataType::Struct(fields) => fields
            .iter()
            .any(|f| has_dictionary_map_keys(f.data_type())),
        _ => false,
    }
}

/// Rewrites map keys from dictionary to plain text, at any depth, for the text encoders.
pub fn plain_map_keys(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    if !has_dictionary_map_keys(array.data_type()) {
        return Ok(array.clone());
    }
    match array.data_type() {
        DataType::Map(entries, sorted) => {
            let m = array.as_map();
            let keys = arrow::compute::cast(m.keys(), &DataType::Utf8)?;
            let values = plain_map_keys(m.values())?;
            // Attribute values are read dictionary-encoded too; text encoders want them plain.
            let values = match values.data_type() {
                DataType::Dictionary(_, value_type) => arrow::compute::cast(&values, value_type)?,
                _ => values,
            };
            let DataType::Struct(children) = entries.data_type() else {
                return Ok(array.clone());
            };
            let fields = Fields::from(vec![
                Field::new(children[0].name(), DataType::Utf8, false),
                Field::new(
                    children[1].name(),
                    values.data_type().clone(),
                    children[1].is_nullable(),
                ),
            ]);
            let entries_array = StructArray::try_new(fields, vec![keys, values], None)?;
            let entries_field = Arc::new(Field::new(
                entries.name(),
                entries_array.data_type().clone(),
                false,
            ));
            Ok(Arc::new(MapArray::try_new(
                entries_field,
                m.offsets().clone(),
                entries_array,
                m.nulls().cloned(),
                *sorted,
            )?))
        }
        DataType::List(item) => {
            let l = array.as_list::<i32>();
            let values = plain_map_keys(l.values())?;
            let item = Arc::new(Field::new(
                item.name(),
                values.data_type().clone(),
                item.is_nullable(),
            ));
            Ok(Arc::new(ListArray::try_new(
                item,
                l.offsets().clone(),
                values,
                l.nulls().cloned(),
            )?))
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let columns = s
                .columns()
                .iter()
                .map(plain_map_keys)
                .collect::<Result<Vec<_>, _>>()?;
            let fields = Fields::from(
                fields
                    .iter()
                    .zip(&columns)
                    .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
                    .collect::<Vec<_>>(),
            );
            Ok(Arc::new(StructArray::try_new(
                fields,
                columns,
                s.nulls().cloned(),
            )?))
        }
        _ => Ok(array.clone()),
    }
}

/// A batch whose nested columns the JSON encoders accept.
pub fn text_ready(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| has_dictionary_map_keys(f.data_type()))
    {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .map(plain_map_keys)
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
        .collect();
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
}

/// Appends the JSON of one cell.
struct CellEncoder<'a> {
    encoders: Vec<arrow_json::writer::NullableEncoder<'a>>,
    /// Float columns, whose non-finite values JSON cannot hold as numbers.
    floats: Vec<Option<ArrayRef>>,
}

/// JSON has no NaN or infinities: they are written as strings, as protobuf's JSON mapping does.
fn non_finite(array: &ArrayRef, row: usize) -> Option<&'static str> {
    let v = match array.data_type() {
        DataType::Float64 => array
            .as_primitive::<arrow::datatypes::Float64Type>()
            .value(row),
        DataType::Float32 => f64::from(
            array
                .as_primitive::<arrow::datatypes::Float32Type>()
                .value(row),
        ),
        _ => return None,
    };
    if v.is_nan() {
        Some("\"NaN\"")
    } else if v == f64::INFINITY {
        Some("\"Infinity\"")
    } else if v == f64::NEG_INFINITY {
        Some("\"-Infinity\"")
    } else {
        None
    }
}

impl<'a> CellEncoder<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self, ArrowError> {
        let encoders = batch
            .schema_ref()
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, a)| make_encoder(f, a.as_ref(), &JSON_OPTIONS))
            .collect::<Result<Vec<_>, _>>()?;
        let floats = batch
            .columns()
            .iter()
            .map(|a| {
                matches!(a.data_type(), DataType::Float64 | DataType::Float32).then(|| a.clone())
            })
            .collect();
        Ok(CellEncoder { encoders, floats })
    }

    fn encode(&mut self, col: usize, row: usize, out: &mut Vec<u8>) {
        let e = &mut self.encoders[col];
        if e.is_null(row) {
            out.extend_from_slice(b"null");
        } else if let Some(text) = self.floats[col].as_ref().and_then(|a| non_finite(a, row)) {
            out.extend_from_slice(text.as_bytes());
        } else {
            e.encode(row, out);
        }
    }
}

/// `{"columns":[{"name","type","arrow_type"}],"rows":[[...]],"row_count":N,"truncated":b,"elapsed_ms":t}`
pub fn to_json(result: &QueryResult) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::with_capacity(64 + result.rows * 64);
    out.extend_from_slice(b"{\"columns\":[");
    for (i, f) in result.schema.fields().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let col = serde_json::json!({
            "name": f.name(),
            "type": type_name(f.data_type()),
            "arrow_type": f.data_type().to_string(),
        });
        out.extend_from_slice(col.to_string().as_bytes());
    }
    out.extend_from_slice(b"],\"rows\":[");
    let mut first = true;
    for batch in &result.batches {
        let batch = &text_ready(batch)?;
        let mut enc = CellEncoder::new(batch)?;
        for row in 0..batch.num_rows() {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'[');
            for col in 0..batch.num_columns() {
                if col > 0 {
                    out.push(b',');
                }
                enc.encode(col, row, &mut out);
            }
            out.push(b']');
        }
    }
    out.extend_from_slice(
        format!(
            "],\"row_count\":{},\"truncated\":{},\"elapsed_ms\":{:.3}}}",
            result.rows,
            result.truncated,
            result.elapsed.as_secs_f64() * 1000.0
        )
        .as_bytes(),
    );
    Ok(out)
}

/// One JSON object per row.
pub fn to_ndjson(result: &QueryResult) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    let names: Vec<String> = result
        .schema
        .fields()
        .iter()
        .map(|f| serde_json::to_string(f.name()).unwrap_or_else(|_| "\"?\"".into()))
        .collect();
    for batch in &result.batches {
        let batch = &text_ready(batch)?;
        let mut enc = CellEncoder::new(batch)?;
        for row in 0..batch.num_rows() {
            out.push(b'{');
            for (col, name) in names.iter().enumerate() {
                if col > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                enc.encode(col, row, &mut out);
            }
            out.extend_from_slice(b"}\n");
        }
    }
    Ok(out)
}

fn is_nested(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Map(_, _)
            | DataType::List(_)
            | DataType::LargeList(_)
            | DataType::FixedSizeList(_, _)
            | DataType::Struct(_)
    )
}

fn csv_escape(field: &str, out: &mut Vec<u8>) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

/// CSV with a header; nested values (maps, lists, structs) as JSON text.
pub fn to_csv(result: &QueryResult) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    for (i, f) in result.schema.fields().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_escape(f.name(), &mut out);
    }
    out.extend_from_slice(b"\r\n");
    let options = FormatOptions::default().with_null("");
    for batch in &result.batches {
        let batch = &text_ready(batch)?;
        let mut json = CellEncoder::new(batch)?;
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cell = Vec::new();
        for row in 0..batch.num_rows() {
            for (col, array) in batch.columns().iter().enumerate() {
                if col > 0 {
                    out.push(b',');
                }
                if array.is_null(row) {
                    continue;
                }
                let text = if is_nested(array.data_type()) {
                    cell.clear();
                    json.encode(col, row, &mut cell);
                    String::from_utf8_lossy(&cell).into_owned()
                } else {
                    formatters[col].value(row).to_string()
                };
                csv_escape(&text, &mut out);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    Ok(out)
}

/// An Arrow IPC stream (schema, then the batches).
pub fn to_arrow(result: &QueryResult) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &result.schema)?;
        for b in &result.batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

/// A field with a friendlier type, for column listings.
pub fn describe_field(f: &FieldRef) -> Field {
    Field::new(f.name(), f.data_type().clone(), f.is_nullable())
}

/// Result rows as JSON objects (for APIs that reshape results).
pub fn to_objects(
    result: &QueryResult,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, ArrowError> {
    let text = to_ndjson(result)?;
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line)
                .map_err(|e| ArrowError::JsonError(e.to_string()))
        })
        .collect()
}
