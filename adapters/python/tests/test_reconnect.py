"""Reconnecting to a gateway that died and came back on the same address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from nexus_client._proto import gateway_pb2 as pb
from nexus_client.discovery import Endpoint
from nexus_client.errors import ConnectError
from nexus_client.session import open_session


async def _welcome(requests: AsyncIterator[pb.Batch], _context: object) -> AsyncIterator[pb.Batch]:
    async for batch in requests:
        for f in batch.frames:
            if f.WhichOneof("kind") == "hello":
                yield pb.Batch(frames=[pb.Frame(welcome=pb.Welcome(session_id="1", gateway_id="back", protocol=1))])


def _server(address: str) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        _welcome, request_deserializer=pb.Batch.FromString, response_serializer=pb.Batch.SerializeToString
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
