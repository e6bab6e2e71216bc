//! oxeye alerting: rules whose SQL result rows are alert instances, the evaluator that moves
//! each instance through inactive -> pending -> firing -> resolved (honouring `for`), the
//! notifications it sends (generic webhook, Alertmanager, Slack) with grouping, repeats,
//! retries and silences, the durable store of rules and state, the `alert_events` and
//! `alert_notifications` SQL tables, and the `/api/v1/alerts` HTTP API.
//!
//! The state machine ([`state`]), notification planning ([`plan`]), payloads ([`payload`]),
//! rule validation and builders ([`rule`]), templates and silences are plain functions; the
//! evaluator loop, delivery and persistence are the I/O around them.

pub mod error;
pub mod evaluator;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod notify;
pub mod payload;
pub mod plan;
pub mod rule;
pub mod rules_file;
pub mod service;
pub mod silence;
pub mod state;
pub mod storage;
pub mod storage_pg;
pub mod tables;
pub mod template;
pub mod time;

pub use error::AlertError;
pub use service::{AlertConfig, AlertService};
