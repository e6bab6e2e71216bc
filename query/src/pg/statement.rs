//! Classifying what a PostgreSQL client sends, and smoothing over PostgreSQL-only syntax that
//! catalog queries use.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// Statements answered without running a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Housekeeping {
    Begin,
    Commit,
    Rollback,
    /// Acknowledged with this command tag (`SET`, `DISCARD ALL`, ...).
    Tag(&'static str),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Empty,
    Housekeeping(Housekeeping),
    /// `SHOW name`.
    Show(String),
    /// A query for the engine (rewritten for DataFusion).
    Query(String),
    /// A catalog query that can only return no rows (it inner-joins a catalog table oxeye keeps
    /// empty): answered with these column names and no rows, without planning.
    NoRows(Vec<String>),
}

fn first_words(sql: &str, n: usize) -> Vec<String> {
    sql.split(|c: char| c.is_whitespace() || c == ';' || c == '(')
        .filter(|w| !w.is_empty())
        .take(n)
        .map(|w| w.to_ascii_uppercase())
        .collect()
}

/// Removes leading `--` and `/* */` comments.
fn strip_leading_comments(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map(|(_, r)| r).unwrap_or("");
        } else {
            return s;
        }
    }
}

pub fn classify(sql: &str) -> Kind {
    let body = strip_leading_comments(sql)
        .trim()
        .trim_end_matches(';')
        .trim();
    if body.is_empty() {
        return Kind::Empty;
    }
    let words = first_words(body, 3);
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let h = |x: Housekeeping| Kind::Housekeeping(x);
    match w(0) {
        "BEGIN" => h(Housekeeping::Begin),
        "START" if w(1) == "TRANSACTION" => h(Housekeeping::Begin),
        "COMMIT" | "END" => h(Housekeeping::Commit),
        "ROLLBACK" | "ABORT" => h(Housekeeping::Rollback),
        "SET" => h(Housekeeping::Tag("SET")),
        "RESET" => h(Housekeeping::Tag("RESET")),
        "DISCARD" => h(Housekeeping::Tag("DISCARD ALL")),
        "DEALLOCATE" => h(Housekeeping::Tag("DEALLOCATE")),
        "CLOSE" => h(Housekeeping::Tag("CLOSE CURSOR")),
        "LISTEN" => h(Housekeeping::Tag("LISTEN")),
        "UNLISTEN" => h(Housekeeping::Tag("UNLISTEN")),
        "SAVEPOINT" => h(Housekeeping::Tag("SAVEPOINT")),
        "RELEASE" => h(Housekeeping::Tag("RELEASE")),
        "SHOW" if !matches!(w(1), "TABLES" | "COLUMNS" | "ALL" | "FUNCTIONS") => {
            let name = body[4..].trim().trim_matches('"').to_string();
            Kind::Show(name.to_ascii_lowercase())
        }
        _ => {
            let sql = rewrite(body);
            match sql
                .contains("pg_catalog")
                .then(|| no_rows_columns(&sql))
                .flatten()
            {
                Some(columns) => Kind::NoRows(columns),
                None => Kind::Query(sql),
            }
        }
    }
}

fn is_empty_catalog_table(factor: &datafusion::sql::sqlparser::ast::TableFactor) -> bool {
    use datafusion::sql::sqlparser::ast::TableFactor;
    matches!(factor, TableFactor::Table { name, .. }
        if name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| super::catalog::EMPTY_TABLES.contains(&i.value.as_str())))
}

/// Column names of a query every branch of which inner-joins an always-empty catalog table.
pub fn no_rows_columns(sql: &str) -> Option<Vec<String>> {
    use datafusion::sql::sqlparser::ast::{Expr, JoinOperator, SelectItem, SetExpr, Statement};
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn empty(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(select) => select.from.iter().any(|t| {
                is_empty_catalog_table(&t.relation)
                    || t.joins.iter().any(|j| {
                        matches!(
                            j.join_operator,
                            JoinOperator::Join(_)
                                | JoinOperator::Inner(_)
                                | JoinOperator::CrossJoin(_)
                        ) && is_empty_catalog_table(&j.relation)
                    })
            }),
            SetExpr::SetOperation { left, right, .. } => empty(left) && empty(right),
            SetExpr::Query(q) => empty(&q.body),
            _ => false,
        }
    }
    fn first_select(body: &SetExpr) -> Option<&datafusion::sql::sqlparser::ast::Select> {
        match body {
            SetExpr::Select(s) => Some(s),
            SetExpr::SetOperation { left, .. } => first_select(left),
            SetExpr::Query(q) => first_select(&q.body),
            _ => None,
        }
    }
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return None;
    };
    if !empty(&query.body) {
        return None;
    }
    first_select(&query.body)?
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some(i.value.clone()),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                parts.last().map(|i| i.value.clone())
            }
            SelectItem::UnnamedExpr(_) => Some("?column?".to_string()),
            _ => None,
        })
        .collect()
}

/// The value `SHOW name` reports.
pub fn show_value(name: &str) -> String {
    match name {
        "server_version" => super::catalog::SERVER_VERSION.into(),
        "server_version_num" => "160000".into(),
        "server_encoding" | "client_encoding" => "UTF8".into(),
        "datestyle" => "ISO, MDY".into(),
        "timezone" => "UTC".into(),
        "integer_datetimes" | "standard_conforming_strings" => "on".into(),
        "transaction_isolation" | "default_transaction_isolation" => "read committed".into(),
        "transaction_read_only" | "default_transaction_read_only" => "on".into(),
        "max_identifier_length" => "63".into(),
        "search_path" => "public".into(),
        "lc_collate" | "lc_ctype" => "C".into(),
        "is_superuser" => "off".into(),
        _ => String::new(),
    }
}

static COLLATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)\s+COLLATE\s+(pg_catalog\.)?("default"|default|"C"|C)\b"#)
        .expect("static regex")
});
static OPERATOR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)OPERATOR\s*\(\s*pg_catalog\.([~!<>=*]+)\s*\)").expect("static regex")
});
static CATALOG_FUNCTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bpg_catalog\.([a-z_][a-z0-9_]*)\s*\(").expect("static regex")
});
static PG_CASTS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)::\s*(pg_catalog\.)?(regclass|regtype|regproc|regnamespace|oid|name|char)\b")
        .expect("static regex")
});
static TEXT_CAST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)::\s*pg_catalog\.(text|int2|int4|int8|bool|varchar)\b").expect("static regex")
});

/// Rewrites PostgreSQL-only syntax that catalog queries use into what the engine understands:
/// `OPERATOR(pg_catalog.~)` becomes `~`, collations and `regclass`-style casts are dropped,
/// and `pg_catalog.f(...)` calls become `f(...)`. Table names keep their `pg_catalog.` schema.
/// Queries over `pg_catalog` also get their scalar subqueries aggregated (see
/// [`aggregate_scalar_subqueries`]). User queries are otherwise left alone.
pub fn rewrite(sql: &str) -> String {
    let s: Cow<str> = COLLATE.replace_all(sql, "");
    let s = OPERATOR.replace_all(&s, " $1 ");
    let s = CATALOG_FUNCTION.replace_all(&s, "$1(");
    let s = PG_CASTS.replace_all(&s, "");
    let s = TEXT_CAST.replace_all(&s, "::$1");
    if s.contains("pg_catalog")
        && let Some(rewritten) = aggregate_scalar_subqueries(&s)
    {
        return rewritten;
    }
    s.into_owned()
}

const AGGREGATES: &[&str] = &[
    "max(",
    "min(",
    "count(",
    "sum(",
    "avg(",
    "array_agg(",
    "string_agg(",
    "bool_and(",
    "bool_or(",
];

/// Catalog queries (psql's `\d`) use correlated scalar subqueries that return at most one row
/// but are not aggregated, which the engine cannot plan; `(SELECT x FROM ...)` becomes
/// `(SELECT max(x) FROM ...)`, the same value for zero or one row. `None` if it does not parse.
pub fn aggregate_scalar_subqueries(sql: &str) -> Option<String> {
    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::{
        Expr, SelectItem, SetExpr, TableFactor, visit_expressions_mut,
    };
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    let dialect = PostgreSqlDialect {};
    let mut statements = Parser::parse_sql(&dialect, sql).ok()?;
    let wrap = |e: &Expr| -> Option<Expr> {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        if AGGREGATES.iter().any(|a| lower.contains(a)) {
            return None;
        }
        Parser::new(&dialect)
            .try_with_sql(&format!("max({text})"))
            .ok()?
            .parse_expr()
            .ok()
    };
    let null = Parser::new(&dialect)
        .try_with_sql("NULL")
        .ok()?
        .parse_expr()
        .ok()?;
    // A subquery with an always-empty catalog table among its (comma-joined) relations yields
    // no row: it is NULL whatever it correlates on.
    let reads_empty_table = |select: &datafusion::sql::sqlparser::ast::Select| {
        select.from.iter().any(|t| {
            t.joins.is_empty()
                && matches!(&t.relation, TableFactor::Table { name, .. }
                    if name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| super::catalog::EMPTY_TABLES.contains(&i.value.as_str())))
        })
    };
    for statement in &mut statements {
        let _ = visit_expressions_mut(statement, |expr| {
            if let Expr::Subquery(query) = expr
                && let SetExpr::Select(select) = query.body.as_ref()
                && reads_empty_table(select)
            {
                *expr = null.clone();
                return ControlFlow::<()>::Continue(());
            }
            if let Expr::Subquery(query) = expr
                && let SetExpr::Select(select) = query.body.as_mut()
                && select.projection.len() == 1
                && select.distinct.is_none()
                && select.having.is_none()
            {
                match &mut select.projection[0] {
                    SelectItem::UnnamedExpr(e) => {
                        if let Some(w) = wrap(e) {
                            *e = w;
                        }
                    }
                    SelectItem::ExprWithAlias { expr, .. } => {
                        if let Some(w) = wrap(expr) {
                            *expr = w;
                        }
                    }
                    _ => {}
                }
            }
            ControlFlow::<()>::Continue(())
        });
    }
    Some(
        statements
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// Splits a simple-protocol query into statements at semicolons outside quotes and comments.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    let (mut single, mut double) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '-' if !single && !double && chars.peek() == Some(&'-') => {
                // A line comment: keep it (harmless), but do not split inside it.
                current.push(c);
                for d in chars.by_ref() {
                    current.push(d);
                    if d == '\n' {
                        break;
                    }
                }
                continue;
            }
            ';' if !single && !double => {
                if !current.trim().is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn housekeeping_is_recognised() {
        assert_eq!(classify("BEGIN"), Kind::Housekeeping(Housekeeping::Begin));
        assert_eq!(
            classify("  set extra_float_digits = 3"),
            Kind::Housekeeping(Housekeeping::Tag("SET"))
        );
        assert_eq!(classify("SHOW TimeZone;"), Kind::Show("timezone".into()));
        assert_eq!(classify("-- hi\n"), Kind::Empty);
        assert!(matches!(classify("select 1"), Kind::Query(_)));
        assert!(matches!(classify("SHOW TABLES"), Kind::Query(_)));
        assert_eq!(
            classify(
                "SELECT pol.polname, pol.polpermissive AS p FROM pg_catalog.pg_policy pol WHERE pol.polrelid = '1' ORDER BY 1"
            ),
            Kind::NoRows(vec!["polname".into(), "p".into()])
        );
        assert!(matches!(
            classify(
                "SELECT c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid"
            ),
            Kind::Query(_)
        ));
    }

    #[test]
    fn catalog_syntax_is_rewritten() {
        let psql = "WHERE c.relname OPERATOR(pg_catalog.~) '^(spans)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) FROM pg_catalog.pg_class c WHERE x = 'a'::regclass AND t::pg_catalog.text";
        let r = rewrite(psql);
        assert_eq!(
            r,
            "WHERE c.relname  ~  '^(spans)$' AND pg_table_is_visible(c.oid) FROM pg_catalog.pg_class c WHERE x = 'a' AND t::text"
        );
    }

    #[test]
    fn statements_split_outside_quotes() {
        assert_eq!(
            split_statements("select 1; select ';'; -- a;b\n select 2;"),
            vec!["select 1", " select ';'", " -- a;b\n select 2"]
        );
        assert!(split_statements(" ; ").is_empty());
    }
}
