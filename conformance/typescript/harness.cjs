// Real Nexus processes for the TypeScript conformance runner: a gateway (and, for the auth
// cases, a control plane with DNS discovery) on free loopback ports, a second region
// federated over QUIC with routes applied through nexusctl, a TCP relay that can lose a
// gateway's answers, readiness by polling /readyz, and cleanup that kills every process.
"use strict";
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const http = require("node:http");
const net = require("node:net");
const readline = require("node:readline");

/** The validity of the gateway certificate in a `gateway.tls: "expired"` environment. */
const EXPIRED_NOT_BEFORE = "2020-01-01T00:00:00Z";
const EXPIRED_NOT_AFTER = "2020-01-02T00:00:00Z";

function nexusBin() {
  if (process.env.NEXUS_BIN) return process.env.NEXUS_BIN;
  const cache = process.env.NEXUS_CACHE || path.join(os.homedir(), ".cache", "nexus");
  return path.join(process.env.CARGO_TARGET_DIR || path.join(cache, "target"), "debug", "nexus");
}
const nexusctlBin = () => process.env.NEXUSCTL_BIN || path.join(path.dirname(nexusBin()), "nexusctl");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Spawns a process and resolves with the stdout lines up to the first matching `pattern`. */
function spawnUntil(args, pattern, logFile) {
  const log = fs.openSync(logFile, "a");
  const env = { ...process.env, RUST_LOG: "warn" };
  for (const k of ["NEXUS_CONTROL_PLANE", "NEXUS_AUTH", "NEXUS_CONFIG", "OTEL_EXPORTER_OTLP_ENDPOINT"]) delete env[k];
  const proc = spawn(nexusBin(), args, { stdio: ["ignore", "pipe", log], env });
  fs.closeSync(log);
  const lines = [];
  return new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: proc.stdout });
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${pattern}`)), 20000);
    let done = false;
    rl.on("line", (line) => {
      if (done) return;
      lines.push(line);
      if (pattern.test(line)) {
        done = true;
        clearTimeout(timer);
        resolve({ proc, lines });
      }
    });
    proc.on("exit", () => {
      if (!done) {
        clearTimeout(timer);
        reject(new Error(`process exited before printing ${pattern}: ${lines.join(" | ")}`));
      }
    });
  });
}

function getStatus(url) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("error", () => resolve(0));
    req.on("timeout", () => req.destroy());
  });
}

function httpGet(addr, p) {
  return new Promise((resolve, reject) => {
    const req = http.get(`http://${addr}${p}`, { timeout: 5000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve(body));
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error("timeout")));
  });
}

/** Polls `cond` every 20 ms until it holds; throws `what` after `ms`. */
async function waitFor(cond, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      if (await cond()) return;
    } catch {
      // not there yet
    }
    if (Date.now() > deadline) throw new Error(what);
    await sleep(20);
  }
}

/**
 * A TCP relay on a free loopback port in front of a gateway. It forwards both ways until told
 * to `hold`: from then on, what the gateway sends on the connections open at that moment is
 * swallowed (an answer lost in the network) while the client's bytes still reach the gateway;
 * `cut` then breaks those connections. New connections pass, unless `blocked` (then they are
 * closed at once, as by a gateway that is not there).
 */
class Relay {
  constructor(upstream) {
    this.upstream = upstream;
    this.conns = new Set();
  }
  start() {
    this.server = net.createServer((client) => {
      if (this.blocked) {
        client.resetAndDestroy();
        return;
      }
      const [host, port] = this.upstream.split(/:(?=\d+$)/);
      const gateway = net.connect(Number(port), host);
      const conn = { held: false, client, gateway };
      this.conns.add(conn);
      client.setNoDelay(true);
      gateway.setNoDelay(true);
      client.on("data", (d) => gateway.write(d));
      gateway.on("data", (d) => conn.held || client.write(d));
      const end = () => {
        client.destroy();
        gateway.destroy();
        this.conns.delete(conn);
      };
      for (const sock of [client, gateway]) {
        sock.on("error", end);
        sock.on("close", end);
      }
    });
    return new Promise((resolve) => this.server.listen(0, "127.0.0.1", () => {
      this.addr = `127.0.0.1:${this.server.address().port}`;
      resolve();
    }));
  }
  get url() {
    return `http://${this.addr}`;
  }
  hold() {
    for (const c of this.conns) c.held = true;
  }
  cut() {
    for (const c of [...this.conns]) {
      if (c.held) {
        c.client.resetAndDestroy();
        c.gateway.destroy();
      }
    }
  }
  close() {
    this.server?.close();
    for (const c of this.conns) {
      c.client.destroy();
      c.gateway.destroy();
    }
  }
}

async function waitReady(metrics) {
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    if ((await getStatus(`http://${metrics}/readyz`)) === 200) return;
    await sleep(20);
  }
  throw new Error(`gateway with metrics on ${metrics} did not become ready`);
}

function kill(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((r) => {
    proc.once("exit", r);
    proc.kill("SIGKILL");
  });
}

class Gateway {
  constructor(args, log, tls = false) {
    this.args = args;
    this.log = log;
    /** Serves adapters over TLS (`https://`). */
    this.tls = tls;
  }
  async start() {
    let args = [...this.args];
    if (this.grpc) {
      args[args.indexOf("--listen") + 1] = this.grpc;
      args[args.indexOf("--metrics-listen") + 1] = this.metrics;
      if (this.federation) args[args.indexOf("--federation-listen") + 1] = this.federation;
    }
    const deadline = Date.now() + 10000;
    for (;;) {
      try {
        const { proc, lines } = await spawnUntil(["gateway", ...args], / listening on /, this.log);
        this.proc = proc;
        for (const l of lines) {
          const f = /nexus federation.* on (\S+)/.exec(l);
          if (f) this.federation = f[1];
        }
        const m = / listening on (\S+), metrics on (\S+)/.exec(lines[lines.length - 1]);
        this.grpc = m[1];
        this.metrics = m[2];
        proc.stdout.resume();
        break;
      } catch (e) {
        if (Date.now() > deadline) throw e; // the old port may take a moment to free up
        await sleep(100);
      }
    }
    await waitReady(this.metrics);
  }
  get url() {
    return `${this.tls ? "https" : "http"}://${this.grpc}`;
  }
  async kill() {
    await kill(this.proc);
    this.proc = undefined;
  }
  async restart() {
    await this.kill();
    await this.start();
  }
  /** Sends SIGTERM: the gateway drains (docs/protocol.md §3.4) and exits. */
  terminate() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    this.exited = new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
    proc.kill("SIGTERM");
  }
  /** The exit of a terminated gateway ({code, signal}), or undefined if it still runs after timeoutMs. */
  async waitExited(timeoutMs) {
    const proc = this.proc;
    if (!proc) return undefined;
    if (proc.exitCode !== null || proc.signalCode !== null) return { code: proc.exitCode, signal: proc.signalCode };
    let timer;
    const timeout = new Promise((r) => (timer = setTimeout(() => r(undefined), timeoutMs)));
    const exited = this.exited ?? new Promise((r) => proc.once("exit", (code, signal) => r({ code, signal })));
    try {
      return await Promise.race([exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

class Environment {
  /** [CA file, client certificate, client key] of the PKI `which` (`cluster` or `other`). */
  tlsFiles(which) {
    const d = this.pki[which];
    return [path.join(d, "ca.pem"), path.join(d, "clients", "conformance.pem"), path.join(d, "clients", "conformance-key.pem")];
  }
  constructor(spec) {
    this.spec = spec;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), "nexus-conformance-"));
    this.keys = { bad: "nxk_3f9a1c2b4d5e6f70_0123456789abcdef0123456789abcdef" };
    this.region = "conformance";
    this.zone = "nexus.local";
  }
  async start() {
    const gw = this.spec.gateway || {};
    const args = ["--region", this.region, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--auth", gw.auth || "off"];
    if (gw.max_payload) args.push("--max-payload", String(gw.max_payload));
    if (gw.shutdown_grace_ms !== undefined) args.push("--shutdown-grace-ms", String(gw.shutdown_grace_ms));
    this.pki = {};
    if (gw.tls) {
      // The gateway's certificate (for 127.0.0.1) and a client certificate from the cluster
      // CA, and a client certificate from another CA, all by `nexus certs`.
      for (const which of ["cluster", "other"]) {
        this.pki[which] = path.join(this.dir, `pki-${which}`);
        execFileSync(nexusBin(), ["certs", "--out", this.pki[which], "--gateway", `${this.region}/conformance-tls@127.0.0.1`, "--client", "conformance"]);
      }
      if (gw.tls === "expired") {
        // The same gateway certificate re-issued by the cluster CA, valid only on a day in the
        // past: nothing else is wrong with it.
        execFileSync(nexusBin(), ["certs", "--out", this.pki.cluster, "--gateway", `${this.region}/conformance-tls@127.0.0.1`,
          "--not-before", EXPIRED_NOT_BEFORE, "--not-after", EXPIRED_NOT_AFTER]);
      }
      const cert = path.join(this.pki.cluster, "gateways", this.region, "conformance-tls");
      args.push("--tls-cert", `${cert}.pem`, "--tls-key", `${cert}-key.pem`);
      if (gw.tls === "mutual") args.push("--tls-client-ca", path.join(this.pki.cluster, "ca.pem"));
    }
    if (this.spec.control_plane) {
      const keyFile = path.join(this.dir, "admin.key");
      const { proc, lines } = await spawnUntil(
        ["control-plane", "--listen", "127.0.0.1:0", "--data-dir", path.join(this.dir, "data"), "--dns-listen", "127.0.0.1:0",
          "--admin-key-file", keyFile, "--lease-ttl", "3s", "--dns-ttl", "1s"],
        / listening on /, path.join(this.dir, "control-plane.log"));
      this.cp = proc;
      proc.stdout.resume();
      for (const l of lines) {
        const d = / DNS on (\S+)/.exec(l);
        if (d) this.dns = d[1];
        const a = / listening on (\S+)/.exec(l);
        if (a) this.cpAddr = a[1];
      }
      const adminKey = fs.readFileSync(keyFile, "utf8").trim();
      for (const [name, scopes] of Object.entries(this.spec.keys || {})) {
        const out = execFileSync(nexusctlBin(), ["keys", "create", name, "--publish", scopes.publish, "--subscribe", scopes.subscribe, "-o", "json"], {
          env: { ...process.env, NEXUS_CONTROL_PLANE: `http://${this.cpAddr}`, NEXUS_ADMIN_KEY: adminKey },
        });
        this.keys[name] = JSON.parse(out.toString()).secret;
      }
      args.push("--control-plane", `http://${this.cpAddr}`);
      for (const r of this.spec.routes || []) {
        const file = path.join(this.dir, `route-${r.name}.toml`);
        fs.writeFileSync(file, `name = ${JSON.stringify(r.name)}\nsubjects = ${JSON.stringify(r.subjects)}\npolicy = ${JSON.stringify(r.policy || "broadcast")}\nconsistency = ${JSON.stringify(r.consistency || "best_effort")}\n`);
        execFileSync(nexusctlBin(), ["routes", "apply", "-f", file], {
          env: { ...process.env, NEXUS_CONTROL_PLANE: `http://${this.cpAddr}`, NEXUS_ADMIN_KEY: adminKey },
        });
      }
    }
    const remoteRegion = this.spec.remote_region;
    if (remoteRegion) {
      // The first gateway's region sorts first, so it dials the remote one.
      const certs = path.join(this.dir, "certs");
      execFileSync(nexusBin(), ["federation-certs", "--out", certs, "--regions", `${this.region},${remoteRegion}`]);
      const fed = (r) => ["--federation-listen", "127.0.0.1:0", "--federation-cert", path.join(certs, `${r}.pem`),
        "--federation-key", path.join(certs, `${r}-key.pem`), "--federation-ca", path.join(certs, "ca.pem")];
      const remoteArgs = [...args];
      remoteArgs[remoteArgs.indexOf("--region") + 1] = remoteRegion;
      this.remote = new Gateway([...remoteArgs, ...fed(remoteRegion), "--gateway-id", "conformance-remote", "--state-dir", path.join(this.dir, "remote-state")],
        path.join(this.dir, "remote.log"));
      await this.remote.start();
      args.push(...fed(this.region), "--peer", `${remoteRegion}=${this.remote.federation}`);
    }
    this.gateways = [];
    const ids = Array.from({ length: this.spec.gateways || 1 }, (_, i) => `conformance-gw-${i}`);
    const certs = path.join(this.dir, "cluster-certs");
    if (this.spec.cluster) {
      // A regional cluster: a certificate per gateway (`nexus certs`), linked over QUIC.
      execFileSync(nexusBin(), ["certs", "--out", certs, ...ids.flatMap((id) => ["--gateway", `${this.region}/${id}`])]);
    }
    for (const [i, id] of ids.entries()) {
      // Every gateway gets its own id and state directory (config snapshot, spool).
      const pem = path.join(certs, "gateways", this.region, id);
      const extra = this.spec.cluster ? ["--federation-listen", "127.0.0.1:0", "--federation-cert", `${pem}.pem`,
        "--federation-key", `${pem}-key.pem`, "--federation-ca", path.join(certs, "ca.pem")] : [];
      const g = new Gateway([...args, ...extra, "--gateway-id", id, "--state-dir", path.join(this.dir, `gw-state-${i}`)],
        path.join(this.dir, `gateway-${i}.log`), Boolean(gw.tls));
      await g.start();
      this.gateways.push(g);
    }
    if (this.spec.cluster) {
      for (const g of this.gateways) {
        await waitFor(async () => (JSON.parse(await httpGet(g.metrics, "/v1/status")).cluster || []).length === this.gateways.length - 1,
          20000, `gateway ${g.grpc} did not link to the rest of its cluster`);
      }
    }
    if (remoteRegion) {
      await waitFor(async () => (JSON.parse(await httpGet(this.gateway.metrics, "/v1/status")).links || [])
        .some((l) => l.region === remoteRegion && l.state === "up"), 20000, `the federation link to ${remoteRegion} did not come up`);
    }
    for (const r of this.spec.routes || []) {
      for (const g of [...this.gateways, ...(this.remote ? [this.remote] : [])]) {
        await waitFor(async () => JSON.parse(await httpGet(g.metrics, `/v1/explain?subject=${r.probe}`)).federation?.route?.name === r.name,
          10000, `route ${r.name} did not reach gateway ${g.grpc}`);
      }
    }
    if (this.spec.relay) {
      this.relay = new Relay(this.gateway.grpc);
      await this.relay.start();
    }
  }
  /** Waits until the first gateway knows that the remote region has interest in `subject`. */
  async awaitInterest(subject) {
    const region = this.spec.remote_region;
    await waitFor(async () => (JSON.parse(await httpGet(this.gateway.metrics, `/v1/explain?subject=${subject}`)).federation?.regions || [])
      .some((r) => r.region === region && r.interest === true), 10000, `${region}'s interest in ${subject} did not reach the first gateway`);
  }
  /** Waits until the first gateway routes `subject` by route `name` and its link to the remote region is up. */
  async awaitRoute(name, subject) {
    const region = this.spec.remote_region;
    await waitFor(async () => {
      const fed = JSON.parse(await httpGet(this.gateway.metrics, `/v1/explain?subject=${subject}`)).federation;
      const st = JSON.parse(await httpGet(this.gateway.metrics, "/v1/status"));
      return fed?.route?.name === name && (st.links || []).some((l) => l.region === region && l.state === "up");
    }, 20000, `the first gateway does not route ${subject} by ${name} with its link up`);
  }
  /** Waits until the first gateway's link to the remote region is up and nothing it spooled for it is unconfirmed. */
  async awaitReplicated() {
    const region = this.spec.remote_region;
    await waitFor(async () => {
      const st = JSON.parse(await httpGet(this.gateway.metrics, "/v1/status"));
      const up = (st.links || []).some((l) => l.region === region && l.state === "up");
      const depth = (st.routes || []).filter((r) => r.region === region).reduce((n, r) => n + (r.spool_depth || 0), 0);
      return up && depth === 0;
    }, 20000, `the first gateway did not finish replicating to ${region}`);
  }
  /** A series of the first gateway's /metrics whose labels include all of `labels` (0 when absent). */
  async metric(name, labels = {}) {
    const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
    for (const line of (await httpGet(this.gateway.metrics, "/metrics")).split("\n")) {
      const i = line.lastIndexOf(" ");
      const series = line.slice(0, i);
      if (series.split("{")[0] === name && want.every((w) => series.includes(w))) return Number(line.slice(i + 1));
    }
    return 0;
  }
  /** The first gateway (the only one, in most environments). */
  get gateway() {
    return this.gateways[0];
  }
  /** The gateway started with `--gateway-id id`. */
  gatewayById(id) {
    const i = this.gateways.findIndex((_, n) => `conformance-gw-${n}` === id);
    if (i < 0) throw new Error(`no gateway ${id} in this environment`);
    return this.gateways[i];
  }
  /** Kills the gateway started with `--gateway-id id`. */
  async killGateway(id) {
    await this.gatewayById(id).kill();
  }
  srvUrl(region) {
    return `nexus+srv://${region || this.region}.${this.zone}?dns=${this.dns || "127.0.0.1:1"}`;
  }
  async stop() {
    this.relay?.close();
    for (const g of this.gateways || []) await g.kill();
    if (this.remote) await this.remote.kill();
    await kill(this.cp);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

module.exports = { Environment, nexusBin };
