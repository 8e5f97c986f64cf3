//! The native transport's wire format (docs/protocol.md §1.1): the session's `Batch` messages,
//! length-prefixed, over a plain TCP (or TLS) connection, for adapters that need more speed
//! than gRPC over HTTP/2 gives. The frames and the session are the same as over gRPC; only the
//! envelope differs:
//!
//! - the adapter opens with the 8-byte [`PREFACE`] (`NEXUS/1\n`); the gateway tells it from an
//!   HTTP/2 client by its first byte, so both share one port;
//! - then each direction is a sequence of *records*: a 4-byte big-endian header and a body.
//!   Bit 31 of the header clear: the body (the other 31 bits give its length) is one encoded
//!   `nexus.v1.Batch`. Bit 31 set: the body is the session's **close record**, sent by the
//!   gateway as the last thing on the connection: a 4-byte big-endian gRPC status code and a
//!   UTF-8 message, what a gRPC session's final status carries.
//!
//! What is here is sans-I/O ([`decode_record`], [`batch_header`], [`encode_close`]) plus the two
//! thin async pieces both ends share: [`RecordReader`], which reads records into one buffer and
//! hands out each batch's bytes without copying them, and [`write_batch`], which writes a
//! header and an already encoded batch with one vectored write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::v1::Batch;

/// The ALPN protocol id of the native transport over TLS (the gateway offers it beside `h2`).
pub const ALPN: &[u8] = b"nexus/1";
/// TCP keepalive on native connections, both ends (docs/protocol.md §1.1; there are no
/// HTTP/2 pings): the first probe after this much silence...
pub const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// ...then one this often...
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// ...and the connection is closed after this many go unanswered.
pub const KEEPALIVE_RETRIES: u32 = 3;
/// What an adapter sends first on a native connection.
pub const PREFACE: &[u8; 8] = b"NEXUS/1\n";
/// The bytes before a record's body.
pub const HEADER_LEN: usize = 4;
/// Bit 31 of a record header: the record is the close record.
const CLOSE_FLAG: u32 = 1 << 31;
/// Longest body a header can describe.
pub const MAX_RECORD_LEN: usize = (CLOSE_FLAG - 1) as usize;
/// Longest message a close record carries; a longer one is cut (at a character boundary).
pub const MAX_CLOSE_MESSAGE: usize = 4096;
/// The first read of a reader's buffer, and what an idle connection keeps.
const FIRST_READ: usize = 4 * 1024;
/// The largest read a busy connection grows to.
const MAX_READ: usize = 64 * 1024;

/// One record received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An encoded `Batch`, sharing the reader's buffer.
    Batch(Bytes),
    /// The peer's last word: the session's status.
    Close { code: i32, message: String },
}

/// Why the byte stream is not a valid sequence of records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("a record of {len} bytes is larger than this end accepts ({max} bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("a close record of {len} bytes is shorter than its 4-byte status code")]
    ShortClose { len: usize },
    #[error("the connection ended inside a record ({have} of {need} bytes received)")]
    Truncated { have: usize, need: usize },
    #[error("reading the connection failed: {0}")]
    Io(String),
}

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preface {
    /// Not enough bytes yet to tell.
    Incomplete,
    /// The native transport, version 1: the preface is the first [`PREFACE`]`.len()` bytes.
    Native,
    /// Something else that starts like the native preface: the reason, for the close record.
    Unsupported(String),
    /// Not the native transport (an HTTP/2 client's preface starts with `P`).
    Other,
}

/// Classifies the first bytes `start` of a connection.
pub fn classify(start: &[u8]) -> Preface {
    match start.first() {
        None => Preface::Incomplete,
        Some(&b) if b != PREFACE[0] => Preface::Other,
        Some(_) => {
            let n = start.len().min(PREFACE.len());
            if start[..n] != PREFACE[..n] {
                let shown = String::from_utf8_lossy(&start[..start.len().min(16)]);
                let shown = crate::text::Escaped(&shown);
                Preface::Unsupported(format!(
                    "the connection began with {shown:?}, which is not the native transport's preface {:?} (this gateway speaks version 1 of it, and gRPC)",
                    std::str::from_utf8(PREFACE).unwrap_or_default().trim_end()
                ))
            } else if n < PREFACE.len() {
                Preface::Incomplete
            } else {
                Preface::Native
            }
        }
    }
}

/// The header of a batch record whose body is `len` bytes.
pub fn batch_header(len: usize) -> [u8; HEADER_LEN] {
    debug_assert!(len <= MAX_RECORD_LEN);
    (len as u32).to_be_bytes()
}

/// Appends a close record with `code` (a gRPC status code) and `message` to `buf`.
pub fn encode_close(code: i32, message: &str, buf: &mut BytesMut) {
    let mut end = message.len().min(MAX_CLOSE_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    buf.reserve(HEADER_LEN + 4 + message.len());
    buf.put_u32(CLOSE_FLAG | (4 + message.len()) as u32);
    buf.put_i32(code);
    buf.put_slice(message.as_bytes());
}

/// Takes the next whole record off the front of `buf`; `Ok(None)` when `buf` holds only part
/// of one. A batch's body is split off without copying.
pub fn decode_record(buf: &mut BytesMut, max_len: usize) -> Result<Option<Record>, RecordError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let header = u32::from_be_bytes(header.try_into().unwrap_or_default());
    let close = header & CLOSE_FLAG != 0;
    let len = (header & !CLOSE_FLAG) as usize;
    let max = if close {
        4 + MAX_CLOSE_MESSAGE
    } else {
        max_len
    };
    if len > max {
        return Err(RecordError::TooLarge { len, max });
    }
    if close && len < 4 {
        return Err(RecordError::ShortClose { len });
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let mut body = buf.split_to(len);
    if !close {
        return Ok(Some(Record::Batch(body.freeze())));
    }
    let code = body.get_i32();
    let message = String::from_utf8_lossy(&body).into_owned();
    Ok(Some(Record::Close { code, message }))
}

/// How many bytes the record at the front of `buf` still needs, when its header is there.
fn missing(buf: &[u8]) -> Option<usize> {
    let header = u32::from_be_bytes(buf.get(..HEADER_LEN)?.try_into().ok()?);
    let len = (header & !CLOSE_FLAG) as usize;
    Some((HEADER_LEN + len).saturating_sub(buf.len()))
}

/// Reads records from one direction of a native connection into a single buffer.
///
/// The buffer starts at 4 KiB and grows to 64 KiB reads while reads fill it, so an idle
/// connection holds little and a busy one makes few system calls; a record larger than that is
/// read into a buffer reserved for all of it at once.
#[derive(Debug)]
pub struct RecordReader<R> {
    io: R,
    buf: BytesMut,
    max_len: usize,
    read_size: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> RecordReader<R> {
    /// A reader of `io` that refuses records longer than `max_len`; `start` holds bytes
    /// already read from it (after the preface).
    pub fn new(io: R, start: BytesMut, max_len: usize) -> Self {
        RecordReader {
            io,
            buf: start,
            max_len,
            read_size: FIRST_READ,
            eof: false,
        }
    }

    /// The next record; `Ok(None)` at a clean end of the connection (between records).
    pub fn poll_next_record(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Record>, RecordError>> {
        loop {
            if let Some(record) = decode_record(&mut self.buf, self.max_len)? {
                return Poll::Ready(Ok(Some(record)));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Poll::Ready(Ok(None));
                }
                let need = missing(&self.buf).map_or(HEADER_LEN, |m| m + self.buf.len());
                return Poll::Ready(Err(RecordError::Truncated {
                    have: self.buf.len(),
                    need,
                }));
            }
            let want = missing(&self.buf).unwrap_or(0).max(self.read_size);
            self.buf.reserve(want);
            let spare = self.buf.capacity() - self.buf.len();
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.buf
            ))
            .map_err(|e| RecordError::Io(e.to_string()))?;
            if n == 0 {
                self.eof = true;
            } else if n == spare && self.read_size < MAX_READ {
                self.read_size *= 2;
            }
        }
    }

    /// The next record; see [`RecordReader::poll_next_record`].
    pub async fn next_record(&mut self) -> Result<Option<Record>, RecordError> {
        std::future::poll_fn(|cx| self.poll_next_record(cx)).await
    }
}

/// Writes `batch` as one record: its header and its encoded frames with one vectored write
/// where the connection supports it. Frames not yet encoded (`batch.frames`) are encoded into
/// `scratch` first.
pub async fn write_batch<W: AsyncWrite + Unpin>(
    io: &mut W,
    batch: &Batch,
    scratch: &mut BytesMut,
) -> io::Result<()> {
    let len = prost::Message::encoded_len(batch);
    if len > MAX_RECORD_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a batch of {len} bytes is larger than a record can be"),
        ));
    }
    let header = batch_header(len);
    if batch.frames.is_empty() {
        let mut out = (&header[..]).chain(&batch.encoded[..]);
        return io.write_all_buf(&mut out).await;
    }
    scratch.clear();
    scratch.reserve(len - batch.encoded.len());
    for frame in &batch.frames {
        Batch::encode_frame(frame, scratch);
    }
    let mut out = (&header[..]).chain(&scratch[..]).chain(&batch.encoded[..]);
    io.write_all_buf(&mut out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Frame, Ping, frame::Kind};

    fn ping(n: u64) -> Frame {
        Frame {
            kind: Some(Kind::Ping(Ping { nonce: n })),
        }
    }

    #[test]
    fn prefaces_are_told_apart() {
        assert_eq!(classify(b""), Preface::Incomplete);
        assert_eq!(classify(b"NEX"), Preface::Incomplete);
        assert_eq!(classify(b"NEXUS/1\n"), Preface::Native);
        assert_eq!(classify(b"NEXUS/1\nrest"), Preface::Native);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Preface::Other);
        assert_eq!(classify(&[0x16, 3, 1]), Preface::Other);
        let Preface::Unsupported(why) = classify(b"NEXUS/2\n") else {
            panic!("a later version is not native v1");
        };
        assert!(
            why.contains("NEXUS/2") && why.contains("version 1"),
            "{why}"
        );
        assert!(matches!(classify(b"Nope"), Preface::Unsupported(_)));
    }

    #[test]
    fn records_round_trip_in_any_split() {
        let batch = Batch::of(vec![ping(1), ping(2)]);
        let body = prost::Message::encode_to_vec(&batch);
        let mut wire = BytesMut::new();
        wire.put_slice(&batch_header(body.len()));
        wire.put_slice(&body);
        encode_close(8, "limits.max_connections (10) reached", &mut wire);
        // Every split point: nothing is decoded from a partial record, and the two records
        // come out whole once their last byte is there.
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(r) = decode_record(&mut buf, 1 << 20).unwrap() {
                got.push(r);
            }
            buf.put_slice(&wire[cut..]);
            while let Some(r) = decode_record(&mut buf, 1 << 20).unwrap() {
                got.push(r);
            }
            assert!(buf.is_empty());
            assert_eq!(got.len(), 2, "cut at {cut}");
            let Record::Batch(b) = &got[0] else {
                panic!("first is the batch")
            };
            let decoded: Batch = prost::Message::decode(b.clone()).unwrap();
            assert_eq!(decoded.frames, batch.frames);
            assert_eq!(
                got[1],
                Record::Close {
                    code: 8,
                    message: "limits.max_connections (10) reached".into()
                }
            );
        }
    }

    #[test]
    fn bad_headers_are_named() {
        let mut buf = BytesMut::from(&batch_header(2_000_000)[..]);
        assert_eq!(
            decode_record(&mut buf, 1_000_000),
            Err(RecordError::TooLarge {
                len: 2_000_000,
                max: 1_000_000
            })
        );
        let mut buf = BytesMut::from(&(CLOSE_FLAG | 2).to_be_bytes()[..]);
        assert_eq!(
            decode_record(&mut buf, 100),
            Err(RecordError::ShortClose { len: 2 })
        );
        let mut buf = BytesMut::from(&(CLOSE_FLAG | 1_000_000).to_be_bytes()[..]);
        assert!(matches!(
            decode_record(&mut buf, usize::MAX),
            Err(RecordError::TooLarge { .. })
        ));
    }

    #[test]
    fn close_messages_are_cut_at_a_character() {
        let long = "é".repeat(MAX_CLOSE_MESSAGE);
        let mut buf = BytesMut::new();
        encode_close(14, &long, &mut buf);
        let Some(Record::Close { code, message }) = decode_record(&mut buf, 0).unwrap() else {
            panic!("a close record")
        };
        assert_eq!(code, 14);
        assert!(message.len() <= MAX_CLOSE_MESSAGE && message.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn reader_and_writer_carry_batches_and_name_truncation() {
        let (mut a, b) = tokio::io::duplex(64);
        let big = Batch::of(vec![Frame {
            kind: Some(Kind::Pub(crate::v1::Pub {
                subject: "a.b".into(),
                payload: Bytes::from(vec![7u8; 100_000]),
                ..Default::default()
            })),
        }]);
        let mut encoded = BytesMut::new();
        for f in &big.frames {
            Batch::encode_frame(f, &mut encoded);
        }
        let pre_encoded = Batch {
            frames: vec![ping(9)],
            encoded: encoded.freeze(),
        };
        let writer = tokio::spawn(async move {
            let mut scratch = BytesMut::new();
            write_batch(&mut a, &big, &mut scratch).await.unwrap();
            write_batch(&mut a, &pre_encoded, &mut scratch)
                .await
                .unwrap();
            a.write_all(&batch_header(10)).await.unwrap();
            a.write_all(b"abc").await.unwrap();
        });
        let mut reader = RecordReader::new(b, BytesMut::new(), 1 << 20);
        let Some(Record::Batch(one)) = reader.next_record().await.unwrap() else {
            panic!("a batch")
        };
        let one: Batch = prost::Message::decode(one).unwrap();
        assert_eq!(one.frames.len(), 1);
        let Some(Record::Batch(two)) = reader.next_record().await.unwrap() else {
            panic!("a batch")
        };
        let two: Batch = prost::Message::decode(two).unwrap();
        assert_eq!(two.frames.len(), 2);
        assert_eq!(two.frames[0], ping(9));
        assert_eq!(two.frames[1], one.frames[0]);
        writer.await.unwrap();
        assert_eq!(
            reader.next_record().await,
            Err(RecordError::Truncated { have: 7, need: 14 })
        );
    }
}
