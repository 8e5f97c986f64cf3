package io.nexus.client;

/** The gateway is shutting down. */
public class UnavailableException extends NexusException {
    public UnavailableException(String message) {
        super(message);
    }
}
