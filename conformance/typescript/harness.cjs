// Real Nexus processes for the TypeScript conformance runner: a gateway (and, for the auth
// cases, a control plane with DNS discovery) on free loopback ports, readiness by polling
// /readyz, and cleanup that kills every process started.
"use strict";
const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const http = require("node:http");
const readline = require("node:readline");

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
  constructor(args, log) {
    this.args = args;
    this.log = log;
  }
  async start() {
    let args = [...this.args];
    if (this.grpc) {
      args[args.indexOf("--listen") + 1] = this.grpc;
      args[args.indexOf("--metrics-listen") + 1] = this.metrics;
    }
    const deadline = Date.now() + 10000;
    for (;;) {
      try {
        const { proc, lines } = await spawnUntil(["gateway", ...args], / listening on /, this.log);
        this.proc = proc;
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
    return `http://${this.grpc}`;
  }
  async kill() {
    await kill(this.proc);
    this.proc = undefined;
  }
  async restart() {
    await this.kill();
    await this.start();
  }
}

class Environment {
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
    }
    this.gateways = [];
    for (let i = 0; i < (this.spec.gateways || 1); i++) {
      // Every gateway gets its own id and state directory (config snapshot, spool).
      const g = new Gateway([...args, "--gateway-id", `conformance-gw-${i}`, "--state-dir", path.join(this.dir, `gw-state-${i}`)],
        path.join(this.dir, `gateway-${i}.log`));
      await g.start();
      this.gateways.push(g);
    }
  }
  /** The first gateway (the only one, in most environments). */
  get gateway() {
    return this.gateways[0];
  }
  /** Kills the gateway started with `--gateway-id id`. */
  async killGateway(id) {
    const i = this.gateways.findIndex((_, n) => `conformance-gw-${n}` === id);
    if (i < 0) throw new Error(`no gateway ${id} in this environment`);
    await this.gateways[i].kill();
  }
  srvUrl(region) {
    return `nexus+srv://${region || this.region}.${this.zone}?dns=${this.dns || "127.0.0.1:1"}`;
  }
  async stop() {
    for (const g of this.gateways || []) await g.kill();
    await kill(this.cp);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

module.exports = { Environment, nexusBin };
