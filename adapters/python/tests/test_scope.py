"""``async with`` on a client drains it at the end of the scope, against a real gateway:
everything published inside reaches the subscriber, and later calls fail as closed."""

from __future__ import annotations

import pytest

import nexus_client as nx

COUNT = 2000


async def test_async_with_drains_the_client(gateway: str) -> None:
    reader = await nx.Client.connect(f"http://{gateway}")
    try:
        sub = await reader.subscribe("scope.n")
        await reader.flush()
        async with await nx.Client.connect(f"http://{gateway}", name="scoped") as client:
            for i in range(COUNT):
                await client.publish("scope.n", f"m-{i}".encode())
        with pytest.raises(nx.ClosedError):
            await client.publish("scope.n", b"late")
        for i in range(COUNT):
            msg = await sub.next_message(timeout=5)
            assert msg is not None and msg.text == f"m-{i}"
    finally:
        await reader.close()
