//! Jaeger's query API (`/api/services`, `/api/services/{s}/operations`, `/api/operations`,
//! `/api/traces`, `/api/traces/{id}`, `/api/dependencies`) in Jaeger's JSON shape, so Jaeger's UI
//! and Grafana's Jaeger data source work unchanged.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oxeye_model::attributes::value_json;
use oxeye_model::enums::{span_kind_name, status_code_name};
use oxeye_model::ids::to_hex;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use oxeye_model::otlp::common::v1::{AnyValue, KeyValue, any_value::Value as AV};
use serde::Deserialize;
use serde_json::{Value, json};

use super::params::{now_ns, parse_duration_ns, parse_tags};
use super::search::{TraceQuery, operations, services};
use super::window::Window;
use crate::http::{ApiQuery, ApiState};

fn ok(data: Value) -> Response {
    let total = data.as_array().map(Vec::len).unwrap_or(0);
    axum::Json(json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": null}))
        .into_response()
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"data": null, "total": 0, "limit": 0, "offset": 0, "errors": [{"code": status.as_u16(), "msg": msg.into()}]})),
    )
        .into_response()
}

fn tag(key: &str, value: Option<&AnyValue>) -> Value {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AV::StringValue(s)) => json!({"key": key, "type": "string", "value": s}),
        Some(AV::BoolValue(b)) => json!({"key": key, "type": "bool", "value": b}),
        Some(AV::IntValue(i)) => json!({"key": key, "type": "int64", "value": i}),
        Some(AV::DoubleValue(d)) => json!({"key": key, "type": "float64", "value": d}),
        Some(AV::BytesValue(b)) => json!({"key": key, "type": "binary", "value": base64_encode(b)}),
        Some(other) => {
            json!({"key": key, "type": "string", "value": value_json(&AnyValue { value: Some(other.clone()) }).to_string()})
        }
        None => json!({"key": key, "type": "string", "value": ""}),
    }
}

fn base64_encode(b: &[u8]) -> String {
    // Same text the attribute map shows for bytes.
    oxeye_model::attributes::value_text(&AnyValue {
        value: Some(AV::BytesValue(b.to_vec())),
    })
    .unwrap_or_default()
}

fn tags(attrs: &[KeyValue]) -> Vec<Value> {
    attrs
        .iter()
        .map(|kv| tag(&kv.key, kv.value.as_ref()))
        .collect()
}

fn string_tag(key: &str, value: &str) -> Value {
    json!({"key": key, "type": "string", "value": value})
}

/// A trace in Jaeger's JSON shape.
pub fn jaeger_trace(request: &ExportTraceServiceRequest) -> Value {
    let mut processes: BTreeMap<String, Value> = BTreeMap::new();
    let mut process_ids: Vec<(String, String)> = Vec::new();
    let mut spans = Vec::new();
    let mut trace_id = String::new();
    for rs in &request.resource_spans {
        let resource = rs.resource.clone().unwrap_or_default();
        let service = resource
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(value_json)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown_service".into());
        let process_tags: Vec<KeyValue> = resource
            .attributes
            .iter()
            .filter(|kv| kv.key != "service.name")
            .cloned()
            .collect();
        let process = json!({"serviceName": service, "tags": tags(&process_tags)});
        let key = process.to_string();
        let pid = match process_ids.iter().find(|(k, _)| *k == key) {
            Some((_, id)) => id.clone(),
            None => {
                let id = format!("p{}", process_ids.len() + 1);
                process_ids.push((key, id.clone()));
                processes.insert(id.clone(), process);
                id
            }
        };
        for ss in &rs.scope_spans {
            let scope = ss.scope.clone().unwrap_or_default();
            for s in &ss.spans {
                trace_id = to_hex(&s.trace_id);
                let mut references = Vec::new();
                if !s.parent_span_id.is_empty() {
                    references.push(json!({"refType": "CHILD_OF", "traceID": to_hex(&s.trace_id), "spanID": to_hex(&s.parent_span_id)}));
                }
                for l in &s.links {
                    references.push(json!({"refType": "FOLLOWS_FROM", "traceID": to_hex(&l.trace_id), "spanID": to_hex(&l.span_id)}));
                }
                let mut span_tags = tags(&s.attributes);
                let kind = span_kind_name(s.kind).to_lowercase();
                if kind != "unspecified" {
                    span_tags.push(string_tag("span.kind", &kind));
                }
                let status = s.status.clone().unwrap_or_default();
                if status.code != 0 {
                    span_tags.push(string_tag(
                        "otel.status_code",
                        &status_code_name(status.code),
                    ));
                }
                if status.code == 2 {
                    span_tags.push(json!({"key": "error", "type": "bool", "value": true}));
                }
                if !status.message.is_empty() {
                    span_tags.push(string_tag("otel.status_description", &status.message));
                }
                if !scope.name.is_empty() {
                    span_tags.push(string_tag("otel.scope.name", &scope.name));
                }
                if !scope.version.is_empty() {
                    span_tags.push(string_tag("otel.scope.version", &scope.version));
                }
                let logs: Vec<Value> = s
                    .events
                    .iter()
                    .map(|e| {
                        let mut fields = vec![string_tag("event", &e.name)];
                        fields.extend(tags(&e.attributes));
                        json!({"timestamp": e.time_unix_nano / 1000, "fields": fields})
                    })
                    .collect();
                spans.push(json!({
                    "traceID": to_hex(&s.trace_id),
                    "spanID": to_hex(&s.span_id),
                    "operationName": s.name,
                    "references": references,
                    "startTime": s.start_time_unix_nano / 1000,
                    "duration": s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) / 1000,
                    "tags": span_tags,
                    "logs": logs,
                    "processID": pid,
                    "warnings": null,
                    "flags": s.flags,
                }));
            }
        }
    }
    spans.sort_by_key(|s| s["startTime"].as_u64().unwrap_or(0));
    json!({"traceID": trace_id, "spans": spans, "processes": processes, "warnings": null})
}

/// Jaeger ids may be 16 or 32 hex digits.
fn jaeger_trace_id(text: &str) -> Option<[u8; 16]> {
    let t = text.trim();
    if t.is_empty() || t.len() > 32 || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    oxeye_model::ids::parse_trace_id(&format!("{t:0>32}"))
}

async fn fetch(state: &ApiState, id: [u8; 16]) -> Result<Option<Value>, Response> {
    let request = super::traces::trace_otlp(state.engine.store(), id)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((!request.resource_spans.is_empty()).then(|| jaeger_trace(&request)))
}

pub async fn trace_handler(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some(id) = jaeger_trace_id(&id) else {
        return err(StatusCode::BAD_REQUEST, format!("`{id}` is not a trace id"));
    };
    match fetch(&state, id).await {
        Ok(Some(t)) => ok(json!([t])),
        Ok(None) => err(StatusCode::NOT_FOUND, "trace not found"),
        Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct WindowParams {
    start: Option<String>,
    end: Option<String>,
    lookback: Option<String>,
}

/// Jaeger's window: `start`/`end` in microseconds, `lookback` like `1h` (or `custom`).
fn jaeger_window(p: &WindowParams, default_s: i64) -> Result<Window, String> {
    let us = |v: &Option<String>, name: &str| -> Result<Option<i64>, String> {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>()
                    .map(|n| n * 1000)
                    .map_err(|_| format!("{name} must be microseconds since the epoch"))
            })
            .transpose()
    };
    let end = us(&p.end, "end")?.unwrap_or_else(now_ns);
    let start = match (
        us(&p.start, "start")?,
        p.lookback
            .as_deref()
            .filter(|l| *l != "custom" && !l.is_empty()),
    ) {
        (Some(s), _) => s,
        (None, Some(l)) => {
            end - parse_duration_ns(l).ok_or_else(|| format!("lookback `{l}` is not a duration"))?
        }
        (None, None) => end - default_s * 1_000_000_000,
    };
    Ok(Window { start, end })
}

#[derive(Debug, Deserialize)]
pub struct TracesParams {
    service: Option<String>,
    operation: Option<String>,
    tags: Option<String>,
    #[serde(rename = "minDuration")]
    min_duration: Option<String>,
    #[serde(rename = "maxDuration")]
    max_duration: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "traceID")]
    trace_id: Option<String>,
    #[serde(flatten)]
    window: WindowParams,
}

pub async fn traces_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<TracesParams>,
) -> Response {
    let ids: Vec<String> = if let Some(ids) = p.trace_id.as_deref().filter(|s| !s.is_empty()) {
        ids.split(',').map(str::to_string).collect()
    } else {
        let window = match jaeger_window(&p.window, 3600) {
            Ok(w) => w,
            Err(e) => return err(StatusCode::BAD_REQUEST, e),
        };
        let dur = |v: &Option<String>| {
            v.as_deref()
                .filter(|s| !s.is_empty())
                .and_then(parse_duration_ns)
        };
        let tags = match parse_tags(p.tags.as_deref().unwrap_or("")) {
            Ok(t) => t,
            Err(e) => return err(StatusCode::BAD_REQUEST, e),
        };
        let q = TraceQuery {
            service: p.service.clone().filter(|s| !s.is_empty()),
            operation: p.operation.clone().filter(|s| !s.is_empty() && s != "all"),
            tags,
            min_duration_ns: dur(&p.min_duration),
            max_duration_ns: dur(&p.max_duration),
            window,
            limit: p.limit.unwrap_or(20).clamp(1, 1500),
        };
        match super::search::search(&state, &q).await {
            Ok(found) => found
                .iter()
                .filter_map(|t| {
                    t.get("trace_id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect(),
            Err(e) => return err(StatusCode::BAD_REQUEST, e.to_string()),
        }
    };
    let mut traces = Vec::new();
    for id in ids {
        let Some(id) = jaeger_trace_id(&id) else {
            return err(StatusCode::BAD_REQUEST, format!("`{id}` is not a trace id"));
        };
        match fetch(&state, id).await {
            Ok(Some(t)) => traces.push(t),
            Ok(None) => {}
            Err(r) => return r,
        }
    }
    ok(Value::Array(traces))
}

#[derive(Debug, Deserialize)]
pub struct ServiceParams {
    #[serde(flatten)]
    window: WindowParams,
}

pub async fn services_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<ServiceParams>,
) -> Response {
    let w = match jaeger_window(&p.window, 7 * 86_400) {
        Ok(w) => w,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    match services(&state, &w).await {
        Ok(s) => ok(json!(s)),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn service_operations_handler(
    State(state): State<ApiState>,
    Path(service): Path<String>,
) -> Response {
    let w = Window {
        start: now_ns() - 7 * 86_400 * 1_000_000_000,
        end: now_ns(),
    };
    match operations(&state, &service, &w).await {
        Ok(ops) => {
            let mut names: Vec<String> = ops.into_iter().map(|(_, n)| n).collect();
            names.sort();
            names.dedup();
            ok(json!(names))
        }
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct OperationsParams {
    service: String,
    #[serde(rename = "spanKind")]
    span_kind: Option<String>,
}

pub async fn operations_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<OperationsParams>,
) -> Response {
    let w = Window {
        start: now_ns() - 7 * 86_400 * 1_000_000_000,
        end: now_ns(),
    };
    match operations(&state, &p.service, &w).await {
        Ok(ops) => ok(Value::Array(
            ops.into_iter()
                .map(|(kind, name)| (kind.to_lowercase(), name))
                .filter(|(kind, _)| {
                    p.span_kind
                        .as_deref()
                        .is_none_or(|k| k.is_empty() || k.eq_ignore_ascii_case(kind))
                })
                .map(|(kind, name)| json!({"name": name, "spanKind": kind}))
                .collect(),
        )),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
pub struct DependencyParams {
    #[serde(rename = "endTs")]
    end_ts: Option<i64>,
    lookback: Option<i64>,
}

pub async fn dependencies_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<DependencyParams>,
) -> Response {
    let end = p.end_ts.map(|ms| ms * 1_000_000).unwrap_or_else(now_ns);
    let start = end - p.lookback.unwrap_or(86_400_000) * 1_000_000;
    match super::red::dependencies(&state, &Window { start, end }).await {
        Ok(edges) => ok(Value::Array(
            edges
                .iter()
                .map(|e| json!({"parent": e.get("caller"), "child": e.get("callee"), "callCount": e.get("calls")}))
                .collect(),
        )),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
