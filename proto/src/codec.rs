//! The gRPC codec of every `nexus.v1` service: prost's encoding, written into a buffer
//! reserved at the message's exact encoded size.
//!
//! tonic-prost's encoder lets `prost` write into tonic's 8 KiB send buffer, which then grows
//! by doubling while a message is written: a gateway's outbound `Batch` of a few hundred
//! messages is re-allocated and copied four or five times before it is sent (`realloc` was
//! ~3 % of the gateway's instructions on pub/sub). Reserving `encoded_len()` first makes that
//! one allocation; `encode_raw` then skips the length walk `encode` would repeat.
//!
//! Both start with 1 KiB buffers rather than tonic's 8 KiB: tonic allocates them when a call
//! opens, so on a gateway with thousands of idle sessions they were 16 KiB of each session's
//! memory (docs/benchmarks.md, "Memory per idle connection"); under load they grow to the
//! messages' sizes either way (the encoder reserves each message's exact size).
//!
//! Decoding first takes the message out of tonic's receive buffer as one `Bytes` (no copy)
//! and decodes from that: reading a `Bytes` advances a pointer, where reading tonic's
//! `BytesMut`-backed buffer paid `BytesMut`'s bookkeeping on every field (~5 % of the
//! gateway's instructions), and the strings and payloads cut from it are plain slices.

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Initial size of a call's send and receive buffers.
const INITIAL_BUFFER: usize = 1024;
/// Bytes of encoded messages gathered before they are handed to HTTP/2 (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// [`Codec`] for a prost message pair; the generated clients and servers use it
/// (`codec_path` in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ExactSizeCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for ExactSizeCodec<T, U> {
    fn default() -> Self {
        ExactSizeCodec(PhantomData)
    }
}

impl<T, U> Codec for ExactSizeCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ExactSizeEncoder<T>;
    type Decoder = ExactSizeDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ExactSizeEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ExactSizeDecoder(PhantomData)
    }
}

/// Writes one message into space reserved for exactly its encoding.
#[derive(Debug, Clone, Copy)]
pub struct ExactSizeEncoder<T>(PhantomData<fn(T)>);

impl<T: Message> Encoder for ExactSizeEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let len = item.encoded_len();
        buf.reserve(len);
        encode_reserved(&item, buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Writes `item` into `buf`, which has room for `item.encoded_len()` more bytes.
fn encode_reserved(item: &impl Message, buf: &mut impl bytes::BufMut) {
    item.encode_raw(buf);
}

/// Decodes one message from the bytes tonic framed for it.
#[derive(Debug, Clone, Copy)]
pub struct ExactSizeDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default> Decoder for ExactSizeDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_message(buf.copy_to_bytes(buf.remaining())).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Decodes one whole message received from a peer.
fn decode_message<U: Message + Default>(message: bytes::Bytes) -> Result<U, Status> {
    // tonic-prost answers a message that does not parse (a string that is not UTF-8, a
    // length past the end) with INTERNAL, which reads as the receiver's fault; the bytes the
    // peer sent are what is wrong, so this says INVALID_ARGUMENT and names the problem.
    U::decode(message).map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Batch, Frame, Msg, frame::Kind};
    use bytes::Bytes;

    /// A frame whose string is not UTF-8 is the sender's error: INVALID_ARGUMENT, not INTERNAL.
    #[test]
    fn undecodable_input_is_invalid_argument() {
        // Batch.frames[0].pub.subject = 0xff 0xfe.
        let wire: &[u8] = &[0x0a, 0x06, 0x2a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
        let err = decode_message::<Batch>(Bytes::from_static(wire)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("UTF-8"), "{err}");
    }

    /// The codec's bytes are prost's bytes.
    #[test]
    fn encodes_exactly_what_prost_encodes() {
        let batch = Batch {
            frames: (0..300)
                .map(|i| Frame {
                    kind: Some(Kind::Msg(Msg {
                        sid: i,
                        subject: format!("orders.{i}").into(),
                        payload: Bytes::from(vec![i as u8; 128]),
                        ..Default::default()
                    })),
                })
                .collect(),
            encoded: Bytes::new(),
        };
        let mut buf = bytes::BytesMut::with_capacity(batch.encoded_len());
        let cap = buf.capacity();
        encode_reserved(&batch, &mut buf);
        assert_eq!(buf.capacity(), cap, "the reserved space was not enough");
        assert_eq!(&buf[..], &batch.encode_to_vec()[..]);
    }
}
