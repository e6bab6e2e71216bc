//! oxeye tls: TLS on every listener, and between nodes.
//!
//! This crate owns certificates and what is done with them. They come from PEM files:
//!
//! - `--tls-cert` and `--tls-key`: the process's identity. With them every listener speaks
//!   TLS: OTLP/gRPC and OTLP/HTTP, the HTTP API and UI, the PostgreSQL protocol and Arrow
//!   Flight. The same certificate is the client certificate a node shows when it connects to
//!   another node.
//! - `--tls-client-ca`: mutual TLS between nodes. A store node's Flight listener then accepts
//!   only peers with a certificate this CA signed.
//! - `--tls-ca`: the CA that signed the other nodes' certificates, for `https://` Flight
//!   addresses (default: the system's roots).
//!
//! Everything is read and checked when the process starts, so a wrong path, a key that does
//! not match its certificate or a file without PEM blocks stops it with a clear message rather
//! than failing the first handshake. Certificates are not reloaded: restart to rotate them.

mod listener;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

pub use listener::{TlsListener, no_delay, serve_http};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} file {path} holds no PEM {expected}; give a PEM file (-----BEGIN ...)")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("the {what} file {path} is not valid PEM: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot use the certificate {cert} with the key {key}: {reason}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the CA file {path} has a certificate rustls rejects: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("{0}")]
    Incomplete(&'static str),
    #[error("`{url}` is not a usable node address: {reason}")]
    Url { url: String, reason: String },
}

/// The certificate files a process was given.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

/// TLS as configured for one process: how it serves, and how it connects to other nodes.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    server: Option<Arc<ServerTls>>,
    client: ClientTls,
}

impl Tls {
    /// Plain text everywhere.
    pub fn off() -> Tls {
        Tls::default()
    }

    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let identity = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some(PemIdentity::load(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(TlsError::Incomplete(
                    "--tls-cert and --tls-key go together: give both, or neither for plain text",
                ));
            }
        };
        let client_ca = files
            .client_ca
            .as_deref()
            .map(|p| read_ca(p, "--tls-client-ca"))
            .transpose()?;
        let ca = files
            .ca
            .as_deref()
            .map(|p| read_ca(p, "--tls-ca"))
            .transpose()?;
        let server = match identity.clone() {
            Some(identity) => Some(Arc::new(ServerTls::new(identity, client_ca)?)),
            None if client_ca.is_some() => {
                return Err(TlsError::Incomplete(
                    "--tls-client-ca asks peers for certificates over TLS: give --tls-cert and \
                     --tls-key too",
                ));
            }
            None => None,
        };
        Ok(Tls {
            server,
            client: ClientTls {
                ca_pem: ca,
                identity,
            },
        })
    }

    /// How this process serves, when it has a certificate.
    pub fn server(&self) -> Option<&ServerTls> {
        self.server.as_deref()
    }

    /// How this process connects to other nodes.
    pub fn client(&self) -> &ClientTls {
        &self.client
    }

    /// Listeners speak TLS.
    pub fn enabled(&self) -> bool {
        self.server.is_some()
    }

    /// Flight peers must show a certificate the client CA signed.
    pub fn mutual(&self) -> bool {
        self.server
            .as_ref()
            .is_some_and(|s| s.client_ca_pem.is_some())
    }

    /// `https` when listeners speak TLS, else `http`: for the addresses a node advertises.
    pub fn scheme(&self) -> &'static str {
        if self.enabled() { "https" } else { "http" }
    }
}

/// A certificate chain and its key, checked, kept as PEM for tonic.
#[derive(Clone)]
struct PemIdentity {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for PemIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemIdentity")
            .field("cert", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl PemIdentity {
    fn load(cert: &Path, key: &Path) -> Result<PemIdentity, TlsError> {
        let cert_pem = read(cert, "--tls-cert")?;
        let certs = parse_certs(&cert_pem, cert, "--tls-cert")?;
        let key_pem = read(key, "--tls-key")?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                what: "--tls-key",
                path: key.to_path_buf(),
                expected: "private key (PKCS#8, PKCS#1 or SEC1)",
            },
            other => TlsError::Pem {
                what: "--tls-key",
                path: key.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
        let identity = PemIdentity {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            cert_pem,
            key_pem,
            certs,
            key: Arc::new(private),
        };
        Ok(identity)
    }

    fn server_config(&self, alpn: Vec<Vec<u8>>) -> Result<ServerConfig, String> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_single_cert(self.certs.clone(), self.key.clone_key())
                .map_err(|e| e.to_string())?;
        config.alpn_protocols = alpn;
        Ok(config)
    }

    fn tonic(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// A process's listeners over TLS.
#[derive(Debug)]
pub struct ServerTls {
    identity: PemIdentity,
    client_ca_pem: Option<Vec<u8>>,
    http: Arc<ServerConfig>,
    postgres: Arc<ServerConfig>,
}

impl ServerTls {
    fn new(identity: PemIdentity, client_ca_pem: Option<Vec<u8>>) -> Result<ServerTls, TlsError> {
        let config = |alpn: Vec<Vec<u8>>| {
            identity
                .server_config(alpn)
                .map(Arc::new)
                .map_err(|reason| TlsError::Identity {
                    cert: identity.cert_path.clone(),
                    key: identity.key_path.clone(),
                    reason,
                })
        };
        // HTTP/2 for gRPC-over-HTTP clients and browsers, HTTP/1.1 for the rest; PostgreSQL
        // 17 clients that skip the SSLRequest (sslnegotiation=direct) must see "postgresql".
        let http = config(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
        let postgres = config(vec![b"postgresql".to_vec()])?;
        Ok(ServerTls {
            identity,
            client_ca_pem,
            http,
            postgres,
        })
    }

    /// For HTTP listeners (the API and UI, OTLP/HTTP).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }

    /// For the PostgreSQL protocol (after its SSLRequest, or direct).
    pub fn postgres_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.postgres.clone())
    }

    /// For gRPC listeners that clients of any kind reach (OTLP): server authentication only;
    /// clients prove who they are with tokens.
    pub fn grpc(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.tonic())
    }

    /// For Flight, which only other nodes reach: with `--tls-client-ca`, a peer without a
    /// certificate that CA signed is turned away during the handshake.
    pub fn grpc_between_nodes(&self) -> ServerTlsConfig {
        let config = self.grpc();
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// How a process connects to other nodes' Flight listeners.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<PemIdentity>,
}

impl ClientTls {
    /// A gRPC endpoint for a node's address: over TLS for `https://` (checked against
    /// `--tls-ca`, or the system's roots, and showing this process's certificate), plain for
    /// `http://`.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let bad = |reason: String| TlsError::Url {
            url: url.to_string(),
            reason,
        };
        let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad(e.to_string()))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some(identity) = &self.identity {
            config = config.identity(identity.tonic());
        }
        endpoint.tls_config(config).map_err(|e| bad(e.to_string()))
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certs(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "certificate",
        });
    }
    Ok(certs)
}

/// Reads a CA bundle and checks that rustls takes each certificate in it.
fn read_ca(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = read(path, what)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in parse_certs(&pem, path, what)? {
        roots.add(cert).map_err(|e| TlsError::Ca {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(pem)
}
