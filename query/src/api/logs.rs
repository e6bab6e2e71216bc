//! Log search (`GET /api/v1/logs`) and its histogram over time.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use oxeye_model::ids::parse_trace_id;
use serde::Deserialize;
use serde_json::{Value, json};

use super::params::{parse_duration_ns, severity_floor, sql_str, sql_time};
use super::window::{Window, WindowParams};
use crate::QueryError;
use crate::format::to_objects;
use crate::http::{ApiQuery, ApiState, bad_request, error_response};

#[derive(Debug, Default, Clone)]
pub struct LogQuery {
    /// Full-text query over log bodies (`search()` syntax).
    pub text: Option<String>,
    pub service: Option<String>,
    /// Minimum severity number.
    pub min_severity: Option<i32>,
    pub trace_id: Option<String>,
    pub window: Window,
    pub limit: usize,
}

#[derive(Debug, Deserialize)]
pub struct LogParams {
    query: Option<String>,
    service: Option<String>,
    severity: Option<String>,
    trace_id: Option<String>,
    limit: Option<usize>,
    step: Option<String>,
    #[serde(flatten)]
    window: WindowParams,
}

impl LogParams {
    fn to_query(&self) -> Result<LogQuery, String> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let trace_id = match nonempty(&self.trace_id) {
            Some(t) => {
                Some(hex::encode(parse_trace_id(&t).ok_or_else(|| {
                    format!("trace_id `{t}` is not 32 hex digits")
                })?))
            }
            None => None,
        };
        let min_severity = match nonempty(&self.severity) {
            Some(s) => Some(severity_floor(&s).ok_or_else(|| format!("severity `{s}` is not a level (trace, debug, info, warn, error, fatal) or a number"))?),
            None => None,
        };
        if let Some(q) = nonempty(&self.query) {
            oxeye_store::TextQuery::parse(&q).map_err(|e| e.to_string())?;
        }
        Ok(LogQuery {
            text: nonempty(&self.query),
            service: nonempty(&self.service),
            min_severity,
            // A trace's logs are wanted whatever their age.
            window: if trace_id.is_some()
                && self.window.start.is_none()
                && self.window.lookback.is_none()
            {
                Window {
                    start: 0,
                    end: i64::MAX,
                }
            } else {
                self.window.resolve(3600)?
            },
            trace_id,
            limit: self.limit.unwrap_or(100).clamp(1, 10_000),
        })
    }
}

fn conditions(q: &LogQuery) -> String {
    let mut c = vec![
        format!("time >= {}", sql_time(q.window.start)),
        format!("time < {}", sql_time(q.window.end)),
    ];
    if let Some(t) = &q.text {
        c.push(format!("search(body, {})", sql_str(t)));
    }
    if let Some(s) = &q.service {
        c.push(format!("service_name = {}", sql_str(s)));
    }
    if let Some(n) = q.min_severity {
        c.push(format!("severity_number >= {n}"));
    }
    if let Some(t) = &q.trace_id {
        c.push(format!("trace_id = {}", sql_str(t)));
    }
    c.join(" AND ")
}

/// Matching log records, newest first.
pub async fn search(
    state: &ApiState,
    q: &LogQuery,
) -> Result<Vec<serde_json::Map<String, Value>>, QueryError> {
    let sql = format!(
        "SELECT time, CAST(time AS BIGINT) AS time_unix_nano, observed_time, severity_number, severity_text, body,
                trace_id, span_id, service_name, attributes, resource_attributes, scope_name, event_name
         FROM logs WHERE {} ORDER BY time DESC LIMIT {}",
        conditions(q),
        q.limit
    );
    let result = state.engine.sql_limited(&sql, q.limit).await?;
    to_objects(&result).map_err(|e| QueryError::Internal(e.to_string()))
}

/// Counts of matching records per time bucket and severity.
pub async fn histogram(
    state: &ApiState,
    q: &LogQuery,
    step_ns: i64,
) -> Result<Vec<serde_json::Map<String, Value>>, QueryError> {
    let sql = format!(
        "SELECT CAST(date_bin(INTERVAL '{step_ns} nanoseconds', time) AS BIGINT) AS bucket_unix_nano,
                severity_text, count(*) AS count
         FROM logs WHERE {} GROUP BY 1, 2 ORDER BY 1, 2",
        conditions(q)
    );
    let result = state.engine.sql_limited(&sql, 100_000).await?;
    to_objects(&result).map_err(|e| QueryError::Internal(e.to_string()))
}

pub async fn search_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<LogParams>,
) -> Response {
    let q = match p.to_query() {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    match search(&state, &q).await {
        Ok(logs) => axum::Json(json!({"logs": logs, "count": logs.len()})).into_response(),
        Err(e) => error_response(&e),
    }
}

pub async fn histogram_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<LogParams>,
) -> Response {
    let q = match p.to_query() {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let step = match p.step.as_deref() {
        Some(s) => match parse_duration_ns(s) {
            Some(n) if n > 0 => n,
            _ => return bad_request(format!("step `{s}` is not a positive duration like 1m")),
        },
        // About 60 buckets over the window.
        None => ((q.window.end.saturating_sub(q.window.start)) / 60).max(1_000_000_000),
    };
    match histogram(&state, &q, step).await {
        Ok(buckets) => axum::Json(json!({"step_ns": step, "buckets": buckets})).into_response(),
        Err(e) => error_response(&e),
    }
}
