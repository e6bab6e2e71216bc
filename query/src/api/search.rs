//! Trace search (`GET /api/v1/traces`), services and operations.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::params::{
    parse_duration_ns, parse_tags, parse_time_ns, span_tag_condition, sql_str, sql_time,
};
use super::window::{Window, WindowParams};
use crate::QueryError;
use crate::format::to_objects;
use crate::http::{ApiQuery, ApiState, bad_request, error_response};
use oxeye_model::Signal;
use oxeye_store::index::SERIES_SEPARATOR;

/// What a trace search asks for.
#[derive(Debug, Default, Clone)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub operation: Option<String>,
    pub tags: Vec<(String, String)>,
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    pub window: Window,
    pub limit: usize,
}

/// One trace in search results.
pub type TraceSummary = serde_json::Map<String, Value>;

fn conditions(q: &TraceQuery) -> Vec<String> {
    let mut c = vec![
        format!("start_time >= {}", sql_time(q.window.start)),
        format!("start_time < {}", sql_time(q.window.end)),
    ];
    if let Some(s) = &q.service {
        c.push(format!("service_name = {}", sql_str(s)));
    }
    if let Some(o) = &q.operation {
        c.push(format!("name = {}", sql_str(o)));
    }
    for (k, v) in &q.tags {
        c.push(span_tag_condition(k, v));
    }
    if let Some(d) = q.min_duration_ns {
        c.push(format!("duration_ns >= {d}"));
    }
    if let Some(d) = q.max_duration_ns {
        c.push(format!("duration_ns <= {d}"));
    }
    c
}

/// Summaries of the given traces, looked up by id (the index finds them at any age).
pub async fn summarize(state: &ApiState, ids: &[String]) -> Result<Vec<TraceSummary>, QueryError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let list = ids
        .iter()
        .map(|i| sql_str(i))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT trace_id,
           first_value(service_name ORDER BY parent_span_id IS NOT NULL, start_time) AS root_service,
           first_value(name ORDER BY parent_span_id IS NOT NULL, start_time) AS root_name,
           CAST(min(start_time) AS BIGINT) AS start_time_unix_nano,
           CAST(max(end_time) AS BIGINT) - CAST(min(start_time) AS BIGINT) AS duration_ns,
           count(*) AS span_count,
           count(*) FILTER (WHERE status_code = 'ERROR') AS error_count,
           array_agg(DISTINCT service_name) AS services
         FROM spans WHERE trace_id IN ({list}) GROUP BY trace_id ORDER BY start_time_unix_nano DESC"
    );
    let result = state.engine.sql_limited(&sql, ids.len()).await?;
    let mut rows = to_objects(&result).map_err(|e| QueryError::Internal(e.to_string()))?;
    for r in &mut rows {
        if let Some(ns) = r.get("start_time_unix_nano").and_then(Value::as_i64) {
            r.insert(
                "start_time".into(),
                Value::String(super::traces::rfc3339(ns as u64)),
            );
        }
    }
    Ok(rows)
}

/// Traces with a span matching every condition, newest first.
pub async fn search(state: &ApiState, q: &TraceQuery) -> Result<Vec<TraceSummary>, QueryError> {
    let sql = format!(
        "SELECT trace_id, max(start_time) AS last FROM spans WHERE {} GROUP BY trace_id ORDER BY last DESC LIMIT {}",
        conditions(q).join(" AND "),
        q.limit
    );
    let result = state.engine.sql_limited(&sql, q.limit).await?;
    let ids: Vec<String> = to_objects(&result)
        .map_err(|e| QueryError::Internal(e.to_string()))?
        .into_iter()
        .filter_map(|r| {
            r.get("trace_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    summarize(state, &ids).await
}

#[derive(Debug, Deserialize)]
pub struct SearchParams {
    service: Option<String>,
    operation: Option<String>,
    tags: Option<String>,
    min_duration: Option<String>,
    max_duration: Option<String>,
    limit: Option<usize>,
    #[serde(flatten)]
    window: WindowParams,
}

pub fn trace_query(p: &SearchParams) -> Result<TraceQuery, String> {
    let dur = |v: &Option<String>, name: &str| -> Result<Option<i64>, String> {
        v.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                parse_duration_ns(s)
                    .ok_or_else(|| format!("{name} `{s}` is not a duration like 250ms"))
            })
            .transpose()
    };
    Ok(TraceQuery {
        service: p.service.clone().filter(|s| !s.is_empty()),
        operation: p.operation.clone().filter(|s| !s.is_empty()),
        tags: parse_tags(p.tags.as_deref().unwrap_or(""))?,
        min_duration_ns: dur(&p.min_duration, "min_duration")?,
        max_duration_ns: dur(&p.max_duration, "max_duration")?,
        window: p.window.resolve(3600)?,
        limit: p.limit.unwrap_or(20).clamp(1, 1000),
    })
}

pub async fn search_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Response {
    let q = match trace_query(&p) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    match search(&state, &q).await {
        Ok(traces) => axum::Json(json!({"traces": traces, "count": traces.len()})).into_response(),
        Err(e) => error_response(&e),
    }
}

/// Services (from the segment indexes and unflushed rows) with spans in the window.
pub async fn services(state: &ApiState, window: &Window) -> Result<Vec<String>, QueryError> {
    let terms = state
        .engine
        .store()
        .series(Signal::Spans, "", Some(window.start), Some(window.end))
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    let mut out: Vec<String> = terms
        .iter()
        .filter_map(|t| t.split(SERIES_SEPARATOR).next().map(str::to_string))
        .collect();
    out.dedup();
    Ok(out)
}

/// Operations of a service: `(span kind, name)` pairs.
pub async fn operations(
    state: &ApiState,
    service: &str,
    window: &Window,
) -> Result<Vec<(String, String)>, QueryError> {
    let prefix = format!("{service}{SERIES_SEPARATOR}");
    let terms = state
        .engine
        .store()
        .series(Signal::Spans, &prefix, Some(window.start), Some(window.end))
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    Ok(terms
        .iter()
        .filter_map(|t| {
            let mut parts = t[prefix.len()..].splitn(2, SERIES_SEPARATOR);
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect())
}

#[derive(Debug, Deserialize)]
pub struct CatalogParams {
    #[serde(flatten)]
    window: WindowParams,
}

pub async fn services_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<CatalogParams>,
) -> Response {
    let window = match p.window.resolve(7 * 86_400) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    match services(&state, &window).await {
        Ok(s) => axum::Json(json!({"services": s})).into_response(),
        Err(e) => error_response(&e),
    }
}

pub async fn operations_handler(
    State(state): State<ApiState>,
    Path(service): Path<String>,
    ApiQuery(p): ApiQuery<CatalogParams>,
) -> Response {
    let window = match p.window.resolve(7 * 86_400) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    match operations(&state, &service, &window).await {
        Ok(ops) => {
            let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (kind, name) in ops {
                by_name.entry(name).or_default().push(kind);
            }
            let list: Vec<Value> = by_name
                .into_iter()
                .map(|(name, kinds)| json!({"name": name, "span_kinds": kinds}))
                .collect();
            axum::Json(json!({"service": service, "operations": list})).into_response()
        }
        Err(e) => error_response(&e),
    }
}

/// Parses a time parameter or explains what is wrong with it.
pub fn time_param(name: &str, value: &str) -> Result<i64, String> {
    parse_time_ns(value).ok_or_else(|| {
        format!("{name} `{value}` is not a time: use RFC 3339, now-1h, or epoch seconds/ms/µs/ns")
    })
}
