//! The native transport towards a gateway (docs/protocol.md §1.1): the session's batches
//! length-prefixed over a TCP connection instead of gRPC over HTTP/2, for applications that
//! need the speed. `nexus+tcp://host:port` is plaintext; `nexus+tls://host:port` is TLS (the
//! `tls` feature, verified as for `https://`, see [`crate::tls`]). The gateway serves both
//! transports on the same port; the session, its frames and every guarantee are the same.
//!
//! The writer writes each batch straight to the socket (no request channel, no HTTP/2
//! framing), and the reader decodes the gateway's batches from one read buffer whose
//! payloads the delivered messages share.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use nexus_proto::hot_frames::BatchFrames;
use nexus_proto::native::{self, PREFACE, Record, RecordReader};
use nexus_proto::v1 as pb;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::tls::TlsSettings;

/// Plaintext native addresses: `nexus+tcp://host:port`.
pub(crate) const TCP_SCHEME: &str = "nexus+tcp";
/// Native addresses over TLS: `nexus+tls://host:port`.
pub(crate) const TLS_SCHEME: &str = "nexus+tls";
/// The gateway's port when an address names none.
const DEFAULT_PORT: u16 = 7422;

/// The transport of a session: what a discovered gateway (`nexus+srv://`) is reached with.
/// A direct address names its own: `http://`/`https://` is gRPC, `nexus+tcp://`/`nexus+tls://`
/// the native transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// gRPC over HTTP/2, which every gateway and adapter speaks (the default).
    #[default]
    Grpc,
    /// The native transport (docs/protocol.md §1.1): less CPU per message and less memory
    /// per session, on the same port.
    Native,
}

/// A gateway reached over the native transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NativeEndpoint {
    /// The address as given (for messages).
    pub(crate) url: String,
    host: String,
    port: u16,
    tls: bool,
}

/// A transport failure, as a gRPC session's would be reported.
pub(crate) fn unavailable(message: String) -> Error {
    Error::Transport(tonic::Status::unavailable(message))
}

fn invalid(addr: &str, reason: impl Into<String>) -> Error {
    Error::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.into(),
    }
}

/// Parses `nexus+tcp://host[:port]` or `nexus+tls://host[:port]`; `None` for other schemes.
pub(crate) fn parse(addr: &str) -> Option<Result<NativeEndpoint>> {
    let trimmed = addr.trim();
    let (scheme, rest) = trimmed.split_once("://")?;
    let tls = if scheme.eq_ignore_ascii_case(TLS_SCHEME) {
        true
    } else if scheme.eq_ignore_ascii_case(TCP_SCHEME) {
        false
    } else {
        return None;
    };
    Some(parse_authority(
        addr,
        rest.strip_suffix('/').unwrap_or(rest),
        tls,
    ))
}

fn parse_authority(addr: &str, authority: &str, tls: bool) -> Result<NativeEndpoint> {
    if authority.contains(['/', '?', '#']) {
        return Err(invalid(
            addr,
            "a native address is scheme://host[:port], without a path, query or fragment",
        ));
    }
    if authority.contains('@') {
        return Err(invalid(
            addr,
            "user information is not allowed; API keys go in ClientBuilder::api_key",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| invalid(addr, "an IPv6 address needs its closing ']'"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| invalid(addr, "expected ':port' after the IPv6 address"))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid(addr, "the host is missing"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| invalid(addr, format!("{p:?} is not a port (1-65535)")))?,
    };
    Ok(NativeEndpoint {
        url: addr.trim().to_owned(),
        host: host.to_owned(),
        port,
        tls,
    })
}

impl NativeEndpoint {
    /// A discovered gateway at `addr`, over TLS when `tls`.
    pub(crate) fn discovered(addr: std::net::SocketAddr, tls: bool) -> Self {
        let scheme = if tls { TLS_SCHEME } else { TCP_SCHEME };
        NativeEndpoint {
            url: format!("{scheme}://{addr}"),
            host: addr.ip().to_string(),
            port: addr.port(),
            tls,
        }
    }

    /// Connects (and completes TLS) within `timeout`, and sends the preface.
    pub(crate) async fn connect(
        &self,
        tls: &TlsSettings,
        timeout: Duration,
    ) -> Result<(NativeReader, NativeWriter)> {
        let connecting = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| unavailable(format!("connecting to {}: {e}", self.url)))?;
            let _ = tcp.set_nodelay(true);
            // A gateway that vanished without a FIN is found within about a minute even
            // while the session is quiet (gRPC sessions have HTTP/2 pings for this).
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(native::KEEPALIVE_IDLE)
                .with_interval(native::KEEPALIVE_INTERVAL)
                .with_retries(native::KEEPALIVE_RETRIES);
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            let mut stream = if self.tls {
                tls.native_tls(tcp, &self.host, &self.url).await?
            } else {
                NativeStream::Plain(tcp)
            };
            stream
                .write_all(PREFACE)
                .await
                .map_err(|e| unavailable(format!("writing to {}: {e}", self.url)))?;
            Ok::<_, Error>(stream)
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| Error::Timeout {
                subject: "<connect>".into(),
                after: timeout,
                detail: Some(format!("connecting to {}", self.url)),
            })??;
        let (read, write) = tokio::io::split(stream);
        Ok((
            NativeReader(RecordReader::new(
                read,
                BytesMut::new(),
                crate::connection::MAX_DECODING_BYTES,
            )),
            NativeWriter {
                io: write,
                scratch: BytesMut::new(),
            },
        ))
    }
}

/// A native connection, plaintext or TLS.
pub(crate) enum NativeStream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            NativeStream::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            #[cfg(feature = "tls")]
            NativeStream::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $call
            }
        }
    };
}

impl AsyncRead for NativeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for NativeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            NativeStream::Plain(io) => io.is_write_vectored(),
            #[cfg(feature = "tls")]
            NativeStream::Tls(io) => io.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// The receiving half of a native session.
pub(crate) struct NativeReader(RecordReader<ReadHalf<NativeStream>>);

impl NativeReader {
    /// The gateway's next batch, whose frames are decoded as they are taken; `Ok(None)` when
    /// it closed the connection without a status. Its close record comes back as the status
    /// it carries, as a gRPC session's would.
    pub(crate) async fn message(
        &mut self,
    ) -> std::result::Result<Option<BatchFrames>, tonic::Status> {
        match self.0.next_record().await {
            Ok(Some(Record::Batch(bytes))) => Ok(Some(BatchFrames::new(bytes))),
            Ok(Some(Record::Close { code, message })) => {
                Err(tonic::Status::new(tonic::Code::from_i32(code), message))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        }
    }
}

/// The sending half of a native session.
pub(crate) struct NativeWriter {
    io: WriteHalf<NativeStream>,
    scratch: BytesMut,
}

impl NativeWriter {
    /// Writes one batch as a record and flushes it.
    pub(crate) async fn send(&mut self, batch: &pb::Batch) -> io::Result<()> {
        native::write_batch(&mut self.io, batch, &mut self.scratch).await?;
        self.io.flush().await
    }

    /// Ends the sending direction (the gateway sees the end of the session's input).
    pub(crate) async fn finish(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str) -> NativeEndpoint {
        parse(addr).expect("a native scheme").expect("valid")
    }

    fn bad(addr: &str) -> String {
        parse(addr)
            .expect("a native scheme")
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn addresses_parse() {
        assert!(parse("http://127.0.0.1:7422").is_none());
        assert!(parse("127.0.0.1:7422").is_none());
        let e = ep("nexus+tcp://127.0.0.1:7500");
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 7500, false));
        let e = ep("NEXUS+TLS://gw.example/");
        assert_eq!((e.host.as_str(), e.port, e.tls), ("gw.example", 7422, true));
        let e = ep("nexus+tcp://[::1]:9");
        assert_eq!((e.host.as_str(), e.port), ("::1", 9));
        assert_eq!(ep("nexus+tcp://[::1]").port, 7422);
    }

    #[test]
    fn bad_addresses_are_named() {
        assert!(bad("nexus+tcp://").contains("host is missing"));
        assert!(bad("nexus+tcp://h:0").contains("is not a port"));
        assert!(bad("nexus+tcp://h:http").contains("is not a port"));
        assert!(bad("nexus+tcp://h:1/x").contains("without a path"));
        assert!(bad("nexus+tcp://u@h:1").contains("user information"));
        assert!(bad("nexus+tcp://[::1").contains("closing ']'"));
        assert!(bad("nexus+tcp://h:1?a=b").contains("without a path, query"));
    }
}
