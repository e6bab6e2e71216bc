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
        "SHOW" if !matches!(w(1), "TABLES" | "COLUMNS") => {
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
    super::catalog::setting(name).to_string()
}

/// Grafana's PostgreSQL data source restricts tables to the search path with a subquery over
/// `generate_series(array_lower(...), array_upper(...)) AS i, string_to_array(...) s`; oxeye's
/// search path is always `public`, so the subquery is that list.
static GRAFANA_SEARCH_PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?is)IN\s*\(\s*SELECT\s+CASE\s+WHEN\s+trim\(s\[i\]\)\s*=\s*'"\$user"'.*?string_to_array\(\s*current_setting\(\s*'search_path'\s*\)\s*,\s*','\s*\)\s*s\s*\)"#)
        .expect("static regex")
});
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
    let s: Cow<str> = GRAFANA_SEARCH_PATH.replace_all(sql, "IN ('public')");
    let s = COLLATE.replace_all(&s, "");
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

/// What a connection knows that a statement may refer to.
pub struct Session<'a> {
    /// The user who logged in (what `current_user` is).
    pub user: &'a str,
    /// Parameter types the client declared when it prepared the statement.
    pub declared: &'a [Option<pgwire::api::Type>],
}

/// The cast a declared parameter type pins placeholder `p` to (text and unknown leave the engine
/// to infer the type from context).
fn typed_placeholder(p: &str, t: &pgwire::api::Type) -> Option<String> {
    use pgwire::api::Type;
    let sql = match *t {
        Type::BOOL => "BOOLEAN",
        Type::INT2 => "SMALLINT",
        Type::INT4 => "INT",
        Type::INT8 => "BIGINT",
        Type::FLOAT4 => "REAL",
        Type::FLOAT8 | Type::NUMERIC => "DOUBLE",
        // `TIMESTAMP WITH TIME ZONE` would drop the zone here; say exactly what is meant.
        Type::TIMESTAMPTZ => {
            return Some(format!(
                "arrow_cast({p}, 'Timestamp(Nanosecond, Some(\"UTC\"))')"
            ));
        }
        Type::TIMESTAMP => "TIMESTAMP",
        Type::DATE => "DATE",
        Type::BYTEA => "BYTEA",
        _ => return None,
    };
    Some(format!("CAST({p} AS {sql})"))
}

/// PostgreSQL's view of a statement, for the engine: unqualified `pg_catalog` tables get their
/// schema (PostgreSQL searches it first), `current_user` / `session_user` become the login
/// user, and placeholders whose type the client declared are cast to it.
pub fn for_session(sql: &str, session: &Session<'_>) -> String {
    use std::ops::ControlFlow;

    use datafusion::sql::sqlparser::ast::{
        Expr, Ident, ObjectNamePart, SelectItem, SetExpr, Statement, Value, visit_expressions_mut,
        visit_relations_mut,
    };
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    let dialect = PostgreSqlDialect {};
    let Ok(mut statements) = Parser::parse_sql(&dialect, sql) else {
        return sql.to_string();
    };
    let parse = |text: String| {
        Parser::new(&dialect)
            .try_with_sql(&text)
            .ok()?
            .parse_expr()
            .ok()
    };
    let user = parse(format!("'{}'", session.user.replace('\'', "''")));
    let is_user_function = |e: &Expr| {
        matches!(e, Expr::Function(f)
            if matches!(f.name.to_string().to_ascii_lowercase().as_str(), "current_user" | "session_user" | "user")
                && f.args.to_string().trim_matches(|c| c == '(' || c == ')').is_empty())
    };
    let mut changed = false;
    for statement in &mut statements {
        // In a select list, the value keeps the function's name as its column name.
        if let Statement::Query(q) = statement
            && let SetExpr::Select(select) = q.body.as_mut()
            && let Some(u) = &user
        {
            for item in &mut select.projection {
                if let SelectItem::UnnamedExpr(e) = item
                    && is_user_function(e)
                {
                    let name = e.to_string().to_ascii_lowercase();
                    *item = SelectItem::ExprWithAlias {
                        expr: u.clone(),
                        alias: Ident::with_quote('"', name),
                    };
                    changed = true;
                }
            }
        }
        let _ = visit_relations_mut(statement, |name| {
            if name.0.len() == 1
                && let Some(ident) = name.0[0].as_ident()
                && super::catalog::CATALOG_TABLES.contains(&ident.value.as_str())
            {
                name.0
                    .insert(0, ObjectNamePart::Identifier(Ident::new("pg_catalog")));
                changed = true;
            }
            ControlFlow::<()>::Continue(())
        });
        let _ = visit_expressions_mut(statement, |expr| {
            match expr {
                _ if is_user_function(expr) => {
                    if let Some(u) = &user {
                        *expr = u.clone();
                        changed = true;
                    }
                }
                Expr::Value(v) => {
                    if let Value::Placeholder(p) = &v.value
                        && let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
                        && let Some(Some(t)) = session.declared.get(n.wrapping_sub(1))
                        && let Some(typed) = typed_placeholder(p, t)
                        && let Some(cast) = parse(typed)
                    {
                        *expr = cast;
                        changed = true;
                    }
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
    }
    if !changed {
        return sql.to_string();
    }
    statements
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ")
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
    fn sessions_adapt_statements() {
        use pgwire::api::Type;
        let session = Session {
            user: "me",
            declared: &[Some(Type::INT8), Some(Type::TEXT)],
        };
        assert_eq!(
            for_session("SELECT current_user, $1, $2 FROM pg_class", &session),
            "SELECT 'me' AS \"current_user\", CAST($1 AS BIGINT), $2 FROM pg_catalog.pg_class"
        );
        assert_eq!(for_session("SELECT 1", &session), "SELECT 1");
        let grafana = rewrite(
            r#"SELECT 1 FROM information_schema.tables WHERE quote_ident(table_schema) IN (
    SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM generate_series(array_lower(string_to_array(current_setting('search_path'), ','), 1),
                         array_upper(string_to_array(current_setting('search_path'), ','), 1)) AS i,
         string_to_array(current_setting('search_path'), ',') s)"#,
        );
        assert_eq!(
            grafana,
            "SELECT 1 FROM information_schema.tables WHERE quote_ident(table_schema) IN ('public')"
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
