//! Alerts: the active alerts, the alert rules with a form to write one (SQL or a builder) and
//! dry-run it before saving, the history of state changes, and the silences.
//!
//! The lists come from the alerting API (`/api/v1/alerts/...`), render on the server, and
//! refresh every five seconds once the page is hydrated. Writing (save, enable / disable,
//! delete, silence, expire) happens in the browser after hydration. The parsing of what the user
//! types (`key=value` lines, notifier lines, matchers) is plain functions with unit tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use leptos::prelude::*;
use leptos::task::spawn_local;
use leptos_meta::Title;
use leptos_router::components::Form;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{ApiResult, delete_json, encode, get_json, post_json, put_json};
use crate::format;
use crate::trace_model::value_text;
use crate::widgets::{Empty, ErrorBox, Loading, Time, or_default, param};

/// How often the lists refresh in the browser.
const REFRESH: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The API's shapes (tolerant: every field has a default).

/// Labels and annotations as the API sends them (strings; anything else is shown as JSON).
pub type Labels = BTreeMap<String, Value>;

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RuleCondition {
    pub op: String,
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Evaluation {
    pub at: Option<String>,
    pub duration_ms: Option<f64>,
    pub error: Option<String>,
    pub rows: Option<u64>,
}

/// One instance of a rule: one label set, pending, firing or in error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertInstance {
    pub rule_id: String,
    pub rule_name: String,
    pub severity: String,
    pub state: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub value: Option<f64>,
    pub active_since: Option<String>,
    pub fired_at: Option<String>,
    pub silenced: bool,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertRule {
    pub id: String,
    pub name: String,
    pub sql: String,
    pub builder: Option<Value>,
    pub condition: RuleCondition,
    pub interval: String,
    #[serde(rename = "for")]
    pub for_duration: String,
    pub labels: Labels,
    pub annotations: Labels,
    pub severity: String,
    pub notify: Vec<Value>,
    pub repeat_interval: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub source: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub state: String,
    pub last_evaluation: Option<Evaluation>,
    pub instances: Vec<AlertInstance>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertsDoc {
    pub alerts: Vec<AlertInstance>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RulesDoc {
    pub rules: Vec<AlertRule>,
}

/// A state change of one instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertEvent {
    pub time: String,
    pub rule_id: String,
    pub rule_name: String,
    pub fingerprint: String,
    pub labels: Labels,
    pub from: String,
    pub to: String,
    pub value: Option<f64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryDoc {
    pub events: Vec<AlertEvent>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Matcher {
    pub name: String,
    pub op: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: Option<String>,
    pub ends_at: Option<String>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
    pub status: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SilencesDoc {
    pub silences: Vec<Silence>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DryInstance {
    pub labels: Labels,
    pub value: Option<f64>,
    pub active: bool,
    pub annotations: Labels,
}

/// The answer to a dry run: the SQL the rule runs and what it would make of the result now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DryRun {
    pub sql: String,
    pub elapsed_ms: Option<f64>,
    pub error: Option<String>,
    pub instances: Vec<DryInstance>,
}

// ---------------------------------------------------------------------------------------------
// Pure helpers: what the user types into what the API takes, and back.

/// `key=value` lines into a map. Blank lines and `#` comments are skipped; the value keeps its
/// inner spaces (`summary=fired {{ $value }}`).
pub fn parse_pairs(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("“{line}” is not key=value"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("“{line}” has no key before ="));
        }
        out.insert(key.to_string(), value.trim().to_string());
    }
    Ok(out)
}

/// A map as `key=value` lines, the form's way of showing labels and annotations.
pub fn pairs_text(map: &Labels) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn string_map(map: BTreeMap<String, String>) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )
}

/// Notifier kinds that take a URL (`channel` takes a channel's name).
pub const NOTIFY_KINDS: [&str; 3] = ["webhook", "alertmanager", "slack"];

/// Notify lines (`webhook http://...`, `alertmanager http://...`, `slack https://...`,
/// `channel ops`) into the API's `notify` list.
pub fn parse_notify(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kind, target) = match line.split_once(char::is_whitespace) {
            Some((k, t)) => (k.to_ascii_lowercase(), t.trim()),
            None => (line.to_ascii_lowercase(), ""),
        };
        if target.is_empty() {
            return Err(format!(
                "“{line}” needs a target: `{kind} <url>` or `channel <name>`"
            ));
        }
        if kind == "channel" {
            out.push(serde_json::json!({ "channel": target }));
        } else if NOTIFY_KINDS.iter().any(|k| *k == kind) {
            out.push(serde_json::json!({ "type": kind, "url": target }));
        } else {
            return Err(format!(
                "“{kind}” is not a notifier: use webhook, alertmanager, slack or channel"
            ));
        }
    }
    Ok(out)
}

/// The API's `notify` list as lines for the form.
pub fn notify_text(notify: &[Value]) -> String {
    notify
        .iter()
        .map(|n| match n.get("channel").and_then(Value::as_str) {
            Some(channel) => format!("channel {channel}"),
            None => format!(
                "{} {}",
                n.get("type").and_then(Value::as_str).unwrap_or("webhook"),
                n.get("url").and_then(Value::as_str).unwrap_or("")
            ),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One matcher: `name=value`, `name!=value`, `name=~regex` or `name!~regex` (the value may be
/// quoted).
pub fn parse_matcher(line: &str) -> Result<Matcher, String> {
    let line = line.trim();
    let Some(at) = line.find(['=', '!']) else {
        return Err(format!(
            "“{line}” is not a matcher: write name=value (or !=, =~, !~)"
        ));
    };
    let rest = &line[at..];
    let Some(op) = ["!=", "!~", "=~", "="]
        .into_iter()
        .find(|op| rest.starts_with(*op))
    else {
        return Err(format!(
            "“{line}” is not a matcher: write name=value (or !=, =~, !~)"
        ));
    };
    let name = line[..at].trim();
    if name.is_empty() {
        return Err(format!("“{line}” has no label name"));
    }
    let value = rest[op.len()..].trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Ok(Matcher {
        name: name.to_string(),
        op: op.to_string(),
        value: value.to_string(),
    })
}

/// Matcher lines (blank lines and `#` comments skipped).
pub fn parse_matchers(text: &str) -> Result<Vec<Matcher>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_matcher)
        .collect()
}

/// `service_name=checkout`, `alertname=~High.*`.
pub fn matcher_text(m: &Matcher) -> String {
    format!("{}{}{}", m.name, m.op, m.value)
}

/// The body of `POST /api/v1/alerts/silences`.
pub fn silence_body(
    matchers: &[Matcher],
    duration: &str,
    comment: &str,
    created_by: &str,
) -> Value {
    serde_json::json!({
        "matchers": matchers
            .iter()
            .map(|m| serde_json::json!({ "name": m.name, "op": m.op, "value": m.value }))
            .collect::<Vec<_>>(),
        "duration": or_default(duration.trim().to_string(), "2h"),
        "comment": comment.trim(),
        "created_by": or_default(created_by.trim().to_string(), "ui"),
    })
}

/// A threshold as typed back: `5`, `0.5`, `99.9`.
pub fn number_text(v: f64) -> String {
    format!("{v}")
}

/// `value > 5`.
pub fn condition_text(condition: &RuleCondition) -> String {
    format!(
        "value {} {}",
        or_default(condition.op.clone(), ">"),
        condition
            .threshold
            .map_or_else(|| "?".to_string(), number_text)
    )
}

/// A typed number as JSON: an integer when it is one (`99`), a float otherwise.
pub fn json_number(what: &str, text: &str) -> Result<Value, String> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Ok(Value::from(i));
    }
    match t.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::from(f)),
        _ => Err(format!("{what} “{t}” is not a number")),
    }
}

/// Whether a builder kind uses a field of the form.
pub fn builder_field_used(kind: &str, field: &str) -> bool {
    matches!(
        (kind, field),
        (_, "window")
            | ("error_rate" | "latency" | "log_count", "service")
            | ("error_rate" | "latency", "operation")
            | ("latency", "percentile")
            | ("log_count", "query" | "severity")
            | ("metric", "name" | "aggregation" | "filters" | "group_by")
    )
}

/// What the value of a builder kind means.
pub fn builder_hint(kind: &str) -> &'static str {
    match kind {
        "error_rate" => {
            "value = the percentage (0-100) of spans with an error, per service_name (and per name when an operation is given)."
        }
        "latency" => "value = the latency percentile in milliseconds, per service_name.",
        "log_count" => "value = the number of matching log records in the window.",
        "metric" => {
            "value = the metric aggregated over the window, per group-by label (comma-separated)."
        }
        _ => "",
    }
}

/// Everything the rule form holds, as typed. `to_json` makes the API's rule of it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleForm {
    pub name: String,
    /// `sql` or `builder`.
    pub mode: String,
    pub sql: String,
    /// Builder: `error_rate`, `latency`, `log_count` or `metric`.
    pub kind: String,
    pub service: String,
    pub operation: String,
    pub percentile: String,
    pub log_query: String,
    pub log_severity: String,
    pub metric: String,
    pub aggregation: String,
    /// Metric filters as `key=value` lines.
    pub filters: String,
    /// Metric group-by labels, comma-separated.
    pub group_by: String,
    pub window: String,
    pub op: String,
    pub threshold: String,
    pub interval: String,
    pub for_duration: String,
    pub severity: String,
    pub labels: String,
    pub annotations: String,
    pub notify: String,
    pub repeat_interval: String,
    pub enabled: bool,
}

impl Default for RuleForm {
    fn default() -> Self {
        RuleForm {
            name: String::new(),
            mode: "sql".into(),
            sql: String::new(),
            kind: "error_rate".into(),
            service: String::new(),
            operation: String::new(),
            percentile: "99".into(),
            log_query: String::new(),
            log_severity: String::new(),
            metric: String::new(),
            aggregation: "avg".into(),
            filters: String::new(),
            group_by: String::new(),
            window: "5m".into(),
            op: ">".into(),
            threshold: String::new(),
            interval: String::new(),
            for_duration: String::new(),
            severity: "warning".into(),
            labels: String::new(),
            annotations: String::new(),
            notify: String::new(),
            repeat_interval: String::new(),
            enabled: true,
        }
    }
}

impl RuleForm {
    /// The form filled from a rule (to edit it).
    pub fn from_rule(rule: &AlertRule) -> RuleForm {
        let mut f = RuleForm {
            name: rule.name.clone(),
            sql: rule.sql.clone(),
            op: or_default(rule.condition.op.clone(), ">"),
            threshold: rule
                .condition
                .threshold
                .map(number_text)
                .unwrap_or_default(),
            interval: rule.interval.clone(),
            for_duration: rule.for_duration.clone(),
            severity: or_default(rule.severity.clone(), "warning"),
            labels: pairs_text(&rule.labels),
            annotations: pairs_text(&rule.annotations),
            notify: notify_text(&rule.notify),
            repeat_interval: rule.repeat_interval.clone(),
            enabled: rule.enabled,
            ..RuleForm::default()
        };
        if let Some(b) = rule.builder.as_ref().filter(|b| b.get("kind").is_some()) {
            let s = |key: &str| b.get(key).map(value_text).unwrap_or_default();
            f.mode = "builder".into();
            f.kind = s("kind");
            f.service = s("service");
            f.operation = s("operation");
            if let Some(p) = b.get("percentile").filter(|p| !p.is_null()) {
                f.percentile = value_text(p);
            }
            f.log_query = s("query");
            f.log_severity = s("severity");
            if f.kind == "metric" {
                f.metric = s("name");
            }
            f.aggregation = or_default(s("aggregation"), "avg");
            f.filters = b
                .get("filters")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", value_text(v)))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            f.group_by = b
                .get("group_by")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(value_text).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            if let Some(w) = b.get("window").and_then(Value::as_str) {
                f.window = w.to_string();
            }
        }
        f
    }

    /// The builder part of the rule (`{"kind": ..., ...}`).
    pub fn builder_json(&self) -> Result<Value, String> {
        let opt = |s: &str| {
            let t = s.trim();
            if t.is_empty() {
                Value::Null
            } else {
                Value::from(t)
            }
        };
        let mut builder = match self.kind.as_str() {
            "error_rate" => serde_json::json!({
                "kind": "error_rate",
                "service": opt(&self.service),
                "operation": opt(&self.operation),
            }),
            "latency" => {
                let percentile = if self.percentile.trim().is_empty() {
                    Value::from(99)
                } else {
                    json_number("the percentile", &self.percentile)?
                };
                serde_json::json!({
                    "kind": "latency",
                    "service": opt(&self.service),
                    "operation": opt(&self.operation),
                    "percentile": percentile,
                })
            }
            "log_count" => serde_json::json!({
                "kind": "log_count",
                "query": opt(&self.log_query),
                "service": opt(&self.service),
                "severity": opt(&self.log_severity),
            }),
            "metric" => {
                if self.metric.trim().is_empty() {
                    return Err("a metric rule needs the metric's name".into());
                }
                let filters =
                    parse_pairs(&self.filters).map_err(|e| format!("metric filters: {e}"))?;
                let group_by: Vec<Value> = self
                    .group_by
                    .split([',', ' ', '\n'])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(Value::from)
                    .collect();
                serde_json::json!({
                    "kind": "metric",
                    "name": self.metric.trim(),
                    "aggregation": or_default(self.aggregation.trim().to_string(), "avg"),
                    "filters": string_map(filters),
                    "group_by": group_by,
                })
            }
            other => return Err(format!("“{other}” is not a builder kind")),
        };
        let window = self.window.trim();
        if !window.is_empty() {
            builder["window"] = Value::from(window);
        }
        Ok(builder)
    }

    /// The rule as the API takes it (create, update and dry run).
    pub fn to_json(&self) -> Result<Value, String> {
        let mut body = serde_json::Map::new();
        body.insert("name".into(), Value::from(self.name.trim()));
        if self.mode == "builder" {
            body.insert("builder".into(), self.builder_json()?);
        } else {
            if self.sql.trim().is_empty() {
                return Err("the rule needs a query: write SQL or use the builder".into());
            }
            body.insert("sql".into(), Value::from(self.sql.trim()));
        }
        if self.threshold.trim().is_empty() {
            return Err("the condition needs a threshold".into());
        }
        body.insert(
            "condition".into(),
            serde_json::json!({
                "op": or_default(self.op.clone(), ">"),
                "threshold": json_number("the threshold", &self.threshold)?,
            }),
        );
        for (key, value) in [
            ("interval", &self.interval),
            ("for", &self.for_duration),
            ("repeat_interval", &self.repeat_interval),
        ] {
            let v = value.trim();
            if !v.is_empty() {
                body.insert(key.into(), Value::from(v));
            }
        }
        body.insert(
            "severity".into(),
            Value::from(or_default(self.severity.clone(), "warning")),
        );
        let labels = parse_pairs(&self.labels).map_err(|e| format!("labels: {e}"))?;
        body.insert("labels".into(), string_map(labels));
        let annotations =
            parse_pairs(&self.annotations).map_err(|e| format!("annotations: {e}"))?;
        body.insert("annotations".into(), string_map(annotations));
        let notify = parse_notify(&self.notify).map_err(|e| format!("notify: {e}"))?;
        body.insert("notify".into(), Value::Array(notify));
        body.insert("enabled".into(), Value::Bool(self.enabled));
        Ok(Value::Object(body))
    }
}

/// A CSS-safe token of an API word (`firing` → `firing`, anything odd → `-`).
fn css_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn value_or_dash(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), format::number)
}

/// The history of one rule (`rule` = its id, or its name), or of all rules.
fn load_history(rule: String) -> impl Future<Output = ApiResult<HistoryDoc>> + Send + 'static {
    // Both requests are made here, where the server's API context is at hand; only the first
    // that is needed runs.
    let limit = if rule.is_empty() { 100 } else { 200 };
    let all = get_json::<HistoryDoc>(format!("/api/v1/alerts/history?limit={limit}"));
    let by_id = (!rule.is_empty()).then(|| {
        get_json::<HistoryDoc>(format!(
            "/api/v1/alerts/history?rule_id={}&limit=100",
            encode(&rule)
        ))
    });
    async move {
        let Some(by_id) = by_id else {
            return all.await;
        };
        if let Ok(doc) = by_id.await
            && !doc.events.is_empty()
        {
            return Ok(doc);
        }
        // Not an id (or nothing happened yet): match the name among the latest events.
        let mut doc = all.await?;
        doc.events
            .retain(|e| e.rule_id == rule || e.rule_name == rule);
        doc.events.truncate(100);
        Ok(doc)
    }
}

// ---------------------------------------------------------------------------------------------
// Page state: signals the lists, the rule form and the silence form share.

/// The rule form's fields, one signal each.
#[derive(Clone, Copy)]
struct RuleFields {
    name: RwSignal<String>,
    mode: RwSignal<String>,
    sql: RwSignal<String>,
    kind: RwSignal<String>,
    service: RwSignal<String>,
    operation: RwSignal<String>,
    percentile: RwSignal<String>,
    log_query: RwSignal<String>,
    log_severity: RwSignal<String>,
    metric: RwSignal<String>,
    aggregation: RwSignal<String>,
    filters: RwSignal<String>,
    group_by: RwSignal<String>,
    window: RwSignal<String>,
    op: RwSignal<String>,
    threshold: RwSignal<String>,
    interval: RwSignal<String>,
    for_duration: RwSignal<String>,
    severity: RwSignal<String>,
    labels: RwSignal<String>,
    annotations: RwSignal<String>,
    notify: RwSignal<String>,
    repeat_interval: RwSignal<String>,
    enabled: RwSignal<bool>,
}

impl RuleFields {
    fn new(f: RuleForm) -> Self {
        RuleFields {
            name: RwSignal::new(f.name),
            mode: RwSignal::new(f.mode),
            sql: RwSignal::new(f.sql),
            kind: RwSignal::new(f.kind),
            service: RwSignal::new(f.service),
            operation: RwSignal::new(f.operation),
            percentile: RwSignal::new(f.percentile),
            log_query: RwSignal::new(f.log_query),
            log_severity: RwSignal::new(f.log_severity),
            metric: RwSignal::new(f.metric),
            aggregation: RwSignal::new(f.aggregation),
            filters: RwSignal::new(f.filters),
            group_by: RwSignal::new(f.group_by),
            window: RwSignal::new(f.window),
            op: RwSignal::new(f.op),
            threshold: RwSignal::new(f.threshold),
            interval: RwSignal::new(f.interval),
            for_duration: RwSignal::new(f.for_duration),
            severity: RwSignal::new(f.severity),
            labels: RwSignal::new(f.labels),
            annotations: RwSignal::new(f.annotations),
            notify: RwSignal::new(f.notify),
            repeat_interval: RwSignal::new(f.repeat_interval),
            enabled: RwSignal::new(f.enabled),
        }
    }

    /// What the form holds now.
    fn snapshot(&self) -> RuleForm {
        RuleForm {
            name: self.name.get_untracked(),
            mode: self.mode.get_untracked(),
            sql: self.sql.get_untracked(),
            kind: self.kind.get_untracked(),
            service: self.service.get_untracked(),
            operation: self.operation.get_untracked(),
            percentile: self.percentile.get_untracked(),
            log_query: self.log_query.get_untracked(),
            log_severity: self.log_severity.get_untracked(),
            metric: self.metric.get_untracked(),
            aggregation: self.aggregation.get_untracked(),
            filters: self.filters.get_untracked(),
            group_by: self.group_by.get_untracked(),
            window: self.window.get_untracked(),
            op: self.op.get_untracked(),
            threshold: self.threshold.get_untracked(),
            interval: self.interval.get_untracked(),
            for_duration: self.for_duration.get_untracked(),
            severity: self.severity.get_untracked(),
            labels: self.labels.get_untracked(),
            annotations: self.annotations.get_untracked(),
            notify: self.notify.get_untracked(),
            repeat_interval: self.repeat_interval.get_untracked(),
            enabled: self.enabled.get_untracked(),
        }
    }

    /// Fills the form.
    fn load(&self, f: RuleForm) {
        self.name.set(f.name);
        self.mode.set(f.mode);
        self.sql.set(f.sql);
        self.kind.set(f.kind);
        self.service.set(f.service);
        self.operation.set(f.operation);
        self.percentile.set(f.percentile);
        self.log_query.set(f.log_query);
        self.log_severity.set(f.log_severity);
        self.metric.set(f.metric);
        self.aggregation.set(f.aggregation);
        self.filters.set(f.filters);
        self.group_by.set(f.group_by);
        self.window.set(f.window);
        self.op.set(f.op);
        self.threshold.set(f.threshold);
        self.interval.set(f.interval);
        self.for_duration.set(f.for_duration);
        self.severity.set(f.severity);
        self.labels.set(f.labels);
        self.annotations.set(f.annotations);
        self.notify.set(f.notify);
        self.repeat_interval.set(f.repeat_interval);
        self.enabled.set(f.enabled);
    }
}

/// The silence form's fields.
#[derive(Clone, Copy)]
struct SilenceFields {
    matchers: RwSignal<String>,
    duration: RwSignal<String>,
    comment: RwSignal<String>,
    created_by: RwSignal<String>,
    /// The outcome of the last "Silence" click.
    outcome: RwSignal<Option<Result<String, String>>>,
}

/// The two writes the lists' buttons make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Post,
    Delete,
}

/// Everything the page's parts share; all signals, so it is `Copy`.
#[derive(Clone, Copy)]
struct Ctx {
    /// Bumped every few seconds and after every write: the lists refetch.
    tick: RwSignal<u64>,
    /// The error of the last button in the lists, if it failed.
    notice: RwSignal<Option<String>>,
    fields: RuleFields,
    /// The id of the rule the form edits; `None` for a new rule.
    editing: RwSignal<Option<String>>,
    dry: RwSignal<Option<Result<DryRun, String>>>,
    saved: RwSignal<Option<Result<String, String>>>,
    busy: RwSignal<bool>,
    silence: SilenceFields,
}

impl Ctx {
    fn refresh(self) {
        self.tick.update(|t| *t += 1);
    }

    /// Enable, disable, delete, expire: call the API, show its error if any, refetch.
    fn write_api(self, call: Call, uri: String) {
        spawn_local(async move {
            let result = match call {
                Call::Post => post_json::<Value>(uri, serde_json::json!({})).await,
                Call::Delete => delete_json::<Value>(uri).await,
            };
            self.notice.set(result.err());
            self.refresh();
        });
    }

    fn edit(self, id: String, form: RuleForm) {
        self.fields.load(form);
        self.editing.set(Some(id));
        self.dry.set(None);
        self.saved.set(None);
        scroll_to("rule-form");
    }

    fn new_rule(self) {
        self.fields.load(RuleForm::default());
        self.editing.set(None);
        self.dry.set(None);
        self.saved.set(None);
    }

    fn silence_like(self, matchers: String, comment: String) {
        self.silence.matchers.set(matchers);
        if self.silence.comment.get_untracked().trim().is_empty() {
            self.silence.comment.set(comment);
        }
        self.silence.outcome.set(None);
        scroll_to("silence-form");
    }
}

/// Scrolls an element into view (browser only: called from click handlers).
fn scroll_to(id: &str) {
    if let Some(el) = document().get_element_by_id(id) {
        el.scroll_into_view();
    }
}

// ---------------------------------------------------------------------------------------------
// The page.

#[component]
pub fn AlertsPage() -> AnyView {
    let query = use_query_map();
    // The lists refresh every few seconds, in the browser only (effects do not run on the
    // server): the tick is part of every list's source.
    let tick = RwSignal::new(0u64);
    Effect::new(move |_| {
        if let Ok(handle) = set_interval_with_handle(move || tick.update(|t| *t += 1), REFRESH) {
            on_cleanup(move || handle.clear());
        }
    });
    let ctx = Ctx {
        tick,
        notice: RwSignal::new(None),
        fields: RuleFields::new(RuleForm::default()),
        editing: RwSignal::new(None),
        dry: RwSignal::new(None),
        saved: RwSignal::new(None),
        busy: RwSignal::new(false),
        silence: SilenceFields {
            matchers: RwSignal::new(String::new()),
            duration: RwSignal::new(String::new()),
            comment: RwSignal::new(String::new()),
            created_by: RwSignal::new(String::new()),
            outcome: RwSignal::new(None),
        },
    };

    let alerts = Resource::new(
        move || tick.get(),
        |_| get_json::<AlertsDoc>("/api/v1/alerts".into()),
    );
    let rules = Resource::new(
        move || tick.get(),
        |_| get_json::<RulesDoc>("/api/v1/alerts/rules".into()),
    );
    let history = Resource::new(
        move || (param(&query.read(), "rule"), tick.get()),
        |(rule, _)| load_history(rule),
    );
    let silences = Resource::new(
        move || tick.get(),
        |_| get_json::<SilencesDoc>("/api/v1/alerts/silences".into()),
    );

    view! {
        <Title text="Alerts · oxeye"/>
        <section class="page alerts">
            <h1>"Alerts"</h1>
            {move || ctx.notice.get().map(|message| view! {
                <div class="state error" role="alert" id="alerts-notice">{message}</div>
            })}

            <h2 id="active">"Active alerts"</h2>
            <Transition fallback=|| view! { <Loading what="active alerts"/> }>
                {move || Suspend::new(async move {
                    match alerts.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(d) if d.alerts.is_empty() => view! { <Empty message="No alert is pending or firing."/> }.into_any(),
                        Ok(d) => view! { <ActiveAlerts alerts=d.alerts ctx/> }.into_any(),
                    }
                })}
            </Transition>

            <h2 id="rules">"Rules"</h2>
            <Transition fallback=|| view! { <Loading what="alert rules"/> }>
                {move || Suspend::new(async move {
                    match rules.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(d) if d.rules.is_empty() => view! { <Empty message="No alert rules yet: write one below."/> }.into_any(),
                        Ok(d) => view! { <RulesTable rules=d.rules ctx/> }.into_any(),
                    }
                })}
            </Transition>

            <RuleEditor ctx/>

            <h2 id="history">"History"</h2>
            <Transition fallback=|| view! { <Loading what="the alert history"/> }>
                {move || Suspend::new(async move {
                    let names: Vec<(String, String)> = rules
                        .await
                        .map(|d| d.rules.into_iter().map(|r| (r.id, r.name)).collect::<Vec<_>>())
                        .unwrap_or_default();
                    let filter = param(&query.read_untracked(), "rule");
                    match history.await {
                        Err(e) => view! { <HistoryFilter names filter/> <ErrorBox message=e/> }.into_any(),
                        Ok(d) if d.events.is_empty() => view! {
                            <HistoryFilter names filter/>
                            <Empty message="No alert changed state yet."/>
                        }.into_any(),
                        Ok(d) => view! { <HistoryFilter names filter/> <HistoryList events=d.events/> }.into_any(),
                    }
                })}
            </Transition>

            <h2 id="silences">"Silences"</h2>
            <Transition fallback=|| view! { <Loading what="silences"/> }>
                {move || Suspend::new(async move {
                    match silences.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(d) if d.silences.is_empty() => view! { <Empty message="No silences."/> }.into_any(),
                        Ok(d) => view! { <SilenceList silences=d.silences ctx/> }.into_any(),
                    }
                })}
            </Transition>
            <SilenceEditor ctx/>
        </section>
    }
    .into_any()
}

// ---------------------------------------------------------------------------------------------
// Small views.

/// A state (`firing`, `pending`, `error`, `inactive`, `resolved`, `disabled`) as a badge.
fn state_badge(state: &str) -> impl IntoView + use<> {
    let class = format!("badge state-{}", css_token(state));
    let text = or_default(state.to_string(), "unknown");
    view! { <span class=class>{text}</span> }
}

fn severity_label(severity: &str) -> impl IntoView + use<> {
    let class = format!("severity severity-{}", css_token(severity));
    let text = severity.to_string();
    view! { <span class=class>{text}</span> }
}

fn label_chips(labels: &Labels) -> impl IntoView + use<> {
    labels
        .iter()
        .map(|(k, v)| {
            let key = k.clone();
            let value = value_text(v);
            view! { <span class="lchip"><span class="k">{key}</span>"="{value}</span> }
        })
        .collect_view()
}

/// An API time (RFC 3339) in the reader's zone, or the text as it came.
fn api_time(text: &str) -> AnyView {
    match format::parse_utc_timestamp(text) {
        Some(ns) => view! { <Time unix_ns=ns/> }.into_any(),
        None if text.trim().is_empty() => view! { <span class="muted">"–"</span> }.into_any(),
        None => {
            let text = text.to_string();
            view! { <span>{text}</span> }.into_any()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Active alerts.

#[component]
fn ActiveAlerts(alerts: Vec<AlertInstance>, ctx: Ctx) -> AnyView {
    let count = alerts.len();
    let rows = alerts
        .into_iter()
        .map(|a| {
            let matchers = pairs_text(&a.labels);
            let comment = format!("silenced from the alerts page ({})", a.rule_name);
            let summary = a.annotations.get("summary").map(value_text);
            let history = format!("/alerts?rule={}#history", encode(&a.rule_id));
            let exact = a.value.map(|v| v.to_string());
            view! {
                <tr class="alert-row" data-rule-name=a.rule_name.clone() data-fingerprint=a.fingerprint.clone()>
                    <td>
                        <a href=history>{a.rule_name.clone()}</a>
                        {summary.map(|s| view! { <div class="summary">{s}</div> })}
                    </td>
                    <td class="alert-state">{state_badge(&a.state)}</td>
                    <td>{severity_label(&a.severity)}</td>
                    <td class="labels">{label_chips(&a.labels)}</td>
                    <td class="num" title=exact>{value_or_dash(a.value)}</td>
                    <td class="nowrap">{api_time(a.active_since.as_deref().unwrap_or(""))}</td>
                    <td>
                        {if a.silenced {
                            view! { <span class="badge silenced">"silenced"</span> }.into_any()
                        } else {
                            view! { <span class="muted">"no"</span> }.into_any()
                        }}
                    </td>
                    <td class="actions">
                        <button type="button" class="small silence-alert"
                            on:click=move |_| ctx.silence_like(matchers.clone(), comment.clone())>
                            "Silence"
                        </button>
                    </td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <p class="count">{count} " pending, firing or failing"</p>
        <table class="results alerts-table">
            <thead>
                <tr>
                    <th>"Rule"</th><th>"State"</th><th>"Severity"</th><th>"Labels"</th>
                    <th>"Value"</th><th>"Active since"</th><th>"Silenced"</th><th></th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

// ---------------------------------------------------------------------------------------------
// Rules.

fn evaluation_cell(evaluation: Option<Evaluation>) -> AnyView {
    match evaluation {
        None => view! { <span class="muted">"not yet"</span> }.into_any(),
        Some(e) => {
            let took = e.duration_ms.map(|ms| format!(" · {ms:.1} ms"));
            let rows = e.rows.map(|n| format!(" · {n} rows"));
            view! {
                <span class="nowrap">{api_time(e.at.as_deref().unwrap_or(""))}</span>
                <span class="muted">{took}{rows}</span>
                {e.error.map(|err| view! { <div class="eval-error">{err}</div> })}
            }
            .into_any()
        }
    }
}

#[component]
fn RulesTable(rules: Vec<AlertRule>, ctx: Ctx) -> AnyView {
    let rows = rules
        .into_iter()
        .map(|r| {
            let from_file = r.source == "file";
            let enabled = r.enabled && r.state != "disabled";
            let form = RuleForm::from_rule(&r);
            let edit_id = r.id.clone();
            let toggle_uri = format!(
                "/api/v1/alerts/rules/{}/{}",
                encode(&r.id),
                if enabled { "disable" } else { "enable" }
            );
            let delete_uri = format!("/api/v1/alerts/rules/{}", encode(&r.id));
            let delete_question = format!("Delete the rule “{}”?", r.name);
            let history = format!("/alerts?rule={}#history", encode(&r.id));
            let every = format!(
                "{} / {}",
                or_default(r.interval.clone(), "1m"),
                or_default(r.for_duration.clone(), "0s")
            );
            let instances = r.instances.clone();
            let has_instances = !instances.is_empty();
            let instance_rows = instances
                .into_iter()
                .map(|a| {
                    view! {
                        <li>
                            {state_badge(&a.state)}
                            {label_chips(&a.labels)}
                            <span class="value">{value_or_dash(a.value)}</span>
                            {a.silenced.then(|| view! { <span class="badge silenced">"silenced"</span> })}
                        </li>
                    }
                })
                .collect_view();
            view! {
                <tr class="rule-row" class:disabled={!enabled} data-rule-name=r.name.clone() data-rule-id=r.id.clone()>
                    <td class="rule-name">
                        <strong>{r.name.clone()}</strong>
                        <div class="muted mono">{r.id.clone()}</div>
                    </td>
                    <td class="rule-state">{state_badge(&r.state)}</td>
                    <td class="mono">{condition_text(&r.condition)}</td>
                    <td class="nowrap">{every}</td>
                    <td>{severity_label(&r.severity)}</td>
                    <td class="last-eval">{evaluation_cell(r.last_evaluation.clone())}</td>
                    <td>{or_default(r.source.clone(), "api")}</td>
                    <td class="actions">
                        {(!from_file).then(|| view! {
                            <button type="button" class="small rule-edit"
                                on:click=move |_| ctx.edit(edit_id.clone(), form.clone())>"Edit"</button>
                        })}
                        <button type="button" class="small rule-toggle"
                            on:click=move |_| ctx.write_api(Call::Post, toggle_uri.clone())>
                            {if enabled { "Disable" } else { "Enable" }}
                        </button>
                        {(!from_file).then(|| view! {
                            <button type="button" class="small rule-delete"
                                on:click=move |_| {
                                    if window().confirm_with_message(&delete_question).unwrap_or(false) {
                                        ctx.write_api(Call::Delete, delete_uri.clone());
                                    }
                                }>"Delete"</button>
                        })}
                        <a class="button small" href=history>"History"</a>
                    </td>
                </tr>
                {has_instances.then(|| view! {
                    <tr class="rule-instances">
                        <td colspan="8"><ul class="instances">{instance_rows}</ul></td>
                    </tr>
                })}
            }
        })
        .collect_view();
    view! {
        <table class="results alerts-table rules-table">
            <thead>
                <tr>
                    <th>"Name"</th><th>"State"</th><th>"Condition"</th><th>"Every / for"</th>
                    <th>"Severity"</th><th>"Last evaluation"</th><th>"Source"</th><th></th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

// ---------------------------------------------------------------------------------------------
// The rule form.

const OPS: &[(&str, &str)] = &[
    (">", ">"),
    (">=", ">="),
    ("<", "<"),
    ("<=", "<="),
    ("==", "=="),
    ("!=", "!="),
];

const SEVERITIES: &[(&str, &str)] = &[
    ("critical", "critical"),
    ("warning", "warning"),
    ("info", "info"),
];

const KINDS: &[(&str, &str)] = &[
    ("error_rate", "Error rate (%)"),
    ("latency", "Latency percentile (ms)"),
    ("log_count", "Log count"),
    ("metric", "Metric"),
];

const LOG_SEVERITIES: &[(&str, &str)] = &[
    ("", "Any severity"),
    ("DEBUG", "DEBUG"),
    ("INFO", "INFO"),
    ("WARN", "WARN"),
    ("ERROR", "ERROR"),
    ("FATAL", "FATAL"),
];

const AGGREGATIONS: &[(&str, &str)] = &[
    ("avg", "avg"),
    ("sum", "sum"),
    ("min", "min"),
    ("max", "max"),
    ("count", "count"),
    ("last", "last"),
    ("rate", "rate (per second)"),
];

/// A one-line text input bound to a signal; `id` is also its `name`.
#[component]
fn TextField(
    id: &'static str,
    label: &'static str,
    value: RwSignal<String>,
    #[prop(optional)] placeholder: &'static str,
) -> AnyView {
    view! {
        <label>
            <span class="field-label">{label}</span>
            <input id=id name=id type="text" autocomplete="off" spellcheck="false" placeholder=placeholder
                prop:value=move || value.get()
                on:input=move |ev| value.set(event_target_value(&ev))/>
        </label>
    }
    .into_any()
}

/// A textarea bound to a signal; `id` is also its `name`.
#[component]
fn TextArea(
    id: &'static str,
    label: &'static str,
    value: RwSignal<String>,
    #[prop(optional)] placeholder: &'static str,
    #[prop(default = "3")] rows: &'static str,
) -> AnyView {
    view! {
        <label>
            <span class="field-label">{label}</span>
            <textarea id=id name=id rows=rows spellcheck="false" placeholder=placeholder
                prop:value=move || value.get()
                on:input=move |ev| value.set(event_target_value(&ev))></textarea>
        </label>
    }
    .into_any()
}

/// A select bound to a signal; `id` is also its `name`. The server marks the initial option
/// `selected`; in the browser the `value` property follows the signal.
#[component]
fn SelectField(
    id: &'static str,
    label: &'static str,
    value: RwSignal<String>,
    options: &'static [(&'static str, &'static str)],
) -> AnyView {
    let initial = value.get_untracked();
    let options = options
        .iter()
        .map(|&(v, text)| {
            let selected = v == initial;
            view! { <option value=v selected=selected>{text}</option> }
        })
        .collect_view();
    view! {
        <label>
            <span class="field-label">{label}</span>
            <select id=id name=id
                prop:value=move || value.get()
                on:change=move |ev| value.set(event_target_value(&ev))>
                {options}
            </select>
        </label>
    }
    .into_any()
}

#[component]
fn RuleEditor(ctx: Ctx) -> AnyView {
    let f = ctx.fields;
    let is_builder = move || f.mode.get() == "builder";

    let dry_run = move |_: leptos::ev::MouseEvent| {
        let mut form = f.snapshot();
        if form.name.trim().is_empty() {
            form.name = "dry run".into();
        }
        match form.to_json() {
            Err(e) => ctx.dry.set(Some(Err(e))),
            Ok(body) => {
                ctx.busy.set(true);
                spawn_local(async move {
                    let result =
                        post_json::<DryRun>("/api/v1/alerts/rules/dry-run".into(), body).await;
                    ctx.busy.set(false);
                    ctx.dry.set(Some(result));
                });
            }
        }
    };

    let save = move |_: leptos::ev::MouseEvent| {
        let body = match f.snapshot().to_json() {
            Ok(body) => body,
            Err(e) => {
                ctx.saved.set(Some(Err(e)));
                return;
            }
        };
        let editing = ctx.editing.get_untracked();
        ctx.busy.set(true);
        spawn_local(async move {
            let result = match editing {
                Some(id) => {
                    put_json::<AlertRule>(format!("/api/v1/alerts/rules/{}", encode(&id)), body)
                        .await
                }
                None => post_json::<AlertRule>("/api/v1/alerts/rules".into(), body).await,
            };
            ctx.busy.set(false);
            match result {
                Ok(rule) => {
                    // Further saves update the rule just saved.
                    ctx.editing
                        .set((!rule.id.is_empty()).then(|| rule.id.clone()));
                    ctx.saved
                        .set(Some(Ok(format!("Saved the rule “{}”.", rule.name))));
                    ctx.refresh();
                }
                Err(e) => ctx.saved.set(Some(Err(e))),
            }
        });
    };

    let saved_view = move || {
        ctx.saved.get().map(|outcome| match outcome {
            Ok(message) => {
                view! { <span class="outcome ok" role="status" id="rule-saved">{message}</span> }
                    .into_any()
            }
            Err(e) => {
                view! { <div class="state error" role="alert" id="rule-error">{e}</div> }.into_any()
            }
        })
    };
    let dry_view = move || {
        ctx.dry.get().map(|outcome| match outcome {
            Ok(d) => view! { <DryRunResult d/> }.into_any(),
            Err(e) => view! {
                <div class="state error" role="alert" id="rule-dry-run-error">{e}</div>
            }
            .into_any(),
        })
    };

    view! {
        <div class="panel rule-form" id="rule-form">
            <div class="section-head">
                <h2>{move || if ctx.editing.get().is_some() { "Edit rule" } else { "New rule" }}</h2>
                {move || ctx.editing.get().map(|id| view! { <span class="muted mono">{id}</span> })}
                <button type="button" id="rule-new" class="small" on:click=move |_| ctx.new_rule()>"New rule"</button>
            </div>
            <div class="form-grid">
                <div class="field wide">
                    <TextField id="rule-name" label="Name" value=f.name placeholder="High error rate"/>
                </div>
                <div class="field">
                    <span class="field-label">"Query"</span>
                    <div class="mode-switch" role="group" aria-label="How the query is written">
                        <button type="button" id="rule-mode-sql" class:on={move || !is_builder()}
                            on:click=move |_| f.mode.set("sql".to_string())>"SQL"</button>
                        <button type="button" id="rule-mode-builder" class:on=is_builder
                            on:click=move |_| f.mode.set("builder".to_string())>"Builder"</button>
                    </div>
                </div>
            </div>
            <div class="field" class:hidden=is_builder>
                <TextArea id="rule-sql" rows="5"
                    label="SQL: one row per alert instance with a numeric value column; the other columns are its labels"
                    value=f.sql
                    placeholder="SELECT service_name, count(*) AS value FROM spans WHERE status_code = 'ERROR' AND start_time > now() - INTERVAL '5 minutes' GROUP BY service_name"/>
            </div>
            <BuilderFields f/>
            <RuleSettings f/>
            <div class="form-actions">
                <button type="button" id="rule-dry-run" disabled={move || ctx.busy.get()} on:click=dry_run>"Dry run"</button>
                <button type="button" id="rule-save" class="primary" disabled={move || ctx.busy.get()} on:click=save>
                    {move || if ctx.editing.get().is_some() { "Save changes" } else { "Save" }}
                </button>
                {saved_view}
            </div>
            {dry_view}
        </div>
    }
    .into_any()
}

/// The builder's fields (shown in builder mode); each kind shows the fields it uses.
#[component]
fn BuilderFields(f: RuleFields) -> AnyView {
    let is_builder = move || f.mode.get() == "builder";
    let unused = move |field: &'static str| move || !builder_field_used(&f.kind.get(), field);
    view! {
        <fieldset class="builder" class:hidden={move || !is_builder()}>
            <legend>"Builder"</legend>
            <div class="form-grid">
                <div class="field">
                    <SelectField id="builder-kind" label="Kind" value=f.kind options=KINDS/>
                </div>
                <div class="field" class:hidden={unused("service")}>
                    <TextField id="builder-service" label="Service" value=f.service placeholder="any"/>
                </div>
                <div class="field" class:hidden={unused("operation")}>
                    <TextField id="builder-operation" label="Operation" value=f.operation placeholder="any"/>
                </div>
                <div class="field" class:hidden={unused("percentile")}>
                    <TextField id="builder-percentile" label="Percentile" value=f.percentile placeholder="99"/>
                </div>
                <div class="field" class:hidden={unused("query")}>
                    <TextField id="builder-query" label="Log text" value=f.log_query placeholder="any, e.g. timeout"/>
                </div>
                <div class="field" class:hidden={unused("severity")}>
                    <SelectField id="builder-log-severity" label="Log severity" value=f.log_severity options=LOG_SEVERITIES/>
                </div>
                <div class="field" class:hidden={unused("name")}>
                    <TextField id="builder-metric" label="Metric" value=f.metric placeholder="http.server.duration"/>
                </div>
                <div class="field" class:hidden={unused("aggregation")}>
                    <SelectField id="builder-aggregation" label="Aggregation" value=f.aggregation options=AGGREGATIONS/>
                </div>
                <div class="field" class:hidden={unused("group_by")}>
                    <TextField id="builder-group-by" label="Group by" value=f.group_by placeholder="service_name"/>
                </div>
                <div class="field">
                    <TextField id="builder-window" label="Window" value=f.window placeholder="5m"/>
                </div>
            </div>
            <div class="field" class:hidden={unused("filters")}>
                <TextArea id="builder-filters" label="Filters (key=value lines)" value=f.filters rows="2"
                    placeholder="http.route=/api/cart"/>
            </div>
            <p class="hint">{move || builder_hint(&f.kind.get())}</p>
        </fieldset>
    }
    .into_any()
}

/// Condition, schedule, severity, labels, annotations and notifiers.
#[component]
fn RuleSettings(f: RuleFields) -> AnyView {
    view! {
        <div class="rule-settings">
            <div class="form-grid">
                <div class="field">
                    <SelectField id="rule-op" label="Condition: value" value=f.op options=OPS/>
                </div>
                <div class="field">
                    <TextField id="rule-threshold" label="Threshold" value=f.threshold placeholder="5"/>
                </div>
                <div class="field">
                    <TextField id="rule-interval" label="Evaluate every" value=f.interval placeholder="1m"/>
                </div>
                <div class="field">
                    <TextField id="rule-for" label="Pending for" value=f.for_duration placeholder="0s"/>
                </div>
                <div class="field">
                    <SelectField id="rule-severity" label="Severity" value=f.severity options=SEVERITIES/>
                </div>
                <div class="field">
                    <TextField id="rule-repeat-interval" label="Repeat notifications every" value=f.repeat_interval placeholder="4h"/>
                </div>
            </div>
            <div class="text-grid">
                <TextArea id="rule-labels" label="Labels (key=value lines)" value=f.labels
                    placeholder="team=shop"/>
                <TextArea id="rule-annotations" label="Annotations (key=value lines)" value=f.annotations
                    placeholder="summary={{ $labels.service_name }} at {{ $value }}"/>
                <TextArea id="rule-notify" label="Notify (one a line)" value=f.notify
                    placeholder="webhook http://...\nalertmanager http://127.0.0.1:9093\nslack https://hooks.slack.com/...\nchannel ops"/>
            </div>
        </div>
    }
    .into_any()
}

#[component]
fn DryRunResult(d: DryRun) -> AnyView {
    let total = d.instances.len();
    let active = d.instances.iter().filter(|i| i.active).count();
    let elapsed = d.elapsed_ms.map(|ms| format!(" in {ms:.1} ms"));
    let rows = d
        .instances
        .into_iter()
        .map(|i| {
            view! {
                <tr class="dry-run-row" class:active={i.active}>
                    <td class="labels">{label_chips(&i.labels)}</td>
                    <td class="num">{value_or_dash(i.value)}</td>
                    <td>{if i.active { "yes" } else { "no" }}</td>
                    <td class="labels">{label_chips(&i.annotations)}</td>
                </tr>
            }
        })
        .collect_view();
    let table = if total == 0 {
        view! { <Empty message="The query returned no rows: the rule would have no instances."/> }
            .into_any()
    } else {
        view! {
            <table class="results alerts-table dry-run">
                <thead>
                    <tr><th>"Labels"</th><th>"Value"</th><th>"Condition holds"</th><th>"Annotations"</th></tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        }
        .into_any()
    };
    view! {
        <div class="dry-run-result" id="dry-run-result">
            <h3>"Dry run"</h3>
            <p class="count">
                {total} " instances, " {active} " where the condition holds" {elapsed}
            </p>
            {d.error.map(|e| view! { <div class="state error" role="alert">{e}</div> })}
            <details>
                <summary>"SQL the rule runs"</summary>
                <pre class="sql">{d.sql}</pre>
            </details>
            {table}
        </div>
    }
    .into_any()
}

// ---------------------------------------------------------------------------------------------
// History.

#[component]
fn HistoryFilter(names: Vec<(String, String)>, filter: String) -> AnyView {
    let filtered = !filter.is_empty();
    let options = names
        .into_iter()
        .map(|(id, name)| {
            let selected = id == filter || name == filter;
            view! { <option value=id selected=selected>{name}</option> }
        })
        .collect_view();
    view! {
        <Form method="GET" action="/alerts">
            <div class="filters">
                <label>"Rule"
                    <select name="rule">
                        <option value="" selected={!filtered}>"All rules"</option>
                        {options}
                    </select>
                </label>
                <button type="submit">"Show history"</button>
                {filtered.then(|| view! { <a href="/alerts#history">"Show every rule"</a> })}
            </div>
        </Form>
    }
    .into_any()
}

#[component]
fn HistoryList(events: Vec<AlertEvent>) -> AnyView {
    let mut events = events;
    // Newest first (the API's order already; kept when times do not parse).
    events.sort_by_key(|e| std::cmp::Reverse(format::parse_utc_timestamp(&e.time)));
    let count = events.len();
    let rows = events
        .into_iter()
        .map(|e| {
            let href = format!("/alerts?rule={}#history", encode(&e.rule_id));
            let message = e.message.clone().unwrap_or_default();
            view! {
                <tr class="history-row" data-rule-name=e.rule_name.clone()>
                    <td class="nowrap">{api_time(&e.time)}</td>
                    <td><a href=href>{e.rule_name.clone()}</a></td>
                    <td class="labels">{label_chips(&e.labels)}</td>
                    <td class="nowrap">{state_badge(&e.from)} " → " {state_badge(&e.to)}</td>
                    <td class="num">{value_or_dash(e.value)}</td>
                    <td class="message">{message}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <p class="count">{count} " state changes, newest first"</p>
        <table class="results alerts-table history">
            <thead>
                <tr><th>"Time"</th><th>"Rule"</th><th>"Labels"</th><th>"Change"</th><th>"Value"</th><th>"Message"</th></tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

// ---------------------------------------------------------------------------------------------
// Silences.

#[component]
fn SilenceList(silences: Vec<Silence>, ctx: Ctx) -> AnyView {
    let rows = silences
        .into_iter()
        .map(|s| {
            let expired = s.status == "expired";
            let uri = format!("/api/v1/alerts/silences/{}", encode(&s.id));
            let status_class = format!("badge status-{}", css_token(&s.status));
            let matchers = s
                .matchers
                .iter()
                .map(|m| {
                    let text = matcher_text(m);
                    view! { <span class="lchip">{text}</span> }
                })
                .collect_view();
            view! {
                <tr class="silence-row" data-silence-id=s.id.clone()>
                    <td><span class=status_class>{s.status.clone()}</span></td>
                    <td class="labels">{matchers}</td>
                    <td class="nowrap">
                        {api_time(s.starts_at.as_deref().unwrap_or(""))} " → " {api_time(s.ends_at.as_deref().unwrap_or(""))}
                    </td>
                    <td>{s.comment.clone().unwrap_or_default()}</td>
                    <td>{s.created_by.clone().unwrap_or_default()}</td>
                    <td class="actions">
                        {(!expired).then(|| view! {
                            <button type="button" class="small silence-expire"
                                on:click=move |_| ctx.write_api(Call::Delete, uri.clone())>"Expire"</button>
                        })}
                    </td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="results alerts-table silences">
            <thead>
                <tr><th>"Status"</th><th>"Matchers"</th><th>"Window"</th><th>"Comment"</th><th>"By"</th><th></th></tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

#[component]
fn SilenceEditor(ctx: Ctx) -> AnyView {
    let s = ctx.silence;
    let create = move |_: leptos::ev::MouseEvent| {
        let matchers = match parse_matchers(&s.matchers.get_untracked()) {
            Ok(m) if m.is_empty() => {
                s.outcome
                    .set(Some(Err("A silence needs at least one matcher.".into())));
                return;
            }
            Ok(m) => m,
            Err(e) => {
                s.outcome.set(Some(Err(e)));
                return;
            }
        };
        let body = silence_body(
            &matchers,
            &s.duration.get_untracked(),
            &s.comment.get_untracked(),
            &s.created_by.get_untracked(),
        );
        spawn_local(async move {
            match post_json::<Silence>("/api/v1/alerts/silences".into(), body).await {
                Ok(silence) => {
                    s.outcome.set(Some(Ok(if silence.id.is_empty() {
                        "Silence created.".to_string()
                    } else {
                        format!("Silence {} created.", silence.id)
                    })));
                    s.matchers.set(String::new());
                    s.comment.set(String::new());
                    ctx.refresh();
                }
                Err(e) => s.outcome.set(Some(Err(e))),
            }
        });
    };
    let outcome = move || {
        s.outcome.get().map(|o| match o {
            Ok(m) => view! { <span class="outcome ok" role="status" id="silence-saved">{m}</span> }
                .into_any(),
            Err(e) => view! { <div class="state error" role="alert" id="silence-error">{e}</div> }
                .into_any(),
        })
    };
    view! {
        <div class="panel silence-form" id="silence-form">
            <h3>"New silence"</h3>
            <div class="text-grid">
                <TextArea id="silence-matchers" rows="4" value=s.matchers
                    label="Matchers, one a line: name=value (also !=, =~, !~)"
                    placeholder="service_name=checkout\nalertname=~High.*"/>
                <div class="form-grid">
                    <div class="field">
                        <TextField id="silence-duration" label="Duration" value=s.duration placeholder="2h"/>
                    </div>
                    <div class="field">
                        <TextField id="silence-created-by" label="By" value=s.created_by placeholder="ui"/>
                    </div>
                    <div class="field wide">
                        <TextField id="silence-comment" label="Comment" value=s.comment placeholder="deploy"/>
                    </div>
                </div>
            </div>
            <div class="form-actions">
                <button type="button" id="silence-create" class="primary" on:click=create>"Silence"</button>
                {outcome}
            </div>
        </div>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_lines() {
        let m =
            parse_pairs("team=shop\n\n# note\n summary = fired {{ $value }} \nurl=a=b").unwrap();
        assert_eq!(m["team"], "shop");
        assert_eq!(m["summary"], "fired {{ $value }}");
        assert_eq!(m["url"], "a=b");
        assert_eq!(m.len(), 3);
        assert!(parse_pairs("no equals sign").is_err());
        assert!(parse_pairs("=value").is_err());
        assert_eq!(parse_pairs("").unwrap().len(), 0);

        let mut labels = Labels::new();
        labels.insert("b".into(), Value::from("2"));
        labels.insert("a".into(), Value::from(1));
        assert_eq!(pairs_text(&labels), "a=1\nb=2");
    }

    #[test]
    fn notify_lines() {
        let n = parse_notify(
            "webhook http://127.0.0.1:9/hook\nAlertmanager http://127.0.0.1:9093\nslack https://hooks.slack.com/x\nchannel ops\n",
        )
        .unwrap();
        assert_eq!(
            n,
            vec![
                serde_json::json!({"type": "webhook", "url": "http://127.0.0.1:9/hook"}),
                serde_json::json!({"type": "alertmanager", "url": "http://127.0.0.1:9093"}),
                serde_json::json!({"type": "slack", "url": "https://hooks.slack.com/x"}),
                serde_json::json!({"channel": "ops"}),
            ]
        );
        assert_eq!(
            notify_text(&n),
            "webhook http://127.0.0.1:9/hook\nalertmanager http://127.0.0.1:9093\nslack https://hooks.slack.com/x\nchannel ops"
        );
        assert!(parse_notify("email ops@example.com").is_err());
        assert!(parse_notify("webhook").is_err());
        assert!(parse_notify("").unwrap().is_empty());
    }

    #[test]
    fn matcher_lines() {
        let m = parse_matchers(
            "service_name=checkout\nalertname =~ High.*\nenv!=\"dev\"\n\nteam!~ops|sre",
        )
        .unwrap();
        let text: Vec<String> = m.iter().map(matcher_text).collect();
        assert_eq!(
            text,
            vec![
                "service_name=checkout",
                "alertname=~High.*",
                "env!=dev",
                "team!~ops|sre"
            ]
        );
        assert_eq!(m[1].op, "=~");
        assert_eq!(m[2].value, "dev");
        assert!(parse_matcher("no operator").is_err());
        assert!(parse_matcher("=x").is_err());
        assert!(parse_matcher("a!b").is_err());
        let body = silence_body(&m[..1], "", " deploy ", "");
        assert_eq!(
            body,
            serde_json::json!({
                "matchers": [{"name": "service_name", "op": "=", "value": "checkout"}],
                "duration": "2h", "comment": "deploy", "created_by": "ui"
            })
        );
    }

    #[test]
    fn condition_and_numbers() {
        let c = RuleCondition {
            op: ">".into(),
            threshold: Some(5.0),
        };
        assert_eq!(condition_text(&c), "value > 5");
        let c = RuleCondition {
            op: "<=".into(),
            threshold: Some(0.25),
        };
        assert_eq!(condition_text(&c), "value <= 0.25");
        assert_eq!(condition_text(&RuleCondition::default()), "value > ?");
        assert_eq!(json_number("t", " 99 ").unwrap(), serde_json::json!(99));
        assert_eq!(json_number("t", "2.5").unwrap(), serde_json::json!(2.5));
        assert!(json_number("t", "five").is_err());
    }

    #[test]
    fn a_sql_rule_from_the_form() {
        let form = RuleForm {
            name: " ui rule ".into(),
            sql: "SELECT service_name, count(*) AS value FROM spans GROUP BY service_name".into(),
            threshold: "0".into(),
            interval: "1s".into(),
            for_duration: "1s".into(),
            severity: "critical".into(),
            annotations: "summary=fired {{ $value }}".into(),
            notify: "channel ops".into(),
            ..RuleForm::default()
        };
        let body = form.to_json().unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "name": "ui rule",
                "sql": "SELECT service_name, count(*) AS value FROM spans GROUP BY service_name",
                "condition": {"op": ">", "threshold": 0},
                "interval": "1s", "for": "1s",
                "severity": "critical",
                "labels": {}, "annotations": {"summary": "fired {{ $value }}"},
                "notify": [{"channel": "ops"}],
                "enabled": true
            })
        );
        let no_threshold = RuleForm {
            threshold: String::new(),
            ..form.clone()
        };
        assert!(no_threshold.to_json().is_err());
        let bad_labels = RuleForm {
            labels: "oops".into(),
            ..form
        };
        assert!(bad_labels.to_json().unwrap_err().starts_with("labels:"));
    }

    #[test]
    fn builder_rules_from_the_form() {
        let form = RuleForm {
            name: "slow cart".into(),
            mode: "builder".into(),
            kind: "latency".into(),
            service: "checkout".into(),
            operation: "GET /cart".into(),
            threshold: "250".into(),
            ..RuleForm::default()
        };
        assert_eq!(
            form.to_json().unwrap()["builder"],
            serde_json::json!({"kind": "latency", "service": "checkout", "operation": "GET /cart",
                               "percentile": 99, "window": "5m"})
        );
        let errors = RuleForm {
            kind: "error_rate".into(),
            operation: String::new(),
            ..form.clone()
        };
        assert_eq!(
            errors.builder_json().unwrap(),
            serde_json::json!({"kind": "error_rate", "service": "checkout", "operation": null, "window": "5m"})
        );
        let logs = RuleForm {
            kind: "log_count".into(),
            log_query: "timeout".into(),
            log_severity: "ERROR".into(),
            service: String::new(),
            ..form.clone()
        };
        assert_eq!(
            logs.builder_json().unwrap(),
            serde_json::json!({"kind": "log_count", "query": "timeout", "service": null,
                               "severity": "ERROR", "window": "5m"})
        );
        let metric = RuleForm {
            kind: "metric".into(),
            metric: "http.server.duration".into(),
            filters: "http.route=/cart".into(),
            group_by: "service_name, http.route".into(),
            ..form.clone()
        };
        assert_eq!(
            metric.builder_json().unwrap(),
            serde_json::json!({"kind": "metric", "name": "http.server.duration", "aggregation": "avg",
                               "filters": {"http.route": "/cart"},
                               "group_by": ["service_name", "http.route"], "window": "5m"})
        );
        let nameless = RuleForm {
            metric: String::new(),
            ..metric
        };
        assert!(nameless.builder_json().is_err());
        assert!(builder_field_used("latency", "percentile"));
        assert!(!builder_field_used("error_rate", "percentile"));
        assert!(builder_field_used("metric", "window"));
    }

    #[test]
    fn rules_read_the_api_shape_and_fill_the_form() {
        let doc: RulesDoc = serde_json::from_str(
            r#"{"rules": [{"id": "r1", "name": "High error rate", "sql": "SELECT 1 AS value",
                "builder": {"kind": "error_rate", "service": "checkout", "operation": null, "window": "10m"},
                "condition": {"op": ">", "threshold": 5}, "interval": "30s", "for": "1m",
                "labels": {"team": "shop"}, "annotations": {"summary": "x"}, "severity": "critical",
                "notify": [{"type": "webhook", "url": "http://h"}], "repeat_interval": "4h",
                "source": "api", "state": "firing",
                "last_evaluation": {"at": "2026-11-24T10:00:00.123Z", "duration_ms": 12.5, "error": null, "rows": 3},
                "instances": [{"rule_id": "r1", "rule_name": "High error rate", "state": "firing",
                               "labels": {"service_name": "checkout"}, "value": 7.5,
                               "active_since": "2026-11-24T09:59:00Z", "fired_at": null,
                               "silenced": false, "fingerprint": "a1"}]}]}"#,
        )
        .expect("the API's shape");
        let rule = &doc.rules[0];
        assert!(rule.enabled);
        assert_eq!(rule.for_duration, "1m");
        assert_eq!(rule.instances[0].value, Some(7.5));
        assert_eq!(condition_text(&rule.condition), "value > 5");
        let form = RuleForm::from_rule(rule);
        assert_eq!(form.mode, "builder");
        assert_eq!(form.kind, "error_rate");
        assert_eq!(form.service, "checkout");
        assert_eq!(form.operation, "");
        assert_eq!(form.window, "10m");
        assert_eq!(form.threshold, "5");
        assert_eq!(form.labels, "team=shop");
        assert_eq!(form.notify, "webhook http://h");
        // Round trip: the form makes the same rule again.
        let body = form.to_json().unwrap();
        assert_eq!(body["builder"]["service"], "checkout");
        assert_eq!(
            body["condition"],
            serde_json::json!({"op": ">", "threshold": 5})
        );

        // A SQL rule stays SQL; missing fields take defaults.
        let plain: AlertRule =
            serde_json::from_str(r#"{"id": "r2", "name": "n", "sql": "SELECT 2 AS value"}"#)
                .unwrap();
        let form = RuleForm::from_rule(&plain);
        assert_eq!(form.mode, "sql");
        assert_eq!(form.sql, "SELECT 2 AS value");
        assert_eq!(form.severity, "warning");
    }

    #[test]
    fn history_and_silences_read_the_api_shape() {
        let h: HistoryDoc = serde_json::from_str(
            r#"{"events": [{"time": "2026-11-24T10:00:00Z", "rule_id": "r1", "rule_name": "n",
                "fingerprint": "f", "labels": {}, "from": "pending", "to": "firing", "value": null,
                "message": null}]}"#,
        )
        .unwrap();
        assert_eq!(h.events[0].to, "firing");
        assert_eq!(h.events[0].value, None);
        let s: SilencesDoc = serde_json::from_str(
            r#"{"silences": [{"id": "s1", "matchers": [{"name": "a", "op": "=~", "value": "b.*"}],
                "starts_at": "2026-11-24T10:00:00Z", "ends_at": "2026-11-24T12:00:00Z",
                "comment": "deploy", "created_by": "ana", "status": "active"}]}"#,
        )
        .unwrap();
        assert_eq!(matcher_text(&s.silences[0].matchers[0]), "a=~b.*");
        let d: DryRun = serde_json::from_str(
            r#"{"sql": "SELECT", "elapsed_ms": 8.1, "error": null,
                "instances": [{"labels": {"service_name": "x"}, "value": 7.5, "active": true, "annotations": {}}]}"#,
        )
        .unwrap();
        assert!(d.instances[0].active);
        assert_eq!(css_token("firing"), "firing");
        assert_eq!(css_token("We ird"), "we-ird");
    }
}
