"""Subscriptions (bounded buffers of deliveries) and responders (:class:`Service`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from .errors import NexusError, ServiceError
from .headers import (
    SPAN_HEADER,
    TRACEPARENT,
    HeadersLike,
    current_traceparent,
    is_forced,
    is_valid_traceparent,
    new_traceparent,
    span_id,
    span_report,
    to_pairs,
)
from .message import Message

if TYPE_CHECKING:
    from .client import Client


class _EndMarker:
    """Put after the last message of a subscription or stream."""


END = _EndMarker()

#: What a handler may return: the payload, or ``(payload, headers)``.
HandlerResult = bytes | str | None | tuple[bytes | str, HeadersLike]
Handler = Callable[[Message], Awaitable[HandlerResult]]


class Subscription:
    """Messages for one subscription: ``async for msg in sub`` or ``await sub.next_message()``.

    The buffer is bounded; when it is full the client stops reading from the gateway, whose
    slow-consumer policy then applies (``dropped`` counts its drop notices).
    """

    def __init__(self, client: Client, sid: int, subject: str, queue: str, capacity: int) -> None:
        self._client = client
        self.sid = sid
        self.subject = subject
        self.queue_group = queue
        self._queue: asyncio.Queue[Message | _EndMarker] = asyncio.Queue(maxsize=capacity)
        #: Drop notices from the gateway's slow-consumer policy.
        self.dropped = 0
        self._closed = False
        self._draining = False

    async def next_message(self, timeout: float | None = None) -> Message | None:
        """The next message; ``None`` once the subscription ended. Raises
        ``asyncio.TimeoutError`` when ``timeout`` (seconds) passes first."""
        if timeout is None:
            item = await self._queue.get()
        else:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, _EndMarker):
            self._queue.put_nowait(END)
            return None
        return item

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Message]:
        while True:
            m = await self.next_message()
            if m is None:
                return
            yield m

    async def unsubscribe(self) -> None:
        """Stops the subscription at once; messages already buffered can still be read."""
        if not self._closed:
            self._closed = True
            await self._client._unsubscribe(self.sid)

    async def drain(self) -> None:
        """Stops the subscription without losing a message the gateway already sent for it:
        unsubscribes, waits until the gateway confirmed it (every delivery sent before then has
        arrived), then ends the subscription after what is buffered."""
        await self._client._drain_sub(self)

    @property
    def accepts(self) -> bool:
        """Whether a delivery arriving now is kept (open, or draining)."""
        return not self._closed or self._draining

    def _end(self) -> None:
        self._closed = True
        self._draining = False
        try:
            self._queue.put_nowait(END)
        except asyncio.QueueFull:
            # Keep every buffered message: the marker follows as soon as there is room.
            asyncio.get_running_loop().create_task(self._queue.put(END))


class Service:
    """A responder started by :meth:`Client.serve`; ``await stop()`` ends it."""

    def __init__(self, client: Client, sub: Subscription, handler: Handler, concurrency: int) -> None:
        self._client = client
        self._sub = sub
        self._handler = handler
        self._sem = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.create_task(self._run())

    @property
    def subject(self) -> str:
        """The subject (pattern) served."""
        return self._sub.subject

    async def _run(self) -> None:
        async for msg in self._sub:
            await self._sem.acquire()
            t = asyncio.create_task(self._handle(msg))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Message) -> None:
        # A forced-traced request gets a span of its own for the handler, a child of the
        # request's, reported on the reply (``nexus-span``) for the gateway's trace store.
        parent = msg.traceparent
        traced = is_forced(msg.headers) and parent is not None and is_valid_traceparent(parent)
        own = new_traceparent(parent.split("-")[1]) if traced and parent else parent
        started_us, t0 = time.time_ns() // 1000, time.monotonic()
        token = current_traceparent.set(own)
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
            payload: bytes | str | None
            if isinstance(result, tuple):
                payload, headers = result
            else:
                payload = result
            if traced and own:
                took = int((time.monotonic() - t0) * 1_000_000)
                report = span_report("server", f"handle {msg.subject}", span_id(own), span_id(parent), started_us, took)
                headers = [*to_pairs(headers), (TRACEPARENT, own), (SPAN_HEADER, report)]
            await self._client.reply(msg, payload or b"", headers)
        except NexusError:
            pass  # the session broke; the requester is told by the gateway
        finally:
            current_traceparent.reset(token)
            self._sem.release()

    async def stop(self) -> None:
        """Unsubscribes and waits for the handlers in progress."""
        await self._sub.unsubscribe()
        self._loop.cancel()
        await self._wait_handlers()

    async def drain(self) -> None:
        """Stops taking requests, answers those already received, then returns."""
        await self._sub.drain()
        await asyncio.gather(self._loop, return_exceptions=True)
        await self._wait_handlers()

    async def _wait_handlers(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
