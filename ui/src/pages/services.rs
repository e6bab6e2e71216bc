//! The service map (services and their calls from the dependency API) and a service's RED
//! overview (rate, errors, p50/p95/p99 per operation).

use std::collections::BTreeMap;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Form;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde::{Deserialize, Serialize};

use crate::api::{encode, get_json, query_string, with_query};
use crate::format;
use crate::graph::{self, Edge, NODE_HEIGHT, NODE_WIDTH, service_colour};
use crate::pages::traces::ServicesDoc;
use crate::widgets::{
    Empty, ErrorBox, LineChart, Loading, RangePicker, Series, or_default, palette, param,
    window_pairs,
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeDoc {
    pub caller: String,
    pub callee: String,
    #[serde(default)]
    pub calls: u64,
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub rate_per_second: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DependenciesDoc {
    #[serde(default)]
    pub edges: Vec<EdgeDoc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedSummary {
    pub operation: String,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub rate_per_second: f64,
    #[serde(default)]
    pub p50_ns: Option<f64>,
    #[serde(default)]
    pub p95_ns: Option<f64>,
    #[serde(default)]
    pub p99_ns: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedPoint {
    pub bucket_unix_nano: i64,
    pub operation: String,
    #[serde(default)]
    pub requests: f64,
    #[serde(default)]
    pub errors: f64,
    #[serde(default)]
    pub p50_ns: Option<f64>,
    #[serde(default)]
    pub p95_ns: Option<f64>,
    #[serde(default)]
    pub p99_ns: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RedDoc {
    #[serde(default)]
    pub step_ns: i64,
    #[serde(default)]
    pub operations: Vec<RedSummary>,
    #[serde(default)]
    pub series: Vec<RedPoint>,
}

fn window_query(q: &leptos_router::params::ParamsMap) -> String {
    query_string(window_pairs(q))
}

#[component]
pub fn ServiceMapPage() -> impl IntoView {
    let query = use_query_map();
    let deps = Resource::new(
        move || window_query(&query.read()),
        |qs| get_json::<DependenciesDoc>(with_query("/api/v1/dependencies", &qs)),
    );
    let services = Resource::new(
        move || window_query(&query.read()),
        |qs| get_json::<ServicesDoc>(with_query("/api/v1/services", &qs)),
    );
    let range = move || {
        let q = query.get();
        view! {
            <Form method="GET" action="/services">
                <div class="filters">
                    <RangePicker lookback=or_default(param(&q, "lookback"), "1h") start=param(&q, "start") end=param(&q, "end")/>
                    <button type="submit" class="primary">"Show"</button>
                </div>
            </Form>
        }
    };
    view! {
        <Title text="Service map · oxeye"/>
        <section class="page services">
            <h1>"Service map"</h1>
            {range}
            <Suspense fallback=|| view! { <Loading what="the service map"/> }>
                {move || Suspend::new(async move {
                    let services = services.await;
                    let window = window_query(&query.read_untracked());
                    match (deps.await, services) {
                        (Err(e), _) | (_, Err(e)) => view! { <ErrorBox message=e/> }.into_any(),
                        (Ok(d), Ok(s)) if d.edges.is_empty() && s.services.is_empty() => view! {
                            <Empty message="No services sent spans in this time range."/>
                        }.into_any(),
                        (Ok(d), Ok(s)) => view! { <ServiceGraph edges=d.edges services=s.services window/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

#[component]
fn ServiceGraph(edges: Vec<EdgeDoc>, services: Vec<String>, window: String) -> impl IntoView {
    let model: Vec<Edge> = edges
        .iter()
        .map(|e| Edge {
            caller: e.caller.clone(),
            callee: e.callee.clone(),
            calls: e.calls,
            errors: e.errors,
            rate_per_second: e.rate_per_second,
        })
        .collect();
    let layout = graph::layout(&services, &model);
    let position: BTreeMap<&str, (f64, f64)> = layout
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), (n.x, n.y)))
        .collect();
    let edge_views = model
        .iter()
        .filter_map(|e| {
            let (ax, ay) = *position.get(e.caller.as_str())?;
            let (bx, by) = *position.get(e.callee.as_str())?;
            let (x1, y1) = (ax + NODE_WIDTH, ay + NODE_HEIGHT / 2.0);
            let (x2, y2) = if bx > ax { (bx, by + NODE_HEIGHT / 2.0) } else { (bx + NODE_WIDTH / 2.0, by + NODE_HEIGHT) };
            let mid = (x1 + x2) / 2.0;
            let d = format!("M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}");
            let error_share = if e.calls > 0 { e.errors as f64 / e.calls as f64 } else { 0.0 };
            let label = format!("{}/s · {} err", format::number(e.rate_per_second), format::percent(error_share));
            let tip = format!("{} → {}: {} calls, {} errors", e.caller, e.callee, e.calls, e.errors);
            Some(view! {
                <g class="edge" class:failing={error_share > 0.0}>
                    <path d=d fill="none" marker-end="url(#arrow)"><title>{tip}</title></path>
                    <text x=format!("{mid:.1}") y=format!("{:.1}", (y1 + y2) / 2.0 - 6.0) text-anchor="middle" class="edge-label">{label}</text>
                </g>
            })
        })
        .collect_view();
    let node_views = layout
        .nodes
        .iter()
        .map(|n| {
            let href = with_query(&format!("/services/{}", encode(&n.name)), &window);
            view! {
                <a href=href class="node">
                    <rect x=format!("{:.1}", n.x) y=format!("{:.1}", n.y) width=NODE_WIDTH.to_string() height=NODE_HEIGHT.to_string()
                        rx="8" stroke=service_colour(&n.name)/>
                    <text x=format!("{:.1}", n.x + NODE_WIDTH / 2.0) y=format!("{:.1}", n.y + NODE_HEIGHT / 2.0 + 5.0) text-anchor="middle">{n.name.clone()}</text>
                </a>
            }
        })
        .collect_view();
    let table = edges
        .iter()
        .map(|e| {
            let share = if e.calls > 0 { e.errors as f64 / e.calls as f64 } else { 0.0 };
            view! {
                <tr>
                    <td><a href=format!("/services/{}", encode(&e.caller))>{e.caller.clone()}</a></td>
                    <td><a href=format!("/services/{}", encode(&e.callee))>{e.callee.clone()}</a></td>
                    <td class="num">{e.calls}</td>
                    <td class="num">{format::number(e.rate_per_second)} "/s"</td>
                    <td class="num" class:errors={e.errors > 0}>{e.errors} " (" {format::percent(share)} ")"</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <figure class="service-map">
            <svg viewBox=format!("0 0 {:.0} {:.0}", layout.width, layout.height) width="100%" style:max-width=format!("{:.0}px", layout.width) role="img" aria-label="Service map">
                <defs>
                    <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
                        <path d="M 0 0 L 10 5 L 0 10 z" class="arrow-head"/>
                    </marker>
                </defs>
                {edge_views}
                {node_views}
            </svg>
            <figcaption>"Edges: calls per second and error rate. Click a service for its RED overview."</figcaption>
        </figure>
        <table class="results">
            <thead><tr><th>"Caller"</th><th>"Callee"</th><th>"Calls"</th><th>"Rate"</th><th>"Errors"</th></tr></thead>
            <tbody>{table}</tbody>
        </table>
    }
}

#[component]
pub fn ServicePage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let service = move || params.read().get("service").unwrap_or_default();
    let red = Resource::new(
        move || (service(), window_query(&query.read())),
        |(s, qs)| {
            get_json::<RedDoc>(with_query(
                "/api/v1/red",
                &format!("service={}&{qs}", encode(&s)),
            ))
        },
    );
    let range = move || {
        let q = query.get();
        let action = format!("/services/{}", encode(&service()));
        view! {
            <Form method="GET" action=action>
                <div class="filters">
                    <RangePicker lookback=or_default(param(&q, "lookback"), "1h") start=param(&q, "start") end=param(&q, "end")/>
                    <button type="submit" class="primary">"Show"</button>
                </div>
            </Form>
        }
    };
    view! {
        <Title text=move || format!("{} · oxeye", service())/>
        <section class="page service">
            <p class="crumbs"><a href="/services">"Service map"</a> " / "</p>
            <h1 style:color=move || service_colour(&service())>{service}</h1>
            {range}
            <Suspense fallback=|| view! { <Loading what="RED metrics"/> }>
                {move || Suspend::new(async move {
                    match red.await {
                        Err(e) => view! { <ErrorBox message=e/> }.into_any(),
                        Ok(r) if r.operations.is_empty() => view! { <Empty message="This service has no server or consumer spans in this range."/> }.into_any(),
                        Ok(r) => view! { <RedOverview service=service() red=r/> }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

fn ms_or_dash(ns: Option<f64>) -> String {
    ns.map_or("–".into(), format::duration)
}

#[component]
fn RedOverview(service: String, red: RedDoc) -> impl IntoView {
    let step_s = (red.step_ns.max(1) as f64) / 1e9;
    let rows = red
        .operations
        .iter()
        .map(|o| {
            let traces = format!(
                "/traces?service={}&operation={}",
                encode(&service),
                encode(&o.operation)
            );
            view! {
                <tr>
                    <td><a href=traces>{o.operation.clone()}</a></td>
                    <td class="num">{format::number(o.rate_per_second)} "/s"</td>
                    <td class="num">{o.requests}</td>
                    <td class="num" class:errors={o.errors > 0}>{format::percent(o.error_rate)}</td>
                    <td class="num">{ms_or_dash(o.p50_ns)}</td>
                    <td class="num">{ms_or_dash(o.p95_ns)}</td>
                    <td class="num">{ms_or_dash(o.p99_ns)}</td>
                </tr>
            }
        })
        .collect_view();
    let charts = red
        .operations
        .iter()
        .map(|o| {
            let points: Vec<&RedPoint> = red.series.iter().filter(|p| p.operation == o.operation).collect();
            let line = |label: &str, colour: String, f: &dyn Fn(&RedPoint) -> Option<f64>| Series {
                label: label.to_string(),
                colour,
                points: points.iter().filter_map(|p| f(p).map(|v| (p.bucket_unix_nano, v))).collect(),
            };
            let rate = vec![line("requests/s", palette(0), &|p| Some(p.requests / step_s))];
            let errors = vec![line("error rate %", palette(1), &|p| {
                Some(if p.requests > 0.0 { p.errors / p.requests * 100.0 } else { 0.0 })
            })];
            let latency = vec![
                line("p50", palette(2), &|p| p.p50_ns),
                line("p95", palette(3), &|p| p.p95_ns),
                line("p99", palette(1), &|p| p.p99_ns),
            ];
            view! {
                <section class="operation">
                    <h3>{o.operation.clone()}</h3>
                    <div class="chart-row">
                        <LineChart series=rate title="Rate (requests/s)" format_value=format::number height=150.0/>
                        <LineChart series=errors title="Errors (%)" format_value=format::number height=150.0/>
                        <LineChart series=latency title="Latency p50 / p95 / p99" format_value=format::duration height=150.0/>
                    </div>
                </section>
            }
        })
        .collect_view();
    view! {
        <table class="results red">
            <thead><tr><th>"Operation"</th><th>"Rate"</th><th>"Requests"</th><th>"Error rate"</th><th>"p50"</th><th>"p95"</th><th>"p99"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        {charts}
    }
}
