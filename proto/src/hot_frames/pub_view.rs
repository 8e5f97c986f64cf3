//! Publishes read in place: [`BatchFrames::next_view`] hands a gateway each `Pub` of a
//! received batch as a [`PubView`], whose fields are slices of the batch's bytes, instead of
//! decoding it into a `Frame`.
//!
//! Decoding a `Pub` takes a reference-counted slice of the receive buffer for each of its
//! subject, payload and id (an atomic increment, and a decrement when it is dropped, on a
//! buffer the connection's reader shares), allocates its headers vector, and moves the
//! ~170-byte frame through prost's `oneof` merge. A gateway routing the message to
//! subscribers of its own only reads those fields: it copies them into each subscriber's
//! queue. Owned slices ([`share`]) are taken only where a message outlives its batch: held
//! for the spool, sent to another gateway, queued as a frame of its own.
//!
//! Only the plain shape is read this way: a `Frame` whose one field is a `Pub` whose fields
//! are all known, with their proper wire types, and whose strings are UTF-8. Anything else
//! (an unknown field, a frame merging two kinds, a string that is not UTF-8, a length past
//! the end) is left to prost's decoding, which gives the same frame or the same error.

use bytes::Bytes;
use prost::DecodeError;
use prost::encoding::{WireType, decode_varint};

use super::{BatchFrames, ByteString, Header, next_frame, text};
use crate::v1::Frame;

/// The one-byte keys (field number << 3 | wire type) of the fields read here: `Batch.frames`,
/// `Frame.pub`, `Pub`'s six fields (length-delimited but `ack_id`, a varint) and `Header`'s
/// two.
const BATCH_FRAMES: u8 = 1 << 3 | LENGTH_DELIMITED;
const FRAME_PUB: u8 = 5 << 3 | LENGTH_DELIMITED;
const PUB_SUBJECT: u8 = 1 << 3 | LENGTH_DELIMITED;
const PUB_REPLY_TO: u8 = 2 << 3 | LENGTH_DELIMITED;
const PUB_HEADERS: u8 = 3 << 3 | LENGTH_DELIMITED;
const PUB_PAYLOAD: u8 = 4 << 3 | LENGTH_DELIMITED;
const PUB_ID: u8 = 5 << 3 | LENGTH_DELIMITED;
const PUB_ACK_ID: u8 = 6 << 3;
const HEADER_KEY: u8 = 1 << 3 | LENGTH_DELIMITED;
const HEADER_VALUE: u8 = 2 << 3 | LENGTH_DELIMITED;
const LENGTH_DELIMITED: u8 = WireType::LengthDelimited as u8;

/// A `Pub` read in place from an encoded batch: every field is a slice of `buffer`. Its
/// headers are decoded into the vector the caller passed to [`BatchFrames::next_view`].
#[derive(Clone, Copy, Debug)]
pub struct PubView<'a> {
    pub subject: &'a str,
    pub reply_to: &'a str,
    pub payload: &'a [u8],
    pub id: &'a [u8],
    pub ack_id: u64,
    /// The batch the fields are slices of, to take owned slices from ([`share`]).
    pub buffer: &'a Bytes,
}

/// What [`BatchFrames::next_view`] read.
#[derive(Debug)]
pub enum Next<'a> {
    /// A publish, read in place.
    Pub(PubView<'a>),
    /// Any other frame (or a publish of another shape), decoded into the caller's slot.
    Frame,
}

impl BatchFrames {
    /// The next frame: a publish of the plain shape as a [`PubView`] (its headers decoded into
    /// `headers`, which is cleared first), any other frame decoded into `slot` as
    /// [`BatchFrames::next_into`] does; `None` at the end of the batch. After an error the
    /// batch has no more frames.
    pub fn next_view(
        &mut self,
        slot: &mut Frame,
        headers: &mut Vec<Header>,
    ) -> Result<Option<Next<'_>>, DecodeError> {
        headers.clear();
        let start = self.whole.len() - self.buf.len();
        if let Some((view, end)) = read_pub(&self.whole, start, headers) {
            bytes::Buf::advance(&mut self.buf, end - start);
            return Ok(Some(Next::Pub(view)));
        }
        headers.clear();
        Ok(next_frame(&mut self.buf, slot)?.then_some(Next::Frame))
    }
}

/// Reads the `frames` record at `whole[start..]` as a publish of the plain shape (module
/// docs): the view and where the record ends, or `None` to leave it to prost.
fn read_pub<'a>(
    whole: &'a Bytes,
    start: usize,
    headers: &mut Vec<Header>,
) -> Option<(PubView<'a>, usize)> {
    let all: &'a [u8] = whole;
    let mut cur = all.get(start..)?;
    if next_key(&mut cur)? != BATCH_FRAMES {
        return None;
    }
    let mut frame = length_delimited(&mut cur)?;
    let end = all.len() - cur.len();
    if next_key(&mut frame)? != FRAME_PUB {
        return None;
    }
    let mut body = length_delimited(&mut frame)?;
    if !frame.is_empty() {
        // More fields after the publish: prost merges them.
        return None;
    }
    let mut view = PubView {
        subject: "",
        reply_to: "",
        payload: &[],
        id: &[],
        ack_id: 0,
        buffer: whole,
    };
    // As prost merges a message: a field seen twice keeps its last value; headers append.
    while !body.is_empty() {
        match next_key(&mut body)? {
            PUB_ACK_ID => view.ack_id = varint(&mut body)?,
            key => {
                let field = length_delimited(&mut body)?;
                match key {
                    PUB_SUBJECT => view.subject = std::str::from_utf8(field).ok()?,
                    PUB_REPLY_TO => view.reply_to = std::str::from_utf8(field).ok()?,
                    PUB_HEADERS => headers.push(read_header(whole, field)?),
                    PUB_PAYLOAD => view.payload = field,
                    PUB_ID => view.id = field,
                    _ => return None,
                }
            }
        }
    }
    Some((view, end))
}

/// A `Header` message's fields, as [`Header`]'s decoding takes them: a known key as a static
/// string, other strings as slices of `whole`.
fn read_header(whole: &Bytes, mut body: &[u8]) -> Option<Header> {
    let mut header = Header::default();
    while !body.is_empty() {
        let key = next_key(&mut body)?;
        let field = length_delimited(&mut body)?;
        match key {
            HEADER_KEY => {
                header.key = match text::KNOWN_KEYS.into_iter().find(|k| k.as_bytes() == field) {
                    Some(key) => ByteString::from_static(key),
                    None => ByteString::try_from(share(whole, field)).ok()?,
                }
            }
            HEADER_VALUE => header.value = ByteString::try_from(share(whole, field)).ok()?,
            _ => return None,
        }
    }
    Some(header)
}

/// The next field key, as the one byte it is for every field read here; `None` at the end.
/// (A key written in more bytes than it needs is valid protobuf, but not the plain shape:
/// it matches none of the keys above, and the frame goes to prost.)
#[inline(always)]
fn next_key(cur: &mut &[u8]) -> Option<u8> {
    let (&key, rest) = cur.split_first()?;
    *cur = rest;
    Some(key)
}

/// A varint: one or two bytes inline (keys, and lengths up to 16 KiB: most of what a publish
/// holds), longer ones by prost's decoder.
#[inline(always)]
fn varint(cur: &mut &[u8]) -> Option<u64> {
    let bytes: &[u8] = cur;
    match bytes {
        [byte, rest @ ..] if *byte < 0x80 => {
            *cur = rest;
            Some(u64::from(*byte))
        }
        [low, high, rest @ ..] if *high < 0x80 => {
            *cur = rest;
            Some(u64::from(low & 0x7f) | u64::from(*high) << 7)
        }
        _ => decode_varint(cur).ok(),
    }
}

/// The next length-delimited field's contents (its key already read), advancing `cur` past
/// it; `None` when its length runs past the end.
#[inline(always)]
fn length_delimited<'a>(cur: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(cur)?).ok()?;
    let field = cur.get(..len)?;
    *cur = &cur[len..];
    Some(field)
}

/// `part` as `Bytes`: a slice of `buffer` (a reference-count increment) when it lies inside
/// it, else a copy (a message id the gateway made, a header it added).
pub fn share(buffer: &Bytes, part: &[u8]) -> Bytes {
    if part.is_empty() {
        return Bytes::new();
    }
    let inside = buffer.as_ptr_range();
    let range = part.as_ptr_range();
    if inside.start <= range.start && range.end <= inside.end {
        buffer.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// [`share`] for a string.
pub fn share_str(buffer: &Bytes, part: &str) -> ByteString {
    // `part` is UTF-8, so the check cannot fail; a copy if it somehow did.
    ByteString::try_from(share(buffer, part.as_bytes())).unwrap_or_else(|_| part.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hot_frames::{Batch, Msg, Pub};
    use crate::v1::{Ping, frame::Kind};
    use proptest::prelude::*;
    use prost::Message as _;

    /// Every frame `next_view` reads, as a `Frame` (a view turned into the `Pub` it stands
    /// for), or the error it ended with.
    fn read_all(wire: &Bytes) -> (Vec<Frame>, Option<String>) {
        let mut frames = BatchFrames::new(wire.clone());
        let (mut slot, mut headers, mut out) = (Frame::default(), Vec::new(), Vec::new());
        loop {
            match frames.next_view(&mut slot, &mut headers) {
                Ok(None) => return (out, None),
                Ok(Some(Next::Frame)) => out.push(slot.clone()),
                Ok(Some(Next::Pub(v))) => out.push(Frame {
                    kind: Some(Kind::Pub(Pub {
                        subject: share_str(v.buffer, v.subject),
                        reply_to: share_str(v.buffer, v.reply_to),
                        headers: headers.clone(),
                        payload: share(v.buffer, v.payload),
                        id: share(v.buffer, v.id),
                        ack_id: v.ack_id,
                    })),
                }),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    /// What prost's decoding, one frame at a time, makes of the same bytes.
    fn decode_all(wire: &Bytes) -> (Vec<Frame>, Option<String>) {
        let mut out = Vec::new();
        for f in BatchFrames::new(wire.clone()) {
            match f {
                Ok(f) => out.push(f),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    fn publish(
        subject: &str,
        headers: Vec<Header>,
        payload: &'static [u8],
        id: &'static [u8],
    ) -> Frame {
        Frame {
            kind: Some(Kind::Pub(Pub {
                subject: subject.into(),
                reply_to: "_INBOX.r".into(),
                headers,
                payload: Bytes::from_static(payload),
                id: Bytes::from_static(id),
                ack_id: 300,
            })),
        }
    }

    #[test]
    fn publishes_are_read_in_place_and_other_frames_decoded() {
        let traceparent = Header {
            key: "traceparent".into(),
            value: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        };
        let other = Header {
            key: "ключ".into(),
            value: "värde".into(),
        };
        let frames = vec![
            Frame {
                kind: Some(Kind::Ping(Ping { nonce: 1 })),
            },
            publish("orders.eu", vec![traceparent, other], b"payload", &[7; 16]),
            publish("orders.us", vec![], b"", b""),
            Frame {
                kind: Some(Kind::Msg(Msg {
                    sid: 3,
                    subject: "a".into(),
                    ..Default::default()
                })),
            },
        ];
        let wire = Bytes::from(Batch::of(frames.clone()).encode_to_vec());
        assert_eq!(read_all(&wire), (frames, None));

        let mut it = BatchFrames::new(wire.clone());
        let (mut slot, mut headers) = (Frame::default(), vec![Header::default()]);
        assert!(matches!(
            it.next_view(&mut slot, &mut headers),
            Ok(Some(Next::Frame))
        ));
        let Ok(Some(Next::Pub(v))) = it.next_view(&mut slot, &mut headers) else {
            panic!("a publish read in place")
        };
        let range = wire.as_ptr_range();
        for part in [v.subject.as_bytes(), v.reply_to.as_bytes(), v.payload, v.id] {
            assert!(range.contains(&part.as_ptr()), "a field was copied");
        }
        assert_eq!(headers.len(), 2, "the vector was cleared first");
        assert!(
            !range.contains(&headers[0].key.as_ptr()),
            "a known key is static, not a slice"
        );
        assert!(range.contains(&headers[1].key.as_ptr()));
        assert!(range.contains(&headers[1].value.as_ptr()));
        assert!(
            share(v.buffer, v.payload).as_ptr() == v.payload.as_ptr(),
            "shared, not copied"
        );
    }

    #[test]
    fn share_copies_what_is_not_in_the_buffer() {
        let buffer = Bytes::from_static(b"0123456789");
        let made = [1u8; 16];
        assert_eq!(&share(&buffer, &made)[..], &made[..]);
        assert_ne!(share(&buffer, &made).as_ptr(), made.as_ptr());
        assert_eq!(share(&buffer, &buffer[2..4]).as_ptr(), buffer[2..].as_ptr());
        assert!(share(&buffer, &[]).is_empty());
        assert_eq!(share_str(&buffer, "added"), "added");
    }

    #[test]
    fn other_shapes_are_left_to_prost() {
        let one = publish("a.b", vec![], b"x", &[1; 16]);
        let encoded = |f: &Frame| Batch::of(vec![f.clone()]).encode_to_vec();
        // An unknown field inside the publish; the publish then a second kind in one frame
        // (the last kind wins); a subject that is not UTF-8.
        let mut unknown = one.encode_to_vec();
        let inner_len = unknown[1] as usize;
        unknown[1] = (inner_len + 2) as u8;
        unknown.extend([0x38, 0x01]); // Pub field 7, varint
        let mut cases = vec![Batch::of(vec![]).encode_to_vec()];
        let mut wire = vec![0x0a, unknown.len() as u8];
        wire.extend(&unknown);
        cases.push(wire);
        let mut two_kinds = one.encode_to_vec();
        two_kinds.extend(
            Frame {
                kind: Some(Kind::Ping(Ping { nonce: 5 })),
            }
            .encode_to_vec(),
        );
        let mut wire = vec![0x0a, two_kinds.len() as u8];
        wire.extend(&two_kinds);
        cases.push(wire);
        let mut bad_utf8 = encoded(&one);
        let at = bad_utf8.windows(3).position(|w| w == b"a.b").unwrap();
        bad_utf8[at] = 0xff;
        cases.push(bad_utf8);
        for wire in cases {
            let wire = Bytes::from(wire);
            assert_eq!(read_all(&wire), decode_all(&wire), "{wire:?}");
        }
    }

    fn header() -> impl Strategy<Value = Header> {
        (
            prop_oneof![Just("traceparent".to_owned()), "[a-zé]{0,6}"],
            "[a-z0-9-]{0,8}",
        )
            .prop_map(|(k, v)| Header {
                key: k.into(),
                value: v.into(),
            })
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            4 => (
                "[a-z.]{0,12}",
                "[a-z_.]{0,6}",
                proptest::collection::vec(header(), 0..3),
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(any::<u8>(), 0..17),
                any::<u64>(),
            )
                .prop_map(|(s, r, headers, payload, id, ack_id)| Frame {
                    kind: Some(Kind::Pub(Pub {
                        subject: s.into(),
                        reply_to: r.into(),
                        headers,
                        payload: payload.into(),
                        id: id.into(),
                        ack_id,
                    })),
                }),
            1 => any::<u64>().prop_map(|nonce| Frame {
                kind: Some(Kind::Ping(Ping { nonce })),
            }),
        ]
    }

    proptest! {
        /// Whatever the bytes (valid batches, and batches with a byte changed, cut short or
        /// grown), reading publishes in place gives the frames and the error prost's
        /// decoding gives.
        #[test]
        fn reading_in_place_agrees_with_prost(
            frames in proptest::collection::vec(frame(), 0..6),
            change in proptest::option::of((any::<prop::sample::Index>(), any::<u8>())),
            cut in proptest::option::of(any::<prop::sample::Index>()),
            tail in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut wire = Batch::of(frames).encode_to_vec();
            if let (Some((at, byte)), false) = (change, wire.is_empty()) {
                let i = at.index(wire.len());
                wire[i] = byte;
            }
            if let (Some(at), false) = (cut, wire.is_empty()) {
                wire.truncate(at.index(wire.len()));
            }
            wire.extend(tail);
            let wire = Bytes::from(wire);
            prop_assert_eq!(read_all(&wire), decode_all(&wire));
        }
    }
}
