//! Filters the store evaluates on storage rows while it reads them.
//!
//! Each conjunct of a query's filters that can be answered from storage columns alone becomes a
//! [`RowFilterStage`]: the Parquet reader decodes that stage's columns, keeps the rows that
//! pass, and decodes the remaining columns only for those rows. That matters most for wide
//! columns such as attribute maps, which dominate scan time.
//!
//! A conjunct qualifies when every column it reads is shown by SQL exactly as stored (not the
//! hex ids, not the computed `end_time`), or when it is `attributes['k'] = 'v'` on an attribute
//! map, which is tested here directly on the dictionary-keyed storage map. DataFusion still
//! applies every filter above the scan, so a stage only has to be exact, never complete.
//!
//! In a cluster, stages also travel to the store nodes with a query's snapshot request
//! ([`WireStage`]), so rows a filter rejects never leave the store node. A compiled conjunct
//! travels as SQL only when that SQL plans back to the very same expression, which is checked on
//! the query node before it is sent; a store node that cannot rebuild a stage sends the rows.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Int32Array, MapArray, StringArray,
};
use arrow::compute::prep_null_mask_filter;
use arrow::datatypes::{DataType, Int32Type, Schema};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::execution::SessionState;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::sql::unparser::expr_to_sql;
use oxeye_model::Signal;
use oxeye_store::{RowFilterCompiler, RowFilterStage};

use crate::convert::SqlShape;
use crate::pushdown::{attribute_key, column_name, text};
use datafusion::common::DataFusionError;
use oxeye_store::{IndexPredicate, TextQuery};

/// A row filter stage as it travels to a store node ([`RowFilterStage::wire`], JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireStage {
    /// A conjunct as SQL over the table's SQL columns.
    Sql(String),
    /// `column['key'] = 'value'` on an attribute map.
    MapEquals {
        column: String,
        key: String,
        value: String,
    },
}

impl WireStage {
    fn encode(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

/// The stages for `filters`, cheapest first. With `for_store_nodes`, compiled stages also get
/// their wire form (checking it costs a parse and a coercion per conjunct, so only reads that
/// ask store nodes for snapshots pay it).
///
/// Fails when a filter the scan answers exactly ([`applied_exactly`]) cannot be compiled, since
/// nothing above the scan would apply it.
pub fn stages(
    state: &dyn Session,
    shape: &SqlShape,
    filters: &[Expr],
    for_store_nodes: bool,
) -> Result<Vec<RowFilterStage>, DataFusionError> {
    let mut plain = Vec::new();
    let mut maps = Vec::new();
    for conjunct in filters.iter().flat_map(split_conjunction) {
        let exact = applied_exactly(shape.signal, conjunct);
        if let Some(stage) = map_equality(shape, conjunct) {
            maps.push(stage);
        } else if let Some(mut stage) = compiled(state, shape, conjunct) {
            if for_store_nodes {
                stage.wire =
                    as_sql(state, shape, conjunct).and_then(|sql| WireStage::Sql(sql).encode());
            }
            if let Some(search) = exact {
                stage.relied_on = true;
                stage.exact_index = search
                    .index_exact
                    .then_some(IndexPredicate::Text(search.query));
            }
            plain.push(stage);
        } else if exact.is_some() {
            return Err(DataFusionError::Plan(format!(
                "cannot evaluate `{conjunct}` while scanning {}",
                shape.signal
            )));
        }
    }
    // Attribute maps are the most expensive columns to decode: test them on the fewest rows.
    plain.extend(maps);
    Ok(plain)
}

/// A full-text search the scan answers exactly.
#[derive(Debug)]
pub struct ExactSearch {
    pub query: TextQuery,
    /// The column is all a segment index's text field holds (log bodies; a span's text field
    /// also has its event names), so a row-level index finds exactly the matching rows.
    pub index_exact: bool,
}

/// `conjunct` if the scan filters by it exactly, so DataFusion need not apply it again: a
/// full-text search (`search(column, 'constant query')`) of an indexed text column. The scan
/// evaluates it as a row filter on every row it reads, or selects exactly the matching rows
/// through a row-level index, and then the column need not be read at all (a count of matching
/// log lines comes from the index alone).
pub fn applied_exactly(signal: Signal, conjunct: &Expr) -> Option<ExactSearch> {
    let Expr::ScalarFunction(f) = conjunct else {
        return None;
    };
    let [column, query] = f.args.as_slice() else {
        return None;
    };
    if f.name() != "search" {
        return None;
    }
    let column = column_name(column)?;
    let index_exact = match (signal, column) {
        (Signal::Logs, "body") => true,
        (Signal::Spans, "status_message") => false,
        _ => return None,
    };
    let query = TextQuery::parse(text(query)?).ok()?;
    Some(ExactSearch { query, index_exact })
}

/// `conjunct` compiled against the storage columns it reads, if SQL shows them as stored.
fn compiled(state: &dyn Session, shape: &SqlShape, conjunct: &Expr) -> Option<RowFilterStage> {
    let storage = shape.signal.schema();
    let mut columns = Vec::new();
    for c in conjunct.column_refs() {
        let i = storage.index_of(&c.name).ok()?;
        let sql = shape.schema.field_with_name(&c.name).ok()?;
        if sql.data_type() != storage.field(i).data_type() {
            return None;
        }
        columns.push(i);
    }
    if columns.is_empty() {
        return None;
    }
    columns.sort_unstable();
    columns.dedup();
    let schema: Schema = storage.project(&columns).ok()?;
    let df_schema = DFSchema::try_from(schema).ok()?;
    let expr = match state.create_physical_expr(conjunct.clone(), &df_schema) {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, filter = %conjunct, "not evaluable in the scan");
            return None;
        }
    };
    Some(RowFilterStage {
        description: conjunct.to_string(),
        columns,
        wire: None,
        exact_index: None,
        relied_on: false,
        keep: Arc::new(move |batch: &RecordBatch| {
            let value = expr
                .evaluate(batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                // Boxed whole so the query layer still sees DataFusion's error kind (a bad
                // `search()` query is the user's mistake, not an internal failure).
                .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
            let mask = value
                .as_boolean_opt()
                .ok_or_else(|| ArrowError::ComputeError("a filter gave no booleans".into()))?;
            Ok(without_nulls(mask))
        }),
    })
}

/// `attributes['k'] = 'v'` (either side) on one of the signal's attribute maps.
fn map_equality(shape: &SqlShape, conjunct: &Expr) -> Option<RowFilterStage> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = conjunct
    else {
        return None;
    };
    let (access, value) = if attribute_key(left).is_some() {
        (left.as_ref(), right.as_ref())
    } else {
        (right.as_ref(), left.as_ref())
    };
    let key = attribute_key(access)?.to_string();
    let value = text(value)?.to_string();
    let map_column = map_column_of(access)?;
    map_equals_stage(shape.signal, conjunct.to_string(), map_column, key, value)
}

fn map_equals_stage(
    signal: Signal,
    description: String,
    map_column: &str,
    key: String,
    value: String,
) -> Option<RowFilterStage> {
    let column = signal.schema().index_of(map_column).ok()?;
    let wire = WireStage::MapEquals {
        column: map_column.to_string(),
        key: key.clone(),
        value: value.clone(),
    }
    .encode();
    Some(RowFilterStage {
        description,
        columns: vec![column],
        wire,
        exact_index: None,
        relied_on: false,
        keep: Arc::new(move |batch: &RecordBatch| {
            let map = batch
                .column(0)
                .as_map_opt()
                .ok_or_else(|| ArrowError::ComputeError("an attribute map was expected".into()))?;
            map_entry_equals(map, &key, &value)
        }),
    })
}

/// `conjunct` as SQL over the table's SQL columns, if that SQL plans back to the same
/// expression (same columns, functions, literals and types once coerced): only then may a store
/// node filter with it.
fn as_sql(state: &dyn Session, shape: &SqlShape, conjunct: &Expr) -> Option<String> {
    let state = state.as_any().downcast_ref::<SessionState>()?;
    let unqualified = conjunct
        .clone()
        .transform_up(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })
        .ok()?
        .data;
    let sql = expr_to_sql(&unqualified).ok()?.to_string();
    let schema = sql_schema(shape)?;
    let back = state.create_logical_expr(&sql, &schema).ok()?;
    // Coerced and folded, as planning leaves the original: a literal the optimizer already
    // cast to the column's type comes back from SQL as a cast of a literal.
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_schema(Arc::new(schema.clone()))
            .with_config_options(Arc::clone(state.config_options()))
            .build(),
    );
    let normal = |e: Expr| {
        let coerced = e
            .rewrite(&mut TypeCoercionRewriter::new(&schema))
            .ok()?
            .data;
        simplifier.simplify(coerced).ok()
    };
    (normal(back)? == normal(unqualified)?).then_some(sql)
}

fn sql_schema(shape: &SqlShape) -> Option<DFSchema> {
    DFSchema::try_from(shape.schema.as_ref().clone()).ok()
}

/// Rebuilds row filter stages on a store node, from what a query node sent with a snapshot
/// request.
#[derive(Debug)]
pub struct SnapshotFilters {
    state: SessionState,
}

impl SnapshotFilters {
    /// `state` must know the functions queries use (`search()`): the query engine's own.
    pub fn new(state: SessionState) -> SnapshotFilters {
        SnapshotFilters { state }
    }
}

/// The stage `wire` describes, rebuilt with `state`'s functions; it fails on rows as the
/// query node's own would.
pub(crate) fn compile_wire(
    state: &SessionState,
    signal: Signal,
    wire: &str,
) -> Option<RowFilterStage> {
    let shape = SqlShape::new(signal);
    match serde_json::from_str::<WireStage>(wire).ok()? {
        WireStage::Sql(sql) => {
            let expr = state.create_logical_expr(&sql, &sql_schema(&shape)?).ok()?;
            compiled(state, &shape, &expr)
        }
        WireStage::MapEquals { column, key, value } => {
            let field = signal.schema().field_with_name(&column).ok()?.clone();
            if !matches!(field.data_type(), DataType::Map(..)) {
                return None;
            }
            let description = format!("{column}['{key}'] = '{value}'");
            map_equals_stage(signal, description, &column, key, value)
        }
    }
}

impl RowFilterCompiler for SnapshotFilters {
    fn compile(&self, signal: Signal, wire: &str) -> Option<RowFilterStage> {
        let stage = compile_wire(&self.state, signal, wire)?;
        // A stage only narrows what is sent: when it cannot be evaluated here, the rows go to
        // the query node, which applies the same filter and reports what is wrong with it.
        let keep = stage.keep.clone();
        Some(RowFilterStage {
            keep: Arc::new(move |batch: &RecordBatch| {
                keep(batch).or_else(|_| Ok(BooleanArray::from(vec![true; batch.num_rows()])))
            }),
            ..stage
        })
    }
}

fn map_column_of(access: &Expr) -> Option<&str> {
    match access {
        Expr::ScalarFunction(f) => f.args.first().and_then(column_name),
        Expr::Cast(c) => map_column_of(&c.expr),
        _ => None,
    }
}

/// Per row: does the first entry with `key` hold `value`? (What `map['key'] = 'value'` means.)
pub fn map_entry_equals(
    map: &MapArray,
    key: &str,
    value: &str,
) -> Result<BooleanArray, ArrowError> {
    let keys = map
        .keys()
        .as_dictionary_opt::<Int32Type>()
        .ok_or_else(|| ArrowError::ComputeError("attribute keys are not a dictionary".into()))?;
    let key_texts = keys
        .values()
        .as_string_opt::<i32>()
        .ok_or_else(|| ArrowError::ComputeError("attribute keys are not text".into()))?;
    let wanted: Vec<bool> = key_texts.iter().map(|k| k == Some(key)).collect();
    let value_matches = ValueMatcher::new(map.values(), value)?;
    let offsets = map.value_offsets();
    let key_ids = keys.keys();
    let mut out = BooleanBufferBuilder::new(map.len());
    for row in 0..map.len() {
        let mut hit = false;
        if map.is_valid(row) {
            for entry in offsets[row] as usize..offsets[row + 1] as usize {
                let id = key_ids.value(entry);
                if key_ids.is_valid(entry) && wanted.get(id as usize).copied().unwrap_or(false) {
                    hit = value_matches.at(entry);
                    break;
                }
            }
        }
        out.append(hit);
    }
    Ok(BooleanArray::new(out.finish(), None))
}

/// Tests map values against one text, whether they are stored as text (rows in memory) or
/// read as a dictionary (rows from segments).
enum ValueMatcher<'a> {
    Text(&'a StringArray, &'a str),
    /// Per dictionary entry: does it equal the text?
    Dictionary(&'a Int32Array, Vec<bool>),
}

impl<'a> ValueMatcher<'a> {
    fn new(values: &'a ArrayRef, wanted: &'a str) -> Result<ValueMatcher<'a>, ArrowError> {
        if let Some(text) = values.as_string_opt::<i32>() {
            return Ok(ValueMatcher::Text(text, wanted));
        }
        let dict = values
            .as_dictionary_opt::<Int32Type>()
            .ok_or_else(|| ArrowError::ComputeError("attribute values are not text".into()))?;
        let texts = dict.values().as_string_opt::<i32>().ok_or_else(|| {
            ArrowError::ComputeError("attribute value dictionary is not text".into())
        })?;
        let equal = texts.iter().map(|v| v == Some(wanted)).collect();
        Ok(ValueMatcher::Dictionary(dict.keys(), equal))
    }

    fn at(&self, entry: usize) -> bool {
        match self {
            ValueMatcher::Text(values, wanted) => {
                values.is_valid(entry) && values.value(entry) == *wanted
            }
            ValueMatcher::Dictionary(keys, equal) => {
                keys.is_valid(entry)
                    && equal
                        .get(keys.value(entry) as usize)
                        .copied()
                        .unwrap_or(false)
            }
        }
    }
}

fn without_nulls(mask: &BooleanArray) -> BooleanArray {
    if mask.null_count() == 0 {
        mask.clone()
    } else {
        prep_null_mask_filter(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{MapBuilder, StringBuilder, StringDictionaryBuilder};

    fn map(rows: &[&[(&str, Option<&str>)]]) -> MapArray {
        let mut b = MapBuilder::new(
            None,
            StringDictionaryBuilder::<Int32Type>::new(),
            StringBuilder::new(),
        )
        .with_keys_field(oxeye_model::schema::map_key_field())
        .with_values_field(oxeye_model::schema::map_value_field());
        for row in rows {
            for (k, v) in *row {
                b.keys().append_value(*k);
                b.values().append_option(*v);
            }
            b.append(true).unwrap();
        }
        b.finish()
    }

    #[test]
    fn first_entry_with_the_key_decides() {
        let m = map(&[
            &[("a", Some("1")), ("b", Some("2"))],
            &[("b", Some("3"))],
            &[],
            &[("b", None)],
            &[("b", Some("2")), ("b", Some("9"))],
            &[("b", Some("9")), ("b", Some("2"))],
        ]);
        let as_read =
            oxeye_model::schema::to_read_array(&(Arc::new(m.clone()) as ArrayRef)).unwrap();
        // Rows in memory carry text values, rows from segments dictionary values: same answers.
        for m in [&m, as_read.as_map()] {
            let got = map_entry_equals(m, "b", "2").unwrap();
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                [true, false, false, false, true, false].map(Some)
            );
            let none = map_entry_equals(m, "zz", "2").unwrap();
            assert_eq!(none.true_count(), 0);
        }
    }
}
