/**
 * The nexus.v1 wire types, generated from proto/nexus/v1/gateway.proto at build time by
 * protobuf-es (src/gen/, not kept in git), and the Batch codec handed to grpc-js.
 */
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { BatchSchema, FrameSchema, type Batch, type Frame } from "./gen/nexus/v1/gateway_pb.js";

export * as pb from "./gen/nexus/v1/gateway_pb.js";
export type { Batch, Frame };

/** What a frame carries: `{ case: "pub", value: {...} }` and so on. */
export type FrameKind = MessageInitShape<typeof FrameSchema>["kind"];

/** A frame from its kind, e.g. `frame({ case: "ping", value: { nonce } })`. */
export function frame(kind: FrameKind): Frame {
  return create(FrameSchema, { kind });
}

/** A batch of frames. */
export function batch(frames: Frame[]): Batch {
  return create(BatchSchema, { frames });
}

/** Serializes a batch for grpc-js (no copy: a Buffer view of the encoded bytes). */
export function encodeBatch(b: Batch): Buffer {
  const u = toBinary(BatchSchema, b);
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** Parses a batch received by grpc-js. */
export function decodeBatch(buf: Buffer): Batch {
  return fromBinary(BatchSchema, buf);
}

/** A Buffer view of bytes received in a message (no copy). */
export function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}
