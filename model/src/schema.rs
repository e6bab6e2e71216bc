//! Arrow schemas of oxeye's tables.
//!
//! Column names are the public SQL contract of DESIGN.md. Besides the columns SQL users see,
//! each table stores a few columns that exist only to keep OTLP conversion lossless:
//! `*_typed` sidecars (see [`crate::attributes`]), dropped counts, schema URLs and flags.
//!
//! Storage types are chosen for size: ids are fixed-size binary (the query layer shows them as
//! lowercase hex), strings that repeat are dictionary-encoded, timestamps are nanoseconds UTC.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, MapArray, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::Signal;

/// Time zone of every timestamp column.
pub const TIMEZONE: &str = "UTC";

pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(TIMEZONE.into()))
}

/// Dictionary-encoded text, for strings that repeat (service, span name, metric name, keys).
pub fn dict_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

pub fn map_key_field() -> FieldRef {
    Arc::new(Field::new("key", dict_type(), false))
}

pub fn map_value_field() -> FieldRef {
    Arc::new(Field::new("value", DataType::Utf8, true))
}

/// The entries field of an attribute map.
pub fn attributes_entries_field() -> FieldRef {
    Arc::new(Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![map_key_field(), map_value_field()])),
        false,
    ))
}

/// `Map<key: dictionary text, value: text>`: every attribute as text, so that
/// `attributes['http.request.method']` works in SQL. Non-string values are rendered as text here
/// and kept exactly in the matching `*_typed` column.
pub fn attributes_type() -> DataType {
    DataType::Map(attributes_entries_field(), false)
}

/// The attribute map type as queries read it: values dictionary-encoded like the keys.
///
/// Attribute values repeat (a route, a method, a host) and Parquet stores them
/// dictionary-encoded, so reading them as a dictionary hands out indices instead of copying
/// every value of every attribute when a query asks for one key.
pub fn attributes_read_type() -> DataType {
    DataType::Map(attributes_read_entries_field(), false)
}

fn attributes_read_entry_fields() -> Fields {
    Fields::from(vec![
        map_key_field(),
        Arc::new(Field::new("value", dict_type(), true)),
    ])
}

fn attributes_read_entries_field() -> FieldRef {
    Arc::new(Field::new(
        "entries",
        DataType::Struct(attributes_read_entry_fields()),
        false,
    ))
}

/// `field` as queries read it: a top-level attribute map gets [`attributes_read_type`],
/// anything else stays as stored.
pub fn read_field(field: &Field) -> Field {
    if *field.data_type() == attributes_type() {
        field.clone().with_data_type(attributes_read_type())
    } else {
        field.clone()
    }
}

/// `schema` as queries read it (see [`read_field`]).
pub fn read_schema(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new_with_metadata(
        schema
            .fields()
            .iter()
            .map(|f| read_field(f))
            .collect::<Vec<_>>(),
        schema.metadata().clone(),
    ))
}

/// Converts a column to its [`read_field`] type: attribute maps with text values get their
/// values dictionary-encoded; every other column is returned as it is.
pub fn to_read_array(array: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    if *array.data_type() != attributes_type() {
        return Ok(array.clone());
    }
    let map = array.as_map();
    let entries = map.entries();
    let values = arrow::compute::cast(entries.column(1), &dict_type())?;
    let entries = StructArray::try_new(
        attributes_read_entry_fields(),
        vec![entries.column(0).clone(), values],
        entries.nulls().cloned(),
    )?;
    Ok(Arc::new(MapArray::try_new(
        attributes_read_entries_field(),
        map.offsets().clone(),
        entries,
        map.nulls().cloned(),
        false,
    )?))
}

fn attrs(name: &str) -> Field {
    Field::new(name, attributes_type(), false)
}

fn typed(name: &str) -> Field {
    Field::new(name, DataType::Binary, true)
}

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(name, timestamp_type(), nullable)
}

fn dict(name: &str, nullable: bool) -> Field {
    Field::new(name, dict_type(), nullable)
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn u32f(name: &str) -> Field {
    Field::new(name, DataType::UInt32, false)
}

fn list_of(name: &str, item: DataType, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", item, false))),
        nullable,
    )
}

/// Resource and scope columns, shared by every table, in this order.
pub(crate) fn resource_scope_fields() -> Vec<Field> {
    vec![
        dict("service_name", false),
        attrs("resource_attributes"),
        typed("resource_attributes_typed"),
        u32f("resource_dropped_attributes_count"),
        dict("resource_schema_url", false),
        Field::new("resource_entity_refs", DataType::Binary, true),
        dict("scope_name", false),
        dict("scope_version", false),
        attrs("scope_attributes"),
        typed("scope_attributes_typed"),
        u32f("scope_dropped_attributes_count"),
        dict("scope_schema_url", false),
    ]
}

pub fn event_fields() -> Fields {
    Fields::from(vec![
        ts("time", false),
        text("name", false),
        attrs("attributes"),
        typed("attributes_typed"),
        u32f("dropped_attributes_count"),
    ])
}

pub fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new("trace_id", DataType::Binary, false),
        Field::new("span_id", DataType::Binary, false),
        text("trace_state", false),
        attrs("attributes"),
        typed("attributes_typed"),
        u32f("dropped_attributes_count"),
        u32f("flags"),
    ])
}

/// Exemplars of a metric point: `value` is the point value as a double, `value_int` keeps an
/// integer exemplar exactly.
pub fn exemplar_fields() -> Fields {
    Fields::from(vec![
        ts("time", false),
        Field::new("value", DataType::Float64, true),
        Field::new("value_int", DataType::Int64, true),
        Field::new("span_id", DataType::Binary, false),
        Field::new("trace_id", DataType::Binary, false),
        attrs("filtered_attributes"),
        typed("filtered_attributes_typed"),
    ])
}

pub fn quantile_fields() -> Fields {
    Fields::from(vec![
        Field::new("quantile", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
    ])
}

fn with_resource(mut fields: Vec<Field>) -> SchemaRef {
    fields.extend(resource_scope_fields());
    Arc::new(Schema::new(fields))
}

static SPANS: LazyLock<SchemaRef> = LazyLock::new(|| {
    with_resource(vec![
        Field::new("trace_id", DataType::FixedSizeBinary(16), false),
        Field::new("span_id", DataType::FixedSizeBinary(8), false),
        Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
        text("trace_state", false),
        dict("name", false),
        dict("kind", false),
        ts("start_time", false),
        // `end_time` is not stored: it is exactly start_time + duration_ns, and the query
        // layer shows it as a column computed that way.
        Field::new("duration_ns", DataType::Int64, false),
        dict("status_code", false),
        text("status_message", false),
        attrs("attributes"),
        typed("attributes_typed"),
        Field::new(
            "events",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(event_fields()),
                false,
            ))),
            false,
        ),
        Field::new(
            "links",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(link_fields()),
                false,
            ))),
            false,
        ),
        u32f("flags"),
        u32f("dropped_attributes_count"),
        u32f("dropped_events_count"),
        u32f("dropped_links_count"),
    ])
});

static LOGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    with_resource(vec![
        // `time` is the record's time, or its observed time when the record had none
        // (`time_unset` then says so), so that every log sits at a meaningful instant.
        ts("time", false),
        ts("observed_time", false),
        Field::new("time_unset", DataType::Boolean, false),
        Field::new("severity_number", DataType::Int32, false),
        dict("severity_text", false),
        text("body", true),
        typed("body_typed"),
        Field::new("trace_id", DataType::FixedSizeBinary(16), true),
        Field::new("span_id", DataType::FixedSizeBinary(8), true),
        attrs("attributes"),
        typed("attributes_typed"),
        u32f("flags"),
        u32f("dropped_attributes_count"),
        dict("event_name", false),
    ])
});

/// Columns every metric table starts with.
fn metric_head() -> Vec<Field> {
    vec![
        ts("time", false),
        ts("start_time", false),
        dict("name", false),
        dict("description", false),
        dict("unit", false),
        attrs("attributes"),
        typed("attributes_typed"),
        u32f("flags"),
        list_of("exemplars", DataType::Struct(exemplar_fields()), false),
        attrs("metadata"),
        typed("metadata_typed"),
    ]
}

static METRICS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = metric_head();
    fields.extend([
        dict("type", false),
        Field::new("is_monotonic", DataType::Boolean, true),
        dict("temporality", true),
        Field::new("value", DataType::Float64, true),
        // Set when the point was an integer, which `value` (a double) may not hold exactly.
        Field::new("value_int", DataType::Int64, true),
    ]);
    with_resource(fields)
});

static HISTOGRAMS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = metric_head();
    fields.extend([
        dict("temporality", false),
        Field::new("count", DataType::UInt64, false),
        Field::new("sum", DataType::Float64, true),
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
        list_of("bucket_counts", DataType::UInt64, false),
        list_of("explicit_bounds", DataType::Float64, false),
    ]);
    with_resource(fields)
});

static EXP_HISTOGRAMS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = metric_head();
    fields.extend([
        dict("temporality", false),
        Field::new("count", DataType::UInt64, false),
        Field::new("sum", DataType::Float64, true),
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
        Field::new("scale", DataType::Int32, false),
        Field::new("zero_count", DataType::UInt64, false),
        Field::new("zero_threshold", DataType::Float64, false),
        // Offsets are null when the point had no bucket message on that side.
        Field::new("positive_offset", DataType::Int32, true),
        list_of("positive_bucket_counts", DataType::UInt64, false),
        Field::new("negative_offset", DataType::Int32, true),
        list_of("negative_bucket_counts", DataType::UInt64, false),
    ]);
    with_resource(fields)
});

static SUMMARIES: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = metric_head();
    fields.extend([
        Field::new("count", DataType::UInt64, false),
        Field::new("sum", DataType::Float64, false),
        list_of(
            "quantile_values",
            DataType::Struct(quantile_fields()),
            false,
        ),
    ]);
    with_resource(fields)
});

pub fn spans() -> SchemaRef {
    SPANS.clone()
}
pub fn logs() -> SchemaRef {
    LOGS.clone()
}
pub fn metrics() -> SchemaRef {
    METRICS.clone()
}
pub fn histograms() -> SchemaRef {
    HISTOGRAMS.clone()
}
pub fn exp_histograms() -> SchemaRef {
    EXP_HISTOGRAMS.clone()
}
pub fn summaries() -> SchemaRef {
    SUMMARIES.clone()
}

/// Columns that exist for lossless storage only; the SQL layer hides them.
pub fn is_storage_only_column(name: &str) -> bool {
    name.ends_with("_typed") || name == "resource_entity_refs" || name == "time_unset"
}

/// DESIGN.md's SQL columns per table: the names users, the UI and tests rely on. The SQL layer
/// shows each of them; storage holds each of them except [`COMPUTED_SQL_COLUMNS`].
pub fn design_sql_columns(signal: Signal) -> &'static [&'static str] {
    match signal {
        Signal::Spans => &[
            "trace_id",
            "span_id",
            "parent_span_id",
            "trace_state",
            "name",
            "kind",
            "service_name",
            "start_time",
            "end_time",
            "duration_ns",
            "status_code",
            "status_message",
            "attributes",
            "resource_attributes",
            "scope_name",
            "scope_version",
            "events",
            "links",
        ],
        Signal::Logs => &[
            "time",
            "observed_time",
            "severity_number",
            "severity_text",
            "body",
            "trace_id",
            "span_id",
            "service_name",
            "attributes",
            "resource_attributes",
            "scope_name",
        ],
        Signal::Metrics => &[
            "time",
            "start_time",
            "name",
            "description",
            "unit",
            "type",
            "is_monotonic",
            "temporality",
            "service_name",
            "attributes",
            "resource_attributes",
            "value",
        ],
        Signal::Histograms => &[
            "time",
            "start_time",
            "name",
            "unit",
            "service_name",
            "attributes",
            "resource_attributes",
            "count",
            "sum",
            "min",
            "max",
            "bucket_counts",
            "explicit_bounds",
            "temporality",
        ],
        _ => &[],
    }
}

/// The tables DESIGN.md names columns for.
pub const DESIGN_TABLES: [Signal; 4] = [
    Signal::Spans,
    Signal::Logs,
    Signal::Metrics,
    Signal::Histograms,
];

/// SQL columns the query layer computes from stored ones (`end_time` = start + duration).
pub const COMPUTED_SQL_COLUMNS: &[&str] = &["end_time"];

#[cfg(test)]
mod tests {

    use super::{COMPUTED_SQL_COLUMNS, DESIGN_TABLES, design_sql_columns};

    /// Storage columns behind DESIGN.md's SQL columns (the query layer's own test checks the
    /// SQL schema, computed columns included).
    #[test]
    fn contract_columns_exist() {
        for signal in DESIGN_TABLES {
            let schema = signal.schema();
            for c in design_sql_columns(signal) {
                if COMPUTED_SQL_COLUMNS.contains(c) {
                    continue;
                }
                assert!(schema.field_with_name(c).is_ok(), "{signal} lacks {c}");
            }
        }
    }
}

#[cfg(test)]
mod read_type_tests {
    use std::sync::Arc;

    use arrow::array::{
        Array, ArrayRef, AsArray, MapBuilder, StringBuilder, StringDictionaryBuilder,
    };
    use arrow::datatypes::Int32Type;

    use super::*;

    #[test]
    fn attribute_values_become_a_dictionary_with_the_same_entries() {
        let mut b = MapBuilder::new(
            None,
            StringDictionaryBuilder::<Int32Type>::new(),
            StringBuilder::new(),
        )
        .with_keys_field(map_key_field())
        .with_values_field(map_value_field());
        b.keys().append_value("http.route");
        b.values().append_value("/a");
        b.keys().append_value("user.id");
        b.values().append_null();
        b.append(true).unwrap();
        b.append(true).unwrap();
        b.keys().append_value("http.route");
        b.values().append_value("/a");
        b.append(true).unwrap();
        let stored: ArrayRef = Arc::new(b.finish());
        assert_eq!(*stored.data_type(), attributes_type());

        let read = to_read_array(&stored).unwrap();
        assert_eq!(*read.data_type(), attributes_read_type());
        let map = read.as_map();
        assert_eq!(map.value_offsets(), &[0, 2, 2, 3]);
        let values = map.values().as_dictionary::<Int32Type>();
        assert_eq!(values.values().len(), 1, "one distinct value");
        assert!(values.is_null(1));
        assert_eq!(values.keys().value(0), values.keys().value(2));

        let schema = read_schema(&crate::schema::spans());
        let attrs = schema.field_with_name("attributes").unwrap();
        assert_eq!(*attrs.data_type(), attributes_read_type());
        let name = schema.field_with_name("name").unwrap();
        assert_eq!(
            name,
            crate::schema::spans().field_with_name("name").unwrap()
        );
        // Anything that is not an attribute map passes through untouched.
        let ids = crate::schema::spans().fields().len();
        assert_eq!(schema.fields().len(), ids);
    }
}
