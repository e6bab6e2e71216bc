//! The large trace: a nightly catalog import run by its own service, `catalog-importer`, with
//! one span per page fetched from the supplier, one per imported item and one per database
//! upsert — thousands of spans in one trace.
//!
//! The SDK's batch span processor drops spans when its bounded queue is full, and a job like
//! this produces spans much faster than one exporter thread ships them. Two things keep the
//! trace whole: the queue is sized for it (`--queue-size`), and the job paces itself between
//! pages on the exporter's progress (spans ended minus spans handed to the exporter), the way a
//! real batch job would be throttled by its own I/O.

use std::time::{Duration, SystemTime};

use opentelemetry::logs::Severity;
use opentelemetry::metrics::Counter;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Context, KeyValue};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::sim::{Query, Service, between, lognormal, millis, ms, redis_latency};
use crate::telemetry::{ServiceIdentity, Telemetry};

pub const IDENTITY: ServiceIdentity = ServiceIdentity {
    name: "catalog-importer",
    version: "0.9.4",
    host: "catalog-importer-29184760-8k2lq",
};

const SUPPLIER: &str = "acme-wholesale";
const SUPPLIER_HOST: &str = "api.acme-wholesale.example";
const ITEMS_PER_PAGE: u64 = 100;
/// Spans of one full page: the page, the fetch, and an item span plus an upsert per item.
const SPANS_PER_PAGE: u64 = 2 + 2 * ITEMS_PER_PAGE;
/// Simulated duration of one page, used to place the run so that it ends about now.
const ESTIMATED_PAGE_MS: f64 = 400.0;
const INVALID_ITEM_RATE: f64 = 0.004;
const SLOW_UPSERT_RATE: f64 = 0.005;
/// Invalidate the product caches every this many pages.
const CACHE_FLUSH_EVERY_PAGES: u64 = 20;
/// Longest the job waits for the exporter per page before it carries on regardless (the
/// exporter may be stuck on an unreachable endpoint; then spans will be dropped, and counted).
const MAX_EXPORT_WAIT: Duration = Duration::from_secs(10);

const UPSERT_PRODUCT: Query = Query {
    operation: "INSERT",
    collection: "products",
    text: "INSERT INTO products (sku, name, category, price_cents, updated_at) VALUES ($1, $2, $3, $4, now()) \
           ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, category = EXCLUDED.category, \
           price_cents = EXCLUDED.price_cents, updated_at = now()",
};

/// A finished large trace.
#[derive(Debug, Clone)]
pub struct LargeTrace {
    /// Lowercase hex, as oxeye shows it.
    pub trace_id: String,
    pub spans: u64,
}

/// The `catalog-importer` service.
pub struct CatalogImporter {
    svc: Service,
    items: Counter<u64>,
    /// Pause between pages while more than this many spans wait for the exporter.
    backlog_limit: u64,
}

impl CatalogImporter {
    /// `queue_size` is the capacity of the span queue; the job keeps at most half of it filled.
    pub fn new(telemetry: &Telemetry, queue_size: usize) -> anyhow::Result<Self> {
        let pipeline = telemetry.pipeline(IDENTITY.name)?;
        Ok(Self {
            svc: Service::new(pipeline),
            items: pipeline
                .meter
                .u64_counter("catalog.import.items")
                .with_description("Catalog items processed by the import, by outcome")
                .with_unit("{item}")
                .build(),
            backlog_limit: u64::try_from(queue_size / 2).unwrap_or(u64::MAX),
        })
    }

    /// Runs one import producing at least `target_spans` spans (a few more when the last page
    /// ends mid-item) in one trace.
    pub async fn run(&self, seed: u64, target_spans: u64) -> LargeTrace {
        let svc = &self.svc;
        let mut rng = SmallRng::seed_from_u64(seed);
        let pages = target_spans.div_ceil(SPANS_PER_PAGE).max(1);
        // Nobody watches a nightly job live; it is looked at afterwards, so the run is placed to
        // end about now instead of minutes in the future.
        let pages_ms = ESTIMATED_PAGE_MS * f64::from(u32::try_from(pages).unwrap_or(u32::MAX));
        let started = SystemTime::now()
            .checked_sub(ms(pages_ms))
            .unwrap_or_else(SystemTime::now);
        let run_id = format!("import-{:08x}", rng.random::<u32>());
        let root = svc.start_span(
            &Context::new(),
            "catalog.import",
            SpanKind::Internal,
            started,
            vec![
                KeyValue::new("app.job.name", "nightly-catalog-import"),
                KeyValue::new("app.job.run_id", run_id.clone()),
                KeyValue::new("app.catalog.supplier", SUPPLIER),
            ],
        );
        let trace_id = root.span().span_context().trace_id();
        svc.log(
            &root,
            started,
            Severity::Info,
            format!(
                "catalog import {run_id} started: about {} items from {SUPPLIER}",
                pages * ITEMS_PER_PAGE
            ),
            vec![("app.job.run_id", run_id.clone().into())],
        );

        let mut t = started;
        let mut spans = 1_u64; // the root, ended last
        let (mut imported, mut rejected) = (0_u64, 0_u64);
        let mut page = 0_u64;
        while spans < target_spans {
            page += 1;
            let page_span = svc.start_span(
                &root,
                "catalog.import_page",
                SpanKind::Internal,
                t,
                vec![KeyValue::new(
                    "app.catalog.page",
                    i64::try_from(page).unwrap_or(i64::MAX),
                )],
            );
            spans += 1;
            t = self.fetch_page(&mut rng, &page_span, t, page);
            spans += 1;

            let (mut page_imported, mut page_rejected) = (0_u64, 0_u64);
            for item in 0..ITEMS_PER_PAGE {
                if spans >= target_spans {
                    break;
                }
                let sku = format!("ACME-{:06}", (page - 1) * ITEMS_PER_PAGE + item);
                let (end, item_spans, ok) = self.import_item(&mut rng, &page_span, t, &sku);
                t = end;
                spans += item_spans;
                if ok {
                    page_imported += 1;
                } else {
                    page_rejected += 1;
                }
            }
            if page.is_multiple_of(CACHE_FLUSH_EVERY_PAGES) {
                t = svc.redis(
                    &page_span,
                    t,
                    "UNLINK",
                    "products:garden:top50 products:kitchen:top50 products:books:top50",
                    redis_latency(&mut rng),
                    None,
                );
                spans += 1;
            }
            t += between(&mut rng, 0.1, 0.5);
            svc.end_span(&page_span, t);
            svc.log(
                &page_span,
                t,
                Severity::Info,
                format!("page {page}: imported {page_imported} items, rejected {page_rejected}"),
                vec![
                    (
                        "app.catalog.page",
                        i64::try_from(page).unwrap_or(i64::MAX).into(),
                    ),
                    ("app.job.run_id", run_id.clone().into()),
                ],
            );
            self.items.add(
                page_imported,
                &[KeyValue::new("app.catalog.outcome", "imported")],
            );
            self.items.add(
                page_rejected,
                &[KeyValue::new("app.catalog.outcome", "rejected")],
            );
            imported += page_imported;
            rejected += page_rejected;
            self.wait_for_exporter().await;
        }

        t += ms(5.0);
        let elapsed = t.duration_since(started).unwrap_or_default();
        root.span().set_attributes([
            KeyValue::new(
                "app.catalog.items_imported",
                i64::try_from(imported).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                "app.catalog.items_rejected",
                i64::try_from(rejected).unwrap_or(i64::MAX),
            ),
        ]);
        svc.log(
            &root,
            t,
            if rejected > 0 {
                Severity::Warn
            } else {
                Severity::Info
            },
            format!(
                "catalog import {run_id} finished in {:.1} s: {imported} items imported, {rejected} rejected",
                elapsed.as_secs_f64()
            ),
            vec![("app.job.run_id", run_id.into())],
        );
        svc.end_span(&root, t);
        LargeTrace {
            trace_id: trace_id.to_string(),
            spans,
        }
    }

    /// Fetches one page of the supplier's catalog (a CLIENT span); returns when it arrived.
    fn fetch_page(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        page: u64,
    ) -> SystemTime {
        let fetch = self.svc.start_span(
            parent,
            "GET /v2/catalog/items",
            SpanKind::Client,
            start,
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new(
                    "url.full",
                    format!(
                        "https://{SUPPLIER_HOST}/v2/catalog/items?page={page}&per_page={ITEMS_PER_PAGE}"
                    ),
                ),
                KeyValue::new("url.template", "/v2/catalog/items"),
                KeyValue::new("server.address", SUPPLIER_HOST),
                KeyValue::new("server.port", 443_i64),
                KeyValue::new("http.response.status_code", 200_i64),
            ],
        );
        let end = start + lognormal(rng, ms(140.0), 0.5);
        self.svc.end_span(&fetch, end);
        end
    }

    /// Validates and upserts one item. Returns when it was done, how many spans it produced and
    /// whether it was imported.
    fn import_item(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        sku: &str,
    ) -> (SystemTime, u64, bool) {
        let svc = &self.svc;
        let item = svc.start_span(
            parent,
            "catalog.import_item",
            SpanKind::Internal,
            start,
            vec![KeyValue::new("app.sku", sku.to_string())],
        );
        let validated = start + between(rng, 0.05, 0.25);
        if rng.random_bool(INVALID_ITEM_RATE) {
            let message = format!(
                "{sku}: price_cents must be positive, got -{}",
                rng.random_range(1..5_000)
            );
            svc.record_exception(&item, validated, "ValidationError", message.clone());
            svc.log(
                &item,
                validated,
                Severity::Warn,
                format!("skipping invalid item: {message}"),
                vec![("app.sku", sku.to_string().into())],
            );
            svc.end_span(&item, validated);
            return (validated, 1, false);
        }
        let slow = rng.random_bool(SLOW_UPSERT_RATE);
        let duration = if slow {
            between(rng, 150.0, 900.0)
        } else {
            lognormal(rng, ms(1.8), 0.5)
        };
        let end = svc.postgres(&item, validated, &UPSERT_PRODUCT, duration, 1, None);
        if slow {
            svc.log(
                &item,
                end,
                Severity::Warn,
                format!(
                    "upsert of {sku} took {:.0} ms (lock wait on products)",
                    millis(duration)
                ),
                vec![
                    ("app.sku", sku.to_string().into()),
                    ("db.duration_ms", millis(duration).into()),
                ],
            );
        }
        svc.end_span(&item, end);
        (end, 2, true)
    }

    /// Lets other tasks run, then waits while the span queue is more than half full.
    async fn wait_for_exporter(&self) {
        tokio::task::yield_now().await;
        let give_up = tokio::time::Instant::now() + MAX_EXPORT_WAIT;
        while self.svc.span_backlog() > self.backlog_limit && tokio::time::Instant::now() < give_up
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
