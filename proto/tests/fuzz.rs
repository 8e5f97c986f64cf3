//! Bounded property-based fuzzing of the parsers every peer's bytes reach: the session frame
//! decoder (including the hand-written hot frames), subject validation and log escaping. Each
//! property runs a few hundred cases so the pass stays in the suite; raise `PROPTEST_CASES` to
//! run longer (e.g. `PROPTEST_CASES=200000 cargo test -p nexus-proto --test fuzz`).
//!
//! Also checks that the hand-written frames in `hot_frames.rs` handle every field the
//! `.proto` declares: a field added to the `.proto` and not to the hand-written code would be
//! skipped silently as unknown, and the test names it.

use bytes::Bytes;
use nexus_proto::subject::{is_invisible, validate_pattern, validate_subject};
use nexus_proto::text::Escaped;
use nexus_proto::v1::{self, Batch, Header, Msg, Pub, Reply, Req};
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind as FieldKind, MessageDescriptor, Value};

fn pool() -> DescriptorPool {
    DescriptorPool::decode(nexus_proto::FILE_DESCRIPTOR_SET).unwrap()
}

/// A non-default value for a field of `kind`, deep enough to reach every nested field.
fn sample(kind: &FieldKind, depth: usize) -> Value {
    match kind {
        FieldKind::String => Value::String("s\u{e9}".into()),
        FieldKind::Bytes => Value::Bytes(Bytes::from_static(&[1, 2, 3])),
        FieldKind::Uint64 | FieldKind::Fixed64 => Value::U64(u64::MAX - 1),
        FieldKind::Uint32 | FieldKind::Fixed32 => Value::U32(7),
        FieldKind::Int64 | FieldKind::Sint64 | FieldKind::Sfixed64 => Value::I64(-7),
        FieldKind::Int32 | FieldKind::Sint32 | FieldKind::Sfixed32 => Value::I32(-7),
        FieldKind::Bool => Value::Bool(true),
        FieldKind::Double => Value::F64(1.5),
        FieldKind::Float => Value::F32(1.5),
        FieldKind::Enum(e) => Value::EnumNumber(e.values().last().map_or(1, |v| v.number())),
        FieldKind::Message(m) => Value::Message(full(m, depth + 1)),
    }
}

/// A message of `desc` with every field set.
fn full(desc: &MessageDescriptor, depth: usize) -> DynamicMessage {
    let mut m = DynamicMessage::new(desc.clone());
    if depth > 3 {
        return m;
    }
    for field in desc.fields() {
        let v = sample(&field.kind(), depth);
        let v = if field.is_list() {
            Value::List(vec![v.clone(), v])
        } else {
            v
        };
        m.set_field(&field, v);
    }
    m
}

/// Encodes `desc` with every field set, decodes it with the hand-written type `M`,
/// re-encodes: the bytes must be the same, or a field was dropped.
fn every_field_survives<M: Message + Default>(name: &str) {
    let pool = pool();
    let desc = pool.get_message_by_name(name).unwrap();
    for field in desc.fields() {
        // One field at a time, so the failure names it.
        let mut only = DynamicMessage::new(desc.clone());
        let v = sample(&field.kind(), 0);
        only.set_field(
            &field,
            if field.is_list() {
                Value::List(vec![v])
            } else {
                v
            },
        );
        let wire = only.encode_to_vec();
        let ours = M::decode(Bytes::from(wire.clone()))
            .unwrap_or_else(|e| panic!("{name}.{}: {e}", field.name()));
        assert_eq!(
            ours.encode_to_vec(),
            wire,
            "{name}.{} is not handled by proto/src/hot_frames/mod.rs (dropped or changed)",
            field.name()
        );
    }
    let wire = full(&desc, 0).encode_to_vec();
    assert_eq!(
        M::decode(Bytes::from(wire.clone()))
            .unwrap()
            .encode_to_vec(),
        wire,
        "{name}"
    );
}

#[test]
fn hot_frames_handle_every_field_of_the_proto() {
    every_field_survives::<Pub>("nexus.v1.Pub");
    every_field_survives::<Msg>("nexus.v1.Msg");
    every_field_survives::<Req>("nexus.v1.Req");
    every_field_survives::<Reply>("nexus.v1.Reply");
    every_field_survives::<Header>("nexus.v1.Header");
    every_field_survives::<Batch>("nexus.v1.Batch");
}

fn header() -> impl Strategy<Value = Header> {
    (any::<String>(), any::<String>()).prop_map(|(k, v)| Header {
        key: k.into(),
        value: v.into(),
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn frame() -> impl Strategy<Value = v1::Frame> {
    use v1::frame::Kind;
    let pub_ = (
        any::<String>(),
        any::<String>(),
        proptest::collection::vec(header(), 0..3),
        bytes(64),
        bytes(20),
        any::<u64>(),
    )
        .prop_map(|(s, r, h, p, id, ack)| {
            Kind::Pub(Pub {
                subject: s.into(),
                reply_to: r.into(),
                headers: h,
                payload: p,
                id,
                ack_id: ack,
            })
        });
    let msg =
        (any::<u64>(), any::<String>(), bytes(64), any::<u32>()).prop_map(|(sid, s, p, d)| {
            Kind::Msg(Msg {
                sid,
                subject: s.into(),
                payload: p,
                deadline_ms: d,
                ..Default::default()
            })
        });
    let req = (any::<u64>(), any::<String>(), bytes(64), any::<u32>()).prop_map(|(r, s, p, t)| {
        Kind::Req(Req {
            req_id: r,
            subject: s.into(),
            payload: p,
            timeout_ms: t,
            ..Default::default()
        })
    });
    let reply = (any::<u64>(), any::<String>(), any::<i32>(), any::<String>()).prop_map(
        |(r, to, code, message)| {
            Kind::Reply(Reply {
                req_id: r,
                reply_to: to.into(),
                error: Some(v1::Error {
                    code,
                    message,
                    ref_id: r,
                }),
                ..Default::default()
            })
        },
    );
    let ping = any::<u64>().prop_map(|nonce| Kind::Ping(v1::Ping { nonce }));
    prop_oneof![pub_, msg, req, reply, ping].prop_map(|k| v1::Frame { kind: Some(k) })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    /// Arbitrary bytes never panic the decoder; what decodes re-encodes to something that
    /// decodes to the same batch.
    #[test]
    fn batch_decoder_survives_arbitrary_bytes(wire in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(batch) = Batch::decode(Bytes::from(wire)) {
            let again = batch.encode_to_vec();
            prop_assert_eq!(again.len(), batch.encoded_len());
            prop_assert_eq!(Batch::decode(Bytes::from(again)).unwrap(), batch);
        }
    }

    /// Valid frames with one byte flipped or cut short: never a panic.
    #[test]
    fn batch_decoder_survives_mutations(
        frames in proptest::collection::vec(frame(), 1..6),
        at in any::<prop::sample::Index>(),
        flip in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = Batch::of(frames).encode_to_vec();
        let i = at.index(wire.len());
        wire[i] ^= flip;
        let _ = Batch::decode(Bytes::from(wire.clone()));
        let _ = Batch::decode(Bytes::from(wire[..cut.index(wire.len())].to_vec()));
    }

    /// The hand-written encoding is the `.proto`'s: a generic decoder reads the same frames.
    #[test]
    fn hot_frames_agree_with_the_descriptor(frames in proptest::collection::vec(frame(), 1..6)) {
        let batch = Batch::of(frames);
        let wire = batch.encode_to_vec();
        let desc = pool().get_message_by_name("nexus.v1.Batch").unwrap();
        let dynamic = DynamicMessage::decode(desc, &wire[..]).unwrap();
        prop_assert_eq!(dynamic.encode_to_vec(), wire.clone());
        prop_assert_eq!(Batch::decode(Bytes::from(wire)).unwrap(), batch);
    }

    /// Subject checks never panic, agree between subjects and patterns, and never accept an
    /// invisible, control or whitespace character.
    #[test]
    fn subject_validation_is_total_and_refuses_invisible_text(s in "\\PC{0,40}|[a-z.*>\u{200b}\u{202e} ]{0,20}") {
        let subject = validate_subject(&s);
        let pattern = validate_pattern(&s);
        if subject.is_ok() {
            prop_assert!(pattern.is_ok(), "{:?} is a valid subject but not a valid pattern", s);
        }
        if subject.is_ok() || pattern.is_ok() {
            let bad = |c: char| is_invisible(c) || c.is_control() || c.is_whitespace();
            prop_assert!(!s.chars().any(bad), "{:?} was accepted", s);
        }
    }

    /// Escaped text never carries a control, invisible or line-breaking character.
    #[test]
    fn escaped_text_is_inert(s in any::<String>()) {
        let out = Escaped(&s).to_string();
        let bad = |c: char| c.is_control() || is_invisible(c) || matches!(c, '\u{2028}' | '\u{2029}');
        prop_assert!(!out.chars().any(bad), "{:?} escaped to {:?}", s, out);
    }
}
