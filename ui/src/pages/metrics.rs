//! Metrics explorer: pick a metric (autocomplete), filter and group by attributes, see lines
//! over time (rates for counters, percentiles for histograms).

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Form;
use leptos_router::hooks::use_query_map;
use leptos_router::params::ParamsMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{get_json, query_string, with_query};
use crate::format;
use crate::widgets::{
    Empty, ErrorBox, LineChart, Loading, RangePicker, Series, palette, param, window_pairs,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricName {
    pub name: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamesDoc {
    #[serde(default)]
    pub metrics: Vec<MetricName>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelsDoc {
    #[serde(default)]
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSeries {
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, Value>,
    #[serde(default)]
    pub points: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryDoc {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub agg: String,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub series: Vec<MetricSeries>,
}

fn api_query(q: &ParamsMap) -> String {
    let mut pairs = window_pairs(q);
    for k in ["name", "filters", "group_by", "agg", "step"] {
        pairs.push((k, param(q, k)));
    }
    query_string(pairs)
}

const AGGS: [(&str, &str); 12] = [
    ("", "default (rate for counters, p99 for histograms)"),
    ("rate", "rate per second"),
    ("increase", "increase"),
    ("avg", "average"),
    ("sum", "sum"),
    ("min", "min"),
    ("max", "max"),
    ("last", "last"),
    ("count", "count"),
    ("p50", "p50"),
    ("p95", "p95"),
    ("p99", "p99"),
];

#[component]
pub fn MetricsPage() -> impl IntoView {
    let query = use_query_map();
    let names = Resource::new(
        move || query_string(window_pairs(&query.read())),
        |qs| get_json::<NamesDoc>(with_query("/api/v1/metrics/names", &qs)),
    );
    let labels = Resource::new(
        move || param(&query.read(), "name"),
        |name| async move {
            if name.is_empty() {
                return Ok(LabelsDoc::default());
            }
            get_json::<LabelsDoc>(with_query(
                "/api/v1/metrics/labels",
                &query_string([("name", name)]),
            ))
            .await
        },
    );
    let data = Resource::new(
        move || api_query(&query.read()),
        |qs| async move {
            if !qs.contains("name=") {
                return Ok(None);
            }
            get_json::<QueryDoc>(with_query("/api/v1/metrics/query", &qs))
                .await
                .map(Some)
        },
    );
    let form = move || {
        let q = query.get();
        Suspend::new(async move {
            let names = names.await.map(|d| d.metrics).unwrap_or_default();
            let labels = labels.await.map(|d| d.labels).unwrap_or_default();
            view! { <MetricForm q names labels/> }
        })
    };
    view! {
        <Title text="Metrics · oxeye"/>
        <section class="page metrics">
            <h1>"Metrics"</h1>
            <Suspense fallback=|| view! { <Loading what="metric names"/> }>{form}</Suspense>
            <Suspense fallback=|| view! { <Loading what="the chart"/> }>
                {move || Suspend::new(async move {
                    match data.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(None) => view! { <Empty message="Pick a metric to chart it."/> }.into_any(),
                        Ok(Some(d)) if d.series.iter().all(|s| s.points.is_empty()) => view! {
                            <Empty message=format!("No points of {} in this range.", d.name)/>
                        }.into_any(),
                        Ok(Some(d)) => view! { <MetricChart doc=d/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
fn MetricForm(q: ParamsMap, names: Vec<MetricName>, labels: Vec<String>) -> impl IntoView {
    let agg = param(&q, "agg");
    let name_options = names
        .into_iter()
        .map(|m| view! { <option value=m.name.clone()>{m.kind.clone()}</option> })
        .collect_view();
    let label_options = labels
        .into_iter()
        .map(|l| view! { <option value=l.clone()></option> })
        .collect_view();
    let aggs = AGGS
        .into_iter()
        .map(|(v, l)| view! { <option value=v selected={agg == v}>{l}</option> })
        .collect_view();
    view! {
        <Form method="GET" action="/explore">
            <div class="filters">
                <label class="wide">"Metric"
                    <input name="name" list="metric-names" value=param(&q, "name") placeholder="start typing a metric name" size="36" autocomplete="off"/>
                    <datalist id="metric-names">{name_options}</datalist>
                </label>
                <label>"Filters" <input name="filters" value=param(&q, "filters") placeholder="service_name=checkout" size="28"/></label>
                <label>"Group by" <input name="group_by" list="metric-labels" value=param(&q, "group_by") placeholder="e.g. http.route" size="20"/>
                    <datalist id="metric-labels">{label_options}</datalist>
                </label>
                <label>"Aggregation" <select name="agg">{aggs}</select></label>
                <label>"Step" <input name="step" value=param(&q, "step") placeholder="auto" size="6"/></label>
                <RangePicker lookback=param(&q, "lookback") start=param(&q, "start") end=param(&q, "end")/>
                <button type="submit" class="primary">"Chart"</button>
            </div>
        </Form>
    }
}

fn series_label(labels: &std::collections::BTreeMap<String, Value>) -> String {
    if labels.is_empty() {
        return "all series".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::trace_model::value_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[component]
fn MetricChart(doc: QueryDoc) -> impl IntoView {
    let unit = doc.unit.clone().unwrap_or_default();
    let title = format!(
        "{} · {} · {}{}",
        doc.name,
        doc.kind.clone().unwrap_or_default(),
        doc.agg,
        if unit.is_empty() {
            String::new()
        } else {
            format!(" ({unit})")
        }
    );
    let series: Vec<Series> = doc
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| Series {
            label: series_label(&s.labels),
            colour: palette(i),
            points: s.points.clone(),
        })
        .collect();
    let is_seconds = unit == "s";
    let format_value: fn(f64) -> String = if is_seconds {
        |v| format::duration(v * 1e9)
    } else {
        format::number
    };
    view! {
        <LineChart series title format_value height=280.0/>
        {doc.truncated.then(|| view! { <p class="hint">"Too many series: only the largest are shown. Add a filter."</p> })}
    }
}
