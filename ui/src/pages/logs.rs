//! Logs: full-text query, service and severity filters, a histogram of matches over time, the
//! list with expandable attributes, live tail, and trace links.

use std::collections::BTreeMap;
use std::time::Duration;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Form;
use leptos_router::hooks::use_query_map;
use leptos_router::params::ParamsMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{get_json, query_string, with_query};
use crate::graph::service_colour;
use crate::pages::traces::ServicesDoc;
use crate::trace_model::value_text;
use crate::widgets::{Empty, ErrorBox, Loading, RangePicker, StackedBars, Time, param, query_with};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    #[serde(default)]
    pub time_unix_nano: i64,
    #[serde(default)]
    pub severity_text: String,
    #[serde(default)]
    pub severity_number: i32,
    #[serde(default)]
    pub service_name: String,
    #[serde(default)]
    pub body: Value,
    #[serde(default)]
    pub trace_id: String,
    #[serde(default)]
    pub span_id: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, Value>,
    #[serde(default)]
    pub scope_name: String,
    #[serde(default)]
    pub event_name: String,
}

impl LogRecord {
    pub fn body_text(&self) -> String {
        value_text(&self.body)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogsDoc {
    #[serde(default)]
    pub logs: Vec<LogRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub bucket_unix_nano: i64,
    #[serde(default)]
    pub severity_text: String,
    pub count: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistogramDoc {
    #[serde(default)]
    pub step_ns: i64,
    #[serde(default)]
    pub buckets: Vec<Bucket>,
}

/// CSS class of a severity number (OTLP: 1-4 trace ... 21-24 fatal).
pub fn severity_class(number: i32) -> &'static str {
    match number {
        1..=4 => "sev-trace",
        5..=8 => "sev-debug",
        9..=12 => "sev-info",
        13..=16 => "sev-warn",
        17..=20 => "sev-error",
        21..=24 => "sev-fatal",
        _ => "sev-unset",
    }
}

fn severity_colour(text: &str) -> &'static str {
    match text.to_ascii_uppercase().as_str() {
        t if t.starts_with("FATAL") => "#7f1d1d",
        t if t.starts_with("ERROR") => "#dc2626",
        t if t.starts_with("WARN") => "#f59e0b",
        t if t.starts_with("INFO") => "#3b82f6",
        t if t.starts_with("DEBUG") => "#64748b",
        _ => "#94a3b8",
    }
}

const KEYS: [&str; 7] = [
    "query", "service", "severity", "trace_id", "lookback", "start", "end",
];

fn api_query(q: &ParamsMap, with_limit: bool) -> String {
    let mut pairs: Vec<(&str, String)> = KEYS
        .iter()
        .map(|k| {
            let v = param(q, k);
            let v = if *k == "lookback"
                && v.is_empty()
                && param(q, "start").is_empty()
                && param(q, "trace_id").is_empty()
            {
                "1h".to_string()
            } else {
                v
            };
            (*k, v)
        })
        .collect();
    if with_limit {
        let limit = param(q, "limit");
        pairs.push((
            "limit",
            if limit.is_empty() {
                "200".into()
            } else {
                limit
            },
        ));
    }
    query_string(pairs)
}

#[component]
pub fn LogsPage() -> impl IntoView {
    let query = use_query_map();
    // Live tail: a tick that moves every few seconds (in the browser only) and refetches.
    let (tick, set_tick) = signal(0u64);
    let live = Memo::new(move |_| param(&query.read(), "live") == "1");
    Effect::new(move |_| {
        if !live.get() {
            return;
        }
        if let Ok(handle) =
            set_interval_with_handle(move || set_tick.update(|t| *t += 1), Duration::from_secs(2))
        {
            on_cleanup(move || handle.clear());
        }
    });
    let services = Resource::new(
        || (),
        |_| get_json::<ServicesDoc>("/api/v1/services".into()),
    );
    let logs = Resource::new(
        move || (api_query(&query.read(), true), tick.get()),
        |(qs, _)| get_json::<LogsDoc>(with_query("/api/v1/logs", &qs)),
    );
    let histogram = Resource::new(
        move || (api_query(&query.read(), false), tick.get()),
        |(qs, _)| get_json::<HistogramDoc>(with_query("/api/v1/logs/histogram", &qs)),
    );

    let form = move || {
        let q = query.get();
        Suspend::new(async move {
            let services = services.await.map(|d| d.services).unwrap_or_default();
            view! { <LogForm q services/> }
        })
    };
    let live_link = move || {
        let q = query.get();
        let on = live.get();
        let next = query_with(&q, &[("live", (!on).then(|| "1".to_string()))]);
        view! {
            <a class="button live" class:on=on href=with_query("/logs", &next)>
                {if on { "Live tail: on" } else { "Live tail: off" }}
            </a>
        }
    };

    view! {
        <Title text="Logs · oxeye"/>
        <section class="page logs">
            <h1>"Logs"</h1>
            <Suspense fallback=|| view! { <Loading what="services"/> }>{form}</Suspense>
            {live_link}
            <Transition fallback=|| view! { <Loading what="the histogram"/> }>
                {move || Suspend::new(async move {
                    match histogram.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(h) => {
                            let mut cats: Vec<String> = h.buckets.iter().map(|b| b.severity_text.clone()).collect();
                            cats.sort_by_key(|c| severity_rank(c));
                            cats.dedup();
                            let categories = cats.into_iter().map(|c| { let colour = severity_colour(&c).to_string(); (c, colour) }).collect();
                            let buckets = h.buckets.into_iter().map(|b| (b.bucket_unix_nano, b.severity_text, b.count)).collect();
                            view! { <StackedBars buckets step_ns=h.step_ns categories title="Matching logs over time"/> }.into_any()
                        }
                    }
                })}
            </Transition>
            <Transition fallback=|| view! { <Loading what="logs"/> }>
                {move || Suspend::new(async move {
                    match logs.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(d) if d.logs.is_empty() => view! { <Empty message="No logs match in this time range."/> }.into_any(),
                        Ok(d) => view! { <LogList logs=d.logs/> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
}

fn severity_rank(text: &str) -> u8 {
    match text.to_ascii_uppercase().get(..4).unwrap_or("") {
        "FATA" => 0,
        "ERRO" => 1,
        "WARN" => 2,
        "INFO" => 3,
        "DEBU" => 4,
        "TRAC" => 5,
        _ => 6,
    }
}

#[component]
fn LogForm(q: ParamsMap, services: Vec<String>) -> impl IntoView {
    let service = param(&q, "service");
    let severity = param(&q, "severity");
    let service_options = services
        .into_iter()
        .map(|s| {
            let selected = s == service;
            view! { <option value=s.clone() selected=selected>{s.clone()}</option> }
        })
        .collect_view();
    let severities = [
        ("", "Any severity"),
        ("debug", "Debug and above"),
        ("info", "Info and above"),
        ("warn", "Warn and above"),
        ("error", "Error and above"),
        ("fatal", "Fatal"),
    ]
    .into_iter()
    .map(|(v, l)| view! { <option value=v selected={severity == v}>{l}</option> })
    .collect_view();
    view! {
        <Form method="GET" action="/logs">
            <div class="filters">
                <label class="wide">"Search"
                    <input name="query" value=param(&q, "query") placeholder="full text, e.g. timeout AND payment" size="40"/>
                </label>
                <label>"Service" <select name="service"><option value="">"All services"</option>{service_options}</select></label>
                <label>"Severity" <select name="severity">{severities}</select></label>
                <label>"Trace id" <input name="trace_id" value=param(&q, "trace_id") size="34" placeholder="any"/></label>
                <RangePicker lookback=param(&q, "lookback") start=param(&q, "start") end=param(&q, "end")/>
                {(param(&q, "live") == "1").then(|| view! { <input type="hidden" name="live" value="1"/> })}
                <button type="submit" class="primary">"Search logs"</button>
            </div>
        </Form>
    }
}

#[component]
fn LogList(logs: Vec<LogRecord>) -> impl IntoView {
    let count = logs.len();
    let rows = logs
        .into_iter()
        .map(|l| {
            let trace_link = (!l.trace_id.is_empty()).then(|| {
                let href = if l.span_id.is_empty() {
                    format!("/traces/{}", l.trace_id)
                } else {
                    format!("/traces/{}?span={}", l.trace_id, l.span_id)
                };
                view! { <a class="trace-link mono" href=href>"trace " {l.trace_id.get(..8).unwrap_or("").to_string()} "…"</a> }
            });
            let attrs: Vec<(String, String)> = l.attributes.iter().map(|(k, v)| (k.clone(), value_text(v))).collect();
            let resource: Vec<(String, String)> = l.resource_attributes.iter().map(|(k, v)| (k.clone(), value_text(v))).collect();
            view! {
                <li class=format!("log {}", severity_class(l.severity_number))>
                    <details>
                        <summary>
                            <Time unix_ns=l.time_unix_nano/>
                            <span class="sev">{l.severity_text.clone()}</span>
                            <span class="svc" style:color=service_colour(&l.service_name)>{l.service_name.clone()}</span>
                            <span class="body">{l.body_text()}</span>
                            {trace_link}
                        </summary>
                        <div class="log-detail">
                            <table class="kv">
                                <tbody>
                                    {(!l.trace_id.is_empty()).then(|| view! { <tr><th>"trace_id"</th><td class="mono"><a href=format!("/traces/{}", l.trace_id)>{l.trace_id.clone()}</a></td></tr> })}
                                    {(!l.span_id.is_empty()).then(|| view! { <tr><th>"span_id"</th><td class="mono">{l.span_id.clone()}</td></tr> })}
                                    <tr><th>"scope"</th><td>{l.scope_name.clone()}</td></tr>
                                    {attrs.into_iter().map(|(k, v)| view! { <tr><th>{k}</th><td>{v}</td></tr> }).collect_view()}
                                </tbody>
                            </table>
                            <h4>"Resource"</h4>
                            <table class="kv">
                                <tbody>{resource.into_iter().map(|(k, v)| view! { <tr><th>{k}</th><td>{v}</td></tr> }).collect_view()}</tbody>
                            </table>
                        </div>
                    </details>
                </li>
            }
        })
        .collect_view();
    view! {
        <p class="count">{count} " logs, newest first"</p>
        <ul class="log-list">{rows}</ul>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_read_the_api_shape() {
        let doc: LogsDoc = serde_json::from_str(
            r#"{"count":1,"logs":[{"attributes":{"k":"v","n":3},"body":"GET / 502","severity_number":17,
            "severity_text":"ERROR","service_name":"frontend","span_id":"b4","trace_id":"b6","time_unix_nano":5}]}"#,
        )
        .expect("the API's shape");
        assert_eq!(doc.logs[0].body_text(), "GET / 502");
        assert_eq!(severity_class(doc.logs[0].severity_number), "sev-error");
        assert_eq!(value_text(&doc.logs[0].attributes["n"]), "3");
    }
}
