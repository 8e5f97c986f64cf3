//! Frames on a link's QUIC streams: `LinkFrame`s, each a protobuf message behind a varint
//! length (protobuf's length-delimited encoding), read with a size limit and written with
//! coalescing on the data stream.
//!
//! The readers of a link's streams go through a [`FrameReader`]: it takes whatever the QUIC
//! stream has into one buffer and cuts frames out of it, so reading a frame costs no call
//! into the connection (and its lock) per length byte, and the payloads decoded are slices
//! of that buffer, not copies (the proto's `bytes` fields are `Bytes`).

use bytes::{Buf, BytesMut};
use nexus_proto::v1::LinkFrame;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::compression::{WriterCodecs, fit_payloads, pack};

pub use super::frame_size::{MAX_FRAME, WRITE_BATCH};

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

/// Spare room below which the reader asks for another [`READ_CHUNK`] before reading.
const MIN_SPARE: usize = 4 << 10;
/// How much the reader's buffer grows by when it is short of room.
const READ_CHUNK: usize = 64 << 10;

/// Reads the frames of one stream through a buffer (see the module doc). The buffer grows
/// as bytes arrive, never by a frame's claimed length.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// The next frame; `None` at a clean end of the stream (between frames).
    pub async fn next<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        recv: &mut R,
    ) -> Result<Option<LinkFrame>, String> {
        loop {
            if let Some(frame) = self.cut()? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < MIN_SPARE {
                self.buf.reserve(READ_CHUNK);
            }
            let read = recv
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(format!(
                        "stream ended inside a frame ({} bytes of it received)",
                        self.buf.len()
                    ))
                };
            }
        }
    }

    /// Cuts the first frame out of the buffer, if it is all there.
    fn cut(&mut self) -> Result<Option<LinkFrame>, String> {
        let mut len: u64 = 0;
        let mut header = None;
        for (i, b) in self.buf.iter().take(10).enumerate() {
            len |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                header = Some(i + 1);
                break;
            }
            if i == 9 {
                return Err("malformed frame length".into());
            }
        }
        let Some(header) = header else {
            return Ok(None);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_FRAME {
            return Err(format!(
                "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
            ));
        }
        if self.buf.len() - header < len {
            return Ok(None);
        }
        self.buf.advance(header);
        let body = self.buf.split_to(len).freeze();
        LinkFrame::decode(body)
            .map(Some)
            .map_err(|e| format!("malformed frame: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads frames from `wire` until the end or an error, with [`read_frame`] and with a
    /// [`FrameReader`] fed at most `chunk` bytes per read; never panics. The two agree on
    /// every frame and on where an error comes (their messages may differ).
    fn read_all_chunked(wire: &[u8], chunk: usize) -> Vec<Result<Option<LinkFrame>, String>> {
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
                    break;
                }
            }
            let mut r = Chunked { wire, chunk };
            let mut reader = FrameReader::default();
            let mut buffered = Vec::new();
            loop {
                let f = reader.next(&mut r).await;
                let stop = !matches!(f, Ok(Some(_)));
                buffered.push(f);
                if stop {
                    break;
                }
            }
            assert_eq!(out.len(), buffered.len(), "{out:?} vs {buffered:?}");
            for (a, b) in out.iter().zip(&buffered) {
                match (a, b) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    _ => panic!("read_frame gave {a:?}, the FrameReader {b:?}"),
                }
            }
            out
        })
    }

    fn read_all(wire: &[u8]) -> Vec<Result<Option<LinkFrame>, String>> {
        for chunk in [1, 3, 1500] {
            read_all_chunked(wire, chunk);
        }
        read_all_chunked(wire, usize::MAX)
    }

    /// A stream that hands out at most `chunk` bytes per read, as QUIC hands out what
    /// arrived.
    struct Chunked<'a> {
        wire: &'a [u8],
        chunk: usize,
    }

    impl tokio::io::AsyncRead for Chunked<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.wire.len().min(self.chunk).min(buf.remaining());
            buf.put_slice(&self.wire[..n]);
            self.wire = &self.wire[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Forwards with payloads of every size up to past a read chunk, cut at every kind of
    /// boundary, read back whole and in order.
    #[test]
    fn frames_are_read_back_across_any_chunk_boundary() {
        use nexus_proto::v1::{Forward, link_frame::Kind};
        let frames: Vec<LinkFrame> = [0usize, 1, 127, 128, 4095, 70_000, 200_000, 5]
            .iter()
            .map(|n| LinkFrame {
                kind: Some(Kind::Forward(Forward {
                    subject: format!("s.{n}"),
                    payload: bytes::Bytes::from(vec![(*n % 251) as u8; *n]),
                    ..Default::default()
                })),
            })
            .collect();
        let mut wire = Vec::new();
        for f in &frames {
            f.encode_length_delimited(&mut wire).unwrap();
        }
        for chunk in [1, 2, 7, 1000, 65_536, usize::MAX] {
            let read = read_all_chunked(&wire, chunk);
            assert_eq!(read.len(), frames.len() + 1, "chunk {chunk}");
            for (r, f) in read.iter().zip(&frames) {
                assert_eq!(r.as_ref().unwrap().as_ref().unwrap(), f, "chunk {chunk}");
            }
            assert!(matches!(read.last(), Some(Ok(None))));
        }
        // Cut inside a frame: an error naming it, not a clean end.
        let r = read_all_chunked(&wire[..wire.len() - 1], 7);
        assert!(
            matches!(r.last(), Some(Err(e)) if e.contains("ended inside a frame")),
            "{r:?}"
        );
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
