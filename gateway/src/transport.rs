//! The adapter listener's transport connections: which TCP connections are accepted, and
//! when one that does nothing is closed.
//!
//! - Each accepted connection takes a slot of the transport [`AddressBudget`]
//!   (`limits.max_transport_connections`, and `..._per_address`); beyond it the connection is
//!   closed at once, counted in `nexus_admission_refusals_total{reason="transport_*"}` and
//!   logged at most once a second.
//! - A connection is *idle* while no gRPC call (session or unary) is open on it. One that stays
//!   idle for `limits.idle_connection_timeout_ms` (from its accept, or from its last call's end)
//!   is closed: the next read of its socket fails, and hyper drops the connection. Raw TCP
//!   connections that never send a byte, and HTTP/2 connections that never open a call, are
//!   both covered. A call holds an [`Activity`] guard for as long as it runs.
//!
//! The idle check is a timer polled beside the socket's read, so it costs nothing per byte and
//! needs no task of its own.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::admission::{AddressBudget, Refusal, RefusalLog, Slot};
use crate::metrics::{AdmissionRefusal, GatewayMetrics};

use crate::monotonic_ms as now_ms;

/// What the gateway tracks about one transport connection.
#[derive(Debug)]
pub struct ConnState {
    /// gRPC calls open on the connection.
    active: AtomicU32,
    /// When the connection last became idle ([`now_ms`]).
    idle_since_ms: AtomicU64,
}

/// Placed in every request's extensions by tonic (through [`Connected`]): the peer's address
/// and the connection's state, for the budgets of [`crate::admission`] and [`Activity`].
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub state: Arc<ConnState>,
}

/// Marks a call open on its connection; the connection is idle again when the last one drops.
#[derive(Debug)]
pub struct Activity(Arc<ConnState>);

impl Activity {
    /// A guard for a call on the connection `info` describes (`None` for requests that did
    /// not come through [`incoming`], e.g. in-process tests).
    pub fn begin(info: Option<&ConnInfo>) -> Option<Self> {
        let state = info?.state.clone();
        state.active.fetch_add(1, Ordering::SeqCst);
        Some(Self(state))
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(now_ms(), Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An accepted TCP connection with its budget slot and idle timer; see the module docs.
pub struct GuardedStream {
    io: TcpStream,
    info: ConnInfo,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    metrics: Arc<GatewayMetrics>,
    _slot: Slot,
}

impl GuardedStream {
    /// `Ready(Err)` once the connection has been idle for `idle_timeout`; otherwise keeps the
    /// timer armed (registering `cx`) and returns `Pending`.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let state = &self.info.state;
            let next = if state.active.load(Ordering::SeqCst) > 0 {
                Instant::now() + self.idle_timeout
            } else {
                let since = state.idle_since_ms.load(Ordering::SeqCst);
                let idle_for = Duration::from_millis(now_ms().saturating_sub(since));
                if idle_for >= self.idle_timeout {
                    self.metrics
                        .admission_refused(AdmissionRefusal::IdleConnection);
                    tracing::debug!(remote = %self.info.remote, "closing an idle connection");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no gRPC call for limits.idle_connection_timeout_ms",
                    )));
                }
                Instant::now() + (self.idle_timeout - idle_for)
            };
            self.timer.as_mut().reset(next);
        }
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => this.poll_idle(cx),
        }
    }
}

/// Implements `AsyncWrite` for a wrapper by passing every call to its `io` field (the
/// wrappers of this listener, [`GuardedStream`] and `crate::native::Sniffed`, change reads
/// only).
macro_rules! delegate_async_write {
    (impl[$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*> tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }
            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use delegate_async_write;

delegate_async_write!(impl[] GuardedStream);

/// TCP keepalive of adapter connections (the native transport's, which gRPC connections get
/// too): `nexus_proto::native::KEEPALIVE_*`.
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(nexus_proto::native::KEEPALIVE_IDLE)
    .with_interval(nexus_proto::native::KEEPALIVE_INTERVAL)
    .with_retries(nexus_proto::native::KEEPALIVE_RETRIES);

/// Settings of [`incoming`].
pub struct TransportLimits {
    pub budget: Arc<AddressBudget>,
    pub idle_timeout: Duration,
    pub metrics: Arc<GatewayMetrics>,
}

/// The accepted connections of `listener` that fit the budget, for tonic's
/// `serve_with_incoming_shutdown`. Never yields an error: a failed accept (out of file
/// descriptors, say) is logged and retried after a short pause.
pub fn incoming(
    listener: TcpListener,
    limits: TransportLimits,
) -> impl Stream<Item = Result<GuardedStream, io::Error>> {
    let refusals = Arc::new([RefusalLog::default(), RefusalLog::default()]);
    futures::stream::unfold(
        (listener, limits, refusals),
        |(listener, limits, refusals)| async move {
            loop {
                let (io, remote) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = match limits.budget.try_acquire(remote.ip()) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        let (reason, log, setting, max) = match refusal {
                            Refusal::Total { max } => (
                                AdmissionRefusal::TransportTotal,
                                &refusals[0],
                                "limits.max_transport_connections",
                                max,
                            ),
                            Refusal::PerAddress { max } => (
                                AdmissionRefusal::TransportPerAddress,
                                &refusals[1],
                                "limits.max_transport_connections_per_address",
                                max,
                            ),
                        };
                        limits.metrics.admission_refused(reason);
                        if let Some(suppressed) = log.should_log(now_ms()) {
                            tracing::warn!(
                                %remote,
                                suppressed,
                                "connection refused: {setting} ({max}) reached"
                            );
                        }
                        drop(io);
                        continue;
                    }
                };
                // Small frames (acks, replies) must not wait on Nagle's algorithm.
                let _ = io.set_nodelay(true);
                // A peer that vanished without a FIN (a cable pulled, a host gone) is found
                // within about a minute even while nothing is sent to it: gRPC connections
                // also have HTTP/2 pings, native ones (crate::native) only this.
                let _ = socket2::SockRef::from(&io).set_tcp_keepalive(&KEEPALIVE);
                let state = Arc::new(ConnState {
                    active: AtomicU32::new(0),
                    idle_since_ms: AtomicU64::new(now_ms()),
                });
                limits.metrics.transport_connections.inc();
                let stream = GuardedStream {
                    io,
                    info: ConnInfo { remote, state },
                    idle_timeout: limits.idle_timeout,
                    timer: Box::pin(tokio::time::sleep(limits.idle_timeout)),
                    metrics: limits.metrics.clone(),
                    _slot: slot,
                };
                return Some((Ok(stream), (listener, limits, refusals)));
            }
        },
    )
}

impl Drop for GuardedStream {
    fn drop(&mut self) {
        self.metrics.transport_connections.dec();
    }
}
