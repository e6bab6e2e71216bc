//! Logs: OTLP `ExportLogsServiceRequest` <-> the `logs` table.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder,
    FixedSizeBinaryArray, FixedSizeBinaryBuilder, Int32Array, Int32Builder, StringArray,
    StringBuilder, TimestampNanosecondArray, TimestampNanosecondBuilder, UInt32Array,
    UInt32Builder,
};
use arrow::record_batch::RecordBatch;
use prost::Message;

use crate::attributes::{AttributesBuilder, AttributesReader, value_text};
use crate::ids::{SPAN_ID_LEN, TRACE_ID_LEN, to_hex};
use crate::otlp::collector::logs::v1::ExportLogsServiceRequest;
use crate::otlp::common::v1::{AnyValue, any_value::Value};
use crate::otlp::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use crate::resource::{Origin, ResourceScopeBuilder, ResourceScopeReader, RowOrigin};
use crate::schema::TIMEZONE;
use crate::util::{Columns, DictBuilder, nanos, unnanos};
use crate::{Converted, ModelError, Signal, SignalBatch};

fn invalid_reason(record: &LogRecord) -> Option<String> {
    if !record.trace_id.is_empty() && record.trace_id.len() != TRACE_ID_LEN {
        return Some(format!(
            "log record has a trace_id `{}` of {} bytes: it must be empty or 16 bytes",
            to_hex(&record.trace_id),
            record.trace_id.len()
        ));
    }
    if !record.span_id.is_empty() && record.span_id.len() != SPAN_ID_LEN {
        return Some(format!(
            "log record has a span_id `{}` of {} bytes: it must be empty or 8 bytes",
            to_hex(&record.span_id),
            record.span_id.len()
        ));
    }
    None
}

/// Accumulates log records into columns of the `logs` schema.
pub struct LogsBuilder {
    time: TimestampNanosecondBuilder,
    observed_time: TimestampNanosecondBuilder,
    time_unset: BooleanBuilder,
    severity_number: Int32Builder,
    severity_text: DictBuilder,
    body: StringBuilder,
    body_typed: BinaryBuilder,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    attributes: AttributesBuilder,
    flags: UInt32Builder,
    dropped_attributes: UInt32Builder,
    event_name: DictBuilder,
    origin: ResourceScopeBuilder,
    rows: usize,
}

impl Default for LogsBuilder {
    fn default() -> Self {
        LogsBuilder {
            time: TimestampNanosecondBuilder::new().with_timezone(TIMEZONE),
            observed_time: TimestampNanosecondBuilder::new().with_timezone(TIMEZONE),
            time_unset: BooleanBuilder::new(),
            severity_number: Int32Builder::new(),
            severity_text: DictBuilder::new(),
            body: StringBuilder::new(),
            body_typed: BinaryBuilder::new(),
            trace_id: FixedSizeBinaryBuilder::new(TRACE_ID_LEN as i32),
            span_id: FixedSizeBinaryBuilder::new(SPAN_ID_LEN as i32),
            attributes: AttributesBuilder::new(),
            flags: UInt32Builder::new(),
            dropped_attributes: UInt32Builder::new(),
            event_name: DictBuilder::new(),
            origin: ResourceScopeBuilder::default(),
            rows: 0,
        }
    }
}

impl LogsBuilder {
    fn append(&mut self, r: &LogRecord, origin: &Origin<'_>) -> Result<(), ModelError> {
        let unset = r.time_unix_nano == 0;
        let time = if unset {
            r.observed_time_unix_nano
        } else {
            r.time_unix_nano
        };
        self.time.append_value(nanos(time));
        self.observed_time
            .append_value(nanos(r.observed_time_unix_nano));
        self.time_unset.append_value(unset);
        self.severity_number.append_value(r.severity_number);
        self.severity_text.append_value(&r.severity_text)?;
        match r.body.as_ref() {
            None => {
                self.body.append_null();
                self.body_typed.append_null();
            }
            Some(AnyValue {
                value: Some(Value::StringValue(s)),
            }) => {
                self.body.append_value(s);
                self.body_typed.append_null();
            }
            Some(other) => {
                self.body.append_option(value_text(other));
                self.body_typed.append_value(other.encode_to_vec());
            }
        }
        if r.trace_id.is_empty() {
            self.trace_id.append_null();
        } else {
            self.trace_id
                .append_value(&r.trace_id)
                .map_err(ModelError::arrow("appending a log trace id"))?;
        }
        if r.span_id.is_empty() {
            self.span_id.append_null();
        } else {
            self.span_id
                .append_value(&r.span_id)
                .map_err(ModelError::arrow("appending a log span id"))?;
        }
        self.attributes.append(&r.attributes)?;
        self.flags.append_value(r.flags);
        self.dropped_attributes
            .append_value(r.dropped_attributes_count);
        self.event_name.append_value(&r.event_name)?;
        self.origin.append(origin)?;
        self.rows += 1;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn finish(&mut self) -> Result<RecordBatch, ModelError> {
        let (attrs, attrs_typed) = self.attributes.finish();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.observed_time.finish()),
            Arc::new(self.time_unset.finish()),
            Arc::new(self.severity_number.finish()),
            self.severity_text.finish(),
            Arc::new(self.body.finish()),
            Arc::new(self.body_typed.finish()),
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            attrs,
            attrs_typed,
            Arc::new(self.flags.finish()),
            Arc::new(self.dropped_attributes.finish()),
            self.event_name.finish(),
        ];
        columns.extend(self.origin.finish());
        self.rows = 0;
        RecordBatch::try_new(Signal::Logs.schema(), columns)
            .map_err(ModelError::arrow("assembling a logs batch"))
    }
}

/// Converts a logs export request into a `logs` batch; records with malformed ids are rejected.
pub fn logs_from_otlp(request: &ExportLogsServiceRequest) -> Result<Converted, ModelError> {
    let mut out = Converted::default();
    let mut builder = LogsBuilder::default();
    for rl in &request.resource_logs {
        for sl in &rl.scope_logs {
            let origin = Origin {
                resource: rl.resource.as_ref(),
                resource_schema_url: &rl.schema_url,
                scope: sl.scope.as_ref(),
                scope_schema_url: &sl.schema_url,
            };
            for record in &sl.log_records {
                if let Some(reason) = invalid_reason(record) {
                    out.reject(|| reason);
                    continue;
                }
                builder.append(record, &origin)?;
                out.accepted += 1;
            }
        }
    }
    if !builder.is_empty() {
        out.batches
            .push(SignalBatch::new(Signal::Logs, builder.finish()?));
    }
    Ok(out)
}

/// Converts `logs` batches back into an OTLP request.
pub fn logs_to_otlp(batches: &[RecordBatch]) -> Result<ExportLogsServiceRequest, ModelError> {
    let mut request = ExportLogsServiceRequest::default();
    for batch in batches {
        let cols = Columns::new(batch, "logs");
        let time: &TimestampNanosecondArray = cols.get("time")?;
        let observed: &TimestampNanosecondArray = cols.get("observed_time")?;
        let unset: &BooleanArray = cols.get("time_unset")?;
        let severity_number: &Int32Array = cols.get("severity_number")?;
        let severity_text = cols.dict("severity_text")?;
        let body: &StringArray = cols.get("body")?;
        let body_typed: &BinaryArray = cols.get("body_typed")?;
        let trace_id: &FixedSizeBinaryArray = cols.get("trace_id")?;
        let span_id: &FixedSizeBinaryArray = cols.get("span_id")?;
        let attributes = AttributesReader::new(
            cols.array("attributes")?.as_ref(),
            cols.array("attributes_typed")?.as_ref(),
            "attributes",
        )?;
        let flags: &UInt32Array = cols.get("flags")?;
        let dropped: &UInt32Array = cols.get("dropped_attributes_count")?;
        let event_name = cols.dict("event_name")?;
        let origins = ResourceScopeReader::new(&cols)?;
        for i in 0..batch.num_rows() {
            let body = if body_typed.is_valid(i) {
                Some(
                    AnyValue::decode(body_typed.value(i)).map_err(|e| ModelError::Sidecar {
                        column: "body_typed".into(),
                        reason: e.to_string(),
                    })?,
                )
            } else if body.is_valid(i) {
                Some(AnyValue {
                    value: Some(Value::StringValue(body.value(i).to_string())),
                })
            } else {
                None
            };
            let record = LogRecord {
                time_unix_nano: if unset.value(i) {
                    0
                } else {
                    unnanos(time.value(i))
                },
                observed_time_unix_nano: unnanos(observed.value(i)),
                severity_number: severity_number.value(i),
                severity_text: severity_text.value(i).to_string(),
                body,
                attributes: attributes.row(i)?,
                dropped_attributes_count: dropped.value(i),
                flags: flags.value(i),
                trace_id: if trace_id.is_null(i) {
                    Vec::new()
                } else {
                    trace_id.value(i).to_vec()
                },
                span_id: if span_id.is_null(i) {
                    Vec::new()
                } else {
                    span_id.value(i).to_vec()
                },
                event_name: event_name.value(i).to_string(),
            };
            let origin = origins.row(i)?;
            push_record(&mut request, origin, record);
        }
    }
    Ok(request)
}

fn push_record(request: &mut ExportLogsServiceRequest, origin: RowOrigin, record: LogRecord) {
    let same_resource = request.resource_logs.last().is_some_and(|rl| {
        rl.resource.as_ref() == Some(&origin.resource)
            && rl.schema_url == origin.resource_schema_url
    });
    if !same_resource {
        request.resource_logs.push(ResourceLogs {
            resource: Some(origin.resource),
            scope_logs: Vec::new(),
            schema_url: origin.resource_schema_url,
        });
    }
    let rl = request
        .resource_logs
        .last_mut()
        .expect("a resource was pushed above");
    let same_scope = rl.scope_logs.last().is_some_and(|sl| {
        sl.scope.as_ref() == Some(&origin.scope) && sl.schema_url == origin.scope_schema_url
    });
    if !same_scope {
        rl.scope_logs.push(ScopeLogs {
            scope: Some(origin.scope),
            log_records: Vec::new(),
            schema_url: origin.scope_schema_url,
        });
    }
    rl.scope_logs
        .last_mut()
        .expect("a scope was pushed above")
        .log_records
        .push(record);
}
