package io.nexus.client;

/**
 * What the gateway said in its Welcome, and where it is.
 *
 * @param gatewayId the gateway instance
 * @param region the gateway's region
 * @param sessionId this session's id
 * @param maxPayload largest payload the gateway accepts, in bytes
 * @param maxSubscriptions most live subscriptions per session
 * @param address the address connected to
 * @param encodings payload codecs the gateway accepts (docs/protocol.md section 9.2)
 */
public record ServerInfo(String gatewayId, String region, String sessionId, long maxPayload, int maxSubscriptions, String address,
        java.util.List<String> encodings) {}
