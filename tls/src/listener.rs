//! A listener that hands out TLS streams. Handshakes run in their own tasks, bounded in
//! number and in time, so a client that opens a connection and sends nothing cannot stall
//! the accept loop or anyone else's handshake. Each handshake uses the configuration current
//! at that moment ([`ReloadingServerConfig`]); failed handshakes (wrong CA, no client
//! certificate, plaintext sent to a TLS port) are logged at debug level and counted.
//!
//! It accepts from a TCP listener ([`TlsListener::new`]) or from any stream of accepted
//! connections ([`TlsListener::from_incoming`]), such as the gateway's transport layer that
//! budgets and times out connections before TLS starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::reload::ReloadingServerConfig;

/// A handshake not finished within this long is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 1024;

/// Accepts connections and completes TLS handshakes; see the module docs.
pub struct TlsListener<IO = TcpStream> {
    rx: mpsc::Receiver<(TlsStream<IO>, Option<SocketAddr>)>,
    local_addr: Option<SocketAddr>,
    failed: Arc<AtomicU64>,
}

impl TlsListener<TcpStream> {
    /// Starts accepting on `listener` until `stop` is cancelled.
    pub fn new(
        listener: TcpListener,
        config: Arc<ReloadingServerConfig>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let accepted = futures::stream::unfold(listener, |listener| async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        // Small frames (acks, replies) must not wait on Nagle's algorithm.
                        let _ = tcp.set_nodelay(true);
                        return Some((Ok::<_, std::io::Error>((tcp, Some(peer))), listener));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let mut this = Self::spawn(accepted, config, stop);
        this.local_addr = Some(local_addr);
        Ok(this)
    }
}

impl<IO> TlsListener<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Completes TLS handshakes on the connections `incoming` yields, until `stop`.
    pub fn from_incoming<E: std::fmt::Display + Send + 'static>(
        incoming: impl Stream<Item = Result<IO, E>> + Send + 'static,
        config: Arc<ReloadingServerConfig>,
        stop: CancellationToken,
    ) -> Self {
        Self::spawn(incoming.map(|r| r.map(|io| (io, None))), config, stop)
    }

    fn spawn<E: std::fmt::Display + Send + 'static>(
        incoming: impl Stream<Item = Result<(IO, Option<SocketAddr>), E>> + Send + 'static,
        config: Arc<ReloadingServerConfig>,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let failed = Arc::new(AtomicU64::new(0));
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let failed_count = failed.clone();
        tokio::spawn(async move {
            let mut incoming = std::pin::pin!(incoming);
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let next = tokio::select! {
                    _ = stop.cancelled() => return,
                    n = incoming.next() => n,
                };
                let (io, peer) = match next {
                    Some(Ok(conn)) => conn,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "connection not accepted");
                        continue;
                    }
                    None => return,
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
                let tx = tx.clone();
                let failed = failed_count.clone();
                tokio::spawn(async move {
                    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await;
                    drop(permit);
                    match result {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(?peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(?peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Self {
            rx,
            local_addr: None,
            failed,
        }
    }

    /// The address listened on (for listeners made with [`TlsListener::new`]).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Handshakes that failed or timed out so far.
    pub fn failed_handshakes(&self) -> Arc<AtomicU64> {
        self.failed.clone()
    }

    /// The established connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = Result<TlsStream<IO>, std::io::Error>> + Send + 'static {
        futures::stream::unfold(self.rx, |mut rx| async move {
            rx.recv().await.map(|(tls, _)| (Ok(tls), rx))
        })
    }
}

#[cfg(feature = "axum")]
impl axum::serve::Listener for TlsListener<TcpStream> {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.rx.recv().await {
                Some((tls, peer)) => {
                    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
                    return (tls, peer.unwrap_or(unspecified));
                }
                // Stopped: never yield again (axum's graceful shutdown ends the serve loop).
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.local_addr
            .ok_or_else(|| std::io::Error::other("TLS listener without a local address"))
    }
}
