//! OTLP/HTTP surface: `POST /v1/traces`, `/v1/logs`, `/v1/metrics` with protobuf or JSON bodies,
//! optionally gzip- or zstd-compressed. Responses use the request's encoding; errors carry a
//! `google.rpc.Status` body as the OTLP specification asks.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use oxeye_model::otlp::collector::logs::v1::ExportLogsServiceRequest;
use oxeye_model::otlp::collector::metrics::v1::ExportMetricsServiceRequest;
use oxeye_model::otlp::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::ExportError;
use crate::decode::{Encoding, compression_of, decompress, encode, encoding_of};
use crate::pipeline::{OtlpExport, Pipelines};
use crate::rpc_status::{RpcStatus, code, retry_info};

#[derive(Clone)]
struct HttpState {
    pipeline: Pipelines,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
}

/// The OTLP/HTTP routes.
pub fn router(
    pipeline: Pipelines,
    max_request_bytes: usize,
    max_decompressed_bytes: usize,
) -> Router {
    Router::new()
        .route("/v1/traces", post(export::<ExportTraceServiceRequest>))
        .route("/v1/logs", post(export::<ExportLogsServiceRequest>))
        .route("/v1/metrics", post(export::<ExportMetricsServiceRequest>))
        // Limits are enforced below, with OTLP's answers.
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpState {
            pipeline,
            max_request_bytes,
            max_decompressed_bytes,
        })
}

async fn export<R: OtlpExport>(
    State(state): State<HttpState>,
    token: Option<axum::Extension<oxeye_auth::Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Errors before the encoding is known are answered in protobuf, OTLP's default.
    let encoding = match encoding_of(header_str(&headers, header::CONTENT_TYPE)) {
        Ok(e) => e,
        Err(e) => return error_response(&e, Encoding::Protobuf),
    };
    let token = token.map(|axum::Extension(p)| p);
    match handle::<R>(&state, token.as_ref(), &headers, body, encoding).await {
        Ok(response) => response,
        Err(e) => error_response(&e, encoding),
    }
}

async fn handle<R: OtlpExport>(
    state: &HttpState,
    token: Option<&oxeye_auth::Principal>,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<Response, ExportError> {
    let compression = compression_of(header_str(headers, header::CONTENT_ENCODING))?;
    let limit = state.max_request_bytes;
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(ExportError::TooLarge { size: len, limit });
    }
    let raw = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ExportError::TooLarge {
                    size: limit + 1,
                    limit,
                }
            } else {
                ExportError::Malformed {
                    encoding: "HTTP",
                    reason: format!("cannot read the request body: {e}"),
                }
            }
        })?
        .to_bytes();
    let pipeline = state.pipeline.for_token(token)?;
    let reservation = pipeline.admit(raw.len(), "http", token)?;
    let body = decompress(raw, compression, state.max_decompressed_bytes)?;
    let accepted = pipeline
        .export_encoded::<R>(body, encoding, "http", reservation)
        .await?;
    let response = R::response(accepted.rejected, accepted.message);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        encode(&response, encoding),
    )
        .into_response())
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Maps an export error to OTLP/HTTP's status code and `Status` body (the one place this is
/// decided for HTTP).
pub fn error_response(err: &ExportError, encoding: Encoding) -> Response {
    let (status, rpc_code, retry_after): (StatusCode, i32, Option<Duration>) = match err {
        ExportError::Malformed { .. } => (StatusCode::BAD_REQUEST, code::INVALID_ARGUMENT, None),
        ExportError::UnsupportedMediaType(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code::INVALID_ARGUMENT,
            None,
        ),
        ExportError::TooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, code::INVALID_ARGUMENT, None)
        }
        ExportError::Overloaded { retry_after, .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            code::RESOURCE_EXHAUSTED,
            Some(*retry_after),
        ),
        ExportError::Unavailable { retry_after, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            code::UNAVAILABLE,
            Some(*retry_after),
        ),
        ExportError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, None),
    };
    let message = err.to_string();
    let body = match encoding {
        Encoding::Protobuf => RpcStatus {
            code: rpc_code,
            message,
            details: retry_after.map(retry_info).into_iter().collect(),
        }
        .encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&serde_json::json!({
            "code": rpc_code,
            "message": message,
        }))
        .unwrap_or_default(),
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response();
    if let Some(delay) = retry_after {
        let secs = delay.as_secs().max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}
