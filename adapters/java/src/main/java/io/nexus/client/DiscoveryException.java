package io.nexus.client;

/** DNS SRV discovery failed (NXDOMAIN, no records, no answer). */
public class DiscoveryException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public DiscoveryException(String message) {
        super(message);
    }
}
