/**
 * Payload compression on the session (docs/protocol.md section 9.2), invisible to applications.
 *
 * Node's own zlib has zstd (Node 22.15 and later); there is no lz4 in Node and no dependency is
 * added for it, so this adapter lists only `zstd` in its Hello when the runtime has it, and
 * nothing otherwise: the gateway then decodes any other codec for it, so it interoperates with
 * every other client. Outgoing `Pub`, `Req`, `Reply` and `StreamData` payloads of at least
 * `compressionThreshold` bytes are compressed with zstd when the gateway accepts it and the
 * result is smaller, and marked with the `nexus-encoding` header; received compressed payloads
 * are decompressed (bounded by the gateway's `max_payload`) and the header removed.
 */
import * as zlib from "node:zlib";
import { create } from "@bufbuild/protobuf";
import { type Frame, pb } from "./codec.js";
import { ProtocolError } from "./errors.js";

export const HEADER = "nexus-encoding";
/** Payloads smaller than this are sent plain by default. */
export const DEFAULT_THRESHOLD = 1024;
/** Largest payload decoded when the gateway did not say. */
const FALLBACK_MAX = 64 << 20;

type ZstdZlib = {
  zstdCompressSync(buf: Uint8Array): Buffer;
  zstdDecompressSync(buf: Uint8Array, options?: { maxOutputLength?: number }): Buffer;
};
const z = zlib as unknown as Partial<ZstdZlib>;
const hasZstd = typeof z.zstdCompressSync === "function" && typeof z.zstdDecompressSync === "function";

/** A compressed payload could not be decoded (corrupt, too large, or an unknown codec). */
export class CompressionError extends ProtocolError {}

/** The codecs this runtime can compress and decompress. */
export function available(): string[] {
  return hasZstd ? ["zstd"] : [];
}

/** The decompressed size a zstd frame declares in its header, or an error naming the problem. */
export function zstdDeclaredSize(data: Uint8Array): number {
  if (data.length < 5 || data[0] !== 0x28 || data[1] !== 0xb5 || data[2] !== 0x2f || data[3] !== 0xfd) {
    throw new CompressionError("zstd payload is corrupt: not a zstd frame");
  }
  const fhd = data[4]!;
  const singleSegment = (fhd >> 5) & 1;
  const fcsFlag = fhd >> 6;
  const dictBytes = [0, 1, 2, 4][fhd & 3]!;
  const fcsBytes = fcsFlag === 0 ? singleSegment : [1, 2, 4, 8][fcsFlag]!;
  if (fcsBytes === 0) throw new CompressionError("zstd payload is corrupt: the frame does not declare its decompressed size");
  const at = 5 + (singleSegment ? 0 : 1) + dictBytes;
  if (data.length < at + fcsBytes) throw new CompressionError("zstd payload is corrupt: truncated frame header");
  let size = 0;
  for (let i = fcsBytes - 1; i >= 0; i--) size = size * 256 + data[at + i]!;
  return fcsBytes === 2 ? size + 256 : size;
}

/** Decompresses `data`, refusing anything that declares more than `max` bytes before allocating. */
export function decompress(codec: string, data: Uint8Array, max: number): Buffer {
  if (codec !== "zstd" || !hasZstd) {
    throw new CompressionError(`payload encoding ${JSON.stringify(codec)} (header nexus-encoding) is not supported here`);
  }
  const size = zstdDeclaredSize(data);
  if (size > max) {
    throw new CompressionError(`zstd payload declares ${size} decompressed bytes, which exceeds max_payload (${max} bytes)`);
  }
  let out: Buffer;
  try {
    out = z.zstdDecompressSync!(data, { maxOutputLength: Math.max(size, 1) });
  } catch (e) {
    throw new CompressionError(`zstd payload is corrupt: ${(e as Error).message}`);
  }
  if (out.length !== size) throw new CompressionError(`zstd payload is corrupt: decompressed to ${out.length} bytes, not ${size}`);
  return out;
}

/** Compresses with zstd (the frame declares its size, as zlib writes it by default). */
export function compress(data: Uint8Array): Buffer {
  if (!hasZstd) throw new CompressionError("zstd is not available in this Node.js");
  return z.zstdCompressSync!(data);
}

type Header = { key: string; value: string };
type Body = { headers: Header[]; payload: Uint8Array };

function encodingOf(headers: Header[]): string | undefined {
  return headers.find((h) => h.key.toLowerCase() === HEADER)?.value;
}

/** Compresses the payload of an outgoing frame in place when worth it. */
export function encodeFrame(f: Frame, codec: string | null, accepted: readonly string[], threshold: number): void {
  if (codec !== "zstd" || !hasZstd || !accepted.includes(codec)) return;
  const k = f.kind;
  if (k.case !== "pub" && k.case !== "req" && k.case !== "reply" && k.case !== "streamData") return;
  if (k.case === "reply" && k.value.error) return;
  const body = k.value as Body;
  if (body.payload.length < Math.max(threshold, 1) || encodingOf(body.headers) !== undefined) return;
  const packed = compress(body.payload);
  if (packed.length >= body.payload.length) return;
  body.payload = packed;
  body.headers.push(create(pb.HeaderSchema, { key: HEADER, value: codec }));
}

/** Decompresses a received payload in place and removes the header; throws CompressionError. */
export function decodeInPlace(body: Body, maxPayload: number): void {
  const codec = encodingOf(body.headers);
  if (codec === undefined) return;
  body.payload = decompress(codec.toLowerCase(), body.payload, maxPayload || FALLBACK_MAX);
  body.headers = body.headers.filter((h) => h.key.toLowerCase() !== HEADER);
}
