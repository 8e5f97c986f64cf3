//! Tests of the full client against a small in-process mock gateway (`cfg(test)` only).
//!
//! The mock implements just enough of the gateway to exercise the client's session logic:
//! handshake, subscriptions with acks (wildcards, queue groups round-robin), publish, requests
//! via reply inboxes, ping, streams with credit relaying and enforcement, and killing sessions
//! to test reconnects. It is not a reference for the real gateway's behaviour.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use nexus_proto::v1 as pb;
use nexus_proto::v1::frame::Kind;
use nexus_proto::v1::gateway_server::{Gateway, GatewayServer};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::subject::{subject_matches, validate_subscribe_subject};
use crate::{Client, Error, Headers, ServiceError, is_valid_traceparent};

type Out = mpsc::UnboundedSender<Result<pb::Batch, Status>>;

struct MSub {
    sess: u64,
    sid: u64,
    pattern: String,
    group: String,
}

struct Flow {
    peer_sess: u64,
    peer_id: u64,
    /// Credit held by the sender of this direction.
    credit: i64,
}

#[derive(Default)]
struct MockState {
    next: u64,
    sessions: HashMap<u64, Out>,
    subs: Vec<MSub>,
    rr: usize,
    inboxes: HashMap<String, (u64, u64)>,
    flows: HashMap<(u64, u64), Flow>,
    batch_sizes: Vec<usize>,
    pubs_seen: Vec<pb::Pub>,
    credit_violations: u64,
    hellos: u64,
    deny: bool,
}

#[derive(Clone, Default)]
struct Mock(Arc<Mutex<MockState>>);

fn frame(k: Kind) -> Result<pb::Batch, Status> {
    Ok(pb::Batch {
        frames: vec![pb::Frame { kind: Some(k) }],
    })
}

fn err(code: pb::ErrorCode, message: &str, ref_id: u64) -> pb::Error {
    pb::Error {
        code: code as i32,
        message: message.into(),
        ref_id,
    }
}

impl MockState {
    fn send(&self, sess: u64, k: Kind) {
        if let Some(tx) = self.sessions.get(&sess) {
            let _ = tx.send(frame(k));
        }
    }

    /// Matching subscriptions: all plain ones plus one per queue group.
    fn route(&mut self, subject: &str, one: bool) -> Vec<(u64, u64)> {
        let mut plain = Vec::new();
        let mut groups: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
        for s in &self.subs {
            if subject_matches(&s.pattern, subject) {
                if s.group.is_empty() {
                    plain.push((s.sess, s.sid));
                } else {
                    groups.entry(&s.group).or_default().push((s.sess, s.sid));
                }
            }
        }
        self.rr += 1;
        let mut out = plain;
        let mut gs: Vec<_> = groups.into_iter().collect();
        gs.sort_by(|a, b| a.0.cmp(b.0));
        for (_, members) in gs {
            out.push(members[self.rr % members.len()]);
        }
        if one && !out.is_empty() {
            let pick = out[self.rr % out.len()];
            return vec![pick];
        }
        out
    }

    fn drop_session(&mut self, sess: u64) {
        self.sessions.remove(&sess);
        self.subs.retain(|s| s.sess != sess);
        let dead: Vec<_> = self.flows.keys().filter(|k| k.0 == sess).cloned().collect();
        for k in dead {
            if let Some(f) = self.flows.remove(&k) {
                self.flows.remove(&(f.peer_sess, f.peer_id));
                self.send(
                    f.peer_sess,
                    Kind::StreamClose(pb::StreamClose {
                        stream_id: f.peer_id,
                        error: Some(err(pb::ErrorCode::ServiceError, "peer vanished", f.peer_id)),
                    }),
                );
            }
        }
    }

    fn handle(&mut self, sess: u64, k: Kind) {
        match k {
            Kind::Sub(s) => {
                let refused = if validate_subscribe_subject(&s.subject).is_err() {
                    Some(err(pb::ErrorCode::Invalid, "bad subject", s.sid))
                } else if s.subject.starts_with("forbidden.") {
                    Some(err(pb::ErrorCode::Limit, "max subscriptions", s.sid))
                } else {
                    None
                };
                match refused {
                    Some(e) if s.ack_id != 0 => self.send(
                        sess,
                        Kind::Nack(pb::Nack {
                            ack_id: s.ack_id,
                            reply_to: String::new(),
                            error: Some(e),
                        }),
                    ),
                    Some(e) => self.send(sess, Kind::Error(e)),
                    None => {
                        assert!(
                            !self.subs.iter().any(|x| x.sess == sess && x.sid == s.sid),
                            "duplicate sid {}",
                            s.sid
                        );
                        self.subs.push(MSub {
                            sess,
                            sid: s.sid,
                            pattern: s.subject,
                            group: s.queue_group,
                        });
                        if s.ack_id != 0 {
                            self.send(
                                sess,
                                Kind::Ack(pb::Ack {
                                    ack_id: s.ack_id,
                                    delivered: 0,
                                }),
                            );
                        }
                    }
                }
            }
            Kind::Unsub(u) => self.subs.retain(|s| !(s.sess == sess && s.sid == u.sid)),
            Kind::Pub(p) => {
                self.pubs_seen.push(p.clone());
                let targets = self.route(&p.subject, false);
                for (ts, sid) in &targets {
                    self.send(
                        *ts,
                        Kind::Msg(pb::Msg {
                            sid: *sid,
                            subject: p.subject.clone(),
                            reply_to: p.reply_to.clone(),
                            headers: p.headers.clone(),
                            payload: p.payload.clone(),
                            id: Bytes::copy_from_slice(&ulid::Ulid::new().to_bytes()),
                            deadline_ms: 0,
                        }),
                    );
                }
                if p.ack_id != 0 {
                    self.send(
                        sess,
                        Kind::Ack(pb::Ack {
                            ack_id: p.ack_id,
                            delivered: targets.len() as u32,
                        }),
                    );
                }
            }
            Kind::Req(r) => match self.route(&r.subject, true).first() {
                None => self.send(
                    sess,
                    Kind::Reply(pb::Reply {
                        req_id: r.req_id,
                        error: Some(err(pb::ErrorCode::NoResponders, "none", r.req_id)),
                        ..Default::default()
                    }),
                ),
                Some(&(ts, sid)) => {
                    self.next += 1;
                    let inbox = format!("$nexus.inbox.{}", self.next);
                    self.inboxes.insert(inbox.clone(), (sess, r.req_id));
                    self.send(
                        ts,
                        Kind::Msg(pb::Msg {
                            sid,
                            subject: r.subject,
                            reply_to: inbox,
                            headers: r.headers,
                            payload: r.payload,
                            id: r.id,
                            deadline_ms: r.timeout_ms,
                        }),
                    );
                }
            },
            Kind::Reply(r) => {
                if let Some((rs, req_id)) = self.inboxes.remove(&r.reply_to) {
                    self.send(
                        rs,
                        Kind::Reply(pb::Reply {
                            req_id,
                            headers: r.headers,
                            payload: r.payload,
                            ..Default::default()
                        }),
                    );
                }
            }
            Kind::Nack(n) => {
                if let Some((rs, req_id)) = self.inboxes.remove(&n.reply_to) {
                    let msg = n.error.map(|e| e.message).unwrap_or_default();
                    self.send(
                        rs,
                        Kind::Reply(pb::Reply {
                            req_id,
                            error: Some(err(pb::ErrorCode::ServiceError, &msg, req_id)),
                            ..Default::default()
                        }),
                    );
                }
            }
            Kind::Ping(p) => self.send(sess, Kind::Pong(pb::Pong { nonce: p.nonce })),
            Kind::StreamOpen(o) => {
                assert!(o.stream_id < 1 << 63);
                match self.route(&o.subject, true).first() {
                    None => self.send(
                        sess,
                        Kind::StreamClose(pb::StreamClose {
                            stream_id: o.stream_id,
                            error: Some(err(pb::ErrorCode::NoResponders, "none", o.stream_id)),
                        }),
                    ),
                    Some(&(ts, sid)) => {
                        self.next += 1;
                        let gid = (1 << 63) + self.next;
                        self.flows.insert(
                            (sess, o.stream_id),
                            Flow {
                                peer_sess: ts,
                                peer_id: gid,
                                credit: 0,
                            },
                        );
                        self.flows.insert(
                            (ts, gid),
                            Flow {
                                peer_sess: sess,
                                peer_id: o.stream_id,
                                credit: o.credits.into(),
                            },
                        );
                        self.send(
                            ts,
                            Kind::StreamOpen(pb::StreamOpen {
                                stream_id: gid,
                                subject: o.subject,
                                headers: o.headers,
                                credits: o.credits,
                                sid,
                            }),
                        );
                    }
                }
            }
            Kind::Credit(c) => {
                let Some(f) = self.flows.get(&(sess, c.stream_id)) else {
                    return;
                };
                let (ps, pid) = (f.peer_sess, f.peer_id);
                if let Some(back) = self.flows.get_mut(&(ps, pid)) {
                    back.credit += i64::from(c.credits);
                }
                self.send(
                    ps,
                    Kind::Credit(pb::Credit {
                        stream_id: pid,
                        credits: c.credits,
                    }),
                );
            }
            Kind::StreamData(d) => {
                let Some(f) = self.flows.get_mut(&(sess, d.stream_id)) else {
                    return;
                };
                f.credit -= 1;
                if f.credit < 0 {
                    self.credit_violations += 1;
                }
                let (ps, pid) = (f.peer_sess, f.peer_id);
                self.send(
                    ps,
                    Kind::StreamData(pb::StreamData {
                        stream_id: pid,
                        ..d
                    }),
                );
            }
            Kind::StreamClose(c) => {
                let Some(f) = self.flows.get(&(sess, c.stream_id)) else {
                    return;
                };
                let (ps, pid) = (f.peer_sess, f.peer_id);
                if c.error.is_some() {
                    self.flows.remove(&(sess, c.stream_id));
                    self.flows.remove(&(ps, pid));
                }
                self.send(
                    ps,
                    Kind::StreamClose(pb::StreamClose {
                        stream_id: pid,
                        error: c.error,
                    }),
                );
            }
            _ => {}
        }
    }

    /// Ends every session with an error (the clients reconnect).
    fn kill_all(&mut self) {
        let ids: Vec<u64> = self.sessions.keys().cloned().collect();
        for id in ids {
            if let Some(tx) = self.sessions.get(&id) {
                let _ = tx.send(Err(Status::unavailable("killed by test")));
            }
            self.drop_session(id);
        }
    }
}

#[tonic::async_trait]
impl Gateway for Mock {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::Batch, Status>> + Send>>;

    async fn session(
        &self,
        req: Request<Streaming<pb::Batch>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let state = self.0.clone();
        tokio::spawn(async move {
            let mut sess = None;
            while let Ok(Some(batch)) = inbound.message().await {
                let mut st = state.lock();
                st.batch_sizes.push(batch.frames.len());
                for f in batch.frames {
                    let Some(k) = f.kind else { continue };
                    match (sess, k) {
                        (None, Kind::Hello(h)) => {
                            assert_eq!(h.language, "rust");
                            assert_eq!(h.protocol, 1);
                            st.hellos += 1;
                            if st.deny {
                                let _ = tx.send(frame(Kind::Error(err(
                                    pb::ErrorCode::Denied,
                                    "bad key",
                                    0,
                                ))));
                                return;
                            }
                            st.next += 1;
                            let id = st.next;
                            st.sessions.insert(id, tx.clone());
                            sess = Some(id);
                            let _ = tx.send(frame(Kind::Welcome(pb::Welcome {
                                session_id: format!("s{id}"),
                                gateway_id: "mock".into(),
                                region: "test".into(),
                                max_payload: 1 << 20,
                                max_subscriptions: 100,
                                protocol: 1,
                            })));
                        }
                        (Some(id), k) => st.handle(id, k),
                        (None, _) => panic!("first frame must be Hello"),
                    }
                }
            }
            if let Some(id) = sess {
                state.lock().drop_session(id);
            }
        });
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }

    async fn publish(
        &self,
        _: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }

    async fn request(
        &self,
        _: Request<pb::RequestRequest>,
    ) -> Result<Response<pb::RequestResponse>, Status> {
        Err(Status::unimplemented("mock"))
    }
}

async fn start() -> (Mock, String) {
    let mock = Mock::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = GatewayServer::new(mock.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener).map(|s| {
                // Without TCP_NODELAY, Nagle + delayed ACKs add ~40 ms per credit round trip.
                if let Ok(s) = &s {
                    let _ = s.set_nodelay(true);
                }
                s
            }))
            .await
            .unwrap();
    });
    (mock, addr.to_string())
}

async fn connect(addr: &str) -> Client {
    Client::builder(addr)
        .request_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .connect()
        .await
        .unwrap()
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn pubsub_wildcards_and_batching() {
    let (mock, addr) = start().await;
    let c = connect(&addr).await;
    assert!(c.is_connected());
    assert_eq!(c.server_info().unwrap().gateway_id, "mock");
    let mut sub = c.subscribe("orders.*.created").await.unwrap();
    let mut all = c.subscribe("orders.>").await.unwrap();
    for i in 0..2000 {
        c.publish("orders.eu.created", format!("{i}"))
            .await
            .unwrap();
    }
    c.publish("orders.eu.deleted", "x").await.unwrap();
    for i in 0..2000 {
        let m = tokio::time::timeout(T, sub.next_message())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, format!("{i}").as_bytes());
        assert!(is_valid_traceparent(m.traceparent().unwrap()));
        assert!(m.id.is_some());
    }
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), all.next()).await {
        n += 1;
    }
    assert_eq!(n, 2001);
    let sizes = mock.0.lock().batch_sizes.clone();
    assert!(
        sizes.iter().any(|&s| s > 1),
        "publishes were batched: {sizes:?}"
    );
    assert!(sizes.iter().all(|&s| s <= 256));
    assert_eq!(c.publish_acked("orders.us.created", "y").await.unwrap(), 2);
    assert_eq!(c.publish_acked("nobody.home", "y").await.unwrap(), 0);
    c.close().await;
    assert!(matches!(c.publish("a", "b").await, Err(Error::Closed)));
    assert!(sub.next_message().await.is_some()); // buffered message from the acked publish
}

#[tokio::test]
async fn subscribe_errors_and_headers() {
    let (mock, addr) = start().await;
    let c = connect(&addr).await;
    assert!(matches!(
        c.subscribe("a..b").await,
        Err(Error::InvalidSubject { .. })
    ));
    assert!(matches!(
        c.subscribe("$nexus.x").await,
        Err(Error::InvalidSubject { .. })
    ));
    assert!(matches!(
        c.publish("a.*", "x").await,
        Err(Error::InvalidSubject { .. })
    ));
    assert!(matches!(
        c.subscribe("forbidden.x").await,
        Err(Error::Limit { .. })
    ));
    let tp = crate::new_traceparent();
    c.publish_message(
        crate::OutgoingMessage::new("h.x", "p")
            .with_header("traceparent", tp.clone())
            .with_header("k", "v"),
    )
    .await
    .unwrap();
    c.flush().await.unwrap();
    let p = mock.0.lock().pubs_seen.last().cloned().unwrap();
    let h = Headers::from(p.headers);
    assert_eq!(h.traceparent(), Some(tp.as_str()));
    assert_eq!(h.get("k"), Some("v"));
    assert!(matches!(
        c.publish("big", vec![0u8; (1 << 20) + 1]).await,
        Err(Error::Limit { .. })
    ));
}

#[tokio::test]
async fn request_reply_and_errors() {
    let (_mock, addr) = start().await;
    let c = connect(&addr).await;
    let svc = c
        .serve("math.double", None, |m| async move {
            let n: u64 = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ServiceError::new("not a number"))?;
            Ok(Bytes::from((n * 2).to_string()))
        })
        .await
        .unwrap();
    let r = c.request("math.double", "21").await.unwrap();
    assert_eq!(&r.payload[..], b"42");
    assert_eq!(r.subject, "math.double");
    assert!(
        r.traceparent().is_some(),
        "reply carries the request traceparent"
    );
    match c.request("math.double", "x").await {
        Err(Error::Service { message }) => assert_eq!(message, "not a number"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.request("math.triple", "1").await,
        Err(Error::NoResponders { .. })
    ));
    // Concurrency: many requests in flight at once.
    let futs = (0..200).map(|i| {
        let c = c.clone();
        async move { c.request("math.double", i.to_string()).await }
    });
    let res = futures::future::join_all(futs).await;
    for (i, r) in res.into_iter().enumerate() {
        assert_eq!(r.unwrap().payload, (i * 2).to_string().as_bytes());
    }
    svc.stop().await;
    assert!(matches!(
        c.request("math.double", "1").await,
        Err(Error::NoResponders { .. })
    ));
}

#[tokio::test]
async fn queue_group_balances() {
    let (_mock, addr) = start().await;
    let c1 = connect(&addr).await;
    let c2 = connect(&addr).await;
    let mut s1 = c1.queue_subscribe("work", "g").await.unwrap();
    let s2 = c2.queue_subscribe("work", "g").await.unwrap();
    for _ in 0..20 {
        c1.publish("work", "job").await.unwrap();
    }
    c1.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (n1, n2) = (s1.pending(), s2.pending());
    assert_eq!(n1 + n2, 20);
    assert!(n1 > 0 && n2 > 0, "{n1} {n2}");
    let _ = s1.next_message().await;
}

#[tokio::test]
async fn streams_with_flow_control() {
    let (mock, addr) = start().await;
    let server = Client::builder(&addr)
        .stream_window(8)
        .connect()
        .await
        .unwrap();
    let client = Client::builder(&addr)
        .stream_window(4)
        .connect()
        .await
        .unwrap();
    let mut listener = server.listen_streams("echo", None).await.unwrap();
    let echo = tokio::spawn(async move {
        let mut s = listener.accept().await.unwrap();
        assert_eq!(s.subject(), "echo");
        assert!(s.id() >= 1 << 63);
        assert!(s.headers().traceparent().is_some());
        while let Some(m) = s.recv().await {
            s.send(m.unwrap().payload).await.unwrap();
        }
        s.finish().await.unwrap();
    });
    let s = client.open_stream("echo").await.unwrap();
    let (mut tx, mut rx) = s.split();
    let sender = tokio::spawn(async move {
        for i in 0..500u32 {
            tx.send(Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .unwrap();
        }
        tx.finish().await.unwrap();
    });
    let mut got = 0u32;
    while let Some(m) = tokio::time::timeout(T, rx.recv()).await.unwrap() {
        let m = m.unwrap();
        assert_eq!(m.payload, got.to_be_bytes().to_vec());
        got += 1;
        if got.is_multiple_of(50) {
            tokio::time::sleep(Duration::from_millis(5)).await; // slow consumer
        }
    }
    assert_eq!(got, 500);
    sender.await.unwrap();
    echo.await.unwrap();
    assert_eq!(mock.0.lock().credit_violations, 0);
    assert!(matches!(
        client.open_stream("nowhere").await,
        Err(Error::NoResponders { .. })
    ));
}

#[tokio::test]
async fn stream_abort_reaches_peer() {
    let (_mock, addr) = start().await;
    let c = connect(&addr).await;
    let mut listener = c.listen_streams("s", Some("g")).await.unwrap();
    let mut s = c.open_stream("s").await.unwrap();
    let acc = listener.accept().await.unwrap();
    s.send("hello").await.unwrap();
    acc.abort("nope");
    match tokio::time::timeout(T, s.recv()).await.unwrap() {
        Some(Err(Error::Service { message })) => assert_eq!(message, "nope"),
        other => panic!("{other:?}"),
    }
    assert!(s.recv().await.is_none());
    assert!(matches!(s.send("x").await, Err(Error::Service { .. })));
}

#[tokio::test]
async fn reconnect_resubscribes_and_fails_inflight() {
    let (mock, addr) = start().await;
    let c = connect(&addr).await;
    let mut sub = c.subscribe("r.x").await.unwrap();
    // A responder that never answers.
    let mut silent = c.subscribe("slow").await.unwrap();
    let c2 = c.clone();
    let req = tokio::spawn(async move { c2.request("slow", "?").await });
    let m = tokio::time::timeout(T, silent.next_message())
        .await
        .unwrap()
        .unwrap();
    assert!(m.reply_to.is_some());
    let s = client_stream_pair(&c).await;
    mock.0.lock().kill_all();
    assert!(matches!(req.await.unwrap(), Err(Error::Disconnected)));
    let (mut bs, _listener) = s;
    assert!(matches!(
        tokio::time::timeout(T, bs.recv()).await.unwrap(),
        Some(Err(Error::Disconnected))
    ));
    // Publishes while (possibly) disconnected are queued and delivered after reconnecting.
    c.publish("r.x", "after").await.unwrap();
    let m = tokio::time::timeout(T, sub.next_message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"after");
    assert!(c.is_connected());
    assert_eq!(mock.0.lock().hellos, 2);
    let subs = mock.0.lock().subs.iter().map(|s| s.sid).collect::<Vec<_>>();
    assert!(subs.contains(&sub.sid()) && subs.contains(&silent.sid()));
    drop(silent);
    c.flush().await.unwrap();
    assert_eq!(mock.0.lock().subs.len(), 2); // r.x and the stream listener
}

async fn client_stream_pair(c: &Client) -> (crate::BiStream, crate::StreamListener) {
    let listener = c.listen_streams("pair", None).await.unwrap();
    let s = c.open_stream("pair").await.unwrap();
    (s, listener)
}

#[tokio::test]
async fn denied_connect_fails() {
    let (mock, addr) = start().await;
    mock.0.lock().deny = true;
    match Client::builder(&addr).api_key("bad").connect().await {
        Err(Error::Denied { message }) => assert_eq!(message, "bad key"),
        other => panic!("{other:?}"),
    }
}

/// Serves the mock on `NEXUS_MOCK_ADDR` (default 127.0.0.1:17422) for 120 s, to try the
/// examples without a real gateway:
/// `cargo test -p nexus-client --lib serve_mock -- --ignored` and, meanwhile,
/// `NEXUS_URL=http://127.0.0.1:17422 cargo run -p nexus-client --example pubsub`.
#[tokio::test]
#[ignore]
async fn serve_mock_for_examples() {
    let addr = std::env::var("NEXUS_MOCK_ADDR").unwrap_or_else(|_| "127.0.0.1:17422".into());
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let svc = GatewayServer::new(Mock::default());
    let server = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming(TcpListenerStream::new(listener));
    let _ = tokio::time::timeout(Duration::from_secs(120), server).await;
}
