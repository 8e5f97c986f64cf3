/**
 * Message headers and W3C `traceparent` handling. The current trace context lives in an
 * AsyncLocalStorage: handlers run by `Client.serve` see the request's traceparent, so
 * requests and publishes they make continue the same trace (same trace id, new span id).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";

export const TRACEPARENT = "traceparent";
/** Header list: ordered pairs; keys may repeat. */
export type Headers = [string, string][];
/** What the API accepts as headers. */
export type HeadersInit = Record<string, string> | Headers | undefined;

/** The traceparent of the work in progress. */
export const traceContext = new AsyncLocalStorage<string>();

/** Runs `fn` with `traceparent` as the current trace context. */
export function withTraceparent<T>(traceparent: string, fn: () => T): T {
  return traceContext.run(traceparent, fn);
}

/** A fresh traceparent (random span id; random trace id unless given). */
export function newTraceparent(traceId?: string): string {
  let trace = traceId ?? randomBytes(16).toString("hex");
  if (/^0+$/.test(trace)) trace = "0".repeat(31) + "1";
  let span = randomBytes(8).toString("hex");
  if (/^0+$/.test(span)) span = "0".repeat(15) + "1";
  return `00-${trace}-${span}-01`;
}

/** True if `v` has the layout the gateway accepts (55 characters, lowercase hex). */
export function isValidTraceparent(v: string): boolean {
  const m = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(v);
  return !!m && m[1] !== "ff" && !/^0+$/.test(m[2]) && !/^0+$/.test(m[3]);
}

export function toPairs(h: HeadersInit): Headers {
  if (!h) return [];
  if (Array.isArray(h)) return h.map(([k, v]) => [String(k), String(v)]);
  return Object.entries(h).map(([k, v]) => [k, String(v)]);
}

export function getHeader(h: Headers, key: string): string | undefined {
  const low = key.toLowerCase();
  return h.find(([k]) => k.toLowerCase() === low)?.[1];
}

/** Adds a traceparent when missing: a child of the current context, else a new trace. */
export function ensureTraceparent(h: Headers): Headers {
  if (getHeader(h, TRACEPARENT) !== undefined) return h;
  const parent = traceContext.getStore();
  const traceId = parent && isValidTraceparent(parent) ? parent.split("-")[1] : undefined;
  return [...h, [TRACEPARENT, newTraceparent(traceId)]];
}

/** The header that makes every gateway record a message's hops (`nexusctl trace`). */
export const TRACE_FORCE = "nexus-trace";
/**
 * The header an adapter reports its own span with, on forced-traced requests and their
 * replies; the gateway records it in its trace store (docs/trace.md §2, "adapter spans").
 */
export const SPAN_HEADER = "nexus-span";

/** True when the headers carry `nexus-trace: 1` (or `true`). */
export function isForced(h: Headers): boolean {
  const v = getHeader(h, TRACE_FORCE);
  return v !== undefined && ["1", "true"].includes(v.trim().toLowerCase());
}

/** The span id of a valid traceparent, else "". */
export function spanId(traceparent: string | undefined): string {
  return traceparent && isValidTraceparent(traceparent) ? traceparent.split("-")[2] : "";
}

/** The value of a `nexus-span` header: `key=value` pairs separated by `;`. */
export function spanReport(kind: string, name: string, span: string, parent: string, startUs: number, durationUs?: number): string {
  const clean = name.replace(/;/g, ",").replace(/=/g, ":");
  const fields = [`kind=${kind}`, `name=${clean}`, `span=${span}`, `parent=${parent}`, `start_us=${startUs}`];
  if (durationUs !== undefined) fields.push(`duration_us=${durationUs}`);
  fields.push("lang=typescript");
  return fields.join(";");
}

/** Unix microseconds now. */
export function nowUs(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}
