// Builds the package: generates the nexus.v1 wire types from the .proto with protobuf-es
// (buf generate, src/gen/), compiles an ES module build (dist/esm) and a CommonJS build
// (dist/cjs) with type declarations, and copies the .proto into proto/ for reference.
// The .proto comes from $NEXUS_PROTO, else ../../proto/nexus/v1/gateway.proto (the repository).
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const proto = [process.env.NEXUS_PROTO, join(root, "..", "..", "proto", "nexus", "v1", "gateway.proto")]
  .filter(Boolean)
  .find((p) => existsSync(p));
if (!proto) throw new Error("gateway.proto not found (set NEXUS_PROTO)");
const bin = (name) => join(root, "node_modules", ".bin", name);
// node_modules/.bin on PATH, so that buf finds the protoc-gen-es plugin.
const env = { ...process.env, PATH: `${join(root, "node_modules", ".bin")}:${process.env.PATH}` };
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: "inherit", env });

rmSync(join(root, "proto"), { recursive: true, force: true });
mkdirSync(join(root, "proto", "nexus", "v1"), { recursive: true });
cpSync(proto, join(root, "proto", "nexus", "v1", "gateway.proto"));
rmSync(join(root, "src", "gen"), { recursive: true, force: true });
run(bin("buf"), ["generate"]);
rmSync(join(root, "dist"), { recursive: true, force: true });
run(bin("tsc"), ["-p", "tsconfig.esm.json"]);
run(bin("tsc"), ["-p", "tsconfig.cjs.json"]);
// Each build directory says which module system its .js files use.
writeFileSync(join(root, "dist", "esm", "package.json"), '{ "type": "module" }\n');
writeFileSync(join(root, "dist", "cjs", "package.json"), '{ "type": "commonjs" }\n');
