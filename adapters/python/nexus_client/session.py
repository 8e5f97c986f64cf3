"""One gRPC ``Session`` call with one gateway: opening it (Hello, then Welcome within the
connect timeout), mapping a refused call to the adapter's errors, and the frame helpers the
client uses."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable

import grpc
import grpc.aio

from ._proto import gateway_pb2 as pb
from .discovery import Endpoint
from .errors import (
    ConnectError,
    DeniedError,
    InvalidError,
    LimitError,
    NexusError,
    ProtocolError,
    UnavailableError,
    from_error,
)
from .message import ServerInfo

SESSION_METHOD = "/nexus.v1.Gateway/Session"
#: Large enough for the gateway's transport message limit with any max_payload up to 32 MiB.
MAX_MESSAGE = 64 * 1024 * 1024

BatchCall = grpc.aio.StreamStreamCall[pb.Batch, pb.Batch]


def new_id() -> bytes:
    """A fresh message id: a 16-byte ULID (48-bit milliseconds, 80 random bits)."""
    ms = int(time.time() * 1000) & ((1 << 48) - 1)
    return ms.to_bytes(6, "big") + os.urandom(10)


def wire_headers(pairs: Iterable[tuple[str, str]]) -> list[pb.Header]:
    """Header pairs as protocol ``Header`` messages."""
    return [pb.Header(key=k, value=v) for k, v in pairs]


def as_bytes(p: bytes | bytearray | memoryview | str | None) -> bytes:
    """A payload as bytes (text is UTF-8 encoded)."""
    if p is None:
        return b""
    return p.encode() if isinstance(p, str) else bytes(p)


def sub_frame(sid: int, subject: str, queue: str, ack_id: int) -> pb.Frame:
    """A ``Sub`` frame."""
    return pb.Frame(sub=pb.Sub(sid=sid, subject=subject, queue_group=queue, ack_id=ack_id))


class TlsSettings:
    """TLS of a session: the CA to trust (``None``: the system's), an optional client
    certificate, and the name to verify instead of the address's host."""

    def __init__(self, root: bytes | None, chain: bytes | None, key: bytes | None, server_name: str | None) -> None:
        self.credentials = grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=chain
        )
        self.server_name = server_name

    @staticmethod
    def load(ca: str | None, cert: str | None, key: str | None, server_name: str | None) -> TlsSettings:
        """Reads the files; a missing one is a :class:`ConnectError` naming it."""

        def read(path: str | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise ConnectError(f"cannot read the {what} file {path}: {e.strerror}") from None

        return TlsSettings(read(ca, "CA"), read(cert, "client certificate"), read(key, "client key"), server_name)


class Session:
    """An open session: the channel, the call, what the gateway said in Welcome, and the
    frames that arrived together with the Welcome."""

    def __init__(
        self, endpoint: Endpoint, channel: grpc.aio.Channel, call: BatchCall, info: ServerInfo, pending: list[pb.Frame]
    ) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.call = call
        self.info = info
        self.pending_frames = pending
        self.tasks: list[asyncio.Task[None]] = []
        self.done = asyncio.Event()
        #: Set when the gateway sent ``GoAway`` (docs/protocol.md section 3.4): the session
        #: only finishes what is on it, and the client moves to another gateway.
        self.going_away = False
        #: Requests delivered on this session and not answered yet: ``reply_to`` -> the
        #: monotonic time after which the requester no longer waits. A moving client keeps
        #: the session until these are answered, so the replies go out on it.
        self.served: dict[str, float] = {}

    def served_pending(self) -> bool:
        """Whether a request delivered on this session still waits for its answer (entries
        past their deadline are dropped: the requester gave up on them)."""
        now = time.monotonic()
        for reply_to in [r for r, until in self.served.items() if until <= now]:
            del self.served[reply_to]
        return bool(self.served)


async def open_session(
    ep: Endpoint, hello: pb.Hello, subs: list[pb.Frame], connect_timeout: float, tls: TlsSettings | None = None
) -> Session:
    """Opens a session with ``ep``: Hello plus the subscriptions to re-create, then waits
    for Welcome, over TLS when ``tls`` is given. Raises the adapter error that says why the
    gateway refused."""
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.enable_retries", 0),
        # A channel of its own per session: gRPC's global subchannel pool would otherwise hand
        # a new channel the old subchannel of a gateway that died, still in gRPC's connection
        # backoff (up to 2 min), so a gateway that came back is refused at once ("Connection
        # refused") by every new session until the backoff ends. The client has its own backoff.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if tls is None:
        channel = grpc.aio.insecure_channel(ep.address, options=options)
    else:
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel = grpc.aio.secure_channel(ep.address, tls.credentials, options=options)
    try:
        call: BatchCall = channel.stream_stream(
            SESSION_METHOD, request_serializer=pb.Batch.SerializeToString, response_deserializer=pb.Batch.FromString
        )()  # type: ignore[assignment]
        try:
            await asyncio.wait_for(call.write(pb.Batch(frames=[pb.Frame(hello=hello), *subs])), connect_timeout)
            first = await asyncio.wait_for(call.read(), connect_timeout)
        except asyncio.TimeoutError:
            raise ConnectError(f"{ep.address}: no Welcome within {connect_timeout}s") from None
        except grpc.aio.AioRpcError as e:
            raise status_error(e.code(), e.details(), ep.address) from None
        if first is grpc.aio.EOF or not isinstance(first, pb.Batch):
            code, details = await call.code(), await call.details()
            raise status_error(code, details, ep.address)
        welcome: pb.Welcome | None = None
        rest: list[pb.Frame] = []
        for f in first.frames:
            kind = f.WhichOneof("kind")
            if kind == "welcome" and welcome is None:
                welcome = f.welcome
            elif kind == "error" and welcome is None:
                raise from_error(f.error)
            else:
                rest.append(f)
        if welcome is None:
            raise ProtocolError("the first frame from the gateway was not Welcome")
    except BaseException:
        await channel.close()
        raise
    info = ServerInfo(
        welcome.gateway_id,
        welcome.region,
        welcome.session_id,
        welcome.max_payload,
        welcome.max_subscriptions,
        ep.address,
        tuple(welcome.encodings),
    )
    return Session(ep, channel, call, info, rest)


def status_error(code: grpc.StatusCode | None, details: str | None, address: str) -> NexusError:
    """The adapter error for a session call the gateway ended with a gRPC status."""
    details = details or ""
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return DeniedError(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidError(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ProtocolError(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return LimitError(details)
    if code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details:
        return UnavailableError(details)
    return ConnectError(f"{address}: {code.name if code else 'closed'}: {details}")
