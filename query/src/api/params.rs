//! Parsing of API parameters (times, durations, tags) and building SQL from them safely.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the epoch now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A duration like `250ms`, `1.5s`, `100us`, `2m`, `3h`, `7d`, or a number of nanoseconds.
pub fn parse_duration_ns(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        "w" => 7.0 * 86_400e9,
        _ => return None,
    };
    let ns = value * scale;
    (ns.is_finite() && (0.0..9.2e18).contains(&ns)).then_some(ns as i64)
}

/// A point in time: RFC 3339 (`2024-05-01T12:00:00Z`), `now`, `now-15m`, or an integer that is
/// read by magnitude as seconds, milliseconds, microseconds or nanoseconds since the epoch.
pub fn parse_time_ns(text: &str) -> Option<i64> {
    let t = text.trim();
    if t == "now" {
        return Some(now_ns());
    }
    if let Some(rest) = t.strip_prefix("now-") {
        return Some(now_ns() - parse_duration_ns(rest)?);
    }
    if let Ok(n) = t.parse::<i64>() {
        let abs = n.unsigned_abs();
        return Some(if abs < 100_000_000_000 {
            n * 1_000_000_000 // seconds
        } else if abs < 100_000_000_000_000 {
            n * 1_000_000 // milliseconds
        } else if abs < 100_000_000_000_000_000 {
            n * 1_000 // microseconds
        } else {
            n
        });
    }
    arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(t).ok()
}

/// A SQL string literal with quotes doubled: safe to splice into SQL.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL timestamp literal for nanoseconds since the epoch.
pub fn sql_time(ns: i64) -> String {
    format!("to_timestamp_nanos({ns})")
}

/// `key=value` pairs separated by spaces, commas or `&`, or a JSON object (Jaeger's `tags`).
pub fn parse_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    if t.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|e| format!("tags is not valid JSON: {e}"))?;
        let obj = v.as_object().ok_or("tags JSON must be an object")?;
        return Ok(obj
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect());
    }
    t.split([' ', ',', '&'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("tag `{p}` should look like key=value"))?;
            Ok((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

/// The SQL condition a span tag means. Jaeger conventions are understood: `error=true`,
/// `span.kind=server`, `otel.status_code=ERROR`; other keys match span or resource attributes.
pub fn span_tag_condition(key: &str, value: &str) -> String {
    match key {
        "error" if value.eq_ignore_ascii_case("true") => "status_code = 'ERROR'".into(),
        "error" => "status_code <> 'ERROR'".into(),
        "span.kind" => format!("kind = {}", sql_str(&value.to_uppercase())),
        "otel.status_code" => format!("status_code = {}", sql_str(&value.to_uppercase())),
        "service.name" => format!("service_name = {}", sql_str(value)),
        _ => format!(
            "(attributes[{k}] = {v} OR resource_attributes[{k}] = {v})",
            k = sql_str(key),
            v = sql_str(value)
        ),
    }
}

/// Minimum OTLP severity number for a level name (`warn` -> 13), or a number as given.
pub fn severity_floor(text: &str) -> Option<i32> {
    match text.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Some(1),
        "DEBUG" => Some(5),
        "INFO" => Some(9),
        "WARN" | "WARNING" => Some(13),
        "ERROR" => Some(17),
        "FATAL" | "CRITICAL" => Some(21),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_times_tags() {
        assert_eq!(parse_duration_ns("1.5ms"), Some(1_500_000));
        assert_eq!(parse_duration_ns("2s"), Some(2_000_000_000));
        assert_eq!(parse_duration_ns("42"), Some(42));
        assert_eq!(parse_duration_ns("fast"), None);
        assert_eq!(
            parse_time_ns("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(parse_time_ns("1700000000"), Some(1_700_000_000_000_000_000));
        assert_eq!(
            parse_time_ns("1700000000000"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_time_ns("1700000000000000"),
            Some(1_700_000_000_000_000_000)
        );
        assert!(parse_time_ns("now-1h").unwrap() < now_ns());
        assert_eq!(
            parse_tags("http.method=GET error=true").unwrap(),
            vec![
                ("http.method".into(), "GET".into()),
                ("error".into(), "true".into())
            ]
        );
        assert_eq!(
            parse_tags(r#"{"a":"b","n":5}"#).unwrap(),
            vec![("a".into(), "b".into()), ("n".into(), "5".into())]
        );
        assert!(parse_tags("novalue").is_err());
        assert_eq!(sql_str("it's"), "'it''s'");
        assert_eq!(severity_floor("warn"), Some(13));
    }
}
