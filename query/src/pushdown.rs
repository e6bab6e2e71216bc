//! Which SQL filters the store can use: time ranges on the table's time column prune segments
//! and row groups, and equality on ids, service, names, status, attributes and `search()`
//! become index predicates. Everything stays "inexact": DataFusion still applies every filter
//! to the rows that come back, so pushdown changes speed, never answers.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use oxeye_model::Signal;
use oxeye_model::ids::parse_trace_id;
use oxeye_store::{IndexPredicate, TextQuery};

/// What a scan can use from its filters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanHints {
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub index: Option<IndexPredicate>,
}

/// Text and timestamp values of a literal (dictionary-wrapped or cast ones too).
fn literal(expr: &Expr) -> Option<&ScalarValue> {
    match expr {
        Expr::Literal(v, _) => match v {
            ScalarValue::Dictionary(_, inner) => Some(inner.as_ref()),
            other => Some(other),
        },
        Expr::Cast(c) => literal(&c.expr),
        Expr::TryCast(c) => literal(&c.expr),
        _ => None,
    }
}

pub(crate) fn text(expr: &Expr) -> Option<&str> {
    match literal(expr)? {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

/// Nanoseconds since the epoch of a timestamp literal.
fn nanos(expr: &Expr) -> Option<i64> {
    match literal(expr)? {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        ScalarValue::Utf8(Some(s)) => chrono_free_parse(s),
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp literal without pulling a date library into this module:
/// DataFusion has already cast most literals, this covers the rest.
fn chrono_free_parse(s: &str) -> Option<i64> {
    arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(s).ok()
}

pub(crate) fn column_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(c) => column_name(&c.expr),
        Expr::TryCast(c) => column_name(&c.expr),
        _ => None,
    }
}

/// `attributes['k']` / `resource_attributes['k']` -> `k`.
pub(crate) fn attribute_key(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::ScalarFunction(f) if f.name() == "get_field" || f.name() == "map_extract" => {
            let [map, key] = f.args.as_slice() else {
                return None;
            };
            let col = column_name(map)?;
            if col == "attributes" || col == "resource_attributes" {
                text(key)
            } else {
                None
            }
        }
        Expr::Cast(c) => attribute_key(&c.expr),
        _ => None,
    }
}

struct Analyzer {
    signal: Signal,
    time_column: &'static str,
}

impl Analyzer {
    /// An index predicate equivalent to (or implied by) `expr`, if there is one.
    fn index(&self, expr: &Expr) -> Option<IndexPredicate> {
        match expr {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => self
                .equality(left, right)
                .or_else(|| self.equality(right, left)),
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => match (self.index(left), self.index(right)) {
                (Some(a), Some(b)) => Some(IndexPredicate::And(vec![a, b])),
                (Some(a), None) | (None, Some(a)) => Some(a),
                (None, None) => None,
            },
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Or,
                right,
            }) => Some(IndexPredicate::Or(vec![
                self.index(left)?,
                self.index(right)?,
            ])),
            Expr::InList(list) if !list.negated => {
                let mut alternatives = Vec::new();
                for v in &list.list {
                    alternatives.push(self.equality(&list.expr, v)?);
                }
                Some(IndexPredicate::Or(alternatives))
            }
            Expr::ScalarFunction(f) if f.name() == "search" => {
                let [col, query] = f.args.as_slice() else {
                    return None;
                };
                let col = column_name(col)?;
                // The index's text field holds log bodies, status messages and event names.
                let indexed = matches!(
                    (self.signal, col),
                    (Signal::Logs, "body") | (Signal::Spans, "status_message")
                );
                if !indexed {
                    return None;
                }
                TextQuery::parse(text(query)?)
                    .ok()
                    .map(IndexPredicate::Text)
            }
            _ => None,
        }
    }

    fn equality(&self, column: &Expr, value: &Expr) -> Option<IndexPredicate> {
        if let Some(key) = attribute_key(column) {
            return Some(IndexPredicate::Attribute {
                key: key.to_string(),
                value: text(value)?.to_string(),
            });
        }
        let col = column_name(column)?;
        let v = text(value)?;
        match col {
            "trace_id" if matches!(self.signal, Signal::Spans | Signal::Logs) => {
                Some(IndexPredicate::TraceId(parse_trace_id(v)?))
            }
            "service_name" => Some(IndexPredicate::Service(v.to_string())),
            "name" if self.signal != Signal::Logs => Some(IndexPredicate::Name(v.to_string())),
            "status_code" if self.signal == Signal::Spans => {
                Some(IndexPredicate::Status(v.to_string()))
            }
            "severity_text" if self.signal == Signal::Logs => {
                Some(IndexPredicate::Status(v.to_string()))
            }
            _ => None,
        }
    }

    fn time_bounds(&self, expr: &Expr, hints: &mut ScanHints) {
        let tighten_start =
            |h: &mut ScanHints, v: i64| h.start = Some(h.start.map_or(v, |s| s.max(v)));
        let tighten_end = |h: &mut ScanHints, v: i64| h.end = Some(h.end.map_or(v, |e| e.min(v)));
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (op, value) = if column_name(left) == Some(self.time_column) {
                    (*op, right)
                } else if column_name(right) == Some(self.time_column) {
                    match op.swap() {
                        Some(swapped) => (swapped, left),
                        None => return,
                    }
                } else {
                    return;
                };
                let Some(v) = nanos(value) else { return };
                match op {
                    Operator::Gt => tighten_start(hints, v.saturating_add(1)),
                    Operator::GtEq => tighten_start(hints, v),
                    Operator::Lt => tighten_end(hints, v),
                    Operator::LtEq => tighten_end(hints, v.saturating_add(1)),
                    Operator::Eq => {
                        tighten_start(hints, v);
                        tighten_end(hints, v.saturating_add(1));
                    }
                    _ => {}
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if column_name(expr) == Some(self.time_column) => {
                if let Some(v) = nanos(low) {
                    tighten_start(hints, v);
                }
                if let Some(v) = nanos(high) {
                    tighten_end(hints, v.saturating_add(1));
                }
            }
            _ => {}
        }
    }
}

/// Analyses the (conjunctive) filters DataFusion offers a scan.
pub fn analyze(signal: Signal, filters: &[Expr]) -> ScanHints {
    let a = Analyzer {
        signal,
        time_column: signal.time_column(),
    };
    let mut hints = ScanHints::default();
    let mut index = Vec::new();
    for f in filters {
        for conjunct in datafusion::logical_expr::utils::split_conjunction(f) {
            a.time_bounds(conjunct, &mut hints);
            if let Some(p) = a.index(conjunct) {
                index.push(p);
            }
        }
    }
    hints.index = match index.len() {
        0 => None,
        1 => index.pop(),
        _ => Some(IndexPredicate::And(index)),
    };
    hints
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::*;

    #[test]
    fn recognises_time_ranges_and_index_predicates() {
        let ts = |n: i64| {
            lit(ScalarValue::TimestampNanosecond(
                Some(n),
                Some("UTC".into()),
            ))
        };
        let filters = vec![
            col("start_time").gt_eq(ts(100)),
            ts(200).gt(col("start_time")),
            col("trace_id").eq(lit("0102030405060708090a0b0c0d0e0f10")),
            col("service_name").eq(lit("cart")),
            col("duration_ns").gt(lit(5)),
        ];
        let h = analyze(Signal::Spans, &filters);
        assert_eq!(h.start, Some(100));
        assert_eq!(h.end, Some(200));
        let Some(IndexPredicate::And(ps)) = h.index else {
            panic!("{:?}", h.index)
        };
        assert_eq!(ps.len(), 2);
        assert!(matches!(ps[0], IndexPredicate::TraceId(_)));
        assert_eq!(ps[1], IndexPredicate::Service("cart".into()));
    }

    #[test]
    fn or_needs_every_branch_indexed() {
        let f = col("service_name")
            .eq(lit("a"))
            .or(col("duration_ns").gt(lit(1)));
        assert_eq!(analyze(Signal::Spans, &[f]).index, None);
        let f = col("service_name")
            .eq(lit("a"))
            .or(col("service_name").eq(lit("b")));
        assert!(matches!(
            analyze(Signal::Spans, &[f]).index,
            Some(IndexPredicate::Or(_))
        ));
    }
}
