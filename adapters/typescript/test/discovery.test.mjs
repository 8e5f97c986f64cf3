// Gateway discovery through DNS SRV (nexus+srv://), against in-process gateways (grpc-js
// servers answering Hello with Welcome) and a DNS answer the test changes between resolutions
// (node:dns's Resolver, which the package uses, patched for the test).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { join } from "node:path";
import { promises as dns } from "node:dns";

const pkg = process.env.NEXUS_TS_CLIENT;
const nx = createRequire(import.meta.url)(pkg);
const fromPkg = createRequire(join(pkg, "package.json"));
const grpc = fromPkg("@grpc/grpc-js");
const { frame, batch, encodeBatch, decodeBatch } = fromPkg(join(pkg, "dist", "cjs", "codec.js"));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const quiet = { info: () => undefined, warn: () => undefined };

/** A gateway that answers Hello with Welcome (its id `gatewayId`) and keeps the session open. */
async function gateway(gatewayId) {
  const server = new grpc.Server();
  const method = {
    path: "/nexus.v1.Gateway/Session", requestStream: true, responseStream: true,
    requestSerialize: encodeBatch, requestDeserialize: decodeBatch, responseSerialize: encodeBatch, responseDeserialize: decodeBatch,
  };
  server.addService({ Session: method }, {
    Session: (call) => {
      call.on("data", (b) => {
        for (const f of b.frames) {
          if (f.kind.case === "hello") call.write(batch([frame({ case: "welcome", value: { sessionId: "1", gatewayId, protocol: 1 } })]));
        }
      });
      call.on("end", () => call.end());
      call.on("error", () => undefined);
    },
  });
  const port = await new Promise((resolve, reject) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  after(() => server.forceShutdown());
  return { server, port };
}

test("a cached SRV answer whose gateways all failed is resolved again before backing off", async (t) => {
  // The answer cached when the client connected lists only gateway a (b was down then). When a
  // dies, the round that tries the cached answer fails; the client asks DNS again at once and
  // reaches b in the same round, without a failed round and its doubled backoff (the failover
  // measurement's slow tail).
  const a = await gateway("a");
  const b = await gateway("b");
  const srv = (name, port, priority) => ({ name: `${name}.gw.r.example`, port, priority, weight: 1 });
  const answers = [[srv("a", a.port, 1)], [srv("a", a.port, 1), srv("b", b.port, 2)]];
  let resolved = 0;
  t.mock.method(dns.Resolver.prototype, "resolveSrv", async function (name) {
    assert.equal(name, "_nexus._tcp.r.example");
    resolved += 1;
    return answers[Math.min(resolved, answers.length) - 1];
  });
  t.mock.method(dns.Resolver.prototype, "resolve4", async () => ["127.0.0.1"]);
  let failedRounds = 0;
  const connectRound = nx.Client.prototype.connectRound;
  t.mock.method(nx.Client.prototype, "connectRound", async function () {
    try {
      return await connectRound.call(this);
    } catch (e) {
      failedRounds += 1;
      throw e;
    }
  });

  const client = await nx.Client.connect("nexus+srv://r.example?dns=127.0.0.1:1", { reconnectBackoffMs: [50, 50], logger: quiet });
  try {
    assert.equal(client.serverInfo.gatewayId, "a");
    a.server.forceShutdown();
    for (let i = 0; client.serverInfo?.gatewayId !== "b"; i++) {
      if (i > 500) throw new Error(`the client did not move to b (last error: ${client.lastError})`);
      await sleep(10);
    }
    assert.equal(resolved, 2);
    assert.equal(failedRounds, 0, `a failed round (${client.lastError})`);
  } finally {
    await client.close();
  }
});
