//! The read APIs the UI and tools use, beside SQL: traces, logs, services, metrics, RED,
//! dependencies, and the Jaeger-compatible API. Each is a thin HTTP shell over a function that
//! returns plain data, so tests reach the logic without sockets.

pub mod jaeger;
pub mod logs;
pub mod metrics;
pub mod params;
pub mod red;
pub mod search;
pub mod traces;
pub mod window;

use axum::Router;
use axum::routing::get;

use crate::http::ApiState;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/traces", get(search::search_handler))
        .route("/api/v1/traces/{trace_id}", get(traces::get_trace_handler))
        .route("/api/v1/services", get(search::services_handler))
        .route(
            "/api/v1/services/{service}/operations",
            get(search::operations_handler),
        )
        .route("/api/v1/logs", get(logs::search_handler))
        .route("/api/v1/logs/histogram", get(logs::histogram_handler))
        .route("/api/v1/red", get(red::red_handler))
        .route("/api/v1/dependencies", get(red::dependencies_handler))
        .route("/api/v1/metrics/query", get(metrics::query_handler))
        .route("/api/v1/metrics/names", get(metrics::names_handler))
        .route("/api/v1/metrics/labels", get(metrics::labels_handler))
        .route("/api/services", get(jaeger::services_handler))
        .route(
            "/api/services/{service}/operations",
            get(jaeger::service_operations_handler),
        )
        .route("/api/operations", get(jaeger::operations_handler))
        .route("/api/traces", get(jaeger::traces_handler))
        .route("/api/traces/{trace_id}", get(jaeger::trace_handler))
        .route("/api/dependencies", get(jaeger::dependencies_handler))
}
