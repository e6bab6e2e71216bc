//! Spans: OTLP `ExportTraceServiceRequest` <-> the `spans` table.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, FixedSizeBinaryArray, FixedSizeBinaryBuilder,
    Int64Array, Int64Builder, StringArray, StringBuilder, StructArray, TimestampNanosecondArray,
    TimestampNanosecondBuilder, UInt32Array, UInt32Builder,
};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

use crate::attributes::{AttributesBuilder, AttributesReader};
use crate::enums::{span_kind_name, span_kind_number, status_code_name, status_code_number};
use crate::ids::{SPAN_ID_LEN, TRACE_ID_LEN, is_valid_span_id, is_valid_trace_id, to_hex};
use crate::otlp::collector::trace::v1::ExportTraceServiceRequest;
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use crate::resource::{Origin, ResourceScopeBuilder, ResourceScopeReader, RowOrigin};
use crate::schema::{TIMEZONE, event_fields, link_fields};
use crate::util::{Columns, DictBuilder, ListOffsets, nanos, unnanos};
use crate::{Converted, ModelError, Signal, SignalBatch};

/// Why a span is rejected, or `None` when it is valid.
fn invalid_reason(span: &Span) -> Option<String> {
    if !is_valid_trace_id(&span.trace_id) {
        return Some(format!(
            "span has an invalid trace_id `{}` ({} bytes): it must be 16 bytes, not all zero",
            to_hex(&span.trace_id),
            span.trace_id.len()
        ));
    }
    if !is_valid_span_id(&span.span_id) {
        return Some(format!(
            "span in trace {} has an invalid span_id `{}` ({} bytes): it must be 8 bytes, not all zero",
            to_hex(&span.trace_id),
            to_hex(&span.span_id),
            span.span_id.len()
        ));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != SPAN_ID_LEN {
        return Some(format!(
            "span {} has a parent_span_id of {} bytes: it must be empty or 8 bytes",
            to_hex(&span.span_id),
            span.parent_span_id.len()
        ));
    }
    None
}

struct EventsBuilder {
    time: TimestampNanosecondBuilder,
    name: StringBuilder,
    attributes: AttributesBuilder,
    dropped: UInt32Builder,
    offsets: ListOffsets,
    len: usize,
}

impl Default for EventsBuilder {
    fn default() -> Self {
        EventsBuilder {
            time: TimestampNanosecondBuilder::new().with_timezone(TIMEZONE),
            name: StringBuilder::new(),
            attributes: AttributesBuilder::new(),
            dropped: UInt32Builder::new(),
            offsets: ListOffsets::default(),
            len: 0,
        }
    }
}

impl EventsBuilder {
    fn append(&mut self, events: &[span::Event]) -> Result<(), ModelError> {
        for e in events {
            self.time.append_value(nanos(e.time_unix_nano));
            self.name.append_value(&e.name);
            self.attributes.append(&e.attributes)?;
            self.dropped.append_value(e.dropped_attributes_count);
        }
        self.len += events.len();
        self.offsets.push(self.len);
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let (attrs, typed) = self.attributes.finish();
        let fields = event_fields();
        let values = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(self.time.finish()),
                Arc::new(self.name.finish()),
                attrs,
                typed,
                Arc::new(self.dropped.finish()),
            ],
            None,
        );
        self.len = 0;
        self.offsets
            .finish(list_item(DataType::Struct(fields)), Arc::new(values))
    }
}

fn list_item(item: DataType) -> Arc<arrow::datatypes::Field> {
    Arc::new(arrow::datatypes::Field::new("item", item, false))
}

#[derive(Default)]
struct LinksBuilder {
    trace_id: BinaryBuilder,
    span_id: BinaryBuilder,
    trace_state: StringBuilder,
    attributes: AttributesBuilder,
    dropped: UInt32Builder,
    flags: UInt32Builder,
    offsets: ListOffsets,
    len: usize,
}

impl LinksBuilder {
    fn append(&mut self, links: &[span::Link]) -> Result<(), ModelError> {
        for l in links {
            self.trace_id.append_value(&l.trace_id);
            self.span_id.append_value(&l.span_id);
            self.trace_state.append_value(&l.trace_state);
            self.attributes.append(&l.attributes)?;
            self.dropped.append_value(l.dropped_attributes_count);
            self.flags.append_value(l.flags);
        }
        self.len += links.len();
        self.offsets.push(self.len);
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        let (attrs, typed) = self.attributes.finish();
        let fields = link_fields();
        let values = StructArray::new(
            fields.clone(),
            vec![
                Arc::new(self.trace_id.finish()),
                Arc::new(self.span_id.finish()),
                Arc::new(self.trace_state.finish()),
                attrs,
                typed,
                Arc::new(self.dropped.finish()),
                Arc::new(self.flags.finish()),
            ],
            None,
        );
        self.len = 0;
        self.offsets
            .finish(list_item(DataType::Struct(fields)), Arc::new(values))
    }
}

/// Accumulates spans into columns of the `spans` schema.
pub struct SpansBuilder {
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent_span_id: FixedSizeBinaryBuilder,
    trace_state: StringBuilder,
    name: DictBuilder,
    kind: DictBuilder,
    start_time: TimestampNanosecondBuilder,
    duration: Int64Builder,
    status_code: DictBuilder,
    status_message: StringBuilder,
    attributes: AttributesBuilder,
    events: EventsBuilder,
    links: LinksBuilder,
    flags: UInt32Builder,
    dropped_attributes: UInt32Builder,
    dropped_events: UInt32Builder,
    dropped_links: UInt32Builder,
    origin: ResourceScopeBuilder,
    rows: usize,
}

impl Default for SpansBuilder {
    fn default() -> Self {
        SpansBuilder {
            trace_id: FixedSizeBinaryBuilder::new(TRACE_ID_LEN as i32),
            span_id: FixedSizeBinaryBuilder::new(SPAN_ID_LEN as i32),
            parent_span_id: FixedSizeBinaryBuilder::new(SPAN_ID_LEN as i32),
            trace_state: StringBuilder::new(),
            name: DictBuilder::new(),
            kind: DictBuilder::new(),
            start_time: TimestampNanosecondBuilder::new().with_timezone(TIMEZONE),
            duration: Int64Builder::new(),
            status_code: DictBuilder::new(),
            status_message: StringBuilder::new(),
            attributes: AttributesBuilder::new(),
            events: EventsBuilder::default(),
            links: LinksBuilder::default(),
            flags: UInt32Builder::new(),
            dropped_attributes: UInt32Builder::new(),
            dropped_events: UInt32Builder::new(),
            dropped_links: UInt32Builder::new(),
            origin: ResourceScopeBuilder::default(),
            rows: 0,
        }
    }
}

impl SpansBuilder {
    /// Appends a span that passed validation.
    fn append(&mut self, span: &Span, origin: &Origin<'_>) -> Result<(), ModelError> {
        let arrow = ModelError::arrow("appending a span id");
        self.trace_id.append_value(&span.trace_id).map_err(arrow)?;
        self.span_id
            .append_value(&span.span_id)
            .map_err(ModelError::arrow("appending a span id"))?;
        if span.parent_span_id.is_empty() {
            self.parent_span_id.append_null();
        } else {
            self.parent_span_id
                .append_value(&span.parent_span_id)
                .map_err(ModelError::arrow("appending a parent span id"))?;
        }
        self.trace_state.append_value(&span.trace_state);
        self.name.append_value(&span.name)?;
        self.kind.append_value(span_kind_name(span.kind))?;
        let (start, end) = (
            nanos(span.start_time_unix_nano),
            nanos(span.end_time_unix_nano),
        );
        self.start_time.append_value(start);
        self.duration.append_value(end.wrapping_sub(start));
        let status = span.status.as_ref();
        self.status_code
            .append_value(status_code_name(status.map(|s| s.code).unwrap_or(0)))?;
        self.status_message
            .append_value(status.map(|s| s.message.as_str()).unwrap_or(""));
        self.attributes.append(&span.attributes)?;
        self.events.append(&span.events)?;
        self.links.append(&span.links)?;
        self.flags.append_value(span.flags);
        self.dropped_attributes
            .append_value(span.dropped_attributes_count);
        self.dropped_events.append_value(span.dropped_events_count);
        self.dropped_links.append_value(span.dropped_links_count);
        self.origin.append(origin)?;
        self.rows += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ModelError> {
        let (attrs, attrs_typed) = self.attributes.finish();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent_span_id.finish()),
            Arc::new(self.trace_state.finish()),
            self.name.finish(),
            self.kind.finish(),
            Arc::new(self.start_time.finish()),
            Arc::new(self.duration.finish()),
            self.status_code.finish(),
            Arc::new(self.status_message.finish()),
            attrs,
            attrs_typed,
            self.events.finish(),
            self.links.finish(),
            Arc::new(self.flags.finish()),
            Arc::new(self.dropped_attributes.finish()),
            Arc::new(self.dropped_events.finish()),
            Arc::new(self.dropped_links.finish()),
        ];
        columns.extend(self.origin.finish());
        self.rows = 0;
        RecordBatch::try_new(Signal::Spans.schema(), columns)
            .map_err(ModelError::arrow("assembling a spans batch"))
    }
}

/// Converts a trace export request into a `spans` batch. Invalid spans (bad trace or span id)
/// are counted in `rejected` and left out; the rest are kept.
/// A spans batch of `traces` traces with `spans_per_trace` spans each (trace ids `[t; 16]`,
/// span ids `[s; 8]`, everything else default), for tests of the parts that move batches.
#[doc(hidden)]
pub fn sample_batch(traces: u8, spans_per_trace: u8) -> Result<crate::SignalBatch, ModelError> {
    use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let spans = (1..=traces)
        .flat_map(|t| {
            (1..=spans_per_trace).map(move |s| Span {
                trace_id: [t; 16].to_vec(),
                span_id: [s; 8].to_vec(),
                ..Default::default()
            })
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut converted = spans_from_otlp(&request)?;
    Ok(converted.batches.remove(0))
}

pub fn spans_from_otlp(request: &ExportTraceServiceRequest) -> Result<Converted, ModelError> {
    let mut out = Converted::default();
    let mut builder = SpansBuilder::default();
    for rs in &request.resource_spans {
        for ss in &rs.scope_spans {
            let origin = Origin {
                resource: rs.resource.as_ref(),
                resource_schema_url: &rs.schema_url,
                scope: ss.scope.as_ref(),
                scope_schema_url: &ss.schema_url,
            };
            for span in &ss.spans {
                if let Some(reason) = invalid_reason(span) {
                    out.reject(|| reason);
                    continue;
                }
                builder.append(span, &origin)?;
                out.accepted += 1;
            }
        }
    }
    if !builder.is_empty() {
        out.batches
            .push(SignalBatch::new(Signal::Spans, builder.finish()?));
    }
    Ok(out)
}

/// Converts `spans` batches back into an OTLP request. Consecutive rows from the same resource
/// and scope share one `ResourceSpans` / `ScopeSpans`.
pub fn spans_to_otlp(batches: &[RecordBatch]) -> Result<ExportTraceServiceRequest, ModelError> {
    let mut request = ExportTraceServiceRequest::default();
    for batch in batches {
        let cols = Columns::new(batch, "spans");
        let trace_id: &FixedSizeBinaryArray = cols.get("trace_id")?;
        let span_id: &FixedSizeBinaryArray = cols.get("span_id")?;
        let parent: &FixedSizeBinaryArray = cols.get("parent_span_id")?;
        let trace_state: &StringArray = cols.get("trace_state")?;
        let name = cols.dict("name")?;
        let kind = cols.dict("kind")?;
        let start: &TimestampNanosecondArray = cols.get("start_time")?;
        let duration: &Int64Array = cols.get("duration_ns")?;
        let status_code = cols.dict("status_code")?;
        let status_message: &StringArray = cols.get("status_message")?;
        let attributes = AttributesReader::new(
            cols.array("attributes")?.as_ref(),
            cols.array("attributes_typed")?.as_ref(),
            "attributes",
        )?;
        let events = cols.list("events")?;
        let links = cols.list("links")?;
        let flags: &UInt32Array = cols.get("flags")?;
        let dropped_attributes: &UInt32Array = cols.get("dropped_attributes_count")?;
        let dropped_events: &UInt32Array = cols.get("dropped_events_count")?;
        let dropped_links: &UInt32Array = cols.get("dropped_links_count")?;
        let origins = ResourceScopeReader::new(&cols)?;
        let events = EventsReader::new(events)?;
        let links = LinksReader::new(links)?;

        for i in 0..batch.num_rows() {
            let code = status_code_number(status_code.value(i)).unwrap_or(0);
            let message = status_message.value(i);
            let span = Span {
                trace_id: trace_id.value(i).to_vec(),
                span_id: span_id.value(i).to_vec(),
                trace_state: trace_state.value(i).to_string(),
                parent_span_id: if parent.is_null(i) {
                    Vec::new()
                } else {
                    parent.value(i).to_vec()
                },
                flags: flags.value(i),
                name: name.value(i).to_string(),
                kind: span_kind_number(kind.value(i)).unwrap_or(0),
                start_time_unix_nano: unnanos(start.value(i)),
                // Not stored: exactly start + duration (both wrap, so any u64 comes back).
                end_time_unix_nano: unnanos(start.value(i).wrapping_add(duration.value(i))),
                attributes: attributes.row(i)?,
                dropped_attributes_count: dropped_attributes.value(i),
                events: events.row(i)?,
                dropped_events_count: dropped_events.value(i),
                links: links.row(i)?,
                dropped_links_count: dropped_links.value(i),
                status: (code != 0 || !message.is_empty()).then(|| Status {
                    message: message.to_string(),
                    code,
                }),
            };
            let origin = origins.row(i)?;
            push_span(&mut request, origin, span);
        }
    }
    Ok(request)
}

fn push_span(request: &mut ExportTraceServiceRequest, origin: RowOrigin, span: Span) {
    let same_resource = request.resource_spans.last().is_some_and(|rs| {
        rs.resource.as_ref() == Some(&origin.resource)
            && rs.schema_url == origin.resource_schema_url
    });
    if !same_resource {
        request.resource_spans.push(ResourceSpans {
            resource: Some(origin.resource),
            scope_spans: Vec::new(),
            schema_url: origin.resource_schema_url,
        });
    }
    let rs = request
        .resource_spans
        .last_mut()
        .expect("a resource was pushed above");
    let same_scope = rs.scope_spans.last().is_some_and(|ss| {
        ss.scope.as_ref() == Some(&origin.scope) && ss.schema_url == origin.scope_schema_url
    });
    if !same_scope {
        rs.scope_spans.push(ScopeSpans {
            scope: Some(origin.scope),
            spans: Vec::new(),
            schema_url: origin.scope_schema_url,
        });
    }
    rs.scope_spans
        .last_mut()
        .expect("a scope was pushed above")
        .spans
        .push(span);
}

struct EventsReader<'a> {
    list: &'a arrow::array::ListArray,
    time: &'a TimestampNanosecondArray,
    name: &'a StringArray,
    attributes: AttributesReader<'a>,
    dropped: &'a UInt32Array,
}

fn struct_child<'a, T: Array + 'static>(
    s: &'a StructArray,
    name: &str,
) -> Result<&'a T, ModelError> {
    s.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ModelError::Column {
            table: "spans",
            column: name.to_string(),
        })
}

fn list_struct<'a>(
    list: &'a arrow::array::ListArray,
    column: &str,
) -> Result<&'a StructArray, ModelError> {
    list.values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| ModelError::Column {
            table: "spans",
            column: column.to_string(),
        })
}

impl<'a> EventsReader<'a> {
    fn new(list: &'a arrow::array::ListArray) -> Result<Self, ModelError> {
        let s = list_struct(list, "events")?;
        Ok(EventsReader {
            list,
            time: struct_child(s, "time")?,
            name: struct_child(s, "name")?,
            attributes: AttributesReader::new(
                s.column_by_name("attributes")
                    .map(|a| a.as_ref())
                    .ok_or_else(|| ModelError::Column {
                        table: "spans",
                        column: "events.attributes".into(),
                    })?,
                s.column_by_name("attributes_typed")
                    .map(|a| a.as_ref())
                    .ok_or_else(|| ModelError::Column {
                        table: "spans",
                        column: "events.attributes_typed".into(),
                    })?,
                "events.attributes",
            )?,
            dropped: struct_child(s, "dropped_attributes_count")?,
        })
    }

    fn row(&self, row: usize) -> Result<Vec<span::Event>, ModelError> {
        let offsets = self.list.value_offsets();
        (offsets[row] as usize..offsets[row + 1] as usize)
            .map(|i| {
                Ok(span::Event {
                    time_unix_nano: unnanos(self.time.value(i)),
                    name: self.name.value(i).to_string(),
                    attributes: self.attributes.row(i)?,
                    dropped_attributes_count: self.dropped.value(i),
                })
            })
            .collect()
    }
}

struct LinksReader<'a> {
    list: &'a arrow::array::ListArray,
    trace_id: &'a BinaryArray,
    span_id: &'a BinaryArray,
    trace_state: &'a StringArray,
    attributes: AttributesReader<'a>,
    dropped: &'a UInt32Array,
    flags: &'a UInt32Array,
}

impl<'a> LinksReader<'a> {
    fn new(list: &'a arrow::array::ListArray) -> Result<Self, ModelError> {
        let s = list_struct(list, "links")?;
        let col = |name: &str| {
            s.column_by_name(name)
                .map(|a| a.as_ref())
                .ok_or_else(|| ModelError::Column {
                    table: "spans",
                    column: format!("links.{name}"),
                })
        };
        Ok(LinksReader {
            list,
            trace_id: struct_child(s, "trace_id")?,
            span_id: struct_child(s, "span_id")?,
            trace_state: struct_child(s, "trace_state")?,
            attributes: AttributesReader::new(
                col("attributes")?,
                col("attributes_typed")?,
                "links.attributes",
            )?,
            dropped: struct_child(s, "dropped_attributes_count")?,
            flags: struct_child(s, "flags")?,
        })
    }

    fn row(&self, row: usize) -> Result<Vec<span::Link>, ModelError> {
        let offsets = self.list.value_offsets();
        (offsets[row] as usize..offsets[row + 1] as usize)
            .map(|i| {
                Ok(span::Link {
                    trace_id: self.trace_id.value(i).to_vec(),
                    span_id: self.span_id.value(i).to_vec(),
                    trace_state: self.trace_state.value(i).to_string(),
                    attributes: self.attributes.row(i)?,
                    dropped_attributes_count: self.dropped.value(i),
                    flags: self.flags.value(i),
                })
            })
            .collect()
    }
}
