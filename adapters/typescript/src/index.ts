/**
 * nexus-client: the TypeScript/Node adapter for Nexus. A {@link Client} keeps one gRPC
 * session with a regional gateway (by address or DNS SRV discovery) and offers publish /
 * subscribe with wildcards and queue groups, request / reply with timeouts, responders,
 * bidirectional streams with credit-based backpressure, invisible batching, reconnection
 * with re-subscription and W3C traceparent propagation. Errors are Error subclasses.
 */
export { Client, ClientOptions, Handler, Service, Subscription, VERSION } from "./client";
export * from "./errors";
export { TRACEPARENT, Headers, HeadersInit, isValidTraceparent, newTraceparent, traceContext, withTraceparent } from "./headers";
export { Message, ServerInfo } from "./message";
export { BiStream, StreamListener } from "./stream";
export { RESERVED_PREFIX, subjectMatches, validatePattern, validatePublishSubject } from "./subject";
export { DNS_SERVER_ENV, orderSrv } from "./discovery";
