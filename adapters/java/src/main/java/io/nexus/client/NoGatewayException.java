package io.nexus.client;

/** Every discovered gateway was tried and none accepted a session. */
public class NoGatewayException extends NexusException {
    /**
     * Creates the exception.
     *
     * @param message what happened
     */
    public NoGatewayException(String message) {
        super(message);
    }
}
