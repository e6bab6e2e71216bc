//! Alert rules as users write them (SQL or a builder form), their validation, and the SQL each
//! builder compiles to. Everything here is pure; checking that the SQL plans is the service's
//! job (it needs the query engine).

use std::collections::BTreeMap;
use std::fmt;

use oxeye_query::api::params::{severity_floor, sql_str};
use oxeye_query::api::red::REQUEST_SPANS;
use serde::{Deserialize, Serialize};

use crate::AlertError;
use crate::template;
use crate::time::Dur;

/// How a row's `value` is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub op: CompareOp,
    pub threshold: f64,
}

impl Condition {
    /// Whether a row with this value is an active alert. NaN never is.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            CompareOp::Gt => value > self.threshold,
            CompareOp::Ge => value >= self.threshold,
            CompareOp::Lt => value < self.threshold,
            CompareOp::Le => value <= self.threshold,
            CompareOp::Eq => value == self.threshold,
            CompareOp::Ne => !value.is_nan() && value != self.threshold,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    #[default]
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// Where notifications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// oxeye's generic JSON payload.
    Webhook,
    /// Prometheus Alertmanager's `POST /api/v2/alerts`.
    Alertmanager,
    /// A Slack-compatible incoming webhook.
    Slack,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Alertmanager => "alertmanager",
            ChannelKind::Slack => "slack",
        }
    }
}

/// A named, reusable notification channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    pub url: String,
}

impl Channel {
    pub fn validate(&self) -> Result<(), AlertError> {
        if self.name.trim().is_empty() || self.name.len() > 100 {
            return Err(AlertError::invalid(
                "a channel needs a name of 1 to 100 characters",
            ));
        }
        check_url(&self.url)
    }
}

/// One entry of a rule's `notify`: a channel given inline (`type` + `url`) or by name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ChannelKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

fn check_url(url: &str) -> Result<(), AlertError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(AlertError::invalid(format!(
            "notification URL `{url}` must be http:// or https:// with a host"
        ))),
        Err(e) => Err(AlertError::invalid(format!(
            "notification URL `{url}` is not a URL: {e}"
        ))),
    }
}

impl NotifyTarget {
    fn validate(&self) -> Result<(), AlertError> {
        match (&self.kind, &self.url, &self.channel) {
            (Some(_), Some(url), None) => check_url(url),
            (None, None, Some(name)) if !name.trim().is_empty() => Ok(()),
            _ => Err(AlertError::invalid(
                "each notify entry is either {\"type\": \"webhook\"|\"alertmanager\"|\"slack\", \"url\": ...} \
                 or {\"channel\": \"name\"}",
            )),
        }
    }
}

fn default_window() -> Dur {
    Dur::secs(300)
}

fn default_percentile() -> f64 {
    99.0
}

fn default_aggregation() -> String {
    "avg".into()
}

/// The builder form: common conditions without writing SQL. Each compiles to a query whose
/// rows are per service (and operation), with the measured figure as `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Builder {
    /// Percentage (0-100) of a service's request spans with status ERROR.
    ErrorRate {
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        operation: Option<String>,
        #[serde(default = "default_window")]
        window: Dur,
    },
    /// A latency percentile of request spans, in milliseconds.
    Latency {
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        operation: Option<String>,
        #[serde(default = "default_percentile")]
        percentile: f64,
        #[serde(default = "default_window")]
        window: Dur,
    },
    /// Log records matching a full-text query (and service, minimum severity) per service. With
    /// a service given there is always a row (0 when nothing matched), so `< 1` catches silence.
    LogCount {
        #[serde(default)]
        query: Option<String>,
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        severity: Option<String>,
        #[serde(default = "default_window")]
        window: Dur,
    },
    /// A metric's points aggregated over the window: avg, sum, min, max, count, last, or rate
    /// (per-second increase of a counter).
    Metric {
        name: String,
        #[serde(default = "default_aggregation")]
        aggregation: String,
        #[serde(default)]
        filters: BTreeMap<String, String>,
        #[serde(default)]
        group_by: Vec<String>,
        #[serde(default = "default_window")]
        window: Dur,
    },
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A column reference for a metric label: `service_name` and the other columns as they are,
/// anything else as an attribute.
fn metric_label(key: &str) -> String {
    match key {
        "service_name" | "name" | "unit" | "type" | "temporality" => key.to_string(),
        _ => format!("attributes[{}]", sql_str(key)),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Builder {
    fn window(&self) -> Dur {
        match self {
            Builder::ErrorRate { window, .. }
            | Builder::Latency { window, .. }
            | Builder::LogCount { window, .. }
            | Builder::Metric { window, .. } => *window,
        }
    }

    /// The SQL this builder stands for.
    pub fn to_sql(&self) -> Result<String, AlertError> {
        let window_ms = self.window().as_millis();
        if window_ms < 1000 {
            return Err(AlertError::invalid(
                "the builder's window must be at least 1s",
            ));
        }
        let since = format!("now() - INTERVAL '{window_ms} milliseconds'");
        Ok(match self {
            Builder::ErrorRate {
                service, operation, ..
            }
            | Builder::Latency {
                service, operation, ..
            } => {
                let mut filters = vec![format!("start_time > {since}"), REQUEST_SPANS.to_string()];
                if let Some(s) = present(service) {
                    filters.push(format!("service_name = {}", sql_str(s)));
                }
                let mut keys = vec!["service_name".to_string()];
                if let Some(op) = present(operation) {
                    filters.push(format!("name = {}", sql_str(op)));
                    keys.push("name AS operation".into());
                }
                let value = match self {
                    Builder::Latency { percentile, .. } => {
                        if !(0.0..=100.0).contains(percentile) || percentile.is_nan() {
                            return Err(AlertError::invalid(
                                "the latency percentile must be between 0 and 100",
                            ));
                        }
                        format!(
                            "approx_percentile_cont({}) WITHIN GROUP (ORDER BY duration_ns) / 1e6",
                            percentile / 100.0
                        )
                    }
                    _ => "100.0 * count(*) FILTER (WHERE status_code = 'ERROR') / count(*)"
                        .to_string(),
                };
                let group: Vec<String> = (1..=keys.len()).map(|i| i.to_string()).collect();
                format!(
                    "SELECT {}, {value} AS value FROM spans WHERE {} GROUP BY {}",
                    keys.join(", "),
                    filters.join(" AND "),
                    group.join(", ")
                )
            }
            Builder::LogCount {
                query,
                service,
                severity,
                ..
            } => {
                let mut filters = vec![format!("time > {since}")];
                if let Some(q) = present(query) {
                    filters.push(format!("search(body, {})", sql_str(q)));
                }
                if let Some(s) = present(service) {
                    filters.push(format!("service_name = {}", sql_str(s)));
                }
                if let Some(level) = present(severity) {
                    let floor = severity_floor(level).ok_or_else(|| {
                        AlertError::invalid(format!(
                            "unknown severity `{level}`; use TRACE, DEBUG, INFO, WARN, ERROR, FATAL or a number"
                        ))
                    })?;
                    filters.push(format!("severity_number >= {floor}"));
                }
                // With a service given the query has no GROUP BY, so it always returns one row
                // and "fewer than N lines" fires when the service falls silent.
                match present(service) {
                    Some(s) => format!(
                        "SELECT {} AS service_name, count(*) AS value FROM logs WHERE {}",
                        sql_str(s),
                        filters.join(" AND ")
                    ),
                    None => format!(
                        "SELECT service_name, count(*) AS value FROM logs WHERE {} GROUP BY 1",
                        filters.join(" AND ")
                    ),
                }
            }
            Builder::Metric {
                name,
                aggregation,
                filters,
                group_by,
                ..
            } => {
                if name.trim().is_empty() {
                    return Err(AlertError::invalid(
                        "the metric builder needs a metric name",
                    ));
                }
                let seconds = window_ms as f64 / 1000.0;
                let value = match aggregation.to_ascii_lowercase().as_str() {
                    "avg" | "mean" => "avg(value)".to_string(),
                    "sum" => "sum(value)".to_string(),
                    "min" => "min(value)".to_string(),
                    "max" => "max(value)".to_string(),
                    "count" => "count(*)".to_string(),
                    "last" => "last_value(value ORDER BY time)".to_string(),
                    // Cumulative counters: the increase over the window (resets ignored);
                    // delta counters: the sum of the deltas.
                    "rate" => format!(
                        "CASE WHEN max(temporality) = 'delta' THEN sum(value) \
                         ELSE max(value) - min(value) END / {seconds}"
                    ),
                    other => {
                        return Err(AlertError::invalid(format!(
                            "unknown aggregation `{other}`; use avg, sum, min, max, count, last or rate"
                        )));
                    }
                };
                let mut conditions = vec![
                    format!("name = {}", sql_str(name.trim())),
                    format!("time > {since}"),
                ];
                for (k, v) in filters {
                    conditions.push(format!("{} = {}", metric_label(k), sql_str(v)));
                }
                let keys: Vec<String> = group_by
                    .iter()
                    .filter(|k| !k.trim().is_empty())
                    .map(|k| format!("{} AS {}", metric_label(k.trim()), quote_ident(k.trim())))
                    .collect();
                let select_keys: String = keys.iter().map(|k| format!("{k}, ")).collect();
                let group = if keys.is_empty() {
                    String::new()
                } else {
                    let n: Vec<String> = (1..=keys.len()).map(|i| i.to_string()).collect();
                    format!(" GROUP BY {}", n.join(", "))
                };
                format!(
                    "SELECT {select_keys}{value} AS value FROM metrics WHERE {}{group}",
                    conditions.join(" AND ")
                )
            }
        })
    }
}

fn default_interval() -> Dur {
    Dur::secs(60)
}

fn default_repeat() -> Dur {
    Dur::secs(4 * 3600)
}

fn default_true() -> bool {
    true
}

/// A rule as users send it. Unknown fields are ignored so that a rule read from the API can be
/// sent back as it is (with its `id`, `state` and so on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<Builder>,
    pub condition: Condition,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    #[serde(rename = "for", default)]
    pub for_: Dur,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub notify: Vec<NotifyTarget>,
    #[serde(default = "default_repeat")]
    pub repeat_interval: Dur,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// Labels every instance carries; a rule's own labels may not redefine them.
pub const RESERVED_LABELS: [&str; 2] = ["alertname", "severity"];

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl RuleSpec {
    /// Checks everything that needs no query engine and returns the SQL to run (the builder's
    /// when there is one, so `sql` and `builder` never disagree).
    pub fn validate(&self) -> Result<String, AlertError> {
        let name = self.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(AlertError::invalid(
                "a rule needs a name of 1 to 200 characters",
            ));
        }
        let sql = match (&self.builder, present(&self.sql)) {
            (Some(builder), _) => builder.to_sql()?,
            (None, Some(sql)) => sql.to_string(),
            (None, None) => {
                return Err(AlertError::invalid(
                    "a rule needs `sql` (a query with a numeric `value` column) or a `builder`",
                ));
            }
        };
        if !self.condition.threshold.is_finite() {
            return Err(AlertError::invalid(
                "the condition's threshold must be a finite number",
            ));
        }
        if self.interval.0 < std::time::Duration::from_secs(1) {
            return Err(AlertError::invalid(
                "the evaluation interval must be at least 1s",
            ));
        }
        if self.repeat_interval.0 < std::time::Duration::from_secs(1) {
            return Err(AlertError::invalid(
                "the repeat interval must be at least 1s",
            ));
        }
        for key in self.labels.keys() {
            if !valid_label_name(key) {
                return Err(AlertError::invalid(format!(
                    "label name `{key}` must be letters, digits and underscores, not starting with a digit"
                )));
            }
            if RESERVED_LABELS.contains(&key.as_str()) {
                return Err(AlertError::invalid(format!(
                    "label `{key}` is set by oxeye (from the rule's name and severity)"
                )));
            }
        }
        for (key, text) in &self.annotations {
            template::check(text)
                .map_err(|e| AlertError::invalid(format!("annotation `{key}`: {e}")))?;
        }
        for target in &self.notify {
            target.validate()?;
        }
        Ok(sql)
    }
}

/// Where a rule was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleSource {
    /// Created through the HTTP API (or UI); stored in the alerting store.
    Api,
    /// Loaded from the rules file; edit the file to change it.
    File,
}

/// A stored rule: the spec with its SQL resolved and its identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    pub source: RuleSource,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl Rule {
    /// The query the evaluator runs (validated when the rule was saved).
    pub fn sql(&self) -> &str {
        self.spec.sql.as_deref().unwrap_or_default()
    }
}

/// A rule id for a rule of the rules file: stable across reloads, derived from its name.
pub fn file_rule_id(name: &str) -> String {
    let slug: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let hash = twox_hash::XxHash64::oneshot(0, name.trim().as_bytes());
    format!(
        "file-{}-{:08x}",
        slug.trim_matches('-').chars().take(40).collect::<String>(),
        hash as u32
    )
}

/// A fresh id for a rule created through the API.
pub fn new_rule_id() -> String {
    format!("r{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> RuleSpec {
        serde_json::from_value(json).expect("spec")
    }

    #[test]
    fn conditions_compare_as_written() {
        let c = |op, threshold| Condition { op, threshold };
        assert!(c(CompareOp::Gt, 5.0).holds(5.1));
        assert!(!c(CompareOp::Gt, 5.0).holds(5.0));
        assert!(c(CompareOp::Ge, 5.0).holds(5.0));
        assert!(c(CompareOp::Lt, 1.0).holds(0.5));
        assert!(c(CompareOp::Le, 1.0).holds(1.0));
        assert!(c(CompareOp::Eq, 2.0).holds(2.0));
        assert!(c(CompareOp::Ne, 2.0).holds(3.0));
        assert!(!c(CompareOp::Ne, 2.0).holds(f64::NAN));
        assert!(!c(CompareOp::Gt, 0.0).holds(f64::NAN));
    }

    #[test]
    fn a_minimal_rule_gets_defaults_and_keeps_its_sql() {
        let s = spec(serde_json::json!({
            "name": "r", "sql": "SELECT 1 AS value", "condition": {"op": ">", "threshold": 0},
            "id": "ignored", "state": "firing"
        }));
        assert_eq!(s.interval, Dur::secs(60));
        assert_eq!(s.for_, Dur::secs(0));
        assert_eq!(s.severity, Severity::Warning);
        assert!(s.enabled);
        assert_eq!(s.validate().expect("valid"), "SELECT 1 AS value");
    }

    #[test]
    fn invalid_rules_say_what_is_wrong() {
        let base = serde_json::json!({
            "name": "r", "sql": "SELECT 1 AS value", "condition": {"op": ">", "threshold": 0}
        });
        let with = |k: &str, v: serde_json::Value| {
            let mut j = base.clone();
            j[k] = v;
            j
        };
        let err = |j: serde_json::Value| spec(j).validate().unwrap_err().to_string();
        assert!(err(with("name", " ".into())).contains("name"));
        assert!(err(with("sql", "".into())).contains("`sql`"));
        assert!(err(with("interval", "100ms".into())).contains("at least 1s"));
        assert!(
            err(with("labels", serde_json::json!({"alertname": "x"}))).contains("set by oxeye")
        );
        assert!(err(with("labels", serde_json::json!({"9x": "x"}))).contains("label name"));
        assert!(
            err(with("annotations", serde_json::json!({"s": "{{ $nope }}"})))
                .contains("annotation `s`")
        );
        assert!(err(with("notify", serde_json::json!([{"type": "webhook"}]))).contains("notify"));
        assert!(
            err(with(
                "notify",
                serde_json::json!([{"type": "webhook", "url": "ftp://x"}])
            ))
            .contains("http")
        );
        assert!(
            serde_json::from_value::<RuleSpec>(with(
                "condition",
                serde_json::json!({"op": "=>", "threshold": 1})
            ))
            .is_err()
        );
        assert!(serde_json::from_value::<RuleSpec>(with("for", "soon".into())).is_err());
    }

    #[test]
    fn builders_compile_to_escaped_sql() {
        let b = Builder::ErrorRate {
            service: Some("check'out".into()),
            operation: None,
            window: Dur::secs(60),
        };
        let sql = b.to_sql().expect("sql");
        assert!(sql.contains("service_name = 'check''out'"), "{sql}");
        assert!(sql.contains("INTERVAL '60000 milliseconds'"), "{sql}");
        assert!(sql.contains("AS value"), "{sql}");
        let b = Builder::Latency {
            service: None,
            operation: Some("GET /".into()),
            percentile: 99.0,
            window: Dur::secs(300),
        };
        let sql = b.to_sql().expect("sql");
        assert!(sql.contains("approx_percentile_cont(0.99)"), "{sql}");
        assert!(sql.contains("name AS operation"), "{sql}");
        let b = Builder::LogCount {
            query: Some("timeout".into()),
            service: None,
            severity: Some("error".into()),
            window: Dur::secs(60),
        };
        let sql = b.to_sql().expect("sql");
        assert!(sql.contains("search(body, 'timeout')") && sql.contains("severity_number >= 17"));
        assert!(sql.contains("GROUP BY"), "{sql}");
        let b = Builder::LogCount {
            query: None,
            service: Some("payment".into()),
            severity: None,
            window: Dur::secs(60),
        };
        let sql = b.to_sql().expect("sql");
        assert!(
            sql.starts_with("SELECT 'payment' AS service_name, count(*)")
                && !sql.contains("GROUP BY"),
            "{sql}"
        );
        let b = Builder::Metric {
            name: "queue.depth".into(),
            aggregation: "max".into(),
            filters: BTreeMap::from([("queue".into(), "orders".into())]),
            group_by: vec!["service_name".into(), "queue".into()],
            window: Dur::secs(60),
        };
        let sql = b.to_sql().expect("sql");
        assert!(sql.contains("attributes['queue'] AS \"queue\""), "{sql}");
        assert!(sql.contains("GROUP BY 1, 2"), "{sql}");
        let bad = Builder::Metric {
            name: "m".into(),
            aggregation: "median".into(),
            filters: BTreeMap::new(),
            group_by: vec![],
            window: Dur::secs(60),
        };
        assert!(bad.to_sql().unwrap_err().to_string().contains("median"));
    }

    #[test]
    fn the_builder_wins_over_stale_sql() {
        let s = spec(serde_json::json!({
            "name": "r", "sql": "SELECT 1 AS value", "condition": {"op": ">", "threshold": 0},
            "builder": {"kind": "error_rate", "service": "a"}
        }));
        assert!(s.validate().expect("valid").contains("FROM spans"));
    }

    #[test]
    fn file_rule_ids_are_stable_and_readable() {
        assert_eq!(file_rule_id("High errors!"), file_rule_id("High errors!"));
        assert!(file_rule_id("High errors!").starts_with("file-high-errors-"));
        assert_ne!(file_rule_id("a b"), file_rule_id("a-b"));
    }
}
