"""Reconnecting to a gateway that died and came back on the same address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

import nexus_client as nx
from nexus_client._proto import gateway_pb2 as pb
from nexus_client.discovery import Endpoint, Target
from nexus_client.errors import ConnectError
from nexus_client.session import Session, open_session


def _server(address: str, gateway_id: str = "back") -> tuple[grpc.aio.Server, int]:
    """A gRPC server that answers Hello with Welcome and keeps the session open."""

    async def welcome(requests: AsyncIterator[pb.Batch], _context: object) -> AsyncIterator[pb.Batch]:
        async for batch in requests:
            for f in batch.frames:
                if f.WhichOneof("kind") == "hello":
                    w = pb.Welcome(session_id="1", gateway_id=gateway_id, protocol=1)
                    yield pb.Batch(frames=[pb.Frame(welcome=w)])

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        welcome, request_deserializer=pb.Batch.FromString, response_serializer=pb.Batch.SerializeToString
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("nexus.v1.Gateway", {"Session": handler})])
    return server, server.add_insecure_port(address)


async def test_a_gateway_that_comes_back_is_reached_at_once() -> None:
    """Failed attempts on a dead gateway's address do not leave gRPC's connection backoff
    behind for the next session: gRPC shares subchannels between channels by default, and a
    new channel to the restarted gateway then failed at once ("Connection refused") until that
    backoff (1 s, growing to 2 min) ran out, found by the failover measurement (issue 18)."""
    gone, port = _server("127.0.0.1:0")
    await gone.start()
    await gone.stop(None)
    ep = Endpoint(f"127.0.0.1:{port}", f"127.0.0.1:{port}")
    hello = pb.Hello(protocol=1)
    for _ in range(4):  # the gateway is dead: each attempt is refused
        with pytest.raises(ConnectError):
            await open_session(ep, hello, [], 1.0)
    back, _ = _server(f"127.0.0.1:{port}")
    await back.start()
    try:
        session = await asyncio.wait_for(open_session(ep, hello, [], 1.0), 2)
        assert session.info.gateway_id == "back"
        await session.channel.close()
    finally:
        await back.stop(None)


async def test_a_cached_answer_that_failed_is_resolved_again_before_backing_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SRV answer cached when the client connected lists only gateway a (b was down then).
    When a dies, the round that tries the cached answer fails; the client asks DNS again at
    once and reaches b in the same round, without a failed round and its doubled backoff
    (the failover measurement's slow tail, issue 18)."""
    a, port_a = _server("127.0.0.1:0", "a")
    b, port_b = _server("127.0.0.1:0", "b")
    await a.start()
    await b.start()
    answers = [
        [Endpoint("a", f"127.0.0.1:{port_a}")],
        [Endpoint("a", f"127.0.0.1:{port_a}"), Endpoint("b", f"127.0.0.1:{port_b}")],
    ]
    resolved = 0

    async def resolve(_self: Target) -> tuple[list[Endpoint], float]:
        nonlocal resolved
        resolved += 1
        return answers[min(resolved, len(answers)) - 1], 60.0  # valid long after a dies

    monkeypatch.setattr(Target, "_resolve", resolve)
    failed_rounds = 0
    connect_round = nx.Client._connect_round

    async def counted(self: nx.Client) -> Session:
        nonlocal failed_rounds
        try:
            return await connect_round(self)
        except nx.NexusError:
            failed_rounds += 1
            raise

    monkeypatch.setattr(nx.Client, "_connect_round", counted)
    client = await nx.Client.connect("nexus+srv://r.example?dns=127.0.0.1:1", reconnect_backoff=(0.05, 0.05))
    try:
        assert client.server_info is not None and client.server_info.gateway_id == "a"
        await a.stop(None)
        for _ in range(500):
            info = client.server_info
            if info is not None and info.gateway_id == "b":
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the client did not move to b")
        assert resolved == 2
        assert failed_rounds == 0
    finally:
        await client.close()
        await b.stop(None)
