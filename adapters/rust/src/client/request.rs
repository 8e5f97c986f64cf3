//! Requests and replies: a request waits for one answer (or the gateway's refusal) within
//! its timeout; a responder answers with a reply or a service error; `serve` runs a handler
//! per request.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use nexus_proto::ByteString;
use nexus_proto::v1 as pb;
use nexus_proto::v1::frame::Kind;
use tokio::sync::oneshot;

use super::{CLIENT_GRACE, Client, duration_ms, new_id};
use crate::batch::Outbound;
use crate::error::{Error, Result, ServiceError};
use crate::headers::{Headers, TRACEPARENT};
use crate::message::Message;
use crate::service::Service;
use crate::subject::{validate_publish_subject, validate_queue_group};

impl Client {
    /// Sends a request and waits for one reply, using the default request timeout.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// match client.request("math.double", "21").await {
    ///     Ok(reply) => println!("{:?}", reply.payload),
    ///     Err(nexus_client::Error::NoResponders { .. }) => eprintln!("nobody serves math.double"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn request(&self, subject: &str, payload: impl Into<Bytes>) -> Result<Message> {
        self.request_with(
            subject,
            Headers::new(),
            payload.into(),
            self.request_timeout(),
        )
        .await
    }

    /// Sends a request with headers and an explicit timeout (zero = the default). The reply's
    /// `subject` is the request subject.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// use std::time::Duration;
    /// use nexus_client::{Bytes, Headers};
    /// let headers = Headers::new().with("x-tenant", "acme");
    /// let reply = client
    ///     .request_with("math.double", headers, Bytes::from("21"), Duration::from_millis(500))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn request_with(
        &self,
        subject: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message> {
        validate_publish_subject(subject)?;
        self.check_payload(payload.len())?;
        let timeout = if timeout.is_zero() {
            self.request_timeout()
        } else {
            timeout
        };
        let mut headers = headers;
        headers.ensure_traceparent();
        let req_id = self.shared().next_id();
        let (tx, rx) = oneshot::channel();
        let ((), epoch) = self
            .register(|st| {
                st.requests.insert(req_id, tx);
            })
            .await;
        let frame = Kind::Req(pb::Req {
            req_id,
            subject: subject.into(),
            headers: headers.into_inner(),
            payload,
            timeout_ms: duration_ms(timeout).max(1),
            id: new_id(),
        });
        if let Err(e) = self.enqueue(Outbound::in_epoch(frame, epoch)).await {
            self.shared().state.lock().requests.remove(&req_id);
            return Err(e);
        }
        match tokio::time::timeout(timeout + CLIENT_GRACE, rx).await {
            Ok(Ok(Ok(reply))) => match reply.error {
                Some(e) if e.code != 0 || !e.message.is_empty() => {
                    Err(Error::from_gateway(e, subject, timeout))
                }
                _ => Ok(Message::from_parts(
                    subject.to_owned(),
                    reply.headers,
                    reply.payload,
                )),
            },
            Ok(Ok(Err(f))) => Err(f.into_error(subject, timeout)),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                self.shared().state.lock().requests.remove(&req_id);
                Err(Error::Timeout {
                    subject: subject.to_owned(),
                    after: timeout,
                    detail: None,
                })
            }
        }
    }

    /// Answers a request received on a subscription (a message with `reply_to`). The reply
    /// carries the request's `traceparent`. [`serve`](Self::serve) does this for you.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let mut sub = client.subscribe("time.now").await?;
    /// while let Some(req) = sub.next_message().await {
    ///     client.reply(&req, "12:00").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn reply(&self, request: &Message, payload: impl Into<Bytes>) -> Result<()> {
        let reply_to = request.reply_to.clone().ok_or_else(|| Error::Invalid {
            message: "message has no reply_to".into(),
        })?;
        let payload = payload.into();
        self.check_payload(payload.len())?;
        self.enqueue(Outbound::any(reply_frame(
            request.traceparent(),
            reply_to,
            Ok(payload),
        )))
        .await
    }

    /// Refuses a request received on a subscription; the requester gets
    /// [`Error::Service`] with `error.message`.
    pub async fn reply_error(&self, request: &Message, error: ServiceError) -> Result<()> {
        let reply_to = request.reply_to.clone().ok_or_else(|| Error::Invalid {
            message: "message has no reply_to".into(),
        })?;
        self.enqueue(Outbound::any(reply_frame(
            request.traceparent(),
            reply_to,
            Err(error),
        )))
        .await
    }

    /// Subscribes to `subject` (optionally in a queue group) and answers every request with
    /// `handler`, running handlers concurrently on spawned tasks (at most
    /// [`max_concurrent_handlers`](crate::ClientBuilder::max_concurrent_handlers) at once).
    /// `Ok(payload)` is sent as the reply, `Err(ServiceError)` as a refusal; a panicking
    /// handler is reported as a refusal too. Messages without `reply_to` run the handler and
    /// the result is discarded. Runs until [`Service::stop`] or the `Service` is dropped.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// use nexus_client::ServiceError;
    /// let svc = client
    ///     .serve("math.double", Some("math"), |m| async move {
    ///         let n: u64 = std::str::from_utf8(&m.payload)
    ///             .ok()
    ///             .and_then(|s| s.parse().ok())
    ///             .ok_or_else(|| ServiceError::new("not a number"))?;
    ///         Ok((n * 2).to_string().into())
    ///     })
    ///     .await?;
    /// // ... later
    /// svc.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn serve<F, Fut>(
        &self,
        subject: &str,
        queue_group: Option<&str>,
        handler: F,
    ) -> Result<Service>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Bytes, ServiceError>> + Send + 'static,
    {
        let group = queue_group.unwrap_or("");
        if queue_group.is_some() {
            validate_queue_group(group)?;
        }
        let sub = self.subscribe_inner(subject, group).await?;
        Ok(Service::start(self.clone(), sub, handler))
    }
}

/// Builds the Reply (or Nack) frame answering `request`.
pub(crate) fn reply_frame(
    traceparent: Option<&str>,
    reply_to: ByteString,
    result: std::result::Result<Bytes, ServiceError>,
) -> Kind {
    match result {
        Ok(payload) => {
            let headers = match traceparent {
                Some(tp) => vec![pb::Header {
                    key: ByteString::from_static(TRACEPARENT),
                    value: tp.into(),
                }],
                None => Vec::new(),
            };
            Kind::Reply(pb::Reply {
                req_id: 0,
                reply_to,
                headers,
                payload,
                error: None,
            })
        }
        Err(e) => Kind::Nack(pb::Nack {
            ack_id: 0,
            reply_to: reply_to.to_string(),
            error: Some(pb::Error {
                code: pb::ErrorCode::ServiceError as i32,
                message: e.message,
                ref_id: 0,
            }),
        }),
    }
}
