//! One module per page.

pub mod alerts;
pub mod logs;
pub mod metrics;
pub mod services;
pub mod sql;
pub mod trace;
pub mod traces;
