"""Typed options: defaults, validation naming the option, and the keyword arguments of
``Client.connect`` matching the fields of ``ClientOptions``."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import pytest

import nexus_client as nx


def test_defaults() -> None:
    o = nx.ClientOptions(api_key="k")
    assert o.publish_retry_timeout == 30.0
    assert o.local_payload_check is True
    assert o.reconnect_backoff == (0.1, 5.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("request_timeout", 0), ("stream_window", -1), ("publish_retry_timeout", -1.0), ("reconnect_backoff", (2.0, 1.0))],
)
def test_out_of_range_values_name_the_option(field: str, value: object) -> None:
    with pytest.raises(nx.InvalidOptionError, match=field):
        nx.ClientOptions(**{field: value})  # type: ignore[arg-type]


def test_connect_takes_every_option_as_a_typed_keyword() -> None:
    params = inspect.signature(nx.Client.connect).parameters
    for f in dataclasses.fields(nx.ClientOptions):
        assert f.name in params, f.name
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY


async def test_confirmed_publish_with_retrying_off_counts_deliveries(gateway: str) -> None:
    client = await nx.Client.connect(f"http://{gateway}", publish_retry_timeout=0, reconnect_backoff=(0.05, 0.1))
    try:
        assert await client.publish("t.x", b"1", ack=True) == 0
    finally:
        await client.close()


def test_a_type_checker_sees_the_options(tmp_path: Path) -> None:
    """mypy --strict, run on an application, flags a misspelt option and a value of the wrong
    type in ``Client.connect`` (so the options are not hidden behind ``**options: Any``)."""
    api = pytest.importorskip("mypy.api")
    app = tmp_path / "app.py"
    app.write_text(
        "import nexus_client as nx\n"
        "\n"
        "async def main() -> None:\n"
        '    await nx.Client.connect("http://127.0.0.1:7422", request_timeout=2.0, local_payload_check=False)\n'
        '    await nx.Client.connect("http://127.0.0.1:7422", request_timeout="2s")\n'
        '    await nx.Client.connect("http://127.0.0.1:7422", request_timout=2.0)\n'
        '    await nx.Client.connect("http://127.0.0.1:7422", options=nx.ClientOptions(stream_window="8"))\n'
    )
    cache = os.path.join(os.environ.get("NEXUS_CACHE", os.path.expanduser("~/.cache/nexus")), "mypy-tests")
    out, err, status = api.run(["--strict", "--cache-dir", cache, str(app)])
    assert status == 1, out + err
    errors = [line.split(": error: ", 1)[1] for line in out.splitlines() if ": error: " in line]
    assert len(errors) == 3, out
    assert 'Argument "request_timeout" to "connect" of "Client" has incompatible type "str"' in errors[0]
    assert 'Unexpected keyword argument "request_timout"' in errors[1]
    assert 'Argument "stream_window" to "ClientOptions" has incompatible type "str"' in errors[2]
