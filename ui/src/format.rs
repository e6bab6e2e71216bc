//! Formatting of durations, timestamps and numbers for display.
//!
//! Timestamps are rendered in UTC on the server (it does not know the reader's zone) and in the
//! browser's zone once the page is hydrated; [`Clock`] carries that choice.

/// How to show wall-clock times: UTC (server render, before hydration) or the browser's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    #[default]
    Utc,
    Local,
}

/// Minutes east of UTC of the browser's zone at `unix_ms` (0 outside the browser).
fn local_offset_minutes(unix_ms: f64) -> i64 {
    #[cfg(feature = "hydrate")]
    {
        let date = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(unix_ms));
        -(date.get_timezone_offset() as i64)
    }
    #[cfg(not(feature = "hydrate"))]
    {
        let _ = unix_ms;
        0
    }
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Parts {
    year: i64,
    month: u32,
    day: u32,
    hour: i64,
    minute: i64,
    second: i64,
    millis: i64,
    zone: String,
}

fn parts(unix_ns: i64, clock: Clock) -> Parts {
    let offset_min = match clock {
        Clock::Utc => 0,
        Clock::Local => local_offset_minutes(unix_ns as f64 / 1e6),
    };
    let shifted_ms = unix_ns.div_euclid(1_000_000) + offset_min * 60_000;
    let days = shifted_ms.div_euclid(86_400_000);
    let ms_of_day = shifted_ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let zone = match clock {
        Clock::Utc => "UTC".to_string(),
        Clock::Local => {
            let sign = if offset_min < 0 { '-' } else { '+' };
            format!(
                "{sign}{:02}:{:02}",
                offset_min.abs() / 60,
                offset_min.abs() % 60
            )
        }
    };
    Parts {
        year,
        month,
        day,
        hour: ms_of_day / 3_600_000,
        minute: ms_of_day / 60_000 % 60,
        second: ms_of_day / 1000 % 60,
        millis: ms_of_day % 1000,
        zone,
    }
}

/// `2026-11-24 20:36:35.187` in the clock's zone.
pub fn date_time(unix_ns: i64, clock: Clock) -> String {
    let p = parts(unix_ns, clock);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis
    )
}

/// `date_time` followed by the zone, e.g. `2026-11-24 20:36:35.187 UTC`.
pub fn date_time_zone(unix_ns: i64, clock: Clock) -> String {
    let p = parts(unix_ns, clock);
    format!("{} {}", date_time(unix_ns, clock), p.zone)
}

/// `20:36:35`, for chart axes.
pub fn clock_time(unix_ns: i64, clock: Clock) -> String {
    let p = parts(unix_ns, clock);
    format!("{:02}:{:02}:{:02}", p.hour, p.minute, p.second)
}

/// The zone label of a clock at a time: `UTC` or `+01:00`.
pub fn zone_label(unix_ns: i64, clock: Clock) -> String {
    parts(unix_ns, clock).zone
}

/// RFC 3339 in UTC, for `<time datetime>` and API parameters.
pub fn rfc3339(unix_ns: i64) -> String {
    let p = parts(unix_ns, Clock::Utc);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis
    )
}

/// A duration with a unit fitting its size: `850ns`, `12.3µs`, `4.56ms`, `1.23s`, `2m 5s`.
pub fn duration(ns: f64) -> String {
    if !ns.is_finite() {
        return "–".into();
    }
    let abs = ns.abs();
    if abs < 1e3 {
        format!("{ns:.0}ns")
    } else if abs < 1e6 {
        format!("{}µs", three_digits(ns / 1e3))
    } else if abs < 1e9 {
        format!("{}ms", three_digits(ns / 1e6))
    } else if abs < 60e9 {
        format!("{}s", three_digits(ns / 1e9))
    } else if abs < 3600e9 {
        let s = (ns / 1e9).round() as i64;
        format!("{}m {}s", s / 60, s % 60)
    } else {
        let m = (ns / 60e9).round() as i64;
        format!("{}h {}m", m / 60, m % 60)
    }
}

/// Three significant digits: `1.23`, `12.3`, `123`.
fn three_digits(v: f64) -> String {
    let a = v.abs();
    if a < 10.0 {
        format!("{v:.2}")
    } else if a < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A count or rate, compact: `950`, `1.2k`, `3.4M`; fractions keep 2-3 digits.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 1.0 {
        format!("{v:.3}")
    } else if a < 1e3 {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            three_digits(v)
        }
    } else if a < 1e6 {
        format!("{}k", three_digits(v / 1e3))
    } else if a < 1e9 {
        format!("{}M", three_digits(v / 1e6))
    } else {
        format!("{}G", three_digits(v / 1e9))
    }
}

/// A share as a percentage: `2.9%`.
pub fn percent(share: f64) -> String {
    if !share.is_finite() {
        return "–".into();
    }
    let p = share * 100.0;
    if p == 0.0 {
        "0%".into()
    } else if p < 0.1 {
        "<0.1%".into()
    } else {
        format!("{p:.1}%")
    }
}

/// Parses a duration typed by a user (`250ms`, `1.5s`, `2m`, `1h`, `500us`, plain number = ms)
/// into nanoseconds.
pub fn parse_duration_ns(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().ok()?;
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "" | "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        "d" => 86_400e9,
        _ => return None,
    };
    Some((value * scale) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_civil_dates() {
        // 2026-11-24T20:36:35.187Z
        let ns = 1_795_552_595_187_399_051;
        assert_eq!(date_time(ns, Clock::Utc), "2026-11-24 20:36:35.187");
        assert_eq!(rfc3339(ns), "2026-11-24T20:36:35.187Z");
        assert_eq!(date_time(0, Clock::Utc), "1970-01-01 00:00:00.000");
        // Before the epoch and across a leap day.
        assert_eq!(date_time(-1_000_000, Clock::Utc), "1969-12-31 23:59:59.999");
        assert_eq!(
            date_time(951_782_400_000_000_000, Clock::Utc),
            "2000-02-29 00:00:00.000"
        );
    }

    #[test]
    fn durations_pick_a_unit() {
        assert_eq!(duration(850.0), "850ns");
        assert_eq!(duration(12_345.0), "12.3µs");
        assert_eq!(duration(4_560_000.0), "4.56ms");
        assert_eq!(duration(1_234_000_000.0), "1.23s");
        assert_eq!(duration(125e9), "2m 5s");
        assert_eq!(duration(f64::NAN), "–");
    }

    #[test]
    fn numbers_and_percentages() {
        assert_eq!(number(950.0), "950");
        assert_eq!(number(1234.0), "1.23k");
        assert_eq!(number(0.0381), "0.038");
        assert_eq!(percent(0.029_197), "2.9%");
        assert_eq!(percent(0.0), "0%");
    }

    #[test]
    fn typed_durations() {
        assert_eq!(parse_duration_ns("250ms"), Some(250_000_000));
        assert_eq!(parse_duration_ns("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration_ns("20"), Some(20_000_000));
        assert_eq!(parse_duration_ns("2m"), Some(120_000_000_000));
        assert_eq!(parse_duration_ns("fast"), None);
        assert_eq!(parse_duration_ns(""), None);
    }
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses the UTC timestamps the SQL API returns (`2026-11-24T20:35:00Z`, fractions allowed,
/// `Z` or `+00:00`) into unix nanoseconds.
pub fn parse_utc_timestamp(text: &str) -> Option<i64> {
    let t = text.trim();
    let t = t
        .strip_suffix('Z')
        .or_else(|| t.strip_suffix("+00:00"))
        .unwrap_or(t);
    let (date, time) = t.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.split(':');
    let hour: i64 = h.next()?.parse().ok()?;
    let minute: i64 = h.next()?.parse().ok()?;
    let second: i64 = h.next().unwrap_or("0").parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000_000) + nanos)
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    #[test]
    fn sql_timestamps_parse_back() {
        let ns = 1_795_552_595_187_399_051;
        assert_eq!(
            parse_utc_timestamp("2026-11-24T20:36:35.187399051Z"),
            Some(ns)
        );
        assert_eq!(
            parse_utc_timestamp("2026-11-24T20:35:00Z"),
            Some(1_795_552_500_000_000_000)
        );
        assert_eq!(
            parse_utc_timestamp("1970-01-01 00:00:01"),
            Some(1_000_000_000)
        );
        assert_eq!(parse_utc_timestamp("frontend"), None);
        assert_eq!(parse_utc_timestamp("2026-13-01T00:00:00Z"), None);
    }
}
