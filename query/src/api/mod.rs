//! The read APIs the UI and tools use, beside SQL: traces, logs, services, metrics, RED,
//! dependencies, and the Jaeger-compatible API. Each is a thin HTTP shell over a function that
//! returns plain data, so tests reach the logic without sockets.

pub mod traces;

use axum::Router;
use axum::routing::get;

use crate::http::ApiState;

pub fn router() -> Router<ApiState> {
    Router::new().route("/api/v1/traces/{trace_id}", get(traces::get_trace_handler))
}
