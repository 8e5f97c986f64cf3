// The npm tarball as an application sees it: installed into a fresh project
// ($NEXUS_TS_CONSUMER, set up by scripts/test-adapters), loaded through its exports map from
// both module systems, type-checked by tsc from both (`await using` included), and the
// README's hello world run as written against a real gateway.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const consumer = process.env.NEXUS_TS_CONSUMER;
const nexusBin = process.env.NEXUS_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, ".cache/nexus/target"), "debug", "nexus");
let gateway;
let grpcAddr;
let stateDir;

before(async () => {
  assert.ok(consumer, "NEXUS_TS_CONSUMER: a project with the tarball installed (scripts/test-adapters makes one)");
  stateDir = mkdtempSync(join(tmpdir(), "nexus-ts-test-"));
  gateway = spawn(nexusBin, ["gateway", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--auth", "off", "--state-dir", stateDir], { stdio: ["ignore", "pipe", "ignore"] });
  const lines = createInterface({ input: gateway.stdout });
  const metrics = await new Promise((resolve, reject) => {
    lines.on("line", (l) => {
      const m = / listening on (\S+), metrics on (\S+)/.exec(l);
      if (m) {
        grpcAddr = m[1];
        resolve(m[2]);
      }
    });
    gateway.on("exit", () => reject(new Error(`${nexusBin} exited before its banner`)));
  });
  for (const deadline = Date.now() + 15000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
    try {
      if ((await fetch(`http://${metrics}/readyz`)).status === 200) return;
    } catch {
      // not yet
    }
  }
  throw new Error("gateway not ready");
});

after(() => {
  gateway?.kill("SIGKILL");
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

test("require() gets the CommonJS build", () => {
  const out = execFileSync(process.execPath, ["-e", 'const nx = require("nexus-client"); console.log(typeof nx.Client, require.resolve("nexus-client"))'], { cwd: consumer }).toString();
  assert.match(out, /^function .*dist\/cjs\/index\.js/);
});

test("import gets the ES module build", () => {
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", 'import { Client } from "nexus-client"; console.log(typeof Client, import.meta.resolve("nexus-client"))'], { cwd: consumer }).toString();
  assert.match(out, /^function .*dist\/esm\/index\.js/);
});

/** Runs the first ts block of `readme` as an ES module in the consumer project, with `prefix` before it. */
function runReadme(readme, prefix = "") {
  const block = /```ts\n([\s\S]*?)```/.exec(readFileSync(readme, "utf8"));
  assert.ok(block, `${readme} has a ts code block`);
  const file = join(consumer, "hello.mjs");
  writeFileSync(file, prefix + block[1].replace("127.0.0.1:7422", grpcAddr));
  return execFileSync(process.execPath, [file], { cwd: consumer, timeout: 60000 }).toString();
}

test("the adapter README's hello world runs as written", () => {
  assert.match(runReadme(join(here, "..", "README.md")), /greetings\.world hello/);
});

test("the repository README's hello world runs as written", () => {
  // Its import is in a comment on the first line.
  const out = runReadme(join(here, "..", "..", "..", "README.md"), 'import { Client } from "nexus-client";\n');
  assert.equal(out.trim(), "greetings.world hello");
});

// A TypeScript application in the consumer project, one file per module system, compiled by
// tsc against the types the exports map gives each (a wrong option must be a type error, so
// the types are not `any`), then run against the gateway. Node 22 has no `await using` syntax
// of its own; tsc lowers it to calls of Symbol.asyncDispose, as it does for any Node 22 user.
const esmApp = `import { Client, ClosedError, type ClientOptions } from "nexus-client";

// @ts-expect-error requestTimeoutMs is a number of milliseconds
const wrong: ClientOptions = { requestTimeoutMs: "2s" };
void wrong;

const url = process.argv[2];
const COUNT = 2000;
const reader = await Client.connect(url);
const sub = await reader.subscribe("dispose.n");
await reader.flush();
let kept: Client;
{
  await using client = await Client.connect(url, { name: "scoped" });
  kept = client;
  for (let i = 0; i < COUNT; i++) await client.publish("dispose.n", "m-" + i);
} // drained here: everything queued reaches the gateway before the session closes
let late = "accepted";
try {
  await kept.publish("dispose.n", "late");
} catch (e) {
  late = e instanceof ClosedError ? "ClosedError" : String(e);
}
let received = 0;
for (; received < COUNT; received++) {
  const m = await sub.next(5000);
  if (m?.text !== "m-" + received) throw new Error("message " + received + ": " + m?.text);
}
let scoped;
{
  await using s = await reader.subscribe("dispose.scoped");
  scoped = s;
} // unsubscribed here
await reader.publish("dispose.scoped", "after the scope");
await reader.flush();
const after = await scoped.next(1000);
console.log("received " + received + ", late publish: " + late + ", scoped subscription: " + (after === undefined ? "ended" : after.text));
await reader.close();
`;

const cjsApp = `import nx = require("nexus-client");

// @ts-expect-error localPayloadCheck is a boolean
const wrong: nx.ClientOptions = { localPayloadCheck: "no" };
void wrong;

async function main(url: string): Promise<string> {
  await using client = await nx.Client.connect(url, { requestTimeoutMs: 2000 });
  await using _svc = await client.serve("dispose.echo", async (m: nx.Message) => "echo " + m.text);
  return (await client.request("dispose.echo", "from CommonJS")).text;
}
main(process.argv[2]).then((text) => console.log(text + " via " + require.resolve("nexus-client")));
`;

test("await using, from a TypeScript application in each module system (types checked by tsc)", () => {
  const tsc = process.env.NEXUS_TSC ?? join(here, "..", "node_modules", "typescript", "bin", "tsc");
  const nodeModules = dirname(dirname(dirname(tsc)));
  const dir = join(consumer, "ts-app");
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "app.mts"), esmApp);
  writeFileSync(join(dir, "app.cts"), cjsApp);
  writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      target: "ES2022", lib: ["ES2023", "ESNext.Disposable"], module: "NodeNext", moduleResolution: "NodeNext",
      strict: true, noEmitOnError: true, outDir: "out", types: ["node"], typeRoots: [join(nodeModules, "@types")],
    },
    files: ["app.mts", "app.cts"],
  }));
  execFileSync(process.execPath, [tsc, "-p", dir], { cwd: dir, stdio: "inherit" });
  const esm = execFileSync(process.execPath, [join(dir, "out", "app.mjs"), grpcAddr], { cwd: dir, timeout: 60000 }).toString();
  assert.equal(esm.trim(), "received 2000, late publish: ClosedError, scoped subscription: ended");
  const cjs = execFileSync(process.execPath, [join(dir, "out", "app.cjs"), grpcAddr], { cwd: dir, timeout: 60000 }).toString();
  assert.match(cjs.trim(), /^echo from CommonJS via .*dist\/cjs\/index\.js$/);
});
