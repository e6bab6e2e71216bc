//! OTLP/gRPC surface: TraceService, LogsService and MetricsService.
//!
//! tonic does the framing, decompression (gzip, zstd) and message size limit; our codec hands
//! the raw message bytes to the [`Pipeline`], which admits the request by size *before*
//! decoding it, and decodes off the I/O runtime. Decoding ourselves also lets a malformed
//! message get OTLP's INVALID_ARGUMENT (tonic's own codec would answer INTERNAL).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use prost::Message;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Status};

use crate::ExportError;
use crate::decode::Encoding;
use crate::pipeline::{OtlpExport, Pipelines};
use crate::rpc_status::{RpcStatus, code, retry_info};

/// Maps an export error to the gRPC status OTLP asks for (the one place this is decided).
pub fn to_status(err: &ExportError) -> Status {
    let message = err.to_string();
    match err {
        ExportError::Malformed { .. } | ExportError::UnsupportedMediaType(_) => {
            Status::invalid_argument(message)
        }
        // RESOURCE_EXHAUSTED without RetryInfo: OTLP clients must not retry a request that can
        // never fit (OUT_OF_RANGE, tonic's own choice, is retryable in OTLP).
        ExportError::TooLarge { .. } => Status::resource_exhausted(message),
        ExportError::Overloaded { retry_after, .. } => with_retry_info(
            Code::ResourceExhausted,
            code::RESOURCE_EXHAUSTED,
            message,
            *retry_after,
        ),
        ExportError::Unavailable { retry_after, .. } => {
            with_retry_info(Code::Unavailable, code::UNAVAILABLE, message, *retry_after)
        }
        ExportError::Internal(_) => Status::internal(message),
    }
}

fn with_retry_info(
    code: Code,
    rpc_code: i32,
    message: String,
    delay: std::time::Duration,
) -> Status {
    let details = RpcStatus {
        code: rpc_code,
        message: message.clone(),
        details: vec![retry_info(delay)],
    }
    .encode_to_vec();
    Status::with_details(code, message, Bytes::from(details))
}

/// tonic refuses a message over the size limit with OUT_OF_RANGE before our handler runs; OTLP
/// clients retry that code forever. Answer as the HTTP surface does (too large: do not retry).
fn too_large_is_not_retryable(response: &mut http::Response<tonic::body::Body>, limit: usize) {
    let headers = response.headers_mut();
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) == Some("11") {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        let message = format!(
            "request message exceeds the limit of {limit} bytes; send smaller batches or raise --max-request-size"
        );
        if let Ok(v) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", v);
        }
    }
}

/// Passes request messages through as bytes and encodes responses with prost.
struct RawCodec<Resp>(PhantomData<fn() -> Resp>);

struct RawDecoder;
struct ProstEncoder<Resp>(PhantomData<fn() -> Resp>);

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let len = src.remaining();
        Ok(Some(src.copy_to_bytes(len)))
    }
}

impl<Resp: Message> Encoder for ProstEncoder<Resp> {
    type Item = Resp;
    type Error = Status;
    fn encode(&mut self, item: Resp, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl<Resp: Message + Send + 'static> Codec for RawCodec<Resp> {
    type Encode = Resp;
    type Decode = Bytes;
    type Encoder = ProstEncoder<Resp>;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// One OTLP gRPC service (`R` picks traces, logs or metrics).
pub struct OtlpGrpc<R> {
    pipeline: Pipelines,
    max_message_bytes: usize,
    _request: PhantomData<fn() -> R>,
}

impl<R> Clone for OtlpGrpc<R> {
    fn clone(&self) -> Self {
        OtlpGrpc {
            pipeline: self.pipeline.clone(),
            max_message_bytes: self.max_message_bytes,
            _request: PhantomData,
        }
    }
}

impl<R: OtlpExport> OtlpGrpc<R> {
    pub fn new(pipeline: Pipelines, max_message_bytes: usize) -> Self {
        OtlpGrpc {
            pipeline,
            max_message_bytes,
            _request: PhantomData,
        }
    }
}

impl<R: OtlpExport> NamedService for OtlpGrpc<R> {
    const NAME: &'static str = R::GRPC_SERVICE;
}

struct ExportMethod<R> {
    pipeline: Pipelines,
    _request: PhantomData<fn() -> R>,
}

impl<R: OtlpExport> UnaryService<Bytes> for ExportMethod<R> {
    type Response = R::Response;
    type Future = futures::future::BoxFuture<'static, Result<tonic::Response<R::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            let token = request.extensions().get::<oxeye_auth::Principal>().cloned();
            let pipeline = pipeline
                .for_token(token.as_ref())
                .map_err(|e| to_status(&e))?
                .clone();
            let body = request.into_inner();
            let reservation = pipeline
                .admit(body.len(), "grpc", token.as_ref())
                .map_err(|e| to_status(&e))?;
            let accepted = pipeline
                .export_encoded::<R>(body, Encoding::Protobuf, "grpc", reservation)
                .await
                .map_err(|e| to_status(&e))?;
            Ok(tonic::Response::new(R::response(
                accepted.rejected,
                accepted.message,
            )))
        })
    }
}

fn compression() -> EnabledCompressionEncodings {
    let mut enabled = EnabledCompressionEncodings::default();
    enabled.enable(CompressionEncoding::Gzip);
    enabled.enable(CompressionEncoding::Zstd);
    enabled
}

impl<R, B> tower::Service<http::Request<B>> for OtlpGrpc<R>
where
    R: OtlpExport,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != R::GRPC_PATH {
            return Box::pin(async move {
                let status = Status::unimplemented(format!("unknown method {}", req.uri().path()));
                Ok(status.into_http())
            });
        }
        let method = ExportMethod::<R> {
            pipeline: self.pipeline.clone(),
            _request: PhantomData,
        };
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec::<R::Response>(PhantomData))
                .apply_compression_config(compression(), compression())
                .apply_max_message_size_config(Some(max), None);
            let req = req.map(|b| b.map_err(Into::into).boxed_unsync());
            let mut response = grpc.unary(method, req).await;
            too_large_is_not_retryable(&mut response, max);
            Ok(response)
        })
    }
}
