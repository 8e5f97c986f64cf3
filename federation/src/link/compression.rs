//! Compression on links (docs/federation.md, "Compression"): batches of data-stream frames
//! compressed as one `CompressedFrames`, and payload encodings a peer does not accept.
//!
//! Each side lists in its `LinkHello` the payload encodings it accepts (`encodings`) and the
//! codecs it can read in `CompressedFrames` (`batch_codecs`). Per direction, the sender:
//! - compresses each coalesced write of its data stream (up to [`super::WRITE_BATCH`] bytes of
//!   frames) with its configured link codec when the receiver can read it and the batch is at
//!   least [`MIN_BATCH`] bytes, and sends it plain when compression saves less than 1/16;
//! - decodes, before sending, a compressed payload (header `nexus-encoding`) whose codec the
//!   receiver does not accept (an older gateway); payloads it accepts cross unchanged.
//!
//! One batch rather than one message is compressed: a batch holds many small frames whose
//! subjects, headers and field keys repeat, which per-message compression cannot exploit, and
//! it costs one codec call per write instead of one per message. Payloads the publishing
//! adapter already compressed do not shrink again; such a batch is sent plain after the
//! attempt (bounded cost: one codec pass over at most 64 KiB).
//!
//! The receiver decompresses a batch bounded by what it declares and by [`MAX_BATCH_RAW`],
//! and reads the frames inside as if they had arrived one by one; a corrupt or oversized
//! batch ends the link with an error naming the problem.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};
use nexus_proto::encoding::{self, Codec, CodecSet};
use nexus_proto::v1::{CompressedFrames, LinkFrame, link_frame::Kind};
use prometheus_client::metrics::counter::Counter;
use prost::Message;

use super::frame_size::{MAX_FRAME, WRITE_BATCH};

/// Batches smaller than this are sent plain.
pub const MIN_BATCH: usize = 512;
/// Largest decompressed batch accepted: one frame of the largest size plus a full batch.
pub const MAX_BATCH_RAW: usize = MAX_FRAME + WRITE_BATCH;
/// zstd level for link batches: level 1 keeps a link's writer at several hundred MB/s.
pub const LINK_ZSTD_LEVEL: i32 = 1;

/// How this side compresses its links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkCompression {
    /// Codec for batches on links to other regions (`None`: plain).
    pub federation: Option<Codec>,
    /// Codec for batches on cluster links (gateways of the same region).
    pub cluster: Option<Codec>,
}

impl Default for LinkCompression {
    /// zstd between regions, where bandwidth is scarce and a round trip long; plain inside
    /// a region, where CPU is the scarcer resource.
    fn default() -> Self {
        Self {
            federation: Some(Codec::Zstd),
            cluster: None,
        }
    }
}

/// Parses `zstd`, `lz4` or `off`/`none`.
pub fn parse_codec(s: &str) -> Result<Option<Codec>, String> {
    match s {
        "off" | "none" => Ok(None),
        other => Codec::from_name(other)
            .map(Some)
            .ok_or_else(|| format!("{other:?} is not a link codec (zstd, lz4 or off)")),
    }
}

/// What the data writer of one link does, settled from the peer's hello.
#[derive(Debug, Clone)]
pub struct WriterCodecs {
    /// Codec for batches, when the peer reads it.
    pub batch: Option<Codec>,
    /// Payload encodings the peer accepts.
    pub peer_payloads: CodecSet,
    pub counters: Counters,
}

/// Byte counters of one direction of a link: raw (frames as encoded) and wire (as sent).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub raw: Counter,
    pub wire: Counter,
    pub batches: Counter,
    /// Payloads decoded for a peer that does not accept their codec.
    pub payloads_decoded: Counter,
}

/// Decodes the compressed payloads of `frame` that the peer does not accept. An undecodable
/// payload is left as it is (the receiving gateway refuses it, and counts it, like any
/// corrupt payload).
pub fn fit_payloads(frame: &mut LinkFrame, accept: CodecSet, counters: &Counters) {
    if accept == CodecSet::ALL {
        return;
    }
    let fit = |headers: &mut Vec<nexus_proto::v1::Header>, payload: &mut Bytes| {
        if let Ok(Some(_)) = encoding::decode_unless_accepted(headers, payload, accept, MAX_FRAME) {
            counters.payloads_decoded.inc();
        }
    };
    match &mut frame.kind {
        Some(Kind::Forward(f)) => fit(&mut f.headers, &mut f.payload),
        Some(Kind::Spooled(s)) => {
            if let Some(f) = &mut s.forward {
                fit(&mut f.headers, &mut f.payload)
            }
        }
        Some(Kind::Request(r)) => fit(&mut r.headers, &mut r.payload),
        Some(Kind::Reply(r)) => fit(&mut r.headers, &mut r.payload),
        Some(Kind::ReplicaAppend(a)) => {
            for s in &mut a.entries {
                if let Some(f) = &mut s.forward {
                    fit(&mut f.headers, &mut f.payload)
                }
            }
        }
        _ => {}
    }
}

/// Turns a buffer of length-delimited frames into what to write: itself, or one
/// length-delimited `CompressedFrames` when that is worth it (written into `out`).
pub fn pack<'a>(
    raw: &'a [u8],
    codec: Option<Codec>,
    out: &'a mut Vec<u8>,
    counters: &Counters,
) -> &'a [u8] {
    counters.raw.inc_by(raw.len() as u64);
    let Some(codec) = codec.filter(|_| raw.len() >= MIN_BATCH) else {
        counters.wire.inc_by(raw.len() as u64);
        return raw;
    };
    let data = encoding::compress(codec, raw, LINK_ZSTD_LEVEL);
    if data.len() + data.len() / 16 >= raw.len() {
        counters.wire.inc_by(raw.len() as u64);
        return raw;
    }
    out.clear();
    LinkFrame {
        kind: Some(Kind::Compressed(CompressedFrames {
            codec: codec.name().to_owned(),
            raw_len: raw.len() as u32,
            data: Bytes::from(data),
        })),
    }
    .encode_length_delimited(out)
    .expect("a Vec grows as needed");
    counters.wire.inc_by(out.len() as u64);
    counters.batches.inc();
    &out[..]
}

/// Reads the data stream's frames, opening `CompressedFrames` batches.
#[derive(Default)]
pub struct Unbatcher {
    pending: VecDeque<LinkFrame>,
}

impl Unbatcher {
    /// The next frame held from an opened batch.
    pub fn pop(&mut self) -> Option<LinkFrame> {
        self.pending.pop_front()
    }

    /// Opens a batch: its frames become [`Unbatcher::pop`]'s. `Err` names the problem.
    pub fn open(
        &mut self,
        batch: CompressedFrames,
        accept: CodecSet,
        counters: &Counters,
    ) -> Result<(), String> {
        let codec = Codec::from_name(&batch.codec)
            .filter(|c| accept.contains(*c))
            .ok_or_else(|| {
                format!(
                    "compressed batch uses codec {:?}, which this side did not offer",
                    batch.codec
                )
            })?;
        let max = (batch.raw_len as usize).min(MAX_BATCH_RAW);
        let raw = encoding::decompress(codec, &batch.data, max)
            .map_err(|e| format!("compressed batch: {e}"))?;
        if raw.len() != batch.raw_len as usize {
            return Err(format!(
                "compressed batch declared {} bytes but holds {}",
                batch.raw_len,
                raw.len()
            ));
        }
        counters.wire.inc_by(batch.data.len() as u64);
        counters.raw.inc_by(raw.len() as u64);
        counters.batches.inc();
        let mut raw = Bytes::from(raw);
        while raw.has_remaining() {
            let frame = LinkFrame::decode_length_delimited(&mut raw)
                .map_err(|e| format!("malformed frame in a compressed batch: {e}"))?;
            if matches!(frame.kind, Some(Kind::Compressed(_))) {
                return Err("a compressed batch inside a compressed batch".into());
            }
            self.pending.push_back(frame);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_proto::v1::Forward;

    fn forward(i: usize) -> LinkFrame {
        LinkFrame {
            kind: Some(Kind::Forward(Forward {
                subject: format!("orders.eu.{}", i % 7),
                payload: Bytes::from(format!(
                    r#"{{"order":{i},"status":"created","items":[1,2,3]}}"#
                )),
                origin_region: "eu".into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_batch_round_trips_smaller() {
        let frames: Vec<LinkFrame> = (0..200).map(forward).collect();
        let mut raw = Vec::new();
        for f in &frames {
            f.encode_length_delimited(&mut raw).unwrap();
        }
        let counters = Counters::default();
        for codec in Codec::ALL {
            let mut out = Vec::new();
            let wire = pack(&raw, Some(codec), &mut out, &counters).to_vec();
            assert!(
                wire.len() * 3 < raw.len(),
                "{codec}: {} of {}",
                wire.len(),
                raw.len()
            );
            let mut slice = &wire[..];
            let batch = match LinkFrame::decode_length_delimited(&mut slice).unwrap().kind {
                Some(Kind::Compressed(b)) => b,
                other => panic!("{other:?}"),
            };
            let mut u = Unbatcher::default();
            u.open(batch.clone(), CodecSet::ALL, &counters).unwrap();
            let got: Vec<LinkFrame> = std::iter::from_fn(|| u.pop()).collect();
            assert_eq!(got, frames);
            // A lie about the size, an unoffered codec, a corrupt body: errors.
            let mut lie = batch.clone();
            lie.raw_len -= 1;
            assert!(u.open(lie, CodecSet::ALL, &counters).is_err());
            assert!(
                u.open(batch.clone(), CodecSet::NONE, &counters)
                    .unwrap_err()
                    .contains("did not offer")
            );
            let mut bad = batch.data.to_vec();
            bad.truncate(bad.len() / 2);
            let bad = CompressedFrames {
                data: Bytes::from(bad),
                ..batch
            };
            assert!(u.open(bad, CodecSet::ALL, &counters).is_err());
        }
        // Small or incompressible: sent as is.
        let mut out = Vec::new();
        assert_eq!(
            pack(&raw[..100], Some(Codec::Zstd), &mut out, &counters),
            &raw[..100]
        );
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(
            pack(&noise, Some(Codec::Zstd), &mut out, &counters),
            &noise[..]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
        ))]

        /// Arbitrary bytes claimed to be a compressed batch, in either codec and with any
        /// declared size: an error or frames, never a panic or an allocation of the claim.
        #[test]
        fn arbitrary_batches_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            raw_len in 0u32..(1 << 20),
            lz4 in proptest::prelude::any::<bool>(),
        ) {
            let codec = if lz4 { Codec::Lz4 } else { Codec::Zstd };
            let mut u = Unbatcher::default();
            let _ = u.open(
                CompressedFrames { codec: codec.name().into(), raw_len, data: Bytes::from(data) },
                CodecSet::ALL,
                &Counters::default(),
            );
        }
    }

    #[test]
    fn payloads_are_decoded_for_a_peer_that_lacks_the_codec() {
        let plain = Bytes::from(r#"{"k":"a fairly repetitive value"}"#.repeat(64));
        let mut headers = Vec::new();
        let mut payload = plain.clone();
        assert!(encoding::Policy::default().encode(CodecSet::ALL, &mut headers, &mut payload));
        let mut f = LinkFrame {
            kind: Some(Kind::Forward(Forward {
                subject: "a".into(),
                headers,
                payload,
                ..Default::default()
            })),
        };
        let counters = Counters::default();
        let mut same = f.clone();
        fit_payloads(&mut same, CodecSet::ALL, &counters);
        assert_eq!(same, f);
        fit_payloads(&mut f, CodecSet::NONE.with(Codec::Lz4), &counters);
        let Some(Kind::Forward(f)) = f.kind else {
            unreachable!()
        };
        assert_eq!(f.payload, plain);
        assert!(f.headers.is_empty());
        assert_eq!(counters.payloads_decoded.get(), 1);
    }
}
