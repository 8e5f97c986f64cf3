// The npm tarball as an application sees it: installed into a fresh project
// ($NEXUS_TS_CONSUMER, set up by scripts/test-adapters), loaded through its exports map from
// both module systems, and the README's hello world run as written against a real gateway.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
