"""Mixed-language test: adapters in three languages talking across two federated regions.

Two `nexus gateway` processes, regions a-east and b-west, linked over QUIC with mutual TLS
(certificates from `nexus federation-certs`). A Python service in a-east is called by a Java
client and a TypeScript client in b-west; a Java service in b-west is called by a Python
client in a-east. Requests with no local responder are forwarded to the region that has one.
Each call carries an application traceparent, and the services report the trace id they saw.
The gateways register with a control plane; the TypeScript request is forced-traced
(`nexus-trace: 1`) and `nexusctl trace` must show it end to end: received in b-west, routed
to a-east, handed to the Python responder, the reply in both regions, and the two adapters'
own spans (the TypeScript request's, the Python handler's, with their span ids and the
handler's duration) that the adapters report in `nexus-span` headers (docs/trace.md §2).

Usage: python run.py --java-classpath CP [--ts-client DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "python"))

import nexus_client as nx  # noqa: E402
from harness import ControlPlane, Gateway, nexus_bin, nexusctl_bin  # noqa: E402

TRACE_ID = "5e1ec7ed0c0ffee0a11ce0b0b0d0e0f0"


def traceparent(span: str) -> str:
    return f"00-{TRACE_ID}-{span}-01"


def region_gateway(certs: str, region: str, peers: dict[str, Gateway], log_dir: str, cp: ControlPlane) -> Gateway:
    args = ["--region", region, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--auth", "off",
            "--gateway-id", f"gw-{region}", "--control-plane", cp.url,
            "--state-dir", os.path.join(log_dir, f"{region}-state"),
            "--federation-listen", "127.0.0.1:0",
            "--federation-cert", os.path.join(certs, f"{region}.pem"),
            "--federation-key", os.path.join(certs, f"{region}-key.pem"),
            "--federation-ca", os.path.join(certs, "ca.pem")]
    for name, gw in peers.items():
        args += ["--peer", f"{name}={gw.federation}"]
    gw = Gateway(args, os.path.join(log_dir, f"{region}.log"))
    gw.start()
    return gw


async def request_until_served(client: nx.Client, subject: str, payload: str, tp: str) -> str:
    deadline = time.monotonic() + 20
    while True:
        try:
            reply = await client.request(subject, payload, headers={"traceparent": tp}, timeout=5)
            return reply.text
        except nx.NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def run_client(cmd: list[str], env: dict | None = None) -> str:
    """Runs a client process without blocking the event loop (the Python service answers on it)."""
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{cmd[0]} client did not finish within 60 s")
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} client failed: {err.decode().strip()}")
    return out.decode().strip()


def trace_of_ts_request(cp: ControlPlane) -> list[dict]:
    """The records `nexusctl trace` shows for the forced-traced TypeScript request, once
    complete (records are written as the request moves on)."""
    env = {**os.environ, "NEXUS_CONTROL_PLANE": cp.url, "NEXUS_ADMIN_KEY": cp.admin_key}

    def ctl(*args: str) -> dict:
        out = subprocess.run([nexusctl_bin(), *args, "-o", "json"], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"nexusctl {' '.join(args)}: {out.stderr.strip()}")
        return json.loads(out.stdout)

    def has(records: list[dict], gw: str, event: str) -> bool:
        return any(r["gateway_id"] == gw and r["event"] == event for r in records)

    deadline = time.monotonic() + 15
    last: list[dict] = []
    while time.monotonic() < deadline:
        for m in ctl("trace", "--subject", "mixed.py.greet")["messages"]:
            last = ctl("trace", m["message_id"])["records"]
            spans = [r for r in last if r["event"] == "span"]
            done = (has(last, "gw-b-west", "request_routed") and has(last, "gw-a-east", "request_routed")
                    and has(last, "gw-a-east", "reply") and has(last, "gw-b-west", "reply")
                    and any("typescript" in r["peer"] for r in spans) and any("python" in r["peer"] for r in spans))
            if done:
                return last
        time.sleep(0.2)
    raise AssertionError(f"the TypeScript request's trace never completed: {json.dumps(last, indent=1)}")


def check(label: str, got: str, *want: str) -> None:
    missing = [w for w in want if w not in got]
    if missing:
        raise AssertionError(f"{label}: {got!r} lacks {missing}")
    print(f"ok   {label}: {got}")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--java-classpath", required=True, help="classpath with nexus-client.jar, its deps and MixedJava")
    ap.add_argument("--ts-client", default=os.environ.get("NEXUS_TS_CLIENT", ""), help="installed nexus-client package dir")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="nexus-mixed-")
    procs: list[subprocess.Popen] = []
    gateways: list[Gateway] = []
    clients: list[nx.Client] = []
    cp = ControlPlane(os.path.join(work, "cp"))
    try:
        os.makedirs(cp.dir)
        cp.start()
        certs = os.path.join(work, "certs")
        subprocess.run([nexus_bin(), "federation-certs", "--out", certs, "--regions", "a-east,b-west"],
                       check=True, capture_output=True)
        # a-east dials b-west (regions dial the ones whose names sort after theirs).
        b = region_gateway(certs, "b-west", {}, work, cp)
        gateways.append(b)
        a = region_gateway(certs, "a-east", {"b-west": b}, work, cp)
        gateways.append(a)

        # The Python service, in a-east.
        py = await nx.Client.connect(a.url, name="mixed-python")
        clients.append(py)

        async def greet(m: nx.Message) -> str:
            trace = (m.traceparent or "--").split("-")[1]
            return f"python({py.server_info.region}) greets {m.text} trace={trace}"
        await py.serve("mixed.py.greet", greet, queue="py-svc")

        # The Java service, in b-west.
        java = subprocess.Popen(["java", "-cp", args.java_classpath, "MixedJava", "serve", b.url, "mixed.java.sum"],
                                stdout=subprocess.PIPE, text=True)
        procs.append(java)
        line = java.stdout.readline().strip()
        if line != "ready":
            raise AssertionError(f"the Java service did not start: {line!r}")

        # Java client in b-west -> Python service in a-east.
        out = await run_client(["java", "-cp", args.java_classpath, "MixedJava", "call", b.url, "mixed.py.greet",
                                "java", traceparent("00000000000000a1")])
        check("java(b-west) -> python(a-east)", out, "python(a-east) greets java", f"trace={TRACE_ID}")

        # TypeScript client in b-west -> Python service in a-east, forced-traced.
        env = {**os.environ, "NEXUS_TS_CLIENT": args.ts_client} if args.ts_client else dict(os.environ)
        out = await run_client(["node", os.path.join(here, "mixed_client.cjs"), b.url, "mixed.py.greet", "typescript",
                                traceparent("00000000000000b2"), "trace"], env)
        check("typescript(b-west) -> python(a-east)", out, "python(a-east) greets typescript", f"trace={TRACE_ID}")

        # ... and followed end to end through the control plane, adapters' spans included.
        records = trace_of_ts_request(cp)
        ts_span = next(r for r in records if r["event"] == "span" and "typescript" in r["peer"])
        py_span = next(r for r in records if r["event"] == "span" and "python" in r["peer"])
        check("trace: typescript span", f"{ts_span['gateway_id']} {ts_span['detail']}",
              "gw-b-west", "request mixed.py.greet", "span 00000000000000b2")
        check("trace: python span", f"{py_span['gateway_id']} {py_span['detail']}",
              "gw-a-east", "handle mixed.py.greet", "parent 00000000000000b2")
        if not all(r["trace_id"] == TRACE_ID for r in records):
            raise AssertionError(f"records of another trace: {records}")
        print(f"ok   trace: {len(records)} records across "
              f"{sorted({r['region'] + '/' + r['gateway_id'] for r in records})}")

        # Python client in a-east -> Java service in b-west.
        caller = await nx.Client.connect(a.url, name="mixed-python-caller")
        clients.append(caller)
        got = await request_until_served(caller, "mixed.java.sum", "1,2,3,4", traceparent("00000000000000c3"))
        check("python(a-east) -> java(b-west)", got, "java(b-west) sums 10", f"trace={TRACE_ID}")
        print("mixed-language test passed")
        return 0
    finally:
        for c in clients:
            await c.close()
        for p in procs:
            p.kill()
            p.wait()
        for g in gateways:
            g.kill()
        if cp.proc is not None:
            cp.proc.kill()
            cp.proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
