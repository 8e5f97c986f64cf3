"""The client: one long-lived gRPC session with a gateway, batching, reconnection and the
public asyncio API (publish, subscribe, request, serve, streams, drain).

All outgoing frames go through one bounded queue drained by one writer task, which sends
every frame already queued as one ``Batch`` (docs/protocol.md section 15.1): no timer, so a
lone frame leaves at once and batches grow by themselves under load. A full queue makes
``publish`` wait, so HTTP/2 backpressure reaches the application.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc.aio

from . import compression
from ._proto import gateway_pb2 as pb
from .discovery import Target
from .errors import (
    ClosedError,
    DisconnectedError,
    DiscoveryError,
    LimitError,
    NexusError,
    NoGatewayError,
    RequestTimeoutError,
    from_error,
)
from .headers import (
    SPAN_HEADER,
    TRACEPARENT,
    HeadersLike,
    get_header,
    is_forced,
    span_id,
    span_report,
    to_pairs,
    with_traceparent,
)
from .message import Message, ServerInfo
from .options import ClientOptions
from .session import Session, TlsSettings, as_bytes, new_id, open_session, sub_frame, wire_headers
from .stream import BiStream, StreamListener
from .subject import validate_pattern, validate_publish_subject
from .subscription import END, Handler, Service, Subscription

__version__ = "0.2.0"

T = TypeVar("T")
Payload = bytes | bytearray | memoryview | str

log = logging.getLogger("nexus_client")

#: How long before a draining gateway's ``drain_ms`` runs out a moving client ends the
#: session at the latest (at most half of ``drain_ms``), so that it is not cut.
GOAWAY_MARGIN = 0.5


def drain_window(drain_ms: int) -> float:
    """Seconds a client keeps a session after ``GoAway{drain_ms}`` to let what is in flight
    finish: ``drain_ms`` minus :data:`GOAWAY_MARGIN`, but at least half of ``drain_ms``."""
    total = max(0, drain_ms) / 1000.0
    return max(total - GOAWAY_MARGIN, total / 2)


class _Out:
    """A queued frame; plain publishes survive a reconnect, everything else is per session.
    With ``end_of`` set it is no frame but the point where the writer of that session
    half-closes it (a move after ``GoAway``): everything queued before still goes out on it."""

    __slots__ = ("end_of", "frame", "plain_pub", "size")

    def __init__(self, frame: pb.Frame, size: int, plain_pub: bool, end_of: Session | None = None) -> None:
        self.frame, self.size, self.plain_pub, self.end_of = frame, size, plain_pub, end_of


class _AckTimeout(DisconnectedError):
    """No Ack in time while the session stayed up: not retried (the gateway may be stuck)."""


class Client:
    """A connection to a Nexus gateway. Create it with ``await Client.connect(url)``.

    ``url`` is ``http://host:port`` (or ``host:port``), ``https://host:port`` (TLS) or a
    discovery name
    ``nexus+srv://<region>.<zone>[?dns=ip:port]``. Also an async context manager that
    drains on exit.
    """

    def __init__(self, url: str, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        o = self.options
        self._target = Target(url, o.dns_server, o.tls)
        self.request_timeout = o.request_timeout
        self._ids = itertools.count(1)
        self._out: asyncio.Queue[_Out] = asyncio.Queue(maxsize=o.outbound_capacity)
        self._subs: dict[int, Subscription] = {}
        self._listeners: dict[int, StreamListener] = {}
        self._acks: dict[int, asyncio.Future[int]] = {}
        self._reqs: dict[int, asyncio.Future[pb.Reply]] = {}
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._streams: dict[int, BiStream] = {}
        self._services: list[Service] = []
        self._session: Session | None = None
        #: Set while a session takes new work: cleared while reconnecting and while moving
        #: away from a draining gateway (operations started then wait for the next session).
        self._connected = asyncio.Event()
        self._closed = False
        self._closed_event = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._last_error: BaseException | None = None

    # === connecting ===

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        name: str = "",
        request_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        dns_server: str | None = None,
        reconnect_backoff: tuple[float, float] = (0.1, 5.0),
        max_batch_frames: int = 256,
        max_batch_bytes: int = 256 * 1024,
        outbound_capacity: int = 1024,
        subscription_capacity: int = 1024,
        stream_window: int = 256,
        max_concurrent_handlers: int = 64,
        publish_retry_timeout: float = 30.0,
        local_payload_check: bool = True,
        compression: str | None = "zstd",
        compression_threshold: int = 1024,
        tls: bool = False,
        tls_ca_file: str | None = None,
        tls_client_cert_file: str | None = None,
        tls_client_key_file: str | None = None,
        tls_server_name: str | None = None,
        options: ClientOptions | None = None,
    ) -> Client:
        """Connects (trying every discovered gateway) and returns the client.

        The keyword arguments are the fields of :class:`ClientOptions` (documented there);
        ``options`` passes a whole :class:`ClientOptions` instead. Raises
        :class:`DeniedError` for a refused API key, :class:`DiscoveryError`,
        :class:`NoGatewayError` or :class:`ConnectError` when no gateway accepted.
        """
        if options is None:
            extra = {} if api_key is None else {"api_key": api_key}
            options = ClientOptions(
                name=name,
                request_timeout=request_timeout,
                connect_timeout=connect_timeout,
                dns_server=dns_server,
                reconnect_backoff=reconnect_backoff,
                max_batch_frames=max_batch_frames,
                max_batch_bytes=max_batch_bytes,
                outbound_capacity=outbound_capacity,
                subscription_capacity=subscription_capacity,
                stream_window=stream_window,
                max_concurrent_handlers=max_concurrent_handlers,
                publish_retry_timeout=publish_retry_timeout,
                local_payload_check=local_payload_check,
                compression=compression,
                compression_threshold=compression_threshold,
                tls=tls,
                tls_ca_file=tls_ca_file,
                tls_client_cert_file=tls_client_cert_file,
                tls_client_key_file=tls_client_key_file,
                tls_server_name=tls_server_name,
                **extra,
            )
        client = cls(url, options)
        session = await client._connect_round()
        client._start(session)
        client._supervisor = asyncio.create_task(client._supervise())
        return client

    def _tls(self) -> TlsSettings | None:
        """The TLS settings of this client's sessions, or ``None`` for plaintext."""
        if not self._target.tls:
            return None
        o = self.options
        return TlsSettings.load(o.tls_ca_file, o.tls_client_cert_file, o.tls_client_key_file, o.tls_server_name)

    async def _connect_round(self) -> Session:
        endpoints = await self._target.endpoints()
        cached = not self._target.resolved_now
        attempts: list[tuple[str, str]] = []
        last: NexusError | None = None
        o = self.options
        hello = pb.Hello(
            api_key=o.api_key,
            client_name=o.name,
            language="python",
            version=__version__,
            protocol=1,
            encodings=compression.available(),
        )
        tried: set[str] = set()
        while True:
            for ep in endpoints:
                tried.add(ep.address)
                subs = [sub_frame(s.sid, s.subject, s.queue_group, 0) for s in self._subs.values()]
                subs += [sub_frame(sid, li.subject, li.queue_group, 0) for sid, li in self._listeners.items()]
                try:
                    return await open_session(ep, hello, subs, o.connect_timeout, self._tls())
                except NexusError as e:
                    attempts.append((f"{ep.name} ({ep.address})", str(e)))
                    last = e
                    self._target.demote(ep.name)
            if not (self._target.is_srv and cached):
                break
            # Every gateway of a cached answer failed: the answer may be older than the
            # gateways that live now (e.g. one taken while the gateway that just died was the
            # only one up). Ask DNS again at once, and try what it adds, before backing off.
            cached = False
            self._target.forget()
            try:
                endpoints = [ep for ep in await self._target.endpoints() if ep.address not in tried]
            except DiscoveryError:
                break
        if self._target.is_srv:
            self._target.forget()
            if last is not None and all("denied" in why.lower() or "api key" in why.lower() for _, why in attempts):
                raise last
            raise NoGatewayError(self._target.url, attempts)
        assert last is not None
        raise last

    def _start(self, session: Session) -> None:
        # Frames queued for an earlier session would carry stale ids; plain publishes are
        # the exception and are sent on the new session.
        kept = []
        while not self._out.empty():
            item = self._out.get_nowait()
            if self._still_wanted(item):
                kept.append(item)
        for item in kept:
            self._out.put_nowait(item)
        self._session = session
        session.tasks = [asyncio.create_task(self._writer(session)), asyncio.create_task(self._reader(session))]
        self._connected.set()

    def _still_wanted(self, item: _Out) -> bool:
        """Whether a queued frame can go on a new session: plain publishes, and operations
        queued after the old session was failed whose callers still wait."""
        if item.end_of is not None:
            return False
        if item.plain_pub:
            return True
        f = item.frame
        kind = f.WhichOneof("kind")
        if kind == "req":
            return f.req.req_id in self._reqs
        if kind == "ping":
            return f.ping.nonce in self._pings
        if kind == "pub":
            return f.pub.ack_id in self._acks
        if kind == "stream_open":
            return f.stream_open.stream_id in self._streams
        return False

    async def _supervise(self) -> None:
        lo, hi = self.options.reconnect_backoff
        while not self._closed:
            session = self._session
            moving = False
            if session is not None:
                await session.done.wait()
                moving = session.going_away
                await self._end_session(session, DisconnectedError("disconnected from the gateway"))
                self._target.demote(session.endpoint.name)
            delay = lo
            while not self._closed:
                # A move after GoAway connects at once; backoff is for gateways that failed.
                if not moving:
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                moving = False
                try:
                    session = await self._connect_round()
                    break
                except NexusError as e:
                    self._last_error = e
                    delay = min(delay * 2, hi)
            else:
                return
            self._start(session)

    async def _end_session(self, session: Session, err: NexusError) -> None:
        self._connected.clear()
        if self._session is session:
            self._session = None
        for t in session.tasks:
            t.cancel()
        session.call.cancel()
        await session.channel.close()
        tables: list[dict[int, Any]] = [self._acks, self._reqs, self._pings]
        for table in tables:
            for fut in table.values():
                if not fut.done():
                    fut.set_exception(err)
                    fut.exception()
            table.clear()
        for s in list(self._streams.values()):
            s._fail(err)
        self._streams.clear()

    # === the session's tasks ===

    async def _writer(self, session: Session) -> None:
        o = self.options
        try:
            while True:
                item = await self._out.get()
                if item.end_of is not None:
                    if item.end_of is session:
                        await session.call.done_writing()
                        return
                    continue  # the end of an earlier session, which is over already
                frames, size = [item.frame], item.size
                end = False
                while len(frames) < o.max_batch_frames and size < o.max_batch_bytes:
                    try:
                        nxt = self._out.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    if nxt.end_of is not None:
                        end = nxt.end_of is session
                        if end:
                            break
                        continue
                    frames.append(nxt.frame)
                    size += nxt.size
                accepted = list(session.info.encodings)
                if o.compression is not None and accepted:
                    for f in frames:
                        compression.encode_frame(f, o.compression, accepted, o.compression_threshold)
                await session.call.write(pb.Batch(frames=frames))
                if end:
                    await session.call.done_writing()
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            session.done.set()

    async def _reader(self, session: Session) -> None:
        try:
            for f in session.pending_frames:
                await self._dispatch(f, session)
            while True:
                batch = await session.call.read()
                if batch is grpc.aio.EOF or not isinstance(batch, pb.Batch):
                    break
                for f in batch.frames:
                    await self._dispatch(f, session)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._last_error = e
        session.done.set()

    async def _dispatch(self, f: pb.Frame, session: Session) -> None:
        kind = f.WhichOneof("kind")
        if kind == "msg":
            m = f.msg
            sub = self._subs.get(m.sid)
            if sub is None or not sub.accepts:
                return
            try:
                compression.decode_in_place(m, session.info.max_payload)
            except compression.CompressionError as e:
                log.warning("nexus: dropped a message on %s, undecodable compressed payload: %s", m.subject, e)
                return
            if m.reply_to and m.deadline_ms:
                # A request (docs/protocol.md section 7.3): its answer is owed on this session.
                session.served[m.reply_to] = time.monotonic() + m.deadline_ms / 1000.0
            msg = Message(
                m.subject, m.payload, [(h.key, h.value) for h in m.headers], m.reply_to, m.id, m.sid, m.deadline_ms
            )
            # A full buffer stops this reader (backpressure to the gateway) until the
            # application reads, or unsubscribes.
            while sub.accepts:
                try:
                    await asyncio.wait_for(sub._queue.put(msg), 0.1)
                    return
                except asyncio.TimeoutError:
                    continue
        elif kind == "reply":
            if not f.reply.HasField("error"):
                try:
                    compression.decode_in_place(f.reply, session.info.max_payload)
                except compression.CompressionError as e:
                    f.reply.payload = b""
                    f.reply.error.CopyFrom(
                        pb.Error(
                            code=pb.SERVICE_ERROR,
                            message=f"the reply's compressed payload cannot be decoded: {e}",
                            ref_id=f.reply.req_id,
                        )
                    )
            _settle(self._reqs.pop(f.reply.req_id, None), f.reply)
        elif kind == "ack":
            _settle(self._acks.pop(f.ack.ack_id, None), f.ack.delivered)
        elif kind == "nack":
            fut = self._acks.pop(f.nack.ack_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(from_error(f.nack.error))
        elif kind == "pong":
            _settle(self._pings.pop(f.pong.nonce, None), None)
        elif kind == "error":
            self._on_error(f.error)
        elif kind == "stream_open":
            self._on_stream_open(f.stream_open)
        elif kind == "stream_data":
            s = self._streams.get(f.stream_data.stream_id)
            if s is not None:
                try:
                    compression.decode_in_place(f.stream_data, session.info.max_payload)
                except compression.CompressionError as e:
                    log.warning("nexus: dropped stream data whose compressed payload cannot be decoded: %s", e)
                    return
                s._on_data(f.stream_data)
        elif kind == "credit":
            s = self._streams.get(f.credit.stream_id)
            if s is not None:
                s._on_credit(f.credit.credits)
        elif kind == "stream_close":
            s = self._streams.get(f.stream_close.stream_id)
            if s is not None:
                s._on_close(f.stream_close)
        elif kind == "go_away":
            self._on_go_away(session, f.go_away)

    # === moving away from a draining gateway (docs/protocol.md section 3.4) ===

    @property
    def _accepting(self) -> bool:
        """Whether new work (requests, confirmed publishes, subscribes, stream opens,
        flushes) may start now: a session is open and its gateway is not draining."""
        return self._session is not None and not self._session.going_away

    async def _wait_accepting(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for a session that takes new work (after a
        reconnect or a move); False when the time ran out. Raises :class:`ClosedError` when
        the client is closed meanwhile, so that nothing waits on a closed client."""
        deadline = time.monotonic() + timeout
        while not self._accepting:
            if self._closed:
                raise ClosedError("client closed")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            waits = [asyncio.ensure_future(self._connected.wait()), asyncio.ensure_future(self._closed_event.wait())]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        return True

    def _on_go_away(self, session: Session, g: pb.GoAway) -> None:
        """The gateway of ``session`` drains: stop starting work on it, demote it, and start
        the move (once per session)."""
        if session.going_away or self._session is not session:
            return
        session.going_away = True
        self._connected.clear()
        self._target.demote(session.endpoint.name)
        window = drain_window(g.drain_ms)
        log.info(
            "gateway %s (%s) is draining (%s; drain_ms=%d): moving to another gateway within %.1fs",
            session.info.gateway_id,
            session.endpoint.address,
            g.reason or "no reason given",
            g.drain_ms,
            window,
        )
        session.tasks.append(asyncio.get_running_loop().create_task(self._move(session, window)))

    def _session_idle(self, session: Session) -> bool:
        """Whether nothing started on ``session`` waits for an answer: no request, Ack or
        Pong outstanding, and no request delivered on it waits for our reply."""
        return not (self._reqs or self._acks or self._pings or session.served_pending())

    async def _move(self, session: Session, window: float) -> None:
        """Lets ``session`` finish what is in flight for up to ``window`` seconds, then
        half-closes it after every frame already queued. The supervisor sees the session
        end, fails what is still unanswered (confirmed publishes are retried) and connects
        to another gateway at once."""
        deadline = time.monotonic() + window
        while not self._session_idle(session) and time.monotonic() < deadline:
            # Re-checked every 10 ms; a session that ends meanwhile needs no more moving.
            try:
                await asyncio.wait_for(session.done.wait(), 0.01)
                return
            except asyncio.TimeoutError:
                pass
        if self._session_idle(session):
            log.info("gateway %s: nothing in flight any more, ending the session", session.info.gateway_id)
        else:
            log.warning(
                "gateway %s: drain window over with work still unanswered; ending the session "
                "(it is handled as on a lost session)",
                session.info.gateway_id,
            )
        await self._out.put(_Out(pb.Frame(), 0, False, end_of=session))
        # The gateway ends the session as soon as it sees the half-close; should that not
        # happen (a writer stuck behind HTTP/2 flow control), give up on the session.
        try:
            await asyncio.wait_for(session.done.wait(), max(1.0, deadline - time.monotonic()) + 1.0)
        except asyncio.TimeoutError:
            log.warning(
                "gateway %s: the session did not end after the half-close; dropping it", session.info.gateway_id
            )
            session.done.set()

    def _on_error(self, e: pb.Error) -> None:
        ref = e.ref_id
        if ref in self._acks:
            fut = self._acks.pop(ref)
            if not fut.done():
                fut.set_exception(from_error(e))
        elif ref in self._streams:
            self._streams[ref]._fail(from_error(e))
        elif ref in self._subs:
            if e.code == pb.SLOW_CONSUMER:
                self._subs[ref].dropped += 1
            else:
                self._subs.pop(ref)._end()
        elif e.code in (pb.DENIED, pb.UNAVAILABLE):
            self._last_error = from_error(e)

    def _on_stream_open(self, o: pb.StreamOpen) -> None:
        listener = self._listeners.get(o.sid)
        s = BiStream(
            self, o.stream_id, o.subject, [(h.key, h.value) for h in o.headers], o.credits, self.options.stream_window
        )
        s.opened.set_result(None)
        if listener is None:
            s.abort("not listening for streams on this subscription")
            return
        self._streams[o.stream_id] = s
        self._enqueue_nowait(pb.Frame(credit=pb.Credit(stream_id=o.stream_id, credits=self.options.stream_window)))
        listener._queue.put_nowait(s)

    # === queueing frames ===

    async def _enqueue(self, frame: pb.Frame, size: int = 64, plain_pub: bool = False) -> None:
        if self._closed:
            raise ClosedError("client closed")
        await self._out.put(_Out(frame, size, plain_pub))

    def _enqueue_nowait(self, frame: pb.Frame) -> None:
        """For small control frames sent from callbacks; never waits."""
        if not self._closed:
            try:
                self._out.put_nowait(_Out(frame, 64, False))
            except asyncio.QueueFull:
                asyncio.get_running_loop().create_task(self._out.put(_Out(frame, 64, False)))

    def _check_payload(self, data: bytes) -> None:
        s = self._session
        if self.options.local_payload_check and s is not None and s.info.max_payload and len(data) > s.info.max_payload:
            raise LimitError(f"payload of {len(data)} bytes exceeds limits.max_payload ({s.info.max_payload} bytes)")

    async def _await_ack(self, frame_for: Callable[[int], pb.Frame], size: int) -> int:
        ack_id = next(self._ids)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = fut
        try:
            await self._enqueue(frame_for(ack_id), size)
            return await asyncio.wait_for(fut, self.request_timeout + 1.0)
        except asyncio.TimeoutError:
            raise _AckTimeout("no acknowledgement from the gateway") from None
        finally:
            self._acks.pop(ack_id, None)

    async def _publish_confirmed(self, pub: pb.Pub, size: int) -> int:
        """Sends ``pub`` with an ack id and waits for the gateway's answer. When the session
        is lost first, sends it again on the next session, with the same message id, until
        ``publish_retry_timeout`` runs out (the gateway de-duplicates by id)."""
        budget = self.options.publish_retry_timeout
        start = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                if budget > 0 and not self._accepting:
                    left = budget - (time.monotonic() - start)
                    if not await self._wait_accepting(max(left, 0.001)):
                        raise asyncio.TimeoutError

                def frame(ack_id: int) -> pb.Frame:
                    f = pb.Frame(pub=pub)
                    f.pub.ack_id = ack_id
                    return f

                return await self._await_ack(frame, size)
            except _AckTimeout:
                raise
            except (DisconnectedError, asyncio.TimeoutError) as e:
                if self._closed:
                    raise ClosedError("client closed") from e
                elapsed = time.monotonic() - start
                if budget <= 0 or elapsed >= budget:
                    why = (
                        "retrying is off (publish_retry_timeout=0)"
                        if budget <= 0
                        else f"gave up after {attempts} attempt(s) in {elapsed:.1f}s (publish_retry_timeout={budget}s)"
                    )
                    raise DisconnectedError(
                        f"publish to {pub.subject!r} not confirmed: the session was lost before the "
                        f"gateway's answer and {why}; message id {pub.id.hex()} may or may not have "
                        "been delivered"
                    ) from e

    # === public API ===

    @property
    def is_connected(self) -> bool:
        """True while a session with a gateway is open."""
        return self._session is not None

    @property
    def server_info(self) -> ServerInfo | None:
        """The gateway in use, or ``None`` while reconnecting."""
        return self._session.info if self._session else None

    async def publish(
        self,
        subject: str,
        payload: Payload = b"",
        *,
        headers: HeadersLike = None,
        reply_to: str = "",
        ack: bool = False,
    ) -> int | None:
        """Publishes a message.

        Without ``ack`` it returns once queued (a publish still queued when the session
        breaks is sent on the next one; one already sent is not repeated). With ``ack=True``
        it waits for the gateway and returns how many subscriptions received it; if the
        session breaks first it is sent again with the same message id (see
        :attr:`ClientOptions.publish_retry_timeout`).
        """
        validate_publish_subject(subject)
        data = as_bytes(payload)
        self._check_payload(data)
        hdrs = with_traceparent(to_pairs(headers))
        size = 64 + len(data) + len(subject)
        pub = pb.Pub(subject=subject, reply_to=reply_to, headers=wire_headers(hdrs), payload=data, id=new_id())
        if ack:
            return await self._publish_confirmed(pub, size)
        await self._enqueue(pb.Frame(pub=pub), size, plain_pub=True)
        return None

    async def subscribe(self, subject: str, queue: str = "") -> Subscription:
        """Subscribes to a pattern (``*`` one token, trailing ``>`` the rest); with ``queue``
        each message goes to one member of the group. Waits for the gateway's Ack."""
        validate_pattern(subject)
        sid = next(self._ids)
        sub = Subscription(self, sid, subject, queue, self.options.subscription_capacity)
        self._subs[sid] = sub
        await self._confirm_sub(sid, subject, queue)
        return sub

    async def queue_subscribe(self, subject: str, queue: str) -> Subscription:
        """A queue subscription: each message goes to exactly one member of ``queue``."""
        return await self.subscribe(subject, queue)

    async def _confirm_sub(self, sid: int, subject: str, queue: str) -> None:
        if not self._accepting:
            return  # sent with the other subscriptions on the next session
        try:
            await self._await_ack(lambda a: sub_frame(sid, subject, queue, a), 64)
        except DisconnectedError:
            pass  # re-sent on the next session
        except NexusError:
            self._subs.pop(sid, None)
            self._listeners.pop(sid, None)
            raise

    async def _unsubscribe(self, sid: int) -> None:
        sub = self._subs.pop(sid, None)
        self._listeners.pop(sid, None)
        if sub is not None:
            sub._end()
        if self.is_connected and not self._closed:
            await self._enqueue(pb.Frame(unsub=pb.Unsub(sid=sid)))

    async def _drain_sub(self, sub: Subscription) -> None:
        if sub._closed:
            return
        sub._closed = sub._draining = True
        try:
            if self._accepting and not self._closed:
                await self._enqueue(pb.Frame(unsub=pb.Unsub(sid=sub.sid)))
                # The Pong comes after every Msg the gateway queued before it took the Unsub.
                await self.flush()
        except NexusError:
            pass  # the session is gone, and with it anything still in flight
        finally:
            self._subs.pop(sub.sid, None)
            sub._end()

    async def request(
        self, subject: str, payload: Payload = b"", *, headers: HeadersLike = None, timeout: float | None = None
    ) -> Message:
        """Sends a request to one responder and returns its answer.

        Raises :class:`NoRespondersError`, :class:`RequestTimeoutError`,
        :class:`ServiceError`, :class:`LimitError` or :class:`DisconnectedError`.
        """
        validate_publish_subject(subject)
        data = as_bytes(payload)
        self._check_payload(data)
        timeout = self.request_timeout if timeout is None else timeout
        hdrs = with_traceparent(to_pairs(headers))
        if is_forced(hdrs):
            # A forced-traced request: this adapter's span (the request's traceparent) is
            # recorded by the gateway with the message's other hops.
            tp = get_header(hdrs, TRACEPARENT)
            report = span_report("client", f"request {subject}", span_id(tp), "", time.time_ns() // 1000, None)
            hdrs.append((SPAN_HEADER, report))
        deadline = time.monotonic() + timeout
        if not self._accepting and not await self._wait_accepting(timeout):
            raise RequestTimeoutError(subject, timeout) from self._last_error
        rid = next(self._ids)
        fut: asyncio.Future[pb.Reply] = asyncio.get_running_loop().create_future()
        self._reqs[rid] = fut
        left = max(0.001, deadline - time.monotonic())
        try:
            await self._enqueue(
                pb.Frame(
                    req=pb.Req(
                        req_id=rid,
                        subject=subject,
                        headers=wire_headers(hdrs),
                        payload=data,
                        timeout_ms=max(1, int(left * 1000)),
                        id=new_id(),
                    )
                ),
                64 + len(data),
            )
            reply = await asyncio.wait_for(fut, left + 1.0)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(subject, timeout) from None
        finally:
            self._reqs.pop(rid, None)
        if reply.HasField("error"):
            raise from_error(reply.error, subject, timeout)
        return Message(subject, reply.payload, [(h.key, h.value) for h in reply.headers])

    async def reply(self, request: Message, payload: Payload = b"", headers: HeadersLike = None) -> None:
        """Answers a request message."""
        data = as_bytes(payload)
        try:
            await self._enqueue(
                pb.Frame(
                    reply=pb.Reply(reply_to=request.reply_to, headers=wire_headers(to_pairs(headers)), payload=data)
                ),
                64 + len(data),
            )
        finally:
            self._answered(request)

    def _answered(self, request: Message) -> None:
        """The reply to ``request`` is queued (or cannot be): a moving session no longer
        waits for it. The reply is queued before this, so it goes out before the half-close."""
        if self._session is not None and request.reply_to:
            self._session.served.pop(request.reply_to, None)

    async def reply_error(self, request: Message, message: str) -> None:
        """Refuses a request; the requester gets a :class:`ServiceError` with ``message``."""
        if not request.reply_to:
            return
        err = pb.Error(code=pb.SERVICE_ERROR, message=message)
        try:
            await self._enqueue(pb.Frame(reply=pb.Reply(reply_to=request.reply_to, error=err)))
        finally:
            self._answered(request)

    async def serve(self, subject: str, handler: Handler, queue: str = "") -> Service:
        """Answers requests on ``subject`` with ``handler(msg)``, an async function returning
        the payload (bytes or str) or ``(payload, headers)``. Raising :class:`ServiceError`
        (or anything else) answers with an error. Handlers run concurrently."""
        sub = await self.subscribe(subject, queue)
        service = Service(self, sub, handler, self.options.max_concurrent_handlers)
        self._services.append(service)
        return service

    async def open_stream(self, subject: str, headers: HeadersLike = None) -> BiStream:
        """Opens a bidirectional stream to one responder of ``subject`` and waits until the
        responder accepted it (raises :class:`NoRespondersError` if there is none)."""
        validate_publish_subject(subject)
        if not self._accepting and not await self._wait_accepting(self.request_timeout):
            raise RequestTimeoutError(subject, self.request_timeout) from self._last_error
        sid = next(self._ids)
        hdrs = with_traceparent(to_pairs(headers))
        s = BiStream(self, sid, subject, hdrs, 0, self.options.stream_window)
        self._streams[sid] = s
        await self._enqueue(
            pb.Frame(
                stream_open=pb.StreamOpen(
                    stream_id=sid, subject=subject, headers=wire_headers(hdrs), credits=self.options.stream_window
                )
            )
        )
        try:
            await asyncio.wait_for(asyncio.shield(s.opened), self.request_timeout)
        except asyncio.TimeoutError:
            s.abort("not accepted in time")
            raise RequestTimeoutError(subject, self.request_timeout) from None
        return s

    async def listen_streams(self, subject: str, queue: str = "") -> StreamListener:
        """Accepts streams opened to ``subject`` (optionally as a member of ``queue``)."""
        validate_pattern(subject)
        sid = next(self._ids)
        listener = StreamListener(self, sid, subject, queue)
        self._listeners[sid] = listener
        await self._confirm_sub(sid, subject, queue)
        return listener

    async def flush(self, timeout: float | None = None) -> None:
        """Waits until the gateway processed every frame queued before this call."""
        limit = timeout or self.request_timeout
        if not self._accepting and not await self._wait_accepting(limit):
            raise DisconnectedError("no session with a gateway to flush to") from self._last_error
        nonce = next(self._ids)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[nonce] = fut
        try:
            await self._enqueue(pb.Frame(ping=pb.Ping(nonce=nonce)))
            await asyncio.wait_for(fut, timeout or self.request_timeout)
        except asyncio.TimeoutError:
            raise DisconnectedError("no Pong from the gateway") from None
        finally:
            self._pings.pop(nonce, None)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Waits until a session that takes new work is open (after a reconnect, or after a
        move away from a draining gateway)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def drain(self, timeout: float | None = None) -> None:
        """Closes gracefully: stops every subscription without losing what the gateway already
        sent for it (buffered messages stay readable, then iteration ends), lets responders
        answer the requests they received, sends everything queued, then closes. Later calls
        raise :class:`ClosedError`. ``timeout`` (default: the request timeout) bounds the
        wait for the gateway."""
        if self._closed:
            return
        try:
            await asyncio.wait_for(self._drain(), timeout or self.request_timeout)
        except (asyncio.TimeoutError, NexusError):
            pass  # drain what could be drained; close regardless
        await self.close()

    async def _drain(self) -> None:
        await asyncio.gather(*(s.drain() for s in self._services), return_exceptions=True)
        await asyncio.gather(*(s.drain() for s in list(self._subs.values())), return_exceptions=True)
        for li in list(self._listeners.values()):
            await li.close()
        if self.is_connected:
            await self.flush()

    async def close(self) -> None:
        """Ends the session at once and stops reconnecting; pending operations get
        :class:`ClosedError`. (See :meth:`drain` to finish what is in flight first.)"""
        if self._closed:
            return
        self._closed = True
        self._closed_event.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._session is not None:
            await self._end_session(self._session, ClosedError("client closed"))
        for sub in self._subs.values():
            sub._end()
        for li in self._listeners.values():
            li._queue.put_nowait(END)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drain()


def _settle(fut: asyncio.Future[T] | None, value: T) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)
