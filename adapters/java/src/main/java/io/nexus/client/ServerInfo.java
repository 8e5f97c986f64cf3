package io.nexus.client;

/** What the gateway said in its Welcome, and where it is. */
public record ServerInfo(String gatewayId, String region, String sessionId, long maxPayload, int maxSubscriptions, String address) {}
