//! A payload is not copied between the frame that brought it in and the frames that take it
//! out (issue 19, large payloads). Per delivery the bytes are copied twice, both at the
//! edges: tonic assembles a gRPC message from its HTTP/2 DATA frames into one buffer
//! (receive), and the outbound `Batch` is encoded into the send buffer (send). In between,
//! decoding (`proto/src/hot_frames/mod.rs`), routing, fan-out to many subscribers and the
//! outbound queue all share that receive buffer. These tests follow one large payload from
//! the wire bytes of a `Batch` to the `Msg` frames in each subscriber's outbound queue and
//! check that every one points into the bytes the `Batch` arrived in, decoded (gRPC) or read
//! in place (the native transport).
//!
//! This holds for payloads of `outbound::WHOLE_FRAME_PAYLOAD` (8 KiB) and more. A smaller
//! frame is encoded when it is queued and its batch copied into the send buffer, one more
//! copy of a few hundred bytes that costs less than handing each frame on as a value
//! (`gateway/src/outbound/mod.rs`).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use nexus_gateway::GatewayConfig;
use nexus_gateway::connection::Connection;
use nexus_gateway::metrics::GatewayMetrics;
use nexus_gateway::outbound::{DeferredWakes, Outbound, OutboundStream};
use nexus_gateway::router::{Delivery, MessageRef, Router};
use nexus_proto::hot_frames::{BatchFrames, Next};
use nexus_proto::v1::{Batch, Frame, Pub, frame::Kind};
use prost::Message;

const PAYLOAD: usize = 256 * 1024;

/// The wire bytes of a `Batch` holding one `Pub` of `PAYLOAD` bytes on `subject`.
fn wire(subject: &str) -> Bytes {
    Batch {
        frames: vec![Frame {
            kind: Some(Kind::Pub(Pub {
                subject: subject.into(),
                payload: Bytes::from(vec![7u8; PAYLOAD]),
                id: Bytes::from_static(b"0123456789abcdef"),
                ..Default::default()
            })),
        }],
        encoded: Bytes::new(),
    }
    .encode_to_vec()
    .into()
}

/// The `Pub` decoded from `wire` as the session decodes it, as a `Delivery`.
fn delivery(wire: &Bytes) -> Delivery {
    let batch = Batch::decode(wire.clone()).expect("decodes");
    let Some(Kind::Pub(p)) = batch.frames.into_iter().next().and_then(|f| f.kind) else {
        panic!("not a Pub");
    };
    Delivery {
        subject: p.subject,
        reply_to: p.reply_to,
        headers: p.headers,
        payload: p.payload,
        id: p.id,
        traced: false,
    }
}

fn router() -> Arc<Router> {
    Arc::new(Router::new(
        Arc::new(GatewayConfig::default()),
        Arc::new(GatewayMetrics::new()),
    ))
}

/// A session subscribed to `pattern` (in `queue`, or plain when empty).
fn subscriber(router: &Router, pattern: &str, queue: &str) -> (Arc<Connection>, OutboundStream) {
    let (outbound, stream) = Outbound::new(16 << 20);
    let conn = Arc::new(Connection::new(router.next_id(), outbound));
    router.subscribe(&conn, 1, pattern, queue);
    (conn, stream)
}

/// The payloads of the `Msg`s in the next outbound batch of `stream`.
async fn next_payloads(stream: &mut OutboundStream) -> Vec<Bytes> {
    let batch = stream
        .next()
        .await
        .expect("an outbound batch")
        .expect("not an error");
    batch
        .frames
        .into_iter()
        .filter_map(|f| match f.kind {
            Some(Kind::Msg(m)) => Some(m.payload),
            _ => None,
        })
        .collect()
}

fn inside(range: &Range<*const u8>, b: &Bytes) -> bool {
    range.contains(&b.as_ptr()) && b.len() == PAYLOAD
}

#[tokio::test]
async fn one_subscriber_gets_the_payload_in_the_buffer_it_arrived_in() {
    let router = router();
    let (_conn, mut stream) = subscriber(&router, "big.>", "");
    let wire = wire("big.one");
    let range = wire.as_ptr_range();
    let (delivered, _) = router.publish(delivery(&wire), &mut Vec::new()).await;
    assert_eq!(delivered, 1);
    let payloads = next_payloads(&mut stream).await;
    assert_eq!(payloads.len(), 1);
    assert!(
        inside(&range, &payloads[0]),
        "the payload was copied on its way to the subscriber"
    );
}

/// Over the native transport a publish is read in place from its record
/// (`BatchFrames::next_view`) and routed borrowed (`MessageRef`): the frame a large payload is
/// queued in still points into the record.
#[tokio::test]
async fn a_publish_read_in_place_is_delivered_from_its_record() {
    let router = router();
    let (_conn, mut stream) = subscriber(&router, "big.>", "");
    let wire = wire("big.native");
    let range = wire.as_ptr_range();
    let mut frames = BatchFrames::new(wire.clone());
    let (mut slot, mut headers) = (Frame::default(), Vec::new());
    let Ok(Some(Next::Pub(p))) = frames.next_view(&mut slot, &mut headers) else {
        panic!("a publish read in place");
    };
    let msg = MessageRef::new(
        [p.buffer; 4],
        p.subject,
        p.reply_to,
        &headers,
        p.payload,
        p.id,
    );
    let mut scratch = Vec::new();
    let outcome = router.offer(&msg, &mut scratch, None);
    assert!(outcome.stored.is_none());
    let mut wakes = DeferredWakes::default();
    assert_eq!(
        router.deliver_now(&msg, &mut scratch, &mut wakes).done(),
        Some(1)
    );
    drop(wakes);
    let payloads = next_payloads(&mut stream).await;
    assert_eq!(payloads.len(), 1);
    assert!(
        inside(&range, &payloads[0]),
        "the payload was copied on its way to the subscriber"
    );
}

#[tokio::test]
async fn fan_out_and_a_queue_group_share_one_buffer() {
    let router = router();
    let mut streams = Vec::new();
    let mut conns = Vec::new();
    for (pattern, queue) in [
        ("big.>", ""),
        ("big.*", ""),
        ("big.fan", ""),
        ("big.>", "workers"),
        ("big.>", "workers"),
    ] {
        let (c, s) = subscriber(&router, pattern, queue);
        conns.push(c);
        streams.push(s);
    }
    let wire = wire("big.fan");
    let range = wire.as_ptr_range();
    let (delivered, _) = router.publish(delivery(&wire), &mut Vec::new()).await;
    // Three plain subscriptions and one member of the queue group.
    assert_eq!(delivered, 4);
    let mut seen = 0;
    for s in &mut streams {
        // A queue member that was not picked has nothing queued.
        let Ok(payloads) =
            tokio::time::timeout(std::time::Duration::from_millis(50), next_payloads(s)).await
        else {
            continue;
        };
        for p in payloads {
            assert!(inside(&range, &p), "a subscriber's copy was made");
            seen += 1;
        }
    }
    assert_eq!(seen, 4);
}
