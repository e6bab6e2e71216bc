//! The simulated shop.
//!
//! ```text
//! browser ──HTTP──▶ frontend ──gRPC──▶ inventory ──▶ postgres
//!                      │  └──▶ redis (sessions, product cache, carts)
//!                      └──HTTP──▶ checkout ──gRPC (one call per cart item, concurrent)──▶ inventory
//!                                    ├──HTTP (timeout 1.5 s, 3 attempts)──▶ payments ──▶ card gateway, redis, postgres
//!                                    ├──▶ postgres (orders)
//!                                    └──▶ kafka (order events)
//! ```
//!
//! Every service has its own SDK pipeline (see [`crate::telemetry`]), and every hop between
//! services goes through a W3C `traceparent` header map, so a trace looks exactly like one
//! collected from separate processes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::Severity;
use opentelemetry::metrics::{Counter, Meter, ObservableGauge, UpDownCounter};
use opentelemetry::trace::{SpanKind, TraceContextExt as _, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rand::Rng;
use rand::rngs::SmallRng;

use crate::sim::{
    Call, Endpoint, Query, Reply, ServerMetrics, Service, between, lognormal, millis, ms, pick,
    redis_latency, remote_call,
};
use crate::telemetry::{ServiceIdentity, Telemetry};

/// The services of the request path, each with its own resource.
pub const SERVICES: [ServiceIdentity; 4] = [
    ServiceIdentity {
        name: "frontend",
        version: "2.14.1",
        host: "frontend-7c9f6d8b5-x2k4p",
    },
    ServiceIdentity {
        name: "checkout",
        version: "1.8.0",
        host: "checkout-5d8f9c7b6-q7wzl",
    },
    ServiceIdentity {
        name: "payments",
        version: "3.2.7",
        host: "payments-6b7c8d9f4-m3n8r",
    },
    ServiceIdentity {
        name: "inventory",
        version: "1.21.3",
        host: "inventory-84f5c6d7b-t5v9h",
    },
];

const FRONTEND_HOST: &str = "shop.example.com";
static LIST_PRODUCTS: Endpoint = Endpoint::http("GET", "/api/products", FRONTEND_HOST, 443);
static GET_PRODUCT: Endpoint = Endpoint::http("GET", "/api/products/{id}", FRONTEND_HOST, 443);
static ADD_TO_CART: Endpoint = Endpoint::http("POST", "/api/cart", FRONTEND_HOST, 443);
static PLACE_ORDER: Endpoint = Endpoint::http("POST", "/api/checkout", FRONTEND_HOST, 443);
static CHECKOUT: Endpoint = Endpoint::http("POST", "/checkout", "checkout.shop.svc", 8080);
static CHARGE: Endpoint = Endpoint::http("POST", "/v1/charges", "payments.shop.svc", 8080);
const INVENTORY_SERVICE: &str = "inventory.v1.InventoryService";
const INVENTORY_HOST: &str = "inventory.shop.svc";
static INVENTORY_LIST: Endpoint =
    Endpoint::grpc(INVENTORY_SERVICE, "ListProducts", INVENTORY_HOST, 50051);
static INVENTORY_GET: Endpoint =
    Endpoint::grpc(INVENTORY_SERVICE, "GetProduct", INVENTORY_HOST, 50051);
static INVENTORY_RESERVE: Endpoint =
    Endpoint::grpc(INVENTORY_SERVICE, "ReserveStock", INVENTORY_HOST, 50051);
static INVENTORY_RELEASE: Endpoint =
    Endpoint::grpc(INVENTORY_SERVICE, "ReleaseStock", INVENTORY_HOST, 50051);

const GATEWAY_HOST: &str = "api.paygate.example";

const SELECT_PRODUCTS: Query = Query {
    operation: "SELECT",
    collection: "products",
    text: "SELECT id, sku, name, price_cents, stock FROM products WHERE category = $1 ORDER BY popularity DESC LIMIT $2",
};
const SELECT_PRODUCT: Query = Query {
    operation: "SELECT",
    collection: "products",
    text: "SELECT id, sku, name, description, price_cents, stock FROM products WHERE id = $1",
};
const RESERVE_STOCK: Query = Query {
    operation: "UPDATE",
    collection: "stock",
    text: "UPDATE stock SET reserved = reserved + $1 WHERE sku = $2 AND on_hand - reserved >= $1",
};
const RELEASE_STOCK: Query = Query {
    operation: "UPDATE",
    collection: "stock",
    text: "UPDATE stock SET reserved = reserved - $1 WHERE sku = $2",
};
const INSERT_ORDER: Query = Query {
    operation: "INSERT",
    collection: "orders",
    text: "INSERT INTO orders (id, user_id, total_cents, status) VALUES ($1, $2, $3, 'paid')",
};
const INSERT_PAYMENT: Query = Query {
    operation: "INSERT",
    collection: "payments",
    text: "INSERT INTO payments (id, order_id, amount_cents, gateway_ref) VALUES ($1, $2, $3, $4)",
};

/// A database failure: SQLSTATE, message, and how long the statement ran before failing.
#[derive(Debug, Clone, Copy)]
struct DbFailure {
    sqlstate: &'static str,
    message: &'static str,
    after_ms: (f64, f64),
}

/// `statement_timeout` (2 s) fires: slow enough to be visible, short enough that the caller's
/// 3 s timeout does not fire first.
const STATEMENT_TIMEOUT: DbFailure = DbFailure {
    sqlstate: "57014",
    message: "canceling statement due to statement timeout",
    after_ms: (2000.0, 2004.0),
};
/// PostgreSQL detects deadlocks after `deadlock_timeout` (1 s).
const DEADLOCK: DbFailure = DbFailure {
    sqlstate: "40P01",
    message: "deadlock detected",
    after_ms: (1000.0, 1080.0),
};

const INVENTORY_TIMEOUT: Duration = Duration::from_secs(3);
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(15);
/// Checkout gives up on a charge attempt well before payments gives up on the card gateway,
/// so a hanging gateway shows as a client timeout whose server span outlives it.
const PAYMENT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
const GATEWAY_TIMEOUT: Duration = Duration::from_millis(2500);
const PAYMENT_ATTEMPTS: u32 = 3;

/// Background noise that does not fail requests: these show up as WARN logs, retries and
/// long-tail latencies in otherwise successful traces.
const SLOW_QUERY_RATE: f64 = 0.02;
const TRANSIENT_GATEWAY_TIMEOUT_RATE: f64 = 0.04;
const CARD_DECLINE_RATE: f64 = 0.03;
const OUT_OF_STOCK_RATE: f64 = 0.015;
const PRODUCT_NOT_FOUND_RATE: f64 = 0.03;
const LIST_CACHE_HIT_RATE: f64 = 0.7;
const PRODUCT_CACHE_HIT_RATE: f64 = 0.6;
const DB_POOL_SIZE: i64 = 20;

const CATEGORIES: [&str; 8] = [
    "garden",
    "kitchen",
    "books",
    "toys",
    "outdoor",
    "electronics",
    "music",
    "sports",
];
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "ShopApp/4.2.0 (iPhone; iOS 17.5.1)",
];

/// One cache-aside read of the frontend (see `Shop::read_through`).
struct CachedRead {
    key: String,
    /// What the SET after a miss stores (value and expiry), for the span's statement.
    stored: &'static str,
    hit_rate: f64,
    /// The request is meant to fail in inventory's database: the cache must miss.
    db_fails: bool,
    endpoint: &'static Endpoint,
    extra: Vec<KeyValue>,
}

/// What the frontend answered to one simulated browser request.
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome {
    pub trace_id: TraceId,
    pub status: u16,
}

impl RequestOutcome {
    pub fn is_error(&self) -> bool {
        self.status >= 500
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    ListProducts,
    GetProduct,
    AddToCart,
    PlaceOrder,
}

impl Route {
    /// Browsing dominates, as in any shop.
    fn pick(rng: &mut SmallRng) -> Self {
        match rng.random_range(0..100_u32) {
            0..45 => Route::ListProducts,
            45..70 => Route::GetProduct,
            70..85 => Route::AddToCart,
            _ => Route::PlaceOrder,
        }
    }

    fn endpoint(self) -> &'static Endpoint {
        match self {
            Route::ListProducts => &LIST_PRODUCTS,
            Route::GetProduct => &GET_PRODUCT,
            Route::AddToCart => &ADD_TO_CART,
            Route::PlaceOrder => &PLACE_ORDER,
        }
    }
}

/// The failure injected into a request chosen to fail (`--error-rate`); each makes the
/// request end in a 5xx, with the exception recorded where it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// A statement timeout or deadlock in inventory's database.
    InventoryDb,
    /// The frontend's template rendering throws.
    Render,
    /// The cart store (Redis) is read-only during a failover.
    CartStore,
    /// The card gateway hangs on every attempt; checkout gives up after its retries.
    PaymentGateway,
    /// Storing the paid order deadlocks.
    OrderDb,
}

impl Fault {
    fn pick(route: Route, rng: &mut SmallRng) -> Self {
        match route {
            Route::ListProducts | Route::GetProduct => {
                if rng.random_bool(0.7) {
                    Fault::InventoryDb
                } else {
                    Fault::Render
                }
            }
            Route::AddToCart => Fault::CartStore,
            Route::PlaceOrder => *pick(
                rng,
                &[Fault::PaymentGateway, Fault::InventoryDb, Fault::OrderDb],
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StockOperation {
    Reserve,
    Release,
}

impl StockOperation {
    fn endpoint(self) -> &'static Endpoint {
        match self {
            StockOperation::Reserve => &INVENTORY_RESERVE,
            StockOperation::Release => &INVENTORY_RELEASE,
        }
    }

    fn query(self) -> &'static Query {
        match self {
            StockOperation::Reserve => &RESERVE_STOCK,
            StockOperation::Release => &RELEASE_STOCK,
        }
    }

    fn span_name(self) -> &'static str {
        match self {
            StockOperation::Reserve => "reserve stock",
            StockOperation::Release => "release stock",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charge {
    Captured,
    Declined,
    Failed,
}

impl Charge {
    fn outcome(self) -> &'static str {
        match self {
            Charge::Captured => "placed",
            Charge::Declined => "payment_declined",
            Charge::Failed => "payment_failed",
        }
    }
}

struct Frontend {
    svc: Service,
    http: ServerMetrics,
}

struct Checkout {
    svc: Service,
    http: ServerMetrics,
    orders: Counter<u64>,
    /// Order events published but not yet consumed (observed by the `queue.depth` gauge).
    queue_depth: Arc<AtomicI64>,
    // The SDK keeps the callback registered; the handle is kept to make the ownership explicit.
    _queue_gauge: ObservableGauge<i64>,
}

impl Checkout {
    fn new(svc: Service, meter: &Meter) -> Self {
        let queue_depth = Arc::new(AtomicI64::new(0));
        let observed = Arc::clone(&queue_depth);
        let queue_gauge = meter
            .i64_observable_gauge("queue.depth")
            .with_description("Order events published to Kafka and not consumed yet")
            .with_unit("{message}")
            .with_callback(move |observer| {
                observer.observe(
                    observed.load(Ordering::Relaxed),
                    &[KeyValue::new("messaging.destination.name", "orders")],
                );
            })
            .build();
        Self {
            svc,
            http: ServerMetrics::http(meter),
            orders: meter
                .u64_counter("checkout.orders")
                .with_description("Checkouts by outcome")
                .with_unit("{order}")
                .build(),
            queue_depth,
            _queue_gauge: queue_gauge,
        }
    }
}

struct Payments {
    svc: Service,
    http: ServerMetrics,
    attempts: Counter<u64>,
}

struct Inventory {
    svc: Service,
    rpc: ServerMetrics,
    pool: ConnectionPool,
}

impl Inventory {
    /// Runs `query` on a pooled connection: picks its latency (2% are slow), waits for a free
    /// connection if the pool is exhausted, and logs what an operator would want to see.
    fn query(
        &self,
        rng: &mut SmallRng,
        cx: &Context,
        start: SystemTime,
        query: &Query,
        rows: i64,
        failure: Option<DbFailure>,
    ) -> SystemTime {
        let slow = failure.is_none() && rng.random_bool(SLOW_QUERY_RATE);
        let duration = match failure {
            Some(f) => between(rng, f.after_ms.0, f.after_ms.1),
            None if slow => between(rng, 300.0, 2_500.0),
            None => lognormal(rng, ms(1.5), 0.6),
        };
        let wait = self.pool.hold(start, duration);
        if !wait.is_zero() {
            self.svc.log(
                cx,
                start,
                Severity::Warn,
                format!(
                    "connection pool exhausted: waited {:.0} ms for a connection",
                    millis(wait)
                ),
                vec![("db.client.connection.pool.name", self.pool.name.into())],
            );
        }
        let end = self.svc.postgres(
            cx,
            start + wait,
            query,
            duration,
            rows,
            failure.map(|f| (f.sqlstate, f.message)),
        );
        if slow {
            self.svc.log(
                cx,
                end,
                Severity::Warn,
                format!(
                    "slow query on {}: {:.0} ms",
                    query.collection,
                    millis(duration)
                ),
                vec![
                    ("db.query.text", query.text.into()),
                    ("db.duration_ms", millis(duration).into()),
                ],
            );
        }
        end
    }
}

/// inventory's PostgreSQL connection pool, tracked in simulated time so that the
/// `db.client.connection.count` up/down counter follows overlapping (slow) queries.
struct ConnectionPool {
    name: &'static str,
    size: i64,
    /// When each busy connection comes back.
    busy_until: Mutex<BinaryHeap<Reverse<SystemTime>>>,
    connections: UpDownCounter<i64>,
    used: [KeyValue; 2],
    idle: [KeyValue; 2],
}

impl ConnectionPool {
    fn new(meter: &Meter, name: &'static str, size: i64) -> Self {
        let attributes = |state: &'static str| {
            [
                KeyValue::new("db.client.connection.pool.name", name),
                KeyValue::new("db.client.connection.state", state),
            ]
        };
        let pool = Self {
            name,
            size,
            busy_until: Mutex::new(BinaryHeap::new()),
            connections: meter
                .i64_up_down_counter("db.client.connection.count")
                .with_description("Connections of the pool by state")
                .with_unit("{connection}")
                .build(),
            used: attributes("used"),
            idle: attributes("idle"),
        };
        pool.connections.add(size, &pool.idle);
        pool
    }

    /// Takes a connection at `start` for `duration`; returns how long the query had to wait
    /// for one.
    fn hold(&self, start: SystemTime, duration: Duration) -> Duration {
        let Ok(mut busy) = self.busy_until.lock() else {
            return Duration::ZERO;
        };
        let mut released = 0_i64;
        while busy.peek().is_some_and(|Reverse(until)| *until <= start) {
            busy.pop();
            released += 1;
        }
        let mut wait = Duration::ZERO;
        if i64::try_from(busy.len()).unwrap_or(i64::MAX) >= self.size
            && let Some(Reverse(until)) = busy.pop()
        {
            wait = until.duration_since(start).unwrap_or_default();
            released += 1;
        }
        busy.push(Reverse(start + wait + duration));
        drop(busy);
        let newly_used = 1 - released;
        if newly_used != 0 {
            self.connections.add(newly_used, &self.used);
            self.connections.add(-newly_used, &self.idle);
        }
        wait
    }
}

/// The four services of the request path and how they call each other.
pub struct Shop {
    frontend: Frontend,
    checkout: Checkout,
    payments: Payments,
    inventory: Inventory,
    propagator: TraceContextPropagator,
    error_rate: f64,
}

impl Shop {
    pub fn new(telemetry: &Telemetry, error_rate: f64) -> anyhow::Result<Self> {
        let frontend = telemetry.pipeline("frontend")?;
        let checkout = telemetry.pipeline("checkout")?;
        let payments = telemetry.pipeline("payments")?;
        let inventory = telemetry.pipeline("inventory")?;
        Ok(Self {
            frontend: Frontend {
                svc: Service::new(frontend),
                http: ServerMetrics::http(&frontend.meter),
            },
            checkout: Checkout::new(Service::new(checkout), &checkout.meter),
            payments: Payments {
                svc: Service::new(payments),
                http: ServerMetrics::http(&payments.meter),
                attempts: payments
                    .meter
                    .u64_counter("payments.charge.attempts")
                    .with_description("Card gateway charge attempts by outcome")
                    .with_unit("{attempt}")
                    .build(),
            },
            inventory: Inventory {
                svc: Service::new(inventory),
                rpc: ServerMetrics::rpc(&inventory.meter),
                pool: ConnectionPool::new(&inventory.meter, "inventory-pg", DB_POOL_SIZE),
            },
            propagator: TraceContextPropagator::new(),
            error_rate: error_rate.clamp(0.0, 1.0),
        })
    }

    /// Simulates one browser request to the frontend, with everything it causes downstream.
    pub fn handle_request(&self, rng: &mut SmallRng) -> RequestOutcome {
        let route = Route::pick(rng);
        let fault = rng
            .random_bool(self.error_rate)
            .then(|| Fault::pick(route, rng));
        let fe = &self.frontend;
        let endpoint = route.endpoint();
        let user = rng.random_range(1_000..60_000_i64);
        let product = rng.random_range(1..5_000_i64);
        let category = *pick(rng, &CATEGORIES);
        let path = match route {
            Route::GetProduct => format!("/api/products/{product}"),
            _ => endpoint.route().to_string(),
        };

        let start = SystemTime::now();
        let mut attributes = vec![
            KeyValue::new(
                "client.address",
                format!("203.0.113.{}", rng.random_range(1..255)),
            ),
            KeyValue::new("user_agent.original", *pick(rng, &USER_AGENTS)),
            KeyValue::new("app.user.id", user),
        ];
        if route == Route::ListProducts {
            attributes.push(KeyValue::new("url.query", format!("category={category}")));
        }
        // The trace starts here: the browser is not instrumented, so the root has no parent.
        let root = fe
            .svc
            .accept(endpoint, &path, &Context::new(), start, attributes);
        let trace_id = root.span().span_context().trace_id();

        // Routing and middleware, then the session lookup every request does.
        let t = start + between(rng, 0.2, 0.8);
        let t = fe.svc.redis(
            &root,
            t,
            "GET",
            &format!("session:{user}"),
            redis_latency(rng),
            None,
        );
        let (status, t) = match route {
            Route::ListProducts => self.list_products(rng, &root, t, category, fault),
            Route::GetProduct => self.get_product(rng, &root, t, product, fault),
            Route::AddToCart => self.add_to_cart(rng, &root, t, user, product, fault),
            Route::PlaceOrder => self.place_order(rng, &root, t, user, fault),
        };
        let end = t + between(rng, 0.1, 0.4);

        let elapsed = end.duration_since(start).unwrap_or_default();
        let severity = match status {
            500.. => Severity::Error,
            400.. => Severity::Warn,
            _ => Severity::Info,
        };
        fe.svc.log(
            &root,
            end,
            severity,
            format!(
                "{} {path} {status} {:.1}ms",
                endpoint.method(),
                millis(elapsed)
            ),
            vec![
                ("http.request.method", endpoint.method().into()),
                ("http.route", endpoint.route().into()),
                ("http.response.status_code", i64::from(status).into()),
                ("duration_ms", millis(elapsed).into()),
                ("app.user.id", user.into()),
            ],
        );
        let reply = fe
            .svc
            .respond(endpoint, &fe.http, &root, start, end, status);
        RequestOutcome {
            trace_id,
            status: reply.status,
        }
    }

    /// Cache-aside read at the frontend: GET from Redis and, on a miss, ask inventory and SET
    /// its answer. `Ok` with the time the data is in hand; `Err` with inventory's status
    /// (`None`: the call timed out) when it did not answer 200.
    fn read_through(
        &self,
        rng: &mut SmallRng,
        root: &Context,
        start: SystemTime,
        read: CachedRead,
        fetch: impl FnOnce(&mut SmallRng, &Context, SystemTime) -> Reply,
    ) -> Result<SystemTime, (Option<u16>, SystemTime)> {
        let fe = &self.frontend;
        // Only a cache miss reaches the database, so a request meant to fail there misses.
        let hit = !read.db_fails && rng.random_bool(read.hit_rate);
        let t = fe
            .svc
            .redis(root, start, "GET", &read.key, redis_latency(rng), None);
        root.span()
            .set_attribute(KeyValue::new("app.cache.hit", hit));
        if hit {
            return Ok(t);
        }
        let call = Call {
            caller: &fe.svc,
            parent: root,
            endpoint: read.endpoint,
            path: "",
            start: t,
            timeout: INVENTORY_TIMEOUT,
            extra: read.extra,
        };
        let result = remote_call(&self.propagator, rng, call, fetch);
        match result.status {
            Some(200) => Ok(fe.svc.redis(
                root,
                result.end,
                "SET",
                &format!("{} {}", read.key, read.stored),
                redis_latency(rng),
                None,
            )),
            status => Err((status, result.end)),
        }
    }

    /// The frontend's answer when inventory failed (502) or did not answer in time (504).
    fn inventory_failed(
        &self,
        root: &Context,
        t: SystemTime,
        status: Option<u16>,
    ) -> (u16, SystemTime) {
        let code = if status.is_some() { 502 } else { 504 };
        self.upstream_failed(root, t, "inventory", code)
    }

    /// `GET /api/products?category=`: the top products of a category, from the cache or from
    /// inventory.
    fn list_products(
        &self,
        rng: &mut SmallRng,
        root: &Context,
        start: SystemTime,
        category: &'static str,
        fault: Option<Fault>,
    ) -> (u16, SystemTime) {
        let db_fails = fault == Some(Fault::InventoryDb);
        let t = match self.read_through(
            rng,
            root,
            start,
            CachedRead {
                key: format!("products:{category}:top50"),
                stored: "<50 products> EX 300",
                hit_rate: LIST_CACHE_HIT_RATE,
                db_fails,
                endpoint: &INVENTORY_LIST,
                extra: vec![KeyValue::new("app.category", category)],
            },
            |rng, parent, at| self.inventory_list(rng, parent, at, category, db_fails),
        ) {
            Ok(t) => t,
            Err((status, t)) => return self.inventory_failed(root, t, status),
        };
        self.render(
            rng,
            root,
            t,
            "product_list.html",
            fault == Some(Fault::Render),
        )
    }

    /// `GET /api/products/{id}`: one product, from the cache or from inventory.
    fn get_product(
        &self,
        rng: &mut SmallRng,
        root: &Context,
        start: SystemTime,
        product: i64,
        fault: Option<Fault>,
    ) -> (u16, SystemTime) {
        let db_fails = fault == Some(Fault::InventoryDb);
        let t = match self.read_through(
            rng,
            root,
            start,
            CachedRead {
                key: format!("product:{product}"),
                stored: "<product> EX 600",
                hit_rate: PRODUCT_CACHE_HIT_RATE,
                db_fails,
                endpoint: &INVENTORY_GET,
                extra: vec![KeyValue::new("app.product.id", product)],
            },
            |rng, parent, at| self.inventory_get(rng, parent, at, product, db_fails),
        ) {
            Ok(t) => t,
            Err((Some(404), t)) => {
                self.frontend.svc.log(
                    root,
                    t,
                    Severity::Info,
                    format!("product {product} not found"),
                    vec![("app.product.id", product.into())],
                );
                return (404, t);
            }
            Err((status, t)) => return self.inventory_failed(root, t, status),
        };
        self.render(
            rng,
            root,
            t,
            "product_detail.html",
            fault == Some(Fault::Render),
        )
    }

    /// `POST /api/cart`: one Redis write.
    fn add_to_cart(
        &self,
        rng: &mut SmallRng,
        root: &Context,
        start: SystemTime,
        user: i64,
        product: i64,
        fault: Option<Fault>,
    ) -> (u16, SystemTime) {
        let fe = &self.frontend;
        let quantity = rng.random_range(1..=3_i64);
        let store_fails = fault == Some(Fault::CartStore);
        let duration = if store_fails {
            between(rng, 1.0, 5.0)
        } else {
            redis_latency(rng)
        };
        let t = fe.svc.redis(
            root,
            start,
            "HINCRBY",
            &format!("cart:{user} {product} {quantity}"),
            duration,
            store_fails.then_some("READONLY You can't write against a read only replica."),
        );
        if store_fails {
            fe.svc.log(
                root,
                t,
                Severity::Error,
                format!("cannot update the cart of user {user}: Redis is read-only (failover in progress?)"),
                vec![("app.user.id", user.into())],
            );
            return (503, t);
        }
        fe.svc.log(
            root,
            t,
            Severity::Info,
            format!("user {user} added {quantity} x product {product} to the cart"),
            vec![
                ("app.user.id", user.into()),
                ("app.product.id", product.into()),
            ],
        );
        (200, t)
    }

    /// `POST /api/checkout`: hands the order to checkout.
    fn place_order(
        &self,
        rng: &mut SmallRng,
        root: &Context,
        start: SystemTime,
        user: i64,
        fault: Option<Fault>,
    ) -> (u16, SystemTime) {
        let call = Call {
            caller: &self.frontend.svc,
            parent: root,
            endpoint: &CHECKOUT,
            path: "/checkout",
            start,
            timeout: CHECKOUT_TIMEOUT,
            extra: Vec::new(),
        };
        let result = remote_call(&self.propagator, rng, call, |rng, parent, at| {
            self.checkout(rng, parent, at, user, fault)
        });
        match result.status {
            Some(status @ (200 | 402 | 409)) => (status, result.end),
            Some(_) => self.upstream_failed(root, result.end, "checkout", 502),
            None => self.upstream_failed(root, result.end, "checkout", 504),
        }
    }

    /// Server-side rendering of a page; the place where the `Render` fault throws.
    fn render(
        &self,
        rng: &mut SmallRng,
        root: &Context,
        start: SystemTime,
        template: &'static str,
        fails: bool,
    ) -> (u16, SystemTime) {
        let fe = &self.frontend;
        let cx = fe.svc.start_span(
            root,
            format!("render {template}"),
            SpanKind::Internal,
            start,
            vec![KeyValue::new("app.template", template)],
        );
        let end = start + lognormal(rng, ms(3.0), 0.5);
        if fails {
            let message = format!(
                "{template}, line {}: undefined variable 'price_cents'",
                rng.random_range(12..240)
            );
            fe.svc
                .record_exception(&cx, end, "TemplateError", message.clone());
            fe.svc.log(
                &cx,
                end,
                Severity::Error,
                format!("rendering failed: {message}"),
                vec![("app.template", template.into())],
            );
            fe.svc.end_span(&cx, end);
            return (500, end);
        }
        fe.svc.end_span(&cx, end);
        (200, end)
    }

    fn upstream_failed(
        &self,
        root: &Context,
        at: SystemTime,
        upstream: &'static str,
        status: u16,
    ) -> (u16, SystemTime) {
        self.frontend.svc.log(
            root,
            at,
            Severity::Error,
            format!("call to {upstream} failed; answering {status}"),
            vec![("peer.service", upstream.into())],
        );
        (status, at)
    }

    /// checkout `POST /checkout`: reserve every item (concurrently), charge (with retries),
    /// store the order, publish an event. Compensates (releases stock) when a later step fails.
    fn checkout(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        user: i64,
        fault: Option<Fault>,
    ) -> Reply {
        let co = &self.checkout;
        let order_id = format!("ord_{:010x}", rng.random::<u64>() >> 24);
        let cx = co.svc.accept(
            &CHECKOUT,
            "/checkout",
            parent,
            start,
            vec![
                KeyValue::new("app.user.id", user),
                KeyValue::new("app.order.id", order_id.clone()),
            ],
        );
        let t = start + between(rng, 0.1, 0.5);
        let t = co.svc.redis(
            &cx,
            t,
            "HGETALL",
            &format!("cart:{user}"),
            redis_latency(rng),
            None,
        );
        let items = cart_size(rng);
        let skus: Vec<String> = (0..items)
            .map(|_| format!("SKU-{:05}", rng.random_range(1..5_000)))
            .collect();
        let amount_cents: i64 = (0..items).map(|_| rng.random_range(499..19_999_i64)).sum();
        cx.span().set_attributes([
            KeyValue::new("app.order.items", items),
            KeyValue::new("app.order.amount_cents", amount_cents),
        ]);
        co.svc.log(
            &cx,
            t,
            Severity::Info,
            format!(
                "checkout of order {order_id} started: {items} items, {} USD",
                usd(amount_cents)
            ),
            vec![
                ("app.order.id", order_id.clone().into()),
                ("app.order.items", items.into()),
            ],
        );
        let finish = |rng: &mut SmallRng, at: SystemTime, status: u16, outcome: &'static str| {
            co.orders
                .add(1, &[KeyValue::new("app.order.outcome", outcome)]);
            co.svc.respond(
                &CHECKOUT,
                &co.http,
                &cx,
                start,
                at + between(rng, 0.1, 0.3),
                status,
            )
        };

        let failing_item =
            (fault == Some(Fault::InventoryDb)).then(|| rng.random_range(0..skus.len()));
        let (t, statuses) =
            self.stock_fan_out(rng, &cx, t, StockOperation::Reserve, &skus, failing_item);
        let reserved: Vec<String> = skus
            .iter()
            .zip(&statuses)
            .filter(|(_, status)| **status == Some(200))
            .map(|(sku, _)| sku.clone())
            .collect();
        if reserved.len() < skus.len() {
            let broken = statuses.iter().any(|s| matches!(s, Some(500..) | None));
            let t = self.release(rng, &cx, t, &reserved);
            if broken {
                co.svc.log(
                    &cx,
                    t,
                    Severity::Error,
                    format!(
                        "order {order_id} failed: inventory could not reserve stock; released {} reservations",
                        reserved.len()
                    ),
                    vec![("app.order.id", order_id.clone().into())],
                );
                return finish(rng, t, 500, "inventory_failed");
            }
            co.svc.log(
                &cx,
                t,
                Severity::Warn,
                format!("order {order_id} rejected: an item is out of stock"),
                vec![("app.order.id", order_id.clone().into())],
            );
            return finish(rng, t, 409, "out_of_stock");
        }

        let (t, charge) = self.charge(
            rng,
            &cx,
            t,
            &order_id,
            amount_cents,
            fault == Some(Fault::PaymentGateway),
        );
        match charge {
            Charge::Captured => {}
            Charge::Declined => {
                let t = self.release(rng, &cx, t, &reserved);
                co.svc.log(
                    &cx,
                    t,
                    Severity::Warn,
                    format!("order {order_id} not placed: card declined"),
                    vec![("app.order.id", order_id.clone().into())],
                );
                return finish(rng, t, 402, charge.outcome());
            }
            Charge::Failed => {
                let t = self.release(rng, &cx, t, &reserved);
                return finish(rng, t, 502, charge.outcome());
            }
        }

        let order_db_fails = fault == Some(Fault::OrderDb);
        let duration = if order_db_fails {
            between(rng, DEADLOCK.after_ms.0, DEADLOCK.after_ms.1)
        } else {
            lognormal(rng, ms(2.5), 0.5)
        };
        let t = co.svc.postgres(
            &cx,
            t,
            &INSERT_ORDER,
            duration,
            1,
            order_db_fails.then_some((DEADLOCK.sqlstate, DEADLOCK.message)),
        );
        if order_db_fails {
            co.svc.log(
                &cx,
                t,
                Severity::Error,
                format!("order {order_id} was charged but could not be stored (deadlock detected); refund queued"),
                vec![("app.order.id", order_id.clone().into())],
            );
            return finish(rng, t, 500, "store_failed");
        }

        let t = self.publish_order(rng, &cx, t, &order_id);
        co.svc.log(
            &cx,
            t,
            Severity::Info,
            format!(
                "order {order_id} placed: {items} items, {} USD",
                usd(amount_cents)
            ),
            vec![
                ("app.order.id", order_id.clone().into()),
                ("app.order.amount_cents", amount_cents.into()),
            ],
        );
        finish(rng, t, 200, charge.outcome())
    }

    /// Calls inventory once per SKU. The calls run concurrently (one task per item in a real
    /// service): they start microseconds apart, overlap, and the parent span waits for the
    /// slowest. Returns when all answered and each call's status (`None`: timed out).
    fn stock_fan_out(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        operation: StockOperation,
        skus: &[String],
        failing_item: Option<usize>,
    ) -> (SystemTime, Vec<Option<u16>>) {
        let co = &self.checkout;
        let span = co.svc.start_span(
            parent,
            operation.span_name(),
            SpanKind::Internal,
            start,
            vec![KeyValue::new(
                "app.order.items",
                i64::try_from(skus.len()).unwrap_or(i64::MAX),
            )],
        );
        let mut done = start;
        let mut statuses = Vec::with_capacity(skus.len());
        let mut spawn_offset = Duration::ZERO;
        for (index, sku) in skus.iter().enumerate() {
            spawn_offset += Duration::from_micros(rng.random_range(15..45));
            let call = Call {
                caller: &co.svc,
                parent: &span,
                endpoint: operation.endpoint(),
                path: "",
                start: start + spawn_offset,
                timeout: INVENTORY_TIMEOUT,
                extra: vec![KeyValue::new("app.sku", sku.clone())],
            };
            let fails = failing_item == Some(index);
            let result = remote_call(&self.propagator, rng, call, |rng, parent, at| {
                self.inventory_stock(rng, parent, at, operation, sku, fails)
            });
            done = done.max(result.end);
            statuses.push(result.status);
        }
        let end = done + between(rng, 0.02, 0.1);
        co.svc.end_span(&span, end);
        (end, statuses)
    }

    /// Compensation: gives back the stock reserved for an order that will not complete.
    fn release(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        skus: &[String],
    ) -> SystemTime {
        if skus.is_empty() {
            return start;
        }
        self.stock_fan_out(rng, parent, start, StockOperation::Release, skus, None)
            .0
    }

    /// Charges the order through payments: up to [`PAYMENT_ATTEMPTS`] attempts, each a sibling
    /// CLIENT span with retry attributes, exponential backoff in between.
    fn charge(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        order_id: &str,
        amount_cents: i64,
        gateway_down: bool,
    ) -> (SystemTime, Charge) {
        let co = &self.checkout;
        let span = co.svc.start_span(
            parent,
            "charge payment",
            SpanKind::Internal,
            start,
            vec![
                KeyValue::new("app.order.id", order_id.to_string()),
                KeyValue::new("app.payment.amount_cents", amount_cents),
            ],
        );
        let idempotency_key = format!("idem:{order_id}");
        let mut t = start;
        let mut charge = Charge::Failed;
        for attempt in 1..=PAYMENT_ATTEMPTS {
            let gateway_hangs = gateway_down || rng.random_bool(TRANSIENT_GATEWAY_TIMEOUT_RATE);
            let mut extra = vec![
                KeyValue::new("retry.attempt", i64::from(attempt)),
                KeyValue::new("retry.max_attempts", i64::from(PAYMENT_ATTEMPTS)),
            ];
            if attempt > 1 {
                extra.push(KeyValue::new(
                    "http.request.resend_count",
                    i64::from(attempt - 1),
                ));
            }
            let call = Call {
                caller: &co.svc,
                parent: &span,
                endpoint: &CHARGE,
                path: "/v1/charges",
                start: t,
                timeout: PAYMENT_ATTEMPT_TIMEOUT,
                extra,
            };
            let result = remote_call(&self.propagator, rng, call, |rng, parent, at| {
                self.payments_charge(
                    rng,
                    parent,
                    at,
                    &idempotency_key,
                    amount_cents,
                    gateway_hangs,
                )
            });
            t = result.end;
            let failure = match result.status {
                Some(200) => {
                    charge = Charge::Captured;
                    break;
                }
                Some(402) => {
                    charge = Charge::Declined;
                    break;
                }
                Some(status) => format!("payments answered {status}"),
                None => format!(
                    "no answer within {} ms",
                    PAYMENT_ATTEMPT_TIMEOUT.as_millis()
                ),
            };
            if attempt == PAYMENT_ATTEMPTS {
                let message = format!(
                    "charging order {order_id} failed after {PAYMENT_ATTEMPTS} attempts: {failure}"
                );
                co.svc.log(
                    &span,
                    t,
                    Severity::Error,
                    message.clone(),
                    vec![
                        ("app.order.id", order_id.to_string().into()),
                        ("retry.attempt", i64::from(attempt).into()),
                    ],
                );
                co.svc.mark_error(&span, "payment_unavailable", message);
                break;
            }
            let backoff = ms(100.0 * f64::from(1_u32 << (attempt - 1))) + between(rng, 0.0, 50.0);
            co.svc.log(
                &span,
                t,
                Severity::Warn,
                format!(
                    "payment attempt {attempt}/{PAYMENT_ATTEMPTS} for order {order_id} failed ({failure}); retrying in {:.0} ms",
                    millis(backoff)
                ),
                vec![
                    ("app.order.id", order_id.to_string().into()),
                    ("retry.attempt", i64::from(attempt).into()),
                ],
            );
            t += backoff;
        }
        co.svc.end_span(&span, t);
        (t, charge)
    }

    /// payments `POST /v1/charges`: idempotency key, card gateway, payment row.
    fn payments_charge(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        idempotency_key: &str,
        amount_cents: i64,
        gateway_hangs: bool,
    ) -> Reply {
        let pay = &self.payments;
        let cx = pay.svc.accept(
            &CHARGE,
            "/v1/charges",
            parent,
            start,
            vec![
                KeyValue::new("app.payment.amount_cents", amount_cents),
                KeyValue::new("app.payment.currency", "USD"),
            ],
        );
        let t = start + between(rng, 0.1, 0.4);
        // A retried charge must not bill twice: the key makes the gateway call idempotent.
        let mut t = pay.svc.redis(
            &cx,
            t,
            "SET",
            &format!("{idempotency_key} 1 NX EX 86400"),
            redis_latency(rng),
            None,
        );
        let gateway = pay.svc.start_span(
            &cx,
            "POST /v1/payment_intents",
            SpanKind::Client,
            t,
            vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new(
                    "url.full",
                    format!("https://{GATEWAY_HOST}/v1/payment_intents"),
                ),
                KeyValue::new("url.template", "/v1/payment_intents"),
                KeyValue::new("server.address", GATEWAY_HOST),
                KeyValue::new("server.port", 443_i64),
                KeyValue::new("peer.service", "paygate"),
            ],
        );
        if gateway_hangs {
            t += GATEWAY_TIMEOUT;
            pay.svc.record_exception(
                &gateway,
                t,
                "TimeoutError",
                format!(
                    "POST https://{GATEWAY_HOST}/v1/payment_intents timed out after {} ms",
                    GATEWAY_TIMEOUT.as_millis()
                ),
            );
            pay.svc.end_span(&gateway, t);
            pay.svc.log(
                &cx,
                t,
                Severity::Error,
                format!(
                    "card gateway did not answer within {} ms",
                    GATEWAY_TIMEOUT.as_millis()
                ),
                vec![("server.address", GATEWAY_HOST.into())],
            );
            pay.attempts
                .add(1, &[KeyValue::new("app.payment.outcome", "timeout")]);
            let end = t + between(rng, 0.1, 0.3);
            return pay.svc.respond(&CHARGE, &pay.http, &cx, start, end, 504);
        }

        t += lognormal(rng, ms(180.0), 0.45);
        let declined = rng.random_bool(CARD_DECLINE_RATE);
        let gateway_status: u16 = if declined { 402 } else { 200 };
        gateway.span().set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(gateway_status),
        ));
        if declined {
            pay.svc.mark_error(
                &gateway,
                "402",
                "card_declined: insufficient_funds".to_string(),
            );
        }
        pay.svc.end_span(&gateway, t);
        if declined {
            pay.svc.log(
                &cx,
                t,
                Severity::Warn,
                "card declined by the gateway: insufficient_funds",
                vec![("app.payment.decline_code", "insufficient_funds".into())],
            );
            pay.attempts
                .add(1, &[KeyValue::new("app.payment.outcome", "declined")]);
            let end = t + between(rng, 0.1, 0.3);
            return pay.svc.respond(&CHARGE, &pay.http, &cx, start, end, 402);
        }

        let charge_id = format!("ch_{:016x}", rng.random::<u64>());
        let t = pay.svc.postgres(
            &cx,
            t,
            &INSERT_PAYMENT,
            lognormal(rng, ms(2.0), 0.5),
            1,
            None,
        );
        pay.svc.log(
            &cx,
            t,
            Severity::Info,
            format!("captured charge {charge_id}: {} USD", usd(amount_cents)),
            vec![
                ("app.payment.charge_id", charge_id.into()),
                ("app.payment.amount_cents", amount_cents.into()),
            ],
        );
        pay.attempts
            .add(1, &[KeyValue::new("app.payment.outcome", "captured")]);
        let end = t + between(rng, 0.1, 0.3);
        pay.svc.respond(&CHARGE, &pay.http, &cx, start, end, 200)
    }

    /// inventory `ListProducts`.
    fn inventory_list(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        category: &'static str,
        db_fails: bool,
    ) -> Reply {
        let inv = &self.inventory;
        let cx = inv.svc.accept(
            &INVENTORY_LIST,
            "",
            parent,
            start,
            vec![KeyValue::new("app.category", category)],
        );
        let t = start + between(rng, 0.05, 0.3);
        let t = inv.query(
            rng,
            &cx,
            t,
            &SELECT_PRODUCTS,
            50,
            db_fails.then_some(STATEMENT_TIMEOUT),
        );
        let status = if db_fails {
            inv.svc.log(
                &cx,
                t,
                Severity::Error,
                format!(
                    "ListProducts({category}) failed: {}",
                    STATEMENT_TIMEOUT.message
                ),
                vec![("db.response.status_code", STATEMENT_TIMEOUT.sqlstate.into())],
            );
            500
        } else {
            200
        };
        let end = t + between(rng, 0.05, 0.2);
        inv.svc
            .respond(&INVENTORY_LIST, &inv.rpc, &cx, start, end, status)
    }

    /// inventory `GetProduct`.
    fn inventory_get(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        product: i64,
        db_fails: bool,
    ) -> Reply {
        let inv = &self.inventory;
        let cx = inv.svc.accept(
            &INVENTORY_GET,
            "",
            parent,
            start,
            vec![KeyValue::new("app.product.id", product)],
        );
        let missing = !db_fails && rng.random_bool(PRODUCT_NOT_FOUND_RATE);
        let t = start + between(rng, 0.05, 0.3);
        let t = inv.query(
            rng,
            &cx,
            t,
            &SELECT_PRODUCT,
            i64::from(!missing),
            db_fails.then_some(STATEMENT_TIMEOUT),
        );
        let status = if db_fails {
            inv.svc.log(
                &cx,
                t,
                Severity::Error,
                format!(
                    "GetProduct({product}) failed: {}",
                    STATEMENT_TIMEOUT.message
                ),
                vec![("db.response.status_code", STATEMENT_TIMEOUT.sqlstate.into())],
            );
            500
        } else if missing {
            404
        } else {
            200
        };
        let end = t + between(rng, 0.05, 0.2);
        inv.svc
            .respond(&INVENTORY_GET, &inv.rpc, &cx, start, end, status)
    }

    /// inventory `ReserveStock` / `ReleaseStock` for one SKU.
    fn inventory_stock(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        operation: StockOperation,
        sku: &str,
        db_fails: bool,
    ) -> Reply {
        let inv = &self.inventory;
        let endpoint = operation.endpoint();
        let cx = inv.svc.accept(
            endpoint,
            "",
            parent,
            start,
            vec![KeyValue::new("app.sku", sku.to_string())],
        );
        let out_of_stock =
            operation == StockOperation::Reserve && !db_fails && rng.random_bool(OUT_OF_STOCK_RATE);
        let t = start + between(rng, 0.05, 0.3);
        let t = inv.query(
            rng,
            &cx,
            t,
            operation.query(),
            i64::from(!out_of_stock),
            db_fails.then_some(DEADLOCK),
        );
        let status = if db_fails {
            inv.svc.log(
                &cx,
                t,
                Severity::Error,
                format!("reserving {sku} failed: {}", DEADLOCK.message),
                vec![
                    ("app.sku", sku.to_string().into()),
                    ("db.response.status_code", DEADLOCK.sqlstate.into()),
                ],
            );
            500
        } else if out_of_stock {
            inv.svc.log(
                &cx,
                t,
                Severity::Warn,
                format!("not enough stock to reserve {sku}"),
                vec![("app.sku", sku.to_string().into())],
            );
            409
        } else {
            200
        };
        let end = t + between(rng, 0.05, 0.2);
        inv.svc.respond(endpoint, &inv.rpc, &cx, start, end, status)
    }

    /// checkout publishes `order.created` to Kafka (a PRODUCER span) and the simulated consumer
    /// drains the topic, which drives the `queue.depth` gauge.
    fn publish_order(
        &self,
        rng: &mut SmallRng,
        parent: &Context,
        start: SystemTime,
        order_id: &str,
    ) -> SystemTime {
        let co = &self.checkout;
        let span = co.svc.start_span(
            parent,
            "send orders",
            SpanKind::Producer,
            start,
            vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.destination.name", "orders"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new("messaging.kafka.message.key", order_id.to_string()),
                KeyValue::new(
                    "messaging.destination.partition.id",
                    rng.random_range(0..6_u32).to_string(),
                ),
                KeyValue::new("server.address", "kafka-0.kafka.shop.svc"),
                KeyValue::new("server.port", 9092_i64),
            ],
        );
        let end = start + lognormal(rng, ms(1.8), 0.5);
        co.svc.end_span(&span, end);

        // Each queued event is consumed with probability 0.3 per new order: the depth hovers
        // around a few events and spikes now and then.
        let depth = co.queue_depth.load(Ordering::Relaxed);
        let drained: i64 = (0..=depth).map(|_| i64::from(rng.random_bool(0.3))).sum();
        co.queue_depth
            .store((depth + 1 - drained).max(0), Ordering::Relaxed);
        end
    }
}

/// Items in a cart: mostly one or two.
fn cart_size(rng: &mut SmallRng) -> i64 {
    match rng.random_range(0..100_u32) {
        0..35 => 1,
        35..60 => 2,
        60..77 => 3,
        77..87 => 4,
        87..94 => 5,
        _ => 6,
    }
}

fn usd(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}
