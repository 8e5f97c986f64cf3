//! Opening a session: how a gateway is reached (gRPC or the native transport,
//! [`crate::native`]), the two halves of a session over either, and the handshake (Hello,
//! Welcome, the confirmed subscriptions sent again).

use super::*;

/// How a session reaches a gateway: gRPC over HTTP/2, or the native transport
/// ([`crate::native`]).
pub(crate) enum Dial {
    Grpc(Box<Endpoint>),
    Native(Box<NativeEndpoint>),
}

/// The sending half of a session.
pub(super) enum SessionTx {
    /// Batches go through tonic's request stream.
    Grpc(mpsc::Sender<pb::Batch>),
    /// Batches are written to the connection by the writer itself.
    Native(NativeWriter),
}

impl SessionTx {
    /// Sends one batch; `false` when the session is gone.
    pub(super) async fn send(&mut self, batch: pb::Batch) -> bool {
        match self {
            SessionTx::Grpc(tx) => tx.send(batch).await.is_ok(),
            SessionTx::Native(w) => w.send(&batch).await.is_ok(),
        }
    }

    /// Half-closes the session: the gateway sees the end of its input.
    pub(super) async fn finish(self) {
        match self {
            SessionTx::Grpc(tx) => drop(tx),
            SessionTx::Native(mut w) => w.finish().await,
        }
    }
}

/// The receiving half of a session.
pub(super) enum SessionRx {
    Grpc(tonic::Streaming<pb::Batch>),
    Native(NativeReader),
}

impl SessionRx {
    /// The frames of the gateway's next batch; `Ok(None)` when it ended the session without
    /// a status.
    pub(super) async fn message(&mut self) -> std::result::Result<Option<Frames>, tonic::Status> {
        Ok(match self {
            SessionRx::Grpc(s) => s
                .message()
                .await?
                .map(|b| Frames::Decoded(b.frames.into_iter())),
            SessionRx::Native(r) => r.message().await?.map(Frames::Encoded),
        })
    }
}

/// The frames of one batch from the gateway: decoded by tonic (gRPC), or decoded one at a
/// time from the record as they are taken (native), without a vector of frames between.
pub(super) enum Frames {
    Decoded(std::vec::IntoIter<pb::Frame>),
    Encoded(nexus_proto::hot_frames::BatchFrames),
}

impl Frames {
    /// Decodes (or moves) the next frame into `slot`; `false` at the end of the batch. A
    /// record's frame is decoded in place ([`BatchFrames::next_into`]).
    ///
    /// [`BatchFrames::next_into`]: nexus_proto::hot_frames::BatchFrames::next_into
    pub(super) fn next_into(
        &mut self,
        slot: &mut pb::Frame,
    ) -> std::result::Result<bool, prost::DecodeError> {
        match self {
            Frames::Decoded(frames) => Ok(frames.next().map(|f| *slot = f).is_some()),
            Frames::Encoded(frames) => frames.next_into(slot),
        }
    }
}

impl Iterator for Frames {
    type Item = std::result::Result<pb::Frame, prost::DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Frames::Decoded(frames) => frames.next().map(Ok),
            Frames::Encoded(frames) => frames.next(),
        }
    }
}

/// The error a batch that fails to decode part way ends the session with.
pub(super) fn bad_batch(e: &prost::DecodeError) -> String {
    format!("the gateway sent a record that is not a valid nexus.v1.Batch: {e}")
}

/// The transport endpoint for `url` with the adapter's settings (TLS for `https://`).
pub(crate) fn endpoint(
    url: String,
    connect_timeout: Duration,
    tls: &TlsSettings,
) -> Result<Endpoint> {
    let ep = Endpoint::from_shared(url.clone())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    tls.apply(ep, &url)
}

pub(super) struct Session {
    pub(super) tx: SessionTx,
    pub(super) inbound: SessionRx,
    pub(super) leftover: Vec<pb::Frame>,
}

/// Connects, sends Hello, waits for Welcome and re-sends confirmed subscriptions.
pub(super) async fn establish(shared: &Shared, dial: &Dial) -> Result<Session> {
    let cfg = &shared.config;
    let hello = pb::Frame {
        kind: Some(Kind::Hello(pb::Hello {
            api_key: cfg.api_key.clone(),
            client_name: cfg.name.clone(),
            language: "rust".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: PROTOCOL_VERSION,
            encodings: crate::compression::hello_encodings(),
        })),
    };
    let hello = pb::Batch::of(vec![hello]);
    let deadline = tokio::time::Instant::now() + cfg.connect_timeout;
    let timed_out = || Error::Timeout {
        subject: "<handshake>".into(),
        after: cfg.connect_timeout,
        detail: None,
    };
    let (mut tx, mut inbound) = match dial {
        Dial::Grpc(endpoint) => {
            let channel = endpoint.connect().await?;
            let mut grpc = pb::gateway_client::GatewayClient::new(channel)
                .max_decoding_message_size(MAX_DECODING_BYTES);
            let (req_tx, req_rx) = mpsc::channel::<pb::Batch>(2);
            req_tx
                .try_send(hello)
                .map_err(|_| Error::Protocol("request channel full".into()))?;
            let resp = tokio::time::timeout_at(deadline, grpc.session(ReceiverStream::new(req_rx)))
                .await
                .map_err(|_| timed_out())??;
            (SessionTx::Grpc(req_tx), SessionRx::Grpc(resp.into_inner()))
        }
        Dial::Native(endpoint) => {
            let (reader, mut writer) = endpoint.connect(&cfg.tls, cfg.connect_timeout).await?;
            writer.send(&hello).await.map_err(|e| {
                crate::native::unavailable(format!("writing to {}: {e}", endpoint.url))
            })?;
            (SessionTx::Native(writer), SessionRx::Native(reader))
        }
    };
    let mut frames = tokio::time::timeout_at(deadline, inbound.message())
        .await
        .map_err(|_| timed_out())??
        .ok_or_else(|| Error::Protocol("gateway ended the session before Welcome".into()))?;
    let first = frames
        .next()
        .transpose()
        .map_err(|e| Error::Protocol(bad_batch(&e)))?;
    let welcome = match first.and_then(|f| f.kind) {
        Some(Kind::Welcome(w)) => w,
        Some(Kind::Error(e)) => return Err(Error::from_gateway(e, "", cfg.connect_timeout)),
        other => {
            return Err(Error::Protocol(format!(
                "expected Welcome as the first frame, got {other:?}"
            )));
        }
    };
    if welcome.protocol != 0 && welcome.protocol != PROTOCOL_VERSION {
        warn!(
            protocol = welcome.protocol,
            "nexus: gateway speaks another protocol version"
        );
    }
    debug!(session = %welcome.session_id, gateway = %welcome.gateway_id, region = %welcome.region, "nexus: welcome");
    shared
        .max_payload
        .store(welcome.max_payload, Ordering::Relaxed);
    shared.codecs.set(&welcome);
    let resubs: Vec<pb::Frame> = {
        let mut st = shared.state.lock();
        st.welcome = Some(welcome);
        st.live = true;
        st.subs
            .iter()
            .filter(|(_, s)| s.confirmed)
            .map(|(&sid, s)| pb::Frame {
                kind: Some(Kind::Sub(pb::Sub {
                    sid,
                    subject: s.subject.clone(),
                    queue_group: s.queue_group.clone(),
                    ack_id: 0,
                })),
            })
            .collect()
    };
    if !resubs.is_empty() {
        debug!(count = resubs.len(), "nexus: resubscribing");
    }
    let chunk = cfg.limits.max_frames.max(1);
    let mut resubs = resubs.into_iter().peekable();
    while resubs.peek().is_some() {
        let frames: Vec<_> = resubs.by_ref().take(chunk).collect();
        if !tx.send(pb::Batch::of(frames)).await {
            // This epoch's session was live (Unsubs may be queued for it): retire it.
            shared.sweep(Fail::Disconnected, false);
            return Err(Error::Disconnected);
        }
    }
    Ok(Session {
        tx,
        inbound,
        leftover: frames
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Protocol(bad_batch(&e)))?,
    })
}
