//! Internal state as SQL tables in the `system` schema: `system.segments` (one row per
//! committed segment) and `system.memtables` (unflushed data per shard). Each scan reads the
//! store's state at that moment.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, Session};
use datafusion::common::Result;
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use oxeye_store::Store;

type Snapshot = fn(&Store) -> Result<RecordBatch>;

/// A table whose rows are computed when it is scanned (from the store here; alerting uses it
/// for its history). `View` tables are listed as views, others as base tables.
pub struct SnapshotTable {
    schema: SchemaRef,
    table_type: TableType,
    snapshot: Box<dyn Fn() -> Result<RecordBatch> + Send + Sync>,
}

impl std::fmt::Debug for SnapshotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotTable")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl SnapshotTable {
    pub fn new(
        schema: SchemaRef,
        table_type: TableType,
        snapshot: impl Fn() -> Result<RecordBatch> + Send + Sync + 'static,
    ) -> SnapshotTable {
        SnapshotTable {
            schema,
            table_type,
            snapshot: Box::new(snapshot),
        }
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.table_type
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = (self.snapshot)()?;
        MemTable::try_new(self.schema.clone(), vec![vec![batch]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn segments_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("shard", DataType::UInt32, false),
        Field::new("level", DataType::UInt32, false),
        Field::new("min_time", ts(), false),
        Field::new("max_time", ts(), false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("data_bytes", DataType::UInt64, false),
        Field::new("index_bytes", DataType::UInt64, false),
        Field::new("created", ts(), false),
        Field::new("data_path", DataType::Utf8, false),
    ]))
}

fn segments(store: &Store) -> Result<RecordBatch> {
    let segs = store.all_segments();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            segs.iter().map(|s| s.id.clone()),
        )),
        Arc::new(StringArray::from_iter_values(
            segs.iter().map(|s| s.signal.table_name()),
        )),
        Arc::new(UInt32Array::from_iter_values(segs.iter().map(|s| s.shard))),
        Arc::new(UInt32Array::from_iter_values(segs.iter().map(|s| s.level))),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(segs.iter().map(|s| s.min_time))
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(segs.iter().map(|s| s.max_time))
                .with_timezone("UTC"),
        ),
        Arc::new(UInt64Array::from_iter_values(segs.iter().map(|s| s.rows))),
        Arc::new(UInt64Array::from_iter_values(
            segs.iter().map(|s| s.data_bytes),
        )),
        Arc::new(UInt64Array::from_iter_values(
            segs.iter().map(|s| s.index_bytes),
        )),
        Arc::new(
            TimestampNanosecondArray::from_iter_values(
                segs.iter().map(|s| s.created_unix_ms as i64 * 1_000_000),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            segs.iter().map(|s| s.data_path.clone()),
        )),
    ];
    Ok(RecordBatch::try_new(segments_schema(), columns)?)
}

fn memtables_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::UInt32, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("frozen", DataType::Int64, false),
    ]))
}

fn memtables(store: &Store) -> Result<RecordBatch> {
    let stats = store.memtable_stats();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(stats.iter().map(|s| s.0))),
        Arc::new(Int64Array::from_iter_values(
            stats.iter().map(|s| s.1 as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            stats.iter().map(|s| s.2 as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            stats.iter().map(|s| s.3 as i64),
        )),
    ];
    Ok(RecordBatch::try_new(memtables_schema(), columns)?)
}

/// Registers the `system` schema.
pub fn register(ctx: &SessionContext, store: &Store) -> Result<()> {
    let Some(catalog) = ctx.catalog(crate::pg::catalog::DATABASE) else {
        return Ok(());
    };
    let schema = Arc::new(MemorySchemaProvider::new());
    for (name, table_schema, snapshot) in [
        ("segments", segments_schema(), segments as Snapshot),
        ("memtables", memtables_schema(), memtables as Snapshot),
    ] {
        datafusion::catalog::SchemaProvider::register_table(
            schema.as_ref(),
            name.to_string(),
            Arc::new({
                let store = store.clone();
                SnapshotTable::new(table_schema, TableType::View, move || snapshot(&store))
            }),
        )?;
    }
    catalog.register_schema("system", schema)?;
    Ok(())
}
