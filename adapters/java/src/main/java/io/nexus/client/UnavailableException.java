package io.nexus.client;

/** The gateway is shutting down. */
public class UnavailableException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public UnavailableException(String message) {
        super(message);
    }
}
