// Copies the nexus.v1 protocol definition into the package (proto/gateway.proto), so that
// the published package is self-contained; the source of truth is proto/nexus/v1/ at the
// repository root.
const fs = require("fs");
const path = require("path");
const candidates = [
  process.env.NEXUS_PROTO,
  path.join(__dirname, "..", "..", "..", "proto", "nexus", "v1", "gateway.proto"),
].filter(Boolean);
const src = candidates.find((p) => fs.existsSync(p));
if (!src) throw new Error("gateway.proto not found (set NEXUS_PROTO)");
fs.mkdirSync(path.join(__dirname, "..", "proto"), { recursive: true });
fs.copyFileSync(src, path.join(__dirname, "..", "proto", "gateway.proto"));
