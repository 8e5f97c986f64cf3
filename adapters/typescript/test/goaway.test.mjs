// How the client moves away from a draining gateway (docs/protocol.md §3.4), against a
// scripted in-process gateway (grpc-js server): the test decides when GoAway is sent and what
// is answered, and sees every frame the client sent on each session.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { join } from "node:path";

const pkg = process.env.NEXUS_TS_CLIENT;
const nx = createRequire(import.meta.url)(pkg);
const fromPkg = createRequire(join(pkg, "package.json"));
const grpc = fromPkg("@grpc/grpc-js");
// The package's own codec (built from the same .proto), by path: it is not a public export.
const { frame, batch, encodeBatch, decodeBatch } = fromPkg(join(pkg, "dist", "cjs", "codec.js"));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const goAway = (drainMs) => frame({ case: "goAway", value: { reason: "gateway is shutting down", drainMs } });
const quiet = { info: () => undefined, warn: () => undefined };

/** One session with the fake gateway: what the client sent, and whether it half-closed. */
class FakeSession {
  constructor(number, call) {
    this.number = number;
    this.call = call;
    this.received = [];
    this.halfClosed = false;
  }
  send(f) {
    if (!this.halfClosed) this.call.write(batch([f]));
  }
  kinds() {
    return this.received.map((f) => f.kind.case);
  }
  framesOf(kind) {
    return this.received.filter((f) => f.kind.case === kind).map((f) => f.kind.value);
  }
}

/** A gRPC server speaking just enough of the session protocol; `script(session, frame)` adds behaviour. */
async function fakeGateway(script = () => undefined) {
  const g = { sessions: [], waiters: [] };
  const server = new grpc.Server();
  const method = {
    path: "/nexus.v1.Gateway/Session", requestStream: true, responseStream: true,
    requestSerialize: encodeBatch, requestDeserialize: decodeBatch, responseSerialize: encodeBatch, responseDeserialize: decodeBatch,
  };
  server.addService({ Session: method }, {
    Session: (call) => {
      const s = new FakeSession(g.sessions.length + 1, call);
      g.sessions.push(s);
      g.waiters.splice(0).forEach((w) => w());
      call.on("data", (b) => {
        for (const f of b.frames) {
          s.received.push(f);
          const k = f.kind;
          if (k.case === "hello") s.send(frame({ case: "welcome", value: { sessionId: String(s.number), gatewayId: `fake-${s.number}`, protocol: 1 } }));
          else if (k.case === "sub" && k.value.ackId) s.send(frame({ case: "ack", value: { ackId: k.value.ackId } }));
          else if (k.case === "ping") s.send(frame({ case: "pong", value: { nonce: k.value.nonce } }));
          script(s, f);
        }
      });
      call.on("end", () => {
        // Like the gateway: a half-close ends the session.
        s.halfClosed = true;
        call.end();
      });
      call.on("error", () => undefined);
    },
  });
  g.port = await new Promise((resolve, reject) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, port) => (e ? reject(e) : resolve(port))));
  g.url = `http://127.0.0.1:${g.port}`;
  g.session = async (n) => {
    const deadline = Date.now() + 5000;
    while (g.sessions.length < n) {
      if (Date.now() > deadline) throw new Error(`no session ${n}`);
      await new Promise((r) => { g.waiters.push(r); setTimeout(r, 50); });
    }
    return g.sessions[n - 1];
  };
  after(() => server.forceShutdown());
  return g;
}

/** Resolves once the client reacted to GoAway: its session no longer takes new work. */
async function untilMoving(client) {
  for (let i = 0; i < 600; i++) {
    if (client.isConnected && !client.accepting) return;
    await sleep(5);
  }
  throw new Error("the client did not react to GoAway");
}

test("the drain window keeps a margin of 500 ms, at most half of drain_ms", () => {
  assert.equal(nx.drainWindowMs(20000), 19500);
  assert.equal(nx.drainWindowMs(600), 300);
  assert.equal(nx.drainWindowMs(0), 0);
});

test("the request in flight is answered on the old session; a new one waits and goes to the next, without backoff", async () => {
  const g = await fakeGateway((s, f) => {
    if (f.kind.case !== "req") return;
    const { reqId, payload } = f.kind.value;
    if (s.number === 1) {
      s.send(goAway(20000));
      setTimeout(() => s.send(frame({ case: "reply", value: { reqId, payload: Buffer.concat([Buffer.from("old:"), payload]) } })), 300);
    } else {
      s.send(frame({ case: "reply", value: { reqId, payload: Buffer.concat([Buffer.from("new:"), payload]) } }));
    }
  });
  const client = await nx.Client.connect(g.url, { reconnectBackoffMs: [5000, 5000], logger: quiet });
  try {
    const first = client.request("svc", "first");
    const s1 = await g.session(1);
    await untilMoving(client);
    const started = Date.now();
    const second = await client.request("svc", "second");
    assert.equal((await first).text, "old:first");
    assert.equal(second.text, "new:second");
    assert.ok(Date.now() - started < 2000, "the move waited for the reconnect backoff");
    assert.ok(s1.halfClosed, "the old session was not half-closed");
    assert.deepEqual(s1.framesOf("req").map((r) => Buffer.from(r.payload).toString()), ["first"]);
    assert.equal(client.serverInfo.gatewayId, "fake-2");
  } finally {
    await client.close();
  }
});

test("replies to requests delivered before GoAway go out on the old session before the half-close", async () => {
  const g = await fakeGateway();
  const client = await nx.Client.connect(g.url, { reconnectBackoffMs: [5000, 5000], logger: quiet });
  try {
    await client.serve("svc", async (msg) => {
      await sleep(300);
      return msg.payload;
    });
    const s1 = await g.session(1);
    const sid = s1.framesOf("sub")[0].sid;
    s1.send(frame({ case: "msg", value: { sid, subject: "svc", replyTo: "$nexus.inbox.7", payload: Buffer.from("x"), deadlineMs: 5000 } }));
    s1.send(goAway(20000));
    const s2 = await g.session(2);
    assert.ok(s1.halfClosed);
    const replies = s1.framesOf("reply");
    assert.equal(replies.length, 1, s1.kinds().join(","));
    assert.equal(replies[0].replyTo, "$nexus.inbox.7");
    assert.equal(Buffer.from(replies[0].payload).toString(), "x");
    // The responder's subscription is made again on the new session.
    for (let i = 0; i < 100 && !s2.framesOf("sub").some((x) => x.sid === sid); i++) await sleep(10);
    assert.ok(s2.framesOf("sub").some((x) => x.sid === sid));
  } finally {
    await client.close();
  }
});

test("what is unanswered at the deadline is handled as on a lost session: the confirmed publish is retried with its id", async () => {
  const g = await fakeGateway((s, f) => {
    if (f.kind.case !== "pub") return;
    if (s.number === 1) s.send(goAway(800)); // window: 400 ms
    else if (f.kind.value.ackId) s.send(frame({ case: "ack", value: { ackId: f.kind.value.ackId, delivered: 1 } }));
  });
  const client = await nx.Client.connect(g.url, { reconnectBackoffMs: [5000, 5000], logger: quiet });
  try {
    const req = client.request("svc", "lost");
    req.catch(() => undefined);
    await sleep(50);
    const started = Date.now();
    assert.equal(await client.publish("events.a", "confirmed", { ack: true }), 1);
    assert.ok(Date.now() - started < 2000);
    await assert.rejects(req, (e) => e instanceof nx.DisconnectedError);
    const [old] = g.sessions[0].framesOf("pub");
    const again = g.sessions[1].framesOf("pub");
    assert.equal(again.length, 1);
    assert.deepEqual(Buffer.from(again[0].id), Buffer.from(old.id));
    assert.notEqual(again[0].ackId, old.ackId);
  } finally {
    await client.close();
  }
});

test("close() during a move does not hang, and the gated request rejects with ClosedError", async () => {
  const g = await fakeGateway((s, f) => {
    if (f.kind.case === "req" && Buffer.from(f.kind.value.payload).toString() === "stuck") s.send(goAway(20000));
  });
  const client = await nx.Client.connect(g.url, { logger: quiet });
  const stuck = client.request("svc", "stuck", { timeoutMs: 30000 });
  stuck.catch(() => undefined);
  await untilMoving(client);
  const gated = client.request("svc", "gated", { timeoutMs: 30000 });
  gated.catch(() => undefined);
  await sleep(100);
  const t0 = Date.now();
  await client.close();
  assert.ok(Date.now() - t0 < 1000);
  await assert.rejects(gated, (e) => e instanceof nx.ClosedError);
  await assert.rejects(stuck, (e) => e instanceof nx.NexusError);
  assert.deepEqual(g.sessions[0].framesOf("req").map((r) => Buffer.from(r.payload).toString()), ["stuck"]);
});
