// Unit tests of the TypeScript adapter's pure parts: subject rules, traceparent handling,
// SRV ordering and the bounded queue. (Everything that talks to a gateway is covered by the
// conformance suite against real processes.) Run against the built package:
//   NEXUS_TS_CLIENT=<package dir> node --test adapters/typescript/test/
"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const pkg = process.env.NEXUS_TS_CLIENT || path.join(__dirname, "..");
const nx = require(pkg);
const { AsyncQueue } = nx;

test("publish subjects", () => {
  for (const ok of ["orders.created", "a", "$nexus", "$nexusx.a", "ordres.ü"]) nx.validatePublishSubject(ok);
  for (const bad of ["", "a..b", ".a", "a.", "a b", "orders.*", "orders.>", "$nexus.inbox.1", "x".repeat(513)]) {
    assert.throws(() => nx.validatePublishSubject(bad), nx.InvalidSubjectError, bad);
  }
});

test("patterns and matching", () => {
  for (const ok of ["orders.*", "orders.>", "*.created.>", ">"]) nx.validatePattern(ok);
  for (const bad of ["a.>.b", "a*", ">>", "$nexus.x"]) assert.throws(() => nx.validatePattern(bad), nx.InvalidSubjectError, bad);
  assert.equal(nx.subjectMatches("orders.*", "orders.x"), true);
  assert.equal(nx.subjectMatches("orders.*", "orders.a.b"), false);
  assert.equal(nx.subjectMatches("orders.>", "orders"), false);
  assert.equal(nx.subjectMatches("*.created.>", "orders.created.eu"), true);
  assert.equal(nx.subjectMatches(">", "a.b"), true);
});

test("traceparent", () => {
  for (let i = 0; i < 100; i++) assert.ok(nx.isValidTraceparent(nx.newTraceparent()));
  assert.ok(!nx.isValidTraceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  assert.ok(!nx.isValidTraceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
  const child = nx.newTraceparent("4bf92f3577b34da6a3ce929d0e0e4736");
  assert.equal(child.split("-")[1], "4bf92f3577b34da6a3ce929d0e0e4736");
});

test("span reports for forced traces", () => {
  assert.ok(nx.isForced([["Nexus-Trace", " TRUE "]]));
  assert.ok(!nx.isForced([["nexus-trace", "0"]]));
  assert.ok(!nx.isForced([]));
  assert.equal(
    nx.spanReport("client", "request a;b=c", "00000000000000b2", "", 17),
    "kind=client;name=request a,b:c;span=00000000000000b2;parent=;start_us=17;lang=typescript",
  );
  assert.equal(nx.SPAN_HEADER, "nexus-span");
});

test("SRV records: priority first, then weighted random", () => {
  const records = [
    { priority: 20, weight: 1, name: "late" }, { priority: 10, weight: 90, name: "heavy" },
    { priority: 10, weight: 10, name: "light" }, { priority: 10, weight: 0, name: "zero" },
  ];
  const firsts = { heavy: 0, light: 0, zero: 0 };
  for (let i = 0; i < 2000; i++) {
    const order = nx.orderSrv(records).map((r) => r.name);
    assert.equal(order[3], "late");
    assert.deepEqual([...order.slice(0, 3)].sort(), ["heavy", "light", "zero"]);
    firsts[order[0]]++;
  }
  assert.ok(firsts.heavy > 1600, JSON.stringify(firsts));
  assert.ok(firsts.light > 100, JSON.stringify(firsts));
  assert.equal(firsts.zero, 0);
});

test("bounded queue: push waits for room, shift times out", async () => {
  const q = new AsyncQueue(1);
  await q.push(1);
  let pushed = false;
  const p = q.push(2).then(() => (pushed = true));
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(pushed, false);
  assert.equal(await q.shift(), 1);
  await p;
  assert.equal(await q.shift(), 2);
  await assert.rejects(q.shift(10, () => new nx.TimeoutError("q", 10)), nx.TimeoutError);
});

test("errors are Error subclasses with their own names", () => {
  const e = new nx.NoRespondersError("svc.x");
  assert.ok(e instanceof Error && e instanceof nx.NexusError);
  assert.equal(e.name, "NoRespondersError");
});
