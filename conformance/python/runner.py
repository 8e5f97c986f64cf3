"""Conformance runner for the Python adapter: reads conformance/cases.json and runs every case
against real gateway processes (see conformance/README.md for the step language).

Usage: python runner.py [--cases PATH] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nexus_client as nx  # noqa: E402
from harness import Environment  # noqa: E402

ERRORS = {
    "invalid_subject": nx.InvalidSubjectError,
    "no_responders": nx.NoRespondersError,
    "timeout": nx.RequestTimeoutError,
    "service": nx.ServiceError,
    "limit": nx.LimitError,
    "denied": nx.DeniedError,
    "discovery": nx.DiscoveryError,
    "invalid": nx.InvalidError,
    "disconnected": nx.DisconnectedError,
    "unavailable": nx.UnavailableError,
    "closed": nx.ClosedError,
    "connect": nx.ConnectError,
}


class CaseFailed(Exception):
    pass


def payload_of(step: dict, prefix: str = "") -> bytes:
    if "payload_size" in step:
        return b"x" * step["payload_size"]
    return step.get("payload", "").encode()


def handler_for(spec: str):
    async def handler(msg: nx.Message):
        if spec == "echo":
            return msg.payload
        if spec.startswith("delay:"):
            await asyncio.sleep(int(spec[len("delay:"):]) / 1000)
            return msg.payload
        if spec.startswith("prefix:"):
            return spec[len("prefix:"):].encode() + msg.payload
        if spec.startswith("error:"):
            raise nx.ServiceError(spec[len("error:"):])
        if spec == "silent":
            await asyncio.sleep(3600)
        if spec == "traceparent":
            return (msg.traceparent or "").encode()
        raise nx.ServiceError(f"unknown handler {spec}")
    return handler


class Runner:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.clients: dict[str, nx.Client] = {}
        self.subs: dict[str, nx.Subscription] = {}
        self.keep: list = []
        self.killed = ""
        self.terminated = ""
        self.pending: dict[str, asyncio.Task] = {}
        self.marks: dict[str, float] = {}

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()

    async def expect_error(self, step: dict, coro) -> None:
        kind = step.get("expect_error")
        start = time.monotonic()
        if kind is None:
            return await coro
        try:
            await coro
        except nx.NexusError as e:
            if not isinstance(e, ERRORS[kind]):
                raise CaseFailed(f"{step['op']}: expected {kind}, got {type(e).__name__}: {e}")
            if "error_contains" in step and step["error_contains"] not in str(e):
                raise CaseFailed(f"{step['op']}: error {e!r} does not contain {step['error_contains']!r}")
            if "max_elapsed_ms" in step and (time.monotonic() - start) * 1000 > step["max_elapsed_ms"]:
                raise CaseFailed(f"{step['op']}: error came after {(time.monotonic() - start):.2f}s")
            return None
        raise CaseFailed(f"{step['op']}: expected a {kind} error, got success")

    async def retrying(self, step: dict, make):
        deadline = time.monotonic() + step.get("retry_ms", 0) / 1000
        while True:
            try:
                return await make()
            except nx.NexusError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    async def step(self, s: dict) -> None:
        op = s["op"]
        if op == "connect":
            key = self.env.keys.get(s.get("key", "none"), "")
            if s.get("via") == "srv":
                url = self.env.srv_url(s.get("region"))
            elif s.get("via") == "relay":
                url = self.env.relay.url
            elif s.get("gateway") == "remote":
                url = self.env.remote.url
            else:
                url = self.env.gateway.url

            tls: dict = {}
            if "tls_ca" in s:
                tls["tls_ca_file"] = self.env.tls_files(s["tls_ca"])[0]
            if "tls_client_cert" in s:
                _, cert, key_file = self.env.tls_files(s["tls_client_cert"])
                tls["tls_client_cert_file"], tls["tls_client_key_file"] = cert, key_file
            if "tls_server_name" in s:
                tls["tls_server_name"] = s["tls_server_name"]
            if s.get("tls"):
                tls["tls"] = True

            async def make():
                opts = nx.ClientOptions(
                    api_key=key, name=f"conformance-{s['client']}", connect_timeout=3.0,
                    reconnect_backoff=(0.05, 0.5), stream_window=s.get("stream_window", 256),
                    local_payload_check=s.get("local_payload_check", True),
                    compression=None if s.get("compression") == "off" else s.get("compression", "zstd"),
                    publish_retry_timeout=s.get("publish_retry_ms", 30000) / 1000, **tls)
                return await nx.Client.connect(url, options=opts)
            if "expect_error" in s:
                await self.expect_error(s, make())
            else:
                self.clients[s["client"]] = await self.retrying(s, make)
        elif op == "close":
            await self.clients.pop(s["client"]).close()
        elif op == "subscribe":
            c = self.clients[s["client"]]

            async def sub():
                self.subs[s["sub"]] = await c.subscribe(s["subject"], s.get("queue", ""))
            await self.expect_error(s, sub())
        elif op == "publish":
            c = self.clients[s["client"]]
            call = c.publish(s["subject"], payload_of(s), headers=s.get("headers"), ack=s.get("ack", False))
            if "pending" in s:
                self.pending[s["pending"]] = asyncio.create_task(call)
                await asyncio.sleep(0)  # let it queue its frame before the next step
                return
            await self.expect_error(s, call)
        elif op == "await":
            started = time.monotonic()
            await self.expect_error(s, self.pending.pop(s["pending"]))
            if "max_elapsed_ms" in s and (time.monotonic() - started) * 1000 > s["max_elapsed_ms"]:
                raise CaseFailed(f"await: took {(time.monotonic() - started):.2f}s")
        elif op == "relay_hold":
            self.env.relay.hold()
        elif op == "relay_cut":
            self.env.relay.cut()
        elif op == "relay_block":
            self.env.relay.blocked = True
        elif op == "relay_pass":
            self.env.relay.blocked = False
        elif op == "await_route":
            await asyncio.to_thread(self.env.await_route, s["name"], s["subject"])
        elif op == "kill_gateway":
            self.env.gateway.kill()
        elif op == "start_gateway":
            await asyncio.to_thread(self.env.gateway.start)
        elif op == "expect_disconnected":
            deadline = time.monotonic() + s.get("timeout_ms", 5000) / 1000
            while self.clients[s["client"]].is_connected:
                if time.monotonic() > deadline:
                    raise CaseFailed(f"{s['client']} still connected")
                await asyncio.sleep(0.02)
        elif op == "await_replicated":
            await asyncio.to_thread(self.env.await_replicated)
        elif op == "await_interest":
            await asyncio.to_thread(self.env.await_interest, s["subject"])
        elif op == "mark_metrics":
            self.marks = {"batches": self.env.metric("nexus_session_batches_received_total"),
                          "pubs": self.env.metric("nexus_messages_total", pattern="pub", direction="in")}
        elif op == "expect_batched":
            batches = self.env.metric("nexus_session_batches_received_total") - self.marks["batches"]
            pubs = self.env.metric("nexus_messages_total", pattern="pub", direction="in") - self.marks["pubs"]
            if pubs < s["messages"] or batches > s["max_batches"] or batches < 1:
                raise CaseFailed(f"{pubs:.0f} publishes arrived in {batches:.0f} batches; expected at least "
                                 f"{s['messages']} in at most {s['max_batches']}")
            print(f"  batched: {pubs:.0f} publishes in {batches:.0f} gRPC messages (at most {s['max_batches']})")
        elif op == "expect_metric":
            value = self.env.metric(s["metric"], **s.get("labels", {}))
            if value != s["value"]:
                raise CaseFailed(f"{s['metric']}{s.get('labels', {})} is {value:g}, expected {s['value']}")
        elif op == "drain":
            await self.clients[s["client"]].drain()
        elif op == "expect_end":
            try:
                m = await self.subs[s["sub"]].next_message(s.get("timeout_ms", 5000) / 1000)
            except asyncio.TimeoutError:
                raise CaseFailed(f"{s['sub']} did not end")
            if m is not None:
                raise CaseFailed(f"{s['sub']}: expected the end, got {m.payload[:40]!r}")
        elif op == "publish_many":
            c = self.clients[s["client"]]
            for i in range(s["count"]):
                await c.publish(s["subject"], f"{s['prefix']}-{i}")
        elif op == "flush":
            await self.clients[s["client"]].flush()
        elif op == "expect_message":
            m = await self.next(s["sub"], s.get("timeout_ms", 5000))
            if "subject" in s and m.subject != s["subject"]:
                raise CaseFailed(f"expected subject {s['subject']}, got {m.subject}")
            if ("payload" in s or "payload_size" in s) and m.payload != payload_of(s):
                raise CaseFailed(f"expected payload {payload_of(s)[:40]!r}, got {m.payload[:40]!r}")
            for k, v in s.get("headers", {}).items():
                if m.header(k) != v:
                    raise CaseFailed(f"header {k}: expected {v!r}, got {m.header(k)!r}")
            if s.get("has_traceparent") and not nx.is_valid_traceparent(m.traceparent or ""):
                raise CaseFailed(f"no valid traceparent: {m.headers}")
        elif op == "expect_no_message":
            try:
                m = await self.subs[s["sub"]].next_message(s["within_ms"] / 1000)
            except asyncio.TimeoutError:
                return
            raise CaseFailed(f"{s['sub']}: unexpected message on {m.subject}: {m.payload[:40]!r}")
        elif op == "expect_all":
            for i in range(s["count"]):
                m = await self.next(s["sub"], s.get("timeout_ms", 10000))
                want = f"{s['prefix']}-{i}".encode()
                if m.payload != want:
                    raise CaseFailed(f"{s['sub']}: expected {want!r} (in order), got {m.payload!r}")
        elif op == "expect_exclusive":
            seen: dict[bytes, str] = {}
            deadline = time.monotonic() + s.get("timeout_ms", 10000) / 1000
            while len(seen) < s["count"]:
                if time.monotonic() > deadline:
                    raise CaseFailed(f"only {len(seen)} of {s['count']} messages reached the group")
                for name in s["subs"]:
                    try:
                        m = await self.subs[name].next_message(0.02)
                    except asyncio.TimeoutError:
                        continue
                    if m.payload in seen:
                        raise CaseFailed(f"{m.payload!r} delivered to {seen[m.payload]} and {name}")
                    seen[m.payload] = name
            for name in s["subs"]:
                try:
                    m = await self.subs[name].next_message(0.1)
                    raise CaseFailed(f"extra delivery {m.payload!r} to {name}")
                except asyncio.TimeoutError:
                    pass
            want = {f"{s['prefix']}-{i}".encode() for i in range(s["count"])}
            if set(seen) != want:
                raise CaseFailed("the group received other messages than those published")
        elif op == "serve":
            c = self.clients[s["client"]]
            self.keep.append(await c.serve(s["subject"], handler_for(s["handler"]), s.get("queue", "")))
        elif op == "request":
            c = self.clients[s["client"]]
            timeout = s["timeout_ms"] / 1000 if "timeout_ms" in s else None

            async def req():
                return await c.request(s["subject"], payload_of(s), headers=s.get("headers"), timeout=timeout)

            async def checked():
                m = await self.retrying(s, req)
                if "expect_payload" in s and m.payload != s["expect_payload"].encode():
                    raise CaseFailed(f"expected reply {s['expect_payload']!r}, got {m.payload[:60]!r}")
                if "expect_payload_size" in s and len(m.payload) != s["expect_payload_size"]:
                    raise CaseFailed(f"expected a reply of {s['expect_payload_size']} bytes, got {len(m.payload)}")
            if "pending" in s:
                # `await` collects the outcome (and checks expect_error there).
                self.pending[s["pending"]] = asyncio.create_task(checked())
                await asyncio.sleep(0.05)  # let the request reach the responder before the next step
                return
            if "expect_error" in s:
                await self.expect_error(s, req())
                return
            await checked()
        elif op == "listen_streams":
            c = self.clients[s["client"]]
            listener = await c.listen_streams(s["subject"], s.get("queue", ""))

            async def echo_all():
                async for st in listener:
                    if s["handler"] == "hold":
                        self.keep.append(st)
                        continue
                    async def echo(st=st):
                        async for m in st:
                            await st.send(m.payload)
                        await st.finish()
                    self.keep.append(asyncio.create_task(echo()))
            self.keep.append(asyncio.create_task(echo_all()))
        elif op == "stream":
            c = self.clients[s["client"]]
            if "expect_error" in s:
                await self.expect_error(s, c.open_stream(s["subject"]))
                return
            st = await c.open_stream(s["subject"])

            async def send_all():
                for i in range(s["count"]):
                    await st.send(f"{s['prefix']}-{i}")
                await st.finish()
            sender = asyncio.create_task(send_all())
            got = 0
            async for m in st:
                want = f"{s['prefix']}-{got}".encode()
                if m.payload != want:
                    raise CaseFailed(f"stream: expected {want!r}, got {m.payload!r}")
                got += 1
            await sender
            if got != s["count"]:
                raise CaseFailed(f"stream: {got} of {s['count']} frames came back")
        elif op == "kill_connected_gateway":
            info = self.clients[s["client"]].server_info
            if info is None:
                raise CaseFailed("the client is not connected")
            self.killed = info.gateway_id
            self.env.kill_gateway(info.gateway_id)
        elif op == "terminate_connected_gateway":
            info = self.clients[s["client"]].server_info
            if info is None:
                raise CaseFailed("the client is not connected")
            self.killed = self.terminated = info.gateway_id
            self.env.gateway_by_id(info.gateway_id).terminate()
        elif op == "expect_other_gateway":
            c = self.clients[s["client"]]
            deadline = time.monotonic() + s.get("timeout_ms", 5000) / 1000
            while True:
                info = c.server_info
                if info is not None and info.gateway_id != self.killed:
                    break
                if time.monotonic() > deadline:
                    raise CaseFailed(f"expected a gateway other than {self.killed}, got {info}")
                await asyncio.sleep(0.02)
        elif op == "expect_gateway_exited":
            if not self.terminated:
                raise CaseFailed("no gateway was terminated")
            g = self.env.gateway_by_id(self.terminated)
            timeout = s.get("timeout_ms", 5000) / 1000
            code = await asyncio.to_thread(g.wait_exited, timeout)
            if code is None:
                raise CaseFailed(f"gateway {self.terminated} still runs {timeout:.1f}s later")
            if code != 0:
                raise CaseFailed(f"gateway {self.terminated} exited with status {code}")
        elif op == "stream_blocks":
            st = await self.clients[s["client"]].open_stream(s["subject"])
            sent = 0
            try:
                while sent <= s["expect_sent"]:
                    try:
                        await asyncio.wait_for(st.send(f"frame-{sent}"), s["block_ms"] / 1000)
                    except asyncio.TimeoutError:
                        break
                    sent += 1
            finally:
                st.abort("conformance: done")
            if sent != s["expect_sent"]:
                raise CaseFailed(f"{sent} sends completed before one waited, expected {s['expect_sent']}")
        elif op == "restart_gateway":
            await asyncio.to_thread(self.env.gateway.restart)
        elif op == "expect_eventually":
            c, sub = self.clients[s["client"]], self.subs[s["sub"]]
            deadline = time.monotonic() + s.get("timeout_ms", 10000) / 1000
            while True:
                try:
                    await c.publish(s["subject"], s["payload"])
                    m = await sub.next_message(0.1)
                    if m.payload == s["payload"].encode():
                        return
                except (asyncio.TimeoutError, nx.NexusError):
                    pass
                if time.monotonic() > deadline:
                    raise CaseFailed(f"{s['sub']} never received {s['payload']!r}")
        elif op == "measure_failover":
            await self.measure_failover(s)
        else:
            raise CaseFailed(f"unknown op {op}")

    async def measure_failover(self, s: dict) -> None:
        """Kills the gateway a subscriber (connected through DNS SRV, default settings) is on,
        ``rounds`` times, and measures the gap from the kill to the first message published
        after the kill (on the other gateway, every ~2 ms) that reaches the subscriber."""
        rounds = failover_rounds(s)
        key = self.env.keys.get(s.get("key", "none"), "")
        subject = s.get("subject", "failover.ticks")
        sub_client = await nx.Client.connect(self.env.srv_url(), api_key=key or None)
        self.clients["failover-subscriber"] = sub_client
        sub = await sub_client.subscribe(subject)
        await sub_client.flush()
        gaps: list[float] = []
        for rnd in range(rounds):
            info = sub_client.server_info
            if info is None:
                raise CaseFailed(f"round {rnd}: the subscriber is not connected")
            on = self.env.gateway_by_id(info.gateway_id)
            other = next(g for g in self.env.gateways if g is not on)
            try:
                publisher = await nx.Client.connect(other.url, api_key=key or None)
            except nx.NexusError as e:
                raise CaseFailed(f"round {rnd}: the publisher cannot connect to {other.url} "
                                 f"(the subscriber is on {info.gateway_id}): {e}")
            started = 0  # the number of the last tick whose publish began
            stop = False

            async def tick() -> None:
                nonlocal started
                i = 0
                while not stop:
                    i += 1
                    started = i
                    try:
                        await publisher.publish(subject, f"{rnd}-{i}")
                        await publisher.flush()
                    except nx.NexusError:
                        pass
                    await asyncio.sleep(0.002)

            ticker = asyncio.create_task(tick())
            try:
                # Ticks of this round flow through the cluster hop before the kill.
                await self.tick_after(sub, rnd, 0, 15, f"round {rnd}: no tick before the kill")
                on.kill()
                killed = time.monotonic()
                # The first tick published after the kill proves the new session (an older one
                # may have been in flight or in the client's buffer).
                last_before = started
                await self.tick_after(sub, rnd, last_before, 10, f"round {rnd}: no tick within 10 s of the kill")
                gaps.append(time.monotonic() - killed)
            finally:
                stop = True
                await ticker
                await publisher.close()
            await asyncio.to_thread(on.start)
        report_failover("python", gaps, s)

    async def tick_after(self, sub: nx.Subscription, rnd: int, after: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CaseFailed(what)
            try:
                m = await sub.next_message(left)
            except asyncio.TimeoutError:
                raise CaseFailed(what)
            if m is None:
                raise CaseFailed(f"{what}: the subscription ended")
            r, i = m.payload.decode().split("-")
            if int(r) == rnd and int(i) > after:
                return

    async def next(self, sub: str, timeout_ms: int) -> nx.Message:
        try:
            m = await self.subs[sub].next_message(timeout_ms / 1000)
        except asyncio.TimeoutError:
            raise CaseFailed(f"{sub}: no message within {timeout_ms} ms")
        if m is None:
            raise CaseFailed(f"{sub}: subscription ended")
        return m


def failover_rounds(step: dict) -> int:
    """The step's ``rounds``, or ``$NEXUS_FAILOVER_ROUNDS`` (the by-hand measurement)."""
    return int(os.environ.get("NEXUS_FAILOVER_ROUNDS") or step.get("rounds", 3))


def report_failover(lang: str, gaps: list[float], step: dict) -> None:
    """Prints the gaps' p50/p99 (as tests/cluster.rs does) and fails when one is too long."""
    ms = sorted(g * 1000 for g in gaps)
    at = lambda q: ms[min(max(math.ceil(len(ms) * q), 1), len(ms)) - 1]  # noqa: E731
    print(f"  FAILOVER {lang} kills={len(ms)} p50={at(0.5):.0f}ms p99={at(0.99):.0f}ms max={ms[-1]:.0f}ms "
          f"all=[{', '.join(f'{g:.0f}' for g in ms)}]", flush=True)
    if ms[-1] > step.get("max_gap_ms", 3000):
        raise CaseFailed(f"a gap of {ms[-1]:.0f} ms is longer than {step.get('max_gap_ms', 3000)} ms")


def step_timeout(s: dict) -> float:
    """60 s a step; a failover measurement gets 30 s a round on top."""
    return 60 + (30 * failover_rounds(s) if s["op"] == "measure_failover" else 0)


async def run_case(doc: dict, case: dict) -> None:
    env = Environment(doc["environments"][case["env"]])
    runner = Runner(env)
    try:
        await asyncio.to_thread(env.start)
        await env.start_relay()
        for i, s in enumerate(case["steps"]):
            try:
                await asyncio.wait_for(runner.step(s), step_timeout(s))
            except CaseFailed as e:
                raise CaseFailed(f"step {i + 1} ({s['op']}): {e}")
            except Exception as e:
                raise CaseFailed(f"step {i + 1} ({s['op']}): {type(e).__name__}: {e}")
    finally:
        for t in [*runner.keep, *runner.pending.values()]:
            if isinstance(t, asyncio.Task):
                t.cancel()
        await runner.close()
        env.stop()


async def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", default=os.path.join(here, "..", "cases.json"))
    ap.add_argument("--only", action="append")
    args = ap.parse_args()
    with open(args.cases) as f:
        doc = json.load(f)
    passed = failed = 0
    for case in doc["cases"]:
        if args.only and case["name"] not in args.only:
            continue
        start = time.monotonic()
        try:
            await run_case(doc, case)
            passed += 1
            print(f"PASS {case['name']} ({(time.monotonic() - start) * 1000:.0f} ms)", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {case['name']}: {e}", flush=True)
    print(f"python conformance: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
