package io.nexus.client;

/** Every discovered gateway was tried and none accepted a session. */
public class NoGatewayException extends NexusException {
    public NoGatewayException(String message) {
        super(message);
    }
}
