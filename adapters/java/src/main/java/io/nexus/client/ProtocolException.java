package io.nexus.client;

/** The gateway did not follow the protocol. */
public class ProtocolException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public ProtocolException(String message) {
        super(message);
    }
}
