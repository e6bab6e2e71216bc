use std::fmt;
use std::str::FromStr;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::ModelError;
use crate::schema;

/// One oxeye table. Every ingested row belongs to exactly one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    Spans,
    Logs,
    /// Gauge and sum points.
    Metrics,
    /// Explicit-bucket histogram points.
    Histograms,
    /// Exponential histogram points.
    ExpHistograms,
    /// Summary points.
    Summaries,
}

impl Signal {
    pub const ALL: [Signal; 6] = [
        Signal::Spans,
        Signal::Logs,
        Signal::Metrics,
        Signal::Histograms,
        Signal::ExpHistograms,
        Signal::Summaries,
    ];

    /// The SQL table name, which is also the name used in paths and metrics labels.
    pub fn table_name(self) -> &'static str {
        match self {
            Signal::Spans => "spans",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
            Signal::Histograms => "histograms",
            Signal::ExpHistograms => "exp_histograms",
            Signal::Summaries => "summaries",
        }
    }

    /// The storage schema of this signal's batches.
    pub fn schema(self) -> SchemaRef {
        match self {
            Signal::Spans => schema::spans(),
            Signal::Logs => schema::logs(),
            Signal::Metrics => schema::metrics(),
            Signal::Histograms => schema::histograms(),
            Signal::ExpHistograms => schema::exp_histograms(),
            Signal::Summaries => schema::summaries(),
        }
    }

    /// The column that places a row in time (used for pruning, partitioning and retention).
    pub fn time_column(self) -> &'static str {
        match self {
            Signal::Spans => "start_time",
            _ => "time",
        }
    }

    /// A stable small number for this signal, used in binary formats (WAL records).
    pub fn code(self) -> u8 {
        match self {
            Signal::Spans => 1,
            Signal::Logs => 2,
            Signal::Metrics => 3,
            Signal::Histograms => 4,
            Signal::ExpHistograms => 5,
            Signal::Summaries => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.table_name())
    }
}

impl FromStr for Signal {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spans" | "traces" => Ok(Signal::Spans),
            "logs" => Ok(Signal::Logs),
            "metrics" => Ok(Signal::Metrics),
            "histograms" => Ok(Signal::Histograms),
            "exp_histograms" => Ok(Signal::ExpHistograms),
            "summaries" => Ok(Signal::Summaries),
            other => Err(ModelError::UnknownSignal(other.to_string())),
        }
    }
}

/// A record batch tagged with the signal (table) whose schema it has.
#[derive(Debug, Clone)]
pub struct SignalBatch {
    pub signal: Signal,
    pub batch: RecordBatch,
}

impl SignalBatch {
    pub fn new(signal: Signal, batch: RecordBatch) -> Self {
        SignalBatch { signal, batch }
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// Bytes the batch's rows use (not the spare capacity of its buffers), for admission and
    /// flush decisions.
    pub fn memory_size(&self) -> usize {
        used_bytes(&self.batch)
    }
}

/// Bytes the rows of a batch use. `RecordBatch::get_array_memory_size` counts buffer capacity,
/// which for a small batch fresh from builders can be many times what it holds.
pub fn used_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}
