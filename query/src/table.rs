//! DataFusion tables over the store: `spans`, `logs`, `metrics`, `histograms`,
//! `exp_histograms`, `summaries`.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use oxeye_model::Signal;
use oxeye_store::{ScanPart, ScanPlan, ScanRequest, Store};

use crate::convert::{SqlShape, to_sql_batch};
use crate::pushdown::{ScanHints, analyze, is_useful};

/// One signal's table.
#[derive(Debug)]
pub struct OxeyeTable {
    store: Store,
    shape: SqlShape,
}

impl OxeyeTable {
    pub fn new(store: Store, signal: Signal) -> OxeyeTable {
        OxeyeTable {
            store,
            shape: SqlShape::new(signal),
        }
    }
}

#[async_trait]
impl TableProvider for OxeyeTable {
    fn schema(&self) -> SchemaRef {
        self.shape.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if is_useful(self.shape.signal, f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let hints = analyze(self.shape.signal, filters);
        let request = ScanRequest {
            signal: self.shape.signal,
            start: hints.start,
            end: hints.end,
            index: hints.index.clone(),
        };
        let plan = self
            .store
            .plan_scan(request)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let schema = self.shape.projected_schema(projection)?;
        let storage_projection = self.shape.storage_projection(projection);
        let partitions = state.config().target_partitions().max(1);
        Ok(Arc::new(OxeyeScanExec::new(
            self.store.clone(),
            self.shape.signal,
            plan,
            hints,
            schema,
            storage_projection,
            state.config().batch_size(),
            // Without filters the scan may stop early; with them, DataFusion's own limit above
            // the filter does it.
            if filters.is_empty() { limit } else { None },
            partitions,
        )))
    }
}

/// Reads a store scan plan, part by part, spread over partitions.
pub struct OxeyeScanExec {
    store: Store,
    signal: Signal,
    plan: Arc<ScanPlan>,
    hints: ScanHints,
    schema: SchemaRef,
    storage_projection: Vec<usize>,
    batch_size: usize,
    limit: Option<usize>,
    /// Parts of the plan each partition reads.
    assignment: Vec<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl fmt::Debug for OxeyeScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OxeyeScanExec")
            .field("signal", &self.signal)
            .finish()
    }
}

impl OxeyeScanExec {
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: Store,
        signal: Signal,
        plan: ScanPlan,
        hints: ScanHints,
        schema: SchemaRef,
        storage_projection: Vec<usize>,
        batch_size: usize,
        limit: Option<usize>,
        max_partitions: usize,
    ) -> OxeyeScanExec {
        let n = plan.parts.len().clamp(1, max_partitions);
        let mut assignment = vec![Vec::new(); n];
        for i in 0..plan.parts.len() {
            assignment[i % n].push(i);
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        OxeyeScanExec {
            store,
            signal,
            plan: Arc::new(plan),
            hints,
            schema,
            storage_projection,
            batch_size,
            limit,
            assignment,
            properties,
        }
    }

    pub fn stats(&self) -> &oxeye_store::ScanStats {
        &self.plan.stats
    }
}

impl DisplayAs for OxeyeScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let s = &self.plan.stats;
        write!(f, "OxeyeScan: table={}", self.signal)?;
        if self.hints.start.is_some() || self.hints.end.is_some() {
            write!(f, ", time=[{:?}, {:?})", self.hints.start, self.hints.end)?;
        }
        if let Some(ix) = &self.hints.index {
            write!(f, ", index={ix:?}")?;
        }
        write!(
            f,
            ", segments={}/{} (pruned by time {}, by index {}), granules={}, memory_batches={}",
            s.segments_total - s.segments_pruned_by_time - s.segments_pruned_by_index,
            s.segments_total,
            s.segments_pruned_by_time,
            s.segments_pruned_by_index,
            s.granules_selected,
            s.memory_batches
        )?;
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for OxeyeScanExec {
    fn name(&self) -> &str {
        "OxeyeScanExec"
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

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let parts: Vec<ScanPart> = self
            .assignment
            .get(partition)
            .ok_or_else(|| DataFusionError::Internal(format!("no partition {partition}")))?
            .iter()
            .map(|i| self.plan.parts[*i].clone())
            .collect();
        let store = self.store.clone();
        let plan = self.plan.clone();
        let projection = self.storage_projection.clone();
        let batch_size = self.batch_size;
        let schema = self.schema.clone();
        let out_schema = schema.clone();
        let stream = futures::stream::iter(parts)
            .then(move |part| {
                let store = store.clone();
                let plan = plan.clone();
                let projection = projection.clone();
                async move {
                    store
                        .read_part(&plan, &part, Some(projection), batch_size)
                        .await
                        .map(|s| s.map_err(|e| DataFusionError::External(Box::new(e))))
                        .map_err(|e| DataFusionError::External(Box::new(e)))
                }
            })
            .try_flatten()
            .map(move |r| r.and_then(|b| to_sql_batch(&b, &schema).map_err(DataFusionError::from)));
        let stream: futures::stream::BoxStream<'static, Result<arrow::record_batch::RecordBatch>> =
            match self.limit {
                Some(limit) => {
                    let mut remaining = limit;
                    stream
                        .take_while(move |r| {
                            let go = remaining > 0;
                            if let Ok(b) = r {
                                remaining = remaining.saturating_sub(b.num_rows());
                            }
                            futures::future::ready(go)
                        })
                        .boxed()
                }
                None => stream.boxed(),
            };
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}
