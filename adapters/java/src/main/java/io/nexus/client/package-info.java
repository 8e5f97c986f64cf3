/**
 * The Java adapter for Nexus. A {@link io.nexus.client.Client} keeps one gRPC session with a
 * regional gateway (by address or DNS SRV discovery) and offers publish / subscribe with
 * wildcards and queue groups, request / reply with timeouts, responders
 * ({@link io.nexus.client.Client#serve}), bidirectional streams with credit-based
 * backpressure, invisible batching, reconnection with re-subscription and W3C traceparent
 * propagation. Errors are unchecked exceptions extending {@link io.nexus.client.NexusException}.
 */
package io.nexus.client;
