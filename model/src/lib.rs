//! oxeye's data model: the Arrow shape of every signal and the lossless OTLP <-> Arrow conversion.
//!
//! This crate owns:
//! - the Arrow schemas of the six tables (`spans`, `logs`, `metrics`, `histograms`,
//!   `exp_histograms`, `summaries`), whose column names are oxeye's public SQL contract;
//! - conversion of OTLP export requests into [`SignalBatch`]es (validating ids and rejecting bad
//!   items one by one, as OTLP's `partial_success` asks) and back again, keeping every OTLP field;
//! - the [`ingest::Ingest`] interface through which collectors hand batches to the store.
//!
//! It must not do I/O: no sockets, files or clocks. Everything here is plain functions over
//! values, so that the collector, the store and the tests can share it.

pub mod attributes;
pub mod dict;
pub mod enums;
pub mod error;
pub mod ids;
pub mod ingest;
pub mod logs;
pub mod metrics;
mod resource;
pub mod schema;
pub mod signal;
pub mod spans;
mod util;

pub use error::ModelError;
pub use signal::{Signal, SignalBatch, used_bytes};
pub use util::DictReader;

/// The OTLP protobuf types (opentelemetry-proto's tonic build), re-exported so every crate uses
/// the same version.
pub use opentelemetry_proto::tonic as otlp;

/// Batches and the number of items (spans, log records, data points) that were rejected as
/// invalid, with a human-readable reason for the first few.
#[derive(Debug, Default)]
pub struct Converted {
    pub batches: Vec<SignalBatch>,
    pub accepted: u64,
    pub rejected: u64,
    pub rejection_reason: Option<String>,
}

impl Converted {
    pub(crate) fn reject(&mut self, reason: impl FnOnce() -> String) {
        self.rejected += 1;
        if self.rejection_reason.is_none() {
            self.rejection_reason = Some(reason());
        }
    }

    /// Total rows across all batches.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.batch.num_rows()).sum()
    }
}
