//! oxeye collector: the edge that OpenTelemetry SDKs talk to.
//!
//! This crate owns the OTLP receivers (gRPC on 4317, HTTP on 4318, protobuf and JSON, gzip and
//! zstd), request admission by bytes, batching of converted Arrow batches, and routing of rows
//! to store shards. It hands batches on through [`oxeye_model::ingest::Ingest`] and never
//! touches storage itself.
//!
//! Layout: [`decode`] (bytes -> OTLP requests, pure), [`limits`] (attribute caps, pure),
//! [`pipeline`] (admission, conversion, submission: the part both surfaces share), [`batcher`]
//! and [`routing`] (toward the store), and the two thin surfaces [`grpc`] and [`http`], each
//! mapping errors to its protocol's codes in one place.

pub mod batcher;
pub mod config;
pub mod decode;
pub mod error;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod routing;
mod rpc_status;
pub mod server;

pub use config::CollectorConfig;
pub use error::ExportError;
pub use pipeline::Pipeline;
pub use pipeline::Pipelines;
pub use server::{RunningCollector, start, start_with_tenants};
