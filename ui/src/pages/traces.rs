//! Trace search: filters in the URL, a scatter plot of duration over time, and the result list.

use std::cmp::Reverse;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Form;
use leptos_router::hooks::use_query_map;
use leptos_router::params::ParamsMap;
use serde::{Deserialize, Serialize};

use crate::api::{encode, get_json, query_string, with_query};
use crate::format;
use crate::graph::service_colour;
use crate::scale::{Scale, nice_ticks, time_ticks, y_max};
use crate::widgets::{Empty, ErrorBox, Loading, RangePicker, Time, or_default, param, use_clock};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicesDoc {
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub name: String,
    #[serde(default)]
    pub span_kinds: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperationsDoc {
    #[serde(default)]
    pub operations: Vec<Operation>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceSummary {
    pub trace_id: String,
    #[serde(default)]
    pub root_service: String,
    #[serde(default)]
    pub root_name: String,
    #[serde(default)]
    pub span_count: u64,
    #[serde(default)]
    pub error_count: u64,
    #[serde(default)]
    pub duration_ns: i64,
    #[serde(default)]
    pub start_time_unix_nano: i64,
    #[serde(default)]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchDoc {
    #[serde(default)]
    pub traces: Vec<TraceSummary>,
}

/// The URL parameters the search passes on to `/api/v1/traces`.
const SEARCH_KEYS: [&str; 9] = [
    "service",
    "operation",
    "tags",
    "min_duration",
    "max_duration",
    "lookback",
    "start",
    "end",
    "limit",
];

fn api_query(q: &ParamsMap) -> String {
    query_string(SEARCH_KEYS.iter().map(|k| {
        let v = param(q, k);
        let v = match (*k, v.is_empty()) {
            ("lookback", true) if param(q, "start").is_empty() => "1h".to_string(),
            ("limit", true) => "20".to_string(),
            _ => v,
        };
        (*k, v)
    }))
}

pub fn sort_traces(traces: &mut [TraceSummary], order: &str) {
    match order {
        "longest" => traces.sort_by_key(|t| Reverse(t.duration_ns)),
        "shortest" => traces.sort_by_key(|t| t.duration_ns),
        "spans" => traces.sort_by_key(|t| Reverse(t.span_count)),
        "errors" => traces.sort_by_key(|t| Reverse(t.error_count)),
        _ => traces.sort_by_key(|t| Reverse(t.start_time_unix_nano)),
    }
}

#[component]
pub fn TracesPage() -> impl IntoView {
    let query = use_query_map();
    let services = Resource::new(
        move || param(&query.read(), "lookback"),
        |lookback| {
            get_json::<ServicesDoc>(with_query(
                "/api/v1/services",
                &query_string([("lookback", lookback)]),
            ))
        },
    );
    let operations = Resource::new(
        move || param(&query.read(), "service"),
        |service| async move {
            if service.is_empty() {
                return Ok(OperationsDoc::default());
            }
            get_json::<OperationsDoc>(format!("/api/v1/services/{}/operations", encode(&service)))
                .await
        },
    );
    let results = Resource::new(
        move || api_query(&query.read()),
        |qs| get_json::<SearchDoc>(with_query("/api/v1/traces", &qs)),
    );

    let form = move || {
        let q = query.get();
        Suspend::new(async move {
            let services = services.await.map(|d| d.services).unwrap_or_default();
            let operations = operations.await.map(|d| d.operations).unwrap_or_default();
            view! { <SearchForm q services operations/> }
        })
    };

    view! {
        <Title text="Traces · oxeye"/>
        <section class="page traces">
            <h1>"Traces"</h1>
            <Suspense fallback=|| view! { <Loading what="services"/> }>{form}</Suspense>
            <Suspense fallback=|| view! { <Loading what="traces"/> }>
                {move || Suspend::new(async move {
                    let order = param(&query.read_untracked(), "sort");
                    match results.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(doc) if doc.traces.is_empty() => view! {
                            <Empty message="No traces match these filters in this time range. Widen the range or remove a filter."/>
                        }.into_any(),
                        Ok(mut doc) => {
                            sort_traces(&mut doc.traces, &order);
                            view! {
                                <Scatter traces=doc.traces.clone()/>
                                <TraceTable traces=doc.traces/>
                            }.into_any()
                        }
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
fn SearchForm(q: ParamsMap, services: Vec<String>, operations: Vec<Operation>) -> impl IntoView {
    let service = param(&q, "service");
    let sort = param(&q, "sort");
    let service_options = services
        .into_iter()
        .map(|s| {
            let selected = s == service;
            view! { <option value=s.clone() selected=selected>{s.clone()}</option> }
        })
        .collect_view();
    let operation_options = operations
        .into_iter()
        .map(|o| view! { <option value=o.name.clone()></option> })
        .collect_view();
    let sorts = [
        ("", "Most recent"),
        ("longest", "Longest first"),
        ("shortest", "Shortest first"),
        ("spans", "Most spans"),
        ("errors", "Most errors"),
    ]
    .into_iter()
    .map(|(v, l)| view! { <option value=v selected={sort == v}>{l}</option> })
    .collect_view();
    view! {
        <Form method="GET" action="/traces">
            <div class="filters">
                <label>"Service"
                    <select name="service">
                        <option value="">"All services"</option>
                        {service_options}
                    </select>
                </label>
                <label>"Operation"
                    <input name="operation" list="operations" value=param(&q, "operation") placeholder="any" size="24"/>
                    <datalist id="operations">{operation_options}</datalist>
                </label>
                <label>"Tags"
                    <input name="tags" value=param(&q, "tags") placeholder="http.response.status_code=500 key=value" size="32"/>
                </label>
                <label>"Min duration" <input name="min_duration" value=param(&q, "min_duration") placeholder="e.g. 100ms" size="8"/></label>
                <label>"Max duration" <input name="max_duration" value=param(&q, "max_duration") placeholder="e.g. 2s" size="8"/></label>
                <RangePicker lookback=or_default(param(&q, "lookback"), "1h") start=param(&q, "start") end=param(&q, "end")/>
                <label>"Limit" <input name="limit" type="number" min="1" max="1000" value=or_default(param(&q, "limit"), "20")/></label>
                <label>"Sort" <select name="sort">{sorts}</select></label>
                <button type="submit" class="primary">"Find traces"</button>
            </div>
        </Form>
    }
}

const SW: f64 = 1100.0;
const SH: f64 = 180.0;

/// Duration over start time, one dot per trace (red when it has errors); a dot links to its trace.
#[component]
fn Scatter(traces: Vec<TraceSummary>) -> impl IntoView {
    let clock = use_clock();
    let t0 = traces
        .iter()
        .map(|t| t.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let t1 = traces
        .iter()
        .map(|t| t.start_time_unix_nano)
        .max()
        .unwrap_or(1);
    let dmax = y_max(traces.iter().map(|t| t.duration_ns as f64));
    let x = Scale::new((t0 as f64, t1 as f64), (60.0, SW - 14.0));
    let y = Scale::new((0.0, dmax), (SH - 22.0, 8.0));
    let y_axis = nice_ticks(0.0, dmax, 4)
        .into_iter()
        .map(|v| {
            let py = y.map(v);
            view! {
                <line x1="60" x2=(SW - 14.0).to_string() y1=py.to_string() y2=py.to_string() class="grid"/>
                <text x="54" y=(py + 4.0).to_string() text-anchor="end" class="axis">{format::duration(v)}</text>
            }
        })
        .collect_view();
    let x_axis = time_ticks(t0, t1, 6)
        .into_iter()
        .map(|t| {
            let px = x.map(t as f64);
            view! { <text x=px.to_string() y=(SH - 5.0).to_string() text-anchor="middle" class="axis">{move || format::clock_time(t, clock.get())}</text> }
        })
        .collect_view();
    let dots = traces
        .iter()
        .map(|t| {
            let href = format!("/traces/{}", t.trace_id);
            let label = format!(
                "{}: {} · {} · {} spans{}",
                t.root_service,
                t.root_name,
                format::duration(t.duration_ns as f64),
                t.span_count,
                if t.error_count > 0 { format!(" · {} errors", t.error_count) } else { String::new() }
            );
            let r = (3.0 + (t.span_count as f64).log10().max(0.0) * 1.5).min(9.0);
            view! {
                <a href=href>
                    <circle cx=format!("{:.1}", x.map(t.start_time_unix_nano as f64)) cy=format!("{:.1}", y.map(t.duration_ns as f64))
                        r=format!("{r:.1}") class={if t.error_count > 0 { "dot error" } else { "dot" }}>
                        <title>{label}</title>
                    </circle>
                </a>
            }
        })
        .collect_view();
    view! {
        <figure class="chart scatter">
            <figcaption>"Duration over time (dot size: span count; red: errors)"</figcaption>
            <svg viewBox=format!("0 0 {SW} {SH}") width="100%" role="img">{y_axis}{x_axis}{dots}</svg>
        </figure>
    }
}

#[component]
fn TraceTable(traces: Vec<TraceSummary>) -> impl IntoView {
    let longest = traces
        .iter()
        .map(|t| t.duration_ns)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let count = traces.len();
    let rows = traces
        .into_iter()
        .map(|t| {
            let width = format!("{:.1}%", t.duration_ns as f64 / longest * 100.0);
            let services = t
                .services
                .iter()
                .map(|s| view! { <span class="chip" style:border-color=service_colour(s)>{s.clone()}</span> })
                .collect_view();
            view! {
                <tr class:has-errors={t.error_count > 0}>
                    <td class="trace-name">
                        <a href=format!("/traces/{}", t.trace_id) class="trace-link">
                            <span class="svc" style:color=service_colour(&t.root_service)>{t.root_service.clone()}</span>
                            ": " {t.root_name.clone()}
                        </a>
                        <div class="trace-id mono">{t.trace_id.clone()}</div>
                    </td>
                    <td class="services">{services}</td>
                    <td class="num">{t.span_count}</td>
                    <td class="num errors">{(t.error_count > 0).then_some(t.error_count)}</td>
                    <td class="duration">
                        <div class="duration-bar"><span style:width=width></span></div>
                        {format::duration(t.duration_ns as f64)}
                    </td>
                    <td><Time unix_ns=t.start_time_unix_nano/></td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <p class="count">{count} " traces"</p>
        <table class="results">
            <thead><tr><th>"Trace"</th><th>"Services"</th><th>"Spans"</th><th>"Errors"</th><th>"Duration"</th><th>"Started"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}
