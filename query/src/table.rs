//! DataFusion tables over the store: `spans`, `logs`, `metrics`, `histograms`,
//! `exp_histograms`, `summaries`.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::statistics::StatisticsArgs;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use oxeye_model::Signal;
use oxeye_store::{ScanPart, ScanPlan, ScanRequest, Store};

use crate::convert::{ReadPlan, SqlShape, to_sql_batch};
use crate::pushdown::{ScanHints, analyze};
use crate::rowfilter;

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

    /// Every filter is offered to the scan: time and index predicates prune what is read,
    /// and those answerable from storage columns filter rows while they are read (see
    /// `rowfilter`). Full-text searches of indexed text columns are applied exactly by the
    /// scan (`rowfilter::applied_exactly`), so a count of matching log lines needs neither the
    /// column nor a filter above the scan; every other filter stays inexact and DataFusion
    /// applies it again.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match rowfilter::applied_exactly(self.shape.signal, f) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Inexact,
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
        let partitions = state.config().target_partitions().max(1);
        let read = self.shape.read_plan(projection)?;
        // Without filters the scan may stop early; with them, DataFusion's own limit above
        // the filter does it.
        let limit = if filters.is_empty() { limit } else { None };
        let request = ScanRequest {
            signal: self.shape.signal,
            start: hints.start,
            end: hints.end,
            index: hints.index.clone(),
            filter: rowfilter::stages(state, &self.shape, filters, self.store.has_remote_shards())?,
            parallelism: partitions,
            attribute_values_as_dictionary: true,
            columns: Some(read.storage.clone()),
            limit,
        };
        let plan = self.store.plan_scan(request).await.map_err(store_error)?;
        Ok(Arc::new(OxeyeScanExec::new(
            self.store.clone(),
            self.shape.signal,
            plan,
            hints,
            ScanColumns {
                projection: projection.cloned(),
                read,
            },
            state.config().batch_size(),
            limit,
            partitions,
        )))
    }
}

/// The SQL columns a scan yields: the table's projection and how it is read from storage.
#[derive(Debug, Clone)]
pub(crate) struct ScanColumns {
    pub projection: Option<Vec<usize>>,
    pub read: ReadPlan,
}

/// Reads a store scan plan, part by part, spread over partitions.
pub struct OxeyeScanExec {
    store: Store,
    signal: Signal,
    plan: Arc<ScanPlan>,
    hints: ScanHints,
    read: Arc<ReadPlan>,
    /// The table's columns the scan yields (`None`: all), as SQL numbers them.
    projection: Option<Vec<usize>>,
    batch_size: usize,
    limit: Option<usize>,
    /// Parts of the plan each partition reads.
    assignment: Vec<Vec<usize>>,
    max_partitions: usize,
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
        columns: ScanColumns,
        batch_size: usize,
        limit: Option<usize>,
        max_partitions: usize,
    ) -> OxeyeScanExec {
        let ScanColumns { projection, read } = columns;
        // A read of at most one batch is not worth spreading over threads (see
        // `statistics_from_inputs`).
        let max_rows: u64 = plan.parts.iter().map(ScanPart::max_rows).sum();
        let n = if max_rows <= batch_size as u64 {
            1
        } else {
            plan.parts.len().clamp(1, max_partitions)
        };
        let mut assignment = vec![Vec::new(); n];
        for i in 0..plan.parts.len() {
            assignment[i % n].push(i);
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(read.schema.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        OxeyeScanExec {
            store,
            signal,
            plan: Arc::new(plan),
            hints,
            read: Arc::new(read),
            projection,
            batch_size,
            limit,
            assignment,
            max_partitions,
            properties,
        }
    }

    /// A scan of rows in hand (unflushed rows a store node set aside for a query node, cut by
    /// the query's filters as far as the node could rebuild them), filtered by `filter` and
    /// yielding `projection` of `signal`'s table as the query node's scan would.
    pub(crate) fn over_rows(
        store: Store,
        signal: Signal,
        projection: Option<Vec<usize>>,
        rows: Vec<arrow::record_batch::RecordBatch>,
        filter: Vec<oxeye_store::RowFilterStage>,
        batch_size: usize,
    ) -> Result<OxeyeScanExec> {
        let read = SqlShape::new(signal).read_plan(projection.as_ref())?;
        let request = ScanRequest {
            attribute_values_as_dictionary: true,
            columns: Some(read.storage.clone()),
            filter,
            ..ScanRequest::all(signal)
        };
        let plan = ScanPlan {
            request,
            parts: vec![ScanPart::Memory { batches: rows }],
            stats: Default::default(),
        };
        Ok(OxeyeScanExec::new(
            store,
            signal,
            plan,
            ScanHints::default(),
            ScanColumns { projection, read },
            batch_size,
            None,
            1,
        ))
    }

    pub fn stats(&self) -> &oxeye_store::ScanStats {
        &self.plan.stats
    }

    pub(crate) fn signal(&self) -> Signal {
        self.signal
    }

    pub(crate) fn projection(&self) -> Option<&Vec<usize>> {
        self.projection.as_ref()
    }

    pub(crate) fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn request(&self) -> &ScanRequest {
        &self.plan.request
    }

    /// The rows store nodes set aside for this scan.
    pub(crate) fn remote_parts(&self) -> Vec<oxeye_store::PinnedRows> {
        self.plan
            .parts
            .iter()
            .filter_map(|p| match p {
                ScanPart::Remote(pinned) => Some(pinned.clone()),
                _ => None,
            })
            .collect()
    }

    /// This scan without the rows store nodes set aside for it (read elsewhere instead).
    pub(crate) fn without_remote_parts(&self) -> OxeyeScanExec {
        let mut plan = ScanPlan::clone(&self.plan);
        plan.parts.retain(|p| !matches!(p, ScanPart::Remote(_)));
        plan.stats.pinned_rows = 0;
        OxeyeScanExec::new(
            self.store.clone(),
            self.signal,
            plan,
            self.hints.clone(),
            ScanColumns {
                projection: self.projection.clone(),
                read: ReadPlan::clone(&self.read),
            },
            self.batch_size,
            self.limit,
            self.max_partitions,
        )
    }

    /// Most rows `partition` (or every partition) reads.
    fn max_rows(&self, partition: Option<usize>) -> u64 {
        let parts: Box<dyn Iterator<Item = &ScanPart>> = match partition {
            Some(p) => Box::new(
                self.assignment
                    .get(p)
                    .into_iter()
                    .flatten()
                    .filter_map(|i| self.plan.parts.get(*i)),
            ),
            None => Box::new(self.plan.parts.iter()),
        };
        let rows: u64 = parts.map(ScanPart::max_rows).sum();
        match self.limit {
            Some(l) => rows.min(l as u64),
            None => rows,
        }
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
        if !self.plan.request.filter.is_empty() {
            write!(f, ", row_filter={:?}", self.plan.request.filter)?;
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
        if s.snapshot_rows > 0 {
            write!(f, ", snapshot_rows={}", s.snapshot_rows)?;
        }
        if s.pinned_rows > 0 {
            write!(f, ", pinned_rows={}", s.pinned_rows)?;
        }
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

    /// An upper bound of the rows read, so DataFusion does not spread a read of a few
    /// thousand rows over threads (the engine sets
    /// `use_row_number_estimates_to_optimize_partitioning`): for small queries the
    /// repartitioning costs more than the work.
    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let mut stats = Statistics::new_unknown(&self.read.schema);
        let rows = usize::try_from(self.max_rows(args.partition())).unwrap_or(usize::MAX);
        stats.num_rows = Precision::Inexact(rows);
        Ok(Arc::new(stats))
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
        let projection = self.read.storage.clone();
        let batch_size = self.batch_size;
        let read = self.read.clone();
        let out_schema = read.schema.clone();
        let stream = futures::stream::iter(parts)
            .then(move |part| {
                let store = store.clone();
                let plan = plan.clone();
                let projection = projection.clone();
                async move {
                    store
                        .read_part(&plan, &part, Some(projection), batch_size)
                        .await
                        .map(|s| s.map_err(store_error))
                        .map_err(store_error)
                }
            })
            .try_flatten()
            .map(move |r| r.and_then(|b| to_sql_batch(&b, &read).map_err(DataFusionError::from)));
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

/// A store failure as DataFusion's error: too much to hold (store nodes' unflushed rows over
/// the memory limit) is a resource error the user can act on, like DataFusion's own.
pub(crate) fn store_error(e: oxeye_store::StoreError) -> DataFusionError {
    match e {
        oxeye_store::StoreError::Overloaded(reason) => DataFusionError::ResourcesExhausted(reason),
        other => DataFusionError::External(Box::new(other)),
    }
}
