//! Traces by id, with every span's attributes in their OTLP types.

use arrow::array::{Array, BooleanArray, FixedSizeBinaryArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use oxeye_model::Signal;
use oxeye_model::attributes::value_json;
use oxeye_model::enums::{span_kind_name, status_code_name};
use oxeye_model::ids::{parse_trace_id, to_hex};
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::otlp::common::v1::KeyValue;
use oxeye_store::{IndexPredicate, ScanRequest, Store};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::QueryError;
use crate::http::{ApiQuery, ApiState, bad_request, error_response};

/// Attributes as a JSON object with typed values (the last value wins for a repeated key).
pub fn attributes_json(attrs: &[KeyValue]) -> Value {
    let mut m = Map::new();
    for kv in attrs {
        m.insert(
            kv.key.clone(),
            kv.value.as_ref().map(value_json).unwrap_or(Value::Null),
        );
    }
    Value::Object(m)
}

/// RFC 3339 text of nanoseconds since the epoch.
pub fn rfc3339(nanos: u64) -> String {
    let secs = (nanos / 1_000_000_000) as i64;
    let sub = (nanos % 1_000_000_000) as u32;
    // Days/civil conversion (proleptic Gregorian), to avoid a date library in this crate.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{sub:09}Z")
}

/// Rows of `trace_id` only (index hits are granules, which may hold other traces).
fn only_trace(batch: &RecordBatch, id: &[u8; 16]) -> Result<RecordBatch, QueryError> {
    let ids = batch
        .column_by_name("trace_id")
        .and_then(|c| c.as_any().downcast_ref::<FixedSizeBinaryArray>())
        .ok_or_else(|| QueryError::Internal("spans batch without trace_id".into()))?;
    let mask: BooleanArray = (0..ids.len())
        .map(|i| Some(ids.is_valid(i) && ids.value(i) == id))
        .collect();
    filter_record_batch(batch, &mask).map_err(|e| QueryError::Internal(e.to_string()))
}

/// All spans of a trace, as storage batches (no time range needed: the index finds it).
pub async fn trace_batches(store: &Store, id: [u8; 16]) -> Result<Vec<RecordBatch>, QueryError> {
    let request = ScanRequest {
        index: Some(IndexPredicate::TraceId(id)),
        ..ScanRequest::all(Signal::Spans)
    };
    let stream = store
        .scan(request, None)
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    let batches: Vec<RecordBatch> = stream
        .try_collect()
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    batches
        .iter()
        .map(|b| only_trace(b, &id))
        .filter(|r| r.as_ref().map(|b| b.num_rows() > 0).unwrap_or(true))
        .collect()
}

/// A trace as OTLP (lossless).
pub async fn trace_otlp(
    store: &Store,
    id: [u8; 16],
) -> Result<ExportTraceServiceRequest, QueryError> {
    let batches = trace_batches(store, id).await?;
    oxeye_model::spans::spans_to_otlp(&batches).map_err(|e| QueryError::Internal(e.to_string()))
}

/// oxeye's trace JSON: spans sorted by start time, each with its resource and scope.
pub fn trace_json(id: [u8; 16], request: &ExportTraceServiceRequest) -> Value {
    let mut spans = Vec::new();
    let mut services = std::collections::BTreeSet::new();
    for rs in &request.resource_spans {
        let resource = rs.resource.clone().unwrap_or_default();
        let service = oxeye_model::otlp::resource::v1::Resource::clone(&resource);
        let service_name = service
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(value_json)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown_service".into());
        services.insert(service_name.clone());
        for ss in &rs.scope_spans {
            let scope = ss.scope.clone().unwrap_or_default();
            for s in &ss.spans {
                let status = s.status.clone().unwrap_or_default();
                spans.push(json!({
                    "trace_id": to_hex(&s.trace_id),
                    "span_id": to_hex(&s.span_id),
                    "parent_span_id": if s.parent_span_id.is_empty() { Value::Null } else { Value::String(to_hex(&s.parent_span_id)) },
                    "trace_state": s.trace_state,
                    "name": s.name,
                    "kind": span_kind_name(s.kind),
                    "service_name": service_name,
                    "start_time": rfc3339(s.start_time_unix_nano),
                    "end_time": rfc3339(s.end_time_unix_nano),
                    "start_time_unix_nano": s.start_time_unix_nano.to_string(),
                    "end_time_unix_nano": s.end_time_unix_nano.to_string(),
                    "duration_ns": (s.end_time_unix_nano as i64).wrapping_sub(s.start_time_unix_nano as i64),
                    "status": {"code": status_code_name(status.code), "message": status.message},
                    "flags": s.flags,
                    "attributes": attributes_json(&s.attributes),
                    "dropped_attributes_count": s.dropped_attributes_count,
                    "events": s.events.iter().map(|e| json!({
                        "time": rfc3339(e.time_unix_nano),
                        "time_unix_nano": e.time_unix_nano.to_string(),
                        "name": e.name,
                        "attributes": attributes_json(&e.attributes),
                        "dropped_attributes_count": e.dropped_attributes_count,
                    })).collect::<Vec<_>>(),
                    "dropped_events_count": s.dropped_events_count,
                    "links": s.links.iter().map(|l| json!({
                        "trace_id": to_hex(&l.trace_id),
                        "span_id": to_hex(&l.span_id),
                        "trace_state": l.trace_state,
                        "attributes": attributes_json(&l.attributes),
                        "flags": l.flags,
                    })).collect::<Vec<_>>(),
                    "dropped_links_count": s.dropped_links_count,
                    "resource": {
                        "attributes": attributes_json(&resource.attributes),
                        "schema_url": rs.schema_url,
                    },
                    "scope": {
                        "name": scope.name,
                        "version": scope.version,
                        "attributes": attributes_json(&scope.attributes),
                    },
                }));
            }
        }
    }
    spans.sort_by(|a, b| {
        let k = |v: &Value| {
            v["start_time_unix_nano"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        k(a).cmp(&k(b))
    });
    let start = spans
        .iter()
        .filter_map(|s| s["start_time_unix_nano"].as_str()?.parse::<u64>().ok())
        .min();
    let end = spans
        .iter()
        .filter_map(|s| s["end_time_unix_nano"].as_str()?.parse::<u64>().ok())
        .max();
    json!({
        "trace_id": to_hex(&id),
        "span_count": spans.len(),
        "services": services.into_iter().collect::<Vec<_>>(),
        "start_time": start.map(rfc3339),
        "duration_ns": match (start, end) { (Some(s), Some(e)) => Value::from(e.saturating_sub(s)), _ => Value::Null },
        "spans": spans,
    })
}

#[derive(Deserialize)]
pub struct TraceParams {
    format: Option<String>,
}

pub async fn get_trace_handler(
    State(state): State<ApiState>,
    Path(trace_id): Path<String>,
    ApiQuery(params): ApiQuery<TraceParams>,
) -> Response {
    let Some(id) = parse_trace_id(&trace_id) else {
        return bad_request(format!(
            "`{trace_id}` is not a trace id: expected 32 hex digits"
        ));
    };
    let request = match trace_otlp(state.engine.store(), id).await {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    if request.resource_spans.is_empty() {
        return (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(json!({"error": {"kind": "not_found", "message": format!("no trace {}", to_hex(&id))}})),
        )
            .into_response();
    }
    match params.format.as_deref() {
        Some("otlp") => {
            axum::Json(serde_json::to_value(&request).unwrap_or(Value::Null)).into_response()
        }
        None | Some("json") => axum::Json(trace_json(id, &request)).into_response(),
        Some(other) => bad_request(format!("unknown format `{other}`; use json or otlp")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            super::rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }
}
