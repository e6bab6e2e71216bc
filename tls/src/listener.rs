//! HTTP listeners, plain or over TLS.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::ServerTls;

/// A client that opens a connection and sends nothing is cut off after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; past it, new connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Finished handshakes waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Serves `router` on `listener` until `shutdown` resolves: over TLS when `tls` is given.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    tls: Option<&ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    match tls {
        None => {
            axum::serve(listener.tap_io(no_delay), router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            axum::serve(TlsListener::new(listener, tls.http_acceptor())?, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Small writes (HTTP/2 acknowledgements, window updates) go out at once rather than waiting
/// for the peer's delayed ACK, which stalls a busy connection for 40 ms at a time.
pub fn no_delay(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// Accepts TCP connections and hands out those that completed a TLS handshake.
///
/// Handshakes run in their own tasks, so one slow or silent client does not hold up the
/// others. At most [`MAX_HANDSHAKES`] run at once and [`ACCEPTED_QUEUE`] finished ones wait;
/// when both are full the accept loop stops accepting and the kernel's backlog holds the rest.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; the accept loop ends when the `TlsListener` is dropped.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        tokio::spawn(accept_loop(listener, acceptor, sender));
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when this listener is dropped, so this is not reached
            // while serving; waiting forever is what a listener that takes no more does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = sender.closed() => return,
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (mut tcp, peer) = tokio::select! {
            _ = sender.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most often: wait for some to close.
                    tracing::warn!(error = %e, "accepting a TLS connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        no_delay(&mut tcp);
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, &acceptor)).await {
                Ok(Ok(Some(stream))) => {
                    // Waits while the server is behind; fails only once it stopped serving.
                    let _ = sender.send((stream, peer)).await;
                }
                Ok(Ok(None)) => {
                    tracing::debug!(%peer, "plain HTTP on a TLS listener, answered 400")
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The TLS handshake, or `None` after telling a plain-text HTTP client to use https.
async fn handshake(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
) -> io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        answer_plain_text(tcp).await?;
        return Ok(None);
    }
    acceptor.accept(tcp).await.map(Some)
}

async fn answer_plain_text(mut tcp: TcpStream) -> io::Result<()> {
    // Takes in the request first: closing a socket with unread bytes sends a reset, which can
    // reach the client before it has read the answer.
    let mut request = [0u8; 8192];
    let _ = tcp.read(&mut request).await?;
    let body = "This port speaks HTTPS: use an https:// URL.\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await?;
    // Lingers until the client closes (or briefly), for the same reason.
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut request)).await;
    Ok(())
}
