//! Payload compression on the session (docs/protocol.md §9.2), transparent to applications.
//!
//! The adapter lists the codecs it decodes in its `Hello` (zstd and lz4); the gateway lists
//! the codecs it accepts in its `Welcome`. Outgoing `Pub`, `Req`, `Reply` and `StreamData`
//! payloads of at least the threshold (1 KiB by default) are compressed by the writer, with
//! the configured codec when the current gateway accepts it, and marked with the
//! `nexus-encoding` header; a payload that would not shrink is sent plain. Incoming encoded
//! payloads are decompressed (bounded by the gateway's `max_payload`) and the header removed
//! before the application sees them.

use std::sync::atomic::{AtomicU8, Ordering};

use nexus_proto::encoding::{self, CodecSet, Policy};
use nexus_proto::v1 as pb;
use pb::frame::Kind;

pub use nexus_proto::encoding::Codec;

/// Largest payload decoded when the gateway did not say (`max_payload` 0).
const FALLBACK_MAX: usize = 64 << 20;

/// The codecs this adapter decodes, listed in its `Hello`.
pub(crate) fn hello_encodings() -> Vec<String> {
    CodecSet::ALL.names()
}

/// What the current session's gateway accepts, set from each `Welcome`.
#[derive(Debug, Default)]
pub(crate) struct Negotiated(AtomicU8);

impl Negotiated {
    pub(crate) fn set(&self, welcome: &pb::Welcome) {
        self.0.store(
            CodecSet::from_names(&welcome.encodings).bits(),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn get(&self) -> CodecSet {
        CodecSet::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Compresses the payload of an outgoing frame when `policy` says so.
pub(crate) fn encode_frame(frame: &mut pb::Frame, policy: &Policy, accepted: CodecSet) {
    if policy.codec.is_none() || accepted.is_empty() {
        return;
    }
    let (headers, payload) = match &mut frame.kind {
        Some(Kind::Pub(p)) => (&mut p.headers, &mut p.payload),
        Some(Kind::Req(r)) => (&mut r.headers, &mut r.payload),
        Some(Kind::Reply(r)) if r.error.is_none() => (&mut r.headers, &mut r.payload),
        Some(Kind::StreamData(d)) => (&mut d.headers, &mut d.payload),
        _ => return,
    };
    policy.encode(accepted, headers, payload);
}

/// Decompresses an incoming payload in place; `Err` names the problem.
pub(crate) fn decode(
    headers: &mut Vec<pb::Header>,
    payload: &mut bytes::Bytes,
    max_payload: u64,
) -> Result<(), encoding::DecodeError> {
    let max = match max_payload {
        0 => FALLBACK_MAX,
        n => usize::try_from(n).unwrap_or(FALLBACK_MAX),
    };
    encoding::decode_unless_accepted(headers, payload, CodecSet::NONE, max).map(|_| ())
}
