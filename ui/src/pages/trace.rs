//! The trace view: waterfall (virtualised rows, collapsible tree, critical path, find in
//! trace), span detail panel, and the trace's logs linked to their spans.
//!
//! All of its state is in the URL: `?span=` (selected span), `find=`, `critical=1`,
//! `collapsed=` (span ids), so every view can be shared and the back button works.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::components::Form;
use leptos_router::hooks::{use_params_map, use_query_map};
use leptos_router::params::ParamsMap;

use crate::api::{encode, get_json, with_query};
use crate::format;
use crate::graph::service_colour;
use crate::pages::logs::{LogRecord, LogsDoc, severity_class};
use crate::trace_model::{SpanRow, Status, TraceView};
use crate::widgets::{Empty, ErrorBox, Loading, Time, param, query_with};

/// Height of one waterfall row in pixels (CSS `.wf-row` uses the same).
const ROW_HEIGHT: f64 = 26.0;
/// Rows rendered beyond the visible ones, above and below.
const OVERSCAN: usize = 12;
/// Rows the server renders (and the browser starts with) before any scrolling.
const FIRST_WINDOW: usize = 40;

#[component]
pub fn TracePage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").unwrap_or_default().to_lowercase();
    let trace = Resource::new(id, |id| async move {
        let doc: serde_json::Value = get_json(format!("/api/v1/traces/{}", encode(&id))).await?;
        TraceView::from_api(&doc)
    });
    let logs = Resource::new(id, |id| {
        get_json::<LogsDoc>(format!("/api/v1/logs?trace_id={}&limit=1000", encode(&id)))
    });
    view! {
        <Title text=move || format!("Trace {} · oxeye", id())/>
        <section class="page trace">
            <Suspense fallback=|| view! { <Loading what="the trace"/> }>
                {move || Suspend::new(async move {
                    let logs = logs.await;
                    match trace.await {
                        Ok(t) => view! { <TraceBody trace=Arc::new(t) logs/> }.into_any(),
                        Err(e) => view! {
                            <h1>"Trace " <span class="mono">{id()}</span></h1>
                            <ErrorBox message=e/>
                        }.into_any(),
                    }
                })}
            </Suspense>
        </section>
    }
}

fn href(trace_id: &str, q: &ParamsMap, changes: &[(&str, Option<String>)]) -> String {
    with_query(&format!("/traces/{trace_id}"), &query_with(q, changes))
}

#[component]
fn TraceBody(trace: Arc<TraceView>, logs: Result<LogsDoc, String>) -> impl IntoView {
    let query = use_query_map();
    let logs: Arc<Vec<LogRecord>> = Arc::new(logs.map(|d| d.logs).unwrap_or_default());
    let logs_by_span: Arc<HashMap<String, usize>> =
        Arc::new(logs.iter().fold(HashMap::new(), |mut m, l| {
            *m.entry(l.span_id.clone()).or_insert(0) += 1;
            m
        }));
    let selected = Memo::new(move |_| query.read().get("span").filter(|s| !s.is_empty()));
    let find = Memo::new(move |_| param(&query.read(), "find"));
    let critical = Memo::new(move |_| param(&query.read(), "critical") == "1");
    let collapsed_ids = Memo::new(move |_| {
        param(&query.read(), "collapsed")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    let t = trace.clone();
    let collapsed_rows = Memo::new(move |_| {
        collapsed_ids
            .read()
            .iter()
            .filter_map(|id| t.index_of(id))
            .collect::<HashSet<usize>>()
    });
    let t = trace.clone();
    let visible = Memo::new(move |_| {
        let c = collapsed_rows.read();
        t.visible_rows(&|i| c.contains(&i))
    });
    let t = trace.clone();
    let matches = Memo::new(move |_| t.find(&find.read()).into_iter().collect::<HashSet<u32>>());
    let (scroll_top, set_scroll_top) = signal(0.0f64);
    let (viewport, set_viewport) = signal(FIRST_WINDOW as f64 * ROW_HEIGHT);
    let window = Memo::new(move |_| {
        let rows = visible.read();
        let first = ((scroll_top.get() / ROW_HEIGHT) as usize).saturating_sub(OVERSCAN);
        let shown = (viewport.get() / ROW_HEIGHT).ceil() as usize + 2 * OVERSCAN;
        let shown = if scroll_top.get() == 0.0 {
            shown.max(FIRST_WINDOW)
        } else {
            shown
        };
        let last = (first + shown).min(rows.len());
        let first = first.min(last);
        rows[first..last]
            .iter()
            .enumerate()
            .map(|(k, &i)| (first + k, i))
            .collect::<Vec<(usize, u32)>>()
    });

    let scroller = NodeRef::<leptos::html::Div>::new();
    // Bring the selected span into view when the page opens on it (a shared link).
    {
        let t = trace.clone();
        Effect::new(move |_| {
            let Some(el) = scroller.get() else { return };
            set_viewport.set(f64::from(el.client_height()).max(ROW_HEIGHT));
            if let Some(sel) = selected.get_untracked()
                && let Some(idx) = t.index_of(&sel)
                && let Some(pos) = visible
                    .get_untracked()
                    .iter()
                    .position(|&r| r as usize == idx)
            {
                let top = (pos as f64 * ROW_HEIGHT - f64::from(el.client_height()) / 3.0).max(0.0);
                el.set_scroll_top(top as i32);
                set_scroll_top.set(top);
            }
        });
    }

    let root = trace.spans.first().cloned();
    let trace_id = trace.trace_id.clone();
    let title = root
        .as_ref()
        .map(|r| format!("{}: {}", trace.service_of(r), r.name))
        .unwrap_or_else(|| "empty trace".into());
    let services = trace
        .services
        .iter()
        .map(|s| view! { <span class="chip" style:border-color=service_colour(s)>{s.clone()}</span> })
        .collect_view();
    let duration = trace.duration_ns;
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|k| {
            let frac = k as f64 / 4.0;
            (frac * 100.0, format::duration(duration as f64 * frac))
        })
        .collect();
    let total_rows = move || visible.read().len();

    let t_rows = trace.clone();
    let lbs = logs_by_span.clone();
    let tid = trace_id.clone();
    let row_view = move |(pos, idx): (usize, u32)| {
        let t = t_rows.clone();
        let row = &t.spans[idx as usize];
        let q = query.read_untracked();
        let span_id = row.span_id.clone();
        let service = t.service_of(row).to_string();
        let colour = service_colour(&service);
        let is_collapsed = collapsed_ids.read_untracked().contains(&span_id);
        let toggle = if row.has_children(idx as usize) {
            let mut ids = collapsed_ids.get_untracked();
            if is_collapsed {
                ids.retain(|s| s != &span_id);
            } else {
                ids.push(span_id.clone());
            }
            let next = (!ids.is_empty()).then(|| ids.join(","));
            let children = row.subtree_end as usize - idx as usize - 1;
            view! {
                <a class="toggle" href=href(&tid, &q, &[("collapsed", next)]) title=format!("{} descendants", children)
                    aria-label={if is_collapsed { "expand" } else { "collapse" }}>
                    {if is_collapsed { "▸" } else { "▾" }}
                </a>
            }
            .into_any()
        } else {
            view! { <span class="toggle"></span> }.into_any()
        };
        let left = row.offset_ns as f64 / duration.max(1) as f64 * 100.0;
        let width = (row.duration_ns as f64 / duration.max(1) as f64 * 100.0).max(0.15);
        let log_count = lbs.get(&span_id).copied().unwrap_or(0);
        let select_href = href(&tid, &q, &[("span", Some(span_id.clone()))]);
        let sid = span_id.clone();
        let sid2 = span_id.clone();
        let is_error = row.status == Status::Error;
        let is_critical = row.critical;
        let label_right = left + width < 70.0;
        view! {
            <div class="wf-row" style:top=format!("{}px", pos as f64 * ROW_HEIGHT)
                class:selected=move || selected.read().as_deref() == Some(sid.as_str())
                class:match=move || matches.read().contains(&idx)
                class:dim=move || !find.read().is_empty() && !matches.read().contains(&idx)
                data-span-id=span_id.clone()>
                <div class="wf-name" style:padding-left=format!("{}px", 4 + row.depth.min(40) * 14)>
                    {toggle}
                    <a class="span-link" href=select_href>
                        <span class="svc" style:color=colour.clone()>{service}</span>
                        " "
                        <span class="op">{row.name.clone()}</span>
                    </a>
                    {is_error.then(|| view! { <span class="err-mark" title="error status">"!"</span> })}
                    {(log_count > 0).then(|| view! { <span class="log-mark" title="logs of this span">{log_count} " logs"</span> })}
                </div>
                <div class="wf-time">
                    <div class="wf-bar" style:left=format!("{left:.3}%") style:width=format!("{width:.3}%")
                        style:background=colour
                        class:error=is_error
                        class:critical=move || critical.get() && is_critical
                        class:off-path=move || critical.get() && !is_critical></div>
                    <span class="wf-dur" class:inside=!label_right
                        style:left=label_right.then(|| format!("{:.3}%", left + width))
                        style:right=(!label_right).then(|| format!("{:.3}%", (100.0 - left - width).max(0.0)))>
                        {format::duration(row.duration_ns as f64)}
                    </span>
                </div>
                <span class="sr-only">{sid2}</span>
            </div>
        }
    };

    let tid = trace_id.clone();
    let toolbar = move || {
        let q = query.get();
        let crit = critical.get();
        let any_collapsed = !collapsed_ids.read().is_empty();
        let selected_span = q.get("span");
        let find_text = param(&q, "find");
        let critical_href = href(&tid, &q, &[("critical", (!crit).then(|| "1".to_string()))]);
        let expand_href = href(&tid, &q, &[("collapsed", None)]);
        view! {
            <div class="toolbar">
                <Form method="GET" action=format!("/traces/{tid}")>
                    {selected_span.map(|s| view! { <input type="hidden" name="span" value=s/> })}
                    {crit.then(|| view! { <input type="hidden" name="critical" value="1"/> })}
                    <input name="find" value=find_text placeholder="Find in trace: name, service, key=value" size="36" aria-label="Find in trace"/>
                    <button type="submit">"Find"</button>
                </Form>
                {move || {
                    let n = matches.read().len();
                    (!find.read().is_empty()).then(|| view! { <span class="match-count">{n} " matching spans"</span> })
                }}
                <a class="button" class:on=crit href=critical_href>
                    {if crit { "Critical path: on" } else { "Critical path: off" }}
                </a>
                <a class="button" href=expand_href class:disabled=!any_collapsed>"Expand all"</a>
                <a class="button" href=format!("/logs?trace_id={tid}")>"Logs of this trace"</a>
                <a class="button" href=format!("/api/v1/traces/{tid}") rel="external" download=format!("trace-{tid}.json")>"JSON"</a>
            </div>
        }
    };

    let t_detail = trace.clone();
    let logs_detail = logs.clone();
    let tid = trace_id.clone();
    let detail = move || {
        let sel = selected.get()?;
        let idx = t_detail.index_of(&sel);
        let q = query.read_untracked();
        let close = href(&tid, &q, &[("span", None)]);
        Some(match idx {
            Some(i) => view! {
                <SpanDetail trace=t_detail.clone() index=i logs=logs_detail.clone() close_href=close/>
            }
            .into_any(),
            None => view! {
                <aside class="detail"><a class="close" href=close>"×"</a><p>"Span " {sel} " is not in this trace."</p></aside>
            }
            .into_any(),
        })
    };

    let tid = trace_id.clone();
    let trace_logs = {
        let logs = logs.clone();
        move || {
            let q = query.read_untracked();
            if logs.is_empty() {
                return view! { <Empty message="No logs carry this trace id."/> }.into_any();
            }
            logs.iter()
                .map(|l| {
                    let link = (!l.span_id.is_empty()).then(|| {
                        view! { <a class="mono" href=href(&tid, &q, &[("span", Some(l.span_id.clone()))])>{l.span_id.clone()}</a> }
                    });
                    view! {
                        <li class=format!("log {}", severity_class(l.severity_number))>
                            <Time unix_ns=l.time_unix_nano/>
                            <span class="sev">{l.severity_text.clone()}</span>
                            <span class="svc" style:color=service_colour(&l.service_name)>{l.service_name.clone()}</span>
                            <span class="body">{l.body_text()}</span>
                            {link}
                        </li>
                    }
                })
                .collect_view()
                .into_any()
        }
    };

    view! {
        <header class="trace-head">
            <h1>{title}</h1>
            <div class="facts">
                <span class="mono trace-id">{trace_id.clone()}</span>
                <span>"Started " <Time unix_ns=trace.start_unix_ns/></span>
                <span>"Duration " <strong>{format::duration(duration as f64)}</strong></span>
                <span><strong>{trace.spans.len()}</strong> " spans"</span>
                <span class:errors={trace.error_count > 0}><strong>{trace.error_count}</strong> " errors"</span>
                <span>{logs.len()} " logs"</span>
            </div>
            <div class="services">{services}</div>
        </header>
        {toolbar}
        <div class="trace-layout">
            <div class="waterfall" role="tree" aria-label="Spans">
                <div class="wf-axis">
                    <div class="wf-name">"Service: operation"</div>
                    <div class="wf-time">
                        {ticks.into_iter().map(|(pct, label)| view! {
                            <span class="tick" style:left=format!("{pct}%")>{label}</span>
                        }).collect_view()}
                    </div>
                </div>
                <div class="wf-scroll" node_ref=scroller
                    on:scroll=move |ev| {
                        let el = event_target::<leptos::web_sys::Element>(&ev);
                        set_scroll_top.set(f64::from(el.scroll_top()));
                        set_viewport.set(f64::from(el.client_height()));
                    }>
                    <div class="wf-rows" style:height=move || format!("{}px", total_rows() as f64 * ROW_HEIGHT)>
                        <For each=move || window.get() key=|pair| *pair children=row_view/>
                    </div>
                </div>
                <p class="hint">{move || format!("{} of {} spans shown", total_rows(), trace.spans.len())}</p>
            </div>
            {detail}
        </div>
        <h2>"Logs of this trace"</h2>
        <ul class="log-list">{trace_logs}</ul>
    }
}

fn kv_table(rows: &[(String, String)]) -> AnyView {
    if rows.is_empty() {
        return view! { <p class="muted">"none"</p> }.into_any();
    }
    view! {
        <table class="kv">
            <tbody>
                {rows.iter().map(|(k, v)| view! { <tr><th>{k.clone()}</th><td>{v.clone()}</td></tr> }).collect_view()}
            </tbody>
        </table>
    }
    .into_any()
}

#[component]
fn SpanDetail(
    trace: Arc<TraceView>,
    index: usize,
    logs: Arc<Vec<LogRecord>>,
    close_href: String,
) -> impl IntoView {
    let row: &SpanRow = &trace.spans[index];
    let service = trace.service_of(row).to_string();
    let resource = trace
        .resources
        .get(row.resource as usize)
        .cloned()
        .unwrap_or_default();
    let parent = row
        .parent
        .and_then(|p| trace.spans.get(p as usize))
        .map(|p| p.span_id.clone())
        .or_else(|| row.missing_parent.clone());
    let status = match row.status {
        Status::Error => "ERROR",
        Status::Ok => "OK",
        Status::Unset => "UNSET",
    };
    let events = row
        .events
        .iter()
        .map(|e| {
            view! {
                <li>
                    <span class="mono">"+" {format::duration((e.offset_ns - row.offset_ns) as f64)}</span>
                    " " <strong>{e.name.clone()}</strong>
                    {kv_table(&e.attributes)}
                </li>
            }
        })
        .collect_view();
    let links = row
        .links
        .iter()
        .map(|l| {
            view! {
                <li>
                    <a class="mono" href=format!("/traces/{}?span={}", l.trace_id, l.span_id)>{format!("{} / {}", l.trace_id, l.span_id)}</a>
                    {kv_table(&l.attributes)}
                </li>
            }
        })
        .collect_view();
    let span_logs = logs
        .iter()
        .filter(|l| l.span_id == row.span_id)
        .map(|l| {
            view! {
                <li class=format!("log {}", severity_class(l.severity_number))>
                    <Time unix_ns=l.time_unix_nano/> " "
                    <span class="sev">{l.severity_text.clone()}</span> " "
                    <span class="body">{l.body_text()}</span>
                </li>
            }
        })
        .collect_view();
    view! {
        <aside class="detail" aria-label="Span detail">
            <a class="close" href=close_href title="Close">"×"</a>
            <h2><span class="svc" style:color=service_colour(&service)>{service.clone()}</span> " " {row.name.clone()}</h2>
            <table class="kv facts">
                <tbody>
                    <tr><th>"Span id"</th><td class="mono">{row.span_id.clone()}</td></tr>
                    <tr><th>"Parent"</th><td class="mono">{parent.unwrap_or_else(|| "none (root)".into())}</td></tr>
                    <tr><th>"Kind"</th><td>{row.kind.clone()}</td></tr>
                    <tr><th>"Status"</th><td class:error={row.status == Status::Error}>{status} " " {row.status_message.clone()}</td></tr>
                    <tr><th>"Start"</th><td><Time unix_ns=trace.start_unix_ns + row.offset_ns/> " (+" {format::duration(row.offset_ns as f64)} ")"</td></tr>
                    <tr><th>"Duration"</th><td>{format::duration(row.duration_ns as f64)}</td></tr>
                    <tr><th>"Scope"</th><td>{row.scope.clone()}</td></tr>
                    <tr><th>"Critical path"</th><td>{if row.critical { "yes" } else { "no" }}</td></tr>
                </tbody>
            </table>
            <h3>"Attributes"</h3>
            {kv_table(&row.attributes)}
            <h3>"Events"</h3>
            {if row.events.is_empty() { view! { <p class="muted">"none"</p> }.into_any() } else { view! { <ul class="events">{events}</ul> }.into_any() }}
            <h3>"Links"</h3>
            {if row.links.is_empty() { view! { <p class="muted">"none"</p> }.into_any() } else { view! { <ul class="links">{links}</ul> }.into_any() }}
            <h3>"Logs"</h3>
            <ul class="log-list compact">{span_logs}</ul>
            <h3>"Resource"</h3>
            {kv_table(&resource)}
        </aside>
    }
}
