use std::time::Duration;

use datafusion::error::DataFusionError;

/// Why a query failed. `http::error_response` and the Postgres layer map these to their codes.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query text or plan is wrong: syntax, unknown table or column, bad types.
    #[error("{message}")]
    Invalid {
        message: String,
        /// 1-based line and column of the problem, when the parser knows it.
        position: Option<(u64, u64)>,
    },
    /// The SQL surface is read-only.
    #[error(
        "oxeye's SQL is read-only: {0} statements are not allowed; use SELECT, WITH, EXPLAIN or SHOW"
    )]
    ReadOnly(String),
    #[error(
        "the query ran longer than the {0:?} limit; narrow the time range or raise --query-timeout"
    )]
    Timeout(Duration),
    #[error("the query needs more memory than the {limit}-byte limit: {message}")]
    Memory { limit: usize, message: String },
    #[error("too many queries are running; try again shortly")]
    Busy,
    /// A node the query reads from failed while it ran; the same query may well work at once.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error while running the query: {0}")]
    Internal(String),
}

impl QueryError {
    pub fn from_datafusion(e: DataFusionError, memory_limit: usize) -> QueryError {
        let root = e.find_root();
        if let DataFusionError::External(inner) = root
            && let Some(remote @ oxeye_store::StoreError::Remote { .. }) =
                inner.downcast_ref::<oxeye_store::StoreError>()
        {
            return QueryError::Unavailable(remote.to_string());
        }
        match root {
            DataFusionError::ResourcesExhausted(m) => QueryError::Memory {
                limit: memory_limit,
                message: m.clone(),
            },
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_)
            | DataFusionError::Execution(_)
            | DataFusionError::ArrowError(..) => {
                let message = root.to_string();
                let position = position_of(&message);
                QueryError::Invalid { message, position }
            }
            _ => QueryError::Internal(e.to_string()),
        }
    }

    /// A parser error about the end of the input (`found: EOF`) points at the end of `sql`.
    pub fn at_end_of(self, sql: &str) -> QueryError {
        match self {
            QueryError::Invalid {
                message,
                position: None,
            } if message.contains("found: EOF") => {
                let trimmed = sql.trim_end();
                let line = trimmed.lines().count().max(1) as u64;
                let column = trimmed
                    .lines()
                    .last()
                    .map(|l| l.chars().count() + 1)
                    .unwrap_or(1) as u64;
                QueryError::Invalid {
                    message,
                    position: Some((line, column)),
                }
            }
            other => other,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::Invalid { .. } => "invalid",
            QueryError::ReadOnly(_) => "read_only",
            QueryError::Timeout(_) => "timeout",
            QueryError::Memory { .. } => "memory",
            QueryError::Busy => "busy",
            QueryError::Unavailable(_) => "unavailable",
            QueryError::Internal(_) => "internal",
        }
    }
}

/// Finds "Line: L, Column: C" in a parser message.
fn position_of(message: &str) -> Option<(u64, u64)> {
    let at = message.find("Line: ")?;
    let rest = &message[at + 6..];
    let line: u64 = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let col_at = rest.find("Column: ")?;
    let col: u64 = rest[col_at + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((line, col))
}

#[cfg(test)]
mod tests {
    #[test]
    fn end_of_input_gets_the_end_position() {
        let e = super::QueryError::Invalid {
            message: "Expected: an expression, found: EOF".into(),
            position: None,
        };
        match e.at_end_of("SELECT count(*)\nFROM spans\nWHERE  ") {
            super::QueryError::Invalid { position, .. } => assert_eq!(position, Some((3, 6))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn finds_positions() {
        assert_eq!(
            super::position_of(
                "sql parser error: Expected: end of statement, found: x at Line: 1, Column: 15"
            ),
            Some((1, 15))
        );
        assert_eq!(super::position_of("no position"), None);
    }
}
