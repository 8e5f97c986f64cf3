//! Frames on a link's QUIC streams: `LinkFrame`s, each a protobuf message behind a varint
//! length (protobuf's length-delimited encoding), read with a size limit and written with
//! coalescing on the data stream.

use nexus_proto::v1::LinkFrame;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

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
pub async fn data_writer(mut rx: mpsc::Receiver<LinkFrame>, mut send: quinn::SendStream) {
    let mut buf = Vec::with_capacity(WRITE_BATCH + 1024);
    while let Some(frame) = rx.recv().await {
        frame
            .encode_length_delimited(&mut buf)
            .expect("a Vec grows as needed");
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => f
                    .encode_length_delimited(&mut buf)
                    .expect("a Vec grows as needed"),
                Err(_) => break,
            }
        }
        if send.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > 4 * WRITE_BATCH {
            // One large frame grew it: do not keep that much per link.
            buf = Vec::with_capacity(WRITE_BATCH + 1024);
        }
    }
}

/// Reads one frame; `None` at a clean end of the stream.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<LinkFrame>, String> {
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
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    LinkFrame::decode(buf.as_slice())
        .map(Some)
        .map_err(|e| format!("malformed frame: {e}"))
}
