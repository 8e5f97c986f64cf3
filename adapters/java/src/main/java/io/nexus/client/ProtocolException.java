package io.nexus.client;

/** The gateway did not follow the protocol. */
public class ProtocolException extends NexusException {
    public ProtocolException(String message) {
        super(message);
    }
}
