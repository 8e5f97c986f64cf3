"""Payload compression (docs/protocol.md section 9.2): the codecs, bounded decoding, and a real
gateway carrying compressed payloads between Python clients that see plain ones."""

from __future__ import annotations

import json

import pytest

import nexus_client as nx
from nexus_client import compression
from nexus_client._proto import gateway_pb2 as pb


def corpus(n: int) -> bytes:
    rows = [{"id": i, "site": f"fra-{i % 5}", "reading": i * 37 % 1000, "ok": i % 3 != 0} for i in range(n // 40 + 1)]
    return json.dumps(rows).encode()[:n]


@pytest.mark.parametrize("codec", compression.available())
def test_codecs_round_trip_and_refuse_bombs(codec: str) -> None:
    data = corpus(8192)
    packed = compression.compress(codec, data)
    assert len(packed) * 3 < len(data)
    assert compression.decompress(codec, packed, len(data)) == data
    bomb = compression.compress(codec, bytes(16 << 20))
    with pytest.raises(compression.CompressionError, match="exceeds max_payload"):
        compression.decompress(codec, bomb, 1 << 20)
    with pytest.raises(compression.CompressionError, match="corrupt"):
        compression.decompress(codec, packed[: len(packed) // 2], 1 << 20)


def test_frames_are_encoded_only_when_worth_it() -> None:
    data = corpus(4096)
    f = pb.Frame(pub=pb.Pub(subject="a", payload=data))
    compression.encode_frame(f, "zstd", ["lz4"], 1024)
    assert f.pub.payload == data, "not accepted by the gateway"
    compression.encode_frame(f, "zstd", ["zstd", "lz4"], 1024)
    assert [(h.key, h.value) for h in f.pub.headers] == [("nexus-encoding", "zstd")]
    assert len(f.pub.payload) < len(data)
    compression.decode_in_place(f.pub, 1 << 20)
    assert f.pub.payload == data and not f.pub.headers
    small = pb.Frame(pub=pb.Pub(subject="a", payload=b"tiny"))
    compression.encode_frame(small, "zstd", ["zstd"], 1024)
    assert small.pub.payload == b"tiny" and not small.pub.headers


async def test_compressed_payloads_through_a_gateway(gateway: str) -> None:
    data = corpus(8192)
    pub = await nx.Client.connect(f"http://{gateway}")
    plain = await nx.Client.connect(f"http://{gateway}", compression=None)
    sub = await plain.subscribe("py.json")
    await pub.publish("py.json", data, ack=True)
    m = await sub.next_message(timeout=5)
    assert m is not None and m.payload == data
    assert all(k != "nexus-encoding" for k, _ in m.headers)

    async def reverse(req: nx.Message) -> bytes:
        return req.payload[::-1]

    svc = await plain.serve("py.svc", reverse)
    reply = await pub.request("py.svc", data)
    assert reply.payload == data[::-1]
    await svc.stop()
    await pub.close()
    await plain.close()


def test_options_are_checked() -> None:
    with pytest.raises(nx.InvalidOptionError):
        nx.ClientOptions(compression="brotli")
