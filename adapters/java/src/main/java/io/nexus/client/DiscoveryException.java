package io.nexus.client;

/** DNS SRV discovery failed (NXDOMAIN, no records, no answer). */
public class DiscoveryException extends NexusException {
    public DiscoveryException(String message) {
        super(message);
    }
}
