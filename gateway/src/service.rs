//! The tonic implementation of `nexus.v1.Gateway`: opens sessions and serves the unary
//! `Publish` and `Request` calls over the same router.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::Stream;
use nexus_proto::v1::{self, ErrorCode, gateway_server::Gateway};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::admission::{
    AddressBudget, AdmissionLogs, PendingEntry, PendingSessions, Refusal, Slot,
};
use crate::connection::Connection;
use crate::metrics::{AdmissionRefusal, Direction, GatewayMetrics, Limit, Pattern};
use crate::outbound::{Outbound, OutboundStream};
use crate::policy::ClientCert;
use crate::router::{Delivery, RouteError, Router, Waiter};
use crate::session::Session;
use crate::subject::validate_subject;
use crate::trace;
use crate::transport::{Activity, ConnInfo};

/// The transport connection a request came on. tonic files it under [`ConnInfo`] for
/// plaintext and under `TlsConnectInfo<ConnInfo>` for TLS; before both were looked up, a TLS
/// session found neither, so it counted as idle (closed after
/// `limits.idle_connection_timeout_ms` while in use) and every TLS client shared one address
/// in the per-address budgets.
fn conn_info(ext: &tonic::codegen::http::Extensions) -> Option<&ConnInfo> {
    ext.get::<ConnInfo>().or_else(|| {
        ext.get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
            .map(|t| t.get_ref())
    })
}

/// The TLS client certificate the connection presented (verified against `--tls-client-ca`
/// during the handshake), for API keys bound to certificates.
fn client_cert(ext: &tonic::codegen::http::Extensions) -> Option<Arc<ClientCert>> {
    let certs = ext
        .get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()?
        .peer_certs()?;
    certs.first().map(|c| Arc::new(ClientCert::from_der(c)))
}

#[derive(Clone)]
pub struct GatewayService {
    pub(crate) router: Arc<Router>,
    pub(crate) gateway_id: Arc<str>,
    /// Sessions whose Hello was accepted (`limits.max_connections`).
    pub(crate) connections: Arc<AtomicU32>,
    /// Sessions still waiting for their Hello, per address
    /// (`limits.max_unauthenticated_per_address`) and in all (`limits.max_unauthenticated`).
    pub(crate) unauthenticated: Arc<AddressBudget>,
    pub(crate) pending: Arc<PendingSessions>,
    pub(crate) logs: Arc<AdmissionLogs>,
    pub(crate) close_all: CancellationToken,
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<v1::Batch, Status>> + Send>>;

/// Decrements the connection count when the session task ends, however it ends.
struct ConnectionSlot(Arc<AtomicU32>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A session's place in the gateway's budgets: a slot of the unauthenticated budget until its
/// Hello is accepted, then a `limits.max_connections` slot. Also keeps its transport
/// connection from counting as idle. Everything is given back when the session ends.
pub(crate) struct SessionAdmission {
    pending: Option<(Slot, PendingEntry, Arc<GatewayMetrics>)>,
    admitted: Option<ConnectionSlot>,
    connections: Arc<AtomicU32>,
    pub(crate) logs: Arc<AdmissionLogs>,
    pub(crate) remote: Option<SocketAddr>,
    /// The connection's TLS client certificate, checked against a bound key's binding.
    pub(crate) client_cert: Option<Arc<ClientCert>>,
    _activity: Option<Activity>,
}

impl SessionAdmission {
    /// See [`PendingEntry::mark_silent`].
    pub(crate) fn mark_silent(&self) {
        if let Some((_, entry, _)) = &self.pending {
            entry.mark_silent();
        }
    }

    /// Cancelled when newer sessions pushed this one out while it waited for its Hello.
    pub(crate) fn evicted(&self) -> Option<CancellationToken> {
        self.pending.as_ref().map(|(_, e, _)| e.evicted.clone())
    }

    /// Moves the session from the unauthenticated budget to `limits.max_connections` (its
    /// Hello was accepted); `Err` names the limit when the gateway is full.
    pub(crate) fn admit(&mut self, max: u32) -> Result<(), Status> {
        if self.admitted.is_some() {
            return Ok(());
        }
        if let Some((_, _, metrics)) = self.pending.take() {
            metrics.unauthenticated_sessions.dec();
        }
        let admitted = self
            .connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return Err(max_connections_status(max));
        }
        self.admitted = Some(ConnectionSlot(self.connections.clone()));
        Ok(())
    }
}

impl Drop for SessionAdmission {
    fn drop(&mut self) {
        if let Some((_, _, metrics)) = self.pending.take() {
            metrics.unauthenticated_sessions.dec();
        }
    }
}

fn max_connections_status(max: u32) -> Status {
    Status::resource_exhausted(format!(
        "limits.max_connections ({max}) sessions are already open on this gateway"
    ))
}

fn status_for(code: i32, message: String) -> Status {
    match ErrorCode::try_from(code).unwrap_or(ErrorCode::Unspecified) {
        ErrorCode::NoResponders => Status::unavailable(format!("no responders: {message}")),
        ErrorCode::Timeout => Status::deadline_exceeded(message),
        ErrorCode::Limit => Status::resource_exhausted(message),
        ErrorCode::Invalid => Status::invalid_argument(message),
        ErrorCode::Denied => Status::permission_denied(message),
        ErrorCode::Unavailable => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

impl GatewayService {
    /// Checks a unary call; returns the id of the caller's API key (`None` without auth), for
    /// the `nexus-publisher-key` header (`provenance`).
    fn check_unary(
        &self,
        client_cert: Option<&Arc<ClientCert>>,
        api_key: &str,
        subject: &str,
        headers: &[v1::Header],
        payload: &bytes::Bytes,
    ) -> Result<Option<nexus_proto::ByteString>, Status> {
        let mut key_id = None;
        validate_subject(subject).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let payload_len = payload.len();
        if self.router.auth_required() {
            let grant = self
                .router
                .policy()
                .authenticate(api_key, crate::policy_now_ms(), client_cert)
                .map_err(|e| {
                    self.router.metrics.auth_failures.inc();
                    Status::unauthenticated(e.describe("api_key"))
                })?;
            if !grant.may_publish(subject) {
                return Err(Status::permission_denied(format!(
                    "API key {} may not publish to {subject:?} (its publish scopes: {})",
                    grant.key_id,
                    grant.publish.join(", ")
                )));
            }
            self.router
                .charge_key(Some(&grant), payload_len)
                .map_err(Status::resource_exhausted)?;
            key_id = Some(nexus_proto::ByteString::from(grant.key_id.as_str()));
        }
        let max = self.router.config().limits.max_payload;
        if payload_len as u64 > max {
            self.router.metrics.limit(Limit::MaxPayload);
            return Err(Status::resource_exhausted(format!(
                "payload of {payload_len} bytes exceeds limits.max_payload ({max} bytes)"
            )));
        }
        let encoding = &self.router.metrics.encoding;
        let codec = crate::payload_encoding::check_in(headers, payload, max as usize, encoding)
            .map_err(|(code, message)| {
                if code == ErrorCode::Limit {
                    self.router.metrics.limit(Limit::MaxPayload);
                }
                status_for(code as i32, message)
            })?;
        if self.router.is_draining() {
            return Err(Status::unavailable("gateway is shutting down"));
        }
        if codec.is_none() || self.router.policy().schemas.contains_key(subject) {
            let plain =
                crate::payload_encoding::plain_for_check(codec, payload, max as usize, encoding)
                    .map_err(Status::invalid_argument)?;
            self.router
                .check_schema(subject, &plain)
                .map_err(Status::invalid_argument)?;
        }
        Ok(key_id)
    }
}

impl GatewayService {
    /// Admits a new session (the gateway is not draining, `limits.max_connections` and the
    /// budgets of sessions waiting for their Hello have room) and creates it with its
    /// outbound queue, for either transport: gRPC's `Session` call or a native connection
    /// (`crate::native`). The caller runs the session and drains the stream.
    pub(crate) fn open_session(
        &self,
        info: Option<&ConnInfo>,
        client_cert: Option<Arc<ClientCert>>,
    ) -> Result<(Session, OutboundStream), Status> {
        if self.router.is_draining() {
            return Err(Status::unavailable("gateway is shutting down"));
        }
        let limits = &self.router.config().limits;
        let metrics = &self.router.metrics;
        // Refused early when full (checked again, atomically, when the Hello is accepted).
        let max = limits.max_connections;
        if self.connections.load(Ordering::SeqCst) >= max {
            metrics.limit(Limit::MaxConnections);
            if let Some(suppressed) = self.logs.max_connections.should_log(crate::monotonic_ms()) {
                tracing::warn!(
                    suppressed,
                    "session refused: limits.max_connections ({max}) reached"
                );
            }
            return Err(max_connections_status(max));
        }
        let remote = info.map(|i| i.remote);
        let ip = remote.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |r| r.ip());
        let pending = match self.unauthenticated.try_acquire(ip) {
            Ok(slot) => slot,
            Err(refusal) => {
                // The total is enforced by eviction (PendingSessions), not here.
                let max = match refusal {
                    Refusal::PerAddress { max } | Refusal::Total { max } => max,
                };
                metrics.admission_refused(AdmissionRefusal::UnauthenticatedPerAddress);
                if let Some(suppressed) = self
                    .logs
                    .unauthenticated_per_address
                    .should_log(crate::monotonic_ms())
                {
                    tracing::warn!(
                        remote = ?remote,
                        suppressed,
                        "session refused: limits.max_unauthenticated_per_address ({max}) sessions from this address are waiting for their Hello"
                    );
                }
                return Err(Status::resource_exhausted(format!(
                    "limits.max_unauthenticated_per_address ({max}) sessions without a completed Hello are already open from this address; send Hello at once after opening a session"
                )));
            }
        };
        let (entry, evicted) = self.pending.enter();
        if evicted {
            metrics.admission_refused(AdmissionRefusal::UnauthenticatedEvicted);
            if let Some(suppressed) = self
                .logs
                .unauthenticated_total
                .should_log(crate::monotonic_ms())
            {
                tracing::warn!(
                    suppressed,
                    "limits.max_unauthenticated ({}) sessions are waiting for their Hello: closing the oldest",
                    limits.max_unauthenticated
                );
            }
        }
        metrics.unauthenticated_sessions.inc();
        let admission = SessionAdmission {
            pending: Some((pending, entry, self.router.metrics.clone())),
            admitted: None,
            connections: self.connections.clone(),
            logs: self.logs.clone(),
            remote,
            client_cert,
            _activity: Activity::begin(info),
        };
        let budget = self.router.config().slow_consumer.max_pending_bytes as u32;
        let (outbound, stream) = Outbound::new(budget);
        let conn = Arc::new(Connection::new(self.router.next_id(), outbound));
        self.router.metrics.connections.inc();
        self.router.metrics.connections_total.inc();
        let session = Session::new(
            self.router.clone(),
            conn,
            self.gateway_id.clone(),
            admission,
        );
        Ok((session, stream))
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    type SessionStream = BatchStream;

    async fn session(
        &self,
        request: Request<Streaming<v1::Batch>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let info = conn_info(request.extensions()).cloned();
        let client_cert = client_cert(request.extensions());
        let (session, stream) = self.open_session(info.as_ref(), client_cert)?;
        let inbound = request.into_inner();
        tokio::spawn(session.run(inbound, self.close_all.clone()));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let _activity = Activity::begin(conn_info(request.extensions()));
        let cert = client_cert(request.extensions());
        let mut p = request.into_inner();
        let key_id = self.check_unary(
            cert.as_ref(),
            &p.api_key,
            &p.subject,
            &p.headers,
            &p.payload,
        )?;
        self.router
            .metrics
            .traffic(Pattern::Pub, Direction::In, p.payload.len());
        let span = tracing::debug_span!("nexus.publish", subject = %p.subject, unary = true);
        trace::link_span(&span, &mut p.headers);
        crate::provenance::stamp(&mut p.headers, key_id.as_ref());
        let id = crate::session::message_id(std::mem::take(&mut p.id))
            .map_err(Status::invalid_argument)?;
        let traced = self.router.traces.sampled(&id, &p.headers);
        let delivery = Delivery {
            subject: p.subject.into(),
            reply_to: Default::default(),
            headers: p.headers,
            payload: p.payload,
            id: id.clone(),
            traced,
        };
        self.router.trace(&delivery.as_ref(), || {
            crate::trace_store::Hop::new(crate::trace_store::Event::Received)
                .peer(format!(
                    "unary Publish key {}",
                    key_id.as_deref().unwrap_or("-")
                ))
                .detail(format!("{} bytes", delivery.payload.len()))
        });
        let mut scratch = Vec::new();
        let (delivered, outcome) = self.router.publish(delivery, &mut scratch).await;
        if let Some(receipt) = outcome.receipt {
            match receipt.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(status_for(e.code, e.message)),
                Err(_) => return Err(Status::unavailable("gateway is shutting down")),
            }
        }
        Ok(Response::new(v1::PublishResponse {
            id,
            delivered,
            forwarded_regions: outcome.forwarded,
            spooled_regions: outcome.spooled,
            duplicate: outcome.duplicate,
        }))
    }

    async fn request(
        &self,
        request: Request<v1::RequestRequest>,
    ) -> Result<Response<v1::RequestResponse>, Status> {
        let _activity = Activity::begin(conn_info(request.extensions()));
        let cert = client_cert(request.extensions());
        let mut r = request.into_inner();
        let key_id = self.check_unary(
            cert.as_ref(),
            &r.api_key,
            &r.subject,
            &r.headers,
            &r.payload,
        )?;
        self.router
            .metrics
            .traffic(Pattern::Request, Direction::In, r.payload.len());
        let timeout = match r.timeout_ms {
            0 => self.router.config().request_timeout(),
            ms => Duration::from_millis(ms as u64).min(Duration::from_secs(3600)),
        };
        let span = tracing::debug_span!("nexus.request", subject = %r.subject, unary = true);
        trace::link_span(&span, &mut r.headers);
        crate::provenance::stamp(&mut r.headers, key_id.as_ref());
        let (tx, rx) = oneshot::channel();
        let id = bytes::Bytes::copy_from_slice(&ulid::Ulid::new().to_bytes());
        let seq = match self
            .router
            .request(
                Waiter::Unary(tx),
                &r.subject,
                r.headers,
                r.payload,
                id,
                timeout,
            )
            .await
        {
            Ok(seq) => seq,
            Err((_, RouteError::NoResponders(s))) => {
                return Err(Status::unavailable(format!(
                    "no responders for subject {s:?}"
                )));
            }
        };
        // If the caller goes away, this future is dropped; the guard cancels the request.
        struct CancelOnDrop<'a>(&'a Router, u64, bool);
        impl Drop for CancelOnDrop<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    self.0.cancel(self.1);
                }
            }
        }
        let mut guard = CancelOnDrop(&self.router, seq, false);
        let result = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(crate::router::error(
                ErrorCode::ServiceError,
                "request was dropped",
                0,
            )),
            Err(_) => {
                self.router.complete(
                    seq,
                    None,
                    Err(crate::router::error(
                        ErrorCode::Timeout,
                        "request timed out",
                        0,
                    )),
                );
                Err(crate::router::error(
                    ErrorCode::Timeout,
                    format!("no reply within {} ms", timeout.as_millis()),
                    0,
                ))
            }
        };
        guard.2 = true;
        match result {
            Ok((mut headers, mut payload)) => {
                self.router
                    .metrics
                    .traffic(Pattern::Reply, Direction::Out, payload.len());
                // A unary caller names no codecs: it gets the responder's payload plain.
                nexus_proto::encoding::decode_unless_accepted(
                    &mut headers,
                    &mut payload,
                    nexus_proto::encoding::CodecSet::NONE,
                    self.router.config().limits.max_payload as usize,
                )
                .map_err(|e| {
                    Status::internal(format!("the reply's payload could not be decoded: {e}"))
                })?;
                Ok(Response::new(v1::RequestResponse { headers, payload }))
            }
            Err(e) => Err(status_for(e.code, e.message)),
        }
    }
}
