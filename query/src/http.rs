//! The HTTP API on port 7700 (DESIGN.md): SQL, health, readiness and `/metrics`. The trace,
//! log, service, metrics and Jaeger endpoints are in [`crate::api`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::{QueryEngine, QueryError, format};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct ApiState {
    pub engine: QueryEngine,
    pub registry: Arc<parking_lot::RwLock<Registry>>,
    pub ready: Arc<AtomicBool>,
}

/// Maps a query error to an HTTP response (the one place this is decided).
pub fn error_response(err: &QueryError) -> Response {
    let status = match err {
        QueryError::Invalid { .. } | QueryError::ReadOnly(_) | QueryError::Memory { .. } => {
            StatusCode::BAD_REQUEST
        }
        QueryError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        QueryError::Busy | QueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let position = match err {
        QueryError::Invalid {
            position: Some((line, column)),
            ..
        } => serde_json::json!({"line": line, "column": column}),
        _ => serde_json::Value::Null,
    };
    let body = serde_json::json!({
        "error": {"kind": err.kind(), "message": err.to_string(), "position": position}
    });
    let mut response = (status, axum::Json(body)).into_response();
    if matches!(err, QueryError::Busy | QueryError::Unavailable(_)) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// A 400 for a bad API parameter.
pub fn bad_request(message: impl Into<String>) -> Response {
    error_response(&QueryError::Invalid {
        message: message.into(),
        position: None,
    })
}

/// `Query<T>` whose rejection is oxeye's JSON error (axum's own is plain text).
pub struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(bad_request(e.body_text())),
        }
    }
}

#[derive(Deserialize)]
struct SqlBody {
    sql: String,
}

#[derive(Deserialize)]
struct SqlParams {
    format: Option<String>,
    /// The statement, for `GET /api/v1/sql?sql=...` (links such as the UI's CSV download).
    sql: Option<String>,
}

async fn sql(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<SqlParams>,
    body: axum::body::Bytes,
) -> Response {
    let request: SqlBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "the body must be JSON like {{\"sql\": \"SELECT 1\"}}: {e}"
            ));
        }
    };
    run_sql(&state, &request.sql, params.format.as_deref()).await
}

/// `GET /api/v1/sql?sql=...&format=...`: the same read-only SQL, for links and downloads.
async fn sql_get(State(state): State<ApiState>, ApiQuery(params): ApiQuery<SqlParams>) -> Response {
    match params.sql.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(statement) => run_sql(&state, statement, params.format.as_deref()).await,
        None => bad_request(
            "give the statement as ?sql=SELECT ... (or POST {\"sql\": ...})".to_string(),
        ),
    }
}

async fn run_sql(state: &ApiState, statement: &str, format: Option<&str>) -> Response {
    let result = match state.engine.sql(statement).await {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let (content_type, encoded) = match format.unwrap_or("json") {
        "json" => ("application/json", format::to_json(&result)),
        "ndjson" => ("application/x-ndjson", format::to_ndjson(&result)),
        "csv" => ("text/csv; charset=utf-8", format::to_csv(&result)),
        "arrow" => (
            "application/vnd.apache.arrow.stream",
            format::to_arrow(&result),
        ),
        other => {
            return bad_request(format!(
                "unknown format `{other}`; use json, ndjson, csv or arrow"
            ));
        }
    };
    match encoded {
        Ok(bytes) => {
            let mut r = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, content_type)],
                bytes,
            )
                .into_response();
            if result.truncated
                && let Ok(v) = header::HeaderValue::from_str(&result.rows.to_string())
            {
                r.headers_mut().insert("x-oxeye-truncated-at", v);
            }
            r
        }
        Err(e) => error_response(&QueryError::Internal(format!(
            "cannot encode the result: {e}"
        ))),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<ApiState>) -> Response {
    ready_response(&state.ready)
}

async fn metrics(State(state): State<ApiState>) -> Response {
    metrics_response(&state.registry)
}

fn ready_response(ready: &AtomicBool) -> Response {
    if ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

/// What a process without the query engine (a collector) serves over HTTP.
#[derive(Clone)]
pub struct OpsState {
    pub registry: Arc<parking_lot::RwLock<Registry>>,
    pub ready: Arc<AtomicBool>,
}

/// `/healthz`, `/readyz` and `/metrics` alone.
pub fn ops_router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(|State(s): State<OpsState>| async move { ready_response(&s.ready) }),
        )
        .route(
            "/metrics",
            get(|State(s): State<OpsState>| async move { metrics_response(&s.registry) }),
        )
        .with_state(state)
}

fn metrics_response(registry: &parking_lot::RwLock<Registry>) -> Response {
    let mut text = String::new();
    let registry = registry.read();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The API routes (the UI is mounted beside them by the binary).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/sql", post(sql).get(sql_get))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/admin/flush", post(admin_flush))
        .route("/api/v1/admin/compact", post(admin_compact))
        .merge(crate::api::router())
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

/// `POST /api/v1/admin/flush`: writes every unflushed row into segments now.
async fn admin_flush(State(state): State<ApiState>) -> Response {
    match state.engine.store().flush().await {
        Ok(()) => axum::Json(serde_json::json!({"flushed": true})).into_response(),
        Err(e) => store_error_response(&e),
    }
}

/// A store failure: object storage that cannot be reached is a 503 (retry later; the rows
/// wait in the WAL), anything else a 500.
fn store_error_response(e: &oxeye_store::StoreError) -> Response {
    if matches!(e, oxeye_store::StoreError::ObjectStore { .. }) {
        let body = serde_json::json!({"error": {
            "kind": "unavailable",
            "message": format!("{e}; nothing was lost: the rows stay in the WAL and are written when the object store answers again"),
            "position": null,
        }});
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return r;
    }
    error_response(&QueryError::Internal(e.to_string()))
}

/// `POST /api/v1/admin/compact`: merges small segments until nothing is left to merge.
async fn admin_compact(State(state): State<ApiState>) -> Response {
    match state.engine.store().compact().await {
        Ok(merges) => axum::Json(serde_json::json!({"merges": merges})).into_response(),
        Err(e) => store_error_response(&e),
    }
}
