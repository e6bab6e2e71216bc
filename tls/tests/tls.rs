//! Loading certificates, and real handshakes against an HTTP listener over TLS.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use oxeye_tls::{Tls, TlsError, TlsFiles, serve_http};
use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// A file of `tests/data`. The crate's directory comes from the environment cargo runs the
/// test in: one compiled into the binary would point at wherever the binary was first built,
/// and a target directory is shared by clones at different paths.
fn data(name: &str) -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    crate_dir.join("tests/data").join(name)
}

fn server_files() -> TlsFiles {
    TlsFiles {
        cert: Some(data("server.pem")),
        key: Some(data("server.key")),
        ..TlsFiles::default()
    }
}

#[test]
fn a_certificate_and_its_key_load() {
    let tls = Tls::load(&server_files()).expect("loads");
    assert!(tls.enabled());
    assert!(!tls.mutual());
    assert_eq!(tls.scheme(), "https");
    let mutual = Tls::load(&TlsFiles {
        client_ca: Some(data("ca.pem")),
        ..server_files()
    })
    .expect("loads");
    assert!(mutual.mutual());
    assert!(!Tls::off().enabled());
    assert_eq!(Tls::off().scheme(), "http");
}

#[test]
fn bad_files_are_refused_with_what_is_wrong() {
    let cases: Vec<(TlsFiles, &str)> = vec![
        (
            TlsFiles {
                key: None,
                ..server_files()
            },
            "go together",
        ),
        (
            TlsFiles {
                cert: Some(data("missing.pem")),
                ..server_files()
            },
            "cannot read the --tls-cert file",
        ),
        (
            TlsFiles {
                cert: Some(data("server.key")),
                ..server_files()
            },
            "holds no PEM certificate",
        ),
        (
            TlsFiles {
                key: Some(data("server.pem")),
                ..server_files()
            },
            "holds no PEM private key",
        ),
        (
            TlsFiles {
                key: Some(data("other.key")),
                ..server_files()
            },
            "cannot use the certificate",
        ),
        (
            TlsFiles {
                client_ca: Some(data("ca.pem")),
                ..TlsFiles::default()
            },
            "give --tls-cert and --tls-key too",
        ),
        (
            TlsFiles {
                ca: Some(data("README.md")),
                ..TlsFiles::default()
            },
            "holds no PEM certificate",
        ),
    ];
    for (files, expected) in cases {
        let err: TlsError = Tls::load(&files).expect_err(expected);
        assert!(
            err.to_string().contains(expected),
            "{files:?}: `{err}` does not say `{expected}`"
        );
    }
}

#[test]
fn node_addresses_get_tls_only_for_https() {
    let tls = Tls::load(&TlsFiles {
        ca: Some(data("ca.pem")),
        ..server_files()
    })
    .expect("loads");
    assert!(tls.client().endpoint("http://127.0.0.1:7701").is_ok());
    assert!(tls.client().endpoint("https://127.0.0.1:7701").is_ok());
    let err = tls.client().endpoint("not a url").expect_err("not a URL");
    assert!(
        err.to_string().contains("not a usable node address"),
        "{err}"
    );
}

async fn https_server() -> (std::net::SocketAddr, CancellationToken) {
    let tls = Tls::load(&server_files()).expect("loads");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("address");
    let router = Router::new().route("/hello", get(|| async { "hello over tls" }));
    let stop = CancellationToken::new();
    let done = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        let server = tls.server().expect("server tls");
        serve_http(listener, router, Some(server), done)
            .await
            .expect("serves");
    });
    (addr, stop)
}

fn connector(ca: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(data(ca)).expect("reads") {
        roots.add(cert.expect("parses")).expect("adds");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn get_hello<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
) -> String {
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("writes");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("reads the response");
    response
}

#[tokio::test]
async fn http_over_tls_is_served_to_clients_that_trust_the_ca() {
    let (addr, stop) = https_server().await;
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector("ca.pem")
        .connect(name, tcp)
        .await
        .expect("handshake with the right CA");
    let response = get_hello(&mut tls).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("hello over tls"), "{response}");

    // The address in the certificate's names works too.
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let ip = ServerName::try_from("127.0.0.1").expect("name");
    assert!(connector("ca.pem").connect(ip, tcp).await.is_ok());

    // A client that trusts another CA refuses the server.
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let name = ServerName::try_from("localhost").expect("name");
    assert!(connector("other-ca.pem").connect(name, tcp).await.is_err());

    // The listener keeps serving after a failed handshake.
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector("ca.pem")
        .connect(name, tcp)
        .await
        .expect("handshake");
    assert!(get_hello(&mut tls).await.starts_with("HTTP/1.1 200"));
    stop.cancel();
}

#[tokio::test]
async fn plain_http_on_a_tls_port_is_told_to_use_https() {
    let (addr, stop) = https_server().await;
    let mut tcp = TcpStream::connect(addr).await.expect("connects");
    let response = get_hello(&mut tcp).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("https://"), "{response}");
    stop.cancel();
}
