// Conformance runner for the TypeScript adapter: reads conformance/cases.json and runs every
// case against real gateway processes (step language: conformance/README.md).
// Usage: node runner.cjs [--cases PATH] [--only NAME]...   (NEXUS_TS_CLIENT: the package dir)
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const nx = require(process.env.NEXUS_TS_CLIENT || "nexus-client");
const { Environment } = require("./harness.cjs");

const ERRORS = {
  invalid_subject: nx.InvalidSubjectError, no_responders: nx.NoRespondersError, timeout: nx.TimeoutError,
  service: nx.ServiceError, limit: nx.LimitError, denied: nx.DeniedError, discovery: nx.DiscoveryError,
  invalid: nx.InvalidError, disconnected: nx.DisconnectedError, unavailable: nx.UnavailableError,
  closed: nx.ClosedError, connect: nx.ConnectError,
};

class CaseFailed extends Error {}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const payloadOf = (s) => ("payload_size" in s ? Buffer.alloc(s.payload_size, "x") : Buffer.from(s.payload ?? ""));

function handlerFor(spec) {
  return async (msg) => {
    if (spec === "echo") return msg.payload;
    if (spec.startsWith("delay:")) {
      await sleep(Number(spec.slice("delay:".length)));
      return msg.payload;
    }
    if (spec.startsWith("prefix:")) return Buffer.concat([Buffer.from(spec.slice(7)), msg.payload]);
    if (spec.startsWith("error:")) throw new nx.ServiceError(spec.slice(6));
    if (spec === "silent") return new Promise(() => undefined);
    if (spec === "traceparent") return msg.traceparent ?? "";
    throw new nx.ServiceError(`unknown handler ${spec}`);
  };
}

class Runner {
  constructor(env) {
    this.env = env;
    this.clients = {};
    this.subs = {};
    this.pending = {};
    this.marks = {};
  }
  async expectError(s, fn) {
    const kind = s.expect_error;
    const start = Date.now();
    try {
      await fn();
    } catch (e) {
      if (!(e instanceof nx.NexusError)) throw e;
      if (!(e instanceof ERRORS[kind])) throw new CaseFailed(`expected ${kind}, got ${e.name}: ${e.message}`);
      if (s.error_contains && !e.message.includes(s.error_contains)) throw new CaseFailed(`error ${e.message} does not contain ${s.error_contains}`);
      if (s.max_elapsed_ms && Date.now() - start > s.max_elapsed_ms) throw new CaseFailed(`error came after ${Date.now() - start} ms`);
      return;
    }
    throw new CaseFailed(`expected a ${kind} error, got success`);
  }
  async retrying(s, fn) {
    const deadline = Date.now() + (s.retry_ms ?? 0);
    for (;;) {
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof nx.NexusError) || Date.now() >= deadline) throw e;
        await sleep(100);
      }
    }
  }
  async next(sub, timeoutMs) {
    let m;
    try {
      m = await this.subs[sub].next(timeoutMs);
    } catch {
      throw new CaseFailed(`${sub}: no message within ${timeoutMs} ms`);
    }
    if (!m) throw new CaseFailed(`${sub}: subscription ended`);
    return m;
  }
  async step(s) {
    const c = this.clients[s.client];
    switch (s.op) {
      case "connect": {
        const key = this.env.keys[s.key ?? "none"] ?? "";
        const url = s.via === "srv" ? this.env.srvUrl(s.region) : s.via === "relay" ? this.env.relay.url
          : s.gateway === "remote" ? this.env.remote.url : this.env.gateway.url;
        const opts = { apiKey: key, name: `conformance-${s.client}`, connectTimeoutMs: 3000, reconnectBackoffMs: [50, 500] };
        if (s.stream_window) opts.streamWindow = s.stream_window;
        if (s.local_payload_check === false) opts.localPayloadCheck = false;
        if (s.compression === "off") opts.compression = null;
        if ("publish_retry_ms" in s) opts.publishRetryTimeoutMs = s.publish_retry_ms;
        if (s.tls_ca) opts.tlsCaFile = this.env.tlsFiles(s.tls_ca)[0];
        if (s.tls_client_cert) [, opts.tlsClientCertFile, opts.tlsClientKeyFile] = this.env.tlsFiles(s.tls_client_cert);
        if (s.tls_server_name) opts.tlsServerName = s.tls_server_name;
        if (s.tls) opts.tls = true;
        const make = () => nx.Client.connect(url, opts);
        if (s.expect_error) return this.expectError(s, make);
        this.clients[s.client] = await this.retrying(s, make);
        return;
      }
      case "close":
        await c.close();
        delete this.clients[s.client];
        return;
      case "subscribe": {
        const sub = async () => (this.subs[s.sub] = await c.subscribe(s.subject, { queue: s.queue }));
        return s.expect_error ? this.expectError(s, sub) : sub();
      }
      case "publish": {
        const pub = () => c.publish(s.subject, payloadOf(s), { headers: s.headers, ack: s.ack });
        if (s.pending) {
          const p = pub();
          p.catch(() => undefined);
          this.pending[s.pending] = p;
          await new Promise((r) => setImmediate(r)); // let it queue its frame before the next step
          return;
        }
        return s.expect_error ? this.expectError(s, pub) : pub();
      }
      case "await": {
        const p = this.pending[s.pending];
        delete this.pending[s.pending];
        return s.expect_error ? this.expectError(s, () => p) : p;
      }
      case "relay_hold":
        return this.env.relay.hold();
      case "relay_cut":
        return this.env.relay.cut();
      case "relay_block":
        this.env.relay.blocked = true;
        return;
      case "relay_pass":
        this.env.relay.blocked = false;
        return;
      case "await_route":
        return this.env.awaitRoute(s.name, s.subject);
      case "kill_gateway":
        return this.env.gateway.kill();
      case "start_gateway":
        return this.env.gateway.start();
      case "expect_disconnected": {
        const deadline = Date.now() + (s.timeout_ms ?? 5000);
        while (c.isConnected) {
          if (Date.now() > deadline) throw new CaseFailed(`${s.client} still connected`);
          await sleep(20);
        }
        return;
      }
      case "await_replicated":
        return this.env.awaitReplicated();
      case "await_interest":
        return this.env.awaitInterest(s.subject);
      case "mark_metrics":
        this.marks = {
          batches: await this.env.metric("nexus_session_batches_received_total"),
          pubs: await this.env.metric("nexus_messages_total", { pattern: "pub", direction: "in" }),
        };
        return;
      case "expect_batched": {
        const batches = (await this.env.metric("nexus_session_batches_received_total")) - this.marks.batches;
        const pubs = (await this.env.metric("nexus_messages_total", { pattern: "pub", direction: "in" })) - this.marks.pubs;
        if (pubs < s.messages || batches > s.max_batches || batches < 1) {
          throw new CaseFailed(`${pubs} publishes arrived in ${batches} batches; expected at least ${s.messages} in at most ${s.max_batches}`);
        }
        console.log(`  batched: ${pubs} publishes in ${batches} gRPC messages (at most ${s.max_batches})`);
        return;
      }
      case "expect_metric": {
        const value = await this.env.metric(s.metric, s.labels ?? {});
        if (value !== s.value) {
          throw new CaseFailed(`${s.metric}${JSON.stringify(s.labels ?? {})} is ${value}, expected ${s.value}`);
        }
        return;
      }
      case "drain":
        return c.drain();
      case "expect_end": {
        let m;
        try {
          m = await this.subs[s.sub].next(s.timeout_ms ?? 5000);
        } catch {
          throw new CaseFailed(`${s.sub} did not end`);
        }
        if (m) throw new CaseFailed(`${s.sub}: expected the end, got ${m.text.slice(0, 40)}`);
        return;
      }
      case "publish_many":
        for (let i = 0; i < s.count; i++) await c.publish(s.subject, `${s.prefix}-${i}`);
        return;
      case "flush":
        return c.flush();
      case "expect_message": {
        const m = await this.next(s.sub, s.timeout_ms ?? 5000);
        if (s.subject && m.subject !== s.subject) throw new CaseFailed(`expected subject ${s.subject}, got ${m.subject}`);
        if (("payload" in s || "payload_size" in s) && !m.payload.equals(payloadOf(s))) throw new CaseFailed(`unexpected payload ${m.payload.toString().slice(0, 40)}`);
        for (const [k, v] of Object.entries(s.headers ?? {})) if (m.header(k) !== v) throw new CaseFailed(`header ${k}: expected ${v}, got ${m.header(k)}`);
        if (s.has_traceparent && !nx.isValidTraceparent(m.traceparent ?? "")) throw new CaseFailed("no valid traceparent");
        return;
      }
      case "expect_no_message": {
        let m;
        try {
          m = await this.subs[s.sub].next(s.within_ms);
        } catch {
          return;
        }
        throw new CaseFailed(`${s.sub}: unexpected message on ${m?.subject}`);
      }
      case "expect_all":
        for (let i = 0; i < s.count; i++) {
          const m = await this.next(s.sub, s.timeout_ms ?? 10000);
          if (m.text !== `${s.prefix}-${i}`) throw new CaseFailed(`${s.sub}: expected ${s.prefix}-${i} (in order), got ${m.text}`);
        }
        return;
      case "expect_exclusive": {
        const seen = new Map();
        const deadline = Date.now() + (s.timeout_ms ?? 10000);
        while (seen.size < s.count) {
          if (Date.now() > deadline) throw new CaseFailed(`only ${seen.size} of ${s.count} messages reached the group`);
          for (const name of s.subs) {
            let m;
            try {
              m = await this.subs[name].next(20);
            } catch {
              continue;
            }
            if (seen.has(m.text)) throw new CaseFailed(`${m.text} delivered to ${seen.get(m.text)} and ${name}`);
            seen.set(m.text, name);
          }
        }
        for (const name of s.subs) {
          const extra = await this.subs[name].next(100).catch(() => undefined);
          if (extra) throw new CaseFailed(`extra delivery ${extra.text} to ${name}`);
        }
        for (let i = 0; i < s.count; i++) if (!seen.has(`${s.prefix}-${i}`)) throw new CaseFailed(`${s.prefix}-${i} never reached the group`);
        return;
      }
      case "serve":
        await c.serve(s.subject, handlerFor(s.handler), { queue: s.queue });
        return;
      case "request": {
        const req = () => c.request(s.subject, payloadOf(s), { headers: s.headers, timeoutMs: s.timeout_ms });
        const checked = async () => {
          const m = await this.retrying(s, req);
          if ("expect_payload" in s && m.text !== s.expect_payload) throw new CaseFailed(`expected reply ${s.expect_payload}, got ${m.text.slice(0, 60)}`);
          if ("expect_payload_size" in s && m.payload.length !== s.expect_payload_size) throw new CaseFailed(`reply of ${m.payload.length} bytes`);
        };
        if (s.pending) {
          // `await` collects the outcome (and checks expect_error there).
          const p = s.expect_error ? req() : checked();
          p.catch(() => undefined);
          this.pending[s.pending] = p;
          await sleep(50); // let the request reach the responder before the next step
          return;
        }
        if (s.expect_error) return this.expectError(s, req);
        return checked();
      }
      case "listen_streams": {
        const listener = await c.listenStreams(s.subject, { queue: s.queue });
        (async () => {
          for await (const st of listener) {
            if (s.handler === "hold") {
              this.held = [...(this.held ?? []), st];
              continue;
            }
            (async () => {
              for await (const m of st) await st.send(m.payload);
              await st.finish();
            })().catch(() => undefined);
          }
        })();
        return;
      }
      case "stream": {
        if (s.expect_error) return this.expectError(s, () => c.openStream(s.subject));
        const st = await c.openStream(s.subject);
        const sender = (async () => {
          for (let i = 0; i < s.count; i++) await st.send(`${s.prefix}-${i}`);
          await st.finish();
        })();
        let got = 0;
        for await (const m of st) {
          if (m.text !== `${s.prefix}-${got}`) throw new CaseFailed(`stream: expected ${s.prefix}-${got}, got ${m.text}`);
          got++;
        }
        await sender;
        if (got !== s.count) throw new CaseFailed(`stream: ${got} of ${s.count} frames came back`);
        return;
      }
      case "kill_connected_gateway": {
        const info = c.serverInfo;
        if (!info) throw new CaseFailed("the client is not connected");
        this.killed = info.gatewayId;
        return this.env.killGateway(info.gatewayId);
      }
      case "terminate_connected_gateway": {
        const info = c.serverInfo;
        if (!info) throw new CaseFailed("the client is not connected");
        this.killed = this.terminated = info.gatewayId;
        this.env.gatewayById(info.gatewayId).terminate();
        return;
      }
      case "expect_other_gateway": {
        const deadline = Date.now() + (s.timeout_ms ?? 5000);
        for (;;) {
          const info = c.serverInfo;
          if (info && info.gatewayId !== this.killed) return;
          if (Date.now() > deadline) throw new CaseFailed(`expected a gateway other than ${this.killed}, got ${info?.gatewayId}`);
          await sleep(20);
        }
      }
      case "expect_gateway_exited": {
        if (!this.terminated) throw new CaseFailed("no gateway was terminated");
        const timeoutMs = s.timeout_ms ?? 5000;
        const exit = await this.env.gatewayById(this.terminated).waitExited(timeoutMs);
        if (!exit) throw new CaseFailed(`gateway ${this.terminated} still runs ${timeoutMs} ms later`);
        if (exit.code !== 0) throw new CaseFailed(`gateway ${this.terminated} exited with ${exit.code ?? `signal ${exit.signal}`}`);
        return;
      }
      case "stream_blocks": {
        const st = await c.openStream(s.subject);
        let sent = 0;
        try {
          while (sent <= s.expect_sent) {
            let timer;
            const send = st.send(`frame-${sent}`);
            send.catch(() => undefined); // a send still waiting fails when the stream is aborted
            const done = await Promise.race([send.then(() => true), new Promise((r) => (timer = setTimeout(() => r(false), s.block_ms)))]);
            clearTimeout(timer);
            if (!done) break;
            sent++;
          }
        } finally {
          st.abort("conformance: done");
        }
        if (sent !== s.expect_sent) throw new CaseFailed(`${sent} sends completed before one waited, expected ${s.expect_sent}`);
        return;
      }
      case "restart_gateway":
        return this.env.gateway.restart();
      case "expect_eventually": {
        const deadline = Date.now() + (s.timeout_ms ?? 10000);
        for (;;) {
          try {
            await c.publish(s.subject, s.payload);
            const m = await this.subs[s.sub].next(100);
            if (m && m.text === s.payload) return;
          } catch {
            // not yet
          }
          if (Date.now() > deadline) throw new CaseFailed(`${s.sub} never received ${s.payload}`);
        }
      }
      case "measure_failover":
        return this.measureFailover(s);
      default:
        throw new CaseFailed(`unknown op ${s.op}`);
    }
  }
  /**
   * Kills the gateway a subscriber (connected through DNS SRV, default settings) is on,
   * `rounds` times, and measures the gap from the kill to the first message published after
   * the kill (on the other gateway, every ~2 ms) that reaches the subscriber.
   */
  async measureFailover(s) {
    const rounds = failoverRounds(s);
    const key = this.env.keys[s.key ?? "none"] ?? "";
    const subject = s.subject ?? "failover.ticks";
    const subClient = await nx.Client.connect(this.env.srvUrl(), key ? { apiKey: key } : {});
    this.clients["failover-subscriber"] = subClient;
    const sub = await subClient.subscribe(subject);
    await subClient.flush();
    const gaps = [];
    for (let round = 0; round < rounds; round++) {
      const info = subClient.serverInfo;
      if (!info) throw new CaseFailed(`round ${round}: the subscriber is not connected`);
      const on = this.env.gatewayById(info.gatewayId);
      const other = this.env.gateways.find((g) => g !== on);
      let publisher;
      try {
        publisher = await nx.Client.connect(other.url, key ? { apiKey: key } : {});
      } catch (e) {
        throw new CaseFailed(`round ${round}: the publisher cannot connect to ${other.url} (the subscriber is on ${info.gatewayId}): ${e.message}`);
      }
      let started = 0; // the number of the last tick whose publish began
      let stop = false;
      const ticker = (async () => {
        for (let i = 1; !stop; i++) {
          started = i;
          try {
            await publisher.publish(subject, `${round}-${i}`);
            await publisher.flush();
          } catch {
            // the next tick
          }
          await sleep(2);
        }
      })();
      try {
        // Ticks of this round flow through the cluster hop before the kill.
        await tickAfter(sub, round, 0, 15000, `round ${round}: no tick before the kill`);
        await on.kill();
        const killed = performance.now();
        // The first tick published after the kill proves the new session (an older one may
        // have been in flight or in the client's buffer).
        const lastBefore = started;
        await tickAfter(sub, round, lastBefore, 10000, `round ${round}: no tick within 10 s of the kill`);
        gaps.push(performance.now() - killed);
      } finally {
        stop = true;
        await ticker;
        await publisher.close();
      }
      await on.start();
    }
    reportFailover("typescript", gaps, s);
  }
}

/** The step's `rounds`, or `$NEXUS_FAILOVER_ROUNDS` (the by-hand measurement). */
function failoverRounds(s) {
  return Number(process.env.NEXUS_FAILOVER_ROUNDS || s.rounds || 3);
}

/** Reads `sub` until a tick `<round>-<i>` with i > `after` arrives. */
async function tickAfter(sub, round, after, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw new CaseFailed(what);
    let m;
    try {
      m = await sub.next(left);
    } catch {
      throw new CaseFailed(what);
    }
    if (!m) throw new CaseFailed(`${what}: the subscription ended`);
    const [r, i] = m.text.split("-").map(Number);
    if (r === round && i > after) return;
  }
}

/** Prints the gaps' p50/p99 (as tests/cluster.rs does) and fails when one is too long. */
function reportFailover(lang, gaps, s) {
  const ms = [...gaps].sort((a, b) => a - b);
  const at = (q) => ms[Math.min(Math.max(Math.ceil(ms.length * q), 1), ms.length) - 1];
  const f = (x) => x.toFixed(0);
  console.log(`  FAILOVER ${lang} kills=${ms.length} p50=${f(at(0.5))}ms p99=${f(at(0.99))}ms max=${f(ms[ms.length - 1])}ms all=[${ms.map(f).join(", ")}]`);
  const max = s.max_gap_ms ?? 3000;
  if (ms[ms.length - 1] > max) throw new CaseFailed(`a gap of ${f(ms[ms.length - 1])} ms is longer than ${max} ms`);
}

/** 60 s a step; a failover measurement gets 30 s a round on top. */
function stepTimeoutMs(s) {
  return 60000 + (s.op === "measure_failover" ? 30000 * failoverRounds(s) : 0);
}

async function runCase(doc, kase) {
  const env = new Environment(doc.environments[kase.env]);
  const runner = new Runner(env);
  try {
    await env.start();
    for (const [i, s] of kase.steps.entries()) {
      try {
        let t;
        await Promise.race([runner.step(s), new Promise((_, rej) => (t = setTimeout(() => rej(new CaseFailed(`step took over ${stepTimeoutMs(s) / 1000} s`)), stepTimeoutMs(s))))]).finally(() => clearTimeout(t));
      } catch (e) {
        throw new CaseFailed(`step ${i + 1} (${s.op}): ${e.name}: ${e.message}`);
      }
    }
  } finally {
    for (const c of Object.values(runner.clients)) await c.close();
    await env.stop();
  }
}

async function main() {
  const args = process.argv.slice(2);
  let casesPath = path.join(__dirname, "..", "cases.json");
  const only = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--cases") casesPath = args[++i];
    else if (args[i] === "--only") only.push(args[++i]);
  }
  const doc = JSON.parse(fs.readFileSync(casesPath, "utf8"));
  let passed = 0, failed = 0;
  for (const kase of doc.cases) {
    if (only.length && !only.includes(kase.name)) continue;
    const start = Date.now();
    try {
      await runCase(doc, kase);
      passed++;
      console.log(`PASS ${kase.name} (${Date.now() - start} ms)`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${kase.name}: ${e.message}`);
    }
  }
  console.log(`typescript conformance: ${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
