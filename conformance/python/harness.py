"""Real Nexus processes for the Python conformance runner and the mixed-language test:
gateways and a control plane on free loopback ports, readiness by polling /readyz, and
cleanup that kills every process started."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field


def nexus_bin() -> str:
    """The `nexus` binary: $NEXUS_BIN, else $CARGO_TARGET_DIR/debug/nexus."""
    if os.environ.get("NEXUS_BIN"):
        return os.environ["NEXUS_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
        os.environ.get("NEXUS_CACHE", os.path.expanduser("~/.cache/nexus")), "target")
    return os.path.join(target, "debug", "nexus")


def nexusctl_bin() -> str:
    return os.environ.get("NEXUSCTL_BIN") or os.path.join(os.path.dirname(nexus_bin()), "nexusctl")


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float = 20.0) -> list[str]:
    """Reads stdout lines until one matches ``pattern``; returns the lines read."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {pattern!r}: {lines}")
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise RuntimeError(f"timed out waiting for {pattern!r}")


def wait_ready(metrics: str, timeout: float = 15.0) -> None:
    """Polls http://<metrics>/readyz until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{metrics}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"gateway with metrics on {metrics} did not become ready")


@dataclass
class Gateway:
    """One `nexus gateway` process."""

    args: list[str]
    log: str
    proc: subprocess.Popen | None = None
    grpc: str = ""
    metrics: str = ""
    federation: str = ""

    def start(self) -> None:
        args = list(self.args)
        if self.grpc:  # a restart comes back on the same addresses
            args = _replace(args, "--listen", self.grpc)
            args = _replace(args, "--metrics-listen", self.metrics)
            if self.federation:
                args = _replace(args, "--federation-listen", self.federation)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NEXUS_CONTROL_PLANE", "NEXUS_AUTH", "NEXUS_CONFIG", "OTEL_EXPORTER_OTLP_ENDPOINT")}
        env["RUST_LOG"] = "warn"
        deadline = time.monotonic() + 10
        while True:
            with open(self.log, "a") as log:
                self.proc = subprocess.Popen([nexus_bin(), "gateway", *args], stdout=subprocess.PIPE,
                                             stderr=log, text=True, env=env)
            try:
                lines = _read_until(self.proc, r" listening on ")
                break
            except RuntimeError:
                self.kill()
                if time.monotonic() > deadline:  # the old port may take a moment to free up
                    raise
                time.sleep(0.1)
        for line in lines:
            m = re.search(r"nexus federation.* on (\S+)", line)
            if m:
                self.federation = m.group(1)
            m = re.search(r" listening on (\S+), metrics on (\S+)", line)
            if m:
                self.grpc, self.metrics = m.group(1), m.group(2)
        wait_ready(self.metrics)

    @property
    def url(self) -> str:
        return f"http://{self.grpc}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    i = out.index(flag)
    out[i + 1] = value
    return out


@dataclass
class ControlPlane:
    """One `nexus control-plane` process with the embedded store and DNS discovery."""

    dir: str
    proc: subprocess.Popen | None = None
    addr: str = ""
    dns: str = ""
    admin_key: str = ""

    def start(self) -> None:
        key_file = os.path.join(self.dir, "admin.key")
        with open(os.path.join(self.dir, "control-plane.log"), "a") as log:
            self.proc = subprocess.Popen(
                [nexus_bin(), "control-plane", "--listen", "127.0.0.1:0", "--data-dir",
                 os.path.join(self.dir, "data"), "--dns-listen", "127.0.0.1:0",
                 "--admin-key-file", key_file, "--lease-ttl", "3s", "--dns-ttl", "1s"],
                stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "RUST_LOG": "warn"})
        for line in _read_until(self.proc, r" listening on "):
            m = re.search(r" DNS on (\S+)", line)
            if m:
                self.dns = m.group(1)
            m = re.search(r" listening on (\S+)", line)
            if m:
                self.addr = m.group(1)
        with open(key_file) as f:
            self.admin_key = f.read().strip()

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def create_key(self, name: str, publish: str, subscribe: str) -> str:
        out = subprocess.run(
            [nexusctl_bin(), "keys", "create", name, "--publish", publish, "--subscribe", subscribe, "-o", "json"],
            env={**os.environ, "NEXUS_CONTROL_PLANE": self.url, "NEXUS_ADMIN_KEY": self.admin_key},
            capture_output=True, text=True, check=True)
        return json.loads(out.stdout)["secret"]

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


@dataclass
class Environment:
    """What a case runs against: a gateway, maybe a control plane, and API keys by name."""

    spec: dict
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="nexus-conformance-"))
    gateways: list[Gateway] = field(default_factory=list)
    control_plane: ControlPlane | None = None
    keys: dict[str, str] = field(default_factory=dict)
    region: str = "conformance"
    zone: str = "nexus.local"

    def start(self) -> None:
        gw = self.spec.get("gateway", {})
        args = ["--region", self.region, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--auth", gw.get("auth", "off")]
        if "max_payload" in gw:
            args += ["--max-payload", str(gw["max_payload"])]
        if self.spec.get("control_plane"):
            self.control_plane = ControlPlane(self.dir)
            self.control_plane.start()
            args += ["--control-plane", self.control_plane.url]
            for name, scopes in self.spec.get("keys", {}).items():
                self.keys[name] = self.control_plane.create_key(name, scopes["publish"], scopes["subscribe"])
        self.keys.setdefault("bad", "nxk_3f9a1c2b4d5e6f70_0123456789abcdef0123456789abcdef")
        for i in range(self.spec.get("gateways", 1)):
            # Every gateway gets its own id and state directory (config snapshot, spool).
            g = Gateway(args + ["--gateway-id", f"conformance-gw-{i}",
                                "--state-dir", os.path.join(self.dir, f"gw-state-{i}")],
                        os.path.join(self.dir, f"gateway-{i}.log"))
            g.start()
            self.gateways.append(g)

    @property
    def gateway(self) -> Gateway:
        """The first gateway (the only one, in most environments)."""
        return self.gateways[0]

    def kill_gateway(self, gateway_id: str) -> None:
        """Kills the gateway started with ``--gateway-id gateway_id``."""
        for i, g in enumerate(self.gateways):
            if f"conformance-gw-{i}" == gateway_id:
                g.kill()
                return
        raise RuntimeError(f"no gateway {gateway_id!r} in this environment")

    def srv_url(self, region: str | None = None) -> str:
        dns = self.control_plane.dns if self.control_plane else "127.0.0.1:1"
        return f"nexus+srv://{region or self.region}.{self.zone}?dns={dns}"

    def stop(self) -> None:
        for g in self.gateways:
            g.kill()
        if self.control_plane:
            self.control_plane.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
