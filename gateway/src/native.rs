//! The native transport on the adapter listener (docs/protocol.md §1.1): the session's batches
//! length-prefixed over the connection itself, beside gRPC on the same port.
//!
//! Every accepted connection (after its TLS handshake, when the listener has TLS) is
//! *sniffed*: its first byte tells an adapter's native [`PREFACE`] (`N`) from an HTTP/2
//! client's (`P`). HTTP/2 connections go on to tonic with the bytes read so far put back in
//! front ([`Sniffed`]); native ones become a session here: the connection's task reads records
//! and runs the same [`Session`](crate::session::Session) a gRPC `Session` call runs, and a
//! writer task writes the session's outbound batches, already encoded, behind a 4-byte header.
//! The close status a gRPC session ends with is sent as a close record.
//!
//! What a connection costs before it is a session is bounded as for gRPC: the transport budget
//! admitted it and its idle timer closes it if it sends nothing (`crate::transport`); sniffing
//! runs in the connection's own task, so a silent client holds nobody else up.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use futures::{Stream, StreamExt};
use nexus_proto::native::{self, PREFACE, Preface, Record, RecordReader};
use nexus_proto::v1;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::server::{Connected, TlsConnectInfo};

use crate::policy::ClientCert;
use crate::service::GatewayService;
use crate::transport::ConnInfo;

/// The peer a connection's `Connected` info describes: its transport state and, over TLS,
/// the client certificate it presented.
pub trait Peer {
    fn conn_info(&self) -> Option<&ConnInfo>;
    fn client_cert(&self) -> Option<Arc<ClientCert>>;
}

impl Peer for ConnInfo {
    fn conn_info(&self) -> Option<&ConnInfo> {
        Some(self)
    }
    fn client_cert(&self) -> Option<Arc<ClientCert>> {
        None
    }
}

impl Peer for TlsConnectInfo<ConnInfo> {
    fn conn_info(&self) -> Option<&ConnInfo> {
        Some(self.get_ref())
    }
    fn client_cert(&self) -> Option<Arc<ClientCert>> {
        let certs = self.peer_certs()?;
        certs.first().map(|c| Arc::new(ClientCert::from_der(c)))
    }
}

/// A connection handed to tonic, with the bytes sniffing read put back in front.
pub struct Sniffed<IO> {
    io: IO,
    start: BytesMut,
}

impl<IO: Connected> Connected for Sniffed<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniffed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.start.len().min(buf.remaining());
        buf.put_slice(&this.start[..n]);
        this.start.advance(n);
        if this.start.is_empty() {
            this.start = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

crate::transport::delegate_async_write!(impl[IO: AsyncWrite + Unpin] Sniffed<IO>);

/// What serving native sessions needs.
#[derive(Clone)]
pub struct NativeSessions {
    pub service: GatewayService,
    /// The largest record accepted: the same limit as one gRPC message.
    pub max_record: usize,
    pub close_all: CancellationToken,
}

/// Sniffs each connection of `incoming` (see the module docs): native sessions are served
/// here, and the rest come out of the returned stream for tonic, until `stop`.
pub fn dispatch<IO, E>(
    incoming: impl Stream<Item = Result<IO, E>> + Send + 'static,
    native: NativeSessions,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Sniffed<IO>, io::Error>> + Send + 'static
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Peer,
    E: std::fmt::Display + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Sniffed<IO>>(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = incoming.next() => next,
            };
            let io = match next {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "connection not accepted");
                    continue;
                }
                None => return,
            };
            let tx = tx.clone();
            let native = native.clone();
            tokio::spawn(async move {
                match sniff(io).await {
                    Ok(Sniff::Grpc(io)) => {
                        let _ = tx.send(io).await;
                    }
                    Ok(Sniff::Native(io, rest)) => native.serve(io, rest).await,
                    Ok(Sniff::Refused(mut io, why)) => {
                        tracing::debug!(reason = %why, "native connection refused");
                        close(&mut io, &Status::invalid_argument(why)).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "connection closed before its first bytes")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

enum Sniff<IO> {
    Grpc(Sniffed<IO>),
    /// A native connection and what was read after its preface.
    Native(IO, BytesMut),
    Refused(IO, String),
}

/// Reads until the first bytes tell what the connection is.
async fn sniff<IO: AsyncRead + Unpin>(mut io: IO) -> io::Result<Sniff<IO>> {
    let mut start = BytesMut::with_capacity(64);
    loop {
        match native::classify(&start) {
            Preface::Incomplete => {}
            Preface::Other => return Ok(Sniff::Grpc(Sniffed { io, start })),
            Preface::Native => {
                start.advance(PREFACE.len());
                return Ok(Sniff::Native(io, start));
            }
            Preface::Unsupported(why) => return Ok(Sniff::Refused(io, why)),
        }
        if tokio::io::AsyncReadExt::read_buf(&mut io, &mut start).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed inside the preface",
            ));
        }
    }
}

/// Writes a close record with `status` and ends the connection.
async fn close<W: AsyncWrite + Unpin>(io: &mut W, status: &Status) {
    let mut buf = BytesMut::new();
    native::encode_close(status.code() as i32, status.message(), &mut buf);
    let _ = io.write_all(&buf).await;
    let _ = io.shutdown().await;
}

impl NativeSessions {
    /// Runs one native session on `io` until it ends; `start` holds the bytes read after the
    /// preface.
    async fn serve<IO>(self, io: IO, start: BytesMut)
    where
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Peer,
    {
        let peer = io.connect_info();
        let (read, mut write) = tokio::io::split(io);
        let opened = self
            .service
            .open_session(peer.conn_info(), peer.client_cert());
        let (session, outbound) = match opened {
            Ok(opened) => opened,
            Err(status) => {
                close(&mut write, &status).await;
                return;
            }
        };
        self.service.router.metrics.native_sessions_total.inc();
        tokio::spawn(write_outbound(write, outbound));
        let inbound = Inbound {
            reader: RecordReader::new(read, start, self.max_record),
            done: false,
        };
        session.run(inbound, self.close_all).await;
    }
}

/// Writes the session's batches until its stream ends, then its close status, if any.
async fn write_outbound<W: AsyncWrite + Unpin>(
    mut io: W,
    mut outbound: crate::outbound::OutboundStream,
) {
    let mut scratch = BytesMut::new();
    while let Some(next) = outbound.next().await {
        let batch = match next {
            Ok(batch) => batch,
            Err(status) => {
                close(&mut io, &status).await;
                return;
            }
        };
        if let Err(e) = native::write_batch(&mut io, &batch, &mut scratch).await {
            tracing::debug!(error = %e, "native connection: write failed");
            return;
        }
        if scratch.capacity() > crate::outbound::WHOLE_FRAME_PAYLOAD * 8 {
            scratch = BytesMut::new();
        }
        if io.flush().await.is_err() {
            return;
        }
    }
    let _ = io.shutdown().await;
}

/// A native connection's records as the session's input stream.
struct Inbound<R> {
    reader: RecordReader<R>,
    done: bool,
}

impl<R: AsyncRead + Unpin> Stream for Inbound<R> {
    type Item = Result<v1::Batch, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let record = match this.reader.poll_next_record(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(record) => record,
        };
        let item = match record {
            // Decoded frame by frame as the session applies them (`Session::apply_batch`).
            Ok(Some(Record::Batch(bytes))) => {
                return Poll::Ready(Some(Ok(v1::Batch {
                    frames: Vec::new(),
                    encoded: bytes,
                })));
            }
            Ok(Some(Record::Close { .. })) => Status::invalid_argument(
                "adapters do not send close records; end the session by closing the connection",
            ),
            Ok(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Err(native::RecordError::TooLarge { len, max }) => Status::out_of_range(format!(
                "a record of {len} bytes is larger than the gateway accepts ({max} bytes)"
            )),
            Err(e) => Status::invalid_argument(e.to_string()),
        };
        this.done = true;
        Poll::Ready(Some(Err(item)))
    }
}
