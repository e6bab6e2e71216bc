use arrow::error::ArrowError;

/// Errors of the data model: a batch that does not have the shape of its signal, or an Arrow
/// failure while building one.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: &'static str,
        #[source]
        source: ArrowError,
    },
    #[error("column `{column}` is missing from the {table} batch or has the wrong type")]
    Column { table: &'static str, column: String },
    #[error("corrupt typed attribute sidecar in column `{column}`: {reason}")]
    Sidecar { column: String, reason: String },
    #[error(
        "unknown signal `{0}`; expected one of spans, logs, metrics, histograms, exp_histograms, summaries"
    )]
    UnknownSignal(String),
}

impl ModelError {
    pub(crate) fn arrow(context: &'static str) -> impl FnOnce(ArrowError) -> ModelError {
        move |source| ModelError::Arrow { context, source }
    }
}
