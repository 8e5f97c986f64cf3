"""How the client moves away from a draining gateway (docs/protocol.md section 3.4), against
a scripted in-process gateway: the test decides when ``GoAway`` is sent and what is answered,
and sees every frame the client sent on each session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio
import pytest

import nexus_client as nx
from nexus_client._proto import gateway_pb2 as pb
from nexus_client.client import drain_window


class FakeSession:
    """One session with the fake gateway: what the client sent, a queue of frames to send,
    and whether the client half-closed it."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.received: list[pb.Frame] = []
        self.outbox: asyncio.Queue[pb.Frame | None] = asyncio.Queue()
        self.half_closed = asyncio.Event()
        self.half_closed_at = 0.0

    def send(self, frame: pb.Frame) -> None:
        self.outbox.put_nowait(frame)

    def kinds(self) -> list[str]:
        return [str(f.WhichOneof("kind")) for f in self.received]


#: Decides what the fake gateway does with a frame from the client (after the defaults:
#: Welcome for Hello, Ack for Sub and Pub with an ack id, Pong for Ping).
Script = Callable[[FakeSession, pb.Frame], Awaitable[None]]


async def _nothing(_s: FakeSession, _f: pb.Frame) -> None:
    return None


class FakeGateway:
    """A gRPC server speaking just enough of the session protocol for these tests."""

    def __init__(self, script: Script = _nothing) -> None:
        self.script = script
        self.sessions: list[FakeSession] = []
        self.new_session = asyncio.Event()
        self.server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self._session, request_deserializer=pb.Batch.FromString, response_serializer=pb.Batch.SerializeToString
        )
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("nexus.v1.Gateway", {"Session": handler})]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _session(
        self, requests: AsyncIterator[pb.Batch], context: grpc.aio.ServicerContext[pb.Batch, pb.Batch]
    ) -> None:
        s = FakeSession(len(self.sessions) + 1)
        self.sessions.append(s)
        self.new_session.set()

        async def read() -> None:
            async for batch in requests:
                for f in batch.frames:
                    s.received.append(f)
                    await self._default(s, f)
                    await self.script(s, f)
            s.half_closed_at = time.monotonic()
            s.half_closed.set()
            s.outbox.put_nowait(None)  # like the gateway: a half-close ends the session

        reader = asyncio.create_task(read())
        try:
            while (f := await s.outbox.get()) is not None:
                await context.write(pb.Batch(frames=[f]))
        finally:
            reader.cancel()

    async def _default(self, s: FakeSession, f: pb.Frame) -> None:
        kind = f.WhichOneof("kind")
        if kind == "hello":
            s.send(pb.Frame(welcome=pb.Welcome(session_id=str(s.number), gateway_id=f"fake-{s.number}", protocol=1)))
        elif kind == "sub" and f.sub.ack_id:
            s.send(pb.Frame(ack=pb.Ack(ack_id=f.sub.ack_id)))
        elif kind == "ping":
            s.send(pb.Frame(pong=pb.Pong(nonce=f.ping.nonce)))

    async def session(self, number: int, timeout: float = 5.0) -> FakeSession:
        async def wait() -> FakeSession:
            while len(self.sessions) < number:
                self.new_session.clear()
                await self.new_session.wait()
            return self.sessions[number - 1]

        return await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def fake() -> AsyncIterator[Callable[[Script], Awaitable[FakeGateway]]]:
    started: list[FakeGateway] = []

    async def start(script: Script = _nothing) -> FakeGateway:
        g = FakeGateway(script)
        await g.server.start()
        started.append(g)
        return g

    yield start
    for g in started:
        await g.server.stop(None)


async def until_moving(client: nx.Client) -> None:
    """Waits until the client saw GoAway (it no longer starts work on its session)."""
    for _ in range(600):
        if not client._accepting:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the client did not react to GoAway")


def go_away(drain_ms: int) -> pb.Frame:
    return pb.Frame(go_away=pb.GoAway(reason="gateway is shutting down", drain_ms=drain_ms))


def test_drain_window_keeps_a_margin() -> None:
    assert drain_window(20_000) == pytest.approx(19.5)
    assert drain_window(600) == pytest.approx(0.3)  # at least half
    assert drain_window(0) == 0.0


async def test_moves_after_the_request_in_flight_is_answered(fake: Callable[[Script], Awaitable[FakeGateway]]) -> None:
    """The request sent before GoAway is answered on the old session; one started after it
    waits and goes to the next session; the move does not wait for the reconnect backoff."""

    async def script(s: FakeSession, f: pb.Frame) -> None:
        if f.WhichOneof("kind") != "req":
            return
        if s.number == 1:
            s.send(go_away(20_000))

            async def later() -> None:
                await asyncio.sleep(0.3)
                s.send(pb.Frame(reply=pb.Reply(req_id=f.req.req_id, payload=b"old:" + f.req.payload)))

            asyncio.get_running_loop().create_task(later())
        else:
            s.send(pb.Frame(reply=pb.Reply(req_id=f.req.req_id, payload=b"new:" + f.req.payload)))

    g = await fake(script)
    client = await nx.Client.connect(f"127.0.0.1:{g.port}", reconnect_backoff=(5.0, 5.0))
    try:
        first = asyncio.create_task(client.request("svc", "first"))
        s1 = await g.session(1)
        await until_moving(client)
        started = time.monotonic()
        second = await client.request("svc", "second")
        first_reply = await first
        assert first_reply.payload == b"old:first"
        assert second.payload == b"new:second"
        assert time.monotonic() - started < 2.0, "the move waited for the reconnect backoff"
        assert s1.half_closed.is_set(), "the old session was not half-closed"
        assert [f.req.payload for f in s1.received if f.WhichOneof("kind") == "req"] == [b"first"]
        assert client.server_info is not None and client.server_info.gateway_id == "fake-2"
    finally:
        await client.close()


async def test_replies_to_served_requests_go_out_before_the_half_close(
    fake: Callable[[Script], Awaitable[FakeGateway]],
) -> None:
    """A request delivered to a responder before GoAway is answered on the old session, and
    only then is the session ended."""
    g = await fake(_nothing)
    client = await nx.Client.connect(f"127.0.0.1:{g.port}", reconnect_backoff=(5.0, 5.0))
    try:

        async def slow(msg: nx.Message) -> bytes:
            await asyncio.sleep(0.3)
            return msg.payload

        await client.serve("svc", slow)
        s1 = await g.session(1)
        sid = next(f.sub.sid for f in s1.received if f.WhichOneof("kind") == "sub")
        s1.send(pb.Frame(msg=pb.Msg(sid=sid, subject="svc", reply_to="$nexus.inbox.7", payload=b"x", deadline_ms=5000)))
        s1.send(go_away(20_000))
        await asyncio.wait_for(s1.half_closed.wait(), 3)
        assert "reply" in s1.kinds(), s1.kinds()
        reply = next(f.reply for f in s1.received if f.WhichOneof("kind") == "reply")
        assert reply.reply_to == "$nexus.inbox.7" and reply.payload == b"x"
        s2 = await g.session(2)
        # The responder's subscription is made again on the new session.
        await asyncio.wait_for(client.wait_connected(), 3)
        assert any(f.WhichOneof("kind") == "sub" and f.sub.sid == sid for f in s2.received)
    finally:
        await client.close()


async def test_unanswered_work_at_the_deadline_is_handled_as_on_a_lost_session(
    fake: Callable[[Script], Awaitable[FakeGateway]],
) -> None:
    """The old gateway never answers: after drain_ms minus the margin the session ends, the
    request fails as disconnected and the confirmed publish is sent again, with the same
    message id, on the next session."""

    async def script(s: FakeSession, f: pb.Frame) -> None:
        kind = f.WhichOneof("kind")
        if s.number == 1 and kind == "pub":
            s.send(go_away(800))  # window: 0.4 s
        elif s.number > 1 and kind == "pub" and f.pub.ack_id:
            s.send(pb.Frame(ack=pb.Ack(ack_id=f.pub.ack_id, delivered=1)))

    g = await fake(script)
    client = await nx.Client.connect(f"127.0.0.1:{g.port}", reconnect_backoff=(5.0, 5.0), request_timeout=5.0)
    try:
        req = asyncio.create_task(client.request("svc", "lost"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        delivered = await client.publish("events.a", "confirmed", ack=True)
        assert delivered == 1
        assert time.monotonic() - started < 2.0
        with pytest.raises(nx.DisconnectedError):
            await req
        s1, s2 = g.sessions[0], g.sessions[1]
        old = [f.pub for f in s1.received if f.WhichOneof("kind") == "pub"]
        new = [f.pub for f in s2.received if f.WhichOneof("kind") == "pub"]
        assert len(old) == 1 and len(new) == 1
        assert old[0].id == new[0].id and old[0].ack_id != new[0].ack_id
    finally:
        await client.close()


async def test_close_during_a_move_does_not_hang(fake: Callable[[Script], Awaitable[FakeGateway]]) -> None:
    """A request gated by the move (the old session still waits for an answer that never
    comes) ends with ClosedError when the client is closed, and close() returns at once."""

    async def script(s: FakeSession, f: pb.Frame) -> None:
        if f.WhichOneof("kind") == "req" and f.req.payload == b"stuck":
            s.send(go_away(20_000))

    g = await fake(script)
    client = await nx.Client.connect(f"127.0.0.1:{g.port}")
    stuck = asyncio.create_task(client.request("svc", "stuck", timeout=30))
    await until_moving(client)
    gated = asyncio.create_task(client.request("svc", "gated", timeout=30))
    await asyncio.sleep(0.1)
    assert not gated.done()
    await asyncio.wait_for(client.close(), 2)
    with pytest.raises(nx.ClosedError):
        await asyncio.wait_for(gated, 2)
    with pytest.raises(nx.NexusError):
        await asyncio.wait_for(stuck, 2)
    assert [f.req.payload for f in g.sessions[0].received if f.WhichOneof("kind") == "req"] == [b"stuck"]


async def test_a_publish_with_reply_to_does_not_hold_the_move(fake: Callable[[Script], Awaitable[FakeGateway]]) -> None:
    """Only requests (reply_to and a deadline) are owed an answer; a plain publish that names a
    reply subject, unanswered by the subscriber, does not keep the old session."""
    g = await fake(_nothing)
    client = await nx.Client.connect(f"127.0.0.1:{g.port}", reconnect_backoff=(5.0, 5.0))
    try:
        sub = await client.subscribe("events.>")
        s1 = await g.session(1)
        s1.send(pb.Frame(msg=pb.Msg(sid=sub.sid, subject="events.a", reply_to="answers.here", payload=b"x")))
        s1.send(go_away(20_000))
        await asyncio.wait_for(s1.half_closed.wait(), 1.0)
        assert (await sub.next_message(1)) is not None
    finally:
        await client.close()
