//! Metrics for charts: `GET /api/v1/metrics/query?name=&filters=&group_by=&step=&agg=`, plus
//! metric names and label keys for autocompletion.
//!
//! Points are read with SQL; rates, increases and histogram percentiles are computed here per
//! series (one series = one metric stream: service and attribute set), then aggregated per time
//! bucket and group. These computations are plain functions with unit tests.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::params::{parse_duration_ns, parse_tags, sql_str, sql_time};
use super::window::{Window, WindowParams};
use crate::QueryError;
use crate::format::to_objects;
use crate::http::{ApiQuery, ApiState, bad_request, error_response};
use oxeye_model::Signal;
use oxeye_store::index::SERIES_SEPARATOR;

/// What kind of metric the points are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// A sum that only grows (a counter); `cumulative` when each point is a running total.
    Counter {
        cumulative: bool,
    },
    /// A sum that goes up and down.
    UpDown,
    Histogram {
        cumulative: bool,
    },
}

/// How points become one value per bucket and group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agg {
    Avg,
    Sum,
    Min,
    Max,
    Count,
    Last,
    /// Per-second increase of a counter (or of a histogram's count).
    Rate,
    /// Increase of a counter over the bucket.
    Increase,
    /// A histogram percentile (0..1).
    Quantile(f64),
}

impl Agg {
    pub fn parse(text: &str) -> Option<Agg> {
        Some(match text.to_ascii_lowercase().as_str() {
            "avg" | "mean" => Agg::Avg,
            "sum" => Agg::Sum,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "count" => Agg::Count,
            "last" => Agg::Last,
            "rate" => Agg::Rate,
            "increase" => Agg::Increase,
            p if p.starts_with('p') => {
                let q: f64 = p[1..].parse().ok()?;
                if !(0.0..=100.0).contains(&q) {
                    return None;
                }
                Agg::Quantile(q / 100.0)
            }
            _ => return None,
        })
    }
}

/// One point of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub time: i64,
    pub value: f64,
    /// Histogram bucket counts (empty for numbers).
    pub buckets: Vec<f64>,
    pub bounds: Vec<f64>,
}

/// What each point contributes to its bucket once temporality is dealt with: an increase
/// (counters, histograms) or a level (gauges).
fn contributions(kind: Kind, points: &[Point]) -> Vec<Point> {
    let cumulative = match kind {
        Kind::Counter { cumulative } | Kind::Histogram { cumulative } => cumulative,
        Kind::Gauge | Kind::UpDown => return points.to_vec(),
    };
    if !cumulative {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(points.len());
    for w in points.windows(2) {
        let (prev, cur) = (&w[0], &w[1]);
        // A running total that went down was reset: the new total is the increase.
        let reset = cur.value < prev.value || cur.buckets.len() != prev.buckets.len();
        let value = if reset {
            cur.value
        } else {
            cur.value - prev.value
        };
        let buckets = if reset {
            cur.buckets.clone()
        } else {
            cur.buckets
                .iter()
                .zip(&prev.buckets)
                .map(|(c, p)| (c - p).max(0.0))
                .collect()
        };
        out.push(Point {
            time: cur.time,
            value,
            buckets,
            bounds: cur.bounds.clone(),
        });
    }
    out
}

/// The `q` quantile of a histogram with explicit bounds (linear within the bucket).
pub fn histogram_quantile(q: f64, buckets: &[f64], bounds: &[f64]) -> Option<f64> {
    let total: f64 = buckets.iter().sum();
    if total <= 0.0 || buckets.is_empty() {
        return None;
    }
    let rank = q * total;
    let mut seen = 0.0;
    for (i, count) in buckets.iter().enumerate() {
        if seen + count >= rank && *count > 0.0 {
            let lower = if i == 0 {
                bounds.first().map(|b| b.min(0.0)).unwrap_or(0.0)
            } else {
                bounds[i - 1]
            };
            let upper = match bounds.get(i) {
                Some(u) => *u,
                // The overflow bucket has no upper bound: report its lower edge.
                None => return Some(lower),
            };
            return Some(lower + (upper - lower) * ((rank - seen) / count));
        }
        seen += count;
    }
    bounds.last().copied()
}

/// Buckets `[start + k*step, ...)`: one value per bucket for a group's series.
pub fn aggregate(
    kind: Kind,
    agg: Agg,
    series: &[Vec<Point>],
    window: &Window,
    step: i64,
) -> Vec<(i64, f64)> {
    let step = step.max(1);
    let slot = |t: i64| ((t - window.start).div_euclid(step)) as usize;
    let slots = ((window.end - window.start).max(0) / step + 1) as usize;
    // Per slot: values from each series, or summed buckets for histograms.
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); slots];
    let mut hist: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); slots];
    for points in series {
        let contrib = contributions(kind, points);
        // Per series, per slot: the series' own figure first.
        let mut per_slot: BTreeMap<usize, Vec<&Point>> = BTreeMap::new();
        for p in contrib
            .iter()
            .filter(|p| p.time >= window.start && p.time <= window.end)
        {
            per_slot.entry(slot(p.time)).or_default().push(p);
        }
        for (s, ps) in per_slot {
            if s >= slots {
                continue;
            }
            match (kind, agg) {
                (Kind::Histogram { .. }, Agg::Quantile(_)) => {
                    for p in ps {
                        let (b, bounds) = &mut hist[s];
                        if b.len() < p.buckets.len() {
                            b.resize(p.buckets.len(), 0.0);
                            *bounds = p.bounds.clone();
                        }
                        for (acc, c) in b.iter_mut().zip(&p.buckets) {
                            *acc += c;
                        }
                    }
                }
                (Kind::Counter { .. } | Kind::Histogram { .. }, Agg::Rate) => {
                    values[s].push(ps.iter().map(|p| p.value).sum::<f64>() / (step as f64 / 1e9))
                }
                (Kind::Counter { .. } | Kind::Histogram { .. }, Agg::Increase) => {
                    values[s].push(ps.iter().map(|p| p.value).sum())
                }
                // Levels: the series' last value in the bucket.
                _ => values[s].extend(ps.last().map(|p| p.value)),
            }
        }
    }
    let mut out = Vec::new();
    for s in 0..slots {
        let t = window.start + s as i64 * step;
        let v = match agg {
            Agg::Quantile(q) => histogram_quantile(q, &hist[s].0, &hist[s].1),
            _ => {
                let vs = &values[s];
                if vs.is_empty() {
                    None
                } else {
                    Some(match agg {
                        Agg::Avg => vs.iter().sum::<f64>() / vs.len() as f64,
                        Agg::Min => vs.iter().copied().fold(f64::INFINITY, f64::min),
                        Agg::Max => vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        Agg::Count => vs.len() as f64,
                        Agg::Last => vs[vs.len() - 1],
                        // Rates, increases and sums add up across series.
                        Agg::Sum | Agg::Rate | Agg::Increase | Agg::Quantile(_) => vs.iter().sum(),
                    })
                }
            }
        };
        if let Some(v) = v.filter(|v| v.is_finite()) {
            out.push((t, v));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
pub struct MetricParams {
    name: String,
    filters: Option<String>,
    group_by: Option<String>,
    step: Option<String>,
    agg: Option<String>,
    #[serde(flatten)]
    window: WindowParams,
}

fn label_condition(key: &str, value: &str) -> String {
    match key {
        "service_name" | "service.name" => format!("service_name = {}", sql_str(value)),
        _ => format!(
            "(attributes[{k}] = {v} OR resource_attributes[{k}] = {v})",
            k = sql_str(key),
            v = sql_str(value)
        ),
    }
}

fn label_value(row: &Map<String, Value>, key: &str) -> String {
    if key == "service_name" || key == "service.name" {
        return row
            .get("service_name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
    }
    for col in ["attributes", "resource_attributes"] {
        if let Some(v) = row
            .get(col)
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
        {
            return v.to_string();
        }
    }
    String::new()
}

fn floats(v: Option<&Value>) -> Vec<f64> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

pub async fn query_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<MetricParams>,
) -> Response {
    let window = match p.window.resolve(3600) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let filters = match parse_tags(p.filters.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    let group_by: Vec<String> = p
        .group_by
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let step = match p.step.as_deref() {
        Some(s) => match parse_duration_ns(s) {
            Some(n) if n > 0 => n,
            _ => return bad_request(format!("step `{s}` is not a positive duration like 1m")),
        },
        None => ((window.end - window.start) / 60).max(1_000_000_000),
    };
    match run_query(
        &state,
        &p.name,
        &filters,
        &group_by,
        step,
        p.agg.as_deref(),
        &window,
    )
    .await
    {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

async fn run_query(
    state: &ApiState,
    name: &str,
    filters: &[(String, String)],
    group_by: &[String],
    step: i64,
    agg: Option<&str>,
    window: &Window,
) -> Result<Value, QueryError> {
    let invalid = |message: String| QueryError::Invalid {
        message,
        position: None,
    };
    let mut conds = vec![
        format!("name = {}", sql_str(name)),
        format!("time >= {}", sql_time(window.start)),
        format!("time <= {}", sql_time(window.end)),
    ];
    conds.extend(filters.iter().map(|(k, v)| label_condition(k, v)));
    let conds = conds.join(" AND ");
    // Which table holds the metric, and what kind it is.
    let probe = state
        .engine
        .sql_limited(
            &format!(
                "SELECT type, is_monotonic, temporality, unit FROM metrics WHERE {conds} LIMIT 1"
            ),
            1,
        )
        .await?;
    let probe = to_objects(&probe).map_err(|e| QueryError::Internal(e.to_string()))?;
    let (kind, table, unit) = if let Some(r) = probe.first() {
        let cumulative = r.get("temporality").and_then(Value::as_str) == Some("cumulative");
        let kind = match (
            r.get("type").and_then(Value::as_str),
            r.get("is_monotonic").and_then(Value::as_bool),
        ) {
            (Some("sum"), Some(true)) => Kind::Counter { cumulative },
            (Some("sum"), _) => Kind::UpDown,
            _ => Kind::Gauge,
        };
        (
            kind,
            "metrics",
            r.get("unit").cloned().unwrap_or(Value::Null),
        )
    } else {
        let probe = state
            .engine
            .sql_limited(
                &format!("SELECT temporality, unit FROM histograms WHERE {conds} LIMIT 1"),
                1,
            )
            .await?;
        let probe = to_objects(&probe).map_err(|e| QueryError::Internal(e.to_string()))?;
        match probe.first() {
            Some(r) => (
                Kind::Histogram {
                    cumulative: r.get("temporality").and_then(Value::as_str) == Some("cumulative"),
                },
                "histograms",
                r.get("unit").cloned().unwrap_or(Value::Null),
            ),
            None => {
                return Ok(json!({"name": name, "type": null, "step_ns": step, "series": []}));
            }
        }
    };
    let agg = match agg {
        Some(a) => Agg::parse(a).ok_or_else(|| invalid(format!("agg `{a}` is not one of avg, sum, min, max, count, last, rate, increase, p50, p95, p99")))?,
        None => match kind {
            Kind::Counter { .. } => Agg::Rate,
            Kind::Histogram { .. } => Agg::Quantile(0.95),
            _ => Agg::Avg,
        },
    };
    if matches!(agg, Agg::Quantile(_)) && !matches!(kind, Kind::Histogram { .. }) {
        return Err(invalid("percentiles need a histogram metric".into()));
    }
    let value_col = if table == "histograms" {
        "CAST(count AS DOUBLE) AS value, bucket_counts, explicit_bounds"
    } else {
        "value"
    };
    let sql = format!(
        "SELECT CAST(time AS BIGINT) AS t, service_name, attributes, resource_attributes, {value_col}
         FROM {table} WHERE {conds} ORDER BY t"
    );
    let rows = state
        .engine
        .sql_limited(&sql, state.engine.config().max_result_rows)
        .await?;
    let truncated = rows.truncated;
    let rows = to_objects(&rows).map_err(|e| QueryError::Internal(e.to_string()))?;
    // group -> series -> points
    let mut groups: BTreeMap<Vec<String>, BTreeMap<String, Vec<Point>>> = BTreeMap::new();
    for r in &rows {
        let series = format!(
            "{}|{}|{}",
            r.get("service_name")
                .map(Value::to_string)
                .unwrap_or_default(),
            r.get("attributes")
                .map(Value::to_string)
                .unwrap_or_default(),
            r.get("resource_attributes")
                .map(Value::to_string)
                .unwrap_or_default()
        );
        let group: Vec<String> = group_by.iter().map(|k| label_value(r, k)).collect();
        groups
            .entry(group)
            .or_default()
            .entry(series)
            .or_default()
            .push(Point {
                time: r.get("t").and_then(Value::as_i64).unwrap_or(0),
                value: r.get("value").and_then(Value::as_f64).unwrap_or(f64::NAN),
                buckets: floats(r.get("bucket_counts")),
                bounds: floats(r.get("explicit_bounds")),
            });
    }
    let series: Vec<Value> = groups
        .into_iter()
        .map(|(group, by_series)| {
            let all: Vec<Vec<Point>> = by_series.into_values().collect();
            let points = aggregate(kind, agg, &all, window, step);
            let labels: Map<String, Value> = group_by.iter().cloned().zip(group.into_iter().map(Value::String)).collect();
            json!({"labels": labels, "series_count": all.len(), "points": points.iter().map(|(t, v)| json!([t, v])).collect::<Vec<_>>()})
        })
        .collect();
    let kind_name = match kind {
        Kind::Gauge => "gauge",
        Kind::Counter { .. } => "counter",
        Kind::UpDown => "updown_sum",
        Kind::Histogram { .. } => "histogram",
    };
    Ok(
        json!({"name": name, "type": kind_name, "unit": unit, "agg": format!("{agg:?}"), "step_ns": step, "truncated": truncated, "series": series}),
    )
}

#[derive(Debug, Deserialize)]
pub struct NamesParams {
    prefix: Option<String>,
    #[serde(flatten)]
    window: WindowParams,
}

/// Metric names (for autocompletion), from the segment indexes and unflushed rows.
pub async fn names_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<NamesParams>,
) -> Response {
    let window = match p.window.resolve(86_400) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let prefix = p.prefix.unwrap_or_default().to_lowercase();
    let mut names: BTreeMap<String, &'static str> = BTreeMap::new();
    for (signal, kind) in [
        (Signal::Metrics, "number"),
        (Signal::Histograms, "histogram"),
    ] {
        match state
            .engine
            .store()
            .series(signal, "", Some(window.start), Some(window.end))
            .await
        {
            Ok(terms) => {
                for t in terms {
                    if let Some((_, name)) = t.split_once(SERIES_SEPARATOR)
                        && name.to_lowercase().contains(&prefix)
                    {
                        names.insert(name.to_string(), kind);
                    }
                }
            }
            Err(e) => return error_response(&QueryError::Internal(e.to_string())),
        }
    }
    axum::Json(json!({"metrics": names.into_iter().map(|(n, k)| json!({"name": n, "kind": k})).collect::<Vec<_>>()})).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LabelParams {
    name: String,
    #[serde(flatten)]
    window: WindowParams,
}

/// Label keys of a metric: `service_name` and its attribute keys.
pub async fn labels_handler(
    State(state): State<ApiState>,
    ApiQuery(p): ApiQuery<LabelParams>,
) -> Response {
    let window = match p.window.resolve(3600) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let mut keys = vec!["service_name".to_string()];
    for table in ["metrics", "histograms"] {
        let sql = format!(
            "SELECT DISTINCT k FROM (SELECT unnest(map_keys(attributes)) AS k FROM {table}
             WHERE name = {} AND time >= {} AND time <= {}) ORDER BY k",
            sql_str(&p.name),
            sql_time(window.start),
            sql_time(window.end)
        );
        match state
            .engine
            .sql_limited(&sql, 1000)
            .await
            .and_then(|r| to_objects(&r).map_err(|e| QueryError::Internal(e.to_string())))
        {
            Ok(rows) => keys.extend(
                rows.iter()
                    .filter_map(|r| r.get("k").and_then(Value::as_str).map(str::to_string)),
            ),
            Err(e) => return error_response(&e),
        }
    }
    keys.dedup();
    axum::Json(json!({"name": p.name, "labels": keys})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: i64, v: f64) -> Point {
        Point {
            time: t,
            value: v,
            buckets: vec![],
            bounds: vec![],
        }
    }

    const S: i64 = 1_000_000_000;

    #[test]
    fn counter_rate_survives_resets() {
        let w = Window {
            start: 0,
            end: 60 * S,
        };
        // 10/s, then a restart at t=30 (back to 5), then 10/s again.
        let pts: Vec<Point> = vec![
            p(0, 0.0),
            p(10 * S, 100.0),
            p(20 * S, 200.0),
            p(30 * S, 5.0),
            p(40 * S, 105.0),
        ];
        let out = aggregate(
            Kind::Counter { cumulative: true },
            Agg::Increase,
            std::slice::from_ref(&pts),
            &w,
            20 * S,
        );
        assert_eq!(out, vec![(0, 100.0), (20 * S, 105.0), (40 * S, 100.0)]);
        let rate = aggregate(
            Kind::Counter { cumulative: true },
            Agg::Rate,
            &[pts],
            &w,
            20 * S,
        );
        assert_eq!(rate[0], (0, 5.0));
    }

    #[test]
    fn rates_add_across_series_and_gauges_average() {
        let w = Window {
            start: 0,
            end: 10 * S,
        };
        let a = vec![p(0, 0.0), p(5 * S, 10.0)];
        let b = vec![p(0, 0.0), p(5 * S, 30.0)];
        let out = aggregate(
            Kind::Counter { cumulative: true },
            Agg::Increase,
            &[a.clone(), b.clone()],
            &w,
            10 * S,
        );
        assert_eq!(out, vec![(0, 40.0)]);
        let out = aggregate(Kind::Gauge, Agg::Avg, &[a, b], &w, 10 * S);
        assert_eq!(out, vec![(0, 20.0)]);
    }

    #[test]
    fn histogram_percentiles_from_cumulative_buckets() {
        let bounds = vec![10.0, 100.0];
        let h = |t, b: Vec<f64>| Point {
            time: t,
            value: b.iter().sum(),
            buckets: b,
            bounds: bounds.clone(),
        };
        let w = Window {
            start: 0,
            end: 10 * S,
        };
        // Between the points: 80 in [0,10), 20 in [10,100).
        let pts = vec![h(0, vec![0.0, 0.0, 0.0]), h(5 * S, vec![80.0, 20.0, 0.0])];
        let out = aggregate(
            Kind::Histogram { cumulative: true },
            Agg::Quantile(0.5),
            std::slice::from_ref(&pts),
            &w,
            10 * S,
        );
        assert!((out[0].1 - 6.25).abs() < 1e-9, "{out:?}");
        let out = aggregate(
            Kind::Histogram { cumulative: true },
            Agg::Quantile(0.9),
            &[pts],
            &w,
            10 * S,
        );
        assert!((out[0].1 - 55.0).abs() < 1e-9, "{out:?}");
        assert_eq!(
            histogram_quantile(0.5, &[0.0, 0.0, 4.0], &bounds),
            Some(100.0)
        );
        assert_eq!(histogram_quantile(0.5, &[], &bounds), None);
    }

    #[test]
    fn aggs_parse() {
        assert_eq!(Agg::parse("p99"), Some(Agg::Quantile(0.99)));
        assert_eq!(Agg::parse("rate"), Some(Agg::Rate));
        assert_eq!(Agg::parse("p101"), None);
        assert_eq!(Agg::parse("median"), None);
    }
}
