//! oxeye auth: who may send and who may read.
//!
//! This crate owns API tokens and their roles, and checks them where requests arrive: the
//! OTLP receivers (gRPC interceptor, HTTP middleware), the HTTP API and the web UI (bearer
//! tokens, or a session cookie made by the UI's login page). Tokens live in a TOML file that
//! holds only their SHA-256 hashes:
//!
//! ```toml
//! [[tokens]]
//! name = "checkout-service"
//! role = "ingest"   # ingest | read | admin
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! ingest_bytes_per_second = "2MiB"   # optional ingest limit for this token
//! tenant = "acme"                     # optional: whose data (default: `default`)
//!
//! [[tenants]]                           # optional: settings shared by a tenant's tokens
//! name = "acme"
//! ingest_bytes_per_second = "20MiB"
//! max_request_size = "4MiB"
//! ```
//!
//! `ingest` may send OTLP; `read` may query (SQL, the APIs, the UI); `admin` may do both and
//! change things (flush, compaction, alert rules). With no token file, nothing is checked: the
//! binary refuses that on a non-loopback address unless told otherwise.

mod http_guard;
mod rate;
mod sessions;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use http_guard::{api_guard, login_routes, otlp_guard};
pub use rate::{IngestLimit, parse_bytes};
pub use sessions::Sessions;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Ingest,
    Read,
    Admin,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Ingest,
    Read,
    Admin,
}

impl Role {
    pub fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Role::Admin, _) | (Role::Read, Access::Read) | (Role::Ingest, Access::Ingest)
        )
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Ingest => "ingest",
            Access::Read => "read",
            Access::Admin => "admin",
        })
    }
}

/// The holder of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The OTLP ingest limits a request made with this token must fit: the token's own
    /// and its tenant's (shared by every token of the tenant), when set.
    pub ingest_limits: Vec<IngestLimit>,
    /// The tenant whose data the token sends and reads; `None` for the default tenant.
    pub tenant: Option<Arc<str>>,
    /// The tenant's largest OTLP request in bytes, when it has one.
    pub max_request_bytes: Option<u64>,
}

impl Principal {
    /// The tenant's name, `default` for the default tenant.
    pub fn tenant_name(&self) -> &str {
        self.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }
}

/// The tenant of tokens without one (and of everything when tokens are off).
pub const DEFAULT_TENANT: &str = "default";

/// Whether `name` may name a tenant: it becomes a directory name.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the token file {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    #[serde(default)]
    tenants: Vec<TenantEntry>,
}

/// Settings of a tenant, shared by all its tokens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantEntry {
    name: String,
    /// OTLP request bytes per second over every token of the tenant together.
    #[serde(default)]
    ingest_bytes_per_second: Option<SizeValue>,
    /// Largest OTLP request (as sent, before decompression) a tenant's token may send; below
    /// the process's --max-request-size to matter.
    #[serde(default)]
    max_request_size: Option<SizeValue>,
}

impl SizeValue {
    /// The size of `whose` setting `key`: at least one byte.
    fn bytes(self, whose: &str, key: &str) -> Result<u64, String> {
        let bytes = match self {
            SizeValue::Bytes(b) => b,
            SizeValue::Text(text) => {
                parse_bytes(&text).map_err(|e| format!("{whose}: {key}: {e}"))?
            }
        };
        if bytes == 0 {
            return Err(format!("{whose}: {key} must be at least 1 byte"));
        }
        Ok(bytes)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: String,
    /// `2MiB` or a number of bytes: OTLP request bytes per second, over all requests made
    /// with this token; past it, requests are refused with OTLP's retryable codes.
    #[serde(default)]
    ingest_bytes_per_second: Option<SizeValue>,
    /// Whose data: tokens of one tenant never see another's rows. Default: `default`.
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// The known tokens, by the SHA-256 of their secret.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Principal>,
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The hex SHA-256 of a secret, as the token file wants it.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(digest(secret))
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text).map_err(|reason| AuthError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let file: TokenFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if file.tokens.is_empty() {
            return Err("it lists no [[tokens]]".into());
        }
        let mut tenant_limits: HashMap<String, IngestLimit> = HashMap::new();
        let mut tenant_max_request: HashMap<String, u64> = HashMap::new();
        for t in file.tenants {
            let whose = format!("tenant `{}`", t.name);
            if !valid_tenant_name(&t.name) || t.name == DEFAULT_TENANT {
                return Err(format!(
                    "{whose}: a tenant name is 1-64 letters, digits, `-` or `_`, not `default`"
                ));
            }
            if let Some(size) = t.max_request_size {
                let bytes = size.bytes(&whose, "max_request_size")?;
                tenant_max_request.insert(t.name.clone(), bytes);
            }
            if let Some(size) = t.ingest_bytes_per_second {
                let rate = size.bytes(&whose, "ingest_bytes_per_second")?;
                tenant_limits.insert(t.name.clone(), IngestLimit::new(whose, rate));
            }
        }
        let mut by_hash = HashMap::new();
        for t in file.tokens {
            let hash: [u8; 32] = hex::decode(t.sha256.trim())
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    format!(
                        "token `{}`: sha256 must be 64 hex digits (the SHA-256 of the secret)",
                        t.name
                    )
                })?;
            let whose = format!("token `{}`", t.name);
            let mut ingest_limits = Vec::new();
            if let Some(size) = t.ingest_bytes_per_second {
                let rate = size.bytes(&whose, "ingest_bytes_per_second")?;
                ingest_limits.push(IngestLimit::new(whose, rate));
            }
            let tenant = match t.tenant.as_deref().map(str::trim) {
                None | Some(DEFAULT_TENANT) => None,
                Some(name) if valid_tenant_name(name) => Some(Arc::from(name)),
                Some(name) => {
                    return Err(format!(
                        "token `{}`: tenant `{name}` must be 1-64 letters, digits, `-` or `_`",
                        t.name
                    ));
                }
            };
            if let Some(limit) = tenant.as_deref().and_then(|n| tenant_limits.get(n)) {
                ingest_limits.push(limit.clone());
            }
            let max_request_bytes = tenant
                .as_deref()
                .and_then(|n| tenant_max_request.get(n))
                .copied();
            let principal = Principal {
                name: t.name,
                role: t.role,
                ingest_limits,
                tenant,
                max_request_bytes,
            };
            if let Some(other) = by_hash.insert(hash, principal) {
                return Err(format!(
                    "token `{}` has the same secret as another",
                    other.name
                ));
            }
        }
        Ok(Tokens { by_hash })
    }

    /// The holder of `secret`, if it is a known token.
    pub fn verify(&self, secret: &str) -> Option<&Principal> {
        self.by_hash.get(&digest(secret))
    }

    /// The tenants the tokens name, besides the default one.
    pub fn tenants(&self) -> std::collections::BTreeSet<String> {
        self.by_hash
            .values()
            .filter_map(|p| p.tenant.as_deref().map(str::to_string))
            .collect()
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials: 401.
    Missing,
    /// Credentials that match no token or session: 401.
    Unknown,
    /// A known token whose role does not allow this: 403.
    Forbidden { name: String, needs: Access },
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Missing => f.write_str(
                "authentication required: send `Authorization: Bearer <token>` (for OTLP \
                 SDKs: OTEL_EXPORTER_OTLP_HEADERS=\"Authorization=Bearer <token>\")",
            ),
            Denied::Unknown => f.write_str("the token or session is not valid"),
            Denied::Forbidden { name, needs } => {
                write!(
                    f,
                    "token `{name}` does not have the {needs} role this needs"
                )
            }
        }
    }
}

/// Authentication for one process: its tokens (none: nothing is checked) and UI sessions.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: Option<Arc<Tokens>>,
    sessions: Arc<Sessions>,
}

impl Auth {
    /// Nothing is checked.
    pub fn off() -> Auth {
        Auth::default()
    }

    pub fn with_tokens(tokens: Tokens) -> Auth {
        Auth {
            tokens: Some(Arc::new(tokens)),
            sessions: Arc::new(Sessions::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// The tenants the tokens name, besides the default one (none when tokens are off).
    pub fn tenants(&self) -> std::collections::BTreeSet<String> {
        self.tokens
            .as_ref()
            .map(|t| t.tenants())
            .unwrap_or_default()
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn verify_token(&self, secret: &str) -> Option<Principal> {
        self.tokens.as_ref()?.verify(secret).cloned()
    }

    /// Checks a request's bearer token or session against what it needs. `Ok(None)` when
    /// auth is off.
    pub fn check(
        &self,
        bearer: Option<&str>,
        session: Option<&str>,
        needs: Access,
    ) -> Result<Option<Principal>, Denied> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        let principal = match (bearer, session) {
            (Some(secret), _) => tokens.verify(secret).cloned().ok_or(Denied::Unknown)?,
            (None, Some(id)) => self.sessions.get(id).ok_or(Denied::Unknown)?,
            (None, None) => return Err(Denied::Missing),
        };
        if principal.role.allows(needs) {
            Ok(Some(principal))
        } else {
            Err(Denied::Forbidden {
                name: principal.name,
                needs,
            })
        }
    }

    /// A tonic interceptor admitting requests whose bearer token allows `needs`.
    pub fn grpc_interceptor(
        &self,
        needs: Access,
    ) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone + use<>
    {
        let auth = self.clone();
        move |req: tonic::Request<()>| {
            let bearer = req
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            match auth.check(bearer, None, needs) {
                Ok(principal) => {
                    let mut req = req;
                    if let Some(p) = principal {
                        // For the service behind: the token's ingest limit.
                        req.extensions_mut().insert(p);
                    }
                    Ok(req)
                }
                Err(d @ Denied::Forbidden { .. }) => {
                    Err(tonic::Status::permission_denied(d.to_string()))
                }
                Err(d) => Err(tonic::Status::unauthenticated(d.to_string())),
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            "[[tokens]]\nname = \"sdk\"\nrole = \"ingest\"\nsha256 = \"{}\"\n\
             [[tokens]]\nname = \"grafana\"\nrole = \"read\"\nsha256 = \"{}\"\n\
             [[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            hash_secret("s-ingest"),
            hash_secret("s-read"),
            hash_secret("s-admin")
        ))
        .unwrap()
    }

    #[test]
    fn roles_allow_what_they_name_and_admin_allows_all() {
        let auth = Auth::with_tokens(tokens());
        let ok = |secret: &str, needs| auth.check(Some(secret), None, needs).is_ok();
        assert!(ok("s-ingest", Access::Ingest));
        assert!(!ok("s-ingest", Access::Read));
        assert!(ok("s-read", Access::Read));
        assert!(!ok("s-read", Access::Ingest));
        assert!(!ok("s-read", Access::Admin));
        for needs in [Access::Ingest, Access::Read, Access::Admin] {
            assert!(ok("s-admin", needs));
        }
        assert_eq!(
            auth.check(Some("nope"), None, Access::Read),
            Err(Denied::Unknown)
        );
        assert_eq!(auth.check(None, None, Access::Read), Err(Denied::Missing));
        assert!(matches!(
            auth.check(Some("s-read"), None, Access::Admin),
            Err(Denied::Forbidden { .. })
        ));
        // Off: everything passes.
        assert_eq!(Auth::off().check(None, None, Access::Admin), Ok(None));
    }

    #[test]
    fn token_files_are_checked() {
        assert!(Tokens::parse("").unwrap_err().contains("no [[tokens]]"));
        let short = "[[tokens]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"abc\"\n";
        assert!(Tokens::parse(short).unwrap_err().contains("64 hex digits"));
        let role = format!(
            "[[tokens]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"{}\"\n",
            hash_secret("a")
        );
        assert!(Tokens::parse(&role).is_err());
        let twice = format!(
            "[[tokens]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"{h}\"\n\
             [[tokens]]\nname = \"y\"\nrole = \"read\"\nsha256 = \"{h}\"\n",
            h = hash_secret("a")
        );
        assert!(Tokens::parse(&twice).unwrap_err().contains("same secret"));
    }

    #[test]
    fn bearer_headers_parse() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn grpc_interceptor_answers_with_the_right_codes() {
        let auth = Auth::with_tokens(tokens());
        let check = auth.grpc_interceptor(Access::Ingest);
        let with = |v: Option<&str>| {
            let mut r = tonic::Request::new(());
            if let Some(v) = v {
                r.metadata_mut().insert("authorization", v.parse().unwrap());
            }
            check(r).map(|_| ()).map_err(|s| s.code())
        };
        assert_eq!(with(Some("Bearer s-ingest")), Ok(()));
        assert_eq!(with(None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            with(Some("Bearer wrong")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            with(Some("Bearer s-read")),
            Err(tonic::Code::PermissionDenied)
        );
    }
}
