//! Annotation templates: `{{ $labels.service_name }}`, `{{ $value }}`, `{{ $threshold }}` and
//! `{{ $rule }}` are replaced; everything else is kept as written. Templates are checked when a
//! rule is saved, so a typo is an error then, not a broken message at 3 a.m.

use std::collections::BTreeMap;

/// What a template may refer to.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub value: Option<f64>,
    pub threshold: f64,
    pub rule: &'a str,
}

#[derive(Debug, Clone, PartialEq)]
enum Part<'a> {
    Text(&'a str),
    Label(&'a str),
    Value,
    Threshold,
    Rule,
}

fn parse(template: &str) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("`{{{{` without a closing `}}}}` in `{template}`"))?;
        let expr = after[..close].trim();
        parts.push(match expr {
            "$value" => Part::Value,
            "$threshold" => Part::Threshold,
            "$rule" => Part::Rule,
            _ => match expr.strip_prefix("$labels.") {
                Some(name) if !name.is_empty() && !name.contains(char::is_whitespace) => {
                    Part::Label(name)
                }
                _ => {
                    return Err(format!(
                        "unknown template expression `{{{{ {expr} }}}}`; use {{{{ $labels.NAME }}}}, \
                         {{{{ $value }}}}, {{{{ $threshold }}}} or {{{{ $rule }}}}"
                    ));
                }
            },
        });
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

/// Checks a template without rendering it.
pub fn check(template: &str) -> Result<(), String> {
    parse(template).map(|_| ())
}

/// A value as people read it: integers without decimals, others with up to 4 significant
/// decimals.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let digits = if v.abs() >= 100.0 {
        2
    } else if v.abs() >= 1.0 {
        3
    } else {
        4
    };
    let s = format!("{v:.digits$}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Renders a template; an unknown label renders as empty text (the label may be absent from
/// some rows).
pub fn render(template: &str, ctx: Context<'_>) -> String {
    let Ok(parts) = parse(template) else {
        return template.to_string();
    };
    let mut out = String::with_capacity(template.len());
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Label(name) => out.push_str(ctx.labels.get(name).map_or("", String::as_str)),
            Part::Value => out.push_str(&ctx.value.map(format_value).unwrap_or_default()),
            Part::Threshold => out.push_str(&format_value(ctx.threshold)),
            Part::Rule => out.push_str(ctx.rule),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_value_threshold_and_rule() {
        let labels = BTreeMap::from([("service_name".to_string(), "checkout".to_string())]);
        let ctx = Context {
            labels: &labels,
            value: Some(7.456789),
            threshold: 5.0,
            rule: "errors",
        };
        assert_eq!(
            render(
                "{{ $labels.service_name }} at {{$value}}% (> {{ $threshold }}) [{{ $rule }}] {{ $labels.none }}.",
                ctx
            ),
            "checkout at 7.457% (> 5) [errors] ."
        );
        assert_eq!(render("no templates", ctx), "no templates");
    }

    #[test]
    fn rejects_unknown_expressions_and_unclosed_braces() {
        assert!(check("{{ $labels.a }} {{ $value }}").is_ok());
        assert!(check("{{ $valu }}").unwrap_err().contains("$valu"));
        assert!(check("{{ $labels. }}").is_err());
        assert!(check("oops {{ $value").unwrap_err().contains("closing"));
    }

    #[test]
    fn values_read_well() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.123456), "0.1235");
        assert_eq!(format_value(12.5), "12.5");
        assert_eq!(format_value(1234.5678), "1234.57");
        assert_eq!(format_value(-2.0), "-2");
    }
}
