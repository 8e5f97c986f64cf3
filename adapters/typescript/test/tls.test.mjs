// TLS against a real `nexus gateway` serving its own TLS listener, with certificates from
// `nexus certs`: the cluster CA works, another CA and a wrong name are refused, a missing CA
// file is named, and a gateway requiring client certificates accepts one from the CA.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const nx = createRequire(import.meta.url)(process.env.NEXUS_TS_CLIENT);
const nexusBin = process.env.NEXUS_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, ".cache/nexus/target"), "debug", "nexus");
const dir = mkdtempSync(join(tmpdir(), "nexus-ts-tls-"));
const pki = join(dir, "pki");
execFileSync(nexusBin, ["certs", "--out", pki, "--gateway", "local/gw-1@127.0.0.1,gateway.test", "--admin", "svc"]);
execFileSync(nexusBin, ["certs", "--out", join(dir, "other")]);
const ca = join(pki, "ca.pem");
const started = [];

async function tlsGateway(clientCa) {
  const args = ["gateway", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--auth", "off", "--state-dir", mkdtempSync(join(dir, "state-")),
    "--tls-cert", join(pki, "gateways/local/gw-1.pem"), "--tls-key", join(pki, "gateways/local/gw-1-key.pem")];
  if (clientCa) args.push("--tls-client-ca", ca);
  const gw = spawn(nexusBin, args, { stdio: ["ignore", "pipe", "ignore"] });
  started.push(gw);
  const lines = createInterface({ input: gw.stdout });
  const [addr, metrics] = await new Promise((resolve, reject) => {
    lines.on("line", (l) => {
      const m = / listening on (\S+), metrics on (\S+)/.exec(l);
      if (m) resolve([m[1], m[2]]);
    });
    gw.on("exit", () => reject(new Error(`${nexusBin} exited before its banner`)));
  });
  for (const deadline = Date.now() + 15000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
    try {
      if ((await fetch(`http://${metrics}/readyz`)).status === 200) return addr;
    } catch {
      // not yet
    }
  }
  throw new Error("gateway not ready");
}

after(() => {
  for (const gw of started) gw.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

test("https with the cluster CA; another CA, a wrong name and a missing CA file are refused", async () => {
  const addr = await tlsGateway(false);
  const client = await nx.Client.connect(`https://${addr}`, { tlsCaFile: ca, connectTimeoutMs: 5000 });
  const sub = await client.subscribe("tls.ts");
  await client.publish("tls.ts", "over TLS", { ack: true });
  const msg = await sub.next();
  assert.equal(Buffer.from(msg.payload).toString(), "over TLS");
  await client.close();
  const named = await nx.Client.connect(`https://${addr}`, { tlsCaFile: ca, tlsServerName: "gateway.test", connectTimeoutMs: 5000 });
  await named.close();
  await assert.rejects(nx.Client.connect(`https://${addr}`, { tlsCaFile: join(dir, "other", "ca.pem"), connectTimeoutMs: 3000 }), nx.NexusError);
  await assert.rejects(nx.Client.connect(`https://${addr}`, { tlsCaFile: ca, tlsServerName: "elsewhere.test", connectTimeoutMs: 3000 }), nx.NexusError);
  await assert.rejects(nx.Client.connect(`https://${addr}`, { tlsCaFile: join(dir, "missing.pem"), connectTimeoutMs: 3000 }), /missing\.pem/);
});

test("a required client certificate", async () => {
  const addr = await tlsGateway(true);
  await assert.rejects(nx.Client.connect(`https://${addr}`, { tlsCaFile: ca, connectTimeoutMs: 3000 }), nx.NexusError);
  const client = await nx.Client.connect(`https://${addr}`, {
    tlsCaFile: ca,
    tlsClientCertFile: join(pki, "admin/svc.pem"),
    tlsClientKeyFile: join(pki, "admin/svc-key.pem"),
    connectTimeoutMs: 5000,
  });
  await client.publish("tls.mtls", "x", { ack: true });
  await client.close();
});
