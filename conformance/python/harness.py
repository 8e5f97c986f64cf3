"""Real Nexus processes for the Python conformance runner and the mixed-language test:
gateways and a control plane on free loopback ports, a second region federated over QUIC
with routes applied through nexusctl, a TCP relay that can lose a gateway's answers, readiness
by polling /readyz, and cleanup that kills every process started."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

#: The validity of the gateway certificate in a ``gateway.tls: "expired"`` environment.
EXPIRED_NOT_BEFORE = "2020-01-01T00:00:00Z"
EXPIRED_NOT_AFTER = "2020-01-02T00:00:00Z"


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
    #: Serves adapters over TLS (``https://``).
    tls: bool = False

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
        return f"{'https' if self.tls else 'http'}://{self.grpc}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def terminate(self) -> None:
        """Sends SIGTERM: the gateway drains (docs/protocol.md section 3.4) and exits."""
        if self.proc is not None:
            self.proc.terminate()

    def wait_exited(self, timeout: float) -> int | None:
        """The exit status once the process has exited within ``timeout`` seconds, else None."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


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

    def apply_route(self, route: dict, work: str) -> None:
        """Applies a route ({name, subjects, policy, consistency}) with nexusctl."""
        path = os.path.join(work, f"route-{route['name']}.toml")
        with open(path, "w") as f:
            f.write(f'name = "{route["name"]}"\nsubjects = {json.dumps(route["subjects"])}\n'
                    f'policy = "{route.get("policy", "broadcast")}"\n'
                    f'consistency = "{route.get("consistency", "best_effort")}"\n')
        subprocess.run([nexusctl_bin(), "routes", "apply", "-f", path],
                       env={**os.environ, "NEXUS_CONTROL_PLANE": self.url, "NEXUS_ADMIN_KEY": self.admin_key},
                       capture_output=True, text=True, check=True)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


def get_json(addr: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return json.loads(r.read())


def wait_for(cond, timeout: float, what: str) -> None:
    """Polls ``cond`` every 20 ms until it holds; raises with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(what)
        time.sleep(0.02)


class Relay:
    """A TCP relay on a free loopback port in front of a gateway. It forwards both ways until
    told to ``hold``: from then on, what the gateway sends on the connections open at that
    moment is swallowed (an answer lost in the network), while the client's bytes still
    reach the gateway; ``cut`` then breaks those connections. New connections pass, unless
    ``blocked`` (then they are closed at once, as by a gateway that is not there)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.addr = ""
        self._server: asyncio.base_events.Server | None = None
        self._conns: list[dict] = []
        self.blocked = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.addr = f"127.0.0.1:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        if self.blocked:
            cwriter.transport.abort()
            return
        host, port = self.upstream.rsplit(":", 1)
        try:
            ureader, uwriter = await asyncio.open_connection(host, int(port))
        except OSError:
            cwriter.transport.abort()
            return
        conn = {"held": False, "writers": (cwriter, uwriter)}
        self._conns.append(conn)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, downstream: bool) -> None:
            try:
                while data := await r.read(65536):
                    if downstream and conn["held"]:
                        continue
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                for x in conn["writers"]:
                    x.transport.abort()
        try:
            await asyncio.gather(pump(creader, uwriter, False), pump(ureader, cwriter, True))
        except asyncio.CancelledError:
            pass  # the event loop is closing
        self._conns.remove(conn)

    def hold(self) -> None:
        for c in self._conns:
            c["held"] = True

    def cut(self) -> None:
        for c in list(self._conns):
            if c["held"]:
                for w in c["writers"]:
                    w.transport.abort()

    def close(self) -> None:
        if self._server:
            self._server.close()
        for c in self._conns:
            for w in c["writers"]:
                w.transport.abort()


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
    remote: Gateway | None = None
    relay: Relay | None = None
    #: With ``gateway.tls``: the cluster PKI (``nexus certs``) and another CA's, by the names
    #: ``connect`` uses (``cluster``, ``other``).
    pki: dict[str, str] = field(default_factory=dict)

    def tls_files(self, which: str) -> tuple[str, str, str]:
        """(CA file, client certificate, client key) of the PKI ``which``."""
        d = self.pki[which]
        return (os.path.join(d, "ca.pem"), os.path.join(d, "clients", "conformance.pem"),
                os.path.join(d, "clients", "conformance-key.pem"))

    def start(self) -> None:
        gw = self.spec.get("gateway", {})
        args = ["--region", self.region, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                "--auth", gw.get("auth", "off")]
        tls = gw.get("tls")
        if tls:
            # The gateway's certificate (for 127.0.0.1) and a client certificate from the
            # cluster CA, and a client certificate from another CA, all by `nexus certs`.
            for which in ("cluster", "other"):
                self.pki[which] = os.path.join(self.dir, f"pki-{which}")
                subprocess.run([nexus_bin(), "certs", "--out", self.pki[which], "--gateway",
                                f"{self.region}/conformance-tls@127.0.0.1", "--client", "conformance"],
                               check=True, capture_output=True)
            if tls == "expired":
                # The same gateway certificate re-issued by the cluster CA, valid only on a day
                # in the past: nothing else is wrong with it.
                subprocess.run([nexus_bin(), "certs", "--out", self.pki["cluster"], "--gateway",
                                f"{self.region}/conformance-tls@127.0.0.1",
                                "--not-before", EXPIRED_NOT_BEFORE, "--not-after", EXPIRED_NOT_AFTER],
                               check=True, capture_output=True)
            cert = os.path.join(self.pki["cluster"], "gateways", self.region, "conformance-tls")
            args += ["--tls-cert", cert + ".pem", "--tls-key", cert + "-key.pem"]
            if tls == "mutual":
                args += ["--tls-client-ca", os.path.join(self.pki["cluster"], "ca.pem")]
        if "max_payload" in gw:
            args += ["--max-payload", str(gw["max_payload"])]
        if "shutdown_grace_ms" in gw:
            args += ["--shutdown-grace-ms", str(gw["shutdown_grace_ms"])]
        if self.spec.get("control_plane"):
            self.control_plane = ControlPlane(self.dir)
            self.control_plane.start()
            args += ["--control-plane", self.control_plane.url]
            for name, scopes in self.spec.get("keys", {}).items():
                self.keys[name] = self.control_plane.create_key(name, scopes["publish"], scopes["subscribe"])
            for route in self.spec.get("routes", []):
                self.control_plane.apply_route(route, self.dir)
        self.keys.setdefault("bad", "nxk_3f9a1c2b4d5e6f70_0123456789abcdef0123456789abcdef")
        remote_region = self.spec.get("remote_region")
        if remote_region:
            # The first gateway's region sorts first, so it dials the remote one.
            certs = os.path.join(self.dir, "certs")
            subprocess.run([nexus_bin(), "federation-certs", "--out", certs, "--regions",
                            f"{self.region},{remote_region}"], check=True, capture_output=True)
            fed = lambda region: ["--federation-listen", "127.0.0.1:0",  # noqa: E731
                                  "--federation-cert", os.path.join(certs, f"{region}.pem"),
                                  "--federation-key", os.path.join(certs, f"{region}-key.pem"),
                                  "--federation-ca", os.path.join(certs, "ca.pem")]
            remote_args = _replace(args, "--region", remote_region) + fed(remote_region) + [
                "--gateway-id", "conformance-remote", "--state-dir", os.path.join(self.dir, "remote-state")]
            self.remote = Gateway(remote_args, os.path.join(self.dir, "remote.log"))
            self.remote.start()
            args = args + fed(self.region) + ["--peer", f"{remote_region}={self.remote.federation}"]
        count = self.spec.get("gateways", 1)
        ids = [f"conformance-gw-{i}" for i in range(count)]
        if self.spec.get("cluster"):
            # A regional cluster: a certificate per gateway (`nexus certs`), linked over QUIC.
            certs = os.path.join(self.dir, "cluster-certs")
            subprocess.run([nexus_bin(), "certs", "--out", certs,
                            *[a for i in ids for a in ("--gateway", f"{self.region}/{i}")]],
                           check=True, capture_output=True)
        for i, gid in enumerate(ids):
            # Every gateway gets its own id and state directory (config snapshot, spool).
            extra = []
            if self.spec.get("cluster"):
                pem = os.path.join(certs, "gateways", self.region, gid)
                extra = ["--federation-listen", "127.0.0.1:0", "--federation-cert", f"{pem}.pem",
                         "--federation-key", f"{pem}-key.pem", "--federation-ca", os.path.join(certs, "ca.pem")]
            g = Gateway(args + extra + ["--gateway-id", gid, "--state-dir", os.path.join(self.dir, f"gw-state-{i}")],
                        os.path.join(self.dir, f"gateway-{i}.log"), tls=bool(tls))
            g.start()
            self.gateways.append(g)
        if self.spec.get("cluster"):
            for g in self.gateways:
                self.await_cluster(g)
        if remote_region:
            wait_for(lambda: any(link.get("region") == remote_region and link.get("state") == "up"
                                 for link in get_json(self.gateway.metrics, "/v1/status").get("links", [])),
                     20, f"the federation link to {remote_region} did not come up")
        for route in self.spec.get("routes", []):
            for g in [*self.gateways, *([self.remote] if self.remote else [])]:
                wait_for(lambda g=g: ((get_json(g.metrics, f"/v1/explain?subject={route['probe']}")
                                       .get("federation") or {}).get("route") or {}).get("name") == route["name"],
                         10, f"route {route['name']} did not reach gateway {g.grpc}")

    def await_cluster(self, g: Gateway, timeout: float = 20) -> None:
        """Waits until ``g`` has a cluster link to every other gateway of the region."""
        wait_for(lambda: len(get_json(g.metrics, "/v1/status").get("cluster") or []) == len(self.gateways) - 1,
                 timeout, f"gateway {g.grpc} did not link to the rest of its cluster")

    async def start_relay(self) -> None:
        """Starts the TCP relay in front of the first gateway (when the spec asks for one)."""
        if self.spec.get("relay"):
            self.relay = Relay(self.gateway.grpc)
            await self.relay.start()

    def await_interest(self, subject: str, timeout: float = 10) -> None:
        """Waits until the first gateway knows that the remote region has interest in subject."""
        region = self.spec["remote_region"]

        def known() -> bool:
            regions = (get_json(self.gateway.metrics, f"/v1/explain?subject={subject}").get("federation")
                       or {}).get("regions") or []
            return any(r.get("region") == region and r.get("interest") is True for r in regions)
        wait_for(known, timeout, f"{region}'s interest in {subject} did not reach the first gateway")

    def await_route(self, name: str, subject: str, timeout: float = 20) -> None:
        """Waits until the first gateway routes ``subject`` by route ``name`` and its link to
        the remote region is up."""
        region = self.spec["remote_region"]

        def ready() -> bool:
            fed = get_json(self.gateway.metrics, f"/v1/explain?subject={subject}").get("federation") or {}
            links = get_json(self.gateway.metrics, "/v1/status").get("links", [])
            up = any(lk.get("region") == region and lk.get("state") == "up" for lk in links)
            return (fed.get("route") or {}).get("name") == name and up
        wait_for(ready, timeout, f"the first gateway does not route {subject} by {name} with its link up")

    def await_replicated(self, timeout: float = 20) -> None:
        """Waits until the first gateway's link to the remote region is up and nothing it
        spooled for that region is unconfirmed (so a duplicate would have arrived by now)."""
        region = self.spec["remote_region"]

        def done() -> bool:
            st = get_json(self.gateway.metrics, "/v1/status")
            up = any(lk.get("region") == region and lk.get("state") == "up" for lk in st.get("links", []))
            depth = sum(r.get("spool_depth", 0) for r in st.get("routes", []) if r.get("region") == region)
            return up and depth == 0
        wait_for(done, timeout, f"the first gateway did not finish replicating to {region}")

    def metric(self, name: str, **labels: str) -> float:
        """The value of a series on the first gateway's /metrics (0 when absent)."""
        with urllib.request.urlopen(f"http://{self.gateway.metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        want = [f'{k}="{v}"' for k, v in labels.items()]
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series.split("{")[0] == name and all(w in series for w in want):
                return float(value)
        return 0.0

    @property
    def gateway(self) -> Gateway:
        """The first gateway (the only one, in most environments)."""
        return self.gateways[0]

    def gateway_by_id(self, gateway_id: str) -> Gateway:
        """The gateway started with ``--gateway-id gateway_id``."""
        for i, g in enumerate(self.gateways):
            if f"conformance-gw-{i}" == gateway_id:
                return g
        raise RuntimeError(f"no gateway {gateway_id!r} in this environment")

    def kill_gateway(self, gateway_id: str) -> None:
        """Kills the gateway started with ``--gateway-id gateway_id``."""
        self.gateway_by_id(gateway_id).kill()

    def srv_url(self, region: str | None = None) -> str:
        dns = self.control_plane.dns if self.control_plane else "127.0.0.1:1"
        return f"nexus+srv://{region or self.region}.{self.zone}?dns={dns}"

    def stop(self) -> None:
        if self.relay:
            self.relay.close()
        for g in self.gateways:
            g.kill()
        if self.remote:
            self.remote.kill()
        if self.control_plane:
            self.control_plane.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
