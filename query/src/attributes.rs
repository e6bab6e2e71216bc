//! `attributes['key']` answers text.
//!
//! Scans read attribute maps with dictionary-encoded values (see
//! `oxeye_model::schema::attributes_read_type`), which saves copying every value of every
//! attribute when a query wants one key. A lookup would then yield a dictionary column, and
//! DataFusion groups and sorts dictionary columns through its generic row format, which costs
//! more than the copy saved. This analyzer rule casts each lookup on a dictionary-valued map to
//! the dictionary's value type, so one string per row is materialised and the fast text
//! paths (grouping, comparison, output) apply, as they did when values were stored as text.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, Result};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::expr::{Cast, ScalarFunction};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};
use datafusion::optimizer::AnalyzerRule;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct AttributeLookupsAsText;

impl AttributeLookupsAsText {
    pub fn rule() -> Arc<dyn AnalyzerRule + Send + Sync> {
        Arc::new(AttributeLookupsAsText)
    }
}

impl AnalyzerRule for AttributeLookupsAsText {
    fn name(&self) -> &str {
        "oxeye_attribute_lookups_as_text"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        // Most queries have no map lookup; they skip the schema rebuilding below.
        if !has_field_lookup(&plan)? {
            return Ok(plan);
        }
        plan.transform_up_with_subqueries(|node| {
            // Expressions of a node are typed against its inputs; a node with several inputs
            // (joins) sees their schemas merged.
            let inputs = node.inputs();
            let schema = match inputs.as_slice() {
                [] => return Ok(Transformed::no(node)),
                [only] => only.schema().as_ref().clone(),
                [first, rest @ ..] => {
                    let mut merged = first.schema().as_ref().clone();
                    for other in rest {
                        merged.merge(other.schema());
                    }
                    merged
                }
            };
            let rewritten =
                node.map_expressions(|expr| expr.transform_up(|e| cast_lookup(e, &schema)))?;
            // This node's or an input's output types may have changed (a grouped lookup is
            // now text): let the node recompute its schema.
            rewritten.map_data(|n| n.recompute_schema())
        })
        .map(|t| t.data)
    }
}

fn is_field_lookup(expr: &Expr) -> bool {
    matches!(expr, Expr::ScalarFunction(ScalarFunction { func, .. }) if func.name() == "get_field")
}

/// Whether any expression of the plan (subqueries included) calls `get_field`.
fn has_field_lookup(plan: &LogicalPlan) -> Result<bool> {
    let mut found = false;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            found = expr.exists(|e| Ok(is_field_lookup(e)))?;
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    })?;
    Ok(found)
}

/// `get_field(map, key)` -> `CAST(get_field(map, key) AS <value type>)` when the map's values
/// are a dictionary.
fn cast_lookup(expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    // Only the single-value lookup; map_extract answers a list of values.
    if !is_field_lookup(&expr) {
        return Ok(Transformed::no(expr));
    }
    let Expr::ScalarFunction(ScalarFunction { args, .. }) = &expr else {
        return Ok(Transformed::no(expr));
    };
    let Some(map) = args.first() else {
        return Ok(Transformed::no(expr));
    };
    let Ok(map_type) = map.get_type(schema) else {
        return Ok(Transformed::no(expr));
    };
    let DataType::Map(entries, _) = map_type else {
        return Ok(Transformed::no(expr));
    };
    let DataType::Struct(children) = entries.data_type() else {
        return Ok(Transformed::no(expr));
    };
    let Some(DataType::Dictionary(_, value_type)) = children.get(1).map(|c| c.data_type()) else {
        return Ok(Transformed::no(expr));
    };
    let value_type = value_type.as_ref().clone();
    Ok(Transformed::yes(Expr::Cast(Cast::new(
        Box::new(expr),
        value_type,
    ))))
}
