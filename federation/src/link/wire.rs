//! Frames on a link's QUIC streams: `LinkFrame`s, each a protobuf message behind a varint
//! length (protobuf's length-delimited encoding), read with a size limit and written with
//! coalescing on the data stream.

use nexus_proto::v1::LinkFrame;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::compression::{WriterCodecs, fit_payloads, pack};

/// Largest frame accepted from a peer: room for the largest payload a gateway can be
/// configured to accept (64 MiB) plus its envelope.
pub const MAX_FRAME: usize = 80 << 20;
/// The data writer coalesces queued frames into writes of up to this many bytes. quinn keeps
/// every write as one segment of the stream's send buffer and finds the bytes of each packet
/// it builds by scanning those segments from the oldest unacknowledged one, so one write per
/// small frame made that scan (tens of thousands of segments with a WAN round trip's worth of
/// data in flight) the sender's main cost, and under overload the link starved for CPU.
pub const WRITE_BATCH: usize = 64 << 10;

pub async fn write_frame(send: &mut quinn::SendStream, frame: &LinkFrame) -> Result<(), String> {
    send.write_all(&frame.encode_length_delimited_to_vec())
        .await
        .map_err(|e| e.to_string())
}

/// Writes the data stream: each frame taken from the queue is sent together with whatever
/// else is queued behind it (up to [`WRITE_BATCH`] bytes), in one write.
/// The batch is compressed as one `CompressedFrames` when the link negotiated a codec, and
/// payloads the peer cannot decode are decoded first ([`super::compression`]).
pub async fn data_writer(
    mut rx: mpsc::Receiver<LinkFrame>,
    mut send: quinn::SendStream,
    codecs: WriterCodecs,
) {
    let mut buf = Vec::with_capacity(WRITE_BATCH + 1024);
    let mut packed = Vec::new();
    let encode = |mut f: LinkFrame, buf: &mut Vec<u8>| {
        fit_payloads(&mut f, codecs.peer_payloads, &codecs.counters);
        f.encode_length_delimited(buf)
            .expect("a Vec grows as needed");
    };
    while let Some(frame) = rx.recv().await {
        encode(frame, &mut buf);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => encode(f, &mut buf),
                Err(_) => break,
            }
        }
        let wire = pack(&buf, codecs.batch, &mut packed, &codecs.counters);
        if send.write_all(wire).await.is_err() {
            return;
        }
        if packed.capacity() > 4 * WRITE_BATCH {
            packed = Vec::new();
        }
        buf.clear();
        if buf.capacity() > 4 * WRITE_BATCH {
            // One large frame grew it: do not keep that much per link.
            buf = Vec::with_capacity(WRITE_BATCH + 1024);
        }
    }
}

/// Reads one frame; `None` at a clean end of the stream. Generic over the reader so the
/// parser can be fuzzed without QUIC (`tests` below).
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    recv: &mut R,
) -> Result<Option<LinkFrame>, String> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let b = match recv.read_u8().await {
            Ok(b) => b,
            Err(e) if i == 0 && e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
        if i == 9 {
            return Err("malformed frame length".into());
        }
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        ));
    }
    // Grown as the bytes arrive, not allocated from the claimed length: a peer announcing
    // MAX_FRAME and sending nothing must not cost 80 MiB per stream (found by the fuzz test).
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    let read = recv
        .take(len as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    if read < len {
        return Err(format!(
            "stream ended inside a frame ({read} of {len} bytes)"
        ));
    }
    LinkFrame::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| format!("malformed frame: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads frames from `wire` until the end or an error; never panics.
    fn read_all(wire: &[u8]) -> Vec<Result<Option<LinkFrame>, String>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = wire;
            let mut out = Vec::new();
            loop {
                let f = read_frame(&mut r).await;
                let stop = !matches!(f, Ok(Some(_)));
                out.push(f);
                if stop {
                    return out;
                }
            }
        })
    }

    #[test]
    fn a_claimed_length_is_not_allocated_up_front() {
        // 80 MiB announced, 3 bytes sent.
        let mut wire = Vec::new();
        prost::encoding::encode_varint(MAX_FRAME as u64, &mut wire);
        wire.extend([1, 2, 3]);
        let r = read_all(&wire);
        assert!(
            matches!(&r[0], Err(e) if e.contains("stream ended inside a frame")),
            "{r:?}"
        );
        let mut wire = Vec::new();
        prost::encoding::encode_varint(MAX_FRAME as u64 + 1, &mut wire);
        assert!(matches!(&read_all(&wire)[0], Err(e) if e.contains("exceeds")));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
        ))]

        /// Arbitrary bytes on a link stream: frames or a clear error, never a panic.
        #[test]
        fn link_frames_survive_arbitrary_bytes(wire in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = read_all(&wire);
        }

        /// Valid frames with a byte flipped: never a panic; unflipped, they read back.
        #[test]
        fn link_frames_survive_mutations(
            nonces in proptest::collection::vec(any::<u64>(), 1..8),
            at in any::<prop::sample::Index>(),
            flip in 1..=255u8,
        ) {
            let frames: Vec<LinkFrame> = nonces
                .iter()
                .map(|n| LinkFrame {
                    kind: Some(nexus_proto::v1::link_frame::Kind::Ping(nexus_proto::v1::LinkPing {
                        nonce: *n,
                    })),
                })
                .collect();
            let mut wire = Vec::new();
            for f in &frames {
                f.encode_length_delimited(&mut wire).unwrap();
            }
            let read = read_all(&wire);
            prop_assert_eq!(read.len(), frames.len() + 1);
            for (r, f) in read.iter().zip(&frames) {
                prop_assert_eq!(r.as_ref().unwrap().as_ref().unwrap(), f);
            }
            let i = at.index(wire.len());
            wire[i] ^= flip;
            let _ = read_all(&wire);
        }
    }
}
