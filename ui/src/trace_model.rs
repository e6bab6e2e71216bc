//! The trace view's model: one trace from `GET /api/v1/traces/{id}` turned into rows in tree
//! order, with the critical path marked.
//!
//! The API repeats each span's resource; a 12,000-span trace is 15 MB of JSON. The view interns
//! resources and services and keeps what the waterfall and the detail panel show, so the server
//! can ship it inside the page for hydration at a fraction of that size.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Span status as the waterfall shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Unset,
    Ok,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    /// Nanoseconds since the trace's start.
    #[serde(rename = "t")]
    pub offset_ns: i64,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanLink {
    pub trace_id: String,
    pub span_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
}

/// One span, in the trace's tree order (parents before children, siblings by start time).
/// Short field names: a 10,000-span trace is shipped inside the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRow {
    #[serde(rename = "id")]
    pub span_id: String,
    /// Index of the parent row; `None` for roots and for spans whose parent is not in the trace.
    #[serde(rename = "p")]
    pub parent: Option<u32>,
    /// The parent span id when the parent is not in the trace (an orphan).
    #[serde(rename = "mp", default, skip_serializing_if = "Option::is_none")]
    pub missing_parent: Option<String>,
    #[serde(rename = "d")]
    pub depth: u32,
    /// Index one past this span's last descendant: rows `i+1..subtree_end` are its subtree.
    #[serde(rename = "e")]
    pub subtree_end: u32,
    #[serde(rename = "s")]
    pub service: u32,
    #[serde(rename = "r")]
    pub resource: u32,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "k")]
    pub kind: String,
    /// Nanoseconds since the trace's start.
    #[serde(rename = "t")]
    pub offset_ns: i64,
    #[serde(rename = "l")]
    pub duration_ns: i64,
    #[serde(rename = "st")]
    pub status: Status,
    #[serde(rename = "sm", default, skip_serializing_if = "String::is_empty")]
    pub status_message: String,
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
    #[serde(rename = "ev", default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<SpanEvent>,
    #[serde(rename = "ln", default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<SpanLink>,
    #[serde(rename = "sc")]
    pub scope: String,
    /// On the critical path: the chain of spans that determined the trace's duration.
    #[serde(rename = "c")]
    pub critical: bool,
}

impl SpanRow {
    pub fn end_ns(&self) -> i64 {
        self.offset_ns + self.duration_ns
    }
    pub fn has_children(&self, index: usize) -> bool {
        self.subtree_end as usize > index + 1
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceView {
    pub trace_id: String,
    pub start_unix_ns: i64,
    pub duration_ns: i64,
    pub services: Vec<String>,
    pub resources: Vec<Vec<(String, String)>>,
    pub spans: Vec<SpanRow>,
    pub error_count: usize,
}

/// Renders an attribute value as text: strings as they are, everything else as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn attribute_list(v: Option<&Value>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), value_text(v))).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Timestamps arrive as numbers or as decimal strings (u64 nanoseconds exceed JSON's safe range).
fn nanos(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

struct RawSpan {
    span_id: String,
    parent_span_id: Option<String>,
    service: u32,
    resource: u32,
    name: String,
    kind: String,
    start: i64,
    duration: i64,
    status: Status,
    status_message: String,
    attributes: Vec<(String, String)>,
    events: Vec<SpanEvent>,
    links: Vec<SpanLink>,
    scope: String,
}

impl TraceView {
    /// Builds the view from the API's trace JSON; `Err` says what is missing.
    pub fn from_api(doc: &Value) -> Result<TraceView, String> {
        let trace_id = doc
            .get("trace_id")
            .and_then(Value::as_str)
            .ok_or("the trace has no trace_id")?
            .to_string();
        let spans = doc
            .get("spans")
            .and_then(Value::as_array)
            .ok_or("the trace has no spans")?;
        let mut services: Vec<String> = Vec::new();
        let mut service_index: HashMap<String, u32> = HashMap::new();
        let mut resources: Vec<Vec<(String, String)>> = Vec::new();
        let mut resource_index: HashMap<Vec<(String, String)>, u32> = HashMap::new();
        let mut raw = Vec::with_capacity(spans.len());
        for s in spans {
            let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let service_name = text("service_name");
            let service = *service_index
                .entry(service_name.clone())
                .or_insert_with(|| {
                    services.push(service_name);
                    (services.len() - 1) as u32
                });
            let resource_attrs =
                attribute_list(s.get("resource").and_then(|r| r.get("attributes")));
            let resource = match resource_index.get(&resource_attrs) {
                Some(i) => *i,
                None => {
                    resources.push(resource_attrs.clone());
                    let i = (resources.len() - 1) as u32;
                    resource_index.insert(resource_attrs, i);
                    i
                }
            };
            let start = nanos(s.get("start_time_unix_nano")).unwrap_or(0);
            let end = nanos(s.get("end_time_unix_nano")).unwrap_or(start);
            let status_code = s
                .get("status")
                .and_then(|st| st.get("code"))
                .and_then(Value::as_str)
                .unwrap_or("UNSET");
            let status = match status_code {
                "ERROR" | "STATUS_CODE_ERROR" => Status::Error,
                "OK" | "STATUS_CODE_OK" => Status::Ok,
                _ => Status::Unset,
            };
            let events = s
                .get("events")
                .and_then(Value::as_array)
                .map(|evs| {
                    evs.iter()
                        .map(|e| SpanEvent {
                            // Absolute here; made relative to the trace's start in `assemble`.
                            offset_ns: nanos(e.get("time_unix_nano")).unwrap_or(start),
                            name: e
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                            attributes: attribute_list(e.get("attributes")),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let links = s
                .get("links")
                .and_then(Value::as_array)
                .map(|ls| {
                    ls.iter()
                        .map(|l| SpanLink {
                            trace_id: l
                                .get("trace_id")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .into(),
                            span_id: l
                                .get("span_id")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .into(),
                            attributes: attribute_list(l.get("attributes")),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let scope = s.get("scope").map_or(String::new(), |sc| {
                let name = sc.get("name").and_then(Value::as_str).unwrap_or("");
                match sc.get("version").and_then(Value::as_str).unwrap_or("") {
                    "" => name.to_string(),
                    v => format!("{name} {v}"),
                }
            });
            raw.push(RawSpan {
                span_id: text("span_id"),
                parent_span_id: s
                    .get("parent_span_id")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
                service,
                resource,
                name: text("name"),
                kind: text("kind"),
                start,
                duration: (end - start).max(0),
                status,
                status_message: s
                    .get("status")
                    .and_then(|st| st.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                attributes: attribute_list(s.get("attributes")),
                events,
                links,
                scope,
            });
        }
        Ok(Self::assemble(trace_id, services, resources, raw))
    }

    fn assemble(
        trace_id: String,
        services: Vec<String>,
        resources: Vec<Vec<(String, String)>>,
        raw: Vec<RawSpan>,
    ) -> TraceView {
        let trace_start = raw.iter().map(|s| s.start).min().unwrap_or(0);
        let trace_end = raw
            .iter()
            .map(|s| s.start + s.duration)
            .max()
            .unwrap_or(trace_start);
        let by_id: HashMap<&str, usize> = raw
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id.as_str(), i))
            .collect();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); raw.len()];
        let mut roots = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            match s.parent_span_id.as_deref().and_then(|p| by_id.get(p)) {
                Some(&p) if p != i => children[p].push(i),
                _ => roots.push(i),
            }
        }
        let by_start = |a: &usize, b: &usize| {
            raw[*a]
                .start
                .cmp(&raw[*b].start)
                .then_with(|| raw[*a].span_id.cmp(&raw[*b].span_id))
        };
        roots.sort_by(by_start);
        for c in &mut children {
            c.sort_by(by_start);
        }

        // Depth-first with an explicit stack: traces can be deep and have 100k spans.
        let mut order: Vec<(usize, u32, Option<u32>)> = Vec::with_capacity(raw.len());
        let mut position = vec![u32::MAX; raw.len()];
        let mut stack: Vec<(usize, u32)> = roots.iter().rev().map(|&r| (r, 0)).collect();
        while let Some((i, depth)) = stack.pop() {
            if position[i] != u32::MAX {
                continue; // a parent cycle; show each span once
            }
            position[i] = order.len() as u32;
            let parent_pos = raw[i]
                .parent_span_id
                .as_deref()
                .and_then(|p| by_id.get(p))
                .map(|&p| position[p])
                .filter(|&p| p != u32::MAX && p != position[i]);
            order.push((i, depth, parent_pos));
            for &c in children[i].iter().rev() {
                stack.push((c, depth + 1));
            }
        }
        // Spans caught in a parent cycle with no root above them.
        for (i, pos) in position.clone().iter().enumerate() {
            if *pos == u32::MAX {
                position[i] = order.len() as u32;
                order.push((i, 0, None));
            }
        }

        let mut raw: Vec<Option<RawSpan>> = raw.into_iter().map(Some).collect();
        let mut spans: Vec<SpanRow> = Vec::with_capacity(order.len());
        for &(i, depth, parent) in &order {
            let Some(s) = raw[i].take() else { continue };
            let missing_parent = match (&s.parent_span_id, parent) {
                (Some(p), None) => Some(p.clone()),
                _ => None,
            };
            spans.push(SpanRow {
                span_id: s.span_id,
                parent,
                missing_parent,
                depth,
                subtree_end: 0,
                service: s.service,
                resource: s.resource,
                name: s.name,
                kind: s.kind,
                offset_ns: s.start - trace_start,
                duration_ns: s.duration,
                status: s.status,
                status_message: s.status_message,
                attributes: s.attributes,
                events: s
                    .events
                    .into_iter()
                    .map(|e| SpanEvent {
                        offset_ns: e.offset_ns - trace_start,
                        ..e
                    })
                    .collect(),
                links: s.links,
                scope: s.scope,
                critical: false,
            });
        }
        // Subtree ends, from the last row backwards: a row's subtree ends where the next row at
        // its depth or shallower begins.
        let n = spans.len();
        let mut open: Vec<usize> = Vec::new();
        for i in 0..n {
            while let Some(&top) = open.last() {
                if spans[top].depth >= spans[i].depth {
                    spans[top].subtree_end = i as u32;
                    open.pop();
                } else {
                    break;
                }
            }
            open.push(i);
        }
        for top in open {
            spans[top].subtree_end = n as u32;
        }
        mark_critical_path(&mut spans);
        let error_count = spans.iter().filter(|s| s.status == Status::Error).count();
        TraceView {
            trace_id,
            start_unix_ns: trace_start,
            duration_ns: trace_end - trace_start,
            services,
            resources,
            spans,
            error_count,
        }
    }

    /// Rows to show when the given rows are collapsed: their descendants are skipped.
    pub fn visible_rows(&self, collapsed: &dyn Fn(usize) -> bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.spans.len());
        let mut i = 0;
        while i < self.spans.len() {
            out.push(i as u32);
            i = if collapsed(i) {
                (self.spans[i].subtree_end as usize).max(i + 1)
            } else {
                i + 1
            };
        }
        out
    }

    /// Rows matching a find-in-trace text: name, service, span id, status message, event names,
    /// attribute keys and values (`key=value` also matches), case-insensitive.
    pub fn find(&self, text: &str) -> Vec<u32> {
        let needle = text.trim().to_lowercase();
        if needle.is_empty() {
            return Vec::new();
        }
        let hit = |s: &str| s.to_lowercase().contains(&needle);
        self.spans
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                hit(&s.name)
                    || hit(&self.services[s.service as usize])
                    || s.span_id == needle
                    || hit(&s.status_message)
                    || s.events.iter().any(|e| hit(&e.name))
                    || s.attributes
                        .iter()
                        .any(|(k, v)| hit(k) || hit(v) || hit(&format!("{k}={v}")))
            })
            .map(|(i, _)| i as u32)
            .collect()
    }

    pub fn index_of(&self, span_id: &str) -> Option<usize> {
        self.spans.iter().position(|s| s.span_id == span_id)
    }

    pub fn service_of(&self, row: &SpanRow) -> &str {
        self.services
            .get(row.service as usize)
            .map_or("", String::as_str)
    }
}

/// Marks the critical path: from each root, the child that finished last before the parent's
/// end, then the one that finished last before that child started, and so on, recursively.
fn mark_critical_path(spans: &mut [SpanRow]) {
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent {
            Some(p) => children[p as usize].push(i),
            None => roots.push(i),
        }
    }
    // Only the root that ends last determines the trace's duration.
    let Some(&root) = roots.iter().max_by_key(|&&r| spans[r].end_ns()) else {
        return;
    };
    let mut work = vec![(root, spans[root].end_ns())];
    while let Some((i, limit)) = work.pop() {
        spans[i].critical = true;
        let mut kids = children[i].clone();
        kids.sort_by_key(|&c| std::cmp::Reverse(spans[c].end_ns().min(limit)));
        let mut cursor = spans[i].end_ns().min(limit);
        for c in kids {
            if spans[c].offset_ns < cursor && spans[c].end_ns() > spans[i].offset_ns {
                let child_limit = spans[c].end_ns().min(cursor);
                cursor = spans[c].offset_ns;
                work.push((c, child_limit));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn span(id: &str, parent: Option<&str>, service: &str, start: i64, end: i64) -> Value {
        json!({
            "span_id": id, "parent_span_id": parent, "service_name": service, "name": format!("op-{id}"),
            "kind": "INTERNAL", "start_time_unix_nano": start.to_string(),
            "end_time_unix_nano": end.to_string(), "status": {"code": "UNSET", "message": ""},
            "attributes": {"n": 1}, "resource": {"attributes": {"service.name": service}},
            "events": [], "links": [], "scope": {"name": "s", "version": ""}
        })
    }

    fn trace(spans: Vec<Value>) -> TraceView {
        TraceView::from_api(&json!({"trace_id": "ab", "spans": spans})).expect("valid trace")
    }

    #[test]
    fn rows_come_in_tree_order_with_subtrees() {
        let t = trace(vec![
            span("c2", Some("a"), "db", 300, 400),
            span("a", None, "web", 100, 1000),
            span("c1", Some("a"), "api", 200, 900),
            span("g", Some("c1"), "db", 250, 800),
        ]);
        let ids: Vec<&str> = t.spans.iter().map(|s| s.span_id.as_str()).collect();
        assert_eq!(ids, ["a", "c1", "g", "c2"]);
        let depth: Vec<u32> = t.spans.iter().map(|s| s.depth).collect();
        assert_eq!(depth, [0, 1, 2, 1]);
        let ends: Vec<u32> = t.spans.iter().map(|s| s.subtree_end).collect();
        assert_eq!(ends, [4, 3, 3, 4]);
        assert_eq!(t.spans[2].parent, Some(1));
        assert_eq!(t.start_unix_ns, 100);
        assert_eq!(t.duration_ns, 900);
        assert_eq!(t.services, ["db", "web", "api"]);
        assert_eq!(t.resources.len(), 3);
        // Collapsing c1 hides g.
        assert_eq!(t.visible_rows(&|i| i == 1), [0, 1, 3]);
        assert_eq!(t.visible_rows(&|i| i == 0), [0]);
    }

    #[test]
    fn critical_path_follows_the_last_finishing_children() {
        let t = trace(vec![
            span("a", None, "web", 0, 1000),
            span("b", Some("a"), "api", 0, 400),
            span("c", Some("a"), "api", 500, 990),
            span("d", Some("a"), "api", 100, 300),
            span("e", Some("c"), "db", 600, 700),
        ]);
        let critical: Vec<&str> = t
            .spans
            .iter()
            .filter(|s| s.critical)
            .map(|s| s.span_id.as_str())
            .collect();
        // c ends last; before c started (500) b ended last (400); d is inside b's time.
        assert_eq!(critical, ["a", "b", "c", "e"]);
    }

    #[test]
    fn orphans_and_cycles_still_show_once() {
        let t = trace(vec![
            span("a", None, "web", 0, 10),
            span("o", Some("gone"), "web", 5, 6),
            span("x", Some("y"), "web", 1, 2),
            span("y", Some("x"), "web", 1, 2),
        ]);
        assert_eq!(t.spans.len(), 4);
        let orphan = &t.spans[t.index_of("o").expect("orphan shown")];
        assert_eq!(orphan.missing_parent.as_deref(), Some("gone"));
        assert_eq!(orphan.parent, None);
    }

    #[test]
    fn find_matches_names_attributes_and_services() {
        let t = trace(vec![
            span("a", None, "web", 0, 10),
            span("b", Some("a"), "db", 1, 5),
        ]);
        assert_eq!(t.find("OP-B"), [1]);
        assert_eq!(t.find("web"), [0]);
        assert_eq!(t.find("n=1").len(), 2);
        assert!(t.find("  ").is_empty());
    }

    #[test]
    fn a_deep_chain_does_not_overflow_the_stack() {
        let mut spans = vec![span("s0", None, "web", 0, 200_000)];
        for i in 1..50_000 {
            let parent = format!("s{}", i - 1);
            spans.push(span(&format!("s{i}"), Some(&parent), "web", i, 200_000 - i));
        }
        let t = trace(spans);
        assert_eq!(t.spans.len(), 50_000);
        assert_eq!(t.spans[49_999].depth, 49_999);
        assert!(t.spans.iter().all(|s| s.critical));
    }

    #[test]
    fn missing_fields_are_errors_not_panics() {
        assert!(TraceView::from_api(&json!({})).is_err());
        assert!(TraceView::from_api(&json!({"trace_id": "ab"})).is_err());
        let t = TraceView::from_api(&json!({"trace_id": "ab", "spans": [{}]})).expect("lenient");
        assert_eq!(t.spans.len(), 1);
    }
}
