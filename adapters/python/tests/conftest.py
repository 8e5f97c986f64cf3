"""Fixtures: a real ``nexus gateway`` process on free loopback ports (the binary is
``$NEXUS_BIN``, else ``$CARGO_TARGET_DIR/debug/nexus``)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator

import pytest


def nexus_bin() -> str:
    if os.environ.get("NEXUS_BIN"):
        return os.environ["NEXUS_BIN"]
    cache = os.environ.get("NEXUS_CACHE", os.path.expanduser("~/.cache/nexus"))
    return os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(cache, "target"), "debug", "nexus")


@pytest.fixture
def gateway() -> Iterator[str]:
    """A gateway with auth off; yields its adapter address (``host:port``)."""
    with tempfile.TemporaryDirectory(prefix="nexus-pytest-") as d:
        log = open(os.path.join(d, "gateway.log"), "w")
        proc = subprocess.Popen(
            [
                nexus_bin(),
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--auth",
                "off",
                "--state-dir",
                os.path.join(d, "state"),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                m = re.search(r" listening on (\S+), metrics on (\S+)", line)
                if m:
                    break
            else:
                raise AssertionError(f"{nexus_bin()} printed no banner: {open(log.name).read()}")
            deadline = time.monotonic() + 15
            while True:
                try:
                    with urllib.request.urlopen(f"http://{m.group(2)}/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("gateway not ready")
                time.sleep(0.02)
            yield m.group(1)
        finally:
            proc.kill()
            proc.wait()
            log.close()
