//! Pieces every page uses: loading, empty and error states, times in the reader's zone, the
//! SVG charts, and URL query helpers.

use leptos::prelude::*;
use leptos_router::params::ParamsMap;

use crate::format::{self, Clock};
use crate::scale::{Scale, nice_ticks, time_ticks, y_max};

/// The clock the page renders times with: UTC until hydrated, then the browser's zone.
pub fn use_clock() -> ReadSignal<Clock> {
    use_context::<ReadSignal<Clock>>().unwrap_or_else(|| signal(Clock::Utc).0)
}

/// A query parameter of the current URL, or "".
pub fn param(query: &ParamsMap, key: &str) -> String {
    query.get(key).unwrap_or_default()
}

/// The current query with some parameters replaced (`Some`) or removed (`None`).
pub fn query_with(query: &ParamsMap, changes: &[(&str, Option<String>)]) -> String {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in query.clone().into_iter() {
        if changes.iter().any(|(c, _)| *c == k.as_ref()) {
            continue;
        }
        pairs.push((k.to_string(), v));
    }
    for (k, v) in changes {
        if let Some(v) = v {
            pairs.push((k.to_string(), v.clone()));
        }
    }
    crate::api::query_string(pairs.iter().map(|(k, v)| (k.as_str(), v.clone())))
}

/// `value`, or `default` when it is empty.
pub fn or_default(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value
    }
}

/// The URL's time window as API parameters: `lookback` (1h when neither it nor `start` is
/// given), `start`, `end`.
pub fn window_pairs(q: &ParamsMap) -> Vec<(&'static str, String)> {
    let lookback = param(q, "lookback");
    let lookback = if param(q, "start").is_empty() {
        or_default(lookback, "1h")
    } else {
        lookback
    };
    vec![
        ("lookback", lookback),
        ("start", param(q, "start")),
        ("end", param(q, "end")),
    ]
}

#[component]
pub fn Loading(#[prop(into)] what: String) -> impl IntoView {
    view! { <div class="state loading" role="status">"Loading " {what} "…"</div> }
}

#[component]
pub fn ErrorBox(#[prop(into)] message: String) -> impl IntoView {
    view! {
        <div class="state error" role="alert">
            <strong>"The query failed: "</strong>
            <span class="message">{message}</span>
        </div>
    }
}

#[component]
pub fn Empty(#[prop(into)] message: String) -> impl IntoView {
    view! { <div class="state empty">{message}</div> }
}

/// A wall-clock time, in UTC on the server and in the reader's zone once hydrated.
#[component]
pub fn Time(unix_ns: i64) -> impl IntoView {
    let clock = use_clock();
    view! {
        <time datetime=format::rfc3339(unix_ns) title=move || format::date_time_zone(unix_ns, clock.get())>
            {move || format::date_time(unix_ns, clock.get())}
        </time>
    }
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub colour: String,
    pub points: Vec<(i64, f64)>,
}

pub const PALETTE: [&str; 10] = [
    "#3b82f6", "#ef4444", "#10b981", "#f59e0b", "#8b5cf6", "#ec4899", "#14b8a6", "#f97316",
    "#6366f1", "#84cc16",
];

pub fn palette(i: usize) -> String {
    PALETTE[i % PALETTE.len()].to_string()
}

const W: f64 = 1100.0;
const PAD_L: f64 = 64.0;
const PAD_R: f64 = 12.0;
const PAD_T: f64 = 10.0;
const PAD_B: f64 = 24.0;

/// A time-series line chart with time and value axes and a legend.
/// What the grid and the labels of a time chart need.
struct Axes {
    x: Scale,
    y: Scale,
    height: f64,
    y_ticks: Vec<f64>,
    x_ticks: Vec<i64>,
    y_label: fn(f64) -> String,
    clock: ReadSignal<Clock>,
}

/// Horizontal grid lines with value labels, and time labels along the bottom: the part every
/// time chart shares.
fn axes(a: Axes) -> impl IntoView {
    let Axes {
        x,
        y,
        height,
        y_ticks,
        x_ticks,
        y_label,
        clock,
    } = a;
    view! {
        {y_ticks
            .into_iter()
            .map(|v| {
                let py = y.map(v);
                view! {
                    <line x1=PAD_L.to_string() x2=(W - PAD_R).to_string() y1=py.to_string() y2=py.to_string() class="grid"/>
                    <text x=(PAD_L - 6.0).to_string() y=(py + 4.0).to_string() text-anchor="end" class="axis">{y_label(v)}</text>
                }
            })
            .collect_view()}
        {x_ticks
            .into_iter()
            .map(|t| {
                let px = x.map(t as f64);
                view! {
                    <text x=px.to_string() y=(height - 6.0).to_string() text-anchor="middle" class="axis">
                        {move || format::clock_time(t, clock.get())}
                    </text>
                }
            })
            .collect_view()}
    }
}

#[component]
pub fn LineChart(
    series: Vec<Series>,
    #[prop(into)] title: String,
    /// Formats values on the y axis and in tooltips.
    format_value: fn(f64) -> String,
    #[prop(default = 200.0)] height: f64,
    /// The x range to draw; the data's own range when `None`.
    #[prop(optional)]
    range: Option<(i64, i64)>,
) -> impl IntoView {
    let clock = use_clock();
    let all_t = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (t0, t1) = range.unwrap_or_else(|| {
        let mut lo = i64::MAX;
        let mut hi = i64::MIN;
        for t in all_t {
            lo = lo.min(t);
            hi = hi.max(t);
        }
        if lo > hi { (0, 1) } else { (lo, hi) }
    });
    let ymax = y_max(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let x = Scale::new((t0 as f64, t1 as f64), (PAD_L, W - PAD_R));
    let y = Scale::new((0.0, ymax), (height - PAD_B, PAD_T));
    let y_ticks = nice_ticks(0.0, ymax, 4);
    let x_ticks = time_ticks(t0, t1, 6);
    let empty = series.iter().all(|s| s.points.is_empty());
    let lines = series
        .iter()
        .map(|s| {
            let points = s
                .points
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x.map(*t as f64), y.map(*v)))
                .collect::<Vec<_>>()
                .join(" ");
            let dots = if s.points.len() <= 60 {
                s.points
                    .iter()
                    .map(|(t, v)| {
                        let tip = format!("{}: {}", s.label, format_value(*v));
                        let t = *t;
                        view! {
                            <circle cx=format!("{:.1}", x.map(t as f64)) cy=format!("{:.1}", y.map(*v)) r="2.5" fill=s.colour.clone()>
                                <title>{move || format!("{} {}", format::clock_time(t, clock.get()), tip.clone())}</title>
                            </circle>
                        }
                    })
                    .collect_view()
                    .into_any()
            } else {
                ().into_any()
            };
            view! {
                <g class="series">
                    <polyline points=points fill="none" stroke=s.colour.clone() stroke-width="1.6"/>
                    {dots}
                </g>
            }
        })
        .collect_view();
    let legend = series
        .iter()
        .map(|s| {
            view! {
                <li><span class="swatch" style:background=s.colour.clone()></span>{s.label.clone()}</li>
            }
        })
        .collect_view();
    view! {
        <figure class="chart">
            <figcaption>{title}</figcaption>
            <svg viewBox=format!("0 0 {W} {height}") width="100%" role="img">
                {axes(Axes { x, y, height, y_ticks, x_ticks, y_label: format_value, clock })}
                {lines}
                {empty.then(|| view! {
                    <text x=(W / 2.0).to_string() y=(height / 2.0).to_string() text-anchor="middle" class="axis">"no data in this range"</text>
                })}
            </svg>
            <ul class="legend">{legend}</ul>
        </figure>
    }
}

/// Stacked bars over time (counts per bucket and category), e.g. logs per minute by severity.
#[component]
pub fn StackedBars(
    /// (bucket start, category, count)
    buckets: Vec<(i64, String, f64)>,
    step_ns: i64,
    categories: Vec<(String, String)>,
    #[prop(into)] title: String,
    #[prop(default = 140.0)] height: f64,
) -> impl IntoView {
    let clock = use_clock();
    let mut starts: Vec<i64> = buckets.iter().map(|b| b.0).collect();
    starts.sort_unstable();
    starts.dedup();
    let t0 = starts.first().copied().unwrap_or(0);
    let t1 = starts.last().copied().unwrap_or(0) + step_ns.max(1);
    let totals: Vec<f64> = starts
        .iter()
        .map(|s| buckets.iter().filter(|b| b.0 == *s).map(|b| b.2).sum())
        .collect();
    let ymax = y_max(totals.iter().copied());
    let x = Scale::new((t0 as f64, t1 as f64), (PAD_L, W - PAD_R));
    let y = Scale::new((0.0, ymax), (height - PAD_B, PAD_T));
    let bar_w = ((x.map((t0 + step_ns.max(1)) as f64) - x.map(t0 as f64)) * 0.85).max(1.0);
    let mut rects = Vec::new();
    for s in &starts {
        let mut base = 0.0;
        for (cat, colour) in &categories {
            let v: f64 = buckets
                .iter()
                .filter(|b| b.0 == *s && &b.1 == cat)
                .map(|b| b.2)
                .sum();
            if v <= 0.0 {
                continue;
            }
            let top = y.map(base + v);
            let bottom = y.map(base);
            base += v;
            let t = *s;
            let tip = format!("{v} {cat}");
            rects.push(view! {
                <rect x=format!("{:.1}", x.map(t as f64)) y=format!("{top:.1}") width=format!("{bar_w:.1}") height=format!("{:.1}", (bottom - top).max(0.5)) fill=colour.clone()>
                    <title>{move || format!("{} {}", format::clock_time(t, clock.get()), tip.clone())}</title>
                </rect>
            });
        }
    }
    let legend = categories
        .iter()
        .map(|(c, colour)| view! { <li><span class="swatch" style:background=colour.clone()></span>{c.clone()}</li> })
        .collect_view();
    view! {
        <figure class="chart">
            <figcaption>{title}</figcaption>
            <svg viewBox=format!("0 0 {W} {height}") width="100%" role="img">
                {axes(Axes {
                    x,
                    y,
                    height,
                    y_ticks: nice_ticks(0.0, ymax, 3),
                    x_ticks: time_ticks(t0, t1, 6),
                    y_label: format::number,
                    clock,
                })}
                {rects}
            </svg>
            <ul class="legend">{legend}</ul>
        </figure>
    }
}

/// Time ranges offered by every page's range picker.
pub const LOOKBACKS: [(&str, &str); 8] = [
    ("5m", "Last 5 minutes"),
    ("15m", "Last 15 minutes"),
    ("1h", "Last hour"),
    ("6h", "Last 6 hours"),
    ("24h", "Last 24 hours"),
    ("7d", "Last 7 days"),
    ("30d", "Last 30 days"),
    ("", "Custom (start/end)"),
];

/// The range picker: a preset lookback, or custom `start` / `end` (RFC 3339 or unix time).
#[component]
pub fn RangePicker(lookback: String, start: String, end: String) -> impl IntoView {
    let custom = !start.is_empty();
    // The API's default range when the URL names none.
    let lookback = if lookback.is_empty() {
        "1h".to_string()
    } else {
        lookback
    };
    let options = LOOKBACKS
        .iter()
        .map(|(v, label)| {
            let selected = if custom { v.is_empty() } else { *v == lookback };
            view! { <option value=*v selected=selected>{*label}</option> }
        })
        .collect_view();
    view! {
        <label>"Range" <select name="lookback">{options}</select></label>
        <label class="custom">"Start" <input name="start" value=start placeholder="2026-11-24T10:00:00Z" size="22"/></label>
        <label class="custom">"End" <input name="end" value=end placeholder="now" size="22"/></label>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_changes_replace_and_remove() {
        let mut q = ParamsMap::new();
        q.insert("a", "1".to_string());
        q.insert("b", "x y".to_string());
        assert_eq!(query_with(&q, &[("a", Some("2".into()))]), "b=x%20y&a=2");
        assert_eq!(query_with(&q, &[("b", None)]), "a=1");
    }
}
