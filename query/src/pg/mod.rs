//! The PostgreSQL wire protocol (simple and extended query), so psql, psycopg, JDBC, Grafana's
//! PostgreSQL data source and BI tools can run SELECTs against oxeye.
//!
//! Statements are answered in three ways: client housekeeping (`SET`, `SHOW`, `BEGIN`,
//! `COMMIT`, `DISCARD`, ...) is acknowledged without touching data (the SQL surface is
//! read-only); queries are planned and run by the [`QueryEngine`] with its limits; and the
//! `pg_catalog` tables and functions of [`catalog`] answer what clients ask when they connect or
//! list tables. Who may connect: with API tokens (`--auth-tokens-file`), anyone whose password
//! is a token with the read or admin role (a cleartext password exchange, so use TLS off
//! loopback); with `--pg-password`, that user and password; with neither, loopback clients.

pub mod catalog;
mod statement;
pub mod types;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::scalar::ScalarValue;
use futures::Sink;
use pgwire::api::auth::cleartext::CleartextPasswordAuthStartupHandler;
use pgwire::api::auth::md5pass::{Md5PasswordAuthStartupHandler, hash_md5_password};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{QueryEngine, QueryError};
use statement::{Housekeeping, Kind, Session, classify, for_session, rewrite, split_statements};

/// The user a client logged in as.
fn login_user<C: ClientInfo>(client: &C) -> &str {
    client
        .metadata()
        .get("user")
        .map(String::as_str)
        .unwrap_or(catalog::USER)
}

/// Settings of the PostgreSQL listener.
#[derive(Clone)]
pub struct PgConfig {
    pub listen: SocketAddr,
    pub user: String,
    /// When `None`, clients connecting from loopback are trusted and others refused.
    pub password: Option<String>,
    /// API tokens: when enabled, a token with the read or admin role is a password (and
    /// `password` still works for `user`); nobody is trusted for being on loopback.
    pub auth: oxeye_auth::Auth,
    /// With it, connections must switch to TLS (`sslmode=require` or stricter) before they
    /// log in; plain-text ones are refused, so no password or row crosses the network in
    /// the clear.
    pub tls: Option<pgwire::tokio::tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("listen", &self.listen)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field("tokens", &self.auth.enabled())
            .finish()
    }
}

/// The SQLSTATE and message a query error is reported with.
fn error_info(e: &QueryError) -> ErrorInfo {
    let code = match e {
        QueryError::Invalid { message, .. } => {
            if message.contains("table")
                && (message.contains("not found") || message.contains("doesn't exist"))
            {
                "42P01"
            } else if message.contains("No field named") || message.contains("not found") {
                "42703"
            } else if message.contains("Invalid function")
                || message.contains("function") && message.contains("not found")
            {
                "42883"
            } else if message.contains("parser error") || message.contains("ParserError") {
                "42601"
            } else {
                "42000"
            }
        }
        QueryError::ReadOnly(_) => "25006",
        QueryError::Timeout(_) => "57014",
        QueryError::Memory { .. } => "53200",
        QueryError::Busy => "53300",
        // cannot_connect_now: a store node failed mid-query; retrying may work.
        QueryError::Unavailable(_) => "57P03",
        QueryError::Internal(_) => "XX000",
    };
    ErrorInfo::new("ERROR".to_owned(), code.to_owned(), e.to_string())
}

fn user_error(e: &QueryError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e)))
}

/// A parsed statement of the extended protocol.
#[derive(Debug, Clone)]
pub struct PgStatement {
    kind: Kind,
    /// The plan of a query, with placeholders.
    plan: Option<LogicalPlan>,
    param_types: Vec<Type>,
    /// Arrow types the placeholders were inferred as.
    param_arrow_types: Vec<Option<arrow::datatypes::DataType>>,
    schema: Option<arrow::datatypes::SchemaRef>,
}

pub struct Backend {
    engines: Engines,
    parser: Arc<Parser>,
}

pub struct Parser {
    engines: Engines,
}

/// The client metadata key that holds the tenant a token login belongs to.
const TENANT_KEY: &str = "oxeye.tenant";

/// A query engine per tenant: a connection only ever plans and runs on its login's tenant's
/// engine, whose tables are that tenant's store alone.
#[derive(Clone)]
pub struct Engines {
    default: QueryEngine,
    tenants: Arc<std::collections::BTreeMap<String, QueryEngine>>,
}

impl Engines {
    pub fn new(
        default: QueryEngine,
        tenants: std::collections::BTreeMap<String, QueryEngine>,
    ) -> Engines {
        Engines {
            default,
            tenants: Arc::new(tenants),
        }
    }

    fn for_client<C: ClientInfo>(&self, client: &C) -> Result<&QueryEngine, QueryError> {
        match client.metadata().get(TENANT_KEY) {
            None => Ok(&self.default),
            Some(tenant) if tenant == oxeye_auth::DEFAULT_TENANT => Ok(&self.default),
            Some(tenant) => self.tenants.get(tenant).ok_or_else(|| {
                QueryError::Internal(format!("tenant `{tenant}` has no store on this node"))
            }),
        }
    }
}

/// Placeholder types of a plan, `$1` first.
fn placeholder_types(plan: &LogicalPlan) -> Vec<Option<arrow::datatypes::DataType>> {
    let Ok(types) = plan.get_parameter_types() else {
        return Vec::new();
    };
    let mut numbered: Vec<(usize, Option<arrow::datatypes::DataType>)> = types
        .into_iter()
        .filter_map(|(k, v)| {
            k.trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .map(|n| (n, v))
        })
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    let len = numbered.last().map(|(n, _)| *n).unwrap_or(0);
    let mut out = vec![None; len];
    for (n, t) in numbered {
        if n >= 1 {
            out[n - 1] = t;
        }
    }
    out
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Arc<PgStatement>;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        declared: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let kind = classify(sql);
        let (plan, schema, param_arrow_types) = match &kind {
            Kind::Query(q) => {
                let q = for_session(
                    q,
                    &Session {
                        user: login_user(client),
                        declared,
                    },
                );
                let engine = self
                    .engines
                    .for_client(client)
                    .map_err(|e| user_error(&e))?;
                let plan = engine.plan(&q).await.map_err(|e| user_error(&e))?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                let params = placeholder_types(&plan);
                (Some(plan), Some(schema), params)
            }
            Kind::Empty => return Ok(None),
            _ => (None, fixed_schema(&kind), Vec::new()),
        };
        let param_types = param_arrow_types
            .iter()
            .map(|t| t.as_ref().map(types::pg_type).unwrap_or(Type::TEXT))
            .collect();
        Ok(Some(Arc::new(PgStatement {
            kind,
            plan,
            param_types,
            param_arrow_types,
            schema,
        })))
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(stmt
            .schema
            .as_ref()
            .map(|s| types::fields(s, format.unwrap_or(&Format::UnifiedText)))
            .unwrap_or_default())
    }
}

/// The result schema of statements answered without a plan.
fn fixed_schema(kind: &Kind) -> Option<arrow::datatypes::SchemaRef> {
    let text =
        |name: &String| arrow::datatypes::Field::new(name, arrow::datatypes::DataType::Utf8, true);
    match kind {
        Kind::Show(name) => Some(Arc::new(arrow::datatypes::Schema::new(vec![text(name)]))),
        Kind::NoRows(columns) => Some(Arc::new(arrow::datatypes::Schema::new(
            columns.iter().map(text).collect::<Vec<_>>(),
        ))),
        _ => None,
    }
}

impl Backend {
    async fn run_plan(
        engine: &QueryEngine,
        plan: LogicalPlan,
        format: &Format,
    ) -> Result<Response, QueryError> {
        let max = engine.config().max_result_rows;
        let result = engine.run_plan(plan, max).await?;
        let fields = Arc::new(types::fields(&result.schema, format));
        let rows = types::encode_rows(&result.batches, &fields)
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(Response::Query(QueryResponse::new(
            fields,
            futures::stream::iter(rows.into_iter().map(Ok)),
        )))
    }

    /// Housekeeping answers, or a query's rows.
    async fn answer(
        &self,
        engine: &QueryEngine,
        kind: &Kind,
        plan: Option<LogicalPlan>,
        format: &Format,
        user: &str,
    ) -> Result<Response, QueryError> {
        Ok(match kind {
            Kind::Empty => Response::EmptyQuery,
            Kind::Housekeeping(h) => match h {
                Housekeeping::Begin => Response::TransactionStart(Tag::new("BEGIN")),
                Housekeeping::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
                Housekeeping::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
                Housekeeping::Tag(t) => Response::Execution(Tag::new(t)),
            },
            Kind::Show(name) => {
                let value = statement::show_value(name);
                let fields = Arc::new(vec![FieldInfo::new(
                    name.clone(),
                    None,
                    None,
                    Type::TEXT,
                    format.format_for(0),
                )]);
                let mut enc = pgwire::api::results::DataRowEncoder::new(fields.clone());
                enc.encode_field(&value)
                    .map_err(|e| QueryError::Internal(e.to_string()))?;
                Response::Query(QueryResponse::new(
                    fields,
                    futures::stream::iter(vec![Ok(enc.take_row())]),
                ))
            }
            Kind::NoRows(_) => {
                let schema = fixed_schema(kind)
                    .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
                Response::Query(QueryResponse::new(
                    Arc::new(types::fields(&schema, format)),
                    futures::stream::empty(),
                ))
            }
            Kind::Query(sql) => {
                let plan = match plan {
                    Some(p) => p,
                    None => {
                        engine
                            .plan(&for_session(
                                sql,
                                &Session {
                                    user,
                                    declared: &[],
                                },
                            ))
                            .await?
                    }
                };
                Backend::run_plan(engine, plan, format).await?
            }
        })
    }
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut out = Vec::new();
        for sql in split_statements(query) {
            let engine = self
                .engines
                .for_client(client)
                .map_err(|e| user_error(&e))?;
            match self
                .answer(
                    engine,
                    &classify(&sql),
                    None,
                    &Format::UnifiedText,
                    login_user(client),
                )
                .await
            {
                Ok(r) => out.push(r),
                Err(e) => {
                    // Like PostgreSQL: an error ends the rest of a multi-statement query.
                    out.push(Response::Error(Box::new(error_info(&e))));
                    break;
                }
            }
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

/// Decodes parameter `i` of a portal into a value of the type the plan expects.
fn parameter(portal: &Portal<Arc<PgStatement>>, i: usize) -> PgWireResult<ScalarValue> {
    let stmt = &portal.statement.statement;
    let client_type = portal.statement.parameter_types.get(i).cloned().flatten();
    let pg = client_type.unwrap_or_else(|| stmt.param_types.get(i).cloned().unwrap_or(Type::TEXT));
    let value = match pg {
        Type::BOOL => ScalarValue::Boolean(portal.parameter::<bool>(i, &pg)?),
        Type::INT2 => ScalarValue::Int64(portal.parameter::<i16>(i, &pg)?.map(i64::from)),
        Type::INT4 => ScalarValue::Int64(portal.parameter::<i32>(i, &pg)?.map(i64::from)),
        Type::INT8 => ScalarValue::Int64(portal.parameter::<i64>(i, &pg)?),
        Type::FLOAT4 => ScalarValue::Float64(portal.parameter::<f32>(i, &pg)?.map(f64::from)),
        Type::FLOAT8 => ScalarValue::Float64(portal.parameter::<f64>(i, &pg)?),
        Type::TIMESTAMPTZ => ScalarValue::TimestampNanosecond(
            portal
                .parameter::<chrono::DateTime<chrono::FixedOffset>>(i, &pg)?
                .and_then(|d| d.timestamp_nanos_opt()),
            Some("UTC".into()),
        ),
        Type::TIMESTAMP => ScalarValue::TimestampNanosecond(
            portal
                .parameter::<chrono::NaiveDateTime>(i, &pg)?
                .and_then(|d| d.and_utc().timestamp_nanos_opt()),
            None,
        ),
        Type::BYTEA => ScalarValue::Binary(portal.parameter::<Vec<u8>>(i, &pg)?),
        _ => ScalarValue::Utf8(portal.parameter::<String>(i, &pg)?),
    };
    // Cast to what the plan inferred, so `$1` compares like a literal would.
    match stmt.param_arrow_types.get(i).cloned().flatten() {
        Some(dt) if dt != value.data_type() => value.cast_to(&dt).map_err(|e| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "22P02".into(),
                format!("parameter ${} cannot be read as {dt}: {e}", i + 1),
            )))
        }),
        _ => Ok(value),
    }
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = Arc<PgStatement>;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: pgwire::api::store::PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let plan = match &stmt.plan {
            Some(plan) => {
                let values = (0..portal.parameter_len())
                    .map(|i| parameter(portal, i))
                    .collect::<PgWireResult<Vec<_>>>()?;
                let plan = if values.is_empty() {
                    plan.clone()
                } else {
                    plan.clone()
                        .with_param_values(ParamValues::List(
                            values.into_iter().map(Into::into).collect(),
                        ))
                        .map_err(|e| user_error(&QueryError::from_datafusion(e, 0)))?
                };
                Some(plan)
            }
            None => None,
        };
        let engine = self
            .engines
            .for_client(client)
            .map_err(|e| user_error(&e))?;
        self.answer(
            engine,
            &stmt.kind,
            plan,
            &portal.result_column_format,
            login_user(client),
        )
        .await
        .map_err(|e| user_error(&e))
    }
}

/// Checks where a connection comes from before the protocol's own startup.
struct Startup {
    auth: oxeye_auth::Auth,
    password:
        Option<Arc<Md5PasswordAuthStartupHandler<Credentials, DefaultServerParameterProvider>>>,
    tokens: Option<
        Arc<CleartextPasswordAuthStartupHandler<TokenPasswords, DefaultServerParameterProvider>>,
    >,
    trust: Arc<TrustLoopback>,
    require_tls: bool,
}

struct TrustLoopback;

impl NoopStartupHandler for TrustLoopback {}

#[derive(Debug)]
struct Credentials {
    user: String,
    password: String,
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() != Some(self.user.as_str()) {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                format!(
                    "role \"{}\" does not exist; connect as \"{}\"",
                    login.user().unwrap_or(""),
                    self.user
                ),
            ))));
        }
        let salt: [u8; 4] = rand_salt();
        let hashed = hash_md5_password(&self.user, &self.password, &salt);
        Ok(Password::new(
            Some(salt.to_vec()),
            hashed.as_bytes().to_vec(),
        ))
    }
}

/// A fresh random salt per login, so a recorded MD5 exchange cannot be replayed.
fn rand_salt() -> [u8; 4] {
    rand::random()
}

/// Passwords when API tokens are on: a token with the read or admin role, whatever the user
/// name (it shows in the logs), or `--pg-password` for `--pg-user`.
struct TokenPasswords {
    auth: oxeye_auth::Auth,
    user: String,
    password: Option<String>,
}

impl Debug for TokenPasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenPasswords")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource for TokenPasswords {
    async fn get_password(&self, _login: &LoginInfo) -> PgWireResult<Password> {
        // Only hashes of the tokens are kept: there is no password to hand out, only
        // presented ones to check (verify_password).
        Err(PgWireError::UserError(Box::new(ErrorInfo::new(
            "FATAL".into(),
            "28000".into(),
            "this server checks API tokens as passwords; it has none to compare".into(),
        ))))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<()>> {
        let user = login.user().unwrap_or_default();
        let denied = |message: String| {
            Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                message,
            ))))
        };
        let Ok(secret) = std::str::from_utf8(presented) else {
            return denied(format!(
                "password authentication failed for user \"{user}\""
            ));
        };
        if let Some(principal) = self.auth.verify_token(secret.trim()) {
            if principal.role.allows(oxeye_auth::Access::Read) {
                tracing::debug!(
                    user,
                    token = principal.name,
                    "PostgreSQL login with an API token"
                );
                return Ok(None);
            }
            return denied(format!(
                "token `{}` may only send telemetry (ingest role); SQL needs a read or admin token",
                principal.name
            ));
        }
        if let Some(password) = &self.password
            && user == self.user
            && constant_time_eq(password.as_bytes(), presented)
        {
            return Ok(None);
        }
        denied(format!(
            "password authentication failed for user \"{user}\": give an API token with the read \
             role as the password"
        ))
    }
}

/// Compares without stopping at the first difference, so timing does not reveal how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let startup = matches!(message, PgWireFrontendMessage::Startup(_));
        let result = self.authenticate(client, message).await;
        if startup {
            // Startup parameters land in the metadata too: a client must not name its own
            // tenant. Only a verified token sets it (on the password message, later).
            client.metadata_mut().remove(TENANT_KEY);
        }
        result
    }
}

impl Startup {
    async fn authenticate<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(tokens) = &self.tokens {
            if self.require_tls && !client.is_secure() {
                return Err(tls_required());
            }
            // The token decides whose data the connection sees: note its tenant before the
            // handler checks the password (a refused login never gets to query).
            if let PgWireFrontendMessage::PasswordMessageFamily(family) = &message
                && let Some(secret) = presented_password(family)
                && let Some(principal) = self.auth.verify_token(secret.trim())
            {
                client
                    .metadata_mut()
                    .insert(TENANT_KEY.into(), principal.tenant_name().to_string());
            }
            return tokens.on_startup(client, message).await;
        }
        if self.require_tls && !client.is_secure() {
            return Err(tls_required());
        }
        match &self.password {
            Some(handler) => handler.on_startup(client, message).await,
            None => {
                if !client.socket_addr().ip().is_loopback() {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28000".into(),
                        format!(
                            "connections from {} need a password: start oxeye with --pg-password",
                            client.socket_addr().ip()
                        ),
                    ))));
                }
                self.trust.on_startup(client, message).await
            }
        }
    }
}

/// The password of a cleartext password message.
fn presented_password(family: &pgwire::messages::startup::PasswordMessageFamily) -> Option<String> {
    use pgwire::messages::startup::PasswordMessageFamily;
    match family {
        PasswordMessageFamily::Raw(body) => PasswordMessageFamily::Raw(body.clone())
            .into_password()
            .ok()
            .map(|p| p.password),
        PasswordMessageFamily::Password(p) => Some(p.password.clone()),
        _ => None,
    }
}

fn tls_required() -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "28000".into(),
        "this server only accepts TLS connections: connect with sslmode=require, or verify-full \
         with sslrootcert set to the CA that signed the server's certificate"
            .into(),
    )))
}

struct Handlers {
    backend: Arc<Backend>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// A running PostgreSQL listener.
pub struct PgServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl PgServer {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Binds and serves the PostgreSQL protocol until shut down.
pub async fn start(engines: Engines, config: PgConfig) -> std::io::Result<PgServer> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let params = || {
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = catalog::SERVER_VERSION.to_string();
        params.default_transaction_read_only = true;
        params.is_superuser = false;
        params.time_zone = "UTC".into();
        params
    };
    let tokens = config.auth.enabled().then(|| {
        Arc::new(CleartextPasswordAuthStartupHandler::new(
            TokenPasswords {
                auth: config.auth.clone(),
                user: config.user.clone(),
                password: config.password.clone(),
            },
            params(),
        ))
    });
    let startup = Arc::new(Startup {
        auth: config.auth.clone(),
        tokens,
        password: config.password.clone().map(|password| {
            Arc::new(Md5PasswordAuthStartupHandler::new(
                Arc::new(Credentials {
                    user: config.user.clone(),
                    password,
                }),
                Arc::new(params()),
            ))
        }),
        trust: Arc::new(TrustLoopback),
        require_tls: config.tls.is_some(),
    });
    let handlers = Arc::new(Handlers {
        backend: Arc::new(Backend {
            engines: engines.clone(),
            parser: Arc::new(Parser { engines }),
        }),
        startup,
    });
    let stop = CancellationToken::new();
    let stop_accept = stop.clone();
    let tls = config.tls.clone();
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop_accept.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((socket, peer)) => {
                    let handlers = handlers.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                            tracing::debug!(%peer, error = %e, "postgres connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "postgres accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    tracing::info!(%addr, tls = config.tls.is_some(), "PostgreSQL protocol listening");
    Ok(PgServer { addr, task, stop })
}

/// SQL as sent by clients, adjusted for the dialect (see [`statement::rewrite`]).
pub fn client_sql(sql: &str) -> String {
    rewrite(sql)
}
