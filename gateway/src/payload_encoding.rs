//! Compressed payloads at the gateway (docs/protocol.md §9.2): what it checks when a session
//! hands it an encoded payload, and how it delivers one to a session that cannot decode it.
//!
//! The gateway never compresses and, on the way through, never copies: an encoded payload
//! (header `nexus-encoding`) is routed, forwarded to other regions and spooled as the
//! publisher sent it. On the way in it checks only the payload's header (a known codec, a
//! declared decompressed size within `limits.max_payload`), which costs no decompression; it
//! decompresses on the way in only when the subject has an enforced schema to check. On the
//! way out, a session that did not list the codec in its `Hello` gets the payload decoded (and
//! the header removed) by its own outbound stream, so the work is done by the receiving
//! session's task, off the publisher's path, and only for such sessions. A payload that turns
//! out corrupt there is not delivered to that session (a `Reply` becomes a `SERVICE_ERROR`),
//! and is counted and logged.

use std::sync::OnceLock;

use bytes::Bytes;
use nexus_proto::encoding::{self, Codec, CodecSet, DecodeError};
use nexus_proto::v1::{self, ErrorCode, Frame, Header, frame::Kind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::Direction;

crate::label_enum! {
    /// A payload codec, as a label.
    CodecLabel { Zstd => "zstd", Lz4 => "lz4" }
}

crate::label_enum! {
    /// The size of an encoded payload as sent (`wire`) or once decompressed (`plain`).
    Form { Wire => "wire", Plain => "plain" }
}

crate::label_enum! {
    /// Why the gateway decompressed a payload.
    DecodeReason { Receiver => "receiver", Schema => "schema" }
}

fn label(codec: Codec) -> CodecLabel {
    match codec {
        Codec::Zstd => CodecLabel::Zstd,
        Codec::Lz4 => CodecLabel::Lz4,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EncodedLabels {
    pub direction: Direction,
    pub codec: CodecLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EncodedBytesLabels {
    pub direction: Direction,
    pub codec: CodecLabel,
    pub form: Form,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecodedLabels {
    pub codec: CodecLabel,
    pub reason: DecodeReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodecOnly {
    pub codec: CodecLabel,
}

/// The gateway's compression series. Cloning shares the counters.
#[derive(Clone, Debug, Default)]
pub struct EncodingMetrics {
    /// Encoded payloads received from sessions (`in`) and delivered to sessions still encoded
    /// (`out`).
    pub messages: Family<EncodedLabels, Counter>,
    /// Their bytes as sent (`wire`) and decompressed (`plain`, as declared by the payload).
    pub bytes: Family<EncodedBytesLabels, Counter>,
    /// Payloads the gateway decompressed, by why.
    pub decoded: Family<DecodedLabels, Counter>,
    /// Encoded payloads the gateway refused or could not decode for a receiver.
    pub errors: Family<CodecOnly, Counter>,
}

impl EncodingMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "payload_encoded_messages",
            "Compressed payloads received from sessions (in) and delivered to sessions compressed (out), by codec",
            self.messages.clone(),
        );
        registry.register(
            "payload_encoded_bytes",
            "Bytes of compressed payloads as sent on the wire (form=wire) and decompressed (form=plain), by direction and codec",
            self.bytes.clone(),
        );
        registry.register(
            "payload_decoded",
            "Compressed payloads the gateway decompressed: for a receiver that does not accept the codec, or to check a schema",
            self.decoded.clone(),
        );
        registry.register(
            "payload_decode_errors",
            "Compressed payloads refused (bad header, unknown codec, too large) or found corrupt when decoding for a receiver",
            self.errors.clone(),
        );
    }

    fn encoded(&self, direction: Direction, codec: Codec, wire: usize, plain: u64) {
        let codec = label(codec);
        self.messages
            .get_or_create(&EncodedLabels { direction, codec })
            .inc();
        self.bytes
            .get_or_create(&EncodedBytesLabels {
                direction,
                codec,
                form: Form::Wire,
            })
            .inc_by(wire as u64);
        self.bytes
            .get_or_create(&EncodedBytesLabels {
                direction,
                codec,
                form: Form::Plain,
            })
            .inc_by(plain);
    }

    fn decoded(&self, codec: Codec, reason: DecodeReason) {
        self.decoded
            .get_or_create(&DecodedLabels {
                codec: label(codec),
                reason,
            })
            .inc();
    }

    fn error(&self, codec: Option<Codec>) {
        self.errors
            .get_or_create(&CodecOnly {
                codec: label(codec.unwrap_or(Codec::Zstd)),
            })
            .inc();
    }
}

/// The codecs this gateway accepts from sessions and link peers.
pub fn accepted() -> CodecSet {
    CodecSet::ALL
}

/// Checks the encoding of a payload a session (or unary caller) handed in, without
/// decompressing it: `Ok(None)` for a plain payload, `Ok(Some(codec))` for a well-formed
/// encoded one, or the protocol error to refuse it with (`INVALID` for an unknown codec or a
/// malformed header, `LIMIT` when it declares more than `max` bytes).
pub fn check_in(
    headers: &[Header],
    payload: &[u8],
    max: usize,
    metrics: &EncodingMetrics,
) -> Result<Option<Codec>, (ErrorCode, String)> {
    let codec = match encoding::find(headers) {
        None => return Ok(None),
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            metrics.error(None);
            return Err((ErrorCode::Invalid, e.to_string()));
        }
    };
    match encoding::check(codec, payload, max) {
        Ok(plain) => {
            metrics.encoded(Direction::In, codec, payload.len(), plain);
            Ok(Some(codec))
        }
        Err(e) => {
            metrics.error(Some(codec));
            let code = if e.is_limit() {
                ErrorCode::Limit
            } else {
                ErrorCode::Invalid
            };
            Err((code, e.to_string()))
        }
    }
}

/// The plain payload, for a schema check: the payload itself when it is not encoded,
/// otherwise its bounded decompression.
pub fn plain_for_check<'a>(
    codec: Option<Codec>,
    payload: &'a [u8],
    max: usize,
    metrics: &EncodingMetrics,
) -> Result<std::borrow::Cow<'a, [u8]>, String> {
    let Some(codec) = codec else {
        return Ok(std::borrow::Cow::Borrowed(payload));
    };
    metrics.decoded(codec, DecodeReason::Schema);
    encoding::decompress(codec, payload, max)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| {
            metrics.error(Some(codec));
            e.to_string()
        })
}

/// What a session's outbound stream needs to deliver encoded payloads: set once, at Hello.
#[derive(Debug)]
pub struct Receiver {
    pub accept: CodecSet,
    pub max: usize,
    pub metrics: EncodingMetrics,
    pub session: u64,
}

/// Set by the session at Hello, read by its outbound stream once per batch.
pub type ReceiverSlot = OnceLock<Receiver>;

impl Receiver {
    /// Prepares a frame for this session: counts an encoded payload it accepts, decodes one
    /// it does not. Returns false when the frame must not be delivered (its payload is
    /// corrupt); a `Reply` is turned into a `SERVICE_ERROR` instead.
    pub fn prepare(&self, frame: &mut Frame) -> bool {
        let (headers, payload) = match &mut frame.kind {
            Some(Kind::Msg(m)) => (&mut m.headers, &mut m.payload),
            Some(Kind::Reply(r)) if r.error.is_none() => (&mut r.headers, &mut r.payload),
            Some(Kind::StreamData(d)) => (&mut d.headers, &mut d.payload),
            _ => return true,
        };
        let codec = match encoding::find(headers) {
            None => return true,
            Some(Ok(c)) if self.accept.contains(c) => {
                let plain = encoding::declared_len(c, payload).unwrap_or(0);
                self.metrics
                    .encoded(Direction::Out, c, payload.len(), plain);
                return true;
            }
            Some(c) => c,
        };
        let result = codec.and_then(|c| {
            encoding::decode_unless_accepted(headers, payload, self.accept, self.max).map(|_| c)
        });
        match result {
            Ok(c) => {
                self.metrics.decoded(c, DecodeReason::Receiver);
                true
            }
            Err(e) => self.undeliverable(frame, e),
        }
    }

    fn undeliverable(&self, frame: &mut Frame, e: DecodeError) -> bool {
        let codec = match &e {
            DecodeError::TooLarge { codec, .. } | DecodeError::Corrupt { codec, .. } => {
                Some(*codec)
            }
            DecodeError::UnknownCodec(_) => None,
        };
        self.metrics.error(codec);
        tracing::warn!(session = self.session, error = %e, "a compressed payload could not be decoded for a session that does not accept its codec; not delivered");
        if let Some(Kind::Reply(r)) = &mut frame.kind {
            r.headers.clear();
            r.payload = Bytes::new();
            r.error = Some(v1::Error {
                code: ErrorCode::ServiceError as i32,
                message: format!("the reply's payload could not be decoded: {e}"),
                ref_id: r.req_id,
            });
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_proto::encoding::Policy;

    fn msg(headers: Vec<Header>, payload: Bytes) -> Frame {
        Frame {
            kind: Some(Kind::Msg(v1::Msg {
                sid: 1,
                subject: "a".into(),
                headers,
                payload,
                ..Default::default()
            })),
        }
    }

    fn parts(f: &Frame) -> (&[Header], &Bytes) {
        match &f.kind {
            Some(Kind::Msg(m)) => (&m.headers, &m.payload),
            _ => unreachable!(),
        }
    }

    #[test]
    fn receivers_get_what_they_accept() {
        let plain = Bytes::from(br#"{"k":"value value value value"}"#.repeat(100));
        let mut headers = Vec::new();
        let mut payload = plain.clone();
        assert!(Policy::default().encode(CodecSet::ALL, &mut headers, &mut payload));
        let metrics = EncodingMetrics::default();
        assert_eq!(
            check_in(&headers, &payload, plain.len(), &metrics),
            Ok(Some(Codec::Zstd))
        );
        let (code, message) = check_in(&headers, &payload, plain.len() - 1, &metrics).unwrap_err();
        assert_eq!(code, ErrorCode::Limit);
        assert!(message.contains("limits.max_payload"), "{message}");

        let modern = Receiver {
            accept: CodecSet::ALL,
            max: 1 << 20,
            metrics: metrics.clone(),
            session: 1,
        };
        let mut f = msg(headers.clone(), payload.clone());
        assert!(modern.prepare(&mut f));
        assert_eq!(parts(&f).1.as_ptr(), payload.as_ptr(), "no copy");

        let legacy = Receiver {
            accept: CodecSet::NONE,
            ..modern
        };
        let mut f = msg(headers.clone(), payload.clone());
        assert!(legacy.prepare(&mut f));
        assert_eq!(parts(&f).1, &plain);
        assert!(parts(&f).0.is_empty());

        // Corrupt: not delivered; a reply becomes an error.
        let mut bad = payload.to_vec();
        let n = bad.len();
        bad[n - 5] ^= 0xff;
        bad.truncate(n - 2);
        let mut f = msg(headers.clone(), Bytes::from(bad.clone()));
        assert!(!legacy.prepare(&mut f));
        let mut r = Frame {
            kind: Some(Kind::Reply(v1::Reply {
                req_id: 7,
                headers: headers.clone(),
                payload: Bytes::from(bad),
                ..Default::default()
            })),
        };
        assert!(legacy.prepare(&mut r));
        let Some(Kind::Reply(r)) = r.kind else {
            unreachable!()
        };
        let e = r.error.unwrap();
        assert_eq!(e.code, ErrorCode::ServiceError as i32);
        assert!(
            e.message.contains("zstd payload is corrupt"),
            "{}",
            e.message
        );
    }
}
