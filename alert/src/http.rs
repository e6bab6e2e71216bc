//! `/api/v1/alerts`: rules (CRUD, enable/disable, dry run), active alerts, history, channels
//! and silences. Errors have the same JSON shape as the rest of the API.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AlertError;
use crate::rule::{Channel, RuleSpec};
use crate::service::{AlertService, SilenceRequest};

/// Request bodies are rules and silences: small.
const MAX_BODY: usize = 256 * 1024;

fn error_response(e: &AlertError) -> Response {
    let (status, kind) = match e {
        AlertError::Invalid(_) | AlertError::RulesFile { .. } => {
            (StatusCode::BAD_REQUEST, "invalid")
        }
        AlertError::Query(_) => (StatusCode::BAD_REQUEST, "invalid_sql"),
        AlertError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        AlertError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        AlertError::Storage { .. } => (StatusCode::SERVICE_UNAVAILABLE, "storage"),
    };
    let position = match e {
        AlertError::Query(oxeye_query::QueryError::Invalid {
            position: Some((line, column)),
            ..
        }) => json!({"line": line, "column": column}),
        _ => Value::Null,
    };
    (
        status,
        axum::Json(
            json!({"error": {"kind": kind, "message": e.to_string(), "position": position}}),
        ),
    )
        .into_response()
}

fn respond(result: Result<Value, AlertError>, created: bool) -> Response {
    match result {
        Ok(v) if created => (StatusCode::CREATED, axum::Json(v)).into_response(),
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

/// Parses a JSON body with an error that says what was expected.
fn body<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Response> {
    serde_json::from_slice(bytes).map_err(|e| {
        error_response(&AlertError::invalid(format!(
            "the body must be {what} as JSON: {e}"
        )))
    })
}

async fn list_rules(State(s): State<AlertService>) -> Response {
    axum::Json(s.rules()).into_response()
}

async fn create_rule(State(s): State<AlertService>, bytes: axum::body::Bytes) -> Response {
    match body::<RuleSpec>(&bytes, "an alert rule") {
        Ok(spec) => respond(s.create_rule(spec).await, true),
        Err(r) => r,
    }
}

async fn get_rule(State(s): State<AlertService>, Path(id): Path<String>) -> Response {
    respond(s.rule(&id), false)
}

async fn update_rule(
    State(s): State<AlertService>,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Response {
    match body::<RuleSpec>(&bytes, "an alert rule") {
        Ok(spec) => respond(s.update_rule(&id, spec).await, false),
        Err(r) => r,
    }
}

async fn delete_rule(State(s): State<AlertService>, Path(id): Path<String>) -> Response {
    respond(s.delete_rule(&id).await, false)
}

async fn enable_rule(State(s): State<AlertService>, Path(id): Path<String>) -> Response {
    respond(s.set_enabled(&id, true).await, false)
}

async fn disable_rule(State(s): State<AlertService>, Path(id): Path<String>) -> Response {
    respond(s.set_enabled(&id, false).await, false)
}

async fn dry_run(State(s): State<AlertService>, bytes: axum::body::Bytes) -> Response {
    match body::<RuleSpec>(&bytes, "an alert rule") {
        Ok(spec) => respond(s.dry_run(spec).await, false),
        Err(r) => r,
    }
}

async fn alerts(State(s): State<AlertService>) -> Response {
    axum::Json(s.alerts()).into_response()
}

#[derive(Deserialize)]
struct HistoryParams {
    rule_id: Option<String>,
    limit: Option<usize>,
}

async fn history(State(s): State<AlertService>, Query(p): Query<HistoryParams>) -> Response {
    let limit = p.limit.unwrap_or(200).clamp(1, 10_000);
    axum::Json(s.history(p.rule_id.as_deref().filter(|r| !r.is_empty()), limit)).into_response()
}

async fn channels(State(s): State<AlertService>) -> Response {
    axum::Json(s.channels()).into_response()
}

async fn put_channel(State(s): State<AlertService>, bytes: axum::body::Bytes) -> Response {
    match body::<Channel>(
        &bytes,
        "a channel {\"name\": ..., \"type\": \"webhook\"|\"alertmanager\"|\"slack\", \"url\": ...}",
    ) {
        Ok(c) => respond(s.put_channel(c).await, true),
        Err(r) => r,
    }
}

async fn delete_channel(State(s): State<AlertService>, Path(name): Path<String>) -> Response {
    respond(s.delete_channel(&name).await, false)
}

async fn silences(State(s): State<AlertService>) -> Response {
    axum::Json(s.silences()).into_response()
}

async fn create_silence(State(s): State<AlertService>, bytes: axum::body::Bytes) -> Response {
    match body::<SilenceRequest>(
        &bytes,
        "a silence {\"matchers\": [...], \"duration\": \"2h\"}",
    ) {
        Ok(r) => respond(s.create_silence(r).await, true),
        Err(r) => r,
    }
}

async fn expire_silence(State(s): State<AlertService>, Path(id): Path<String>) -> Response {
    respond(s.expire_silence(&id).await, false)
}

/// The alerting routes, to merge beside the query API.
pub fn router(service: AlertService) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/rules", get(list_rules).post(create_rule))
        .route("/api/v1/alerts/rules/dry-run", post(dry_run))
        .route(
            "/api/v1/alerts/rules/{id}",
            get(get_rule).put(update_rule).delete(delete_rule),
        )
        .route("/api/v1/alerts/rules/{id}/enable", post(enable_rule))
        .route("/api/v1/alerts/rules/{id}/disable", post(disable_rule))
        .route("/api/v1/alerts/history", get(history))
        .route("/api/v1/alerts/channels", get(channels).post(put_channel))
        .route(
            "/api/v1/alerts/channels/{name}",
            axum::routing::delete(delete_channel),
        )
        .route(
            "/api/v1/alerts/silences",
            get(silences).post(create_silence),
        )
        .route(
            "/api/v1/alerts/silences/{id}",
            axum::routing::delete(expire_silence),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(service)
}
