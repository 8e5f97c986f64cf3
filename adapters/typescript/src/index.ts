/**
 * nexus-client: the TypeScript/Node adapter for Nexus. A {@link Client} keeps one gRPC
 * session with a regional gateway (by address or DNS SRV discovery) and offers publish /
 * subscribe with wildcards and queue groups, request / reply with timeouts, responders,
 * bidirectional streams with credit-based backpressure, invisible batching, reconnection
 * with re-subscription, confirmed publishes retried with the same message id after a lost
 * session, graceful `drain()`, `await using` disposal, and W3C traceparent propagation.
 * Errors are Error subclasses. Wire types are generated from the .proto by protobuf-es.
 */
export { Client, type ClientOptions, type Logger, VERSION, drainWindowMs } from "./client.js";
export { type Handler, type HandlerResult, type Payload, Service, Subscription } from "./subscription.js";
export * from "./errors.js";
export {
  SPAN_HEADER,
  TRACEPARENT,
  TRACE_FORCE,
  type Headers,
  type HeadersInit,
  isForced,
  isValidTraceparent,
  newTraceparent,
  spanReport,
  traceContext,
  withTraceparent,
} from "./headers.js";
export { Message, type ServerInfo } from "./message.js";
export { BiStream, StreamListener } from "./stream.js";
export { RESERVED_PREFIX, subjectMatches, validatePattern, validatePublishSubject } from "./subject.js";
export { DNS_SERVER_ENV, orderSrv } from "./discovery.js";
export { AsyncQueue } from "./queue.js";
