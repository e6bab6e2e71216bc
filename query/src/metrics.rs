//! The query layer's own figures, exposed at `/metrics` as `oxeye_query_*`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::{QueryError, QueryResult};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug)]
pub struct QueryMetrics {
    pub queries: Family<OutcomeLabels, Counter>,
    pub seconds: Histogram,
    pub rows: Counter,
}

impl QueryMetrics {
    pub fn register(registry: &mut Registry) -> QueryMetrics {
        let m = QueryMetrics {
            queries: Family::default(),
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            rows: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("oxeye_query");
        r.register("queries", "SQL queries by outcome", m.queries.clone());
        r.register("seconds", "Time to run a SQL query", m.seconds.clone());
        r.register("rows", "Rows returned by SQL queries", m.rows.clone());
        m
    }

    pub fn observe(&self, result: &Result<QueryResult, QueryError>, elapsed: Duration) {
        let outcome = match result {
            Ok(r) => {
                self.rows.inc_by(r.rows as u64);
                "ok"
            }
            Err(e) => e.kind(),
        };
        self.queries.get_or_create(&OutcomeLabels { outcome }).inc();
        self.seconds.observe(elapsed.as_secs_f64());
    }
}
