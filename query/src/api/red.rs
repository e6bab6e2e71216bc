//! RED metrics (rate, errors, duration) derived from spans, and the service dependency graph.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::params::{parse_duration_ns, sql_str, sql_time};
use super::window::{Window, WindowParams};
use crate::QueryError;
use crate::format::to_objects;
use crate::http::{ApiQuery, ApiState, bad_request, error_response};

/// Spans that are requests a service serves: entry points (server and consumer spans) and the
/// roots of traces.
pub const REQUEST_SPANS: &str = "(kind IN ('SERVER', 'CONSUMER') OR parent_span_id IS NULL)";

#[derive(Debug, Deserialize)]
pub struct RedParams {
    service: Option<String>,
    step: Option<String>,
    #[serde(flatten)]
    window: WindowParams,
}

fn window_conditions(w: &Window) -> String {
    format!(
        "start_time >= {} AND start_time < {}",
        sql_time(w.start),
        sql_time(w.end)
    )
}

/// Per service and operation: request rate, error rate and latency percentiles.
pub async fn red(
    state: &ApiState,
    service: Option<&str>,
    w: &Window,
) -> Result<Vec<serde_json::Map<String, Value>>, QueryError> {
    let service_filter = service
        .map(|s| format!(" AND service_name = {}", sql_str(s)))
        .unwrap_or_default();
    let sql = format!(
        "SELECT service_name, name AS operation, count(*) AS requests,
                count(*) FILTER (WHERE status_code = 'ERROR') AS errors,
                CAST(count(*) AS DOUBLE) / {secs} AS rate_per_second,
                CAST(count(*) FILTER (WHERE status_code = 'ERROR') AS DOUBLE) / count(*) AS error_rate,
                approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ns) AS p50_ns,
                approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ns) AS p95_ns,
                approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ns) AS p99_ns
         FROM spans WHERE {w} AND {REQUEST_SPANS}{service_filter}
         GROUP BY 1, 2 ORDER BY requests DESC",
        secs = w.seconds(),
        w = window_conditions(w),
    );
    let result = state.engine.sql_limited(&sql, 10_000).await?;
    to_objects(&result).map_err(|e| QueryError::Internal(e.to_string()))
}

/// The same figures per time bucket, for charts.
pub async fn red_series(
    state: &ApiState,
    service: Option<&str>,
    w: &Window,
    step_ns: i64,
) -> Result<Vec<serde_json::Map<String, Value>>, QueryError> {
    let service_filter = service
        .map(|s| format!(" AND service_name = {}", sql_str(s)))
        .unwrap_or_default();
    let sql = format!(
        "SELECT CAST(date_bin(INTERVAL '{step_ns} nanoseconds', start_time) AS BIGINT) AS bucket_unix_nano,
                service_name, name AS operation, count(*) AS requests,
                count(*) FILTER (WHERE status_code = 'ERROR') AS errors,
                approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ns) AS p50_ns,
                approx_percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ns) AS p95_ns,
                approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ns) AS p99_ns
         FROM spans WHERE {w} AND {REQUEST_SPANS}{service_filter}
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        w = window_conditions(w),
    );
    let result = state.engine.sql_limited(&sql, 100_000).await?;
    to_objects(&result).map_err(|e| QueryError::Internal(e.to_string()))
}

pub async fn red_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<RedParams>,
) -> Response {
    let w = match p.window.resolve(3600) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let service = p.service.as_deref().filter(|s| !s.is_empty());
    let summary = match red(&state, service, &w).await {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let step = match p.step.as_deref() {
        Some(s) => match parse_duration_ns(s) {
            Some(n) if n > 0 => n,
            _ => return bad_request(format!("step `{s}` is not a positive duration like 1m")),
        },
        None => ((w.end - w.start) / 60).max(1_000_000_000),
    };
    match red_series(&state, service, &w, step).await {
        Ok(series) => axum::Json(json!({"window_seconds": w.seconds(), "step_ns": step, "operations": summary, "series": series})).into_response(),
        Err(e) => error_response(&e),
    }
}

/// Caller -> callee edges: a span whose parent is in another service is one call.
pub async fn dependencies(
    state: &ApiState,
    w: &Window,
) -> Result<Vec<serde_json::Map<String, Value>>, QueryError> {
    let sql = format!(
        "SELECT parent.service_name AS caller, child.service_name AS callee,
                count(*) AS calls,
                count(*) FILTER (WHERE child.status_code = 'ERROR') AS errors,
                CAST(count(*) AS DOUBLE) / {secs} AS rate_per_second
         FROM spans child
         JOIN spans parent ON child.trace_id = parent.trace_id AND child.parent_span_id = parent.span_id
         WHERE child.{cw} AND parent.{pw} AND child.service_name <> parent.service_name
         GROUP BY 1, 2 ORDER BY calls DESC",
        secs = w.seconds(),
        cw = window_conditions(w).replace(" AND start_time", " AND child.start_time"),
        // Parents may start a little before the window.
        pw = window_conditions(&Window {
            start: w.start.saturating_sub(300_000_000_000),
            end: w.end,
        })
        .replace(" AND start_time", " AND parent.start_time"),
    );
    let result = state.engine.sql_limited(&sql, 100_000).await?;
    to_objects(&result).map_err(|e| QueryError::Internal(e.to_string()))
}

#[derive(Debug, Deserialize)]
pub struct DependencyParams {
    #[serde(flatten)]
    window: WindowParams,
}

pub async fn dependencies_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<DependencyParams>,
) -> Response {
    let w = match p.window.resolve(3600) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    match dependencies(&state, &w).await {
        Ok(edges) => axum::Json(json!({"edges": edges})).into_response(),
        Err(e) => error_response(&e),
    }
}
