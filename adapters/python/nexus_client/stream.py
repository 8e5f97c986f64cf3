"""Bidirectional streams with credit-based flow control (docs/protocol.md section 8).

Each side may send a ``StreamData`` only while it holds credit granted by its peer. The
receiving side grants a window of ``W`` frames at the start and, each time the application
has consumed ``W/2`` frames, grants that many again, so at most ``W`` frames are ever buffered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ._proto import gateway_pb2 as pb
from .errors import ClosedError, NexusError, from_error
from .headers import HeadersLike, to_pairs
from .message import Message
from .subscription import END, _EndMarker

if TYPE_CHECKING:
    from .client import Client


class BiStream:
    """One bidirectional stream: :meth:`send` waits for credit, :meth:`recv` or ``async for``
    reads the peer's frames until it half-closes."""

    def __init__(
        self,
        client: Client,
        stream_id: int,
        subject: str,
        headers: list[tuple[str, str]],
        send_credit: int,
        window: int,
    ) -> None:
        self._client = client
        self.id = stream_id
        self.subject = subject
        self.headers = headers
        self._credit = send_credit
        self._credit_changed = asyncio.Event()
        self._window = max(1, window)
        self._consumed = 0
        self._inbox: asyncio.Queue[Message | _EndMarker] = asyncio.Queue()
        self._error: NexusError | None = None
        self._sent_close = False
        self._peer_closed = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # === sending ===

    @property
    def credit(self) -> int:
        """How many frames may be sent now without waiting."""
        return self._credit

    async def send(self, payload: bytes | str, headers: HeadersLike = None) -> None:
        """Sends one frame, waiting until the peer granted credit for it."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self._client._check_payload(data)
        while self._credit <= 0:
            if self._error is not None:
                raise self._error
            if self._sent_close:
                raise ClosedError("stream already finished")
            self._credit_changed.clear()
            await self._credit_changed.wait()
        if self._error is not None:
            raise self._error
        if self._sent_close:
            raise ClosedError("stream already finished")
        self._credit -= 1
        frame = pb.Frame(
            stream_data=pb.StreamData(
                stream_id=self.id, payload=data, headers=[pb.Header(key=k, value=v) for k, v in to_pairs(headers)]
            )
        )
        await self._client._enqueue(frame)

    async def finish(self) -> None:
        """Half-closes: this side sends no more data (the peer may still send)."""
        if self._sent_close or self._error is not None:
            return
        self._sent_close = True
        self._credit_changed.set()
        await self._client._enqueue(pb.Frame(stream_close=pb.StreamClose(stream_id=self.id)))
        self._maybe_forget()

    def abort(self, reason: str = "aborted") -> None:
        """Ends the stream at once in both directions."""
        if self._error is not None:
            return
        self._fail(ClosedError(f"stream aborted: {reason}"))
        err = pb.Error(code=pb.SERVICE_ERROR, message=reason, ref_id=self.id)
        self._client._enqueue_nowait(pb.Frame(stream_close=pb.StreamClose(stream_id=self.id, error=err)))

    # === receiving ===

    async def recv(self) -> Message | None:
        """The next frame from the peer, or ``None`` once it half-closed. Raises if aborted."""
        item = await self._inbox.get()
        if isinstance(item, _EndMarker):
            self._inbox.put_nowait(END)
            if self._error is not None:
                raise self._error
            return None
        self._consumed += 1
        if self._consumed >= max(1, self._window // 2) and not self._peer_closed:
            grant, self._consumed = self._consumed, 0
            self._client._enqueue_nowait(pb.Frame(credit=pb.Credit(stream_id=self.id, credits=grant)))
        return item

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Message]:
        while True:
            m = await self.recv()
            if m is None:
                return
            yield m

    # === frames from the gateway ===

    def _on_credit(self, n: int) -> None:
        self._credit += n
        self._credit_changed.set()
        if not self.opened.done():
            self.opened.set_result(None)

    def _on_data(self, d: pb.StreamData) -> None:
        if not self.opened.done():
            self.opened.set_result(None)
        self._inbox.put_nowait(
            Message(subject=self.subject, payload=d.payload, headers=[(h.key, h.value) for h in d.headers])
        )

    def _on_close(self, c: pb.StreamClose) -> None:
        if c.HasField("error"):
            self._fail(from_error(c.error, self.subject))
            self._client._streams.pop(self.id, None)
            return
        if not self.opened.done():
            self.opened.set_result(None)
        self._peer_closed = True
        self._inbox.put_nowait(END)
        self._maybe_forget()

    def _fail(self, err: NexusError) -> None:
        if self._error is None:
            self._error = err
        if not self.opened.done():
            self.opened.set_exception(err)
            self.opened.exception()  # retrieved: nobody may be waiting
        self._credit_changed.set()
        self._inbox.put_nowait(END)
        self._client._streams.pop(self.id, None)

    def _maybe_forget(self) -> None:
        if self._sent_close and self._peer_closed:
            self._client._streams.pop(self.id, None)


class StreamListener:
    """Accepts streams opened to a subject (``await accept()`` or ``async for``)."""

    def __init__(self, client: Client, sid: int, subject: str, queue: str = "") -> None:
        self._client = client
        self.sid = sid
        self.subject = subject
        self.queue_group = queue
        self._queue: asyncio.Queue[BiStream | _EndMarker] = asyncio.Queue()

    async def accept(self) -> BiStream | None:
        """The next stream opened to the subject, or ``None`` once the listener is closed."""
        s = await self._queue.get()
        if isinstance(s, _EndMarker):
            self._queue.put_nowait(END)
            return None
        return s

    def __aiter__(self) -> AsyncIterator[BiStream]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[BiStream]:
        while True:
            s = await self.accept()
            if s is None:
                return
            yield s

    async def close(self) -> None:
        """Stops accepting streams."""
        await self._client._unsubscribe(self.sid)
        self._queue.put_nowait(END)
