//! Bidirectional streams with credit-based flow control ([`BiStream`], [`StreamListener`]).
//!
//! The opener calls [`Client::open_stream`]; the gateway picks one listener (balanced like a
//! request) and hands it a [`BiStream`] through [`StreamListener::accept`]. Each side grants
//! its peer credit for [`stream_window`](crate::ClientBuilder::stream_window) frames and
//! re-grants as the application consumes (half a window at a time), so a fast sender can
//! never overrun a slow receiver: [`send`](BiStream::send) waits for credit.
//!
//! [`finish`](BiStream::finish) half-closes (the peer's `recv` returns `None` after the data
//! sent so far); dropping a stream (or its sender half) before both sides finished aborts it,
//! and the peer sees [`Error::Service`]. Open streams fail with [`Error::Disconnected`] if the session breaks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures::Stream;
use nexus_proto::v1 as pb;
use nexus_proto::v1::frame::Kind;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::batch::Outbound;
use crate::client::Client;
use crate::connection::{Shared, StreamEntry};
use crate::credit::{RecvWindow, SendCredit};
use crate::error::{Error, Fail, Result};
use crate::headers::Headers;
use crate::message::Message;

/// Events for the receiving half, pushed by the connection task.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    Data(Message),
    /// `None`: the peer half-closed; `Some`: the stream was aborted.
    Closed(Option<Fail>),
}

/// Queues a frame from a context that cannot await, keeping it ordered after frames already
/// queued (so a close never overtakes data).
fn send_ordered_nowait(client: &Client, o: Outbound) {
    client.shared().outbound.push_now(o);
}

fn close_frame(stream_id: u64, error: Option<&str>) -> Kind {
    Kind::StreamClose(pb::StreamClose {
        stream_id,
        error: error.map(|m| pb::Error {
            code: pb::ErrorCode::ServiceError as i32,
            message: m.to_owned(),
            ref_id: stream_id,
        }),
    })
}

/// State shared by both halves; dropping the last half aborts an unfinished stream.
struct StreamCore {
    client: Client,
    id: u64,
    subject: String,
    epoch: u64,
}

impl StreamCore {
    fn shared(&self) -> &Shared {
        self.client.shared()
    }

    /// Removes the stream entry; returns whether it was still live.
    fn remove(&self) -> bool {
        let entry = self.shared().state.lock().streams.remove(&self.id);
        entry.is_some()
    }

    fn abort(&self, reason: &str) {
        if self.remove() {
            send_ordered_nowait(
                &self.client,
                Outbound::in_epoch(close_frame(self.id, Some(reason)), self.epoch),
            );
        }
    }
}

impl Drop for StreamCore {
    fn drop(&mut self) {
        self.abort("stream dropped by the application");
    }
}

/// The sending half of a stream.
pub struct StreamSender {
    core: Arc<StreamCore>,
    credit: Arc<SendCredit>,
    finished: bool,
}

impl StreamSender {
    /// Sends one frame, waiting for credit from the peer first.
    pub async fn send(&mut self, payload: impl Into<Bytes>) -> Result<()> {
        self.send_with(Headers::new(), payload).await
    }

    /// Sends one frame with headers, waiting for credit from the peer first.
    pub async fn send_with(&mut self, headers: Headers, payload: impl Into<Bytes>) -> Result<()> {
        if self.finished {
            return Err(Error::Closed);
        }
        let payload = payload.into();
        self.core.client.check_payload(payload.len())?;
        let t = self.core.client.request_timeout();
        self.credit
            .take()
            .await
            .map_err(|f| f.into_error(&self.core.subject, t))?;
        self.core
            .client
            .enqueue(Outbound::in_epoch(
                Kind::StreamData(pb::StreamData {
                    stream_id: self.core.id,
                    payload,
                    headers: headers.into_inner(),
                }),
                self.core.epoch,
            ))
            .await
    }

    /// Marks the local side finished; returns whether the stream is still live.
    fn mark_finished(&mut self) -> bool {
        self.finished = true;
        let mut st = self.core.shared().state.lock();
        let (live, both) = match st.streams.get_mut(&self.core.id) {
            Some(e) => {
                e.local_finished = true;
                (true, e.remote_finished)
            }
            None => (false, false),
        };
        if both {
            let e = st.streams.remove(&self.core.id);
            drop(st);
            drop(e);
        }
        live
    }

    /// Half-closes: the peer receives everything sent so far, then end of stream. Receiving
    /// continues. Idempotent.
    pub async fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        if !self.mark_finished() {
            return Ok(());
        }
        self.core
            .client
            .enqueue(Outbound::in_epoch(
                close_frame(self.core.id, None),
                self.core.epoch,
            ))
            .await
    }

    /// Credit currently available (frames that can be sent without waiting).
    pub fn credit(&self) -> u64 {
        self.credit.available()
    }

    /// The stream id on the wire.
    pub fn id(&self) -> u64 {
        self.core.id
    }
}

impl Drop for StreamSender {
    fn drop(&mut self) {
        // Dropping the sender without finish() aborts the stream (protocol guidance §15.5).
        if !self.finished {
            self.finished = true;
            self.core.abort("stream sender dropped without finish");
        }
    }
}

/// The receiving half of a stream; also a [`futures::Stream`]`<Item = Result<Message>>`.
pub struct StreamReceiver {
    core: Arc<StreamCore>,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    window: RecvWindow,
    done: bool,
}

impl StreamReceiver {
    /// The next frame; `None` when the peer finished; `Some(Err(_))` once if the stream was
    /// aborted (by the peer, the gateway, or a disconnect). Consuming frames grants the peer
    /// more credit.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let ev = ready!(self.events.poll_recv(cx));
        Poll::Ready(match ev {
            Some(StreamEvent::Data(m)) => {
                if !self.window.on_receive() {
                    debug!(
                        stream_id = self.core.id,
                        "nexus: peer exceeded its stream credit"
                    );
                }
                if let Some(grant) = self.window.on_consume() {
                    self.grant(grant);
                }
                Some(Ok(m))
            }
            Some(StreamEvent::Closed(None)) | None => {
                self.done = true;
                None
            }
            Some(StreamEvent::Closed(Some(f))) => {
                self.done = true;
                let t = self.core.client.request_timeout();
                Some(Err(f.into_error(&self.core.subject, t)))
            }
        })
    }

    fn grant(&self, credits: u32) {
        let shared = self.core.shared();
        let live = shared
            .state
            .lock()
            .streams
            .get(&self.core.id)
            .is_some_and(|e| !e.remote_finished);
        if live {
            shared.send_ctl(Outbound::in_epoch(
                Kind::Credit(pb::Credit {
                    stream_id: self.core.id,
                    credits,
                }),
                self.core.epoch,
            ));
        }
    }

    /// The stream id on the wire.
    pub fn id(&self) -> u64 {
        self.core.id
    }
}

impl Stream for StreamReceiver {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_recv(cx)
    }
}

/// A bidirectional stream. Use it directly or [`split`](Self::split) it into halves to send
/// and receive from different tasks.
pub struct BiStream {
    tx: StreamSender,
    rx: StreamReceiver,
    headers: Headers,
}

impl BiStream {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_parts(
        client: Client,
        id: u64,
        subject: String,
        headers: Headers,
        initial_credit: u32,
        window: u32,
        epoch: u64,
        opened: Option<oneshot::Sender<std::result::Result<(), Fail>>>,
    ) -> (BiStream, StreamEntry) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let credit = Arc::new(SendCredit::new(initial_credit));
        let core = Arc::new(StreamCore {
            client,
            id,
            subject,
            epoch,
        });
        let entry = StreamEntry {
            events: events_tx,
            credit: credit.clone(),
            opened,
            local_finished: false,
            remote_finished: false,
        };
        let stream = BiStream {
            tx: StreamSender {
                core: core.clone(),
                credit,
                finished: false,
            },
            rx: StreamReceiver {
                core,
                events: events_rx,
                window: RecvWindow::new(window),
                done: false,
            },
            headers,
        };
        (stream, entry)
    }

    /// Sends one frame, waiting for credit first.
    pub async fn send(&mut self, payload: impl Into<Bytes>) -> Result<()> {
        self.tx.send(payload).await
    }

    /// Sends one frame with headers, waiting for credit first.
    pub async fn send_with(&mut self, headers: Headers, payload: impl Into<Bytes>) -> Result<()> {
        self.tx.send_with(headers, payload).await
    }

    /// Receives the next frame (see [`StreamReceiver::recv`]).
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        self.rx.recv().await
    }

    /// Half-closes the sending side (see [`StreamSender::finish`]).
    pub async fn finish(&mut self) -> Result<()> {
        self.tx.finish().await
    }

    /// Aborts the stream in both directions; the peer sees [`Error::Service`] with `reason`.
    pub fn abort(mut self, reason: &str) {
        self.tx.finished = true;
        self.tx.core.abort(reason);
    }

    /// Splits into independently usable halves.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let (mut tx, mut rx) = client.open_stream("upper").await?.split();
    /// let sender = tokio::spawn(async move {
    ///     for word in ["a", "b", "c"] {
    ///         tx.send(word).await?;
    ///     }
    ///     tx.finish().await
    /// });
    /// while let Some(frame) = rx.recv().await {
    ///     println!("{:?}", frame?.payload);
    /// }
    /// sender.await.expect("sender task")?;
    /// # Ok(()) }
    /// ```
    pub fn split(self) -> (StreamSender, StreamReceiver) {
        (self.tx, self.rx)
    }

    /// The stream id on the wire (chosen by this client for opened streams, by the gateway
    /// for accepted ones).
    pub fn id(&self) -> u64 {
        self.tx.core.id
    }

    /// The subject the stream was opened on.
    pub fn subject(&self) -> &str {
        &self.tx.core.subject
    }

    /// Headers given when the stream was opened (incl. `traceparent`).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Credit currently available for sending.
    pub fn credit(&self) -> u64 {
        self.tx.credit()
    }
}

impl Stream for BiStream {
    type Item = Result<Message>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl std::fmt::Debug for BiStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BiStream")
            .field("id", &self.id())
            .field("subject", &self.subject())
            .finish()
    }
}

/// Incoming streams for a subject; also a [`futures::Stream`]`<Item = BiStream>`. Dropping
/// it stops listening (and aborts streams not yet accepted).
pub struct StreamListener {
    client: Client,
    sid: u64,
    subject: String,
    rx: mpsc::Receiver<BiStream>,
    active: bool,
}

impl StreamListener {
    pub(crate) fn new(
        client: Client,
        sid: u64,
        subject: String,
        rx: mpsc::Receiver<BiStream>,
    ) -> Self {
        StreamListener {
            client,
            sid,
            subject,
            rx,
            active: true,
        }
    }

    /// The next incoming stream (already granted its initial credit), or `None` when the
    /// client closed.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let mut listener = client.listen_streams("echo", Some("echoers")).await?;
    /// if let Some(mut stream) = listener.accept().await {
    ///     while let Some(Ok(frame)) = stream.recv().await {
    ///         stream.send(frame.payload).await?;
    ///     }
    ///     stream.finish().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn accept(&mut self) -> Option<BiStream> {
        self.rx.recv().await
    }

    /// Stops listening.
    pub async fn close(mut self) {
        self.active = false;
        self.client.shared().remove_sub(self.sid);
    }

    /// The subject pattern listened on.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl Stream for StreamListener {
    type Item = BiStream;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BiStream>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        if self.active {
            self.client.shared().remove_sub(self.sid);
        }
    }
}

impl std::fmt::Debug for StreamListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamListener")
            .field("sid", &self.sid)
            .field("subject", &self.subject)
            .finish()
    }
}
