use oxeye_query::QueryError;

/// Why an alerting request or operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The rule, channel or silence as given cannot be used; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The rule's SQL does not plan (bad syntax, unknown table or column).
    #[error("the rule's SQL is not valid: {0}")]
    Query(#[source] QueryError),
    #[error("{0} not found")]
    NotFound(String),
    /// The request clashes with what exists (a duplicate name, a rule owned by the rules file).
    #[error("{0}")]
    Conflict(String),
    /// Rules or state could not be written durably; nothing was changed.
    #[error("cannot save alerting state in {path}: {source}; check the disk and its free space")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the alert rules file {path} is not valid: {message}")]
    RulesFile { path: String, message: String },
}

impl AlertError {
    pub fn invalid(message: impl Into<String>) -> AlertError {
        AlertError::Invalid(message.into())
    }

    pub fn storage(path: &std::path::Path, source: std::io::Error) -> AlertError {
        AlertError::Storage {
            path: path.display().to_string(),
            source,
        }
    }
}
