//! Payload encodings: compressed message payloads, marked by the reserved header
//! `nexus-encoding` (docs/protocol.md §9.2), and the bounded codecs every Rust party uses.
//!
//! A payload is compressed once, by the publishing adapter (or, for a link, by nobody: links
//! compress whole batches of frames, see `CompressedFrames`), travels through gateways,
//! regions and spools unchanged, and is decompressed by the receiving adapter. A gateway
//! decompresses only for a receiver that did not list the payload's codec in its `Hello`
//! (or a link peer that did not list it in its `LinkHello`), and to check an enforced schema.
//!
//! Formats (the same bytes every language's stock library produces and reads):
//! - `zstd`: one zstd frame whose header carries the decompressed size ("content size",
//!   written by default by libzstd, zstd-jni and python-zstandard's `compress`).
//! - `lz4`: the decompressed size as 4 bytes little-endian, then one LZ4 block (lz4_flex's
//!   `compress_prepend_size`, python-lz4's `lz4.block.compress(store_size=True)`).
//!
//! Decompression is bounded: the size a payload declares is checked against the caller's
//! limit (the gateway's `limits.max_payload`) before anything is allocated, and the codec is
//! held to that size, so a "zip bomb" or a corrupt payload is a [`DecodeError`] naming the
//! problem, never an allocation of the claimed size or a panic.

use bytes::Bytes;
use std::cell::RefCell;

use crate::v1::Header;

/// The reserved header naming a payload's encoding.
pub const HEADER: &str = "nexus-encoding";
/// Payloads smaller than this are sent plain by default: below it the codec's frame overhead
/// and CPU cost outweigh the bytes saved.
pub const DEFAULT_THRESHOLD: usize = 1024;
/// zstd level used by default: level 3 (libzstd's default) compresses JSON 4-8x at several
/// hundred MB/s per core.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// A payload codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Zstd,
    Lz4,
}

impl Codec {
    /// Every codec, in order of preference for payloads (better ratio first).
    pub const ALL: [Codec; 2] = [Codec::Zstd, Codec::Lz4];

    /// The name used in headers and hellos.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
        }
    }

    /// The codec called `name` (case-insensitive), if this build knows it.
    pub fn from_name(name: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    fn bit(self) -> u8 {
        match self {
            Codec::Zstd => 1,
            Codec::Lz4 => 2,
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of codecs, e.g. what a session or link peer accepts. `Copy`, so it can sit in an
/// atomic or be read on the hot path for free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodecSet(u8);

impl CodecSet {
    pub const NONE: CodecSet = CodecSet(0);
    pub const ALL: CodecSet = CodecSet(3);

    /// The known codecs among `names`; unknown names are ignored (a peer may know more).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> CodecSet {
        CodecSet(
            names
                .iter()
                .filter_map(|n| Codec::from_name(n.as_ref()))
                .fold(0, |bits, c| bits | c.bit()),
        )
    }

    pub fn contains(self, codec: Codec) -> bool {
        self.0 & codec.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn with(self, codec: Codec) -> CodecSet {
        CodecSet(self.0 | codec.bit())
    }

    /// The names of the codecs in the set, in [`Codec::ALL`] order.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|c| c.name().to_owned()).collect()
    }

    pub fn iter(self) -> impl Iterator<Item = Codec> {
        Codec::ALL.into_iter().filter(move |c| self.contains(*c))
    }

    /// Bits for an atomic.
    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> CodecSet {
        CodecSet(bits & Self::ALL.0)
    }
}

/// Why an encoded payload could not be decoded (or accepted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload encoding {0:?} (header nexus-encoding) is not supported; known: zstd, lz4")]
    UnknownCodec(String),
    #[error(
        "{codec} payload declares {declared} decompressed bytes, which exceeds limits.max_payload ({max} bytes)"
    )]
    TooLarge {
        codec: Codec,
        declared: u64,
        max: usize,
    },
    #[error("{codec} payload is corrupt: {reason}")]
    Corrupt { codec: Codec, reason: String },
}

impl DecodeError {
    /// True when the payload is too large rather than malformed (a `LIMIT` rather than an
    /// `INVALID` error).
    pub fn is_limit(&self) -> bool {
        matches!(self, DecodeError::TooLarge { .. })
    }
}

fn corrupt(codec: Codec, reason: impl std::fmt::Display) -> DecodeError {
    DecodeError::Corrupt {
        codec,
        reason: reason.to_string(),
    }
}

/// The encoding named by `headers`: `None` for a plain payload, `Err` for a name this build
/// does not know. The first `nexus-encoding` header (case-insensitive key) counts.
pub fn find(headers: &[Header]) -> Option<Result<Codec, DecodeError>> {
    let h = headers
        .iter()
        .find(|h| h.key.len() == HEADER.len() && h.key.eq_ignore_ascii_case(HEADER))?;
    Some(Codec::from_name(&h.value).ok_or_else(|| DecodeError::UnknownCodec(h.value.to_string())))
}

/// Removes every `nexus-encoding` header.
pub fn strip(headers: &mut Vec<Header>) {
    headers.retain(|h| !(h.key.len() == HEADER.len() && h.key.eq_ignore_ascii_case(HEADER)));
}

/// The decompressed size `data` declares, read from its header only (no decompression).
pub fn declared_len(codec: Codec, data: &[u8]) -> Result<u64, DecodeError> {
    match codec {
        Codec::Zstd => match zstd::zstd_safe::get_frame_content_size(data) {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(corrupt(
                codec,
                "the zstd frame does not declare its decompressed size (compress with the content size flag)",
            )),
            Err(_) => Err(corrupt(codec, "not a zstd frame")),
        },
        Codec::Lz4 => {
            let Some(len) = data.get(..4) else {
                return Err(corrupt(
                    codec,
                    "shorter than its 4-byte decompressed size prefix",
                ));
            };
            Ok(u64::from(u32::from_le_bytes([
                len[0], len[1], len[2], len[3],
            ])))
        }
    }
}

/// Checks an encoded payload without decompressing it: known codec, declared size at most
/// `max`. Returns the codec and declared size.
pub fn check(codec: Codec, data: &[u8], max: usize) -> Result<u64, DecodeError> {
    let declared = declared_len(codec, data)?;
    if declared > max as u64 {
        return Err(DecodeError::TooLarge {
            codec,
            declared,
            max,
        });
    }
    Ok(declared)
}

thread_local! {
    /// This thread's zstd compression context and its level. Making a context allocates and
    /// clears some hundreds of KiB of tables: once per payload it was ~70 % of a Rust
    /// client's CPU with 16 KiB payloads (docs/benchmarks.md, round 9).
    static ZSTD_COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    /// This thread's zstd decompression context.
    static ZSTD_DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// Compresses `plain` with `codec` (zstd at `zstd_level`).
pub fn compress(codec: Codec, plain: &[u8], zstd_level: i32) -> Vec<u8> {
    match codec {
        // Compressing into memory fails only on an invalid level, which clamping rules out;
        // fall back to lz4 rather than panic if libzstd ever says otherwise.
        Codec::Zstd => zstd_compress(plain, zstd_level.clamp(1, 19))
            .unwrap_or_else(|_| lz4_flex::block::compress_prepend_size(plain)),
        Codec::Lz4 => lz4_flex::block::compress_prepend_size(plain),
    }
}

/// One zstd frame (with its content size) for `plain`, made with this thread's context.
fn zstd_compress(plain: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    ZSTD_COMPRESSOR.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return zstd::bulk::compress(plain, level);
        };
        let c = match &mut *slot {
            Some((l, c)) if *l == level => c,
            _ => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        c.compress(plain)
    })
}

/// Decompresses one zstd frame into `out` (with room for it), with this thread's context.
fn zstd_decompress(data: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    ZSTD_DECOMPRESSOR.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return zstd::bulk::Decompressor::new()?.decompress_to_buffer(data, out);
        };
        let d = match &mut *slot {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        d.decompress_to_buffer(data, out)
    })
}

/// Decompresses `data`, refusing anything that declares or produces more than `max` bytes.
pub fn decompress(codec: Codec, data: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    let declared = check(codec, data, max)? as usize;
    let out = match codec {
        Codec::Zstd => {
            let mut out = Vec::with_capacity(declared);
            zstd_decompress(data, &mut out).map_err(|e| corrupt(codec, e))?;
            out
        }
        Codec::Lz4 => {
            lz4_flex::block::decompress(&data[4..], declared).map_err(|e| corrupt(codec, e))?
        }
    };
    if out.len() != declared {
        return Err(corrupt(
            codec,
            format!(
                "decompressed to {} bytes, not the {declared} it declares",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// If the payload is encoded with a codec outside `accept`, decodes it in place and removes
/// the header; returns the codec decoded from, if any. An encoded payload whose codec is in
/// `accept` is left as it is (no copy).
pub fn decode_unless_accepted(
    headers: &mut Vec<Header>,
    payload: &mut Bytes,
    accept: CodecSet,
    max: usize,
) -> Result<Option<Codec>, DecodeError> {
    let codec = match find(headers) {
        None => return Ok(None),
        Some(Ok(c)) if accept.contains(c) => return Ok(None),
        Some(c) => c?,
    };
    *payload = Bytes::from(decompress(codec, payload, max)?);
    strip(headers);
    Ok(Some(codec))
}

/// What an adapter compresses with: the payload threshold and the codec preference, checked
/// against what its gateway accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Codec to use, if any.
    pub codec: Option<Codec>,
    /// Payloads of at least this many bytes are compressed.
    pub threshold: usize,
    pub zstd_level: i32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            codec: Some(Codec::Zstd),
            threshold: DEFAULT_THRESHOLD,
            zstd_level: DEFAULT_ZSTD_LEVEL,
        }
    }
}

impl Policy {
    /// Compresses `payload` (adding the header) when it is at least `threshold` bytes, the
    /// policy's codec is accepted by the peer, the headers carry no encoding yet, and the
    /// result is smaller. Returns whether it did.
    pub fn encode(
        &self,
        peer_accepts: CodecSet,
        headers: &mut Vec<Header>,
        payload: &mut Bytes,
    ) -> bool {
        let Some(codec) = self.codec else {
            return false;
        };
        if payload.len() < self.threshold.max(1)
            || !peer_accepts.contains(codec)
            || find(headers).is_some()
        {
            return false;
        }
        let packed = compress(codec, payload, self.zstd_level);
        if packed.len() >= payload.len() {
            return false;
        }
        *payload = Bytes::from(packed);
        headers.push(Header {
            key: HEADER.into(),
            value: codec.name().into(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_zstd_contexts_serve_many_payloads_levels_and_a_corrupt_one() {
        for round in 0..50usize {
            let plain = json(1024 + round * 97);
            let level = [1, 3, 19][round % 3];
            let packed = compress(Codec::Zstd, &plain, level);
            assert!(packed.len() < plain.len());
            assert_eq!(decompress(Codec::Zstd, &packed, 1 << 20).unwrap(), plain);
            if round % 10 == 0 {
                // A corrupt frame fails, and the context still decodes the next one.
                let mut bad = packed.clone();
                let mid = bad.len() / 2;
                bad[mid..].iter_mut().for_each(|b| *b ^= 0x5a);
                assert!(
                    decompress(Codec::Zstd, &bad, 1 << 20)
                        .is_err_and(|e| e.to_string().contains("zstd"))
                );
            }
        }
        // The same bytes whichever way the context was made.
        let plain = json(4096);
        assert_eq!(
            compress(Codec::Zstd, &plain, 3),
            zstd::bulk::compress(&plain, 3).unwrap()
        );
    }

    fn json(n: usize) -> Vec<u8> {
        let mut s = String::from("[");
        let mut i = 0;
        while s.len() < n {
            s.push_str(&format!(
                r#"{{"id":{i},"name":"sensor-{}","value":{}.5,"ok":true}},"#,
                i % 17,
                i * 3
            ));
            i += 1;
        }
        s.into_bytes()
    }

    #[test]
    fn round_trips_and_shrinks_json() {
        let plain = json(8192);
        for codec in Codec::ALL {
            let packed = compress(codec, &plain, 3);
            assert!(packed.len() * 3 < plain.len(), "{codec}: {}", packed.len());
            assert_eq!(declared_len(codec, &packed).unwrap(), plain.len() as u64);
            assert_eq!(decompress(codec, &packed, plain.len()).unwrap(), plain);
        }
    }

    #[test]
    fn a_bomb_is_refused_before_allocation() {
        let plain = vec![0u8; 4 << 20];
        for codec in Codec::ALL {
            let packed = compress(codec, &plain, 3);
            let e = decompress(codec, &packed, 1 << 20).unwrap_err();
            assert!(e.is_limit(), "{e}");
            assert!(
                e.to_string()
                    .contains("exceeds limits.max_payload (1048576 bytes)"),
                "{e}"
            );
        }
        // An lz4 payload lying about its size: the block is bounded by the declared size.
        let mut lying = compress(Codec::Lz4, &plain, 3);
        lying[..4].copy_from_slice(&100u32.to_le_bytes());
        let e = decompress(Codec::Lz4, &lying, 1 << 20).unwrap_err();
        assert!(matches!(e, DecodeError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn corrupt_payloads_are_errors_not_panics() {
        let plain = json(4096);
        for codec in Codec::ALL {
            let packed = compress(codec, &plain, 3);
            for cut in [0, 1, 3, 4, 5, packed.len() / 2, packed.len() - 1] {
                let _ = decompress(codec, &packed[..cut], 1 << 20);
            }
            for i in 0..packed.len() {
                let mut bad = packed.clone();
                bad[i] ^= 0x5a;
                if let Ok(out) = decompress(codec, &bad, 1 << 20) {
                    assert!(out.len() <= 1 << 20);
                }
            }
        }
        assert!(
            decompress(Codec::Zstd, b"not zstd at all", 100)
                .unwrap_err()
                .to_string()
                .contains("not a zstd frame")
        );
    }

    #[test]
    fn policy_and_header_handling() {
        let policy = Policy::default();
        let mut headers = vec![Header {
            key: "traceparent".into(),
            value: "x".into(),
        }];
        let mut small = Bytes::from(json(100));
        assert!(!policy.encode(CodecSet::ALL, &mut headers, &mut small));
        let plain = Bytes::from(json(4096));
        let mut payload = plain.clone();
        assert!(!policy.encode(CodecSet::NONE, &mut headers, &mut payload));
        assert!(policy.encode(CodecSet::ALL, &mut headers, &mut payload));
        assert_eq!(find(&headers), Some(Ok(Codec::Zstd)));
        // Accepted: unchanged, same buffer.
        let mut kept = payload.clone();
        assert_eq!(
            decode_unless_accepted(&mut headers, &mut kept, CodecSet::ALL, 1 << 20),
            Ok(None)
        );
        assert_eq!(kept.as_ptr(), payload.as_ptr());
        // Not accepted: decoded, header gone.
        let got = decode_unless_accepted(
            &mut headers,
            &mut payload,
            CodecSet::NONE.with(Codec::Lz4),
            1 << 20,
        );
        assert_eq!(got, Ok(Some(Codec::Zstd)));
        assert_eq!(payload, plain);
        assert_eq!(find(&headers), None);
        assert_eq!(headers.len(), 1);
        // Unknown codec.
        headers.push(Header {
            key: "Nexus-Encoding".into(),
            value: "brotli".into(),
        });
        assert!(matches!(
            decode_unless_accepted(&mut headers, &mut payload, CodecSet::NONE, 10),
            Err(DecodeError::UnknownCodec(n)) if n == "brotli"
        ));
        assert_eq!(CodecSet::from_names(&["LZ4", "x"]).names(), ["lz4"]);
    }
}
