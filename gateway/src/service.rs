//! The tonic implementation of `nexus.v1.Gateway`: opens sessions and serves the unary
//! `Publish` and `Request` calls over the same router.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::Stream;
use nexus_proto::v1::{self, ErrorCode, gateway_server::Gateway};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::connection::Connection;
use crate::metrics::{Direction, Limit, Pattern};
use crate::outbound::Outbound;
use crate::router::{Delivery, RouteError, Router, Waiter};
use crate::session::Session;
use crate::subject::validate_subject;
use crate::trace;

pub struct GatewayService {
    pub(crate) router: Arc<Router>,
    pub(crate) gateway_id: Arc<str>,
    pub(crate) connections: Arc<AtomicU32>,
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
    fn check_unary(&self, api_key: &str, subject: &str, payload: &[u8]) -> Result<(), Status> {
        validate_subject(subject).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let payload_len = payload.len();
        if self.router.auth_required() {
            let grant = self
                .router
                .policy()
                .authenticate(api_key, crate::policy_now_ms())
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
        }
        let max = self.router.config().limits.max_payload;
        if payload_len as u64 > max {
            self.router.metrics.limit(Limit::MaxPayload);
            return Err(Status::resource_exhausted(format!(
                "payload of {payload_len} bytes exceeds limits.max_payload ({max} bytes)"
            )));
        }
        if self.router.is_draining() {
            return Err(Status::unavailable("gateway is shutting down"));
        }
        self.router
            .check_schema(subject, payload)
            .map_err(Status::invalid_argument)
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    type SessionStream = BatchStream;

    async fn session(
        &self,
        request: Request<Streaming<v1::Batch>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self.router.is_draining() {
            return Err(Status::unavailable("gateway is shutting down"));
        }
        let max = self.router.config().limits.max_connections;
        let admitted = self
            .connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.router.metrics.limit(Limit::MaxConnections);
            return Err(Status::resource_exhausted(format!(
                "limits.max_connections ({max}) sessions are already open on this gateway"
            )));
        }
        let slot = ConnectionSlot(self.connections.clone());
        let budget = self.router.config().slow_consumer.max_pending_bytes as u32;
        let (outbound, stream) = Outbound::new(budget);
        let conn = Arc::new(Connection::new(self.router.next_id(), outbound));
        self.router.metrics.connections.inc();
        self.router.metrics.connections_total.inc();
        let session = Session::new(self.router.clone(), conn, self.gateway_id.clone());
        let inbound = request.into_inner();
        let close_all = self.close_all.clone();
        tokio::spawn(async move {
            let _slot = slot;
            session.run(inbound, close_all).await;
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let mut p = request.into_inner();
        self.check_unary(&p.api_key, &p.subject, &p.payload)?;
        self.router
            .metrics
            .traffic(Pattern::Pub, Direction::In, p.payload.len());
        let span = tracing::debug_span!("nexus.publish", subject = %p.subject, unary = true);
        trace::link_span(&span, &mut p.headers);
        let id = crate::session::message_id(std::mem::take(&mut p.id))
            .map_err(Status::invalid_argument)?;
        let delivery = Delivery {
            subject: p.subject.into(),
            reply_to: Default::default(),
            headers: p.headers,
            payload: p.payload,
            id: id.clone(),
        };
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
        let mut r = request.into_inner();
        self.check_unary(&r.api_key, &r.subject, &r.payload)?;
        self.router
            .metrics
            .traffic(Pattern::Request, Direction::In, r.payload.len());
        let timeout = match r.timeout_ms {
            0 => self.router.config().request_timeout(),
            ms => Duration::from_millis(ms as u64).min(Duration::from_secs(3600)),
        };
        let span = tracing::debug_span!("nexus.request", subject = %r.subject, unary = true);
        trace::link_span(&span, &mut r.headers);
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
            Err((_, e)) => return Err(Status::unavailable(e.to_string())),
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
            Ok((headers, payload)) => {
                self.router
                    .metrics
                    .traffic(Pattern::Reply, Direction::Out, payload.len());
                Ok(Response::new(v1::RequestResponse { headers, payload }))
            }
            Err(e) => Err(status_for(e.code, e.message)),
        }
    }
}
