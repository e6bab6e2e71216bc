//! oxeye query: SQL and the read APIs over the store.
//!
//! This crate owns the DataFusion session (tables over the store with time, statistics and
//! index pushdown; the `search()` function; the `traces` view), the HTTP API on port 7700 (SQL,
//! traces, logs, services, metrics, RED, dependencies, the Jaeger-compatible API, health and
//! `/metrics`) and the PostgreSQL wire protocol. It reads through `oxeye_store`'s scan API and
//! never writes: the SQL surface is read-only. In a cluster it also runs query nodes' partial
//! aggregates on store nodes ([`partial`]).

pub mod api;
pub mod attributes;
pub mod convert;
pub mod engine;
pub mod error;
pub mod format;
pub mod http;
pub mod metrics;
pub mod partial;
pub mod pg;
pub mod pushdown;
pub mod rowfilter;
pub mod system;
pub mod table;
pub mod udf;

pub use engine::{QueryConfig, QueryEngine, QueryResult};
pub use error::QueryError;
