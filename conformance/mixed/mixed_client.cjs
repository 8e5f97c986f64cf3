// The TypeScript side of the mixed-language test (conformance/mixed/run.py): sends one
// request with the given traceparent, retrying while the other region's responder is not
// known yet, and prints the answer.
// With a fifth argument `trace`, the request carries `nexus-trace: 1` (recorded at every hop).
// Usage: node mixed_client.cjs URL SUBJECT PAYLOAD TRACEPARENT [trace]   (NEXUS_TS_CLIENT: package dir)
"use strict";
const nx = require(process.env.NEXUS_TS_CLIENT || "nexus-client");

async function main() {
  const [url, subject, payload, traceparent, trace] = process.argv.slice(2);
  const headers = trace === "trace" ? { traceparent, "nexus-trace": "1" } : { traceparent };
  const client = await nx.Client.connect(url, { name: "mixed-typescript" });
  try {
    const deadline = Date.now() + 20000;
    for (;;) {
      try {
        const reply = await client.request(subject, payload, { headers, timeoutMs: 5000 });
        console.log(reply.text);
        return;
      } catch (e) {
        if (!(e instanceof nx.NoRespondersError) || Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } finally {
    await client.close();
  }
}

main().catch((e) => {
  console.error(`${e.name}: ${e.message}`);
  process.exit(1);
});
