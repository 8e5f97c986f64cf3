"""TLS against a real ``nexus gateway`` serving its own TLS listener, with certificates from
``nexus certs``: the cluster CA works, another CA, a wrong name and a missing client
certificate are refused, and a client certificate is accepted when the gateway requires one."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import nexus_bin

from nexus_client import Client, NexusError


def certs(d: str, *args: str) -> None:
    subprocess.run([nexus_bin(), "certs", "--out", d, *args], check=True, capture_output=True)


@contextmanager
def tls_gateway(d: str, client_ca: bool) -> Iterator[str]:
    pki = os.path.join(d, "pki")
    certs(pki, "--gateway", "local/gw-1@127.0.0.1,gateway.test", "--admin", "svc")
    args = [
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
        "--tls-cert",
        os.path.join(pki, "gateways/local/gw-1.pem"),
        "--tls-key",
        os.path.join(pki, "gateways/local/gw-1-key.pem"),
    ]
    if client_ca:
        args += ["--tls-client-ca", os.path.join(pki, "ca.pem")]
    log = open(os.path.join(d, "gateway.log"), "w")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = re.search(r" listening on (\S+), metrics on (\S+)", line)
            if m:
                break
        else:
            raise AssertionError(f"no banner: {open(log.name).read()}")
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{m.group(2)}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gateway not ready"
            time.sleep(0.02)
        yield m.group(1)
    finally:
        proc.kill()
        proc.wait()
        log.close()


async def test_tls_cases() -> None:
    with tempfile.TemporaryDirectory(prefix="nexus-pytest-tls-") as d, tls_gateway(d, client_ca=False) as addr:
        ca = os.path.join(d, "pki", "ca.pem")
        async with await Client.connect(f"https://{addr}", tls_ca_file=ca, connect_timeout=5) as c:
            sub = await c.subscribe("tls.py")
            await c.publish("tls.py", b"over TLS", ack=True)
            msg = await sub.next_message(timeout=5)
            assert msg is not None
            assert msg.payload == b"over TLS"
        async with await Client.connect(
            f"https://{addr}", tls_ca_file=ca, tls_server_name="gateway.test", connect_timeout=5
        ):
            pass
        other = os.path.join(d, "other")
        certs(other)
        with pytest.raises(NexusError):
            await Client.connect(f"https://{addr}", tls_ca_file=os.path.join(other, "ca.pem"), connect_timeout=3)
        with pytest.raises(NexusError):
            await Client.connect(f"https://{addr}", tls_ca_file=ca, tls_server_name="elsewhere.test", connect_timeout=3)
        with pytest.raises(NexusError, match=r"missing\.pem"):
            await Client.connect(f"https://{addr}", tls_ca_file=os.path.join(d, "missing.pem"), connect_timeout=3)


async def test_required_client_certificate() -> None:
    with tempfile.TemporaryDirectory(prefix="nexus-pytest-mtls-") as d, tls_gateway(d, client_ca=True) as addr:
        pki = os.path.join(d, "pki")
        ca = os.path.join(pki, "ca.pem")
        with pytest.raises(NexusError):
            c = await Client.connect(f"https://{addr}", tls_ca_file=ca, connect_timeout=3)
            await c.close()
        async with await Client.connect(
            f"https://{addr}",
            tls_ca_file=ca,
            tls_client_cert_file=os.path.join(pki, "admin/svc.pem"),
            tls_client_key_file=os.path.join(pki, "admin/svc-key.pem"),
            connect_timeout=5,
        ) as c:
            await c.publish("tls.mtls", b"x", ack=True)
