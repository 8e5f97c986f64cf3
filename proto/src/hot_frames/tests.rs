//! Unit tests of [`super`]: the hand-written hot frames.

use super::*;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage as _, Value};

use crate::v1::{ErrorCode, Frame, frame::Kind};

/// The generated view of the same `.proto`, to check the hand-written encoding against.
fn dynamic(name: &str, wire: &[u8]) -> DynamicMessage {
    let pool = DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool.get_message_by_name(name).unwrap();
    DynamicMessage::decode(desc, wire).unwrap()
}

fn headers() -> Vec<Header> {
    vec![
        Header {
            key: "traceparent".into(),
            value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        },
        Header {
            key: "ключ".into(),
            value: "värde ✓".into(),
        },
    ]
}

/// Encodes `ours`, decodes it through the descriptor, re-encodes that: both encodings
/// must be byte-identical and decode back to `ours`.
fn round_trip<M: prost::Message + Default + PartialEq + std::fmt::Debug>(
    name: &str,
    ours: &M,
) -> DynamicMessage {
    let wire = ours.encode_to_vec();
    assert_eq!(wire.len(), ours.encoded_len());
    let dynamic = dynamic(name, &wire);
    assert_eq!(dynamic.encode_to_vec(), wire, "{name}: encodings differ");
    assert_eq!(&M::decode(Bytes::from(wire)).unwrap(), ours);
    dynamic
}

fn text(d: &DynamicMessage, field: &str) -> String {
    d.get_field_by_name(field)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn every_field_encodes_as_the_proto_says() {
    let p = Pub {
        subject: "orders.eu.created".into(),
        reply_to: "_INBOX.x".into(),
        headers: headers(),
        payload: Bytes::from_static(b"\x00\x01payload"),
        id: Bytes::from_static(&[7; 16]),
        ack_id: 300,
    };
    let d = round_trip("nexus.v1.Pub", &p);
    assert_eq!(text(&d, "subject"), "orders.eu.created");
    assert_eq!(text(&d, "reply_to"), "_INBOX.x");
    assert_eq!(d.get_field_by_name("ack_id").unwrap().as_u64(), Some(300));
    let Value::List(h) = &*d.get_field_by_name("headers").unwrap() else {
        panic!("headers is not a list")
    };
    assert_eq!(h.len(), 2);
    assert_eq!(text(h[1].as_message().unwrap(), "value"), "värde ✓");

    let m = Msg {
        sid: u64::MAX,
        subject: "a.b".into(),
        reply_to: "r".into(),
        headers: headers(),
        payload: Bytes::from_static(b"p"),
        id: Bytes::from_static(&[1; 16]),
        deadline_ms: 1500,
    };
    let d = round_trip("nexus.v1.Msg", &m);
    assert_eq!(d.get_field_by_name("sid").unwrap().as_u64(), Some(u64::MAX));
    assert_eq!(
        d.get_field_by_name("deadline_ms").unwrap().as_u32(),
        Some(1500)
    );

    let r = Req {
        req_id: 9,
        subject: "svc.echo".into(),
        headers: headers(),
        payload: Bytes::from_static(b"q"),
        timeout_ms: 250,
        id: Bytes::from_static(&[2; 16]),
    };
    let d = round_trip("nexus.v1.Req", &r);
    assert_eq!(
        d.get_field_by_name("timeout_ms").unwrap().as_u32(),
        Some(250)
    );

    let reply = Reply {
        req_id: 9,
        reply_to: "_INBOX.1".into(),
        headers: headers(),
        payload: Bytes::from_static(b"a"),
        error: Some(Error {
            code: ErrorCode::Timeout as i32,
            message: "late".into(),
            ref_id: 9,
        }),
    };
    let d = round_trip("nexus.v1.Reply", &reply);
    let e = d.get_field_by_name("error").unwrap();
    assert_eq!(text(e.as_message().unwrap(), "message"), "late");

    // Defaults are not sent, as proto3 requires.
    round_trip("nexus.v1.Pub", &Pub::default());
    assert!(Msg::default().encode_to_vec().is_empty());
    round_trip("nexus.v1.Reply", &Reply::default());
}

#[test]
fn inside_a_batch_the_frames_decode_unchanged() {
    let batch = crate::v1::Batch {
        frames: vec![
            Frame {
                kind: Some(Kind::Pub(Pub {
                    subject: "a".into(),
                    headers: headers(),
                    ..Default::default()
                })),
            },
            Frame {
                kind: Some(Kind::Msg(Msg {
                    sid: 1,
                    subject: "b".into(),
                    ..Default::default()
                })),
            },
        ],
        encoded: Bytes::new(),
    };
    let wire = batch.encode_to_vec();
    let d = dynamic("nexus.v1.Batch", &wire);
    assert_eq!(d.encode_to_vec(), wire);
    assert_eq!(crate::v1::Batch::decode(&wire[..]).unwrap(), batch);
    assert_eq!(d.descriptor().full_name(), "nexus.v1.Batch");

    // The same frames, some encoded ahead: the same bytes, and decoded the same.
    let mut ahead = bytes::BytesMut::new();
    Batch::encode_frame(&batch.frames[1], &mut ahead);
    let split = Batch {
        frames: vec![batch.frames[0].clone()],
        encoded: ahead.freeze(),
    };
    assert_eq!(split.encoded_len(), wire.len());
    assert_eq!(split.encode_to_vec(), wire);
    assert_eq!(split.into_frames().unwrap(), batch.frames);
}

#[test]
fn a_msg_encoded_from_borrowed_fields_is_the_msg_frame() {
    for msg in [
        Msg::default(),
        Msg {
            sid: 300,
            subject: "orders.eu".into(),
            reply_to: "_INBOX.7".into(),
            headers: headers(),
            payload: Bytes::from(vec![9u8; 200]),
            id: Bytes::from_static(b"0123456789abcdef"),
            deadline_ms: 1500,
        },
    ] {
        let frame = Frame {
            kind: Some(Kind::Msg(msg.clone())),
        };
        encodes_as(frame, |buf| Batch::encode_msg(&msg.as_ref(), buf));
    }
}

/// `encode` (from borrowed fields) writes the same bytes as encoding `frame`, and they decode
/// back to it.
fn encodes_as(frame: Frame, encode: impl FnOnce(&mut bytes::BytesMut)) {
    let (mut by_ref, mut by_frame) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    encode(&mut by_ref);
    Batch::encode_frame(&frame, &mut by_frame);
    assert_eq!(by_ref, by_frame);
    let batch = Batch {
        frames: Vec::new(),
        encoded: by_ref.freeze(),
    };
    assert_eq!(batch.into_frames().unwrap(), [frame]);
}

#[test]
fn a_pub_encoded_from_borrowed_fields_is_the_pub_frame() {
    for p in [
        Pub::default(),
        Pub {
            subject: "orders.eu".into(),
            reply_to: "_INBOX.7".into(),
            headers: headers(),
            payload: Bytes::from(vec![9u8; 300]),
            id: Bytes::from_static(b"0123456789abcdef"),
            ack_id: 1 << 40,
        },
    ] {
        let borrowed = PubRef {
            subject: &p.subject,
            reply_to: &p.reply_to,
            headers: &p.headers,
            payload: &p.payload,
            id: &p.id,
            ack_id: p.ack_id,
        };
        let frame = Frame {
            kind: Some(Kind::Pub(p.clone())),
        };
        encodes_as(frame, |buf| Batch::encode_pub(&borrowed, buf));
    }
}

#[test]
fn a_batch_is_sized_once_from_its_frame_lengths() {
    let frame = |i: u64| Frame {
        kind: Some(Kind::Msg(Msg {
            sid: i,
            subject: "a.b".into(),
            payload: Bytes::from(vec![0; (i as usize * 37) % 300]),
            ..Default::default()
        })),
    };
    for n in [1, 2, 300] {
        let batch = Batch::of((0..n).map(frame).collect());
        let decoded = Batch::decode(Bytes::from(batch.encode_to_vec())).unwrap();
        assert_eq!(decoded, batch);
        assert_eq!(decoded.frames.capacity(), n as usize, "{n} frames");
    }
    // Cut short or followed by garbage: the count is only a size hint, decoding decides.
    let wire = Batch::of((0..10).map(frame).collect()).encode_to_vec();
    for cut in 0..wire.len() {
        let _ = Batch::decode(&wire[..cut]);
    }
    let mut garbage = wire.clone();
    garbage.extend([
        0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ]);
    assert!(Batch::decode(&garbage[..]).is_err());
    assert_eq!(frames_ahead(&[0x80]), 1);
    assert_eq!(frames_ahead(&[]), 1);
}

#[test]
fn decoded_strings_share_the_receive_buffer() {
    let wire = Bytes::from(
        Pub {
            subject: "orders.created".into(),
            headers: headers(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let range = wire.as_ptr_range();
    let p = Pub::decode(wire.clone()).unwrap();
    assert!(range.contains(&p.subject.as_ptr()), "subject was copied");
    assert!(
        range.contains(&p.headers[0].value.as_ptr()),
        "header was copied"
    );
}

#[test]
fn a_string_that_is_not_utf8_is_refused() {
    // Pub.subject (field 1, length-delimited) = 0xff 0xfe.
    let err = Pub::decode(&[0x0a, 0x02, 0xff, 0xfe][..]).unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    // ASCII then a byte that is not, and valid text outside ASCII.
    let err = Pub::decode(&[0x0a, 0x03, b'a', b'b', 0xc3][..]).unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    let p = Pub {
        subject: "commandes.créées".into(),
        ..Default::default()
    };
    assert_eq!(Pub::decode(&p.encode_to_vec()[..]).unwrap(), p);
    // A length past the end of the buffer.
    assert!(Pub::decode(&[0x0a, 0x09, b'a'][..]).is_err());
    // Unknown fields are skipped, as in generated code.
    let mut wire = vec![0xa0, 0x06, 0x01]; // field 100, varint 1
    wire.extend(
        Pub {
            subject: "x".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert_eq!(Pub::decode(&wire[..]).unwrap().subject, "x");
}

#[test]
fn known_header_keys_are_static_and_others_are_slices() {
    let wire = Bytes::from(
        Pub {
            subject: "orders.created".into(),
            headers: vec![
                Header {
                    key: "traceparent".into(),
                    value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                },
                Header {
                    key: "nexus-encoding".into(),
                    value: "zstd".into(),
                },
                // Prefixes, longer keys and another case are not the known keys.
                Header {
                    key: "traceparen".into(),
                    value: "a".into(),
                },
                Header {
                    key: "traceparent2".into(),
                    value: "b".into(),
                },
                Header {
                    key: "TraceParent".into(),
                    value: "c".into(),
                },
            ],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let range = wire.as_ptr_range();
    let p = Pub::decode(wire.clone()).unwrap();
    let keys: Vec<(&str, bool)> = p
        .headers
        .iter()
        .map(|h| (&*h.key, range.contains(&h.key.as_ptr())))
        .collect();
    assert_eq!(
        keys,
        [
            ("traceparent", false),
            ("nexus-encoding", false),
            ("traceparen", true),
            ("traceparent2", true),
            ("TraceParent", true),
        ]
    );
    assert_eq!(p.headers[1].value, "zstd");
    // A known key's length running past the end is still an error.
    let mut cut = Header {
        key: "traceparent".into(),
        value: ByteString::new(),
    }
    .encode_to_vec();
    cut.truncate(cut.len() - 1);
    assert!(Header::decode(&cut[..]).is_err());
}

#[test]
fn batch_frames_decode_one_at_a_time_as_the_batch_does() {
    let frames = vec![
        Frame {
            kind: Some(Kind::Msg(Msg {
                sid: 7,
                subject: "orders.created".into(),
                headers: headers(),
                payload: Bytes::from_static(b"payload"),
                ..Default::default()
            })),
        },
        Frame {
            kind: Some(Kind::Error(crate::v1::Error {
                code: ErrorCode::Limit as i32,
                message: "too big".into(),
                ref_id: 3,
            })),
        },
        Frame::default(),
    ];
    let wire = Bytes::from(Batch::of(frames.clone()).encode_to_vec());
    let decoded: Vec<Frame> = BatchFrames::new(wire.clone())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(decoded, frames);
    // Fields are slices of the batch, not copies.
    let range = wire.as_ptr_range();
    let Some(Kind::Msg(m)) = &decoded[0].kind else {
        panic!("a Msg")
    };
    assert!(range.contains(&m.subject.as_ptr()), "subject was copied");
    assert!(range.contains(&m.payload.as_ptr()), "payload was copied");
    // An unknown field between frames is skipped.
    let mut wire = vec![0x10, 0x01]; // field 2, varint 1
    wire.extend(Batch::of(frames.clone()).encode_to_vec());
    assert_eq!(BatchFrames::new(wire.into()).count(), 3);
    assert_eq!(BatchFrames::new(Bytes::new()).count(), 0);
}

#[test]
fn batch_frames_end_at_the_first_bad_record() {
    let good = Batch::of(vec![Frame {
        kind: Some(Kind::Ping(crate::v1::Ping { nonce: 1 })),
    }])
    .encode_to_vec();
    // A good frame, then a record whose length runs past the end.
    let mut wire = good.clone();
    wire.extend([0x0a, 0x7f, 0x00]);
    let mut it = BatchFrames::new(wire.into());
    assert!(matches!(it.next(), Some(Ok(_))));
    let err = it.next().expect("an error").unwrap_err();
    assert!(err.to_string().contains("underflow"), "{err}");
    assert!(it.next().is_none(), "nothing after an error");
    // A frame whose contents are not a Frame; a `frames` field that is not length-delimited.
    let mut wire = good.clone();
    wire.extend([0x0a, 0x02, 0x2a, 0x05]);
    let results: Vec<_> = BatchFrames::new(wire.into()).collect();
    assert!(results[0].is_ok() && results[1].is_err() && results.len() == 2);
    assert!(
        BatchFrames::new(Bytes::from_static(&[0x08, 0x01]))
            .next()
            .unwrap()
            .is_err()
    );
}

#[test]
fn batch_frames_decode_in_place_into_one_slot() {
    let frames = vec![
        Frame {
            kind: Some(Kind::Ping(crate::v1::Ping { nonce: 1 })),
        },
        Frame::default(),
        Frame {
            kind: Some(Kind::Pub(Pub {
                subject: "a.b".into(),
                ..Default::default()
            })),
        },
    ];
    let mut wire = Batch::of(frames.clone()).encode_to_vec();
    wire.extend([0x0a, 0x02, 0x2a, 0x05]); // then a bad frame
    let mut it = BatchFrames::new(wire.into());
    let mut slot = Frame {
        kind: Some(Kind::Ping(crate::v1::Ping { nonce: 99 })),
    };
    let mut got = Vec::new();
    while it.next_into(&mut slot).unwrap_or(false) {
        got.push(slot.clone());
    }
    // An empty frame decodes as one with no kind: the slot's old kind does not survive.
    assert_eq!(got, frames);
    assert!(!it.next_into(&mut slot).unwrap(), "nothing after the error");
}

#[test]
fn varints_of_every_length_encode_as_the_proto_says() {
    // One, two and more bytes, at each boundary: field lengths and a varint field.
    for n in [
        0u64,
        1,
        127,
        128,
        16_383,
        16_384,
        70_000,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        let len = usize::try_from(n.min(70_000)).unwrap();
        let msg = Msg {
            sid: n,
            subject: "s".repeat(len.min(20_000)).into(),
            payload: Bytes::from(vec![1u8; len]),
            deadline_ms: u32::try_from(n).unwrap_or(u32::MAX),
            ..Default::default()
        };
        round_trip("nexus.v1.Msg", &msg);
        let mut buf = bytes::BytesMut::new();
        Batch::encode_msg(&msg.as_ref(), &mut buf);
        let frame = Frame {
            kind: Some(Kind::Msg(msg)),
        };
        assert_eq!(buf.to_vec(), Batch::of(vec![frame]).encode_to_vec(), "{n}");
    }
}
