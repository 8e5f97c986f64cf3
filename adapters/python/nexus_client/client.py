"""The client: one long-lived gRPC session with a gateway, batching, reconnection and the
public asyncio API (publish, subscribe, request, serve, streams).

All outgoing frames go through one bounded queue drained by one writer task, which sends
every frame already queued as one ``Batch`` (docs/protocol.md section 15.1): no timer, so a
lone frame leaves at once and batches grow by themselves under load. A full queue makes
``publish`` wait, so HTTP/2 backpressure reaches the application.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from typing import Any, Awaitable, Callable

import grpc

from ._proto import gateway_pb2 as pb
from .discovery import Endpoint, Target
from .errors import (
    ClosedError, ConnectError, DeniedError, DisconnectedError, InvalidError, LimitError,
    NexusError, NoGatewayError, ProtocolError, RequestTimeoutError, ServiceError,
    UnavailableError, from_error,
)
from .headers import HeadersLike, current_traceparent, to_pairs, with_traceparent
from .message import Message, ServerInfo
from .stream import BiStream, StreamListener, _END
from .subject import validate_pattern, validate_publish_subject

__version__ = "0.1.0"
SESSION_METHOD = "/nexus.v1.Gateway/Session"
#: Large enough for the gateway's transport message limit with any max_payload up to 32 MiB.
MAX_MESSAGE = 64 * 1024 * 1024


def _ulid() -> bytes:
    ms = int(time.time() * 1000) & ((1 << 48) - 1)
    return ms.to_bytes(6, "big") + os.urandom(10)


def _hdrs(pairs: list[tuple[str, str]]) -> list[pb.Header]:
    return [pb.Header(key=k, value=v) for k, v in pairs]


def _payload(p: bytes | str | None) -> bytes:
    if p is None:
        return b""
    return p.encode() if isinstance(p, str) else bytes(p)


class _Out:
    """A queued frame; plain publishes survive a reconnect, everything else is per session."""

    __slots__ = ("frame", "size", "plain_pub")

    def __init__(self, frame: pb.Frame, size: int, plain_pub: bool) -> None:
        self.frame, self.size, self.plain_pub = frame, size, plain_pub


class Subscription:
    """Messages for one subscription: ``async for msg in sub`` or ``await sub.next_message()``.

    The buffer is bounded; when it is full the client stops reading from the gateway, whose
    slow-consumer policy then applies (``dropped`` counts its drop notices).
    """

    def __init__(self, client: "Client", sid: int, subject: str, queue: str, capacity: int) -> None:
        self._client = client
        self.sid = sid
        self.subject = subject
        self.queue_group = queue
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=capacity)
        self.dropped = 0
        self._closed = False

    async def next_message(self, timeout: float | None = None) -> Message | None:
        """The next message; ``None`` once unsubscribed. Raises ``asyncio.TimeoutError``."""
        if timeout is None:
            item = await self._queue.get()
        else:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _END:
            self._queue.put_nowait(_END)
            return None
        return item

    def __aiter__(self):
        return self._iter()

    async def _iter(self):
        while True:
            m = await self.next_message()
            if m is None:
                return
            yield m

    async def unsubscribe(self) -> None:
        """Stops the subscription; buffered messages can still be read."""
        if not self._closed:
            self._closed = True
            await self._client._unsubscribe(self.sid)

    def _end(self) -> None:
        self._closed = True
        if self._queue.full():  # make room for the end marker; the subscription is over anyway
            self._queue.get_nowait()
        self._queue.put_nowait(_END)


Handler = Callable[[Message], Awaitable[Any]]


class Service:
    """A responder started by :meth:`Client.serve`; ``await stop()`` ends it."""

    def __init__(self, client: "Client", sub: Subscription, handler: Handler, concurrency: int) -> None:
        self._client = client
        self._sub = sub
        self._handler = handler
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.create_task(self._run())

    @property
    def subject(self) -> str:
        return self._sub.subject

    async def _run(self) -> None:
        async for msg in self._sub:
            await self._sem.acquire()
            t = asyncio.create_task(self._handle(msg))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Message) -> None:
        token = current_traceparent.set(msg.traceparent)
        try:
            try:
                result = await self._handler(msg)
            except ServiceError as e:
                await self._client.reply_error(msg, str(e))
                return
            except Exception as e:  # a failing handler still answers, with the reason
                await self._client.reply_error(msg, f"{type(e).__name__}: {e}")
                return
            if not msg.reply_to:
                return
            headers: HeadersLike = None
            if isinstance(result, tuple):
                result, headers = result
            await self._client.reply(msg, result, headers)
        except NexusError:
            pass  # the session broke; the requester is told by the gateway
        finally:
            current_traceparent.reset(token)
            self._sem.release()

    async def stop(self) -> None:
        """Unsubscribes and waits for the handlers in progress."""
        await self._sub.unsubscribe()
        self._loop.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _Session:
    """One gRPC ``Session`` call with one gateway."""

    def __init__(self, endpoint: Endpoint, channel: grpc.aio.Channel, call: Any, info: ServerInfo) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.call = call
        self.info = info
        self.tasks: list[asyncio.Task] = []
        self.done = asyncio.Event()


class Client:
    """A connection to a Nexus gateway. Create it with ``await Client.connect(url)``.

    ``url`` is ``http://host:port`` (or ``host:port``) or a discovery name
    ``nexus+srv://<region>.<zone>[?dns=ip:port]``.
    """

    def __init__(self, url: str, *, api_key: str = "", name: str = "", request_timeout: float = 5.0,
                 connect_timeout: float = 5.0, dns_server: str | None = None,
                 reconnect_backoff: tuple[float, float] = (0.1, 5.0), max_batch_frames: int = 256,
                 max_batch_bytes: int = 256 * 1024, outbound_capacity: int = 1024,
                 subscription_capacity: int = 1024, stream_window: int = 256,
                 max_concurrent_handlers: int = 64) -> None:
        self._target = Target(url, dns_server)
        self._api_key = api_key or os.environ.get("NEXUS_API_KEY", "")
        self._name = name
        self.request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._backoff = reconnect_backoff
        self._max_frames = max_batch_frames
        self._max_bytes = max_batch_bytes
        self._sub_capacity = subscription_capacity
        self._window = stream_window
        self._concurrency = max_concurrent_handlers
        self._ids = itertools.count(1)
        self._out: asyncio.Queue[_Out] = asyncio.Queue(maxsize=outbound_capacity)
        self._subs: dict[int, Subscription] = {}
        self._listeners: dict[int, StreamListener] = {}
        self._acks: dict[int, asyncio.Future] = {}
        self._reqs: dict[int, asyncio.Future] = {}
        self._pings: dict[int, asyncio.Future] = {}
        self._streams: dict[int, BiStream] = {}
        self._session: _Session | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self._supervisor: asyncio.Task | None = None
        self._last_error: BaseException | None = None

    # === connecting ===

    @classmethod
    async def connect(cls, url: str, **options: Any) -> "Client":
        """Connects (trying every discovered gateway) and returns the client.

        Raises :class:`DeniedError` for a refused API key, :class:`DiscoveryError`,
        :class:`NoGatewayError` or :class:`ConnectError` when no gateway accepted.
        """
        client = cls(url, **options)
        session = await client._connect_round()
        client._start(session)
        client._supervisor = asyncio.create_task(client._supervise())
        return client

    async def _connect_round(self) -> _Session:
        endpoints = await self._target.endpoints()
        attempts: list[tuple[str, str]] = []
        last: NexusError | None = None
        for ep in endpoints:
            try:
                return await self._open(ep)
            except NexusError as e:
                attempts.append((f"{ep.name} ({ep.address})", str(e)))
                last = e
                self._target.demote(ep.name)
        if self._target.is_srv:
            self._target.forget()
            if last is not None and all("denied" in why.lower() or "api key" in why.lower() for _, why in attempts):
                raise last
            raise NoGatewayError(self._target.url, attempts)
        assert last is not None
        raise last

    async def _open(self, ep: Endpoint) -> _Session:
        channel = grpc.aio.insecure_channel(ep.address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.enable_retries", 0),
        ])
        try:
            call = channel.stream_stream(
                SESSION_METHOD, request_serializer=pb.Batch.SerializeToString,
                response_deserializer=pb.Batch.FromString)()
            hello = pb.Frame(hello=pb.Hello(api_key=self._api_key, client_name=self._name,
                                            language="python", version=__version__, protocol=1))
            frames = [hello] + [self._sub_frame(s.sid, s.subject, s.queue_group, 0)
                                for s in self._subs.values()]
            frames += [self._sub_frame(sid, l.subject, getattr(l, "queue_group", ""), 0)
                       for sid, l in self._listeners.items()]
            try:
                await asyncio.wait_for(call.write(pb.Batch(frames=frames)), self._connect_timeout)
                first = await asyncio.wait_for(call.read(), self._connect_timeout)
            except asyncio.TimeoutError:
                raise ConnectError(f"{ep.address}: no Welcome within {self._connect_timeout}s")
            except grpc.aio.AioRpcError as e:
                raise _status_error(e.code(), e.details(), ep.address)
            if first is grpc.aio.EOF:
                code, details = await call.code(), await call.details()
                raise _status_error(code, details, ep.address)
            welcome = None
            rest = []
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
        info = ServerInfo(welcome.gateway_id, welcome.region, welcome.session_id,
                          welcome.max_payload, welcome.max_subscriptions, ep.address)
        session = _Session(ep, channel, call, info)
        session.pending_frames = rest  # type: ignore[attr-defined]
        return session

    def _start(self, session: _Session) -> None:
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
        session.tasks = [asyncio.create_task(self._writer(session)),
                         asyncio.create_task(self._reader(session))]
        self._connected.set()

    def _still_wanted(self, item: _Out) -> bool:
        """Whether a queued frame can go on a new session: plain publishes, and operations
        queued after the old session was failed whose callers still wait."""
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
        lo, hi = self._backoff
        while not self._closed:
            session = self._session
            if session is not None:
                await session.done.wait()
                await self._end_session(session, DisconnectedError("disconnected from the gateway"))
                self._target.demote(session.endpoint.name)
            delay = lo
            while not self._closed:
                await asyncio.sleep(random.uniform(delay / 2, delay))
                try:
                    session = await self._connect_round()
                    break
                except NexusError as e:
                    self._last_error = e
                    delay = min(delay * 2, hi)
            else:
                return
            self._start(session)

    async def _end_session(self, session: _Session, err: NexusError) -> None:
        self._connected.clear()
        if self._session is session:
            self._session = None
        for t in session.tasks:
            t.cancel()
        session.call.cancel()
        await session.channel.close()
        for table in (self._acks, self._reqs, self._pings):
            for fut in table.values():
                if not fut.done():
                    fut.set_exception(err)
                    fut.exception()
            table.clear()
        for s in list(self._streams.values()):
            s._fail(err)
        self._streams.clear()

    # === the session's tasks ===

    async def _writer(self, session: _Session) -> None:
        try:
            while True:
                item = await self._out.get()
                frames, size = [item.frame], item.size
                while len(frames) < self._max_frames and size < self._max_bytes:
                    try:
                        nxt = self._out.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                    frames.append(nxt.frame)
                    size += nxt.size
                await session.call.write(pb.Batch(frames=frames))
        except asyncio.CancelledError:
            raise
        except Exception:
            session.done.set()

    async def _reader(self, session: _Session) -> None:
        try:
            for f in getattr(session, "pending_frames", []):
                await self._dispatch(f)
            while True:
                batch = await session.call.read()
                if batch is grpc.aio.EOF:
                    break
                for f in batch.frames:
                    await self._dispatch(f)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._last_error = e
        session.done.set()

    async def _dispatch(self, f: pb.Frame) -> None:
        kind = f.WhichOneof("kind")
        if kind == "msg":
            m = f.msg
            sub = self._subs.get(m.sid)
            if sub is None or sub._closed:
                return
            msg = Message(m.subject, m.payload, [(h.key, h.value) for h in m.headers],
                          m.reply_to, m.id, m.sid, m.deadline_ms)
            # A full buffer stops this reader (backpressure to the gateway) until the
            # application reads, or unsubscribes.
            while not sub._closed:
                try:
                    await asyncio.wait_for(sub._queue.put(msg), 0.1)
                    return
                except asyncio.TimeoutError:
                    continue
        elif kind == "reply":
            fut = self._reqs.pop(f.reply.req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(f.reply)
        elif kind == "ack":
            fut = self._acks.pop(f.ack.ack_id, None)
            if fut is not None and not fut.done():
                fut.set_result(f.ack.delivered)
        elif kind == "nack":
            fut = self._acks.pop(f.nack.ack_id, None)
            if fut is not None and not fut.done():
                fut.set_exception(from_error(f.nack.error))
        elif kind == "pong":
            fut = self._pings.pop(f.pong.nonce, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif kind == "error":
            self._on_error(f.error)
        elif kind == "stream_open":
            self._on_stream_open(f.stream_open)
        elif kind == "stream_data":
            s = self._streams.get(f.stream_data.stream_id)
            if s is not None:
                s._on_data(f.stream_data)
        elif kind == "credit":
            s = self._streams.get(f.credit.stream_id)
            if s is not None:
                s._on_credit(f.credit.credits)
        elif kind == "stream_close":
            s = self._streams.get(f.stream_close.stream_id)
            if s is not None:
                s._on_close(f.stream_close)

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
        s = BiStream(self, o.stream_id, o.subject, [(h.key, h.value) for h in o.headers],
                     o.credits, self._window)
        s.opened.set_result(None)
        if listener is None:
            s.abort("not listening for streams on this subscription")
            return
        self._streams[o.stream_id] = s
        self._enqueue_nowait(pb.Frame(credit=pb.Credit(stream_id=o.stream_id, credits=self._window)))
        listener._queue.put_nowait(s)

    # === queueing frames ===

    async def _enqueue(self, frame: pb.Frame, size: int = 64, plain_pub: bool = False) -> None:
        if self._closed:
            raise ClosedError("client closed")
        await self._out.put(_Out(frame, size, plain_pub))

    def _enqueue_nowait(self, frame: pb.Frame) -> None:
        """For small control frames sent from callbacks; skipped if the queue is full."""
        if not self._closed:
            try:
                self._out.put_nowait(_Out(frame, 64, False))
            except asyncio.QueueFull:
                asyncio.get_running_loop().create_task(self._out.put(_Out(frame, 64, False)))

    def _check_payload(self, data: bytes) -> None:
        s = self._session
        if s is not None and s.info.max_payload and len(data) > s.info.max_payload:
            raise LimitError(f"payload of {len(data)} bytes exceeds limits.max_payload "
                             f"({s.info.max_payload} bytes)")

    @staticmethod
    def _sub_frame(sid: int, subject: str, queue: str, ack_id: int) -> pb.Frame:
        return pb.Frame(sub=pb.Sub(sid=sid, subject=subject, queue_group=queue, ack_id=ack_id))

    async def _await_ack(self, frame_for: Callable[[int], pb.Frame], size: int) -> int:
        ack_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = fut
        try:
            await self._enqueue(frame_for(ack_id), size)
            return await asyncio.wait_for(fut, self.request_timeout + 1.0)
        except asyncio.TimeoutError:
            raise DisconnectedError("no acknowledgement from the gateway")
        finally:
            self._acks.pop(ack_id, None)

    # === public API ===

    @property
    def is_connected(self) -> bool:
        """True while a session with a gateway is open."""
        return self._session is not None

    @property
    def server_info(self) -> ServerInfo | None:
        """The gateway in use, or ``None`` while reconnecting."""
        return self._session.info if self._session else None

    async def publish(self, subject: str, payload: bytes | str = b"", *, headers: HeadersLike = None,
                      reply_to: str = "", ack: bool = False) -> int | None:
        """Publishes a message. With ``ack=True`` waits for the gateway and returns how many
        subscriptions received it; otherwise returns once queued (resent after a reconnect)."""
        validate_publish_subject(subject)
        data = _payload(payload)
        self._check_payload(data)
        hdrs = with_traceparent(to_pairs(headers))
        size = 64 + len(data) + len(subject)

        def frame(ack_id: int = 0) -> pb.Frame:
            return pb.Frame(pub=pb.Pub(subject=subject, reply_to=reply_to, headers=_hdrs(hdrs),
                                       payload=data, id=_ulid(), ack_id=ack_id))
        if ack:
            return await self._await_ack(frame, size)
        await self._enqueue(frame(), size, plain_pub=True)
        return None

    async def subscribe(self, subject: str, queue: str = "") -> Subscription:
        """Subscribes to a pattern (``*`` one token, trailing ``>`` the rest); with ``queue``
        each message goes to one member of the group. Waits for the gateway's Ack."""
        validate_pattern(subject)
        sid = next(self._ids)
        sub = Subscription(self, sid, subject, queue, self._sub_capacity)
        self._subs[sid] = sub
        await self._confirm_sub(sid, subject, queue)
        return sub

    async def queue_subscribe(self, subject: str, queue: str) -> Subscription:
        """A queue subscription: each message goes to exactly one member of ``queue``."""
        return await self.subscribe(subject, queue)

    async def _confirm_sub(self, sid: int, subject: str, queue: str) -> None:
        if not self.is_connected:
            return  # sent with the other subscriptions when the session is back
        try:
            await self._await_ack(lambda a: self._sub_frame(sid, subject, queue, a), 64)
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

    async def request(self, subject: str, payload: bytes | str = b"", *, headers: HeadersLike = None,
                      timeout: float | None = None) -> Message:
        """Sends a request to one responder and returns its answer.

        Raises :class:`NoRespondersError`, :class:`RequestTimeoutError`,
        :class:`ServiceError`, :class:`LimitError` or :class:`DisconnectedError`.
        """
        validate_publish_subject(subject)
        data = _payload(payload)
        self._check_payload(data)
        timeout = self.request_timeout if timeout is None else timeout
        hdrs = with_traceparent(to_pairs(headers))
        deadline = time.monotonic() + timeout
        if not self.is_connected:
            try:
                await asyncio.wait_for(self._connected.wait(), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeoutError(subject, timeout) from self._last_error
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._reqs[rid] = fut
        left = max(0.001, deadline - time.monotonic())
        try:
            await self._enqueue(pb.Frame(req=pb.Req(req_id=rid, subject=subject, headers=_hdrs(hdrs),
                                                    payload=data, timeout_ms=max(1, int(left * 1000)),
                                                    id=_ulid())), 64 + len(data))
            reply = await asyncio.wait_for(fut, left + 1.0)
        except asyncio.TimeoutError:
            raise RequestTimeoutError(subject, timeout)
        finally:
            self._reqs.pop(rid, None)
        if reply.HasField("error"):
            raise from_error(reply.error, subject, timeout)
        return Message(subject, reply.payload, [(h.key, h.value) for h in reply.headers])

    async def reply(self, request: Message, payload: bytes | str = b"", headers: HeadersLike = None) -> None:
        """Answers a request message."""
        data = _payload(payload)
        await self._enqueue(pb.Frame(reply=pb.Reply(reply_to=request.reply_to,
                                                    headers=_hdrs(to_pairs(headers)), payload=data)),
                            64 + len(data))

    async def reply_error(self, request: Message, message: str) -> None:
        """Refuses a request; the requester gets a :class:`ServiceError` with ``message``."""
        if not request.reply_to:
            return
        err = pb.Error(code=pb.SERVICE_ERROR, message=message)
        await self._enqueue(pb.Frame(reply=pb.Reply(reply_to=request.reply_to, error=err)))

    async def serve(self, subject: str, handler: Handler, queue: str = "") -> Service:
        """Answers requests on ``subject`` with ``handler(msg)``, an async function returning
        the payload (bytes or str) or ``(payload, headers)``. Raising :class:`ServiceError`
        (or anything else) answers with an error. Handlers run concurrently."""
        sub = await self.subscribe(subject, queue)
        return Service(self, sub, handler, self._concurrency)

    async def open_stream(self, subject: str, headers: HeadersLike = None) -> BiStream:
        """Opens a bidirectional stream to one responder of ``subject`` and waits until the
        responder accepted it (raises :class:`NoRespondersError` if there is none)."""
        validate_publish_subject(subject)
        if not self.is_connected:
            await asyncio.wait_for(self._connected.wait(), self.request_timeout)
        sid = next(self._ids)
        hdrs = with_traceparent(to_pairs(headers))
        s = BiStream(self, sid, subject, hdrs, 0, self._window)
        self._streams[sid] = s
        await self._enqueue(pb.Frame(stream_open=pb.StreamOpen(stream_id=sid, subject=subject,
                                                               headers=_hdrs(hdrs), credits=self._window)))
        try:
            await asyncio.wait_for(asyncio.shield(s.opened), self.request_timeout)
        except asyncio.TimeoutError:
            s.abort("not accepted in time")
            raise RequestTimeoutError(subject, self.request_timeout)
        return s

    async def listen_streams(self, subject: str, queue: str = "") -> StreamListener:
        """Accepts streams opened to ``subject`` (optionally as a member of ``queue``)."""
        validate_pattern(subject)
        sid = next(self._ids)
        listener = StreamListener(self, sid, subject)
        listener.queue_group = queue  # type: ignore[attr-defined]
        self._listeners[sid] = listener
        await self._confirm_sub(sid, subject, queue)
        return listener

    async def flush(self, timeout: float | None = None) -> None:
        """Waits until the gateway processed every frame queued before this call."""
        nonce = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pings[nonce] = fut
        try:
            await self._enqueue(pb.Frame(ping=pb.Ping(nonce=nonce)))
            await asyncio.wait_for(fut, timeout or self.request_timeout)
        except asyncio.TimeoutError:
            raise DisconnectedError("no Pong from the gateway")
        finally:
            self._pings.pop(nonce, None)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Waits until a session is open (after a reconnect)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def close(self) -> None:
        """Ends the session and stops reconnecting; pending operations get :class:`ClosedError`."""
        if self._closed:
            return
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self._session is not None:
            await self._end_session(self._session, ClosedError("client closed"))
        for sub in self._subs.values():
            sub._end()
        for l in self._listeners.values():
            l._queue.put_nowait(_END)

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def _status_error(code: grpc.StatusCode, details: str, address: str) -> NexusError:
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return DeniedError(details)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidError(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ProtocolError(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return LimitError(details)
    if code == grpc.StatusCode.UNAVAILABLE and "shutting down" in (details or ""):
        return UnavailableError(details)
    return ConnectError(f"{address}: {code.name if code else 'closed'}: {details}")
