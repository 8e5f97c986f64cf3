// Explicit resource management: every handle a scope can own is AsyncDisposable.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const pkg = process.env.NEXUS_TS_CLIENT;
const nx = createRequire(import.meta.url)(pkg);

test("handles implement Symbol.asyncDispose", () => {
  for (const cls of [nx.Client, nx.Subscription, nx.Service, nx.BiStream, nx.StreamListener]) {
    assert.equal(typeof cls.prototype[Symbol.asyncDispose], "function", cls.name);
  }
});

test("out-of-range options are refused with their name", async () => {
  await assert.rejects(nx.Client.connect("http://127.0.0.1:1", { publishRetryTimeoutMs: -1 }), (e) => e instanceof nx.InvalidOptionError && /publishRetryTimeoutMs/.test(e.message));
  await assert.rejects(nx.Client.connect("http://127.0.0.1:1", { streamWindow: 0 }), (e) => e instanceof nx.InvalidOptionError && /streamWindow/.test(e.message));
});
