//! Partial aggregates on store nodes.
//!
//! On a query node in a cluster, a scan's unflushed rows of store nodes either travel with the
//! snapshot (few of them) or stay set aside on their node until the scan runs
//! ([`oxeye_store::PinnedRows`]). For an aggregate over such a scan, moving the rows is wasted
//! work: the store node can run the first (partial) stage of the aggregate over them itself and
//! send only the states, which the query node merges with the states of its own part of the
//! scan in the final stage, as DataFusion merges the partitions of any partial aggregate.
//!
//! [`PushPartialAggregates`] rewrites `AggregateExec(Partial)` over filters and projections of
//! an [`OxeyeScanExec`] with rows set aside into a union of the same partial aggregate over the
//! scan's own parts and a [`RemotePartialExec`] that fetches each store node's states. The part
//! of the plan that travels is encoded with datafusion-proto, our scan being the one extension
//! ([`OxeyeCodec`]); it travels only when it decodes back to the same output here, so a store
//! node's states always fit the final stage. On the store node, [`StoreNodePartials`] decodes
//! it over the rows set aside (already cut by the query's row filters) and runs it.

use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::{StreamExt, TryStreamExt};
use oxeye_model::Signal;
use oxeye_store::{PartialAggregator, PinnedRows, ScanRequest, Store, StoreError};

use crate::convert::SqlShape;
use crate::table::{OxeyeScanExec, store_error};

/// Moves the partial stage of aggregates over store nodes' unflushed rows onto those nodes
/// (see the module doc). Runs first among the physical optimizer rules, while an aggregate's
/// partial stage still sits right above its filters and scan (no repartitioning in between).
#[derive(Debug)]
pub struct PushPartialAggregates {
    /// Functions a decoded plan may call, for the check that an encoded plan decodes back the
    /// same; set once the engine has registered them.
    functions: Arc<OnceLock<Arc<TaskContext>>>,
}

impl PushPartialAggregates {
    pub fn new(functions: Arc<OnceLock<Arc<TaskContext>>>) -> PushPartialAggregates {
        PushPartialAggregates { functions }
    }
}

impl PhysicalOptimizerRule for PushPartialAggregates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(functions) = self.functions.get() else {
            return Ok(plan);
        };
        plan.transform_down(|node| {
            Ok(match push_down(&node, functions) {
                Some(rewritten) => Transformed::new(rewritten, true, TreeNodeRecursion::Jump),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "push_partial_aggregates_to_store_nodes"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` with its partial stage split between this node and the store nodes, if it is a
/// partial aggregate over a scan with rows set aside on store nodes and its states can travel.
fn push_down(
    node: &Arc<dyn ExecutionPlan>,
    functions: &Arc<TaskContext>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let aggregate = node.downcast_ref::<AggregateExec>()?;
    if *aggregate.mode() != AggregateMode::Partial
        || aggregate
            .aggr_expr()
            .iter()
            .any(|a| a.order_sensitivity() == AggregateOrderSensitivity::HardRequirement)
    {
        return None;
    }
    // Filters and projections down to the scan, top first.
    let mut between: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    let mut below = aggregate.input().clone();
    let scan = loop {
        if let Some(scan) = below.downcast_ref::<OxeyeScanExec>() {
            break scan;
        }
        if below.downcast_ref::<FilterExec>().is_none()
            && below.downcast_ref::<ProjectionExec>().is_none()
        {
            return None;
        }
        between.push(below.clone());
        below = below.children().first().map(|c| Arc::clone(c))?;
    };
    let pinned = scan.remote_parts();
    if pinned.is_empty() {
        return None;
    }
    let recompute = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
    let over = |leaf: Arc<dyn ExecutionPlan>| -> Result<Arc<dyn ExecutionPlan>> {
        let input = between.iter().rev().try_fold(leaf, |child, parent| {
            parent.clone().replace_children(vec![child], recompute)
        })?;
        node.clone().replace_children(vec![input], recompute)
    };
    let attempt = || -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let remote_plan = over(below.clone())?;
        let encoded = datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
            remote_plan,
            &OxeyeCodec::for_encoding(),
        )?
        .to_vec();
        let decoded = datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
            &encoded,
            functions,
            &OxeyeCodec::for_checking(),
        )?;
        if !same_columns(&decoded.schema(), &node.schema()) {
            tracing::debug!(
                "a partial aggregate does not decode to the same states; its rows travel instead"
            );
            return Ok(None);
        }
        let local = over(Arc::new(scan.without_remote_parts()))?;
        let remote: Arc<dyn ExecutionPlan> = Arc::new(RemotePartialExec::new(
            scan.store().clone(),
            scan.request().clone(),
            pinned,
            Arc::new(encoded),
            node.schema(),
        ));
        UnionExec::try_new(vec![local, remote]).map(Some)
    };
    match attempt() {
        Ok(rewritten) => rewritten,
        Err(e) => {
            tracing::debug!(error = %e, "a partial aggregate cannot travel; its rows do instead");
            None
        }
    }
}

/// Same column names and types, in order.
fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields().iter())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// Our scan in an encoded plan: which table and columns it yields. On the store node it reads
/// the rows set aside for the query; when the query node checks an encoding it is empty.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ScanLeaf {
    table: String,
    projection: Option<Vec<usize>>,
    batch_size: usize,
    /// Row filters the plan relies on the scan for (no filter above applies them again), in
    /// their wire form: the store node must apply each of them.
    #[serde(default)]
    filters: Vec<String>,
}

/// What [`OxeyeCodec`] decodes our scan into.
enum LeafRows {
    /// Nothing to decode (the codec encodes).
    None,
    /// No rows, the right columns: for checking an encoding.
    Empty,
    /// The store node's rows, taken by the one scan of the plan, and the session that
    /// rebuilds the scan's filters.
    Rows {
        store: Store,
        state: Box<datafusion::execution::SessionState>,
        signal: Signal,
        rows: parking_lot::Mutex<Option<Vec<RecordBatch>>>,
    },
}

/// datafusion-proto's extension codec for plans with an [`OxeyeScanExec`] leaf. Functions
/// (`search()` too) travel by name and are found in the decoding node's session.
pub struct OxeyeCodec {
    leaf: LeafRows,
}

impl fmt::Debug for OxeyeCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OxeyeCodec")
    }
}

impl OxeyeCodec {
    fn for_encoding() -> OxeyeCodec {
        OxeyeCodec {
            leaf: LeafRows::None,
        }
    }

    fn for_checking() -> OxeyeCodec {
        OxeyeCodec {
            leaf: LeafRows::Empty,
        }
    }

    fn over_rows(
        store: Store,
        state: datafusion::execution::SessionState,
        signal: Signal,
        rows: Vec<RecordBatch>,
    ) -> OxeyeCodec {
        OxeyeCodec {
            leaf: LeafRows::Rows {
                store,
                state: Box::new(state),
                signal,
                rows: parking_lot::Mutex::new(Some(rows)),
            },
        }
    }
}

impl PhysicalExtensionCodec for OxeyeCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let leaf: ScanLeaf = serde_json::from_slice(buf)
            .map_err(|e| DataFusionError::Plan(format!("not an oxeye scan: {e}")))?;
        if !inputs.is_empty() {
            return Err(DataFusionError::Plan("an oxeye scan has no inputs".into()));
        }
        let signal = Signal::ALL
            .into_iter()
            .find(|s| s.table_name() == leaf.table)
            .ok_or_else(|| DataFusionError::Plan(format!("no table `{}`", leaf.table)))?;
        match &self.leaf {
            LeafRows::None => Err(DataFusionError::Plan(
                "this codec only encodes oxeye scans".into(),
            )),
            LeafRows::Empty => {
                let read = SqlShape::new(signal).read_plan(leaf.projection.as_ref())?;
                Ok(Arc::new(EmptyExec::new(read.schema)))
            }
            LeafRows::Rows {
                store,
                state,
                signal: rows_of,
                rows,
            } => {
                if *rows_of != signal {
                    return Err(DataFusionError::Plan(format!(
                        "the plan scans {signal}, the rows set aside are {rows_of}"
                    )));
                }
                let filter = leaf
                    .filters
                    .iter()
                    .map(|wire| {
                        crate::rowfilter::compile_wire(state, signal, wire).ok_or_else(|| {
                            DataFusionError::Plan(format!(
                                "this node cannot apply the scan filter {wire}"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let rows = rows.lock().take().ok_or_else(|| {
                    DataFusionError::Plan("a partial aggregate with more than one scan".into())
                })?;
                let scan = OxeyeScanExec::over_rows(
                    store.clone(),
                    signal,
                    leaf.projection,
                    rows,
                    filter,
                    leaf.batch_size.clamp(1, 1 << 20),
                )?;
                Ok(Arc::new(scan))
            }
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let scan = node.downcast_ref::<OxeyeScanExec>().ok_or_else(|| {
            DataFusionError::NotImplemented(format!("{} does not travel", node.name()))
        })?;
        let filters = scan
            .request()
            .filter
            .iter()
            .filter(|stage| stage.relied_on)
            .map(|stage| {
                stage.wire.clone().ok_or_else(|| {
                    DataFusionError::NotImplemented(format!(
                        "the scan filter {stage:?} does not travel"
                    ))
                })
            })
            .collect::<Result<Vec<String>>>()?;
        let leaf = ScanLeaf {
            table: scan.signal().table_name().to_string(),
            projection: scan.projection().cloned(),
            batch_size: scan.batch_size(),
            filters,
        };
        serde_json::to_writer(buf, &leaf)
            .map_err(|e| DataFusionError::Internal(format!("cannot encode a scan: {e}")))
    }
}

/// Fetches partial aggregate states from the store nodes that set rows aside for a scan: one
/// partition per node.
pub struct RemotePartialExec {
    store: Store,
    /// The scan's request: what of the rows set aside passes its row filters, time range and
    /// columns (the store node cuts them before aggregating).
    request: ScanRequest,
    pinned: Vec<PinnedRows>,
    /// The partial aggregate over the scan, encoded.
    plan: Arc<Vec<u8>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl RemotePartialExec {
    fn new(
        store: Store,
        request: ScanRequest,
        pinned: Vec<PinnedRows>,
        plan: Arc<Vec<u8>>,
        schema: SchemaRef,
    ) -> RemotePartialExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(pinned.len().max(1)),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        RemotePartialExec {
            store,
            request,
            pinned,
            plan,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl fmt::Debug for RemotePartialExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemotePartialExec")
            .field("nodes", &self.pinned.len())
            .finish()
    }
}

impl DisplayAs for RemotePartialExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "OxeyeRemotePartialAggregate: table={}, nodes={}, pinned_rows={}",
            self.request.signal,
            self.pinned.len(),
            self.pinned.iter().map(|p| p.rows).sum::<u64>()
        )
    }
}

impl ExecutionPlan for RemotePartialExec {
    fn name(&self) -> &str {
        "RemotePartialExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        let Some(pinned) = self.pinned.get(partition).cloned() else {
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let store = self.store.clone();
        let request = self.request.clone();
        let plan = self.plan.clone();
        let states = futures::stream::once(async move {
            store
                .aggregate_remote(&pinned, &request, plan)
                .await
                .map(|s| s.map_err(store_error))
                .map_err(store_error)
        })
        .try_flatten();
        let typed = schema.clone();
        let states = states.map(move |batch| {
            let batch = batch?;
            output_rows.add(batch.num_rows());
            // The states must be what the final stage expects, column for column.
            RecordBatch::try_new(typed.clone(), batch.columns().to_vec()).map_err(|e| {
                DataFusionError::Execution(format!(
                    "a store node's partial aggregate states do not fit this query's: {e}"
                ))
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, states)))
    }
}

/// Runs query nodes' partial aggregates on a store node ([`PartialAggregator`]): decodes the
/// plan over the rows set aside (only a partial aggregate over filters and projections of our
/// scan is accepted) and runs it on the query runtime.
pub struct StoreNodePartials {
    store: Store,
    ctx: datafusion::prelude::SessionContext,
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for StoreNodePartials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreNodePartials")
    }
}

impl StoreNodePartials {
    pub(crate) fn new(
        store: Store,
        ctx: datafusion::prelude::SessionContext,
        runtime: tokio::runtime::Handle,
    ) -> StoreNodePartials {
        StoreNodePartials {
            store,
            ctx,
            runtime,
        }
    }
}

/// Whether `plan` is what a query node sends: a partial aggregate over filters and
/// projections of one scan.
fn is_partial_over_a_scan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let Some(aggregate) = plan.downcast_ref::<AggregateExec>() else {
        return false;
    };
    if *aggregate.mode() != AggregateMode::Partial {
        return false;
    }
    let mut below = aggregate.input().clone();
    loop {
        if below.downcast_ref::<OxeyeScanExec>().is_some() {
            return true;
        }
        if below.downcast_ref::<FilterExec>().is_none()
            && below.downcast_ref::<ProjectionExec>().is_none()
        {
            return false;
        }
        match below.children().first() {
            Some(child) => below = Arc::clone(child),
            None => return false,
        }
    }
}

/// States a store node sends are buffered this many batches ahead of the query node.
const STATES_AHEAD: usize = 4;

impl PartialAggregator for StoreNodePartials {
    fn aggregate(
        &self,
        signal: Signal,
        plan: &[u8],
        rows: Vec<RecordBatch>,
    ) -> Result<
        (
            SchemaRef,
            futures::stream::BoxStream<'static, Result<RecordBatch, StoreError>>,
        ),
        StoreError,
    > {
        let invalid = |reason: String| StoreError::Invalid { reason };
        let task = self.ctx.task_ctx();
        let codec = OxeyeCodec::over_rows(self.store.clone(), self.ctx.state(), signal, rows);
        let plan = datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
            plan, &task, &codec,
        )
        .map_err(|e| invalid(format!("cannot decode the partial aggregate: {e}")))?;
        if !is_partial_over_a_scan(&plan) {
            return Err(invalid(
                "only a partial aggregate over filters and projections of a scan runs here".into(),
            ));
        }
        let schema = plan.schema();
        let (tx, rx) = tokio::sync::mpsc::channel(STATES_AHEAD);
        self.runtime.spawn(async move {
            let mut states = match datafusion::physical_plan::execute_stream(plan, task) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx
                        .send(Err(invalid(format!(
                            "cannot run the partial aggregate: {e}"
                        ))))
                        .await;
                    return;
                }
            };
            while let Some(batch) = states.next().await {
                let batch = batch.map_err(|e| StoreError::Invalid {
                    reason: format!("the partial aggregate failed: {e}"),
                });
                // A closed channel: the query node went away; stop working for it.
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        let mut rx = rx;
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
        Ok((schema, stream))
    }
}
