//! Enough of PostgreSQL's `pg_catalog` for clients to connect and browse: psql's `\dt` and
//! `\d table`, psycopg, JDBC and Grafana's PostgreSQL data source. The tables describe oxeye's
//! real tables and columns; functions such as `version()` and `pg_table_is_visible()` answer
//! what those clients ask. Registered for every SQL surface (HTTP too), all read-only.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int16Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;

use super::types::pg_type;

pub const DATABASE: &str = "oxeye";
pub const USER: &str = "oxeye";
/// What `version()` and `server_version` report: clients parse the leading "PostgreSQL N".
pub const SERVER_VERSION: &str = "16.0";

/// Catalog tables that are always empty in oxeye (it has no indexes, constraints, defaults,
/// collations, ...). A subquery reading one of them yields no row.
pub const EMPTY_TABLES: &[&str] = &[
    "pg_index",
    "pg_constraint",
    "pg_inherits",
    "pg_description",
    "pg_attrdef",
    "pg_proc",
    "pg_am",
    "pg_collation",
    "pg_extension",
    "pg_trigger",
    "pg_policy",
    "pg_rewrite",
    "pg_statistic_ext",
    "pg_publication",
    "pg_publication_rel",
    "pg_foreign_table",
    "pg_partitioned_table",
    "pg_sequence",
    "pg_tablespace",
    "pg_event_trigger",
    "pg_enum",
    "pg_range",
    "pg_matviews",
    "pg_stat_activity",
];

/// Every `pg_catalog` table, so unqualified references can be resolved as PostgreSQL does.
pub const CATALOG_TABLES: &[&str] = &[
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_database",
    "pg_roles",
    "pg_authid",
    "pg_user",
    "pg_tables",
    "pg_views",
    "pg_settings",
    "pg_index",
    "pg_constraint",
    "pg_inherits",
    "pg_description",
    "pg_attrdef",
    "pg_proc",
    "pg_am",
    "pg_collation",
    "pg_extension",
    "pg_trigger",
    "pg_policy",
    "pg_rewrite",
    "pg_statistic_ext",
    "pg_publication",
    "pg_publication_rel",
    "pg_foreign_table",
    "pg_partitioned_table",
    "pg_sequence",
    "pg_tablespace",
    "pg_event_trigger",
    "pg_enum",
    "pg_range",
    "pg_matviews",
    "pg_stat_activity",
];

/// Settings `SHOW`, `current_setting()` and `pg_settings` report.
pub const SETTINGS: &[(&str, &str)] = &[
    ("server_version", SERVER_VERSION),
    ("server_version_num", "160000"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_read_only", "on"),
    ("transaction_read_only", "on"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("application_name", ""),
    ("extra_float_digits", "3"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("is_superuser", "off"),
];

/// A setting's value by name (case-insensitive), or empty when oxeye has no such setting.
pub fn setting(name: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .unwrap_or("")
}

/// The PostgreSQL type name information_schema reports for a column.
pub fn information_schema_type(dt: &DataType) -> &'static str {
    match dt {
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Dictionary(_, v) => information_schema_type(v),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "bytea",
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone",
        DataType::Timestamp(_, None) => "timestamp without time zone",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Map(..)
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_) => "json",
        _ => "text",
    }
}

const PG_CATALOG_NS: i64 = 11;
const PUBLIC_NS: i64 = 2200;
const INFORMATION_SCHEMA_NS: i64 = 13000;
const FIRST_TABLE_OID: i64 = 16384;

/// PostgreSQL's built-in types that oxeye's columns map to.
const TYPES: &[(i64, &str, i16)] = &[
    (16, "bool", 1),
    (17, "bytea", -1),
    (20, "int8", 8),
    (21, "int2", 2),
    (23, "int4", 4),
    (25, "text", -1),
    (26, "oid", 4),
    (114, "json", -1),
    (700, "float4", 4),
    (701, "float8", 8),
    (1043, "varchar", -1),
    (1082, "date", 4),
    (1114, "timestamp", 8),
    (1184, "timestamptz", 8),
    (1186, "interval", 16),
    (1700, "numeric", -1),
];

fn type_name(oid: i64) -> Option<&'static str> {
    TYPES.iter().find(|(o, _, _)| *o == oid).map(|(_, n, _)| *n)
}

/// A function that ignores its arguments and returns a constant (most catalog helpers).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

fn any_args() -> Signature {
    Signature::one_of(
        vec![TypeSignature::Nullary, TypeSignature::VariadicAny],
        Volatility::Stable,
    )
}

fn constant(name: &'static str, value: ScalarValue) -> ScalarUDF {
    ScalarUDF::new_from_impl(Constant {
        name,
        value,
        signature: any_args(),
    })
}

/// `format_type(type_oid, typemod)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FormatType {
    signature: Signature,
}

impl ScalarUDFImpl for FormatType {
    fn name(&self) -> &str {
        "format_type"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let oids = args.args[0].to_array(args.number_rows)?;
        let oids = arrow::compute::cast(&oids, &DataType::Int64)?;
        let oids = oids.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
            datafusion::error::DataFusionError::Execution("format_type needs a type oid".into())
        })?;
        let names: StringArray = oids.iter().map(|o| o.and_then(type_name)).collect();
        Ok(ColumnarValue::Array(Arc::new(names)))
    }
}

/// `quote_ident(text)`: quotes an identifier when it needs quotes.
#[derive(Debug, PartialEq, Eq, Hash)]
struct QuoteIdent {
    signature: Signature,
}

fn quote_ident(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

impl ScalarUDFImpl for QuoteIdent {
    fn name(&self) -> &str {
        "quote_ident"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = args.args[0].to_array(args.number_rows)?;
        let a = arrow::compute::cast(&a, &DataType::Utf8)?;
        let a = a.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
            datafusion::error::DataFusionError::Execution("quote_ident needs text".into())
        })?;
        let out: StringArray = a.iter().map(|v| v.map(quote_ident)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

fn functions() -> Vec<ScalarUDF> {
    let text = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
    vec![
        constant(
            "version",
            text(&format!(
                "PostgreSQL {SERVER_VERSION} (oxeye {}) on x86_64-pc-linux-gnu",
                env!("CARGO_PKG_VERSION")
            )),
        ),
        constant("current_database", text(DATABASE)),
        constant("current_schema", text("public")),
        constant("current_user", text(USER)),
        constant("session_user", text(USER)),
        constant("pg_get_userbyid", text(USER)),
        constant("pg_encoding_to_char", text("UTF8")),
        constant(
            "pg_backend_pid",
            ScalarValue::Int32(Some(std::process::id() as i32)),
        ),
        constant("pg_table_is_visible", ScalarValue::Boolean(Some(true))),
        constant("pg_type_is_visible", ScalarValue::Boolean(Some(true))),
        constant("has_table_privilege", ScalarValue::Boolean(Some(true))),
        constant("has_schema_privilege", ScalarValue::Boolean(Some(true))),
        constant("has_database_privilege", ScalarValue::Boolean(Some(true))),
        constant("pg_is_in_recovery", ScalarValue::Boolean(Some(false))),
        constant("obj_description", ScalarValue::Utf8(None)),
        constant("col_description", ScalarValue::Utf8(None)),
        constant("shobj_description", ScalarValue::Utf8(None)),
        constant("pg_get_expr", ScalarValue::Utf8(None)),
        constant("pg_get_constraintdef", ScalarValue::Utf8(None)),
        constant("pg_get_indexdef", ScalarValue::Utf8(None)),
        constant("pg_get_viewdef", ScalarValue::Utf8(None)),
        constant(
            "pg_tablespace_location",
            ScalarValue::Utf8(Some(String::new())),
        ),
        constant("txid_current", ScalarValue::Int64(Some(1))),
        ScalarUDF::new_from_impl(FormatType {
            signature: Signature::variadic_any(Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(QuoteIdent {
            signature: Signature::any(1, Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(CurrentSetting {
            signature: Signature::variadic_any(Volatility::Stable),
        }),
        ScalarUDF::new_from_impl(ParseIdent {
            signature: Signature::variadic_any(Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(ArrayBound {
            name: "array_lower",
            signature: Signature::any(2, Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(ArrayBound {
            name: "array_upper",
            signature: Signature::any(2, Volatility::Immutable),
        }),
    ]
}

fn first_text(args: &ScalarFunctionArgs) -> Result<StringArray> {
    let a = args.args[0].to_array(args.number_rows)?;
    let a = arrow::compute::cast(&a, &DataType::Utf8)?;
    Ok(a.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .unwrap_or_else(|| StringArray::from(Vec::<Option<&str>>::new())))
}

/// `current_setting(name)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = first_text(&args)?;
        let out: StringArray = a.iter().map(|v| v.map(setting)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `parse_ident('schema.table')` -> `['schema', 'table']` (quotes respected).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseIdent {
    signature: Signature,
}

fn parse_ident(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            c if quoted => cur.push(c),
            c => cur.push(c.to_ascii_lowercase()),
        }
    }
    parts.push(cur);
    parts
}

impl ScalarUDFImpl for ParseIdent {
    fn name(&self) -> &str {
        "parse_ident"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new(
            "item",
            DataType::Utf8,
            true,
        ))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = first_text(&args)?;
        let mut b = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new());
        for v in a.iter() {
            match v {
                Some(v) => {
                    for p in parse_ident(v) {
                        b.values().append_value(p);
                    }
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(b.finish())))
    }
}

/// `array_lower(a, 1)` is 1 and `array_upper(a, 1)` the length (PostgreSQL arrays start at 1);
/// NULL for an empty array or another dimension.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ArrayBound {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for ArrayBound {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let a = args.args[0].to_array(args.number_rows)?;
        let dims =
            arrow::compute::cast(&args.args[1].to_array(args.number_rows)?, &DataType::Int64)?;
        let dims = dims
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .unwrap_or_else(|| Int64Array::from(vec![1; a.len()]));
        let lengths: Vec<Option<usize>> = match a.data_type() {
            DataType::List(_) => {
                let l = a.as_any().downcast_ref::<arrow::array::ListArray>();
                (0..a.len())
                    .map(|i| {
                        l.filter(|l| l.is_valid(i))
                            .map(|l| l.value_length(i) as usize)
                    })
                    .collect()
            }
            _ => vec![None; a.len()],
        };
        let lower = self.name == "array_lower";
        let out: Int32Array = lengths
            .iter()
            .zip(dims.iter())
            .map(|(len, dim)| match (len, dim) {
                (Some(n), Some(1)) if *n > 0 => Some(if lower { 1 } else { *n as i32 }),
                _ => None,
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

fn mem_table(fields: Vec<Field>, columns: Vec<ArrayRef>) -> Result<Arc<MemTable>> {
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

fn f(name: &str, dt: DataType) -> Field {
    Field::new(name, dt, true)
}

fn texts(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn opt_texts(v: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(v))
}

fn acl_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// Access control lists: always NULL (default privileges).
fn null_acls(n: usize) -> ArrayRef {
    Arc::new(arrow::array::ListArray::new_null(
        Arc::new(Field::new("item", DataType::Utf8, true)),
        n,
    ))
}

fn ints(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

fn bools(v: Vec<bool>) -> ArrayRef {
    Arc::new(BooleanArray::from(v))
}

/// An empty table with these columns (catalog objects oxeye does not have: indexes, ...).
fn empty(cols: &[(&str, DataType)]) -> Result<Arc<MemTable>> {
    let schema: SchemaRef = Arc::new(Schema::new(
        cols.iter()
            .map(|(n, t)| f(n, t.clone()))
            .collect::<Vec<_>>(),
    ));
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// Registers `pg_catalog` and the helper functions in `ctx` (after oxeye's tables exist).
pub async fn register(ctx: &SessionContext) -> Result<()> {
    for udf in functions() {
        ctx.register_udf(udf);
    }
    let Some(catalog) = ctx.catalog(DATABASE) else {
        return Ok(());
    };
    let Some(public) = catalog.schema("public") else {
        return Ok(());
    };
    // Relations of the public schema, in a stable order.
    let mut names = public.table_names();
    names.sort();
    let mut rel: Vec<(i64, String, &'static str, SchemaRef)> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(t) = public.table(name).await? {
            let kind = match t.table_type() {
                datafusion::datasource::TableType::View => "v",
                _ => "r",
            };
            rel.push((FIRST_TABLE_OID + i as i64, name.clone(), kind, t.schema()));
        }
    }
    let n = rel.len();
    let pg = Arc::new(MemorySchemaProvider::new());

    pg.register_table(
        "pg_namespace".into(),
        mem_table(
            vec![
                f("oid", DataType::Int64),
                f("nspname", DataType::Utf8),
                f("nspowner", DataType::Int64),
                f("nspacl", acl_type()),
            ],
            vec![
                ints(vec![PG_CATALOG_NS, PUBLIC_NS, INFORMATION_SCHEMA_NS]),
                texts(&["pg_catalog", "public", "information_schema"]),
                ints(vec![10, 10, 10]),
                null_acls(3),
            ],
        )?,
    )?;

    let oids: Vec<i64> = rel.iter().map(|r| r.0).collect();
    pg.register_table(
        "pg_class".into(),
        mem_table(
            vec![
                f("oid", DataType::Int64),
                f("relname", DataType::Utf8),
                f("relnamespace", DataType::Int64),
                f("reltype", DataType::Int64),
                f("relowner", DataType::Int64),
                f("relam", DataType::Int64),
                f("reltablespace", DataType::Int64),
                f("reltuples", DataType::Float64),
                f("relhasindex", DataType::Boolean),
                f("relisshared", DataType::Boolean),
                f("relpersistence", DataType::Utf8),
                f("relkind", DataType::Utf8),
                f("relnatts", DataType::Int16),
                f("relchecks", DataType::Int16),
                f("relhasrules", DataType::Boolean),
                f("relhastriggers", DataType::Boolean),
                f("relhassubclass", DataType::Boolean),
                f("relrowsecurity", DataType::Boolean),
                f("relforcerowsecurity", DataType::Boolean),
                f("relispopulated", DataType::Boolean),
                f("relreplident", DataType::Utf8),
                f("relispartition", DataType::Boolean),
                f("reloptions", DataType::Utf8),
                f("relacl", acl_type()),
                f("reloftype", DataType::Int64),
                f("reltoastrelid", DataType::Int64),
                f("relpartbound", DataType::Utf8),
                f("relfilenode", DataType::Int64),
            ],
            vec![
                ints(oids.clone()),
                opt_texts(rel.iter().map(|r| Some(r.1.clone())).collect()),
                ints(vec![PUBLIC_NS; n]),
                ints(vec![0; n]),
                ints(vec![10; n]),
                ints(vec![0; n]),
                ints(vec![0; n]),
                Arc::new(arrow::array::Float64Array::from(vec![-1.0; n])),
                bools(vec![false; n]),
                bools(vec![false; n]),
                texts(&vec!["p"; n]),
                opt_texts(rel.iter().map(|r| Some(r.2.to_string())).collect()),
                Arc::new(Int16Array::from(
                    rel.iter()
                        .map(|r| r.3.fields().len() as i16)
                        .collect::<Vec<_>>(),
                )),
                Arc::new(Int16Array::from(vec![0i16; n])),
                bools(vec![false; n]),
                bools(vec![false; n]),
                bools(vec![false; n]),
                bools(vec![false; n]),
                bools(vec![false; n]),
                bools(vec![true; n]),
                texts(&vec!["d"; n]),
                bools(vec![false; n]),
                opt_texts(vec![None; n]),
                null_acls(n),
                ints(vec![0; n]),
                ints(vec![0; n]),
                opt_texts(vec![None; n]),
                ints(oids.clone()),
            ],
        )?,
    )?;

    let (mut a_rel, mut a_name, mut a_type, mut a_num, mut a_notnull, mut a_len) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (oid, _, _, schema) in &rel {
        for (i, field) in schema.fields().iter().enumerate() {
            let t = pg_type(field.data_type());
            a_rel.push(*oid);
            a_name.push(Some(field.name().clone()));
            a_type.push(t.oid() as i64);
            a_num.push(i as i16 + 1);
            a_notnull.push(!field.is_nullable());
            a_len.push(
                TYPES
                    .iter()
                    .find(|(o, _, _)| *o == t.oid() as i64)
                    .map(|x| x.2)
                    .unwrap_or(-1),
            );
        }
    }
    let m = a_rel.len();
    pg.register_table(
        "pg_attribute".into(),
        mem_table(
            vec![
                f("attrelid", DataType::Int64),
                f("attname", DataType::Utf8),
                f("atttypid", DataType::Int64),
                f("attlen", DataType::Int16),
                f("attnum", DataType::Int16),
                f("atttypmod", DataType::Int32),
                f("attnotnull", DataType::Boolean),
                f("atthasdef", DataType::Boolean),
                f("attidentity", DataType::Utf8),
                f("attgenerated", DataType::Utf8),
                f("attisdropped", DataType::Boolean),
                f("attcollation", DataType::Int64),
                f("attstattarget", DataType::Int16),
                f("attstorage", DataType::Utf8),
            ],
            vec![
                ints(a_rel),
                opt_texts(a_name),
                ints(a_type),
                Arc::new(Int16Array::from(a_len)),
                Arc::new(Int16Array::from(a_num)),
                Arc::new(Int32Array::from(vec![-1; m])),
                bools(a_notnull),
                bools(vec![false; m]),
                texts(&vec![""; m]),
                texts(&vec![""; m]),
                bools(vec![false; m]),
                ints(vec![0; m]),
                Arc::new(Int16Array::from(vec![-1i16; m])),
                texts(&vec!["x"; m]),
            ],
        )?,
    )?;

    let t = TYPES.len();
    pg.register_table(
        "pg_type".into(),
        mem_table(
            vec![
                f("oid", DataType::Int64),
                f("typname", DataType::Utf8),
                f("typnamespace", DataType::Int64),
                f("typowner", DataType::Int64),
                f("typlen", DataType::Int16),
                f("typtype", DataType::Utf8),
                f("typcategory", DataType::Utf8),
                f("typisdefined", DataType::Boolean),
                f("typrelid", DataType::Int64),
                f("typelem", DataType::Int64),
                f("typarray", DataType::Int64),
                f("typbasetype", DataType::Int64),
                f("typtypmod", DataType::Int32),
                f("typnotnull", DataType::Boolean),
                f("typinput", DataType::Utf8),
                f("typcollation", DataType::Int64),
            ],
            vec![
                ints(TYPES.iter().map(|x| x.0).collect()),
                opt_texts(TYPES.iter().map(|x| Some(x.1.to_string())).collect()),
                ints(vec![PG_CATALOG_NS; t]),
                ints(vec![10; t]),
                Arc::new(Int16Array::from(
                    TYPES.iter().map(|x| x.2).collect::<Vec<_>>(),
                )),
                texts(&vec!["b"; t]),
                texts(&vec!["U"; t]),
                bools(vec![true; t]),
                ints(vec![0; t]),
                ints(vec![0; t]),
                ints(vec![0; t]),
                ints(vec![0; t]),
                Arc::new(Int32Array::from(vec![-1; t])),
                bools(vec![false; t]),
                opt_texts(TYPES.iter().map(|x| Some(format!("{}in", x.1))).collect()),
                ints(vec![0; t]),
            ],
        )?,
    )?;

    pg.register_table(
        "pg_database".into(),
        mem_table(
            vec![
                f("oid", DataType::Int64),
                f("datname", DataType::Utf8),
                f("datdba", DataType::Int64),
                f("encoding", DataType::Int32),
                f("datcollate", DataType::Utf8),
                f("datctype", DataType::Utf8),
                f("datistemplate", DataType::Boolean),
                f("datallowconn", DataType::Boolean),
                f("datconnlimit", DataType::Int32),
                f("dattablespace", DataType::Int64),
                f("datacl", acl_type()),
                f("datlocprovider", DataType::Utf8),
                f("daticulocale", DataType::Utf8),
                f("daticurules", DataType::Utf8),
                f("datlocale", DataType::Utf8),
                f("datcollversion", DataType::Utf8),
            ],
            vec![
                ints(vec![1]),
                texts(&[DATABASE]),
                ints(vec![10]),
                Arc::new(Int32Array::from(vec![6])),
                texts(&["C"]),
                texts(&["C"]),
                bools(vec![false]),
                bools(vec![true]),
                Arc::new(Int32Array::from(vec![-1])),
                ints(vec![1663]),
                null_acls(1),
                texts(&["c"]),
                opt_texts(vec![None]),
                opt_texts(vec![None]),
                opt_texts(vec![None]),
                opt_texts(vec![None]),
            ],
        )?,
    )?;

    let role_cols = vec![
        f("oid", DataType::Int64),
        f("rolname", DataType::Utf8),
        f("rolsuper", DataType::Boolean),
        f("rolinherit", DataType::Boolean),
        f("rolcreaterole", DataType::Boolean),
        f("rolcreatedb", DataType::Boolean),
        f("rolcanlogin", DataType::Boolean),
        f("rolreplication", DataType::Boolean),
        f("rolconnlimit", DataType::Int32),
        f("rolbypassrls", DataType::Boolean),
    ];
    let role_vals = || -> Vec<ArrayRef> {
        vec![
            ints(vec![10]),
            texts(&[USER]),
            bools(vec![false]),
            bools(vec![true]),
            bools(vec![false]),
            bools(vec![false]),
            bools(vec![true]),
            bools(vec![false]),
            Arc::new(Int32Array::from(vec![-1])),
            bools(vec![false]),
        ]
    };
    pg.register_table(
        "pg_roles".into(),
        mem_table(role_cols.clone(), role_vals())?,
    )?;
    pg.register_table("pg_authid".into(), mem_table(role_cols, role_vals())?)?;
    pg.register_table(
        "pg_user".into(),
        mem_table(
            vec![
                f("usename", DataType::Utf8),
                f("usesysid", DataType::Int64),
                f("usesuper", DataType::Boolean),
            ],
            vec![texts(&[USER]), ints(vec![10]), bools(vec![false])],
        )?,
    )?;

    let tables: Vec<&(i64, String, &str, SchemaRef)> = rel.iter().filter(|r| r.2 == "r").collect();
    let k = tables.len();
    pg.register_table(
        "pg_tables".into(),
        mem_table(
            vec![
                f("schemaname", DataType::Utf8),
                f("tablename", DataType::Utf8),
                f("tableowner", DataType::Utf8),
                f("tablespace", DataType::Utf8),
                f("hasindexes", DataType::Boolean),
                f("hasrules", DataType::Boolean),
                f("hastriggers", DataType::Boolean),
                f("rowsecurity", DataType::Boolean),
            ],
            vec![
                texts(&vec!["public"; k]),
                opt_texts(tables.iter().map(|r| Some(r.1.clone())).collect()),
                texts(&vec![USER; k]),
                opt_texts(vec![None; k]),
                bools(vec![false; k]),
                bools(vec![false; k]),
                bools(vec![false; k]),
                bools(vec![false; k]),
            ],
        )?,
    )?;
    let views: Vec<&(i64, String, &str, SchemaRef)> = rel.iter().filter(|r| r.2 == "v").collect();
    let v = views.len();
    pg.register_table(
        "pg_views".into(),
        mem_table(
            vec![
                f("schemaname", DataType::Utf8),
                f("viewname", DataType::Utf8),
                f("viewowner", DataType::Utf8),
                f("definition", DataType::Utf8),
            ],
            vec![
                texts(&vec!["public"; v]),
                opt_texts(views.iter().map(|r| Some(r.1.clone())).collect()),
                texts(&vec![USER; v]),
                opt_texts(vec![None; v]),
            ],
        )?,
    )?;

    let settings = SETTINGS;
    pg.register_table(
        "pg_settings".into(),
        mem_table(
            vec![
                f("name", DataType::Utf8),
                f("setting", DataType::Utf8),
                f("unit", DataType::Utf8),
                f("category", DataType::Utf8),
            ],
            vec![
                opt_texts(settings.iter().map(|s| Some(s.0.to_string())).collect()),
                opt_texts(settings.iter().map(|s| Some(s.1.to_string())).collect()),
                opt_texts(vec![None; settings.len()]),
                texts(&vec!["oxeye"; settings.len()]),
            ],
        )?,
    )?;

    // Objects oxeye does not have: present and empty, so joins against them work.
    let oid = || ("oid", DataType::Int64);
    let empties = [
        (
            "pg_index",
            vec![
                ("indexrelid", DataType::Int64),
                ("indrelid", DataType::Int64),
                ("indisprimary", DataType::Boolean),
                ("indisunique", DataType::Boolean),
                ("indisclustered", DataType::Boolean),
                ("indisvalid", DataType::Boolean),
                ("indkey", DataType::Utf8),
            ],
        ),
        (
            "pg_constraint",
            vec![
                oid(),
                ("conname", DataType::Utf8),
                ("connamespace", DataType::Int64),
                ("contype", DataType::Utf8),
                ("conrelid", DataType::Int64),
                ("confrelid", DataType::Int64),
                ("conkey", DataType::Utf8),
                ("confkey", DataType::Utf8),
            ],
        ),
        (
            "pg_inherits",
            vec![
                ("inhrelid", DataType::Int64),
                ("inhparent", DataType::Int64),
                ("inhseqno", DataType::Int32),
            ],
        ),
        (
            "pg_description",
            vec![
                ("objoid", DataType::Int64),
                ("classoid", DataType::Int64),
                ("objsubid", DataType::Int32),
                ("description", DataType::Utf8),
            ],
        ),
        (
            "pg_attrdef",
            vec![
                oid(),
                ("adrelid", DataType::Int64),
                ("adnum", DataType::Int16),
                ("adbin", DataType::Utf8),
            ],
        ),
        (
            "pg_proc",
            vec![
                oid(),
                ("proname", DataType::Utf8),
                ("pronamespace", DataType::Int64),
                ("prorettype", DataType::Int64),
                ("prokind", DataType::Utf8),
            ],
        ),
        (
            "pg_am",
            vec![
                oid(),
                ("amname", DataType::Utf8),
                ("amtype", DataType::Utf8),
            ],
        ),
        (
            "pg_collation",
            vec![
                oid(),
                ("collname", DataType::Utf8),
                ("collnamespace", DataType::Int64),
            ],
        ),
        (
            "pg_extension",
            vec![
                oid(),
                ("extname", DataType::Utf8),
                ("extversion", DataType::Utf8),
                ("extnamespace", DataType::Int64),
            ],
        ),
        (
            "pg_trigger",
            vec![
                oid(),
                ("tgrelid", DataType::Int64),
                ("tgname", DataType::Utf8),
                ("tgenabled", DataType::Utf8),
                ("tgisinternal", DataType::Boolean),
            ],
        ),
        (
            "pg_policy",
            vec![
                oid(),
                ("polname", DataType::Utf8),
                ("polrelid", DataType::Int64),
            ],
        ),
        (
            "pg_rewrite",
            vec![
                oid(),
                ("rulename", DataType::Utf8),
                ("ev_class", DataType::Int64),
            ],
        ),
        (
            "pg_statistic_ext",
            vec![
                oid(),
                ("stxrelid", DataType::Int64),
                ("stxname", DataType::Utf8),
            ],
        ),
        ("pg_publication", vec![oid(), ("pubname", DataType::Utf8)]),
        (
            "pg_publication_rel",
            vec![
                oid(),
                ("prpubid", DataType::Int64),
                ("prrelid", DataType::Int64),
            ],
        ),
        (
            "pg_foreign_table",
            vec![("ftrelid", DataType::Int64), ("ftserver", DataType::Int64)],
        ),
        (
            "pg_partitioned_table",
            vec![
                ("partrelid", DataType::Int64),
                ("partstrat", DataType::Utf8),
            ],
        ),
        ("pg_sequence", vec![("seqrelid", DataType::Int64)]),
        ("pg_tablespace", vec![oid(), ("spcname", DataType::Utf8)]),
        ("pg_event_trigger", vec![oid(), ("evtname", DataType::Utf8)]),
        (
            "pg_enum",
            vec![
                oid(),
                ("enumtypid", DataType::Int64),
                ("enumlabel", DataType::Utf8),
                ("enumsortorder", DataType::Float64),
            ],
        ),
        (
            "pg_range",
            vec![
                ("rngtypid", DataType::Int64),
                ("rngsubtype", DataType::Int64),
            ],
        ),
        (
            "pg_matviews",
            vec![
                ("schemaname", DataType::Utf8),
                ("matviewname", DataType::Utf8),
            ],
        ),
        (
            "pg_stat_activity",
            vec![
                ("datname", DataType::Utf8),
                ("pid", DataType::Int32),
                ("usename", DataType::Utf8),
                ("state", DataType::Utf8),
                ("query", DataType::Utf8),
            ],
        ),
    ];
    debug_assert!(
        empties.iter().all(|(n, _)| EMPTY_TABLES.contains(n)),
        "EMPTY_TABLES lists every empty table"
    );
    for (name, cols) in empties {
        pg.register_table(name.into(), empty(&cols)?)?;
    }
    catalog.register_schema("pg_catalog", pg)?;
    Ok(())
}

/// Registers an `information_schema` (tables, columns, schemata, views) describing every table
/// with PostgreSQL type names, which tools such as Grafana read; called last.
pub async fn register_information_schema(ctx: &SessionContext) -> Result<()> {
    let Some(catalog) = ctx.catalog(DATABASE) else {
        return Ok(());
    };
    let mut schemas = catalog.schema_names();
    schemas.sort();
    let (mut t_schema, mut t_name, mut t_type) = (vec![], vec![], vec![]);
    let (mut c_schema, mut c_table, mut c_name, mut c_pos, mut c_null, mut c_type, mut c_udt) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut views = vec![];
    for schema_name in &schemas {
        let Some(schema) = catalog.schema(schema_name) else {
            continue;
        };
        let mut names = schema.table_names();
        names.sort();
        for name in names {
            let Some(table) = schema.table(&name).await? else {
                continue;
            };
            let kind = match table.table_type() {
                datafusion::datasource::TableType::View => {
                    views.push((schema_name.clone(), name.clone()));
                    "VIEW"
                }
                _ => "BASE TABLE",
            };
            t_schema.push(Some(schema_name.clone()));
            t_name.push(Some(name.clone()));
            t_type.push(Some(kind.to_string()));
            for (i, f) in table.schema().fields().iter().enumerate() {
                c_schema.push(Some(schema_name.clone()));
                c_table.push(Some(name.clone()));
                c_name.push(Some(f.name().clone()));
                c_pos.push(i as i64 + 1);
                c_null.push(Some(if f.is_nullable() { "YES" } else { "NO" }.to_string()));
                c_type.push(Some(information_schema_type(f.data_type()).to_string()));
                c_udt.push(type_name(pg_type(f.data_type()).oid() as i64).map(str::to_string));
            }
        }
    }
    let info = Arc::new(MemorySchemaProvider::new());
    let n = t_name.len();
    info.register_table(
        "tables".into(),
        mem_table(
            vec![
                f("table_catalog", DataType::Utf8),
                f("table_schema", DataType::Utf8),
                f("table_name", DataType::Utf8),
                f("table_type", DataType::Utf8),
            ],
            vec![
                texts(&vec![DATABASE; n]),
                opt_texts(t_schema),
                opt_texts(t_name),
                opt_texts(t_type),
            ],
        )?,
    )?;
    let m = c_name.len();
    info.register_table(
        "columns".into(),
        mem_table(
            vec![
                f("table_catalog", DataType::Utf8),
                f("table_schema", DataType::Utf8),
                f("table_name", DataType::Utf8),
                f("column_name", DataType::Utf8),
                f("ordinal_position", DataType::Int64),
                f("column_default", DataType::Utf8),
                f("is_nullable", DataType::Utf8),
                f("data_type", DataType::Utf8),
                f("character_maximum_length", DataType::Int64),
                f("numeric_precision", DataType::Int64),
                f("numeric_scale", DataType::Int64),
                f("udt_name", DataType::Utf8),
            ],
            vec![
                texts(&vec![DATABASE; m]),
                opt_texts(c_schema),
                opt_texts(c_table),
                opt_texts(c_name),
                ints(c_pos),
                opt_texts(vec![None; m]),
                opt_texts(c_null),
                opt_texts(c_type),
                Arc::new(Int64Array::from(vec![None; m])),
                Arc::new(Int64Array::from(vec![None; m])),
                Arc::new(Int64Array::from(vec![None; m])),
                opt_texts(c_udt),
            ],
        )?,
    )?;
    let k = schemas.len() + 1;
    let mut schema_names: Vec<Option<String>> = schemas.iter().cloned().map(Some).collect();
    schema_names.push(Some("information_schema".into()));
    info.register_table(
        "schemata".into(),
        mem_table(
            vec![
                f("catalog_name", DataType::Utf8),
                f("schema_name", DataType::Utf8),
                f("schema_owner", DataType::Utf8),
            ],
            vec![
                texts(&vec![DATABASE; k]),
                opt_texts(schema_names),
                texts(&vec![USER; k]),
            ],
        )?,
    )?;
    let v = views.len();
    info.register_table(
        "views".into(),
        mem_table(
            vec![
                f("table_catalog", DataType::Utf8),
                f("table_schema", DataType::Utf8),
                f("table_name", DataType::Utf8),
                f("view_definition", DataType::Utf8),
            ],
            vec![
                texts(&vec![DATABASE; v]),
                opt_texts(views.iter().map(|x| Some(x.0.clone())).collect()),
                opt_texts(views.iter().map(|x| Some(x.1.clone())).collect()),
                opt_texts(vec![None; v]),
            ],
        )?,
    )?;
    catalog.register_schema("information_schema", info)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_parse() {
        assert_eq!(super::parse_ident("public.Spans"), vec!["public", "spans"]);
        assert_eq!(super::parse_ident("\"My.Table\""), vec!["My.Table"]);
    }

    #[test]
    fn identifiers_are_quoted_when_needed() {
        assert_eq!(super::quote_ident("spans"), "spans");
        assert_eq!(super::quote_ident("Spans"), "\"Spans\"");
        assert_eq!(super::quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
