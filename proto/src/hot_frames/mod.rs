//! The per-message frames (`Pub`, `Msg`, `Req`, `Reply` and their `Header`s) and the `Batch`
//! that carries them, written by hand instead of generated, so that their string fields are
//! [`ByteString`]s: reference-counted slices of the buffer the frame was received in.
//!
//! prost decodes a `string` field into a freshly allocated `String` (one `malloc` and one copy
//! per subject, reply subject, header key and header value), and copies it again when a
//! gateway forwards the message. These frames are on the path of every message, so here a
//! decoded string shares the receive buffer the way a `bytes` field (`Bytes`) already does,
//! and forwarding it is a reference-count increment. The wire format is exactly that of
//! `nexus/v1/gateway.proto` (which stays the contract for every other adapter); the build
//! script maps these five messages here with `extern_path`, so the generated `Frame` oneof and
//! the federation messages use them, and tests check that both encodings agree byte for byte.
//!
//! A string that is not UTF-8 is refused with the same decode error as a generated message.
//!
//! [`Batch`] differs from the generated one in sizing its `frames` vector once, from a scan of
//! the frame lengths, instead of growing it by doubling (a batch holds up to a few hundred
//! frames of ~200 bytes each, and every doubling copied them), and in carrying frames that
//! are already encoded ([`Batch::encoded`]): a gateway encodes each frame for a session when
//! it queues it, and hands the transport whole batches of bytes.

use bytes::{Buf, BufMut, Bytes};
pub use bytestring::ByteString;
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, bytes as pbytes, decode_varint, encode_varint, encoded_len_varint,
    key_len, message, skip_field, uint32, uint64,
};

use super::v1::{Error, Frame};

mod pub_view;
pub use pub_view::{Next, PubView, share, share_str};

/// A batch of frames (`nexus.v1.Batch`); frames in a batch are processed in order.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Batch {
    pub frames: Vec<Frame>,
    /// More frames, already encoded as `frames` records (field 1, length-delimited, back to
    /// back): sent after `frames`, byte for byte. Decoding never fills it; a gateway hands a
    /// native record to its session here undecoded, to be read with [`BatchFrames`].
    pub encoded: Bytes,
}

impl Batch {
    /// A batch of `frames`.
    pub fn of(frames: Vec<Frame>) -> Self {
        Batch {
            frames,
            encoded: Bytes::new(),
        }
    }

    /// Every frame of the batch, the encoded ones decoded: what a peer receiving it would
    /// see. For reading a batch built in-process (tests of the outbound queue).
    pub fn into_frames(self) -> Result<Vec<Frame>, DecodeError> {
        let mut frames = self.frames;
        if !self.encoded.is_empty() {
            let rest = <Batch as prost::Message>::decode(self.encoded)?;
            frames.extend(rest.frames);
        }
        Ok(frames)
    }

    /// Appends a `Frame` holding `msg` to `buf` as one encoded `frames` record, for
    /// [`Batch::encoded`]: the same bytes as [`Batch::encode_frame`] of that frame, with the
    /// `Msg`'s length computed once.
    pub fn encode_msg(msg: &MsgRef<'_>, buf: &mut bytes::BytesMut) {
        /// `Frame.msg`.
        const FRAME_MSG: u32 = 6;
        append_frame_of(buf, FRAME_MSG, msg.encoded_len(), |dst| msg.encode_raw(dst));
    }

    /// Appends a `Frame` holding the publish `p` to `buf` as one encoded `frames` record: the
    /// same bytes as [`Batch::encode_frame`] of that frame, written from borrowed fields (an
    /// adapter encodes a publish this way where the application hands it over).
    pub fn encode_pub(p: &PubRef<'_>, buf: &mut bytes::BytesMut) {
        /// `Frame.pub`.
        const FRAME_PUB: u32 = 5;
        append_frame_of(buf, FRAME_PUB, p.encoded_len(), |dst| p.encode_raw(dst));
    }

    /// Appends `frame` to `buf` as one encoded `frames` record, for [`Batch::encoded`].
    pub fn encode_frame(frame: &Frame, buf: &mut bytes::BytesMut) {
        let len = prost::Message::encoded_len(frame);
        let total = key_len(1) + encoded_len_varint(len as u64) + len;
        append_exact(buf, total, |dst| {
            put_key_ld(1, dst);
            put_varint(len as u64, dst);
            prost::Message::encode_raw(frame, dst);
        });
    }
}

/// The frames of an encoded `Batch`, decoded one at a time from its bytes: no vector of
/// frames is built (each `Frame` is moved once, to whoever takes it), and each frame's fields
/// are slices of `buf`, as in [`Batch`]'s decoding. Fields other than `frames` are skipped.
/// After an error the iterator ends: a batch that fails to decode part way has no more
/// frames to offer.
#[derive(Debug, Default)]
pub struct BatchFrames {
    /// The frames not read yet: a suffix of `whole`.
    buf: Bytes,
    /// The whole batch, which publishes read in place ([`BatchFrames::next_view`]) borrow.
    whole: Bytes,
}

impl BatchFrames {
    /// The frames of the encoded batch `buf`.
    pub fn new(buf: Bytes) -> Self {
        BatchFrames {
            whole: buf.clone(),
            buf,
        }
    }

    /// Decodes the next frame into `frame` (whatever it held is dropped); `false` at the end
    /// of the batch. Decoding in place spares the moves of a ~170-byte `Frame` through
    /// `Option`s and `Result`s that [`Iterator::next`] costs, on every message. After an
    /// error the batch has no more frames.
    pub fn next_into(&mut self, frame: &mut Frame) -> Result<bool, DecodeError> {
        next_frame(&mut self.buf, frame)
    }
}

/// [`BatchFrames::next_into`] on the unread frames `buf`; empties `buf` after an error.
fn next_frame(buf: &mut Bytes, frame: &mut Frame) -> Result<bool, DecodeError> {
    frame.kind = None;
    let decoded = decode_frame(buf, frame);
    if decoded.is_err() {
        *buf = Bytes::new();
    }
    decoded
}

fn decode_frame(buf: &mut Bytes, frame: &mut Frame) -> Result<bool, DecodeError> {
    while buf.has_remaining() {
        let (tag, wire_type) = prost::encoding::decode_key(buf)?;
        if tag != 1 {
            skip_field(wire_type, tag, buf, DecodeContext::default())?;
            continue;
        }
        // As `repeated` fields are decoded (the length bounds the merge; no `Take`).
        message::merge(wire_type, frame, buf, DecodeContext::default())?;
        return Ok(true);
    }
    Ok(false)
}

impl Iterator for BatchFrames {
    type Item = Result<Frame, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut frame = Frame::default();
        match self.next_into(&mut frame) {
            Ok(true) => Some(Ok(frame)),
            Ok(false) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Appends one `frames` record whose `Frame` holds, in its field `kind`, a message of `len`
/// bytes that `write` encodes: the record's key and the two lengths, then the message.
fn append_frame_of(
    buf: &mut bytes::BytesMut,
    kind: u32,
    len: usize,
    write: impl FnOnce(&mut &mut [u8]),
) {
    let frame_len = key_len(kind) + encoded_len_varint(len as u64) + len;
    let total = key_len(1) + encoded_len_varint(frame_len as u64) + frame_len;
    append_exact(buf, total, |dst| {
        put_key_ld(1, dst);
        put_varint(frame_len as u64, dst);
        put_key_ld(kind, dst);
        put_varint(len as u64, dst);
        write(dst);
    });
}

/// Appends the `len` bytes `write` puts into a slice of exactly that size: each write is a
/// plain store, where `BytesMut`'s own `BufMut` checks its capacity (and may grow) at every
/// varint byte and field. `len` comes from `encoded_len`, which prost's encoders agree with
/// (the tests compare both against the `.proto`'s encoding).
fn append_exact(buf: &mut bytes::BytesMut, len: usize, write: impl FnOnce(&mut &mut [u8])) {
    let start = buf.len();
    buf.resize(start + len, 0);
    let mut dst = &mut buf[start..];
    write(&mut dst);
    debug_assert!(
        dst.is_empty(),
        "encoded_len is larger than what was written"
    );
}

/// At most this many frames are reserved up front; a larger batch grows as usual.
const MAX_PRESIZED_FRAMES: usize = 4096;

/// How many `frames` records follow, counting the one whose key was just read: `chunk` starts
/// at that record's length. Reads only keys and lengths, and stops at anything else or at the
/// end of `chunk`; only used to size the vector, so a wrong count costs a reallocation, never
/// a wrong decode.
fn frames_ahead(mut chunk: &[u8]) -> usize {
    let mut n = 0;
    while n < MAX_PRESIZED_FRAMES {
        let Ok(len) = decode_varint(&mut chunk) else {
            break;
        };
        n += 1;
        match usize::try_from(len).ok().and_then(|len| chunk.get(len..)) {
            Some([0x0a, next @ ..]) => chunk = next,
            _ => break,
        }
    }
    n.max(1)
}

/// A message header (`nexus.v1.Header`), e.g. `traceparent`.
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct Header {
    pub key: ByteString,
    pub value: ByteString,
}

/// Client -> gateway: publish (`nexus.v1.Pub`).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Pub {
    pub subject: ByteString,
    pub reply_to: ByteString,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    /// 16-byte ULID; the gateway assigns one when empty.
    pub id: Bytes,
    pub ack_id: u64,
}

/// Gateway -> client: a delivery for subscription `sid` (`nexus.v1.Msg`).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Msg {
    pub sid: u64,
    pub subject: ByteString,
    pub reply_to: ByteString,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    pub id: Bytes,
    /// For requests: milliseconds left before the requester gives up.
    pub deadline_ms: u32,
}

/// Client -> gateway: a request (`nexus.v1.Req`).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Req {
    pub req_id: u64,
    pub subject: ByteString,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    /// 0 means the gateway default (request_timeout).
    pub timeout_ms: u32,
    pub id: Bytes,
}

/// Both directions: the answer to a request (`nexus.v1.Reply`).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Reply {
    pub req_id: u64,
    pub reply_to: ByteString,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    pub error: Option<Error>,
}

/// `string` fields as [`ByteString`], with proto3's rule that an empty string is not sent.
mod text {
    use super::*;

    pub(super) fn encode(tag: u32, value: &ByteString, buf: &mut impl BufMut) {
        if !value.is_empty() {
            put_key_ld(tag, buf);
            put_varint(value.len() as u64, buf);
            buf.put_slice(value.as_bytes());
        }
    }

    pub(super) fn encoded_len(tag: u32, value: &ByteString) -> usize {
        if value.is_empty() {
            0
        } else {
            key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
        }
    }

    /// Takes the field's bytes out of `buf` without copying (when `buf` is backed by `Bytes`
    /// or `BytesMut`) and checks they are UTF-8.
    pub(super) fn merge(
        wire_type: WireType,
        value: &mut ByteString,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut raw = Bytes::new();
        pbytes::merge(wire_type, &mut raw, buf, ctx)?;
        *value = ByteString::try_from(raw).map_err(|_| {
            #[allow(deprecated)] // prost keeps its error kinds private
            DecodeError::new("invalid string value: data is not UTF-8 encoded")
        })?;
        Ok(())
    }

    /// Header keys every message may carry, decoded as static strings: comparing a dozen
    /// bytes costs less than the slice of the receive buffer (an atomic increment, and a
    /// decrement when it is dropped) a decoded key otherwise takes.
    pub(super) const KNOWN_KEYS: [&str; 2] = ["traceparent", crate::encoding::HEADER];

    /// [`merge`] for a header key: a [`KNOWN_KEYS`] key (as written, lower case) becomes a
    /// static string; any other is taken as [`merge`] takes it.
    pub(super) fn merge_key(
        wire_type: WireType,
        value: &mut ByteString,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if wire_type == WireType::LengthDelimited {
            let chunk = buf.chunk();
            let mut rest = chunk;
            if let Ok(len) = decode_varint(&mut rest)
                && let Some(key) = usize::try_from(len)
                    .ok()
                    .and_then(|len| rest.get(..len))
                    .and_then(|raw| KNOWN_KEYS.into_iter().find(|k| k.as_bytes() == raw))
            {
                buf.advance(chunk.len() - rest.len() + key.len());
                *value = ByteString::from_static(key);
                return Ok(());
            }
        }
        merge(wire_type, value, buf, ctx)
    }
}

/// A varint, the one- and two-byte ones (keys, most lengths) written inline: prost's
/// `encode_varint` loops over the bytes with a capacity check at each.
#[inline(always)]
fn put_varint(value: u64, buf: &mut impl BufMut) {
    if value < 0x80 {
        buf.put_u8(value as u8);
    } else if value < 0x4000 {
        buf.put_slice(&[(value as u8) | 0x80, (value >> 7) as u8]);
    } else {
        encode_varint(value, buf);
    }
}

/// The key of length-delimited field `tag`.
#[inline(always)]
fn put_key_ld(tag: u32, buf: &mut impl BufMut) {
    put_varint(u64::from(tag) << 3 | WireType::LengthDelimited as u64, buf);
}

/// Written from the slice: prost's `bytes::encode` clones the `Bytes` to write it, two
/// atomic reference-count updates per field on a buffer other threads share.
fn encode_bytes(tag: u32, value: &[u8], buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_key_ld(tag, buf);
        put_varint(value.len() as u64, buf);
        buf.put_slice(value);
    }
}

fn bytes_len(tag: u32, value: &[u8]) -> usize {
    if value.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

fn encode_u64(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        put_varint(u64::from(tag) << 3 | WireType::Varint as u64, buf);
        put_varint(value, buf);
    }
}

fn u64_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        uint64::encoded_len(tag, &value)
    }
}

fn encode_u32(tag: u32, value: u32, buf: &mut impl BufMut) {
    encode_u64(tag, u64::from(value), buf);
}

fn u32_len(tag: u32, value: u32) -> usize {
    if value == 0 {
        0
    } else {
        uint32::encoded_len(tag, &value)
    }
}

impl prost::Message for Batch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        message::encode_repeated(1, &self.frames, buf);
        buf.put_slice(&self.encoded);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                if self.frames.capacity() == 0 {
                    self.frames.reserve_exact(frames_ahead(buf.chunk()));
                }
                message::merge_repeated(wire_type, &mut self.frames, buf, ctx)
            }
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(1, &self.frames) + self.encoded.len()
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.encoded.clear();
    }
}

impl prost::Message for Header {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        text::encode(1, &self.key, buf);
        text::encode(2, &self.value, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => text::merge_key(wire_type, &mut self.key, buf, ctx),
            2 => text::merge(wire_type, &mut self.value, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        text::encoded_len(1, &self.key) + text::encoded_len(2, &self.value)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl prost::Message for Pub {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        text::encode(1, &self.subject, buf);
        text::encode(2, &self.reply_to, buf);
        message::encode_repeated(3, &self.headers, buf);
        encode_bytes(4, &self.payload, buf);
        encode_bytes(5, &self.id, buf);
        encode_u64(6, self.ack_id, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => text::merge(wire_type, &mut self.subject, buf, ctx),
            2 => text::merge(wire_type, &mut self.reply_to, buf, ctx),
            3 => message::merge_repeated(wire_type, &mut self.headers, buf, ctx),
            4 => pbytes::merge(wire_type, &mut self.payload, buf, ctx),
            5 => pbytes::merge(wire_type, &mut self.id, buf, ctx),
            6 => uint64::merge(wire_type, &mut self.ack_id, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        text::encoded_len(1, &self.subject)
            + text::encoded_len(2, &self.reply_to)
            + message::encoded_len_repeated(3, &self.headers)
            + bytes_len(4, &self.payload)
            + bytes_len(5, &self.id)
            + u64_len(6, self.ack_id)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A `Msg` whose fields are borrowed, for encoding one without building it: a gateway
/// delivering a publish to a subscriber writes the `Msg` straight from the publish's fields
/// ([`Batch::encode_msg`]), with no reference counts taken and no headers vector copied.
#[derive(Clone, Copy, Debug)]
pub struct MsgRef<'a> {
    pub sid: u64,
    pub subject: &'a str,
    pub reply_to: &'a str,
    pub headers: &'a [Header],
    pub payload: &'a [u8],
    pub id: &'a [u8],
    pub deadline_ms: u32,
}

impl MsgRef<'_> {
    pub fn encoded_len(&self) -> usize {
        u64_len(1, self.sid)
            + str_len(2, self.subject)
            + str_len(3, self.reply_to)
            + message::encoded_len_repeated(4, self.headers)
            + bytes_len(5, self.payload)
            + bytes_len(6, self.id)
            + u32_len(7, self.deadline_ms)
    }

    pub fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_u64(1, self.sid, buf);
        encode_bytes(2, self.subject.as_bytes(), buf);
        encode_bytes(3, self.reply_to.as_bytes(), buf);
        message::encode_repeated(4, self.headers, buf);
        encode_bytes(5, self.payload, buf);
        encode_bytes(6, self.id, buf);
        encode_u32(7, self.deadline_ms, buf);
    }
}

/// A `Pub` whose fields are borrowed, for encoding one without building it
/// ([`Batch::encode_pub`]).
#[derive(Clone, Copy, Debug)]
pub struct PubRef<'a> {
    pub subject: &'a str,
    pub reply_to: &'a str,
    pub headers: &'a [Header],
    pub payload: &'a [u8],
    pub id: &'a [u8],
    pub ack_id: u64,
}

impl PubRef<'_> {
    pub fn encoded_len(&self) -> usize {
        str_len(1, self.subject)
            + str_len(2, self.reply_to)
            + message::encoded_len_repeated(3, self.headers)
            + bytes_len(4, self.payload)
            + bytes_len(5, self.id)
            + u64_len(6, self.ack_id)
    }

    pub fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_bytes(1, self.subject.as_bytes(), buf);
        encode_bytes(2, self.reply_to.as_bytes(), buf);
        message::encode_repeated(3, self.headers, buf);
        encode_bytes(4, self.payload, buf);
        encode_bytes(5, self.id, buf);
        encode_u64(6, self.ack_id, buf);
    }
}

fn str_len(tag: u32, value: &str) -> usize {
    bytes_len(tag, value.as_bytes())
}

impl Msg {
    pub fn as_ref(&self) -> MsgRef<'_> {
        MsgRef {
            sid: self.sid,
            subject: &self.subject,
            reply_to: &self.reply_to,
            headers: &self.headers,
            payload: &self.payload,
            id: &self.id,
            deadline_ms: self.deadline_ms,
        }
    }
}

impl prost::Message for Msg {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.as_ref().encode_raw(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => uint64::merge(wire_type, &mut self.sid, buf, ctx),
            2 => text::merge(wire_type, &mut self.subject, buf, ctx),
            3 => text::merge(wire_type, &mut self.reply_to, buf, ctx),
            4 => message::merge_repeated(wire_type, &mut self.headers, buf, ctx),
            5 => pbytes::merge(wire_type, &mut self.payload, buf, ctx),
            6 => pbytes::merge(wire_type, &mut self.id, buf, ctx),
            7 => uint32::merge(wire_type, &mut self.deadline_ms, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.as_ref().encoded_len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl prost::Message for Req {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_u64(1, self.req_id, buf);
        text::encode(2, &self.subject, buf);
        message::encode_repeated(3, &self.headers, buf);
        encode_bytes(4, &self.payload, buf);
        encode_u32(5, self.timeout_ms, buf);
        encode_bytes(6, &self.id, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => uint64::merge(wire_type, &mut self.req_id, buf, ctx),
            2 => text::merge(wire_type, &mut self.subject, buf, ctx),
            3 => message::merge_repeated(wire_type, &mut self.headers, buf, ctx),
            4 => pbytes::merge(wire_type, &mut self.payload, buf, ctx),
            5 => uint32::merge(wire_type, &mut self.timeout_ms, buf, ctx),
            6 => pbytes::merge(wire_type, &mut self.id, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        u64_len(1, self.req_id)
            + text::encoded_len(2, &self.subject)
            + message::encoded_len_repeated(3, &self.headers)
            + bytes_len(4, &self.payload)
            + u32_len(5, self.timeout_ms)
            + bytes_len(6, &self.id)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl prost::Message for Reply {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_u64(1, self.req_id, buf);
        text::encode(2, &self.reply_to, buf);
        message::encode_repeated(3, &self.headers, buf);
        encode_bytes(4, &self.payload, buf);
        if let Some(e) = &self.error {
            message::encode(5, e, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => uint64::merge(wire_type, &mut self.req_id, buf, ctx),
            2 => text::merge(wire_type, &mut self.reply_to, buf, ctx),
            3 => message::merge_repeated(wire_type, &mut self.headers, buf, ctx),
            4 => pbytes::merge(wire_type, &mut self.payload, buf, ctx),
            5 => message::merge(
                wire_type,
                self.error.get_or_insert_with(Error::default),
                buf,
                ctx,
            ),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        u64_len(1, self.req_id)
            + text::encoded_len(2, &self.reply_to)
            + message::encoded_len_repeated(3, &self.headers)
            + bytes_len(4, &self.payload)
            + self
                .error
                .as_ref()
                .map_or(0, |e| message::encoded_len(5, e))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests;
