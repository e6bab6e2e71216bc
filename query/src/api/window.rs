//! The time window most API calls take: `start`, `end` (default now) and `lookback`.

use serde::Deserialize;

use super::params::{now_ns, parse_duration_ns};
use super::search::time_param;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

impl Window {
    pub fn seconds(&self) -> f64 {
        (self.end - self.start).max(1) as f64 / 1e9
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct WindowParams {
    pub start: Option<String>,
    pub end: Option<String>,
    /// Window length when `start` is absent (e.g. `1h`).
    pub lookback: Option<String>,
}

impl WindowParams {
    /// The window, `default_lookback_s` long when neither `start` nor `lookback` is given.
    pub fn resolve(&self, default_lookback_s: i64) -> Result<Window, String> {
        let end = match self.end.as_deref().filter(|s| !s.is_empty()) {
            Some(e) => time_param("end", e)?,
            None => now_ns(),
        };
        let start = match (
            self.start.as_deref().filter(|s| !s.is_empty()),
            self.lookback.as_deref(),
        ) {
            (Some(s), _) => time_param("start", s)?,
            (None, Some(l)) => {
                end - parse_duration_ns(l)
                    .ok_or_else(|| format!("lookback `{l}` is not a duration like 1h"))?
            }
            (None, None) => end - default_lookback_s * 1_000_000_000,
        };
        if start > end {
            return Err("start is after end".into());
        }
        Ok(Window { start, end })
    }
}
