//! SQL console: an editor with example queries over oxeye's tables, the result as a table and
//! as a chart, and a CSV download of the same query.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Form;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{encode, post_json};
use crate::format;
use crate::trace_model::value_text;
use crate::widgets::{Empty, ErrorBox, LineChart, Loading, Series, palette, param};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type", default)]
    pub sql_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SqlDoc {
    #[serde(default)]
    pub columns: Vec<Column>,
    #[serde(default)]
    pub rows: Vec<Vec<Value>>,
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub elapsed_ms: f64,
}

pub const EXAMPLES: [(&str, &str); 7] = [
    (
        "Slowest operations (p99) in the last hour",
        "SELECT service_name, name, count(*) AS calls,\n       approx_percentile_cont(duration_ns, 0.99) / 1e6 AS p99_ms\nFROM spans\nWHERE start_time > now() - INTERVAL '1 hour' AND kind = 'SERVER'\nGROUP BY 1, 2\nORDER BY p99_ms DESC\nLIMIT 20",
    ),
    (
        "Spans per minute by service",
        "SELECT date_trunc('minute', start_time) AS minute, service_name, count(*) AS spans\nFROM spans\nWHERE start_time > now() - INTERVAL '1 hour'\nGROUP BY 1, 2\nORDER BY 1",
    ),
    (
        "Error rate per service",
        "SELECT service_name,\n       count(*) FILTER (WHERE status_code = 'ERROR') * 1.0 / count(*) AS error_rate,\n       count(*) AS spans\nFROM spans\nWHERE start_time > now() - INTERVAL '1 hour'\nGROUP BY 1\nORDER BY error_rate DESC",
    ),
    (
        "Top HTTP routes",
        "SELECT attributes['http.route'] AS route, count(*) AS requests\nFROM spans\nWHERE attributes['http.route'] IS NOT NULL AND start_time > now() - INTERVAL '1 hour'\nGROUP BY 1\nORDER BY requests DESC\nLIMIT 10",
    ),
    (
        "Recent error logs",
        "SELECT time, service_name, severity_text, body, trace_id\nFROM logs\nWHERE severity_number >= 17 AND time > now() - INTERVAL '1 hour'\nORDER BY time DESC\nLIMIT 50",
    ),
    (
        "Log lines per minute",
        "SELECT date_trunc('minute', time) AS minute, count(*) AS lines\nFROM logs\nWHERE time > now() - INTERVAL '1 hour'\nGROUP BY 1\nORDER BY 1",
    ),
    (
        "Metric names and points",
        "SELECT name, type, count(*) AS points\nFROM metrics\nGROUP BY 1, 2\nORDER BY points DESC",
    ),
];

#[component]
pub fn SqlPage() -> impl IntoView {
    let query = use_query_map();
    let statement = move || param(&query.read(), "q");
    let result = Resource::new(statement, |sql| async move {
        if sql.trim().is_empty() {
            return Ok(None);
        }
        post_json::<SqlDoc>("/api/v1/sql".into(), serde_json::json!({ "sql": sql }))
            .await
            .map(Some)
    });
    let editor = move || {
        let sql = statement();
        let csv = (!sql.trim().is_empty())
            .then(|| format!("/api/v1/sql?format=csv&sql={}", encode(&sql)));
        view! {
            <Form method="GET" action="/sql">
                <textarea name="q" rows="8" spellcheck="false" aria-label="SQL" placeholder="SELECT ... FROM spans | logs | metrics | histograms | traces">{sql.clone()}</textarea>
                <div class="editor-actions">
                    <button type="submit" class="primary">"Run"</button>
                    {csv.map(|href| view! { <a class="button" href=href rel="external" download="oxeye-result.csv">"Download CSV"</a> })}
                </div>
            </Form>
        }
    };
    let examples = EXAMPLES
        .iter()
        .map(|(title, sql)| {
            view! { <li><a href=format!("/sql?q={}", encode(sql))>{*title}</a></li> }
        })
        .collect_view();
    view! {
        <Title text="SQL · oxeye"/>
        <section class="page sql">
            <h1>"SQL"</h1>
            <div class="sql-layout">
                <div class="editor">{editor}</div>
                <aside class="examples">
                    <h2>"Examples"</h2>
                    <ul>{examples}</ul>
                    <p class="hint">"Tables: spans, logs, metrics, histograms and the one-row-per-trace view. Read-only."</p>
                </aside>
            </div>
            <Suspense fallback=|| view! { <Loading what="the result"/> }>
                {move || Suspend::new(async move {
                    match result.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(None) => view! { <Empty message="Write a query or pick an example."/> }.into_any(),
                        Ok(Some(doc)) => view! { <SqlResult doc/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

fn is_numeric(sql_type: &str) -> bool {
    matches!(
        sql_type,
        "bigint"
            | "integer"
            | "smallint"
            | "double precision"
            | "real"
            | "numeric"
            | "int8"
            | "int4"
            | "int2"
            | "float8"
            | "float4"
    )
}

fn is_time(sql_type: &str) -> bool {
    sql_type.starts_with("timestamp")
}

/// What to draw for a result: a time series when it has a time column and a number column
/// (one line per value of the first text column), bars for label + number, nothing otherwise.
pub enum ChartPlan {
    Lines(Vec<Series>),
    Bars(Vec<(String, f64)>, String),
    None,
}

pub fn plan_chart(doc: &SqlDoc) -> ChartPlan {
    let time = doc.columns.iter().position(|c| is_time(&c.sql_type));
    let number = doc.columns.iter().position(|c| is_numeric(&c.sql_type));
    let label = doc
        .columns
        .iter()
        .position(|c| !is_numeric(&c.sql_type) && !is_time(&c.sql_type));
    match (time, number) {
        (Some(t), Some(n)) => {
            let mut groups: Vec<(String, Vec<(i64, f64)>)> = Vec::new();
            for row in &doc.rows {
                let (Some(ts), Some(v)) = (
                    row.get(t)
                        .and_then(Value::as_str)
                        .and_then(format::parse_utc_timestamp),
                    row.get(n).and_then(Value::as_f64),
                ) else {
                    continue;
                };
                let key = label
                    .and_then(|l| row.get(l))
                    .map(value_text)
                    .unwrap_or_else(|| doc.columns[n].name.clone());
                match groups.iter_mut().find(|g| g.0 == key) {
                    Some(g) => g.1.push((ts, v)),
                    None => groups.push((key, vec![(ts, v)])),
                }
            }
            groups.truncate(12);
            ChartPlan::Lines(
                groups
                    .into_iter()
                    .enumerate()
                    .map(|(i, (label, mut points))| {
                        points.sort_by_key(|p| p.0);
                        Series {
                            label,
                            colour: palette(i),
                            points,
                        }
                    })
                    .collect(),
            )
        }
        (None, Some(n)) if doc.rows.len() > 1 => {
            let bars = doc
                .rows
                .iter()
                .take(30)
                .filter_map(|row| {
                    let v = row.get(n)?.as_f64()?;
                    let name = label
                        .and_then(|l| row.get(l))
                        .map(value_text)
                        .unwrap_or_default();
                    Some((name, v))
                })
                .collect();
            ChartPlan::Bars(bars, doc.columns[n].name.clone())
        }
        _ => ChartPlan::None,
    }
}

#[component]
fn SqlResult(doc: SqlDoc) -> impl IntoView {
    let chart = match plan_chart(&doc) {
        ChartPlan::Lines(series) => {
            view! { <LineChart series title="Result over time" format_value=format::number/> }
                .into_any()
        }
        ChartPlan::Bars(bars, column) => {
            let max = bars
                .iter()
                .map(|b| b.1)
                .fold(0.0f64, f64::max)
                .max(f64::MIN_POSITIVE);
            view! {
                <figure class="chart bars">
                    <figcaption>{column}</figcaption>
                    <ul>
                        {bars.into_iter().map(|(label, v)| view! {
                            <li>
                                <span class="bar-label">{label}</span>
                                <span class="bar" style:width=format!("{:.1}%", (v / max * 100.0).max(0.0))></span>
                                <span class="bar-value">{format::number(v)}</span>
                            </li>
                        }).collect_view()}
                    </ul>
                </figure>
            }
            .into_any()
        }
        ChartPlan::None => ().into_any(),
    };
    let header = doc
        .columns
        .iter()
        .map(|c| view! { <th title=c.sql_type.clone()>{c.name.clone()}<span class="type">{c.sql_type.clone()}</span></th> })
        .collect_view();
    let rows = doc
        .rows
        .iter()
        .map(|r| {
            view! { <tr>{r.iter().map(|v| view! { <td class:null=v.is_null()>{value_text(v)}</td> }).collect_view()}</tr> }
        })
        .collect_view();
    view! {
        <p class="count">
            {doc.rows.len()} " rows in " {format!("{:.1}", doc.elapsed_ms)} " ms"
            {doc.truncated.then_some(" (truncated by the result row limit)")}
        </p>
        {chart}
        <div class="table-scroll">
            <table class="results sql-result">
                <thead><tr>{header}</tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
}
