package io.nexus.client;

/** Connecting to a gateway failed. */
public class ConnectFailedException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public ConnectFailedException(String message) {
        super(message);
    }
}
